//! Load of another shape: many streams at once (is any chunk held back?)
//! and many idle keep-alive connections (what does each one cost?).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::Stdio,
};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{
    LOADGEN_CPU,
    contenders::{Contender, EXAMPLE_POLICY, start_leash},
    f,
    proc::{cpu_seconds, pinned, status_mib},
};

/// Streams at once, per contender.
pub(super) const CONCURRENCY: [usize; 3] = [64, 256, 512];
/// The upstream's gap between stream events (`--gap-ms`).
pub(super) const UPSTREAM_GAP_MS: f64 = 10.0;
/// A gap longer than the upstream's own longest by more than this is a
/// stall.
pub(super) const STALL_MS: f64 = 5.0;
/// Idle connections held against one gateway.
pub(super) const IDLE_CONNECTIONS: usize = 10_000;

/// Each contender `fast` picks, at each of [`CONCURRENCY`] streams at once.
pub(super) fn streams(tool: &Path, contenders: &[Contender]) -> Vec<Value> {
    let mut out = Vec::new();
    for c in contenders.iter().filter(|c| super::extra::fast(c)) {
        let mut runs = Vec::new();
        for n in CONCURRENCY {
            eprintln!("bench: {n} streams at once {}", c.name);
            // A contender that cannot take the load is recorded, not fatal.
            // Its CPU time over the run (user + system, 10 ms ticks) says
            // how much of its one CPU the burst took.
            let before = cpu_seconds(c.pid);
            let mut run = c
                .measure(tool, "streams", &[("--concurrency", n.to_string())])
                .unwrap_or_else(
                    |e| json!({"concurrency": n, "errors": n, "error": format!("{e:#}")}),
                );
            run["contender_cpu_ms"] = json!((cpu_seconds(c.pid) - before) * 1e3);
            runs.push(run);
        }
        out.push(json!({"name": c.name, "runs": runs}));
    }
    out
}

/// A policy gateway of its own (its connection cap above the count),
/// [`IDLE_CONNECTIONS`] served keep-alive connections held open: its RSS
/// before and after.
pub(super) fn idle(leash: &Path, tool: &Path, dir: &Path, upstream: u16) -> Result<Value> {
    let c = start_leash(
        "leash-idle",
        "as leash-policy, holding idle connections",
        leash,
        dir,
        upstream,
        &format!(
            "gateway: {{ max_connections: {} }}\n{EXAMPLE_POLICY}",
            IDLE_CONNECTIONS + 1024
        ),
    )?;
    // One request first: pools, caches and the allocator's arenas exist
    // before the baseline is read.
    c.measure(
        tool,
        "load",
        &[("--rate", "100".into()), ("--seconds", "1".into())],
    )?;
    let before = status_mib(c.pid, "VmRSS:");
    let mut holder = pinned(LOADGEN_CPU, tool)
        .args(["idle", "--url", &c.url, "--connections"])
        .arg(IDLE_CONNECTIONS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start leash-bench idle")?;
    let mut line = String::new();
    BufReader::new(holder.stdout.take().context("idle's stdout")?).read_line(&mut line)?;
    let held: Value =
        serde_json::from_str(&line).with_context(|| format!("leash-bench idle said {line:?}"))?;
    let after = status_mib(c.pid, "VmRSS:");
    drop(holder.stdin.take());
    let _ = holder.wait();
    let n = f(&held["held"]);
    Ok(json!({
        "connections": IDLE_CONNECTIONS,
        "held": held["held"], "errors": held["errors"],
        "rss_before_mib": before, "rss_after_mib": after,
        "kib_per_connection": if n > 0.0 { (after - before) * 1024.0 / n } else { f64::NAN },
    }))
}

/// Whether `name`'s run at `n` streams at once was stall-free: every
/// stream completed, and no gap between chunks was more than [`STALL_MS`]
/// longer than the longest the upstream's own streams showed (the
/// `direct` contender at the same concurrency, same run). `None` when
/// either was not measured.
pub(super) fn stall_free(r: &Value, name: &str, n: usize) -> Option<bool> {
    let run = run_at(r, name, n)?;
    let direct = run_at(r, "direct", n)?;
    Some(
        run["errors"].as_u64() == Some(0)
            && f(&run["gap"]["max_ms"]) <= f(&direct["gap"]["max_ms"]) + STALL_MS,
    )
}

/// `yes` / `no` / `—` (not measured), the reference for `direct`.
pub(super) fn stall_word(r: &Value, name: &str, n: usize) -> &'static str {
    if name == "direct" {
        return "(reference)";
    }
    match stall_free(r, name, n) {
        Some(true) => "yes",
        Some(false) => "no",
        None => "—",
    }
}

/// The section: streams at once per contender, and the idle connections.
pub(super) fn section(r: &Value) -> String {
    use std::fmt::Write as _;
    let mut md = format!(
        "## Many streams at once\n\nEach contender gets N streams at the same moment (one per connection; the upstream's stream, its events {UPSTREAM_GAP_MS:.0} ms apart by its timer). A run is stall-free when every stream completed and no gap between chunks was more than {STALL_MS:.0} ms longer than the longest gap of the upstream's own streams at the same concurrency (`direct`, this run). CPU is the contender's own CPU time over the run (user + system, 10 ms ticks; for `direct`, the upstream's), per stream in brackets: it shares one CPU with the upstream.\n\n| contender | streams | failed | TTFT p50 ms | TTFT p99 ms | gap min ms | gap p99 ms | gap max ms | CPU ms (per stream) | stall-free |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    );
    if !r["streams"].is_array() {
        md.push_str("| (not measured in this run) | | | | | | | | | |\n");
    }
    for c in r["streams"].as_array().into_iter().flatten() {
        for run in c["runs"].as_array().into_iter().flatten() {
            let n = usize::try_from(run["concurrency"].as_u64().unwrap_or(0)).unwrap_or(0);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
                c["name"].as_str().unwrap_or("?"),
                run["concurrency"],
                run["errors"],
                f(&run["ttft"]["p50_ms"]),
                f(&run["ttft"]["p99_ms"]),
                f(&run["gap_min_ms"]),
                f(&run["gap"]["p99_ms"]),
                f(&run["gap"]["max_ms"]),
                stream_cpu(run, n),
                stall_word(r, c["name"].as_str().unwrap_or("?"), n)
            );
        }
    }
    let idle = &r["idle_connections"];
    if idle.is_object() {
        let _ = write!(
            md,
            "\n## Idle connections\n\nA policy gateway of its own holding {} served keep-alive connections (one request each, then idle): {} held, {} failed; RSS {:.1} MiB before, {:.1} MiB after: **{:.1} KiB per connection**.\n",
            idle["connections"],
            idle["held"],
            idle["errors"],
            f(&idle["rss_before_mib"]),
            f(&idle["rss_after_mib"]),
            f(&idle["kib_per_connection"]),
        );
    }
    md
}

/// A run's contender CPU time and its share per stream; "—" where it was
/// not measured (results from before it was).
fn stream_cpu(run: &Value, n: usize) -> String {
    match run["contender_cpu_ms"].as_f64() {
        Some(ms) if n > 0 => {
            #[allow(clippy::cast_precision_loss, reason = "a stream count")]
            let per = ms / n as f64;
            format!("{ms:.0} ({per:.2})")
        }
        _ => "—".to_owned(),
    }
}

/// One contender's run at `n` streams at once.
pub(super) fn run_at<'a>(r: &'a Value, name: &str, n: usize) -> Option<&'a Value> {
    r["streams"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)?["runs"]
        .as_array()?
        .iter()
        .find(|run| run["concurrency"].as_u64() == Some(n as u64))
}
