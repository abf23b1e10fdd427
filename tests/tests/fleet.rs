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
    fleet::{Collector, Nats, Postgres, wait_until},
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

/// The collector's console lists records across keyset pages of the
/// store, newest first; a host filter too.
fn check_record_lists(collector: &Collector, host: &str) {
    // A long list crosses keyset pages of the store, newest first.
    let (_, listed) = collector.api("/api/records?limit=1000");
    let ts: Vec<time::OffsetDateTime> = listed["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            time::OffsetDateTime::parse(
                r["ts"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        })
        .collect();
    assert_eq!(ts.len(), 1000);
    // At the store's precision (PostgreSQL keeps microseconds).
    let micros = |t: &time::OffsetDateTime| t.unix_timestamp_nanos() / 1000;
    let bad: Vec<_> = ts
        .windows(2)
        .filter(|w| micros(&w[0]) < micros(&w[1]))
        .take(3)
        .collect();
    assert!(bad.is_empty(), "newest first: {bad:?}");
    let (_, one_host) = collector.api(&format!("/api/records?host={host}&limit=1000"));
    assert_eq!(one_host["records"].as_array().unwrap().len(), 1000);
}

/// The collector's console sums part of the store now, with a
/// transaction held open below the collectors' (rows above PostgreSQL's
/// horizon exist); later loads add only what was written since (checked
/// exact at the end of the test).
fn sum_with_a_transaction_held(pg: &Postgres, collector: &Collector) {
    let held = pg.open_transaction();
    let more = pg.count("SELECT count(*) FROM leash_audit") + 50;
    wait_until(
        "rows written above the held transaction",
        Duration::from_secs(30),
        || collector.logs(),
        || pg.count("SELECT count(*) FROM leash_audit") >= more,
    );
    let (status, early) = collector.api("/api/spend?by=host");
    assert_eq!(status, 200, "{early}");
    drop(held);
}

/// `leash audit query --postgres --sum-by <key>` (answered from the
/// rollups, plus the raw rows of a partial first hour or day) equals the
/// same sums taken over every stored row, for each key, over the whole
/// store and since `since`.
fn check_sums_against_rows(pg: &Postgres, since: &str, whole_store: bool) {
    for key in ["team", "model", "host", "user", "exe", "rule"] {
        for window in [None, Some(since)] {
            if window.is_none() && !whole_store {
                continue;
            }
            let mut args = vec![
                "audit",
                "query",
                "--postgres",
                &pg.url(),
                "--sum-by",
                key,
                "--json",
            ]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
            if let Some(since) = window {
                args.extend(["--since".to_owned(), since.to_owned()]);
            }
            let out = run(leash_command().args(&args));
            assert_success("audit query --postgres --sum-by", &out);
            let sums: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let (column, from) = match key {
                "user" => ("caller_user", "leash_audit"),
                "exe" => ("caller_exe", "leash_audit"),
                "rule" => (
                    "r.rule",
                    "leash_audit CROSS JOIN LATERAL unnest(rules) AS r(rule)",
                ),
                other => (other, "leash_audit"),
            };
            let when = window.map_or(String::new(), |s| format!(" AND ts >= '{s}'"));
            let rows = pg.sql(&format!(
                "SELECT coalesce({column}, '-') || ':' || count(*) || ':' || coalesce(sum(input_tokens), 0)
                        || ':' || coalesce(sum(output_tokens), 0) || ':'
                        || count(*) FILTER (WHERE cost_usd IS NULL AND input_tokens IS NOT NULL)
                        || ':' || coalesce(sum(cost_usd), 0)
                 FROM {from} WHERE event IS NULL{when} GROUP BY {column} ORDER BY 1"
            ));
            // Counts exactly; cost to the float sum's rounding (the sums
            // are added in another order).
            let split = |line: &str| {
                let (head, cost) = line.rsplit_once(':').unwrap();
                (head.to_owned(), cost.parse::<f64>().unwrap())
            };
            let mut expected: Vec<(String, f64)> = rows.lines().map(split).collect();
            expected.sort_by(|a, b| a.0.cmp(&b.0));
            assert!(!expected.is_empty(), "no rows for {key}");
            let mut got: Vec<(String, f64)> = sums
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, t)| {
                    (
                        format!(
                            "{k}:{}:{}:{}:{}",
                            t["requests"], t["input_tokens"], t["output_tokens"], t["unpriced"]
                        ),
                        t["cost_usd"].as_f64().unwrap(),
                    )
                })
                .collect();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            let heads = |v: &[(String, f64)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
            assert_eq!(
                heads(&got),
                heads(&expected),
                "--sum-by {key} since {window:?}"
            );
            for ((k, a), (_, b)) in got.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-9, "{k}: cost {a} != {b}");
            }
        }
    }
}

/// The collector's console shows the fleet-wide numbers (twice: a second
/// load adds nothing twice), lists records across keyset pages, and a
/// collector that starts again takes the console's saved summary from the
/// store and adds only what was written after it: the same totals.
fn check_fleet_console(mut collectors: [Collector; 2], hosts: &[String], per_host: u32) {
    // The collector's console shows the same fleet-wide numbers.
    // Twice: a second load adds nothing twice.
    for _ in 0..2 {
        let (status, spend) = collectors[0].api("/api/spend?by=host");
        assert_eq!(status, 200, "{spend}");
        assert_eq!(spend["total"]["requests"], 3 * per_host, "{spend}");
        for host in hosts {
            assert_eq!(spend["by_host"][host]["requests"], per_host, "{spend}");
        }
    }
    let (_, listed) = collectors[0].api("/api/records?limit=5");
    assert_eq!(listed["records"].as_array().unwrap().len(), 5);
    check_record_lists(&collectors[0], &hosts[0]);
    // A collector that starts again takes the console's saved summary from
    // the store and adds only what was written after it: the same totals.
    collectors[1].kill9();
    let earlier = collectors[1].logs().len();
    let since_restart = |c: &Collector| c.logs().get(earlier..).unwrap_or_default().to_owned();
    collectors[1].restart();
    wait_until(
        "the restarted console's summary",
        Duration::from_secs(30),
        || collectors[1].logs(),
        || since_restart(&collectors[1]).contains("fleet summary ready"),
    );
    assert!(
        since_restart(&collectors[1]).contains("fleet summary loaded from the store"),
        "{}",
        collectors[1].logs()
    );
    let (status, spend) = collectors[1].api("/api/spend?by=host");
    assert_eq!(status, 200, "{spend}");
    assert_eq!(spend["total"]["requests"], 3 * per_host, "{spend}");
    for host in hosts {
        assert_eq!(spend["by_host"][host]["requests"], per_host, "{spend}");
    }
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
    sum_with_a_transaction_held(&pg, &collectors[0]);
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
    let names: Vec<String> = hosts.iter().map(|(h, _)| h.clone()).collect();
    check_fleet_console(collectors, &names, PER_HOST);
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

/// The value of the Prometheus sample `series` (0 when absent).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Two collectors share the durable consumer. One is killed with `kill -9`
/// between committing a batch and acknowledging it (a test hook holds the
/// acknowledgements: the worst moment); JetStream gives that batch to the
/// other after `ack_wait`, which finds it stored. 100,000 records (a
/// host's trail written before it starts, so its shipper sends the whole
/// backlog at once) end up as exactly 100,000 rows.
#[test]
fn two_collectors_share_the_work_and_a_kill_9_mid_batch_loses_and_duplicates_nothing() {
    const RECORDS: u64 = 100_000;
    let pg = Postgres::start();
    let nats = Nats::start();
    // Two days and a half of records.
    let dir = trail(RECORDS, 2000);
    let extra = "  ack_wait_secs: 3\n";
    let mut a = Collector::start_env(
        &nats,
        &pg.url(),
        extra,
        &[("LEASH_FAULT_COLLECTOR_HOLD_ACK", "5")],
    );
    let b = Collector::start_extra(&nats, &pg.url(), extra);
    let mock = MockProvider::start();
    let leash = Leash::start_in(dir, &host_yaml("bulk-1", &mock, &nats));
    let logs_with =
        |a_logs: &str| format!("{}\n--- collector a ---\n{a_logs}", logs_of(&leash, &b));
    let inserted = |c: &Collector| {
        sample(
            &c.metrics(),
            "leash_collector_records_total{kind=\"inserted\"}",
        )
    };
    wait_until(
        "collector a holding a committed batch",
        Duration::from_mins(1),
        || logs_with(&a.logs()),
        || a.logs().contains("holding the acknowledgements"),
    );
    let by_a = inserted(&a);
    a.kill9();
    let a_logs = a.logs();
    let logs = || logs_with(&a_logs);
    let stored = || pg.count("SELECT count(*) FROM leash_audit WHERE host = 'bulk-1'");
    let started = Instant::now();
    // The trail, and whatever the gateway itself wrote after it (events).
    let spool = leash.audit_records().len() as u64;
    assert!(spool >= RECORDS, "{spool}");
    wait_until("every record stored", Duration::from_mins(3), logs, || {
        stored() >= spool
    });
    // The held batch reached b after ack_wait and was found stored: the
    // event that shows the redelivery happened (and added no row).
    wait_until(
        "the held batch redelivered to b",
        Duration::from_mins(1),
        logs,
        || {
            sample(
                &b.metrics(),
                "leash_collector_records_total{kind=\"duplicate\"}",
            ) > 0.0
        },
    );
    assert_complete(&pg, "bulk-1", spool);
    assert_eq!(
        pg.sql("SELECT count(*) FROM leash_chain_faults"),
        "0",
        "{}",
        logs()
    );
    // The redelivered batch added nothing to the rollups either; a
    // window starting mid-hour over two days of records takes whole days,
    // whole hours and raw rows.
    let since = pg.sql(
        "SELECT to_char((max(ts) - interval '30 hours 17 minutes 3 seconds') AT TIME ZONE 'UTC',
                        'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM leash_audit",
    );
    check_sums_against_rows(&pg, &since, true);
    let by_b = inserted(&b);
    assert!(
        by_a > 0.0 && by_b > 0.0,
        "both collectors stored records: a {by_a}, b {by_b}"
    );
    assert!(
        (by_a + by_b - f64::from(u32::try_from(spool).unwrap())).abs() < 0.5,
        "a {by_a} + b {by_b} inserted != {spool}"
    );
    println!(
        "two collectors: a stored {by_a} and was killed holding a committed batch; b stored {by_b}; all {spool} stored {:?} after the kill; 0 lost, 0 duplicated",
        started.elapsed()
    );
}

/// A record edited on its host before shipping is a chain break; a
/// record removed is a gap, found once the record after it has settled
/// (`2 × ack_wait`), and recorded once however many scans run after.
#[test]
fn a_record_tampered_with_before_shipping_is_flagged_as_a_chain_break() {
    let pg = Postgres::start();
    // A server that wants a token: shipper and collector present it.
    let mut nats = Nats::start_with_token(Some("fleet-token-Xq9"));
    nats.stop();
    let mock = MockProvider::start();
    // NATS is down: records wait in the spool.
    let mut leash = Leash::start(&host_yaml("edge-1", &mock, &nats));
    for _ in 0..7 {
        let r = http_request(leash.addr, "POST", "/v1/openai/chat/completions", &[], CHAT);
        assert_eq!(r.unwrap().0, 200);
    }
    leash.wait_records(7);
    assert!(leash.stop().success());
    let segment = segment_files(&leash.audit_dir).pop().unwrap();
    let text = std::fs::read_to_string(&segment).unwrap();
    let edited: Vec<String> = text
        .lines()
        .filter(|l| !l.contains(r#""seq":5,"#))
        .map(|l| {
            if l.contains(r#""seq":3,"#) {
                l.replace("gpt-4o-mini", "gpt-3.5-turbo")
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&segment, edited.join("\n") + "\n").unwrap();
    let kept = edited.len() as u64;

    nats.restart();
    let collector = Collector::start_extra(&nats, &pg.url(), "  ack_wait_secs: 1\n");
    leash.restart();
    wait_until(
        "the spool shipped",
        Duration::from_secs(30),
        || logs_of(&leash, &collector),
        || pg.count("SELECT count(*) FROM leash_audit") >= kept,
    );
    // The gap scan has covered every stored row (where it stands is past
    // the last row's transaction), and the scans after it.
    let last = pg.count("SELECT max(txid) FROM leash_audit");
    let scanned = || pg.count("SELECT txid FROM leash_collector_state WHERE name = 'gap_scan'");
    wait_until(
        "the gap scan past every row",
        Duration::from_secs(30),
        || logs_of(&leash, &collector),
        || scanned() > last,
    );
    let covered = scanned();
    wait_until(
        "another scan",
        Duration::from_secs(30),
        || logs_of(&leash, &collector),
        || {
            // A transaction of its own moves the horizon on.
            pg.sql("SELECT pg_current_xact_id()");
            scanned() > covered
        },
    );
    assert_eq!(
        pg.sql(
            "SELECT string_agg(kind || ':' || seq || ':' || detail, ',' ORDER BY seq)
             FROM leash_chain_faults WHERE host = 'edge-1'"
        ),
        "chain_break:3:the record's hash does not match its contents (edited),gap:6:records 5..5 are missing"
    );
    let metrics = collector.metrics();
    for line in [
        "leash_collector_chain_faults_total{kind=\"chain_break\"} 1",
        "leash_collector_chain_faults_total{kind=\"gap\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
    assert!(collector.logs().contains("audit chain fault"));
    for logs in [leash.logs(), collector.logs()] {
        assert!(
            !logs.contains("fleet-token-Xq9"),
            "the NATS token is logged"
        );
    }
}

/// With `key` (host A's), publishes a record shaped like host B's first
/// one, with every header claiming B: on B's subject, then on A's own.
/// Whether JetStream acknowledged each.
fn publish_as_host_b(nats: &Nats, key: &nkeys::KeyPair) -> (bool, bool) {
    let forged = r#"{"id":"forged","ts":"2026-11-30T00:00:00Z","host":"host-b","mode":"gateway","provider":"openai","endpoint":"/chat/completions","model":"m","stream":false,"status":200,"latency_ms":1.0,"ttfb_ms":null,"overhead_ms":0.1,"completed":true,"response_bytes":1,"caller":{"addr":null,"team":null},"usage":null,"cost_usd":null,"seq":1,"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","hash":"forged"}"#;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::ConnectOptions::with_nkey(key.seed().unwrap())
            .connect(nats.url())
            .await
            .unwrap();
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(Duration::from_secs(2));
        let publish = |subject: &'static str| {
            let js = js.clone();
            async move {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Leash-Host", "host-b");
                h.insert("Leash-Epoch", "1");
                h.insert("Nats-Msg-Id", "host-b:1:1:forged");
                match js.publish_with_headers(subject, h, forged.into()).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                }
            }
        };
        (
            publish("leash.audit.host-b").await,
            publish("leash.audit.host-a").await,
        )
    })
}

/// Hosts ship under their own NATS credentials, each allowed to publish
/// only on its own subject (the NATS config README.md shows). Host A,
/// holding its own key, tries to pass records off as host B's: on B's
/// subject NATS refuses; on its own subject with every header and record
/// field claiming B, the collector still files them under A (the host comes
/// from the subject). Control: B's genuine records are all stored, exactly
/// once, under B.
#[test]
fn a_host_can_ship_only_as_itself() {
    use nkeys::KeyPair;
    const INFO: &str = "$JS.API.STREAM.INFO.LEASH_AUDIT";
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        KeyPair::new_user(),
        KeyPair::new_user(),
        KeyPair::new_user(),
    );
    let seed = |name: &str, k: &KeyPair| {
        let path = dir.path().join(name);
        std::fs::write(&path, k.seed().unwrap()).unwrap();
        path
    };
    let (seed_a, seed_b, seed_c) = (seed("a.nk", &a), seed("b.nk", &b), seed("c.nk", &c));
    // Each host: its own subject, and a look at the stream (README.md).
    let nats = Nats::start_with_nkeys(&[
        (&a.public_key(), &["leash.audit.host-a", INFO]),
        (&b.public_key(), &["leash.audit.host-b", INFO]),
        (&c.public_key(), &[">"]),
    ]);
    let collector = Collector::start_with(&nats.yaml_as(&seed_c), &pg.url());
    let mock = MockProvider::start();
    let host = |name: &str, seed: &std::path::Path| {
        Leash::start(&format!(
            "host_id: {name}\naudit:\n  ship:\n    nats: {{ {}, subject: \"leash.audit.{{host}}\" }}\n{}",
            nats.yaml_as(seed),
            mock_providers_yaml(&mock)
        ))
    };
    let chats = |leash: &Leash, n: usize| {
        for _ in 0..n {
            let r = http_request(leash.addr, "POST", "/v1/openai/chat/completions", &[], CHAT);
            assert_eq!(r.unwrap().0, 200);
        }
    };
    let leash_a = host("host-a", &seed_a);
    chats(&leash_a, 3);
    let count = |h: &str| {
        pg.sql(&format!(
            "SELECT count(*) FROM leash_audit WHERE host = '{h}'"
        ))
    };
    wait_until(
        "host-a's records",
        Duration::from_secs(30),
        || logs_of(&leash_a, &collector),
        || count("host-a") == "3",
    );

    // A's key, publishing as B: on B's subject, then on its own.
    let (on_b, on_a) = publish_as_host_b(&nats, &a);
    assert!(!on_b, "NATS let host A publish on host B's subject");
    assert!(
        on_a,
        "host A cannot publish on its own subject (the control)"
    );
    wait_until(
        "the forged record",
        Duration::from_secs(30),
        || logs_of(&leash_a, &collector),
        || count("host-a") == "4",
    );

    // B's genuine records: all of them, once, under B.
    let leash_b = host("host-b", &seed_b);
    chats(&leash_b, 2);
    wait_until(
        "host-b's records",
        Duration::from_secs(30),
        || logs_of(&leash_b, &collector),
        || count("host-b") != "0",
    );
    wait_until(
        "all of host-b's records",
        Duration::from_secs(10),
        || logs_of(&leash_b, &collector),
        || count("host-b") == "2",
    );
    assert_complete(&pg, "host-b", 2);
    assert_eq!(
        pg.sql("SELECT count(*) FROM leash_audit WHERE host = 'host-b' AND line LIKE '%forged%'"),
        "0"
    );
    leash_tests::results::record(
        "host_identity",
        &serde_json::json!({"cross_subject_publish": "refused by NATS", "forged_headers": "filed under the real host", "genuine_records_of_b": 2}),
    );
}

/// `collector.retention: 2d`: the records of the UTC days wholly before
/// two days ago leave the store (and their rollups), a record on legal
/// hold stays, every later record stays, and the sums still equal the
/// rows. Control: the old records were there before.
#[test]
fn records_past_retention_leave_the_store_but_held_ones_stay() {
    const RECORDS: u64 = 2_000;
    let pg = Postgres::start();
    let nats = Nats::start();
    // Four days of records.
    let dir = trail(RECORDS, 172_800);
    let collector = Collector::start(&nats, &pg.url());
    let mock = MockProvider::start();
    let leash = Leash::start_in(dir, &host_yaml("old-1", &mock, &nats));
    wait_until(
        "the trail stored",
        Duration::from_mins(2),
        || logs_of(&leash, &collector),
        || pg.count("SELECT count(*) FROM leash_audit WHERE event IS NULL") >= RECORDS,
    );
    drop(collector);
    let cutoff = "date_trunc('day', now() - interval '2 days', 'UTC')";
    let old = || {
        pg.count(&format!(
            "SELECT count(*) FROM leash_audit WHERE ts < {cutoff}"
        ))
    };
    let kept_before = pg.count(&format!(
        "SELECT count(*) FROM leash_audit WHERE ts >= {cutoff} OR ts IS NULL"
    ));
    assert!(
        old() > 100,
        "the control: old records are there ({})",
        old()
    );
    pg.sql("INSERT INTO leash_legal_hold (record, note) SELECT id, 'case 7' FROM leash_audit WHERE event IS NULL ORDER BY ts LIMIT 1");

    let collector = Collector::start_extra(&nats, &pg.url(), "  retention: 2d\n");
    wait_until(
        "retention applied",
        Duration::from_mins(1),
        || collector.logs(),
        || collector.logs().contains("records past retention removed"),
    );
    assert_eq!(
        old(),
        1,
        "only the held record is left from before the cutoff"
    );
    assert_eq!(
        pg.sql(&format!("SELECT count(*) FROM leash_audit a JOIN leash_legal_hold h ON h.record = a.id WHERE a.ts < {cutoff}")),
        "1"
    );
    assert_eq!(
        pg.count(&format!(
            "SELECT count(*) FROM leash_audit WHERE ts >= {cutoff} OR ts IS NULL"
        )),
        kept_before,
        "every later record stays"
    );
    assert_eq!(
        pg.count(&format!(
            "SELECT count(*) FROM leash_rollup WHERE bucket < {cutoff}"
        )),
        0
    );
    let since = pg.sql(&format!(
        "SELECT to_char({cutoff} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
    ));
    check_sums_against_rows(&pg, &since, false);
    // A retention shorter than a day is refused, naming the field.
    let bad = collector_config_check("  retention: 12h\n", &nats, &pg);
    assert!(
        bad.contains("collector.retention") && bad.contains("at least 1d"),
        "{bad}"
    );
}

/// A directory whose `audit` holds a host's trail of `records` records,
/// one every `spacing_ms`, the newest now (`leash-bench trail`).
fn trail(records: u64, spacing_ms: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    assert_success(
        "leash-bench trail",
        &run(
            std::process::Command::new(env!("CARGO_BIN_EXE_leash-bench"))
                .args(["trail", "--dir"])
                .arg(dir.path().join("audit"))
                .args([
                    "--records",
                    &records.to_string(),
                    "--spacing-ms",
                    &spacing_ms.to_string(),
                    "--segment-bytes",
                    "8388608",
                ]),
        ),
    );
    dir
}

/// `leash collector` with a config holding `extra`, run to its first
/// complaint: what it said.
fn collector_config_check(extra: &str, nats: &Nats, pg: &Postgres) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "collector:\n  nats: {{ {}, durable: leash-collector }}\n  postgres: {{ url: \"{}\" }}\n{extra}",
            nats.yaml(),
            pg.url()
        ),
    )
    .unwrap();
    let out = run(leash_command()
        .arg("collector")
        .arg("--config")
        .arg(&config));
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}
