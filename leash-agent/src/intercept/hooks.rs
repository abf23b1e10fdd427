//! The kernel side, loaded and attached: the eBPF object built from
//! `leash-ebpf`, its programs attached with bpf links to one cgroup (so they
//! go away with the agent: fail open), and its maps.

use std::{
    fs::File,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps},
};
use leash_common::{DNS_NAME_LEN, InterceptConfig, OrigDst, dns_name_key, names};

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
}

/// Loaded and attached hooks. Dropping this detaches them.
pub struct KernelHooks {
    _ebpf: Ebpf,
    targets_v4: Mutex<HashMap<MapData, u32, u8>>,
    targets_v6: Mutex<HashMap<MapData, [u8; 16], u8>>,
    by_port: HashMap<MapData, u32, OrigDst>,
    cgroup: PathBuf,
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

        let mut config: Array<MapData, InterceptConfig> =
            Array::try_from(take_map(&mut ebpf, names::CONFIG)?).map_err(map_err(names::CONFIG))?;
        let mut ports: HashMap<MapData, u16, u8> =
            HashMap::try_from(take_map(&mut ebpf, names::PORTS)?).map_err(map_err(names::PORTS))?;
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
        let targets_v4 = HashMap::try_from(take_map(&mut ebpf, names::TARGETS_V4)?)
            .map_err(map_err(names::TARGETS_V4))?;
        let targets_v6 = HashMap::try_from(take_map(&mut ebpf, names::TARGETS_V6)?)
            .map_err(map_err(names::TARGETS_V6))?;
        let by_port = HashMap::try_from(take_map(&mut ebpf, names::BY_PORT)?)
            .map_err(map_err(names::BY_PORT))?;

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
            program
                .attach(&cgroup, mode())
                .map_err(|e| HookError::Program(name, e))?;
        }
        let sockops: &mut SockOps = ebpf
            .program_mut(names::SOCKOPS)
            .ok_or(HookError::Missing(names::SOCKOPS))?
            .try_into()
            .map_err(|e| HookError::Program(names::SOCKOPS, e))?;
        sockops
            .load()
            .map_err(|e| HookError::Program(names::SOCKOPS, e))?;
        sockops
            .attach(&cgroup, mode())
            .map_err(|e| HookError::Program(names::SOCKOPS, e))?;

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
            dns.attach(&cgroup, CgroupSkbAttachType::Ingress, mode())
                .map_err(|e| HookError::Program(names::DNS_INGRESS, e))?;
        }

        Ok(Self {
            _ebpf: ebpf,
            targets_v4: Mutex::new(targets_v4),
            targets_v6: Mutex::new(targets_v6),
            by_port,
            cgroup: settings.cgroup.clone(),
        })
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
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

    /// The original destination and caller of the redirected connection
    /// whose client side uses local port `client_port`.
    pub fn lookup(&self, client_port: u16) -> Option<OrigDst> {
        self.by_port.get(&u32::from(client_port), 0).ok()
    }
}
