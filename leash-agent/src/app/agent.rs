//! The transparent agent (`leash run`): the organisation CA, the kernel
//! hooks on the cgroup, the transparent proxy and its tasks, and what the
//! console's interception page shows of them.

use std::sync::Arc;

use tokio::sync::watch;

use std::os::fd::AsRawFd as _;

use super::{
    ConfigSource, Core, RunError, bind, console_for,
    handover::{self, Passed, Reload, until_stop_or_handover},
    is_root, proxy_listeners, readiness, release_startup_memory, serve_transparent, spawn_admin,
    spawn_gateway,
};
use crate::{
    ca::CertAuthority,
    config::Config,
    intercept::{
        cgroup,
        config::{FailureMode, Scope},
        hooks::{HookSettings, KernelHooks},
        hosts::{self, HostTable},
        pin,
    },
    metrics::Metrics,
    proxy::{
        Forwarder,
        certs::{CertCache, UpstreamClients},
        transparent::{Rerouter, Transparent},
        untrusted::Untrusted,
    },
    upstream,
};

fn hook_settings(config: &Config, cgroup: std::path::PathBuf) -> Result<HookSettings, RunError> {
    let intercept = &config.intercept;
    Ok(HookSettings {
        pin_dir: pin::dir_for(&pin::bpffs()?, &cgroup)?,
        pin_links: intercept.failure_mode == FailureMode::Closed,
        cgroup,
        proxy_port: intercept.proxy_port,
        ports: intercept.ports.clone(),
        all_ports: intercept.scope == Scope::AllTls,
        bypass_mark: intercept.bypass_mark,
        dns_names: if intercept.observe_dns {
            intercept.hosts.iter().map(|h| h.name.clone()).collect()
        } else {
            Vec::new()
        },
        namespace_listen: intercept.namespace_listen,
        block_udp: intercept.block_quic,
        forward_proxies: forward_proxy_addrs(&intercept.all_forward_proxies()),
    })
}

/// The addresses of the forward proxies (each name resolved now; one that
/// does not resolve is logged and skipped).
fn forward_proxy_addrs(proxies: &[(String, u16)]) -> Vec<std::net::SocketAddr> {
    use std::net::ToSocketAddrs as _;
    let mut out = Vec::new();
    for (host, port) in proxies {
        match (host.as_str(), *port).to_socket_addrs() {
            Ok(addrs) => out.extend(addrs),
            Err(e) => {
                tracing::warn!(proxy = %host, port, error = %e, "cannot resolve a forward proxy; its connections are not intercepted");
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    if !out.is_empty() {
        tracing::info!(proxies = ?out, "connections to these forward proxies are answered by the agent");
    }
    out
}

/// What a policy's reroute (and the agent's gateway listener) is served
/// with on the agent: every provider and route, on marked sockets.
fn rerouter(config: &Config) -> Result<Arc<Rerouter>, RunError> {
    Ok(Arc::new(Rerouter {
        providers: config.providers.clone(),
        routes: config.routes.clone(),
        forwarder: Forwarder::new(
            upstream::marked_resolving_client(&config.upstream, config.intercept.bypass_mark)?,
            config.upstream.response_timeout,
        ),
    }))
}

/// Detaches the hooks a stopped agent left pinned on `cgroup` (default:
/// the cgroup v2 root), and removes the shared maps' pins (those a killed
/// fail-open agent leaves too). Returns the pin directory and how many
/// hooks went.
pub fn release_pinned(
    cgroup: Option<std::path::PathBuf>,
) -> Result<(std::path::PathBuf, usize), RunError> {
    if !is_root() {
        return Err(RunError::NotRoot);
    }
    let cgroup = match cgroup {
        Some(dir) => dir,
        None => cgroup::v2_root().ok_or(RunError::NoCgroup2)?,
    };
    match pin::mounted_dir_for(&cgroup) {
        Some(dir) => {
            let released = pin::release(&dir)?;
            Ok((dir, released))
        }
        None => Ok((cgroup, 0)),
    }
}

/// What the resolver calls when a provider address cannot enter the
/// kernel's target map: an alert (once per host per interval).
fn targets_full_alert(alerts: crate::alerts::Alerter) -> impl Fn(&str, std::net::IpAddr) + Send {
    move |host, ip| {
        alerts.fire(
            &crate::alerts::AlertKey {
                kind: "intercept_targets_full",
                name: host,
                team: None,
            },
            serde_json::json!({
                "kind": "intercept_targets_full",
                "message": "the kernel's target map is full: connections to this provider address are NOT intercepted",
                "provider_host": host,
                "address": ip.to_string(),
            }),
        );
    }
}

/// Runs the transparent agent (and the gateway listener when configured)
/// until `shutdown` resolves. The kernel hooks are attached with bpf links:
/// with `failure_mode: open` they go away with this process, so traffic
/// flows direct; with `closed` they are pinned and stay, so provider
/// connections are refused until an agent runs again.
/// The organisation CA (created at first start), with retired CAs whose
/// grace period ended dropped from trust.pem.
fn organisation_ca(config: &Config) -> Result<CertAuthority, RunError> {
    let (ca, created) = CertAuthority::load_or_init(&config.ca.dir)?;
    crate::ca::refresh_trust(&config.ca.dir)?;
    if created {
        tracing::warn!(
            ca = %ca.cert_path().display(),
            "created a new organisation CA; trust it once on this machine with `leash ca install --dir {}`",
            ca.dir().display()
        );
    }
    Ok(ca)
}

#[allow(
    clippy::too_many_lines,
    reason = "the agent's start in the order it must happen: one step per statement"
)]
pub async fn run_agent(
    config: Config,
    shutdown: impl Future<Output = ()>,
    source: Option<ConfigSource>,
) -> Result<(), RunError> {
    if !is_root() {
        return Err(RunError::NotRoot);
    }
    // Handled from the start: SIGUSR2's default action ends the process.
    let usr2 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()).ok();
    let ca = organisation_ca(&config)?;
    let cgroup_dir = match &config.intercept.cgroup {
        Some(dir) => dir.clone(),
        None => cgroup::v2_root().ok_or(RunError::NoCgroup2)?,
    };
    if !cgroup::is_cgroup_dir(&cgroup_dir) {
        return Err(RunError::NotCgroup(cgroup_dir));
    }
    let Core {
        metrics,
        audit: audit_writer,
        pipeline,
        policy,
        alerts,
        keys,
        capture,
        telemetry,
        fleet,
    } = Core::new(&config)?;
    let interception = interception_status(&config, &cgroup_dir, &ca);
    let upstream_tls = upstream::tls_config(&config.upstream)?;

    // Listen before attaching: a redirected connect must find the proxy.
    // After a hand-over these are the predecessor's sockets, and its hooks
    // stay attached until ours are: no connection is refused or goes direct.
    let proxy_listeners = proxy_listeners(&config).await?;
    let admin_listener = bind("admin.listen", config.admin.listen).await?;
    let mut passed: Vec<Passed> = proxy_listeners
        .iter()
        .map(|(field, addr, l)| (*field, *addr, l.as_raw_fd()))
        .collect();
    passed.push((
        "admin.listen",
        config.admin.listen,
        admin_listener.as_raw_fd(),
    ));

    let hooks = Arc::new(KernelHooks::attach(&hook_settings(
        &config,
        cgroup_dir.clone(),
    )?)?);
    metrics.hooks_attached.set(1);
    let untrusted = Arc::new(Untrusted::new(&config.intercept.untrusted, alerts.clone()));
    let refused = Arc::new(crate::proxy::refusals::Totals::default());
    let state = interception_state(interception, &hooks, &metrics, &untrusted, &refused);
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checks = readiness(&audit_writer, &policy, &serving, Some(Arc::clone(&metrics)));
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    let console = Some(
        console_for(&config, policy, Some(state))?
            .with_live(audit_writer.live())
            .with_keys(keys)
            .with_capture(capture, Arc::clone(&pipeline))
            .with_fleet_budgets(fleet)
            .with_reload(reload_tx),
    );
    let host_table = HostTable::new(&config.intercept, &config.providers, &config.mcp);
    let static_targets = hosts::add_static(&hooks, host_table.hosts())?;
    release_startup_memory();
    let resolver = config.intercept.resolve.then(|| {
        tokio::spawn(hosts::keep_resolved(
            Arc::clone(&hooks),
            host_table.hosts().to_vec(),
            config.intercept.refresh,
            Arc::clone(&metrics),
            targets_full_alert(alerts),
        ))
    });
    let proxy = Arc::new(Transparent {
        hooks: Arc::clone(&hooks),
        hosts: host_table,
        certs: CertCache::new(ca, Arc::clone(&metrics)),
        pipeline: Arc::clone(&pipeline),
        limits: config.gateway.body_limits(),
        upstreams: UpstreamClients::new(
            upstream_tls,
            config.intercept.bypass_mark,
            config.upstream.connect_timeout,
            config.upstream.response_timeout,
        ),
        ports: config.intercept.ports.clone(),
        untrusted: Arc::clone(&untrusted),
        rerouter: rerouter(&config)?,
        inject: Arc::new(config.intercept.inject.clone()),
    });
    let refusals = tokio::spawn(crate::proxy::refusals::watch(
        Arc::clone(&hooks),
        Arc::clone(&pipeline),
        refused,
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = serve_transparent(&config, &proxy, proxy_listeners, &stop_rx);
    if config.gateway.explicit {
        // Its upstream calls on the reroutes' marked sockets (one client,
        // one pool): the agent's own hooks would otherwise take them for an
        // application's and intercept them.
        let forwarder = proxy.rerouter.forwarder.clone();
        let (task, fd) =
            spawn_gateway(&config, Arc::clone(&pipeline), forwarder, stop_rx.clone()).await?;
        tasks.push(task);
        passed.push(("gateway.listen", config.gateway.listen, fd));
    }
    tasks.push(spawn_admin(
        admin_listener,
        Arc::clone(&metrics),
        (console, checks),
        stop_rx,
    )?);
    serving.store(true, std::sync::atomic::Ordering::Relaxed);
    handover::serving();
    handover::close_unclaimed();
    tracing::info!(
        cgroup = %cgroup_dir.display(),
        proxy_port = config.intercept.proxy_port,
        hosts = %config.intercept.hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(","),
        static_targets,
        audit = %audit_writer.path().display(),
        "leash agent ready: intercepting"
    );

    let handed_over = until_stop_or_handover(
        shutdown,
        &Reload {
            source,
            listeners: passed,
            agent: true,
        },
        (usr2, reload_rx),
    )
    .await;
    serving.store(false, std::sync::atomic::Ordering::Relaxed);
    if handed_over {
        // The successor's hooks run beside ours since it started: ours go
        // now, so connections are redirected only by its hooks (and
        // recorded in the maps it reads, whatever their layout).
        hooks.detach();
        tracing::info!("handed over: the successor's hooks are attached, ours detached; draining");
    } else {
        tracing::info!("shutting down: {}", hooks_at_stop(hooks.pinned()));
        if !hooks.pinned() {
            metrics.hooks_attached.set(0);
            hooks.unpin_shared_maps();
        }
    }
    if let Some(r) = resolver {
        r.abort();
    }
    refusals.abort();
    let _ = stop_tx.send(true);
    drop(proxy);
    for t in tasks {
        let _ = t.await;
    }
    drop(hooks);
    audit_writer.shutdown().await;
    Core::flush_telemetry(telemetry.as_ref()).await;
    tracing::info!("leash stopped");
    Ok(())
}

/// The console's interception page, read at each request: the setup plus
/// the current target addresses, connection counters and hook state.
fn interception_state(
    setup: serde_json::Value,
    hooks: &Arc<KernelHooks>,
    metrics: &Arc<Metrics>,
    untrusted: &Arc<Untrusted>,
    refused: &Arc<crate::proxy::refusals::Totals>,
) -> crate::console::Interception {
    let (hooks, metrics, untrusted, refused) = (
        Arc::clone(hooks),
        Arc::clone(metrics),
        Arc::clone(untrusted),
        Arc::clone(refused),
    );
    Box::new(move || {
        let mut v = setup.clone();
        let mut targets: Vec<String> = hooks.targets().iter().map(ToString::to_string).collect();
        targets.sort();
        v["targets"] = serde_json::json!(targets);
        v["connections"] = serde_json::json!(
            metrics
                .intercepted_counts()
                .iter()
                .map(|(action, n)| ((*action).to_owned(), *n))
                .collect::<std::collections::BTreeMap<_, _>>()
        );
        v["hooks"] = serde_json::json!({"attached": true, "pinned": hooks.pinned()});
        v["untrusted_clients"] = untrusted.report();
        // Setups the kernel refused to govern, per cgroup (containers
        // without `namespace_listen`, QUIC).
        let root = crate::intercept::cgroup::v2_root();
        v["refused_in_kernel"] = refused
            .snapshot()
            .iter()
            .filter_map(|(key, count)| {
                let reason = crate::proxy::refusals::kernel_refusal(key)?;
                let cgroup = root.as_deref().and_then(|r| {
                    crate::proxy::refusals::cgroup_path(r, hooks.cgroup(), key.cgroup_id)
                });
                Some(serde_json::json!({"cgroup": cgroup, "reason": reason.as_str(), "count": count}))
            })
            .collect();
        v
    })
}

/// What happens to the kernel hooks when the agent stops.
fn hooks_at_stop(pinned: bool) -> &'static str {
    if pinned {
        "the kernel hooks stay attached (failure_mode: closed)"
    } else {
        "detaching kernel hooks"
    }
}

/// What the console's interception page shows of this agent's setup.
fn interception_status(
    config: &Config,
    cgroup_dir: &std::path::Path,
    ca: &CertAuthority,
) -> serde_json::Value {
    serde_json::json!({
        "mode": "transparent",
        "cgroup": cgroup_dir.display().to_string(),
        "scope": match config.intercept.scope {
            Scope::Providers => "providers",
            Scope::AllTls => "all-tls",
        },
        "ports": config.intercept.ports,
        "failure_mode": match config.intercept.failure_mode {
            FailureMode::Open => "open",
            FailureMode::Closed => "closed",
        },
        "proxy_port": config.intercept.proxy_port,
        "hosts": config.intercept.hosts.iter().map(|h| serde_json::json!({
            "name": h.name,
            "provider": h.provider,
            "static_addresses": h.addresses,
        })).collect::<Vec<_>>(),
        "observe_dns": config.intercept.observe_dns,
        "ca": {
            "certificate": ca.cert_path().display().to_string(),
            "sha256": ca.fingerprint(),
            "not_after": ca.not_after().to_string(),
        },
    })
}
