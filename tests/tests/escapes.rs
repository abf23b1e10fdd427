//! The escape suite (root): every way a process in the watched cgroup could
//! reach a provider without passing through the policy, or pass through
//! under someone else's name, tried as the attack. Each test has a control
//! (the same setup without the attack works), and records its outcome in
//! `target/test-results/escape_<name>.json`, from which `cargo xtask test`
//! writes SECURITY.md's escapes table.
//!
//! Fake providers live on 127.10.1.x; the canary secret is an AWS key id
//! that the policy's block rule matches.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{
    io::Read as _,
    net::{TcpListener, UdpSocket},
    path::Path,
    process::{Child, Command, Output},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use leash_tests::{
    dns::FakeDns,
    harness::{assert_success, free_port, require_root, run},
    mock::{MockProvider, text_of},
    tls::TestCa,
    world::{CHAT, Host, World},
};
use serde_json::{Value, json};

const SECRET: &str = "AKIAZ7QX3PLM9V2KD4RT";
const BLOCK_SECRETS: &str = "policy:
  version: 1
  rules:
    - { name: block-secrets, match: { detectors: [secrets] }, action: block }
";

fn secret_chat() -> String {
    format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"use {SECRET}"}}]}}"#)
}

fn escape_client() -> &'static str {
    env!("CARGO_BIN_EXE_escape-client")
}

/// Records what an escape test found, for SECURITY.md.
fn record(name: &str, escape: &str, result: &str, control: &str) {
    leash_tests::results::record(
        &format!("escape_{name}"),
        &json!({"escape": escape, "result": result, "control": control, "name": name}),
    );
}

/// `escape-client ARGS` inside the world's cgroup; its one line of output.
fn attack(w: &World, args: &[&str]) -> String {
    let out = run(&mut w.cgroup.command(&w.hosts_file, escape_client(), args));
    assert_success("escape-client", &out);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether any request the mock received holds the canary.
fn saw_secret(mock: &MockProvider) -> bool {
    mock.requests()
        .iter()
        .any(|r| String::from_utf8_lossy(&r.body).contains(SECRET))
}

/// Waits for an audit record matching `pred` (a later event than the
/// attack), and returns every record at that point.
fn wait_record(w: &World, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    wait_record_of(&w.agent, what, pred)
}

fn wait_record_of(
    agent: &leash_tests::harness::Agent,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let records = agent.audit_records();
        if records.iter().any(&pred) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "no audit record {what}: {records:#?}\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn refused_record(w: &World, reason: &str) -> Value {
    let records = wait_record(w, &format!("refused for {reason}"), |r| {
        r["event"] == "refused" && r["refusal"] == reason
    });
    records
        .into_iter()
        .find(|r| r["event"] == "refused" && r["refusal"] == reason)
        .unwrap()
}

/// A TCP listener that keeps every byte any connection sends it.
struct ByteSink {
    bytes: Arc<Mutex<Vec<u8>>>,
    connections: Arc<Mutex<usize>>,
}

impl ByteSink {
    fn start(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).unwrap();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (b, c) = (Arc::clone(&bytes), Arc::clone(&connections));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                *c.lock().unwrap() += 1;
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        b.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Self { bytes, connections }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }

    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

/// A `ClientHello` cut into 2, 3 or 20 TLS records still names its host:
/// the canary is blocked, never spliced to the provider.
#[test]
fn a_hello_split_across_records_is_still_inspected() {
    if !require_root() {
        return;
    }
    let w = World::new(
        "esc-split",
        &[Host("api.openai.com", "127.10.1.1", true)],
        BLOCK_SECRETS,
    );
    let ca = w.agent.ca_pem();
    let ca = ca.to_str().unwrap();
    // Control: one record, no secret: served through the agent.
    let out = attack(
        &w,
        &[
            "tls",
            "127.10.1.1:443",
            "api.openai.com",
            ca,
            "1",
            "-",
            CHAT,
        ],
    );
    assert!(
        out.starts_with("status 200"),
        "control: {out}\n{}",
        w.agent.logs()
    );
    for parts in ["2", "3", "20"] {
        let out = attack(
            &w,
            &[
                "tls",
                "127.10.1.1:443",
                "api.openai.com",
                ca,
                parts,
                "-",
                &secret_chat(),
            ],
        );
        assert!(
            out.starts_with("status 403") && out.contains("leash_policy_blocked"),
            "{parts} records: {out}\n{}",
            w.agent.logs()
        );
    }
    assert!(!saw_secret(&w.mocks[0]), "the canary reached the provider");
    assert_eq!(w.mocks[0].requests().len(), 1);
    let records = w.agent.wait_records(4);
    assert!(
        records[1..].iter().all(|r| r["policy"]["action"] == "block"
            && r["caller"]["exe"]
                .as_str()
                .unwrap()
                .ends_with("escape-client")),
        "{records:#?}"
    );
    record(
        "split_hello",
        "ClientHello split across 2, 3 and 20 TLS records",
        "inspected: 3 of 3 blocked by policy",
        "one-record hello served (200)",
    );
}

/// To a provider address: TLS without a server name, bytes that are not
/// TLS, and a handshake record that is no `ClientHello` are refused and
/// audited with their caller; none reaches the provider.
#[test]
fn no_sni_not_tls_and_junk_to_a_provider_address_are_refused() {
    if !require_root() {
        return;
    }
    // A "provider" that speaks plain TCP, to see any byte that gets through.
    let sink = ByteSink::start("127.10.1.3:443");
    let w = World::new(
        "esc-nosni",
        &[Host("api.openai.com", "127.10.1.2", true)],
        &format!(
            "    - {{ name: api.anthropic.com, addresses: [\"127.10.1.3\"] }}\n{BLOCK_SECRETS}"
        ),
    );
    let public_ca = w.public_ca.to_str().unwrap();
    // No SNI (an IP address as the name), trusting the provider's own CA.
    let out = attack(
        &w,
        &[
            "tls",
            "127.10.1.2:443",
            "-",
            public_ca,
            "1",
            "-",
            &secret_chat(),
        ],
    );
    assert!(!out.starts_with("status"), "no SNI was answered: {out}");
    let rec = refused_record(&w, "no_sni");
    assert!(
        rec["caller"]["exe"]
            .as_str()
            .unwrap()
            .ends_with("escape-client"),
        "{rec}"
    );
    assert!(
        rec["endpoint"].as_str().unwrap().contains("127.10.1.2:443"),
        "{rec}"
    );
    assert!(
        w.mocks[0].requests().is_empty(),
        "a request without SNI reached the provider"
    );

    // Not TLS, and TLS-looking junk, to a provider address.
    let out = attack(&w, &["raw", "127.10.1.3:443", "plain", &secret_chat()]);
    assert_eq!(out, "closed");
    refused_record(&w, "not_tls");
    let out = attack(&w, &["raw", "127.10.1.3:443", "tls-junk", &secret_chat()]);
    assert_eq!(out, "closed");
    refused_record(&w, "bad_hello");
    // Control: the same bytes from outside the cgroup reach the sink, so it
    // would have seen them.
    let out =
        run(Command::new(escape_client()).args(["raw", "127.10.1.3:443", "plain", "control"]));
    assert_success("control outside the cgroup", &out);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sink.text().contains("control") {
        assert!(Instant::now() < deadline, "the sink saw nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !sink.text().contains(SECRET),
        "the canary reached the provider address"
    );
    assert_eq!(sink.connections(), 1, "only the control connected");
    // And a provider's TLS with its name is served (control).
    let out = w.chat(&w.agent.ca_pem(), "sk-test");
    assert_success("control chat", &out);
    let metrics = w.agent.metrics();
    for reason in ["no_sni", "not_tls", "bad_hello"] {
        assert!(
            metrics.contains(&format!(
                "leash_refused_connections_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}\n{metrics}"
        );
    }
    record(
        "no_sni",
        "TLS without SNI, non-TLS bytes, a malformed hello to a provider address",
        "refused and audited: 3 of 3; 0 bytes reached the provider",
        "the same bytes from outside the cgroup arrive; a named TLS call is served",
    );
}

/// UDP (QUIC) to a provider address is refused in the kernel; UDP to other
/// addresses and TCP to the provider still work.
#[test]
fn udp_to_a_provider_address_is_refused_and_tcp_still_works() {
    if !require_root() {
        return;
    }
    let quic = UdpSocket::bind("127.10.1.4:443").unwrap();
    let other = UdpSocket::bind("127.10.1.5:443").unwrap();
    for s in [&quic, &other] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let w = World::new(
        "esc-udp",
        &[Host("api.openai.com", "127.10.1.4", true)],
        BLOCK_SECRETS,
    );
    let out = attack(&w, &["udp", "127.10.1.4:443"]);
    assert!(
        out.contains("connect: refused") && out.contains("sendto: refused"),
        "{out}"
    );
    // Control: the same client to an address that is not a provider's.
    let out = attack(&w, &["udp", "127.10.1.5:443"]);
    assert!(
        out.contains("connect: sent") && out.contains("sendto: sent"),
        "{out}"
    );
    let mut buf = [0u8; 256];
    for _ in 0..2 {
        let n = other.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("quic-initial"));
    }
    // A later datagram to the provider address, from outside the cgroup:
    // the first thing its socket receives, so nothing came before it.
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"control", "127.10.1.4:443")
        .unwrap();
    let n = quic.recv(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        b"control",
        "a datagram from the cgroup arrived first"
    );
    // TCP to the provider is intercepted as before.
    let out = w.chat(&w.agent.ca_pem(), "sk-test");
    assert_success("TCP chat", &out);
    let rec = refused_record(&w, "quic");
    assert!(
        rec["caller"]["cgroup"]
            .as_str()
            .unwrap()
            .contains("esc-udp"),
        "{rec}"
    );
    assert!(
        w.agent
            .metrics()
            .contains("leash_refused_connections_total{reason=\"quic\"}")
    );
    record(
        "quic",
        "UDP 443 (QUIC) to a provider address, connected and with sendto",
        "refused in the kernel (EPERM) and audited per cgroup; 0 datagrams arrived",
        "UDP to another address arrives; TCP to the provider is intercepted",
    );
}

/// A forward proxy (tinyproxy) started by the test, outside the cgroup.
struct Tinyproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// Resolves names with `hosts` (its own mount namespace).
    fn start(hosts: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("tinyproxy.conf");
        let log = dir.path().join("tinyproxy.log");
        std::fs::write(
            &conf,
            format!(
                "User nobody\nGroup nogroup\nPort {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\nConnectPort 443\nLogLevel Info\nLogFile \"{}\"\nMaxClients 50\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let child = Command::new("unshare")
            .args([
                "-m",
                "sh",
                "-c",
                r#"mount --bind "$1" /etc/hosts && exec tinyproxy -d -c "$2""#,
                "sh",
            ])
            .arg(hosts)
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tinyproxy (cargo xtask test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tinyproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The official Python SDK with `HTTPS_PROXY` in its environment: the
/// canary refused with the SDK's own error, a benign call served.
fn sdk_through_proxy(w: &World, proxy: &Tinyproxy) {
    let sdk = |prompt: &str| -> Value {
        let out = w.sdk_env(
            "openai-error",
            "https://api.openai.com/v1",
            prompt,
            &[("HTTPS_PROXY", &proxy.url())],
            &["sk-test"],
        );
        assert_success(&format!("SDK via the proxy\n{}", w.agent.logs()), &out);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let r = sdk(&format!("deploy with {SECRET}"));
    assert_eq!(r["error_class"], "PermissionDeniedError", "{r}");
    assert_eq!(r["status"], 403, "{r}");
    let out = w.sdk_env(
        "openai-chat",
        "https://api.openai.com/v1",
        "hello",
        &[("HTTPS_PROXY", &proxy.url())],
        &["sk-test"],
    );
    assert_success(
        &format!("SDK benign via the proxy\n{}", w.agent.logs()),
        &out,
    );
}

/// Plain HTTP to the provider through the proxy: refused by Leash.
fn plain_http_through_proxy(w: &World, proxy: &Tinyproxy) {
    let out = run(&mut w.cgroup.command(
        &w.hosts_file,
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            &proxy.url(),
            "-d",
            &secret_chat(),
            "http://api.openai.com/v1/chat/completions",
        ],
    ));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    refused_record(w, "plain_http");
}

/// `HTTPS_PROXY`: curl and the official Python SDK through a forward proxy
/// are intercepted (the canary blocked, the call audited with its caller);
/// a CONNECT to another host still works through the real proxy; plain
/// HTTP to a provider through it is refused.
#[test]
fn a_forward_proxy_does_not_take_traffic_around_the_agent() {
    if !require_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hosts = tmp.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.10.1.6 api.openai.com\n127.10.1.7 www.example.test\n",
    )
    .unwrap();
    let proxy = Tinyproxy::start(&hosts);
    let w = World::new(
        "esc-proxy",
        &[
            Host("api.openai.com", "127.10.1.6", true),
            Host("www.example.test", "127.10.1.7", false),
        ],
        &format!(
            "  forward_proxies: [\"127.0.0.1:{}\"]\n{BLOCK_SECRETS}",
            proxy.port
        ),
    );
    let ca = w.agent.ca_pem();
    let via_proxy = |cacert: &Path, url: &str, body: &str| -> Output {
        run(&mut w.cgroup.command(
            &w.hosts_file,
            "env",
            &[
                &format!("HTTPS_PROXY={}", proxy.url()),
                "curl",
                "-sS",
                "--max-time",
                "15",
                "--cacert",
                cacert.to_str().unwrap(),
                "-H",
                "content-type: application/json",
                "-d",
                body,
                url,
            ],
        ))
    };
    let url = "https://api.openai.com/v1/chat/completions";
    // Control: a benign call through the proxy is served (and intercepted).
    let out = via_proxy(&ca, url, CHAT);
    assert_success(
        &format!("benign call via the proxy\n{}", w.agent.logs()),
        &out,
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], text_of(5), "{v}");
    // The attack: the canary through the proxy.
    let out = via_proxy(&ca, url, &secret_chat());
    assert_success("secret via the proxy", &out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "leash_policy_blocked", "{v}");
    sdk_through_proxy(&w, &proxy);
    assert!(!saw_secret(&w.mocks[0]), "the canary reached the provider");
    assert_eq!(w.mocks[0].requests().len(), 2, "the two benign calls");

    // Another host through the same proxy: relayed, its own certificate.
    let out = via_proxy(
        &w.public_ca,
        "https://www.example.test/v1/chat/completions",
        CHAT,
    );
    assert_success(
        &format!("other host via the proxy\n{}", w.agent.logs()),
        &out,
    );
    assert_eq!(w.mocks[1].requests().len(), 1);
    plain_http_through_proxy(&w, &proxy);

    let records = w.agent.audit_records();
    let calls: Vec<&Value> = records.iter().filter(|r| r["event"].is_null()).collect();
    assert_eq!(calls.len(), 4, "{records:#?}");
    assert!(calls.iter().all(|r| r["mode"] == "transparent"));
    assert!(
        calls[0]["caller"]["exe"]
            .as_str()
            .unwrap()
            .ends_with("curl")
    );
    assert!(
        calls[2]["caller"]["exe"]
            .as_str()
            .unwrap()
            .contains("python")
    );
    record(
        "forward_proxy",
        "HTTPS_PROXY to a forward proxy (curl, the official Python SDK), and plain HTTP through it",
        "intercepted: the canary blocked for curl and the SDK, plain HTTP refused; 0 reached the provider",
        "benign calls served through the proxy; a CONNECT to another host relayed",
    );
}

/// The attack of issue 15: a local user binds the client port an
/// intercepted root process just used and connects straight to the proxy
/// port. Refused: a kernel record is used once and never by someone else.
#[test]
fn a_reused_client_port_does_not_inherit_a_caller() {
    if !require_root() {
        return;
    }
    let w = World::new(
        "esc-port",
        &[Host("api.openai.com", "127.10.1.8", true)],
        BLOCK_SECRETS,
    );
    let ca = w.agent.ca_pem();
    let shared_ca = std::env::temp_dir().join(format!("leash-esc-ca-{}.pem", std::process::id()));
    std::fs::copy(&ca, &shared_ca).unwrap();
    let port = free_port().to_string();
    // Root, in the cgroup, from 127.0.0.2:<port>.
    let out = w.curl(
        &ca,
        "https://api.openai.com/v1/chat/completions",
        // The server closes first (so the client's port is free again).
        &[
            "--http1.1",
            "-H",
            "connection: close",
            "--interface",
            "127.0.0.2",
            "--local-port",
            &port,
            "-d",
            CHAT,
        ],
    );
    assert_success("root's call", &out);
    w.agent.wait_records(1);
    // nobody, outside the cgroup, from the same address and port, straight
    // to the proxy port.
    let proxy = format!("127.0.0.1:{}", w.proxy_port);
    let src = format!("127.0.0.2:{port}");
    let nobody = || {
        let out = run(Command::new("setpriv").args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            escape_client(),
            "tls",
            &proxy,
            "api.openai.com",
            shared_ca.to_str().unwrap(),
            "1",
            &src,
            CHAT,
        ]));
        assert_success("nobody's call", &out);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // Root's socket may take a moment to leave the port (its last FIN):
    // nobody binds once it is free.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut line = nobody();
    while line.starts_with("bind failed") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        line = nobody();
    }
    assert!(
        !line.starts_with("status"),
        "served without a kernel record: {line}"
    );
    eprintln!("nobody: {line}");
    let rec = refused_record(&w, "no_record");
    assert_eq!(rec["caller"]["addr"], src.as_str(), "{rec}");
    assert_eq!(
        w.mocks[0].requests().len(),
        1,
        "only root's call reached the provider"
    );
    // Control: nobody inside the cgroup, the normal way, is served as
    // nobody.
    let out = w.chat_as_nobody(&[]);
    let _ = std::fs::remove_file(&shared_ca);
    assert_success("nobody's own call", &out);
    let records = wait_record(&w, "for nobody's call", |r| r["caller"]["uid"] == 65534);
    let calls: Vec<&Value> = records.iter().filter(|r| r["event"].is_null()).collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["caller"]["uid"], 0);
    assert_eq!(calls[1]["caller"]["uid"], 65534);
    record(
        "reused_port",
        "another user binds a client port an intercepted process just used and connects to the proxy port",
        "refused (no kernel record) and audited; never served as the earlier caller",
        "the same user through the cgroup is served under its own uid",
    );
}

/// Two fake providers (api.openai.com, api.anthropic.com) whose addresses
/// the agent learns only from DNS answers (`resolve: false`), a fake DNS
/// server that gives them, and an agent on a cgroup of its own.
struct DnsWorld {
    openai: MockProvider,
    anthropic: MockProvider,
    _dns: FakeDns,
    public_ca: std::path::PathBuf,
    hosts: std::path::PathBuf,
    resolv: std::path::PathBuf,
    // Fields drop in this order: the agent (which runs in the cgroup) must
    // be gone before the cgroup is removed, or the removal fails and the
    // cgroup is left behind.
    agent: leash_tests::harness::Agent,
    cgroup: leash_tests::harness::Cgroup,
    tmp: tempfile::TempDir,
}

impl DnsWorld {
    /// `tag` names the cgroup; `n` picks the addresses (127.10.1.n and
    /// n+1, DNS on 127.0.0.(146+n)); `intercept` is extra `intercept:` lines.
    fn new(tag: &str, n: u8, intercept: &str) -> Self {
        let ca = TestCa::new("fake public CA");
        let tmp = tempfile::tempdir().unwrap();
        let public_ca = tmp.path().join("public-ca.pem");
        ca.write_cert(&public_ca);
        let (ip_openai, ip_anthropic) = (format!("127.10.1.{n}"), format!("127.10.1.{}", n + 1));
        let openai = MockProvider::start_tls(
            format!("{ip_openai}:443").parse().unwrap(),
            &ca.identity(&["api.openai.com"]),
        );
        let anthropic = MockProvider::start_tls(
            format!("{ip_anthropic}:443").parse().unwrap(),
            &ca.identity(&["api.anthropic.com"]),
        );
        let dns_ip = format!("127.0.0.{}", 146 + u16::from(n));
        let dns = FakeDns::start(
            format!("{dns_ip}:53").parse().unwrap(),
            &[
                ("api.openai.com", ip_openai.parse().unwrap()),
                ("api.anthropic.com", ip_anthropic.parse().unwrap()),
            ],
        );
        let hosts = tmp.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let resolv = tmp.path().join("resolv.conf");
        std::fs::write(
            &resolv,
            format!("nameserver {dns_ip}\noptions timeout:2 attempts:1\n"),
        )
        .unwrap();
        let cgroup = leash_tests::harness::Cgroup::new(tag);
        // Only DNS answers make these addresses targets.
        let config = format!(
            "upstream_tls: {{ extra_roots: [\"{}\"] }}\nintercept:\n  cgroup: \"{}\"\n  resolve: false\n  proxy_port: {}\n{intercept}  hosts:\n    - {{ name: api.openai.com }}\n    - {{ name: api.anthropic.com }}\n{BLOCK_SECRETS}",
            public_ca.display(),
            cgroup.path.display(),
            free_port()
        );
        let agent_dir = tempfile::tempdir().unwrap();
        let agent = leash_tests::harness::Agent::start_in(agent_dir, &config, Some(&cgroup));
        Self {
            openai,
            anthropic,
            _dns: dns,
            public_ca,
            hosts,
            resolv,
            cgroup,
            agent,
            tmp,
        }
    }

    /// curl in the cgroup, with the canary, to `url`; `extra` curl options.
    /// It trusts both the providers' CA and the organisation's (curl takes
    /// one `--cacert`: a bundle of both), so a call that goes direct works.
    fn call(&self, url: &str, extra: &[&str]) -> Output {
        let bundle = self.tmp.path().join("bundle.pem");
        let mut pem = std::fs::read(&self.public_ca).unwrap();
        pem.extend(std::fs::read(self.agent.ca_pem()).unwrap());
        std::fs::write(&bundle, pem).unwrap();
        let mut args = vec![
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            bundle.to_str().unwrap(),
        ];
        let body = secret_chat();
        args.extend(["-H", "content-type: application/json", "-d", &body]);
        args.extend(extra);
        args.push(url);
        run(&mut self.cgroup.command_with(
            &[
                (&self.hosts, "/etc/hosts"),
                (&self.resolv, "/etc/resolv.conf"),
            ],
            "curl",
            &args,
        ))
    }

    fn canary_reached_a_provider(&self) -> bool {
        saw_secret(&self.openai) || saw_secret(&self.anthropic)
    }
}

impl Drop for DnsWorld {
    /// Releases hooks left pinned (fail closed), even when a test failed.
    fn drop(&mut self) {
        let _ = Command::new(leash_tests::harness::leash_bin())
            .args(["intercept", "release", "--cgroup"])
            .arg(&self.cgroup.path)
            .output();
    }
}

/// 20,000 forged DNS answers (more than the observed-address map holds)
/// for a watched name: configured addresses stay intercepted, and an
/// address learned from a real answer afterwards is intercepted too.
#[test]
fn forged_dns_answers_cannot_crowd_out_provider_addresses() {
    if !require_root() {
        return;
    }
    let w = DnsWorld::new("esc-dns", 9, "");
    // Control: before the flood, a DNS-learned address is intercepted.
    let out = w.call("https://api.openai.com/v1/chat/completions", &[]);
    assert_success("before the flood", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("leash_policy_blocked"));
    // The flood, from a forged server on port 53, to a socket in the cgroup.
    let out = run(&mut w.cgroup.command(
        &w.hosts,
        escape_client(),
        &["dns-flood", "127.0.0.156:53", "20000", "api.openai.com"],
    ));
    assert_success("dns flood", &out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "received 20000 of 20000"
    );
    // After it: a newly learned provider address is still intercepted.
    let out = w.call("https://api.anthropic.com/v1/messages", &[]);
    assert_success(&format!("after the flood\n{}", w.agent.logs()), &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("block-secrets"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !w.canary_reached_a_provider(),
        "the canary reached a provider"
    );
    assert_eq!(w.agent.wait_records(2).len(), 2);
    record(
        "dns_flood",
        "20,000 forged DNS answers for a watched name, then a provider address learned from a real answer",
        "intercepted: the canary blocked after the flood",
        "a DNS-learned address before the flood is intercepted",
    );
}

/// Fail closed: what the old hooks knew and counted survives `kill -9` and
/// the take-over. An address learned from DNS before the crash is still a
/// target for the new agent (an app that cached it connects without asking
/// DNS again), and a refusal the hooks made while no agent ran is reported
/// by the new one.
#[test]
fn a_take_over_keeps_what_the_old_hooks_learned_and_counted() {
    if !require_root() {
        return;
    }
    let mut w = DnsWorld::new("esc-take", 14, "  failure_mode: closed\n");
    let url = "https://api.openai.com/v1/chat/completions";
    // Connects to the learned address without asking DNS (a cached answer).
    let cached = ["--resolve", "api.openai.com:443:127.10.1.14"];
    // Control: the address is learned from DNS and intercepted.
    let out = w.call(url, &[]);
    assert_success("before the crash", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("leash_policy_blocked"));
    w.agent.kill9();
    // While no agent runs, QUIC to the learned address is refused and counted.
    let out = run(&mut w
        .cgroup
        .command(&w.hosts, escape_client(), &["udp", "127.10.1.14:443"]));
    assert_success("udp while no agent runs", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("connect: refused"),
        "{out:?}"
    );
    w.agent.restart();
    // The attack: the cached address, after the take-over, with no new DNS
    // answer to teach it again.
    let out = w.call(url, &cached);
    assert_success(&format!("after the take-over\n{}", w.agent.logs()), &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("leash_policy_blocked"),
        "not intercepted after the take-over: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !w.canary_reached_a_provider(),
        "the canary reached the provider"
    );
    assert!(
        w.agent
            .logs()
            .contains("took over from the hooks a previous agent left pinned"),
        "{}",
        w.agent.logs()
    );
    // The refusal counted while no agent ran is reported by the new one.
    let records = wait_record_of(&w.agent, "refused for quic", |r| {
        r["event"] == "refused" && r["refusal"] == "quic"
    });
    let rec = records.iter().find(|r| r["event"] == "refused").unwrap();
    assert!(
        rec["caller"]["cgroup"]
            .as_str()
            .unwrap()
            .contains("esc-take"),
        "{rec}"
    );
    assert!(
        w.agent
            .metrics()
            .contains("leash_refused_connections_total{reason=\"quic\"} 2"),
        "{}",
        w.agent.metrics()
    );
    // Release the pinned hooks and their maps (they outlive the agent).
    assert!(w.agent.stop().success());
    let pins = leash_agent::intercept::pin::dir_for(
        &leash_agent::intercept::pin::bpffs().unwrap(),
        &w.cgroup.path,
    )
    .unwrap();
    let out = run(Command::new(leash_tests::harness::leash_bin())
        .args(["intercept", "release", "--cgroup"])
        .arg(&w.cgroup.path));
    assert_success("leash intercept release", &out);
    let maps_left: Vec<_> = std::fs::read_dir(pins.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(&format!(
                "{}-maps-",
                pins.file_name().unwrap().to_string_lossy()
            ))
        })
        .collect();
    assert!(maps_left.is_empty(), "pinned maps left: {maps_left:?}");
    record(
        "take_over_records",
        "fail closed, kill -9: an address learned from DNS before the crash, used from a cache after the new agent took over; QUIC refused while no agent ran",
        "intercepted (the canary blocked) and the refusal reported by the new agent: the old hooks' maps are shared",
        "the same address before the crash is intercepted",
    );
}

/// A network namespace with a veth pair into the host, removed on drop.
struct NetNs {
    name: String,
    host_ip: String,
}

impl NetNs {
    fn new(tag: &str, subnet: u8) -> Self {
        let name = format!("leash-{tag}-{}", std::process::id());
        let veth_host = format!("lh{subnet}x{}", std::process::id() % 10_000);
        let veth_peer = format!("lc{subnet}x{}", std::process::id() % 10_000);
        let gateway = format!("10.231.{subnet}.1");
        let inside = format!("10.231.{subnet}.2");
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        for args in [
            vec!["netns", "add", &name],
            vec![
                "link", "add", &veth_host, "type", "veth", "peer", "name", &veth_peer,
            ],
            vec!["link", "set", &veth_peer, "netns", &name],
            vec!["addr", "add", &format!("{gateway}/30"), "dev", &veth_host],
            vec!["link", "set", &veth_host, "up"],
            vec![
                "-n",
                &name,
                "addr",
                "add",
                &format!("{inside}/30"),
                "dev",
                &veth_peer,
            ],
            vec!["-n", &name, "link", "set", &veth_peer, "up"],
            vec!["-n", &name, "link", "set", "lo", "up"],
            vec!["-n", &name, "route", "add", "default", "via", &gateway],
        ] {
            let out = run(Command::new("ip").args(&args));
            assert_success(&format!("ip {args:?}"), &out);
        }
        Self {
            name,
            host_ip: gateway,
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// curl in the namespace `ns` and the world's cgroup.
fn curl_in_netns(w: &World, ns: &NetNs, body: &str) -> Output {
    let ca = w.agent.ca_pem();
    run(&mut w.cgroup.command(
        &w.hosts_file,
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            "content-type: application/json",
            "-d",
            body,
            "https://api.openai.com/v1/chat/completions",
        ],
    ))
}

/// A process in the cgroup but in its own network namespace (a container)
/// is governed through `intercept.namespace_listen`.
#[test]
fn a_process_in_its_own_network_namespace_is_governed() {
    if !require_root() {
        return;
    }
    let ns = NetNs::new("gov", 11);
    let w = World::new(
        "esc-netns",
        &[Host("api.openai.com", "127.10.1.11", true)],
        &format!("  namespace_listen: \"{}\"\n{BLOCK_SECRETS}", ns.host_ip),
    );
    // Control: a benign call from the namespace is served through Leash.
    let out = curl_in_netns(&w, &ns, CHAT);
    assert_success(
        &format!("benign call from the namespace\n{}", w.agent.logs()),
        &out,
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], text_of(5), "{v}");
    let out = curl_in_netns(&w, &ns, &secret_chat());
    assert_success("secret from the namespace", &out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "leash_policy_blocked", "{v}");
    assert!(!saw_secret(&w.mocks[0]));
    let records = w.agent.wait_records(2);
    assert!(records.iter().all(|r| {
        r["mode"] == "transparent"
            && r["caller"]["exe"].as_str().unwrap().ends_with("curl")
            && r["caller"]["addr"]
                .as_str()
                .unwrap()
                .starts_with("10.231.11.2:")
    }));
    record(
        "netns_governed",
        "a process in the cgroup in its own network namespace (veth into the host)",
        "governed through intercept.namespace_listen: the canary blocked, calls audited",
        "a benign call from the namespace is served",
    );
}

/// Without `namespace_listen`, the same process is refused in the kernel
/// and the refusal is reported for its cgroup — never silently broken.
#[test]
fn without_a_namespace_address_a_container_is_refused_and_reported() {
    if !require_root() {
        return;
    }
    let ns = NetNs::new("ref", 12);
    let w = World::new(
        "esc-netns-ref",
        &[Host("api.openai.com", "127.10.1.12", true)],
        BLOCK_SECRETS,
    );
    let out = curl_in_netns(&w, &ns, CHAT);
    assert!(
        !out.status.success(),
        "served without an address for namespaces"
    );
    let rec = refused_record(&w, "other_namespace");
    assert!(
        rec["caller"]["cgroup"]
            .as_str()
            .unwrap()
            .contains("esc-netns-ref"),
        "{rec}"
    );
    assert!(w.mocks[0].requests().is_empty());
    assert!(
        w.agent
            .metrics()
            .contains("leash_refused_connections_total{reason=\"other_namespace\"}")
    );
    let (status, interception) = w.agent.api("GET", "/api/interception", b"");
    assert_eq!(status, 200);
    assert!(
        interception.to_string().contains("other_namespace"),
        "{interception}"
    );
    // Control: the same call from the host's namespace is served.
    let out = w.chat(&w.agent.ca_pem(), "sk-test");
    assert_success("control from the host namespace", &out);
    record(
        "netns_refused",
        "the same without intercept.namespace_listen",
        "refused in the kernel (EPERM), reported per cgroup (metric, audit, console)",
        "the same call from the host's namespace is served",
    );
}

/// Fail closed, `kill -9`, then a process that gets the dead agent's pid:
/// intercepted like any other (refused while no agent runs), not exempt.
#[test]
fn after_kill_9_a_process_with_the_agents_pid_is_not_exempt() {
    if !require_root() {
        return;
    }
    let mut w = World::new(
        "esc-pid",
        &[Host("api.openai.com", "127.10.1.13", true)],
        &format!("  failure_mode: closed\n{BLOCK_SECRETS}"),
    );
    // Control: while the agent runs, the call is intercepted.
    let out = w.chat(&w.agent.ca_pem(), "sk-test");
    assert_success("intercepted call", &out);
    let old_pid = w.agent.pid();
    w.agent.kill9();
    // A process with the old pid: set the kernel's last pid, then fork.
    let mut tries = 0;
    let out = loop {
        tries += 1;
        assert!(tries < 200, "could not get pid {old_pid} again");
        std::fs::write("/proc/sys/kernel/ns_last_pid", (old_pid - 1).to_string()).unwrap();
        let mut cmd = w.cgroup.command(
            &w.hosts_file,
            "curl",
            &[
                "-sS",
                "--max-time",
                "5",
                "--cacert",
                w.public_ca.to_str().unwrap(),
                "-d",
                &secret_chat(),
                "https://api.openai.com/v1/chat/completions",
            ],
        );
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        if pid == old_pid {
            break out;
        }
    };
    assert!(
        !out.status.success(),
        "the process with the dead agent's pid reached the provider: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!saw_secret(&w.mocks[0]), "the canary reached the provider");
    // Release the pinned hooks (they outlive the agent by design).
    let out = run(Command::new(leash_tests::harness::leash_bin())
        .args(["intercept", "release", "--cgroup"])
        .arg(&w.cgroup.path));
    assert_success("leash intercept release", &out);
    record(
        "pid_reuse",
        "fail closed, kill -9, then a process with the dead agent's pid",
        "not exempt: refused while no agent runs",
        "the same call while the agent runs is intercepted",
    );
}
