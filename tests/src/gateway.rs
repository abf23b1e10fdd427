//! A running `leash gateway` in a temporary directory, and its audit
//! trail, logs and metrics.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    agent::audit_text,
    harness::{free_port, http_get, leash_bin, mock_providers_yaml},
    mock::MockProvider,
};

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
pub const LOG_LEVEL: &str = "debug,aya=info,aya_obj=info,rustls=info,h2=info,hyper_util=info,async_nats=info,tokio_postgres=info";

/// `leash` as a command with test logging (debug, so anything a log line
/// could leak shows up).
/// In the `env` of [`Leash::start_with_env`]: run this `leash` binary
/// instead of the one under test (an upgrade test's copy).
pub const BINARY: &str = "LEASH_TEST_BINARY";

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
        let mut cmd = match env.iter().find(|(k, _)| k == BINARY) {
            Some((_, bin)) => {
                let mut cmd = Command::new(bin);
                cmd.env_remove("RUST_LOG").arg("--log-level").arg(LOG_LEVEL);
                cmd
            }
            None => leash_command(),
        };
        cmd.arg("gateway")
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

    /// The admin token Leash made in its audit directory.
    pub fn admin_token(&self) -> String {
        admin_token(&self.audit_dir.join("admin.token"))
    }

    /// A console API request with the admin token: status and JSON body.
    pub fn api(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        api(self.admin, &self.admin_token(), method, path, body)
    }

    /// The one-time login URL `leash console` prints for this gateway.
    pub fn console_login_url(&self) -> String {
        let out = crate::harness::run(
            leash_command()
                .arg("console")
                .arg("--config")
                .arg(self.dir.path().join("leash.yaml"))
                .arg("--admin-listen")
                .arg(self.admin.to_string())
                .arg("--audit-dir")
                .arg(&self.audit_dir),
        );
        crate::harness::assert_success("leash console", &out);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("http://"))
            .expect("a login URL")
            .to_owned()
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

/// The token in an admin token file (waiting briefly for Leash to make it).
pub fn admin_token(file: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(t) = std::fs::read_to_string(file)
            && !t.trim().is_empty()
        {
            return t.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no admin token in {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A console API request to `admin` with `token`: status and JSON body.
pub fn api(admin: SocketAddr, token: &str, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let (status, _, body) = crate::http::http_request(
        admin,
        method,
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .expect("the admin listener answers");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
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
