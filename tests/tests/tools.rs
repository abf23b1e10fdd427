//! Tool policy with the official SDKs: the tools a request offers are
//! matched by name (`match.tool.offered`), blocked or stripped per team
//! before the provider sees them; the tool calls of an answer are judged
//! by name (`match.tool.called`) and by what their arguments contain
//! (`match.tool.arguments`) before any of their bytes reach the client —
//! streamed calls held until complete while the text before them flows;
//! both are listed in the audit record.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use leash_tests::{
    gateway::{Leash, start_with_policy_file},
    harness::{assert_success, require_root, run_python},
    world::{Host, World},
};
use std::time::Duration;

use serde_json::{Value, json};

const POLICY: &str = r#"version: 1
rules:
  - { name: shell-blocked, match: { team: [contractors], tool: { offered: ["shell*"] } }, action: block }
  - { name: shell-stripped, match: { team: [interns], tool: { offered: ["shell*"] } }, action: strip }
  - { name: tools-seen, match: { tool: { offered: ["*"] } }, action: annotate, tags: [tools] }
"#;

/// `tools_check.py` for `provider` as a member of `team`.
fn offer_tools(leash: &Leash, provider: &str, team: &str) -> Value {
    check(leash, provider, false, &json!({ "x-leash-team": team }))
}

/// The API shapes each test runs: the three providers' own, `OpenAI`'s
/// Responses API, and the unified API (`OpenAI`'s shape, served by
/// Anthropic).
const SHAPES: [&str; 5] = ["openai", "responses", "unified", "anthropic", "google"];

/// `tools_check.py` for `provider` (one of [`SHAPES`]), streaming or not,
/// with `headers`.
fn check(leash: &Leash, provider: &str, stream: bool, headers: &Value) -> Value {
    let base = match provider {
        "responses" => leash.base_url("openai"),
        "unified" => format!("http://{}/v1", leash.addr),
        p => leash.base_url(p),
    };
    let mut args = vec![provider, base.as_str(), "sk-test-key"];
    if stream {
        args.push("stream");
    }
    let out = run_python(
        "tools_check.py",
        &args,
        &[("LEASH_TEST_HEADERS", &headers.to_string())],
    );
    assert_success(&format!("tools_check.py {args:?} {headers}"), &out);
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
    let providers = SHAPES;
    for provider in providers {
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
    // Every provider passed each check above (an assertion stops the test).
    let n = providers.len();
    leash_tests::results::record(
        "tool_offers",
        &json!({ "providers": n, "stripped": n, "blocked": n, "controls": n }),
    );
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

const CALL_POLICY: &str = r#"version: 1
rules:
  - { name: no-secrets-in-tool-args, match: { tool: { arguments: [secrets] } }, action: block }
  - { name: no-shell-for-contractors, match: { team: [contractors], tool: { called: ["shell"] } }, action: block }
  - { name: calls-seen, match: { tool: { called: ["*"] } }, action: annotate, tags: [tool-call] }
  - { name: shell-stripped, match: { team: [interns], tool: { offered: ["shell*"] } }, action: strip }
"#;

/// A fake AWS access key id: the shape and randomness of a real one.
const CANARY: &str = "AKIAZ7QX3PLM9V2KD4RT";
/// Milliseconds between the mock's stream events.
const GAP_MS: u64 = 150;

fn stream_headers(team: &str, args: &str) -> Value {
    json!({
        "x-leash-team": team,
        "x-mock-tool-args": args,
        "x-mock-tool-preamble": "3",
        "x-mock-chunk-delay-ms": GAP_MS.to_string(),
    })
}

/// A stream ended by rule `rule` before any byte of its tool call, after
/// the three text pieces before it arrived one by one, each as it was sent
/// (not with the verdict).
fn assert_held_back(r: &Value, provider: &str, rule: &str) {
    let gap = Duration::from_millis(GAP_MS).as_secs_f64();
    assert_eq!(r["ok"], false, "{provider}: {r}");
    assert!(
        r["error"].as_str().unwrap().contains(rule),
        "{provider}: {r}"
    );
    assert_eq!(
        r["calls"],
        json!([]),
        "{provider}: part of the call arrived: {r}"
    );
    let texts = r["texts"].as_array().unwrap();
    assert_eq!(texts.len(), 3, "{provider}: {r}");
    let at = |i: usize| texts[i][0].as_f64().unwrap();
    assert!(
        at(2) - at(0) >= 1.6 * gap,
        "{provider}: the text came at once: {r}"
    );
    assert!(
        r["error_at"].as_f64().unwrap() - at(2) >= 0.6 * gap,
        "{provider}: the text was held until the verdict: {r}"
    );
}

/// A whole answer refused by rule `rule` with the SDK's 403.
fn assert_refused(r: &Value, provider: &str, rule: &str) {
    assert_eq!(r["status"], 403, "{provider}: {r}");
    assert!(
        r["error"].as_str().unwrap().contains(rule),
        "{provider}: {r}"
    );
}

#[test]
fn streamed_tool_calls_are_held_until_their_arguments_are_checked() {
    let (_mock, leash) = start_with_policy_file(CALL_POLICY, "");
    let clean = r#"{"cmd":"ls -la /srv"}"#;
    let secret = format!(r#"{{"cmd":"deploy --key {CANARY}"}}"#);
    let mut records = 0;
    let providers = SHAPES;
    for provider in providers {
        // Control: a clean call is released whole, byte for byte, after
        // the text that came before it.
        let r = check(&leash, provider, true, &stream_headers("platform", clean));
        assert_eq!(r["ok"], true, "{provider}: {r}");
        let whole = json!([{ "name": "shell", "arguments": clean }]);
        assert_eq!(r["calls"], whole, "{provider}: {r}");
        assert_eq!(r["texts"].as_array().unwrap().len(), 3, "{provider}: {r}");
        records += 1;
        let rec = leash.wait_records(records)[records - 1].clone();
        assert_eq!(rec["policy"]["action"], "annotate", "{rec}");
        assert_eq!(rec["policy"]["tags"], json!(["tool-call"]), "{rec}");
        assert_eq!(rec["tools"]["called"], json!(["shell"]), "{rec}");
        assert_eq!(rec["completed"], true, "{rec}");

        // A secret in the arguments: the stream ends with the provider's
        // error before any byte of the call.
        let r = check(&leash, provider, true, &stream_headers("platform", &secret));
        assert_held_back(&r, provider, "no-secrets-in-tool-args");
        records += 1;
        let rec = leash.wait_records(records)[records - 1].clone();
        assert_eq!(rec["policy"]["action"], "block", "{rec}");
        let finding = json!([{ "rule": "no-secrets-in-tool-args", "detector": "aws_access_key", "count": 1 }]);
        assert_eq!(rec["policy"]["findings"], finding, "{rec}");

        // Contractors may not have `shell` called, streamed or not; a
        // secret in a whole answer's call: the provider's 403.
        let r = check(
            &leash,
            provider,
            true,
            &stream_headers("contractors", clean),
        );
        assert_held_back(&r, provider, "no-shell-for-contractors");
        let r = check(
            &leash,
            provider,
            false,
            &json!({ "x-leash-team": "contractors" }),
        );
        assert_refused(&r, provider, "no-shell-for-contractors");
        let r = check(
            &leash,
            provider,
            false,
            &json!({ "x-mock-tool-args": secret }),
        );
        assert_refused(&r, provider, "no-secrets-in-tool-args");
        records += 3;
        leash.wait_records(records);
    }
    let audit = leash.audit_text();
    assert!(!audit.contains(CANARY), "the canary is in the audit");
    // The console's Tools view: per shape 5 calls of `shell` (clean,
    // secret, contractors streamed and whole, secret whole), 4 of them in
    // blocked exchanges; by team.
    let (status, tools) = leash.api("GET", "/api/tools", b"");
    assert_eq!(status, 200, "{tools}");
    let shell = &tools["tools"][0];
    assert_eq!(shell["tool"], "shell", "{tools}");
    let n = providers.len() as u64;
    assert_eq!(shell["use"]["called"], 5 * n, "{tools}");
    assert_eq!(shell["use"]["blocked"], 4 * n, "{tools}");
    assert_eq!(shell["use"]["offered"], 5 * n, "{tools}");
    assert_eq!(
        shell["use"]["teams"]["contractors"].as_u64(),
        Some(4 * n),
        "{tools}"
    );
    // Every provider passed each check above (an assertion stops the test).
    let n = providers.len();
    leash_tests::results::record(
        "tool_calls",
        &json!({ "providers": n, "blocked_before_any_byte": n, "text_on_time": n, "clean_intact": n }),
    );
}

#[test]
fn streamed_tool_calls_are_held_through_transparent_interception() {
    if !require_root() {
        return;
    }
    let policy = format!(
        "policy:\n  {}\n",
        CALL_POLICY.trim_end().replace('\n', "\n  ")
    );
    let w = World::new(
        "tool-calls",
        &[
            Host("api.openai.com", "127.10.0.51", true),
            Host("api.anthropic.com", "127.10.0.52", true),
            Host("generativelanguage.googleapis.com", "127.10.0.53", true),
        ],
        &policy,
    );
    let clean = r#"{"cmd":"ls -la /srv"}"#;
    let secret = format!(r#"{{"cmd":"deploy --key {CANARY}"}}"#);
    let mut records = 0;
    for (provider, base) in [
        ("openai", "https://api.openai.com/v1"),
        ("anthropic", "https://api.anthropic.com"),
        ("google", "https://generativelanguage.googleapis.com"),
    ] {
        let run = |team: &str, stream: bool, args: &str| -> Value {
            let headers = stream_headers(team, args).to_string();
            let mode = if stream { "stream" } else { "whole" };
            let out = w.python(
                "tools_check.py",
                &[("LEASH_TEST_HEADERS", &headers)],
                &[provider, base, "sk-test", mode],
            );
            assert_success(&format!("{provider}\n{}", w.agent.logs()), &out);
            serde_json::from_slice(&out.stdout).expect("one JSON line")
        };
        let r = run("platform", true, clean);
        let whole = json!([{ "name": "shell", "arguments": clean }]);
        assert_eq!(r["calls"], whole, "{provider}: {r}");
        records += 1;
        let rec = w.agent.wait_records(records)[records - 1].clone();
        assert_eq!(rec["mode"], "transparent", "{rec}");
        assert_eq!(rec["tools"]["called"], json!(["shell"]), "{rec}");
        let exe = rec["caller"]["exe"].as_str().unwrap_or_default();
        assert!(exe.contains("python"), "{rec}");

        assert_held_back(
            &run("platform", true, &secret),
            provider,
            "no-secrets-in-tool-args",
        );
        records += 1;
        let rec = w.agent.wait_records(records)[records - 1].clone();
        assert_eq!(rec["policy"]["action"], "block", "{rec}");

        // Interns: `shell` stripped before the provider, which calls what
        // is left.
        let r = run("interns", false, clean);
        assert_eq!(r["called"], json!(["get_weather"]), "{provider}: {r}");
        records += 1;
        let rec = w.agent.wait_records(records)[records - 1].clone();
        assert_eq!(
            rec["policy"]["changes"],
            json!([{ "op": "strip_tool", "field": "shell" }]),
            "{rec}"
        );
    }
    assert!(!w.agent.audit_text().contains(CANARY));
}
