//! The shipped Prometheus alert rules (`leash-agent/dist/prometheus-rules.yaml`)
//! are valid and do what they say: `promtool check rules`, then the unit
//! tests in `tests/prometheus/rules_test.yml` (a fork raises
//! `LeashAuditChainFork`; counters that stay at 0 raise nothing).

use leash_tests::harness::{assert_success, run};

#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = root.join("../leash-agent/dist/prometheus-rules.yaml");
    let out = run(std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules));
    assert_success("promtool check rules", &out);
    let out = run(std::process::Command::new("promtool")
        .current_dir(root.join("prometheus"))
        .args(["test", "rules", "rules_test.yml"]));
    assert_success("promtool test rules", &out);
}
