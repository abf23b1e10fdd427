//! Streaming through the gateway as raw clients and curl see it: chunks are
//! delivered as the provider sends them, never buffered.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::time::Duration;

use leash_tests::{
    harness::{Leash, assert_success, mock_providers_yaml, run, timed_stream},
    mock::{MockProvider, text_of},
};

/// Each (path, body) asks the mock for a stream in one provider's API. The
/// `OpenAI` one asks for usage itself, so Leash adds and removes nothing and
/// every event the mock sends reaches the client.
const STREAMS: [(&str, &str); 3] = [
    (
        "/v1/openai/chat/completions",
        r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#,
    ),
    (
        "/v1/anthropic/v1/messages",
        r#"{"model":"claude-sonnet-4-5","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    ),
    (
        "/v1/google/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
    ),
];

#[test]
fn stream_chunks_300ms_apart_arrive_within_50ms_of_being_sent() {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    for (i, (path, body)) in STREAMS.iter().enumerate() {
        let arrivals = timed_stream(
            leash.addr,
            path,
            &[
                ("x-mock-chunk-delay-ms", "300"),
                ("x-mock-chunks", "3"),
                ("authorization", "Bearer sk-test"),
            ],
            body.as_bytes(),
        );
        let requests = mock.requests();
        let sent = requests[i].chunk_sent.lock().unwrap().clone();
        assert!(sent.len() >= 3, "{path}: mock sent {} chunks", sent.len());
        // The moment the n-th SSE event (n-th "data:") reached the client.
        let mut seen = Vec::new();
        let mut received_at = Vec::new();
        for (at, bytes) in &arrivals {
            seen.extend_from_slice(bytes);
            let events = seen.windows(5).filter(|w| w == b"data:").count();
            while received_at.len() < events {
                received_at.push(*at);
            }
        }
        assert_eq!(received_at.len(), sent.len(), "{path}: every event arrives");
        for (n, (sent_at, got_at)) in sent.iter().zip(&received_at).enumerate() {
            let lag = got_at.duration_since(*sent_at);
            assert!(
                lag < Duration::from_millis(50),
                "{path}: event {n} reached the client {lag:?} after the mock sent it"
            );
        }
        let spread = received_at.last().unwrap().duration_since(received_at[0]);
        assert!(
            spread >= Duration::from_millis(550),
            "{path}: events bunched together ({spread:?})"
        );
    }
    let records = leash.wait_records(3);
    assert!(
        records
            .iter()
            .all(|r| r["stream"] == true && r["completed"] == true),
        "{records:#?}"
    );
}

fn curl_stream(url: &str, body: &str, http2: bool) -> String {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "-N",
        "--fail-with-body",
        "-H",
        "content-type: application/json",
        "-H",
        "authorization: Bearer sk-curl",
        "-d",
        body,
    ]);
    cmd.arg(if http2 {
        "--http2-prior-knowledge"
    } else {
        "--http1.1"
    });
    cmd.arg(url);
    let out = run(&mut cmd);
    assert_success(&format!("curl {url}"), &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn curl_streams_and_non_streams_over_http1_and_h2c() {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    let base = format!("http://{}", leash.addr);
    for http2 in [false, true] {
        for (path, body) in STREAMS {
            let out = curl_stream(&format!("{base}{path}"), body, http2);
            for piece in leash_tests::mock::PIECES {
                assert!(
                    out.contains(piece),
                    "{path} (h2={http2}): {piece:?} missing in {out}"
                );
            }
        }
        let out = curl_stream(
            &format!("{base}/v1/openai/chat/completions"),
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
            http2,
        );
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["choices"][0]["message"]["content"], text_of(5));
    }
    let records = leash.wait_records(8);
    assert_eq!(records.len(), 8);
    // Every call was accounted for, streams included.
    assert!(
        records
            .iter()
            .all(|r| r["usage"]["input_tokens"].as_u64().is_some_and(|n| n > 0)),
        "{records:#?}"
    );
    for r in &mock.requests() {
        assert_eq!(r.header("authorization"), Some("Bearer sk-curl"));
        assert_eq!(r.header("accept-encoding"), Some("identity"));
    }
}

/// Leash asks `OpenAI` for usage in chat streams the client did not ask it
/// for, and removes that extra chunk: the client sees exactly the stream it
/// asked for, and the record still has exact usage.
#[test]
fn injected_stream_usage_is_invisible_to_the_client() {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    let url = format!("http://{}/v1/openai/chat/completions", leash.addr);
    let plain =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let out = curl_stream(&url, plain, false);
    assert!(
        !out.contains("\"usage\""),
        "the injected usage chunk reached the client:\n{out}"
    );
    assert!(out.trim_end().ends_with("data: [DONE]"), "{out}");
    assert_eq!(
        out.matches("data: ").count(),
        7,
        "5 pieces, the finish chunk and [DONE]:\n{out}"
    );
    let asked = mock.requests()[0].json();
    assert_eq!(
        asked["stream_options"]["include_usage"], true,
        "usage was not requested upstream"
    );
    // A client that asked for usage gets it.
    let with_usage = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let out = curl_stream(&url, with_usage, false);
    assert_eq!(out.matches("\"usage\"").count(), 1, "{out}");
    let records = leash.wait_records(2);
    for r in &records {
        assert_eq!(r["usage"]["input_tokens"], 11, "{r}");
        assert_eq!(r["usage"]["output_tokens"], 7, "{r}");
        assert!(r["cost_usd"].as_f64().is_some_and(|c| c > 0.0), "{r}");
    }
}

/// Non-streaming responses carry their cost (and are complete records of
/// it); streams never wait for it.
#[test]
fn non_streaming_responses_carry_their_cost_in_a_header() {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    let (status, headers, _) = leash_tests::harness::http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[],
        br#"{"model":"gpt-4o-mini","messages":[]}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let cost: f64 = header("x-leash-cost-usd")
        .expect("cost header")
        .parse()
        .unwrap();
    assert!((cost - 0.000_005_625).abs() < 1e-12, "{cost}");
    let id = header("x-leash-request-id").unwrap();
    let rec = &leash.wait_records(1)[0];
    assert_eq!(rec["id"], id);
    assert!((rec["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12);
    let (_, headers, _) = leash_tests::harness::http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[],
        br#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#,
    )
    .unwrap();
    assert!(
        !headers.iter().any(|(k, _)| k == "x-leash-cost-usd"),
        "a stream waited for its cost"
    );
}
