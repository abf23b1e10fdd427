//! Benchmark tools, driven by `cargo xtask bench`:
//!
//! - `leash-bench upstream --listen ADDR [--delay-ms N] [--size BYTES]
//!   [--chunks N --gap-ms N] [--tls-names a,b --tls-ca-out FILE]`: a lean
//!   OpenAI-compatible upstream (hyper). A chat completion of about `size`
//!   bytes after `delay-ms` (a request's `x-bench-size` / `x-bench-delay-ms`
//!   headers override both); with `"stream":true` in the body, `chunks` SSE
//!   events `gap-ms` apart. With `--tls-names`, it serves TLS with a leaf
//!   for those names from a throwaway CA written to `--tls-ca-out`.
//! - `leash-bench load --url URL --rate R --seconds S [--connections C]`:
//!   open-loop load at a fixed rate. Each request has an intended send time
//!   (`start + i / rate`); latency is measured from it, so a stalled server
//!   cannot hide its queue (coordinated omission corrected). Plain threads
//!   and blocking sockets, so timers are precise to tens of microseconds.
//! - `leash-bench saturate --url URL --seconds S --connections C`: closed
//!   loop, every connection back to back: the throughput ceiling.
//! - `leash-bench sse --url URL --requests N`: streams, one after another;
//!   time to first token and gaps between chunks.
//!
//! - `leash-bench handshake --url URL --names a,b,... [--rounds N]`: one
//!   request per new connection, one after another, cycling through `names`
//!   as the TLS server name (and Host): with a fresh agent, the first round
//!   shows certificate minting (cache cold), later ones the cache hit.
//!
//! Client options of `load`, `saturate`, `sse` and `handshake`: `https://`
//! URLs with `--ca PEM` (the only root trusted), `--connect IP:PORT` to dial
//! an address other than the URL's, `--header 'name: value'` (repeatable),
//! `--new-connection` (a fresh connection, and full TLS handshake, for
//! every request).
//!
//! Results are one JSON object on stdout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a benchmark tool: failing loudly is right, and the casts are of counts and durations"
)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Response};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

const CHAT_BODY: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}"#;
const STREAM_BODY: &str =
    r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Say hello"}]}"#;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("upstream") => upstream(&args),
        Some("load") => load(&args),
        Some("saturate") => saturate(&args),
        Some("sse") => sse(&args),
        Some("handshake") => handshake(&args),
        _ => {
            eprintln!(
                "usage: leash-bench upstream|load|saturate|sse|handshake ... (see the source header)"
            );
            std::process::exit(2);
        }
    }
}

// ---- the upstream -----------------------------------------------------------

#[derive(Clone)]
struct UpstreamConfig {
    delay: Duration,
    body: Bytes,
    /// Bodies made ahead for the sizes a request may ask for.
    sized: Arc<std::collections::HashMap<usize, Bytes>>,
    chunks: usize,
    gap: Duration,
}

fn chat_body(size: usize) -> Bytes {
    let base = json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_764_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    });
    let overhead = base.to_string().len();
    let text = "lorem ipsum ".repeat(size.saturating_sub(overhead) / 12 + 1);
    let mut v = base;
    v["choices"][0]["message"]["content"] = json!(&text[..size.saturating_sub(overhead).max(1)]);
    Bytes::from(v.to_string())
}

fn sse_event(i: usize, last: bool) -> Bytes {
    let chunk = if last {
        json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 9, "completion_tokens": i, "total_tokens": 9 + i}})
    } else {
        json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
               "choices": [{"index": 0, "delta": {"content": format!("token{i} ")}, "finish_reason": null}]})
    };
    let mut out = format!("data: {chunk}\n\n");
    if last {
        out.push_str("data: [DONE]\n\n");
    }
    Bytes::from(out)
}

struct SseBody {
    cfg: UpstreamConfig,
    next: usize,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if self.next > self.cfg.chunks {
            return Poll::Ready(None);
        }
        if self.next > 0 && !self.cfg.gap.is_zero() {
            let gap = self.cfg.gap;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let i = self.next;
        self.next += 1;
        let last = i == self.cfg.chunks;
        Poll::Ready(Some(Ok(http_body::Frame::data(sse_event(i, last)))))
    }
}

use std::future::Future as _;

type UpBody = http_body_util::Either<Full<Bytes>, SseBody>;

async fn answer(
    cfg: UpstreamConfig,
    req: Request<Incoming>,
) -> Result<Response<UpBody>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let delay = header("x-bench-delay-ms").map_or(cfg.delay, Duration::from_millis);
    let answer = header("x-bench-size")
        .and_then(|n| cfg.sized.get(&usize::try_from(n).ok()?).cloned())
        .unwrap_or_else(|| cfg.body.clone());
    let body = req
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let stream = body.windows(13).any(|w| w == b"\"stream\":true");
    let resp = if stream {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(http_body_util::Either::Right(SseBody {
                cfg,
                next: 0,
                sleep: None,
            }))
    } else {
        Response::builder()
            .header("content-type", "application/json")
            .body(http_body_util::Either::Left(Full::new(answer)))
    };
    Ok(resp.expect("response"))
}

fn upstream(args: &[String]) {
    let listen: SocketAddr = arg(args, "--listen")
        .unwrap_or_else(|| "127.0.0.1:9998".into())
        .parse()
        .expect("--listen IP:PORT");
    let size = num(args, "--size", 1024);
    let sized = [size, 1024, 10 * 1024]
        .into_iter()
        .map(|n| (n, chat_body(n)))
        .collect();
    let cfg = UpstreamConfig {
        delay: Duration::from_millis(num(args, "--delay-ms", 0)),
        body: chat_body(size),
        sized: Arc::new(sized),
        chunks: num(args, "--chunks", 20),
        gap: Duration::from_millis(num(args, "--gap-ms", 10)),
    };
    let tls = arg(args, "--tls-names").map(|names| {
        let ca = leash_tests::tls::TestCa::new("leash-bench public CA");
        let out = arg(args, "--tls-ca-out").expect("--tls-ca-out FILE with --tls-names");
        ca.write_cert(std::path::Path::new(&out));
        let names: Vec<&str> = names.split(',').collect();
        ca.identity(&names).acceptor()
    });
    let threads = num(args, "--threads", 1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
            println!("{}", json!({"listening": listen.to_string()}));
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let cfg = cfg.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(cfg.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    if let Some(tls) = tls {
                        if let Ok(stream) = tls.accept(tcp).await {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    } else {
                        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                });
            }
        });
}

// ---- a minimal blocking HTTP/1.1 client ----------------------------------------

/// Where and how the client connects; shared by every worker thread.
struct Target {
    addr: SocketAddr,
    /// Host header and TLS server name.
    host: String,
    path: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    headers: String,
    new_connection: bool,
}

fn target(url: &str, args: &[String]) -> Target {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        (
            false,
            url.strip_prefix("http://")
                .expect("http:// or https:// URL"),
        )
    };
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let addr = arg(args, "--connect").map_or_else(
        || {
            let with_port = if host.contains(':') {
                host.to_owned()
            } else {
                format!("{host}:{}", if tls { 443 } else { 80 })
            };
            std::net::ToSocketAddrs::to_socket_addrs(&with_port)
                .expect("resolve")
                .next()
                .expect("an address")
        },
        |a| a.parse().expect("--connect IP:PORT"),
    );
    let tls = tls.then(|| {
        let ca = arg(args, "--ca").expect("--ca PEM for an https:// URL");
        let pem = std::fs::read(&ca).expect("read --ca");
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            roots.add(cert.expect("a PEM certificate")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Every new connection is a full handshake: the worst case, and
        // what a fresh process (most SDK clients) does.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    });
    let mut headers = String::new();
    for (i, a) in args.iter().enumerate() {
        if a == "--header" {
            let h = args.get(i + 1).expect("--header 'name: value'");
            headers.push_str(h);
            headers.push_str("\r\n");
        }
    }
    Target {
        addr,
        host: host.split(':').next().unwrap_or(host).to_owned(),
        path,
        tls,
        headers,
        new_connection: args.iter().any(|a| a == "--new-connection"),
    }
}

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

struct Conn {
    io: BufReader<Box<dyn Io>>,
}

/// What reading one response saw.
struct Read1 {
    status: u16,
    /// Arrival times of body chunks (chunked encoding) or of the body.
    chunks: Vec<Instant>,
}

impl Conn {
    fn open(t: &Target) -> std::io::Result<Self> {
        Self::open_as(t, &t.host)
    }

    /// A connection presenting `name` as the TLS server name.
    fn open_as(t: &Target, name: &str) -> std::io::Result<Self> {
        let s = TcpStream::connect_timeout(&t.addr, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let io: Box<dyn Io> = match &t.tls {
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from(name.to_owned())
                    .map_err(std::io::Error::other)?;
                let conn = rustls::ClientConnection::new(Arc::clone(config), name)
                    .map_err(std::io::Error::other)?;
                let mut tls = rustls::StreamOwned::new(conn, s);
                // Finish the handshake now, so a failure is a connect error.
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock)?;
                }
                Box::new(tls)
            }
            None => Box::new(s),
        };
        Ok(Self {
            io: BufReader::with_capacity(64 * 1024, io),
        })
    }

    fn send(&mut self, t: &Target, body: &str) -> std::io::Result<()> {
        self.send_as(t, &t.host, body)
    }

    fn send_as(&mut self, t: &Target, host: &str, body: &str) -> std::io::Result<()> {
        let req = format!(
            "POST {} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\nauthorization: Bearer sk-bench\r\n{}content-length: {}\r\n\r\n{body}",
            t.path,
            t.headers,
            body.len()
        );
        let w = self.io.get_mut();
        w.write_all(req.as_bytes())?;
        w.flush()
    }

    fn read(&mut self) -> std::io::Result<Read1> {
        let mut line = String::new();
        self.io.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            line.clear();
            self.io.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut chunks = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.io.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                    .map_err(|_| std::io::Error::other("bad chunk size"))?;
                if size == 0 {
                    line.clear();
                    self.io.read_line(&mut line)?;
                    break;
                }
                let mut buf = vec![0; size + 2];
                self.io.read_exact(&mut buf)?;
                chunks.push(Instant::now());
            }
        } else {
            let n = length.ok_or_else(|| std::io::Error::other("no content-length"))?;
            let mut buf = vec![0; n];
            self.io.read_exact(&mut buf)?;
            chunks.push(Instant::now());
        }
        Ok(Read1 { status, chunks })
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
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

fn us(d: Duration) -> u64 {
    d.as_micros().max(1) as u64
}

// ---- open loop ----------------------------------------------------------------

fn load(args: &[String]) {
    let url = arg(args, "--url").expect("--url");
    let rate: f64 = num(args, "--rate", 1000.0);
    let seconds: f64 = num(args, "--seconds", 10.0);
    let conns: usize = num(
        args,
        "--connections",
        ((rate / 100.0) as usize).clamp(4, 64),
    );
    let warmup: f64 = num(args, "--warmup", 1.0);
    let body = if arg(args, "--stream").is_some() {
        STREAM_BODY
    } else {
        CHAT_BODY
    };
    let t = Arc::new(target(&url, args));
    let total = (rate * seconds) as u64;
    let warm = (rate * warmup) as u64;
    let errors = Arc::new(AtomicU64::new(0));
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
            let completed = Arc::clone(&completed);
            std::thread::spawn(move || {
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
                    let ok = (|| -> std::io::Result<bool> {
                        if conn.is_none() {
                            conn = Some(Conn::open(&t)?);
                        }
                        let c = conn.as_mut().expect("connection");
                        c.send(&t, body)?;
                        Ok(c.read()?.status == 200)
                    })();
                    let done = Instant::now();
                    match ok {
                        Ok(true) => {}
                        Ok(false) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
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
            "latency": percentiles(&corrected),
            "service": percentiles(&service),
        })
    );
}

// ---- closed loop ----------------------------------------------------------------

fn saturate(args: &[String]) {
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

fn sse(args: &[String]) {
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

fn handshake(args: &[String]) {
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
