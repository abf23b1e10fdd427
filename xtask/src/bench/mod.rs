//! `cargo xtask bench [--quick]`: Leash side by side with a direct call and a
//! do-nothing proxy (nginx), measured from outside by `leash-bench` against
//! the same lean upstream, in one run, with the load generator pinned to
//! one CPU and the contender + upstream to the other. Writes
//! `BENCHMARKS.md`, `bench/results.json` and `bench/latency.svg`.

mod against;
mod console;
mod contenders;
mod extra;
mod firstrun;
mod fleet;
mod instructions;
mod micro;
mod plot;
mod proc;
mod report;
mod run;
mod scale;
mod targets;
mod telemetry;
mod translate;
mod transparent;

pub use self::{
    console::bench_console,
    firstrun::bench_firstrun,
    fleet::bench_fleet,
    instructions::bench_instructions,
    micro::bench_micro,
    run::{bench, build_release, rewrite_report},
    telemetry::bench_telemetry,
    translate::bench_translate,
};
use self::{
    contenders::{
        Contender, EXAMPLE_POLICY, bench_tool, bench_tool_in, bench_tool_on, start_leash,
        start_leash_console, start_litellm, start_nginx, start_portkey,
    },
    plot::plot,
    proc::{Proc, cpu_seconds, family, free_port, pinned, status_mib, wait_addr, wait_port, which},
    report::report,
    run::{at_1000, f, median, ms, plan_rates},
};

/// Puts `md` (which starts with `begin` and ends with `end` and a line
/// break) in place of BENCHMARKS.md's section between those markers, or
/// at the end.
fn write_section(begin: &str, end: &str, md: &str) -> anyhow::Result<()> {
    let path = crate::root().join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path)?;
    let new = match (text.find(begin), text.find(end)) {
        (Some(a), Some(b)) => format!("{}{md}{}", &text[..a], &text[b + end.len() + 1..]),
        _ => format!("{text}\n{md}"),
    };
    std::fs::write(&path, new)?;
    Ok(())
}

/// BENCHMARKS.md's sections that other runs write (`bench-console`,
/// `bench-compare`), put back from their results after the main report
/// rewrote the file.
fn other_sections() -> anyhow::Result<()> {
    let load = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(crate::root().join("bench").join(name)).ok()?)
            .ok()
    };
    if let Some(r) = load("console.json") {
        console::render(&r)?;
    }
    if let Some(r) = load("micro.json") {
        micro::render(&r)?;
    }
    if let Some(r) = load("translate.json") {
        translate::render(&r)?;
    }
    if let Some(r) = load("telemetry.json") {
        telemetry::render(&r)?;
    }
    if let Some(r) = load("fleet.json") {
        fleet::render(&r)?;
    }
    if let Some(r) = load("firstrun.json") {
        firstrun::render(&r)?;
    }
    if let Some(r) = load("instructions.json") {
        instructions::render(&r)?;
    }
    Ok(())
}

/// `leash-bench upstream` on the server CPU, on a free port, with `args`
/// (its log `dir/<log>`); waits until it listens. Returns it and its port.
fn lean_upstream(
    tool: &std::path::Path,
    dir: &std::path::Path,
    log: &str,
    args: &[&str],
) -> anyhow::Result<(Proc, u16)> {
    let port = free_port()?;
    let proc = Proc::spawn(
        pinned(SERVER_CPU, tool)
            .args(["upstream", "--listen", &format!("127.0.0.1:{port}")])
            .args(args),
        &dir.join(log),
    )?;
    wait_port(port, "upstream")?;
    Ok((proc, port))
}

/// `leash gateway`'s arguments as every bench starts it: warnings only,
/// the configuration `config`, the listener on `port`, the admin listener
/// on `admin`, the audit trail in `audit`.
fn gateway_args<'c>(
    cmd: &'c mut std::process::Command,
    config: &std::path::Path,
    port: u16,
    admin: u16,
    audit: &std::path::Path,
) -> &'c mut std::process::Command {
    cmd.args(["--log-level", "warn", "gateway", "--config"])
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--audit-dir")
        .arg(audit)
}

/// `leash gateway` (release) on the server CPU with the config `yaml`,
/// its files under `dir` named `name`; waits until it listens. Returns it
/// and its port.
fn spawn_gateway(
    leash: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    yaml: &str,
) -> anyhow::Result<(Proc, u16)> {
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml)?;
    let port = free_port()?;
    let proc = Proc::spawn(
        gateway_args(
            &mut pinned(SERVER_CPU, leash),
            &config,
            port,
            free_port()?,
            &dir.join(format!("audit-{name}")),
        ),
        &dir.join(format!("{name}.log")),
    )?;
    wait_port(port, name)?;
    Ok((proc, port))
}

/// Writes `bench/<file>` (a side run's results), then its section of
/// BENCHMARKS.md with `render`.
fn save_results(
    file: &str,
    results: &serde_json::Value,
    render: fn(&serde_json::Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let out = crate::root().join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join(file), serde_json::to_string_pretty(results)?)?;
    render(results)
}

/// How far `other`'s median lies from `base`'s, and the noise that
/// difference must beat to mean anything: the larger round-to-round spread
/// (max − min) of the two.
fn difference(base: &[f64], other: &[f64]) -> (f64, f64) {
    let spread = |xs: &[f64]| {
        xs.iter().copied().fold(f64::NAN, f64::max) - xs.iter().copied().fold(f64::NAN, f64::min)
    };
    (
        median(other.to_vec()) - median(base.to_vec()),
        spread(base).max(spread(other)),
    )
}

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
