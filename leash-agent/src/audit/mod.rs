//! Audit records: one JSON object per exchange, appended to JSON Lines
//! segment files in `audit.dir` by a dedicated writer thread behind a bounded
//! queue, so the request path never waits on the disk. Every line is sealed
//! into a hash chain (see [`chain`]).

pub mod chain;
pub mod config;
pub mod index;
pub mod read;
pub mod spool;
pub mod summary;
mod writer;

use std::{
    fs::OpenOptions,
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

/// `durability: batch`: at most one write per this long. Records arriving
/// meanwhile join the next batch: one `write` for many records under steady
/// load (what a crash of the process may lose: the records of this window
/// not yet written). Syncs are rarer still: `audit.sync_interval_ms`.
const BATCH_LINGER: Duration = Duration::from_millis(5);

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
    #[error(
        "another process writes the audit trail in {0} (its writer lock is taken): one Leash per audit directory"
    )]
    Busy(PathBuf),
}

use crate::record::AuditRecord;

enum Msg {
    /// A record, and who waits for it to be on disk (`durability: sync`).
    Record(Box<AuditRecord>, Option<tokio::sync::oneshot::Sender<bool>>),
    Flush(std_mpsc::Sender<()>),
}

/// When a response may complete relative to its audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Records are written in batches (within 5 ms) and synced at most
    /// `audit.sync_interval_ms` later: a crash of the process loses what
    /// was not written yet, a crash of the machine what was not synced.
    Batch,
    /// A response completes only after its record is on disk.
    Sync,
}

/// What happens when the queue to the writer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// `overflow: block`: where records go that could not wait for room
    /// (an exchange ended without a body to hold back); one relay task
    /// feeds them to the writer as room frees up.
    overflow_tx: Option<mpsc::UnboundedSender<Msg>>,
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
    /// body to hold: the client went away). A full queue under `block`
    /// hands the record to the overflow relay (counted), which waits for
    /// room; under `drop` the record is counted and logged.
    pub fn submit(&self, record: AuditRecord) {
        match self.tx.try_send(Msg::Record(Box::new(record), None)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => match &self.overflow_tx {
                Some(relay) => {
                    self.metrics.audit_overflowed.inc();
                    if relay.send(msg).is_err() {
                        self.dropped("writer stopped");
                    }
                }
                None => self.dropped("queue full"),
            },
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
        // Queued at once when there is room: a caller that never polls the
        // future (the client left before the response) loses nothing.
        let waiting = match self.tx.try_send(msg) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(msg)) if self.overflow == Overflow::Block => {
                Some(msg)
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped("queue full");
                return Box::pin(std::future::ready(false));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.dropped("writer stopped");
                return Box::pin(std::future::ready(false));
            }
        };
        let sink = self.clone();
        Box::pin(async move {
            if let Some(msg) = waiting
                && sink.tx.send(msg).await.is_err()
            {
                sink.dropped("writer stopped");
                return false;
            }
            match ack_rx {
                Some(rx) => rx.await.unwrap_or(false),
                None => true,
            }
        })
    }
}

/// Under `overflow: block`, the one task that moves records which could not
/// wait into the queue as room frees up (nothing spawned per record).
fn overflow_relay(
    tx: &mpsc::Sender<Msg>,
    overflow: Overflow,
) -> Option<mpsc::UnboundedSender<Msg>> {
    if overflow != Overflow::Block {
        return None;
    }
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let (relay_tx, mut relay_rx) = mpsc::unbounded_channel::<Msg>();
    let tx = tx.clone();
    rt.spawn(async move {
        while let Some(msg) = relay_rx.recv().await {
            if tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    Some(relay_tx)
}

/// The disk side: owns the segment file and the writer thread.
pub struct AuditWriter {
    path: PathBuf,
    dir: PathBuf,
    /// The last write (and sync, when one was due) succeeded.
    healthy: Arc<std::sync::atomic::AtomicBool>,
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    live: tokio::sync::broadcast::Sender<bytes::Bytes>,
}

/// Records kept for a live subscriber that reads slower than they come.
const LIVE_BACKLOG: usize = 1024;

/// The file whose lock makes one process the trail's writer.
const WRITER_LOCK: &str = ".writer.lock";

/// What the writer is made of, before it opens the trail.
struct Parts {
    config: AuditConfig,
    host: String,
    metrics: Arc<Metrics>,
    rx: mpsc::Receiver<Msg>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    live: tokio::sync::broadcast::Sender<bytes::Bytes>,
}

type OpenError = (AuditError, Arc<std::sync::atomic::AtomicBool>);

impl Parts {
    /// Continues the chain in a new segment: the writer, ready to run.
    fn open(self) -> Result<writer::Writer, OpenError> {
        let unhealthy = Arc::clone(&self.healthy);
        self.open_inner().map_err(|e| (e, unhealthy))
    }

    fn open_inner(self) -> Result<writer::Writer, AuditError> {
        let Self {
            config,
            host,
            metrics,
            rx,
            healthy,
            live,
        } = self;
        let (config, host) = (&config, host.as_str());
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
        let mut size = file.metadata().map_or(0, |m| m.len());
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
            let line = chain::seal(&json, &mut head);
            (&file)
                .write_all(&line)
                .and_then(|()| file.sync_data())
                .map_err(|e| AuditError::Open(path.clone(), e))?;
            size += line.len() as u64;
        }
        let segments = writer::Segments {
            dir: config.dir.clone(),
            max_bytes: config.segment_max_bytes,
            retention: config.retention,
            hold_unshipped: config.ship.is_some(),
            metrics: Arc::clone(&metrics),
            host: host.to_owned(),
        };
        // Sync mode answers each record as soon as it is on disk.
        let (linger, sync_every) = match config.durability {
            Durability::Batch => (BATCH_LINGER, config.sync_interval),
            Durability::Sync => (Duration::ZERO, Duration::ZERO),
        };
        let writer = writer::Writer {
            healthy: Arc::clone(&healthy),
            rx,
            head,
            segment: writer::Segment {
                path: path.clone(),
                file,
                size,
            },
            segments,
            metrics: Arc::clone(&metrics),
            scratch: Vec::with_capacity(4096),
            options: writer::WriterOptions {
                linger,
                sync_every,
                live: live.clone(),
            },
        };
        Ok(writer)
    }
}

impl AuditWriter {
    /// Creates `dir` (0700), takes its writer lock — one process writes a
    /// trail: a second one is refused, or, when it is the successor of a
    /// hand-over (`after_predecessor`), its writer waits until the
    /// predecessor's has written its last record (records queue
    /// meanwhile) — then makes a new segment (0600), continues the hash
    /// chain from the newest segment (marking a torn tail left by a crash),
    /// and starts the writer.
    pub fn start(
        config: &AuditConfig,
        host: &str,
        metrics: Arc<Metrics>,
        after_predecessor: bool,
    ) -> Result<(Self, AuditSink), AuditError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)
            .map_err(|e| AuditError::CreateDir(config.dir.clone(), e))?;
        let lock_path = config.dir.join(WRITER_LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| AuditError::Open(lock_path.clone(), e))?;
        let wait = match lock.try_lock() {
            Ok(()) => false,
            Err(std::fs::TryLockError::WouldBlock) if after_predecessor => true,
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(AuditError::Busy(config.dir.clone()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(AuditError::Open(lock_path, e)),
        };
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let (live, _) = tokio::sync::broadcast::channel(LIVE_BACKLOG);
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let parts = Parts {
            config: config.clone(),
            host: host.to_owned(),
            metrics: Arc::clone(&metrics),
            rx,
            healthy: Arc::clone(&healthy),
            live: live.clone(),
        };
        let thread = if wait {
            tracing::info!(dir = %config.dir.display(), "audit: the predecessor writes its last records; ours queue until it is done");
            std::thread::Builder::new()
                .name("leash-audit".into())
                .spawn(move || {
                    if let Err(e) = lock.lock() {
                        tracing::error!(error = %e, "audit: cannot take the writer lock");
                    }
                    match parts.open() {
                        Ok(writer) => {
                            tracing::info!(path = %writer.segment.path.display(), "audit: writing, after the predecessor");
                            writer.run();
                        }
                        Err((e, healthy)) => {
                            healthy.store(false, std::sync::atomic::Ordering::Relaxed);
                            tracing::error!(error = %e, "audit: cannot continue the trail after the predecessor; records are not written");
                        }
                    }
                    drop(lock);
                })
        } else {
            let writer = parts.open().map_err(|(e, _)| e)?;
            std::thread::Builder::new()
                .name("leash-audit".into())
                .spawn(move || {
                    writer.run();
                    drop(lock);
                })
        }
        .map_err(AuditError::Thread)?;
        let sink = AuditSink {
            tx: tx.clone(),
            overflow_tx: overflow_relay(&tx, config.overflow),
            metrics,
            durability: config.durability,
            overflow: config.overflow,
        };
        Ok((
            Self {
                path: config.dir.clone(),
                dir: config.dir.clone(),
                healthy,
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

    /// Whether records can be written now: the last write (and sync) of
    /// the writer succeeded, and a file can be made in the audit directory (the next
    /// segment). For `/readyz`; cheap enough to call per probe.
    pub fn writable(&self) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
        let (healthy, dir) = (Arc::clone(&self.healthy), self.dir.clone());
        move || {
            if !healthy.load(std::sync::atomic::Ordering::Relaxed) {
                return Err("the last audit write failed (retrying)".to_owned());
            }
            let probe = dir.join(".leash-ready-probe");
            std::fs::write(&probe, b"")
                .and_then(|()| std::fs::remove_file(&probe))
                .map_err(|e| format!("cannot write in {}: {e}", dir.display()))
        }
    }

    /// Every record, as its sealed JSON line, once it is written to its
    /// file (for the console's live feed). Costs nothing while nobody
    /// subscribes.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Event;

    /// `durability: batch`: records are in the file within the linger
    /// window, synced (and so shippable) only by the sync interval or a
    /// flush.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn batch_records_are_written_at_once_and_synced_later() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "dir: {:?}\ndurability: batch\nsync_interval_ms: 1000\n",
            dir.path()
        );
        let raw: config::RawAudit = serde_norway::from_str(&yaml).unwrap();
        let config = AuditConfig::validate(raw, dir.path(), "h").unwrap();
        let metrics = Arc::new(Metrics::new());
        let (writer, sink) = AuditWriter::start(&config, "h", Arc::clone(&metrics), false).unwrap();
        let node: Arc<str> = Arc::from("h");
        for _ in 0..3 {
            sink.submit(AuditRecord::event(
                Event::ShadowAi,
                &node,
                crate::record::Caller::default(),
            ));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while metrics.audit_last_seq.get() < 3 {
            assert!(std::time::Instant::now() < deadline, "not written");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let lines: usize = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
            .sum();
        assert_eq!(lines, 3, "written to the file");
        assert!(
            metrics.audit_synced_seq.get() < 3,
            "synced at once, not within the interval"
        );
        writer.flush().await;
        assert_eq!(metrics.audit_synced_seq.get(), 3, "a flush syncs");
        let bad: config::RawAudit = serde_norway::from_str("sync_interval_ms: 0\n").unwrap();
        let err = AuditConfig::validate(bad, dir.path(), "h").unwrap_err();
        assert!(err.to_string().contains("audit.sync_interval_ms"), "{err}");
    }
}
