//! Tool calls (a call to the first tool offered, until a tool result
//! answers it) and Gemini batch embeddings.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{HeaderMap, Response, StatusCode};
use serde_json::{Value, json};

use super::{
    Api, MockBody, anthropic_usage, gemini_response, json_response, openai_response, openai_usage,
    sse_data, sse_event, sse_response, usage,
};

/// The tool the mock calls: the first one offered, unless the conversation
/// already ends with a tool result (then it answers with text).
fn wants_tool_call(request: &Value) -> Option<String> {
    let openai = request["tools"][0]["function"]["name"].as_str();
    let anthropic = request["tools"][0]["name"].as_str();
    let gemini = request["tools"][0]["functionDeclarations"][0]["name"].as_str();
    let name = openai.or(anthropic).or(gemini)?;
    let last_anthropic = request["messages"].as_array().and_then(|m| m.last());
    let last_gemini = request["contents"].as_array().and_then(|m| m.last());
    let answered = last_anthropic.is_some_and(|m| {
        m["role"] == "tool"
            || m["content"]
                .as_array()
                .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
    }) || last_gemini.is_some_and(|m| {
        m["parts"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p.get("functionResponse").is_some()))
    });
    (!answered).then(|| name.to_owned())
}

/// How the request's headers shape a tool call: `x-mock-tool-args` (the
/// call's arguments, JSON text; default `TOOL_ARGS`) and, for streams,
/// `x-mock-tool-preamble: N` (N text pieces before the call).
pub(super) struct ToolSteer {
    pub(super) args: String,
    pub(super) preamble: Vec<String>,
}

impl ToolSteer {
    pub(super) fn of(headers: &HeaderMap, texts: &[String]) -> Self {
        let args = headers
            .get("x-mock-tool-args")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(TOOL_ARGS)
            .to_owned();
        let n = headers
            .get("x-mock-tool-preamble")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Self {
            args,
            preamble: texts.iter().take(n).cloned().collect(),
        }
    }

    fn args_value(&self) -> Value {
        serde_json::from_str(&self.args).unwrap_or(Value::Null)
    }

    /// The arguments in two pieces, as a stream sends them.
    fn halves(&self) -> (&str, &str) {
        let mut mid = self.args.len() / 2;
        while !self.args.is_char_boundary(mid) {
            mid += 1;
        }
        self.args.split_at(mid)
    }
}

/// A tool call, when the request offers tools and does not answer one yet.
pub(super) fn tool_answer(
    api: Api,
    path: &str,
    request: &Value,
    model: &str,
    steer: &ToolSteer,
    gap: Duration,
    sent: &Arc<Mutex<Vec<Instant>>>,
) -> Option<Response<MockBody>> {
    let name = wants_tool_call(request)?;
    let sent = Arc::clone(sent);
    let stream = request["stream"] == true;
    match api {
        Api::Anthropic if stream => Some(sse_response(
            anthropic_tool_stream(model, &name, steer),
            gap,
            sent,
        )),
        Api::Anthropic => Some(json_response(
            StatusCode::OK,
            &anthropic_tool_message(model, &name, steer),
        )),
        Api::Google => {
            let model = path
                .rsplit('/')
                .next()
                .and_then(|s| s.split_once(':'))
                .map_or("mock-model", |(m, _)| m);
            let answer = gemini_tool_response(model, &name, steer);
            Some(if path.ends_with(":streamGenerateContent") {
                let mut events: Vec<String> = steer
                    .preamble
                    .iter()
                    .map(|t| sse_data(&gemini_response(model, t, false)))
                    .collect();
                events.push(sse_data(&answer));
                sse_response(events, gap, sent)
            } else {
                json_response(StatusCode::OK, &answer)
            })
        }
        Api::OpenAi if path == "/v1/responses" && stream => Some(sse_response(
            responses_tool_stream(model, &name, steer),
            gap,
            sent,
        )),
        Api::OpenAi if path == "/v1/responses" => {
            let mut answer = openai_response(model, &[], "completed");
            answer["output"] = json!([function_call_item(&name, &steer.args, "completed")]);
            Some(json_response(StatusCode::OK, &answer))
        }
        Api::OpenAi if path != "/v1/chat/completions" => None,
        Api::OpenAi if stream => Some(sse_response(
            openai_tool_stream(model, &name, steer),
            gap,
            sent,
        )),
        Api::OpenAi => Some(json_response(
            StatusCode::OK,
            &openai_tool_message(model, &name, steer),
        )),
    }
}

/// The arguments of every mock tool call, unless `x-mock-tool-args` says.
pub const TOOL_ARGS: &str = r#"{"city":"Paris"}"#;

fn openai_tool_message(model: &str, name: &str, steer: &ToolSteer) -> Value {
    json!({
        "id": "chatcmpl-mock-tool", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null, "message": {
            "role": "assistant", "content": null, "refusal": null,
            "tool_calls": [{"id": "call_mock", "type": "function",
                "function": {"name": name, "arguments": steer.args}}]}}],
        "usage": openai_usage(),
    })
}

fn openai_tool_stream(model: &str, name: &str, steer: &ToolSteer) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        sse_data(&json!({
            "id": "chatcmpl-mock-tool", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }))
    };
    let mut events: Vec<String> = steer
        .preamble
        .iter()
        .map(|t| chunk(json!({"role": "assistant", "content": t}), Value::Null))
        .collect();
    let (first, second) = steer.halves();
    events.extend([
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_mock",
                "type": "function", "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": first}}]}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": second}}]}), Value::Null),
        chunk(json!({}), json!("tool_calls")),
        "data: [DONE]\n\n".to_owned(),
    ]);
    events
}

/// A Responses API `function_call` output item.
fn function_call_item(name: &str, args: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": "fc_mock", "call_id": "call_mock", "name": name,
           "arguments": args, "status": status})
}

/// A Responses API stream: the preamble as a message's text deltas, then
/// the call (added, its arguments in two deltas, done), then completed.
fn responses_tool_stream(model: &str, name: &str, steer: &ToolSteer) -> Vec<String> {
    let mut seq = 0;
    let mut event = |kind: &str, mut body: Value| {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(seq);
        seq += 1;
        sse_event(kind, &body)
    };
    let mut events = vec![event(
        "response.created",
        json!({"response": openai_response(model, &[], "in_progress")}),
    )];
    for text in &steer.preamble {
        events.push(event(
            "response.output_text.delta",
            json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": text}),
        ));
    }
    let (first, second) = steer.halves();
    let call = |i| json!({"item_id": "fc_mock", "output_index": 1, "delta": i});
    events.extend([
        event(
            "response.output_item.added",
            json!({"output_index": 1, "item": function_call_item(name, "", "in_progress")}),
        ),
        event("response.function_call_arguments.delta", call(first)),
        event("response.function_call_arguments.delta", call(second)),
        event(
            "response.function_call_arguments.done",
            json!({"item_id": "fc_mock", "output_index": 1, "name": name, "arguments": steer.args}),
        ),
        event(
            "response.output_item.done",
            json!({"output_index": 1, "item": function_call_item(name, &steer.args, "completed")}),
        ),
    ]);
    let mut done = openai_response(model, &[], "completed");
    done["output"] = json!([function_call_item(name, &steer.args, "completed")]);
    events.push(event("response.completed", json!({"response": done})));
    events
}

fn anthropic_tool_message(model: &str, name: &str, steer: &ToolSteer) -> Value {
    json!({
        "id": "msg_mock_tool", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "tool_use", "id": "toolu_mock", "name": name, "input": steer.args_value()}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": anthropic_usage(usage::ANTHROPIC_OUTPUT),
    })
}

fn anthropic_tool_stream(model: &str, name: &str, steer: &ToolSteer) -> Vec<String> {
    let mut events = vec![sse_event(
        "message_start",
        &json!({"type": "message_start", "message": {
        "id": "msg_mock_tool", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null, "usage": anthropic_usage(1)}}),
    )];
    let mut index = 0;
    if !steer.preamble.is_empty() {
        events.push(sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ));
        for t in &steer.preamble {
            events.push(sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
            ));
        }
        events.push(sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
        index = 1;
    }
    let (first, second) = steer.halves();
    events.extend([
        sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": "toolu_mock", "name": name, "input": {}}}),
        ),
        sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": first}}),
        ),
        sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": second}}),
        ),
        sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ),
        sse_event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"output_tokens": usage::ANTHROPIC_OUTPUT}}),
        ),
        sse_event("message_stop", &json!({"type": "message_stop"})),
    ]);
    events
}

fn gemini_tool_response(model: &str, name: &str, steer: &ToolSteer) -> Value {
    let mut answer = gemini_response(model, "", true);
    answer["candidates"][0]["content"]["parts"] =
        json!([{"functionCall": {"name": name, "args": steer.args_value()}}]);
    answer
}

/// `batchEmbedContents`: a 3-float vector per request.
pub(super) fn gemini_embeddings(request: &Value) -> Value {
    let n = request["requests"].as_array().map_or(0, Vec::len);
    let embeddings: Vec<Value> = (0..n)
        .map(|i| json!({"values": [0.5, -0.25, f64::from(u32::try_from(i).unwrap_or(0))]}))
        .collect();
    json!({"embeddings": embeddings})
}
