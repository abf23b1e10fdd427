//! The load generators: open loop at a rate, closed loop to saturation,
//! SSE streams, new TLS connections.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::{
    CHAT_BODY, STREAM_BODY, arg,
    client::{Conn, target},
    num,
};

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")
}

pub(crate) fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        // Nothing completed in time: no latency to report (not zero).
        return json!({"count": 0});
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(0.50), "p90_ms": ms(0.90), "p95_ms": ms(0.95),
        "p99_ms": ms(0.99), "p999_ms": ms(0.999), "max_ms": h.max() as f64 / 1000.0,
        "mean_ms": h.mean() / 1000.0,
    })
}

pub(crate) fn us(d: Duration) -> u64 {
    d.as_micros().max(1) as u64
}

// ---- open loop ----------------------------------------------------------------

/// One request on `conn` (opened first if there is none): `Err` says what
/// failed. A connection that failed, or that the server closes after its
/// answer (`connection: close`), is dropped.
fn attempt(conn: &mut Option<Conn>, t: &crate::client::Target, body: &str) -> Result<(), String> {
    let answer = (|| -> std::io::Result<(u16, bool)> {
        if conn.is_none() {
            *conn = Some(Conn::open(t)?);
        }
        let c = conn.as_mut().expect("connection");
        c.send(t, body)?;
        let r = c.read()?;
        Ok((r.status, r.close))
    })();
    match answer {
        Ok((status, close)) => {
            if close {
                *conn = None;
            }
            if status == 200 {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        }
        Err(e) => {
            *conn = None;
            Err(e.to_string())
        }
    }
}

pub(crate) fn load(args: &[String]) {
    let url = arg(args, "--url").expect("--url");
    let rate: f64 = num(args, "--rate", 1000.0);
    let seconds: f64 = num(args, "--seconds", 10.0);
    let conns: usize = num(
        args,
        "--connections",
        ((rate / 100.0) as usize).clamp(4, 64),
    );
    let warmup: f64 = num(args, "--warmup", 1.0);
    // `--body JSON`: another request body (another API's shape).
    let custom: Option<&'static str> = arg(args, "--body").map(|b| &*Box::leak(b.into_boxed_str()));
    let body = match custom {
        Some(b) => b,
        None if arg(args, "--stream").is_some() => STREAM_BODY,
        None => CHAT_BODY,
    };
    let t = Arc::new(target(&url, args));
    let total = (rate * seconds) as u64;
    let warm = (rate * warmup) as u64;
    let errors = Arc::new(AtomicU64::new(0));
    // The first few failures, said in the results (what went wrong).
    let samples = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let completed = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(200);
    let interval = Duration::from_secs_f64(1.0 / rate);
    // A server that cannot keep up is not waited for forever: requests not
    // sent by the deadline count as not sent (and the run says so).
    let deadline = start + Duration::from_secs_f64(warmup + seconds + 2.0);
    let workers: Vec<_> = (0..conns)
        .map(|k| {
            let t = Arc::clone(&t);
            let errors = Arc::clone(&errors);
            let samples = Arc::clone(&samples);
            let completed = Arc::clone(&completed);
            std::thread::spawn(move || {
                let note = |what: String| {
                    let mut s = samples.lock().expect("samples");
                    if s.len() < 10 {
                        s.push(what);
                    }
                };
                let mut corrected = histogram();
                let mut service = histogram();
                let mut conn = Conn::open(&t).ok();
                let mut i = k as u64;
                while i < warm + total && Instant::now() < deadline {
                    let intended = start + interval.mul_f64(i as f64);
                    let now = Instant::now();
                    if intended > now {
                        std::thread::sleep(intended - now);
                    }
                    let sent = Instant::now();
                    let ok = attempt(&mut conn, &t, body);
                    let done = Instant::now();
                    if let Err(what) = ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                        note(what);
                    }
                    if t.new_connection {
                        conn = None;
                    }
                    if i >= warm {
                        completed.fetch_add(1, Ordering::Relaxed);
                        let _ = corrected.record(us(done - intended));
                        let _ = service.record(us(done - sent));
                    }
                    i += conns as u64;
                }
                (corrected, service)
            })
        })
        .collect();
    let mut corrected = histogram();
    let mut service = histogram();
    for w in workers {
        let (c, s) = w.join().expect("worker");
        corrected.add(c).expect("merge");
        service.add(s).expect("merge");
    }
    let elapsed = start.elapsed().as_secs_f64() - warmup;
    let completed = completed.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "mode": "open-loop", "rate": rate, "seconds": seconds, "connections": conns,
            "achieved_rps": completed as f64 / elapsed.max(1e-9),
            "not_sent": total.saturating_sub(completed),
            "errors": errors.load(Ordering::Relaxed),
            "error_samples": *samples.lock().expect("samples"),
            "latency": percentiles(&corrected),
            "service": percentiles(&service),
        })
    );
}

// ---- closed loop ----------------------------------------------------------------

pub(crate) fn saturate(args: &[String]) {
    let url = arg(args, "--url").expect("--url");
    let seconds: f64 = num(args, "--seconds", 5.0);
    let conns: usize = num(args, "--connections", 32);
    let t = Arc::new(target(&url, args));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let t = Arc::clone(&t);
            let done = Arc::clone(&done);
            let errors = Arc::clone(&errors);
            std::thread::spawn(move || {
                let mut h = histogram();
                let mut conn = Conn::open(&t).ok();
                while Instant::now() < end {
                    let sent = Instant::now();
                    let r = (|| -> std::io::Result<bool> {
                        if conn.is_none() {
                            conn = Some(Conn::open(&t)?);
                        }
                        let c = conn.as_mut().expect("connection");
                        c.send(&t, CHAT_BODY)?;
                        Ok(c.read()?.status == 200)
                    })();
                    if t.new_connection {
                        conn = None;
                    }
                    match r {
                        Ok(true) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            let _ = h.record(us(sent.elapsed()));
                        }
                        Ok(false) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                    }
                }
                h
            })
        })
        .collect();
    let mut h = histogram();
    for w in workers {
        h.add(w.join().expect("worker")).expect("merge");
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "mode": "closed-loop", "connections": conns, "seconds": elapsed,
            "rps": done.load(Ordering::Relaxed) as f64 / elapsed,
            "errors": errors.load(Ordering::Relaxed),
            "latency": percentiles(&h),
        })
    );
}

// ---- streams ----------------------------------------------------------------

pub(crate) fn sse(args: &[String]) {
    let url = arg(args, "--url").expect("--url");
    let requests: usize = num(args, "--requests", 50);
    let t = target(&url, args);
    let mut ttft = histogram();
    let mut gaps = histogram();
    let mut conn = Conn::open(&t).expect("connect");
    let mut errors = 0;
    for _ in 0..requests {
        let sent = Instant::now();
        conn.send(&t, STREAM_BODY).expect("send");
        match conn.read() {
            Ok(r) if r.status == 200 && !r.chunks.is_empty() => {
                let _ = ttft.record(us(r.chunks[0] - sent));
                for pair in r.chunks.windows(2) {
                    let _ = gaps.record(us(pair[1] - pair[0]));
                }
            }
            _ => {
                errors += 1;
                conn = Conn::open(&t).expect("reconnect");
            }
        }
    }
    println!(
        "{}",
        json!({"mode": "sse", "requests": requests, "errors": errors,
               "ttft": percentiles(&ttft), "gap": percentiles(&gaps)})
    );
}

// ---- new connections, one server name after another ---------------------------

pub(crate) fn handshake(args: &[String]) {
    let url = arg(args, "--url").expect("--url");
    let names: Vec<String> = arg(args, "--names")
        .expect("--names a,b,...")
        .split(',')
        .map(str::to_owned)
        .collect();
    let rounds: usize = num(args, "--rounds", 2);
    let t = target(&url, args);
    let mut out = Vec::new();
    for _ in 0..rounds {
        let mut h = histogram();
        let mut errors = 0;
        for name in &names {
            let sent = Instant::now();
            let ok = (|| -> std::io::Result<bool> {
                let mut c = Conn::open_as(&t, name)?;
                c.send_as(&t, name, CHAT_BODY)?;
                Ok(c.read()?.status == 200)
            })();
            if matches!(ok, Ok(true)) {
                let _ = h.record(us(sent.elapsed()));
            } else {
                errors += 1;
            }
        }
        out.push(json!({"errors": errors, "latency": percentiles(&h)}));
    }
    println!(
        "{}",
        json!({"mode": "handshake", "names": names.len(), "rounds": out})
    );
}

// ---- many streams at once ------------------------------------------------------

/// `streams --url URL --concurrency N`: N connections each ask for one
/// stream at the same moment (a barrier); time to first token and every
/// gap between chunks, over all of them. `gap_min`/`gap_max` show a stall
/// (a long gap, and the burst after it: a short one).
pub(crate) fn streams(args: &[String]) {
    let url = arg(args, "--url").expect("--url");
    let n: usize = num(args, "--concurrency", 64);
    let t = Arc::new(target(&url, args));
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let workers: Vec<_> = (0..n)
        .map(|_| {
            let t = Arc::clone(&t);
            let barrier = Arc::clone(&barrier);
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let conn = Conn::open(&t);
                    barrier.wait();
                    let mut conn = conn.ok()?;
                    let sent = Instant::now();
                    conn.send(&t, STREAM_BODY).ok()?;
                    let r = conn.read().ok()?;
                    (r.status == 200 && !r.chunks.is_empty()).then_some((sent, r.chunks))
                })
                .expect("spawn")
        })
        .collect();
    let mut ttft = histogram();
    let mut gaps = histogram();
    let mut errors = 0;
    for w in workers {
        match w.join().ok().flatten() {
            Some((sent, chunks)) => {
                let _ = ttft.record(us(chunks[0] - sent));
                for pair in chunks.windows(2) {
                    let _ = gaps.record(us(pair[1] - pair[0]));
                }
            }
            None => errors += 1,
        }
    }
    let gap_min = (!gaps.is_empty()).then(|| gaps.min() as f64 / 1000.0);
    println!(
        "{}",
        json!({"mode": "streams", "concurrency": n, "errors": errors,
               "ttft": percentiles(&ttft), "gap": percentiles(&gaps), "gap_min_ms": gap_min})
    );
}

// ---- idle keep-alive connections -------------------------------------------------

/// `idle --url URL --connections N` (plain HTTP): opens N connections,
/// one request on each (so each is a served keep-alive connection), then
/// prints `{"held": N, "errors": E}` and keeps them open until its stdin
/// closes. Raises its own open-file limit to the hard limit.
pub(crate) fn idle(args: &[String]) {
    use std::io::{BufRead, Read, Write};
    let url = arg(args, "--url").expect("--url");
    let n: usize = num(args, "--connections", 1000);
    let t = target(&url, args);
    assert!(t.tls.is_none(), "idle: plain http:// only");
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    let request = crate::client::request(&t, &t.host, CHAT_BODY);
    let mut open = Vec::with_capacity(n);
    let mut errors = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    for _ in 0..n {
        let one = (|| -> std::io::Result<std::net::TcpStream> {
            let mut s = std::net::TcpStream::connect_timeout(&t.addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(request.as_bytes())?;
            // The whole answer: headers, then content-length bytes.
            let mut got = Vec::new();
            loop {
                let k = s.read(&mut buf)?;
                if k == 0 {
                    return Err(std::io::Error::other("closed"));
                }
                got.extend_from_slice(&buf[..k]);
                let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") {
                    return Err(std::io::Error::other("not 200"));
                }
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| std::io::Error::other("no content-length"))?;
                if got.len() >= end + 4 + length {
                    return Ok(s);
                }
            }
        })();
        match one {
            Ok(s) => open.push(s),
            Err(_) => errors += 1,
        }
    }
    println!(
        "{}",
        json!({"mode": "idle", "held": open.len(), "errors": errors})
    );
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line).unwrap_or(0) > 0 {
        line.clear();
    }
    drop(open);
}
