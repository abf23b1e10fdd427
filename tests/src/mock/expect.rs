//! What a test expects the audit record of a mock answer to hold.

use serde_json::Value;

use super::usage;

/// The usage the mock reports for `provider` and the cost of it for `model`
/// at list prices (USD per 1M tokens), computed here independently.
pub fn expected_usage(provider: &str, model: &str) -> (Value, f64) {
    use usage as u;
    match provider {
        "openai" if model.starts_with("text-embedding") => (
            serde_json::json!({"input_tokens": u::OPENAI_INPUT, "output_tokens": 0, "cached_tokens": 0, "reasoning_tokens": 0}),
            11.0 * 0.02,
        ),
        "openai" => {
            let (input, cached, output) = if model == "gpt-4.1-mini" {
                (0.4, 0.1, 1.6)
            } else {
                (0.15, 0.075, 0.6)
            };
            (
                serde_json::json!({"input_tokens": u::OPENAI_INPUT, "output_tokens": u::OPENAI_OUTPUT, "cached_tokens": u::OPENAI_CACHED, "reasoning_tokens": u::OPENAI_REASONING}),
                8.0 * input + 3.0 * cached + 7.0 * output,
            )
        }
        "anthropic" => (
            serde_json::json!({"input_tokens": u::ANTHROPIC_INPUT, "output_tokens": u::ANTHROPIC_OUTPUT, "cached_tokens": u::ANTHROPIC_CACHE_READ, "reasoning_tokens": 0, "cache_creation_tokens": u::ANTHROPIC_CACHE_CREATION}),
            13.0 * 3.0 + 4.0 * 0.3 + 2.0 * 3.75 + 9.0 * 15.0,
        ),
        _ => (
            serde_json::json!({"input_tokens": u::GOOGLE_PROMPT, "output_tokens": u::GOOGLE_CANDIDATES, "cached_tokens": u::GOOGLE_CACHED, "reasoning_tokens": u::GOOGLE_THOUGHTS}),
            12.0 * 0.3 + 5.0 * 0.03 + 11.0 * 2.5,
        ),
    }
}

pub fn assert_usage(provider: &str, rec: &Value) {
    let model = rec["model"].as_str().unwrap();
    let (usage, cost_micro) = expected_usage(provider, model);
    assert_eq!(rec["usage"], usage, "{rec}");
    let cost = rec["cost_usd"]
        .as_f64()
        .unwrap_or_else(|| panic!("no cost: {rec}"));
    assert!(
        (cost - cost_micro / 1e6).abs() < 1e-12,
        "cost {cost} != {} for {rec}",
        cost_micro / 1e6
    );
}
