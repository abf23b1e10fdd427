//! `cargo xtask bench-fleet [--quick]`: the fleet store at scale (issue
//! 29). `leash-bench fleet` loads 10 million records from 50 simulated
//! hosts into PostgreSQL (1 million with `--quick`), then measures, in one
//! run, every fleet console API call and `leash audit query --postgres
//! --sum-by team` while the collector ingests, and collector throughput
//! with one and with two collectors. Writes `bench/fleet.json` and its
//! section of BENCHMARKS.md; the verdicts are computed from that data.

use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{build_release, write_section};
use crate::target_dir;

const BEGIN: &str =
    "<!-- fleet-bench:begin (written by `cargo xtask bench-fleet`; do not edit) -->";
const END: &str = "<!-- fleet-bench:end -->";
/// Goals of issue 29.
const GOAL_CONSOLE_P95_MS: f64 = 300.0;
const GOAL_QUERY_S: f64 = 1.0;

pub fn bench_fleet(quick: bool) -> Result<()> {
    build_release()?;
    crate::ensure_postgres_server()?;
    let release = target_dir().join("release");
    let records = if quick { "1000000" } else { "10000000" };
    let seconds = if quick { "30" } else { "120" };
    let backlog = if quick { "50000" } else { "100000" };
    let python = target_dir().join("leash-venv/bin/python");
    if !python.exists() {
        bail!("the test venv (nats-server) is missing: run `cargo xtask test` once first");
    }
    let out = Command::new(release.join("leash-bench"))
        .args([
            "fleet",
            "--records",
            records,
            "--seconds",
            seconds,
            "--backlog",
            backlog,
        ])
        .args(quick.then_some("--quick"))
        .env("LEASH_BIN", release.join("leash"))
        .env("LEASH_TEST_PYTHON", &python)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running leash-bench fleet")?;
    if !out.status.success() {
        bail!("leash-bench fleet failed ({})", out.status);
    }
    let mut results: Value =
        serde_json::from_slice(&out.stdout).context("leash-bench fleet's results")?;
    results["date"] = Value::String(crate::today());
    super::save_results("fleet.json", &results, render)?;
    eprintln!("bench-fleet: wrote bench/fleet.json and BENCHMARKS.md's section");
    Ok(())
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn verdict(value: f64, goal: f64) -> &'static str {
    if value.is_nan() {
        "not measured"
    } else if value <= goal {
        "met"
    } else {
        "missed"
    }
}

/// Writes BENCHMARKS.md's section from `bench/fleet.json`'s data.
pub fn render(r: &Value) -> Result<()> {
    let calls = &r["console"]["calls"];
    let statuses = &r["console"]["statuses"];
    let answered = statuses["200"].as_u64().unwrap_or(0);
    let all: u64 = statuses
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    let console_p95 = num(&calls["p95_ms"]);
    let mut md = format!(
        "{BEGIN}\n## The fleet store at scale (PostgreSQL, collectors, fleet console)\n\n\
`cargo xtask bench-fleet`{}: {} request records from {} simulated hosts over {} days, chained and sealed as Leash writes them, bulk-loaded into PostgreSQL 15 ({}; store {} after the load; settings `{}`), with NATS JetStream and release `leash collector`s, all on this 2-core machine. {}.\n\n\
Loading: `COPY` {:.0} s, rollups refilled (as migration 4 does for an existing store) {:.0} s. The collector's console sums the whole store once, {:.1} s, and saves that sum; a restarted collector's console starts from it in {:.2} s.\n\n\
### While the collector ingests\n\n\
Offered {:.0} records/s from every host, stored {:.0} records/s, for {:.0} s; meanwhile 4 clients load the console's pages back to back and `leash audit query --postgres --sum-by team` runs back to back (whole store, and `--since 24h`).\n\n\
| call | answered | p50 ms | p95 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |\n",
        if r["quick"].as_bool() == Some(true) {
            " --quick"
        } else {
            ""
        },
        r["records"],
        r["hosts"],
        r["days"],
        r["rows_at_end"]
            .as_u64()
            .map_or_else(|| "?".to_owned(), |n| format!("{n} rows at the end")),
        r["store_size"].as_str().unwrap_or("?"),
        r["settings"].as_str().unwrap_or("?"),
        r["date"].as_str().unwrap_or("?"),
        num(&r["load"]["copy_s"]),
        num(&r["load"]["rollups_s"]),
        num(&r["summary"]["first_s"]),
        num(&r["summary"]["from_saved_s"]),
        num(&r["ingest"]["rate"]),
        num(&r["ingest"]["stored_per_s"]),
        num(&r["ingest"]["seconds"]),
    );
    if let Some(paths) = r["console"]["by_path"].as_object() {
        for (path, p) in paths {
            let _ = writeln!(
                md,
                "| `GET {path}` | {} | {:.1} | {:.1} | {:.1} |",
                p["count"],
                num(&p["p50_ms"]),
                num(&p["p95_ms"]),
                num(&p["max_ms"]),
            );
        }
    }
    let _ = writeln!(
        md,
        "| **every console call** | {answered} of {all} | {:.1} | **{console_p95:.1}** | {:.1} |",
        num(&calls["p50_ms"]),
        num(&calls["max_ms"]),
    );
    let q = &r["queries"];
    for (name, key) in [
        (
            "`leash audit query --postgres --sum-by team`",
            "sum_by_team",
        ),
        ("… `--since 24h`", "sum_by_team_since_24h"),
    ] {
        let _ = writeln!(
            md,
            "| {name} ({} runs, whole process) | | {:.0} | **{:.0}** | {:.0} |",
            q[key]["runs"],
            num(&q[key]["p50_s"]) * 1000.0,
            num(&q[key]["p95_s"]) * 1000.0,
            num(&q[key]["max_s"]) * 1000.0,
        );
    }
    let query_p95 = num(&q["sum_by_team"]["p95_s"]);
    let every_answered = answered == all && all > 0;
    let _ = writeln!(
        md,
        "\nGoals (issue 29): every fleet console call within {GOAL_CONSOLE_P95_MS:.0} ms at p95 — {} ({console_p95:.1} ms{}); `--sum-by team` within {GOAL_QUERY_S:.0} s — {} (p95 {:.0} ms).\n",
        if every_answered {
            verdict(console_p95, GOAL_CONSOLE_P95_MS)
        } else {
            "missed"
        },
        if every_answered {
            String::new()
        } else {
            format!(", but only {answered} of {all} calls answered 200")
        },
        verdict(query_p95, GOAL_QUERY_S),
        query_p95 * 1000.0,
    );
    md.push_str(&throughput(r));
    write_section(BEGIN, END, &md)
}

/// The collector throughput part of the section.
fn throughput(r: &Value) -> String {
    let rates = |n: &str| -> Vec<f64> {
        r["collectors"]["records_per_s"][n]
            .as_array()
            .map(|a| a.iter().map(num).collect())
            .unwrap_or_default()
    };
    let (one, two) = (rates("1"), rates("2"));
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    };
    let ((lo1, hi1), (lo2, hi2)) = (range(&one), range(&two));
    let comparison = if lo2 > hi1 {
        format!(
            "two collectors are faster ({:.2}× at the medians)",
            super::median(two.clone()) / super::median(one.clone())
        )
    } else if hi2 < lo1 {
        format!(
            "two collectors are slower ({:.2}× at the medians): on two cores PostgreSQL, NATS and both collectors share the CPU",
            super::median(two.clone()) / super::median(one.clone())
        )
    } else {
        "the difference between one and two collectors is inconclusive (the rounds' ranges overlap)"
            .to_owned()
    };
    format!(
        "### Collector throughput\n\nA backlog of {} records (every host) waiting in JetStream, then the collectors started on it; records stored per second from the moment they are ready until the backlog is stored, on a store of {}+ rows. {} rounds, alternating.\n\n| collectors | records/s (each round) |\n| --- | --- |\n| 1 | {} (range {lo1:.0}–{hi1:.0}) |\n| 2 | {} (range {lo2:.0}–{hi2:.0}) |\n\nComputed from these rounds: {comparison}.\n{END}",
        r["collectors"]["backlog"],
        r["records"],
        one.len(),
        one.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        two.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}
