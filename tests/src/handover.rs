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
