//! Nothing unscanned, nothing corrupted (issue 16), through the gateway:
//! secrets hidden behind a `data:` prefix, at the end of a 2 MiB prompt, in
//! `id`/`type` fields or object keys are blocked like any other; responses
//! of any size reach the client byte for byte and are scanned all the way.
//! Each attack has its control: the same request without the secret goes
//! through.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::process::Command;

use leash_tests::{
    harness::{Leash, assert_success, http_request, run, start_with_policy_file},
    mock::MockProvider,
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// A fake AWS access key id: the shape and randomness of a real one.
const AWS_KEY: &str = "AKIAZ7QX3PLM9V2KD4RT";
/// A fake GitHub token.
const GH_TOKEN: &str = "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";

const BLOCK_SECRETS: &str = "version: 1
rules:
  - { name: block-secrets, match: { detectors: [secrets] }, action: block }
";

fn post(leash: &Leash, path: &str, body: &Value) -> u16 {
    http_request(
        leash.addr,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .expect("gateway answers")
    .0
}

fn chat(content: impl Into<Value>) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content.into()}]})
}

/// Each case, built around a secret, is blocked with 403 and never reaches
/// the provider; built around harmless text instead (the control), it goes
/// through.
fn assert_blocked_with_control(leash: &Leash, mock: &MockProvider, cases: &[Case]) {
    for (what, make) in cases {
        let before = mock.requests().len();
        for secret in [AWS_KEY, GH_TOKEN] {
            assert_eq!(
                post(leash, "/v1/openai/chat/completions", &make(secret)),
                403,
                "{what} ({secret}): not blocked"
            );
        }
        assert_eq!(
            mock.requests().len(),
            before,
            "{what}: reached the provider"
        );
        assert_eq!(
            post(
                leash,
                "/v1/openai/chat/completions",
                &make("harmless words")
            ),
            200,
            "{what}: the control was not forwarded"
        );
        assert_eq!(mock.requests().len(), before + 1, "{what}: control");
    }
}

type Case = (&'static str, fn(&str) -> Value);

#[test]
fn data_prefixed_long_and_structural_secrets_are_blocked() {
    let (mock, leash) = start_with_policy_file(BLOCK_SECRETS, "");
    let cases: [Case; 8] = [
        ("data: prefix", |s| {
            chat(json!(format!("data: my key is {s}")))
        }),
        ("data: prefix alone", |s| chat(json!(format!("data:{s}")))),
        ("2 MiB prompt ending in a secret", |s| {
            let long = format!("{} and my key is {s}", "lorem ipsum ".repeat(180_000));
            assert!(long.len() > 2 * 1024 * 1024);
            chat(json!(long))
        }),
        ("secret in a content part's id", |s| {
            chat(json!([{"type": "text", "text": "hi", "id": s}]))
        }),
        (
            "secret in metadata.type",
            |s| json!({"model": "gpt-4o-mini", "metadata": {"type": s}, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "secret as an object key",
            |s| json!({"model": "gpt-4o-mini", "metadata": {s: "x"}, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("secret in a base64 'image' that is really text", |s| {
            let url = format!("data:image/png;base64,{}", b64(&format!("key {s}")));
            chat(json!([{"type": "image_url", "image_url": {"url": url}}]))
        }),
        ("secret in the text of a PDF document", |s| {
            use base64::Engine as _;
            let pdf = leash_tests::pdf::with_text(&format!("the key is {s} ok"));
            let data = base64::engine::general_purpose::STANDARD.encode(pdf);
            let url = format!("data:application/pdf;base64,{data}");
            chat(json!([{"type": "file", "file": {"filename": "a.pdf", "file_data": url}}]))
        }),
    ];
    assert_blocked_with_control(&leash, &mock, &cases);
    leash_tests::results::record(
        "inspection_evasions",
        &json!({"evasions": cases.len(), "secrets_per_evasion": 2, "blocked": cases.len() * 2, "controls_forwarded": cases.len()}),
    );
    // A real image in its field is not text and passes.
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
    let image = chat(
        json!([{"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}}]),
    );
    assert_eq!(post(&leash, "/v1/openai/chat/completions", &image), 200);
    let sent: String = mock
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(!sent.contains(AWS_KEY) && !sent.contains(GH_TOKEN));
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// `curl` POSTs an embeddings request for `vectors` vectors (with `note`
/// after them) and returns the body's SHA-256, its length and curl's exit
/// status.
fn fetch_embeddings(base: &str, vectors: usize, note: Option<&str>) -> (String, usize, bool) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "120", "-o", "-", "-H"])
        .arg(format!("x-mock-embeddings: {vectors}"))
        .args(["-H", "content-type: application/json"]);
    if let Some(note) = note {
        cmd.args(["-H", &format!("x-mock-text: {note}")]);
    }
    let out = run(cmd
        .args(["-d", r#"{"model":"text-embedding-3-small","input":"hi"}"#])
        .arg(format!("{base}/embeddings")));
    (
        format!("{:x}", Sha256::digest(&out.stdout)),
        out.stdout.len(),
        out.status.success(),
    )
}

#[test]
fn large_responses_arrive_byte_for_byte_and_are_scanned() {
    let (mock, leash) = start_with_policy_file(
        "version: 1
rules:
  - { name: no-keys-out, match: { detectors: [aws_access_key], direction: response }, action: redact }
  - { name: no-tokens-out, match: { detectors: [github_token], direction: response }, action: block }
",
        "",
    );
    let direct = format!("{}/v1", mock.url());
    let through = format!("http://{}/v1/openai", leash.addr);
    // 10 MiB and 100 MiB: the same bytes as straight from the provider.
    for vectors in [570_usize, 5_700] {
        let want = fetch_embeddings(&direct, vectors, None);
        assert!(want.1 > vectors * 17_000, "{want:?}");
        let got = fetch_embeddings(&through, vectors, None);
        assert!(got.2, "curl failed for {vectors} vectors");
        assert_eq!(got, want, "{vectors} vectors: the body changed");
    }
    let records = leash.wait_records(2);
    assert!(
        records
            .iter()
            .all(|r| r["completed"] == true && r["status"] == 200)
    );
    leash_tests::results::record("large_responses", &serde_json::json!({"byte_exact": 2}));

    // A key after the first 4 MiB is still found and redacted in place.
    let (_, direct_len, _) = fetch_embeddings(&direct, 570, Some(&format!("key {AWS_KEY}")));
    let out = run(Command::new("curl")
        .args(["-sS", "-H", "x-mock-embeddings: 570", "-H"])
        .arg(format!("x-mock-text: key {AWS_KEY}"))
        .args(["-d", r#"{"model":"text-embedding-3-small","input":"hi"}"#])
        .arg(format!("{through}/embeddings")));
    assert_success("curl", &out);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(!body.contains(AWS_KEY), "the key was delivered");
    assert!(body.contains(r#""note":"key [REDACTED:aws_access_key]""#));
    assert_eq!(
        out.stdout.len(),
        direct_len + "[REDACTED:aws_access_key]".len() - AWS_KEY.len()
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).expect("still JSON");
    assert_eq!(parsed["data"].as_array().unwrap().len(), 570);

    // A blocked token after the first 4 MiB: the body ends with an error,
    // never as a whole document, and the token never leaves.
    let (_, _, ok) = fetch_embeddings(&through, 570, Some(GH_TOKEN));
    assert!(!ok, "a cut-off body looked complete to curl");
    let out = run(Command::new("curl")
        .args(["-sS", "-H", "x-mock-embeddings: 570", "-H"])
        .arg(format!("x-mock-text: {GH_TOKEN}"))
        .args(["-d", r#"{"model":"m","input":"hi"}"#])
        .arg(format!("{through}/embeddings")));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(GH_TOKEN));
    // A small answer with the token: Leash's 403 instead of the answer.
    let (status, _, body) = http_request(
        leash.addr,
        "POST",
        "/v1/openai/embeddings",
        &[("x-mock-embeddings", "1"), ("x-mock-text", GH_TOKEN)],
        br#"{"model":"m","input":"hi"}"#,
    )
    .unwrap();
    assert_eq!(status, 403);
    assert!(String::from_utf8_lossy(&body).contains("no-tokens-out"));
    let records = leash.wait_records(6);
    let blocked: Vec<&Value> = records
        .iter()
        .filter(|r| r["policy"]["rules"][0] == "no-tokens-out")
        .collect();
    assert_eq!(blocked.len(), 3, "{records:#?}");
    assert!(blocked.iter().all(|r| r["policy"]["action"] == "block"));
    assert!(
        blocked
            .iter()
            .all(|r| r["completed"] == false || r["status"] == 403)
    );
    assert!(!leash.audit_text().contains(GH_TOKEN));
}

/// A body kind: path, content type, name, and the body around a secret.
type BodyCase = (&'static str, &'static str, &'static str, fn(&str) -> String);

/// Bodies that are not one JSON document are read as what they are:
/// multipart uploads part by part (a JSONL file part line by line), JSON
/// Lines, plain text. A secret in any of them is blocked; the same body
/// without it goes through byte for byte.
#[test]
fn multipart_jsonl_and_text_bodies_are_scanned() {
    let (mock, leash) = start_with_policy_file(BLOCK_SECRETS, "");
    let multipart = |secret: &str| {
        format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"batch.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n{{\"custom_id\": \"1\", \"body\": {{\"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}]}}}}\n{{\"custom_id\": \"2\", \"body\": {{\"messages\": [{{\"role\": \"user\", \"content\": \"key {secret}\"}}]}}}}\n\r\n--XyZ--\r\n"
        )
    };
    let jsonl = |secret: &str| {
        format!(
            "{{\"custom_id\": \"1\", \"body\": \"hello\"}}\n{{\"custom_id\": \"2\", \"body\": \"key {secret}\"}}\n"
        )
    };
    let text = |secret: &str| format!("plain prompt with key {secret}");
    let cases: [BodyCase; 3] = [
        (
            "/v1/openai/files",
            "multipart/form-data; boundary=XyZ",
            "multipart",
            multipart,
        ),
        ("/v1/openai/files", "application/jsonl", "jsonl", jsonl),
        ("/v1/openai/audio/speech", "text/plain", "text", text),
    ];
    for (path, content_type, what, make) in cases {
        let before = mock.requests().len();
        for secret in [AWS_KEY, GH_TOKEN] {
            let (status, _, _) = http_request(
                leash.addr,
                "POST",
                path,
                &[("content-type", content_type)],
                make(secret).as_bytes(),
            )
            .unwrap();
            assert_eq!(status, 403, "{what} with {secret}");
        }
        assert_eq!(
            mock.requests().len(),
            before,
            "{what}: reached the provider"
        );
        // The control reaches the provider (whose mock may not know the
        // endpoint: its answer does not matter here).
        let control = make("harmless words");
        let (status, _, _) = http_request(
            leash.addr,
            "POST",
            path,
            &[("content-type", content_type)],
            control.as_bytes(),
        )
        .unwrap();
        assert_ne!(status, 403, "{what}: the control was refused");
        let sent = mock.requests();
        assert_eq!(sent.len(), before + 1, "{what}: control");
        assert_eq!(
            sent.last().unwrap().body,
            control.as_bytes(),
            "{what}: changed"
        );
    }
}

/// A JSON body that gives a key twice could be read one way by the policy
/// and another by the provider: refused (400) in the provider's shape.
#[test]
fn duplicate_json_keys_are_refused() {
    let (mock, leash) = start_with_policy_file(BLOCK_SECRETS, "");
    let twice = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi","content":"key {AWS_KEY}"}}]}}"#
    );
    let (status, _, body) = http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[("content-type", "application/json")],
        twice.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`content` twice"),
        "{v}"
    );
    assert!(mock.requests().is_empty());
    // Control: the same body with the key once.
    let once = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(
        post(
            &leash,
            "/v1/openai/chat/completions",
            &serde_json::from_str(once).unwrap()
        ),
        200
    );
    let rec = &leash.wait_records(2)[0];
    assert_eq!(rec["policy"]["rules"][0], "duplicate_key", "{rec}");
}

/// A streamed event too large to inspect ends the stream with the
/// provider's error event and a mark in the audit record, never silently;
/// the control (a small event) streams to its end.
#[test]
fn an_sse_event_too_large_to_inspect_ends_the_stream_visibly() {
    let (_mock, leash) = start_with_policy_file(
        "version: 1\nrules:\n  - { name: no-keys-out, match: { detectors: [secrets], direction: response }, action: block }\n",
        "",
    );
    let stream = |repeat: &str| {
        run(Command::new("curl")
            .args([
                "-sS",
                "-N",
                "-H",
                "x-mock-text: abcdefgh ",
                "-H",
                "x-mock-chunks: 1",
                "-H",
            ])
            .arg(format!("x-mock-repeat: {repeat}"))
            .args([
                "-d",
                r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#,
            ])
            .arg(format!("http://{}/v1/openai/chat/completions", leash.addr)))
    };
    let small = stream("10");
    assert_success("curl", &small);
    assert!(String::from_utf8_lossy(&small.stdout).contains("[DONE]"));
    let big = stream("200000");
    let text = String::from_utf8_lossy(&big.stdout);
    assert!(
        text.contains("leash_policy_blocked") && text.contains("exceeded"),
        "{}",
        &text[..text.len().min(400)]
    );
    assert!(!text.contains("[DONE]"), "the stream went on");
    let records = leash.wait_records(2);
    assert_eq!(
        records[1]["policy"]["rules"][0], "event_too_large",
        "{}",
        records[1]
    );
    assert_eq!(records[1]["policy"]["action"], "block");
}
