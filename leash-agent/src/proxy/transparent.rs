//! The transparent proxy: takes the connections the kernel hooks redirected,
//! peeks at the `ClientHello`, terminates TLS for intercepted provider hosts
//! with a leaf minted from the organisation CA (then the same pipeline as the
//! gateway, forwarding to the original destination over verified TLS), and
//! splices everything else to its original destination byte for byte.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use http::{Request, Response};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use leash_common::OrigDst;
use moka::sync::Cache;
use rustls::{ClientConfig, ServerConfig};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;

use super::{
    BodyLimits, Forwarder, admit,
    body::LeashBody,
    local_response, path,
    sni::{Hello, Prefixed, peek_client_hello},
};
use crate::{
    ca::{CaError, CertAuthority},
    intercept::{caller, hooks::KernelHooks, hosts::HostTable, shadow},
    metrics::Metrics,
    pipeline::{ActiveExchange, Caller, Exchange, Mode, Pipeline, Rejection},
    provider::Provider,
    upstream::{MarkedConnector, MarkedHttpsConnector, marked_client},
};

/// Minted leaves are replaced after this long (they live 7 days).
const REMINT_AFTER: Duration = Duration::from_hours(24);
/// More cached leaves than this and the cache starts over.
const MAX_CACHED_CERTS: u64 = 10_000;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TransparentError {
    #[error("no ClientHello: {0}")]
    Hello(std::io::Error),
    #[error(transparent)]
    Cert(#[from] Arc<CaError>),
    #[error("TLS handshake with the client failed: {0}")]
    ClientTls(std::io::Error),
    #[error("cannot reach the original destination {0}: {1}")]
    Upstream(SocketAddr, std::io::Error),
    #[error("spliced connection to {0} failed: {1}")]
    Splice(SocketAddr, std::io::Error),
    #[error("serving the terminated connection failed: {0}")]
    Http(Box<dyn std::error::Error + Send + Sync>),
}

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

/// Most original destinations whose upstream client (and its connection
/// pool) is kept; the least used go first.
const MAX_UPSTREAM_CLIENTS: u64 = 1024;

/// One pooled upstream client per original destination, shared by every
/// client connection to it: a new client connection reuses the agent's
/// warm TLS connections to the provider instead of opening its own.
pub struct UpstreamClients {
    by_dst: Cache<SocketAddr, Forwarder<MarkedHttpsConnector>>,
}

impl Default for UpstreamClients {
    fn default() -> Self {
        Self {
            by_dst: Cache::builder()
                .max_capacity(MAX_UPSTREAM_CLIENTS)
                .time_to_idle(Duration::from_mins(10))
                .build(),
        }
    }
}

/// Everything the transparent listener needs.
pub struct Transparent {
    pub hooks: Arc<KernelHooks>,
    pub hosts: HostTable,
    pub certs: CertCache,
    pub pipeline: Arc<Pipeline>,
    pub upstream_tls: ClientConfig,
    pub bypass_mark: u32,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub limits: BodyLimits,
    pub upstreams: UpstreamClients,
}

/// The original destination as a socket address.
fn destination(orig: &OrigDst) -> SocketAddr {
    let v6 = Ipv6Addr::from(orig.ip);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, orig.port)
}

/// The caller of a redirected connection, as the audit names it.
fn caller_of(orig: &OrigDst, peer: SocketAddr) -> Caller {
    let process = caller::describe(orig);
    Caller {
        addr: Some(peer),
        team: None,
        pid: Some(process.pid),
        exe: process.exe,
        comm: Some(process.comm),
        uid: Some(process.uid),
        user: process.user,
        cgroup: process.cgroup,
        container: process.container,
    }
}

/// One terminated client connection: its provider, caller and upstream.
struct Terminated {
    provider: Arc<Provider>,
    caller: Caller,
    pipeline: Arc<Pipeline>,
    forwarder: Forwarder<MarkedHttpsConnector>,
    limits: BodyLimits,
}

impl Terminated {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<LeashBody> {
        // Decoded once, as in the gateway: rules match, the record shows and
        // the provider receives the same path.
        let canonical = path::canonical(req.uri().path());
        let endpoint = match &canonical {
            Ok(c) => self.provider.upstream.endpoint_of(&c.decoded).to_owned(),
            Err(_) => req.uri().path().to_owned(),
        };
        let mut ex = ActiveExchange::new(
            Exchange::new(
                Mode::Transparent,
                Arc::clone(&self.provider),
                self.caller.clone(),
                endpoint,
            ),
            Arc::clone(&self.pipeline),
        );
        match canonical {
            Ok(c) => admit(ex, req, &c.encoded, self.limits, &self.forwarder).await,
            Err(e) => local_response(
                &mut ex,
                &Rejection {
                    status: http::StatusCode::BAD_REQUEST,
                    code: crate::provider::ErrorCode::BadRequest,
                    message: e.to_string(),
                },
            ),
        }
    }
}

impl Transparent {
    /// Accepts redirected connections until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                accepted = crate::server::accept(&listener, "transparent") => {
                    let Some((stream, peer)) = accepted else { continue };
                    let this = Arc::clone(&self);
                    tokio::spawn(async move {
                        if let Err(e) = this.connection(stream, peer).await {
                            tracing::debug!(%peer, error = %e, "intercepted connection ended with an error");
                        }
                    });
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    fn metrics(&self) -> &Metrics {
        self.pipeline.metrics()
    }

    async fn connection(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), TransparentError> {
        let Some(orig) = self.hooks.lookup(peer.port()) else {
            // Someone connected to the proxy port directly: nothing to forward to.
            self.metrics().intercepted("unknown");
            tracing::warn!(%peer, "connection to the transparent proxy that the kernel hooks did not redirect; closing");
            return Ok(());
        };
        let dst = destination(&orig);
        let (hello, prefix) = peek_client_hello(&mut stream, HELLO_TIMEOUT)
            .await
            .map_err(TransparentError::Hello)?;
        let provider = match &hello {
            Hello::Tls { sni: Some(name) } => self.hosts.provider(name).map(Arc::clone),
            _ => None,
        };
        let Some(provider) = provider else {
            self.metrics().intercepted("spliced");
            let sni = match hello {
                Hello::Tls { sni } => sni,
                Hello::NotTls => None,
            };
            tracing::debug!(%peer, %dst, sni = sni.as_deref().unwrap_or("-"), "splicing");
            if let Some(host) = sni.as_deref().filter(|h| shadow::is_provider_like(h)) {
                self.shadow_ai(host, &orig, peer);
            }
            return self.splice(stream, &prefix, dst).await;
        };
        self.metrics().intercepted("terminated");
        let Hello::Tls { sni: Some(host) } = hello else {
            return Ok(());
        };
        let config = self.certs.server_config(&host)?;
        let tls = TlsAcceptor::from(config)
            .accept(Prefixed::new(prefix, stream))
            .await
            .map_err(TransparentError::ClientTls)?;
        let caller = caller_of(&orig, peer);
        tracing::debug!(%peer, %dst, %host, pid = caller.pid, exe = caller.exe.as_deref().unwrap_or("-"), "terminating");
        let conn = Arc::new(Terminated {
            provider,
            caller,
            pipeline: Arc::clone(&self.pipeline),
            forwarder: self.forwarder(dst),
            limits: self.limits,
        });
        let service = service_fn(move |req| {
            let conn = Arc::clone(&conn);
            async move { Ok::<_, Infallible>(super::contain_panics(conn.handle(req)).await) }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30));
        builder
            .serve_connection(TokioIo::new(tls), service)
            .await
            .map_err(TransparentError::Http)
    }

    /// The shared upstream client for `dst` (made on first use).
    fn forwarder(&self, dst: SocketAddr) -> Forwarder<MarkedHttpsConnector> {
        self.upstreams.by_dst.get_with(dst, || {
            let connector = MarkedConnector {
                dst,
                mark: self.bypass_mark,
                timeout: self.connect_timeout,
            };
            Forwarder::new(
                marked_client(connector, self.upstream_tls.clone()),
                self.response_timeout,
            )
        })
    }

    /// Records a connection to an LLM endpoint that is not intercepted.
    fn shadow_ai(&self, host: &str, orig: &OrigDst, peer: SocketAddr) {
        self.metrics().shadow_ai(host);
        let caller = caller_of(orig, peer);
        tracing::info!(%host, pid = caller.pid, exe = caller.exe.as_deref().unwrap_or("-"), "shadow AI: connection to an LLM endpoint that is not intercepted");
        let record = shadow::record(host, &caller, self.pipeline.host());
        self.pipeline.audit_event(record);
    }

    async fn splice(
        &self,
        mut client: TcpStream,
        prefix: &[u8],
        dst: SocketAddr,
    ) -> Result<(), TransparentError> {
        let connector = MarkedConnector {
            dst,
            mark: self.bypass_mark,
            timeout: self.connect_timeout,
        };
        let mut upstream = connector
            .connect_raw()
            .await
            .map_err(|e| TransparentError::Upstream(dst, e))?;
        upstream
            .write_all(prefix)
            .await
            .map_err(|e| TransparentError::Splice(dst, e))?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream)
            .await
            .map_err(|e| TransparentError::Splice(dst, e))?;
        Ok(())
    }
}

/// The addresses the proxy listens on: `127.0.0.1` and `::1`.
pub fn listen_addrs(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
    ]
}
