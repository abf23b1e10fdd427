//! Secrets hygiene: canary keys and canary prompt text in every header and
//! field a caller can send, across every gateway flow — success, stream,
//! policy block, redaction, upstream error, upstream down, oversized,
//! unparseable and unknown routes — then the logs (debug level), the audit
//! files, the metrics and every error body Leash itself wrote are searched:
//! not one hit is allowed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use leash_tests::{
    harness::{Leash, canary, free_port, http_request},
    mock::MockProvider,
};

struct Flow {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Status Leash must answer with.
    status: u16,
    /// Whether the body is Leash's own (an error it wrote) rather than the
    /// provider's answer passed through.
    leash_body: bool,
}

#[test]
#[allow(clippy::too_many_lines, reason = "one flow after another")]
fn canary_keys_never_appear_in_logs_audit_metrics_or_errors() {
    let mock = MockProvider::start();
    let down = free_port();
    let url = mock.url();
    // A credential Leash holds (routes, virtual keys) and a virtual key:
    // canaries too.
    let held = canary("held");
    let keys_dir = tempfile::tempdir().unwrap();
    let store = keys_dir.path().join("keys.json");
    let out = leash_tests::harness::run(
        leash_tests::harness::leash_command()
            .args(["keys", "create", "--team", "canary", "--store"])
            .arg(&store),
    );
    leash_tests::harness::assert_success("leash keys create", &out);
    let vkey = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // Spans and metrics go to an OTLP receiver: searched too.
    let otlp = leash_tests::otlp::OtlpReceiver::start("http");
    // Debug builds of leash panic on `x-leash-test-panic` with this set.
    let leash = Leash::start_with_env(
        tempfile::tempdir().unwrap(),
        &format!(
            "providers:\n  openai: {{ upstream: \"{url}/v1\" }}\n  anthropic: {{ upstream: \"{url}\" }}\n  google: {{ upstream: \"{url}\" }}\n  gone: {{ kind: openai, upstream: \"http://127.0.0.1:{down}/v1\" }}\ngateway: {{ max_body_bytes: 65536 }}\ncredentials:\n  held: {{ env: LEASH_TEST_HELD_KEY }}\nroutes:\n  held-route: {{ targets: [{{provider: openai, model: gpt-4o-mini, credential: held}}] }}\n  held-down: {{ targets: [{{provider: gone, model: gpt-4o-mini, credential: held}}] }}\nauth:\n  mode: both\n  keys_file: \"{}\"\n  inject: {{ openai: held, gone: held }}\npolicy:\n  version: 1\n  rules:\n    - {{ name: block-secrets, match: {{ detectors: [secrets] }}, action: block }}\n    - {{ name: redact-pii, match: {{ detectors: [email] }}, action: redact }}\ntelemetry:\n  otlp: {{ endpoint: \"{}\", flush_interval: 20ms, metrics_interval: 200ms }}\n",
            store.display(),
            otlp.endpoint()
        ),
        &[("LEASH_TEST_PANIC", "1"), ("LEASH_TEST_HELD_KEY", &held)],
    );
    // Every canary: keys in each provider's key header, in a query
    // parameter, in an arbitrary header and a cookie, and text in prompts.
    let key = canary("key");
    let anthropic_key = canary("xapikey");
    let goog_key = canary("googkey");
    let query_key = canary("query");
    let custom = canary("custom");
    let cookie = canary("cookie");
    // Prompt text that no secret detector takes for a key (so the flows
    // that should succeed do).
    let prompt = canary("prompt").replace("sk-", "pc-");
    let email_user = canary("mail").replace("sk-", "pc.").replace('-', ".");
    let secret_in_prompt = format!("sk-proj-{}", canary("secret").replace('-', ""));
    let all = [
        &key,
        &anthropic_key,
        &goog_key,
        &query_key,
        &custom,
        &cookie,
        &prompt,
        &email_user,
        &secret_in_prompt,
        &held,
        &vkey,
    ];
    let common = |extra: &[(&'static str, String)]| {
        let mut h = vec![
            ("content-type", "application/json".to_owned()),
            ("authorization", format!("Bearer {key}")),
            ("x-custom-token", custom.clone()),
            ("cookie", format!("session={cookie}")),
        ];
        h.extend(extra.iter().cloned());
        h
    };
    let chat_with = |model: &str, text: &str, stream: bool| {
        serde_json::json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]})
            .to_string()
            .into_bytes()
    };
    let chat = |text: &str, stream: bool| chat_with("gpt-4o-mini", text, stream);
    let with_vkey = vec![
        ("content-type", "application/json".to_owned()),
        ("authorization", format!("Bearer {vkey}")),
        ("x-custom-token", custom.clone()),
    ];
    let flows = vec![
        Flow {
            name: "openai ok",
            method: "POST",
            path: "/v1/openai/chat/completions".into(),
            headers: common(&[]),
            body: chat(&format!("hello {prompt}"), false),
            status: 200,
            leash_body: false,
        },
        Flow {
            name: "openai stream",
            method: "POST",
            path: "/v1/openai/chat/completions".into(),
            headers: common(&[]),
            body: chat(&format!("hello {prompt}"), true),
            status: 200,
            leash_body: false,
        },
        Flow {
            name: "anthropic ok",
            method: "POST",
            path: "/v1/anthropic/v1/messages".into(),
            headers: common(&[
                ("x-api-key", anthropic_key.clone()),
                ("anthropic-version", "2023-06-01".into()),
            ]),
            body: serde_json::json!({"model": "claude-sonnet-4", "max_tokens": 5, "messages": [{"role": "user", "content": prompt}]})
                .to_string()
                .into_bytes(),
            status: 200,
            leash_body: false,
        },
        Flow {
            name: "google ok (key in header and query)",
            method: "POST",
            path: format!(
                "/v1/google/v1beta/models/gemini-2.0-flash:generateContent?key={query_key}"
            ),
            headers: common(&[("x-goog-api-key", goog_key.clone())]),
            body: serde_json::json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]})
                .to_string()
                .into_bytes(),
            status: 200,
            leash_body: false,
        },
        Flow {
            name: "redacted email",
            method: "POST",
            path: "/v1/openai/chat/completions".into(),
            headers: common(&[]),
            body: chat(&format!("mail {email_user}@example.com"), false),
            status: 200,
            leash_body: false,
        },
        Flow {
            name: "route with a held credential",
            method: "POST",
            path: "/v1/chat/completions".into(),
            headers: common(&[]),
            body: chat_with("held-route", &prompt, false),
            status: 200,
            leash_body: false,
        },
        Flow {
            name: "route with a held credential, provider down",
            method: "POST",
            path: "/v1/chat/completions".into(),
            headers: common(&[]),
            body: chat_with("held-down", &prompt, false),
            status: 502,
            leash_body: true,
        },
        Flow {
            name: "virtual key",
            method: "POST",
            path: "/v1/openai/chat/completions".into(),
            headers: with_vkey.clone(),
            body: chat(&prompt, false),
            status: 200,
            leash_body: false,
        },
        Flow {
            name: "virtual key, provider down",
            method: "POST",
            path: "/v1/gone/chat/completions".into(),
            headers: with_vkey.clone(),
            body: chat(&prompt, false),
            status: 502,
            leash_body: true,
        },
        Flow {
            name: "forged virtual key",
            method: "POST",
            path: "/v1/openai/chat/completions".into(),
            headers: vec![
                ("content-type", "application/json".to_owned()),
                ("authorization", format!("Bearer {vkey}x")),
            ],
            body: chat(&prompt, false),
            status: 401,
            leash_body: true,
        },
        Flow {
            name: "blocked by policy",
            method: "POST",
            path: "/v1/openai/chat/completions".into(),
            headers: common(&[]),
            body: chat(&format!("my key is {secret_in_prompt}"), false),
            status: 403,
            leash_body: true,
        },
        Flow {
            name: "upstream error",
            method: "POST",
            path: "/v1/openai/chat/completions".into(),
            headers: common(&[("x-mock-status", "500".into())]),
            body: chat(&prompt, false),
            status: 500,
            leash_body: false,
        },
        Flow {
            name: "upstream down",
            method: "POST",
            path: "/v1/gone/chat/completions".into(),
            headers: common(&[]),
            body: chat(&prompt, false),
            status: 502,
            leash_body: true,
        },
        Flow {
            name: "oversized",
            method: "POST",
            path: "/v1/openai/chat/completions".into(),
            headers: common(&[]),
            body: chat(&format!("{prompt} {}", "a".repeat(70_000)), false),
            status: 413,
            leash_body: true,
        },
        Flow {
            name: "not JSON",
            method: "POST",
            path: "/v1/openai/chat/completions".into(),
            headers: common(&[]),
            body: format!("{prompt} {key}").into_bytes(),
            status: 400,
            leash_body: true,
        },
        Flow {
            name: "unknown provider",
            method: "POST",
            path: format!("/v1/nope/chat/completions?key={query_key}"),
            headers: common(&[]),
            body: chat(&prompt, false),
            status: 404,
            leash_body: true,
        },
        Flow {
            // The panic message holds every header (the canary keys): the
            // panic hook must keep it out of the logs.
            name: "forced panic",
            method: "POST",
            path: "/v1/openai/chat/completions".into(),
            headers: common(&[("x-leash-test-panic", "1".into())]),
            body: chat(&prompt, false),
            status: 500,
            leash_body: true,
        },
        Flow {
            name: "path trick",
            method: "POST",
            path: format!("/v1/openai/../admin?key={query_key}"),
            headers: common(&[]),
            body: chat(&prompt, false),
            status: 404,
            leash_body: true,
        },
    ];
    let mut leash_bodies = Vec::new();
    for f in &flows {
        let headers: Vec<(&str, &str)> = f.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, body) = http_request(leash.addr, f.method, &f.path, &headers, &f.body)
            .unwrap_or_else(|| panic!("{}: no response", f.name));
        assert!(
            status == f.status || (f.name == "path trick" && status == 400),
            "{}: status {status}, expected {}: {}",
            f.name,
            f.status,
            String::from_utf8_lossy(&body)
        );
        if f.leash_body {
            leash_bodies.push((f.name, String::from_utf8_lossy(&body).into_owned()));
        }
    }
    // The redacted email never reached the provider either.
    assert!(
        !mock
            .requests()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains(&email_user)),
        "the email reached the provider"
    );
    // At least the six requests that reached a provider or were blocked.
    let records = leash.wait_records(6);
    assert!(!records.is_empty());
    let logs = leash.logs();
    assert!(
        logs.contains("upstream request failed")
            && logs.contains("policy_block")
            && logs.contains("formatted message withheld"),
        "expected the error and alert log lines to search:\n{logs}"
    );
    let audit = leash.audit_text();
    let metrics = leash.metrics();
    // Every console API answer (each page's data) and the page itself.
    let mut console = String::new();
    for path in [
        "/api/records",
        "/api/spend",
        "/api/violations",
        "/api/policy",
        "/api/keys",
        "/api/interception",
    ] {
        let (status, v) = leash.api("GET", path, b"");
        assert_eq!(status, 200, "{path}: {v}");
        console.push_str(&v.to_string());
    }
    // Control: the pages hold the records and the key (by id).
    let vkey_id = vkey.split('_').nth(1).unwrap();
    assert!(
        console.contains(vkey_id) && console.contains(records[0]["id"].as_str().unwrap()),
        "the console answers do not show the records and keys searched"
    );
    // Control: every traced exchange's span reached the OTLP receiver
    // (those refused before their headers were read have none).
    let traced: Vec<&str> = records
        .iter()
        .filter_map(|r| r["span_id"].as_str())
        .collect();
    assert!(traced.len() >= 6, "{} traced records", traced.len());
    for span in traced {
        otlp.wait_span(span, || leash.logs());
    }
    let exported = otlp.text();
    let mut hits = Vec::new();
    for c in all {
        if exported.contains(c.as_str()) {
            hits.push(format!("OTLP: {c}"));
        }
        if logs.contains(c.as_str()) {
            hits.push(format!("logs: {c}"));
        }
        if audit.contains(c.as_str()) {
            hits.push(format!("audit: {c}"));
        }
        if metrics.contains(c.as_str()) {
            hits.push(format!("metrics: {c}"));
        }
        if console.contains(c.as_str()) {
            hits.push(format!("console: {c}"));
        }
        for (name, body) in &leash_bodies {
            if body.contains(c.as_str()) {
                hits.push(format!("error body of `{name}`: {c}"));
            }
        }
    }
    eprintln!(
        "secrets hygiene: {} canaries x {} flows; searched {} log lines, {} audit bytes, {} metrics bytes, {} console bytes, {} OTLP bytes, {} error bodies; hits: {}",
        all.len(),
        flows.len(),
        logs.lines().count(),
        audit.len(),
        metrics.len(),
        console.len(),
        exported.len(),
        leash_bodies.len(),
        hits.len()
    );
    leash_tests::results::record(
        "secrets",
        &serde_json::json!({
            "canaries": all.len(),
            "flows": flows.len(),
            "log_lines": logs.lines().count(),
            "error_bodies": leash_bodies.len(),
            "hits": hits.len(),
        }),
    );
    assert!(hits.is_empty(), "canaries found:\n{}", hits.join("\n"));
}
