//! `cargo xtask bench-instructions [--against REV]`: the user-space
//! instructions each contender executes per request, counted by valgrind's
//! callgrind (every thread of the process) between a zeroing and a dump
//! around the same open-loop load. A count, not a time: other guests, CPU
//! frequency and steal do not move it, so two builds (or Leash and nginx)
//! compare on any machine, and a small change shows. What it leaves out:
//! the kernel's share (system calls, the network stack) and memory stalls.
//!
//! valgrind hides the CPU's SHA extensions, so the audit chain's SHA-256
//! runs in software under it (about 10× the instructions of the hardware
//! path Leash takes natively): its instructions are counted apart and left
//! out of the figure compared.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    EXAMPLE_POLICY, Proc,
    against::{self, Change},
    bench_tool,
    contenders::{leash_config, nginx_binary, nginx_conf},
    free_port, lean_upstream,
    micro::{base_binary, short_rev},
    pinned,
    targets::Measured,
    wait_port, write_section,
};
use crate::{ensure_debian_packages, target_dir};

const BEGIN: &str = "<!-- bench-instructions:begin -->";
const END: &str = "<!-- bench-instructions:end -->";
/// Open-loop rate and seconds of each counted load (after a warm-up).
const RATE: u32 = 100;
const SECONDS: u32 = 5;
const ROUNDS: usize = 2;
/// The software SHA-256 that runs only under valgrind.
const SOFT_SHA: &str = "sha2::sha256::soft::compress";

pub fn bench_instructions(against: Option<&str>) -> Result<()> {
    ensure_debian_packages(&[("valgrind", "valgrind"), ("nginx", "nginx")])?;
    // The base first: it is built in the shared target directory, and
    // copied out; this tree's build then puts its own binary back in place.
    let against = against.map(short_rev).transpose()?;
    let base = against.as_deref().map(base_binary).transpose()?;
    super::build_release()?;
    let (leash, tool) = (
        target_dir().join("release/leash"),
        target_dir().join("release/leash-bench"),
    );
    let dir = target_dir().join("bench-instructions");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (_upstream, up) = lean_upstream(&tool, &dir, "upstream.log", &["--size", "1024"])?;
    let mut runs: Vec<(String, &str, Option<&Path>)> = vec![
        ("nginx".into(), "", None),
        (
            "leash-bare".into(),
            "pipeline: { modules: [] }\n",
            Some(&leash),
        ),
        ("leash-policy".into(), EXAMPLE_POLICY, Some(&leash)),
    ];
    if let (Some(rev), Some(bin)) = (&against, &base) {
        runs.push((format!("leash-policy@{rev}"), EXAMPLE_POLICY, Some(bin)));
    }
    let mut counts: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); runs.len()];
    for round in 0..ROUNDS {
        for (i, (name, extra, bin)) in runs.iter().enumerate() {
            eprintln!(
                "bench-instructions: {name}, round {} of {ROUNDS}",
                round + 1
            );
            let (all, sha) = count(&dir, &tool, up, name, extra, *bin)?;
            counts[i].0.push(all - sha);
            counts[i].1.push(sha);
        }
    }
    let results = json!({
        "commit": short_rev("HEAD")?,
        "against": against,
        "date": crate::today(),
        "rate": RATE,
        "seconds": SECONDS,
        "valgrind": crate::output_of(Command::new("valgrind").arg("--version"))?.trim(),
        "contenders": runs.iter().zip(&counts).map(|((name, _, _), (ir, sha))| {
            json!({"name": name, "instructions": ir, "software_sha256": sha})
        }).collect::<Vec<_>>(),
    });
    super::save_results("instructions.json", &results, render)?;
    eprintln!("bench-instructions: wrote bench/instructions.json and BENCHMARKS.md's section");
    Ok(())
}

/// One contender under callgrind: (instructions per request, of them the
/// software SHA-256's).
fn count(
    dir: &Path,
    tool: &Path,
    upstream: u16,
    name: &str,
    extra: &str,
    leash: Option<&Path>,
) -> Result<(f64, f64)> {
    let port = free_port()?;
    let out = dir.join(format!("{name}-{port}.callgrind"));
    let mut cmd = pinned(super::SERVER_CPU, Path::new("valgrind"));
    cmd.args(["--tool=callgrind", "--collect-jumps=no"])
        .arg(format!("--callgrind-out-file={}", out.display()));
    let url = if let Some(bin) = leash {
        let config = leash_config(dir, upstream, extra)?;
        super::gateway_args(
            cmd.arg(bin),
            &config,
            port,
            free_port()?,
            &dir.join(format!("audit-{name}-{port}")),
        );
        format!("http://127.0.0.1:{port}/v1/openai/chat/completions")
    } else {
        let conf = nginx_conf(dir, &format!("nginx-{port}"), upstream, port, true)?;
        cmd.arg(nginx_binary())
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir);
        format!("http://127.0.0.1:{port}/v1/chat/completions")
    };
    let proc = Proc::spawn(&mut cmd, &dir.join(format!("{name}-{port}.log")))?;
    wait_port(port, name)?;
    // The counted load has no warm-up of its own: every request it sends
    // is one it counts.
    let load = |seconds: u32, warmup: u32| {
        bench_tool(
            tool,
            "load",
            &url,
            &[
                ("--rate", RATE.to_string()),
                ("--seconds", seconds.to_string()),
                ("--warmup", warmup.to_string()),
            ],
        )
    };
    load(2, 1)?;
    callgrind_control("-z", proc.pid())?;
    let r = load(SECONDS, 0)?;
    callgrind_control("-d", proc.pid())?;
    let requests = r["latency"]["count"].as_u64().unwrap_or(0);
    if requests != u64::from(RATE * SECONDS)
        || r["errors"].as_u64() != Some(0)
        || r["not_sent"].as_u64() != Some(0)
    {
        bail!("{name}: the counted load did not complete cleanly: {r}");
    }
    let dump = dump_of(&out)?;
    let total = totals(&dump)?;
    let sha = soft_sha(&dump)?;
    drop(proc);
    let requests = f64::from(RATE * SECONDS);
    Ok((total / requests, sha / requests))
}

fn callgrind_control(what: &str, pid: u32) -> Result<()> {
    let status = Command::new("callgrind_control")
        .arg(what)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .context("running callgrind_control")?;
    if !status.success() {
        bail!("callgrind_control {what} {pid} failed");
    }
    Ok(())
}

/// The dump `callgrind_control -d` wrote next to `out` (`<out>.1`), once
/// it is whole (it ends with its totals).
fn dump_of(out: &Path) -> Result<PathBuf> {
    let dump = PathBuf::from(format!("{}.1", out.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&dump)
            && text.lines().any(|l| l.starts_with("totals:"))
        {
            return Ok(dump);
        }
        if Instant::now() > deadline {
            bail!("no callgrind dump at {}", dump.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The dump's total instructions.
fn totals(dump: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(dump)?;
    text.lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|v| v.trim().parse().ok())
        .context("a callgrind dump without totals")
}

/// Instructions of the software SHA-256 in the dump (its inclusive cost
/// by `callgrind_annotate`; zero when it did not run).
fn soft_sha(dump: &Path) -> Result<f64> {
    let text = crate::output_of(
        Command::new("callgrind_annotate")
            .arg("--inclusive=yes")
            .arg(dump),
    )?;
    Ok(text
        .lines()
        .find(|l| l.contains(&format!("soft.rs:{SOFT_SHA}")))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or(0.0))
}

fn thousands(x: f64) -> String {
    format!("{:.1}k", x / 1000.0)
}

pub(super) fn render(r: &Value) -> Result<()> {
    write_section(BEGIN, END, &section(r))
}

/// The section, from a run's results.
fn section(r: &Value) -> String {
    let rows: Vec<(&str, Measured, Measured)> = r["contenders"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let xs = |k: &str| {
                Measured(
                    c[k].as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_f64)
                        .collect(),
                )
            };
            (
                c["name"].as_str().unwrap_or("?"),
                xs("instructions"),
                xs("software_sha256"),
            )
        })
        .collect();
    let nginx = rows
        .iter()
        .find(|(n, _, _)| *n == "nginx")
        .map(|(_, xs, _)| xs.range().0);
    // The largest round-to-round difference of any contender.
    let spread = rows
        .iter()
        .map(|(_, xs, _)| {
            let (lo, hi) = xs.range();
            (hi - lo) / lo
        })
        .filter(|d| d.is_finite())
        .fold(0.0, f64::max);
    let mut md = format!(
        "{BEGIN}\n## Instructions per request (valgrind, same run)\n\n`cargo xtask bench-instructions`: the user-space instructions each contender executes per request — every thread, counted by callgrind between a zeroing and a dump around {} requests ({} per second for {} s, after a 2 s warm-up; the 1 KiB answer of `leash-bench upstream`), {} rounds; commit {}, {}. A count, not a time: other guests, frequency and steal do not move it (in this run a contender's rounds differ by at most {:.2} %), so a difference between builds is a result on any machine. It leaves out the kernel's share (system calls, the network stack) and memory stalls. valgrind hides the CPU's SHA extensions, so the audit chain's SHA-256 runs in software under it: its instructions are shown apart and left out of the figure.\n\n| contender | instructions per request | × nginx | software SHA-256 (left out) |\n| --- | ---: | ---: | ---: |\n",
        r["rate"].as_u64().unwrap_or(0) * r["seconds"].as_u64().unwrap_or(0),
        r["rate"],
        r["seconds"],
        ROUNDS,
        r["commit"].as_str().unwrap_or("?"),
        r["valgrind"].as_str().unwrap_or("valgrind"),
        spread * 100.0,
    );
    for (name, ir, sha) in &rows {
        let (lo, hi) = ir.range();
        let times = nginx.map_or_else(|| "—".to_owned(), |n| format!("{:.1}", lo / n));
        let _ = writeln!(
            md,
            "| {name} | {} – {} | {times} | {} |",
            thousands(lo),
            thousands(hi),
            thousands(sha.range().1)
        );
    }
    if let Some(rev) = r["against"].as_str() {
        let find = |n: &str| rows.iter().find(|(m, _, _)| *m == n).map(|(_, xs, _)| xs);
        if let (Some(base), Some(now)) =
            (find(&format!("leash-policy@{rev}")), find("leash-policy"))
        {
            let ((bl, bh), (nl, nh)) = (base.range(), now.range());
            let change = (nl + nh) / (bl + bh) - 1.0;
            let verdict = match against::change(base, now, true) {
                Change::Better => format!(
                    "executes fewer: {:.1} % (the ranges do not overlap)",
                    -change * 100.0
                ),
                Change::Worse => format!(
                    "executes more: {:.1} % (the ranges do not overlap)",
                    change * 100.0
                ),
                Change::Overlap => format!(
                    "inconclusive: {:+.1} %, inside the rounds' spread (the ranges overlap)",
                    change * 100.0
                ),
                Change::Single => "not judged (one round: no spread)".to_owned(),
                Change::NotMeasured => "not measured".to_owned(),
            };
            let _ = writeln!(
                md,
                "\nAgainst commit {rev} (`leash-policy@{rev}`, same run), this tree's `leash-policy`: {verdict}."
            );
        }
    }
    md.push_str(END);
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(base: [f64; 2]) -> Value {
        json!({
            "commit": "new", "against": "old", "rate": 100, "seconds": 5, "valgrind": "valgrind-3.19.0",
            "contenders": [
                {"name": "nginx", "instructions": [20_000.0, 20_100.0], "software_sha256": [0.0, 0.0]},
                {"name": "leash-policy", "instructions": [180_000.0, 181_000.0], "software_sha256": [40_000.0, 40_000.0]},
                {"name": "leash-policy@old", "instructions": base, "software_sha256": [40_000.0, 40_000.0]},
            ],
        })
    }

    #[test]
    fn the_section_says_what_the_counts_show() {
        let md = section(&run([217_000.0, 218_000.0]));
        assert!(
            md.starts_with(BEGIN) && md.ends_with(&format!("{END}\n")),
            "{md}"
        );
        assert!(
            md.contains("| leash-policy | 180.0k – 181.0k | 9.0 | 40.0k |"),
            "{md}"
        );
        assert!(
            md.contains("| nginx | 20.0k – 20.1k | 1.0 | 0.0k |"),
            "{md}"
        );
        assert!(md.contains("500 requests"), "{md}");
        // leash-policy's rounds: 1,000 apart in 180,000.
        assert!(md.contains("differ by at most 0.56 %"), "{md}");
        assert!(
            md.contains("executes fewer: 17.0 % (the ranges do not overlap)"),
            "{md}"
        );
        let md = section(&run([180_500.0, 182_000.0]));
        assert!(
            md.contains("inconclusive: -0.4 %, inside the rounds' spread (the ranges overlap)"),
            "{md}"
        );
        let md = section(&run([150_000.0, 151_000.0]));
        assert!(md.contains("executes more: 19.9 %"), "{md}");
    }
}
