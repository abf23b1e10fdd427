//! Leash's kernel side: cgroup hooks that send TCP connections bound for LLM
//! providers to the local proxy, remember where they were going and who made
//! them, keep the redirect invisible to the application, and refuse the ways
//! around it.
//!
//! - `connect4` / `connect6`: a TCP connect to a target (address in
//!   `LEASH_TARGETS_*` or, while fresh, `LEASH_DNS_*`; any address with
//!   `all_ports`) on a port in `LEASH_PORTS`, or to a forward proxy in
//!   `LEASH_FORWARD_PROXIES`, is rewritten to the proxy; the original
//!   destination and the caller go into `LEASH_BY_COOKIE`. From another
//!   network namespace (a container) the proxy's address there is
//!   `ns_proxy_ip4`; with none configured the connect is refused and
//!   counted in `LEASH_REFUSED` (never sent to a 127.0.0.1 where nothing
//!   listens). UDP to a target on an intercepted port (QUIC) is refused
//!   with `block_udp`, so clients fall back to TCP.
//! - `sendmsg4` / `sendmsg6`: the same UDP refusal for unconnected sends.
//! - `sockops` (`TCP_CONNECT_CB`): copies that record to `LEASH_BY_CLIENT`,
//!   keyed by the client's address and port, which is what the proxy sees
//!   as the peer of the accepted connection (the proxy deletes it there).
//! - `getpeername4` / `getpeername6`: report the original destination.
//!
//! - `cgroup_skb/ingress` (`leash_dns_ingress`): DNS answers (UDP from port
//!   53) to a question for a watched name (`LEASH_DNS_NAMES`) have their A
//!   and AAAA records added to the LRU maps `LEASH_DNS_*` (with an expiry:
//!   the answer's TTL, at least `MIN_DNS_TTL_SECS`) before the answer
//!   reaches the application, so a provider address learned from DNS is
//!   intercepted on the very first connection; a flood of forged answers
//!   evicts only other observed addresses, never configured or resolved ones.
//!
//! Sockets marked with the agent's `SO_MARK` (which takes `CAP_NET_ADMIN`)
//! are never redirected.
#![no_std]
#![no_main]
#![allow(
    unsafe_code,
    reason = "BPF context access and helpers are unsafe by nature"
)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
            bpf_ktime_get_ns,
        },
    },
    macros::{cgroup_skb, cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LruHashMap},
    programs::SkBuffContext,
    programs::{SockAddrContext, SockOpsContext},
};
use leash_common::{
    DNS_NAME_LEN, Endpoint, InterceptConfig, MAX_CONNECTIONS, MAX_TARGETS, MIN_DNS_TTL_SECS,
    OrigDst, RefusalKey, TARGETED, VIA_FORWARD_PROXY, refusal,
};

/// Cgroup sock_addr verdict: let the call proceed.
const ALLOW: i32 = 1;
/// Cgroup sock_addr verdict: the call fails with `EPERM`.
const DENY: i32 = 0;
/// Cgroup sock_ops verdict: success.
const SOCKOPS_OK: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP_ADDR: u32 = 17;
const AF_INET: u32 = 2;
const NS_PER_SEC: u64 = 1_000_000_000;

#[map]
static LEASH_CONFIG: Array<InterceptConfig> = Array::with_max_entries(1, 0);
#[map]
static LEASH_TARGETS_V4: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TARGETS, 0);
#[map]
static LEASH_TARGETS_V6: HashMap<[u8; 16], u8> = HashMap::with_max_entries(MAX_TARGETS, 0);
/// Addresses seen in DNS answers, with their expiry (`bpf_ktime_get_ns`).
#[map]
static LEASH_DNS_V4: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_TARGETS, 0);
#[map]
static LEASH_DNS_V6: LruHashMap<[u8; 16], u64> = LruHashMap::with_max_entries(MAX_TARGETS, 0);
#[map]
static LEASH_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);
#[map]
static LEASH_FORWARD_PROXIES: HashMap<Endpoint, u8> = HashMap::with_max_entries(64, 0);
#[map]
static LEASH_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);
#[map]
static LEASH_DNS_NAMES: HashMap<[u8; DNS_NAME_LEN], u8> = HashMap::with_max_entries(1024, 0);
#[map]
static LEASH_BY_CLIENT: LruHashMap<Endpoint, OrigDst> =
    LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);
#[map]
static LEASH_REFUSED: LruHashMap<RefusalKey, u64> = LruHashMap::with_max_entries(4096, 0);

fn config() -> Option<InterceptConfig> {
    LEASH_CONFIG.get(0).copied().filter(|c| c.enabled == 1)
}

/// The agent's own connections (sockets with its mark) pass.
fn is_agent(ctx: &SockAddrContext, cfg: &InterceptConfig) -> bool {
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    if sk.is_null() || cfg.bypass_mark == 0 {
        return false;
    }
    unsafe { (*sk).mark == cfg.bypass_mark }
}

fn port_in_scope(port: u16) -> bool {
    unsafe { LEASH_PORTS.get(&port) }.is_some()
}

fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

fn fresh(expiry: Option<&u64>) -> bool {
    expiry.is_some_and(|e| *e > now_ns())
}

fn target_v4(ip4_be: u32) -> bool {
    unsafe { LEASH_TARGETS_V4.get(&ip4_be) }.is_some()
        || fresh(unsafe { LEASH_DNS_V4.get(&ip4_be) })
}

fn target_v6(ip: &[u8; 16]) -> bool {
    unsafe { LEASH_TARGETS_V6.get(ip) }.is_some() || fresh(unsafe { LEASH_DNS_V6.get(ip) })
}

fn caller_record(ip: [u8; 16], port: u16, family: u8, flags: u8) -> OrigDst {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let mut rec = OrigDst::zeroed();
    rec.ip = ip;
    rec.port = port;
    rec.family = family;
    rec.flags = flags;
    rec.tgid = (pid_tgid >> 32) as u32;
    rec.pid = pid_tgid as u32;
    rec.uid = uid_gid as u32;
    rec.gid = (uid_gid >> 32) as u32;
    rec.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    rec.created_ns = now_ns();
    rec.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    rec
}

fn remember(ctx: &SockAddrContext, rec: &OrigDst) -> Option<()> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    LEASH_BY_COOKIE.insert(&cookie, rec, 0).ok()
}

/// Counts a refusal for the calling cgroup.
fn refused(reason: u8) {
    let key = RefusalKey {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        reason,
        pad: [0; 7],
    };
    match LEASH_REFUSED.get_ptr_mut(&key) {
        Some(count) => unsafe { *count += 1 },
        None => {
            let _ = LEASH_REFUSED.insert(&key, &1, 0);
        }
    }
}

/// Whether the calling socket is in another network namespace than the
/// agent (a container).
fn foreign_netns(ctx: &SockAddrContext, cfg: &InterceptConfig) -> bool {
    cfg.agent_netns != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != cfg.agent_netns
}

fn mapped_v4(ip4_be: u32) -> [u8; 16] {
    let b = ip4_be.to_ne_bytes();
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3],
    ]
}

/// What a connect or send to an address should do.
enum Verdict {
    /// Not ours: let it through untouched.
    Pass,
    /// Refused (`EPERM`), counted with the reason.
    Refuse(u8),
    /// Send it to the proxy, remembering where it was going.
    Redirect { flags: u8 },
}

/// The decision for a connect (or UDP send) to `port` on an address that
/// `targeted` says is a provider's (`forward_proxy`: one of the forward
/// proxies), before the namespace check.
fn decide(
    ctx: &SockAddrContext,
    cfg: &InterceptConfig,
    protocol: u32,
    port: u16,
    targeted: bool,
    forward_proxy: bool,
) -> Verdict {
    if is_agent(ctx, cfg) {
        return Verdict::Pass;
    }
    if protocol == IPPROTO_UDP_ADDR {
        return if cfg.block_udp == 1 && targeted && port_in_scope(port) {
            Verdict::Refuse(refusal::UDP)
        } else {
            Verdict::Pass
        };
    }
    if protocol != IPPROTO_TCP {
        return Verdict::Pass;
    }
    if forward_proxy {
        return Verdict::Redirect {
            flags: VIA_FORWARD_PROXY,
        };
    }
    if port_in_scope(port) && (cfg.all_ports == 1 || targeted) {
        return Verdict::Redirect {
            flags: if targeted { TARGETED } else { 0 },
        };
    }
    Verdict::Pass
}

fn verdict_code(v: &Verdict) -> i32 {
    match v {
        Verdict::Refuse(reason) => {
            refused(*reason);
            DENY
        }
        _ => ALLOW,
    }
}

#[cgroup_sock_addr(connect4)]
pub fn leash_connect4(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    let sa = unsafe { &mut *ctx.sock_addr };
    let port = u16::from_be(sa.user_port as u16);
    let ip4_be = sa.user_ip4;
    let ip = mapped_v4(ip4_be);
    let forward_proxy = unsafe { LEASH_FORWARD_PROXIES.get(&Endpoint::new(ip, port)) }.is_some();
    let mut verdict = decide(
        &ctx,
        &cfg,
        sa.protocol,
        port,
        target_v4(ip4_be),
        forward_proxy,
    );
    if let Verdict::Redirect { flags } = verdict {
        let proxy_ip = if foreign_netns(&ctx, &cfg) {
            cfg.ns_proxy_ip4_be
        } else {
            cfg.proxy_ip4_be
        };
        if proxy_ip == 0 {
            verdict = Verdict::Refuse(refusal::NETNS);
        } else if remember(&ctx, &caller_record(ip, port, 4, flags)).is_some() {
            sa.user_ip4 = proxy_ip;
            sa.user_port = u32::from(cfg.proxy_port_be);
        }
    }
    verdict_code(&verdict)
}

/// The address of a `sock_addr` context as 16 bytes, and whether it is an
/// IPv4-mapped address.
fn user_ip6(words: [u32; 4]) -> ([u8; 16], bool) {
    let mut ip = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        ip[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let mapped =
        words[0] == 0 && words[1] == 0 && words[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    (ip, mapped)
}

#[cgroup_sock_addr(connect6)]
pub fn leash_connect6(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    let sa = unsafe { &mut *ctx.sock_addr };
    let port = u16::from_be(sa.user_port as u16);
    let words = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let (ip, is_mapped) = user_ip6(words);
    let targeted = if is_mapped {
        target_v4(words[3])
    } else {
        target_v6(&ip)
    };
    let forward_proxy = unsafe { LEASH_FORWARD_PROXIES.get(&Endpoint::new(ip, port)) }.is_some();
    let mut verdict = decide(&ctx, &cfg, sa.protocol, port, targeted, forward_proxy);
    if let Verdict::Redirect { flags } = verdict {
        if foreign_netns(&ctx, &cfg) {
            // Only an IPv4 address is configured for other namespaces.
            if is_mapped && cfg.ns_proxy_ip4_be != 0 {
                if remember(&ctx, &caller_record(ip, port, 6, flags)).is_some() {
                    sa.user_ip6[3] = cfg.ns_proxy_ip4_be;
                    sa.user_port = u32::from(cfg.proxy_port_be);
                }
            } else {
                verdict = Verdict::Refuse(refusal::NETNS);
            }
        } else if remember(&ctx, &caller_record(ip, port, 6, flags)).is_some() {
            if is_mapped {
                // ::ffff:127.0.0.1 — the proxy's IPv4 listener.
                sa.user_ip6[3] = cfg.proxy_ip4_be;
            } else {
                // ::1 — the proxy's IPv6 listener.
                sa.user_ip6[0] = 0;
                sa.user_ip6[1] = 0;
                sa.user_ip6[2] = 0;
                sa.user_ip6[3] = u32::from_ne_bytes([0, 0, 0, 1]);
            }
            sa.user_port = u32::from(cfg.proxy_port_be);
        }
    }
    verdict_code(&verdict)
}

/// UDP sent without `connect` (QUIC clients that use `sendto`).
#[cgroup_sock_addr(sendmsg4)]
pub fn leash_sendmsg4(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    let sa = unsafe { &*ctx.sock_addr };
    let port = u16::from_be(sa.user_port as u16);
    let verdict = decide(
        &ctx,
        &cfg,
        IPPROTO_UDP_ADDR,
        port,
        target_v4(sa.user_ip4),
        false,
    );
    verdict_code(&verdict)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn leash_sendmsg6(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    let sa = unsafe { &*ctx.sock_addr };
    let port = u16::from_be(sa.user_port as u16);
    let words = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let (ip, is_mapped) = user_ip6(words);
    let targeted = if is_mapped {
        target_v4(words[3])
    } else {
        target_v6(&ip)
    };
    let verdict = decide(&ctx, &cfg, IPPROTO_UDP_ADDR, port, targeted, false);
    verdict_code(&verdict)
}

fn redirected(ctx: &SockAddrContext) -> Option<OrigDst> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    unsafe { LEASH_BY_COOKIE.get(&cookie) }.copied()
}

#[cgroup_sock_addr(getpeername4)]
pub fn leash_getpeername4(ctx: SockAddrContext) -> i32 {
    if let Some(rec) = redirected(&ctx) {
        let sa = unsafe { &mut *ctx.sock_addr };
        sa.user_ip4 = u32::from_ne_bytes([rec.ip[12], rec.ip[13], rec.ip[14], rec.ip[15]]);
        sa.user_port = u32::from(rec.port.to_be());
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn leash_getpeername6(ctx: SockAddrContext) -> i32 {
    if let Some(rec) = redirected(&ctx) {
        let sa = unsafe { &mut *ctx.sock_addr };
        let ip = rec.ip;
        sa.user_ip6[0] = u32::from_ne_bytes([ip[0], ip[1], ip[2], ip[3]]);
        sa.user_ip6[1] = u32::from_ne_bytes([ip[4], ip[5], ip[6], ip[7]]);
        sa.user_ip6[2] = u32::from_ne_bytes([ip[8], ip[9], ip[10], ip[11]]);
        sa.user_ip6[3] = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
        sa.user_port = u32::from(rec.port.to_be());
    }
    ALLOW
}

/// The socket's local IPv6 address, one field load at a time (the verifier
/// refuses loads through a context pointer that was moved).
fn local_ip6(ctx: &SockOpsContext) -> [u32; 4] {
    let ops = ctx.ops;
    unsafe {
        [
            core::ptr::read_volatile(&raw const (*ops).local_ip6[0]),
            core::ptr::read_volatile(&raw const (*ops).local_ip6[1]),
            core::ptr::read_volatile(&raw const (*ops).local_ip6[2]),
            core::ptr::read_volatile(&raw const (*ops).local_ip6[3]),
        ]
    }
}

#[sock_ops]
pub fn leash_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        if let Some(rec) = unsafe { LEASH_BY_COOKIE.get(&cookie) } {
            let ip = if ctx.family() == AF_INET {
                mapped_v4(ctx.local_ip4())
            } else {
                user_ip6(local_ip6(&ctx)).0
            };
            let key = Endpoint::new(ip, ctx.local_port() as u16);
            let _ = LEASH_BY_CLIENT.insert(&key, rec, 0);
        }
    }
    SOCKOPS_OK
}

const IPPROTO_UDP: u8 = 17;
const DNS_PORT: u16 = 53;
const DNS_TYPE_A: u16 = 1;
const DNS_TYPE_AAAA: u16 = 28;
/// Answer records looked at per response.
const MAX_ANSWERS: u32 = 16;

#[cgroup_skb(ingress)]
pub fn leash_dns_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_dns(&ctx);
    // Observe only: every packet passes.
    1
}

fn load_u8(ctx: &SkBuffContext, off: usize) -> Option<u8> {
    ctx.load::<u8>(off).ok()
}

fn load_be16(ctx: &SkBuffContext, off: usize) -> Option<u16> {
    ctx.load::<u16>(off).ok().map(u16::from_be)
}

/// The offset of the UDP payload of a DNS response, or `None`.
fn dns_payload(ctx: &SkBuffContext) -> Option<usize> {
    let first = load_u8(ctx, 0)?;
    let udp = match first >> 4 {
        4 => {
            if load_u8(ctx, 9)? != IPPROTO_UDP {
                return None;
            }
            usize::from(first & 0x0f) * 4
        }
        6 => {
            if load_u8(ctx, 6)? != IPPROTO_UDP {
                return None;
            }
            40
        }
        _ => return None,
    };
    if load_be16(ctx, udp)? != DNS_PORT {
        return None;
    }
    Some(udp + 8)
}

/// Reads the question name at `off` into `name` (lower case, dotted);
/// returns the offset after it.
fn read_question(
    ctx: &SkBuffContext,
    mut off: usize,
    name: &mut [u8; DNS_NAME_LEN],
) -> Option<usize> {
    let mut out = 0usize;
    let mut label_left = 0u8;
    for _ in 0..DNS_NAME_LEN {
        let b = load_u8(ctx, off)?;
        off += 1;
        if label_left == 0 {
            if b == 0 {
                return Some(off);
            }
            if b & 0xc0 != 0 {
                return None;
            }
            if out > 0 {
                if out >= DNS_NAME_LEN - 1 {
                    return None;
                }
                name[out & (DNS_NAME_LEN - 1)] = b'.';
                out += 1;
            }
            label_left = b;
        } else {
            if out >= DNS_NAME_LEN - 1 {
                return None;
            }
            name[out & (DNS_NAME_LEN - 1)] = b.to_ascii_lowercase();
            out += 1;
            label_left -= 1;
        }
    }
    // Longer than the longest watched name.
    None
}

/// Skips a (possibly compressed) name at `off`; returns the offset after it.
fn skip_name(ctx: &SkBuffContext, mut off: usize) -> Option<usize> {
    for _ in 0..DNS_NAME_LEN {
        let b = load_u8(ctx, off)?;
        if b & 0xc0 == 0xc0 {
            return Some(off + 2);
        }
        if b == 0 {
            return Some(off + 1);
        }
        off += usize::from(b) + 1;
    }
    None
}

fn try_dns(ctx: &SkBuffContext) -> Option<()> {
    config()?;
    let dns = dns_payload(ctx)?;
    let flags = load_be16(ctx, dns + 2)?;
    // A response (QR) without error (RCODE 0) to exactly one question.
    if flags & 0x8000 == 0 || flags & 0x000f != 0 || load_be16(ctx, dns + 4)? != 1 {
        return None;
    }
    let answers = u32::from(load_be16(ctx, dns + 6)?);
    let mut name = [0u8; DNS_NAME_LEN];
    let after_name = read_question(ctx, dns + 12, &mut name)?;
    unsafe { LEASH_DNS_NAMES.get(&name) }?;
    let mut off = after_name + 4; // qtype, qclass
    for i in 0..MAX_ANSWERS {
        if i >= answers {
            break;
        }
        off = skip_name(ctx, off)?;
        let rtype = load_be16(ctx, off)?;
        let ttl = u64::from(u32::from_be(ctx.load::<u32>(off + 4).ok()?));
        let rdlen = usize::from(load_be16(ctx, off + 8)?);
        let rdata = off + 10;
        let expiry = now_ns() + ttl.max(MIN_DNS_TTL_SECS).min(86_400) * NS_PER_SEC;
        if rtype == DNS_TYPE_A && rdlen == 4 {
            let ip: [u8; 4] = ctx.load(rdata).ok()?;
            let _ = LEASH_DNS_V4.insert(&u32::from_ne_bytes(ip), &expiry, 0);
        } else if rtype == DNS_TYPE_AAAA && rdlen == 16 {
            let ip: [u8; 16] = ctx.load(rdata).ok()?;
            let _ = LEASH_DNS_V6.insert(&ip, &expiry, 0);
        }
        off = rdata + rdlen;
    }
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
