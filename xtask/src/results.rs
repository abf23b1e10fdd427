//! SECURITY.md's figures, written from what the tests measured
//! (`target/test-results/*.json`, written by `tests/src/results.rs`) and
//! what the last fuzz run recorded (`leash-agent/fuzz/results.json`):
//! `cargo xtask test` rewrites the table between the `figures` markers
//! after a full run; `cargo xtask security-report` does it alone.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{root, target_dir};

const BEGIN: &str =
    "<!-- figures:begin (written by `cargo xtask test` from target/test-results; do not edit) -->";
const END: &str = "<!-- figures:end -->";

fn load(dir: &Path, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

/// A number with thousands separators.
fn n(v: &Value) -> String {
    let Some(x) = v.as_u64() else {
        return v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    };
    let digits = x.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The figures: what, the test's results file, the figure (`{field}` is
/// that field of the file), and the test.
const FIGURES: &[(&str, &str, &str, &str)] = &[
    (
        "Fleet-wide budget (`fleet_budgets`), 3 gateway replicas and 2 transparent agents, 64 concurrent clients: charged / limit / one reservation (the bound on overshoot); 3 replicas without it (control)",
        "fleet_budget",
        "${charged_usd} / ${limit_usd} / ${reservation_usd}; control: ${control_usd}",
        "`tests/tests/fleet_budget.rs`",
    ),
    (
        "Malformed or adversarial requests: tried / refused with a status / closed without an answer (incomplete requests) / served (controls) / wrongly forwarded / wrong answers / crashes",
        "hostile",
        "{cases} / {refused} / {no_answer} / {served} / {wrongly_forwarded} / {wrong_answers} / {crashes} (peak gateway RSS {peak_rss_mib} MiB)",
        "`tests/tests/hostile.rs`",
    ),
    (
        "Inspection evasions (`data:` prefix, 2 MiB prompt, `id`/`type` fields, object keys, text in an image field…): blocked / controls forwarded",
        "inspection_evasions",
        "{evasions} evasions × {secrets_per_evasion} secrets: {blocked} blocked / {controls_forwarded} of {evasions} controls forwarded",
        "`tests/tests/inspection.rs`",
    ),
    (
        "Detectors over the labelled corpus (`leash-agent/corpus/corpus.jsonl`; floors 0.98 precision, 0.95 recall): lowest precision / lowest recall of any detector / hard negatives left clean",
        "detector_corpus",
        "{samples} samples ({positives} positives, {negatives} hard negatives), {detectors} detectors: {min_precision} / {min_recall} / {negatives_clean}",
        "`leash-agent/src/policy/corpus.rs`",
    ),
    (
        "The same corpus carried in bodies an evasion would use (`data:` prefix, 1 MiB string, `id`/`type` at depth, object key, inline media, multipart, JSON Lines, text): lowest precision / recall / negatives clean over all carriers",
        "detector_corpus_carriers",
        "{carriers} carriers: {min_precision} / {min_recall} / {negatives_clean}",
        "`leash-agent/src/policy/corpus.rs`",
    ),
    (
        "The same corpus as a tool call's argument in an answer (OpenAI `tool_calls`, Anthropic `tool_use`, Gemini `functionCall`, a streamed call split inside the text): lowest precision / recall / negatives clean over all carriers",
        "detector_corpus_tool_calls",
        "{carriers} carriers: {min_precision} / {min_recall} / {negatives_clean}",
        "`leash-agent/src/policy/corpus.rs`",
    ),
    (
        "Tools offered to a model (`match.tool.offered`), with the official SDKs (OpenAI chat completions and Responses API, Anthropic, Gemini, the unified API): stripped before the provider / refused with the SDK's 403 / controls forwarded with every tool",
        "tool_offers",
        "{stripped} / {blocked} / {controls} of {providers} API shapes",
        "`tests/tests/tools.rs`",
    ),
    (
        "Streamed tool calls, with the official SDKs (OpenAI chat completions and Responses API, Anthropic, Gemini, the unified API): a canary secret in the arguments ended before any byte of the call / the text before it delivered as sent / clean calls released byte for byte",
        "tool_calls",
        "{blocked_before_any_byte} / {text_on_time} / {clean_intact} of {providers} API shapes",
        "`tests/tests/tools.rs`",
    ),
    (
        "Secret detectors over the generated secrets corpus (`leash-agent/corpus/secrets.jsonl`; floors for `high`: 0.99 precision, 0.97 recall): high precision / recall, medium precision / recall",
        "secrets_corpus",
        "{samples} samples ({positives} positives, {negatives} hard negatives), {detectors} detectors: high {high_precision} / {high_recall}, medium {medium_precision} / {medium_recall}",
        "`leash-agent/src/policy/secrets_corpus.rs`",
    ),
    (
        "Every secret kind in a chat request, per provider (OpenAI, Anthropic, Gemini), through the gateway: blocked / hard-negative sets forwarded",
        "secret_kinds_gateway",
        "{kinds} kinds × {providers} providers: {blocked} blocked / {negative_sets_forwarded} forwarded ({negatives} negatives)",
        "`tests/tests/secret_kinds.rs`",
    ),
    (
        "The same through transparent interception",
        "secret_kinds_transparent",
        "{kinds} kinds × {providers} providers: {blocked} blocked / {negative_sets_forwarded} forwarded ({negatives} negatives)",
        "`tests/tests/secret_kinds.rs`",
    ),
    (
        "Non-streaming responses past the in-memory limit (10 and 100 MiB): identical to the provider's (SHA-256), and scanned",
        "large_responses",
        "{byte_exact} of 2",
        "`tests/tests/inspection.rs`",
    ),
    (
        "Audit writes failing half-way: injected / records lost / chain verifies",
        "audit_write_failures",
        "{injected} / {lost} of {records} / {verify}",
        "`tests/tests/audit.rs`",
    ),
    (
        "Console access: without the token on loopback / rebound host name / policy edit without the token / reused login code / cross-site change with a session",
        "console_access",
        "{loopback_without_token} / {rebound_host} / {policy_edit_without_token} / {reused_login_code} / {cross_site_change}",
        "`tests/tests/console.rs`",
    ),
    (
        "A host shipping as another: on the other's subject / with forged headers",
        "host_identity",
        "{cross_subject_publish} / {forged_headers}",
        "`tests/tests/fleet.rs`",
    ),
    (
        "Alert flood: policy violations / alerts sent (one per rule and team) / peak agent RSS",
        "alert_limits",
        "{violations} / {alerts} / {peak_rss_mib} MiB",
        "`tests/tests/alerts.rs`",
    ),
    (
        "Canary secrets: canaries × flows / hits in logs, audit, metrics and Leash's error bodies",
        "secrets",
        "{canaries} × {flows} (a forced panic included) / {hits}",
        "`tests/tests/secrets.rs`",
    ),
    (
        "Upstream certificates in transparent mode (expired, wrong host, self-signed): refused / requests sent",
        "upstream_certificates",
        "{refused} of 3 (502) / {sent}",
        "`tests/tests/transparent.rs`",
    ),
    (
        "Fail open: kill -9 of the agent → the client reaches the provider directly after",
        "fail_open",
        "{direct_after_kill_ms} ms",
        "`tests/tests/transparent.rs`",
    ),
    (
        "Fail closed: connections refused in the first second after kill -9 / reaching the provider / interception back after a restart",
        "fail_closed",
        "{refused_in_first_second} / {reached_provider} / {restored_after_ms} ms",
        "`tests/tests/transparent.rs`",
    ),
];

/// `template` with each `{field}` replaced by that field of `v`.
fn fill(template: &str, v: &Value) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push_str(&n(&v[&rest[open + 1..open + close]]));
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// One table row per figure the tests recorded (a test that did not run
/// says so).
fn rows(dir: &Path) -> Vec<String> {
    let row = |what: &str, figure: Option<String>, how: &str| {
        format!(
            "| {what} | {} | {how} |",
            figure.unwrap_or_else(|| "not measured in the last run".to_owned())
        )
    };
    let mut out: Vec<String> = FIGURES
        .iter()
        .map(|(what, name, template, how)| {
            row(what, load(dir, name).map(|v| fill(template, &v)), how)
        })
        .collect();
    out.push(row(
        "Fuzzing: targets / executions per target / crashes",
        fuzz_figure(),
        "`cargo xtask fuzz --minutes 10` → `leash-agent/fuzz/results.json`",
    ));
    out
}

fn fuzz_figure() -> Option<String> {
    let text = std::fs::read_to_string(root().join("leash-agent/fuzz/results.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let targets = v["targets"].as_object()?;
    let execs: Vec<u64> = targets
        .values()
        .filter_map(|t| t["executions"].as_u64())
        .collect();
    let crashes: u64 = targets.values().filter_map(|t| t["crashes"].as_u64()).sum();
    Some(format!(
        "{} targets / {} – {} / {}",
        targets.len(),
        n(&Value::from(execs.iter().min().copied().unwrap_or(0))),
        n(&Value::from(execs.iter().max().copied().unwrap_or(0))),
        crashes
    ))
}

const ESCAPES_BEGIN: &str =
    "<!-- escapes:begin (written by `cargo xtask test` from target/test-results; do not edit) -->";
const ESCAPES_END: &str = "<!-- escapes:end -->";
const CA_CHECK_BEGIN: &str =
    "<!-- ca-check:begin (written by `cargo xtask test` from target/test-results; do not edit) -->";
const CA_CHECK_END: &str = "<!-- ca-check:end -->";
const SECRETS_BEGIN: &str =
    "<!-- secrets:begin (written by `cargo xtask test` from target/test-results; do not edit) -->";
const SECRETS_END: &str = "<!-- secrets:end -->";
const OPS_BEGIN: &str = "<!-- operations:begin (written by `cargo xtask test` from target/test-results; do not edit) -->";
const OPS_END: &str = "<!-- operations:end -->";

/// README's "Operations" figures: each hand-over under load the last run
/// made (`tests/tests/handover.rs` for the gateway,
/// `tests/tests/agent_handover.rs` for the transparent agent).
fn operations_table(dir: &Path) -> String {
    let mut table = String::from(
        "| change, under open-loop load | clients | requests (rate) | failed | went direct | SSE streams in flight | cut | audit |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let mut any = false;
    for (name, clients) in [
        ("handover_restart", "gateway, a new connection per request"),
        ("handover_upgrade", "gateway, a new connection per request"),
        ("handover_reload", "gateway, a new connection per request"),
        (
            "agent_handover_upgrade",
            "intercepted, 16 keep-alive TLS connections",
        ),
        (
            "agent_handover_reload",
            "intercepted, 16 keep-alive TLS connections",
        ),
        (
            "agent_ca_rotation",
            "intercepted, 16 keep-alive TLS connections",
        ),
    ] {
        let Some(v) = load(dir, name) else {
            continue;
        };
        any = true;
        let _ = writeln!(
            table,
            "| {} | {clients} | {} ({:.0}/s) | {} | {} | {} | {} | {} |",
            v["what"].as_str().unwrap_or(name),
            v["requests"],
            v["rate"].as_f64().unwrap_or(0.0),
            v["failed"],
            v.get("direct")
                .map_or_else(|| "n/a".to_owned(), ToString::to_string),
            v["streams"],
            v["streams_cut"],
            v["audited"].as_str().unwrap_or("?"),
        );
    }
    if !any {
        table.push_str("| not measured in the last run | | | | | | | |\n");
    }
    table
}

/// README's secrets table: per group, per confidence, and (folded) per
/// detector, from `secrets_corpus.json`.
fn secrets_table(v: &Value) -> String {
    let s = |x: &Value| n(x);
    let mut t = format!(
        "{} samples ({} positives, {} hard negatives), {} detectors.\n\n| confidence | detectors | precision | recall |\n| --- | ---: | ---: | ---: |\n",
        s(&v["samples"]),
        s(&v["positives"]),
        s(&v["negatives"]),
        s(&v["detectors"])
    );
    for level in ["high", "medium"] {
        let l = &v[level];
        let _ = writeln!(
            t,
            "| {level} | {} | {} | {} |",
            s(&l["detectors"]),
            s(&l["precision"]),
            s(&l["recall"])
        );
    }
    t.push_str("\n| group | detectors | precision | recall | tp / fp / fn |\n| --- | ---: | ---: | ---: | --- |\n");
    for g in v["groups"].as_array().into_iter().flatten() {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} / {} / {} |",
            s(&g["group"]),
            s(&g["detectors"]),
            s(&g["precision"]),
            s(&g["recall"]),
            s(&g["tp"]),
            s(&g["fp"]),
            s(&g["fn"])
        );
    }
    t.push_str("\n<details><summary>Per detector</summary>\n\n| detector | group | confidence | precision | recall | tp / fp / fn |\n| --- | --- | --- | ---: | ---: | --- |\n");
    for d in v["by_detector"].as_array().into_iter().flatten() {
        let _ = writeln!(
            t,
            "| `{}` | {} | {} | {} | {} | {} / {} / {} |",
            s(&d["detector"]),
            s(&d["group"]),
            s(&d["confidence"]),
            s(&d["precision"]),
            s(&d["recall"]),
            s(&d["tp"]),
            s(&d["fp"]),
            s(&d["fn"])
        );
    }
    t.push_str("\n</details>\n");
    t
}

/// The escape suite's table: one row per `escape_*.json` the last run
/// wrote (`tests/tests/escapes.rs`).
fn escapes_table(dir: &Path) -> String {
    let mut rows: Vec<(String, Value)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name
                .strip_prefix("escape_")?
                .strip_suffix(".json")?
                .to_owned();
            let v: Value = serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()?;
            Some((stem, v))
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut table = String::from(
        "| escape | result | control (the same without the attack) | test |\n| --- | --- | --- | --- |\n",
    );
    if rows.is_empty() {
        table.push_str("| not measured in the last run | | | |\n");
    }
    for (_, v) in rows {
        let _ = writeln!(
            table,
            "| {} | {} | {} | `escapes.rs` `{}` |",
            v["escape"].as_str().unwrap_or("?"),
            v["result"].as_str().unwrap_or("?"),
            v["control"].as_str().unwrap_or("?"),
            v["name"].as_str().unwrap_or("?"),
        );
    }
    table
}

/// `text` with what lies between `begin` and `end` replaced by `body`.
fn between(text: &str, begin: &str, end: &str, body: &str) -> Result<String> {
    let (Some(a), Some(b)) = (text.find(begin), text.find(end)) else {
        anyhow::bail!("no `{begin}` … `{end}` markers");
    };
    Ok(format!("{}{begin}\n{body}{}", &text[..a], &text[b..]))
}

/// Rewrites the figures and escapes tables of SECURITY.md from the last
/// test run.
pub fn render() -> Result<()> {
    let dir = target_dir().join("test-results");
    let path = root().join("SECURITY.md");
    let text = std::fs::read_to_string(&path).context("reading SECURITY.md")?;
    let mut table = String::from("| what | figure | test |\n| --- | --- | --- |\n");
    for r in rows(&dir) {
        table.push_str(&r);
        table.push('\n');
    }
    let text = between(&text, BEGIN, END, &table)?;
    let new = between(&text, ESCAPES_BEGIN, ESCAPES_END, &escapes_table(&dir))?;
    std::fs::write(&path, new).context("writing SECURITY.md")?;
    // README: what `leash ca check` said on the test machine after
    // `leash ca install` (tests/tests/runtime_trust.rs).
    if let Some(secrets) = load(&dir, "secrets_corpus") {
        let readme = root().join("README.md");
        let text = std::fs::read_to_string(&readme).context("reading README.md")?;
        let new = between(&text, SECRETS_BEGIN, SECRETS_END, &secrets_table(&secrets))?;
        std::fs::write(&readme, new).context("writing README.md")?;
    }
    {
        let readme = root().join("README.md");
        let text = std::fs::read_to_string(&readme).context("reading README.md")?;
        let new = between(&text, OPS_BEGIN, OPS_END, &operations_table(&dir))?;
        std::fs::write(&readme, new).context("writing README.md")?;
    }
    if let Some(check) = load(&dir, "ca_check") {
        let readme = root().join("README.md");
        let text = std::fs::read_to_string(&readme).context("reading README.md")?;
        let body = format!(
            "```text\n$ leash ca check\n{}```\n",
            check["table"].as_str().unwrap_or("")
        );
        let new = between(&text, CA_CHECK_BEGIN, CA_CHECK_END, &body)?;
        std::fs::write(&readme, new).context("writing README.md")?;
    }
    eprintln!(
        "xtask: SECURITY.md figures rewritten from {}",
        dir.display()
    );
    Ok(())
}
