//! The keys a gateway knows and what each has done: the store (a file the
//! `leash keys` commands write, or the PostgreSQL table every replica
//! shares), followed so a revocation holds within a second; and each key's
//! use — spend in its budget period and when it was last used — kept
//! beside the store (`<keys_file>.usage`, or the `leash_key_usage` table
//! every replica adds to). The `keys` module checks requests against it;
//! the console lists it and revokes from it.
//!
//! Use is counted when a call finishes, so calls in flight at the same
//! moment can take a key a little past its budget (by at most their cost).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use globset::GlobSet;

use super::{
    AuthConfig, shared,
    store::{KeyRecord, Secret, Store, StoreError, Use, now_secs},
};

/// How often the store is looked at, and use written out.
pub const KEEP_EVERY: Duration = Duration::from_millis(250);

type Uses = HashMap<String, Use>;

fn merge_into(into: &mut Uses, from: Uses) {
    for (id, u) in from {
        let e = into.entry(id).or_default();
        *e = e.merge(u);
    }
}

/// Use as this replica knows it: what the store holds (`base`), what is
/// being written (`in_flight`) and what is not yet (`pending`).
#[derive(Default)]
struct Ledger {
    base: Uses,
    in_flight: Uses,
    pending: Uses,
}

impl Ledger {
    fn of(&self, id: &str) -> Use {
        [&self.base, &self.in_flight, &self.pending]
            .into_iter()
            .filter_map(|m| m.get(id).copied())
            .fold(Use::default(), Use::merge)
    }
}

/// The key store as read: records by id, with compiled model globs.
pub struct Loaded {
    modified: Option<SystemTime>,
    pub keys: HashMap<String, (KeyRecord, Option<GlobSet>)>,
    /// False until a shared store was read once (requests get 503).
    pub ready: bool,
}

impl Loaded {
    fn of(store: Store, modified: Option<SystemTime>) -> Self {
        let keys = store
            .keys
            .into_iter()
            .map(|k| {
                let globs = (!k.limits.models.is_empty())
                    .then(|| crate::field::globs(&k.limits.models).ok())
                    .flatten();
                (k.id.clone(), (k, globs))
            })
            .collect();
        Self {
            modified,
            keys,
            ready: true,
        }
    }
}

enum Backend {
    File { keys: PathBuf, usage: PathBuf },
    Shared { url: String },
}

pub struct Registry {
    backend: Backend,
    pub secret: Secret,
    loaded: ArcSwap<Loaded>,
    ledger: Mutex<Ledger>,
}

fn load_file(path: &Path) -> Result<Loaded, StoreError> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok(Loaded::of(Store::load(path)?, modified))
}

impl Registry {
    /// Opens the store of `config` (a file is read now; PostgreSQL once
    /// `keep` runs).
    pub fn open(config: &AuthConfig) -> Result<Self, StoreError> {
        let secret = Secret::load(&config.secret_file, true)?;
        let (backend, loaded, base) = match &config.postgres {
            None => {
                let mut usage = config.keys_file.clone().into_os_string();
                usage.push(".usage");
                let usage = PathBuf::from(usage);
                let base = super::store::read_json(&usage)?.unwrap_or_default();
                (
                    Backend::File {
                        keys: config.keys_file.clone(),
                        usage,
                    },
                    load_file(&config.keys_file)?,
                    base,
                )
            }
            Some(url) => (
                Backend::Shared { url: url.clone() },
                Loaded {
                    modified: None,
                    keys: HashMap::new(),
                    ready: false,
                },
                Uses::new(),
            ),
        };
        Ok(Self {
            backend,
            secret,
            loaded: ArcSwap::from_pointee(loaded),
            ledger: Mutex::new(Ledger {
                base,
                ..Ledger::default()
            }),
        })
    }

    /// The keys as last read.
    pub fn keys(&self) -> arc_swap::Guard<Arc<Loaded>> {
        self.loaded.load()
    }

    /// Re-reads a key file that changed (one that cannot be read keeps the
    /// last good keys, logged).
    fn reload_file(&self, path: &Path) {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified == self.loaded.load().modified {
            return;
        }
        match load_file(path) {
            Ok(l) => self.loaded.store(Arc::new(l)),
            Err(e) => tracing::error!(error = %e, "key store not reloaded; the previous one stays"),
        }
    }

    /// Key `id`'s use as this replica knows it.
    pub fn usage(&self, id: &str) -> Use {
        self.ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .of(id)
    }

    /// Counts a use of `id` (with its cost, in the period from `since`).
    pub fn record_use(&self, id: &str, since: u64, usd: f64) {
        let u = Use {
            since,
            usd,
            last_used: now_secs(),
        };
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let e = ledger.pending.entry(id.to_owned()).or_default();
        *e = e.merge(u);
    }

    fn take_pending(&self) -> Uses {
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let pending = std::mem::take(&mut ledger.pending);
        ledger.in_flight.clone_from(&pending);
        pending
    }

    /// What was written is now in the store (`base`: the store as read
    /// back, for a shared one) — or, on `None`, goes back to pending.
    fn settle(&self, written: Uses, base: Option<Uses>) {
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        ledger.in_flight.clear();
        match base {
            Some(base) => ledger.base = base,
            None => merge_into(&mut ledger.pending, written),
        }
    }

    /// Keeps the registry in step with its store until it is dropped: the
    /// store is re-read when it changed, and use written out, every
    /// `KEEP_EVERY` (off the request path).
    pub async fn keep(registry: std::sync::Weak<Self>) {
        let mut client = None;
        loop {
            let Some(me) = registry.upgrade() else {
                return;
            };
            match &me.backend {
                Backend::File { keys, usage } => {
                    let (reader, keys) = (Arc::clone(&me), keys.clone());
                    let _ = tokio::task::spawn_blocking(move || reader.reload_file(&keys)).await;
                    me.write_file_usage(usage.clone()).await;
                }
                Backend::Shared { url } => {
                    if client.is_none() {
                        match shared::connect(url).await {
                            Ok(c) => client = Some(c),
                            Err(e) => {
                                tracing::error!(error = %e, "key store unreachable; the last keys read stay");
                            }
                        }
                    }
                    if let Some(c) = &client
                        && let Err(e) = me.sync_shared(c).await
                    {
                        tracing::error!(error = %e, "key store not read; the last keys read stay");
                        client = None;
                    }
                }
            }
            drop(me);
            tokio::time::sleep(KEEP_EVERY).await;
        }
    }

    async fn write_file_usage(&self, path: PathBuf) {
        let written = self.take_pending();
        if written.is_empty() {
            self.settle(written, None);
            return;
        }
        let mut all = self
            .ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .base
            .clone();
        merge_into(&mut all, written.clone());
        let result = tokio::task::spawn_blocking(move || {
            crate::keys::store::write_private(&path, &serde_json::to_vec(&all).unwrap_or_default())
                .map(|()| all)
        })
        .await;
        match result {
            Ok(Ok(all)) => self.settle(written, Some(all)),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "key use not written; kept for the next try");
                self.settle(written, None);
            }
            Err(_) => self.settle(written, None),
        }
    }

    async fn sync_shared(&self, client: &tokio_postgres::Client) -> Result<(), StoreError> {
        let written = self.take_pending();
        if let Err(e) = shared::add_usage(client, written.iter()).await {
            self.settle(written, None);
            return Err(e);
        }
        let base = shared::usage(client).await;
        let keys = shared::load(client).await;
        if let Ok(base) = base {
            self.settle(written, Some(base));
        } else {
            // Written, but not read back: counted as base until next time.
            let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
            ledger.in_flight.clear();
            merge_into(&mut ledger.base, written);
        }
        self.loaded.store(Arc::new(Loaded::of(keys?, None)));
        Ok(())
    }

    /// Revokes key `id` in the store (the console's revoke).
    pub async fn revoke(&self, id: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::File { keys, .. } => {
                let path = keys.clone();
                let id = id.to_owned();
                tokio::task::spawn_blocking(move || {
                    let mut store = Store::load(&path)?;
                    store.revoke(&id)?;
                    store.save(&path)
                })
                .await
                .map_err(|e| StoreError::Task(e.to_string()))??;
                self.reload_file(keys);
            }
            Backend::Shared { url } => {
                let client = shared::connect(url).await?;
                let mut store = shared::load(&client).await?;
                store.revoke(id)?;
                if let Some(k) = store.keys.iter().find(|k| k.id == id) {
                    shared::put(&client, k).await?;
                }
                self.loaded.store(Arc::new(Loaded::of(store, None)));
            }
        }
        Ok(())
    }
}
