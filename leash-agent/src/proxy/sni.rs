//! Reading the first bytes of an intercepted connection: is it TLS, and
//! which server name does its `ClientHello` ask for? The hello is read by
//! rustls' own `Acceptor`, which reassembles a hello split across several
//! TLS records, so what Leash decides on is what a TLS server would see. The
//! bytes read are kept so the connection can then be terminated or spliced
//! as if never touched.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf as _, Bytes, BytesMut};
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

const HANDSHAKE: u8 = 0x16;
/// A `ClientHello` larger than this is not waited for (a hello of many
/// records still fits; real ones are a few hundred bytes to a few KiB).
const MAX_HELLO: usize = 64 * 1024;

/// What the first bytes of a connection were.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not TLS: the first byte is not a handshake record.
    NotTls,
    /// A TLS handshake record that is not a well-formed `ClientHello` (or
    /// one that never completed within the size limit).
    Malformed,
    /// A `ClientHello`, with the server name if the client sent one.
    Tls { sni: Option<String> },
}

/// Reads the `ClientHello` (across as many records as it takes, up to
/// [`MAX_HELLO`] bytes, within `timeout`) and returns what it is plus every
/// byte read.
pub async fn peek_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> io::Result<(Hello, Bytes)> {
    let mut buf = BytesMut::with_capacity(2048);
    let read = async {
        loop {
            if let Some(hello) = parse(&buf) {
                return Ok::<_, io::Error>(hello);
            }
            if buf.len() >= MAX_HELLO {
                return Ok(Hello::Malformed);
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(if buf.is_empty() {
                    Hello::NotTls
                } else {
                    Hello::Malformed
                });
            }
        }
    };
    let hello = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no ClientHello in time"))??;
    Ok((hello, buf.freeze()))
}

/// `Some` once `data` (the first bytes of a connection) is enough to
/// decide what the connection is; `None`: more bytes are needed.
pub fn parse(data: &[u8]) -> Option<Hello> {
    let first = *data.first()?;
    if first != HANDSHAKE {
        return Some(Hello::NotTls);
    }
    let mut acceptor = Acceptor::default();
    let mut rest = data;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            // The acceptor's buffer is full: more than a hello.
            Err(_) => return Some(Hello::Malformed),
        }
        match acceptor.accept() {
            Ok(None) => {}
            Ok(Some(accepted)) => {
                let sni = accepted
                    .client_hello()
                    .server_name()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                    .filter(|n| !n.is_empty());
                return Some(Hello::Tls { sni });
            }
            Err(_) => return Some(Hello::Malformed),
        }
    }
    None
}

/// A stream that first replays bytes already read from it.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    /// Passed through: TLS writes a handshake flight or an answer's
    /// records as several buffers, and without this each went out in a
    /// system call (and a segment, and a wake-up of the client) of its own.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::{ClientConfig, ClientConnection, RootCertStore, pki_types::ServerName};

    use super::*;

    /// The `ClientHello` rustls' client sends for `name` (no SNI for an IP
    /// address).
    fn hello(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    /// The same hello cut into `parts` TLS records.
    fn split_records(record: &[u8], parts: usize) -> Vec<u8> {
        let body = &record[5..];
        let step = body.len().div_ceil(parts);
        let mut out = Vec::new();
        for chunk in body.chunks(step) {
            out.extend_from_slice(&record[..3]);
            out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn finds_sni_in_one_record_or_many() {
        let want = Some(Hello::Tls {
            sni: Some("api.openai.com".into()),
        });
        let one = hello("API.OpenAI.com");
        assert_eq!(parse(&one), want);
        for parts in [2, 3, 7] {
            let split = split_records(&one, parts);
            assert_eq!(parse(&split), want, "{parts} records");
            // Not before the last record is in.
            assert_eq!(parse(&split[..split.len() - 1]), None);
        }
        assert_eq!(parse(&hello("127.10.0.1")), Some(Hello::Tls { sni: None }));
    }

    #[test]
    fn waits_for_the_hello_and_tells_non_tls_and_malformed_apart() {
        let full = hello("api.anthropic.com");
        assert_eq!(parse(&full[..10]), None);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Some(Hello::NotTls));
        // Garbage after a handshake byte is not a ClientHello.
        let mut junk = vec![HANDSHAKE, 3, 1, 0, 4];
        junk.extend([9, 9, 9, 9]);
        assert_eq!(parse(&junk), Some(Hello::Malformed));
    }

    #[tokio::test]
    async fn a_hello_arriving_in_pieces_is_read_whole() {
        let split = split_records(&hello("api.openai.com"), 3);
        let (mut a, mut b) = tokio::io::duplex(64);
        let sent = split.clone();
        tokio::spawn(async move {
            for piece in sent.chunks(50) {
                tokio::io::AsyncWriteExt::write_all(&mut a, piece)
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        });
        let (hello, prefix) = peek_client_hello(&mut b, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            hello,
            Hello::Tls {
                sni: Some("api.openai.com".into())
            }
        );
        assert_eq!(&prefix[..], &split[..]);
    }

    #[tokio::test]
    async fn prefixed_replays_then_reads_on() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world")
            .await
            .unwrap();
        drop(a);
        let mut s = Prefixed::new(Bytes::from_static(b"hello"), b);
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn prefixed_writes_many_buffers_in_one_call() {
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (mut peer, _) = accepted.unwrap();
        let mut s = Prefixed::new(Bytes::new(), client.unwrap());
        assert!(s.is_write_vectored());
        let parts: [&[u8]; 3] = [b"server hello", b"", b"certificate and finished"];
        let slices = parts.map(io::IoSlice::new);
        // One call takes every buffer (a TLS flight in one segment), not
        // only the first as the default would.
        let n = s.write_vectored(&slices).await.unwrap();
        assert_eq!(n, parts.concat().len());
        drop(s);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, parts.concat());
    }
}
