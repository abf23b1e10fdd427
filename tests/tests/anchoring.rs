//! Off-host anchoring of the audit chain: a host that rewrites records it
//! already shipped and re-seals its chain passes its own `leash audit
//! verify` (the local chain is consistent again) but is caught by `leash
//! audit verify --against` (the first record that differs from the fleet
//! store's copy is named) and by the collector (`fork`) as soon as it ships
//! again. The control: before the rewrite, the same comparison passes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::time::Duration;

use leash_tests::{
    fleet::{Collector, Nats, Postgres, wait_until},
    harness::{
        Leash, assert_success, http_request, leash_command, mock_providers_yaml, run, segment_files,
    },
    mock::MockProvider,
};
use sha2::{Digest as _, Sha256};

const CHAT: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

fn chat(leash: &Leash, n: usize) {
    for _ in 0..n {
        let r = http_request(leash.addr, "POST", "/v1/openai/chat/completions", &[], CHAT);
        assert_eq!(r.unwrap().0, 200);
    }
}

/// Re-seals `line` (without its newline) after `prev`, as the writer does:
/// the record up to `,"seq":`, then `seq`, `prev_hash` and the SHA-256 of it all.
fn reseal(line: &str, prev: &str) -> (String, String) {
    let at = line.rfind(",\"seq\":").unwrap();
    let seq: u64 = line[at + 7..].split(',').next().unwrap().parse().unwrap();
    let body = format!("{},\"seq\":{seq},\"prev_hash\":\"{prev}\"", &line[..at]);
    let hash = format!("{:x}", Sha256::digest(body.as_bytes()));
    (format!("{body},\"hash\":\"{hash}\"}}"), hash)
}

fn verify(leash: &Leash, against: Option<&str>) -> std::process::Output {
    let mut cmd = leash_command();
    cmd.args(["audit", "verify", "--dir"]).arg(&leash.audit_dir);
    if let Some(url) = against {
        cmd.args(["--against", url]);
    }
    run(&mut cmd)
}

#[test]
fn a_host_rewriting_shipped_records_is_caught_off_host() {
    let pg = Postgres::start();
    let nats = Nats::start();
    let collector = Collector::start(&nats, &pg.url());
    let mock = MockProvider::start();
    let mut leash = Leash::start(&format!(
        "host_id: edge-9\naudit:\n  ship:\n    nats: {{ {}, subject: \"leash.audit.{{host}}\" }}\n{}",
        nats.yaml(),
        mock_providers_yaml(&mock)
    ));
    let logs = |leash: &Leash| format!("{}\n{}", leash.logs(), collector.logs());
    chat(&leash, 5);
    wait_until(
        "five records stored",
        Duration::from_secs(30),
        || logs(&leash),
        || pg.count("SELECT count(*) FROM leash_audit WHERE host = 'edge-9'") >= 5,
    );
    // Control: the trail matches the store.
    let out = verify(&leash, Some(&pg.url()));
    assert_success("verify --against before the rewrite", &out);
    // Exported from 0, so an alert on `increase()` sees the first fork.
    assert!(
        collector
            .metrics()
            .contains("leash_collector_chain_faults_total{kind=\"fork\"} 0"),
        "{}",
        collector.metrics()
    );
    assert!(leash.stop().success());
    // The host rewrites seq 3 and re-seals everything after it.
    let segment = segment_files(&leash.audit_dir).pop().unwrap();
    let text = std::fs::read_to_string(&segment).unwrap();
    let mut prev = String::new();
    let mut lines = Vec::new();
    for line in text.lines() {
        let seq3 = line.contains(",\"seq\":3,");
        if seq3 || !prev.is_empty() {
            let edited = if seq3 {
                line.replace("gpt-4o-mini", "gpt-3.5-turbo")
            } else {
                line.to_owned()
            };
            let before = if seq3 {
                let at = line.find("\"prev_hash\":\"").unwrap() + 13;
                line[at..at + 64].to_owned()
            } else {
                prev.clone()
            };
            let (sealed, hash) = reseal(&edited, &before);
            lines.push(sealed);
            prev = hash;
        } else {
            lines.push(line.to_owned());
        }
    }
    std::fs::write(&segment, lines.join("\n") + "\n").unwrap();
    // Its own chain is consistent again: the local check cannot tell.
    assert_success("local verify after a re-seal", &verify(&leash, None));
    // The store's copy can.
    let out = verify(&leash, Some(&pg.url()));
    assert!(!out.status.success(), "the rewrite passed verify --against");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("seq 3 differs"), "{err}");
    // And the collector, once the host ships again.
    leash.restart();
    chat(&leash, 2);
    wait_until(
        "a fork recorded",
        Duration::from_secs(30),
        || logs(&leash),
        || pg.sql("SELECT count(*) FROM leash_chain_faults WHERE kind = 'fork'") != "0",
    );
    assert!(
        collector
            .metrics()
            .contains("leash_collector_chain_faults_total{kind=\"fork\"} 1"),
        "{}",
        collector.metrics()
    );
}
