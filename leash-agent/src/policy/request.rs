//! The request side: every text of the body scanned, the rules decided,
//! redactions and transforms applied — shared by the module and `leash
//! policy test`, so the test shows exactly what would be forwarded.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::{Decision, Policy, detect::Finding, text, transform};
use crate::pipeline::{Exchange, ProxyRequest};

/// Scans every text of `body`; returns the findings per text (in walk
/// order) and all of them.
pub(super) fn scan(policy: &Policy, body: &mut Value) -> (Vec<Vec<Finding>>, Vec<Finding>) {
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
pub(super) fn apply_changes(
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
pub(super) fn redact(
    policy: &Policy,
    body: &mut Value,
    per_text: &[Vec<Finding>],
    redact: &[usize],
) {
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

impl Policy {
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
