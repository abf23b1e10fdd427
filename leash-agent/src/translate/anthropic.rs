//! `OpenAI` chat completions ⇄ Anthropic Messages.

use serde_json::{Map, Value, json};

use super::{
    CHAT_FIELDS, Chunks, DEFAULT_ANTHROPIC_MAX_TOKENS, Image, StreamEvents, TranslateError,
    check_fields, completion, max_tokens, openai_usage, stop_sequences, tools_of,
    turns::{self, Choice, Turn},
};

const PROVIDER: &str = "anthropic";

/// Request fields only the Anthropic translation takes (beyond
/// `CHAT_FIELDS`).
const EXTRA: &[&str] = &["user"];

pub(super) fn request(body: &Map<String, Value>, model: &str) -> Result<Value, TranslateError> {
    check_fields(body, &[CHAT_FIELDS, EXTRA], PROVIDER)?;
    if let Some(format) = body.get("response_format").filter(|f| !f.is_null())
        && format.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(TranslateError::Unsupported {
            field: "response_format".into(),
            provider: PROVIDER,
        });
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or(TranslateError::Missing("messages"))?;
    let (system, messages) = messages_of(messages)?;
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert(
        "max_tokens".into(),
        json!(max_tokens(body)?.unwrap_or(DEFAULT_ANTHROPIC_MAX_TOKENS)),
    );
    if !system.is_empty() {
        out.insert("system".into(), json!(system));
    }
    out.insert("messages".into(), Value::Array(messages));
    for (from, to) in [("temperature", "temperature"), ("top_p", "top_p")] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    if let Some(stop) = stop_sequences(body)? {
        out.insert("stop_sequences".into(), stop);
    }
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), json!(true));
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(tools) = tools_of(body, "input_schema")? {
        out.insert("tools".into(), Value::Array(tools));
    }
    let parallel = body.get("parallel_tool_calls").and_then(Value::as_bool);
    let choice = match turns::tool_choice(body)? {
        None => parallel.map(|_| json!({"type": "auto"})),
        Some(Choice::Auto) => Some(json!({"type": "auto"})),
        Some(Choice::Required) => Some(json!({"type": "any"})),
        Some(Choice::None) => Some(json!({"type": "none"})),
        Some(Choice::Function(name)) => Some(json!({"type": "tool", "name": name})),
    };
    if let Some(mut choice) = choice {
        if parallel == Some(false) && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = json!(true);
        }
        out.insert("tool_choice".into(), choice);
    }
    Ok(Value::Object(out))
}

/// The system prompt and the Anthropic messages (consecutive turns of one
/// role merged: tool results follow their calls in one user turn).
fn messages_of(messages: &[Value]) -> Result<(String, Vec<Value>), TranslateError> {
    let turns = turns::turns(messages)?;
    let mut out: Vec<Value> = Vec::new();
    for (field, turn) in &turns {
        let (role, blocks) = match turn {
            Turn::System(_) => continue,
            Turn::User(content) => (
                "user",
                turns::user_parts(
                    content,
                    field,
                    PROVIDER,
                    |text| json!({"type": "text", "text": text}),
                    |image| match image {
                        Image::Inline { media_type, data } => {
                            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
                        }
                        Image::Url(url) => {
                            json!({"type": "image", "source": {"type": "url", "url": url}})
                        }
                    },
                )?,
            ),
            Turn::Assistant { text, calls } => {
                let mut blocks = Vec::new();
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for (k, call) in calls.iter().enumerate() {
                    let id = call.id.ok_or_else(|| {
                        TranslateError::invalid(
                            format!("{field}.tool_calls[{k}].id"),
                            "is required",
                        )
                    })?;
                    blocks.push(json!({"type": "tool_use", "id": id, "name": call.name, "input": call.args}));
                }
                ("assistant", blocks)
            }
            Turn::Tool { id, text } => (
                "user",
                vec![json!({"type": "tool_result", "tool_use_id": id, "content": text})],
            ),
        };
        turns::push_turn(&mut out, role, "content", blocks);
    }
    Ok((turns::system_text(&turns), out))
}

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// Input tokens as `OpenAI` counts them (cache reads and writes included),
/// cached, output.
fn usage_of(usage: &Value) -> (u64, u64, u64) {
    let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    (
        n("input_tokens") + cached + n("cache_creation_input_tokens"),
        cached,
        n("output_tokens"),
    )
}

pub(super) fn answer(native: &Value, model: &str) -> Value {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in native
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => tool_calls.push(json!({
                "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string)},
            })),
            _ => {}
        }
    }
    let (prompt, cached, output) = usage_of(native.get("usage").unwrap_or(&Value::Null));
    let id = native.get("id").and_then(Value::as_str).unwrap_or("msg");
    completion(
        model,
        &format!("chatcmpl-{id}"),
        (!text.is_empty() || tool_calls.is_empty()).then_some(text.as_str()),
        tool_calls,
        finish_reason(native.get("stop_reason").and_then(Value::as_str)),
        &openai_usage(prompt, cached, output),
    )
}

/// Anthropic stream events → `OpenAI` chunks.
pub(super) struct Stream {
    chunks: Chunks,
    /// Content block index → tool call index, for `tool_use` blocks.
    tools: Vec<(u64, usize)>,
    usage: Value,
}

impl Stream {
    pub(super) fn new(chunks: Chunks) -> Self {
        Self {
            chunks,
            tools: Vec::new(),
            usage: json!({}),
        }
    }

    fn tool_index(&self, block: u64) -> Option<usize> {
        self.tools
            .iter()
            .find(|(b, _)| *b == block)
            .map(|(_, t)| *t)
    }
}

impl StreamEvents for Stream {
    fn event(&mut self, data: &Value, out: &mut Vec<Value>) {
        let block = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        match data.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(usage) = data.get("message").and_then(|m| m.get("usage")) {
                    self.usage = usage.clone();
                }
                out.push(
                    self.chunks
                        .chunk(&json!({"role": "assistant", "content": ""}), None),
                );
            }
            Some("content_block_start") => {
                let start = data.get("content_block").unwrap_or(&Value::Null);
                if start.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let index = self.tools.len();
                    self.tools.push((block, index));
                    out.push(self.chunks.chunk(
                        &json!({"tool_calls": [{"index": index, "id": start.get("id"), "type": "function",
                            "function": {"name": start.get("name"), "arguments": ""}}]}),
                        None,
                    ));
                }
            }
            Some("content_block_delta") => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => out.push(
                        self.chunks
                            .chunk(&json!({"content": delta.get("text")}), None),
                    ),
                    Some("input_json_delta") => {
                        if let Some(index) = self.tool_index(block) {
                            out.push(self.chunks.chunk(
                                &json!({"tool_calls": [{"index": index, "function": {"arguments": delta.get("partial_json")}}]}),
                                None,
                            ));
                        }
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let Some(usage) = data.get("usage").and_then(Value::as_object) {
                    for (k, v) in usage {
                        self.usage[k] = v.clone();
                    }
                }
                let reason = data
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str);
                out.push(self.chunks.chunk(&json!({}), Some(finish_reason(reason))));
            }
            _ => {}
        }
    }

    fn chunks(&self) -> &Chunks {
        &self.chunks
    }

    fn usage(&self) -> (u64, u64, u64) {
        usage_of(&self.usage)
    }
}
