//! Runs the real `leash` binary for end-to-end tests, plus the helpers those
//! tests share: free ports, canary keys, curl, the Python SDK venv, and a
//! tiny HTTP client over a raw socket (so timing is measured without a
//! client library's buffering).

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::mock::MockProvider;

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
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
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

/// A mock provider and a gateway to it running `policy` from a policy
/// file, with `extra` config appended.
pub fn start_with_policy_file(policy: &str, extra: &str) -> (MockProvider, Leash) {
    let mock = MockProvider::start();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("policy.yaml"), policy).expect("write policy");
    let leash = Leash::start_in(
        dir,
        &format!(
            "{}policy: {{ file: policy.yaml }}\n{extra}",
            mock_providers_yaml(&mock)
        ),
    );
    (mock, leash)
}

/// A running `leash gateway`, killed when dropped.
pub struct Leash {
    child: Child,
    env: Vec<(String, String)>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub audit_dir: PathBuf,
    log_path: PathBuf,
    pub dir: tempfile::TempDir,
}

/// Debug for Leash (so anything a log line could leak shows up), quieter for
/// libraries.
const LOG_LEVEL: &str = "debug,aya=info,aya_obj=info,rustls=info,h2=info,hyper_util=info,async_nats=info,tokio_postgres=info";

/// `leash` as a command with test logging (debug, so anything a log line
/// could leak shows up).
pub fn leash_command() -> Command {
    let mut cmd = Command::new(leash_bin());
    cmd.env_remove("RUST_LOG").arg("--log-level").arg(LOG_LEVEL);
    cmd
}

impl Leash {
    /// Starts `leash gateway` with `config_yaml` (listen addresses and audit
    /// dir are chosen by the harness) and waits until it is healthy.
    pub fn start(config_yaml: &str) -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), config_yaml)
    }

    /// Like [`Leash::start`], in a directory prepared by the caller (for
    /// config files that name certificates and the like).
    pub fn start_in(dir: tempfile::TempDir, config_yaml: &str) -> Self {
        Self::start_with_env(dir, config_yaml, &[])
    }

    /// Like [`Leash::start_in`], with extra environment variables for the
    /// process (fault injection).
    pub fn start_with_env(dir: tempfile::TempDir, config_yaml: &str, env: &[(&str, &str)]) -> Self {
        let config = dir.path().join("leash.yaml");
        std::fs::write(&config, config_yaml).expect("write config");
        let audit_dir = dir.path().join("audit");
        let log_path = dir.path().join("leash.log");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = Self::spawn(&config, addr, admin, &audit_dir, &log_path, &env);
        let mut leash = Self {
            child,
            env,
            addr,
            admin,
            audit_dir,
            log_path,
            dir,
        };
        leash.wait_healthy();
        leash
    }

    fn spawn(
        config: &Path,
        addr: SocketAddr,
        admin: SocketAddr,
        audit_dir: &Path,
        log_path: &Path,
        env: &[(String, String)],
    ) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("log file");
        leash_command()
            .arg("gateway")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--audit-dir")
            .arg(audit_dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn leash")
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as in a crash: nothing is flushed.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the gateway again with the same config, ports and audit dir.
    pub fn restart(&mut self) {
        self.kill9();
        let config = self.dir.path().join("leash.yaml");
        self.child = Self::spawn(
            &config,
            self.addr,
            self.admin,
            &self.audit_dir,
            &self.log_path,
            &self.env,
        );
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("leash exited during startup ({status}):\n{}", self.logs());
            }
            if http_get(self.admin, "/healthz").is_some_and(|(s, _)| s == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "leash not healthy after 20s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT/v1/<provider>`: the SDK base URL.
    pub fn base_url(&self, provider: &str) -> String {
        format!("http://{}/v1/{provider}", self.addr)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The raw text of every audit file.
    pub fn audit_text(&self) -> String {
        audit_text(&self.audit_dir)
    }

    /// Complete records of every segment, in order (a torn last line, cut
    /// short by a crash, is not a record).
    pub fn audit_records(&self) -> Vec<Value> {
        read_records(&self.audit_dir)
    }
}

/// The audit segments (`*.jsonl`) of `dir`, in name order (not the epoch
/// and ship-cursor files beside them).
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    paths.sort();
    paths
}

/// Complete audit records in `dir`: each segment's newline-terminated lines.
pub fn read_records(dir: &Path) -> Vec<Value> {
    let mut paths = segment_files(dir);
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        for line in text[..complete].lines() {
            out.push(
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("bad audit line {line:?}: {e}")),
            );
        }
    }
    out
}

/// Waits (up to 10 s) until `dir` holds at least `n` complete audit
/// records; on timeout the failure shows them and `logs()`.
pub fn wait_for_records(dir: &Path, n: usize, logs: impl Fn() -> String) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = read_records(dir);
        if records.len() >= n {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} audit records, found {}:\n{records:#?}\nlogs:\n{}",
            records.len(),
            logs()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

impl Leash {
    /// Waits (up to 10 s) until at least `n` audit records are on disk.
    pub fn wait_records(&self, n: usize) -> Vec<Value> {
        wait_for_records(&self.audit_dir, n, || self.logs())
    }

    /// The Prometheus text from `/metrics`.
    pub fn metrics(&self) -> String {
        let (status, body) = http_get(self.admin, "/metrics").expect("metrics");
        assert_eq!(status, 200);
        body
    }

    /// SIGTERM, then waits for a graceful exit.
    pub fn stop(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "leash did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Leash {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status, headers (lower-cased names) and body of a response.
pub type RawResponse = (u16, Vec<(String, String)>, Vec<u8>);

/// A plain HTTP/1.1 request over a fresh socket; returns status and body.
/// Handles `Content-Length`, chunked and close-delimited bodies.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<RawResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Option<RawResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Some((status, headers, body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = std::str::from_utf8(&data[..eol]).unwrap_or("0");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 || data.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[(eol + 2 + size + 2).min(data.len())..];
    }
    out
}

/// GET `path`; `None` if nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, &[], b"")
        .map(|(s, _, b)| (s, String::from_utf8_lossy(&b).into_owned()))
}

/// Sends a request and returns when each byte batch arrived: the timing of a
/// stream as a client sees it, with nothing buffering in between.
pub fn timed_stream(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<(Instant, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("write");
    stream.write_all(body).expect("write");
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => arrivals.push((Instant::now(), buf[..n].to_vec())),
            Err(e) => panic!("read failed: {e}"),
        }
    }
    arrivals
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

/// A temporary child cgroup v2, removed when dropped.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(tag: &str) -> Self {
        let root =
            leash_agent::intercept::cgroup::v2_root().expect("no cgroup v2 hierarchy mounted");
        let path = root.join(format!("leash-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", path.display()));
        Self { path }
    }

    /// The path as `/proc/<pid>/cgroup` shows it (relative to the root).
    pub fn relative(&self) -> String {
        format!(
            "/{}",
            self.path.file_name().expect("name").to_string_lossy()
        )
    }

    /// `cmd` run inside this cgroup, in a private mount namespace where
    /// `hosts` is bind-mounted over /etc/hosts (so provider names resolve to
    /// the test's fake hosts for this process only).
    pub fn command(&self, hosts: &Path, program: &str, args: &[&str]) -> Command {
        self.command_with(&[(hosts, "/etc/hosts")], program, args)
    }

    /// `cmd` run inside this cgroup, in a private mount namespace with each
    /// `(file, over)` bind-mounted over the path `over`.
    pub fn command_with(&self, mounts: &[(&Path, &str)], program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"cg=$1; shift; echo $$ > "$cg/cgroup.procs" && exec unshare -m sh -c 'while [ "$1" != "--" ]; do mount --bind "$1" "$2" || exit 97; shift 2; done; shift; exec "$@"' sh "$@""#)
            .arg("sh")
            .arg(&self.path);
        for (file, over) in mounts {
            cmd.arg(file).arg(over);
        }
        cmd.arg("--").arg(program).args(args);
        cmd
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running `leash run` agent, killed when dropped.
pub struct Agent {
    child: Option<Child>,
    /// The cgroup the agent itself runs in (so its own upstream connections
    /// pass through the hooks it attached, and must not loop back).
    cgroup: Option<PathBuf>,
    pub admin: SocketAddr,
    pub audit_dir: PathBuf,
    pub ca_dir: PathBuf,
    config: PathBuf,
    log_path: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `leash run` with `config_yaml` (`ca.dir` is set by the
    /// harness) in `dir`, and waits until it is healthy.
    pub fn start_in(dir: tempfile::TempDir, config_yaml: &str, inside: Option<&Cgroup>) -> Self {
        let ca_dir = dir.path().join("org-ca");
        let config = dir.path().join("leash.yaml");
        std::fs::write(
            &config,
            format!("ca: {{ dir: \"{}\" }}\n{config_yaml}", ca_dir.display()),
        )
        .expect("write config");
        let mut agent = Self {
            child: None,
            cgroup: inside.map(|c| c.path.clone()),
            admin: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
            audit_dir: dir.path().join("audit"),
            ca_dir,
            config,
            log_path: dir.path().join("leash.log"),
            dir,
        };
        agent.restart();
        agent
    }

    /// (Re)starts the agent process with the same config.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log");
        let mut cmd = match &self.cgroup {
            Some(cg) => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
                    .arg("sh")
                    .arg(cg)
                    .arg(leash_bin())
                    .args(["--log-level", LOG_LEVEL]);
                cmd
            }
            None => leash_command(),
        };
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--admin-listen")
            .arg(self.admin.to_string())
            .arg("--audit-dir")
            .arg(&self.audit_dir)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn leash run");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("try_wait"))
            {
                panic!(
                    "leash run exited during startup ({status}):\n{}",
                    self.logs()
                );
            }
            if http_get(self.admin, "/healthz").is_some_and(|(s, _)| s == 200)
                && self.logs().contains("intercepting")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "leash run not ready after 30s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for the agent to exit; returns its status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        // The agent may run under `sh`, which `exec`s it: same pid.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "leash run did not stop on SIGTERM:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL: no cleanup at all, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The agent's process id (`sh` `exec`s it: same pid).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// The organisation CA clients must trust.
    pub fn ca_pem(&self) -> PathBuf {
        self.ca_dir.join("ca.pem")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn audit_records(&self) -> Vec<Value> {
        read_records(&self.audit_dir)
    }

    /// The raw text of every audit file.
    pub fn audit_text(&self) -> String {
        audit_text(&self.audit_dir)
    }

    pub fn wait_records(&self, n: usize) -> Vec<Value> {
        wait_for_records(&self.audit_dir, n, || self.logs())
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").expect("metrics").1
    }
}

/// The raw text of every file in an audit directory, in name order.
pub fn audit_text(dir: &Path) -> String {
    let mut text = String::new();
    for p in segment_files(dir) {
        text.push_str(&std::fs::read_to_string(p).unwrap_or_default());
    }
    text
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
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
