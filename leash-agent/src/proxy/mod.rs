//! Forwarding: turns an admitted request into an upstream call and streams the
//! answer back through the pipeline. Listeners (`gateway`, later the
//! transparent one) decide *where* a request goes; this module owns *how*.

pub mod body;
pub mod certs;
pub mod decode;
pub mod forward;
pub mod gateway;
pub mod headers;
pub mod hygiene;
pub mod path;
pub mod refusals;
pub mod sni;
pub mod transparent;
pub mod unified;
pub mod untrusted;

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::Connect};
use tracing::Instrument as _;

use self::body::LeashBody;
pub use self::decode::BodyLimits;
use crate::{
    credentials,
    pipeline::{
        ActiveExchange, BodyFlow, CredentialAction, Flow, ProxyRequest, Rejection, RetryAfter,
        identify,
    },
    provider::{ErrorCode, error_body},
};

/// On a policy's refusal to forward (`action: route`): the route the
/// request goes to instead and its body as the policy left it.
#[derive(Debug, Clone)]
pub struct Reroute {
    pub route: String,
    pub body: Bytes,
    pub headers: HeaderMap,
}

/// Marks a response Leash answered itself (not the provider), with why.
#[derive(Debug, Clone, Copy)]
pub struct LocalAnswer(pub ErrorCode);

/// The header every response carries: the id of its audit record.
pub const REQUEST_ID_HEADER: &str = "x-leash-request-id";

/// Sends requests upstream over a pooled, verified-TLS client. `C` is how
/// connections are made: by resolving the URI (gateway), or to one fixed
/// original destination on a marked socket (transparent).
#[derive(Clone)]
pub struct Forwarder<C> {
    client: Client<C, Full<Bytes>>,
    response_timeout: std::time::Duration,
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Message framing Leash will not pass on, however its HTTP parser read it:
/// a body framed both by `Content-Length` and `Transfer-Encoding` (the
/// classic smuggling set-up), more than one or a malformed length, or a
/// transfer coding other than `chunked` (the body would be forwarded still
/// encoded, past inspection).
fn framing_problem(headers: &http::HeaderMap) -> Option<Rejection> {
    let bad = |status, message: &str| {
        Some(Rejection {
            status,
            code: ErrorCode::BadRequest,
            message: format!("leash: {message}"),
        })
    };
    // Every request passes here: no allocation unless a transfer coding is
    // present at all.
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let first_length = lengths.next();
    let more_lengths = lengths.next().is_some();
    let codings = headers.get_all(header::TRANSFER_ENCODING);
    let has_codings = codings.iter().next().is_some();
    if has_codings && first_length.is_some() {
        return bad(
            StatusCode::BAD_REQUEST,
            "a request may not carry both Content-Length and Transfer-Encoding",
        );
    }
    if more_lengths
        || first_length
            .is_some_and(|v| v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit))
    {
        return bad(StatusCode::BAD_REQUEST, "malformed Content-Length");
    }
    if has_codings {
        let codings: Vec<String> = codings
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        if codings != ["chunked"] {
            return bad(
                StatusCode::NOT_IMPLEMENTED,
                "only the chunked transfer coding is supported",
            );
        }
    }
    None
}

/// The request phases shared by every listener, once it knows the provider
/// and the exact upstream path: read the body (at most `limits.max_bytes`),
/// decode it, identify, run the request modules, forward.
pub async fn admit<C: Connect + Clone + Send + Sync + 'static>(
    ex: ActiveExchange,
    req: Request<Incoming>,
    upstream_path: &str,
    limits: BodyLimits,
    forwarder: &Forwarder<C>,
) -> Response<LeashBody> {
    admit_as(ex, req, upstream_path, limits, forwarder, None).await
}

/// As [`admit`]; for a request to the MCP server `mcp`, its JSON-RPC is
/// read once the body is (the method and tool calls the policy judges and
/// the audit keeps).
pub async fn admit_as<C: Connect + Clone + Send + Sync + 'static>(
    mut ex: ActiveExchange,
    req: Request<Incoming>,
    upstream_path: &str,
    limits: BodyLimits,
    forwarder: &Forwarder<C>,
    mcp: Option<&str>,
) -> Response<LeashBody> {
    let query = req.uri().query().map(str::to_owned);
    let (mut head, body) = req.into_parts();
    identify::start_trace(&mut ex, &head.headers);
    let body = match read_body(&mut head, body, limits, &ex.id).await {
        Ok(body) => body,
        Err(rejection) => return local_response(&mut ex, &rejection),
    };
    if let Some(server) = mcp {
        let request = crate::mcp::McpRequest::read(server, &head.method, &body);
        ex.ext.insert(request.record.clone());
        ex.ext.insert(request);
    }
    // Boxed: the forwarding future is large, and every listener's handler
    // future holds this one.
    Box::pin(admit_read(
        ex,
        head,
        body,
        upstream_path,
        query.as_deref(),
        forwarder,
    ))
    .await
}

/// Reads a request body: framing checks, at most `limits.max_bytes`, decoded.
pub async fn read_body(
    head: &mut http::request::Parts,
    body: Incoming,
    limits: BodyLimits,
    request_id: &str,
) -> Result<Bytes, Rejection> {
    let max_body_bytes = limits.max_bytes;
    if let Some(rejection) = framing_problem(&head.headers) {
        return Err(rejection);
    }
    // Built only when it is the answer: every request passes here.
    let too_large = || Rejection {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: ErrorCode::BodyTooLarge,
        message: format!("leash: request body exceeds the limit of {max_body_bytes} bytes"),
    };
    if declared_length(&head.headers).is_some_and(|n| n > max_body_bytes as u64) {
        return Err(too_large());
    }
    let body = match Limited::new(body, max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            tracing::debug!(request_id, error = %e, "reading request body failed");
            return Err(Rejection {
                status: StatusCode::BAD_REQUEST,
                code: ErrorCode::BadRequest,
                message: "leash: could not read the request body".into(),
            });
        }
    };
    decode::decode_request(&mut head.headers, body, limits)
}

/// The request phases after the body is read: identify, the request
/// modules, forward to `upstream_path` (below the provider's base).
pub async fn admit_read<C: Connect + Clone + Send + Sync + 'static>(
    mut ex: ActiveExchange,
    head: http::request::Parts,
    body: Bytes,
    upstream_path: &str,
    query: Option<&str>,
    forwarder: &Forwarder<C>,
) -> Response<LeashBody> {
    let request = ProxyRequest {
        head,
        body,
        upstream_path: upstream_path.to_owned(),
    };
    identify::identify(&mut ex, &request);
    let log = ex.log.clone();
    admit_identified(ex, request, query, forwarder)
        .instrument(log)
        .await
}

/// The request modules, then forward: inside the exchange's log span.
async fn admit_identified<C: Connect + Clone + Send + Sync + 'static>(
    mut ex: ActiveExchange,
    mut request: ProxyRequest,
    query: Option<&str>,
    forwarder: &Forwarder<C>,
) -> Response<LeashBody> {
    match ex.request(&mut request).await {
        Flow::Continue => {}
        Flow::Reject(rejection) => return local_response(&mut ex, &rejection),
        Flow::Reroute(route) => {
            // Nothing went to this provider; an entry point that can serve
            // the route takes `Reroute` from the answer, the others send
            // this refusal.
            let mut resp = local_response(
                &mut ex,
                &Rejection {
                    status: StatusCode::FORBIDDEN,
                    code: ErrorCode::PolicyRouted,
                    message: format!(
                        "leash: policy sends this request to route `{route}`, which cannot serve it here (only OpenAI-shaped chat completions and embeddings can be rerouted)"
                    ),
                },
            );
            resp.extensions_mut().insert(Reroute {
                route,
                body: request.body.clone(),
                headers: request.head.headers.clone(),
            });
            return resp;
        }
    }
    // The client's provider key replaced or removed, as the phases said.
    // `Some(None)`: removed; `None`: left as the client sent it.
    let replacement = match ex.ext.remove::<CredentialAction>() {
        None => None,
        Some(CredentialAction::Inject(c)) => Some(Some(c)),
        Some(CredentialAction::ForCaller(rules)) => rules.pick(&ex.caller).cloned().map(Some),
        Some(CredentialAction::Strip) => Some(None),
    };
    let stripped;
    let query = match replacement {
        None => query,
        Some(credential) => {
            match credential {
                Some(c) => {
                    credentials::inject(ex.provider.kind, &mut request.head.headers, &c);
                    ex.credential = Some(c.name);
                }
                None => credentials::strip(&mut request.head.headers),
            }
            stripped = query.map(credentials::strip_query);
            stripped.as_deref().filter(|q| !q.is_empty())
        }
    };
    // The provider sees this exchange's span as the parent.
    if let Some(t) = ex.trace
        && let Ok(v) = http::HeaderValue::from_str(&t.traceparent())
    {
        request.head.headers.insert("traceparent", v);
    }
    let Ok(target) = ex.provider.upstream.at_path(&request.upstream_path, query) else {
        return local_response(
            &mut ex,
            &Rejection {
                status: StatusCode::BAD_REQUEST,
                code: ErrorCode::BadRequest,
                message: "leash: request path is not valid upstream".into(),
            },
        );
    };
    forwarder.forward(ex, request, target).await
}

impl<C: Connect + Clone + Send + Sync + 'static> Forwarder<C> {
    pub fn new(client: Client<C, Full<Bytes>>, response_timeout: std::time::Duration) -> Self {
        Self {
            client,
            response_timeout,
        }
    }

    /// Forwards `req` to `target` and returns the response whose body streams
    /// through the pipeline's response phases.
    pub async fn forward(
        &self,
        mut ex: ActiveExchange,
        req: ProxyRequest,
        target: Uri,
    ) -> Response<LeashBody> {
        let ProxyRequest { mut head, body, .. } = req;
        headers::sanitize_request(&mut head.headers);
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        head.uri = target;
        head.version = Version::HTTP_11;
        let upstream_req = http::Request::from_parts(head, Full::new(body));

        ex.timing.upstream_sent = Some(Instant::now());
        let result =
            tokio::time::timeout(self.response_timeout, self.client.request(upstream_req)).await;
        ex.timing.upstream_headers = Some(Instant::now());
        let resp = match result {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                let cause = error_chain(&e);
                tracing::warn!(request_id = %ex.id, provider = %ex.provider.name, error = %cause, "upstream request failed");
                return upstream_failed(&mut ex, &format!("failed: {cause}"));
            }
            Err(_) => {
                tracing::warn!(request_id = %ex.id, provider = %ex.provider.name, "upstream response timed out");
                let detail = format!("did not answer within {}s", self.response_timeout.as_secs());
                return upstream_timed_out(&mut ex, &detail);
            }
        };

        let (mut parts, incoming) = resp.into_parts();
        headers::sanitize_response(&mut parts.headers);
        let rewrites = ex.pipeline().rewrites_response_body();
        if rewrites {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        if let Ok(id) = HeaderValue::from_str(&ex.id) {
            parts.headers.insert(REQUEST_ID_HEADER, id);
        }
        ex.status = Some(parts.status);
        if parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"))
        {
            ex.stream = true;
        }
        ex.response_head(&mut parts);
        if ex.stream {
            ex.timing.response_ready = Some(Instant::now());
            return Response::from_parts(parts, LeashBody::observed(incoming, ex, rewrites, None));
        }
        self.respond_buffered(ex, parts, incoming, rewrites).await
    }

    /// A non-streaming response: read whole (up to a cap) so the response
    /// phases see the whole document and the cost goes into a header.
    async fn respond_buffered(
        &self,
        mut ex: ActiveExchange,
        mut parts: http::response::Parts,
        incoming: Incoming,
        rewrites: bool,
    ) -> Response<LeashBody> {
        let read = tokio::time::timeout(
            self.response_timeout,
            read_up_to(incoming, MAX_BUFFERED_RESPONSE),
        )
        .await;
        match read {
            Ok(Buffered::Whole(mut body)) => {
                ex.timing.first_byte = Some(Instant::now());
                if let BodyFlow::Abort(rejection) = ex.response_chunk(&mut body, true) {
                    // Nothing was sent yet: the caller gets Leash's answer.
                    return local_response(&mut ex, &rejection);
                }
                ex.completed = true;
                ex.response_bytes = body.len() as u64;
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                if let Some(cost) = ex.cost_usd
                    && let Ok(v) = HeaderValue::from_str(&format!("{cost:.9}"))
                {
                    parts.headers.insert(COST_HEADER, v);
                }
                ex.timing.response_ready = Some(Instant::now());
                let body = LeashBody::local(body, &mut ex);
                Response::from_parts(parts, body)
            }
            Ok(Buffered::Partial { mut prefix, rest }) => {
                // Too big to hold: stream it on, starting with what was read
                // (the response phases see every byte, in order).
                ex.timing.first_byte = Some(Instant::now());
                match ex.response_chunk(&mut prefix, false) {
                    BodyFlow::Abort(rejection) => return local_response(&mut ex, &rejection),
                    BodyFlow::Stop => {
                        ex.completed = true;
                        ex.response_bytes = prefix.len() as u64;
                        parts.headers.remove(header::CONTENT_LENGTH);
                        ex.timing.response_ready = Some(Instant::now());
                        return Response::from_parts(parts, LeashBody::local(prefix, &mut ex));
                    }
                    BodyFlow::Continue => {}
                }
                ex.timing.response_ready = Some(Instant::now());
                Response::from_parts(parts, LeashBody::observed(rest, ex, rewrites, Some(prefix)))
            }
            Ok(Buffered::Failed(e)) => {
                let cause = error_chain(&e);
                tracing::warn!(request_id = %ex.id, error = %cause, "upstream body failed");
                upstream_failed(&mut ex, &format!("failed: {cause}"))
            }
            Err(_) => upstream_timed_out(&mut ex, "did not finish its response in time"),
        }
    }
}

/// Non-streaming responses up to this size are read whole before they are
/// sent on (the cost header needs the usage at the end of the body).
pub const MAX_BUFFERED_RESPONSE: usize = 4 * 1024 * 1024;
/// The header with the cost of a non-streaming call, in USD.
pub const COST_HEADER: &str = "x-leash-cost-usd";

enum Buffered {
    Whole(Bytes),
    /// Bigger than the cap: what was read, and the rest still to come.
    Partial {
        prefix: Bytes,
        rest: Incoming,
    },
    Failed(hyper::Error),
}

async fn read_up_to(mut body: Incoming, limit: usize) -> Buffered {
    let mut buf = bytes::BytesMut::new();
    loop {
        match body.frame().await {
            None => return Buffered::Whole(buf.freeze()),
            Some(Err(e)) => return Buffered::Failed(e),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        return Buffered::Partial {
                            prefix: buf.freeze(),
                            rest: body,
                        };
                    }
                }
            }
        }
    }
}

/// 502: the upstream could not be reached or broke off; `detail` says how.
fn upstream_failed(ex: &mut ActiveExchange, detail: &str) -> Response<LeashBody> {
    let message = format!(
        "leash: upstream for provider `{}` {detail}",
        ex.provider.name
    );
    local_response(
        ex,
        &Rejection {
            status: StatusCode::BAD_GATEWAY,
            code: ErrorCode::UpstreamUnreachable,
            message,
        },
    )
}

/// 504: the upstream took too long; `detail` says for what.
fn upstream_timed_out(ex: &mut ActiveExchange, detail: &str) -> Response<LeashBody> {
    let message = format!(
        "leash: upstream for provider `{}` {detail}",
        ex.provider.name
    );
    local_response(
        ex,
        &Rejection {
            status: StatusCode::GATEWAY_TIMEOUT,
            code: ErrorCode::UpstreamTimeout,
            message,
        },
    )
}

/// Leash's own answer, in the provider's error shape. Ends the exchange.
pub fn local_response(ex: &mut ActiveExchange, rejection: &Rejection) -> Response<LeashBody> {
    ex.error = Some(rejection.code);
    ex.timing.response_ready = Some(Instant::now());
    ex.completed = true;
    // An MCP client reads JSON-RPC: a refused call is an error answer to
    // its request id.
    let mcp = ex.ext.get::<crate::mcp::McpRequest>().map(|r| r.id.clone());
    // With a request id, the refusal is the JSON-RPC answer (HTTP 200, so
    // the client reads it as one); the record keeps why.
    let status = match &mcp {
        Some(Some(_)) => StatusCode::OK,
        _ => rejection.status,
    };
    let body = match &mcp {
        Some(id) => crate::mcp::error_body(id.as_ref(), &rejection.message),
        None => error_body(
            ex.provider.kind,
            rejection.status,
            rejection.code,
            &rejection.message,
        ),
    };
    ex.status = Some(status);
    ex.response_bytes = body.len() as u64;
    let id = HeaderValue::from_str(&ex.id).ok();
    let mut resp = Response::new(LeashBody::local(body, ex));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(LocalAnswer(rejection.code));
    if let Some(RetryAfter(secs)) = ex.ext.get::<RetryAfter>() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
    }
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(id) = id {
        resp.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    resp
}

/// Runs a request handler and answers 500 if it panics, so one request's
/// bug never takes down the other streams of its connection, or more. The
/// exchange (dropped while unwinding) still gets its audit record; the
/// panic hook (see `main`) logs where, never request data.
pub fn contain_panics(
    handler: impl Future<Output = Response<LeashBody>>,
) -> impl Future<Output = Response<LeashBody>> {
    use futures_util::FutureExt as _;
    // Combinators, not an `async fn`: an async wrapper would hold the
    // handler's future twice (as its argument and as what it awaits), and
    // hyper moves the whole per-request future into place.
    std::panic::AssertUnwindSafe(handler)
        .catch_unwind()
        .map(|outcome| {
            outcome.unwrap_or_else(|_| {
                json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    error_body(
                        crate::provider::ProviderKind::OpenAi,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        ErrorCode::Internal,
                        "leash: internal error while handling this request",
                    ),
                )
            })
        })
}

/// A JSON response that belongs to no exchange (e.g. an unknown route).
pub fn json_response(status: StatusCode, body: Bytes) -> Response<LeashBody> {
    let mut resp = Response::new(LeashBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// An error and its causes on one line (`a: b: c`). Upstream errors carry no
/// request headers, so nothing secret can end up here.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
