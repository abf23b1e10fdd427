//! W3C trace context through Leash: a `traceparent` the caller of the
//! official `openai` SDK sets is continued (the record names that trace and
//! Leash's own span; the provider receives a `traceparent` of the same trace
//! whose parent is Leash's span, not the app's); without one, a new trace
//! starts and reaches the provider the same way.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use leash_tests::{
    harness::{Leash, mock_providers_yaml, openai_chat_in_trace},
    http::post_json,
    mock::MockProvider,
};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// (trace, parent span) of the `traceparent` the provider received last.
fn upstream_traceparent(mock: &MockProvider) -> (String, String) {
    let sent = mock.requests().last().unwrap().clone();
    let v = sent
        .header("traceparent")
        .expect("no traceparent upstream")
        .to_owned();
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!((parts.len(), parts[0]), (4, "00"), "{v}");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[test]
fn a_client_trace_is_continued_and_reaches_the_provider() {
    let mock = MockProvider::start();
    let leash = Leash::start(&mock_providers_yaml(&mock));
    openai_chat_in_trace(&leash.base_url("openai"), CLIENT_TRACE, CLIENT_SPAN);
    let record = leash.wait_records(1)[0].clone();
    assert_eq!(record["trace_id"], CLIENT_TRACE, "{record}");
    let span = record["span_id"].as_str().unwrap().to_owned();
    assert_ne!(span, CLIENT_SPAN, "Leash's span is its own");
    assert_eq!(
        upstream_traceparent(&mock),
        (CLIENT_TRACE.to_owned(), span),
        "the provider's parent is Leash's span in the client's trace"
    );
    // Without a traceparent: a new trace, the same way.
    let chat = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(
        post_json(leash.addr, "/v1/openai/chat/completions", "sk-test", chat).0,
        200
    );
    let record = leash.wait_records(2)[1].clone();
    let trace = record["trace_id"].as_str().unwrap().to_owned();
    assert_eq!(trace.len(), 32);
    assert_ne!(trace, CLIENT_TRACE);
    assert_eq!(
        upstream_traceparent(&mock),
        (trace, record["span_id"].as_str().unwrap().to_owned())
    );
}

/// `log.format: json`: every line Leash writes is one JSON object, and the
/// lines about an exchange name its trace, span and request id — the same
/// as its audit record's.
#[test]
fn json_logs_name_the_trace_of_each_exchange() {
    let down = leash_tests::harness::free_port();
    let leash = Leash::start(&format!(
        "providers:\n  gone: {{ kind: openai, upstream: \"http://127.0.0.1:{down}/v1\" }}\nlog: {{ format: json }}\n"
    ));
    let chat = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let mut headers = vec![];
    for traceparent in [None, Some(format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))] {
        let mut h = vec![
            ("content-type", "application/json".to_owned()),
            ("authorization", "Bearer sk-test".to_owned()),
        ];
        h.extend(traceparent.map(|t| ("traceparent", t)));
        headers.push(h);
    }
    for h in &headers {
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, _) = leash_tests::http::http_request(
            leash.addr,
            "POST",
            "/v1/gone/chat/completions",
            &h,
            chat,
        )
        .expect("an answer");
        assert_eq!(status, 502);
    }
    let records = leash.wait_records(2);
    assert_eq!(records[1]["trace_id"], CLIENT_TRACE);
    let logs = leash.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for record in &records {
        let line = lines
            .iter()
            .find(|l| {
                l["fields"]["message"] == "upstream request failed"
                    && l["span"]["request_id"] == record["id"]
            })
            .unwrap_or_else(|| panic!("no failure line for {}:\n{logs}", record["id"]));
        assert_eq!(line["span"]["trace_id"], record["trace_id"], "{line}");
        assert_eq!(line["span"]["span_id"], record["span_id"], "{line}");
    }
}
