//! The parts of the bench beyond the main open-loop table: upstream
//! variants (10 KiB answers, a slow upstream), the unpinned placement, a
//! `perf` profile of the policy gateway and the criterion micro-benchmarks.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{Contender, Plan, Proc, bench_tool_on, f, family, ms};
use crate::{ensure_debian_packages, target_dir};

/// Contenders that take 1000 RPS (LiteLLM and the Portkey gateway fall
/// behind far below it: see their saturation figures).
pub(super) fn fast(c: &Contender) -> bool {
    matches!(c.name, "direct" | "nginx" | "leash-bare" | "leash-policy")
}

/// Each fast contender at 1000 RPS with a 10 KiB answer and with an
/// upstream that takes 5 ms (headers the upstream reads; every contender
/// forwards them).
pub fn variants(tool: &Path, contenders: &[Contender], plan: &Plan) -> Result<Value> {
    let mut out = Vec::new();
    for (name, header) in [
        ("10 KiB answer", "x-bench-size: 10240"),
        ("upstream answers after 5 ms", "x-bench-delay-ms: 5"),
    ] {
        let mut rows = Vec::new();
        for c in contenders.iter().filter(|c| fast(c)) {
            eprintln!("bench: variant {name}: {}", c.name);
            let r = c.measure(
                tool,
                "load",
                &[
                    ("--rate", "1000".to_owned()),
                    ("--seconds", plan.seconds.to_string()),
                    ("--header", header.to_owned()),
                ],
            )?;
            rows.push(json!({"contender": c.name, "result": r}));
        }
        out.push(json!({"variant": name, "header": header, "rows": rows}));
    }
    Ok(json!({"rate": 1000, "variants": out}))
}

fn set_affinity(pid: u32, cpus: &str) {
    for p in family(pid) {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &p.to_string()])
            .stdout(Stdio::null())
            .status();
    }
}

/// The fast contenders at 1000 RPS with no pinning at all: the load
/// generator, the contender and the upstream go wherever the scheduler
/// puts them (both CPUs), alternating rounds as in the pinned run.
pub fn unpinned(
    tool: &Path,
    contenders: &[Contender],
    upstream: &Proc,
    plan: &Plan,
) -> Result<Value> {
    let all = "0-1";
    set_affinity(upstream.pid(), all);
    for c in contenders {
        set_affinity(c.pid, all);
    }
    let mut rows: Vec<(String, Vec<Value>)> = contenders
        .iter()
        .filter(|c| fast(c))
        .map(|c| (c.name.to_owned(), Vec::new()))
        .collect();
    let result = (|| -> Result<()> {
        for round in 0..plan.rounds {
            for (c, row) in contenders.iter().filter(|c| fast(c)).zip(&mut rows) {
                eprintln!("bench: unpinned round {} {}", round + 1, c.name);
                let mut flags = c.client.clone();
                flags.push(("--rate", "1000".to_owned()));
                flags.push(("--seconds", plan.seconds.to_string()));
                row.1
                    .push(bench_tool_on(all, tool, "load", &c.url, &flags)?);
            }
        }
        Ok(())
    })();
    set_affinity(upstream.pid(), super::SERVER_CPU);
    for c in contenders {
        set_affinity(c.pid, super::SERVER_CPU);
    }
    result?;
    Ok(json!({
        "rate": 1000,
        "placement": "unpinned: load generator, contender and upstream free to run on both CPUs",
        "rows": rows.into_iter().map(|(name, runs)| {
            let m = |k: &str| super::median(runs.iter().map(|r| f(&r["latency"][k])).collect());
            json!({"contender": name, "p50_ms": m("p50_ms"), "p95_ms": m("p95_ms"), "p99_ms": m("p99_ms"),
                   "not_sent": runs.iter().map(|r| r["not_sent"].as_u64().unwrap_or(0)).sum::<u64>(),
                   "runs": runs})
        }).collect::<Vec<_>>(),
    }))
}

/// `perf record` (cpu-clock samples, no call graphs: release builds have no
/// frame pointers) on a contender while it is saturated; the symbols with
/// the most samples, and the split between kernel and user space. `None`
/// without perf.
pub fn perf_profile(tool: &Path, c: &Contender, dir: &Path, seconds: f64) -> Result<Option<Value>> {
    let data = dir.join(format!("perf-{}.data", c.name));
    let Some(perf) = perf_start(c.pid, &data)? else {
        return Ok(None);
    };
    let r = c.measure(
        tool,
        "saturate",
        &[
            ("--seconds", seconds.to_string()),
            ("--connections", "32".to_owned()),
        ],
    );
    let summary = perf_stop(perf, &data);
    let r = r?;
    let mut summary = summary?;
    summary["contender"] = json!(c.name);
    summary["load"] = json!(format!("closed loop, 32 connections, {seconds} s"));
    summary["rps_under_perf"] = r["rps"].clone();
    Ok(Some(summary))
}

/// `perf record` (cpu-clock samples) on `pid` into `data`; `None` without
/// perf.
pub fn perf_start(pid: u32, data: &Path) -> Result<Option<std::process::Child>> {
    if ensure_debian_packages(&[("perf", "linux-perf")]).is_err() {
        return Ok(None);
    }
    let perf = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "2999", "-o"])
        .arg(data)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Some(perf))
}

/// Stops `perf` and summarises `data`: the symbols with the most samples
/// and the kernel's share.
pub fn perf_stop(mut perf: std::process::Child, data: &Path) -> Result<Value> {
    let _ = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let _ = perf.wait();
    let data = data.to_owned();
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "-q",
            "--percent-limit",
            "0.7",
        ])
        .args(["--sort", "dso,symbol", "-i"])
        .arg(&data)
        .output()
        .context("perf report")?;
    let text = String::from_utf8_lossy(&report.stdout);
    let mut rows = Vec::new();
    for line in text.lines() {
        // "  12.34%  leash  [k] copy_user_generic"
        let line = line.trim();
        let Some((pct, rest)) = line.split_once('%') else {
            continue;
        };
        let Ok(pct) = pct.trim().parse::<f64>() else {
            continue;
        };
        let rest = rest.trim();
        let (dso, symbol) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let symbol = symbol.trim();
        let (space, symbol): (&str, &str) = symbol
            .strip_prefix("[k] ")
            .map(|s| ("kernel", s))
            .or_else(|| symbol.strip_prefix("[.] ").map(|s| ("user", s)))
            .unwrap_or(("?", symbol));
        rows.push(json!({"pct": pct, "dso": dso, "space": space, "symbol": symbol.split("   ").next().unwrap_or(symbol).trim()}));
    }
    let split = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "-q",
            "--sort",
            "dso",
            "-i",
        ])
        .arg(&data)
        .output()
        .context("perf report")?;
    let mut kernel = 0.0;
    let mut total = 0.0;
    for line in String::from_utf8_lossy(&split.stdout).lines() {
        let line = line.trim();
        if let Some((pct, dso)) = line.split_once('%')
            && let Ok(p) = pct.trim().parse::<f64>()
        {
            total += p;
            if dso.contains("kernel") {
                kernel += p;
            }
        }
    }
    rows.truncate(20);
    Ok(json!({
        "kernel_pct": kernel,
        "total_pct": total,
        "top": rows,
    }))
}

/// The criterion micro-benchmarks of `leash-agent` (`benches/`), run from
/// the executables the release build made: mean time per iteration of
/// each, from criterion's own estimates.
pub fn micro_benchmarks(plan: &Plan, benches: &[(String, PathBuf)]) -> Result<Value> {
    let criterion = target_dir().join("criterion");
    let _ = std::fs::remove_dir_all(&criterion);
    if benches.is_empty() {
        anyhow::bail!("the release build reported no bench executables");
    }
    for (name, exe) in benches {
        eprintln!("bench: micro-benchmark {name}");
        crate::run(
            Command::new(exe)
                .args(["--bench", "--warm-up-time", "1", "--measurement-time"])
                .arg(plan.micro_seconds.to_string())
                .arg("--noplot")
                .env("CRITERION_HOME", &criterion),
        )?;
    }
    let mut rows = Vec::new();
    let mut stack = vec![criterion];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "new") {
                    let read = |name: &str| -> Option<Value> {
                        serde_json::from_str(&std::fs::read_to_string(p.join(name)).ok()?).ok()
                    };
                    if let (Some(b), Some(est)) = (read("benchmark.json"), read("estimates.json")) {
                        rows.push(json!({
                            "id": b["full_id"],
                            "mean_ns": est["mean"]["point_estimate"],
                            "ci_low_ns": est["mean"]["confidence_interval"]["lower_bound"],
                            "ci_high_ns": est["mean"]["confidence_interval"]["upper_bound"],
                        }));
                    }
                } else {
                    stack.push(p);
                }
            }
        }
    }
    rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Ok(json!({"measurement_s": plan.micro_seconds, "rows": rows}))
}

pub fn variants_section(r: &Value) -> String {
    let mut md = String::from("## Other upstream answers (1000 requests/s, pinned)\n\n");
    let v = &r["variants"];
    for variant in v["variants"].as_array().into_iter().flatten() {
        let rows = variant["rows"].as_array().cloned().unwrap_or_default();
        let direct = rows
            .iter()
            .find(|x| x["contender"] == "direct")
            .map_or(Value::Null, |x| x["result"]["latency"].clone());
        let _ = writeln!(
            md,
            "### {} (`{}`)\n\n| contender | p50 ms | p99 ms | added p50 ms | added p99 ms | errors | not sent in time |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            variant["variant"].as_str().unwrap_or("?"),
            variant["header"].as_str().unwrap_or("?"),
        );
        for x in &rows {
            let l = &x["result"]["latency"];
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:+.3} | {:+.3} | {} | {} |",
                x["contender"].as_str().unwrap_or("?"),
                ms(&l["p50_ms"]),
                ms(&l["p99_ms"]),
                f(&l["p50_ms"]) - f(&direct["p50_ms"]),
                f(&l["p99_ms"]) - f(&direct["p99_ms"]),
                x["result"]["errors"],
                x["result"]["not_sent"],
            );
        }
        md.push('\n');
    }
    md.push_str("One run each (not alternated over rounds).\n");
    md
}

pub fn unpinned_section(r: &Value) -> String {
    let u = &r["unpinned"];
    let mut md = format!(
        "## Unpinned placement (1000 requests/s)\n\n{}; medians over rounds. Compare with each other, not with the pinned tables.\n\n| contender | p50 ms | p95 ms | p99 ms | added p50 ms | added p99 ms | not sent in time |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        u["placement"].as_str().unwrap_or("?")
    );
    let rows = u["rows"].as_array().cloned().unwrap_or_default();
    let direct = rows
        .iter()
        .find(|x| x["contender"] == "direct")
        .cloned()
        .unwrap_or(Value::Null);
    for x in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:+.3} | {:+.3} | {} |",
            x["contender"].as_str().unwrap_or("?"),
            ms(&x["p50_ms"]),
            ms(&x["p95_ms"]),
            ms(&x["p99_ms"]),
            f(&x["p50_ms"]) - f(&direct["p50_ms"]),
            f(&x["p99_ms"]) - f(&direct["p99_ms"]),
            x["not_sent"],
        );
    }
    md
}

/// A perf summary's user-space rows whose symbol `keep` accepts, in the
/// summary's order (most samples first).
pub fn user_symbols(rows: &[Value], keep: impl Fn(&str) -> bool) -> Vec<&Value> {
    rows.iter()
        .filter(|r| r["space"] == "user" && keep(r["symbol"].as_str().unwrap_or("")))
        .collect()
}

pub fn perf_section(title: &str, p: &Value) -> String {
    let mut md = format!("{title}\n\n");
    let Some(rows) = p["top"].as_array() else {
        md.push_str("Not measured (perf is not available).\n");
        return md;
    };
    let _ = writeln!(
        md,
        "`perf record -e cpu-clock` on `{}` under {} ({:.0} RPS while sampled). Kernel: {:.1} % of samples. Symbols with ≥ 0.7 % of samples (self time) are listed below.",
        p["contender"].as_str().unwrap_or("?"),
        p["load"].as_str().unwrap_or("?"),
        f(&p["rps_under_perf"]),
        f(&p["kernel_pct"]),
    );
    md.push_str("\nHow to read it: on loopback the sender's `writev` also runs the receiving side's TCP stack and wakes the receiver, so the kernel share is mostly the unavoidable send/receive path that nginx pays too (see the syscall profile: the same calls per request).");
    let user = user_symbols(rows, |_| true);
    let share = |pred: &dyn Fn(&str) -> bool| -> f64 {
        user_symbols(rows, pred).iter().map(|r| f(&r["pct"])).sum()
    };
    let listed = share(&|_| true);
    let alloc = share(&|s| {
        [
            "malloc",
            "free",
            "memmove",
            "memcpy",
            "_int_",
            "unlink_chunk",
            "consolidate",
        ]
        .iter()
        .any(|k| s.contains(k))
    });
    if let Some(top) = user.first() {
        let _ = writeln!(
            md,
            " In this profile the user-space symbols listed add up to {listed:.1} % of samples, allocation and copying (`malloc`, `free`, `memmove` and their helpers) {alloc:.1} %; the largest single one is `{}` at {:.1} %.",
            top["symbol"].as_str().unwrap_or("?").replace('|', "\\|"),
            f(&top["pct"]),
        );
    }
    if !md.ends_with('\n') {
        md.push('\n');
    }
    md.push_str("\n| % | where | symbol |\n| ---: | --- | --- |\n");
    for r in rows {
        let sym = r["symbol"].as_str().unwrap_or("?");
        let sym = if sym.len() > 90 { &sym[..90] } else { sym };
        let _ = writeln!(
            md,
            "| {:.1} | {} ({}) | `{}` |",
            f(&r["pct"]),
            r["dso"].as_str().unwrap_or("?"),
            r["space"].as_str().unwrap_or("?"),
            sym.replace('|', "\\|"),
        );
    }
    md
}

pub fn micro_section(m: &Value) -> String {
    let mut md = String::from("## Micro-benchmarks (criterion, `cargo bench -p leash-agent`)\n\n");
    let Some(rows) = m["rows"].as_array() else {
        let _ = writeln!(
            md,
            "Not measured: {}",
            m["error"].as_str().unwrap_or("no results")
        );
        return md;
    };
    md.push_str("| benchmark | mean | 95 % interval | what |\n| --- | ---: | ---: | --- |\n");
    let what = |id: &str| match id {
        "policy_10KiB_prompt" => {
            "a 10 KiB chat prompt through a 4-rule policy with every built-in detector: parse, scan, decide (detection cost per KiB ≈ this / 10)"
        }
        "sse_parse_21_events" => {
            "an OpenAI chat stream of 21 events in 64-byte reads, split into events"
        }
        "usage_1KiB_answer" => {
            "a 1 KiB chat completion read for usage, id, model, finish reasons and tool calls"
        }
        "detect_1KiB_answer_strings" => {
            "the 20 strings of a 1 KiB chat completion, each scanned by every built-in detector as the response side does"
        }
        "audit_encode_and_seal" => "one audit record to JSON, hashed into the chain",
        "cert_mint_miss" => {
            "a leaf certificate minted for a host (cache miss: ECDSA P-256 key + signature)"
        }
        "cert_cache_hit" => "the TLS configuration for a host already minted (cache hit)",
        "tls_handshake_leaf" => {
            "the agent's side of a full TLS 1.3 handshake on a cached leaf, in memory (client: rustls, AES-256-GCM first); the server's calls alone are timed"
        }
        _ => "",
    };
    let t = |ns: f64| {
        if ns >= 1000.0 {
            format!("{:.1} µs", ns / 1000.0)
        } else {
            format!("{ns:.0} ns")
        }
    };
    for r in rows {
        let id = r["id"].as_str().unwrap_or("?");
        let _ = writeln!(
            md,
            "| `{id}` | {} | {} – {} | {} |",
            t(f(&r["mean_ns"])),
            t(f(&r["ci_low_ns"])),
            t(f(&r["ci_high_ns"])),
            what(id)
        );
    }
    md
}
