//! Zero app config for every runtime (root): after `leash ca install`, each
//! client, started from a clean login shell (`env -i … bash -lc`) inside
//! the watched cgroup and calling its provider's default URL, is
//! intercepted and audited under its own executable — curl, Python
//! `requests` and the official `openai` SDK, the official Node.js `openai`
//! and `@anthropic-ai/sdk` packages, Java's `HttpClient` — with no variable
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

const SCRIPT: &str = r#"
set -u
T=$1; LEASH=$2; CA=$3; HOSTS=$4; CG=$5; NODE=$6; PY=$7; PYCHECK=$8; JAVA=$9
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
"$LEASH" ca install --dir "$CA" > "$T/install.out" 2>&1 || exit 98
echo $$ > "$CG/cgroup.procs"
client() {
  name=$1; shift
  env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin bash -lc "$*" > "$T/$name.out" 2>&1
  echo "$name $?" >> "$T/rc"
}
client curl "curl -sS --max-time 15 -H 'content-type: application/json' -H 'authorization: Bearer sk-test' -d '{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}' https://api.openai.com/v1/chat/completions"
client python-requests "$PY $PYCHECK requests"
client python-openai "$PY $PYCHECK openai"
client node-openai "node $NODE/sdk_check.cjs openai"
client node-anthropic "node $NODE/sdk_check.cjs anthropic"
client java "java $JAVA"
"$LEASH" ca uninstall --dir "$CA" > "$T/uninstall.out" 2>&1 || exit 99
client node-after-uninstall "node $NODE/sdk_check.cjs openai"
sums > "$T/after.sums"
"#;

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
    // The Node client beside the SDKs it loads.
    std::fs::copy(
        python_dir().join("../node/sdk_check.cjs"),
        sdk.join("sdk_check.cjs"),
    )
    .unwrap();
    let t = tempfile::tempdir().unwrap();
    let java = python_dir().join("../java/Client.java");
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
        .arg(&java));
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
    for client in [
        "curl",
        "python-requests",
        "python-openai",
        "node-openai",
        "node-anthropic",
        "java",
    ] {
        assert_eq!(
            rc.get(client).map(String::as_str),
            Some("0"),
            "{client} failed after `leash ca install`:\n{}\n--- install ---\n{install}\n--- agent ---\n{}",
            read(&format!("{client}.out")),
            w.agent.logs()
        );
    }
    // Each intercepted and audited under its own executable.
    let records = w.agent.wait_records(6);
    let exes: Vec<String> = records
        .iter()
        .map(|r| r["caller"]["exe"].as_str().unwrap_or("-").to_owned())
        .collect();
    for (n, want) in [(1, "curl"), (2, "python"), (2, "node"), (1, "java")] {
        assert_eq!(
            exes.iter()
                .filter(|e| e.rsplit('/').next().unwrap_or("").starts_with(want))
                .count(),
            n,
            "{want}: {exes:?}"
        );
    }
    assert!(records.iter().all(|r| r["mode"] == "transparent"));
    // Uninstall: the machine as it was, and Node no longer trusts the CA.
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
    for listed in ["/etc/environment", "/etc/profile.d/leash-ca.sh"] {
        assert!(
            install.contains(listed),
            "install does not list {listed}:\n{install}"
        );
    }
}
