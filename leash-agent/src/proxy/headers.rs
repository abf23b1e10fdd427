//! Header hygiene between caller and upstream: hop-by-hop headers and Leash's
//! own `x-leash-*` headers never cross; API keys pass untouched.

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

const LEASH_PREFIX: &str = "x-leash-";

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

fn remove_leash_headers(headers: &mut HeaderMap) {
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(LEASH_PREFIX))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
}

/// Prepares the caller's headers for the upstream. The upstream `Host` comes
/// from the target URI; bodies are requested uncompressed so Leash can read
/// what it forwards.
pub fn sanitize_request(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    remove_leash_headers(headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
}

/// Prepares the upstream's headers for the caller. `alt-svc` goes too: it
/// would invite the client to reach the provider over another protocol
/// (HTTP/3 over QUIC) that does not come through Leash.
pub fn sanitize_response(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    remove_leash_headers(headers);
    headers.remove(header::ALT_SVC);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_are_cleaned_but_keys_kept() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer sk-test".parse().unwrap());
        h.insert("x-api-key", "k".parse().unwrap());
        h.insert("x-leash-team", "secops".parse().unwrap());
        h.insert("connection", "keep-alive, x-custom-hop".parse().unwrap());
        h.insert("x-custom-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("host", "gw".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("accept-encoding", "gzip".parse().unwrap());
        sanitize_request(&mut h);
        assert_eq!(h["authorization"], "Bearer sk-test");
        assert_eq!(h["x-api-key"], "k");
        assert_eq!(h["accept-encoding"], "identity");
        for gone in [
            "x-leash-team",
            "connection",
            "x-custom-hop",
            "keep-alive",
            "host",
            "transfer-encoding",
        ] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
    }
}
