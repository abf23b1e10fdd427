//! `leash-bench trail`: a synthetic audit trail of N records (chained and
//! sealed as Leash writes them, rotated into segments) for the console
//! benchmark; and `leash-bench pages`: clients that load the console's
//! pages in a loop, timing each API call.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use leash_agent::audit::chain::{ChainHead, seal};
use serde_json::json;

use crate::{
    arg,
    load::{histogram, percentiles, us},
    num,
};

const TEAMS: [&str; 8] = [
    "research", "support", "sales", "platform", "data", "legal", "finance", "ops",
];
const MODELS: [(&str, &str); 6] = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("openai", "text-embedding-3-small"),
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-haiku-4-5"),
    ("google", "gemini-2.5-flash"),
];

/// Writes `--records` records into `--dir`, the newest ending now and one
/// every `--spacing-ms` before it.
pub(crate) fn trail(args: &[String]) {
    let dir = std::path::PathBuf::from(arg(args, "--dir").expect("--dir"));
    let records: u64 = num(args, "--records", 1_000_000);
    let segment_bytes: u64 = num(args, "--segment-bytes", 64 * 1024 * 1024);
    let spacing_ms: u64 = num(args, "--spacing-ms", 2_000);
    std::fs::create_dir_all(&dir).expect("trail dir");
    let started = Instant::now();
    let now = time::OffsetDateTime::now_utc();
    let mut head = ChainHead::default();
    let mut file: Option<std::io::BufWriter<std::fs::File>> = None;
    let mut in_segment = 0u64;
    let (mut bytes, mut segments) = (0u64, 0u64);
    for i in 0..records {
        if file.is_none() || in_segment >= segment_bytes {
            if let Some(mut f) = file.take() {
                f.flush().expect("flush");
            }
            let path = dir.join(format!("audit-{:016}.jsonl", head.seq + 1));
            file = Some(std::io::BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(path).expect("segment"),
            ));
            in_segment = 0;
            segments += 1;
        }
        let age = Duration::from_millis((records - 1 - i) * spacing_ms);
        let ts = (now - age)
            .format(&time::format_description::well_known::Rfc3339)
            .expect("time");
        let record = record(i, &ts, "bench");
        let line = seal(&serde_json::to_vec(&record).expect("json"), &mut head);
        in_segment += line.len() as u64;
        bytes += line.len() as u64;
        file.as_mut()
            .expect("segment")
            .write_all(&line)
            .expect("write");
    }
    if let Some(mut f) = file.take() {
        f.flush().expect("flush");
    }
    println!(
        "{}",
        json!({"records": records, "bytes": bytes, "segments": segments, "seconds": started.elapsed().as_secs_f64()})
    );
}

/// The `i`th synthetic request record (teams, models, users, executables,
/// blocks and redactions in fixed proportions), at `ts` on `host`.
#[allow(clippy::cast_precision_loss, reason = "token counts below 2^52")]
pub(crate) fn record(i: u64, ts: &str, host: &str) -> serde_json::Value {
    let (provider, model) = MODELS[(i % 6) as usize];
    let team = TEAMS[(i * 7 % 8) as usize];
    let blocked = i.is_multiple_of(50);
    let redacted = i.is_multiple_of(37);
    let input = 200 + i % 900;
    let output = 50 + i % 400;
    let action = if blocked {
        "block"
    } else if redacted {
        "redact"
    } else {
        "allow"
    };
    let findings = match action {
        "block" => json!([{"rule": "block-secrets", "detector": "aws_access_key", "count": 1}]),
        "redact" => json!([{"rule": "redact-pii", "detector": "email", "count": 2}]),
        _ => json!([]),
    };
    json!({
        "id": format!("01a2{i:028x}"),
        "ts": ts,
        "host": host,
        "mode": "gateway",
        "provider": provider,
        "endpoint": "/chat/completions",
        "model": model,
        "stream": i.is_multiple_of(4),
        "status": if blocked { 403 } else { 200 },
        "latency_ms": 420.5,
        "ttfb_ms": 180.25,
        "overhead_ms": 0.31,
        "completed": true,
        "response_bytes": 1400 + i % 700,
        "caller": {"addr": format!("10.0.{}.{}:4{:04}", i % 7, i % 200, i % 10_000), "team": team,
                   "user": format!("user{}", i % 40), "exe": format!("/usr/bin/app{}", i % 12)},
        "usage": if blocked { serde_json::Value::Null } else { json!({"input_tokens": input, "output_tokens": output}) },
        "cost_usd": if blocked { serde_json::Value::Null } else { json!((input as f64 * 0.15 + output as f64 * 0.6) / 1e6) },
        "policy": {"action": action, "rules": findings.as_array().unwrap().iter().map(|f| f["rule"].clone()).collect::<Vec<_>>(), "findings": findings, "tags": []},
    })
}

/// One GET with a bearer token; the status.
fn get(admin: SocketAddr, path: &str, token: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_secs(5)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_mins(1)));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The API calls one console page load makes.
const PAGE: [&str; 4] = [
    "/api/records?limit=50",
    "/api/spend",
    "/api/violations",
    "/api/interception",
];

/// `--clients` threads load the console's pages back to back for
/// `--seconds`: latency of every answered (200) API call, and how many
/// calls got each status.
pub(crate) fn pages(args: &[String]) {
    let admin: SocketAddr = arg(args, "--admin")
        .expect("--admin")
        .parse()
        .expect("addr");
    let token = std::fs::read_to_string(arg(args, "--token-file").expect("--token-file"))
        .expect("token file")
        .trim()
        .to_owned();
    let seconds: f64 = num(args, "--seconds", 10.0);
    let clients: usize = num(args, "--clients", 4);
    let paths: Vec<String> = PAGE.iter().map(|p| (*p).to_owned()).collect();
    println!("{}", load_pages(admin, &token, seconds, clients, &paths));
}

/// `clients` threads GET `paths` in turn, back to back, for `seconds`
/// (at least once each): latency of every answered (200) call, overall
/// and by path, and how many calls got each status.
pub(crate) fn load_pages(
    admin: SocketAddr,
    token: &str,
    seconds: f64,
    clients: usize,
    paths: &[String],
) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let token = token.to_owned();
            let paths = paths.to_vec();
            std::thread::spawn(move || {
                let mut h = histogram();
                let mut per_path: Vec<_> = paths.iter().map(|_| histogram()).collect();
                let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
                let mut pages = 0u64;
                // At least one page, then until the time is up.
                loop {
                    for (i, path) in paths.iter().enumerate() {
                        let t = Instant::now();
                        let status = get(admin, path, &token);
                        // Latency of the calls answered; the rest counted
                        // by status.
                        if status == 200 {
                            h.record(us(t.elapsed())).expect("record");
                            per_path[i].record(us(t.elapsed())).expect("record");
                        }
                        *statuses.entry(status).or_default() += 1;
                    }
                    pages += 1;
                    if Instant::now() >= until {
                        break;
                    }
                }
                (h, per_path, statuses, pages)
            })
        })
        .collect();
    let mut all = histogram();
    let mut by_path: Vec<_> = paths.iter().map(|_| histogram()).collect();
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    let mut pages = 0;
    for t in threads {
        let (h, per_path, s, p) = t.join().expect("client");
        all.add(h).expect("merge");
        for (mine, theirs) in by_path.iter_mut().zip(per_path) {
            mine.add(theirs).expect("merge");
        }
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
        pages += p;
    }
    json!({"pages": pages, "calls": percentiles(&all), "statuses": statuses,
           "by_path": paths.iter().zip(&by_path).map(|(p, h)| (p.clone(), percentiles(h))).collect::<serde_json::Map<_, _>>()})
}
