//! `/api/series`: time series for the console's charts, bucketed here from
//! the audit index's hourly sums — the last day by hour, the last week or
//! month by day — stacked by provider, team or model (requests, tokens,
//! cost) or by policy action (violations). Every bucket of the range is
//! present, empty ones with 0, so a chart has no gaps to guess.

use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime, format_description::FormatItem, macros::format_description};

use super::{Answer, Console, query_param};
use crate::audit::{index::CubeKey, read::Totals};

const HOUR: &[FormatItem<'_>] = format_description!("[year]-[month]-[day]T[hour]");
const DAY: &[FormatItem<'_>] = format_description!("[year]-[month]-[day]");

/// The buckets of `range` ending now: (label, hour-key prefix), oldest
/// first.
fn buckets(range: &str, now: OffsetDateTime) -> Option<Vec<String>> {
    let (n, step, format) = match range {
        "day" => (24, Duration::hours(1), HOUR),
        "week" => (7, Duration::days(1), DAY),
        "month" => (30, Duration::days(1), DAY),
        _ => return None,
    };
    (0..n)
        .rev()
        .map(|i: i32| (now - step * i).format(format).ok())
        .collect()
}

/// Which number of a group of requests a chart shows.
fn measure(t: &Totals, metric: &str) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    match metric {
        "tokens" => (t.input_tokens + t.output_tokens) as f64,
        "cost_usd" => t.cost_usd,
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

impl Console {
    /// `/api/series?range=day|week|month&by=provider|team|model&metric=requests|tokens|cost_usd|violations`.
    pub(super) async fn series(&self, query: &str) -> Answer {
        let range = query_param(query, "range").unwrap_or_else(|| "day".into());
        let by = query_param(query, "by").unwrap_or_else(|| "provider".into());
        let metric = query_param(query, "metric").unwrap_or_else(|| "requests".into());
        if !["provider", "team", "model"].contains(&by.as_str())
            || !["requests", "tokens", "cost_usd", "violations"].contains(&metric.as_str())
        {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                "by: provider, team or model; metric: requests, tokens, cost_usd or violations",
            );
        }
        let Some(labels) = buckets(&range, OffsetDateTime::now_utc()) else {
            return Answer::error(StatusCode::BAD_REQUEST, "range: day, week or month");
        };
        let s = match self.summary().await {
            Ok(s) => s,
            Err(a) => return a,
        };
        let mut sums: BTreeMap<&str, BTreeMap<String, f64>> = BTreeMap::new();
        let slot = |hour: &str| {
            labels
                .iter()
                .find(|l| hour.starts_with(l.as_str()))
                .map(String::as_str)
        };
        if metric == "violations" {
            for (hour, actions) in &s.actions_by_hour {
                if let Some(b) = slot(hour) {
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
        } else {
            for (key, totals) in &s.cube {
                if let Some(b) = slot(&key.hour) {
                    *sums
                        .entry(b)
                        .or_default()
                        .entry(part(key, &by))
                        .or_default() += measure(totals, &metric);
                }
            }
        }
        let points: Vec<Value> = labels
            .iter()
            .map(|label| {
                let parts = sums.remove(label.as_str()).unwrap_or_default();
                json!({"start": label, "total": parts.values().sum::<f64>(), "parts": parts})
            })
            .collect();
        Answer::json(
            StatusCode::OK,
            &json!({
                "range": range,
                "bucket": if range == "day" { "hour" } else { "day" },
                "by": if metric == "violations" { "action" } else { by.as_str() },
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
        let day = buckets("day", now).unwrap_or_default();
        assert_eq!(day.len(), 24);
        assert_eq!(day[23], now.format(HOUR).unwrap_or_default());
        assert!(day[0] < day[23]);
        assert_eq!(buckets("month", now).map(|b| b.len()), Some(30));
        assert_eq!(buckets("year", now), None);
    }
}
