//! `leash keys`: create, list, revoke and rotate virtual keys. The key is
//! printed once, by `create` and `rotate`; the store keeps only its digest.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use crate::{
    config::{Config, Overrides},
    keys::store::{Limits, Secret, Store, now_secs},
};

#[derive(Args)]
pub struct StoreArgs {
    /// The key store file (its secret beside it: `<file>.secret`).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    store: Option<PathBuf>,
    /// Take the store from this config's `auth` section.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl StoreArgs {
    /// The store and secret files.
    fn paths(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        if let Some(store) = &self.store {
            let mut secret = store.clone().into_os_string();
            secret.push(".secret");
            return Ok((store.clone(), secret.into()));
        }
        let Some(config) = &self.config else {
            bail!("give --store FILE or --config FILE");
        };
        let c = Config::load(Some(config), &Overrides::default())?;
        Ok((c.auth.keys_file, c.auth.secret_file))
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
            let (path, secret) = store.paths()?;
            let secret = Secret::load(&secret, true)?;
            let mut s = Store::load(&path)?;
            s.version = 1;
            let (key, rec) = s.create(
                &secret,
                Limits {
                    team,
                    models,
                    rate_per_min: rate,
                    expires,
                },
            )?;
            s.save(&path)?;
            eprintln!(
                "created key {} for team {} in {} (shown once: store it now)",
                rec.id,
                rec.team,
                path.display()
            );
            println!("{key}");
        }
        KeysCommand::List { store } => {
            let (path, _) = store.paths()?;
            let now = now_secs();
            println!("id\tteam\tmodels\trate/min\texpires\tstate");
            for k in Store::load(&path)?.keys {
                let state = if k.revoked.is_some() {
                    "revoked"
                } else if k.expires.is_some_and(|t| t <= now) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{state}",
                    k.id,
                    k.team,
                    if k.models.is_empty() {
                        "*".to_owned()
                    } else {
                        k.models.join(",")
                    },
                    k.rate_per_min.map_or("-".to_owned(), |r| r.to_string()),
                    k.expires.map_or("-".to_owned(), |t| t.to_string()),
                );
            }
        }
        KeysCommand::Revoke { store, id } => {
            let (path, _) = store.paths()?;
            let mut s = Store::load(&path)?;
            s.revoke(&id)?;
            s.save(&path)?;
            eprintln!("revoked key {id}");
        }
        KeysCommand::Rotate { store, id } => {
            let (path, secret) = store.paths()?;
            let secret = Secret::load(&secret, false)?;
            let mut s = Store::load(&path)?;
            let (key, rec) = s.rotate(&secret, &id)?;
            s.save(&path)?;
            eprintln!("revoked key {id}; new key {} (shown once)", rec.id);
            println!("{key}");
        }
    }
    Ok(())
}
