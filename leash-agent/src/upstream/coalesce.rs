//! Upstream HTTP/2 connections whose writes are held for one turn of the
//! scheduler before they are sent.
//!
//! hyper sends an HTTP/2 request with a body in two steps: the HEADERS
//! frame from the connection's task, then the DATA frames from a second
//! task that h2 gives send capacity only once the stream is open — that
//! is, once HEADERS has been written. Each step ends in a flush, so each
//! request cost two socket writes and woke the provider's end twice. Here
//! the first flush after a write yields once instead (the task is woken
//! at once, so nothing waits on anything else): the body's task runs in
//! between, and the next flush sends HEADERS and DATA in one write.
//!
//! HTTP/1.1 connections pass straight through: hyper already writes a
//! request's head and buffered body together. What is held is bounded
//! ([`HELD_MAX`]): past it, the bytes go out before more are taken.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use futures_util::{TryFutureExt as _, future::MapOk};
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};

/// Most bytes held before a flush: larger writes (a big request body) go
/// out as they come.
const HELD_MAX: usize = 64 * 1024;

/// A connector whose HTTP/2 connections are [`Coalesced`].
#[derive(Clone, Debug)]
pub struct Coalescing<C>(pub C);

impl<C> tower_service::Service<Uri> for Coalescing<C>
where
    C: tower_service::Service<Uri>,
    C::Response: Connection,
{
    type Response = Coalesced<C::Response>;
    type Error = C::Error;
    type Future = MapOk<C::Future, fn(C::Response) -> Coalesced<C::Response>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        self.0.call(uri).map_ok(Coalesced::new)
    }
}

/// An upstream connection; see the module's documentation.
#[derive(Debug)]
pub struct Coalesced<T> {
    inner: T,
    /// `None`: writes pass straight through (not HTTP/2).
    held: Option<Held>,
}

#[derive(Debug, Default)]
struct Held {
    bytes: Vec<u8>,
    /// How much of `bytes` has been written to the connection.
    sent: usize,
    /// The flush that found `bytes` waiting has yielded once.
    yielded: bool,
}

impl<T: Connection> Coalesced<T> {
    fn new(inner: T) -> Self {
        let held = inner.connected().is_negotiated_h2().then(Held::default);
        Self { inner, held }
    }
}

impl<T: Connection> Connection for Coalesced<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

impl Held {
    /// Writes what is held, all of it, to `inner`.
    fn poll_send<T: Write + Unpin>(
        &mut self,
        inner: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.sent < self.bytes.len() {
            let n = ready!(Pin::new(&mut *inner).poll_write(cx, &self.bytes[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.bytes.clear();
        self.sent = 0;
        self.yielded = false;
        Poll::Ready(Ok(()))
    }
}

impl<T: Read + Unpin> Read for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Coalesced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Self { inner, held } = &mut *self;
        let Some(held) = held else {
            return Pin::new(inner).poll_write_vectored(cx, bufs);
        };
        if held.bytes.len() >= HELD_MAX {
            ready!(held.poll_send(inner, cx))?;
        }
        let room = HELD_MAX - held.bytes.len();
        let mut taken = 0;
        for buf in bufs {
            let take = buf.len().min(room - taken);
            held.bytes.extend_from_slice(&buf[..take]);
            taken += take;
            if taken == room {
                break;
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        self.held.is_some() || self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Self { inner, held } = &mut *self;
        if let Some(held) = held
            && !held.bytes.is_empty()
        {
            if !held.yielded {
                held.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(held.poll_send(inner, cx))?;
        }
        Pin::new(inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Self { inner, held } = &mut *self;
        if let Some(held) = held {
            ready!(held.poll_send(inner, cx))?;
        }
        Pin::new(inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use futures_util::task::{ArcWake, waker};

    use super::*;

    /// A connection that records each write it is given.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
    }

    impl Write for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl ArcWake for Wakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A waker, and how many times it was woken.
    fn counting_waker() -> (Arc<Wakes>, std::task::Waker) {
        let wakes = Arc::new(Wakes::default());
        (Arc::clone(&wakes), waker(wakes))
    }

    fn conn(h2: bool) -> Coalesced<Recorder> {
        Coalesced {
            inner: Recorder::default(),
            held: h2.then(Held::default),
        }
    }

    fn write(c: &mut Coalesced<Recorder>, cx: &mut Context<'_>, bytes: &[u8]) -> usize {
        match Pin::new(c).poll_write(cx, bytes) {
            Poll::Ready(Ok(n)) => n,
            other => panic!("write: {other:?}"),
        }
    }

    #[test]
    fn what_two_flushes_send_goes_out_in_one_write_after_one_yield() {
        let (wakes, woken) = counting_waker();
        let mut cx = Context::from_waker(&woken);
        let mut c = conn(true);
        assert_eq!(write(&mut c, &mut cx, b"HEADERS"), 7);
        // The first flush yields, waking its task at once; nothing is sent.
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(c.inner.writes.is_empty());
        // The body's task writes meanwhile; the next flush sends both.
        assert_eq!(write(&mut c, &mut cx, b"DATA"), 4);
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
        assert_eq!(c.inner.writes, vec![b"HEADERSDATA".to_vec()]);
        assert_eq!(c.inner.flushes, 1);
        // Nothing held: a flush goes straight through, and the next write
        // yields once again before it is sent.
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
        write(&mut c, &mut cx, b"PING");
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending());
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
        assert_eq!(c.inner.writes.len(), 2);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn other_connections_pass_straight_through() {
        let (wakes, woken) = counting_waker();
        let mut cx = Context::from_waker(&woken);
        let mut c = conn(false);
        write(&mut c, &mut cx, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(c.inner.writes.len(), 1);
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn what_is_held_is_bounded_and_nothing_is_lost() {
        let (_, woken) = counting_waker();
        let mut cx = Context::from_waker(&woken);
        let mut c = conn(true);
        let body: Vec<u8> = (0..=250u8).cycle().take(3 * HELD_MAX + 5).collect();
        let mut at = 0;
        while at < body.len() {
            at += write(&mut c, &mut cx, &body[at..]);
            assert!(c.held.as_ref().is_some_and(|h| h.bytes.len() <= HELD_MAX));
        }
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending());
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
        assert_eq!(c.inner.writes.concat(), body);
        assert_eq!(c.inner.writes.len(), 4);
    }
}
