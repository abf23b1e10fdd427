//! `cargo xtask bench-compare --base REV`: this tree against an earlier
//! commit, measured in one run: the criterion micro-benchmarks, and (as
//! root) the transparent path's latency at 1000 RPS. The earlier commit is
//! checked out in a git worktree under `target/` and built with the same
//! toolchain and profile (sharing the target directory, so only the
//! workspace crates build twice); then base and current run alternately
//! for several rounds, and each difference is reported with the rounds'
//! own spread. A difference inside that spread is "inconclusive". Writes
//! `bench/micro.json` and its section of BENCHMARKS.md.

use std::{fmt::Write as _, path::Path, process::Stdio};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{EXAMPLE_POLICY, build_release, median, start_leash};
use crate::{cargo, root, target_dir};

const BEGIN: &str =
    "<!-- micro-bench:begin (written by `cargo xtask bench-compare`; do not edit) -->";
const END: &str = "<!-- micro-bench:end -->";
/// The benchmarks compared, and the most the current tree may take
/// relative to the base (issue 26: the 10 KiB prompt within 2×).
const BENCHES: &[(&str, &str, f64)] = &[("policy", "policy_10KiB_prompt", 2.0)];

/// Criterion's mean for `id` after running `exe` with `home` as its home.
fn criterion_mean(exe: &Path, id: &str, home: &Path, seconds: u32) -> Result<f64> {
    let _ = std::fs::remove_dir_all(home);
    crate::run(
        std::process::Command::new(exe)
            .args(["--bench", "--warm-up-time", "1", "--measurement-time"])
            .arg(seconds.to_string())
            .args(["--noplot", id])
            .env("CRITERION_HOME", home)
            .stdout(Stdio::null()),
    )?;
    let est: Value = serde_json::from_str(
        &std::fs::read_to_string(home.join(id).join("new/estimates.json"))
            .with_context(|| format!("criterion estimates of {id}"))?,
    )?;
    est["mean"]["point_estimate"]
        .as_f64()
        .context("criterion mean")
}

/// The two `leash` builds compared, the load tool, the run's directory,
/// and how long to measure.
#[derive(Clone, Copy)]
pub(super) struct Pair<'a> {
    pub base: &'a Path,
    pub current: &'a Path,
    pub tool: &'a Path,
    pub dir: &'a Path,
    pub rounds: usize,
    pub seconds: f64,
}

/// `base`'s short commit id (an error if it names none).
pub(super) fn short_rev(base: &str) -> Result<String> {
    let rev = String::from_utf8(
        std::process::Command::new("git")
            .args(["rev-parse", "--short", base])
            .current_dir(root())
            .output()?
            .stdout,
    )?
    .trim()
    .to_owned();
    if rev.is_empty() {
        bail!("`{base}` is not a commit");
    }
    Ok(rev)
}

/// The release `leash` binary of commit `rev` (a worktree, built in the
/// shared target directory and copied out, so the current build's binary
/// stays in place).
pub(super) fn base_binary(rev: &str) -> Result<std::path::PathBuf> {
    let bin = leash_of(&base_benches(rev)?)?;
    let kept = target_dir().join(format!("bench-base-leash-{rev}"));
    std::fs::copy(&bin, &kept).with_context(|| format!("copying {}", bin.display()))?;
    Ok(kept)
}

/// The `leash` binary among a base build's executables.
fn leash_of(built: &[(String, std::path::PathBuf)]) -> Result<std::path::PathBuf> {
    built
        .iter()
        .find(|(n, _)| n == "leash-bin")
        .map(|(_, p)| p.clone())
        .context("the base build reported no leash binary")
}

/// Builds the benches of `rev` in a worktree; their executables by name.
fn base_benches(rev: &str) -> Result<Vec<(String, std::path::PathBuf)>> {
    let tree = target_dir().join("bench-base");
    // Kept from an earlier run at the same commit: its build is still
    // fresh (a new checkout would rebuild the workspace crates).
    let at = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(&tree)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if at.as_deref() != Some(rev) {
        checkout(&tree, rev)?;
    }
    build_benches(&tree)
}

/// A fresh worktree of `rev` at `tree`.
fn checkout(tree: &Path, rev: &str) -> Result<()> {
    let _ = std::process::Command::new("git")
        .args(["worktree", "remove", "--force"])
        .arg(tree)
        .current_dir(root())
        .status();
    let _ = std::fs::remove_dir_all(tree);
    crate::run(
        std::process::Command::new("git")
            .args(["worktree", "add", "--detach"])
            .arg(tree)
            .arg(rev)
            .current_dir(root()),
    )
}

/// Builds the benches of the tree at `tree` (release, the shared target
/// directory); their executables by name.
fn build_benches(tree: &Path) -> Result<Vec<(String, std::path::PathBuf)>> {
    let mut cmd = cargo();
    cmd.current_dir(tree)
        .env("CARGO_TARGET_DIR", target_dir())
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
            "-p",
            "leash-agent",
            "--benches",
            "--bin",
            "leash",
        ]);
    let out = super::run::cargo_build(&mut cmd, "the base's release build")?;
    let mut built = super::run::executables(&out, "bench", true);
    // The `leash` binary too (under its own name: the current tree's is at
    // a fixed path, the base's only in cargo's report).
    built.extend(
        super::run::executables(&out, "bin", false)
            .into_iter()
            .filter(|(name, _)| name == "leash")
            .map(|(_, path)| ("leash-bin".to_owned(), path)),
    );
    Ok(built)
}

pub fn bench_micro(base: &str, rounds: usize, seconds: u32) -> Result<()> {
    let rev = short_rev(base)?;
    let head = short_rev("HEAD")?;
    let current = build_release()?;
    let based = base_benches(&rev)?;
    let home = target_dir().join("criterion-micro");
    let mut rows = Vec::new();
    for &(bench, id, limit) in BENCHES {
        let find = |list: &[(String, std::path::PathBuf)]| {
            list.iter()
                .find(|(n, _)| n == bench)
                .map(|(_, p)| p.clone())
                .with_context(|| format!("no `{bench}` bench executable"))
        };
        let (b_exe, c_exe) = (find(&based)?, find(&current)?);
        let (mut b, mut c) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            eprintln!("bench-compare: {id} round {} of {rounds}", round + 1);
            b.push(criterion_mean(&b_exe, id, &home.join("base"), seconds)?);
            c.push(criterion_mean(&c_exe, id, &home.join("current"), seconds)?);
        }
        rows.push(
            json!({"bench": bench, "id": id, "limit_ratio": limit, "base_ns": b, "current_ns": c}),
        );
    }
    let base_leash = leash_of(&based)?;
    let dir = target_dir().join("bench-compare");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (current_leash, tool) = (
        target_dir().join("release/leash"),
        target_dir().join("release/leash-bench"),
    );
    let pair = Pair {
        base: &base_leash,
        current: &current_leash,
        tool: &tool,
        dir: &dir,
        rounds,
        seconds: f64::from(seconds),
    };
    let transparent = super::transparent::compare(&pair)?;
    let gateway = gateway_compare(&pair)?;
    let results = json!({
        "base": rev, "current": head, "rounds": rounds, "seconds": seconds, "rows": rows,
        "transparent": transparent, "gateway": gateway,
    });
    std::fs::create_dir_all(root().join("bench"))?;
    std::fs::write(
        root().join("bench/micro.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    render(&results)
}

/// Writes the micro-benchmark section of BENCHMARKS.md from a run.
pub fn render(r: &Value) -> Result<()> {
    let mut md = format!(
        "{BEGIN}\n## Against an earlier commit\n\n`cargo xtask bench-compare --base {}`: this tree ({}) and commit {} built with the same toolchain and profile, each criterion benchmark run alternately base / current, {} rounds of {} s. The spread is the largest difference between two rounds of the same build, relative to its median; a difference within it is inconclusive.\n\n| benchmark | base median | current median | current / base | spread | limit | verdict |\n| --- | ---: | ---: | ---: | ---: | ---: | --- |\n",
        r["base"].as_str().unwrap_or("?"),
        r["current"].as_str().unwrap_or("?"),
        r["base"].as_str().unwrap_or("?"),
        r["rounds"],
        r["seconds"],
    );
    for row in r["rows"].as_array().into_iter().flatten() {
        let vals = |k: &str| -> Vec<f64> {
            row[k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect()
        };
        let (b, c) = (vals("base_ns"), vals("current_ns"));
        let spread_of = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
            (hi - lo) / median(v.to_vec())
        };
        let (bm, cm) = (median(b.clone()), median(c.clone()));
        let ratio = cm / bm;
        let spread = spread_of(&b).max(spread_of(&c));
        let limit = row["limit_ratio"].as_f64().unwrap_or(f64::NAN);
        let verdict = if (ratio - 1.0).abs() <= spread {
            "inconclusive (no difference beyond the spread)".to_owned()
        } else if ratio <= limit {
            format!(
                "within {limit}× ({})",
                if ratio < 1.0 { "faster" } else { "slower" }
            )
        } else {
            format!("over {limit}×")
        };
        let _ = writeln!(
            md,
            "| `{}` | {:.1} µs | {:.1} µs | {ratio:.2} | {:.1} % | {limit}× | {verdict} |",
            row["id"].as_str().unwrap_or("?"),
            bm / 1000.0,
            cm / 1000.0,
            spread * 100.0,
        );
    }
    md.push_str(&latency_rows(
        &r["gateway"],
        "The policy gateway (`leash gateway`, default modules and the example policy; both builds side by side on one upstream, measured in turn)",
    ));
    md.push_str(&latency_rows(
        &r["transparent"],
        "The transparent path (`leash run`, eBPF hooks on a child cgroup, pipeline modules off; client in the cgroup; the two agents never run at the same time)",
    ));
    md.push_str(END);
    md.push('\n');
    super::write_section(BEGIN, END, &md)?;
    eprintln!("xtask: BENCHMARKS.md micro-benchmark section written");
    Ok(())
}

/// Medians of `pick` over base and current runs, their difference, the
/// largest round-to-round difference of either build (the spread), and the
/// verdict (`lower` is better or not).
fn compared(
    t: &Value,
    runs: (&str, &str),
    pick: &dyn Fn(&Value) -> Option<f64>,
    lower_is_better: bool,
) -> (f64, f64, f64, f64, &'static str) {
    let col = |k: &str| -> Vec<f64> {
        t[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(pick)
            .collect()
    };
    let (b, c) = (col(runs.0), col(runs.1));
    let range = |v: &[f64]| {
        v.iter().copied().fold(f64::MIN, f64::max) - v.iter().copied().fold(f64::MAX, f64::min)
    };
    let (bm, cm) = (median(b.clone()), median(c.clone()));
    let spread = range(&b).max(range(&c));
    let diff = cm - bm;
    let verdict = if diff.abs() <= spread {
        "inconclusive (no difference beyond the spread)"
    } else if (diff < 0.0) == lower_is_better {
        "better"
    } else {
        "worse"
    };
    (bm, cm, diff, spread, verdict)
}

/// Latency rows (p50, p99 at the fixed rate) of a comparison, and the
/// saturation row when measured.
fn latency_rows(t: &Value, title: &str) -> String {
    if let Some(why) = t["not_run"].as_str() {
        return format!("\n{title}: not measured ({why}).\n");
    }
    if t.is_null() {
        return String::new();
    }
    let mut md = format!(
        "\n{title} ({} req/s for {} s a round):\n\n| measure | base median | current median | current − base | spread | verdict |\n| --- | ---: | ---: | ---: | ---: | --- |\n",
        t["rate"], t["seconds"]
    );
    for key in ["p50_ms", "p99_ms"] {
        let (bm, cm, diff, spread, verdict) = compared(
            t,
            ("base_runs", "current_runs"),
            &|r| r["latency"][key].as_f64(),
            true,
        );
        let _ = writeln!(
            md,
            "| {} latency | {bm:.3} ms | {cm:.3} ms | {diff:+.3} ms | {spread:.3} ms | {verdict} |",
            key.trim_end_matches("_ms")
        );
    }
    if t["base_cpu_us"].is_array() {
        let (bm, cm, diff, spread, verdict) =
            compared(t, ("base_cpu_us", "current_cpu_us"), &Value::as_f64, true);
        let _ = writeln!(
            md,
            "| CPU per request | {bm:.0} µs | {cm:.0} µs | {diff:+.0} µs | {spread:.0} µs | {verdict} |"
        );
    }
    if t["base_saturate"].is_array() {
        let (bm, cm, diff, spread, verdict) = compared(
            t,
            ("base_saturate", "current_saturate"),
            &|r| r["rps"].as_f64(),
            false,
        );
        let _ = writeln!(
            md,
            "| saturation (32 connections, closed loop) | {bm:.0} req/s | {cm:.0} req/s | {diff:+.0} req/s | {spread:.0} req/s | {verdict} |"
        );
    }
    md
}

/// The policy gateway of both builds (the `leash-policy` contender: default
/// modules and the example policy), side by side on one plain-HTTP
/// upstream, measured in turn each round: latency at 1000 req/s and
/// keep-alive saturation.
fn gateway_compare(pair: &Pair<'_>) -> Result<Value> {
    let Pair {
        base,
        current,
        tool,
        dir,
        rounds,
        seconds,
    } = *pair;
    let (_upstream, up_port) =
        super::lean_upstream(tool, dir, "upstream-gateway.log", &["--size", "1024"])?;
    let what = "gateway, default modules + the example policy";
    let builds = [
        start_leash("base", what, base, dir, up_port, EXAMPLE_POLICY)?,
        start_leash("current", what, current, dir, up_port, EXAMPLE_POLICY)?,
    ];
    // Per build (base, current): one entry per round.
    let mut load: [Vec<Value>; 2] = Default::default();
    let (mut saturate, mut cpu) = (load.clone(), load.clone());
    for round in 0..rounds {
        for (i, c) in builds.iter().enumerate() {
            eprintln!("bench-compare: gateway round {} {}", round + 1, c.name);
            let before = super::proc::cpu_seconds(c.pid);
            load[i].push(c.measure(
                tool,
                "load",
                &[
                    ("--rate", "1000".to_owned()),
                    ("--seconds", seconds.to_string()),
                ],
            )?);
            // The tool sends for 1 s (warm-up) before the measured seconds.
            let used = super::proc::cpu_seconds(c.pid) - before;
            cpu[i].push(json!(used * 1e6 / (1000.0 * (seconds + 1.0))));
            saturate[i].push(c.measure(
                tool,
                "saturate",
                &[
                    ("--seconds", seconds.to_string()),
                    ("--connections", "32".to_owned()),
                ],
            )?);
        }
    }
    Ok(json!({
        "rate": 1000, "seconds": seconds,
        "base_runs": load[0], "current_runs": load[1],
        "base_saturate": saturate[0], "current_saturate": saturate[1],
        "base_cpu_us": cpu[0], "current_cpu_us": cpu[1],
    }))
}
