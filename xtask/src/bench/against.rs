//! The policy gateway against the same gateway built from an earlier
//! commit (`cargo xtask bench --against REV`), both contenders of one run:
//! each figure measured in every round shows both ranges, and a
//! difference counts only where the ranges do not overlap.

use std::fmt::Write as _;

use serde_json::Value;

use super::{
    f,
    targets::{Measured, contender, once},
};

/// How a figure of this tree compares with the base's, by their ranges
/// over the rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Beyond the base's range, in the better direction.
    Better,
    Worse,
    /// The ranges overlap.
    Overlap,
    /// A side measured once: no spread to judge a difference by.
    Single,
    NotMeasured,
}

/// Lower (or higher, `lower_is_better` false) beyond the other's range:
/// better / worse; overlapping ranges: no result.
pub(super) fn change(base: &Measured, current: &Measured, lower_is_better: bool) -> Change {
    let ((bl, bh), (cl, ch)) = (base.range(), current.range());
    if !(bl.is_finite() && cl.is_finite()) {
        return Change::NotMeasured;
    }
    let single = base.0.len() < 2 || current.0.len() < 2;
    let (better, worse) = if lower_is_better {
        (ch < bl, cl > bh)
    } else {
        (cl > bh, ch < bl)
    };
    match (better, worse, single) {
        (_, _, true) => Change::Single,
        (true, _, false) => Change::Better,
        (_, true, false) => Change::Worse,
        _ => Change::Overlap,
    }
}

fn verdict(base: &Measured, current: &Measured, lower_is_better: bool) -> &'static str {
    match change(base, current, lower_is_better) {
        Change::NotMeasured => "not measured",
        Change::Single => "not judged (one run: no spread)",
        Change::Better => "better",
        Change::Worse => "worse",
        Change::Overlap => "inconclusive (ranges overlap)",
    }
}

fn shown(m: &Measured, digits: usize) -> String {
    let (lo, hi) = m.range();
    if !lo.is_finite() {
        "—".to_owned()
    } else if m.0.len() == 1 || (hi - lo).abs() < f64::EPSILON {
        format!("{lo:.digits$}")
    } else {
        format!("{lo:.digits$} – {hi:.digits$}")
    }
}

/// The section, when the run had an earlier build as a contender.
pub(super) fn section(r: &Value) -> String {
    let Some(rev) = r["against"].as_str() else {
        return String::new();
    };
    let (Some(base), Some(current)) = (
        contender(r, &format!("leash-policy@{rev}")),
        contender(r, "leash-policy"),
    ) else {
        return String::new();
    };
    let mut md = format!(
        "## Against commit {rev} (same run)\n\n`leash-policy` of this tree and of commit {rev}, contenders of this one run (same rounds, same upstream, alternating). Ranges are over the rounds; a difference is a result only where the two ranges do not overlap.\n\n| measure | {rev} | this tree | verdict |\n| --- | ---: | ---: | --- |\n"
    );
    let mut row = |what: String, b: &Measured, c: &Measured, digits: usize, lower: bool| {
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {} |",
            shown(b, digits),
            shown(c, digits),
            verdict(b, c, lower)
        );
    };
    let cpu = |c: &Value| {
        Measured(
            c["cpu_us_rounds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect(),
        )
    };
    row(
        "CPU per request at 1000 RPS (µs)".into(),
        &cpu(base),
        &cpu(current),
        0,
        true,
    );
    for (i, rate) in super::plan_rates(r).iter().enumerate() {
        for key in ["p50_ms", "p99_ms"] {
            let m = |c: &Value| Measured(super::targets::rounds(&c["open_loop"][i], key));
            row(
                format!("{} at {rate:.0} RPS (ms)", key.trim_end_matches("_ms")),
                &m(base),
                &m(current),
                3,
                true,
            );
        }
    }
    row(
        "saturation, 32 connections (RPS)".into(),
        &once(f(&base["saturation"]["rps"])),
        &once(f(&current["saturation"]["rps"])),
        0,
        false,
    );
    row(
        "one client back to back, P99 (ms)".into(),
        &once(f(&base["single_client"]["latency"]["p99_ms"])),
        &once(f(&current["single_client"]["latency"]["p99_ms"])),
        3,
        true,
    );
    md
}
