//! Budgets shared by every host and replica (`fleet_budgets`): each
//! budget's spend this period is one value in a NATS JetStream key-value
//! bucket (the spend, and each writing process's last batch: `ledger.rs`),
//! changed only by compare-and-set on its revision, by one writer task per
//! key in each process (`writer.rs`). A request first
//! reserves its estimated cost — admitted while the spend is under the
//! limit, so the total overshoots by at most one reservation — and the
//! real cost replaces the estimate once the answer is in. While the store
//! cannot be reached, `on_unreachable` decides: `deny`, `allow`, or
//! `local-share` (this host may spend `local_share` of each limit on its
//! own, added to the store once it is back).

mod ledger;
mod writer;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_nats::jetstream::kv;
use serde::Deserialize;

use crate::{
    field::{FieldError, invalid},
    ship::config::{NatsConfig, RawNats},
};

const DEFAULT_BUCKET: &str = "LEASH_BUDGETS";

/// What a host does while the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnUnreachable {
    Deny,
    Allow,
    LocalShare,
}

/// The `fleet_budgets` section.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub nats: NatsConfig,
    pub bucket: String,
    pub on_unreachable: OnUnreachable,
    /// The part of each limit a host may spend while the store is away.
    pub local_share: f64,
    /// How long one store operation may take before it counts as failed.
    pub timeout: Duration,
}

/// `fleet_budgets` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    nats: RawNats,
    bucket: Option<String>,
    on_unreachable: Option<OnUnreachable>,
    local_share: Option<f64>,
    timeout_ms: Option<u64>,
}

impl FleetConfig {
    pub fn validate(raw: &RawFleet, base: &Path) -> Result<Self, FieldError> {
        let nats = NatsConfig::validate(&raw.nats, "fleet_budgets.nats", base)?;
        let bucket = raw.bucket.clone().unwrap_or_else(|| DEFAULT_BUCKET.into());
        if bucket.is_empty()
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "fleet_budgets.bucket",
                "letters, digits, `_` and `-` only",
            ));
        }
        let local_share = raw.local_share.unwrap_or(0.1);
        if !(0.0..=1.0).contains(&local_share) {
            return Err(invalid(
                "fleet_budgets.local_share",
                "a part of each limit: 0 to 1",
            ));
        }
        let timeout = Duration::from_millis(raw.timeout_ms.unwrap_or(250));
        if timeout.is_zero() || timeout > Duration::from_secs(10) {
            return Err(invalid(
                "fleet_budgets.timeout_ms",
                "1 to 10000 milliseconds",
            ));
        }
        Ok(Self {
            nats,
            bucket,
            on_unreachable: raw.on_unreachable.unwrap_or(OnUnreachable::LocalShare),
            local_share,
            timeout,
        })
    }
}

/// A budget's key in the bucket: its name and period start, in the
/// characters keys allow.
pub fn key(budget: &str, period_start: &str) -> String {
    format!("{budget}.{period_start}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What a reservation came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reserved {
    /// Admitted: the fleet's spend, the reservation included.
    Admitted(f64),
    /// The fleet has spent the limit (this much).
    Spent(f64),
    /// Admitted on this host's share while the store is away.
    Local,
}

/// The store could not be reached (or did not answer in time).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the fleet budget store is unreachable: {0}")]
pub struct Unreachable(pub String);

/// The shared spend, and what this host spent while it was away.
///
/// Each key has one writer task in this process (`writer.rs`): changes
/// queue there and go to the store together, one compare-and-set per
/// batch, so the replicas' requests do not race each other's
/// compare-and-sets, and a batch whose answer was lost is recognised in
/// the value rather than applied twice (`ledger.rs`).
pub struct FleetStore {
    config: FleetConfig,
    host: String,
    /// This process's name among each key's writers: the host and a
    /// number of its own (replicas may share a host name).
    writer: String,
    /// Batches written by this process (their numbers in the writer's mark).
    batches: std::sync::atomic::AtomicU64,
    client: tokio::sync::OnceCell<async_nats::Client>,
    kv: tokio::sync::OnceCell<kv::Store>,
    /// Spend per key not yet in the store (local-share), to add once back.
    unsynced: Mutex<HashMap<String, f64>>,
    /// After a failure the store is not asked again before this: requests
    /// meanwhile do not each wait out the timeout.
    down_until: Mutex<Option<std::time::Instant>>,
    /// Each key's writer task.
    writers: Mutex<HashMap<String, tokio::sync::mpsc::UnboundedSender<writer::Job>>>,
}

/// How long the store counts as away after a failure.
const RETRY_AFTER: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FleetStore {
    pub fn new(config: FleetConfig, host: &str) -> Arc<Self> {
        Arc::new(Self {
            config,
            host: host.to_owned(),
            writer: format!("{host}/{}", uuid::Uuid::now_v7().simple()),
            batches: std::sync::atomic::AtomicU64::new(0),
            client: tokio::sync::OnceCell::new(),
            kv: tokio::sync::OnceCell::new(),
            unsynced: Mutex::new(HashMap::new()),
            down_until: Mutex::new(None),
            writers: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    async fn store(&self) -> Result<&kv::Store, Unreachable> {
        // One client, connecting in the background for as long as it takes.
        let client = self
            .client
            .get_or_try_init(|| async {
                crate::ship::connect(
                    &self.config.nats,
                    &format!("leash-budgets-{}", self.host),
                    true,
                )
                .await
                .map_err(|e| Unreachable(e.to_string()))
            })
            .await?;
        self.kv
            .get_or_try_init(|| async {
                let js = async_nats::jetstream::new(client.clone());
                if let Ok(kv) = js.get_key_value(&self.config.bucket).await {
                    return Ok(kv);
                }
                match js
                    .create_key_value(kv::Config {
                        bucket: self.config.bucket.clone(),
                        history: 1,
                        // A key is one budget's period: past two months
                        // (the longest period twice) it is history.
                        max_age: Duration::from_hours(62 * 24),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(kv) => Ok(kv),
                    // Another host made it first.
                    Err(_) => js
                        .get_key_value(&self.config.bucket)
                        .await
                        .map_err(|e| Unreachable(e.to_string())),
                }
            })
            .await
    }

    /// Whether the store failed within the last `RETRY_AFTER`.
    fn is_down(&self) -> bool {
        lock(&self.down_until).is_some_and(|t| std::time::Instant::now() < t)
    }

    fn set_down(&self, down: bool) {
        *lock(&self.down_until) = down.then(|| std::time::Instant::now() + RETRY_AFTER);
    }

    /// Adds `amount` to what this host spent on `key` outside the store.
    fn add_unsynced(&self, key: &str, amount: f64) {
        *lock(&self.unsynced).entry(key.to_owned()).or_default() += amount;
    }

    fn unsynced(&self, key: &str) -> f64 {
        lock(&self.unsynced).get(key).copied().unwrap_or(0.0)
    }

    /// Reserves `estimate` on `key` if the fleet has spent less than
    /// `limit`. Unreachable: `on_unreachable` decides (the error is
    /// returned for `deny`).
    pub async fn reserve(
        self: &Arc<Self>,
        key: &str,
        limit: f64,
        estimate: f64,
    ) -> Result<Reserved, Unreachable> {
        let answer = if self.is_down() {
            Err(Unreachable("away (retried within a second)".into()))
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.send(
                key,
                writer::Job {
                    op: ledger::Op::Reserve { estimate, limit },
                    answer: Some(tx),
                },
            );
            rx.await
                .unwrap_or_else(|_| Err(Unreachable("the writer stopped".into())))
        };
        match answer {
            Ok(ledger::Outcome::Spent(v)) => Ok(Reserved::Spent(v)),
            Ok(ledger::Outcome::Admitted(v)) => Ok(Reserved::Admitted(v)),
            Ok(ledger::Outcome::Settled) => Ok(Reserved::Local),
            Err(e) => match self.config.on_unreachable {
                OnUnreachable::Deny => Err(e),
                OnUnreachable::Allow => {
                    self.add_unsynced(key, estimate);
                    Ok(Reserved::Local)
                }
                OnUnreachable::LocalShare => {
                    let mut unsynced = lock(&self.unsynced);
                    let mine = unsynced.entry(key.to_owned()).or_default();
                    if *mine >= limit * self.config.local_share {
                        return Ok(Reserved::Spent(*mine));
                    }
                    *mine += estimate;
                    Ok(Reserved::Local)
                }
            },
        }
    }

    /// Replaces a reservation of `estimate` by the real `cost` (queued:
    /// it reaches the store with the key's next batch, or is kept here
    /// until the store is back).
    pub fn settle(self: &Arc<Self>, key: &str, reserved: Reserved, estimate: f64, cost: f64) {
        match reserved {
            Reserved::Admitted(_) => self.send(
                key,
                writer::Job {
                    op: ledger::Op::Settle(cost - estimate),
                    answer: None,
                },
            ),
            Reserved::Local => self.add_unsynced(key, cost - estimate),
            Reserved::Spent(_) => {}
        }
    }

    /// Connects to the store (on the calling runtime: call it from the
    /// data path's, at start).
    pub async fn warm(self: Arc<Self>) {
        if let Err(e) = self.store().await {
            tracing::warn!(error = %e, "fleet budget store not reachable yet");
        }
    }

    /// The fleet's spend on `key` now, if the store is connected and
    /// answers (never connects: the console's runtime must not own the
    /// client the data path uses).
    pub async fn spent(&self, key: &str) -> Option<f64> {
        let kv = self.kv.get()?;
        let entry = tokio::time::timeout(self.config.timeout, kv.entry(key))
            .await
            .ok()?
            .ok()??;
        Some(ledger::Ledger::parse(&entry.value).spent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_use_the_characters_kv_allows() {
        assert_eq!(key("research/day", "2026-12-01"), "research_day.2026-12-01");
    }
}
