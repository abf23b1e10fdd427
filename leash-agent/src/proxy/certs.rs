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
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|e| CaError::ServerConfig(host.to_owned(), e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
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
