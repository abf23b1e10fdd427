//! Request bodies as policy reads them: JSON (strictly: a key given twice
//! is refused, since the provider's parser may read the other value), JSON
//! Lines (Files and Batch uploads), `multipart/form-data` part by part, and
//! plain text. Whatever is not one of these, nor text, cannot be inspected
//! and follows the policy's `on_unparseable`.
//!
//! Multipart is parsed by hand: the parts must be rebuilt byte for byte
//! around a redacted text, which the streaming parsers do not allow.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::text::{self, Origin};

/// Why a body cannot be inspected.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the JSON body gives the key `{0}` twice")]
    DuplicateKey(String),
    #[error("the body is not JSON, JSON Lines, multipart form data or text")]
    Unparseable,
    #[error("the multipart body is malformed: {0}")]
    Multipart(&'static str),
}

/// What is called on each text.
type TextFn<'a> = &'a mut dyn FnMut(&mut String, Origin);

/// A body, parsed. Parsed documents keep their raw bytes: what redaction
/// did not change goes on byte for byte.
#[derive(Debug)]
pub enum Body {
    Empty,
    Json(Parsed<Value>),
    Lines(Parsed<Vec<Value>>),
    Text(Parsed<String>),
    Multipart(Multipart),
    /// Binary content inside a multipart upload (audio, images): passed on
    /// as it is.
    Opaque(Bytes),
}

/// A parsed document, its raw bytes, and whether it was rewritten.
#[derive(Debug)]
pub struct Parsed<T> {
    pub value: T,
    raw: Bytes,
    dirty: bool,
}

impl<T> Parsed<T> {
    fn new(value: T, raw: &Bytes) -> Self {
        Self {
            value,
            raw: raw.clone(),
            dirty: false,
        }
    }
}

/// A `multipart/form-data` body: every part's raw head kept, its content
/// parsed.
#[derive(Debug)]
pub struct Multipart {
    boundary: String,
    preamble: Bytes,
    parts: Vec<(Bytes, Body)>,
    epilogue: Bytes,
}

/// A JSON value read with duplicate keys refused.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(DuplicateMarker(key)));
            }
            let Strict(v) = map.next_value_seed(StrictSeed)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

struct StrictSeed;

impl<'de> DeserializeSeed<'de> for StrictSeed {
    type Value = Strict;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Strict, D::Error> {
        serde::Deserialize::deserialize(d)
    }
}

/// Carries the duplicated key through serde's error type.
struct DuplicateMarker(String);

impl fmt::Display for DuplicateMarker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\u{0}duplicate\u{0}{}", self.0)
    }
}

/// Strict JSON: `Ok(None)` when `bytes` is not one JSON document.
fn strict_json(bytes: &[u8]) -> Result<Option<Value>, BodyError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde::Deserialize::deserialize(&mut de).and_then(|Strict(v)| de.end().map(|()| v)) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            let text = e.to_string();
            match text
                .strip_prefix("\u{0}duplicate\u{0}")
                .and_then(|rest| rest.rsplit_once(" at line "))
            {
                Some((key, _)) => Err(BodyError::DuplicateKey(key.to_owned())),
                None => Ok(None),
            }
        }
    }
}

/// JSON Lines: every non-empty line one JSON document (two at least, or
/// the content type says so).
fn json_lines(bytes: &[u8], declared: bool) -> Result<Option<Vec<Value>>, BodyError> {
    let mut out = Vec::new();
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match strict_json(line)? {
            Some(v) => out.push(v),
            None => return Ok(None),
        }
    }
    Ok((declared || out.len() > 1).then_some(out))
}

/// UTF-8 text without control characters other than white space.
fn as_text(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    (!text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')))
    .then(|| text.to_owned())
}

fn essence(content_type: Option<&str>) -> String {
    content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

impl Body {
    /// Parses `bytes` as its content type says, or as what it turns out to
    /// be. Duplicate JSON keys and uninspectable bodies are errors.
    pub fn parse(content_type: Option<&str>, bytes: &Bytes) -> Result<Self, BodyError> {
        Self::parse_inner(content_type, bytes, false)
    }

    fn parse_inner(
        content_type: Option<&str>,
        bytes: &Bytes,
        in_part: bool,
    ) -> Result<Self, BodyError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::Empty);
        }
        let essence = essence(content_type);
        if essence == "multipart/form-data" && !in_part {
            return Multipart::parse(content_type.unwrap_or(""), bytes).map(Self::Multipart);
        }
        let lines_declared = essence.contains("jsonl") || essence.contains("ndjson");
        if !lines_declared && let Some(v) = strict_json(bytes)? {
            return Ok(Self::Json(Parsed::new(v, bytes)));
        }
        if let Some(lines) = json_lines(bytes, lines_declared)? {
            return Ok(Self::Lines(Parsed::new(lines, bytes)));
        }
        // What says it is JSON, or looks like it, and is not, cannot be
        // read the way the provider will read it.
        let json_like = essence.ends_with("json")
            || lines_declared
            || matches!(
                bytes.iter().find(|b| !b.is_ascii_whitespace()),
                Some(b'{' | b'[')
            );
        match as_text(bytes) {
            Some(text) if !json_like => Ok(Self::Text(Parsed::new(text, bytes))),
            _ if in_part && !json_like => Ok(Self::Opaque(bytes.clone())),
            _ => Err(BodyError::Unparseable),
        }
    }

    /// The top-level JSON document, for transforms; `None` for any other
    /// kind of body.
    /// (Marked rewritten: a transform may change it.)
    pub fn json_mut(&mut self) -> Option<&mut Value> {
        match self {
            Self::Json(p) => {
                p.dirty = true;
                Some(&mut p.value)
            }
            _ => None,
        }
    }

    /// Calls `f` on every text the body carries, in a fixed order, to read.
    pub fn for_each_text(&mut self, f: &mut dyn FnMut(&mut String, Origin)) {
        self.visit(f, false);
    }

    /// Calls `f` on every text, in the same order, to change them: what `f`
    /// changes is written back when the body is encoded.
    pub fn rewrite_texts(&mut self, f: &mut dyn FnMut(&mut String, Origin)) {
        self.visit(f, true);
    }

    fn visit(&mut self, f: &mut dyn FnMut(&mut String, Origin), track: bool) {
        fn tracked<T>(p: &mut Parsed<T>, track: bool, f: TextFn<'_>, walk: fn(&mut T, TextFn<'_>)) {
            if !track {
                return walk(&mut p.value, f);
            }
            let mut dirty = false;
            walk(&mut p.value, &mut |s, o| {
                let before = s.clone();
                f(s, o);
                dirty |= *s != before;
            });
            p.dirty |= dirty;
        }
        match self {
            Self::Empty | Self::Opaque(_) => {}
            Self::Json(p) => tracked(p, track, f, |v, f| text::for_each_text(v, f)),
            Self::Lines(p) => tracked(p, track, f, |lines, f| {
                for v in lines {
                    text::for_each_text(v, f);
                }
            }),
            Self::Text(p) => tracked(p, track, f, |t, f| f(t, Origin::String)),
            Self::Multipart(m) => m.visit(f, track),
        }
    }

    /// The body as bytes again.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        Bytes::from(out)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Self::Empty => {}
            Self::Json(p) if !p.dirty => out.extend_from_slice(&p.raw),
            Self::Lines(p) if !p.dirty => out.extend_from_slice(&p.raw),
            Self::Text(p) if !p.dirty => out.extend_from_slice(&p.raw),
            Self::Json(p) => out.extend(serde_json::to_vec(&p.value).unwrap_or_default()),
            Self::Lines(p) => {
                for v in &p.value {
                    out.extend(serde_json::to_vec(v).unwrap_or_default());
                    out.push(b'\n');
                }
            }
            Self::Text(p) => out.extend_from_slice(p.value.as_bytes()),
            Self::Opaque(b) => out.extend_from_slice(b),
            Self::Multipart(m) => m.encode_into(out),
        }
    }
}

/// The position of `needle` in `hay` from `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// A header's value in a part's raw head (case-insensitive name).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

impl Multipart {
    fn parse(content_type: &str, bytes: &Bytes) -> Result<Self, BodyError> {
        let boundary = content_type
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
            .map(|(_, v)| v.trim_matches('"').to_owned())
            .filter(|b| !b.is_empty() && b.len() <= 70)
            .ok_or(BodyError::Multipart("no boundary"))?;
        let delimiter = format!("--{boundary}").into_bytes();
        let first = find(bytes, &delimiter, 0).ok_or(BodyError::Multipart("no part"))?;
        let preamble = bytes.slice(..first);
        let mut parts = Vec::new();
        let mut at = first + delimiter.len();
        loop {
            if bytes.get(at..at + 2) == Some(b"--") {
                let epilogue = bytes.slice(at + 2..);
                return Ok(Self {
                    boundary,
                    preamble,
                    parts,
                    epilogue,
                });
            }
            // After a delimiter: optional white space, then CRLF.
            let line_end = find(bytes, b"\r\n", at).ok_or(BodyError::Multipart("truncated"))?;
            let head_start = line_end + 2;
            let head_end =
                find(bytes, b"\r\n\r\n", head_start).ok_or(BodyError::Multipart("no headers"))?;
            let mut next_delim = delimiter.clone();
            next_delim.splice(0..0, *b"\r\n");
            let content_end = find(bytes, &next_delim, head_end + 4)
                .ok_or(BodyError::Multipart("unterminated part"))?;
            let head = bytes.slice(line_end..head_end + 4);
            let content = bytes.slice(head_end + 4..content_end);
            let head_text = String::from_utf8_lossy(&head);
            let body = Body::parse_inner(header(&head_text, "content-type"), &content, true)?;
            parts.push((head, body));
            at = content_end + next_delim.len();
        }
    }

    fn visit(&mut self, f: &mut dyn FnMut(&mut String, Origin), track: bool) {
        for (head, body) in &mut self.parts {
            // A file name or field name is text the provider reads too.
            let mut head_text = String::from_utf8_lossy(head).into_owned();
            f(&mut head_text, Origin::String);
            if track && head_text.as_bytes() != &head[..] {
                *head = Bytes::from(head_text);
            }
            body.visit(f, track);
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.preamble);
        for (i, (head, body)) in self.parts.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"--");
            out.extend_from_slice(self.boundary.as_bytes());
            out.extend_from_slice(head);
            body.encode_into(out);
        }
        out.extend_from_slice(b"\r\n--");
        out.extend_from_slice(self.boundary.as_bytes());
        out.extend_from_slice(b"--");
        out.extend_from_slice(&self.epilogue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(body: &mut Body) -> Vec<String> {
        let mut out = Vec::new();
        body.for_each_text(&mut |s, o| {
            if o != Origin::Key {
                out.push(s.clone());
            }
        });
        out
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let b = Bytes::from_static(br#"{"a": {"x": 1, "x": 2}}"#);
        assert!(matches!(
            Body::parse(Some("application/json"), &b),
            Err(BodyError::DuplicateKey(k)) if k == "x"
        ));
        let ok = Bytes::from_static(br#"{"a": {"x": 1}, "x": [{"x": 2}]}"#);
        assert!(matches!(Body::parse(None, &ok), Ok(Body::Json(_))));
    }

    #[test]
    fn json_lines_text_and_binary() {
        let lines = Bytes::from_static(
            b"{\"custom_id\": \"a\", \"body\": {\"x\": \"one\"}}\n{\"body\": \"two\"}\n",
        );
        let mut b = Body::parse(Some("application/octet-stream"), &lines).unwrap();
        assert!(texts(&mut b).contains(&"two".to_owned()));
        let mut t = Body::parse(Some("text/plain"), &Bytes::from_static(b"hello AKIA")).unwrap();
        assert_eq!(texts(&mut t), ["hello AKIA"]);
        assert!(matches!(
            Body::parse(None, &Bytes::from_static(b"\x89PNG\r\n\x1a\n\0\0")),
            Err(BodyError::Unparseable)
        ));
    }

    #[test]
    fn multipart_parts_are_scanned_and_rebuilt_byte_for_byte() {
        let raw: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n{\"body\": \"secret one\"}\n{\"body\": \"two\"}\n\r\n--XyZ\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n\xff\xfb\x90\x00\r\n--XyZ--\r\n";
        let bytes = Bytes::from(raw.to_vec());
        let ct = "multipart/form-data; boundary=XyZ";
        let mut body = Body::parse(Some(ct), &bytes).unwrap();
        assert_eq!(body.encode(), bytes, "rebuilt unchanged");
        let t = texts(&mut body);
        assert!(
            t.contains(&"batch".to_owned()) && t.contains(&"secret one".to_owned()),
            "{t:?}"
        );
        body.rewrite_texts(&mut |s, _| *s = s.replace("secret", "[REDACTED]"));
        let again = body.encode();
        let text = String::from_utf8_lossy(&again);
        assert!(
            text.contains("[REDACTED] one") && !text.contains("secret"),
            "{text}"
        );
        assert!(
            again.windows(4).any(|w| w == b"\xff\xfb\x90\x00"),
            "binary part kept"
        );
    }
}
