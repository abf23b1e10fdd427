//! The keys page: every virtual key with its team, limits, spend this
//! period, last use and state — never the key or its digest — and revoking
//! one (a state change: the admin token, or a session from the console
//! page itself).

use http::StatusCode;
use serde_json::{Value, json};

use super::Answer;
use crate::keys::{registry::Registry, store::now_secs};

/// `GET /api/keys`.
pub fn list(registry: Option<&Registry>) -> Answer {
    let Some(registry) = registry else {
        return Answer::json(
            StatusCode::OK,
            &json!({"enabled": false, "note": "virtual keys are off (auth.mode: passthrough)", "keys": []}),
        );
    };
    let loaded = registry.keys();
    let now = now_secs();
    let mut keys: Vec<Value> = loaded
        .keys
        .values()
        .map(|(k, _)| {
            let l = &k.limits;
            let used = registry.usage(&k.id);
            json!({
                "id": k.id,
                "team": l.team,
                "models": l.models,
                "routes": l.routes,
                "rate_per_min": l.rate_per_min,
                "tokens_per_min": l.tokens_per_min,
                "budget_usd": l.budget_usd,
                "budget_period": l.budget_usd.map(|_| l.budget_period.unwrap_or(crate::pipeline::budget::Period::Month).as_str()),
                "spent_usd": used.usd,
                "spent_since": used.since,
                "last_used": (used.last_used > 0).then_some(used.last_used),
                "created": k.created,
                "expires": l.expires,
                "revoked": k.revoked,
                "state": k.state(now),
            })
        })
        .collect();
    keys.sort_by(|a, b| a["created"].as_u64().cmp(&b["created"].as_u64()).reverse());
    Answer::json(
        StatusCode::OK,
        &json!({"enabled": true, "ready": loaded.ready, "keys": keys}),
    )
}

/// `POST /api/keys/<id>/revoke`.
pub async fn revoke(registry: Option<&Registry>, id: &str) -> Answer {
    let Some(registry) = registry else {
        return Answer::error(
            StatusCode::CONFLICT,
            "virtual keys are off (auth.mode: passthrough)",
        );
    };
    if !registry.keys().keys.contains_key(id) {
        return Answer::error(StatusCode::NOT_FOUND, "no key with this id");
    }
    match registry.revoke(id).await {
        Ok(()) => {
            tracing::warn!(key = %id, "virtual key revoked from the console");
            Answer::json(StatusCode::OK, &json!({"revoked": id}))
        }
        Err(e) => {
            tracing::error!(key = %id, error = %e, "console: cannot revoke the key");
            Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot write the key store",
            )
        }
    }
}
