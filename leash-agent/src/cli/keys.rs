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
        let c = Config::load(Some(config), &Overrides::default())?;
        let backend = match c.auth.postgres {
            Some(url) => Backend::Postgres(url),
            None => Backend::File(c.auth.keys_file),
        };
        Ok((backend, c.auth.secret_file))
    }
}

impl Backend {
    fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?)
    }

    fn load(&self) -> anyhow::Result<Store> {
        Ok(match self {
            Self::File(path) => Store::load(path)?,
            Self::Postgres(url) => Self::runtime()?.block_on(async {
                let client = shared::connect(url).await?;
                shared::load(&client).await
            })?,
        })
    }

    /// Writes the store; for PostgreSQL, the records `changed` names.
    fn save(&self, store: &Store, changed: &[&str]) -> anyhow::Result<()> {
        match self {
            Self::File(path) => store.save(path)?,
            Self::Postgres(url) => Self::runtime()?.block_on(async {
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

pub fn command(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create {
            store,
            team,
            models,
            rate,
            tokens,
            expires,
        } => {
            if !crate::pipeline::team::valid_team(&team) {
                bail!("--team: 1-64 of A-Z a-z 0-9 . _ -");
            }
            if let Err(e) = crate::field::globs(&models) {
                bail!("--models: {e}");
            }
            let expires = expires
                .as_deref()
                .map(duration_secs)
                .transpose()?
                .map(|s| now_secs() + s);
            let (backend, secret) = store.backend()?;
            let secret = Secret::load(&secret, true)?;
            let mut s = backend.load()?;
            s.version = 1;
            let (key, rec) = s.create(
                &secret,
                Limits {
                    team,
                    models,
                    rate_per_min: rate,
                    tokens_per_min: tokens,
                    expires,
                },
            )?;
            backend.save(&s, &[&rec.id])?;
            eprintln!(
                "created key {} for team {} in {} (shown once: store it now)",
                rec.id,
                rec.team,
                backend.name()
            );
            println!("{key}");
        }
        KeysCommand::List { store } => {
            let (backend, _) = store.backend()?;
            let now = now_secs();
            println!("id\tteam\tmodels\trate/min\ttokens/min\texpires\tstate");
            for k in backend.load()?.keys {
                let state = if k.revoked.is_some() {
                    "revoked"
                } else if k.expires.is_some_and(|t| t <= now) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{state}",
                    k.id,
                    k.team,
                    if k.models.is_empty() {
                        "*".to_owned()
                    } else {
                        k.models.join(",")
                    },
                    k.rate_per_min.map_or("-".to_owned(), |r| r.to_string()),
                    k.tokens_per_min.map_or("-".to_owned(), |r| r.to_string()),
                    k.expires.map_or("-".to_owned(), |t| t.to_string()),
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
