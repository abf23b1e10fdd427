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

/// The anchor files of the CA's certificates: the current one at
/// `store.anchor`, retired ones beside it (`leash-org-ca-retired-N`).
fn anchor_paths(store: &Store, n: usize) -> Vec<PathBuf> {
    let anchor = Path::new(store.anchor);
    (0..n)
        .map(|i| {
            if i == 0 {
                anchor.to_path_buf()
            } else {
                let ext = anchor.extension().and_then(|e| e.to_str()).unwrap_or("crt");
                anchor.with_file_name(format!("leash-org-ca-retired-{i}.{ext}"))
            }
        })
        .collect()
}

/// Every anchor file Leash may have written (current and retired).
fn installed_anchors(store: &Store) -> Vec<PathBuf> {
    let anchor = Path::new(store.anchor);
    let Some(dir) = anchor.parent() else {
        return Vec::new();
    };
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("leash-org-ca"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Puts `certs` (PEM; the current CA first, then retired ones still in
/// their grace period) in the system store, replacing what Leash put there
/// before; returns the lines to print for runtimes that keep their own
/// stores, which should use `bundle` (all of them in one file).
pub fn install(certs: &[String], bundle: &Path) -> Result<String, TrustError> {
    let store = store()?;
    for old in installed_anchors(store) {
        std::fs::remove_file(&old).map_err(|e| TrustError::Write(old.clone(), e))?;
    }
    for (path, pem) in anchor_paths(store, certs.len()).iter().zip(certs) {
        std::fs::write(path, pem).map_err(|e| TrustError::Write(path.clone(), e))?;
    }
    update(store)?;
    let retired = certs.len().saturating_sub(1);
    Ok(format!(
        "Added the organisation CA{also} to the system trust store ({anchor}).\n\
         Runtimes with their own trust stores need one more step:\n\
         \x20 Python (httpx/requests, used by the openai/anthropic/google SDKs, which otherwise trust certifi):\n\
         \x20   export SSL_CERT_FILE={system} REQUESTS_CA_BUNDLE={system}\n\
         \x20 Node.js:\n\
         \x20   export NODE_EXTRA_CA_CERTS={ca}\n\
         \x20 Java (JVM trust store):\n\
         \x20   keytool -importcert -cacerts -alias leash-org-ca -file {ca} -noprompt -storepass changeit\n",
        also = if retired > 0 {
            format!(" and {retired} retired CA(s) still in their grace period")
        } else {
            String::new()
        },
        ca = bundle.display(),
        anchor = store.anchor,
        system = store.bundle,
    ))
}

/// Removes the CA from the system store.
pub fn uninstall() -> Result<String, TrustError> {
    let store = store()?;
    let installed = installed_anchors(store);
    if installed.is_empty() {
        return Ok(format!(
            "{} was not installed; nothing to do.\n",
            store.anchor
        ));
    }
    for path in installed {
        std::fs::remove_file(&path).map_err(|e| TrustError::Write(path.clone(), e))?;
    }
    update(store)?;
    Ok(format!(
        "Removed {} from the system trust store. Also drop it from NODE_EXTRA_CA_CERTS and the JVM store (`keytool -delete -cacerts -alias leash-org-ca`).\n",
        store.anchor
    ))
}
