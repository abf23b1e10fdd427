//! An index that grows with the audit trail instead of re-reading it: one
//! summary per segment (counts, tokens and cost by hour, team, provider and
//! model; by user, executable, host and caller; policy outcomes by rule and
//! hour; the shadow-AI inventory). A closed segment's summary is computed
//! once and kept in `<audit dir>/index/`; the newest segment's is kept in
//! memory and continued from where it was last read. The JSON Lines
//! segments stay the source of truth: a summary whose segment changed size
//! is recomputed, a missing or unreadable one is rebuilt, and
//! `leash audit reindex` rebuilds them all. Reading is streaming, line by
//! line into a typed slim record: memory stays bounded whatever the trail.

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    io::{self, BufRead as _, BufReader, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use serde_json::Value;

pub use super::summary::{
    CubeKey, FORMAT, Overhead, RECENT_MINUTES, RuleCounts, ShadowHost, Summary,
};
use super::{chain, read::Violation};

/// The index directory inside the audit directory.
pub const INDEX_DIR: &str = "index";

/// A query ran past its deadline.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("reading the audit trail: {0}")]
    Io(#[from] io::Error),
    #[error("the query took longer than allowed; narrow it")]
    Deadline,
}

/// Reads the complete lines of `file` from byte `from` into `summary`,
/// checking `deadline` as it goes. Returns the offset after the last
/// complete line.
fn summarise_from(
    file: &Path,
    from: u64,
    summary: &mut Summary,
    deadline: Option<Instant>,
    on_violation: &mut dyn FnMut(&[u8]),
) -> Result<u64, IndexError> {
    let mut f = File::open(file)?;
    f.seek(SeekFrom::Start(from))?;
    let mut reader = BufReader::with_capacity(256 * 1024, f);
    let mut offset = from;
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            // End, or a record still being written: not counted yet.
            break;
        }
        offset += n as u64;
        if summary.add_line(&line[..n - 1]) {
            on_violation(&line[..n - 1]);
        }
        if summary.records.is_multiple_of(4096) && deadline.is_some_and(|d| Instant::now() > d) {
            return Err(IndexError::Deadline);
        }
    }
    summary.bytes = offset;
    Ok(offset)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[derive(Default)]
struct State {
    /// Closed segments by file name.
    closed: HashMap<String, Arc<Summary>>,
    /// The closed segments summed (their names, in order): a query adds
    /// only the newest segment to it.
    closed_total: Option<(Vec<String>, Arc<Summary>)>,
    /// The newest segment: its name and what was read of it.
    open: Option<(String, Summary)>,
    /// The newest segment's latest violations (raw lines, newest first).
    open_recent: VecDeque<Vec<u8>>,
    /// The closed segments' latest violations (their names; newest first).
    closed_recent: Option<(Vec<String>, Vec<Value>)>,
}

/// Violations kept for the console's "recent" list.
pub const RECENT: usize = 200;

/// Whether a record is a violation the console lists (a block, redaction,
/// alert...).
pub fn is_violation(r: &Value) -> bool {
    r["event"].is_null()
        && r["policy"].is_object()
        && Violation::is(
            r["policy"]["action"].as_str().unwrap_or("allow"),
            !r["policy"]["alerts"].is_null(),
        )
}

/// The summaries of one audit directory, kept current.
pub struct Index {
    dir: PathBuf,
    state: Mutex<State>,
}

impl Index {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            state: Mutex::new(State::default()),
        }
    }

    fn index_dir(&self) -> PathBuf {
        self.dir.join(INDEX_DIR)
    }

    fn stored_path(&self, segment: &str) -> PathBuf {
        self.index_dir().join(format!("{segment}.summary.json"))
    }

    /// A closed segment's summary: from disk when it covers the whole
    /// segment, else computed now and stored.
    fn closed_summary(
        &self,
        segment: &Path,
        deadline: Option<Instant>,
    ) -> Result<Summary, IndexError> {
        let name = file_name(segment);
        let len = std::fs::metadata(segment)?.len();
        let stored = self.stored_path(&name);
        if let Ok(text) = std::fs::read(&stored)
            && let Ok(s) = serde_json::from_slice::<Summary>(&text)
            && s.bytes == len
            && s.format == FORMAT
        {
            return Ok(s);
        }
        let mut s = Summary {
            format: FORMAT,
            ..Summary::default()
        };
        summarise_from(segment, 0, &mut s, deadline, &mut |_| {})?;
        if let Err(e) = self.store(&stored, &s) {
            tracing::warn!(path = %stored.display(), error = %e, "cannot store an audit index summary; it will be recomputed");
        }
        Ok(s)
    }

    fn store(&self, path: &Path, s: &Summary) -> io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.index_dir())?;
        // Two readers (the console, the budgets at start) may store the
        // same summary at once: each writes its own temporary file.
        let tmp = path.with_extension(format!(
            "tmp.{}.{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        serde_json::to_writer(&mut f, s)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// The whole trail summed, brought up to date (new segments summarised,
    /// the newest one read on from where it was).
    pub fn summary(&self, deadline: Option<Instant>) -> Result<Summary, IndexError> {
        let segments = chain::segments(&self.dir)?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let names: Vec<String> = segments.iter().map(|p| file_name(p)).collect();
        // Segments removed by retention leave the index.
        state.closed.retain(|n, _| names.contains(n));
        let Some((newest, older)) = segments.split_last() else {
            state.open = None;
            return Ok(Summary::default());
        };
        let older_names: Vec<String> = older.iter().map(|p| file_name(p)).collect();
        let cached = state
            .closed_total
            .as_ref()
            .filter(|(names, _)| *names == older_names)
            .map(|(_, s)| Arc::clone(s));
        let closed_total = if let Some(t) = cached {
            t
        } else {
            let mut t = Summary::default();
            for seg in older {
                let name = file_name(seg);
                let s = if let Some(s) = state.closed.get(&name) {
                    Arc::clone(s)
                } else {
                    // Rotated since we read it as the open segment, or new.
                    let s = Arc::new(self.closed_summary(seg, deadline)?);
                    state.closed.insert(name, Arc::clone(&s));
                    s
                };
                t.merge(&s);
            }
            let t = Arc::new(t);
            state.closed_total = Some((older_names, Arc::clone(&t)));
            t
        };
        let mut total = (*closed_total).clone();
        let newest_name = file_name(newest);
        let mut open = match state.open.take() {
            Some((name, s)) if name == newest_name => s,
            _ => Summary::default(),
        };
        let len = std::fs::metadata(newest)?.len();
        if len < open.bytes {
            // Cut back (a torn tail removed at restart): read again.
            open = Summary::default();
        }
        if open.bytes == 0 {
            state.open_recent.clear();
        }
        let from = open.bytes;
        let recent = &mut state.open_recent;
        let result = summarise_from(newest, from, &mut open, deadline, &mut |line| {
            recent.push_front(line.to_vec());
            recent.truncate(RECENT);
        });
        total.merge(&open);
        state.open = Some((newest_name, open));
        result?;
        Ok(total)
    }

    /// The latest violations, newest first (at most [`RECENT`]): those
    /// seen in the newest segment, then the closed segments' (read back
    /// once per rotation, within `max_bytes`). Call after [`Index::summary`].
    pub fn recent_violations(&self, max_bytes: u64) -> Result<Vec<Value>, IndexError> {
        let segments = chain::segments(&self.dir)?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<Value> = state
            .open_recent
            .iter()
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        if out.len() >= RECENT {
            return Ok(out);
        }
        let older = segments.split_last().map_or(&[][..], |(_, o)| o);
        let names: Vec<String> = older.iter().map(|p| file_name(p)).collect();
        let fresh = state
            .closed_recent
            .as_ref()
            .is_some_and(|(n, _)| *n == names);
        if !fresh {
            let (found, _) = newest_in(older, is_violation, RECENT, |_| false, max_bytes)?;
            state.closed_recent = Some((names, found));
        }
        if let Some((_, closed)) = &state.closed_recent {
            out.extend(closed.iter().take(RECENT - out.len()).cloned());
        }
        Ok(out)
    }

    /// Drops every stored summary and computes them again.
    pub fn rebuild(&self) -> Result<Summary, IndexError> {
        match std::fs::remove_dir_all(self.index_dir()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = State::default();
        self.summary(None)
    }
}

/// Lines of a file from the last to the first (complete lines only), read
/// in blocks from the end.
pub struct ReverseLines {
    file: File,
    /// Bytes of the file not yet read, from its start.
    pos: u64,
    buf: Vec<u8>,
}

const BLOCK: u64 = 64 * 1024;

impl ReverseLines {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut this = Self {
            file,
            pos: len,
            buf: Vec::new(),
        };
        // A partial last line (still being written) is not a record yet.
        this.fill()?;
        match this.buf.iter().rposition(|&b| b == b'\n') {
            Some(i) => this.buf.truncate(i + 1),
            None if this.pos == 0 => this.buf.clear(),
            None => {}
        }
        Ok(this)
    }

    /// Reads the block before `pos` in front of the buffer.
    fn fill(&mut self) -> io::Result<bool> {
        if self.pos == 0 {
            return Ok(false);
        }
        let start = self.pos.saturating_sub(BLOCK);
        let n = usize::try_from(self.pos - start).unwrap_or(0);
        let mut block = vec![0u8; n];
        self.file.seek(SeekFrom::Start(start))?;
        self.file.read_exact(&mut block)?;
        block.extend_from_slice(&self.buf);
        self.buf = block;
        self.pos = start;
        Ok(true)
    }

    /// The next line (newest first), without its newline.
    pub fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            // Drop the newline ending the last line in the buffer.
            if self.buf.last() == Some(&b'\n') {
                self.buf.pop();
            }
            if let Some(i) = self.buf.iter().rposition(|&b| b == b'\n') {
                let line = self.buf.split_off(i + 1);
                return Ok(Some(line));
            }
            if !self.fill()? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
        }
    }
}

/// Records from the newest backwards that `keep` selects, at most `limit`,
/// stopping at the first record `stop` names (not included) and after
/// `max_bytes` of trail read. Returns the records and whether the window
/// ran out before `limit` was reached.
pub fn newest(
    dir: &Path,
    keep: impl FnMut(&Value) -> bool,
    limit: usize,
    stop: impl Fn(&Value) -> bool,
    max_bytes: u64,
) -> io::Result<(Vec<Value>, bool)> {
    newest_in(&chain::segments(dir)?, keep, limit, stop, max_bytes)
}

/// As [`newest`], over the given segments (oldest first).
fn newest_in(
    segments: &[PathBuf],
    mut keep: impl FnMut(&Value) -> bool,
    limit: usize,
    stop: impl Fn(&Value) -> bool,
    max_bytes: u64,
) -> io::Result<(Vec<Value>, bool)> {
    let mut out = Vec::new();
    let mut read = 0u64;
    for seg in segments.iter().rev() {
        let mut lines = ReverseLines::open(seg)?;
        while let Some(line) = lines.next_line()? {
            read += line.len() as u64 + 1;
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if stop(&v) {
                return Ok((out, false));
            }
            if keep(&v) {
                out.push(v);
                if out.len() >= limit {
                    return Ok((out, false));
                }
            }
            if read >= max_bytes {
                return Ok((out, true));
            }
        }
    }
    Ok((out, false))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use serde_json::json;

    use super::*;
    use crate::audit::read;

    fn rec(i: u64, team: &str, cost: f64) -> String {
        json!({
            "id": format!("r{i}"), "ts": format!("2026-11-30T1{}:00:00Z", i % 3),
            "provider": "openai", "model": "gpt-4o", "host": "h",
            "caller": {"team": team, "exe": "/usr/bin/curl"},
            "usage": {"input_tokens": 10, "output_tokens": 5}, "cost_usd": cost,
            "policy": {"action": if i.is_multiple_of(4) { "block" } else { "allow" }, "rules": ["r"],
                       "findings": [{"rule": "r", "detector": "email", "count": 2}], "tags": []},
        })
        .to_string()
    }

    fn write(dir: &Path, name: &str, lines: &[String], partial: &str) {
        let mut f = File::create(dir.join(name)).unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        f.write_all(partial.as_bytes()).unwrap();
    }

    #[test]
    fn summaries_equal_the_sums_of_the_records_across_segments_and_growth() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<String> = (0..50).map(|i| rec(i, "red", 0.5)).collect();
        let b: Vec<String> = (50..90).map(|i| rec(i, "blue", 0.25)).collect();
        write(dir.path(), "audit-0000000000000001.jsonl", &a, "");
        write(
            dir.path(),
            "audit-0000000000000051.jsonl",
            &b,
            "{\"id\":\"torn",
        );
        let index = Index::new(dir.path());
        let s = index.summary(None).unwrap();
        let records = read::records(dir.path()).unwrap();
        let by_team = read::sum_by(records.iter(), "team");
        assert_eq!(s.project(|k| k.team.clone().unwrap_or_default()), by_team);
        assert_eq!(s.records, 90);
        assert_eq!(s.violations, 23);
        assert_eq!(s.by_rule["r"].detectors["email"], 46);
        // The closed segment's summary is on disk; the open one grows.
        assert!(
            dir.path()
                .join("index/audit-0000000000000001.jsonl.summary.json")
                .exists()
        );
        let more: Vec<String> = (90..95).map(|i| rec(i, "blue", 1.0)).collect();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("audit-0000000000000051.jsonl"))
            .unwrap();
        f.write_all(b"\",\"x\":1}\n").unwrap();
        for l in &more {
            writeln!(f, "{l}").unwrap();
        }
        let s = index.summary(None).unwrap();
        // The torn line, completed, is a record now.
        assert_eq!(s.records, 96);
        assert!((s.total().cost_usd - (25.0 + 10.0 + 5.0)).abs() < 1e-9);
        // The latest violations, kept while reading, are those a search
        // from the newest record back finds.
        let kept = index.recent_violations(u64::MAX).unwrap();
        let (searched, _) = newest(dir.path(), is_violation, RECENT, |_| false, u64::MAX).unwrap();
        assert_eq!(kept, searched);
        assert_eq!(kept.len(), 24);
        // A fresh index (a restart) and a rebuild say the same.
        assert_eq!(Index::new(dir.path()).summary(None).unwrap(), s);
        assert_eq!(Index::new(dir.path()).rebuild().unwrap(), s);
    }

    #[test]
    fn reverse_lines_and_newest_records() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<String> = (0..3000).map(|i| rec(i, "red", 0.5)).collect();
        write(dir.path(), "audit-0000000000000001.jsonl", &a[..1000], "");
        write(
            dir.path(),
            "audit-0000000000001001.jsonl",
            &a[1000..],
            "{\"partial",
        );
        let mut lines =
            ReverseLines::open(&dir.path().join("audit-0000000000001001.jsonl")).unwrap();
        let mut n = 0;
        while let Some(l) = lines.next_line().unwrap() {
            assert_eq!(String::from_utf8(l).unwrap(), a[2999 - n]);
            n += 1;
        }
        assert_eq!(n, 2000);
        let (got, cut) = newest(dir.path(), |_| true, 5, |_| false, u64::MAX).unwrap();
        assert!(!cut);
        assert_eq!(
            got.iter()
                .map(|v| v["id"].as_str().unwrap())
                .collect::<Vec<_>>(),
            ["r2999", "r2998", "r2997", "r2996", "r2995"]
        );
        let (got, _) = newest(dir.path(), |_| true, 100, |v| v["id"] == "r2997", u64::MAX).unwrap();
        assert_eq!(got.len(), 2);
        // Across segments, and a bounded window.
        let (got, _) = newest(dir.path(), |v| v["id"] == "r10", 5, |_| false, u64::MAX).unwrap();
        assert_eq!(got.len(), 1);
        let (got, cut) = newest(dir.path(), |v| v["id"] == "r10", 5, |_| false, 10_000).unwrap();
        assert!(got.is_empty() && cut);
    }
}
