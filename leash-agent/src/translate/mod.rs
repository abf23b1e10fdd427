//! The unified API: OpenAI-shaped chat completions and embeddings in, each
//! provider's own API out, and its answers back in the `OpenAI` shape.
//!
//! A request is translated before the pipeline sees it, so identification,
//! policy, budgets and accounting run on exactly what the provider receives
//! and on the provider's native usage. Translation never drops what the
//! client sent: a field with no counterpart at the provider is refused with
//! a 400 naming it. Answers are translated after the response phases, per
//! stream event as it arrives (never buffered whole), or whole for a plain
//! JSON answer.

mod anthropic;
mod fields;
mod gemini;
mod openai;
mod turns;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use self::fields::{
    CHAT_FIELDS, Image, check_fields, image_of, max_tokens, stop_sequences, text_of,
    tool_arguments, tools_of,
};
use crate::{pipeline::sse::SseBuffer, provider::ProviderKind};

/// The unified chat endpoint, below `/v1` (also under `/v1/unified`).
pub const CHAT_PATH: &str = "/chat/completions";
/// The unified embeddings endpoint.
pub const EMBEDDINGS_PATH: &str = "/embeddings";
/// Largest plain (not streamed) answer translated; a larger one fails.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// `max_tokens` sent to Anthropic, which requires one, when the client gave none.
const DEFAULT_ANTHROPIC_MAX_TOKENS: u64 = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    #[error("leash: the request body is not a JSON object")]
    NotJson,
    #[error("leash: `{0}` is required")]
    Missing(&'static str),
    #[error("leash: `{field}` is invalid: {reason}")]
    Invalid { field: String, reason: String },
    #[error(
        "leash: `{field}` is not supported when translating to {provider}; remove it or call /v1/{provider}/ natively"
    )]
    Unsupported {
        field: String,
        provider: &'static str,
    },
}

impl TranslateError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The `param` of the `OpenAI` error shape.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::NotJson => None,
            Self::Missing(f) => Some(f),
            Self::Invalid { field, .. } | Self::Unsupported { field, .. } => Some(field),
        }
    }
}

/// Which unified endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Embeddings,
}

impl Api {
    /// The endpoint for a gateway path below `/v1` (with or without the
    /// `/unified` prefix).
    pub fn of_path(rest: &str) -> Option<Self> {
        let rest = rest.strip_prefix("/unified").unwrap_or(rest);
        match rest {
            CHAT_PATH => Some(Self::Chat),
            EMBEDDINGS_PATH => Some(Self::Embeddings),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "openai.chat.completions",
            Self::Embeddings => "openai.embeddings",
        }
    }
}

/// `<provider>/<model>` from the request's `model`.
pub fn split_model(body: &Value) -> Result<(&str, &str), TranslateError> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or(TranslateError::Missing("model"))?;
    match model.split_once('/') {
        Some((provider, name)) if !provider.is_empty() && !name.is_empty() => Ok((provider, name)),
        _ => Err(TranslateError::invalid(
            "model",
            format!("`{model}` is not `<provider>/<model>` (e.g. `anthropic/claude-sonnet-4-5`)"),
        )),
    }
}

/// A translated request: what to send the provider, and how to read its
/// answer back.
#[derive(Debug)]
pub struct Native {
    /// Path below the provider's base (e.g. `/v1/messages`).
    pub path: String,
    pub query: Option<&'static str>,
    pub body: Bytes,
    pub answer: Answer,
}

/// How the provider's answer is turned back into the `OpenAI` shape.
#[derive(Debug, Clone)]
pub struct Answer {
    pub kind: ProviderKind,
    pub api: Api,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
    /// The model as the client named it (`<provider>/<model>`).
    pub model: String,
    /// Embeddings asked for as base64 (what the `OpenAI` SDKs do by default).
    pub base64_embeddings: bool,
}

/// Translates the OpenAI-shaped `body` (already parsed) for a provider of
/// `kind` and its `model`.
pub fn request(
    api: Api,
    kind: ProviderKind,
    provider: &str,
    model: &str,
    body: Value,
) -> Result<Native, TranslateError> {
    let Value::Object(body) = body else {
        return Err(TranslateError::NotJson);
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(TranslateError::invalid("stream", "must be a boolean")),
    };
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let answer = Answer {
        kind,
        api,
        stream,
        include_usage,
        model: format!("{provider}/{model}"),
        base64_embeddings: body.get("encoding_format").and_then(Value::as_str) == Some("base64"),
    };
    let (path, query, native) = match (api, kind) {
        (_, ProviderKind::OpenAi) => {
            let path = match api {
                Api::Chat => CHAT_PATH,
                Api::Embeddings => EMBEDDINGS_PATH,
            };
            (path.to_owned(), None, openai::request(body, model))
        }
        (Api::Chat, ProviderKind::Anthropic) => (
            "/v1/messages".to_owned(),
            None,
            anthropic::request(&body, model)?,
        ),
        (Api::Chat, ProviderKind::Google) => {
            let (method, query) = if stream {
                ("streamGenerateContent", Some("alt=sse"))
            } else {
                ("generateContent", None)
            };
            (
                format!("/v1beta/models/{model}:{method}"),
                query,
                gemini::request(&body)?,
            )
        }
        (Api::Embeddings, ProviderKind::Google) => (
            format!("/v1beta/models/{model}:batchEmbedContents"),
            None,
            gemini::embeddings_request(&body, model)?,
        ),
        (Api::Embeddings, ProviderKind::Anthropic) => {
            return Err(TranslateError::Unsupported {
                field: "model".into(),
                provider: "anthropic (it has no embeddings API)",
            });
        }
    };
    Ok(Native {
        path,
        query,
        body: Bytes::from(native.to_string()),
        answer,
    })
}

/// Moves the client's `Authorization: Bearer <key>` (how the `OpenAI` SDKs
/// send it) to the header the provider reads, and adds what it requires.
pub fn request_headers(kind: ProviderKind, headers: &mut HeaderMap) {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|k| HeaderValue::from_str(k.trim()).ok());
    match kind {
        ProviderKind::OpenAi => {}
        ProviderKind::Anthropic => {
            headers.remove(header::AUTHORIZATION);
            if let Some(key) = key {
                headers.insert("x-api-key", key);
            }
            headers
                .entry("anthropic-version")
                .or_insert(HeaderValue::from_static("2023-06-01"));
        }
        ProviderKind::Google => {
            headers.remove(header::AUTHORIZATION);
            if let Some(key) = key {
                headers.insert("x-goog-api-key", key);
            }
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The OpenAI SDKs' own headers mean nothing to another provider.
    for name in ["openai-organization", "openai-project", "openai-beta"] {
        if kind != ProviderKind::OpenAi {
            headers.remove(name);
        }
    }
}

/// Seconds since the epoch, for `created`.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An error answer in the `OpenAI` shape, from a provider's (or Leash's own,
/// in the provider's shape) error body; the status stays the provider's.
pub fn error_answer(status: StatusCode, native: &[u8]) -> Bytes {
    let parsed: Value = serde_json::from_slice(native).unwrap_or(Value::Null);
    let error = parsed.get("error").unwrap_or(&Value::Null);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| error.as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(native);
            let text: String = text.chars().take(2000).collect();
            if text.is_empty() {
                format!("provider answered {status}")
            } else {
                text
            }
        });
    let kind = error
        .get("type")
        .or_else(|| error.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("api_error");
    let code = error.get("code").cloned().unwrap_or(Value::Null);
    let code = match code {
        Value::Number(_) => Value::String(kind.to_owned()),
        other => other,
    };
    Bytes::from(
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
            .to_string(),
    )
}

/// A 400 in the `OpenAI` shape for a request that cannot be translated.
pub fn refusal_body(error: &TranslateError) -> Bytes {
    Bytes::from(
        json!({"error": {
            "message": error.to_string(),
            "type": "invalid_request_error",
            "param": error.param(),
            "code": "unsupported_parameter",
        }})
        .to_string(),
    )
}

/// Turns a provider's answer into the `OpenAI` shape as it streams through:
/// stream events one by one, a plain answer once whole.
pub struct Translator {
    answer: Answer,
    status: StatusCode,
    state: State,
}

enum State {
    Whole(Vec<u8>),
    Stream {
        sse: SseBuffer,
        events: Box<dyn StreamEvents + Send>,
        done: bool,
    },
}

/// The per-provider stream translation: one native event's data in, the
/// `OpenAI` chunks (JSON values) it makes out.
trait StreamEvents {
    fn event(&mut self, data: &Value, out: &mut Vec<Value>);
    fn chunks(&self) -> &Chunks;
    /// Prompt, cached and completion tokens the provider reported so far.
    fn usage(&self) -> (u64, u64, u64);

    /// Chunks at the end of the stream: the usage chunk, when asked for.
    fn end(&mut self, out: &mut Vec<Value>) {
        if self.chunks().include_usage {
            let (prompt, cached, output) = self.usage();
            out.push(self.chunks().usage(&openai_usage(prompt, cached, output)));
        }
    }
}

/// The common parts of every chunk.
#[derive(Debug, Clone)]
struct Chunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Chunks {
    fn new(model: &str, include_usage: bool) -> Self {
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
            created: now_secs(),
            model: model.to_owned(),
            include_usage,
        }
    }

    fn chunk(&self, delta: &Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    }

    fn usage(&self, usage: &Value) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": [], "usage": usage,
        })
    }
}

/// `OpenAI` `usage` from prompt (all input, cached included), cached and
/// completion token counts.
fn openai_usage(prompt: u64, cached: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// A whole chat completion in the `OpenAI` shape.
fn completion(
    model: &str,
    id: &str,
    content: Option<&str>,
    tool_calls: Vec<Value>,
    finish_reason: &str,
    usage: &Value,
) -> Value {
    let mut message = json!({"role": "assistant", "content": content, "refusal": null});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    json!({
        "id": id, "object": "chat.completion", "created": now_secs(), "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
        "usage": usage,
    })
}

impl Translator {
    /// For an answer with `status` and `content_type`; `None` when the
    /// answer goes to the client as it is (an OpenAI-kind provider's).
    pub fn new(answer: &Answer, status: StatusCode, content_type: Option<&str>) -> Option<Self> {
        let is_sse = content_type.is_some_and(|ct| ct.starts_with("text/event-stream"));
        if answer.kind == ProviderKind::OpenAi {
            // Only the model name goes back as the client wrote it… which
            // the OpenAI SDKs do not check: pass the answer through.
            return None;
        }
        let state = if status.is_success() && is_sse {
            let chunks = Chunks::new(&answer.model, answer.include_usage);
            let events: Box<dyn StreamEvents + Send> = match answer.kind {
                ProviderKind::Anthropic => Box::new(anthropic::Stream::new(chunks)),
                _ => Box::new(gemini::Stream::new(chunks)),
            };
            State::Stream {
                sse: SseBuffer::default(),
                events,
                done: false,
            }
        } else {
            State::Whole(Vec::new())
        };
        Some(Self {
            answer: answer.clone(),
            status,
            state,
        })
    }

    /// The content type of the translated answer.
    pub fn content_type(&self) -> &'static str {
        match self.state {
            State::Whole(_) => "application/json",
            State::Stream { .. } => "text/event-stream",
        }
    }

    /// Takes a piece of the provider's answer; returns what goes to the
    /// client now. `Err` when a plain answer outgrows `MAX_ANSWER_BYTES`.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Bytes, TooLarge> {
        match &mut self.state {
            State::Whole(buf) => {
                if buf.len() + bytes.len() > MAX_ANSWER_BYTES {
                    return Err(TooLarge);
                }
                buf.extend_from_slice(bytes);
                Ok(Bytes::new())
            }
            State::Stream { sse, events, done } => {
                let mut out = Vec::new();
                for event in sse.feed(bytes, false) {
                    stream_event(events.as_mut(), &event.data, done, &mut out);
                }
                Ok(sse_bytes(&out, false))
            }
        }
    }

    /// The provider's answer ended: the rest of the translated answer.
    pub fn finish(&mut self) -> Bytes {
        match &mut self.state {
            State::Whole(buf) => {
                if !self.status.is_success() {
                    return error_answer(self.status, buf);
                }
                let native: Value = serde_json::from_slice(buf).unwrap_or(Value::Null);
                let value = match (self.answer.api, self.answer.kind) {
                    (Api::Embeddings, _) => gemini::embeddings_answer(&native, &self.answer),
                    (Api::Chat, ProviderKind::Anthropic) => {
                        anthropic::answer(&native, &self.answer.model)
                    }
                    (Api::Chat, _) => gemini::answer(&native, &self.answer.model),
                };
                Bytes::from(value.to_string())
            }
            State::Stream { sse, events, done } => {
                let mut out = Vec::new();
                for event in sse.feed(&[], true) {
                    stream_event(events.as_mut(), &event.data, done, &mut out);
                }
                if !*done {
                    events.end(&mut out);
                    *done = true;
                }
                sse_bytes(&out, true)
            }
        }
    }
}

/// A plain answer grew past `MAX_ANSWER_BYTES`.
#[derive(Debug, thiserror::Error)]
#[error("leash: the provider's answer exceeds {MAX_ANSWER_BYTES} bytes and cannot be translated")]
pub struct TooLarge;

fn stream_event(events: &mut dyn StreamEvents, data: &str, done: &mut bool, out: &mut Vec<Value>) {
    if *done || data.is_empty() {
        return;
    }
    let Ok(value) = serde_json::from_str::<Value>(data) else {
        return;
    };
    if let Some(error) = value.get("error") {
        // An error event (the provider's, or a policy stop): passed on in
        // the OpenAI stream's error shape, and the stream ends.
        out.push(json!({"error": {
            "message": error.get("message").and_then(Value::as_str).unwrap_or("stream error"),
            "type": error.get("type").or_else(|| error.get("status")).and_then(Value::as_str).unwrap_or("api_error"),
            "param": null, "code": null,
        }}));
        *done = true;
        return;
    }
    events.event(&value, out);
}

fn sse_bytes(values: &[Value], done: bool) -> Bytes {
    let mut out = String::new();
    for v in values {
        out.push_str("data: ");
        out.push_str(&v.to_string());
        out.push_str("\n\n");
    }
    if done {
        out.push_str("data: [DONE]\n\n");
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests;
