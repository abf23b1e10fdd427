//! Putting the organisation CA into (and out of) the machine's trust store,
//! and telling the operator what runtimes with their own stores need.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Where a distribution keeps extra anchors and how it rebuilds its bundle.
struct Store {
    anchor: &'static str,
    update: &'static str,
    bundle: &'static str,
}

const DEBIAN: Store = Store {
    anchor: "/usr/local/share/ca-certificates/leash-org-ca.crt",
    update: "update-ca-certificates",
    bundle: "/etc/ssl/certs/ca-certificates.crt",
};
const RHEL: Store = Store {
    anchor: "/etc/pki/ca-trust/source/anchors/leash-org-ca.pem",
    update: "update-ca-trust",
    bundle: "/etc/pki/tls/certs/ca-bundle.crt",
};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("no supported trust store found (need update-ca-certificates or update-ca-trust)")]
    NoStore,
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("`{0}` failed: {1}")]
    Update(&'static str, String),
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn store() -> Result<&'static Store, TrustError> {
    [&DEBIAN, &RHEL]
        .into_iter()
        .find(|s| on_path(s.update) && Path::new(s.anchor).parent().is_some_and(Path::exists))
        .ok_or(TrustError::NoStore)
}

fn update(store: &Store) -> Result<(), TrustError> {
    let out = Command::new(store.update)
        .output()
        .map_err(|e| TrustError::Update(store.update, e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TrustError::Update(
            store.update,
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// Adds `ca_pem` to the system store; returns the lines to print for
/// runtimes that keep their own stores.
pub fn install(ca_pem: &Path) -> Result<String, TrustError> {
    let store = store()?;
    std::fs::copy(ca_pem, store.anchor).map_err(|e| TrustError::Write(store.anchor.into(), e))?;
    update(store)?;
    Ok(format!(
        "Added {ca} to the system trust store ({anchor}).\n\
         Runtimes with their own trust stores need one more step:\n\
         \x20 Python (httpx/requests, used by the openai/anthropic/google SDKs, which otherwise trust certifi):\n\
         \x20   export SSL_CERT_FILE={bundle} REQUESTS_CA_BUNDLE={bundle}\n\
         \x20 Node.js:\n\
         \x20   export NODE_EXTRA_CA_CERTS={ca}\n\
         \x20 Java (JVM trust store):\n\
         \x20   keytool -importcert -cacerts -alias leash-org-ca -file {ca} -noprompt -storepass changeit\n",
        ca = ca_pem.display(),
        anchor = store.anchor,
        bundle = store.bundle,
    ))
}

/// Removes the CA from the system store.
pub fn uninstall() -> Result<String, TrustError> {
    let store = store()?;
    match std::fs::remove_file(store.anchor) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(format!(
                "{} was not installed; nothing to do.\n",
                store.anchor
            ));
        }
        Err(e) => return Err(TrustError::Write(store.anchor.into(), e)),
    }
    update(store)?;
    Ok(format!(
        "Removed {} from the system trust store. Also drop it from NODE_EXTRA_CA_CERTS and the JVM store (`keytool -delete -cacerts -alias leash-org-ca`).\n",
        store.anchor
    ))
}
