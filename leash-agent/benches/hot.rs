//! The other hot pieces of a request, each on its own: SSE event parsing
//! (every streamed chunk passes through it), the usage module's reading of
//! a whole answer (every non-streamed response), audit record encoding and
//! sealing (once per request), and the leaf certificate cache of the
//! transparent proxy (a miss mints a certificate; a hit is a map lookup),
//! and the agent's side of a TLS handshake on a minted leaf.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark"
)]

use std::{
    fmt::Write as _,
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use leash_agent::{
    audit::chain,
    ca::{CaOptions, CertAuthority},
    intercept::shadow,
    metrics::Metrics,
    pipeline::{sse::SseBuffer, usage},
    provider::ProviderKind,
    proxy::certs::CertCache,
    record::{AuditRecord, Caller, Usage},
};
use rustls_pki_types::pem::PemObject as _;

/// An `OpenAI` chat stream of 20 content events and a usage event, cut into
/// 64-byte network reads.
fn stream() -> Vec<Vec<u8>> {
    let mut text = String::new();
    for i in 0..20 {
        let _ = write!(
            text,
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"finish_reason\":null}}]}}\n\n"
        );
    }
    text.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":20,\"total_tokens\":29}}\n\ndata: [DONE]\n\n");
    text.as_bytes().chunks(64).map(<[u8]>::to_vec).collect()
}

fn record() -> AuditRecord {
    let caller = Caller {
        addr: Some("127.0.0.1:50123".parse().unwrap()),
        team: Some("payments".into()),
        pid: Some(4242),
        exe: Some("/usr/bin/python3.11".into()),
        comm: Some("python3".into()),
        uid: Some(1000),
        user: Some("alice".into()),
        cgroup: Some("/system.slice/app.service".into()),
        container: None,
    };
    let mut r = shadow::record("api.openai.com", &caller, &Arc::from("host-1"));
    r.provider = "openai".into();
    r.endpoint = "/v1/chat/completions".into();
    r.model = Some("gpt-4o-mini".into());
    r.status = Some(200);
    r.latency_ms = 412.3;
    r.ttfb_ms = Some(180.2);
    r.overhead_ms = 0.12;
    r.completed = true;
    r.response_bytes = 1834;
    r.usage = Some(Usage {
        input_tokens: 1200,
        output_tokens: 300,
        cached_tokens: 0,
        reasoning_tokens: 0,
        cache_creation_tokens: 0,
    });
    r.cost_usd = Some(0.000_36);
    r.event = None;
    r
}

fn bench(c: &mut Criterion) {
    let chunks = stream();
    c.bench_function("sse_parse_21_events", |b| {
        b.iter(|| {
            let mut buf = SseBuffer::default();
            let mut n = 0;
            for (i, chunk) in chunks.iter().enumerate() {
                n += buf.feed(black_box(chunk), i + 1 == chunks.len()).len();
            }
            assert_eq!(n, 22);
            n
        });
    });

    // The benchmark upstream's 1 KiB chat completion.
    let answer = serde_json::json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_764_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "lorem ipsum ".repeat(75)}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    })
    .to_string();
    c.bench_function("usage_1KiB_answer", |b| {
        b.iter(|| {
            let (found, meta) =
                usage::read_body(ProviderKind::OpenAi, black_box(answer.as_bytes()));
            assert_eq!(found.map(|u| u.output_tokens), Some(12));
            meta
        });
    });

    let rec = record();
    let mut head = chain::ChainHead::default();
    c.bench_function("audit_encode_and_seal", |b| {
        b.iter(|| chain::seal(&serde_json::to_vec(black_box(&rec)).unwrap(), &mut head).len());
    });

    let dir = tempfile::tempdir().unwrap();
    let ca = CertAuthority::init(dir.path(), &CaOptions::default(), false).unwrap();
    c.bench_function("cert_mint_miss", |b| {
        b.iter(|| ca.mint(black_box("api.openai.com")).unwrap());
    });
    let cache = CertCache::new(
        CertAuthority::load(dir.path()).unwrap(),
        Arc::new(Metrics::new()),
    );
    cache.server_config("api.openai.com").unwrap();
    c.bench_function("cert_cache_hit", |b| {
        b.iter(|| cache.server_config(black_box("api.openai.com")).unwrap());
    });

    // The agent's side of a full TLS 1.3 handshake on a cached leaf, in
    // memory (no sockets): only the server's calls are timed. The client
    // offers rustls' own order (AES-256-GCM first, as OpenSSL does).
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            rustls_pki_types::CertificateDer::from_pem_slice(
                CertAuthority::load(dir.path())
                    .unwrap()
                    .cert_pem()
                    .as_bytes(),
            )
            .unwrap(),
        )
        .unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let server = cache.server_config("api.openai.com").unwrap();
    c.bench_function("tls_handshake_leaf", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                spent += handshake(&client, &server);
            }
            spent
        });
    });
}

/// One in-memory handshake; the time the server's side took.
fn handshake(client: &Arc<rustls::ClientConfig>, server: &Arc<rustls::ServerConfig>) -> Duration {
    let name = rustls_pki_types::ServerName::try_from("api.openai.com").unwrap();
    let mut c = rustls::ClientConnection::new(Arc::clone(client), name).unwrap();
    let started = Instant::now();
    let mut s = rustls::ServerConnection::new(Arc::clone(server)).unwrap();
    let mut spent = started.elapsed();
    let mut wire = Vec::new();
    while c.is_handshaking() || s.is_handshaking() {
        wire.clear();
        c.write_tls(&mut wire).unwrap();
        let started = Instant::now();
        s.read_tls(&mut wire.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        wire.clear();
        s.write_tls(&mut wire).unwrap();
        spent += started.elapsed();
        c.read_tls(&mut wire.as_slice()).unwrap();
        c.process_new_packets().unwrap();
    }
    black_box(s);
    spent
}

criterion_group!(benches, bench);
criterion_main!(benches);
