//! The series one kind of exchange adds to, resolved once: an exchange of
//! a given provider, model, team, outcome and status counts into the same
//! counters and histograms as the last one did, so they are looked up in
//! the families (a hash of every label value, a lock each: seven per
//! exchange) only the first time, and kept by the interned labels' identity.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, PoisonError, atomic::AtomicU64},
};

use prometheus_client::metrics::{counter::Counter, histogram::Histogram};

use super::labels::{Label, RequestLabels};

/// Most kinds of exchange kept; past it an exchange is counted through the
/// families directly (the same series, looked up each time).
pub(super) const MAX_KEPT: usize = 4096;

/// The token kinds, in the order [`Series::tokens`] keeps them.
pub(super) const TOKEN_KINDS: [&str; 5] =
    ["input", "output", "cached", "reasoning", "cache_creation"];

/// What tells two kinds of exchange apart: the interned labels, by address
/// (an interned label is never freed while its `Metrics` lives, and equal
/// values share one), the outcome and the status.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    provider: usize,
    model: usize,
    team: usize,
    action: &'static str,
    status: usize,
}

/// The series of one kind of exchange. Those an exchange may not add to
/// (tokens of a kind, cost, time to first byte) are made when one first
/// does, so none shows up in the exposition before it has counted.
pub(super) struct Series {
    pub(super) labels: RequestLabels,
    pub(super) requests: Counter,
    pub(super) duration: Histogram,
    pub(super) overhead: Histogram,
    pub(super) ttfb: OnceLock<Histogram>,
    pub(super) tokens: [OnceLock<Counter>; TOKEN_KINDS.len()],
    pub(super) cost: OnceLock<Counter<f64, AtomicU64>>,
    pub(super) unpriced: OnceLock<Counter>,
}

/// The kinds of exchange seen so far (at most [`MAX_KEPT`]).
#[derive(Default)]
pub(super) struct Kept {
    seen: Mutex<HashMap<Key, Arc<Series>, foldhash::fast::RandomState>>,
}

impl Kept {
    /// The series of `labels`' kind of exchange: the ones kept, or new ones
    /// from `make` (kept while there is room).
    pub(super) fn get(
        &self,
        labels: RequestLabels,
        make: impl FnOnce(RequestLabels) -> Series,
    ) -> Arc<Series> {
        let key = Key {
            provider: address(&labels.provider),
            model: address(&labels.model),
            team: address(&labels.team),
            action: labels.action,
            status: address(&labels.status),
        };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(series) = seen.get(&key) {
            return Arc::clone(series);
        }
        let series = Arc::new(make(labels));
        if seen.len() < MAX_KEPT {
            seen.insert(key, Arc::clone(&series));
        }
        series
    }
}

fn address(label: &Label) -> usize {
    Arc::as_ptr(label).addr()
}
