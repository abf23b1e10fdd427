//! Routes of the unified API: fallbacks after a 500, a 429, a timeout and a
//! refused connection (the official `OpenAI` SDK sees one success; the
//! record lists every attempt), no retry after a 400 or once a stream
//! started, a weighted split, and a circuit breaker that skips a failing
//! target and lets it back after its cool-down.
//!
//! The mock fails on purpose under a base path: `/status/<code>` answers
//! every request with that status, `/delay/<ms>` answers late, `/cut/<n>`
//! ends a stream after n events.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::time::{Duration, Instant};

use leash_tests::{
    harness::{Leash, assert_success, free_port, run_python},
    http::{http_request, post_json},
    mock::{MockProvider, text_of},
};
use serde_json::{Value, json};

const SONNET: &str = "claude-sonnet-4-5";
const FLASH: &str = "gemini-2.5-flash";

fn config(mock: &MockProvider, routes: &str) -> String {
    let url = mock.url();
    let closed = free_port();
    format!(
        "providers:
  openai: {{ upstream: \"{url}/v1\" }}
  anthropic: {{ upstream: \"{url}\" }}
  google: {{ upstream: \"{url}\" }}
  a500: {{ kind: anthropic, upstream: \"{url}/status/500\" }}
  a429: {{ kind: anthropic, upstream: \"{url}/status/429\" }}
  a400: {{ kind: anthropic, upstream: \"{url}/status/400\" }}
  slow: {{ kind: anthropic, upstream: \"{url}/delay/5000\" }}
  cut: {{ kind: anthropic, upstream: \"{url}/cut/4\" }}
  down: {{ kind: anthropic, upstream: \"http://127.0.0.1:{closed}\" }}
credentials:
  held: {{ env: LEASH_TEST_HELD_KEY }}
routes:
{routes}"
    )
}

/// The official `OpenAI` SDK's chat call with `model` (a route name).
/// The key Leash holds for every target; the client's (`sk-route`) must
/// never reach a provider.
const HELD_KEY: &str = "sk-held-by-leash-7f3a";

fn start(mock: &MockProvider, routes: &str) -> Leash {
    Leash::start_with_env(
        tempfile::tempdir().unwrap(),
        &config(mock, routes),
        &[("LEASH_TEST_HELD_KEY", HELD_KEY)],
    )
}

/// Every request the mock got carries the held key in its provider's
/// header, and none the client's.
fn assert_held_key_only(mock: &MockProvider) {
    for r in mock.requests() {
        let text = format!("{:?}", r.headers);
        assert!(
            !text.contains("sk-route"),
            "the client's key reached {}: {text}",
            r.uri
        );
        let held = ["x-api-key", "x-goog-api-key", "authorization"]
            .iter()
            .any(|h| r.header(h).is_some_and(|v| v.contains(HELD_KEY)));
        assert!(held, "no held key at {}: {text}", r.uri);
    }
}

fn sdk_chat(leash: &Leash, model: &str) -> Value {
    let out = run_python(
        "unified_check.py",
        &[
            "chat",
            &format!("http://{}/v1", leash.addr),
            "sk-route",
            model,
        ],
        &[],
    );
    assert_success(&format!("chat via {model}\n{}", leash.logs()), &out);
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap()
}

/// A raw unified chat call: status and body.
fn raw_chat(leash: &Leash, model: &str, stream: bool) -> (u16, String) {
    let body =
        json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, body) = post_json(
        leash.addr,
        "/v1/chat/completions",
        "sk-route",
        body.to_string().as_bytes(),
    );
    (status, body)
}

/// How many requests the mock received whose path starts with `prefix`.
fn seen(mock: &MockProvider, prefix: &str) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.uri.starts_with(prefix))
        .count()
}

/// The last record (waiting for `n` records in all).
fn record(leash: &Leash, n: usize) -> Value {
    leash.wait_records(n)[n - 1].clone()
}

#[test]
fn fallback_after_500_429_timeout_and_refused_connection() {
    let mock = MockProvider::start();
    let routes = format!(
        "  after-500: {{ backoff_ms: 10, targets: [{{provider: a500, model: m, credential: held}}, {{provider: google, model: {FLASH}, credential: held}}] }}
  after-429: {{ backoff_ms: 10, targets: [{{provider: a429, model: m, credential: held}}, {{provider: anthropic, model: {SONNET}, credential: held}}] }}
  after-timeout: {{ backoff_ms: 10, targets: [{{provider: slow, model: m, credential: held, timeout_ms: 400}}, {{provider: anthropic, model: {SONNET}, credential: held}}] }}
  after-down: {{ backoff_ms: 10, targets: [{{provider: down, model: m, credential: held}}, {{provider: anthropic, model: {SONNET}, credential: held}}] }}
  no-retry-400: {{ targets: [{{provider: a400, model: m, credential: held}}, {{provider: anthropic, model: {SONNET}, credential: held}}] }}
"
    );
    let leash = start(&mock, &routes);
    let mut records = 0;
    for (route, failing, status) in [
        ("after-500", "/status/500/", Some(500)),
        ("after-429", "/status/429/", Some(429)),
        ("after-timeout", "/delay/5000/", None),
        ("after-down", "", Some(502)),
    ] {
        let started = Instant::now();
        let r = sdk_chat(&leash, route);
        assert_eq!(r["text"], text_of(5), "{route}: {r}");
        // Each attempt is a call of its own in the trail; the last one
        // lists them all.
        records += 2;
        let rec = record(&leash, records);
        let attempts = rec["unified"]["attempts"].as_array().unwrap();
        assert_eq!(rec["unified"]["route"], route, "{rec}");
        assert_eq!(attempts.len(), 2, "{route}: {rec}");
        assert_eq!(attempts[0]["status"], json!(status), "{route}: {rec}");
        assert_eq!(attempts[1]["status"], 200, "{route}: {rec}");
        assert_eq!(rec["status"], 200);
        if !failing.is_empty() {
            assert_eq!(
                seen(&mock, failing),
                1,
                "{route}: the failing target was tried once"
            );
        }
        if route == "after-timeout" {
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "{route}: waited for the slow target"
            );
        }
    }
    assert_held_key_only(&mock);
    for (place, text) in [
        ("logs", leash.logs()),
        ("audit", leash.audit_text()),
        ("metrics", leash.metrics()),
    ] {
        assert!(!text.contains(HELD_KEY), "the held key is in the {place}");
    }
    // A 400 is the client's fault: no retry, the SDK sees it.
    let before = mock.requests().len();
    let (status, body) = raw_chat(&leash, "no-retry-400", false);
    assert_eq!(status, 400, "{body}");
    assert_eq!(mock.requests().len(), before + 1, "retried after a 400");
    let metrics = leash.metrics();
    for line in [
        "leash_route_attempts_total{route=\"after-500\",target=\"a500/m\",outcome=\"failure\"} 1",
        "leash_route_attempts_total{route=\"after-500\",target=\"google/gemini-2.5-flash\",outcome=\"success\"} 1",
        "leash_route_attempts_total{route=\"no-retry-400\",target=\"a400/m\",outcome=\"client_error\"} 1",
    ] {
        assert!(metrics.contains(line), "no {line}:\n{metrics}");
    }
}

/// A stream whose answer started is never retried, even when it breaks.
#[test]
fn a_stream_is_not_retried_after_its_first_byte() {
    let mock = MockProvider::start();
    let routes = format!(
        "  cut-stream: {{ targets: [{{provider: cut, model: m, credential: held}}, {{provider: google, model: {FLASH}, credential: held}}] }}\n"
    );
    let leash = start(&mock, &routes);
    let (status, body) = raw_chat(&leash, "cut-stream", true);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("chat.completion.chunk"), "{body}");
    // The record of the cut stream is written once it ended: a later event.
    let rec = record(&leash, 1);
    assert_eq!(rec["provider"], "cut", "{rec}");
    assert_eq!(
        seen(&mock, "/v1beta/"),
        0,
        "the broken stream was retried elsewhere"
    );
    assert_eq!(mock.requests().len(), 1);
}

#[test]
fn weighted_split_over_2000_requests() {
    let mock = MockProvider::start();
    let routes = format!(
        "  split: {{ strategy: weighted, targets: [{{provider: openai, model: gpt-4o-mini, credential: held, weight: 3}}, {{provider: anthropic, model: {SONNET}, credential: held, weight: 1}}] }}\n"
    );
    let leash = start(&mock, &routes);
    let n = 2000;
    for _ in 0..n {
        let (status, body) = raw_chat(&leash, "split", false);
        assert_eq!(status, 200, "{body}");
    }
    let openai = seen(&mock, "/v1/chat/completions");
    let anthropic = seen(&mock, "/v1/messages");
    assert_eq!(openai + anthropic, n);
    #[allow(clippy::cast_precision_loss, reason = "small counts")]
    let share = openai as f64 / n as f64;
    assert!(
        (share - 0.75).abs() <= 0.05,
        "weight 3:1 gave {openai}:{anthropic} ({share:.3})"
    );
    leash_tests::results::record(
        "route_weighted_split",
        &json!({"requests": n, "weights": [3, 1], "first": openai, "second": anthropic, "share": share}),
    );
}

/// After `failures` failures a target is skipped (its provider sees nothing
/// more) until the cool-down passes; then it is tried again.
#[test]
fn the_circuit_breaker_skips_a_failing_target_and_lets_it_back() {
    let mock = MockProvider::start();
    let routes = format!(
        "  guarded: {{ backoff_ms: 1, breaker: {{failures: 2, cooldown_secs: 2}}, targets: [{{provider: a500, model: m, credential: held}}, {{provider: anthropic, model: {SONNET}, credential: held}}] }}\n"
    );
    let leash = start(&mock, &routes);
    let chat = || {
        let (status, body) = raw_chat(&leash, "guarded", false);
        assert_eq!(status, 200, "{body}");
    };
    chat();
    chat();
    assert_eq!(seen(&mock, "/status/500/"), 2);
    let opened = Instant::now();
    // Open: the failing target is skipped.
    for _ in 0..5 {
        chat();
    }
    assert_eq!(
        seen(&mock, "/status/500/"),
        2,
        "tried while the breaker was open"
    );
    assert!(leash.metrics().contains(
        "leash_route_attempts_total{route=\"guarded\",target=\"a500/m\",outcome=\"skipped\"} 5"
    ));
    // After the cool-down it is tried again (half open): the event is the
    // failing provider's third request.
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen(&mock, "/status/500/") < 3 {
        assert!(
            Instant::now() < deadline,
            "never tried again after the cool-down"
        );
        chat();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        opened.elapsed() >= Duration::from_secs(2),
        "tried again before the cool-down ({:?})",
        opened.elapsed()
    );
}

#[test]
fn routes_are_validated_against_the_providers() {
    let mock = MockProvider::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leash.yaml");
    std::fs::write(
        &path,
        config(
            &mock,
            "  bad: { targets: [{provider: nowhere, model: m}] }\n",
        ),
    )
    .unwrap();
    let out = leash_tests::harness::run(
        leash_tests::harness::leash_command()
            .args(["gateway", "--config"])
            .arg(&path)
            .env("LEASH_TEST_HELD_KEY", HELD_KEY),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("routes.bad.targets[0].provider"), "{err}");
}

/// A native route (`/v1/<route>/…`): the official Anthropic SDK, its base URL
/// the route, falls back from a failing region to a working one; each gets
/// the request with its own model. Gemini's model, in the path, too.
#[test]
fn a_native_route_falls_back_within_one_api() {
    let mock = MockProvider::start();
    let routes = format!(
        "  claude-ha: {{ backoff_ms: 5, targets: [{{provider: a500, model: claude-eu, credential: held}}, {{provider: anthropic, model: {SONNET}, credential: held}}] }}
  gemini-ha: {{ backoff_ms: 5, targets: [{{provider: google, model: {FLASH}, credential: held}}] }}
"
    );
    let leash = start(&mock, &routes);
    let out = run_python(
        "sdk_check.py",
        &[
            "anthropic",
            &format!("http://{}/v1/claude-ha", leash.addr),
            "sk-route",
            &text_of(5),
        ],
        &[],
    );
    assert_success(
        &format!("anthropic SDK via a native route\n{}", leash.logs()),
        &out,
    );
    let requests = mock.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests[0].uri.starts_with("/status/500/v1/messages"));
    assert_eq!(requests[0].json()["model"], "claude-eu");
    assert_eq!(requests[1].uri, "/v1/messages");
    assert_eq!(requests[1].json()["model"], SONNET);
    let rec = record(&leash, 2);
    assert_eq!(rec["unified"]["api"], "native", "{rec}");
    assert_eq!(
        rec["unified"]["attempts"].as_array().unwrap().len(),
        2,
        "{rec}"
    );
    // Gemini names the model in the path: the target's replaces the client's.
    let (status, _, body) = http_request(
        leash.addr,
        "POST",
        "/v1/gemini-ha/v1beta/models/any-model:generateContent",
        &[("content-type", "application/json")],
        br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        mock.requests().last().unwrap().uri,
        format!("/v1beta/models/{FLASH}:generateContent")
    );
    assert_held_key_only(&mock);
}
