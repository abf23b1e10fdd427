//! Changing the policy from the console: the whole file (`PUT /api/policy`)
//! or one rule at a time with the rule editor (`POST /api/policy/edit`,
//! `?preview` for the YAML diff and what `leash policy check` says without
//! saving). A save is refused unless `admin.allow_policy_edit`, unless the
//! file is still the one the form was made from, and unless the result
//! passes the checks of `leash policy check`; it replaces the file
//! atomically, loads it, and is recorded — who, what, the file's hashes
//! before and after — in the policy's load history and as a
//! `policy_change` event in the audit trail.

use std::path::Path;

use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::{Answer, Console};
use crate::{
    policy::{
        Policy,
        edit::{self, Edit},
    },
    record::{AuditRecord, Caller, Event, PolicyChange},
};

/// The policy file's hash, as the form's `base`.
pub fn hash(text: &str) -> String {
    crate::hex::encode(&sha2::Sha256::digest(text.as_bytes()))
}

/// The rule editor's view of the file: its rules as written (with their
/// position), the detector names a rule may use, and the file's hash.
pub fn state(text: Option<&str>) -> Value {
    let Some(text) = text else {
        return Value::Null;
    };
    let doc: Value = serde_norway::from_str::<serde_norway::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or(Value::Null);
    let custom: Vec<String> = doc["detectors"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let catalog: Vec<Value> = crate::policy::detect::catalog(&custom)
        .into_iter()
        .map(|(group, names)| json!({"group": group, "names": names}))
        .collect();
    json!({
        "base": hash(text),
        "rules": doc["rules"].as_array().cloned().unwrap_or_default(),
        "catalog": catalog,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditRequest {
    /// The hash of the file the form was made from.
    base: String,
    edit: Edit,
}

/// What a save changed, for the history and the trail.
struct Saved<'a> {
    actor: &'a str,
    summary: &'a str,
    before: &'a str,
    regenerated: bool,
}

impl Console {
    fn editable_file(&self) -> Result<&Path, Answer> {
        if !self.policy_edit {
            return Err(Answer::error(
                StatusCode::FORBIDDEN,
                "editing the policy from the console is off; set admin.allow_policy_edit: true",
            ));
        }
        self.policy.file().ok_or_else(|| {
            Answer::error(
                StatusCode::CONFLICT,
                "the policy is inline in the config; only a policy file can be edited",
            )
        })
    }

    /// `PUT /api/policy`: the whole file replaced by `body` (YAML).
    pub(super) fn save_policy(&self, actor: &str, body: &[u8]) -> Answer {
        let _one = self
            .edit_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let file = match self.editable_file() {
            Ok(f) => f.to_owned(),
            Err(a) => return a,
        };
        let Ok(text) = std::str::from_utf8(body) else {
            return Answer::error(StatusCode::BAD_REQUEST, "the policy must be UTF-8 YAML");
        };
        let before = std::fs::read_to_string(&file).unwrap_or_default();
        self.write_and_load(
            &file,
            text,
            &Saved {
                actor,
                summary: "replaced the policy file",
                before: &before,
                regenerated: false,
            },
        )
    }

    /// `POST /api/policy/edit[?preview]`: `{"base": HASH, "edit": {...}}`.
    pub(super) fn edit_policy(&self, actor: &str, body: &[u8], preview: bool) -> Answer {
        let _one = self
            .edit_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let request: EditRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return Answer::error(
                    StatusCode::BAD_REQUEST,
                    &format!("send {{\"base\", \"edit\"}}: {e}"),
                );
            }
        };
        let Some(file) = self.policy.file() else {
            return Answer::error(
                StatusCode::CONFLICT,
                "the policy is inline in the config; only a policy file can be edited",
            );
        };
        let before = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "console: cannot read the policy file");
                return Answer::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot read the policy file",
                );
            }
        };
        if hash(&before) != request.base {
            return Answer::error(
                StatusCode::CONFLICT,
                "the policy file changed since this page loaded it: reload the page and make the change again",
            );
        }
        let edited = match edit::apply(&before, &request.edit) {
            Ok(e) => e,
            // A preview answers what a save would: refused, and why.
            Err(e) if preview => {
                return Answer::json(
                    StatusCode::OK,
                    &json!({"check": {"ok": false, "error": e.to_string()}, "diff": ""}),
                );
            }
            Err(e) => return Answer::error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
        };
        if preview {
            let check = Policy::parse(&edited.text, &file.display().to_string());
            return Answer::json(
                StatusCode::OK,
                &json!({
                    "summary": edited.summary,
                    "yaml": edited.text,
                    "diff": edit::diff(&before, &edited.text),
                    "regenerated": edited.regenerated,
                    "check": match check {
                        Ok(p) => json!({"ok": true, "rules": p.describe()["rules"].as_array().map_or(0, Vec::len)}),
                        Err(e) => json!({"ok": false, "error": e.to_string()}),
                    },
                }),
            );
        }
        let file = match self.editable_file() {
            Ok(f) => f.to_owned(),
            Err(a) => return a,
        };
        self.write_and_load(
            &file,
            &edited.text,
            &Saved {
                actor,
                summary: &edited.summary,
                before: &before,
                regenerated: edited.regenerated,
            },
        )
    }

    /// Checks `text` as `leash policy check` does, writes it beside the
    /// file and renames it over the file (never a half-written file), then
    /// loads it; records the change.
    fn write_and_load(&self, file: &Path, text: &str, saved: &Saved<'_>) -> Answer {
        if let Err(e) = Policy::parse(text, &file.display().to_string()) {
            return Answer::error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string());
        }
        let tmp = file.with_extension("leash-console.tmp");
        let written = std::fs::write(&tmp, text)
            .and_then(|()| {
                if let Ok(meta) = std::fs::metadata(file) {
                    std::fs::set_permissions(&tmp, meta.permissions())?;
                }
                std::fs::File::open(&tmp)?.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::error!(file = %file.display(), error = %e, "console: cannot write the policy file");
            return Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot write the policy file",
            );
        }
        let trigger = format!("console: {} by {}", saved.summary, saved.actor);
        let loaded = self.policy.reload();
        self.policy.note(
            &trigger,
            loaded.as_ref().err().map(ToString::to_string).as_deref(),
        );
        if let Some(pipeline) = &self.pipeline {
            let mut event =
                AuditRecord::event(Event::PolicyChange, pipeline.host(), Caller::default());
            event.policy_change = Some(PolicyChange {
                actor: saved.actor.to_owned(),
                change: saved.summary.to_owned(),
                file: file.display().to_string(),
                before_sha256: hash(saved.before),
                after_sha256: hash(text),
                regenerated: saved.regenerated,
            });
            pipeline.audit_event(event);
        }
        tracing::warn!(file = %file.display(), actor = saved.actor, change = saved.summary, "policy changed from the console");
        match loaded {
            Ok(()) => {
                let mut answer = self.policy_state();
                answer["saved"] =
                    json!({"summary": saved.summary, "regenerated": saved.regenerated});
                Answer::json(StatusCode::OK, &answer)
            }
            Err(e) => Answer::error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
        }
    }
}
