//! `/readyz` means something: it turns unready (503, naming the check)
//! when the audit directory stops taking files, and ready again once it
//! does; `/healthz` (alive) stays 200 throughout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{path::Path, process::Command};

use leash_tests::{
    harness::{Leash, http_get, mock_providers_yaml, require_root},
    mock::MockProvider,
};
use serde_json::Value;

fn readyz(leash: &Leash) -> (u16, Value) {
    let (status, body) = http_get(leash.admin, "/readyz").expect("an answer");
    (status, serde_json::from_str(&body).expect("JSON"))
}

/// A read-only bind mount of `dir` over itself, undone on drop.
struct ReadOnly<'a>(&'a Path);

impl<'a> ReadOnly<'a> {
    fn mount(dir: &'a Path) -> Self {
        let run = |args: &[&str]| {
            let ok = Command::new("mount").args(args).arg(dir).status().unwrap();
            assert!(ok.success(), "mount {args:?} {}", dir.display());
        };
        run(&["--bind", &dir.display().to_string()]);
        let guard = Self(dir);
        run(&["-o", "remount,bind,ro"]);
        guard
    }
}

impl Drop for ReadOnly<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn readyz_follows_a_read_only_audit_directory() {
    if !require_root() {
        return;
    }
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    let (status, ready) = readyz(&leash);
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true);
    for check in ["listeners", "audit", "policy"] {
        assert_eq!(ready["checks"][check], "ok", "{ready}");
    }
    {
        let _ro = ReadOnly::mount(&leash.audit_dir);
        let (status, unready) = readyz(&leash);
        assert_eq!(status, 503, "{unready}");
        assert_eq!(unready["ready"], false);
        let why = unready["checks"]["audit"].as_str().unwrap();
        assert!(why.contains("cannot write"), "{why}");
        assert_eq!(unready["checks"]["listeners"], "ok");
        // Alive all the same.
        assert_eq!(http_get(leash.admin, "/healthz").unwrap().0, 200);
    }
    let (status, again) = readyz(&leash);
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["checks"]["audit"], "ok");
}
