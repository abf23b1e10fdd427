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
use serde_json::Value;

use crate::{
    mcp::McpRequest,
    pipeline::{BodyFlow, Exchange, Rejection, calls::Call},
    provider::ErrorCode,
    record::{Action, Change, ChangeOp},
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

    /// Whether a rule names tools at all (offered or called).
    pub(super) fn names_tools(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.judges_calls() || r.m.tool_offered.is_some())
    }

    /// Whether an MCP server's `tools/list` shows `tool` to the exchange's
    /// caller. The enforcing rules that name the tool (`tool.called` or
    /// `tool.offered`) and match the exchange decide in order: the first
    /// `allow` shows it; the first `block` or `strip` by its name alone
    /// (no `tool.arguments`) hides it.
    fn shows_tool(&self, ex: &Exchange, tool: &str) -> bool {
        let headers = ex.ext.get::<RequestHeaders>().map(|h| &h.0);
        for r in &self.rules {
            let named =
                r.m.tool_called.as_ref().is_some_and(|s| s.is_match(tool)) || r.m.names_tool(tool);
            if !named
                || r.shadow.unwrap_or(self.shadow)
                || !r.m.exchange(ex)
                || !(r.m.header.is_empty() || headers.is_some_and(|h| r.m.headers(h)))
            {
                continue;
            }
            match r.action {
                Action::Allow => return true,
                Action::Block | Action::Strip if r.tool_arguments.is_none() => return false,
                _ => {}
            }
        }
        true
    }
}

/// A refusal of the whole answer (nothing of it was delivered).
fn refusal(message: String) -> BodyFlow {
    BodyFlow::Abort(Rejection {
        status: StatusCode::FORBIDDEN,
        code: ErrorCode::PolicyBlocked,
        message,
    })
}

/// Reads a whole answer into `st.whole`, delivering nothing meanwhile:
/// the whole answer once `end`, else the flow to return (go on reading,
/// or, past `MAX_WHOLE`, refuse it, recorded as rule `too_large`).
fn gather(
    st: &mut ResponseScan,
    ex: &mut Exchange,
    chunk: &mut Bytes,
    end: bool,
    too_large: &str,
) -> Result<Vec<u8>, BodyFlow> {
    st.whole.extend_from_slice(chunk);
    *chunk = Bytes::new();
    if st.whole.len() > MAX_WHOLE {
        st.whole = Vec::new();
        stopped_by(ex, too_large);
        return Err(refusal(format!(
            "leash: an answer exceeded the {} MiB policy reads whole to check its tools",
            MAX_WHOLE >> 20
        )));
    }
    if !end {
        return Err(BodyFlow::Continue);
    }
    Ok(std::mem::take(&mut st.whole))
}

/// The names of the calls judged in this exchange (the record's
/// `tools.called` includes them: a blocked call's events never reach the
/// usage module).
#[derive(Clone, Default)]
pub(super) struct CallsJudged(pub(super) Vec<String>);

/// Whether the exchange is an MCP `tools/list`.
pub(super) fn is_mcp_listing(ex: &Exchange) -> bool {
    ex.ext
        .get::<McpRequest>()
        .is_some_and(|r| r.record.method == "tools/list")
}

/// Removes from a JSON-RPC message (or batch) the listed tools the caller
/// may not see; returns their names.
fn filter_message(policy: &Policy, ex: &Exchange, v: &mut Value) -> Vec<String> {
    let mut hidden = Vec::new();
    let messages: Vec<&mut Value> = match v {
        Value::Array(batch) => batch.iter_mut().collect(),
        one => vec![one],
    };
    for m in messages {
        if let Some(Value::Array(tools)) = m.get_mut("result").and_then(|r| r.get_mut("tools")) {
            tools.retain(|t| {
                let name = t["name"].as_str().unwrap_or_default();
                let shown = policy.shows_tool(ex, name);
                if !shown {
                    hidden.push(name.to_owned());
                }
                shown
            });
        }
    }
    hidden
}

impl PolicyModule {
    /// An MCP `tools/call`, judged by the rules on tool calls; the message
    /// to refuse it with, if a `block` matched.
    pub(super) fn judge_mcp_call(&self, policy: &Policy, ex: &mut Exchange) -> Option<String> {
        let calls: Vec<Call> = ex
            .ext
            .get::<McpRequest>()?
            .calls
            .iter()
            .map(|(name, arguments)| Call {
                name: name.clone(),
                arguments: arguments.clone(),
            })
            .collect();
        self.judge_calls(policy, ex, &calls)
    }

    /// An MCP server's `tools/list` answer (JSON, or server-sent events of
    /// JSON-RPC messages), read to its end, without the tools the caller
    /// may not see; each hidden one recorded as a `strip_tool` change.
    pub(super) fn filter_listing(
        policy: &Policy,
        ex: &mut Exchange,
        st: &mut ResponseScan,
        chunk: &mut Bytes,
        end: bool,
    ) -> BodyFlow {
        let whole = match gather(st, ex, chunk, end, "tool_listing_too_large") {
            Ok(whole) => whole,
            Err(flow) => return flow,
        };
        let mut hidden = Vec::new();
        let out = if let Ok(mut v) = serde_json::from_slice::<Value>(&whole) {
            hidden = filter_message(policy, ex, &mut v);
            if hidden.is_empty() {
                whole
            } else {
                v.to_string().into_bytes()
            }
        } else {
            let text = String::from_utf8_lossy(&whole);
            let mut out = String::with_capacity(text.len());
            for line in text.split_inclusive('\n') {
                let data = line.strip_prefix("data:").map(str::trim);
                match data.and_then(|d| serde_json::from_str::<Value>(d).ok()) {
                    Some(mut v) => {
                        let gone = filter_message(policy, ex, &mut v);
                        if gone.is_empty() {
                            out.push_str(line);
                        } else {
                            hidden.extend(gone);
                            out.push_str("data: ");
                            out.push_str(&v.to_string());
                            out.push('\n');
                        }
                    }
                    None => out.push_str(line),
                }
            }
            out.into_bytes()
        };
        if !hidden.is_empty() {
            let d = ex.ext.get_or_insert_default::<super::Decision>();
            d.action = d.action.max(Some(Action::Strip));
            d.changes.extend(
                hidden
                    .into_iter()
                    .map(|t| Change::new(ChangeOp::StripTool, t)),
            );
        }
        *chunk = Bytes::from(out);
        BodyFlow::Continue
    }

    /// Judges completed calls: records every rule that matches; returns the
    /// message to end the answer with when an enforcing `block` matched.
    pub(super) fn judge_calls(
        &self,
        policy: &Policy,
        ex: &mut Exchange,
        calls: &[Call],
    ) -> Option<String> {
        for call in calls {
            // Named in the record even when the call never reaches anyone.
            ex.ext
                .get_or_insert_default::<CallsJudged>()
                .0
                .push(call.name.clone());
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
        let whole = match gather(st, ex, chunk, end, "tool_answer_too_large") {
            Ok(whole) => whole,
            Err(flow) => return Some(flow),
        };
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&whole) {
            let calls = crate::pipeline::calls::in_body(&v);
            if let Some(message) = self.judge_calls(policy, ex, &calls) {
                return Some(refusal(message));
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
