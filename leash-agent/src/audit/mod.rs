//! Audit records: one JSON object per exchange, appended to JSON Lines
//! segment files in `audit.dir` by a dedicated writer thread behind a bounded
//! queue, so the request path never waits on the disk. Every line is sealed
//! into a hash chain (see [`chain`]).

pub mod chain;
pub mod config;
pub mod read;
pub mod spool;

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, mpsc as std_mpsc},
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc;

pub use self::config::AuditConfig;
use crate::metrics::Metrics;

/// Most records written between two flushes to disk.
const MAX_BATCH: usize = 1024;
/// `durability: batch`: at most one sync per this long. Records arriving
/// meanwhile join the next batch: one `fdatasync` for many records instead
/// of one each under steady load (what a machine crash may lose grows by at
/// most this window).
const BATCH_LINGER: Duration = Duration::from_millis(5);
/// Fault injection for tests: a delay (ms) before each batch is written,
/// standing in for a slow disk. Never set in production.
const FAULT_WRITE_DELAY_ENV: &str = "LEASH_FAULT_AUDIT_WRITE_DELAY_MS";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot create audit directory {0}: {1}")]
    CreateDir(PathBuf, io::Error),
    #[error("cannot open audit file {0}: {1}")]
    Open(PathBuf, io::Error),
    #[error("cannot start audit writer thread: {0}")]
    Thread(io::Error),
    #[error("cannot continue the audit chain in {0}: {1}")]
    Resume(PathBuf, io::Error),
}

use crate::record::AuditRecord;

enum Msg {
    /// A record, and who waits for it to be on disk (`durability: sync`).
    Record(Box<AuditRecord>, Option<tokio::sync::oneshot::Sender<bool>>),
    Flush(std_mpsc::Sender<()>),
}

/// When a response may complete relative to its audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Records are synced in batches; a crash may lose the last unsynced
    /// batch (at most one batch: up to 1024 records, or what arrived while
    /// the previous batch was being synced).
    Batch,
    /// A response completes only after its record is on disk.
    Sync,
}

/// What happens when the queue to the writer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Responses wait for room (backpressure).
    Block,
    /// The record is dropped and counted in `leash_audit_dropped_total`.
    Drop,
}

/// Resolves when a record is queued (and, in sync mode, on disk); `false`
/// if it could not be written.
pub type Submitted = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

/// The request side of the audit trail: cheap to clone.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
    durability: Durability,
    overflow: Overflow,
}

impl AuditSink {
    fn dropped(&self, reason: &'static str) {
        self.metrics.audit_dropped.inc();
        tracing::error!(reason, "audit record dropped");
    }

    pub fn is_sync(&self) -> bool {
        self.durability == Durability::Sync
    }

    /// Queues a record without waiting (an exchange that ended without a
    /// body to hold: the client went away). A full queue under `block` is
    /// waited on by a task; under `drop` the record is counted and logged.
    pub fn submit(&self, record: AuditRecord) {
        match self.tx.try_send(Msg::Record(Box::new(record), None)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) if self.overflow == Overflow::Block => {
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        let tx = self.tx.clone();
                        rt.spawn(async move {
                            let _ = tx.send(msg).await;
                        });
                    }
                    Err(_) => self.dropped("queue full outside the runtime"),
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => self.dropped("queue full"),
            Err(mpsc::error::TrySendError::Closed(_)) => self.dropped("writer stopped"),
        }
    }

    /// Queues a record; the returned future resolves once it is queued
    /// (waiting for room under `block`) and, with `durability: sync`, once
    /// it is on disk.
    pub fn submit_wait(&self, record: AuditRecord) -> Submitted {
        let (ack_tx, ack_rx) = match self.durability {
            Durability::Sync => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                (Some(tx), Some(rx))
            }
            Durability::Batch => (None, None),
        };
        let msg = Msg::Record(Box::new(record), ack_tx);
        let sink = self.clone();
        Box::pin(async move {
            let queued = match sink.overflow {
                Overflow::Block => sink.tx.send(msg).await.is_ok(),
                Overflow::Drop => sink.tx.try_send(msg).is_ok(),
            };
            if !queued {
                sink.dropped(if sink.tx.is_closed() {
                    "writer stopped"
                } else {
                    "queue full"
                });
                return false;
            }
            match ack_rx {
                Some(rx) => rx.await.unwrap_or(false),
                None => true,
            }
        })
    }
}

/// The disk side: owns the segment file and the writer thread.
pub struct AuditWriter {
    path: PathBuf,
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    live: tokio::sync::broadcast::Sender<bytes::Bytes>,
}

/// Records kept for a live subscriber that reads slower than they come.
const LIVE_BACKLOG: usize = 1024;

impl AuditWriter {
    /// Creates `dir` (0700) and a new segment in it (0600), continues the
    /// hash chain from the newest segment (marking a torn tail left by a
    /// crash), and starts the writer.
    pub fn start(
        config: &AuditConfig,
        host: &str,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, AuditSink), AuditError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)
            .map_err(|e| AuditError::CreateDir(config.dir.clone(), e))?;
        let resume =
            chain::resume(&config.dir).map_err(|e| AuditError::Resume(config.dir.clone(), e))?;
        // A chain that starts at seq 1 is a new epoch (for shipping).
        spool::epoch(&config.dir, resume.head.seq == 0 && resume.torn.is_none())
            .map_err(|e| AuditError::Resume(config.dir.clone(), e))?;
        // Segments are named by their first seq, so names sort in chain order.
        let path = config
            .dir
            .join(format!("audit-{:016}.jsonl", resume.head.seq + 1));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| AuditError::Open(path.clone(), e))?;
        let mut head = resume.head;
        if let Some((torn_file, torn_bytes)) = &resume.torn {
            // Mark the record a crash cut short; the chain continues from
            // the last complete one.
            tracing::warn!(file = %torn_file, torn_bytes, "audit: marking a torn record left by a crash");
            let marker = serde_json::json!({
                "id": uuid::Uuid::now_v7().to_string(),
                "ts": crate::record::timestamp(SystemTime::now()),
                "host": host,
                "event": "torn_tail",
                "file": torn_file,
                "torn_bytes": torn_bytes,
            });
            let json = serde_json::to_vec(&marker)
                .map_err(|e| AuditError::Open(path.clone(), e.into()))?;
            (&file)
                .write_all(&chain::seal(json, &mut head))
                .and_then(|()| file.sync_data())
                .map_err(|e| AuditError::Open(path.clone(), e))?;
        }
        let segments = Segments {
            dir: config.dir.clone(),
            max_bytes: config.segment_max_bytes,
            retention: config.retention,
            hold_unshipped: config.ship.is_some(),
            metrics: Arc::clone(&metrics),
        };
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        // Sync mode answers each record as soon as it is on disk.
        let linger = match config.durability {
            Durability::Batch => BATCH_LINGER,
            Durability::Sync => Duration::ZERO,
        };
        let thread_metrics = Arc::clone(&metrics);
        let thread_path = path.clone();
        let (live, _) = tokio::sync::broadcast::channel(LIVE_BACKLOG);
        let thread_live = live.clone();
        let thread = std::thread::Builder::new()
            .name("leash-audit".into())
            .spawn(move || {
                write_loop(
                    rx,
                    file,
                    head,
                    &thread_path,
                    &segments,
                    &thread_metrics,
                    &WriterOptions {
                        linger,
                        live: thread_live,
                    },
                );
            })
            .map_err(AuditError::Thread)?;
        let sink = AuditSink {
            tx: tx.clone(),
            metrics,
            durability: config.durability,
            overflow: config.overflow,
        };
        Ok((
            Self {
                path,
                tx,
                thread: Some(thread),
                live,
            },
            sink,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every record, as its sealed JSON line, once it is on disk (for the
    /// console's live feed). Costs nothing while nobody subscribes.
    pub fn live(&self) -> tokio::sync::broadcast::Sender<bytes::Bytes> {
        self.live.clone()
    }

    /// Waits until every record queued so far is on disk.
    pub async fn flush(&self) {
        let (ack_tx, ack_rx) = std_mpsc::channel();
        if self.tx.send(Msg::Flush(ack_tx)).await.is_ok() {
            let _ =
                tokio::task::spawn_blocking(move || ack_rx.recv_timeout(Duration::from_secs(30)))
                    .await;
        }
    }

    /// Flushes and stops the writer thread.
    pub async fn shutdown(mut self) {
        self.flush().await;
        drop(self.tx);
        if let Some(thread) = self.thread.take() {
            // The thread ends once every sink is gone; sinks held by
            // connections that outlive shutdown are not waited for.
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// Where segments go, when a new one starts, and how long old ones stay.
struct Segments {
    dir: PathBuf,
    max_bytes: u64,
    retention: Option<Duration>,
    /// Shipping is on: a segment with records not yet acknowledged by
    /// JetStream stays, whatever its age.
    hold_unshipped: bool,
    metrics: Arc<Metrics>,
}

impl Segments {
    /// A new segment starting at `seq`.
    fn open(&self, seq: u64) -> io::Result<(PathBuf, File)> {
        let path = self.dir.join(format!("audit-{seq:016}.jsonl"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        Ok((path, file))
    }

    /// Removes segments last written longer ago than the retention, never
    /// the current one.
    fn expire(&self, current: &Path) {
        let Some(retention) = self.retention else {
            return;
        };
        let Ok(files) = chain::segments(&self.dir) else {
            return;
        };
        let shipped = self
            .hold_unshipped
            .then(|| spool::Cursor::read(&self.dir).map_or(0, |c| c.seq));
        for (i, file) in files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.as_path() != current)
        {
            let old = std::fs::metadata(file)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > retention));
            // Its last seq is one before the next segment's first.
            let last = files
                .get(i + 1)
                .and_then(|next| next.file_name()?.to_str()?.get(6..22)?.parse::<u64>().ok())
                .map_or(u64::MAX, |first| first.saturating_sub(1));
            if old && shipped.is_some_and(|s| last > s) {
                self.metrics.audit_retention_held.inc();
                tracing::warn!(file = %file.display(), "audit segment past retention kept: not shipped yet");
                continue;
            }
            if old {
                match std::fs::remove_file(file) {
                    Ok(()) => {
                        tracing::info!(file = %file.display(), "audit segment past retention removed");
                    }
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "cannot remove expired audit segment");
                    }
                }
            }
        }
    }
}

/// How the writer thread batches and whom it tells.
struct WriterOptions {
    /// Group-commit window.
    linger: Duration,
    /// Records once on disk, for live subscribers.
    live: tokio::sync::broadcast::Sender<bytes::Bytes>,
}

fn write_loop(
    mut rx: mpsc::Receiver<Msg>,
    file: File,
    mut head: chain::ChainHead,
    path: &Path,
    segments: &Segments,
    metrics: &Metrics,
    WriterOptions { linger, live }: &WriterOptions,
) {
    let linger = *linger;
    let mut path = path.to_owned();
    let mut lines: Vec<bytes::Bytes> = Vec::new();
    metrics
        .audit_last_seq
        .set(i64::try_from(head.seq).unwrap_or(i64::MAX));
    let mut size = file.metadata().map_or(0, |m| m.len());
    let mut out = io::BufWriter::with_capacity(64 * 1024, file);
    let mut acks = Vec::new();
    let mut synced = Vec::new();
    let fault_delay = std::env::var(FAULT_WRITE_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    if let Some(delay) = fault_delay {
        tracing::warn!(?delay, "fault injection: audit writes are delayed");
    }
    let mut last_sync = std::time::Instant::now();
    while let Some(first) = rx.blocking_recv() {
        if let Some(delay) = fault_delay {
            std::thread::sleep(delay);
        }
        // Group commit: wait out the rest of the linger window so the
        // records arriving meanwhile share this batch's sync.
        let rest = linger.saturating_sub(last_sync.elapsed());
        if !rest.is_zero() {
            std::thread::sleep(rest);
        }
        let mut written = 0u64;
        let mut next = Some(first);
        let mut batch = 0;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(rec, ack) => match write_record(&mut out, &rec, &mut head) {
                    Ok(sealed) => {
                        size += sealed.len() as u64;
                        written += 1;
                        synced.extend(ack);
                        if live.receiver_count() > 0 {
                            lines.push(bytes::Bytes::from(sealed));
                        }
                    }
                    Err(e) => {
                        metrics.audit_write_errors.inc();
                        tracing::error!(path = %path.display(), error = %e, "audit write failed");
                        if let Some(ack) = ack {
                            let _ = ack.send(false);
                        }
                    }
                },
                Msg::Flush(ack) => acks.push(ack),
            }
            batch += 1;
            if batch < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let synced_now = out.flush().and_then(|()| out.get_ref().sync_data());
        last_sync = std::time::Instant::now();
        let ok = match synced_now {
            Ok(()) => {
                metrics.audit_records.inc_by(written);
                metrics
                    .audit_last_seq
                    .set(i64::try_from(head.seq).unwrap_or(i64::MAX));
                true
            }
            Err(e) => {
                metrics.audit_write_errors.inc();
                tracing::error!(path = %path.display(), error = %e, "audit flush failed");
                false
            }
        };
        for ack in synced.drain(..) {
            let _ = ack.send(ok);
        }
        for line in lines.drain(..) {
            if ok {
                let _ = live.send(line);
            }
        }
        if ok && size >= segments.max_bytes {
            match segments.open(head.seq + 1) {
                Ok((new_path, file)) => {
                    tracing::info!(file = %new_path.display(), "audit segment rotated");
                    out = io::BufWriter::with_capacity(64 * 1024, file);
                    path = new_path;
                    size = 0;
                    segments.expire(&path);
                }
                Err(e) => {
                    metrics.audit_write_errors.inc();
                    tracing::error!(error = %e, "cannot start a new audit segment; continuing the current one");
                }
            }
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// Writes one sealed record; returns its length in bytes.
fn write_record(
    out: &mut impl Write,
    record: &AuditRecord,
    head: &mut chain::ChainHead,
) -> io::Result<Vec<u8>> {
    let line = chain::seal(serde_json::to_vec(record)?, head);
    out.write_all(&line)?;
    Ok(line)
}
