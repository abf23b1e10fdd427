//! Budgets: spend over a team's budget is refused with the provider's own
//! 429 and fires the alert webhook; the spent amount survives a restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use leash_tests::{
    harness::{
        Leash, WebhookReceiver, assert_success, canary, http_request, mock_providers_yaml,
        run_python,
    },
    mock::MockProvider,
};
use serde_json::Value;

const CHAT: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

fn chat(leash: &Leash, team: &str, key: &str) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let (status, _, body) = http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[("x-leash-team", team), ("authorization", &auth)],
        CHAT,
    )
    .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[test]
fn a_breached_budget_refuses_with_429_alerts_and_survives_restart() {
    let mock = MockProvider::start();
    let hook = WebhookReceiver::start();
    // One gpt-4o-mini call costs $0.000005625 at list price: two fit under
    // the limit, the third is refused.
    let config = format!(
        "{}budgets:\n  - {{ team: interns, period: month, limit_usd: 0.00001 }}\nalerts:\n  webhook: \"{}\"\n",
        mock_providers_yaml(&mock),
        hook.url
    );
    let mut leash = Leash::start(&config);
    let key = canary("budget");
    assert_eq!(chat(&leash, "interns", &key).0, 200);
    assert_eq!(chat(&leash, "interns", &key).0, 200);
    leash.wait_records(2);
    let (status, body) = chat(&leash, "interns", &key);
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert_eq!(body["error"]["code"], "leash_budget_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("interns/month"),
        "{body}"
    );
    // Other teams are not affected.
    assert_eq!(chat(&leash, "research", &key).0, 200);
    assert_eq!(
        mock.requests().len(),
        3,
        "the refused request never reached the provider"
    );

    // The SDK raises its ordinary rate-limit error.
    let out = run_python(
        "sdk_check.py",
        &["openai-error", &leash.base_url("openai"), &key],
        &[("LEASH_TEST_HEADERS", r#"{"x-leash-team": "interns"}"#)],
    );
    assert_success("openai SDK over budget", &out);
    let sdk: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sdk["error_class"], "RateLimitError", "{sdk}");
    assert_eq!(sdk["status"], 429);

    let alerts = hook.wait(1);
    let alert: Value = serde_json::from_str(&alerts[0]).unwrap();
    assert_eq!(alert["type"], "budget_exceeded", "{alert}");
    assert_eq!(alert["budget"], "interns/month");
    assert_eq!(alert["team"], "interns");
    assert!((alert["limit_usd"].as_f64().unwrap() - 0.00001).abs() < 1e-12);
    assert!(
        alerts.iter().all(|a| !a.contains(&key)),
        "an alert carried the API key"
    );
    // Rate-limited: repeated breaches within a minute send one alert.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(hook.wait(1).len(), 1);
    let metrics = leash.metrics();
    assert!(
        metrics.contains(r#"leash_requests_total{provider="openai",model="gpt-4o-mini",team="interns",action="block",status="429"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"leash_cost_usd_total{provider="openai",model="gpt-4o-mini",team="interns"}"#
        )
    );
    let remaining = metrics
        .lines()
        .find(|l| l.starts_with(r#"leash_budget_remaining_usd{budget="interns/month"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no budget gauge:\n{metrics}"));
    assert!(remaining <= 0.0, "{remaining}");

    // The spend is rebuilt from the audit trail: still over budget.
    leash.restart();
    assert_eq!(chat(&leash, "interns", &key).0, 429);
    assert_eq!(chat(&leash, "research", &key).0, 200);
}
