//! Putting it together: builds the pipeline, listeners and sinks from a
//! [`Config`] and runs them until shutdown.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};

use crate::{
    admin::Admin,
    audit::{AuditError, AuditWriter},
    ca::{CaError, CertAuthority},
    config::Config,
    intercept::{
        cgroup,
        config::{FailureMode, Scope},
        hooks::{HookError, HookSettings, KernelHooks},
        hosts::{self, HostTable},
        pin::{self, PinError},
    },
    metrics::Metrics,
    modules::{self, Parts, UnknownModule},
    pipeline::Pipeline,
    policy::{PolicyError, PolicyHandle},
    pricing::PriceTable,
    proxy::{
        Forwarder,
        certs::{CertCache, UpstreamClients},
        gateway::Gateway,
        transparent::{self, Transparent},
        untrusted::Untrusted,
    },
    server::{self, ServeOptions},
    tls::{self, TlsError},
    upstream::{self, UpstreamError},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {field} {addr}: {source}")]
    Bind {
        field: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the admin runtime: {0}")]
    AdminRuntime(std::io::Error),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Pipeline(#[from] UnknownModule),
    #[error("invalid config: `policy`: {0}")]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("gateway.tls: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Hooks(#[from] HookError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("`leash run` needs root (it loads eBPF programs and marks sockets): run it with sudo")]
    NotRoot,
    #[error("no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo); set `intercept.cgroup`")]
    NoCgroup2,
    #[error("intercept.cgroup {0} is not a cgroup v2 directory")]
    NotCgroup(std::path::PathBuf),
    #[error("admin: cannot read or make the admin token {0}: {1}")]
    AdminToken(std::path::PathBuf, std::io::Error),
    #[error("audit.ship: cannot read {0}: {1}")]
    ShipCredentials(std::path::PathBuf, std::io::Error),
}

/// The pieces every mode shares: metrics, the audit writer, the pipeline.
struct Core {
    metrics: Arc<Metrics>,
    audit: AuditWriter,
    pipeline: Arc<Pipeline>,
    policy: Arc<PolicyHandle>,
    alerts: crate::alerts::Alerter,
}

impl Core {
    fn new(config: &Config) -> Result<Self, RunError> {
        let metrics = Arc::new(Metrics::new());
        let (audit, audit_sink) =
            AuditWriter::start(&config.audit, &config.host_id, Arc::clone(&metrics))?;
        let alerts = match &config.alerts.webhook {
            Some(_) => crate::alerts::Alerter::start(
                &config.alerts,
                upstream::build_client(&config.upstream)?,
            ),
            None => crate::alerts::Alerter::disabled(),
        };
        let policy = Arc::new(policy_handle(config)?);
        let modules = build_modules(config, &metrics, &alerts, &policy)?;
        let pipeline = Arc::new(Pipeline::new(
            modules,
            config.host_id.as_str().into(),
            Arc::clone(&metrics),
            audit_sink,
        ));
        if policy.file().is_some() {
            tokio::spawn(crate::policy::watch(
                Arc::clone(&policy),
                Arc::clone(&metrics),
            ));
        }
        if let Some(ship) = &config.audit.ship {
            // Credentials are checked now: a typo fails the start, while an
            // unreachable server only delays shipping.
            for file in [&ship.nats.creds, &ship.nats.nkey_file, &ship.nats.ca_file]
                .into_iter()
                .flatten()
            {
                std::fs::File::open(file)
                    .map_err(|e| RunError::ShipCredentials(file.clone(), e))?;
            }
            let shipper = crate::ship::Shipper::new(
                ship.clone(),
                &config.audit.dir,
                &config.host_id,
                Arc::clone(&metrics),
            );
            tracing::info!(nats = %crate::ship::redact_url(&ship.nats.url), stream = %ship.nats.stream, subject = %ship.subject, "shipping audit records");
            tokio::spawn(async move {
                if let Err(e) = shipper.run().await {
                    tracing::error!(error = %e, "audit shipping stopped");
                }
            });
        }
        Ok(Self {
            metrics,
            audit,
            pipeline,
            policy,
            alerts,
        })
    }
}

/// The policy of `config`, compiled, in a handle that reloads its file.
fn policy_handle(config: &Config) -> Result<PolicyHandle, RunError> {
    let Some(source) = &config.policy else {
        return Ok(PolicyHandle::new(None, None));
    };
    Ok(PolicyHandle::new(
        Some(Arc::new(source.load()?)),
        source.file().map(std::path::Path::to_path_buf),
    ))
}

/// The pipeline modules `config` lists, built in order.
fn build_modules(
    config: &Config,
    metrics: &Arc<Metrics>,
    alerts: &crate::alerts::Alerter,
    policy: &Arc<PolicyHandle>,
) -> Result<Vec<Box<dyn crate::pipeline::Module>>, RunError> {
    let prices = Arc::new(PriceTable::with_overrides(config.pricing.clone()));
    Ok(modules::build_all(
        &config.pipeline,
        &Parts {
            metrics,
            alerts,
            policy,
            prices: &prices,
            budgets: &config.budgets,
            teams: &config.teams,
            audit_dir: &config.audit.dir,
        },
    )?)
}

/// Hands memory freed after start-up back to the kernel. Loading the eBPF
/// programs parses the kernel's BTF (tens of MiB, transient); glibc keeps
/// freed heap pages mapped, so without this the idle agent would carry that
/// peak (measured: 28 MiB RSS idle before, 13 MiB after).
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(
        unsafe_code,
        reason = "malloc_trim has no safe wrapper; it takes a plain integer and only touches the allocator's own state"
    )]
    // SAFETY: malloc_trim(0) is thread-safe (it takes the allocator's arena
    // locks) and has no preconditions; it only returns free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether this process runs with effective uid 0.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

async fn bind(field: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind {
            field,
            addr,
            source,
        })
}

/// Checks everything in `config` that can be checked without binding
/// ports: certificate files, extra roots, pipeline modules.
pub fn check(config: &Config) -> Result<(), RunError> {
    upstream::build_client(&config.upstream)?;
    config.gateway.tls.as_ref().map(tls::acceptor).transpose()?;
    let policy = Arc::new(policy_handle(config)?);
    build_modules(
        config,
        &Arc::new(Metrics::new()),
        &crate::alerts::Alerter::disabled(),
        &policy,
    )?;
    Ok(())
}

/// Runs the explicit gateway and the admin listener until `shutdown`
/// resolves, then drains connections and flushes the audit trail.
pub async fn run_gateway(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let Core {
        metrics,
        audit: audit_writer,
        pipeline,
        policy,
        ..
    } = Core::new(&config)?;
    let console = Some(console_for(&config, policy, None)?.with_live(audit_writer.live()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let gw_task = spawn_gateway(&config, pipeline, stop_rx.clone()).await?;
    let admin_task = spawn_admin(
        bind("admin.listen", config.admin.listen).await?,
        metrics,
        console,
        stop_rx,
    )?;
    tracing::info!(
        gateway = %config.gateway.listen,
        tls = config.gateway.tls.is_some(),
        admin = %config.admin.listen,
        audit = %audit_writer.path().display(),
        providers = %config.providers.names().collect::<Vec<_>>().join(","),
        "leash gateway ready"
    );
    shutdown.await;
    tracing::info!("shutting down: draining connections");
    let _ = stop_tx.send(true);
    let _ = gw_task.await;
    let _ = admin_task.await;
    audit_writer.shutdown().await;
    tracing::info!("leash stopped");
    Ok(())
}

/// Serves the transparent proxy on `listeners` with the same server loop
/// as the gateway: its connection cap, header and stream limits, header
/// timeout and drain.
fn serve_transparent(
    config: &Config,
    proxy: &Arc<Transparent>,
    listeners: Vec<TcpListener>,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let options = ServeOptions {
        name: "transparent",
        header_read_timeout: config.gateway.header_read_timeout,
        drain_timeout: Duration::from_secs(10),
        limits: config.gateway.limits,
    };
    listeners
        .into_iter()
        .map(|listener| {
            tokio::spawn(server::serve_with(
                listener,
                Arc::clone(proxy),
                options.clone(),
                stop.clone(),
            ))
        })
        .collect()
}

/// The transparent proxy's listeners: `127.0.0.1` and `::1` on the proxy
/// port, and `intercept.namespace_listen` for other network namespaces.
async fn proxy_listeners(config: &Config) -> Result<Vec<TcpListener>, RunError> {
    let [v4, v6] = transparent::listen_addrs(config.intercept.proxy_port);
    let mut listeners = vec![bind("intercept.proxy_port", v4).await?];
    match TcpListener::bind(v6).await {
        Ok(l) => listeners.push(l),
        Err(e) => {
            tracing::warn!(addr = %v6, error = %e, "no IPv6 proxy listener; IPv6 provider connections cannot be intercepted");
        }
    }
    if let Some(ip) = config.intercept.namespace_listen {
        let addr = std::net::SocketAddr::new(ip.into(), config.intercept.proxy_port);
        listeners.push(bind("intercept.namespace_listen", addr).await?);
    }
    Ok(listeners)
}

fn hook_settings(config: &Config, cgroup: std::path::PathBuf) -> Result<HookSettings, RunError> {
    let intercept = &config.intercept;
    let pin_dir = match intercept.failure_mode {
        FailureMode::Open => None,
        FailureMode::Closed => Some(pin::dir_for(&pin::bpffs()?, &cgroup)?),
    };
    Ok(HookSettings {
        pin_dir,
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

/// Keeps this process out of core dumps (and from being traced by non-root
/// users): it holds private keys. `RLIMIT_CORE` 0 and not dumpable.
pub fn no_core_dumps() -> std::io::Result<()> {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// Detaches the hooks a stopped agent left pinned on `cgroup` (default:
/// the cgroup v2 root). Returns the pin directory and how many went.
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
    match pin::existing_dir(&cgroup) {
        Some(dir) => {
            let released = pin::release(&dir, &[])?;
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

pub async fn run_agent(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    if !is_root() {
        return Err(RunError::NotRoot);
    }
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
    } = Core::new(&config)?;
    let interception = interception_status(&config, &cgroup_dir, &ca);
    let upstream_tls = upstream::tls_config(&config.upstream)?;

    // Listen before attaching: a redirected connect must find the proxy.
    let proxy_listeners = proxy_listeners(&config).await?;
    let admin_listener = bind("admin.listen", config.admin.listen).await?;

    let hooks = Arc::new(KernelHooks::attach(&hook_settings(
        &config,
        cgroup_dir.clone(),
    )?)?);
    let untrusted = Arc::new(Untrusted::new(&config.intercept.untrusted, alerts.clone()));
    let refused = Arc::new(crate::proxy::refusals::Totals::default());
    let state = interception_state(interception, &hooks, &metrics, &untrusted, &refused);
    let console = Some(console_for(&config, policy, Some(state))?.with_live(audit_writer.live()));
    let host_table = HostTable::new(&config.intercept, &config.providers);
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
    });
    let refusals = tokio::spawn(crate::proxy::refusals::watch(
        Arc::clone(&hooks),
        Arc::clone(&pipeline),
        refused,
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = serve_transparent(&config, &proxy, proxy_listeners, &stop_rx);
    if config.gateway.explicit {
        tasks.push(spawn_gateway(&config, Arc::clone(&pipeline), stop_rx.clone()).await?);
    }
    tasks.push(spawn_admin(admin_listener, metrics, console, stop_rx)?);
    tracing::info!(
        cgroup = %cgroup_dir.display(),
        proxy_port = config.intercept.proxy_port,
        hosts = %config.intercept.hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(","),
        static_targets,
        audit = %audit_writer.path().display(),
        "leash agent ready: intercepting"
    );

    shutdown.await;
    tracing::info!("shutting down: {}", hooks_at_stop(hooks.pinned()));
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
    tracing::info!("leash stopped");
    Ok(())
}

async fn spawn_gateway(
    config: &Config,
    pipeline: Arc<Pipeline>,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, RunError> {
    let gateway = Arc::new(Gateway::new(
        (config.providers.clone(), config.routes.clone()),
        pipeline,
        Forwarder::new(
            upstream::build_client(&config.upstream)?,
            config.upstream.response_timeout,
        ),
        config.gateway.body_limits(),
    ));
    let tls = config.gateway.tls.as_ref().map(tls::acceptor).transpose()?;
    let listener = bind("gateway.listen", config.gateway.listen).await?;
    let options = ServeOptions {
        name: "gateway",
        header_read_timeout: config.gateway.header_read_timeout,
        drain_timeout: Duration::from_secs(10),
        limits: config.gateway.limits,
    };
    Ok(tokio::spawn(server::serve(
        listener, tls, gateway, options, stop,
    )))
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

/// The web console of this process, served by its admin listener.
fn console_for(
    config: &Config,
    policy: Arc<crate::policy::PolicyHandle>,
    interception: Option<crate::console::Interception>,
) -> Result<crate::console::Console, RunError> {
    Ok(crate::console::Console::new(
        crate::console::Source::Dir(config.audit.dir.clone()),
        policy,
        config.providers.clone(),
        interception,
        crate::console::auth::Auth::new(
            config
                .admin
                .token
                .load()
                .map_err(|e| RunError::AdminToken(config.admin.token.path.clone(), e))?,
            config.admin.listen,
            &config.admin.allowed_hosts,
        ),
    )
    .with_policy_edit(config.admin.allow_policy_edit)
    .with_budgets(config.budgets.clone()))
}

fn spawn_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    console: Option<crate::console::Console>,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, RunError> {
    let options = ServeOptions {
        name: "admin",
        header_read_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(1),
        limits: crate::server::ConnLimits::default(),
    };
    crate::admin::serve_isolated(
        listener,
        Arc::new(Admin::new(metrics, console)),
        options,
        stop,
    )
    .map_err(RunError::AdminRuntime)
}
