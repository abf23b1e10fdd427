//! Lower-case hex, as hashes, key digests and trace ids are written.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `bytes` as lower-case hex (a table lookup per nibble: every audit record
/// seals its line with a hex SHA-256, so this is on the hot path).
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    encode_into(bytes, &mut out);
    out
}

/// As [`encode`], appended to `out`.
pub fn encode_into(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lower_case_two_digits_per_byte() {
        assert_eq!(super::encode(&[0x00, 0x0f, 0xa0, 0xff, 0x12]), "000fa0ff12");
        assert_eq!(super::encode(&[]), "");
    }
}
