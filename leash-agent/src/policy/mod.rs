//! The policy engine: what may leave the organisation. A policy file (YAML)
//! declares custom detectors and ordered rules; the `policy` pipeline module
//! evaluates them on every request, in every API shape, and blocks, redacts,
//! transforms, annotates or alerts. `mode: shadow` decides and records but
//! changes nothing.
//!
//! Rules are evaluated in order: the first matching `block` or `allow`
//! decides and ends evaluation; `redact`, `transform`, `annotate` and
//! `alert` accumulate until then.

pub mod detect;
pub mod document;
pub mod text;
pub mod transform;

use std::{
    collections::{BTreeMap, VecDeque},
    path::Path,
    sync::Arc,
};

use async_trait::async_trait;
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use self::{
    detect::{Custom, Detectors, Finding},
    transform::{Change, Transform},
};
use crate::{
    alerts::Alerter,
    audit::AuditRecord,
    pipeline::{
        BodyFlow, Exchange, Flow, Module, ModuleError, ProxyRequest, Rejection, sse::SseBuffer,
    },
    provider::{ErrorCode, ProviderKind, error_body},
};

/// Response text kept from earlier chunks, so a match split across stream
/// chunks is still found.
const CARRY_WINDOW: usize = 512;

/// Stream text held back before delivery while a response rule redacts, so
/// a match split across events is replaced before any of it leaves. A
/// longer match whose start was already delivered ends the stream instead.
const HOLD_BACK: usize = 256;

pub const NAME: &str = "policy";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {0}: {1}")]
    Read(std::path::PathBuf, std::io::Error),
    #[error("invalid policy {0}: {1}")]
    Parse(String, serde_yaml::Error),
    #[error("invalid policy {0}: `{1}`: {2}")]
    Invalid(String, String, String),
}

// ---- the file as written ---------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: u32,
    mode: Option<String>,
    #[serde(default)]
    detectors: BTreeMap<String, RawDetector>,
    #[serde(default)]
    rules: Vec<RawRule>,
    on_unparseable: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDetector {
    regex: Option<String>,
    keywords: Option<Vec<String>>,
    #[serde(default)]
    case_sensitive: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(rename = "match", default)]
    matcher: RawMatch,
    action: String,
    #[serde(default)]
    tags: Vec<String>,
    mode: Option<String>,
    // transform
    set_model: Option<String>,
    max_tokens: Option<u64>,
    system_prepend: Option<String>,
    system_append: Option<String>,
    #[serde(default)]
    drop_fields: Vec<String>,
    #[serde(default)]
    set_headers: BTreeMap<String, String>,
    #[serde(default)]
    remove_headers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    detectors: Option<Vec<String>>,
    provider: Option<Vec<String>>,
    model: Option<Vec<String>>,
    endpoint: Option<Vec<String>>,
    direction: Option<String>,
    team: Option<Vec<String>>,
    header: Option<BTreeMap<String, String>>,
    caller: Option<RawCaller>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    uid: Option<Vec<u32>>,
    user: Option<Vec<String>>,
    exe: Option<Vec<String>>,
    cgroup: Option<Vec<String>>,
}

// ---- the compiled policy -------------------------------------------------

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Annotate,
    Alert,
    Transform,
    Redact,
    Block,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "allow" => Self::Allow,
            "block" => Self::Block,
            "redact" => Self::Redact,
            "transform" => Self::Transform,
            "annotate" => Self::Annotate,
            "alert" => Self::Alert,
            _ => return None,
        })
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Annotate => "annotate",
            Self::Alert => "alert",
            Self::Transform => "transform",
            Self::Redact => "redact",
            Self::Block => "block",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
    Both,
}

/// `*` matches any run of characters; everything else literally.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    true
}

fn any_glob(patterns: Option<&Vec<String>>, value: Option<&str>) -> bool {
    patterns.is_none_or(|ps| value.is_some_and(|v| ps.iter().any(|p| glob(p, v))))
}

struct Rule {
    name: String,
    action: Action,
    tags: Vec<String>,
    transform: Transform,
    /// `Some(true)`: this rule only records (`mode: shadow` on the rule).
    shadow: Option<bool>,
    detectors: Option<Vec<usize>>,
    direction: Direction,
    m: RawMatch,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("shadow", &self.shadow)
            .field(
                "rules",
                &self
                    .rules
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// A validated, compiled policy.
pub struct Policy {
    shadow: bool,
    forward_unparseable: bool,
    detectors: Detectors,
    rules: Vec<Rule>,
}

impl Policy {
    /// The rules as the console shows them: name, action, direction,
    /// detectors, shadow; plus the policy-wide settings.
    pub fn describe(&self) -> Value {
        let rules: Vec<Value> = self
            .rules
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "action": r.action,
                    "direction": match r.direction {
                        Direction::Request => "request",
                        Direction::Response => "response",
                        Direction::Both => "both",
                    },
                    "detectors": r.detectors.iter().flatten()
                        .map(|&d| self.detectors.get(d).name.clone())
                        .collect::<Vec<_>>(),
                    "shadow": r.shadow.unwrap_or(self.shadow),
                    "tags": r.tags,
                })
            })
            .collect();
        json!({
            "mode": if self.shadow { "shadow" } else { "enforce" },
            "on_unparseable": if self.forward_unparseable { "forward" } else { "block" },
            "rules": rules,
        })
    }
}

/// What the policy decided for one request.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Decision {
    /// The strongest action taken (or, in shadow mode, that would be).
    pub action: Option<Action>,
    pub rules: Vec<String>,
    pub findings: Vec<FindingRecord>,
    pub tags: Vec<String>,
    /// True when nothing was changed because of shadow mode.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// What transform rules changed in the request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    #[serde(skip)]
    transform: Transform,
    #[serde(skip)]
    redact: Vec<usize>,
    #[serde(skip)]
    block_rule: Option<String>,
    #[serde(skip)]
    alerts: Vec<String>,
    /// From [`Policy::test`]: the body as it would be forwarded, when
    /// redaction or a transform changed it (`None`: forwarded unchanged or
    /// blocked).
    #[serde(skip)]
    pub forwarded_body: Option<Vec<u8>>,
}

/// A finding as recorded: rule, detector, count. Never the matched text.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FindingRecord {
    pub rule: String,
    pub detector: String,
    pub count: usize,
}

fn invalid(name: &str, field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::Invalid(name.to_owned(), field.into(), reason.into())
}

impl Policy {
    /// Reads and compiles a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| PolicyError::Read(path.to_owned(), e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Compiles policy text; `name` names it in errors (with line and column
    /// for syntax errors).
    pub fn parse(text: &str, name: &str) -> Result<Self, PolicyError> {
        let raw: RawPolicy =
            serde_yaml::from_str(text).map_err(|e| PolicyError::Parse(name.to_owned(), e))?;
        Self::compile(raw, name)
    }

    /// Compiles a policy given inline in the main config.
    pub fn from_value(value: serde_yaml::Value, name: &str) -> Result<Self, PolicyError> {
        let raw: RawPolicy =
            serde_yaml::from_value(value).map_err(|e| PolicyError::Parse(name.to_owned(), e))?;
        Self::compile(raw, name)
    }

    /// The decision for a request, without a network or a pipeline: what
    /// `leash policy test` prints.
    pub fn test(
        &self,
        provider: Arc<crate::provider::Provider>,
        endpoint: &str,
        body: &[u8],
    ) -> Result<Decision, String> {
        let mut value: Value =
            serde_json::from_slice(body).map_err(|e| format!("the request is not JSON: {e}"))?;
        let caller = crate::pipeline::Caller::default();
        let mut ex = Exchange::new(
            crate::pipeline::Mode::Gateway,
            provider,
            caller,
            endpoint.to_owned(),
        );
        let mut req = ProxyRequest {
            head: http::Request::new(()).into_parts().0,
            body: Bytes::copy_from_slice(body),
            upstream_path: endpoint.to_owned(),
        };
        crate::pipeline::identify::identify(&mut ex, &req);
        let (per_text, findings) = scan(self, &mut value);
        let mut decision = self.decide(&ex, &req, &findings);
        if decision.block_rule.is_some() {
            return Ok(decision);
        }
        let (changed, _) = apply_changes(
            self,
            &mut decision,
            &per_text,
            &mut transform::Target {
                kind: ex.provider.kind,
                endpoint,
                body: &mut value,
                headers: &mut req.head.headers,
                path: &mut req.upstream_path,
            },
        );
        if changed {
            decision.forwarded_body = Some(
                serde_json::to_vec(&value)
                    .map_err(|e| format!("cannot re-encode the request body: {e}"))?,
            );
        }
        Ok(decision)
    }

    fn compile(raw: RawPolicy, name: &str) -> Result<Self, PolicyError> {
        if raw.version != 1 {
            return Err(invalid(name, "version", "only version 1 is known"));
        }
        let shadow = match raw.mode.as_deref() {
            None | Some("enforce") => false,
            Some("shadow") => true,
            Some(o) => {
                return Err(invalid(
                    name,
                    "mode",
                    format!("`{o}` is not one of: enforce, shadow"),
                ));
            }
        };
        let forward_unparseable = match raw.on_unparseable.as_deref() {
            None | Some("block") => false,
            Some("forward") => true,
            Some(o) => {
                return Err(invalid(
                    name,
                    "on_unparseable",
                    format!("`{o}` is not one of: block, forward"),
                ));
            }
        };
        let custom = raw
            .detectors
            .into_iter()
            .map(|(n, d)| {
                let c = match (d.regex, d.keywords) {
                    (Some(r), None) => Custom::Regex(r),
                    (None, Some(words)) => Custom::Keywords {
                        words,
                        case_sensitive: d.case_sensitive,
                    },
                    _ => {
                        return Err(invalid(
                            name,
                            format!("detectors.{n}"),
                            "give exactly one of regex, keywords",
                        ));
                    }
                };
                Ok((n, c))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let detectors = Detectors::new(&custom)
            .map_err(|e| invalid(name, format!("detectors.{}", e.name), e.reason))?;
        let rules = raw
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| compile_rule(r, i, name, &detectors))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            shadow,
            forward_unparseable,
            detectors,
            rules,
        })
    }

    fn rule_matches(rule: &Rule, ex: &Exchange, req: &ProxyRequest, found: &[usize]) -> bool {
        let m = &rule.m;
        let caller = &ex.caller;
        let header_ok = m.header.as_ref().is_none_or(|hs| {
            hs.iter().all(|(k, pat)| {
                req.head
                    .headers
                    .get(k.as_str())
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| glob(pat, v))
            })
        });
        let caller_ok = m.caller.as_ref().is_none_or(|c| {
            c.uid
                .as_ref()
                .is_none_or(|u| caller.uid.is_some_and(|x| u.contains(&x)))
                && any_glob(c.user.as_ref(), caller.user.as_deref())
                && any_glob(c.exe.as_ref(), caller.exe.as_deref())
                && any_glob(c.cgroup.as_ref(), caller.cgroup.as_deref())
        });
        rule.direction != Direction::Response
            && rule
                .detectors
                .as_ref()
                .is_none_or(|ds| ds.iter().any(|d| found.contains(d)))
            && any_glob(m.provider.as_ref(), Some(&ex.provider.name))
            && any_glob(m.model.as_ref(), ex.model.as_deref())
            && any_glob(m.endpoint.as_ref(), Some(&ex.endpoint))
            && any_glob(m.team.as_ref(), caller.team.as_deref())
            && header_ok
            && caller_ok
    }

    /// Evaluates the request rules on `ex`/`req` given the findings in its
    /// texts.
    fn decide(&self, ex: &Exchange, req: &ProxyRequest, findings: &[Finding]) -> Decision {
        let mut found: Vec<usize> = findings.iter().map(|f| f.detector).collect();
        found.sort_unstable();
        found.dedup();
        let mut d = Decision {
            shadow: self.shadow,
            ..Decision::default()
        };
        for rule in &self.rules {
            if !Self::rule_matches(rule, ex, req, &found) {
                continue;
            }
            let shadow = rule.shadow.unwrap_or(self.shadow);
            d.rules.push(rule.name.clone());
            if let Some(ds) = &rule.detectors {
                for &det in ds.iter().filter(|det| found.contains(det)) {
                    d.findings.push(FindingRecord {
                        rule: rule.name.clone(),
                        detector: self.detectors.get(det).name.clone(),
                        count: findings.iter().filter(|f| f.detector == det).count(),
                    });
                }
            }
            d.tags.extend(rule.tags.iter().cloned());
            d.action = d.action.max(Some(rule.action));
            if shadow {
                d.shadow = true;
                if matches!(rule.action, Action::Allow | Action::Block) {
                    break;
                }
                continue;
            }
            match rule.action {
                Action::Allow => break,
                Action::Block => {
                    d.block_rule = Some(rule.name.clone());
                    break;
                }
                Action::Redact => d.redact.extend(
                    rule.detectors
                        .iter()
                        .flatten()
                        .filter(|x| found.contains(x)),
                ),
                Action::Transform => d.transform.merge(&rule.transform),
                Action::Alert => d.alerts.push(rule.name.clone()),
                Action::Annotate => {}
            }
        }
        d
    }
}

impl Policy {
    fn has_response_rules(&self) -> bool {
        self.rules.iter().any(|r| r.direction != Direction::Request)
    }

    /// Whether an enforcing response rule redacts: streams are then held
    /// back by `HOLD_BACK` bytes of text.
    fn redacts_responses(&self) -> bool {
        self.rules.iter().any(|r| {
            r.direction != Direction::Request
                && r.action == Action::Redact
                && !r.shadow.unwrap_or(self.shadow)
        })
    }

    /// The first response rule that matches `found`, if any, and whether it
    /// only records (shadow).
    fn decide_response(&self, ex: &Exchange, found: &[usize]) -> Option<(&Rule, bool)> {
        self.rules.iter().find_map(|rule| {
            let m = &rule.m;
            let applies = rule.direction != Direction::Request
                && m.header.is_none()
                && rule
                    .detectors
                    .as_ref()
                    .is_some_and(|ds| ds.iter().any(|d| found.contains(d)))
                && any_glob(m.provider.as_ref(), Some(&ex.provider.name))
                && any_glob(m.model.as_ref(), ex.model.as_deref())
                && any_glob(m.endpoint.as_ref(), Some(&ex.endpoint))
                && any_glob(m.team.as_ref(), ex.caller.team.as_deref());
            applies.then(|| (rule, rule.shadow.unwrap_or(self.shadow)))
        })
    }
}

/// Response-side scanning state of one exchange. Offsets are positions in
/// the stream's text (all deltas joined).
#[derive(Clone, Default)]
struct ResponseScan {
    sse: SseBuffer,
    /// The tail of the response text seen so far (bounded); starts at `base`.
    window: String,
    base: usize,
    /// Where the last recorded match ended: a match that grows as more text
    /// arrives is recorded once.
    reported: usize,
    /// Detectors an enforcing redact rule has matched.
    redacting: Vec<usize>,
    /// Events held back (only while redacting).
    pending: VecDeque<Pending>,
    /// Text up to here has been delivered.
    released: usize,
    /// Text to replace, sorted by start.
    spans: Vec<Span>,
    /// A match was found that starts in text already delivered unredacted.
    leaked: bool,
    stopped: bool,
    /// A non-streaming body: its content type, and its scanner once the
    /// first bytes told what it is.
    content_type: Option<String>,
    document: Document,
}

/// What is known of a non-streaming body.
#[derive(Clone, Default)]
enum Document {
    /// No bytes seen yet.
    #[default]
    Unknown,
    /// Binary (audio, images): not scanned.
    Binary,
    Scanning(document::DocumentScan),
}

#[derive(Clone)]
struct Pending {
    raw: Vec<u8>,
    value: Option<Value>,
    start: usize,
    end: usize,
    /// Structured arguments, which cannot be rewritten in place.
    opaque: Vec<(usize, usize)>,
}

#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    detector: usize,
}

impl ResponseScan {
    fn end(&self) -> usize {
        self.base + self.window.len()
    }

    fn add_span(&mut self, span: Span) {
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
    fn spans_redactable(&self) -> bool {
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
    fn release(&mut self, policy: &Policy, kind: ProviderKind, all: bool, out: &mut Vec<u8>) {
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
fn apply_spans(policy: &Policy, kind: ProviderKind, v: &mut Value, start: usize, spans: &[Span]) {
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
fn rewrite_data(raw: &[u8], v: &Value) -> Vec<u8> {
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
fn error_event(kind: ProviderKind, message: &str) -> Vec<u8> {
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

fn keep_tail(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = s.len() - max;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s.drain(..cut);
    }
}

fn compile_rule(
    r: RawRule,
    i: usize,
    name: &str,
    detectors: &Detectors,
) -> Result<Rule, PolicyError> {
    let field = format!("rules[{i}] ({})", r.name);
    let action = Action::parse(&r.action).ok_or_else(|| {
        invalid(
            name,
            format!("{field}.action"),
            format!(
                "`{}` is not one of: allow, block, redact, transform, annotate, alert",
                r.action
            ),
        )
    })?;
    let direction = match r.matcher.direction.as_deref() {
        None | Some("request") => Direction::Request,
        Some("response") => Direction::Response,
        Some("both") => Direction::Both,
        Some(o) => {
            return Err(invalid(
                name,
                format!("{field}.match.direction"),
                format!("`{o}` is not one of: request, response, both"),
            ));
        }
    };
    let shadow = match r.mode.as_deref() {
        None => None,
        Some("shadow") => Some(true),
        Some("enforce") => Some(false),
        Some(o) => {
            return Err(invalid(
                name,
                format!("{field}.mode"),
                format!("`{o}` is not one of: enforce, shadow"),
            ));
        }
    };
    let transform = compile_transform(&r, &field, name)?;
    if action == Action::Transform && transform.is_empty() {
        return Err(invalid(
            name,
            field,
            "a transform rule needs at least one of set_model, max_tokens, system_prepend, \
             system_append, drop_fields, set_headers, remove_headers",
        ));
    }
    if action != Action::Transform && !transform.is_empty() {
        return Err(invalid(
            name,
            field,
            "set_model, max_tokens, system_*, drop_fields and *_headers need `action: transform`",
        ));
    }
    if action == Action::Redact && r.matcher.detectors.is_none() {
        return Err(invalid(
            name,
            format!("{field}.match.detectors"),
            "a redact rule needs detectors",
        ));
    }
    let dets = match &r.matcher.detectors {
        None => None,
        Some(names) => {
            let mut out = Vec::new();
            for n in names {
                let ids = detectors.resolve(n);
                if ids.is_empty() {
                    return Err(invalid(
                        name,
                        format!("{field}.match.detectors"),
                        format!("unknown detector `{n}`"),
                    ));
                }
                out.extend(ids);
            }
            Some(out)
        }
    };
    Ok(Rule {
        name: r.name,
        action,
        tags: r.tags,
        transform,
        shadow,
        detectors: dets,
        direction,
        m: r.matcher,
    })
}

fn compile_transform(r: &RawRule, field: &str, name: &str) -> Result<Transform, PolicyError> {
    let mut set_headers = Vec::new();
    for (h, v) in &r.set_headers {
        let n = transform::check_header_name(h)
            .map_err(|e| invalid(name, format!("{field}.set_headers"), e))?;
        let v = http::HeaderValue::from_str(v).map_err(|_| {
            invalid(
                name,
                format!("{field}.set_headers.{h}"),
                "not a valid header value",
            )
        })?;
        set_headers.push((n, v));
    }
    let remove_headers = r
        .remove_headers
        .iter()
        .map(|h| transform::check_header_name(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(name, format!("{field}.remove_headers"), e))?;
    if let Some(bad) = r
        .drop_fields
        .iter()
        .find(|p| p.is_empty() || p.split('.').any(str::is_empty) || *p == "model")
    {
        return Err(invalid(
            name,
            format!("{field}.drop_fields"),
            format!("`{bad}` is not a field that can be dropped (dotted path; not `model`)"),
        ));
    }
    if r.max_tokens == Some(0) {
        return Err(invalid(
            name,
            format!("{field}.max_tokens"),
            "must be at least 1",
        ));
    }
    Ok(Transform {
        set_model: r.set_model.clone(),
        max_tokens: r.max_tokens,
        system_prepend: r.system_prepend.iter().cloned().collect(),
        system_append: r.system_append.iter().cloned().collect(),
        drop_fields: r.drop_fields.clone(),
        set_headers,
        remove_headers,
    })
}

/// The active policy, replaceable while Leash runs (hot reload). Requests
/// take the policy that is current when they start.
pub struct PolicyHandle {
    current: std::sync::RwLock<Option<Arc<Policy>>>,
    file: Option<std::path::PathBuf>,
    /// The latest reloads (time, outcome), newest last.
    history: std::sync::Mutex<std::collections::VecDeque<Value>>,
}

/// Reloads kept for the console.
const RELOAD_HISTORY: usize = 50;

impl PolicyHandle {
    pub fn new(policy: Option<Arc<Policy>>, file: Option<std::path::PathBuf>) -> Self {
        let loaded = policy.is_some();
        let handle = Self {
            current: std::sync::RwLock::new(policy),
            file,
            history: std::sync::Mutex::new(std::collections::VecDeque::new()),
        };
        if loaded {
            handle.note("start", None);
        }
        handle
    }

    /// Records a load of the policy: `error` when it was refused (the
    /// previous policy stayed in force).
    pub fn note(&self, trigger: &str, error: Option<&str>) {
        let ts = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut history = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if history.len() == RELOAD_HISTORY {
            history.pop_front();
        }
        history.push_back(
            json!({"ts": ts, "trigger": trigger, "ok": error.is_none(), "error": error}),
        );
    }

    /// The latest loads, newest first.
    pub fn history(&self) -> Vec<Value> {
        self.history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    pub fn current(&self) -> Option<Arc<Policy>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The policy file, if the policy came from one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Loads the file again. An invalid file leaves the current policy in
    /// force and returns why (field, line and column).
    pub fn reload(&self) -> Result<(), PolicyError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let policy = Policy::load(file)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(policy));
        Ok(())
    }
}

/// The `policy` module: applies the active policy to each request.
pub struct PolicyModule {
    handle: Arc<PolicyHandle>,
    alerts: Alerter,
}

impl PolicyModule {
    pub fn new(handle: Arc<PolicyHandle>, alerts: Alerter) -> Self {
        Self { handle, alerts }
    }
}

/// Reloads the policy when its file changes (checked every second) or when
/// Leash gets SIGHUP. Runs until the process ends.
pub async fn watch(handle: Arc<PolicyHandle>, metrics: Arc<crate::metrics::Metrics>) {
    let Some(file) = handle.file().map(Path::to_path_buf) else {
        return;
    };
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut last = stamp(&file);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let signalled = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = signalled => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                let now = stamp(&file);
                if now == last {
                    continue;
                }
                last = now;
            }
        }
        match handle.reload() {
            Ok(()) => {
                metrics.policy_reload(true);
                handle.note("file changed", None);
                tracing::info!(file = %file.display(), "policy reloaded");
            }
            Err(e) => {
                metrics.policy_reload(false);
                handle.note("file changed", Some(&e.to_string()));
                tracing::error!(error = %e, "policy reload failed; the previous policy stays in force");
            }
        }
    }
}

/// Scans every text of `body`; returns the findings per text (in walk
/// order) and all of them.
fn scan(policy: &Policy, body: &mut Value) -> (Vec<Vec<Finding>>, Vec<Finding>) {
    let mut per_text = Vec::new();
    let mut all = Vec::new();
    text::for_each_text(body, &mut |s, _| {
        let mut f = Vec::new();
        policy.detectors.scan(s, &mut f);
        all.extend(f.iter().cloned());
        per_text.push(f);
    });
    (per_text, all)
}

/// What a decision that did not block does to the request: its redactions,
/// then its transforms (recorded in `decision.changes`). Returns whether the
/// body changed and the model a transform set, if any. Shared by the module
/// and `Policy::test`, so `policy test` shows what would be forwarded.
fn apply_changes(
    policy: &Policy,
    decision: &mut Decision,
    per_text: &[Vec<Finding>],
    target: &mut transform::Target<'_>,
) -> (bool, Option<String>) {
    let mut changed = false;
    if !decision.redact.is_empty() {
        redact(policy, target.body, per_text, &decision.redact);
        changed = true;
    }
    let mut model = None;
    if !decision.transform.is_empty() {
        let applied = decision.transform.apply(target);
        changed |= applied.body_changed;
        decision.changes = applied.changes;
        model = applied.model;
    }
    (changed, model)
}

/// Replaces the spans of `redact` detectors with `[REDACTED:<name>]`.
fn redact(policy: &Policy, body: &mut Value, per_text: &[Vec<Finding>], redact: &[usize]) {
    let mut i = 0;
    text::for_each_text(body, &mut |s, _| {
        let Some(findings) = per_text.get(i) else {
            return;
        };
        i += 1;
        let mut spans: Vec<&Finding> = findings
            .iter()
            .filter(|f| redact.contains(&f.detector))
            .collect();
        if spans.is_empty() {
            return;
        }
        spans.sort_by_key(|f| std::cmp::Reverse(f.start));
        let mut last_start = usize::MAX;
        for f in spans {
            if f.end > last_start {
                continue; // overlaps a span already replaced
            }
            let name = &policy.detectors.get(f.detector).name;
            s.replace_range(f.start..f.end, &format!("[REDACTED:{name}]"));
            last_start = f.start;
        }
    });
}

#[async_trait]
impl Module for PolicyModule {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn request_filter(
        &self,
        ex: &mut Exchange,
        req: &mut ProxyRequest,
    ) -> Result<Flow, ModuleError> {
        let Some(policy) = self.handle.current() else {
            return Ok(Flow::Continue);
        };
        let policy = &*policy;
        let mut body: Value = if req.body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(_) if policy.forward_unparseable => Value::Null,
                Err(_) => {
                    ex.ext.insert(Decision {
                        action: Some(Action::Block),
                        rules: vec!["on_unparseable".into()],
                        ..Decision::default()
                    });
                    return Ok(Flow::Reject(Rejection {
                        status: StatusCode::BAD_REQUEST,
                        code: ErrorCode::BadRequest,
                        message: "leash: the request body is not JSON, so policy cannot inspect it"
                            .into(),
                    }));
                }
            }
        };
        let (per_text, findings) = scan(policy, &mut body);
        let decision = policy.decide(ex, req, &findings);
        for rule in &decision.alerts {
            self.alerts.fire(
                &format!("policy:{rule}:{}", ex.id),
                json!({
                    "type": "policy_alert", "rule": rule, "request_id": ex.id,
                    "provider": ex.provider.name, "model": ex.model, "team": ex.caller.team,
                    "findings": decision.findings,
                }),
            );
        }
        if let Some(rule) = &decision.block_rule {
            self.alerts.fire(
                &format!("policy:{rule}:{}", ex.id),
                json!({
                    "type": "policy_block", "rule": rule, "request_id": ex.id,
                    "provider": ex.provider.name, "model": ex.model, "team": ex.caller.team,
                    "findings": decision.findings,
                }),
            );
            let message = format!("leash: request blocked by policy rule `{rule}`");
            ex.ext.insert(decision);
            return Ok(Flow::Reject(Rejection {
                status: StatusCode::FORBIDDEN,
                code: ErrorCode::PolicyBlocked,
                message,
            }));
        }
        let mut decision = decision;
        let (changed, model) = apply_changes(
            policy,
            &mut decision,
            &per_text,
            &mut transform::Target {
                kind: ex.provider.kind,
                endpoint: &ex.endpoint,
                body: &mut body,
                headers: &mut req.head.headers,
                path: &mut req.upstream_path,
            },
        );
        if let Some(model) = model {
            ex.model = Some(model);
            // Gemini names the model in the path: the endpoint follows.
            let endpoint = ex.provider.upstream.endpoint_of(&req.upstream_path);
            endpoint.clone_into(&mut ex.endpoint);
        }
        if changed {
            let bytes = serde_json::to_vec(&body).map_err(|e| ModuleError {
                module: NAME,
                message: format!("cannot re-encode the request body: {e}"),
            })?;
            req.body = Bytes::from(bytes);
        }
        ex.ext.insert(decision);
        Ok(Flow::Continue)
    }

    fn rewrites_response_body(&self) -> bool {
        // A reloaded file may add response rules: a policy file always counts.
        self.handle.file().is_some()
            || self
                .handle
                .current()
                .is_some_and(|p| p.has_response_rules())
    }

    fn response_filter(&self, ex: &mut Exchange, head: &mut http::response::Parts) {
        if self
            .handle
            .current()
            .is_some_and(|p| p.has_response_rules())
            && head.status.is_success()
        {
            ex.ext.insert(ResponseScan {
                content_type: head
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                ..ResponseScan::default()
            });
        }
    }

    fn response_body_filter(&self, ex: &mut Exchange, chunk: &mut Bytes, end: bool) -> BodyFlow {
        let Some(policy) = self.handle.current() else {
            return BodyFlow::Continue;
        };
        let Some(mut scan_state) = ex.ext.remove::<ResponseScan>() else {
            return BodyFlow::Continue;
        };
        let flow = if ex.stream {
            self.scan_stream(&policy, ex, &mut scan_state, chunk, end)
        } else {
            self.scan_document(&policy, ex, &mut scan_state, chunk, end)
        };
        ex.ext.insert(scan_state);
        flow
    }

    fn logging(&self, ex: &Exchange, record: &mut AuditRecord) {
        if let Some(d) = ex.ext.get::<Decision>() {
            record.policy = Some(PolicyRecord {
                action: d.action.unwrap_or(Action::Allow).as_str(),
                rules: d.rules.clone(),
                findings: d.findings.clone(),
                tags: d.tags.clone(),
                changes: d.changes.clone(),
                shadow: d.shadow,
            });
        }
    }
}

impl PolicyModule {
    /// Records a response-side match in the exchange's decision.
    fn record_response(
        &self,
        policy: &Policy,
        ex: &mut Exchange,
        rule: &Rule,
        shadow: bool,
        findings: &[Finding],
    ) {
        let mut d = ex.ext.remove::<Decision>().unwrap_or_default();
        if !d.rules.contains(&rule.name) {
            d.rules.push(rule.name.clone());
        }
        for det in rule.detectors.iter().flatten() {
            let count = findings.iter().filter(|f| f.detector == *det).count();
            if count > 0 {
                d.findings.push(FindingRecord {
                    rule: rule.name.clone(),
                    detector: policy.detectors.get(*det).name.clone(),
                    count,
                });
            }
        }
        d.tags.extend(rule.tags.iter().cloned());
        d.action = d.action.max(Some(rule.action));
        d.shadow |= shadow;
        if matches!(rule.action, Action::Alert | Action::Block) {
            self.alerts.fire(
                &format!("policy:{}:{}", rule.name, ex.id),
                json!({
                    "type": if rule.action == Action::Block { "policy_block" } else { "policy_alert" },
                    "direction": "response", "rule": rule.name, "request_id": ex.id,
                    "provider": ex.provider.name, "model": ex.model, "team": ex.caller.team,
                    "findings": d.findings, "shadow": shadow,
                }),
            );
        }
        ex.ext.insert(d);
    }

    /// A non-streaming body (JSON, JSON Lines or text; binary is not
    /// scanned), whole or in chunks, any size: scanned incrementally, matches
    /// of a redacting rule replaced in place (all other bytes unchanged). A
    /// blocking rule aborts the body: Leash's 403 when nothing was sent yet,
    /// otherwise the body ends with an error so it cannot pass for whole.
    fn scan_document(
        &self,
        policy: &Policy,
        ex: &mut Exchange,
        st: &mut ResponseScan,
        chunk: &mut Bytes,
        end: bool,
    ) -> BodyFlow {
        if matches!(st.document, Document::Unknown) {
            st.document = document::BodyKind::sniff(st.content_type.as_deref(), chunk)
                .map_or(Document::Binary, |kind| {
                    Document::Scanning(document::DocumentScan::new(kind))
                });
        }
        let Document::Scanning(scanner) = &mut st.document else {
            return BodyFlow::Continue;
        };
        let mut blocked = None;
        let (out, stop) = scanner.feed(chunk, end, &mut |pass| {
            self.judge_document(
                policy,
                ex,
                &mut st.redacting,
                &mut st.reported,
                pass,
                &mut blocked,
            )
        });
        *chunk = Bytes::from(out);
        if !stop {
            return BodyFlow::Continue;
        }
        if let Some(d) = ex.ext.get_mut::<Decision>() {
            d.action = Some(Action::Block);
        }
        BodyFlow::Abort(Rejection {
            status: StatusCode::FORBIDDEN,
            code: ErrorCode::PolicyBlocked,
            message: blocked.unwrap_or_else(|| {
                "leash: response ended: a match could not be redacted before delivery".into()
            }),
        })
    }

    /// One window of a document's text: records what matched (once, however
    /// many windows see it) and says what to replace, or to stop.
    fn judge_document(
        &self,
        policy: &Policy,
        ex: &mut Exchange,
        redacting: &mut Vec<usize>,
        reported: &mut usize,
        pass: document::Pass<'_>,
        blocked: &mut Option<String>,
    ) -> document::Verdict {
        let mut all = Vec::new();
        policy.detectors.scan(pass.text, &mut all);
        let base = usize::try_from(pass.base).unwrap_or(usize::MAX);
        let fresh: Vec<Finding> = all
            .into_iter()
            .filter(|f| f.end > pass.fresh_from)
            .collect();
        let new: Vec<Finding> = fresh
            .iter()
            .filter(|f| base + f.start >= *reported)
            .cloned()
            .collect();
        let mut found: Vec<usize> = new.iter().map(|f| f.detector).collect();
        found.sort_unstable();
        found.dedup();
        let mut verdict = document::Verdict::default();
        if let Some((rule, shadow)) = policy.decide_response(ex, &found) {
            self.record_response(policy, ex, rule, shadow, &new);
            *reported = new.iter().map(|f| base + f.end).max().unwrap_or(*reported);
            if !shadow && rule.action == Action::Block {
                *blocked = Some(format!(
                    "leash: response blocked by policy rule `{}`",
                    rule.name
                ));
                verdict.stop = true;
                return verdict;
            }
            if !shadow && rule.action == Action::Redact {
                redacting.extend(rule.detectors.iter().flatten());
            }
        }
        verdict.redact = fresh
            .iter()
            .filter(|f| redacting.contains(&f.detector))
            .map(|f| {
                let name = &policy.detectors.get(f.detector).name;
                (f.start, f.end, format!("[REDACTED:{name}]"))
            })
            .collect();
        verdict
    }

    /// A stream: complete events are scanned as they arrive, with the tail
    /// of earlier text kept so a match split across chunks is found. A
    /// blocking rule ends the stream with the provider's error event:
    /// nothing after the match is delivered. While a rule redacts, events are
    /// held back by `HOLD_BACK` bytes of text so a split match is replaced
    /// before any of it leaves.
    fn scan_stream(
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
        let kind = ex.provider.kind;
        let mut out = Vec::with_capacity(chunk.len());
        for event in st.sse.feed(chunk, end) {
            let start = st.end();
            let mut pending = Pending {
                raw: event.raw,
                value: None,
                start,
                end: start,
                opaque: Vec::new(),
            };
            if let Ok(mut v) = serde_json::from_str::<Value>(&event.data) {
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
                st.stopped = true;
                st.pending.clear();
                *chunk = Bytes::from(out);
                return BodyFlow::Stop;
            }
            if hold {
                st.pending.push_back(pending);
                st.release(policy, kind, false, &mut out);
            } else {
                out.extend_from_slice(&pending.raw);
            }
            let before = st.window.len();
            keep_tail(&mut st.window, CARRY_WINDOW);
            st.base += before - st.window.len();
        }
        if end {
            st.release(policy, kind, true, &mut out);
        }
        *chunk = Bytes::from(out);
        BodyFlow::Continue
    }

    /// Scans the window after new text (from stream offset `start`) was
    /// added; records what matched and marks text to redact. Returns the
    /// message to end the stream with, if it must end.
    fn scan_window(
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

/// The policy part of an audit record.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRecord {
    pub action: &'static str,
    pub rules: Vec<String>,
    pub findings: Vec<FindingRecord>,
    pub tags: Vec<String>,
    /// What transform rules changed (fields and header names; never values
    /// of headers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("gpt-5*", "gpt-5-mini"));
        assert!(glob("*opus*", "claude-opus-4-1"));
        assert!(glob("gpt-4o", "gpt-4o"));
        assert!(!glob("gpt-4o", "gpt-4o-mini"));
        assert!(!glob("claude-opus*", "claude-sonnet-4"));
    }

    #[test]
    fn compile_errors_name_the_field() {
        let cases = [
            ("version: 2\n", "version"),
            (
                "version: 1\nrules: [{name: r, action: nuke}]\n",
                "rules[0] (r).action",
            ),
            (
                "version: 1\nrules: [{name: r, match: {detectors: [nope]}, action: block}]\n",
                "unknown detector",
            ),
            (
                "version: 1\nrules: [{name: r, action: transform}]\n",
                "at least one of set_model",
            ),
            (
                "version: 1\nrules: [{name: r, action: transform, set_headers: {host: x}}]\n",
                "`host` cannot be changed",
            ),
            (
                "version: 1\nrules: [{name: r, action: block, max_tokens: 5}]\n",
                "need `action: transform`",
            ),
            ("version: 1\ndetectors: {x: {regex: '('}}\n", "detectors.x"),
        ];
        for (text, needle) in cases {
            let err = Policy::parse(text, "p.yaml")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let err = Policy::parse(
            "version: 1\nrules:\n  - name: r\n    acton: block\n",
            "p.yaml",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("line 4"), "{err}");
    }

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

    #[test]
    fn redaction_keeps_json_valid() {
        let policy = Policy::parse(
            "version: 1\nrules: [{name: pii, match: {detectors: [email]}, action: redact}]\n",
            "p",
        )
        .unwrap();
        let mut body = serde_json::json!({"model": "m", "input": "write to a@b.co and c@d.org"});
        let (per_text, all) = scan(&policy, &mut body);
        assert_eq!(all.len(), 2);
        let email = policy.detectors.resolve("email");
        redact(&policy, &mut body, &per_text, &email);
        assert_eq!(
            body["input"],
            "write to [REDACTED:email] and [REDACTED:email]"
        );
    }
}
