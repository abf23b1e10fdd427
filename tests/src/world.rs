//! The world of a transparent-interception test: fake provider hosts on
//! 127.10.x.y:443 with certificates from their own "public" CA, a temporary
//! cgroup, a private /etc/hosts that maps the real provider names to those
//! addresses, and `leash run` attached to the cgroup.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Output,
};

use crate::{
    agent::{Agent, Cgroup},
    harness::{free_port, python, python_dir, run},
    mock::MockProvider,
    tls::{Identity, TestCa},
};

/// The chat request of most tests.
pub const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

/// A fake host: name, address, and whether the agent intercepts it.
pub struct Host(pub &'static str, pub &'static str, pub bool);

/// One test world: fake hosts with their public CA, a cgroup, the agent.
pub struct World {
    pub agent: Agent,
    pub cgroup: Cgroup,
    pub hosts_file: PathBuf,
    pub public_ca: PathBuf,
    /// The "public" CA itself, for servers a test starts on its own.
    pub public: Box<TestCa>,
    pub mocks: Vec<MockProvider>,
    /// The transparent proxy's port.
    pub proxy_port: u16,
}

impl World {
    pub fn new(tag: &str, hosts: &[Host], extra_config: &str) -> Self {
        Self::with_identities(tag, hosts, extra_config, |ca, h| ca.identity(&[h.0]))
    }

    /// As [`World::new`], with each fake host's certificate made by
    /// `identity` (from the public CA, or not).
    pub fn with_identities(
        tag: &str,
        hosts: &[Host],
        extra_config: &str,
        identity: impl Fn(&TestCa, &Host) -> Identity,
    ) -> Self {
        Self::build(tag, hosts, &[], extra_config, identity, &[])
    }

    /// As [`World::new`], with `own` hosts too: named and intercepted like
    /// the others, but served by the test's own servers (no mock), with
    /// certificates from [`World::public`].
    pub fn with_own_hosts(tag: &str, hosts: &[Host], own: &[Host], extra_config: &str) -> Self {
        Self::build(
            tag,
            hosts,
            own,
            extra_config,
            |ca, h| ca.identity(&[h.0]),
            &[],
        )
    }

    /// As [`World::new`], with extra environment for the agent process.
    pub fn with_env(tag: &str, hosts: &[Host], extra_config: &str, env: &[(&str, &str)]) -> Self {
        Self::build(
            tag,
            hosts,
            &[],
            extra_config,
            |ca, h| ca.identity(&[h.0]),
            env,
        )
    }

    fn build(
        tag: &str,
        hosts: &[Host],
        own: &[Host],
        extra_config: &str,
        identity: impl Fn(&TestCa, &Host) -> Identity,
        env: &[(&str, &str)],
    ) -> Self {
        let ca = TestCa::new("fake public CA");
        let dir = tempfile::tempdir().unwrap();
        let public_ca = dir.path().join("public-ca.pem");
        ca.write_cert(&public_ca);
        let mocks = hosts
            .iter()
            .map(|h| {
                MockProvider::start_tls(
                    std::net::SocketAddr::new(h.1.parse().unwrap(), 443),
                    &identity(&ca, h),
                )
            })
            .collect();
        let hosts_file = dir.path().join("hosts");
        let mut text = String::from("127.0.0.1 localhost\n");
        for h in hosts.iter().chain(own) {
            let _ = writeln!(text, "{} {}", h.1, h.0);
        }
        std::fs::write(&hosts_file, text).unwrap();
        let cgroup = Cgroup::new(tag);
        let proxy_port = free_port();
        let mut config = format!(
            "upstream_tls: {{ extra_roots: [\"{}\"] }}\nintercept:\n  cgroup: \"{}\"\n  resolve: false\n  proxy_port: {}\n  hosts:\n",
            public_ca.display(),
            cgroup.path.display(),
            proxy_port
        );
        for h in hosts.iter().chain(own).filter(|h| h.2) {
            let _ = writeln!(
                config,
                "    - {{ name: {}, addresses: [\"{}\"] }}",
                h.0, h.1
            );
        }
        config.push_str(extra_config);
        let agent = Agent::start_with_env(dir, &config, Some(&cgroup), env);
        Self {
            agent,
            cgroup,
            hosts_file,
            public_ca,
            public: Box::new(ca),
            mocks,
            proxy_port,
        }
    }

    /// curl inside the cgroup, trusting `cacert` only.
    pub fn curl(&self, cacert: &Path, url: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            cacert.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push(url);
        run(&mut self.cgroup.command(&self.hosts_file, "curl", &args))
    }

    /// The chat request by curl inside the cgroup as uid 65534 (nobody),
    /// trusting only the organisation CA (copied where nobody can read
    /// it); `extra`: more curl arguments (headers).
    pub fn chat_as_nobody(&self, extra: &[&str]) -> Output {
        use std::os::unix::fs::PermissionsExt as _;
        let shared = tempfile::tempdir().unwrap();
        std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ca = shared.path().join("ca.pem");
        std::fs::copy(self.agent.ca_pem(), &ca).unwrap();
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut args = vec![
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            ca.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.extend(["-d", CHAT, "https://api.openai.com/v1/chat/completions"]);
        run(&mut self.cgroup.command(&self.hosts_file, "setpriv", &args))
    }

    pub fn chat(&self, cacert: &Path, key: &str) -> Output {
        let auth = format!("authorization: Bearer {key}");
        self.curl(
            cacert,
            "https://api.openai.com/v1/chat/completions",
            &[
                "-H",
                &auth,
                "-H",
                "content-type: application/json",
                "-d",
                CHAT,
            ],
        )
    }
}

impl World {
    /// `sdk_check.py CASE BASE sk-test` inside the cgroup, trusting only the
    /// organisation CA, with `LEASH_TEST_PROMPT` and `LEASH_TEST_HEADERS`.
    pub fn sdk(&self, case: &str, base: &str, prompt: &str, headers: &str) -> Output {
        self.sdk_with(case, base, prompt, headers, &["sk-test"])
    }

    /// As [`World::sdk`], with the key (and an expected text) in `rest`.
    pub fn sdk_with(
        &self,
        case: &str,
        base: &str,
        prompt: &str,
        headers: &str,
        rest: &[&str],
    ) -> Output {
        self.sdk_env(case, base, prompt, &[("LEASH_TEST_HEADERS", headers)], rest)
    }

    /// As [`World::sdk_with`], with more environment (`HTTPS_PROXY`...).
    pub fn sdk_env(
        &self,
        case: &str,
        base: &str,
        prompt: &str,
        env: &[(&str, &str)],
        rest: &[&str],
    ) -> Output {
        let mut args = vec![case, base];
        args.extend_from_slice(rest);
        let env = [&[("LEASH_TEST_PROMPT", prompt)][..], env].concat();
        self.python("sdk_check.py", &env, &args)
    }

    /// A script of `tests/python` inside the cgroup, trusting only the
    /// organisation CA, with `env` and `args`.
    pub fn python(&self, script: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
        let py = python();
        let script = python_dir().join(script);
        let ca = self.agent.ca_pem();
        let mut words = vec![format!("SSL_CERT_FILE={}", ca.display())];
        words.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        words.extend([
            py.to_string_lossy().into_owned(),
            script.to_string_lossy().into_owned(),
        ]);
        words.extend(args.iter().map(|r| (*r).to_owned()));
        let args: Vec<&str> = words.iter().map(String::as_str).collect();
        let mut cmd = self.cgroup.command(&self.hosts_file, "env", &args);
        for var in [
            "OPENAI_API_KEY",
            "ANTHROPIC_API_KEY",
            "GOOGLE_API_KEY",
            "GEMINI_API_KEY",
            "HTTPS_PROXY",
            "https_proxy",
        ] {
            cmd.env_remove(var);
        }
        run(&mut cmd)
    }
}
