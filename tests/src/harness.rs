//! Runs the real `leash` binary for end-to-end tests, plus the helpers those
//! tests share: free ports, canary keys, curl, the Python SDK venv, and a
//! tiny HTTP client over a raw socket (so timing is measured without a
//! client library's buffering).

use std::{
    io::{Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::mock::MockProvider;
pub use crate::{
    agent::{Agent, Cgroup, audit_text},
    gateway::{
        Leash, leash_command, read_records, segment_files, start_with_policy_file, wait_for_records,
    },
    http::{RawResponse, http_get, http_request, timed_stream},
};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// The `leash` binary under test (`LEASH_BIN`, else `target/debug/leash`).
pub fn leash_bin() -> PathBuf {
    let bin = std::env::var_os("LEASH_BIN")
        .map_or_else(|| target_dir().join("debug/leash"), PathBuf::from);
    assert!(
        bin.exists(),
        "leash binary not found at {}: run the tests with `cargo xtask test` (or `cargo build -p leash-agent` first)",
        bin.display()
    );
    bin
}

/// The venv Python with the official SDKs (`LEASH_TEST_PYTHON`, else
/// `target/leash-venv/bin/python`, which `cargo xtask test` creates).
pub fn python() -> PathBuf {
    let py = std::env::var_os("LEASH_TEST_PYTHON")
        .map_or_else(|| target_dir().join("leash-venv/bin/python"), PathBuf::from);
    assert!(
        py.exists(),
        "Python venv with the SDKs not found at {}: run the tests with `cargo xtask test`, which creates it",
        py.display()
    );
    py
}

/// The directory of the Python SDK scripts.
pub fn python_dir() -> PathBuf {
    workspace_root().join("tests/python")
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    // The kernel may give a port just released again at once: never hand
    // out the same one twice in a test process (two listeners of one
    // `leash` would collide).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A unique fake API key; tests check where it does and does not appear.
pub fn canary(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("sk-leash-canary-{tag}-{nanos:x}")
}

/// Provider entries pointing `openai`, `anthropic` and `google` at the mock.
pub fn mock_providers_yaml(mock: &MockProvider) -> String {
    let url = mock.url();
    format!(
        "providers:\n  openai: {{ upstream: \"{url}/v1\" }}\n  anthropic: {{ upstream: \"{url}\" }}\n  google: {{ upstream: \"{url}\" }}\n"
    )
}

/// Runs a command and returns its output, panicking if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `tests/python/<script>` with the venv Python.
pub fn run_python(script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(python());
    cmd.arg(python_dir().join(script)).args(args);
    // Only what the test gives: no stray keys or proxies from the environment.
    for var in [
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GOOGLE_API_KEY",
        "GEMINI_API_KEY",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "*");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// The official `openai` SDK's chat call through `base`, made by a caller
/// whose span `span` in trace `trace` sends a `traceparent`; panics unless
/// it succeeds.
pub fn openai_chat_in_trace(base: &str, trace: &str, span: &str) {
    let headers = format!(r#"{{"traceparent": "00-{trace}-{span}-01"}}"#);
    let out = run_python(
        "sdk_check.py",
        &["openai-chat", base, "sk-test"],
        &[("LEASH_TEST_HEADERS", &headers)],
    );
    assert_success("openai SDK with a traceparent", &out);
}

/// `age-keygen -o FILE`: the identity file and its public key.
pub fn age_keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let file = dir.join(name);
    let out = run(std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&file));
    assert_success("age-keygen", &out);
    let text = std::fs::read_to_string(&file).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_owned();
    (file, public)
}

/// Panics with both output streams unless the command succeeded.
pub fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the tests run as root (needed for eBPF, cgroups, mounts).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Root tests never skip silently: without root they fail, unless the
/// developer opted out with `LEASH_SKIP_ROOT_TESTS=1` (CI never does).
pub fn require_root() -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("LEASH_SKIP_ROOT_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("LEASH_SKIP_ROOT_TESTS=1: skipping a root-only test");
        return false;
    }
    panic!(
        "this test needs root (eBPF, cgroups, mount namespaces): run `sudo cargo xtask test`, or set LEASH_SKIP_ROOT_TESTS=1 to skip it"
    );
}

/// A webhook receiver on loopback: answers 200 and keeps each body.
pub struct WebhookReceiver {
    pub url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl WebhookReceiver {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = std::sync::Arc::clone(&bodies);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the head, then Content-Length bytes of body.
                let body = loop {
                    let Ok(n) = stream.read(&mut buf) else {
                        break None;
                    };
                    if n == 0 {
                        break None;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if raw.len() >= end + 4 + len {
                        break Some(
                            String::from_utf8_lossy(&raw[end + 4..end + 4 + len]).into_owned(),
                        );
                    }
                };
                if let Some(body) = body {
                    keep.lock().expect("webhook bodies").push(body);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Self { url, bodies }
    }

    /// Waits (up to 10 s) for at least `n` deliveries.
    pub fn wait(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.bodies.lock().expect("webhook bodies").clone();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "webhook got {} of {n} alerts",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}
