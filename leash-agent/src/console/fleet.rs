//! The collector's console source: the fleet's central store. Totals come
//! from a summary of the rows written by the transactions below
//! PostgreSQL's horizon (every one of which has ended, so nothing more
//! appears there): each page load adds only the rows written since the
//! last one, plus the visible rows above the horizon read fresh — never
//! the whole store again. That summary is saved in the store
//! (`leash_summary_checkpoint`), so a console that starts, or a second
//! collector's, reads only what was written after it. Record lists walk
//! the store newest first, a keyset page at a time, with the filters the
//! store has columns for in the query.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio_postgres::Client;

use crate::audit::{
    index::{FORMAT, Summary},
    read::Filter,
};
use crate::collector::query::{self, Position};
use crate::collector::store::StoreError;

/// Rows of the store a record list looks at, at most (newest first).
const MAX_SCAN: usize = 200_000;
/// Rows per keyset page of the store, at most.
const PAGE: i64 = 2_000;
/// The summary is saved at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(30);
/// The checkpoint's name (one per store).
const CHECKPOINT: &str = "console";

struct Summed {
    /// Every row of a transaction below this is in `summary`.
    horizon: i64,
    summary: Summary,
    /// Whether the saved checkpoint was looked for.
    loaded: bool,
    saved: Option<Instant>,
}

struct Inner {
    client: Client,
    summed: tokio::sync::Mutex<Summed>,
}

/// The store and the kept summary (cheap to clone: shared).
#[derive(Clone)]
pub struct FleetSource(Arc<Inner>);

impl FleetSource {
    pub fn new(client: Client) -> Self {
        Self(Arc::new(Inner {
            client,
            summed: tokio::sync::Mutex::new(Summed {
                horizon: 0,
                summary: Summary::default(),
                loaded: false,
                saved: None,
            }),
        }))
    }

    pub fn client(&self) -> &Client {
        &self.0.client
    }

    /// Sums the store in the background (at start), so the first page
    /// does not wait for it.
    pub fn warm_up(&self) {
        let source = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            match source.summary().await {
                Ok(s) => tracing::info!(
                    records = s.records,
                    secs = started.elapsed().as_secs_f64(),
                    "fleet summary ready"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot sum the fleet store yet"),
            }
        });
    }

    /// Adds the records of the transactions in `range` to `summary`, a
    /// keyset page at a time.
    async fn add(
        &self,
        range: (i64, Option<i64>),
        summary: &mut Summary,
    ) -> Result<(), StoreError> {
        let mut after = None;
        loop {
            let page =
                query::lines_by_transaction(&self.0.client, range, after.as_ref(), PAGE).await?;
            for (_, line) in &page {
                summary.add_line(line.as_bytes());
            }
            match page.last() {
                Some((at, _)) if page.len() == usize::try_from(PAGE).unwrap_or(0) => {
                    after = Some(at.clone());
                }
                _ => return Ok(()),
            }
        }
    }

    /// The saved summary, if there is one of this format.
    async fn load(&self) -> Result<Option<(i64, Summary)>, StoreError> {
        let Some(row) = self
            .0
            .client
            .query_opt(
                "SELECT horizon, summary FROM leash_summary_checkpoint WHERE name = $1",
                &[&CHECKPOINT],
            )
            .await?
        else {
            return Ok(None);
        };
        let bytes: Vec<u8> = row.get(1);
        Ok(serde_json::from_slice::<Summary>(&bytes)
            .ok()
            .filter(|s| s.format == FORMAT)
            .map(|s| (row.get(0), s)))
    }

    /// Saves the summary of the rows below `horizon` (unless a newer one
    /// is saved already: several collectors' consoles share it).
    async fn save(&self, horizon: i64, mut summary: Summary) -> Result<(), StoreError> {
        summary.format = FORMAT;
        let bytes = serde_json::to_vec(&summary)
            .map_err(|e| StoreError::Invalid(format!("cannot write the fleet summary: {e}")))?;
        self.0
            .client
            .execute(
                "INSERT INTO leash_summary_checkpoint AS c (name, horizon, summary)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET horizon = excluded.horizon,
                     summary = excluded.summary, saved_at = now()
                 WHERE c.horizon < excluded.horizon",
                &[&CHECKPOINT, &horizon, &bytes],
            )
            .await?;
        Ok(())
    }

    /// Every record in the store, summed.
    pub async fn summary(&self) -> Result<Summary, StoreError> {
        let mut summed = self.0.summed.lock().await;
        if !summed.loaded {
            summed.loaded = true;
            if let Some((horizon, summary)) = self.load().await? {
                tracing::info!(
                    horizon,
                    records = summary.records,
                    "fleet summary loaded from the store"
                );
                summed.horizon = horizon;
                summed.summary = summary;
                summed.saved = Some(Instant::now());
            }
        }
        let horizon = crate::collector::store::horizon(&self.0.client).await?;
        if horizon > summed.horizon {
            let from = summed.horizon;
            self.add((from, Some(horizon)), &mut summed.summary).await?;
            summed.horizon = horizon;
            if summed.saved.is_none_or(|t| t.elapsed() >= SAVE_EVERY) {
                summed.saved = Some(Instant::now());
                // In the background: a page load does not wait for it.
                let (source, summary) = (self.clone(), summed.summary.clone());
                tokio::spawn(async move {
                    if let Err(e) = source.save(horizon, summary).await {
                        tracing::warn!(error = %e, "cannot save the fleet summary");
                    }
                });
            }
        }
        let mut out = summed.summary.clone();
        drop(summed);
        let mut recent = Summary::default();
        self.add((horizon, None), &mut recent).await?;
        out.merge(&recent);
        // Rows arrive in transaction order, not time order.
        (out.first_ts, out.last_ts) = query::time_span(&self.0.client).await?;
        Ok(out)
    }

    /// Records newest first that `filter` (in the query: the columns and
    /// an SQL condition) and `keep` select
    /// (at most `limit`, none older than the record `stop_at`), and
    /// whether the read window ran out first.
    pub async fn newest(
        &self,
        filter: (&Filter, Option<&str>),
        mut keep: impl FnMut(&Value) -> bool,
        limit: usize,
        stop_at: Option<&str>,
    ) -> Result<(Vec<Value>, bool), StoreError> {
        let mut out = Vec::new();
        let mut at: Option<Position> = None;
        let mut scanned = 0;
        // Small first pages (a page of the console lists 200), larger
        // ones when the filters in Rust skip many.
        let mut page_rows = i64::try_from(limit + 1).unwrap_or(PAGE).clamp(50, PAGE);
        while scanned < MAX_SCAN {
            let page = query::newest_page(&self.0.client, filter, at.as_ref(), page_rows).await?;
            let Some((last, _)) = page.last() else {
                return Ok((out, false));
            };
            at = Some(last.clone());
            for (_, line) in &page {
                scanned += 1;
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                if stop_at.is_some_and(|id| v["id"] == id) {
                    return Ok((out, false));
                }
                if keep(&v) {
                    out.push(v);
                    if out.len() >= limit {
                        return Ok((out, false));
                    }
                }
            }
            if page.len() < usize::try_from(page_rows).unwrap_or(0) {
                return Ok((out, false));
            }
            page_rows = (page_rows * 4).min(PAGE);
        }
        Ok((out, true))
    }
}
