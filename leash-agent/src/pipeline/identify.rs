//! The identify phase: reads the model and whether a stream is wanted from the
//! request, in each provider's own way. Never fails: what cannot be read stays
//! unknown.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use super::{Exchange, ProxyRequest};
use crate::provider::ProviderKind;

/// Longest model name recorded; longer values are cut (labels and audit stay bounded).
const MAX_MODEL_LEN: usize = 200;

#[derive(Deserialize)]
struct BodyPeek<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    functions: Option<Value>,
}

/// Gemini's body: only its tools (the model and method are in the path).
#[derive(Deserialize)]
struct ToolsPeek {
    #[serde(default)]
    tools: Option<Value>,
}

fn bounded(model: &str) -> String {
    let mut end = model.len().min(MAX_MODEL_LEN);
    while !model.is_char_boundary(end) {
        end -= 1;
    }
    model[..end].to_owned()
}

/// Gemini names the model and the method in the path:
/// `/v1beta/models/{model}:{method}` (also `tunedModels/...`).
fn google_model_and_method(path: &str) -> Option<(&str, &str)> {
    let last = path.rsplit('/').next()?;
    let (model, method) = last.split_once(':')?;
    Some((model, method))
}

pub fn identify(ex: &mut Exchange, req: &ProxyRequest) {
    start_trace(ex, &req.head.headers);
    match ex.provider.kind {
        ProviderKind::Google => {
            if let Some((model, method)) = google_model_and_method(&ex.endpoint) {
                if !model.is_empty() {
                    ex.model = Some(bounded(model));
                }
                ex.stream = method.starts_with("streamGenerateContent");
            }
            // Parsed only when it names tools (the policy reads the body
            // on its own; this is for the record).
            if memchr::memmem::find(&req.body, b"\"tools\"").is_some()
                && let Ok(peek) = serde_json::from_slice::<ToolsPeek>(&req.body)
            {
                ex.tools = super::tools::offered_in(super::tools::list(peek.tools.as_ref()), &[]);
            }
        }
        ProviderKind::OpenAi | ProviderKind::Anthropic => {
            if req.body.is_empty() {
                return;
            }
            if let Ok(peek) = serde_json::from_slice::<BodyPeek<'_>>(&req.body) {
                ex.model = peek.model.as_deref().map(bounded);
                ex.stream = peek.stream.unwrap_or(false);
                ex.tools = super::tools::offered_in(
                    super::tools::list(peek.tools.as_ref()),
                    super::tools::list(peek.functions.as_ref()),
                );
            }
        }
    }
}

/// Places the exchange in a trace (the client's `traceparent`, or a new
/// one) and opens its log span — once: as soon as the headers are read,
/// so an exchange refused before its body is read has them too.
pub fn start_trace(ex: &mut Exchange, headers: &http::HeaderMap) {
    if ex.trace.is_some() {
        return;
    }
    let trace = crate::trace::TraceContext::from_headers(headers);
    ex.trace = Some(trace);
    ex.log = tracing::info_span!(
        "exchange",
        request_id = %ex.id,
        trace_id = %trace.trace_hex(),
        span_id = %trace.span_hex()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_path() {
        assert_eq!(
            google_model_and_method("/v1beta/models/gemini-2.0-flash:streamGenerateContent"),
            Some(("gemini-2.0-flash", "streamGenerateContent"))
        );
        assert_eq!(google_model_and_method("/v1beta/models"), None);
    }

    #[test]
    fn bounded_cuts_on_char_boundary() {
        let long = "é".repeat(150);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_MODEL_LEN);
        assert!(long.starts_with(&cut));
    }
}
