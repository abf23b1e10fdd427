//! Model prices (USD per million tokens) and the cost of a call. Built-in
//! list prices can be overridden and extended with `pricing:` in the config;
//! an unknown model has no cost (never a guess).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{
    field::{FieldError, invalid},
    provider::ProviderKind,
    record::Usage,
};

/// Whether `model` is `base` or a dated or suffixed variant of it
/// (`gpt-4o-2024-08-06`, `gpt-4o-mini` of `gpt-4o`; `models/` prefixes
/// aside): how prices and budgets name models.
pub fn is_variant_of(model: &str, base: &str) -> bool {
    let model = model.strip_prefix("models/").unwrap_or(model);
    let base = base.strip_prefix("models/").unwrap_or(base);
    model == base
        || (model.len() > base.len()
            && model.starts_with(base)
            && model.as_bytes()[base.len()] == b'-')
}

/// The `pricing` section: prices per model, on top of the built-in table.
pub type Prices = BTreeMap<String, Price>;

/// Checks the `pricing` section: every price finite and 0 or more.
pub fn validate(raw: Prices) -> Result<Prices, FieldError> {
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
    Ok(raw)
}

/// Prices per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Cached (cache-read) input; defaults to `input`.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Cache writes (Anthropic); defaults to 1.25 × `input`.
    #[serde(default)]
    pub cache_write: Option<f64>,
}

const fn p(input: f64, cached_input: f64, output: f64) -> Price {
    Price {
        input,
        output,
        cached_input: Some(cached_input),
        cache_write: None,
    }
}

/// List prices (USD / 1M tokens) of current models, standard tier. Check
/// them against your contract and override what differs in `pricing:`.
const BUILTIN: &[(&str, Price)] = &[
    ("gpt-5", p(1.25, 0.125, 10.0)),
    ("gpt-5-mini", p(0.25, 0.025, 2.0)),
    ("gpt-5-nano", p(0.05, 0.005, 0.4)),
    ("gpt-4.1", p(2.0, 0.5, 8.0)),
    ("gpt-4.1-mini", p(0.4, 0.1, 1.6)),
    ("gpt-4.1-nano", p(0.1, 0.025, 0.4)),
    ("gpt-4o", p(2.5, 1.25, 10.0)),
    ("gpt-4o-mini", p(0.15, 0.075, 0.6)),
    ("o3", p(2.0, 0.5, 8.0)),
    ("o4-mini", p(1.1, 0.275, 4.4)),
    ("text-embedding-3-small", p(0.02, 0.02, 0.0)),
    ("text-embedding-3-large", p(0.13, 0.13, 0.0)),
    ("claude-opus-4-5", p(5.0, 0.5, 25.0)),
    ("claude-opus-4-1", p(15.0, 1.5, 75.0)),
    ("claude-opus-4", p(15.0, 1.5, 75.0)),
    ("claude-sonnet-4-5", p(3.0, 0.3, 15.0)),
    ("claude-sonnet-4", p(3.0, 0.3, 15.0)),
    ("claude-haiku-4-5", p(1.0, 0.1, 5.0)),
    ("claude-3-5-haiku", p(0.8, 0.08, 4.0)),
    ("gemini-2.5-pro", p(1.25, 0.125, 10.0)),
    ("gemini-2.5-flash", p(0.3, 0.03, 2.5)),
    ("gemini-2.5-flash-lite", p(0.1, 0.01, 0.4)),
    ("gemini-2.0-flash", p(0.1, 0.025, 0.4)),
];

/// Model → price, longest matching name first.
#[derive(Debug, Clone)]
pub struct PriceTable {
    prices: BTreeMap<String, Price>,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self::with_overrides(BTreeMap::new())
    }
}

impl PriceTable {
    /// The built-in prices with `overrides` (model → price) on top.
    pub fn with_overrides(overrides: BTreeMap<String, Price>) -> Self {
        let mut prices: BTreeMap<String, Price> =
            BUILTIN.iter().map(|(m, p)| ((*m).to_owned(), *p)).collect();
        prices.extend(overrides);
        Self { prices }
    }

    /// The price of `model`: an exact entry, or the longest entry it extends
    /// with a `-suffix` (dated snapshots like `gpt-4o-mini-2024-07-18`).
    pub fn lookup(&self, model: &str) -> Option<&Price> {
        let model = model.strip_prefix("models/").unwrap_or(model);
        if let Some(p) = self.prices.get(model) {
            return Some(p);
        }
        self.prices
            .iter()
            .filter(|(name, _)| is_variant_of(model, name))
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| p)
    }

    /// The cost of `usage` for `model` (see [`Price::cost`]); `None` for
    /// a model without a price.
    pub fn cost(&self, kind: ProviderKind, model: &str, usage: &Usage) -> Option<f64> {
        Some(self.lookup(model)?.cost(kind, usage))
    }
}

impl Price {
    /// The cost of `usage` at this price, under each provider's way of
    /// counting: `OpenAI` and Gemini count cached tokens inside input tokens,
    /// Anthropic counts cache reads and writes apart from them; Gemini bills
    /// thinking tokens as output, `OpenAI` counts reasoning inside output.
    pub fn cost(&self, kind: ProviderKind, usage: &Usage) -> f64 {
        let cached_price = self.cached_input.unwrap_or(self.input);
        let per = |tokens: u64, usd_per_million: f64| {
            // Token counts are far below 2^52: exact in f64.
            #[allow(
                clippy::cast_precision_loss,
                reason = "token counts are far below 2^52"
            )]
            let t = tokens as f64;
            t * usd_per_million / 1e6
        };
        let cost = match kind {
            ProviderKind::OpenAi => {
                let uncached = usage.input_tokens.saturating_sub(usage.cached_tokens);
                per(uncached, self.input)
                    + per(usage.cached_tokens, cached_price)
                    + per(usage.output_tokens, self.output)
            }
            ProviderKind::Anthropic => {
                let write = self.cache_write.unwrap_or(self.input * 1.25);
                per(usage.input_tokens, self.input)
                    + per(usage.cached_tokens, cached_price)
                    + per(usage.cache_creation_tokens, write)
                    + per(usage.output_tokens, self.output)
            }
            ProviderKind::Google => {
                let uncached = usage.input_tokens.saturating_sub(usage.cached_tokens);
                per(uncached, self.input)
                    + per(usage.cached_tokens, cached_price)
                    + per(usage.output_tokens + usage.reasoning_tokens, self.output)
            }
        };
        // Micro-dollar precision: stable, comparable numbers in records.
        (cost * 1e9).round() / 1e9
    }
}

#[cfg(test)]
#[allow(
    clippy::float_cmp,
    reason = "exact prices and sums of exactly representable products"
)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_longest_prefix() {
        let t = PriceTable::default();
        assert_eq!(t.lookup("gpt-4o-mini-2024-07-18").unwrap().input, 0.15);
        assert_eq!(t.lookup("gpt-4o-2024-08-06").unwrap().input, 2.5);
        assert_eq!(t.lookup("models/gemini-2.5-flash").unwrap().output, 2.5);
        assert!(t.lookup("gpt-4o2").is_none());
        assert!(t.lookup("my-private-model").is_none());
    }

    #[test]
    fn cost_per_provider_semantics() {
        let t = PriceTable::default();
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            cached_tokens: 500_000,
            reasoning_tokens: 0,
            cache_creation_tokens: 0,
        };
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        // 0.5M uncached × 0.15 + 0.5M cached × 0.075 + 1M × 0.6
        assert!(close(
            t.cost(ProviderKind::OpenAi, "gpt-4o-mini", &u),
            0.075 + 0.0375 + 0.6
        ));
        let a = Usage {
            input_tokens: 1_000_000,
            output_tokens: 0,
            cached_tokens: 1_000_000,
            reasoning_tokens: 0,
            cache_creation_tokens: 1_000_000,
        };
        assert!(close(
            t.cost(ProviderKind::Anthropic, "claude-sonnet-4-5-20250929", &a),
            3.0 + 0.3 + 3.75
        ));
        let overridden =
            PriceTable::with_overrides(BTreeMap::from([("acme-llm".to_owned(), p(1.0, 1.0, 2.0))]));
        assert!(close(
            overridden.cost(ProviderKind::OpenAi, "acme-llm", &u),
            0.5 + 0.5 + 2.0
        ));
        assert_eq!(t.cost(ProviderKind::OpenAi, "acme-llm", &u), None);
    }
}
