//! The `telemetry` section.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::field::{FieldError, invalid, resolve};

/// How spans and metrics travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies (`/v1/traces`, `/v1/metrics` under
    /// the endpoint).
    HttpProtobuf,
    /// OTLP/gRPC.
    Grpc,
}

/// Header values for the collector (an API key, a tenant): never printed.
#[derive(Clone, Default)]
pub struct Headers(pub HashMap<String, String>);

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// `telemetry.otlp`, validated.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// `http(s)://host:port` (a path prefix allowed for HTTP).
    pub endpoint: String,
    pub protocol: Protocol,
    pub headers: Headers,
    /// Share of new traces exported, 0 to 1 (a client's own sampling
    /// decision is followed).
    pub sample_ratio: f64,
    pub service_name: String,
    /// Exchanges waiting for export; more are dropped (counted).
    pub queue_size: usize,
    /// Spans per export call.
    pub batch_size: usize,
    /// How long a span may wait for its batch to fill.
    pub flush_interval: Duration,
    /// How often metrics are exported.
    pub metrics_interval: Duration,
    /// One export call's limit.
    pub timeout: Duration,
    /// Export the exchange's messages (`gen_ai.input.messages`, …),
    /// redacted, for exchanges content capture keeps (`content: redacted`).
    pub content: bool,
    /// Emit only the latest experimental `GenAI` conventions (no v1.36
    /// names): `OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`.
    pub latest_semconv: bool,
}

/// The `telemetry` section, validated.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    pub otlp: Option<OtlpConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    otlp: Option<RawOtlp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOtlp {
    endpoint: String,
    protocol: Option<String>,
    headers_file: Option<PathBuf>,
    sample_ratio: Option<f64>,
    service_name: Option<String>,
    queue_size: Option<usize>,
    batch_size: Option<usize>,
    flush_interval: Option<String>,
    metrics_interval: Option<String>,
    timeout: Option<String>,
    content: Option<String>,
}

fn duration(field: &str, text: Option<&str>, default: Duration) -> Result<Duration, FieldError> {
    let Some(text) = text else {
        return Ok(default);
    };
    let d = humantime::parse_duration(text)
        .map_err(|e| invalid(field, format!("`{text}` is not a duration like 1s: {e}")))?;
    if d < Duration::from_millis(10) || d > Duration::from_hours(1) {
        return Err(invalid(field, "must be between 10ms and 1h"));
    }
    Ok(d)
}

/// `name: value` lines (`#` starts a comment), from a file only Leash's
/// user can read.
fn read_headers(field: &str, path: &std::path::Path) -> Result<Headers, FieldError> {
    let text = crate::credentials::read_private(path)
        .map_err(|reason| invalid(field, format!("{}: {reason}", path.display())))?;
    let mut headers = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            invalid(
                field,
                format!("{} line {}: not `name: value`", path.display(), n + 1),
            )
        };
        let (name, value) = line.split_once(':').ok_or_else(bad)?;
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            return Err(bad());
        }
        headers.insert(name, value.to_owned());
    }
    Ok(Headers(headers))
}

impl TelemetryConfig {
    pub fn validate(raw: RawTelemetry, base: &std::path::Path) -> Result<Self, FieldError> {
        let Some(raw) = raw.otlp else {
            return Ok(Self::default());
        };
        let protocol = match raw.protocol.as_deref() {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(invalid(
                    "telemetry.otlp.protocol",
                    format!("`{other}`: expected http/protobuf or grpc"),
                ));
            }
        };
        let uri: http::Uri = raw.endpoint.parse().map_err(|e| {
            invalid(
                "telemetry.otlp.endpoint",
                format!("`{}` is not a URL: {e}", raw.endpoint),
            )
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(invalid(
                "telemetry.otlp.endpoint",
                format!("`{}`: expected http(s)://host:port", raw.endpoint),
            ));
        }
        if uri.query().is_some() {
            return Err(invalid("telemetry.otlp.endpoint", "must not have a query"));
        }
        let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err(invalid(
                "telemetry.otlp.sample_ratio",
                "must be between 0 and 1",
            ));
        }
        let headers = match raw.headers_file {
            Some(f) => read_headers("telemetry.otlp.headers_file", &resolve(base, f))?,
            None => Headers::default(),
        };
        let content = match raw.content.as_deref() {
            None | Some("none") => false,
            Some("redacted") => true,
            Some(other) => {
                return Err(invalid(
                    "telemetry.otlp.content",
                    format!("`{other}`: expected none or redacted"),
                ));
            }
        };
        let service_name = raw.service_name.unwrap_or_else(|| "leash".to_owned());
        if service_name.trim().is_empty() {
            return Err(invalid("telemetry.otlp.service_name", "must not be empty"));
        }
        let count = |field: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(invalid(field, "must be positive")),
            Some(n) if n > 1_000_000 => Err(invalid(field, "must be at most 1000000")),
            v => Ok(v.unwrap_or(default)),
        };
        Ok(Self {
            otlp: Some(OtlpConfig {
                endpoint: raw.endpoint.trim_end_matches('/').to_owned(),
                protocol,
                headers,
                sample_ratio,
                service_name,
                queue_size: count("telemetry.otlp.queue_size", raw.queue_size, 8192)?,
                batch_size: count("telemetry.otlp.batch_size", raw.batch_size, 512)?,
                flush_interval: duration(
                    "telemetry.otlp.flush_interval",
                    raw.flush_interval.as_deref(),
                    Duration::from_secs(1),
                )?,
                metrics_interval: duration(
                    "telemetry.otlp.metrics_interval",
                    raw.metrics_interval.as_deref(),
                    Duration::from_secs(10),
                )?,
                timeout: duration(
                    "telemetry.otlp.timeout",
                    raw.timeout.as_deref(),
                    Duration::from_secs(10),
                )?,
                content,
                latest_semconv: std::env::var("OTEL_SEMCONV_STABILITY_OPT_IN").is_ok_and(|v| {
                    v.split(',')
                        .any(|s| s.trim() == "gen_ai_latest_experimental")
                }),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<TelemetryConfig, FieldError> {
        let raw: RawTelemetry =
            crate::field::from_yaml(yaml).map_err(|e| invalid("yaml", e.to_string()))?;
        TelemetryConfig::validate(raw, std::path::Path::new("/nonexistent"))
    }

    #[test]
    fn fields_are_checked_by_name() {
        let ok =
            parse("otlp: {endpoint: 'http://127.0.0.1:4318/'}").unwrap_or_else(|e| panic!("{e}"));
        let otlp = ok.otlp.unwrap_or_else(|| panic!("no otlp"));
        assert_eq!(otlp.endpoint, "http://127.0.0.1:4318");
        assert_eq!(otlp.protocol, Protocol::HttpProtobuf);
        for (yaml, field) in [
            ("otlp: {endpoint: 'ftp://x'}", "telemetry.otlp.endpoint"),
            (
                "otlp: {endpoint: 'http://x', protocol: udp}",
                "telemetry.otlp.protocol",
            ),
            (
                "otlp: {endpoint: 'http://x', sample_ratio: 2}",
                "telemetry.otlp.sample_ratio",
            ),
            (
                "otlp: {endpoint: 'http://x', queue_size: 0}",
                "telemetry.otlp.queue_size",
            ),
            (
                "otlp: {endpoint: 'http://x', timeout: 1ms}",
                "telemetry.otlp.timeout",
            ),
            (
                "otlp: {endpoint: 'http://x', headers_file: h}",
                "telemetry.otlp.headers_file",
            ),
        ] {
            let e = parse(yaml)
                .err()
                .unwrap_or_else(|| panic!("{yaml} accepted"));
            assert_eq!(e.field, field, "{yaml}");
        }
    }
}
