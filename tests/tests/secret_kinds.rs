//! Every kind of secret the built-in detectors know (issue 26), end to end:
//! with a `block` rule on `secrets`, a chat request carrying one of each
//! kind is refused (403, nothing reaches the provider) for each provider
//! (`OpenAI`, Anthropic, Gemini), through the gateway and through
//! transparent interception; the hard negatives of each kind (truncated
//! tokens, placeholders, changed prefixes, look-alikes) go through. The
//! samples are the generated corpus (`leash-agent/corpus/secrets.jsonl`),
//! written from the vendors' formats independently of the detectors.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::collections::BTreeMap;

use leash_tests::{
    harness::{http_request, require_root, start_with_policy_file},
    world::{Host, World},
};
use serde_json::{Value, json};

const BLOCK_SECRETS: &str = "version: 1
rules:
  - { name: block-secrets, match: { detectors: [secrets] }, action: block }
";

/// Per kind: one positive text, and all its hard negatives.
struct Kind {
    positive: Option<String>,
    negatives: Vec<String>,
}

fn kinds() -> BTreeMap<String, Kind> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../leash-agent/corpus/secrets.jsonl"
    );
    let mut out: BTreeMap<String, Kind> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        let k = out
            .entry(row["kind"].as_str().unwrap().to_owned())
            .or_insert(Kind {
                positive: None,
                negatives: Vec::new(),
            });
        let text = row["text"].as_str().unwrap().to_owned();
        if row["role"] == "positive" {
            k.positive.get_or_insert(text);
        } else {
            k.negatives.push(text);
        }
    }
    out
}

/// A provider: name, gateway path, transparent URL, request body.
type Provider = (&'static str, &'static str, &'static str, fn(&str) -> Value);

const PROVIDERS: [Provider; 3] = [
    (
        "openai",
        "/v1/openai/chat/completions",
        "https://api.openai.com/v1/chat/completions",
        |t| json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": t}]}),
    ),
    (
        "anthropic",
        "/v1/anthropic/v1/messages",
        "https://api.anthropic.com/v1/messages",
        |t| json!({"model": "claude-3-5-haiku-latest", "max_tokens": 64, "messages": [{"role": "user", "content": t}]}),
    ),
    (
        "gemini",
        "/v1/google/v1beta/models/gemini-2.0-flash:generateContent",
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent",
        |t| json!({"contents": [{"role": "user", "parts": [{"text": t}]}]}),
    ),
];

/// Sends each kind's positive (must be refused, the provider seeing
/// nothing) and its negatives in one request (must go through) with
/// `send(provider, body) -> status`, counting the provider's requests with
/// `seen(provider)`.
fn check_every_kind(
    mode: &str,
    send: &dyn Fn(usize, &Value) -> u16,
    seen: &dyn Fn(usize) -> usize,
) -> Value {
    let kinds = kinds();
    assert!(kinds.len() >= 61, "{} kinds", kinds.len());
    let (mut blocked, mut passed) = (0, 0);
    let mut failures = Vec::new();
    for (p, (provider, _, _, body)) in PROVIDERS.iter().enumerate() {
        for (name, kind) in &kinds {
            if let Some(positive) = &kind.positive {
                let before = seen(p);
                let status = send(p, &body(positive));
                if status == 403 && seen(p) == before {
                    blocked += 1;
                } else {
                    failures.push(format!(
                        "{mode} {provider} {name}: positive answered {status}"
                    ));
                }
            }
            let before = seen(p);
            let status = send(p, &body(&kind.negatives.join("\n")));
            if status == 200 && seen(p) == before + 1 {
                passed += 1;
            } else {
                failures.push(format!(
                    "{mode} {provider} {name}: negatives answered {status}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    json!({
        "kinds": kinds.len() - 1,
        "providers": PROVIDERS.len(),
        "blocked": blocked,
        "negative_sets_forwarded": passed,
        "negatives": kinds.values().map(|k| k.negatives.len()).sum::<usize>(),
    })
}

#[test]
fn every_secret_kind_is_blocked_through_the_gateway_and_its_look_alikes_pass() {
    let (mock, leash) = start_with_policy_file(BLOCK_SECRETS, "");
    let send = |p: usize, body: &Value| {
        http_request(
            leash.addr,
            "POST",
            PROVIDERS[p].1,
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
        .expect("gateway answers")
        .0
    };
    let seen = |_| mock.requests().len();
    let figures = check_every_kind("gateway", &send, &seen);
    leash_tests::results::record("secret_kinds_gateway", &figures);
}

#[test]
fn every_secret_kind_is_blocked_through_interception_and_its_look_alikes_pass() {
    if !require_root() {
        return;
    }
    let w = World::new(
        "secret-kinds",
        &[
            Host("api.openai.com", "127.10.0.41", true),
            Host("api.anthropic.com", "127.10.0.42", true),
            Host("generativelanguage.googleapis.com", "127.10.0.43", true),
        ],
        "policy:\n  version: 1\n  rules:\n    - { name: block-secrets, match: { detectors: [secrets] }, action: block }\n",
    );
    let ca = w.agent.ca_pem();
    let dir = tempfile::tempdir().unwrap();
    let body_file = dir.path().join("body.json");
    let send = |p: usize, body: &Value| {
        std::fs::write(&body_file, body.to_string()).unwrap();
        let data = format!("@{}", body_file.display());
        let out = w.curl(
            &ca,
            PROVIDERS[p].2,
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "content-type: application/json",
                "--data-binary",
                &data,
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let seen = |p: usize| w.mocks[p].requests().len();
    let figures = check_every_kind("transparent", &send, &seen);
    leash_tests::results::record("secret_kinds_transparent", &figures);
}
