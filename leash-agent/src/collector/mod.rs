//! `leash collector`: the central side of shipping. A durable JetStream pull
//! consumer (shared by every collector, so several can run at once) feeds
//! batches into PostgreSQL; a batch is acknowledged to JetStream only after
//! its transaction commits, so a crash at any point means redelivery, and
//! redelivery is harmless (`ON CONFLICT DO NOTHING`). Each host's hash chain
//! and sequence are checked as records arrive; breaks and gaps go to
//! `leash_chain_faults` and to metrics, never silently accepted.

pub mod config;
pub mod query;
pub mod rollup;
pub mod store;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::StreamExt;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::watch;

pub use self::config::CollectorConfig;
use crate::{
    metrics::KindLabels,
    ship::{self, ShipError},
};

/// The kinds of `leash_collector_chain_faults_total`.
const FAULT_KINDS: [&str; 3] = ["chain_break", "gap", "fork"];
const GAP_SCAN: Duration = Duration::from_secs(5);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("cannot read or make the admin token {0}: {1}")]
    Token(std::path::PathBuf, std::io::Error),
    #[error(transparent)]
    Nats(#[from] ShipError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on collector.admin.listen {0}: {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
}

pub struct CollectorMetrics {
    registry: Registry,
    records: Family<KindLabels, Counter>,
    faults: Family<KindLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    batches: Counter,
    last_commit: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl CollectorMetrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let records = Family::<KindLabels, Counter>::default();
        registry.register(
            "leash_collector_records",
            "Records received, by kind (inserted, duplicate)",
            records.clone(),
        );
        let faults = Family::<KindLabels, Counter>::default();
        registry.register(
            "leash_collector_chain_faults",
            "Problems found in hosts' audit chains, by kind (chain_break, gap, fork)",
            faults.clone(),
        );
        // Each kind from 0: an alert on `increase()` sees the first fault.
        for kind in FAULT_KINDS {
            faults.get_or_create(&KindLabels { kind }).inc_by(0);
        }
        let errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "leash_collector_errors",
            "Collector failures, by kind (nats, postgres, message)",
            errors.clone(),
        );
        let batches = Counter::default();
        registry.register(
            "leash_collector_batches",
            "Batches committed to PostgreSQL (and then acknowledged)",
            batches.clone(),
        );
        let last_commit = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "leash_collector_last_commit_timestamp_seconds",
            "Unix time of the last committed batch",
            last_commit.clone(),
        );
        Self {
            registry,
            records,
            faults,
            errors,
            batches,
            last_commit,
        }
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    fn count(family: &Family<KindLabels, Counter>, kind: &'static str, n: u64) {
        family.get_or_create(&KindLabels { kind }).inc_by(n);
    }
}

/// Host and epoch of a message. The host is the subject's host token: a
/// host's credentials may publish only on its own subject, so no header
/// or record field can make a record pass for another host's. The epoch
/// (the publisher's own numbering) comes from its headers.
fn origin(msg: &async_nats::Message, host_token: usize) -> Option<(String, i64)> {
    let host = msg.subject.as_str().split('.').nth(host_token)?.to_owned();
    let headers = msg.headers.as_ref()?;
    let epoch = match headers.get("Leash-Epoch") {
        Some(e) => e.as_str().parse().ok()?,
        None => crate::ship::msg_id_epoch(headers.get("Nats-Msg-Id")?.as_str())?,
    };
    Some((host, epoch))
}

/// Runs the collector until `shutdown` turns true.
pub async fn run(
    cfg: CollectorConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), CollectorError> {
    let metrics = Arc::new(CollectorMetrics::new());
    let listener = tokio::net::TcpListener::bind(cfg.admin.listen)
        .await
        .map_err(|e| CollectorError::Bind(cfg.admin.listen, e))?;
    let token = cfg
        .admin
        .token
        .load()
        .map_err(|e| CollectorError::Token(cfg.admin.token.path.clone(), e))?;
    let admin_metrics = Arc::clone(&metrics);
    // The fleet console reads the central store on a connection of its own.
    let fleet = crate::console::FleetSource::new(store::connect(&cfg.postgres_url).await?);
    let console = crate::console::Console::new(
        crate::console::Source::Fleet(fleet.clone()),
        Arc::new(crate::policy::PolicyHandle::new(None, None)),
        crate::provider::Providers::default(),
        None,
        crate::console::auth::Auth::new(token, cfg.admin.listen, &cfg.admin.allowed_hosts),
    );
    tokio::spawn(crate::server::serve(
        listener,
        None,
        Arc::new(crate::admin::Admin::with_encoder(
            Box::new(move || admin_metrics.encode()),
            Some(console),
        )),
        crate::server::ServeOptions {
            name: "collector admin",
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(1),
            limits: crate::server::ConnLimits::default(),
        },
        shutdown.clone(),
    ));

    let mut db = store::connect(&cfg.postgres_url).await?;
    store::migrate(&mut db).await?;
    let client = ship::connect(&cfg.nats, "leash-collector", true).await?;
    let js = jetstream::new(client);
    let Some(consumer) = open_consumer(&cfg, &js, &metrics, &mut shutdown).await else {
        return Ok(());
    };
    // Migrated: the console's summary can be read (or made) now.
    fleet.warm_up();
    tracing::info!(stream = %cfg.nats.stream, durable = %cfg.durable, "collector ready");

    let mut upkeep = Upkeep::start(&db, &cfg, &metrics).await;
    let mut backoff = BACKOFF_START;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        upkeep.due(&mut db, &cfg, &metrics).await;
        let batch = tokio::select! {
            b = consumer.fetch().max_messages(cfg.batch).expires(Duration::from_secs(1)).messages() => b,
            _ = shutdown.changed() => return Ok(()),
        };
        let mut messages = Vec::new();
        match batch {
            Ok(mut stream) => {
                while let Some(m) = stream.next().await {
                    match m {
                        Ok(m) => messages.push(m),
                        Err(e) => {
                            CollectorMetrics::count(&metrics.errors, "nats", 1);
                            tracing::warn!(error = %e, "collector: fetch failed");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                CollectorMetrics::count(&metrics.errors, "nats", 1);
                tracing::warn!(error = %e, retry_in = ?backoff, "collector: cannot fetch");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        }
        if messages.is_empty() {
            continue;
        }
        if store_batch(&cfg, &mut db, &messages, &metrics).await {
            backoff = BACKOFF_START;
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// The collector's periodic work beside storing batches: the gap scan,
/// content retention and record retention, each when due.
struct Upkeep {
    gap_scan: tokio::time::Instant,
    content: tokio::time::Instant,
    content_every: Duration,
    records: tokio::time::Instant,
}

impl Upkeep {
    /// Record retention runs at start, then hourly.
    async fn start(
        db: &tokio_postgres::Client,
        cfg: &CollectorConfig,
        metrics: &CollectorMetrics,
    ) -> Self {
        expire_records(db, cfg, metrics).await;
        let r = cfg.content_retention;
        let now = tokio::time::Instant::now();
        Self {
            gap_scan: now,
            content: now,
            content_every: (r.redacted.min(r.sealed) / 4)
                .clamp(Duration::from_secs(1), Duration::from_hours(1)),
            records: now,
        }
    }

    async fn due(
        &mut self,
        db: &mut tokio_postgres::Client,
        cfg: &CollectorConfig,
        metrics: &CollectorMetrics,
    ) {
        let now = tokio::time::Instant::now();
        if now - self.gap_scan >= GAP_SCAN {
            self.gap_scan = now;
            scan_gaps(db, metrics, cfg.ack_wait).await;
        }
        if now - self.content >= self.content_every {
            self.content = now;
            expire_content(db, cfg, metrics).await;
        }
        if now - self.records >= Duration::from_hours(1) {
            self.records = now;
            expire_records(db, cfg, metrics).await;
        }
    }
}

/// The shared durable consumer, once NATS and the stream are there; `None`
/// if shutdown came first.
async fn open_consumer(
    cfg: &CollectorConfig,
    js: &jetstream::Context,
    metrics: &CollectorMetrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<jetstream::consumer::Consumer<pull::Config>> {
    let mut backoff = BACKOFF_START;
    loop {
        let attempt = async {
            ship::ensure_stream(js, &cfg.nats.stream, &cfg.stream_subjects).await?;
            let stream = js
                .get_stream(&cfg.nats.stream)
                .await
                .map_err(|e| ShipError::stream(&cfg.nats.stream, e))?;
            stream
                .get_or_create_consumer(
                    &cfg.durable,
                    pull::Config {
                        durable_name: Some(cfg.durable.clone()),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait: cfg.ack_wait,
                        max_ack_pending: 100_000,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| ShipError::stream(&cfg.nats.stream, e))
        };
        match attempt.await {
            Ok(c) => return Some(c),
            Err(e) => {
                CollectorMetrics::count(&metrics.errors, "nats", 1);
                tracing::warn!(error = %e, retry_in = ?backoff, "collector: JetStream not ready");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return None,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Applies `collector.content.retention` to the stored content.
async fn expire_content(
    db: &tokio_postgres::Client,
    cfg: &CollectorConfig,
    metrics: &CollectorMetrics,
) {
    let r = cfg.content_retention;
    match query::expire_content(db, (r.redacted, r.sealed)).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(
                chunks = n,
                "captured content past retention removed from the store"
            );
            CollectorMetrics::count(&metrics.records, "content_expired", n);
        }
        Err(e) => tracing::warn!(error = %e, "collector: content retention failed"),
    }
}

/// Applies `collector.retention` to the records: those of the UTC days
/// wholly before `now - retention` go.
async fn expire_records(
    db: &tokio_postgres::Client,
    cfg: &CollectorConfig,
    metrics: &CollectorMetrics,
) {
    let Some(retention) = cfg.retention else {
        return;
    };
    let now = time::OffsetDateTime::now_utc();
    let cutoff = (now - retention).replace_time(time::Time::MIDNIGHT);
    match query::expire_records(db, cutoff).await {
        Ok(n) => {
            tracing::info!(records = n, before = %cutoff, "records past retention removed from the store");
            CollectorMetrics::count(&metrics.records, "expired", n);
        }
        Err(e) => tracing::warn!(error = %e, "collector: record retention failed"),
    }
}

/// Records gaps in the hosts' chains. A hole is only called a gap once the
/// record after it is twice `ack_wait` old: a batch held by a collector
/// that died is redelivered after `ack_wait`, so until then a hole may just
/// be records in flight.
async fn scan_gaps(
    db: &mut tokio_postgres::Client,
    metrics: &CollectorMetrics,
    ack_wait: Duration,
) {
    let settle = i64::try_from(2 * ack_wait.as_secs()).unwrap_or(i64::MAX);
    match store::find_gaps(db, settle).await {
        Ok(gaps) => {
            for g in &gaps {
                tracing::error!(host = %g.host, epoch = g.epoch, seq = g.seq, detail = %g.detail, "audit chain gap");
            }
            CollectorMetrics::count(&metrics.faults, "gap", gaps.len() as u64);
        }
        Err(e) => tracing::warn!(error = %e, "collector: gap scan failed"),
    }
}

/// Stores one fetched batch and acknowledges it after the commit (or asks
/// for redelivery). Whether it was stored.
async fn store_batch(
    cfg: &CollectorConfig,
    db: &mut tokio_postgres::Client,
    messages: &[jetstream::Message],
    metrics: &CollectorMetrics,
) -> bool {
    let mut incoming = Vec::with_capacity(messages.len());
    let mut chunks = Vec::new();
    let mut accepted = Vec::with_capacity(messages.len());
    for m in messages {
        let content = m
            .headers
            .as_ref()
            .and_then(|h| h.get(ship::CONTENT_HEADER))
            .map(|v| v.as_str().to_owned());
        if let Some(header) = content {
            if let Some(chunk) = origin(m, cfg.host_token).and_then(|(host, epoch)| {
                store::Chunk::parse(host, epoch, &header, m.payload.to_vec())
            }) {
                chunks.push(chunk);
                accepted.push(m);
            } else {
                CollectorMetrics::count(&metrics.errors, "message", 1);
                tracing::error!(subject = %m.subject, "collector: malformed content chunk; dropped");
                let _ = m.ack_with(AckKind::Term).await;
            }
            continue;
        }
        if let (Some((host, epoch)), Ok(line)) =
            (origin(m, cfg.host_token), std::str::from_utf8(&m.payload))
        {
            incoming.push(store::Incoming {
                host,
                epoch,
                line: line.to_owned(),
            });
            accepted.push(m);
        } else {
            // Not a Leash record: terminate it, loudly.
            CollectorMetrics::count(&metrics.errors, "message", 1);
            tracing::error!(subject = %m.subject, "collector: message without Leash headers or not UTF-8; dropped");
            let _ = m.ack_with(AckKind::Term).await;
        }
    }
    if db.is_closed() {
        match store::connect(&cfg.postgres_url).await {
            Ok(c) => *db = c,
            Err(e) => {
                CollectorMetrics::count(&metrics.errors, "postgres", 1);
                tracing::warn!(error = %e, "collector: PostgreSQL unavailable");
                nak_all(&accepted).await;
                return false;
            }
        }
    }
    match store::insert_batch(db, &incoming, &chunks).await {
        Ok(outcome) => {
            // Committed: counted, then (and only then) told to JetStream.
            CollectorMetrics::count(&metrics.records, "inserted", outcome.inserted);
            CollectorMetrics::count(&metrics.records, "duplicate", outcome.duplicates);
            CollectorMetrics::count(&metrics.records, "content_chunk", outcome.chunks);
            for f in &outcome.faults {
                tracing::error!(host = %f.host, epoch = f.epoch, seq = f.seq, kind = f.kind, detail = %f.detail, "audit chain fault");
                CollectorMetrics::count(&metrics.faults, f.kind, 1);
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            metrics.last_commit.set(now);
            let committed = metrics.batches.inc() + 1;
            if crate::faults::collector_hold_ack(committed) {
                tracing::warn!(
                    batch = committed,
                    "fault injection: holding the acknowledgements of a committed batch"
                );
                std::future::pending::<()>().await;
            }
            for m in &accepted {
                if let Err(e) = m.ack().await {
                    CollectorMetrics::count(&metrics.errors, "nats", 1);
                    tracing::warn!(error = %e, "collector: ack failed (the record will be redelivered and ignored)");
                }
            }
            true
        }
        Err(e) => {
            CollectorMetrics::count(&metrics.errors, "postgres", 1);
            tracing::warn!(error = %e, "collector: batch not stored; it will be redelivered");
            nak_all(&accepted).await;
            false
        }
    }
}

async fn nak_all(messages: &[&jetstream::Message]) {
    for m in messages {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
}
