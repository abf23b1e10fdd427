//! The virtual key store: one JSON file, written atomically (a temporary
//! file, fsync, rename), holding for each key its id, team and limits and an
//! HMAC-SHA256 of the key under a server secret — never the key.
//!
//! Why an HMAC and not a slow password hash: a key is 32 random bytes
//! (256 bits), so there is nothing for a slow hash to protect against
//! guessing; what matters is that a stolen store is useless on its own (the
//! secret lives in its own 0600 file) and that checking a key costs
//! microseconds on every request. The check is constant-time.
//!
//! Key format: `lsk_<id>_<secret>`: the id (12 hex characters) is public
//! (audit records and the console show it); the secret is 43 base64url
//! characters.

use std::{
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::pipeline::budget::Period;

const PREFIX: &str = "lsk_";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} is not a key store: {1}")]
    Parse(PathBuf, serde_json::Error),
    #[error("{0} {1}")]
    Unsafe(PathBuf, &'static str),
    #[error("no key with id `{0}`")]
    NoSuchKey(String),
    #[error("cannot make random bytes: {0}")]
    Random(String),
    #[error("key store in PostgreSQL: {0}")]
    Postgres(String),
    #[error("key store task failed: {0}")]
    Task(String),
}

/// One virtual key as stored: everything but the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    #[serde(flatten)]
    pub limits: Limits,
    pub created: u64,
    /// Unix seconds of the revocation.
    #[serde(default)]
    pub revoked: Option<u64>,
    /// HMAC-SHA256 (hex) of the whole key under the server secret.
    pub digest: String,
}

impl KeyRecord {
    /// `active`, `revoked` or `expired` at `now`.
    pub fn state(&self, now: u64) -> &'static str {
        if self.revoked.is_some() {
            "revoked"
        } else if self.limits.expires.is_some_and(|t| t <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

/// One key's use: spend since `since` (the start of its budget period, unix
/// seconds) and its last use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Use {
    pub since: u64,
    pub usd: f64,
    pub last_used: u64,
}

impl Use {
    /// Both counts together: spend of the later period (added when the
    /// same), the later last use.
    #[must_use]
    pub fn merge(self, other: Self) -> Self {
        let usd = match self.since.cmp(&other.since) {
            std::cmp::Ordering::Equal => self.usd + other.usd,
            std::cmp::Ordering::Greater => self.usd,
            std::cmp::Ordering::Less => other.usd,
        };
        Self {
            since: self.since.max(other.since),
            usd,
            last_used: self.last_used.max(other.last_used),
        }
    }
}

/// What a key may do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub team: String,
    /// Model globs the key may call (`[]`: any).
    #[serde(default)]
    pub models: Vec<String>,
    /// Routes (`routes:` names) the key may call; `[]`: any request. A key
    /// with routes can call nothing else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Requests per minute (`None`: no limit).
    #[serde(default)]
    pub rate_per_min: Option<u32>,
    /// Tokens (input + output, as the providers report them) per minute.
    #[serde(default)]
    pub tokens_per_min: Option<u64>,
    /// Spend limit (USD) per `budget_period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<Period>,
    /// Unix seconds after which the key is refused.
    #[serde(default)]
    pub expires: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Store {
    pub version: u32,
    pub keys: Vec<KeyRecord>,
}

/// The server secret the digests are made with.
pub struct Secret(ring::hmac::Key);

impl Secret {
    /// Reads the secret file, creating it (0600, 32 random bytes) when
    /// `create` and it does not exist. A file others can read is refused.
    pub fn load(path: &Path, create: bool) -> Result<Self, StoreError> {
        if create && !path.exists() {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| StoreError::Random(e.to_string()))?;
            let text = crate::hex::encode(&bytes);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Io(path.to_owned(), e))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| StoreError::Io(path.to_owned(), e))?;
        }
        let meta = std::fs::metadata(path).map_err(|e| StoreError::Io(path.to_owned(), e))?;
        if meta.mode() & 0o077 != 0 {
            return Err(StoreError::Unsafe(
                path.to_owned(),
                "is readable by others: make it 0600",
            ));
        }
        if meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(StoreError::Unsafe(
                path.to_owned(),
                "is owned by another user than the one Leash runs as",
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| StoreError::Io(path.to_owned(), e))?;
        Ok(Self(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            text.trim().as_bytes(),
        )))
    }

    fn digest(&self, key: &str) -> String {
        crate::hex::encode(ring::hmac::sign(&self.0, key.as_bytes()).as_ref())
    }

    /// Whether `key` is the one `digest` was made of (constant time).
    pub fn verify(&self, key: &str, digest: &str) -> bool {
        let Some(tag) = unhex(digest) else {
            return false;
        };
        ring::hmac::verify(&self.0, key.as_bytes(), &tag).is_ok()
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The JSON in `path`; `None` when there is no such file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Parse(path.to_owned(), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io(path.to_owned(), e)),
    }
}

/// Writes `bytes` to `path` atomically (a 0600 temporary file beside it,
/// fsync, rename, the directory synced): never a half-written file.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("keys"),
        std::process::id()
    ));
    let io = |e| StoreError::Io(tmp.clone(), e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::Io(path.to_owned(), e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The id of a presented key, if it has the format of one.
pub fn id_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) && secret.len() >= 32)
        .then_some(id)
}

impl Store {
    /// Reads the store (an absent file is an empty store).
    pub fn load(path: &Path) -> Result<Self, StoreError> {
        Ok(read_json(path)?.unwrap_or(Self {
            version: 1,
            keys: Vec::new(),
        }))
    }

    /// Writes the store atomically (0600).
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let text =
            serde_json::to_vec_pretty(self).map_err(|e| StoreError::Parse(path.to_owned(), e))?;
        write_private(path, &text)
    }

    /// Adds a key; returns it (the only time it exists outside the caller).
    pub fn create(
        &mut self,
        secret: &Secret,
        limits: Limits,
    ) -> Result<(String, KeyRecord), StoreError> {
        let mut random = [0u8; 38];
        getrandom::fill(&mut random).map_err(|e| StoreError::Random(e.to_string()))?;
        let id = crate::hex::encode(&random[..6]);
        let key = format!(
            "{PREFIX}{id}_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&random[6..])
        );
        let record = KeyRecord {
            id,
            limits,
            created: now_secs(),
            revoked: None,
            digest: secret.digest(&key),
        };
        self.keys.push(record.clone());
        Ok((key, record))
    }

    pub fn revoke(&mut self, id: &str) -> Result<(), StoreError> {
        let k = self
            .keys
            .iter_mut()
            .find(|k| k.id == id)
            .ok_or_else(|| StoreError::NoSuchKey(id.to_owned()))?;
        k.revoked.get_or_insert_with(now_secs);
        Ok(())
    }

    /// Revokes `id` and makes a new key with the same limits.
    pub fn rotate(&mut self, secret: &Secret, id: &str) -> Result<(String, KeyRecord), StoreError> {
        let old = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .cloned()
            .ok_or_else(|| StoreError::NoSuchKey(id.to_owned()))?;
        self.revoke(id)?;
        self.create(secret, old.limits)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn a_key_is_checked_by_its_digest_and_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::load(&dir.path().join("s"), true).unwrap();
        let mut store = Store::default();
        let (key, rec) = store
            .create(
                &secret,
                Limits {
                    team: "research".into(),
                    ..Limits::default()
                },
            )
            .unwrap();
        assert_eq!(id_of(&key), Some(rec.id.as_str()));
        assert!(secret.verify(&key, &rec.digest));
        assert!(!secret.verify(&format!("{key}x"), &rec.digest));
        let path = dir.path().join("keys.json");
        store.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let secret_part = key.splitn(3, '_').nth(2).unwrap();
        assert!(!text.contains(secret_part));
        assert_eq!(Store::load(&path).unwrap().keys, store.keys);
        // Another secret does not verify it.
        let other = Secret::load(&dir.path().join("t"), true).unwrap();
        assert!(!other.verify(&key, &rec.digest));
    }

    #[test]
    fn revoke_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::load(&dir.path().join("s"), true).unwrap();
        let mut store = Store::default();
        let (_, rec) = store.create(&secret, Limits::default()).unwrap();
        let (new, fresh) = store.rotate(&secret, &rec.id).unwrap();
        assert!(store.keys[0].revoked.is_some());
        assert!(secret.verify(&new, &fresh.digest));
        assert!(matches!(
            store.revoke("nope"),
            Err(StoreError::NoSuchKey(_))
        ));
    }

    #[test]
    fn use_of_the_later_period_counts() {
        let a = Use {
            since: 10,
            usd: 1.0,
            last_used: 12,
        };
        let b = Use {
            since: 10,
            usd: 0.5,
            last_used: 11,
        };
        assert_eq!(
            a.merge(b),
            Use {
                since: 10,
                usd: 1.5,
                last_used: 12
            }
        );
        let next = Use {
            since: 20,
            usd: 0.25,
            last_used: 21,
        };
        assert_eq!(a.merge(next), next);
        assert_eq!(next.merge(a), next);
    }
}
