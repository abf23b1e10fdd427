//! The organisation CA commands: `leash ca init` and, as root in a private
//! mount namespace (so the machine's real trust store is never touched),
//! `leash ca install` / `leash ca uninstall`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::os::unix::fs::PermissionsExt as _;

use leash_tests::harness::{assert_success, leash_bin, leash_command, require_root, run};

#[test]
fn ca_init_writes_a_private_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let out = run(leash_command()
        .args([
            "ca",
            "init",
            "--name",
            "Acme Test CA",
            "--org",
            "Acme",
            "--days",
            "30",
            "--dir",
        ])
        .arg(&ca));
    assert_success("ca init", &out);
    let mode = std::fs::metadata(ca.join("ca.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let pem = std::fs::read_to_string(ca.join("ca.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let text = run(std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-enddate", "-in"])
        .arg(ca.join("ca.pem")));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Acme Test CA"), "{text}");
    let again = run(leash_command().args(["ca", "init", "--dir"]).arg(&ca));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(ca.join("ca.pem")).unwrap(),
        pem,
        "the CA was replaced"
    );
    let forced = run(leash_command()
        .args(["ca", "init", "--force", "--dir"])
        .arg(&ca));
    assert_success("ca init --force", &forced);
    assert_ne!(std::fs::read_to_string(ca.join("ca.pem")).unwrap(), pem);
    // The key never shows in the command's output.
    let key = std::fs::read_to_string(ca.join("ca.key")).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    assert!(!String::from_utf8_lossy(&forced.stdout).contains(key_line));
    assert!(!String::from_utf8_lossy(&forced.stderr).contains(key_line));
}

#[test]
fn ca_install_and_uninstall_update_the_system_store() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path());
    let pem = std::fs::read_to_string(ca.join("ca.pem")).unwrap();
    let body_line = pem.lines().nth(2).unwrap().to_owned();
    let out = install_then_uninstall(dir.path(), &ca);
    assert_success("ca install/uninstall in a private mount namespace", &out);
    let installed = std::fs::read_to_string(dir.path().join("after-install.crt")).unwrap();
    assert!(
        installed.contains(&body_line),
        "the org CA is not in the system bundle after install"
    );
    let removed = std::fs::read_to_string(dir.path().join("after-uninstall.crt")).unwrap();
    assert!(
        !removed.contains(&body_line),
        "the org CA is still in the bundle after uninstall"
    );
    let advice = std::fs::read_to_string(dir.path().join("install.out")).unwrap();
    for needle in [
        "/etc/environment",
        "/etc/profile.d/leash-ca.sh",
        "Already running processes",
    ] {
        assert!(
            advice.contains(needle),
            "install output lacks {needle}:\n{advice}"
        );
    }
}

/// `leash ca rotate`: a new CA, the old key destroyed, the old certificate
/// kept trusted (installed beside the new one) for the grace period;
/// uninstall removes both.
#[test]
fn ca_rotate_keeps_the_old_ca_trusted_and_install_puts_both_in_the_store() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path());
    let old_pem = std::fs::read_to_string(ca.join("ca.pem")).unwrap();
    let old_key = std::fs::read_to_string(ca.join("ca.key")).unwrap();
    let out = run(leash_command()
        .args(["ca", "rotate", "--grace-days", "7", "--dir"])
        .arg(&ca));
    assert_success("ca rotate", &out);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("stays trusted until"), "{said}");
    assert!(!said.contains(old_key.lines().nth(1).unwrap()));
    let new_pem = std::fs::read_to_string(ca.join("ca.pem")).unwrap();
    assert_ne!(new_pem, old_pem);
    assert_ne!(std::fs::read_to_string(ca.join("ca.key")).unwrap(), old_key);
    let bundle = std::fs::read_to_string(ca.join("trust.pem")).unwrap();
    assert!(bundle.contains(&new_pem) && bundle.contains(&old_pem));
    // No key of the old CA is kept anywhere in the directory.
    let old_key_line = old_key.lines().nth(1).unwrap();
    for entry in walk(&ca) {
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        assert!(
            !text.contains(old_key_line),
            "old key left in {}",
            entry.display()
        );
    }
    let out = install_then_uninstall(dir.path(), &ca);
    assert_success("ca install/uninstall after rotate", &out);
    let line = |pem: &str| pem.lines().nth(2).unwrap().to_owned();
    let installed = std::fs::read_to_string(dir.path().join("after-install.crt")).unwrap();
    assert!(installed.contains(&line(&new_pem)), "new CA not installed");
    assert!(
        installed.contains(&line(&old_pem)),
        "retired CA not trusted in its grace period"
    );
    let said = std::fs::read_to_string(dir.path().join("install.out")).unwrap();
    assert!(said.contains("1 retired CA(s)"), "{said}");
    let removed = std::fs::read_to_string(dir.path().join("after-uninstall.crt")).unwrap();
    assert!(!removed.contains(&line(&new_pem)) && !removed.contains(&line(&old_pem)));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `leash ca install --dir ca`, then `leash ca uninstall`, against a private
/// copy of the system store mounted over the real one (for this mount
/// namespace only); the bundle after each and the outputs land in `t`.
fn install_then_uninstall(t: &std::path::Path, ca: &std::path::Path) -> std::process::Output {
    let script = r#"
        set -e
        t=$1; leash=$2; ca=$3
        cp -a /usr/local/share/ca-certificates "$t/local" && mount --bind "$t/local" /usr/local/share/ca-certificates
        cp -a /etc "$t/etc" && mount --bind "$t/etc" /etc
        if [ -d /var/lib/ca-certificates-java ]; then cp -a /var/lib/ca-certificates-java "$t/cajava" && mount --bind "$t/cajava" /var/lib/ca-certificates-java; fi
        export DPKG_MAINTSCRIPT_PACKAGE=leash-test-sandbox
        "$leash" ca install --dir "$ca" > "$t/install.out"
        cp /etc/ssl/certs/ca-certificates.crt "$t/after-install.crt"
        "$leash" ca uninstall --dir "$ca" > "$t/uninstall.out"
        cp /etc/ssl/certs/ca-certificates.crt "$t/after-uninstall.crt"
    "#;
    run(std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(t)
        .arg(leash_bin())
        .arg(ca))
}

/// `leash ca init` into `dir/ca`; returns that directory.
fn new_ca(dir: &std::path::Path) -> std::path::PathBuf {
    let ca = dir.join("ca");
    assert_success(
        "ca init",
        &run(leash_command().args(["ca", "init", "--dir"]).arg(&ca)),
    );
    ca
}

/// `leash ca check --container` says what the host's install does not
/// reach and how to fix it; on a host with no running container (or a
/// container client without a daemon, as here) it has nothing to fail.
#[test]
fn ca_check_container_explains_what_the_host_install_does_not_reach() {
    let t = tempfile::tempdir().unwrap();
    let ca = new_ca(t.path());
    let out = run(leash_command()
        .args(["ca", "check", "--container", "--dir"])
        .arg(&ca));
    assert_success("ca check --container", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "own filesystem and trust store",
        "leash ca bundle --out",
        "SSL_CERT_FILE, REQUESTS_CA_BUNDLE and NODE_EXTRA_CA_CERTS",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    assert!(
        text.contains("No running containers")
            || text.contains("not reachable")
            || text.contains("trusts"),
        "{text}"
    );
}
