//! The audit trail's hash chain. Every record line ends with `"seq"` (one
//! more than the record before it), `"prev_hash"` (the previous record's
//! hash; 64 zeros for the first) and `"hash"`: the SHA-256 of the line's
//! bytes up to that field. An edited, deleted, reordered or truncated record
//! breaks the chain where it happened. A record cut short by a crash (a torn
//! tail) is left as it is and marked by a `torn_tail` record when the writer
//! restarts: never silently joined.

use std::{
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_FIELD: &[u8] = b",\"hash\":\"";

/// The last record written: where the chain continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
}

impl Default for ChainHead {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn hex_sha256(bytes: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(bytes))
}

/// Turns a serialized JSON object into a sealed line (with `\n`): appends
/// `seq`, `prev_hash` and `hash`, and advances `head`.
pub fn seal(json: &[u8], head: &mut ChainHead) -> Vec<u8> {
    let mut line = Vec::with_capacity(json.len() + SEAL_BYTES);
    seal_into(json, head, &mut line);
    line
}

/// What sealing adds to a line at most: `,"seq":` and 20 digits,
/// `,"prev_hash":"`, 64 hex digits and `"`, `,"hash":"`, 64 hex digits and
/// `"}` with the `\n` (the object's own `}` goes).
const SEAL_BYTES: usize = 7 + 20 + 14 + 64 + 1 + 9 + 64 + 3;

/// As [`seal`], appending the sealed line to `out` (the writer's batch):
/// no allocation of its own beyond `out`'s growth. Returns where the line
/// starts in `out`.
pub fn seal_into(json: &[u8], head: &mut ChainHead, out: &mut Vec<u8>) -> usize {
    debug_assert_eq!(json.last(), Some(&b'}'));
    let start = out.len();
    out.reserve(json.len() + SEAL_BYTES);
    out.extend_from_slice(json.strip_suffix(b"}").unwrap_or(json));
    let seq = head.seq + 1;
    // Writing into a `Vec` cannot fail.
    let _ = write!(out, ",\"seq\":{seq},\"prev_hash\":\"{}\"", head.hash);
    let digest = Sha256::digest(&out[start..]);
    out.extend_from_slice(HASH_FIELD);
    head.hash.clear();
    crate::hex::encode_into(&digest, &mut head.hash);
    out.extend_from_slice(head.hash.as_bytes());
    out.extend_from_slice(b"\"}\n");
    head.seq = seq;
    start
}

/// Whether a sealed line (without its `\n`) matches its own hash.
pub fn line_intact(line: &[u8]) -> bool {
    check_seal(line).is_ok()
}

/// A sealed line's hash, if the line is intact (its hash matches its bytes).
fn check_seal(line: &[u8]) -> Result<String, &'static str> {
    let at = line
        .windows(HASH_FIELD.len())
        .rposition(|w| w == HASH_FIELD)
        .ok_or("no hash field")?;
    let tail = &line[at + HASH_FIELD.len()..];
    if tail.len() != 66 || &tail[64..] != b"\"}" {
        return Err("malformed hash field");
    }
    let claimed = std::str::from_utf8(&tail[..64]).map_err(|_| "malformed hash field")?;
    if hex_sha256(&line[..at]) != claimed {
        return Err("hash does not match the record's contents (record edited)");
    }
    Ok(claimed.to_owned())
}

/// Segment files of `dir`, in chain order (their names start at their
/// first `seq`).
pub fn segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    Ok(files)
}

/// Where a restarted writer continues, and the torn tail it must mark.
#[derive(Debug, Default)]
pub struct Resume {
    pub head: ChainHead,
    /// (file name, bytes) of a record cut short at the end of the newest
    /// segment.
    pub torn: Option<(String, usize)>,
}

/// Reads the newest segment's last complete record.
pub fn resume(dir: &Path) -> io::Result<Resume> {
    let Some(last) = segments(dir)?
        .into_iter()
        .rev()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
    else {
        return Ok(Resume::default());
    };
    let data = std::fs::read(&last)?;
    let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let torn = (complete < data.len()).then(|| {
        let name = last
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        (name, data.len() - complete)
    });
    let line = data[..complete.saturating_sub(1)]
        .rsplit(|&b| b == b'\n')
        .next()
        .filter(|l| !l.is_empty());
    let head = match line {
        None => ChainHead::default(),
        Some(line) => {
            let hash = check_seal(line).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("last audit record in {}: {e}", last.display()),
                )
            })?;
            let v: Value = serde_json::from_slice(line)?;
            let seq = v["seq"].as_u64().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "last audit record has no seq")
            })?;
            ChainHead { seq, hash }
        }
    };
    Ok(Resume { head, torn })
}

/// What `verify` found in an intact trail.
#[derive(Debug, Default)]
pub struct Report {
    /// The first seq found: above 1 when retention removed older segments.
    pub first_seq: u64,
    pub records: u64,
    pub last_seq: u64,
    pub files: usize,
    /// Torn tails already marked by a `torn_tail` record.
    pub marked_torn: usize,
    /// A torn tail at the very end, not marked yet (the writer has not
    /// restarted since the crash).
    pub open_torn: Option<(PathBuf, usize)>,
}

/// The first place the trail is broken.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}{}: {reason}", seq.map(|s| format!(" (seq {s})")).unwrap_or_default())]
pub struct Broken {
    pub file: PathBuf,
    pub line: usize,
    pub seq: Option<u64>,
    pub reason: String,
}

/// Checks every segment of `dir`: seals, sequence, links, torn tails.
pub fn verify(dir: &Path) -> Result<Report, Broken> {
    let broken = |file: &Path, line: usize, seq: Option<u64>, reason: String| Broken {
        file: file.to_owned(),
        line,
        seq,
        reason,
    };
    let files = segments(dir).map_err(|e| broken(dir, 0, None, format!("cannot list: {e}")))?;
    let mut report = Report {
        files: files.len(),
        ..Report::default()
    };
    let mut head = ChainHead::default();
    let mut torn_pending: Option<(PathBuf, usize)> = None;
    // Where the kept chain starts (seq before it, its prev_hash), and
    // whether a `retention` event accounts for what is missing before it.
    let mut start: Option<(PathBuf, u64, String)> = None;
    let mut accounted = false;
    for file in &files {
        let data =
            std::fs::read(file).map_err(|e| broken(file, 0, None, format!("cannot read: {e}")))?;
        let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // Complete lines, without the final newline.
        let lines = data[..complete.saturating_sub(1)]
            .split(|&b| b == b'\n')
            .filter(|_| complete > 0);
        for (i, line) in lines.enumerate() {
            let n = i + 1;
            if line.is_empty() {
                return Err(broken(file, n, None, "empty line".into()));
            }
            let hash = check_seal(line).map_err(|e| broken(file, n, None, e.into()))?;
            let v: Value = serde_json::from_slice(line)
                .map_err(|e| broken(file, n, None, format!("not JSON: {e}")))?;
            let seq = v["seq"]
                .as_u64()
                .ok_or_else(|| broken(file, n, None, "no seq".into()))?;
            if report.records == 0 {
                report.first_seq = seq;
                if seq > 1 {
                    // Older segments were removed: the chain is checked from
                    // here on, and a `retention` event must account for them.
                    head = ChainHead {
                        seq: seq - 1,
                        hash: v["prev_hash"].as_str().unwrap_or_default().to_owned(),
                    };
                    start = Some((file.clone(), head.seq, head.hash.clone()));
                }
            }
            if seq != head.seq + 1 {
                return Err(broken(
                    file,
                    n,
                    Some(seq),
                    format!(
                        "expected seq {}: a record was deleted, reordered or inserted",
                        head.seq + 1
                    ),
                ));
            }
            if v["prev_hash"].as_str() != Some(head.hash.as_str()) {
                return Err(broken(
                    file,
                    n,
                    Some(seq),
                    "prev_hash does not match the previous record: the chain is broken".into(),
                ));
            }
            if torn_pending.take().is_some() {
                if v["event"] != "torn_tail" {
                    return Err(broken(
                        file,
                        n,
                        Some(seq),
                        "a torn record before this one was not marked".into(),
                    ));
                }
                report.marked_torn += 1;
            }
            accounted |= accounts_for(&v, start.as_ref());
            head = ChainHead { seq, hash };
            report.records += 1;
        }
        if complete < data.len() {
            if torn_pending.is_some() {
                return Err(broken(
                    file,
                    0,
                    None,
                    "two torn tails without a marker".into(),
                ));
            }
            torn_pending = Some((file.clone(), data.len() - complete));
        }
    }
    if let Some((file, through, _)) = start
        && !accounted
    {
        return Err(deleted_start(file, through));
    }
    report.last_seq = head.seq;
    report.open_torn = torn_pending;
    Ok(report)
}

/// Whether record `v` is the `retention` event that removed what is
/// missing before the kept chain's `start` (file, seq before, its hash).
fn accounts_for(v: &Value, start: Option<&(PathBuf, u64, String)>) -> bool {
    start.is_some_and(|(_, through, last)| {
        v["event"] == "retention"
            && v["retention"]["through_seq"].as_u64() == Some(*through)
            && v["retention"]["last_hash"].as_str() == Some(last.as_str())
    })
}

/// The first `through` records are gone and no retention event says why.
fn deleted_start(file: PathBuf, through: u64) -> Broken {
    Broken {
        file,
        line: 1,
        seq: Some(through + 1),
        reason: format!(
            "the {through} records before this one are missing and no retention event records their removal: deleted, not expired"
        ),
    }
}

/// A contiguous run of sealed records (an export): where it starts and
/// ends in its chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunProof {
    pub first_seq: u64,
    /// The `prev_hash` of the first record: the hash of the record before
    /// the run, to be found in the full trail or the fleet store.
    pub anchor: String,
    pub last_seq: u64,
    pub last_hash: String,
    pub records: u64,
}

/// Checks a run of sealed lines as they come: each intact, each linked to
/// the one before, seqs consecutive.
#[derive(Debug, Default)]
pub struct RunChecker {
    proof: Option<RunProof>,
    lines: usize,
}

impl RunChecker {
    pub fn push(&mut self, line: &[u8]) -> Result<(), String> {
        self.lines += 1;
        let n = self.lines;
        let hash = check_seal(line).map_err(|e| format!("line {n}: {e}"))?;
        let v: Value =
            serde_json::from_slice(line).map_err(|e| format!("line {n}: not JSON: {e}"))?;
        let seq = v["seq"]
            .as_u64()
            .ok_or_else(|| format!("line {n}: no seq"))?;
        let prev = v["prev_hash"].as_str().unwrap_or_default();
        match &mut self.proof {
            None => {
                self.proof = Some(RunProof {
                    first_seq: seq,
                    anchor: prev.to_owned(),
                    last_seq: seq,
                    last_hash: hash,
                    records: 1,
                });
            }
            Some(p) => {
                if seq != p.last_seq + 1 {
                    return Err(format!(
                        "line {n}: seq {seq} after {}: a record is missing, reordered or inserted",
                        p.last_seq
                    ));
                }
                if prev != p.last_hash {
                    return Err(format!(
                        "line {n}: prev_hash does not match the previous record: the chain is broken"
                    ));
                }
                p.last_seq = seq;
                p.last_hash = hash;
                p.records += 1;
            }
        }
        Ok(())
    }

    /// The proof of the run pushed so far.
    pub fn finish(self) -> Result<RunProof, String> {
        self.proof.ok_or_else(|| "no records".to_owned())
    }
}

/// Checks a whole run of sealed lines (empty lines skipped).
pub fn verify_run<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Result<RunProof, String> {
    let mut checker = RunChecker::default();
    for line in lines.filter(|l| !l.is_empty()) {
        checker.push(line)?;
    }
    checker.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_chain(dir: &Path, n: u64) -> PathBuf {
        let mut head = ChainHead::default();
        let mut out = Vec::new();
        for i in 0..n {
            out.extend(seal(format!("{{\"id\":{i}}}").as_bytes(), &mut head));
        }
        let path = dir.join("audit-0000000000000001.jsonl");
        std::fs::write(&path, out).unwrap();
        path
    }

    #[test]
    fn intact_chain_verifies_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        write_chain(dir.path(), 3);
        let report = verify(dir.path()).unwrap();
        assert_eq!((report.records, report.last_seq), (3, 3));
        let r = resume(dir.path()).unwrap();
        assert_eq!(r.head.seq, 3);
        assert!(r.torn.is_none());
    }

    #[test]
    fn edits_deletions_and_reorders_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_chain(dir.path(), 4);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        std::fs::write(&path, text.replacen("\"id\":2", "\"id\":9", 1)).unwrap();
        let e = verify(dir.path()).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("edited"), "{e}");

        std::fs::write(&path, format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3])).unwrap();
        let e = verify(dir.path()).unwrap_err();
        assert_eq!((e.line, e.seq), (2, Some(3)));

        std::fs::write(
            &path,
            format!("{}\n{}\n{}\n{}\n", lines[0], lines[2], lines[1], lines[3]),
        )
        .unwrap();
        let e = verify(dir.path()).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("expected seq 2"), "{e}");
    }

    #[test]
    fn missing_first_records_need_a_retention_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut head = ChainHead::default();
        let lines: Vec<Vec<u8>> = (0..4)
            .map(|i| seal(format!("{{\"id\":{i}}}").as_bytes(), &mut head))
            .collect();
        let third: Value = serde_json::from_slice(&lines[2][..lines[2].len() - 1]).unwrap();
        let path = dir.path().join("audit-0000000000000003.jsonl");
        std::fs::write(&path, [&lines[2][..], &lines[3][..]].concat()).unwrap();
        let e = verify(dir.path()).unwrap_err();
        assert!(e.reason.contains("deleted, not expired"), "{e}");
        // The same gap, recorded as retention, verifies.
        let event = serde_json::json!({"event": "retention", "retention": {
            "through_seq": 2, "last_hash": third["prev_hash"]}});
        let line = seal(&serde_json::to_vec(&event).unwrap(), &mut head);
        std::fs::write(&path, [&lines[2][..], &lines[3][..], &line[..]].concat()).unwrap();
        assert_eq!(verify(dir.path()).unwrap().first_seq, 3);
    }

    #[test]
    fn torn_tail_is_reported_then_must_be_marked() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_chain(dir.path(), 2);
        let mut data = std::fs::read(&path).unwrap();
        data.extend_from_slice(b"{\"id\":3,\"mod");
        std::fs::write(&path, &data).unwrap();
        let report = verify(dir.path()).unwrap();
        assert_eq!(report.open_torn.as_ref().map(|t| t.1), Some(12));
        let r = resume(dir.path()).unwrap();
        assert_eq!(r.head.seq, 2);
        assert_eq!(r.torn.as_ref().map(|t| t.1), Some(12));
        // The next segment must start with the marker.
        let mut head = r.head.clone();
        let next = dir.path().join("audit-0000000000000003.jsonl");
        std::fs::write(&next, seal(b"{\"id\":4}", &mut head)).unwrap();
        assert!(
            verify(dir.path())
                .unwrap_err()
                .reason
                .contains("not marked")
        );
        let mut from_torn = r.head;
        std::fs::write(&next, seal(b"{\"event\":\"torn_tail\"}", &mut from_torn)).unwrap();
        let report = verify(dir.path()).unwrap();
        assert_eq!(report.marked_torn, 1);
    }
}
