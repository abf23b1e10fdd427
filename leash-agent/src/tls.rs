//! Serving TLS on the gateway listener from a PEM certificate chain and key.

use std::{path::PathBuf, sync::Arc};

use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;

use serde::Deserialize;

/// The gateway's certificate chain and key (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `gateway.tls` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    /// The files, relative to the config file's directory `base`.
    pub fn from_raw(raw: RawTls, base: &std::path::Path) -> Self {
        Self {
            cert: crate::field::resolve(base, raw.cert),
            key: crate::field::resolve(base, raw.key),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate chain {0}: {1}")]
    Cert(PathBuf, rustls_pki_types::pem::Error),
    #[error("no certificate in {0}")]
    NoCert(PathBuf),
    #[error("cannot read private key {0}: {1}")]
    Key(PathBuf, rustls_pki_types::pem::Error),
    #[error("certificate {0} and key do not make a usable TLS configuration: {1}")]
    Config(PathBuf, rustls::Error),
}

/// Loads `cert` and `key` into a TLS acceptor offering h2 and http/1.1.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| TlsError::Cert(files.cert.clone(), e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(files.cert.clone()));
    }
    // The key's contents never appear in an error: only its path.
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError::Key(files.key.clone(), e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| TlsError::Config(files.cert.clone(), e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
