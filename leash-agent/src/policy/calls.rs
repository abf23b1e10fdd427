//! The answer's tool calls, judged by the rules that name them
//! (`match.tool.called`, `match.tool.arguments`) once each call's arguments
//! are complete. A stream's events are held from the first event of a call
//! to the one that completes it (text before it keeps flowing), so a
//! blocked call's arguments never reach the client; the hold is bounded in
//! bytes and time (`stream`), and ends the stream when exceeded. A whole body that
//! may call tools (the request offered some) is read to its end first.

use bytes::Bytes;
use http::StatusCode;

use super::{
    Policy, PolicyModule, Rule,
    detect::Finding,
    rules::RequestHeaders,
    stream::{ResponseScan, stopped_by},
};
use crate::{
    pipeline::{BodyFlow, Exchange, Rejection, calls::Call},
    provider::ErrorCode,
    record::Action,
};

/// Largest whole answer read before its tool calls are judged; a larger
/// answer to a request that offered tools is ended.
pub(super) const MAX_WHOLE: usize = 8 << 20;

impl Policy {
    /// Whether a rule judges tool calls: streams then hold each call until
    /// its arguments are complete.
    pub(super) fn judges_calls(&self) -> bool {
        self.rules.iter().any(Rule::judges_calls)
    }
}

impl PolicyModule {
    /// Judges completed calls: records every rule that matches; returns the
    /// message to end the answer with when an enforcing `block` matched.
    pub(super) fn judge_calls(
        &self,
        policy: &Policy,
        ex: &mut Exchange,
        calls: &[Call],
    ) -> Option<String> {
        for call in calls {
            if let Some(message) = self.judge_call(policy, ex, call) {
                return Some(message);
            }
        }
        None
    }

    /// A whole answer to a request that offered tools: read to its end
    /// (nothing delivered meanwhile), then its calls judged. Returns the
    /// flow while reading, or when the answer is refused; `None` once
    /// `chunk` is the whole answer, to be scanned as any other.
    pub(super) fn whole_answer(
        &self,
        policy: &Policy,
        ex: &mut Exchange,
        st: &mut ResponseScan,
        chunk: &mut Bytes,
        end: bool,
    ) -> Option<BodyFlow> {
        st.whole.extend_from_slice(chunk);
        *chunk = Bytes::new();
        let refuse = |message: String| {
            Some(BodyFlow::Abort(Rejection {
                status: StatusCode::FORBIDDEN,
                code: ErrorCode::PolicyBlocked,
                message,
            }))
        };
        if st.whole.len() > MAX_WHOLE {
            st.whole = Vec::new();
            stopped_by(ex, "tool_answer_too_large");
            return refuse(format!(
                "leash: an answer to a request with tools exceeded the {} MiB policy reads to check its tool calls",
                MAX_WHOLE >> 20
            ));
        }
        if !end {
            return Some(BodyFlow::Continue);
        }
        let whole = std::mem::take(&mut st.whole);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&whole) {
            let calls = crate::pipeline::calls::in_body(&v);
            if let Some(message) = self.judge_calls(policy, ex, &calls) {
                return refuse(message);
            }
        }
        *chunk = Bytes::from(whole);
        None
    }

    fn judge_call(&self, policy: &Policy, ex: &mut Exchange, call: &Call) -> Option<String> {
        let mut findings: Option<Vec<Finding>> = None;
        for rule in policy.rules.iter().filter(|r| r.judges_calls()) {
            let headers = ex.ext.get::<RequestHeaders>().map(|h| &h.0);
            let applies = rule
                .m
                .tool_called
                .as_ref()
                .is_none_or(|s| s.is_match(&call.name))
                && rule.m.exchange(ex)
                && rule.m.offers(&ex.tools)
                && (rule.m.header.is_empty() || headers.is_some_and(|h| rule.m.headers(h)));
            if !applies {
                continue;
            }
            let found = findings.get_or_insert_with(|| {
                let mut f = Vec::new();
                policy
                    .detectors
                    .scan(&crate::pipeline::calls::readable(&call.arguments), &mut f);
                f
            });
            let hits: Vec<Finding> = match &rule.tool_arguments {
                None => Vec::new(),
                Some(ds) => {
                    let hits: Vec<Finding> = found
                        .iter()
                        .filter(|f| ds.contains(&f.detector))
                        .cloned()
                        .collect();
                    if hits.is_empty() {
                        continue;
                    }
                    hits
                }
            };
            let shadow = rule.shadow.unwrap_or(policy.shadow);
            self.record_response(policy, ex, rule, shadow, &hits);
            if shadow {
                continue;
            }
            match rule.action {
                Action::Allow => return None,
                Action::Block => {
                    return Some(format!(
                        "leash: tool call `{}` blocked by policy rule `{}`",
                        call.name, rule.name
                    ));
                }
                _ => {}
            }
        }
        None
    }
}
