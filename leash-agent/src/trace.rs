//! W3C trace context (`traceparent`, <https://www.w3.org/TR/trace-context/>):
//! each exchange is a span. A client's valid `traceparent` is continued —
//! the exchange is a child of the client's span, in the client's trace —
//! and without one a new trace starts. The provider receives a
//! `traceparent` naming the exchange's span; the audit record names the
//! trace and span, so a trace and its record find each other.

use http::HeaderMap;

/// One exchange's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The exchange's own span.
    pub span_id: [u8; 8],
    /// The client's span, when the client sent a `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
}

/// A random id from the thread's CSPRNG (`rand::rng()`: seeded and periodically
/// reseeded from the OS): no system call per id.
pub fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut out);
    if out.iter().all(|b| *b == 0) {
        out[N - 1] = 1;
    }
    out
}

fn hex_to<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    out.iter().any(|b| *b != 0).then_some(out)
}

/// `version-trace_id-parent_id-flags`: the ids and flags of a valid
/// `traceparent` (version `00`, or a later one read as `00` is, per the
/// specification; `ff` is invalid).
fn parse(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if version.len() != 2 || !lower_hex(version) || version == "ff" {
        return None;
    }
    if version == "00" && rest.is_some() {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16)
        .ok()
        .filter(|_| flags.len() == 2)?;
    Some((hex_to(trace)?, hex_to(parent)?, flags))
}

impl TraceContext {
    /// Continues the client's trace (one valid `traceparent` header), or
    /// starts a new one (sampled).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all("traceparent").iter();
        let client = match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok().and_then(parse),
            _ => None,
        };
        match client {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                span_id: random(),
                parent_id: Some(parent),
                sampled: flags & 1 == 1,
            },
            None => Self {
                trace_id: random(),
                span_id: random(),
                parent_id: None,
                sampled: true,
            },
        }
    }

    /// The `traceparent` the provider receives: this exchange's span.
    /// `00-<trace id>-<span id>-<flags>`, built in one allocation: every
    /// forwarded request carries one.
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        crate::hex::encode_into(&self.trace_id, &mut out);
        out.push('-');
        crate::hex::encode_into(&self.span_id, &mut out);
        out.push_str(if self.sampled { "-01" } else { "-00" });
        out
    }

    pub fn trace_hex(&self) -> String {
        crate::hex::encode(&self.trace_id)
    }

    pub fn span_hex(&self) -> String {
        crate::hex::encode(&self.span_id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn headers(v: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in v {
            h.append("traceparent", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_valid_traceparent_is_continued_and_anything_else_starts_a_trace() {
        let client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::from_headers(&headers(&[client]));
        assert_eq!(t.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_id.map(|p| crate::hex::encode(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(t.sampled);
        let sent = t.traceparent();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(
            !sent.contains("00f067aa0ba902b7"),
            "the provider gets Leash's span"
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let t = TraceContext::from_headers(&headers(&[bad]));
            assert!(t.parent_id.is_none(), "{bad}");
            assert_ne!(t.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
        }
        // Two traceparent headers: neither is trusted.
        assert!(
            TraceContext::from_headers(&headers(&[client, client]))
                .parent_id
                .is_none()
        );
        // A later version is read as version 00 is.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        let t = TraceContext::from_headers(&headers(&[later]));
        assert!(t.parent_id.is_some() && !t.sampled);
    }
}
