//! What `leash ca install` changed on this machine, so `leash ca uninstall`
//! can undo exactly that: files it created are removed; files it modified
//! are restored byte for byte from a copy taken before (when nobody changed
//! them since; otherwise only Leash's own part is taken out, and the
//! operator is told). Kept in the CA directory (`installed.json`,
//! `install-backup/`), root-only.

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::TrustError;

pub const MANIFEST: &str = "installed.json";
const BACKUPS: &str = "install-backup";

/// How a file was changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Change {
    /// Leash wrote a new file.
    Created,
    /// Leash made a new directory (removed again if empty).
    CreatedDir,
    /// Leash changed an existing file; its earlier bytes are in `backup`.
    Modified { backup: PathBuf },
}

/// One file Leash changed, and its digest right after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: PathBuf,
    #[serde(flatten)]
    pub change: Change,
    pub sha256_after: String,
    /// What the change was, for the operator.
    pub what: String,
}

/// The changes of one install, in order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: Vec<Entry>,
}

pub fn sha256_file(path: &Path) -> Option<String> {
    use sha2::{Digest as _, Sha256};
    let bytes = std::fs::read(path).ok()?;
    Some(crate::hex::encode(&Sha256::digest(&bytes)))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TrustError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| TrustError::Write(path.to_path_buf(), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| TrustError::Write(path.to_path_buf(), e))
}

impl Manifest {
    pub fn load(ca_dir: &Path) -> Result<Self, TrustError> {
        let path = ca_dir.join(MANIFEST);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| TrustError::Manifest(path, e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(TrustError::Write(path, e)),
        }
    }

    pub fn save(&self, ca_dir: &Path) -> Result<(), TrustError> {
        let path = ca_dir.join(MANIFEST);
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| TrustError::Manifest(path.clone(), e.to_string()))?;
        write_private(&path, &bytes)
    }

    /// Takes a copy of `path` before it is modified; returns where.
    pub fn backup(&self, ca_dir: &Path, path: &Path) -> Result<PathBuf, TrustError> {
        self.backup_as(ca_dir, path, &self.entries.len().to_string())
    }

    /// As [`Manifest::backup`], under the name `name`.
    pub fn backup_as(&self, ca_dir: &Path, path: &Path, name: &str) -> Result<PathBuf, TrustError> {
        let dir = ca_dir.join(BACKUPS);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| TrustError::Write(dir.clone(), e))?;
        let copy = dir.join(name);
        let bytes = std::fs::read(path).map_err(|e| TrustError::Write(path.to_path_buf(), e))?;
        write_private(&copy, &bytes)?;
        Ok(copy)
    }

    /// Records a change made to `path`.
    pub fn record(&mut self, path: &Path, change: Change, what: String) {
        self.entries.push(Entry {
            path: path.to_path_buf(),
            change,
            sha256_after: sha256_file(path).unwrap_or_default(),
            what,
        });
    }

    /// Drops the manifest and the copies.
    pub fn clear(ca_dir: &Path) -> Result<(), TrustError> {
        for p in [ca_dir.join(MANIFEST), ca_dir.join(BACKUPS)] {
            let result = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(TrustError::Write(p, e)),
            }
        }
        Ok(())
    }
}
