//! Routes: a name the unified API's `model` may use for a list of targets
//! (provider and model), tried in an order the strategy picks, with
//! retries on connection errors, timeouts, 429 and 5xx, a per-route retry
//! budget, jittered backoff, per-target timeouts and a circuit breaker.
//!
//! `routes:` is validated against the providers; the live state (breakers,
//! latency averages, the budget window) belongs to each route.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::{
    credentials::{Credential, Credentials},
    field::{FieldError, invalid, valid_name},
    provider::Providers,
};

/// Attempts per request when a route does not say.
const MAX_DEFAULT_ATTEMPTS: usize = 5;
/// The longest a backoff grows.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The retry budget's window.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// Weight of the newest sample in a target's latency average.
const EWMA_ALPHA: f64 = 0.3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// In the order listed.
    Fallback,
    /// The first target drawn by weight, the rest in the order listed.
    Weighted,
    /// The lowest average time to the answer's headers first (untried first).
    LeastLatency,
}

/// `routes.<name>` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    strategy: Option<Strategy>,
    targets: Vec<RawTarget>,
    max_attempts: Option<usize>,
    backoff_ms: Option<u64>,
    retry_budget: Option<RawBudget>,
    breaker: Option<RawBreaker>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    provider: String,
    model: String,
    weight: Option<u32>,
    timeout_ms: Option<u64>,
    credential: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    ratio: Option<f64>,
    min_per_sec: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    failures: Option<u32>,
    cooldown_secs: Option<u64>,
}

/// Every configured route, by name.
#[derive(Debug, Clone, Default)]
pub struct Routes(Arc<BTreeMap<String, Arc<Route>>>);

impl Routes {
    pub fn validate(
        raw: BTreeMap<String, RawRoute>,
        providers: &Providers,
        credentials: &Credentials,
    ) -> Result<Self, FieldError> {
        let mut routes = BTreeMap::new();
        for (name, raw) in raw {
            let route = Route::validate(&name, raw, providers, credentials)?;
            routes.insert(name, Arc::new(route));
        }
        Ok(Self(Arc::new(routes)))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Route>> {
        self.0.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub strategy: Strategy,
    pub targets: Vec<Target>,
    pub max_attempts: usize,
    backoff: Duration,
    breaker_failures: u32,
    cooldown: Duration,
    budget_ratio: f64,
    budget_min: u32,
    budget: Mutex<BudgetWindow>,
}

#[derive(Debug)]
pub struct Target {
    pub provider: String,
    pub model: String,
    pub weight: u32,
    pub timeout: Duration,
    /// The credential Leash sends instead of the client's.
    pub credential: Option<Credential>,
    health: Mutex<Health>,
}

impl Target {
    fn validate(
        t: RawTarget,
        tf: &str,
        providers: &Providers,
        credentials: &Credentials,
    ) -> Result<Self, FieldError> {
        if providers.get(&t.provider).is_none() {
            let known = providers.names().collect::<Vec<_>>().join(", ");
            return Err(invalid(
                format!("{tf}.provider"),
                format!("unknown provider `{}` (known: {known})", t.provider),
            ));
        }
        if t.model.is_empty() {
            return Err(invalid(format!("{tf}.model"), "must not be empty"));
        }
        let weight = crate::field::positive(&format!("{tf}.weight"), t.weight, 1)?;
        let timeout_ms =
            crate::field::positive(&format!("{tf}.timeout_ms"), t.timeout_ms, 120_000)?;
        let credential = match &t.credential {
            None => None,
            Some(c) => Some(credentials.get(c).cloned().ok_or_else(|| {
                let known = credentials.names().collect::<Vec<_>>().join(", ");
                invalid(
                    format!("{tf}.credential"),
                    format!("unknown credential `{c}` (known: {known})"),
                )
            })?),
        };
        Ok(Self {
            provider: t.provider,
            model: t.model,
            weight,
            timeout: Duration::from_millis(timeout_ms),
            credential,
            health: Mutex::default(),
        })
    }

    /// `provider/model`, as metrics and the audit record name it.
    pub fn label(&self) -> String {
        format!("{}/{}", self.provider, self.model)
    }
}

#[derive(Debug, Default)]
struct Health {
    failures: u32,
    open_until: Option<Instant>,
    /// Average time to the answer's headers, in ms (`None`: never answered).
    ewma_ms: Option<f64>,
}

#[derive(Debug)]
struct BudgetWindow {
    start: Instant,
    requests: u32,
    retries: u32,
}

/// How an attempt at a target went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer that is not retried (success, or a 4xx the client caused).
    Answered,
    /// Connection error, timeout, 429 or 5xx.
    Failed,
}

impl Route {
    fn validate(
        name: &str,
        raw: RawRoute,
        providers: &Providers,
        credentials: &Credentials,
    ) -> Result<Self, FieldError> {
        let field = format!("routes.{name}");
        if !valid_name(name) {
            return Err(invalid(
                &field,
                "route names use a-z, 0-9, `-` and `_` only",
            ));
        }
        if providers.get(name).is_some() || crate::provider::RESERVED_NAMES.contains(&name) {
            return Err(invalid(
                &field,
                "a route may not take a provider's name or a path of the unified API (chat, embeddings, unified)",
            ));
        }
        if raw.targets.is_empty() {
            return Err(invalid(
                format!("{field}.targets"),
                "needs at least one target",
            ));
        }
        let targets = raw
            .targets
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                Target::validate(t, &format!("{field}.targets[{i}]"), providers, credentials)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // One client key cannot be valid at two providers, and Leash does
        // not send a key meant for one provider to another.
        let mixed = targets.iter().any(|t| t.provider != targets[0].provider);
        if let Some(i) = targets.iter().position(|t| mixed && t.credential.is_none()) {
            return Err(invalid(
                format!("{field}.targets[{i}].credential"),
                "a route across several providers needs a credential on every target (the client's key is meant for one provider only)",
            ));
        }
        let max_attempts = crate::field::positive(
            &format!("{field}.max_attempts"),
            raw.max_attempts,
            targets.len().min(MAX_DEFAULT_ATTEMPTS),
        )?;
        let budget = raw.retry_budget.unwrap_or(RawBudget {
            ratio: None,
            min_per_sec: None,
        });
        let ratio = budget.ratio.unwrap_or(0.2);
        if !(0.0..=10.0).contains(&ratio) {
            return Err(invalid(
                format!("{field}.retry_budget.ratio"),
                "must be between 0 and 10 (retries per request)",
            ));
        }
        let breaker = raw.breaker.unwrap_or(RawBreaker {
            failures: None,
            cooldown_secs: None,
        });
        Ok(Self {
            name: name.to_owned(),
            strategy: raw.strategy.unwrap_or(Strategy::Fallback),
            targets,
            max_attempts,
            backoff: Duration::from_millis(raw.backoff_ms.unwrap_or(50)),
            breaker_failures: crate::field::positive(
                &format!("{field}.breaker.failures"),
                breaker.failures,
                5,
            )?,
            cooldown: crate::field::secs(
                &format!("{field}.breaker.cooldown_secs"),
                breaker.cooldown_secs,
                30,
            )?,
            budget_ratio: ratio,
            budget_min: budget.min_per_sec.unwrap_or(10),
            budget: Mutex::new(BudgetWindow {
                start: Instant::now(),
                requests: 0,
                retries: 0,
            }),
        })
    }

    fn health(&self, i: usize) -> std::sync::MutexGuard<'_, Health> {
        self.targets[i]
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The targets to try for one request, in order, and those skipped
    /// because their breaker is open. Counts the request in the budget.
    pub fn plan(&self) -> (Vec<usize>, Vec<usize>) {
        self.window(|w| w.requests += 1);
        let now = Instant::now();
        let (mut open, mut skipped) = (Vec::new(), Vec::new());
        for i in 0..self.targets.len() {
            if self.health(i).open_until.is_some_and(|t| t > now) {
                skipped.push(i);
            } else {
                open.push(i);
            }
        }
        match self.strategy {
            Strategy::Fallback => {}
            Strategy::Weighted => {
                let total: u64 = open
                    .iter()
                    .map(|&i| u64::from(self.targets[i].weight))
                    .sum();
                if total > 0 {
                    let mut draw = fastrand::u64(0..total);
                    if let Some(pos) = open.iter().position(|&i| {
                        let w = u64::from(self.targets[i].weight);
                        if draw < w {
                            true
                        } else {
                            draw -= w;
                            false
                        }
                    }) {
                        let first = open.remove(pos);
                        open.insert(0, first);
                    }
                }
            }
            Strategy::LeastLatency => {
                let key = |i: &usize| self.health(*i).ewma_ms.unwrap_or(-1.0);
                open.sort_by(|a, b| key(a).total_cmp(&key(b)));
            }
        }
        open.truncate(self.max_attempts);
        (open, skipped)
    }

    /// Whether one more retry fits the budget (and takes it).
    pub fn take_retry(&self) -> bool {
        let (ratio, min) = (self.budget_ratio, self.budget_min);
        self.window(|w| {
            let window_secs = u32::try_from(BUDGET_WINDOW.as_secs()).unwrap_or(10);
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a ratio of a bounded count"
            )]
            let by_ratio = (f64::from(w.requests) * ratio) as u32;
            let allowed = by_ratio.max(min.saturating_mul(window_secs));
            if w.retries < allowed {
                w.retries += 1;
                true
            } else {
                false
            }
        })
    }

    fn window<T>(&self, f: impl FnOnce(&mut BudgetWindow) -> T) -> T {
        let mut w = self.budget.lock().unwrap_or_else(PoisonError::into_inner);
        if w.start.elapsed() >= BUDGET_WINDOW {
            *w = BudgetWindow {
                start: Instant::now(),
                requests: 0,
                retries: 0,
            };
        }
        f(&mut w)
    }

    /// The wait before retry number `n` (1 for the first retry): the
    /// backoff doubled per retry, ×0.5–1.5 at random, at most 2 s.
    pub fn backoff(&self, n: u32) -> Duration {
        let base = self
            .backoff
            .saturating_mul(1 << n.saturating_sub(1).min(10))
            .min(MAX_BACKOFF);
        base.mul_f64(0.5 + fastrand::f64())
    }

    /// Records how an attempt at target `i` went, after `elapsed`.
    pub fn record(&self, i: usize, outcome: Outcome, elapsed: Duration) {
        let mut h = self.health(i);
        match outcome {
            Outcome::Answered => {
                h.failures = 0;
                h.open_until = None;
                let ms = elapsed.as_secs_f64() * 1e3;
                h.ewma_ms = Some(h.ewma_ms.map_or(ms, |e| e + EWMA_ALPHA * (ms - e)));
            }
            Outcome::Failed => {
                h.failures = h.failures.saturating_add(1);
                if h.failures >= self.breaker_failures {
                    h.open_until = Some(Instant::now() + self.cooldown);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn route(yaml: &str) -> Arc<Route> {
        let raw: BTreeMap<String, RawRoute> = crate::field::from_yaml(yaml).unwrap();
        let providers = Providers::validate(BTreeMap::new()).unwrap();
        Arc::clone(
            Routes::validate(raw, &providers, &Credentials::default())
                .unwrap()
                .get("r")
                .unwrap(),
        )
    }

    #[test]
    fn weighted_draws_by_weight_and_falls_back_to_the_rest() {
        let r = route(
            "r: { strategy: weighted, targets: [{provider: openai, model: a, weight: 3}, {provider: openai, model: b}] }",
        );
        let firsts = (0..4000).filter(|_| r.plan().0[0] == 0).count();
        assert!((2800..3200).contains(&firsts), "{firsts}");
        assert_eq!(r.plan().0.len(), 2);
    }

    #[test]
    fn a_breaker_opens_after_failures_and_closes_on_success() {
        let r = route(
            "r: { targets: [{provider: openai, model: a}, {provider: openai, model: b}], breaker: {failures: 2, cooldown_secs: 60} }",
        );
        r.record(0, Outcome::Failed, Duration::ZERO);
        assert_eq!(r.plan().0, vec![0, 1]);
        r.record(0, Outcome::Failed, Duration::ZERO);
        assert_eq!(r.plan(), (vec![1], vec![0]));
        r.health(0).open_until = Some(Instant::now());
        assert_eq!(r.plan().0, vec![0, 1], "half-open after the cool-down");
        r.record(0, Outcome::Answered, Duration::ZERO);
        assert_eq!(r.health(0).failures, 0);
    }

    #[test]
    fn least_latency_prefers_untried_then_fastest() {
        let r = route(
            "r: { strategy: least-latency, targets: [{provider: openai, model: a}, {provider: openai, model: b}] }",
        );
        r.record(0, Outcome::Answered, Duration::from_millis(50));
        assert_eq!(r.plan().0, vec![1, 0]);
        r.record(1, Outcome::Answered, Duration::from_millis(80));
        assert_eq!(r.plan().0, vec![0, 1]);
    }

    #[test]
    fn unknown_providers_and_empty_routes_are_refused() {
        let providers = Providers::validate(BTreeMap::new()).unwrap();
        let raw: BTreeMap<String, RawRoute> =
            crate::field::from_yaml("r: { targets: [{provider: nope, model: a}] }").unwrap();
        let none = Credentials::default();
        let err = Routes::validate(raw, &providers, &none).unwrap_err();
        assert_eq!(err.field, "routes.r.targets[0].provider");
        let raw: BTreeMap<String, RawRoute> =
            crate::field::from_yaml("r: { targets: [] }").unwrap();
        assert!(Routes::validate(raw, &providers, &none).is_err());
        // Across providers, every target needs a credential of its own.
        let raw: BTreeMap<String, RawRoute> = crate::field::from_yaml(
            "r: { targets: [{provider: openai, model: a}, {provider: google, model: b}] }",
        )
        .unwrap();
        let err = Routes::validate(raw, &providers, &none).unwrap_err();
        assert_eq!(err.field, "routes.r.targets[0].credential");
    }

    #[test]
    fn the_retry_budget_bounds_retries() {
        let r = route(
            "r: { targets: [{provider: openai, model: a}], retry_budget: {ratio: 0.5, min_per_sec: 0} }",
        );
        for _ in 0..4 {
            r.plan();
        }
        assert!(r.take_retry() && r.take_retry());
        assert!(!r.take_retry());
    }
}
