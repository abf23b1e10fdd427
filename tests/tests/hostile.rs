//! The hostile-input suite: over a thousand malformed or adversarial
//! requests, each on its own raw TCP connection to a running gateway (with a
//! policy, so bodies are inspected), and one mock provider that records what
//! reaches it. Every case gets the right 4xx (or the connection is closed
//! before a request was complete), nothing that should be refused is
//! forwarded, the gateway never crashes and its memory stays bounded.
//!
//! The figures (cases tried / crashes / wrongly forwarded) are printed at
//! the end and reported in SECURITY.md.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    time::Duration,
};

use leash_tests::{
    harness::{Leash, mock_providers_yaml},
    mock::MockProvider,
};

/// What a case must get back.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// One of these statuses, or the connection closed without a response
    /// (an incomplete request); never forwarded.
    Refused(&'static [u16]),
    /// Exactly this status; never forwarded.
    Status(u16),
    /// A valid request: 200, forwarded once.
    Forwarded,
    /// Both `Content-Length` and `Transfer-Encoding`: read as chunked (RFC
    /// 9112 §6.3), the length discarded, re-framed toward the provider,
    /// and the client connection closed after the answer, so nothing can
    /// be smuggled behind it.
    ReframedThenClosed,
}

struct Case {
    family: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

const PATH: &str = "/v1/openai/chat/completions";
const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}"#;

/// Any 4xx/5xx a parser may give to garbage (never 2xx or 3xx).
const BAD: &[u16] = &[400, 404, 405, 413, 414, 431, 501, 505];

fn request(method: &str, target: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nhost: leash\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn valid(body: &[u8]) -> Vec<u8> {
    request(
        "POST",
        PATH,
        &[
            ("content-type", "application/json".into()),
            ("authorization", "Bearer sk-hostile".into()),
            ("content-length", body.len().to_string()),
        ],
        body,
    )
}

/// A small deterministic generator (xorshift), so the suite is the same
/// every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[allow(clippy::too_many_lines, reason = "one family of cases after another")]
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut push = |family, bytes: Vec<u8>, expect| {
        cases.push(Case {
            family,
            bytes,
            expect,
        });
    };
    let good = valid(BODY.as_bytes());

    // Controls: valid requests are forwarded (so the suite can tell a
    // refusal from a broken gateway).
    for _ in 0..5 {
        push("control", good.clone(), Expect::Forwarded);
    }

    // Truncated at every byte: an incomplete request is never forwarded.
    for cut in 1..good.len() {
        push("truncated", good[..cut].to_vec(), Expect::Refused(&[400]));
    }

    // A chunked request truncated at every byte (inside sizes, data and the
    // final chunk): never forwarded either.
    let chunked_good = {
        let mut b = request(
            "POST",
            PATH,
            &[
                ("content-type", "application/json".into()),
                ("transfer-encoding", "chunked".into()),
            ],
            b"",
        );
        for piece in BODY.as_bytes().chunks(16) {
            b.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            b.extend_from_slice(piece);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n\r\n");
        b
    };
    let head_len = chunked_good
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap()
        + 4;
    for cut in head_len..chunked_good.len() - 2 {
        push(
            "truncated chunked",
            chunked_good[..cut].to_vec(),
            Expect::Refused(&[400]),
        );
    }
    push("control", chunked_good, Expect::Forwarded);

    // A byte no HTTP parser accepts, at every position of the request line's
    // method and path.
    let line_end = good.iter().position(|&b| b == b'\r').unwrap();
    let version_at = line_end - " HTTP/1.1".len();
    for at in 0..version_at {
        for bad in [0x00u8, 0x7f, 0xff, b'\r', b'\n', b' '] {
            if good[at] == b' ' && bad == b' ' {
                continue;
            }
            let mut b = good.clone();
            b[at] = bad;
            push("request line byte", b, Expect::Refused(BAD));
        }
    }

    // Invalid UTF-8 and control bytes in header names and values.
    for bad in [
        &b"\xff\xfe"[..],
        b"\x00",
        b"\x7f",
        b"\xc3\x28",
        b"\r",
        b"\x0b",
    ] {
        let mut v = b"x-evil: a".to_vec();
        v.extend_from_slice(bad);
        v.extend_from_slice(b"b\r\n");
        let mut b = good.clone();
        b.splice(line_end + 2..line_end + 2, v);
        // Bytes 0x80-0xff in a value are legal (obs-text) and forwarded;
        // control bytes are not.
        let obs_text = bad.iter().all(|&c| c >= 0x80 || (0x20..0x7f).contains(&c));
        push(
            "header value byte",
            b,
            if obs_text {
                Expect::Forwarded
            } else {
                Expect::Refused(BAD)
            },
        );
        let mut n = b"x-ev".to_vec();
        n.extend_from_slice(bad);
        n.extend_from_slice(b"il: 1\r\n");
        let mut b = good.clone();
        b.splice(line_end + 2..line_end + 2, n);
        push("header name byte", b, Expect::Refused(BAD));
    }
    // Obsolete line folding (a header continued on the next line).
    let mut b = good.clone();
    b.splice(
        line_end + 2..line_end + 2,
        b"x-a: 1\r\n  folded\r\n".to_vec(),
    );
    push("obs-fold", b, Expect::Refused(&[400]));

    // Framing that could smuggle a second request past a proxy.
    let body = BODY.as_bytes();
    let chunked = |data: &[u8]| {
        let mut out = format!("{:x}\r\n", data.len()).into_bytes();
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n0\r\n\r\n");
        out
    };
    for headers in [
        vec![
            ("content-length", body.len().to_string()),
            ("transfer-encoding", "chunked".to_owned()),
        ],
        vec![
            ("transfer-encoding", "chunked".to_owned()),
            ("content-length", "5".to_owned()),
        ],
    ] {
        let mut h = vec![("content-type", "application/json".to_owned())];
        h.extend(headers);
        push(
            "conflicting framing",
            request("POST", PATH, &h, &chunked(body)),
            Expect::ReframedThenClosed,
        );
    }
    let framing: Vec<Vec<(&str, String)>> = vec![
        vec![
            ("content-length", body.len().to_string()),
            ("content-length", (body.len() + 1).to_string()),
        ],
        vec![(
            "content-length",
            format!("{}, {}", body.len(), body.len() + 1),
        )],
        vec![("content-length", format!("+{}", body.len()))],
        vec![("content-length", format!("-{}", body.len()))],
        vec![("content-length", format!("{}a", body.len()))],
        vec![("content-length", "99999999999999999999999".into())],
        vec![("transfer-encoding", "gzip, chunked".into())],
        vec![("transfer-encoding", "chunked, gzip".into())],
        vec![("transfer-encoding", "xchunked".into())],
        vec![("transfer-encoding", "identity".into())],
        vec![
            ("transfer-encoding", "chunked".into()),
            ("transfer-encoding", "chunked".into()),
        ],
    ];
    for headers in framing {
        let te = headers.iter().any(|(k, _)| *k == "transfer-encoding");
        let payload = if te { chunked(body) } else { body.to_vec() };
        let mut h = vec![("content-type", "application/json".to_owned())];
        h.extend(headers);
        push(
            "conflicting framing",
            request("POST", PATH, &h, &payload),
            Expect::Refused(BAD),
        );
    }

    // Broken chunked encoding.
    let broken_chunks: Vec<Vec<u8>> = vec![
        b"zz\r\nabc\r\n0\r\n\r\n".to_vec(),
        b"-1\r\nabc\r\n0\r\n\r\n".to_vec(),
        b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n".to_vec(),
        b"3\r\nabcdef\r\n0\r\n\r\n".to_vec(),
        b"3\r\nabc0\r\n\r\n".to_vec(),
        b"3\nabc\n0\n\n".to_vec(),
        format!("3;{}\r\nabc\r\n0\r\n\r\n", "x".repeat(70_000)).into_bytes(),
        b"3\r\nabc\r\n".to_vec(),
        b"\r\n\r\n".to_vec(),
        b"0x3\r\nabc\r\n0\r\n\r\n".to_vec(),
    ];
    for payload in broken_chunks {
        push(
            "broken chunking",
            request(
                "POST",
                PATH,
                &[
                    ("content-type", "application/json".into()),
                    ("transfer-encoding", "chunked".into()),
                ],
                &payload,
            ),
            Expect::Refused(BAD),
        );
    }

    // Oversized parts.
    push(
        "oversized",
        request("POST", PATH, &[("x-big", "a".repeat(200_000))], body),
        Expect::Status(431),
    );
    let many: Vec<(&str, String)> = (0..200).map(|_| ("x-many", "1".to_owned())).collect();
    push(
        "oversized",
        request("POST", PATH, &many, body),
        Expect::Status(431),
    );
    push(
        "oversized",
        request(
            "POST",
            &format!("{PATH}?q={}", "a".repeat(200_000)),
            &[],
            body,
        ),
        Expect::Refused(&[414, 431]),
    );
    let huge = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(2 * 1024 * 1024)
    );
    push("oversized", valid(huge.as_bytes()), Expect::Status(413));
    push(
        "oversized",
        request(
            "POST",
            PATH,
            &[("transfer-encoding", "chunked".into())],
            &chunked(huge.as_bytes()),
        ),
        Expect::Status(413),
    );
    push(
        "oversized",
        request(
            "POST",
            PATH,
            &[("content-length", (64u64 << 30).to_string())],
            b"{",
        ),
        Expect::Status(413),
    );

    // Bodies the policy cannot inspect are not forwarded (on_unparseable
    // defaults to block).
    let mut bodies: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"{".to_vec(),
        br#"{"model":"m","messages":[{"role":"user","content":"a\xff\xfeb"}]}"#.to_vec(),
        br#"{"model":"m","messages":[{"role":"user","content":"\ud800"}]}"#.to_vec(),
        format!(r#"{{"n":{}}}"#, "9".repeat(5000)).into_bytes(),
        br#"{"n":1e999999}"#.to_vec(),
        br#"{"n":NaN}"#.to_vec(),
        "[".repeat(100_000).into_bytes(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000)).into_bytes(),
        br#"{"model":"m"}garbage"#.to_vec(),
        b"\xef\xbb\xbf{\"model\":\"m\"}".to_vec(),
        b"{\"model\":\"m\",}".to_vec(),
        b"{'model':'m'}".to_vec(),
        b"\x00\x00\x00".to_vec(),
    ];
    let mut rng = Rng(0x5eed_1ea5_u64);
    for _ in 0..20 {
        let mut b = BODY.as_bytes().to_vec();
        let at = rng.below(b.len());
        b[at] = [b'{', b'"', b'\\', b'\x01', b']'][rng.below(5)];
        if serde_json::from_slice::<serde_json::Value>(&b).is_err() {
            bodies.push(b);
        }
    }
    for b in bodies {
        push("uninspectable body", valid(&b), Expect::Status(400));
    }

    // Never an open proxy: absolute-form targets, CONNECT, path tricks.
    for target in [
        "http://169.254.169.254/v1/openai/chat/completions",
        "http://127.0.0.1:1/v1/openai/chat/completions",
        "https://evil.example/v1/openai/chat/completions",
    ] {
        push(
            "absolute-form",
            request(
                "POST",
                target,
                &[("content-length", body.len().to_string())],
                body,
            ),
            Expect::Refused(&[400]),
        );
    }
    push(
        "connect",
        b"CONNECT 169.254.169.254:80 HTTP/1.1\r\nhost: 169.254.169.254:80\r\n\r\n".to_vec(),
        Expect::Refused(&[400, 405]),
    );
    for target in [
        "/v1/openai/../anthropic/v1/messages",
        "/v1/openai/%2e%2e/%2e%2e/admin",
        "/v1/openai/chat%2Fcompletions",
        "/v1/openai/chat%5ccompletions",
        "/v1/openai\\..\\admin",
        "/v1/../../etc/passwd",
        "/v1/%2e%2e/openai/chat/completions",
        "/v1/evil.example/chat/completions",
        "/v1//169.254.169.254/latest/meta-data",
        "/v1/openai/%00/x",
        "*",
        "v1/openai/chat/completions",
    ] {
        push(
            "path trick",
            request(
                "POST",
                target,
                &[("content-length", body.len().to_string())],
                body,
            ),
            Expect::Refused(&[400, 404]),
        );
    }
    for version in [
        "HTTP/1.2",
        "HTTP/2.0",
        "HTTP/0.9",
        "HTTP/1",
        "HTTPS/1.1",
        "http/1.1",
    ] {
        let mut b = good.clone();
        let v = good.windows(8).position(|w| w == b"HTTP/1.1").unwrap();
        b.splice(v..v + 8, version.bytes());
        push("version", b, Expect::Refused(BAD));
    }

    // Random garbage, some of it starting like a request.
    for i in 0..400 {
        let len = 1 + rng.below(600);
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 3 == 0 {
            b.splice(
                0..0,
                b"POST /v1/openai/chat/completions HTTP/1.1\r\n".to_vec(),
            );
        }
        push("garbage", b, Expect::Refused(BAD));
    }
    cases
}

/// Reads until a status line arrived, the peer closed, or `timeout`.
fn status_line(s: &mut TcpStream, buf: &mut Vec<u8>, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut chunk = [0u8; 8192];
    while !buf.contains(&b'\n') {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// Sends one case on a fresh connection; the status of the first response,
/// or `None` when the gateway closed without one. A request the gateway is
/// still waiting on (incomplete) gets the write side closed after a moment,
/// as a client that gave up would.
fn send(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).expect("the gateway accepts connections");
    // The gateway may answer (and close) before reading everything.
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    if !status_line(&mut s, &mut buf, Duration::from_millis(500)) && buf.is_empty() {
        let _ = s.shutdown(Shutdown::Write);
        status_line(&mut s, &mut buf, Duration::from_secs(10));
    }
    let line = buf.split(|&b| b == b'\n').next()?;
    let text = String::from_utf8_lossy(line);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Every case sent, eight clients at a time (an incomplete request costs
/// its client a wait); the answers in case order.
fn answers(addr: SocketAddr, cases: &[Case]) -> Vec<Option<u16>> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|w| {
                scope.spawn(move || {
                    (w..cases.len())
                        .step_by(8)
                        .map(|i| (i, send(addr, &cases[i].bytes)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = vec![None; cases.len()];
        for w in workers {
            for (i, got) in w.join().unwrap() {
                all[i] = got;
            }
        }
        all
    })
}

/// Sends `bytes` and reads until the gateway closes (true) or 5 s pass.
fn answered_then_closed(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

/// The peak resident memory of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_thousand_hostile_requests_are_refused_and_never_forwarded() {
    let mock = MockProvider::start();
    let mut leash = Leash::start(&format!(
        "{}gateway: {{ max_body_bytes: 1048576 }}\npolicy:\n  version: 1\n  rules:\n    - {{ name: block-secrets, match: {{ detectors: [secrets] }}, action: block }}\n",
        mock_providers_yaml(&mock)
    ));
    let cases = cases();
    assert!(cases.len() >= 1000, "only {} cases", cases.len());
    let mut wrong: Vec<String> = Vec::new();
    let mut by_family: BTreeMap<&str, usize> = BTreeMap::new();
    let mut forwarded_expected = 0;
    // A refusal is an answer; a connection closed without one is counted
    // apart (it is right only for a request that never completed).
    let (mut refused, mut no_answer, mut served) = (0usize, 0usize, 0usize);
    let answers = answers(leash.addr, &cases);
    for (i, case) in cases.iter().enumerate() {
        *by_family.entry(case.family).or_default() += 1;
        let got = answers[i];
        match got {
            None => no_answer += 1,
            Some(s) if s >= 400 => refused += 1,
            Some(_) => served += 1,
        }
        let ok = match case.expect {
            Expect::Forwarded => {
                forwarded_expected += 1;
                got == Some(200)
            }
            Expect::ReframedThenClosed => {
                // Once more, reading to the end: the gateway must close.
                forwarded_expected += 2;
                got == Some(200) && answered_then_closed(leash.addr, &case.bytes)
            }
            Expect::Status(s) => got == Some(s),
            Expect::Refused(allowed) => got.is_none_or(|s| allowed.contains(&s)),
        };
        if !ok {
            wrong.push(format!(
                "case {i} ({}): expected {:?}, got {got:?}; first bytes {:?}",
                case.family,
                case.expect,
                String::from_utf8_lossy(&case.bytes[..case.bytes.len().min(120)])
            ));
        }
        assert!(
            leash.pid() > 0 && std::fs::metadata(format!("/proc/{}", leash.pid())).is_ok(),
            "the gateway died at case {i} ({})",
            case.family
        );
    }
    let forwarded = mock.requests().len();
    let wrongly_forwarded = forwarded.saturating_sub(forwarded_expected);
    let peak_kib = peak_rss_kib(leash.pid());
    eprintln!(
        "hostile suite: {} cases ({by_family:?}); refused {refused}, no answer {no_answer}, served {served}; crashes 0; wrongly forwarded {wrongly_forwarded}; wrong answers {}; peak RSS {} MiB",
        cases.len(),
        wrong.len(),
        peak_kib / 1024
    );
    leash_tests::results::record(
        "hostile",
        &serde_json::json!({
            "cases": cases.len(),
            "families": by_family,
            "refused": refused,
            "no_answer": no_answer,
            "served": served,
            "crashes": 0,
            "wrongly_forwarded": wrongly_forwarded,
            "wrong_answers": wrong.len(),
            "peak_rss_mib": peak_kib / 1024,
        }),
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(
        forwarded,
        forwarded_expected,
        "requests that should have been refused reached the provider: {:#?}",
        mock.requests()
            .iter()
            .map(|r| format!(
                "{} {} {:?} {}",
                r.method,
                r.uri,
                r.headers.keys().collect::<Vec<_>>(),
                String::from_utf8_lossy(&r.body)
            ))
            .collect::<Vec<_>>()
    );
    // Every request that did reach it went to the configured upstream with
    // the upstream's own host, never one a client named.
    for r in mock.requests() {
        assert_eq!(r.header("host"), Some(mock.addr().to_string().as_str()));
    }
    assert!(
        peak_kib < 200 * 1024,
        "peak RSS {} MiB: memory is not bounded",
        peak_kib / 1024
    );
    assert!(leash.stop().success(), "{}", leash.logs());
}
