//! The web console's API and page, served by the admin listener, against a
//! gateway with real traffic: the numbers it shows are the audit records'.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use leash_tests::{
    harness::{Leash, assert_success, http_request, mock_providers_yaml, run_python},
    mock::MockProvider,
};
use serde_json::{Value, json};

const POLICY: &str = "version: 1\nrules:\n  - { name: block-secrets, match: { detectors: [secrets] }, action: block }\n  - { name: redact-pii, match: { detectors: [email] }, action: redact }\n";

/// A gateway to a mock provider with `POLICY` from a file, plus `extra`
/// config.
fn start_with_policy(extra: &str) -> (MockProvider, Leash) {
    leash_tests::harness::start_with_policy_file(POLICY, extra)
}

/// GET on the console API with the admin token (or with `headers` only,
/// when given).
fn get(leash: &Leash, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    if headers.is_empty() {
        return leash.api("GET", path, b"");
    }
    let (status, _, body) = http_request(leash.admin, "GET", path, headers, b"").unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn chat(leash: &Leash, text: &str) -> u16 {
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]});
    http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer sk-test"),
        ],
        body.to_string().as_bytes(),
    )
    .unwrap()
    .0
}

#[test]
fn console_api_matches_the_audit_records() {
    let (_mock, leash) = start_with_policy("");
    for i in 0..5 {
        assert_eq!(chat(&leash, &format!("hello {i}")), 200);
    }
    assert_eq!(chat(&leash, "mail bob@example.com"), 200);
    assert_eq!(chat(&leash, "key AKIAZ7QX3PLM9V2KD4RT"), 403);
    let records = leash.wait_records(7);

    // The page and its assets, embedded, no CDN.
    let (status, _, page) = http_request(leash.admin, "GET", "/console", &[], b"").unwrap();
    assert_eq!(status, 200);
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("/console/app.js") && !page.contains("http"),
        "{page}"
    );
    let (status, _, js) = http_request(leash.admin, "GET", "/console/app.js", &[], b"").unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&js).contains("/api/records"));

    let (status, v) = get(&leash, "/api/records?limit=100", &[]);
    assert_eq!(status, 200);
    let listed = v["records"].as_array().unwrap();
    assert_eq!(listed.len(), records.len());
    assert_eq!(
        listed[0]["id"],
        records.last().unwrap()["id"],
        "newest first"
    );
    let (_, v) = get(&leash, "/api/records?action=block", &[]);
    assert_eq!(v["records"].as_array().unwrap().len(), 1);
    let (_, v) = get(
        &leash,
        &format!("/api/records?after={}", records[5]["id"].as_str().unwrap()),
        &[],
    );
    assert_eq!(
        v["records"].as_array().unwrap().len(),
        1,
        "only what came after"
    );

    let (status, spend) = get(&leash, "/api/spend", &[]);
    assert_eq!(status, 200);
    let cost: f64 = records.iter().filter_map(|r| r["cost_usd"].as_f64()).sum();
    let input: u64 = records
        .iter()
        .filter_map(|r| r["usage"]["input_tokens"].as_u64())
        .sum();
    assert_eq!(spend["total"]["requests"], records.len());
    assert_eq!(spend["total"]["input_tokens"], input);
    assert!((spend["total"]["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9);
    assert_eq!(spend["by_provider"]["openai"]["requests"], records.len());

    let hours = spend["by_hour"].as_object().unwrap();
    let hourly: u64 = hours
        .values()
        .map(|t| t["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(hourly, records.len() as u64);
    assert_eq!(spend["top_callers"][0]["caller"], "127.0.0.1", "{spend}");
    assert_eq!(spend["top_callers"][0]["totals"]["requests"], records.len());

    let (_, violations) = get(&leash, "/api/violations", &[]);
    let per_hour: u64 = violations["by_hour"]
        .as_object()
        .unwrap()
        .values()
        .map(|h| h["block"].as_u64().unwrap_or(0) + h["redact"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(per_hour, 2, "{violations}");
    assert_eq!(
        violations["by_rule"]["block-secrets"]["requests"], 1,
        "{violations}"
    );
    assert_eq!(
        violations["by_rule"]["redact-pii"]["requests"], 1,
        "{violations}"
    );
    assert_eq!(violations["recent"].as_array().unwrap().len(), 2);

    let (_, policy) = get(&leash, "/api/policy", &[]);
    assert_eq!(policy["active"]["rules"][0]["name"], "block-secrets");
    assert_eq!(policy["active"]["rules"][0]["action"], "block");
    assert!(policy["yaml"].as_str().unwrap().contains("redact-pii"));
    assert_eq!(policy["editable"], false);
    assert_eq!(policy["history"][0]["trigger"], "start");
    // Read-only by default.
    let (status, _) = leash.api("PUT", "/api/policy", b"version: 1\n");
    assert_eq!(status, 403);
}

/// The policy playground decides on a pasted body: nothing is sent to the
/// provider and nothing is audited.
#[test]
fn playground_decides_without_sending() {
    let (mock, leash) = start_with_policy("");
    assert_eq!(chat(&leash, "hello"), 200);
    let records = leash.wait_records(1);
    let sent = mock.requests().len();
    let body = json!({"provider": "openai", "endpoint": "/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "to bob@example.com"}]}});
    let (status, decision) = leash.api("POST", "/api/policy/test", body.to_string().as_bytes());
    assert_eq!(status, 200);
    assert_eq!(decision["action"], "redact", "{decision}");
    assert_eq!(
        decision["forwarded_body"]["messages"][0]["content"],
        "to [REDACTED:email]"
    );
    assert_eq!(mock.requests().len(), sent);
    assert_eq!(
        leash.audit_records().len(),
        records.len(),
        "the playground is not audited traffic"
    );
}

/// With `admin.allow_policy_edit`, the console replaces the policy file,
/// but only with a policy that passes `leash policy check`.
#[test]
fn policy_edits_are_validated_written_and_loaded() {
    let (mock, leash) = start_with_policy("admin: { allow_policy_edit: true }\n");
    let file = leash.dir.path().join("policy.yaml");
    let put = |yaml: &str| leash.api("PUT", "/api/policy", yaml.as_bytes());
    let (_, policy) = get(&leash, "/api/policy", &[]);
    assert_eq!(policy["editable"], true);
    // Invalid: refused with the reason, the file and the policy unchanged.
    let (status, err) =
        put("version: 1\nrules:\n  - { name: x, match: { detectors: [nope] }, action: block }\n");
    assert_eq!(status, 422, "{err}");
    assert!(err["error"].as_str().unwrap().contains("nope"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), POLICY);
    // Valid: written, loaded at once, in the history.
    let new = "version: 1\nrules:\n  - { name: no-emails, match: { detectors: [email] }, action: block }\n";
    let (status, policy) = put(new);
    assert_eq!(status, 200, "{policy}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), new);
    assert_eq!(policy["active"]["rules"][0]["name"], "no-emails");
    assert_eq!(
        policy["history"][0]["trigger"],
        "console: replaced the policy file by admin token"
    );
    assert_eq!(policy["history"][0]["ok"], true);
    assert_eq!(chat(&leash, "mail bob@example.com"), 403);
    assert!(mock.requests().is_empty());
}

/// `/api/live`: each record as a server-sent event once it is on disk.
#[test]
fn live_feed_streams_records_as_they_are_written() {
    use std::io::{BufRead as _, Write as _};
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    let mut stream = std::net::TcpStream::connect(leash.admin).unwrap();
    let token = leash.admin_token();
    stream
        .write_all(
            format!(
                "GET /api/live HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
                leash.admin
            )
            .as_bytes(),
        )
        .unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let mut head = String::new();
    while reader.read_line(&mut line).is_ok() && line.trim() != "" && !line.starts_with(": leash") {
        head.push_str(&line);
        line.clear();
    }
    assert!(
        head.to_ascii_lowercase().contains("text/event-stream"),
        "{head}"
    );
    assert_eq!(chat(&leash, "hello"), 200);
    let record = leash.wait_records(1).remove(0);
    let event = loop {
        let mut l = String::new();
        reader.read_line(&mut l).expect("an event within 10 s");
        if l.starts_with("data: ") {
            break l;
        }
    };
    let v: Value = serde_json::from_str(event.trim_start_matches("data: ").trim()).unwrap();
    assert_eq!(v["id"], record["id"]);
    assert_eq!(v["hash"], record["hash"]);
}

#[test]
fn console_api_requires_the_admin_token_when_one_is_set() {
    let mock = MockProvider::start();
    let dir = tempfile::tempdir().unwrap();
    let token = "c0nsole-t0ken-for-tests-0123456789";
    std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
    let leash = Leash::start_in(
        dir,
        &format!(
            "{}admin: {{ token_file: token }}\n",
            mock_providers_yaml(&mock)
        ),
    );
    assert!(
        !leash.audit_dir.join("admin.token").exists(),
        "Leash made a token of its own beside the configured one"
    );
    let host = leash.admin.to_string();
    assert_eq!(get(&leash, "/api/spend", &[("host", &host)]).0, 401);
    assert_eq!(
        get(
            &leash,
            "/api/spend",
            &[
                ("host", &host),
                ("authorization", "Bearer wrong-token-0123456789")
            ]
        )
        .0,
        401
    );
    let auth = format!("Bearer {token}");
    assert_eq!(
        get(
            &leash,
            "/api/spend",
            &[("host", &host), ("authorization", &auth)]
        )
        .0,
        200
    );
    // The page holds no data and loads without it; /metrics is unchanged.
    assert_eq!(
        http_request(leash.admin, "GET", "/console", &[], b"")
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        http_request(leash.admin, "GET", "/metrics", &[], b"")
            .unwrap()
            .0,
        200
    );
    assert!(!leash.logs().contains(token), "the token was logged");
}

/// Without a configured token, Leash makes its own (0600, in the audit
/// directory): the API is closed to anyone without it, on loopback too, and
/// to any host name the listener does not answer to (DNS rebinding); `leash
/// console` prints a one-time login URL that opens a session.
#[test]
fn the_console_is_closed_on_loopback_without_the_token_and_opens_with_a_login_url() {
    use std::os::unix::fs::PermissionsExt as _;
    let (_mock, leash) = start_with_policy("admin: { allow_policy_edit: true }\n");
    let token = leash.admin_token();
    let mode = std::fs::metadata(leash.audit_dir.join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let host = leash.admin.to_string();
    let auth = format!("Bearer {token}");
    // Attack: no token on loopback; the token under a rebound host name.
    assert_eq!(get(&leash, "/api/records", &[("host", &host)]).0, 401);
    assert_eq!(
        get(
            &leash,
            "/api/records",
            &[("host", "attacker.example"), ("authorization", &auth)]
        )
        .0,
        421
    );
    let (status, _, _) = http_request(
        leash.admin,
        "PUT",
        "/api/policy",
        &[("host", &host)],
        b"version: 1\n",
    )
    .unwrap();
    assert_eq!(status, 401, "a policy edit without the token");
    // Control: the same requests with the token and the listener's name.
    assert_eq!(
        get(
            &leash,
            "/api/records",
            &[("host", &host), ("authorization", &auth)]
        )
        .0,
        200
    );
    assert_eq!(
        get(
            &leash,
            "/api/records",
            &[("host", "localhost"), ("authorization", &auth)]
        )
        .0,
        200
    );
    // `leash console`: a URL that works once and gives a session.
    let url = leash.console_login_url();
    assert!(!url.contains(&token), "the token is in the URL");
    let path = url.trim_start_matches(&format!("http://{host}"));
    let (status, headers, _) =
        http_request(leash.admin, "GET", path, &[("host", &host)], b"").unwrap();
    assert_eq!(status, 303);
    let cookie = headers
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
        .expect("a session cookie");
    assert!(headers.iter().any(|(k, v)| k == "set-cookie"
        && v.contains("HttpOnly")
        && v.contains("SameSite=Strict")));
    let (status, _, _) = http_request(leash.admin, "GET", path, &[("host", &host)], b"").unwrap();
    assert_eq!(status, 401, "a login code works once");
    assert_eq!(
        get(
            &leash,
            "/api/spend",
            &[("host", &host), ("cookie", &cookie)]
        )
        .0,
        200
    );
    // A change from a session must come from the page (its own header).
    let put = |extra: &[(&str, &str)]| {
        let mut h = vec![("host", host.as_str()), ("cookie", cookie.as_str())];
        h.extend_from_slice(extra);
        http_request(leash.admin, "PUT", "/api/policy", &h, POLICY.as_bytes())
            .unwrap()
            .0
    };
    assert_eq!(put(&[]), 403, "a cross-site form with the session cookie");
    assert_eq!(put(&[("x-leash-console", "1")]), 200);
    leash_tests::results::record(
        "console_access",
        &json!({"loopback_without_token": 401, "rebound_host": 421, "policy_edit_without_token": 401, "reused_login_code": 401, "cross_site_change": 403}),
    );
}

/// Runs `tests/browser/console.mjs` against `leash`'s console; returns
/// what the pages showed (checked here for errors and outside requests)
/// and the screenshot directory.
fn browse(leash: &Leash) -> (Value, std::path::PathBuf) {
    let shots = leash_tests::browser::screenshots();
    let seen = leash_tests::browser::run_script(
        "console.mjs",
        &format!("http://{}", leash.admin),
        &[
            &shots.display().to_string(),
            &format!("http://{}", leash.addr),
            &leash.console_login_url(),
        ],
    );
    assert!(
        seen["logged_in"].as_str().unwrap().ends_with("/console"),
        "the login URL did not open the console: {}",
        seen["logged_in"]
    );
    (seen, shots)
}

/// The record view's trace: shown, linked to the tracing UI
/// (`admin.trace_url`), and its records alone on request.
fn check_trace_view(seen: &Value, record: &Value) {
    // The card says who, what and the outcome in words; the raw JSON is
    // behind a click.
    let card = seen["card"].as_str().unwrap();
    for field in ["provider", "model", "endpoint"] {
        assert!(
            card.contains(record[field].as_str().unwrap()),
            "{field} not in the card: {card}"
        );
    }
    assert!(
        card.contains(record["policy"]["action"].as_str().unwrap_or("allow")),
        "{card}"
    );
    assert_eq!(seen["raw_open"], false, "the raw JSON starts folded");
    let trace = record["trace_id"].as_str().unwrap();
    assert!(
        seen["trace_text"].as_str().unwrap().contains(trace),
        "{}",
        seen["trace_text"]
    );
    assert_eq!(
        seen["trace_link"],
        format!("https://tracing.example.test/trace/{trace}")
    );
    assert_eq!(seen["trace_rows"].as_array().unwrap().len(), 1);
}

/// The replay panel: a candidate blocking the research team shows, per
/// change, the counts the records imply (live action → block for the
/// team's requests, → allow for the others the live policy acted on).
fn check_replay_panel(seen: &Value, records: &[Value]) {
    let mut want: std::collections::BTreeMap<(String, String), u64> =
        std::collections::BTreeMap::new();
    for r in records.iter().filter(|r| r["event"].is_null()) {
        let live = r["policy"]["action"].as_str().unwrap_or("allow").to_owned();
        let candidate = if r["caller"]["team"] == "research" {
            "block"
        } else {
            "allow"
        };
        if live != candidate {
            *want.entry((live, candidate.to_owned())).or_default() += 1;
        }
    }
    let shown: std::collections::BTreeMap<(String, String), u64> = seen["replay_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                (
                    row[0].as_str().unwrap().to_owned(),
                    row[1].as_str().unwrap().to_owned(),
                ),
                row[2].as_str().unwrap().replace(',', "").parse().unwrap(),
            )
        })
        .collect();
    assert!(want.values().sum::<u64>() > 0);
    assert_eq!(shown, want, "{}", seen["replay_summary"]);
}

/// The spend chart against the API and the records: 24 hourly bars whose
/// segments add up to their totals, the totals equal `/api/series`, they
/// sum to the requests on record, and the clicked hour's (the latest with
/// traffic) breakdown adds up to its bar.
fn check_chart(leash: &Leash, seen: &Value, records: &[Value]) {
    let (status, api) = leash.api(
        "GET",
        "/api/series?range=day&metric=requests&by=provider",
        b"",
    );
    assert_eq!(status, 200, "{api}");
    let bars = seen["chart"].as_array().unwrap();
    let buckets = api["buckets"].as_array().unwrap();
    assert_eq!(bars.len(), 24);
    for (bar, bucket) in bars.iter().zip(buckets) {
        assert_eq!(bar["start"], bucket["start"]);
        assert_eq!(bar["total"].as_f64(), bucket["total"].as_f64(), "{bar}");
        assert_eq!(bar["segments"].as_f64(), bar["total"].as_f64(), "{bar}");
    }
    let plotted: f64 = bars.iter().map(|b| b["total"].as_f64().unwrap()).sum();
    let requests = records.iter().filter(|r| r["event"].is_null()).count();
    #[allow(clippy::cast_precision_loss, reason = "a handful of records")]
    let requests = requests as f64;
    assert!(
        (plotted - requests).abs() < 0.5,
        "plotted {plotted}, recorded {requests}"
    );
    let last = &bars[usize::try_from(seen["chart_clicked"].as_u64().unwrap()).unwrap()];
    let detail: f64 = seen["chart_detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row[1]
                .as_str()
                .unwrap()
                .replace(',', "")
                .parse::<f64>()
                .unwrap()
        })
        .sum();
    assert!(
        (detail - last["total"].as_f64().unwrap()).abs() < 0.5,
        "{}",
        seen["chart_detail"]
    );
    assert!(
        last["titles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap().contains("openai")),
        "hover titles name the parts: {last}"
    );
}

/// Every page in headless Chromium against a gateway that served real SDK
/// traffic: what the pages show is what the audit records say. Screenshots
/// go to `target/console-screenshots/` (the README's).
#[test]
fn console_pages_in_a_real_browser() {
    let (_mock, leash) = start_with_policy(
        "teams:\n  - { name: research, header: true }\nbudgets:\n  - { team: research, period: day, limit_usd: 5, name: research-daily }\nadmin: { trace_url: \"https://tracing.example.test/trace/{trace_id}\" }\n",
    );
    for (case, provider) in [
        ("openai-chat", "openai"),
        ("openai-chat-stream", "openai"),
        ("anthropic", "anthropic"),
        ("google", "google"),
    ] {
        let out = run_python(
            "sdk_check.py",
            &[case, &leash.base_url(provider), "sk-test-key"],
            &[("LEASH_TEST_HEADERS", r#"{"x-leash-team": "research"}"#)],
        );
        assert_success(case, &out);
    }
    assert_eq!(chat(&leash, "mail bob@example.com"), 200);
    assert_eq!(chat(&leash, "key AKIAZ7QX3PLM9V2KD4RT"), 403);
    let records = leash.wait_records(6);

    let (seen, shots) = browse(&leash);

    // Live: one row per record, newest first; a click shows the record.
    let live = seen["live"].as_array().unwrap();
    assert_eq!(live.len(), records.len());
    assert_eq!(live[0][2], records.last().unwrap()["provider"]);
    assert_eq!(seen["record"]["id"], records.last().unwrap()["id"]);
    check_trace_view(&seen, records.last().unwrap());
    // The request the browser script made while the page was open arrived
    // through the live feed, on top.
    assert_eq!(seen["live_status"], 200);
    let after = seen["live_after"].as_array().unwrap();
    assert_eq!(after.len(), records.len() + 1);
    let records = leash.wait_records(records.len() + 1);
    check_replay_panel(&seen, &records);
    check_chart(&leash, &seen, &records);
    assert_eq!(after[0][2], "openai");
    assert_eq!(after[0][5], records.last().unwrap()["caller"]["addr"]);
    // Spend: the totals of the records.
    let cost: f64 = records.iter().filter_map(|r| r["cost_usd"].as_f64()).sum();
    let tokens: u64 = records
        .iter()
        .map(|r| {
            r["usage"]["input_tokens"].as_u64().unwrap_or(0)
                + r["usage"]["output_tokens"].as_u64().unwrap_or(0)
        })
        .sum();
    assert_eq!(seen["spend"]["requests"], records.len().to_string());
    assert_eq!(
        seen["spend"]["tokens"].as_str().unwrap().replace(',', ""),
        tokens.to_string()
    );
    assert_eq!(seen["spend"]["cost"], format!("${cost:.4}"));
    // The budget: limit, and what the research team spent of it.
    let research_cost: f64 = records
        .iter()
        .filter(|r| r["caller"]["team"] == "research")
        .filter_map(|r| r["cost_usd"].as_f64())
        .sum();
    let budget = &seen["spend"]["budgets"][0];
    assert_eq!(budget[0], "research-daily");
    assert_eq!(budget[3], "5.0000");
    assert_eq!(budget[4], format!("{research_cost:.6}"));
    assert_eq!(budget[5], format!("{:.6}", 5.0 - research_cost));
    let research: Vec<&Value> = seen["spend"]["by_team"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row[0] == "research")
        .collect();
    let research_records = records
        .iter()
        .filter(|r| r["caller"]["team"] == "research")
        .count();
    assert_eq!(research[0][1], research_records.to_string(), "{research:?}");
    // Violations: one block, one redaction, by rule and detector.
    let violations = seen["violations"].as_array().unwrap();
    assert!(
        violations
            .iter()
            .any(|r| r[0] == "block-secrets" && r[1] == "1"),
        "{violations:?}"
    );
    assert!(
        violations
            .iter()
            .any(|r| r[0] == "redact-pii" && r[1] == "1" && r[2] == "email ×1"),
        "{violations:?}"
    );
    // Drill-down: the newest violation's record.
    assert_eq!(
        seen["violation"]["policy"]["action"], "block",
        "{}",
        seen["violation"]
    );
    // Policy: the rules, and the playground's decision.
    assert_eq!(seen["rules"][0][0], "block-secrets");
    assert_eq!(
        seen["playground"]["action"], "block",
        "{}",
        seen["playground"]
    );
    assert_eq!(leash.audit_records().len(), records.len());
    assert_eq!(seen["interception"]["mode"], "gateway");
    for page in ["live", "spend", "violations", "policy", "interception"] {
        assert!(shots.join(format!("{page}.png")).exists());
    }
}

/// A fresh install's live page says what to do next (the gateway's base
/// URL, `leash run`, `leash ca install`) instead of an empty table; once a
/// request went through, the rows show and the hint is gone (the control).
#[test]
fn a_fresh_console_says_what_to_do_next() {
    let (_mock, leash) = start_with_policy("");
    let look = || {
        leash_tests::browser::run_script(
            "empty.mjs",
            &format!("http://{}", leash.admin),
            &[
                &leash_tests::browser::screenshots().display().to_string(),
                &leash.console_login_url(),
            ],
        )
    };
    let fresh = look();
    assert_eq!(fresh["empty_visible"], true, "{fresh}");
    let text = fresh["empty_text"].as_str().unwrap();
    for hint in ["OPENAI_BASE_URL", "leash run", "leash ca install"] {
        assert!(text.contains(hint), "{hint} not in the hint: {text}");
    }
    assert_eq!(chat(&leash, "hello"), 200);
    leash.wait_records(1);
    let used = look();
    assert_eq!(used["empty_visible"], false, "{used}");
    assert_eq!(used["rows"].as_array().unwrap().len(), 1);
}
