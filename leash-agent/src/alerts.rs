//! Alerts: JSON POSTs to `alerts.webhook` (budget breaches now; policy
//! block/alert actions later), sent by a background task behind a bounded
//! queue, retried with backoff, rate-limited per alert key. An alert never
//! contains a secret: only names, numbers and the request id.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
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

/// The sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Alerter {
    tx: Option<mpsc::Sender<Value>>,
    last: Arc<Mutex<HashMap<String, Instant>>>,
    min_interval: Duration,
}

impl Alerter {
    /// An alerter that sends nothing (no webhook configured).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            last: Arc::default(),
            min_interval: Duration::ZERO,
        }
    }

    /// Starts the sender task (inside a tokio runtime).
    pub fn start(config: &AlertConfig, client: HttpsClient) -> Self {
        let Some(url) = config.webhook.clone() else {
            return Self::disabled();
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(send_loop(rx, url, client));
        Self {
            tx: Some(tx),
            last: Arc::default(),
            min_interval: config.min_interval,
        }
    }

    /// Queues `alert` unless one with the same `key` went out less than
    /// `min_interval` ago. Always logged.
    pub fn fire(&self, key: &str, alert: Value) {
        tracing::warn!(%key, alert = %alert, "alert");
        let Some(tx) = &self.tx else {
            return;
        };
        {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if last
                .get(key)
                .is_some_and(|t| now.duration_since(*t) < self.min_interval)
            {
                return;
            }
            last.insert(key.to_owned(), now);
        }
        if tx.try_send(alert).is_err() {
            tracing::error!(%key, "alert queue full: alert not sent");
        }
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
