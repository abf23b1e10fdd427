//! The `leash` command line: help that describes every flag, embedded
//! defaults, graceful shutdown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use leash_tests::{
    harness::{
        Leash, http_request, leash_bin, leash_command, mock_providers_yaml, require_root, run,
    },
    mock::MockProvider,
};

fn help(args: &[&str]) -> String {
    let out = run(leash_command().args(args));
    assert!(out.status.success(), "{args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_describes_every_flag() {
    let top = help(&["--help"]);
    for word in [
        "gateway",
        "config",
        "--log-format",
        "--log-level",
        "--version",
    ] {
        assert!(top.contains(word), "leash --help lacks {word}:\n{top}");
    }
    let gw = help(&["gateway", "--help"]);
    for flag in [
        "--config",
        "--listen",
        "--admin-listen",
        "--audit-dir",
        "--log-format",
        "--log-level",
    ] {
        let lines: Vec<&str> = gw.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.contains(flag))
            .unwrap_or_else(|| panic!("gateway --help lacks {flag}:\n{gw}"));
        // The description follows the flag (and its value name) on the same
        // line, or on the next one when clap wraps.
        let same_line = lines[at]
            .split(flag)
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .filter(|w| !w.starts_with('<'))
            .count();
        let next_line = lines.get(at + 1).map_or("", |l| l.trim());
        let described = same_line >= 2 || (!next_line.is_empty() && !next_line.starts_with('-'));
        assert!(described, "{flag} has no description:\n{gw}");
    }
}

#[test]
fn sigterm_drains_and_flushes_the_audit_trail() {
    let mock = MockProvider::start();
    let mut leash = Leash::start(&mock_providers_yaml(&mock));
    for _ in 0..3 {
        let (status, _, _) = http_request(
            leash.addr,
            "POST",
            "/v1/openai/chat/completions",
            &[],
            br#"{"model":"gpt-4o"}"#,
        )
        .unwrap();
        assert_eq!(status, 200);
    }
    let status = leash.stop();
    assert!(status.success(), "exit status {status}:\n{}", leash.logs());
    assert_eq!(leash.audit_records().len(), 3);
    assert!(leash.logs().contains("leash stopped"));
    let mode = std::fs::metadata(
        leash_tests::harness::segment_files(&leash.audit_dir)
            .first()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600,
        "audit files are private"
    );
}

/// The process holds private keys (CA, gateway TLS): no core dumps of it,
/// whatever the user's limits or the system's core pattern.
#[test]
fn leash_cannot_dump_core() {
    use std::os::unix::fs::MetadataExt as _;
    if !require_root() {
        return;
    }
    // Any long-running command: as an unprivileged user, so that "not
    // dumpable" shows (the kernel then gives /proc/<pid>/fd to root).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut child = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(leash_bin())
        .args(["audit", "tail", "--follow", "--dir"])
        .arg(dir.path())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let limits = loop {
        // setpriv execs leash: same pid, once the exec happened.
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        if exe == leash_bin().canonicalize().unwrap() {
            std::thread::sleep(std::time::Duration::from_millis(200));
            break std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "leash did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let fd_owner = std::fs::metadata(format!("/proc/{pid}/fd")).unwrap().uid();
    let _ = child.kill();
    let _ = child.wait();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let values: Vec<&str> = core.split_whitespace().skip(4).take(2).collect();
    assert_eq!(values, ["0", "0"], "{core}");
    assert!(status.contains("Uid:\t65534"), "{status}");
    assert_eq!(
        fd_owner, 0,
        "/proc/{pid}/fd belongs to the process's user: it is dumpable"
    );
}

#[test]
fn metrics_and_health_on_the_admin_listener() {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    let (status, _, _) = http_request(
        leash.addr,
        "POST",
        "/v1/anthropic/v1/messages",
        &[],
        br#"{"model":"claude-x"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    leash.wait_records(1);
    // The writer counts a record once its batch is synced, just after the
    // bytes become visible in the file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !leash.metrics().contains("leash_audit_records_total 1")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let metrics = leash.metrics();
    for needle in [
        r#"leash_requests_total{provider="anthropic",model="claude-x",team="none",action="allow",status="200"} 1"#,
        "leash_request_duration_seconds_bucket",
        "leash_overhead_seconds_bucket",
        "leash_audit_records_total 1",
        "leash_audit_dropped_total 0",
        r#"leash_tokens_total{provider="anthropic",model="claude-x",team="none",kind="input"} 13"#,
        r#"leash_tokens_total{provider="anthropic",model="claude-x",team="none",kind="output"} 9"#,
        r#"leash_unpriced_requests_total{provider="anthropic",model="claude-x",team="none"} 1"#,
        "leash_ttfb_seconds_bucket",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
}

/// Every metric the shipped Grafana dashboard queries exists in `/metrics`.
#[test]
fn grafana_dashboard_queries_real_metrics() {
    let mock = MockProvider::start();
    let leash = Leash::start(&format!(
        "{}budgets:\n  - {{ team: t, period: day, limit_usd: 1 }}\n",
        mock_providers_yaml(&mock)
    ));
    let (status, _, _) = http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[],
        br#"{"model":"gpt-4o"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    leash.wait_records(1);
    let metrics = leash.metrics();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../leash-agent/dist/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("leash_"))
            {
                // Families with no samples yet still announce themselves.
                let family = name.trim_end_matches("_bucket").trim_end_matches("_total");
                assert!(
                    metrics.contains(&format!("# TYPE {family} ")),
                    "dashboard queries unknown metric {name}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 12, "{checked}");
    // The SLO panels read the shipped recording rules.
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../leash-agent/dist/prometheus-rules.yaml"),
    )
    .unwrap();
    let mut recorded = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .filter(|w| w.starts_with("leash:"))
            {
                assert!(
                    rules.contains(&format!("record: {name}\n")),
                    "dashboard queries {name}, which no shipped rule records"
                );
                recorded += 1;
            }
        }
    }
    assert!(recorded >= 12, "{recorded}");
}
