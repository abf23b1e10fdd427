//! The console's read side: totals and time series from the audit index
//! (per-segment summaries, so a page costs about the same on a trail of a
//! million records as on a hundred), record lists read from the newest
//! record backwards within a bounded window. Reading runs on the admin
//! runtime's blocking pool — never on the workers that serve LLM traffic —
//! at most `MAX_CONCURRENT` at once (429 past that), each within
//! `DEADLINE`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use http::StatusCode;
use serde_json::{Value, json};

use super::{Answer, Console, MAX_RECORDS, Source, query_param};
use crate::audit::{
    index::{self, IndexError, Summary},
    read::{Filter, Totals},
};

/// Heavy console queries reading at once.
pub const MAX_CONCURRENT: usize = 2;
/// Heavy queries admitted at once (reading or waiting their turn); past
/// it, 429 at once.
pub const MAX_ADMITTED: usize = 16;
/// How long an admitted query waits for its turn before 429.
pub const QUEUE_WAIT: Duration = Duration::from_secs(1);
/// How long one query may read.
const DEADLINE: Duration = Duration::from_secs(10);
/// The trail one record list reads at most, newest first.
const MAX_SCAN_BYTES: u64 = 64 * 1024 * 1024;
/// Violations listed as "recent".
const RECENT_VIOLATIONS: usize = index::RECENT;

/// The answer past the concurrency limit.
pub fn busy() -> Answer {
    let mut a = Answer::error(
        StatusCode::TOO_MANY_REQUESTS,
        "the console is answering other queries; retry in a second",
    );
    a.headers.push((
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    ));
    a
}

fn failed(e: &IndexError) -> Answer {
    match e {
        IndexError::Deadline => Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the query took longer than 10 s; narrow it",
        ),
        IndexError::Io(e) => {
            tracing::warn!(error = %e, "console: cannot read the audit trail");
            Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the audit trail",
            )
        }
    }
}

/// The answer when the fleet store cannot be read.
pub(super) fn fleet_failed(e: &crate::collector::store::StoreError) -> Answer {
    tracing::warn!(error = %e, "console: cannot read the fleet store");
    Answer::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "cannot read the fleet store",
    )
}

/// Runs blocking reading work on the current (admin) runtime's blocking
/// pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IndexError> + Send + 'static,
) -> Result<T, Answer> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Answer::error(StatusCode::INTERNAL_SERVER_ERROR, "the query failed"))?
        .map_err(|e| failed(&e))
}

fn by_value(map: &std::collections::BTreeMap<String, Totals>) -> Value {
    json!(map)
}

impl Console {
    /// Brings the audit index up to date in the background (at start), so
    /// the first page does not wait for it.
    pub fn warm_up(&self) {
        if let Some(index) = &self.index {
            let index = Arc::clone(index);
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                match index.summary(None) {
                    Ok(s) => tracing::info!(
                        records = s.records,
                        secs = started.elapsed().as_secs_f64(),
                        "audit index ready"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot build the audit index; the console builds it on demand");
                    }
                }
            });
        }
    }

    /// The whole source summed.
    pub(super) async fn summary(&self) -> Result<Summary, Answer> {
        match (&self.source, &self.index) {
            (Source::Dir(_), Some(index)) => {
                let index = Arc::clone(index);
                let deadline = Instant::now() + DEADLINE;
                blocking(move || index.summary(Some(deadline))).await
            }
            (Source::Fleet(fleet), _) => fleet.summary().await.map_err(|e| fleet_failed(&e)),
            (Source::Dir(_), None) => Ok(Summary::default()),
        }
    }

    /// Records newest first that `keep` selects (at most `limit`, none
    /// older than the record `stop_at`), and whether the read window ran
    /// out first. `pushed`: the part of `keep` the fleet store applies in
    /// its query (its indexed columns).
    async fn newest(
        &self,
        keep: impl FnMut(&Value) -> bool + Send + 'static,
        pushed: (Filter, Option<&'static str>),
        limit: usize,
        stop_at: Option<String>,
    ) -> Result<(Vec<Value>, bool), Answer> {
        match &self.source {
            Source::Dir(dir) => {
                let dir = dir.clone();
                blocking(move || {
                    let stop = |v: &Value| stop_at.as_deref().is_some_and(|id| v["id"] == id);
                    index::newest(&dir, keep, limit, stop, MAX_SCAN_BYTES).map_err(IndexError::from)
                })
                .await
            }
            Source::Fleet(fleet) => fleet
                .newest((&pushed.0, pushed.1), keep, limit, stop_at.as_deref())
                .await
                .map_err(|e| fleet_failed(&e)),
        }
    }

    /// `/api/records`: newest first, filtered; `after`: only records newer
    /// than that id.
    pub(super) async fn records(&self, query: &str) -> Answer {
        let filter = Filter {
            since: None,
            provider: query_param(query, "provider"),
            model: query_param(query, "model"),
            team: query_param(query, "team"),
            action: query_param(query, "action"),
            host: query_param(query, "host"),
        };
        let pushed = (filter.clone(), None);
        let limit = query_param(query, "limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(200)
            .min(MAX_RECORDS);
        let caller = query_param(query, "caller");
        let trace = query_param(query, "trace_id");
        // A chart's bucket: a minute, hour or day (`2026-11-30T12:34`).
        let bucket = query_param(query, "bucket");
        let keep = move |r: &Value| {
            filter.matches(r)
                && trace.as_deref().is_none_or(|t| r["trace_id"] == t)
                && bucket
                    .as_deref()
                    .is_none_or(|b| r["ts"].as_str().is_some_and(|ts| ts.starts_with(b)))
                && caller.as_deref().is_none_or(|c| {
                    ["exe", "user", "comm", "container", "cgroup"]
                        .iter()
                        .any(|k| r["caller"][k].as_str().is_some_and(|v| v.contains(c)))
                })
        };
        match self
            .newest(keep, pushed, limit, query_param(query, "after"))
            .await
        {
            Ok((records, truncated)) => Answer::json(
                StatusCode::OK,
                &json!({"records": records, "truncated": truncated, "trace_url": self.trace_url}),
            ),
            Err(a) => a,
        }
    }

    /// `/api/spend`: totals, by team, provider, model and hour, budgets,
    /// top callers (and by user, exe or host with `?by=`).
    pub(super) async fn spend(&self, query: &str) -> Answer {
        let s = match self.summary().await {
            Ok(s) => s,
            Err(a) => return a,
        };
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        let mut top: Vec<(&String, &Totals)> = s.by_caller.iter().collect();
        top.sort_by(|a, b| {
            b.1.cost_usd
                .total_cmp(&a.1.cost_usd)
                .then(b.1.requests.cmp(&a.1.requests))
        });
        top.truncate(10);
        let mut out = json!({
            "total": s.total(),
            "by_team": s.project(|k| dash(&k.team)),
            "by_provider": s.project(|k| k.provider.clone()),
            "by_model": s.project(|k| dash(&k.model)),
            "by_hour": s.project(|k| k.hour.clone()),
            "budgets": self.budget_report(&s.cube).await,
            "top_callers": top.into_iter().map(|(name, t)| json!({"caller": name, "totals": t})).collect::<Vec<_>>(),
        });
        match query_param(query, "by").as_deref() {
            Some("user") => out["by_user"] = by_value(&s.by_user),
            Some("exe") => out["by_exe"] = by_value(&s.by_exe),
            Some("host") => out["by_host"] = by_value(&s.by_host),
            _ => {}
        }
        Answer::json(StatusCode::OK, &out)
    }

    /// `/api/violations`: by rule and detector, by hour, and the latest
    /// (kept by the index as it reads, not searched for).
    pub(super) async fn violations(&self) -> Answer {
        let s = match self.summary().await {
            Ok(s) => s,
            Err(a) => return a,
        };
        let recent = match (&self.source, &self.index) {
            (Source::Dir(_), Some(index)) => {
                let index = Arc::clone(index);
                blocking(move || index.recent_violations(MAX_SCAN_BYTES)).await
            }
            _ => self
                .newest(
                    index::is_violation,
                    (
                        Filter::default(),
                        Some(crate::collector::query::MAYBE_VIOLATION),
                    ),
                    RECENT_VIOLATIONS,
                    None,
                )
                .await
                .map(|(r, _)| r),
        };
        let recent = match recent {
            Ok(r) => r,
            Err(a) => return a,
        };
        Answer::json(
            StatusCode::OK,
            &json!({
                "by_rule": s.by_rule,
                "by_hour": s.actions_by_hour,
                "recent": recent,
                "total": s.violations,
            }),
        )
    }

    /// `/api/tools`: every tool offered to a model or called (in answers
    /// and MCP `tools/call`), most called first, with its teams, callers
    /// and blocked calls.
    pub(super) async fn tools(&self) -> Answer {
        let s = match self.summary().await {
            Ok(s) => s,
            Err(a) => return a,
        };
        let mut tools: Vec<(&String, &crate::audit::summary::ToolUse)> = s.tools.iter().collect();
        tools.sort_by(|a, b| {
            b.1.called
                .cmp(&a.1.called)
                .then(b.1.offered.cmp(&a.1.offered))
        });
        let rows: Vec<Value> = tools
            .into_iter()
            .map(|(name, t)| json!({"tool": name, "use": t}))
            .collect();
        Answer::json(StatusCode::OK, &json!({ "tools": rows }))
    }

    /// The shadow-AI inventory: unlisted LLM hosts seen, by host, with the
    /// processes that called them.
    pub(super) async fn shadow_ai(&self) -> Value {
        self.summary()
            .await
            .map_or(Value::Null, |s| json!(s.shadow))
    }
}

impl Console {
    /// Each budget's limit, spend and what remains: this host's spend, or
    /// with `fleet_budgets` the fleet's (`scope`), read from the store.
    async fn budget_report(
        &self,
        cube: &std::collections::BTreeMap<crate::audit::index::CubeKey, crate::audit::read::Totals>,
    ) -> Vec<Value> {
        let mut report = crate::pipeline::budget::report(&self.budgets, cube);
        let Some(fleet) = &self.fleet else {
            return report;
        };
        let now = time::OffsetDateTime::now_utc();
        for (b, row) in self.budgets.iter().zip(report.iter_mut()) {
            let start = crate::pipeline::budget::period_start(b.period, now)
                .date()
                .to_string();
            let key = crate::pipeline::budget::fleet::key(&b.name, &start);
            match fleet.spent(&key).await {
                Some(spent) => {
                    row["scope"] = json!("fleet");
                    row["spent_usd"] = json!(spent);
                    row["remaining_usd"] = json!(b.limit_usd - spent);
                }
                None => row["scope"] = json!("this host (the fleet store does not answer)"),
            }
        }
        report
    }
}
