//! The writer thread: batches records, seals them into the hash chain,
//! appends them to the current segment and syncs — one transaction per
//! batch. The chain head moves only once a batch is durably written; a
//! failed write is cut off the file again (torn bytes truncated) and the
//! same records are re-sealed and retried, so the chain on disk never has a
//! gap or a dangling link and nothing queued is lost.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, mpsc as std_mpsc},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

use super::{Msg, chain, spool};
use crate::{metrics::Metrics, record::AuditRecord};

/// Most records written in one batch.
const MAX_BATCH: usize = 1024;
/// Pause before retrying a failed write, doubling up to `RETRY_MAX`.
const RETRY_START: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long a response waits on a record that cannot be written before it
/// is told so (the record itself is still retried).
const GIVE_UP_ACK: Duration = Duration::from_secs(5);

/// Where segments go, when a new one starts, and how long old ones stay.
pub(super) struct Segments {
    pub(super) dir: PathBuf,
    pub(super) max_bytes: u64,
    pub(super) retention: Option<Duration>,
    /// Shipping is on: a segment with records not yet acknowledged by
    /// JetStream stays, whatever its age.
    pub(super) hold_unshipped: bool,
    pub(super) metrics: Arc<Metrics>,
    /// This host's name, for the `retention` events.
    pub(super) host: String,
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

    /// The oldest segments last written longer ago than the retention
    /// (never the current one, nor one with records not shipped yet), with
    /// where the kept chain starts: `(files, through_seq, last_hash)`.
    fn expired(
        &self,
        current: &Path,
        head: &chain::ChainHead,
    ) -> Option<(Vec<PathBuf>, u64, String)> {
        let retention = self.retention?;
        let files = chain::segments(&self.dir).ok()?;
        let shipped = self
            .hold_unshipped
            .then(|| spool::Cursor::read(&self.dir).map_or(0, |c| c.seq));
        let mut gone = Vec::new();
        for (i, file) in files.iter().enumerate() {
            if file.as_path() == current {
                break;
            }
            let old = std::fs::metadata(file)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > retention));
            if !old {
                break;
            }
            // Its last seq is one before the next segment's first.
            let last = files
                .get(i + 1)
                .and_then(|next| next.file_name()?.to_str()?.get(6..22)?.parse::<u64>().ok())
                .map_or(u64::MAX, |first| first.saturating_sub(1));
            if shipped.is_some_and(|s| last > s) {
                self.metrics.audit_retention_held.inc();
                tracing::warn!(file = %file.display(), "audit segment past retention kept: not shipped yet");
                break;
            }
            gone.push(file.clone());
        }
        if gone.is_empty() {
            return None;
        }
        // The kept chain starts at the next segment's first record (or,
        // when that is the new empty segment, right after the head).
        let next = files.get(gone.len()).filter(|f| f.as_path() != current);
        let start = next.and_then(|f| {
            let data = std::fs::read(f).ok()?;
            let line = data.split(|&b| b == b'\n').next()?;
            let v: serde_json::Value = serde_json::from_slice(line).ok()?;
            Some((
                v["seq"].as_u64()?.checked_sub(1)?,
                v["prev_hash"].as_str()?.to_owned(),
            ))
        });
        let (through, last_hash) = match (next, start) {
            (None, _) => (head.seq, head.hash.clone()),
            (Some(_), Some(s)) => s,
            // The next segment cannot be read: nothing is removed.
            (Some(_), None) => return None,
        };
        Some((gone, through, last_hash))
    }
}

/// How the writer thread batches and whom it tells.
pub(super) struct WriterOptions {
    /// Group-write window.
    pub(super) linger: Duration,
    /// At most this long between a write and its sync; zero: every write
    /// is synced before it is acknowledged (`durability: sync`).
    pub(super) sync_every: Duration,
    /// Records once written, for live subscribers.
    pub(super) live: tokio::sync::broadcast::Sender<bytes::Bytes>,
}

/// A record waiting to be written, and who waits for it.
struct Queued {
    record: Box<AuditRecord>,
    ack: Option<oneshot::Sender<bool>>,
    since: Instant,
}

/// The segment being appended to.
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Bytes of whole batches written so far.
    pub(super) size: u64,
}

impl Segment {
    /// Appends `bytes`, and syncs when `sync` says; on failure cuts the
    /// file back to its last whole batch so no torn line stays behind.
    fn append(&mut self, bytes: &[u8], batch: u64, sync: bool) -> io::Result<()> {
        let written = if crate::faults::audit_write_fails(batch) {
            // A torn write: half of the batch reaches the file.
            let _ = self.file.write_all(&bytes[..bytes.len() / 2]);
            Err(io::Error::other("injected audit write failure"))
        } else {
            self.file
                .write_all(bytes)
                .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) })
        };
        if let Err(e) = written {
            let _ = self.file.set_len(self.size);
            let _ = self.file.sync_data();
            return Err(e);
        }
        self.size += bytes.len() as u64;
        Ok(())
    }
}

/// The writer: the queue, the chain head, the current segment.
pub(super) struct Writer {
    /// Cleared while writes fail, set again by the next that succeeds.
    pub(super) healthy: Arc<std::sync::atomic::AtomicBool>,
    pub(super) rx: mpsc::Receiver<Msg>,
    pub(super) head: chain::ChainHead,
    pub(super) segment: Segment,
    pub(super) segments: Segments,
    pub(super) metrics: Arc<Metrics>,
    /// Where each record is serialized before it is sealed (reused).
    pub(super) scratch: Vec<u8>,
    pub(super) options: WriterOptions,
}

impl Writer {
    /// Runs until every sender is gone and everything queued is written
    /// (or, at shutdown, could not be after retrying).
    pub(super) fn run(mut self) {
        self.metrics
            .audit_last_seq
            .set(i64::try_from(self.head.seq).unwrap_or(i64::MAX));
        let fault_delay = crate::faults::audit_write_delay();
        if let Some(delay) = fault_delay {
            tracing::warn!(?delay, "fault injection: audit writes are delayed");
        }
        self.synced();
        let mut pending: Vec<Queued> = Vec::new();
        let mut flushes: Vec<std_mpsc::Sender<()>> = Vec::new();
        let mut last_write = Instant::now();
        // When the oldest write not synced yet was made; `None`: all synced.
        let mut unsynced_since: Option<Instant> = None;
        let mut retry = RETRY_START;
        let mut batch_no = 0u64;
        let mut open = true;
        loop {
            if pending.is_empty() {
                let first = match unsynced_since {
                    None => self.rx.blocking_recv(),
                    Some(since) => self.recv_until(since + self.options.sync_every),
                };
                let Some(first) = first else {
                    // The sync is due (or the queue closed): a sync of its
                    // own, then wait again.
                    if self.sync_now(&mut retry) {
                        unsynced_since = None;
                    }
                    if self.rx.is_closed() && self.rx.is_empty() && unsynced_since.is_none() {
                        break;
                    }
                    continue;
                };
                if let Some(delay) = fault_delay {
                    std::thread::sleep(delay);
                }
                // Group write: records arriving during the linger window
                // share this batch's write.
                let rest = self.options.linger.saturating_sub(last_write.elapsed());
                if !rest.is_zero() {
                    std::thread::sleep(rest);
                }
                take(first, &mut pending, &mut flushes);
            }
            while open && pending.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(msg) => take(msg, &mut pending, &mut flushes),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            batch_no += 1;
            last_write = Instant::now();
            let sync = self.options.sync_every.is_zero()
                || !flushes.is_empty()
                || !open
                || unsynced_since.is_some_and(|t| t.elapsed() >= self.options.sync_every);
            match self.write_batch(&mut pending, batch_no, sync) {
                Ok(()) => {
                    if sync {
                        unsynced_since = None;
                    } else {
                        unsynced_since.get_or_insert(last_write);
                    }
                    retry = RETRY_START;
                    self.healthy
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    self.healthy
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    self.metrics.audit_write_errors.inc();
                    tracing::error!(path = %self.segment.path.display(), error = %e, records = pending.len(), "audit write failed; the batch is cut off the file and retried");
                    for q in &mut pending {
                        if q.since.elapsed() > GIVE_UP_ACK
                            && let Some(ack) = q.ack.take()
                        {
                            let _ = ack.send(false);
                        }
                    }
                    if !open && retry >= RETRY_MAX {
                        self.metrics.audit_dropped.inc_by(pending.len() as u64);
                        tracing::error!(
                            records = pending.len(),
                            "audit records lost at shutdown: the disk keeps failing"
                        );
                        pending.clear();
                    }
                    std::thread::sleep(retry);
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            }
            for ack in flushes.drain(..) {
                let _ = ack.send(());
            }
            if !open && pending.is_empty() && self.rx.is_empty() {
                break;
            }
        }
    }

    /// Everything written so far is on disk.
    fn synced(&self) {
        self.metrics
            .audit_synced_seq
            .set(i64::try_from(self.head.seq).unwrap_or(i64::MAX));
    }

    /// Seals `pending` against a copy of the chain head, appends them (and
    /// syncs, when `sync` says — then also what earlier batches wrote); only
    /// then does the head move and everyone waiting hear of it. On failure
    /// nothing moved: the same records are sealed again next time.
    fn write_batch(
        &mut self,
        pending: &mut Vec<Queued>,
        batch_no: u64,
        sync: bool,
    ) -> io::Result<()> {
        let mut head = self.head.clone();
        let mut bytes = Vec::with_capacity(pending.len() * 1024);
        let mut sealed = Vec::new();
        let subscribed = self.options.live.receiver_count() > 0;
        // One buffer for every record of the batch: serialized, then sealed
        // straight onto the batch's bytes.
        let json = &mut self.scratch;
        pending.retain(|q| {
            json.clear();
            match serde_json::to_writer(&mut *json, &q.record) {
                Ok(()) => {
                    let start = chain::seal_into(json, &mut head, &mut bytes);
                    if subscribed {
                        sealed.push(bytes::Bytes::copy_from_slice(&bytes[start..]));
                    }
                    true
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit record cannot be encoded; dropped");
                    self.metrics.audit_dropped.inc();
                    false
                }
            }
        });
        if pending.is_empty() {
            if sync {
                self.segment.file.sync_data()?;
                self.synced();
            }
            return Ok(());
        }
        self.segment.append(&bytes, batch_no, sync)?;
        self.head = head;
        if sync {
            self.synced();
        }
        self.metrics.audit_records.inc_by(pending.len() as u64);
        self.metrics
            .audit_last_seq
            .set(i64::try_from(self.head.seq).unwrap_or(i64::MAX));
        for q in pending.drain(..) {
            if let Some(ack) = q.ack {
                let _ = ack.send(true);
            }
        }
        for line in sealed {
            let _ = self.options.live.send(line);
        }
        if self.segment.size >= self.segments.max_bytes {
            self.rotate();
        }
        Ok(())
    }

    fn rotate(&mut self) {
        // The segment left behind is complete on disk before the next one
        // starts.
        if let Err(e) = self.segment.file.sync_data() {
            self.metrics.audit_write_errors.inc();
            tracing::error!(error = %e, "cannot sync the audit segment; continuing it");
            return;
        }
        self.synced();
        match self.segments.open(self.head.seq + 1) {
            Ok((path, file)) => {
                tracing::info!(file = %path.display(), "audit segment rotated");
                self.segment = Segment {
                    path,
                    file,
                    size: 0,
                };
                self.expire();
            }
            Err(e) => {
                self.metrics.audit_write_errors.inc();
                tracing::error!(error = %e, "cannot start a new audit segment; continuing the current one");
            }
        }
    }
}

impl Writer {
    /// Removes the segments past retention — after recording their removal
    /// in the chain (a `retention` event naming the last seq and hash
    /// removed), so a verifier can tell retention from deletion. If the
    /// event cannot be written, nothing is removed.
    fn expire(&mut self) {
        let Some((files, through_seq, last_hash)) =
            self.segments.expired(&self.segment.path, &self.head)
        else {
            return;
        };
        let names: Vec<String> = files
            .iter()
            .filter_map(|f| f.file_name()?.to_str().map(str::to_owned))
            .collect();
        let marker = serde_json::json!({
            "id": uuid::Uuid::now_v7().to_string(),
            "ts": crate::record::timestamp(std::time::SystemTime::now()),
            "host": self.segments.host,
            "event": "retention",
            "retention": {"through_seq": through_seq, "last_hash": last_hash, "segments": names},
        });
        let mut head = self.head.clone();
        let Ok(json) = serde_json::to_vec(&marker) else {
            return;
        };
        let line = chain::seal(&json, &mut head);
        // Synced (with everything before it) before any file goes.
        if let Err(e) = self.segment.append(&line, 0, true) {
            self.metrics.audit_write_errors.inc();
            tracing::error!(error = %e, "cannot record the retention of old audit segments; they stay");
            return;
        }
        self.head = head;
        self.metrics.audit_records.inc();
        self.synced();
        for file in files {
            match std::fs::remove_file(&file) {
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

impl Writer {
    /// Syncs what was written; on failure backs off (`retry`) and says so.
    fn sync_now(&mut self, retry: &mut Duration) -> bool {
        match self.write_batch(&mut Vec::new(), 0, true) {
            Ok(()) => true,
            Err(e) => {
                self.healthy
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                self.metrics.audit_write_errors.inc();
                tracing::error!(path = %self.segment.path.display(), error = %e, "audit sync failed; retried");
                std::thread::sleep(*retry);
                *retry = (*retry * 2).min(RETRY_MAX);
                false
            }
        }
    }

    /// The next message, or `None` once `deadline` passed (or every sender
    /// is gone) with none: while written records wait for their sync, the
    /// queue is looked at every linger window instead of waited on.
    fn recv_until(&mut self, deadline: Instant) -> Option<Msg> {
        let step = self.options.linger.max(Duration::from_millis(1));
        loop {
            match self.rx.try_recv() {
                Ok(msg) => return Some(msg),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            std::thread::sleep(left.min(step));
        }
    }
}

/// Adds a message to the batch being formed.
fn take(msg: Msg, pending: &mut Vec<Queued>, flushes: &mut Vec<std_mpsc::Sender<()>>) {
    match msg {
        Msg::Record(record, ack) => pending.push(Queued {
            record,
            ack,
            since: Instant::now(),
        }),
        Msg::Flush(ack) => flushes.push(ack),
    }
}
