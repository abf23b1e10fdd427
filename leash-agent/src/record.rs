//! The plain data every part of Leash shares: the audit record and what it
//! is made of (caller, usage, policy outcome, changes, error code). Serde
//! types with no behaviour beyond naming themselves, importing nothing else
//! of the crate: the pipeline fills them in, audit seals and writes them,
//! metrics and the console read them.

use std::{net::SocketAddr, sync::Arc, time::SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A moment as records write it: RFC 3339, UTC.
pub fn timestamp(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// How the request reached Leash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Gateway,
    Transparent,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Transparent => "transparent",
        }
    }
}

/// Which side of an exchange an error belongs to (as pingora tells them
/// apart): it picks the status class and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSide {
    /// The caller sent something Leash refuses (4xx).
    Client,
    /// The provider could not be reached or failed (5xx).
    Upstream,
    /// Leash itself failed (500).
    Internal,
    /// A policy or budget said no: not a failure, a decision.
    Decision,
}

/// Why Leash answered instead of the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    #[serde(rename = "leash_bad_request")]
    BadRequest,
    #[serde(rename = "leash_body_too_large")]
    BodyTooLarge,
    #[serde(rename = "leash_not_found")]
    NotFound,
    #[serde(rename = "leash_policy_blocked")]
    PolicyBlocked,
    /// No valid Leash key (unknown, revoked, expired, or none where one is
    /// required).
    #[serde(rename = "leash_unauthorized")]
    Unauthorized,
    /// The Leash key may not do this (model, provider).
    #[serde(rename = "leash_key_not_allowed")]
    KeyNotAllowed,
    /// The Leash key is over its rate.
    #[serde(rename = "leash_rate_limited")]
    RateLimited,
    /// A policy rule sent the request to another route (`action: route`).
    #[serde(rename = "leash_policy_routed")]
    PolicyRouted,
    #[serde(rename = "leash_upstream_unreachable")]
    UpstreamUnreachable,
    #[serde(rename = "leash_upstream_timeout")]
    UpstreamTimeout,
    #[serde(rename = "leash_budget_exceeded")]
    BudgetExceeded,
    #[serde(rename = "leash_internal_error")]
    Internal,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "leash_bad_request",
            Self::BodyTooLarge => "leash_body_too_large",
            Self::NotFound => "leash_not_found",
            Self::PolicyBlocked => "leash_policy_blocked",
            Self::Unauthorized => "leash_unauthorized",
            Self::KeyNotAllowed => "leash_key_not_allowed",
            Self::RateLimited => "leash_rate_limited",
            Self::PolicyRouted => "leash_policy_routed",
            Self::UpstreamUnreachable => "leash_upstream_unreachable",
            Self::UpstreamTimeout => "leash_upstream_timeout",
            Self::BudgetExceeded => "leash_budget_exceeded",
            Self::Internal => "leash_internal_error",
        }
    }

    pub const fn side(self) -> ErrorSide {
        match self {
            Self::BadRequest | Self::BodyTooLarge | Self::NotFound | Self::Unauthorized => {
                ErrorSide::Client
            }
            Self::UpstreamUnreachable | Self::UpstreamTimeout => ErrorSide::Upstream,
            Self::PolicyBlocked
            | Self::PolicyRouted
            | Self::BudgetExceeded
            | Self::KeyNotAllowed
            | Self::RateLimited => ErrorSide::Decision,
            Self::Internal => ErrorSide::Internal,
        }
    }
}

/// How a request to the unified API reached its provider: the API the
/// client spoke and the model as it named it (the record's `provider`,
/// `endpoint` and `model` are what was actually called).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unified {
    pub api: String,
    pub model: String,
    /// The route the model named, if it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Every attempt of a route's request up to and including this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
}

/// One attempt of a routed request at a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub provider: String,
    pub model: String,
    /// The status answered; `null` when the attempt timed out.
    pub status: Option<u16>,
    pub ms: f64,
}

/// Who made the call. The process fields are known in transparent mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    #[serde(with = "addr_text")]
    pub addr: Option<SocketAddr>,
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// The caller's address as text (`"127.0.0.1:40406"`), `null` when unknown.
mod addr_text {
    use std::net::SocketAddr;

    use serde::{Deserialize as _, Deserializer, Serializer};

    #[allow(
        clippy::ref_option,
        reason = "serde's `with` passes a reference to the field"
    )]
    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(a) => s.collect_str(a),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.and_then(|t| t.parse().ok()))
    }
}

/// Token counts exactly as the provider reported them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// Anthropic cache writes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_creation_tokens: u64,
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a policy rule does when it matches (ordered by strength).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Annotate,
    Alert,
    Transform,
    Redact,
    /// Offered tools removed from the request (`action: strip`).
    Strip,
    /// Sent to another route (`action: route`).
    Route,
    Block,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Annotate => "annotate",
            Self::Alert => "alert",
            Self::Transform => "transform",
            Self::Redact => "redact",
            Self::Strip => "strip",
            Self::Route => "route",
            Self::Block => "block",
        }
    }
}

/// A finding as recorded: rule, detector, count. Never the matched text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingRecord {
    pub rule: String,
    pub detector: String,
    pub count: usize,
}

/// What a transform did to one part of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    SetModel,
    CapMaxTokens,
    DropField,
    SetHeader,
    RemoveHeader,
    SystemPrepend,
    SystemAppend,
    /// An offered tool removed (`action: strip`); `field` is its name.
    StripTool,
}

/// One change made to a request, as the audit records it (header values
/// never appear).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub op: ChangeOp,
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

impl Change {
    pub fn new(op: ChangeOp, field: impl Into<String>) -> Self {
        Self {
            op,
            field: field.into(),
            from: None,
            to: None,
        }
    }
}

/// The policy part of an audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub action: Action,
    pub rules: Vec<String>,
    pub findings: Vec<FindingRecord>,
    pub tags: Vec<String>,
    /// What transform rules changed (fields and header names; never values
    /// of headers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// The route a rule sent the request to (`action: route`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

/// How an exchange's content is kept (`capture:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureClass {
    /// Not kept (metadata only).
    #[default]
    None,
    /// Kept with every detector's match replaced.
    Redacted,
    /// Kept exactly, encrypted to the recipients' public keys.
    Sealed,
}

impl CaptureClass {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Redacted => "redacted",
            Self::Sealed => "sealed",
        }
    }
}

/// An exchange's captured content, as its record names it: the hash chain
/// covers the record, so it covers the content's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRef {
    pub class: CaptureClass,
    /// SHA-256 (hex) of the stored bytes (for sealed content, of the
    /// ciphertext); `null` when not stored.
    pub sha256: Option<String>,
    pub bytes: u64,
    /// A body was longer than `capture.max_bytes` and was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Why it was not stored (`quota`, `queue`, `seal_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
}

impl ContentRef {
    /// Where a record's content is stored under `dir`: its class and day
    /// (the date of `ts`), named by the record id.
    pub fn path(
        dir: &std::path::Path,
        class: CaptureClass,
        id: &str,
        ts: &str,
    ) -> std::path::PathBuf {
        let day = ts.get(..10).unwrap_or("unknown");
        let ext = if class == CaptureClass::Sealed {
            "age"
        } else {
            "json"
        };
        dir.join(class.as_str())
            .join(day)
            .join(format!("{id}.{ext}"))
    }
}

/// A read of captured content (`event: content_read`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRead {
    /// The record whose content was read.
    pub record: String,
    /// Who read it, as the reader's side knows it.
    pub reader: String,
}

/// A change of the policy made from the console (`event: policy_change`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChange {
    /// Who made it: the console session's opener, or the admin token.
    pub actor: String,
    /// What changed, in words ("added rule `x`").
    pub change: String,
    /// The policy file.
    pub file: String,
    /// The file's SHA-256 before and after (hex).
    pub before_sha256: String,
    pub after_sha256: String,
    /// The file was rewritten without its comments (its layout could not
    /// be edited in place).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub regenerated: bool,
}

/// Records that are not a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A connection to an LLM endpoint that is not intercepted (`endpoint`
    /// holds its host).
    ShadowAi,
    /// A connection the transparent agent refused (`refusal` says why,
    /// `endpoint` where it was going).
    Refused,
    /// A provider connection let through uninspected on purpose (`bypass`
    /// says why).
    Bypassed,
    /// Captured content was read (`content_read` says whose, by whom).
    ContentRead,
    /// The policy was changed from the console (`policy_change` says what,
    /// by whom).
    PolicyChange,
}

/// Why a provider connection was let through uninspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bypass {
    /// The executable rejected the organisation CA before
    /// (`intercept.on_untrusted_client: splice`).
    UntrustedClient,
    /// The executable is in `intercept.bypass_executables`.
    Listed,
}

/// Why the transparent agent refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// A connection to the proxy port that the kernel hooks did not send.
    NoRecord,
    /// Its kernel record was too old: another connection's.
    StaleRecord,
    /// Bytes that are not TLS, to a provider address.
    NotTls,
    /// A malformed or unfinished `ClientHello`, to a provider address.
    BadHello,
    /// A `ClientHello` without a server name, to a provider address.
    NoSni,
    /// A server name that is not an intercepted provider, to a provider
    /// address (or through a tunnel to a provider).
    UnknownHost,
    /// Plain HTTP to a provider through a forward proxy.
    PlainHttp,
    /// The client broke off the TLS handshake: it does not trust the
    /// organisation CA (`unknown_ca`, `bad_certificate`, or a close).
    UntrustedClient,
    /// A provider's server name inside a forward-proxy tunnel to another
    /// host (an alias of the provider would let it through uninspected).
    ProviderInTunnel,
    /// UDP to a provider address (QUIC), refused in the kernel.
    Quic,
    /// A connection to a provider from another network namespace, with no
    /// `intercept.namespace_listen` to send it to (refused in the kernel).
    OtherNamespace,
}

impl Refusal {
    pub const ALL: [Self; 11] = [
        Self::NoRecord,
        Self::StaleRecord,
        Self::NotTls,
        Self::BadHello,
        Self::NoSni,
        Self::UnknownHost,
        Self::PlainHttp,
        Self::UntrustedClient,
        Self::ProviderInTunnel,
        Self::Quic,
        Self::OtherNamespace,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoRecord => "no_record",
            Self::StaleRecord => "stale_record",
            Self::NotTls => "not_tls",
            Self::BadHello => "bad_hello",
            Self::NoSni => "no_sni",
            Self::UnknownHost => "unknown_host",
            Self::PlainHttp => "plain_http",
            Self::UntrustedClient => "untrusted_client",
            Self::ProviderInTunnel => "provider_in_tunnel",
            Self::Quic => "quic",
            Self::OtherNamespace => "other_namespace",
        }
    }
}

/// One audit record. Holds no header, key or body: only what is safe to hand
/// to an auditor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: String,
    pub ts: String,
    pub host: Arc<str>,
    pub mode: Mode,
    pub provider: String,
    pub endpoint: String,
    pub model: Option<String>,
    pub stream: bool,
    /// HTTP status sent to the caller; `null` if the caller left before any.
    pub status: Option<u16>,
    pub latency_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub overhead_ms: f64,
    /// Whether the response was delivered to its end.
    pub completed: bool,
    pub response_bytes: u64,
    pub caller: Caller,
    /// Tokens as the provider reported them (`usage` module).
    pub usage: Option<Usage>,
    /// Cost from the price table; `null` for an unknown model or no usage.
    pub cost_usd: Option<f64>,
    /// What the policy decided (`policy` module).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRecord>,
    /// The stream ended before the provider reported usage.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub usage_estimated: bool,
    /// Set when Leash answered instead of the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorCode>,
    /// Set on records that are not a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
    /// Why a connection was refused (`event: refused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    /// Why a provider connection went uninspected (`event: bypassed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass: Option<Bypass>,
    /// Set for requests to the unified API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unified: Option<Unified>,
    /// The id of the Leash key the request was made with (never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The credential Leash sent upstream in place of the client's (its
    /// name, never its value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The W3C trace and this exchange's span in it (hex): the client's
    /// trace when it sent a `traceparent`, else a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// The exchange's captured content (`capture:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<ContentRef>,
    /// `event: content_read`: which record's content, read by whom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_read: Option<ContentRead>,
    /// `event: policy_change`: what changed in the policy, by whom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_change: Option<PolicyChange>,
    /// The tools the request offered the model (names, as sent by the
    /// client: a `strip` shows in `policy.changes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Tools>,
    /// Set for requests to an MCP server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpRecord>,
}

/// A request to an MCP server (`/mcp/<server>/…`): which server, the
/// JSON-RPC method (the HTTP method for the GET stream and DELETE), the
/// tool a `tools/call` names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpRecord {
    pub server: String,
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
}

/// Tools in an exchange, by name (never their definitions or arguments).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tools {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offered: Vec<String>,
    /// The tools the answer called, each name once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub called: Vec<String>,
}

impl Tools {
    /// Adds called tool names to a record's `tools` (each name once).
    pub fn add_called(tools: &mut Option<Self>, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let called = &mut tools.get_or_insert_with(Self::default).called;
        for n in names {
            if !called.contains(n) {
                called.push(n.clone());
            }
        }
    }
}

impl AuditRecord {
    /// A record that is not a request (`event`), now, on `node`.
    pub fn event(event: Event, node: &Arc<str>, caller: Caller) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            ts: timestamp(std::time::SystemTime::now()),
            host: Arc::clone(node),
            mode: Mode::Gateway,
            provider: "-".to_owned(),
            endpoint: String::new(),
            model: None,
            stream: false,
            status: None,
            latency_ms: 0.0,
            ttfb_ms: None,
            overhead_ms: 0.0,
            completed: false,
            response_bytes: 0,
            caller,
            usage: None,
            cost_usd: None,
            policy: None,
            usage_estimated: false,
            error: None,
            event: Some(event),
            refusal: None,
            bypass: None,
            unified: None,
            key_id: None,
            credential: None,
            trace_id: None,
            span_id: None,
            content: None,
            content_read: None,
            policy_change: None,
            tools: None,
            mcp: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        let record = AuditRecord {
            id: "01".into(),
            ts: "2026-11-30T00:00:00Z".into(),
            host: "h".into(),
            mode: Mode::Transparent,
            provider: "openai".into(),
            endpoint: "/chat/completions".into(),
            model: Some("gpt-4o".into()),
            stream: true,
            status: Some(403),
            latency_ms: 1.5,
            ttfb_ms: None,
            overhead_ms: 0.25,
            completed: true,
            response_bytes: 10,
            caller: Caller {
                addr: "127.0.0.1:4000".parse().ok(),
                uid: Some(0),
                ..Caller::default()
            },
            usage: Some(Usage {
                input_tokens: 3,
                ..Usage::default()
            }),
            cost_usd: Some(0.5),
            policy: Some(PolicyRecord {
                action: Action::Block,
                rules: vec!["r".into()],
                findings: vec![],
                tags: vec![],
                changes: vec![Change::new(ChangeOp::SetModel, "model")],
                shadow: false,
                route: None,
            }),
            usage_estimated: false,
            error: Some(ErrorCode::PolicyBlocked),
            event: None,
            refusal: None,
            bypass: None,
            unified: None,
            key_id: None,
            credential: None,
            trace_id: None,
            span_id: None,
            content: None,
            content_read: None,
            policy_change: None,
            tools: Some(Tools {
                offered: vec!["shell".into()],
                called: vec!["shell".into()],
            }),
            mcp: None,
        };
        let text = serde_json::to_string(&record).unwrap_or_default();
        assert!(text.contains(r#""error":"leash_policy_blocked""#), "{text}");
        assert!(text.contains(r#""addr":"127.0.0.1:4000""#), "{text}");
        assert!(text.contains(r#""op":"set_model""#), "{text}");
        let back: AuditRecord = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, record);
    }
}
