//! The NATS settings shared by shipping (`audit.ship.nats`) and the
//! collector (`collector.nats`), and the shipping section itself.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::field::{self, FieldError, invalid};

/// Default subject records are published on; `{host}` is the host id.
pub const DEFAULT_SUBJECT: &str = "leash.audit.{host}";
const DEFAULT_STREAM: &str = "LEASH_AUDIT";

/// How to reach a NATS server and which JetStream stream to use.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `nats://host:port` or `tls://host:port` (several: comma-separated).
    pub url: String,
    pub stream: String,
    pub creds: Option<PathBuf>,
    pub token: Option<String>,
    /// A file holding an nkey seed (`SU...`).
    pub nkey_file: Option<PathBuf>,
    /// Extra root certificate for `tls://` servers.
    pub ca_file: Option<PathBuf>,
}

/// Shipping of this host's audit records.
#[derive(Debug, Clone)]
pub struct ShipConfig {
    pub nats: NatsConfig,
    /// The subject records are published on (`{host}` already replaced).
    pub subject: String,
    /// The subjects the stream takes when Leash creates it.
    pub stream_subjects: String,
    pub batch: usize,
}

/// `audit.ship` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShip {
    nats: Option<RawNats>,
}

/// A `nats` section as written (`audit.ship.nats`, `collector.nats`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNats {
    url: Option<String>,
    stream: Option<String>,
    pub subject: Option<String>,
    pub durable: Option<String>,
    creds: Option<PathBuf>,
    token: Option<String>,
    nkey_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    pub batch: Option<usize>,
}

/// A host id as one subject token: no `.`, wildcards or spaces.
fn subject_token(host: &str) -> String {
    host.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|t| !t.is_empty() && !t.contains(char::is_whitespace))
}

/// The subjects a stream takes: the template with `{host}` as `*`.
pub fn stream_subjects(template: &str) -> String {
    template.replace("{host}", "*")
}

/// A batch size: 1 to 10000, 256 by default.
pub fn batch(field: &str, value: Option<usize>) -> Result<usize, FieldError> {
    match value {
        Some(0) => Err(invalid(field, "must be positive")),
        Some(n) if n > 10_000 => Err(invalid(field, "at most 10000")),
        Some(n) => Ok(n),
        None => Ok(256),
    }
}

impl NatsConfig {
    /// Validates `raw`; `section` names it in errors (`audit.ship.nats`).
    pub fn validate(raw: &RawNats, section: &str, base: &Path) -> Result<Self, FieldError> {
        let url = raw
            .url
            .clone()
            .ok_or_else(|| invalid(format!("{section}.url"), "required (nats://host:4222)"))?;
        for u in url.split(',') {
            let u = u.trim();
            let rest = u
                .strip_prefix("nats://")
                .or_else(|| u.strip_prefix("tls://"))
                .ok_or_else(|| {
                    invalid(
                        format!("{section}.url"),
                        format!("`{u}` must start with nats:// or tls://"),
                    )
                })?;
            if rest.is_empty() {
                return Err(invalid(format!("{section}.url"), "no host"));
            }
        }
        let stream = raw.stream.clone().unwrap_or_else(|| DEFAULT_STREAM.into());
        if stream.is_empty()
            || !stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                format!("{section}.stream"),
                "letters, digits, `_` and `-` only",
            ));
        }
        if raw.token.is_some() && (raw.creds.is_some() || raw.nkey_file.is_some()) {
            return Err(invalid(section, "use one of token, creds and nkey_file"));
        }
        Ok(Self {
            url,
            stream,
            creds: raw.creds.clone().map(|p| field::resolve(base, p)),
            token: raw.token.clone(),
            nkey_file: raw.nkey_file.clone().map(|p| field::resolve(base, p)),
            ca_file: raw.ca_file.clone().map(|p| field::resolve(base, p)),
        })
    }
}

impl ShipConfig {
    /// `audit.ship`, if it names a NATS server; `host` fills `{host}`.
    pub fn validate(
        ship: Option<RawShip>,
        base: &Path,
        host: &str,
    ) -> Result<Option<Self>, FieldError> {
        let Some(RawShip { nats: Some(raw) }) = ship else {
            return Ok(None);
        };
        let nats = NatsConfig::validate(&raw, "audit.ship.nats", base)?;
        if raw.durable.is_some() {
            return Err(invalid("audit.ship.nats.durable", "is a collector setting"));
        }
        let template = raw
            .subject
            .clone()
            .unwrap_or_else(|| DEFAULT_SUBJECT.into());
        let subject = template.replace("{host}", &subject_token(host));
        if !valid_subject(&subject) || subject.contains(['*', '>']) {
            return Err(invalid(
                "audit.ship.nats.subject",
                format!("`{template}` is not a subject (dot-separated tokens, no wildcards)"),
            ));
        }
        Ok(Some(Self {
            nats,
            subject,
            stream_subjects: stream_subjects(&template),
            batch: batch("audit.ship.nats.batch", raw.batch)?,
        }))
    }
}
