//! The `intercept` section: which cgroup, which connections, which hosts,
//! and what happens while the agent is down.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::{
    field::{self, FieldError, invalid},
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

/// A provider host the agent intercepts.
#[derive(Debug, Clone)]
pub struct InterceptHost {
    pub name: String,
    pub kind: ProviderKind,
    /// The provider (from `providers`) whose upstream host this is, if any.
    pub provider: Option<String>,
    /// Addresses that always count as this host, besides resolved ones.
    pub addresses: Vec<IpAddr>,
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
    /// take its kind.
    pub fn validate(raw: RawIntercept, providers: &Providers) -> Result<Self, FieldError> {
        let scope = raw.scope.unwrap_or(Scope::Providers);
        let ports = raw.ports.unwrap_or_else(|| vec![443]);
        if ports.is_empty() || ports.len() > 64 || ports.contains(&0) {
            return Err(invalid("intercept.ports", "1 to 64 ports, none of them 0"));
        }
        let hosts = match raw.hosts {
            None => DEFAULT_HOSTS
                .iter()
                .filter_map(|name| providers.get(name))
                .map(|p| InterceptHost {
                    name: p.upstream.host().to_ascii_lowercase(),
                    kind: p.kind,
                    provider: Some(p.name.clone()),
                    addresses: Vec::new(),
                })
                .collect(),
            Some(list) => list
                .into_iter()
                .enumerate()
                .map(|(i, h)| host(i, &h, providers))
                .collect::<Result<Vec<_>, _>>()?,
        };
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
        })
    }
}

/// `intercept.hosts[i]`.
fn host(i: usize, h: &RawHost, providers: &Providers) -> Result<InterceptHost, FieldError> {
    let field = format!("intercept.hosts[{i}]");
    let name = h.name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name.parse::<IpAddr>().is_ok() || name.contains('/') {
        return Err(invalid(format!("{field}.name"), "must be a host name"));
    }
    let provider = providers
        .iter()
        .find(|p| p.upstream.is_tls() && p.upstream.host().eq_ignore_ascii_case(&name));
    let kind = match (&h.kind, provider) {
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
    })
}
