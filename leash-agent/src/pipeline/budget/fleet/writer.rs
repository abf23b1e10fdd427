//! Each key's writer: the one task in this process that changes the key.
//! It takes every change queued since its last batch, reads the value,
//! applies them in order and writes the result by compare-and-set; a
//! conflict (another process wrote) reads again. Once a second it also
//! carries the spend made on this host while the store was away.
//!
//! A batch whose write was sent but not answered in time may still land
//! (or may already have): it is kept as unanswered, its callers told the
//! store was away (and so count it on this host). The writer's next read
//! settles it: the writer's mark in the value says whether it landed, and
//! from what spend — then what it put in the store is taken off this
//! host's unsynced spend. Batches are numbered, and each write is a
//! compare-and-set on a value read after the previous batch was sent, so
//! once a later batch lands an earlier unanswered one never can.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::kv;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::{
    FleetStore, Unreachable,
    ledger::{Ledger, Op, Outcome, landed},
    lock,
};

/// Compare-and-set attempts in one batch before the store counts as
/// unreachable.
const CAS_ATTEMPTS: usize = 64;
/// Unanswered batches kept to be settled (beyond that the oldest is
/// counted as not applied: the host may then count its spend twice,
/// never none).
const UNANSWERED_KEPT: usize = 64;
/// A writer with nothing to do for this many seconds ends.
const IDLE_SECS: u32 = 600;

/// One queued change; a reservation waits for its outcome.
pub struct Job {
    pub op: Op,
    pub answer: Option<oneshot::Sender<Result<Outcome, Unreachable>>>,
}

/// A batch sent but not answered.
struct Unanswered {
    seq: u64,
    ops: Vec<Op>,
}

impl FleetStore {
    /// Queues `job` on `key`'s writer, starting it if there is none.
    pub(super) fn send(self: &Arc<Self>, key: &str, job: Job) {
        let mut writers = lock(&self.writers);
        let job = match writers.get(key) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        // The receiver is alive: it is in hand.
        let _ = tx.send(job);
        writers.insert(key.to_owned(), tx);
        tokio::spawn(Arc::clone(self).write(key.to_owned(), rx));
    }

    /// Ends `key`'s writer if nothing is queued (under the lock senders
    /// take, so no job can arrive after the check).
    fn retire(&self, key: &str, rx: &mpsc::UnboundedReceiver<Job>) -> bool {
        let mut writers = lock(&self.writers);
        let idle = rx.is_empty();
        if idle {
            writers.remove(key);
        }
        idle
    }

    async fn write(self: Arc<Self>, key: String, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut unanswered: Vec<Unanswered> = Vec::new();
        let mut idle = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut jobs = Vec::new();
            tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => jobs.push(job),
                    None => return,
                },
                _ = tick.tick() => {}
            }
            while let Ok(job) = rx.try_recv() {
                jobs.push(job);
            }
            let carry = self.unsynced(&key);
            if jobs.is_empty() && carry == 0.0 && unanswered.is_empty() {
                idle += 1;
                if idle >= IDLE_SECS && self.retire(&key, &rx) {
                    return;
                }
                continue;
            }
            idle = 0;
            if self.is_down() {
                self.failed(
                    &key,
                    jobs,
                    &Unreachable("away (retried within a second)".into()),
                );
                continue;
            }
            // Numbered across the process: a key's writer may end and another
            // start, the marks in the value stay.
            let seq = self.batches.fetch_add(1, Ordering::Relaxed) + 1;
            let mut ops: Vec<Op> = jobs.iter().map(|j| j.op).collect();
            if carry != 0.0 {
                ops.push(Op::Settle(carry));
            }
            let sent = AtomicBool::new(false);
            let result = tokio::time::timeout(
                self.config.timeout,
                self.commit(&key, seq, &ops, &mut unanswered, &sent),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Unreachable(format!(
                    "no answer within {:?}",
                    self.config.timeout
                )))
            });
            self.set_down(result.is_err());
            match result {
                Ok(outcomes) => {
                    if carry != 0.0 {
                        self.add_unsynced(&key, -carry);
                        tracing::info!(
                            key,
                            amount = carry,
                            "fleet budget: spend made while the store was away added"
                        );
                    }
                    for (job, outcome) in jobs.into_iter().zip(outcomes) {
                        let Some(answer) = job.answer else { continue };
                        if answer.send(Ok(outcome)).is_err()
                            && let (Op::Reserve { estimate, .. }, Outcome::Admitted(_)) =
                                (job.op, outcome)
                        {
                            // Its request is gone (the client left): the
                            // reservation is given back.
                            self.add_unsynced(&key, -estimate);
                        }
                    }
                }
                Err(e) => {
                    if sent.load(Ordering::Relaxed) {
                        if unanswered.len() == UNANSWERED_KEPT {
                            tracing::warn!(
                                key,
                                "fleet budget: an unanswered batch counted as not applied"
                            );
                            unanswered.remove(0);
                        }
                        unanswered.push(Unanswered { seq, ops });
                    }
                    self.failed(&key, jobs, &e);
                }
            }
        }
    }

    /// Tells each job the store was away: a reservation's caller applies
    /// `on_unreachable`, a settlement is kept here until the store is back.
    fn failed(&self, key: &str, jobs: Vec<Job>, e: &Unreachable) {
        for job in jobs {
            match (job.op, job.answer) {
                (_, Some(answer)) => {
                    let _ = answer.send(Err(e.clone()));
                }
                (Op::Settle(delta), None) => {
                    tracing::warn!(error = %e, key, "fleet budget: settling later");
                    self.add_unsynced(key, delta);
                }
                (Op::Reserve { .. }, None) => {}
            }
        }
    }

    /// Writes batch `seq`; the outcome of each of `ops`. Sets `sent` once
    /// a write may have reached the store.
    async fn commit(
        &self,
        key: &str,
        seq: u64,
        ops: &[Op],
        unanswered: &mut Vec<Unanswered>,
        sent: &AtomicBool,
    ) -> Result<Vec<Outcome>, Unreachable> {
        let kv = self.store().await?;
        for _ in 0..CAS_ATTEMPTS {
            let entry = kv
                .entry(key)
                .await
                .map_err(|e| Unreachable(e.to_string()))?;
            let (ledger, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    (Ledger::parse(&e.value), Some(e.revision))
                }
                Some(e) => (Ledger::default(), Some(e.revision)),
                None => (Ledger::default(), None),
            };
            let (last, base) = ledger.last(&self.writer);
            if last == seq {
                // This very batch landed on an attempt whose answer was lost.
                let (_, outcomes) = super::ledger::run(base, ops);
                unanswered.clear();
                return Ok(outcomes);
            }
            self.settle_unanswered(key, last, base, unanswered);
            let (next, outcomes) = ledger.apply(
                &self.writer,
                seq,
                ops,
                OffsetDateTime::now_utc().unix_timestamp(),
            );
            sent.store(true, Ordering::Relaxed);
            let body = bytes::Bytes::from(next.to_bytes());
            let written = match revision {
                Some(r) => kv.update(key, body, r).await.is_ok(),
                None => kv.create(key, body).await.is_ok(),
            };
            if written {
                if crate::faults::fleet_answer_lost() {
                    return Err(Unreachable("the answer was lost (test fault)".into()));
                }
                // Every batch still unanswered was read as not landed, and
                // this write came after: none of them can land now.
                unanswered.clear();
                return Ok(outcomes);
            }
        }
        Err(Unreachable("too many concurrent updates".into()))
    }

    /// Settles the unanswered batches against this writer's mark in the
    /// value (`last`, landed from `base`): that batch landed — what it put
    /// in the store comes off this host's unsynced spend — and the ones
    /// before it never will.
    fn settle_unanswered(&self, key: &str, last: u64, base: f64, unanswered: &mut Vec<Unanswered>) {
        if let Some(u) = unanswered.iter().find(|u| u.seq == last) {
            let amount = landed(base, &u.ops);
            self.add_unsynced(key, -amount);
            tracing::info!(key, amount, "fleet budget: an unanswered batch had landed");
        }
        unanswered.retain(|u| u.seq > last);
    }
}
