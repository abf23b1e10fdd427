//! Request paths, decoded once: what policy matches, what the audit records
//! and what the provider receives are the same path. Tricks that could
//! make a path escape the provider's base or read differently upstream are
//! refused: dot segments (plain or encoded), encoded slashes and
//! backslashes, encoded control bytes, malformed escapes.

use std::fmt::Write as _;

/// A path Leash refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("leash: the path {0}")]
pub struct PathError(&'static str);

/// A path read once: `decoded` for matching and records, `encoded` (the
/// canonical form of the same path) for the provider.
#[derive(Debug, PartialEq, Eq)]
pub struct Canonical {
    pub decoded: String,
    pub encoded: String,
}

/// Characters a path segment may carry unescaped (RFC 3986 `pchar` and
/// `/`), so they are sent as they are.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
}

/// Decodes `path` once and re-encodes it canonically.
pub fn canonical(path: &str) -> Result<Canonical, PathError> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError("contains a backslash")),
            b'%' => {
                let b = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(PathError("contains a malformed escape"))?;
                if b < 0x20 || b == 0x7f {
                    return Err(PathError("contains an encoded control byte"));
                }
                if b == b'/' || b == b'\\' {
                    return Err(PathError("contains an encoded slash"));
                }
                decoded.push(b);
                i += 3;
            }
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let decoded =
        String::from_utf8(decoded).map_err(|_| PathError("does not decode to UTF-8 text"))?;
    if decoded.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(PathError("contains dot segments"));
    }
    let mut encoded = String::with_capacity(decoded.len());
    for &b in decoded.as_bytes() {
        if plain(b) {
            encoded.push(char::from(b));
        } else {
            let _ = write!(encoded, "%{b:02X}");
        }
    }
    Ok(Canonical { decoded, encoded })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_once_and_canonical() {
        let c = canonical("/v1beta/models/gemini%2D2.5-pro:generateContent").unwrap();
        assert_eq!(c.decoded, "/v1beta/models/gemini-2.5-pro:generateContent");
        assert_eq!(c.encoded, c.decoded);
        let c = canonical("/files/a%20b%25c").unwrap();
        assert_eq!(c.decoded, "/files/a b%c");
        assert_eq!(c.encoded, "/files/a%20b%25c");
        // Decoded once only: `%252e` is the text `%2e`, not a dot.
        assert_eq!(canonical("/a/%252e%252e/b").unwrap().decoded, "/a/%2e%2e/b");
        assert_eq!(canonical("").unwrap().decoded, "");
    }

    #[test]
    fn path_tricks_refused() {
        for bad in [
            "/../admin",
            "/a/./b",
            "/%2e%2E/x",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a%00b",
            "/a%0d%0ab",
            "/a%",
            "/a%zz",
            "/%ff%fe",
        ] {
            assert!(canonical(bad).is_err(), "{bad}");
        }
    }
}
