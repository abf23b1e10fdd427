//! Alert rate limits: one alert per rule and team per interval, whatever
//! the number of violations, with memory that stays bounded.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use leash_tests::{
    harness::{Leash, WebhookReceiver, http_request, mock_providers_yaml},
    mock::MockProvider,
};
use serde_json::Value;

/// 10,000 requests that each trip an `alert` rule, from one team, then one
/// from another team (the control): the webhook gets exactly one alert per
/// team, and the gateway's memory stays bounded.
#[test]
fn ten_thousand_violations_send_one_alert_per_rule_and_team() {
    let mock = MockProvider::start();
    let hook = WebhookReceiver::start();
    let leash = Leash::start(&format!(
        "{}teams:\n  - {{ name: red, header: true }}\n  - {{ name: blue, header: true }}\npolicy:\n  version: 1\n  rules:\n    - {{ name: watch-emails, match: {{ detectors: [email] }}, action: alert }}\nalerts:\n  webhook: \"{}\"\n  min_interval_secs: 3600\n",
        mock_providers_yaml(&mock),
        hook.url
    ));
    let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"mail jane@example.com"}]}"#;
    let addr = leash.addr;
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(move || {
                for _ in 0..2500 {
                    let r = http_request(
                        addr,
                        "POST",
                        "/v1/openai/chat/completions",
                        &[("x-leash-team", "red")],
                        body,
                    );
                    assert_eq!(r.unwrap().0, 200);
                }
            });
        }
    });
    let r = http_request(
        addr,
        "POST",
        "/v1/openai/chat/completions",
        &[("x-leash-team", "blue")],
        body,
    );
    assert_eq!(r.unwrap().0, 200);
    let alerts = hook.wait(2);
    // The blue alert arrived after every red one was sent: had the limit
    // not held, the red ones would be there too.
    let teams: Vec<String> = alerts
        .iter()
        .map(|a| {
            serde_json::from_str::<Value>(a).unwrap()["team"]
                .as_str()
                .unwrap_or("-")
                .to_owned()
        })
        .collect();
    assert_eq!(teams, ["red", "blue"], "{alerts:#?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", leash.pid())).unwrap();
    let peak_mib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap()
        / 1024;
    assert!(peak_mib < 200, "peak RSS {peak_mib} MiB");
    leash_tests::results::record(
        "alert_limits",
        &serde_json::json!({"violations": 10_001, "alerts": alerts.len(), "peak_rss_mib": peak_mib}),
    );
}

/// A provider address that cannot enter the kernel's target map (the map
/// is full: injected with `LEASH_FAULT_TARGETS_FULL=1`) is never a silent
/// miss: it is counted and alerted, naming the host and the address.
#[test]
fn a_full_target_map_is_alerted() {
    if !leash_tests::harness::require_root() {
        return;
    }
    let hook = WebhookReceiver::start();
    let cgroup = leash_tests::agent::Cgroup::new("targets-full");
    let config = format!(
        "intercept:\n  cgroup: \"{}\"\n  resolve: true\n  proxy_port: {}\n  hosts:\n    - {{ name: localhost, kind: openai }}\nalerts: {{ webhook: \"{}\", min_interval_secs: 3600 }}\n",
        cgroup.path.display(),
        leash_tests::harness::free_port(),
        hook.url
    );
    let agent = leash_tests::agent::Agent::start_with_env(
        tempfile::tempdir().unwrap(),
        &config,
        Some(&cgroup),
        &[("LEASH_FAULT_TARGETS_FULL", "1")],
    );
    let alerts = hook.wait(1);
    let alert: Value = serde_json::from_str(&alerts[0]).unwrap();
    assert_eq!(alert["kind"], "intercept_targets_full", "{alert}");
    assert_eq!(alert["provider_host"], "localhost", "{alert}");
    assert!(
        ["127.0.0.1", "::1"].contains(&alert["address"].as_str().unwrap()),
        "{alert}"
    );
    let metrics = agent.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("leash_intercept_targets_full_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}
