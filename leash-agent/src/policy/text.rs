//! Where text is in a request: every string value of the JSON body that a
//! provider reads as content, in every API shape, found by walking the whole
//! document (so new fields such as Responses `input` are never missed) and
//! skipping only structural fields. Redaction rewrites those strings in place.

use serde_json::Value;

use crate::provider::ProviderKind;

/// Keys whose string values are structure, not content.
const STRUCTURAL: &[&str] = &[
    "modelVersion",
    "responseId",
    "system_fingerprint",
    "created_at",
    "model",
    "role",
    "type",
    "id",
    "object",
    "tool_call_id",
    "tool_use_id",
    "mime_type",
    "mimeType",
    "encoding_format",
    "service_tier",
    "finish_reason",
    "stop_reason",
    "reasoning_effort",
    "media_type",
];

/// Strings longer than this are data (images, audio), not text.
const MAX_TEXT: usize = 1024 * 1024;

fn is_data(s: &str) -> bool {
    s.len() > MAX_TEXT || s.starts_with("data:")
}

/// Calls `f` on every content string, with a mutable reference (for
/// redaction). Object keys in `STRUCTURAL` and inline binary data are skipped.
pub fn for_each_text(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        Value::String(s) if !is_data(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|i| for_each_text(i, f)),
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if STRUCTURAL.contains(&k.as_str())
                    || k == "inline_data"
                    || k == "inlineData"
                    || k == "image_url"
                {
                    continue;
                }
                for_each_text(child, f);
            }
        }
        _ => {}
    }
}

/// One piece of the text a stream event carries: a string field that can
/// be rewritten in place, or structured arguments (seen as their JSON text,
/// which cannot be).
pub enum DeltaPart<'a> {
    Text(&'a mut String),
    Json(&'a Value),
}

fn visit(v: &mut Value, f: &mut dyn FnMut(DeltaPart<'_>)) {
    match v {
        Value::String(s) => f(DeltaPart::Text(s)),
        Value::Object(_) => f(DeltaPart::Json(v)),
        _ => {}
    }
}

fn field<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    v.as_object_mut()?.get_mut(key)
}

/// Visits the new text a stream event carries (what the model is saying),
/// per provider, in order: `OpenAI` chat deltas and tool-call arguments,
/// Responses `*.delta` events, Anthropic `content_block_delta`, Gemini
/// candidate parts. Identifiers and metadata are not visited, so text split
/// across events joins up.
pub fn for_each_delta(kind: ProviderKind, v: &mut Value, f: &mut dyn FnMut(DeltaPart<'_>)) {
    match kind {
        ProviderKind::OpenAi => {
            if v["type"].as_str().and_then(|t| t.rsplit('.').next()) == Some("delta")
                && let Some(d) = field(v, "delta")
            {
                visit(d, f);
            }
            for choice in field(v, "choices")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let Some(delta) = field(choice, "delta") else {
                    continue;
                };
                for key in ["content", "refusal"] {
                    if let Some(t) = field(delta, key) {
                        visit(t, f);
                    }
                }
                for call in field(delta, "tool_calls")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(args) =
                        field(call, "function").and_then(|func| field(func, "arguments"))
                    {
                        visit(args, f);
                    }
                }
            }
        }
        ProviderKind::Anthropic => {
            if let Some(delta) = field(v, "delta") {
                for key in ["text", "partial_json", "thinking"] {
                    if let Some(t) = field(delta, key) {
                        visit(t, f);
                    }
                }
            }
        }
        ProviderKind::Google => {
            for cand in field(v, "candidates")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                for part in field(cand, "content")
                    .and_then(|c| field(c, "parts"))
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(t) = field(part, "text") {
                        visit(t, f);
                    }
                    if let Some(args) = field(part, "functionCall").and_then(|c| field(c, "args")) {
                        visit(args, f);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn texts(mut v: Value) -> Vec<String> {
        let mut out = Vec::new();
        for_each_text(&mut v, &mut |s| out.push(s.clone()));
        out
    }

    #[test]
    fn every_shape() {
        let openai = json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "part"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}]},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"q\":\"args\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "tool result"}
        ]});
        // Keys are visited in sorted order.
        assert_eq!(
            texts(openai),
            ["sys", "part", "{\"q\":\"args\"}", "f", "tool result"]
        );
        let responses = json!({"model": "gpt-4.1", "instructions": "be brief", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}]});
        assert_eq!(texts(responses), ["hello", "be brief"]);
        let anthropic = json!({"model": "claude", "system": [{"type": "text", "text": "sys"}], "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "res"}]}]});
        assert_eq!(texts(anthropic), ["res", "sys"]);
        let gemini = json!({"contents": [{"parts": [{"text": "hi"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}], "systemInstruction": {"parts": [{"text": "sys"}]}});
        assert_eq!(texts(gemini), ["hi", "sys"]);
    }
}
