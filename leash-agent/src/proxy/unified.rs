//! The gateway's unified API (`/v1/chat/completions`, `/v1/embeddings`,
//! also under `/v1/unified/`): `model: "<provider>/<model>"` picks the
//! provider; the request is translated to its API (`translate`), goes
//! through the same phases as a native one, and the answer comes back in
//! the `OpenAI` shape.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header, request::Parts};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::Connect;
use serde_json::{Value, json};

use super::{
    BodyLimits, Forwarder, LocalAnswer, Reroute, admit_read, body::LeashBody, json_response,
    read_body,
};
use crate::{
    credentials::Credential,
    pipeline::{ActiveExchange, Caller, CredentialAction, Exchange, Mode, Pipeline},
    provider::{ErrorCode, ProviderKind, Providers},
    record::{Attempt, Unified},
    routes::{Outcome, Route, Routes},
    translate::{self, Api, Translator},
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

/// What the unified API serves with: providers, routes, pipeline, an
/// upstream client (`C`: the gateway's, or the agent's marked one), limits,
/// and who is calling.
pub struct Context<'a, C> {
    pub providers: &'a Providers,
    pub pipeline: &'a Arc<Pipeline>,
    pub forwarder: &'a Forwarder<C>,
    pub limits: BodyLimits,
    pub routes: &'a Routes,
    pub caller: &'a Caller,
    pub mode: Mode,
    /// Whether a target without a credential of its own gets the client's
    /// (not when a policy sent the request elsewhere: the client's key was
    /// meant for the provider it called).
    pub keep_client_key: bool,
}

impl<C> Clone for Context<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for Context<'_, C> {}

/// How the unified API's client connection is made.
pub trait Connector: Connect + Clone + Send + Sync + 'static {}

impl<C: Connect + Clone + Send + Sync + 'static> Connector for C {}

pub async fn serve<C: Connector>(
    gw: Context<'_, C>,
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
        let resp = serve_route(&gw, &head, Shape::Unified(&value, api), route).await;
        return follow(gw, &head, &value, api, resp).await;
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
    match attempt(
        &gw,
        &head,
        Shape::Unified(&value, api),
        (&name, &model, None),
        unified,
    )
    .await
    {
        Ok((resp, answer)) => {
            follow(gw, &head, &value, api, translated(resp, answer.as_ref())).await
        }
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

/// What a route's request is.
#[derive(Clone, Copy)]
pub enum Shape<'r> {
    /// The unified API's `OpenAI`-shaped body, translated for each target.
    Unified(&'r Value, Api),
    /// A native request to `/v1/<route>/<rest>`: sent to each target as it
    /// is, with the target's model (all targets speak the same API).
    Native {
        rest: &'r str,
        query: Option<&'r str>,
        body: &'r Bytes,
    },
}

impl Shape<'_> {
    fn api(&self) -> &'static str {
        match self {
            Self::Unified(_, api) => api.as_str(),
            Self::Native { .. } => "native",
        }
    }
}

/// A native request for `model`: the model named in the body (`OpenAI`,
/// Anthropic) or in the path (Gemini's `models/<model>:<method>`).
fn native_for(kind: ProviderKind, rest: &str, body: &Bytes, model: &str) -> (String, Bytes) {
    if kind == ProviderKind::Google {
        let path = match (rest.find("/models/"), rest.rfind(':')) {
            (Some(a), Some(b)) if a + 8 <= b => {
                format!("{}{model}{}", &rest[..a + 8], &rest[b..])
            }
            _ => rest.to_owned(),
        };
        return (path, body.clone());
    }
    let body = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut o)) => {
            o.insert("model".into(), Value::String(model.to_owned()));
            Bytes::from(Value::Object(o).to_string())
        }
        // Not a JSON object: as sent (the policy decides what it makes of it).
        _ => body.clone(),
    };
    (rest.to_owned(), body)
}

/// One call of `target` (provider, model): translated (or, native, given
/// the target's model), through the pipeline, forwarded. The answer is
/// still the provider's shape; `Some(answer)` says how to translate it.
async fn attempt<C: Connector>(
    gw: &Context<'_, C>,
    head: &Parts,
    shape: Shape<'_>,
    (name, model, credential): (&str, &str, Option<&Credential>),
    unified: Unified,
) -> Result<(Response<LeashBody>, Option<translate::Answer>), AttemptError> {
    let provider = gw
        .providers
        .get(name)
        .map(Arc::clone)
        .ok_or(AttemptError::UnknownProvider)?;
    let mut head = head_copy(head);
    let (path, query, body, answer) = match shape {
        Shape::Unified(value, api) => {
            let native = translate::request(api, provider.kind, name, model, value.clone())
                .map_err(AttemptError::Refused)?;
            translate::request_headers(provider.kind, &mut head.headers);
            (native.path, native.query, native.body, Some(native.answer))
        }
        Shape::Native { rest, query, body } => {
            let (path, body) = native_for(provider.kind, rest, body, model);
            (path, query, body, None)
        }
    };
    let upstream_path = format!("{}{path}", provider.upstream.base_path());
    let endpoint = provider.upstream.endpoint_of(&upstream_path).to_owned();
    let mut exchange = Exchange::new(gw.mode, provider, gw.caller.clone(), endpoint);
    exchange.unified = Some(unified);
    // Applied once the request phases passed (a virtual key is checked
    // there first).
    match credential {
        Some(c) => {
            exchange.ext.insert(CredentialAction::Inject(c.clone()));
        }
        None if !gw.keep_client_key => {
            exchange.ext.insert(CredentialAction::Strip);
        }
        None => {}
    }
    let ex = ActiveExchange::new(exchange, Arc::clone(gw.pipeline));
    let resp = admit_read(ex, head, body, &upstream_path, query, gw.forwarder).await;
    Ok((resp, answer))
}

enum Tried {
    /// An answer that is not retried: the client gets it.
    Answered(Response<LeashBody>, Option<translate::Answer>),
    /// A failure (status, or `None` for a timeout; ms), with the answer to
    /// give the client if no other target answers.
    Failed(
        Option<u16>,
        f64,
        Option<(Response<LeashBody>, Option<translate::Answer>)>,
    ),
    /// The target cannot take this request (a field it cannot translate).
    Refused(translate::TranslateError),
}

/// One attempt of a route's request at target `i`, within its timeout;
/// the breaker, latency average and metrics learn how it went.
#[allow(clippy::too_many_arguments, reason = "one attempt's whole context")]
async fn try_target<C: Connector>(
    gw: &Context<'_, C>,
    head: &Parts,
    shape: Shape<'_>,
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
        head,
        shape,
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
pub async fn serve_route<C: Connector>(
    gw: &Context<'_, C>,
    head: &Parts,
    shape: Shape<'_>,
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
    let mut last: Option<(Response<LeashBody>, Option<translate::Answer>)> = None;
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
            api: shape.api().to_owned(),
            model: route.name.clone(),
            route: Some(route.name.clone()),
            attempts: attempts.clone(),
        };
        match try_target(gw, head, shape, route, i, unified).await {
            Tried::Answered(resp, answer) => return translated(resp, answer.as_ref()),
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
        (Some((resp, answer)), _) => translated(resp, answer.as_ref()),
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

/// A policy rule sent the request elsewhere (`Reroute` on the answer): it
/// is served by that route instead, without the client's key (meant for
/// the provider it called). Once only: a route's request sent on again is
/// refused.
async fn follow<C: Connector>(
    gw: Context<'_, C>,
    head: &Parts,
    value: &Value,
    api: Api,
    resp: Response<LeashBody>,
) -> Response<LeashBody> {
    let Some(reroute) = resp.extensions().get::<Reroute>().cloned() else {
        return resp;
    };
    drop(resp);
    let Some(route) = gw.routes.get(&reroute.route) else {
        return openai_error(
            StatusCode::FORBIDDEN,
            "permission_error",
            &format!(
                "leash: policy sends this request to route `{}`, which is not configured",
                reroute.route
            ),
            None,
        );
    };
    let gw = Context {
        keep_client_key: false,
        ..gw
    };
    let resp = serve_route(&gw, head, Shape::Unified(value, api), route).await;
    if resp.extensions().get::<Reroute>().is_some() {
        return openai_error(
            StatusCode::FORBIDDEN,
            "permission_error",
            &format!(
                "leash: policy sends this request on from route `{}` again; Leash reroutes once",
                route.name
            ),
            None,
        );
    }
    resp
}

/// A native request (to `/v1/openai/...`, or intercepted) that a policy
/// rule sent to a route: served there when it is an `OpenAI`-shaped chat
/// completion or embeddings request; any other answer is returned as is.
pub async fn reroute_native<C: Connector>(
    gw: Context<'_, C>,
    kind: ProviderKind,
    endpoint: &str,
    resp: Response<LeashBody>,
) -> Response<LeashBody> {
    let Some(reroute) = resp.extensions().get::<Reroute>() else {
        return resp;
    };
    let (ProviderKind::OpenAi, Some(api)) = (kind, Api::of_path(endpoint)) else {
        return resp;
    };
    let Ok(value) = serde_json::from_slice::<Value>(&reroute.body) else {
        return resp;
    };
    let mut head = Request::new(()).into_parts().0;
    head.method = Method::POST;
    head.headers = reroute.headers.clone();
    follow(gw, &head, &value, api, resp).await
}

/// The provider's (or Leash's own) answer in the `OpenAI` shape (as it is
/// without `answer`: a native route's).
fn translated(
    resp: Response<LeashBody>,
    answer: Option<&translate::Answer>,
) -> Response<LeashBody> {
    let Some(answer) = answer else {
        return resp;
    };
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
