//! Who made an intercepted call: process, executable, user, cgroup and
//! container, from the kernel's record and `/proc`.

use std::{sync::LazyLock, time::Duration};

use leash_common::OrigDst;
use moka::sync::Cache;

use super::cgroup;

/// A caller as far as the host can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub exe: Option<String>,
    pub comm: String,
    pub uid: u32,
    pub user: Option<String>,
    pub cgroup: Option<String>,
    pub container: Option<String>,
}

/// How long user names are reused.
const USER_NAMES_TTL: Duration = Duration::from_mins(1);

/// User names by uid through the system's name service (NSS: `/etc/passwd`,
/// LDAP, SSSD…), looked up at most once a minute per uid rather than on
/// every intercepted connection.
static USER_NAMES: LazyLock<Cache<u32, Option<String>>> = LazyLock::new(|| {
    Cache::builder()
        .max_capacity(10_000)
        .time_to_live(USER_NAMES_TTL)
        .build()
});

fn user_name(uid: u32) -> Option<String> {
    USER_NAMES.get_with(uid, || {
        uzers::get_user_by_uid(uid).map(|u| u.name().to_string_lossy().into_owned())
    })
}

/// Describes the process in `rec`. The process may be gone already: what
/// cannot be read stays `None` (the kernel's `comm` always remains).
pub fn describe(rec: &OrigDst) -> ProcessInfo {
    let pid = rec.tgid;
    let comm_len = rec
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(rec.comm.len());
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_owned()
        });
    let cgroup = cgroup::of_process(pid);
    ProcessInfo {
        pid,
        exe,
        comm: String::from_utf8_lossy(&rec.comm[..comm_len]).into_owned(),
        uid: rec.uid,
        user: user_name(rec.uid),
        container: cgroup.as_deref().and_then(cgroup::container_id),
        cgroup,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_come_from_the_name_service() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(u32::MAX - 7), None);
    }
}
