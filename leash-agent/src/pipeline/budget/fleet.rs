//! Budgets shared by every host and replica (`fleet_budgets`): each
//! budget's spend this period is one number in a NATS JetStream key-value
//! bucket, changed only by compare-and-set on its revision. A request first
//! reserves its estimated cost — admitted while the spend is under the
//! limit, so the total overshoots by at most one reservation — and the
//! real cost replaces the estimate once the answer is in. While the store
//! cannot be reached, `on_unreachable` decides: `deny`, `allow`, or
//! `local-share` (this host may spend `local_share` of each limit on its
//! own, added to the store once it is back).

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
/// Attempts at a compare-and-set before the store counts as unreachable.
const CAS_ATTEMPTS: usize = 256;

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
#[derive(Debug, thiserror::Error)]
#[error("the fleet budget store is unreachable: {0}")]
pub struct Unreachable(pub String);

/// The shared spend, and what this host spent while it was away.
pub struct FleetStore {
    config: FleetConfig,
    host: String,
    client: tokio::sync::OnceCell<async_nats::Client>,
    kv: tokio::sync::OnceCell<kv::Store>,
    /// Spend per key not yet in the store (local-share), to add once back.
    unsynced: Mutex<HashMap<String, f64>>,
    /// After a failure the store is not asked again before this: requests
    /// meanwhile do not each wait out the timeout.
    down_until: Mutex<Option<std::time::Instant>>,
}

/// How long the store counts as away after a failure.
const RETRY_AFTER: Duration = Duration::from_secs(1);

fn parse(value: &[u8]) -> f64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .unwrap_or(0.0)
}

impl FleetStore {
    pub fn new(config: FleetConfig, host: &str) -> Arc<Self> {
        Arc::new(Self {
            config,
            host: host.to_owned(),
            client: tokio::sync::OnceCell::new(),
            kv: tokio::sync::OnceCell::new(),
            unsynced: Mutex::new(HashMap::new()),
            down_until: Mutex::new(None),
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

    /// Adds `delta` to `key` by compare-and-set; with `limit`, only while
    /// the value is under it. Returns the value after (or, refused, the
    /// value that refused it).
    async fn add(
        &self,
        key: &str,
        delta: f64,
        limit: Option<f64>,
    ) -> Result<Reserved, Unreachable> {
        let down = *self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if down.is_some_and(|t| std::time::Instant::now() < t) {
            return Err(Unreachable("away (retried within a second)".into()));
        }
        let result = self.add_now(key, delta, limit).await;
        *self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = result
            .is_err()
            .then(|| std::time::Instant::now() + RETRY_AFTER);
        result
    }

    async fn add_now(
        &self,
        key: &str,
        delta: f64,
        limit: Option<f64>,
    ) -> Result<Reserved, Unreachable> {
        let op = async {
            let kv = self.store().await?;
            for _ in 0..CAS_ATTEMPTS {
                let entry = kv
                    .entry(key)
                    .await
                    .map_err(|e| Unreachable(e.to_string()))?;
                let (value, revision) = match &entry {
                    Some(e) if e.operation == kv::Operation::Put => {
                        (parse(&e.value), Some(e.revision))
                    }
                    Some(e) => (0.0, Some(e.revision)),
                    None => (0.0, None),
                };
                if limit.is_some_and(|l| value >= l) {
                    return Ok(Reserved::Spent(value));
                }
                let next = (value + delta).max(0.0);
                let body = bytes::Bytes::from(format!("{next}"));
                let written = match revision {
                    Some(r) => kv.update(key, body, r).await.is_ok(),
                    None => kv.create(key, body).await.is_ok(),
                };
                if written {
                    return Ok(Reserved::Admitted(next));
                }
            }
            Err(Unreachable("too many concurrent updates".into()))
        };
        tokio::time::timeout(self.config.timeout, op)
            .await
            .map_err(|_| Unreachable(format!("no answer within {:?}", self.config.timeout)))?
    }

    /// Reserves `estimate` on `key` if the fleet has spent less than
    /// `limit`. Unreachable: `on_unreachable` decides (the error is
    /// returned for `deny`).
    pub async fn reserve(
        &self,
        key: &str,
        limit: f64,
        estimate: f64,
    ) -> Result<Reserved, Unreachable> {
        match self.add(key, estimate, Some(limit)).await {
            Ok(r) => Ok(r),
            Err(e) => match self.config.on_unreachable {
                OnUnreachable::Deny => Err(e),
                OnUnreachable::Allow => Ok(Reserved::Local),
                OnUnreachable::LocalShare => {
                    let mut unsynced = self.unsynced.lock().unwrap_or_else(PoisonError::into_inner);
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

    /// Replaces a reservation of `estimate` by the real `cost`.
    pub async fn settle(&self, key: &str, reserved: Reserved, estimate: f64, cost: f64) {
        match reserved {
            Reserved::Admitted(_) => {
                if let Err(e) = self.add(key, cost - estimate, None).await {
                    // Kept here, added when the store is back.
                    tracing::warn!(error = %e, key, "fleet budget: settling later");
                    *self
                        .unsynced
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(key.to_owned())
                        .or_default() += cost - estimate;
                }
            }
            Reserved::Local => {
                *self
                    .unsynced
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(key.to_owned())
                    .or_default() += cost - estimate;
            }
            Reserved::Spent(_) => {}
        }
    }

    /// Adds what this host spent while the store was away, once it is
    /// back (every second, until the process ends).
    pub async fn reconcile(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let pending: Vec<(String, f64)> = self
                .unsynced
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter(|(_, v)| **v != 0.0)
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            for (key, amount) in pending {
                if self.add(&key, amount, None).await.is_ok() {
                    tracing::info!(
                        key,
                        amount,
                        "fleet budget: spend made while the store was away added"
                    );
                    if let Some(v) = self
                        .unsynced
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_mut(&key)
                    {
                        *v -= amount;
                    }
                }
            }
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
        Some(parse(&entry.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_use_the_characters_kv_allows() {
        assert_eq!(key("research/day", "2026-12-01"), "research_day.2026-12-01");
        assert!((parse(b"0.25") - 0.25).abs() < 1e-12);
        assert!(parse(b"NaN").abs() < 1e-12);
        assert!(parse(b"garbage").abs() < 1e-12);
    }
}
