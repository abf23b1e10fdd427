//! Response bodies sent to callers: Leash's own small answers, or the
//! upstream's body streamed frame by frame through the pipeline's response
//! phases (never buffered whole).

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::pipeline::{ActiveExchange, BodyFlow};

pub enum LeashBody {
    Full(Option<Bytes>),
    Observed(Box<ObservedBody>),
}

impl LeashBody {
    pub fn full(bytes: Bytes) -> Self {
        Self::Full(Some(bytes))
    }

    pub fn observed(inner: Incoming, ex: ActiveExchange, rewrites: bool) -> Self {
        Self::Observed(Box::new(ObservedBody {
            inner,
            ex,
            rewrites,
            done: false,
        }))
    }
}

/// The upstream body plus the exchange it belongs to. Dropping it (stream
/// finished or caller gone) ends the exchange and writes its record.
pub struct ObservedBody {
    inner: Incoming,
    ex: ActiveExchange,
    rewrites: bool,
    done: bool,
}

impl ObservedBody {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            None => {
                self.done = true;
                self.ex.completed = true;
                let mut tail = Bytes::new();
                self.ex.response_chunk(&mut tail, true);
                if tail.is_empty() {
                    Poll::Ready(None)
                } else {
                    self.ex.response_bytes += tail.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(tail))))
                }
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    if self.ex.timing.first_byte.is_none() {
                        self.ex.timing.first_byte = Some(Instant::now());
                    }
                    if self.ex.response_chunk(&mut data, false) == BodyFlow::Stop {
                        self.done = true;
                        self.ex.completed = true;
                    }
                    self.ex.response_bytes += data.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(trailers) => Poll::Ready(Some(Ok(trailers))),
            },
            Some(Err(e)) => {
                self.done = true;
                tracing::warn!(request_id = %self.ex.id, error = %e, "upstream body failed mid-stream");
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl Body for LeashBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Observed(body) => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            // Always polled to its end so the end-of-stream phase runs.
            Self::Observed(body) => body.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Observed(body) if !body.rewrites => body.inner.size_hint(),
            Self::Observed(_) => SizeHint::default(),
        }
    }
}
