//! Who made an intercepted call: process, executable, user, cgroup and
//! container, from the kernel's record and `/proc`.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use leash_common::OrigDst;

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

/// The user name of `uid` from a passwd file's text.
pub fn user_name_from(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

/// How long user names read from `/etc/passwd` are reused.
const USER_NAMES_TTL: Duration = Duration::from_mins(1);

/// User names by uid, read from `/etc/passwd` at most once a minute rather
/// than on every intercepted connection.
static USER_NAMES: Mutex<Option<UserNames>> = Mutex::new(None);

/// When the names were read, and the names by uid.
type UserNames = (Instant, HashMap<u32, Option<String>>);

fn user_name(uid: u32) -> Option<String> {
    let mut cache = USER_NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if cache
        .as_ref()
        .is_none_or(|(at, _)| at.elapsed() > USER_NAMES_TTL)
    {
        *cache = Some((Instant::now(), HashMap::new()));
    }
    let names = &mut cache
        .get_or_insert_with(|| (Instant::now(), HashMap::new()))
        .1;
    names
        .entry(uid)
        .or_insert_with(|| {
            std::fs::read_to_string("/etc/passwd")
                .ok()
                .and_then(|p| user_name_from(&p, uid))
        })
        .clone()
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
    fn user_names() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(user_name_from(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(user_name_from(passwd, 0).as_deref(), Some("root"));
        assert_eq!(user_name_from(passwd, 7), None);
    }
}
