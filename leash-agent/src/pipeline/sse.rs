//! Incremental Server-Sent Events framing: feeds arbitrary chunks, yields
//! complete events with their byte ranges, and keeps a bounded carry-over of
//! the partial event at the end of a chunk.

/// Largest partial event kept between chunks; a longer one is given up on.
pub const MAX_CARRY: usize = 1024 * 1024;

#[derive(Debug, Default, Clone)]
pub struct SseBuffer {
    /// The unfinished event after the last one found. It was searched for
    /// an event's end already: each byte is looked at once, however many
    /// chunks a large event takes.
    carry: Vec<u8>,
    overflowed: bool,
}

/// One complete event: its raw bytes (with the blank line) and its `data`.
#[derive(Debug, PartialEq, Eq)]
pub struct Event {
    pub raw: Vec<u8>,
    pub data: String,
}

/// The end (just past the blank line, `\n\n` or `\r\n\r\n`) of the first
/// event in `buf`, looking for it from `from` on (`from` is where an
/// earlier search stopped: the three bytes before it are looked at again,
/// as a terminator may straddle the two).
fn event_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from.saturating_sub(3);
    while let Some(i) = memchr::memchr(b'\n', buf.get(at..)?) {
        let lf = at + i;
        match buf.get(lf + 1) {
            Some(b'\n') => return Some(lf + 2),
            Some(b'\r') if buf.get(lf + 2) == Some(&b'\n') && lf >= 1 && buf[lf - 1] == b'\r' => {
                return Some(lf + 3);
            }
            _ => at = lf + 1,
        }
    }
    None
}

fn data_of(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut data = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    data
}

fn event(raw: &[u8]) -> Event {
    Event {
        raw: raw.to_vec(),
        data: data_of(raw),
    }
}

impl SseBuffer {
    /// Adds `chunk`; returns the events it completed. At end of stream pass
    /// `end = true` to flush a final event without its blank line.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Vec<Event> {
        if self.overflowed {
            return Vec::new();
        }
        let mut events = Vec::new();
        // Events wholly inside the chunk are read from it in place; only
        // an unfinished one is carried to the next.
        let mut rest = chunk;
        if !self.carry.is_empty() {
            let searched = self.carry.len();
            self.carry.extend_from_slice(chunk);
            let Some(n) = event_end(&self.carry, searched) else {
                return self.finish(events, end);
            };
            events.push(event(&self.carry[..n]));
            // The carry held no event's end, so this one ends in the chunk.
            rest = chunk.get(n.saturating_sub(searched)..).unwrap_or_default();
            self.carry.clear();
        }
        while let Some(n) = event_end(rest, 0) {
            events.push(event(&rest[..n]));
            rest = &rest[n..];
        }
        self.carry.extend_from_slice(rest);
        self.finish(events, end)
    }

    /// The final event at the end of the stream, and the carry's bound.
    fn finish(&mut self, mut events: Vec<Event>, end: bool) -> Vec<Event> {
        if end && !self.carry.is_empty() {
            events.push(event(&self.carry));
            self.carry.clear();
        }
        if self.carry.len() > MAX_CARRY {
            self.carry = Vec::new();
            self.overflowed = true;
        }
        events
    }

    /// Bytes of an incomplete event held back.
    pub fn pending(&self) -> &[u8] {
        &self.carry
    }

    /// True once an event exceeded [`MAX_CARRY`]: parsing stopped.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks() {
        let mut b = SseBuffer::default();
        assert!(b.feed(b"event: x\ndata: {\"a\":", false).is_empty());
        let ev = b.feed(b"1}\n\ndata: [DONE]\r\n\r\ndata: tail", false);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].data, "{\"a\":1}");
        assert_eq!(ev[0].raw, b"event: x\ndata: {\"a\":1}\n\n");
        assert_eq!(ev[1].data, "[DONE]");
        assert_eq!(b.pending(), b"data: tail");
        let ev = b.feed(b"", true);
        assert_eq!(ev[0].data, "tail");
    }

    /// However a stream is cut into chunks (every split into two, and one
    /// byte at a time), the events are those of the whole stream at once.
    #[test]
    fn framing_does_not_depend_on_where_chunks_end() {
        let stream: &[u8] = b"data: {\"a\":1}\n\nevent: e\r\ndata: two\r\ndata: lines\r\n\r\n\
            data: x\n\r\ndata: y\n\ndata: [DONE]\r\n\r\ndata: tail";
        let whole = SseBuffer::default().feed(stream, true);
        assert_eq!(whole.len(), 5, "{whole:?}");
        assert_eq!(whole[1].data, "two\nlines");
        assert_eq!(whole[2].data, "x\ny", "a lone \\n\\r\\n ends no event");
        for cut in 0..=stream.len() {
            let mut b = SseBuffer::default();
            let mut got = b.feed(&stream[..cut], false);
            got.extend(b.feed(&stream[cut..], true));
            assert_eq!(got, whole, "cut at {cut}");
        }
        let mut b = SseBuffer::default();
        let mut got: Vec<Event> = stream
            .iter()
            .flat_map(|byte| b.feed(&[*byte], false))
            .collect();
        got.extend(b.feed(b"", true));
        assert_eq!(got, whole, "one byte at a time");
    }

    /// An event longer than the carry's bound stops the framing.
    #[test]
    fn an_event_past_the_bound_overflows() {
        let mut b = SseBuffer::default();
        let piece = vec![b'x'; 64 * 1024];
        assert!(b.feed(b"data: ", false).is_empty());
        for _ in 0..=MAX_CARRY / piece.len() {
            assert!(b.feed(&piece, false).is_empty());
        }
        assert!(b.overflowed());
        assert!(b.feed(b"\n\ndata: later\n\n", true).is_empty());
    }
}
