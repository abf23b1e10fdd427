//! Transparent interception (root): `leash run` with its eBPF hooks attached
//! to a temporary child cgroup; fake provider hosts on 127.10.0.x:443 with
//! certificates from their own "public" CA; clients in the cgroup with a
//! private /etc/hosts that maps the real provider names to those addresses,
//! trusting only the organisation CA. Applications use their default URLs.
//!
//! The agent itself runs inside the cgroup it intercepts, so every test also
//! checks that its own upstream connections are never looped back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use leash_tests::{
    dns::FakeDns,
    harness::{Agent, Cgroup, assert_success, canary, free_port, python, require_root, run},
    mock::{MockProvider, text_of},
    tls::{Identity, TestCa},
    world::{CHAT, Host, World},
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

fn assert_chat_ok(out: &Output, agent: &Agent) {
    assert_success(
        &format!("curl chat\n--- agent log ---\n{}", agent.logs()),
        out,
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], text_of(5));
}

#[test]
fn unmodified_curl_is_intercepted_and_audited_with_its_process() {
    if !require_root() {
        return;
    }
    let w = World::new("curl", &[Host("api.openai.com", "127.10.0.1", true)], "");
    let key = canary("transparent");
    assert_chat_ok(&w.chat(&w.agent.ca_pem(), &key), &w.agent);

    let rec = &w.agent.wait_records(1)[0];
    assert_eq!(rec["mode"], "transparent", "{rec}");
    assert_eq!(rec["provider"], "openai");
    assert_eq!(rec["endpoint"], "/chat/completions");
    assert_eq!(rec["model"], "gpt-4o-mini");
    assert_eq!(rec["status"], 200);
    let caller = &rec["caller"];
    assert!(caller["pid"].as_u64().is_some_and(|p| p > 1), "{rec}");
    assert!(
        caller["exe"].as_str().is_some_and(|e| e.ends_with("/curl")),
        "{rec}"
    );
    assert_eq!(caller["uid"], 0);
    assert_eq!(caller["user"], "root");
    assert_eq!(
        caller["cgroup"].as_str(),
        Some(w.cgroup.relative().as_str()),
        "{rec}"
    );

    let seen = w.mocks[0].requests();
    assert_eq!(
        seen.len(),
        1,
        "exactly one upstream request: the agent's own connection was not looped back"
    );
    assert_eq!(seen[0].uri, "/v1/chat/completions");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {key}").as_str())
    );
    assert!(!w.agent.logs().contains(&key), "API key in agent logs");
    assert!(!serde_json::to_string(rec).unwrap().contains(&key));
    assert!(!w.agent.metrics().contains(&key));
    assert!(
        w.agent
            .metrics()
            .contains(r#"leash_intercepted_connections_total{action="terminated"} 1"#)
    );
}

#[test]
fn outside_the_cgroup_nothing_is_intercepted() {
    if !require_root() {
        return;
    }
    let w = World::new("outside", &[Host("api.openai.com", "127.10.0.2", true)], "");
    // The test process is not in the cgroup: it reaches the fake provider
    // directly and sees the provider's own certificate.
    let out = run(std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&w.public_ca)
        .args(["--resolve", "api.openai.com:443:127.10.0.2", "-d", CHAT])
        .arg("https://api.openai.com/v1/chat/completions"));
    assert_success("curl outside the cgroup", &out);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        w.agent.audit_records().is_empty(),
        "a call from outside the cgroup was intercepted"
    );
}

#[test]
fn all_tls_scope_splices_other_hosts_untouched() {
    if !require_root() {
        return;
    }
    let w = World::new(
        "splice",
        &[
            Host("api.openai.com", "127.10.0.3", true),
            Host("www.example.org", "127.10.0.4", false),
        ],
        "  scope: all-tls\n",
    );
    // Not a provider: spliced byte for byte, so its own certificate (from
    // the public CA) reaches the client, and the org CA would not verify.
    let out = w.curl(
        &w.public_ca,
        "https://www.example.org/v1/chat/completions",
        &["-d", CHAT],
    );
    assert_success(&format!("spliced curl\n{}", w.agent.logs()), &out);
    let out = w.curl(
        &w.agent.ca_pem(),
        "https://www.example.org/v1/chat/completions",
        &["-d", CHAT],
    );
    assert!(
        !out.status.success(),
        "a non-provider host was terminated with the org CA"
    );
    // The provider is still terminated.
    assert_chat_ok(&w.chat(&w.agent.ca_pem(), "sk-test"), &w.agent);
    let records = w.agent.wait_records(1);
    assert_eq!(
        records.len(),
        1,
        "only the provider call is audited: {records:#?}"
    );
    assert!(w.mocks[1].requests().len() == 1);
    assert!(
        w.agent
            .metrics()
            .contains(r#"leash_intercepted_connections_total{action="spliced"} 2"#),
        "{}",
        w.agent.metrics()
    );
    // The console's interception page: setup, counters, CA.
    let (status, v) = w.agent.api("GET", "/api/interception", b"");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["mode"], "transparent");
    assert_eq!(v["scope"], "all-tls");
    assert_eq!(v["failure_mode"], "open");
    assert_eq!(v["connections"]["spliced"], 2, "{v}");
    assert_eq!(v["connections"]["terminated"], 1, "{v}");
    assert_eq!(v["hosts"][0]["name"], "api.openai.com");
    assert!(
        v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "127.10.0.3"),
        "{v}"
    );
    let out = run(std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(w.agent.ca_pem()));
    let fingerprint = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        fingerprint.trim().rsplit('=').next().unwrap(),
        v["ca"]["sha256"].as_str().unwrap()
    );
}

#[test]
fn getpeername_shows_the_address_the_client_connected_to() {
    if !require_root() {
        return;
    }
    let w = World::new("peer", &[Host("api.openai.com", "127.10.0.5", true)], "");
    let script = "import socket; s = socket.create_connection(('api.openai.com', 443)); print(s.getpeername()[0], s.getpeername()[1])";
    let py = python();
    let out = run(&mut w
        .cgroup
        .command(&w.hosts_file, py.to_str().unwrap(), &["-c", script]));
    assert_success("getpeername", &out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "127.10.0.5 443"
    );
}

#[test]
fn after_kill_9_traffic_goes_direct_and_a_restart_resumes_interception() {
    if !require_root() {
        return;
    }
    let mut w = World::new(
        "failopen",
        &[Host("api.openai.com", "127.10.0.6", true)],
        "",
    );
    assert_chat_ok(&w.chat(&w.agent.ca_pem(), "sk-test"), &w.agent);
    // Its record is on disk before the crash (batch durability writes it a
    // moment after the answer).
    w.agent.wait_records(1);
    w.agent.kill9();
    let killed = Instant::now();
    // Fail open: within 2 s the client reaches the provider directly (its
    // own certificate, from the public CA, verifies).
    let direct = loop {
        let out = w.chat(&w.public_ca.clone(), "sk-test");
        if out.status.success() {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "still not direct 2 s after kill -9: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("direct {direct:?} after kill -9");
    leash_tests::results::record(
        "fail_open",
        &serde_json::json!({"direct_after_kill_ms": direct.as_millis()}),
    );
    w.agent.restart();
    assert_chat_ok(&w.chat(&w.agent.ca_pem(), "sk-test"), &w.agent);
    assert_eq!(w.agent.wait_records(2).len(), 2);
}

/// The agent verifies the real provider's certificate for the name the
/// client asked for: an expired, misnamed or self-signed upstream
/// certificate is refused (502 to the client) and nothing is sent.
#[test]
fn upstream_certificates_are_verified_in_transparent_mode() {
    if !require_root() {
        return;
    }
    let hosts = [
        Host("api.openai.com", "127.10.0.18", true),
        Host("api.anthropic.com", "127.10.0.19", true),
        Host("generativelanguage.googleapis.com", "127.10.0.20", true),
    ];
    let w = World::with_identities("upcert", &hosts, "", |ca, h| match h.0 {
        "api.openai.com" => ca.expired_identity(&[h.0]),
        "api.anthropic.com" => ca.identity(&["other.example"]),
        _ => Identity::self_signed(&[h.0]),
    });
    let cases = [
        ("https://api.openai.com/v1/chat/completions", "xpired"),
        (
            "https://api.anthropic.com/v1/messages",
            "certificate not valid for name",
        ),
        (
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent",
            "UnknownIssuer",
        ),
    ];
    for (url, reason) in cases {
        let out = w.curl(
            &w.agent.ca_pem(),
            url,
            &[
                "-w",
                "\n%{http_code}",
                "-H",
                "content-type: application/json",
                "-d",
                CHAT,
            ],
        );
        assert_success(&format!("curl {url}\n{}", w.agent.logs()), &out);
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap();
        assert_eq!(code, "502", "{url}: {body}");
        assert!(body.contains(reason), "{url}: expected {reason}: {body}");
    }
    for mock in &w.mocks {
        assert!(
            mock.requests().is_empty(),
            "a request crossed an unverified connection"
        );
    }
    let records = w.agent.wait_records(3);
    assert!(
        records
            .iter()
            .all(|r| r["status"] == 502 && r["mode"] == "transparent"),
        "{records:?}"
    );
    leash_tests::results::record(
        "upstream_certificates",
        &serde_json::json!({"cases": ["expired", "wrong host", "self-signed"], "refused": 3, "sent": 0}),
    );
}

/// `intercept.failure_mode: closed`: after kill -9 and after SIGTERM the
/// pinned hooks stay, so provider connections are refused (never direct);
/// a new agent takes the hooks over with no gap; `leash intercept release`
/// lets traffic go direct again.
#[test]
fn fail_closed_refuses_while_down_and_a_restart_takes_over() {
    if !require_root() {
        return;
    }
    let mut w = World::new(
        "failclosed",
        &[Host("api.openai.com", "127.10.0.17", true)],
        "  failure_mode: closed\n",
    );
    assert_chat_ok(&w.chat(&w.agent.ca_pem(), "sk-test"), &w.agent);
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&w.cgroup.path).unwrap());
    let pins = leash_agent::intercept::pin::dir_for(
        &leash_agent::intercept::pin::bpffs().unwrap(),
        &w.cgroup.path,
    )
    .unwrap();
    assert!(pins.ends_with(format!("cg-{ino}")), "{}", pins.display());
    // Its record is on disk before the crash.
    w.agent.wait_records(1);
    let refused_for = |w: &World, what: &str| {
        // Refused (curl exit 7) for a second, whichever CA the client trusts;
        // the provider sees nothing.
        let seen = w.mocks[0].requests().len();
        let start = Instant::now();
        let mut tries = 0;
        while start.elapsed() < Duration::from_secs(1) {
            for ca in [w.public_ca.clone(), w.agent.ca_pem()] {
                let out = w.chat(&ca, "sk-test");
                assert_eq!(
                    out.status.code(),
                    Some(7),
                    "{what}: expected a refused connection, got {}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                tries += 1;
            }
        }
        assert_eq!(
            w.mocks[0].requests().len(),
            seen,
            "{what}: a request went direct"
        );
        tries
    };

    w.agent.kill9();
    let tries = refused_for(&w, "after kill -9");
    assert!(pins.is_dir() && std::fs::read_dir(&pins).unwrap().count() >= 5);
    let start = Instant::now();
    w.agent.restart();
    assert_chat_ok(&w.chat(&w.agent.ca_pem(), "sk-test"), &w.agent);
    let restored = start.elapsed();
    assert!(
        w.agent
            .logs()
            .contains("took over from the hooks a previous agent left pinned"),
        "{}",
        w.agent.logs()
    );
    // Only this agent's pins are left.
    let pid = w.agent.pid();
    for entry in std::fs::read_dir(&pins).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(name.ends_with(&format!("-{pid}")), "stale pin {name}");
    }
    eprintln!(
        "fail closed: {tries} connections refused in 1 s after kill -9; interception restored {restored:?} after the restart began"
    );
    leash_tests::results::record(
        "fail_closed",
        &serde_json::json!({
            "refused_in_first_second": tries,
            "reached_provider": 0,
            "restored_after_ms": restored.as_millis(),
        }),
    );

    assert!(w.agent.stop().success());
    refused_for(&w, "after SIGTERM");
    let out = run(leash_tests::harness::leash_command()
        .args(["intercept", "release", "--cgroup"])
        .arg(&w.cgroup.path));
    assert_success("leash intercept release", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("released"),
        "{out:?}"
    );
    assert!(!pins.exists());
    // Now direct: the provider's own certificate verifies.
    let out = w.chat(&w.public_ca.clone(), "sk-test");
    assert_success("direct after release", &out);
    assert_eq!(w.agent.wait_records(2).len(), 2);
}

/// The official SDKs with their default base URLs; only `SSL_CERT_FILE`
/// points at the organisation CA.
#[test]
fn official_sdks_with_default_urls_are_intercepted() {
    if !require_root() {
        return;
    }
    let w = World::new(
        "sdk",
        &[
            Host("api.openai.com", "127.10.0.7", true),
            Host("api.anthropic.com", "127.10.0.8", true),
            Host("generativelanguage.googleapis.com", "127.10.0.9", true),
        ],
        "",
    );
    let key = canary("sdk");
    let expected = text_of(5);
    let cases = [
        ("openai-chat", "https://api.openai.com/v1", "openai"),
        ("openai-chat-stream", "https://api.openai.com/v1", "openai"),
        ("anthropic", "https://api.anthropic.com", "anthropic"),
        ("anthropic-stream", "https://api.anthropic.com", "anthropic"),
        (
            "google",
            "https://generativelanguage.googleapis.com",
            "google",
        ),
        (
            "google-stream",
            "https://generativelanguage.googleapis.com",
            "google",
        ),
    ];
    for (i, (case, base, provider)) in cases.iter().enumerate() {
        let out = w.sdk_with(case, base, "Say hello", "{}", &[&key, &expected]);
        assert_success(
            &format!("{case} with default URL\n{}", w.agent.logs()),
            &out,
        );
        let rec = &w.agent.wait_records(i + 1)[i];
        assert_eq!(rec["provider"], *provider, "{rec}");
        assert_eq!(rec["mode"], "transparent");
        assert!(
            rec["caller"]["exe"]
                .as_str()
                .is_some_and(|e| e.contains("python")),
            "{rec}"
        );
    }
    assert!(!w.agent.logs().contains(&key));
}

/// A native IPv6 provider address is redirected to the proxy's `::1`
/// listener and intercepted like an IPv4 one.
#[test]
fn native_ipv6_provider_addresses_are_intercepted() {
    if !require_root() {
        return;
    }
    let w = World::new("ipv6", &[Host("api.anthropic.com", "::1", true)], "");
    let out = w.curl(
        &w.agent.ca_pem(),
        "https://api.anthropic.com/v1/messages",
        &[
            "-6",
            "-H",
            "x-api-key: sk-test",
            "-d",
            r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[]}"#,
        ],
    );
    assert_success(&format!("curl over IPv6\n{}", w.agent.logs()), &out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["content"][0]["text"], text_of(5));
    let rec = &w.agent.wait_records(1)[0];
    assert_eq!(rec["provider"], "anthropic");
    assert_eq!(rec["mode"], "transparent");
    assert!(
        rec["caller"]["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("[::1]")),
        "{rec}"
    );
}

/// An address the agent never resolved, learned only from a DNS answer the
/// client received (through a CNAME, as from a CDN), is intercepted on the
/// client's very first connection.
#[test]
fn an_address_learned_only_from_dns_is_intercepted_on_first_connection() {
    if !require_root() {
        return;
    }
    let ca = TestCa::new("fake public CA");
    let dir = tempfile::tempdir().unwrap();
    let public_ca = dir.path().join("public-ca.pem");
    ca.write_cert(&public_ca);
    let _mock = MockProvider::start_tls(
        "127.10.0.11:443".parse().unwrap(),
        &ca.identity(&["api.openai.com"]),
    );
    let _dns = FakeDns::start(
        "127.0.0.153:53".parse().unwrap(),
        &[("api.openai.com", "127.10.0.11".parse().unwrap())],
    );
    // No /etc/hosts entry: the name goes to the fake DNS server.
    let hosts_file = dir.path().join("hosts");
    std::fs::write(&hosts_file, "127.0.0.1 localhost\n").unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.153\noptions timeout:2 attempts:1\n",
    )
    .unwrap();
    let cgroup = Cgroup::new("dns");
    // No static address, no resolving by the agent: only the DNS answer.
    let config = format!(
        "upstream_tls: {{ extra_roots: [\"{}\"] }}\nintercept:\n  cgroup: \"{}\"\n  resolve: false\n  proxy_port: {}\n  hosts:\n    - {{ name: api.openai.com }}\n",
        public_ca.display(),
        cgroup.path.display(),
        free_port()
    );
    let agent = Agent::start_in(dir, &config, Some(&cgroup));
    let ca_pem = agent.ca_pem();
    let out = run(&mut cgroup.command_with(
        &[(&hosts_file, "/etc/hosts"), (&resolv, "/etc/resolv.conf")],
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            ca_pem.to_str().unwrap(),
            "-d",
            CHAT,
            "https://api.openai.com/v1/chat/completions",
        ],
    ));
    assert_success(
        &format!("first connection after a DNS answer\n{}", agent.logs()),
        &out,
    );
    let rec = &agent.wait_records(1)[0];
    assert_eq!(rec["provider"], "openai");
    assert_eq!(rec["mode"], "transparent");
}

/// SIGTERM: the agent exits cleanly, its hooks are gone (traffic is direct),
/// and the audit trail holds every call it proxied.
#[test]
fn sigterm_detaches_and_flushes() {
    if !require_root() {
        return;
    }
    let mut w = World::new(
        "sigterm",
        &[Host("api.openai.com", "127.10.0.12", true)],
        "",
    );
    assert_chat_ok(&w.chat(&w.agent.ca_pem(), "sk-test"), &w.agent);
    let status = w.agent.stop();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        w.agent.logs()
    );
    assert!(w.agent.logs().contains("detaching kernel hooks"));
    assert_eq!(w.agent.audit_records().len(), 1);
    let out = w.chat(&w.public_ca.clone(), "sk-test");
    assert_success("direct after SIGTERM", &out);
}

/// Policy applies to intercepted calls like to gateway ones, and teams can
/// be named by what only the agent knows: the calling executable.
#[test]
fn policy_and_caller_teams_apply_to_intercepted_calls() {
    if !require_root() {
        return;
    }
    let extra = "policy:
  version: 1
  rules:
    - { name: block-secrets, match: { detectors: [secrets] }, action: block }
    - { name: redact-email, match: { detectors: [email] }, action: redact }
    - { name: tag-curl, match: { team: [curl-users] }, action: annotate, tags: [cli] }
    - { name: tag-nobody, match: { caller: { uid: [65534] } }, action: annotate, tags: [uid-rule] }
teams:
  - { name: service-account, uid: [65534] }
  - { name: curl-users, exe: ['*/curl'] }
";
    let w = World::new(
        "policy",
        &[Host("api.openai.com", "127.10.0.13", true)],
        extra,
    );
    let secret = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"use AKIAZ7QX3PLM9V2KD4RT"}]}"#;
    let out = w.curl(
        &w.agent.ca_pem(),
        "https://api.openai.com/v1/chat/completions",
        &["-H", "content-type: application/json", "-d", secret],
    );
    assert_success("curl with a secret", &out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "leash_policy_blocked", "{v}");
    assert!(
        w.mocks[0].requests().is_empty(),
        "the secret reached the provider"
    );

    // The official SDK, default base URL: the email is redacted on the way.
    let out = w.sdk(
        "openai-chat",
        "https://api.openai.com/v1",
        "mail jane.roe@example.com",
        "{}",
    );
    assert_success(&format!("SDK through the agent\n{}", w.agent.logs()), &out);
    let body = String::from_utf8_lossy(&w.mocks[0].requests()[0].body).into_owned();
    assert!(
        body.contains("[REDACTED:email]") && !body.contains("jane.roe@example.com"),
        "{body}"
    );

    // The same curl as uid 65534: the uid names the team (listed first)
    // and a rule matches on the caller's uid.
    let out = w.chat_as_nobody(&["-H", "content-type: application/json"]);
    assert_chat_ok(&out, &w.agent);

    let records = w.agent.wait_records(3);
    assert_eq!(records[2]["caller"]["uid"], 65534, "{:#}", records[2]);
    assert_eq!(
        records[2]["caller"]["team"], "service-account",
        "{:#}",
        records[2]
    );
    assert_eq!(
        records[2]["policy"]["action"], "annotate",
        "{:#}",
        records[2]
    );
    assert_eq!(
        records[2]["policy"]["tags"],
        serde_json::json!(["uid-rule"])
    );
    assert_eq!(records[0]["policy"]["action"], "block", "{:#}", records[0]);
    assert_eq!(
        records[0]["caller"]["team"], "curl-users",
        "team from the executable"
    );
    assert_eq!(
        records[0]["policy"]["tags"],
        serde_json::json!([]),
        "block ends evaluation before tags"
    );
    assert_eq!(records[1]["policy"]["action"], "redact");
    assert_eq!(
        records[1]["caller"]["team"],
        Value::Null,
        "python is not in the curl team"
    );
}

/// The policy through interception with each official SDK at its default
/// URL: a secret blocks with the SDK's own 403 error and never reaches the
/// provider, an email is redacted on the way, a shadow rule forwards
/// unchanged and records what it would have done, and a secret split
/// across response stream chunks ends the stream with an error each SDK
/// raises.
#[test]
fn policy_applies_to_every_sdk_through_interception() {
    if !require_root() {
        return;
    }
    let extra = r"policy:
  version: 1
  detectors:
    codenames: { regex: '(?i)\bproject\s+falcon\b' }
  rules:
    - { name: block-secrets, match: { detectors: [secrets] }, action: block }
    - { name: redact-email, match: { detectors: [email] }, action: redact }
    - { name: codename-shadow, match: { detectors: [codenames] }, action: block, mode: shadow }
    - { name: no-secrets-out, match: { detectors: [secrets], direction: response }, action: block }
";
    let w = World::new(
        "policy-sdk",
        &[
            Host("api.openai.com", "127.10.0.14", true),
            Host("api.anthropic.com", "127.10.0.15", true),
            Host("generativelanguage.googleapis.com", "127.10.0.16", true),
        ],
        extra,
    );
    let bases = [
        ("openai", "https://api.openai.com/v1"),
        ("anthropic", "https://api.anthropic.com"),
        ("google", "https://generativelanguage.googleapis.com"),
    ];
    let sdk_json = |case: &str, base: &str, prompt: &str, headers: &str| -> Value {
        let out = w.sdk(case, base, prompt, headers);
        assert_success(&format!("{case}\n{}", w.agent.logs()), &out);
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // A secret: each SDK's own permission error; no provider sees it.
    for ((provider, base), class) in bases.iter().zip([
        "PermissionDeniedError",
        "PermissionDeniedError",
        "ClientError",
    ]) {
        let r = sdk_json(
            &format!("{provider}-error"),
            base,
            "deploy with AKIAZ7QX3PLM9V2KD4RT",
            "{}",
        );
        assert_eq!(r["error_class"], class, "{provider}: {r}");
        assert_eq!(r["status"], 403, "{provider}: {r}");
        assert!(
            r["message"].as_str().unwrap().contains("block-secrets"),
            "{provider}: {r}"
        );
    }
    for m in &w.mocks {
        assert!(m.requests().is_empty(), "a secret reached the provider");
    }

    // An email: redacted before it leaves, in each provider's shape.
    for (i, ((provider, base), case)) in bases
        .iter()
        .zip(["openai-chat", "anthropic", "google"])
        .enumerate()
    {
        sdk_json(case, base, "mail jane.roe@example.com today", "{}");
        let body = String::from_utf8_lossy(&w.mocks[i].requests()[0].body).into_owned();
        assert!(
            body.contains("[REDACTED:email]") && !body.contains("jane.roe@example.com"),
            "{provider}: {body}"
        );
    }

    // A shadow rule: forwarded unchanged, the would-be block recorded.
    sdk_json("anthropic", bases[1].1, "status of project falcon?", "{}");
    let body = String::from_utf8_lossy(&w.mocks[1].requests()[1].body).into_owned();
    assert!(body.contains("project falcon"), "shadow changed it: {body}");

    // A secret split across response chunks ends each SDK's stream.
    let leaky =
        r#"{"x-mock-text": "the key is AKIAZ7QX3PLM9V2KD4RT and then more", "x-mock-chunks": "6"}"#;
    for ((provider, base), case) in bases.iter().zip([
        "openai-chat-stream-error",
        "anthropic-stream-error",
        "google-stream-error",
    ]) {
        let r = sdk_json(case, base, "hi", leaky);
        assert!(
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("no-secrets-out")),
            "{provider}: {r}"
        );
    }

    check_policy_records(&w.agent.wait_records(10));
    let audit = w.agent.audit_text();
    assert!(!audit.contains("AKIAZ7QX3PLM9V2KD4RT") && !audit.contains("jane.roe@"));
}

/// Records of `policy_applies_to_every_sdk_through_interception`: three
/// blocks, three redactions, one shadow block, three response blocks.
fn check_policy_records(records: &[Value]) {
    for rec in &records[..3] {
        assert_eq!(rec["mode"], "transparent", "{rec}");
        assert_eq!(rec["status"], 403, "{rec}");
        assert_eq!(rec["policy"]["action"], "block", "{rec}");
        assert_eq!(rec["policy"]["findings"][0]["detector"], "aws_access_key");
    }
    for rec in &records[3..6] {
        assert_eq!(rec["policy"]["action"], "redact", "{rec}");
    }
    let shadow = &records[6];
    assert_eq!(shadow["status"], 200, "{shadow}");
    assert_eq!(shadow["policy"]["action"], "block", "{shadow}");
    assert_eq!(shadow["policy"]["shadow"], true, "{shadow}");
    assert_eq!(shadow["policy"]["rules"][0], "codename-shadow", "{shadow}");
    for rec in &records[7..] {
        assert_eq!(rec["policy"]["action"], "block", "{rec}");
        assert_eq!(rec["policy"]["rules"][0], "no-secrets-out", "{rec}");
    }
}

/// Inspection through interception, not only through the gateway: a
/// `data:`-prefixed secret and a key given twice are refused, the same
/// calls without them go through (controls), and a 10 MiB answer arrives
/// byte for byte (SHA-256 compared with the provider's own bytes).
#[test]
fn inspection_evasions_are_caught_through_interception() {
    if !require_root() {
        return;
    }
    let extra = "policy:
  version: 1
  rules:
    - { name: block-secrets, match: { detectors: [secrets] }, action: block }
";
    let w = World::new(
        "evasions",
        &[Host("api.openai.com", "127.10.0.21", true)],
        extra,
    );
    let ca = w.agent.ca_pem();
    let url = "https://api.openai.com/v1/chat/completions";
    let post = |body: &str| -> Value {
        let out = w.curl(
            &ca,
            url,
            &["-H", "content-type: application/json", "-d", body],
        );
        assert_success("curl", &out);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let prefixed = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"data: use AKIAZ7QX3PLM9V2KD4RT"}]}"#;
    let v = post(prefixed);
    assert_eq!(v["error"]["code"], "leash_policy_blocked", "{v}");
    let twice = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi","content":"use AKIAZ7QX3PLM9V2KD4RT"}]}"#;
    let v = post(twice);
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`content` twice")),
        "{v}"
    );
    assert!(
        w.mocks[0].requests().is_empty(),
        "a refused body reached the provider"
    );
    // Controls: the same shapes without the secret or the second key.
    let v = post(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"data: hello"}]}"#);
    assert_eq!(v["choices"][0]["message"]["content"], text_of(5), "{v}");

    // 10 MiB of embeddings, straight from the provider and through Leash.
    let embeddings = |cacert: &Path, resolve: &[&str]| {
        let mut args = vec![
            "-H",
            "x-mock-embeddings: 570",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"text-embedding-3-small","input":"hi"}"#,
        ];
        args.extend_from_slice(resolve);
        let out = w.curl(cacert, "https://api.openai.com/v1/embeddings", &args);
        assert_success("curl embeddings", &out);
        out.stdout
    };
    let through = embeddings(&ca, &[]);
    assert!(through.len() > 570 * 17_000, "{}", through.len());
    assert_eq!(w.mocks[0].requests().len(), 2);
    // The provider's bytes, fetched outside the cgroup.
    let direct = run(Command::new("curl").args([
        "-sS",
        "--cacert",
        w.public_ca.to_str().unwrap(),
        "--resolve",
        "api.openai.com:443:127.10.0.21",
        "-H",
        "x-mock-embeddings: 570",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"model":"text-embedding-3-small","input":"hi"}"#,
        "https://api.openai.com/v1/embeddings",
    ]));
    assert_success("curl direct", &direct);
    assert_eq!(
        Sha256::digest(&through),
        Sha256::digest(&direct.stdout),
        "the 10 MiB answer changed on the way ({} vs {} bytes)",
        through.len(),
        direct.stdout.len()
    );
    let records = w.agent.wait_records(4);
    assert_eq!(records[0]["policy"]["action"], "block", "{:#}", records[0]);
    assert_eq!(records[1]["policy"]["rules"][0], "duplicate_key");
    assert_eq!(records[3]["status"], 200);
    assert_eq!(records[3]["completed"], true);
}
