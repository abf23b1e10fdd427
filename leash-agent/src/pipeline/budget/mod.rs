//! The `budget` module: spend limits per team, provider or model and
//! period. A request whose budget is used up is refused with a
//! provider-shaped 429 and an alert. Spend is counted from audit records, and
//! rebuilt from the audit trail at start, so it survives restarts.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use http::StatusCode;
use serde_json::{Value, json};
use time::{Date, Duration as TimeDuration, OffsetDateTime, Time};

use super::{Exchange, Filtered, Flow, Module, ProxyRequest, Rejection};
use crate::{
    alerts::{AlertKey, Alerter},
    audit::{
        index::{CubeKey, Index, Summary},
        read::Totals,
    },
    field::{FieldError, invalid},
    metrics::Metrics,
    pricing::{Price, PriceTable, is_variant_of},
    provider::ErrorCode,
    record::AuditRecord,
};

pub mod fleet;

pub const NAME: &str = "budget";

/// How long a budget's spend accumulates before it starts over (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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

/// A spend limit for the requests that match all of its set fields. A
/// model matches its dated and suffixed variants too (as prices do).
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    pub name: String,
    pub team: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub period: Period,
    pub limit_usd: f64,
    /// What a model without a price costs under this budget; `None`:
    /// such requests are refused (a budget never lets a call be free).
    pub unpriced_price: Option<Price>,
}

/// A `budgets[]` entry as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    name: Option<String>,
    team: Option<String>,
    provider: Option<String>,
    model: Option<String>,
    period: Period,
    limit_usd: f64,
    unpriced_price: Option<Price>,
}

impl BudgetConfig {
    /// The `budgets` section.
    pub fn validate_all(raw: Vec<RawBudget>) -> Result<Vec<Self>, FieldError> {
        raw.into_iter()
            .enumerate()
            .map(|(i, b)| Self::validate(i, b))
            .collect()
    }

    fn validate(i: usize, b: RawBudget) -> Result<Self, FieldError> {
        let field = format!("budgets[{i}]");
        let period = b.period;
        if !b.limit_usd.is_finite() || b.limit_usd < 0.0 {
            return Err(invalid(format!("{field}.limit_usd"), "must be 0 or more"));
        }
        if let Some(p) = &b.unpriced_price {
            crate::pricing::validate(std::iter::once(("unpriced".to_owned(), *p)).collect())
                .map_err(|_| {
                    invalid(
                        format!("{field}.unpriced_price"),
                        "prices are USD per million tokens, 0 or more",
                    )
                })?;
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
        Ok(Self {
            name,
            team: b.team,
            provider: b.provider,
            model: b.model,
            period,
            limit_usd: b.limit_usd,
            unpriced_price: b.unpriced_price,
        })
    }
}

/// The start of the period that contains `now` (UTC).
pub fn period_start(period: Period, now: OffsetDateTime) -> OffsetDateTime {
    let date = now.date();
    let day = match period {
        Period::Day => date,
        Period::Week => {
            let back = i64::from(date.weekday().number_days_from_monday());
            date - TimeDuration::days(back)
        }
        Period::Month => Date::from_calendar_date(date.year(), date.month(), 1).unwrap_or(date),
    };
    day.with_time(Time::MIDNIGHT).assume_utc()
}

struct Spend {
    since: OffsetDateTime,
    usd: f64,
}

pub struct BudgetModule {
    budgets: Vec<BudgetConfig>,
    spend: Mutex<Vec<Spend>>,
    prices: Arc<PriceTable>,
    alerts: Alerter,
    metrics: Arc<Metrics>,
    /// The spend every host shares (`fleet_budgets`).
    fleet: Option<Arc<fleet::FleetStore>>,
}

/// Output tokens reserved for a request that sets no maximum.
const DEFAULT_OUTPUT_ESTIMATE: u64 = 4096;

/// A request's reservations in the fleet store, settled with its cost.
#[derive(Clone)]
struct Holds(Vec<Hold>);

#[derive(Clone)]
struct Hold {
    budget: usize,
    key: String,
    reserved: fleet::Reserved,
    estimate: f64,
}

fn matches(b: &BudgetConfig, provider: &str, model: Option<&str>, team: Option<&str>) -> bool {
    b.team.as_deref().is_none_or(|t| team == Some(t))
        && b.provider.as_deref().is_none_or(|p| p == provider)
        && b.model
            .as_deref()
            .is_none_or(|m| model.is_some_and(|model| is_variant_of(model, m)))
}

/// Spend in one hour (a cell of the audit index's cube).
struct Charge<'a> {
    hour: OffsetDateTime,
    provider: &'a str,
    model: Option<&'a str>,
    team: Option<&'a str>,
    usd: f64,
}

/// The audit index's cube as charges (periods start at midnight, so an
/// hour is either wholly in a period or wholly before it).
fn charges(cube: &BTreeMap<CubeKey, Totals>) -> impl Iterator<Item = Charge<'_>> {
    cube.iter().filter_map(|(k, t)| {
        let hour = OffsetDateTime::parse(
            &format!("{}:00:00Z", k.hour),
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?;
        Some(Charge {
            hour,
            provider: &k.provider,
            model: k.model.as_deref(),
            team: k.team.as_deref(),
            usd: t.cost_usd,
        })
    })
}

/// What each budget has spent in its current period.
fn spent<'a>(
    budgets: &[BudgetConfig],
    charges: impl Iterator<Item = Charge<'a>>,
    now: OffsetDateTime,
) -> Vec<Spend> {
    let mut spend: Vec<Spend> = budgets
        .iter()
        .map(|b| Spend {
            since: period_start(b.period, now),
            usd: 0.0,
        })
        .collect();
    for c in charges {
        for (b, s) in budgets.iter().zip(spend.iter_mut()) {
            if c.hour >= s.since && matches(b, c.provider, c.model, c.team) {
                s.usd += c.usd;
            }
        }
    }
    spend
}

/// Each budget with its limit, spend this period and what remains (the
/// console's spend page), from the audit index's cube.
pub fn report(budgets: &[BudgetConfig], cube: &BTreeMap<CubeKey, Totals>) -> Vec<Value> {
    let spend = spent(budgets, charges(cube), OffsetDateTime::now_utc());
    budgets
        .iter()
        .zip(spend)
        .map(|(b, s)| {
            json!({
                "name": b.name,
                "team": b.team,
                "provider": b.provider,
                "model": b.model,
                "period": b.period.as_str(),
                "since": s.since.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                "limit_usd": b.limit_usd,
                "spent_usd": s.usd,
                "remaining_usd": b.limit_usd - s.usd,
            })
        })
        .collect()
}

impl BudgetModule {
    /// Budgets with their spend so far this period, read from the audit
    /// trail in `audit_dir`.
    pub fn new(
        budgets: Vec<BudgetConfig>,
        prices: Arc<PriceTable>,
        audit_dir: &Path,
        alerts: Alerter,
        metrics: Arc<Metrics>,
        fleet: Option<Arc<fleet::FleetStore>>,
    ) -> Self {
        // From the audit index: a restart reads the per-segment summaries,
        // not the whole trail.
        let summary = if budgets.is_empty() {
            Summary::default()
        } else {
            Index::new(audit_dir).summary(None).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "budgets: cannot read the audit trail; spend starts at 0");
                Summary::default()
            })
        };
        let spend = spent(&budgets, charges(&summary.cube), OffsetDateTime::now_utc());
        for (b, s) in budgets.iter().zip(&spend) {
            metrics.budget_remaining(&b.name, b.limit_usd, b.limit_usd - s.usd);
        }
        Self {
            budgets,
            spend: Mutex::new(spend),
            prices,
            alerts,
            metrics,
            fleet,
        }
    }

    /// The tokens a request may use at most, as far as can be told before
    /// it is answered: its body's bytes / 3 as input (a token is about four
    /// bytes of text: this errs high) and its output maximum (`max_tokens`
    /// and the like, read as the telemetry module reads it; else 4096).
    fn tokens(ex: &Exchange, body: &[u8]) -> (f64, f64) {
        let output = crate::telemetry::RequestParams::read(ex.provider.kind, body)
            .max_tokens
            .and_then(|t| u64::try_from(t).ok())
            .unwrap_or(DEFAULT_OUTPUT_ESTIMATE);
        #[allow(clippy::cast_precision_loss, reason = "token counts far below 2^52")]
        let tokens = ((body.len() as u64 / 3 + 1) as f64, output as f64);
        tokens
    }

    /// What `tokens` cost under budget `b`: at the model's price or the
    /// budget's fallback price.
    fn estimate(&self, b: &BudgetConfig, ex: &Exchange, (input, output): (f64, f64)) -> f64 {
        let price = ex
            .model
            .as_deref()
            .and_then(|m| self.prices.lookup(m).copied())
            .or(b.unpriced_price);
        price.map_or(0.0, |p| (p.input * input + p.output * output) / 1e6)
    }

    /// Reserves the request's estimated cost in the fleet store for every
    /// budget over it; a budget the fleet has spent (or, with `deny`, an
    /// unreachable store) refuses it, and what was reserved is given back.
    async fn reserve(
        &self,
        fleet: &Arc<fleet::FleetStore>,
        ex: &mut Exchange,
        body: &[u8],
    ) -> Option<Rejection> {
        let now = OffsetDateTime::now_utc();
        let mut holds = Vec::new();
        // Read once, when a budget is over the request.
        let mut tokens = None;
        let refusal = 'budgets: {
            for (i, b) in self.budgets.iter().enumerate() {
                if !matches(
                    b,
                    &ex.provider.name,
                    ex.model.as_deref(),
                    ex.caller.team.as_deref(),
                ) {
                    continue;
                }
                let start = period_start(b.period, now).date().to_string();
                let key = fleet::key(&b.name, &start);
                let tokens = *tokens.get_or_insert_with(|| Self::tokens(ex, body));
                let estimate = self.estimate(b, ex, tokens);
                match fleet.reserve(&key, b.limit_usd, estimate).await {
                    Ok(fleet::Reserved::Spent(spent)) => {
                        self.exceeded(b, ex, spent, now);
                        break 'budgets Some(Rejection {
                            status: StatusCode::TOO_MANY_REQUESTS,
                            code: ErrorCode::BudgetExceeded,
                            message: format!(
                                "leash: budget `{}` is used up across the fleet: ${spent:.4} of ${:.4} this {}",
                                b.name,
                                b.limit_usd,
                                b.period.as_str()
                            ),
                        });
                    }
                    Ok(reserved) => {
                        if let fleet::Reserved::Admitted(spent) = reserved {
                            self.metrics.budget_remaining(
                                &b.name,
                                b.limit_usd,
                                b.limit_usd - spent,
                            );
                        }
                        holds.push(Hold {
                            budget: i,
                            key,
                            reserved,
                            estimate,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, budget = b.name, "fleet budget store unreachable: refused (fleet_budgets.on_unreachable: deny)");
                        break 'budgets Some(Rejection {
                            status: StatusCode::TOO_MANY_REQUESTS,
                            code: ErrorCode::BudgetExceeded,
                            message: format!(
                                "leash: budget `{}` cannot be checked: the fleet budget store is unreachable",
                                b.name
                            ),
                        });
                    }
                }
            }
            None
        };
        if refusal.is_some() {
            for h in holds {
                fleet.settle(&h.key, h.reserved, h.estimate, 0.0);
            }
        } else if !holds.is_empty() {
            ex.ext.insert(Holds(holds));
        }
        refusal
    }

    /// Alerts that budget `b` is used up (`spent` of its limit).
    fn exceeded(&self, b: &BudgetConfig, ex: &Exchange, spent: f64, now: OffsetDateTime) {
        let alert: Value = json!({
            "type": "budget_exceeded",
            "budget": b.name,
            "team": b.team,
            "provider": b.provider,
            "model": b.model,
            "period": b.period.as_str(),
            "limit_usd": b.limit_usd,
            "spent_usd": spent,
            "request_id": ex.id,
            "ts": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        });
        self.alerts.fire(
            &AlertKey {
                kind: "budget",
                name: &b.name,
                team: ex.caller.team.as_deref(),
            },
            alert,
        );
    }

    /// A budget over `ex` that cannot price its model, if any: such a call
    /// would otherwise be free.
    fn unpriceable(&self, ex: &Exchange) -> Option<&BudgetConfig> {
        let model = ex.model.as_deref()?;
        if self.prices.lookup(model).is_some() {
            return None;
        }
        self.budgets.iter().find(|b| {
            b.unpriced_price.is_none()
                && matches(b, &ex.provider.name, Some(model), ex.caller.team.as_deref())
        })
    }
}

impl Module for BudgetModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn request_filter<'a>(
        &'a self,
        ex: &'a mut Exchange,
        req: &'a mut ProxyRequest,
    ) -> Filtered<'a> {
        if let Some(b) = self.unpriceable(ex) {
            return Flow::Reject(Rejection {
                status: StatusCode::FORBIDDEN,
                code: ErrorCode::BudgetExceeded,
                message: format!(
                    "leash: model `{}` has no price, so budget `{}` cannot account for it; \
                     add it to `pricing` or give the budget an `unpriced_price`",
                    ex.model.as_deref().unwrap_or_default(),
                    b.name
                ),
            })
            .into();
        }
        if let Some(rejection) = self.local_check(ex) {
            return Flow::Reject(rejection).into();
        }
        let Some(fleet) = &self.fleet else {
            return Flow::Continue.into();
        };
        // Only a budget shared through the fleet store waits (for its
        // reservation).
        Filtered::Wait(Box::pin(async move {
            Ok(match self.reserve(fleet, ex, &req.body).await {
                Some(rejection) => Flow::Reject(rejection),
                None => Flow::Continue,
            })
        }))
    }

    fn logging(&self, ex: &Exchange, record: &mut AuditRecord) {
        self.charge(ex, record);
    }
}

impl BudgetModule {
    /// This host's own spend against each budget (all of it without
    /// `fleet_budgets`).
    fn local_check(&self, ex: &Exchange) -> Option<Rejection> {
        let now = OffsetDateTime::now_utc();
        let mut spend = self.spend.lock().unwrap_or_else(PoisonError::into_inner);
        for (b, s) in self.budgets.iter().zip(spend.iter_mut()) {
            let start = period_start(b.period, now);
            if start > s.since {
                // A new period: the budget starts over.
                *s = Spend {
                    since: start,
                    usd: 0.0,
                };
                self.metrics
                    .budget_remaining(&b.name, b.limit_usd, b.limit_usd);
            }
            if !matches(
                b,
                &ex.provider.name,
                ex.model.as_deref(),
                ex.caller.team.as_deref(),
            ) || s.usd < b.limit_usd
            {
                continue;
            }
            self.exceeded(b, ex, s.usd, now);
            return Some(Rejection {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: ErrorCode::BudgetExceeded,
                message: format!(
                    "leash: budget `{}` is used up: ${:.4} of ${:.4} this {}",
                    b.name,
                    s.usd,
                    b.limit_usd,
                    b.period.as_str()
                ),
            });
        }
        None
    }

    /// Charges the exchange's cost to this host's spend, and settles its
    /// fleet reservations with it.
    fn charge(&self, ex: &Exchange, record: &mut AuditRecord) {
        let mut spend = self.spend.lock().unwrap_or_else(PoisonError::into_inner);
        for (b, s) in self.budgets.iter().zip(spend.iter_mut()) {
            if !matches(
                b,
                &ex.provider.name,
                ex.model.as_deref(),
                ex.caller.team.as_deref(),
            ) {
                continue;
            }
            // A model without a price is charged at the budget's fallback
            // price, and the record says what it cost.
            if record.cost_usd.is_none()
                && let (Some(price), Some(usage)) = (b.unpriced_price, record.usage)
            {
                record.cost_usd = Some(price.cost(ex.provider.kind, &usage));
            }
            if let Some(cost) = record.cost_usd {
                s.usd += cost;
                // With fleet budgets the gauge shows the fleet's spend.
                if self.fleet.is_none() {
                    self.metrics
                        .budget_remaining(&b.name, b.limit_usd, b.limit_usd - s.usd);
                }
            }
        }
        drop(spend);
        let (Some(fleet), Some(Holds(holds))) = (&self.fleet, ex.ext.get::<Holds>()) else {
            return;
        };
        let cost = record.cost_usd.unwrap_or(0.0);
        for h in holds {
            tracing::trace!(
                budget = h.budget,
                key = h.key,
                estimate = h.estimate,
                cost,
                "fleet budget: settling"
            );
            fleet.settle(&h.key, h.reserved, h.estimate, cost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn period_starts() {
        let t = datetime!(2026-11-26 15:30 UTC); // a Thursday
        assert_eq!(period_start(Period::Day, t), datetime!(2026-11-26 0:00 UTC));
        assert_eq!(
            period_start(Period::Week, t),
            datetime!(2026-11-23 0:00 UTC)
        );
        assert_eq!(
            period_start(Period::Month, t),
            datetime!(2026-11-01 0:00 UTC)
        );
    }
}
