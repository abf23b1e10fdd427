//! The kernel side, loaded and attached: the eBPF object built from
//! `leash-ebpf`, its programs attached with bpf links to one cgroup, and its
//! maps. With `failure_mode: open` the links go away with the agent (traffic
//! flows direct); with `closed` they are pinned (see `pin`) and stay.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use leash_common::{
    DNS_NAME_LEN, Endpoint, InterceptConfig, OrigDst, RefusalKey, dns_name_key, names,
};

use super::pin::{self, PinError};

/// The compiled kernel programs (empty when built without the eBPF
/// toolchain: see `leash-agent/build.rs`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leash-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(
        "this leash was built without its eBPF programs: run `cargo xtask setup`, then rebuild (`cargo build --release`)"
    )]
    NotBuilt,
    #[error("cannot load the eBPF programs: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program or map `{0}` is missing from the object")]
    Missing(&'static str),
    #[error("eBPF program `{0}`: {1}")]
    Program(&'static str, #[source] aya::programs::ProgramError),
    #[error("eBPF map `{0}`: {1}")]
    Map(&'static str, #[source] aya::maps::MapError),
    #[error("cannot open cgroup {0}: {1}")]
    Cgroup(PathBuf, std::io::Error),
    #[error("eBPF link of `{0}`: {1}")]
    Link(&'static str, #[source] LinkError),
    #[error(transparent)]
    Pin(#[from] PinError),
}

/// What the kernel side is told at start.
#[derive(Debug, Clone)]
pub struct HookSettings {
    pub cgroup: PathBuf,
    pub proxy_port: u16,
    pub ports: Vec<u16>,
    pub all_ports: bool,
    pub bypass_mark: u32,
    /// Host names whose DNS answers add their addresses as targets; empty:
    /// no DNS observation.
    pub dns_names: Vec<String>,
    /// The cgroup's directory in bpffs (see `pin`). The maps every agent on
    /// the cgroup shares sit beside it — a successor reads what its
    /// predecessor's hooks recorded during a hand-over — and with
    /// `pin_links` the links are pinned in it.
    pub pin_dir: PathBuf,
    /// `failure_mode: closed`: pin the links so they outlive the agent.
    pub pin_links: bool,
    /// Where connections from other network namespaces (containers) are
    /// sent; `None`: they are refused and reported.
    pub namespace_listen: Option<Ipv4Addr>,
    /// Refuse UDP to provider addresses on intercepted ports (QUIC).
    pub block_udp: bool,
    /// Forward proxies whose connections are answered by the agent.
    pub forward_proxies: Vec<SocketAddr>,
}

/// The client end of an accepted connection, as the proxy sees it (what
/// the kernel record is keyed by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// Where a redirected connection was going: the address the application
/// connected to (a provider, or a forward proxy), from the kernel record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrigDstAddr(pub SocketAddr);

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for OrigDstAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl OrigDstAddr {
    /// The original destination of a kernel record.
    pub fn of(orig: &OrigDst) -> Self {
        let v6 = std::net::Ipv6Addr::from(orig.ip);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        };
        Self(SocketAddr::new(ip, orig.port))
    }
}

/// A kernel record older than this at accept is refused: the connection it
/// named has long been accepted or failed.
const MAX_RECORD_AGE: Duration = Duration::from_secs(10);

/// Why there is no usable record for an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRecord {
    /// No record: the connection did not come through the hooks.
    Missing,
    /// A record older than `MAX_RECORD_AGE`: left by another connection.
    Stale,
}

impl NoRecord {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "no_record",
            Self::Stale => "stale_record",
        }
    }
}

/// `addr` as the kernel side's 16-byte address (IPv4 mapped).
pub fn endpoint(addr: SocketAddr) -> Endpoint {
    let ip = match addr.ip().to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    Endpoint::new(ip, addr.port())
}

/// `CLOCK_MONOTONIC` in nanoseconds, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// The cookie of the network namespace this process is in (0 when the
/// kernel cannot say).
fn own_netns_cookie() -> u64 {
    let Ok(sock) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None) else {
        return 0;
    };
    let mut cookie = 0u64;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<u64>()).unwrap_or(8);
    // SAFETY: SO_NETNS_COOKIE writes one u64 into the buffer given, whose
    // length is passed; the socket is open for the call's duration.
    #[allow(
        unsafe_code,
        reason = "getsockopt has no safe wrapper for SO_NETNS_COOKIE"
    )]
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc == 0 { cookie } else { 0 }
}

/// `SO_NETNS_COOKIE` (Linux 5.14).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Loaded and attached hooks. Dropping this detaches them, unless they
/// are pinned (fail closed).
pub struct KernelHooks {
    _ebpf: Ebpf,
    _config: Array<MapData, InterceptConfig>,
    _ports: HashMap<MapData, u16, u8>,
    /// The programs' links: dropping them detaches the hooks (unless they
    /// are pinned, and the pins stay).
    links: Mutex<Links>,
    pinned: bool,
    targets_v4: Mutex<HashMap<MapData, u32, u8>>,
    targets_v6: Mutex<HashMap<MapData, [u8; 16], u8>>,
    dns_v4: HashMap<MapData, u32, u64>,
    dns_v6: HashMap<MapData, [u8; 16], u64>,
    by_client: Mutex<HashMap<MapData, Endpoint, OrigDst>>,
    refused: Mutex<HashMap<MapData, RefusalKey, u64>>,
    cgroup: PathBuf,
    /// The cgroup's bpffs directory and the shared maps' directory.
    shared: (PathBuf, PathBuf),
}

/// Keeps the attached `link` of program `name` for pinning.
fn keep_link<L>(
    links: &mut Vec<(&'static str, FdLink)>,
    name: &'static str,
    link: Result<L, aya::programs::ProgramError>,
) -> Result<(), HookError>
where
    FdLink: TryFrom<L, Error = LinkError>,
{
    let link = link.map_err(|e| HookError::Program(name, e))?;
    links.push((
        name,
        FdLink::try_from(link).map_err(|e| HookError::Link(name, e))?,
    ));
    Ok(())
}

/// The maps an agent shares with the agents before and after it on the
/// same cgroup: the records (callers, DNS-learned targets, refusal counts)
/// and the config, which a new agent overwrites at once. While two agents'
/// hooks are attached (a hand-over, or a fail-closed agent taking over the
/// pinned hooks), the older hooks run first and record in these maps, and
/// whichever process accepts the connection finds its record.
const SHARED_MAPS: [&str; 6] = [
    names::CONFIG,
    names::BY_COOKIE,
    names::BY_CLIENT,
    names::DNS_V4,
    names::DNS_V6,
    names::REFUSED,
];

/// Loads the eBPF object with its shared maps opened from (or created and
/// pinned in) the maps directory beside `pin_dir`. Returns the object and
/// that directory.
fn load(settings: &HookSettings) -> Result<(Ebpf, PathBuf), HookError> {
    let maps = pin::maps_dir(&settings.pin_dir, &pin::layout(EBPF_OBJECT, &SHARED_MAPS)?);
    std::fs::create_dir_all(&maps).map_err(|e| PinError::Dir(maps.clone(), e))?;
    let mut loader = EbpfLoader::new();
    for name in SHARED_MAPS {
        loader.map_pin_path(name, maps.join(name));
    }
    let ebpf = loader.load(EBPF_OBJECT).map_err(HookError::Load)?;
    Ok((ebpf, maps))
}

/// An agent's links to its programs: its own (fail open), or pinned.
/// Held, never read: dropping a link closes it.
#[allow(dead_code, reason = "held for their Drop: a closed link detaches")]
enum Links {
    Own(Vec<FdLink>),
    Pinned(Vec<PinnedLink>),
}

/// Pins `links` (fail closed), then, with ours attached, releases the
/// hooks a previous agent left pinned on the cgroup (and the maps of
/// another layout): there is no gap.
fn pin_and_take_over(
    settings: &HookSettings,
    links: Vec<(&'static str, FdLink)>,
    maps: &Path,
) -> Result<Links, HookError> {
    let dir = &settings.pin_dir;
    let mut keep = Vec::new();
    let links = if settings.pin_links {
        let mut pinned = Vec::new();
        for (name, link) in links {
            let (link, path) = pin::pin(dir, name, link)?;
            keep.push(path);
            pinned.push(link);
        }
        Links::Pinned(pinned)
    } else {
        Links::Own(links.into_iter().map(|(_, link)| link).collect())
    };
    let released = pin::release_links(dir, &keep)?;
    pin::release_maps(dir, Some(maps))?;
    if released > 0 {
        tracing::info!(released, dir = %dir.display(), "took over from the hooks a previous agent left pinned");
    }
    Ok(links)
}

/// The config and ports maps, filled from `settings`. Both must stay open
/// until the programs are loaded (their fds are what the loader refers to);
/// the config map is also updated at stop.
type Configured = (Array<MapData, InterceptConfig>, HashMap<MapData, u16, u8>);

fn configure(ebpf: &mut Ebpf, settings: &HookSettings) -> Result<Configured, HookError> {
    let map_err = |name| move |e| HookError::Map(name, e);
    let mut config: Array<MapData, InterceptConfig> =
        Array::try_from(take_map(ebpf, names::CONFIG)?).map_err(map_err(names::CONFIG))?;
    let mut ports: HashMap<MapData, u16, u8> =
        HashMap::try_from(take_map(ebpf, names::PORTS)?).map_err(map_err(names::PORTS))?;
    for port in &settings.ports {
        ports.insert(port, 1, 0).map_err(map_err(names::PORTS))?;
    }
    let mut proxies: HashMap<_, Endpoint, u8> = HashMap::try_from(
        ebpf.map_mut(names::FORWARD_PROXIES)
            .ok_or(HookError::Missing(names::FORWARD_PROXIES))?,
    )
    .map_err(map_err(names::FORWARD_PROXIES))?;
    for proxy in &settings.forward_proxies {
        proxies
            .insert(endpoint(*proxy), 1, 0)
            .map_err(map_err(names::FORWARD_PROXIES))?;
    }
    config
        .set(
            0,
            InterceptConfig {
                proxy_ip4_be: u32::from_ne_bytes([127, 0, 0, 1]),
                proxy_port_be: settings.proxy_port.to_be(),
                enabled: 1,
                all_ports: u8::from(settings.all_ports),
                bypass_mark: settings.bypass_mark,
                ns_proxy_ip4_be: settings
                    .namespace_listen
                    .map_or(0, |ip| u32::from_ne_bytes(ip.octets())),
                agent_netns: own_netns_cookie(),
                block_udp: u8::from(settings.block_udp),
                pad: [0; 7],
            },
            0,
        )
        .map_err(map_err(names::CONFIG))?;
    Ok((config, ports))
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, HookError> {
    ebpf.take_map(name).ok_or(HookError::Missing(name))
}

impl KernelHooks {
    /// Loads the programs, configures them and attaches them to the cgroup.
    pub fn attach(settings: &HookSettings) -> Result<Self, HookError> {
        if EBPF_OBJECT.is_empty() {
            return Err(HookError::NotBuilt);
        }
        let (mut ebpf, maps) = load(settings)?;
        let map_err = |name| move |e| HookError::Map(name, e);

        let (config, ports) = configure(&mut ebpf, settings)?;
        let targets_v4 = HashMap::try_from(take_map(&mut ebpf, names::TARGETS_V4)?)
            .map_err(map_err(names::TARGETS_V4))?;
        let targets_v6 = HashMap::try_from(take_map(&mut ebpf, names::TARGETS_V6)?)
            .map_err(map_err(names::TARGETS_V6))?;
        let by_client = HashMap::try_from(take_map(&mut ebpf, names::BY_CLIENT)?)
            .map_err(map_err(names::BY_CLIENT))?;
        let dns_v4 = HashMap::try_from(take_map(&mut ebpf, names::DNS_V4)?)
            .map_err(map_err(names::DNS_V4))?;
        let dns_v6 = HashMap::try_from(take_map(&mut ebpf, names::DNS_V6)?)
            .map_err(map_err(names::DNS_V6))?;
        let refused = HashMap::try_from(take_map(&mut ebpf, names::REFUSED)?)
            .map_err(map_err(names::REFUSED))?;

        let mut links: Vec<(&'static str, FdLink)> = Vec::new();
        let cgroup = File::open(&settings.cgroup)
            .map_err(|e| HookError::Cgroup(settings.cgroup.clone(), e))?;
        // With bpf links (kernel >= 5.7, which aya uses) the kernel always
        // attaches in multi mode and rejects explicit flags: `Single` passes
        // none. Other programs on the cgroup (systemd's, a CNI's) keep running.
        let mode = || CgroupAttachMode::Single;
        for name in [
            names::CONNECT4,
            names::CONNECT6,
            names::SENDMSG4,
            names::SENDMSG6,
            names::GETPEERNAME4,
            names::GETPEERNAME6,
        ] {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(HookError::Missing(name))?
                .try_into()
                .map_err(|e| HookError::Program(name, e))?;
            program.load().map_err(|e| HookError::Program(name, e))?;
            let id = program
                .attach(&cgroup, mode())
                .map_err(|e| HookError::Program(name, e))?;
            keep_link(&mut links, name, program.take_link(id))?;
        }
        let sockops: &mut SockOps = ebpf
            .program_mut(names::SOCKOPS)
            .ok_or(HookError::Missing(names::SOCKOPS))?
            .try_into()
            .map_err(|e| HookError::Program(names::SOCKOPS, e))?;
        sockops
            .load()
            .map_err(|e| HookError::Program(names::SOCKOPS, e))?;
        let id = sockops
            .attach(&cgroup, mode())
            .map_err(|e| HookError::Program(names::SOCKOPS, e))?;
        keep_link(&mut links, names::SOCKOPS, sockops.take_link(id))?;

        if !settings.dns_names.is_empty() {
            let mut names_map: HashMap<MapData, [u8; DNS_NAME_LEN], u8> =
                HashMap::try_from(take_map(&mut ebpf, names::DNS_NAMES)?)
                    .map_err(map_err(names::DNS_NAMES))?;
            for name in &settings.dns_names {
                match dns_name_key(name) {
                    Some(key) => names_map
                        .insert(key, 1, 0)
                        .map_err(map_err(names::DNS_NAMES))?,
                    None => {
                        tracing::warn!(%name, "host name too long for DNS observation; only resolved addresses apply");
                    }
                }
            }
            let dns: &mut CgroupSkb = ebpf
                .program_mut(names::DNS_INGRESS)
                .ok_or(HookError::Missing(names::DNS_INGRESS))?
                .try_into()
                .map_err(|e| HookError::Program(names::DNS_INGRESS, e))?;
            dns.load()
                .map_err(|e| HookError::Program(names::DNS_INGRESS, e))?;
            let id = dns
                .attach(&cgroup, CgroupSkbAttachType::Ingress, mode())
                .map_err(|e| HookError::Program(names::DNS_INGRESS, e))?;
            keep_link(&mut links, names::DNS_INGRESS, dns.take_link(id))?;
        }

        let links = pin_and_take_over(settings, links, &maps)?;
        Ok(Self {
            _ebpf: ebpf,
            _config: config,
            _ports: ports,
            links: Mutex::new(links),
            pinned: settings.pin_links,
            targets_v4: Mutex::new(targets_v4),
            targets_v6: Mutex::new(targets_v6),
            dns_v4,
            dns_v6,
            by_client: Mutex::new(by_client),
            refused: Mutex::new(refused),
            cgroup: settings.cgroup.clone(),
            shared: (settings.pin_dir.clone(), maps),
        })
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Detaches this agent's hooks now, once a successor's are attached (a
    /// hand-over): their pins, if any, the successor has already released,
    /// so closing the links detaches them. The maps stay for the successor.
    pub fn detach(&self) {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        *links = Links::Own(Vec::new());
    }

    /// Removes the pins of the shared maps (and the cgroup's bpffs
    /// directory once empty): for an agent that stops with nobody after
    /// it and hooks that go with it (fail open). The maps themselves go
    /// when the last program using them is detached.
    pub fn unpin_shared_maps(&self) {
        let (dir, maps) = &self.shared;
        if let Err(e) = std::fs::remove_dir_all(maps) {
            tracing::warn!(dir = %maps.display(), error = %e, "cannot remove the shared maps' pins");
        }
        let _ = std::fs::remove_dir(dir);
    }

    /// Whether the hooks stay attached when the agent goes (fail closed).
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// Makes connections to `ip` targets (idempotent). IPv4-mapped IPv6
    /// addresses count as IPv4.
    pub fn add_target(&self, ip: IpAddr) -> Result<(), HookError> {
        match ip.to_canonical() {
            IpAddr::V4(v4) => self
                .targets_v4
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(u32::from_ne_bytes(v4.octets()), 1, 0)
                .map_err(|e| HookError::Map(names::TARGETS_V4, e)),
            IpAddr::V6(v6) => self
                .targets_v6
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(v6.octets(), 1, 0)
                .map_err(|e| HookError::Map(names::TARGETS_V6, e)),
        }
    }

    /// Every address connections to which are redirected now: configured
    /// and resolved ones, and those seen in DNS answers and not expired.
    pub fn targets(&self) -> Vec<IpAddr> {
        let now = monotonic_ns();
        let mut out: Vec<IpAddr> = self
            .targets_v4
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .filter_map(Result::ok)
            .map(|k| IpAddr::from(k.to_ne_bytes()))
            .collect();
        out.extend(
            self.targets_v6
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
                .filter_map(Result::ok)
                .map(IpAddr::from),
        );
        out.extend(
            self.dns_v4
                .iter()
                .filter_map(Result::ok)
                .filter(|(_, expiry)| *expiry > now)
                .map(|(k, _)| IpAddr::from(k.to_ne_bytes())),
        );
        out.extend(
            self.dns_v6
                .iter()
                .filter_map(Result::ok)
                .filter(|(_, expiry)| *expiry > now)
                .map(|(k, _)| IpAddr::from(k)),
        );
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether connections to `ip` are redirected now (a configured,
    /// resolved, or fresh DNS-observed provider address).
    pub fn is_target(&self, ip: IpAddr) -> bool {
        let now = monotonic_ns();
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let key = u32::from_ne_bytes(v4.octets());
                self.targets_v4
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&key, 0)
                    .is_ok()
                    || self.dns_v4.get(&key, 0).is_ok_and(|expiry| expiry > now)
            }
            IpAddr::V6(v6) => {
                let key = v6.octets();
                self.targets_v6
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&key, 0)
                    .is_ok()
                    || self.dns_v6.get(&key, 0).is_ok_and(|expiry| expiry > now)
            }
        }
    }

    /// Takes the record of the redirected connection whose client side is
    /// `peer` (as the proxy sees it): each record is used once, and one
    /// older than a few seconds is refused.
    pub fn take(&self, peer: ClientAddr) -> Result<OrigDst, NoRecord> {
        let key = endpoint(peer.0);
        let mut map = self
            .by_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let rec = map.get(&key, 0).map_err(|_| NoRecord::Missing)?;
        let _ = map.remove(&key);
        let age = monotonic_ns().saturating_sub(rec.created_ns);
        if u128::from(age) > MAX_RECORD_AGE.as_nanos() {
            return Err(NoRecord::Stale);
        }
        Ok(rec)
    }

    /// Takes the kernel's refusal counts, per cgroup and reason, since the
    /// last call: each count is removed as it is read (the kernel starts it
    /// again at the next refusal), so counts the hooks made while no agent
    /// ran (fail closed) are read once, by the agent that takes over. A
    /// refusal counted between the read and the removal of its key (a few
    /// microseconds) goes uncounted; the connection is refused all the same.
    pub fn take_refusals(&self) -> Vec<(RefusalKey, u64)> {
        let mut map = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        let counts: Vec<(RefusalKey, u64)> = map.iter().filter_map(Result::ok).collect();
        for (key, _) in &counts {
            let _ = map.remove(key);
        }
        counts
    }
}

impl Drop for KernelHooks {
    /// Pinned hooks stay (fail closed): they keep redirecting provider
    /// connections to the closed proxy port. No process is exempt from
    /// them but by the socket mark, which only a privileged process can set.
    fn drop(&mut self) {
        if !self.pinned {
            return;
        }
        tracing::info!(
            cgroup = %self.cgroup.display(),
            "kernel hooks stay attached (intercept.failure_mode: closed): provider connections are refused until leash runs again"
        );
    }
}
