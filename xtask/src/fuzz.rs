//! `cargo xtask fuzz [--minutes N] [TARGET...]`: runs the cargo-fuzz
//! targets of `leash-agent/fuzz` (libFuzzer, nightly, address sanitizer)
//! one after another for N minutes each, starting from the committed seeds
//! and corpus, then minimises the corpus and writes
//! `leash-agent/fuzz/results.json` (executions, crashes, per target).
//! A crash fails the command and leaves its input under `artifacts/`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{cargo_home, output_of, root, run};

/// Every target, in the order they run.
pub const TARGETS: [&str; 6] = [
    "sse",
    "client_hello",
    "request_policy",
    "stream_policy",
    "policy_file",
    "config_file",
];

fn fuzz_dir() -> PathBuf {
    root().join("leash-agent/fuzz")
}

/// cargo-fuzz, installed once (crates.io).
fn ensure_cargo_fuzz() -> Result<()> {
    let ok = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// libFuzzer's closing line: `Done 123456 runs in 600 second(s)`: the
/// executions and the seconds spent fuzzing (the build not included).
fn executions(log: &str) -> Option<(u64, u64)> {
    log.lines().rev().find_map(|l| {
        let mut words = l.strip_prefix("Done ")?.split_whitespace();
        let runs = words.next()?.parse().ok()?;
        let secs = words.nth(2)?.parse().ok()?;
        Some((runs, secs))
    })
}

pub fn fuzz(minutes: u64, only: &[String]) -> Result<()> {
    crate::setup()?;
    ensure_cargo_fuzz()?;
    let targets: Vec<&str> = if only.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in only {
            if !TARGETS.contains(&t.as_str()) {
                bail!("unknown fuzz target `{t}`; targets: {}", TARGETS.join(", "));
            }
        }
        only.iter().map(String::as_str).collect()
    };
    let dir = fuzz_dir();
    let results_path = dir.join("results.json");
    let mut results: Value = std::fs::read_to_string(&results_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({"targets": {}}));
    let rustc = output_of(Command::new("rustc").args(["+nightly", "-V"])).unwrap_or_default();
    let mut crashed = Vec::new();
    for target in targets {
        let corpus = dir.join("corpus").join(target);
        let seeds = dir.join("seeds").join(target);
        std::fs::create_dir_all(&corpus)?;
        let log_path = root().join("target").join(format!("fuzz-{target}.log"));
        std::fs::create_dir_all(root().join("target"))?;
        eprintln!(
            "xtask: fuzzing {target} for {minutes} min (log: {})",
            log_path.display()
        );
        let started = Instant::now();
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = fuzz_cmd();
        cmd.args(["run", target])
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={}", minutes * 60))
            .args(["-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1"])
            .stdout(log.try_clone()?)
            .stderr(log);
        let status = cmd.status().context("starting cargo fuzz")?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let (execs, fuzz_secs) = executions(&text).unzip();
        let ok = status.success();
        if !ok {
            crashed.push(target);
        }
        eprintln!(
            "xtask: {target}: {} executions in {:.0} s, {}",
            execs.map_or_else(|| "?".into(), |n| n.to_string()),
            started.elapsed().as_secs_f64(),
            if ok {
                "no crash"
            } else {
                "CRASH (see the log and artifacts/)"
            }
        );
        // Keep the corpus small enough to commit: only inputs that add
        // coverage.
        if ok {
            minimise(target, &corpus)?;
        }
        results["targets"][target] = json!({
            "date": crate::today(),
            "seconds_fuzzing": fuzz_secs,
            "executions": execs,
            "crashes": u32::from(!ok),
            "corpus_files": std::fs::read_dir(&corpus).map_or(0, Iterator::count),
            "rustc": rustc.trim(),
        });
        std::fs::write(
            &results_path,
            serde_json::to_string_pretty(&results)? + "\n",
        )?;
    }
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {}", crashed.join(", "));
    }
    Ok(())
}

fn fuzz_cmd() -> Command {
    let mut cmd = Command::new(cargo_home().join("bin/cargo-fuzz"));
    if !cargo_home().join("bin/cargo-fuzz").exists() {
        cmd = Command::new("cargo");
        cmd.arg("fuzz");
    }
    cmd.current_dir(root().join("leash-agent"))
        .env("RUSTUP_TOOLCHAIN", "nightly")
        // The fuzz build links the agent library only: no kernel programs.
        .env("LEASH_EBPF", "skip");
    cmd
}

fn minimise(target: &str, corpus: &Path) -> Result<()> {
    let status = fuzz_cmd()
        .args(["cmin", target])
        .arg(corpus)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cargo fuzz cmin")?;
    if !status.success() {
        eprintln!("xtask: corpus minimisation of {target} failed; corpus left as it is");
    }
    Ok(())
}
