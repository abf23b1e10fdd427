//! Shipping: every audit record of this host to a central NATS JetStream
//! stream, in order, nothing lost. The shipper follows the local spool from
//! a persisted cursor, publishes each record with
//! `Nats-Msg-Id = <host>:<epoch>:<seq>` (JetStream drops duplicates within
//! its window; the collector's `ON CONFLICT` catches the rest), and moves the
//! cursor (an atomic file write) only past records JetStream acknowledged.
//! While NATS is away, records wait in the spool (retention keeps unshipped
//! segments) and publishing retries with capped exponential backoff.
//!
//! A record with captured content is preceded by its content, in chunks of
//! `CONTENT_CHUNK` bytes on the same subject (so only this host can send
//! them), each with `Leash-Content: <seq>/<index>/<count>`; the cursor
//! moves past a record only once its chunks and the record are
//! acknowledged, and a retry sends the same message ids again.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_nats::{HeaderMap, jetstream};

pub mod config;

pub use self::config::{NatsConfig, ShipConfig};
use crate::{
    audit::spool::{self, Cursor, Reader},
    metrics::Metrics,
};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long an acknowledgement may take before the batch is retried.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle shipper looks for new records.
const POLL: Duration = Duration::from_millis(100);
/// Content is shipped in messages of at most this many bytes (under NATS's
/// default 1 MiB payload limit).
pub const CONTENT_CHUNK: usize = 128 * 1024;
/// The header that marks a content chunk: `<seq>/<index>/<count>`.
pub const CONTENT_HEADER: &str = "Leash-Content";
/// JetStream's de-duplication window on streams Leash creates.
const DUPLICATE_WINDOW: Duration = Duration::from_mins(10);

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("cannot read NATS credentials {0}: {1}")]
    Credentials(PathBuf, std::io::Error),
    #[error("`{url}` is not a NATS server address: {source}")]
    Address { url: String, source: std::io::Error },
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("JetStream stream {stream}: {source}")]
    Stream {
        stream: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("audit spool {0}: {1}")]
    Spool(PathBuf, std::io::Error),
}

impl ShipError {
    /// A JetStream error about `stream`.
    pub fn stream(stream: &str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Stream {
            stream: stream.to_owned(),
            source: Box::new(e),
        }
    }
}

/// Connects to NATS as configured. With `background`, returns at once and
/// keeps connecting (a shipper must start while the central side is down).
pub async fn connect(
    cfg: &NatsConfig,
    name: &str,
    background: bool,
) -> Result<async_nats::Client, ShipError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None::<usize>)
        // Back quickly once the server returns: at most a second between
        // attempts (the client's default waits up to several).
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100)
                .saturating_mul(u32::try_from(attempts).unwrap_or(u32::MAX))
                .min(Duration::from_secs(1))
        });
    if background {
        opts = opts.retry_on_initial_connect();
    }
    if let Some(creds) = &cfg.creds {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| ShipError::Credentials(creds.clone(), e))?;
    }
    if let Some(token) = &cfg.token {
        opts = opts.token(token.clone());
    }
    if let Some(file) = &cfg.nkey_file {
        let seed =
            std::fs::read_to_string(file).map_err(|e| ShipError::Credentials(file.clone(), e))?;
        opts = opts.nkey(seed.trim().to_owned());
    }
    if let Some(ca) = &cfg.ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if cfg.url.starts_with("tls://") {
        opts = opts.require_tls(true);
    }
    let addrs: Vec<async_nats::ServerAddr> = cfg
        .url
        .split(',')
        .map(|u| {
            u.trim().parse().map_err(|source| ShipError::Address {
                url: redact_url(u),
                source,
            })
        })
        .collect::<Result<_, _>>()?;
    opts.connect(addrs)
        .await
        .map_err(|source| ShipError::Connect {
            url: redact_url(&cfg.url),
            source,
        })
}

/// Makes sure the stream exists (created with file storage and a wide
/// de-duplication window when it does not).
pub async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: &str,
) -> Result<(), ShipError> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![subjects.to_owned()],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| ShipError::stream(name, e))
}

/// Whether NATS refused an operation for lack of permission.
fn is_permission(e: &ShipError) -> bool {
    let ShipError::Stream { source, .. } = e else {
        return false;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    while let Some(c) = cause {
        let text = c.to_string().to_ascii_lowercase();
        if text.contains("permission") || text.contains("authorization") {
            return true;
        }
        cause = c.source();
    }
    false
}

/// `url` for logs: any `user:password@` in it replaced by `***@`.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|u| {
            let u = u.trim();
            match (u.find("://"), u.rfind('@')) {
                (Some(s), Some(at)) if at > s => format!("{}***{}", &u[..s + 3], &u[at..]),
                _ => u.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The message id JetStream de-duplicates on.
/// `host:epoch:seq:hash`: the record's own hash makes the id one no other
/// host can claim ahead of it (JetStream drops a later message with an id
/// it has seen), while a genuine retry of the same line has the same id.
pub fn msg_id(host: &str, epoch: u64, seq: u64, line: &[u8]) -> String {
    let hash = line_hash(line).unwrap_or("-");
    format!("{host}:{epoch}:{seq}:{hash}")
}

/// The `hash` a sealed line ends with.
fn line_hash(line: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(line).ok()?.trim_end();
    let at = text.rfind("\"hash\":\"")? + "\"hash\":\"".len();
    text.get(at..)?.strip_suffix("\"}")
}

/// The epoch in a message id.
pub fn msg_id_epoch(id: &str) -> Option<i64> {
    let mut parts = id.rsplitn(4, ':');
    let _hash = parts.next()?;
    let _seq = parts.next()?;
    parts.next()?.parse().ok()
}

pub struct Shipper {
    cfg: ShipConfig,
    dir: PathBuf,
    host: String,
    metrics: Arc<Metrics>,
    /// Where captured content is (`capture.dir`), when content is captured.
    content: Option<PathBuf>,
}

/// How long a record's content may take to reach the content store after
/// the record reached the trail (two writer threads): the record waits for
/// it that long before it ships alone.
const CONTENT_LAG: std::time::Duration = std::time::Duration::from_secs(5);

/// The stored content a record line refers to, if any (absent when
/// it was not stored or retention removed it: the record ships alone). A
/// record written moments ago may be on disk before its content: that is
/// waited for, up to [`CONTENT_LAG`] after the record's time.
async fn content_of(dir: &Path, line: &[u8]) -> Option<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    v["content"]["sha256"].as_str()?;
    let class = serde_json::from_value(v["content"]["class"].clone()).ok()?;
    let ts = v["ts"].as_str()?;
    let path = crate::record::ContentRef::path(dir, class, v["id"].as_str()?, ts);
    let written = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(std::time::SystemTime::from);
    loop {
        if let Ok(bytes) = tokio::fs::read(&path).await {
            return Some(bytes);
        }
        let young = written
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < CONTENT_LAG);
        if !young {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

impl Shipper {
    pub fn new(cfg: ShipConfig, dir: &Path, host: &str, metrics: Arc<Metrics>) -> Self {
        Self {
            cfg,
            dir: dir.to_path_buf(),
            host: host.to_owned(),
            metrics,
            content: None,
        }
    }

    /// Ships each record's captured content (from `dir`) before it.
    #[must_use]
    pub fn with_content(mut self, dir: Option<PathBuf>) -> Self {
        self.content = dir;
        self
    }

    /// Publishes `bytes` as the content of record `seq`, in chunks; their
    /// acknowledgements go to `pending` (as `seq - 1`: they move the cursor
    /// no further than the record before).
    async fn publish_content(
        &self,
        js: &jetstream::Context,
        (epoch, seq, line): (u64, u64, &[u8]),
        bytes: &[u8],
        pending: &mut Vec<(u64, jetstream::context::PublishAckFuture)>,
    ) -> Result<(), &'static str> {
        let chunks: Vec<&[u8]> = bytes.chunks(CONTENT_CHUNK).collect();
        let id = msg_id(&self.host, epoch, seq, line);
        for (i, chunk) in chunks.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{id}-c{i}").as_str());
            headers.insert("Leash-Host", self.host.as_str());
            headers.insert("Leash-Epoch", epoch.to_string().as_str());
            headers.insert(
                CONTENT_HEADER,
                format!("{seq}/{i}/{}", chunks.len()).as_str(),
            );
            match js
                .publish_with_headers(
                    self.cfg.subject.clone(),
                    headers,
                    bytes::Bytes::copy_from_slice(chunk),
                )
                .await
            {
                Ok(ack) => pending.push((seq - 1, ack)),
                Err(e) => {
                    tracing::warn!(error = %e, "audit shipping: content publish failed");
                    return Err("publish");
                }
            }
        }
        Ok(())
    }

    /// Ships until the process ends. Errors are logged, counted and retried;
    /// only a broken configuration (unreadable credentials) ends it.
    pub async fn run(self) -> Result<(), ShipError> {
        let client = connect(
            &self.cfg.nats,
            &format!("leash-shipper {}", self.host),
            true,
        )
        .await?;
        let mut js = jetstream::new(client);
        js.set_timeout(ACK_TIMEOUT);
        let mut backoff = BACKOFF_START;
        let mut stream_ready = false;
        loop {
            if !stream_ready {
                match ensure_stream(&js, &self.cfg.nats.stream, &self.cfg.stream_subjects).await {
                    Ok(()) => stream_ready = true,
                    // Credentials that may only publish on this host's
                    // subject cannot look at the stream: the collector
                    // creates it; publishing tells whether it is there.
                    Err(e) if is_permission(&e) => {
                        tracing::info!(
                            "audit shipping: no permission to check the stream; publishing"
                        );
                        stream_ready = true;
                    }
                    Err(e) => {
                        self.metrics.ship_error("stream");
                        tracing::warn!(error = %e, retry_in = ?backoff, "audit shipping: stream not ready");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            let Err(kind) = self.ship_from_cursor(&js, &mut backoff).await;
            self.metrics.ship_error(kind);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Reads from the cursor and publishes until something fails; returns
    /// the kind of failure (the caller backs off, then starts again from
    /// the cursor). Every acknowledged batch resets `backoff`: the next
    /// failure is retried quickly again.
    async fn ship_from_cursor(
        &self,
        js: &jetstream::Context,
        backoff: &mut Duration,
    ) -> Result<std::convert::Infallible, &'static str> {
        // The writer of this process set the epoch before shipping started;
        // it does not change while the process runs.
        let epoch = spool::read_epoch(&self.dir)
            .map_err(|e| self.spool_error(&e))?
            .unwrap_or(0);
        let mut cursor = Cursor::load(&self.dir, epoch).map_err(|e| self.spool_error(&e))?;
        let mut reader = Reader::new(&self.dir, cursor.seq);
        loop {
            // Only what is synced: a crash of the machine cannot take back
            // a record the central store already has.
            let synced = u64::try_from(self.metrics.audit_synced_seq.get()).unwrap_or(0);
            let batch = reader
                .next_batch_through(self.cfg.batch, synced)
                .map_err(|e| self.spool_error(&e))?;
            if batch.is_empty() {
                self.update_lag(cursor.seq);
                tokio::time::sleep(POLL).await;
                continue;
            }
            let mut pending = Vec::with_capacity(batch.len());
            let mut failed = None;
            for line in &batch {
                if let Some(dir) = &self.content
                    && let Some(bytes) = content_of(dir, &line.bytes).await
                    && let Err(kind) = self
                        .publish_content(
                            js,
                            (cursor.epoch, line.seq, &line.bytes),
                            &bytes,
                            &mut pending,
                        )
                        .await
                {
                    failed = Some(kind);
                    break;
                }
                let mut headers = HeaderMap::new();
                headers.insert(
                    "Nats-Msg-Id",
                    msg_id(&self.host, cursor.epoch, line.seq, &line.bytes).as_str(),
                );
                headers.insert("Leash-Host", self.host.as_str());
                headers.insert("Leash-Epoch", cursor.epoch.to_string().as_str());
                match js
                    .publish_with_headers(self.cfg.subject.clone(), headers, line.bytes.clone())
                    .await
                {
                    Ok(ack) => pending.push((line.seq, ack)),
                    Err(e) => {
                        tracing::warn!(error = %e, "audit shipping: publish failed");
                        failed = Some("publish");
                        break;
                    }
                }
            }
            // Acks in order: the cursor moves over the acknowledged prefix.
            let mut acked = None;
            for (seq, ack) in pending {
                match ack.await {
                    Ok(_) => acked = acked.max(Some(seq)),
                    Err(e) => {
                        tracing::warn!(error = %e, seq, "audit shipping: no acknowledgement");
                        failed = Some("ack");
                        break;
                    }
                }
            }
            if let Some(seq) = acked.filter(|s| *s > cursor.seq) {
                let n = seq - cursor.seq;
                cursor.seq = seq;
                if let Err(e) = cursor.store(&self.dir) {
                    tracing::error!(error = %e, "audit shipping: cannot write the cursor");
                    return Err("cursor");
                }
                self.metrics.ship_published.inc_by(n);
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                self.metrics.ship_last_ack.set(now);
                self.update_lag(cursor.seq);
                *backoff = BACKOFF_START;
            }
            if let Some(kind) = failed {
                return Err(kind);
            }
            if reader.skipped > 0 {
                tracing::warn!(
                    lines = reader.skipped,
                    "audit shipping: skipped lines that are not records (torn tails)"
                );
                reader.skipped = 0;
            }
        }
    }

    fn spool_error(&self, e: &std::io::Error) -> &'static str {
        tracing::error!(dir = %self.dir.display(), error = %e, "audit shipping: cannot read the spool");
        "spool"
    }

    /// Records written but not acknowledged: the newest seq on disk minus
    /// the cursor.
    fn update_lag(&self, shipped: u64) {
        let newest = u64::try_from(self.metrics.audit_last_seq.get()).unwrap_or(0);
        self.metrics
            .ship_lag
            .set(i64::try_from(newest.saturating_sub(shipped)).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_not_logged() {
        assert_eq!(
            redact_url("nats://alice:s3cret@a:4222, tls://b:4222"),
            "nats://***@a:4222,tls://b:4222"
        );
        let line = br#"{"id":"x","seq":42,"prev_hash":"00","hash":"abc123"}"#;
        assert_eq!(msg_id("web-1", 7, 42, line), "web-1:7:42:abc123");
        assert_eq!(msg_id_epoch("web-1:7:42:abc123"), Some(7));
    }
}
