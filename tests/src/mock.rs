//! A mock LLM provider speaking the `OpenAI` (chat, responses, embeddings),
//! Anthropic (messages) and Gemini (generateContent, streamGenerateContent)
//! APIs, streaming and not, with deterministic text and usage numbers. It
//! records every request it receives and when it sent each stream chunk.
//!
//! Request headers steer it: `x-mock-chunks` (number of text pieces, default
//! 5), `x-mock-chunk-delay-ms` (gap between stream chunks, default 0) and
//! `x-mock-status` (answer with that error status in the provider's shape),
//! `x-mock-text` (answer with this text instead, cut into `x-mock-chunks`
//! pieces), `x-mock-embeddings: N` (an embeddings answer of N 1536-float
//! vectors — about 18 KiB each — with `x-mock-text`, if given, as a `note`
//! after them), `x-mock-repeat: N` (the `x-mock-text` N times over). A
//! path under `/status/<code>/` always fails with that status, one under
//! `/delay/<ms>/` answers that late, one under `/cut/<n>/` ends its stream
//! after n events (for routes' fallbacks). Offered tools: see `tools`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

mod embeddings;
mod expect;
mod tools;

use self::{
    embeddings::embeddings,
    tools::{ToolSteer, gemini_embeddings, tool_answer},
};
pub use self::{
    expect::{assert_usage, expected_usage},
    tools::TOOL_ARGS,
};

/// The text pieces a response is made of; `x-mock-chunks: N` takes N of them
/// (cycling).
pub const PIECES: [&str; 5] = ["Hello", " from", " the", " mock", " provider"];

/// Usage numbers the mock reports, per API shape.
pub mod usage {
    pub const OPENAI_INPUT: u64 = 11;
    pub const OPENAI_OUTPUT: u64 = 7;
    pub const OPENAI_CACHED: u64 = 3;
    pub const OPENAI_REASONING: u64 = 2;
    pub const ANTHROPIC_INPUT: u64 = 13;
    pub const ANTHROPIC_OUTPUT: u64 = 9;
    pub const ANTHROPIC_CACHE_READ: u64 = 4;
    pub const ANTHROPIC_CACHE_CREATION: u64 = 2;
    pub const GOOGLE_PROMPT: u64 = 17;
    pub const GOOGLE_CANDIDATES: u64 = 8;
    pub const GOOGLE_CACHED: u64 = 5;
    pub const GOOGLE_THOUGHTS: u64 = 3;
}

/// The text of a response made of `n` pieces.
pub fn text_of(n: usize) -> String {
    (0..n).map(|i| PIECES[i % PIECES.len()]).collect()
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub version: http::Version,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When each stream chunk was handed to the connection.
    pub chunk_sent: Arc<Mutex<Vec<Instant>>>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
}

/// A running mock on its own thread and runtime; stops when dropped.
pub struct MockProvider {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockProvider {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("static address"))
    }

    pub fn start_on(addr: SocketAddr) -> Self {
        Self::start_inner(addr, None)
    }

    /// Starts an HTTPS mock on `addr` presenting `identity`.
    pub fn start_tls(addr: SocketAddr, identity: &crate::tls::Identity) -> Self {
        Self::start_inner(addr, Some(identity.acceptor()))
    }

    fn start_inner(addr: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let state = Arc::new(State::default());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread_state = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("mock runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .expect("mock bind");
                addr_tx
                    .send(listener.local_addr().expect("mock addr"))
                    .expect("report addr");
                serve(listener, tls, thread_state, stop_rx).await;
            });
        });
        let addr = addr_rx.recv().expect("mock provider did not start");
        Self {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (for a TLS mock, use [`MockProvider::addr`]
    /// with the certificate's host name).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("mock state").clone()
    }

    /// How many requests arrived (without copying them).
    pub fn request_count(&self) -> usize {
        self.state.requests.lock().expect("mock state").len()
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves the mock API on `listener` until `stop` fires. Public for the
/// standalone `mock-provider` binary.
async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = Arc::clone(&state);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
            _ = &mut stop => return,
        }
    }
}

/// Runs the mock forever on `addr` (for the standalone binary).
pub async fn run_forever(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "mock provider listening on http://{}",
        listener.local_addr()?
    );
    let (_keep, stop) = tokio::sync::oneshot::channel::<()>();
    serve(listener, None, Arc::new(State::default()), stop).await;
    Ok(())
}

/// Response bodies: whole, in frames, or chunks pushed by a task at a
/// fixed gap.
pub enum MockBody {
    Full(Option<Bytes>),
    Frames(std::collections::VecDeque<Bytes>),
    Chunks(mpsc::Receiver<Bytes>),
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Frames(frames) => Poll::Ready(frames.pop_front().map(|b| Ok(Frame::data(b)))),
            Self::Chunks(rx) => rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
        }
    }
}

/// A JSON body of `len` bytes sent as `frames`, with its length declared.
fn frames_response(frames: Vec<Bytes>, len: usize) -> Response<MockBody> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, len)
        .body(MockBody::Frames(frames.into()))
        .expect("static response")
}

fn json_response(status: StatusCode, value: &Value) -> Response<MockBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(MockBody::Full(Some(Bytes::from(value.to_string()))))
        .expect("static response")
}

fn sse_response(
    events: Vec<String>,
    gap: Duration,
    sent: Arc<Mutex<Vec<Instant>>>,
) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            sent.lock().expect("mock state").push(Instant::now());
            if tx.send(Bytes::from(event)).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(MockBody::Chunks(rx))
        .expect("static response")
}

fn header_num(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    OpenAi,
    Anthropic,
    Google,
}

fn api_for(path: &str) -> Api {
    if path.starts_with("/v1beta/") || path.starts_with("/v1/models/") {
        Api::Google
    } else if path == "/v1/messages" {
        Api::Anthropic
    } else {
        Api::OpenAi
    }
}

fn error_value(api: Api, status: StatusCode, message: &str) -> Value {
    match api {
        Api::OpenAi => {
            json!({"error": {"message": message, "type": "mock_error", "param": null, "code": "mock"}})
        }
        Api::Anthropic => {
            json!({"type": "error", "error": {"type": "api_error", "message": message}})
        }
        Api::Google => {
            json!({"error": {"code": status.as_u16(), "message": message, "status": "INTERNAL"}})
        }
    }
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let recorded = Recorded {
        method: parts.method.to_string(),
        version: parts.version,
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(|| path.clone(), ToString::to_string),
        headers: parts.headers.clone(),
        body,
        chunk_sent: Arc::default(),
    };
    state
        .requests
        .lock()
        .expect("mock state")
        .push(recorded.clone());

    // A base path `/status/<code>` or `/delay/<ms>` (a provider configured
    // with such an upstream) fails every request, or answers late.
    let (steer, path) = steered(&path);
    if let Steer::Delay(ms) = steer {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let api = api_for(&path);
    let forced = match steer {
        Steer::Status(code) => Some(code),
        _ => header_num(&parts.headers, "x-mock-status"),
    };
    if let Some(code) = forced {
        let status = u16::try_from(code)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return json_response(status, &error_value(api, status, "mock error on request"));
    }
    let texts = texts_of(&parts.headers);
    let texts = &texts;
    let gap =
        Duration::from_millis(header_num(&parts.headers, "x-mock-chunk-delay-ms").unwrap_or(0));
    let request = recorded.json();
    let sent = Arc::clone(&recorded.chunk_sent);
    let stream = request["stream"].as_bool().unwrap_or(false);
    let model = request["model"].as_str().unwrap_or("mock-model").to_owned();
    let tool = ToolSteer::of(&parts.headers, texts);
    if let Some(answer) = tool_answer(api, &path, &request, &model, &tool, gap, &sent) {
        return answer;
    }
    let resp = match (api, path.as_str()) {
        (Api::OpenAi, "/v1/chat/completions") if stream => {
            let include_usage = request["stream_options"]["include_usage"]
                .as_bool()
                .unwrap_or(false);
            sse_response(openai_chat_stream(&model, texts, include_usage), gap, sent)
        }
        (Api::OpenAi, "/v1/chat/completions") => {
            json_response(StatusCode::OK, &openai_chat(&model, texts))
        }
        (Api::OpenAi, "/v1/responses") if stream => {
            sse_response(openai_responses_stream(&model, texts), gap, sent)
        }
        (Api::OpenAi, "/v1/responses") => {
            json_response(StatusCode::OK, &openai_response(&model, texts, "completed"))
        }
        (Api::OpenAi, "/v1/embeddings") => embeddings(&model, &request, &parts.headers),
        (Api::Anthropic, _) if stream => sse_response(anthropic_stream(&model, texts), gap, sent),
        (Api::Anthropic, _) => json_response(StatusCode::OK, &anthropic_message(&model, texts)),
        (Api::Google, p) => {
            let (model, method) = p
                .rsplit('/')
                .next()
                .and_then(|s| s.split_once(':'))
                .unwrap_or(("mock-model", ""));
            match method {
                "generateContent" => json_response(
                    StatusCode::OK,
                    &gemini_response(model, &texts.concat(), true),
                ),
                "streamGenerateContent" => sse_response(gemini_stream(model, texts), gap, sent),
                "batchEmbedContents" => json_response(StatusCode::OK, &gemini_embeddings(&request)),
                _ => json_response(
                    StatusCode::NOT_FOUND,
                    &error_value(api, StatusCode::NOT_FOUND, "unknown method"),
                ),
            }
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &error_value(api, StatusCode::NOT_FOUND, &format!("mock has no {path}")),
        ),
    };
    match steer {
        Steer::Cut(n) => cut_after(resp, n),
        _ => resp,
    }
}

enum Steer {
    None,
    Status(u64),
    Delay(u64),
    Cut(u64),
}

/// `resp` with its stream cut after `n` events (the connection closes).
fn cut_after(resp: Response<MockBody>, n: u64) -> Response<MockBody> {
    let (parts, body) = resp.into_parts();
    let MockBody::Chunks(mut rx) = body else {
        return Response::from_parts(parts, body);
    };
    let (tx, cut) = mpsc::channel(4);
    tokio::spawn(async move {
        for _ in 0..n {
            let Some(chunk) = rx.recv().await else { return };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    Response::from_parts(parts, MockBody::Chunks(cut))
}

/// A `/status/<code>` or `/delay/<ms>` prefix, and the path after it.
fn steered(path: &str) -> (Steer, String) {
    for (prefix, make) in [
        ("/status/", Steer::Status as fn(u64) -> Steer),
        ("/delay/", Steer::Delay),
        ("/cut/", Steer::Cut),
    ] {
        if let Some(rest) = path.strip_prefix(prefix)
            && let Some((n, rest)) = rest.split_once('/')
            && let Ok(n) = n.parse()
        {
            return (make(n), format!("/{rest}"));
        }
    }
    (Steer::None, path.to_owned())
}

/// The text pieces of an answer, as the request's headers ask.
fn texts_of(headers: &HeaderMap) -> Vec<String> {
    let pieces = usize::try_from(header_num(headers, "x-mock-chunks").unwrap_or(5)).unwrap_or(5);
    match headers.get("x-mock-text").and_then(|v| v.to_str().ok()) {
        // The given text (`x-mock-repeat` times), cut into `pieces` parts
        // (so a word can span chunks).
        Some(text) => {
            let repeat =
                usize::try_from(header_num(headers, "x-mock-repeat").unwrap_or(1)).unwrap_or(1);
            let chars: Vec<char> = text.repeat(repeat).chars().collect();
            let size = chars.len().div_ceil(pieces.max(1)).max(1);
            chars.chunks(size).map(|c| c.iter().collect()).collect()
        }
        None => (0..pieces)
            .map(|i| PIECES[i % PIECES.len()].to_owned())
            .collect(),
    }
}

fn sse_data(value: &Value) -> String {
    format!("data: {value}\n\n")
}

fn sse_event(name: &str, value: &Value) -> String {
    format!("event: {name}\ndata: {value}\n\n")
}

fn openai_usage() -> Value {
    use usage::{OPENAI_CACHED, OPENAI_INPUT, OPENAI_OUTPUT, OPENAI_REASONING};
    json!({
        "prompt_tokens": OPENAI_INPUT,
        "completion_tokens": OPENAI_OUTPUT,
        "total_tokens": OPENAI_INPUT + OPENAI_OUTPUT,
        "prompt_tokens_details": {"cached_tokens": OPENAI_CACHED},
        "completion_tokens_details": {"reasoning_tokens": OPENAI_REASONING},
    })
}

fn openai_chat(model: &str, texts: &[String]) -> Value {
    json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": texts.concat(), "refusal": null},
            "finish_reason": "stop",
            "logprobs": null,
        }],
        "usage": openai_usage(),
    })
}

fn openai_chat_stream(model: &str, texts: &[String], include_usage: bool) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        sse_data(&json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }))
    };
    let mut events: Vec<String> = (0..texts.len())
        .map(|i| {
            let delta = if i == 0 {
                json!({"role": "assistant", "content": texts[0]})
            } else {
                json!({"content": texts[i].as_str()})
            };
            chunk(delta, Value::Null)
        })
        .collect();
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        events.push(sse_data(&json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [], "usage": openai_usage(),
        })));
    }
    events.push("data: [DONE]\n\n".to_owned());
    events
}

fn openai_response(model: &str, texts: &[String], status: &str) -> Value {
    use usage::{OPENAI_CACHED, OPENAI_INPUT, OPENAI_OUTPUT, OPENAI_REASONING};
    let done = status == "completed";
    json!({
        "id": "resp_mock",
        "object": "response",
        "created_at": 1_700_000_000,
        "status": status,
        "model": model,
        "output": if done { json!([{
            "type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": texts.concat(), "annotations": []}],
        }]) } else { json!([]) },
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "usage": if done { json!({
            "input_tokens": OPENAI_INPUT,
            "input_tokens_details": {"cached_tokens": OPENAI_CACHED},
            "output_tokens": OPENAI_OUTPUT,
            "output_tokens_details": {"reasoning_tokens": OPENAI_REASONING},
            "total_tokens": OPENAI_INPUT + OPENAI_OUTPUT,
        }) } else { Value::Null },
    })
}

fn openai_responses_stream(model: &str, texts: &[String]) -> Vec<String> {
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq - 1
    };
    let mut events = vec![sse_event(
        "response.created",
        &json!({"type": "response.created", "sequence_number": next(), "response": openai_response(model, texts, "in_progress")}),
    )];
    for text in texts {
        events.push(sse_event(
            "response.output_text.delta",
            &json!({"type": "response.output_text.delta", "item_id": "msg_mock", "output_index": 0,
                    "content_index": 0, "delta": text, "sequence_number": next()}),
        ));
    }
    events.push(sse_event(
        "response.completed",
        &json!({"type": "response.completed", "sequence_number": next(), "response": openai_response(model, texts, "completed")}),
    ));
    events
}

fn anthropic_usage(output: u64) -> Value {
    json!({
        "input_tokens": usage::ANTHROPIC_INPUT,
        "output_tokens": output,
        "cache_creation_input_tokens": usage::ANTHROPIC_CACHE_CREATION,
        "cache_read_input_tokens": usage::ANTHROPIC_CACHE_READ,
    })
}

fn anthropic_message(model: &str, texts: &[String]) -> Value {
    json!({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": texts.concat()}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": anthropic_usage(usage::ANTHROPIC_OUTPUT),
    })
}

fn anthropic_stream(model: &str, texts: &[String]) -> Vec<String> {
    let mut events = vec![
        sse_event(
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": anthropic_usage(1)}}),
        ),
        sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        sse_event("ping", &json!({"type": "ping"})),
    ];
    for text in texts {
        events.push(sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ));
    }
    events.push(sse_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(sse_event(
        "message_delta",
        &json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": {"output_tokens": usage::ANTHROPIC_OUTPUT}}),
    ));
    events.push(sse_event("message_stop", &json!({"type": "message_stop"})));
    events
}

fn gemini_response(model: &str, text: &str, last: bool) -> Value {
    use usage::{GOOGLE_CACHED, GOOGLE_CANDIDATES, GOOGLE_PROMPT, GOOGLE_THOUGHTS};
    let mut candidate =
        json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
    if last {
        candidate["finishReason"] = json!("STOP");
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": GOOGLE_PROMPT,
            "candidatesTokenCount": GOOGLE_CANDIDATES,
            "cachedContentTokenCount": GOOGLE_CACHED,
            "thoughtsTokenCount": GOOGLE_THOUGHTS,
            "totalTokenCount": GOOGLE_PROMPT + GOOGLE_CANDIDATES + GOOGLE_THOUGHTS,
        },
        "modelVersion": model,
        "responseId": "mock",
    })
}

fn gemini_stream(model: &str, texts: &[String]) -> Vec<String> {
    (0..texts.len())
        .map(|i| {
            sse_data(&gemini_response(
                model,
                texts[i].as_str(),
                i + 1 == texts.len(),
            ))
        })
        .collect()
}
