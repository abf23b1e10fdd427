//! Configuration: the YAML file is parsed once, validated, and turned into an
//! immutable [`Config`]. A bad file is a startup error naming the field.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::provider::{BUILTIN, Provider, ProviderKind, Providers, UpstreamBase};

/// Default places, used when the file (or the whole file) leaves them out.
pub const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_AUDIT_DIR: &str = "/var/lib/leash/audit";
/// Request bodies above this are refused with 413 (they are read whole for policy).
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// A compressed request body decodes to at most this many times its size.
pub const DEFAULT_MAX_DECOMPRESSION_RATIO: usize = 100;
/// Pipeline modules run when the config names none.
pub const DEFAULT_MODULES: &[&str] = &["team", "policy", "usage", "budget"];
pub const DEFAULT_CA_DIR: &str = "/var/lib/leash/ca";
/// Local port the transparent proxy listens on (`127.0.0.1` and `::1`).
pub const DEFAULT_PROXY_PORT: u16 = 15443;
/// `SO_MARK` on the agent's own upstream sockets (never redirected).
pub const DEFAULT_BYPASS_MARK: u32 = 0x1ea5;

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
        source: serde_yaml::Error,
    },
    #[error("invalid config: `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
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
    pub pricing: std::sync::Arc<crate::pricing::PriceTable>,
    pub budgets: Vec<BudgetConfig>,
    pub alerts: crate::alerts::AlertConfig,
    /// The compiled policy (`policy: { file: ... }` or inline); `None`: none.
    pub policy: Option<std::sync::Arc<crate::policy::Policy>>,
    /// The policy file, watched for changes.
    pub policy_file: Option<PathBuf>,
    pub teams: Vec<TeamConfig>,
}

/// How a team is recognised (any one match names it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    pub name: String,
    /// SHA-256 (hex) of API keys: `printf %s "$KEY" | sha256sum`.
    #[serde(default)]
    pub key_sha256: Vec<String>,
    #[serde(default)]
    pub uid: Vec<u32>,
    #[serde(default)]
    pub user: Vec<String>,
    /// Executable path globs (transparent mode).
    #[serde(default)]
    pub exe: Vec<String>,
    /// Cgroup path globs (transparent mode).
    #[serde(default)]
    pub cgroup: Vec<String>,
    /// Whether `x-leash-team: <name>` names this team.
    #[serde(default)]
    pub header: bool,
}

/// How long a budget's spend accumulates before it starts over (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }
}

/// A spend limit for the requests that match all of its set fields.
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    pub name: String,
    pub team: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub period: Period,
    pub limit_usd: f64,
}

#[derive(Debug, Clone)]
pub struct CaConfig {
    pub dir: PathBuf,
}

/// Which connections the transparent agent takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Connections to the addresses of `intercept.hosts`.
    Providers,
    /// Every TCP connection to `intercept.ports`; the proxy decides by SNI.
    AllTls,
}

/// A provider host the agent intercepts.
#[derive(Debug, Clone)]
pub struct InterceptHost {
    pub name: String,
    pub kind: ProviderKind,
    /// The provider (from `providers`) whose upstream host this is, if any.
    pub provider: Option<String>,
    /// Addresses that always count as this host, besides resolved ones.
    pub addresses: Vec<std::net::IpAddr>,
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

/// What happens to provider connections while the agent is not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// The hooks go away with the agent: traffic flows direct.
    Open,
    /// The hooks stay attached (pinned in bpffs): connections to providers
    /// are refused until the agent is back, which takes the hooks over.
    Closed,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Whether the file (or a flag) configured the gateway listener: `leash
    /// run` serves it only then.
    pub explicit: bool,
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub max_body_bytes: usize,
    /// A compressed request body may decode to at most this many times its
    /// size (and never past `max_body_bytes`).
    pub max_decompression_ratio: usize,
    pub header_read_timeout: Duration,
    pub limits: ConnLimits,
}

/// Per-listener protocol limits (the gateway's are configurable; the admin
/// listener uses the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Request line + headers, in bytes (beyond: 431).
    pub max_header_bytes: usize,
    /// Header fields per request (beyond: 431).
    pub max_headers: usize,
    /// Open client connections; past it new ones are closed at once.
    pub max_connections: usize,
    /// HTTP/2 streams open at once per connection.
    pub max_concurrent_streams: u32,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 4096,
            max_concurrent_streams: 100,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token the console's API requires (from `admin.token_file`).
    /// Without one, the console is served only on a loopback listener.
    pub token: Option<String>,
    /// The console may replace the policy file (validated first).
    pub allow_policy_edit: bool,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// PEM files whose certificates are trusted in addition to the system and
    /// webpki roots.
    pub extra_roots: Vec<PathBuf>,
    pub connect_timeout: Duration,
    /// How long to wait for the upstream's response headers.
    pub response_timeout: Duration,
    /// Upstream host names allowed to resolve to loopback, private,
    /// link-local or other internal addresses (lower case). Any other name
    /// that resolves only to such addresses is refused (SSRF guard); IP
    /// literals in a provider URL are explicit and always allowed.
    pub allow_private_hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub dir: PathBuf,
    pub queue_capacity: usize,
    pub durability: crate::audit::Durability,
    pub overflow: crate::audit::Overflow,
    /// A new segment starts once the current one reaches this size.
    pub segment_max_bytes: u64,
    /// Segments last written longer ago are removed; `None`: kept forever.
    pub retention: Option<Duration>,
    /// Shipping to a central JetStream stream, if configured.
    pub ship: Option<ShipConfig>,
}

/// How to reach a NATS server and which JetStream stream to use.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `nats://host:port` or `tls://host:port` (several: comma-separated).
    pub url: String,
    pub stream: String,
    pub creds: Option<PathBuf>,
    pub token: Option<String>,
    /// A file holding an nkey seed (`SU...`).
    pub nkey_file: Option<PathBuf>,
    /// Extra root certificate for `tls://` servers.
    pub ca_file: Option<PathBuf>,
}

/// Shipping of this host's audit records.
#[derive(Debug, Clone)]
pub struct ShipConfig {
    pub nats: NatsConfig,
    /// The subject records are published on (`{host}` already replaced).
    pub subject: String,
    /// The subjects the stream takes when Leash creates it.
    pub stream_subjects: String,
    pub batch: usize,
}

/// `leash collector`: JetStream to PostgreSQL.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub nats: NatsConfig,
    /// The durable consumer all collectors share.
    pub durable: String,
    /// Subjects the stream takes when the collector creates it.
    pub stream_subjects: String,
    pub postgres_url: String,
    pub admin_listen: SocketAddr,
    /// Bearer token of the fleet console's API (`admin.token_file`).
    pub admin_token: Option<String>,
    pub batch: usize,
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Module names, in the order their phases run.
    pub modules: Vec<String>,
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
    pricing: BTreeMap<String, crate::pricing::Price>,
    #[serde(default)]
    budgets: Vec<RawBudget>,
    #[serde(default)]
    alerts: RawAlerts,
    policy: Option<serde_yaml::Value>,
    #[serde(default)]
    teams: Vec<TeamConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    name: Option<String>,
    team: Option<String>,
    provider: Option<String>,
    model: Option<String>,
    period: String,
    limit_usd: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    webhook: Option<String>,
    min_interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntercept {
    cgroup: Option<PathBuf>,
    scope: Option<String>,
    ports: Option<Vec<u16>>,
    hosts: Option<Vec<RawHost>>,
    resolve: Option<bool>,
    observe_dns: Option<bool>,
    refresh_secs: Option<u64>,
    proxy_port: Option<u16>,
    bypass_mark: Option<u32>,
    failure_mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: String,
    kind: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    listen: Option<String>,
    tls: Option<RawTls>,
    max_body_bytes: Option<usize>,
    max_decompression_ratio: Option<usize>,
    header_read_timeout_secs: Option<u64>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_connections: Option<usize>,
    max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token_file: Option<PathBuf>,
    #[serde(default)]
    allow_policy_edit: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: Option<String>,
    upstream: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    #[serde(default)]
    extra_roots: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    connect_timeout_secs: Option<u64>,
    response_timeout_secs: Option<u64>,
    #[serde(default)]
    allow_private_hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    dir: Option<PathBuf>,
    queue_capacity: Option<usize>,
    durability: Option<String>,
    overflow: Option<String>,
    segment_max_bytes: Option<u64>,
    retention_days: Option<u64>,
    ship: Option<RawShip>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShip {
    nats: Option<RawNats>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNats {
    url: Option<String>,
    stream: Option<String>,
    subject: Option<String>,
    durable: Option<String>,
    creds: Option<PathBuf>,
    token: Option<String>,
    nkey_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    batch: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCollectorFile {
    collector: RawCollector,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCollector {
    nats: RawNats,
    postgres: RawPostgres,
    #[serde(default)]
    admin: RawAdmin,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    modules: Option<Vec<String>>,
}

/// Command-line values that take precedence over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub gateway_listen: Option<String>,
    pub admin_listen: Option<String>,
    /// Taken relative to the current directory, not the config file's.
    pub audit_dir: Option<PathBuf>,
}

impl Config {
    /// Reads and validates a config file (or the embedded defaults when
    /// `path` is `None`), then applies `overrides`. Relative paths inside the
    /// file are taken relative to the file's directory.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return RawConfig::default()
                .overridden(overrides)
                .validate(Path::new("."));
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse_raw(&text, path)?
            .overridden(overrides)
            .validate(base)
    }

    /// The embedded defaults: what `leash gateway` runs with no config file.
    pub fn embedded_default() -> Result<Self, ConfigError> {
        Self::load(None, &Overrides::default())
    }

    /// Parses config text; `name` is used in error messages, `base` resolves
    /// relative paths.
    pub fn parse(text: &str, name: &Path, base: &Path) -> Result<Self, ConfigError> {
        Self::parse_raw(text, name)?.validate(base)
    }

    fn parse_raw(text: &str, name: &Path) -> Result<RawConfig, ConfigError> {
        if text.trim().is_empty() {
            return Ok(RawConfig::default());
        }
        serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
            path: name.to_owned(),
            source,
        })
    }
}

fn validate_upstream(
    upstream: RawUpstream,
    upstream_tls: RawUpstreamTls,
    base: &Path,
) -> Result<UpstreamConfig, ConfigError> {
    Ok(UpstreamConfig {
        extra_roots: upstream_tls
            .extra_roots
            .into_iter()
            .map(|p| resolve(base, p))
            .collect(),
        connect_timeout: secs(
            "upstream.connect_timeout_secs",
            upstream.connect_timeout_secs,
            10,
        )?,
        response_timeout: secs(
            "upstream.response_timeout_secs",
            upstream.response_timeout_secs,
            600,
        )?,
        allow_private_hosts: upstream
            .allow_private_hosts
            .into_iter()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            .collect(),
    })
}

fn conn_limits(g: &RawGateway) -> Result<ConnLimits, ConfigError> {
    let d = ConnLimits::default();
    let max_header_bytes = g.max_header_bytes.unwrap_or(d.max_header_bytes);
    if !(8192..=16 * 1024 * 1024).contains(&max_header_bytes) {
        return Err(invalid(
            "gateway.max_header_bytes",
            "must be between 8192 and 16777216",
        ));
    }
    let positive = |field: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(invalid(field, "must be positive")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    Ok(ConnLimits {
        max_header_bytes,
        max_headers: positive("gateway.max_headers", g.max_headers, d.max_headers)?,
        max_connections: positive(
            "gateway.max_connections",
            g.max_connections,
            d.max_connections,
        )?,
        max_concurrent_streams: match g.max_concurrent_streams {
            Some(0) => {
                return Err(invalid(
                    "gateway.max_concurrent_streams",
                    "must be positive",
                ));
            }
            Some(n) => n,
            None => d.max_concurrent_streams,
        },
    })
}

fn parse_addr(field: &str, value: Option<&str>, default: &str) -> Result<SocketAddr, ConfigError> {
    let text = value.unwrap_or(default);
    text.parse()
        .map_err(|_| invalid(field, format!("`{text}` is not an IP:port address")))
}

fn secs(field: &str, value: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(invalid(field, "must be at least 1 second")),
        n => Ok(Duration::from_secs(n)),
    }
}

fn resolve(base: &Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
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
        self
    }

    fn validate(self, base: &Path) -> Result<Config, ConfigError> {
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
            alerts,
            policy,
            teams,
        } = self;
        let host_id = match host_id {
            Some(h) if h.trim().is_empty() => return Err(invalid("host_id", "must not be empty")),
            Some(h) => h,
            None => read_hostname(),
        };
        let limits = conn_limits(&gateway)?;
        let gateway = GatewayConfig {
            explicit: gateway.listen.is_some(),
            listen: parse_addr(
                "gateway.listen",
                gateway.listen.as_deref(),
                DEFAULT_GATEWAY_LISTEN,
            )?,
            tls: gateway.tls.map(|t| TlsFiles {
                cert: resolve(base, t.cert),
                key: resolve(base, t.key),
            }),
            max_body_bytes: match gateway.max_body_bytes {
                Some(0) => return Err(invalid("gateway.max_body_bytes", "must be positive")),
                Some(n) => n,
                None => DEFAULT_MAX_BODY_BYTES,
            },
            max_decompression_ratio: match gateway.max_decompression_ratio {
                Some(0) => {
                    return Err(invalid(
                        "gateway.max_decompression_ratio",
                        "must be positive",
                    ));
                }
                Some(n) => n,
                None => DEFAULT_MAX_DECOMPRESSION_RATIO,
            },
            header_read_timeout: secs(
                "gateway.header_read_timeout_secs",
                gateway.header_read_timeout_secs,
                30,
            )?,
            limits,
        };
        let admin = AdminConfig {
            listen: parse_addr(
                "admin.listen",
                admin.listen.as_deref(),
                DEFAULT_ADMIN_LISTEN,
            )?,
            token: admin_token(base, admin.token_file.as_deref())?,
            allow_policy_edit: admin.allow_policy_edit,
        };
        if admin.listen == gateway.listen && admin.listen.port() != 0 {
            return Err(invalid("admin.listen", "must differ from gateway.listen"));
        }
        let upstream = validate_upstream(upstream, upstream_tls, base)?;
        let audit = validate_audit(audit, base, &host_id)?;
        let pipeline = PipelineConfig {
            modules: validate_modules(pipeline.modules)?,
        };
        let providers = validate_providers(providers)?;
        let intercept = validate_intercept(intercept, &providers)?;
        Ok(Config {
            host_id,
            gateway,
            admin,
            providers,
            upstream,
            audit,
            pipeline,
            ca: CaConfig {
                dir: resolve(base, ca.dir.unwrap_or_else(|| DEFAULT_CA_DIR.into())),
            },
            intercept,
            pricing: std::sync::Arc::new(validate_pricing(pricing)?),
            budgets: validate_budgets(budgets)?,
            alerts: validate_alerts(alerts)?,
            policy_file: policy_file(policy.as_ref(), base),
            policy: load_policy(policy, base)?,
            teams: validate_teams(teams)?,
        })
    }
}

/// The hosts of the three native providers: intercepted by default.
const DEFAULT_HOSTS: [&str; 3] = ["openai", "anthropic", "google"];

fn validate_intercept(
    raw: RawIntercept,
    providers: &Providers,
) -> Result<InterceptConfig, ConfigError> {
    let scope = match raw.scope.as_deref() {
        None | Some("providers") => Scope::Providers,
        Some("all-tls") => Scope::AllTls,
        Some(other) => {
            return Err(invalid(
                "intercept.scope",
                format!("`{other}` is not one of: providers, all-tls"),
            ));
        }
    };
    let ports = raw.ports.unwrap_or_else(|| vec![443]);
    if ports.is_empty() || ports.len() > 64 || ports.contains(&0) {
        return Err(invalid("intercept.ports", "1 to 64 ports, none of them 0"));
    }
    let provider_for = |host: &str| {
        providers
            .iter()
            .find(|p| p.upstream.is_tls() && p.upstream.host().eq_ignore_ascii_case(host))
    };
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
            .map(|(i, h)| {
                let field = format!("intercept.hosts[{i}]");
                let name = h.name.trim_end_matches('.').to_ascii_lowercase();
                if name.is_empty() || name.parse::<std::net::IpAddr>().is_ok() || name.contains('/')
                {
                    return Err(invalid(format!("{field}.name"), "must be a host name"));
                }
                let provider = provider_for(&name);
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
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(InterceptConfig {
        cgroup: raw.cgroup,
        scope,
        ports,
        hosts,
        resolve: raw.resolve.unwrap_or(true),
        observe_dns: raw.observe_dns.unwrap_or(true),
        refresh: secs("intercept.refresh_secs", raw.refresh_secs, 30)?,
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
        failure_mode: failure_mode(raw.failure_mode.as_deref())?,
    })
}

/// The console's bearer token from `admin.token_file`.
fn admin_token(base: &Path, file: Option<&Path>) -> Result<Option<String>, ConfigError> {
    let Some(file) = file else {
        return Ok(None);
    };
    let path = resolve(base, file.to_path_buf());
    let text = std::fs::read_to_string(&path).map_err(|e| {
        invalid(
            "admin.token_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let token = text.trim().to_owned();
    if token.len() < 16 || token.chars().any(char::is_whitespace) {
        return Err(invalid(
            "admin.token_file",
            "the token must be at least 16 characters, without spaces",
        ));
    }
    Ok(Some(token))
}

fn failure_mode(raw: Option<&str>) -> Result<FailureMode, ConfigError> {
    match raw {
        None | Some("open") => Ok(FailureMode::Open),
        Some("closed") => Ok(FailureMode::Closed),
        Some(other) => Err(invalid(
            "intercept.failure_mode",
            format!("`{other}` is not one of: open, closed"),
        )),
    }
}

/// Default subject records are published on; `{host}` is the host id.
const DEFAULT_SUBJECT: &str = "leash.audit.{host}";
const DEFAULT_STREAM: &str = "LEASH_AUDIT";

/// A host id as one subject token: no `.`, wildcards or spaces.
fn subject_token(host: &str) -> String {
    host.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|t| !t.is_empty() && !t.contains(char::is_whitespace))
}

fn validate_nats(raw: &RawNats, field: &str, base: &Path) -> Result<NatsConfig, ConfigError> {
    let url = raw
        .url
        .clone()
        .ok_or_else(|| invalid(format!("{field}.url"), "required (nats://host:4222)"))?;
    for u in url.split(',') {
        let u = u.trim();
        let rest = u
            .strip_prefix("nats://")
            .or_else(|| u.strip_prefix("tls://"))
            .ok_or_else(|| {
                invalid(
                    format!("{field}.url"),
                    format!("`{u}` must start with nats:// or tls://"),
                )
            })?;
        if rest.is_empty() {
            return Err(invalid(format!("{field}.url"), "no host"));
        }
    }
    let stream = raw.stream.clone().unwrap_or_else(|| DEFAULT_STREAM.into());
    if stream.is_empty()
        || !stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid(
            format!("{field}.stream"),
            "letters, digits, `_` and `-` only",
        ));
    }
    if raw.token.is_some() && (raw.creds.is_some() || raw.nkey_file.is_some()) {
        return Err(invalid(field, "use one of token, creds and nkey_file"));
    }
    Ok(NatsConfig {
        url,
        stream,
        creds: raw.creds.clone().map(|p| resolve(base, p)),
        token: raw.token.clone(),
        nkey_file: raw.nkey_file.clone().map(|p| resolve(base, p)),
        ca_file: raw.ca_file.clone().map(|p| resolve(base, p)),
    })
}

/// The subjects a stream takes: the template with `{host}` as `*`.
fn stream_subjects(template: &str) -> String {
    template.replace("{host}", "*")
}

fn batch(field: &str, value: Option<usize>) -> Result<usize, ConfigError> {
    match value {
        Some(0) => Err(invalid(field, "must be positive")),
        Some(n) if n > 10_000 => Err(invalid(field, "at most 10000")),
        Some(n) => Ok(n),
        None => Ok(256),
    }
}

fn validate_ship(
    ship: Option<RawShip>,
    base: &Path,
    host: &str,
) -> Result<Option<ShipConfig>, ConfigError> {
    let Some(RawShip { nats: Some(raw) }) = ship else {
        return Ok(None);
    };
    let nats = validate_nats(&raw, "audit.ship.nats", base)?;
    if raw.durable.is_some() {
        return Err(invalid("audit.ship.nats.durable", "is a collector setting"));
    }
    let template = raw
        .subject
        .clone()
        .unwrap_or_else(|| DEFAULT_SUBJECT.into());
    let subject = template.replace("{host}", &subject_token(host));
    if !valid_subject(&subject) || subject.contains(['*', '>']) {
        return Err(invalid(
            "audit.ship.nats.subject",
            format!("`{template}` is not a subject (dot-separated tokens, no wildcards)"),
        ));
    }
    Ok(Some(ShipConfig {
        nats,
        subject,
        stream_subjects: stream_subjects(&template),
        batch: batch("audit.ship.nats.batch", raw.batch)?,
    }))
}

impl CollectorConfig {
    /// Reads and validates a collector config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw: RawCollectorFile =
            serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let c = raw.collector;
        let nats = validate_nats(&c.nats, "collector.nats", base)?;
        let durable = c
            .nats
            .durable
            .clone()
            .unwrap_or_else(|| "leash-collector".into());
        if durable.is_empty()
            || !durable
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "collector.nats.durable",
                "letters, digits, `_` and `-` only",
            ));
        }
        let template = c
            .nats
            .subject
            .clone()
            .unwrap_or_else(|| DEFAULT_SUBJECT.into());
        if !c.postgres.url.starts_with("postgres://")
            && !c.postgres.url.starts_with("postgresql://")
        {
            return Err(invalid(
                "collector.postgres.url",
                "must start with postgres://",
            ));
        }
        Ok(Self {
            nats,
            durable,
            stream_subjects: stream_subjects(&template),
            postgres_url: c.postgres.url,
            admin_listen: parse_addr(
                "collector.admin.listen",
                c.admin.listen.as_deref(),
                "127.0.0.1:9091",
            )?,
            admin_token: admin_token(base, c.admin.token_file.as_deref())?,
            batch: batch("collector.nats.batch", c.nats.batch)?,
        })
    }
}

fn validate_audit(audit: RawAudit, base: &Path, host: &str) -> Result<AuditConfig, ConfigError> {
    let segment_max_bytes = match audit.segment_max_bytes {
        Some(n) if n < 4096 => return Err(invalid("audit.segment_max_bytes", "at least 4096")),
        Some(n) => n,
        None => 64 * 1024 * 1024,
    };
    let retention = match audit.retention_days {
        Some(0) => {
            return Err(invalid(
                "audit.retention_days",
                "at least 1 (leave it out to keep everything)",
            ));
        }
        Some(days) => Some(Duration::from_secs(days * 86_400)),
        None => None,
    };
    Ok(AuditConfig {
        segment_max_bytes,
        retention,
        ship: validate_ship(audit.ship, base, host)?,
        dir: resolve(base, audit.dir.unwrap_or_else(|| DEFAULT_AUDIT_DIR.into())),
        queue_capacity: match audit.queue_capacity {
            Some(0) => return Err(invalid("audit.queue_capacity", "must be positive")),
            Some(n) => n,
            None => 65_536,
        },
        durability: match audit.durability.as_deref() {
            None | Some("batch") => crate::audit::Durability::Batch,
            Some("sync") => crate::audit::Durability::Sync,
            Some(other) => {
                return Err(invalid(
                    "audit.durability",
                    format!("`{other}` is not one of: batch, sync"),
                ));
            }
        },
        overflow: match audit.overflow.as_deref() {
            None | Some("block") => crate::audit::Overflow::Block,
            Some("drop") => crate::audit::Overflow::Drop,
            Some(other) => {
                return Err(invalid(
                    "audit.overflow",
                    format!("`{other}` is not one of: block, drop"),
                ));
            }
        },
    })
}

fn validate_teams(mut teams: Vec<TeamConfig>) -> Result<Vec<TeamConfig>, ConfigError> {
    for (i, t) in teams.iter_mut().enumerate() {
        if t.name.is_empty()
            || !t
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid(
                format!("teams[{i}].name"),
                "1-64 of A-Z a-z 0-9 . _ -",
            ));
        }
        for k in &mut t.key_sha256 {
            *k = k.trim().to_ascii_lowercase();
            if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    format!("teams[{i}].key_sha256"),
                    "a SHA-256 in hex (64 characters), never the key itself",
                ));
            }
        }
    }
    Ok(teams)
}

fn policy_file(raw: Option<&serde_yaml::Value>, base: &Path) -> Option<PathBuf> {
    raw?.as_mapping()
        .filter(|m| m.len() == 1)
        .and_then(|m| m.get("file"))
        .and_then(serde_yaml::Value::as_str)
        .map(|f| resolve(base, f.into()))
}

/// `policy: { file: X }` (relative to the config) or the policy inline.
fn load_policy(
    raw: Option<serde_yaml::Value>,
    base: &Path,
) -> Result<Option<std::sync::Arc<crate::policy::Policy>>, ConfigError> {
    let Some(value) = raw else {
        return Ok(None);
    };
    let file = policy_file(Some(&value), base);
    let policy = match file {
        Some(path) => crate::policy::Policy::load(&path),
        None => crate::policy::Policy::from_value(value, "policy (inline)"),
    }
    .map_err(|e| invalid("policy", e.to_string()))?;
    Ok(Some(std::sync::Arc::new(policy)))
}

fn validate_budgets(raw: Vec<RawBudget>) -> Result<Vec<BudgetConfig>, ConfigError> {
    raw.into_iter()
        .enumerate()
        .map(|(i, b)| {
            let field = format!("budgets[{i}]");
            let period = match b.period.as_str() {
                "day" => Period::Day,
                "week" => Period::Week,
                "month" => Period::Month,
                other => {
                    return Err(invalid(
                        format!("{field}.period"),
                        format!("`{other}` is not one of: day, week, month"),
                    ));
                }
            };
            if !b.limit_usd.is_finite() || b.limit_usd < 0.0 {
                return Err(invalid(format!("{field}.limit_usd"), "must be 0 or more"));
            }
            if b.team.is_none() && b.provider.is_none() && b.model.is_none() {
                return Err(invalid(field, "set at least one of team, provider, model"));
            }
            let name = b.name.unwrap_or_else(|| {
                [
                    b.team.as_deref(),
                    b.provider.as_deref(),
                    b.model.as_deref(),
                    Some(period.as_str()),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("/")
            });
            Ok(BudgetConfig {
                name,
                team: b.team,
                provider: b.provider,
                model: b.model,
                period,
                limit_usd: b.limit_usd,
            })
        })
        .collect()
}

fn validate_alerts(raw: RawAlerts) -> Result<crate::alerts::AlertConfig, ConfigError> {
    let webhook = raw
        .webhook
        .map(|url| {
            UpstreamBase::parse(&url)
                .map_err(|reason| invalid("alerts.webhook", reason))
                .and_then(|_| {
                    url.parse::<http::Uri>()
                        .map_err(|e| invalid("alerts.webhook", e.to_string()))
                })
        })
        .transpose()?;
    Ok(crate::alerts::AlertConfig {
        webhook,
        min_interval: Duration::from_secs(raw.min_interval_secs.unwrap_or(60)),
    })
}

fn validate_pricing(
    raw: BTreeMap<String, crate::pricing::Price>,
) -> Result<crate::pricing::PriceTable, ConfigError> {
    for (model, price) in &raw {
        let values = [
            Some(price.input),
            Some(price.output),
            price.cached_input,
            price.cache_write,
        ];
        if values.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(invalid(
                format!("pricing.{model}"),
                "prices are USD per million tokens, 0 or more",
            ));
        }
    }
    Ok(crate::pricing::PriceTable::with_overrides(raw))
}

fn validate_modules(modules: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let modules =
        modules.unwrap_or_else(|| DEFAULT_MODULES.iter().map(|&s| s.to_owned()).collect());
    for (i, name) in modules.iter().enumerate() {
        if !crate::pipeline::MODULE_NAMES.contains(&name.as_str()) {
            return Err(invalid(
                format!("pipeline.modules[{i}]"),
                format!(
                    "unknown module `{name}` (known: {})",
                    crate::pipeline::MODULE_NAMES.join(", ")
                ),
            ));
        }
        if modules[..i].contains(name) {
            return Err(invalid(
                format!("pipeline.modules[{i}]"),
                format!("`{name}` listed twice"),
            ));
        }
    }
    Ok(modules)
}

fn validate_providers(raw: BTreeMap<String, RawProvider>) -> Result<Providers, ConfigError> {
    let mut providers: BTreeMap<String, Provider> = BUILTIN
        .iter()
        .filter_map(|&(name, kind, url)| {
            let upstream = UpstreamBase::parse(url).ok()?;
            Some((
                name.to_owned(),
                Provider {
                    name: name.to_owned(),
                    kind,
                    upstream,
                },
            ))
        })
        .collect();
    for (name, entry) in raw {
        let field = format!("providers.{name}");
        if !valid_name(&name) {
            return Err(invalid(
                field,
                "provider names use a-z, 0-9, `-` and `_` only",
            ));
        }
        let kind = match (&entry.kind, providers.get(&name)) {
            (Some(k), _) => ProviderKind::from_name(k).ok_or_else(|| {
                invalid(
                    format!("{field}.kind"),
                    format!("unknown kind `{k}` (known: openai, anthropic, google)"),
                )
            })?,
            (None, Some(builtin)) => builtin.kind,
            (None, None) => {
                return Err(invalid(
                    format!("{field}.kind"),
                    "required for a provider that is not built in (openai, anthropic or google)",
                ));
            }
        };
        let upstream = UpstreamBase::parse(&entry.upstream)
            .map_err(|reason| invalid(format!("{field}.upstream"), reason))?;
        providers.insert(
            name.clone(),
            Provider {
                name,
                kind,
                upstream,
            },
        );
    }
    Ok(Providers::new(providers.into_values()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.yaml"), Path::new("/etc/leash"))
    }

    #[test]
    fn embedded_defaults() {
        let c = Config::embedded_default().unwrap();
        assert_eq!(c.gateway.listen.to_string(), DEFAULT_GATEWAY_LISTEN);
        assert_eq!(c.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(c.audit.dir, PathBuf::from(DEFAULT_AUDIT_DIR));
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
    fn unknown_fields_are_refused_with_location() {
        let err = parse("gateway:\n  lisen: x\n").unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }
}
