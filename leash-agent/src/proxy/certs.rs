//! What the transparent proxy keeps across connections: the leaves it
//! minted, and one pooled upstream client per destination.

use std::{sync::Arc, time::Duration};

use moka::sync::Cache;
use rustls::{ClientConfig, ServerConfig};

use super::Forwarder;
use crate::{
    ca::{CaError, CertAuthority},
    intercept::hooks::OrigDstAddr,
    metrics::Metrics,
    upstream::{MarkedConnector, MarkedHttpsConnector, Tunnel, marked_client},
};

/// Minted leaves are replaced after this long (they live 7 days).
const REMINT_AFTER: Duration = Duration::from_hours(24);
/// More cached leaves than this and the cache starts over.
const MAX_CACHED_CERTS: u64 = 10_000;

/// Leaf certificates by host name, minted once per host even under a burst
/// (concurrent first connections wait for one mint), re-minted a day after
/// they were made (they live 7 days), at most `MAX_CACHED_CERTS` kept (the
/// least used go first).
pub struct CertCache {
    ca: CertAuthority,
    configs: Cache<String, Arc<ServerConfig>>,
    metrics: Arc<Metrics>,
}

impl CertCache {
    pub fn new(ca: CertAuthority, metrics: Arc<Metrics>) -> Self {
        Self {
            ca,
            configs: Cache::builder()
                .max_capacity(MAX_CACHED_CERTS)
                .time_to_live(REMINT_AFTER)
                .build(),
            metrics,
        }
    }

    /// The TLS configuration presenting a leaf for `host`.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, Arc<CaError>> {
        self.configs.try_get_with_by_ref(host, || self.mint(host))
    }

    fn mint(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let (chain, key) = self.ca.mint(host)?;
        self.metrics.cert_mints.inc();
        let provider = Arc::new(leaf_provider(aes_hardware()));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|e| CaError::ServerConfig(host.to_owned(), e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // The agent's own order picks the suite (see `leaf_provider`).
        config.ignore_client_order = true;
        Ok(Arc::new(config))
    }
}

/// Whether this CPU has the AES and carry-less multiply instructions
/// AES-GCM runs fast on.
fn aes_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// ring's cipher suites in the order the agent prefers them for its
/// leaves: AES-128-GCM first where the CPU has AES instructions, else
/// ChaCha20-Poly1305 first. The clients are processes on this host, so
/// their CPU is this one. Every suite is one of TLS's own (the set offered
/// is ring's, unchanged); AES-128 matches the 128-bit strength of the
/// X25519 key exchange and the P-256 leaf, and its SHA-256 key schedule
/// runs on the CPU's SHA instructions where SHA-384's cannot — the same
/// choice Go's TLS server makes.
fn leaf_provider(aes: bool) -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as S;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        let cipher = match suite.suite() {
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
            _ => 2,
        };
        // Without AES instructions ChaCha20 (2) comes first.
        if aes { cipher } else { (cipher + 1) % 3 }
    });
    provider
}

/// Where a terminated connection's requests go: the original destination,
/// or a tunnel through the forward proxy the client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    pub dst: OrigDstAddr,
    pub tunnel: Option<Tunnel>,
}

/// Most routes whose upstream client (and its connection pool) is kept;
/// the least used go first.
const MAX_UPSTREAM_CLIENTS: u64 = 1024;

/// One pooled upstream client per route, shared by every client connection
/// on it: a new client connection reuses the agent's warm TLS connections
/// to the provider instead of opening its own.
pub struct UpstreamClients {
    by_route: Cache<Route, Forwarder<MarkedHttpsConnector>>,
    tls: ClientConfig,
    mark: u32,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl UpstreamClients {
    pub fn new(
        tls: ClientConfig,
        mark: u32,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        Self {
            by_route: Cache::builder()
                .max_capacity(MAX_UPSTREAM_CLIENTS)
                .time_to_idle(Duration::from_mins(10))
                .build(),
            tls,
            mark,
            connect_timeout,
            response_timeout,
        }
    }

    /// The connector for `route` (marked sockets, so never redirected).
    pub fn connector(&self, route: &Route) -> MarkedConnector {
        MarkedConnector {
            dst: route.dst.0,
            mark: self.mark,
            timeout: self.connect_timeout,
            tunnel: route.tunnel.clone(),
        }
    }

    /// The shared upstream client for `route` (made on first use).
    pub fn forwarder(&self, route: &Route) -> Forwarder<MarkedHttpsConnector> {
        self.by_route.get_with_by_ref(route, || {
            Forwarder::new(
                marked_client(self.connector(route), self.tls.clone()),
                self.response_timeout,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use rustls::{
        CipherSuite as S, ClientConfig, ClientConnection, RootCertStore, ServerConnection,
        pki_types::{CertificateDer, ServerName, pem::PemObject as _},
    };

    use super::*;
    use crate::ca::CaOptions;

    fn tls13(provider: &rustls::crypto::CryptoProvider) -> Vec<S> {
        provider
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_)))
            .map(rustls::SupportedCipherSuite::suite)
            .collect()
    }

    #[test]
    fn leaves_prefer_aes_128_with_aes_instructions_and_chacha20_without() {
        assert_eq!(
            tls13(&leaf_provider(true)),
            [
                S::TLS13_AES_128_GCM_SHA256,
                S::TLS13_AES_256_GCM_SHA384,
                S::TLS13_CHACHA20_POLY1305_SHA256
            ]
        );
        assert_eq!(
            tls13(&leaf_provider(false)),
            [
                S::TLS13_CHACHA20_POLY1305_SHA256,
                S::TLS13_AES_128_GCM_SHA256,
                S::TLS13_AES_256_GCM_SHA384
            ]
        );
        // The same suites as ring's own list, none added or dropped.
        let mut ours: Vec<u16> = leaf_provider(true)
            .cipher_suites
            .iter()
            .map(|s| u16::from(s.suite()))
            .collect();
        let mut ring: Vec<u16> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| u16::from(s.suite()))
            .collect();
        ours.sort_unstable();
        ring.sort_unstable();
        assert_eq!(ours, ring);
    }

    /// A full handshake in memory between a rustls client offering
    /// `suites` (in its order) and a minted leaf; the suite negotiated.
    fn negotiated(cache: &CertCache, roots: &RootCertStore, suites: &[S]) -> S {
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .retain(|s| suites.contains(&s.suite()));
        provider
            .cipher_suites
            .sort_by_key(|s| suites.iter().position(|x| *x == s.suite()));
        let client = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let name = ServerName::try_from("api.openai.com").unwrap();
        let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = ServerConnection::new(cache.server_config("api.openai.com").unwrap()).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            c.write_tls(&mut wire).unwrap();
            s.read_tls(&mut wire.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            let mut wire = Vec::new();
            s.write_tls(&mut wire).unwrap();
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets().unwrap();
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        assert!(!s.is_handshaking(), "the handshake did not complete");
        s.negotiated_cipher_suite().unwrap().suite()
    }

    #[test]
    fn the_agents_order_picks_the_suite_and_any_suite_offered_alone_still_works() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::init(dir.path(), &CaOptions::default(), false).unwrap();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let cache = CertCache::new(ca, Arc::new(Metrics::new()));
        let all = [
            S::TLS13_AES_256_GCM_SHA384,
            S::TLS13_CHACHA20_POLY1305_SHA256,
            S::TLS13_AES_128_GCM_SHA256,
        ];
        // A client preferring AES-256 (OpenSSL's and rustls' own order)
        // gets the agent's first choice.
        let first = if aes_hardware() {
            S::TLS13_AES_128_GCM_SHA256
        } else {
            S::TLS13_CHACHA20_POLY1305_SHA256
        };
        assert_eq!(negotiated(&cache, &roots, &all), first);
        // Control: a client offering one suite gets that one.
        for only in all {
            assert_eq!(negotiated(&cache, &roots, &[only]), only);
        }
    }
}
