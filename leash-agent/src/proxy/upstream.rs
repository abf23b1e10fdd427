//! The upstream client: pooled connections, HTTP/2 where the upstream offers
//! it, TLS always verified against the system and webpki roots plus any
//! configured extra roots.

use std::{path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, pem::PemObject};

use crate::config::UpstreamConfig;

pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

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

pub fn build_client(config: &UpstreamConfig) -> Result<HttpsClient, UpstreamError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(UpstreamError::Tls)?
        .with_root_certificates(root_store(&config.extra_roots)?)
        .with_no_client_auth();
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
