//! Content capture (`capture:`): `redacted` keeps each conversation with
//! every detector's match replaced (streams assembled from their deltas)
//! and no raw canary anywhere on disk; `sealed` keeps the exact bytes
//! encrypted to an age recipient, unreadable on the host, opened by
//! `leash audit show --identity` (and by the real `age` CLI) and refused
//! with another identity; every content read is itself audited; retention
//! removes content but keeps records, except on legal hold; the quota is
//! counted and never blocks a request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use leash_tests::{
    fleet::wait_until,
    gateway::Leash,
    harness::{age_keygen, assert_success, leash_command, mock_providers_yaml, run, run_python},
    http::post_json,
    mock::MockProvider,
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const AWS_KEY: &str = "AKIAZ7QX3PLM9V2KD4RT";
const GH_TOKEN: &str = "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";

/// One `OpenAI` chat through the gateway with `text` as the prompt: its status.
fn say(leash: &Leash, text: &str) -> u16 {
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]});
    post_json(
        leash.addr,
        "/v1/openai/chat/completions",
        "sk-test",
        chat.to_string().as_bytes(),
    )
    .0
}

fn start(mock: &MockProvider, capture: &str) -> Leash {
    Leash::start(&format!(
        "{}teams:\n  - {{ name: legal, header: true }}\ncapture:\n{capture}",
        mock_providers_yaml(mock)
    ))
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The content file of record `id`, once its writer renamed it into place:
/// content is queued to its own writer and may reach the disk moments after
/// the record (as the shipper allows for), so this waits for the file.
fn content_file(leash: &Leash, id: &str) -> PathBuf {
    let mut found = None;
    wait_until(
        &format!("the content file of {id}"),
        Duration::from_secs(10),
        || leash.logs(),
        || {
            found = files(&leash.audit_dir.join("content"))
                .into_iter()
                .map(|(p, _)| p)
                .find(|p| {
                    p.file_stem().is_some_and(|s| s == id)
                        && p.extension().is_none_or(|e| e != "partial")
                });
            found.is_some()
        },
    );
    found.unwrap_or_default()
}

/// Waits for a `content_read` event of record `id` by a reader named
/// `reader`.
fn wait_read_event(leash: &Leash, id: &str, reader: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = leash.audit_text();
        if let Some(v) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| {
                r["event"] == "content_read"
                    && r["content_read"]["record"] == id
                    && r["content_read"]["reader"]
                        .as_str()
                        .is_some_and(|who| who.contains(reader))
            })
        {
            return v;
        }
        assert!(Instant::now() < deadline, "no content_read event for {id}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn redacted_content_holds_each_conversation_and_no_raw_secret() {
    let mock = MockProvider::start();
    let leash = start(&mock, "  default: redacted\n");
    let email = format!("zq.canary.{}@example.com", std::process::id());
    let prompt = format!("mail {email} the key {AWS_KEY} please");
    let answer = format!("sure, {email} gets {GH_TOKEN} today");
    let headers = json!({"x-mock-text": answer, "x-mock-chunks": "9"}).to_string();
    let cases = [
        ("openai-chat", "openai"),
        ("openai-chat-stream", "openai"),
        ("anthropic", "anthropic"),
        ("anthropic-stream", "anthropic"),
        ("google", "google"),
        ("google-stream", "google"),
    ];
    for (case, provider) in cases {
        let out = run_python(
            "sdk_check.py",
            &[case, &leash.base_url(provider), "sk-test", &answer],
            &[
                ("LEASH_TEST_PROMPT", &prompt),
                ("LEASH_TEST_HEADERS", &headers),
            ],
        );
        assert_success(case, &out);
    }
    // Control: the canaries were in the traffic.
    assert!(mock.requests().iter().all(|r| contains(&r.body, &email)));
    let records = leash.wait_records(cases.len());
    for (r, (case, _)) in records.iter().zip(cases) {
        assert_eq!(r["content"]["class"], "redacted", "{case}: {r}");
        let id = r["id"].as_str().unwrap();
        let stored = std::fs::read(content_file(&leash, id)).unwrap();
        let doc: Value = serde_json::from_slice(&stored).unwrap();
        let text = doc.to_string();
        assert!(
            text.contains("mail [REDACTED:email] the key [REDACTED:")
                && text.contains("sure, [REDACTED:email] gets [REDACTED:"),
            "{case}: the conversation, redacted: {text}"
        );
        assert_eq!(
            doc["response"]["stream"],
            case.ends_with("stream"),
            "{case}"
        );
        assert_eq!(
            r["content"]["sha256"],
            format!("{:x}", Sha256::digest(&stored)),
            "{case}: the record names the stored bytes"
        );
    }
    // No raw canary anywhere Leash wrote (content, records, index, logs).
    for (path, bytes) in files(leash.dir.path()) {
        for canary in [email.as_str(), AWS_KEY, GH_TOKEN] {
            assert!(!contains(&bytes, canary), "{canary} in {}", path.display());
        }
    }
    // The console shows redacted content, and the read is audited.
    let id = records[0]["id"].as_str().unwrap();
    let (status, doc) = leash.api("GET", &format!("/api/records/{id}/content"), b"");
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["record"], id);
    wait_read_event(&leash, id, "console");
    // An export with content: each redacted content read is recorded.
    let out_dir = tempfile::tempdir().unwrap();
    let content = out_dir.path().join("content.jsonl");
    let out = run(leash_command()
        .args(["audit", "export", "--config"])
        .arg(leash.dir.path().join("leash.yaml"))
        .arg("--dir")
        .arg(&leash.audit_dir)
        .args(["--admin-listen", &leash.admin.to_string(), "--output"])
        .arg(out_dir.path().join("run.jsonl"))
        .arg("--content")
        .arg(&content));
    assert_success("leash audit export --content", &out);
    let exported = std::fs::read_to_string(&content).unwrap();
    assert_eq!(exported.lines().count(), cases.len(), "{exported}");
    assert!(
        exported.lines().all(|l| l.contains("[REDACTED:email]")),
        "{exported}"
    );
    for canary in [email.as_str(), AWS_KEY, GH_TOKEN] {
        assert!(!exported.contains(canary), "{canary} in the export");
    }
    for r in &records {
        wait_read_event(&leash, r["id"].as_str().unwrap(), "cli: ");
    }
    // Content that no longer matches its record is refused as altered.
    let path = content_file(&leash, id);
    let mut altered = std::fs::read(&path).unwrap();
    altered.extend_from_slice(b" ");
    std::fs::write(&path, altered).unwrap();
    let (status, body) = leash.api("GET", &format!("/api/records/{id}/content"), b"");
    assert_eq!(status, 409, "{body}");
    // The chain still holds, content references included.
    let out = run(leash_command()
        .args(["audit", "verify", "--dir"])
        .arg(&leash.audit_dir));
    assert_success("leash audit verify", &out);
}

fn show(leash: &Leash, id: &str, args: &[&str]) -> std::process::Output {
    run(leash_command()
        .args(["audit", "show", id, "--content", "--config"])
        .arg(leash.dir.path().join("leash.yaml"))
        .arg("--audit-dir")
        .arg(&leash.audit_dir)
        .arg("--admin-listen")
        .arg(leash.admin.to_string())
        .args(args))
}

#[test]
fn sealed_content_is_unreadable_on_the_host_and_opens_with_the_identity() {
    let keys = tempfile::tempdir().unwrap();
    let (identity, public) = age_keygen(keys.path(), "auditor.txt");
    let (other, _) = age_keygen(keys.path(), "other.txt");
    let mock = MockProvider::start();
    let leash = start(
        &mock,
        &format!(
            "  rules: [ {{ class: sealed, teams: [legal] }} ]\n  recipients: [\"{public}\"]\n"
        ),
    );
    let prompt = format!("the merger code word is zq-sealed-{}", std::process::id());
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]})
        .to_string();
    let call = |team: Option<&str>| {
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("authorization", "Bearer sk-test".to_owned()),
        ];
        if let Some(t) = team {
            headers.push(("x-leash-team", t.to_owned()));
        }
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, _) = leash_tests::http::http_request(
            leash.addr,
            "POST",
            "/v1/openai/chat/completions",
            &h,
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200);
    };
    call(Some("legal"));
    call(None);
    let records = leash.wait_records(2);
    let sealed = records
        .iter()
        .find(|r| r["caller"]["team"] == "legal")
        .unwrap();
    let plain = records
        .iter()
        .find(|r| r["caller"]["team"] != "legal")
        .unwrap();
    assert_eq!(sealed["content"]["class"], "sealed", "{sealed}");
    assert!(plain.get("content").is_none(), "not captured: {plain}");
    let id = sealed["id"].as_str().unwrap();
    let sealed_file = content_file(&leash, id);
    // Nothing on the host holds the prompt in the clear.
    for (path, bytes) in files(leash.dir.path()) {
        assert!(
            !contains(&bytes, &prompt),
            "the prompt is in {}",
            path.display()
        );
    }
    // Another identity does not open it, and no read is recorded.
    let out = show(&leash, id, &["--identity", other.to_str().unwrap()]);
    assert!(!out.status.success(), "opened with the wrong identity");
    // The auditor's identity gives the exact bytes the provider received.
    let out = show(
        &leash,
        id,
        &["--identity", identity.to_str().unwrap(), "--raw", "request"],
    );
    assert_success("leash audit show --identity", &out);
    let sent = &mock.requests()[0].body;
    assert_eq!(out.stdout, sent.to_vec(), "the exact request bytes");
    let event = wait_read_event(&leash, id, "uid ");
    let reads = leash
        .audit_text()
        .lines()
        .filter(|l| l.contains("\"content_read\""))
        .count();
    assert_eq!(
        reads, 1,
        "one read recorded (the refused one is not): {event}"
    );
    // The real age CLI opens the same file (the age format).
    let out = run(std::process::Command::new("age")
        .args(["-d", "-i"])
        .arg(&identity)
        .arg(&sealed_file));
    assert_success("age -d", &out);
    assert!(contains(&out.stdout, &prompt));
    // Sealed content never reaches the console.
    let (status, _) = leash.api("GET", &format!("/api/records/{id}/content"), b"");
    assert_eq!(status, 403);
}

#[test]
fn retention_removes_content_keeps_records_and_honours_a_legal_hold() {
    let mock = MockProvider::start();
    let dir = tempfile::tempdir().unwrap();
    let hold_list = dir.path().join("hold.txt");
    let leash = start(
        &mock,
        &format!(
            "  default: redacted\n  retention: {{ redacted: 4s }}\n  legal_hold_file: \"{}\"\n",
            hold_list.display()
        ),
    );
    // The first record goes on hold as soon as it is written.
    assert_eq!(say(&leash, "hi"), 200);
    let held = leash.wait_records(1)[0]["id"].as_str().unwrap().to_owned();
    std::fs::write(&hold_list, format!("# case 42\n{held}\n")).unwrap();
    assert_eq!(say(&leash, "hi"), 200);
    let records = leash.wait_records(2);
    let loose = records[1]["id"].as_str().unwrap();
    let (held_file, loose_file) = (content_file(&leash, &held), content_file(&leash, loose));
    let deadline = Instant::now() + Duration::from_secs(20);
    // Removed, and counted (the count follows the removal).
    while loose_file.exists() || !leash.metrics().contains("leash_capture_removed_total 1") {
        assert!(Instant::now() < deadline, "retention never removed content");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(held_file.exists(), "the held record's content was removed");
    let audit = leash.audit_text();
    assert!(
        audit.contains(&held) && audit.contains(loose),
        "records stay"
    );
}

#[test]
fn the_quota_and_the_size_cap_are_counted_and_never_block() {
    let mock = MockProvider::start();
    let leash = start(
        &mock,
        "  default: redacted\n  max_bytes: 200\n  quota_bytes: 3000\n",
    );
    let big = "x".repeat(600);
    for _ in 0..8 {
        assert_eq!(
            say(&leash, &big),
            200,
            "a full quota never blocks a request"
        );
    }
    let records = leash.wait_records(8);
    assert!(
        records.iter().all(|r| r["content"]["truncated"] == true),
        "cut at 200 bytes"
    );
    let dropped = records
        .iter()
        .filter(|r| r["content"]["dropped"] == "quota")
        .count();
    assert!(dropped > 0 && dropped < 8, "{dropped} of 8 over the quota");
    assert!(
        leash.metrics().contains(&format!(
            "leash_capture_dropped_total{{reason=\"quota\"}} {dropped}"
        )),
        "{}",
        leash.metrics()
    );
}

/// The console's record view in Chromium: a record with redacted content
/// offers it, the click shows it (the match redacted, never the raw text),
/// and the read is recorded in the trail as the console's.
#[test]
fn the_console_shows_redacted_content_and_records_the_read() {
    let mock = MockProvider::start();
    let leash = start(&mock, "  default: redacted\n");
    let email = format!("zq.console.{}@example.com", std::process::id());
    assert_eq!(say(&leash, &format!("mail {email}")), 200);
    let id = leash.wait_records(1)[0]["id"].as_str().unwrap().to_owned();
    content_file(&leash, &id);
    let seen = leash_tests::browser::run_script(
        "content.mjs",
        &format!("http://{}", leash.admin),
        &[
            &leash_tests::browser::screenshots().display().to_string(),
            &leash.console_login_url(),
        ],
    );
    assert!(
        seen["button"].as_str().unwrap().contains("recorded"),
        "{seen}"
    );
    let shown = seen["content"].to_string();
    assert_eq!(seen["content"]["record"], id.as_str());
    assert!(
        shown.contains("mail [REDACTED:email]") && !shown.contains(&email),
        "{shown}"
    );
    wait_read_event(&leash, &id, "console");
}
