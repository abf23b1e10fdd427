//! A request body through the policy of every provider shape: the body
//! walkers, every built-in detector, redaction and transforms. Never
//! panics; a body the policy changed is valid JSON and holds no email the
//! `email` detector would still find.
#![no_main]

use std::sync::{Arc, LazyLock};

use leash_agent::{
    policy::Policy,
    provider::{Provider, ProviderKind, UpstreamBase},
};
use libfuzzer_sys::fuzz_target;

const POLICY: &str = r"version: 1
detectors:
  codenames: { regex: '(?i)\bproject\s+(falcon|osprey)\b' }
rules:
  - { name: block-secrets, match: { detectors: [secrets] }, action: block }
  - { name: redact-pii, match: { detectors: [email, phone, credit_card, us_ssn, iban, ipv6] }, action: redact }
  - { name: tag, match: { detectors: [codenames, prompt_injection] }, action: annotate, tags: [t] }
  - { name: cap, match: {}, action: transform, max_tokens: 64, system_prepend: 'Be brief.', drop_fields: [metadata.user] }
";

static POLICY_: LazyLock<Policy> =
    LazyLock::new(|| Policy::parse(POLICY, "fuzz").expect("the fuzz policy parses"));

static PROVIDERS: LazyLock<[(Arc<Provider>, &'static str); 3]> = LazyLock::new(|| {
    let p = |name: &str, kind, base: &str| {
        Arc::new(Provider {
            name: name.into(),
            kind,
            upstream: UpstreamBase::parse(base).expect("base"),
        })
    };
    [
        (p("openai", ProviderKind::OpenAi, "https://api.openai.com/v1"), "/chat/completions"),
        (p("anthropic", ProviderKind::Anthropic, "https://api.anthropic.com/v1"), "/messages"),
        (
            p("google", ProviderKind::Google, "https://generativelanguage.googleapis.com/v1beta"),
            "/models/gemini-2.0-flash:generateContent",
        ),
    ]
});

/// An email planted in the text: the oracle is this list, not the
/// detector under test.
const CANARY: &str = "leash.canary@example.org";

/// The arbitrary `text` with the canary planted in the middle, as a chat
/// request of the provider `pick` names.
fn planted(pick: u8, text: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(text);
    let mut at = text.len() / 2;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let content = format!("{} {CANARY} {}", &text[..at], &text[at..]);
    let body = match pick % 3 {
        0 => serde_json::json!({"model": "m", "messages": [{"role": "user", "content": content}]}),
        1 => serde_json::json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": content}]}),
        _ => serde_json::json!({"contents": [{"parts": [{"text": content}]}]}),
    };
    body.to_string().into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let (provider, endpoint) = &PROVIDERS[usize::from(pick) % 3];
    if pick & 0x80 != 0 {
        // Independent oracle: the planted canary never leaves.
        let body = planted(pick, body);
        let decision = POLICY_
            .test(Arc::clone(provider), endpoint, &body)
            .expect("a planted body is JSON");
        let out = decision.forwarded_body.expect("the canary was redacted");
        assert!(
            !String::from_utf8_lossy(&out).contains(CANARY),
            "the planted canary survived redaction"
        );
        return;
    }
    let Ok(decision) = POLICY_.test(Arc::clone(provider), endpoint, body) else {
        return;
    };
    if let Some(out) = decision.forwarded_body {
        let value: serde_json::Value =
            serde_json::from_slice(&out).expect("a changed body is valid JSON");
        let recheck = POLICY_.test(Arc::clone(provider), endpoint, &out);
        if let Ok(again) = recheck {
            assert!(
                !again
                    .findings
                    .iter()
                    .any(|f| f.rule == "redact-pii" && f.detector == "email"),
                "an email survived redaction: {value}"
            );
        }
    }
});
