//! Where text is in a body: every string of a JSON document is content to
//! scan — values and object keys alike, at any depth, whatever their prefix
//! or size — so a field the walker does not know about is never a way around
//! inspection. The one exception is inline binary media in the fields each
//! provider defines for it (`image_url` data URLs, `file_data`,
//! `input_audio.data`, Anthropic `source.data`, Gemini `inline_data.data`):
//! those are base64-decoded, and scanned as text whenever the decoded bytes
//! are text, whatever media type the request claims (rewritten and
//! re-encoded when redacted). A payload that is not valid base64 is scanned
//! as it stands. Redaction rewrites strings in place.

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use serde_json::{Map, Value};

use crate::provider::ProviderKind;

/// Where a piece of text sits in the document: a string (or key) itself, or
/// the decoded content of an inline-media field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    String,
    Key,
    DecodedMedia,
    /// The text of a PDF document: read, but a change cannot be written
    /// back (a redaction there blocks the request instead).
    PdfText,
}

/// Field names of the providers' APIs: fixed words, so nothing to find in
/// them (skipping them keeps key scanning cheap).
fn is_known_key(key: &str) -> bool {
    matches!(
        key,
        "model"
            | "messages"
            | "role"
            | "content"
            | "type"
            | "text"
            | "id"
            | "name"
            | "input"
            | "instructions"
            | "system"
            | "contents"
            | "parts"
            | "stream"
            | "max_tokens"
            | "temperature"
            | "tools"
            | "tool_calls"
            | "function"
            | "arguments"
            | "image_url"
            | "url"
            | "source"
            | "data"
            | "media_type"
            | "mime_type"
            | "mimeType"
            | "metadata"
            | "usage"
            | "choices"
            | "index"
            | "object"
    )
}

/// What a media field holds: a data URL (`data:<type>;base64,<payload>`),
/// or a bare base64 payload.
#[derive(Clone, Copy)]
enum Media {
    DataUrl,
    Base64,
}

/// Whether `key` (of an object whose own key is `parent_key`) holds inline
/// media, and in which form.
fn media_field(parent_key: &str, parent: &Map<String, Value>, key: &str) -> Option<Media> {
    match (parent_key, key) {
        // OpenAI chat `image_url: {url}`; Responses `input_image.image_url`;
        // chat and Responses `file_data`.
        ("image_url", "url") | (_, "image_url" | "file_data") => Some(Media::DataUrl),
        // OpenAI chat `input_audio: {data, format}`; Gemini `inline_data` /
        // `inlineData: {mime_type, data}`.
        ("input_audio" | "inline_data" | "inlineData", "data") => Some(Media::Base64),
        // Anthropic `source: {type: base64, media_type, data}`.
        (_, "data") if parent.get("type").and_then(Value::as_str) == Some("base64") => {
            Some(Media::Base64)
        }
        _ => None,
    }
}

/// The base64 engines providers' clients use, most common first.
const ENGINES: [&base64::engine::GeneralPurpose; 4] =
    [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD];

/// Bytes of a decoded payload looked at to tell text from binary before
/// decoding all of it.
const SNIFF: usize = 4096;

/// Whether `bytes` read as text: UTF-8 without control characters other
/// than white space. Images, audio and the like never do.
fn is_text(bytes: &[u8]) -> bool {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        // A prefix may end inside a character.
        Err(e) if e.error_len().is_none() && bytes.len() - e.valid_up_to() < 4 => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return false,
    };
    !text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
}

/// A base64 payload: decoded as text if it is text (with the engine that
/// read it), `Binary` if it is valid base64 of something else, `NotBase64`
/// otherwise.
enum Decoded {
    Text(String, &'static base64::engine::GeneralPurpose),
    /// A PDF's text.
    Pdf(String),
    Binary,
    NotBase64,
}

/// The text of a PDF (`None`: not one, or unreadable). The parser is
/// third-party code on hostile input: a panic in it is contained.
fn pdf_text(bytes: &[u8]) -> Option<String> {
    if !bytes.starts_with(b"%PDF-") {
        return None;
    }
    std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem(bytes).ok())
        .ok()
        .flatten()
}

fn decode(payload: &str) -> Decoded {
    let compact: String;
    let payload = if payload.bytes().any(|b| b.is_ascii_whitespace()) {
        compact = payload
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        compact.as_str()
    } else {
        payload
    };
    for engine in ENGINES {
        // Sniff a whole number of quanta first: a large image is rejected
        // as binary without decoding all of it.
        let head = payload
            .get(..payload.len().min(SNIFF / 3 * 4))
            .unwrap_or("");
        let sniffed = if head.len() < payload.len() {
            engine.decode(head).ok()
        } else {
            None
        };
        let pdf = sniffed.as_deref().is_some_and(|b| b.starts_with(b"%PDF-"));
        if !pdf && sniffed.as_deref().is_some_and(|b| !is_text(b)) && engine.decode(payload).is_ok()
        {
            return Decoded::Binary;
        }
        if let Ok(bytes) = engine.decode(payload) {
            if let Some(text) = pdf_text(&bytes) {
                return Decoded::Pdf(text);
            }
            if !is_text(&bytes) {
                return Decoded::Binary;
            }
            return String::from_utf8(bytes).map_or(Decoded::Binary, |t| Decoded::Text(t, engine));
        }
    }
    Decoded::NotBase64
}

/// Calls `f` on the text of an inline-media string; writes back a change
/// (re-encoded). Binary media is skipped; anything else is scanned as the
/// string it is.
fn media_text(s: &mut String, form: Media, f: &mut dyn FnMut(&mut String, Origin)) {
    let (prefix_len, payload) = match form {
        Media::Base64 => (0, s.as_str()),
        Media::DataUrl => match s
            .strip_prefix("data:")
            .and_then(|rest| rest.split_once(','))
        {
            Some((meta, payload)) if meta.ends_with(";base64") => {
                (s.len() - payload.len(), payload)
            }
            // A URL, or a data URL that is not base64: text as it stands.
            _ => return f(s, Origin::String),
        },
    };
    match decode(payload) {
        Decoded::Binary => {}
        Decoded::NotBase64 => f(s, Origin::String),
        Decoded::Pdf(mut text) => f(&mut text, Origin::PdfText),
        Decoded::Text(mut text, engine) => {
            let before = text.clone();
            f(&mut text, Origin::DecodedMedia);
            if text != before {
                s.truncate(prefix_len);
                engine.encode_string(text.as_bytes(), s);
            }
        }
    }
}

/// Calls `f` on every piece of text in `v` — every string and every object
/// key, and the decoded text of inline media — with a mutable reference (for
/// redaction), in a fixed order (keys are sorted), so two walks of the same
/// document visit the same texts in the same order.
pub fn for_each_text(v: &mut Value, f: &mut dyn FnMut(&mut String, Origin)) {
    walk(v, "", f);
}

fn walk(v: &mut Value, own_key: &str, f: &mut dyn FnMut(&mut String, Origin)) {
    match v {
        Value::String(s) => f(s, Origin::String),
        Value::Array(items) => items.iter_mut().for_each(|i| walk(i, own_key, f)),
        Value::Object(map) => {
            let forms: Vec<Option<Media>> = map
                .iter()
                .map(|(k, child)| {
                    child
                        .is_string()
                        .then(|| media_field(own_key, map, k))
                        .flatten()
                })
                .collect();
            let mut renamed = Vec::new();
            for ((k, child), form) in map.iter_mut().zip(forms) {
                if !is_known_key(k) {
                    let mut key = k.clone();
                    f(&mut key, Origin::Key);
                    if key != *k {
                        renamed.push((k.clone(), key));
                    }
                }
                match (child, form) {
                    (Value::String(s), Some(form)) => media_text(s, form, f),
                    (child, _) => walk(child, k, f),
                }
            }
            for (old, new) in renamed {
                if let Some(child) = map.remove(&old) {
                    map.insert(new, child);
                }
            }
        }
        _ => {}
    }
}

/// One piece of the text a stream event carries: a string field that can
/// be rewritten in place, or structured arguments (seen as their JSON text,
/// which cannot be).
pub enum DeltaPart<'a> {
    Text(&'a mut String),
    Json(&'a Value),
}

fn visit(v: &mut Value, f: &mut dyn FnMut(DeltaPart<'_>)) {
    match v {
        Value::String(s) => f(DeltaPart::Text(s)),
        Value::Object(_) => f(DeltaPart::Json(v)),
        _ => {}
    }
}

fn field<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    v.as_object_mut()?.get_mut(key)
}

/// Visits the new text a stream event carries (what the model is saying),
/// per provider, in order: `OpenAI` chat deltas and tool-call arguments,
/// Responses `*.delta` events, Anthropic `content_block_delta`, Gemini
/// candidate parts. Identifiers and metadata are not visited, so text split
/// across events joins up.
pub fn for_each_delta(kind: ProviderKind, v: &mut Value, f: &mut dyn FnMut(DeltaPart<'_>)) {
    match kind {
        ProviderKind::OpenAi => {
            if v["type"].as_str().and_then(|t| t.rsplit('.').next()) == Some("delta")
                && let Some(d) = field(v, "delta")
            {
                visit(d, f);
            }
            for choice in field(v, "choices")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let Some(delta) = field(choice, "delta") else {
                    continue;
                };
                for key in ["content", "refusal"] {
                    if let Some(t) = field(delta, key) {
                        visit(t, f);
                    }
                }
                for call in field(delta, "tool_calls")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(args) =
                        field(call, "function").and_then(|func| field(func, "arguments"))
                    {
                        visit(args, f);
                    }
                }
            }
        }
        ProviderKind::Anthropic => {
            if let Some(delta) = field(v, "delta") {
                for key in ["text", "partial_json", "thinking"] {
                    if let Some(t) = field(delta, key) {
                        visit(t, f);
                    }
                }
            }
        }
        ProviderKind::Google => {
            for cand in field(v, "candidates")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                for part in field(cand, "content")
                    .and_then(|c| field(c, "parts"))
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(t) = field(part, "text") {
                        visit(t, f);
                    }
                    if let Some(args) = field(part, "functionCall").and_then(|c| field(c, "args")) {
                        visit(args, f);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn texts(mut v: Value) -> Vec<String> {
        let mut out = Vec::new();
        for_each_text(&mut v, &mut |s, origin| {
            if origin != Origin::Key {
                out.push(s.clone());
            }
        });
        out
    }

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn every_string_of_every_shape() {
        let openai = json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "part"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"q\":\"args\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "tool result"}
        ]});
        // Keys are visited in sorted order; structure is scanned too.
        assert_eq!(
            texts(openai),
            [
                "sys",
                "system",
                "part",
                "text",
                "image_url",
                "user",
                "assistant",
                "{\"q\":\"args\"}",
                "f",
                "c1",
                "function",
                "tool result",
                "tool",
                "c1",
                "gpt-4o"
            ]
        );
        let gemini = json!({"contents": [{"parts": [{"text": "hi"}, {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgoAAAANSUhEUg=="}}]}]});
        assert_eq!(texts(gemini), ["hi", "image/png"]);
    }

    #[test]
    fn no_prefix_size_or_key_hides_text() {
        let long = format!("{}AKIA", "x".repeat(2 * 1024 * 1024));
        let v = json!({"input": "data: my key", "big": long, "metadata": {"type": "secret-in-type", "id": "secret-in-id"}});
        let t = texts(v);
        assert!(t.contains(&"data: my key".to_owned()));
        assert!(t.contains(&long));
        assert!(t.contains(&"secret-in-type".to_owned()));
        assert!(t.contains(&"secret-in-id".to_owned()));
        let mut keys = Vec::new();
        for_each_text(&mut json!({"AKIA-as-key": 1}), &mut |s, o| {
            if o == Origin::Key {
                keys.push(s.clone());
            }
        });
        assert_eq!(keys, ["AKIA-as-key"]);
    }

    #[test]
    fn text_in_media_fields_is_decoded_whatever_type_it_claims() {
        let v = json!({"messages": [{"content": [
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", b64("hidden text"))}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": b64("doc text")}},
            {"type": "input_audio", "input_audio": {"format": "wav", "data": "not base64!"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png?k=v"}}
        ]}]});
        let t = texts(v);
        for want in [
            "hidden text",
            "doc text",
            "not base64!",
            "https://example.com/a.png?k=v",
        ] {
            assert!(t.contains(&want.to_owned()), "{want}: {t:?}");
        }
    }

    #[test]
    fn decoded_media_is_rewritten_and_keys_renamed() {
        let mut v = json!({"inline_data": {"mime_type": "text/plain", "data": b64("key SECRET here")}, "SECRET": 1});
        for_each_text(&mut v, &mut |s, _| {
            if s.contains("SECRET") {
                *s = s.replace("SECRET", "[REDACTED]");
            }
        });
        assert_eq!(v["inline_data"]["data"], b64("key [REDACTED] here"));
        assert_eq!(v["[REDACTED]"], 1);
        assert!(v.get("SECRET").is_none());
    }
}
