//! `leash policy`: check a policy file, and see what it decides for a
//! request without sending anything.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

use crate::config::{Config, Overrides};

#[derive(Subcommand)]
pub enum PolicyCommand {
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
    /// What a candidate policy would have done to the recorded traffic,
    /// against what the live policy did: requests newly blocked,
    /// redacted or allowed, per rule and team, with example record ids.
    /// Records with redacted captured content are decided on it; the
    /// others on their metadata.
    Replay {
        /// The candidate policy file.
        #[arg(long)]
        policy: PathBuf,
        /// The Leash config (its audit dir, providers, capture dir).
        #[arg(short, long, env = "LEASH_CONFIG")]
        config: Option<PathBuf>,
        /// The audit trail's directory, overriding `audit.dir`.
        #[arg(long, value_name = "DIR")]
        audit_dir: Option<PathBuf>,
        /// The admin listener of the leash that records sealed reads,
        /// overriding `admin.listen`.
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<String>,
        /// Only records this recent (`7d`, `24h`) or since this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// An age identity (`age-keygen` output) of a capture recipient:
        /// sealed content is opened and decided on exactly (each read
        /// recorded in the audit trail by the running leash first).
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn command(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Check { file } => {
            let policy = crate::policy::Policy::load(&file)?;
            println!("{}: ok ({policy:?})", file.display());
            Ok(())
        }
        PolicyCommand::Test {
            file,
            request,
            provider,
            endpoint,
        } => {
            let policy = crate::policy::Policy::load(&file)?;
            let config = Config::load(None, &Overrides::default())?;
            let provider = config
                .providers
                .get(&provider)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("unknown provider `{provider}`"))?;
            let body = std::fs::read(&request)
                .with_context(|| format!("cannot read {}", request.display()))?;
            let decision = policy.test(provider, &endpoint, &body)?;
            println!("{}", serde_json::to_string_pretty(&decision)?);
            Ok(())
        }
        PolicyCommand::Replay {
            policy,
            config,
            audit_dir,
            admin_listen,
            since,
            identity,
            json,
        } => super::replay::replay(
            &policy,
            config.as_deref(),
            &Overrides {
                admin_listen,
                audit_dir,
                ..Overrides::reading()
            },
            since.as_deref(),
            identity.as_deref(),
            json,
        ),
    }
}
