//! The lean upstream: a static answer (plain or TLS), sized and delayed
//! per request.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

use crate::{arg, num};

#[derive(Clone)]
pub(crate) struct UpstreamConfig {
    pub(crate) delay: Duration,
    pub(crate) body: Bytes,
    /// Bodies made ahead for the sizes a request may ask for.
    pub(crate) sized: Arc<std::collections::HashMap<usize, Bytes>>,
    pub(crate) chunks: usize,
    pub(crate) gap: Duration,
}

pub(crate) fn chat_body(size: usize) -> Bytes {
    let base = json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_764_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    });
    let overhead = base.to_string().len();
    let text = "lorem ipsum ".repeat(size.saturating_sub(overhead) / 12 + 1);
    let mut v = base;
    v["choices"][0]["message"]["content"] = json!(&text[..size.saturating_sub(overhead).max(1)]);
    Bytes::from(v.to_string())
}

/// An Anthropic Messages answer (for `/v1/messages`), about as large as the
/// default chat completion.
fn anthropic_body() -> Bytes {
    static BODY: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
        let text = "lorem ipsum ".repeat(70);
        Bytes::from(
            json!({
                "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 9, "output_tokens": 12}
            })
            .to_string(),
        )
    });
    BODY.clone()
}

pub(crate) fn sse_event(i: usize, last: bool) -> Bytes {
    let chunk = if last {
        json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 9, "completion_tokens": i, "total_tokens": 9 + i}})
    } else {
        json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
               "choices": [{"index": 0, "delta": {"content": format!("token{i} ")}, "finish_reason": null}]})
    };
    let mut out = format!("data: {chunk}\n\n");
    if last {
        out.push_str("data: [DONE]\n\n");
    }
    Bytes::from(out)
}

pub(crate) struct SseBody {
    pub(crate) cfg: UpstreamConfig,
    pub(crate) next: usize,
    pub(crate) sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if self.next > self.cfg.chunks {
            return Poll::Ready(None);
        }
        if self.next > 0 && !self.cfg.gap.is_zero() {
            let gap = self.cfg.gap;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let i = self.next;
        self.next += 1;
        let last = i == self.cfg.chunks;
        Poll::Ready(Some(Ok(http_body::Frame::data(sse_event(i, last)))))
    }
}

use std::future::Future as _;

type UpBody = http_body_util::Either<Full<Bytes>, SseBody>;

async fn answer(
    cfg: UpstreamConfig,
    req: Request<Incoming>,
) -> Result<Response<UpBody>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let delay = header("x-bench-delay-ms").map_or(cfg.delay, Duration::from_millis);
    let answer = if req.uri().path() == "/v1/messages" {
        anthropic_body()
    } else {
        header("x-bench-size")
            .and_then(|n| cfg.sized.get(&usize::try_from(n).ok()?).cloned())
            .unwrap_or_else(|| cfg.body.clone())
    };
    let body = req
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let stream = body.windows(13).any(|w| w == b"\"stream\":true");
    let resp = if stream {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(http_body_util::Either::Right(SseBody {
                cfg,
                next: 0,
                sleep: None,
            }))
    } else {
        Response::builder()
            .header("content-type", "application/json")
            .body(http_body_util::Either::Left(Full::new(answer)))
    };
    Ok(resp.expect("response"))
}

pub(crate) fn upstream(args: &[String]) {
    let listen: SocketAddr = arg(args, "--listen")
        .unwrap_or_else(|| "127.0.0.1:9998".into())
        .parse()
        .expect("--listen IP:PORT");
    let size = num(args, "--size", 1024);
    let sized = [size, 1024, 10 * 1024]
        .into_iter()
        .map(|n| (n, chat_body(n)))
        .collect();
    let cfg = UpstreamConfig {
        delay: Duration::from_millis(num(args, "--delay-ms", 0)),
        body: chat_body(size),
        sized: Arc::new(sized),
        chunks: num(args, "--chunks", 20),
        gap: Duration::from_millis(num(args, "--gap-ms", 10)),
    };
    let tls = arg(args, "--tls-names").map(|names| {
        let ca = leash_tests::tls::TestCa::new("leash-bench public CA");
        let out = arg(args, "--tls-ca-out").expect("--tls-ca-out FILE with --tls-names");
        ca.write_cert(std::path::Path::new(&out));
        let names: Vec<&str> = names.split(',').collect();
        ca.identity(&names).acceptor()
    });
    let threads = num(args, "--threads", 1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
            println!("{}", json!({"listening": listen.to_string()}));
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let cfg = cfg.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(cfg.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    if let Some(tls) = tls {
                        if let Ok(stream) = tls.accept(tcp).await {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    } else {
                        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                });
            }
        });
}

// ---- a minimal blocking HTTP/1.1 client ----------------------------------------
