//! `leash policy replay`: a candidate policy decided again on the recorded
//! traffic (redacted captured content, markers standing for their
//! detectors; metadata for team rules) reports the same outcomes as
//! enforcing that candidate on the same requests; replaying the live policy
//! itself changes nothing (the control).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::collections::BTreeMap;

use leash_tests::{
    gateway::{Leash, leash_command},
    harness::{age_keygen, assert_success, mock_providers_yaml, run},
    http::http_request,
    mock::MockProvider,
};
use serde_json::Value;

const LIVE: &str = "version: 1\nrules:\n  - { name: redact-email, match: { detectors: [email] }, action: redact }\n";
const CANDIDATE: &str = "version: 1\nrules:\n  - { name: block-secrets, match: { detectors: [secrets] }, action: block }\n  - { name: no-interns, match: { team: [interns] }, action: block }\n  - { name: redact-email, match: { detectors: [email] }, action: redact }\n";

/// (team, prompt) of the traffic both runs see.
const TRAFFIC: [(&str, &str); 6] = [
    ("staff", "hello"),
    ("staff", "deploy with AKIAZ7QX3PLM9V2KD4RT"),
    ("interns", "hello"),
    ("staff", "mail jane.roe@example.com"),
    ("interns", "mail john.doe@example.com"),
    ("staff", "hello again"),
];

/// A gateway enforcing `policy`, capturing every exchange redacted.
fn start(mock: &MockProvider, policy: &str) -> Leash {
    start_capturing(mock, policy, "default: redacted")
}

/// A gateway enforcing `policy`, capturing as `capture` (YAML) says.
fn start_capturing(mock: &MockProvider, policy: &str, capture: &str) -> Leash {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
    std::fs::write(dir.path().join("candidate.yaml"), CANDIDATE).unwrap();
    std::fs::write(dir.path().join("live.yaml"), LIVE).unwrap();
    Leash::start_in(
        dir,
        &format!(
            "{}policy: {{ file: policy.yaml }}\nteams:\n  - {{ name: staff, header: true }}\n  - {{ name: interns, header: true }}\ncapture:\n  {capture}\n",
            mock_providers_yaml(mock)
        ),
    )
}

/// Sends the traffic; returns the actions the records name, counted.
fn send(leash: &Leash) -> BTreeMap<String, u64> {
    for (team, prompt) in TRAFFIC {
        let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}).to_string();
        let r = http_request(
            leash.addr,
            "POST",
            "/v1/openai/chat/completions",
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer sk-test"),
                ("x-leash-team", team),
            ],
            body.as_bytes(),
        )
        .unwrap();
        assert!(r.0 == 200 || r.0 == 403, "{}", r.0);
    }
    let mut counts = BTreeMap::new();
    for r in leash.wait_records(TRAFFIC.len()) {
        let action = r["policy"]["action"].as_str().unwrap_or("allow").to_owned();
        *counts.entry(action).or_default() += 1;
    }
    counts
}

/// `leash policy replay --policy <file> --json` over `leash`'s trail.
fn replay(leash: &Leash, file: &str) -> Value {
    replay_with(leash, file, &[])
}

/// As [`replay`], with more arguments.
fn replay_with(leash: &Leash, file: &str, args: &[&str]) -> Value {
    let out = run(leash_command()
        .args(["policy", "replay", "--json", "--policy"])
        .arg(leash.dir.path().join(file))
        .arg("--config")
        .arg(leash.dir.path().join("leash.yaml"))
        .arg("--audit-dir")
        .arg(&leash.audit_dir)
        .arg("--admin-listen")
        .arg(leash.admin.to_string())
        .args(args));
    assert_success("leash policy replay", &out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn counts(v: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn replay_predicts_what_enforcing_the_candidate_does() {
    let mock = MockProvider::start();
    let live = start(&mock, LIVE);
    let live_counts = send(&live);
    let report = replay(&live, "candidate.yaml");
    assert_eq!(report["records"], TRAFFIC.len() as u64, "{report}");
    assert_eq!(report["with_content"], TRAFFIC.len() as u64, "{report}");
    assert_eq!(counts(&report["live"]), live_counts, "{report}");
    // The secret (only in the redacted content, as a marker) and both
    // interns' requests are newly blocked; the intern's email was redacted.
    let changes = report["changes"].as_array().unwrap();
    let change = |from: &str, to: &str| {
        changes
            .iter()
            .find(|c| c["from"] == from && c["to"] == to)
            .map_or(0, |c| c["count"].as_u64().unwrap())
    };
    assert_eq!(change("allow", "block"), 2, "{report}");
    assert_eq!(change("redact", "block"), 1, "{report}");
    assert_eq!(changes.len(), 2, "{report}");

    // Enforcing the candidate on the same requests gives the same counts.
    let enforced = start(&mock, CANDIDATE);
    assert_eq!(send(&enforced), counts(&report["candidate"]), "{report}");

    // The same candidate in shadow mode: the changes are named as shadow
    // outcomes (nothing a client would see changes).
    let shadow = CANDIDATE.replace("version: 1\n", "version: 1\nmode: shadow\n");
    std::fs::write(live.dir.path().join("shadow.yaml"), shadow).unwrap();
    let shadowed = replay(&live, "shadow.yaml");
    let changes = shadowed["changes"].as_array().unwrap();
    assert!(
        !changes.is_empty()
            && changes
                .iter()
                .all(|c| c["to"].as_str().unwrap().ends_with("(shadow)")),
        "{shadowed}"
    );

    // Control: the live policy replayed on its own trail changes nothing.
    let same = replay(&live, "live.yaml");
    assert_eq!(same["changes"], serde_json::json!([]), "{same}");
    assert_eq!(counts(&same["candidate"]), live_counts);
}

/// Sealed content: without an identity the candidate decides on metadata
/// only (the secret is not seen); with an auditor's identity it decides on
/// the exact bytes, matches enforcement, and every read is in the trail.
#[test]
fn sealed_content_is_replayed_with_an_auditors_identity() {
    let mock = MockProvider::start();
    let keys = tempfile::tempdir().unwrap();
    let (identity, public) = age_keygen(keys.path(), "auditor.txt");
    let capture = format!("default: sealed\n  recipients: [\"{public}\"]");
    let live = start_capturing(&mock, LIVE, &capture);
    send(&live);
    let blind = replay(&live, "candidate.yaml");
    assert_eq!(blind["metadata_only"], TRAFFIC.len() as u64, "{blind}");
    let opened = replay_with(
        &live,
        "candidate.yaml",
        &["--identity", identity.to_str().unwrap()],
    );
    assert_eq!(opened["with_content"], TRAFFIC.len() as u64, "{opened}");
    let enforced = start_capturing(&mock, CANDIDATE, &capture);
    let enforced = send(&enforced);
    assert_eq!(counts(&opened["candidate"]), enforced, "{opened}");
    assert_ne!(
        counts(&blind["candidate"]),
        enforced,
        "metadata alone cannot see the secret"
    );
    let reads = live
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "content_read")
        .count();
    assert_eq!(reads, TRAFFIC.len(), "every sealed read is recorded");
}
