//! The request pipeline shared by every listener: the phases a request goes
//! through and the modules plugged into them.
//!
//! Phases, in order (after the listener has identified provider and caller):
//! 1. [`identify`]: endpoint, model and streaming from the request itself.
//! 2. [`Module::request_filter`] of each module, in configured order; the first
//!    [`Flow::Reject`] answers the caller and nothing is forwarded.
//! 3. Forwarding (owned by `proxy`), then [`Module::response_filter`] on the
//!    response head and [`Module::response_body_filter`] on every chunk.
//! 4. When the exchange ends (completed, failed or cancelled by the client):
//!    [`Module::logging`] of each module, then metrics and the audit record.

pub mod budget;
pub mod calls;
pub mod identify;
pub mod sparse;
pub mod sse;
pub mod team;
pub mod tools;
pub mod usage;

use std::{
    future::Future,
    ops::{Deref, DerefMut},
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::StatusCode;

use crate::{
    audit::AuditSink,
    metrics::Metrics,
    provider::Provider,
    record::{AuditRecord, ErrorCode, timestamp},
};

/// Failure inside a module's phase. The request is refused (fail closed).
#[derive(Debug, thiserror::Error)]
#[error("module `{module}` failed: {source}")]
pub struct ModuleError {
    pub module: &'static str,
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

pub use crate::record::{Caller, Mode};

/// Moments in the life of an exchange.
#[derive(Clone, Debug)]
pub struct Timing {
    pub received: Instant,
    pub upstream_sent: Option<Instant>,
    pub upstream_headers: Option<Instant>,
    pub response_ready: Option<Instant>,
    pub first_byte: Option<Instant>,
}

/// Everything known about one request/response exchange. Modules keep their
/// own per-request state in `ext`.
#[derive(Debug)]
pub struct Exchange {
    pub id: String,
    pub ts: SystemTime,
    pub mode: Mode,
    pub provider: Arc<Provider>,
    pub caller: Caller,
    /// Upstream-relative path, never with the query (which may carry a key).
    pub endpoint: String,
    pub model: Option<String>,
    pub stream: bool,
    pub status: Option<StatusCode>,
    /// Set when Leash answered instead of the provider.
    pub error: Option<ErrorCode>,
    pub timing: Timing,
    /// Whether the response body was delivered to its end.
    pub completed: bool,
    /// Set by the `usage` module once the provider's last stream event
    /// (`[DONE]`, `message_stop`, a final candidate) went to the caller: a
    /// caller that leaves after it has the whole stream completed it.
    pub final_event_sent: bool,
    pub response_bytes: u64,
    /// Set by the `usage` module once the provider reported usage.
    pub cost_usd: Option<f64>,
    /// Set for requests to the unified API.
    pub unified: Option<crate::record::Unified>,
    /// The tools the request offers the model, by name (`identify`).
    pub tools: Vec<String>,
    /// The name of the credential Leash sent upstream in place of the
    /// client's (never its value).
    pub credential: Option<String>,
    /// This exchange's span (set by `identify::start_trace` from the
    /// client's `traceparent`, or a new trace, once the head is read).
    pub trace: Option<crate::trace::TraceContext>,
    /// The log span of the exchange (`request_id`, `trace_id`, `span_id`):
    /// every line logged while it is entered names the exchange.
    pub log: tracing::Span,
    pub ext: http::Extensions,
}

impl Exchange {
    pub fn new(mode: Mode, provider: Arc<Provider>, caller: Caller, endpoint: String) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            ts: SystemTime::now(),
            mode,
            provider,
            caller,
            endpoint,
            model: None,
            stream: false,
            status: None,
            error: None,
            timing: Timing {
                received: Instant::now(),
                upstream_sent: None,
                upstream_headers: None,
                response_ready: None,
                first_byte: None,
            },
            completed: false,
            final_event_sent: false,
            response_bytes: 0,
            cost_usd: None,
            unified: None,
            tools: Vec::new(),
            credential: None,
            trace: None,
            log: tracing::Span::none(),
            ext: http::Extensions::new(),
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Exchange {
    /// The record of this exchange as it ends (before the modules' logging
    /// phase adds what they know).
    pub fn to_record(&self, host: &Arc<str>) -> AuditRecord {
        let now = Instant::now();
        let t = &self.timing;
        // Time spent in Leash: before the upstream was asked, and between
        // the upstream's answer and handing it to the caller. When Leash
        // answered itself, all of it.
        let overhead = match (t.upstream_sent, t.upstream_headers) {
            (Some(sent), Some(headers)) => {
                sent.duration_since(t.received)
                    + t.response_ready.unwrap_or(headers).duration_since(headers)
            }
            (Some(sent), None) => sent.duration_since(t.received),
            _ => t.response_ready.unwrap_or(now).duration_since(t.received),
        };
        AuditRecord {
            id: self.id.clone(),
            ts: timestamp(self.ts),
            host: Arc::clone(host),
            mode: self.mode,
            provider: self.provider.name.clone(),
            endpoint: self.endpoint.clone(),
            model: self.model.clone(),
            stream: self.stream,
            status: self.status.map(|s| s.as_u16()),
            latency_ms: ms(now.duration_since(t.received)),
            ttfb_ms: t.first_byte.map(|f| ms(f.duration_since(t.received))),
            overhead_ms: ms(overhead),
            completed: self.completed,
            response_bytes: self.response_bytes,
            caller: self.caller.clone(),
            usage: None,
            cost_usd: None,
            policy: None,
            usage_estimated: false,
            error: self.error,
            event: None,
            refusal: None,
            bypass: None,
            key_id: None,
            credential: self.credential.clone(),
            trace_id: self.trace.map(|t| t.trace_hex()),
            span_id: self.trace.map(|t| t.span_hex()),
            content: None,
            content_read: None,
            policy_change: None,
            mcp: self.ext.get::<crate::record::McpRecord>().cloned(),
            tools: (!self.tools.is_empty()).then(|| crate::record::Tools {
                offered: tools::bounded(&self.tools),
                called: Vec::new(),
            }),
            unified: self.unified.as_ref().map(|u| {
                let mut u = u.clone();
                // A routed request's record lists its own attempt last.
                if u.route.is_some() {
                    u.attempts.push(crate::record::Attempt {
                        provider: self.provider.name.clone(),
                        model: self.model.clone().unwrap_or_default(),
                        status: self.status.map(|s| s.as_u16()),
                        ms: ms(now.duration_since(t.received)),
                    });
                }
                u
            }),
        }
    }
}

/// The request as it will be forwarded: modules may change head and body.
#[derive(Debug)]
pub struct ProxyRequest {
    pub head: http::request::Parts,
    pub body: Bytes,
    /// The path it goes to upstream (without the query).
    pub upstream_path: String,
}

/// Leash's own answer in place of the provider's.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

/// What happens to the client's provider key once the request phases
/// passed: replaced by a credential Leash holds (a virtual key's, a route
/// target's, or the one rules choose for the caller — known only once the
/// `team` module named its team), or removed (a policy sent the request
/// elsewhere).
#[derive(Debug, Clone)]
pub enum CredentialAction {
    Inject(crate::credentials::Credential),
    ForCaller(std::sync::Arc<crate::credentials::ByCaller>),
    Strip,
}

/// Seconds a client should wait, for Leash's own 429 (`retry-after`).
#[derive(Debug, Clone, Copy)]
pub struct RetryAfter(pub u64);

/// What a request phase decided.
#[derive(Debug)]
pub enum Flow {
    Continue,
    Reject(Rejection),
    /// A policy rule sends the request to this route instead
    /// (`action: route`); nothing is forwarded to this exchange's provider.
    Reroute(String),
}

/// What a response body phase decided about the stream.
#[derive(Debug, Clone)]
pub enum BodyFlow {
    Continue,
    /// Deliver this (possibly rewritten) chunk, then end the stream: nothing
    /// after it reaches the caller.
    Stop,
    /// The body must not reach the caller as if it were whole: deliver this
    /// chunk, then end the body with an error. When nothing was sent yet
    /// (a buffered body), the caller gets this answer instead.
    Abort(Rejection),
}

impl BodyFlow {
    /// The stronger of two decisions (abort over stop over continue).
    #[must_use]
    pub fn and(self, other: Self) -> Self {
        match (self, other) {
            (a @ Self::Abort(_), _) | (_, a @ Self::Abort(_)) => a,
            (Self::Stop, _) | (_, Self::Stop) => Self::Stop,
            _ => Self::Continue,
        }
    }
}

/// A request phase's outcome: decided at once (every module but a budget
/// shared through the fleet store), or a future to wait for — so the
/// common case allocates no boxed future per module and request.
pub enum Filtered<'a> {
    Done(Result<Flow, ModuleError>),
    Wait(Pin<Box<dyn Future<Output = Result<Flow, ModuleError>> + Send + 'a>>),
}

impl From<Result<Flow, ModuleError>> for Filtered<'_> {
    fn from(r: Result<Flow, ModuleError>) -> Self {
        Self::Done(r)
    }
}

impl From<Flow> for Filtered<'_> {
    fn from(flow: Flow) -> Self {
        Self::Done(Ok(flow))
    }
}

/// One pluggable stage. Every phase has a do-nothing default, so a module
/// implements only the phases it cares about.
pub trait Module: Send + Sync {
    fn name(&self) -> &'static str;

    /// Sees (and may change or refuse) the request before it is forwarded.
    fn request_filter<'a>(
        &'a self,
        _ex: &'a mut Exchange,
        _req: &'a mut ProxyRequest,
    ) -> Filtered<'a> {
        Flow::Continue.into()
    }

    /// Sees the response head before it is sent to the caller.
    fn response_filter(&self, _ex: &mut Exchange, _head: &mut http::response::Parts) {}

    /// Sees every response chunk as it streams; must not block.
    fn response_body_filter(
        &self,
        _ex: &mut Exchange,
        _chunk: &mut Bytes,
        _end_of_stream: bool,
    ) -> BodyFlow {
        BodyFlow::Continue
    }

    /// True if `response_body_filter` may change chunk sizes (then the
    /// upstream's `content-length` is dropped).
    fn rewrites_response_body(&self) -> bool {
        false
    }

    /// Adds what the module knows to the audit record.
    fn logging(&self, _ex: &Exchange, _record: &mut AuditRecord) {}

    /// Adds to the record once every module's `logging` ran (what depends
    /// on the whole record, such as the policy's outcome).
    fn after_logging(&self, _ex: &Exchange, _record: &mut AuditRecord) {}

    /// Sees the finished record (every module's `logging` done), e.g. to
    /// count what it says against a limit.
    fn finished(&self, _ex: &Exchange, _record: &AuditRecord) {}
}

/// The configured modules plus the sinks every exchange ends in.
pub struct Pipeline {
    modules: Vec<Box<dyn Module>>,
    rewrites_body: bool,
    host: Arc<str>,
    metrics: Arc<Metrics>,
    audit: AuditSink,
}

impl Pipeline {
    /// `modules` in the order their phases run; every exchange ends in
    /// `metrics` and `audit`, its record naming `host`.
    pub fn new(
        modules: Vec<Box<dyn Module>>,
        host: Arc<str>,
        metrics: Arc<Metrics>,
        audit: AuditSink,
    ) -> Self {
        let rewrites_body = modules.iter().any(|m| m.rewrites_response_body());
        Self {
            modules,
            rewrites_body,
            host,
            metrics,
            audit,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether the upstream's `content-length` must go: a module may
    /// change the body, or (`durability: sync`) the response may complete
    /// only with its end-of-stream, released after the record is on disk.
    pub fn rewrites_response_body(&self) -> bool {
        self.rewrites_body || self.audit.is_sync()
    }

    /// Runs every module's request phase; stops at the first rejection.
    pub async fn request(&self, ex: &mut Exchange, req: &mut ProxyRequest) -> Flow {
        crate::faults::maybe_panic(&req.head.headers);
        for m in &self.modules {
            let decided = match m.request_filter(ex, req) {
                Filtered::Done(r) => r,
                Filtered::Wait(pending) => pending.await,
            };
            match decided {
                Ok(Flow::Continue) => {}
                Ok(stop @ (Flow::Reject(_) | Flow::Reroute(_))) => return stop,
                Err(e) => {
                    tracing::error!(request_id = %ex.id, error = %e, "pipeline module failed; refusing request");
                    return Flow::Reject(Rejection {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        code: ErrorCode::Internal,
                        message: format!("leash: request refused because {e}"),
                    });
                }
            }
        }
        Flow::Continue
    }

    pub fn response_head(&self, ex: &mut Exchange, head: &mut http::response::Parts) {
        for m in &self.modules {
            m.response_filter(ex, head);
        }
    }

    pub fn response_chunk(&self, ex: &mut Exchange, chunk: &mut Bytes, end: bool) -> BodyFlow {
        let mut flow = BodyFlow::Continue;
        for m in &self.modules {
            flow = flow.and(m.response_body_filter(ex, chunk, end));
        }
        flow
    }

    /// Writes a record that is not an exchange (e.g. a shadow-AI event).
    pub fn audit_event(&self, record: AuditRecord) {
        self.audit.submit(record);
    }

    pub fn host(&self) -> &Arc<str> {
        &self.host
    }

    /// Ends an exchange: logging phase, metrics, audit record.
    /// The exchange's audit record after every module's logging phase,
    /// counted in the metrics.
    fn record(&self, ex: &Exchange) -> AuditRecord {
        let mut record = ex.to_record(&self.host);
        for m in &self.modules {
            m.logging(ex, &mut record);
        }
        for m in &self.modules {
            m.after_logging(ex, &mut record);
        }
        for m in &self.modules {
            m.finished(ex, &record);
        }
        self.metrics.observe(&record);
        record
    }
}

/// An exchange in flight. However it ends (response delivered, error, client
/// gone mid-stream, handler dropped), dropping it writes its audit record
/// exactly once.
pub struct ActiveExchange {
    /// Boxed: the exchange moves with every phase's future (each level of
    /// the request path holds it), and a pointer is cheaper to move than
    /// the exchange's ~650 bytes.
    ex: Box<Exchange>,
    pipeline: Arc<Pipeline>,
    finished: bool,
}

impl ActiveExchange {
    pub fn new(ex: Exchange, pipeline: Arc<Pipeline>) -> Self {
        Self {
            ex: Box::new(ex),
            pipeline,
            finished: false,
        }
    }

    /// Ends the exchange now (its response is complete): logging phase,
    /// metrics, audit record. The future resolves when the record is queued
    /// and, with `audit.durability: sync`, on disk; the response's last
    /// frame waits for it.
    pub fn finish(&mut self) -> crate::audit::Submitted {
        if self.finished {
            return Box::pin(std::future::ready(true));
        }
        self.finished = true;
        let _log = self.ex.log.enter();
        let record = self.pipeline.record(&self.ex);
        self.pipeline.audit.submit_wait(record)
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Runs the request phase.
    pub async fn request(&mut self, req: &mut ProxyRequest) -> Flow {
        let pipeline = Arc::clone(&self.pipeline);
        pipeline.request(&mut self.ex, req).await
    }

    pub fn response_head(&mut self, head: &mut http::response::Parts) {
        self.pipeline.response_head(&mut self.ex, head);
    }

    pub fn response_chunk(&mut self, chunk: &mut Bytes, end: bool) -> BodyFlow {
        self.pipeline.response_chunk(&mut self.ex, chunk, end)
    }
}

impl Deref for ActiveExchange {
    type Target = Exchange;
    fn deref(&self) -> &Exchange {
        &self.ex
    }
}

impl DerefMut for ActiveExchange {
    fn deref_mut(&mut self) -> &mut Exchange {
        &mut self.ex
    }
}

impl Drop for ActiveExchange {
    /// An exchange dropped before it finished (the client went away, the
    /// handler was cancelled) still gets its record.
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            self.ex.completed |= self.ex.final_event_sent;
            let _log = self.ex.log.enter();
            let record = self.pipeline.record(&self.ex);
            self.pipeline.audit.submit(record);
        }
    }
}
