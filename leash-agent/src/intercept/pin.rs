//! Fail-closed support: the hooks' bpf links pinned in bpffs, so they stay
//! attached when the agent stops or dies and provider connections keep
//! being redirected to the (then closed) proxy port: refused, never direct.
//! A new agent attaches its own links first, then releases the old ones, so
//! there is no moment without hooks.
//!
//! Pins live in `<bpffs>/leash/cg-<cgroup inode>/`, one file per program
//! and agent process (`<program>-<pid>`; bpffs allows no `.` in names).

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::programs::links::{FdLink, PinnedLink};

use super::cgroup;

/// Where bpffs is mounted when nothing else mounted it.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot mount bpffs at {0} (needed for intercept.failure_mode: closed): {1}")]
    Mount(PathBuf, std::io::Error),
    #[error("cannot read cgroup {0}: {1}")]
    Cgroup(PathBuf, std::io::Error),
    #[error("pin directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("cannot pin the link of `{0}` at {1}: {2}")]
    Pin(String, PathBuf, #[source] aya::pin::PinError),
    #[error("cannot release the pinned link {0}: {1}")]
    Release(PathBuf, String),
}

/// The bpffs mount point (from mountinfo), mounting one at `/sys/fs/bpf`
/// when there is none.
pub fn bpffs() -> Result<PathBuf, PinError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(dir) = cgroup::mount_of_type(&mountinfo, "bpf") {
        return Ok(dir);
    }
    let dir = PathBuf::from(DEFAULT_BPFFS);
    std::fs::create_dir_all(&dir).map_err(|e| PinError::Mount(dir.clone(), e))?;
    rustix::mount::mount(
        "bpf",
        &dir,
        "bpf",
        rustix::mount::MountFlags::NOSUID
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| PinError::Mount(dir.clone(), e.into()))?;
    tracing::info!(dir = %dir.display(), "mounted bpffs for pinned hooks");
    Ok(dir)
}

/// The pin directory of the hooks on `cgroup` (not created).
pub fn dir_for(bpffs: &Path, cgroup: &Path) -> Result<PathBuf, PinError> {
    let ino = std::fs::metadata(cgroup)
        .map_err(|e| PinError::Cgroup(cgroup.to_path_buf(), e))?
        .ino();
    Ok(bpffs.join("leash").join(format!("cg-{ino}")))
}

/// The existing pin directory of the hooks on `cgroup`, if bpffs is mounted
/// and one exists.
pub fn existing_dir(cgroup: &Path) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let bpffs = cgroup::mount_of_type(&mountinfo, "bpf")?;
    let dir = dir_for(&bpffs, cgroup).ok()?;
    dir.is_dir().then_some(dir)
}

/// Pins `link` (of program `name`) in `dir` under this process's id;
/// returns it with its path.
pub fn pin(dir: &Path, name: &str, link: FdLink) -> Result<(PinnedLink, PathBuf), PinError> {
    std::fs::create_dir_all(dir).map_err(|e| PinError::Dir(dir.to_path_buf(), e))?;
    let path = dir.join(format!("{name}-{}", std::process::id()));
    // A stale pin of a recycled pid would make the pin fail.
    let _ = std::fs::remove_file(&path);
    let pinned = link
        .pin(&path)
        .map_err(|e| PinError::Pin(name.to_owned(), path.clone(), e))?;
    Ok((pinned, path))
}

/// Detaches every pinned link in `dir` except `keep` (this agent's own),
/// and removes the directory once empty. Returns how many were released.
pub fn release(dir: &Path, keep: &[PathBuf]) -> Result<usize, PinError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(PinError::Dir(dir.to_path_buf(), e)),
    };
    let mut released = 0;
    for entry in entries {
        let path = entry
            .map_err(|e| PinError::Dir(dir.to_path_buf(), e))?
            .path();
        if keep.contains(&path) {
            continue;
        }
        let link = PinnedLink::from_pin(&path)
            .map_err(|e| PinError::Release(path.clone(), e.to_string()))?;
        // Unpinned and dropped: the last reference goes, the link detaches.
        drop(
            link.unpin()
                .map_err(|e| PinError::Release(path.clone(), e.to_string()))?,
        );
        released += 1;
    }
    if keep.is_empty() {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(released)
}
