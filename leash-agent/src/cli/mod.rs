//! The `leash` command line: argument parsing, logging, signals, and one
//! module per command group (`ca`, `audit`, `policy`, `intercept`).

mod against;
mod audit;
mod ca;
mod console;
mod export;
mod intercept;
mod keys;
mod policy;
mod replay;
mod show;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use self::{
    audit::AuditCommand, ca::CaCommand, intercept::InterceptCommand, policy::PolicyCommand,
};
use crate::{
    app,
    config::{Config, LogConfig, LogFormat, Overrides},
};

/// Leash: see, govern and account for every request your organisation sends
/// to LLM providers.
#[derive(Parser)]
#[command(name = "leash", version, about, long_about = None)]
struct Cli {
    /// Log format on standard error (default: the config's `log.format`,
    /// else text).
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
    /// Log filter (e.g. `info`, `leash_agent=debug`; default: the config's
    /// `log.level`, else info); `RUST_LOG` wins when set.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the explicit gateway: applications point their SDK base URL at
    /// `http(s)://<listen>/v1/<provider>`.
    Gateway {
        /// YAML config file; without it the embedded defaults are used
        /// (gateway 127.0.0.1:8080, admin 127.0.0.1:9090, audit in
        /// /var/lib/leash/audit as root, else ~/.local/state/leash/audit;
        /// public provider upstreams).
        #[arg(short, long, env = "LEASH_CONFIG")]
        config: Option<PathBuf>,
        /// Gateway listen address, overriding `gateway.listen`.
        #[arg(long, value_name = "IP:PORT")]
        listen: Option<String>,
        /// Admin listen address (/healthz, /metrics), overriding `admin.listen`.
        #[arg(long, value_name = "IP:PORT")]
        admin_listen: Option<String>,
        /// Audit directory, overriding `audit.dir`.
        #[arg(long, value_name = "DIR")]
        audit_dir: Option<PathBuf>,
    },
    /// Run the transparent host agent (root): eBPF hooks redirect
    /// connections to provider hosts into a local TLS-terminating proxy that
    /// uses the organisation CA. Applications change nothing. Also serves
    /// the gateway listener when the config sets `gateway.listen`, and on
    /// the embedded defaults.
    Run {
        /// YAML config file; without it the embedded defaults are used (the
        /// built-in providers for the whole host, CA in /var/lib/leash/ca,
        /// audit in /var/lib/leash/audit, gateway on 127.0.0.1:8080, admin
        /// on 127.0.0.1:9090).
        #[arg(short, long, env = "LEASH_CONFIG")]
        config: Option<PathBuf>,
        /// Admin listen address (/healthz, /metrics), overriding `admin.listen`.
        #[arg(long, value_name = "IP:PORT")]
        admin_listen: Option<String>,
        /// Audit directory, overriding `audit.dir`.
        #[arg(long, value_name = "DIR")]
        audit_dir: Option<PathBuf>,
    },
    /// Run the central collector: a durable JetStream consumer that stores
    /// every host's shipped audit records in PostgreSQL, checking each
    /// host's hash chain and sequence.
    Collector {
        /// YAML file with a `collector:` section (nats, postgres, admin).
        #[arg(short, long, env = "LEASH_COLLECTOR_CONFIG")]
        config: PathBuf,
    },
    /// The organisation CA that intercepted connections are signed with.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Read and check the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Check and try policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Virtual keys: create, list, revoke, rotate.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a one-time login URL for the web console of the Leash running
    /// with this config (the admin token stays out of the URL).
    Console(Running),
    /// The kernel hooks of the transparent agent.
    #[command(subcommand)]
    Intercept(InterceptCommand),
    /// Reload the running gateway or agent with no request lost: the
    /// config is checked, then a new process takes over the listening
    /// sockets (the agent's kernel hooks too) and the old one drains (also
    /// after an upgrade of the binary or a CA rotation). Exit 1 with the
    /// reason if the config is refused.
    Reload(Running),
}

/// Which running Leash a command talks to (`leash console`, `leash
/// reload`): as it was started.
#[derive(clap::Args)]
struct Running {
    /// The config file of the running Leash.
    #[arg(short, long, env = "LEASH_CONFIG")]
    config: Option<PathBuf>,
    /// The admin listen address it was started with, if overridden.
    #[arg(long, value_name = "IP:PORT")]
    admin_listen: Option<String>,
    /// The audit directory it was started with, if overridden (its admin
    /// token is made there).
    #[arg(long, value_name = "DIR")]
    audit_dir: Option<PathBuf>,
}

impl Running {
    fn overrides(self) -> (Option<PathBuf>, Overrides) {
        (
            self.config,
            Overrides::running(self.admin_listen, self.audit_dir),
        )
    }
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file: exit 0 if it is valid, 1 with the field and
    /// the reason if not.
    Check {
        /// The YAML config file.
        file: PathBuf,
    },
}

/// Starts logging: the command line's choices, else the config's `log`
/// section (for the commands that run from a config), else text at info.
fn init_logging(cli: &LogConfig, config: Option<&LogConfig>) {
    let format = cli
        .format
        .or(config.and_then(|c| c.format))
        .unwrap_or(LogFormat::Text);
    let level = cli
        .level
        .as_deref()
        .or(config.and_then(|c| c.level.as_deref()))
        .unwrap_or("info");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a server until it returns, on a multi-threaded runtime.
/// A one-thread runtime, for a command that talks to PostgreSQL or NATS.
fn one_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Starts a server (`leash gateway`, `leash run`): the config loaded with
/// `overrides`, logging as it says, then `server` run until a shutdown
/// signal, given the config as a reload reads it again (the same file with
/// the same overrides).
fn serve<F>(
    file: Option<PathBuf>,
    overrides: Overrides,
    logging: &LogConfig,
    server: impl FnOnce(Config, app::ConfigSource) -> F,
) -> anyhow::Result<()>
where
    F: Future<Output = Result<(), app::RunError>>,
{
    let loaded = Config::load(file.as_deref(), &overrides)?;
    init_logging(logging, Some(&loaded.log));
    let source: app::ConfigSource =
        Box::new(move || Config::load(file.as_deref(), &overrides).map_err(|e| format!("{e:#}")));
    block_on(server(loaded, source))
}

fn block_on(server: impl Future<Output = Result<(), app::RunError>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(server)?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Panics are logged with where they happened; their message only when it
/// is a literal in the code: a formatted message may hold request data
/// (headers, keys, prompts) and is withheld.
fn log_panics_without_data() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map_or_else(|| "?".to_owned(), |l| format!("{}:{}", l.file(), l.line()));
        let message = info
            .payload()
            .downcast_ref::<&'static str>()
            .copied()
            .unwrap_or("(formatted message withheld: it may hold request data)");
        let thread = std::thread::current();
        tracing::error!(
            %location,
            thread = thread.name().unwrap_or("?"),
            message,
            "panic; the request it happened in was answered 500"
        );
    }));
}

/// Errors are printed as one line with their causes (`a: b: c`; a cause
/// already in the message is not repeated), exit 1.
pub fn main() -> std::process::ExitCode {
    app::handover::init();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut message = String::new();
            for cause in e.chain().map(ToString::to_string) {
                if !message.contains(&cause) {
                    if !message.is_empty() {
                        message.push_str(": ");
                    }
                    message.push_str(&cause);
                }
            }
            eprintln!("Error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let logging = LogConfig {
        format: cli.log_format,
        level: cli.log_level,
    };
    // The servers log as their config says: logging starts once it is read.
    if !matches!(cli.command, Command::Gateway { .. } | Command::Run { .. }) {
        init_logging(&logging, None);
    }
    log_panics_without_data();
    // Keys (the organisation CA's, gateway TLS) never end up in a core dump.
    if let Err(e) = app::no_core_dumps() {
        eprintln!("cannot disable core dumps for this process: {e}");
    }
    match cli.command {
        Command::Gateway {
            config,
            listen,
            admin_listen,
            audit_dir,
        } => {
            let overrides = Overrides {
                gateway_listen: listen,
                admin_listen,
                audit_dir,
                credentials_unread: false,
            };
            serve(config, overrides, &logging, |loaded, source| {
                app::run_gateway(loaded, shutdown_signal(), Some(source))
            })
        }
        Command::Run {
            config,
            admin_listen,
            audit_dir,
        } => {
            let overrides = Overrides {
                gateway_listen: None,
                admin_listen,
                audit_dir,
                credentials_unread: false,
            };
            serve(config, overrides, &logging, |loaded, source| {
                app::run_agent(loaded, shutdown_signal(), Some(source))
            })
        }
        Command::Collector { config } => {
            let config = crate::collector::CollectorConfig::load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                let (tx, rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    shutdown_signal().await;
                    let _ = tx.send(true);
                });
                crate::collector::run(config, rx).await
            })?;
            Ok(())
        }
        Command::Ca(cmd) => ca::command(cmd),
        Command::Audit(cmd) => audit::command(cmd),
        Command::Policy(cmd) => policy::command(cmd),
        Command::Keys(cmd) => keys::command(cmd),
        Command::Intercept(cmd) => intercept::command(cmd),
        Command::Console(running) => {
            let (config, overrides) = running.overrides();
            console::command(config.as_deref(), &overrides)
        }
        Command::Reload(running) => {
            let (config, overrides) = running.overrides();
            console::reload(config.as_deref(), &overrides)
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let config = Config::load(Some(&file), &Overrides::default())?;
            app::check(&config)?;
            println!("{}: ok", file.display());
            Ok(())
        }
    }
}
