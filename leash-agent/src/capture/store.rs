//! Where captured content lives: `<dir>/<class>/<day>/<record id>.json`
//! (redacted) or `.age` (sealed), 0600 in 0700 directories, written by one
//! thread so requests never wait on the disk. Bounded: a disk quota (a body
//! that would pass it is not stored, counted) and a queue (full: not
//! stored, counted); requests are never blocked. Retention per class
//! removes content older than its period, except records on the legal hold
//! list; the audit record (metadata) stays.

use std::{
    collections::HashSet,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, SystemTime},
};

use crate::{metrics::Metrics, record::CaptureClass};

/// Content waiting for the writer thread.
const QUEUE: usize = 256;

/// Why content was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    Quota,
    Queue,
}

impl Dropped {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Quota => "quota",
            Self::Queue => "queue",
        }
    }
}

struct Job {
    path: PathBuf,
    bytes: Vec<u8>,
}

pub struct ContentStore {
    dir: PathBuf,
    quota: u64,
    used: Arc<AtomicU64>,
    tx: mpsc::SyncSender<Job>,
    metrics: Arc<Metrics>,
}

fn mkdir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Every content file under `dir`: (path, size, modified).
fn files(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    for class in ["redacted", "sealed"] {
        let Ok(days) = std::fs::read_dir(dir.join(class)) else {
            continue;
        };
        for day in days.flatten() {
            let Ok(entries) = std::fs::read_dir(day.path()) else {
                continue;
            };
            for e in entries.flatten() {
                if let Ok(meta) = e.metadata()
                    && meta.is_file()
                {
                    out.push((
                        e.path(),
                        meta.len(),
                        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    ));
                }
            }
        }
    }
    out
}

impl ContentStore {
    /// Opens (makes) `dir` and starts the writer thread.
    pub fn open(dir: &Path, quota: u64, metrics: Arc<Metrics>) -> std::io::Result<Arc<Self>> {
        mkdir(dir)?;
        let used = Arc::new(AtomicU64::new(files(dir).iter().map(|f| f.1).sum()));
        metrics
            .capture_bytes
            .set(i64::try_from(used.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let (thread_used, thread_metrics) = (Arc::clone(&used), Arc::clone(&metrics));
        std::thread::Builder::new()
            .name("leash-capture".into())
            .spawn(move || {
                for job in rx {
                    if let Err(e) = write(&job) {
                        thread_used.fetch_sub(job.bytes.len() as u64, Ordering::Relaxed);
                        thread_metrics.capture_dropped("write_error");
                        tracing::error!(path = %job.path.display(), error = %e, "captured content not written");
                    }
                }
            })?;
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            quota,
            used,
            tx,
            metrics,
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a record's content is: its class and day (`ts`'s date).
    pub fn path(dir: &Path, class: CaptureClass, id: &str, ts: &str) -> PathBuf {
        crate::record::ContentRef::path(dir, class, id, ts)
    }

    /// Queues `bytes` as the content of record `id`; never waits.
    pub fn put(
        &self,
        class: CaptureClass,
        id: &str,
        ts: &str,
        bytes: Vec<u8>,
    ) -> Result<(), Dropped> {
        let len = bytes.len() as u64;
        let reserved = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u + len <= self.quota).then_some(u + len)
            });
        if reserved.is_err() {
            self.metrics.capture_dropped(Dropped::Quota.as_str());
            return Err(Dropped::Quota);
        }
        let job = Job {
            path: Self::path(&self.dir, class, id, ts),
            bytes,
        };
        if self.tx.try_send(job).is_err() {
            self.used.fetch_sub(len, Ordering::Relaxed);
            self.metrics.capture_dropped(Dropped::Queue.as_str());
            return Err(Dropped::Queue);
        }
        self.metrics.capture_stored.inc();
        self.metrics
            .capture_bytes
            .set(i64::try_from(self.used.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Removes content past its class's retention, except records on hold;
    /// returns how many files went.
    pub fn sweep(&self, retention: &Retention, holds: &HashSet<String>) -> usize {
        let now = SystemTime::now();
        let mut removed = 0;
        for (path, size, modified) in files(&self.dir) {
            let class = if path.extension().is_some_and(|e| e == "age") {
                retention.sealed
            } else {
                retention.redacted
            };
            let old = now.duration_since(modified).unwrap_or_default() >= class;
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            if !old || holds.contains(id) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                self.used.fetch_sub(
                    size.min(self.used.load(Ordering::Relaxed)),
                    Ordering::Relaxed,
                );
                self.metrics.capture_removed.inc();
                removed += 1;
                if let Some(day) = path.parent() {
                    let _ = std::fs::remove_dir(day); // only when empty
                }
            }
        }
        self.metrics
            .capture_bytes
            .set(i64::try_from(self.used.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        removed
    }
}

fn write(job: &Job) -> std::io::Result<()> {
    if let Some(day) = job.path.parent() {
        mkdir(day)?;
    }
    // Written beside it and renamed into place: a reader (the shipper,
    // `leash audit show`) sees the whole content or none.
    let tmp = job.path.with_extension("partial");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = f
        .write_all(&job.bytes)
        .and_then(|()| f.sync_data())
        .and_then(|()| {
            if job.path.exists() {
                return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
            }
            std::fs::rename(&tmp, &job.path)
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Why a record's stored content cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("this record has no captured content")]
    NoContent,
    #[error("this record's content was not stored ({0})")]
    NotStored(String),
    #[error("{} (removed by retention, or deleted)", .0.display())]
    Gone(PathBuf),
    #[error("the content does not match the SHA-256 its record holds: it was altered")]
    Altered,
}

/// The class `record`'s content was captured in.
pub fn class_of(record: &serde_json::Value) -> Result<CaptureClass, ReadError> {
    serde_json::from_value(record["content"]["class"].clone()).map_err(|_| ReadError::NoContent)
}

/// The SHA-256 of `record`'s stored content, or why nothing was stored.
fn sha_of(record: &serde_json::Value) -> Result<&str, ReadError> {
    let reference = &record["content"];
    reference["sha256"].as_str().ok_or_else(|| {
        ReadError::NotStored(
            reference["dropped"]
                .as_str()
                .unwrap_or("unknown reason")
                .to_owned(),
        )
    })
}

/// Whether `stored` is the content `record` names (its SHA-256).
pub fn check(record: &serde_json::Value, stored: &[u8]) -> Result<(), ReadError> {
    if crate::audit::chain::hex_sha256(stored) == sha_of(record)? {
        Ok(())
    } else {
        Err(ReadError::Altered)
    }
}

/// `record`'s content as stored under `dir` (sealed: still encrypted),
/// checked against the SHA-256 the record holds.
pub fn read_checked(
    dir: &Path,
    record: &serde_json::Value,
) -> Result<(CaptureClass, Vec<u8>), ReadError> {
    let class = class_of(record)?;
    sha_of(record)?;
    let path = ContentStore::path(
        dir,
        class,
        record["id"].as_str().unwrap_or_default(),
        record["ts"].as_str().unwrap_or_default(),
    );
    let stored = std::fs::read(&path).map_err(|_| ReadError::Gone(path))?;
    check(record, &stored)?;
    Ok((class, stored))
}

/// How long each class is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub redacted: Duration,
    pub sealed: Duration,
}

/// The record ids on legal hold: one per line in `file` (`#` comments);
/// an absent file holds nothing.
pub fn holds(file: &Path) -> HashSet<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}
