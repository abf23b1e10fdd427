//! Incremental Server-Sent Events framing: feeds arbitrary chunks, yields
//! complete events with their byte ranges, and keeps a bounded carry-over of
//! the partial event at the end of a chunk.

/// Largest partial event kept between chunks; a longer one is given up on.
pub const MAX_CARRY: usize = 1024 * 1024;

#[derive(Debug, Default, Clone)]
pub struct SseBuffer {
    carry: Vec<u8>,
    overflowed: bool,
}

/// One complete event: its raw bytes (with the blank line) and its `data`.
#[derive(Debug, PartialEq, Eq)]
pub struct Event {
    pub raw: Vec<u8>,
    pub data: String,
}

fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
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

impl SseBuffer {
    /// Adds `chunk`; returns the events it completed. At end of stream pass
    /// `end = true` to flush a final event without its blank line.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Vec<Event> {
        if self.overflowed {
            return Vec::new();
        }
        self.carry.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(n) = event_end(&self.carry) {
            let raw: Vec<u8> = self.carry.drain(..n).collect();
            let data = data_of(&raw);
            events.push(Event { raw, data });
        }
        if end && !self.carry.is_empty() {
            let raw = std::mem::take(&mut self.carry);
            let data = data_of(&raw);
            events.push(Event { raw, data });
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
}
