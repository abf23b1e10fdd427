//! Figures the tests measure, written where `cargo xtask test` renders them
//! into SECURITY.md: every figure there comes from a run, never a hand
//! edit. One JSON file per test (`target/test-results/<name>.json`).

use std::path::PathBuf;

use serde_json::Value;

/// Where the results go (`LEASH_TEST_RESULTS`, else
/// `target/test-results`).
pub fn dir() -> PathBuf {
    std::env::var_os("LEASH_TEST_RESULTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-results"),
        PathBuf::from,
    )
}

/// Records what the test `name` measured.
pub fn record(name: &str, figures: &Value) {
    let dir = dir();
    std::fs::create_dir_all(&dir).expect("test results directory");
    let mut figures = figures.clone();
    figures["test"] = Value::from(name);
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec_pretty(&figures).expect("json"),
    )
    .expect("write test results");
}
