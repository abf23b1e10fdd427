//! `cargo xtask bench-firstrun`: how long a newcomer waits for the first
//! request. A fresh clone of the committed tree, with a `CARGO_HOME` of
//! its own (so the crates are downloaded and `bpf-linker` is built, as on a
//! machine that never built Leash; the Rust toolchains are the machine's),
//! runs README's first step, `cargo xtask run`, until Leash says it is
//! ready. Writes `bench/firstrun.json` and its section of BENCHMARKS.md;
//! the target (issue 27: under 4 minutes on this 2-core machine) is judged
//! there and in the targets table of `cargo xtask bench`.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{free_port, write_section};
use crate::{root, run, target_dir};

const BEGIN: &str =
    "<!-- firstrun-bench:begin (written by `cargo xtask bench-firstrun`; do not edit) -->";
const END: &str = "<!-- firstrun-bench:end -->";
/// Issue 27's target for a newcomer's first `cargo xtask run`.
pub(super) const TARGET_SECONDS: f64 = 240.0;
/// A run that has not said "ready" by then has failed.
const GIVE_UP: Duration = Duration::from_mins(30);

/// The lines that mark the phases, in the order they come.
const PHASES: [(&str, &str); 3] = [
    ("toolchain", "xtask: eBPF toolchain ready"),
    ("built", "xtask: leash built"),
    ("ready", "leash gateway ready"),
];

pub fn bench_firstrun() -> Result<()> {
    let results = measure()?;
    super::save_results("firstrun.json", &results, render)?;
    eprintln!("bench-firstrun: wrote bench/firstrun.json and BENCHMARKS.md's section");
    Ok(())
}

fn measure() -> Result<Value> {
    let dir = target_dir().join("bench-firstrun");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let clone = dir.join("leash");
    run(Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(root())
        .arg(&clone))?;
    let commit = crate::output_of(Command::new("git").args(["-C"]).arg(&clone).args([
        "rev-parse",
        "--short",
        "HEAD",
    ]))?
    .trim()
    .to_owned();
    let rust_src = crate::toolchain::has_rust_src().unwrap_or(false);
    let mut cmd = newcomer(&dir, &clone)?;
    eprintln!("bench-firstrun: cargo xtask run in a fresh clone of {commit}");
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting cargo xtask run")?;
    let (tx, rx) = mpsc::channel::<String>();
    for out in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut phases = serde_json::Map::new();
    let mut log = Vec::new();
    let outcome = loop {
        match rx.recv_timeout(GIVE_UP.saturating_sub(started.elapsed())) {
            Ok(line) => {
                let at = started.elapsed().as_secs_f64();
                for (name, marker) in PHASES {
                    if !phases.contains_key(name) && line.contains(marker) {
                        eprintln!("bench-firstrun: {name} after {at:.1} s");
                        phases.insert(name.to_owned(), json!(at));
                    }
                }
                log.push(line);
                if phases.contains_key("ready") {
                    break Ok(at);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break Err("no \"ready\" within 30 min"),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err("cargo xtask run ended before Leash was ready");
            }
        }
    };
    // The whole group (`cargo xtask run` and the `leash` it started); the
    // `--` keeps the negative id from being read as an option.
    let _ = Command::new("kill")
        .args(["-s", "TERM", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
    std::fs::write(dir.join("run.log"), log.join("\n"))?;
    let seconds = match outcome {
        Ok(s) => s,
        Err(why) => bail!("{why}; its output is in {}", dir.join("run.log").display()),
    };
    Ok(json!({
        "date": crate::today(),
        "commit": commit,
        "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "rust_src_installed_before": rust_src,
        "seconds": seconds,
        "phases": phases,
        "target_seconds": TARGET_SECONDS,
    }))
}

/// `cargo xtask run` in `clone` as a newcomer's shell would start it: no
/// cargo or rustup variables from this xtask's own `cargo run`, a
/// `CARGO_HOME` with nothing in it yet; a gateway on free ports.
fn newcomer(dir: &std::path::Path, clone: &std::path::Path) -> Result<Command> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let path = std::env::var_os("PATH").context("PATH is not set")?;
    let mut cmd = Command::new("cargo");
    cmd.env_clear()
        .env("HOME", &home)
        .env("PATH", &path)
        .env("CARGO_HOME", dir.join("cargo-home"))
        .current_dir(clone)
        .args(["xtask", "run", "--", "gateway", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()?))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{}", free_port()?))
        .arg("--audit-dir")
        .arg(dir.join("audit"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(rustup_home) = std::env::var_os("RUSTUP_HOME") {
        cmd.env("RUSTUP_HOME", rustup_home);
    }
    Ok(cmd)
}

/// "4 min 6 s".
pub(super) fn minutes(seconds: f64) -> String {
    let s = seconds.round();
    format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0)
}

pub(super) fn render(r: &Value) -> Result<()> {
    let seconds = super::f(&r["seconds"]);
    let phase = |name: &str| r["phases"][name].as_f64();
    let at = |name: &str| phase(name).map_or_else(|| "not seen".to_owned(), minutes);
    let verdict = if seconds <= TARGET_SECONDS {
        "met (one run: no spread)".to_owned()
    } else {
        format!(
            "missed by {} (one run: no spread)",
            minutes(seconds - TARGET_SECONDS)
        )
    };
    let rust_src = if r["rust_src_installed_before"].as_bool() == Some(true) {
        "already installed (so not timed)"
    } else {
        "installed by the run"
    };
    let md = format!(
        "{BEGIN}\n## Time to the first request, for a newcomer\n\n`cargo xtask bench-firstrun`: a fresh clone of commit {} with a `CARGO_HOME` of its own (every crate downloaded, `bpf-linker` built from crates.io), README's first step `cargo xtask run` (here with a gateway listener on a free port), timed until Leash logs that it is ready; {} CPUs, {}. The nightly toolchain's `rust-src` was {rust_src}.\n\n| phase | at |\n| --- | ---: |\n| eBPF toolchain ready (`bpf-linker` built) | {} |\n| Leash built (release) | {} |\n| Leash ready | **{}** |\n\nAgainst the target (under {}): {verdict}.\n{END}\n",
        r["commit"].as_str().unwrap_or("?"),
        r["cpus"],
        r["date"].as_str().unwrap_or("?"),
        at("toolchain"),
        at("built"),
        minutes(seconds),
        minutes(TARGET_SECONDS),
    );
    write_section(BEGIN, END, &md)
}
