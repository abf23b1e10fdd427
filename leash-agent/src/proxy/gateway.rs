//! The explicit gateway listener: routes `/v1/<provider>/<rest>` to
//! `<provider upstream>/<rest>`. The upstream comes only from configuration,
//! never from the caller's Host header or URI authority.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::Connect;
use serde::Deserialize;
use serde_json::json;

use super::{
    BodyLimits, Forwarder, admit, body::LeashBody, hygiene, json_response, local_response, path,
};
use crate::{
    field::{self, FieldError},
    pipeline::{ActiveExchange, Caller, Exchange, Mode, Pipeline, Rejection},
    provider::{ErrorCode, Providers},
    server::{ConnLimits, Handler, RawLimits},
    tls::{RawTls, TlsFiles},
    upstream::HttpsConnector,
};

const ROUTE_PREFIX: &str = "/v1/";

pub const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:8080";
/// Request bodies above this are refused with 413 (they are read whole for policy).
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// In-flight requests and streams of a stopping process get this long.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 30;
/// A compressed request body decodes to at most this many times its size.
pub const DEFAULT_MAX_DECOMPRESSION_RATIO: usize = 100;

/// The `gateway` section: the explicit listener, and the request limits
/// every listener applies.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Whether the file (or a flag) configured the gateway listener: `leash
    /// run` serves it only then.
    pub explicit: bool,
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub max_body_bytes: usize,
    /// A compressed request body may decode to at most this many times its
    /// size (and never past `max_body_bytes`).
    pub max_decompression_ratio: usize,
    pub header_read_timeout: std::time::Duration,
    /// How long a stopping or handed-over process (gateway and agent alike)
    /// lets in-flight requests and streams finish.
    pub drain_timeout: std::time::Duration,
    pub limits: ConnLimits,
}

/// `gateway` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub listen: Option<String>,
    tls: Option<RawTls>,
    max_body_bytes: Option<usize>,
    max_decompression_ratio: Option<usize>,
    header_read_timeout_secs: Option<u64>,
    drain_timeout_secs: Option<u64>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_connections: Option<usize>,
    max_concurrent_streams: Option<u32>,
}

impl RawGateway {
    /// Sets `listen` to its default if it is not set, so that it counts
    /// as configured (`leash run` serves the gateway only then).
    pub fn listen_by_default(&mut self) {
        self.listen
            .get_or_insert_with(|| DEFAULT_GATEWAY_LISTEN.to_owned());
    }
}

impl GatewayConfig {
    pub fn validate(raw: RawGateway, base: &std::path::Path) -> Result<Self, FieldError> {
        let limits = ConnLimits::validate(
            RawLimits {
                max_header_bytes: raw.max_header_bytes,
                max_headers: raw.max_headers,
                max_connections: raw.max_connections,
                max_concurrent_streams: raw.max_concurrent_streams,
            },
            "gateway",
        )?;
        Ok(Self {
            explicit: raw.listen.is_some(),
            listen: field::addr(
                "gateway.listen",
                raw.listen.as_deref(),
                DEFAULT_GATEWAY_LISTEN,
            )?,
            tls: raw.tls.map(|t| TlsFiles::from_raw(t, base)),
            max_body_bytes: field::positive(
                "gateway.max_body_bytes",
                raw.max_body_bytes,
                DEFAULT_MAX_BODY_BYTES,
            )?,
            max_decompression_ratio: field::positive(
                "gateway.max_decompression_ratio",
                raw.max_decompression_ratio,
                DEFAULT_MAX_DECOMPRESSION_RATIO,
            )?,
            header_read_timeout: field::secs(
                "gateway.header_read_timeout_secs",
                raw.header_read_timeout_secs,
                30,
            )?,
            drain_timeout: field::secs(
                "gateway.drain_timeout_secs",
                raw.drain_timeout_secs,
                DEFAULT_DRAIN_TIMEOUT_SECS,
            )?,
            limits,
        })
    }

    /// The body limits every listener applies to requests.
    pub fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            max_bytes: self.max_body_bytes,
            max_ratio: self.max_decompression_ratio,
        }
    }
}

/// The explicit gateway; `C` connects upstream (the agent's on sockets
/// its own hooks let through).
pub struct Gateway<C = HttpsConnector> {
    providers: Providers,
    routes: crate::routes::Routes,
    mcp: crate::mcp::McpServers,
    pipeline: Arc<Pipeline>,
    forwarder: Forwarder<C>,
    limits: BodyLimits,
}

/// Splits `/v1/<provider><rest>` into the provider name and `rest`
/// (empty or starting with `/`).
fn route(path: &str) -> Option<(&str, &str)> {
    let tail = path.strip_prefix(ROUTE_PREFIX)?;
    let (name, rest) = tail.find('/').map_or((tail, ""), |i| tail.split_at(i));
    (!name.is_empty()).then_some((name, rest))
}

impl<C: Connect + Clone + Send + Sync + 'static> Gateway<C> {
    pub fn new(
        (providers, routes, mcp): (Providers, crate::routes::Routes, crate::mcp::McpServers),
        pipeline: Arc<Pipeline>,
        forwarder: Forwarder<C>,
        limits: BodyLimits,
    ) -> Self {
        Self {
            providers,
            routes,
            mcp,
            pipeline,
            forwarder,
            limits,
        }
    }

    /// What the unified API (and a policy's reroute) serves with.
    fn context<'a>(&'a self, caller: &'a Caller) -> super::unified::Context<'a, C> {
        super::unified::Context {
            providers: &self.providers,
            pipeline: &self.pipeline,
            forwarder: &self.forwarder,
            limits: self.limits,
            routes: &self.routes,
            caller,
            mode: Mode::Gateway,
            keep_client_key: true,
        }
    }

    /// `/v1/<route>/<rest>`: a native request with fallbacks across the
    /// route's targets, which must all speak one API (e.g. one provider's
    /// regions or keys); each gets the request with its own model.
    async fn native_route(
        &self,
        peer: SocketAddr,
        req: Request<Incoming>,
        route: &crate::routes::Route,
        rest: &str,
    ) -> Response<LeashBody> {
        let kinds: Vec<_> = route
            .targets
            .iter()
            .filter_map(|t| self.providers.get(&t.provider).map(|p| p.kind))
            .collect();
        let Some(&kind) = kinds.first() else {
            return self.not_found("leash: the route has no known provider");
        };
        let refuse = |status: StatusCode, message: &str| {
            json_response(
                status,
                crate::provider::error_body(kind, status, ErrorCode::BadRequest, message),
            )
        };
        if kinds.iter().any(|k| *k != kind) {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!(
                    "leash: route `{}` mixes provider APIs; call it through the unified API (/v1/chat/completions)",
                    route.name
                ),
            );
        }
        let rest = match path::canonical(rest) {
            Ok(c) => c.encoded,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let query = req.uri().query().map(str::to_owned);
        let (mut head, body) = req.into_parts();
        let body = match super::read_body(&mut head, body, self.limits, &route.name).await {
            Ok(body) => body,
            Err(r) => return refuse(r.status, &r.message),
        };
        let caller = Caller {
            addr: Some(peer),
            ..Caller::default()
        };
        let shape = super::unified::Shape::Native {
            rest: &rest,
            query: query.as_deref(),
            body: &body,
        };
        super::unified::serve_route(&self.context(&caller), &head, shape, route).await
    }

    /// `/mcp/<server><rest>`: a request to an MCP server, through the
    /// pipeline as the provider `mcp/<server>`, its JSON-RPC read first.
    async fn mcp(
        &self,
        peer: SocketAddr,
        req: Request<Incoming>,
        server: &str,
        rest: &str,
    ) -> Response<LeashBody> {
        let Some(provider) = self.mcp.get(server).map(Arc::clone) else {
            return json_response(
                StatusCode::NOT_FOUND,
                crate::mcp::error_body(None, &format!("leash: unknown MCP server `{server}`")),
            );
        };
        let caller = Caller {
            addr: Some(peer),
            ..Caller::default()
        };
        let rest = match path::canonical(rest) {
            Ok(c) => c,
            Err(e) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    crate::mcp::error_body(None, &e.to_string()),
                );
            }
        };
        let endpoint = if rest.decoded.is_empty() {
            "/".to_owned()
        } else {
            rest.decoded.clone()
        };
        let ex = ActiveExchange::new(
            Exchange::new(Mode::Gateway, provider, caller, endpoint),
            Arc::clone(&self.pipeline),
        );
        let upstream_path = format!("{}{}", ex.provider.upstream.base_path(), rest.encoded);
        super::admit_as(
            ex,
            req,
            &upstream_path,
            self.limits,
            &self.forwarder,
            Some(server),
        )
        .await
    }

    fn not_found(&self, message: &str) -> Response<LeashBody> {
        let known: Vec<&str> = self.providers.names().collect();
        let body = json!({
            "error": {
                "message": message,
                "type": "not_found_error",
                "code": ErrorCode::NotFound.as_str(),
                "known_providers": known,
            }
        });
        json_response(StatusCode::NOT_FOUND, Bytes::from(body.to_string()))
    }

    async fn serve(&self, peer: SocketAddr, req: Request<Incoming>) -> Response<LeashBody> {
        if let Some(refused) = hygiene::check(&req) {
            return refused;
        }
        let uri_path = req.uri().path().to_owned();
        if let Some((server, rest)) = crate::mcp::route(&uri_path) {
            return Box::pin(self.mcp(peer, req, server, rest)).await;
        }
        if let Some(api) = uri_path
            .strip_prefix("/v1")
            .and_then(crate::translate::Api::of_path)
        {
            let caller = Caller {
                addr: Some(peer),
                ..Caller::default()
            };
            // Boxed: the unified API's future (routes, retries) is large.
            return Box::pin(super::unified::serve(self.context(&caller), req, api)).await;
        }
        let Some((name, rest)) = route(&uri_path) else {
            return self.not_found(&format!(
                "leash: no route for `{uri_path}`; use /v1/<provider>/..."
            ));
        };
        let Some(provider) = self.providers.get(name).map(Arc::clone) else {
            if let Some(route) = self.routes.get(name) {
                let route = Arc::clone(route);
                let rest = rest.to_owned();
                return Box::pin(self.native_route(peer, req, &route, &rest)).await;
            }
            let known = self.providers.names().collect::<Vec<_>>().join(", ");
            return self.not_found(&format!(
                "leash: unknown provider `{name}`; known providers: {known}"
            ));
        };
        let caller = Caller {
            addr: Some(peer),
            ..Caller::default()
        };
        // Decoded once: rules match, the record shows and the provider
        // receives the same path.
        let (endpoint, rest) = match path::canonical(rest) {
            Ok(c) if c.decoded.is_empty() => ("/".to_owned(), Ok(c.encoded)),
            Ok(c) => (c.decoded, Ok(c.encoded)),
            Err(e) => ("/".to_owned(), Err(e)),
        };
        let mut ex = ActiveExchange::new(
            Exchange::new(Mode::Gateway, provider, caller, endpoint),
            Arc::clone(&self.pipeline),
        );
        let rest = match rest {
            Ok(encoded) => encoded,
            Err(e) => {
                return local_response(
                    &mut ex,
                    &Rejection {
                        status: StatusCode::BAD_REQUEST,
                        code: ErrorCode::BadRequest,
                        message: e.to_string(),
                    },
                );
            }
        };
        let upstream_path = [ex.provider.upstream.base_path(), rest.as_str()].concat();
        let kind = ex.provider.kind;
        let answer = admit(ex, req, &upstream_path, self.limits, &self.forwarder).await;
        if answer.extensions().get::<super::Reroute>().is_none() {
            return answer;
        }
        // A policy rule sends it to a route (rare: the check above is all
        // the common path pays).
        let caller = Caller {
            addr: Some(peer),
            ..Caller::default()
        };
        let endpoint = route(&uri_path).map_or("", |(_, rest)| rest);
        Box::pin(super::unified::reroute_native(
            self.context(&caller),
            kind,
            endpoint,
            answer,
        ))
        .await
    }
}

impl<C: Connect + Clone + Send + Sync + 'static> Handler for Gateway<C> {
    type Body = LeashBody;

    fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<LeashBody>> + Send {
        super::contain_panics(async move { self.serve(peer, req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("/v1/openai/chat/completions"),
            Some(("openai", "/chat/completions"))
        );
        assert_eq!(
            route("/v1/anthropic/v1/messages"),
            Some(("anthropic", "/v1/messages"))
        );
        assert_eq!(route("/v1/openai"), Some(("openai", "")));
        assert_eq!(route("/v1/"), None);
        assert_eq!(route("/v2/openai/x"), None);
        assert_eq!(route("/"), None);
    }
}
