//! Packaging (`cargo xtask dist`, which `cargo xtask test` runs first and
//! names in `LEASH_DIST_BIN` and `LEASH_DIST_DIR`): the static binary
//! needs no shared library and carries the eBPF programs; the OCI image,
//! built `FROM scratch` from the repository's `Containerfile` by podman
//! with nothing downloaded, runs a gateway that serves a request and
//! writes its audit trail into the mounted state volume.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use leash_tests::{
    fleet::wait_until,
    harness::{assert_success, free_port, http_get, http_request, mock_providers_yaml, run},
    mock::MockProvider,
};

fn dist(var: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(
        || panic!("{var} is not set: run the tests with `cargo xtask test` (it runs `cargo xtask dist` first)"),
        PathBuf::from,
    )
}

#[test]
fn the_static_binary_needs_no_shared_library_and_carries_the_ebpf_programs() {
    let bin = dist("LEASH_DIST_BIN");
    let ldd = run(Command::new("ldd").arg(&bin));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd: {said}"
    );
    // Control: ldd does tell a dynamic binary (the debug build) apart.
    let dynamic = run(Command::new("ldd").arg(leash_tests::harness::leash_bin()));
    assert!(String::from_utf8_lossy(&dynamic.stdout).contains("libc.so"));
    let version = run(Command::new(&bin).arg("--version"));
    assert_success("leash --version", &version);
    let bytes = std::fs::read(&bin).unwrap();
    for program in ["leash_connect4", "leash_sockops"] {
        assert!(
            bytes
                .windows(program.len())
                .any(|w| w == program.as_bytes()),
            "the eBPF program {program} is not in the static binary"
        );
    }
}

/// `podman`, with its output.
fn podman(args: &[&str]) -> std::process::Output {
    run(Command::new("podman").args(args))
}

/// Removes the test's container and image at the end.
struct Cleanup(String, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", &self.0]);
        let _ = podman(&["rmi", "-f", &self.1]);
    }
}

#[test]
fn the_image_builds_from_scratch_and_serves_a_gateway_request() {
    let context = dist("LEASH_DIST_DIR");
    let containerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Containerfile");
    let tag = format!("localhost/leash:test-{}", std::process::id());
    let name = format!("leash-test-{}", std::process::id());
    let _cleanup = Cleanup(name.clone(), tag.clone());
    let build = run(Command::new("podman")
        .args(["build", "--quiet", "-f"])
        .arg(&containerfile)
        .args(["-t", &tag])
        .arg(&context));
    assert_success("podman build", &build);
    // FROM scratch: the image is its three COPY layers (the binary, its
    // configs, the state directory) and nothing under them.
    let layers = podman(&[
        "image",
        "inspect",
        "--format",
        "{{len .RootFS.Layers}}",
        &tag,
    ]);
    assert_success("podman image inspect", &layers);
    assert_eq!(String::from_utf8_lossy(&layers.stdout).trim(), "3");

    let mock = MockProvider::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    // The image runs as nobody (65534): its state volume must be theirs.
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (port, admin) = (free_port(), free_port());
    std::fs::write(
        config.join("gateway.yaml"),
        format!(
            "gateway: {{ listen: \"127.0.0.1:{port}\" }}\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\naudit: {{ dir: /var/lib/leash/audit }}\n{}",
            mock_providers_yaml(&mock)
        ),
    )
    .unwrap();
    for f in [config.join("gateway.yaml"), config.clone()] {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // runc: crun refuses this machine's hybrid cgroup layout. The limits:
    // the sandboxes this runs in refuse raising them past their own, which
    // podman's defaults would.
    let nofile = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        .unwrap();
    let nofile = format!("nofile={nofile}:{nofile}");
    let started = podman(&[
        "run",
        "-d",
        "--runtime",
        "runc",
        "--ulimit",
        &nofile,
        "--ulimit",
        "nproc=16384:16384",
        "--name",
        &name,
        "--network",
        "host",
        "-v",
        &format!("{}:/etc/leash:ro", config.display()),
        "-v",
        &format!("{}:/var/lib/leash", state.display()),
        &tag,
    ]);
    assert_success("podman run", &started);
    let logs = || String::from_utf8_lossy(&podman(&["logs", &name]).stderr).into_owned();
    let admin_addr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_until(
        "the gateway in the container",
        Duration::from_secs(30),
        logs,
        || http_get(admin_addr, "/readyz").is_some_and(|(s, _)| s == 200),
    );
    let answer = http_request(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "POST",
        "/v1/openai/chat/completions",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer sk-test"),
        ],
        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .expect("an answer");
    assert_eq!(answer.0, 200, "{}", logs());
    assert_eq!(mock.requests().len(), 1);
    let records = leash_tests::gateway::wait_for_records(&state.join("audit"), 1, logs);
    assert_eq!(records[0]["status"], 200);
    assert_eq!(records[0]["mode"], "gateway");
}

/// The Kubernetes manifests (`leash-agent/dist/k8s`): every config they
/// carry passes `leash config check` (the collector's: its own parse), the
/// probes are `/healthz` and `/readyz`, and the agent's `DaemonSet` adds
/// exactly the capabilities of the systemd unit, dropping the rest.
#[test]
fn the_kubernetes_manifests_hold_configs_leash_accepts() {
    use serde::Deserialize as _;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../leash-agent/dist/k8s");
    let unit = std::fs::read_to_string(dir.join("../leash.service")).unwrap();
    let mut unit_caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect();
    unit_caps.sort();
    let tmp = tempfile::tempdir().unwrap();
    let (mut configs, mut probes, mut daemonsets) = (0, 0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = serde_json::Value::deserialize(doc).unwrap();
            let kind = v["kind"].as_str().unwrap_or_default();
            if kind == "ConfigMap" {
                for (name, body) in v["data"].as_object().unwrap() {
                    let file = tmp.path().join(name);
                    std::fs::write(&file, body.as_str().unwrap()).unwrap();
                    if name == "collector.yaml" {
                        let parsed: serde_json::Value =
                            serde_norway::from_str(body.as_str().unwrap()).unwrap();
                        assert!(parsed["collector"]["postgres"]["url"].is_string());
                    } else {
                        let out = run(Command::new(leash_tests::harness::leash_bin())
                            .args(["config", "check"])
                            .arg(&file));
                        assert_success(&format!("{}: {name}", path.display()), &out);
                    }
                    configs += 1;
                }
            }
            let spec = &v["spec"]["template"]["spec"];
            for c in spec["containers"].as_array().into_iter().flatten() {
                for (probe, want) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]
                {
                    if let Some(p) = c[probe]["httpGet"]["path"].as_str() {
                        assert_eq!(p, want, "{}", path.display());
                        probes += 1;
                    }
                }
                if kind == "DaemonSet" {
                    daemonsets += 1;
                    let caps = &c["securityContext"]["capabilities"];
                    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
                    let mut added: Vec<String> = caps["add"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c.as_str().unwrap().to_owned())
                        .collect();
                    added.sort();
                    assert_eq!(
                        added, unit_caps,
                        "the DaemonSet's capabilities are the unit's"
                    );
                }
            }
        }
    }
    assert_eq!((configs, daemonsets), (3, 1));
    assert!(probes >= 5, "{probes}");
}
