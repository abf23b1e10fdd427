//! The transparent agent under test: a temporary cgroup, and a running
//! `leash run` with its audit trail, logs and metrics.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    gateway::{LOG_LEVEL, read_records, segment_files, wait_for_records},
    harness::{free_port, leash_bin},
    http::http_get,
};

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
    /// Removes what agents left on the cgroup in bpffs (pinned hooks of a
    /// fail-closed agent, shared maps of one killed), then the cgroup.
    fn drop(&mut self) {
        if let Some(dir) = leash_agent::intercept::pin::mounted_dir_for(&self.path) {
            let _ = leash_agent::intercept::pin::release(&dir);
        }
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
    pub config: PathBuf,
    log_path: PathBuf,
    /// Extra environment of the agent process (fault injection).
    env: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `leash run` with `config_yaml` (`ca.dir` is set by the
    /// harness) in `dir`, and waits until it is healthy.
    pub fn start_in(dir: tempfile::TempDir, config_yaml: &str, inside: Option<&Cgroup>) -> Self {
        Self::start_with_env(dir, config_yaml, inside, &[])
    }

    /// As [`Agent::start_in`], with extra environment variables for the
    /// agent process (fault injection).
    pub fn start_with_env(
        dir: tempfile::TempDir,
        config_yaml: &str,
        inside: Option<&Cgroup>,
        env: &[(&str, &str)],
    ) -> Self {
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
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
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
        let mut cmd = if let Some(cg) = &self.cgroup {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
                .arg("sh")
                .arg(cg)
                .arg(self.binary());
            cmd
        } else {
            Command::new(self.binary())
        };
        cmd.env_remove("RUST_LOG").args(["--log-level", LOG_LEVEL]);
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--admin-listen")
            .arg(self.admin.to_string())
            .arg("--audit-dir")
            .arg(&self.audit_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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

    /// The `leash` binary run: the one under test, or the one named by
    /// [`crate::gateway::BINARY`] in the agent's environment (an upgrade
    /// test's copy).
    fn binary(&self) -> PathBuf {
        self.env
            .iter()
            .find(|(k, _)| k == crate::gateway::BINARY)
            .map_or_else(leash_bin, |(_, bin)| PathBuf::from(bin))
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

    /// A console API request with the agent's admin token.
    pub fn api(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        let token = crate::gateway::admin_token(&self.audit_dir.join("admin.token"));
        crate::gateway::api(self.admin, &token, method, path, body)
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
