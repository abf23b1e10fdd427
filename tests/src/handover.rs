//! What the hand-over tests share: the successor a hand-over starts (found
//! in the log, stopped when the test ends), and whether a process is gone.

use std::time::Duration;

use crate::fleet::wait_until;

/// The successor, stopped (`SIGTERM`) when the test ends: it outlives the
/// harness's child.
pub struct Successor(pub u32);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.0.to_string())
            .status();
        let pid = self.0;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !gone(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// `text` without ANSI colour codes.
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `leash reload` of the Leash started with `config`, `admin` and
/// `audit_dir` (gateway or agent).
pub fn leash_reload(
    config: &std::path::Path,
    admin: std::net::SocketAddr,
    audit_dir: &std::path::Path,
) -> std::process::Output {
    crate::harness::run(
        crate::gateway::leash_command()
            .args(["reload", "--config"])
            .arg(config)
            .args(["--admin-listen", &admin.to_string(), "--audit-dir"])
            .arg(audit_dir),
    )
}

/// Whether process `pid` has exited (gone, or a zombie its parent has not
/// reaped yet).
pub fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

/// Waits until the log says a successor serves (after the `n`-th such
/// line: 0 for the first hand-over), then until `old_pid` has exited.
/// Returns the successor.
pub fn wait_successor(logs: &dyn Fn() -> String, old_pid: u32) -> Successor {
    let mut successor = None;
    wait_until(
        "the successor serving",
        Duration::from_secs(30),
        logs,
        || {
            successor = plain(&logs())
                .lines()
                .filter(|l| l.contains("the successor serves"))
                .filter_map(|l| l.split("successor=").nth(1))
                .filter_map(|p| p.split_whitespace().next())
                .filter_map(|p| p.parse::<u32>().ok())
                .find(|p| *p != old_pid);
            successor.is_some()
        },
    );
    let successor = Successor(successor.expect("a successor"));
    wait_until(
        "the old process exiting",
        Duration::from_mins(1),
        logs,
        || gone(old_pid),
    );
    successor
}

/// An upgrade test's binary: a copy of the one under test that the
/// process is started from, then replaced by another version (renamed
/// over it, as a package manager does).
pub struct Upgrade {
    pub bin: std::path::PathBuf,
    old_inode: u64,
}

impl Upgrade {
    /// Copies the `leash` under test into `dir`.
    pub fn prepare(dir: &std::path::Path) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let bin = dir.join("leash");
        std::fs::copy(crate::harness::leash_bin(), &bin).expect("copy leash");
        let old_inode = std::fs::metadata(&bin).expect("binary").ino();
        Self { bin, old_inode }
    }

    /// The path, for [`crate::gateway::BINARY`].
    pub fn path(&self) -> String {
        self.bin.display().to_string()
    }

    /// Puts another version at the path: the same bytes and more (another
    /// digest), renamed over the old file.
    pub fn install_new_version(&self) {
        let new = self.bin.with_file_name("leash.new");
        std::fs::copy(&self.bin, &new).expect("copy");
        std::io::Write::write_all(
            &mut std::fs::OpenOptions::new()
                .append(true)
                .open(&new)
                .expect("open"),
            b"leash upgrade test",
        )
        .expect("append");
        std::fs::rename(&new, &self.bin).expect("rename");
    }

    /// The successor runs the new file at the path, not the old one.
    pub fn check_runs(&self, successor: &Successor) {
        use std::os::unix::fs::MetadataExt as _;
        let exe = format!("/proc/{}/exe", successor.0);
        assert_eq!(
            std::fs::read_link(&exe).expect("exe"),
            self.bin,
            "the successor runs the new binary"
        );
        let running = std::fs::metadata(&exe).expect("exe").ino();
        assert_ne!(running, self.old_inode, "the successor runs the old file");
    }
}
