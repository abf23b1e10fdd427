//! The hooks' state in bpffs. Fail closed: the bpf links pinned, so they
//! stay attached when the agent stops or dies and provider connections
//! keep being redirected to the (then closed) proxy port: refused, never
//! direct. A new agent attaches its own links first, then releases the old
//! ones, so there is no moment without hooks.
//!
//! Pins live in `<bpffs>/leash/cg-<cgroup inode>/`, one file per program
//! and agent process (`<program>-<pid>`; bpffs allows no `.` in names).
//!
//! In both failure modes, the maps that hold records rather than
//! configuration (the caller records, the DNS-learned targets, the refusal
//! counts) and the config map are pinned beside them, in
//! `cg-<inode>-maps-<layout>/`, and every agent with the same map layout
//! opens the same maps: what the old hooks recorded while no agent ran, or
//! during a hand-over (both agents' hooks attached, both processes
//! accepting on the one proxy socket), is what the new agent reads.
//! `<layout>` is a digest of the maps' definitions, so an agent whose maps
//! differ gets its own and never misreads old ones. A fail-open agent that
//! stops with no successor removes the maps' pins.

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
    #[error("cannot read the map definitions of the eBPF object: {0}")]
    Layout(String),
    #[error("eBPF map `{0}` is missing from the object")]
    MissingMap(&'static str),
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

/// The pin directory of the hooks on `cgroup` (not checked to exist), if
/// bpffs is mounted.
pub fn mounted_dir_for(cgroup: &Path) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let bpffs = cgroup::mount_of_type(&mountinfo, "bpf")?;
    dir_for(&bpffs, cgroup).ok()
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

/// The digest of the definitions (type, key and value size, entries,
/// flags) of the maps `shared` in the eBPF `object`: agents whose digests
/// are equal can share those maps.
pub fn layout(object: &[u8], shared: &[&'static str]) -> Result<String, PinError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| PinError::Layout(e.to_string()))?;
    // FNV-1a: stable across builds and platforms, and no cryptography is
    // needed to tell two layouts apart.
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            digest ^= u64::from(*b);
            digest = digest.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for name in shared {
        let map = obj.maps.get(*name).ok_or(PinError::MissingMap(name))?;
        feed(name.as_bytes());
        for field in [
            map.map_type(),
            map.key_size(),
            map.value_size(),
            map.max_entries(),
            map.map_flags(),
        ] {
            feed(&field.to_le_bytes());
        }
    }
    Ok(format!("{digest:016x}"))
}

/// Where the shared maps of layout `layout` are pinned, beside the links'
/// directory `dir` (not created).
pub fn maps_dir(dir: &Path, layout: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!("-maps-{layout}"));
    dir.with_file_name(name)
}

/// Removes the pinned maps beside the links' directory `dir`, except those
/// in `keep`. A map stays alive while a program that uses it is attached;
/// the pins only let the next agent find it.
pub fn release_maps(dir: &Path, keep: Option<&Path>) -> Result<(), PinError> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Ok(());
    };
    let mut prefix = name.to_os_string();
    prefix.push("-maps-");
    let entries = match std::fs::read_dir(parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(PinError::Dir(parent.to_path_buf(), e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(prefix.as_encoded_bytes());
        if !ours || keep == Some(path.as_path()) {
            continue;
        }
        std::fs::remove_dir_all(&path).map_err(|e| PinError::Dir(path.clone(), e))?;
    }
    Ok(())
}

/// Detaches every pinned link in `dir` except `keep` (this agent's own).
/// Returns how many were released.
pub fn release_links(dir: &Path, keep: &[PathBuf]) -> Result<usize, PinError> {
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
    Ok(released)
}

/// Detaches every pinned link in `dir` and removes it with the shared
/// maps' pins beside it (`leash intercept release`: no agent runs). Returns
/// how many links were released.
pub fn release(dir: &Path) -> Result<usize, PinError> {
    let released = release_links(dir, &[])?;
    let _ = std::fs::remove_dir(dir);
    release_maps(dir, None)?;
    Ok(released)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn maps_sit_beside_the_links_and_only_other_layouts_are_released() {
        let root = tempfile::tempdir().unwrap();
        let links = root.path().join("cg-42");
        let ours = maps_dir(&links, "aaaa");
        assert_eq!(ours, root.path().join("cg-42-maps-aaaa"));
        let old = maps_dir(&links, "bbbb");
        let other_cgroup = maps_dir(&root.path().join("cg-7"), "bbbb");
        for dir in [&links, &ours, &old, &other_cgroup] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("LEASH_CONFIG"), b"").unwrap();
        }
        release_maps(&links, Some(&ours)).unwrap();
        assert!(ours.is_dir() && links.is_dir() && other_cgroup.is_dir());
        assert!(!old.exists());
        release_maps(&links, None).unwrap();
        assert!(!ours.exists() && other_cgroup.is_dir());
    }

    #[test]
    fn a_layout_needs_every_shared_map() {
        assert!(matches!(
            layout(b"not an object", &["LEASH_CONFIG"]),
            Err(PinError::Layout(_))
        ));
    }
}
