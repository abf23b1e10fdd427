//! The response side, streams: complete SSE events scanned as they arrive
//! with the tail of earlier text kept, a blocking rule ending the stream
//! with the provider's error event, and — while a rule redacts — events held
//! back by `HOLD_BACK` bytes of text so a match split across events is
//! replaced before any of it leaves.

use std::collections::VecDeque;

use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;

use super::{Decision, Policy, PolicyModule, detect::Finding, document, text};
use crate::{
    pipeline::{BodyFlow, Exchange, calls::Assembler, sse::SseBuffer},
    provider::{ErrorCode, ProviderKind, error_body},
    record::Action,
};

/// Response text kept from earlier chunks, so a match split across stream
/// chunks is still found.
pub(super) const CARRY_WINDOW: usize = 512;

/// Stream text held back before delivery while a response rule redacts, so
/// a match split across events is replaced before any of it leaves. A
/// longer match whose start was already delivered ends the stream instead.
pub(super) const HOLD_BACK: usize = 256;

/// Response-side scanning state of one exchange. Offsets are positions in
/// the stream's text (all deltas joined).
#[derive(Clone, Default)]
pub(super) struct ResponseScan {
    pub(super) sse: SseBuffer,
    /// The tail of the response text seen so far (bounded); starts at `base`.
    pub(super) window: String,
    pub(super) base: usize,
    /// Where the last recorded match ended: a match that grows as more text
    /// arrives is recorded once.
    pub(super) reported: usize,
    /// Detectors an enforcing redact rule has matched.
    pub(super) redacting: Vec<usize>,
    /// Events held back (only while redacting).
    pub(super) pending: VecDeque<Pending>,
    /// Text up to here has been delivered.
    pub(super) released: usize,
    /// Text to replace, sorted by start.
    pub(super) spans: Vec<Span>,
    /// A match was found that starts in text already delivered unredacted.
    pub(super) leaked: bool,
    pub(super) stopped: bool,
    /// A non-streaming body: its content type, and its scanner once the
    /// first bytes told what it is.
    pub(super) content_type: Option<String>,
    pub(super) document: Document,
    /// The answer's tool calls being assembled (rules on tool calls).
    pub(super) calls: Assembler,
    /// Events held while a tool call is open, ready for the client.
    pub(super) held: Vec<u8>,
    pub(super) held_since: Option<std::time::Instant>,
    /// A whole answer read to its end before its tool calls are judged.
    pub(super) whole: Vec<u8>,
}

/// What is known of a non-streaming body.
#[derive(Clone, Default)]
pub(super) enum Document {
    /// No bytes seen yet.
    #[default]
    Unknown,
    /// Binary (audio, images): not scanned.
    Binary,
    Scanning(Box<document::DocumentScan>),
}

#[derive(Clone)]
pub(super) struct Pending {
    pub(super) raw: Vec<u8>,
    pub(super) value: Option<Value>,
    pub(super) start: usize,
    pub(super) end: usize,
    /// Structured arguments, which cannot be rewritten in place.
    pub(super) opaque: Vec<(usize, usize)>,
}

#[derive(Clone, Copy)]
pub(super) struct Span {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) detector: usize,
}

/// Most bytes of stream events held while a tool call's arguments
/// complete; a longer call ends the stream.
const MAX_HELD: usize = 1 << 20;
/// Longest a tool call may stay open while its events are held; checked
/// as events arrive.
const MAX_HOLD: std::time::Duration = std::time::Duration::from_mins(1);

/// Why a held call ends the stream, if it must: too many bytes held, or
/// held too long.
fn hold_exceeded(st: &ResponseScan) -> Option<(&'static str, String)> {
    if st.held.len() > MAX_HELD {
        return Some((
            "tool_call_too_large",
            format!(
                "leash: a tool call's arguments exceeded the {} KiB policy holds to check them; the stream was ended",
                MAX_HELD >> 10
            ),
        ));
    }
    if st.held_since.is_some_and(|t| t.elapsed() > MAX_HOLD) {
        return Some((
            "tool_call_too_slow",
            format!(
                "leash: a tool call's arguments did not complete within {} s; the stream was ended",
                MAX_HOLD.as_secs()
            ),
        ));
    }
    None
}

/// Holds `event` (bytes ready for the client) while a call is open;
/// otherwise delivers what was held, then it.
fn hold_or_deliver(st: &mut ResponseScan, event: &[u8], out: &mut Vec<u8>) {
    if st.calls.is_open() {
        if st.held.is_empty() {
            st.held_since = Some(std::time::Instant::now());
        }
        st.held.extend_from_slice(event);
    } else {
        out.append(&mut st.held);
        st.held_since = None;
        out.extend_from_slice(event);
    }
}

/// Records that the answer was ended by Leash itself (`rule` names why).
pub(super) fn stopped_by(ex: &mut Exchange, rule: &str) {
    let d = ex.ext.get_or_insert_default::<Decision>();
    d.action = d.action.max(Some(Action::Block));
    d.rules.push(rule.into());
}

impl ResponseScan {
    /// The stream ends here: nothing held is delivered.
    pub(super) fn stop(&mut self) {
        self.stopped = true;
        self.pending.clear();
        self.held.clear();
    }

    pub(super) fn end(&self) -> usize {
        self.base + self.window.len()
    }

    pub(super) fn add_span(&mut self, span: Span) {
        for s in &mut self.spans {
            if span.start < s.end && s.start < span.end {
                // Growing to the left into delivered text cannot be undone.
                if span.start < s.start && span.start < self.released {
                    self.leaked = true;
                }
                s.start = s.start.min(span.start);
                s.end = s.end.max(span.end);
                return;
            }
        }
        if span.start < self.released {
            self.leaked = true;
        }
        self.spans.push(span);
        self.spans.sort_by_key(|s| s.start);
    }

    /// Whether every span can still be replaced: none starts in text that
    /// was delivered unredacted, and none touches structured arguments.
    pub(super) fn spans_redactable(&self) -> bool {
        !self.leaked
            && self.spans.iter().all(|s| {
                s.end <= self.released
                    || self
                        .pending
                        .iter()
                        .flat_map(|p| &p.opaque)
                        .all(|&(a, b)| s.end <= a || b <= s.start)
            })
    }

    /// Delivers held events whose text is `HOLD_BACK` behind the newest
    /// (all of them at the end of the stream), with spans replaced.
    pub(super) fn release(
        &mut self,
        policy: &Policy,
        kind: ProviderKind,
        all: bool,
        out: &mut Vec<u8>,
    ) {
        let limit = self.end().saturating_sub(HOLD_BACK);
        while let Some(p) = self.pending.front() {
            if !all && p.end > limit {
                break;
            }
            let Some(mut p) = self.pending.pop_front() else {
                break;
            };
            self.released = p.end;
            match p.value.as_mut() {
                Some(v)
                    if self
                        .spans
                        .iter()
                        .any(|s| s.start < p.end && p.start < s.end) =>
                {
                    apply_spans(policy, kind, v, p.start, &self.spans);
                    out.extend(rewrite_data(&p.raw, v));
                }
                _ => out.extend_from_slice(&p.raw),
            }
        }
        // A span that straddles the release point went out as its
        // `[REDACTED:…]` marker; its rest is dropped from the next events.
        self.spans.retain(|s| s.end > self.released);
    }
}

/// Replaces the parts of `spans` inside the event's text (which starts at
/// stream offset `start`) with `[REDACTED:<detector>]` at each span's start.
pub(super) fn apply_spans(
    policy: &Policy,
    kind: ProviderKind,
    v: &mut Value,
    start: usize,
    spans: &[Span],
) {
    let mut pos = start;
    text::for_each_delta(kind, v, &mut |part| match part {
        text::DeltaPart::Json(j) => pos += j.to_string().len(),
        text::DeltaPart::Text(s) => {
            let (a, b) = (pos, pos + s.len());
            pos = b;
            let mut new = String::with_capacity(s.len());
            let mut at = a;
            for span in spans.iter().filter(|x| x.start < b && a < x.end) {
                let (from, to) = (span.start.max(a), span.end.min(b));
                new.push_str(s.get(at - a..from - a).unwrap_or_default());
                if span.start >= a {
                    new.push_str("[REDACTED:");
                    new.push_str(&policy.detectors.get(span.detector).name);
                    new.push(']');
                }
                at = to;
            }
            if at != a || new.len() != s.len() {
                new.push_str(s.get(at - a..).unwrap_or_default());
                *s = new;
            }
        }
    });
}

/// The SSE event `raw` with its data replaced by `v` (other fields kept).
pub(super) fn rewrite_data(raw: &[u8], v: &Value) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(raw.len() + 32);
    let mut wrote = false;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if line.starts_with("data:") {
            if !wrote {
                out.push_str("data: ");
                out.push_str(&v.to_string());
                out.push('\n');
                wrote = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    out.into_bytes()
}

/// An SSE event that ends a stream with the provider's error shape.
pub(super) fn error_event(kind: ProviderKind, message: &str) -> Vec<u8> {
    let body = error_body(
        kind,
        StatusCode::FORBIDDEN,
        ErrorCode::PolicyBlocked,
        message,
    );
    let body = String::from_utf8_lossy(&body);
    match kind {
        ProviderKind::Anthropic => format!("event: error\ndata: {body}\n\n").into_bytes(),
        ProviderKind::OpenAi | ProviderKind::Google => format!("data: {body}\n\n").into_bytes(),
    }
}

pub(super) fn keep_tail(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = s.len() - max;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s.drain(..cut);
    }
}

impl PolicyModule {
    /// A stream: complete events are scanned as they arrive, with the tail
    /// of earlier text kept so a match split across chunks is found. A
    /// blocking rule ends the stream with the provider's error event:
    /// nothing after the match is delivered. While a rule redacts, events are
    /// held back by `HOLD_BACK` bytes of text so a split match is replaced
    /// before any of it leaves.
    pub(super) fn scan_stream(
        &self,
        policy: &Policy,
        ex: &mut Exchange,
        st: &mut ResponseScan,
        chunk: &mut Bytes,
        end: bool,
    ) -> BodyFlow {
        if st.stopped {
            *chunk = Bytes::new();
            return BodyFlow::Stop;
        }
        let hold = policy.redacts_responses();
        let judge = policy.judges_calls();
        let kind = ex.provider.kind;
        let mut out = Vec::with_capacity(chunk.len());
        for event in st.sse.feed(chunk, end) {
            let mut completed = Vec::new();
            let start = st.end();
            let mut pending = Pending {
                raw: event.raw,
                value: None,
                start,
                end: start,
                opaque: Vec::new(),
            };
            if let Ok(mut v) = serde_json::from_str::<Value>(&event.data) {
                if judge {
                    completed = st.calls.feed(&v);
                }
                let base = st.base;
                let window = &mut st.window;
                let opaque = &mut pending.opaque;
                text::for_each_delta(kind, &mut v, &mut |part| match part {
                    text::DeltaPart::Text(s) => window.push_str(s),
                    text::DeltaPart::Json(j) => {
                        let a = base + window.len();
                        window.push_str(&j.to_string());
                        opaque.push((a, base + window.len()));
                    }
                });
                pending.end = st.end();
                pending.value = Some(v);
            }
            if pending.end > start
                && let Some(message) = self.scan_window(policy, ex, st, start)
            {
                out.extend(error_event(kind, &message));
                st.stop();
                *chunk = Bytes::from(out);
                return BodyFlow::Stop;
            }
            let mut ready = Vec::new();
            if hold {
                st.pending.push_back(pending);
                st.release(policy, kind, false, &mut ready);
            } else {
                ready = pending.raw;
            }
            if judge {
                // A blocked call is dropped with what was held; else the
                // event is held or delivered, and the hold's bounds checked.
                let mut stop = self.judge_calls(policy, ex, &completed);
                if stop.is_none() {
                    hold_or_deliver(st, &ready, &mut out);
                    if let Some((rule, message)) = hold_exceeded(st) {
                        stopped_by(ex, rule);
                        stop = Some(message);
                    }
                }
                if let Some(message) = stop {
                    out.extend(error_event(kind, &message));
                    st.stop();
                    *chunk = Bytes::from(out);
                    return BodyFlow::Stop;
                }
            } else {
                out.extend(ready);
            }
            let before = st.window.len();
            keep_tail(&mut st.window, CARRY_WINDOW);
            st.base += before - st.window.len();
        }
        if st.sse.overflowed() {
            // An event too large to hold cannot be inspected: the stream
            // ends here, visibly, rather than going on unseen. Events held
            // for an open tool call go with it (the call was not checked).
            if !st.calls.is_open() {
                st.release(policy, kind, true, &mut out);
            }
            out.extend(error_event(
                kind,
                "leash: a stream event exceeded the size policy can inspect; the stream was ended",
            ));
            stopped_by(ex, "event_too_large");
            st.stop();
            *chunk = Bytes::from(out);
            return BodyFlow::Stop;
        }
        if end {
            // Calls the stream left open are judged as they are.
            let rest = st.calls.finish();
            if let Some(message) = self.judge_calls(policy, ex, &rest) {
                out.extend(error_event(kind, &message));
                st.stop();
                *chunk = Bytes::from(out);
                return BodyFlow::Stop;
            }
            out.append(&mut st.held);
            st.release(policy, kind, true, &mut out);
        }
        *chunk = Bytes::from(out);
        BodyFlow::Continue
    }

    /// Scans the window after new text (from stream offset `start`) was
    /// added; records what matched and marks text to redact. Returns the
    /// message to end the stream with, if it must end.
    pub(super) fn scan_window(
        &self,
        policy: &Policy,
        ex: &mut Exchange,
        st: &mut ResponseScan,
        start: usize,
    ) -> Option<String> {
        let mut all = Vec::new();
        policy.detectors.scan(&st.window, &mut all);
        let base = st.base;
        // Only matches that reach into the new text are new.
        let fresh: Vec<Finding> = all.into_iter().filter(|f| base + f.end > start).collect();
        let new: Vec<Finding> = fresh
            .iter()
            .filter(|f| base + f.start >= st.reported)
            .cloned()
            .collect();
        let mut found: Vec<usize> = new.iter().map(|f| f.detector).collect();
        found.sort_unstable();
        found.dedup();
        if let Some((rule, shadow)) = policy.decide_response(ex, &found) {
            self.record_response(policy, ex, rule, shadow, &new);
            st.reported = new
                .iter()
                .map(|f| base + f.end)
                .max()
                .unwrap_or(st.reported);
            if !shadow && rule.action == Action::Block {
                return Some(format!(
                    "leash: response blocked by policy rule `{}`",
                    rule.name
                ));
            }
            if !shadow && rule.action == Action::Redact {
                st.redacting.extend(rule.detectors.iter().flatten());
            }
        }
        let spans: Vec<Span> = fresh
            .iter()
            .filter(|f| st.redacting.contains(&f.detector))
            .map(|f| Span {
                start: base + f.start,
                end: base + f.end,
                detector: f.detector,
            })
            .collect();
        for span in spans {
            st.add_span(span);
        }
        if st.spans_redactable() {
            return None;
        }
        // Part of it was delivered already (or it is inside structured
        // arguments): stop here so nothing more of it leaves.
        if let Some(d) = ex.ext.get_mut::<Decision>() {
            d.action = Some(Action::Block);
        }
        Some("leash: response ended: a match could not be redacted before delivery".into())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn spans_are_replaced_across_events_and_sse_stays_valid() {
        let policy = Policy::parse("version: 1\n", "p.yaml").unwrap();
        let email = policy.detectors.resolve("email")[0];
        // Stream text "say a@b.io ok": the match covers offsets 4..10 and
        // spans two events, the first holding offsets 0..6.
        let span = [Span {
            start: 4,
            end: 10,
            detector: email,
        }];
        let mut first = json!({"type": "content_block_delta", "delta": {"text": "say a@"}});
        apply_spans(&policy, ProviderKind::Anthropic, &mut first, 0, &span);
        assert_eq!(first["delta"]["text"], "say [REDACTED:email]");
        let mut second = json!({"type": "content_block_delta", "delta": {"text": "b.io ok"}});
        apply_spans(&policy, ProviderKind::Anthropic, &mut second, 6, &span);
        assert_eq!(second["delta"]["text"], " ok");
        let raw = rewrite_data(b"event: content_block_delta\r\ndata: {}\r\n\r\n", &second);
        let text = String::from_utf8(raw).unwrap();
        assert!(text.starts_with("event: content_block_delta\ndata: {"));
        assert!(text.ends_with("}\n\n"));
    }

    #[test]
    fn a_span_straddling_a_released_event_stays_redactable() {
        let policy = Policy::parse("version: 1\n", "p.yaml").unwrap();
        let email = policy.detectors.resolve("email")[0];
        let event = |text: &str, start: usize| Pending {
            raw: b"data: {}\n\n".to_vec(),
            value: Some(json!({"type": "content_block_delta", "delta": {"text": text}})),
            start,
            end: start + text.len(),
            opaque: Vec::new(),
        };
        let mut st = ResponseScan {
            window: format!("say a@b.io ok{}", "x".repeat(HOLD_BACK - 6)),
            ..ResponseScan::default()
        };
        st.pending.push_back(event("say a@", 0));
        st.pending.push_back(event("b.io ok", 6));
        st.add_span(Span {
            start: 4,
            end: 10,
            detector: email,
        });
        // The first event goes out with the marker; the span's rest is still
        // held, so the stream can go on (this once ended it).
        let mut out = Vec::new();
        st.release(&policy, ProviderKind::Anthropic, false, &mut out);
        assert_eq!(st.released, 6);
        assert!(String::from_utf8_lossy(&out).contains("say [REDACTED:email]"));
        assert!(st.spans_redactable());
        // A match that starts in text delivered unredacted cannot be undone.
        st.add_span(Span {
            start: 1,
            end: 8,
            detector: email,
        });
        assert!(!st.spans_redactable());
    }
}
