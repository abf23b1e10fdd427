//! Accept loops: TCP connections served with HTTP/1.1 and HTTP/2,
//! `TCP_NODELAY` on, header-read timeout, header and stream limits, a
//! connection cap, graceful drain on shutdown. Every listener (gateway,
//! transparent proxy, admin) is this one loop: what differs is how a
//! connection is opened (an [`Opener`]: plain, TLS, or the transparent
//! proxy's look at the `ClientHello`).

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulConnection},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;

use crate::field::{FieldError, invalid, positive};

/// Something that answers requests on a listener.
pub trait Handler: Send + Sync + 'static {
    type Body: http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static;

    fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// Per-listener protocol limits (the gateway's are configurable; the admin
/// listener uses the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Request line + headers, in bytes (beyond: 431).
    pub max_header_bytes: usize,
    /// Header fields per request (beyond: 431).
    pub max_headers: usize,
    /// Open client connections; past it new ones are closed at once.
    pub max_connections: usize,
    /// HTTP/2 streams open at once per connection.
    pub max_concurrent_streams: u32,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 4096,
            max_concurrent_streams: 100,
        }
    }
}

/// The limits as a config section gives them (`None`: the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct RawLimits {
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_concurrent_streams: Option<u32>,
}

impl ConnLimits {
    /// Validates `raw`; `section` prefixes the field names in errors.
    pub fn validate(raw: RawLimits, section: &str) -> Result<Self, FieldError> {
        let d = Self::default();
        let field = |name: &str| format!("{section}.{name}");
        let max_header_bytes = raw.max_header_bytes.unwrap_or(d.max_header_bytes);
        if !(8192..=16 * 1024 * 1024).contains(&max_header_bytes) {
            return Err(invalid(
                field("max_header_bytes"),
                "must be between 8192 and 16777216",
            ));
        }
        Ok(Self {
            max_header_bytes,
            max_headers: positive(&field("max_headers"), raw.max_headers, d.max_headers)?,
            max_connections: positive(
                &field("max_connections"),
                raw.max_connections,
                d.max_connections,
            )?,
            max_concurrent_streams: positive(
                &field("max_concurrent_streams"),
                raw.max_concurrent_streams,
                d.max_concurrent_streams,
            )?,
        })
    }
}

/// A connection's byte stream, once opened.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// An opened connection: the stream to serve and who answers on it.
pub type Opened<H> = Option<(Box<dyn Io>, Arc<H>)>;

/// How a listener opens a connection before HTTP is served on it.
pub trait Opener: Send + Sync + 'static {
    type Handler: Handler;

    /// The stream to serve HTTP on and who answers its requests, or `None`
    /// when the connection was dealt with here (refused, spliced, a failed
    /// handshake). Runs under the connection cap.
    fn open(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = Opened<Self::Handler>> + Send;
}

/// Plain TCP, or TLS with one certificate: one handler for all.
pub struct Plain<H> {
    tls: Option<TlsAcceptor>,
    handler: Arc<H>,
    name: &'static str,
}

impl<H: Handler> Opener for Plain<H> {
    type Handler = H;

    async fn open(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) -> Opened<H> {
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(stream),
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(tls) => Box::new(tls),
                Err(e) => {
                    tracing::debug!(listener = self.name, %peer, error = %e, "TLS handshake failed");
                    return None;
                }
            },
        };
        Some((io, Arc::clone(&self.handler)))
    }
}

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub name: &'static str,
    pub header_read_timeout: Duration,
    /// How long in-flight connections may take to finish after shutdown.
    pub drain_timeout: Duration,
    pub limits: ConnLimits,
}

/// The next connection, with `TCP_NODELAY` on. An accept error (out of file
/// descriptors and the like) is logged, followed by a short back-off, and
/// yields `None`: the caller keeps serving.
pub async fn accept(
    listener: &TcpListener,
    name: &str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok((stream, peer)) => {
            let _ = stream.set_nodelay(true);
            Some((stream, peer))
        }
        Err(e) => {
            tracing::warn!(listener = name, error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// Serves `handler` on `listener` (plain or TLS) until `shutdown` turns
/// true, then drains.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: Arc<H>,
    options: ServeOptions,
    shutdown: watch::Receiver<bool>,
) {
    let opener = Arc::new(Plain {
        tls,
        handler,
        name: options.name,
    });
    serve_with(listener, opener, options, shutdown).await;
}

/// Serves the connections `opener` opens on `listener` until `shutdown`
/// turns true, then drains.
pub async fn serve_with<O: Opener>(
    listener: TcpListener,
    opener: Arc<O>,
    options: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = options.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Rapid reset (CVE-2023-44487): a client that keeps opening and
        // cancelling streams is cut off.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256));
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    // A connection accepted just before a drain gets its first request
    // served (it was sent to a socket that was accepting), within this.
    let first_grace = options.header_read_timeout.min(options.drain_timeout);
    let graces = (first_grace, IDLE_GRACE.min(options.drain_timeout));
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        tokio::select! {
            accepted = accept(&listener, options.name) => {
                let Some((stream, peer)) = accepted else { continue };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    // Over the connection cap: closed at once, never queued.
                    tracing::warn!(listener = options.name, %peer, max = limits.max_connections, "connection refused: too many open connections");
                    drop(stream);
                    continue;
                };
                let opener = Arc::clone(&opener);
                let builder = builder.clone();
                let stop = shutdown.clone();
                let draining = Arc::clone(&draining);
                let name = options.name;
                tokio::spawn(async move {
                    let _permit = permit;
                    let Some((io, handler)) = opener.open(stream, peer).await else {
                        return;
                    };
                    let seen = Arc::new(Seen::default());
                    let on_request = Arc::clone(&seen);
                    let service = service_fn(move |req: Request<Incoming>| {
                        let handler = Arc::clone(&handler);
                        let http1 = req.version() < http::Version::HTTP_2;
                        on_request.request(http1);
                        let draining = Arc::clone(&draining);
                        async move {
                            let mut response = handler.handle(peer, req).await;
                            if http1 && draining.load(std::sync::atomic::Ordering::Relaxed) {
                                // The client's next request goes on a new
                                // connection: to the process that serves on.
                                response.headers_mut().insert(
                                    http::header::CONNECTION,
                                    http::HeaderValue::from_static("close"),
                                );
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let conn = builder.serve_connection(TokioIo::new(io), service).into_owned();
                    if let Err(e) = drained(conn, stop, seen, graces).await {
                        tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    draining.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(listener);
    // Every connection holds a permit until it ends.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(options.drain_timeout, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            listener = options.name,
            "connections still open after the drain timeout"
        );
    }
}

/// How long a drain waits for the next request on an idle HTTP/1
/// keep-alive connection (capped by the drain timeout): a client that
/// sends steadily gets its next answer with `connection: close` and moves
/// to a new connection, instead of meeting a connection closed under it.
const IDLE_GRACE: Duration = Duration::from_secs(2);

/// What a drain knows of a connection's requests.
#[derive(Default)]
struct Seen {
    count: std::sync::atomic::AtomicU64,
    http2: std::sync::atomic::AtomicBool,
    next: tokio::sync::Notify,
}

impl Seen {
    fn request(&self, http1: bool) {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !http1 {
            self.http2.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.next.notify_one();
    }

    fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Serves `conn` until it ends; once `stop` turns true, it finishes what
/// is in flight and closes (HTTP/1: after the current response; HTTP/2:
/// GOAWAY, open streams complete). An HTTP/1 connection first gets its
/// next request read and served, with `connection: close`: one whose first
/// request was not read yet within `first_grace` (its client sent it to a
/// socket that was accepting), a keep-alive one within `idle_grace`.
fn drained<C>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    seen: Arc<Seen>,
    (first_grace, idle_grace): (Duration, Duration),
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), C::Error>> + Send>>
where
    C: GracefulConnection + Send + 'static,
    C::Error: Send,
{
    Box::pin(async move {
        let mut conn = std::pin::pin!(conn);
        let stopping = async move {
            loop {
                let now = *stop.borrow_and_update();
                if now {
                    return;
                }
                if stop.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            r = conn.as_mut() => return r,
            () = stopping => {}
        }
        let at_stop = seen.count();
        if !seen.http2.load(std::sync::atomic::Ordering::Relaxed) {
            let grace = if at_stop == 0 {
                first_grace
            } else {
                idle_grace
            };
            let deadline = tokio::time::sleep(grace);
            let mut deadline = std::pin::pin!(deadline);
            while seen.count() == at_stop {
                tokio::select! {
                    r = conn.as_mut() => return r,
                    () = &mut deadline => break,
                    () = seen.next.notified() => {}
                }
            }
        }
        conn.as_mut().graceful_shutdown();
        conn.await
    })
}
