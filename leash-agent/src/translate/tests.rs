#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;

fn native(kind: ProviderKind, body: Value) -> (Native, Value) {
    let n = request(Api::Chat, kind, "p", "m", body).unwrap();
    let v: Value = serde_json::from_slice(&n.body).unwrap();
    (n, v)
}

fn tool_round_trip() -> Value {
    json!({
        "model": "p/m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"c\":21}"},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "max_tokens": 50,
        "stop": "END",
    })
}

#[test]
fn anthropic_request_maps_system_images_tools_and_results() {
    let (n, v) = native(ProviderKind::Anthropic, tool_round_trip());
    assert_eq!(n.path, "/v1/messages");
    assert_eq!(v["system"], "be brief");
    assert_eq!(v["max_tokens"], 50);
    assert_eq!(v["stop_sequences"], json!(["END"]));
    assert_eq!(
        v["messages"][0]["content"][1]["source"]["media_type"],
        "image/png"
    );
    assert_eq!(v["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(v["messages"][1]["content"][0]["input"]["city"], "Paris");
    assert_eq!(v["messages"][2]["content"][0]["tool_use_id"], "call_1");
    assert_eq!(v["tools"][0]["input_schema"]["type"], "object");
    assert_eq!(
        v["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
}

#[test]
fn gemini_request_maps_system_images_tools_and_results() {
    let mut body = tool_round_trip();
    body["parallel_tool_calls"] = json!(true);
    let (n, v) = native(ProviderKind::Google, body);
    assert_eq!(n.path, "/v1beta/models/m:generateContent");
    assert_eq!(v["systemInstruction"]["parts"][0]["text"], "be brief");
    assert_eq!(
        v["contents"][0]["parts"][1]["inlineData"]["mimeType"],
        "image/png"
    );
    assert_eq!(v["contents"][1]["role"], "model");
    assert_eq!(
        v["contents"][1]["parts"][0]["functionCall"]["args"]["city"],
        "Paris"
    );
    assert_eq!(
        v["contents"][2]["parts"][0]["functionResponse"],
        json!({"name": "weather", "response": {"c": 21}})
    );
    assert_eq!(v["generationConfig"]["maxOutputTokens"], 50);
    assert_eq!(v["toolConfig"]["functionCallingConfig"]["mode"], "ANY");
}

#[test]
fn unsupported_fields_are_refused_never_dropped() {
    for (kind, field) in [
        (ProviderKind::Anthropic, "seed"),
        (ProviderKind::Anthropic, "logprobs"),
        (ProviderKind::Google, "logprobs"),
        (ProviderKind::Google, "n"),
        (ProviderKind::Google, "parallel_tool_calls"),
        (ProviderKind::Anthropic, "whatever_new_field"),
    ] {
        let mut body = json!({"model": "p/m", "messages": [{"role": "user", "content": "hi"}]});
        body[field] = if field == "parallel_tool_calls" {
            json!(false)
        } else {
            json!(2)
        };
        let err = request(Api::Chat, kind, "p", "m", body).unwrap_err();
        assert_eq!(err.param(), Some(field), "{kind:?} {field}: {err}");
    }
    let body = json!({"model": "p/m", "messages": [], "response_format": {"type": "json_object"}});
    assert!(request(Api::Chat, ProviderKind::Anthropic, "p", "m", body).is_err());
    let body = json!({"model": "p/m", "input": "x"});
    assert!(request(Api::Embeddings, ProviderKind::Anthropic, "p", "m", body).is_err());
}

#[test]
fn model_must_name_a_provider() {
    assert_eq!(
        split_model(&json!({"model": "anthropic/claude"})).unwrap(),
        ("anthropic", "claude")
    );
    assert!(split_model(&json!({"model": "gpt-4o"})).is_err());
    assert!(split_model(&json!({})).is_err());
}

fn answer(kind: ProviderKind, stream: bool) -> Answer {
    Answer {
        kind,
        api: Api::Chat,
        stream,
        include_usage: true,
        model: "p/m".into(),
        base64_embeddings: false,
    }
}

/// The `data:` values of an SSE text.
fn chunks(sse: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(sse)
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn anthropic_stream_becomes_chunks_with_tool_calls_and_usage() {
    let mut t = Translator::new(
        &answer(ProviderKind::Anthropic, true),
        StatusCode::OK,
        Some("text/event-stream"),
    )
    .unwrap();
    let events = [
        json!({"type": "message_start", "message": {"usage": {"input_tokens": 10, "cache_read_input_tokens": 2, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "tu_1", "name": "weather"}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"ci"}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ty\":1}"}}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}}),
        json!({"type": "message_stop"}),
    ];
    let mut out = Vec::new();
    for e in &events {
        // Split mid-event: the translation waits for the whole event.
        let text = format!("event: x\ndata: {e}\n\n");
        let (a, b) = text.split_at(text.len() / 2);
        out.extend_from_slice(&t.feed(a.as_bytes()).unwrap());
        out.extend_from_slice(&t.feed(b.as_bytes()).unwrap());
    }
    out.extend_from_slice(&t.finish());
    let c = chunks(&out);
    let v: Vec<Value> = c[..c.len() - 1]
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    assert_eq!(v[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(v[1]["choices"][0]["delta"]["content"], "Hi");
    assert_eq!(v[2]["choices"][0]["delta"]["tool_calls"][0]["id"], "tu_1");
    let args: String = v[3..5]
        .iter()
        .map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(args, "{\"city\":1}");
    assert_eq!(v[5]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(v[6]["usage"]["prompt_tokens"], 12);
    assert_eq!(v[6]["usage"]["completion_tokens"], 7);
    assert_eq!(c.last().unwrap(), "[DONE]");
}

#[test]
fn gemini_answer_and_errors_take_the_openai_shape() {
    let mut t = Translator::new(
        &answer(ProviderKind::Google, false),
        StatusCode::OK,
        Some("application/json"),
    )
    .unwrap();
    let native = json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "weather", "args": {"city": "Paris"}}}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3, "thoughtsTokenCount": 1}});
    assert!(t.feed(native.to_string().as_bytes()).unwrap().is_empty());
    let v: Value = serde_json::from_slice(&t.finish()).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Paris\"}"
    );
    assert_eq!(v["usage"]["completion_tokens"], 4);

    let mut t = Translator::new(
        &answer(ProviderKind::Anthropic, false),
        StatusCode::TOO_MANY_REQUESTS,
        Some("application/json"),
    )
    .unwrap();
    let _ = t
        .feed(br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#)
        .unwrap();
    let v: Value = serde_json::from_slice(&t.finish()).unwrap();
    assert_eq!(v["error"]["message"], "slow down");
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

#[test]
fn openai_kind_answers_pass_through() {
    assert!(
        Translator::new(
            &answer(ProviderKind::OpenAi, false),
            StatusCode::OK,
            Some("application/json")
        )
        .is_none()
    );
}
