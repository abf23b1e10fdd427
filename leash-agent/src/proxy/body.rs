//! Response bodies sent to callers: Leash's own small answers, or the
//! upstream's body streamed frame by frame through the pipeline's response
//! phases (never buffered whole). Either way the exchange is finished before
//! the last frame is released, so with `audit.durability: sync` a response
//! completes only once its audit record is on disk.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::{
    audit::Submitted,
    pipeline::{ActiveExchange, BodyFlow},
    translate::Translator,
};

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("leash: the audit record of this response could not be written")]
struct AuditFailed;

pub enum LeashBody {
    /// A body with nothing to finish (no exchange: e.g. an unknown route).
    Full(Option<Bytes>),
    /// Leash's own answer for an exchange: sent once the exchange finished.
    Local(Box<LocalBody>),
    Observed(Box<ObservedBody>),
    /// Another body's bytes turned into the unified (`OpenAI`) shape.
    Translated(Box<TranslatedBody>),
}

pub struct TranslatedBody {
    inner: LeashBody,
    translator: Translator,
    ended: bool,
}

pub struct LocalBody {
    bytes: Option<Bytes>,
    finishing: Submitted,
}

impl LeashBody {
    /// `inner` as the client of the unified API reads it.
    pub fn translated(inner: Self, translator: Translator) -> Self {
        Self::Translated(Box::new(TranslatedBody {
            inner,
            translator,
            ended: false,
        }))
    }

    pub fn full(bytes: Bytes) -> Self {
        Self::Full(Some(bytes))
    }

    /// Leash's answer `bytes` for `ex`, which ends with it.
    pub fn local(bytes: Bytes, ex: &mut ActiveExchange) -> Self {
        Self::Local(Box::new(LocalBody {
            bytes: Some(bytes),
            finishing: ex.finish(),
        }))
    }

    /// The upstream body, streamed through the response phases. `prefix`:
    /// bytes already read from it (and seen by the phases), sent first.
    pub fn observed(
        inner: Incoming,
        ex: ActiveExchange,
        rewrites: bool,
        prefix: Option<Bytes>,
    ) -> Self {
        Self::Observed(Box::new(ObservedBody {
            inner,
            ex,
            rewrites,
            prefix,
            phase: Phase::Streaming,
        }))
    }
}

/// A record whose submission was not seen through (the body was dropped
/// before it: the client left) still goes to the writer: the rest of the
/// submission runs on its own.
fn see_through(submitted: &mut Submitted) {
    let rest = std::mem::replace(submitted, Box::pin(std::future::ready(true)));
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(rest);
    }
}

impl Drop for LocalBody {
    fn drop(&mut self) {
        if self.bytes.is_some() {
            see_through(&mut self.finishing);
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Phase::Finishing { submitted, .. } = &mut self.phase {
            see_through(submitted);
        }
    }
}

enum Phase {
    Streaming,
    /// The upstream ended (or a module stopped the stream): the record is
    /// being submitted; `tail` goes out once it is, then (`abort`) an error
    /// so the caller cannot take what it got for the whole body.
    Finishing {
        submitted: Submitted,
        tail: Bytes,
        abort: bool,
    },
    /// The record is written: the tail, then (`abort`) the error.
    Ending {
        tail: Option<Bytes>,
        abort: bool,
    },
    Done,
}

/// The upstream body plus the exchange it belongs to. If it is dropped
/// before the end (caller gone), the exchange still gets its record.
pub struct ObservedBody {
    inner: Incoming,
    ex: ActiveExchange,
    rewrites: bool,
    prefix: Option<Bytes>,
    phase: Phase,
}

#[derive(Debug, thiserror::Error)]
#[error("leash: the response was cut off by policy")]
struct Aborted;

impl ObservedBody {
    fn finishing(&mut self, tail: Bytes, abort: bool) {
        self.ex.completed = !abort;
        self.ex.response_bytes += tail.len() as u64;
        self.phase = Phase::Finishing {
            submitted: self.ex.finish(),
            tail,
            abort,
        };
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let log = self.ex.log.clone();
        let _log = log.enter();
        loop {
            match &mut self.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Finishing {
                    submitted,
                    tail,
                    abort,
                } => {
                    let ok = ready!(submitted.as_mut().poll(cx));
                    if !ok {
                        self.phase = Phase::Done;
                        return Poll::Ready(Some(Err(AuditFailed.into())));
                    }
                    let tail = std::mem::take(tail);
                    self.phase = Phase::Ending {
                        tail: (!tail.is_empty()).then_some(tail),
                        abort: *abort,
                    };
                }
                Phase::Ending { tail, abort } => {
                    if let Some(tail) = tail.take() {
                        return Poll::Ready(Some(Ok(Frame::data(tail))));
                    }
                    let abort = *abort;
                    self.phase = Phase::Done;
                    if abort {
                        return Poll::Ready(Some(Err(Aborted.into())));
                    }
                }
                Phase::Streaming => return self.poll_stream(cx),
            }
        }
    }

    fn poll_stream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(prefix) = self.prefix.take() {
            // Read (and seen by the response phases) before streaming began.
            self.ex.response_bytes += prefix.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            None => {
                let mut tail = Bytes::new();
                let flow = self.ex.response_chunk(&mut tail, true);
                self.finishing(tail, matches!(flow, BodyFlow::Abort(_)));
                self.poll_frame(cx)
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    if self.ex.timing.first_byte.is_none() {
                        self.ex.timing.first_byte = Some(Instant::now());
                    }
                    match self.ex.response_chunk(&mut data, false) {
                        BodyFlow::Continue => {}
                        BodyFlow::Stop => {
                            self.finishing(data, false);
                            return self.poll_frame(cx);
                        }
                        BodyFlow::Abort(_) => {
                            self.finishing(data, true);
                            return self.poll_frame(cx);
                        }
                    }
                    self.ex.response_bytes += data.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(trailers) => Poll::Ready(Some(Ok(trailers))),
            },
            Some(Err(e)) => {
                self.phase = Phase::Done;
                tracing::warn!(request_id = %self.ex.id, error = %e, "upstream body failed mid-stream");
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }
}

impl TranslatedBody {
    /// The inner body's frames, translated; what a frame makes nothing of
    /// (half an event) waits for the next.
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                // Trailers: the translated answer has none.
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    match self.translator.feed(&data) {
                        Ok(out) if out.is_empty() => {}
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Err(e) => {
                            self.ended = true;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                }
                Some(Err(e)) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    self.ended = true;
                    let rest = self.translator.finish();
                    return Poll::Ready((!rest.is_empty()).then(|| Ok(Frame::data(rest))));
                }
            }
        }
    }
}

impl Body for LeashBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Local(local) => {
                if local.bytes.is_some() {
                    let ok = ready!(local.finishing.as_mut().poll(cx));
                    if !ok {
                        local.bytes = None;
                        return Poll::Ready(Some(Err(AuditFailed.into())));
                    }
                }
                Poll::Ready(local.bytes.take().map(|b| Ok(Frame::data(b))))
            }
            Self::Observed(body) => body.poll_frame(cx),
            Self::Translated(body) => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            Self::Local(local) => local.bytes.is_none(),
            // Always polled to its end so the end-of-stream phase runs.
            Self::Observed(body) => matches!(body.phase, Phase::Done),
            Self::Translated(body) => body.ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Self::Local(local) => {
                SizeHint::with_exact(local.bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Observed(body) if !body.rewrites && body.prefix.is_none() => {
                body.inner.size_hint()
            }
            Self::Observed(_) | Self::Translated(_) => SizeHint::default(),
        }
    }
}
