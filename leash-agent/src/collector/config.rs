//! The collector's config file: a `collector:` section with its NATS
//! consumer, PostgreSQL store and admin listener.

use std::path::Path;

use serde::Deserialize;

use crate::{
    admin::{AdminConfig, RawAdmin},
    config::ConfigError,
    field::{self, FieldError, invalid},
    ship::config::{DEFAULT_SUBJECT, NatsConfig, RawNats, batch, stream_subjects},
};

const DAY: std::time::Duration = std::time::Duration::from_hours(24);

/// `leash collector`: JetStream to PostgreSQL.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub nats: NatsConfig,
    /// The durable consumer all collectors share.
    pub durable: String,
    /// Subjects the stream takes when the collector creates it.
    pub stream_subjects: String,
    /// Which token of a record's subject names its host (`{host}` in the
    /// subject template): the host a record is stored under comes from the
    /// subject, which NATS permissions tie to that host's credentials, never
    /// from anything the publisher writes into the message.
    pub host_token: usize,
    pub postgres_url: String,
    /// The fleet console's admin listener and token (its own token file,
    /// when none is configured, beside the config file).
    pub admin: AdminConfig,
    pub batch: usize,
    /// How long a fetched message may go unacknowledged before JetStream
    /// gives it to another collector (a collector that died mid-batch).
    /// Set when the durable consumer is created.
    pub ack_wait: std::time::Duration,
    /// How long captured content is kept in the store, per class
    /// (`collector.content.retention`); records on `leash_legal_hold` stay.
    pub content_retention: crate::capture::store::Retention,
    /// How long records are kept in the store (`collector.retention`,
    /// whole UTC days, at least one); `None`: for ever. Records on
    /// `leash_legal_hold` stay.
    pub retention: Option<std::time::Duration>,
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
    #[serde(default)]
    content: RawContent,
    ack_wait_secs: Option<u64>,
    retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContent {
    #[serde(default)]
    retention: crate::capture::RawRetention,
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
            host_token: template
                .split('.')
                .position(|t| t == "{host}")
                .ok_or_else(|| {
                    invalid("collector.nats.subject", "must name `{host}` as one token")
                })?,
            postgres_url: c.postgres.url,
            admin: AdminConfig::validate(
                &c.admin,
                "collector.admin",
                base,
                "127.0.0.1:9091",
                base,
            )?,
            batch: batch("collector.nats.batch", c.nats.batch)?,
            ack_wait: field::secs("collector.ack_wait_secs", c.ack_wait_secs, 30)?,
            content_retention: c
                .content
                .retention
                .validate("collector.content.retention")?,
            retention: match c.retention.as_deref() {
                None => None,
                Some(text) => {
                    let d = field::duration("collector.retention", Some(text), DAY)?;
                    if d < DAY {
                        return Err(invalid(
                            "collector.retention",
                            "records are removed by whole days: at least 1d",
                        ));
                    }
                    Some(d)
                }
            },
        })
    }
}
