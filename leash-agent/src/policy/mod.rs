//! The policy engine: what may leave the organisation. A policy file (YAML)
//! declares custom detectors and ordered rules; the `policy` pipeline module
//! evaluates them on every request, in every API shape, and blocks, redacts,
//! transforms, annotates or alerts. `mode: shadow` decides and records but
//! changes nothing.
//!
//! Rules are evaluated in order: the first matching `block` or `allow`
//! decides and ends evaluation; `redact`, `transform`, `annotate` and
//! `alert` accumulate until then.

mod body;
mod calls;
pub mod detect;
pub mod document;
pub mod edit;
mod file;
mod handle;
pub mod replay;
mod request;
mod response;
mod rules;
mod stream;
pub mod text;
pub mod transform;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

pub use self::{
    file::{PolicyError, PolicySource},
    handle::{PolicyHandle, watch},
    rules::{Decision, Policy},
};
use self::{
    request::Verdict,
    rules::{RequestHeaders, Rule},
    stream::ResponseScan,
};
pub use crate::record::{Action, Change, FindingRecord, PolicyRecord};
use crate::{
    alerts::{AlertKey, Alerter},
    pipeline::{self, BodyFlow, Exchange, Filtered, Flow, Module, ProxyRequest},
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

impl Module for PolicyModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn request_filter<'a>(
        &'a self,
        ex: &'a mut Exchange,
        req: &'a mut ProxyRequest,
    ) -> Filtered<'a> {
        let Some(policy) = self.handle.current() else {
            return Filtered::from(Flow::Continue);
        };
        if policy.response_needs_headers() {
            ex.ext.insert(RequestHeaders(req.head.headers.clone()));
        }
        // An MCP `tools/call` is judged as an answer's tool call is.
        if let Some(message) = self.judge_mcp_call(&policy, ex) {
            return Filtered::from(Flow::Reject(pipeline::Rejection {
                status: http::StatusCode::FORBIDDEN,
                code: crate::provider::ErrorCode::PolicyBlocked,
                message,
            }));
        }
        let prior = ex.ext.remove::<Decision>();
        let mut verdict = policy.inspect(ex, req);
        if let Some(prior) = prior {
            match &mut verdict {
                Verdict::Forward { decision, .. } | Verdict::Refuse { decision, .. } => {
                    decision.absorb(prior);
                }
            }
        }
        let decision = match &verdict {
            Verdict::Forward { decision, .. } | Verdict::Refuse { decision, .. } => decision,
        };
        if ex.tools.is_empty() && !decision.offered.is_empty() {
            ex.tools.clone_from(&decision.offered);
        }
        let blocked = decision.block_rule.iter().map(|r| (r, "policy_block"));
        for (rule, kind) in decision
            .alerts
            .iter()
            .map(|r| (r, "policy_alert"))
            .chain(blocked)
        {
            self.alerts.fire(
                &AlertKey {
                    kind: "policy",
                    name: rule,
                    team: ex.caller.team.as_deref(),
                },
                json!({
                    "type": kind, "rule": rule, "request_id": ex.id,
                    "provider": ex.provider.name, "model": ex.model, "team": ex.caller.team,
                    "findings": decision.findings,
                }),
            );
        }
        match verdict {
            Verdict::Refuse {
                decision,
                rejection,
            } => {
                ex.ext.insert(decision);
                Filtered::from(Flow::Reject(rejection))
            }
            Verdict::Forward { decision, .. } if decision.route.is_some() => {
                let route = decision.route.clone().unwrap_or_default();
                ex.ext.insert(decision);
                Filtered::from(Flow::Reroute(route))
            }
            Verdict::Forward { decision, model } => {
                if let Some(model) = model {
                    ex.model = Some(model);
                    // Gemini names the model in the path: the endpoint follows.
                    let endpoint = ex.provider.upstream.endpoint_of(&req.upstream_path);
                    endpoint.clone_into(&mut ex.endpoint);
                }
                ex.ext.insert(decision);
                Filtered::from(Flow::Continue)
            }
        }
    }

    fn rewrites_response_body(&self) -> bool {
        // A reloaded file may add response rules: a policy file always
        // counts. Rules on tools filter MCP tool listings.
        self.handle.file().is_some()
            || self
                .handle
                .current()
                .is_some_and(|p| p.has_response_rules() || p.names_tools())
    }

    fn response_filter(&self, ex: &mut Exchange, head: &mut http::response::Parts) {
        let listing = calls::is_mcp_listing(ex);
        if self
            .handle
            .current()
            .is_some_and(|p| p.has_response_rules() || (listing && p.names_tools()))
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
        // Taken out of its slot and put back, not removed and inserted:
        // every chunk would box the state anew.
        let Some(mut scan_state) = ex.ext.get_mut::<ResponseScan>().map(std::mem::take) else {
            return BodyFlow::Continue;
        };
        let flow = if calls::is_mcp_listing(ex) {
            Self::filter_listing(&policy, ex, &mut scan_state, chunk, end)
        } else if ex.stream {
            self.scan_stream(&policy, ex, &mut scan_state, chunk, end)
        } else {
            self.scan_document(&policy, ex, &mut scan_state, chunk, end)
        };
        if let Some(slot) = ex.ext.get_mut::<ResponseScan>() {
            *slot = scan_state;
        }
        flow
    }

    fn logging(&self, ex: &Exchange, record: &mut AuditRecord) {
        if let Some(judged) = ex.ext.get::<calls::CallsJudged>() {
            let names = pipeline::tools::bounded(&judged.0);
            crate::record::Tools::add_called(&mut record.tools, &names);
        }
        if let Some(d) = ex.ext.get::<Decision>() {
            record.policy = Some(PolicyRecord {
                action: d.action.unwrap_or(Action::Allow),
                rules: d.rules.clone(),
                findings: d.findings.clone(),
                tags: d.tags.clone(),
                changes: d.changes.clone(),
                shadow: d.shadow,
                route: d.route.clone(),
            });
        }
    }
}

#[cfg(test)]
mod corpus;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod secrets_corpus;
