//! README's five-minute quickstart, followed as a newcomer would: step 1
//! `cargo xtask run` on the embedded defaults — as root (the transparent
//! agent, which serves the gateway listener too) and as a normal user (the
//! gateway, its trail in the user's own state directory); step 2 the
//! official `OpenAI`, Anthropic and Gemini SDKs at `127.0.0.1:8080/v1/…`;
//! step 3 the audit lines and the metric.
//!
//! What differs from a newcomer's machine, and why: `LEASH_RUN_BIN` makes
//! `cargo xtask run` start the binary under test instead of building a
//! second one in release; everything runs in a network namespace of the
//! test's own, where the public providers are a mock at a global address
//! on its loopback interface (Leash refuses internal upstream addresses on its
//! defaults) that nothing outside the namespace can reach — a private
//! `/etc/hosts` names it, a private `resolv.conf` reaches no resolver, its
//! CA is given by `SSL_CERT_FILE`; `/var/lib` is a tmpfs and bpffs a fresh
//! one, private to the run, so nothing outlives it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use leash_tests::{
    fleet::wait_until,
    harness::{leash_bin, python, require_root},
    http::http_get,
    mock::MockProvider,
    tls::TestCa,
};
use serde_json::Value;

const PROVIDER: &str = "11.0.99.1";
const NAMES: [&str; 3] = [
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
];

/// The xtask binary (`LEASH_XTASK_BIN`, which `cargo xtask test` sets).
fn xtask_bin() -> PathBuf {
    let bin = std::env::var_os("LEASH_XTASK_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xtask"),
        PathBuf::from,
    );
    assert!(bin.exists(), "xtask binary not found at {}", bin.display());
    bin
}

/// Step 2, as README shows it (the key is the mock's business).
const SDKS: &str = r#"
from openai import OpenAI
client = OpenAI(base_url="http://127.0.0.1:8080/v1/openai", api_key="sk-test")
client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

import anthropic
anthropic.Anthropic(base_url="http://127.0.0.1:8080/v1/anthropic", api_key="sk-ant-test").messages.create(
    model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}])

from google import genai
from google.genai import types
gemini = genai.Client(api_key="g-test", http_options=types.HttpOptions(base_url="http://127.0.0.1:8080/v1/google"))
gemini.models.generate_content(model="gemini-2.5-flash", contents="hi")
print("three answers")
"#;

/// A network namespace this thread entered, removed when dropped.
struct NetNs(String);

impl NetNs {
    fn enter() -> Self {
        let ns = Self(format!("quickstart-{}", std::process::id()));
        let ip = |args: &str| {
            let ok = Command::new("ip").args(args.split(' ')).status().unwrap();
            assert!(ok.success(), "ip {args}");
        };
        ip(&format!("netns add {}", ns.0));
        let file = std::fs::File::open(format!("/run/netns/{}", ns.0)).unwrap();
        rustix::thread::move_into_thread_name_spaces(
            std::os::fd::AsFd::as_fd(&file),
            rustix::thread::ThreadNameSpaceType::NETWORK,
        )
        .unwrap();
        ip("link set lo up");
        ip(&format!("addr add {PROVIDER}/32 dev lo"));
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The files a run needs, readable by the user it runs as.
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new(ca: &TestCa) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        ca.write_cert(&dir.path().join("public-ca.pem"));
        let hosts = NAMES
            .iter()
            .fold(String::from("127.0.0.1 localhost\n"), |h, n| {
                h + &format!("{PROVIDER} {n}\n")
            });
        std::fs::write(dir.path().join("hosts"), hosts).unwrap();
        // No resolver answers: a name not in hosts fails at once, and no
        // query leaves the machine.
        std::fs::write(dir.path().join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        for (bin, name) in [(xtask_bin(), "xtask"), (leash_bin(), "leash")] {
            std::fs::copy(bin, dir.path().join(name)).unwrap();
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Step 1: `cargo xtask run` as `uid` (0: root) with `home`, in a
    /// private mount namespace; its output in `log`.
    fn xtask_run(&self, uid: u32, home: &Path, log: &Path) -> Child {
        let out = std::fs::File::create(log).unwrap();
        std::fs::set_permissions(log, std::fs::Permissions::from_mode(0o666)).unwrap();
        let script = r#"mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf \
            && mount -t tmpfs tmpfs /var/lib && mount -t bpf bpf /sys/fs/bpf || exit 97
            uid=$3; shift 3
            exec setpriv --reuid="$uid" --regid="$uid" --clear-groups "$@""#;
        Command::new("unshare")
            .args(["-m", "sh", "-c", script, "sh"])
            .arg(self.path("hosts"))
            .arg(self.path("resolv.conf"))
            .arg(uid.to_string())
            .args(["env", "-i"])
            .arg(format!("HOME={}", home.display()))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin")
            .arg(format!(
                "SSL_CERT_FILE={}",
                self.path("public-ca.pem").display()
            ))
            .arg(format!("LEASH_RUN_BIN={}", self.path("leash").display()))
            .arg(self.path("xtask"))
            .arg("run")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap()
    }
}

/// The children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// A running `cargo xtask run`; on drop (a failed step) it and its `leash`
/// are killed, so no agent outlives the test.
struct Running(Child);

impl Running {
    fn leash(&self) -> Vec<u32> {
        children(self.0.id())
    }

    /// Stops it as Ctrl-C would; whether it exited cleanly.
    fn stop(mut self) -> std::process::ExitStatus {
        for pid in self.leash() {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        self.0.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for pid in self.leash() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the quickstart as `uid`; `audit` is where step 3 finds the trail
/// (as that run sees the file system). Returns the xtask output.
fn quickstart(scene: &Scene, uid: u32, audit: &str, home: &Path) -> String {
    let log = scene.path(&format!("xtask-{uid}.log"));
    let xtask = Running(scene.xtask_run(uid, home, &log));
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let gateway: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let admin: SocketAddr = "127.0.0.1:9090".parse().unwrap();
    wait_until("Leash ready", Duration::from_mins(1), logs, || {
        logs().contains(" ready") && http_get(admin, "/readyz").is_some_and(|r| r.0 == 200)
    });
    // Step 2.
    let sdk = Command::new(python())
        .args(["-c", SDKS])
        .env_remove("OPENAI_BASE_URL")
        .output()
        .unwrap();
    assert!(
        sdk.status.success() && String::from_utf8_lossy(&sdk.stdout).contains("three answers"),
        "the SDKs through {gateway}: {}\n{}",
        String::from_utf8_lossy(&sdk.stderr),
        logs()
    );
    // Step 3: the audit lines, in the run's own view of the file system.
    let leash = xtask.leash();
    assert_eq!(
        leash.len(),
        1,
        "xtask runs one leash: {leash:?}\n{}",
        logs()
    );
    let dir = PathBuf::from(format!("/proc/{}/root{audit}", leash[0]));
    let mut records: Vec<Value> = Vec::new();
    wait_until("three audit records", Duration::from_secs(10), logs, || {
        records = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|f| f.path().extension().is_some_and(|e| e == "jsonl"))
            .filter_map(|f| std::fs::read_to_string(f.path()).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect::<Vec<Value>>()
            })
            .collect();
        records.len() >= 3
    });
    let providers: Vec<&str> = records
        .iter()
        .filter(|r| r["status"] == 200 && r["mode"] == "gateway")
        .filter_map(|r| r["provider"].as_str())
        .collect();
    assert_eq!(providers, ["openai", "anthropic", "google"], "{records:?}");
    let metrics = http_get(admin, "/metrics").unwrap().1;
    // The line README shows.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let line = readme
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("leash_requests_total{provider=\"openai\""))
        .expect("README's quickstart shows the metric line");
    assert!(metrics.contains(line), "no `{line}` in\n{metrics}");
    // Stopped as Ctrl-C would: the agent's hooks go with it.
    let status = xtask.stop();
    let out = logs();
    assert!(status.success(), "{status}\n{out}");
    out
}

#[test]
fn the_quickstart_works_as_root_and_as_a_user() {
    if !require_root() {
        return;
    }
    // This thread (and every process and thread it starts) in a network
    // namespace of its own: only loopback, which holds the mock's address too.
    let _netns = NetNs::enter();
    let ca = TestCa::new("quickstart public CA");
    let _mock = MockProvider::start_tls(
        SocketAddr::new(PROVIDER.parse().unwrap(), 443),
        &ca.identity(&NAMES),
    );
    let scene = Scene::new(&ca);
    // Root: the agent for the whole host, the gateway listener too.
    let out = quickstart(&scene, 0, "/var/lib/leash/audit", Path::new("/root"));
    assert!(out.contains("starting the transparent agent"), "{out}");
    assert!(out.contains("leash agent ready"), "{out}");
    // A normal user: the gateway, the trail under their home.
    let home = scene.path("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    let audit = format!("{}/.local/state/leash/audit", home.display());
    let out = quickstart(&scene, 65534, &audit, &home);
    assert!(out.contains("not root, so starting the gateway"), "{out}");
}
