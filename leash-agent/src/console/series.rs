//! `/api/series`: time series for the console's charts, bucketed here from
//! the audit index's sums — the last hour by minute, the last day by hour,
//! the last week or month by day — stacked by provider, team or model
//! (requests, errors, blocked, redacted, tokens, cost) or by policy action
//! (violations), or the added time's P50 and P99 (overhead). Every bucket
//! of the range is present, empty ones with 0, so a chart has no gaps to
//! guess.

use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime, format_description::FormatItem, macros::format_description};

use super::{Answer, Console, query_param};
use crate::audit::{
    index::{CubeKey, Overhead, Summary},
    read::Totals,
};

const MINUTE: &[FormatItem<'_>] = format_description!("[year]-[month]-[day]T[hour]:[minute]");
const HOUR: &[FormatItem<'_>] = format_description!("[year]-[month]-[day]T[hour]");
const DAY: &[FormatItem<'_>] = format_description!("[year]-[month]-[day]");

const METRICS: &[&str] = &[
    "requests",
    "errors",
    "blocked",
    "redacted",
    "tokens",
    "cost_usd",
    "violations",
    "overhead",
];

/// The buckets of `range` ending now (labels, oldest first), and what one
/// bucket is.
fn buckets(range: &str, now: OffsetDateTime) -> Option<(Vec<String>, &'static str)> {
    let (n, step, format, unit) = match range {
        "hour" => (60, Duration::minutes(1), MINUTE, "minute"),
        "day" => (24, Duration::hours(1), HOUR, "hour"),
        "week" => (7, Duration::days(1), DAY, "day"),
        "month" => (30, Duration::days(1), DAY, "day"),
        _ => return None,
    };
    let labels = (0..n)
        .rev()
        .map(|i: i32| (now - step * i).format(format).ok())
        .collect::<Option<Vec<_>>>()?;
    Some((labels, unit))
}

/// Which number of a group of requests a chart shows.
fn measure(t: &Totals, metric: &str) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    match metric {
        "tokens" => (t.input_tokens + t.output_tokens) as f64,
        "cost_usd" => t.cost_usd,
        "errors" => t.errors as f64,
        "blocked" => t.blocked as f64,
        "redacted" => t.redacted as f64,
        _ => t.requests as f64,
    }
}

/// The part of a stack a request group belongs to.
fn part(key: &CubeKey, by: &str) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    match by {
        "team" => dash(&key.team),
        "model" => dash(&key.model),
        _ => key.provider.clone(),
    }
}

/// The bucket `time` (an hour or minute key) falls in.
fn slot<'a>(labels: &'a [String], time: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|l| time.starts_with(l.as_str()))
        .map(String::as_str)
}

/// Sums per bucket and part.
type Sums<'a> = BTreeMap<&'a str, BTreeMap<String, f64>>;

fn stacked<'a>(
    s: &Summary,
    labels: &'a [String],
    minutes: bool,
    metric: &str,
    by: &str,
) -> Sums<'a> {
    let mut sums = Sums::new();
    let cube = if minutes { &s.minute_cube } else { &s.cube };
    if metric == "violations" && !minutes {
        for (hour, actions) in &s.actions_by_hour {
            if let Some(b) = slot(labels, hour) {
                for (action, n) in actions {
                    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
                    let n = *n as f64;
                    *sums
                        .entry(b)
                        .or_default()
                        .entry(action.clone())
                        .or_default() += n;
                }
            }
        }
        return sums;
    }
    for (key, totals) in cube {
        let Some(b) = slot(labels, &key.hour) else {
            continue;
        };
        let parts = sums.entry(b).or_default();
        if metric == "violations" {
            // By minute only blocks and redactions are kept.
            *parts.entry("block".into()).or_default() += measure(totals, "blocked");
            *parts.entry("redact".into()).or_default() += measure(totals, "redacted");
        } else {
            *parts.entry(part(key, by)).or_default() += measure(totals, metric);
        }
    }
    for parts in sums.values_mut() {
        parts.retain(|_, v| *v != 0.0);
    }
    sums
}

/// P50 and P99 of the added time per bucket.
fn overhead<'a>(s: &Summary, labels: &'a [String], minutes: bool) -> Sums<'a> {
    let mut per: BTreeMap<&str, Overhead> = BTreeMap::new();
    let source = if minutes {
        &s.overhead_by_minute
    } else {
        &s.overhead_by_hour
    };
    for (time, o) in source {
        if let Some(b) = slot(labels, time) {
            per.entry(b).or_default().merge(o);
        }
    }
    per.into_iter()
        .filter_map(|(b, o)| {
            let p50 = o.quantile(0.5)?;
            let p99 = o.quantile(0.99)?;
            Some((
                b,
                BTreeMap::from([("p50".to_owned(), p50), ("p99".to_owned(), p99)]),
            ))
        })
        .collect()
}

impl Console {
    /// `/api/series?range=hour|day|week|month&by=provider|team|model&metric=…`
    /// (see [`METRICS`]).
    pub(super) async fn series(&self, query: &str) -> Answer {
        let range = query_param(query, "range").unwrap_or_else(|| "day".into());
        let by = query_param(query, "by").unwrap_or_else(|| "provider".into());
        let metric = query_param(query, "metric").unwrap_or_else(|| "requests".into());
        if !["provider", "team", "model"].contains(&by.as_str())
            || !METRICS.contains(&metric.as_str())
        {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "by: provider, team or model; metric: {}",
                    METRICS.join(", ")
                ),
            );
        }
        let Some((labels, unit)) = buckets(&range, OffsetDateTime::now_utc()) else {
            return Answer::error(StatusCode::BAD_REQUEST, "range: hour, day, week or month");
        };
        let s = match self.summary().await {
            Ok(s) => s,
            Err(a) => return a,
        };
        let minutes = unit == "minute";
        let mut sums = if metric == "overhead" {
            overhead(&s, &labels, minutes)
        } else {
            stacked(&s, &labels, minutes, &metric, &by)
        };
        let points: Vec<Value> = labels
            .iter()
            .map(|label| {
                let parts = sums.remove(label.as_str()).unwrap_or_default();
                let total = if metric == "overhead" {
                    parts.get("p99").copied().unwrap_or(0.0)
                } else {
                    // Not `sum()`: an empty float sum is -0.0.
                    parts.values().fold(0.0, |a, v| a + v)
                };
                json!({"start": label, "total": total, "parts": parts})
            })
            .collect();
        let stacked_by = match metric.as_str() {
            "violations" => "action",
            "overhead" => "percentile",
            _ => by.as_str(),
        };
        Answer::json(
            StatusCode::OK,
            &json!({
                "range": range,
                "bucket": unit,
                "by": stacked_by,
                "metric": metric,
                "buckets": points,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_end_now_oldest_first() {
        let now = OffsetDateTime::from_unix_timestamp(1_796_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let day = buckets("day", now).map(|b| b.0).unwrap_or_default();
        assert_eq!(day.len(), 24);
        assert_eq!(day[23], now.format(HOUR).unwrap_or_default());
        assert!(day[0] < day[23]);
        assert_eq!(buckets("month", now).map(|b| b.0.len()), Some(30));
        let hour = buckets("hour", now).map(|b| b.0).unwrap_or_default();
        assert_eq!(hour.len(), 60);
        assert_eq!(hour[59], now.format(MINUTE).unwrap_or_default());
        assert_eq!(buckets("year", now), None);
    }
}
