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
mod file;
mod handle;
mod request;
mod response;
mod rules;
mod stream;
pub mod text;
pub mod transform;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

pub use self::{
    file::{PolicyError, PolicySource},
    handle::{PolicyHandle, watch},
    rules::{Decision, Policy},
};
use self::{
    request::{apply_changes, scan},
    rules::{RequestHeaders, Rule},
    stream::ResponseScan,
};
pub use crate::record::{Action, Change, FindingRecord, PolicyRecord};
use crate::{
    alerts::Alerter,
    pipeline::{BodyFlow, Exchange, Flow, Module, ModuleError, ProxyRequest, Rejection},
    provider::ErrorCode,
    record::AuditRecord,
};

pub const NAME: &str = "policy";

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
        if policy.response_needs_headers() {
            ex.ext.insert(RequestHeaders(req.head.headers.clone()));
        }
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
                action: d.action.unwrap_or(Action::Allow),
                rules: d.rules.clone(),
                findings: d.findings.clone(),
                tags: d.tags.clone(),
                changes: d.changes.clone(),
                shadow: d.shadow,
            });
        }
    }
}

#[cfg(test)]
mod proptests;
