//! Refusals made in the kernel (UDP to a provider, a container's connection
//! with no address to send it to): read from the hooks' counters once a
//! second, counted in `leash_refused_connections_total`, and audited — one
//! `refused` event per cgroup and reason a minute at most, naming the
//! cgroup, so a setup Leash cannot govern is never silently broken.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use leash_common::{RefusalKey, refusal};

use crate::{
    intercept::{hooks::KernelHooks, shadow},
    pipeline::Pipeline,
    record::{Caller, Refusal},
};

const POLL: Duration = Duration::from_secs(1);
const EVENT_EVERY: Duration = Duration::from_mins(1);
/// Cgroups looked at when naming one from its id.
const MAX_CGROUPS_WALKED: usize = 10_000;

/// What a kernel refusal counter counts.
pub fn kernel_refusal(key: &RefusalKey) -> Option<Refusal> {
    match key.reason {
        refusal::UDP => Some(Refusal::Quic),
        refusal::NETNS => Some(Refusal::OtherNamespace),
        _ => None,
    }
}

/// The path (relative to the cgroup v2 `root`, as `/proc/<pid>/cgroup`
/// shows it) of the cgroup under `start` whose id is `id`: on cgroup v2 the
/// id is the directory's inode.
pub fn cgroup_path(root: &Path, start: &Path, id: u64) -> Option<String> {
    let mut stack = vec![start.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        seen += 1;
        if seen > MAX_CGROUPS_WALKED {
            return None;
        }
        if std::fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
            let rel = dir.strip_prefix(root).ok()?;
            return Some(format!("/{}", rel.display()));
        }
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    None
}

/// The refusal counts this agent has taken from the kernel, per cgroup and
/// reason, for the console's interception page.
#[derive(Debug, Default)]
pub struct Totals(Mutex<HashMap<RefusalKey, u64>>);

impl Totals {
    pub fn snapshot(&self) -> Vec<(RefusalKey, u64)> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter().map(|(k, v)| (*k, *v)).collect()
    }

    fn add(&self, key: RefusalKey, count: u64) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *map.entry(key).or_default() += count;
    }
}

/// Watches the kernel's refusal counters until aborted.
pub async fn watch(hooks: Arc<KernelHooks>, pipeline: Arc<Pipeline>, totals: Arc<Totals>) {
    let mut last_event: HashMap<RefusalKey, Instant> = HashMap::new();
    let mut names: HashMap<u64, Option<String>> = HashMap::new();
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        for (key, count) in hooks.take_refusals() {
            let Some(refusal) = kernel_refusal(&key) else {
                continue;
            };
            if count == 0 {
                continue;
            }
            totals.add(key, count);
            pipeline.metrics().refused(refusal.as_str(), count);
            if last_event
                .get(&key)
                .is_some_and(|t| t.elapsed() < EVENT_EVERY)
            {
                continue;
            }
            last_event.insert(key, Instant::now());
            let cgroup = names
                .entry(key.cgroup_id)
                .or_insert_with(|| {
                    crate::intercept::cgroup::v2_root()
                        .and_then(|root| cgroup_path(&root, hooks.cgroup(), key.cgroup_id))
                })
                .clone();
            tracing::warn!(
                reason = refusal.as_str(),
                cgroup = cgroup.as_deref().unwrap_or("?"),
                count,
                "connections to providers refused in the kernel"
            );
            let caller = Caller {
                cgroup: cgroup.clone(),
                container: cgroup
                    .as_deref()
                    .and_then(crate::intercept::cgroup::container_id),
                ..Caller::default()
            };
            let to = match refusal {
                Refusal::Quic => "udp",
                _ => "other network namespace",
            };
            pipeline.audit_event(shadow::refused(refusal, to, &caller, pipeline.host()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_cgroup_by_its_inode() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        std::fs::create_dir_all(&dir).unwrap();
        let id = std::fs::metadata(&dir).unwrap().ino();
        assert_eq!(
            cgroup_path(root.path(), &root.path().join("a"), id).as_deref(),
            Some("/a/b")
        );
        assert_eq!(cgroup_path(root.path(), root.path(), 1), None);
    }
}
