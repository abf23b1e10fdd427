//! Fleet shipping end to end with real servers on loopback: `leash`
//! gateways (each its own `host_id`) ship their audit spool to NATS
//! JetStream; `leash collector` stores it in PostgreSQL. Outages and
//! crashes on either side lose nothing and duplicate nothing; tampering is
//! flagged.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{
    net::SocketAddr,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use leash_tests::{
    fleet::{Collector, Nats, Postgres},
    harness::{
        Leash, assert_success, http_request, leash_command, mock_providers_yaml, run, segment_files,
    },
    mock::MockProvider,
};

const CHAT: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

fn host_yaml(host: &str, mock: &MockProvider, nats: &Nats) -> String {
    format!(
        "host_id: {host}\naudit:\n  ship:\n    nats: {{ {}, subject: \"leash.audit.{{host}}\" }}\n{}",
        nats.yaml(),
        mock_providers_yaml(mock)
    )
}

/// `n` chat requests, one every `gap`, each on its own connection; returns
/// how many got 200 (a request while the gateway is down fails).
fn paced_load(addr: SocketAddr, n: u32, gap: Duration) -> JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut ok = 0;
        for _ in 0..n {
            if http_request(addr, "POST", "/v1/openai/chat/completions", &[], CHAT)
                .is_some_and(|r| r.0 == 200)
            {
                ok += 1;
            }
            std::thread::sleep(gap);
        }
        ok
    })
}

/// Waits until `f` holds; returns how long that took. On timeout the
/// failure shows `logs()`.
fn wait_until(
    what: &str,
    timeout: Duration,
    logs: impl Fn() -> String,
    mut f: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

/// The logs of a shipper and a collector, for failures.
fn logs_of(leash: &Leash, collector: &Collector) -> String {
    format!(
        "--- leash ---\n{}\n--- collector ---\n{}",
        leash.logs(),
        collector.logs()
    )
}

/// Every record of `host` in PostgreSQL exactly once: `expected` rows,
/// seqs 1..=expected, no chain faults.
fn assert_complete(pg: &Postgres, host: &str, expected: u64) {
    let row = pg.sql(&format!(
        "SELECT count(*), count(DISTINCT seq), min(seq), max(seq), count(DISTINCT epoch)
         FROM leash_audit WHERE host = '{host}'"
    ));
    assert_eq!(
        row,
        format!("{expected}|{expected}|1|{expected}|1"),
        "{host}: count, distinct seqs, first, last, epochs"
    );
}

#[test]
fn three_hosts_ship_every_record_exactly_once_through_a_nats_outage() {
    const PER_HOST: u32 = 2000;
    let pg = Postgres::start();
    let mut nats = Nats::start();
    // Two collectors share the durable consumer.
    let collectors = [
        Collector::start(&nats, &pg.url()),
        Collector::start(&nats, &pg.url()),
    ];
    let mock = MockProvider::start();
    let hosts: Vec<(String, Leash)> = ["web-1", "web-2", "web-3"]
        .iter()
        .map(|h| ((*h).to_owned(), Leash::start(&host_yaml(h, &mock, &nats))))
        .collect();
    let loads: Vec<_> = hosts
        .iter()
        .map(|(_, l)| paced_load(l.addr, PER_HOST, Duration::from_millis(8)))
        .collect();

    std::thread::sleep(Duration::from_secs(4));
    let before_outage = pg.count("SELECT count(*) FROM leash_audit");
    nats.stop();
    let outage = Duration::from_secs(10);
    std::thread::sleep(outage);
    let during_outage = pg.count("SELECT count(*) FROM leash_audit");
    nats.restart();
    let restarted = Instant::now();
    let backlog: u64 = hosts
        .iter()
        .map(|(_, l)| l.audit_records().len() as u64)
        .sum();
    let caught_up = wait_until(
        "the outage backlog in PostgreSQL",
        Duration::from_mins(1),
        || logs_of(&hosts[0].1, &collectors[0]),
        || pg.count("SELECT count(*) FROM leash_audit") >= backlog,
    );
    for load in loads {
        assert_eq!(load.join().unwrap(), PER_HOST, "every request answered");
    }
    let total = u64::from(PER_HOST) * 3;
    for (_, leash) in &hosts {
        leash.wait_records(PER_HOST as usize);
    }
    wait_until(
        "every record in PostgreSQL",
        Duration::from_mins(2),
        || logs_of(&hosts[0].1, &collectors[0]),
        || pg.count("SELECT count(*) FROM leash_audit") >= total,
    );
    let all_stored = restarted.elapsed();
    for (host, _) in &hosts {
        assert_complete(&pg, host, u64::from(PER_HOST));
    }
    assert_eq!(
        pg.sql("SELECT string_agg(kind || ':' || host || ':' || seq || ':' || detail, '; ') FROM leash_chain_faults"),
        ""
    );
    assert!(before_outage > 0, "nothing shipped before the outage");
    let lagging = hosts
        .iter()
        .any(|(_, l)| l.metrics().contains("leash_ship_errors_total{kind="));
    assert!(lagging, "no shipper noticed the outage");
    // Both collectors took part.
    for c in &collectors {
        assert!(
            c.metrics()
                .contains("leash_collector_records_total{kind=\"inserted\"}"),
            "{}",
            c.logs()
        );
    }
    // The same query as the local one, across the fleet.
    let out = run(leash_command().args([
        "audit",
        "query",
        "--postgres",
        &pg.url(),
        "--sum-by",
        "host",
        "--json",
    ]));
    assert_success("audit query --postgres", &out);
    let sums: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (host, _) in &hosts {
        assert_eq!(sums[host]["requests"], PER_HOST, "{sums}");
    }
    // The collector's console shows the same fleet-wide numbers.
    let (status, body) =
        leash_tests::harness::http_get(collectors[0].admin, "/api/spend?by=host").unwrap();
    assert_eq!(status, 200, "{body}");
    let spend: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(spend["total"]["requests"], 3 * PER_HOST, "{spend}");
    for (host, _) in &hosts {
        assert_eq!(spend["by_host"][host]["requests"], PER_HOST, "{spend}");
    }
    let (_, body) =
        leash_tests::harness::http_get(collectors[0].admin, "/api/records?limit=5").unwrap();
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["records"].as_array().unwrap().len(), 5);
    eprintln!(
        "fleet: {total} records from 3 hosts; NATS down {outage:?} ({before_outage} stored before it, {during_outage} by its end); the {backlog} records written by then were all stored {caught_up:?} after NATS returned; the last record {all_stored:?} after; lost 0, duplicates 0"
    );
}

#[test]
fn killing_the_collector_or_the_shipper_loses_and_duplicates_nothing() {
    let pg = Postgres::start();
    let nats = Nats::start();
    let mut collector = Collector::start(&nats, &pg.url());
    let mock = MockProvider::start();
    let mut leash = Leash::start(&host_yaml("db-1", &mock, &nats));
    let load = paced_load(leash.addr, 1500, Duration::from_millis(4));
    let stored = || pg.count("SELECT count(*) FROM leash_audit");

    wait_until(
        "records flowing",
        Duration::from_secs(30),
        || logs_of(&leash, &collector),
        || stored() > 200,
    );
    collector.kill9();
    std::thread::sleep(Duration::from_millis(500));
    collector.restart();

    wait_until(
        "more records",
        Duration::from_secs(30),
        || logs_of(&leash, &collector),
        || stored() > 700,
    );
    leash.kill9();
    std::thread::sleep(Duration::from_millis(300));
    leash.restart();
    let served = load.join().unwrap();
    assert!(served > 1000, "too little load: {served}");

    // Everything the spool holds, and nothing else, ends up stored once.
    let spool = leash.audit_records().len() as u64;
    wait_until(
        "the spool in PostgreSQL",
        Duration::from_mins(1),
        || logs_of(&leash, &collector),
        || stored() >= spool,
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_complete(&pg, "db-1", spool);
    assert_eq!(
        pg.sql(
            "SELECT string_agg(kind || ':' || seq || ':' || detail, '; ') FROM leash_chain_faults"
        ),
        "",
        "{}",
        logs_of(&leash, &collector)
    );
    let cursor = std::fs::read_to_string(leash.audit_dir.join("ship-cursor")).unwrap();
    assert!(cursor.trim().ends_with(&format!(" {spool}")), "{cursor}");
}

#[test]
fn a_record_tampered_with_before_shipping_is_flagged_as_a_chain_break() {
    let pg = Postgres::start();
    // A server that wants a token: shipper and collector present it.
    let mut nats = Nats::start_with_token(Some("fleet-token-Xq9"));
    nats.stop();
    let mock = MockProvider::start();
    // NATS is down: records wait in the spool.
    let mut leash = Leash::start(&host_yaml("edge-1", &mock, &nats));
    for _ in 0..5 {
        let r = http_request(leash.addr, "POST", "/v1/openai/chat/completions", &[], CHAT);
        assert_eq!(r.unwrap().0, 200);
    }
    leash.wait_records(5);
    assert!(leash.stop().success());
    let segment = segment_files(&leash.audit_dir).pop().unwrap();
    let text = std::fs::read_to_string(&segment).unwrap();
    let edited: Vec<String> = text
        .lines()
        .map(|l| {
            if l.contains(r#""seq":3,"#) {
                l.replace("gpt-4o-mini", "gpt-3.5-turbo")
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&segment, edited.join("\n") + "\n").unwrap();

    nats.restart();
    let collector = Collector::start(&nats, &pg.url());
    leash.restart();
    wait_until(
        "the spool shipped",
        Duration::from_secs(30),
        || logs_of(&leash, &collector),
        || pg.count("SELECT count(*) FROM leash_audit") >= 5,
    );
    assert_eq!(
        pg.sql("SELECT kind || ':' || seq FROM leash_chain_faults ORDER BY seq"),
        "chain_break:3"
    );
    assert!(
        collector
            .metrics()
            .contains("leash_collector_chain_faults_total{kind=\"chain_break\"} 1"),
        "{}",
        collector.metrics()
    );
    assert!(collector.logs().contains("audit chain break"));
    for logs in [leash.logs(), collector.logs()] {
        assert!(
            !logs.contains("fleet-token-Xq9"),
            "the NATS token is logged"
        );
    }
}
