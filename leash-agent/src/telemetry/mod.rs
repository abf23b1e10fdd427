//! OpenTelemetry export (`telemetry.otlp`): each exchange becomes a span of
//! the `GenAI` semantic conventions (with child spans for its phases) and a
//! set of metric points, sent over OTLP (HTTP/protobuf or gRPC) by the
//! maintained `opentelemetry-otlp` exporters.
//!
//! The data path only hands a finished exchange to a bounded queue
//! ([`Telemetry::offer`], never waiting); one task turns it into spans and
//! metric points and exports them in batches. A full queue or a failed
//! export drops spans and counts them (`leash_telemetry_dropped_total`):
//! a slow or absent collector never slows a request.
//!
//! The `telemetry` pipeline module runs first: it decides sampling for new
//! traces (`sample_ratio`, so the provider's `traceparent` says the same),
//! reads the request's generation parameters, and offers each finished
//! exchange.

mod config;
mod content;
mod export;
mod span;

use std::sync::Arc;

use tokio::sync::mpsc;

pub use config::{OtlpConfig, Protocol, RawTelemetry, TelemetryConfig};
pub use span::{Finished, RequestParams};

use crate::{
    metrics::Metrics,
    pipeline::{Exchange, Filtered, Flow, Module, ProxyRequest},
    record::AuditRecord,
};

pub const NAME: &str = "telemetry";

/// What the export task receives.
enum Message {
    Exchange(Box<Finished>),
    /// Export what is queued, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The data path's side of the exporter: a bounded queue.
pub struct Telemetry {
    queue: mpsc::Sender<Message>,
    sample_ratio: f64,
    /// `content: redacted`.
    content: bool,
    /// Captured bytes queued for content attributes (`content::BUDGET`).
    content_held: Arc<std::sync::atomic::AtomicUsize>,
    metrics: Arc<Metrics>,
}

/// The export task, not yet started.
pub struct Worker {
    rx: mpsc::Receiver<Message>,
    config: OtlpConfig,
    metrics: Arc<Metrics>,
    /// `host.name` of the resource: the records' `host`.
    host: Arc<str>,
}

impl Telemetry {
    /// The queue and its (not yet running) export task.
    pub fn new(config: &OtlpConfig, metrics: Arc<Metrics>, host: &str) -> (Arc<Self>, Worker) {
        let (queue, rx) = mpsc::channel(config.queue_size);
        let worker = Worker {
            rx,
            config: config.clone(),
            metrics: Arc::clone(&metrics),
            host: host.into(),
        };
        (
            Arc::new(Self {
                queue,
                sample_ratio: config.sample_ratio,
                content: config.content,
                content_held: Arc::default(),
                metrics,
            }),
            worker,
        )
    }

    /// Queues a finished exchange; a full queue drops it (counted).
    fn offer(&self, finished: Finished) {
        let spans = finished.span_count();
        if self
            .queue
            .try_send(Message::Exchange(Box::new(finished)))
            .is_err()
        {
            self.metrics.telemetry_dropped("queue_full", spans);
        }
    }

    /// Exports what is queued (at shutdown); gives up after `timeout`.
    pub async fn flush(&self, timeout: std::time::Duration) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = tokio::time::timeout(timeout, async {
            self.queue.send(Message::Flush(tx)).await.ok()?;
            rx.await.ok()
        })
        .await;
        if !matches!(sent, Ok(Some(()))) {
            tracing::warn!("telemetry: queued spans not exported before shutdown");
        }
    }
}

impl Worker {
    /// Starts the export task on the current runtime.
    pub fn spawn(self) {
        tokio::spawn(export::run(self.rx, self.config, self.metrics, self.host));
    }
}

/// The `telemetry` pipeline module.
pub struct TelemetryModule {
    telemetry: Arc<Telemetry>,
    /// The policy whose detectors redact exported content.
    policy: Arc<crate::policy::PolicyHandle>,
}

impl TelemetryModule {
    pub fn new(telemetry: Arc<Telemetry>, policy: Arc<crate::policy::PolicyHandle>) -> Self {
        Self { telemetry, policy }
    }

    /// The exchange's content for export: with `content: redacted`, when
    /// capture keeps this exchange's content.
    fn content(&self, ex: &Exchange, record: &AuditRecord) -> Option<content::Content> {
        if !self.telemetry.content
            || record
                .content
                .as_ref()
                .is_none_or(|c| c.class == crate::record::CaptureClass::None)
        {
            return None;
        }
        let captured = ex.ext.get::<crate::capture::content::Captured>()?;
        // Past the queue's budget the span goes without its content.
        let held = content::Held::take(
            &self.telemetry.content_held,
            captured.request.len() + captured.response.len(),
        )?;
        Some(content::Content {
            held,
            kind: ex.provider.kind,
            stream: ex.stream,
            request: captured.request.clone(),
            response: captured.response.clone(),
            policy: self.policy.current(),
        })
    }
}

/// Whether a new trace is sampled at `ratio`: the trace id's low 8 bytes
/// against the ratio, as the SDK's `TraceIdRatioBased` sampler decides.
fn sampled(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a ratio in [0, 1) of 2^63 fits in u64"
    )]
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    (u64::from_be_bytes(low) >> 1) < bound
}

impl Module for TelemetryModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn request_filter<'a>(
        &'a self,
        ex: &'a mut Exchange,
        req: &'a mut ProxyRequest,
    ) -> Filtered<'a> {
        // A client's sampling decision is followed; a new trace is sampled
        // at the configured ratio.
        if let Some(t) = ex.trace.as_mut()
            && t.parent_id.is_none()
        {
            t.sampled = sampled(&t.trace_id, self.telemetry.sample_ratio);
        }
        ex.ext
            .insert(RequestParams::read(ex.provider.kind, &req.body));
        Filtered::from(Flow::Continue)
    }

    fn finished(&self, ex: &Exchange, record: &AuditRecord) {
        self.telemetry
            .offer(Finished::new(ex, record, self.content(ex, record)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_sampling_is_by_trace_id() {
        let mut id = [0u8; 16];
        assert!(sampled(&id, 0.5));
        assert!(!sampled(&id, 0.0));
        id[8] = 0xff;
        assert!(!sampled(&id, 0.5));
        assert!(sampled(&id, 1.0));
        let kept = (0u16..1000)
            .filter(|i| {
                let mut id = [0u8; 16];
                id[8..10].copy_from_slice(&(i.wrapping_mul(65)).to_be_bytes());
                sampled(&id, 0.25)
            })
            .count();
        assert!((200..300).contains(&kept), "{kept}");
    }
}
