//! TLS on both sides: the gateway serving HTTPS (h2 and http/1.1), and
//! upstreams always verified, trusting `upstream_tls.extra_roots`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use leash_tests::{
    harness::{Leash, assert_success, http_request, run},
    mock::{MockProvider, text_of},
    tls::TestCa,
};
use serde_json::Value;

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

#[test]
fn gateway_serves_https_with_h2_and_http1() {
    let mock = MockProvider::start();
    let ca = TestCa::new("leash test gateway CA");
    let dir = tempfile::tempdir().unwrap();
    ca.identity(&["gw.test.internal"])
        .write(&dir.path().join("gw.pem"), &dir.path().join("gw.key"));
    ca.write_cert(&dir.path().join("ca.pem"));
    let config = format!(
        "gateway:\n  tls: {{ cert: gw.pem, key: gw.key }}\nproviders:\n  openai: {{ upstream: \"{}/v1\" }}\n",
        mock.url()
    );
    let leash = Leash::start_in(dir, &config);
    let port = leash.addr.port();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = run(std::process::Command::new("curl")
            .args(["-sS", "--fail-with-body", flag, "-w", "\n%{http_version}"])
            .arg("--cacert")
            .arg(leash.dir.path().join("ca.pem"))
            .args(["--resolve", &format!("gw.test.internal:{port}:127.0.0.1")])
            .args(["-H", "content-type: application/json", "-d", CHAT])
            .arg(format!(
                "https://gw.test.internal:{port}/v1/openai/chat/completions"
            )));
        assert_success("curl https", &out);
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, got_version) = text.rsplit_once('\n').unwrap();
        assert_eq!(got_version, version);
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], text_of(5));
    }
    // Plain HTTP on the TLS port gets nothing useful.
    assert!(
        http_request(leash.addr, "GET", "/v1/openai/models", &[], b"")
            .is_none_or(|(s, _, _)| s != 200)
    );
}

fn tls_mock(ca: &TestCa, names: &[&str]) -> MockProvider {
    MockProvider::start_tls("127.0.0.1:0".parse().unwrap(), &ca.identity(names))
}

fn post_chat(leash: &Leash) -> (u16, Value) {
    let (status, _, body) = http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[],
        CHAT.as_bytes(),
    )
    .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[test]
fn upstream_tls_is_verified_against_extra_roots() {
    let ca = TestCa::new("leash test upstream CA");
    let mock = tls_mock(&ca, &["127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    ca.write_cert(&dir.path().join("corp-root.pem"));
    let config = format!(
        "providers:\n  openai: {{ upstream: \"https://127.0.0.1:{}/v1\" }}\nupstream_tls:\n  extra_roots: [corp-root.pem]\n",
        mock.addr().port()
    );
    let leash = Leash::start_in(dir, &config);
    let (status, v) = post_chat(&leash);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], text_of(5));
    assert_eq!(
        mock.requests()[0].version,
        http::Version::HTTP_2,
        "h2 is used when the upstream offers it"
    );
}

#[test]
fn untrusted_misnamed_expired_or_self_signed_upstream_certificates_are_refused() {
    let trusted = TestCa::new("trusted CA");
    let untrusted = TestCa::new("untrusted CA");
    let start = |id: &leash_tests::tls::Identity| {
        MockProvider::start_tls("127.0.0.1:0".parse().unwrap(), id)
    };
    let cases = [
        (tls_mock(&untrusted, &["127.0.0.1"]), "UnknownIssuer"),
        (
            tls_mock(&trusted, &["other.example"]),
            "certificate not valid for name",
        ),
        (start(&trusted.expired_identity(&["127.0.0.1"])), "xpired"),
        (
            start(&leash_tests::tls::Identity::self_signed(&["127.0.0.1"])),
            "UnknownIssuer",
        ),
    ];
    for (mock, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        trusted.write_cert(&dir.path().join("corp-root.pem"));
        let config = format!(
            "providers:\n  openai: {{ upstream: \"https://127.0.0.1:{}/v1\" }}\nupstream_tls:\n  extra_roots: [corp-root.pem]\n",
            mock.addr().port()
        );
        let leash = Leash::start_in(dir, &config);
        let (status, v) = post_chat(&leash);
        assert_eq!(status, 502, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "expected {reason}: {message}");
        assert!(
            mock.requests().is_empty(),
            "a request crossed an unverified connection"
        );
    }
}
