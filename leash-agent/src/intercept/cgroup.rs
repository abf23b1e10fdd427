//! Finding the cgroup v2 hierarchy (from `/proc/self/mountinfo`, never a
//! hard-coded path) and a process's cgroup.

use std::path::{Path, PathBuf};

/// The mount point of the cgroup v2 hierarchy, from mountinfo text.
pub fn v2_root_from(mountinfo: &str) -> Option<PathBuf> {
    mount_of_type(mountinfo, "cgroup2")
}

/// The first mount point of file system type `fstype` in mountinfo text.
pub fn mount_of_type(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `... mount_point options - fstype source super_options`
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != fstype {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The cgroup v2 root of this machine.
pub fn v2_root() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .as_deref()
        .and_then(v2_root_from)
}

/// The cgroup v2 path (relative to the root, e.g. `/system.slice/x.service`)
/// of process `pid`.
pub fn of_process(pid: u32) -> Option<String> {
    let text = read_proc_file(&format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// A `/proc` file's text, read into a buffer that fits a usual one at once.
/// `/proc` files report no size, so `read_to_string` asks for it (`statx`)
/// and then reads 32, 32, 64, 128 bytes...: eight system calls with open
/// and close for a 40-byte file, on every intercepted connection. This takes
/// four (open, one read, the read that sees the end, close) and grows only
/// for a longer file.
fn read_proc_file(path: &str) -> Option<String> {
    use std::io::Read as _;
    /// Enough for a hybrid layout's dozen v1 controllers and long paths.
    const FIRST: usize = 1024;
    /// No cgroup file is near this; a larger one is not read at all.
    const LIMIT: u64 = 1 << 20;
    // Through `Take`, which reads into the buffer's room without asking
    // the file's size (`File::read_to_end` would).
    let mut buf = Vec::with_capacity(FIRST);
    std::fs::File::open(path)
        .ok()?
        .take(LIMIT + 1)
        .read_to_end(&mut buf)
        .ok()?;
    if buf.len() as u64 > LIMIT {
        return None;
    }
    String::from_utf8(buf).ok()
}

/// A container id in a cgroup path: a 64-hex segment as docker, containerd,
/// CRI-O and podman name them (`docker-<id>.scope`, `/docker/<id>`, ...).
pub fn container_id(cgroup_path: &str) -> Option<String> {
    cgroup_path.split('/').rev().find_map(|seg| {
        let seg = seg.strip_suffix(".scope").unwrap_or(seg);
        let id = seg.rsplit(['-', ':']).next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    })
}

/// Whether `path` is inside a cgroup v2 hierarchy directory.
pub fn is_cgroup_dir(path: &Path) -> bool {
    path.join("cgroup.procs").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_files_whole_however_long() {
        let own = of_process(std::process::id()).expect("this process's cgroup");
        assert!(own.starts_with('/'), "{own}");
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, 1023, 1024, 1025, 5000] {
            let text: String = ('a'..='z').cycle().take(len).collect();
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &text).unwrap();
            assert_eq!(
                read_proc_file(path.to_str().unwrap()).as_deref(),
                Some(&*text)
            );
        }
        assert_eq!(read_proc_file("/proc/no-such-file"), None);
    }

    #[test]
    fn finds_v2_root_in_hybrid_layout() {
        let mi = "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                  42 25 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            v2_root_from(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(v2_root_from("1 2 0:1 / /proc rw - proc proc rw\n"), None);
        let with_bpf = format!("{mi}50 25 0:40 / /sys/fs/bpf rw,nosuid - bpf bpf rw\n");
        assert_eq!(
            mount_of_type(&with_bpf, "bpf"),
            Some(PathBuf::from("/sys/fs/bpf"))
        );
        assert_eq!(mount_of_type(mi, "bpf"), None);
    }

    #[test]
    fn container_ids() {
        let id = "a".repeat(64);
        assert_eq!(
            container_id(&format!("/system.slice/docker-{id}.scope")),
            Some(id.clone())
        );
        assert_eq!(
            container_id(&format!(
                "/kubepods/besteffort/pod1/cri-containerd-{id}.scope"
            )),
            Some(id.clone())
        );
        assert_eq!(container_id(&format!("/docker/{id}")), Some(id));
        assert_eq!(
            container_id("/user.slice/user-1000.slice/session-2.scope"),
            None
        );
    }
}
