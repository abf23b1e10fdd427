//! Tool policy with the official SDKs: the tools a request offers are
//! matched by name (`match.tool.offered`), blocked or stripped per team
//! before the provider sees them, and listed in the audit record.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use leash_tests::{
    gateway::{Leash, start_with_policy_file},
    harness::{assert_success, run_python},
};
use serde_json::{Value, json};

const POLICY: &str = r#"version: 1
rules:
  - { name: shell-blocked, match: { team: [contractors], tool: { offered: ["shell*"] } }, action: block }
  - { name: shell-stripped, match: { team: [interns], tool: { offered: ["shell*"] } }, action: strip }
  - { name: tools-seen, match: { tool: { offered: ["*"] } }, action: annotate, tags: [tools] }
"#;

/// `tools_check.py` for `provider` as a member of `team`.
fn offer_tools(leash: &Leash, provider: &str, team: &str) -> Value {
    let headers = json!({ "x-leash-team": team }).to_string();
    let out = run_python(
        "tools_check.py",
        &[provider, &leash.base_url(provider), "sk-test-key"],
        &[("LEASH_TEST_HEADERS", &headers)],
    );
    assert_success(&format!("tools_check.py {provider} as {team}"), &out);
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

/// The tool names a request the provider received offers, in its shape.
fn offered(request: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for tool in request["tools"].as_array().into_iter().flatten() {
        if let Some(n) = tool["function"]["name"].as_str().or(tool["name"].as_str()) {
            names.push(n.to_owned());
        }
        for d in tool["functionDeclarations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            names.push(d["name"].as_str().unwrap().to_owned());
        }
    }
    names
}

#[test]
fn offered_tools_are_blocked_or_stripped_per_team_with_each_sdk() {
    let (mock, leash) = start_with_policy_file(POLICY, "");
    let mut records = 0;
    for provider in ["openai", "anthropic", "google"] {
        // Control: a team no rule names gets both tools to the provider,
        // and the model calls the first one offered.
        let r = offer_tools(&leash, provider, "platform");
        assert_eq!(r["called"], json!(["shell"]), "{provider}: {r}");
        let sent = mock.requests().last().unwrap().json();
        assert_eq!(offered(&sent), ["shell", "get_weather"], "{provider}");
        records += 1;
        let rec = leash.wait_records(records)[records - 1].clone();
        assert_eq!(
            rec["tools"]["offered"],
            json!(["shell", "get_weather"]),
            "{rec}"
        );
        assert_eq!(rec["policy"]["action"], "annotate", "{rec}");
        assert_eq!(rec["policy"]["tags"], json!(["tools"]), "{rec}");

        // Interns: `shell` is removed before the provider sees the request,
        // so the model calls what is left.
        let r = offer_tools(&leash, provider, "interns");
        assert_eq!(r["called"], json!(["get_weather"]), "{provider}: {r}");
        let sent = mock.requests().last().unwrap().json();
        assert_eq!(offered(&sent), ["get_weather"], "{provider}: {sent}");
        records += 1;
        let rec = leash.wait_records(records)[records - 1].clone();
        assert_eq!(rec["policy"]["action"], "strip", "{rec}");
        assert_eq!(
            rec["policy"]["changes"],
            json!([{ "op": "strip_tool", "field": "shell" }]),
            "{rec}"
        );
        assert_eq!(
            rec["tools"]["offered"],
            json!(["shell", "get_weather"]),
            "the record lists what the client offered: {rec}"
        );

        // Contractors: refused with the SDK's own 403; nothing reaches the
        // provider.
        let before = mock.request_count();
        let r = offer_tools(&leash, provider, "contractors");
        assert_eq!(r["ok"], false, "{provider}: {r}");
        assert_eq!(r["status"], 403, "{provider}: {r}");
        assert!(
            r["error"].as_str().unwrap().contains("shell-blocked"),
            "{r}"
        );
        records += 1;
        let rec = leash.wait_records(records)[records - 1].clone();
        assert_eq!(
            mock.request_count(),
            before,
            "{provider}: the provider saw it"
        );
        assert_eq!(rec["policy"]["action"], "block", "{rec}");
        assert_eq!(rec["policy"]["rules"], json!(["shell-blocked"]), "{rec}");
    }
}

#[test]
fn a_strip_rule_needs_the_tools_it_removes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    for (policy, field) in [
        (
            "version: 1\nrules:\n  - { name: s, match: { team: [x] }, action: strip }\n",
            "`rules[0] (s).match.tool.offered`",
        ),
        (
            "version: 1\nrules:\n  - { name: s, match: { tool: { offered: [shell] }, direction: response }, action: strip }\n",
            "`rules[0] (s).match.direction`",
        ),
        (
            "version: 1\nrules:\n  - { name: s, match: { tool: { offered: ['[' ] } }, action: block }\n",
            "`rules[0] (s).match.tool.offered`",
        ),
    ] {
        std::fs::write(&file, policy).unwrap();
        let out = leash_tests::harness::run(
            leash_tests::harness::leash_command()
                .args(["policy", "check"])
                .arg(&file),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{policy} was accepted");
        assert!(err.contains(field), "{policy}: {err}");
    }
}
