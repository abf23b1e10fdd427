//! The collector's config file: a `collector:` section with its NATS
//! consumer, PostgreSQL store and admin listener.

use std::{net::SocketAddr, path::Path};

use serde::Deserialize;

use crate::{
    admin::{self, RawAdmin},
    config::ConfigError,
    field::{self, FieldError, invalid},
    ship::config::{DEFAULT_SUBJECT, NatsConfig, RawNats, batch, stream_subjects},
};

/// `leash collector`: JetStream to PostgreSQL.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub nats: NatsConfig,
    /// The durable consumer all collectors share.
    pub durable: String,
    /// Subjects the stream takes when the collector creates it.
    pub stream_subjects: String,
    pub postgres_url: String,
    pub admin_listen: SocketAddr,
    /// Bearer token of the fleet console's API (`admin.token_file`).
    pub admin_token: Option<String>,
    pub batch: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCollectorFile {
    collector: RawCollector,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCollector {
    nats: RawNats,
    postgres: RawPostgres,
    #[serde(default)]
    admin: RawAdmin,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url: String,
}

impl CollectorConfig {
    /// Reads and validates a collector config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw: RawCollectorFile =
            field::from_yaml(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Ok(Self::validate(raw.collector, base)?)
    }

    fn validate(c: RawCollector, base: &Path) -> Result<Self, FieldError> {
        let nats = NatsConfig::validate(&c.nats, "collector.nats", base)?;
        let durable = c
            .nats
            .durable
            .clone()
            .unwrap_or_else(|| "leash-collector".into());
        if durable.is_empty()
            || !durable
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "collector.nats.durable",
                "letters, digits, `_` and `-` only",
            ));
        }
        let template = c
            .nats
            .subject
            .clone()
            .unwrap_or_else(|| DEFAULT_SUBJECT.into());
        if !c.postgres.url.starts_with("postgres://")
            && !c.postgres.url.starts_with("postgresql://")
        {
            return Err(invalid(
                "collector.postgres.url",
                "must start with postgres://",
            ));
        }
        Ok(Self {
            nats,
            durable,
            stream_subjects: stream_subjects(&template),
            postgres_url: c.postgres.url,
            admin_listen: field::addr(
                "collector.admin.listen",
                c.admin.listen.as_deref(),
                "127.0.0.1:9091",
            )?,
            admin_token: admin::token(
                "collector.admin.token_file",
                base,
                c.admin.token_file.as_deref(),
            )?,
            batch: batch("collector.nats.batch", c.nats.batch)?,
        })
    }
}
