//! The `audit` section: where the trail is written, how durably, how it
//! rotates and expires, and (`audit.ship`) where it is shipped.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use super::{Durability, Overflow};
use crate::{
    field::{self, FieldError, invalid},
    ship::config::{RawShip, ShipConfig},
};

pub const DEFAULT_AUDIT_DIR: &str = "/var/lib/leash/audit";

/// Where the trail goes when `audit.dir` is not set: the system's
/// [`DEFAULT_AUDIT_DIR`] for root; for anyone else (who cannot write
/// there) their own state directory, `$XDG_STATE_HOME/leash/audit` or
/// `~/.local/state/leash/audit`.
pub fn default_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return DEFAULT_AUDIT_DIR.into();
    }
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    absolute("XDG_STATE_HOME")
        .or_else(|| absolute("HOME").map(|h| h.join(".local/state")))
        .map_or_else(|| DEFAULT_AUDIT_DIR.into(), |d| d.join("leash/audit"))
}

/// `audit.sync_interval_ms` unless set: records are written to their file
/// within 5 ms (a crash of the process loses nothing written), synced at
/// most this long after (a crash of the machine may lose what was not).
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub dir: PathBuf,
    pub queue_capacity: usize,
    pub durability: Durability,
    /// `durability: batch`: at most this long between a record written to
    /// its file and the `fdatasync` that makes it survive a machine crash.
    pub sync_interval: Duration,
    pub overflow: Overflow,
    /// A new segment starts once the current one reaches this size.
    pub segment_max_bytes: u64,
    /// Segments last written longer ago are removed; `None`: kept forever.
    pub retention: Option<Duration>,
    /// Shipping to a central JetStream stream, if configured.
    pub ship: Option<ShipConfig>,
}

/// `audit` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub dir: Option<PathBuf>,
    queue_capacity: Option<usize>,
    durability: Option<Durability>,
    sync_interval_ms: Option<u64>,
    overflow: Option<Overflow>,
    segment_max_bytes: Option<u64>,
    retention_days: Option<u64>,
    ship: Option<RawShip>,
}

impl AuditConfig {
    /// Validates `raw`; paths are relative to `base`, `host` names this
    /// host in the shipping subject.
    pub fn validate(raw: RawAudit, base: &Path, host: &str) -> Result<Self, FieldError> {
        let segment_max_bytes = match raw.segment_max_bytes {
            Some(n) if n < 4096 => return Err(invalid("audit.segment_max_bytes", "at least 4096")),
            Some(n) => n,
            None => 64 * 1024 * 1024,
        };
        let retention = match raw.retention_days {
            Some(0) => {
                return Err(invalid(
                    "audit.retention_days",
                    "at least 1 (leave it out to keep everything)",
                ));
            }
            Some(days) => Some(Duration::from_secs(days * 86_400)),
            None => None,
        };
        Ok(Self {
            segment_max_bytes,
            retention,
            ship: ShipConfig::validate(raw.ship, base, host)?,
            dir: field::resolve(base, raw.dir.unwrap_or_else(default_dir)),
            queue_capacity: field::positive("audit.queue_capacity", raw.queue_capacity, 65_536)?,
            durability: raw.durability.unwrap_or(Durability::Batch),
            sync_interval: match raw.sync_interval_ms {
                None => DEFAULT_SYNC_INTERVAL,
                Some(ms @ 1..=1000) => Duration::from_millis(ms),
                Some(_) => {
                    return Err(invalid(
                        "audit.sync_interval_ms",
                        "1 to 1000 (milliseconds between syncs; `durability: sync` syncs every record)",
                    ));
                }
            },
            overflow: raw.overflow.unwrap_or(Overflow::Block),
        })
    }
}
