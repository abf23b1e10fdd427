//! Validators: what a regex candidate must also satisfy to count. Checksums
//! (Luhn, mod-97, GitHub's and npm's CRC32), structure (base64 that decodes
//! to the right length, a JWT header that is JSON), randomness (Shannon
//! entropy), and the placeholders documentation uses instead of real
//! values (`AKIAIOSFODNN7EXAMPLE`, `sk-your-key-here`, `<password>`,
//! `xxxx…`, `${VAR}`).

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};

pub type Validator = fn(&str) -> bool;

fn luhn(digits: &str) -> bool {
    let ds: Vec<u32> = digits.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&ds.len()) {
        return false;
    }
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Luhn plus a known issuer prefix (Visa, Mastercard, Amex, Discover, JCB,
/// Diners, `UnionPay`).
pub fn credit_card(text: &str) -> bool {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    let iin = |p: &str| digits.starts_with(p);
    let n2: u32 = digits.get(..2).and_then(|p| p.parse().ok()).unwrap_or(0);
    let n4: u32 = digits.get(..4).and_then(|p| p.parse().ok()).unwrap_or(0);
    let known = iin("4")
        || (51..=55).contains(&n2)
        || (2221..=2720).contains(&n4)
        || iin("34")
        || iin("37")
        || iin("6011")
        || iin("65")
        || (3528..=3589).contains(&n4)
        || iin("36")
        || iin("62");
    known && luhn(&digits)
}

/// Area 001-899 except 666, group 01-99, serial 0001-9999.
pub fn us_ssn(text: &str) -> bool {
    let d: Vec<&str> = text.split('-').collect();
    let [area, group, serial] = d.as_slice() else {
        return false;
    };
    let (Ok(a), Ok(g), Ok(s)) = (
        area.parse::<u32>(),
        group.parse::<u32>(),
        serial.parse::<u32>(),
    ) else {
        return false;
    };
    a != 0 && a != 666 && a < 900 && g != 0 && s != 0
}

/// ISO 13616 mod-97 check.
pub fn iban(text: &str) -> bool {
    let s: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&s.len()) {
        return false;
    }
    let rearranged = format!("{}{}", &s[4..], &s[..4]);
    let mut rem: u64 = 0;
    for c in rearranged.chars() {
        let v = match c {
            '0'..='9' => u64::from(c as u8 - b'0'),
            'A'..='Z' => u64::from(c as u8 - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// Phone numbers: 10 to 15 digits, and not a date, time or plain run of
/// digits without phone punctuation or a leading `+`.
pub fn phone(text: &str) -> bool {
    let digits = text.chars().filter(char::is_ascii_digit).count();
    let formatted = text.starts_with('+')
        || text.contains('(')
        || text.contains(' ')
        || text.contains('-')
        || text.contains('.');
    (10..=15).contains(&digits) && formatted
}

/// An IPv6 address that names a host: it parses, and has at least three
/// groups written out (so `std::io`, `a::b`, MACs and clock times do not
/// count; `::1` and `fe80::1` are not worth reporting).
pub fn ipv6(text: &str) -> bool {
    let Ok(addr) = text.parse::<std::net::Ipv6Addr>() else {
        return false;
    };
    let groups = text.split(':').filter(|g| !g.is_empty()).count();
    !addr.is_unspecified() && groups >= 3
}

/// Shannon entropy in bits per character.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    #[allow(clippy::cast_precision_loss, reason = "short strings")]
    let len = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum()
}

/// Words that documentation and templates put where a secret would go.
const PLACEHOLDER_WORDS: &[&str] = &[
    "example",
    "your",
    "placeholder",
    "redacted",
    "dummy",
    "sample",
    "changeme",
    "insert",
    "replace",
    "mytoken",
    "mykey",
    "fake",
    "xxxx",
    "0000000",
];

/// A documented placeholder rather than a value: one of the words above, a
/// run of six identical characters (`xxxxxx`, `******`, `000000`), or
/// template syntax (`<…>`, `{…}`, `${…}`, `%s`).
pub fn placeholder(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    if PLACEHOLDER_WORDS.iter().any(|w| lower.contains(w)) {
        return true;
    }
    if s.contains(['<', '>', '{', '}']) || s.contains("%s") || s.contains("$(") {
        return true;
    }
    let b = s.as_bytes();
    b.windows(6).any(|w| w.iter().all(|&c| c == w[0]))
}

/// Keys with a fixed, specific shape still need some randomness.
pub fn random_enough(text: &str) -> bool {
    entropy(text) >= 3.5
}

/// Hexadecimal secrets: 16 symbols, so less entropy is possible.
pub fn hex_random(text: &str) -> bool {
    entropy(text) >= 3.0
}

/// AWS access key ids: 16 characters from a 32-letter alphabet after the
/// prefix, so repeats are common; a run of one character is not a key.
pub fn aws_key_id(text: &str) -> bool {
    entropy(text) >= 3.0
}

/// `OpenAI` keys, and not the `sk-ant-` keys of Anthropic or the `sk-or-`
/// keys of `OpenRouter` (their own detectors).
pub fn openai_key(text: &str) -> bool {
    !text.starts_with("sk-ant-") && !text.starts_with("sk-or-") && random_enough(text)
}

/// `password=...` style assignments: the value must look random, and not
/// like code that reads a secret (`os.environ[...]`, `process.env.X`,
/// `$VAR`, a function call).
pub fn generic_secret(text: &str) -> bool {
    let value = text
        .split_once(['=', ':'])
        .map_or("", |(_, v)| v)
        .trim()
        .trim_matches(['"', '\'']);
    // An attribute path (`settings.API_KEY`, `config.db.password`) reads
    // a secret from somewhere; it is not one.
    let attribute = value.contains('.')
        && value.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    let code = value.contains(['(', '[', '{', '$'])
        || value.starts_with("os.")
        || value.starts_with("process.")
        || attribute;
    // Letters only need more randomness than a mix with digits or symbols
    // (`myDatabasePassword` is a name, `UputPykHgpnOxw` is not).
    let mixed = value
        .chars()
        .any(|c| c.is_ascii_digit() || "!#%&@^*~+/".contains(c));
    let needed = if mixed { 3.0 } else { 3.5 };
    value.len() >= 8 && !code && entropy(value) >= needed
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// GitHub (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`) and npm (`npm_`) tokens:
/// 30 random base62 characters after the 4-character prefix, then their
/// CRC32 in base62, zero-padded to 6 characters (the format both vendors
/// published in 2021).
pub fn base62_crc32_token(text: &str) -> bool {
    let Some(body) = text.get(4..) else {
        return false;
    };
    if body.len() != 36 || !body.bytes().all(|c| c.is_ascii_alphanumeric()) {
        return false;
    }
    let (random, check) = body.split_at(30);
    let mut n = crc32fast::hash(random.as_bytes());
    let mut want = [b'0'; 6];
    for slot in want.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    check.as_bytes() == want
}

/// Azure storage account keys: base64 of 64 random bytes.
pub fn azure_storage_key(text: &str) -> bool {
    STANDARD.decode(text).is_ok_and(|k| k.len() == 64)
}

/// Azure SAS signatures: base64 (percent-encoded in the URL) of a 32-byte
/// HMAC-SHA256.
pub fn azure_sas_signature(text: &str) -> bool {
    let decoded = text
        .replace("%2B", "+")
        .replace("%2b", "+")
        .replace("%2F", "/")
        .replace("%2f", "/")
        .replace("%3D", "=")
        .replace("%3d", "=");
    STANDARD.decode(decoded).is_ok_and(|k| k.len() == 32)
}

/// A JWT with a signature: the header decodes to a JSON object naming an
/// algorithm other than `none`, the payload to a JSON object.
pub fn jwt(text: &str) -> bool {
    let mut parts = text.split('.');
    let (Some(head), Some(payload), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let object = |part: &str| -> Option<serde_json::Map<String, serde_json::Value>> {
        let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
        match serde_json::from_slice(&bytes).ok()? {
            serde_json::Value::Object(m) => Some(m),
            _ => None,
        }
    };
    let Some(header) = object(head) else {
        return false;
    };
    let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("none");
    !alg.eq_ignore_ascii_case("none") && object(payload).is_some() && sig.len() >= 16
}

/// Discord bot tokens: the first part is the bot's numeric user id in
/// base64.
pub fn discord_bot_token(text: &str) -> bool {
    let id = text.split('.').next().unwrap_or("");
    URL_SAFE_NO_PAD
        .decode(id.trim_end_matches('='))
        .is_ok_and(|d| (17..=20).contains(&d.len()) && d.iter().all(u8::is_ascii_digit))
        && random_enough(text)
}

/// A password written into a URL or connection string: a value, not a
/// placeholder, an environment variable or a template.
pub fn real_password(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    let generic = [
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "mypassword",
        "pw",
        "user",
        "admin",
    ];
    !text.is_empty()
        && !generic.contains(&lower.as_str())
        && !text.starts_with('$')
        && !text.starts_with('%')
        && !text.starts_with(':')
        && !text
            .chars()
            .all(|c| c == '*' || c == 'x' || c == 'X' || c == '.')
        && !placeholder(text)
}

/// A PEM private key block with real key material after its header (not a
/// header quoted on its own, nor `AAAA…`/`...` filler).
pub fn pem_private_key(text: &str) -> bool {
    let body: String = text
        .lines()
        .flat_map(|l| l.split("\\n"))
        .filter(|l| !l.starts_with("-----") && !l.contains(": "))
        .flat_map(str::chars)
        .filter(|c| c.is_ascii_alphanumeric() || *c == '+' || *c == '/')
        .collect();
    body.len() >= 24 && entropy(&body) >= 3.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_github_checksum_is_base62_crc32_of_the_random_part() {
        // Built here from the published rule, independently of the
        // validator: CRC32 of the 30 random characters, base62, 6 digits.
        let random = "Zq8xK2mP9vL4nR7tW1yB5cD3fG6hJ0";
        let mut n = crc32fast::hash(random.as_bytes());
        let mut digits = Vec::new();
        while n > 0 {
            digits.push(BASE62[(n % 62) as usize] as char);
            n /= 62;
        }
        let check: String = digits.iter().rev().collect();
        let token = format!("ghp_{random}{check:0>6}");
        assert!(base62_crc32_token(&token), "{token}");
        let mut wrong = token.clone().into_bytes();
        let last = wrong.len() - 1;
        wrong[last] = if wrong[last] == b'A' { b'B' } else { b'A' };
        assert!(!base62_crc32_token(&String::from_utf8(wrong).unwrap()));
    }

    #[test]
    fn placeholders_are_not_values() {
        for p in [
            "AKIAIOSFODNN7EXAMPLE",
            "sk-your-key-here",
            "<password>",
            "${DB_PASSWORD}",
            "xxxxxxxxxxxxxxxx",
            "ghp_000000000000000000000000000000000000",
        ] {
            assert!(placeholder(p), "{p}");
        }
        assert!(!placeholder("Zq8xK2mP9vL4nR7tW1yB5cD3fG6hJ0sA8eUi"));
    }
}
