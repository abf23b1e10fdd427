//! The SSE event splitter on arbitrary bytes cut into arbitrary reads: it
//! never panics, and (unless an event overflowed its bound) the events plus
//! what is pending are exactly the input, in order.
#![no_main]

use leash_agent::pipeline::sse::SseBuffer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&size, body)) = data.split_first() else {
        return;
    };
    let size = usize::from(size).max(1);
    let chunks: Vec<&[u8]> = body.chunks(size).collect();
    let mut buf = SseBuffer::default();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        for event in buf.feed(chunk, i + 1 == chunks.len()) {
            out.extend_from_slice(&event.raw);
        }
    }
    if !buf.overflowed() {
        out.extend_from_slice(buf.pending());
        assert_eq!(out, body, "events must be the input, byte for byte");
    }
});
