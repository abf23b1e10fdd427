//! The cost of policy on a request: a 10 KiB chat prompt through the
//! README's example policy (all built-in detectors plus custom ones): parse,
//! scan every text, decide. Target: at most 50 µs on one core.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark"
)]

use std::{hint::black_box, sync::Arc};

use criterion::{Criterion, criterion_group, criterion_main};
use leash_agent::{
    policy::Policy,
    provider::{Provider, ProviderKind, UpstreamBase},
};

const POLICY: &str = r"version: 1
detectors:
  codenames: { regex: '(?i)\bproject\s+(falcon|osprey)\b' }
  vip_names: { keywords: ['Jane Roe', 'John Doe'], case_sensitive: false }
rules:
  - { name: allow-security-team, match: { team: [secops] }, action: allow }
  - { name: block-secrets, match: { detectors: [secrets] }, action: block }
  - { name: redact-pii, match: { detectors: [email, phone, credit_card, us_ssn, iban] }, action: redact }
  - { name: tag-codenames, match: { detectors: [codenames] }, action: annotate, tags: [confidential] }
";

/// About 10 KiB of ordinary prose and code, with one email address.
fn prompt() -> Vec<u8> {
    let para = "Please review the following function and suggest improvements to its error handling. \
        fn load(path: &Path) -> Result<Config, Error> { let text = std::fs::read_to_string(path)?; toml::from_str(&text) } \
        The deployment on 2026-11-26 at 10:15 used build 4521 and commit 3f2a9c1e8b7d6f5a4e3c2b1a0f9e8d7c6b5a4f3e. ";
    let mut text = String::new();
    while text.len() < 10 * 1024 - 40 {
        text.push_str(para);
    }
    text.push_str(" Contact jane@example.com.");
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "You are a careful reviewer."}, {"role": "user", "content": text}],
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let policy = Policy::parse(POLICY, "bench").unwrap();
    let provider = Arc::new(Provider {
        name: "openai".into(),
        kind: ProviderKind::OpenAi,
        upstream: UpstreamBase::parse("https://api.openai.com/v1").unwrap(),
    });
    let body = prompt();
    assert!(body.len() >= 10 * 1024);
    let decision = policy
        .test(Arc::clone(&provider), "/chat/completions", &body)
        .unwrap();
    assert_eq!(decision.rules, ["redact-pii"]);
    c.bench_function("policy_10KiB_prompt", |b| {
        b.iter(|| {
            policy
                .test(Arc::clone(&provider), "/chat/completions", black_box(&body))
                .unwrap()
        });
    });
}

/// The strings of a typical 1 KiB chat completion (keys, identifiers and
/// the answer), each scanned on its own as the response side does.
fn answer_strings() -> Vec<String> {
    let mut strings: Vec<String> = [
        "choices",
        "finish_reason",
        "stop",
        "index",
        "message",
        "content",
        "role",
        "assistant",
        "created",
        "id",
        "chatcmpl-bench",
        "model",
        "gpt-4o-mini",
        "object",
        "chat.completion",
        "usage",
        "completion_tokens",
        "prompt_tokens",
        "total_tokens",
    ]
    .map(str::to_owned)
    .to_vec();
    strings.push("lorem ipsum ".repeat(80));
    strings
}

fn bench_answer(c: &mut Criterion) {
    let policy = Policy::parse(POLICY, "bench").unwrap();
    let strings = answer_strings();
    c.bench_function("detect_1KiB_answer_strings", |b| {
        b.iter(|| {
            let mut found = Vec::new();
            for s in &strings {
                policy.detectors().scan(black_box(s), &mut found);
            }
            found
        });
    });
}

criterion_group!(benches, bench, bench_answer);
criterion_main!(benches);
