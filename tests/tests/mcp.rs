//! Leash in front of an MCP server, with the official MCP SDK (`mcp` on
//! PyPI) as client and as server over Streamable HTTP: `tools/list`
//! filtered per team, a forbidden `tools/call` refused with a JSON-RPC
//! error before it reaches the server, an allowed one served and audited
//! with its caller.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use leash_tests::{
    fleet::{wait_port, wait_until},
    harness::{
        assert_success, free_port, python, python_dir, require_root, run_python,
        start_with_policy_file,
    },
    tls::Identity,
    world::{Host, World},
};
use serde_json::{Value, json};

const POLICY: &str = r"version: 1
rules:
  - { name: platform-may-shell, match: { team: [platform], tool: { called: [shell] } }, action: allow }
  - { name: no-shell-for-contractors, match: { tool: { called: [shell] } }, action: block }
  - { name: no-secrets-in-tool-args, match: { tool: { arguments: [secrets] } }, action: block }
  - { name: no-secrets-out, match: { detectors: [secrets], direction: response }, action: block }
";

/// A fake AWS access key id: the shape and randomness of a real one.
const CANARY: &str = "AKIAZ7QX3PLM9V2KD4RT";

/// `mcp_server.py` on a port of its own; killed when dropped.
struct McpServer {
    child: Child,
    port: u16,
    calls: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl McpServer {
    /// On 127.0.0.1, plain HTTP.
    fn start() -> Self {
        Self::spawn(None)
    }

    /// On `host`'s address, port 443, with a certificate for its name.
    fn start_tls(host: &Host, identity: &Identity) -> Self {
        Self::spawn(Some((host.1, identity)))
    }

    fn spawn(tls: Option<(&str, &Identity)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let calls = dir.path().join("calls.jsonl");
        let log = dir.path().join("server.log");
        let mut cmd = Command::new(python());
        cmd.arg(python_dir().join("mcp_server.py"));
        let (ip, port): (std::net::IpAddr, u16) = match tls {
            None => (std::net::Ipv4Addr::LOCALHOST.into(), free_port()),
            Some((address, identity)) => {
                let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
                std::fs::write(&cert, &identity.cert_pem).unwrap();
                std::fs::write(&key, &identity.key_pem).unwrap();
                cmd.args(["443", calls.to_str().unwrap(), address]);
                cmd.args([&cert, &key]);
                (address.parse().unwrap(), 443)
            }
        };
        if tls.is_none() {
            cmd.arg(port.to_string()).arg(&calls);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("server.err")).unwrap())
            .spawn()
            .expect("start the MCP server");
        wait_port(
            (ip, port).into(),
            "the MCP server",
            &dir.path().join("server.err"),
        );
        Self {
            child,
            port,
            calls,
            _dir: dir,
        }
    }

    /// The tool calls the server ran: (tool, argument).
    fn ran(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["tool"].as_str().unwrap().to_owned(),
                    v["arg"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mcp(url: &str, team: &str, calls: &Value) -> Value {
    let out = run_python("mcp_check.py", &[url, team, &calls.to_string()], &[]);
    assert_success(&format!("mcp_check.py as {team}"), &out);
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[test]
fn mcp_tools_are_listed_called_and_refused_per_team() {
    let server = McpServer::start();
    let (_mock, leash) = start_with_policy_file(
        POLICY,
        &format!(
            "mcp:\n  servers:\n    ops: {{ url: \"http://127.0.0.1:{}\" }}\n",
            server.port
        ),
    );
    let url = format!("http://{}/mcp/ops/mcp", leash.addr);
    let secret = format!("/srv/{CANARY}");

    // Control: the team allowed `shell` lists and calls it. A call that
    // reports progress gets each notification as the server sends it
    // (the answer's event stream is not held for the response rules).
    let r = mcp(
        &url,
        "platform",
        &json!([["shell", {"cmd": "uptime"}], ["slow_steps", {"steps": 3}]]),
    );
    assert_eq!(
        r["tools"],
        json!(["read_file", "shell", "read_secret", "slow_steps"]),
        "{r}"
    );
    assert_eq!(r["results"][0]["ok"], true, "{r}");
    assert_eq!(r["results"][0]["text"], "ran uptime", "{r}");
    assert_progress_on_time(&r["results"][1]);
    assert_eq!(
        server.ran(),
        [
            ("shell".to_owned(), "uptime".to_owned()),
            ("slow_steps".to_owned(), "3".to_owned())
        ]
    );

    // Contractors: `shell` is not listed, and a call of it is refused with
    // a JSON-RPC error the SDK raises; so is a call carrying a secret, and
    // an answer carrying one (that call did run). An allowed call passes.
    let r = mcp(
        &url,
        "contractors",
        &json!([
            ["shell", {"cmd": "rm -rf /"}],
            ["read_file", {"path": secret}],
            ["read_file", {"path": "/srv/report.txt"}],
            ["read_secret", {}],
        ]),
    );
    assert_eq!(
        r["tools"],
        json!(["read_file", "read_secret", "slow_steps"]),
        "{r}"
    );
    let results = r["results"].as_array().unwrap();
    assert_eq!(results[0]["ok"], false, "{r}");
    assert!(
        results[0]["error"]
            .as_str()
            .unwrap()
            .contains("no-shell-for-contractors"),
        "{r}"
    );
    assert_eq!(results[1]["ok"], false, "{r}");
    assert!(
        results[1]["error"]
            .as_str()
            .unwrap()
            .contains("no-secrets-in-tool-args"),
        "{r}"
    );
    assert_eq!(results[2]["text"], "contents of /srv/report.txt", "{r}");
    assert_eq!(results[3]["ok"], false, "{r}");
    let error = results[3]["error"].as_str().unwrap();
    assert!(error.contains("no-secrets-out"), "{r}");
    assert_eq!(
        server.ran()[2..],
        [
            ("read_file".to_owned(), "/srv/report.txt".to_owned()),
            ("read_secret".to_owned(), String::new()),
        ],
        "a refused call reached the server"
    );

    assert_audit(&leash);
}

/// A call's three progress notifications (0.3 s apart at the server)
/// arrived one by one, the first well before the result.
fn assert_progress_on_time(result: &Value) {
    assert_eq!(result["text"], "3 steps done", "{result}");
    let at: Vec<f64> = result["progress_at"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    assert_eq!(at.len(), 3, "{result}");
    assert!(at[2] - at[0] >= 0.4, "the progress came at once: {result}");
    let done = result["done_at"].as_f64().unwrap();
    assert!(
        done - at[0] >= 0.4,
        "the progress was held until the result: {result}"
    );
}

/// Whether `r` is the record of the contractors' listing.
fn listed(r: &Value) -> bool {
    r["mcp"]["method"] == "tools/list" && r["caller"]["team"] == "contractors"
}

/// The audit records once the contractors' listing is among them: it is
/// the client's last request, so once its record is on disk, so is every
/// call's (records are written in order).
fn through_listing(logs: impl Fn() -> String, read: impl Fn() -> Vec<Value>) -> Vec<Value> {
    let mut records = Vec::new();
    wait_until(
        "the contractors' listing record",
        Duration::from_secs(10),
        logs,
        || {
            records = read();
            records.iter().any(listed)
        },
    );
    records
}

/// The audit: every call with its server, method, tool, team and address;
/// the refusals with their rule; the filtered listing; never the canary.
fn assert_audit(leash: &leash_tests::harness::Leash) {
    let records = through_listing(|| leash.logs(), || leash.wait_records(1));
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["mcp"]["method"] == "tools/call")
        .collect();
    let summary: Vec<(String, String, String, String)> = calls
        .iter()
        .map(|r| {
            (
                r["mcp"]["tool"].as_str().unwrap_or("").to_owned(),
                r["caller"]["team"].as_str().unwrap_or("").to_owned(),
                r["policy"]["action"].as_str().unwrap_or("allow").to_owned(),
                r["policy"]["rules"][0].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let row =
        |t: &str, team: &str, a: &str, rule: &str| (t.into(), team.into(), a.into(), rule.into());
    assert_eq!(
        summary,
        [
            row("shell", "platform", "allow", "platform-may-shell"),
            row("slow_steps", "platform", "allow", ""),
            row("shell", "contractors", "block", "no-shell-for-contractors"),
            row(
                "read_file",
                "contractors",
                "block",
                "no-secrets-in-tool-args"
            ),
            row("read_file", "contractors", "allow", ""),
            row("read_secret", "contractors", "block", "no-secrets-out"),
        ],
        "{calls:#?}"
    );
    assert!(
        calls
            .iter()
            .all(|r| r["provider"] == "mcp/ops" && r["caller"]["addr"].is_string())
    );
    assert!(
        !leash.audit_text().contains(CANARY),
        "the canary is in the audit"
    );
    let listing = records
        .iter()
        .find(|r| listed(r))
        .expect("waited for above");
    assert_eq!(
        listing["policy"]["changes"],
        json!([{ "op": "strip_tool", "field": "shell" }]),
        "{listing}"
    );
}

/// The same server on its own host name over TLS, reached directly by an
/// application in the agent's cgroup: the agent terminates the connection
/// (its host is a configured MCP server's), judges each call like the
/// gateway route does, and audits it with the process that made it.
#[test]
fn mcp_calls_are_governed_through_transparent_interception() {
    if !require_root() {
        return;
    }
    let host = Host("mcp.example.test", "127.10.0.61", true);
    let config = format!(
        "policy:\n  {}\nmcp:\n  servers:\n    ops: {{ url: \"https://{}\" }}\n",
        POLICY.trim_end().replace('\n', "\n  "),
        host.0
    );
    let w = World::with_own_hosts("mcp", &[], std::slice::from_ref(&host), &config);
    let server = McpServer::start_tls(&host, &w.public.identity(&[host.0]));
    let url = format!("https://{}/mcp", host.0);
    let check = |team: &str, calls: &Value| -> Value {
        let out = w.python("mcp_check.py", &[], &[&url, team, &calls.to_string()]);
        assert_success(&format!("mcp_check.py as {team}\n{}", w.agent.logs()), &out);
        serde_json::from_slice(&out.stdout).expect("one JSON line")
    };

    // Control: through the agent, the team allowed `shell` lists and
    // calls it.
    let r = check("platform", &json!([["shell", {"cmd": "uptime"}]]));
    assert_eq!(r["results"][0]["text"], "ran uptime", "{r}");
    assert_eq!(
        r["tools"],
        json!(["read_file", "shell", "read_secret", "slow_steps"]),
        "{r}"
    );
    // Contractors: not listed, refused before the server, and a call
    // carrying a secret too; an allowed call passes.
    let secret = format!("/srv/{CANARY}");
    let r = check(
        "contractors",
        &json!([
            ["shell", {"cmd": "rm -rf /"}],
            ["read_file", {"path": secret}],
            ["read_file", {"path": "/srv/report.txt"}],
        ]),
    );
    assert_eq!(
        r["tools"],
        json!(["read_file", "read_secret", "slow_steps"]),
        "{r}"
    );
    let results = r["results"].as_array().unwrap();
    assert!(
        results[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no-shell-for-contractors")),
        "{r}"
    );
    assert!(
        results[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no-secrets-in-tool-args")),
        "{r}"
    );
    assert_eq!(results[2]["text"], "contents of /srv/report.txt", "{r}");
    assert_eq!(
        server.ran(),
        [
            ("shell".to_owned(), "uptime".to_owned()),
            ("read_file".to_owned(), "/srv/report.txt".to_owned()),
        ],
        "a refused call reached the server"
    );

    // Each call is audited with the process that made it.
    let records = through_listing(|| w.agent.logs(), || w.agent.wait_records(1));
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["mcp"]["method"] == "tools/call")
        .collect();
    assert_eq!(calls.len(), 4, "{calls:#?}");
    for rec in &calls {
        assert_eq!(rec["mode"], "transparent", "{rec}");
        assert_eq!(rec["provider"], "mcp/ops", "{rec}");
        assert!(rec["caller"]["pid"].as_u64().is_some(), "{rec}");
        assert_eq!(rec["caller"]["user"], "root", "{rec}");
        let exe = rec["caller"]["exe"].as_str().unwrap_or_default();
        assert!(exe.contains("python"), "{rec}");
    }
    assert_eq!(calls[1]["mcp"]["tool"], "shell");
    assert_eq!(calls[1]["policy"]["action"], "block");
    assert!(!w.agent.audit_text().contains(CANARY));
}
