//! The console's rule editor against a gateway with a commented policy
//! file: changes made with the page's form and buttons in headless
//! Chromium are enforced on the next request, keep the file's comments,
//! and are recorded with who made them; invalid rules and stale forms are
//! refused with their reason.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::time::Duration;

use leash_tests::{fleet::wait_until, harness::Leash, mock::MockProvider};
use serde_json::{Value, json};

const POLICY: &str = "\
# Security's policy: reviewed weekly.
version: 1
rules:
  # Personal data never goes out...
  - name: block-emails
    match: { detectors: [email] }
    action: block

  # ...except from support, who mail customers.
  - name: allow-support
    match: { team: [support] }
    action: allow
";

fn start() -> (MockProvider, Leash) {
    leash_tests::harness::start_with_policy_file(
        POLICY,
        "teams:\n  - { name: support, header: true }\nadmin: { allow_policy_edit: true }\n",
    )
}

/// The `policy_change` events in the trail, once there are `n`.
fn policy_changes(leash: &Leash, n: usize) -> Vec<Value> {
    let changes = || -> Vec<Value> {
        leash
            .audit_records()
            .into_iter()
            .filter(|r| r["event"] == "policy_change")
            .collect()
    };
    wait_until(
        &format!("{n} policy_change events"),
        Duration::from_secs(10),
        || leash.logs(),
        || changes().len() >= n,
    );
    changes()
}

#[test]
fn rules_made_in_the_form_are_enforced_kept_in_order_and_recorded() {
    let (mock, leash) = start();
    let file = leash.dir.path().join("policy.yaml");
    let seen = leash_tests::browser::run_script(
        "editor.mjs",
        &format!("http://{}", leash.admin),
        &[
            &leash_tests::browser::screenshots().display().to_string(),
            &leash.console_login_url(),
            &format!("http://{}", leash.addr),
        ],
    );
    assert_eq!(
        seen["rules_before"],
        json!(["block-emails", "allow-support"])
    );
    // A new rule from the form: previewed as a diff that checks, then
    // enforced on the very next request (the same request before: allowed).
    let add = &seen["add_preview"];
    assert!(
        add["check"]
            .as_str()
            .unwrap()
            .starts_with("✓ added rule `no-tickets`"),
        "{add}"
    );
    let diff = add["diff"].as_str().unwrap();
    assert!(diff.contains("+  - name: no-tickets"), "{diff}");
    assert!(diff.contains("+  ticket_id:"), "{diff}");
    assert_eq!(seen["ticket_before"], 200);
    assert_eq!(seen["ticket_after"], 403, "{seen}");
    assert_eq!(
        seen["rules_after_add"],
        json!(["block-emails", "allow-support", "no-tickets"])
    );
    // Reordering changes the outcome for support, not for others.
    assert_eq!(seen["support_before"], 403);
    assert_eq!(seen["support_after"], 200, "{seen}");
    assert_eq!(seen["others_after"], 403);
    assert_eq!(
        seen["rules_after_move"],
        json!(["allow-support", "block-emails", "no-tickets"])
    );
    // Invalid rules: refused with the reason, Save disabled.
    let invalid = seen["invalid"]["check"].as_str().unwrap();
    assert!(
        invalid.contains("refused") && invalid.contains("a redact rule needs detectors"),
        "{invalid}"
    );
    assert_eq!(seen["invalid_save_disabled"], true);
    let regex = seen["invalid_regex"].as_str().unwrap();
    assert!(regex.contains("`detector.regex`"), "{regex}");
    // Disabled: kept in the file, no longer enforced.
    assert_eq!(seen["ticket_disabled"], 200);
    let states = seen["states"].as_array().unwrap();
    assert_eq!(states[2][1], "no-tickets");
    assert_eq!(states[2][5], "disabled");

    // The file: the three changes, every comment kept, nothing else.
    assert_tool_rule(&seen);

    let text = std::fs::read_to_string(&file).unwrap();
    for comment in [
        "# Security's policy: reviewed weekly.",
        "# Personal data never goes out...",
        "# ...except from support, who mail customers.",
    ] {
        assert!(text.contains(comment), "{comment} lost:\n{text}");
    }
    assert!(
        text.find("...except from support").unwrap() < text.find("Personal data never").unwrap(),
        "the moved rule's comment did not move with it:\n{text}"
    );
    assert!(text.contains("enabled: false"), "{text}");
    assert_changes_recorded(&leash, &seen);
    // Only the allowed requests reached the provider.
    let allowed = [
        "ticket_before",
        "support_after",
        "ticket_disabled",
        "shell_before",
        "weather_after",
    ]
    .iter()
    .filter(|k| seen[**k] == 200)
    .count();
    assert_eq!(mock.requests().len(), allowed);
}

/// Who changed what: four events, in order, hashes chained, by the
/// session `leash console` opened; the page's history shows them.
fn assert_changes_recorded(leash: &Leash, seen: &Value) {
    let changes = policy_changes(leash, 4);
    let summaries: Vec<&str> = changes
        .iter()
        .map(|c| c["policy_change"]["change"].as_str().unwrap())
        .collect();
    assert_eq!(
        summaries,
        [
            "added rule `no-tickets`",
            "moved rule `allow-support` from position 2 to 1",
            "disabled rule `no-tickets`",
            "added rule `no-shell`"
        ]
    );
    for pair in changes.windows(2) {
        assert_eq!(
            pair[0]["policy_change"]["after_sha256"],
            pair[1]["policy_change"]["before_sha256"]
        );
    }
    let actor = changes[0]["policy_change"]["actor"].as_str().unwrap();
    assert!(actor.contains("leash console"), "{actor}");
    let history = seen["history"].as_array().unwrap();
    assert!(
        history.iter().any(|h| h[1]
            .as_str()
            .unwrap()
            .contains("disabled rule `no-tickets` by")),
        "{history:?}"
    );
}

/// A rule on offered tools made in the form's Tools fields: previewed as
/// `match.tool.offered`, then enforced (a request offering `shell`
/// refused, one offering another tool not; the same request before it
/// allowed).
fn assert_tool_rule(seen: &Value) {
    let preview = &seen["tool_preview"];
    let diff = preview["diff"].as_str().unwrap();
    assert!(diff.contains("+  - name: no-shell"), "{diff}");
    assert!(diff.contains("tool:") && diff.contains("shell*"), "{diff}");
    assert_eq!(seen["shell_before"], 200, "{seen}");
    assert_eq!(seen["shell_after"], 403, "{seen}");
    assert_eq!(seen["weather_after"], 200, "{seen}");
}

/// A form made from a file that changed since (another editor, a deploy)
/// is refused; nothing is written without `admin.allow_policy_edit`; a
/// preview never writes.
#[test]
fn stale_forms_and_read_only_consoles_change_nothing() {
    let (_mock, leash) = start();
    let file = leash.dir.path().join("policy.yaml");
    let (_, policy) = leash.api("GET", "/api/policy", b"");
    let base = policy["editor"]["base"].as_str().unwrap().to_owned();
    let edit = |base: &str, preview: bool| {
        let body = json!({"base": base, "edit": {"op": "delete", "index": 0}});
        let path = if preview {
            "/api/policy/edit?preview"
        } else {
            "/api/policy/edit"
        };
        leash.api("POST", path, body.to_string().as_bytes())
    };
    let (status, out) = edit(&base, true);
    assert_eq!(status, 200, "{out}");
    assert!(
        out["diff"]
            .as_str()
            .unwrap()
            .contains("-  - name: block-emails"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), POLICY);
    // Someone else changed the file: the form's base is stale.
    let changed = format!("{POLICY}# touched\n");
    std::fs::write(&file, &changed).unwrap();
    let (status, out) = edit(&base, false);
    assert_eq!(status, 409, "{out}");
    assert!(
        out["error"].as_str().unwrap().contains("changed since"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), changed);
    // The control: the current base saves.
    let (_, policy) = leash.api("GET", "/api/policy", b"");
    let (status, out) = edit(policy["editor"]["base"].as_str().unwrap(), false);
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["saved"]["summary"], "deleted rule `block-emails`");
    assert!(
        !std::fs::read_to_string(&file)
            .unwrap()
            .contains("block-emails")
    );

    // Without allow_policy_edit: refused, the file untouched.
    let (_mock, read_only) = leash_tests::harness::start_with_policy_file(POLICY, "");
    let file = read_only.dir.path().join("policy.yaml");
    let (_, policy) = read_only.api("GET", "/api/policy", b"");
    assert_eq!(policy["editable"], false);
    let body = json!({"base": policy["editor"]["base"], "edit": {"op": "delete", "index": 0}});
    let (status, out) = read_only.api("POST", "/api/policy/edit", body.to_string().as_bytes());
    assert_eq!(status, 403, "{out}");
    assert!(
        out["error"].as_str().unwrap().contains("allow_policy_edit"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), POLICY);
}
