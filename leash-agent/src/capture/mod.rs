//! Content capture (`capture:`), opt-in and classed: by the policy's
//! outcome, team, provider or route, an exchange's request and response
//! bodies are stored `redacted` (every detector's match replaced, never the
//! raw secret) or `sealed` (the exact bytes, age-encrypted to recipients'
//! public keys: the host writes them but cannot read them), or not at all
//! (`none`, the default). Content is stored beside the audit trail; the
//! record names its class, size and SHA-256 (of the stored bytes), which
//! the hash chain covers. Bounded (per-body cap with a marker, disk quota,
//! writer queue: overflow is counted, never waited for), kept per class
//! (`retention`), except records on the legal hold list.
//!
//! The `capture` module runs first, so it sees the request as the client
//! sent it and the response as the provider sent it; it decides the class
//! once every module has written its part of the record.

pub mod content;
pub mod store;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use serde::Deserialize;

use self::{
    content::{Captured, Recipients},
    store::{ContentStore, Retention},
};
use crate::{
    field::{FieldError, invalid, resolve},
    metrics::Metrics,
    pipeline::{BodyFlow, Exchange, Filtered, Flow, Module, ProxyRequest},
    policy::{PolicyHandle, detect::Detectors},
    record::{Action, AuditRecord, CaptureClass, ContentRef},
};

pub const NAME: &str = "capture";
const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;
const DEFAULT_QUOTA_BYTES: u64 = 1024 * 1024 * 1024;

/// `capture.rules[]` as written: every list given must hold the
/// exchange's value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    class: CaptureClass,
    #[serde(default)]
    actions: Vec<Action>,
    #[serde(default)]
    teams: Vec<String>,
    #[serde(default)]
    providers: Vec<String>,
    #[serde(default)]
    routes: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    redacted: Option<String>,
    sealed: Option<String>,
}

impl RawRetention {
    /// Each class's period (`30d` and `365d` when not given); `field`
    /// names the section in errors.
    pub fn validate(&self, field: &str) -> Result<Retention, FieldError> {
        Ok(Retention {
            redacted: crate::field::duration(
                &format!("{field}.redacted"),
                self.redacted.as_deref(),
                Duration::from_hours(30 * 24),
            )?,
            sealed: crate::field::duration(
                &format!("{field}.sealed"),
                self.sealed.as_deref(),
                Duration::from_hours(365 * 24),
            )?,
        })
    }
}

/// `capture` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCapture {
    dir: Option<PathBuf>,
    default: Option<CaptureClass>,
    #[serde(default)]
    rules: Vec<RawRule>,
    /// age X25519 public keys (`age1…`) sealed content is encrypted to.
    #[serde(default)]
    recipients: Vec<String>,
    recipients_file: Option<PathBuf>,
    max_bytes: Option<u64>,
    quota_bytes: Option<u64>,
    #[serde(default)]
    retention: RawRetention,
    legal_hold_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub class: CaptureClass,
    actions: Vec<Action>,
    teams: Vec<String>,
    providers: Vec<String>,
    routes: Vec<String>,
}

impl Rule {
    fn matches(&self, record: &AuditRecord) -> bool {
        let action = record.policy.as_ref().map_or(Action::Allow, |p| p.action);
        let route = record
            .unified
            .as_ref()
            .and_then(|u| u.route.as_deref())
            .or_else(|| record.policy.as_ref().and_then(|p| p.route.as_deref()));
        let has = |list: &[String], v: Option<&str>| {
            list.is_empty() || v.is_some_and(|v| list.iter().any(|x| x == v))
        };
        (self.actions.is_empty() || self.actions.contains(&action))
            && has(&self.teams, record.caller.team.as_deref())
            && has(&self.providers, Some(&record.provider))
            && has(&self.routes, route)
    }
}

/// The `capture` section.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub dir: PathBuf,
    pub default: CaptureClass,
    pub rules: Vec<Rule>,
    pub recipients: Recipients,
    pub max_bytes: usize,
    pub quota_bytes: u64,
    pub retention: Retention,
    pub legal_hold_file: PathBuf,
}

impl CaptureConfig {
    pub fn validate(raw: RawCapture, base: &Path, audit_dir: &Path) -> Result<Self, FieldError> {
        let dir = raw
            .dir
            .map_or_else(|| audit_dir.join("content"), |d| resolve(base, d));
        let mut keys: Vec<String> = raw.recipients;
        if let Some(file) = raw.recipients_file {
            let file = resolve(base, file);
            let text = std::fs::read_to_string(&file).map_err(|e| {
                invalid(
                    "capture.recipients_file",
                    format!("{}: {e}", file.display()),
                )
            })?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        let recipients = Recipients::parse(keys.iter().map(String::as_str))
            .map_err(|e| invalid("capture.recipients", e.to_string()))?;
        let default = raw.default.unwrap_or(CaptureClass::None);
        let rules: Vec<Rule> = raw
            .rules
            .into_iter()
            .map(|r| Rule {
                class: r.class,
                actions: r.actions,
                teams: r.teams,
                providers: r.providers,
                routes: r.routes,
            })
            .collect();
        let sealed = default == CaptureClass::Sealed
            || rules.iter().any(|r| r.class == CaptureClass::Sealed);
        if sealed && recipients.is_empty() {
            return Err(invalid(
                "capture.recipients",
                "sealed content needs at least one age recipient (age1…): the host must not hold the key that opens it",
            ));
        }
        let max_bytes = raw.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if max_bytes == 0 {
            return Err(invalid("capture.max_bytes", "must be at least 1"));
        }
        Ok(Self {
            legal_hold_file: raw
                .legal_hold_file
                .map_or_else(|| dir.join("legal-hold"), |f| resolve(base, f)),
            dir,
            default,
            rules,
            recipients,
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            quota_bytes: raw.quota_bytes.unwrap_or(DEFAULT_QUOTA_BYTES),
            retention: raw.retention.validate("capture.retention")?,
        })
    }

    /// Whether anything is ever captured.
    pub fn enabled(&self) -> bool {
        self.default != CaptureClass::None
            || self.rules.iter().any(|r| r.class != CaptureClass::None)
    }

    /// The class of a finished exchange's content: the first rule that
    /// matches, else the default.
    pub fn class_of(&self, record: &AuditRecord) -> CaptureClass {
        self.rules
            .iter()
            .find(|r| r.matches(record))
            .map_or(self.default, |r| r.class)
    }
}

/// The capture config with its store: built once, shared by the module
/// and the readers.
pub struct Capture {
    pub config: CaptureConfig,
    pub store: Arc<ContentStore>,
}

impl Capture {
    pub fn open(config: CaptureConfig, metrics: Arc<Metrics>) -> std::io::Result<Arc<Self>> {
        let store = ContentStore::open(&config.dir, config.quota_bytes, metrics)?;
        Ok(Arc::new(Self { config, store }))
    }

    /// Applies retention until the process ends (a task): every quarter of
    /// the shortest retention, at most hourly.
    pub async fn sweep(self: Arc<Self>) {
        let r = self.config.retention;
        let every = (r.redacted.min(r.sealed) / 4)
            .clamp(Duration::from_millis(250), Duration::from_hours(1));
        loop {
            let me = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || {
                let holds = store::holds(&me.config.legal_hold_file);
                let removed = me.store.sweep(&me.config.retention, &holds);
                if removed > 0 {
                    tracing::info!(removed, "captured content past retention removed");
                }
            })
            .await;
            tokio::time::sleep(every).await;
        }
    }
}

pub struct CaptureModule {
    capture: Arc<Capture>,
    policy: Arc<PolicyHandle>,
    /// The built-in detectors (when no policy is loaded).
    builtin: Detectors,
}

impl CaptureModule {
    pub fn new(capture: Arc<Capture>, policy: Arc<PolicyHandle>) -> Self {
        Self {
            capture,
            policy,
            builtin: Detectors::new(&[])
                .unwrap_or_else(|_| unreachable!("the built-in detectors compile")),
        }
    }

    /// Stores the content (redacted or sealed) and describes it.
    fn store(
        &self,
        ex: &Exchange,
        record: &AuditRecord,
        class: CaptureClass,
        c: &Captured,
    ) -> ContentRef {
        let policy = self.policy.current();
        let detectors = policy.as_deref().map_or(&self.builtin, |p| p.detectors());
        let doc = content::document(class, &record.id, ex.provider.kind, ex.stream, c, detectors);
        let plain = serde_json::to_vec(&doc).unwrap_or_default();
        let mut reference = ContentRef {
            class,
            sha256: None,
            bytes: 0,
            truncated: c.request_truncated || c.response_truncated,
            dropped: None,
        };
        let stored = match class {
            CaptureClass::Sealed => match self.capture.config.recipients.seal(&plain) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "content not sealed; not stored");
                    reference.dropped = Some("seal_error".into());
                    return reference;
                }
            },
            _ => plain,
        };
        reference.bytes = stored.len() as u64;
        reference.sha256 = Some(crate::audit::chain::hex_sha256(&stored));
        if let Err(d) = self
            .capture
            .store
            .put(class, &record.id, &record.ts, stored)
        {
            reference.sha256 = None;
            reference.dropped = Some(d.as_str().into());
        }
        reference
    }
}

fn content_type(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl Module for CaptureModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn request_filter<'a>(
        &'a self,
        ex: &'a mut Exchange,
        req: &'a mut ProxyRequest,
    ) -> Filtered<'a> {
        let max = self.capture.config.max_bytes;
        let body = &req.body;
        let (request, request_truncated) = if body.len() > max {
            (Bytes::copy_from_slice(&body[..max]), true)
        } else {
            (body.clone(), false)
        };
        ex.ext.insert(Captured {
            request,
            request_type: content_type(&req.head.headers),
            request_truncated,
            ..Captured::default()
        });
        Filtered::from(Flow::Continue)
    }

    fn response_filter(&self, ex: &mut Exchange, head: &mut http::response::Parts) {
        if let Some(c) = ex.ext.get_mut::<Captured>() {
            c.response_type = content_type(&head.headers);
        }
    }

    fn response_body_filter(&self, ex: &mut Exchange, chunk: &mut Bytes, _end: bool) -> BodyFlow {
        if let Some(c) = ex.ext.get_mut::<Captured>() {
            c.push_response(chunk, self.capture.config.max_bytes);
        }
        BodyFlow::Continue
    }

    /// Decided once every module wrote its part (the policy's outcome).
    fn after_logging(&self, ex: &Exchange, record: &mut AuditRecord) {
        let Some(c) = ex.ext.get::<Captured>() else {
            return;
        };
        let class = self.capture.config.class_of(record);
        if class == CaptureClass::None {
            return;
        }
        record.content = Some(self.store(ex, record, class, c));
    }
}
