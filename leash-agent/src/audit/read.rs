//! Reading the audit trail back: records in chain order, filters, and the
//! sums behind `leash audit query`.

use std::{collections::BTreeMap, io, path::Path};

use serde_json::Value;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::chain;

/// Every complete record of `dir`, in chain order (torn tails skipped).
pub fn records(dir: &Path) -> io::Result<Vec<Value>> {
    let mut out = Vec::new();
    for file in chain::segments(dir)? {
        let data = std::fs::read(&file)?;
        let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in data[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            if let Ok(v) = serde_json::from_slice(line) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// `--since`: a duration back from now (`30m`, `24h`, `7d`) or an RFC 3339
/// time.
pub fn parse_since(text: &str) -> Result<OffsetDateTime, SinceError> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(text).map_err(|_| SinceError(text.to_owned()))?;
    Ok(OffsetDateTime::now_utc() - ago)
}

/// `--since` that is neither a duration nor a time.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a duration (30m, 24h, 7d) or an RFC 3339 time")]
pub struct SinceError(String);

/// Which records a query selects.
#[derive(Debug, Default)]
pub struct Filter {
    pub since: Option<OffsetDateTime>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub team: Option<String>,
    pub action: Option<String>,
    pub host: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &Value) -> bool {
        let eq = |want: &Option<String>, got: &Value| {
            want.as_deref().is_none_or(|w| got.as_str() == Some(w))
        };
        let recent = self.since.is_none_or(|since| {
            r["ts"]
                .as_str()
                .and_then(|ts| OffsetDateTime::parse(ts, &Rfc3339).ok())
                .is_some_and(|ts| ts >= since)
        });
        recent
            && r["event"].is_null()
            && eq(&self.provider, &r["provider"])
            && eq(&self.model, &r["model"])
            && eq(&self.team, &r["caller"]["team"])
            && eq(&self.host, &r["host"])
            && self
                .action
                .as_deref()
                .is_none_or(|a| r["policy"]["action"].as_str().unwrap_or("allow") == a)
    }
}

/// Totals for one group of records.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// Requests with usage but no price.
    pub unpriced: u64,
}

impl Totals {
    /// Counts one record in.
    pub fn add(&mut self, r: &Value) {
        self.requests += 1;
        self.input_tokens += r["usage"]["input_tokens"].as_u64().unwrap_or(0);
        self.output_tokens += r["usage"]["output_tokens"].as_u64().unwrap_or(0);
        match r["cost_usd"].as_f64() {
            Some(c) => self.cost_usd += c,
            None if r["usage"].is_object() => self.unpriced += 1,
            None => {}
        }
    }
}

/// Sums records into the groups `names` puts each one in (none, one, or
/// several).
pub fn sum_grouped<'a, N: Into<String>>(
    records: impl Iterator<Item = &'a Value>,
    mut names: impl FnMut(&'a Value) -> Vec<N>,
) -> BTreeMap<String, Totals> {
    let mut groups: BTreeMap<String, Totals> = BTreeMap::new();
    for r in records {
        for name in names(r) {
            groups.entry(name.into()).or_default().add(r);
        }
    }
    groups
}

/// Sums records by the value at `key` (`team`, `provider`, `model`,
/// `user`, `exe`, `host`; `rule`: each policy rule that matched).
pub fn sum_by<'a>(records: impl Iterator<Item = &'a Value>, key: &str) -> BTreeMap<String, Totals> {
    sum_grouped(records, |r| match key {
        "team" | "user" | "exe" => vec![r["caller"][key].as_str().unwrap_or("-")],
        "rule" => r["policy"]["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect(),
        other => vec![r[other].as_str().unwrap_or("-")],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_and_sums() {
        let rs = [
            json!({"ts": "2026-01-01T00:00:00Z", "provider": "openai", "model": "gpt-4o", "caller": {"team": "a"}, "usage": {"input_tokens": 10, "output_tokens": 5}, "cost_usd": 0.5}),
            json!({"ts": "2026-01-02T00:00:00Z", "provider": "anthropic", "model": "claude", "caller": {"team": "a"}, "usage": {"input_tokens": 1, "output_tokens": 1}, "cost_usd": null}),
            json!({"ts": "2026-01-03T00:00:00Z", "provider": "openai", "model": "gpt-4o", "caller": {"team": "b"}, "usage": null, "cost_usd": null}),
            json!({"ts": "2026-01-03T00:00:00Z", "event": "torn_tail"}),
        ];
        let f = Filter {
            provider: Some("openai".into()),
            ..Filter::default()
        };
        assert_eq!(rs.iter().filter(|r| f.matches(r)).count(), 2);
        let f = Filter {
            since: Some(parse_since("2026-01-02T00:00:00Z").unwrap()),
            ..Filter::default()
        };
        assert_eq!(rs.iter().filter(|r| f.matches(r)).count(), 2);
        let all = Filter::default();
        let sums = sum_by(rs.iter().filter(|r| all.matches(r)), "team");
        assert_eq!(sums["a"].requests, 2);
        assert_eq!(sums["a"].input_tokens, 11);
        assert!((sums["a"].cost_usd - 0.5).abs() < 1e-12);
        assert_eq!(sums["a"].unpriced, 1);
        assert_eq!(sums["b"].requests, 1);
        assert!(parse_since("3x").is_err());
        assert!(parse_since("24h").is_ok());
    }
}
