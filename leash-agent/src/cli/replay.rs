//! `leash policy replay`: what a candidate policy would have done to the
//! traffic the audit trail holds, against what the live policy did.
//!
//! Every request record is decided again with the candidate: with its
//! captured content when capture kept it redacted (each
//! `[REDACTED:<detector>]` marker counts as that detector's match, so
//! detector rules decide as they did on the original text) or sealed and
//! an auditor's identity is given (the exact bytes; each read recorded in
//! the audit trail by the running leash first, as `leash audit show`
//! does), else on its metadata alone (provider, endpoint, model, team,
//! caller) — content rules cannot match there, and the report says how
//! many records were decided each way. Nothing is sent anywhere; no
//! content is printed (record ids name the examples).

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::{
    config::{Config, Overrides},
    pipeline::Exchange,
    policy::Policy,
    record::{Caller, CaptureClass, Mode},
};

/// Examples kept per change.
const EXAMPLES: usize = 5;

/// One kind of change (live action → candidate action) and where it shows.
#[derive(Default)]
struct Change {
    count: u64,
    rules: BTreeMap<String, u64>,
    teams: BTreeMap<String, u64>,
    examples: Vec<String>,
}

/// What the replay found.
#[derive(Default)]
struct Report {
    records: u64,
    with_content: u64,
    metadata_only: u64,
    /// Records not decided (unknown provider, unreadable content).
    skipped: BTreeMap<String, u64>,
    live: BTreeMap<String, u64>,
    candidate: BTreeMap<String, u64>,
    changes: BTreeMap<(String, String), Change>,
}

/// The request body the candidate decides on, and whether it is the
/// captured content.
fn body_of(
    config: &Config,
    record: &Value,
    identity: Option<&Path>,
) -> Result<(Vec<u8>, bool), String> {
    let class = crate::capture::store::class_of(record).ok();
    if class == Some(CaptureClass::Sealed)
        && let Some(identity) = identity
    {
        let (_, sealed) = crate::capture::store::read_checked(&config.capture.dir, record)
            .map_err(|e| format!("content: {e}"))?;
        let id = record["id"].as_str().unwrap_or_default();
        super::show::record_read(config, id, "leash policy replay")
            .map_err(|e| format!("{e:#}"))?;
        let plain = crate::capture::content::unseal(&sealed, identity)
            .map_err(|e| format!("content: {e}"))?;
        let doc: Value = serde_json::from_slice(&plain).map_err(|e| format!("content: {e}"))?;
        return crate::capture::content::exact_part(&doc, "request")
            .map(|b| (b, true))
            .ok_or_else(|| "content: no request body".to_owned());
    }
    if class == Some(CaptureClass::Redacted) {
        let (_, bytes) = crate::capture::store::read_checked(&config.capture.dir, record)
            .map_err(|e| format!("content: {e}"))?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|e| format!("content: {e}"))?;
        let body = &doc["request"]["body"];
        if let Some(json) = body.get("json") {
            return Ok((json.to_string().into_bytes(), true));
        }
        if let Some(text) = body["text"].as_str() {
            return Ok((text.as_bytes().to_vec(), true));
        }
    }
    Ok((
        json!({"model": record["model"]}).to_string().into_bytes(),
        false,
    ))
}

impl Report {
    fn add(
        &mut self,
        config: &Config,
        candidate: &Policy,
        record: &Value,
        identity: Option<&Path>,
    ) {
        let Some(provider) = record["provider"]
            .as_str()
            .and_then(|p| config.providers.get(p))
        else {
            *self.skipped.entry("unknown provider".into()).or_default() += 1;
            return;
        };
        let (body, content) = match body_of(config, record, identity) {
            Ok(b) => b,
            Err(why) => {
                *self.skipped.entry(why).or_default() += 1;
                return;
            }
        };
        let caller: Caller = serde_json::from_value(record["caller"].clone()).unwrap_or_default();
        let mode = serde_json::from_value(record["mode"].clone()).unwrap_or(Mode::Gateway);
        let endpoint = record["endpoint"].as_str().unwrap_or_default().to_owned();
        let team = caller.team.clone().unwrap_or_else(|| "-".into());
        let ex = Exchange::new(mode, std::sync::Arc::clone(provider), caller, endpoint);
        let decision = match candidate.decide_request(ex, &body) {
            Ok(d) => d,
            Err(e) => {
                *self.skipped.entry(e.to_string()).or_default() += 1;
                return;
            }
        };
        self.records += 1;
        if content {
            self.with_content += 1;
        } else {
            self.metadata_only += 1;
        }
        let live = record["policy"]["action"]
            .as_str()
            .unwrap_or("allow")
            .to_owned();
        let would = decision.action.map_or("allow", |a| a.as_str()).to_owned();
        *self.live.entry(live.clone()).or_default() += 1;
        *self.candidate.entry(would.clone()).or_default() += 1;
        if live != would {
            let change = self.changes.entry((live, would)).or_default();
            change.count += 1;
            for rule in &decision.rules {
                *change.rules.entry(rule.clone()).or_default() += 1;
            }
            *change.teams.entry(team).or_default() += 1;
            if change.examples.len() < EXAMPLES {
                change
                    .examples
                    .push(record["id"].as_str().unwrap_or_default().to_owned());
            }
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "records": self.records,
            "with_content": self.with_content,
            "metadata_only": self.metadata_only,
            "skipped": self.skipped,
            "live": self.live,
            "candidate": self.candidate,
            "changes": self.changes.iter().map(|((from, to), c)| json!({
                "from": from, "to": to, "count": c.count,
                "rules": c.rules, "teams": c.teams, "examples": c.examples,
            })).collect::<Vec<_>>(),
        })
    }

    fn print(&self) {
        println!(
            "replayed {} records ({} with captured content, {} on metadata only; content rules cannot match those)",
            self.records, self.with_content, self.metadata_only
        );
        for (why, n) in &self.skipped {
            println!("  skipped {n}: {why}");
        }
        println!("live:      {:?}", self.live);
        println!("candidate: {:?}", self.candidate);
        if self.changes.is_empty() {
            println!("no request would be treated differently");
        }
        for ((from, to), c) in &self.changes {
            println!(
                "{from} -> {to}: {} (rules {:?}; teams {:?}; e.g. {})",
                c.count,
                c.rules,
                c.teams,
                c.examples.join(", ")
            );
        }
    }
}

/// Replays the trail of `config` since `since` against the policy file
/// `candidate`.
pub fn replay(
    candidate: &Path,
    config: Option<&Path>,
    overrides: &Overrides,
    since: Option<&str>,
    identity: Option<&Path>,
    as_json: bool,
) -> anyhow::Result<()> {
    let config = Config::load(config, overrides)?;
    let policy = Policy::load(candidate)?.recognising_markers();
    let filter = crate::audit::read::Filter {
        since: since.map(crate::audit::read::parse_since).transpose()?,
        ..Default::default()
    };
    let mut report = Report::default();
    crate::audit::read::for_each(&config.audit.dir, |line| {
        if let Ok(record) = serde_json::from_slice::<Value>(line)
            && filter.matches(&record)
        {
            report.add(&config, &policy, &record, identity);
        }
        true
    })
    .with_context(|| {
        format!(
            "cannot read the audit trail in {}",
            config.audit.dir.display()
        )
    })?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        report.print();
    }
    Ok(())
}
