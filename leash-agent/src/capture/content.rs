//! One exchange's content as it is stored: the request body as forwarded
//! and the response as delivered (a stream assembled from the text its
//! events carried), each cut at the size cap with a marker. `redacted`:
//! every detector's match in every text replaced by `[REDACTED:<name>]`;
//! `sealed`: the exact bytes, encrypted to the recipients' age (X25519)
//! public keys, so the host that writes them cannot read them back.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::{
    policy::{detect::Detectors, text},
    provider::ProviderKind,
    record::CaptureClass,
};

/// What an exchange captured while it ran (an `Exchange` extension).
#[derive(Debug, Default, Clone)]
pub struct Captured {
    pub request: Bytes,
    pub request_type: Option<String>,
    pub request_truncated: bool,
    pub response: Vec<u8>,
    pub response_type: Option<String>,
    pub response_truncated: bool,
}

impl Captured {
    /// Keeps up to `max` bytes of `chunk` of the response.
    pub fn push_response(&mut self, chunk: &[u8], max: usize) {
        let room = max.saturating_sub(self.response.len());
        if chunk.len() > room {
            self.response_truncated = true;
        }
        self.response
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
}

/// `text` with every detector's match replaced by `[REDACTED:<name>]`.
pub fn redact_text(detectors: &Detectors, text: &mut String) {
    let mut found = Vec::new();
    detectors.scan(text, &mut found);
    detectors.redact(text, &found);
}

/// Every string in `v` (object keys too) redacted.
fn redact_json(detectors: &Detectors, v: &mut Value) {
    match v {
        Value::String(s) => redact_text(detectors, s),
        Value::Array(items) => items.iter_mut().for_each(|i| redact_json(detectors, i)),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (mut k, mut item) in entries {
                redact_text(detectors, &mut k);
                redact_json(detectors, &mut item);
                map.insert(k, item);
            }
        }
        _ => {}
    }
}

/// A body, redacted: JSON with every string redacted, or text; a body that
/// is neither is not kept.
fn redacted_body(detectors: &Detectors, bytes: &[u8]) -> Value {
    if let Ok(mut v) = serde_json::from_slice::<Value>(bytes) {
        redact_json(detectors, &mut v);
        return json!({ "json": v });
    }
    match std::str::from_utf8(bytes) {
        Ok(t) => {
            let mut t = t.to_owned();
            redact_text(detectors, &mut t);
            json!({ "text": t })
        }
        Err(_) => json!({ "omitted": "not text" }),
    }
}

/// The text a stream's events carried, in order (what the model said).
pub fn assembled(kind: ProviderKind, bytes: &[u8]) -> String {
    let mut frames = crate::pipeline::sse::SseBuffer::default();
    let mut out = String::new();
    for event in frames.feed(bytes, true) {
        let Ok(mut v) = serde_json::from_str::<Value>(&event.data) else {
            continue;
        };
        text::for_each_delta(kind, &mut v, &mut |part| match part {
            text::DeltaPart::Text(s) => out.push_str(s),
            text::DeltaPart::Json(j) => out.push_str(&j.to_string()),
        });
    }
    out
}

/// Exact bytes: text when they are UTF-8, else base64.
fn exact(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(t) => json!({ "text": t }),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

/// The stored document for `captured` in `class` (`none` is never stored).
pub fn document(
    class: CaptureClass,
    record_id: &str,
    kind: ProviderKind,
    stream: bool,
    captured: &Captured,
    detectors: &Detectors,
) -> Value {
    let (request, response) = match class {
        CaptureClass::Sealed | CaptureClass::None => {
            (exact(&captured.request), exact(&captured.response))
        }
        CaptureClass::Redacted => {
            let response = if stream {
                let mut t = assembled(kind, &captured.response);
                redact_text(detectors, &mut t);
                json!({ "assembled": t })
            } else {
                redacted_body(detectors, &captured.response)
            };
            (redacted_body(detectors, &captured.request), response)
        }
    };
    json!({
        "record": record_id,
        "class": class,
        "request": {
            "content_type": captured.request_type,
            "truncated": captured.request_truncated,
            "body": request,
        },
        "response": {
            "content_type": captured.response_type,
            "stream": stream,
            "truncated": captured.response_truncated,
            "body": response,
        },
    })
}

/// The exact bytes of a part of a sealed document (`request` or
/// `response`), as they were sent.
pub fn exact_part(doc: &Value, part: &str) -> Option<Vec<u8>> {
    let body = &doc[part]["body"];
    if let Some(t) = body["text"].as_str() {
        return Some(t.as_bytes().to_vec());
    }
    base64::engine::general_purpose::STANDARD
        .decode(body["base64"].as_str()?)
        .ok()
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("`{0}` is not an age X25519 recipient (age1…)")]
    Recipient(String),
    #[error("cannot encrypt: {0}")]
    Encrypt(String),
    #[error("cannot read the identity file {0}: {1}")]
    Identity(String, String),
    #[error("cannot decrypt with the identities given: {0}")]
    Decrypt(String),
}

/// The recipients sealed content is encrypted to.
#[derive(Clone)]
pub struct Recipients(std::sync::Arc<Vec<age::x25519::Recipient>>);

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipients({})", self.0.len())
    }
}

impl Recipients {
    pub fn parse<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<Self, SealError> {
        let list = keys
            .into_iter()
            .map(|k| {
                k.trim()
                    .parse::<age::x25519::Recipient>()
                    .map_err(|_| SealError::Recipient(k.trim().to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(std::sync::Arc::new(list)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `plain` encrypted to every recipient (the age format).
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        use std::io::Write as _;
        let encryptor =
            age::Encryptor::with_recipients(self.0.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| SealError::Encrypt(e.to_string()))?;
        let mut out = Vec::with_capacity(plain.len() + 256);
        let mut w = encryptor
            .wrap_output(&mut out)
            .map_err(|e| SealError::Encrypt(e.to_string()))?;
        w.write_all(plain)
            .and_then(|()| w.finish().map(|_| ()))
            .map_err(|e| SealError::Encrypt(e.to_string()))?;
        Ok(out)
    }
}

/// Decrypts a sealed file with the identities in `identity_file` (as
/// `age-keygen` writes them).
pub fn unseal(sealed: &[u8], identity_file: &std::path::Path) -> Result<Vec<u8>, SealError> {
    use std::io::Read as _;
    let shown = identity_file.display().to_string();
    let identities = age::IdentityFile::from_file(shown.clone())
        .map_err(|e| SealError::Identity(shown.clone(), e.to_string()))?
        .into_identities()
        .map_err(|e| SealError::Identity(shown.clone(), e.to_string()))?;
    let decryptor = age::Decryptor::new(sealed).map_err(|e| SealError::Decrypt(e.to_string()))?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| SealError::Decrypt(e.to_string()))?;
    let mut out = Vec::new();
    reader
        .read_to_end(&mut out)
        .map_err(|e| SealError::Decrypt(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn redacted_documents_hold_no_match_and_streams_are_assembled() {
        let detectors = Detectors::new(&[]).unwrap();
        let captured = Captured {
            request: Bytes::from_static(
                br#"{"messages":[{"role":"user","content":"mail bob@example.com now"}]}"#,
            ),
            response: b"data: {\"choices\":[{\"delta\":{\"content\":\"write to bob@exa\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"mple.com ok\"}}]}\n\ndata: [DONE]\n\n".to_vec(),
            ..Captured::default()
        };
        let doc = document(
            CaptureClass::Redacted,
            "r1",
            ProviderKind::OpenAi,
            true,
            &captured,
            &detectors,
        );
        let text = doc.to_string();
        assert!(!text.contains("bob@example.com"), "{text}");
        assert!(text.contains("[REDACTED:email]"), "{text}");
        assert!(text.contains("write to [REDACTED:email] ok"), "{text}");
    }

    #[test]
    fn sealed_content_opens_with_the_identity_only() {
        let key = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, id: &age::x25519::Identity| {
            use age::secrecy::ExposeSecret as _;
            let p = dir.path().join(name);
            std::fs::write(&p, format!("{}\n", id.to_string().expose_secret())).unwrap();
            p
        };
        let (good, bad) = (write("k", &key), write("o", &other));
        let recipients = Recipients::parse([key.to_public().to_string().as_str()]).unwrap();
        let sealed = recipients.seal(b"exact \xff bytes").unwrap();
        assert!(!sealed.windows(5).any(|w| w == b"exact"));
        assert_eq!(unseal(&sealed, &good).unwrap(), b"exact \xff bytes");
        assert!(unseal(&sealed, &bad).is_err());
        assert!(Recipients::parse(["nope"]).is_err());
    }
}
