//! The admin listener: `GET /healthz`, `GET /metrics` (Prometheus text)
//! and, when given one, the web console (`/`, `/console`, `/api/*`).

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;

use crate::{console::Console, metrics::Metrics, server::Handler};

/// Largest request body the console API reads (the policy playground).
const MAX_CONSOLE_BODY: usize = 1024 * 1024;

type Encode = Box<dyn Fn() -> String + Send + Sync>;

pub struct Admin {
    encode: Encode,
    console: Option<Console>,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>, console: Option<Console>) -> Self {
        Self {
            encode: Box::new(move || metrics.encode()),
            console,
        }
    }

    /// An admin listener serving what `encode` returns as `/metrics`.
    pub fn with_encoder(encode: Encode) -> Self {
        Self {
            encode,
            console: None,
        }
    }

    async fn console(&self, console: &Console, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (head, body) = req.into_parts();
        let body = if head.method == Method::POST {
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
        let answer = console.handle(
            &head.method,
            head.uri.path(),
            head.uri.query().unwrap_or_default(),
            &head.headers,
            &body,
        );
        let mut resp = text(answer.status, answer.content_type, answer.body);
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
        if let Some(console) = &self.console
            && Console::owns(req.uri().path())
            && matches!(*req.method(), Method::GET | Method::HEAD | Method::POST)
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
