//! The response side, whole bodies: what a response rule found is recorded
//! once, and a non-streaming body of any size is scanned incrementally
//! (`document`), matches redacted in place or the body aborted.

use bytes::Bytes;
use http::StatusCode;
use regex::SetMatches;
use serde_json::json;

use super::{
    Decision, Policy, PolicyModule, Rule,
    detect::Finding,
    document,
    stream::{Document, ResponseScan},
};
use crate::{
    alerts::AlertKey,
    pipeline::{BodyFlow, Exchange, Rejection},
    provider::ErrorCode,
    record::{Action, FindingRecord},
};

impl PolicyModule {
    /// Records a response-side match in the exchange's decision.
    pub(super) fn record_response(
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
        for det in rule
            .detectors
            .iter()
            .flatten()
            .chain(rule.tool_arguments.iter().flatten())
        {
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
                &AlertKey {
                    kind: "policy",
                    name: &rule.name,
                    team: ex.caller.team.as_deref(),
                },
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
    pub(super) fn scan_document(
        &self,
        policy: &Policy,
        ex: &mut Exchange,
        st: &mut ResponseScan,
        chunk: &mut Bytes,
        end: bool,
    ) -> BodyFlow {
        if policy.judges_calls()
            && !ex.tools.is_empty()
            && let Some(flow) = self.whole_answer(policy, ex, st, chunk, end)
        {
            return flow;
        }
        if matches!(st.document, Document::Unknown) {
            st.document = document::BodyKind::sniff(st.content_type.as_deref(), chunk)
                .map_or(Document::Binary, |kind| {
                    Document::Scanning(Box::new(document::DocumentScan::new(kind)))
                });
        }
        let Document::Scanning(scanner) = &mut st.document else {
            return BodyFlow::Continue;
        };
        let mut judge = DocumentJudge {
            module: self,
            policy,
            ex,
            redacting: &mut st.redacting,
            reported: &mut st.reported,
            blocked: None,
            candidates: None,
        };
        let (out, stop) = scanner.feed(chunk, end, &mut judge);
        let blocked = judge.blocked;
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
}

/// The policy's judge of one body's text: the whole strings of a batch go
/// through the detectors' prefilter together, and only the detectors it
/// names run on each one (see `Detectors::candidates`).
struct DocumentJudge<'a> {
    module: &'a PolicyModule,
    policy: &'a Policy,
    ex: &'a mut Exchange,
    redacting: &'a mut Vec<usize>,
    reported: &'a mut usize,
    blocked: Option<String>,
    /// What the last batch may hold.
    candidates: Option<SetMatches>,
}

impl document::Judge for DocumentJudge<'_> {
    fn batches(&self) -> bool {
        self.policy.detectors.batches()
    }

    fn any(&mut self, texts: &str) -> bool {
        self.candidates = self.policy.detectors.candidates(texts);
        self.candidates.is_some()
    }

    /// One window of a document's text: records what matched (once, however
    /// many windows see it) and says what to replace, or to stop. A whole
    /// string of a batch is searched by the batch's candidates only.
    fn judge(&mut self, pass: document::Pass<'_>) -> document::Verdict {
        let policy = self.policy;
        let mut all = Vec::new();
        match self.candidates.as_ref().filter(|_| pass.batched) {
            Some(c) => policy.detectors.scan_among(pass.text, c, &mut all),
            None => policy.detectors.scan(pass.text, &mut all),
        }
        if all.is_empty() && self.redacting.is_empty() {
            // Most texts (member names, identifiers): no rule can apply
            // and nothing is replaced.
            return document::Verdict::default();
        }
        let base = usize::try_from(pass.base).unwrap_or(usize::MAX);
        let fresh: Vec<Finding> = all
            .into_iter()
            .filter(|f| f.end > pass.fresh_from)
            .collect();
        let new: Vec<Finding> = fresh
            .iter()
            .filter(|f| base + f.start >= *self.reported)
            .cloned()
            .collect();
        let mut found: Vec<usize> = new.iter().map(|f| f.detector).collect();
        found.sort_unstable();
        found.dedup();
        let mut verdict = document::Verdict::default();
        if let Some((rule, shadow)) = policy.decide_response(self.ex, &found) {
            self.module
                .record_response(policy, self.ex, rule, shadow, &new);
            *self.reported = new
                .iter()
                .map(|f| base + f.end)
                .max()
                .unwrap_or(*self.reported);
            if !shadow && rule.action == Action::Block {
                self.blocked = Some(format!(
                    "leash: response blocked by policy rule `{}`",
                    rule.name
                ));
                verdict.stop = true;
                return verdict;
            }
            if !shadow && rule.action == Action::Redact {
                self.redacting.extend(rule.detectors.iter().flatten());
            }
        }
        verdict.redact = fresh
            .iter()
            .filter(|f| self.redacting.contains(&f.detector))
            .map(|f| {
                let name = &policy.detectors.get(f.detector).name;
                (f.start, f.end, format!("[REDACTED:{name}]"))
            })
            .collect();
        verdict
    }
}
