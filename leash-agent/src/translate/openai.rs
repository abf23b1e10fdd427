//! OpenAI-kind providers (`OpenAI` and every OpenAI-compatible service) speak
//! the unified shape already: only the model loses its provider prefix.

use serde_json::{Map, Value};

pub(super) fn request(mut body: Map<String, Value>, model: &str) -> Value {
    body.insert("model".into(), Value::String(model.to_owned()));
    Value::Object(body)
}
