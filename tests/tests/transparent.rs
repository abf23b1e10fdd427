//! Transparent interception (root): `leash run` with its eBPF hooks attached
//! to a temporary child cgroup; fake provider hosts on 127.10.0.x:443 with
//! certificates from their own "public" CA; clients in the cgroup with a
//! private /etc/hosts that maps the real provider names to those addresses,
//! trusting only the organisation CA. Applications use their default URLs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::path::{Path, PathBuf};

use leash_tests::{
    harness::{Agent, Cgroup, assert_success, canary, free_port, require_root, run},
    mock::{MockProvider, text_of},
    tls::TestCa,
};
use serde_json::Value;

/// One fake provider world: the public CA, fake hosts, the agent, a cgroup.
struct World {
    cgroup: Cgroup,
    hosts_file: PathBuf,
    agent: Agent,
    _mocks: Vec<MockProvider>,
    mock: usize,
    mocks_addrs: Vec<String>,
}

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

/// `hosts`: (name, fake address, intercepted?) for each fake host.
fn world(
    tag: &str,
    hosts: &[(&str, &str, bool)],
    extra_config: &str,
) -> (World, Vec<MockProvider>) {
    let public_ca = TestCa::new("fake public CA");
    let dir = tempfile::tempdir().unwrap();
    public_ca.write_cert(&dir.path().join("public-ca.pem"));
    let mocks: Vec<MockProvider> = hosts
        .iter()
        .map(|(name, addr, _)| {
            MockProvider::start_tls(
                format!("{addr}:443").parse().unwrap(),
                &public_ca.identity(&[name]),
            )
        })
        .collect();
    let hosts_file = dir.path().join("hosts");
    let mut hosts_text = String::from("127.0.0.1 localhost\n");
    for (name, addr, _) in hosts {
        hosts_text.push_str(&format!("{addr} {name}\n"));
    }
    std::fs::write(&hosts_file, hosts_text).unwrap();
    let cgroup = Cgroup::new(tag);
    let mut config = format!(
        "upstream_tls: {{ extra_roots: [\"{}\"] }}\nintercept:\n  cgroup: \"{}\"\n  resolve: false\n  proxy_port: {}\n  hosts:\n",
        dir.path().join("public-ca.pem").display(),
        cgroup.path.display(),
        free_port()
    );
    for (name, addr, intercepted) in hosts {
        if *intercepted {
            config.push_str(&format!(
                "    - {{ name: {name}, addresses: [\"{addr}\"] }}\n"
            ));
        }
    }
    config.push_str(extra_config);
    let agent = Agent::start_in(dir, &config);
    let addrs = hosts.iter().map(|(_, a, _)| (*a).to_owned()).collect();
    (
        World {
            cgroup,
            hosts_file,
            agent,
            _mocks: Vec::new(),
            mock: 0,
            mocks_addrs: addrs,
        },
        mocks,
    )
}

fn curl_in(world: &World, cacert: &Path, url: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        cacert.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(url);
    run(&mut world.cgroup.command(&world.hosts_file, "curl", &args))
}

#[test]
fn unmodified_curl_is_intercepted_and_audited_with_its_process() {
    if !require_root() {
        return;
    }
    let (w, mocks) = world("curl", &[("api.openai.com", "127.10.0.1", true)], "");
    let key = canary("transparent");
    let auth = format!("authorization: Bearer {key}");
    let out = curl_in(
        &w,
        &w.agent.ca_pem(),
        "https://api.openai.com/v1/chat/completions",
        &[
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
            "-d",
            CHAT,
        ],
    );
    assert_success(&format!("curl through the agent\n{}", w.agent.logs()), &out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], text_of(5));

    let rec = &w.agent.wait_records(1)[0];
    assert_eq!(rec["mode"], "transparent", "{rec}");
    assert_eq!(rec["provider"], "openai");
    assert_eq!(rec["endpoint"], "/chat/completions");
    assert_eq!(rec["model"], "gpt-4o-mini");
    assert_eq!(rec["status"], 200);
    let caller = &rec["caller"];
    assert!(caller["pid"].as_u64().is_some_and(|p| p > 1), "{rec}");
    assert!(
        caller["exe"].as_str().is_some_and(|e| e.ends_with("/curl")),
        "{rec}"
    );
    assert_eq!(caller["uid"], 0);
    assert_eq!(caller["user"], "root");
    assert_eq!(
        caller["cgroup"].as_str(),
        Some(w.cgroup.relative().as_str()),
        "{rec}"
    );

    let seen = mocks[0].requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/v1/chat/completions");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {key}").as_str())
    );
    assert!(!w.agent.logs().contains(&key), "API key in agent logs");
    assert!(!serde_json::to_string(rec).unwrap().contains(&key));
    let _ = (w.mock, &w.mocks_addrs, &w._mocks);
}
