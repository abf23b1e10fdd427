//! `bench/latency.svg` from a run's results.

use std::fmt::Write as _;

use serde_json::Value;

use super::f;

/// p50 (solid) and p99 (dashed) latency against offered load, one colour
/// per contender, log-scaled latency.
#[allow(
    clippy::many_single_char_names,
    clippy::cast_precision_loss,
    reason = "plot geometry: x, y, w, h are the clearest names; counts are tiny"
)]
pub(super) fn plot(r: &Value) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 420.0, 70.0, 190.0, 30.0, 50.0);
    let contenders = r["contenders"].as_array().cloned().unwrap_or_default();
    let rates = super::plan_rates(r);
    let mut lo = f64::MAX;
    let mut hi = f64::MIN;
    for c in &contenders {
        for o in c["open_loop"].as_array().into_iter().flatten() {
            for k in ["p50_ms", "p99_ms"] {
                let v = f(&o[k]);
                if v.is_finite() && v > 0.0 {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
            }
        }
    }
    if lo >= hi {
        lo = 0.01;
        hi = 10.0;
    }
    let (llo, lhi) = (lo.log10().floor(), hi.log10().ceil());
    let x = |i: usize| left + (w - left - right) * (i as f64) / ((rates.len().max(2) - 1) as f64);
    let y = |v: f64| top + (h - top - bottom) * (1.0 - (v.log10() - llo) / (lhi - llo));
    let colours = [
        "#444444", "#2a9d8f", "#e76f51", "#264653", "#e9c46a", "#8e44ad", "#1f77b4",
    ];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"18\">Latency (ms, log scale) vs offered load: p50 solid, p99 dashed</text>\n"
    );
    let mut decade = llo;
    while decade <= lhi {
        let v = 10f64.powf(decade);
        let yy = y(v);
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v}</text>",
            w - right,
            left - 6.0,
            yy + 4.0
        );
        decade += 1.0;
    }
    for (i, rate) in rates.iter().enumerate() {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{rate:.0}/s</text>",
            x(i),
            h - bottom + 20.0
        );
    }
    for (ci, c) in contenders.iter().enumerate() {
        let colour = colours[ci % colours.len()];
        for (k, dash) in [("p50_ms", ""), ("p99_ms", " stroke-dasharray=\"5,4\"")] {
            let points: Vec<String> = c["open_loop"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(i, o)| {
                    let v = f(&o[k]);
                    (v.is_finite() && v > 0.0).then(|| format!("{:.1},{:.1}", x(i), y(v)))
                })
                .collect();
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
                points.join(" ")
            );
        }
        let ly = top + 18.0 * ci as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{:.1}\">{}</text>",
            w - right + 10.0,
            w - right + 30.0,
            w - right + 36.0,
            ly + 4.0,
            c["name"].as_str().unwrap_or("?")
        );
    }
    svg.push_str("</svg>\n");
    svg
}
