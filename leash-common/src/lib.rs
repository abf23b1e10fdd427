//! Types shared between the kernel side (`leash-ebpf`) and the userspace agent.
//!
//! Everything here is `no_std` and `#[repr(C)]` so the same layout is seen on
//! both sides of a BPF map. Addresses and ports say in their names which byte
//! order they hold.
#![no_std]

/// API shapes Leash understands. A provider speaks exactly one of them.
///
/// Stored as a `u8` so it can live in BPF maps next to target addresses.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// `OpenAI` chat completions / responses / embeddings, and every
    /// OpenAI-compatible service (Mistral, Groq, vLLM, ...).
    OpenAi = 1,
    /// Anthropic messages API.
    Anthropic = 2,
    /// Google Gemini `generateContent` API.
    Google = 3,
}

impl ProviderKind {
    /// All kinds, in a stable order.
    pub const ALL: [Self; 3] = [Self::OpenAi, Self::Anthropic, Self::Google];

    /// The name used in configuration files and audit records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Google => "google",
        }
    }

    /// Parses a configuration name (`openai`, `anthropic`, `google`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Names of the maps and programs in the eBPF object, used by both sides.
pub mod names {
    pub const CONFIG: &str = "LEASH_CONFIG";
    pub const TARGETS_V4: &str = "LEASH_TARGETS_V4";
    pub const TARGETS_V6: &str = "LEASH_TARGETS_V6";
    pub const PORTS: &str = "LEASH_PORTS";
    pub const BY_COOKIE: &str = "LEASH_BY_COOKIE";
    pub const BY_CLIENT: &str = "LEASH_BY_CLIENT";
    pub const DNS_V4: &str = "LEASH_DNS_V4";
    pub const DNS_V6: &str = "LEASH_DNS_V6";
    pub const FORWARD_PROXIES: &str = "LEASH_FORWARD_PROXIES";
    pub const REFUSED: &str = "LEASH_REFUSED";
    pub const CONNECT4: &str = "leash_connect4";
    pub const CONNECT6: &str = "leash_connect6";
    pub const GETPEERNAME4: &str = "leash_getpeername4";
    pub const GETPEERNAME6: &str = "leash_getpeername6";
    pub const SENDMSG4: &str = "leash_sendmsg4";
    pub const SENDMSG6: &str = "leash_sendmsg6";
    pub const SOCKOPS: &str = "leash_sockops";
    pub const DNS_NAMES: &str = "LEASH_DNS_NAMES";
    pub const DNS_INGRESS: &str = "leash_dns_ingress";
}

/// Longest host name (dotted, lower case) the DNS observer matches; names
/// are stored NUL-padded to this length.
pub const DNS_NAME_LEN: usize = 64;

/// A watched host name as the DNS observer's map key: lower case, dotted,
/// no trailing dot, NUL-padded. `None` if it does not fit.
pub fn dns_name_key(name: &str) -> Option<[u8; DNS_NAME_LEN]> {
    let name = name.trim_end_matches('.');
    if name.is_empty() || name.len() >= DNS_NAME_LEN {
        return None;
    }
    let mut key = [0u8; DNS_NAME_LEN];
    for (k, b) in key.iter_mut().zip(name.bytes()) {
        *k = b.to_ascii_lowercase();
    }
    Some(key)
}

/// Capacity of the target address maps.
pub const MAX_TARGETS: u32 = 16_384;
/// Capacity of the connection maps (LRU: the oldest entries go first).
pub const MAX_CONNECTIONS: u32 = 65_536;

/// Addresses learned from DNS answers live at least this long (seconds),
/// whatever the answer's TTL: applications cache answers past their TTL.
pub const MIN_DNS_TTL_SECS: u64 = 900;

/// What the agent tells the kernel side (index 0 of the `CONFIG` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterceptConfig {
    /// The proxy's IPv4 listener address, network byte order (127.0.0.1).
    pub proxy_ip4_be: u32,
    /// The proxy's listener port, network byte order (same on v4 and v6).
    pub proxy_port_be: u16,
    /// 1 when interception is on; 0 makes every hook a no-op.
    pub enabled: u8,
    /// 1: every TCP connection to a port in `PORTS` is redirected
    /// (`scope: all-tls`); 0: only those to addresses in `TARGETS_V4/V6`.
    pub all_ports: u8,
    /// Sockets carrying this `SO_MARK` (the agent's own upstream sockets;
    /// setting a mark takes `CAP_NET_ADMIN`) are never redirected.
    pub bypass_mark: u32,
    /// The address (network byte order) the agent listens on for
    /// connections from other network namespaces (containers); 0: none,
    /// such connections to a target are refused and counted.
    pub ns_proxy_ip4_be: u32,
    /// The network namespace cookie of the agent's own namespace (0: the
    /// kernel cannot tell; every namespace counts as the agent's).
    pub agent_netns: u64,
    /// 1: UDP to a target address on an intercepted port (QUIC) is refused,
    /// so clients fall back to TCP.
    pub block_udp: u8,
    pub pad: [u8; 7],
}

/// An address and port: a redirected connection's client side as the
/// proxy sees it (the key of `BY_CLIENT`), or a forward proxy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// IPv6, or IPv4 as `::ffff:a.b.c.d`.
    pub ip: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub pad: [u8; 6],
}

impl Endpoint {
    pub const fn new(ip: [u8; 16], port: u16) -> Self {
        Self {
            ip,
            port,
            pad: [0; 6],
        }
    }
}

/// `OrigDst::flags`: the connection was made to a forward proxy, which the
/// agent answers in its place (it reads the `CONNECT` first).
pub const VIA_FORWARD_PROXY: u8 = 1;
/// `OrigDst::flags`: the destination is a provider address (not only a
/// port in scope): a connection there that is not a provider's TLS is
/// refused, never spliced.
pub const TARGETED: u8 = 2;

/// Why the kernel side refused a connection (`RefusalKey::reason`).
pub mod refusal {
    /// UDP to a provider address on an intercepted port (QUIC).
    pub const UDP: u8 = 1;
    /// A connection to a provider from another network namespace, with no
    /// address for such connections configured.
    pub const NETNS: u8 = 2;
}

/// Counts of kernel refusals, per cgroup and reason (the `REFUSED` map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RefusalKey {
    pub cgroup_id: u64,
    pub reason: u8,
    pub pad: [u8; 7],
}

/// The original destination and the caller of a redirected connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    /// The destination the application asked for; IPv4 as `::ffff:a.b.c.d`.
    pub ip: [u8; 16],
    /// Destination port, host byte order.
    pub port: u16,
    /// 4 or 6: the address family the application connected with.
    pub family: u8,
    /// [`VIA_FORWARD_PROXY`], [`TARGETED`].
    pub flags: u8,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub pad2: u32,
    pub cgroup_id: u64,
    /// When the connect hook ran (`CLOCK_MONOTONIC`, ns): a record older
    /// than a few seconds at accept is refused.
    pub created_ns: u64,
    /// The calling thread's `comm`, NUL-padded.
    pub comm: [u8; 16],
}

impl OrigDst {
    pub const fn zeroed() -> Self {
        Self {
            ip: [0; 16],
            port: 0,
            family: 0,
            flags: 0,
            tgid: 0,
            pid: 0,
            uid: 0,
            gid: 0,
            pad2: 0,
            cgroup_id: 0,
            created_ns: 0,
            comm: [0; 16],
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data `#[repr(C)]` structs with explicit padding.
    #[allow(
        unsafe_code,
        reason = "aya::Pod is an unsafe marker trait for map values"
    )]
    unsafe impl aya::Pod for super::InterceptConfig {}
    #[allow(
        unsafe_code,
        reason = "aya::Pod is an unsafe marker trait for map values"
    )]
    unsafe impl aya::Pod for super::OrigDst {}
    #[allow(
        unsafe_code,
        reason = "aya::Pod is an unsafe marker trait for map values"
    )]
    unsafe impl aya::Pod for super::Endpoint {}
    #[allow(
        unsafe_code,
        reason = "aya::Pod is an unsafe marker trait for map values"
    )]
    unsafe impl aya::Pod for super::RefusalKey {}
}

#[cfg(test)]
mod tests {
    use super::ProviderKind;

    #[test]
    fn names_round_trip() {
        for kind in ProviderKind::ALL {
            assert_eq!(ProviderKind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(ProviderKind::from_name("OpenAI"), None);
    }

    #[test]
    fn dns_keys() {
        let key = super::dns_name_key("API.OpenAI.com.").unwrap();
        assert_eq!(&key[..15], b"api.openai.com\0");
        assert!(super::dns_name_key(&"a".repeat(64)).is_none());
        assert!(super::dns_name_key("").is_none());
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<super::InterceptConfig>(), 32);
        assert_eq!(core::mem::size_of::<super::OrigDst>(), 72);
        assert_eq!(core::mem::size_of::<super::Endpoint>(), 24);
        assert_eq!(core::mem::size_of::<super::RefusalKey>(), 16);
    }
}
