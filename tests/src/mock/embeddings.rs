//! `OpenAI` embeddings answers, small and (with `x-mock-embeddings: N`) large.

use std::fmt::Write as _;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use serde_json::{Value, json};

use super::{MockBody, frames_response, header_num, json_response, usage};

fn openai_embeddings(model: &str, request: &Value) -> Value {
    let vector = [0.125_f32, -0.5, 0.25];
    let embedding = if request["encoding_format"] == "base64" {
        let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
        json!(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        json!(vector)
    };
    json!({
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
        "model": model,
        "usage": {"prompt_tokens": usage::OPENAI_INPUT, "total_tokens": usage::OPENAI_INPUT},
    })
}

pub(super) fn embeddings(model: &str, request: &Value, headers: &HeaderMap) -> Response<MockBody> {
    match header_num(headers, "x-mock-embeddings") {
        Some(n) => big_embeddings(model, n, headers.get("x-mock-text")),
        None => json_response(StatusCode::OK, &openai_embeddings(model, request)),
    }
}

/// An embeddings answer of `n` vectors of 1536 deterministic floats, sent
/// in 64 KiB frames (built as text: a `Value` of this size would be slow).
fn big_embeddings(model: &str, n: u64, note: Option<&http::HeaderValue>) -> Response<MockBody> {
    // 61 distinct vectors, used in turn.
    let rows: Vec<String> = (0..61u32)
        .map(|i| {
            (0..1536u32)
                .map(|j| {
                    let x = f64::from((i * 7919 + j * 104_729) % 2_000_001) / 1e6 - 1.0;
                    format!("{x:.9}")
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let mut body = String::from(r#"{"object":"list","data":["#);
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"object":"embedding","index":"#);
        body.push_str(&i.to_string());
        body.push_str(r#","embedding":["#);
        body.push_str(&rows[usize::try_from(i % 61).unwrap_or(0)]);
        body.push_str("]}");
    }
    body.push(']');
    if let Some(note) = note.and_then(|v| v.to_str().ok()) {
        body.push_str(r#","note":"#);
        body.push_str(&Value::from(note).to_string());
    }
    let _ = write!(
        body,
        r#","model":{},"usage":{{"prompt_tokens":{},"total_tokens":{}}}}}"#,
        Value::from(model),
        usage::OPENAI_INPUT,
        usage::OPENAI_INPUT
    );
    let bytes = Bytes::from(body);
    let frames: Vec<Bytes> = (0..bytes.len())
        .step_by(64 * 1024)
        .map(|at| bytes.slice(at..(at + 64 * 1024).min(bytes.len())))
        .collect();
    frames_response(frames, bytes.len())
}
