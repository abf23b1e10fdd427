//! Compressed request bodies (`Content-Encoding: gzip | deflate | br`) are
//! decoded before the pipeline sees them, so policy inspects what the
//! provider would read, and forwarded decoded. Decoding stops at the body
//! limit and at a ratio limit (zip bombs); an encoding Leash cannot decode
//! is refused, never forwarded uninspected.

use std::io::Read;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};

use crate::{pipeline::Rejection, provider::ErrorCode};

/// What a request body may grow to.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// The body as received, and decoded.
    pub max_bytes: usize,
    /// Decoded size / received size.
    pub max_ratio: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip,
    Deflate,
    Brotli,
}

fn unsupported(name: &str) -> Rejection {
    Rejection {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code: ErrorCode::BadRequest,
        message: format!(
            "leash: content-encoding `{name}` is not supported (gzip, deflate, br, identity are), so policy cannot inspect the body"
        ),
    }
}

/// The codings applied, in the order they were applied; `Err` for one
/// Leash does not decode.
fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, Rejection> {
    let mut out = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let value = value.to_str().map_err(|_| unsupported("(not text)"))?;
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name.to_ascii_lowercase().as_str() {
                "identity" => {}
                "gzip" | "x-gzip" => out.push(Coding::Gzip),
                "deflate" => out.push(Coding::Deflate),
                "br" => out.push(Coding::Brotli),
                _ => return Err(unsupported(name)),
            }
        }
    }
    Ok(out)
}

/// Reads `reader` to its end, failing past `limit` bytes.
fn read_limited(reader: impl Read, limit: usize) -> Result<Vec<u8>, DecodeFailure> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|_| DecodeFailure::Corrupt)?;
    if out.len() > limit {
        return Err(DecodeFailure::TooLarge);
    }
    Ok(out)
}

enum DecodeFailure {
    Corrupt,
    TooLarge,
}

fn decode_one(coding: Coding, data: &[u8], limit: usize) -> Result<Vec<u8>, DecodeFailure> {
    match coding {
        Coding::Gzip => read_limited(flate2::read::MultiGzDecoder::new(data), limit),
        // HTTP's deflate is zlib-wrapped; some clients send raw deflate.
        Coding::Deflate => read_limited(flate2::read::ZlibDecoder::new(data), limit)
            .or_else(|_| read_limited(flate2::read::DeflateDecoder::new(data), limit)),
        Coding::Brotli => read_limited(brotli_decompressor::Decompressor::new(data, 4096), limit),
    }
}

/// Decodes `body` per its `Content-Encoding` (removed from `headers` once
/// decoded). The decoded body may not exceed `limits.max_bytes`, nor
/// `limits.max_ratio` times the received size.
pub fn decode_request(
    headers: &mut HeaderMap,
    body: Bytes,
    limits: BodyLimits,
) -> Result<Bytes, Rejection> {
    let codings = codings(headers)?;
    if codings.is_empty() {
        headers.remove(header::CONTENT_ENCODING);
        return Ok(body);
    }
    let limit = limits
        .max_bytes
        .min(body.len().max(1).saturating_mul(limits.max_ratio));
    let mut data = body.to_vec();
    for &coding in codings.iter().rev() {
        data = decode_one(coding, &data, limit).map_err(|e| match e {
            DecodeFailure::Corrupt => Rejection {
                status: StatusCode::BAD_REQUEST,
                code: ErrorCode::BadRequest,
                message: "leash: the request body could not be decoded per its content-encoding"
                    .into(),
            },
            DecodeFailure::TooLarge => Rejection {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: ErrorCode::BodyTooLarge,
                message: format!(
                    "leash: the decoded request body exceeds {limit} bytes (limits: {} bytes, {}x the received size)",
                    limits.max_bytes, limits.max_ratio
                ),
            },
        })?;
    }
    headers.remove(header::CONTENT_ENCODING);
    Ok(Bytes::from(data))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    const LIMITS: BodyLimits = BodyLimits {
        max_bytes: 1024 * 1024,
        max_ratio: 100,
    };

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn headers(encoding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, encoding.parse().unwrap());
        h
    }

    #[test]
    fn decodes_gzip_deflate_and_stacked_codings() {
        let json = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi a@b.co"}]}"#;
        let mut h = headers("gzip");
        let out = decode_request(&mut h, Bytes::from(gzip(json)), LIMITS).unwrap();
        assert_eq!(&out[..], json);
        assert!(h.get(header::CONTENT_ENCODING).is_none());
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(json).unwrap();
        let mut h = headers("deflate");
        let out = decode_request(&mut h, Bytes::from(z.finish().unwrap()), LIMITS).unwrap();
        assert_eq!(&out[..], json);
        // gzip applied twice: decoded twice.
        let mut h = headers("gzip, gzip");
        let out = decode_request(&mut h, Bytes::from(gzip(&gzip(json))), LIMITS).unwrap();
        assert_eq!(&out[..], json);
        let mut h = headers("identity");
        let out = decode_request(&mut h, Bytes::from_static(json), LIMITS).unwrap();
        assert_eq!(&out[..], json);
    }

    #[test]
    fn refuses_bombs_corrupt_bodies_and_unknown_codings() {
        // 10 MB of zeros: ~10 KB compressed, a ratio of ~1000.
        let bomb = gzip(&vec![0u8; 10 * 1024 * 1024]);
        let mut h = headers("gzip");
        let e = decode_request(&mut h, Bytes::from(bomb), LIMITS).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        // Under the body limit but over the ratio.
        let small = gzip(&vec![b'a'; 200 * 1024]);
        assert!(small.len() * 100 < 200 * 1024);
        let e = decode_request(&mut headers("gzip"), Bytes::from(small), LIMITS).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let e = decode_request(
            &mut headers("gzip"),
            Bytes::from_static(b"not gzip"),
            LIMITS,
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = decode_request(&mut headers("zstd"), Bytes::from_static(b"x"), LIMITS).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(e.message.contains("zstd"));
    }
}
