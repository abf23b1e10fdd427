//! Routing as a policy outcome (`action: route`): a prompt with an email
//! address goes to the on-prem route and never to the public provider; one
//! without goes where the client asked (the control). Through the unified
//! API, the native `/v1/openai/` route and transparent interception.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use leash_tests::{
    harness::{Leash, assert_success, mock_providers_yaml, require_root, run},
    http::post_json,
    mock::{MockProvider, text_of},
    world::{Host, World},
};
use serde_json::{Value, json};

const EMAIL: &str = "jane.doe@example.com";
const CLIENT_KEY: &str = "sk-client-public-key-91";

const POLICY: &str = "policy:
  version: 1
  rules:
    - { name: pii-on-prem, match: { detectors: [email] }, action: route, route: on-prem }
";

/// `providers` plus the on-prem provider and route, and the policy.
fn config(providers: &str, onprem: &MockProvider) -> String {
    format!(
        "{providers}  onprem: {{ kind: openai, upstream: \"{}/v1\" }}\nroutes:\n  on-prem: {{ targets: [{{provider: onprem, model: llama-3-70b}}] }}\n{POLICY}",
        onprem.url()
    )
}

fn chat_body(model: &str, text: &str) -> Vec<u8> {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
        .to_string()
        .into_bytes()
}

fn post(leash: &Leash, path: &str, body: &[u8]) -> (u16, Value) {
    let (status, _, body) = post_json(leash.addr, path, CLIENT_KEY, body);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn saw(mock: &MockProvider, needle: &str) -> bool {
    mock.requests()
        .iter()
        .any(|r| String::from_utf8_lossy(&r.body).contains(needle))
}

#[test]
fn the_gateway_sends_personal_data_to_the_on_prem_route() {
    let public = MockProvider::start();
    let onprem = MockProvider::start();
    let leash = Leash::start(&config(&mock_providers_yaml(&public), &onprem));
    let mut records = 0;
    for (path, model) in [
        ("/v1/chat/completions", "anthropic/claude-sonnet-4-5"),
        ("/v1/chat/completions", "google/gemini-2.5-flash"),
        ("/v1/openai/chat/completions", "gpt-4o-mini"),
    ] {
        // Control: no personal data, the provider the client asked for.
        let (status, v) = post(&leash, path, &chat_body(model, "hello"));
        assert_eq!(status, 200, "{path} {model}: {v}");
        assert_eq!(v["choices"][0]["message"]["content"], text_of(5));
        records += 1;
        let before_public = public.requests().len();
        let before_onprem = onprem.requests().len();
        // An email: the on-prem model answers, in the OpenAI shape.
        let (status, v) = post(&leash, path, &chat_body(model, &format!("mail {EMAIL}")));
        assert_eq!(status, 200, "{path} {model}: {v}");
        assert_eq!(v["object"], "chat.completion", "{v}");
        assert_eq!(
            public.requests().len(),
            before_public,
            "{model}: the public provider was called"
        );
        assert_eq!(onprem.requests().len(), before_onprem + 1);
        let sent = onprem.requests().last().unwrap().clone();
        assert_eq!(sent.json()["model"], "llama-3-70b");
        assert!(
            !format!("{:?}", sent.headers).contains(CLIENT_KEY),
            "the client's key for the public provider went on-prem"
        );
        // Two records: the decision (nothing sent) and the on-prem call.
        records += 2;
        let all = leash.wait_records(records);
        let decision = &all[records - 2];
        assert_eq!(decision["policy"]["action"], "route", "{decision}");
        assert_eq!(decision["policy"]["route"], "on-prem", "{decision}");
        assert_eq!(decision["error"], "leash_policy_routed", "{decision}");
        let served = &all[records - 1];
        assert_eq!(served["provider"], "onprem", "{served}");
        assert_eq!(served["unified"]["route"], "on-prem", "{served}");
    }
    assert!(
        !saw(&public, EMAIL),
        "the email reached the public provider"
    );
    assert!(saw(&onprem, EMAIL));
}

#[test]
fn policy_test_shows_the_chosen_route() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        POLICY
            .strip_prefix("policy:\n")
            .unwrap()
            .lines()
            .map(|l| l.strip_prefix("  ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, chat_body("gpt-4o-mini", &format!("mail {EMAIL}"))).unwrap();
    let out = run(leash_tests::harness::leash_command()
        .args(["policy", "test", "--request"])
        .arg(&body)
        .arg(&policy));
    assert_success("leash policy test", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("on-prem"), "{text}");
}

/// The same through transparent interception: curl to api.openai.com with
/// an email is answered by the on-prem model; the intercepted provider
/// never sees it, and the records name the real caller.
#[test]
fn an_intercepted_call_with_personal_data_goes_on_prem() {
    if !require_root() {
        return;
    }
    let onprem = MockProvider::start();
    let extra = config("providers:\n", &onprem);
    let w = World::new(
        "route",
        &[Host("api.openai.com", "127.10.1.21", true)],
        &extra,
    );
    let curl = |text: &str| {
        let body = String::from_utf8(chat_body("gpt-4o-mini", text)).unwrap();
        let auth = format!("authorization: Bearer {CLIENT_KEY}");
        w.curl(
            &w.agent.ca_pem(),
            "https://api.openai.com/v1/chat/completions",
            &[
                "-H",
                &auth,
                "-H",
                "content-type: application/json",
                "-d",
                &body,
            ],
        )
    };
    let out = curl("hello");
    assert_success("control", &out);
    assert_eq!(w.mocks[0].requests().len(), 1);
    let out = curl(&format!("mail {EMAIL}"));
    assert_success(&format!("routed\n{}", w.agent.logs()), &out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], text_of(5), "{v}");
    assert_eq!(
        w.mocks[0].requests().len(),
        1,
        "the intercepted provider was called"
    );
    assert!(saw(&onprem, EMAIL));
    assert!(!format!("{:?}", onprem.requests()[0].headers).contains(CLIENT_KEY));
    let records = w.agent.wait_records(3);
    let served = &records[2];
    assert_eq!(served["provider"], "onprem", "{served}");
    assert_eq!(served["mode"], "transparent", "{served}");
    assert!(
        served["caller"]["exe"].as_str().unwrap().ends_with("curl"),
        "{served}"
    );
}
