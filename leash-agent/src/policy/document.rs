//! Incremental scanning of a non-streaming body of any size: a JSON (or
//! JSON Lines) document, or plain text. The raw bytes are lexed as they
//! arrive; the decoded text of each JSON string (or the whole text) is
//! scanned in bounded windows that overlap, so a match split across chunks
//! or windows is still found; a match to redact is replaced in the raw
//! bytes, keeping everything else byte for byte. Bytes go out as soon as no
//! match can still start in them: memory stays bounded whatever the body's
//! size.

/// Text scanned in one pass once the window holds this much.
const WINDOW: usize = 64 * 1024;
/// Text kept from the previous pass so a match across the cut is found:
/// longer than any detector's match.
const OVERLAP: usize = 4096;

/// How the body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// JSON or JSON Lines: the text is in the strings (and keys).
    Json,
    /// Plain text: all of it is text.
    Text,
}

impl BodyKind {
    /// From the response's content type, or the first bytes when it says
    /// nothing useful. `None`: binary (audio, images), not scanned.
    pub fn sniff(content_type: Option<&str>, first: &[u8]) -> Option<Self> {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        let first_char = first.iter().find(|b| !b.is_ascii_whitespace());
        if essence.ends_with("json") || essence.ends_with("+json") || essence.contains("jsonl") {
            return Some(Self::Json);
        }
        if matches!(first_char, Some(b'{' | b'[')) {
            return Some(Self::Json);
        }
        if essence.starts_with("text/") || essence.ends_with("+xml") || essence.ends_with("/xml") {
            return Some(Self::Text);
        }
        let head = &first[..first.len().min(1024)];
        (!head.is_empty() && looks_like_text(head)).then_some(Self::Text)
    }
}

fn looks_like_text(bytes: &[u8]) -> bool {
    let valid = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return false,
    };
    !valid
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
}

/// Judges the text of a body: each window (`judge`), and, before that,
/// several whole strings at once (`any`) when it `batches`.
pub trait Judge {
    /// Whether whole strings may be judged together first (`any`).
    fn batches(&self) -> bool {
        false
    }

    /// Whether anything may be found in `texts`: the texts of whole strings,
    /// each followed by `\n`. False lets every one of them pass unjudged;
    /// true judges each one alone, in order, with `batched` set.
    fn any(&mut self, _texts: &str) -> bool {
        true
    }

    fn judge(&mut self, pass: Pass<'_>) -> Verdict;
}

/// A function judges each window alone.
impl<F: FnMut(Pass<'_>) -> Verdict> Judge for F {
    fn judge(&mut self, pass: Pass<'_>) -> Verdict {
        self(pass)
    }
}

/// A window of text handed to the detectors.
#[derive(Clone, Copy)]
pub struct Pass<'a> {
    pub text: &'a str,
    /// Where `text` starts in all the text of the body (for telling a
    /// match seen before from a new one).
    pub base: u64,
    /// Matches ending at or before this offset were reported by the
    /// previous pass over the same string.
    pub fresh_from: usize,
    /// A whole string of a batch `Judge::any` found something may be in.
    pub batched: bool,
}

/// What the detectors made of a pass.
#[derive(Default)]
pub struct Verdict {
    /// Spans of `Pass::text` to replace, with their replacement.
    pub redact: Vec<(usize, usize, String)>,
    /// End the body here: nothing more is delivered.
    pub stop: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    Outside,
    InString,
    /// After a backslash.
    Escape,
    /// Inside `\uXXXX`: digits seen, value so far.
    Unicode(u8, u32),
}

/// A raw replacement.
#[derive(Clone)]
struct Edit {
    start: u64,
    end: u64,
    with: String,
}

/// The incremental scanner of one body.
#[derive(Clone)]
pub struct DocumentScan {
    kind: BodyKind,
    lex: Lex,
    /// Raw offset of the next byte.
    pos: u64,
    /// Raw offset where the current escape began.
    escape_at: u64,
    /// A high surrogate waiting for its low half: value and raw start.
    high: Option<(u32, u64)>,
    /// Bytes of a UTF-8 character cut by the end of a chunk.
    partial: Vec<u8>,
    /// Decoded text of the current string not yet finally scanned.
    window: String,
    /// (window offset, raw offset) where the window-to-raw distance changes.
    anchors: Vec<(usize, u64)>,
    /// Window text already seen by a pass (kept as overlap).
    scanned: usize,
    /// Offset of the window's start in all the text of the body.
    base: u64,
    /// Raw bytes not yet released, from `held_at`.
    held: Vec<u8>,
    held_at: u64,
    edits: Vec<Edit>,
    stopped: bool,
    /// Whole strings not judged yet (`Judge::batches`): their texts, each
    /// followed by `\n`, judged before any other pass and at the end of
    /// each `feed`, so in the same order and before the same release.
    batch: String,
    batched: Vec<Batched>,
    /// The strings' anchors, one after the other.
    batch_anchors: Vec<(usize, u64)>,
}

/// A whole string waiting in the batch.
#[derive(Clone, Copy)]
struct Batched {
    /// Where its text ends in `batch` (it starts after the previous one's
    /// `\n`).
    end: usize,
    base: u64,
    /// Where its anchors end in `batch_anchors`.
    anchors_end: usize,
}

impl DocumentScan {
    pub fn new(kind: BodyKind) -> Self {
        let mut scan = Self {
            kind,
            lex: Lex::Outside,
            pos: 0,
            escape_at: 0,
            high: None,
            partial: Vec::new(),
            // Most texts fit: grown once, not by doubling from nothing.
            window: String::with_capacity(1024),
            anchors: vec![(0, 0)],
            scanned: 0,
            base: 0,
            held: Vec::new(),
            held_at: 0,
            edits: Vec::new(),
            stopped: false,
            batch: String::new(),
            batched: Vec::new(),
            batch_anchors: Vec::new(),
        };
        if kind == BodyKind::Text {
            scan.lex = Lex::InString;
        }
        scan
    }

    /// Feeds the next raw bytes (`end`: the last); `judge` judges each
    /// window of text. Returns the bytes that may go out now, and whether
    /// the body must end here.
    pub fn feed(&mut self, chunk: &[u8], end: bool, judge: &mut dyn Judge) -> (Vec<u8>, bool) {
        if self.stopped {
            return (Vec::new(), true);
        }
        self.held.extend_from_slice(chunk);
        let mut i = 0;
        while i < chunk.len() && !self.stopped {
            i += self.step(&chunk[i..], judge);
        }
        if end && !self.stopped {
            self.flush_partial();
            self.pass(true, judge);
        }
        if !self.stopped {
            self.judge_batch(judge);
        }
        if self.stopped {
            return (Vec::new(), true);
        }
        // Nothing before the start of the unscanned window can still be
        // part of a match.
        let safe = if end || self.lex == Lex::Outside {
            self.pos
        } else {
            self.raw_of(0)
        };
        (self.release(safe), false)
    }

    /// Lexes from the start of `bytes`; returns how many were consumed.
    fn step(&mut self, bytes: &[u8], judge: &mut dyn Judge) -> usize {
        match self.lex {
            Lex::Outside => {
                let n = memchr::memchr(b'"', bytes).map_or(bytes.len(), |at| at + 1);
                self.pos += n as u64;
                if bytes.get(n.wrapping_sub(1)) == Some(&b'"') {
                    self.lex = Lex::InString;
                    self.start_string();
                }
                n
            }
            Lex::InString => {
                let stop = if self.kind == BodyKind::Json {
                    memchr::memchr2(b'"', b'\\', bytes)
                } else {
                    None
                };
                let text_end = stop.unwrap_or(bytes.len());
                self.push_raw(&bytes[..text_end]);
                self.pos += text_end as u64;
                if self.window.len() >= WINDOW {
                    self.pass(false, judge);
                }
                match stop.map(|at| bytes[at]) {
                    Some(b'"') => {
                        self.flush_partial();
                        self.pos += 1;
                        self.pass(true, judge);
                        self.lex = Lex::Outside;
                        text_end + 1
                    }
                    Some(_) => {
                        self.flush_partial();
                        self.escape_at = self.pos;
                        self.pos += 1;
                        self.lex = Lex::Escape;
                        text_end + 1
                    }
                    None => text_end,
                }
            }
            Lex::Escape => {
                self.pos += 1;
                let c = match bytes[0] {
                    b'n' => Some('\n'),
                    b't' => Some('\t'),
                    b'r' => Some('\r'),
                    b'b' => Some('\u{8}'),
                    b'f' => Some('\u{c}'),
                    b'u' => None,
                    other => Some(char::from(other)),
                };
                match c {
                    Some(c) => {
                        self.push_escaped(c, self.escape_at);
                        self.lex = Lex::InString;
                    }
                    None => self.lex = Lex::Unicode(0, 0),
                }
                1
            }
            Lex::Unicode(digits, value) => {
                let Some(digit) = char::from(bytes[0]).to_digit(16) else {
                    // Not an escape after all: what came after the
                    // backslash is read again as string text.
                    let at = self.escape_at;
                    self.push_escaped('\u{FFFD}', at);
                    self.lex = Lex::InString;
                    return 0;
                };
                self.pos += 1;
                let value = value * 16 + digit;
                if digits < 3 {
                    self.lex = Lex::Unicode(digits + 1, value);
                    return 1;
                }
                self.lex = Lex::InString;
                self.unicode(value);
                1
            }
        }
    }

    /// A `\uXXXX` escape has been read (its raw start is `escape_at`).
    fn unicode(&mut self, value: u32) {
        if let Some((high, at)) = self.high.take() {
            if (0xDC00..0xE000).contains(&value) {
                let c = 0x10000 + ((high - 0xD800) << 10) + (value - 0xDC00);
                self.push_escaped(char::from_u32(c).unwrap_or('\u{FFFD}'), at);
                return;
            }
            self.push_escaped('\u{FFFD}', at);
        }
        if (0xD800..0xDC00).contains(&value) {
            self.high = Some((value, self.escape_at));
        } else {
            let at = self.escape_at;
            self.push_escaped(char::from_u32(value).unwrap_or('\u{FFFD}'), at);
        }
    }

    fn start_string(&mut self) {
        self.window.clear();
        self.anchors.clear();
        self.anchors.push((0, self.pos));
        self.scanned = 0;
        self.high = None;
    }

    /// A character that stands for the raw bytes from `at` to `self.pos`.
    fn push_escaped(&mut self, c: char, at: u64) {
        if let Some((_, high_at)) = self.high.take() {
            self.anchors.push((self.window.len(), high_at));
            self.window.push('\u{FFFD}');
        }
        self.anchors.push((self.window.len(), at));
        self.window.push(c);
        self.anchors.push((self.window.len(), self.pos));
    }

    /// Unescaped string bytes (UTF-8, possibly cut mid-character).
    fn push_raw(&mut self, bytes: &[u8]) {
        if let Some((_, at)) = self.high.take() {
            self.anchors.push((self.window.len(), at));
            self.window.push('\u{FFFD}');
            self.anchors.push((self.window.len(), self.pos));
        }
        let mut rest = bytes;
        let mut raw = self.pos - self.partial.len() as u64;
        if !self.partial.is_empty() {
            let need = utf8_len(self.partial[0]).saturating_sub(self.partial.len());
            let take = need.min(rest.len());
            self.partial.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.partial.len() < utf8_len(self.partial[0]) && rest.is_empty() {
                return;
            }
            let partial = std::mem::take(&mut self.partial);
            self.push_checked(&partial, raw);
            raw += partial.len() as u64;
        }
        self.push_checked(rest, raw);
    }

    /// Pushes UTF-8 bytes starting at raw offset `raw`; invalid bytes
    /// become U+FFFD (anchored), a cut character waits in `partial`.
    fn push_checked(&mut self, mut bytes: &[u8], mut raw: u64) {
        loop {
            match std::str::from_utf8(bytes) {
                Ok(text) => {
                    self.window.push_str(text);
                    return;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    self.window
                        .push_str(std::str::from_utf8(&bytes[..good]).unwrap_or_default());
                    raw += good as u64;
                    match e.error_len() {
                        None => {
                            self.partial.extend_from_slice(&bytes[good..]);
                            return;
                        }
                        Some(bad) => {
                            self.anchors.push((self.window.len(), raw));
                            self.window.push('\u{FFFD}');
                            raw += bad as u64;
                            self.anchors.push((self.window.len(), raw));
                            bytes = &bytes[good + bad..];
                        }
                    }
                }
            }
        }
    }

    /// Bytes of a cut character left at the end of a string or the body:
    /// not a character after all.
    fn flush_partial(&mut self) {
        if self.partial.is_empty() {
            return;
        }
        let at = self.pos - self.partial.len() as u64;
        self.partial.clear();
        self.anchors.push((self.window.len(), at));
        self.window.push('\u{FFFD}');
        self.anchors.push((self.window.len(), self.pos));
    }

    /// The raw offset of window offset `at`.
    fn raw_of(&self, at: usize) -> u64 {
        raw_at(&self.anchors, at)
    }

    /// Scans the window; `last`: the string (or body) ended. Then keeps
    /// only the overlap for the next pass. A whole string (never scanned
    /// in part) joins the batch when the judge batches.
    fn pass(&mut self, last: bool, judge: &mut dyn Judge) {
        if self.window.len() > self.scanned || (last && !self.window.is_empty()) {
            if last && self.scanned == 0 && judge.batches() {
                if self.batched.is_empty() && self.batch.capacity() == 0 {
                    // An answer's strings: sized once, not grown by doubling.
                    self.batch
                        .reserve((2 * self.window.capacity()).clamp(2048, WINDOW));
                    self.batched.reserve(32);
                    self.batch_anchors.reserve(64);
                }
                self.batch.push_str(&self.window);
                self.batch.push('\n');
                self.batch_anchors.extend_from_slice(&self.anchors);
                self.batched.push(Batched {
                    end: self.batch.len() - 1,
                    base: self.base,
                    anchors_end: self.batch_anchors.len(),
                });
                if self.batch.len() >= WINDOW {
                    self.judge_batch(judge);
                }
            } else {
                // Strings before this one first: judged in order.
                self.judge_batch(judge);
                if self.stopped {
                    return;
                }
                let verdict = judge.judge(Pass {
                    text: &self.window,
                    base: self.base,
                    fresh_from: self.scanned,
                    batched: false,
                });
                let anchors = std::mem::take(&mut self.anchors);
                self.apply(verdict, &anchors);
                self.anchors = anchors;
            }
            if self.stopped {
                return;
            }
        }
        if last {
            self.base += self.window.len() as u64;
            self.window.clear();
            self.anchors.clear();
            self.anchors.push((0, self.pos));
            self.scanned = 0;
            return;
        }
        let mut cut = self.window.len().saturating_sub(OVERLAP);
        while !self.window.is_char_boundary(cut) {
            cut += 1;
        }
        let raw_cut = self.raw_of(cut);
        self.base += cut as u64;
        self.window.drain(..cut);
        self.anchors.retain(|&(w, _)| w > cut);
        for a in &mut self.anchors {
            a.0 -= cut;
        }
        self.anchors.insert(0, (0, raw_cut));
        self.scanned = self.window.len();
    }

    /// Applies a pass's verdict (window offsets mapped by `anchors`).
    fn apply(&mut self, verdict: Verdict, anchors: &[(usize, u64)]) {
        for (start, end, with) in verdict.redact {
            let edit = Edit {
                start: raw_at(anchors, start),
                end: raw_at(anchors, end),
                with,
            };
            self.add_edit(edit);
        }
        if verdict.stop {
            self.stopped = true;
        }
    }

    /// Judges the batch's strings: nothing to do for any when the judge
    /// finds nothing may be in them, else each one alone, in order.
    fn judge_batch(&mut self, judge: &mut dyn Judge) {
        if self.batched.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let batched = std::mem::take(&mut self.batched);
        let anchors = std::mem::take(&mut self.batch_anchors);
        if judge.any(&batch) {
            let (mut start, mut first_anchor) = (0, 0);
            for b in &batched {
                let verdict = judge.judge(Pass {
                    text: &batch[start..b.end],
                    base: b.base,
                    fresh_from: 0,
                    batched: true,
                });
                self.apply(verdict, &anchors[first_anchor..b.anchors_end]);
                if self.stopped {
                    break;
                }
                (start, first_anchor) = (b.end + 1, b.anchors_end);
            }
        }
        // The buffers are kept for the next batch.
        (self.batch, self.batched, self.batch_anchors) = (batch, batched, anchors);
        self.batch.clear();
        self.batched.clear();
        self.batch_anchors.clear();
    }

    /// Records a replacement; one that reaches into bytes already released
    /// cannot be made, so the body ends instead.
    fn add_edit(&mut self, edit: Edit) {
        if edit.start < self.held_at {
            self.stopped = true;
            return;
        }
        let at = self.edits.partition_point(|e| e.start < edit.start);
        self.edits.insert(at, edit);
        // Overlapping replacements become one (the first one's text).
        let mut merged: Vec<Edit> = Vec::with_capacity(self.edits.len());
        for e in self.edits.drain(..) {
            match merged.last_mut() {
                Some(last) if e.start < last.end => last.end = last.end.max(e.end),
                _ => merged.push(e),
            }
        }
        self.edits = merged;
    }

    /// The held bytes before raw offset `upto` (never splitting an edit),
    /// with edits applied.
    fn release(&mut self, upto: u64) -> Vec<u8> {
        let upto = self
            .edits
            .iter()
            .find(|e| e.start < upto && upto < e.end)
            .map_or(upto, |e| e.start);
        if upto <= self.held_at {
            return Vec::new();
        }
        let take = usize::try_from(upto - self.held_at).unwrap_or(self.held.len());
        let mut out = Vec::with_capacity(take);
        let mut at = self.held_at;
        let done = self.edits.partition_point(|e| e.end <= upto);
        for e in self.edits.drain(..done) {
            out.extend_from_slice(
                &self.held[offset(at, self.held_at)..offset(e.start, self.held_at)],
            );
            out.extend_from_slice(e.with.as_bytes());
            at = e.end;
        }
        out.extend_from_slice(&self.held[offset(at, self.held_at)..take]);
        self.held.drain(..take);
        self.held_at = upto;
        out
    }
}

/// The raw offset of window offset `at`, by a string's anchors.
fn raw_at(anchors: &[(usize, u64)], at: usize) -> u64 {
    let i = anchors.partition_point(|&(w, _)| w <= at);
    let (w, r) = anchors[i.saturating_sub(1)];
    r + (at - w) as u64
}

fn offset(raw: u64, base: u64) -> usize {
    usize::try_from(raw - base).unwrap_or(usize::MAX)
}

/// The length of a UTF-8 sequence from its first byte.
fn utf8_len(first: u8) -> usize {
    match first {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redacts every `SECRET` (a 6-letter word) and stops on `STOP`.
    fn judge(pass: Pass<'_>) -> Verdict {
        let mut v = Verdict::default();
        for (at, _) in pass.text.match_indices("SECRET") {
            if at + 6 > pass.fresh_from {
                v.redact.push((at, at + 6, "[R]".into()));
            }
        }
        v.stop = pass.text.contains("STOP");
        v
    }

    fn run(kind: BodyKind, body: &[u8], cut: usize) -> (Vec<u8>, bool) {
        run_with(kind, body, cut, &mut judge)
    }

    /// The body fed in chunks of `cut` bytes: what went out, and whether
    /// it stopped.
    fn run_with(kind: BodyKind, body: &[u8], cut: usize, judge: &mut dyn Judge) -> (Vec<u8>, bool) {
        let mut scan = DocumentScan::new(kind);
        let mut out = Vec::new();
        let chunks: Vec<&[u8]> = body.chunks(cut.max(1)).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let (bytes, stop) = scan.feed(chunk, i + 1 == chunks.len(), judge);
            out.extend(bytes);
            if stop {
                return (out, true);
            }
        }
        (out, false)
    }

    #[test]
    fn bytes_pass_unchanged_without_findings_at_any_cut() {
        let body = r#"{"a": "caf\u00e9 \ud83d\ude00 \"q\" \\", "b": [1, 2.5, "x\u00"], "ü": "ü"}"#
            .as_bytes();
        for cut in 1..body.len() {
            assert_eq!(run(BodyKind::Json, body, cut).0, body, "cut {cut}");
        }
    }

    #[test]
    fn matches_are_replaced_in_the_raw_bytes_at_any_cut() {
        let body = br#"{"k": "a SECRET b", "SECRET": "S\u0045CRET\n", "n": 5}"#;
        let want = br#"{"k": "a [R] b", "[R]": "[R]\n", "n": 5}"#;
        for cut in 1..body.len() {
            assert_eq!(run(BodyKind::Json, body, cut).0, want, "cut {cut}");
        }
    }

    #[test]
    fn long_strings_are_scanned_in_overlapping_windows() {
        let mut text = "x".repeat(3 * WINDOW + 17);
        for at in [WINDOW - 3, 2 * WINDOW - 1, 3 * WINDOW] {
            text.replace_range(at..at + 6, "SECRET");
        }
        let body = format!("{{\"t\": \"{text}\"}}");
        let (out, stop) = run(BodyKind::Json, body.as_bytes(), 10_000);
        assert!(!stop);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.matches("[R]").count(), 3, "{}", out.len());
        assert!(!out.contains("SECRET"));
        let (plain, _) = run(BodyKind::Text, text.as_bytes(), 7_777);
        assert_eq!(String::from_utf8(plain).unwrap().matches("[R]").count(), 3);
    }

    /// Batches whole strings; says something may be in a batch only when
    /// one of them holds `SECRET` or `STOP`, and counts what it judged.
    struct Batching {
        judged: usize,
    }

    impl Judge for Batching {
        fn batches(&self) -> bool {
            true
        }
        fn any(&mut self, texts: &str) -> bool {
            texts.contains("SECRET") || texts.contains("STOP")
        }
        fn judge(&mut self, pass: Pass<'_>) -> Verdict {
            self.judged += 1;
            judge(pass)
        }
    }

    fn run_batching(body: &[u8], cut: usize) -> ((Vec<u8>, bool), usize) {
        let mut judge = Batching { judged: 0 };
        let out = run_with(BodyKind::Json, body, cut, &mut judge);
        (out, judge.judged)
    }

    /// Whole strings judged together give the body each string judged
    /// alone gives, at any cut: replacements, escapes, a stop after a
    /// redaction; and a batch with nothing in it costs no judging.
    #[test]
    fn batched_strings_are_judged_as_alone() {
        let long = "y".repeat(WINDOW + 10);
        let bodies = [
            br#"{"k": "a SECRET b", "SECRET": "S\u0045CRET\n", "n": 5, "q": ["x", "y\"z"]}"#.to_vec(),
            br#"{"a": "fine", "b": "SECRET", "c": "then STOP here", "d": "SECRET"}"#.to_vec(),
            br#"{"id": "chatcmpl-1", "choices": [{"message": {"content": "caf\u00e9 \ud83d\ude00"}}]}"#.to_vec(),
            format!(r#"{{"a": "SECRET", "long": "{long}SECRET", "z": "SECRET"}}"#).into_bytes(),
        ];
        for body in &bodies {
            for cut in [1, 2, 3, 7, 16, 64, body.len()] {
                let (batched, _) = run_batching(body, cut);
                assert_eq!(
                    batched,
                    run(BodyKind::Json, body, cut),
                    "cut {cut}: {}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        let (quiet, judged) = run_batching(&bodies[2], bodies[2].len());
        assert_eq!(quiet, (bodies[2].clone(), false));
        assert_eq!(judged, 0, "nothing may be in it: no string judged");
        let (_, judged) = run_batching(&bodies[0], bodies[0].len());
        assert_eq!(judged, 8, "something may be: every string judged alone");
    }

    #[test]
    fn a_stop_releases_nothing_of_the_window() {
        let body = br#"{"a": "fine", "b": "then STOP here"}"#;
        let (out, stop) = run(BodyKind::Json, body, 4);
        assert!(stop);
        assert!(!String::from_utf8_lossy(&out).contains("then"), "{out:?}");
    }

    #[test]
    fn memory_stays_bounded() {
        let mut scan = DocumentScan::new(BodyKind::Json);
        scan.feed(b"{\"t\": \"", false, &mut judge);
        let chunk = vec![b'y'; 1024 * 1024];
        let mut out = 0;
        for _ in 0..20 {
            out += scan.feed(&chunk, false, &mut judge).0.len();
            assert!(scan.held.len() < WINDOW + OVERLAP + chunk.len());
            assert!(scan.window.len() < WINDOW + chunk.len());
        }
        assert!(out > 19 * 1024 * 1024);
    }

    #[test]
    fn kinds() {
        assert_eq!(
            BodyKind::sniff(Some("application/json"), b""),
            Some(BodyKind::Json)
        );
        assert_eq!(BodyKind::sniff(None, b"  {\"a\":1}"), Some(BodyKind::Json));
        assert_eq!(
            BodyKind::sniff(Some("text/plain; charset=utf-8"), b"hi"),
            Some(BodyKind::Text)
        );
        assert_eq!(
            BodyKind::sniff(Some("application/octet-stream"), b"hello"),
            Some(BodyKind::Text)
        );
        assert_eq!(
            BodyKind::sniff(Some("audio/mpeg"), b"\xff\xfb\x90\x00"),
            None
        );
    }
}
