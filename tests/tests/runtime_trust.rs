//! Zero app config for every runtime (root): after `leash ca install`, each
//! client, started from a clean login shell (`env -i … bash -lc`) inside
//! the watched cgroup and calling its provider's default URL, is
//! intercepted and audited under its own executable — curl, Python
//! `requests` and the official `openai` and `anthropic` SDKs, the official Node.js `openai`
//! and `@anthropic-ai/sdk` packages, Java's `HttpClient`, a Go `net/http`
//! client (crypto/x509) — with no variable
//! set by the test. After `leash ca uninstall` every file it changed is
//! byte for byte what it was, and a fresh Node client no longer trusts the
//! organisation CA.
//!
//! Everything runs in a private mount namespace over copies of `/etc` and
//! `/usr/local/share/ca-certificates`: the machine's real stores are never
//! touched.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{collections::BTreeMap, path::PathBuf};

use leash_tests::{
    harness::{assert_success, leash_bin, python, python_dir, require_root, run},
    world::{Host, World},
};

/// Where `cargo xtask test` installed the pinned Node.js SDKs.
fn node_sdk() -> Option<PathBuf> {
    std::env::var_os("LEASH_TEST_NODE_SDK").map(PathBuf::from)
}

/// The Node client beside the SDKs it loads (written whole, then renamed:
/// tests run side by side).
fn place_node_client(sdk: &std::path::Path) {
    let tmp = sdk.join(format!(
        "sdk_check.cjs.{}",
        std::thread::current()
            .name()
            .unwrap_or("t")
            .replace(':', "_")
    ));
    std::fs::copy(python_dir().join("../node/sdk_check.cjs"), &tmp).unwrap();
    std::fs::rename(&tmp, sdk.join("sdk_check.cjs")).unwrap();
}

/// Every client exited 0 after `leash ca install` (`rc`: client → exit
/// status); whether the Python 3.13 client ran.
fn check_clients_succeeded(rc: &BTreeMap<String, String>, t: &std::path::Path, w: &World) -> bool {
    let read = |name: &str| std::fs::read_to_string(t.join(name)).unwrap_or_default();
    let install = read("install.out");
    for client in [
        "curl",
        "python-requests",
        "python-openai",
        "python-anthropic",
        "node-openai",
        "node-anthropic",
        "java",
        "go",
    ] {
        assert_eq!(
            rc.get(client).map(String::as_str),
            Some("0"),
            "{client} failed after `leash ca install`:\n{}\n--- install ---\n{install}\n--- agent ---\n{}",
            read(&format!("{client}.out")),
            w.agent.logs()
        );
    }
    // Python 3.13's strict urllib, where this host has the interpreter.
    let python313 = rc.contains_key("python313-urllib");
    eprintln!("python 3.13 urllib client: {python313}");
    if python313 {
        assert_eq!(
            rc["python313-urllib"],
            "0",
            "{}",
            read("python313-urllib.out")
        );
    }
    python313
}

/// A Python 3.13 interpreter on this host, if any (a real executable, not
/// a version manager's shim that a clean login shell cannot resolve).
fn python313() -> Option<PathBuf> {
    let mut candidates = vec![
        PathBuf::from("/usr/bin/python3.13"),
        PathBuf::from("/usr/local/bin/python3.13"),
    ];
    let pyenv = PathBuf::from(std::env::var_os("HOME")?).join(".pyenv/versions");
    for v in std::fs::read_dir(pyenv).into_iter().flatten().flatten() {
        if v.file_name().to_string_lossy().starts_with("3.13") {
            candidates.push(v.path().join("bin/python3.13"));
        }
    }
    candidates
        .into_iter()
        .find(|p| std::fs::read(p).is_ok_and(|bytes| bytes.starts_with(b"\x7fELF")))
}

/// `tests/go/client.go` built (standard library only, so offline) into
/// `dir`: Go's own verifier (crypto/x509 against the system roots).
fn go_client(dir: &std::path::Path) -> PathBuf {
    let exe = dir.join("go-client");
    let out = run(std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&exe)
        .arg(python_dir().join("../go/client.go"))
        .env("GOCACHE", dir.join("gocache"))
        .env("GO111MODULE", "off"));
    assert_success("go build (cargo xtask test installs golang-go)", &out);
    exe
}

const SCRIPT: &str = r#"
set -u
T=$1; LEASH=$2; CA=$3; HOSTS=$4; CG=$5; NODE=$6; PY=$7; PYCHECK=$8; JAVA=$9; GO=${10}; PY313=${11}
cp -a /etc "$T/etc" && mount --bind "$T/etc" /etc || exit 97
cp -a /usr/local/share/ca-certificates "$T/local" \
  && mount --bind "$T/local" /usr/local/share/ca-certificates || exit 97
cp "$HOSTS" /etc/hosts
# Debian's Java hook queues work for dpkg: keep it in the sandbox too.
if [ -d /var/lib/ca-certificates-java ]; then
  cp -a /var/lib/ca-certificates-java "$T/cajava" && mount --bind "$T/cajava" /var/lib/ca-certificates-java
fi
export DPKG_MAINTSCRIPT_PACKAGE=leash-test-sandbox
sums() {
  for f in /etc/environment /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/java/cacerts; do
    [ -e "$f" ] && sha256sum "$f"
  done
  ls -a /etc/profile.d /etc/systemd /usr/local/share/ca-certificates
}
sums > "$T/before.sums"
"$LEASH" ca check --dir "$CA" --json > "$T/check-before.json" 2>"$T/check-before.err"
"$LEASH" ca install --dir "$CA" > "$T/install.out" 2>&1 || exit 98
"$LEASH" ca check --dir "$CA" --json > "$T/check-after.json" 2>"$T/check-after.err"
"$LEASH" ca check --dir "$CA" > "$T/check-after.txt" 2>&1
echo $$ > "$CG/cgroup.procs"
client() {
  name=$1; shift
  env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin bash -lc "$*" > "$T/$name.out" 2>&1
  echo "$name $?" >> "$T/rc"
}
client curl "curl -sS --max-time 15 -H 'content-type: application/json' -H 'authorization: Bearer sk-test' -d '{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}' https://api.openai.com/v1/chat/completions"
client python-requests "$PY $PYCHECK requests"
client python-openai "$PY $PYCHECK openai"
client python-anthropic "$PY $PYCHECK anthropic"
client node-openai "node $NODE/sdk_check.cjs openai"
client node-anthropic "node $NODE/sdk_check.cjs anthropic"
client java "java $JAVA"
client go "$GO"
# Python 3.13's urllib (strict X.509 verification by default), when present.
if [ -n "$PY313" ]; then
  client python313-urllib "$PY313 $(dirname "$PYCHECK")/urllib_check.py"
fi
"$LEASH" ca uninstall --dir "$CA" > "$T/uninstall.out" 2>&1 || exit 99
client node-after-uninstall "node $NODE/sdk_check.cjs openai"
sums > "$T/after.sums"
"#;

/// Each client intercepted and audited under its own executable.
fn check_audited_by_exe(w: &World, python313: bool) {
    // Each intercepted and audited under its own executable.
    let records = w.agent.wait_records(9 + usize::from(python313));
    let exes: Vec<String> = records
        .iter()
        .filter(|r| r["event"].is_null())
        .map(|r| r["caller"]["exe"].as_str().unwrap_or("-").to_owned())
        .collect();
    for (n, want) in [
        (1, "curl"),
        (3 + usize::from(python313), "python"),
        (2, "node"),
        (1, "java"),
        (1, "go-client"),
    ] {
        assert_eq!(
            exes.iter()
                .filter(|e| e.rsplit('/').next().unwrap_or("").starts_with(want))
                .count(),
            n,
            "{want}: {exes:?}"
        );
    }
    assert!(records.iter().all(|r| r["mode"] == "transparent"));
}

/// `leash ca check` says what the clients did.
fn check_doctor_verdicts(t: &std::path::Path) {
    // `leash ca check` says what the clients did: nothing trusted the CA
    // before, everything after.
    let read = |name: &str| std::fs::read_to_string(t.join(name)).unwrap_or_default();
    let verdicts = |name: &str| -> Vec<serde_json::Value> {
        serde_json::from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}: {}", read(name)))
    };
    let before = verdicts("check-before.json");
    let after = verdicts("check-after.json");
    for runtime in ["curl", "requests", "node", "java"] {
        let find = |v: &[serde_json::Value]| {
            v.iter()
                .find(|x| x["runtime"].as_str().unwrap().contains(runtime))
                .map(|x| x["trusted"].clone())
        };
        assert_eq!(
            find(&before),
            Some(serde_json::json!(false)),
            "{runtime} before: {before:#?}"
        );
        assert_eq!(
            find(&after),
            Some(serde_json::json!(true)),
            "{runtime} after: {after:#?}"
        );
    }
    assert!(after.iter().all(|v| v["trusted"] == true), "{after:#?}");
    leash_tests::results::record(
        "ca_check",
        &serde_json::json!({"table": read("check-after.txt"), "runtimes": after.len()}),
    );
}

#[test]
fn every_runtime_is_covered_after_ca_install_and_uninstall_restores_the_machine() {
    if !require_root() {
        return;
    }
    let Some(sdk) = node_sdk() else {
        panic!(
            "LEASH_TEST_NODE_SDK is not set: run the tests with `cargo xtask test`, which installs the Node.js SDKs"
        );
    };
    let w = World::new(
        "trust",
        &[
            Host("api.openai.com", "127.10.2.1", true),
            Host("api.anthropic.com", "127.10.2.2", true),
        ],
        "",
    );
    place_node_client(&sdk);
    let t = tempfile::tempdir().unwrap();
    let java = python_dir().join("../java/Client.java");
    let go = go_client(t.path());
    let out = run(std::process::Command::new("unshare")
        .args(["-m", "bash", "-c", SCRIPT, "bash"])
        .arg(t.path())
        .arg(leash_bin())
        .arg(&w.agent.ca_dir)
        .arg(&w.hosts_file)
        .arg(&w.cgroup.path)
        .arg(&sdk)
        .arg(python())
        .arg(python_dir().join("trust_check.py"))
        .arg(&java)
        .arg(&go)
        .arg(python313().unwrap_or_default()));
    let read = |name: &str| std::fs::read_to_string(t.path().join(name)).unwrap_or_default();
    assert_success(
        &format!(
            "the scenario\ninstall:\n{}\nuninstall:\n{}",
            read("install.out"),
            read("uninstall.out")
        ),
        &out,
    );
    let rc: BTreeMap<String, String> = read("rc")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let install = read("install.out");
    let python313 = check_clients_succeeded(&rc, t.path(), &w);
    check_audited_by_exe(&w, python313);
    // Uninstall: the machine as it was, and Node no longer trusts the CA —
    // refused visibly, named.
    let records = w.agent.audit_records();
    let refused: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["refusal"] == "untrusted_client")
        .collect();
    assert_eq!(refused.len(), 1, "{records:#?}");
    assert!(
        refused[0]["caller"]["exe"]
            .as_str()
            .unwrap()
            .ends_with("node")
    );
    assert_eq!(
        read("before.sums"),
        read("after.sums"),
        "uninstall left changes:\n{}",
        read("uninstall.out")
    );
    assert_ne!(
        rc.get("node-after-uninstall").map(String::as_str),
        Some("0"),
        "Node still trusts the organisation CA after uninstall: {}",
        read("node-after-uninstall.out")
    );
    check_doctor_verdicts(t.path());
    for listed in ["/etc/environment", "/etc/profile.d/leash-ca.sh"] {
        assert!(
            install.contains(listed),
            "install does not list {listed}:\n{install}"
        );
    }
}

/// A Node.js client that trusts the provider's public CA but not the
/// organisation CA, called twice through the agent: what the agent does
/// with it (after each call, the audit and the metric).
fn untrusting_node_twice(on_untrusted: &str, addr: &'static str, top: &str) -> (World, Vec<bool>) {
    let sdk = node_sdk().expect("LEASH_TEST_NODE_SDK (set by cargo xtask test)");
    place_node_client(&sdk);
    let w = World::new(
        &format!("untrusted-{on_untrusted}"),
        &[Host("api.openai.com", addr, true)],
        &format!("  on_untrusted_client: {on_untrusted}\n{top}"),
    );
    let script = sdk.join("sdk_check.cjs");
    let ok: Vec<bool> = (0..2)
        .map(|_| {
            let out = run(&mut w.cgroup.command(
                &w.hosts_file,
                "env",
                &[
                    &format!("NODE_EXTRA_CA_CERTS={}", w.public_ca.display()),
                    "node",
                    script.to_str().unwrap(),
                    "openai",
                ],
            ));
            out.status.success()
        })
        .collect();
    (w, ok)
}

/// The agent's audit records once `done` holds for them (within 10 s).
fn records_until(w: &World, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = w.agent.audit_records();
        if done(&r) {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{r:#?}\n{}",
            w.agent.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Never a silently broken app: an executable that rejects the
/// organisation CA is counted (`leash_untrusted_clients_total{exe}`),
/// audited as refused with its caller, alerted and listed on the console;
/// by default it keeps failing, visibly.
#[test]
fn an_untrusting_client_is_refused_counted_and_named() {
    if !require_root() {
        return;
    }
    let hook = leash_tests::harness::WebhookReceiver::start();
    let (w, ok) = untrusting_node_twice(
        "refuse",
        "127.10.2.3",
        &format!(
            "alerts: {{ webhook: \"{}\", min_interval_secs: 3600 }}\n",
            hook.url
        ),
    );
    assert_eq!(ok, [false, false]);
    // An alert names the executable (rate limiting per key is tested with
    // the alert limits in policy tests).
    let alerts = hook.wait(1);
    let alert: serde_json::Value = serde_json::from_str(&alerts[0]).unwrap();
    assert_eq!(alert["kind"], "untrusted_client", "{alert}");
    assert!(alert["exe"].as_str().unwrap().ends_with("node"), "{alert}");
    let records = records_until(&w, |r| {
        r.iter()
            .filter(|r| r["refusal"] == "untrusted_client")
            .count()
            == 2
    });
    assert!(
        records
            .iter()
            .all(|r| r["caller"]["exe"].as_str().unwrap().ends_with("node")),
        "{records:#?}"
    );
    let metrics = w.agent.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("leash_untrusted_clients_total{exe=\"")
                && l.contains("node\"}")
                && l.ends_with(" 2")),
        "{metrics}"
    );
    let (_, page) = w.agent.api("GET", "/api/interception", b"");
    assert_eq!(page["untrusted_clients"][0]["rejections"], 2, "{page}");
    assert!(w.mocks[0].requests().is_empty());
}

/// `on_untrusted_client: splice`: after the first rejection, the same
/// executable's next connection goes through uninspected — and is audited
/// as bypassed, naming it.
#[test]
fn splice_lets_an_untrusting_client_through_audited_as_bypassed() {
    if !require_root() {
        return;
    }
    let (w, ok) = untrusting_node_twice("splice", "127.10.2.4", "");
    assert_eq!(ok, [false, true], "{}", w.agent.logs());
    let records = records_until(&w, |r| r.iter().any(|r| r["event"] == "bypassed"));
    let bypassed = records.iter().find(|r| r["event"] == "bypassed").unwrap();
    assert_eq!(bypassed["bypass"], "untrusted_client");
    assert!(
        bypassed["caller"]["exe"]
            .as_str()
            .unwrap()
            .ends_with("node")
    );
    assert_eq!(
        w.mocks[0].requests().len(),
        1,
        "the second call went through"
    );
}
