//! The request side: the body read as what it is (`body`), every text in
//! it scanned, the rules decided, redactions and transforms applied —
//! shared by the module and `leash policy test`, so the test shows exactly
//! what would be forwarded.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;

use super::{
    Decision, Policy,
    body::{Body, BodyError},
    detect::Finding,
    text::Origin,
    transform,
};
use crate::{
    pipeline::{Caller, Exchange, Mode, ProxyRequest, Rejection, identify},
    provider::{ErrorCode, Provider},
    record::{Action, Change, ChangeOp},
};

/// What the request side made of a request.
pub(super) enum Verdict {
    /// Forward it, changed as `decision` records (the request was updated;
    /// `model` is the model a transform set).
    Forward {
        decision: Decision,
        model: Option<String>,
    },
    /// Refuse it with `rejection`.
    Refuse {
        decision: Decision,
        rejection: Rejection,
    },
}

/// Why `leash policy test` could not run.
#[derive(Debug, thiserror::Error)]
#[error("the request cannot be inspected: {0}")]
pub struct TestError(String);

/// Scans every text of `body`; returns the findings per text (in walk
/// order), all of them, and the detectors found in text that cannot be
/// rewritten (a PDF's).
pub(super) fn scan(
    policy: &Policy,
    body: &mut Body,
) -> (Vec<Vec<Finding>>, Vec<Finding>, Vec<usize>) {
    let mut per_text = Vec::new();
    let mut all = Vec::new();
    let mut read_only = Vec::new();
    body.for_each_text(&mut |s, origin| {
        let mut f = Vec::new();
        policy.detectors.scan(s, &mut f);
        if origin == Origin::PdfText {
            read_only.extend(f.iter().map(|x| x.detector));
        }
        all.extend(f.iter().cloned());
        per_text.push(f);
    });
    (per_text, all, read_only)
}

/// Replaces the spans of `redact` detectors with `[REDACTED:<name>]`.
pub(super) fn redact(
    policy: &Policy,
    body: &mut Body,
    per_text: &[Vec<Finding>],
    redact: &[usize],
) {
    let mut i = 0;
    body.rewrite_texts(&mut |s, _| {
        let Some(findings) = per_text.get(i) else {
            return;
        };
        i += 1;
        policy
            .detectors
            .redact(s, findings.iter().filter(|f| redact.contains(&f.detector)));
    });
}

/// A refusal of the whole body, recorded as the rule `rule`.
fn refuse(rule: &str, message: String) -> Verdict {
    Verdict::Refuse {
        decision: Decision {
            action: Some(Action::Block),
            rules: vec![rule.into()],
            ..Decision::default()
        },
        rejection: Rejection {
            status: StatusCode::BAD_REQUEST,
            code: ErrorCode::BadRequest,
            message,
        },
    }
}

impl Policy {
    /// Reads, scans and decides `req`; on `Forward`, `req` is what goes to
    /// the provider (redactions and transforms applied).
    pub(super) fn inspect(&self, ex: &Exchange, req: &mut ProxyRequest) -> Verdict {
        let content_type = req
            .head
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let mut body = match Body::parse(content_type, &req.body) {
            Ok(body) => body,
            Err(e @ BodyError::DuplicateKey(_)) => {
                return refuse("duplicate_key", format!("leash: {e}; policy refuses it"));
            }
            Err(_) if self.forward_unparseable => {
                return Verdict::Forward {
                    decision: Decision {
                        rules: vec!["on_unparseable".into()],
                        tags: vec!["uninspected".into()],
                        ..Decision::default()
                    },
                    model: None,
                };
            }
            Err(e) => {
                return refuse(
                    "on_unparseable",
                    format!("leash: {e}, so policy cannot inspect it"),
                );
            }
        };
        let (per_text, findings, read_only) = scan(self, &mut body);
        // The tools as this parse reads the body (identify's quick look may
        // not have read it: another encoding, a multipart form).
        let offered = body
            .json_mut()
            .map(|v| crate::pipeline::tools::offered(v))
            .unwrap_or_default();
        let mut decision = self.decide(ex, req, &findings, offered);
        if decision.block_rule.is_none() && decision.redact.iter().any(|d| read_only.contains(d)) {
            // A PDF cannot be rewritten: what a rule would redact there must
            // not leave unredacted.
            let rule = decision.rules.last().cloned().unwrap_or_default();
            decision.action = Some(Action::Block);
            decision.block_rule = Some(rule.clone());
            return Verdict::Refuse {
                decision,
                rejection: Rejection {
                    status: StatusCode::FORBIDDEN,
                    code: ErrorCode::PolicyBlocked,
                    message: format!(
                        "leash: request blocked by policy rule `{rule}`: it redacts text inside a PDF, which cannot be rewritten"
                    ),
                },
            };
        }
        if let Some(rule) = &decision.block_rule {
            let message = format!("leash: request blocked by policy rule `{rule}`");
            return Verdict::Refuse {
                decision,
                rejection: Rejection {
                    status: StatusCode::FORBIDDEN,
                    code: ErrorCode::PolicyBlocked,
                    message,
                },
            };
        }
        let mut changed = false;
        if !decision.redact.is_empty() {
            redact(self, &mut body, &per_text, &decision.redact);
            changed = true;
        }
        if !decision.strip.is_empty()
            && let Some(json) = body.json_mut()
        {
            let rules = &decision.strip;
            let removed = crate::pipeline::tools::strip(json, &|tool| {
                rules.iter().any(|&i| self.rules[i].m.names_tool(tool))
            });
            changed |= !removed.is_empty();
            decision.changes.extend(
                removed
                    .into_iter()
                    .map(|tool| Change::new(ChangeOp::StripTool, tool)),
            );
        }
        let mut model = None;
        if !decision.transform.is_empty() {
            // Transforms change JSON fields; other bodies keep theirs (the
            // headers and the path still change).
            let mut none = Value::Null;
            let applied = decision.transform.apply(&mut transform::Target {
                kind: ex.provider.kind,
                endpoint: &ex.endpoint,
                body: body.json_mut().unwrap_or(&mut none),
                headers: &mut req.head.headers,
                path: &mut req.upstream_path,
            });
            changed |= applied.body_changed;
            decision.changes.extend(applied.changes);
            model = applied.model;
        }
        if changed {
            req.body = body.encode();
        }
        Verdict::Forward { decision, model }
    }

    /// The decision for a request, without a network or a pipeline: what
    /// `leash policy test` prints.
    pub fn test(
        &self,
        provider: Arc<Provider>,
        endpoint: &str,
        body: &[u8],
    ) -> Result<Decision, TestError> {
        self.decide_request(
            Exchange::new(
                Mode::Gateway,
                provider,
                Caller::default(),
                endpoint.to_owned(),
            ),
            body,
        )
    }

    /// The decision for a request of exchange `ex` (its provider, caller
    /// and endpoint) with `body`: what `test` and `leash policy replay`
    /// show.
    pub fn decide_request(&self, mut ex: Exchange, body: &[u8]) -> Result<Decision, TestError> {
        let mut head = http::Request::new(()).into_parts().0;
        head.headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let mut req = ProxyRequest {
            head,
            body: Bytes::copy_from_slice(body),
            upstream_path: ex.endpoint.clone(),
        };
        identify::identify(&mut ex, &req);
        match self.inspect(&ex, &mut req) {
            Verdict::Refuse {
                rejection,
                decision,
            } if rejection.code != ErrorCode::PolicyBlocked => {
                let _ = decision;
                Err(TestError(rejection.message))
            }
            Verdict::Refuse { decision, .. } => Ok(decision),
            Verdict::Forward { mut decision, .. } => {
                if req.body != body {
                    decision.forwarded_body = Some(req.body.to_vec());
                }
                Ok(decision)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_json_valid() {
        let policy = Policy::parse(
            "version: 1\nrules: [{name: pii, match: {detectors: [email]}, action: redact}]\n",
            "p",
        )
        .unwrap();
        let raw = Bytes::from_static(br#"{"model": "m", "input": "write to a@b.co and c@d.org"}"#);
        let mut body = Body::parse(None, &raw).unwrap();
        let (per_text, all, _) = scan(&policy, &mut body);
        assert_eq!(all.len(), 2);
        let email = policy.detectors.resolve("email");
        redact(&policy, &mut body, &per_text, &email);
        let v: Value = serde_json::from_slice(&body.encode()).unwrap();
        assert_eq!(v["input"], "write to [REDACTED:email] and [REDACTED:email]");
    }
}
