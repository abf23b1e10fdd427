//! `leash policy replay`: what a candidate policy would have done to the
//! traffic the audit trail holds, against what the live policy did (see
//! `policy::replay`); sealed content opens with `--identity`, each read
//! recorded in the audit trail by the running leash first, as
//! `leash audit show` does.

use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;

use crate::{
    config::{Config, Overrides},
    policy::{
        Policy,
        replay::{Report, Sources},
    },
};

/// The report as text.
fn print(report: &Report) {
    println!(
        "replayed {} records ({} with captured content, {} on metadata only; content rules cannot match those)",
        report.records, report.with_content, report.metadata_only
    );
    for (why, n) in &report.skipped {
        println!("  skipped {n}: {why}");
    }
    println!("live:      {:?}", report.live);
    println!("candidate: {:?}", report.candidate);
    if report.changes.is_empty() {
        println!("no request would be treated differently");
    }
    for ((from, to), c) in &report.changes {
        println!(
            "{from} -> {to}: {} (rules {:?}; teams {:?}; e.g. {})",
            c.count,
            c.rules,
            c.teams,
            c.examples.join(", ")
        );
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
    let unseal = |record: &Value, sealed: &[u8]| -> Result<Vec<u8>, String> {
        let id = record["id"].as_str().unwrap_or_default();
        super::show::record_read(&config, id, "leash policy replay")
            .map_err(|e| format!("{e:#}"))?;
        let identity = identity.ok_or("no identity")?;
        crate::capture::content::unseal(sealed, identity).map_err(|e| format!("content: {e}"))
    };
    let sources = Sources {
        providers: &config.providers,
        capture_dir: &config.capture.dir,
        unseal: identity.is_some().then_some(&unseal as _),
    };
    let mut report = Report::default();
    crate::audit::read::for_each(&config.audit.dir, |line| {
        if let Ok(record) = serde_json::from_slice::<Value>(line)
            && filter.matches(&record)
        {
            report.add(&sources, &policy, &record);
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
        print(&report);
    }
    Ok(())
}
