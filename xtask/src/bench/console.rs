//! `cargo xtask bench-console [--quick]`: the web console against a large
//! audit trail (1,000,000 records; 200,000 with `--quick`), measured in one
//! run: how fast each console API call answers while four clients load its
//! pages back to back; what that does to LLM traffic at 1,000 req/s
//! against the same gateway with the console idle (rounds alternate, so
//! the comparison is within the run); the gateway's memory throughout; and
//! `leash audit query --sum-by team` over the whole trail. Writes
//! `bench/console.json` and its section of BENCHMARKS.md.

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    LOADGEN_CPU, Proc, SERVER_CPU, bench_tool, build_release, free_port, pinned, status_mib,
    wait_port,
};
use crate::{ensure_debian_packages, root, target_dir};

const BEGIN: &str =
    "<!-- console-bench:begin (written by `cargo xtask bench-console`; do not edit) -->";
const END: &str = "<!-- console-bench:end -->";
const RATE: f64 = 1000.0;
/// Goals of issue 28.
const GOAL_P95_MS: f64 = 300.0;
const GOAL_P99_ADDED_MS: f64 = 1.0;
const GOAL_RSS_MIB: f64 = 200.0;
const GOAL_QUERY_MIB: f64 = 100.0;

/// `cmd` run in the idle scheduling class (`chrt --idle 0`): the page
/// loaders share the load generator's CPU without delaying it, so what the
/// load generator measures is the gateway.
fn idle(cmd: &Command) -> Command {
    let mut c = Command::new("chrt");
    c.args(["--idle", "0"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    c
}

/// `leash-bench pages`: four clients loading the console's pages back to
/// back for `secs`, in the idle class on the load generator's CPU.
fn page_loader(tool: &Path, admin: u16, secs: f64, token: &Path) -> Command {
    let mut cmd = idle(&pinned(LOADGEN_CPU, tool));
    cmd.args([
        "pages",
        "--admin",
        &format!("127.0.0.1:{admin}"),
        "--clients",
        "4",
    ])
    .args(["--seconds", &secs.to_string(), "--token-file"])
    .arg(token);
    cmd
}

/// Samples a process's resident memory until stopped; the peak seen.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<f64> {
    std::thread::spawn(move || {
        let mut peak = 0.0_f64;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(status_mib(pid, "VmRSS:"));
            std::thread::sleep(Duration::from_millis(100));
        }
        peak
    })
}

fn num(v: &Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_f64()
        .unwrap_or(f64::NAN)
}

/// `leash audit query --sum-by team` over the trail: seconds and the peak
/// resident memory (its `VmHWM`, read every 10 ms until it exits).
fn audit_query(leash: &Path, trail: &Path) -> Result<(f64, f64)> {
    let started = Instant::now();
    let mut child = Command::new(leash)
        .args(["audit", "query", "--sum-by", "team", "--dir"])
        .arg(trail)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("leash audit query")?;
    let mut peak = 0.0_f64;
    loop {
        peak = peak.max(status_mib(child.id(), "VmHWM:"));
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("leash audit query failed: {status}");
            }
            return Ok((started.elapsed().as_secs_f64(), peak));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The upstream and the gateway on the trail: (upstream, gateway, its
/// port, its admin port, seconds until it listened).
fn start(
    tool: &Path,
    leash: &Path,
    dir: &Path,
    trail: &Path,
) -> Result<(Proc, Proc, u16, u16, f64)> {
    let (upstream, up) = super::lean_upstream(tool, dir, "upstream.log", &["--size", "1024"])?;
    let config = dir.join("leash.yaml");
    std::fs::write(
        &config,
        format!("providers:\n  openai: {{ upstream: \"http://127.0.0.1:{up}/v1\" }}\n"),
    )?;
    let (port, admin) = (free_port()?, free_port()?);
    let started = Instant::now();
    let gateway = Proc::spawn(
        super::gateway_args(&mut pinned(SERVER_CPU, leash), &config, port, admin, trail),
        &dir.join("leash.log"),
    )?;
    wait_port(port, "leash")?;
    let ready_s = started.elapsed().as_secs_f64();
    Ok((upstream, gateway, port, admin, ready_s))
}

pub fn bench_console(quick: bool) -> Result<()> {
    ensure_debian_packages(&[("taskset", "util-linux"), ("chrt", "util-linux")])?;
    crate::setup()?;
    build_release()?;
    let release = target_dir().join("release");
    let (leash, tool) = (release.join("leash"), release.join("leash-bench"));
    let dir = target_dir().join("bench-console");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let trail = dir.join("audit");
    let records: u64 = if quick { 200_000 } else { 1_000_000 };
    let (seconds, rounds) = if quick { (5.0, 2) } else { (15.0, 3) };

    eprintln!("xtask: writing a trail of {records} records");
    let out = Command::new(&tool)
        .args(["trail", "--records", &records.to_string(), "--dir"])
        .arg(&trail)
        .output()?;
    if !out.status.success() {
        bail!("leash-bench trail failed");
    }
    let trail_info: Value = serde_json::from_slice(&out.stdout)?;

    let (_upstream, gateway, port, admin, ready_s) = start(&tool, &leash, &dir, &trail)?;
    let stop = Arc::new(AtomicBool::new(false));
    let rss = sample_rss(gateway.pid(), Arc::clone(&stop));
    let url = format!("http://127.0.0.1:{port}/v1/openai/chat/completions");
    let token = trail.join("admin.token");
    let pages = |secs: f64| -> Result<Value> {
        let out = page_loader(&tool, admin, secs, &token).output()?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    // The first page load: the index is built (or read back) first.
    let first = pages(0.0)?;
    let load = |s: f64| {
        bench_tool(
            &tool,
            "load",
            &url,
            &[("--rate", RATE.to_string()), ("--seconds", s.to_string())],
        )
    };
    let mut quiet = Vec::new();
    let mut busy = Vec::new();
    let mut page_runs = Vec::new();
    for _ in 0..rounds {
        quiet.push(load(seconds)?);
        let loader = {
            let tool = tool.clone();
            let token = token.clone();
            std::thread::spawn(move || page_loader(&tool, admin, seconds + 2.0, &token).output())
        };
        std::thread::sleep(Duration::from_millis(500));
        busy.push(load(seconds)?);
        let out = loader
            .join()
            .map_err(|_| anyhow::anyhow!("page loader"))??;
        page_runs.push(serde_json::from_slice::<Value>(&out.stdout)?);
    }
    stop.store(true, Ordering::Relaxed);
    let peak_rss = rss.join().map_err(|_| anyhow::anyhow!("sampler"))?;
    let hwm = status_mib(gateway.pid(), "VmHWM:");
    drop(gateway);
    let (query_s, query_mib) = audit_query(&leash, &trail)?;

    let results = json!({
        "records": records, "trail": trail_info, "ready_s": ready_s, "rate": RATE,
        "seconds": seconds, "rounds": rounds, "first_page": first,
        "quiet": quiet, "busy": busy, "pages": page_runs,
        "peak_rss_mib": peak_rss, "vm_hwm_mib": hwm,
        "audit_query": {"seconds": query_s, "peak_rss_mib": query_mib},
    });
    let out_dir = root().join("bench");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(
        out_dir.join("console.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    render(&results)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

/// Writes the console section of BENCHMARKS.md from `bench/console.json`.
pub fn render(r: &Value) -> Result<()> {
    let col = |key: &str, path: &[&str]| -> Vec<f64> {
        r[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| num(v, path))
            .collect()
    };
    let quiet_p99 = col("quiet", &["latency", "p99_ms"]);
    let busy_p99 = col("busy", &["latency", "p99_ms"]);
    let quiet_p50 = col("quiet", &["latency", "p50_ms"]);
    let busy_p50 = col("busy", &["latency", "p50_ms"]);
    let added = median(busy_p99.clone()) - median(quiet_p99.clone());
    // The spread of the quiet rounds: what the same setup varies by.
    let spread = quiet_p99.iter().copied().fold(f64::NAN, f64::max)
        - quiet_p99.iter().copied().fold(f64::NAN, f64::min);
    let p95 = col("pages", &["calls", "p95_ms"]);
    let worst_p95 = p95.iter().copied().fold(f64::NAN, f64::max);
    let rss = num(r, &["peak_rss_mib"]);
    let query = num(r, &["audit_query", "peak_rss_mib"]);
    let conclusion = if added.abs() <= spread {
        format!(
            "inconclusive: {added:+.3} ms is within the spread of the quiet rounds ({spread:.3} ms)"
        )
    } else {
        format!("{added:+.3} ms (quiet rounds spread {spread:.3} ms)")
    };
    let mut md = format!(
        "{BEGIN}\n## The console on a large trail\n\n`cargo xtask bench-console`: {} records ({:.0} MB in {} segments) written by `leash-bench trail`; the gateway (release) on CPU {SERVER_CPU} with the upstream; LLM load at {RATE:.0} req/s and four clients loading the console's pages (records, spend, violations, interception) back to back on CPU {LOADGEN_CPU}. {} rounds of {} s, console idle and busy alternating.\n\n",
        r["records"],
        num(r, &["trail", "bytes"]) / 1e6,
        r["trail"]["segments"],
        r["rounds"],
        r["seconds"],
    );
    md.push_str("| round | LLM p50 idle / busy (ms) | LLM p99 idle / busy (ms) | console calls | console p50 / p95 / max (ms) | statuses |\n| --- | --- | --- | --- | --- | --- |\n");
    for i in 0..quiet_p99.len() {
        let p = &r["pages"][i];
        let _ = writeln!(
            md,
            "| {} | {:.3} / {:.3} | {:.3} / {:.3} | {} | {:.1} / {:.1} / {:.1} | {} |",
            i + 1,
            quiet_p50[i],
            busy_p50[i],
            quiet_p99[i],
            busy_p99[i],
            p["calls"]["count"],
            num(p, &["calls", "p50_ms"]),
            num(p, &["calls", "p95_ms"]),
            num(p, &["calls", "max_ms"]),
            p["statuses"],
        );
    }
    let _ = write!(
        md,
        "\n| goal (issue 28) | measured | |\n| --- | --- | --- |\n| every console API call within {GOAL_P95_MS:.0} ms (P95) | worst round P95 {worst_p95:.1} ms; the first page, with the index built from the trail, {:.0} ms (max call) | {} |\n| busy console adds ≤ {GOAL_P99_ADDED_MS} ms to LLM p99 | {conclusion} | {} |\n| gateway RSS < {GOAL_RSS_MIB:.0} MB throughout | peak {rss:.0} MiB (sampled every 100 ms; VmHWM {:.0} MiB) | {} |\n| `leash audit query --sum-by team` in < {GOAL_QUERY_MIB:.0} MB | {query:.1} MiB peak, {:.1} s | {} |\n{END}\n",
        num(r, &["first_page", "calls", "max_ms"]),
        verdict(worst_p95 <= GOAL_P95_MS),
        if added.abs() <= spread {
            "inconclusive"
        } else {
            verdict(added <= GOAL_P99_ADDED_MS)
        },
        num(r, &["vm_hwm_mib"]),
        verdict(num(r, &["vm_hwm_mib"]) < GOAL_RSS_MIB),
        num(r, &["audit_query", "seconds"]),
        verdict(query < GOAL_QUERY_MIB),
    );
    super::write_section(BEGIN, END, &md)?;
    eprintln!("xtask: BENCHMARKS.md console section written");
    Ok(())
}
