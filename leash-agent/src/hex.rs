//! Lower-case hex, as hashes, key digests and trace ids are written.

use std::fmt::Write as _;

/// `bytes` as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}
