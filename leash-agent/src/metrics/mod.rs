//! Prometheus metrics: what every exchange adds up to, served on the admin
//! listener as text. Label values are bounded (unknown models past a cap
//! collapse to `other`).

mod labels;
mod series;

use std::sync::{Arc, OnceLock, atomic::AtomicU64};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub use self::labels::KindLabels;
use self::labels::{
    ActionLabels, BudgetLabels, ExeLabels, FindingLabels, HostLabels, Interned, Label, ModelLabels,
    ProviderLabels, ReasonLabels, RequestLabels, ResultLabels, RouteLabels, TokenLabels,
};
use crate::record::{AuditRecord, ErrorCode, ErrorSide};

/// Distinct model label values kept before new ones become `other`.
const MAX_MODELS: usize = 256;

const OVERHEAD_BUCKETS: [f64; 13] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_15, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1,
];
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

type HistogramFamily = Family<ProviderLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    overhead: HistogramFamily,
    ttfb: HistogramFamily,
    pub audit_records: Counter,
    pub audit_dropped: Counter,
    pub audit_write_errors: Counter,
    pub audit_overflowed: Counter,
    /// Exchanges whose content was stored (`capture:`).
    pub capture_stored: Counter,
    capture_dropped: Family<ReasonLabels, Counter>,
    /// Spans not exported over OTLP, by reason (`queue_full`,
    /// `export_failed`).
    telemetry_dropped: Family<ReasonLabels, Counter>,
    /// Spans exported over OTLP.
    pub telemetry_exported: Counter,
    /// Content files removed by retention.
    pub capture_removed: Counter,
    /// Bytes of captured content on disk.
    pub capture_bytes: Gauge,
    /// Segments past retention kept because they are not shipped yet.
    pub audit_retention_held: Counter,
    pub audit_last_seq: Gauge,
    /// The last audit record synced to disk (`fdatasync`): what a machine
    /// crash cannot take back. Shipping goes no further.
    pub audit_synced_seq: Gauge,
    pub ship_lag: Gauge,
    pub ship_published: Counter,
    ship_errors: Family<KindLabels, Counter>,
    pub ship_last_ack: Gauge<f64, AtomicU64>,
    intercepted: Family<ActionLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    route_attempts: Family<RouteLabels, Counter>,
    /// Provider addresses that could not be added: the target map is full.
    pub targets_full: Counter,
    pub cert_mints: Counter,
    shadow_ai: Family<HostLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<ModelLabels, Counter<f64, AtomicU64>>,
    unpriced: Family<ModelLabels, Counter>,
    budget_remaining: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
    budget_limit: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
    /// 1 while the transparent agent's kernel hooks are attached.
    pub hooks_attached: Gauge,
    policy_reloads: Family<ResultLabels, Counter>,
    findings: Family<FindingLabels, Counter>,
    models: Interned,
    teams: Interned,
    rules: Interned,
    /// Provider names and status codes: bounded by where they come from
    /// (the configuration, HTTP), interned so a request allocates neither.
    providers: Interned,
    statuses: Interned,
    shadow_hosts: Interned,
    untrusted: Family<ExeLabels, Counter>,
    untrusted_exes: Interned,
    /// Each kind of exchange's series, once resolved.
    kept: series::Kept,
}

fn provider_labels(labels: &RequestLabels) -> ProviderLabels {
    ProviderLabels {
        provider: Arc::clone(&labels.provider),
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn overhead_histogram() -> Histogram {
    Histogram::new(OVERHEAD_BUCKETS)
}

/// Registers `metric` under `name` and returns it.
fn register<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[allow(
        clippy::too_many_lines,
        reason = "one registration per metric: the list reads best in one place"
    )]
    pub fn new() -> Self {
        let mut r = Registry::default();
        let policy_reloads = register(
            &mut r,
            "leash_policy_reloads",
            "Policy reloads (file change or SIGHUP), by result (ok, error: the old policy stays)",
            Family::<ResultLabels, Counter>::default(),
        );
        let findings = register(
            &mut r,
            "leash_policy_findings",
            "Detector matches that a policy rule acted on, by rule, detector and action",
            Family::<FindingLabels, Counter>::default(),
        );
        let budget_remaining = register(
            &mut r,
            "leash_budget_remaining_usd",
            "What is left of each budget this period, in USD (negative: overspent by calls in flight)",
            Family::<BudgetLabels, Gauge<f64, AtomicU64>>::default(),
        );
        let budget_limit = register(
            &mut r,
            "leash_budget_limit_usd",
            "Each budget's limit for its period, in USD",
            Family::<BudgetLabels, Gauge<f64, AtomicU64>>::default(),
        );
        let hooks_attached = register(
            &mut r,
            "leash_intercept_hooks_attached",
            "1 while the transparent agent's kernel hooks are attached (leash run), 0 once they are detached",
            Gauge::default(),
        );
        let tokens = register(
            &mut r,
            "leash_tokens",
            "Tokens as providers reported them, by kind (input, output, cached, reasoning, cache_creation)",
            Family::<TokenLabels, Counter>::default(),
        );
        let cost = register(
            &mut r,
            "leash_cost_usd",
            "Cost of calls at the configured prices, in USD",
            Family::<ModelLabels, Counter<f64, AtomicU64>>::default(),
        );
        let unpriced = register(
            &mut r,
            "leash_unpriced_requests",
            "Calls with usage but no price for their model (cost_usd null)",
            Family::<ModelLabels, Counter>::default(),
        );
        let shadow_ai = register(
            &mut r,
            "leash_shadow_ai_connections",
            "Connections to LLM endpoints that are not intercepted (scope: all-tls), by host",
            Family::<HostLabels, Counter>::default(),
        );
        let intercepted = register(
            &mut r,
            "leash_intercepted_connections",
            "Connections redirected to the transparent proxy, by what was done (terminated, spliced, unknown)",
            Family::<ActionLabels, Counter>::default(),
        );
        let refused = register(
            &mut r,
            "leash_refused_connections",
            "Connections the transparent agent refused, by reason (no_record, stale_record, not_tls, bad_hello, no_sni, unknown_host, plain_http, provider_in_tunnel, quic, other_namespace)",
            Family::<ReasonLabels, Counter>::default(),
        );
        let route_attempts = register(
            &mut r,
            "leash_route_attempts",
            "Attempts of routed unified-API requests, by route, target (provider/model) and outcome (success, client_error, failure, skipped: circuit breaker open, untranslatable)",
            Family::<RouteLabels, Counter>::default(),
        );
        let untrusted = register(
            &mut r,
            "leash_untrusted_clients",
            "TLS handshakes a client broke off because it does not trust the organisation CA, by executable",
            Family::<ExeLabels, Counter>::default(),
        );
        let targets_full = register(
            &mut r,
            "leash_intercept_targets_full",
            "Provider addresses that could not be intercepted because the kernel target map is full",
            Counter::default(),
        );
        let cert_mints = register(
            &mut r,
            "leash_cert_mints",
            "Leaf certificates minted from the organisation CA",
            Counter::default(),
        );
        let requests = register(
            &mut r,
            "leash_requests",
            "Requests handled, by provider, model, team, action (allow, block, error) and response status",
            Family::<RequestLabels, Counter>::default(),
        );
        let duration: HistogramFamily = register(
            &mut r,
            "leash_request_duration_seconds",
            "Time from request received to response fully delivered",
            Family::new_with_constructor(duration_histogram),
        );
        let overhead: HistogramFamily = register(
            &mut r,
            "leash_overhead_seconds",
            "Time spent in Leash itself, excluding waiting for the upstream",
            Family::new_with_constructor(overhead_histogram),
        );
        let ttfb: HistogramFamily = register(
            &mut r,
            "leash_ttfb_seconds",
            "Time from request received to the first response body byte",
            Family::new_with_constructor(duration_histogram),
        );
        let audit_records = register(
            &mut r,
            "leash_audit_records",
            "Audit records written to disk",
            Counter::default(),
        );
        let audit_dropped = register(
            &mut r,
            "leash_audit_dropped",
            "Audit records lost because the queue was full or the writer stopped",
            Counter::default(),
        );
        let audit_write_errors = register(
            &mut r,
            "leash_audit_write_errors",
            "Audit writes or flushes that failed",
            Counter::default(),
        );
        let audit_overflowed = register(
            &mut r,
            "leash_audit_overflowed",
            "Audit records that found the queue full and waited in the overflow relay (overflow: block)",
            Counter::default(),
        );
        let capture_stored = register(
            &mut r,
            "leash_capture_stored",
            "Exchanges whose content was stored (capture)",
            Counter::default(),
        );
        let capture_dropped = register(
            &mut r,
            "leash_capture_dropped",
            "Captured content not stored, by reason (quota, queue, write_error)",
            Family::default(),
        );
        let telemetry_dropped: Family<ReasonLabels, Counter> = register(
            &mut r,
            "leash_telemetry_dropped",
            "Spans not exported over OTLP, by reason (queue_full, export_failed)",
            Family::default(),
        );
        for reason in ["queue_full", "export_failed"] {
            drop(telemetry_dropped.get_or_create(&ReasonLabels { reason }));
        }
        let telemetry_exported = register(
            &mut r,
            "leash_telemetry_exported",
            "Spans exported over OTLP",
            Counter::default(),
        );
        let capture_removed = register(
            &mut r,
            "leash_capture_removed",
            "Captured content files removed by retention",
            Counter::default(),
        );
        let capture_bytes = register(
            &mut r,
            "leash_capture_bytes",
            "Bytes of captured content on disk",
            Gauge::default(),
        );
        let audit_retention_held = register(
            &mut r,
            "leash_audit_retention_held",
            "Audit segments past retention that were kept because they are not shipped yet",
            Counter::default(),
        );
        let audit_last_seq = register(
            &mut r,
            "leash_audit_last_seq",
            "Sequence number of the last audit record written to its file",
            Gauge::default(),
        );
        let audit_synced_seq = register(
            &mut r,
            "leash_audit_synced_seq",
            "Sequence number of the last audit record synced to disk (fdatasync)",
            Gauge::default(),
        );
        let ship_lag = register(
            &mut r,
            "leash_ship_lag_records",
            "Audit records written locally and not yet acknowledged by JetStream",
            Gauge::default(),
        );
        let ship_published = register(
            &mut r,
            "leash_ship_published",
            "Audit records acknowledged by JetStream",
            Counter::default(),
        );
        let ship_errors = register(
            &mut r,
            "leash_ship_errors",
            "Shipping failures, by kind (connect, stream, publish, ack, cursor, spool)",
            Family::<KindLabels, Counter>::default(),
        );
        let ship_last_ack = register(
            &mut r,
            "leash_ship_last_ack_timestamp_seconds",
            "Unix time of the last JetStream acknowledgement",
            Gauge::<f64, AtomicU64>::default(),
        );
        Self {
            registry: r,
            audit_retention_held,
            audit_last_seq,
            audit_synced_seq,
            ship_lag,
            ship_published,
            ship_errors,
            ship_last_ack,
            requests,
            duration,
            overhead,
            ttfb,
            audit_records,
            audit_dropped,
            audit_write_errors,
            audit_overflowed,
            capture_stored,
            capture_dropped,
            telemetry_dropped,
            telemetry_exported,
            capture_removed,
            capture_bytes,
            intercepted,
            refused,
            route_attempts,
            targets_full,
            cert_mints,
            shadow_ai,
            tokens,
            cost,
            unpriced,
            budget_remaining,
            budget_limit,
            hooks_attached,
            policy_reloads,
            findings,
            models: Interned::new(MAX_MODELS),
            teams: Interned::new(MAX_MODELS),
            rules: Interned::new(MAX_MODELS),
            providers: Interned::new(usize::MAX),
            statuses: Interned::new(usize::MAX),
            shadow_hosts: Interned::new(MAX_MODELS),
            untrusted,
            untrusted_exes: Interned::new(MAX_MODELS),
            kept: series::Kept::default(),
        }
    }

    fn model_label(&self, model: Option<&str>) -> Label {
        model.map_or_else(|| labels::fixed(&labels::UNKNOWN), |m| self.models.label(m))
    }

    /// Counts a shipping failure.
    pub fn ship_error(&self, kind: &'static str) {
        self.ship_errors.get_or_create(&KindLabels { kind }).inc();
    }

    /// Counts a policy reload.
    pub fn policy_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.policy_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Sets what is left of a budget, and its limit.
    pub fn budget_remaining(&self, budget: &str, limit: f64, usd: f64) {
        let labels = BudgetLabels {
            budget: budget.to_owned(),
        };
        self.budget_remaining.get_or_create(&labels).set(usd);
        self.budget_limit.get_or_create(&labels).set(limit);
    }

    /// Counts a connection to an unlisted LLM endpoint.
    pub fn shadow_ai(&self, host: &str) {
        let host = self.shadow_hosts.label(host);
        self.shadow_ai.get_or_create(&HostLabels { host }).inc();
    }

    /// Counts a client that rejected the organisation CA's leaf.
    pub fn untrusted_client(&self, exe: &str) {
        let exe = self.untrusted_exes.label(exe);
        self.untrusted.get_or_create(&ExeLabels { exe }).inc();
    }

    /// Counts `n` connections refused for `reason`.
    /// Counts an attempt of a route's request at `target` by its outcome
    /// (route and target names come from the config: bounded).
    pub fn route_attempt(&self, route: &str, target: &str, outcome: &'static str) {
        self.route_attempts
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                target: target.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts captured content that was not stored, by reason.
    pub fn capture_dropped(&self, reason: &'static str) {
        self.capture_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts spans that were not exported, by reason.
    pub fn telemetry_dropped(&self, reason: &'static str, spans: u64) {
        self.telemetry_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(spans);
    }

    /// Counts exported spans.
    pub fn telemetry_exported(&self, spans: u64) {
        self.telemetry_exported.inc_by(spans);
    }

    pub fn refused(&self, reason: &'static str, n: u64) {
        self.refused
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n);
    }

    /// Counts a redirected connection by what the proxy did with it.
    pub fn intercepted(&self, action: &'static str) {
        self.intercepted
            .get_or_create(&ActionLabels { action })
            .inc();
    }

    /// Redirected connections so far, by what the proxy did with them.
    pub fn intercepted_counts(&self) -> [(&'static str, u64); 3] {
        ["terminated", "spliced", "unknown"].map(|action| {
            (
                action,
                self.intercepted
                    .get_or_create(&ActionLabels { action })
                    .get(),
            )
        })
    }

    /// Adds one finished exchange.
    pub fn observe(&self, record: &AuditRecord) {
        let action = match record.error.map(ErrorCode::side) {
            Some(ErrorSide::Decision) => "block",
            Some(_) => "error",
            None => "allow",
        };
        let labels = RequestLabels {
            provider: self.providers.label(&record.provider),
            model: self.model_label(record.model.as_deref()),
            team: record
                .caller
                .team
                .as_deref()
                .map_or_else(|| labels::fixed(&labels::NONE), |t| self.teams.label(t)),
            action,
            status: match record
                .status
                .and_then(|c| http::StatusCode::from_u16(c).ok())
            {
                Some(code) => self.statuses.label(code.as_str()),
                None => labels::fixed(&labels::NONE),
            },
        };
        let series = self.kept.get(labels, |labels| self.series(labels));
        let l = &series.labels;
        if let Some(usage) = &record.usage {
            let counts = [
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_tokens,
                usage.reasoning_tokens,
                usage.cache_creation_tokens,
            ];
            for ((kind, n), counter) in series::TOKEN_KINDS
                .into_iter()
                .zip(counts)
                .zip(&series.tokens)
                .filter(|((_, n), _)| *n > 0)
            {
                counter
                    .get_or_init(|| {
                        self.tokens
                            .get_or_create(&TokenLabels {
                                provider: Arc::clone(&l.provider),
                                model: Arc::clone(&l.model),
                                team: Arc::clone(&l.team),
                                kind,
                            })
                            .clone()
                    })
                    .inc_by(n);
            }
            let model_labels = || ModelLabels {
                provider: Arc::clone(&l.provider),
                model: Arc::clone(&l.model),
                team: Arc::clone(&l.team),
            };
            match record.cost_usd {
                Some(cost) => {
                    series
                        .cost
                        .get_or_init(|| self.cost.get_or_create(&model_labels()).clone())
                        .inc_by(cost);
                }
                None => {
                    series
                        .unpriced
                        .get_or_init(|| self.unpriced.get_or_create(&model_labels()).clone())
                        .inc();
                }
            }
        }
        if let Some(policy) = &record.policy {
            for f in &policy.findings {
                let labels = FindingLabels {
                    rule: self.rules.label(&f.rule),
                    detector: f.detector.clone(),
                    action: policy.action.as_str(),
                };
                self.findings.get_or_create(&labels).inc_by(f.count as u64);
            }
        }
        series.requests.inc();
        series.duration.observe(record.latency_ms / 1e3);
        series.overhead.observe(record.overhead_ms / 1e3);
        if let Some(ttfb) = record.ttfb_ms {
            series
                .ttfb
                .get_or_init(|| self.ttfb.get_or_create(&provider_labels(l)).clone())
                .observe(ttfb / 1e3);
        }
    }

    /// The series of one kind of exchange, from the families: those every
    /// exchange adds to made now, the others when one first does.
    fn series(&self, labels: RequestLabels) -> series::Series {
        let requests = self.requests.get_or_create(&labels).clone();
        let provider = provider_labels(&labels);
        let duration = self.duration.get_or_create(&provider).clone();
        let overhead = self.overhead.get_or_create(&provider).clone();
        series::Series {
            labels,
            requests,
            duration,
            overhead,
            ttfb: OnceLock::new(),
            tokens: Default::default(),
            cost: OnceLock::new(),
            unpriced: OnceLock::new(),
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Caller, Event, Usage};

    fn exchange(model: &str, team: Option<&str>, status: u16) -> AuditRecord {
        let mut r = AuditRecord::event(Event::Refused, &Arc::from("test"), Caller::default());
        r.event = None;
        r.provider = "openai".to_owned();
        r.model = Some(model.to_owned());
        r.caller.team = team.map(str::to_owned);
        r.status = Some(status);
        r.latency_ms = 2.0;
        r.overhead_ms = 0.1;
        r
    }

    /// The exposition's lines that start with `prefix`.
    fn lines(m: &Metrics, prefix: &str) -> Vec<String> {
        m.encode()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn each_kind_of_exchange_counts_into_its_own_series_and_no_other() {
        let m = Metrics::new();
        let mut priced = exchange("gpt-4o", None, 200);
        priced.usage = Some(Usage {
            input_tokens: 9,
            output_tokens: 12,
            ..Usage::default()
        });
        priced.cost_usd = Some(0.25);
        priced.ttfb_ms = Some(1.0);
        m.observe(&priced);
        m.observe(&priced);
        let mut failed = exchange("gpt-4o", None, 500);
        failed.error = Some(ErrorCode::PolicyBlocked);
        m.observe(&failed);
        // Differs from the first only by its status.
        m.observe(&exchange("gpt-4o", None, 404));
        let mut unpriced = exchange("m2", Some("red"), 200);
        unpriced.usage = Some(Usage {
            output_tokens: 3,
            ..Usage::default()
        });
        m.observe(&unpriced);

        let requests = lines(&m, "leash_requests_total");
        assert_eq!(requests.len(), 4, "{requests:#?}");
        for want in [
            r#"model="gpt-4o",team="none",action="allow",status="200"} 2"#,
            r#"model="gpt-4o",team="none",action="allow",status="404"} 1"#,
            r#"model="gpt-4o",team="none",action="block",status="500"} 1"#,
            r#"model="m2",team="red",action="allow",status="200"} 1"#,
        ] {
            assert!(
                requests.iter().any(|l| l.ends_with(want)),
                "{want}: {requests:#?}"
            );
        }
        // Only the token kinds counted, each in its exchange's series.
        let tokens = lines(&m, "leash_tokens_total");
        assert_eq!(tokens.len(), 3, "{tokens:#?}");
        for want in [
            r#"model="gpt-4o",team="none",kind="input"} 18"#,
            r#"model="gpt-4o",team="none",kind="output"} 24"#,
            r#"model="m2",team="red",kind="output"} 3"#,
        ] {
            assert!(
                tokens.iter().any(|l| l.ends_with(want)),
                "{want}: {tokens:#?}"
            );
        }
        let cost = lines(&m, "leash_cost_usd_total");
        assert_eq!(cost.len(), 1, "{cost:#?}");
        assert!(
            cost[0].ends_with(r#"model="gpt-4o",team="none"} 0.5"#),
            "{cost:#?}"
        );
        let unpriced = lines(&m, "leash_unpriced_requests_total");
        assert_eq!(unpriced.len(), 1, "{unpriced:#?}");
        assert!(
            unpriced[0].ends_with(r#"model="m2",team="red"} 1"#),
            "{unpriced:#?}"
        );
        assert_eq!(
            lines(&m, "leash_ttfb_seconds_count"),
            [r#"leash_ttfb_seconds_count{provider="openai"} 2"#]
        );
        assert_eq!(
            lines(&m, "leash_request_duration_seconds_count"),
            [r#"leash_request_duration_seconds_count{provider="openai"} 5"#]
        );

        // An exchange with no tokens, cost or first byte adds no such series.
        let bare = Metrics::new();
        bare.observe(&failed);
        assert_eq!(lines(&bare, "leash_requests_total").len(), 1);
        for none in [
            "leash_ttfb_seconds_count",
            "leash_tokens_total",
            "leash_cost_usd_total",
            "leash_unpriced_requests_total",
        ] {
            assert_eq!(lines(&bare, none), Vec::<String>::new(), "{none}");
        }
    }

    #[test]
    fn exchanges_past_the_kept_kinds_still_count() {
        let m = Metrics::new();
        // More kinds than are kept: every model (then `other`) by team.
        let kinds = series::MAX_KEPT + 100;
        for i in 0..kinds {
            let model = format!("m{}", i % 200);
            let team = format!("t{}", i / 200);
            m.observe(&exchange(&model, Some(&team), 200));
        }
        // Kind 4100 (m100 of team t20) came after the kept ones filled up.
        let late = exchange("m100", Some("t20"), 200);
        m.observe(&late);
        m.observe(&late);
        let requests = lines(&m, "leash_requests_total");
        assert_eq!(requests.len(), kinds, "one series per kind");
        assert!(
            requests
                .iter()
                .any(|l| l.ends_with(r#"model="m100",team="t20",action="allow",status="200"} 3"#)),
            "{:?}",
            requests
                .iter()
                .find(|l| l.contains(r#"model="m100",team="t20""#))
        );
        assert_eq!(
            lines(&m, "leash_request_duration_seconds_count"),
            [format!(
                r#"leash_request_duration_seconds_count{{provider="openai"}} {}"#,
                kinds + 2
            )]
        );
    }
}
