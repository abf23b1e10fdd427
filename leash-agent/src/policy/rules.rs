//! The compiled rules and how they decide: which rules match an exchange,
//! the strongest action among them, and what the response side looks for.

use globset::{GlobMatcher, GlobSet};
use http::{HeaderMap, HeaderName};
use serde::Serialize;
use serde_json::{Value, json};

use super::{
    detect::{Detectors, Finding},
    transform::Transform,
};
use crate::{
    pipeline::{Exchange, ProxyRequest},
    record::{Action, Change, FindingRecord},
};

/// Which side of an exchange a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Direction {
    Request,
    Response,
    Both,
}

/// What a rule's `match` asks of an exchange, compiled when the policy
/// loads (globs: `*` matches any run of characters).
#[derive(Default)]
pub(super) struct Match {
    pub(super) provider: Option<GlobSet>,
    pub(super) model: Option<GlobSet>,
    pub(super) endpoint: Option<GlobSet>,
    pub(super) team: Option<GlobSet>,
    /// Request headers that must be present and match (response rules see
    /// the request's headers too).
    pub(super) header: Vec<(HeaderName, GlobMatcher)>,
    pub(super) caller: Option<CallerMatch>,
    /// `match.tool.offered`: one of the tools the request offers matches.
    pub(super) tool_offered: Option<GlobSet>,
    /// `match.tool.called`: a completed tool call of the answer has a
    /// matching name (response rules).
    pub(super) tool_called: Option<GlobSet>,
}

/// `match.caller`: every field given must match.
#[derive(Default)]
pub(super) struct CallerMatch {
    pub(super) uid: Option<Vec<u32>>,
    pub(super) user: Option<GlobSet>,
    pub(super) exe: Option<GlobSet>,
    pub(super) cgroup: Option<GlobSet>,
}

/// The request's headers, kept for response rules that name headers.
#[derive(Clone)]
pub(super) struct RequestHeaders(pub(super) HeaderMap);

/// Whether one of the detectors `found` in a text is one of a rule's `ds`.
/// Driven by `found` (none or a few per text) rather than by `ds`, which the
/// `secrets` group makes hundreds long: most texts match nothing, and a
/// response is judged once per JSON string.
fn any_found(ds: &[usize], found: &[usize]) -> bool {
    found.iter().any(|d| ds.contains(d))
}

/// No set: anything matches; a set: the value must be there and match.
fn matches(set: Option<&GlobSet>, value: Option<&str>) -> bool {
    set.is_none_or(|s| value.is_some_and(|v| s.is_match(v)))
}

impl Match {
    /// What the exchange itself says: provider, model, endpoint, team,
    /// caller.
    pub(super) fn exchange(&self, ex: &Exchange) -> bool {
        let c = &ex.caller;
        let caller_ok = self.caller.as_ref().is_none_or(|m| {
            m.uid
                .as_ref()
                .is_none_or(|u| c.uid.is_some_and(|x| u.contains(&x)))
                && matches(m.user.as_ref(), c.user.as_deref())
                && matches(m.exe.as_ref(), c.exe.as_deref())
                && matches(m.cgroup.as_ref(), c.cgroup.as_deref())
        });
        matches(self.provider.as_ref(), Some(&ex.provider.name))
            && matches(self.model.as_ref(), ex.model.as_deref())
            && matches(self.endpoint.as_ref(), Some(&ex.endpoint))
            && matches(self.team.as_ref(), c.team.as_deref())
            && caller_ok
    }

    /// `match.tool.offered`: none given, or one of `tools` matches.
    pub(super) fn offers(&self, tools: &[String]) -> bool {
        self.tool_offered
            .as_ref()
            .is_none_or(|s| tools.iter().any(|t| s.is_match(t)))
    }

    /// Whether this rule's `match.tool.offered` names `tool`.
    pub(super) fn names_tool(&self, tool: &str) -> bool {
        self.tool_offered.as_ref().is_some_and(|s| s.is_match(tool))
    }

    /// The request headers the rule names, all present and matching.
    pub(super) fn headers(&self, headers: &HeaderMap) -> bool {
        self.header.iter().all(|(name, pattern)| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| pattern.is_match(v))
        })
    }
}

pub(super) struct Rule {
    pub(super) name: String,
    pub(super) action: Action,
    /// `action: route`: where to.
    pub(super) route: Option<String>,
    pub(super) tags: Vec<String>,
    pub(super) transform: Transform,
    /// `Some(true)`: this rule only records (`mode: shadow` on the rule).
    pub(super) shadow: Option<bool>,
    pub(super) detectors: Option<Vec<usize>>,
    /// `match.tool.arguments`: detectors looked for in the arguments of
    /// the answer's tool calls (response rules).
    pub(super) tool_arguments: Option<Vec<usize>>,
    pub(super) direction: Direction,
    pub(super) m: Match,
}

impl Rule {
    /// Whether the rule judges the answer's tool calls (`match.tool.called`
    /// or `match.tool.arguments`) rather than its text.
    pub(super) fn judges_calls(&self) -> bool {
        self.m.tool_called.is_some() || self.tool_arguments.is_some()
    }
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
    pub(super) shadow: bool,
    pub(super) forward_unparseable: bool,
    pub(super) detectors: Detectors,
    pub(super) rules: Vec<Rule>,
}

impl Policy {
    /// This policy, taking redaction markers in a text as matches of their
    /// detectors (`leash policy replay` over redacted content).
    #[must_use]
    pub fn recognising_markers(mut self) -> Self {
        self.detectors.recognise_markers();
        self
    }

    /// Every detector the policy knows (built-in and its own).
    pub fn detectors(&self) -> &Detectors {
        &self.detectors
    }

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
    /// The tools the request offers, as the policy read the body.
    #[serde(skip)]
    pub(super) offered: Vec<String>,
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
    pub(super) transform: Transform,
    #[serde(skip)]
    pub(super) redact: Vec<usize>,
    /// The `strip` rules that matched (indices into the policy's rules).
    #[serde(skip)]
    pub(super) strip: Vec<usize>,
    /// The route a rule sends the request to (`action: route`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip)]
    pub(super) block_rule: Option<String>,
    #[serde(skip)]
    pub(super) alerts: Vec<String>,
    /// From [`Policy::test`]: the body as it would be forwarded, when
    /// redaction or a transform changed it (`None`: forwarded unchanged or
    /// blocked).
    #[serde(skip)]
    pub forwarded_body: Option<Vec<u8>>,
}

impl Decision {
    /// Adds what an earlier judgement of the same request decided.
    pub(super) fn absorb(&mut self, earlier: Self) {
        self.action = self.action.max(earlier.action);
        self.shadow |= earlier.shadow;
        for r in earlier.rules {
            if !self.rules.contains(&r) {
                self.rules.push(r);
            }
        }
        self.findings.extend(earlier.findings);
        self.tags.extend(earlier.tags);
    }
}

impl Policy {
    pub(super) fn rule_matches(
        rule: &Rule,
        ex: &Exchange,
        req: &ProxyRequest,
        found: &[usize],
        offered: &[String],
    ) -> bool {
        rule.direction != Direction::Response
            && !rule.judges_calls()
            && rule.m.offers(offered)
            && rule
                .detectors
                .as_ref()
                .is_none_or(|ds| any_found(ds, found))
            && rule.m.exchange(ex)
            && rule.m.headers(&req.head.headers)
    }

    /// Evaluates the request rules on `ex`/`req` given the findings in its
    /// texts and the tools it offers.
    pub(super) fn decide(
        &self,
        ex: &Exchange,
        req: &ProxyRequest,
        findings: &[Finding],
        offered: Vec<String>,
    ) -> Decision {
        let mut found: Vec<usize> = findings.iter().map(|f| f.detector).collect();
        found.sort_unstable();
        found.dedup();
        let mut d = Decision {
            shadow: self.shadow,
            offered,
            ..Decision::default()
        };
        for (index, rule) in self.rules.iter().enumerate() {
            if !Self::rule_matches(rule, ex, req, &found, &d.offered) {
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
                Action::Strip => d.strip.push(index),
                Action::Alert => d.alerts.push(rule.name.clone()),
                Action::Annotate => {}
                // The first route rule decides; a later block still blocks.
                // A request already on that route stays (no loop).
                Action::Route => {
                    let here = ex.unified.as_ref().and_then(|u| u.route.as_deref());
                    if d.route.is_none() && here != rule.route.as_deref() {
                        d.route.clone_from(&rule.route);
                    }
                }
            }
        }
        d
    }
}

impl Policy {
    pub(super) fn has_response_rules(&self) -> bool {
        self.rules.iter().any(|r| r.direction != Direction::Request)
    }

    /// Whether an enforcing response rule redacts: streams are then held
    /// back by `HOLD_BACK` bytes of text.
    pub(super) fn redacts_responses(&self) -> bool {
        self.rules.iter().any(|r| {
            r.direction != Direction::Request
                && r.action == Action::Redact
                && !r.shadow.unwrap_or(self.shadow)
        })
    }

    /// The first response rule that matches `found`, if any, and whether it
    /// only records (shadow).
    /// The first response rule that matches `found` (and the request's
    /// headers, kept in the exchange for rules that name headers), if any,
    /// and whether it only records (shadow).
    pub(super) fn decide_response(&self, ex: &Exchange, found: &[usize]) -> Option<(&Rule, bool)> {
        let headers = ex.ext.get::<RequestHeaders>().map(|h| &h.0);
        self.rules.iter().find_map(|rule| {
            let applies = rule.direction != Direction::Request
                && !rule.judges_calls()
                && rule.m.offers(&ex.tools)
                && rule
                    .detectors
                    .as_ref()
                    .is_some_and(|ds| any_found(ds, found))
                && rule.m.exchange(ex)
                && (rule.m.header.is_empty() || headers.is_some_and(|h| rule.m.headers(h)));
            applies.then(|| (rule, rule.shadow.unwrap_or(self.shadow)))
        })
    }

    /// Whether a response rule looks at request headers (they are then kept
    /// for the response phase).
    pub(super) fn response_needs_headers(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.direction != Direction::Request && !r.m.header.is_empty())
    }
}
