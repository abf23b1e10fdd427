//! The central store in PostgreSQL: schema (embedded migrations applied at
//! start, under an advisory lock so several collectors can start at once),
//! idempotent inserts keyed by `(host, epoch, seq)`, hash-chain and
//! sequence checks per host, and the fleet-wide queries of
//! `leash audit query --postgres`.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::Value;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio_postgres::{Client, NoTls, types::ToSql};

use crate::audit::{
    chain,
    read::{Filter, Totals},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(tokio_postgres::Error),
    #[error("PostgreSQL migration {0}: {1}")]
    Migrate(u32, tokio_postgres::Error),
    #[error("PostgreSQL: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Migrations in order; each runs once, in a transaction.
const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        r"
CREATE TABLE leash_audit (
    host text NOT NULL,
    epoch bigint NOT NULL,
    seq bigint NOT NULL,
    ts timestamptz,
    id text,
    event text,
    provider text,
    model text,
    team text,
    caller_user text,
    caller_exe text,
    action text NOT NULL DEFAULT 'allow',
    rules text[] NOT NULL DEFAULT '{}',
    status integer,
    input_tokens bigint,
    output_tokens bigint,
    cost_usd double precision,
    hash text NOT NULL,
    prev_hash text NOT NULL,
    sealed boolean NOT NULL,
    line text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, epoch, seq)
);
CREATE INDEX leash_audit_ts ON leash_audit (ts);
CREATE INDEX leash_audit_host_ts ON leash_audit (host, ts);
CREATE INDEX leash_audit_team_ts ON leash_audit (team, ts);
CREATE INDEX leash_audit_provider_model_ts ON leash_audit (provider, model, ts);
CREATE INDEX leash_audit_action_ts ON leash_audit (action, ts);
CREATE TABLE leash_chain_faults (
    host text NOT NULL,
    epoch bigint NOT NULL,
    seq bigint NOT NULL,
    kind text NOT NULL,
    detail text NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, epoch, seq, kind)
);
",
    ),
    (
        2,
        r"
CREATE TABLE leash_content_chunks (
    host text NOT NULL,
    epoch bigint NOT NULL,
    seq bigint NOT NULL,
    idx integer NOT NULL,
    total integer NOT NULL,
    bytes bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, epoch, seq, idx)
);
CREATE INDEX leash_audit_id ON leash_audit (id);
CREATE TABLE leash_legal_hold (
    record text PRIMARY KEY,
    note text,
    added_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE leash_content_reads (
    record text NOT NULL,
    reader text NOT NULL,
    read_at timestamptz NOT NULL DEFAULT now()
);
",
    ),
];

/// Connects and applies pending migrations.
pub async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(StoreError::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Applies the embedded migrations not applied yet.
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    // One collector migrates at a time; the others wait, then see it done.
    tx.execute("SELECT pg_advisory_xact_lock(74065354)", &[])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS leash_schema_migrations (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    for (version, sql) in MIGRATIONS {
        let done = tx
            .query_opt(
                "SELECT 1 FROM leash_schema_migrations WHERE version = $1",
                &[&i32::try_from(*version).unwrap_or(i32::MAX)],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|e| StoreError::Migrate(*version, e))?;
        tx.execute(
            "INSERT INTO leash_schema_migrations (version) VALUES ($1)",
            &[&i32::try_from(*version).unwrap_or(i32::MAX)],
        )
        .await?;
        tracing::info!(version, "PostgreSQL migration applied");
    }
    tx.commit().await?;
    Ok(())
}

/// One record as it arrived from a host.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub host: String,
    pub epoch: i64,
    pub line: String,
}

/// One chunk of a record's captured content as it arrived from a host.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub host: String,
    pub epoch: i64,
    pub seq: i64,
    pub idx: i32,
    pub total: i32,
    pub bytes: Vec<u8>,
}

impl Chunk {
    /// `<seq>/<index>/<count>` (the `Leash-Content` header).
    pub fn parse(host: String, epoch: i64, header: &str, bytes: Vec<u8>) -> Option<Self> {
        let mut parts = header.split('/');
        let seq = parts.next()?.parse().ok()?;
        let idx = parts.next()?.parse().ok()?;
        let total = parts.next()?.parse().ok()?;
        (parts.next().is_none() && idx < total).then_some(Self {
            host,
            epoch,
            seq,
            idx,
            total,
            bytes,
        })
    }
}

/// A problem with a host's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub host: String,
    pub epoch: i64,
    pub seq: i64,
    pub kind: &'static str,
    pub detail: String,
}

/// What a batch did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub inserted: u64,
    pub duplicates: u64,
    /// Content chunks stored.
    pub chunks: u64,
    pub faults: Vec<Fault>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn int_at(v: &Value, path: &[&str]) -> Option<i64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_i64()
}

/// Inserts a batch in one transaction: each record once (`ON CONFLICT DO
/// NOTHING`), each adjacent pair of a host's chain checked when the second
/// of them arrives (under a per-host lock, so concurrent collectors never
/// both miss a pair). Records that fail their seal are kept and flagged.
pub async fn insert_batch(
    client: &mut Client,
    batch: &[Incoming],
    chunks: &[Chunk],
) -> Result<Outcome, StoreError> {
    let mut out = Outcome::default();
    let tx = client.transaction().await?;
    insert_chunks(&tx, chunks, &mut out).await?;
    lock_hosts(&tx, batch).await?;
    let insert = tx
        .prepare(
            "INSERT INTO leash_audit (host, epoch, seq, ts, id, event, provider, model, team,
                caller_user, caller_exe, action, rules, status, input_tokens, output_tokens,
                cost_usd, hash, prev_hash, sealed, line)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                $17, $18, $19, $20, $21)
             ON CONFLICT (host, epoch, seq) DO NOTHING",
        )
        .await?;
    let neighbour = tx
        .prepare(
            "SELECT hash, prev_hash FROM leash_audit WHERE host = $1 AND epoch = $2 AND seq = $3",
        )
        .await?;
    for r in batch {
        let Ok(v) = serde_json::from_str::<Value>(&r.line) else {
            return Err(StoreError::Invalid(format!(
                "a record from {} is not JSON",
                r.host
            )));
        };
        let Some(seq) = int_at(&v, &["seq"]) else {
            return Err(StoreError::Invalid(format!(
                "a record from {} has no seq",
                r.host
            )));
        };
        let hash = str_at(&v, &["hash"]).unwrap_or_default().to_owned();
        let prev = str_at(&v, &["prev_hash"]).unwrap_or_default().to_owned();
        let sealed = chain::line_intact(r.line.trim_end().as_bytes());
        let ts = str_at(&v, &["ts"]).and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
        let rules: Vec<String> = v["policy"]["rules"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let status = int_at(&v, &["status"]).and_then(|s| i32::try_from(s).ok());
        let params: [&(dyn ToSql + Sync); 21] = [
            &r.host,
            &r.epoch,
            &seq,
            &ts,
            &str_at(&v, &["id"]),
            &str_at(&v, &["event"]),
            &str_at(&v, &["provider"]),
            &str_at(&v, &["model"]),
            &str_at(&v, &["caller", "team"]),
            &str_at(&v, &["caller", "user"]),
            &str_at(&v, &["caller", "exe"]),
            &str_at(&v, &["policy", "action"]).unwrap_or("allow"),
            &rules,
            &status,
            &int_at(&v, &["usage", "input_tokens"]),
            &int_at(&v, &["usage", "output_tokens"]),
            &v["cost_usd"].as_f64(),
            &hash,
            &prev,
            &sealed,
            &r.line.trim_end(),
        ];
        if tx.execute(&insert, &params).await? == 0 {
            match again(&tx, &neighbour, r, seq, &hash).await? {
                Some(fork) => out.faults.push(fork),
                None => out.duplicates += 1,
            }
            continue;
        }
        out.inserted += 1;
        let link = Link {
            seq,
            hash: &hash,
            prev: &prev,
            sealed,
        };
        check_links(&tx, &neighbour, r, &link, &mut out.faults).await?;
    }
    for f in &out.faults {
        tx.execute(
            "INSERT INTO leash_chain_faults (host, epoch, seq, kind, detail)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[&f.host, &f.epoch, &f.seq, &f.kind, &f.detail],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(out)
}

/// Content chunks, each once (a redelivery is a duplicate).
async fn insert_chunks(
    tx: &tokio_postgres::Transaction<'_>,
    chunks: &[Chunk],
    out: &mut Outcome,
) -> Result<(), StoreError> {
    if chunks.is_empty() {
        return Ok(());
    }
    let insert = tx
        .prepare(
            "INSERT INTO leash_content_chunks (host, epoch, seq, idx, total, bytes)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .await?;
    for c in chunks {
        let n = tx
            .execute(
                &insert,
                &[&c.host, &c.epoch, &c.seq, &c.idx, &c.total, &c.bytes],
            )
            .await?;
        if n == 0 {
            out.duplicates += 1;
        } else {
            out.chunks += 1;
        }
    }
    Ok(())
}

/// A record and its content in the store, by record id: the record line
/// and the content's chunks joined (`None` when a chunk is missing).
pub async fn content_by_id(
    client: &Client,
    id: &str,
) -> Result<Option<(String, Option<Vec<u8>>)>, StoreError> {
    let Some(row) = client
        .query_opt(
            "SELECT host, epoch, seq, line FROM leash_audit WHERE id = $1 LIMIT 1",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let (host, epoch, seq, line): (String, i64, i64, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let rows = client
        .query(
            "SELECT idx, total, bytes FROM leash_content_chunks
             WHERE host = $1 AND epoch = $2 AND seq = $3 ORDER BY idx",
            &[&host, &epoch, &seq],
        )
        .await?;
    let complete = !rows.is_empty()
        && rows.iter().enumerate().all(|(i, r)| {
            r.get::<_, i32>(0) == i32::try_from(i).unwrap_or(-1)
                && usize::try_from(r.get::<_, i32>(1)).ok() == Some(rows.len())
        });
    let bytes = complete.then(|| {
        rows.iter()
            .flat_map(|r| r.get::<_, Vec<u8>>(2))
            .collect::<Vec<u8>>()
    });
    Ok(Some((line, bytes)))
}

/// Removes captured content older than its class's retention (by the
/// record's time), except records on `leash_legal_hold`; the records stay.
/// How many chunks went.
pub async fn expire_content(
    client: &Client,
    (redacted, sealed): (std::time::Duration, std::time::Duration),
) -> Result<u64, StoreError> {
    let (redacted, sealed) = (redacted.as_secs_f64(), sealed.as_secs_f64());
    Ok(client
        .execute(
            "DELETE FROM leash_content_chunks c USING leash_audit a
             WHERE a.host = c.host AND a.epoch = c.epoch AND a.seq = c.seq
               AND a.ts < now() - make_interval(secs => CASE a.line::jsonb -> 'content' ->> 'class'
                   WHEN 'sealed' THEN $2::float8 ELSE $1::float8 END)
               AND NOT EXISTS (SELECT 1 FROM leash_legal_hold h WHERE h.record = a.id)",
            &[&redacted, &sealed],
        )
        .await?)
}

/// Records a read of record `id`'s content from the store (who, when).
pub async fn record_read(client: &Client, id: &str, reader: &str) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO leash_content_reads (record, reader) VALUES ($1, $2)",
            &[&id, &reader],
        )
        .await?;
    Ok(())
}

/// A seq already stored arriving again: a redelivery carries the same hash;
/// another hash means the host rewrote a record it had shipped (a fork).
async fn again(
    tx: &tokio_postgres::Transaction<'_>,
    neighbour: &tokio_postgres::Statement,
    r: &Incoming,
    seq: i64,
    hash: &str,
) -> Result<Option<Fault>, StoreError> {
    let stored: Option<String> = tx
        .query_opt(neighbour, &[&r.host, &r.epoch, &seq])
        .await?
        .map(|row| row.get(0));
    Ok(stored.filter(|h| h != hash).map(|_| Fault {
        host: r.host.clone(),
        epoch: r.epoch,
        seq,
        kind: "fork",
        detail: format!(
            "seq {seq} arrived again with another hash: the host rewrote a record it had shipped"
        ),
    }))
}

/// Takes each (host, epoch) chain of the batch for this transaction, in
/// one order (no deadlocks between collectors).
async fn lock_hosts(
    tx: &tokio_postgres::Transaction<'_>,
    batch: &[Incoming],
) -> Result<(), StoreError> {
    let mut hosts: Vec<(&str, i64)> = batch.iter().map(|r| (r.host.as_str(), r.epoch)).collect();
    hosts.sort_unstable();
    hosts.dedup();
    for (host, epoch) in &hosts {
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1::text || ':' || ($2::bigint)::text, 0))",
            &[host, epoch],
        )
        .await?;
    }
    Ok(())
}

/// What the chain check needs of one record.
struct Link<'a> {
    seq: i64,
    hash: &'a str,
    prev: &'a str,
    sealed: bool,
}

/// Checks a record's seal and its links to the records before and after
/// it (those already stored).
async fn check_links(
    tx: &tokio_postgres::Transaction<'_>,
    neighbour: &tokio_postgres::Statement,
    r: &Incoming,
    link: &Link<'_>,
    faults: &mut Vec<Fault>,
) -> Result<(), StoreError> {
    let seq = link.seq;
    let mut fault = |seq: i64, detail: String| {
        faults.push(Fault {
            host: r.host.clone(),
            epoch: r.epoch,
            seq,
            kind: "chain_break",
            detail,
        });
    };
    if !link.sealed {
        fault(
            seq,
            "the record's hash does not match its contents (edited)".into(),
        );
    }
    if seq == 1 && link.prev != chain::GENESIS {
        fault(seq, "the first record does not start a chain".into());
    }
    let mut forked = None;
    if let Some(before) = tx
        .query_opt(neighbour, &[&r.host, &r.epoch, &(seq - 1)])
        .await?
    {
        let before_hash: String = before.get(0);
        if before_hash != link.prev {
            if link.sealed {
                // An intact record that does not extend what was shipped:
                // the host's chain was rewritten and re-sealed behind it.
                forked = Some(format!(
                    "seq {seq} does not extend seq {} as shipped: the host's chain was rewritten and re-sealed",
                    seq - 1
                ));
            } else {
                fault(
                    seq,
                    format!("prev_hash does not match the hash of seq {}", seq - 1),
                );
            }
        }
    }
    if let Some(after) = tx
        .query_opt(neighbour, &[&r.host, &r.epoch, &(seq + 1)])
        .await?
    {
        let after_prev: String = after.get(1);
        if after_prev != link.hash {
            fault(
                seq + 1,
                format!("prev_hash does not match the hash of seq {seq}"),
            );
        }
    }
    if let Some(detail) = forked {
        faults.push(Fault {
            host: r.host.clone(),
            epoch: r.epoch,
            seq,
            kind: "fork",
            detail,
        });
    }
    Ok(())
}

/// The hashes the store holds for `host`'s chain of `epoch` from `from`
/// on, by seq (what `leash audit verify --against` compares with).
pub async fn chain_hashes(
    client: &Client,
    host: &str,
    epoch: i64,
    from: i64,
) -> Result<std::collections::BTreeMap<i64, String>, StoreError> {
    let rows = client
        .query(
            "SELECT seq, hash FROM leash_audit WHERE host = $1 AND epoch = $2 AND seq >= $3 ORDER BY seq",
            &[&host, &epoch, &from],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Sequence gaps per host chain: runs of missing seqs between records
/// that arrived more than `settle_secs` ago (so records still in flight
/// from another collector are not called missing). Newly found gaps are
/// recorded as faults and returned.
pub async fn find_gaps(client: &Client, settle_secs: i64) -> Result<Vec<Fault>, StoreError> {
    let rows = client
        .query(
            "WITH s AS (
                SELECT host, epoch, seq, received_at,
                       lag(seq) OVER (PARTITION BY host, epoch ORDER BY seq) AS prev
                FROM leash_audit)
             INSERT INTO leash_chain_faults (host, epoch, seq, kind, detail)
             SELECT host, epoch, seq, 'gap',
                    'records ' || (coalesce(prev, 0) + 1) || '..' || (seq - 1) || ' are missing'
             FROM s
             WHERE seq > coalesce(prev, 0) + 1
               AND received_at < now() - make_interval(secs => $1::double precision)
             ON CONFLICT DO NOTHING
             RETURNING host, epoch, seq, detail",
            &[&f64::from(i32::try_from(settle_secs).unwrap_or(i32::MAX))],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Fault {
            host: r.get(0),
            epoch: r.get(1),
            seq: r.get(2),
            kind: "gap",
            detail: r.get(3),
        })
        .collect())
}

/// The WHERE clause and parameters selecting what `filter` selects in a
/// local spool (`leash audit query`), across the fleet.
fn clause(filter: &Filter) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut sql = String::from("event IS NULL");
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    if let Some(since) = filter.since {
        params.push(Box::new(since));
        let _ = write!(sql, " AND ts >= ${}", params.len());
    }
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
    (sql, params)
}

/// The selected records, oldest first, exactly as written on their hosts.
pub async fn select_lines(client: &Client, filter: &Filter) -> Result<Vec<String>, StoreError> {
    let (clause, params) = clause(filter);
    let refs: Vec<&(dyn ToSql + Sync)> =
        params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
    let rows = client
        .query(
            &format!("SELECT line FROM leash_audit WHERE {clause} ORDER BY ts, host, seq"),
            &refs,
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Requests, tokens and cost grouped by `key` (team, provider, model, user,
/// exe, host or rule).
pub async fn sum_by(
    client: &Client,
    filter: &Filter,
    key: &str,
) -> Result<BTreeMap<String, Totals>, StoreError> {
    let group = match key {
        "team" => "team",
        "provider" => "provider",
        "model" => "model",
        "user" => "caller_user",
        "exe" => "caller_exe",
        "host" => "host",
        "rule" => "r.rule",
        other => return Err(StoreError::Invalid(format!("cannot sum by `{other}`"))),
    };
    let from = if key == "rule" {
        "leash_audit CROSS JOIN LATERAL unnest(rules) AS r(rule)"
    } else {
        "leash_audit"
    };
    let (clause, params) = clause(filter);
    let refs: Vec<&(dyn ToSql + Sync)> =
        params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
    let rows = client
        .query(
            &format!(
                "SELECT coalesce({group}, '-'), count(*), coalesce(sum(input_tokens), 0)::bigint,
                        coalesce(sum(output_tokens), 0)::bigint, coalesce(sum(cost_usd), 0),
                        count(*) FILTER (WHERE cost_usd IS NULL AND input_tokens IS NOT NULL)
                 FROM {from} WHERE {clause} GROUP BY 1"
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
