//! `leash keys`: create, list, revoke and rotate virtual keys. The key is
//! printed once, by `create` and `rotate`; the store keeps only its digest.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use crate::{
    config::{Config, Overrides},
    keys::{
        shared,
        store::{Limits, Secret, Store, now_secs},
    },
    pipeline::budget::Period,
};

#[derive(Args)]
pub struct StoreArgs {
    /// The key store file (its secret beside it: `<file>.secret`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["config", "postgres"])]
    store: Option<PathBuf>,
    /// The key store in PostgreSQL (shared by gateway replicas); needs
    /// `--secret`.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "config",
        requires = "secret"
    )]
    postgres: Option<String>,
    /// The HMAC secret file (with `--postgres`; every replica reads the same).
    #[arg(long, value_name = "FILE")]
    secret: Option<PathBuf>,
    /// Take the store from this config's `auth` section.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Where the keys are.
enum Backend {
    File(PathBuf),
    Postgres(String),
}

impl StoreArgs {
    /// The store and the secret file.
    fn backend(&self) -> anyhow::Result<(Backend, PathBuf)> {
        if let Some(store) = &self.store {
            let mut secret = store.clone().into_os_string();
            secret.push(".secret");
            return Ok((Backend::File(store.clone()), secret.into()));
        }
        if let (Some(url), Some(secret)) = (&self.postgres, &self.secret) {
            return Ok((Backend::Postgres(url.clone()), secret.clone()));
        }
        let Some(config) = &self.config else {
            bail!("give --store FILE, --postgres URL --secret FILE, or --config FILE");
        };
        let c = Config::load(Some(config), &Overrides::reading())?;
        let backend = match c.auth.postgres {
            Some(url) => Backend::Postgres(url),
            None => Backend::File(c.auth.keys_file),
        };
        Ok((backend, c.auth.secret_file))
    }
}

impl StoreArgs {
    /// With `--config`, route names must be that config's routes.
    fn check_routes(&self, routes: &[String]) -> anyhow::Result<()> {
        let Some(config) = &self.config else {
            return Ok(());
        };
        let c = Config::load(Some(config), &Overrides::reading())?;
        for r in routes {
            if c.routes.get(r).is_none() {
                bail!("--routes: `{r}` is not a route in {}", config.display());
            }
        }
        Ok(())
    }
}

impl Backend {
    fn load(&self) -> anyhow::Result<Store> {
        Ok(match self {
            Self::File(path) => Store::load(path)?,
            Self::Postgres(url) => super::one_thread()?.block_on(async {
                let client = shared::connect(url).await?;
                shared::load(&client).await
            })?,
        })
    }

    /// Writes the store; for PostgreSQL, the records `changed` names.
    fn save(&self, store: &Store, changed: &[&str]) -> anyhow::Result<()> {
        match self {
            Self::File(path) => store.save(path)?,
            Self::Postgres(url) => super::one_thread()?.block_on(async {
                let client = shared::connect(url).await?;
                for k in store
                    .keys
                    .iter()
                    .filter(|k| changed.contains(&k.id.as_str()))
                {
                    shared::put(&client, k).await?;
                }
                Ok::<(), crate::keys::store::StoreError>(())
            })?,
        }
        Ok(())
    }

    fn name(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Postgres(_) => "the PostgreSQL key store".to_owned(),
        }
    }
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a key; it is printed once, on standard output.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// The team the key's requests count for.
        #[arg(long)]
        team: String,
        /// Model globs the key may call (comma separated; default: any).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Routes (`routes:` names, comma separated) the key may call; a
        /// key with routes can call nothing else.
        #[arg(long, value_delimiter = ',')]
        routes: Vec<String>,
        /// Spend limit in USD: `25` (a month), `5/day`, `10/week`, `25/month`.
        #[arg(long)]
        budget: Option<String>,
        /// Requests per minute.
        #[arg(long)]
        rate: Option<u32>,
        /// Tokens (input + output) per minute.
        #[arg(long)]
        tokens: Option<u64>,
        /// Lifetime: `30d`, `12h`, `90m` (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List the keys: id, team, limits, state (never a key).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key by id: refused within a second everywhere the store is read.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        id: String,
    },
    /// Revoke a key and make a new one with the same limits (printed once).
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
        id: String,
    },
}

/// `25`, `5/day`, `10/week`, `25/month`: USD and period (a month when
/// not given).
fn budget_of(text: &str) -> anyhow::Result<(f64, Period)> {
    let (usd, period) = text.split_once('/').unwrap_or((text, "month"));
    let usd: f64 = usd
        .trim()
        .parse()
        .ok()
        .filter(|u: &f64| u.is_finite() && *u >= 0.0)
        .with_context(|| format!("--budget `{text}`: USD must be a number, 0 or more"))?;
    let period = match period.trim() {
        "day" => Period::Day,
        "week" => Period::Week,
        "month" => Period::Month,
        other => bail!("--budget `{text}`: period `{other}` is not day, week or month"),
    };
    Ok((usd, period))
}

/// `30d`, `12h`, `90m`, `45s` in seconds.
fn duration_secs(text: &str) -> anyhow::Result<u64> {
    let (n, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = n
        .parse()
        .with_context(|| format!("`{text}` is not a duration like 30d, 12h, 90m"))?;
    let secs = match unit {
        "d" => n * 86_400,
        "h" => n * 3_600,
        "m" => n * 60,
        "s" => n,
        _ => bail!("`{text}` is not a duration like 30d, 12h, 90m"),
    };
    if secs == 0 {
        bail!("--expires must be positive");
    }
    Ok(secs)
}

/// `leash keys create`: `limits` as given, with the budget and lifetime
/// still as text.
fn create(
    store: &StoreArgs,
    mut limits: Limits,
    budget: Option<&str>,
    expires: Option<&str>,
) -> anyhow::Result<()> {
    if !crate::pipeline::team::valid_team(&limits.team) {
        bail!("--team: 1-64 of A-Z a-z 0-9 . _ -");
    }
    if let Err(e) = crate::field::globs(&limits.models) {
        bail!("--models: {e}");
    }
    store.check_routes(&limits.routes)?;
    if let Some((usd, period)) = budget.map(budget_of).transpose()? {
        limits.budget_usd = Some(usd);
        limits.budget_period = Some(period);
    }
    limits.expires = expires
        .map(duration_secs)
        .transpose()?
        .map(|s| now_secs() + s);
    let (backend, secret) = store.backend()?;
    let secret = Secret::load(&secret, true)?;
    let mut s = backend.load()?;
    s.version = 1;
    let (key, rec) = s.create(&secret, limits)?;
    backend.save(&s, &[&rec.id])?;
    eprintln!(
        "created key {} for team {} in {} (shown once: store it now)",
        rec.id,
        rec.limits.team,
        backend.name()
    );
    println!("{key}");
    Ok(())
}

pub fn command(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create {
            store,
            team,
            models,
            routes,
            budget,
            rate,
            tokens,
            expires,
        } => create(
            &store,
            Limits {
                team,
                models,
                routes,
                rate_per_min: rate,
                tokens_per_min: tokens,
                budget_usd: None,
                budget_period: None,
                expires: None,
            },
            budget.as_deref(),
            expires.as_deref(),
        )?,
        KeysCommand::List { store } => {
            let (backend, _) = store.backend()?;
            let now = now_secs();
            println!("id\tteam\tmodels\troutes\trate/min\ttokens/min\tbudget\texpires\tstate");
            let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
            let all = |v: &[String]| {
                if v.is_empty() {
                    "*".to_owned()
                } else {
                    v.join(",")
                }
            };
            for k in backend.load()?.keys {
                let l = &k.limits;
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    k.id,
                    l.team,
                    all(&l.models),
                    all(&l.routes),
                    dash(l.rate_per_min.map(|r| r.to_string())),
                    dash(l.tokens_per_min.map(|r| r.to_string())),
                    dash(l.budget_usd.map(|b| format!(
                        "{b}/{}",
                        l.budget_period.unwrap_or(Period::Month).as_str()
                    ))),
                    dash(l.expires.map(|t| t.to_string())),
                    k.state(now),
                );
            }
        }
        KeysCommand::Revoke { store, id } => {
            let (backend, _) = store.backend()?;
            let mut s = backend.load()?;
            s.revoke(&id)?;
            backend.save(&s, &[&id])?;
            eprintln!("revoked key {id}");
        }
        KeysCommand::Rotate { store, id } => {
            let (backend, secret) = store.backend()?;
            let secret = Secret::load(&secret, false)?;
            let mut s = backend.load()?;
            let (key, rec) = s.rotate(&secret, &id)?;
            backend.save(&s, &[&id, &rec.id])?;
            eprintln!("revoked key {id}; new key {} (shown once)", rec.id);
            println!("{key}");
        }
    }
    Ok(())
}
