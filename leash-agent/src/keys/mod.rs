//! Virtual keys (`auth:`): applications hold a Leash key (`lsk_…`) instead
//! of a provider's; the `keys` pipeline module authenticates it (in
//! whatever header the SDK uses: `Authorization: Bearer`, `x-api-key`,
//! `x-goog-api-key`, or `?key=`), applies its limits (team, models, rate,
//! expiry) and has the provider's real credential (`auth.inject`) sent
//! upstream in its place. `auth.mode`: `passthrough` (the default: provider
//! keys from clients are forwarded, no virtual keys), `virtual` (only
//! virtual keys), `both`.
//!
//! The store (`store`) is a file the `leash keys` commands write
//! atomically; the module re-reads it when it changes (checked at most
//! every 250 ms), so a revocation holds within a second.

pub mod shared;
pub mod store;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use globset::GlobSet;
use http::StatusCode;
use serde::Deserialize;

use self::store::{KeyRecord, Secret, Store, StoreError};
use crate::{
    credentials::{self, Credential, Credentials},
    field::{FieldError, invalid, resolve},
    pipeline::{
        CredentialAction, Exchange, Flow, Module, ModuleError, ProxyRequest, Rejection, RetryAfter,
    },
    provider::{ErrorCode, Providers},
    record::AuditRecord,
};

pub const NAME: &str = "keys";
/// How often the store file is looked at for changes.
const RELOAD_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    Passthrough,
    Virtual,
    Both,
}

/// `auth` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    mode: Option<AuthMode>,
    keys_file: Option<PathBuf>,
    /// A PostgreSQL URL: the key store every replica shares (instead of
    /// `keys_file`).
    postgres: Option<String>,
    secret_file: Option<PathBuf>,
    /// Provider name → credential name: what a virtual key's request to
    /// that provider carries upstream.
    #[serde(default)]
    inject: BTreeMap<String, String>,
}

/// The `auth` section.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub keys_file: PathBuf,
    pub postgres: Option<String>,
    pub secret_file: PathBuf,
    pub inject: BTreeMap<String, Credential>,
}

impl AuthConfig {
    pub fn validate(
        raw: RawAuth,
        base: &Path,
        providers: &Providers,
        credentials: &Credentials,
    ) -> Result<Self, FieldError> {
        if raw.postgres.is_some() && raw.keys_file.is_some() {
            return Err(invalid(
                "auth.postgres",
                "give keys_file or postgres, not both",
            ));
        }
        let keys_file = resolve(base, raw.keys_file.unwrap_or_else(|| "keys.json".into()));
        let secret_file = raw.secret_file.map_or_else(
            || {
                let mut name = keys_file.clone().into_os_string();
                name.push(".secret");
                PathBuf::from(name)
            },
            |p| resolve(base, p),
        );
        let mut inject = BTreeMap::new();
        for (provider, cred) in raw.inject {
            if providers.get(&provider).is_none() {
                return Err(invalid(
                    format!("auth.inject.{provider}"),
                    "not a configured provider",
                ));
            }
            let c = credentials.get(&cred).ok_or_else(|| {
                invalid(
                    format!("auth.inject.{provider}"),
                    format!("unknown credential `{cred}` (see `credentials:`)"),
                )
            })?;
            inject.insert(provider, c.clone());
        }
        Ok(Self {
            mode: raw.mode.unwrap_or_default(),
            postgres: raw.postgres,
            keys_file,
            secret_file,
            inject,
        })
    }
}

/// The key store as the module reads it: records by id, with compiled
/// model globs.
struct Loaded {
    modified: Option<SystemTime>,
    keys: HashMap<String, (KeyRecord, Option<GlobSet>)>,
    /// False until a shared store was read once (requests get 503).
    ready: bool,
}

impl Loaded {
    fn of(store: Store, modified: Option<SystemTime>) -> Self {
        let keys = store
            .keys
            .into_iter()
            .map(|k| {
                let globs = (!k.models.is_empty())
                    .then(|| crate::field::globs(&k.models).ok())
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

/// The id of the virtual key an exchange was made with (for its record).
#[derive(Debug, Clone)]
struct KeyId(String);

pub struct KeysModule {
    mode: AuthMode,
    path: PathBuf,
    secret: Secret,
    inject: BTreeMap<String, Credential>,
    loaded: Arc<ArcSwap<Loaded>>,
    /// The store is PostgreSQL (followed by a task), not the file.
    shared: bool,
    checked: Mutex<Instant>,
    /// Per key: the minute (since the epoch) and requests in it.
    rates: Mutex<HashMap<String, (u64, u32)>>,
    /// Per key: the minute and the tokens its finished calls used in it.
    tokens: Mutex<HashMap<String, (u64, u64)>>,
}

fn load(path: &Path) -> Result<Loaded, StoreError> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok(Loaded::of(Store::load(path)?, modified))
}

/// Keeps `loaded` in step with the shared store until the module goes.
async fn follow_shared(url: String, loaded: std::sync::Weak<ArcSwap<Loaded>>) {
    let mut client = None;
    loop {
        let Some(target) = loaded.upgrade() else {
            return;
        };
        if client.is_none() {
            match shared::connect(&url).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "key store unreachable; the last keys read stay");
                }
            }
        }
        if let Some(c) = &client {
            match shared::load(c).await {
                Ok(store) => target.store(Arc::new(Loaded::of(store, None))),
                Err(e) => {
                    tracing::error!(error = %e, "key store not read; the last keys read stay");
                    client = None;
                }
            }
        }
        drop(target);
        tokio::time::sleep(RELOAD_EVERY).await;
    }
}

fn refuse(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Flow {
    Flow::Reject(Rejection {
        status,
        code,
        message: message.into(),
    })
}

impl KeysModule {
    pub fn new(config: &AuthConfig) -> Result<Self, StoreError> {
        let secret = Secret::load(&config.secret_file, true)?;
        let loaded = match &config.postgres {
            None => Arc::new(ArcSwap::from_pointee(load(&config.keys_file)?)),
            Some(url) => {
                let loaded = Arc::new(ArcSwap::from_pointee(Loaded {
                    modified: None,
                    keys: HashMap::new(),
                    ready: false,
                }));
                let runtime = tokio::runtime::Handle::try_current()
                    .map_err(|e| StoreError::Postgres(e.to_string()))?;
                runtime.spawn(follow_shared(url.clone(), Arc::downgrade(&loaded)));
                loaded
            }
        };
        Ok(Self {
            mode: config.mode,
            path: config.keys_file.clone(),
            secret,
            inject: config.inject.clone(),
            shared: config.postgres.is_some(),
            loaded,
            checked: Mutex::new(Instant::now()),
            rates: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Re-reads the store if it changed (looked at every `RELOAD_EVERY`);
    /// a store that cannot be read keeps the last good one (logged).
    fn refresh(&self) {
        if self.shared {
            return;
        }
        {
            let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
            if checked.elapsed() < RELOAD_EVERY {
                return;
            }
            *checked = Instant::now();
        }
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified == self.loaded.load().modified {
            return;
        }
        match load(&self.path) {
            Ok(l) => self.loaded.store(Arc::new(l)),
            Err(e) => tracing::error!(error = %e, "key store not reloaded; the previous one stays"),
        }
    }

    /// Counts a request of key `id`; false past `limit` this minute.
    fn within_rate(&self, id: &str, limit: u32) -> Result<(), u64> {
        let now = store::now_secs();
        let minute = now / 60;
        let mut rates = self.rates.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = rates.entry(id.to_owned()).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        if entry.1 >= limit {
            return Err(60 - now % 60);
        }
        entry.1 += 1;
        Ok(())
    }

    /// Whether key `id` still has tokens this minute (calls in flight are
    /// counted once they finish); else the seconds to wait.
    fn within_tokens(&self, id: &str, limit: u64) -> Result<(), u64> {
        let now = store::now_secs();
        let tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        match tokens.get(id) {
            Some((minute, used)) if *minute == now / 60 && *used >= limit => Err(60 - now % 60),
            _ => Ok(()),
        }
    }

    fn check(&self, ex: &mut Exchange, key: &str) -> Flow {
        let unauthorized = |why: &str| {
            refuse(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                format!("leash: {why}"),
            )
        };
        let Some(id) = store::id_of(key) else {
            return unauthorized("not a Leash key");
        };
        self.refresh();
        let loaded = self.loaded.load();
        if !loaded.ready {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unauthorized,
                "leash: the key store has not been read yet",
            );
        }
        let Some((record, models)) = loaded.keys.get(id) else {
            return unauthorized("unknown key");
        };
        if !self.secret.verify(key, &record.digest) {
            return unauthorized("unknown key");
        }
        if record.revoked.is_some() {
            return unauthorized(&format!("key {id} was revoked"));
        }
        if record.expires.is_some_and(|t| t <= store::now_secs()) {
            return unauthorized(&format!("key {id} expired"));
        }
        ex.ext.insert(KeyId(record.id.clone()));
        ex.caller.team = Some(record.team.clone());
        if let Some(models) = models
            && !ex.model.as_deref().is_some_and(|m| models.is_match(m))
        {
            return refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::KeyNotAllowed,
                format!(
                    "leash: key {id} may not call model `{}`",
                    ex.model.as_deref().unwrap_or("?")
                ),
            );
        }
        if let Some(limit) = record.tokens_per_min
            && let Err(wait) = self.within_tokens(id, limit)
        {
            ex.ext.insert(RetryAfter(wait));
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!("leash: key {id} used its {limit} tokens this minute"),
            );
        }
        if let Some(limit) = record.rate_per_min
            && let Err(wait) = self.within_rate(id, limit)
        {
            ex.ext.insert(RetryAfter(wait));
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!("leash: key {id} is over its {limit} requests a minute"),
            );
        }
        // The provider's real key goes upstream (a route target's own, set
        // before, wins).
        if !matches!(
            ex.ext.get::<CredentialAction>(),
            Some(CredentialAction::Inject(_))
        ) {
            match self.inject.get(&ex.provider.name) {
                Some(c) => {
                    ex.ext.insert(CredentialAction::Inject(c.clone()));
                }
                None => {
                    return refuse(
                        StatusCode::FORBIDDEN,
                        ErrorCode::KeyNotAllowed,
                        format!(
                            "leash: no credential is configured for provider `{}` (auth.inject)",
                            ex.provider.name
                        ),
                    );
                }
            }
        }
        Flow::Continue
    }
}

#[async_trait]
impl Module for KeysModule {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn request_filter(
        &self,
        ex: &mut Exchange,
        req: &mut ProxyRequest,
    ) -> Result<Flow, ModuleError> {
        if self.mode == AuthMode::Passthrough {
            return Ok(Flow::Continue);
        }
        match credentials::presented_key(&req.head.headers, &req.head.uri) {
            Some(k) if store::id_of(&k).is_some() => Ok(self.check(ex, &k)),
            _ if self.mode == AuthMode::Both => Ok(Flow::Continue),
            _ => Ok(refuse(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "leash: this gateway takes Leash keys (lsk_…) only",
            )),
        }
    }

    fn logging(&self, ex: &Exchange, record: &mut AuditRecord) {
        if let Some(KeyId(id)) = ex.ext.get::<KeyId>() {
            record.key_id = Some(id.clone());
        }
    }

    /// Counts the tokens a key's finished call used (the provider's usage).
    fn finished(&self, ex: &Exchange, record: &AuditRecord) {
        let (Some(KeyId(id)), Some(usage)) = (ex.ext.get::<KeyId>(), record.usage) else {
            return;
        };
        let minute = store::now_secs() / 60;
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = tokens.entry(id.clone()).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 += usage.input_tokens + usage.output_tokens;
    }
}
