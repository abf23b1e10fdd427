//! `cargo xtask bench-telemetry [--quick]`: what OpenTelemetry export
//! costs. Three gateways (release, default pipeline modules) in front of
//! the lean upstream, measured in one run with rounds alternating: tracing
//! off; on (`sample_ratio: 1.0`, every exchange a span and metric points)
//! to a collector that accepts; on, with the collector down (its port
//! closed). Open-loop load at 1,000 req/s: latency percentiles and the
//! gateway's CPU per request. Writes `bench/telemetry.json` and its section
//! of BENCHMARKS.md. `cargo xtask bench` runs the same measurement.

use std::fmt::Write as _;

use anyhow::Result;
use serde_json::{Value, json};

use super::{
    LOADGEN_CPU, SERVER_CPU, bench_tool, build_release, cpu_seconds, difference, f, free_port,
    lean_upstream, median, spawn_gateway, write_section,
};
use crate::target_dir;

const BEGIN: &str =
    "<!-- telemetry-bench:begin (written by `cargo xtask bench-telemetry`; do not edit) -->";
const END: &str = "<!-- telemetry-bench:end -->";
const RATE: f64 = 1000.0;
const VARIANTS: [&str; 3] = ["off", "on", "collector_down"];

pub fn bench_telemetry(quick: bool) -> Result<()> {
    build_release()?;
    let release = target_dir().join("release");
    let results = measure(&release.join("leash"), &release.join("leash-bench"), quick)?;
    save(&results)?;
    eprintln!("bench-telemetry: wrote bench/telemetry.json and BENCHMARKS.md's section");
    Ok(())
}

/// Writes `bench/telemetry.json` and BENCHMARKS.md's section.
pub fn save(results: &Value) -> Result<()> {
    super::save_results("telemetry.json", results, render)
}

/// The measurement itself (also part of `cargo xtask bench`), with the
/// release `leash` and `leash-bench`.
pub fn measure(leash: &std::path::Path, tool: &std::path::Path, quick: bool) -> Result<Value> {
    let (rounds, seconds) = if quick { (3, 3.0) } else { (5, 10.0) };
    let dir = target_dir().join("bench-telemetry");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (_upstream, up) = lean_upstream(tool, &dir, "upstream.log", &[])?;
    // The collector: a lean server that answers every POST 200 (the
    // exporter's cost is Leash's either way).
    let (_collector, collector) = lean_upstream(tool, &dir, "collector.log", &[])?;
    let down = free_port()?;
    let otlp = |port: u16| {
        format!(
            "telemetry:\n  otlp: {{ endpoint: \"http://127.0.0.1:{port}\", sample_ratio: 1.0 }}\n"
        )
    };
    let providers = format!("providers:\n  openai: {{ upstream: \"http://127.0.0.1:{up}/v1\" }}\n");
    let gateways = [
        spawn_gateway(leash, &dir, "off", &providers)?,
        spawn_gateway(
            leash,
            &dir,
            "on",
            &format!("{providers}{}", otlp(collector)),
        )?,
        spawn_gateway(
            leash,
            &dir,
            "collector_down",
            &format!("{providers}{}", otlp(down)),
        )?,
    ];
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); VARIANTS.len()];
    for round in 0..rounds {
        // Rotate which goes first, so drift cannot favour one.
        for k in 0..VARIANTS.len() {
            let i = (round + k) % VARIANTS.len();
            let (proc, port) = &gateways[i];
            eprintln!(
                "bench-telemetry: round {} of {rounds}: {}",
                round + 1,
                VARIANTS[i]
            );
            let before = cpu_seconds(proc.pid());
            let mut r = bench_tool(
                tool,
                "load",
                &format!("http://127.0.0.1:{port}/v1/openai/chat/completions"),
                &[
                    ("--rate", RATE.to_string()),
                    ("--seconds", seconds.to_string()),
                ],
            )?;
            // Includes the 1 s warm-up the tool sends first.
            r["cpu_us_per_request"] =
                json!((cpu_seconds(proc.pid()) - before) * 1e6 / (RATE * (seconds + 1.0)));
            runs[i].push(r);
        }
    }
    let mut results = json!({
        "date": crate::today(),
        "quick": quick,
        "rate": RATE,
        "seconds": seconds,
        "rounds": rounds,
        "placement": format!("load generator on CPU {LOADGEN_CPU}; gateways, upstream and collector on CPU {SERVER_CPU}"),
    });
    for (name, r) in VARIANTS.iter().zip(runs) {
        results[*name] = json!(r);
    }
    Ok(results)
}

/// Median over rounds of `field` (a latency percentile, or the CPU).
fn med(r: &Value, variant: &str, field: &str) -> f64 {
    median(rounds_of(r, variant, field))
}

fn rounds_of(r: &Value, variant: &str, field: &str) -> Vec<f64> {
    r[variant]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| match field {
            "cpu_us_per_request" => f(&v[field]),
            _ => f(&v["latency"][field]),
        })
        .collect()
}

/// "adds X (spread S)" or "inconclusive" when inside the rounds' spread.
fn compare(r: &Value, base: &str, variant: &str, field: &str, unit: &str) -> String {
    let (added, noise) = difference(&rounds_of(r, base, field), &rounds_of(r, variant, field));
    if added.abs() <= noise {
        format!("inconclusive ({added:+.3} {unit}, within the rounds' spread of {noise:.3})")
    } else {
        format!("{added:+.3} {unit} (rounds' spread {noise:.3})")
    }
}

/// Writes BENCHMARKS.md's section from `bench/telemetry.json`'s data.
pub fn render(r: &Value) -> Result<()> {
    let mut md = format!(
        "{BEGIN}\n## What OpenTelemetry export costs (tracing on vs off)\n\n`cargo xtask bench-telemetry`: three gateways (release, default modules) and the lean upstream on CPU {SERVER_CPU}, open-loop load at {:.0} req/s on CPU {LOADGEN_CPU}: tracing off; on (`telemetry.otlp`, `sample_ratio: 1.0`: a span and child spans per exchange plus metric points) to a collector that accepts; on with the collector down (port closed: every export fails, spans are dropped and counted). {} rounds of {} s each, order rotating. {}.\n\n| | p50 ms | p99 ms | CPU µs / request |\n| --- | ---: | ---: | ---: |\n",
        f(&r["rate"]),
        r["rounds"],
        r["seconds"],
        r["date"].as_str().unwrap_or("?"),
    );
    for v in VARIANTS {
        let _ = writeln!(
            md,
            "| {} | {:.3} | {:.3} | {:.1} |",
            v.replace('_', " "),
            med(r, v, "p50_ms"),
            med(r, v, "p99_ms"),
            med(r, v, "cpu_us_per_request"),
        );
    }
    let errors: u64 = VARIANTS
        .iter()
        .flat_map(|k| r[*k].as_array().into_iter().flatten())
        .map(|v| v["errors"].as_u64().unwrap_or(0))
        .sum();
    let _ = writeln!(
        md,
        "\nMedians over rounds. Tracing on vs off: p50 {}, p99 {}, CPU {}. Collector down vs on: p50 {}, p99 {}. Errors: {errors}.\n{END}",
        compare(r, "off", "on", "p50_ms", "ms"),
        compare(r, "off", "on", "p99_ms", "ms"),
        compare(r, "off", "on", "cpu_us_per_request", "µs"),
        compare(r, "on", "collector_down", "p50_ms", "ms"),
        compare(r, "on", "collector_down", "p99_ms", "ms"),
    );
    write_section(BEGIN, END, &md)
}
