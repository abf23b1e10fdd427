//! The console's rule editor: one change to the policy file's rules (add,
//! replace, move, delete, enable or disable), spliced into the file's text
//! so that everything outside the changed rule — comments, blank lines, key
//! order, quoting — stays byte for byte. Every splice is checked by parsing
//! its result and comparing it with the intended document; when the file's
//! layout does not allow a safe splice (flow style, tabs, unusual
//! indentation) the file is regenerated from its parsed form, and the
//! result says so.

use std::fmt::Write as _;

use serde::Deserialize;
use serde_norway::{Mapping, Value};

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("the policy file cannot be edited here: {0}")]
    File(String),
    #[error("`{field}`: {reason}")]
    Input { field: String, reason: String },
}

fn input(field: &str, reason: impl Into<String>) -> EditError {
    EditError::Input {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// One change, as the console sends it (`{"op": "add", "rule": {...}}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Edit {
    /// A new rule at position `at` (default: after the last).
    Add {
        rule: serde_json::Value,
        at: Option<usize>,
        #[serde(default)]
        detector: Option<NewDetector>,
    },
    /// Rule `index` replaced.
    Replace {
        index: usize,
        rule: serde_json::Value,
        #[serde(default)]
        detector: Option<NewDetector>,
    },
    /// Rule `from` moved to position `to` (rules are evaluated in order).
    Move {
        from: usize,
        to: usize,
    },
    Delete {
        index: usize,
    },
    /// `enabled: false` keeps a rule in the file but out of the policy.
    Enable {
        index: usize,
        enabled: bool,
    },
}

/// A custom regex detector added with a rule (`detectors.<name>.regex`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDetector {
    pub name: String,
    pub regex: String,
}

/// The file after an edit.
#[derive(Debug)]
pub struct Edited {
    pub text: String,
    /// Rewritten from its parsed form: comments were not kept.
    pub regenerated: bool,
    /// What changed, in words: "added rule `x`".
    pub summary: String,
}

/// The first line of a regenerated file.
pub const REGENERATED: &str = "# Rewritten by the Leash console's rule editor: this file's layout could not be\n# edited in place, so its comments were not kept.\n";

/// Applies `edit` to the policy text.
pub fn apply(text: &str, edit: &Edit) -> Result<Edited, EditError> {
    let doc = parse(text)?;
    let mut rules = rules_of(&doc)?;
    let rule_name = |rules: &[Value], i: usize| {
        rules
            .get(i)
            .and_then(|r| r.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    let check_index = |field: &str, i: usize, len: usize| {
        if i < len {
            Ok(())
        } else {
            Err(input(field, format!("no rule {i}: the policy has {len}")))
        }
    };
    let mut expected = doc.clone();
    let detector = match edit {
        Edit::Add { detector, .. } | Edit::Replace { detector, .. } => detector.as_ref(),
        _ => None,
    };
    if let Some(d) = detector {
        add_detector_value(&mut expected, d)?;
    }
    let summary;
    let change = match edit {
        Edit::Add { rule, at, .. } => {
            let rule = rule_value(rule)?;
            let at = at.unwrap_or(rules.len()).min(rules.len());
            summary = format!("added rule `{}`", name_of(&rule));
            rules.insert(at, rule.clone());
            Splice::Insert(at, rule)
        }
        Edit::Replace { index, rule, .. } => {
            check_index("index", *index, rules.len())?;
            let rule = rule_value(rule)?;
            summary = format!("changed rule `{}`", name_of(&rule));
            rules[*index] = rule.clone();
            Splice::Replace(*index, rule)
        }
        Edit::Move { from, to } => {
            check_index("from", *from, rules.len())?;
            check_index("to", *to, rules.len())?;
            summary = format!(
                "moved rule `{}` from position {} to {}",
                rule_name(&rules, *from),
                from + 1,
                to + 1
            );
            let r = rules.remove(*from);
            rules.insert(*to, r);
            Splice::Move(*from, *to)
        }
        Edit::Delete { index } => {
            check_index("index", *index, rules.len())?;
            summary = format!("deleted rule `{}`", rule_name(&rules, *index));
            rules.remove(*index);
            Splice::Delete(*index)
        }
        Edit::Enable { index, enabled } => {
            check_index("index", *index, rules.len())?;
            let verb = if *enabled { "enabled" } else { "disabled" };
            summary = format!("{verb} rule `{}`", rule_name(&rules, *index));
            let rule = set_enabled(&rules[*index], *enabled);
            rules[*index] = rule.clone();
            Splice::Enable(*index, *enabled, rule)
        }
    };
    expected.insert(Value::from("rules"), Value::Sequence(rules));
    // The splice, checked: the text must parse to exactly the intended
    // document, or the file is regenerated.
    let base = detector.map_or(Some(text.to_owned()), |d| splice_detector(text, d));
    let candidates = base.map(|t| splice(&t, &change)).unwrap_or_default();
    if let Some(t) = candidates
        .into_iter()
        .find(|t| parse(t).is_ok_and(|d| d == expected))
    {
        return Ok(Edited {
            text: t,
            regenerated: false,
            summary,
        });
    }
    let body = serde_norway::to_string(&Value::Mapping(expected))
        .map_err(|e| EditError::File(e.to_string()))?;
    Ok(Edited {
        text: format!("{REGENERATED}{body}"),
        regenerated: true,
        summary,
    })
}

/// A unified diff of two texts, for the preview.
pub fn diff(before: &str, after: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header("policy (saved)", "policy (edited)")
        .to_string()
}

fn parse(text: &str) -> Result<Mapping, EditError> {
    if text.trim().is_empty() {
        return Ok(Mapping::new());
    }
    match serde_norway::from_str::<Value>(text) {
        Ok(Value::Mapping(m)) => Ok(m),
        Ok(Value::Null) => Ok(Mapping::new()),
        Ok(_) => Err(EditError::File("the policy is not a mapping".into())),
        Err(e) => Err(EditError::File(e.to_string())),
    }
}

fn rules_of(doc: &Mapping) -> Result<Vec<Value>, EditError> {
    match doc.get("rules") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Sequence(s)) => Ok(s.clone()),
        Some(_) => Err(EditError::File("`rules` is not a list".into())),
    }
}

fn name_of(rule: &Value) -> &str {
    rule.get("name").and_then(Value::as_str).unwrap_or("?")
}

/// The order a rule's keys are written in; others follow.
const RULE_KEYS: &[&str] = &[
    "name",
    "enabled",
    "mode",
    "match",
    "action",
    "route",
    "tags",
    "set_model",
    "max_tokens",
    "system_prepend",
    "system_append",
    "drop_fields",
    "set_headers",
    "remove_headers",
];
const MATCH_KEYS: &[&str] = &[
    "detectors",
    "direction",
    "provider",
    "model",
    "endpoint",
    "team",
    "caller",
    "header",
];

/// Drops what a form leaves empty: nulls, empty strings, lists and maps.
fn prune(v: serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    match v {
        J::Null => None,
        J::String(s) if s.trim().is_empty() => None,
        J::String(s) => Some(J::String(s.trim().to_owned())),
        J::Array(a) => {
            let a: Vec<_> = a.into_iter().filter_map(prune).collect();
            (!a.is_empty()).then_some(J::Array(a))
        }
        J::Object(o) => {
            let o: serde_json::Map<_, _> = o
                .into_iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                .collect();
            (!o.is_empty()).then_some(J::Object(o))
        }
        other => Some(other),
    }
}

/// `m` with the keys in `order` first.
fn ordered(m: &Mapping, order: &[&str]) -> Mapping {
    let mut out = Mapping::new();
    for k in order {
        if let Some(v) = m.get(*k) {
            out.insert(Value::from(*k), v.clone());
        }
    }
    for (k, v) in m {
        if !out.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// A rule from the form, as it is written to the file.
fn rule_value(json: &serde_json::Value) -> Result<Value, EditError> {
    if !json.is_object() {
        return Err(input("rule", "a rule is an object"));
    }
    let Some(pruned) = prune(json.clone()) else {
        return Err(input("rule.name", "a rule needs a name"));
    };
    if pruned
        .get("name")
        .and_then(serde_json::Value::as_str)
        .is_none()
    {
        return Err(input("rule.name", "a rule needs a name"));
    }
    let Ok(Value::Mapping(mut m)) = serde_norway::to_value(&pruned) else {
        return Err(input("rule", "a rule is an object"));
    };
    if m.get("enabled") == Some(&Value::Bool(true)) {
        m.remove("enabled");
    }
    if let Some(Value::Mapping(matcher)) = m.get("match") {
        let matcher = ordered(matcher, MATCH_KEYS);
        m.insert(Value::from("match"), Value::Mapping(matcher));
    }
    Ok(Value::Mapping(ordered(&m, RULE_KEYS)))
}

fn set_enabled(rule: &Value, enabled: bool) -> Value {
    let Value::Mapping(m) = rule else {
        return rule.clone();
    };
    let mut m = m.clone();
    m.remove("enabled");
    if !enabled {
        m.insert(Value::from("enabled"), Value::Bool(false));
    }
    Value::Mapping(ordered(&m, RULE_KEYS))
}

fn add_detector_value(doc: &mut Mapping, d: &NewDetector) -> Result<(), EditError> {
    if !crate::field::valid_name(&d.name) {
        return Err(input(
            "detector.name",
            format!(
                "`{}` is not a detector name (lower case letters, digits, - and _)",
                d.name
            ),
        ));
    }
    if let Err(e) = regex::Regex::new(&d.regex) {
        return Err(input("detector.regex", e.to_string()));
    }
    let detectors = doc
        .entry(Value::from("detectors"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if detectors.is_null() {
        *detectors = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(detectors) = detectors else {
        return Err(EditError::File("`detectors` is not a mapping".into()));
    };
    if detectors.contains_key(d.name.as_str()) {
        return Err(input(
            "detector.name",
            format!("a detector `{}` exists already", d.name),
        ));
    }
    let mut body = Mapping::new();
    body.insert(Value::from("regex"), Value::from(d.regex.clone()));
    detectors.insert(Value::from(d.name.clone()), Value::Mapping(body));
    Ok(())
}

// ---- the text ----------------------------------------------------------------

enum Splice {
    Insert(usize, Value),
    Replace(usize, Value),
    Move(usize, usize),
    Delete(usize),
    Enable(usize, bool, Value),
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// A top-level key's line: `key:` with nothing after it but a comment, or
/// an empty flow collection (`[]`, `{}`), which is made a block.
fn header(lines: &[&str], key: &str) -> Option<(usize, bool)> {
    lines.iter().position(|l| l.starts_with(key)).and_then(|i| {
        let rest = lines[i][key.len()..].trim();
        let rest = rest.split_once(" #").map_or(rest, |(a, _)| a).trim();
        match rest {
            "" => Some((i, false)),
            r if r.starts_with('#') => Some((i, false)),
            "[]" | "{}" => Some((i, true)),
            _ => None,
        }
    })
}

/// One rule's lines: comments just above it, then the rule.
#[derive(Debug, Clone, Copy)]
struct Item {
    lead: usize,
    end: usize,
}

/// The `rules:` list as lines of the file.
struct Block<'a> {
    lines: Vec<&'a str>,
    /// The `rules:` line, and whether it was an empty flow list.
    header: usize,
    flow_empty: bool,
    indent: Option<usize>,
    items: Vec<Item>,
}

impl<'a> Block<'a> {
    fn read(text: &'a str) -> Option<Self> {
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        if lines.iter().any(|l| l.contains('\t')) {
            return None;
        }
        let (header, flow_empty) = header(&lines, "rules:")?;
        let mut items: Vec<Item> = Vec::new();
        let mut indent = None;
        for (i, line) in lines.iter().enumerate().skip(header + 1) {
            if flow_empty || is_blank(line) {
                if flow_empty {
                    break;
                }
                continue;
            }
            let n = indent_of(line);
            let content = line.trim();
            if is_comment(line) {
                // Inside a rule when indented past its dash.
                if let (Some(d), Some(last)) = (indent, items.last_mut())
                    && n > d
                {
                    last.end = i + 1;
                }
                continue;
            }
            let dash = content == "-" || content.starts_with("- ");
            if n == 0 && !dash {
                break;
            }
            match indent {
                _ if dash && indent.is_none_or(|d| d == n) => {
                    indent = Some(n);
                    let prev_end = items.last().map_or(header + 1, |it| it.end);
                    let mut lead = i;
                    while lead > prev_end
                        && is_comment(lines[lead - 1])
                        && indent_of(lines[lead - 1]) <= n
                    {
                        lead -= 1;
                    }
                    items.push(Item { lead, end: i + 1 });
                }
                Some(d) if n > d => {
                    if let Some(last) = items.last_mut() {
                        last.end = i + 1;
                    }
                }
                _ => return None,
            }
        }
        Some(Self {
            lines,
            header,
            flow_empty,
            indent,
            items,
        })
    }

    fn text(&self, from: usize, to: usize) -> String {
        self.lines[from..to].concat()
    }

    /// The rule as lines of the list.
    fn render(&self, rule: &Value) -> Option<String> {
        let d = " ".repeat(self.indent.unwrap_or(2));
        let yaml = serde_norway::to_string(rule).ok()?;
        let mut out = String::new();
        for (i, line) in yaml.lines().enumerate() {
            match (i, line.is_empty()) {
                (0, _) => {
                    let _ = writeln!(out, "{d}- {line}");
                }
                (_, true) => out.push('\n'),
                _ => {
                    let _ = writeln!(out, "{d}  {line}");
                }
            }
        }
        Some(out)
    }

    /// The item's text, with the `enabled:` line changed in place.
    fn toggled(&self, item: Item, enabled: bool) -> Option<String> {
        let first = (item.lead..item.end).find(|&i| !is_comment(self.lines[i]))?;
        let dash = self.lines[first];
        let after = dash.get(indent_of(dash) + 1..)?;
        if after.trim().is_empty() {
            return None;
        }
        let key_indent = indent_of(dash) + 1 + indent_of(after);
        let mut out = String::new();
        for (i, line) in self.lines[item.lead..item.end].iter().enumerate() {
            let is_enabled_line =
                indent_of(line) == key_indent && line.trim_start().starts_with("enabled:");
            if !is_enabled_line {
                out.push_str(line);
            }
            if item.lead + i == first && !enabled {
                if !line.ends_with('\n') {
                    out.push('\n');
                }
                let _ = writeln!(out, "{}enabled: false", " ".repeat(key_indent));
            }
        }
        Some(out)
    }
}

/// The edited text, in the ways it can be spliced, best first (each is
/// checked by the caller); none: regenerate.
fn splice(text: &str, splice: &Splice) -> Vec<String> {
    let mut out = Vec::new();
    if let Splice::Enable(i, enabled, _) = splice
        && let Some(block) = Block::read(text)
        && let Some(item) = block.items.get(*i)
        && let Some(toggled) = block.toggled(*item, *enabled)
    {
        out.push(block.assemble(|pieces, _| pieces[*i].clone_from(&toggled)));
    }
    out.extend(splice_rules(text, splice));
    out
}

fn splice_rules(text: &str, splice: &Splice) -> Option<String> {
    let block = Block::read(text);
    let Some(block) = block else {
        // No `rules:` at all: a new list at the end.
        let Splice::Insert(0, rule) = splice else {
            return None;
        };
        if text.lines().any(|l| l.starts_with("rules")) {
            return None;
        }
        let probe = Block {
            lines: Vec::new(),
            header: 0,
            flow_empty: false,
            indent: Some(2),
            items: Vec::new(),
        };
        let sep = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        return Some(format!("{text}{sep}rules:\n{}", probe.render(rule)?));
    };
    let rendered = match splice {
        Splice::Insert(_, rule) | Splice::Replace(_, rule) | Splice::Enable(_, _, rule) => {
            Some(block.render(rule)?)
        }
        Splice::Move(..) | Splice::Delete(_) => None,
    };
    let lead_of = |i: usize| {
        let it = block.items[i];
        (it.lead..it.end)
            .find(|&l| !is_comment(block.lines[l]))
            .map(|first| block.text(it.lead, first))
    };
    let kept_lead = match splice {
        Splice::Replace(i, _) | Splice::Enable(i, _, _) => Some(lead_of(*i)?),
        _ => None,
    };
    Some(block.assemble(|pieces, gaps| match splice {
        Splice::Insert(at, _) => {
            let new_gap = gaps.first().cloned().unwrap_or_default();
            pieces.insert(*at, rendered.clone().unwrap_or_default());
            if pieces.len() > 1 {
                gaps.push(new_gap);
            }
        }
        Splice::Replace(i, _) | Splice::Enable(i, _, _) => {
            pieces[*i] = kept_lead.clone().unwrap_or_default() + rendered.as_deref().unwrap_or("");
        }
        Splice::Move(from, to) => {
            let p = pieces.remove(*from);
            pieces.insert(*to, p);
        }
        Splice::Delete(i) => {
            pieces.remove(*i);
            if !gaps.is_empty() {
                gaps.remove((*i).min(gaps.len() - 1));
            }
        }
    }))
}

impl Block<'_> {
    /// The file with the rules' texts (`pieces`) and what separates them
    /// (`gaps`) changed by `change`; the rest as it was.
    fn assemble(&self, change: impl FnOnce(&mut Vec<String>, &mut Vec<String>)) -> String {
        let mut pieces: Vec<String> = self
            .items
            .iter()
            .map(|it| self.text(it.lead, it.end))
            .collect();
        // What separates rules (blank lines), kept by position.
        let mut gaps: Vec<String> = self
            .items
            .windows(2)
            .map(|w| self.text(w[0].end, w[1].lead))
            .collect();
        change(&mut pieces, &mut gaps);
        let start = self.items.first().map_or(self.header + 1, |it| it.lead);
        let end = self.items.last().map_or(self.header + 1, |it| it.end);
        let mut out = self.text(0, self.header);
        if self.flow_empty {
            out.push_str("rules:\n");
        } else {
            out.push_str(&self.text(self.header, start));
        }
        for (i, p) in pieces.iter().enumerate() {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            if i > 0 {
                out.push_str(gaps.get(i - 1).map_or("", String::as_str));
            }
            out.push_str(p);
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&self.text(end, self.lines.len()));
        out
    }
}

/// Adds `detectors.<name>.regex` to the text: at the end of the
/// `detectors:` block, or as a new block before `rules:`.
fn splice_detector(text: &str, d: &NewDetector) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut entry = Mapping::new();
    let mut body = Mapping::new();
    body.insert(Value::from("regex"), Value::from(d.regex.clone()));
    entry.insert(Value::from(d.name.clone()), Value::Mapping(body));
    let yaml = serde_norway::to_string(&Value::Mapping(entry)).ok()?;
    let indented = |n: usize| -> String {
        let pad = " ".repeat(n);
        yaml.lines().fold(String::new(), |mut out, l| {
            let _ = writeln!(out, "{pad}{l}");
            out
        })
    };
    let Some((h, flow_empty)) = header(&lines, "detectors:") else {
        if lines.iter().any(|l| l.starts_with("detectors")) {
            return None;
        }
        let at = lines
            .iter()
            .position(|l| l.starts_with("rules"))
            .unwrap_or(lines.len());
        let mut out = lines[..at].concat();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("detectors:\n");
        out.push_str(&indented(2));
        out.push_str(&lines[at..].concat());
        return Some(out);
    };
    if flow_empty {
        let mut out = lines[..h].concat();
        out.push_str("detectors:\n");
        out.push_str(&indented(2));
        out.push_str(&lines[h + 1..].concat());
        return Some(out);
    }
    let mut end = h + 1;
    let mut indent = None;
    for (i, line) in lines.iter().enumerate().skip(h + 1) {
        if is_blank(line) || is_comment(line) {
            continue;
        }
        let n = indent_of(line);
        if n == 0 {
            break;
        }
        indent.get_or_insert(n);
        end = i + 1;
    }
    let mut out = lines[..end].concat();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&indented(indent.unwrap_or(2)));
    out.push_str(&lines[end..].concat());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# Our policy: reviewed by security weekly.
version: 1
detectors:
  ticket:        # internal ticket ids
    regex: 'TCK-[0-9]{6}'
rules:
  # Keys never leave.
  - name: block-secrets
    match: { detectors: [secrets] }   # flow style inside is fine
    action: block

  # Personal data is masked.
  - name: redact-pii
    match:
      detectors: [email, phone]
    action: redact
# Reviewed 2026-11.
on_unparseable: block
";

    fn rule(name: &str, action: &str) -> serde_json::Value {
        serde_json::json!({"name": name, "action": action, "match": {"detectors": ["ticket"], "team": [""]}, "route": null})
    }

    fn edit(text: &str, e: &Edit) -> Edited {
        let out = apply(text, e).unwrap_or_else(|e| panic!("{e}"));
        crate::policy::Policy::parse(&out.text, "edited")
            .unwrap_or_else(|e| panic!("{e}\n{}", out.text));
        out
    }

    fn names(text: &str) -> Vec<String> {
        rules_of(&parse(text).unwrap())
            .unwrap()
            .iter()
            .map(|r| name_of(r).to_owned())
            .collect()
    }

    #[test]
    fn each_edit_keeps_the_comments_outside_the_rule() {
        let kept = [
            "# Our policy",
            "# internal ticket ids",
            "# Keys never leave.",
            "# Reviewed 2026-11.",
            "# flow style inside",
        ];
        let cases = [
            Edit::Add {
                rule: rule("tickets", "alert"),
                at: None,
                detector: None,
            },
            Edit::Add {
                rule: rule("tickets", "alert"),
                at: Some(0),
                detector: None,
            },
            Edit::Move { from: 1, to: 0 },
            Edit::Enable {
                index: 1,
                enabled: false,
            },
            Edit::Replace {
                index: 1,
                rule: rule("redact-pii", "redact"),
                detector: None,
            },
        ];
        for case in &cases {
            let out = edit(FILE, case);
            assert!(!out.regenerated, "{case:?}\n{}", out.text);
            for c in kept {
                assert!(out.text.contains(c), "{case:?} lost {c}\n{}", out.text);
            }
        }
        let moved = edit(FILE, &Edit::Move { from: 1, to: 0 });
        assert_eq!(names(&moved.text), ["redact-pii", "block-secrets"]);
        // A rule's own comment travels with it.
        let pii = moved.text.find("# Personal data").unwrap();
        assert!(
            pii < moved.text.find("# Keys never leave.").unwrap(),
            "{}",
            moved.text
        );
        assert_eq!(
            moved.summary,
            "moved rule `redact-pii` from position 2 to 1"
        );
        let first = edit(
            FILE,
            &Edit::Add {
                rule: rule("t", "alert"),
                at: Some(0),
                detector: None,
            },
        );
        assert_eq!(names(&first.text), ["t", "block-secrets", "redact-pii"]);
        let deleted = edit(FILE, &Edit::Delete { index: 0 });
        assert_eq!(names(&deleted.text), ["redact-pii"]);
        assert!(
            !deleted.text.contains("Keys never leave"),
            "{}",
            deleted.text
        );
    }

    #[test]
    fn disable_and_enable_round_trip_to_the_same_text() {
        let off = edit(
            FILE,
            &Edit::Enable {
                index: 0,
                enabled: false,
            },
        );
        assert!(off.text.contains("    enabled: false\n"), "{}", off.text);
        assert_eq!(off.summary, "disabled rule `block-secrets`");
        let on = edit(
            &off.text,
            &Edit::Enable {
                index: 0,
                enabled: true,
            },
        );
        assert_eq!(on.text, FILE);
        let policy = crate::policy::Policy::parse(&off.text, "off").unwrap();
        assert_eq!(policy.describe()["rules"].as_array().map(Vec::len), Some(1));
    }

    /// `rule` added with a new detector `name` (`regex`).
    fn add_with(rule: serde_json::Value, name: &str, regex: &str) -> Edit {
        Edit::Add {
            rule,
            at: None,
            detector: Some(NewDetector {
                name: name.into(),
                regex: regex.into(),
            }),
        }
    }

    /// A new rule `orders` on a new detector `order_id` (`regex`).
    fn orders(regex: &str) -> Edit {
        add_with(
            serde_json::json!({"name": "orders", "action": "block", "match": {"detectors": ["order_id"]}}),
            "order_id",
            regex,
        )
    }

    #[test]
    fn a_new_detector_joins_the_detectors_block() {
        let out = edit(FILE, &orders("ORD-[0-9]{8}"));
        assert!(!out.regenerated, "{}", out.text);
        assert!(
            out.text.contains("  order_id:\n    regex: ORD-[0-9]{8}\n"),
            "{}",
            out.text
        );
        // Into a file without one.
        let bare = "version: 1\nrules: []\n";
        let out = edit(bare, &orders("ORD"));
        assert!(!out.regenerated, "{}", out.text);
        assert_eq!(names(&out.text), ["orders"]);
        let err = apply(FILE, &add_with(rule("x", "block"), "ticket", "x"));
        assert!(err.is_err_and(|e| e.to_string().contains("exists already")));
        let err = apply(FILE, &add_with(rule("x", "block"), "bad", "("));
        assert!(err.is_err_and(|e| e.to_string().starts_with("`detector.regex`")));
    }

    #[test]
    fn layouts_that_cannot_be_spliced_are_regenerated_and_say_so() {
        let add_b = || Edit::Add {
            rule: serde_json::json!({"name": "b", "action": "alert", "match": {"detectors": ["email"]}}),
            at: None,
            detector: None,
        };
        let flow =
            "version: 1\nrules: [{name: a, action: block, match: {detectors: [email]}}]  # one\n";
        let out = edit(flow, &add_b());
        assert!(out.regenerated);
        assert!(out.text.starts_with(REGENERATED));
        assert_eq!(names(&out.text), ["a", "b"]);
        // Zero-indented lists and files without rules splice.
        let zero =
            "version: 1\nrules:\n- name: a\n  action: block\n  match: {detectors: [email]}\n";
        let out = edit(zero, &add_b());
        assert!(!out.regenerated, "{}", out.text);
        let out = edit("version: 1\n", &add_b());
        assert!(!out.regenerated, "{}", out.text);
        assert_eq!(names(&out.text), ["b"]);
    }

    #[test]
    fn bad_input_names_its_field() {
        let e = apply(FILE, &Edit::Delete { index: 5 }).unwrap_err();
        assert_eq!(e.to_string(), "`index`: no rule 5: the policy has 2");
        let e = apply(
            FILE,
            &Edit::Add {
                rule: serde_json::json!({"action": "block"}),
                at: None,
                detector: None,
            },
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "`rule.name`: a rule needs a name");
        assert!(apply("version: [", &Edit::Delete { index: 0 }).is_err());
    }
}
