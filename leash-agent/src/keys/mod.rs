//! Virtual keys (`auth:`): applications hold a Leash key (`lsk_…`) instead
//! of a provider's; the `keys` pipeline module authenticates it (in
//! whatever header the SDK uses: `Authorization: Bearer`, `x-api-key`,
//! `x-goog-api-key`, or `?key=`), applies its limits (team, models, rate,
//! expiry) and has the provider's real credential (`auth.inject`) sent
//! upstream in its place. `auth.mode`: `passthrough` (the default: provider
//! keys from clients are forwarded, no virtual keys), `virtual` (only
//! virtual keys), `both`.
//!
//! The keys and their use are the registry's (`registry`): the store is a
//! file the `leash keys` commands write atomically, or a PostgreSQL table
//! replicas share, re-read within 250 ms of a change, so a revocation holds
//! within a second.

pub mod registry;
pub mod shared;
pub mod store;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use http::StatusCode;
use serde::Deserialize;

use self::{registry::Registry, store::Limits};
use crate::{
    credentials::{self, Credential, Credentials},
    field::{FieldError, invalid, resolve},
    pipeline::{
        CredentialAction, Exchange, Filtered, Flow, Module, ProxyRequest, Rejection, RetryAfter,
        budget,
    },
    pricing::PriceTable,
    provider::{ErrorCode, Providers},
    record::AuditRecord,
};

pub const NAME: &str = "keys";

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

/// The id of the virtual key an exchange was made with (for its record).
#[derive(Debug, Clone)]
struct KeyId {
    id: String,
    /// Start of the key's budget period (unix seconds).
    since: u64,
}

pub struct KeysModule {
    mode: AuthMode,
    registry: Arc<Registry>,
    prices: Arc<PriceTable>,
    inject: BTreeMap<String, Credential>,
    /// Per key: the minute (since the epoch) and requests in it.
    rates: Mutex<HashMap<String, (u64, u32)>>,
    /// Per key: the minute and the tokens its finished calls used in it.
    tokens: Mutex<HashMap<String, (u64, u64)>>,
}

fn refuse(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Flow {
    Flow::Reject(Rejection {
        status,
        code,
        message: message.into(),
    })
}

impl KeysModule {
    pub fn new(config: &AuthConfig, registry: Arc<Registry>, prices: Arc<PriceTable>) -> Self {
        Self {
            mode: config.mode,
            registry,
            prices,
            inject: config.inject.clone(),
            rates: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// A key limited to routes may call those only.
    fn outside_routes(ex: &Exchange, id: &str, routes: &[String]) -> Option<Flow> {
        if routes.is_empty() {
            return None;
        }
        let route = ex.unified.as_ref().and_then(|u| u.route.as_deref());
        if route.is_some_and(|r| routes.iter().any(|allowed| allowed == r)) {
            return None;
        }
        Some(refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::KeyNotAllowed,
            format!(
                "leash: key {id} may call route{} {} only",
                if routes.len() == 1 { "" } else { "s" },
                routes.join(", ")
            ),
        ))
    }

    /// A key whose budget is spent this period, or whose call could not be
    /// priced against it, is refused.
    fn over_budget(&self, ex: &Exchange, id: &str, limits: &Limits, since: u64) -> Option<Flow> {
        let limit = limits.budget_usd?;
        if ex
            .model
            .as_deref()
            .is_none_or(|m| self.prices.lookup(m).is_none())
        {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::BudgetExceeded,
                format!(
                    "leash: model `{}` has no price, so key {id}'s budget cannot account for it",
                    ex.model.as_deref().unwrap_or("?")
                ),
            ));
        }
        let used = self.registry.usage(id);
        (used.since == since && used.usd >= limit).then(|| {
            refuse(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::BudgetExceeded,
                format!(
                    "leash: key {id} has spent its budget of {limit} USD this {}",
                    limits
                        .budget_period
                        .unwrap_or(budget::Period::Month)
                        .as_str()
                ),
            )
        })
    }

    /// A key over its tokens or requests this minute is refused (429,
    /// `retry-after`).
    fn over_rate(&self, ex: &mut Exchange, id: &str, limits: &Limits) -> Option<Flow> {
        if let Some(limit) = limits.tokens_per_min
            && let Err(wait) = self.within_tokens(id, limit)
        {
            ex.ext.insert(RetryAfter(wait));
            return Some(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!("leash: key {id} used its {limit} tokens this minute"),
            ));
        }
        if let Some(limit) = limits.rate_per_min
            && let Err(wait) = self.within_rate(id, limit)
        {
            ex.ext.insert(RetryAfter(wait));
            return Some(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!("leash: key {id} is over its {limit} requests a minute"),
            ));
        }
        None
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
        let loaded = self.registry.keys();
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
        if !self.registry.secret.verify(key, &record.digest) {
            return unauthorized("unknown key");
        }
        if record.revoked.is_some() {
            return unauthorized(&format!("key {id} was revoked"));
        }
        let limits = &record.limits;
        if limits.expires.is_some_and(|t| t <= store::now_secs()) {
            return unauthorized(&format!("key {id} expired"));
        }
        let since = budget::period_start(
            limits.budget_period.unwrap_or(budget::Period::Month),
            time::OffsetDateTime::now_utc(),
        )
        .unix_timestamp();
        let since = u64::try_from(since).unwrap_or(0);
        ex.ext.insert(KeyId {
            id: record.id.clone(),
            since,
        });
        self.registry.record_use(id, since, 0.0);
        ex.caller.team = Some(limits.team.clone());
        if let Some(refused) = Self::outside_routes(ex, id, &limits.routes) {
            return refused;
        }
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
        if let Some(refused) = self.over_budget(ex, id, limits, since) {
            return refused;
        }
        if let Some(refused) = self.over_rate(ex, id, limits) {
            return refused;
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

impl Module for KeysModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn request_filter<'a>(
        &'a self,
        ex: &'a mut Exchange,
        req: &'a mut ProxyRequest,
    ) -> Filtered<'a> {
        if self.mode == AuthMode::Passthrough {
            return Filtered::from(Flow::Continue);
        }
        match credentials::presented_key(&req.head.headers, &req.head.uri) {
            Some(k) if store::id_of(&k).is_some() => Filtered::from(self.check(ex, &k)),
            _ if self.mode == AuthMode::Both => Filtered::from(Flow::Continue),
            _ => Filtered::from(refuse(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "leash: this gateway takes Leash keys (lsk_…) only",
            )),
        }
    }

    fn logging(&self, ex: &Exchange, record: &mut AuditRecord) {
        if let Some(k) = ex.ext.get::<KeyId>() {
            record.key_id = Some(k.id.clone());
        }
    }

    /// Counts what a key's finished call cost and the tokens it used (the
    /// provider's usage).
    fn finished(&self, ex: &Exchange, record: &AuditRecord) {
        let Some(KeyId { id, since }) = ex.ext.get::<KeyId>() else {
            return;
        };
        if let Some(usd) = record.cost_usd.filter(|c| *c > 0.0) {
            self.registry.record_use(id, *since, usd);
        }
        let Some(usage) = record.usage else {
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
