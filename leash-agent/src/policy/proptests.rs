//! Property tests of redaction: whatever the surrounding text and however a
//! stream is cut, no email survives and the output stays valid JSON / SSE.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::{Policy, PolicyHandle, PolicyModule};
use crate::{
    alerts::Alerter,
    pipeline::{BodyFlow, Caller, Exchange, Mode, Module as _},
    provider::{Provider, ProviderKind, UpstreamBase},
};

const POLICY: &str = "version: 1\nrules:\n  - { name: pii, match: { detectors: [email] }, action: redact }\n  - { name: pii-out, match: { detectors: [email], direction: response }, action: redact }\n";

fn provider(kind: ProviderKind) -> Arc<Provider> {
    let (name, base) = match kind {
        ProviderKind::OpenAi => ("openai", "https://api.openai.com/v1"),
        ProviderKind::Anthropic => ("anthropic", "https://api.anthropic.com/v1"),
        ProviderKind::Google => ("google", "https://generativelanguage.googleapis.com/v1beta"),
    };
    Arc::new(Provider {
        name: name.into(),
        kind,
        upstream: UpstreamBase::parse(base).unwrap(),
    })
}

fn kind_strategy() -> impl Strategy<Value = ProviderKind> {
    prop_oneof![
        Just(ProviderKind::OpenAi),
        Just(ProviderKind::Anthropic),
        Just(ProviderKind::Google),
    ]
}

/// Text with emails in it: filler that cannot itself form an email (no
/// `@`), quotes, backslashes, newlines and non-ASCII included.
fn text_with_emails() -> impl Strategy<Value = (String, Vec<String>)> {
    let email = "[a-z]{1,12}(\\.[a-z]{1,6})?@[a-z]{2,10}\\.(com|org|io|co\\.uk)";
    let filler = "[ a-zA-Z0-9,.;:!?\"\\\\\n\té€😀-]{0,40}";
    prop::collection::vec((filler, email), 1..6).prop_map(|parts| {
        let mut text = String::new();
        let mut emails = Vec::new();
        for (f, e) in parts {
            text.push_str(&f);
            text.push(' ');
            text.push_str(&e);
            text.push(' ');
            emails.push(e);
        }
        (text, emails)
    })
}

fn request_body(kind: ProviderKind, text: &str) -> (Value, &'static str) {
    match kind {
        ProviderKind::OpenAi => (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}),
            "/chat/completions",
        ),
        ProviderKind::Anthropic => (
            json!({"model": "claude-sonnet-4", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}),
            "/messages",
        ),
        ProviderKind::Google => (
            json!({"contents": [{"role": "user", "parts": [{"text": text}]}]}),
            "/models/gemini-2.0-flash:generateContent",
        ),
    }
}

/// One streamed delta event in the provider's shape.
fn delta_event(kind: ProviderKind, piece: &str) -> String {
    let (event, data) = match kind {
        ProviderKind::OpenAi => (
            None,
            json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}),
        ),
        ProviderKind::Anthropic => (
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ),
        ProviderKind::Google => (
            None,
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": piece}]}}]}),
        ),
    };
    match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// The text of every delta in `sse`; panics on an event whose data is not
/// JSON.
fn delivered_text(kind: ProviderKind, sse: &str) -> String {
    let mut out = String::new();
    for event in sse.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let data: String = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect();
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(&data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data:?}"));
        let piece = match kind {
            ProviderKind::OpenAi => &v["choices"][0]["delta"]["content"],
            ProviderKind::Anthropic => &v["delta"]["text"],
            ProviderKind::Google => &v["candidates"][0]["content"]["parts"][0]["text"],
        };
        out.push_str(piece.as_str().unwrap_or_default());
    }
    out
}

/// Splits `s` into pieces at the given byte positions (moved to char
/// boundaries).
fn split_at(s: &str, cuts: &[usize]) -> Vec<String> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| {
            let mut c = c % (s.len() + 1);
            while !s.is_char_boundary(c) {
                c -= 1;
            }
            c
        })
        .collect();
    points.push(0);
    points.push(s.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| s[w[0]..w[1]].to_owned())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn request_redaction_leaves_no_email_and_valid_json(
        kind in kind_strategy(),
        (text, emails) in text_with_emails(),
    ) {
        let policy = Policy::parse(POLICY, "p").unwrap();
        let (body, endpoint) = request_body(kind, &text);
        let decision = policy
            .test(provider(kind), endpoint, body.to_string().as_bytes())
            .unwrap();
        let out = decision.forwarded_body.expect("emails were found and redacted");
        let out: Value = serde_json::from_slice(&out).expect("redacted body is JSON");
        let out = out.to_string();
        for e in &emails {
            prop_assert!(!out.contains(e.as_str()), "{e} survived in {out}");
        }
    }

    #[test]
    fn stream_redaction_leaves_no_email_and_valid_sse(
        kind in kind_strategy(),
        (text, emails) in text_with_emails(),
        text_cuts in prop::collection::vec(any::<usize>(), 0..12),
        byte_cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let policy = Arc::new(Policy::parse(POLICY, "p").unwrap());
        let module = PolicyModule::new(
            Arc::new(PolicyHandle::new(Some(policy), None)),
            Alerter::disabled(),
        );
        let mut ex = Exchange::new(Mode::Gateway, provider(kind), Caller::default(), "/x".into());
        ex.stream = true;
        let mut head = http::Response::new(()).into_parts().0;
        module.response_filter(&mut ex, &mut head);
        // The text cut into deltas, the SSE bytes cut into network reads.
        let mut sse = String::new();
        for piece in split_at(&text, &text_cuts) {
            sse.push_str(&delta_event(kind, &piece));
        }
        let reads = split_at(&sse, &byte_cuts);
        let mut out = Vec::new();
        for (i, read) in reads.iter().enumerate() {
            let mut chunk = Bytes::from(read.clone());
            let flow = module.response_body_filter(&mut ex, &mut chunk, i + 1 == reads.len());
            out.extend_from_slice(&chunk);
            prop_assert!(matches!(flow, BodyFlow::Continue), "the stream was ended instead of redacted");
        }
        let out = String::from_utf8(out).expect("UTF-8 out");
        let delivered = delivered_text(kind, &out);
        for e in &emails {
            prop_assert!(!delivered.contains(e.as_str()), "{e} survived in {delivered:?}");
        }
        prop_assert!(delivered.contains("[REDACTED:email]"));
    }
}
