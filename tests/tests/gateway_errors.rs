//! What callers and operators see when something is wrong: bad config,
//! unknown provider, oversized body, path tricks, upstream errors.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use leash_tests::{
    harness::{Leash, free_port, http_request, leash_command, mock_providers_yaml, run},
    mock::MockProvider,
};
use serde_json::Value;

fn start_fails_with(config: &str, expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, config).unwrap();
    let out = run(leash_command()
        .arg("gateway")
        .arg("--config")
        .arg(&path)
        .arg("--audit-dir")
        .arg(dir.path().join("a")));
    assert!(!out.status.success(), "leash started with {config:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for e in expected {
        assert!(
            stderr.contains(e),
            "error for {config:?} should mention {e:?}:\n{stderr}"
        );
    }
    let check = run(leash_command().arg("config").arg("check").arg(&path));
    assert_eq!(
        check.status.code(),
        Some(1),
        "config check accepted {config:?}"
    );
}

#[test]
fn invalid_config_fails_at_start_naming_field_and_reason() {
    start_fails_with(
        "gateway:\n  listen: not-an-address\n",
        &["`gateway.listen`", "not an IP:port"],
    );
    start_fails_with(
        "providers:\n  acme: { upstream: 'https://acme.example/v1' }\n",
        &["`providers.acme.kind`", "required"],
    );
    start_fails_with(
        "providers:\n  openai: { upstream: 'ftp://x' }\n",
        &["`providers.openai.upstream`", "scheme"],
    );
    start_fails_with(
        "gateway:\n  listn: 127.0.0.1:1\n",
        &["unknown field `listn`", "line 2"],
    );
    start_fails_with(
        "upstream_tls:\n  extra_roots: [/nonexistent/root.pem]\n",
        &["/nonexistent/root.pem"],
    );
    start_fails_with(
        "gateway:\n  tls: { cert: /nonexistent/gw.pem, key: /nonexistent/gw.key }\n",
        &["gateway.tls", "/nonexistent/gw.pem"],
    );
    let out = run(leash_command().args(["gateway", "--config", "/nonexistent/leash.yaml"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot read config file /nonexistent/leash.yaml")
    );
}

#[test]
fn config_check_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.yaml");
    std::fs::write(&path, "providers:\n  mistral: { kind: openai, upstream: 'https://api.mistral.ai/v1' }\n  local: { kind: openai, upstream: 'http://127.0.0.1:11434/v1' }\n").unwrap();
    let out = run(leash_command().arg("config").arg("check").arg(&path));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn busy_port_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = run(leash_command()
        .args([
            "gateway",
            "--listen",
            &addr,
            "--admin-listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .arg("--audit-dir")
        .arg(dir.path()));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on gateway.listen {addr}")),
        "{stderr}"
    );
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[test]
fn unknown_provider_and_unrouted_paths_get_404_listing_providers() {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    let (status, _, body) = http_request(leash.addr, "POST", "/v1/bard/chat", &[], b"{}").unwrap();
    assert_eq!(status, 404);
    let v = json(&body);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown provider `bard`"),
        "{v}"
    );
    let known: Vec<&str> = v["error"]["known_providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for p in ["openai", "anthropic", "google", "mistral"] {
        assert!(known.contains(&p), "{known:?}");
    }
    let (status, _, body) = http_request(leash.addr, "GET", "/chat/completions", &[], b"").unwrap();
    assert_eq!(status, 404);
    assert!(
        json(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/<provider>/")
    );
    assert!(mock.requests().is_empty(), "nothing reaches the upstream");
}

#[test]
fn oversized_bodies_get_413_in_provider_shape_and_are_not_forwarded() {
    let mock = MockProvider::start();
    let leash = Leash::start(&format!(
        "{}gateway:\n  max_body_bytes: 1024\n",
        mock_providers_yaml(&mock)
    ));
    let big = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(4096)
    );
    let (status, _, body) = http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[],
        big.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 413);
    let v = json(&body);
    assert_eq!(v["error"]["code"], "leash_body_too_large", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1024 bytes")
    );
    let (status, _, body) = http_request(
        leash.addr,
        "POST",
        "/v1/anthropic/v1/messages",
        &[],
        big.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 413);
    assert_eq!(json(&body)["error"]["type"], "request_too_large");

    // Without Content-Length (chunked): the limit holds while reading.
    let out = run(std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &big,
        ])
        .arg(format!(
            "http://{}/v1/google/v1beta/models/gemini-2.5-flash:generateContent",
            leash.addr
        )));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");
    assert!(
        mock.requests().is_empty(),
        "an oversized body reached the upstream"
    );
    let records = leash.wait_records(3);
    assert!(
        records
            .iter()
            .all(|r| r["status"] == 413 && r["error"] == "leash_body_too_large"),
        "{records:#?}"
    );
}

#[test]
fn path_tricks_are_refused() {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    for path in [
        "/v1/openai/../admin",
        "/v1/openai/%2e%2e/secret",
        "/v1/openai/a%2fb",
        "/v1/google/x/./y",
    ] {
        let (status, _, body) = http_request(leash.addr, "POST", path, &[], b"{}").unwrap();
        assert_eq!(status, 400, "{path}");
        let v = json(&body);
        if path.starts_with("/v1/google") {
            assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
        } else {
            assert_eq!(v["error"]["code"], "leash_bad_request", "{v}");
        }
    }
    let (status, _, _) = http_request(leash.addr, "CONNECT", "127.0.0.1:22", &[], b"").unwrap();
    assert_eq!(status, 405);
    assert!(mock.requests().is_empty());
}

#[test]
fn upstream_errors_pass_through_unchanged() {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    let (status, headers, body) = http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[("x-mock-status", "429")],
        br#"{"model":"gpt-4o"}"#,
    )
    .unwrap();
    assert_eq!(status, 429);
    assert_eq!(json(&body)["error"]["code"], "mock");
    let id = headers
        .iter()
        .find(|(k, _)| k == "x-leash-request-id")
        .map(|(_, v)| v.clone())
        .unwrap();
    let rec = &leash.wait_records(1)[0];
    assert_eq!(rec["id"], id);
    assert_eq!(rec["status"], 429);
    assert!(rec.get("error").is_none());
}

/// SSRF guard: a provider host name that resolves only to an internal
/// address (here `localhost`) is refused on the resolved address, unless
/// `upstream.allow_private_hosts` names it; nothing reaches the upstream.
#[test]
fn upstream_names_resolving_to_internal_addresses_are_refused_unless_allowed() {
    let mock = MockProvider::start();
    let port = mock.addr().port();
    let chat = |leash: &Leash| {
        let (status, _, answer) = http_request(
            leash.addr,
            "POST",
            "/v1/openai/chat/completions",
            &[("content-type", "application/json")],
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        (status, String::from_utf8_lossy(&answer).into_owned())
    };
    let leash = Leash::start(&format!(
        "providers:\n  openai: {{ upstream: \"http://localhost:{port}/v1\" }}\n"
    ));
    let (status, answer) = chat(&leash);
    assert_eq!(status, 502, "{answer}");
    assert!(
        mock.requests().is_empty(),
        "the request reached the upstream"
    );
    assert!(
        leash.logs().contains("resolves only to internal addresses"),
        "{}",
        leash.logs()
    );
    drop(leash);

    let leash = Leash::start(&format!(
        "providers:\n  openai: {{ upstream: \"http://localhost:{port}/v1\" }}\nupstream: {{ allow_private_hosts: [localhost] }}\n"
    ));
    let (status, answer) = chat(&leash);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(mock.requests().len(), 1);
}

/// Slowloris and idle connections: a client that sends its headers too
/// slowly, or keeps a connection open without a next request, is cut off
/// after `gateway.header_read_timeout_secs`.
#[test]
fn slow_and_idle_connections_are_closed_after_the_header_timeout() {
    use std::io::{Read as _, Write as _};
    let mock = MockProvider::start();
    let leash = Leash::start(&format!(
        "{}gateway: {{ header_read_timeout_secs: 1 }}\n",
        mock_providers_yaml(&mock)
    ));
    let closed_within = |mut s: std::net::TcpStream, limit: std::time::Duration| {
        s.set_read_timeout(Some(limit)).unwrap();
        let start = std::time::Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return start.elapsed(),
                Ok(_) => {}
                Err(e) => panic!("not closed within {limit:?}: {e}"),
            }
        }
    };
    // Headers trickled a byte at a time, never finished.
    let mut slow = std::net::TcpStream::connect(leash.addr).unwrap();
    slow.write_all(b"POST /v1/openai/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let trickle = std::thread::spawn({
        let mut s = slow.try_clone().unwrap();
        move || {
            for _ in 0..30 {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if s.write_all(b"x").is_err() {
                    return;
                }
            }
        }
    });
    let slow_after = closed_within(slow, std::time::Duration::from_secs(3));
    trickle.join().unwrap();
    // One request answered, then idle.
    let mut idle = std::net::TcpStream::connect(leash.addr).unwrap();
    idle.write_all(b"GET /v1/nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    let idle_after = closed_within(idle, std::time::Duration::from_secs(3));
    eprintln!("slow headers closed after {slow_after:?}, idle keep-alive after {idle_after:?}");
    assert!(slow_after < std::time::Duration::from_millis(2500));
    assert!(idle_after < std::time::Duration::from_millis(2500));
}
