//! The policy engine through the gateway with the official SDKs: secrets
//! block with each SDK's own 403 error and never reach the provider, PII is
//! redacted before it leaves, shadow mode forwards unchanged and records the
//! would-be action, team rules and transforms apply, and `leash policy`
//! checks and tests files offline.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use leash_tests::{
    harness::{
        Leash, assert_success, http_request, leash_command, mock_providers_yaml, run, run_python,
    },
    mock::MockProvider,
};
use serde_json::Value;

const POLICY: &str = r"version: 1
mode: enforce
detectors:
  codenames: { regex: '(?i)\bproject\s+(falcon|osprey)\b' }
rules:
  - name: allow-security-team
    match: { team: [secops] }
    action: allow
  - name: block-secrets
    match: { detectors: [secrets] }
    action: block
  - name: redact-pii
    match: { detectors: [email, phone, credit_card, us_ssn, iban] }
    action: redact
  - name: interns-use-small-models
    match: { team: [interns], model: ['gpt-4o', 'gpt-4.1'] }
    action: transform
    set_model: gpt-4o-mini
  - name: tag-codenames
    match: { detectors: [codenames] }
    action: annotate
    tags: [confidential]
";

/// A fake AWS access key id: the shape and randomness of a real one.
const AWS_KEY: &str = "AKIAZ7QX3PLM9V2KD4RT";

fn start(mode: &str) -> (MockProvider, Leash) {
    start_with_policy(&POLICY.replace("mode: enforce", &format!("mode: {mode}")))
}

/// A mock provider and a gateway running `policy` from a policy file.
fn start_with_policy(policy: &str) -> (MockProvider, Leash) {
    leash_tests::harness::start_with_policy_file(policy, "")
}

fn sdk(leash: &Leash, case: &str, provider: &str, prompt: &str, headers: &str) -> Value {
    let out = run_python(
        "sdk_check.py",
        &[case, &leash.base_url(provider), "sk-test-key"],
        &[
            ("LEASH_TEST_PROMPT", prompt),
            ("LEASH_TEST_HEADERS", headers),
        ],
    );
    assert_success(&format!("{case} ({provider})"), &out);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn secrets_block_with_each_sdks_own_403_and_never_leave() {
    let (mock, leash) = start("enforce");
    let prompt = format!("deploy with {AWS_KEY} please");
    for (provider, case, class) in [
        ("openai", "openai-error", "PermissionDeniedError"),
        ("anthropic", "anthropic-error", "PermissionDeniedError"),
        ("google", "google-error", "ClientError"),
    ] {
        let r = sdk(&leash, case, provider, &prompt, "{}");
        assert_eq!(r["error_class"], class, "{provider}: {r}");
        assert_eq!(r["status"], 403, "{provider}: {r}");
        assert!(
            r["message"].as_str().unwrap().contains("block-secrets"),
            "{provider}: {r}"
        );
    }
    assert!(mock.requests().is_empty(), "a secret reached the provider");
    let records = leash.wait_records(3);
    for rec in &records {
        assert_eq!(rec["status"], 403);
        assert_eq!(rec["policy"]["action"], "block", "{rec}");
        assert_eq!(rec["policy"]["findings"][0]["rule"], "block-secrets");
        assert_eq!(rec["policy"]["findings"][0]["detector"], "aws_access_key");
        assert_eq!(rec["policy"]["findings"][0]["count"], 1);
    }
    assert!(
        !leash.audit_text().contains(AWS_KEY),
        "the secret is in the audit trail"
    );
    assert!(!leash.logs().contains(AWS_KEY), "the secret is in the logs");
    assert!(leash.metrics().contains(r#"action="block""#));
}

#[test]
fn pii_is_redacted_before_it_leaves_in_every_shape() {
    let (mock, leash) = start("enforce");
    let prompt = "write to jane.roe@example.com about card 4111 1111 1111 1111";
    for (provider, case) in [
        ("openai", "openai-chat"),
        ("openai", "openai-responses"),
        ("anthropic", "anthropic"),
        ("google", "google"),
    ] {
        sdk(&leash, case, provider, prompt, "{}");
    }
    let requests = mock.requests();
    assert_eq!(requests.len(), 4);
    for r in &requests {
        let body = String::from_utf8_lossy(&r.body);
        assert!(body.contains("[REDACTED:email]"), "{}: {body}", r.uri);
        assert!(body.contains("[REDACTED:credit_card]"), "{}: {body}", r.uri);
        assert!(
            !body.contains("jane.roe@example.com") && !body.contains("4111 1111"),
            "{}: {body}",
            r.uri
        );
        assert!(
            serde_json::from_slice::<Value>(&r.body).is_ok(),
            "redaction broke the JSON"
        );
    }
    let records = leash.wait_records(4);
    assert!(
        records.iter().all(|r| r["policy"]["action"] == "redact"),
        "{records:#?}"
    );
}

#[test]
fn shadow_mode_forwards_unchanged_and_records_the_would_be_action() {
    let (mock, leash) = start("shadow");
    let prompt = format!("key {AWS_KEY} and mail jane.roe@example.com");
    sdk(&leash, "openai-chat", "openai", &prompt, "{}");
    let body = String::from_utf8_lossy(&mock.requests()[0].body).into_owned();
    assert!(
        body.contains(AWS_KEY) && body.contains("jane.roe@example.com"),
        "shadow mode changed the request: {body}"
    );
    let rec = &leash.wait_records(1)[0];
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["policy"]["action"], "block", "{rec}");
    assert_eq!(rec["policy"]["shadow"], true);
}

#[test]
fn team_rules_exempt_and_transform() {
    let (mock, leash) = start("enforce");
    // The security team is exempt.
    sdk(
        &leash,
        "openai-chat",
        "openai",
        &format!("key {AWS_KEY}"),
        r#"{"x-leash-team": "secops"}"#,
    );
    assert!(String::from_utf8_lossy(&mock.requests()[0].body).contains(AWS_KEY));
    // Interns asking for gpt-4o get gpt-4o-mini.
    let (status, _, _) = http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[("x-leash-team", "interns")],
        br#"{"model":"gpt-4o","messages":[{"role":"user","content":"about project falcon"}]}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(mock.requests()[1].json()["model"], "gpt-4o-mini");
    let rec = &leash.wait_records(2)[1];
    assert_eq!(rec["model"], "gpt-4o-mini");
    assert_eq!(
        rec["policy"]["tags"],
        serde_json::json!(["confidential"]),
        "{rec}"
    );
    assert_eq!(
        rec["policy"]["rules"],
        serde_json::json!(["interns-use-small-models", "tag-codenames"])
    );
}

const TRANSFORMS: &str = r#"version: 1
rules:
  - name: contractor-limits
    match: { team: [contractors] }
    action: transform
    max_tokens: 32
    system_prepend: "Follow the ACME acceptable-use policy."
    drop_fields: [tools, tool_choice]
    set_headers: { x-acme-tier: contractor }
    remove_headers: [openai-organization, anthropic-beta]
  - name: contractors-on-flash-lite
    match: { team: [contractors], provider: [google] }
    action: transform
    set_model: gemini-2.0-flash-lite
"#;

#[test]
fn transforms_change_each_providers_own_fields_and_are_audited() {
    let (mock, leash) = start_with_policy(TRANSFORMS);
    let team = r#"{"x-leash-team": "contractors", "anthropic-beta": "tools-2024-04-04"}"#;
    // OpenAI chat: tools dropped, a limit added, an instruction first.
    let (status, _, body) = http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[
            ("x-leash-team", "contractors"),
            ("openai-organization", "org-123"),
        ],
        br#"{"model":"gpt-4o","tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // Anthropic and Gemini through their SDKs.
    sdk(&leash, "anthropic", "anthropic", "hi", team);
    sdk(&leash, "google", "google", "hi", team);

    let reqs = mock.requests();
    let chat = reqs[0].json();
    assert!(chat.get("tools").is_none() && chat.get("tool_choice").is_none());
    assert_eq!(chat["max_completion_tokens"], 32);
    assert_eq!(chat["messages"][0]["role"], "system");
    assert_eq!(
        chat["messages"][0]["content"],
        "Follow the ACME acceptable-use policy."
    );
    assert_eq!(chat["messages"][1]["content"], "hi");
    assert!(reqs[0].headers.get("openai-organization").is_none());
    assert_eq!(reqs[0].headers["x-acme-tier"], "contractor");

    let claude = reqs[1].json();
    assert_eq!(claude["max_tokens"], 32, "the SDK asked for 64");
    assert_eq!(claude["system"], "Follow the ACME acceptable-use policy.");
    assert!(reqs[1].headers.get("anthropic-beta").is_none());

    let gemini = reqs[2].json();
    assert!(
        reqs[2]
            .uri
            .contains("/models/gemini-2.0-flash-lite:generateContent"),
        "{}",
        reqs[2].uri
    );
    assert_eq!(gemini["generationConfig"]["maxOutputTokens"], 32);
    assert_eq!(
        gemini["systemInstruction"]["parts"][0]["text"],
        "Follow the ACME acceptable-use policy."
    );

    let records = leash.wait_records(3);
    let ops = |rec: &Value| -> Vec<String> {
        rec["policy"]["changes"]
            .as_array()
            .unwrap_or_else(|| panic!("no changes recorded: {rec}"))
            .iter()
            .map(|c| {
                format!(
                    "{}:{}",
                    c["op"].as_str().unwrap(),
                    c["field"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        ops(&records[0]),
        [
            "cap_max_tokens:max_completion_tokens",
            "system_prepend:messages[0]",
            "drop_field:tools",
            "drop_field:tool_choice",
            "remove_header:openai-organization",
            "set_header:x-acme-tier",
        ]
    );
    assert_eq!(records[1]["policy"]["changes"][0]["from"], 64);
    assert_eq!(records[1]["policy"]["changes"][0]["to"], 32);
    assert_eq!(
        records[2]["model"], "gemini-2.0-flash-lite",
        "{}",
        records[2]
    );
    assert_eq!(records[2]["policy"]["changes"][0]["op"], "set_model");
    assert_eq!(
        records[2]["policy"]["changes"][0]["from"],
        "gemini-2.5-flash"
    );
    assert!(
        !leash.audit_text().contains("contractor\""),
        "a header value is in the audit"
    );
}

#[test]
fn unparseable_bodies_are_refused() {
    let (mock, leash) = start("enforce");
    let (status, _, body) = http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[],
        b"{not json",
    )
    .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(mock.requests().is_empty());
}

/// A gzip-compressed body is inspected after decoding (and forwarded
/// decoded); a zip bomb, a corrupt body and an unknown coding never leave.
#[test]
fn compressed_bodies_are_inspected_and_bombs_refused() {
    use std::io::Write as _;
    let gzip = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let (mock, leash) = start("enforce");
    let chat =
        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"mail bob@example.com"}]}"#;
    let post = |encoding: &str, body: &[u8]| {
        http_request(
            leash.addr,
            "POST",
            "/v1/openai/chat/completions",
            &[
                ("content-type", "application/json"),
                ("content-encoding", encoding),
            ],
            body,
        )
        .unwrap()
    };
    let (status, _, body) = post("gzip", &gzip(chat));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let got = mock.requests();
    assert_eq!(got.len(), 1);
    assert!(got[0].header("content-encoding").is_none());
    let forwarded = got[0].json();
    let content = forwarded["messages"][0]["content"].as_str().unwrap();
    assert_eq!(content, "mail [REDACTED:email]");
    // A secret inside a compressed body is found and blocked.
    let secret = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"key {AWS_KEY}"}}]}}"#
    );
    let (status, _, _) = post("gzip", &gzip(secret.as_bytes()));
    assert_eq!(status, 403);
    // 64 MiB of spaces after the JSON: ~64 KiB compressed.
    let mut bomb = chat.to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 64 * 1024 * 1024));
    let (status, _, body) = post("gzip", &gzip(&bomb));
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = post("gzip", b"not gzip at all");
    assert_eq!(status, 400);
    let (status, _, body) = post("zstd", b"\x28\xb5\x2f\xfd");
    assert_eq!(status, 415, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        mock.requests().len(),
        1,
        "a refused body reached the provider"
    );
    let records = leash.wait_records(5);
    assert_eq!(records[2]["status"], 413);
    assert_eq!(records[4]["status"], 415);
}

#[test]
fn policy_check_and_test_work_offline() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, POLICY).unwrap();
    assert_success(
        "policy check",
        &run(leash_command().args(["policy", "check"]).arg(&good)),
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1\nrules:\n  - name: x\n    match: { detectors: [nope] }\n    action: block\n",
    )
    .unwrap();
    let out = run(leash_command().args(["policy", "check"]).arg(&bad));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown detector `nope`"));
    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, "version: 1\nrules:\n  - name: x\n    acton: block\n").unwrap();
    let out = run(leash_command().args(["policy", "check"]).arg(&typo));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 4"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let req = dir.path().join("req.json");
    std::fs::write(
        &req,
        format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"use {AWS_KEY}"}}]}}"#),
    )
    .unwrap();
    let out = run(leash_command()
        .args(["policy", "test"])
        .arg(&good)
        .arg("--request")
        .arg(&req));
    assert_success("policy test", &out);
    let decision: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision["action"], "block", "{decision}");
    assert_eq!(decision["findings"][0]["detector"], "aws_access_key");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(AWS_KEY),
        "policy test printed the secret"
    );
}

const RESPONSE_POLICY: &str = "version: 1
rules:
  - name: no-secrets-out
    match: { detectors: [secrets], direction: response }
    action: block
";

/// The text the mock streams: the key is cut across chunks.
const LEAKY: &str = "the key is AKIAZ7QX3PLM9V2KD4RT and then more text after it";

#[test]
fn a_secret_split_across_stream_chunks_ends_the_stream() {
    let (_mock, leash) = start_with_policy(RESPONSE_POLICY);
    let out = run(std::process::Command::new("curl")
        .args([
            "-sS",
            "-N",
            "-H",
            &format!("x-mock-text: {LEAKY}"),
            "-H",
            "x-mock-chunks: 6",
        ])
        .args([
            "-d",
            r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#,
        ])
        .arg(format!("http://{}/v1/openai/chat/completions", leash.addr)));
    assert_success("curl", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("leash_policy_blocked") && text.contains("no-secrets-out"),
        "{text}"
    );
    assert!(
        !text.contains("more text after"),
        "text after the secret was delivered: {text}"
    );
    assert!(!text.contains("[DONE]"), "the stream went on: {text}");
    let rec = &leash.wait_records(1)[0];
    assert_eq!(rec["policy"]["action"], "block", "{rec}");
    assert_eq!(rec["policy"]["findings"][0]["detector"], "aws_access_key");
    // Each SDK raises when the stream ends with the error event.
    for (provider, case) in [
        ("openai", "openai-chat-stream-error"),
        ("anthropic", "anthropic-stream-error"),
        ("google", "google-stream-error"),
    ] {
        let r = sdk(
            &leash,
            case,
            provider,
            "hi",
            &format!(r#"{{"x-mock-text": "{LEAKY}", "x-mock-chunks": "6"}}"#),
        );
        assert!(
            r["message"]
                .as_str()
                .unwrap_or("")
                .contains("no-secrets-out"),
            "{provider}: {r}"
        );
    }
    assert!(!leash.audit_text().contains("AKIAZ7QX3PLM9V2KD4RT"));
}

/// A streamed answer with two emails cut across several events each.
const CHATTY: &str = "write to jane.roe@example.com or to john.doe@example.org soon, thanks a lot";

#[test]
fn pii_split_across_stream_events_is_redacted_before_delivery() {
    let (_mock, leash) = start_with_policy(
        "version: 1
rules:
  - name: no-pii-out
    match: { detectors: [email], direction: response }
    action: redact
",
    );
    let headers = format!(r#"{{"x-mock-text": "{CHATTY}", "x-mock-chunks": "25"}}"#);
    let expected = "write to [REDACTED:email] or to [REDACTED:email] soon, thanks a lot";
    for (provider, case) in [
        ("openai", "openai-chat-stream"),
        ("openai", "openai-responses-stream"),
        ("anthropic", "anthropic-stream"),
        ("google", "google-stream"),
    ] {
        let r = sdk(&leash, case, provider, "hi", &headers);
        assert_eq!(r["text"], expected, "{provider} {case}: {r}");
        assert!(r["chunks"].as_u64().unwrap() > 1, "{r}");
    }
    let records = leash.wait_records(4);
    for rec in &records {
        assert_eq!(rec["policy"]["action"], "redact", "{rec}");
        assert_eq!(rec["policy"]["findings"][0]["detector"], "email", "{rec}");
        assert_eq!(rec["policy"]["findings"][0]["count"], 1, "{rec}");
        assert_eq!(
            rec["policy"]["findings"].as_array().unwrap().len(),
            2,
            "{rec}"
        );
    }
}

fn reloads(leash: &Leash, result: &str) -> u64 {
    let metrics = leash.metrics();
    let needle = format!("leash_policy_reloads_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn policy_reloads_on_change_and_sighup_and_keeps_the_old_one_when_broken() {
    let (_mock, leash) = start("enforce");
    let file = leash.dir.path().join("policy.yaml");
    let secret =
        format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{AWS_KEY}"}}]}}"#);
    let post = || {
        http_request(
            leash.addr,
            "POST",
            "/v1/openai/chat/completions",
            &[],
            secret.as_bytes(),
        )
        .unwrap()
        .0
    };
    assert_eq!(post(), 403);

    // A new file without the block rule takes effect without a restart.
    std::fs::write(&file, "version: 1\nrules: []\n").unwrap();
    wait_until("the new policy", || post() == 200);
    assert!(reloads(&leash, "ok") >= 1);

    // A broken file: the last good policy stays, the error is logged with
    // its line and counted.
    std::fs::write(&file, "version: 1\nrules:\n  - name: x\n    acton: block\n").unwrap();
    wait_until("the failed reload", || reloads(&leash, "error") >= 1);
    assert_eq!(post(), 200, "a broken policy replaced the working one");
    assert!(
        leash.logs().contains("line 4"),
        "the reload error lacks its line:\n{}",
        leash.logs()
    );

    // SIGHUP reloads on demand.
    std::fs::write(&file, POLICY).unwrap();
    let before = reloads(&leash, "ok");
    let pid = leash_pid(&leash);
    assert_success(
        "kill -HUP",
        &run(std::process::Command::new("kill").args(["-HUP", &pid])),
    );
    wait_until("the SIGHUP reload", || reloads(&leash, "ok") > before);
    assert_eq!(post(), 403);
}

fn leash_pid(leash: &Leash) -> String {
    leash.pid().to_string()
}

/// With a `teams:` section, teams come from key fingerprints (and, in
/// transparent mode, uid/user/exe/cgroup); the header counts only for teams
/// that allow it, so nobody can claim the exempt team by header.
#[test]
fn teams_by_key_fingerprint_and_header_only_where_allowed() {
    let mock = MockProvider::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    let secops_key = "sk-secops-team-key-0001";
    let fp = leash_agent::pipeline::team::fingerprint(secops_key);
    let config = format!(
        "{}policy: {{ file: policy.yaml }}\nteams:\n  - {{ name: secops, key_sha256: [\"{fp}\"] }}\n  - {{ name: research, header: true }}\n",
        mock_providers_yaml(&mock)
    );
    let leash = Leash::start_in(dir, &config);
    let body =
        format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{AWS_KEY}"}}]}}"#);
    let post = |headers: &[(&str, &str)]| {
        http_request(
            leash.addr,
            "POST",
            "/v1/openai/chat/completions",
            headers,
            body.as_bytes(),
        )
        .unwrap()
        .0
    };
    assert_eq!(
        post(&[("authorization", &format!("Bearer {secops_key}"))]),
        200,
        "the secops key is exempt"
    );
    assert_eq!(
        post(&[
            ("authorization", "Bearer sk-other"),
            ("x-leash-team", "secops")
        ]),
        403,
        "secops claimed by header"
    );
    assert_eq!(
        post(&[
            ("authorization", "Bearer sk-other"),
            ("x-leash-team", "research")
        ]),
        403
    );
    let records = leash.wait_records(3);
    assert_eq!(records[0]["caller"]["team"], "secops");
    assert_eq!(records[1]["caller"]["team"], serde_json::Value::Null);
    assert_eq!(records[2]["caller"]["team"], "research");
    assert!(!leash.audit_text().contains(secops_key) && !leash.audit_text().contains(&fp));
}
