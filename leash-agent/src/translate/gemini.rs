//! `OpenAI` chat completions and embeddings ⇄ Gemini `generateContent` /
//! `streamGenerateContent` and `batchEmbedContents`.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::{
    Answer, CHAT_FIELDS, Chunks, Image, StreamEvents, TranslateError, check_fields, completion,
    max_tokens, openai_usage, stop_sequences, tools_of,
    turns::{self, Choice, Turn},
};

const PROVIDER: &str = "google";

/// Request fields only the Gemini translation takes (beyond
/// `CHAT_FIELDS`).
const EXTRA: &[&str] = &["seed", "presence_penalty", "frequency_penalty"];

pub(super) fn request(body: &Map<String, Value>) -> Result<Value, TranslateError> {
    check_fields(body, &[CHAT_FIELDS, EXTRA], PROVIDER)?;
    // Gemini may always call functions in parallel: only `true` holds.
    if body.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false) {
        return Err(TranslateError::Unsupported {
            field: "parallel_tool_calls".into(),
            provider: PROVIDER,
        });
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or(TranslateError::Missing("messages"))?;
    let (system, contents) = contents_of(messages)?;
    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system}]}),
        );
    }
    let config = generation_config(body)?;
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(declarations) = tools_of(body, "parametersJsonSchema")? {
        out.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
    }
    let calling = turns::tool_choice(body)?.map(|choice| match choice {
        Choice::Auto => json!({"mode": "AUTO"}),
        Choice::Required => json!({"mode": "ANY"}),
        Choice::None => json!({"mode": "NONE"}),
        Choice::Function(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
    });
    if let Some(calling) = calling {
        out.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": calling}),
        );
    }
    Ok(Value::Object(out))
}

/// `generationConfig` from the sampling, length, stop and format fields.
fn generation_config(body: &Map<String, Value>) -> Result<Map<String, Value>, TranslateError> {
    let mut config = Map::new();
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    }
    if let Some(n) = max_tokens(body)? {
        config.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(stop) = stop_sequences(body)? {
        config.insert("stopSequences".into(), stop);
    }
    if let Some(format) = body.get("response_format").filter(|f| !f.is_null()) {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                let schema = format
                    .get("json_schema")
                    .and_then(|s| s.get("schema"))
                    .ok_or_else(|| {
                        TranslateError::invalid("response_format.json_schema.schema", "is required")
                    })?;
                config.insert("responseMimeType".into(), json!("application/json"));
                config.insert("responseJsonSchema".into(), schema.clone());
            }
            other => {
                return Err(TranslateError::invalid(
                    "response_format.type",
                    format!("{other:?} is not text, json_object or json_schema"),
                ));
            }
        }
    }
    Ok(config)
}

/// The system instruction and the Gemini contents. A tool result names its
/// function, which Gemini needs: found from the call with its id.
fn contents_of(messages: &[Value]) -> Result<(String, Vec<Value>), TranslateError> {
    let turns = turns::turns(messages)?;
    let mut out: Vec<Value> = Vec::new();
    let mut call_names: Vec<(&str, &str)> = Vec::new();
    for (field, turn) in &turns {
        let (role, parts) = match turn {
            Turn::System(_) => continue,
            Turn::User(content) => (
                "user",
                turns::user_parts(
                    content,
                    field,
                    PROVIDER,
                    |text| json!({"text": text}),
                    |image| match image {
                        Image::Inline { media_type, data } => {
                            json!({"inlineData": {"mimeType": media_type, "data": data}})
                        }
                        Image::Url(url) => {
                            json!({"fileData": {"mimeType": mime_of(&url), "fileUri": url}})
                        }
                    },
                )?,
            ),
            Turn::Assistant { text, calls } => {
                let mut parts = Vec::new();
                if !text.is_empty() {
                    parts.push(json!({"text": text}));
                }
                for call in calls {
                    if let Some(id) = call.id {
                        call_names.push((id, call.name));
                    }
                    parts.push(json!({"functionCall": {"name": call.name, "args": call.args}}));
                }
                ("model", parts)
            }
            Turn::Tool { id, text } => {
                let name = call_names
                    .iter()
                    .find(|(c, _)| c == id)
                    .map(|(_, n)| *n)
                    .ok_or_else(|| {
                        TranslateError::invalid(
                            format!("{field}.tool_call_id"),
                            format!("`{id}` answers no earlier assistant tool call"),
                        )
                    })?;
                let response = match serde_json::from_str::<Value>(text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"content": text}),
                };
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
        };
        turns::push_turn(&mut out, role, "parts", parts);
    }
    Ok((turns::system_text(&turns), out))
}

/// An image URL's media type, from its extension.
fn mime_of(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = std::path::Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        _ => "image/jpeg",
    }
}

fn finish_reason(reason: Option<&str>, called: bool) -> &'static str {
    match reason {
        Some("MAX_TOKENS") => "length",
        Some(
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY",
        ) => "content_filter",
        _ if called => "tool_calls",
        _ => "stop",
    }
}

/// Prompt tokens, cached, completion (thoughts included, as `OpenAI` counts
/// reasoning tokens).
fn usage_of(meta: &Value) -> (u64, u64, u64) {
    let n = |k: &str| meta.get(k).and_then(Value::as_u64).unwrap_or(0);
    (
        n("promptTokenCount"),
        n("cachedContentTokenCount"),
        n("candidatesTokenCount") + n("thoughtsTokenCount"),
    )
}

/// The text and function calls of a response's first candidate.
fn parts_of(native: &Value) -> (String, Vec<(String, String)>, Option<&str>) {
    let candidate = native
        .get("candidates")
        .and_then(|c| c.get(0))
        .unwrap_or(&Value::Null);
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if part.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(call) = part.get("functionCall") {
            calls.push((
                call.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                call.get("args")
                    .map_or_else(|| "{}".to_owned(), Value::to_string),
            ));
        }
    }
    let reason = candidate
        .get("finishReason")
        .and_then(Value::as_str)
        .or_else(|| {
            native
                .get("promptFeedback")
                .and_then(|f| f.get("blockReason"))
                .map(|_| "SAFETY")
        });
    (text, calls, reason)
}

fn call_json(id: &str, name: &str, arguments: &str) -> Value {
    json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
}

pub(super) fn answer(native: &Value, model: &str) -> Value {
    let (text, calls, reason) = parts_of(native);
    let tool_calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (name, args))| call_json(&format!("call_{i}"), name, args))
        .collect();
    let (prompt, cached, output) = usage_of(native.get("usageMetadata").unwrap_or(&Value::Null));
    let id = native
        .get("responseId")
        .and_then(Value::as_str)
        .unwrap_or("gemini");
    completion(
        model,
        &format!("chatcmpl-{id}"),
        (!text.is_empty() || tool_calls.is_empty()).then_some(text.as_str()),
        tool_calls,
        finish_reason(reason, !calls.is_empty()),
        &openai_usage(prompt, cached, output),
    )
}

/// Gemini stream chunks (each a whole `GenerateContentResponse`) → `OpenAI`
/// chunks.
pub(super) struct Stream {
    chunks: Chunks,
    started: bool,
    calls: usize,
    usage: Value,
}

impl Stream {
    pub(super) fn new(chunks: Chunks) -> Self {
        Self {
            chunks,
            started: false,
            calls: 0,
            usage: Value::Null,
        }
    }
}

impl StreamEvents for Stream {
    fn event(&mut self, data: &Value, out: &mut Vec<Value>) {
        if !self.started {
            self.started = true;
            out.push(
                self.chunks
                    .chunk(&json!({"role": "assistant", "content": ""}), None),
            );
        }
        if let Some(meta) = data.get("usageMetadata") {
            self.usage = meta.clone();
        }
        let (text, calls, reason) = parts_of(data);
        if !text.is_empty() {
            out.push(self.chunks.chunk(&json!({"content": text}), None));
        }
        for (name, args) in &calls {
            let index = self.calls;
            self.calls += 1;
            let mut call = call_json(&format!("call_{index}"), name, args);
            call["index"] = json!(index);
            out.push(self.chunks.chunk(&json!({"tool_calls": [call]}), None));
        }
        if let Some(reason) = reason {
            out.push(self.chunks.chunk(
                &json!({}),
                Some(finish_reason(Some(reason), self.calls > 0)),
            ));
        }
    }

    fn chunks(&self) -> &Chunks {
        &self.chunks
    }

    fn usage(&self) -> (u64, u64, u64) {
        usage_of(&self.usage)
    }
}

/// Embedding request fields that translate.
const KNOWN_EMBEDDINGS: &[&str] = &["model", "input", "encoding_format", "dimensions"];

pub(super) fn embeddings_request(
    body: &Map<String, Value>,
    model: &str,
) -> Result<Value, TranslateError> {
    check_fields(body, &[KNOWN_EMBEDDINGS], PROVIDER)?;
    let inputs: Vec<&str> = match body.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => {
            a.iter().filter_map(Value::as_str).collect()
        }
        Some(_) => {
            return Err(TranslateError::invalid(
                "input",
                "must be a string or an array of strings (token arrays cannot be translated)",
            ));
        }
        None => return Err(TranslateError::Missing("input")),
    };
    match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float" | "base64") => {}
        Some(other) => {
            return Err(TranslateError::invalid(
                "encoding_format",
                format!("`{other}` is not float or base64"),
            ));
        }
    }
    let dimensions = body.get("dimensions").and_then(Value::as_u64);
    let requests: Vec<Value> = inputs
        .iter()
        .map(|text| {
            let mut r =
                json!({"model": format!("models/{model}"), "content": {"parts": [{"text": text}]}});
            if let Some(d) = dimensions {
                r["outputDimensionality"] = json!(d);
            }
            r
        })
        .collect();
    Ok(json!({"requests": requests}))
}

pub(super) fn embeddings_answer(native: &Value, answer: &Answer) -> Value {
    let data: Vec<Value> = native
        .get("embeddings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, e)| {
            let values = e.get("values").cloned().unwrap_or(json!([]));
            let embedding = if answer.base64_embeddings {
                // The OpenAI SDKs ask for base64 by default: little-endian
                // f32s, as OpenAI sends them.
                let bytes: Vec<u8> = values
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
                    .flat_map(|f| {
                        #[allow(
                            clippy::cast_possible_truncation,
                            reason = "embeddings are f32 on the wire"
                        )]
                        (f as f32).to_le_bytes()
                    })
                    .collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                values
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list", "data": data, "model": answer.model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    })
}
