//! The pipeline module registry: which modules exist, the `pipeline`
//! section that lists them in order, and how each is built from its parts.
//! It sits above the modules (it names them all) and below the composition
//! root, which hands it what they need.

use std::{path::Path, sync::Arc};

use serde::Deserialize;

use crate::{
    alerts::Alerter,
    field::{FieldError, invalid},
    keys::{self, AuthConfig},
    metrics::Metrics,
    pipeline::{
        Module,
        budget::{self, BudgetConfig},
        team::{self, TeamConfig},
        usage,
    },
    policy::{self, PolicyHandle},
    pricing::PriceTable,
};

/// Names accepted in `pipeline.modules`.
pub const NAMES: &[&str] = &[
    crate::telemetry::NAME,
    crate::capture::NAME,
    team::NAME,
    keys::NAME,
    policy::NAME,
    usage::NAME,
    budget::NAME,
];
/// Pipeline modules run when the config names none.
pub const DEFAULT_MODULES: &[&str] = &[team::NAME, policy::NAME, usage::NAME, budget::NAME];

/// The `pipeline` section: module names, in the order their phases run.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub modules: Vec<String>,
}

/// `pipeline` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    modules: Option<Vec<String>>,
}

impl PipelineConfig {
    /// With virtual keys on, the `keys` module runs right after `team` (a
    /// key names the team, and is the strongest evidence of it) when the
    /// list does not place it.
    #[must_use]
    pub fn with_keys(mut self) -> Self {
        if !self.modules.iter().any(|m| m == keys::NAME) {
            let at = self
                .modules
                .iter()
                .position(|m| m == team::NAME)
                .map_or(0, |i| i + 1);
            self.modules.insert(at, keys::NAME.to_owned());
        }
        self
    }

    /// With content capture on, the `capture` module runs first (it sees
    /// the request as the client sent it) when the list does not place it.
    #[must_use]
    pub fn with_capture(mut self) -> Self {
        if !self.modules.iter().any(|m| m == crate::capture::NAME) {
            self.modules.insert(0, crate::capture::NAME.to_owned());
        }
        self
    }

    /// With OTLP export on, the `telemetry` module runs first (it decides
    /// sampling before anything answers) when the list does not place it.
    #[must_use]
    pub fn with_telemetry(mut self) -> Self {
        if !self.modules.iter().any(|m| m == crate::telemetry::NAME) {
            self.modules.insert(0, crate::telemetry::NAME.to_owned());
        }
        self
    }

    pub fn validate(raw: RawPipeline) -> Result<Self, FieldError> {
        let modules = raw
            .modules
            .unwrap_or_else(|| DEFAULT_MODULES.iter().map(|&s| s.to_owned()).collect());
        for (i, name) in modules.iter().enumerate() {
            if !NAMES.contains(&name.as_str()) {
                return Err(invalid(
                    format!("pipeline.modules[{i}]"),
                    format!("unknown module `{name}` (known: {})", NAMES.join(", ")),
                ));
            }
            if modules[..i].contains(name) {
                return Err(invalid(
                    format!("pipeline.modules[{i}]"),
                    format!("`{name}` listed twice"),
                ));
            }
        }
        Ok(Self { modules })
    }
}

/// Everything a module may need to be built.
pub struct Parts<'a> {
    pub metrics: &'a Arc<Metrics>,
    pub alerts: &'a Alerter,
    pub policy: &'a Arc<PolicyHandle>,
    pub prices: &'a Arc<PriceTable>,
    pub budgets: &'a [BudgetConfig],
    /// The spend shared by every host (`fleet_budgets`).
    pub fleet_budgets: Option<Arc<budget::fleet::FleetStore>>,
    pub teams: &'a [TeamConfig],
    /// Where the audit trail is (budgets rebuild their spend from it).
    pub audit_dir: &'a Path,
    pub auth: &'a AuthConfig,
    /// The key registry the `keys` module checks against (one is opened
    /// when none is given: `leash config check`).
    pub keys: Option<&'a Arc<keys::registry::Registry>>,
    /// Content capture and its store (for the `capture` module).
    pub capture: Option<&'a Arc<crate::capture::Capture>>,
    /// The OTLP exporter's queue (for the `telemetry` module).
    pub telemetry: Option<&'a Arc<crate::telemetry::Telemetry>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("pipeline module `{0}` is not known")]
    Unknown(String),
    #[error("auth: {0}")]
    Keys(#[from] keys::store::StoreError),
    #[error("pipeline module `capture` is listed but the `capture` section captures nothing")]
    CaptureOff,
    #[error("pipeline module `telemetry` is listed but `telemetry.otlp` is not set")]
    TelemetryOff,
    #[error("capture.dir: {0}")]
    CaptureDir(#[from] std::io::Error),
}

/// The module called `name`.
pub fn build(name: &str, parts: &Parts<'_>) -> Result<Box<dyn Module>, BuildError> {
    match name {
        policy::NAME => Ok(Box::new(policy::PolicyModule::new(
            Arc::clone(parts.policy),
            parts.alerts.clone(),
        ))),
        budget::NAME => Ok(Box::new(budget::BudgetModule::new(
            parts.budgets.to_vec(),
            Arc::clone(parts.prices),
            parts.audit_dir,
            parts.alerts.clone(),
            Arc::clone(parts.metrics),
            parts.fleet_budgets.clone(),
        ))),
        team::NAME => Ok(Box::new(team::TeamModule::new(parts.teams.to_vec()))),
        usage::NAME => Ok(Box::new(usage::UsageModule::new(Arc::clone(parts.prices)))),
        keys::NAME => {
            let registry = match parts.keys {
                Some(r) => Arc::clone(r),
                None => Arc::new(keys::registry::Registry::open(parts.auth)?),
            };
            Ok(Box::new(keys::KeysModule::new(
                parts.auth,
                registry,
                Arc::clone(parts.prices),
            )))
        }
        crate::capture::NAME => match parts.capture {
            Some(c) => Ok(Box::new(crate::capture::CaptureModule::new(
                Arc::clone(c),
                Arc::clone(parts.policy),
            ))),
            None => Err(BuildError::CaptureOff),
        },
        crate::telemetry::NAME => match parts.telemetry {
            Some(t) => Ok(Box::new(crate::telemetry::TelemetryModule::new(
                Arc::clone(t),
                Arc::clone(parts.policy),
            ))),
            None => Err(BuildError::TelemetryOff),
        },
        other => Err(BuildError::Unknown(other.to_owned())),
    }
}

/// The modules listed in `pipeline`, built in order.
pub fn build_all(
    pipeline: &PipelineConfig,
    parts: &Parts<'_>,
) -> Result<Vec<Box<dyn Module>>, BuildError> {
    pipeline
        .modules
        .iter()
        .map(|name| build(name, parts))
        .collect()
}
