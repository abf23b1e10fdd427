//! The admin listener: `GET /healthz` and `GET /metrics` (Prometheus text).

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::{metrics::Metrics, server::Handler};

type Encode = Box<dyn Fn() -> String + Send + Sync>;

pub struct Admin {
    encode: Encode,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self::with_encoder(Box::new(move || metrics.encode()))
    }

    /// An admin listener serving what `encode` returns as `/metrics`.
    pub fn with_encoder(encode: Encode) -> Self {
        Self { encode }
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

impl Handler for Admin {
    type Body = Full<Bytes>;

    async fn handle(
        self: Arc<Self>,
        _peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n",
            );
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
            "/metrics" => text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                (self.encode)(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /healthz or /metrics\n",
            ),
        }
    }
}
