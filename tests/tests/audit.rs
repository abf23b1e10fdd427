//! The audit trail end to end: a real run verifies; an edited, deleted or
//! reordered record is named by `leash audit verify`; a crash under load
//! leaves a trail that verifies, its torn record marked on restart; and
//! `leash audit query` sums spend per team.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{path::Path, process::Output, time::Duration};

use leash_tests::{
    harness::{
        Leash, assert_success, http_request, leash_command, mock_providers_yaml, run, segment_files,
    },
    mock::MockProvider,
};
use serde_json::Value;

const CHAT: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

fn verify(dir: &Path) -> Output {
    run(leash_command().args(["audit", "verify", "--dir"]).arg(dir))
}

fn segment(dir: &Path) -> std::path::PathBuf {
    segment_files(dir).pop().unwrap()
}

fn chat(leash: &Leash, team: &str) {
    let (status, _, _) = http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[("x-leash-team", team)],
        CHAT,
    )
    .unwrap();
    assert_eq!(status, 200);
}

#[test]
fn a_real_run_verifies_and_tampering_is_named() {
    let mock = MockProvider::start();
    let mut leash = Leash::start(&mock_providers_yaml(&mock));
    for team in ["a", "b", "a", "c", "a"] {
        chat(&leash, team);
    }
    assert!(leash.stop().success());
    let out = verify(&leash.audit_dir);
    assert_success("verify a real run", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok: 5 records"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let records = leash.audit_records();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1);
        assert_eq!(r["hash"].as_str().unwrap().len(), 64);
    }
    assert_eq!(records[1]["prev_hash"], records[0]["hash"]);

    let file = segment(&leash.audit_dir);
    let original = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let check = |text: String, line: usize, what: &str| {
        std::fs::write(&file, text).unwrap();
        let out = verify(&leash.audit_dir);
        assert_eq!(out.status.code(), Some(1), "{what} went unnoticed");
        let err = String::from_utf8_lossy(&out.stderr);
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(err.contains(&format!("{name}:{line}")), "{what}: {err}");
    };
    // Edited: a team name changed in record 3.
    check(
        original
            .replacen("\"team\":\"a\"", "\"team\":\"z\"", 2)
            .replacen("\"team\":\"z\"", "\"team\":\"a\"", 1),
        3,
        "an edit",
    );
    // Deleted: record 2 removed.
    let deleted: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| *l)
        .collect();
    check(deleted.join("\n") + "\n", 2, "a deletion");
    // Reordered: records 3 and 4 swapped.
    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    check(swapped.join("\n") + "\n", 3, "a reorder");
    std::fs::write(&file, original).unwrap();
    assert_success("verify restored", &verify(&leash.audit_dir));
}

#[test]
fn kill_9_under_load_leaves_a_trail_that_verifies_and_restarts_mark_torn_records() {
    let mock = MockProvider::start();
    let mut leash = Leash::start(&mock_providers_yaml(&mock));
    let addr = leash.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut ok = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && ok < 2000 {
                    if http_request(addr, "POST", "/v1/openai/chat/completions", &[], CHAT)
                        .is_some_and(|r| r.0 == 200)
                    {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    leash.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(served > 20, "too little load to mean anything: {served}");
    let out = verify(&leash.audit_dir);
    assert_success("verify after kill -9 under load", &out);

    // A crash mid-write, made certain: a record cut short at the end.
    let file = segment(&leash.audit_dir);
    let mut data = std::fs::read(&file).unwrap();
    data.extend_from_slice(br#"{"id":"cut-short","ts":"2026"#);
    std::fs::write(&file, &data).unwrap();
    let out = verify(&leash.audit_dir);
    assert_success("verify with an open torn tail", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("torn record"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    leash.restart();
    chat(&leash, "after-restart");
    assert!(leash.stop().success());
    let out = verify(&leash.audit_dir);
    assert_success("verify after restart", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 torn record(s) from crashes, marked"),
        "{text}"
    );
    let records = leash.audit_records();
    let marker = records
        .iter()
        .find(|r| r["event"] == "torn_tail")
        .expect("torn_tail marker");
    assert_eq!(marker["torn_bytes"], 28);
}

#[test]
fn query_sums_spend_per_team() {
    let mock = MockProvider::start();
    let mut leash = Leash::start(&mock_providers_yaml(&mock));
    for team in ["research", "research", "support"] {
        chat(&leash, team);
    }
    assert!(leash.stop().success());
    let out = run(leash_command()
        .args(["audit", "query", "--sum-by", "team", "--json", "--dir"])
        .arg(&leash.audit_dir));
    assert_success("audit query", &out);
    let sums: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sums["research"]["requests"], 2);
    assert_eq!(sums["research"]["input_tokens"], 22);
    assert_eq!(sums["support"]["output_tokens"], 7);
    // gpt-4o-mini: 8 uncached × 0.15 + 3 cached × 0.075 + 7 × 0.6 per 1M tokens.
    let one = (8.0 * 0.15 + 3.0 * 0.075 + 7.0 * 0.6) / 1e6;
    assert!(
        (sums["research"]["cost_usd"].as_f64().unwrap() - 2.0 * one).abs() < 1e-12,
        "{sums}"
    );
    let out = run(leash_command()
        .args(["audit", "query", "--team", "support", "--dir"])
        .arg(&leash.audit_dir));
    assert_success("audit query --team", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("team=support"));
    let out = run(leash_command()
        .args(["audit", "tail", "-n", "2", "--dir"])
        .arg(&leash.audit_dir));
    assert_success("audit tail", &out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}

/// One request over a fresh connection: the response's request id if the
/// client received the response completely (all `content-length` bytes, or
/// the chunked terminator).
fn complete_response_id(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!(
        "POST /v1/openai/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        CHAT.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    s.write_all(CHAT).ok()?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|n| n.trim().parse::<usize>().ok());
    let complete = match length {
        Some(n) => body.len() == n,
        None => body.ends_with("0\r\n\r\n"),
    };
    if !head.starts_with("HTTP/1.1 200") || !complete {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("x-leash-request-id: "))
        .map(|id| id.trim().to_owned())
}

/// Load, then `kill -9`, with a slow disk (a write delay): the ids of the
/// responses the clients received completely, and those of the records on
/// disk.
fn received_and_recorded(
    durability: &str,
) -> (Vec<String>, std::collections::HashSet<String>, Leash) {
    let mock = MockProvider::start();
    let config = format!(
        "{}audit:\n  durability: {durability}\n",
        mock_providers_yaml(&mock)
    );
    let mut leash = Leash::start_with_env(
        tempfile::tempdir().unwrap(),
        &config,
        &[("LEASH_FAULT_AUDIT_WRITE_DELAY_MS", "150")],
    );
    let addr = leash.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some(id) = complete_response_id(addr) {
                        ids.push(id);
                    }
                }
                ids
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    leash.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let received: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(received.len() > 10, "too little load: {}", received.len());
    let recorded = leash
        .audit_records()
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    (received, recorded, leash)
}

#[test]
fn in_sync_mode_every_response_received_has_its_record_after_kill_9() {
    let (received, recorded, leash) = received_and_recorded("sync");
    let missing: Vec<&String> = received
        .iter()
        .filter(|id| !recorded.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} responses the clients received have no record: {missing:?}",
        missing.len(),
        received.len()
    );
    assert_success("verify", &verify(&leash.audit_dir));
}

/// The control for the test above: with `batch` and the same slow disk, a
/// crash loses records of responses already delivered (the documented bound:
/// the unsynced batch), so the sync test can tell the modes apart.
#[test]
fn in_batch_mode_a_crash_can_lose_the_unsynced_batch() {
    let (received, recorded, leash) = received_and_recorded("batch");
    let missing = received.iter().filter(|id| !recorded.contains(*id)).count();
    assert!(
        missing > 0,
        "batch mode lost nothing with a 40 ms write delay: the sync test proves nothing"
    );
    assert_success("verify", &verify(&leash.audit_dir));
}

#[test]
fn segments_rotate_by_size_and_expire_by_age_and_the_chain_still_verifies() {
    let mock = MockProvider::start();
    let config = format!(
        "{}audit:\n  segment_max_bytes: 4096\n  retention_days: 1\n",
        mock_providers_yaml(&mock)
    );
    let mut leash = Leash::start(&config);
    for _ in 0..24 {
        chat(&leash, "a");
    }
    leash.wait_records(24);
    let segments = segment_files;
    let before = segments(&leash.audit_dir);
    assert!(before.len() >= 3, "no rotation at 4 KiB: {before:?}");
    assert_success("verify across segments", &verify(&leash.audit_dir));
    // Age the oldest segment past the retention; the next rotation removes it.
    let out = run(std::process::Command::new("touch")
        .args(["-d", "3 days ago"])
        .arg(&before[0]));
    assert_success("touch", &out);
    for _ in 0..12 {
        chat(&leash, "a");
    }
    assert!(leash.stop().success());
    let after = segments(&leash.audit_dir);
    assert!(
        !after.contains(&before[0]),
        "the expired segment is still there"
    );
    let out = verify(&leash.audit_dir);
    assert_success("verify after retention", &out);
    // The removal is in the chain itself.
    let text = leash.audit_text();
    assert!(
        text.contains("\"event\":\"retention\""),
        "no retention event"
    );
    // Deleting the oldest segment by hand is not retention: verify says so.
    let oldest = segments(&leash.audit_dir)[0].clone();
    std::fs::remove_file(&oldest).unwrap();
    let out = verify(&leash.audit_dir);
    assert!(
        !out.status.success(),
        "a deleted segment passed as retention"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deleted, not expired")
            || String::from_utf8_lossy(&out.stderr).contains("deleted, not expired"),
        "{out:?}"
    );
}

/// Two audit batches fail half-written (a torn write, as a full disk or an
/// I/O error leaves it): the chain head does not move, the torn bytes are
/// cut off and the same records are re-sealed and written on the retry.
/// Afterwards every request has its record, in order, and the chain
/// verifies. The control is the same run without the injected failures.
#[test]
fn a_failed_audit_write_is_retried_and_the_chain_still_verifies() {
    for fail in ["", "2,3"] {
        let mock = MockProvider::start();
        let config = format!("{}audit:\n  durability: sync\n", mock_providers_yaml(&mock));
        let leash = Leash::start_with_env(
            tempfile::tempdir().unwrap(),
            &config,
            &[("LEASH_FAULT_AUDIT_WRITE_FAIL", fail)],
        );
        for _ in 0..6 {
            chat(&leash, "ops");
        }
        let records = leash.wait_records(6);
        let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6], "fail {fail:?}");
        let out = verify(&leash.audit_dir);
        assert_success(&format!("verify (fail {fail:?})"), &out);
        let errors = leash
            .metrics()
            .lines()
            .find_map(|l| l.strip_prefix("leash_audit_write_errors_total "))
            .map(|v| v.trim().to_owned());
        let expected = if fail.is_empty() { "0" } else { "2" };
        assert_eq!(errors.as_deref(), Some(expected), "fail {fail:?}");
    }
    leash_tests::results::record(
        "audit_write_failures",
        &serde_json::json!({"injected": 2, "records": 6, "lost": 0, "verify": "ok"}),
    );
}

/// A client that leaves before Leash answers (the provider is slow) still
/// leaves its record, marked as not delivered (no status, not completed).
/// The later event that shows nothing more will come is a second, normal
/// call's record. (An answer dropped unsent inside Leash — a route's failed
/// attempt — is covered by `routes.rs`: each attempt has its record.)
#[test]
fn a_client_gone_before_the_answer_still_has_its_record() {
    use std::io::Write as _;
    let mock = MockProvider::start();
    let leash = Leash::start(&format!(
        "{}  slowai: {{ kind: openai, upstream: \"{}/delay/400/v1\" }}\n",
        mock_providers_yaml(&mock),
        mock.url()
    ));
    let mut stream = std::net::TcpStream::connect(leash.addr).unwrap();
    write!(
        stream,
        "POST /v1/slowai/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        CHAT.len()
    )
    .unwrap();
    stream.write_all(CHAT).unwrap();
    // Gone as soon as the provider has the request.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mock.requests().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never reached the provider"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(stream);
    // The control: a normal call, answered and recorded.
    let (status, _, _) = http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[("content-type", "application/json")],
        CHAT,
    )
    .unwrap();
    assert_eq!(status, 200);
    let records = leash.wait_records(2);
    let gone = records
        .iter()
        .find(|r| r["provider"] == "slowai")
        .unwrap_or_else(|| panic!("no record of the call whose client left: {records:#?}"));
    assert_eq!(gone["status"], Value::Null, "{gone}");
    assert_eq!(gone["completed"], false, "{gone}");
}

/// `leash audit export`: the run from `--since` to `--until` as sealed JSON
/// Lines verifies on its own (`verify --export`), its proof anchors it to
/// the record before (whose hash the full trail holds), CSV has one row per
/// record, and an edited export fails (control: the unedited one passes).
#[test]
fn an_export_verifies_on_its_own_and_its_proof_anchors_it() {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    for i in 0..6 {
        chat(&leash, &format!("team-{i}"));
    }
    let records = leash.wait_records(6);
    let (since, until) = (
        records[1]["ts"].as_str().unwrap(),
        records[4]["ts"].as_str().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let (file, proof) = (dir.path().join("run.jsonl"), dir.path().join("proof.json"));
    let out = run(leash_command()
        .args(["audit", "export", "--dir"])
        .arg(&leash.audit_dir)
        .args(["--since", since, "--until", until, "--output"])
        .arg(&file)
        .arg("--proof")
        .arg(&proof));
    assert_success("leash audit export", &out);
    let proof: Value = serde_json::from_slice(&std::fs::read(&proof).unwrap()).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let exported: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Stamps are start times: the window's edges hold records 1..=4 at
    // least, contiguous in the chain.
    assert!(exported.len() >= 4, "{}", exported.len());
    assert_eq!(proof["records"], exported.len());
    assert_eq!(proof["first_seq"], exported[0]["seq"]);
    let first = exported[0]["seq"].as_u64().unwrap();
    let before = records.iter().find(|r| r["seq"] == first - 1).unwrap();
    assert_eq!(
        proof["anchor"], before["hash"],
        "anchored to the record before"
    );
    assert_eq!(proof["last_hash"], exported.last().unwrap()["hash"]);
    let ok = run(leash_command()
        .args(["audit", "verify", "--export"])
        .arg(&file));
    assert_success("verify --export", &ok);
    // An edited export does not verify.
    std::fs::write(&file, text.replacen("gpt-4o-mini", "gpt-3.5-turbo", 1)).unwrap();
    let bad = run(leash_command()
        .args(["audit", "verify", "--export"])
        .arg(&file));
    assert!(!bad.status.success(), "an edited export verified");
    // CSV: a header and one row per record.
    let out = run(leash_command()
        .args(["audit", "export", "--format", "csv", "--dir"])
        .arg(&leash.audit_dir));
    assert_success("export csv", &out);
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(csv.starts_with("seq,hash,ts,id,host,"), "{csv}");
    assert_eq!(csv.lines().count(), records.len() + 1, "{csv}");
}
