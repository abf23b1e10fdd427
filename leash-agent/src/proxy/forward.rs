//! Connections a process made to a forward proxy (`HTTPS_PROXY`), which the
//! kernel hooks sent to Leash instead: Leash reads the proxy request first.
//! A `CONNECT` to a provider is answered by Leash itself and the tunnel is
//! then handled like any intercepted connection (its upstream goes through
//! the real proxy); anything else is relayed to the real proxy byte for
//! byte, `Proxy-Authorization` included (never logged).

use std::{io, time::Duration};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::upstream::Secret;

/// A proxy request head larger than this is refused.
pub const MAX_HEAD: usize = 16 * 1024;

/// What a client asked its forward proxy for.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyRequest {
    /// `CONNECT host:port`.
    Connect {
        host: String,
        port: u16,
        /// The `Proxy-Authorization` value, to pass on to the real proxy.
        auth: Option<Secret>,
    },
    /// A plain-HTTP request in absolute form (`GET http://host/...`).
    Plain { host: String },
    /// Not a proxy request Leash understands: relayed as it is.
    Other,
}

/// Reads the proxy request head (up to the blank line). Returns what it
/// asks for and every byte read (to relay).
pub async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> io::Result<(ProxyRequest, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            if let Some(req) = parse(&buf) {
                return Ok(req);
            }
            if buf.len() >= MAX_HEAD {
                return Ok(ProxyRequest::Other);
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before a proxy request",
                ));
            }
        }
    };
    let req = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no proxy request in time"))??;
    Ok((req, buf.freeze()))
}

/// `Some` once `data` holds a whole request head (or is not one).
pub fn parse(data: &[u8]) -> Option<ProxyRequest> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(data) {
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(ProxyRequest::Other),
        Ok(httparse::Status::Complete(_)) => Some(classify(&req)),
    }
}

fn classify(req: &httparse::Request<'_, '_>) -> ProxyRequest {
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return ProxyRequest::Other;
    };
    if method.eq_ignore_ascii_case("CONNECT") {
        let Ok(authority) = target.parse::<http::uri::Authority>() else {
            return ProxyRequest::Other;
        };
        let auth = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
            .map(|h| Secret(h.value.to_vec()));
        return ProxyRequest::Connect {
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim_end_matches('.')
                .to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(443),
            auth,
        };
    }
    match target.parse::<http::Uri>() {
        Ok(uri) if uri.scheme().is_some() => {
            uri.host()
                .map_or(ProxyRequest::Other, |h| ProxyRequest::Plain {
                    host: h.trim_end_matches('.').to_ascii_lowercase(),
                })
        }
        _ => ProxyRequest::Other,
    }
}

/// Tells the client its tunnel is open (Leash is the far end of it now).
pub async fn established<S: AsyncWrite + Unpin>(stream: &mut S) -> io::Result<()> {
    stream
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
}

/// Refuses a plain-HTTP request to a provider (keys and prompts in clear
/// text are never forwarded).
pub async fn refuse_plain<S: AsyncWrite + Unpin>(stream: &mut S) -> io::Result<()> {
    let body = "leash: plain HTTP to an LLM provider is refused; use https\n";
    let head = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::open_tunnel;

    #[test]
    fn reads_proxy_requests() {
        assert_eq!(
            parse(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: a"),
            None
        );
        assert_eq!(
            parse(b"CONNECT API.OpenAI.com:443 HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic dTpw\r\n\r\n"),
            Some(ProxyRequest::Connect {
                host: "api.openai.com".into(),
                port: 443,
                auth: Some(Secret(b"Basic dTpw".to_vec())),
            })
        );
        assert_eq!(
            parse(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n"),
            Some(ProxyRequest::Connect {
                host: "::1".into(),
                port: 8443,
                auth: None
            })
        );
        assert_eq!(
            parse(b"POST http://api.openai.com/v1/chat/completions HTTP/1.1\r\n\r\n"),
            Some(ProxyRequest::Plain {
                host: "api.openai.com".into()
            })
        );
        assert_eq!(
            parse(b"\x16\x03\x01garbage\r\n\r\n"),
            Some(ProxyRequest::Other)
        );
        assert_eq!(format!("{:?}", Secret(b"Basic x".to_vec())), "<secret>");
    }

    #[tokio::test]
    async fn opens_a_tunnel_and_reports_a_refusal() {
        for (answer, ok) in [
            (&b"HTTP/1.1 200 Connection established\r\n\r\n"[..], true),
            (
                &b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"[..],
                false,
            ),
        ] {
            let (mut a, mut b) = tokio::io::duplex(1024);
            let server = tokio::spawn(async move {
                let (req, _) = read_request(&mut b, Duration::from_secs(5)).await.unwrap();
                b.write_all(answer).await.unwrap();
                req
            });
            let result = open_tunnel(
                &mut a,
                "api.openai.com:443",
                Some(&Secret(b"Basic k".to_vec())),
            )
            .await;
            assert_eq!(result.is_ok(), ok);
            let req = server.await.unwrap();
            assert!(matches!(req, ProxyRequest::Connect { auth: Some(_), .. }));
        }
    }
}
