//! Rollups: the requests of the store summed by day and by hour, kept in
//! the transaction that inserts the records (so a redelivered batch adds
//! nothing twice and a crash leaves rows and sums in step), and read by
//! `leash audit query --postgres --sum-by` instead of every matching row.
//!
//! One table, `leash_rollup`: per grain (`d` day, `h` hour, UTC), bucket,
//! host, team, provider, model and action (the columns a query filters
//! on), the sums of requests, tokens, cost and unpriced requests. `dim`
//! and `value` add one more grouping: `''` none, `user`, `exe` or `rule`
//! (a record counts once per rule it matched). The hour grain holds only
//! the plain sums (`dim = ''`); users, executables and rules are kept by
//! day. A query with `--since` adds whole days, then whole hours, then
//! the rows of the partial hour (or, for the day-only groupings, of the
//! partial day) read from `leash_audit` itself: exact, and bounded by
//! what one hour or day holds rather than by the size of the store.

use std::{collections::BTreeMap, fmt::Write as _};

use time::{Duration, OffsetDateTime, Time, UtcOffset};
use tokio_postgres::{Client, Transaction, types::ToSql};

use crate::audit::read::{Filter, Totals};

#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    #[error("PostgreSQL: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("cannot sum by `{0}`: one of team, provider, model, host, user, exe, rule")]
    Key(String),
}

/// The schema (migration 4) and the sums of the rows already stored.
pub const MIGRATION: &str = r"
CREATE TABLE leash_rollup (
    grain text NOT NULL,
    bucket timestamptz,
    host text NOT NULL,
    team text,
    provider text,
    model text,
    action text NOT NULL,
    dim text NOT NULL,
    value text,
    requests bigint NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cost_usd double precision NOT NULL,
    unpriced bigint NOT NULL,
    CONSTRAINT leash_rollup_key UNIQUE NULLS NOT DISTINCT
        (grain, dim, bucket, host, team, provider, model, action, value)
);
";

/// Sums every stored request into `leash_rollup` (emptied first): what
/// migration 4 does for a store that predates rollups, and what a bulk
/// load (`COPY`) that bypassed the collector runs afterwards.
pub const REFILL: &str = r"
DELETE FROM leash_rollup;
INSERT INTO leash_rollup
SELECT g.grain, CASE g.grain WHEN 'h' THEN date_trunc('hour', a.ts, 'UTC')
                             ELSE date_trunc('day', a.ts, 'UTC') END,
       a.host, a.team, a.provider, a.model, a.action, g.dim,
       CASE g.dim WHEN 'user' THEN a.caller_user WHEN 'exe' THEN a.caller_exe
                  WHEN 'rule' THEN r.rule END,
       count(*), coalesce(sum(a.input_tokens), 0), coalesce(sum(a.output_tokens), 0),
       coalesce(sum(a.cost_usd), 0),
       count(*) FILTER (WHERE a.cost_usd IS NULL AND a.input_tokens IS NOT NULL)
FROM leash_audit a
CROSS JOIN (VALUES ('h', ''), ('d', ''), ('d', 'user'), ('d', 'exe'), ('d', 'rule')) AS g(grain, dim)
LEFT JOIN LATERAL unnest(a.rules) AS r(rule) ON g.dim = 'rule'
WHERE a.event IS NULL AND (g.dim <> 'rule' OR r.rule IS NOT NULL)
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9;
";

/// One request as the rollups see it.
pub struct Request<'a> {
    pub ts: Option<OffsetDateTime>,
    pub host: &'a str,
    pub team: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub action: &'a str,
    pub user: Option<&'a str>,
    pub exe: Option<&'a str>,
    pub rules: &'a [String],
    pub tokens: (Option<i64>, Option<i64>),
    pub cost: Option<f64>,
}

type Key<'a> = (
    &'static str,
    &'static str,
    Option<OffsetDateTime>,
    &'a str,
    [Option<&'a str>; 3],
    &'a str,
    Option<&'a str>,
);

/// The rows of one upsert, column by column (`unnest`'s arrays).
#[derive(Default)]
struct Columns<'a> {
    grain: Vec<&'a str>,
    dim: Vec<&'a str>,
    bucket: Vec<Option<OffsetDateTime>>,
    host: Vec<&'a str>,
    team: Vec<Option<&'a str>>,
    provider: Vec<Option<&'a str>>,
    model: Vec<Option<&'a str>>,
    action: Vec<&'a str>,
    value: Vec<Option<&'a str>>,
    requests: Vec<i64>,
    input: Vec<i64>,
    output: Vec<i64>,
    cost: Vec<f64>,
    unpriced: Vec<i64>,
}

#[derive(Default)]
struct Sums {
    requests: i64,
    input: i64,
    output: i64,
    cost: f64,
    unpriced: i64,
}

fn hour(ts: OffsetDateTime) -> OffsetDateTime {
    let ts = ts.to_offset(UtcOffset::UTC);
    ts.replace_time(Time::from_hms(ts.hour(), 0, 0).unwrap_or(Time::MIDNIGHT))
}

fn day(ts: OffsetDateTime) -> OffsetDateTime {
    ts.to_offset(UtcOffset::UTC).replace_time(Time::MIDNIGHT)
}

/// Adds the requests of a batch (those inserted, not redelivered ones) to
/// the rollups, in the batch's transaction: summed here first, then one
/// statement (rows in key order, so two collectors never wait on each
/// other in opposite orders).
pub async fn add(tx: &Transaction<'_>, requests: &[Request<'_>]) -> Result<(), RollupError> {
    let mut sums: BTreeMap<Key, Sums> = BTreeMap::new();
    for r in requests {
        let base = [r.team, r.provider, r.model];
        let mut keys: Vec<Key> = vec![
            ("h", "", r.ts.map(hour), r.host, base, r.action, None),
            ("d", "", r.ts.map(day), r.host, base, r.action, None),
            ("d", "user", r.ts.map(day), r.host, base, r.action, r.user),
            ("d", "exe", r.ts.map(day), r.host, base, r.action, r.exe),
        ];
        for rule in r.rules {
            keys.push((
                "d",
                "rule",
                r.ts.map(day),
                r.host,
                base,
                r.action,
                Some(rule),
            ));
        }
        for key in keys {
            let s = sums.entry(key).or_default();
            s.requests += 1;
            s.input += r.tokens.0.unwrap_or(0);
            s.output += r.tokens.1.unwrap_or(0);
            s.cost += r.cost.unwrap_or(0.0);
            s.unpriced += i64::from(r.cost.is_none() && r.tokens.0.is_some());
        }
    }
    if sums.is_empty() {
        return Ok(());
    }
    let mut c = Columns::default();
    for ((grain, dim, bucket, host, [team, provider, model], action, value), s) in &sums {
        c.grain.push(grain);
        c.dim.push(dim);
        c.bucket.push(*bucket);
        c.host.push(host);
        c.team.push(*team);
        c.provider.push(*provider);
        c.model.push(*model);
        c.action.push(action);
        c.value.push(*value);
        c.requests.push(s.requests);
        c.input.push(s.input);
        c.output.push(s.output);
        c.cost.push(s.cost);
        c.unpriced.push(s.unpriced);
    }
    tx.execute(
        "INSERT INTO leash_rollup AS r (grain, dim, bucket, host, team, provider, model, action,
             value, requests, input_tokens, output_tokens, cost_usd, unpriced)
         SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
             $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[], $11::int8[],
             $12::int8[], $13::float8[], $14::int8[])
         ON CONFLICT ON CONSTRAINT leash_rollup_key DO UPDATE SET
             requests = r.requests + excluded.requests,
             input_tokens = r.input_tokens + excluded.input_tokens,
             output_tokens = r.output_tokens + excluded.output_tokens,
             cost_usd = r.cost_usd + excluded.cost_usd,
             unpriced = r.unpriced + excluded.unpriced",
        &[
            &c.grain,
            &c.dim,
            &c.bucket,
            &c.host,
            &c.team,
            &c.provider,
            &c.model,
            &c.action,
            &c.value,
            &c.requests,
            &c.input,
            &c.output,
            &c.cost,
            &c.unpriced,
        ],
    )
    .await?;
    Ok(())
}

/// Filter conditions on the columns both `leash_rollup` and `leash_audit`
/// have (` AND column = $n` each), their values added to `params`.
pub fn filters(filter: &Filter, params: &mut Vec<Box<dyn ToSql + Sync + Send>>) -> String {
    let mut sql = String::new();
    for (col, value) in [
        ("host", &filter.host),
        ("provider", &filter.provider),
        ("model", &filter.model),
        ("team", &filter.team),
        ("action", &filter.action),
    ] {
        if let Some(v) = value {
            params.push(Box::new(v.clone()));
            let _ = write!(sql, " AND {col} = ${}", params.len());
        }
    }
    sql
}

/// The next `step` boundary at or after `t` (UTC), by `floor`.
fn ceil(
    t: OffsetDateTime,
    floor: fn(OffsetDateTime) -> OffsetDateTime,
    step: Duration,
) -> OffsetDateTime {
    let f = floor(t);
    if f == t { f } else { f + step }
}

/// Requests, tokens and cost grouped by `key` (team, provider, model, user,
/// exe, host or rule), from the rollups plus the raw rows of a partial
/// first hour or day.
pub async fn sum_by(
    client: &Client,
    filter: &Filter,
    key: &str,
) -> Result<BTreeMap<String, Totals>, RollupError> {
    let (dim, group, raw_group) = match key {
        "team" | "provider" | "model" | "host" => ("", key, key),
        "user" => ("user", "value", "caller_user"),
        "exe" => ("exe", "value", "caller_exe"),
        "rule" => ("rule", "value", "r.rule"),
        other => return Err(RollupError::Key(other.to_owned())),
    };
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(dim.to_owned())];
    let conditions = filters(filter, &mut params);
    let sums = "count(*) AS requests, coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
         coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
         coalesce(sum(cost_usd), 0) AS cost_usd,
         count(*) FILTER (WHERE cost_usd IS NULL AND input_tokens IS NOT NULL) AS unpriced";
    let raw_from = if key == "rule" {
        "leash_audit CROSS JOIN LATERAL unnest(rules) AS r(rule)"
    } else {
        "leash_audit"
    };
    let parts = match filter.since {
        None => format!(
            "SELECT {group} AS k, requests, input_tokens, output_tokens, cost_usd, unpriced
             FROM leash_rollup WHERE grain = 'd' AND dim = $1{conditions}"
        ),
        Some(since) => {
            // Whole days, then (plain sums) whole hours, then raw rows.
            let first_day = ceil(since, day, Duration::DAY);
            let raw_until = if dim.is_empty() {
                ceil(since, hour, Duration::HOUR).min(first_day)
            } else {
                first_day
            };
            params.push(Box::new(first_day));
            let d = params.len();
            params.push(Box::new(raw_until));
            let h = params.len();
            params.push(Box::new(since));
            let s = params.len();
            format!(
                "SELECT {group} AS k, requests, input_tokens, output_tokens, cost_usd, unpriced
                 FROM leash_rollup WHERE grain = 'd' AND dim = $1 AND bucket >= ${d}{conditions}
                 UNION ALL
                 SELECT {group}, requests, input_tokens, output_tokens, cost_usd, unpriced
                 FROM leash_rollup WHERE grain = 'h' AND dim = $1
                   AND bucket >= ${h} AND bucket < ${d}{conditions}
                 UNION ALL
                 SELECT {raw_group}, {sums} FROM {raw_from}
                 WHERE event IS NULL AND ts >= ${s} AND ts < ${h}{conditions}
                 GROUP BY 1"
            )
        }
    };
    let refs: Vec<&(dyn ToSql + Sync)> =
        params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
    let rows = client
        .query(
            &format!(
                "SELECT coalesce(k, '-'), sum(requests)::bigint, sum(input_tokens)::bigint,
                        sum(output_tokens)::bigint, sum(cost_usd)::float8, sum(unpriced)::bigint
                 FROM ({parts}) AS p GROUP BY 1"
            ),
            &refs,
        )
        .await?;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                Totals {
                    requests: n(r.get(1)),
                    input_tokens: n(r.get(2)),
                    output_tokens: n(r.get(3)),
                    cost_usd: r.get(4),
                    unpriced: n(r.get(5)),
                    ..Totals::default()
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn buckets_and_their_boundaries_are_utc() {
        let t = datetime!(2026-11-30 12:34:56.5 +02:00);
        assert_eq!(hour(t), datetime!(2026-11-30 10:00 UTC));
        assert_eq!(day(t), datetime!(2026-11-30 00:00 UTC));
        assert_eq!(
            ceil(t, hour, Duration::HOUR),
            datetime!(2026-11-30 11:00 UTC)
        );
        let on = datetime!(2026-11-30 11:00 UTC);
        assert_eq!(ceil(on, hour, Duration::HOUR), on);
        assert_eq!(
            ceil(on, day, Duration::DAY),
            datetime!(2026-12-01 00:00 UTC)
        );
    }
}
