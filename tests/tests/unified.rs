//! The unified API: the official `OpenAI` Python SDK, unchanged but for its
//! base URL (`http://gw/v1`), calls Anthropic and Gemini models (the mock
//! providers speak their native APIs); and a raw client times the
//! translated stream against the mock's own send times.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::time::Duration;

use leash_tests::{
    harness::{Leash, assert_success, mock_providers_yaml, run_python},
    http::timed_stream,
    mock::{MockProvider, TOOL_ARGS, assert_usage, text_of},
};
use serde_json::{Value, json};

const KEY: &str = "sk-unified-test-key";

fn sdk(leash: &Leash, case: &str, model: &str, headers: &str) -> Value {
    let base = format!("http://{}/v1", leash.addr);
    let out = run_python(
        "unified_check.py",
        &[case, &base, KEY, model],
        &[("LEASH_TEST_HEADERS", headers)],
    );
    assert_success(&format!("{case} {model}\n{}", leash.logs()), &out);
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{case}: {line:?}: {e}"))
}

/// Every case for one provider's model; `native` is the endpoint the
/// provider is called at.
fn check(provider: &str, model: &str, native_endpoint: &str) {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    let unified = format!("{provider}/{model}");
    let mut n = 0;
    let mut next_record = |leash: &Leash| {
        n += 1;
        leash.wait_records(n)[n - 1].clone()
    };

    let r = sdk(&leash, "chat", &unified, "{}");
    assert_eq!(r["text"], text_of(5), "{r}");
    assert_eq!(r["finish"], "stop");
    let rec = next_record(&leash);
    assert_eq!(rec["provider"], provider, "{rec}");
    assert_eq!(rec["endpoint"], native_endpoint, "{rec}");
    assert_eq!(rec["model"], model, "{rec}");
    assert_eq!(
        rec["unified"],
        json!({"api": "openai.chat.completions", "model": unified})
    );
    // Usage and cost are the provider's native ones.
    assert_usage(provider, &rec);
    let sent = mock.requests().last().unwrap().clone();
    let body = sent.json();
    assert!(
        body.get("messages").is_some() || body.get("contents").is_some(),
        "{body}"
    );
    assert!(
        !String::from_utf8_lossy(&sent.body).contains(&format!("{provider}/")),
        "the provider prefix reached the provider: {body}"
    );
    let key_header = if provider == "anthropic" {
        "x-api-key"
    } else {
        "x-goog-api-key"
    };
    assert_eq!(sent.header(key_header), Some(KEY), "{:?}", sent.headers);
    assert!(sent.header("authorization").is_none());

    // Streamed, with a slow mock: chunks arrive spread out, usage at the end.
    let r = sdk(
        &leash,
        "stream",
        &unified,
        r#"{"x-mock-chunk-delay-ms": "150"}"#,
    );
    assert_eq!(r["text"], text_of(5), "{r}");
    assert_eq!(r["chunks"], 5, "{r}");
    assert_eq!(r["finish"], "stop");
    assert!(r["completion_tokens"].as_u64().unwrap() > 0, "{r}");
    let spread = r["last_chunk_s"].as_f64().unwrap() - r["first_chunk_s"].as_f64().unwrap();
    assert!(spread > 0.4, "the stream arrived at once: {r}");
    let rec = next_record(&leash);
    assert_eq!(rec["stream"], true, "{rec}");
    assert_eq!(rec["completed"], true, "{rec}");
    assert_usage(provider, &rec);

    // Tool calling round trips, plain and streamed.
    for case in ["tools", "tools-stream"] {
        let r = sdk(&leash, case, &unified, "{}");
        assert_eq!(r["text"], text_of(5), "{case}: {r}");
        let call = next_record(&leash);
        let answer = next_record(&leash);
        assert_eq!(call["status"], 200);
        assert_eq!(answer["status"], 200);
    }
    let requests = mock.requests();
    let last = requests.last().unwrap().json();
    let result = last.to_string();
    assert!(
        result.contains("tool_result") || result.contains("functionResponse"),
        "the tool result did not reach the provider natively: {last}"
    );
    assert!(
        result.contains(r#""city":"Paris""#),
        "the tool call went back: {last}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(TOOL_ARGS).unwrap()["city"],
        "Paris"
    );

    // Images: base64 inline and by URL.
    let r = sdk(&leash, "image", &unified, "{}");
    assert_eq!(r["text"], text_of(5));
    let sent = mock.requests().last().unwrap().json().to_string();
    assert!(
        sent.contains("iVBORw0KGgo") && sent.contains("https://example.test/cat.jpg"),
        "{sent}"
    );
    next_record(&leash);

    // A provider error is the SDK's APIStatusError with the provider's status.
    let r = sdk(&leash, "error", &unified, r#"{"x-mock-status": "429"}"#);
    assert_eq!(r["status"], 429, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("mock error on request"),
        "{r}"
    );
    assert_eq!(next_record(&leash)["status"], 429);

    // What cannot be translated is refused, naming the field; nothing is sent.
    let before = mock.requests().len();
    let r = sdk(&leash, "refused", &unified, "{}");
    assert_eq!(r["status"], 400, "{r}");
    assert_eq!(r["param"], "logprobs", "{r}");
    assert_eq!(mock.requests().len(), before);
    assert!(!leash.logs().contains(KEY) && !leash.audit_text().contains(KEY));
}

#[test]
fn openai_sdk_calls_anthropic_models() {
    check("anthropic", "claude-sonnet-4-5", "/v1/messages");
}

#[test]
fn openai_sdk_calls_gemini_models() {
    check(
        "google",
        "gemini-2.5-flash",
        "/v1beta/models/gemini-2.5-flash:generateContent",
    );
}

#[test]
fn embeddings_for_openai_and_gemini() {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    let r = sdk(&leash, "embed", "google/gemini-embedding-001", "{}");
    assert_eq!(
        r["vectors"],
        json!([[0.5, -0.25, 0.0], [0.5, -0.25, 1.0]]),
        "{r}"
    );
    let rec = &leash.wait_records(1)[0];
    assert_eq!(
        rec["endpoint"],
        "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    );
    assert_eq!(rec["unified"]["api"], "openai.embeddings");
    // An OpenAI-kind provider receives the request as it is, model unprefixed.
    let out = run_python(
        "unified_check.py",
        &[
            "embed",
            &format!("http://{}/v1", leash.addr),
            KEY,
            "openai/text-embedding-3-small",
        ],
        &[],
    );
    assert_success("openai embeddings", &out);
    let sent = mock.requests().last().unwrap().json();
    assert_eq!(sent["model"], "text-embedding-3-small", "{sent}");
    assert_eq!(leash.wait_records(2)[1]["provider"], "openai");
}

/// Each translated content delta reaches a raw client within 50 ms of the
/// mock sending the native event it comes from.
#[test]
fn translated_stream_chunks_arrive_within_50ms_of_being_sent() {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    for (i, model) in ["anthropic/claude-sonnet-4-5", "google/gemini-2.5-flash"]
        .iter()
        .enumerate()
    {
        let body = json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let arrivals = timed_stream(
            leash.addr,
            "/v1/chat/completions",
            &[
                ("x-mock-chunk-delay-ms", "300"),
                ("x-mock-chunks", "3"),
                ("authorization", "Bearer sk-test"),
            ],
            body.to_string().as_bytes(),
        );
        let sent = mock.requests()[i].chunk_sent.lock().unwrap().clone();
        let mut seen = String::new();
        for (n, piece) in ["Hello", " from", " the"].iter().enumerate() {
            let needle = format!("\"content\":\"{piece}\"");
            let at = arrivals
                .iter()
                .find(|(_, bytes)| {
                    seen.push_str(&String::from_utf8_lossy(bytes));
                    seen.contains(&needle)
                })
                .map_or_else(
                    || panic!("{model}: no chunk with {piece}: {seen}"),
                    |(at, _)| *at,
                );
            seen.clear();
            // The mock event carrying this piece: for Anthropic after the
            // start, block start and ping events; for Gemini the n-th.
            let sent_at = if model.starts_with("anthropic") {
                sent[3 + n]
            } else {
                sent[n]
            };
            let lag = at.duration_since(sent_at);
            assert!(
                lag < Duration::from_millis(50),
                "{model}: {piece:?} reached the client {lag:?} after the mock sent it"
            );
        }
        let all: String = arrivals
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(all.contains("data: [DONE]"), "{all}");
        assert!(all.contains("chat.completion.chunk"), "{all}");
    }
}

/// Policy runs on every unified request, whatever provider it goes to: a
/// secret is blocked before translation reaches anyone, and the block comes
/// back in the `OpenAI` error shape; a clean request passes (control).
#[test]
fn policy_blocks_a_secret_sent_through_the_unified_api() {
    let (mock, leash) = leash_tests::harness::start_with_policy_file(
        "version: 1\nrules:\n  - { name: block-secrets, match: { detectors: [secrets] }, action: block }\n",
        "",
    );
    for model in ["anthropic/claude-sonnet-4-5", "google/gemini-2.5-flash"] {
        let call = |text: &str| {
            let body = json!({"model": model, "messages": [{"role": "user", "content": text}]});
            let (status, _, body) = leash_tests::http::post_json(
                leash.addr,
                "/v1/chat/completions",
                "sk-x",
                body.to_string().as_bytes(),
            );
            (status, body)
        };
        let before = mock.requests().len();
        let blocked = call("my key is AKIAZ7QX3PLM9V2KD4RT");
        assert_eq!(blocked.0, 403, "{model}: {}", blocked.1);
        let v: Value = serde_json::from_str(&blocked.1).unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("block-secrets"),
            "{model}: {v}"
        );
        assert_eq!(
            mock.requests().len(),
            before,
            "{model}: the secret reached the provider"
        );
        let ok = call("hello");
        assert_eq!(ok.0, 200, "{model}: {}", ok.1);
        assert_eq!(mock.requests().len(), before + 1);
    }
}
