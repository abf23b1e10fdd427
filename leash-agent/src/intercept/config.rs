//! The `intercept` section: which cgroup, which connections, which hosts,
//! and what happens while the agent is down.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

use crate::{
    credentials::{ByCaller, Credentials, RawByCaller},
    field::{self, FieldError, invalid},
    mcp::McpServers,
    provider::{ProviderKind, Providers},
};

/// Local port the transparent proxy listens on (`127.0.0.1` and `::1`).
pub const DEFAULT_PROXY_PORT: u16 = 15443;
/// `SO_MARK` on the agent's own upstream sockets (never redirected).
pub const DEFAULT_BYPASS_MARK: u32 = 0x1ea5;
/// The hosts of the three native providers: intercepted by default.
const DEFAULT_HOSTS: [&str; 3] = ["openai", "anthropic", "google"];

/// Which connections the transparent agent takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Connections to the addresses of `intercept.hosts`.
    Providers,
    /// Every TCP connection to `intercept.ports`; the proxy decides by SNI.
    AllTls,
}

/// What happens to provider connections while the agent is not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// The hooks go away with the agent: traffic flows direct.
    Open,
    /// The hooks stay attached (pinned in bpffs): connections to providers
    /// are refused until the agent is back, which takes the hooks over.
    Closed,
}

/// What happens to an executable that rejected the organisation CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUntrusted {
    /// Its connections keep failing (counted, audited, shown).
    Refuse,
    /// Its later provider connections go through uninspected for
    /// `untrusted_splice_secs`, each audited as bypassed.
    Splice,
}

/// Executables whose provider connections are not inspected.
#[derive(Debug, Clone)]
pub struct Untrusted {
    pub on_untrusted: OnUntrusted,
    pub splice_for: Duration,
    /// `intercept.bypass_executables` (globs over the executable's path).
    pub bypass_executables: Vec<String>,
}

/// A provider host the agent intercepts.
#[derive(Debug, Clone)]
pub struct InterceptHost {
    pub name: String,
    pub kind: ProviderKind,
    /// The provider (from `providers`) whose upstream host this is, if any.
    pub provider: Option<String>,
    /// Addresses that always count as this host, besides resolved ones.
    pub addresses: Vec<IpAddr>,
    /// The MCP server (`mcp.servers.<name>`) this host serves, if any: its
    /// requests are read as MCP's JSON-RPC, not as a provider's API.
    pub mcp: Option<String>,
}

#[derive(Debug, Clone)]
pub struct InterceptConfig {
    /// The cgroup v2 directory the hooks attach to; `None`: the v2 root.
    pub cgroup: Option<PathBuf>,
    pub scope: Scope,
    pub ports: Vec<u16>,
    pub hosts: Vec<InterceptHost>,
    /// Resolve `hosts` with the system resolver (and keep them fresh).
    pub resolve: bool,
    /// Watch DNS answers received in scope for `hosts` and add their
    /// addresses before the application sees them.
    pub observe_dns: bool,
    pub refresh: Duration,
    pub proxy_port: u16,
    pub bypass_mark: u32,
    pub failure_mode: FailureMode,
    /// Refuse UDP to provider addresses on the intercepted ports (QUIC),
    /// and strip `alt-svc` from intercepted answers: clients stay on TCP.
    pub block_quic: bool,
    pub forward_proxies: ForwardProxies,
    /// The address the agent listens on for connections from other network
    /// namespaces in the cgroup (containers); `None`: those are refused and
    /// reported.
    pub namespace_listen: Option<Ipv4Addr>,
    pub untrusted: Untrusted,
    pub inject: Injection,
}

/// Credentials the agent sends in place of the key an intercepted
/// application holds (`intercept.inject_credentials`, provider → a
/// credential name, or rules choosing one by team, uid and executable):
/// applications run with a placeholder.
#[derive(Debug, Clone, Default)]
pub struct Injection {
    pub by_provider: std::collections::BTreeMap<String, Arc<ByCaller>>,
    /// Only a request carrying this key gets the injection (`None`: any).
    pub placeholder: Option<String>,
}

impl Injection {
    fn validate(
        raw: Option<std::collections::BTreeMap<String, RawByCaller>>,
        placeholder: Option<String>,
        providers: &Providers,
        credentials: &Credentials,
    ) -> Result<Self, FieldError> {
        let mut by_provider = std::collections::BTreeMap::new();
        for (provider, rules) in raw.unwrap_or_default() {
            let field = format!("intercept.inject_credentials.{provider}");
            if providers.get(&provider).is_none() {
                return Err(invalid(field, "not a configured provider"));
            }
            let rules = ByCaller::validate(rules, &field, credentials)?;
            by_provider.insert(provider, Arc::new(rules));
        }
        if placeholder.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("intercept.placeholder_key", "must not be empty"));
        }
        Ok(Self {
            by_provider,
            placeholder,
        })
    }
}

/// Forward proxies whose connections from the cgroup the agent answers
/// (reading the `CONNECT`).
#[derive(Debug, Clone)]
pub struct ForwardProxies {
    /// `intercept.forward_proxies`: (`host`, `port`).
    pub listed: Vec<(String, u16)>,
    /// Also the proxy of the agent's own environment (`HTTPS_PROXY`,
    /// `HTTP_PROXY`, `ALL_PROXY`, either case).
    pub from_env: bool,
}

/// `intercept` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntercept {
    pub cgroup: Option<PathBuf>,
    scope: Option<Scope>,
    ports: Option<Vec<u16>>,
    hosts: Option<Vec<RawHost>>,
    resolve: Option<bool>,
    observe_dns: Option<bool>,
    refresh_secs: Option<u64>,
    proxy_port: Option<u16>,
    bypass_mark: Option<u32>,
    failure_mode: Option<FailureMode>,
    block_quic: Option<bool>,
    forward_proxies: Option<Vec<String>>,
    forward_proxies_from_env: Option<bool>,
    namespace_listen: Option<String>,
    on_untrusted_client: Option<OnUntrusted>,
    untrusted_splice_secs: Option<u64>,
    bypass_executables: Option<Vec<String>>,
    inject_credentials: Option<std::collections::BTreeMap<String, RawByCaller>>,
    placeholder_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: String,
    kind: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
}

impl InterceptConfig {
    /// Validates `raw`; hosts that are a configured provider's upstream
    /// take its kind. The hosts of MCP servers reached over TLS are
    /// intercepted too, on their port.
    pub fn validate(
        raw: RawIntercept,
        providers: &Providers,
        credentials: &Credentials,
        mcp: &McpServers,
    ) -> Result<Self, FieldError> {
        let scope = raw.scope.unwrap_or(Scope::Providers);
        let mut ports = raw.ports.unwrap_or_else(|| vec![443]);
        if ports.is_empty() || ports.len() > 64 || ports.contains(&0) {
            return Err(invalid("intercept.ports", "1 to 64 ports, none of them 0"));
        }
        let mut hosts = match raw.hosts {
            None => DEFAULT_HOSTS
                .iter()
                .filter_map(|name| providers.get(name))
                .map(|p| InterceptHost {
                    name: p.upstream.host().to_ascii_lowercase(),
                    kind: p.kind,
                    provider: Some(p.name.clone()),
                    addresses: Vec::new(),
                    mcp: None,
                })
                .collect(),
            Some(list) => list
                .into_iter()
                .enumerate()
                .map(|(i, h)| host(i, &h, providers, mcp))
                .collect::<Result<Vec<_>, _>>()?,
        };
        mcp_hosts(mcp, &mut hosts, &mut ports)?;
        Ok(Self {
            cgroup: raw.cgroup,
            scope,
            ports,
            hosts,
            resolve: raw.resolve.unwrap_or(true),
            observe_dns: raw.observe_dns.unwrap_or(true),
            refresh: field::secs("intercept.refresh_secs", raw.refresh_secs, 30)?,
            proxy_port: match raw.proxy_port {
                Some(0) => return Err(invalid("intercept.proxy_port", "must not be 0")),
                Some(p) => p,
                None => DEFAULT_PROXY_PORT,
            },
            bypass_mark: match raw.bypass_mark {
                Some(0) => return Err(invalid("intercept.bypass_mark", "must not be 0")),
                Some(m) => m,
                None => DEFAULT_BYPASS_MARK,
            },
            failure_mode: raw.failure_mode.unwrap_or(FailureMode::Open),
            block_quic: raw.block_quic.unwrap_or(true),
            forward_proxies: ForwardProxies {
                listed: raw
                    .forward_proxies
                    .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    proxy_address(p).ok_or_else(|| {
                        invalid(
                            format!("intercept.forward_proxies[{i}]"),
                            format!("`{p}` is not host:port (or a proxy URL)"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
                from_env: raw.forward_proxies_from_env.unwrap_or(true),
            },
            namespace_listen: raw
                .namespace_listen
                .map(|a| {
                    a.parse::<Ipv4Addr>()
                        .ok()
                        .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
                        .ok_or_else(|| {
                            invalid(
                                "intercept.namespace_listen",
                                format!("`{a}` is not an IPv4 address other containers can reach (not 0.0.0.0, not loopback)"),
                            )
                        })
                })
                .transpose()?,
            untrusted: Untrusted {
                on_untrusted: raw.on_untrusted_client.unwrap_or(OnUntrusted::Refuse),
                splice_for: field::secs(
                    "intercept.untrusted_splice_secs",
                    raw.untrusted_splice_secs,
                    3600,
                )?,
                bypass_executables: {
                    let globs = raw.bypass_executables.unwrap_or_default();
                    for (i, g) in globs.iter().enumerate() {
                        globset::Glob::new(g).map_err(|e| {
                            invalid(format!("intercept.bypass_executables[{i}]"), e.to_string())
                        })?;
                    }
                    globs
                },
            },
            inject: Injection::validate(raw.inject_credentials, raw.placeholder_key, providers, credentials)?,
        })
    }

    /// The forward proxies to answer: configured ones, and those of the
    /// agent's own environment when allowed.
    pub fn all_forward_proxies(&self) -> Vec<(String, u16)> {
        let mut out = self.forward_proxies.listed.clone();
        if self.forward_proxies.from_env {
            for var in [
                "HTTPS_PROXY",
                "https_proxy",
                "HTTP_PROXY",
                "http_proxy",
                "ALL_PROXY",
                "all_proxy",
            ] {
                if let Some(p) = std::env::var(var).ok().as_deref().and_then(proxy_address)
                    && !out.contains(&p)
                {
                    out.push(p);
                }
            }
        }
        out
    }
}

/// The host and port of a proxy written as `host:port` or as an `http(s)`
/// URL (`http://user:pass@host:port/`; without a port, the scheme's).
fn proxy_address(text: &str) -> Option<(String, u16)> {
    let text = text.trim();
    let (scheme, rest) = text.split_once("://").unwrap_or(("http", text));
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => default_port,
                None => return None,
            };
            (host, port)
        }
        None => match host_port.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (host_port, default_port),
        },
    };
    (!host.is_empty() && port != 0).then(|| (host.to_ascii_lowercase(), port))
}

/// Adds the host of every MCP server reached over TLS (unless listed), and
/// its port. A host is one server's: the proxy tells servers apart by
/// the TLS server name.
fn mcp_hosts(
    mcp: &McpServers,
    hosts: &mut Vec<InterceptHost>,
    ports: &mut Vec<u16>,
) -> Result<(), FieldError> {
    for (server, provider) in mcp.iter() {
        let upstream = &provider.upstream;
        if !upstream.is_tls() {
            continue;
        }
        let name = upstream.host().to_ascii_lowercase();
        let field = format!("mcp.servers.{server}.url");
        match hosts.iter().find(|h| h.name == name) {
            Some(h) if h.mcp.as_deref() == Some(server) => {}
            Some(h) => {
                let whose = h.mcp.as_deref().map_or_else(
                    || format!("the provider host `{}`", h.name),
                    |other| format!("mcp.servers.{other}'s host"),
                );
                return Err(invalid(
                    field,
                    format!("{whose}: an intercepted host serves one provider or MCP server"),
                ));
            }
            None => hosts.push(InterceptHost {
                name,
                kind: ProviderKind::OpenAi,
                provider: None,
                addresses: Vec::new(),
                mcp: Some(server.to_owned()),
            }),
        }
        if !ports.contains(&upstream.port()) {
            ports.push(upstream.port());
        }
    }
    if ports.len() > 64 {
        return Err(invalid(
            "intercept.ports",
            "1 to 64 ports, with those of the MCP servers",
        ));
    }
    Ok(())
}

/// `intercept.hosts[i]`.
fn host(
    i: usize,
    h: &RawHost,
    providers: &Providers,
    mcp: &McpServers,
) -> Result<InterceptHost, FieldError> {
    let field = format!("intercept.hosts[{i}]");
    let name = h.name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name.parse::<IpAddr>().is_ok() || name.contains('/') {
        return Err(invalid(format!("{field}.name"), "must be a host name"));
    }
    let provider = providers
        .iter()
        .find(|p| p.upstream.is_tls() && p.upstream.host().eq_ignore_ascii_case(&name));
    let server = mcp
        .iter()
        .find(|(_, p)| p.upstream.is_tls() && p.upstream.host().eq_ignore_ascii_case(&name))
        .map(|(server, _)| server.to_owned());
    let kind = match (&h.kind, provider) {
        (None, None) if server.is_some() => ProviderKind::OpenAi,
        (Some(k), _) => ProviderKind::from_name(k).ok_or_else(|| {
            invalid(
                format!("{field}.kind"),
                format!("unknown kind `{k}` (known: openai, anthropic, google)"),
            )
        })?,
        (None, Some(p)) => p.kind,
        (None, None) => {
            return Err(invalid(
                format!("{field}.kind"),
                "required for a host that is not a configured provider's upstream",
            ));
        }
    };
    let addresses = h
        .addresses
        .iter()
        .map(|a| {
            a.parse().map_err(|_| {
                invalid(
                    format!("{field}.addresses"),
                    format!("`{a}` is not an IP address"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(InterceptHost {
        name,
        kind,
        provider: provider.map(|p| p.name.clone()),
        addresses,
        // A provider's host stays the provider's: an MCP server on it is
        // refused (`mcp_hosts`).
        mcp: server.filter(|_| provider.is_none()),
    })
}

#[cfg(test)]
mod tests {
    use super::proxy_address;

    #[test]
    fn proxy_addresses() {
        assert_eq!(
            proxy_address("10.0.0.5:3128"),
            Some(("10.0.0.5".into(), 3128))
        );
        assert_eq!(
            proxy_address("http://u:p@Proxy.Corp:8080/"),
            Some(("proxy.corp".into(), 8080))
        );
        assert_eq!(
            proxy_address("http://proxy.corp"),
            Some(("proxy.corp".into(), 80))
        );
        assert_eq!(
            proxy_address("http://[::1]:3128"),
            Some(("::1".into(), 3128))
        );
        assert_eq!(proxy_address("socks5://proxy:1080"), None);
        assert_eq!(proxy_address("proxy:0"), None);
        assert_eq!(proxy_address(":3128"), None);
    }
}
