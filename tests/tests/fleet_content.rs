//! Captured content across the fleet: each record's content ships before
//! it, in chunks on the host's own subject, and lands in PostgreSQL; 1 MiB
//! bodies (redacted, and sealed: binary) arrive intact through a NATS
//! restart — nothing lost, nothing twice — and `leash audit show --postgres`
//! gives them back (sealed: the exact request bytes, with the auditor's
//! identity), each read recorded in the store.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::time::Duration;

use leash_tests::{
    fleet::{Collector, Nats, Postgres, wait_until},
    harness::{Leash, assert_success, http_request, leash_command, mock_providers_yaml, run},
    mock::MockProvider,
};
use serde_json::{Value, json};

/// A chat of about 1 MiB, as team `team` (`None`: no team).
fn big_chat(leash: &Leash, i: usize, team: Option<&str>) {
    let text = format!("{i}:{}", "y".repeat(1 << 20));
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
        .to_string();
    let mut headers = vec![("content-type", "application/json")];
    if let Some(t) = team {
        headers.push(("x-leash-team", t));
    }
    let r = http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &headers,
        body.as_bytes(),
    );
    assert_eq!(r.unwrap().0, 200);
}

#[test]
fn content_of_1_mib_bodies_reaches_postgres_intact_through_a_nats_restart() {
    let keys = tempfile::tempdir().unwrap();
    let identity = keys.path().join("auditor.txt");
    assert_success(
        "age-keygen",
        &run(std::process::Command::new("age-keygen")
            .arg("-o")
            .arg(&identity)),
    );
    let public = std::fs::read_to_string(&identity)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_owned))
        .unwrap();
    let pg = Postgres::start();
    let mut nats = Nats::start();
    let collector = Collector::start(&nats, &pg.url());
    let mock = MockProvider::start();
    let leash = Leash::start(&format!(
        "host_id: edge-c\naudit:\n  ship:\n    nats: {{ {}, subject: \"leash.audit.{{host}}\" }}\n{}teams:\n  - {{ name: legal, header: true }}\ncapture:\n  default: redacted\n  max_bytes: 2097152\n  rules: [ {{ class: sealed, teams: [legal] }} ]\n  recipients: [\"{public}\"]\n",
        nats.yaml(),
        mock_providers_yaml(&mock)
    ));
    let logs = |leash: &Leash| format!("{}\n{}", leash.logs(), collector.logs());
    big_chat(&leash, 0, None);
    big_chat(&leash, 1, Some("legal"));
    wait_until(
        "two records stored",
        Duration::from_mins(1),
        || logs(&leash),
        || pg.count("SELECT count(*) FROM leash_audit WHERE host = 'edge-c'") >= 2,
    );
    // NATS goes away; three more wait in the spool; NATS comes back.
    nats.stop();
    big_chat(&leash, 2, None);
    big_chat(&leash, 3, Some("legal"));
    big_chat(&leash, 4, None);
    nats.restart();
    wait_until(
        "five records stored",
        Duration::from_mins(1),
        || logs(&leash),
        || pg.count("SELECT count(*) FROM leash_audit WHERE host = 'edge-c'") >= 5,
    );
    let records = leash.wait_records(5);
    // Nothing lost, nothing twice: every record's chunks, each once.
    assert_eq!(
        pg.sql("SELECT count(DISTINCT seq) FROM leash_content_chunks WHERE host = 'edge-c'"),
        "5"
    );
    assert_eq!(
        pg.sql(
            "SELECT (SELECT count(*) FROM leash_content_chunks) = (SELECT sum(t) FROM (SELECT max(total) AS t FROM leash_content_chunks GROUP BY host, epoch, seq) s)"
        ),
        "t",
        "chunk rows = the chunks announced"
    );
    let sent = mock.requests();
    for (i, r) in records.iter().enumerate() {
        let id = r["id"].as_str().unwrap();
        let sealed = r["content"]["class"] == "sealed";
        assert_eq!(sealed, i % 2 == 1, "{r}");
        let mut cmd = leash_command();
        cmd.args(["audit", "show", id, "--content", "--postgres", &pg.url()]);
        if sealed {
            cmd.arg("--identity")
                .arg(&identity)
                .args(["--raw", "request"]);
        }
        let out = run(&mut cmd);
        assert_success(&format!("show --postgres {id}"), &out);
        if sealed {
            assert_eq!(
                out.stdout,
                sent[i].body.to_vec(),
                "record {i}: the exact bytes"
            );
        } else {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let text = v["content"]["request"]["body"]["json"]["messages"][0]["content"]
                .as_str()
                .unwrap();
            assert_eq!(text, format!("{i}:{}", "y".repeat(1 << 20)), "record {i}");
        }
    }
    assert_eq!(pg.sql("SELECT count(*) FROM leash_content_reads"), "5");
}

/// Retention in the fleet store: content older than its class's period is
/// removed, the records stay, and a record on `leash_legal_hold` keeps its
/// content.
#[test]
fn the_fleet_store_keeps_content_for_its_retention_except_on_hold() {
    let pg = Postgres::start();
    let nats = Nats::start();
    let collector = Collector::start_extra(
        &nats,
        &pg.url(),
        "  content: { retention: { redacted: 6s } }\n",
    );
    let mock = MockProvider::start();
    let leash = Leash::start(&format!(
        "host_id: edge-r\naudit:\n  ship:\n    nats: {{ {}, subject: \"leash.audit.{{host}}\" }}\n{}capture:\n  default: redacted\n",
        nats.yaml(),
        mock_providers_yaml(&mock)
    ));
    let logs = |leash: &Leash| format!("{}\n{}", leash.logs(), collector.logs());
    for i in 0..2 {
        let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("hello {i}")}]})
            .to_string();
        let r = http_request(
            leash.addr,
            "POST",
            "/v1/openai/chat/completions",
            &[],
            body.as_bytes(),
        );
        assert_eq!(r.unwrap().0, 200);
    }
    let records = leash.wait_records(2);
    wait_until(
        "two records with content stored",
        Duration::from_mins(1),
        || logs(&leash),
        || pg.sql("SELECT count(DISTINCT seq) FROM leash_content_chunks") == "2",
    );
    let held = records[0]["id"].as_str().unwrap();
    pg.sql(&format!(
        "INSERT INTO leash_legal_hold (record, note) VALUES ('{held}', 'case 42')"
    ));
    wait_until(
        "the unheld content removed",
        Duration::from_mins(1),
        || logs(&leash),
        || pg.sql("SELECT count(DISTINCT seq) FROM leash_content_chunks") == "1",
    );
    assert_eq!(
        pg.sql("SELECT DISTINCT a.id FROM leash_content_chunks c JOIN leash_audit a USING (host, epoch, seq)"),
        held,
        "the held record keeps its content"
    );
    assert_eq!(
        pg.sql("SELECT count(*) FROM leash_audit WHERE host = 'edge-r'"),
        "2",
        "records stay"
    );
}
