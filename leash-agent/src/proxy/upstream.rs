//! The upstream client: pooled connections, HTTP/2 where the upstream offers
//! it, TLS always verified against the system and webpki roots plus any
//! configured extra roots.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use tokio::net::TcpStream;

use crate::config::UpstreamConfig;

/// The gateway's connector: resolves the URI's host.
pub type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;
/// The transparent proxy's connector: one original destination, marked.
pub type MarkedHttpsConnector = hyper_rustls::HttpsConnector<MarkedConnector>;
pub type HttpsClient = Client<HttpsConnector, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot read extra root certificates from {0}: {1}")]
    ExtraRoots(PathBuf, rustls_pki_types::pem::Error),
    #[error("no certificate found in extra roots file {0}")]
    NoCertificate(PathBuf),
    #[error("extra root certificate in {0} is not usable: {1}")]
    BadCertificate(PathBuf, rustls::Error),
    #[error("cannot build the upstream TLS configuration: {0}")]
    Tls(rustls::Error),
}

/// The trust anchors used for every upstream: webpki roots, the system
/// store (if readable) and `upstream_tls.extra_roots`.
pub fn root_store(extra_roots: &[PathBuf]) -> Result<RootCertStore, UpstreamError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, "system root certificates loaded");
    for path in extra_roots {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| UpstreamError::ExtraRoots(path.clone(), e))?;
        if certs.is_empty() {
            return Err(UpstreamError::NoCertificate(path.clone()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| UpstreamError::BadCertificate(path.clone(), e))?;
        }
    }
    Ok(roots)
}

/// The TLS client configuration every upstream connection uses.
pub fn tls_config(config: &UpstreamConfig) -> Result<ClientConfig, UpstreamError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(UpstreamError::Tls)?
        .with_root_certificates(root_store(&config.extra_roots)?)
        .with_no_client_auth())
}

pub fn build_client(config: &UpstreamConfig) -> Result<HttpsClient, UpstreamError> {
    let tls = tls_config(config)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(connector))
}

/// Connects every request to one address (an intercepted connection's
/// original destination) on a socket carrying `SO_MARK = mark`, so the
/// kernel hooks let it through instead of looping it back to Leash.
#[derive(Clone, Debug)]
pub struct MarkedConnector {
    pub dst: SocketAddr,
    pub mark: u32,
    pub timeout: Duration,
}

impl MarkedConnector {
    /// A plain TCP connection to `dst` on a marked socket.
    pub async fn connect_raw(&self) -> io::Result<TcpStream> {
        let domain = socket2::Domain::for_address(self.dst);
        let socket =
            socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        socket.set_mark(self.mark)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
        let stream = tokio::time::timeout(self.timeout, socket.connect(self.dst))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {} timed out", self.dst),
                )
            })??;
        Ok(stream)
    }
}

impl tower_service::Service<Uri> for MarkedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect_raw().await.map(TokioIo::new) })
    }
}

/// A client whose connections all go to `connector.dst`, TLS-verified
/// against the request URI's host name.
pub fn marked_client(
    connector: MarkedConnector,
    tls: ClientConfig,
) -> Client<MarkedHttpsConnector, Full<Bytes>> {
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_all_versions()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https)
}
