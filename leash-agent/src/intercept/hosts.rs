//! The provider hosts the agent intercepts: by name (for SNI) with the
//! provider each belongs to, and their addresses, kept fresh in the kernel's
//! target maps (every address ever seen stays: CDN addresses rotate).

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use super::{
    config::{InterceptConfig, InterceptHost},
    hooks::KernelHooks,
};
use crate::{
    mcp::McpServers,
    provider::{Provider, Providers, UpstreamBase},
};

/// SNI → provider (or MCP server), for every intercepted host.
#[derive(Debug, Clone)]
pub struct HostTable {
    by_name: HashMap<String, Arc<Provider>>,
    /// SNI → the MCP server's name, for MCP servers' hosts.
    mcp: HashMap<String, String>,
    hosts: Vec<InterceptHost>,
}

impl HostTable {
    pub fn new(intercept: &InterceptConfig, providers: &Providers, mcp: &McpServers) -> Self {
        let mut servers = HashMap::new();
        let by_name = intercept
            .hosts
            .iter()
            .filter_map(|h| {
                if let Some((server, provider)) = h
                    .mcp
                    .as_deref()
                    .and_then(|s| mcp.iter().find(|(name, _)| *name == s))
                {
                    servers.insert(h.name.clone(), server.to_owned());
                    return Some((h.name.clone(), Arc::clone(provider)));
                }
                let provider = match h.provider.as_deref().and_then(|p| providers.get(p)) {
                    Some(p) => Provider {
                        name: p.name.clone(),
                        kind: p.kind,
                        upstream: p.upstream.clone(),
                    },
                    None => Provider {
                        name: h.name.clone(),
                        kind: h.kind,
                        upstream: UpstreamBase::parse(&format!("https://{}", h.name)).ok()?,
                    },
                };
                Some((h.name.clone(), Arc::new(provider)))
            })
            .collect();
        Self {
            by_name,
            mcp: servers,
            hosts: intercept.hosts.clone(),
        }
    }

    /// The provider for a TLS server name, if it is intercepted (an MCP
    /// server's is its pipeline provider, `mcp/<server>`).
    pub fn provider(&self, sni: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(sni)
    }

    /// The MCP server a TLS server name is, if any.
    pub fn mcp_server(&self, sni: &str) -> Option<&str> {
        self.mcp.get(sni).map(String::as_str)
    }

    pub fn hosts(&self) -> &[InterceptHost] {
        &self.hosts
    }
}

/// Puts every static address into the target maps.
pub fn add_static(
    hooks: &KernelHooks,
    hosts: &[InterceptHost],
) -> Result<usize, super::hooks::HookError> {
    let mut n = 0;
    for ip in hosts.iter().flat_map(|h| h.addresses.iter()) {
        hooks.add_target(*ip)?;
        n += 1;
    }
    Ok(n)
}

/// Resolves every host now and then every `refresh`, adding new addresses.
/// An address that cannot be added (the target map is full) is an error
/// in the log, in `leash_intercept_targets_full_total` and handed to
/// `on_full` (the composition root alerts): connections to it would go
/// direct.
pub async fn keep_resolved(
    hooks: Arc<KernelHooks>,
    hosts: Vec<InterceptHost>,
    refresh: Duration,
    metrics: Arc<crate::metrics::Metrics>,
    on_full: impl Fn(&str, IpAddr) + Send,
) {
    loop {
        for host in &hosts {
            match tokio::net::lookup_host((host.name.as_str(), 443)).await {
                Ok(addrs) => {
                    for addr in addrs {
                        let ip: IpAddr = addr.ip();
                        let error = if crate::faults::targets_full() {
                            Some("the target map is full (injected)".to_owned())
                        } else {
                            hooks.add_target(ip).err().map(|e| e.to_string())
                        };
                        if let Some(error) = error {
                            metrics.targets_full.inc();
                            on_full(&host.name, ip);
                            tracing::error!(host = %host.name, %ip, %error, "cannot add a provider address to the kernel's targets: connections to it are NOT intercepted");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(host = %host.name, error = %e, "cannot resolve intercepted host");
                }
            }
        }
        tokio::time::sleep(refresh).await;
    }
}
