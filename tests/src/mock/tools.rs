//! Tool calls (a call to the first tool offered, until a tool result
//! answers it) and Gemini batch embeddings.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::{
    Api, MockBody, anthropic_usage, gemini_response, json_response, openai_usage, sse_data,
    sse_event, sse_response, usage,
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

/// A tool call, when the request offers tools and does not answer one yet.
pub(super) fn tool_answer(
    api: Api,
    path: &str,
    request: &Value,
    model: &str,
    gap: Duration,
    sent: &Arc<Mutex<Vec<Instant>>>,
) -> Option<Response<MockBody>> {
    let name = wants_tool_call(request)?;
    let sent = Arc::clone(sent);
    match api {
        Api::Anthropic if request["stream"] == true => {
            Some(sse_response(anthropic_tool_stream(model, &name), gap, sent))
        }
        Api::Anthropic => Some(json_response(
            StatusCode::OK,
            &anthropic_tool_message(model, &name),
        )),
        Api::Google => {
            let model = path
                .rsplit('/')
                .next()
                .and_then(|s| s.split_once(':'))
                .map_or("mock-model", |(m, _)| m);
            let answer = gemini_tool_response(model, &name);
            Some(if path.ends_with(":streamGenerateContent") {
                sse_response(vec![sse_data(&answer)], gap, sent)
            } else {
                json_response(StatusCode::OK, &answer)
            })
        }
        Api::OpenAi if path != "/v1/chat/completions" => None,
        Api::OpenAi if request["stream"] == true => {
            Some(sse_response(openai_tool_stream(model, &name), gap, sent))
        }
        Api::OpenAi => Some(json_response(
            StatusCode::OK,
            &openai_tool_message(model, &name),
        )),
    }
}

/// The arguments of every mock tool call.
pub const TOOL_ARGS: &str = r#"{"city":"Paris"}"#;

fn openai_tool_message(model: &str, name: &str) -> Value {
    json!({
        "id": "chatcmpl-mock-tool", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null, "message": {
            "role": "assistant", "content": null, "refusal": null,
            "tool_calls": [{"id": "call_mock", "type": "function",
                "function": {"name": name, "arguments": TOOL_ARGS}}]}}],
        "usage": openai_usage(),
    })
}

fn openai_tool_stream(model: &str, name: &str) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        sse_data(&json!({
            "id": "chatcmpl-mock-tool", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }))
    };
    let (first, second) = TOOL_ARGS.split_at(TOOL_ARGS.len() / 2);
    vec![
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_mock",
                "type": "function", "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": first}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": second}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        "data: [DONE]\n\n".to_owned(),
    ]
}

fn anthropic_tool_message(model: &str, name: &str) -> Value {
    json!({
        "id": "msg_mock_tool", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "tool_use", "id": "toolu_mock", "name": name, "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": anthropic_usage(usage::ANTHROPIC_OUTPUT),
    })
}

fn anthropic_tool_stream(model: &str, name: &str) -> Vec<String> {
    vec![
        sse_event(
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": "msg_mock_tool", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": anthropic_usage(1)}}),
        ),
        sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_mock", "name": name, "input": {}}}),
        ),
        sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
        ),
        sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
        ),
        sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        sse_event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"output_tokens": usage::ANTHROPIC_OUTPUT}}),
        ),
        sse_event("message_stop", &json!({"type": "message_stop"})),
    ]
}

fn gemini_tool_response(model: &str, name: &str) -> Value {
    let mut answer = gemini_response(model, "", true);
    answer["candidates"][0]["content"]["parts"] =
        json!([{"functionCall": {"name": name, "args": {"city": "Paris"}}}]);
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
