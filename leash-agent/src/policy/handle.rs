//! The active policy while Leash runs: swapped whole on a reload (file
//! change or SIGHUP), an invalid file leaving the previous one in force, the
//! latest loads kept for the console.

use std::{path::Path, sync::Arc};

use arc_swap::ArcSwapOption;
use serde_json::{Value, json};

use super::{Policy, PolicyError};

/// The active policy, replaceable while Leash runs (hot reload). Requests
/// take the policy that is current when they start.
pub struct PolicyHandle {
    pub(super) current: ArcSwapOption<Policy>,
    pub(super) file: Option<std::path::PathBuf>,
    /// The latest reloads (time, outcome), newest last.
    pub(super) history: std::sync::Mutex<std::collections::VecDeque<Value>>,
}

/// Reloads kept for the console.
pub(super) const RELOAD_HISTORY: usize = 50;

impl PolicyHandle {
    pub fn new(policy: Option<Arc<Policy>>, file: Option<std::path::PathBuf>) -> Self {
        let loaded = policy.is_some();
        let handle = Self {
            current: ArcSwapOption::new(policy),
            file,
            history: std::sync::Mutex::new(std::collections::VecDeque::new()),
        };
        if loaded {
            handle.note("start", None);
        }
        handle
    }

    /// Records a load of the policy: `error` when it was refused (the
    /// previous policy stayed in force).
    pub fn note(&self, trigger: &str, error: Option<&str>) {
        let ts = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut history = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if history.len() == RELOAD_HISTORY {
            history.pop_front();
        }
        history.push_back(
            json!({"ts": ts, "trigger": trigger, "ok": error.is_none(), "error": error}),
        );
    }

    /// The latest loads, newest first.
    pub fn history(&self) -> Vec<Value> {
        self.history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    pub fn current(&self) -> Option<Arc<Policy>> {
        self.current.load_full()
    }

    /// The policy file, if the policy came from one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Loads the file again. An invalid file leaves the current policy in
    /// force and returns why (field, line and column).
    pub fn reload(&self) -> Result<(), PolicyError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let policy = Policy::load(file)?;
        self.current.store(Some(Arc::new(policy)));
        Ok(())
    }
}

/// Reloads the policy when its file changes (checked every second) or when
/// Leash gets SIGHUP. Runs until the process ends.
pub async fn watch(handle: Arc<PolicyHandle>, metrics: Arc<crate::metrics::Metrics>) {
    let Some(file) = handle.file().map(Path::to_path_buf) else {
        return;
    };
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut last = stamp(&file);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let signalled = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = signalled => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                let now = stamp(&file);
                if now == last {
                    continue;
                }
                last = now;
            }
        }
        match handle.reload() {
            Ok(()) => {
                metrics.policy_reload(true);
                handle.note("file changed", None);
                tracing::info!(file = %file.display(), "policy reloaded");
            }
            Err(e) => {
                metrics.policy_reload(false);
                handle.note("file changed", Some(&e.to_string()));
                tracing::error!(error = %e, "policy reload failed; the previous policy stays in force");
            }
        }
    }
}
