//! Alerts: JSON POSTs to `alerts.webhook` (budget breaches now; policy
//! block/alert actions later), sent by a background task behind a bounded
//! queue, retried with backoff, rate-limited per alert key. An alert never
//! contains a secret: only names, numbers and the request id.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use bytes::Bytes;
use governor::{Quota, RateLimiter, clock::DefaultClock, state::keyed::DefaultKeyedStateStore};
use http::{Method, Request, Uri, header};
use http_body_util::Full;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{
    field::{FieldError, invalid},
    provider::UpstreamBase,
    upstream::HttpsClient,
};

const QUEUE: usize = 1024;
const ATTEMPTS: u32 = 4;

/// Where alerts go, and how often the same alert may repeat.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    pub webhook: Option<Uri>,
    pub min_interval: Duration,
}

/// `alerts` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    webhook: Option<String>,
    min_interval_secs: Option<u64>,
}

impl AlertConfig {
    pub fn validate(raw: RawAlerts) -> Result<Self, FieldError> {
        let webhook = raw
            .webhook
            .map(|url| {
                UpstreamBase::parse(&url)
                    .map_err(|reason| invalid("alerts.webhook", reason))
                    .and_then(|_| {
                        url.parse::<Uri>()
                            .map_err(|e| invalid("alerts.webhook", e.to_string()))
                    })
            })
            .transpose()?;
        Ok(Self {
            webhook,
            min_interval: Duration::from_secs(raw.min_interval_secs.unwrap_or(60)),
        })
    }
}

/// Alert keys tracked at once; past it, stale keys are dropped and, if
/// that is not enough, new keys share one limit (memory stays bounded
/// whatever names requests bring).
const MAX_KEYS: usize = 10_000;

type Limiter = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// The sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Alerter {
    tx: Option<mpsc::Sender<Value>>,
    /// One alert per key per `min_interval`; `None`: no limit.
    limiter: Option<Arc<Limiter>>,
}

/// What an alert is about, for rate limiting: a rule (or budget) and the
/// team it happened to.
pub struct AlertKey<'a> {
    pub kind: &'static str,
    pub name: &'a str,
    pub team: Option<&'a str>,
}

impl std::fmt::Display for AlertKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.kind,
            self.name,
            self.team.unwrap_or("-")
        )
    }
}

impl Alerter {
    /// An alerter that sends nothing (no webhook configured).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            limiter: None,
        }
    }

    /// Starts the sender task (inside a tokio runtime).
    pub fn start(config: &AlertConfig, client: HttpsClient) -> Self {
        let Some(url) = config.webhook.clone() else {
            return Self::disabled();
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(send_loop(rx, url, client));
        let limiter = Quota::with_period(config.min_interval)
            .map(|q| Arc::new(RateLimiter::keyed(q.allow_burst(NonZeroU32::MIN))));
        Self {
            tx: Some(tx),
            limiter,
        }
    }

    /// Queues `alert` unless one with the same key went out less than
    /// `min_interval` ago. Always logged.
    pub fn fire(&self, key: &AlertKey<'_>, alert: Value) {
        let key = key.to_string();
        tracing::warn!(%key, alert = %alert, "alert");
        let Some(tx) = &self.tx else {
            return;
        };
        if let Some(limiter) = &self.limiter
            && limiter.check_key(&bounded(limiter, key.clone())).is_err()
        {
            return;
        }
        if tx.try_send(alert).is_err() {
            tracing::error!(%key, "alert queue full: alert not sent");
        }
    }

    /// Keys the limiter tracks now (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// `key`, or the shared overflow key when the limiter already tracks
/// `MAX_KEYS` keys that are all still limiting.
fn bounded(limiter: &Limiter, key: String) -> String {
    if limiter.len() < MAX_KEYS {
        return key;
    }
    limiter.retain_recent();
    if limiter.len() < MAX_KEYS {
        key
    } else {
        "overflow".to_owned()
    }
}

async fn send_loop(mut rx: mpsc::Receiver<Value>, url: Uri, client: HttpsClient) {
    while let Some(alert) = rx.recv().await {
        let body = Bytes::from(alert.to_string());
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            let req = Request::builder()
                .method(Method::POST)
                .uri(url.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()));
            let Ok(req) = req else { break };
            match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => break,
                Ok(Ok(resp)) => {
                    tracing::warn!(status = %resp.status(), attempt, "alert webhook refused the alert");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, attempt, "alert webhook unreachable"),
                Err(_) => tracing::warn!(attempt, "alert webhook timed out"),
            }
            if attempt == ATTEMPTS {
                tracing::error!("alert dropped after {ATTEMPTS} attempts");
            } else {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alerter(min_interval: Duration) -> (Alerter, mpsc::Receiver<Value>) {
        let (tx, rx) = mpsc::channel(QUEUE * 40);
        let limiter = Quota::with_period(min_interval)
            .map(|q| Arc::new(RateLimiter::keyed(q.allow_burst(NonZeroU32::MIN))));
        (
            Alerter {
                tx: Some(tx),
                limiter,
            },
            rx,
        )
    }

    fn key<'a>(name: &'a str, team: Option<&'a str>) -> AlertKey<'a> {
        AlertKey {
            kind: "policy",
            name,
            team,
        }
    }

    #[test]
    fn one_alert_per_rule_and_team_per_interval() {
        let (a, mut rx) = alerter(Duration::from_mins(1));
        for _ in 0..10_000 {
            a.fire(&key("block-secrets", Some("ml")), Value::Null);
        }
        a.fire(&key("block-secrets", Some("web")), Value::Null);
        a.fire(&key("redact-pii", Some("ml")), Value::Null);
        let mut sent = 0;
        while rx.try_recv().is_ok() {
            sent += 1;
        }
        assert_eq!(sent, 3);
    }

    #[test]
    fn the_keys_kept_stay_bounded() {
        let (a, _rx) = alerter(Duration::from_mins(1));
        for i in 0..(MAX_KEYS * 2) {
            a.fire(&key("r", Some(&format!("team-{i}"))), Value::Null);
        }
        assert!(a.tracked_keys() <= MAX_KEYS + 1, "{}", a.tracked_keys());
    }
}
