//! The organisation's certificate authority: created once (`leash ca init`),
//! trusted once by every machine (`leash ca install`), and used by the agent
//! to mint short-lived leaf certificates for intercepted provider hosts. The
//! CA key never leaves `ca.key` (mode 0600) and never appears in a log line
//! or an error.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use time::OffsetDateTime;

pub const CERT_FILE: &str = "ca.pem";
pub const KEY_FILE: &str = "ca.key";
/// Leaf certificates live this long (capped by the CA's own expiry).
pub const LEAF_VALIDITY: Duration = Duration::from_hours(7 * 24);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(
        "a CA already exists in {0} (use --force to replace it; every machine must then trust the new one)"
    )]
    Exists(PathBuf),
    #[error("no CA in {0}: create one with `leash ca init --dir {0}`")]
    Missing(PathBuf),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0} is not a usable CA certificate or key: {1}")]
    Invalid(PathBuf, rcgen::Error),
    #[error("CA key {0} is readable by others (mode {1:o}); run `chmod 600 {0}`")]
    KeyPermissions(PathBuf, u32),
    #[error("cannot mint a certificate for `{0}`: {1}")]
    Mint(String, rcgen::Error),
    #[error("minted certificate for `{0}` is not usable: {1}")]
    ServerConfig(String, rustls::Error),
    #[error("the CA in {0} has expired; create a new one with `leash ca init --force`")]
    Expired(PathBuf),
}

/// Options for a new CA.
#[derive(Debug, Clone)]
pub struct CaOptions {
    pub common_name: String,
    pub organization: Option<String>,
    pub validity_days: u32,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self {
            common_name: "Leash Organisation CA".into(),
            organization: None,
            validity_days: 3650,
        }
    }
}

/// A loaded CA, able to mint leaf certificates.
pub struct CertAuthority {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CertAuthority")
            .field("dir", &self.dir)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| CaError::Write(path.to_owned(), e))?;
    // `mode` applies only to new files: make sure a replaced file gets it too.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all())
        .map_err(|e| CaError::Write(path.to_owned(), e))
}

/// The expiry of a DER certificate.
fn cert_not_after(der: &CertificateDer<'_>) -> Option<OffsetDateTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).ok()
}

impl CertAuthority {
    /// Creates `dir/ca.pem` and `dir/ca.key` (0600). Refuses to replace an
    /// existing CA unless `force`.
    pub fn init(dir: &Path, options: &CaOptions, force: bool) -> Result<Self, CaError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        if !force && (cert_path.exists() || key_path.exists()) {
            return Err(CaError::Exists(dir.to_owned()));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| CaError::Write(dir.to_owned(), e))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Invalid(key_path.clone(), e))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, options.common_name.as_str());
        if let Some(org) = &options.organization {
            name.push(DnType::OrganizationName, org.as_str());
        }
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_hours(1);
        params.not_after = now + Duration::from_secs(u64::from(options.validity_days) * 86_400);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Invalid(cert_path.clone(), e))?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        Self::load(dir)
    }

    /// Loads `dir/ca.pem` and `dir/ca.key`; the key must not be readable by
    /// group or others.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        if !cert_path.exists() || !key_path.exists() {
            return Err(CaError::Missing(dir.to_owned()));
        }
        let mode = std::fs::metadata(&key_path)
            .map_err(|e| CaError::Read(key_path.clone(), e))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(CaError::KeyPermissions(key_path, mode));
        }
        let cert_pem =
            std::fs::read_to_string(&cert_path).map_err(|e| CaError::Read(cert_path.clone(), e))?;
        let key_pem =
            std::fs::read_to_string(&key_path).map_err(|e| CaError::Read(key_path.clone(), e))?;
        let bad_cert =
            || CaError::Invalid(cert_path.clone(), rcgen::Error::CouldNotParseCertificate);
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| bad_cert())?;
        let not_after = cert_not_after(&cert_der).ok_or_else(bad_cert)?;
        if not_after <= OffsetDateTime::now_utc() {
            return Err(CaError::Expired(dir.to_owned()));
        }
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Invalid(key_path.clone(), e))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| CaError::Invalid(cert_path.clone(), e))?;
        Ok(Self {
            dir: dir.to_owned(),
            issuer,
            cert_pem,
            cert_der,
            not_after,
        })
    }

    /// Loads the CA in `dir`, creating one with default options if there is
    /// none. Returns whether it was created.
    pub fn load_or_init(dir: &Path) -> Result<(Self, bool), CaError> {
        match Self::load(dir) {
            Ok(ca) => Ok((ca, false)),
            Err(CaError::Missing(_)) => Ok((Self::init(dir, &CaOptions::default(), false)?, true)),
            Err(e) => Err(e),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Mints a leaf certificate for `host` with a fresh ECDSA P-256 key:
    /// SAN = host, server auth, valid from an hour ago for [`LEAF_VALIDITY`]
    /// (never past the CA's own expiry). Returns the chain (leaf, CA) and key.
    pub fn mint(
        &self,
        host: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let err = |e| CaError::Mint(host.to_owned(), e);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, host);
        params.subject_alt_names = vec![match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.to_owned().try_into().map_err(err)?),
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_hours(1);
        params.not_after = (now + LEAF_VALIDITY).min(self.not_after);
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key_der))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_load_mint() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::init(dir.path(), &CaOptions::default(), false).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            CertAuthority::init(dir.path(), &CaOptions::default(), false),
            Err(CaError::Exists(_))
        ));
        let (chain, _key) = ca.mint("api.openai.com").unwrap();
        assert_eq!(chain.len(), 2);
        let again = CertAuthority::load(dir.path()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        // The key's bytes never show in Debug output.
        let key_pem = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
        assert!(!format!("{ca:?}").contains(key_pem.lines().nth(1).unwrap()));
    }

    #[test]
    fn refuses_a_world_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        CertAuthority::init(dir.path(), &CaOptions::default(), false).unwrap();
        std::fs::set_permissions(
            dir.path().join(KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(
            CertAuthority::load(dir.path()),
            Err(CaError::KeyPermissions(..))
        ));
    }
}
