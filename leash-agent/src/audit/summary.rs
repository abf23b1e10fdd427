//! What a stretch of the audit trail holds, in sums: requests, tokens,
//! cost and outcomes by hour, team, provider and model (and by minute for
//! the newest traffic); by user, executable, host and caller; policy
//! outcomes by rule and hour; added time as histograms; the shadow-AI
//! inventory; tools offered and called. Summaries of consecutive stretches merge; every map is
//! bounded. The index (`index`) keeps one per segment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::read::{Totals, Violation};

/// Distinct keys kept per map of one summary; past it, `other`.
const MAX_KEYS: usize = 20_000;
/// Callers kept per shadow-AI host, and per tool.
const MAX_SHADOW_CALLERS: usize = 20;
/// Teams counted per tool (past it, `other`).
const MAX_TOOL_TEAMS: usize = 200;
const OTHER: &str = "other";

/// Where a request falls: hour (`2026-11-30T12`), team, provider, model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CubeKey {
    pub hour: String,
    pub team: Option<String>,
    pub provider: String,
    pub model: Option<String>,
}

/// Policy outcomes of one rule.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleCounts {
    pub requests: u64,
    pub detectors: BTreeMap<String, u64>,
}

/// One unlisted LLM host seen (shadow AI).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowHost {
    pub connections: u64,
    pub callers: Vec<String>,
    pub last: Option<String>,
}

/// One tool's use: requests that offered it to a model, calls of it (in
/// answers, or MCP `tools/call`), calls in an exchange the policy blocked;
/// by team (calls and offers), and the first callers seen.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolUse {
    pub offered: u64,
    pub called: u64,
    pub blocked: u64,
    pub teams: BTreeMap<String, u64>,
    pub callers: Vec<String>,
}

impl ToolUse {
    fn seen(&mut self, team: &str, caller: &str) {
        if self.teams.len() < MAX_TOOL_TEAMS || self.teams.contains_key(team) {
            *self.teams.entry(team.to_owned()).or_default() += 1;
        } else {
            *self.teams.entry(OTHER.to_owned()).or_default() += 1;
        }
        if self.callers.len() < MAX_SHADOW_CALLERS && !self.callers.iter().any(|c| c == caller) {
            self.callers.push(caller.to_owned());
        }
    }

    fn merge(&mut self, other: &Self) {
        self.offered += other.offered;
        self.called += other.called;
        self.blocked += other.blocked;
        for (t, n) in &other.teams {
            *bounded(&mut self.teams, t) += n;
        }
        for c in &other.callers {
            if self.callers.len() < MAX_SHADOW_CALLERS && !self.callers.contains(c) {
                self.callers.push(c.clone());
            }
        }
    }
}

/// Time Leash added to requests (`overhead_ms`), counted in logarithmic
/// buckets of microseconds, 8 per doubling: mergeable across segments,
/// and a percentile read from it is within 4.5 % of the exact one.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overhead(BTreeMap<u16, u64>);

impl Overhead {
    const PER_DOUBLING: f64 = 8.0;

    pub fn add(&mut self, ms: f64) {
        let us = (ms * 1000.0).max(1.0);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "log2 of at least 1, times 8: a small positive number"
        )]
        let bucket = (us.log2() * Self::PER_DOUBLING)
            .floor()
            .min(f64::from(u16::MAX)) as u16;
        *self.0.entry(bucket).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Self) {
        for (b, n) in &other.0 {
            *self.0.entry(*b).or_default() += n;
        }
    }

    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    /// The `q` quantile (0..=1) in milliseconds: the middle of its bucket
    /// (geometric); `None` without requests.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank between 1 and the count"
        )]
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n.max(1));
        let mut seen = 0;
        self.0.iter().find_map(|(b, c)| {
            seen += c;
            (seen >= rank).then(|| ((f64::from(*b) + 0.5) / Self::PER_DOUBLING).exp2() / 1000.0)
        })
    }
}

/// Minutes of the newest traffic kept by minute (the console's "last
/// hour" chart); older traffic is kept by hour.
pub const RECENT_MINUTES: usize = 120;
/// The summaries' format: a stored summary of an older format is made
/// again.
pub const FORMAT: u32 = 3;

/// What a stretch of the trail holds, in sums.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(default)]
    pub format: u32,
    /// Bytes of the segment covered (complete lines only).
    pub bytes: u64,
    /// Records of every kind.
    pub records: u64,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    /// Requests (not events) by hour, team, provider and model.
    #[serde(with = "pairs")]
    pub cube: BTreeMap<CubeKey, Totals>,
    pub by_user: BTreeMap<String, Totals>,
    pub by_exe: BTreeMap<String, Totals>,
    pub by_host: BTreeMap<String, Totals>,
    /// The process where known, else the client address.
    pub by_caller: BTreeMap<String, Totals>,
    pub by_rule: BTreeMap<String, RuleCounts>,
    /// Violations (blocks, redactions, alerts...) by hour and action.
    pub actions_by_hour: BTreeMap<String, BTreeMap<String, u64>>,
    pub violations: u64,
    pub shadow: BTreeMap<String, ShadowHost>,
    /// Added time by hour.
    #[serde(default)]
    pub overhead_by_hour: BTreeMap<String, Overhead>,
    /// The newest [`RECENT_MINUTES`] minutes with requests, by minute
    /// (`2026-11-30T12:34`): the cube, and added time.
    #[serde(default, with = "pairs")]
    pub minute_cube: BTreeMap<CubeKey, Totals>,
    #[serde(default)]
    pub overhead_by_minute: BTreeMap<String, Overhead>,
    /// Tools offered and called, by name.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolUse>,
}

/// A map with structured keys, written as a list of pairs.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// The fields of a record the index reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Slim {
    ts: String,
    event: Option<String>,
    provider: String,
    model: Option<String>,
    host: String,
    endpoint: String,
    caller: SlimCaller,
    usage: Option<SlimUsage>,
    cost_usd: Option<f64>,
    policy: Option<SlimPolicy>,
    status: Option<u64>,
    overhead_ms: Option<f64>,
    tools: Option<SlimTools>,
    mcp: Option<SlimMcp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SlimTools {
    offered: Vec<String>,
    called: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SlimMcp {
    tool: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SlimCaller {
    team: Option<String>,
    user: Option<String>,
    exe: Option<String>,
    addr: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SlimUsage {
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SlimPolicy {
    action: Option<String>,
    findings: Vec<SlimFinding>,
    alerts: Option<serde::de::IgnoredAny>,
    shadow: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SlimFinding {
    rule: String,
    detector: String,
    count: Option<u64>,
}

/// `map[key]`, or `map["other"]` once the map is full.
fn bounded<'a, V: Default>(map: &'a mut BTreeMap<String, V>, key: &str) -> &'a mut V {
    let key = if map.len() >= MAX_KEYS && !map.contains_key(key) {
        OTHER
    } else {
        key
    };
    map.entry(key.to_owned()).or_default()
}

impl Summary {
    /// Counts one record line in (a line that is not a record is skipped).
    /// Returns whether the record is a violation.
    pub fn add_line(&mut self, line: &[u8]) -> bool {
        let Ok(r) = serde_json::from_slice::<Slim>(line) else {
            return false;
        };
        self.records += 1;
        if self.first_ts.is_none() {
            self.first_ts = Some(r.ts.clone());
        }
        self.last_ts = Some(r.ts.clone());
        match r.event.as_deref() {
            Some("shadow_ai") => {
                let host = bounded(&mut self.shadow, &r.endpoint);
                host.connections += 1;
                host.last = Some(r.ts.clone());
                if let Some(exe) = r.caller.exe
                    && host.callers.len() < MAX_SHADOW_CALLERS
                    && !host.callers.contains(&exe)
                {
                    host.callers.push(exe);
                }
                return false;
            }
            Some(_) => return false,
            None => {}
        }
        let (input, output, has_usage) = r
            .usage
            .as_ref()
            .map_or((0, 0, false), |u| (u.input_tokens, u.output_tokens, true));
        let (action, shadow) = r
            .policy
            .as_ref()
            .map_or((None, false), |p| (p.action.as_deref(), p.shadow));
        let add = |t: &mut Totals| {
            t.add_parts(input, output, r.cost_usd, has_usage);
            t.add_outcome(r.status, action, shadow);
        };
        let hour = r.ts.get(..13).unwrap_or("-").to_owned();
        let mut key = CubeKey {
            hour: hour.clone(),
            team: r.caller.team.clone(),
            provider: r.provider.clone(),
            model: r.model.clone(),
        };
        if self.cube.len() >= MAX_KEYS && !self.cube.contains_key(&key) {
            key.model = Some(OTHER.to_owned());
        }
        let overhead = r.overhead_ms.unwrap_or(0.0);
        bounded(&mut self.overhead_by_hour, &hour).add(overhead);
        let minute_key = CubeKey {
            hour: r.ts.get(..16).unwrap_or("-").to_owned(),
            ..key.clone()
        };
        self.add_recent(minute_key, overhead, &add);
        add(self.cube.entry(key).or_default());
        add(bounded(
            &mut self.by_user,
            r.caller.user.as_deref().unwrap_or("-"),
        ));
        add(bounded(
            &mut self.by_exe,
            r.caller.exe.as_deref().unwrap_or("-"),
        ));
        add(bounded(&mut self.by_host, &r.host));
        let caller = r.caller.exe.as_deref().or_else(|| {
            r.caller
                .addr
                .as_deref()
                .and_then(|a| a.rsplit_once(':'))
                .map(|(ip, _)| ip)
        });
        add(bounded(&mut self.by_caller, caller.unwrap_or("-")));
        self.add_tools(&r, caller.unwrap_or("-"), action == Some("block"));
        let Some(policy) = r.policy else {
            return false;
        };
        let action = policy.action.as_deref().unwrap_or("allow");
        if !Violation::is(action, policy.alerts.is_some()) {
            return false;
        }
        self.violations += 1;
        for f in &policy.findings {
            let rule = bounded(&mut self.by_rule, &f.rule);
            rule.requests += 1;
            *bounded(&mut rule.detectors, &f.detector) += f.count.unwrap_or(1);
        }
        *bounded(&mut self.actions_by_hour, &hour)
            .entry(action.to_owned())
            .or_default() += 1;
        true
    }

    /// Counts the tools a request offered and the calls it made (an MCP
    /// `tools/call` is one).
    fn add_tools(&mut self, r: &Slim, who: &str, blocked: bool) {
        let team = r.caller.team.as_deref().unwrap_or("-");
        let (offered, called) = r
            .tools
            .as_ref()
            .map_or((&[][..], &[][..]), |t| (&t.offered[..], &t.called[..]));
        for name in offered {
            let tool = bounded(&mut self.tools, name);
            tool.offered += 1;
            tool.seen(team, who);
        }
        let mcp = r.mcp.as_ref().and_then(|m| m.tool.as_deref());
        let mut calls: Vec<&str> = called.iter().map(String::as_str).collect();
        if let Some(m) = mcp
            && !calls.contains(&m)
        {
            calls.push(m);
        }
        for name in calls {
            let tool = bounded(&mut self.tools, name);
            tool.called += 1;
            tool.blocked += u64::from(blocked);
            tool.seen(team, who);
        }
    }

    /// Counts a request into the newest minutes, unless it is older than
    /// all of the [`RECENT_MINUTES`] kept.
    fn add_recent(&mut self, mut key: CubeKey, overhead: f64, add: &dyn Fn(&mut Totals)) {
        if !self.overhead_by_minute.contains_key(&key.hour) {
            let full = self.overhead_by_minute.len() >= RECENT_MINUTES;
            if full
                && self
                    .overhead_by_minute
                    .first_key_value()
                    .is_some_and(|(oldest, _)| *oldest > key.hour)
            {
                return;
            }
            self.overhead_by_minute
                .insert(key.hour.clone(), Overhead::default());
            self.trim_recent();
        }
        if let Some(o) = self.overhead_by_minute.get_mut(&key.hour) {
            o.add(overhead);
        }
        if self.minute_cube.len() >= MAX_KEYS && !self.minute_cube.contains_key(&key) {
            key.model = Some(OTHER.to_owned());
        }
        add(self.minute_cube.entry(key).or_default());
    }

    /// Keeps the newest [`RECENT_MINUTES`] minutes.
    fn trim_recent(&mut self) {
        while self.overhead_by_minute.len() > RECENT_MINUTES {
            self.overhead_by_minute.pop_first();
        }
        if let Some((oldest, _)) = self.overhead_by_minute.first_key_value() {
            let oldest = oldest.clone();
            self.minute_cube.retain(|k, _| k.hour >= oldest);
        }
    }

    /// Adds `other` (a later stretch of the trail) to this summary.
    pub fn merge(&mut self, other: &Self) {
        self.bytes += other.bytes;
        self.records += other.records;
        if self.first_ts.is_none() {
            self.first_ts.clone_from(&other.first_ts);
        }
        if other.last_ts.is_some() {
            self.last_ts.clone_from(&other.last_ts);
        }
        for (k, t) in &other.cube {
            self.cube.entry(k.clone()).or_default().merge(t);
        }
        for (mine, theirs) in [
            (&mut self.by_user, &other.by_user),
            (&mut self.by_exe, &other.by_exe),
            (&mut self.by_host, &other.by_host),
            (&mut self.by_caller, &other.by_caller),
        ] {
            for (k, t) in theirs {
                bounded(mine, k).merge(t);
            }
        }
        for (k, r) in &other.by_rule {
            let mine = bounded(&mut self.by_rule, k);
            mine.requests += r.requests;
            for (d, n) in &r.detectors {
                *bounded(&mut mine.detectors, d) += n;
            }
        }
        for (hour, actions) in &other.actions_by_hour {
            let mine = bounded(&mut self.actions_by_hour, hour);
            for (a, n) in actions {
                *mine.entry(a.clone()).or_default() += n;
            }
        }
        self.violations += other.violations;
        for (hour, o) in &other.overhead_by_hour {
            bounded(&mut self.overhead_by_hour, hour).merge(o);
        }
        for (minute, o) in &other.overhead_by_minute {
            self.overhead_by_minute
                .entry(minute.clone())
                .or_default()
                .merge(o);
        }
        for (k, t) in &other.minute_cube {
            self.minute_cube.entry(k.clone()).or_default().merge(t);
        }
        self.trim_recent();
        for (name, t) in &other.tools {
            bounded(&mut self.tools, name).merge(t);
        }
        for (host, s) in &other.shadow {
            let mine = bounded(&mut self.shadow, host);
            mine.connections += s.connections;
            if s.last.is_some() {
                mine.last.clone_from(&s.last);
            }
            for c in &s.callers {
                if mine.callers.len() < MAX_SHADOW_CALLERS && !mine.callers.contains(c) {
                    mine.callers.push(c.clone());
                }
            }
        }
    }

    /// Every request counted.
    pub fn total(&self) -> Totals {
        let mut t = Totals::default();
        for v in self.cube.values() {
            t.merge(v);
        }
        t
    }

    /// Requests summed by a part of the cube key.
    pub fn project(&self, part: impl Fn(&CubeKey) -> String) -> BTreeMap<String, Totals> {
        let mut out: BTreeMap<String, Totals> = BTreeMap::new();
        for (k, t) in &self.cube {
            out.entry(part(k)).or_default().merge(t);
        }
        out
    }

    /// Summarises record lines (the collector's rows, a test's records).
    pub fn of_lines<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut s = Self::default();
        for line in lines {
            s.add_line(line);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_quantiles_are_within_a_bucket_and_merge() {
        let mut a = Overhead::default();
        let mut b = Overhead::default();
        for i in 1..=100 {
            let ms = f64::from(i) * 0.01;
            if i % 2 == 0 { a.add(ms) } else { b.add(ms) }
        }
        a.merge(&b);
        assert_eq!(a.count(), 100);
        for (q, exact) in [(0.5, 0.5), (0.99, 0.99), (0.01, 0.01)] {
            let got = a.quantile(q).unwrap_or_default();
            assert!(
                (got - exact).abs() <= exact * 0.045,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(Overhead::default().quantile(0.5), None);
    }

    #[test]
    fn only_the_newest_minutes_are_kept_by_minute() {
        let line = |minute: usize| {
            format!(
                r#"{{"ts":"2026-11-30T{:02}:{:02}:00Z","provider":"openai","host":"h","endpoint":"/x","status":200,"overhead_ms":0.2}}"#,
                minute / 60,
                minute % 60
            )
        };
        let lines: Vec<String> = (0..RECENT_MINUTES + 30).map(line).collect();
        let s = Summary::of_lines(lines.iter().map(String::as_bytes));
        assert_eq!(s.overhead_by_minute.len(), RECENT_MINUTES);
        assert_eq!(
            s.cube.values().map(|t| t.requests).sum::<u64>(),
            (RECENT_MINUTES + 30) as u64
        );
        let oldest = s
            .overhead_by_minute
            .keys()
            .next()
            .cloned()
            .unwrap_or_default();
        assert_eq!(oldest, line(30)[7..23]);
        assert!(s.minute_cube.keys().all(|k| k.hour >= oldest));
        // A later stretch merged in pushes the oldest minutes out.
        let mut early = Summary::of_lines(lines[..60].iter().map(String::as_bytes));
        early.merge(&Summary::of_lines(lines[60..].iter().map(String::as_bytes)));
        assert_eq!(early.overhead_by_minute, s.overhead_by_minute);
        assert_eq!(early.minute_cube, s.minute_cube);
    }
}
