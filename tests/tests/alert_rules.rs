//! The shipped Prometheus rules (`leash-agent/dist/prometheus-rules.yaml`)
//! are valid and do what they say: `promtool check rules`, then the unit
//! tests in `tests/prometheus/rules_test.yml` (every alert fires on its
//! fault and stays silent on a control); and a real Prometheus server
//! scraping a running Leash raises the error-budget alert once the
//! provider answers 500s, not before.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use leash_tests::{
    fleet::wait_until,
    gateway::Leash,
    harness::{assert_success, free_port, mock_providers_yaml, run},
    http::http_request,
    mock::MockProvider,
};
use serde_json::Value;

fn root() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rules() -> std::path::PathBuf {
    root().join("../leash-agent/dist/prometheus-rules.yaml")
}

#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    let out = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(rules()));
    assert_success("promtool check rules", &out);
    let out = run(Command::new("promtool")
        .current_dir(root().join("prometheus"))
        .args(["test", "rules", "rules_test.yml"]));
    assert_success("promtool test rules", &out);
}

/// A Prometheus server on loopback, scraping `target` every second and
/// evaluating the shipped rules every second.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [\"{}\"]\nscrape_configs:\n  - job_name: leash\n    static_configs: [{{ targets: [\"{target}\"] }}]\n",
                rules().display()
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let p = Self { child, addr, dir };
        wait_until(
            "prometheus ready",
            Duration::from_secs(30),
            || p.log(),
            || http_request(p.addr, "GET", "/-/ready", &[], b"").is_some_and(|r| r.0 == 200),
        );
        p
    }

    /// Its log and what it says of its scrape target.
    fn log(&self) -> String {
        let targets = http_request(self.addr, "GET", "/api/v1/targets", &[], b"")
            .map(|r| String::from_utf8_lossy(&r.2).into_owned());
        format!(
            "{}\ntargets: {targets:?}",
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
        )
    }

    fn get(&self, path: &str) -> Value {
        let (status, _, body) = http_request(self.addr, "GET", path, &[], b"").expect("prometheus");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// The state of alert `name` (`pending`, `firing`), if it is active.
    fn alert(&self, name: &str) -> Option<String> {
        self.get("/api/v1/alerts")["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .map(|a| a["state"].as_str().unwrap().to_owned())
    }

    /// The value of an instant query with one result, if it has one.
    fn value(&self, query: &str) -> Option<f64> {
        let v = self.get(&format!("/api/v1/query?query={query}"));
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_scraping_leash_fires_the_error_budget_alert() {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    let prometheus = Prometheus::start(leash.admin);
    let chat = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let send = |n: usize, status: Option<&str>| {
        for _ in 0..n {
            let mut h = vec![
                ("content-type", "application/json"),
                ("authorization", "Bearer sk-test"),
            ];
            h.extend(status.map(|s| ("x-mock-status", s)));
            let r =
                http_request(leash.addr, "POST", "/v1/openai/chat/completions", &h, chat).unwrap();
            assert_eq!(r.0, status.map_or(200, |s| s.parse().unwrap()));
        }
    };
    // Control: healthy traffic, scraped and evaluated (the error ratio is
    // known, and 0: rates need traffic between two scrapes), raises nothing.
    wait_until(
        "the error ratio evaluated",
        Duration::from_mins(1),
        || prometheus.log(),
        || {
            send(5, None);
            prometheus.value("leash:request_errors:ratio_rate5m") == Some(0.0)
        },
    );
    assert_eq!(prometheus.alert("LeashErrorBudgetBurnFast"), None);
    // The provider fails: the fast burn alert fires.
    wait_until(
        "LeashErrorBudgetBurnFast firing",
        Duration::from_mins(1),
        || prometheus.log(),
        || {
            send(5, Some("500"));
            prometheus.alert("LeashErrorBudgetBurnFast").as_deref() == Some("firing")
        },
    );
    let ratio = prometheus
        .value("leash:request_errors:ratio_rate5m")
        .unwrap();
    assert!(ratio > 14.4 * 0.001, "error ratio {ratio}");
}
