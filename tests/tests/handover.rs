//! Hand-overs under open-loop load (1,000 requests/s on new connections,
//! 20 SSE streams in flight): `SIGUSR2` makes the gateway start its
//! successor on the same listening sockets — the same binary, or an
//! upgraded one put at its path — and the old process drains and exits.
//! No request fails, no stream is cut, every exchange is in the audit
//! trail, and the chain verifies across the two processes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use leash_tests::{
    fleet::wait_until,
    handover::{Successor, Upgrade, gone, leash_reload, wait_successor},
    harness::{
        Leash, assert_success, http_get, http_request, leash_command, mock_providers_yaml, run,
    },
    mock::MockProvider,
};
use serde_json::json;

fn chat(leash_addr: std::net::SocketAddr, stream: bool, headers: &[(&str, &str)]) -> (u16, String) {
    let body = json!({"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
    let mut all = vec![
        ("content-type", "application/json"),
        ("authorization", "Bearer sk-test"),
    ];
    all.extend_from_slice(headers);
    match http_request(
        leash_addr,
        "POST",
        "/v1/openai/chat/completions",
        &all,
        body.to_string().as_bytes(),
    ) {
        Some((status, _, body)) => (status, String::from_utf8_lossy(&body).into_owned()),
        None => (
            0,
            "no answer (connection refused, reset or timed out)".to_owned(),
        ),
    }
}

/// Open-loop load: requests at 1,000 per second on new connections,
/// each sent at its intended time by one of 16 clients whatever the
/// answers before it took, and 20 SSE streams of 30 chunks 100 ms apart
/// (in flight across a hand-over).
struct Load {
    /// Held while the load runs.
    _turn: std::sync::MutexGuard<'static, ()>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    started: std::time::Instant,
    clients: Vec<std::thread::JoinHandle<Vec<String>>>,
    streams: Vec<std::thread::JoinHandle<(u16, String)>>,
}

const RATE: u32 = 1000;

/// One load at a time: each test measures 1,000 requests/s, not three
/// tests' worth on two cores.
static ONE_LOAD: std::sync::Mutex<()> = std::sync::Mutex::new(());
const CLIENTS: u32 = 16;
const STREAMS: usize = 20;

impl Load {
    fn start(addr: std::net::SocketAddr) -> Self {
        let turn = ONE_LOAD
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let started = std::time::Instant::now();
        let period = Duration::from_secs(1) * CLIENTS / RATE;
        let clients = (0..CLIENTS)
            .map(|i| {
                let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
                std::thread::spawn(move || {
                    let mut failures = Vec::new();
                    let mut next = started + period * i / CLIENTS;
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(wait) = next.checked_duration_since(std::time::Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        next += period;
                        let (status, body) = chat(addr, false, &[]);
                        sent.fetch_add(1, Ordering::Relaxed);
                        if status != 200 {
                            failures.push(format!("{status}: {body}"));
                        }
                    }
                    failures
                })
            })
            .collect();
        let streams = (0..STREAMS)
            .map(|_| {
                std::thread::spawn(move || {
                    chat(
                        addr,
                        true,
                        &[("x-mock-chunks", "30"), ("x-mock-chunk-delay-ms", "100")],
                    )
                })
            })
            .collect();
        Self {
            _turn: turn,
            stop,
            sent,
            started,
            clients,
            streams,
        }
    }

    fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the clients: no request failed, no stream was cut. Returns
    /// the requests sent and the rate they went at.
    fn finish(self) -> (usize, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        let failures: Vec<String> = self
            .clients
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let sent = self.sent.load(Ordering::Relaxed);
        assert!(
            failures.is_empty(),
            "{} of {sent} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        for s in self.streams {
            let (status, body) = s.join().unwrap();
            assert_eq!(status, 200, "{body}");
            assert!(body.contains("[DONE]"), "a stream was cut: {body}");
            assert_eq!(body.matches("data: {").count(), 31, "{body}");
        }
        #[allow(clippy::cast_precision_loss, reason = "a count of requests")]
        let rate = sent as f64 / secs;
        (sent, rate)
    }
}

/// Hands `leash` over (SIGUSR2) while `load` runs: waits for the streams
/// to be in flight, for the successor to serve and the old process to
/// exit, then for 200 requests served by the successor alone.
fn hand_over(leash: &Leash, mock: &MockProvider, load: &Load) -> Successor {
    let pid = leash.pid();
    hand_over_with(leash, mock, load, || {
        let usr2 = run(std::process::Command::new("kill").args(["-USR2", &pid.to_string()]));
        assert!(usr2.status.success());
    })
}

/// [`hand_over`], started by `trigger`.
fn hand_over_with(
    leash: &Leash,
    mock: &MockProvider,
    load: &Load,
    trigger: impl FnOnce(),
) -> Successor {
    let old_pid = leash.pid();
    let streaming = || {
        mock.requests()
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains("\"stream\":true"))
            .count()
    };
    let secs = Duration::from_secs;
    wait_until(
        "the streams at the provider",
        secs(10),
        || leash.logs(),
        || streaming() >= STREAMS,
    );
    let before = load.sent();
    trigger();
    let successor = wait_successor(&|| leash.logs(), old_pid);
    assert_ne!(successor.0, old_pid);
    let after_exit = load.sent();
    assert!(
        before > 0 && after_exit > before,
        "load ran across the hand-over"
    );
    wait_until(
        "200 requests after the hand-over",
        Duration::from_mins(1),
        || leash.logs(),
        || load.sent() >= after_exit + 200,
    );
    successor
}

/// What a hand-over under load came to, for README's "Operations".
fn record(name: &str, what: &str, sent: usize, rate: f64) {
    leash_tests::results::record(
        name,
        &json!({"what": what, "requests": sent, "rate": rate.round(), "failed": 0,
                "streams": STREAMS, "streams_cut": 0, "audited": "all, chain verified"}),
    );
}

/// Every exchange audited, the chain whole across both processes.
fn audit_complete(leash: &Leash, exchanges: usize) {
    let records = leash.wait_records(exchanges);
    assert_eq!(
        records.iter().filter(|r| r["event"].is_null()).count(),
        exchanges
    );
    assert_success(
        "audit verify",
        &run(leash_command()
            .args(["audit", "verify", "--dir"])
            .arg(&leash.audit_dir)),
    );
}

#[test]
fn a_hand_over_restart_loses_no_request_and_cuts_no_stream() {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    let load = Load::start(leash.addr);
    let _successor = hand_over(&leash, &mock, &load);
    let (sent, rate) = load.finish();
    assert_eq!(http_get(leash.admin, "/readyz").unwrap().0, 200);
    audit_complete(&leash, sent + STREAMS);
    record("handover_restart", "restart (hand-over)", sent, rate);
}

/// An upgrade: the binary at the path the gateway was started from is
/// replaced by another (renamed over it, as a package manager does); the
/// hand-over starts the new one.
#[test]
fn an_upgrade_hands_over_to_the_new_binary() {
    let mock = MockProvider::start();
    let dir = tempfile::tempdir().unwrap();
    let upgrade = Upgrade::prepare(dir.path());
    let leash = Leash::start_with_env(
        tempfile::tempdir().unwrap(),
        &mock_providers_yaml(&mock),
        &[(leash_tests::gateway::BINARY, upgrade.path().as_str())],
    );
    upgrade.install_new_version();
    let load = Load::start(leash.addr);
    let successor = hand_over(&leash, &mock, &load);
    let (sent, rate) = load.finish();
    upgrade.check_runs(&successor);
    audit_complete(&leash, sent + STREAMS);
    record("handover_upgrade", "upgrade to another binary", sent, rate);
}

/// `leash reload`: a changed config (another upstream for every provider)
/// is checked, then handed over to a successor that runs it, under load,
/// with no request failing; a broken config is refused with its line and
/// the running process keeps serving.
#[test]
fn leash_reload_applies_a_changed_config_and_refuses_a_broken_one() {
    let (mock, next) = (MockProvider::start(), MockProvider::start());
    let leash = Leash::start(&mock_providers_yaml(&mock));
    let config = leash.dir.path().join("leash.yaml");
    let reload = || leash_reload(&config, leash.admin, &leash.audit_dir);
    // Broken: refused with the place of the error; nothing changes.
    std::fs::write(&config, "providers:\n  openai: { upstream: [oops }\n").unwrap();
    let refused = reload();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
    assert!(!gone(leash.pid()));
    assert_eq!(chat(leash.addr, false, &[]).0, 200);
    assert!(next.requests().is_empty());
    // Changed: every request after the hand-over goes to the new upstream.
    std::fs::write(&config, mock_providers_yaml(&next)).unwrap();
    let load = Load::start(leash.addr);
    let _successor = hand_over_with(&leash, &mock, &load, || {
        let out = reload();
        assert_success("leash reload", &out);
        assert!(String::from_utf8_lossy(&out.stdout).contains("now served by pid"));
    });
    let (sent, rate) = load.finish();
    assert!(
        next.requests().len() >= 200,
        "the new config is not in force"
    );
    audit_complete(&leash, sent + STREAMS + 1);
    record(
        "handover_reload",
        "config reload (`leash reload`)",
        sent,
        rate,
    );
}

/// Under systemd (`Type=notify`, `NotifyAccess=all`) the gateway says it is
/// ready and which process is the service's main one; after a hand-over
/// the successor says so, so systemd follows it instead of seeing the
/// service exit. A datagram socket stands in for systemd's.
#[test]
fn the_service_manager_learns_the_successors_pid() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let next = || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mock = MockProvider::start();
    let socket_path = path.display().to_string();
    let leash = Leash::start_with_env(
        tempfile::tempdir().unwrap(),
        &mock_providers_yaml(&mock),
        &[("NOTIFY_SOCKET", socket_path.as_str())],
    );
    let first = next();
    assert_eq!(first, format!("READY=1\nMAINPID={}\n", leash.pid()));
    let usr2 = run(std::process::Command::new("kill").args(["-USR2", &leash.pid().to_string()]));
    assert!(usr2.status.success());
    let second = next();
    let pid: u32 = second
        .strip_prefix("READY=1\nMAINPID=")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{second}"));
    let _successor = Successor(pid);
    assert_ne!(pid, leash.pid());
    assert!(std::fs::metadata(format!("/proc/{pid}")).is_ok());
    assert_eq!(chat(leash.addr, false, &[]).0, 200);
}
