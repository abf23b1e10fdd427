//! Putting it together: builds the pipeline, listeners and sinks from a
//! [`Config`] and runs them until shutdown.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use std::os::fd::AsRawFd as _;

use tokio::{net::TcpListener, sync::watch};

mod agent;
pub mod handover;

pub use agent::{release_pinned, run_agent};
use handover::{PROXY_NS, PROXY_V4, PROXY_V6, Reload, listen_addrs, until_stop_or_handover};

use crate::{
    admin::Admin,
    audit::{AuditError, AuditWriter},
    ca::CaError,
    config::Config,
    intercept::{hooks::HookError, pin::PinError},
    metrics::Metrics,
    modules::{self, BuildError, Parts},
    pipeline::Pipeline,
    policy::{PolicyError, PolicyHandle},
    pricing::PriceTable,
    proxy::{Forwarder, gateway::Gateway, transparent::Transparent},
    server::{self, ServeOptions},
    tls::{self, TlsError},
    upstream::{self, UpstreamError},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Handover(#[from] handover::HandoverError),
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
    Pipeline(#[from] BuildError),
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
    /// The virtual keys, when the `keys` module runs.
    keys: Option<Arc<crate::keys::registry::Registry>>,
    /// Content capture, when anything is captured.
    capture: Option<Arc<crate::capture::Capture>>,
    /// The OTLP exporter's queue, flushed at shutdown.
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    /// The budgets' shared spend (`fleet_budgets`).
    fleet: Option<Arc<FleetStore>>,
}

impl Core {
    fn new(config: &Config) -> Result<Self, RunError> {
        let metrics = Arc::new(Metrics::new());
        let (audit, audit_sink) = AuditWriter::start(
            &config.audit,
            &config.host_id,
            Arc::clone(&metrics),
            handover::is_successor(),
        )?;
        let alerts = match &config.alerts.webhook {
            Some(_) => crate::alerts::Alerter::start(
                &config.alerts,
                upstream::build_client(&config.upstream)?,
            ),
            None => crate::alerts::Alerter::disabled(),
        };
        let policy = Arc::new(policy_handle(config)?);
        let keys = if config
            .pipeline
            .modules
            .iter()
            .any(|m| m == crate::keys::NAME)
        {
            let registry = Arc::new(
                crate::keys::registry::Registry::open(&config.auth)
                    .map_err(modules::BuildError::from)?,
            );
            tokio::spawn(crate::keys::registry::Registry::keep(Arc::downgrade(
                &registry,
            )));
            Some(registry)
        } else {
            None
        };
        let capture = capture_of(config, &metrics)?;
        if let Some(c) = &capture {
            tokio::spawn(Arc::clone(c).sweep());
        }
        let telemetry = config.telemetry.otlp.as_ref().map(|otlp| {
            let (telemetry, worker) =
                crate::telemetry::Telemetry::new(otlp, Arc::clone(&metrics), &config.host_id);
            worker.spawn();
            telemetry
        });
        let fleet = fleet_store(config);
        let modules = build_modules(
            config,
            (&metrics, &alerts, &policy),
            keys.as_ref(),
            (capture.as_ref(), telemetry.as_ref(), fleet.as_ref()),
        )?;
        let pipeline = Arc::new(Pipeline::new(
            modules,
            config.host_id.as_str().into(),
            Arc::clone(&metrics),
            audit_sink,
        ));
        // Credential files are followed: a rotated provider key is taken
        // without a restart.
        tokio::spawn(config.credentials.clone().watch());
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
            )
            .with_content(config.capture.enabled().then(|| config.capture.dir.clone()));
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
            keys,
            capture,
            telemetry,
            fleet,
        })
    }

    /// Exports the spans still queued (at shutdown, after the listeners
    /// drained), for at most two seconds.
    async fn flush_telemetry(telemetry: Option<&Arc<crate::telemetry::Telemetry>>) {
        if let Some(t) = telemetry {
            t.flush(Duration::from_secs(2)).await;
        }
    }
}

/// Content capture with its store, when `config` captures anything.
fn capture_of(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<crate::capture::Capture>>, RunError> {
    if !config.capture.enabled() {
        return Ok(None);
    }
    let capture = crate::capture::Capture::open(config.capture.clone(), Arc::clone(metrics))
        .map_err(modules::BuildError::from)?;
    Ok(Some(capture))
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

/// The budgets' shared spend (`fleet_budgets`), its client connecting on
/// this (the data path's) runtime.
fn fleet_store(config: &Config) -> Option<Arc<FleetStore>> {
    let fleet = FleetStore::new(config.fleet_budgets.clone()?, &config.host_id);
    tokio::spawn(Arc::clone(&fleet).warm());
    Some(fleet)
}

type FleetStore = crate::pipeline::budget::fleet::FleetStore;

/// What modules share with the rest of the process: content capture, the
/// OTLP exporter, the budgets' shared spend.
type Shared<'a> = (
    Option<&'a Arc<crate::capture::Capture>>,
    Option<&'a Arc<crate::telemetry::Telemetry>>,
    Option<&'a Arc<FleetStore>>,
);

/// The pipeline modules `config` lists, built in order.
fn build_modules(
    config: &Config,
    (metrics, alerts, policy): (&Arc<Metrics>, &crate::alerts::Alerter, &Arc<PolicyHandle>),
    keys: Option<&Arc<crate::keys::registry::Registry>>,
    (capture, telemetry, fleet): Shared<'_>,
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
            fleet_budgets: fleet.cloned(),
            teams: &config.teams,
            audit_dir: &config.audit.dir,
            auth: &config.auth,
            keys,
            capture,
            telemetry,
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
    if let Some(inherited) = handover::take(field, addr)? {
        tracing::info!(field, %addr, "listening on the socket handed over by the predecessor");
        return TcpListener::from_std(inherited).map_err(|source| RunError::Bind {
            field,
            addr,
            source,
        });
    }
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
    let metrics = Arc::new(Metrics::new());
    let capture = capture_of(config, &metrics)?;
    // The exporter's queue without its task: nothing is sent.
    let telemetry = config.telemetry.otlp.as_ref().map(|otlp| {
        crate::telemetry::Telemetry::new(otlp, Arc::clone(&metrics), &config.host_id).0
    });
    build_modules(
        config,
        (&metrics, &crate::alerts::Alerter::disabled(), &policy),
        None,
        (capture.as_ref(), telemetry.as_ref(), None),
    )?;
    Ok(())
}

/// Reads the config again, as the process was started (file and
/// overrides), for a reload; an error names the field or the line.
pub type ConfigSource = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Runs the explicit gateway and the admin listener until `shutdown`
/// resolves, or until a hand-over (`SIGUSR2`, `leash reload`) — checked
/// against `source` first — has a successor serving; then drains
/// connections and flushes the audit trail.
pub async fn run_gateway(
    config: Config,
    shutdown: impl Future<Output = ()>,
    source: Option<ConfigSource>,
) -> Result<(), RunError> {
    // Handled from the start: SIGUSR2's default action ends the process.
    let usr2 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()).ok();
    let Core {
        metrics,
        audit: audit_writer,
        pipeline,
        policy,
        keys,
        capture,
        telemetry,
        fleet,
        ..
    } = Core::new(&config)?;
    let serving = Arc::new(AtomicBool::new(false));
    let checks = readiness(&audit_writer, &policy, &serving, None);
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    let console = Some(
        console_for(&config, policy, None)?
            .with_live(audit_writer.live())
            .with_keys(keys)
            .with_capture(capture, Arc::clone(&pipeline))
            .with_fleet_budgets(fleet)
            .with_reload(reload_tx),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let forwarder = Forwarder::new(
        upstream::build_client(&config.upstream)?,
        config.upstream.response_timeout,
    );
    let (gw_task, gw_fd) = spawn_gateway(&config, pipeline, forwarder, stop_rx.clone()).await?;
    let admin_listener = bind("admin.listen", config.admin.listen).await?;
    let admin_fd = admin_listener.as_raw_fd();
    let admin_task = spawn_admin(admin_listener, metrics, (console, checks), stop_rx)?;
    serving.store(true, Ordering::Relaxed);
    handover::serving();
    tracing::info!(
        gateway = %config.gateway.listen,
        tls = config.gateway.tls.is_some(),
        admin = %config.admin.listen,
        audit = %audit_writer.path().display(),
        providers = %config.providers.names().collect::<Vec<_>>().join(","),
        "leash gateway ready"
    );
    handover::close_unclaimed();
    until_stop_or_handover(
        shutdown,
        &Reload {
            source,
            listeners: vec![
                ("gateway.listen", config.gateway.listen, gw_fd),
                ("admin.listen", config.admin.listen, admin_fd),
            ],
            agent: false,
        },
        (usr2, reload_rx),
    )
    .await;
    tracing::info!("shutting down: draining connections");
    serving.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let _ = gw_task.await;
    let _ = admin_task.await;
    audit_writer.shutdown().await;
    Core::flush_telemetry(telemetry.as_ref()).await;
    tracing::info!("leash stopped");
    Ok(())
}

/// Serves the transparent proxy on `listeners` with the same server loop
/// as the gateway: its connection cap, header and stream limits, header
/// timeout and drain.
fn serve_transparent(
    config: &Config,
    proxy: &Arc<Transparent>,
    listeners: Vec<(&'static str, SocketAddr, TcpListener)>,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let options = ServeOptions {
        name: "transparent",
        header_read_timeout: config.gateway.header_read_timeout,
        drain_timeout: config.gateway.drain_timeout,
        limits: config.gateway.limits,
    };
    listeners
        .into_iter()
        .map(|(_, _, listener)| {
            tokio::spawn(server::serve_with(
                listener,
                Arc::clone(proxy),
                options.clone(),
                stop.clone(),
            ))
        })
        .collect()
}

/// The transparent proxy's listeners (field, address, socket): `127.0.0.1`
/// and `::1` on the proxy port, and `intercept.namespace_listen` for other
/// network namespaces — each the predecessor's, after a hand-over.
async fn proxy_listeners(
    config: &Config,
) -> Result<Vec<(&'static str, SocketAddr, TcpListener)>, RunError> {
    let mut listeners = Vec::new();
    for (field, addr) in listen_addrs(config, true) {
        let listener = match field {
            PROXY_V4 | PROXY_NS => bind(field, addr).await?,
            PROXY_V6 => match bind(field, addr).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "no IPv6 proxy listener; IPv6 provider connections cannot be intercepted");
                    continue;
                }
            },
            _ => continue,
        };
        listeners.push((field, addr, listener));
    }
    Ok(listeners)
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

/// Serves the explicit gateway; returns its task and its listening socket's
/// descriptor (for a hand-over).
async fn spawn_gateway<C>(
    config: &Config,
    pipeline: Arc<Pipeline>,
    forwarder: Forwarder<C>,
    stop: watch::Receiver<bool>,
) -> Result<(tokio::task::JoinHandle<()>, std::os::fd::RawFd), RunError>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let gateway = Arc::new(Gateway::new(
        (
            config.providers.clone(),
            config.routes.clone(),
            config.mcp.clone(),
        ),
        pipeline,
        forwarder,
        config.gateway.body_limits(),
    ));
    let tls = config.gateway.tls.as_ref().map(tls::acceptor).transpose()?;
    let listener = bind("gateway.listen", config.gateway.listen).await?;
    let fd = listener.as_raw_fd();
    let options = ServeOptions {
        name: "gateway",
        header_read_timeout: config.gateway.header_read_timeout,
        drain_timeout: config.gateway.drain_timeout,
        limits: config.gateway.limits,
    };
    Ok((
        tokio::spawn(server::serve(listener, tls, gateway, options, stop)),
        fd,
    ))
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
    .with_trace_url(config.admin.trace_url.clone())
    .with_budgets(config.budgets.clone()))
}

/// What `/readyz` checks: the data-path listeners serving (`serving`:
/// set once they are, cleared when a drain starts), the audit trail
/// writable, the policy loaded when it comes from a file, and (the agent:
/// `hooks`) the kernel hooks attached. Upstreams are not required: a
/// provider outage is not this process's.
fn readiness(
    audit: &AuditWriter,
    policy: &Arc<crate::policy::PolicyHandle>,
    serving: &Arc<AtomicBool>,
    hooks: Option<Arc<Metrics>>,
) -> Vec<crate::admin::Check> {
    let serving = Arc::clone(serving);
    let policy = Arc::clone(policy);
    let mut checks: Vec<crate::admin::Check> = vec![
        (
            "listeners",
            Box::new(move || {
                if serving.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("not serving (starting, or draining)".to_owned())
                }
            }),
        ),
        ("audit", Box::new(audit.writable())),
        (
            "policy",
            Box::new(move || match (policy.file(), policy.current()) {
                (Some(file), None) => Err(format!("no policy loaded from {}", file.display())),
                _ => Ok(()),
            }),
        ),
    ];
    if let Some(metrics) = hooks {
        checks.push((
            "hooks",
            Box::new(move || {
                if metrics.hooks_attached.get() > 0 {
                    Ok(())
                } else {
                    Err("the kernel hooks are not attached".to_owned())
                }
            }),
        ));
    }
    checks
}

fn spawn_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    (console, checks): (Option<crate::console::Console>, Vec<crate::admin::Check>),
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
        Arc::new(Admin::new(metrics, console).with_readiness(checks)),
        options,
        stop,
    )
    .map_err(RunError::AdminRuntime)
}
