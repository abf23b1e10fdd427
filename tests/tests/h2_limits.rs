//! HTTP/2 limits on the gateway (h2c): the concurrent-stream cap is
//! advertised, requests with unfinished bodies are held (not forwarded),
//! and a rapid-reset flood (CVE-2023-44487) gets its connection closed
//! without reaching the provider or hurting other clients.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::time::Duration;

use leash_tests::{
    harness::{Leash, http_request, mock_providers_yaml},
    mock::MockProvider,
};

fn request() -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri("http://gw/v1/openai/chat/completions")
        .header("content-type", "application/json")
        .body(())
        .unwrap()
}

/// Opens 8 streams whose bodies never end; returns the cap the server
/// advertised and whether any of them was answered.
async fn hold_streams(addr: std::net::SocketAddr) -> (usize, bool) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // Drive the connection until the server's SETTINGS arrived.
    let _ = tokio::time::timeout(Duration::from_millis(300), &mut conn).await;
    let advertised = conn.max_concurrent_send_streams();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(client.send_request(request(), false).unwrap());
        client = client.ready().await.unwrap();
    }
    let answered = tokio::time::timeout(Duration::from_millis(300), &mut open[0].0)
        .await
        .is_ok();
    (advertised, answered)
}

/// Opens and cancels streams as fast as it can, up to 10,000; returns how
/// the connection ended (`None`: it did not).
async fn rapid_reset(addr: std::net::SocketAddr) -> Option<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    for _ in 0..10_000 {
        client = match client.ready().await {
            Ok(c) => c,
            Err(e) => return Some(e.to_string()),
        };
        match client.send_request(request(), false) {
            Ok((_, mut body)) => body.send_reset(h2::Reason::CANCEL),
            Err(e) => return Some(e.to_string()),
        }
    }
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(Result::err)
        .map(|e| e.to_string())
}

#[test]
fn h2_stream_cap_and_rapid_reset_flood() {
    let mock = MockProvider::start();
    let leash = Leash::start(&format!(
        "{}gateway: {{ max_concurrent_streams: 8 }}\n",
        mock_providers_yaml(&mock)
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (advertised, answered) = rt.block_on(hold_streams(leash.addr));
    assert_eq!(advertised, 8, "SETTINGS_MAX_CONCURRENT_STREAMS");
    assert!(!answered, "a request with an unfinished body was answered");
    let ended = rt.block_on(rapid_reset(leash.addr));
    eprintln!(
        "h2: max concurrent streams {advertised} advertised; rapid reset flood ended with: {ended:?}"
    );
    // The gateway closed the flooding connection (its reset limits).
    let ended = ended.expect("the flood's connection was never closed");
    assert!(
        [
            "broken pipe",
            "reset",
            "ENHANCE_YOUR_CALM",
            "go away",
            "GOAWAY",
            "closed"
        ]
        .iter()
        .any(|w| ended.contains(w)),
        "{ended}"
    );
    // Nothing reached the provider, and the gateway serves others.
    assert!(mock.requests().is_empty());
    let (status, _, _) = http_request(
        leash.addr,
        "POST",
        "/v1/openai/chat/completions",
        &[("content-type", "application/json")],
        br#"{"model":"gpt-4o-mini","messages":[]}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
}
