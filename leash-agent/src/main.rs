//! The `leash` command line.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use leash_agent::{
    app,
    ca::{CaOptions, CertAuthority, DEFAULT_CA_DIR},
    config::{Config, Overrides},
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
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The kernel hooks of the transparent agent.
    #[command(subcommand)]
    Intercept(InterceptCommand),
}

#[derive(Subcommand)]
enum InterceptCommand {
    /// Detach the hooks a stopped agent left pinned (`intercept.failure_mode:
    /// closed`): provider connections flow direct again, uninspected. For
    /// uninstalling Leash; a running agent keeps its own hooks.
    Release {
        /// The cgroup the hooks are on; default: `intercept.cgroup` of
        /// `--config`, else the cgroup v2 root.
        #[arg(long, value_name = "DIR")]
        cgroup: Option<PathBuf>,
        /// The agent's config file (for `intercept.cgroup`).
        #[arg(short, long, env = "LEASH_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Where the audit trail is: `--dir`, else `audit.dir` of `--config`, else
/// the default.
#[derive(clap::Args)]
struct AuditDir {
    /// The audit directory.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Take the audit directory from this config file.
    #[arg(short, long, env = "LEASH_CONFIG")]
    config: Option<PathBuf>,
}

impl AuditDir {
    fn resolve(self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = self.dir {
            return Ok(dir);
        }
        Ok(Config::load(self.config.as_deref(), &Overrides::default())?
            .audit
            .dir)
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain: exit 0 if intact, 1 naming the first bad record
    /// (edited, deleted, reordered, or a torn record left unmarked).
    Verify {
        #[command(flatten)]
        dir: AuditDir,
    },
    /// Print the newest records (JSON Lines).
    Tail {
        /// How many records.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        /// Keep printing new records as they are written.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        dir: AuditDir,
    },
    /// Select records, or sum tokens and spend by a field.
    Query {
        /// Only records since a duration ago (30m, 24h, 7d) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only this provider.
        #[arg(long)]
        provider: Option<String>,
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
        /// Only this team.
        #[arg(long)]
        team: Option<String>,
        /// Only this policy action (allow, block, redact, ...).
        #[arg(long)]
        action: Option<String>,
        /// Only this host (the `host` of each record).
        #[arg(long)]
        host: Option<String>,
        /// Sum requests, tokens and cost by team, provider, model, user,
        /// exe, host or rule (policy rules that matched).
        #[arg(long, value_name = "FIELD")]
        sum_by: Option<String>,
        /// Print JSON instead of a table (records: one per line, as written).
        #[arg(long)]
        json: bool,
        /// Query the fleet's central store instead of a local directory.
        #[arg(long, value_name = "URL", env = "LEASH_POSTGRES_URL")]
        postgres: Option<String>,
        #[command(flatten)]
        dir: AuditDir,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a CA: DIR/ca.pem (certificate) and DIR/ca.key (private key,
    /// mode 0600). Refuses to replace an existing CA without --force.
    Init {
        /// Where to write the CA.
        #[arg(long, default_value = DEFAULT_CA_DIR)]
        dir: PathBuf,
        #[command(flatten)]
        new: NewCa,
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
    /// Replace the CA with a new one (the old key is destroyed) and keep
    /// the old certificate trusted for a grace period, so clients accept
    /// leaves from either while machines (`leash ca install`) and agents
    /// (restart) move to the new one.
    Rotate {
        /// The CA directory.
        #[arg(long, default_value = DEFAULT_CA_DIR)]
        dir: PathBuf,
        /// How long the old CA stays trusted, in days.
        #[arg(long, default_value_t = 30)]
        grace_days: u32,
        #[command(flatten)]
        new: NewCa,
    },
}

/// The certificate of a new CA.
#[derive(clap::Args)]
struct NewCa {
    /// The CA certificate's common name.
    #[arg(long, default_value = "Leash Organisation CA")]
    name: String,
    /// The CA certificate's organisation name.
    #[arg(long)]
    org: Option<String>,
    /// How long the CA is valid, in days.
    #[arg(long, default_value_t = 3650)]
    days: u32,
}

impl From<NewCa> for CaOptions {
    fn from(n: NewCa) -> Self {
        Self {
            common_name: n.name,
            organization: n.org,
            validity_days: n.days,
        }
    }
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file: exit 0 if valid, 1 with the field (and line
    /// and column) and the reason if not.
    Check {
        /// The policy YAML file.
        file: PathBuf,
    },
    /// Show what a policy decides for a request body, without sending
    /// anything anywhere: decision, rules and findings (never the matched
    /// text).
    Test {
        /// The policy YAML file.
        file: PathBuf,
        /// The request body (JSON), as the SDK would send it.
        #[arg(long, value_name = "FILE")]
        request: PathBuf,
        /// The provider the request is for.
        #[arg(long, default_value = "openai")]
        provider: String,
        /// The endpoint below the provider's base URL.
        #[arg(long, default_value = "/chat/completions")]
        endpoint: String,
    },
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

fn ca_command(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init { dir, new, force } => {
            let ca = CertAuthority::init(&dir, &new.into(), force)?;
            println!(
                "Created {} (key in {}, mode 0600).\nTrust it on each machine: leash ca install --dir {}",
                ca.cert_path().display(),
                dir.join(leash_agent::ca::KEY_FILE).display(),
                dir.display()
            );
            Ok(())
        }
        CaCommand::Install { dir } => {
            CertAuthority::load(&dir)?;
            let certs: Vec<String> = leash_agent::ca::refresh_trust(&dir)?
                .into_iter()
                .map(|t| t.pem)
                .collect();
            print!(
                "{}",
                trust::install(&certs, &dir.join(leash_agent::ca::TRUST_FILE))?
            );
            Ok(())
        }
        CaCommand::Rotate {
            dir,
            grace_days,
            new,
        } => {
            let grace = std::time::Duration::from_secs(u64::from(grace_days) * 86_400);
            let ca = CertAuthority::rotate(&dir, &new.into(), grace)?;
            let trusted = leash_agent::ca::trusted(&dir)?;
            println!(
                "Created a new CA in {} (valid until {}); the old key is gone.",
                ca.cert_path().display(),
                ca.not_after().date()
            );
            for t in trusted.iter().skip(1) {
                if let Some(until) = t.until {
                    println!(
                        "A retired CA stays trusted until {until} (in {}).",
                        dir.join(leash_agent::ca::TRUST_FILE).display()
                    );
                }
            }
            println!(
                "Next: on every machine `leash ca install --dir {d}` (trusts the new and the retired CA), then restart the agents so they sign with the new one. Once the grace period is over, `leash ca install` again drops the old CA.",
                d = dir.display()
            );
            Ok(())
        }
        CaCommand::Uninstall => {
            print!("{}", trust::uninstall()?);
            Ok(())
        }
    }
}

fn intercept_command(cmd: InterceptCommand) -> anyhow::Result<()> {
    match cmd {
        InterceptCommand::Release { cgroup, config } => {
            let cgroup = match cgroup {
                Some(c) => Some(c),
                None => {
                    Config::load(config.as_deref(), &Overrides::default())?
                        .intercept
                        .cgroup
                }
            };
            let (dir, released) = app::release_pinned(cgroup)?;
            println!(
                "released {released} pinned hook(s) on {}: provider connections there now go direct",
                dir.display()
            );
            Ok(())
        }
    }
}

fn policy_command(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Check { file } => {
            let policy = leash_agent::policy::Policy::load(&file)?;
            println!("{}: ok ({policy:?})", file.display());
            Ok(())
        }
        PolicyCommand::Test {
            file,
            request,
            provider,
            endpoint,
        } => {
            let policy = leash_agent::policy::Policy::load(&file)?;
            let config = Config::load(None, &Overrides::default())?;
            let provider = config
                .providers
                .get(&provider)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("unknown provider `{provider}`"))?;
            let body = std::fs::read(&request)
                .with_context(|| format!("cannot read {}", request.display()))?;
            let decision = policy
                .test(provider, &endpoint, &body)
                .map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string_pretty(&decision)?);
            Ok(())
        }
    }
}

fn audit_command(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify { dir } => audit_verify(&dir.resolve()?),
        AuditCommand::Tail { lines, follow, dir } => audit_tail(&dir.resolve()?, lines, follow),
        AuditCommand::Query {
            since,
            provider,
            model,
            team,
            action,
            host,
            sum_by,
            json,
            postgres,
            dir,
        } => {
            let filter = leash_agent::audit::read::Filter {
                since: since
                    .as_deref()
                    .map(leash_agent::audit::read::parse_since)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                provider,
                model,
                team,
                action,
                host,
            };
            if let Some(key) = &sum_by {
                anyhow::ensure!(
                    SUM_KEYS.contains(&key.as_str()),
                    "--sum-by takes one of: {}",
                    SUM_KEYS.join(", ")
                );
            }
            match postgres {
                Some(url) => fleet_query(&url, &filter, sum_by, json),
                None => audit_query(&dir.resolve()?, &filter, sum_by, json),
            }
        }
    }
}

fn audit_verify(dir: &std::path::Path) -> anyhow::Result<()> {
    use leash_agent::audit::chain;
    match chain::verify(dir) {
        Ok(report) => {
            if report.first_seq > 1 {
                println!(
                    "note: the trail starts at seq {}: older segments were removed by retention",
                    report.first_seq
                );
            }
            println!(
                "ok: {} records in {} segment(s), chain intact through seq {}{}",
                report.records,
                report.files,
                report.last_seq,
                if report.marked_torn > 0 {
                    format!(
                        "; {} torn record(s) from crashes, marked",
                        report.marked_torn
                    )
                } else {
                    String::new()
                }
            );
            if let Some((file, bytes)) = report.open_torn {
                println!(
                    "note: {} ends with a torn record ({bytes} bytes) from a crash; it is marked when leash restarts",
                    file.display()
                );
            }
            Ok(())
        }
        Err(broken) => anyhow::bail!("audit trail broken: {broken}"),
    }
}

fn audit_tail(dir: &std::path::Path, lines: usize, follow: bool) -> anyhow::Result<()> {
    use leash_agent::audit::read;
    let records = read::records(dir)?;
    let mut last = 0;
    for r in records.iter().skip(records.len().saturating_sub(lines)) {
        println!("{r}");
    }
    if let Some(r) = records.last() {
        last = r["seq"].as_u64().unwrap_or(0);
    }
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let seen = last;
        for r in read::records(dir)?
            .iter()
            .filter(|r| r["seq"].as_u64().unwrap_or(0) > seen)
        {
            println!("{r}");
            last = r["seq"].as_u64().unwrap_or(last);
        }
    }
}

const SUM_KEYS: [&str; 7] = ["team", "provider", "model", "user", "exe", "host", "rule"];

/// `leash audit query --postgres`: the same selections and sums over every
/// host's records in the central store.
fn fleet_query(
    url: &str,
    filter: &leash_agent::audit::read::Filter,
    sum_by: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    use leash_agent::collector::store;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = store::connect(url).await?;
        if let Some(key) = sum_by {
            return print_sums(&key, &store::sum_by(&client, filter, &key).await?, json);
        }
        for line in store::select_lines(&client, filter).await? {
            if json {
                println!("{line}");
            } else {
                print_record(&serde_json::from_str(&line)?);
            }
        }
        Ok(())
    })
}

fn print_sums(
    key: &str,
    sums: &std::collections::BTreeMap<String, leash_agent::audit::read::Totals>,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(sums)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>9} {:>12} {:>12} {:>12}",
        key, "requests", "input", "output", "cost_usd"
    );
    // Largest first: the top callers, teams or rules lead.
    let mut rows: Vec<_> = sums.iter().collect();
    rows.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(b.0)));
    for (group, t) in rows {
        let unpriced = if t.unpriced > 0 {
            format!("  ({} unpriced)", t.unpriced)
        } else {
            String::new()
        };
        println!(
            "{group:<24} {:>9} {:>12} {:>12} {:>12.6}{unpriced}",
            t.requests, t.input_tokens, t.output_tokens, t.cost_usd
        );
    }
    Ok(())
}

fn print_record(r: &serde_json::Value) {
    println!(
        "{} {:<12} {:<10} {:<28} {:>4} in={:<7} out={:<7} cost={:<10} team={}",
        r["ts"].as_str().unwrap_or("-"),
        r["host"].as_str().unwrap_or("-"),
        r["provider"].as_str().unwrap_or("-"),
        r["model"].as_str().unwrap_or("-"),
        r["status"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |s| s.to_string()),
        r["usage"]["input_tokens"].as_u64().unwrap_or(0),
        r["usage"]["output_tokens"].as_u64().unwrap_or(0),
        r["cost_usd"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.6}")),
        r["caller"]["team"].as_str().unwrap_or("-"),
    );
}

fn audit_query(
    dir: &std::path::Path,
    filter: &leash_agent::audit::read::Filter,
    sum_by: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    use leash_agent::audit::read;
    let records = read::records(dir)?;
    let selected = records.iter().filter(|r| filter.matches(r));
    match sum_by {
        Some(key) => print_sums(&key, &read::sum_by(selected, &key), json)?,
        None => {
            for r in selected {
                if json {
                    println!("{r}");
                } else {
                    print_record(r);
                }
            }
        }
    }
    Ok(())
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

/// Runs a server until it returns, on a multi-threaded runtime.
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
fn main() -> std::process::ExitCode {
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
    init_logging(cli.log_format, &cli.log_level);
    log_panics_without_data();
    // Keys (the organisation CA's, gateway TLS) never end up in a core dump.
    if let Err(e) = app::no_core_dumps() {
        tracing::warn!(error = %e, "cannot disable core dumps for this process");
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
            };
            let config = Config::load(config.as_deref(), &overrides)?;
            block_on(app::run_gateway(config, shutdown_signal()))
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
            block_on(app::run_agent(config, shutdown_signal()))
        }
        Command::Collector { config } => {
            let config = leash_agent::collector::CollectorConfig::load(&config)?;
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
                leash_agent::collector::run(config, rx).await
            })?;
            Ok(())
        }
        Command::Ca(cmd) => ca_command(cmd),
        Command::Audit(cmd) => audit_command(cmd),
        Command::Policy(cmd) => policy_command(cmd),
        Command::Intercept(cmd) => intercept_command(cmd),
        Command::Config(ConfigCommand::Check { file }) => {
            let config = Config::load(Some(&file), &Overrides::default())?;
            app::check(&config)?;
            println!("{}: ok", file.display());
            Ok(())
        }
    }
}
