//! The official Python SDKs (openai, anthropic, google-genai), streaming and
//! not, through `leash gateway` to the mock provider.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use leash_tests::{
    harness::{Leash, assert_success, canary, mock_providers_yaml, run_python},
    mock::{MockProvider, Recorded, assert_usage, text_of},
};
use serde_json::Value;

const TEXT_PIECES: usize = 5;

/// Where each SDK may put its API key (anthropic 2.x sends a bearer token).
fn key_headers(provider: &str) -> &'static [&'static str] {
    match provider {
        "openai" => &["authorization"],
        "anthropic" => &["x-api-key", "authorization"],
        _ => &["x-goog-api-key"],
    }
}

fn run_case(leash: &Leash, provider: &str, case: &str, key: &str, headers: &str) -> Value {
    let out = run_python(
        "sdk_check.py",
        &[case, &leash.base_url(provider), key, &text_of(TEXT_PIECES)],
        &[("LEASH_TEST_HEADERS", headers)],
    );
    assert_success(&format!("{case} via leash"), &out);
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{case}: bad output {line:?}: {e}"))
}

fn assert_key_forwarded(provider: &str, requests: &[Recorded], key: &str) {
    for r in requests {
        assert!(
            key_headers(provider)
                .iter()
                .any(|h| r.header(h).is_some_and(|v| v.contains(key))),
            "{} reached the mock without the API key in {:?}",
            r.uri,
            key_headers(provider)
        );
        assert!(
            !r.headers.keys().any(|k| k.as_str().starts_with("x-leash-")),
            "x-leash-* header reached the upstream: {:?}",
            r.headers
        );
    }
}

fn assert_no_canary(leash: &Leash, key: &str) {
    assert!(!leash.logs().contains(key), "API key found in leash logs");
    assert!(
        !leash.audit_text().contains(key),
        "API key found in audit files"
    );
    assert!(!leash.metrics().contains(key), "API key found in metrics");
}

/// How a case streams. `Spread`: chunks must reach the SDK's caller spread
/// over time. `Sdk`: the SDK itself holds back the first events (openai's
/// Responses stream builds its event models on first use, ~1 s), so spread
/// is checked with raw clients instead (`gateway_stream.rs`).
#[derive(Clone, Copy, PartialEq)]
enum Streaming {
    No,
    Spread,
    Sdk,
}

/// Runs every case of one provider and checks what the mock, the audit trail
/// and the metrics saw.
fn check_provider(provider: &str, cases: &[(&str, Streaming, &str)]) {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    let key = canary(provider);
    // A slow stream: the first chunk must arrive long before the last.
    let slow = r#"{"x-mock-chunk-delay-ms": "150", "x-leash-team": "research"}"#;
    for (i, &(case, streaming, endpoint)) in cases.iter().enumerate() {
        let stream = streaming != Streaming::No;
        let result = run_case(
            &leash,
            provider,
            case,
            &key,
            if stream { slow } else { "{}" },
        );
        if stream {
            assert_eq!(result["chunks"], TEXT_PIECES, "{case}: {result}");
        }
        if streaming == Streaming::Spread {
            let first = result["first_chunk_s"].as_f64().unwrap();
            let last = result["last_chunk_s"].as_f64().unwrap();
            assert!(
                last - first > 0.4,
                "{case}: stream arrived at once (first {first}s, last {last}s)"
            );
        }
        let records = leash.wait_records(i + 1);
        let rec = &records[i];
        assert_eq!(rec["provider"], provider, "{rec}");
        assert_eq!(rec["endpoint"], endpoint, "{rec}");
        assert_eq!(rec["status"], 200, "{rec}");
        assert_eq!(rec["stream"], stream, "{case}: {rec}");
        assert_eq!(rec["completed"], true, "{rec}");
        assert_eq!(rec["mode"], "gateway");
        assert!(
            rec["model"].as_str().is_some_and(|m| !m.is_empty()),
            "{rec}"
        );
        assert!(
            rec["caller"]["addr"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:")
        );
        let team = if stream {
            Value::from("research")
        } else {
            Value::Null
        };
        assert_eq!(rec["caller"]["team"], team, "{rec}");
        assert!(rec["latency_ms"].as_f64().unwrap() >= rec["overhead_ms"].as_f64().unwrap());
        assert_usage(provider, rec);
    }
    let requests = mock.requests();
    assert_eq!(
        requests.len(),
        cases.len(),
        "each SDK call reaches the mock once"
    );
    assert_key_forwarded(provider, &requests, &key);
    let metrics = leash.metrics();
    assert!(
        metrics.contains(&format!("leash_requests_total{{provider=\"{provider}\"")),
        "no request metric for {provider}:\n{metrics}"
    );
    for family in ["leash_cost_usd_total", "leash_tokens_total"] {
        assert!(
            metrics.contains(&format!("{family}{{provider=\"{provider}\"")),
            "no {family} for {provider}:\n{metrics}"
        );
    }
    assert_no_canary(&leash, &key);
}

#[test]
fn openai_sdk_through_gateway() {
    check_provider(
        "openai",
        &[
            ("openai-chat", Streaming::No, "/chat/completions"),
            ("openai-chat-stream", Streaming::Spread, "/chat/completions"),
            ("openai-responses", Streaming::No, "/responses"),
            ("openai-responses-stream", Streaming::Sdk, "/responses"),
        ],
    );
}

#[test]
fn openai_sdk_embeddings_through_gateway() {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    let key = canary("emb");
    let out = run_python(
        "sdk_check.py",
        &["openai-embeddings", &leash.base_url("openai"), &key],
        &[],
    );
    assert_success("embeddings", &out);
    let rec = &leash.wait_records(1)[0];
    assert_eq!(rec["endpoint"], "/embeddings");
    assert_eq!(rec["model"], "text-embedding-3-small");
    assert_usage("openai", rec);
    assert_key_forwarded("openai", &mock.requests(), &key);
    assert_no_canary(&leash, &key);
}

#[test]
fn anthropic_sdk_through_gateway() {
    check_provider(
        "anthropic",
        &[
            ("anthropic", Streaming::No, "/v1/messages"),
            ("anthropic-stream", Streaming::Spread, "/v1/messages"),
        ],
    );
}

#[test]
fn google_sdk_through_gateway() {
    check_provider(
        "google",
        &[
            (
                "google",
                Streaming::No,
                "/v1/models/gemini-2.5-flash:generateContent",
            ),
            (
                "google-stream",
                Streaming::Spread,
                "/v1/models/gemini-2.5-flash:streamGenerateContent",
            ),
        ],
    );
}

/// Upstream down: every SDK raises its ordinary server error (502), with a
/// message that says Leash could not reach the provider.
#[test]
fn sdks_see_provider_shaped_502_when_upstream_is_down() {
    let dead = leash_tests::harness::free_port();
    let leash = Leash::start(&format!(
        "providers:\n  openai: {{ upstream: \"http://127.0.0.1:{dead}/v1\" }}\n  anthropic: {{ upstream: \"http://127.0.0.1:{dead}\" }}\n  google: {{ upstream: \"http://127.0.0.1:{dead}\" }}\n"
    ));
    let key = canary("down");
    for (provider, case, class) in [
        ("openai", "openai-error", "InternalServerError"),
        ("anthropic", "anthropic-error", "InternalServerError"),
        ("google", "google-error", "ServerError"),
    ] {
        let out = run_python(
            "sdk_check.py",
            &[case, &leash.base_url(provider), &key],
            &[],
        );
        assert_success(case, &out);
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(result["error_class"], class, "{provider}: {result}");
        assert_eq!(result["status"], 502, "{provider}: {result}");
        let message = result["message"].as_str().unwrap();
        assert!(
            message.contains("leash: upstream for provider"),
            "{provider}: {message}"
        );
    }
    let records = leash.wait_records(3);
    assert!(
        records
            .iter()
            .all(|r| r["status"] == 502 && r["error"] == "leash_upstream_unreachable"),
        "{records:#?}"
    );
    assert_no_canary(&leash, &key);
}
