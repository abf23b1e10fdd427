//! An OTLP receiver for the tests: `tests/python/otlp_receiver.py`, which
//! decodes what it receives with the official OpenTelemetry protobuf
//! definitions and writes one JSON line per span and metric point.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    fleet::wait_until,
    harness::{python, python_dir},
};

pub struct OtlpReceiver {
    child: Child,
    out: PathBuf,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl OtlpReceiver {
    /// Starts a receiver speaking `protocol` (`http` or `grpc`) on a free
    /// loopback port; returns once it listens.
    pub fn start(protocol: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("otlp.jsonl");
        let mut child = Command::new(python())
            .arg(python_dir().join("otlp_receiver.py"))
            .arg(protocol)
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the OTLP receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("OTLP receiver did not start: {line:?}"));
        Self {
            child,
            out,
            port,
            _dir: dir,
        }
    }

    /// The endpoint for `telemetry.otlp.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything received so far, raw (for leak checks).
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Every line received with `signal` (`span`, `metric`, `header`).
    pub fn lines(&self, signal: &str) -> Vec<Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["signal"] == signal)
            .collect()
    }

    /// Waits until a span with `span_id` arrived, and returns it.
    pub fn wait_span(&self, span_id: &str, logs: impl Fn() -> String) -> Value {
        let mut found = None;
        wait_until(
            &format!("span {span_id}"),
            Duration::from_secs(20),
            logs,
            || {
                found = self
                    .lines("span")
                    .into_iter()
                    .find(|s| s["span_id"] == span_id);
                found.is_some()
            },
        );
        found.unwrap()
    }

    /// The spans whose parent is `span_id`.
    pub fn children(&self, span_id: &str) -> Vec<Value> {
        self.lines("span")
            .into_iter()
            .filter(|s| s["parent_span_id"] == span_id)
            .collect()
    }

    /// Waits until a metric point named `name` whose attributes include
    /// `attrs` and that counts at least `min` (a histogram's count, a
    /// sum's value) arrived, and returns it.
    pub fn wait_point(
        &self,
        name: &str,
        attrs: &[(&str, &str)],
        min: f64,
        logs: impl Fn() -> String,
    ) -> Value {
        let mut found = None;
        wait_until(
            &format!("metric {name} {attrs:?}"),
            Duration::from_secs(20),
            logs,
            || {
                found = self.lines("metric").into_iter().find(|p| {
                    let measure = p["count"].as_f64().or_else(|| p["value"].as_f64());
                    p["name"] == name
                        && measure.is_some_and(|m| m >= min)
                        && attrs
                            .iter()
                            .all(|(k, v)| p["attributes"][*k].as_str() == Some(*v))
                });
                found.is_some()
            },
        );
        found.unwrap()
    }

    /// Stops the receiver: its port refuses connections from now on.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}
