//! `transform` rules: change a request before it leaves, in each provider's
//! own fields. Rewrite the model, cap the output tokens, prepend or append a
//! system instruction, drop fields, set or remove upstream headers. Every
//! change actually made is listed for the audit record (header values never
//! are: they may be credentials).

use http::{HeaderName, HeaderValue, header};
use serde_json::{Map, Value, json};

use crate::{
    provider::ProviderKind,
    record::{Change, ChangeOp},
};

/// Headers a rule may not set or remove: the connection's framing, and
/// Leash's own headers (which never cross to the provider).
const RESERVED: [HeaderName; 6] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::TE,
    header::UPGRADE,
];

/// What one rule (or several, merged in rule order) changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transform {
    pub set_model: Option<String>,
    pub max_tokens: Option<u64>,
    pub system_prepend: Vec<String>,
    pub system_append: Vec<String>,
    /// Dotted paths into the request body (`tools`, `generationConfig.x`).
    pub drop_fields: Vec<String>,
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    pub remove_headers: Vec<HeaderName>,
}

/// The request a transform applies to.
pub struct Target<'a> {
    pub kind: ProviderKind,
    pub endpoint: &'a str,
    pub body: &'a mut Value,
    pub headers: &'a mut http::HeaderMap,
    /// The upstream path (Gemini names the model in it).
    pub path: &'a mut String,
}

/// What applying a transform did.
#[derive(Debug, Default)]
pub struct Applied {
    pub changes: Vec<Change>,
    pub body_changed: bool,
    pub model: Option<String>,
}

/// Checks a header a rule names; the reason when it may not be used.
pub fn check_header_name(name: &str) -> Result<HeaderName, String> {
    let h = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a valid header name"))?;
    if RESERVED.contains(&h) || h.as_str().starts_with("x-leash-") {
        return Err(format!("`{h}` cannot be changed by a policy rule"));
    }
    Ok(h)
}

impl Transform {
    pub fn is_empty(&self) -> bool {
        self.set_model.is_none()
            && self.max_tokens.is_none()
            && self.system_prepend.is_empty()
            && self.system_append.is_empty()
            && self.drop_fields.is_empty()
            && self.set_headers.is_empty()
            && self.remove_headers.is_empty()
    }

    /// Adds a later rule's transform: its model wins, the smaller cap
    /// wins, instructions, fields and headers accumulate.
    pub fn merge(&mut self, other: &Self) {
        if other.set_model.is_some() {
            self.set_model.clone_from(&other.set_model);
        }
        self.max_tokens = match (self.max_tokens, other.max_tokens) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.system_prepend
            .extend(other.system_prepend.iter().cloned());
        self.system_append
            .extend(other.system_append.iter().cloned());
        self.drop_fields.extend(other.drop_fields.iter().cloned());
        self.set_headers.extend(other.set_headers.iter().cloned());
        self.remove_headers
            .extend(other.remove_headers.iter().cloned());
    }

    pub fn apply(&self, t: &mut Target<'_>) -> Applied {
        let mut out = Applied::default();
        if let Some(model) = &self.set_model {
            set_model(t, model, &mut out);
        }
        if let Some(cap) = self.max_tokens {
            cap_tokens(t, cap, &mut out);
        }
        for text in &self.system_prepend {
            add_instruction(t, text, true, &mut out);
        }
        for text in &self.system_append {
            add_instruction(t, text, false, &mut out);
        }
        for path in &self.drop_fields {
            if drop_field(t.body, path) {
                out.changes
                    .push(Change::new(ChangeOp::DropField, path.clone()));
                out.body_changed = true;
            }
        }
        for name in &self.remove_headers {
            if t.headers.remove(name).is_some() {
                out.changes
                    .push(Change::new(ChangeOp::RemoveHeader, name.as_str()));
            }
        }
        for (name, value) in &self.set_headers {
            t.headers.insert(name.clone(), value.clone());
            out.changes
                .push(Change::new(ChangeOp::SetHeader, name.as_str()));
        }
        out
    }
}

fn set_model(t: &mut Target<'_>, model: &str, out: &mut Applied) {
    if t.kind == ProviderKind::Google {
        // `.../models/<model>:<method>`: the model is in the path.
        let Some((dir, last)) = t.path.rsplit_once('/') else {
            return;
        };
        let Some((old, method)) = last.split_once(':') else {
            return;
        };
        if old == model || !dir.ends_with("/models") {
            return;
        }
        let mut change = Change::new(ChangeOp::SetModel, "path");
        change.from = Some(json!(old));
        change.to = Some(json!(model));
        *t.path = format!("{dir}/{model}:{method}");
        out.changes.push(change);
        out.model = Some(model.to_owned());
        return;
    }
    let Some(obj) = t.body.as_object_mut() else {
        return;
    };
    let Some(old) = obj.get("model") else {
        return;
    };
    if old.as_str() == Some(model) {
        return;
    }
    let mut change = Change::new(ChangeOp::SetModel, "model");
    change.from = Some(old.clone());
    change.to = Some(json!(model));
    obj.insert("model".into(), json!(model));
    out.changes.push(change);
    out.body_changed = true;
    out.model = Some(model.to_owned());
}

/// The object and keys that hold the output-token limit for this request,
/// and the key to add when none is set; `None` when the endpoint has none.
fn token_fields<'v>(
    kind: ProviderKind,
    endpoint: &str,
    body: &'v mut Value,
) -> Option<(
    &'v mut Map<String, Value>,
    &'static [&'static str],
    &'static str,
)> {
    let obj = body.as_object_mut()?;
    match kind {
        ProviderKind::OpenAi if obj.contains_key("messages") => Some((
            obj,
            &["max_completion_tokens", "max_tokens"],
            "max_completion_tokens",
        )),
        ProviderKind::OpenAi if endpoint.ends_with("/responses") => {
            Some((obj, &["max_output_tokens"], "max_output_tokens"))
        }
        ProviderKind::Anthropic if obj.contains_key("messages") => {
            Some((obj, &["max_tokens"], "max_tokens"))
        }
        ProviderKind::Google if endpoint.contains("enerateContent") => {
            let key = if obj.contains_key("generation_config") {
                "generation_config"
            } else {
                "generationConfig"
            };
            let config = obj
                .entry(key)
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()?;
            Some((
                config,
                &["maxOutputTokens", "max_output_tokens"],
                "maxOutputTokens",
            ))
        }
        _ => None,
    }
}

fn cap_tokens(t: &mut Target<'_>, cap: u64, out: &mut Applied) {
    let Some((obj, keys, default_key)) = token_fields(t.kind, t.endpoint, t.body) else {
        return;
    };
    let mut present = false;
    for &key in keys {
        let Some(old) = obj.get(key) else {
            continue;
        };
        present = true;
        if old.as_u64().is_some_and(|n| n <= cap) {
            continue;
        }
        let mut change = Change::new(ChangeOp::CapMaxTokens, key);
        change.from = Some(old.clone());
        change.to = Some(json!(cap));
        obj.insert(key.into(), json!(cap));
        out.changes.push(change);
        out.body_changed = true;
    }
    if !present {
        obj.insert(default_key.into(), json!(cap));
        let mut change = Change::new(ChangeOp::CapMaxTokens, default_key);
        change.to = Some(json!(cap));
        out.changes.push(change);
        out.body_changed = true;
    }
}

/// Joins an instruction to existing text, before or after it.
fn joined(existing: &str, text: &str, prepend: bool) -> String {
    if prepend {
        format!("{text}\n\n{existing}")
    } else {
        format!("{existing}\n\n{text}")
    }
}

fn add_instruction(t: &mut Target<'_>, text: &str, prepend: bool, out: &mut Applied) {
    let op = if prepend {
        ChangeOp::SystemPrepend
    } else {
        ChangeOp::SystemAppend
    };
    let Some(obj) = t.body.as_object_mut() else {
        return;
    };
    let field = match t.kind {
        ProviderKind::OpenAi => {
            if let Some(messages) = obj.get_mut("messages").and_then(Value::as_array_mut) {
                // A system message of its own: before the caller's leading
                // system/developer messages, or right after them.
                let at = if prepend {
                    0
                } else {
                    messages
                        .iter()
                        .take_while(|m| matches!(m["role"].as_str(), Some("system" | "developer")))
                        .count()
                };
                messages.insert(at, json!({"role": "system", "content": text}));
                format!("messages[{at}]")
            } else if t.endpoint.ends_with("/responses") {
                let new = match obj.get("instructions").and_then(Value::as_str) {
                    Some(old) => joined(old, text, prepend),
                    None => text.to_owned(),
                };
                obj.insert("instructions".into(), json!(new));
                "instructions".into()
            } else {
                return;
            }
        }
        ProviderKind::Anthropic => {
            if !obj.contains_key("messages") {
                return;
            }
            match obj.get_mut("system") {
                Some(Value::String(old)) => *old = joined(old, text, prepend),
                Some(Value::Array(blocks)) => {
                    let block = json!({"type": "text", "text": text});
                    if prepend {
                        blocks.insert(0, block);
                    } else {
                        blocks.push(block);
                    }
                }
                _ => {
                    obj.insert("system".into(), json!(text));
                }
            }
            "system".into()
        }
        ProviderKind::Google => {
            if !t.endpoint.contains("enerateContent") {
                return;
            }
            let key = if obj.contains_key("system_instruction") {
                "system_instruction"
            } else {
                "systemInstruction"
            };
            let instruction = obj.entry(key).or_insert_with(|| json!({"parts": []}));
            if !instruction.is_object() {
                *instruction = json!({"parts": []});
            }
            let Some(si) = instruction.as_object_mut() else {
                return;
            };
            let parts = si.entry("parts").or_insert_with(|| json!([]));
            if !parts.is_array() {
                *parts = json!([]);
            }
            let Some(parts) = parts.as_array_mut() else {
                return;
            };
            let part = json!({"text": text});
            if prepend {
                parts.insert(0, part);
            } else {
                parts.push(part);
            }
            key.into()
        }
    };
    out.changes.push(Change::new(op, field));
    out.body_changed = true;
}

/// Removes the field at a dotted path; whether it was there.
fn drop_field(body: &mut Value, path: &str) -> bool {
    let mut cur = body;
    let mut parts = path.split('.').peekable();
    while let Some(key) = parts.next() {
        let Some(obj) = cur.as_object_mut() else {
            return false;
        };
        if parts.peek().is_none() {
            return obj.remove(key).is_some();
        }
        let Some(next) = obj.get_mut(key) else {
            return false;
        };
        cur = next;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(
        tr: &Transform,
        kind: ProviderKind,
        endpoint: &str,
        body: Value,
    ) -> (Value, String, Vec<Change>) {
        let mut body = body;
        let mut headers = http::HeaderMap::new();
        headers.insert("openai-organization", HeaderValue::from_static("org-1"));
        let mut path = endpoint.to_owned();
        let applied = tr.apply(&mut Target {
            kind,
            endpoint,
            body: &mut body,
            headers: &mut headers,
            path: &mut path,
        });
        (body, path, applied.changes)
    }

    fn everything() -> Transform {
        Transform {
            set_model: Some("small".into()),
            max_tokens: Some(100),
            system_prepend: vec!["FIRST".into()],
            system_append: vec!["LAST".into()],
            drop_fields: vec!["tools".into()],
            set_headers: vec![(
                HeaderName::from_static("x-org"),
                HeaderValue::from_static("fin"),
            )],
            remove_headers: vec![HeaderName::from_static("openai-organization")],
        }
    }

    #[test]
    fn openai_chat() {
        let (b, _, changes) = apply(
            &everything(),
            ProviderKind::OpenAi,
            "/v1/chat/completions",
            json!({"model": "big", "max_tokens": 4096, "tools": [],
                   "messages": [{"role": "system", "content": "app"}, {"role": "user", "content": "hi"}]}),
        );
        assert_eq!(b["model"], "small");
        assert_eq!(b["max_tokens"], 100);
        assert!(b.get("tools").is_none());
        let roles: Vec<_> = b["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["FIRST", "app", "LAST", "hi"]);
        let ops: Vec<_> = changes.iter().map(|c| c.op).collect();
        assert_eq!(
            ops,
            [
                ChangeOp::SetModel,
                ChangeOp::CapMaxTokens,
                ChangeOp::SystemPrepend,
                ChangeOp::SystemAppend,
                ChangeOp::DropField,
                ChangeOp::RemoveHeader,
                ChangeOp::SetHeader
            ]
        );
        assert_eq!(changes[1].from, Some(json!(4096)));
    }

    #[test]
    fn a_lower_limit_is_kept_and_an_absent_one_added() {
        let tr = Transform {
            max_tokens: Some(100),
            ..Transform::default()
        };
        let (b, _, c) = apply(
            &tr,
            ProviderKind::Anthropic,
            "/v1/messages",
            json!({"max_tokens": 50, "messages": []}),
        );
        assert_eq!(b["max_tokens"], 50);
        assert!(c.is_empty());
        let (b, _, _) = apply(
            &tr,
            ProviderKind::OpenAi,
            "/v1/responses",
            json!({"input": "x"}),
        );
        assert_eq!(b["max_output_tokens"], 100);
    }

    #[test]
    fn responses_anthropic_and_gemini_instructions() {
        let tr = Transform {
            system_prepend: vec!["ORG".into()],
            ..Transform::default()
        };
        let (b, _, _) = apply(
            &tr,
            ProviderKind::OpenAi,
            "/v1/responses",
            json!({"input": "x", "instructions": "app"}),
        );
        assert_eq!(b["instructions"], "ORG\n\napp");
        let (b, _, _) = apply(
            &tr,
            ProviderKind::Anthropic,
            "/v1/messages",
            json!({"messages": [], "system": [{"type": "text", "text": "app"}]}),
        );
        assert_eq!(b["system"][0]["text"], "ORG");
        assert_eq!(b["system"][1]["text"], "app");
        let (b, _, _) = apply(
            &tr,
            ProviderKind::Google,
            "/v1beta/models/gemini-2.5-pro:generateContent",
            json!({"contents": []}),
        );
        assert_eq!(b["systemInstruction"]["parts"][0]["text"], "ORG");
    }

    #[test]
    fn gemini_model_is_in_the_path_and_the_limit_in_generation_config() {
        let tr = Transform {
            set_model: Some("gemini-2.5-flash".into()),
            max_tokens: Some(64),
            ..Transform::default()
        };
        let (b, path, changes) = apply(
            &tr,
            ProviderKind::Google,
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
            json!({"contents": [], "generationConfig": {"maxOutputTokens": 8192}}),
        );
        assert_eq!(
            path,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
        );
        assert_eq!(b["generationConfig"]["maxOutputTokens"], 64);
        assert_eq!(changes[0].from, Some(json!("gemini-2.5-pro")));
    }

    #[test]
    fn embeddings_are_left_alone_and_reserved_headers_refused() {
        let (b, _, c) = apply(
            &everything(),
            ProviderKind::OpenAi,
            "/v1/embeddings",
            json!({"model": "small", "input": "x"}),
        );
        assert_eq!(b, json!({"model": "small", "input": "x"}));
        assert_eq!(
            c.iter().map(|c| c.op).collect::<Vec<_>>(),
            [ChangeOp::RemoveHeader, ChangeOp::SetHeader]
        );
        assert!(check_header_name("host").is_err());
        assert!(check_header_name("x-leash-team").is_err());
        assert!(check_header_name("bad header").is_err());
        assert!(check_header_name("x-org").is_ok());
    }
}
