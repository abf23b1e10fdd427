//! The `leash` command line.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use leash_agent::{
    app,
    ca::{CaOptions, CertAuthority},
    config::{Config, DEFAULT_CA_DIR, Overrides},
    trust,
};
use tracing_subscriber::EnvFilter;

/// Leash: see, govern and account for every request your organisation sends
/// to LLM providers.
#[derive(Parser)]
#[command(name = "leash", version, about, long_about = None)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log filter (e.g. `info`, `leash_agent=debug`); `RUST_LOG` wins when set.
    #[arg(long, default_value = "info", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the explicit gateway: applications point their SDK base URL at
    /// `http(s)://<listen>/v1/<provider>`.
    Gateway {
        /// YAML config file; without it the embedded defaults are used
        /// (gateway 127.0.0.1:8080, admin 127.0.0.1:9090, audit in
        /// /var/lib/leash/audit, public provider upstreams).
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
    /// the gateway listener when the config sets `gateway.listen`.
    Run {
        /// YAML config file; without it the embedded defaults are used (the
        /// built-in providers for the whole host, CA in /var/lib/leash/ca,
        /// audit in /var/lib/leash/audit, admin on 127.0.0.1:9090).
        #[arg(short, long, env = "LEASH_CONFIG")]
        config: Option<PathBuf>,
        /// Admin listen address (/healthz, /metrics), overriding `admin.listen`.
        #[arg(long, value_name = "IP:PORT")]
        admin_listen: Option<String>,
        /// Audit directory, overriding `audit.dir`.
        #[arg(long, value_name = "DIR")]
        audit_dir: Option<PathBuf>,
    },
    /// The organisation CA that intercepted connections are signed with.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a CA: DIR/ca.pem (certificate) and DIR/ca.key (private key,
    /// mode 0600). Refuses to replace an existing CA without --force.
    Init {
        /// Where to write the CA.
        #[arg(long, default_value = DEFAULT_CA_DIR)]
        dir: PathBuf,
        /// The CA certificate's common name.
        #[arg(long, default_value = "Leash Organisation CA")]
        name: String,
        /// The CA certificate's organisation name.
        #[arg(long)]
        org: Option<String>,
        /// How long the CA is valid, in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace an existing CA (every machine must then trust the new one).
        #[arg(long)]
        force: bool,
    },
    /// Add the CA to this machine's trust store and print what runtimes
    /// with their own stores (Python, Node.js, Java) need.
    Install {
        /// The CA directory.
        #[arg(long, default_value = DEFAULT_CA_DIR)]
        dir: PathBuf,
    },
    /// Remove the CA from this machine's trust store.
    Uninstall,
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

fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
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
            };
            let config = Config::load(config.as_deref(), &overrides)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(app::run_gateway(config, shutdown_signal()))?;
            Ok(())
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
            };
            let config = Config::load(config.as_deref(), &overrides)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(app::run_agent(config, shutdown_signal()))?;
            Ok(())
        }
        Command::Ca(CaCommand::Init {
            dir,
            name,
            org,
            days,
            force,
        }) => {
            let options = CaOptions {
                common_name: name,
                organization: org,
                validity_days: days,
            };
            let ca = CertAuthority::init(&dir, &options, force)?;
            println!(
                "Created {} (key in {}, mode 0600).\nTrust it on each machine: leash ca install --dir {}",
                ca.cert_path().display(),
                dir.join(leash_agent::ca::KEY_FILE).display(),
                dir.display()
            );
            Ok(())
        }
        Command::Ca(CaCommand::Install { dir }) => {
            let ca = CertAuthority::load(&dir)?;
            print!("{}", trust::install(&ca.cert_path())?);
            Ok(())
        }
        Command::Ca(CaCommand::Uninstall) => {
            print!("{}", trust::uninstall()?);
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let config = Config::load(Some(&file), &Overrides::default())?;
            app::check(&config)?;
            println!("{}: ok", file.display());
            Ok(())
        }
    }
}
