//! `cargo xtask bench-translate [--quick]`: what the unified API's
//! translation adds. One gateway (release) in front of the lean upstream
//! answering Anthropic Messages; at 1,000 req/s, the same conversation sent
//! natively (`/v1/anthropic/v1/messages`, Anthropic shape) and through the
//! unified API (`/v1/chat/completions`, `model: anthropic/…`, `OpenAI`
//! shape: translated there and back), rounds alternating so the comparison
//! is within the run. Writes `bench/translate.json` and its section of
//! BENCHMARKS.md. `cargo xtask bench` runs the same measurement.

use std::fmt::Write as _;

use anyhow::Result;
use serde_json::{Value, json};

use super::{
    LOADGEN_CPU, SERVER_CPU, bench_tool, build_release, difference, f, lean_upstream,
    spawn_gateway, write_section,
};
use crate::target_dir;

const BEGIN: &str =
    "<!-- translate-bench:begin (written by `cargo xtask bench-translate`; do not edit) -->";
const END: &str = "<!-- translate-bench:end -->";
const RATE: f64 = 1000.0;

const NATIVE: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":256,"system":"Be brief.","messages":[{"role":"user","content":"Say hello"}]}"#;
const UNIFIED: &str = r#"{"model":"anthropic/claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hello"}]}"#;

pub fn bench_translate(quick: bool) -> Result<()> {
    build_release()?;
    let release = target_dir().join("release");
    let results = measure(&release.join("leash"), &release.join("leash-bench"), quick)?;
    save(&results)?;
    eprintln!("bench-translate: wrote bench/translate.json and BENCHMARKS.md's section");
    Ok(())
}

/// Writes `bench/translate.json` and BENCHMARKS.md's section.
pub fn save(results: &Value) -> Result<()> {
    super::save_results("translate.json", results, render)
}

/// The measurement itself (also part of `cargo xtask bench`), with the
/// release `leash` and `leash-bench`.
pub fn measure(leash: &std::path::Path, tool: &std::path::Path, quick: bool) -> Result<Value> {
    let (rounds, seconds) = if quick { (3, 3.0) } else { (5, 10.0) };
    let dir = target_dir().join("bench-translate");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (_upstream, up) = lean_upstream(tool, &dir, "upstream.log", &[])?;
    let (_gateway, port) = spawn_gateway(
        leash,
        &dir,
        "leash",
        &format!("providers:\n  anthropic: {{ upstream: \"http://127.0.0.1:{up}\" }}\n"),
    )?;
    let paths = [
        ("native", "/v1/anthropic/v1/messages", NATIVE),
        ("unified", "/v1/chat/completions", UNIFIED),
    ];
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(), Vec::new()];
    for round in 0..rounds {
        // Alternate which goes first, so drift cannot favour one.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (name, path, body) = paths[i];
            eprintln!("bench-translate: round {} of {rounds}: {name}", round + 1);
            let r = bench_tool(
                tool,
                "load",
                &format!("http://127.0.0.1:{port}{path}"),
                &[
                    ("--rate", RATE.to_string()),
                    ("--seconds", seconds.to_string()),
                    ("--body", body.to_owned()),
                ],
            )?;
            runs[i].push(r);
        }
    }
    let results = json!({
        "date": crate::today(),
        "quick": quick,
        "rate": RATE,
        "seconds": seconds,
        "rounds": rounds,
        "placement": format!("load generator on CPU {LOADGEN_CPU}; gateway and upstream on CPU {SERVER_CPU}"),
        "native": runs[0],
        "unified": runs[1],
    });
    Ok(results)
}

/// Writes BENCHMARKS.md's section from `bench/translate.json`'s data.
pub fn render(r: &Value) -> Result<()> {
    let col = |key: &str, field: &str| -> Vec<f64> {
        r[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| f(&v["latency"][field]))
            .collect()
    };
    let mut md = format!(
        "{BEGIN}\n## What translation adds (unified API vs native)\n\n`cargo xtask bench-translate`: one gateway (release) and the lean upstream answering Anthropic Messages on CPU {SERVER_CPU}, open-loop load at {:.0} req/s on CPU {LOADGEN_CPU}; the same conversation natively (`/v1/anthropic/v1/messages`) and through the unified API (`/v1/chat/completions`, `model: anthropic/claude-sonnet-4-5`, translated both ways); {} rounds of {} s each, alternating. {}.\n\n| | native p50 ms | unified p50 ms | added p50 ms | native p99 ms | unified p99 ms | added p99 ms |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        f(&r["rate"]),
        r["rounds"],
        r["seconds"],
        r["date"].as_str().unwrap_or("?"),
    );
    let mut conclusions = Vec::new();
    let rounds = r["native"].as_array().map_or(0, Vec::len);
    for i in 0..rounds {
        let at = |key: &str, field: &str| f(&r[key][i]["latency"][field]);
        let _ = writeln!(
            md,
            "| round {} | {:.3} | {:.3} | {:+.3} | {:.3} | {:.3} | {:+.3} |",
            i + 1,
            at("native", "p50_ms"),
            at("unified", "p50_ms"),
            at("unified", "p50_ms") - at("native", "p50_ms"),
            at("native", "p99_ms"),
            at("unified", "p99_ms"),
            at("unified", "p99_ms") - at("native", "p99_ms"),
        );
    }
    for field in ["p50_ms", "p99_ms"] {
        let (added, noise) = difference(&col("native", field), &col("unified", field));
        let label = field.trim_end_matches("_ms");
        conclusions.push(if added.abs() <= noise {
            format!(
                "{label}: inconclusive ({added:+.3} ms, within the rounds' spread of {noise:.3} ms)"
            )
        } else {
            format!("{label}: translation adds {added:+.3} ms (rounds' spread {noise:.3} ms)")
        });
    }
    let errors: u64 = ["native", "unified"]
        .iter()
        .flat_map(|k| r[*k].as_array().into_iter().flatten())
        .map(|v| v["errors"].as_u64().unwrap_or(0))
        .sum();
    let _ = writeln!(
        md,
        "\nMedian over rounds — {}. Errors: {errors}.\n{END}",
        conclusions.join("; ")
    );
    write_section(BEGIN, END, &md)
}
