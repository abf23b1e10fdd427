//! Reading the audit trail back: records in chain order, filters, and the
//! sums behind `leash audit query`.

use std::{collections::BTreeMap, io, path::Path};

use serde_json::Value;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::chain;

/// Every complete record of `dir`, in chain order (torn tails skipped).
/// Holds the whole trail in memory: for tests and small trails; queries
/// stream with [`for_each`].
pub fn records(dir: &Path) -> io::Result<Vec<Value>> {
    let mut out = Vec::new();
    for_each(dir, |line| {
        if let Ok(v) = serde_json::from_slice(line) {
            out.push(v);
        }
        true
    })?;
    Ok(out)
}

/// Calls `f` on each complete record line of `dir`, in chain order, one
/// line in memory at a time; `f` returns `false` to stop.
pub fn for_each(dir: &Path, mut f: impl FnMut(&[u8]) -> bool) -> io::Result<()> {
    use std::io::BufRead as _;
    let mut line = Vec::with_capacity(4096);
    for file in chain::segments(dir)? {
        let mut reader = std::io::BufReader::with_capacity(256 * 1024, std::fs::File::open(&file)?);
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            if n > 1 && !f(&line[..n - 1]) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The record with `id` in the trail of `dir`, if there is one (lines
/// that cannot hold it are not parsed).
pub fn find(dir: &Path, id: &str) -> io::Result<Option<Value>> {
    let needle = format!("\"id\":\"{id}\"");
    let mut found = None;
    for_each(dir, |line| {
        if memchr::memmem::find(line, needle.as_bytes()).is_some()
            && let Ok(v) = serde_json::from_slice::<Value>(line)
            && v["id"] == id
        {
            found = Some(v);
            return false;
        }
        true
    })?;
    Ok(found)
}

/// Which policy outcomes the console lists as violations.
pub struct Violation;

impl Violation {
    /// A block, redaction, alert... (anything but allow, annotate and
    /// transform), or any record that raised an alert.
    pub fn is(action: &str, alerted: bool) -> bool {
        alerted || !matches!(action, "allow" | "annotate" | "transform")
    }
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
#[derive(Debug, Default, Clone)]
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
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// Requests with usage but no price.
    pub unpriced: u64,
    /// Requests that got no answer, or a 5xx (from the provider or Leash).
    #[serde(default)]
    pub errors: u64,
    /// Requests the policy blocked, and redacted.
    #[serde(default)]
    pub blocked: u64,
    #[serde(default)]
    pub redacted: u64,
}

impl Totals {
    /// Counts one record in.
    pub fn add(&mut self, r: &Value) {
        self.add_parts(
            r["usage"]["input_tokens"].as_u64().unwrap_or(0),
            r["usage"]["output_tokens"].as_u64().unwrap_or(0),
            r["cost_usd"].as_f64(),
            r["usage"].is_object(),
        );
        self.add_outcome(
            r["status"].as_u64(),
            r["policy"]["action"].as_str(),
            r["policy"]["shadow"] == true,
        );
    }

    /// Counts one request's outcome: its HTTP status (none: no answer) and
    /// the policy's action (a shadow decision changed nothing).
    pub fn add_outcome(&mut self, status: Option<u64>, action: Option<&str>, shadow: bool) {
        if status.is_none_or(|s| s >= 500) {
            self.errors += 1;
        }
        match action {
            _ if shadow => {}
            Some("block") => self.blocked += 1,
            Some("redact") => self.redacted += 1,
            _ => {}
        }
    }

    /// Counts one request in from its parts.
    pub fn add_parts(&mut self, input: u64, output: u64, cost: Option<f64>, has_usage: bool) {
        self.requests += 1;
        self.input_tokens += input;
        self.output_tokens += output;
        match cost {
            Some(c) => self.cost_usd += c,
            None if has_usage => self.unpriced += 1,
            None => {}
        }
    }

    /// Adds another group's totals.
    pub fn merge(&mut self, other: &Self) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_usd += other.cost_usd;
        self.unpriced += other.unpriced;
        self.errors += other.errors;
        self.blocked += other.blocked;
        self.redacted += other.redacted;
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

/// The groups `key` puts a record in (`team`, `provider`, `model`, `user`,
/// `exe`, `host`; `rule`: each policy rule that matched).
pub fn group_names<'a>(r: &'a Value, key: &str) -> Vec<&'a str> {
    match key {
        "team" | "user" | "exe" => vec![r["caller"][key].as_str().unwrap_or("-")],
        "rule" => r["policy"]["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect(),
        other => vec![r[other].as_str().unwrap_or("-")],
    }
}

/// Sums records by the value at `key` (see [`group_names`]).
pub fn sum_by<'a>(records: impl Iterator<Item = &'a Value>, key: &str) -> BTreeMap<String, Totals> {
    sum_grouped(records, |r| group_names(r, key))
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
