//! The export task: finished exchanges from the queue become spans (sent
//! in batches by `opentelemetry-otlp`'s span exporter) and metric points
//! (recorded on the SDK's instruments, pushed by its periodic reader).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use opentelemetry::{
    InstrumentationScope, KeyValue,
    metrics::{Counter, Histogram, MeterProvider as _},
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    metrics::{SdkMeterProvider, periodic_reader_with_async_runtime::PeriodicReader},
    trace::{SpanData, SpanExporter as _},
};
use tokio::sync::mpsc;

use super::{Message, OtlpConfig, Protocol, span::Finished};
use crate::metrics::Metrics;

/// Largest collector answer read.
const MAX_ANSWER: usize = 1024 * 1024;

/// OTLP/HTTP over Leash's own hyper and rustls stack (verified TLS with
/// the system and webpki roots).
struct HttpTransport {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpTransport")
    }
}

impl HttpTransport {
    fn new(timeout: Duration) -> Result<Self, String> {
        let roots = crate::upstream::root_store(&[]).map_err(|e| e.to_string())?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpTransport {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let call = async {
            let (parts, body) = request.into_parts();
            let response = self
                .client
                .request(http::Request::from_parts(parts, Full::new(body)))
                .await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| "the collector did not answer in time")?
    }
}

type BuildError = Box<dyn std::error::Error + Send + Sync>;

fn metadata(
    config: &OtlpConfig,
) -> Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap, BuildError> {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &config.headers.0 {
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes())?,
            http::HeaderValue::from_str(value)?,
        );
    }
    Ok(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers))
}

fn tls(config: &OtlpConfig) -> Option<opentelemetry_otlp::tonic_types::transport::ClientTlsConfig> {
    config.endpoint.starts_with("https:").then(|| {
        opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new().with_webpki_roots()
    })
}

/// The span and metric exporters `config` asks for.
fn exporters(
    config: &OtlpConfig,
) -> Result<
    (
        opentelemetry_otlp::SpanExporter,
        opentelemetry_otlp::MetricExporter,
    ),
    BuildError,
> {
    Ok(match config.protocol {
        Protocol::HttpProtobuf => {
            let transport = Arc::new(HttpTransport::new(config.timeout)?);
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(format!("{}/v1/traces", config.endpoint))
                .with_timeout(config.timeout)
                .with_headers(config.headers.0.clone())
                .with_shared_http_client(Arc::clone(&transport) as _)
                .build()?;
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(format!("{}/v1/metrics", config.endpoint))
                .with_timeout(config.timeout)
                .with_headers(config.headers.0.clone())
                .with_shared_http_client(transport)
                .build()?;
            (spans, metrics)
        }
        Protocol::Grpc => {
            let mut spans = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.timeout)
                .with_metadata(metadata(config)?);
            let mut metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.timeout)
                .with_metadata(metadata(config)?);
            if let Some(tls) = tls(config) {
                spans = spans.with_tls_config(tls.clone());
                metrics = metrics.with_tls_config(tls);
            }
            (spans.build()?, metrics.build()?)
        }
    })
}

/// The metric instruments: the `GenAI` client metrics and Leash's own.
struct Instruments {
    tokens: Histogram<u64>,
    duration: Histogram<f64>,
    first_chunk: Histogram<f64>,
    overhead: Histogram<f64>,
    requests: Counter<u64>,
    cost: Counter<f64>,
}

impl Instruments {
    fn new(provider: &SdkMeterProvider, scope: InstrumentationScope) -> Self {
        let meter = provider.meter_with_scope(scope);
        // The bucket boundaries the conventions advise.
        let seconds = vec![
            0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
        ];
        Self {
            tokens: meter
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Number of input and output tokens used")
                .with_boundaries(vec![
                    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262_144.0,
                    1_048_576.0, 4_194_304.0, 16_777_216.0, 67_108_864.0,
                ])
                .build(),
            duration: meter
                .f64_histogram("gen_ai.client.operation.duration")
                .with_unit("s")
                .with_description("GenAI operation duration")
                .with_boundaries(seconds.clone())
                .build(),
            first_chunk: meter
                .f64_histogram("gen_ai.client.operation.time_to_first_chunk")
                .with_unit("s")
                .with_description("Time to receive the first chunk of a streamed answer")
                .with_boundaries(seconds)
                .build(),
            overhead: meter
                .f64_histogram("leash.overhead")
                .with_unit("s")
                .with_description("Time spent in Leash (before the provider and between its answer and the client)")
                .with_boundaries(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1])
                .build(),
            requests: meter
                .u64_counter("leash.requests")
                .with_unit("{request}")
                .with_description("Exchanges, by provider, status class and policy action")
                .build(),
            cost: meter
                .f64_counter("leash.cost")
                .with_unit("USD")
                .with_description("Cost of the exchanges from the price table")
                .build(),
        }
    }

    /// Records `f` with `attrs` ([`Finished::common_attributes`]).
    fn record(&self, f: &Finished, attrs: &[KeyValue]) {
        let (total, first) = f.durations();
        self.duration.record(total, attrs);
        if let Some(first) = first {
            self.first_chunk.record(first, attrs);
        }
        let r = &f.record;
        if let Some(u) = r.usage {
            for (kind, n) in [("input", u.input_tokens), ("output", u.output_tokens)] {
                let mut a = attrs.to_vec();
                a.push(KeyValue::new("gen_ai.token.type", kind));
                self.tokens.record(n, &a);
            }
        }
        let mut leash = vec![
            KeyValue::new("gen_ai.provider.name", f.provider_name()),
            KeyValue::new("leash.mode", r.mode.as_str()),
            KeyValue::new(
                "leash.status_class",
                r.status
                    .map_or_else(|| "none".to_owned(), |s| format!("{}xx", s / 100)),
            ),
            KeyValue::new(
                "leash.policy.action",
                r.policy.as_ref().map_or("allow", |p| p.action.as_str()),
            ),
        ];
        if let Some(team) = &r.caller.team {
            leash.push(KeyValue::new("leash.team", team.clone()));
        }
        self.requests.add(1, &leash);
        self.overhead.record(r.overhead_ms / 1e3, &leash);
        if let Some(cost) = r.cost_usd {
            self.cost.add(cost, &leash);
        }
    }
}

/// Counts a failed export's spans; logs at most once a minute.
struct Failures {
    metrics: Arc<Metrics>,
    last_log: Option<tokio::time::Instant>,
}

impl Failures {
    fn failed(&mut self, spans: usize, error: &dyn std::fmt::Display) {
        self.metrics
            .telemetry_dropped("export_failed", spans as u64);
        if self
            .last_log
            .is_none_or(|t| t.elapsed() > Duration::from_mins(1))
        {
            self.last_log = Some(tokio::time::Instant::now());
            tracing::warn!(spans, error = %error, "telemetry: spans not exported (dropped, counted in leash_telemetry_dropped_total)");
        }
    }
}

/// Runs until every sender is gone: batches spans, records metrics.
pub(super) async fn run(
    mut rx: mpsc::Receiver<Message>,
    config: OtlpConfig,
    metrics: Arc<Metrics>,
    host: Arc<str>,
) {
    let mut failures = Failures {
        metrics: Arc::clone(&metrics),
        last_log: None,
    };
    let (mut spans, metric_exporter) = match exporters(&config) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, endpoint = %config.endpoint, "telemetry: cannot build the OTLP exporter; nothing will be exported");
            while let Some(m) = rx.recv().await {
                match m {
                    Message::Exchange(f) => {
                        failures.failed(usize::try_from(f.span_count()).unwrap_or(0), &e);
                    }
                    Message::Flush(tx) => drop(tx.send(())),
                }
            }
            return;
        }
    };
    let resource = Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("host.name", host.to_string()),
        ])
        .build();
    spans.set_resource(&resource);
    let reader = PeriodicReader::builder(metric_exporter, opentelemetry_sdk::runtime::Tokio)
        .with_interval(config.metrics_interval)
        .build();
    let provider = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(reader)
        .build();
    let scope = InstrumentationScope::builder("leash")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let instruments = Instruments::new(&provider, scope.clone());
    // Redacts exported content when no policy is loaded.
    let builtin = crate::policy::detect::Detectors::new(&[])
        .unwrap_or_else(|_| unreachable!("the built-in detectors compile"));
    let latest = config.latest_semconv;
    let mut batch: Vec<SpanData> = Vec::with_capacity(config.batch_size);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let message = match deadline {
            Some(at) => tokio::select! {
                m = rx.recv() => m,
                () = tokio::time::sleep_until(at) => {
                    deadline = None;
                    export(&spans, &mut batch, &mut failures, &metrics).await;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        match message {
            Some(Message::Exchange(f)) => {
                let common = f.common_attributes(latest);
                instruments.record(&f, &common);
                batch.extend(f.spans(&scope, common, &builtin));
                if batch.len() >= config.batch_size {
                    deadline = None;
                    export(&spans, &mut batch, &mut failures, &metrics).await;
                } else if deadline.is_none() && !batch.is_empty() {
                    deadline = Some(tokio::time::Instant::now() + config.flush_interval);
                }
            }
            Some(Message::Flush(done)) => {
                deadline = None;
                export(&spans, &mut batch, &mut failures, &metrics).await;
                // The reader blocks its caller until its own task ran.
                let p = provider.clone();
                let _ = tokio::task::spawn_blocking(move || p.force_flush()).await;
                let _ = done.send(());
            }
            None => break,
        }
    }
    export(&spans, &mut batch, &mut failures, &metrics).await;
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
}

async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: &mut Vec<SpanData>,
    failures: &mut Failures,
    metrics: &Metrics,
) {
    if batch.is_empty() {
        return;
    }
    let spans = std::mem::take(batch);
    let n = spans.len();
    match exporter.export(spans).await {
        Ok(()) => metrics.telemetry_exported(n as u64),
        Err(e) => failures.failed(n, &e),
    }
}
