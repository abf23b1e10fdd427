//! The kernel side, loaded and attached: the eBPF object built from
//! `leash-ebpf`, its programs attached with bpf links to one cgroup, and its
//! maps. With `failure_mode: open` the links go away with the agent (traffic
//! flows direct); with `closed` they are pinned (see `pin`) and stay.

use std::{
    fs::File,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use leash_common::{DNS_NAME_LEN, InterceptConfig, OrigDst, dns_name_key, names};

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
    /// `failure_mode: closed`: pin the links here so they outlive the agent.
    pub pin_dir: Option<PathBuf>,
}

/// Loaded and attached hooks. Dropping this detaches them, unless they
/// are pinned (fail closed).
pub struct KernelHooks {
    _ebpf: Ebpf,
    config: Mutex<Array<MapData, InterceptConfig>>,
    _ports: HashMap<MapData, u16, u8>,
    pinned: Vec<PinnedLink>,
    targets_v4: Mutex<HashMap<MapData, u32, u8>>,
    targets_v6: Mutex<HashMap<MapData, [u8; 16], u8>>,
    by_port: HashMap<MapData, u32, OrigDst>,
    cgroup: PathBuf,
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

/// Pins `links` (fail closed), then, with ours attached, releases the
/// hooks a previous agent left pinned on the cgroup: there is no gap.
fn pin_and_take_over(
    settings: &HookSettings,
    links: Vec<(&'static str, FdLink)>,
) -> Result<Vec<PinnedLink>, HookError> {
    let mut pinned = Vec::new();
    let mut keep = Vec::new();
    if let Some(dir) = &settings.pin_dir {
        for (name, link) in links {
            let (link, path) = pin::pin(dir, name, link)?;
            keep.push(path);
            pinned.push(link);
        }
    }
    if let Some(dir) = settings
        .pin_dir
        .clone()
        .or_else(|| pin::existing_dir(&settings.cgroup))
    {
        let released = pin::release(&dir, &keep)?;
        if released > 0 {
            tracing::info!(released, dir = %dir.display(), "took over from the hooks a previous agent left pinned");
        }
    }
    Ok(pinned)
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
    config
        .set(
            0,
            InterceptConfig {
                proxy_ip4_be: u32::from_ne_bytes([127, 0, 0, 1]),
                proxy_port_be: settings.proxy_port.to_be(),
                enabled: 1,
                all_ports: u8::from(settings.all_ports),
                bypass_mark: settings.bypass_mark,
                agent_tgid: std::process::id(),
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
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(HookError::Load)?;
        let map_err = |name| move |e| HookError::Map(name, e);

        let (config, ports) = configure(&mut ebpf, settings)?;
        let targets_v4 = HashMap::try_from(take_map(&mut ebpf, names::TARGETS_V4)?)
            .map_err(map_err(names::TARGETS_V4))?;
        let targets_v6 = HashMap::try_from(take_map(&mut ebpf, names::TARGETS_V6)?)
            .map_err(map_err(names::TARGETS_V6))?;
        let by_port = HashMap::try_from(take_map(&mut ebpf, names::BY_PORT)?)
            .map_err(map_err(names::BY_PORT))?;

        let pinning = settings.pin_dir.is_some();
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
            if pinning {
                keep_link(&mut links, name, program.take_link(id))?;
            }
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
        if pinning {
            keep_link(&mut links, names::SOCKOPS, sockops.take_link(id))?;
        }

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
            if pinning {
                keep_link(&mut links, names::DNS_INGRESS, dns.take_link(id))?;
            }
        }

        let pinned = pin_and_take_over(settings, links)?;
        Ok(Self {
            _ebpf: ebpf,
            config: Mutex::new(config),
            _ports: ports,
            pinned,
            targets_v4: Mutex::new(targets_v4),
            targets_v6: Mutex::new(targets_v6),
            by_port,
            cgroup: settings.cgroup.clone(),
        })
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Whether the hooks stay attached when the agent goes (fail closed).
    pub fn pinned(&self) -> bool {
        !self.pinned.is_empty()
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

    /// Every address connections to which are redirected now.
    pub fn targets(&self) -> Vec<IpAddr> {
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
        out
    }

    /// The original destination and caller of the redirected connection
    /// whose client side uses local port `client_port`.
    pub fn lookup(&self, client_port: u16) -> Option<OrigDst> {
        self.by_port.get(&u32::from(client_port), 0).ok()
    }
}

impl Drop for KernelHooks {
    /// Pinned hooks stay (fail closed): they keep redirecting provider
    /// connections to the closed proxy port. They no longer exempt this
    /// process's id, which the system may give to another process.
    fn drop(&mut self) {
        if self.pinned.is_empty() {
            return;
        }
        let mut config = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        if let Ok(mut c) = config.get(&0, 0) {
            c.agent_tgid = 0;
            if let Err(e) = config.set(0, c, 0) {
                tracing::warn!(error = %e, "cannot clear the agent's process id in the pinned hooks");
            }
        }
        tracing::info!(
            cgroup = %self.cgroup.display(),
            "kernel hooks stay attached (intercept.failure_mode: closed): provider connections are refused until leash runs again"
        );
    }
}
