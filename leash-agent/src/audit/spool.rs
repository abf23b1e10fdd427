//! The audit directory as a spool for shipping: its epoch (which chain this
//! is: a new one starts when the directory starts empty), the ship cursor
//! (the last seq JetStream acknowledged, written atomically), and a reader
//! that follows the segments from a seq onwards as the writer appends.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use bytes::Bytes;

use super::chain;

const EPOCH_FILE: &str = "epoch";
const CURSOR_FILE: &str = "ship-cursor";

/// Writes `text` to `path` atomically: a temporary file, fsync, rename,
/// fsync of the directory. A crash leaves the old or the new contents.
pub fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// The spool's epoch: read it, or start a new one when `fresh` (the chain
/// starts at seq 1) or when there is none yet. Milliseconds since the Unix
/// epoch at creation, so a wiped and restarted spool never reuses
/// `(host, epoch, seq)`.
pub fn epoch(dir: &Path, fresh: bool) -> io::Result<u64> {
    let path = dir.join(EPOCH_FILE);
    if !fresh && let Some(e) = read_epoch(dir)? {
        return Ok(e);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    write_atomic(&path, &format!("{now}\n"))?;
    Ok(now)
}

/// The epoch, if the spool has one.
pub fn read_epoch(dir: &Path) -> io::Result<Option<u64>> {
    match std::fs::read_to_string(dir.join(EPOCH_FILE)) {
        Ok(text) => {
            text.trim().parse().map(Some).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "epoch file is not a number")
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where shipping stands: every record of `epoch` up to `seq` is
/// acknowledged by JetStream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    pub epoch: u64,
    pub seq: u64,
}

impl Cursor {
    /// The cursor of `dir`; seq 0 of `epoch` when there is none or it is of
    /// another epoch (the spool was started anew).
    pub fn load(dir: &Path, epoch: u64) -> io::Result<Self> {
        let fresh = Self { epoch, seq: 0 };
        match std::fs::read_to_string(dir.join(CURSOR_FILE)) {
            Ok(text) => {
                let mut parts = text.split_whitespace().map(str::parse::<u64>);
                match (parts.next(), parts.next()) {
                    (Some(Ok(e)), Some(Ok(seq))) if e == epoch => Ok(Self { epoch, seq }),
                    (Some(Ok(_)), Some(Ok(_))) => Ok(fresh),
                    _ => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "ship-cursor is not `<epoch> <seq>`",
                    )),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(fresh),
            Err(e) => Err(e),
        }
    }

    /// The cursor as written, if any (for retention: what is shipped).
    pub fn read(dir: &Path) -> Option<Self> {
        let epoch = read_epoch(dir).ok()??;
        let c = Self::load(dir, epoch).ok()?;
        Some(c)
    }

    pub fn store(self, dir: &Path) -> io::Result<()> {
        write_atomic(
            &dir.join(CURSOR_FILE),
            &format!("{} {}\n", self.epoch, self.seq),
        )
    }
}

/// One sealed record line and its seq.
#[derive(Debug, Clone)]
pub struct Line {
    pub seq: u64,
    pub bytes: Bytes,
}

/// Reads records with a seq above a starting point, segment after segment,
/// and goes on from where it stopped as the writer appends.
pub struct Reader {
    dir: PathBuf,
    after: u64,
    current: Option<(PathBuf, BufReader<File>)>,
    partial: Vec<u8>,
    /// The current segment is known to be complete (a newer one exists).
    finishing: bool,
    /// Lines skipped because they are not records (a torn tail).
    pub skipped: u64,
}

/// The first seq in a segment, from its name (`audit-<seq>.jsonl`).
fn first_seq(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("audit-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// The seq of a sealed line (`..."seq":N,"prev_hash":...`).
fn seq_of(line: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b",\"seq\":";
    let at = line.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

impl Reader {
    /// A reader of the records of `dir` after `after`.
    pub fn new(dir: &Path, after: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            after,
            current: None,
            partial: Vec::new(),
            finishing: false,
            skipped: 0,
        }
    }

    /// The segment holding `after + 1` (or the first one after it).
    fn locate(&self) -> io::Result<Option<PathBuf>> {
        let files = chain::segments(&self.dir)?;
        let mut pick = None;
        for f in files {
            match first_seq(&f) {
                Some(first) if first <= self.after + 1 => pick = Some(f),
                Some(_) if pick.is_none() => return Ok(Some(f)),
                Some(_) => break,
                None => {}
            }
        }
        Ok(pick)
    }

    /// The segment after the current one, if the writer started one.
    fn next_segment(&self, current: &Path) -> io::Result<Option<PathBuf>> {
        let files = chain::segments(&self.dir)?;
        Ok(files
            .into_iter()
            .find(|f| f.as_path() > current && first_seq(f).is_some()))
    }

    /// Up to `max` records after the last one returned; empty when none is
    /// written yet.
    pub fn next_batch(&mut self, max: usize) -> io::Result<Vec<Line>> {
        self.next_batch_through(max, u64::MAX)
    }

    /// As [`Reader::next_batch`], none past sequence number `through` (the
    /// last record synced to disk: what is shipped cannot be lost from the
    /// local trail by a crash of the machine).
    pub fn next_batch_through(&mut self, max: usize, through: u64) -> io::Result<Vec<Line>> {
        let mut out = Vec::new();
        while out.len() < max {
            if self.current.is_none() {
                let Some(path) = self.locate()? else {
                    break;
                };
                let file = File::open(&path)?;
                self.current = Some((path, BufReader::new(file)));
                self.partial.clear();
                self.finishing = false;
            }
            let Some((path, reader)) = self.current.as_mut() else {
                break;
            };
            let n = reader.read_until(b'\n', &mut self.partial)?;
            if n > 0 && self.partial.last() == Some(&b'\n') {
                let line = std::mem::take(&mut self.partial);
                match seq_of(&line) {
                    Some(seq) if seq > through => {
                        // Not synced yet: read again next time.
                        let back = i64::try_from(line.len()).unwrap_or(0);
                        reader.seek(SeekFrom::Current(-back))?;
                        break;
                    }
                    Some(seq) if seq > self.after => {
                        self.after = seq;
                        out.push(Line {
                            seq,
                            bytes: Bytes::from(line),
                        });
                    }
                    Some(_) => {}
                    None => self.skipped += 1,
                }
                continue;
            }
            // End of what is written. Re-read from the start of any partial
            // line next time round.
            let path = path.clone();
            let newer = self.next_segment(&path)?.is_some();
            if let Some((_, reader)) = self.current.as_mut() {
                let back = i64::try_from(self.partial.len()).unwrap_or(0);
                reader.seek(SeekFrom::Current(-back))?;
            }
            let had_partial = !self.partial.is_empty();
            self.partial.clear();
            if !newer {
                break;
            }
            // A newer segment means this one is final; read it once more
            // (the writer may have completed its last line meanwhile), and
            // only then call what is left a torn tail and move on.
            if self.finishing {
                if had_partial {
                    self.skipped += 1;
                }
                self.current = None;
                self.finishing = false;
            } else {
                self.finishing = true;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(head: &mut chain::ChainHead, i: u64) -> Vec<u8> {
        chain::seal(format!("{{\"n\":{i}}}").as_bytes(), head)
    }

    /// The first segment in `dir`, records 1 to `n`.
    fn first_segment(dir: &Path, head: &mut chain::ChainHead, n: u64) {
        let lines: Vec<u8> = (1..=n).flat_map(|i| sealed(head, i)).collect();
        std::fs::write(dir.join("audit-0000000000000001.jsonl"), lines).unwrap();
    }

    #[test]
    fn follows_segments_and_waits_for_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut head = chain::ChainHead::default();
        first_segment(dir.path(), &mut head, 3);
        let mut r = Reader::new(dir.path(), 1);
        let got: Vec<u64> = r.next_batch(10).unwrap().iter().map(|l| l.seq).collect();
        assert_eq!(got, [2, 3]);
        // A line being written is not returned until it is whole.
        let line4 = sealed(&mut head, 4);
        let seg = dir.path().join("audit-0000000000000001.jsonl");
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&line4[..10]).unwrap();
        assert!(r.next_batch(10).unwrap().is_empty());
        f.write_all(&line4[10..]).unwrap();
        assert_eq!(r.next_batch(10).unwrap()[0].seq, 4);
        // A torn tail followed by a new segment is skipped.
        f.write_all(b"{\"torn\":").unwrap();
        let line5 = sealed(&mut head, 5);
        std::fs::write(dir.path().join("audit-0000000000000005.jsonl"), &line5).unwrap();
        let got = r.next_batch(10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].seq, 5);
        assert_eq!(r.skipped, 1);
        // A new reader from a cursor starts in the right segment.
        let mut r = Reader::new(dir.path(), 4);
        assert_eq!(r.next_batch(10).unwrap()[0].seq, 5);
    }

    #[test]
    fn nothing_past_the_synced_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut head = chain::ChainHead::default();
        first_segment(dir.path(), &mut head, 4);
        let mut r = Reader::new(dir.path(), 0);
        let seqs = |b: Vec<Line>| b.iter().map(|l| l.seq).collect::<Vec<_>>();
        assert_eq!(seqs(r.next_batch_through(10, 2).unwrap()), [1, 2]);
        assert!(r.next_batch_through(10, 2).unwrap().is_empty());
        // Once synced further, the same lines are read, none lost.
        assert_eq!(seqs(r.next_batch_through(10, 4).unwrap()), [3, 4]);
    }

    #[test]
    fn cursor_and_epoch_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let e = epoch(dir.path(), false).unwrap();
        assert_eq!(epoch(dir.path(), false).unwrap(), e);
        Cursor { epoch: e, seq: 42 }.store(dir.path()).unwrap();
        assert_eq!(Cursor::load(dir.path(), e).unwrap().seq, 42);
        assert_eq!(Cursor::load(dir.path(), e + 1).unwrap().seq, 0);
        assert_eq!(Cursor::read(dir.path()).unwrap().seq, 42);
    }
}
