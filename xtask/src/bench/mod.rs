//! `cargo xtask bench [--quick]`: Leash side by side with a direct call and a
//! do-nothing proxy (nginx), measured from outside by `leash-bench` against
//! the same lean upstream, in one run, with the load generator pinned to
//! one CPU and the contender + upstream to the other. Writes
//! `BENCHMARKS.md`, `bench/results.json` and `bench/latency.svg`.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{cargo, ensure_debian_packages, ensure_npm, ensure_pinned, root, run, target_dir};

mod extra;
mod transparent;

/// CPU of the load generator; contenders and the upstream get the other.
const LOADGEN_CPU: &str = "0";
const SERVER_CPU: &str = "1";

struct Plan {
    rates: Vec<f64>,
    seconds: f64,
    rounds: usize,
    saturate_seconds: f64,
    sse_requests: usize,
    /// Criterion's measurement time per micro-benchmark.
    micro_seconds: u32,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                rates: vec![500.0, 1000.0, 2000.0],
                seconds: 3.0,
                rounds: 2,
                saturate_seconds: 2.0,
                sse_requests: 10,
                micro_seconds: 1,
            }
        } else {
            Self {
                rates: vec![500.0, 1000.0, 2000.0, 4000.0],
                seconds: 20.0,
                rounds: 3,
                saturate_seconds: 10.0,
                sse_requests: 100,
                micro_seconds: 5,
            }
        }
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn wait_port(port: u16, what: &str) -> Result<()> {
    wait_addr(std::net::SocketAddr::from(([127, 0, 0, 1], port)), what)
}

fn wait_addr(addr: std::net::SocketAddr, what: &str) -> Result<()> {
    let port = addr.port();
    let deadline = Instant::now() + Duration::from_mins(1);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} is not listening on {port} after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A process started for the run, killed at the end.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: &Path) -> Result<Self> {
        let log = std::fs::File::create(log)?;
        let child = cmd
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        Ok(Self { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pinned(cpu: &str, program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", cpu]).arg(program);
    c
}

/// A process and its descendants (nginx serves from worker children).
fn family(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        let tasks = std::fs::read_dir(format!("/proc/{p}/task"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for t in tasks {
            let children = std::fs::read_to_string(t.join("children")).unwrap_or_default();
            out.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        i += 1;
    }
    out
}

/// `VmRSS` (or another field) of a process and its children, in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    family(pid)
        .into_iter()
        .filter_map(|p| {
            let s = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        })
        .sum::<f64>()
        / 1024.0
}

/// CPU time (user + system) of a process and its children so far, in
/// seconds.
fn cpu_seconds(pid: u32) -> f64 {
    family(pid)
        .into_iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
            let fields: Vec<&str> = after.split_whitespace().collect();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            // After the command name: state is field 0; utime 11, stime 12.
            (ticks(11) + ticks(12)) / 100.0
        })
        .sum()
}

struct Contender {
    name: &'static str,
    what: String,
    url: String,
    /// Extra `leash-bench` client flags (routing headers, TLS roots).
    client: Vec<(&'static str, String)>,
    /// The process whose CPU and memory are the contender's (the upstream
    /// for `direct`).
    pid: u32,
    proc: Option<Proc>,
    /// Processes that run alongside while it is measured (a console
    /// client following the live feed).
    helpers: Vec<Proc>,
}

fn leash_config(dir: &Path, upstream: u16, extra: &str) -> Result<PathBuf> {
    let path = dir.join(format!("leash-{}.yaml", free_port()?));
    std::fs::write(
        &path,
        format!(
            "providers:\n  openai: {{ upstream: \"http://127.0.0.1:{upstream}/v1\" }}\n{extra}"
        ),
    )?;
    Ok(path)
}

const EXAMPLE_POLICY: &str = r"policy:
  version: 1
  detectors:
    codenames: { regex: '(?i)\bproject\s+(falcon|osprey)\b' }
  rules:
    - { name: block-secrets, match: { detectors: [secrets] }, action: block }
    - { name: redact-pii, match: { detectors: [email, phone, credit_card, us_ssn, iban] }, action: redact }
    - { name: tag-codenames, match: { detectors: [codenames] }, action: annotate, tags: [confidential] }
    - { name: no-secrets-out, match: { detectors: [secrets], direction: response }, action: block }
";

fn start_leash(
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
fn start_leash_console(bin: &Path, dir: &Path, upstream: u16) -> Result<Contender> {
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
    c.helpers.push(Proc::spawn(
        pinned(LOADGEN_CPU, &curl)
            .args(["-sN", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{admin}/api/live")),
        &dir.join("console-live.log"),
    )?);
    Ok(c)
}

fn start_leash_with_admin(
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
        pinned(SERVER_CPU, bin)
            .args(["--log-level", "warn", "gateway", "--config"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .arg("--audit-dir")
            .arg(dir.join(format!("audit-{name}"))),
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

fn start_nginx(dir: &Path, upstream: u16) -> Result<Contender> {
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {dir}/nginx-body;\n  proxy_temp_path {dir}/nginx-proxy;\n  upstream up {{ server 127.0.0.1:{upstream}; keepalive 128; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://up;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n",
            dir = dir.display()
        ),
    )?;
    let nginx = which("nginx").unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
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
const LITELLM: &str = "litellm[proxy]==1.80.0";

/// The LiteLLM proxy (PyPI, in its own venv under target/), one worker,
/// routing `gpt-4o-mini` to the upstream.
fn start_litellm(dir: &Path, upstream: u16) -> Result<Contender> {
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
const PORTKEY: &str = "@portkey-ai/gateway@1.15.2";

/// The Portkey gateway (npm, Node.js, in its own prefix under target/),
/// routed to the upstream with its `x-portkey-provider` and
/// `x-portkey-custom-host` headers (127.0.0.1 is a trusted custom host by
/// default).
fn start_portkey(dir: &Path, upstream: u16) -> Result<Contender> {
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

fn which(program: &str) -> Option<PathBuf> {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
}

/// Runs `leash-bench MODE --url URL [--flag value]...` pinned to the load
/// generator's CPU; returns the JSON it prints.
fn bench_tool(bin: &Path, mode: &str, url: &str, flags: &[(&str, String)]) -> Result<Value> {
    bench_tool_in(None, LOADGEN_CPU, bin, mode, url, flags)
}

/// As [`bench_tool`], on the CPUs `cpus`.
fn bench_tool_on(
    cpus: &str,
    bin: &Path,
    mode: &str,
    url: &str,
    flags: &[(&str, String)],
) -> Result<Value> {
    bench_tool_in(None, cpus, bin, mode, url, flags)
}

/// As [`bench_tool_on`], inside the cgroup v2 directory `cgroup` if given.
fn bench_tool_in(
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
    fn served(name: &'static str, what: String, url: String, proc: Proc) -> Self {
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
    fn measure(&self, tool: &Path, mode: &str, flags: &[(&str, String)]) -> Result<Value> {
        let mut all: Vec<(&str, String)> = self.client.clone();
        all.extend(flags.iter().cloned());
        bench_tool(tool, mode, &self.url, &all)
    }
}

/// A latency cell: milliseconds to the microsecond, or a dash when there is
/// no figure.
fn ms(v: &Value) -> String {
    let x = f(v);
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "—".to_owned()
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Median of a list (NaN when empty).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[allow(
    clippy::too_many_lines,
    reason = "the run reads best top to bottom: start, measure, write"
)]
pub fn bench(quick: bool) -> Result<()> {
    ensure_debian_packages(&[("nginx", "nginx"), ("taskset", "util-linux")])?;
    crate::setup()?;
    // One build for the binaries and the criterion benches (same features,
    // so the agent library is compiled once); the bench executables are run
    // directly later, not through a second `cargo bench` with other
    // features.
    let benches = build_release()?;
    let release = target_dir().join("release");
    let leash = release.join("leash");
    let tool = release.join("leash-bench");
    let dir = target_dir().join("bench-run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let plan = Plan::new(quick);
    let started = Instant::now();

    let up_port = free_port()?;
    let upstream = Proc::spawn(
        pinned(SERVER_CPU, &tool).args([
            "upstream",
            "--listen",
            &format!("127.0.0.1:{up_port}"),
            "--size",
            "1024",
            "--chunks",
            "20",
            "--gap-ms",
            "10",
        ]),
        &dir.join("upstream.log"),
    )?;
    wait_port(up_port, "upstream")?;

    let mut contenders = vec![Contender {
        name: "direct",
        what: "straight to the upstream".into(),
        url: format!("http://127.0.0.1:{up_port}/v1/chat/completions"),
        client: Vec::new(),
        pid: upstream.pid(),
        proc: None,
        helpers: Vec::new(),
    }];
    let mut skipped: Vec<(String, String)> = Vec::new();
    match start_nginx(&dir, up_port) {
        Ok(c) => contenders.push(c),
        Err(e) => skipped.push(("nginx".into(), format!("{e:#}"))),
    }
    contenders.push(start_leash(
        "leash-bare",
        "gateway, no pipeline modules; audit on (batch)",
        &leash,
        &dir,
        up_port,
        "pipeline: { modules: [] }\n",
    )?);
    contenders.push(start_leash(
        "leash-policy",
        "gateway, default modules (team, policy, usage, budget) + a 4-rule policy; audit on (batch)",
        &leash,
        &dir,
        up_port,
        EXAMPLE_POLICY,
    )?);
    contenders.push(start_leash_console(&leash, &dir, up_port)?);
    contenders.push(start_leash(
        "leash-sync",
        "as leash-policy, with audit durability: sync (fsync before the response ends)",
        &leash,
        &dir,
        up_port,
        &format!("audit: {{ durability: sync }}\n{EXAMPLE_POLICY}"),
    )?);
    match start_litellm(&dir, up_port) {
        Ok(c) => contenders.push(c),
        Err(e) => skipped.push(("LiteLLM proxy".into(), format!("{e:#}"))),
    }
    match start_portkey(&dir, up_port) {
        Ok(c) => contenders.push(c),
        Err(e) => skipped.push(("Portkey gateway".into(), format!("{e:#}"))),
    }
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss: Vec<f64> = contenders
        .iter()
        .map(|c| status_mib(c.pid, "VmRSS:"))
        .collect();

    // Open loop at each rate, contenders alternating within each round.
    let mut open: Vec<Vec<Vec<Value>>> = vec![vec![Vec::new(); plan.rates.len()]; contenders.len()];
    let mut cpu_us: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    for round in 0..plan.rounds {
        // A contender that left most requests unsent at a rate is not
        // driven at higher ones in this round (it would only queue more).
        let mut behind = vec![false; contenders.len()];
        for (ri, rate) in plan.rates.iter().enumerate() {
            for (ci, c) in contenders.iter().enumerate() {
                if behind[ci] {
                    open[ci][ri].push(json!({
                        "skipped": "fell behind at a lower rate",
                        "errors": 0,
                        "not_sent": (rate * plan.seconds).round(),
                        "latency": {"count": 0},
                        "service": {"count": 0},
                    }));
                    continue;
                }
                eprintln!("bench: round {} rate {rate} {}", round + 1, c.name);
                let before = cpu_seconds(c.pid);
                let r = c.measure(
                    &tool,
                    "load",
                    &[
                        ("--rate", rate.to_string()),
                        ("--seconds", plan.seconds.to_string()),
                    ],
                )?;
                let used = cpu_seconds(c.pid) - before;
                if (*rate - 1000.0).abs() < f64::EPSILON {
                    // Includes the 1 s warm-up the tool sends first.
                    cpu_us[ci].push(used * 1e6 / (rate * (plan.seconds + 1.0)));
                }
                behind[ci] =
                    f(&r["not_sent"]) > 0.5 * rate * plan.seconds || r["latency"]["count"] == 0;
                open[ci][ri].push(r);
            }
        }
    }
    // Where the proxy's time goes: system calls per request of the bare
    // gateway at 1000 RPS (strace -c), the kernel side being most of it.
    let profile = contenders
        .iter()
        .find(|c| c.name == "leash-bare")
        .map(|c| syscall_profile(&tool, c, plan.seconds))
        .transpose()?
        .flatten();
    let load_rss: Vec<f64> = contenders
        .iter()
        .map(|c| status_mib(c.pid, "VmHWM:"))
        .collect();
    let mut saturation = Vec::new();
    let mut sse = Vec::new();
    let mut single = Vec::new();
    for c in &contenders {
        eprintln!("bench: one client, saturation and streams {}", c.name);
        // One client, back to back: latency with no queue at all (the
        // figure for a contender that cannot keep up with the rates above).
        single.push(c.measure(
            &tool,
            "saturate",
            &[
                ("--seconds", plan.saturate_seconds.to_string()),
                ("--connections", "1".to_owned()),
            ],
        )?);
        saturation.push(c.measure(
            &tool,
            "saturate",
            &[
                ("--seconds", plan.saturate_seconds.to_string()),
                ("--connections", "32".to_owned()),
            ],
        )?);
        sse.push(c.measure(
            &tool,
            "sse",
            &[("--requests", plan.sse_requests.to_string())],
        )?);
    }
    // The same contenders at 1000 RPS with other upstream answers, and
    // without CPU pinning (the scheduler's placement).
    let variants = extra::variants(&tool, &contenders, &plan)?;
    let unpinned = extra::unpinned(&tool, &contenders, &upstream, &plan)?;
    // Where the policy gateway's CPU goes at saturation (perf).
    let perf = contenders
        .iter()
        .find(|c| c.name == "leash-policy")
        .map(|c| extra::perf_profile(&tool, c, &dir, plan.saturate_seconds.max(3.0)))
        .transpose()?
        .flatten();
    drop(upstream);
    // Stop every contender: the transparent run and the micro-benchmarks
    // get the machine to themselves.
    for c in &mut contenders {
        c.proc = None;
    }
    let transparent = transparent::run(&leash, &tool, &dir, &plan).unwrap_or_else(|e| {
        eprintln!("bench: transparent run failed: {e:#}");
        json!({"error": format!("{e:#}")})
    });
    let micro = extra::micro_benchmarks(&plan, &benches).unwrap_or_else(|e| {
        eprintln!("bench: micro-benchmarks failed: {e:#}");
        json!({"error": format!("{e:#}")})
    });

    // Per contender and rate: the median over rounds of each percentile.
    let pct = |ci: usize, ri: usize, key: &str, field: &str| -> f64 {
        median(open[ci][ri].iter().map(|r| f(&r[key][field])).collect())
    };
    let results = json!({
        "date": crate::today(),
        "quick": quick,
        "machine": machine(),
        "placement": format!("load generator on CPU {LOADGEN_CPU}; contender and upstream on CPU {SERVER_CPU} (taskset)"),
        "plan": {"rates": plan.rates, "seconds": plan.seconds, "rounds": plan.rounds},
        "upstream": "leash-bench upstream: 1 KiB chat completion, no delay; streams: 20 events 10 ms apart",
        "contenders": contenders.iter().enumerate().map(|(ci, c)| json!({
            "name": c.name, "what": c.what,
            "rss_idle_mib": idle_rss[ci], "rss_peak_mib": load_rss[ci],
            "cpu_us_per_request_at_1000": median(cpu_us[ci].clone()),
            "open_loop": plan.rates.iter().enumerate().map(|(ri, rate)| json!({
                "rate": rate,
                "p50_ms": pct(ci, ri, "latency", "p50_ms"),
                "p95_ms": pct(ci, ri, "latency", "p95_ms"),
                "p99_ms": pct(ci, ri, "latency", "p99_ms"),
                "service_p50_ms": pct(ci, ri, "service", "p50_ms"),
                "service_p99_ms": pct(ci, ri, "service", "p99_ms"),
                "errors": open[ci][ri].iter().map(|r| r["errors"].as_u64().unwrap_or(0)).sum::<u64>(),
                "not_sent": open[ci][ri].iter().map(|r| r["not_sent"].as_u64().unwrap_or(0)).sum::<u64>(),
                "runs": open[ci][ri],
            })).collect::<Vec<_>>(),
            "saturation": saturation[ci],
            "single_client": single[ci],
            "sse": sse[ci],
        })).collect::<Vec<_>>(),
        "profile": profile,
        "perf": perf,
        "variants": variants,
        "unpinned": unpinned,
        "transparent": transparent,
        "micro": micro,
        "not_run": skipped.iter().map(|(n, w)| json!({"name": n, "why": w})).collect::<Vec<_>>(),
        "notes": contender_notes(&dir),
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    let out = root().join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    std::fs::write(out.join("latency.svg"), plot(&results))?;
    std::fs::write(root().join("BENCHMARKS.md"), report(&results))?;
    eprintln!(
        "bench: wrote BENCHMARKS.md, bench/results.json, bench/latency.svg in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What contenders' own logs say went wrong during the run (failed
/// requests are counted in the tables; this says why).
fn contender_notes(dir: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    let portkey = std::fs::read_to_string(dir.join("portkey.log")).unwrap_or_default();
    if let Some(line) = portkey.lines().find(|l| l.contains("TypeError")) {
        notes.push(format!(
            "the Portkey gateway failed requests with `{}` (from its log; on this Node.js its streaming path fails, so its stream rows show failures, not latency).",
            line.trim()
        ));
    }
    notes
}

/// Rewrites BENCHMARKS.md and the plot from the last run's results.
pub fn rewrite_report() -> Result<()> {
    let out = root().join("bench");
    let mut results: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("results.json"))
            .context("no bench/results.json: run `cargo xtask bench` first")?,
    )?;
    if results.get("notes").is_none() {
        // Results from before notes existed: the run's logs are still there.
        results["notes"] = json!(contender_notes(&target_dir().join("bench-run")));
        std::fs::write(
            out.join("results.json"),
            serde_json::to_string_pretty(&results)?,
        )?;
    }
    std::fs::write(out.join("latency.svg"), plot(&results))?;
    std::fs::write(root().join("BENCHMARKS.md"), report(&results))?;
    eprintln!("bench: BENCHMARKS.md and bench/latency.svg rewritten from bench/results.json");
    Ok(())
}

/// Builds the release binaries and the criterion benches; returns the bench
/// executables (name, path) as cargo reported them.
pub fn build_release() -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "--message-format=json-render-diagnostics",
        "-p",
        "leash-agent",
        "--bin",
        "leash",
        "--benches",
        "-p",
        "leash-tests",
        "--bin",
        "leash-bench",
    ]);
    eprintln!("xtask: {cmd:?}");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("the release build failed ({})", out.status);
    }
    let mut benches = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let is_bench = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|x| x == "bench"));
        if let (true, Some(name), Some(exe)) = (
            is_bench,
            msg["target"]["name"].as_str(),
            msg["executable"].as_str(),
        ) {
            benches.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    Ok(benches)
}

/// `strace -c -f` on a contender during an open-loop run at 1000 RPS: the
/// system calls per request, most expensive first. `None` without strace.
fn syscall_profile(tool: &Path, c: &Contender, seconds: f64) -> Result<Option<Value>> {
    if ensure_debian_packages(&[("strace", "strace")]).is_err() {
        return Ok(None);
    }
    let out = target_dir().join("bench-run").join("strace.txt");
    let mut strace = Command::new("strace")
        .args(["-c", "-f", "-o"])
        .arg(&out)
        .args(["-p", &c.pid.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .context("starting strace")?;
    std::thread::sleep(Duration::from_millis(500));
    let rate = 1000.0;
    let r = bench_tool(
        tool,
        "load",
        &c.url,
        &[
            ("--rate", rate.to_string()),
            ("--seconds", seconds.to_string()),
        ],
    )?;
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let _ = strace.wait();
    let requests = rate * (seconds + 1.0);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let mut rows = Vec::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if cols.len() < 5 || cols[0].parse::<f64>().is_err() {
            continue;
        }
        let name = cols[cols.len() - 1];
        // Totals, and the audit writer's deliberate group-commit wait.
        if name == "total" || name.ends_with("nanosleep") {
            continue;
        }
        let calls: f64 = cols[3].parse().unwrap_or(0.0);
        rows.push(json!({
            "syscall": name,
            "share_pct": cols[0].parse::<f64>().unwrap_or(0.0),
            "usecs_per_call": cols[2].parse::<f64>().unwrap_or(0.0),
            "calls_per_request": calls / requests,
        }));
    }
    rows.truncate(8);
    Ok(Some(json!({
        "contender": c.name,
        "rate": rate,
        "note": "strace itself slows system calls down: read shares and calls per request, not absolute times",
        "latency_under_strace": r["latency"],
        "syscalls": rows,
    })))
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default();
    let rustc = Command::new("rustc")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({"cpu": cpu, "cpus": cpus, "kernel": kernel, "memory": mem, "rustc": rustc, "leash_commit": commit})
}

#[allow(
    clippy::too_many_lines,
    reason = "one table after another, in the order the report reads"
)]
fn report(r: &Value) -> String {
    let mut md = String::new();
    let contenders = r["contenders"].as_array().cloned().unwrap_or_default();
    let direct = &contenders[0];
    let nginx = contenders.iter().find(|c| c["name"] == "nginx");
    let _ = writeln!(md, "# Leash benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `cargo xtask bench{}` on {} (commit {}). Do not edit by hand: run it again.\n",
        if r["quick"].as_bool() == Some(true) {
            " --quick"
        } else {
            ""
        },
        r["date"].as_str().unwrap_or("?"),
        r["machine"]["leash_commit"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        md,
        "**Machine**: {} ({} vCPUs), {}, Linux {}, {}.  \n**Placement**: {}. Compare figures only within one placement: on 2 vCPUs a cross-CPU wakeup costs tens of microseconds.  \n**Upstream**: {}.  \n**Load**: open loop at fixed rates, {} s per run after a 1 s warm-up, {} round(s) alternating contenders (figures are medians over rounds); latency measured from each request's intended send time (coordinated omission corrected), new requests on keep-alive HTTP/1.1 connections.\n",
        r["machine"]["cpu"].as_str().unwrap_or("?"),
        r["machine"]["cpus"],
        r["machine"]["memory"].as_str().unwrap_or("?"),
        r["machine"]["kernel"].as_str().unwrap_or("?"),
        r["machine"]["rustc"].as_str().unwrap_or("?"),
        r["placement"].as_str().unwrap_or("?"),
        r["upstream"].as_str().unwrap_or("?"),
        r["plan"]["seconds"],
        r["plan"]["rounds"],
    );
    let _ = writeln!(md, "## Contenders\n\n| name | what |\n| --- | --- |");
    for c in &contenders {
        let _ = writeln!(
            md,
            "| {} | {} |",
            c["name"].as_str().unwrap_or("?"),
            c["what"].as_str().unwrap_or("")
        );
    }
    for s in r["not_run"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | **not run**: {} |",
            s["name"].as_str().unwrap_or("?"),
            s["why"].as_str().unwrap_or("")
        );
    }
    for n in r["notes"].as_array().into_iter().flatten() {
        let _ = writeln!(md, "\n**Note**: {}", n.as_str().unwrap_or(""));
    }
    let _ = writeln!(
        md,
        "\n*not sent in time*: requests a contender fell so far behind on that they could not even be sent before the run's deadline (warm-up + run + 2 s); percentiles cover the requests that completed, measured from their intended send times, and show — when none did. A contender that left more than half unsent at a rate is not driven at the higher rates of that round (counted as not sent)."
    );
    let rates: Vec<f64> = r["plan"]["rates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect();
    for (ri, rate) in rates.iter().enumerate() {
        let _ = writeln!(
            md,
            "\n## {rate:.0} requests/s (open loop)\n\n| contender | p50 ms | p95 ms | p99 ms | added p50 ms | added p99 ms | ×direct p99 | ×nginx p99 | errors | not sent in time |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let d = &direct["open_loop"][ri];
        let n = nginx.map(|n| &n["open_loop"][ri]);
        for c in &contenders {
            let o = &c["open_loop"][ri];
            let _ = writeln!(
                md,
                "| {} | {:.3} | {:.3} | {:.3} | {:+.3} | {:+.3} | {:.2} | {} | {} | {} |",
                c["name"].as_str().unwrap_or("?"),
                f(&o["p50_ms"]),
                f(&o["p95_ms"]),
                f(&o["p99_ms"]),
                f(&o["p50_ms"]) - f(&d["p50_ms"]),
                f(&o["p99_ms"]) - f(&d["p99_ms"]),
                f(&o["p99_ms"]) / f(&d["p99_ms"]),
                n.map_or_else(
                    || "-".to_owned(),
                    |n| format!("{:.2}", f(&o["p99_ms"]) / f(&n["p99_ms"]))
                ),
                o["errors"],
                o["not_sent"],
            );
        }
    }
    let _ = writeln!(
        md,
        "\n## One client, back to back (no load)\n\nOne connection, each request sent when the previous answer arrived: the latency a contender adds when nothing queues — the fair figure for a contender that falls behind at the rates above.\n\n| contender | requests/s | p50 ms | p99 ms | added p50 ms | added p99 ms |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for c in &contenders {
        let s = &c["single_client"];
        let d = &direct["single_client"];
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.3} | {:.3} | {:+.3} | {:+.3} |",
            c["name"].as_str().unwrap_or("?"),
            f(&s["rps"]),
            f(&s["latency"]["p50_ms"]),
            f(&s["latency"]["p99_ms"]),
            f(&s["latency"]["p50_ms"]) - f(&d["latency"]["p50_ms"]),
            f(&s["latency"]["p99_ms"]) - f(&d["latency"]["p99_ms"]),
        );
    }
    let _ = writeln!(
        md,
        "\n## Throughput, CPU and memory\n\n*Highest rate with p99 ≤ X*: the highest offered rate of the open-loop runs at which p99 stayed within X with no errors and nothing left unsent (`<{lowest}` when even the lowest missed).\n\n| contender | saturation RPS (32 connections, closed loop) | ×nginx | p99 at saturation ms | highest rate with p99 ≤ 1 / 5 / 10 ms | CPU µs per request at 1000 RPS | RSS idle MiB | RSS peak MiB |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        lowest = rates.first().copied().unwrap_or(0.0)
    );
    let nginx_rps = nginx.map_or(f64::NAN, |n| f(&n["saturation"]["rps"]));
    for c in &contenders {
        let within = |ms: f64| {
            c["open_loop"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|o| {
                    f(&o["p99_ms"]) <= ms
                        && o["errors"].as_u64() == Some(0)
                        && o["not_sent"].as_u64() == Some(0)
                })
                .map(|o| f(&o["rate"]))
                .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))))
                .map_or_else(
                    || format!("<{:.0}", rates.first().copied().unwrap_or(0.0)),
                    |r| format!("{r:.0}"),
                )
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} | {:.2} | {} / {} / {} | {:.0} | {:.1} | {:.1} |",
            c["name"].as_str().unwrap_or("?"),
            f(&c["saturation"]["rps"]),
            f(&c["saturation"]["rps"]) / nginx_rps,
            f(&c["saturation"]["latency"]["p99_ms"]),
            within(1.0),
            within(5.0),
            within(10.0),
            f(&c["cpu_us_per_request_at_1000"]),
            f(&c["rss_idle_mib"]),
            f(&c["rss_peak_mib"]),
        );
    }
    let _ = writeln!(
        md,
        "\nFor `direct` the CPU and memory are the upstream's own; for the others, the proxy's alone (the upstream is the same for all).\n\n## Streams (SSE: 20 events, 10 ms apart)\n\n| contender | streams | failed | TTFT p50 ms | TTFT p99 ms | added TTFT p50 ms | inter-chunk gap p50 ms | gap p99 ms |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for c in &contenders {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.3} | {:.3} | {:+.3} | {:.3} | {:.3} |",
            c["name"].as_str().unwrap_or("?"),
            c["sse"]["requests"],
            c["sse"]["errors"],
            f(&c["sse"]["ttft"]["p50_ms"]),
            f(&c["sse"]["ttft"]["p99_ms"]),
            f(&c["sse"]["ttft"]["p50_ms"]) - f(&direct["sse"]["ttft"]["p50_ms"]),
            f(&c["sse"]["gap"]["p50_ms"]),
            f(&c["sse"]["gap"]["p99_ms"]),
        );
    }
    let _ = writeln!(
        md,
        "\n## Latency vs offered load\n\n![p50 and p99 latency per contender and rate](bench/latency.svg)\n"
    );
    let _ = writeln!(md, "{}", extra::variants_section(r));
    let _ = writeln!(md, "{}", extra::unpinned_section(r));
    let _ = writeln!(md, "{}", transparent::section(&r["transparent"]));
    let _ = writeln!(md, "{}", goals(&contenders, &rates, &r["transparent"]));
    let _ = writeln!(md, "{}", profile_section(&r["profile"]));
    let _ = writeln!(
        md,
        "{}",
        extra::perf_section(
            "## Profile: where the policy gateway's CPU goes (perf)",
            &r["perf"]
        )
    );
    let _ = writeln!(md, "{}", extra::micro_section(&r["micro"]));
    // A contender that completed nothing in time has no latency: a dash,
    // never a number.
    md = md.replace("+NaN", "—").replace("NaN", "—");
    let _ = writeln!(
        md,
        "## Reproduce\n\n```sh\ncargo xtask bench --quick   # this run: {:.0} s of measuring after the build; 3 rates x (1 s warm-up + 3 s), 2 alternating rounds\ncargo xtask bench           # 4 rates x (1 s + 20 s), 3 alternating rounds, 10 s saturation, 100 streams, 5 s per micro-benchmark\n```\n\nBoth build the release binaries and the criterion benches first (one build; `cargo xtask test` ends with the same build, so after the tests it is already made; from a fresh clone that build took 10 min 38 s here, and a bench run straight after cloning pays it first), install nginx, strace and perf (Debian), LiteLLM (PyPI, its own venv under `target/`) and the Portkey gateway (npm, its own prefix under `target/`) when missing, and need root for the transparent part (it is reported as not run otherwise). Nothing leaves the machine: every server is reached on loopback (the Portkey gateway has no bind option and listens on all interfaces while it runs).\n\nRaw figures (every run, all percentiles): `bench/results.json`.",
        f(&r["elapsed_s"])
    );
    md
}

fn profile_section(p: &Value) -> String {
    let mut md = String::from(
        "## Profile: where the time goes

",
    );
    let Some(rows) = p["syscalls"].as_array() else {
        md.push_str("Not measured (no strace).\n");
        return md;
    };
    let _ = writeln!(
        md,
        "System calls of `{}` at {} RPS (`strace -c -f`; {}). Most of a request's CPU time here is in the kernel (see CPU per request above; `/proc/<pid>/stat` shows system time several times user time), so this is the profile that explains it.\n\n| syscall | share of syscall time % | µs per call | calls per request |\n| --- | ---: | ---: | ---: |",
        p["contender"].as_str().unwrap_or("?"),
        p["rate"],
        p["note"].as_str().unwrap_or("")
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| `{}` | {:.1} | {:.0} | {:.2} |",
            r["syscall"].as_str().unwrap_or("?"),
            f(&r["share_pct"]),
            f(&r["usecs_per_call"]),
            f(&r["calls_per_request"])
        );
    }
    md.push_str("\nA proxied request costs at least two `writev` and two reads (client and upstream sides) plus `epoll_wait` wake-ups — the same calls nginx makes; `fdatasync` is the audit group commit (at most one per 5 ms in batch mode, off the request path), and `futex` wake-ups are rare (well under one per request).\n");
    md
}

/// The web console's cost on the proxy path: `leash-console` (a client
/// following the live feed) against `leash-policy` (same config, no
/// console client) at 1000 RPS, and at saturation.
fn console_overhead(contenders: &[Value], rates: &[f64]) -> String {
    let find = |name: &str| contenders.iter().find(|c| c["name"] == name);
    let (Some(with), Some(without)) = (find("leash-console"), find("leash-policy")) else {
        return String::new();
    };
    let per_rate: Vec<String> = rates
        .iter()
        .enumerate()
        .map(|(ri, rate)| {
            let (a, b) = (&with["open_loop"][ri], &without["open_loop"][ri]);
            format!(
                "{rate:.0} RPS: p50 {:+.3} ms, p99 {:+.3} ms",
                f(&a["p50_ms"]) - f(&b["p50_ms"]),
                f(&a["p99_ms"]) - f(&b["p99_ms"])
            )
        })
        .collect();
    format!(
        "\nWith the console open (`leash-console`: a client follows the live feed, one event per request) against the same gateway without it (`leash-policy`): {}; saturation {:.0} vs {:.0} RPS ({:+.1} %). The two run alternately in each round on the same cores. For scale: between runs a quick run's p50 moves by a few hundredths of a millisecond, its p99 by a few tenths and its saturation by ±15 % (compare runs in `bench/results.json`).\n",
        per_rate.join("; "),
        f(&with["saturation"]["rps"]),
        f(&without["saturation"]["rps"]),
        (f(&with["saturation"]["rps"]) / f(&without["saturation"]["rps"]).max(1.0) - 1.0) * 100.0,
    )
}

/// Where Leash stands against its goals (added latency at 1000 RPS).
fn goals(contenders: &[Value], rates: &[f64], transparent: &Value) -> String {
    let mut md = String::from(
        "## Against the goals\n\nGoals: added latency P50 ≤ 0.150 ms and P99 ≤ 0.500 ms over a direct call at 1000 RPS; ≥ 8000 RPS passthrough; idle RSS ≤ 20 MiB.\n\n| contender | added p50 ms | added p99 ms | saturation RPS | idle RSS MiB | verdict |\n| --- | ---: | ---: | ---: | ---: | --- |\n",
    );
    let Some(ri) = rates
        .iter()
        .position(|r| (*r - 1000.0).abs() < f64::EPSILON)
    else {
        return md;
    };
    let d = &contenders[0]["open_loop"][ri];
    let mut rows: Vec<(String, f64, f64, f64, f64)> = contenders
        .iter()
        .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("leash")))
        .map(|c| {
            let o = &c["open_loop"][ri];
            (
                c["name"].as_str().unwrap_or("?").to_owned(),
                f(&o["p50_ms"]) - f(&d["p50_ms"]),
                f(&o["p99_ms"]) - f(&d["p99_ms"]),
                f(&c["saturation"]["rps"]),
                f(&c["rss_idle_mib"]),
            )
        })
        .collect();
    // Transparent: added over a direct TLS call to the same upstream.
    if let Some(open) = transparent["open_loop"].as_array()
        && open.len() == 2
    {
        rows.push((
            "leash-transparent (vs direct-tls)".to_owned(),
            f(&open[1]["p50_ms"]) - f(&open[0]["p50_ms"]),
            f(&open[1]["p99_ms"]) - f(&open[0]["p99_ms"]),
            f(&transparent["saturation_keepalive"]["rps"]),
            f(&transparent["rss_idle_mib"]),
        ));
    }
    for (name, a50, a99, rps, rss) in rows {
        let mut misses = Vec::new();
        if a50 > 0.15 {
            misses.push(format!("p50 by {:.3} ms", a50 - 0.15));
        }
        if a99 > 0.5 {
            misses.push(format!("p99 by {:.3} ms", a99 - 0.5));
        }
        if rps < 8000.0 {
            misses.push(format!("throughput by {:.0} RPS", 8000.0 - rps));
        }
        if rss > 20.0 {
            misses.push(format!("idle RSS by {:.1} MiB", rss - 20.0));
        }
        let verdict = if misses.is_empty() && (a50 < 0.0 || a99 < 0.0) {
            "meets all (the difference to direct is within this run's noise)".to_owned()
        } else if misses.is_empty() {
            "meets all".to_owned()
        } else {
            format!("misses: {}", misses.join(", "))
        };
        let _ = writeln!(
            md,
            "| {name} | {a50:+.3} | {a99:+.3} | {rps:.0} | {rss:.1} | {verdict} |"
        );
    }
    md.push_str(&console_overhead(contenders, rates));
    md.push_str("\nWhy, from the profiles below: per request the gateway spends about twice nginx's CPU (hyper's HTTP/1 server and pooled client, allocation, and with the default modules the JSON parse and detector scan of every body), and most of a request's time is the kernel's loopback send/receive path, which both pay; saturation figures of single quick runs vary by ±15 % here (compare runs in `bench/results.json`). The transparent path adds two TLS sessions per request (client side and upstream side). `leash-sync` misses by design: it waits for the disk before answering.\n");
    md
}

/// p50 (solid) and p99 (dashed) latency against offered load, one colour
/// per contender, log-scaled latency.
#[allow(
    clippy::many_single_char_names,
    clippy::cast_precision_loss,
    reason = "plot geometry: x, y, w, h are the clearest names; counts are tiny"
)]
fn plot(r: &Value) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 420.0, 70.0, 190.0, 30.0, 50.0);
    let contenders = r["contenders"].as_array().cloned().unwrap_or_default();
    let rates: Vec<f64> = r["plan"]["rates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect();
    let mut lo = f64::MAX;
    let mut hi = f64::MIN;
    for c in &contenders {
        for o in c["open_loop"].as_array().into_iter().flatten() {
            for k in ["p50_ms", "p99_ms"] {
                let v = f(&o[k]);
                if v.is_finite() && v > 0.0 {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
            }
        }
    }
    if lo >= hi {
        lo = 0.01;
        hi = 10.0;
    }
    let (llo, lhi) = (lo.log10().floor(), hi.log10().ceil());
    let x = |i: usize| left + (w - left - right) * (i as f64) / ((rates.len().max(2) - 1) as f64);
    let y = |v: f64| top + (h - top - bottom) * (1.0 - (v.log10() - llo) / (lhi - llo));
    let colours = [
        "#444444", "#2a9d8f", "#e76f51", "#264653", "#e9c46a", "#8e44ad", "#1f77b4",
    ];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"18\">Latency (ms, log scale) vs offered load: p50 solid, p99 dashed</text>\n"
    );
    let mut decade = llo;
    while decade <= lhi {
        let v = 10f64.powf(decade);
        let yy = y(v);
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v}</text>",
            w - right,
            left - 6.0,
            yy + 4.0
        );
        decade += 1.0;
    }
    for (i, rate) in rates.iter().enumerate() {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{rate:.0}/s</text>",
            x(i),
            h - bottom + 20.0
        );
    }
    for (ci, c) in contenders.iter().enumerate() {
        let colour = colours[ci % colours.len()];
        for (k, dash) in [("p50_ms", ""), ("p99_ms", " stroke-dasharray=\"5,4\"")] {
            let points: Vec<String> = c["open_loop"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(i, o)| {
                    let v = f(&o[k]);
                    (v.is_finite() && v > 0.0).then(|| format!("{:.1},{:.1}", x(i), y(v)))
                })
                .collect();
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
                points.join(" ")
            );
        }
        let ly = top + 18.0 * ci as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{:.1}\">{}</text>",
            w - right + 10.0,
            w - right + 30.0,
            w - right + 36.0,
            ly + 4.0,
            c["name"].as_str().unwrap_or("?")
        );
    }
    svg.push_str("</svg>\n");
    svg
}
