//! The console on a trail that grows: its totals come from the audit index
//! (per-segment summaries) and must stay exactly the sums of the records
//! through rotation, restarts, `kill -9` mid-segment and `leash audit
//! reindex`; past its concurrency limit a query is refused with 429, never
//! queued behind the others.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{collections::BTreeMap, time::Instant};

use leash_tests::{
    harness::{Leash, assert_success, http_request, mock_providers_yaml, run},
    mock::MockProvider,
};
use serde_json::{Value, json};

fn chat(leash: &Leash, model: &str, text: &str) -> u16 {
    let body = json!({"model": model, "messages": [{"role": "user", "content": text}]});
    http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .unwrap()
    .0
}

/// The console's spend and violations equal the sums of the records on
/// disk.
fn assert_console_matches_records(leash: &Leash, what: &str) {
    let records = leash.audit_records();
    let requests: Vec<&Value> = records.iter().filter(|r| r["event"].is_null()).collect();
    let (status, spend) = leash.api("GET", "/api/spend", b"");
    assert_eq!(status, 200, "{what}: {spend}");
    assert_eq!(spend["total"]["requests"], requests.len(), "{what}");
    let input: u64 = requests
        .iter()
        .filter_map(|r| r["usage"]["input_tokens"].as_u64())
        .sum();
    assert_eq!(spend["total"]["input_tokens"], input, "{what}");
    let cost: f64 = requests.iter().filter_map(|r| r["cost_usd"].as_f64()).sum();
    assert!(
        (spend["total"]["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9,
        "{what}: {} vs {cost}",
        spend["total"]["cost_usd"]
    );
    let mut by_model: BTreeMap<String, u64> = BTreeMap::new();
    for r in &requests {
        *by_model
            .entry(r["model"].as_str().unwrap_or("-").to_owned())
            .or_default() += 1;
    }
    for (model, n) in &by_model {
        assert_eq!(spend["by_model"][model]["requests"], *n, "{what}: {model}");
    }
    let blocked = requests
        .iter()
        .filter(|r| r["policy"]["action"] == "block")
        .count();
    let (_, violations) = leash.api("GET", "/api/violations", b"");
    assert_eq!(
        violations["by_rule"]["block-secrets"]["requests"], blocked,
        "{what}: {violations}"
    );
    let (_, listed) = leash.api("GET", "/api/records?limit=5", b"");
    assert_eq!(
        listed["records"][0]["id"],
        records.last().unwrap()["id"],
        "{what}: newest first"
    );
}

#[test]
fn console_totals_stay_exact_across_rotation_restart_kill_and_reindex() {
    let mock = MockProvider::start();
    let config = format!(
        "{}audit: {{ segment_max_bytes: 8192 }}\npolicy:\n  version: 1\n  rules:\n    - {{ name: block-secrets, match: {{ detectors: [secrets] }}, action: block }}\n",
        mock_providers_yaml(&mock)
    );
    let mut leash = Leash::start(&config);
    let send = |leash: &Leash, from: usize, to: usize| {
        for i in from..to {
            let model = if i % 3 == 0 { "gpt-4o" } else { "gpt-4o-mini" };
            let text = if i % 7 == 0 {
                "key AKIAZ7QX3PLM9V2KD4RT".to_owned()
            } else {
                format!("hello {i}")
            };
            let status = chat(leash, model, &text);
            assert!(status == 200 || status == 403, "{status}");
        }
        leash.wait_records(to);
    };
    send(&leash, 0, 60);
    let segments = leash_tests::harness::segment_files(&leash.audit_dir);
    assert!(segments.len() >= 3, "no rotation: {segments:?}");
    assert_console_matches_records(&leash, "after rotation");
    // The closed segments' summaries are on disk.
    let stored = std::fs::read_dir(leash.audit_dir.join("index"))
        .unwrap()
        .count();
    assert!(stored >= segments.len() - 1, "{stored} summaries");

    // More traffic, then a graceful restart.
    send(&leash, 60, 90);
    leash.restart();
    assert_console_matches_records(&leash, "after a restart");

    // kill -9 with the newest segment half full, then more traffic.
    send(&leash, 90, 100);
    leash.kill9();
    leash.restart();
    send(&leash, 100, 110);
    assert_console_matches_records(&leash, "after kill -9");

    // leash audit reindex rebuilds every summary from the segments.
    let out = run(leash_tests::harness::leash_command()
        .args(["audit", "reindex", "--dir"])
        .arg(&leash.audit_dir));
    assert_success("leash audit reindex", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("110 requests"), "{text}");
    leash.restart();
    assert_console_matches_records(&leash, "after reindex");
}

/// Two slow queries hold both reading slots (3 s each, injected); a third
/// waits its short turn (1 s) and is refused with 429 and `retry-after`,
/// long before a slot frees.
#[test]
fn a_console_query_past_the_limit_gets_429_not_a_stall() {
    let mock = MockProvider::start();
    let leash = Leash::start_with_env(
        tempfile::tempdir().unwrap(),
        &mock_providers_yaml(&mock),
        &[("LEASH_FAULT_CONSOLE_DELAY_MS", "3000")],
    );
    assert_eq!(chat(&leash, "gpt-4o-mini", "hi"), 200);
    leash.wait_records(1);
    let token = leash.admin_token();
    let admin = leash.admin;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let token = token.clone();
            std::thread::spawn(move || {
                leash_tests::harness::http_request(
                    admin,
                    "GET",
                    "/api/spend",
                    &[("authorization", &format!("Bearer {token}"))],
                    b"",
                )
                .unwrap()
                .0
            })
        })
        .collect();
    // Both hold their slot (a line each in the log) before the third asks.
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while leash.logs().matches("console query holds a slot").count() < 2 {
        assert!(Instant::now() < deadline, "{}", leash.logs());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let started = Instant::now();
    let (status, headers, _) = http_request(
        leash.admin,
        "GET",
        "/api/violations",
        &[("authorization", &format!("Bearer {token}"))],
        b"",
    )
    .unwrap();
    assert_eq!(status, 429);
    assert!(
        headers.iter().any(|(k, v)| k == "retry-after" && v == "1"),
        "{headers:?}"
    );
    // At most the short queue's wait (1 s), never until a slot frees (3 s).
    assert!(
        started.elapsed().as_millis() < 2500,
        "the refusal waited for a slot"
    );
    // LLM traffic goes on meanwhile.
    assert_eq!(chat(&leash, "gpt-4o-mini", "still served"), 200);
    for t in slow {
        assert_eq!(t.join().unwrap(), 200);
    }
    // Slots free again: served.
    assert_eq!(leash.api("GET", "/api/violations", b"").0, 200);
}
