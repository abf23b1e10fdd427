//! Policy backtesting: a candidate policy decided again on recorded
//! requests, against what the live policy did (`leash policy replay`, the
//! console's replay panel).
//!
//! Each request record is decided with its captured content when capture
//! kept it redacted (each `[REDACTED:<detector>]` marker counts as that
//! detector's match: the candidate is compiled with
//! [`Policy::recognising_markers`]) or sealed and the caller can open it
//! (the exact bytes), else on its metadata alone (provider, endpoint,
//! model, team, caller) — content rules cannot match there, and the report
//! says how many records were decided each way. Nothing is sent anywhere;
//! the report holds counts and record ids, never content.

use std::{collections::BTreeMap, path::Path};

use serde_json::{Value, json};

use crate::{
    pipeline::Exchange,
    policy::Policy,
    provider::Providers,
    record::{Caller, CaptureClass, Mode},
};

/// Examples kept per change.
const EXAMPLES: usize = 5;

/// One kind of change (live action → candidate action) and where it shows.
#[derive(Default)]
pub struct Change {
    pub count: u64,
    pub rules: BTreeMap<String, u64>,
    pub teams: BTreeMap<String, u64>,
    pub examples: Vec<String>,
}

/// What the replay found.
#[derive(Default)]
pub struct Report {
    pub records: u64,
    pub with_content: u64,
    pub metadata_only: u64,
    /// Records not decided (unknown provider, unreadable content).
    pub skipped: BTreeMap<String, u64>,
    pub live: BTreeMap<String, u64>,
    pub candidate: BTreeMap<String, u64>,
    pub changes: BTreeMap<(String, String), Change>,
}

/// Opens a record's sealed content (the exact request body), for whoever
/// holds an identity and records the read first; `None`: not opened.
pub type Unseal<'a> = &'a dyn Fn(&Value, &[u8]) -> Result<Vec<u8>, String>;

/// Where the replay finds what it needs.
pub struct Sources<'a> {
    pub providers: &'a Providers,
    /// `capture.dir`.
    pub capture_dir: &'a Path,
    pub unseal: Option<Unseal<'a>>,
}

/// The request body the candidate decides on, and whether it is the
/// captured content.
fn body_of(sources: &Sources<'_>, record: &Value) -> Result<(Vec<u8>, bool), String> {
    let class = crate::capture::store::class_of(record).ok();
    if class == Some(CaptureClass::Sealed)
        && let Some(unseal) = sources.unseal
    {
        let (_, sealed) = crate::capture::store::read_checked(sources.capture_dir, record)
            .map_err(|e| format!("content: {e}"))?;
        let plain = unseal(record, &sealed)?;
        let doc: Value = serde_json::from_slice(&plain).map_err(|e| format!("content: {e}"))?;
        return crate::capture::content::exact_part(&doc, "request")
            .map(|b| (b, true))
            .ok_or_else(|| "content: no request body".to_owned());
    }
    if class == Some(CaptureClass::Redacted) {
        let (_, bytes) = crate::capture::store::read_checked(sources.capture_dir, record)
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
    /// Decides `record` again with `candidate` and counts the outcome.
    pub fn add(&mut self, sources: &Sources<'_>, candidate: &Policy, record: &Value) {
        // Events (content reads, policy changes, refusals) are no requests.
        if !record["event"].is_null() {
            return;
        }
        let Some(provider) = record["provider"]
            .as_str()
            .and_then(|p| sources.providers.get(p))
        else {
            *self.skipped.entry("unknown provider".into()).or_default() += 1;
            return;
        };
        let (body, content) = match body_of(sources, record) {
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
        // A shadow outcome is named as such: it changes nothing a client
        // sees, only what the record says would have happened.
        let label = |action: &str, shadow: bool| {
            if shadow {
                format!("{action} (shadow)")
            } else {
                action.to_owned()
            }
        };
        let live = label(
            record["policy"]["action"].as_str().unwrap_or("allow"),
            record["policy"]["shadow"] == true,
        );
        let would = label(
            decision.action.map_or("allow", |a| a.as_str()),
            decision.shadow,
        );
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

    pub fn to_json(&self) -> Value {
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
}
