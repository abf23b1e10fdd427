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

/// A chat with `model` for `team`: status and body.
fn chat_model(leash: &Leash, team: &str, model: &str) -> (u16, Value) {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let (status, _, body) = http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[("x-leash-team", team)],
        body.as_bytes(),
    )
    .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A budget on a model counts its dated and suffixed snapshots too (the
/// price table's rule), so a `gpt-4o-2024-08-06` call is no way around a
/// `gpt-4o` budget; the control is another model, outside it.
#[test]
fn a_dated_model_is_charged_to_its_base_models_budget() {
    let mock = MockProvider::start();
    // One gpt-4o call at list price: 11 input (3 cached) and 7 output tokens.
    let leash = Leash::start(&format!(
        "{}budgets:\n  - {{ name: gpt-4o-cap, model: gpt-4o, period: day, limit_usd: 0.00001 }}\n",
        mock_providers_yaml(&mock)
    ));
    assert_eq!(chat_model(&leash, "ml", "gpt-4o-2024-08-06").0, 200);
    let first = leash.wait_records(1);
    assert!(first[0]["cost_usd"].as_f64().unwrap() > 0.0);
    // The snapshot's spend used the budget up: the next snapshot call, and
    // a plain gpt-4o call, are refused.
    let (status, body) = chat_model(&leash, "ml", "gpt-4o-2024-11-20");
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt-4o-cap")
    );
    assert_eq!(chat_model(&leash, "ml", "gpt-4o").0, 429);
    // Control: another model is outside this budget.
    assert_eq!(chat_model(&leash, "ml", "gpt-4.1-mini").0, 200);
    assert_eq!(mock.requests().len(), 2);
}

/// A model without a price under a budget is never free: refused with a
/// clear message unless the budget names a price for such models, which is
/// then charged (and recorded).
#[test]
fn an_unpriced_model_under_a_budget_is_refused_or_charged() {
    let mock = MockProvider::start();
    let leash = Leash::start(&format!(
        "{}budgets:\n  - {{ name: strict, team: a, period: day, limit_usd: 10 }}\n  - {{ name: priced, team: b, period: day, limit_usd: 10, unpriced_price: {{ input: 1000, output: 1000 }} }}\n",
        mock_providers_yaml(&mock)
    ));
    let (status, body) = chat_model(&leash, "a", "acme-private-llm");
    assert_eq!(status, 403, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no price") && message.contains("strict"),
        "{message}"
    );
    assert!(mock.requests().is_empty());
    // Control: a priced model under the same budget goes through.
    assert_eq!(chat_model(&leash, "a", "gpt-4o-mini").0, 200);
    // With a fallback price: charged at it.
    assert_eq!(chat_model(&leash, "b", "acme-private-llm").0, 200);
    let records = leash.wait_records(3);
    let charged = records
        .iter()
        .find(|r| r["model"] == "acme-private-llm" && r["status"] == 200)
        .unwrap();
    // 11 input and 7 output tokens at $1000 per million each.
    let cost = charged["cost_usd"].as_f64().unwrap();
    assert!((cost - 0.018).abs() < 1e-9, "{charged}");
}
