//! Leash transparent (eBPF connect hooks + TLS termination) against a
//! direct TLS call to the same TLS upstream: keep-alive latency at 1000
//! RPS, new connections per second (a full TLS handshake each, twice for
//! Leash: client side and upstream side), certificate cache cold vs warm,
//! and the kernel programs' own run time (`kernel.bpf_stats_enabled`).
//!
//! Needs root (the agent attaches cgroup programs). The clients run in a
//! child cgroup made for the run; the fake provider is a loopback address.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{
    LOADGEN_CPU, Plan, Proc, SERVER_CPU, bench_tool_in, cpu_seconds, f, free_port, median, ms,
    pinned, status_mib, wait_addr,
};

/// The fake provider's address (loopback; not one the tests use).
const UPSTREAM_IP: &str = "127.10.1.1";
const URL: &str = "https://api.openai.com/v1/chat/completions";
/// Host names for the cold-cache run: each is minted on first use.
const COLD_NAMES: usize = 64;

/// The cgroup v2 mount point, from `/proc/self/mountinfo`.
fn cgroup2_root() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup v2 hierarchy is mounted")
}

/// A cgroup made for the run, removed at the end.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..40 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `kernel.bpf_stats_enabled` on for the run, restored after.
struct BpfStats(Option<String>);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> Self {
        let old = std::fs::read_to_string(Self::PATH).ok();
        let _ = std::fs::write(Self::PATH, "1");
        Self(old)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = std::fs::write(Self::PATH, old.trim());
        }
    }
}

/// Run time of the BPF programs a process holds, from its fdinfo.
fn bpf_programs(pid: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let (Some(kind), Some(ns), Some(cnt)) = (
            field("prog_type:"),
            field("run_time_ns:"),
            field("run_cnt:"),
        ) else {
            continue;
        };
        let name = match kind.as_str() {
            "8" => "cgroup_skb (DNS answers)",
            "13" => "sock_ops (connect callback)",
            "18" => "cgroup_sock_addr (connect4/6, getpeername4/6)",
            _ => "other",
        };
        let ns: f64 = ns.parse().unwrap_or(0.0);
        let cnt: f64 = cnt.parse().unwrap_or(0.0);
        out.push(json!({
            "program_type": kind, "kind": name, "id": field("prog_id:"),
            "runs": cnt, "run_time_ns": ns,
            "ns_per_run": if cnt > 0.0 { ns / cnt } else { f64::NAN },
        }));
    }
    out
}

/// One way of calling the upstream: its name, the cgroup its client runs
/// in (none: outside interception) and its client flags.
type Side<'a> = (&'a str, Option<&'a Path>, &'a Vec<(&'a str, String)>);

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The TLS upstream on `UPSTREAM_IP:443` with a leaf from its own "public"
/// CA: the process, the CA file, the address.
fn start_upstream(tool: &Path, dir: &Path) -> Result<(Proc, PathBuf, std::net::SocketAddr)> {
    let public_ca = dir.join("public-ca.pem");
    let upstream_addr: std::net::SocketAddr = format!("{UPSTREAM_IP}:443").parse()?;
    let upstream = Proc::spawn(
        pinned(SERVER_CPU, tool)
            .args(["upstream", "--listen", &upstream_addr.to_string()])
            .args([
                "--size",
                "1024",
                "--tls-names",
                "api.openai.com,*.bench.test",
            ])
            .arg("--tls-ca-out")
            .arg(&public_ca),
        &dir.join("upstream-tls.log"),
    )?;
    wait_addr(upstream_addr, "TLS upstream")?;
    Ok((upstream, public_ca, upstream_addr))
}

/// `leash run` with `config` (on the server CPU), once it intercepts.
fn start_agent(leash: &Path, config: &Path, dir: &Path, tag: &str) -> Result<Proc> {
    let admin = free_port()?;
    let log = dir.join(format!("leash-{tag}.log"));
    let agent = Proc::spawn(
        pinned(SERVER_CPU, leash)
            .args(["--log-level", "info", "run", "--config"])
            .arg(config)
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .arg("--audit-dir")
            .arg(dir.join(format!("audit-{tag}"))),
        &log,
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("intercepting")
    {
        if Instant::now() > deadline {
            bail!(
                "leash run did not start intercepting in 30 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The first connections mint and pool; let start-up settle.
    std::thread::sleep(Duration::from_millis(500));
    Ok(agent)
}

/// The transparent path of two builds in one run (`cargo xtask
/// bench-compare`): each round starts `base`, then `current`, on the same
/// cgroup and upstream, and measures keep-alive latency at 1000 RPS for
/// `seconds`; the agents never run at the same time.
pub(super) fn compare(pair: &super::micro::Pair<'_>) -> Result<Value> {
    let super::micro::Pair {
        base,
        current,
        tool,
        dir,
        rounds,
        seconds,
    } = *pair;
    if !is_root() {
        return Ok(json!({"not_run": "needs root: the agent attaches cgroup eBPF programs"}));
    }
    let cg = Cgroup(cgroup2_root()?.join(format!("leash-compare-{}", std::process::id())));
    let _ = std::fs::remove_dir(&cg.0);
    std::fs::create_dir(&cg.0).with_context(|| format!("creating {}", cg.0.display()))?;
    let (_upstream, public_ca, upstream_addr) = start_upstream(tool, dir)?;
    let builds = [("base", base), ("current", current)];
    let mut configs = Vec::new();
    for (tag, _) in builds {
        let org = dir.join(format!("org-ca-{tag}"));
        let config = dir.join(format!("leash-{tag}.yaml"));
        std::fs::write(
            &config,
            format!(
                "ca: {{ dir: \"{}\" }}\nupstream_tls: {{ extra_roots: [\"{}\"] }}\npipeline: {{ modules: [] }}\nintercept:\n  cgroup: \"{}\"\n  resolve: false\n  proxy_port: {}\n  hosts:\n    - {{ name: api.openai.com, addresses: [\"{UPSTREAM_IP}\"] }}\n",
                org.display(),
                public_ca.display(),
                cg.0.display(),
                free_port()?
            ),
        )?;
        configs.push((config, org.join("ca.pem")));
    }
    let mut runs: [Vec<Value>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (i, (tag, leash)) in builds.iter().enumerate() {
            eprintln!("bench-compare: transparent round {} {tag}", round + 1);
            let agent = start_agent(leash, &configs[i].0, dir, &format!("{tag}-{round}"))?;
            runs[i].push(bench_tool_in(
                Some(&cg.0),
                LOADGEN_CPU,
                tool,
                "load",
                URL,
                &[
                    ("--ca", configs[i].1.display().to_string()),
                    ("--connect", upstream_addr.to_string()),
                    ("--rate", "1000".to_owned()),
                    ("--seconds", seconds.to_string()),
                ],
            )?);
            drop(agent);
        }
    }
    Ok(json!({"rate": 1000, "seconds": seconds, "base_runs": runs[0], "current_runs": runs[1]}))
}

#[allow(
    clippy::too_many_lines,
    reason = "one run top to bottom: start, measure, stop"
)]
pub fn run(leash: &Path, tool: &Path, dir: &Path, plan: &Plan) -> Result<Value> {
    if !is_root() {
        return Ok(json!({"not_run": "needs root: the agent attaches cgroup eBPF programs"}));
    }
    let cg = Cgroup(cgroup2_root()?.join(format!("leash-bench-{}", std::process::id())));
    let _ = std::fs::remove_dir(&cg.0);
    std::fs::create_dir(&cg.0).with_context(|| format!("creating {}", cg.0.display()))?;

    let (upstream, public_ca, upstream_addr) = start_upstream(tool, dir)?;

    let cold: Vec<String> = (0..COLD_NAMES)
        .map(|i| format!("c{i}.bench.test"))
        .collect();
    let org = dir.join("org-ca");
    let mut config = format!(
        "ca: {{ dir: \"{}\" }}\nupstream_tls: {{ extra_roots: [\"{}\"] }}\npipeline: {{ modules: [] }}\nintercept:\n  cgroup: \"{}\"\n  resolve: false\n  proxy_port: {}\n  hosts:\n    - {{ name: api.openai.com, addresses: [\"{UPSTREAM_IP}\"] }}\n",
        org.display(),
        public_ca.display(),
        cg.0.display(),
        free_port()?
    );
    for n in &cold {
        let _ = writeln!(
            config,
            "    - {{ name: {n}, kind: openai, addresses: [\"{UPSTREAM_IP}\"] }}"
        );
    }
    let config_path = dir.join("leash-transparent.yaml");
    std::fs::write(&config_path, config)?;
    let stats = BpfStats::enable();
    let agent = start_agent(leash, &config_path, dir, "transparent")?;
    let idle_rss = status_mib(agent.pid(), "VmRSS:");
    let org_ca = org.join("ca.pem");
    let connect = ("--connect", upstream_addr.to_string());
    let direct_flags = vec![("--ca", public_ca.display().to_string()), connect.clone()];
    let leash_flags = vec![("--ca", org_ca.display().to_string()), connect];
    // (name, cgroup, client flags): direct runs outside the cgroup.
    let sides: [Side<'_>; 2] = [
        ("direct-tls", None, &direct_flags),
        ("leash-transparent", Some(&cg.0), &leash_flags),
    ];
    let measure = |side: &Side<'_>, mode: &str, extra: &[(&str, String)]| -> Result<Value> {
        let mut flags = side.2.clone();
        flags.extend(extra.iter().cloned());
        bench_tool_in(side.1, LOADGEN_CPU, tool, mode, URL, &flags)
    };

    // The cold run first, while nothing is minted yet: one request per new
    // connection per name; the second pass finds every name cached.
    eprintln!("bench: transparent cert cache cold/warm");
    let names = ("--names", cold.join(","));
    let handshake_leash = measure(&sides[1], "handshake", std::slice::from_ref(&names))?;
    let handshake_direct = measure(&sides[0], "handshake", &[names])?;

    let mut open: [Vec<Value>; 2] = [Vec::new(), Vec::new()];
    let mut cpu_us = Vec::new();
    for round in 0..plan.rounds {
        for (i, side) in sides.iter().enumerate() {
            eprintln!("bench: transparent round {} {}", round + 1, side.0);
            let before = cpu_seconds(agent.pid());
            open[i].push(measure(
                side,
                "load",
                &[
                    ("--rate", "1000".to_owned()),
                    ("--seconds", plan.seconds.to_string()),
                ],
            )?);
            if i == 1 {
                cpu_us.push(
                    (cpu_seconds(agent.pid()) - before) * 1e6 / (1000.0 * (plan.seconds + 1.0)),
                );
            }
        }
    }
    // Closed loop, 8 clients, a new connection per request.
    let new_connections = |seconds: f64| {
        [
            ("--seconds", seconds.to_string()),
            ("--connections", "8".to_owned()),
            ("--new-connection", String::new()),
        ]
    };
    let mut new_conns = Vec::new();
    for side in &sides {
        eprintln!("bench: transparent new connections {}", side.0);
        new_conns.push(measure(
            side,
            "saturate",
            &new_connections(plan.saturate_seconds),
        )?);
    }
    // The agent's CPU on new connections, sampled by perf in a run of its
    // own after the measured ones (perf's sampling costs the agent CPU, so
    // the rates above are taken without it).
    eprintln!("bench: transparent new connections leash-transparent under perf");
    let perf_data = dir.join("perf-transparent-new.data");
    let perf = super::extra::perf_start(agent.pid(), &perf_data)?;
    let under_perf = measure(
        &sides[1],
        "saturate",
        &new_connections(plan.saturate_seconds.max(3.0)),
    );
    let perf_new = perf
        .map(|p| super::extra::perf_stop(p, &perf_data))
        .transpose()?;
    let under_perf = under_perf?;
    let perf_new = perf_new.map(|mut s| {
        s["contender"] = json!("leash-transparent (agent)");
        s["load"] =
            json!("new TLS connections, closed loop, 8 clients, one request per connection");
        s["rps_under_perf"] = under_perf["rps"].clone();
        s
    });
    // Keep-alive saturation, with the agent's CPU sampled by perf.
    let perf_data = dir.join("perf-transparent.data");
    let perf = super::extra::perf_start(agent.pid(), &perf_data)?;
    let saturation_leash = measure(
        &sides[1],
        "saturate",
        &[
            ("--seconds", plan.saturate_seconds.max(3.0).to_string()),
            ("--connections", "32".to_owned()),
        ],
    );
    let perf = perf
        .map(|p| super::extra::perf_stop(p, &perf_data))
        .transpose()?
        .map(|mut s| {
            s["contender"] = json!("leash-transparent (agent)");
            s["load"] = json!("keep-alive TLS, closed loop, 32 connections");
            s
        });
    let saturation_leash = saturation_leash?;
    let programs = bpf_programs(agent.pid());
    let peak_rss = status_mib(agent.pid(), "VmHWM:");
    drop(agent);
    drop(stats);
    drop(upstream);

    let pct = |runs: &[Value], k: &str| median(runs.iter().map(|r| f(&r["latency"][k])).collect());
    Ok(json!({
        "what": "leash run with the eBPF hooks on a child cgroup; pipeline modules off (the gateway tables show their cost); audit on (batch). The client (leash-bench, rustls, HTTP/1.1) runs in the cgroup and dials api.openai.com's fake address, unmodified; direct-tls dials the same TLS upstream from outside the cgroup",
        "rate": 1000,
        "open_loop": sides.iter().enumerate().map(|(i, side)| json!({
            "name": side.0,
            "p50_ms": pct(&open[i], "p50_ms"), "p95_ms": pct(&open[i], "p95_ms"),
            "p99_ms": pct(&open[i], "p99_ms"),
            "not_sent": open[i].iter().map(|r| r["not_sent"].as_u64().unwrap_or(0)).sum::<u64>(),
            "errors": open[i].iter().map(|r| r["errors"].as_u64().unwrap_or(0)).sum::<u64>(),
            "runs": open[i],
        })).collect::<Vec<_>>(),
        "new_connections": sides.iter().zip(&new_conns).map(|(side, r)| json!({"name": side.0, "result": r})).collect::<Vec<_>>(),
        "saturation_keepalive": saturation_leash,
        "cert_cache": {"names": COLD_NAMES, "leash": handshake_leash, "direct": handshake_direct},
        "bpf_programs": programs,
        "perf_new_connections": perf_new,
        "perf": perf.map(|mut p| {
            p["rps_under_perf"] = saturation_leash["rps"].clone();
            p
        }),
        "cpu_us_per_request_at_1000": median(cpu_us),
        "rss_idle_mib": idle_rss,
        "rss_peak_mib": peak_rss,
    }))
}

#[allow(
    clippy::too_many_lines,
    reason = "one table after another, in the order the section reads"
)]
pub fn section(t: &Value) -> String {
    let mut md = String::from("## Leash transparent (eBPF + TLS termination)\n\n");
    if let Some(why) = t["not_run"].as_str().or(t["error"].as_str()) {
        let _ = writeln!(md, "**Not run**: {why}\n");
        return md;
    }
    let _ = writeln!(
        md,
        "{}. Every request of the keep-alive run reuses its TLS connection; Leash terminates TLS with a leaf from the organisation CA and opens its own verified TLS connection (pooled) to the upstream.\n\n### Keep-alive, 1000 requests/s (pinned)\n\n| path | p50 ms | p95 ms | p99 ms | added p50 ms | added p99 ms | errors | not sent in time |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        t["what"].as_str().unwrap_or("")
    );
    let open = t["open_loop"].as_array().cloned().unwrap_or_default();
    let d = open.first().cloned().unwrap_or(Value::Null);
    for o in &open {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:+.3} | {:+.3} | {} | {} |",
            o["name"].as_str().unwrap_or("?"),
            ms(&o["p50_ms"]),
            ms(&o["p95_ms"]),
            ms(&o["p99_ms"]),
            f(&o["p50_ms"]) - f(&d["p50_ms"]),
            f(&o["p99_ms"]) - f(&d["p99_ms"]),
            o["errors"],
            o["not_sent"],
        );
    }
    let _ = writeln!(
        md,
        "\nAgent: CPU {:.0} µs per request at 1000 RPS; RSS idle {:.1} MiB, peak {:.1} MiB; keep-alive saturation (32 connections) {:.0} RPS.\n\n### New connections (closed loop, 8 clients, a new TCP + full TLS 1.3 handshake per request, no resumption)\n\n| path | connections (requests) per s | p50 ms | p99 ms |\n| --- | ---: | ---: | ---: |",
        f(&t["cpu_us_per_request_at_1000"]),
        f(&t["rss_idle_mib"]),
        f(&t["rss_peak_mib"]),
        f(&t["saturation_keepalive"]["rps"]),
    );
    for n in t["new_connections"].as_array().into_iter().flatten() {
        let r = &n["result"];
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {} |",
            n["name"].as_str().unwrap_or("?"),
            f(&r["rps"]),
            ms(&r["latency"]["p50_ms"]),
            ms(&r["latency"]["p99_ms"]),
        );
    }
    let c = &t["cert_cache"];
    let round = |side: &str, i: usize, k: &str| ms(&c[side]["rounds"][i]["latency"][k]);
    let _ = writeln!(
        md,
        "\n### Certificate cache: cold vs warm\n\n{} host names, one request per new connection each, one after another, on a fresh agent: the first pass mints a leaf per name (cache miss), the second finds them cached (hit). `direct-tls` does the same against the upstream for reference.\n\n| path | pass | p50 ms | p99 ms | errors |\n| --- | --- | ---: | ---: | ---: |\n| leash-transparent | cold (mint) | {} | {} | {} |\n| leash-transparent | warm (cached) | {} | {} | {} |\n| direct-tls | first | {} | {} | {} |\n| direct-tls | second | {} | {} | {} |\n\nThe mint itself, in isolation, is `cert_mint_miss` below (micro-benchmarks); a hit is `cert_cache_hit`.",
        c["names"],
        round("leash", 0, "p50_ms"),
        round("leash", 0, "p99_ms"),
        c["leash"]["rounds"][0]["errors"],
        round("leash", 1, "p50_ms"),
        round("leash", 1, "p99_ms"),
        c["leash"]["rounds"][1]["errors"],
        round("direct", 0, "p50_ms"),
        round("direct", 0, "p99_ms"),
        c["direct"]["rounds"][0]["errors"],
        round("direct", 1, "p50_ms"),
        round("direct", 1, "p99_ms"),
        c["direct"]["rounds"][1]["errors"],
    );
    let _ = writeln!(
        md,
        "\n### Kernel hooks (`kernel.bpf_stats_enabled=1` during the run)\n\nRun time of each program the agent attached, over every run above (the connect hooks run on every `connect()` in the cgroup, intercepted or not).\n\n| program | id | runs | ns per run |\n| --- | --- | ---: | ---: |"
    );
    let programs = t["bpf_programs"].as_array().cloned().unwrap_or_default();
    for p in &programs {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} |",
            p["kind"].as_str().unwrap_or("?"),
            p["id"].as_str().unwrap_or("?"),
            f(&p["runs"]),
            f(&p["ns_per_run"]),
        );
    }
    md.push('\n');
    md.push_str(&super::extra::perf_section(
        "### Where the agent's CPU goes (perf)",
        &t["perf"],
    ));
    md.push_str(&crypto_share(
        &t["perf"],
        "Besides the gateway's work, every request here is decrypted from the client and encrypted again toward the provider (and back)",
    ));
    md.push('\n');
    md.push_str(&super::extra::perf_section(
        "### Where the agent's CPU goes on new connections (perf)",
        &t["perf_new_connections"],
    ));
    md.push_str(&crypto_share(
        &t["perf_new_connections"],
        "Each connection here is a full TLS 1.3 handshake with the client (key exchange, the leaf's signature); the request goes on over a pooled connection toward the upstream",
    ));
    md
}

/// What a perf summary's listed symbols give to cryptography (`ring`'s
/// primitives and `rustls`), computed from its rows; empty without a
/// profile.
fn crypto_share(p: &Value, lead: &str) -> String {
    let Some(rows) = p["top"].as_array() else {
        return String::new();
    };
    // ring's assembly and C symbols: `ring_core_*`, and the field and
    // curve helpers its P-256 and X25519 code calls (`fe_*`, `fe4_*`,
    // `__ecp_nistz256_*`).
    let is_crypto = |s: &str| {
        ["ring_core", "fe_", "fe4_", "__ecp_nistz256"]
            .iter()
            .any(|k| s.starts_with(k))
            || ["ring::", "rustls::", "aws_lc"]
                .iter()
                .any(|k| s.contains(k))
    };
    let crypto = super::extra::user_symbols(rows, is_crypto);
    let kernel = f(&p["kernel_pct"]);
    let Some(first) = crypto.first() else {
        return format!(
            "\n{lead}. No symbol of `ring` or `rustls` reaches the 0.7 % cut; the kernel's share is {kernel:.1} %.\n"
        );
    };
    let sum: f64 = crypto.iter().map(|r| f(&r["pct"])).sum();
    format!(
        "\n{lead}. The listed symbols of `ring` and `rustls` add up to {sum:.1} % of samples ({} symbols, the largest `{}` at {:.1} %); the kernel's share is {kernel:.1} %.\n",
        crypto.len(),
        first["symbol"].as_str().unwrap_or("?").replace('|', "\\|"),
        f(&first["pct"]),
    )
}
