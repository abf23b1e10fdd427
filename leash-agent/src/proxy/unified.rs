//! The gateway's unified API (`/v1/chat/completions`, `/v1/embeddings`,
//! also under `/v1/unified/`): `model: "<provider>/<model>"` picks the
//! provider; the request is translated to its API (`translate`), goes
//! through the same phases as a native one, and the answer comes back in
//! the `OpenAI` shape.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header, request::Parts};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{
    BodyLimits, Forwarder, LocalAnswer, admit_read, body::LeashBody, json_response, read_body,
};
use crate::{
    credentials::{self, Credential},
    pipeline::{ActiveExchange, Caller, Exchange, Mode, Pipeline},
    provider::{ErrorCode, Providers},
    record::{Attempt, Unified},
    routes::{Outcome, Route, Routes},
    translate::{self, Api, Translator},
    upstream::HttpsConnector,
};

/// An error of the unified API in the `OpenAI` shape, before any provider
/// was chosen (nothing was sent anywhere: no audit record).
fn openai_error(
    status: StatusCode,
    kind: &str,
    message: &str,
    param: Option<&str>,
) -> Response<LeashBody> {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": kind}});
    json_response(status, Bytes::from(body.to_string()))
}

/// What the unified API serves with: the gateway's providers, pipeline,
/// upstream client and limits.
pub struct Context<'a> {
    pub providers: &'a Providers,
    pub pipeline: &'a Arc<Pipeline>,
    pub forwarder: &'a Forwarder<HttpsConnector>,
    pub limits: BodyLimits,
    pub routes: &'a Routes,
}

pub async fn serve(
    gw: Context<'_>,
    peer: SocketAddr,
    req: Request<Incoming>,
    api: Api,
) -> Response<LeashBody> {
    if req.method() != Method::POST {
        return openai_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "leash: the unified API takes POST",
            None,
        );
    }
    let (mut head, body) = req.into_parts();
    let body = match read_body(&mut head, body, gw.limits, "unified").await {
        Ok(body) => body,
        Err(r) => return openai_error(r.status, "invalid_request_error", &r.message, None),
    };
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "leash: the request body is not JSON",
            None,
        );
    };
    let refused = |e: &translate::TranslateError| {
        json_response(StatusCode::BAD_REQUEST, translate::refusal_body(e))
    };
    let requested = value
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(route) = gw.routes.get(&requested) {
        return serve_route(&gw, peer, &head, &value, api, route).await;
    }
    let (name, model) = match translate::split_model(&value) {
        Ok((p, m)) => (p.to_owned(), m.to_owned()),
        Err(e) => return refused(&e),
    };
    let unified = Unified {
        api: api.as_str().to_owned(),
        model: requested,
        route: None,
        attempts: Vec::new(),
    };
    match attempt(&gw, peer, &head, value, api, (&name, &model, None), unified).await {
        Ok((resp, answer)) => translated(resp, &answer),
        Err(AttemptError::Refused(e)) => refused(&e),
        Err(AttemptError::UnknownProvider) => {
            let known = gw.providers.names().collect::<Vec<_>>().join(", ");
            let routes = gw.routes.names().collect::<Vec<_>>().join(", ");
            openai_error(
                StatusCode::NOT_FOUND,
                "not_found_error",
                &format!(
                    "leash: unknown provider `{name}` in `model`; known providers: {known}; routes: {routes}"
                ),
                Some("model"),
            )
        }
    }
}

enum AttemptError {
    Refused(translate::TranslateError),
    UnknownProvider,
}

/// A copy of the request head for one attempt.
fn head_copy(head: &Parts) -> Parts {
    let mut copy = Request::new(()).into_parts().0;
    copy.method = head.method.clone();
    copy.uri = head.uri.clone();
    copy.version = head.version;
    copy.headers = head.headers.clone();
    copy
}

/// One call of `target` (provider, model): translated, through the
/// pipeline, forwarded. The answer is still the provider's shape.
async fn attempt(
    gw: &Context<'_>,
    peer: SocketAddr,
    head: &Parts,
    value: Value,
    api: Api,
    (name, model, credential): (&str, &str, Option<&Credential>),
    unified: Unified,
) -> Result<(Response<LeashBody>, translate::Answer), AttemptError> {
    let provider = gw
        .providers
        .get(name)
        .map(Arc::clone)
        .ok_or(AttemptError::UnknownProvider)?;
    let native = translate::request(api, provider.kind, name, model, value)
        .map_err(AttemptError::Refused)?;
    let mut head = head_copy(head);
    translate::request_headers(provider.kind, &mut head.headers);
    if let Some(credential) = credential {
        credentials::inject(provider.kind, &mut head.headers, credential);
    }
    let upstream_path = format!("{}{}", provider.upstream.base_path(), native.path);
    let caller = Caller {
        addr: Some(peer),
        ..Caller::default()
    };
    let mut exchange = Exchange::new(Mode::Gateway, provider, caller, native.path.clone());
    exchange.unified = Some(unified);
    let ex = ActiveExchange::new(exchange, Arc::clone(gw.pipeline));
    let resp = admit_read(
        ex,
        head,
        native.body,
        &upstream_path,
        native.query,
        gw.forwarder,
    )
    .await;
    Ok((resp, native.answer))
}

enum Tried {
    /// An answer that is not retried: the client gets it.
    Answered(Response<LeashBody>, translate::Answer),
    /// A failure (status, or `None` for a timeout; ms), with the answer to
    /// give the client if no other target answers.
    Failed(
        Option<u16>,
        f64,
        Option<(Response<LeashBody>, translate::Answer)>,
    ),
    /// The target cannot take this request (a field it cannot translate).
    Refused(translate::TranslateError),
}

/// One attempt of a route's request at target `i`, within its timeout;
/// the breaker, latency average and metrics learn how it went.
#[allow(clippy::too_many_arguments, reason = "one attempt's whole context")]
async fn try_target(
    gw: &Context<'_>,
    peer: SocketAddr,
    head: &Parts,
    value: &Value,
    api: Api,
    route: &Route,
    i: usize,
    unified: Unified,
) -> Tried {
    let metrics = gw.pipeline.metrics();
    let target = &route.targets[i];
    let label = target.label();
    let started = Instant::now();
    let call = attempt(
        gw,
        peer,
        head,
        value.clone(),
        api,
        (&target.provider, &target.model, target.credential.as_ref()),
        unified,
    );
    let result = tokio::time::timeout(target.timeout, call).await;
    let elapsed = started.elapsed();
    let ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
    match result {
        Err(_) => {
            tracing::warn!(route = %route.name, target = %label, "route target timed out");
            route.record(i, Outcome::Failed, elapsed);
            metrics.route_attempt(&route.name, &label, "failure");
            Tried::Failed(None, ms, None)
        }
        Ok(Err(AttemptError::Refused(e))) => {
            metrics.route_attempt(&route.name, &label, "untranslatable");
            Tried::Refused(e)
        }
        Ok(Err(AttemptError::UnknownProvider)) => {
            metrics.route_attempt(&route.name, &label, "failure");
            Tried::Failed(None, ms, None)
        }
        Ok(Ok((resp, answer))) if !retryable(&resp) => {
            route.record(i, Outcome::Answered, elapsed);
            let outcome = if resp.status().is_client_error() {
                "client_error"
            } else {
                "success"
            };
            metrics.route_attempt(&route.name, &label, outcome);
            Tried::Answered(resp, answer)
        }
        Ok(Ok((resp, answer))) => {
            tracing::warn!(route = %route.name, target = %label, status = %resp.status(), "route target failed");
            route.record(i, Outcome::Failed, elapsed);
            metrics.route_attempt(&route.name, &label, "failure");
            Tried::Failed(Some(resp.status().as_u16()), ms, Some((resp, answer)))
        }
    }
}

/// Whether an answer is a failure a route retries: a connection error or
/// timeout (Leash's 502/504), or the provider's 429 or 5xx — never Leash's
/// own refusals (policy, budget) and never another 4xx.
fn retryable(resp: &Response<LeashBody>) -> bool {
    match resp.extensions().get::<LocalAnswer>() {
        Some(LocalAnswer(code)) => {
            matches!(
                code,
                ErrorCode::UpstreamUnreachable | ErrorCode::UpstreamTimeout
            )
        }
        None => resp.status() == StatusCode::TOO_MANY_REQUESTS || resp.status().is_server_error(),
    }
}

/// A request for a route: its targets tried in the strategy's order until
/// one answers (or the attempts, or the retry budget, run out). A target
/// that cannot take the request (a field it cannot translate) is passed
/// over; a stream is never retried once its answer started.
async fn serve_route(
    gw: &Context<'_>,
    peer: SocketAddr,
    head: &Parts,
    value: &Value,
    api: Api,
    route: &Route,
) -> Response<LeashBody> {
    let metrics = gw.pipeline.metrics();
    let (plan, skipped) = route.plan();
    for &i in &skipped {
        metrics.route_attempt(&route.name, &route.targets[i].label(), "skipped");
    }
    if plan.is_empty() {
        return openai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            &format!(
                "leash: every target of route `{}` failed recently (circuit breaker open); try again after its cool-down",
                route.name
            ),
            None,
        );
    }
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut last: Option<(Response<LeashBody>, translate::Answer)> = None;
    let mut refusal = None;
    for &i in &plan {
        let target = &route.targets[i];
        if !attempts.is_empty() {
            if !route.take_retry() {
                metrics.route_attempt(&route.name, &target.label(), "budget_exhausted");
                break;
            }
            let retry = u32::try_from(attempts.len()).unwrap_or(u32::MAX);
            tokio::time::sleep(route.backoff(retry)).await;
        }
        let unified = Unified {
            api: api.as_str().to_owned(),
            model: route.name.clone(),
            route: Some(route.name.clone()),
            attempts: attempts.clone(),
        };
        match try_target(gw, peer, head, value, api, route, i, unified).await {
            Tried::Answered(resp, answer) => return translated(resp, &answer),
            Tried::Failed(status, ms, answer) => {
                attempts.push(Attempt {
                    provider: target.provider.clone(),
                    model: target.model.clone(),
                    status,
                    ms,
                });
                last = answer;
            }
            Tried::Refused(e) => {
                refusal.get_or_insert(e);
            }
        }
    }
    match (last, refusal) {
        (Some((resp, answer)), _) => translated(resp, &answer),
        (None, Some(e)) if attempts.is_empty() => {
            json_response(StatusCode::BAD_REQUEST, translate::refusal_body(&e))
        }
        _ => openai_error(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            &format!(
                "leash: no target of route `{}` answered ({} attempts)",
                route.name,
                attempts.len()
            ),
            None,
        ),
    }
}

/// The provider's (or Leash's own) answer in the `OpenAI` shape.
fn translated(resp: Response<LeashBody>, answer: &translate::Answer) -> Response<LeashBody> {
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let Some(translator) = Translator::new(answer, resp.status(), content_type) else {
        return resp;
    };
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(translator.content_type()),
    );
    Response::from_parts(parts, LeashBody::translated(body, translator))
}
