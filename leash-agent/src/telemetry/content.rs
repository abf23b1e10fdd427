//! Content attributes (`gen_ai.input.messages`, `gen_ai.system_instructions`,
//! `gen_ai.output.messages`), only with `telemetry.otlp.content: redacted`
//! and only for exchanges whose content capture keeps (`capture:` class not
//! `none`): always redacted — every detector's match replaced — whatever
//! the capture class, and built in the export task, off the data path.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;
use opentelemetry::KeyValue;
use serde_json::{Value, json};

use crate::{
    capture::content::{assembled, redact_text},
    policy::{Policy, detect::Detectors},
    provider::ProviderKind,
};

/// Captured bytes the export queue may hold for content attributes at
/// once; past it an exchange's content is left out (its span still goes):
/// memory stays bounded however slow the collector.
pub const BUDGET: usize = 32 * 1024 * 1024;

/// A share of [`BUDGET`], given back when the content is dropped.
#[derive(Debug)]
pub struct Held {
    bytes: usize,
    total: Arc<AtomicUsize>,
}

impl Held {
    /// `bytes` of the budget `total`, if they fit.
    pub fn take(total: &Arc<AtomicUsize>, bytes: usize) -> Option<Self> {
        let before = total.fetch_add(bytes, Ordering::AcqRel);
        if before + bytes > BUDGET {
            total.fetch_sub(bytes, Ordering::AcqRel);
            return None;
        }
        Some(Self {
            bytes,
            total: Arc::clone(total),
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// What an exchange said, as captured; redacted when exported.
#[derive(Debug)]
pub struct Content {
    pub kind: ProviderKind,
    pub stream: bool,
    pub request: Bytes,
    pub response: Vec<u8>,
    /// The policy in force (its detectors redact); `None`: the built-in ones.
    pub policy: Option<Arc<Policy>>,
    /// Its share of the queue's content budget.
    pub held: Held,
}

/// `{role, parts: [{type: text, content}]}` with the text redacted.
fn message(detectors: &Detectors, role: &str, texts: Vec<String>) -> Value {
    let parts: Vec<Value> = texts
        .into_iter()
        .map(|mut t| {
            redact_text(detectors, &mut t);
            json!({"type": "text", "content": t})
        })
        .collect();
    json!({"role": role, "parts": parts})
}

/// The text of a content field: a string, or blocks with `text`.
fn texts(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// The request's messages and system instructions.
fn input(detectors: &Detectors, kind: ProviderKind, body: &Value) -> (Vec<Value>, Vec<String>) {
    let mut system = Vec::new();
    let mut messages = Vec::new();
    match kind {
        ProviderKind::OpenAi => {
            system.extend(body["instructions"].as_str().map(str::to_owned));
            match &body["input"] {
                Value::String(s) => messages.push(message(detectors, "user", vec![s.clone()])),
                Value::Array(items) => {
                    for m in items {
                        let role = m["role"].as_str().unwrap_or("user");
                        messages.push(message(detectors, role, texts(&m["content"])));
                    }
                }
                _ => {}
            }
            for m in body["messages"].as_array().into_iter().flatten() {
                let role = m["role"].as_str().unwrap_or("user");
                messages.push(message(detectors, role, texts(&m["content"])));
            }
        }
        ProviderKind::Anthropic => {
            system.extend(texts(&body["system"]));
            for m in body["messages"].as_array().into_iter().flatten() {
                let role = m["role"].as_str().unwrap_or("user");
                messages.push(message(detectors, role, texts(&m["content"])));
            }
        }
        ProviderKind::Google => {
            system.extend(texts(&body["systemInstruction"]["parts"]));
            for m in body["contents"].as_array().into_iter().flatten() {
                let role = match m["role"].as_str() {
                    Some("model") => "assistant",
                    Some(r) => r,
                    None => "user",
                };
                messages.push(message(detectors, role, texts(&m["parts"])));
            }
        }
    }
    for s in &mut system {
        redact_text(detectors, s);
    }
    (messages, system)
}

/// The answer's text: assembled from a stream's events, or read from the
/// whole body.
fn output_text(kind: ProviderKind, stream: bool, response: &[u8]) -> Vec<String> {
    if stream {
        return vec![assembled(kind, response)];
    }
    let Ok(v) = serde_json::from_slice::<Value>(response) else {
        return Vec::new();
    };
    match kind {
        ProviderKind::OpenAi => {
            let mut out: Vec<String> = v["choices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["message"]["content"].as_str().map(str::to_owned))
                .collect();
            for item in v["output"].as_array().into_iter().flatten() {
                out.extend(texts(&item["content"]));
            }
            out
        }
        ProviderKind::Anthropic => texts(&v["content"]),
        ProviderKind::Google => v["candidates"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| texts(&c["content"]["parts"]))
            .collect(),
    }
}

impl Content {
    /// The content attributes, redacted with the policy's detectors (or
    /// `builtin`).
    pub fn attributes(&self, builtin: &Detectors, finish: Option<&str>) -> Vec<KeyValue> {
        let detectors = self.policy.as_deref().map_or(builtin, Policy::detectors);
        let body = serde_json::from_slice::<Value>(&self.request).unwrap_or(Value::Null);
        let (messages, system) = input(detectors, self.kind, &body);
        let mut answer = message(
            detectors,
            "assistant",
            output_text(self.kind, self.stream, &self.response),
        );
        if let Some(f) = finish {
            answer["finish_reason"] = json!(f);
        }
        let mut out = vec![
            KeyValue::new("gen_ai.input.messages", Value::Array(messages).to_string()),
            KeyValue::new("gen_ai.output.messages", json!([answer]).to_string()),
        ];
        if !system.is_empty() {
            let parts: Vec<Value> = system
                .into_iter()
                .map(|t| json!({"type": "text", "content": t}))
                .collect();
            out.push(KeyValue::new(
                "gen_ai.system_instructions",
                Value::Array(parts).to_string(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_and_given_back() {
        let total = Arc::new(AtomicUsize::new(0));
        let big = Held::take(&total, BUDGET - 10);
        assert!(big.is_some());
        assert!(Held::take(&total, 11).is_none(), "over the budget");
        let small = Held::take(&total, 10);
        assert!(small.is_some());
        drop((big, small));
        assert_eq!(total.load(Ordering::Acquire), 0);
    }

    #[test]
    fn messages_of_each_api_are_redacted() {
        let builtin = Detectors::new(&[]).unwrap_or_else(|_| unreachable!());
        let secret = "AKIAZ7QX3PLM9V2KD4RT";
        for (kind, body, answer) in [
            (
                ProviderKind::OpenAi,
                json!({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": format!("key {secret}")}]}),
                json!({"choices": [{"message": {"content": "ok"}}]}),
            ),
            (
                ProviderKind::Anthropic,
                json!({"system": "be brief", "messages": [{"role": "user", "content": [{"type": "text", "text": format!("key {secret}")}]}]}),
                json!({"content": [{"type": "text", "text": "ok"}]}),
            ),
            (
                ProviderKind::Google,
                json!({"contents": [{"role": "user", "parts": [{"text": format!("key {secret}")}]}]}),
                json!({"candidates": [{"content": {"parts": [{"text": "ok"}]}}]}),
            ),
        ] {
            let c = Content {
                kind,
                stream: false,
                request: Bytes::from(body.to_string()),
                response: answer.to_string().into_bytes(),
                policy: None,
                held: Held::take(&Arc::new(AtomicUsize::new(0)), 1)
                    .unwrap_or_else(|| unreachable!()),
            };
            let attrs = c.attributes(&builtin, Some("stop"));
            let all = format!("{attrs:?}");
            assert!(!all.contains(secret), "{kind:?}: {all}");
            assert!(all.contains("[REDACTED:"), "{kind:?}: {all}");
            assert!(all.contains(r#"\"content\":\"ok\""#), "{kind:?}: {all}");
        }
    }
}
