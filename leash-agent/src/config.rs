//! Configuration: the YAML file is parsed once, validated, and turned into an
//! immutable [`Config`]. A bad file is a startup error naming the field.
//!
//! Each subsystem owns its section — the raw form as written, the validated
//! form, and the validation (`audit::config`, `intercept::config`,
//! `upstream`, `pipeline::budget`, …); this module only composes them and
//! resolves paths against the file's directory. `Config` is data: the
//! composition root (`app`) compiles the policy and the price table.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    admin::{AdminConfig, RawAdmin},
    alerts::{AlertConfig, RawAlerts},
    audit::config::{AuditConfig, RawAudit},
    ca::{CaConfig, RawCa},
    field::{FieldError, invalid},
    intercept::config::{InterceptConfig, RawIntercept},
    modules::{PipelineConfig, RawPipeline},
    pipeline::{
        budget::{
            BudgetConfig, RawBudget,
            fleet::{FleetConfig, RawFleet},
        },
        team::TeamConfig,
    },
    policy::PolicySource,
    pricing::{self, Prices},
    provider::{Providers, RawProvider},
    proxy::gateway::{GatewayConfig, RawGateway},
    upstream::{RawUpstream, RawUpstreamTls, UpstreamConfig},
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: crate::field::YamlError,
    },
    #[error("invalid config: {0}")]
    Invalid(#[from] FieldError),
}

/// The validated, immutable configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub host_id: String,
    pub gateway: GatewayConfig,
    pub admin: AdminConfig,
    pub providers: Providers,
    pub upstream: UpstreamConfig,
    pub audit: AuditConfig,
    pub pipeline: PipelineConfig,
    pub ca: CaConfig,
    pub intercept: InterceptConfig,
    /// Prices on top of the built-in table.
    pub pricing: Prices,
    pub budgets: Vec<BudgetConfig>,
    /// Budgets shared by every host and replica (`fleet_budgets`).
    pub fleet_budgets: Option<FleetConfig>,
    pub alerts: AlertConfig,
    /// Where the policy comes from; `None`: no policy.
    pub policy: Option<PolicySource>,
    pub teams: Vec<TeamConfig>,
    /// Named routes of the unified API.
    pub routes: crate::routes::Routes,
    /// MCP servers the gateway fronts (`/mcp/<server>/…`).
    pub mcp: crate::mcp::McpServers,
    /// Provider credentials Leash holds.
    pub credentials: crate::credentials::Credentials,
    /// Virtual keys.
    pub auth: crate::keys::AuthConfig,
    /// Content capture.
    pub capture: crate::capture::CaptureConfig,
    /// OpenTelemetry export.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// Logs on standard error.
    pub log: LogConfig,
}

/// The `log` section: how Leash logs on standard error (the command
/// line's `--log-format` / `--log-level` win when given).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json` (one object a line; lines about an exchange carry
    /// its `trace_id`, `span_id` and `request_id`).
    #[serde(default)]
    pub format: Option<LogFormat>,
    /// A filter such as `info` or `leash_agent=debug`; `RUST_LOG` wins.
    #[serde(default)]
    pub level: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

// ---- the file as written -------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host_id: Option<String>,
    #[serde(default)]
    gateway: RawGateway,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    upstream_tls: RawUpstreamTls,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    pipeline: RawPipeline,
    #[serde(default)]
    ca: RawCa,
    #[serde(default)]
    intercept: RawIntercept,
    #[serde(default)]
    pricing: Prices,
    #[serde(default)]
    budgets: Vec<RawBudget>,
    fleet_budgets: Option<RawFleet>,
    #[serde(default)]
    alerts: RawAlerts,
    policy: Option<serde_norway::Value>,
    #[serde(default)]
    teams: Vec<TeamConfig>,
    #[serde(default)]
    routes: BTreeMap<String, crate::routes::RawRoute>,
    #[serde(default)]
    mcp: crate::mcp::RawMcp,
    #[serde(default)]
    credentials: BTreeMap<String, crate::credentials::RawCredential>,
    #[serde(default)]
    auth: crate::keys::RawAuth,
    #[serde(default)]
    capture: crate::capture::RawCapture,
    #[serde(default)]
    telemetry: crate::telemetry::RawTelemetry,
    #[serde(default)]
    log: LogConfig,
    #[serde(skip)]
    credentials_unread: bool,
}

/// Command-line values that take precedence over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub gateway_listen: Option<String>,
    pub admin_listen: Option<String>,
    /// Taken relative to the current directory, not the config file's.
    pub audit_dir: Option<PathBuf>,
    /// For commands that send nothing to a provider (`leash console`,
    /// `leash keys`): `credentials:` is checked but its values not read
    /// (they live in the service's environment, not the operator's shell).
    pub credentials_unread: bool,
}

impl Overrides {
    /// For commands that talk to the running Leash (`leash console`,
    /// `leash reload`): its admin address and audit directory, if they were
    /// overridden when it started; `credentials:` not read.
    pub fn running(admin_listen: Option<String>, audit_dir: Option<PathBuf>) -> Self {
        Self {
            gateway_listen: None,
            admin_listen,
            audit_dir,
            credentials_unread: true,
        }
    }

    /// For commands that send nothing upstream: `credentials:` is checked,
    /// its values not read.
    pub fn reading() -> Self {
        Self {
            credentials_unread: true,
            ..Self::default()
        }
    }
}

/// A team that chooses an injected credential must be one a caller cannot
/// simply claim: configured, and not named by header.
fn injection_teams(intercept: &InterceptConfig, teams: &[TeamConfig]) -> Result<(), FieldError> {
    for (provider, rules) in &intercept.inject.by_provider {
        for team in rules.teams() {
            let field = format!("intercept.inject_credentials.{provider}");
            match teams.iter().find(|t| t.name == team) {
                None => {
                    return Err(invalid(field, format!("team `{team}` is not in `teams:`")));
                }
                Some(t) if t.header => {
                    return Err(invalid(
                        field,
                        format!(
                            "team `{team}` can be claimed by header (`header: true`), so it cannot choose a credential"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

impl Config {
    /// Reads and validates a config file (or the embedded defaults when
    /// `path` is `None`), then applies `overrides`. Relative paths inside the
    /// file are taken relative to the file's directory.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            let mut raw = RawConfig::default();
            // Both ways in, one process: `leash run` on the embedded
            // defaults serves the gateway listener too.
            raw.gateway.listen_by_default();
            return Ok(raw.overridden(overrides).validate(Path::new("."))?);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Ok(Self::parse_raw(&text, path)?
            .overridden(overrides)
            .validate(base)?)
    }

    /// The embedded defaults: what `leash gateway` runs with no config file.
    pub fn embedded_default() -> Result<Self, ConfigError> {
        Self::load(None, &Overrides::default())
    }

    /// Parses config text; `name` is used in error messages, `base` resolves
    /// relative paths.
    pub fn parse(text: &str, name: &Path, base: &Path) -> Result<Self, ConfigError> {
        Ok(Self::parse_raw(text, name)?.validate(base)?)
    }

    fn parse_raw(text: &str, name: &Path) -> Result<RawConfig, ConfigError> {
        if text.trim().is_empty() {
            return Ok(RawConfig::default());
        }
        crate::field::from_yaml(text).map_err(|source| ConfigError::Parse {
            path: name.to_owned(),
            source,
        })
    }
}

fn read_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

impl RawConfig {
    fn overridden(mut self, o: &Overrides) -> Self {
        if let Some(listen) = &o.gateway_listen {
            self.gateway.listen = Some(listen.clone());
        }
        if let Some(listen) = &o.admin_listen {
            self.admin.listen = Some(listen.clone());
        }
        if let Some(dir) = &o.audit_dir {
            self.audit.dir = Some(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()));
        }
        self.credentials_unread = o.credentials_unread;
        self
    }

    fn validate(self, base: &Path) -> Result<Config, FieldError> {
        let Self {
            host_id,
            gateway,
            admin,
            providers,
            upstream_tls,
            upstream,
            audit,
            pipeline,
            ca,
            intercept,
            pricing,
            budgets,
            fleet_budgets,
            alerts,
            policy,
            teams,
            routes,
            mcp,
            credentials,
            auth,
            capture,
            telemetry,
            log,
            credentials_unread,
        } = self;
        let host_id = match host_id {
            Some(h) if h.trim().is_empty() => return Err(invalid("host_id", "must not be empty")),
            Some(h) => h,
            None => read_hostname(),
        };
        let gateway = GatewayConfig::validate(gateway, base)?;
        let audit = AuditConfig::validate(audit, base, &host_id)?;
        let admin = AdminConfig::validate(
            &admin,
            "admin",
            base,
            crate::admin::DEFAULT_ADMIN_LISTEN,
            &audit.dir,
        )?;
        if admin.listen == gateway.listen && admin.listen.port() != 0 {
            return Err(invalid("admin.listen", "must differ from gateway.listen"));
        }
        let providers = Providers::validate(providers)?;
        let credentials =
            crate::credentials::Credentials::validate(credentials, base, !credentials_unread)?;
        let routes = crate::routes::Routes::validate(routes, &providers, &credentials)?;
        let auth = crate::keys::AuthConfig::validate(auth, base, &providers, &credentials)?;
        let mcp = crate::mcp::McpServers::validate(mcp)?;
        let intercept = InterceptConfig::validate(intercept, &providers, &credentials, &mcp)?;
        let teams = TeamConfig::validate_all(teams)?;
        injection_teams(&intercept, &teams)?;
        let mut pipeline = PipelineConfig::validate(pipeline)?;
        if auth.mode != crate::keys::AuthMode::Passthrough {
            pipeline = pipeline.with_keys();
        }
        let capture = crate::capture::CaptureConfig::validate(capture, base, &audit.dir)?;
        if capture.enabled() {
            pipeline = pipeline.with_capture();
        }
        let telemetry = crate::telemetry::TelemetryConfig::validate(telemetry, base)?;
        if telemetry.otlp.is_some() {
            pipeline = pipeline.with_telemetry();
        }
        Ok(Config {
            log,
            telemetry,
            capture,
            intercept,
            routes,
            mcp,
            credentials,
            auth,
            pipeline,
            upstream: UpstreamConfig::validate(upstream, upstream_tls, base)?,
            audit,
            ca: CaConfig::from_raw(ca, base),
            pricing: pricing::validate(pricing)?,
            budgets: BudgetConfig::validate_all(budgets)?,
            fleet_budgets: fleet_budgets
                .as_ref()
                .map(|f| FleetConfig::validate(f, base))
                .transpose()?,
            alerts: AlertConfig::validate(alerts)?,
            policy: policy.map(|raw| PolicySource::from_raw(raw, base)),
            teams,
            host_id,
            gateway,
            admin,
            providers,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{
        admin::DEFAULT_ADMIN_LISTEN, audit::config::default_dir, intercept::config::Scope,
        provider::ProviderKind, proxy::gateway::DEFAULT_GATEWAY_LISTEN,
    };

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.yaml"), Path::new("/etc/leash"))
    }

    #[test]
    fn embedded_defaults() {
        let c = Config::embedded_default().unwrap();
        assert_eq!(c.gateway.listen.to_string(), DEFAULT_GATEWAY_LISTEN);
        // `leash run` serves it too.
        assert!(c.gateway.explicit);
        assert_eq!(c.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(c.audit.dir, default_dir());
        let openai = c.providers.get("openai").unwrap();
        assert_eq!(openai.upstream.to_string(), "https://api.openai.com/v1");
        assert!(c.providers.get("anthropic").is_some());
        assert!(c.providers.get("google").is_some());
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            r#"
gateway:
  listen: "127.0.0.1:18080"
  tls: { cert: gw.pem, key: gw.key }
admin:
  listen: "127.0.0.1:19090"
providers:
  openai:    { upstream: "http://127.0.0.1:9000/v1" }
  mistral:   { kind: openai, upstream: "https://api.mistral.ai/v1" }
  local:     { kind: openai, upstream: "http://localhost:11434/v1" }
upstream_tls:
  extra_roots: ["corp-root.pem"]
audit:
  dir: "audit"
"#,
        )
        .unwrap();
        assert_eq!(
            c.gateway.tls.unwrap().cert,
            PathBuf::from("/etc/leash/gw.pem")
        );
        assert_eq!(
            c.upstream.extra_roots,
            vec![PathBuf::from("/etc/leash/corp-root.pem")]
        );
        assert_eq!(c.audit.dir, PathBuf::from("/etc/leash/audit"));
        assert_eq!(
            c.providers.get("openai").unwrap().upstream.to_string(),
            "http://127.0.0.1:9000/v1"
        );
        assert_eq!(c.providers.get("local").unwrap().kind, ProviderKind::OpenAi);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("gateway: { listen: nope }", "gateway.listen"),
            (
                "providers: { foo: { upstream: 'https://x' } }",
                "providers.foo.kind",
            ),
            (
                "providers: { foo: { kind: bard, upstream: 'https://x' } }",
                "providers.foo.kind",
            ),
            (
                "providers: { openai: { upstream: 'ftp://x' } }",
                "providers.openai.upstream",
            ),
            (
                "providers: { 'Bad Name': { kind: openai, upstream: 'https://x' } }",
                "providers.Bad Name",
            ),
            ("pipeline: { modules: [nope] }", "pipeline.modules[0]"),
            ("gateway: { max_body_bytes: 0 }", "gateway.max_body_bytes"),
            (
                "credentials: { k: { env: PATH } }\nintercept: { inject_credentials: { openai: [ { credential: k, team: ops } ] } }",
                "team `ops` is not in `teams:`",
            ),
            (
                "credentials: { k: { env: PATH } }\nteams: [ { name: ops, header: true } ]\nintercept: { inject_credentials: { openai: [ { credential: k, team: ops } ] } }",
                "can be claimed by header",
            ),
            (
                "credentials: { k: { env: PATH } }\nintercept: { inject_credentials: { openai: [ { credential: nope } ] } }",
                "intercept.inject_credentials.openai[0].credential",
            ),
        ];
        for (text, field) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
    }

    #[test]
    fn intercept_defaults_and_hosts() {
        let c = Config::embedded_default().unwrap();
        let names: Vec<&str> = c.intercept.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "api.openai.com",
                "api.anthropic.com",
                "generativelanguage.googleapis.com"
            ]
        );
        assert_eq!(c.intercept.ports, [443]);
        assert_eq!(c.intercept.scope, Scope::Providers);
        let c = parse(
            "intercept:\n  scope: all-tls\n  hosts:\n    - { name: api.openai.com, addresses: [127.10.0.1] }\n    - { name: llm.internal.example, kind: openai, addresses: ['::1'] }\n",
        )
        .unwrap();
        assert_eq!(c.intercept.hosts[0].provider.as_deref(), Some("openai"));
        assert_eq!(c.intercept.hosts[1].kind, ProviderKind::OpenAi);
        assert_eq!(c.intercept.hosts[1].provider, None);
        assert!(
            parse("intercept:\n  hosts: [{ name: unknown.example }]\n")
                .unwrap_err()
                .to_string()
                .contains("intercept.hosts[0].kind")
        );
        assert!(
            parse("intercept:\n  scope: everything\n")
                .unwrap_err()
                .to_string()
                .contains("intercept.scope")
        );
    }

    #[test]
    fn mcp_servers_over_tls_are_intercepted() {
        let c = parse(
            "mcp:\n  servers:\n    ops: { url: 'https://Tools.Example:8443/mcp' }\n    local: { url: 'http://127.0.0.1:9000' }\n",
        )
        .unwrap();
        let mcp: Vec<_> = c
            .intercept
            .hosts
            .iter()
            .filter(|h| h.mcp.is_some())
            .collect();
        assert_eq!(mcp.len(), 1, "plain HTTP servers are not intercepted");
        assert_eq!(mcp[0].name, "tools.example");
        assert_eq!(mcp[0].mcp.as_deref(), Some("ops"));
        assert_eq!(c.intercept.ports, [443, 8443]);
        // Listed with addresses: no kind needed, still the server's.
        let c = parse(
            "intercept:\n  hosts: [{ name: tools.example, addresses: [127.10.0.9] }]\nmcp:\n  servers:\n    ops: { url: 'https://tools.example' }\n",
        )
        .unwrap();
        assert_eq!(c.intercept.hosts.len(), 1);
        assert_eq!(c.intercept.hosts[0].mcp.as_deref(), Some("ops"));
        let listed = "intercept:\n  hosts: [{ name: api.openai.com, addresses: [127.10.0.9] }]\n";
        let err = parse(&format!(
            "{listed}mcp:\n  servers:\n    ops: {{ url: 'https://api.openai.com/mcp' }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("mcp.servers.ops.url"),
            "a listed provider host: {err}"
        );
        for (yaml, field) in [
            (
                "ops: { url: 'https://api.openai.com/mcp' }",
                "mcp.servers.ops.url",
            ),
            (
                "a: { url: 'https://t.example/a' }\n    b: { url: 'https://t.example/b' }",
                "mcp.servers.b.url",
            ),
        ] {
            let err = parse(&format!("mcp:\n  servers:\n    {yaml}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn unknown_fields_are_refused_with_location() {
        let err = parse("gateway:\n  lisen: x\n").unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }
}
