//! Reading the `OpenAI` request's fields: message text, images, tool
//! arguments and declarations, stop sequences, token limits, and which
//! fields a provider's translation takes at all.

use serde_json::{Map, Value, json};

use super::TranslateError;

/// The text of an `OpenAI` message `content` (a string, or text parts).
pub(super) fn text_of(content: &Value, field: &str) -> Result<String, TranslateError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(t) = part.get("text").and_then(Value::as_str) {
                            text.push_str(t);
                        }
                    }
                    other => {
                        return Err(TranslateError::invalid(
                            format!("{field}[{i}].type"),
                            format!("{other:?} is not allowed here (text only)"),
                        ));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(TranslateError::invalid(
            field,
            "must be a string or an array of parts",
        )),
    }
}

/// An image part's URL: `(media type, base64 data)` for a `data:` URL, or
/// the URL itself.
pub(super) enum Image {
    Inline { media_type: String, data: String },
    Url(String),
}

pub(super) fn image_of(part: &Value, field: &str) -> Result<Image, TranslateError> {
    let url = part
        .get("image_url")
        .and_then(|u| u.get("url").or(Some(u)))
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::invalid(format!("{field}.image_url"), "needs a `url`"))?;
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| {
            TranslateError::invalid(format!("{field}.image_url.url"), "a data: URL without data")
        })?;
        let media_type = meta.strip_suffix(";base64").ok_or_else(|| {
            TranslateError::invalid(
                format!("{field}.image_url.url"),
                "only base64 data: URLs are supported",
            )
        })?;
        return Ok(Image::Inline {
            media_type: media_type.to_owned(),
            data: data.to_owned(),
        });
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(Image::Url(url.to_owned()));
    }
    Err(TranslateError::invalid(
        format!("{field}.image_url.url"),
        "must be an http(s) or base64 data: URL",
    ))
}

/// The arguments of an assistant tool call as a JSON object.
pub(super) fn tool_arguments(call: &Value, field: &str) -> Result<Value, TranslateError> {
    let args = call
        .get("function")
        .and_then(|f| f.get("arguments"))
        .and_then(Value::as_str)
        .unwrap_or("{}");
    let args = if args.trim().is_empty() { "{}" } else { args };
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(TranslateError::invalid(
            format!("{field}.function.arguments"),
            "must be a JSON object",
        )),
    }
}

/// `stop` as a list of sequences.
pub(super) fn stop_sequences(body: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    match body.get("stop") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(json!([s]))),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            Ok(Some(Value::Array(a.clone())))
        }
        Some(_) => Err(TranslateError::invalid(
            "stop",
            "must be a string or an array of strings",
        )),
    }
}

/// Chat request fields every provider's translation takes (each adds its
/// own).
pub(super) const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
];

/// Refuses `n` other than 1 and every field outside the `known` lists.
pub(super) fn check_fields(
    body: &Map<String, Value>,
    known: &[&[&str]],
    provider: &'static str,
) -> Result<(), TranslateError> {
    if let Some(n) = body.get("n").filter(|n| !n.is_null())
        && n.as_u64() != Some(1)
    {
        return Err(TranslateError::Unsupported {
            field: "n".into(),
            provider,
        });
    }
    for (key, value) in body {
        if value.is_null() || key == "n" {
            continue;
        }
        if !known.iter().any(|k| k.contains(&key.as_str())) {
            return Err(TranslateError::Unsupported {
                field: key.clone(),
                provider,
            });
        }
    }
    Ok(())
}

/// The request's `tools` as the provider declares functions: name,
/// description, and the JSON schema of the parameters under `schema_key`.
/// Only `function` tools translate.
pub(super) fn tools_of(
    body: &Map<String, Value>,
    schema_key: &str,
) -> Result<Option<Vec<Value>>, TranslateError> {
    let Some(tools) = body.get("tools").and_then(Value::as_array) else {
        return Ok(None);
    };
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                return Err(TranslateError::invalid(
                    format!("tools[{i}].type"),
                    "only `function` tools can be translated",
                ));
            }
            let function = tool.get("function").ok_or_else(|| {
                TranslateError::invalid(format!("tools[{i}].function"), "is required")
            })?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TranslateError::invalid(format!("tools[{i}].function.name"), "is required")
                })?;
            let parameters = function
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            let mut declared = json!({"name": name, schema_key: parameters});
            if let Some(d) = function.get("description") {
                declared["description"] = d.clone();
            }
            Ok(declared)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// `max_completion_tokens` or `max_tokens`.
pub(super) fn max_tokens(body: &Map<String, Value>) -> Result<Option<u64>, TranslateError> {
    for field in ["max_completion_tokens", "max_tokens"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => {
                return v
                    .as_u64()
                    .filter(|n| *n > 0)
                    .map(Some)
                    .ok_or_else(|| TranslateError::invalid(field, "must be a positive integer"));
            }
        }
    }
    Ok(None)
}
