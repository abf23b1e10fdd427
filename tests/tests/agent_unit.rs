//! The agent under its systemd unit's restrictions, read from
//! `leash-agent/dist/leash.service`: only the capabilities of
//! `CapabilityBoundingSet=` (root's others gone), `NoNewPrivileges=`, and
//! with `ProtectSystem=strict` every mount read-only but the state
//! directory and the API file systems. systemd is not PID 1 here, so a
//! wrapper applies the same restrictions (a private mount namespace,
//! `setpriv`). Under them the agent starts, intercepts, and names a caller
//! run by another user; the control: without `CAP_BPF` it cannot start,
//! and says why.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use leash_tests::{
    harness::{leash_bin, require_root},
    world::{Host, World},
};

/// What the unit file sets (the parts the test applies).
struct Unit {
    /// `CapabilityBoundingSet=`, as `setpriv` names them (`bpf`, ...).
    caps: Vec<String>,
    no_new_privileges: bool,
    protect_system_strict: bool,
}

fn unit() -> Unit {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../leash-agent/dist/leash.service");
    let text = std::fs::read_to_string(&path).unwrap();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
    };
    Unit {
        caps: value("CapabilityBoundingSet")
            .expect("CapabilityBoundingSet= in the unit")
            .split_whitespace()
            .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
            .collect(),
        no_new_privileges: value("NoNewPrivileges") == Some("yes"),
        protect_system_strict: value("ProtectSystem") == Some("strict"),
    }
}

/// A `leash` that runs the real one as the unit would: in a private mount
/// namespace where every mount is read-only but `state` (the unit's state
/// directory: here the test's) and /proc, /sys, /dev; with only `caps`
/// in its bounding set (root keeps no other capability) and
/// `no_new_privs`. It checks / is read-only before it starts Leash.
fn wrapper(dir: &Path, state: &Path, unit: &Unit, caps: &[String]) -> std::path::PathBuf {
    let bounding = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let read_only = if unit.protect_system_strict {
        r#"mount --bind "$state" "$state"
  for mp in $(awk '{print $5}' /proc/self/mountinfo); do
    case "$mp" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|"$state") continue;; esac
    mount -o remount,bind,ro "$mp" 2>/dev/null || true
  done
  if touch /etc/.leash-unit-test 2>/dev/null; then echo "/ is writable: ProtectSystem not applied" >&2; exit 97; fi"#
    } else {
        ""
    };
    let nnp = if unit.no_new_privileges {
        "--no-new-privs"
    } else {
        ""
    };
    let script = format!(
        r#"#!/bin/sh
exec unshare -m --propagation private sh -c '
  state="$1"; shift
  {read_only}
  exec setpriv --bounding-set {bounding} --inh-caps -all {nnp} "{leash}" "$@"
' sh "{state}" "$@"
"#,
        read_only = read_only.replace('\'', r#"'"'"'"#),
        leash = leash_bin().display(),
        state = state.display(),
    );
    let path = dir.join("leash-under-unit");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn the_agent_intercepts_under_its_units_restrictions() {
    if !require_root() {
        return;
    }
    let unit = unit();
    assert!(unit.no_new_privileges && unit.protect_system_strict);
    assert!(
        !unit.caps.is_empty()
            && !unit
                .caps
                .iter()
                .any(|c| c == "dac_override" || c == "sys_module"),
        "the unit's capability set is bounded: {:?}",
        unit.caps
    );
    let dir = tempfile::tempdir().unwrap();
    // The agent's own directory (audit, CA, config) is made by the harness
    // under /tmp: it plays the unit's StateDirectory.
    let state = std::env::temp_dir();
    let leash = wrapper(dir.path(), &state, &unit, &unit.caps);
    let leash = leash.display().to_string();
    let w = World::with_env(
        "unit",
        &[Host("api.openai.com", "127.10.23.1", true)],
        "",
        &[(leash_tests::gateway::BINARY, leash.as_str())],
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.agent.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap()
    };
    assert_eq!(field("NoNewPrivs:"), 1, "{status}");
    let bound = field("CapBnd:");
    assert_eq!(
        bound.count_ones() as usize,
        unit.caps.len(),
        "CapBnd {bound:x}"
    );
    assert_eq!(field("CapEff:") & !bound, 0);
    // A caller of another user (nobody), trusting only the organisation CA.
    let out = w.chat_as_nobody(&[
        "-H",
        "authorization: Bearer sk-test",
        "-H",
        "content-type: application/json",
    ]);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && body.contains("chat.completion"),
        "{body}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        w.agent.logs()
    );
    let record = w.agent.wait_records(1)[0].clone();
    assert_eq!(record["mode"], "transparent");
    assert_eq!(record["status"], 200);
    assert!(
        record["caller"]["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("/curl")),
        "{record}"
    );
    assert_eq!(record["caller"]["uid"], 65534, "{record}");
}

/// The control: the same restrictions without `CAP_BPF` — the agent does
/// not start, and says why (so the wrapper does restrict, and the unit's
/// set is not larger than it needs in that respect).
#[test]
fn without_cap_bpf_the_agent_refuses_to_start_and_says_why() {
    if !require_root() {
        return;
    }
    let unit = unit();
    let fewer: Vec<String> = unit.caps.iter().filter(|c| *c != "bpf").cloned().collect();
    assert!(fewer.len() < unit.caps.len(), "the unit holds CAP_BPF");
    let dir = tempfile::tempdir().unwrap();
    let leash = wrapper(dir.path(), &std::env::temp_dir(), &unit, &fewer);
    let cgroup = leash_tests::agent::Cgroup::new("unit-nobpf");
    let config = dir.path().join("leash.yaml");
    std::fs::write(
        &config,
        format!(
            "ca: {{ dir: \"{}\" }}\nintercept:\n  cgroup: \"{}\"\n  resolve: false\n  hosts:\n    - {{ name: api.openai.com, addresses: [\"127.10.23.2\"] }}\n",
            dir.path().join("ca").display(),
            cgroup.path.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(&leash)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--admin-listen", "127.0.0.1:0", "--audit-dir"])
        .arg(dir.path().join("audit"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It ends by itself (the event awaited), or it started: a failure.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the agent started without CAP_BPF:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("eBPF") || said.contains("permitted"),
        "the refusal names its cause: {said}"
    );
}
