//! One team budget shared by three gateway replicas and two transparent
//! agents through NATS JetStream key-value (`fleet_budgets`): 64
//! concurrent clients (those of the agents calling the provider from the
//! agents' cgroups) push past it; the
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
    harness::{Leash, http_request, mock_providers_yaml, require_root},
    mock::MockProvider,
    world::{Host, World},
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

/// The team, its budget and `fleet` (the `fleet_budgets` section or
/// nothing), for every replica.
fn budget_yaml(fleet: &str) -> String {
    format!(
        "teams:\n  - {{ name: research, header: true }}\nbudgets:\n  - {{ name: research-day, team: research, period: day, limit_usd: {LIMIT} }}\n{fleet}"
    )
}

fn replicas(mock: &MockProvider, fleet: &str, n: usize) -> Vec<Replica> {
    let config = format!("{}{}", mock_providers_yaml(mock), budget_yaml(fleet));
    (0..n)
        .map(|_| Replica::Gateway(Leash::start(&config)))
        .collect()
}

/// A gateway replica, or a transparent agent with its intercepted cgroup
/// and fake provider host.
enum Replica {
    Gateway(Leash),
    Agent(World),
}

impl Replica {
    /// `n` agents, each intercepting the provider at its own address.
    fn agents(fleet: &str, n: u8) -> Vec<Self> {
        (0..n)
            .map(|i| {
                let host: &'static str = Box::leak(format!("127.10.22.{}", i + 1).into_boxed_str());
                Self::Agent(World::new(
                    &format!("budget-{i}"),
                    &[Host("api.openai.com", host, true)],
                    &format!("  failure_mode: open\n{}", budget_yaml(fleet)),
                ))
            })
            .collect()
    }

    /// One request of the team; its status (0: no answer) and body.
    fn chat(&self) -> (u16, String) {
        match self {
            Self::Gateway(g) => http_request(
                g.addr,
                "POST",
                "/v1/openai/chat/completions",
                &[
                    ("content-type", "application/json"),
                    ("authorization", "Bearer sk-test"),
                    ("x-leash-team", "research"),
                ],
                body().as_bytes(),
            )
            .map_or((0, String::new()), |r| {
                (r.0, String::from_utf8_lossy(&r.2).into_owned())
            }),
            Self::Agent(w) => {
                let out = w.curl(
                    &w.agent.ca_pem(),
                    "https://api.openai.com/v1/chat/completions",
                    &[
                        "-w",
                        "\n%{http_code}",
                        "-H",
                        "authorization: Bearer sk-test",
                        "-H",
                        "content-type: application/json",
                        "-H",
                        "x-leash-team: research",
                        "-d",
                        &body(),
                    ],
                );
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
                (status.trim().parse().unwrap_or(0), body.to_owned())
            }
        }
    }

    fn wait_records(&self, n: usize) -> Vec<Value> {
        match self {
            Self::Gateway(g) => g.wait_records(n),
            Self::Agent(w) => w.agent.wait_records(n),
        }
    }

    fn logs(&self) -> String {
        match self {
            Self::Gateway(g) => g.logs(),
            Self::Agent(w) => w.agent.logs(),
        }
    }

    fn api(&self, path: &str) -> Value {
        match self {
            Self::Gateway(g) => g.api("GET", path, b"").1,
            Self::Agent(w) => w.agent.api("GET", path, b"").1,
        }
    }
}

/// The replicas, and how many requests each answered.
struct Fleet {
    replicas: Vec<Replica>,
    answered: Vec<AtomicUsize>,
}

impl Fleet {
    fn new(replicas: Vec<Replica>) -> Self {
        let answered = replicas.iter().map(|_| AtomicUsize::new(0)).collect();
        Self { replicas, answered }
    }

    /// A request to replica `i`; its status.
    fn chat(&self, i: usize) -> u16 {
        let (status, _) = self.replicas[i].chat();
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
                let i = c % self.replicas.len();
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

    /// Waits until every replica's spend page shows the fleet's spend
    /// (from the store) equal to `total`: every reservation settled, none
    /// counted twice.
    fn wait_store_holds(&self, total: f64) {
        for g in &self.replicas {
            let seen = std::cell::Cell::new(None);
            let fleet_spend = || {
                let spend = g.api("/api/spend");
                let b = &spend["budgets"][0];
                seen.set(
                    (b["scope"] == "fleet")
                        .then(|| b["spent_usd"].as_f64())
                        .flatten(),
                );
                seen.get()
            };
            wait_until(
                &format!("the fleet's spend on the spend page to be ${total}"),
                Duration::from_secs(30),
                || format!("last seen: {:?}\n{}", seen.get(), g.logs()),
                || fleet_spend().is_some_and(|v| (v - total).abs() < 1e-9),
            );
        }
    }

    /// What the replicas charged, once every answer is in their trails:
    /// the cost of every answered request.
    fn charged(&self) -> f64 {
        self.replicas
            .iter()
            .zip(&self.answered)
            .flat_map(|(g, n)| g.wait_records(n.load(Ordering::Relaxed)))
            .filter(|r| r["status"] == 200)
            .filter_map(|r| r["cost_usd"].as_f64())
            .sum()
    }
}

/// Three gateway replicas and two transparent agents (each intercepting
/// its own cgroup's calls) share the team's budget.
/// One fleet at a time: each test runs several gateways, agents and a
/// NATS server, more than two cores serve side by side in time.
static ONE_FLEET: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn three_replicas_and_two_agents_share_one_budget() {
    let _turn = ONE_FLEET
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !require_root() {
        return;
    }
    let mock = MockProvider::start();
    let nats = Nats::start();
    let fleet = format!(
        "fleet_budgets:\n  nats: {{ {} }}\n  timeout_ms: 2000\n",
        nats.yaml()
    );
    let mut all = replicas(&mock, &fleet, 3);
    all.extend(Replica::agents(&fleet, 2));
    let n = all.len();
    let fleet = Fleet::new(all);
    // One request each first: every replica spends from the shared budget
    // (an agent's curl per request is slower than a gateway's in-process
    // client, so in the burst alone the gateways may spend it all).
    for i in 0..n {
        assert_eq!(fleet.chat(i), 200, "replica {i} was not admitted");
    }
    fleet.push();
    // Round-robin, one at a time, until every replica has refused: the
    // reservations of the burst are settled by then.
    let mut refused = vec![false; n];
    for i in 0.. {
        let r = i % n;
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
    // Each replica, the agents' intercepted calls included, spent part of it.
    for (i, g) in fleet.replicas.iter().enumerate() {
        let records = g.wait_records(fleet.answered[i].load(Ordering::Relaxed));
        let served = records.iter().filter(|r| r["status"] == 200).count();
        assert!(served > 0, "replica {i} served none of the budget");
        if let Replica::Agent(_) = g {
            assert!(records.iter().all(|r| r["mode"] == "transparent"));
        }
    }
    for g in &fleet.replicas {
        let (status, text) = g.chat();
        assert_eq!(status, 429, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "leash_budget_exceeded", "{text}");
        assert!(text.contains("across the fleet"), "{text}");
    }
    // Every replica's console shows the fleet's spend, not its own.
    fleet.wait_store_holds(total);
    // The control: without fleet_budgets each replica spends the limit.
    let alone = Fleet::new(replicas(&mock, "", 3));
    alone.push();
    let control = alone.charged();
    assert!(control > 2.0 * LIMIT, "without fleet_budgets: ${control}");
    leash_tests::results::record(
        "fleet_budget",
        &json!({"replicas": 3, "agents": 2, "clients": 64, "limit_usd": format!("{LIMIT:.7}"),
                "charged_usd": format!("{total:.7}"), "reservation_usd": format!("{:.7}", reservation()),
                "control_usd": format!("{control:.7}")}),
    );
    drop(nats);
}

/// With the store stopped, each host may spend its `local_share` of the
/// limit; once the store is back, what it spent is added there.
#[test]
fn local_share_holds_each_host_and_reconciles() {
    let _turn = ONE_FLEET
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
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
    for g in &fleet.replicas {
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
    // Nothing lost and nothing counted twice: the store holds exactly what
    // was charged, the spend made alone included.
    fleet.wait_store_holds(fleet.charged());
}

/// A write that lands in the store but whose answer is lost (the store
/// answered after the timeout) is not counted again: the writer reads its
/// own mark back, and what the batch put in the store comes off what the
/// host counts on its own. Every third write's answer is lost here.
#[test]
fn a_lost_answer_is_not_counted_twice() {
    let _turn = ONE_FLEET
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mock = MockProvider::start();
    let nats = Nats::start();
    for (faulty, on_unreachable) in [(false, "deny"), (true, "deny"), (true, "local-share")] {
        let fleet = format!(
            "fleet_budgets:\n  nats: {{ {} }}\n  bucket: B{}{}\n  on_unreachable: {on_unreachable}\n",
            nats.yaml(),
            u8::from(faulty),
            on_unreachable.len()
        );
        let config = format!("{}{}", mock_providers_yaml(&mock), budget_yaml(&fleet));
        let env: &[(&str, &str)] = if faulty {
            &[("LEASH_FAULT_FLEET_LOSE_ANSWER", "3")]
        } else {
            &[]
        };
        let fleet = Fleet::new(
            (0..2)
                .map(|_| {
                    Replica::Gateway(Leash::start_with_env(
                        tempfile::tempdir().unwrap(),
                        &config,
                        env,
                    ))
                })
                .collect(),
        );
        let mut served = 0;
        for i in 0..30 {
            match fleet.chat(i % 2) {
                200 => served += 1,
                429 => {}
                s => panic!("request {i}: status {s}"),
            }
        }
        assert!(served > 0, "no request was served");
        let total = fleet.charged();
        assert!(
            total < LIMIT,
            "the budget ran out: the test needs it not to"
        );
        fleet.wait_store_holds(total);
        let lost = fleet
            .replicas
            .iter()
            .filter(|g| g.logs().contains("an unanswered batch had landed"))
            .count();
        if faulty {
            assert!(lost > 0, "no answer was lost: the fault did not fire");
        } else {
            assert_eq!(lost, 0, "the control lost an answer");
        }
    }
    drop(nats);
}
