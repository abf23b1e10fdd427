//! One budget period's value in the bucket, and how a batch of changes
//! applies to it — plain data, no I/O.
//!
//! A change whose answer is lost (the write reached the store, the
//! acknowledgement did not come in time) must not be counted twice when
//! it is retried. So the value carries, for each writer (one process),
//! the sequence number of its last batch and the spend that batch
//! started from: a writer reading the value back knows whether its
//! unanswered batch landed, and what that batch decided.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A writer's mark is dropped this long after its last batch, which
/// bounds the value to the processes that wrote in that window (about 90
/// bytes each). A writer settles an unanswered batch at its next read,
/// normally within a second; one away longer than this counts the batch
/// as not applied — its spend may then count twice, never not at all.
pub const MARK_TTL_SECS: i64 = 15 * 60;

/// The value of one budget period's key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// The fleet's spend this period, reservations included.
    pub spent: f64,
    /// Each writer's last batch.
    #[serde(default)]
    pub writers: BTreeMap<String, Mark>,
}

/// A writer's last batch that landed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    pub seq: u64,
    /// The spend the batch started from.
    pub base: f64,
    /// When it was written (Unix seconds).
    pub at: i64,
}

/// One change in a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// Add `estimate` if the spend is under `limit`.
    Reserve { estimate: f64, limit: f64 },
    /// Add this (a settlement: real cost minus estimate; or spend made
    /// while the store was away).
    Settle(f64),
}

/// What one change came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// A reservation admitted: the spend after it.
    Admitted(f64),
    /// A reservation refused: the spend that refused it.
    Spent(f64),
    /// A settlement, applied.
    Settled,
}

impl Ledger {
    /// Reads a stored value; a bare number is the spend (the format before
    /// writers were marked), anything unreadable counts as nothing spent.
    pub fn parse(value: &[u8]) -> Self {
        if let Ok(ledger) = serde_json::from_slice::<Self>(value)
            && ledger.spent.is_finite()
        {
            return ledger;
        }
        let spent = std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .unwrap_or(0.0);
        Self {
            spent,
            writers: BTreeMap::new(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Applies `writer`'s batch `seq` at time `now`: the ledger after it
    /// (stale marks of other writers dropped) and each change's outcome.
    pub fn apply(&self, writer: &str, seq: u64, ops: &[Op], now: i64) -> (Self, Vec<Outcome>) {
        let (spent, outcomes) = run(self.spent, ops);
        let mut writers: BTreeMap<String, Mark> = self
            .writers
            .iter()
            .filter(|(_, m)| now - m.at < MARK_TTL_SECS)
            .map(|(w, m)| (w.clone(), *m))
            .collect();
        writers.insert(
            writer.to_owned(),
            Mark {
                seq,
                base: self.spent,
                at: now,
            },
        );
        (Self { spent, writers }, outcomes)
    }

    /// `writer`'s last batch that landed (0: none).
    pub fn last(&self, writer: &str) -> (u64, f64) {
        self.writers
            .get(writer)
            .map_or((0, 0.0), |m| (m.seq, m.base))
    }
}

/// The outcomes of `ops` from `spent`, in order.
pub fn run(mut spent: f64, ops: &[Op]) -> (f64, Vec<Outcome>) {
    let outcomes = ops
        .iter()
        .map(|op| match *op {
            Op::Reserve { estimate, limit } => {
                if spent >= limit {
                    Outcome::Spent(spent)
                } else {
                    spent += estimate;
                    Outcome::Admitted(spent)
                }
            }
            Op::Settle(delta) => {
                spent = (spent + delta).max(0.0);
                Outcome::Settled
            }
        })
        .collect();
    (spent, outcomes)
}

/// How much of a batch that landed unanswered is in the store although
/// its callers were told the store was away (and so counted it on this
/// host): every settlement, and the estimate of every reservation the
/// store admitted. Subtracted from this host's unsynced spend.
pub fn landed(base: f64, ops: &[Op]) -> f64 {
    let (_, outcomes) = run(base, ops);
    ops.iter()
        .zip(outcomes)
        .map(|(op, outcome)| match (op, outcome) {
            (Op::Settle(delta), _) => *delta,
            (Op::Reserve { estimate, .. }, Outcome::Admitted(_)) => *estimate,
            _ => 0.0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Op = Op::Reserve {
        estimate: 1.0,
        limit: 2.5,
    };

    #[test]
    fn reservations_are_admitted_while_under_the_limit() {
        let (after, outcomes) =
            Ledger::default().apply("w", 1, &[R, R, R, R, Op::Settle(-0.5)], 10);
        assert_eq!(
            outcomes,
            [
                Outcome::Admitted(1.0),
                Outcome::Admitted(2.0),
                Outcome::Admitted(3.0),
                Outcome::Spent(3.0),
                Outcome::Settled
            ]
        );
        assert!((after.spent - 2.5).abs() < 1e-12);
        assert_eq!(after.last("w"), (1, 0.0));
        assert_eq!(after.last("other"), (0, 0.0));
    }

    #[test]
    fn the_value_round_trips_and_old_values_read_as_the_spend() {
        let (after, _) = Ledger::default().apply("host/1", 7, &[Op::Settle(0.25)], 10);
        assert_eq!(Ledger::parse(&after.to_bytes()), after);
        assert!((Ledger::parse(b"0.25").spent - 0.25).abs() < 1e-12);
        assert!(Ledger::parse(b"NaN").spent.abs() < 1e-12);
        assert!(Ledger::parse(b"garbage").spent.abs() < 1e-12);
    }

    #[test]
    fn stale_marks_are_dropped_and_the_writers_own_kept() {
        let (a, _) = Ledger::default().apply("old", 1, &[Op::Settle(1.0)], 0);
        let (b, _) = a.apply("new", 1, &[Op::Settle(1.0)], MARK_TTL_SECS + 1);
        assert_eq!(b.last("old"), (0, 0.0));
        assert_eq!(b.last("new"), (1, 1.0));
        assert!((b.spent - 2.0).abs() < 1e-12);
    }

    #[test]
    fn what_landed_unanswered_is_recomputed_from_its_base() {
        // From 2.0: the first reservation admitted (to 3.0), the second
        // refused; the settlement counts whole.
        let ops = [R, R, Op::Settle(-0.25)];
        assert!((landed(2.0, &ops) - 0.75).abs() < 1e-12);
        assert!((landed(0.0, &ops) - 1.75).abs() < 1e-12);
    }
}
