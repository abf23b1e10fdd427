//! Tool calls in answers, in every provider's shape: read from a whole body,
//! or assembled from stream events until each call's arguments are complete
//! (`OpenAI` chat `tool_calls` deltas, Responses `function_call_arguments`
//! events, Anthropic `input_json_delta`, Gemini `functionCall` parts, which
//! arrive whole). Plain JSON work: the policy judges the calls, the usage
//! module records their names.

use serde_json::Value;

/// One tool call: the tool's name and its arguments as JSON text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Call {
    pub name: String,
    pub arguments: String,
}

/// Anthropic content blocks that call a tool.
const ANTHROPIC_CALLS: [&str; 3] = ["tool_use", "server_tool_use", "mcp_tool_use"];
/// Responses output items that call a tool.
const RESPONSES_CALLS: [&str; 3] = ["function_call", "custom_tool_call", "mcp_call"];

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Arguments given as a JSON value (Anthropic `input`, Gemini `args`) or as
/// JSON text (`OpenAI`).
fn arguments(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A call's arguments as detectors read them: JSON flattened to one
/// `key: value` line per string, number or boolean (escapes decoded, the
/// key kept as context: `password: …`); text that is not JSON as it is.
pub fn readable(arguments: &str) -> std::borrow::Cow<'_, str> {
    fn walk(key: &str, v: &Value, out: &mut String) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    walk(k, v, out);
                }
            }
            Value::Array(items) => {
                for v in items {
                    walk(key, v, out);
                }
            }
            Value::String(s) => {
                out.push_str(key);
                out.push_str(": ");
                out.push_str(s);
                out.push('\n');
            }
            Value::Number(_) | Value::Bool(_) => {
                out.push_str(key);
                out.push_str(": ");
                out.push_str(&v.to_string());
                out.push('\n');
            }
            Value::Null => {}
        }
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v) => {
            let mut out = String::with_capacity(arguments.len());
            walk("", &v, &mut out);
            std::borrow::Cow::Owned(out)
        }
        Err(_) => std::borrow::Cow::Borrowed(arguments),
    }
}

/// The tool calls a whole (non-streamed) answer makes, in order.
pub fn in_body(v: &Value) -> Vec<Call> {
    let mut calls = Vec::new();
    // OpenAI chat.
    for choice in v["choices"].as_array().into_iter().flatten() {
        let message = &choice["message"];
        for c in message["tool_calls"].as_array().into_iter().flatten() {
            let f = &c["function"];
            calls.push(Call {
                name: text(&f["name"]).to_owned(),
                arguments: arguments(&f["arguments"]),
            });
        }
        if message["function_call"].is_object() {
            calls.push(Call {
                name: text(&message["function_call"]["name"]).to_owned(),
                arguments: arguments(&message["function_call"]["arguments"]),
            });
        }
    }
    // OpenAI Responses.
    for item in v["output"].as_array().into_iter().flatten() {
        if RESPONSES_CALLS.contains(&text(&item["type"])) {
            calls.push(Call {
                name: text(&item["name"]).to_owned(),
                arguments: arguments(&item["arguments"]),
            });
        }
    }
    // Anthropic.
    for block in v["content"].as_array().into_iter().flatten() {
        if ANTHROPIC_CALLS.contains(&text(&block["type"])) {
            calls.push(Call {
                name: text(&block["name"]).to_owned(),
                arguments: arguments(&block["input"]),
            });
        }
    }
    gemini_calls(v, &mut calls);
    calls
}

/// Gemini: `functionCall` parts, whole in a body and in each stream event.
fn gemini_calls(v: &Value, calls: &mut Vec<Call>) {
    for cand in v["candidates"].as_array().into_iter().flatten() {
        for part in cand["content"]["parts"].as_array().into_iter().flatten() {
            let call = &part["functionCall"];
            if call.is_object() {
                calls.push(Call {
                    name: text(&call["name"]).to_owned(),
                    arguments: arguments(&call["args"]),
                });
            }
        }
    }
}

/// The calls of one stream, assembled event by event. A call is open from
/// its first event to the one that shows its arguments are complete.
#[derive(Debug, Clone, Default)]
pub struct Assembler {
    /// Open calls by the provider's index (choice and call index for
    /// `OpenAI` chat, content block for Anthropic, output item for
    /// Responses).
    open: Vec<(u64, Call)>,
}

impl Assembler {
    /// Whether a call has started whose arguments are not complete yet.
    pub fn is_open(&self) -> bool {
        !self.open.is_empty()
    }

    /// Takes one stream event; returns the calls it completed, in order.
    pub fn feed(&mut self, v: &Value) -> Vec<Call> {
        let mut done = Vec::new();
        self.openai_chat(v, &mut done);
        self.responses(v, &mut done);
        self.anthropic(v, &mut done);
        gemini_calls(v, &mut done);
        done
    }

    /// The stream ended: calls still open are judged as they are.
    pub fn finish(&mut self) -> Vec<Call> {
        self.open.drain(..).map(|(_, c)| c).collect()
    }

    fn close(&mut self, key: u64, done: &mut Vec<Call>) {
        if let Some(i) = self.open.iter().position(|(k, _)| *k == key) {
            done.push(self.open.remove(i).1);
        }
    }

    fn entry(&mut self, key: u64) -> &mut Call {
        let i = self
            .open
            .iter()
            .position(|(k, _)| *k == key)
            .unwrap_or_else(|| {
                self.open.push((key, Call::default()));
                self.open.len() - 1
            });
        &mut self.open[i].1
    }

    /// `OpenAI` chat: a delta with a call's `name` starts it (the calls of
    /// a choice come one after another, so it completes the one before);
    /// `arguments` pieces follow; a `finish_reason` completes the choice's.
    fn openai_chat(&mut self, v: &Value, done: &mut Vec<Call>) {
        for (ci, choice) in v["choices"].as_array().into_iter().flatten().enumerate() {
            let choice_key = (ci as u64) << 32;
            for c in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let key = choice_key | (c["index"].as_u64().unwrap_or(0) & 0xffff_ffff);
                let f = &c["function"];
                if let Some(name) = f["name"].as_str() {
                    let earlier: Vec<u64> = self
                        .open
                        .iter()
                        .map(|(k, _)| *k)
                        .filter(|k| *k != key && k >> 32 == ci as u64)
                        .collect();
                    for k in earlier {
                        self.close(k, done);
                    }
                    self.entry(key).name.push_str(name);
                }
                if let Some(piece) = f["arguments"].as_str() {
                    self.entry(key).arguments.push_str(piece);
                }
            }
            if !choice["finish_reason"].is_null() {
                let mine: Vec<u64> = self
                    .open
                    .iter()
                    .map(|(k, _)| *k)
                    .filter(|k| k >> 32 == ci as u64)
                    .collect();
                for k in mine {
                    self.close(k, done);
                }
            }
        }
    }

    /// Responses: `output_item.added` starts a call, `…arguments.delta`
    /// adds to it, `…arguments.done` / `output_item.done` complete it (with
    /// the whole arguments), `response.completed` ends every one.
    fn responses(&mut self, v: &Value, done: &mut Vec<Call>) {
        let key = v["output_index"].as_u64().unwrap_or(0);
        match text(&v["type"]) {
            "response.output_item.added" if RESPONSES_CALLS.contains(&text(&v["item"]["type"])) => {
                let call = self.entry(key);
                text(&v["item"]["name"]).clone_into(&mut call.name);
                call.arguments = arguments(&v["item"]["arguments"]);
            }
            "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
                self.entry(key).arguments.push_str(text(&v["delta"]));
            }
            "response.function_call_arguments.done" | "response.output_item.done" => {
                let whole = v.get("arguments").or_else(|| v["item"].get("arguments"));
                if self.open.iter().any(|(k, _)| *k == key) {
                    if let Some(whole) = whole.and_then(Value::as_str) {
                        whole.clone_into(&mut self.entry(key).arguments);
                    }
                    self.close(key, done);
                }
            }
            "response.completed" | "response.failed" | "response.incomplete" => {
                done.extend(self.finish());
            }
            _ => {}
        }
    }

    /// Anthropic: `content_block_start` of a `tool_use` block starts a
    /// call, `input_json_delta` pieces follow, `content_block_stop` ends it.
    fn anthropic(&mut self, v: &Value, done: &mut Vec<Call>) {
        let key = v["index"].as_u64().unwrap_or(0);
        match text(&v["type"]) {
            "content_block_start"
                if ANTHROPIC_CALLS.contains(&text(&v["content_block"]["type"])) =>
            {
                let block = &v["content_block"];
                let call = self.entry(key);
                text(&block["name"]).clone_into(&mut call.name);
                // The start carries `input: {}`; the pieces follow.
                if block["input"].as_object().is_some_and(|o| !o.is_empty()) {
                    call.arguments = block["input"].to_string();
                }
            }
            "content_block_delta"
                if v["delta"]["type"] == "input_json_delta"
                    && self.open.iter().any(|(k, _)| *k == key) =>
            {
                self.entry(key)
                    .arguments
                    .push_str(text(&v["delta"]["partial_json"]));
            }
            "content_block_stop" => self.close(key, done),
            "message_stop" => done.extend(self.finish()),
            _ => {}
        }
    }
}

/// The names of the tools a whole answer calls or a stream event starts
/// calling (Gemini's parts make the call whole): what the audit lists,
/// read without copying any arguments.
pub fn names(v: &Value, out: &mut Vec<String>) {
    let mut push = |n: &Value| out.push(text(n).to_owned());
    for choice in v["choices"].as_array().into_iter().flatten() {
        for c in choice["message"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            push(&c["function"]["name"]);
        }
        // A delta names its call only in the call's first piece.
        for c in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if c["function"]["name"].is_string() {
                push(&c["function"]["name"]);
            }
        }
        if choice["message"]["function_call"].is_object() {
            push(&choice["message"]["function_call"]["name"]);
        }
    }
    for item in v["output"].as_array().into_iter().flatten() {
        if RESPONSES_CALLS.contains(&text(&item["type"])) {
            push(&item["name"]);
        }
    }
    for block in v["content"].as_array().into_iter().flatten() {
        if ANTHROPIC_CALLS.contains(&text(&block["type"])) {
            push(&block["name"]);
        }
    }
    if v["type"] == "response.output_item.added"
        && RESPONSES_CALLS.contains(&text(&v["item"]["type"]))
    {
        push(&v["item"]["name"]);
    }
    if v["type"] == "content_block_start"
        && ANTHROPIC_CALLS.contains(&text(&v["content_block"]["type"]))
    {
        push(&v["content_block"]["name"]);
    }
    for cand in v["candidates"].as_array().into_iter().flatten() {
        for part in cand["content"]["parts"].as_array().into_iter().flatten() {
            if part["functionCall"].is_object() {
                push(&part["functionCall"]["name"]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn call(name: &str, arguments: &str) -> Call {
        Call {
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn arguments_read_as_key_value_lines() {
        assert_eq!(
            readable(r#"{"password":"hunter2\"x","n":[1,{"k":true}]}"#),
            "n: 1\nk: true\npassword: hunter2\"x\n"
        );
        assert_eq!(readable("not json {"), "not json {");
    }

    #[test]
    fn whole_bodies_of_every_shape() {
        let chat = json!({"choices": [{"message": {"tool_calls": [
            {"function": {"name": "shell", "arguments": "{\"cmd\":\"ls\"}"}}]}}]});
        assert_eq!(in_body(&chat), [call("shell", r#"{"cmd":"ls"}"#)]);
        let responses = json!({"output": [{"type": "message"}, {"type": "function_call", "name": "f", "arguments": "{}"}]});
        assert_eq!(in_body(&responses), [call("f", "{}")]);
        let claude = json!({"content": [{"type": "text", "text": "hi"}, {"type": "tool_use", "name": "shell", "input": {"cmd": "ls"}}]});
        assert_eq!(in_body(&claude), [call("shell", r#"{"cmd":"ls"}"#)]);
        let gemini = json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "shell", "args": {"cmd": "ls"}}}]}}]});
        assert_eq!(in_body(&gemini), [call("shell", r#"{"cmd":"ls"}"#)]);
        // The audit's names: the same calls, without their arguments.
        for (body, name) in [
            (&chat, "shell"),
            (&responses, "f"),
            (&claude, "shell"),
            (&gemini, "shell"),
        ] {
            let mut seen = Vec::new();
            names(body, &mut seen);
            assert_eq!(seen, [name], "{body}");
        }
    }

    #[test]
    fn streams_hold_a_call_open_until_its_arguments_are_complete() {
        let mut a = Assembler::default();
        let delta = |tc: Value, finish: Value| json!({"choices": [{"index": 0, "delta": {"tool_calls": tc}, "finish_reason": finish}]});
        assert!(
            a.feed(&json!({"choices": [{"delta": {"content": "Let me"}, "finish_reason": null}]}))
                .is_empty()
        );
        assert!(!a.is_open());
        assert!(
            a.feed(&delta(
                json!([{"index": 0, "function": {"name": "shell", "arguments": ""}}]),
                Value::Null
            ))
            .is_empty()
        );
        assert!(a.is_open());
        assert!(
            a.feed(&delta(
                json!([{"index": 0, "function": {"arguments": "{\"cmd\":"}}]),
                Value::Null
            ))
            .is_empty()
        );
        // A second call completes the first.
        let done = a.feed(&delta(json!([{"index": 0, "function": {"arguments": "\"ls\"}"}}, {"index": 1, "function": {"name": "f", "arguments": "{}"}}]), Value::Null));
        assert_eq!(done, [call("shell", r#"{"cmd":"ls"}"#)]);
        assert_eq!(
            a.feed(&delta(json!(null), json!("tool_calls"))),
            [call("f", "{}")]
        );
        assert!(!a.is_open());

        let mut a = Assembler::default();
        a.feed(&json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "name": "shell", "input": {}}}));
        a.feed(&json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"cmd\""}}));
        a.feed(&json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ":\"ls\"}"}}));
        assert!(a.is_open());
        assert_eq!(
            a.feed(&json!({"type": "content_block_stop", "index": 1})),
            [call("shell", r#"{"cmd":"ls"}"#)]
        );

        let mut a = Assembler::default();
        a.feed(&json!({"type": "response.output_item.added", "output_index": 2, "item": {"type": "function_call", "name": "shell", "arguments": ""}}));
        a.feed(&json!({"type": "response.function_call_arguments.delta", "output_index": 2, "delta": "{\"cmd\""}));
        assert!(a.is_open());
        let done = a.feed(&json!({"type": "response.function_call_arguments.done", "output_index": 2, "arguments": "{\"cmd\":\"ls\"}"}));
        assert_eq!(done, [call("shell", r#"{"cmd":"ls"}"#)]);
        assert!(a.feed(&json!({"type": "response.output_item.done", "output_index": 2, "item": {"type": "function_call"}})).is_empty());

        let mut a = Assembler::default();
        let gemini = json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "shell", "args": {}}}]}}]});
        assert_eq!(a.feed(&gemini), [call("shell", "{}")]);
        assert!(!a.is_open());

        let mut seen = Vec::new();
        names(&gemini, &mut seen);
        names(
            &delta(
                json!([{"index": 0, "function": {"name": "shell"}}]),
                Value::Null,
            ),
            &mut seen,
        );
        assert_eq!(seen, ["shell", "shell"]);
    }
}
