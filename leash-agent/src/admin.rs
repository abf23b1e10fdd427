//! The admin listener: `GET /healthz` (alive), `GET /readyz` (every
//! readiness check holds: 200, else 503 naming the failing ones),
//! `GET /metrics` (Prometheus text)
//! and, when given one, the web console (`/`, `/console`, `/api/*`). It
//! runs on a runtime of its own, in its own thread in the `SCHED_IDLE`
//! class (`serve_isolated`): looking at the console never takes a worker
//! that serves LLM traffic, nor CPU time that traffic wants.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;

use serde::Deserialize;

use crate::{
    console::Console,
    field::{self, FieldError, invalid},
    metrics::Metrics,
    server::{self, Handler, ServeOptions},
};

/// Puts the calling thread (and the threads it starts later) in the
/// `SCHED_IDLE` class: it runs only on CPU time no other thread wants, and
/// any data-path thread that wakes takes the CPU at once.
fn idle_priority() {
    /// The kernel's `struct sched_param` (the C libraries' differ: musl's
    /// has more fields, and its `sched_setscheduler` is a stub that fails,
    /// so the system call is made directly).
    #[repr(C)]
    struct SchedParam {
        sched_priority: libc::c_int,
    }
    let param = SchedParam { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call;
    // pid 0 is the calling thread.
    #[allow(unsafe_code, reason = "sched_setscheduler has no safe wrapper")]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            libc::SCHED_IDLE,
            &raw const param,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot move the admin thread to SCHED_IDLE");
    }
}
/// Threads the admin runtime may use for reading the audit trail.
const ADMIN_READERS: usize = 2;

/// Serves `admin` on `listener` on a runtime of its own (one thread, plus
/// at most `ADMIN_READERS` for blocking reads), at idle priority, until
/// `stop`. The
/// returned task ends when that runtime has drained.
pub fn serve_isolated(
    listener: tokio::net::TcpListener,
    admin: Arc<Admin>,
    options: ServeOptions,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = listener.into_std()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("leash-admin".to_owned())
        .spawn(move || {
            // Per thread on Linux; the reader threads this one starts
            // inherit it.
            idle_priority();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(ADMIN_READERS)
                .thread_name("leash-admin-read")
                .build();
            match runtime {
                Ok(rt) => rt.block_on(async move {
                    if let Some(console) = &admin.console {
                        console.warm_up();
                    }
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => server::serve(l, None, admin, options, stop).await,
                        Err(e) => tracing::error!(error = %e, "admin listener lost"),
                    }
                }),
                Err(e) => tracing::error!(error = %e, "cannot start the admin runtime"),
            }
            let _ = done_tx.send(());
        })?;
    Ok(tokio::spawn(async move {
        let _ = done_rx.await;
    }))
}

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// The file the admin token is made in when none is configured.
pub const TOKEN_FILE: &str = "admin.token";

/// The `admin` section: where the admin listener is and who may use the
/// console.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The admin token the console and its API require on every listener.
    pub token: TokenFile,
    /// Host names (besides `localhost`, `127.0.0.1`, `::1` and the listen
    /// address) the console answers to.
    pub allowed_hosts: Vec<String>,
    /// The console may replace the policy file (validated first).
    pub allow_policy_edit: bool,
    /// A tracing UI's address with `{trace_id}` in it: the console links
    /// a record's trace there.
    pub trace_url: Option<String>,
}

/// Where the admin token is: `admin.token_file`, or a file Leash makes on
/// first start (32 random bytes, mode 0600).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFile {
    pub path: std::path::PathBuf,
    /// Configured (must exist) or Leash's own (made when missing).
    pub configured: bool,
}

impl TokenFile {
    /// The token, the file made first if it is Leash's own.
    pub fn load(&self) -> std::io::Result<String> {
        crate::console::auth::load_or_create_token(&self.path, !self.configured)
    }
}

/// `admin` as written (also the collector's `collector.admin`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    #[serde(default)]
    pub allow_policy_edit: bool,
    pub trace_url: Option<String>,
}

impl AdminConfig {
    /// `state_dir` holds Leash's own token file when none is configured.
    pub fn validate(
        raw: &RawAdmin,
        section: &str,
        base: &std::path::Path,
        default_listen: &str,
        state_dir: &std::path::Path,
    ) -> Result<Self, FieldError> {
        Ok(Self {
            listen: field::addr(
                &format!("{section}.listen"),
                raw.listen.as_deref(),
                default_listen,
            )?,
            token: token_file(
                &format!("{section}.token_file"),
                base,
                raw.token_file.as_deref(),
                state_dir,
            )?,
            allowed_hosts: raw
                .allowed_hosts
                .iter()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            allow_policy_edit: raw.allow_policy_edit,
            trace_url: raw
                .trace_url
                .as_deref()
                .map(|url| trace_url(&format!("{section}.trace_url"), url))
                .transpose()?,
        })
    }
}

/// A tracing UI's address: http(s), with `{trace_id}` where the id goes.
fn trace_url(field: &str, url: &str) -> Result<String, FieldError> {
    let sample = url.replace("{trace_id}", "0af7651916cd43dd8448eb211c80319c");
    let ok = url.contains("{trace_id}")
        && sample
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
    if ok {
        Ok(url.to_owned())
    } else {
        Err(invalid(
            field,
            format!("`{url}`: expected an http(s) URL with {{trace_id}} in it"),
        ))
    }
}

/// The admin token file: a configured one is checked now (readable, a
/// usable token).
fn token_file(
    field: &str,
    base: &std::path::Path,
    file: Option<&std::path::Path>,
    state_dir: &std::path::Path,
) -> Result<TokenFile, FieldError> {
    let Some(file) = file else {
        return Ok(TokenFile {
            path: state_dir.join(TOKEN_FILE),
            configured: false,
        });
    };
    let path = field::resolve(base, file.to_path_buf());
    let text = std::fs::read_to_string(&path)
        .map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))?;
    let token = text.trim();
    if token.len() < 16 || token.chars().any(char::is_whitespace) {
        return Err(invalid(
            field,
            "the token must be at least 16 characters, without spaces",
        ));
    }
    Ok(TokenFile {
        path,
        configured: true,
    })
}

/// Largest request body the console API reads (the policy playground).
const MAX_CONSOLE_BODY: usize = 1024 * 1024;

type Encode = Box<dyn Fn() -> String + Send + Sync>;

pub struct Admin {
    encode: Encode,
    console: Option<Console>,
    ready: Vec<Check>,
}

/// A readiness check: its name, and whether it holds now (else why not).
pub type Check = (
    &'static str,
    Box<dyn Fn() -> Result<(), String> + Send + Sync>,
);

impl Admin {
    pub fn new(metrics: Arc<Metrics>, console: Option<Console>) -> Self {
        Self {
            encode: Box::new(move || metrics.encode()),
            console,
            ready: Vec::new(),
        }
    }

    /// What `/readyz` checks.
    #[must_use]
    pub fn with_readiness(mut self, checks: Vec<Check>) -> Self {
        self.ready = checks;
        self
    }

    /// `/readyz`: `{"ready": …, "checks": {name: "ok" | why}}`.
    fn readyz(&self) -> Response<AdminBody> {
        let mut ready = true;
        let checks: serde_json::Map<String, serde_json::Value> = self
            .ready
            .iter()
            .map(|(name, check)| {
                let state = check().map_or_else(
                    |why| {
                        ready = false;
                        why
                    },
                    |()| "ok".to_owned(),
                );
                ((*name).to_owned(), serde_json::Value::String(state))
            })
            .collect();
        let body = serde_json::json!({"ready": ready, "checks": checks}).to_string() + "\n";
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        text(status, "application/json", body)
    }

    /// An admin listener serving what `encode` returns as `/metrics`, and
    /// `console` if given.
    pub fn with_encoder(encode: Encode, console: Option<Console>) -> Self {
        Self {
            encode,
            console,
            ready: Vec::new(),
        }
    }

    async fn console(&self, console: &Console, req: Request<Incoming>) -> Response<AdminBody> {
        let (head, body) = req.into_parts();
        let authority = head.uri.authority().map(http::uri::Authority::as_str);
        if head.uri.path() == "/api/live" && head.method == Method::GET {
            return match console.live(&head.headers, authority) {
                Ok(rx) => live_feed(rx),
                Err(answer) => text(answer.status, answer.content_type, answer.body),
            };
        }
        let body = if matches!(head.method, Method::POST | Method::PUT) {
            match Limited::new(body, MAX_CONSOLE_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "text/plain",
                        "request body too large\n",
                    );
                }
            }
        } else {
            Bytes::new()
        };
        let answer = console
            .handle(
                &head.method,
                head.uri.path(),
                head.uri.query().unwrap_or_default(),
                &head.headers,
                authority,
                &body,
            )
            .await;
        let mut resp = text(answer.status, answer.content_type, answer.body);
        for (name, value) in answer.headers {
            resp.headers_mut().insert(name, value);
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp.headers_mut().insert(
            "content-security-policy",
            HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
        );
        resp.headers_mut().insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        resp
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<AdminBody> {
    let mut resp = Response::new(AdminBody::Full(Full::new(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A response of the admin listener: whole, or the console's live feed.
pub enum AdminBody {
    Full(Full<Bytes>),
    /// Server-sent events, as a forwarding task produces them.
    Live(tokio::sync::mpsc::Receiver<Bytes>),
}

impl http_body::Body for AdminBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Full(body) => std::pin::Pin::new(body).poll_frame(cx),
            Self::Live(rx) => rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|b| Ok(http_body::Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(body) => body.is_end_stream(),
            Self::Live(_) => false,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Full(body) => body.size_hint(),
            Self::Live(_) => http_body::SizeHint::default(),
        }
    }
}

/// How often the live feed sends a comment, so a client that went away is
/// noticed (and proxies keep the stream open).
const LIVE_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Bytes of events the live feed gathers into one write at most.
const LIVE_CHUNK: usize = 64 * 1024;

/// Appends one record (a sealed JSON line) as an `event: record`.
fn push_event(out: &mut Vec<u8>, sealed: &[u8]) {
    out.extend_from_slice(b"event: record\ndata: ");
    out.extend_from_slice(sealed.strip_suffix(b"\n").unwrap_or(sealed));
    out.extend_from_slice(b"\n\n");
}

/// Streams `live` records to a client as server-sent events
/// (`event: record`), until it goes away.
fn live_feed(mut live: tokio::sync::broadcast::Receiver<Bytes>) -> Response<AdminBody> {
    use tokio::sync::broadcast::error::RecvError;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b": leash live feed\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let chunk = tokio::select! {
                r = live.recv() => match r {
                    Ok(sealed) => {
                        // Records come in batches (one per audit sync): one
                        // write for all that are ready, not one per record.
                        let mut events = Vec::with_capacity(4096);
                        push_event(&mut events, &sealed);
                        while events.len() < LIVE_CHUNK {
                            match live.try_recv() {
                                Ok(more) => push_event(&mut events, &more),
                                Err(_) => break,
                            }
                        }
                        Bytes::from(events)
                    }
                    Err(RecvError::Lagged(n)) => Bytes::from(format!("event: lagged\ndata: {n}\n\n")),
                    Err(RecvError::Closed) => return,
                },
                () = tokio::time::sleep(LIVE_KEEPALIVE) => Bytes::from_static(b": keep-alive\n\n"),
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(AdminBody::Live(rx));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl Handler for Admin {
    type Body = AdminBody;

    async fn handle(
        self: Arc<Self>,
        _peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Response<AdminBody> {
        if let Some(console) = &self.console
            && Console::owns(req.uri().path())
            && matches!(
                *req.method(),
                Method::GET | Method::HEAD | Method::POST | Method::PUT
            )
        {
            return self.console(console, req).await;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n",
            );
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" => self.readyz(),
            "/metrics" => text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                (self.encode)(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /healthz, /readyz or /metrics\n",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_trace_url_needs_a_scheme_a_host_and_the_trace_id() {
        assert!(super::trace_url("f", "https://tempo.example/trace/{trace_id}").is_ok());
        for bad in [
            "https://tempo.example/trace/",
            "javascript:alert({trace_id})",
            "/trace/{trace_id}",
        ] {
            let e = super::trace_url("admin.trace_url", bad).err();
            assert_eq!(
                e.map(|e| e.field).as_deref(),
                Some("admin.trace_url"),
                "{bad}"
            );
        }
    }
}
