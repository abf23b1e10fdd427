//! Precision and recall of every detector over the labelled corpus
//! (`leash-agent/corpus/corpus.jsonl`, 300+ positives and hard negatives):
//! first each text on its own, then each text carried in the bodies an
//! evasion would use — a `data:` prefix, a string past a megabyte, keys
//! named `id` and `type` at depth, an object key, a multipart upload, a
//! Batch JSON Lines file, plain text, a text file sent as inline media.
//! Every way of carrying a text must meet the same floors as the text alone.

use std::{collections::BTreeMap, fmt::Write as _};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::Bytes;
use serde_json::{Value, json};

use super::{body::Body, detect::Detectors};

const CORPUS: &str = include_str!("../../corpus/corpus.jsonl");
/// Floors the README reports against.
const MIN_RECALL: f64 = 0.95;
const MIN_PRECISION: f64 = 0.98;

struct Row {
    text: String,
    labels: Vec<String>,
}

fn rows() -> Vec<Row> {
    CORPUS
        .lines()
        .map(|line| {
            let row: Value = serde_json::from_str(line).unwrap();
            Row {
                text: row["text"].as_str().unwrap().to_owned(),
                labels: row["labels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l.as_str().unwrap().to_owned())
                    .collect(),
            }
        })
        .collect()
}

/// Counts per detector: (true positives, false positives, false negatives),
/// and how many hard negatives stayed clean.
#[derive(Default)]
struct Tally {
    stats: BTreeMap<String, (u32, u32, u32)>,
    negatives: u32,
    flagged_negatives: Vec<String>,
    missed: Vec<String>,
}

impl Tally {
    fn add(&mut self, row: &Row, mut fired: Vec<String>) {
        fired.sort();
        fired.dedup();
        if row.labels.is_empty() {
            self.negatives += 1;
            if !fired.is_empty() {
                self.flagged_negatives
                    .push(format!("{} (fired {fired:?})", row.text));
            }
        }
        for name in &fired {
            let e = self.stats.entry(name.clone()).or_default();
            if row.labels.contains(name) {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        for label in &row.labels {
            if !fired.contains(label) {
                self.stats.entry(label.clone()).or_default().2 += 1;
                self.missed
                    .push(format!("{label}: {} (fired {fired:?})", row.text));
            }
        }
    }

    /// Asserts the floors; returns the lowest precision and recall of any
    /// detector and the share of hard negatives left clean.
    #[allow(clippy::cast_precision_loss, reason = "small counts")]
    fn check(&self, what: &str) -> (f64, f64, f64) {
        let mut report = format!("{what}\ndetector            precision  recall  (tp/fp/fn)\n");
        let ratios = |&(tp, fp, fneg): &(u32, u32, u32)| {
            (
                f64::from(tp) / f64::from((tp + fp).max(1)),
                f64::from(tp) / f64::from((tp + fneg).max(1)),
            )
        };
        for (name, counts) in &self.stats {
            let (precision, recall) = ratios(counts);
            let (tp, fp, fneg) = counts;
            let _ = writeln!(
                report,
                "{name:<20} {precision:>9.3} {recall:>7.3}  ({tp}/{fp}/{fneg})"
            );
        }
        let clean = 1.0 - self.flagged_negatives.len() as f64 / f64::from(self.negatives.max(1));
        let _ = writeln!(
            report,
            "hard negatives clean: {clean:.3} of {}",
            self.negatives
        );
        for m in &self.missed {
            let _ = writeln!(report, "missed {m}");
        }
        for m in &self.flagged_negatives {
            let _ = writeln!(report, "flagged {m}");
        }
        eprintln!("{report}");
        for (name, counts) in &self.stats {
            let (precision, recall) = ratios(counts);
            assert!(recall >= MIN_RECALL, "{name}: recall {recall:.3}\n{report}");
            assert!(
                precision >= MIN_PRECISION,
                "{name}: precision {precision:.3}\n{report}"
            );
        }
        assert!(clean >= MIN_PRECISION, "hard negatives\n{report}");
        let lowest = |pick: fn((f64, f64)) -> f64| {
            self.stats
                .values()
                .map(|c| pick(ratios(c)))
                .fold(1.0_f64, f64::min)
        };
        (lowest(|r| r.0), lowest(|r| r.1), clean)
    }
}

/// Writes what the corpus measured where `cargo xtask test` renders
/// SECURITY.md's figures from (only when it runs the tests).
pub(super) fn record(name: &str, figures: &Value) {
    let Some(dir) = std::env::var_os("LEASH_TEST_RESULTS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut figures = figures.clone();
    figures["test"] = Value::from(name);
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec_pretty(&figures).unwrap(),
    )
    .unwrap();
}

fn round3(x: f64) -> String {
    format!("{x:.3}")
}

fn fired_in_text(d: &Detectors, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    d.scan(text, &mut found);
    found
        .iter()
        .map(|f| d.get(f.detector).name.clone())
        .collect()
}

/// What the detectors find in a request body, read as policy reads it.
fn fired_in_body(d: &Detectors, content_type: &str, body: &[u8]) -> Vec<String> {
    let mut parsed = Body::parse(Some(content_type), &Bytes::copy_from_slice(body))
        .unwrap_or_else(|e| panic!("{content_type} body not parsed: {e}"));
    let mut fired = Vec::new();
    parsed.for_each_text(&mut |s, _| fired.extend(fired_in_text(d, s)));
    fired
}

fn chat(content: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": content}],
    }))
    .unwrap()
}

/// Neutral words around a text, to make a string of `len` bytes.
fn filler(len: usize) -> String {
    "lorem ipsum dolor sit amet ".repeat(len / 27 + 1)[..len].to_owned()
}

const BOUNDARY: &str = "leash-corpus-boundary";

/// The ways a text can be carried in a request: (name, content type, body).
fn carriers(text: &str, long: bool) -> Vec<(&'static str, String, Vec<u8>)> {
    let json = "application/json".to_owned();
    let mut out = vec![
        ("chat message", json.clone(), chat(&json!(text))),
        ("data: prefix", json.clone(), chat(&json!(format!("data: {text}")))),
        (
            "content part id",
            json.clone(),
            chat(&json!([{"type": "text", "text": "hello", "id": text}])),
        ),
        (
            "nested metadata.type",
            json.clone(),
            serde_json::to_vec(&json!({
                "model": "gpt-4o",
                "input": "hello",
                "metadata": {"deep": {"type": text}},
            }))
            .unwrap(),
        ),
        (
            "object key",
            json.clone(),
            serde_json::to_vec(&json!({"model": "gpt-4o", "input": "hi", "metadata": {text: 1}}))
                .unwrap(),
        ),
        (
            "text file as inline media",
            json.clone(),
            chat(&json!([{
                "type": "image_url",
                "image_url": {"url": format!("data:image/png;base64,{}", STANDARD.encode(text))},
            }])),
        ),
        (
            "multipart upload",
            format!("multipart/form-data; boundary={BOUNDARY}"),
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n\
                 assistants\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; \
                 filename=\"notes.txt\"\r\nContent-Type: text/plain\r\n\r\n{text}\r\n--{BOUNDARY}--\r\n"
            )
            .into_bytes(),
        ),
        (
            "batch JSON Lines",
            "application/jsonl".to_owned(),
            [
                json!({"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}}),
                json!({"custom_id": "r2", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}}),
            ]
            .iter()
            .flat_map(|l| {
                let mut line = serde_json::to_vec(l).unwrap();
                line.push(b'\n');
                line
            })
            .collect(),
        ),
        ("plain text", "text/plain".to_owned(), text.as_bytes().to_vec()),
    ];
    if long {
        // Past the old 1 MiB skip, the text at the very end.
        let big = format!("{} {text}", filler(1024 * 1024 + 17));
        out.push(("string over 1 MiB", json, chat(&json!(big))));
    }
    out
}

#[test]
fn precision_and_recall_hold() {
    let d = Detectors::new(&[]).unwrap();
    let rows = rows();
    assert!(rows.len() >= 300, "corpus too small: {}", rows.len());
    let mut tally = Tally::default();
    for row in &rows {
        tally.add(row, fired_in_text(&d, &row.text));
    }
    let (precision, recall, clean) = tally.check("texts on their own");
    let positives = rows.iter().filter(|r| !r.labels.is_empty()).count();
    record(
        "detector_corpus",
        &json!({
            "samples": rows.len(),
            "positives": positives,
            "negatives": rows.len() - positives,
            "detectors": tally.stats.len(),
            "min_precision": round3(precision),
            "min_recall": round3(recall),
            "negatives_clean": round3(clean),
        }),
    );
}

/// The same floors when the text is a tool call's argument in an answer
/// (issue 24): each provider's whole answer, and a streamed call assembled
/// from two argument pieces split inside the text — read as the policy
/// reads a call (`calls::readable`).
#[test]
fn precision_and_recall_hold_in_tool_call_arguments() {
    use crate::pipeline::calls::{Assembler, in_body, readable};
    let d = Detectors::new(&[]).unwrap();
    let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
    for row in &rows() {
        let args = json!({ "cmd": row.text });
        let text_args = args.to_string();
        let mut split = text_args.len() / 2;
        while !text_args.is_char_boundary(split) {
            split += 1;
        }
        let (a, b) = text_args.split_at(split);
        let mut stream = Assembler::default();
        let delta = |tc: Value, finish: Value| json!({"choices": [{"index": 0, "delta": {"tool_calls": tc}, "finish_reason": finish}]});
        stream.feed(&delta(
            json!([{"index": 0, "function": {"name": "shell", "arguments": a}}]),
            Value::Null,
        ));
        stream.feed(&delta(
            json!([{"index": 0, "function": {"arguments": b}}]),
            Value::Null,
        ));
        let streamed = stream.feed(&delta(Value::Null, json!("tool_calls")));
        let carriers = [
            (
                "OpenAI tool_calls arguments",
                in_body(
                    &json!({"choices": [{"message": {"tool_calls": [{"function": {"name": "shell", "arguments": text_args}}]}}]}),
                ),
            ),
            (
                "Anthropic tool_use input",
                in_body(
                    &json!({"content": [{"type": "tool_use", "name": "shell", "input": args}]}),
                ),
            ),
            (
                "Gemini functionCall args",
                in_body(
                    &json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "shell", "args": args}}]}}]}),
                ),
            ),
            ("streamed arguments, split", streamed),
        ];
        for (name, calls) in carriers {
            assert_eq!(calls.len(), 1, "{name}");
            let fired = fired_in_text(&d, &readable(&calls[0].arguments));
            tallies.entry(name).or_default().add(row, fired);
        }
    }
    check_carriers("detector_corpus_tool_calls", &tallies);
}

/// The same floors whatever carries the text (the evasions of issue 16).
#[test]
fn precision_and_recall_hold_in_every_carrier() {
    let d = Detectors::new(&[]).unwrap();
    let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
    for (i, row) in rows().iter().enumerate() {
        // The megabyte string for one row in 25: enough rows, bounded time.
        for (name, content_type, body) in carriers(&row.text, i % 25 == 0) {
            let fired = fired_in_body(&d, &content_type, &body);
            tallies.entry(name).or_default().add(row, fired);
        }
    }
    assert_eq!(tallies.len(), 10);
    check_carriers("detector_corpus_carriers", &tallies);
}

/// Asserts each carrier's floors; records the lowest of all as `name`.
fn check_carriers(name: &str, tallies: &BTreeMap<&str, Tally>) {
    let (mut precision, mut recall, mut clean) = (1.0_f64, 1.0_f64, 1.0_f64);
    for (carrier, tally) in tallies {
        let (p, r, c) = tally.check(carrier);
        (precision, recall, clean) = (precision.min(p), recall.min(r), clean.min(c));
    }
    record(
        name,
        &json!({
            "carriers": tallies.len(),
            "min_precision": round3(precision),
            "min_recall": round3(recall),
            "negatives_clean": round3(clean),
        }),
    );
}
