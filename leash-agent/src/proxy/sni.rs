//! Peeking at the first bytes of an intercepted connection: is it TLS, and
//! which server name does its `ClientHello` ask for? The bytes read are kept so
//! the connection can then be terminated or spliced as if never touched.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// TLS record header: type, version (2), length (2).
const RECORD_HEADER: usize = 5;
const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 0x01;
/// A `ClientHello` larger than this is not waited for (max TLS record).
const MAX_HELLO: usize = RECORD_HEADER + 16 * 1024;

/// What the first bytes of a connection were.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not TLS (or not a ClientHello): splice untouched.
    NotTls,
    /// TLS, with the server name if the client sent one.
    Tls { sni: Option<String> },
}

/// Reads the first TLS record (up to [`MAX_HELLO`] bytes, within `timeout`)
/// and returns what it is plus every byte read.
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
                return Ok(Hello::NotTls);
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(Hello::NotTls);
            }
        }
    };
    let hello = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no ClientHello in time"))??;
    Ok((hello, buf.freeze()))
}

/// `Some` once `data` (the first bytes of a connection) is enough to
/// decide what the connection is.
pub fn parse(data: &[u8]) -> Option<Hello> {
    let first = *data.first()?;
    if first != HANDSHAKE {
        return Some(Hello::NotTls);
    }
    if data.len() < RECORD_HEADER {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([data[3], data[4]]));
    if data.len() < RECORD_HEADER + len {
        return None;
    }
    Some(client_hello(&data[RECORD_HEADER..RECORD_HEADER + len]))
}

/// A cursor over a byte slice with bounds-checked reads.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// What a handshake record holds: a `ClientHello` (with its SNI, if any)
/// or something else.
fn client_hello(handshake: &[u8]) -> Hello {
    match client_hello_sni(handshake) {
        Some(Sni::Name(name)) => Hello::Tls { sni: Some(name) },
        Some(Sni::Absent) => Hello::Tls { sni: None },
        None => Hello::NotTls,
    }
}

enum Sni {
    Name(String),
    Absent,
}

/// The SNI of a well-formed `ClientHello`; `None` when it is not one.
fn client_hello_sni(handshake: &[u8]) -> Option<Sni> {
    let mut r = Reader(handshake);
    if r.u8()? != CLIENT_HELLO {
        return None;
    }
    let len = r.take(3)?;
    let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
    // The hello may continue in a later record; parse what this one holds.
    let mut r = Reader(&r.0[..len.min(r.0.len())]);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let Some(mut exts) = r.vec16().map(Reader) else {
        return Some(Sni::Absent);
    };
    while let (Some(kind), Some(data)) = (exts.u16(), exts.vec16()) {
        if kind != 0 {
            continue;
        }
        let mut list = Reader(Reader(data).vec16()?);
        while let (Some(name_type), Some(name)) = (list.u8(), list.vec16()) {
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                let name = name.trim_end_matches('.');
                // An empty host name (or only dots) is malformed (RFC 6066:
                // at least one byte): no usable SNI, as if none was sent.
                // Found by the `client_hello` fuzz target.
                if name.is_empty() {
                    return Some(Sni::Absent);
                }
                return Some(Sni::Name(name.to_ascii_lowercase()));
            }
        }
    }
    Some(Sni::Absent)
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
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test records are small")]
mod tests {
    use super::*;

    /// A minimal `ClientHello` record with the given SNI.
    fn hello(sni: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let mut list = vec![0u8];
            list.extend((name.len() as u16).to_be_bytes());
            list.extend(name.as_bytes());
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend(list);
            exts.extend(0u16.to_be_bytes());
            exts.extend((data.len() as u16).to_be_bytes());
            exts.extend(data);
        }
        // An unrelated extension after it.
        exts.extend(43u16.to_be_bytes());
        exts.extend(3u16.to_be_bytes());
        exts.extend([2, 3, 4]);
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0);
        body.extend(2u16.to_be_bytes());
        body.extend([0x13, 0x01]);
        body.extend([1, 0]);
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![CLIENT_HELLO];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![HANDSHAKE, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn finds_sni() {
        assert_eq!(
            parse(&hello(Some("API.OpenAI.com."))),
            Some(Hello::Tls {
                sni: Some("api.openai.com".into())
            })
        );
        assert_eq!(parse(&hello(None)), Some(Hello::Tls { sni: None }));
        // An empty name (or only dots) is no name (found by fuzzing).
        assert_eq!(parse(&hello(Some(""))), Some(Hello::Tls { sni: None }));
        assert_eq!(parse(&hello(Some(".."))), Some(Hello::Tls { sni: None }));
    }

    #[test]
    fn waits_for_the_whole_record_and_rejects_non_tls() {
        let full = hello(Some("api.anthropic.com"));
        assert_eq!(parse(&full[..10]), None);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Some(Hello::NotTls));
        // Garbage after a handshake byte is not a ClientHello.
        let mut junk = vec![HANDSHAKE, 3, 1, 0, 4];
        junk.extend([9, 9, 9, 9]);
        assert_eq!(parse(&junk), Some(Hello::NotTls));
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
}
