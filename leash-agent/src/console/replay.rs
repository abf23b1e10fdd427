//! The policy page's replay panel: `POST /api/policy/replay` with a
//! candidate policy (YAML) decides the recorded requests again and answers
//! what would change (see `policy::replay`) — on this host's trail, on the
//! admin runtime's blocking pool, at most `MAX_REPLAYED` records (the first
//! in the window, oldest first; `truncated` says so: narrow `since`). Sealed content is not opened here (`leash policy replay
//! --identity` does that); redacted content is read, never shown.

use http::StatusCode;
use serde_json::json;

use super::{Answer, Console, Source, query_param};
use crate::policy::{
    Policy,
    replay::{Report, Sources},
};

/// Most records one replay decides.
pub const MAX_REPLAYED: u64 = 20_000;

impl Console {
    pub(super) async fn replay(&self, body: &[u8], query: &str) -> Answer {
        let Source::Dir(dir) = &self.source else {
            return Answer::error(
                StatusCode::NOT_IMPLEMENTED,
                "replay runs on a host's own trail: use that host's console or `leash policy replay`",
            );
        };
        let Ok(text) = std::str::from_utf8(body) else {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                "send the candidate policy as YAML text",
            );
        };
        let candidate = match Policy::parse(text, "candidate") {
            Ok(p) => p.recognising_markers(),
            Err(e) => return Answer::error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
        };
        let since = match query_param(query, "since")
            .as_deref()
            .map(crate::audit::read::parse_since)
            .transpose()
        {
            Ok(s) => s,
            Err(e) => return Answer::error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let (dir, providers) = (dir.clone(), self.providers.clone());
        let capture_dir = self
            .capture
            .as_ref()
            .map(|(c, _)| c.config.dir.clone())
            .unwrap_or_default();
        let run = tokio::task::spawn_blocking(move || {
            let filter = crate::audit::read::Filter {
                since,
                ..Default::default()
            };
            let sources = Sources {
                providers: &providers,
                capture_dir: &capture_dir,
                unseal: None,
            };
            let mut report = Report::default();
            let mut truncated = false;
            crate::audit::read::for_each(&dir, |line| {
                if let Ok(record) = serde_json::from_slice(line)
                    && filter.matches(&record)
                {
                    if report.records >= MAX_REPLAYED {
                        truncated = true;
                        return false;
                    }
                    report.add(&sources, &candidate, &record);
                }
                true
            })?;
            Ok::<_, std::io::Error>((report, truncated))
        })
        .await;
        match run {
            Ok(Ok((report, truncated))) => {
                let mut out = report.to_json();
                out["truncated"] = json!(truncated);
                Answer::json(StatusCode::OK, &out)
            }
            _ => Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the audit trail",
            ),
        }
    }
}
