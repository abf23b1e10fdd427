//! Handing the listening sockets to a new process — a restart or an
//! upgrade that refuses no connection. On `SIGUSR2` the running gateway
//! starts its successor: the executable at the path it was itself started
//! from (an upgraded binary, once one was put there), with the same
//! arguments, given its listening sockets as inherited descriptors. Once
//! the successor says it serves (a byte on a pipe), this process stops
//! accepting, finishes what is in flight (up to its drain time), writes its
//! last audit records and exits; the successor's audit writer starts after
//! that (`audit::AuditWriter::start`). The sockets never close, so the
//! kernel's accept queue carries every connection across. If the successor
//! fails to start, this process keeps serving.

use std::{
    collections::HashMap,
    io::Read as _,
    net::SocketAddr,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::PathBuf,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use super::ConfigSource;
use crate::{config::Config, proxy::transparent};

/// `gateway.listen=3,admin.listen=4`: the inherited listening sockets.
const ENV_FDS: &str = "LEASH_LISTEN_FDS";
/// The pipe the successor writes one byte to once it serves.
const ENV_READY: &str = "LEASH_READY_FD";
/// How long a successor may take to serve before the hand-over is given up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error(
        "inherited socket for `{field}` listens on {inherited}, the config says {configured}: a listen address change needs a full restart"
    )]
    Moved {
        field: String,
        inherited: SocketAddr,
        configured: SocketAddr,
    },
    #[error("cannot start the successor {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("the successor did not start serving: {0}")]
    NotReady(String),
    #[error("hand-over: {0}")]
    Io(#[from] std::io::Error),
}

struct Inherited {
    listeners: Mutex<HashMap<String, std::net::TcpListener>>,
    ready: Mutex<Option<OwnedFd>>,
}

static INHERITED: OnceLock<Inherited> = OnceLock::new();
static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Reads (and removes) what a predecessor handed over, and notes the
/// executable's path. Call first, while the process has one thread.
pub fn init() {
    EXE.get_or_init(|| std::env::current_exe().ok());
    let mut listeners = HashMap::new();
    let fds = std::env::var(ENV_FDS).ok();
    let ready = std::env::var(ENV_READY).ok();
    // SAFETY: called at the start of `main`, before any thread exists.
    #[allow(
        unsafe_code,
        reason = "env::remove_var is unsafe once threads exist; none do yet"
    )]
    unsafe {
        std::env::remove_var(ENV_FDS);
        std::env::remove_var(ENV_READY);
    }
    for pair in fds.iter().flat_map(|f| f.split(',')) {
        if let Some((field, fd)) = pair.split_once('=')
            && let Ok(fd) = fd.parse::<RawFd>()
            && fd > 2
        {
            // SAFETY: the predecessor put an open listening socket at this
            // descriptor for us; nothing else in this process owns it.
            #[allow(unsafe_code, reason = "taking ownership of an inherited descriptor")]
            let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            listeners.insert(field.to_owned(), listener);
        }
    }
    let ready = ready
        .and_then(|fd| fd.parse::<RawFd>().ok())
        .filter(|fd| *fd > 2)
        .map(|fd| {
            // SAFETY: as above, the write end of the predecessor's pipe.
            #[allow(unsafe_code, reason = "taking ownership of an inherited descriptor")]
            unsafe {
                OwnedFd::from_raw_fd(fd)
            }
        });
    let _ = INHERITED.set(Inherited {
        listeners: Mutex::new(listeners),
        ready: Mutex::new(ready),
    });
}

/// Whether this process was started by a hand-over.
pub fn is_successor() -> bool {
    INHERITED
        .get()
        .is_some_and(|i| i.ready.lock().is_ok_and(|r| r.is_some()))
}

/// The inherited listener for `field`, if there is one; it must listen on
/// `addr`.
pub fn take(field: &str, addr: SocketAddr) -> Result<Option<std::net::TcpListener>, HandoverError> {
    let Some(inherited) = INHERITED.get() else {
        return Ok(None);
    };
    let listener = inherited
        .listeners
        .lock()
        .map_err(|_| HandoverError::NotReady("poisoned".into()))?
        .remove(field);
    let Some(listener) = listener else {
        return Ok(None);
    };
    let inherited_addr = listener.local_addr()?;
    if inherited_addr != addr {
        return Err(HandoverError::Moved {
            field: field.to_owned(),
            inherited: inherited_addr,
            configured: addr,
        });
    }
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

/// Closes the inherited listeners nothing took: those the config no longer
/// has (the predecessor stops accepting on them too).
pub fn close_unclaimed() {
    let Some(inherited) = INHERITED.get() else {
        return;
    };
    let Ok(mut listeners) = inherited.listeners.lock() else {
        return;
    };
    for (field, listener) in listeners.drain() {
        tracing::info!(field, addr = ?listener.local_addr().ok(), "hand-over: closing a listener the config no longer has");
    }
}

/// Tells the service manager (systemd's `NOTIFY_SOCKET`, with
/// `Type=notify` and `NotifyAccess=all`) that this process serves and is
/// now the service's main process: after a hand-over systemd follows the
/// successor instead of seeing the service exit.
fn notify_service_manager() {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let path = path.to_string_lossy();
        match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                socket.send_to_addr(message.as_bytes(), &addr)
            }
            None => socket.send_to(message.as_bytes(), &*path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// Tells the predecessor (if any) and the service manager (if any) that
/// this process serves.
pub fn serving() {
    notify_service_manager();
    let fd = INHERITED
        .get()
        .and_then(|i| i.ready.lock().ok().and_then(|mut r| r.take()));
    if let Some(fd) = fd {
        let mut pipe = std::fs::File::from(fd);
        if let Err(e) = std::io::Write::write_all(&mut pipe, b"1") {
            tracing::error!(error = %e, "hand-over: cannot tell the predecessor we serve");
        }
    }
}

/// Starts the successor with `listeners` (`field`, descriptor), and waits
/// until it serves. Returns its pid.
pub async fn start_successor(listeners: &[(&'static str, RawFd)]) -> Result<u32, HandoverError> {
    let exe = EXE
        .get()
        .cloned()
        .flatten()
        .ok_or_else(|| HandoverError::NotReady("the executable's path is unknown".into()))?;
    // Copies above the numbers the child will use, so placing them at
    // 3, 4, … cannot overwrite one not yet placed.
    let mut high = Vec::new();
    for (_, fd) in listeners {
        // SAFETY: `fd` is a listening socket this process holds open for
        // the duration of this call.
        #[allow(unsafe_code, reason = "borrowing a descriptor held by a serving task")]
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
        high.push(rustix::io::fcntl_dupfd_cloexec(borrowed, 64).map_err(std::io::Error::from)?);
    }
    let (read_end, write_end) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(std::io::Error::from)?;
    let ready_fd = 3 + listeners.len();
    let fds_env = listeners
        .iter()
        .enumerate()
        .map(|(i, (field, _))| format!("{field}={}", 3 + i))
        .collect::<Vec<_>>()
        .join(",");
    let sources: Vec<RawFd> = high
        .iter()
        .map(std::os::fd::AsRawFd::as_raw_fd)
        .chain([write_end.as_raw_fd()])
        .collect();
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env(ENV_FDS, fds_env)
        .env(ENV_READY, ready_fd.to_string());
    // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
    #[allow(unsafe_code, reason = "placing inherited descriptors in the child")]
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            for (i, fd) in sources.iter().enumerate() {
                let target = RawFd::try_from(3 + i).unwrap_or(RawFd::MAX);
                if libc::dup2(*fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| HandoverError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    drop(write_end);
    drop(high);
    let pid = child.id();
    tracing::info!(pid, exe = %exe.display(), "hand-over: successor started; waiting until it serves");
    let waited = tokio::task::spawn_blocking(move || {
        let mut pipe = std::fs::File::from(read_end);
        let fd = pipe.as_fd();
        let mut poll = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::time::Timespec::try_from(READY_TIMEOUT).ok();
        match rustix::event::poll(&mut poll, timeout.as_ref()) {
            Ok(0) => return Err(format!("no word after {READY_TIMEOUT:?}")),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        let mut byte = [0u8; 1];
        match pipe.read(&mut byte) {
            Ok(1) => Ok(()),
            Ok(_) => Err("it exited".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .map_err(|e| HandoverError::NotReady(e.to_string()))?;
    if let Err(why) = waited {
        let _ = child.kill();
        let _ = child.wait();
        return Err(HandoverError::NotReady(why));
    }
    // The successor outlives us: its exit status is for our parent (init).
    std::mem::forget(child);
    Ok(pid)
}

pub(super) const PROXY_V4: &str = "intercept.proxy_port";
pub(super) const PROXY_V6: &str = "intercept.proxy_port (IPv6)";
pub(super) const PROXY_NS: &str = "intercept.namespace_listen";

/// A listening socket a hand-over passes on: its config field, the
/// address it listens on, its descriptor.
pub(super) type Passed = (&'static str, SocketAddr, std::os::fd::RawFd);

/// The addresses `config` listens on, by field: the gateway's, the admin
/// listener's and (`agent`) the transparent proxy's.
pub(super) fn listen_addrs(config: &Config, agent: bool) -> Vec<(&'static str, SocketAddr)> {
    let mut out = Vec::new();
    if agent {
        let [v4, v6] = transparent::listen_addrs(config.intercept.proxy_port);
        out.push((PROXY_V4, v4));
        out.push((PROXY_V6, v6));
        if let Some(ip) = config.intercept.namespace_listen {
            out.push((
                PROXY_NS,
                SocketAddr::new(ip.into(), config.intercept.proxy_port),
            ));
        }
    }
    if !agent || config.gateway.explicit {
        out.push(("gateway.listen", config.gateway.listen));
    }
    out.push(("admin.listen", config.admin.listen));
    out
}

/// What a hand-over needs: the config as it would be read again, and the
/// listening sockets.
pub(super) struct Reload {
    pub(super) source: Option<ConfigSource>,
    pub(super) listeners: Vec<Passed>,
    /// The transparent agent (`leash run`), whose proxy sockets are passed
    /// too.
    pub(super) agent: bool,
}

impl Reload {
    /// Checks the config as it is now (a broken one, or one that moves a
    /// listener, is refused with the reason), then starts the successor.
    /// A listener the new config no longer has is closed by the successor.
    async fn hand_over(&self) -> Result<u32, String> {
        if let Some(source) = &self.source {
            let next = source()?;
            let wanted = listen_addrs(&next, self.agent);
            for (field, now, _) in &self.listeners {
                if let Some((_, to)) = wanted.iter().find(|(f, to)| f == field && to != now) {
                    return Err(format!(
                        "{field} changes from {now} to {to}: a listening address cannot move in a hand-over; restart Leash for that"
                    ));
                }
            }
        }
        let fds: Vec<_> = self.listeners.iter().map(|(f, _, fd)| (*f, *fd)).collect();
        start_successor(&fds).await.map_err(|e| e.to_string())
    }
}

/// What starts a hand-over: `SIGUSR2` (registered at start: its default
/// action ends the process), or a request from `leash reload` through the
/// admin API.
pub(super) type HandoverTriggers = (
    Option<tokio::signal::unix::Signal>,
    tokio::sync::mpsc::Receiver<crate::console::ReloadRequest>,
);

/// Waits for `shutdown`, or for a hand-over (`SIGUSR2`, or a request on
/// `requests`) whose successor serves; a refused or failed hand-over is
/// logged (and answered) and this process keeps serving.
/// Returns whether a successor took over.
pub(super) async fn until_stop_or_handover(
    shutdown: impl Future<Output = ()>,
    reload: &Reload,
    (mut usr2, mut requests): HandoverTriggers,
) -> bool {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let signalled = async {
            match usr2.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let answer = tokio::select! {
            () = &mut shutdown => return false,
            () = signalled => None,
            Some(answer) = requests.recv() => Some(answer),
        };
        let result = reload.hand_over().await;
        match &result {
            Ok(pid) => tracing::info!(
                successor = pid,
                "hand-over: the successor serves; this process drains and exits"
            ),
            Err(e) => {
                tracing::error!(error = %e, "hand-over refused or failed; this process keeps serving");
            }
        }
        let done = result.is_ok();
        if let Some(answer) = answer {
            let _ = answer.send(result);
        }
        if done {
            return true;
        }
    }
}
