//! Process control for the benchmark: ports, pinned processes, their CPU
//! time and memory.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub(super) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub(super) fn wait_port(port: u16, what: &str) -> Result<()> {
    wait_addr(std::net::SocketAddr::from(([127, 0, 0, 1], port)), what)
}

pub(super) fn wait_addr(addr: std::net::SocketAddr, what: &str) -> Result<()> {
    let port = addr.port();
    let deadline = Instant::now() + Duration::from_mins(1);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} is not listening on {port} after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A process started for the run, killed at the end.
pub(super) struct Proc {
    pub(super) child: Child,
}

impl Proc {
    pub(super) fn spawn(cmd: &mut Command, log: &Path) -> Result<Self> {
        let log = std::fs::File::create(log)?;
        let child = cmd
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        Ok(Self { child })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    /// Asks the process to stop (SIGTERM: a `leash run` agent detaches its
    /// hooks and unpins its maps), and kills it if it has not within 5 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn pinned(cpu: &str, program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", cpu]).arg(program);
    c
}

/// A process and its descendants (nginx serves from worker children).
pub(super) fn family(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        let tasks = std::fs::read_dir(format!("/proc/{p}/task"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for t in tasks {
            let children = std::fs::read_to_string(t.join("children")).unwrap_or_default();
            out.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        i += 1;
    }
    out
}

/// `VmRSS` (or another field) of a process and its children, in MiB.
pub(super) fn status_mib(pid: u32, field: &str) -> f64 {
    family(pid)
        .into_iter()
        .filter_map(|p| {
            let s = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        })
        .sum::<f64>()
        / 1024.0
}

/// CPU time (user + system) of a process and its children so far, in
/// seconds.
pub(super) fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// CPU time of a process and its children so far, in seconds: (user,
/// system).
pub(super) fn cpu_split(pid: u32) -> (f64, f64) {
    family(pid)
        .into_iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
            let fields: Vec<&str> = after.split_whitespace().collect();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            // After the command name: state is field 0; utime 11, stime 12.
            (ticks(11) / 100.0, ticks(12) / 100.0)
        })
        .fold((0.0, 0.0), |(u, s), (pu, ps)| (u + pu, s + ps))
}

pub(super) fn which(program: &str) -> Option<PathBuf> {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
}

/// Per CPU (`cpuN` lines of `/proc/stat`): all jiffies, and those the
/// hypervisor gave to other guests (steal).
pub(super) fn cpu_times() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let n: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest time is
            // already inside user and nice).
            let total = n.iter().take(8).sum();
            (total, n.get(7).copied().unwrap_or(0))
        })
        .collect()
}

/// Steal as a percentage of each CPU's time since `before` (a
/// [`cpu_times`] snapshot): `[{"cpu": i, "pct": x}, …]`.
pub(super) fn steal_since(before: &[(u64, u64)]) -> serde_json::Value {
    let now = cpu_times();
    serde_json::Value::Array(
        before
            .iter()
            .zip(&now)
            .enumerate()
            .map(|(cpu, ((t0, s0), (t1, s1)))| {
                let total = t1.saturating_sub(*t0).max(1);
                #[allow(
                    clippy::cast_precision_loss,
                    reason = "jiffies of one run: far below 2^52"
                )]
                let pct = s1.saturating_sub(*s0) as f64 * 100.0 / total as f64;
                serde_json::json!({"cpu": cpu, "pct": pct})
            })
            .collect(),
    )
}
