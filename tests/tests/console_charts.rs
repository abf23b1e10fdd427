//! The live page's traffic chart against seeded traffic (allowed, blocked,
//! redacted, upstream errors, two providers): what headless Chromium plots
//! for each metric equals the API's series, the API's series equals the
//! audit records counted by minute, and clicking a bucket lists exactly
//! that bucket's requests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::collections::BTreeMap;

use leash_tests::harness::{Leash, http_request};
use serde_json::{Value, json};

const POLICY: &str = "version: 1\nrules:\n  - { name: block-secrets, match: { detectors: [secrets] }, action: block }\n  - { name: redact-pii, match: { detectors: [email] }, action: redact }\n";

/// One request through the gateway; its status.
fn send(leash: &Leash, provider: &str, text: &str, headers: &[(&str, &str)]) -> u16 {
    let (path, body) = if provider == "anthropic" {
        (
            "/v1/anthropic/v1/messages",
            json!({"model": "claude-sonnet-4", "max_tokens": 50, "messages": [{"role": "user", "content": text}]}),
        )
    } else {
        (
            "/v1/openai/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}),
        )
    };
    let mut all = vec![
        ("content-type", "application/json"),
        ("authorization", "Bearer sk-test"),
        ("x-api-key", "sk-test"),
        ("anthropic-version", "2023-06-01"),
    ];
    all.extend_from_slice(headers);
    http_request(leash.addr, "POST", path, &all, body.to_string().as_bytes())
        .unwrap()
        .0
}

/// What the records say per minute for `metric`: (total, parts).
fn expected(records: &[Value], metric: &str) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut out: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut overhead: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in records.iter().filter(|r| r["event"].is_null()) {
        let minute = r["ts"].as_str().unwrap()[..16].to_owned();
        let action = r["policy"]["action"].as_str().unwrap_or("allow");
        let counts = match metric {
            "requests" => true,
            "errors" => r["status"].as_u64().is_none_or(|s| s >= 500),
            "blocked" => action == "block",
            "redacted" => action == "redact",
            _ => {
                overhead
                    .entry(minute)
                    .or_default()
                    .push(r["overhead_ms"].as_f64().unwrap());
                continue;
            }
        };
        if counts {
            let provider = r["provider"].as_str().unwrap().to_owned();
            *out.entry(minute).or_default().entry(provider).or_default() += 1.0;
        }
    }
    for (minute, mut values) in overhead {
        values.sort_by(f64::total_cmp);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank among a handful of records"
        )]
        let at = |q: f64| values[((q * values.len() as f64).ceil() as usize).max(1) - 1];
        out.insert(
            minute,
            BTreeMap::from([("p50".to_owned(), at(0.5)), ("p99".to_owned(), at(0.99))]),
        );
    }
    out
}

/// Percentiles from the index's buckets are within 4.5 % of the exact
/// ones (or both under 2 µs).
fn close(plotted: f64, exact: f64) -> bool {
    (plotted - exact).abs() <= exact * 0.045 || (plotted < 0.002 && exact < 0.002)
}

/// What Chromium plotted for `metric` equals the API's series, and the
/// series equals the records counted by minute.
fn check_metric(leash: &Leash, seen: &Value, records: &[Value], metric: &str) {
    let (status, api) = leash.api(
        "GET",
        &format!("/api/series?range=hour&metric={metric}"),
        b"",
    );
    assert_eq!(status, 200, "{api}");
    let plotted = seen["metrics"][metric].as_array().unwrap();
    assert_eq!(plotted.len(), 60, "{metric}");
    let want = expected(records, metric);
    let mut compared = 0;
    for bar in plotted {
        let start = bar["start"].as_str().unwrap();
        // The plotted bar is the API's bucket (matched by its start:
        // the run may cross a minute between the two reads)...
        if let Some(b) = api["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["start"] == start)
        {
            assert_eq!(
                bar["total"].as_f64(),
                b["total"].as_f64(),
                "{metric} {start}"
            );
            for (part, v) in b["parts"].as_object().unwrap() {
                assert_eq!(
                    bar["parts"][part].as_f64(),
                    v.as_f64(),
                    "{metric} {start} {part}"
                );
            }
            if metric != "overhead" {
                let sum: f64 = bar["parts"]
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|v| v.as_f64().unwrap())
                    .sum();
                assert!((sum - bar["total"].as_f64().unwrap()).abs() < 1e-9, "{bar}");
            }
        }
        // ...and the records counted by minute.
        let exact = want.get(start).cloned().unwrap_or_default();
        let parts = bar["parts"].as_object().unwrap();
        assert_eq!(
            parts.len(),
            exact.len(),
            "{metric} {start}: {bar} vs {exact:?}"
        );
        for (part, v) in &exact {
            let got = parts[part].as_f64().unwrap();
            if metric == "overhead" {
                assert!(
                    close(got, *v),
                    "{metric} {start} {part}: {got} vs exact {v}"
                );
            } else {
                assert!(
                    (got - v).abs() < 1e-9,
                    "{metric} {start} {part}: {got} vs {v}"
                );
            }
            compared += 1;
        }
    }
    assert!(compared > 0, "{metric}: no bucket with traffic was plotted");
}

#[test]
fn the_traffic_chart_plots_the_records_and_filters_the_table() {
    let (_mock, leash) = leash_tests::harness::start_with_policy_file(POLICY, "");
    let mut statuses = Vec::new();
    for i in 0..3 {
        statuses.push(send(&leash, "openai", &format!("hello {i}"), &[]));
    }
    statuses.push(send(&leash, "anthropic", "hello", &[]));
    statuses.push(send(&leash, "anthropic", "hi", &[]));
    statuses.push(send(&leash, "openai", "key AKIAZ7QX3PLM9V2KD4RT", &[]));
    statuses.push(send(&leash, "anthropic", "key AKIAZ7QX3PLM9V2KD4RT", &[]));
    statuses.push(send(&leash, "openai", "mail bob@example.com", &[]));
    statuses.push(send(&leash, "openai", "fail", &[("x-mock-status", "500")]));
    statuses.push(send(
        &leash,
        "anthropic",
        "fail",
        &[("x-mock-status", "503")],
    ));
    assert_eq!(statuses, [200, 200, 200, 200, 200, 403, 403, 200, 500, 503]);
    let records = leash.wait_records(statuses.len());

    let seen = leash_tests::browser::run_script(
        "charts.mjs",
        &format!("http://{}", leash.admin),
        &[
            &leash_tests::browser::screenshots().display().to_string(),
            &leash.console_login_url(),
        ],
    );
    for metric in ["requests", "errors", "blocked", "redacted", "overhead"] {
        check_metric(&leash, &seen, &records, metric);
    }
    // Click-to-filter: the table lists exactly the bucket's requests (none
    // for a minute without traffic).
    assert_eq!(seen["empty_total"], 0);
    assert_eq!(seen["empty_rows"], 0);
    let start = seen["picked_start"].as_str().unwrap();
    let mut want: Vec<&str> = records
        .iter()
        .filter(|r| r["event"].is_null() && r["ts"].as_str().unwrap().starts_with(start))
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let mut got: Vec<&str> = seen["filtered_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want);
    assert!(
        seen["chip"]
            .as_str()
            .unwrap()
            .contains(&start.replace('T', " "))
    );
    assert_eq!(seen["all_rows"], records.len());
    assert_eq!(seen["cleared_rows"], records.len());
}
