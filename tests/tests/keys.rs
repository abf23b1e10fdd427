//! Virtual keys (`auth.mode: virtual`): the official `openai`, `anthropic`
//! and `google-genai` SDKs hold a Leash key (`lsk_…`, from `leash keys
//! create`); the mock provider sees only the real key Leash holds. Revoked
//! and expired keys get 401, a model outside the key's list 403, a key over
//! its rate 429 with `retry-after`, a real provider key from a client 401;
//! the store holds no key; records carry the key's id, never a key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::{
    path::Path,
    time::{Duration, Instant},
};

use leash_tests::{
    harness::{Leash, assert_success, leash_command, mock_providers_yaml, run, run_python},
    http::post_json,
    mock::{MockProvider, text_of},
};
use serde_json::Value;

const REAL: [(&str, &str); 3] = [
    ("openai", "sk-real-openai-7c1d0e"),
    ("anthropic", "sk-ant-real-22b9f4"),
    ("google", "AIza-real-google-5e8a1b"),
];

fn start(mock: &MockProvider, dir: &Path) -> Leash {
    start_with(mock, dir, "")
}

/// As `start`, with more config (`extra`, top-level sections).
fn start_with(mock: &MockProvider, dir: &Path, extra: &str) -> Leash {
    let store = dir.join("keys.json");
    let config = format!(
        "{}{extra}credentials:\n  real-openai: {{ env: LEASH_TEST_REAL_OPENAI }}\n  real-anthropic: {{ env: LEASH_TEST_REAL_ANTHROPIC }}\n  real-google: {{ env: LEASH_TEST_REAL_GOOGLE }}\nauth:\n  mode: virtual\n  keys_file: \"{}\"\n  inject: {{ openai: real-openai, anthropic: real-anthropic, google: real-google }}\n",
        mock_providers_yaml(mock),
        store.display()
    );
    Leash::start_with_env(
        tempfile::tempdir().unwrap(),
        &config,
        &[
            ("LEASH_TEST_REAL_OPENAI", REAL[0].1),
            ("LEASH_TEST_REAL_ANTHROPIC", REAL[1].1),
            ("LEASH_TEST_REAL_GOOGLE", REAL[2].1),
        ],
    )
}

/// `leash keys create --store … ARGS`: the key printed (once).
fn create(dir: &Path, args: &[&str]) -> String {
    let out = run(leash_command()
        .args(["keys", "create", "--store"])
        .arg(dir.join("keys.json"))
        .args(args));
    assert_success("leash keys create", &out);
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(key.starts_with("lsk_"), "{key}");
    key
}

fn key_id(key: &str) -> &str {
    key.split('_').nth(1).unwrap()
}

fn chat(leash: &Leash, key: &str, path: &str, body: &[u8]) -> (u16, Vec<(String, String)>, String) {
    post_json(leash.addr, path, key, body)
}

const OPENAI_CHAT: &[u8] =
    br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
const CLAUDE: &[u8] =
    br#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;

#[test]
fn sdks_hold_a_virtual_key_and_the_provider_sees_only_the_real_one() {
    let mock = MockProvider::start();
    let dir = tempfile::tempdir().unwrap();
    let key = create(dir.path(), &["--team", "research"]);
    let leash = start(&mock, dir.path());
    for (case, provider) in [
        ("openai-chat", "openai"),
        ("anthropic", "anthropic"),
        ("google", "google"),
    ] {
        let out = run_python(
            "sdk_check.py",
            &[case, &leash.base_url(provider), &key, &text_of(5)],
            &[],
        );
        assert_success(
            &format!("{case} with a virtual key\n{}", leash.logs()),
            &out,
        );
        let sent = mock.requests().last().unwrap().clone();
        let headers = format!("{:?} {}", sent.headers, sent.uri);
        let real = REAL.iter().find(|(p, _)| *p == provider).unwrap().1;
        assert!(
            headers.contains(real),
            "{case}: the real key did not go upstream: {headers}"
        );
        assert!(
            !headers.contains(key_id(&key)),
            "{case}: the virtual key went upstream"
        );
    }
    let records = leash.wait_records(3);
    for r in &records {
        assert_eq!(r["key_id"], key_id(&key), "{r}");
        assert_eq!(r["caller"]["team"], "research", "{r}");
    }
    // The store has the key's digest, never the key.
    let store = std::fs::read_to_string(dir.path().join("keys.json")).unwrap();
    let secret_part = key.splitn(3, '_').nth(2).unwrap();
    assert!(!store.contains(secret_part));
    for (place, text) in [
        ("logs", leash.logs()),
        ("audit", leash.audit_text()),
        ("metrics", leash.metrics()),
    ] {
        assert!(
            !text.contains(secret_part),
            "the virtual key is in the {place}"
        );
        for (_, real) in REAL {
            assert!(!text.contains(real), "a real key is in the {place}");
        }
    }
}

#[test]
fn revoked_expired_unknown_and_real_keys_are_refused() {
    let mock = MockProvider::start();
    let dir = tempfile::tempdir().unwrap();
    let key = create(dir.path(), &["--team", "research"]);
    let expired = create(dir.path(), &["--team", "research", "--expires", "30d"]);
    // Expire it in the store (as time would).
    let path = dir.path().join("keys.json");
    let mut store: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for k in store["keys"].as_array_mut().unwrap() {
        if k["id"] == key_id(&expired) {
            k["expires"] = Value::from(1);
        }
    }
    std::fs::write(&path, serde_json::to_vec(&store).unwrap()).unwrap();
    let leash = start(&mock, dir.path());
    let path_openai = "/v1/openai/chat/completions";
    // Control: the live key works.
    assert_eq!(chat(&leash, &key, path_openai, OPENAI_CHAT).0, 200);
    let (status, _, body) = chat(&leash, &expired, path_openai, OPENAI_CHAT);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("expired"), "{body}");
    let forged = format!("{}x", &key[..key.len() - 1]);
    assert_eq!(chat(&leash, &forged, path_openai, OPENAI_CHAT).0, 401);
    // A real provider key from a client is not accepted in `virtual` mode.
    assert_eq!(
        chat(&leash, "sk-some-real-key", path_openai, OPENAI_CHAT).0,
        401
    );
    // Revoked: refused within a second of `leash keys revoke`.
    let out = run(leash_command()
        .args(["keys", "revoke", "--store"])
        .arg(&path)
        .arg(key_id(&key)));
    assert_success("leash keys revoke", &out);
    let revoked_at = Instant::now();
    let mut accepted = 0;
    loop {
        let (status, _, body) = chat(&leash, &key, path_openai, OPENAI_CHAT);
        if status == 401 {
            assert!(body.contains("revoked"), "{body}");
            break;
        }
        accepted += 1;
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "still accepted 1 s after revocation"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("revocation held after {:?}", revoked_at.elapsed());
    // The control call and those before the revocation took hold reached
    // the provider; no refused one did.
    assert_eq!(
        mock.requests().len(),
        1 + accepted,
        "a refused key reached the provider"
    );
    // `list` shows the states, never a key.
    let out = run(leash_command().args(["keys", "list", "--store"]).arg(&path));
    assert_success("leash keys list", &out);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("revoked") && list.contains("expired"),
        "{list}"
    );
    assert!(!list.contains("lsk_"), "{list}");
}

#[test]
fn models_and_rates_are_limited_per_key() {
    let mock = MockProvider::start();
    let dir = tempfile::tempdir().unwrap();
    let gpt_only = create(dir.path(), &["--team", "a", "--models", "gpt-4o*"]);
    let slow = create(dir.path(), &["--team", "b", "--rate", "2"]);
    let thrifty = create(dir.path(), &["--team", "c", "--tokens", "30"]);
    let leash = start(&mock, dir.path());
    assert_eq!(
        chat(
            &leash,
            &gpt_only,
            "/v1/openai/chat/completions",
            OPENAI_CHAT
        )
        .0,
        200
    );
    let (status, _, body) = chat(&leash, &gpt_only, "/v1/anthropic/v1/messages", CLAUDE);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("claude-sonnet-4-5"), "{body}");
    // Two a minute: the third is refused with retry-after (a minute
    // boundary may reset the count once, so allow two more tries).
    let mut ok = 0;
    let refused = (0..5).find_map(|_| {
        let (status, headers, _) = chat(&leash, &slow, "/v1/openai/chat/completions", OPENAI_CHAT);
        if status == 200 {
            ok += 1;
            return None;
        }
        Some((status, headers))
    });
    let (status, headers) = refused.expect("never rate limited");
    assert_eq!(status, 429);
    assert!(ok >= 2);
    let retry: u64 = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .map(|(_, v)| v.parse().unwrap())
        .expect("retry-after");
    assert!((1..=60).contains(&retry), "{retry}");
    // Tokens a minute: the mock's OpenAI answer uses 11 + 7 tokens, so with
    // 30 a minute the third call is refused (the first two used 36).
    let mut ok = 0;
    let refused = (0..6).find_map(|_| {
        let (status, headers, body) =
            chat(&leash, &thrifty, "/v1/openai/chat/completions", OPENAI_CHAT);
        if status == 200 {
            ok += 1;
            return None;
        }
        Some((status, headers, body))
    });
    let (status, headers, body) = refused.expect("never refused for tokens");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("tokens"), "{body}");
    assert!(ok >= 2, "{ok}");
    assert!(
        headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
    );
}

/// A key limited to a route calls that route only; a key with a budget is
/// refused once its spend this period reaches it — also after a restart —
/// while a key without one goes on (control); the console lists each key's
/// limits, spend and last use.
#[test]
fn routes_and_budgets_are_limited_per_key() {
    let mock = MockProvider::start();
    let dir = tempfile::tempdir().unwrap();
    let routed = create(dir.path(), &["--team", "a", "--routes", "cheap"]);
    let capped = create(dir.path(), &["--team", "b", "--budget", "0.0000001/day"]);
    let free = create(dir.path(), &["--team", "c"]);
    let mut leash = start_with(
        &mock,
        dir.path(),
        "routes:\n  cheap: { targets: [{ provider: openai, model: gpt-4o-mini }] }\n",
    );
    let unified = |model: &str| {
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
    };
    let (status, _, body) = chat(
        &leash,
        &routed,
        "/v1/chat/completions",
        unified("cheap").as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    for (path, body) in [
        ("/v1/chat/completions", unified("openai/gpt-4o-mini")),
        ("/v1/openai/chat/completions", unified("gpt-4o-mini")),
    ] {
        let (status, _, answer) = chat(&leash, &routed, path, body.as_bytes());
        assert_eq!(status, 403, "{path}: {answer}");
        assert!(answer.contains("route cheap only"), "{answer}");
    }
    // The budget: the first call is priced past it, then refused.
    let (status, _, body) = chat(&leash, &capped, "/v1/openai/chat/completions", OPENAI_CHAT);
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let refusal = loop {
        let (status, _, body) = chat(&leash, &capped, "/v1/openai/chat/completions", OPENAI_CHAT);
        if status != 200 {
            break (status, body);
        }
        assert!(Instant::now() < deadline, "the budget was never reached");
    };
    assert_eq!(refusal.0, 429, "{}", refusal.1);
    assert!(refusal.1.contains("budget"), "{}", refusal.1);
    assert_eq!(
        chat(&leash, &free, "/v1/openai/chat/completions", OPENAI_CHAT).0,
        200
    );
    // The console: limits, spend, last use; never a key.
    let (status, page) = leash.api("GET", "/api/keys", b"");
    assert_eq!(status, 200, "{page}");
    let row = |key: &str| {
        page["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == key_id(key))
            .cloned()
            .unwrap()
    };
    assert_eq!(row(&routed)["routes"], serde_json::json!(["cheap"]));
    assert_eq!(row(&capped)["budget_period"], "day");
    assert!(
        row(&capped)["spent_usd"].as_f64().unwrap() > 0.000_000_1,
        "{page}"
    );
    assert!(row(&free)["last_used"].as_u64().is_some(), "{page}");
    for key in [&routed, &capped, &free] {
        assert!(
            !page
                .to_string()
                .contains(key.splitn(3, '_').nth(2).unwrap())
        );
    }
    // Spend is kept beside the store: still refused after a restart.
    let usage = dir.path().join("keys.json.usage");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&usage).is_ok_and(|t| t.contains(key_id(&capped))) {
        assert!(Instant::now() < deadline, "key use was not written");
        std::thread::sleep(Duration::from_millis(50));
    }
    leash.restart();
    let (status, _, body) = chat(&leash, &capped, "/v1/openai/chat/completions", OPENAI_CHAT);
    assert_eq!(status, 429, "after a restart: {body}");
    assert_eq!(
        chat(&leash, &free, "/v1/openai/chat/completions", OPENAI_CHAT).0,
        200
    );
}

/// The keys page in a real browser: every key with its team and limits,
/// never a key or a real credential; its Revoke button (a state change: a
/// session from the page itself) revokes the key, which the gateway then
/// refuses, while the other key goes on (control). Without the token, the
/// revoke API is refused.
#[test]
fn the_console_lists_keys_and_revokes_one() {
    let mock = MockProvider::start();
    let dir = tempfile::tempdir().unwrap();
    let doomed = create(dir.path(), &["--team", "research", "--rate", "60"]);
    let kept = create(dir.path(), &["--team", "ops", "--models", "gpt-4o*"]);
    let leash = start(&mock, dir.path());
    for key in [&doomed, &kept] {
        assert_eq!(
            chat(&leash, key, "/v1/openai/chat/completions", OPENAI_CHAT).0,
            200
        );
    }
    let path = format!("/api/keys/{}/revoke", key_id(&doomed));
    let (status, _, _) =
        leash_tests::http::http_request(leash.admin, "POST", &path, &[], b"").unwrap();
    assert_eq!(status, 401, "revoked without the token");
    let seen = leash_tests::browser::run_script(
        "keys.mjs",
        &format!("http://{}", leash.admin),
        &[
            &leash_tests::browser::screenshots().display().to_string(),
            &leash.console_login_url(),
            key_id(&doomed),
        ],
    );
    let before = seen["before"].as_array().unwrap();
    assert_eq!(before.len(), 2, "{seen}");
    let doomed_row = before.iter().find(|r| r[0] == key_id(&doomed)).unwrap();
    assert_eq!(doomed_row[1], "research");
    assert_eq!(doomed_row[4], "60 /min");
    assert_eq!(doomed_row[10], "active");
    let kept_row = before.iter().find(|r| r[0] == key_id(&kept)).unwrap();
    assert_eq!(kept_row[2], "gpt-4o*");
    assert!(seen["result"].as_str().unwrap().contains("revoked"));
    let html = seen["html"].as_str().unwrap();
    for secret in [&doomed, &kept]
        .map(|k| k.splitn(3, '_').nth(2).unwrap().to_owned())
        .into_iter()
        .chain(REAL.iter().map(|(_, r)| (*r).to_owned()))
    {
        assert!(!html.contains(&secret), "a secret is on the keys page");
    }
    let (status, _, body) = chat(&leash, &doomed, "/v1/openai/chat/completions", OPENAI_CHAT);
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        chat(&leash, &kept, "/v1/openai/chat/completions", OPENAI_CHAT).0,
        200
    );
    assert!(
        leash
            .logs()
            .contains("virtual key revoked from the console")
    );
}

/// Transparent injection: an application in the watched cgroup holds a
/// placeholder key and the agent sends the real one, chosen per caller (the
/// official `openai` SDK, default URL, gets one credential; `curl` in the
/// same cgroup another); another key from the cgroup goes as it is; a
/// rotated credential file is taken without a restart; outside the cgroup
/// the placeholder reaches the provider untouched (control: the agent, not
/// the network, made the difference).
#[test]
fn an_intercepted_app_with_a_placeholder_gets_the_real_key() {
    use std::os::unix::fs::PermissionsExt as _;
    if !leash_tests::harness::require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let write_key = |name: &str, value: &str| {
        // As an operator rotates it: a new file renamed over the old.
        let tmp = dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, value).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&tmp, dir.path().join(name)).unwrap();
        dir.path().join(name)
    };
    let key_file = write_key("openai.key", REAL[0].1);
    let ci_file = write_key("ci.key", "sk-real-ci-0a1b2c");
    let extra = format!(
        "  inject_credentials:\n    openai:\n      - {{ credential: ci, exe: \"*/curl\" }}\n      - {{ credential: real, exe: \"*python*\" }}\n  placeholder_key: sk-placeholder\ncredentials:\n  real: {{ file: \"{}\" }}\n  ci: {{ file: \"{}\" }}\n",
        key_file.display(),
        ci_file.display()
    );
    let w = leash_tests::world::World::new(
        "inject",
        &[leash_tests::world::Host(
            "api.openai.com",
            "127.10.1.22",
            true,
        )],
        &extra,
    );
    let auth_seen = |w: &leash_tests::world::World| {
        w.mocks[0]
            .requests()
            .last()
            .and_then(|r| r.header("authorization").map(str::to_owned))
            .unwrap_or_default()
    };
    let out = w.sdk_with(
        "openai-chat",
        "https://api.openai.com/v1",
        "Say hello",
        "{}",
        &["sk-placeholder"],
    );
    assert_success(&format!("SDK with a placeholder\n{}", w.agent.logs()), &out);
    assert_eq!(auth_seen(&w), format!("Bearer {}", REAL[0].1));
    let rec = &w.agent.wait_records(1)[0];
    assert_eq!(rec["credential"], "real", "{rec}");
    // Another key from the cgroup: not the placeholder, sent as it is.
    // curl in the same cgroup: its own credential.
    assert_success("curl", &w.chat(&w.agent.ca_pem(), "sk-placeholder"));
    assert_eq!(auth_seen(&w), "Bearer sk-real-ci-0a1b2c");
    // The operator rotates curl's credential: taken within a second.
    write_key("ci.key", "sk-real-ci-rotated");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert_success("curl", &w.chat(&w.agent.ca_pem(), "sk-placeholder"));
        if auth_seen(&w) == "Bearer sk-real-ci-rotated" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated credential was not taken\n{}",
            w.agent.logs()
        );
    }
    assert_success("own key", &w.chat(&w.agent.ca_pem(), "sk-own-key"));
    assert_eq!(auth_seen(&w), "Bearer sk-own-key");
    // Outside the cgroup: straight to the provider, placeholder and all.
    let out = run(std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            "api.openai.com:443:127.10.1.22",
            "--cacert",
        ])
        .arg(&w.public_ca)
        .args([
            "-H",
            "authorization: Bearer sk-placeholder",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
            "https://api.openai.com/v1/chat/completions",
        ]));
    assert_success("curl outside the cgroup", &out);
    assert_eq!(auth_seen(&w), "Bearer sk-placeholder");
    for (place, text) in [("logs", w.agent.logs()), ("audit", w.agent.audit_text())] {
        for real in [REAL[0].1, "sk-real-ci"] {
            assert!(!text.contains(real), "a real key is in the {place}");
        }
    }
}

/// Two gateway replicas share a key store in PostgreSQL: a key made there
/// works on both, and a revocation made with `leash keys` holds on both
/// within a second.
#[test]
fn replicas_sharing_a_postgres_store_honour_a_revocation_within_a_second() {
    let pg = leash_tests::fleet::Postgres::start();
    let mock = MockProvider::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("keys.secret");
    let keys = |args: &[&str]| {
        let out = run(leash_command()
            .arg("keys")
            .args(&args[..1])
            .args(["--postgres", &pg.url(), "--secret"])
            .arg(&secret)
            .args(&args[1..]));
        assert_success(&format!("leash keys {args:?}"), &out);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let key = keys(&["create", "--team", "shared"]);
    let config = format!(
        "{}credentials:\n  real-openai: {{ env: LEASH_TEST_REAL_OPENAI }}\nauth:\n  mode: virtual\n  postgres: \"{}\"\n  secret_file: \"{}\"\n  inject: {{ openai: real-openai }}\n",
        mock_providers_yaml(&mock),
        pg.url(),
        secret.display()
    );
    let replicas: Vec<Leash> = (0..2)
        .map(|_| {
            Leash::start_with_env(
                tempfile::tempdir().unwrap(),
                &config,
                &[("LEASH_TEST_REAL_OPENAI", REAL[0].1)],
            )
        })
        .collect();
    let status = |leash: &Leash| chat(leash, &key, "/v1/openai/chat/completions", OPENAI_CHAT).0;
    // Each replica has read the store once it answers 200 (until then 503).
    let deadline = Instant::now() + Duration::from_secs(10);
    for leash in &replicas {
        while status(leash) != 200 {
            assert!(
                Instant::now() < deadline,
                "the key never worked: {}",
                leash.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    keys(&["revoke", key_id(&key)]);
    let revoked_at = Instant::now();
    for leash in &replicas {
        while status(leash) != 401 {
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "a replica still took the key 1 s after its revocation"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    eprintln!(
        "revocation held on both replicas after {:?}",
        revoked_at.elapsed()
    );
    let list = keys(&["list"]);
    assert!(list.contains("revoked") && !list.contains("lsk_"), "{list}");
}
