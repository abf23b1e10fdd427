//! `leash audit export`: records for auditors, as JSON Lines (the sealed
//! lines exactly as written, so each still verifies) or CSV, with the chain
//! proof of the exported run: its first `prev_hash` (the anchor, the hash
//! of the record before it) and its last hash, which the full trail or the
//! fleet store confirm. The run is contiguous in the chain: from the first
//! record at or after `--since` to the last at or before `--until`, so it
//! verifies on its own (`leash audit verify --export FILE`).

use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::audit::{chain, read};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
}

const CSV_COLUMNS: [&str; 17] = [
    "seq",
    "hash",
    "ts",
    "id",
    "host",
    "event",
    "provider",
    "model",
    "team",
    "user",
    "exe",
    "action",
    "rules",
    "status",
    "input_tokens",
    "output_tokens",
    "cost_usd",
];

fn csv_field(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(";"),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn csv_row(r: &Value) -> String {
    let cells = [
        &r["seq"],
        &r["hash"],
        &r["ts"],
        &r["id"],
        &r["host"],
        &r["event"],
        &r["provider"],
        &r["model"],
        &r["caller"]["team"],
        &r["caller"]["user"],
        &r["caller"]["exe"],
        &r["policy"]["action"],
        &r["policy"]["rules"],
        &r["status"],
        &r["usage"]["input_tokens"],
        &r["usage"]["output_tokens"],
        &r["cost_usd"],
    ];
    cells.map(csv_field).join(",")
}

fn ts_of(r: &Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(r["ts"].as_str()?, &Rfc3339).ok()
}

/// Records stamped after `--until` held back, waiting for an earlier-stamped
/// one after them (stamps are start times, so the chain is nearly, not
/// exactly, in stamp order); past this many the export ends.
const MAX_HELD: usize = 10_000;

/// Writes the run to `out` (one line in memory at a time, plus the few held
/// back at the end of the window) and returns its proof and the records in
/// it that have stored content.
pub fn export(
    dir: &Path,
    format: Format,
    (since, until): (Option<OffsetDateTime>, Option<OffsetDateTime>),
    out: &mut dyn std::io::Write,
) -> anyhow::Result<(chain::RunProof, Vec<Value>)> {
    let mut with_content = Vec::new();
    if format == Format::Csv {
        writeln!(out, "{}", CSV_COLUMNS.join(","))?;
    }
    let mut checker = chain::RunChecker::default();
    let mut started = false;
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut failed: Option<anyhow::Error> = None;
    let mut emit = |line: &[u8], checker: &mut chain::RunChecker| -> anyhow::Result<()> {
        checker.push(line).map_err(anyhow::Error::msg)?;
        let v: Value = serde_json::from_slice(line)?;
        match format {
            Format::Jsonl => {
                out.write_all(line)?;
                out.write_all(b"\n")?;
            }
            Format::Csv => writeln!(out, "{}", csv_row(&v))?,
        }
        if v["content"]["sha256"].is_string() {
            with_content.push(v);
        }
        Ok(())
    };
    read::for_each(dir, |line| {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            failed = Some(anyhow::anyhow!("a record of the trail is not JSON"));
            return false;
        };
        let ts = ts_of(&v);
        if !started && since.is_some_and(|s| ts.is_none_or(|t| t < s)) {
            return true;
        }
        started = true;
        if until.is_some_and(|u| ts.is_some_and(|t| t > u)) {
            held.push(line.to_vec());
            return held.len() < MAX_HELD;
        }
        for h in held.drain(..).chain(std::iter::once(line.to_vec())) {
            if let Err(e) = emit(&h, &mut checker) {
                failed = Some(e);
                return false;
            }
        }
        true
    })?;
    if let Some(e) = failed {
        return Err(e.context("the trail is broken in that window (run `leash audit verify`)"));
    }
    let proof = checker
        .finish()
        .map_err(anyhow::Error::msg)
        .context("no records in that window")?;
    Ok((proof, with_content))
}

/// The content of the exported records, one JSON line each: redacted
/// content (each read recorded by the running leash first), sealed content
/// as it is stored (still encrypted: base64 of the age file), or why it is
/// missing.
pub fn export_content(
    config: &crate::config::Config,
    records: &[Value],
    out: &mut dyn std::io::Write,
) -> anyhow::Result<usize> {
    use base64::Engine as _;
    let mut n = 0;
    for r in records {
        let id = r["id"].as_str().unwrap_or_default();
        let line = match super::show::stored_content(config, r) {
            Ok((crate::record::CaptureClass::Sealed, bytes)) => serde_json::json!({
                "record": id,
                "sealed_age_base64": base64::engine::general_purpose::STANDARD.encode(bytes),
            }),
            Ok((_, bytes)) => {
                super::show::record_read(config, id, "leash audit export")?;
                serde_json::json!({"record": id, "content": serde_json::from_slice::<Value>(&bytes)?})
            }
            Err(e) => serde_json::json!({"record": id, "missing": e.to_string()}),
        };
        writeln!(out, "{line}")?;
        n += 1;
    }
    Ok(n)
}

/// `leash audit verify --export FILE`: the run's own chain, and its proof.
pub fn verify_export(file: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(file).with_context(|| file.display().to_string())?;
    let proof = chain::verify_run(data.split(|&b| b == b'\n'))
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    println!(
        "ok: {} records, seq {} to {}, intact; anchor (hash before seq {}) {}, last hash {}",
        proof.records,
        proof.first_seq,
        proof.last_seq,
        proof.first_seq,
        proof.anchor,
        proof.last_hash
    );
    Ok(())
}
