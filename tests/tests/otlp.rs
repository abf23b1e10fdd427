//! OpenTelemetry export: the spans and metrics Leash sends over OTLP, as a
//! receiver decoding the official OTLP protobuf definitions sees them —
//! the `GenAI` semantic conventions for each provider, streamed or not,
//! through the gateway and through transparent interception; a client's
//! trace continued; gRPC with headers; sampling; and a collector that is
//! down or hangs costing requests nothing while the drops are counted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

use leash_tests::{
    fleet::wait_until,
    gateway::Leash,
    harness::{
        assert_success, mock_providers_yaml, openai_chat_in_trace, require_root, run_python,
    },
    http::post_json,
    mock::MockProvider,
    otlp::OtlpReceiver,
    world::{Host, World},
};
use serde_json::Value;

const CHAT: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

/// `telemetry:` exporting to `endpoint` quickly (tests wait on arrivals).
fn telemetry(endpoint: &str, extra: &str) -> String {
    format!(
        "telemetry:\n  otlp: {{ endpoint: \"{endpoint}\", flush_interval: 20ms, metrics_interval: 200ms{extra} }}\n"
    )
}

/// An HTTP OTLP receiver, the mock providers and a gateway exporting to
/// the receiver (`telemetry.otlp` options `otlp`, more config `extra`).
fn gateway_with_otlp(otlp: &str, extra: &str) -> (OtlpReceiver, MockProvider, Leash) {
    let rx = OtlpReceiver::start("http");
    let mock = MockProvider::start();
    let leash = Leash::start(&format!(
        "{}{}{extra}",
        mock_providers_yaml(&mock),
        telemetry(&rx.endpoint(), otlp)
    ));
    (rx, mock, leash)
}

/// The value of the Prometheus sample `series` (name and labels as shown).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

/// SDK case, provider name in the conventions, operation, model, stream.
const CASES: [(&str, &str, &str, &str, bool); 6] = [
    ("openai-chat", "openai", "chat", "gpt-4o-mini", false),
    ("openai-chat-stream", "openai", "chat", "gpt-4o-mini", true),
    ("anthropic", "anthropic", "chat", "claude-sonnet-4-5", false),
    (
        "anthropic-stream",
        "anthropic",
        "chat",
        "claude-sonnet-4-5",
        true,
    ),
    (
        "google",
        "gcp.gemini",
        "generate_content",
        "gemini-2.5-flash",
        false,
    ),
    (
        "google-stream",
        "gcp.gemini",
        "generate_content",
        "gemini-2.5-flash",
        true,
    ),
];

/// Checks the span of `record` against the conventions and the record.
fn check_span(
    rx: &OtlpReceiver,
    record: &Value,
    case: (&str, &str, &str, &str, bool),
    server: &str,
    logs: &dyn Fn() -> String,
) {
    let (name, provider, op, model, stream) = case;
    let span = rx.wait_span(record["span_id"].as_str().unwrap(), logs);
    let a = &span["attributes"];
    assert_eq!(span["name"], format!("{op} {model}"), "{name}: {span}");
    assert_eq!(span["kind"], "SPAN_KIND_CLIENT", "{name}");
    assert_eq!(span["trace_id"], record["trace_id"], "{name}");
    assert_eq!(
        span["status"]["code"], "STATUS_CODE_UNSET",
        "{name}: {span}"
    );
    assert_eq!(span["resource"]["service.name"], "leash");
    assert_eq!(span["scope"], "leash");
    for (k, v) in [
        ("gen_ai.operation.name", op),
        ("gen_ai.provider.name", provider),
        ("gen_ai.request.model", model),
        ("gen_ai.response.model", model),
        ("server.address", server),
    ] {
        assert_eq!(a[k], v, "{name}: {k} in {span}");
    }
    assert!(a["server.port"].as_i64().unwrap() > 0);
    assert!(
        a["gen_ai.response.id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{name}: {span}"
    );
    let reasons = a["gen_ai.response.finish_reasons"]
        .as_array()
        .expect("finish reasons");
    assert!(!reasons.is_empty(), "{name}");
    let usage = &record["usage"];
    assert_eq!(
        a["gen_ai.usage.input_tokens"], usage["input_tokens"],
        "{name}: {span}"
    );
    assert_eq!(
        a["gen_ai.usage.output_tokens"], usage["output_tokens"],
        "{name}"
    );
    assert_eq!(a["leash.record.id"], record["id"], "{name}");
    assert_eq!(a["leash.mode"], record["mode"], "{name}");
    assert_eq!(a["leash.stream"], stream, "{name}");
    assert!(span["end_ns"].as_u64() > span["start_ns"].as_u64());
    // The phases, as child spans inside the exchange's span.
    let children = rx.children(record["span_id"].as_str().unwrap());
    let mut names: Vec<&str> = children
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    let body = if stream {
        "leash.stream"
    } else {
        "leash.response"
    };
    let mut want = vec!["leash.policy", "leash.upstream", body];
    want.sort_unstable();
    assert_eq!(names, want, "{name}");
    for c in &children {
        assert_eq!(c["trace_id"], span["trace_id"]);
        assert!(c["start_ns"].as_u64() >= span["start_ns"].as_u64(), "{c}");
        assert!(c["end_ns"].as_u64() <= span["end_ns"].as_u64(), "{c}");
    }
}

#[test]
fn spans_and_metrics_follow_the_genai_conventions_for_every_provider() {
    let (rx, _mock, leash) = gateway_with_otlp(
        "",
        "policy:\n  version: 1\n  rules:\n    - { name: no-secrets, match: { detectors: [secrets] }, action: block }\n",
    );
    let logs = || leash.logs();
    for (i, case) in CASES.iter().enumerate() {
        let route = case.0.split('-').next().unwrap();
        let out = run_python(
            "sdk_check.py",
            &[case.0, &leash.base_url(route), "sk-test"],
            &[],
        );
        assert_success(case.0, &out);
        let record = leash.wait_records(i + 1)[i].clone();
        check_span(&rx, &record, *case, "127.0.0.1", &logs);
    }
    check_metrics(&rx, &logs);
    check_blocked(&rx, &leash);
}

/// The `GenAI` metrics of the six cases, per provider, and Leash's own.
fn check_metrics(rx: &OtlpReceiver, logs: &dyn Fn() -> String) {
    for (_, provider, op, model, _) in CASES {
        for token_type in ["input", "output"] {
            let p = rx.wait_point(
                "gen_ai.client.token.usage",
                &[
                    ("gen_ai.provider.name", provider),
                    ("gen_ai.token.type", token_type),
                    ("gen_ai.request.model", model),
                ],
                1.0,
                logs,
            );
            assert_eq!(p["unit"], "{token}");
            assert_eq!(p["type"], "histogram");
        }
        let d = rx.wait_point(
            "gen_ai.client.operation.duration",
            &[
                ("gen_ai.provider.name", provider),
                ("gen_ai.operation.name", op),
            ],
            2.0,
            logs,
        );
        assert_eq!(d["unit"], "s");
        assert!(d["count"].as_u64().unwrap() >= 2, "stream and not: {d}");
        rx.wait_point(
            "gen_ai.client.operation.time_to_first_chunk",
            &[("gen_ai.provider.name", provider)],
            1.0,
            logs,
        );
    }
    rx.wait_point(
        "leash.requests",
        &[("leash.policy.action", "allow")],
        2.0,
        logs,
    );
}

/// A blocked request: the span says so, and the secret is nowhere in what
/// was exported.
fn check_blocked(rx: &OtlpReceiver, leash: &Leash) {
    let logs = || leash.logs();
    let secret = "AKIAZ7QX3PLM9V2KD4RT";
    let body = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"deploy with {secret}"}}]}}"#
    );
    assert_eq!(
        post_json(
            leash.addr,
            "/v1/openai/chat/completions",
            "sk-test",
            body.as_bytes()
        )
        .0,
        403
    );
    let record = leash.wait_records(CASES.len() + 1)[CASES.len()].clone();
    let span = rx.wait_span(record["span_id"].as_str().unwrap(), logs);
    assert_eq!(span["status"]["code"], "STATUS_CODE_ERROR", "{span}");
    assert_eq!(span["attributes"]["error.type"], "leash_policy_blocked");
    assert_eq!(span["attributes"]["leash.policy.action"], "block");
    assert_eq!(
        span["attributes"]["leash.policy.rules"],
        serde_json::json!(["no-secrets"])
    );
    rx.wait_point(
        "leash.requests",
        &[("leash.policy.action", "block")],
        1.0,
        logs,
    );
    let text = rx.text();
    assert!(
        !text.contains(secret) && !text.contains("sk-test"),
        "a secret was exported"
    );
    let m = leash.metrics();
    assert!(
        sample(&m, "leash_telemetry_exported_total") >= 4.0 * 6.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "leash_telemetry_dropped_total{reason=\"export_failed\"}"
        ) < 0.5
    );
    assert!(sample(&m, "leash_telemetry_dropped_total{reason=\"queue_full\"}") < 0.5);
}

#[test]
fn a_client_trace_gets_leash_as_a_child_span() {
    const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CLIENT_SPAN: &str = "00f067aa0ba902b7";
    // Even with no new trace sampled, the client's sampled trace is.
    let (rx, mock, leash) = gateway_with_otlp(", sample_ratio: 0", "");
    openai_chat_in_trace(&leash.base_url("openai"), CLIENT_TRACE, CLIENT_SPAN);
    let record = leash.wait_records(1)[0].clone();
    let span = rx.wait_span(record["span_id"].as_str().unwrap(), || leash.logs());
    assert_eq!(span["trace_id"], CLIENT_TRACE);
    assert_eq!(
        span["parent_span_id"], CLIENT_SPAN,
        "a child of the app's span"
    );
    let upstream = mock
        .requests()
        .last()
        .unwrap()
        .header("traceparent")
        .unwrap()
        .to_owned();
    assert_eq!(
        upstream,
        format!(
            "00-{CLIENT_TRACE}-{}-01",
            record["span_id"].as_str().unwrap()
        ),
        "the provider's parent is Leash's span"
    );

    // A new trace at ratio 0: not sampled (the provider is told so), no
    // span exported — but its metrics are.
    assert_eq!(
        post_json(leash.addr, "/v1/openai/chat/completions", "sk-test", CHAT).0,
        200
    );
    let record = leash.wait_records(2)[1].clone();
    let upstream = mock
        .requests()
        .last()
        .unwrap()
        .header("traceparent")
        .unwrap()
        .to_owned();
    assert!(upstream.ends_with("-00"), "{upstream}");
    wait_until(
        "both exchanges in the duration metric",
        Duration::from_secs(20),
        || leash.logs(),
        || {
            rx.lines("metric").iter().any(|p| {
                p["name"] == "gen_ai.client.operation.duration" && p["count"].as_u64() == Some(2)
            })
        },
    );
    assert!(
        rx.lines("span")
            .iter()
            .all(|s| s["trace_id"] != record["trace_id"]),
        "an unsampled trace was exported"
    );
}

#[test]
fn grpc_export_carries_the_headers_file() {
    let rx = OtlpReceiver::start("grpc");
    let mock = MockProvider::start();
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("otlp-headers");
    std::fs::write(
        &headers,
        "# the collector's tenant\nx-test-tenant: team-42\n",
    )
    .unwrap();
    std::fs::set_permissions(&headers, std::fs::Permissions::from_mode(0o600)).unwrap();
    let leash = Leash::start_in(
        dir,
        &format!(
            "{}{}",
            mock_providers_yaml(&mock),
            telemetry(
                &rx.endpoint(),
                &format!(", protocol: grpc, headers_file: \"{}\"", headers.display())
            )
        ),
    );
    let out = run_python(
        "sdk_check.py",
        &["anthropic-stream", &leash.base_url("anthropic"), "sk-test"],
        &[],
    );
    assert_success("anthropic SDK", &out);
    let record = leash.wait_records(1)[0].clone();
    check_span(&rx, &record, CASES[3], "127.0.0.1", &|| leash.logs());
    assert!(
        rx.lines("header")
            .iter()
            .any(|h| h["x-test-tenant"] == "team-42"),
        "the headers file's header did not reach the collector"
    );
    assert!(
        !leash.logs().contains("team-42"),
        "a header value was logged"
    );
}

/// Waits until at least `n` spans were dropped for `reason`.
fn wait_dropped(leash: &Leash, reason: &str, n: f64) {
    let series = format!("leash_telemetry_dropped_total{{reason=\"{reason}\"}}");
    wait_until(
        &format!("{n} spans dropped ({reason})"),
        Duration::from_secs(30),
        || leash.logs(),
        || sample(&leash.metrics(), &series) >= n,
    );
}

/// `n` chat requests; each must succeed within `limit`.
fn requests_are_unaffected(leash: &Leash, n: usize, limit: Duration) {
    for _ in 0..n {
        let started = Instant::now();
        let (status, _, body) =
            post_json(leash.addr, "/v1/openai/chat/completions", "sk-test", CHAT);
        assert_eq!(status, 200, "{body}");
        assert!(
            started.elapsed() < limit,
            "a request took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_collector_that_is_down_or_hangs_costs_requests_nothing() {
    let mock = MockProvider::start();
    // Down: the port refuses. Every request answers; every span is counted
    // as dropped.
    let mut rx = OtlpReceiver::start("http");
    let endpoint = rx.endpoint();
    rx.stop();
    let leash = Leash::start(&format!(
        "{}{}",
        mock_providers_yaml(&mock),
        telemetry(&endpoint, "")
    ));
    requests_are_unaffected(&leash, 20, Duration::from_secs(1));
    wait_dropped(&leash, "export_failed", 20.0 * 4.0);
    assert!(sample(&leash.metrics(), "leash_telemetry_exported_total") < 0.5);

    // Hanging: a collector that accepts and never answers. The export
    // waits for its timeout (5 s) while the queue (2) fills: requests
    // still answer at once, and what did not fit is counted.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hang.local_addr().unwrap());
    let leash = Leash::start(&format!(
        "{}{}",
        mock_providers_yaml(&mock),
        telemetry(&endpoint, ", queue_size: 2, batch_size: 1, timeout: 5s")
    ));
    requests_are_unaffected(&leash, 30, Duration::from_secs(1));
    wait_dropped(&leash, "queue_full", 1.0);
    drop(hang);
}

#[test]
fn transparent_spans_name_the_calling_process() {
    if !require_root() {
        return;
    }
    let rx = OtlpReceiver::start("http");
    let w = World::new(
        "otlp",
        &[
            Host("api.openai.com", "127.10.3.1", true),
            Host("api.anthropic.com", "127.10.3.2", true),
            Host("generativelanguage.googleapis.com", "127.10.3.3", true),
        ],
        &telemetry(&rx.endpoint(), ""),
    );
    for (i, case) in CASES.iter().enumerate() {
        let host = host_of(case.1);
        let base = if case.1 == "openai" {
            format!("https://{host}/v1")
        } else {
            format!("https://{host}")
        };
        let out = w.sdk(case.0, &base, "Say hello", "{}");
        assert_success(&format!("{}\n{}", case.0, w.agent.logs()), &out);
        let record = w.agent.wait_records(i + 1)[i].clone();
        assert_eq!(record["mode"], "transparent");
        check_span(&rx, &record, *case, host, &|| w.agent.logs());
        let span = rx.wait_span(record["span_id"].as_str().unwrap(), || w.agent.logs());
        let a = &span["attributes"];
        assert!(
            a["leash.caller.exe"].as_str().unwrap().contains("python"),
            "{span}"
        );
        assert_eq!(a["leash.caller.pid"], record["caller"]["pid"]);
        assert_eq!(a["leash.caller.cgroup"], record["caller"]["cgroup"]);
    }
}

fn host_of(provider: &str) -> &'static str {
    match provider {
        "openai" => "api.openai.com",
        "anthropic" => "api.anthropic.com",
        _ => "generativelanguage.googleapis.com",
    }
}

/// `content: redacted`: the messages go out redacted, and only for the
/// exchanges content capture keeps (here: the `research` team's).
#[test]
fn content_attributes_are_redacted_and_follow_capture() {
    let (rx, _mock, leash) = gateway_with_otlp(
        ", content: redacted",
        "teams:\n  - { name: research, header: true }\ncapture:\n  default: none\n  rules:\n    - { class: redacted, teams: [research] }\n",
    );
    let email = "jane.roe@example.com";
    for (i, (case, team)) in [
        ("openai-chat", "research"),
        ("anthropic-stream", "research"),
        ("openai-chat", "sales"),
    ]
    .iter()
    .enumerate()
    {
        let route = case.split('-').next().unwrap();
        let headers = format!(r#"{{"x-leash-team": "{team}"}}"#);
        let out = run_python(
            "sdk_check.py",
            &[case, &leash.base_url(route), "sk-test"],
            &[
                ("LEASH_TEST_PROMPT", &format!("mail {email} please")),
                ("LEASH_TEST_HEADERS", &headers),
            ],
        );
        assert_success(case, &out);
        let text = serde_json::from_slice::<Value>(&out.stdout).unwrap()["text"]
            .as_str()
            .unwrap()
            .to_owned();
        let record = leash.wait_records(i + 1)[i].clone();
        let span = rx.wait_span(record["span_id"].as_str().unwrap(), || leash.logs());
        let a = &span["attributes"];
        if *team == "sales" {
            // Control: capture keeps nothing of this team: no content.
            assert!(a.get("gen_ai.input.messages").is_none(), "{span}");
            assert!(a.get("gen_ai.output.messages").is_none(), "{span}");
            continue;
        }
        let input: Value =
            serde_json::from_str(a["gen_ai.input.messages"].as_str().unwrap()).unwrap();
        let said = input[0]["parts"][0]["content"].as_str().unwrap();
        assert_eq!(input[0]["role"], "user", "{input}");
        assert!(
            said.starts_with("mail ") && said.contains("[REDACTED:"),
            "{said}"
        );
        let output: Value =
            serde_json::from_str(a["gen_ai.output.messages"].as_str().unwrap()).unwrap();
        assert_eq!(output[0]["role"], "assistant");
        assert_eq!(output[0]["parts"][0]["content"], text.as_str(), "{output}");
    }
    assert!(
        !rx.text().contains(email),
        "an unredacted email was exported"
    );
}
