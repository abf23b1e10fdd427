//! Connection events of the transparent agent: refusals, and shadow AI —
//! LLM endpoints that processes in scope talk to but that are not in
//! `intercept.hosts`. Seen in `scope: all-tls`, where every TLS connection
//! reaches the proxy and is spliced unless its host is intercepted.

use std::sync::Arc;

use crate::record::{AuditRecord, Bypass, Caller, Event, Mode, Refusal};

/// The `shadow_ai` event: `caller` connected to `host`, an LLM endpoint that
/// is not intercepted (the connection was spliced, not inspected).
pub fn record(host: &str, caller: &Caller, node: &Arc<str>) -> AuditRecord {
    event(Event::ShadowAi, None, host, caller, node)
}

/// The `refused` event: the connection of `caller` to `to` was refused.
pub fn refused(refusal: Refusal, to: &str, caller: &Caller, node: &Arc<str>) -> AuditRecord {
    event(Event::Refused, Some(refusal), to, caller, node)
}

/// The `bypassed` event: the connection of `caller` to `to` went through
/// uninspected, on purpose.
pub fn bypassed(bypass: Bypass, to: &str, caller: &Caller, node: &Arc<str>) -> AuditRecord {
    let mut r = event(Event::Bypassed, None, to, caller, node);
    r.bypass = Some(bypass);
    r
}

fn event(
    event: Event,
    refusal: Option<Refusal>,
    host: &str,
    caller: &Caller,
    node: &Arc<str>,
) -> AuditRecord {
    let mut r = AuditRecord::event(event, node, caller.clone());
    r.mode = Mode::Transparent;
    let provider = if event == Event::Refused {
        "-"
    } else {
        "unlisted"
    };
    provider.clone_into(&mut r.provider);
    host.clone_into(&mut r.endpoint);
    r.refusal = refusal;
    r
}

/// Host name suffixes of LLM APIs (a heuristic list, kept short and
/// specific: API hosts, not whole company domains).
const PROVIDER_SUFFIXES: &[&str] = &[
    "api.openai.com",
    "openai.azure.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "aiplatform.googleapis.com",
    "api.mistral.ai",
    "api.groq.com",
    "openrouter.ai",
    "api.deepseek.com",
    "api.together.xyz",
    "api.fireworks.ai",
    "api.x.ai",
    "api.cohere.ai",
    "api.cohere.com",
    "api.perplexity.ai",
    "api-inference.huggingface.co",
    "router.huggingface.co",
    "api.replicate.com",
    "api.ai21.com",
    "api.voyageai.com",
    "api.cerebras.ai",
];

/// Whether `host` looks like an LLM provider's API endpoint.
pub fn is_provider_like(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let aws_bedrock = host.starts_with("bedrock-runtime.") && host.ends_with(".amazonaws.com");
    aws_bedrock
        || PROVIDER_SUFFIXES
            .iter()
            .any(|s| host == *s || host.ends_with(&format!(".{s}")))
}

#[cfg(test)]
mod tests {
    use super::is_provider_like;

    #[test]
    fn provider_like_hosts() {
        for h in [
            "api.mistral.ai",
            "myres.openai.azure.com",
            "bedrock-runtime.us-east-1.amazonaws.com",
            "API.GROQ.COM.",
        ] {
            assert!(is_provider_like(h), "{h}");
        }
        for h in [
            "www.example.org",
            "openai.com.evil.example",
            "s3.amazonaws.com",
            "mistral.ai.example",
        ] {
            assert!(!is_provider_like(h), "{h}");
        }
    }
}
