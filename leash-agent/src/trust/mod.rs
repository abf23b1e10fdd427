//! Putting the organisation CA into (and out of) the machine's trust store
//! and the runtimes that keep their own (`runtimes`), remembering every
//! change so uninstall undoes exactly that (`manifest`).

pub mod check;
pub mod containers;
pub mod manifest;
pub mod runtimes;

use std::{
    fmt::Write as _,
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
    #[error("the install record {0} is unreadable: {1}")]
    Manifest(PathBuf, String),
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

/// `leash ca bundle`: the system bundle followed by the organisation CA's
/// certificates (`trust_pem`), in one file to mount into containers.
pub fn bundle(trust_pem: &Path, out: &Path) -> Result<(), TrustError> {
    let store = store()?;
    let mut bytes =
        std::fs::read(store.bundle).map_err(|e| TrustError::Write(store.bundle.into(), e))?;
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    let ca = std::fs::read(trust_pem).map_err(|e| TrustError::Write(trust_pem.to_path_buf(), e))?;
    // Not twice, if the store already has it.
    if !bytes.windows(ca.len().max(1)).any(|w| w == ca.as_slice()) {
        bytes.extend_from_slice(&ca);
    }
    std::fs::write(out, bytes).map_err(|e| TrustError::Write(out.to_path_buf(), e))
}

/// What `leash ca install` covers besides the system store.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reach {
    /// Append the CA to certifi bundles of the host's Python environments.
    pub python_bundles: bool,
}

/// Undoes the runtime changes of an earlier install (in reverse order).
fn undo_runtimes(ca_dir: &Path, out: &mut String) -> Result<(), TrustError> {
    let m = manifest::Manifest::load(ca_dir)?;
    for entry in m.entries.iter().rev() {
        out.push_str(&runtimes::undo(entry)?);
        out.push('\n');
    }
    manifest::Manifest::clear(ca_dir)
}

/// Puts `certs` (PEM; the current CA first, then retired ones still in
/// their grace period) in the system store, replacing what Leash put there
/// before, and into the runtimes that keep their own stores (see
/// `runtimes`); every change is listed in the returned text and recorded
/// in `ca_dir` for uninstall.
pub fn install(ca_dir: &Path, certs: &[String], reach: Reach) -> Result<String, TrustError> {
    let store = store()?;
    let mut out = String::new();
    // A second install starts from the machine as it was.
    undo_runtimes(ca_dir, &mut String::new())?;
    for old in installed_anchors(store) {
        std::fs::remove_file(&old).map_err(|e| TrustError::Write(old.clone(), e))?;
    }
    let mut m = manifest::Manifest::default();
    // Java stores are copied before the system store's update, which may
    // touch them (a distribution hook).
    let jdks = runtimes::JdkStores::back_up(&m, ca_dir)?;
    let anchors = anchor_paths(store, certs.len());
    for (path, pem) in anchors.iter().zip(certs) {
        std::fs::write(path, pem).map_err(|e| TrustError::Write(path.clone(), e))?;
    }
    update(store)?;
    let retired = certs.len().saturating_sub(1);
    let _ = write!(
        out,
        "Added the organisation CA{also} to the system trust store ({anchor}; bundle {bundle}).\nRuntimes, for every process started from now on:\n",
        also = if retired > 0 {
            format!(" and {retired} retired CA(s) still in their grace period")
        } else {
            String::new()
        },
        anchor = store.anchor,
        bundle = store.bundle,
    );
    let result = (|| {
        runtimes::environment(&mut m, ca_dir, Path::new(store.bundle), &mut out)?;
        jdks.import(&mut m, &anchors, &mut out)?;
        if reach.python_bundles {
            runtimes::python_bundles(&mut m, ca_dir, certs, &mut out)?;
        }
        Ok::<_, TrustError>(())
    })();
    // Whatever was done is recorded, even if a later step failed.
    m.save(ca_dir)?;
    result?;
    if !reach.python_bundles {
        out.push_str("  Python certifi bundles: left alone (the variables above cover requests and httpx; `--python-bundles` also appends the CA to them)\n");
    }
    out.push_str("Already running processes keep their old environment: restart them (and `systemctl daemon-reexec` for services). Check with `leash ca check`.\n");
    Ok(out)
}

/// Removes the CA from the system store and undoes every runtime change
/// recorded in `ca_dir` by `install`.
pub fn uninstall(ca_dir: &Path) -> Result<String, TrustError> {
    let store = store()?;
    let mut out = String::new();
    undo_runtimes(ca_dir, &mut out)?;
    let installed = installed_anchors(store);
    if installed.is_empty() {
        let _ = writeln!(
            out,
            "{} was not installed in the system store.",
            store.anchor
        );
        return Ok(out);
    }
    for path in installed {
        std::fs::remove_file(&path).map_err(|e| TrustError::Write(path.clone(), e))?;
    }
    update(store)?;
    let _ = writeln!(out, "Removed {} from the system trust store.", store.anchor);
    Ok(out)
}
