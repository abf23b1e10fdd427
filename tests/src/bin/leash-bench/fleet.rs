//! `leash-bench fleet`: the fleet store at scale. A PostgreSQL holding
//! `--records` request records (10 million by default) from `--hosts`
//! simulated hosts over `--days` (chained and sealed as Leash writes them,
//! bulk-loaded with `COPY`, rollups refilled as migration 4 does), a NATS
//! JetStream and `leash collector` (the `leash` of `LEASH_BIN`). Measured
//! in one run:
//! - the collector's console summing the store once (then saved), and a
//!   restarted collector's console starting from that saved summary;
//! - every fleet console API call, by clients loading the pages back to
//!   back, and `leash audit query --postgres --sum-by team`, while the
//!   collector ingests `--ingest-rate` records/s from every host;
//! - collector throughput: a backlog of `--backlog` records stored by one
//!   collector, then by two (`--rounds` rounds each, alternating).
//!
//! Results are one JSON object on stdout.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use leash_agent::audit::chain::{ChainHead, seal};
use leash_tests::{
    fleet::{Collector, Nats, Postgres, wait_until},
    harness::{assert_success, leash_command, run},
};
use serde_json::{Value, json};

use crate::{num, trail};

/// Server settings of a store sized for this (the defaults are for a
/// laptop's 128 MB of shared buffers).
const SETTINGS: &str = "-c shared_buffers=1GB -c max_wal_size=8GB -c checkpoint_timeout=30min \
     -c work_mem=64MB -c maintenance_work_mem=512MB -c effective_cache_size=8GB";

const COLUMNS: &str = "host, epoch, seq, ts, id, event, provider, model, team, caller_user, \
     caller_exe, action, rules, status, input_tokens, output_tokens, cost_usd, hash, prev_hash, \
     sealed, line";

/// The pages of the fleet console: every API call they make.
fn console_calls(hosts: u64) -> Vec<String> {
    [
        "/api/records?limit=200",
        "/api/records?team=legal&limit=200",
        &format!("/api/records?host=host-{:02}&limit=200", hosts / 2),
        "/api/records?action=block&limit=50",
        "/api/spend",
        "/api/spend?by=host",
        "/api/series?metric=requests&range=hour&by=provider",
        "/api/series?metric=cost_usd&range=month&by=team",
        "/api/series?metric=overhead&range=day",
        "/api/violations",
        "/api/interception",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .collect()
}

fn host_name(h: u64) -> String {
    format!("host-{h:02}")
}

/// COPY's text format of one value.
fn copy_text(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => out.extend_from_slice(b"\\N"),
        Some(s) => {
            for b in s.bytes() {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    _ => out.push(b),
                }
            }
        }
    }
}

/// One sealed record line of `host`'s chain and its COPY row.
fn row(out: &mut Vec<u8>, i: u64, ts: &str, host: &str, head: &mut ChainHead) {
    let record = trail::record(i, ts, host);
    let prev = head.hash.clone();
    let mut line = seal(&serde_json::to_vec(&record).expect("json"), head);
    line.pop();
    let line = String::from_utf8(line).expect("utf-8");
    let str_of = |v: &Value| v.as_str().map(str::to_owned);
    let usage = &record["usage"];
    let rules: Vec<String> = record["policy"]["rules"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let fields: [Option<String>; 21] = [
        Some(host.to_owned()),
        Some("1".to_owned()),
        Some(head.seq.to_string()),
        Some(ts.to_owned()),
        str_of(&record["id"]),
        None,
        str_of(&record["provider"]),
        str_of(&record["model"]),
        str_of(&record["caller"]["team"]),
        str_of(&record["caller"]["user"]),
        str_of(&record["caller"]["exe"]),
        str_of(&record["policy"]["action"]),
        Some(format!("{{{}}}", rules.join(","))),
        record["status"].as_i64().map(|s| s.to_string()),
        usage["input_tokens"].as_i64().map(|n| n.to_string()),
        usage["output_tokens"].as_i64().map(|n| n.to_string()),
        record["cost_usd"].as_f64().map(|c| c.to_string()),
        Some(head.hash.clone()),
        Some(prev),
        Some("t".to_owned()),
        Some(line),
    ];
    for (k, f) in fields.iter().enumerate() {
        if k > 0 {
            out.push(b'\t');
        }
        copy_text(out, f.as_deref());
    }
    out.push(b'\n');
}

/// Writes `records` records from `hosts` hosts, evenly over the `days`
/// ending now, oldest first, into the store with `COPY`; then refills the
/// rollups and analyzes. Seconds taken: (copy, rollups).
fn bulk_load(pg: &Postgres, records: u64, hosts: u64, days: f64) -> (f64, f64) {
    let started = Instant::now();
    let mut psql = Command::new("psql")
        .arg(pg.url())
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("COPY leash_audit ({COLUMNS}) FROM STDIN"))
        .stdin(Stdio::piped())
        .spawn()
        .expect("psql");
    let mut stdin = std::io::BufWriter::with_capacity(1 << 20, psql.stdin.take().expect("stdin"));
    let now = time::OffsetDateTime::now_utc();
    let span = Duration::from_secs_f64(days * 86_400.0);
    let mut heads: Vec<ChainHead> = (0..hosts).map(|_| ChainHead::default()).collect();
    let names: Vec<String> = (0..hosts).map(host_name).collect();
    let mut buf = Vec::with_capacity(4096);
    for i in 0..records {
        let age = span.mul_f64((records - i) as f64 / records as f64);
        let ts = (now - age)
            .format(&time::format_description::well_known::Rfc3339)
            .expect("time");
        let h = (i % hosts) as usize;
        buf.clear();
        row(&mut buf, i, &ts, &names[h], &mut heads[h]);
        stdin.write_all(&buf).expect("copy");
        if i % 1_000_000 == 999_999 {
            eprintln!(
                "fleet bench: {} records loaded ({:.0} s)",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    drop(stdin);
    assert!(psql.wait().expect("psql").success(), "COPY failed");
    let copied = started.elapsed().as_secs_f64();
    let started = Instant::now();
    // History as collectors would have left it: summed into the rollups,
    // and scanned for gaps as it arrived.
    pg.sql(leash_agent::collector::rollup::REFILL);
    pg.sql(
        "UPDATE leash_collector_state SET txid = pg_current_xact_id()::text::bigint
         WHERE name = 'gap_scan'",
    );
    pg.sql("VACUUM ANALYZE leash_audit");
    pg.sql("VACUUM ANALYZE leash_rollup");
    (copied, started.elapsed().as_secs_f64())
}

/// Publishes records of `hosts` hosts' chains of `epoch` to JetStream as
/// their shippers do: `total` of them (0: until `stop`), at `rate` per
/// second (0: as fast as acknowledged), each host's in seq order.
/// How many were acknowledged.
fn publish(
    nats_url: &str,
    hosts: u64,
    epoch: u64,
    (total, rate): (u64, f64),
    stop: &AtomicBool,
) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = async_nats::connect(nats_url).await.expect("nats");
        let js = async_nats::jetstream::new(client);
        let mut heads: Vec<ChainHead> = (0..hosts).map(|_| ChainHead::default()).collect();
        let started = Instant::now();
        let mut acks = Vec::new();
        let mut acked = 0;
        let mut i = 0u64;
        while (total == 0 || i < total) && !stop.load(Ordering::Relaxed) {
            if rate > 0.0 {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let h = i % hosts;
            let host = host_name(h);
            let ts = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .expect("time");
            let head = &mut heads[h as usize];
            let line = seal(
                &serde_json::to_vec(&trail::record(i, &ts, &host)).expect("json"),
                head,
            );
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                "Nats-Msg-Id",
                leash_agent::ship::msg_id(&host, epoch, head.seq, &line).as_str(),
            );
            headers.insert("Leash-Epoch", epoch.to_string().as_str());
            let ack = js
                .publish_with_headers(format!("leash.audit.{host}"), headers, line.into())
                .await
                .expect("publish");
            acks.push(ack);
            if acks.len() >= 512 {
                for a in acks.drain(..) {
                    acked += u64::from(a.await.is_ok());
                }
            }
            i += 1;
        }
        for a in acks {
            acked += u64::from(a.await.is_ok());
        }
        acked
    })
}

/// Records the collectors inserted so far (their metrics).
fn inserted(collectors: &[&Collector]) -> u64 {
    collectors
        .iter()
        .map(|c| {
            c.metrics()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("leash_collector_records_total{kind=\"inserted\"}")?
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or(0.0) as u64
        })
        .sum()
}

/// A backlog of `backlog` records of `epoch` waiting in JetStream, then
/// `n` collectors started on it: records stored per second, from the
/// moment every collector is ready until the backlog is stored.
fn throughput(nats: &Nats, pg: &Postgres, n: usize, backlog: u64, hosts: u64, epoch: u64) -> f64 {
    let published = publish(
        &nats.url(),
        hosts,
        epoch,
        (backlog, 0.0),
        &AtomicBool::new(false),
    );
    assert_eq!(published, backlog, "the backlog published");
    let collectors: Vec<Collector> = (0..n).map(|_| Collector::start(nats, &pg.url())).collect();
    let refs: Vec<&Collector> = collectors.iter().collect();
    let (t0, n0) = (Instant::now(), inserted(&refs));
    wait_until(
        "the backlog stored",
        Duration::from_mins(20),
        || collectors.iter().map(Collector::logs).collect(),
        || inserted(&refs) >= backlog,
    );
    let secs = t0.elapsed().as_secs_f64();
    (backlog - n0) as f64 / secs
}

/// A `leash audit query --postgres` run: seconds it took.
fn timed_query(url: &str, extra: &[&str]) -> f64 {
    let started = Instant::now();
    let out = run(leash_command()
        .args([
            "audit",
            "query",
            "--postgres",
            url,
            "--sum-by",
            "team",
            "--json",
        ])
        .args(extra));
    let secs = started.elapsed().as_secs_f64();
    assert_success("leash audit query --postgres --sum-by team", &out);
    secs
}

fn summary_ready_secs(c: &Collector) -> f64 {
    // Without the terminal colours.
    let mut logs = String::new();
    let mut escaped = false;
    for ch in c.logs().chars() {
        match ch {
            '\u{1b}' => escaped = true,
            'm' if escaped => escaped = false,
            _ if escaped => {}
            _ => logs.push(ch),
        }
    }
    let line = logs
        .lines()
        .rev()
        .find(|l| l.contains("fleet summary ready"))
        .unwrap_or_default()
        .to_owned();
    line.split("secs=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| {
            s.trim_matches(|c: char| !c.is_ascii_digit() && c != '.')
                .parse()
                .ok()
        })
        .unwrap_or(f64::NAN)
}

fn wait_summary(c: &Collector, times: usize) -> f64 {
    wait_until(
        "the fleet summary ready",
        Duration::from_hours(1),
        || c.logs(),
        || c.logs().matches("fleet summary ready").count() >= times,
    );
    summary_ready_secs(c)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The console's calls and the sum-by query, measured while the
/// collector ingests; (console, query runs, records ingested per second).
fn under_ingest(
    nats: &Nats,
    pg: &Postgres,
    collector: &Collector,
    (hosts, rate, seconds): (u64, f64, f64),
) -> (Value, Value, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (url, stop, sent) = (nats.url(), Arc::clone(&stop), Arc::clone(&sent));
        std::thread::spawn(move || {
            sent.store(publish(&url, hosts, 2, (0, rate), &stop), Ordering::Relaxed);
        })
    };
    let before = inserted(&[collector]);
    let started = Instant::now();
    let token = collector.admin_token();
    let pages = {
        let (admin, calls) = (collector.admin, console_calls(hosts));
        std::thread::spawn(move || trail::load_pages(admin, &token, seconds, 4, &calls))
    };
    let mut all_time = Vec::new();
    let mut last_day = Vec::new();
    while started.elapsed().as_secs_f64() < seconds {
        all_time.push(timed_query(&pg.url(), &[]));
        last_day.push(timed_query(&pg.url(), &["--since", "24h"]));
    }
    let console = pages.join().expect("pages");
    let ingested = (inserted(&[collector]) - before) as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    publisher.join().expect("publisher");
    // Everything published is stored before the next part starts.
    let sent = sent.load(Ordering::Relaxed);
    wait_until(
        "the ingested records stored",
        Duration::from_mins(10),
        || collector.logs(),
        || inserted(&[collector]) - before >= sent,
    );
    let summarize = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        json!({"runs": v.len(), "p50_s": percentile(v, 0.5), "p95_s": percentile(v, 0.95),
               "max_s": v.last().copied().unwrap_or(f64::NAN)})
    };
    let queries = json!({
        "sum_by_team": summarize(&mut all_time),
        "sum_by_team_since_24h": summarize(&mut last_day),
    });
    (console, queries, ingested)
}

pub(crate) fn fleet(args: &[String]) {
    let records: u64 = num(args, "--records", 10_000_000);
    let hosts: u64 = num(args, "--hosts", 50);
    let days: f64 = num(args, "--days", 7.0);
    let rate: f64 = num(args, "--ingest-rate", 500.0);
    let seconds: f64 = num(args, "--seconds", 60.0);
    let backlog: u64 = num(args, "--backlog", 100_000);
    let rounds: u64 = num(args, "--rounds", 2);
    let pg = Postgres::start_with(SETTINGS);
    let nats = Nats::start();
    // The schema, as a collector makes it.
    drop(Collector::start(&nats, &pg.url()));
    let (copy_s, rollup_s) = bulk_load(&pg, records, hosts, days);
    let size = pg.sql("SELECT pg_size_pretty(pg_database_size(current_database()))");
    eprintln!(
        "fleet bench: {records} records loaded in {copy_s:.0} s, rollups {rollup_s:.0} s; {size}"
    );

    // First start: the console sums the store once and saves the sum.
    let mut collector = Collector::start(&nats, &pg.url());
    let first_sum_s = wait_summary(&collector, 1);
    wait_until(
        "the fleet summary saved",
        Duration::from_mins(5),
        || collector.logs(),
        || pg.count("SELECT count(*) FROM leash_summary_checkpoint") > 0,
    );
    collector.kill9();
    collector.restart();
    let restart_sum_s = wait_summary(&collector, 2);
    eprintln!("fleet bench: summary {first_sum_s:.1} s, from the saved one {restart_sum_s:.2} s");

    let (console, queries, ingested) = under_ingest(&nats, &pg, &collector, (hosts, rate, seconds));
    eprintln!("fleet bench: console {console}\nqueries {queries}");
    drop(collector);

    let mut by_collectors = json!({"1": [], "2": []});
    let mut epoch = 10;
    for _ in 0..rounds {
        for n in [1usize, 2] {
            epoch += 1;
            let r = throughput(&nats, &pg, n, backlog, hosts, epoch);
            eprintln!("fleet bench: {n} collector(s): {r:.0} records/s");
            by_collectors[n.to_string()]
                .as_array_mut()
                .expect("array")
                .push(json!(r));
        }
    }
    let rows = pg.count("SELECT count(*) FROM leash_audit");
    println!(
        "{}",
        json!({
            "records": records, "hosts": hosts, "days": days, "rows_at_end": rows,
            "store_size": size, "settings": SETTINGS,
            "load": {"copy_s": copy_s, "rollups_s": rollup_s},
            "summary": {"first_s": first_sum_s, "from_saved_s": restart_sum_s},
            "ingest": {"rate": rate, "stored_per_s": ingested, "seconds": seconds},
            "console": console,
            "queries": queries,
            "collectors": {"backlog": backlog, "records_per_s": by_collectors},
            "quick": args.iter().any(|a| a == "--quick"),
        })
    );
}
