//! The contenders (Leash variants, nginx, LiteLLM, Portkey) and the load
//! generator that measures them.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{LOADGEN_CPU, Proc, SERVER_CPU, free_port, pinned, wait_port, which};
use crate::{ensure_npm, ensure_pinned, run, target_dir};

pub(super) struct Contender {
    pub(super) name: &'static str,
    pub(super) what: String,
    pub(super) url: String,
    /// Extra `leash-bench` client flags (routing headers, TLS roots).
    pub(super) client: Vec<(&'static str, String)>,
    /// The process whose CPU and memory are the contender's (the upstream
    /// for `direct`).
    pub(super) pid: u32,
    pub(super) proc: Option<Proc>,
    /// Processes that run alongside while it is measured (a console
    /// client following the live feed).
    pub(super) helpers: Vec<Proc>,
}

pub(super) fn leash_config(dir: &Path, upstream: u16, extra: &str) -> Result<PathBuf> {
    let path = dir.join(format!("leash-{}.yaml", free_port()?));
    std::fs::write(
        &path,
        format!(
            "providers:\n  openai: {{ upstream: \"http://127.0.0.1:{upstream}/v1\" }}\n{extra}"
        ),
    )?;
    Ok(path)
}

pub(super) const EXAMPLE_POLICY: &str = r"policy:
  version: 1
  detectors:
    codenames: { regex: '(?i)\bproject\s+(falcon|osprey)\b' }
  rules:
    - { name: block-secrets, match: { detectors: [secrets] }, action: block }
    - { name: redact-pii, match: { detectors: [email, phone, credit_card, us_ssn, iban] }, action: redact }
    - { name: tag-codenames, match: { detectors: [codenames] }, action: annotate, tags: [confidential] }
    - { name: no-secrets-out, match: { detectors: [secrets], direction: response }, action: block }
";

pub(super) fn start_leash(
    name: &'static str,
    what: &str,
    bin: &Path,
    dir: &Path,
    upstream: u16,
    extra: &str,
) -> Result<Contender> {
    start_leash_with_admin(name, what, bin, dir, upstream, extra, free_port()?)
}

/// As `leash-policy`, with the web console open: a client (curl, on the
/// load generator's CPU) follows the live feed, one event per request.
pub(super) fn start_leash_console(bin: &Path, dir: &Path, upstream: u16) -> Result<Contender> {
    let admin = free_port()?;
    let mut c = start_leash_with_admin(
        "leash-console",
        "as leash-policy, with the web console open: a client follows its live feed (/api/live, one server-sent event per request)",
        bin,
        dir,
        upstream,
        EXAMPLE_POLICY,
        admin,
    )?;
    let curl = which("curl").context("curl is not installed")?;
    // The console needs the admin token (made by Leash in its audit
    // directory); curl reads the header from a file, not its command line.
    let token = std::fs::read_to_string(dir.join("audit-leash-console/admin.token"))
        .context("reading the console's admin token")?;
    let header = dir.join("console-auth.header");
    std::fs::write(&header, format!("authorization: Bearer {}\n", token.trim()))?;
    c.helpers.push(Proc::spawn(
        pinned(LOADGEN_CPU, &curl)
            .args(["-sN", "--fail", "-o", "/dev/null", "-H"])
            .arg(format!("@{}", header.display()))
            .arg(format!("http://127.0.0.1:{admin}/api/live")),
        &dir.join("console-live.log"),
    )?);
    Ok(c)
}

pub(super) fn start_leash_with_admin(
    name: &'static str,
    what: &str,
    bin: &Path,
    dir: &Path,
    upstream: u16,
    extra: &str,
    admin: u16,
) -> Result<Contender> {
    let config = leash_config(dir, upstream, extra)?;
    let port = free_port()?;
    let proc = Proc::spawn(
        super::gateway_args(
            &mut pinned(SERVER_CPU, bin),
            &config,
            port,
            admin,
            &dir.join(format!("audit-{name}")),
        ),
        &dir.join(format!("{name}.log")),
    )?;
    wait_port(port, name)?;
    Ok(Contender::served(
        name,
        what.to_owned(),
        format!("http://127.0.0.1:{port}/v1/openai/chat/completions"),
        proc,
    ))
}

/// The do-nothing proxy's configuration: one worker on `port` passing
/// everything to `upstream` with keep-alive, files under `dir`, written to
/// `dir/<name>.conf`. `single_process`: no master process (so a tool that
/// runs nginx, such as valgrind, sees the worker itself).
pub(super) fn nginx_conf(
    dir: &Path,
    name: &str,
    upstream: u16,
    port: u16,
    single_process: bool,
) -> Result<PathBuf> {
    let conf = dir.join(format!("{name}.conf"));
    let master = if single_process {
        "master_process off;\n"
    } else {
        ""
    };
    std::fs::write(
        &conf,
        format!(
            "daemon off;\n{master}worker_processes 1;\npid {dir}/{name}.pid;\nerror_log {dir}/nginx-error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {dir}/nginx-body;\n  proxy_temp_path {dir}/nginx-proxy;\n  upstream up {{ server 127.0.0.1:{upstream}; keepalive 128; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://up;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n",
            dir = dir.display()
        ),
    )?;
    Ok(conf)
}

/// The nginx binary.
pub(super) fn nginx_binary() -> PathBuf {
    which("nginx").unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

pub(super) fn start_nginx(dir: &Path, upstream: u16) -> Result<Contender> {
    let port = free_port()?;
    let conf = nginx_conf(dir, "nginx", upstream, port, false)?;
    let nginx = nginx_binary();
    let proc = Proc::spawn(
        pinned(SERVER_CPU, &nginx)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir),
        &dir.join("nginx.log"),
    )?;
    wait_port(port, "nginx")?;
    let version = Command::new(&nginx)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default();
    Ok(Contender::served(
        "nginx",
        format!("{version}, proxy_pass with upstream keepalive, 1 worker"),
        format!("http://127.0.0.1:{port}/v1/chat/completions"),
        proc,
    ))
}

/// LiteLLM's pinned release (never 1.82.7 or 1.82.8: those were malicious).
pub(super) const LITELLM: &str = "litellm[proxy]==1.80.0";

/// The LiteLLM proxy (PyPI, in its own venv under target/), one worker,
/// routing `gpt-4o-mini` to the upstream.
pub(super) fn start_litellm(dir: &Path, upstream: u16) -> Result<Contender> {
    let venv = target_dir().join("bench-litellm");
    let bin = venv.join("bin/litellm");
    ensure_pinned(&venv, LITELLM, || {
        run(Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
        run(Command::new(venv.join("bin/python")).args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            LITELLM,
        ]))
    })?;
    let config = dir.join("litellm.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: http://127.0.0.1:{upstream}/v1\n      api_key: sk-bench\n"
        ),
    )?;
    let port = free_port()?;
    let proc = Proc::spawn(
        pinned(SERVER_CPU, &bin)
            .arg("--config")
            .arg(&config)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--num_workers",
                "1",
            ])
            .env("LITELLM_LOG", "ERROR"),
        &dir.join("litellm.log"),
    )?;
    wait_port(port, "LiteLLM")?;
    Ok(Contender::served(
        "litellm",
        format!(
            "LiteLLM proxy {} (PyPI), 1 worker",
            LITELLM.trim_start_matches("litellm[proxy]==")
        ),
        format!("http://127.0.0.1:{port}/v1/chat/completions"),
        proc,
    ))
}

/// Portkey's open-source gateway, pinned (npm).
pub(super) const PORTKEY: &str = "@portkey-ai/gateway@1.15.2";

/// The Portkey gateway (npm, Node.js, in its own prefix under target/),
/// routed to the upstream with its `x-portkey-provider` and
/// `x-portkey-custom-host` headers (127.0.0.1 is a trusted custom host by
/// default).
pub(super) fn start_portkey(dir: &Path, upstream: u16) -> Result<Contender> {
    let prefix = target_dir().join("bench-portkey");
    ensure_npm(&prefix, PORTKEY)?;
    let node = which("node").context("Node.js (node) is not installed")?;
    let port = free_port()?;
    let proc = Proc::spawn(
        pinned(SERVER_CPU, &node)
            .arg(prefix.join("node_modules/@portkey-ai/gateway/build/start-server.js"))
            .args([&format!("--port={port}"), "--headless"]),
        &dir.join("portkey.log"),
    )?;
    wait_port(port, "Portkey gateway")?;
    let node_version = Command::new(&node)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Ok(Contender {
        name: "portkey",
        what: format!(
            "Portkey gateway {} (npm) on Node.js {node_version}, routed by x-portkey-provider / x-portkey-custom-host headers",
            PORTKEY.trim_start_matches("@portkey-ai/gateway@")
        ),
        url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
        client: vec![
            ("--header", "x-portkey-provider: openai".to_owned()),
            (
                "--header",
                format!("x-portkey-custom-host: http://127.0.0.1:{upstream}/v1"),
            ),
        ],
        pid: proc.pid(),
        proc: Some(proc),
        helpers: Vec::new(),
    })
}

/// Runs `leash-bench MODE --url URL [--flag value]...` pinned to the load
/// generator's CPU; returns the JSON it prints.
pub(super) fn bench_tool(
    bin: &Path,
    mode: &str,
    url: &str,
    flags: &[(&str, String)],
) -> Result<Value> {
    bench_tool_in(None, LOADGEN_CPU, bin, mode, url, flags)
}

/// As [`bench_tool`], on the CPUs `cpus`.
pub(super) fn bench_tool_on(
    cpus: &str,
    bin: &Path,
    mode: &str,
    url: &str,
    flags: &[(&str, String)],
) -> Result<Value> {
    bench_tool_in(None, cpus, bin, mode, url, flags)
}

/// As [`bench_tool_on`], inside the cgroup v2 directory `cgroup` if given.
pub(super) fn bench_tool_in(
    cgroup: Option<&Path>,
    cpus: &str,
    bin: &Path,
    mode: &str,
    url: &str,
    flags: &[(&str, String)],
) -> Result<Value> {
    let mut args = vec![mode.to_owned(), "--url".to_owned(), url.to_owned()];
    for (flag, value) in flags {
        args.push((*flag).to_owned());
        args.push(value.clone());
    }
    let mut cmd = match cgroup {
        Some(cg) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
                .arg("sh")
                .arg(cg)
                .args(["taskset", "-c", cpus])
                .arg(bin);
            c
        }
        None => pinned(cpus, bin),
    };
    let out = cmd
        .args(&args)
        .stderr(Stdio::inherit())
        .output()
        .context("running leash-bench")?;
    if !out.status.success() {
        bail!("leash-bench {args:?} failed with {}", out.status);
    }
    serde_json::from_slice(&out.stdout).context("leash-bench printed no JSON")
}

impl Contender {
    /// A contender served by `proc`, called at `url` with no extra client
    /// flags.
    pub(super) fn served(name: &'static str, what: String, url: String, proc: Proc) -> Self {
        Self {
            name,
            what,
            url,
            client: Vec::new(),
            pid: proc.pid(),
            proc: Some(proc),
            helpers: Vec::new(),
        }
    }

    /// `leash-bench MODE` against this contender with its client flags.
    pub(super) fn measure(
        &self,
        tool: &Path,
        mode: &str,
        flags: &[(&str, String)],
    ) -> Result<Value> {
        let mut all: Vec<(&str, String)> = self.client.clone();
        all.extend(flags.iter().cloned());
        bench_tool(tool, mode, &self.url, &all)
    }
}
