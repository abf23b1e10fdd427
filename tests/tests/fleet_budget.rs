//! One team budget shared by three gateway replicas through NATS JetStream
//! key-value (`fleet_budgets`): 64 concurrent clients push past it; the
//! total charged overshoots the limit by at most one request's
//! reservation and every replica refuses once it is spent. The control:
//! the same replicas without `fleet_budgets` each spend the whole limit.
//! With the store gone, `local-share` holds each host to its share, and
//! what it spent is added to the store once it is back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use leash_tests::{
    fleet::{Nats, wait_until},
    harness::{Leash, http_request, mock_providers_yaml},
    mock::MockProvider,
};
use serde_json::{Value, json};

const LIMIT: f64 = 0.002;
const MAX_TOKENS: u64 = 50;

fn body() -> String {
    json!({"model": "gpt-4o-mini", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": "hello"}]})
        .to_string()
}

/// One request's reservation (what the gateway estimates before it is
/// answered: body bytes / 3 + 1 input tokens, `max_tokens` output, at
/// gpt-4o-mini's price).
fn reservation() -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "small numbers")]
    let input = (body().len() / 3 + 1) as f64;
    #[allow(clippy::cast_precision_loss, reason = "small numbers")]
    let output = MAX_TOKENS as f64;
    (0.15 * input + 0.6 * output) / 1e6
}

/// One request to the gateway at `addr`; its status (0: no answer).
fn chat(addr: std::net::SocketAddr) -> u16 {
    http_request(
        addr,
        "POST",
        "/v1/openai/chat/completions",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer sk-test"),
            ("x-leash-team", "research"),
        ],
        body().as_bytes(),
    )
    .map_or(0, |r| r.0)
}

fn replicas(mock: &MockProvider, fleet: &str, n: usize) -> Vec<Leash> {
    let config = format!(
        "{}teams:\n  - {{ name: research, header: true }}\nbudgets:\n  - {{ name: research-day, team: research, period: day, limit_usd: {LIMIT} }}\n{fleet}",
        mock_providers_yaml(mock)
    );
    (0..n).map(|_| Leash::start(&config)).collect()
}

/// The replicas, and how many requests each answered.
struct Fleet {
    gateways: Vec<Leash>,
    answered: Vec<AtomicUsize>,
}

impl Fleet {
    fn new(gateways: Vec<Leash>) -> Self {
        let answered = gateways.iter().map(|_| AtomicUsize::new(0)).collect();
        Self { gateways, answered }
    }

    /// A request to replica `i`; its status.
    fn chat(&self, i: usize) -> u16 {
        let status = chat(self.gateways[i].addr);
        if status != 0 {
            self.answered[i].fetch_add(1, Ordering::Relaxed);
        }
        status
    }

    /// 64 clients, spread over the replicas, each sending until refused.
    fn push(&self) {
        let failed = AtomicBool::new(false);
        std::thread::scope(|s| {
            for c in 0..64 {
                let i = c % self.gateways.len();
                let failed = &failed;
                s.spawn(move || {
                    loop {
                        match self.chat(i) {
                            200 => {}
                            429 => return,
                            _ => {
                                failed.store(true, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                });
            }
        });
        assert!(
            !failed.load(Ordering::Relaxed),
            "a request failed other than by the budget"
        );
    }

    /// What the replicas charged, once every answer is in their trails:
    /// the cost of every answered request.
    fn charged(&self) -> f64 {
        self.gateways
            .iter()
            .zip(&self.answered)
            .flat_map(|(g, n)| g.wait_records(n.load(Ordering::Relaxed)))
            .filter(|r| r["status"] == 200)
            .filter_map(|r| r["cost_usd"].as_f64())
            .sum()
    }
}

#[test]
fn three_replicas_share_one_budget() {
    let mock = MockProvider::start();
    let nats = Nats::start();
    let fleet = format!(
        "fleet_budgets:\n  nats: {{ {} }}\n  timeout_ms: 2000\n",
        nats.yaml()
    );
    let fleet = Fleet::new(replicas(&mock, &fleet, 3));
    fleet.push();
    // Round-robin, one at a time, until every replica has refused: the
    // reservations of the burst are settled by then.
    let mut refused = [false; 3];
    for i in 0.. {
        let r = i % 3;
        refused[r] = fleet.chat(r) == 429;
        if refused.iter().all(|r| *r) {
            break;
        }
        assert!(i < 1000, "the replicas never all refused");
    }
    let total = fleet.charged();
    assert!(
        total >= LIMIT - reservation(),
        "the budget was not used: ${total}"
    );
    assert!(
        total <= LIMIT + reservation(),
        "charged ${total}: past the limit ${LIMIT} by more than one reservation (${})",
        reservation()
    );
    for g in &fleet.gateways {
        let r = http_request(
            g.addr,
            "POST",
            "/v1/openai/chat/completions",
            &[
                ("content-type", "application/json"),
                ("x-leash-team", "research"),
            ],
            body().as_bytes(),
        )
        .unwrap();
        let text = String::from_utf8_lossy(&r.2).into_owned();
        assert_eq!(r.0, 429, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "leash_budget_exceeded", "{text}");
        assert!(text.contains("across the fleet"), "{text}");
    }
    // Every replica's console shows the fleet's spend, not its own.
    for g in &fleet.gateways {
        let fleet_spend = || {
            let (_, spend) = g.api("GET", "/api/spend", b"");
            let b = &spend["budgets"][0];
            (b["scope"] == "fleet")
                .then(|| b["spent_usd"].as_f64())
                .flatten()
        };
        wait_until(
            "the fleet's spend on the spend page",
            Duration::from_secs(10),
            || g.logs(),
            || fleet_spend().is_some_and(|v| (v - total).abs() < 1e-9),
        );
    }
    // The control: without fleet_budgets each replica spends the limit.
    let alone = Fleet::new(replicas(&mock, "", 3));
    alone.push();
    let control = alone.charged();
    assert!(control > 2.0 * LIMIT, "without fleet_budgets: ${control}");
    leash_tests::results::record(
        "fleet_budget",
        &json!({"replicas": 3, "clients": 64, "limit_usd": format!("{LIMIT:.7}"),
                "charged_usd": format!("{total:.7}"), "reservation_usd": format!("{:.7}", reservation()),
                "control_usd": format!("{control:.7}")}),
    );
    drop(nats);
}

/// With the store stopped, each host may spend its `local_share` of the
/// limit; once the store is back, what it spent is added there.
#[test]
fn local_share_holds_each_host_and_reconciles() {
    let mock = MockProvider::start();
    let mut nats = Nats::start();
    let fleet = format!(
        "fleet_budgets:\n  nats: {{ {} }}\n  timeout_ms: 300\n  on_unreachable: local-share\n  local_share: 0.25\n",
        nats.yaml()
    );
    let fleet = Fleet::new(replicas(&mock, &fleet, 2));
    // The store in use: one request each reserved and settled there.
    for i in 0..2 {
        assert_eq!(fleet.chat(i), 200);
    }
    let before = fleet.charged();
    nats.stop();
    // Each host alone: up to its share, then refused.
    for i in 0..2 {
        let mut n = 0;
        while fleet.chat(i) == 200 {
            n += 1;
            assert!(n < 2000, "a host was never held to its share");
        }
    }
    let alone = fleet.charged() - before;
    assert!(
        alone <= 2.0 * (0.25 * LIMIT + reservation()),
        "the hosts spent ${alone} alone: more than their shares"
    );
    assert!(
        alone >= 2.0 * (0.25 * LIMIT - reservation()),
        "refused before the share: ${alone}"
    );
    // Back: what each host spent alone is added to the store.
    nats.restart();
    for g in &fleet.gateways {
        wait_until(
            "the host's spend added to the store",
            Duration::from_secs(30),
            || g.logs(),
            || {
                g.logs()
                    .contains("spend made while the store was away added")
            },
        );
    }
    assert_eq!(fleet.chat(0), 200, "the store admits again");
}
