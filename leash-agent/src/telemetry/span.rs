//! A finished exchange as the `GenAI` semantic conventions describe it: the
//! span (kind CLIENT, as the app calls the provider through Leash), its
//! phases as child spans, and the attributes metrics share.
//!
//! Attributes hold what the audit record holds — names, counts, ids, never
//! content, keys or header values.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use opentelemetry::{
    Array, InstrumentationScope, KeyValue, StringValue, Value,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use serde::Deserialize;

use crate::{
    pipeline::{Exchange, usage::ResponseMeta},
    provider::ProviderKind,
    record::AuditRecord,
    trace::TraceContext,
};

/// Generation parameters the request set (`gen_ai.request.*`). Stop
/// sequences are text the client wrote: like all content, not exported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestParams {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<f64>,
    pub max_tokens: Option<i64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub choice_count: Option<i64>,
}

/// The parameters' fields as any of the three APIs name them; values of
/// an unexpected type are ignored, never an error.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Peek {
    temperature: Option<serde_json::Value>,
    top_p: Option<serde_json::Value>,
    top_k: Option<serde_json::Value>,
    max_tokens: Option<serde_json::Value>,
    max_completion_tokens: Option<serde_json::Value>,
    max_output_tokens: Option<serde_json::Value>,
    frequency_penalty: Option<serde_json::Value>,
    presence_penalty: Option<serde_json::Value>,
    seed: Option<serde_json::Value>,
    n: Option<serde_json::Value>,
    #[serde(rename = "generationConfig")]
    generation_config: Option<serde_json::Value>,
}

impl RequestParams {
    /// Reads the parameters from a request body of `kind`.
    pub fn read(kind: ProviderKind, body: &[u8]) -> Self {
        let Ok(p) = serde_json::from_slice::<Peek>(body) else {
            return Self::default();
        };
        let f = |v: &Option<serde_json::Value>| v.as_ref().and_then(serde_json::Value::as_f64);
        let i = |v: &Option<serde_json::Value>| v.as_ref().and_then(serde_json::Value::as_i64);
        if kind == ProviderKind::Google {
            let g = p.generation_config.unwrap_or_default();
            let gf = |k: &str| g.get(k).and_then(serde_json::Value::as_f64);
            let gi = |k: &str| g.get(k).and_then(serde_json::Value::as_i64);
            return Self {
                temperature: gf("temperature"),
                top_p: gf("topP"),
                top_k: gf("topK"),
                max_tokens: gi("maxOutputTokens"),
                frequency_penalty: gf("frequencyPenalty"),
                presence_penalty: gf("presencePenalty"),
                seed: gi("seed"),
                choice_count: gi("candidateCount"),
            };
        }
        Self {
            temperature: f(&p.temperature),
            top_p: f(&p.top_p),
            top_k: f(&p.top_k),
            max_tokens: i(&p.max_tokens)
                .or_else(|| i(&p.max_completion_tokens))
                .or_else(|| i(&p.max_output_tokens)),
            frequency_penalty: f(&p.frequency_penalty),
            presence_penalty: f(&p.presence_penalty),
            seed: i(&p.seed),
            choice_count: i(&p.n),
        }
    }
}

/// A string array attribute; none when empty.
fn strings(v: &[String]) -> Option<Value> {
    (!v.is_empty()).then(|| {
        Value::Array(Array::String(
            v.iter().map(|s| StringValue::from(s.clone())).collect(),
        ))
    })
}

fn int(n: u64) -> Value {
    Value::I64(i64::try_from(n).unwrap_or(i64::MAX))
}

/// When each phase ended, from the exchange's start.
#[derive(Debug, Clone, Copy)]
struct Phases {
    /// The request phases (policy and the other modules) ended: the
    /// request went upstream.
    request: Option<Duration>,
    /// The provider's answer head arrived.
    upstream: Option<Duration>,
    end: Duration,
}

/// One finished exchange, as the export task receives it.
#[derive(Debug)]
pub struct Finished {
    pub(super) record: AuditRecord,
    trace: Option<TraceContext>,
    kind: ProviderKind,
    server: (String, u16),
    start: SystemTime,
    phases: Phases,
    params: RequestParams,
    response: ResponseMeta,
    content: Option<super::content::Content>,
}

impl Finished {
    pub fn new(
        ex: &Exchange,
        record: &AuditRecord,
        content: Option<super::content::Content>,
    ) -> Self {
        let t = &ex.timing;
        let since = |i: Option<std::time::Instant>| i.map(|i| i.duration_since(t.received));
        Self {
            record: record.clone(),
            trace: ex.trace,
            kind: ex.provider.kind,
            server: (
                ex.provider.upstream.host().to_owned(),
                ex.provider.upstream.port(),
            ),
            start: ex.ts,
            phases: Phases {
                request: since(t.upstream_sent),
                upstream: since(t.upstream_headers),
                end: t.received.elapsed(),
            },
            params: ex.ext.get::<RequestParams>().cloned().unwrap_or_default(),
            response: crate::pipeline::usage::response_meta(ex)
                .cloned()
                .unwrap_or_default(),
            content,
        }
    }

    fn sampled(&self) -> bool {
        self.trace.is_some_and(|t| t.sampled)
    }

    /// Spans this exchange exports (0 when its trace is not sampled).
    pub fn span_count(&self) -> u64 {
        if !self.sampled() {
            return 0;
        }
        1 + u64::from(self.phases.request.is_some()) + u64::from(self.phases.upstream.is_some())
    }

    /// `gen_ai.operation.name`, from the endpoint.
    pub fn operation(&self) -> Cow<'static, str> {
        let e = self.record.endpoint.as_str();
        let known = match self.kind {
            ProviderKind::OpenAi
                if e.ends_with("/chat/completions") || e.ends_with("/responses") =>
            {
                Some("chat")
            }
            ProviderKind::OpenAi if e.ends_with("/completions") => Some("text_completion"),
            ProviderKind::OpenAi if e.ends_with("/embeddings") => Some("embeddings"),
            ProviderKind::Anthropic if e.ends_with("/messages") => Some("chat"),
            ProviderKind::Google
                if e.ends_with(":generateContent") || e.ends_with(":streamGenerateContent") =>
            {
                Some("generate_content")
            }
            ProviderKind::Google
                if e.ends_with(":embedContent") || e.ends_with(":batchEmbedContents") =>
            {
                Some("embeddings")
            }
            _ => None,
        };
        match known {
            Some(op) => Cow::Borrowed(op),
            // Another endpoint (a model list, a file upload): its last
            // path segment, without Gemini's model.
            None => Cow::Owned(
                e.rsplit(['/', ':'])
                    .find(|s| !s.is_empty())
                    .unwrap_or("unknown")
                    .to_owned(),
            ),
        }
    }

    /// `gen_ai.provider.name`: the well-known name of the provider kind;
    /// an `OpenAI`-compatible service under its configured name.
    pub fn provider_name(&self) -> String {
        match self.kind {
            ProviderKind::Anthropic => "anthropic".to_owned(),
            ProviderKind::Google => "gcp.gemini".to_owned(),
            ProviderKind::OpenAi if self.record.provider == "openai" => "openai".to_owned(),
            ProviderKind::OpenAi => self.record.provider.clone(),
        }
    }

    /// `error.type`, when the exchange ended in an error.
    pub fn error_type(&self) -> Option<String> {
        let r = &self.record;
        if let Some(code) = r.error {
            return Some(code.as_str().to_owned());
        }
        match r.status {
            Some(s) if s >= 400 => Some(s.to_string()),
            None => Some("no_response".to_owned()),
            Some(_) if !r.completed => Some("incomplete".to_owned()),
            Some(_) => None,
        }
    }

    /// The attributes metrics and the span share.
    pub fn common_attributes(&self, latest: bool) -> Vec<KeyValue> {
        let mut a = vec![
            KeyValue::new("gen_ai.operation.name", self.operation()),
            KeyValue::new("gen_ai.provider.name", self.provider_name()),
            KeyValue::new("server.address", self.server.0.clone()),
            KeyValue::new("server.port", i64::from(self.server.1)),
        ];
        if !latest {
            // v1.36 named the provider `gen_ai.system`.
            a.push(KeyValue::new("gen_ai.system", self.provider_name()));
        }
        if let Some(m) = &self.record.model {
            a.push(KeyValue::new("gen_ai.request.model", m.clone()));
        }
        if let Some(m) = &self.response.model {
            a.push(KeyValue::new("gen_ai.response.model", m.clone()));
        }
        if let Some(e) = self.error_type() {
            a.push(KeyValue::new("error.type", e));
        }
        a
    }

    fn span_attributes(
        &self,
        common: Vec<KeyValue>,
        builtin: &crate::policy::detect::Detectors,
    ) -> Vec<KeyValue> {
        let r = &self.record;
        let p = &self.params;
        let mut a = common;
        let mut put = |k: &'static str, v: Option<Value>| {
            if let Some(v) = v {
                a.push(KeyValue::new(k, v));
            }
        };
        put("gen_ai.request.temperature", p.temperature.map(Value::F64));
        put("gen_ai.request.top_p", p.top_p.map(Value::F64));
        put("gen_ai.request.top_k", p.top_k.map(Value::F64));
        put("gen_ai.request.max_tokens", p.max_tokens.map(Value::I64));
        put(
            "gen_ai.request.frequency_penalty",
            p.frequency_penalty.map(Value::F64),
        );
        put(
            "gen_ai.request.presence_penalty",
            p.presence_penalty.map(Value::F64),
        );
        put("gen_ai.request.seed", p.seed.map(Value::I64));
        put(
            "gen_ai.request.choice.count",
            p.choice_count.map(Value::I64),
        );
        put(
            "gen_ai.response.id",
            self.response.id.clone().map(Value::from),
        );
        put(
            "gen_ai.response.finish_reasons",
            strings(&self.response.finish_reasons),
        );
        if let Some(u) = r.usage {
            put("gen_ai.usage.input_tokens", Some(int(u.input_tokens)));
            put("gen_ai.usage.output_tokens", Some(int(u.output_tokens)));
            put(
                "gen_ai.usage.cache_read.input_tokens",
                (u.cached_tokens > 0).then(|| int(u.cached_tokens)),
            );
            put(
                "gen_ai.usage.cache_creation.input_tokens",
                (u.cache_creation_tokens > 0).then(|| int(u.cache_creation_tokens)),
            );
            put(
                "gen_ai.usage.reasoning.output_tokens",
                (u.reasoning_tokens > 0).then(|| int(u.reasoning_tokens)),
            );
        }
        self.leash_attributes(&mut a);
        if let Some(c) = &self.content {
            let finish = self.response.finish_reasons.first().map(String::as_str);
            a.extend(c.attributes(builtin, finish));
        }
        a
    }

    /// Leash's own attributes (`leash.*`).
    fn leash_attributes(&self, a: &mut Vec<KeyValue>) {
        let r = &self.record;
        let mut put = |k: &'static str, v: Option<Value>| {
            if let Some(v) = v {
                a.push(KeyValue::new(k, v));
            }
        };
        let c = &r.caller;
        put("leash.record.id", Some(r.id.clone().into()));
        put("leash.host", Some(r.host.to_string().into()));
        put("leash.mode", Some(r.mode.as_str().into()));
        put("leash.stream", Some(r.stream.into()));
        put("leash.endpoint", Some(r.endpoint.clone().into()));
        put("leash.status", r.status.map(|s| Value::I64(s.into())));
        put("leash.overhead_ms", Some(Value::F64(r.overhead_ms)));
        put("leash.cost_usd", r.cost_usd.map(Value::F64));
        put(
            "leash.usage.estimated",
            r.usage_estimated.then_some(Value::Bool(true)),
        );
        put("leash.team", c.team.clone().map(Value::from));
        put("leash.caller.exe", c.exe.clone().map(Value::from));
        put("leash.caller.user", c.user.clone().map(Value::from));
        put("leash.caller.uid", c.uid.map(|u| Value::I64(u.into())));
        put("leash.caller.pid", c.pid.map(|u| Value::I64(u.into())));
        put("leash.caller.cgroup", c.cgroup.clone().map(Value::from));
        put(
            "leash.caller.container",
            c.container.clone().map(Value::from),
        );
        put("client.address", c.addr.map(|a| a.ip().to_string().into()));
        put("leash.key_id", r.key_id.clone().map(Value::from));
        put("leash.credential", r.credential.clone().map(Value::from));
        if let Some(policy) = &r.policy {
            put("leash.policy.action", Some(policy.action.as_str().into()));
            put("leash.policy.rules", strings(&policy.rules));
            let detectors: Vec<String> =
                policy.findings.iter().map(|f| f.detector.clone()).collect();
            put("leash.policy.detectors", strings(&detectors));
            put(
                "leash.policy.shadow",
                policy.shadow.then_some(Value::Bool(true)),
            );
            put("leash.policy.route", policy.route.clone().map(Value::from));
        }
        if let Some(u) = &r.unified {
            put("leash.unified.api", Some(u.api.clone().into()));
            put("leash.route", u.route.clone().map(Value::from));
            put(
                "leash.route.attempts",
                (!u.attempts.is_empty()).then(|| int(u.attempts.len() as u64)),
            );
        }
        if let Some(content) = &r.content {
            put("leash.capture.class", Some(content.class.as_str().into()));
        }
    }

    /// The exchange's span and its phases' child spans (none when the trace
    /// is not sampled); `common` is [`Finished::common_attributes`], which
    /// the metrics use too.
    pub fn spans(
        &self,
        scope: &InstrumentationScope,
        common: Vec<KeyValue>,
        builtin: &crate::policy::detect::Detectors,
    ) -> Vec<SpanData> {
        let Some(trace) = self.trace.filter(|t| t.sampled) else {
            return Vec::new();
        };
        let trace_id = TraceId::from_bytes(trace.trace_id);
        let own = SpanId::from_bytes(trace.span_id);
        let context = |span: SpanId, remote| {
            SpanContext::new(
                trace_id,
                span,
                TraceFlags::SAMPLED,
                remote,
                TraceState::NONE,
            )
        };
        let at = |d: Duration| self.start + d;
        let end = at(self.phases.end);
        let status = match self.error_type() {
            Some(e) => Status::error(e),
            None => Status::Unset,
        };
        let name = match &self.record.model {
            Some(m) => format!("{} {m}", self.operation()),
            None => self.operation().into_owned(),
        };
        let span = |context,
                    parent: SpanId,
                    remote_parent,
                    kind,
                    name,
                    (start, end),
                    attributes,
                    status| SpanData {
            span_context: context,
            parent_span_id: parent,
            parent_span_is_remote: remote_parent,
            span_kind: kind,
            name,
            start_time: start,
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope.clone(),
        };
        let parent = trace.parent_id.map_or(SpanId::INVALID, SpanId::from_bytes);
        let mut out = vec![span(
            context(own, false),
            parent,
            trace.parent_id.is_some(),
            SpanKind::Client,
            Cow::Owned(name),
            (self.start, end),
            self.span_attributes(common, builtin),
            status,
        )];
        // The phases: the request modules (policy), the wait for the
        // provider's answer head, and the answer's body (the stream).
        let request_end = self.phases.request.unwrap_or(self.phases.end);
        let mut phases = vec![("leash.policy", Duration::ZERO, request_end)];
        if let Some(sent) = self.phases.request {
            let head = self.phases.upstream.unwrap_or(self.phases.end);
            phases.push(("leash.upstream", sent, head));
            if let Some(head) = self.phases.upstream {
                let body = if self.record.stream {
                    "leash.stream"
                } else {
                    "leash.response"
                };
                phases.push((body, head, self.phases.end));
            }
        }
        for (name, from, to) in phases {
            out.push(span(
                context(SpanId::from_bytes(crate::trace::random()), false),
                own,
                false,
                SpanKind::Internal,
                Cow::Borrowed(name),
                (at(from), at(to)),
                Vec::new(),
                Status::Unset,
            ));
        }
        out
    }

    /// Seconds from the start to the end, and to the first byte (streams).
    pub fn durations(&self) -> (f64, Option<f64>) {
        (
            self.phases.end.as_secs_f64(),
            self.record
                .ttfb_ms
                .filter(|_| self.record.stream)
                .map(|ms| ms / 1e3),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_of_each_api() {
        let openai = br#"{"model":"m","temperature":0.2,"max_completion_tokens":50,"stop":["x","y"],"n":2,"seed":7,"messages":[]}"#;
        let p = RequestParams::read(ProviderKind::OpenAi, openai);
        assert_eq!(p.temperature, Some(0.2));
        assert_eq!(p.max_tokens, Some(50));
        assert_eq!((p.choice_count, p.seed), (Some(2), Some(7)));
        let gemini = br#"{"contents":[],"generationConfig":{"topK":40,"maxOutputTokens":9,"stopSequences":["z"]}}"#;
        let g = RequestParams::read(ProviderKind::Google, gemini);
        assert_eq!((g.top_k, g.max_tokens), (Some(40.0), Some(9)));
        // A value of the wrong type is ignored, not an error.
        let odd = br#"{"temperature":"hot","max_tokens":12}"#;
        let o = RequestParams::read(ProviderKind::Anthropic, odd);
        assert_eq!((o.temperature, o.max_tokens), (None, Some(12)));
    }
}
