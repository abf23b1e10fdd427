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

pub const DEFAULT_CA_DIR: &str = "/var/lib/leash/ca";

/// The `ca` section: where the organisation CA lives.
#[derive(Debug, Clone)]
pub struct CaConfig {
    pub dir: PathBuf,
}

/// `ca` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCa {
    dir: Option<PathBuf>,
}

impl CaConfig {
    pub fn from_raw(raw: RawCa, base: &Path) -> Self {
        Self {
            dir: crate::field::resolve(base, raw.dir.unwrap_or_else(|| DEFAULT_CA_DIR.into())),
        }
    }
}

pub const CERT_FILE: &str = "ca.pem";
pub const KEY_FILE: &str = "ca.key";
/// The certificates machines should trust: the current CA plus the ones
/// `leash ca rotate` retired whose grace period has not ended.
pub const TRUST_FILE: &str = "trust.pem";
/// Retired CA certificates (never keys): `ca-until-<unix time>.pem`.
pub const RETIRED_DIR: &str = "retired";
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
    #[error("{0} {1}: refused (it could be swapped for another CA by someone else)")]
    Unsafe(PathBuf, &'static str),
    #[error("the CA in {0} has expired; replace it with `leash ca rotate --dir {0}`")]
    Expired(PathBuf),
}

/// A CA certificate machines trust, and until when (`None`: the current CA,
/// as long as it is valid).
#[derive(Debug, Clone)]
pub struct Trusted {
    pub pem: String,
    pub until: Option<OffsetDateTime>,
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

/// Writes `contents` to `path` with `mode`: into a new file beside it
/// (created exclusively, never through a symlink), synced, then renamed
/// over `path` — a reader sees the old file or the new one, and a symlink
/// planted at `path` is replaced, not followed.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let err = |e| CaError::Write(path.to_owned(), e);
    let tmp = path.with_extension(format!("new-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

/// Reads a CA file without following a symlink, checking the file it
/// opened (not the path): a regular file owned by this process's user and,
/// with `private`, readable by no one else.
fn read_checked(path: &Path, private: bool) -> Result<String, CaError> {
    use std::{io::Read as _, os::unix::fs::MetadataExt as _};
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => CaError::Unsafe(path.to_owned(), "is a symbolic link"),
            _ if e.kind() == std::io::ErrorKind::NotFound => {
                CaError::Missing(path.parent().unwrap_or(path).to_owned())
            }
            _ => CaError::Read(path.to_owned(), e),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| CaError::Read(path.to_owned(), e))?;
    if !meta.is_file() {
        return Err(CaError::Unsafe(path.to_owned(), "is not a regular file"));
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(CaError::Unsafe(
            path.to_owned(),
            "is owned by another user than the one Leash runs as",
        ));
    }
    let mode = meta.mode() & 0o777;
    if private && mode & 0o077 != 0 {
        return Err(CaError::KeyPermissions(path.to_owned(), mode));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| CaError::Read(path.to_owned(), e))?;
    Ok(text)
}

/// Creates the CA directory (0700), or makes an existing one 0700; a
/// symlink or another user's directory is refused.
fn private_dir(dir: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CaError::Write(dir.to_owned(), e))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| CaError::Read(dir.to_owned(), e))?;
    if !meta.is_dir() {
        return Err(CaError::Unsafe(dir.to_owned(), "is not a directory"));
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(CaError::Unsafe(
            dir.to_owned(),
            "is owned by another user than the one Leash runs as",
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| CaError::Write(dir.to_owned(), e))?;
    }
    Ok(())
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
        if !force
            && (std::fs::symlink_metadata(&cert_path).is_ok()
                || std::fs::symlink_metadata(&key_path).is_ok())
        {
            return Err(CaError::Exists(dir.to_owned()));
        }
        private_dir(dir)?;
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
        let ca = Self::load(dir)?;
        refresh_trust(dir)?;
        Ok(ca)
    }

    /// Replaces the CA in `dir` with a new one (the old key is overwritten)
    /// and keeps the old certificate trusted for `grace`: it stays in
    /// `trust.pem` (what `leash ca install` puts in the system store) until
    /// then, so clients keep accepting leaves from either while machines
    /// and agents move to the new one. Works on an expired CA too.
    pub fn rotate(dir: &Path, options: &CaOptions, grace: Duration) -> Result<Self, CaError> {
        let cert_path = dir.join(CERT_FILE);
        if !cert_path.exists() {
            return Err(CaError::Missing(dir.to_owned()));
        }
        let old =
            std::fs::read_to_string(&cert_path).map_err(|e| CaError::Read(cert_path.clone(), e))?;
        let retired = dir.join(RETIRED_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&retired)
            .map_err(|e| CaError::Write(retired.clone(), e))?;
        let until = OffsetDateTime::now_utc() + grace;
        write_file(
            &retired.join(format!("ca-until-{}.pem", until.unix_timestamp())),
            old.as_bytes(),
            0o644,
        )?;
        Self::init(dir, options, true)
    }

    /// Loads `dir/ca.pem` and `dir/ca.key`; the key must not be readable by
    /// group or others.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        if std::fs::symlink_metadata(&cert_path).is_err()
            || std::fs::symlink_metadata(&key_path).is_err()
        {
            return Err(CaError::Missing(dir.to_owned()));
        }
        let key_pem = read_checked(&key_path, true)?;
        let cert_pem = read_checked(&cert_path, false)?;
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

    /// The SHA-256 fingerprint of the CA certificate (hex, colon-separated).
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        sha2::Sha256::digest(&self.cert_der)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
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

/// The certificates to trust for the CA in `dir`: the current one first,
/// then retired ones still in their grace period. Retired certificates
/// past it are deleted.
pub fn trusted(dir: &Path) -> Result<Vec<Trusted>, CaError> {
    let cert_path = dir.join(CERT_FILE);
    let current =
        std::fs::read_to_string(&cert_path).map_err(|e| CaError::Read(cert_path.clone(), e))?;
    let mut out = vec![Trusted {
        pem: current,
        until: None,
    }];
    let retired = dir.join(RETIRED_DIR);
    let entries = match std::fs::read_dir(&retired) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(CaError::Read(retired, e)),
    };
    let now = OffsetDateTime::now_utc();
    let mut old = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| CaError::Read(retired.clone(), e))?.path();
        let Some(until) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("ca-until-")?.strip_suffix(".pem"))
            .and_then(|t| t.parse().ok())
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        else {
            continue;
        };
        if until <= now {
            std::fs::remove_file(&path).map_err(|e| CaError::Write(path.clone(), e))?;
            continue;
        }
        let pem = std::fs::read_to_string(&path).map_err(|e| CaError::Read(path.clone(), e))?;
        old.push(Trusted {
            pem,
            until: Some(until),
        });
    }
    old.sort_by_key(|t| std::cmp::Reverse(t.until));
    out.extend(old);
    Ok(out)
}

/// Rewrites `dir/trust.pem` from [`trusted`]; returns what it holds.
pub fn refresh_trust(dir: &Path) -> Result<Vec<Trusted>, CaError> {
    let trusted = trusted(dir)?;
    let bundle: String = trusted.iter().map(|t| t.pem.as_str()).collect();
    write_file(&dir.join(TRUST_FILE), bundle.as_bytes(), 0o644)?;
    Ok(trusted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CA and a minted leaf pass OpenSSL's strict X.509 checks (what
    /// Python 3.13 turns on by default: critical basic constraints, key
    /// identifiers, key usage) for a TLS server.
    #[test]
    fn ca_and_leaf_pass_strict_verification() {
        use rustls_pki_types::pem::PemObject as _;
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::init(dir.path(), &CaOptions::default(), false).unwrap();
        let (chain, _) = ca.mint("api.openai.com").unwrap();
        let leaf = dir.path().join("leaf.pem");
        let der = chain[0].as_ref();
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        assert!(CertificateDer::from_pem_slice(pem.as_bytes()).is_ok());
        std::fs::write(&leaf, pem).unwrap();
        let out = std::process::Command::new("openssl")
            .args([
                "verify",
                "-x509_strict",
                "-purpose",
                "sslserver",
                "-verify_hostname",
                "api.openai.com",
                "-CAfile",
            ])
            .arg(ca.cert_path())
            .arg(&leaf)
            .output()
            .expect("openssl (cargo xtask test installs it)");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The same chain passes rustls's verifier (webpki: what Rust clients
    /// such as `reqwest` with rustls use), for the minted name and only it.
    #[test]
    fn ca_and_leaf_pass_rustls_verification() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::init(dir.path(), &CaOptions::default(), false).unwrap();
        let (chain, _) = ca.mint("api.openai.com").unwrap();
        assert!(verifies(ca.cert_pem(), &chain, "api.openai.com"));
        assert!(!verifies(ca.cert_pem(), &chain, "api.anthropic.com"));
    }

    #[test]
    fn ca_files_are_checked_on_the_open_file() {
        use std::os::unix::fs::{PermissionsExt as _, symlink};
        let dir = tempfile::tempdir().unwrap();
        // An existing directory open to others is made private.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        CertAuthority::init(dir.path(), &CaOptions::default(), false).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A key swapped for a symlink (to another CA's key) is refused.
        let other = tempfile::tempdir().unwrap();
        CertAuthority::init(other.path(), &CaOptions::default(), false).unwrap();
        let key = dir.path().join(KEY_FILE);
        std::fs::remove_file(&key).unwrap();
        symlink(other.path().join(KEY_FILE), &key).unwrap();
        assert!(matches!(
            CertAuthority::load(dir.path()),
            Err(CaError::Unsafe(_, "is a symbolic link"))
        ));
        // A replacement writes through the link's place, not through it.
        CertAuthority::init(dir.path(), &CaOptions::default(), true).unwrap();
        assert!(
            !std::fs::symlink_metadata(&key)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(
            CertAuthority::load(other.path()).is_ok(),
            "the other CA was written through"
        );
        // Another user's key is refused (as root, give it away).
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
            assert!(matches!(
                CertAuthority::load(dir.path()),
                Err(CaError::Unsafe(_, _))
            ));
        }
    }

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

    /// Whether `chain` (leaf, CA) verifies for `host` against `bundle`.
    fn verifies(bundle: &str, chain: &[CertificateDer<'static>], host: &str) -> bool {
        use rustls::client::danger::ServerCertVerifier as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &[],
                &rustls_pki_types::ServerName::try_from(host.to_owned()).unwrap(),
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .is_ok()
    }

    #[test]
    fn rotate_keeps_the_old_ca_trusted_for_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let old = CertAuthority::init(dir.path(), &CaOptions::default(), false).unwrap();
        let (old_leaf, _) = old.mint("api.openai.com").unwrap();
        let old_key = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
        let new =
            CertAuthority::rotate(dir.path(), &CaOptions::default(), Duration::from_hours(24))
                .unwrap();
        assert_ne!(new.cert_pem(), old.cert_pem());
        // The old key is gone; the new one is private.
        let new_key = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
        assert_ne!(new_key, old_key);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (new_leaf, _) = new.mint("api.openai.com").unwrap();
        let bundle = std::fs::read_to_string(dir.path().join(TRUST_FILE)).unwrap();
        assert!(verifies(&bundle, &new_leaf, "api.openai.com"));
        assert!(
            verifies(&bundle, &old_leaf, "api.openai.com"),
            "old leaves verify during the grace period"
        );
        assert!(!verifies(new.cert_pem(), &old_leaf, "api.openai.com"));
        let trusted = trusted(dir.path()).unwrap();
        assert_eq!(trusted.len(), 2);
        assert!(trusted[0].until.is_none() && trusted[1].until.is_some());
        // A rotation with no grace: the previous CA is dropped at once.
        let third =
            CertAuthority::rotate(dir.path(), &CaOptions::default(), Duration::ZERO).unwrap();
        let bundle = std::fs::read_to_string(dir.path().join(TRUST_FILE)).unwrap();
        assert!(bundle.contains(third.cert_pem()));
        assert!(!bundle.contains(new.cert_pem()));
        assert!(
            bundle.contains(old.cert_pem()),
            "the first CA's grace has not ended"
        );
        assert!(!verifies(&bundle, &new_leaf, "api.openai.com"));
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
