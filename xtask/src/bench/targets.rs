//! Issue 27's targets, each with a verdict computed from this run's data:
//! a figure measured in several rounds carries its range over them and is
//! "met" only if the whole range is, "missed" only if none of it is, else
//! "inconclusive (within noise)"; a figure measured once says so. Added
//! latency below zero is "below the noise floor", never a gain.

use std::fmt::Write as _;

use serde_json::Value;

use super::{f, scale};

/// A measured quantity: its value in each round (one element: measured
/// once).
pub(super) struct Measured(pub(super) Vec<f64>);

impl Measured {
    /// Lowest and highest (infinite when nothing was measured).
    pub(super) fn range(&self) -> (f64, f64) {
        self.0
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(*v), hi.max(*v))
            })
    }

    fn shown(&self, unit: &str, digits: usize) -> String {
        let (lo, hi) = self.range();
        if !(lo.is_finite() && hi.is_finite()) {
            return "not measured".to_owned();
        }
        if self.0.len() == 1 {
            format!("{lo:.digits$}{unit} (one run)")
        } else {
            format!(
                "{lo:.digits$} – {hi:.digits$}{unit} ({} rounds)",
                self.0.len()
            )
        }
    }

    /// Against `limit`: met at or below it (`at_most`), else at or above.
    fn verdict(&self, limit: f64, at_most: bool) -> &'static str {
        let (lo, hi) = self.range();
        if !(lo.is_finite() && hi.is_finite()) {
            return "not measured";
        }
        let ok = |v: f64| if at_most { v <= limit } else { v >= limit };
        match (ok(lo), ok(hi), self.0.len()) {
            (true, true, 1) => "met (one run: no spread)",
            (false, false, 1) => "missed (one run: no spread)",
            (true, true, _) => "met",
            (false, false, _) => "missed",
            _ => "inconclusive (within noise)",
        }
    }
}

pub(super) fn contender<'a>(r: &'a Value, name: &str) -> Option<&'a Value> {
    r["contenders"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

/// A latency (`key`: `p50_ms`, `p99_ms`) in each round of `open`, one
/// open-loop measurement (its `runs`).
pub(super) fn rounds(open: &Value, key: &str) -> Vec<f64> {
    open["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|run| f(&run["latency"][key]))
        .collect()
}

/// Per round: `q` of two measurements' latencies.
fn per_round(a: &Value, b: &Value, key: &str, q: impl Fn(f64, f64) -> f64) -> Measured {
    Measured(
        rounds(a, key)
            .into_iter()
            .zip(rounds(b, key))
            .map(|(x, y)| q(x, y))
            .collect(),
    )
}

pub(super) fn once(v: f64) -> Measured {
    Measured(if v.is_nan() { Vec::new() } else { vec![v] })
}

/// Added latency as shown: a negative figure is below the noise floor.
pub(super) fn added(ms: f64) -> String {
    if ms < 0.0 {
        format!("below the noise floor ({ms:+.3})")
    } else {
        format!("{ms:+.3}")
    }
}

/// The targets table (`leash-policy` against nginx and direct, the agent
/// against direct TLS).
#[allow(
    clippy::too_many_lines,
    reason = "one row per target, in the issue's order"
)]
pub(super) fn section(r: &Value) -> String {
    let mut md = String::from(
        "## Against the per-request cost targets (issue 27)\n\nEach row is computed from this run: a figure measured in every round shows its range over the rounds, and its verdict is `met` only if the whole range meets the target, `missed` only if none of it does, otherwise `inconclusive (within noise)`; a figure measured once says so.\n\n| target | measured | verdict |\n| --- | --- | --- |\n",
    );
    let (Some(direct), Some(nginx), Some(leash)) = (
        contender(r, "direct"),
        contender(r, "nginx"),
        contender(r, "leash-policy"),
    ) else {
        md.push_str("| (needs the direct, nginx and leash-policy contenders) | not measured | not measured |\n");
        return md;
    };
    let rates = super::plan_rates(r);
    let mut row = |target: &str, shown: String, verdict: &str| {
        let _ = writeln!(md, "| {target} | {shown} | {verdict} |");
    };
    let cpu =
        once(f(&leash["cpu_us_per_request_at_1000"]) / f(&nginx["cpu_us_per_request_at_1000"]));
    row(
        "gateway CPU per request at 1000 RPS ≤ 1.25× nginx's",
        format!("×{}", cpu.shown("", 2)),
        cpu.verdict(1.25, true),
    );
    let sat = once(f(&leash["saturation"]["rps"]) / f(&nginx["saturation"]["rps"]));
    row(
        "gateway saturation (32 connections) ≥ 0.8× nginx's",
        format!("×{}", sat.shown("", 2)),
        sat.verdict(0.8, false),
    );
    if let Some(ri) = super::at_1000(&rates) {
        // Leash's added latency minus nginx's, both over direct in the same
        // round: Leash's latency minus nginx's.
        for (key, name, over) in [("p50_ms", "P50", 0.05), ("p99_ms", "P99", 0.2)] {
            let diff = per_round(
                &leash["open_loop"][ri],
                &nginx["open_loop"][ri],
                key,
                |l, n| l - n,
            );
            row(
                &format!("added latency at 1000 RPS, {name} ≤ nginx's added + {over} ms"),
                format!("Leash − nginx {}", diff.shown(" ms", 3)),
                diff.verdict(over, true),
            );
        }
    }
    let single = |c: &Value| {
        f(&c["single_client"]["latency"]["p99_ms"])
            - f(&direct["single_client"]["latency"]["p99_ms"])
    };
    let (ls, ns) = (single(leash), single(nginx));
    let one = once(if ns > 0.0 { ls / ns } else { f64::NAN });
    row(
        "one client back to back: added P99 ≤ 2× nginx's added P99",
        format!(
            "Leash {} ms, nginx {} ms: ×{}",
            added(ls),
            added(ns),
            one.shown("", 2)
        ),
        if ns > 0.0 {
            one.verdict(2.0, true)
        } else {
            "inconclusive (nginx's added P99 is below the noise floor)"
        },
    );
    let t = &r["transparent"];
    if let Some(open) = t["open_loop"].as_array()
        && open.len() == 2
    {
        let p50 = per_round(&open[1], &open[0], "p50_ms", |l, d| l - d);
        row(
            "transparent keep-alive at 1000 RPS: added P50 ≤ 0.12 ms over direct TLS",
            p50.shown(" ms", 3),
            p50.verdict(0.12, true),
        );
    }
    let rps = |name: &str| {
        t["new_connections"]
            .as_array()
            .and_then(|n| n.iter().find(|c| c["name"] == name))
            .map_or(f64::NAN, |c| f(&c["result"]["rps"]))
    };
    let (leash_rps, direct_rps) = (rps("leash-transparent"), rps("direct-tls"));
    let conns = once(leash_rps / direct_rps);
    row(
        "transparent new TLS connections/s ≥ 0.85× direct TLS",
        format!(
            "×{} ({leash_rps:.0} vs {direct_rps:.0} per s)",
            conns.shown("", 3)
        ),
        conns.verdict(0.85, false),
    );
    let ttft = |c: &Value| f(&c["sse"]["ttft"]["p50_ms"]);
    let streams = once(ttft(leash) - ttft(nginx));
    row(
        &format!(
            "streams ({}): added time to first token ≤ nginx's + 0.1 ms at P50",
            leash["sse"]["requests"]
        ),
        format!("Leash − nginx {}", streams.shown(" ms", 3)),
        streams.verdict(0.1, true),
    );
    let top = scale::CONCURRENCY[scale::CONCURRENCY.len() - 1];
    match (
        scale::run_at(r, "leash-policy", top),
        scale::run_at(r, "direct", top),
    ) {
        (Some(l), Some(d)) => {
            let stall = scale::stall_free(r, "leash-policy", top) == Some(true);
            row(
                &format!("{top} concurrent SSE streams with no stall"),
                format!(
                    "{} failed; longest gap {:.3} ms (upstream's own: {:.3} ms)",
                    l["errors"],
                    f(&l["gap"]["max_ms"]),
                    f(&d["gap"]["max_ms"]),
                ),
                if stall {
                    "met (one run: no spread)"
                } else {
                    "missed (one run: no spread)"
                },
            );
            let ttft = once(f(&l["ttft"]["p99_ms"]) - f(&d["ttft"]["p99_ms"]));
            row(
                &format!("{top} concurrent SSE streams: added TTFT P99 ≤ 0.5 ms"),
                format!("Leash − direct {}", ttft.shown(" ms", 3)),
                ttft.verdict(0.5, true),
            );
        }
        _ => row(
            "512 concurrent SSE streams with no stall, added TTFT P99 ≤ 0.5 ms",
            "not measured in this run".to_owned(),
            "not measured",
        ),
    }
    let rss = once(f(&leash["rss_idle_mib"]));
    row(
        "idle RSS ≤ 20 MiB",
        rss.shown(" MiB", 1),
        rss.verdict(20.0, true),
    );
    // Measured by its own run (`cargo xtask bench-firstrun`), if any.
    let first = std::fs::read_to_string(crate::root().join("bench/firstrun.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let target = "a newcomer's first `cargo xtask run` is ready in under 4 min";
    match first {
        Some(first) => {
            let seconds = f(&first["seconds"]);
            row(
                target,
                format!(
                    "{} (one run, commit {}; see its section)",
                    super::firstrun::minutes(seconds),
                    first["commit"].as_str().unwrap_or("?")
                ),
                once(seconds).verdict(super::firstrun::TARGET_SECONDS, true),
            );
        }
        None => row(
            target,
            "not measured (`cargo xtask bench-firstrun`)".to_owned(),
            "not measured",
        ),
    }
    let idle = &r["idle_connections"];
    let target = "10,000 idle keep-alive client connections ≤ 64 KiB each";
    if !idle["held"].is_u64() {
        row(
            target,
            "not measured in this run".to_owned(),
            "not measured",
        );
        return md;
    }
    let held_all = idle["held"].as_u64() == idle["connections"].as_u64();
    let per = once(if held_all {
        f(&idle["kib_per_connection"])
    } else {
        f64::NAN
    });
    row(
        target,
        if held_all {
            per.shown(" KiB", 1)
        } else {
            format!("not all held ({} of {})", idle["held"], idle["connections"])
        },
        per.verdict(64.0, true),
    );
    md
}

/// Figures in the form other gateways publish (Busbar-style), so readers
/// can compare: added P99 at concurrency 1, the highest rate with P99
/// under 20 ms, stall-free streams at 64/256/512.
pub(super) fn busbar(r: &Value) -> String {
    let mut md = String::from(
        "## In the form peers publish\n\n| contender | added P99 at concurrency 1 (ms) | highest offered rate with P99 < 20 ms (RPS) | stall-free streams at 64 / 256 / 512 |\n| --- | ---: | ---: | --- |\n",
    );
    let Some(direct) = contender(r, "direct") else {
        return md;
    };
    let top = super::plan_rates(r).into_iter().fold(0.0, f64::max);
    for c in r["contenders"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("?");
        if name == "direct" {
            continue;
        }
        let a99 = f(&c["single_client"]["latency"]["p99_ms"])
            - f(&direct["single_client"]["latency"]["p99_ms"]);
        let highest = c["open_loop"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| {
                f(&o["p99_ms"]) < 20.0
                    && o["errors"].as_u64() == Some(0)
                    && o["not_sent"].as_u64() == Some(0)
            })
            .map(|o| f(&o["rate"]))
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let highest = match highest {
            Some(v) if (v - top).abs() < f64::EPSILON => {
                format!("≥ {v:.0} (the highest rate run)")
            }
            Some(v) => format!("{v:.0}"),
            None => "none of the rates run".to_owned(),
        };
        let stalls = scale::CONCURRENCY
            .iter()
            .map(|n| scale::stall_word(r, name, *n))
            .collect::<Vec<_>>()
            .join(" / ");
        let _ = writeln!(
            md,
            "| {name} | {} | {highest} | {stalls} |",
            if a99.is_nan() {
                "—".to_owned()
            } else {
                added(a99)
            }
        );
    }
    md
}
