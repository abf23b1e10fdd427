//! The console in a real browser: runs a script of `tests/browser/` in
//! headless Chromium (playwright-core, installed by `cargo xtask test`)
//! against an admin listener and returns what it printed, after checking
//! that the page raised no error and loaded nothing from elsewhere.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::harness::{assert_success, run};

/// Where the screenshots go (the README's).
pub fn screenshots() -> PathBuf {
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    shots
}

/// `node tests/browser/<script> <base> ARGS…`: what it printed.
pub fn run_script(script: &str, base: &str, args: &[&str]) -> Value {
    let playwright = std::env::var("LEASH_TEST_PLAYWRIGHT").unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/console-browser/node_modules")
            .display()
            .to_string()
    });
    assert!(
        Path::new(&playwright).join("playwright-core").is_dir(),
        "playwright-core is not installed in {playwright}: run the tests with `cargo xtask test`, which installs it (and Debian's chromium)"
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("browser")
        .join(script);
    let out = run(std::process::Command::new("node")
        .arg(&path)
        .arg(base)
        .args(args)
        .env("LEASH_TEST_PLAYWRIGHT", &playwright));
    assert_success(&format!("the browser run of {script}"), &out);
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["errors"], json!([]), "errors in the page");
    for url in seen["requests"].as_array().unwrap() {
        assert!(
            url.as_str().unwrap().starts_with(base),
            "the page loaded {url}"
        );
    }
    seen
}
