//! Clients that reject the organisation CA's leaves (a runtime with its own
//! trust store that `leash ca install` did not reach, a pinned
//! certificate): never a silently broken app. Each rejection is counted per
//! executable (`leash_untrusted_clients_total{exe}`), audited as a refused
//! connection naming the caller, alerted (webhook, once per executable per
//! interval) and listed on the console's interception page. The operator chooses what follows: `refuse` (the default: the
//! app keeps failing, visibly) or `splice` (its later provider connections
//! go through uninspected for a while, each audited as bypassed). Listed
//! executables (`intercept.bypass_executables`) are bypassed up front, the
//! same way.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

use globset::{Glob, GlobSet, GlobSetBuilder};
use moka::sync::Cache;
use serde_json::{Value, json};

use crate::{
    alerts::{AlertKey, Alerter},
    intercept::config::{OnUntrusted, Untrusted as UntrustedConfig},
    record::{Bypass, Caller, timestamp},
};

/// Executables remembered on the console's list.
const MAX_LISTED: usize = 1000;

/// What the console shows of one executable.
#[derive(Debug, Clone, Default)]
struct Seen {
    rejections: u64,
    last: String,
    user: Option<String>,
}

pub struct Untrusted {
    then: OnUntrusted,
    alerts: Alerter,
    listed: GlobSet,
    /// Executables spliced after a rejection, until their time runs out.
    spliced: Cache<String, ()>,
    seen: Mutex<BTreeMap<String, Seen>>,
}

/// Whether a failed server handshake means the client rejected our
/// certificate: it sent `unknown_ca`, `bad_certificate` and the like, or
/// closed the connection after our first flight.
pub fn is_rejection(e: &std::io::Error) -> bool {
    use rustls::AlertDescription as A;
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return true;
    }
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            A::UnknownCA
                | A::BadCertificate
                | A::CertificateUnknown
                | A::UnsupportedCertificate
                | A::AccessDenied
        ))
    )
}

impl Untrusted {
    pub fn new(config: &UntrustedConfig, alerts: Alerter) -> Self {
        let mut b = GlobSetBuilder::new();
        for g in &config.bypass_executables {
            // Validated with the config.
            if let Ok(glob) = Glob::new(g) {
                b.add(glob);
            }
        }
        Self {
            alerts,
            then: config.on_untrusted,
            listed: b.build().unwrap_or_else(|_| GlobSet::empty()),
            spliced: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(config.splice_for)
                .build(),
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether a connection's executable must be looked up before its TLS
    /// is terminated (something could be bypassed).
    pub fn active(&self) -> bool {
        !self.listed.is_empty()
            || self.spliced.entry_count() > 0
            || self.then == OnUntrusted::Splice
    }

    /// Whether connections of `exe` go through uninspected, and why.
    pub fn bypass(&self, exe: &str) -> Option<Bypass> {
        if self.listed.is_match(exe) {
            return Some(Bypass::Listed);
        }
        self.spliced
            .contains_key(exe)
            .then_some(Bypass::UntrustedClient)
    }

    /// Notes that `caller` rejected the organisation CA, and alerts (at
    /// most once per executable per `alerts.min_interval`).
    pub fn rejected(&self, caller: &Caller, host: &str) {
        let exe = caller.exe.clone().unwrap_or_else(|| "-".to_owned());
        self.alerts.fire(
            &AlertKey {
                kind: "untrusted_client",
                name: &exe,
                team: None,
            },
            json!({
                "kind": "untrusted_client",
                "message": "a client does not trust the organisation CA: its calls to the provider fail (run `leash ca install`, or see intercept.on_untrusted_client)",
                "exe": exe,
                "pid": caller.pid,
                "user": caller.user,
                "cgroup": caller.cgroup,
                "provider_host": host,
                "then": if self.then == OnUntrusted::Splice { "spliced: later calls pass uninspected" } else { "refused" },
            }),
        );
        if self.then == OnUntrusted::Splice && caller.exe.is_some() {
            self.spliced.insert(exe.clone(), ());
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= MAX_LISTED && !seen.contains_key(&exe) {
            return;
        }
        let entry = seen.entry(exe).or_default();
        entry.rejections += 1;
        entry.last = timestamp(std::time::SystemTime::now());
        entry.user.clone_from(&caller.user);
    }

    /// The console's list: each executable that rejected the CA.
    pub fn report(&self) -> Value {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        json!(
            seen.iter()
                .map(|(exe, s)| json!({
                    "exe": exe,
                    "rejections": s.rejections,
                    "last": s.last,
                    "user": s.user,
                    "spliced_now": self.spliced.contains_key(exe),
                }))
                .collect::<Vec<_>>()
        )
    }
}
