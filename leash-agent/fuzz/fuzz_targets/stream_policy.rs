//! A streamed response through the policy module while a response rule
//! redacts emails: arbitrary text cut into deltas of every provider's
//! shape, the SSE bytes cut into arbitrary reads (or, with the first
//! byte's high bit set, arbitrary bytes as the stream). Never panics; every
//! event delivered is SSE with JSON data, and a stream the policy did not
//! end holds no email the `email` detector would still find.
#![no_main]

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use leash_agent::{
    alerts::Alerter,
    pipeline::{BodyFlow, Caller, Exchange, Mode, Module as _},
    policy::{Policy, PolicyHandle, PolicyModule},
    provider::{Provider, ProviderKind, UpstreamBase},
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const POLICY: &str = "version: 1\nrules:\n  - { name: pii, match: { detectors: [email] }, action: redact }\n  - { name: pii-out, match: { detectors: [email], direction: response }, action: redact }\n";

static POLICY_: LazyLock<Arc<Policy>> =
    LazyLock::new(|| Arc::new(Policy::parse(POLICY, "fuzz").expect("the fuzz policy parses")));

const KINDS: [(ProviderKind, &str, &str, &str); 3] = [
    (ProviderKind::OpenAi, "openai", "https://api.openai.com/v1", "/chat/completions"),
    (ProviderKind::Anthropic, "anthropic", "https://api.anthropic.com/v1", "/messages"),
    (
        ProviderKind::Google,
        "google",
        "https://generativelanguage.googleapis.com/v1beta",
        "/models/gemini-2.0-flash:generateContent",
    ),
];

/// An email planted in every structured stream: the oracle is this, not
/// the detector under test.
const CANARY: &str = "leash.canary@example.org";

fn delta_event(kind: ProviderKind, piece: &str) -> String {
    match kind {
        ProviderKind::OpenAi => format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": piece}}]})
        ),
        ProviderKind::Anthropic => format!(
            "event: content_block_delta\ndata: {}\n\n",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
        ),
        ProviderKind::Google => format!(
            "data: {}\n\n",
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": piece}]}}]})
        ),
    }
}

fn text_of(kind: ProviderKind, v: &Value) -> &str {
    let piece = match kind {
        ProviderKind::OpenAi => &v["choices"][0]["delta"]["content"],
        ProviderKind::Anthropic => &v["delta"]["text"],
        ProviderKind::Google => &v["candidates"][0]["content"]["parts"][0]["text"],
    };
    piece.as_str().unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let [pick, read, rest @ ..] = data else {
        return;
    };
    let (kind, name, base, endpoint) = KINDS[usize::from(pick & 0x7f) % 3];
    let structured = pick & 0x80 == 0;
    let provider = Arc::new(Provider {
        name: name.into(),
        kind,
        upstream: UpstreamBase::parse(base).expect("base"),
    });
    let module = PolicyModule::new(
        Arc::new(PolicyHandle::new(Some(Arc::clone(&POLICY_)), None)),
        Alerter::disabled(),
    );
    let mut ex = Exchange::new(Mode::Gateway, Arc::clone(&provider), Caller::default(), "/x".into());
    ex.stream = true;
    let mut head = http::Response::new(()).into_parts().0;
    module.response_filter(&mut ex, &mut head);
    // Text pieces are separated by 0x01 bytes; a canary email is planted
    // (split across two pieces) as an oracle independent of the detector.
    let sse: Vec<u8> = if structured {
        let text = String::from_utf8_lossy(rest);
        let mut pieces: Vec<String> = text.split('\u{1}').map(str::to_owned).collect();
        let at = pieces.len() / 2;
        pieces.insert(at, format!(" {}", &CANARY[..7]));
        pieces.insert(at + 1, format!("{} ", &CANARY[7..]));
        pieces
            .iter()
            .map(|piece| delta_event(kind, piece))
            .collect::<String>()
            .into_bytes()
    } else {
        rest.to_vec()
    };
    let reads: Vec<&[u8]> = sse.chunks(usize::from(*read).max(1)).collect();
    let mut out = Vec::new();
    let mut stopped = false;
    for (i, r) in reads.iter().enumerate() {
        let mut chunk = Bytes::copy_from_slice(r);
        let flow = module.response_body_filter(&mut ex, &mut chunk, i + 1 == reads.len());
        out.extend_from_slice(&chunk);
        if matches!(flow, BodyFlow::Stop) {
            stopped = true;
            break;
        }
    }
    if !structured {
        return;
    }
    let out = String::from_utf8(out).expect("the stream out is UTF-8");
    let mut delivered = String::new();
    for event in out.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let data: String = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect();
        let v: Value = serde_json::from_str(&data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data:?}"));
        delivered.push_str(text_of(kind, &v));
    }
    if stopped {
        return;
    }
    assert!(
        !delivered.contains(CANARY),
        "the planted canary survived stream redaction: {delivered:?}"
    );
    let body = match kind {
        ProviderKind::OpenAi => json!({"model": "m", "messages": [{"role": "user", "content": delivered}]}),
        ProviderKind::Anthropic => json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": delivered}]}),
        ProviderKind::Google => json!({"contents": [{"parts": [{"text": delivered}]}]}),
    };
    let again = POLICY_
        .test(provider, endpoint, body.to_string().as_bytes())
        .expect("the recheck parses");
    assert!(
        !again.findings.iter().any(|f| f.detector == "email"),
        "an email survived stream redaction: {delivered:?}"
    );
});
