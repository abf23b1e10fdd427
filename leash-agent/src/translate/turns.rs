//! The `OpenAI` conversation read once for every provider: its turns
//! (system text, user content, assistant text and tool calls, tool
//! results), its tool choice, and the pieces each provider shapes its own
//! way (content parts, merged turns).

use serde_json::{Value, json};

use super::{Image, TranslateError, image_of, text_of, tool_arguments};

/// One tool call of an assistant turn.
pub(super) struct Call<'a> {
    pub(super) id: Option<&'a str>,
    pub(super) name: &'a str,
    pub(super) args: Value,
}

/// One message, as every provider needs it. `field` names it in errors.
pub(super) enum Turn<'a> {
    System(String),
    User(&'a Value),
    Assistant { text: String, calls: Vec<Call<'a>> },
    Tool { id: &'a str, text: String },
}

fn required<'a>(v: &'a Value, key: &str, field: &str) -> Result<&'a str, TranslateError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::invalid(format!("{field}.{key}"), "is required"))
}

/// The turns of `messages`, each with its field name (`messages[i]`).
pub(super) fn turns(messages: &[Value]) -> Result<Vec<(String, Turn<'_>)>, TranslateError> {
    let mut out = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let field = format!("messages[{i}]");
        let content = message.get("content").unwrap_or(&Value::Null);
        let turn = match required(message, "role", &field)? {
            "system" | "developer" => Turn::System(text_of(content, &format!("{field}.content"))?),
            "user" => Turn::User(content),
            "assistant" => {
                let mut calls = Vec::new();
                for (k, call) in message
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let field = format!("{field}.tool_calls[{k}]");
                    let function = call.get("function").unwrap_or(&Value::Null);
                    calls.push(Call {
                        id: call.get("id").and_then(Value::as_str),
                        name: required(function, "name", &format!("{field}.function"))?,
                        args: tool_arguments(call, &field)?,
                    });
                }
                Turn::Assistant {
                    text: text_of(content, &format!("{field}.content"))?,
                    calls,
                }
            }
            "tool" => Turn::Tool {
                id: required(message, "tool_call_id", &field)?,
                text: text_of(content, &format!("{field}.content"))?,
            },
            other => {
                return Err(TranslateError::invalid(
                    format!("{field}.role"),
                    format!("`{other}` is not a role"),
                ));
            }
        };
        out.push((field, turn));
    }
    Ok(out)
}

/// The system turns joined (providers take one system text).
pub(super) fn system_text(turns: &[(String, Turn<'_>)]) -> String {
    turns
        .iter()
        .filter_map(|(_, t)| match t {
            Turn::System(s) => Some(s.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Adds a turn of `role` with `items` under `key`, merged into the last
/// one when it has the same role (providers want turns to alternate).
pub(super) fn push_turn(out: &mut Vec<Value>, role: &str, key: &str, items: Vec<Value>) {
    match out.last_mut() {
        Some(last) if last["role"] == role => {
            if let Some(list) = last[key].as_array_mut() {
                list.extend(items);
            }
        }
        _ => out.push(json!({"role": role, key: items})),
    }
}

/// A user turn's content as provider parts: text and images, shaped by
/// `text` and `image`; any other part is refused naming `provider`.
pub(super) fn user_parts(
    content: &Value,
    field: &str,
    provider: &str,
    text: impl Fn(&Value) -> Value,
    image: impl Fn(Image) -> Value,
) -> Result<Vec<Value>, TranslateError> {
    match content {
        Value::String(_) => Ok(vec![text(content)]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| {
                let field = format!("{field}.content[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => Ok(text(part.get("text").unwrap_or(&Value::Null))),
                    Some("image_url") => Ok(image(image_of(part, &field)?)),
                    other => Err(TranslateError::invalid(
                        format!("{field}.type"),
                        format!("{other:?} cannot be translated to {provider}"),
                    )),
                }
            })
            .collect(),
        _ => Err(TranslateError::invalid(
            format!("{field}.content"),
            "must be a string or an array of parts",
        )),
    }
}

/// `tool_choice`, read.
pub(super) enum Choice<'a> {
    Auto,
    Required,
    None,
    Function(&'a str),
}

pub(super) fn tool_choice(
    body: &serde_json::Map<String, Value>,
) -> Result<Option<Choice<'_>>, TranslateError> {
    match body.get("tool_choice") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(Some(Choice::Auto)),
            "required" => Ok(Some(Choice::Required)),
            "none" => Ok(Some(Choice::None)),
            other => Err(TranslateError::invalid(
                "tool_choice",
                format!("`{other}` is not auto, required or none"),
            )),
        },
        Some(v) => v
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|name| Some(Choice::Function(name)))
            .ok_or_else(|| TranslateError::invalid("tool_choice", "names no function")),
    }
}
