//! The gateway's unified API (`/v1/chat/completions`, `/v1/embeddings`,
//! also under `/v1/unified/`): `model: "<provider>/<model>"` picks the
//! provider; the request is translated to its API (`translate`), goes
//! through the same phases as a native one, and the answer comes back in
//! the `OpenAI` shape.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{BodyLimits, Forwarder, admit_read, body::LeashBody, json_response, read_body};
use crate::{
    pipeline::{ActiveExchange, Caller, Exchange, Mode, Pipeline},
    provider::Providers,
    record::Unified,
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
    let (name, model) = match translate::split_model(&value) {
        Ok((p, m)) => (p.to_owned(), m.to_owned()),
        Err(e) => return refused(&e),
    };
    let Some(provider) = gw.providers.get(&name).map(Arc::clone) else {
        let known = gw.providers.names().collect::<Vec<_>>().join(", ");
        return openai_error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            &format!("leash: unknown provider `{name}` in `model`; known providers: {known}"),
            Some("model"),
        );
    };
    let native = match translate::request(api, provider.kind, &name, &model, value) {
        Ok(native) => native,
        Err(e) => return refused(&e),
    };
    translate::request_headers(provider.kind, &mut head.headers);
    let upstream_path = format!("{}{}", provider.upstream.base_path(), native.path);
    let caller = Caller {
        addr: Some(peer),
        ..Caller::default()
    };
    let mut exchange = Exchange::new(Mode::Gateway, provider, caller, native.path.clone());
    exchange.unified = Some(Unified {
        api: api.as_str().to_owned(),
        model: native.answer.model.clone(),
    });
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
    translated(resp, &native.answer)
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
