//! The benchmark run: the plan, every contender measured in turn, the
//! release build, the machine it ran on.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{
    Contender, EXAMPLE_POLICY, LOADGEN_CPU, Plan, SERVER_CPU, bench_tool, extra, plot, report,
    start_leash, start_leash_console, start_litellm, start_nginx, start_portkey, status_mib,
    transparent,
};
use crate::{cargo, ensure_debian_packages, root, target_dir};

/// A latency cell: milliseconds to the microsecond, or a dash when there is
/// no figure.
pub(super) fn ms(v: &Value) -> String {
    let x = f(v);
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "—".to_owned()
    }
}

pub(super) fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Where 1000 RPS is among `rates` (the rate the goals are set at).
pub(super) fn at_1000(rates: &[f64]) -> Option<usize> {
    rates
        .iter()
        .position(|r| (*r - 1000.0).abs() < f64::EPSILON)
}

/// The open-loop rates of a run's plan, in order.
pub(super) fn plan_rates(r: &Value) -> Vec<f64> {
    r["plan"]["rates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect()
}

/// Median of a list (NaN when empty).
pub(super) fn median(mut xs: Vec<f64>) -> f64 {
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
pub fn bench(quick: bool, against: Option<&str>) -> Result<()> {
    ensure_debian_packages(&[("nginx", "nginx"), ("taskset", "util-linux")])?;
    crate::setup()?;
    // The earlier build first: it shares the target directory, and the
    // current build below must be the last to write target/release.
    let base = against
        .map(|a| {
            let rev = super::micro::short_rev(a)?;
            anyhow::Ok((rev.clone(), super::micro::base_binary(&rev)?))
        })
        .transpose()?;
    // One build for the binaries and the criterion benches (same features,
    // so the agent library is compiled once); the bench executables are run
    // directly later, not through a second `cargo bench` with other
    // features.
    let benches = build_release()?;
    // The binary that ships (static, musl; its own target directory).
    let static_leash = crate::dist::build()?.binary;
    let release = target_dir().join("release");
    let leash = release.join("leash");
    let tool = release.join("leash-bench");
    let dir = target_dir().join("bench-run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let plan = Plan::new(quick);
    let started = Instant::now();
    let cpu_before = super::proc::cpu_times();

    let (upstream, up_port) = super::lean_upstream(
        &tool,
        &dir,
        "upstream.log",
        &["--size", "1024", "--chunks", "20", "--gap-ms", "10"],
    )?;

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
    contenders.push(start_leash(
        "leash-static",
        "as leash-policy, the binary that ships (`cargo xtask dist`: static, musl, mimalloc)",
        &static_leash,
        &dir,
        up_port,
        EXAMPLE_POLICY,
    )?);
    if let Some((rev, bin)) = &base {
        // A `&'static str` name: one contender per run, named once.
        let name: &'static str = Box::leak(format!("leash-policy@{rev}").into_boxed_str());
        contenders.push(start_leash(
            name,
            &format!(
                "as leash-policy, built from commit {rev} (the comparison with an earlier main)"
            ),
            bin,
            &dir,
            up_port,
            EXAMPLE_POLICY,
        )?);
    }
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
    // CPU µs per request at 1000 RPS, per round: (user, system).
    let mut cpu_split_us: Vec<Vec<(f64, f64)>> = vec![Vec::new(); contenders.len()];
    for round in 0..plan.rounds {
        // A contender that left most requests unsent at a rate is not
        // driven at higher ones in this round (it would only queue more).
        let mut behind = vec![false; contenders.len()];
        for (ri, rate) in plan.rates.iter().enumerate() {
            for ci in round_order(round, contenders.len()) {
                let c = &contenders[ci];
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
                let before = super::proc::cpu_split(c.pid);
                let r = c.measure(
                    &tool,
                    "load",
                    &[
                        ("--rate", rate.to_string()),
                        ("--seconds", plan.seconds.to_string()),
                    ],
                )?;
                let after = super::proc::cpu_split(c.pid);
                if (*rate - 1000.0).abs() < f64::EPSILON {
                    // Includes the 1 s warm-up the tool sends first.
                    let per_request = |s: f64| s * 1e6 / (rate * (plan.seconds + 1.0));
                    let (user, system) = (
                        per_request(after.0 - before.0),
                        per_request(after.1 - before.1),
                    );
                    cpu_split_us[ci].push((user, system));
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
    // Many streams at once; then many idle connections on a gateway of
    // their own.
    let streams = super::scale::streams(&tool, &contenders);
    let idle = super::scale::idle(&leash, &tool, &dir, up_port).unwrap_or_else(|e| {
        eprintln!("bench: idle connections run failed: {e:#}");
        json!({"error": format!("{e:#}")})
    });
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
    // What the unified API's translation adds (its own section, kept in
    // bench/translate.json).
    match super::translate::measure(&leash, &tool, quick) {
        Ok(r) => super::translate::save(&r)?,
        Err(e) => eprintln!("bench: translation run failed: {e:#}"),
    }
    // What OTLP export costs (tracing on vs off, collector down).
    match super::telemetry::measure(&leash, &tool, quick) {
        Ok(r) => super::telemetry::save(&r)?,
        Err(e) => eprintln!("bench: telemetry run failed: {e:#}"),
    }

    // Per contender and rate: the median over rounds of each percentile.
    let pct = |ci: usize, ri: usize, key: &str, field: &str| -> f64 {
        median(open[ci][ri].iter().map(|r| f(&r[key][field])).collect())
    };
    let cpu_us = |ci: usize| -> Vec<f64> { cpu_split_us[ci].iter().map(|(u, s)| u + s).collect() };
    let results = json!({
        "date": crate::today(),
        "quick": quick,
        "against": base.as_ref().map(|(rev, _)| rev),
        "machine": machine(),
        "steal": super::proc::steal_since(&cpu_before),
        "placement": format!("load generator on CPU {LOADGEN_CPU}; contender and upstream on CPU {SERVER_CPU} (taskset)"),
        "plan": {"rates": plan.rates, "seconds": plan.seconds, "rounds": plan.rounds, "order": ROUND_ORDER},
        "upstream": "leash-bench upstream: 1 KiB chat completion, no delay; streams: 20 events 10 ms apart",
        "contenders": contenders.iter().enumerate().map(|(ci, c)| json!({
            "name": c.name, "what": c.what,
            "rss_idle_mib": idle_rss[ci], "rss_peak_mib": load_rss[ci],
            "cpu_us_per_request_at_1000": median(cpu_us(ci)),
            "cpu_us_rounds": cpu_us(ci),
            "cpu_user_us_rounds": cpu_split_us[ci].iter().map(|p| p.0).collect::<Vec<_>>(),
            "cpu_system_us_rounds": cpu_split_us[ci].iter().map(|p| p.1).collect::<Vec<_>>(),
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
        "streams": streams,
        "idle_connections": idle,
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
    super::other_sections()?;
    eprintln!(
        "bench: wrote BENCHMARKS.md, bench/results.json, bench/latency.svg in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What contenders' own logs say went wrong during the run (failed
/// requests are counted in the tables; this says why).
pub(super) fn contender_notes(dir: &Path) -> Vec<String> {
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
    super::other_sections()?;
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
    let out = cargo_build(&mut cmd, "the release build")?;
    Ok(executables(&out, "bench", true))
}

/// Runs a `cargo build --message-format=json…` (diagnostics to stderr);
/// its JSON messages, or an error naming `what` if the build failed.
pub(super) fn cargo_build(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    eprintln!("xtask: {cmd:?}");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo build for {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// The executables of targets of `kind` (`bench`, `bin`) that cargo
/// reported building (`test`: the test-harness build, as benches are):
/// (target name, path).
pub(super) fn executables(stdout: &[u8], kind: &str, test: bool) -> Vec<(String, PathBuf)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|x| x == kind))
                && m["profile"]["test"] == test
        })
        .filter_map(|m| {
            Some((
                m["target"]["name"].as_str()?.to_owned(),
                PathBuf::from(m["executable"].as_str()?),
            ))
        })
        .collect()
}

/// `strace -c -f` on a contender during an open-loop run at 1000 RPS: the
/// system calls per request, most expensive first. `None` without strace.
pub(super) fn syscall_profile(tool: &Path, c: &Contender, seconds: f64) -> Result<Option<Value>> {
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

pub(super) fn machine() -> Value {
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

/// How the contenders take turns within the rounds, as the report says it.
pub(super) const ROUND_ORDER: &str = "in reverse order every other round";

/// The contenders' order in `round`: as listed, and reversed every other
/// round, so no contender always runs right after the same one (a
/// disturbance one contender leaves behind, or a stretch of steal, then
/// falls on different contenders).
pub(super) fn round_order(round: usize, contenders: usize) -> Vec<usize> {
    if round % 2 == 1 {
        (0..contenders).rev().collect()
    } else {
        (0..contenders).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{executables, round_order};

    #[test]
    fn every_other_round_runs_the_contenders_in_reverse() {
        assert_eq!(round_order(0, 3), [0, 1, 2]);
        assert_eq!(round_order(1, 3), [2, 1, 0]);
        assert_eq!(round_order(2, 3), [0, 1, 2]);
    }

    /// What cargo reports for `build --release --benches --bin leash`: the
    /// bench harnesses, the binary, and the binary's own test harness.
    #[test]
    fn executables_by_kind_and_harness() {
        let out = br#"{"reason":"compiler-artifact","target":{"name":"policy","kind":["bench"]},"profile":{"test":true},"executable":"/t/release/deps/policy-1"}
{"reason":"compiler-artifact","target":{"name":"leash","kind":["bin"]},"profile":{"test":true},"executable":"/t/release/deps/leash-2"}
{"reason":"compiler-artifact","target":{"name":"leash","kind":["bin"]},"profile":{"test":false},"executable":"/t/release/leash"}
{"reason":"compiler-artifact","target":{"name":"leash_agent","kind":["lib"]},"profile":{"test":false},"executable":null}
not json"#;
        let names = |kind, test| {
            executables(out, kind, test)
                .into_iter()
                .map(|(n, p)| format!("{n} {}", p.display()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names("bench", true), ["policy /t/release/deps/policy-1"]);
        assert_eq!(names("bin", false), ["leash /t/release/leash"]);
    }
}
