//! The policy file: its YAML form, where it comes from (a file or inline in
//! the config), and compiling it into a [`Policy`] — detectors, rules and
//! transforms checked, every error naming its field.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

use super::{
    Policy, Rule,
    detect::{Custom, Detectors},
    rules::{CallerMatch, Direction, Match},
    transform::{self, Transform},
};
use crate::record::Action;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("invalid policy {policy}: {source}")]
    Parse {
        policy: String,
        source: crate::field::YamlError,
    },
    #[error("invalid policy {policy}: `{field}`: {reason}")]
    Invalid {
        policy: String,
        field: String,
        reason: String,
    },
}

// ---- the file as written ---------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) version: u32,
    pub(super) mode: Option<PolicyMode>,
    #[serde(default)]
    pub(super) detectors: BTreeMap<String, RawDetector>,
    #[serde(default)]
    pub(super) rules: Vec<RawRule>,
    pub(super) on_unparseable: Option<Unparseable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDetector {
    pub(super) regex: Option<String>,
    pub(super) keywords: Option<Vec<String>>,
    #[serde(default)]
    pub(super) case_sensitive: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: String,
    /// `false`: kept in the file but out of the policy (the console's
    /// "disable"); still checked, so enabling it cannot fail.
    pub(super) enabled: Option<bool>,
    #[serde(rename = "match", default)]
    pub(super) matcher: RawMatch,
    pub(super) action: Action,
    /// `action: route`: the route matching requests go to.
    pub(super) route: Option<String>,
    #[serde(default)]
    pub(super) tags: Vec<String>,
    pub(super) mode: Option<PolicyMode>,
    // transform
    pub(super) set_model: Option<String>,
    pub(super) max_tokens: Option<u64>,
    pub(super) system_prepend: Option<String>,
    pub(super) system_append: Option<String>,
    #[serde(default)]
    pub(super) drop_fields: Vec<String>,
    #[serde(default)]
    pub(super) set_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) remove_headers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMatch {
    pub(super) detectors: Option<Vec<String>>,
    pub(super) provider: Option<Vec<String>>,
    pub(super) model: Option<Vec<String>>,
    pub(super) endpoint: Option<Vec<String>>,
    pub(super) direction: Option<Direction>,
    pub(super) team: Option<Vec<String>>,
    pub(super) header: Option<BTreeMap<String, String>>,
    pub(super) caller: Option<RawCaller>,
    pub(super) tool: Option<RawTool>,
}

/// `match.tool`: the tools a request offers, the calls an answer makes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTool {
    /// Names or globs (`shell*`); one offered tool matching is enough.
    pub(super) offered: Option<Vec<String>>,
    /// Names or globs of tools the answer calls (a response rule).
    pub(super) called: Option<Vec<String>>,
    /// Detectors looked for in a call's arguments (a response rule).
    pub(super) arguments: Option<Vec<String>>,
}

impl RawTool {
    fn judges_calls(&self) -> bool {
        self.called.is_some() || self.arguments.is_some()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCaller {
    pub(super) uid: Option<Vec<u32>>,
    pub(super) user: Option<Vec<String>>,
    pub(super) exe: Option<Vec<String>>,
    pub(super) cgroup: Option<Vec<String>>,
}

/// `match` of a rule, its globs compiled.
fn compile_match(m: &RawMatch, field: &str, name: &str) -> Result<Match, PolicyError> {
    let set = |key: &str, patterns: Option<&Vec<String>>| {
        patterns
            .map(|p| crate::field::globs(p))
            .transpose()
            .map_err(|e| invalid(name, format!("{field}.match.{key}"), e))
    };
    let mut header = Vec::new();
    for (h, pattern) in m.header.iter().flatten() {
        let n = http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
            invalid(
                name,
                format!("{field}.match.header"),
                format!("`{h}` is not a header name"),
            )
        })?;
        let glob = globset::Glob::new(pattern)
            .map_err(|e| invalid(name, format!("{field}.match.header.{h}"), e.to_string()))?;
        header.push((n, glob.compile_matcher()));
    }
    let caller = match &m.caller {
        None => None,
        Some(c) => Some(CallerMatch {
            uid: c.uid.clone(),
            user: set("caller.user", c.user.as_ref())?,
            exe: set("caller.exe", c.exe.as_ref())?,
            cgroup: set("caller.cgroup", c.cgroup.as_ref())?,
        }),
    };
    Ok(Match {
        provider: set("provider", m.provider.as_ref())?,
        model: set("model", m.model.as_ref())?,
        endpoint: set("endpoint", m.endpoint.as_ref())?,
        team: set("team", m.team.as_ref())?,
        header,
        caller,
        tool_offered: set(
            "tool.offered",
            m.tool.as_ref().and_then(|t| t.offered.as_ref()),
        )?,
        tool_called: set(
            "tool.called",
            m.tool.as_ref().and_then(|t| t.called.as_ref()),
        )?,
    })
}

/// `mode` of the policy or of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum PolicyMode {
    Enforce,
    Shadow,
}

/// `on_unparseable`: what happens to a body policy cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Unparseable {
    Block,
    Forward,
}

pub(super) fn invalid(
    name: &str,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> PolicyError {
    PolicyError::Invalid {
        policy: name.to_owned(),
        field: field.into(),
        reason: reason.into(),
    }
}

impl Policy {
    /// Reads and compiles a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Compiles policy text; `name` names it in errors (with line and column
    /// for syntax errors).
    pub fn parse(text: &str, name: &str) -> Result<Self, PolicyError> {
        let raw: RawPolicy =
            crate::field::from_yaml(text).map_err(|source| PolicyError::Parse {
                policy: name.to_owned(),
                source,
            })?;
        Self::compile(raw, name)
    }

    /// Compiles a policy given inline in the main config.
    pub fn from_value(value: serde_norway::Value, name: &str) -> Result<Self, PolicyError> {
        let raw: RawPolicy =
            crate::field::from_yaml_value(value).map_err(|source| PolicyError::Parse {
                policy: name.to_owned(),
                source,
            })?;
        Self::compile(raw, name)
    }

    pub(super) fn compile(raw: RawPolicy, name: &str) -> Result<Self, PolicyError> {
        if raw.version != 1 {
            return Err(invalid(name, "version", "only version 1 is known"));
        }
        let shadow = raw.mode == Some(PolicyMode::Shadow);
        let forward_unparseable = raw.on_unparseable == Some(Unparseable::Forward);
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
            .filter_map(|(i, r)| {
                let enabled = r.enabled != Some(false);
                compile_rule(r, i, name, &detectors)
                    .map(|rule| enabled.then_some(rule))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            shadow,
            forward_unparseable,
            detectors,
            rules,
        })
    }
}

pub(super) fn compile_rule(
    r: RawRule,
    i: usize,
    name: &str,
    detectors: &Detectors,
) -> Result<Rule, PolicyError> {
    let field = format!("rules[{i}] ({})", r.name);
    let action = r.action;
    let judges_calls = r.matcher.tool.as_ref().is_some_and(RawTool::judges_calls);
    // A rule on tool calls looks at answers unless it says otherwise.
    let direction = r.matcher.direction.unwrap_or(if judges_calls {
        Direction::Response
    } else {
        Direction::Request
    });
    let shadow = r.mode.map(|m| m == PolicyMode::Shadow);
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
    match (&r.route, action) {
        (None, Action::Route) => {
            return Err(invalid(
                name,
                format!("{field}.route"),
                "a route rule names the route matching requests go to",
            ));
        }
        (Some(_), a) if a != Action::Route => {
            return Err(invalid(
                name,
                format!("{field}.route"),
                "`route` needs `action: route`",
            ));
        }
        (Some(route), _) if !crate::field::valid_name(route) => {
            return Err(invalid(
                name,
                format!("{field}.route"),
                format!("`{route}` is not a route name"),
            ));
        }
        _ => {}
    }
    if action == Action::Route && direction != Direction::Request {
        return Err(invalid(
            name,
            format!("{field}.match.direction"),
            "a route rule acts on requests only",
        ));
    }
    check_needs(&r.matcher, action, direction, &field, name)?;
    let resolve = |names: Option<&Vec<String>>, key: &str| -> Result<_, PolicyError> {
        let Some(names) = names else { return Ok(None) };
        let mut out = Vec::new();
        for n in names {
            let ids = detectors.resolve(n);
            if ids.is_empty() {
                return Err(invalid(
                    name,
                    format!("{field}.match.{key}"),
                    format!("unknown detector `{n}`"),
                ));
            }
            out.extend(ids);
        }
        Ok(Some(out))
    };
    let dets = resolve(r.matcher.detectors.as_ref(), "detectors")?;
    let tool_arguments = resolve(
        r.matcher.tool.as_ref().and_then(|t| t.arguments.as_ref()),
        "tool.arguments",
    )?;
    Ok(Rule {
        name: r.name,
        action,
        route: r.route,
        tags: r.tags,
        transform,
        shadow,
        detectors: dets,
        tool_arguments,
        direction,
        m: compile_match(&r.matcher, &field, name)?,
    })
}

/// What a `redact` or `strip` rule must name, and where it acts.
fn check_needs(
    m: &RawMatch,
    action: Action,
    direction: Direction,
    field: &str,
    name: &str,
) -> Result<(), PolicyError> {
    if action == Action::Strip && m.tool.as_ref().is_none_or(|t| t.offered.is_none()) {
        return Err(invalid(
            name,
            format!("{field}.match.tool.offered"),
            "a strip rule names the offered tools it removes",
        ));
    }
    if action == Action::Strip && direction != Direction::Request {
        return Err(invalid(
            name,
            format!("{field}.match.direction"),
            "a strip rule acts on requests only",
        ));
    }
    if m.tool.as_ref().is_some_and(RawTool::judges_calls) {
        if direction == Direction::Request {
            return Err(invalid(
                name,
                format!("{field}.match.direction"),
                "tool.called and tool.arguments look at the answer's tool calls: direction response or both",
            ));
        }
        if m.detectors.is_some() {
            return Err(invalid(
                name,
                format!("{field}.match.detectors"),
                "a rule on tool calls looks for detectors in their arguments: give them in match.tool.arguments",
            ));
        }
        if !matches!(
            action,
            Action::Block | Action::Alert | Action::Annotate | Action::Allow
        ) {
            return Err(invalid(
                name,
                format!("{field}.action"),
                "a rule on tool calls can block, alert, annotate or allow",
            ));
        }
    }
    if action == Action::Redact && m.detectors.is_none() {
        return Err(invalid(
            name,
            format!("{field}.match.detectors"),
            "a redact rule needs detectors",
        ));
    }
    Ok(())
}

pub(super) fn compile_transform(
    r: &RawRule,
    field: &str,
    name: &str,
) -> Result<Transform, PolicyError> {
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

/// Where the policy comes from: the `policy` section of the config.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// `policy: { file: X }` (relative to the config file): watched and
    /// reloaded when it changes.
    File(std::path::PathBuf),
    /// The policy written inline in the config.
    Inline(serde_norway::Value),
}

impl PolicySource {
    /// The `policy` section as written; `base` resolves a relative file.
    pub fn from_raw(raw: serde_norway::Value, base: &Path) -> Self {
        let file = raw
            .as_mapping()
            .filter(|m| m.len() == 1)
            .and_then(|m| m.get("file"))
            .and_then(serde_norway::Value::as_str)
            .map(|f| crate::field::resolve(base, f.into()));
        match file {
            Some(path) => Self::File(path),
            None => Self::Inline(raw),
        }
    }

    /// The file to watch, if the policy has one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::File(path) => Some(path),
            Self::Inline(_) => None,
        }
    }

    /// Reads and compiles the policy.
    pub fn load(&self) -> Result<Policy, PolicyError> {
        match self {
            Self::File(path) => Policy::load(path),
            Self::Inline(value) => Policy::from_value(value.clone(), "policy (inline)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compile_errors_name_the_field() {
        let cases = [
            ("version: 2\n", "version"),
            (
                "version: 1\nrules: [{name: r, action: nuke}]\n",
                "`rules[0].action`: unknown variant `nuke`",
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
}
