//! The central store in PostgreSQL: schema (embedded migrations applied at
//! start, under an advisory lock so several collectors can start at once),
//! idempotent inserts keyed by `(host, epoch, seq)`, hash-chain and
//! sequence checks per host (the reads are in `query`).

use serde_json::Value;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio_postgres::{Client, NoTls, types::ToSql};

use crate::audit::chain;

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
    #[error(transparent)]
    Rollup(#[from] super::rollup::RollupError),
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
    (
        3,
        // The transaction that wrote each row (0 for rows from before):
        // a reader that has summed every row below the oldest transaction
        // still running reads only the rows above it next time.
        r"
ALTER TABLE leash_audit ADD COLUMN txid bigint NOT NULL DEFAULT 0;
ALTER TABLE leash_audit ALTER COLUMN txid SET DEFAULT pg_current_xact_id()::text::bigint;
CREATE INDEX leash_audit_txid ON leash_audit (txid, host, epoch, seq);
",
    ),
    (4, super::rollup::MIGRATION),
    (5, super::rollup::REFILL),
    (
        6,
        // Where the gap scan has got to, and the fleet console's summary
        // of the store below a transaction horizon (so a console that
        // starts reads only what was written since).
        r"
CREATE TABLE leash_collector_state (
    name text PRIMARY KEY,
    txid bigint NOT NULL
);
-- Rows stored before this were scanned by the scan that read everything;
-- rows of the last hour are scanned again (the newest may not have settled).
INSERT INTO leash_collector_state VALUES ('gap_scan', coalesce(
    (SELECT min(txid) FROM leash_audit WHERE received_at > now() - interval '1 hour'),
    pg_current_xact_id()::text::bigint));
CREATE TABLE leash_summary_checkpoint (
    name text PRIMARY KEY,
    horizon bigint NOT NULL,
    summary bytea NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now()
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

/// One record of a batch, read for its row and its chain checks.
struct Parsed<'a> {
    r: &'a Incoming,
    v: Value,
    seq: i64,
    /// The seqs before and after it (the neighbours its links are checked
    /// against).
    around: (i64, i64),
    hash: String,
    prev: String,
    sealed: bool,
    ts: Option<OffsetDateTime>,
    rules: Vec<String>,
    status: Option<i32>,
    tokens: (Option<i64>, Option<i64>),
    cost: Option<f64>,
    /// The line as written, without its newline.
    line: &'a str,
}

impl<'a> Parsed<'a> {
    fn read(r: &'a Incoming) -> Result<Self, StoreError> {
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
        let rules: Vec<String> = v["policy"]["rules"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            r,
            seq,
            around: (seq - 1, seq + 1),
            hash: str_at(&v, &["hash"]).unwrap_or_default().to_owned(),
            prev: str_at(&v, &["prev_hash"]).unwrap_or_default().to_owned(),
            sealed: chain::line_intact(r.line.trim_end().as_bytes()),
            ts: str_at(&v, &["ts"]).and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()),
            rules,
            status: int_at(&v, &["status"]).and_then(|s| i32::try_from(s).ok()),
            tokens: (
                int_at(&v, &["usage", "input_tokens"]),
                int_at(&v, &["usage", "output_tokens"]),
            ),
            cost: v["cost_usd"].as_f64(),
            line: r.line.trim_end(),
            v,
        })
    }

    /// The request as the rollups see it.
    fn request(&self) -> super::rollup::Request<'_> {
        let v = &self.v;
        super::rollup::Request {
            ts: self.ts,
            host: &self.r.host,
            team: str_at(v, &["caller", "team"]),
            provider: str_at(v, &["provider"]),
            model: str_at(v, &["model"]),
            action: str_at(v, &["policy", "action"]).unwrap_or("allow"),
            user: str_at(v, &["caller", "user"]),
            exe: str_at(v, &["caller", "exe"]),
            rules: &self.rules,
            tokens: self.tokens,
            cost: self.cost,
        }
    }

    /// The row's columns, in the insert's order.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let v = &self.v;
        vec![
            &self.r.host,
            &self.r.epoch,
            &self.seq,
            &self.ts,
            str_ref(v, &["id"]),
            str_ref(v, &["event"]),
            str_ref(v, &["provider"]),
            str_ref(v, &["model"]),
            str_ref(v, &["caller", "team"]),
            str_ref(v, &["caller", "user"]),
            str_ref(v, &["caller", "exe"]),
            match str_at(v, &["policy", "action"]) {
                Some(_) => str_ref(v, &["policy", "action"]),
                None => &"allow",
            },
            &self.rules,
            &self.status,
            &self.tokens.0,
            &self.tokens.1,
            &self.cost,
            &self.hash,
            &self.prev,
            &self.sealed,
            &self.line,
        ]
    }
}

/// A string field of `v` as a nullable text parameter.
fn str_ref<'v>(v: &'v Value, path: &[&str]) -> &'v (dyn ToSql + Sync) {
    match path.iter().try_fold(v, |v, k| v.get(k)) {
        Some(Value::String(s)) => s,
        _ => &NULL_TEXT,
    }
}

static NULL_TEXT: Option<&str> = None;

/// Inserts a batch in one transaction: each record once (`ON CONFLICT DO
/// NOTHING`), each adjacent pair of a host's chain checked when the second
/// of them arrives (under a per-host lock, so concurrent collectors never
/// both miss a pair). Records that fail their seal are kept and flagged.
/// The statements are pipelined on the connection — per record, its
/// insert, then the reads of its own seq and its neighbours — so the
/// server runs them in that order (each read sees every insert before it)
/// without a round trip each.
pub async fn insert_batch(
    client: &mut Client,
    batch: &[Incoming],
    chunks: &[Chunk],
) -> Result<Outcome, StoreError> {
    let mut out = Outcome::default();
    let parsed: Vec<Parsed> = batch.iter().map(Parsed::read).collect::<Result<_, _>>()?;
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
             ON CONFLICT (host, epoch, seq) DO NOTHING
             RETURNING seq",
        )
        .await?;
    let neighbour = tx
        .prepare(
            "SELECT hash, prev_hash FROM leash_audit WHERE host = $1 AND epoch = $2 AND seq = $3",
        )
        .await?;
    let params: Vec<Vec<&(dyn ToSql + Sync)>> = parsed.iter().map(Parsed::params).collect();
    let keys: Vec<[[&(dyn ToSql + Sync); 3]; 3]> = parsed
        .iter()
        .map(|p| {
            let (host, epoch): (&(dyn ToSql + Sync), &(dyn ToSql + Sync)) = (&p.r.host, &p.r.epoch);
            [
                [host, epoch, &p.seq],
                [host, epoch, &p.around.0],
                [host, epoch, &p.around.1],
            ]
        })
        .collect();
    let mut queries = Vec::with_capacity(parsed.len() * 4);
    for (row, [same, before, after]) in params.iter().zip(&keys) {
        queries.push(tx.query(&insert, row));
        queries.push(tx.query(&neighbour, same));
        queries.push(tx.query(&neighbour, before));
        queries.push(tx.query(&neighbour, after));
    }
    let answers = futures_util::future::try_join_all(queries).await?;
    let mut requests = Vec::with_capacity(parsed.len());
    for (p, answer) in parsed.iter().zip(answers.chunks(4)) {
        let [inserted, same, before, after] = answer else {
            continue;
        };
        if inserted.is_empty() {
            match fork(p, same.first()) {
                Some(f) => out.faults.push(f),
                None => out.duplicates += 1,
            }
            continue;
        }
        out.inserted += 1;
        check_links(p, before.first(), after.first(), &mut out.faults);
        if p.v.get("event").is_none_or(Value::is_null) {
            requests.push(p.request());
        }
    }
    super::rollup::add(&tx, &requests).await?;
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

/// A seq already stored arriving again (`stored`: that row): a redelivery
/// carries the same hash; another hash means the host rewrote a record it
/// had shipped (a fork).
fn fork(p: &Parsed<'_>, stored: Option<&tokio_postgres::Row>) -> Option<Fault> {
    let stored: String = stored?.get(0);
    let seq = p.seq;
    (stored != p.hash).then(|| Fault {
        host: p.r.host.clone(),
        epoch: p.r.epoch,
        seq,
        kind: "fork",
        detail: format!(
            "seq {seq} arrived again with another hash: the host rewrote a record it had shipped"
        ),
    })
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

/// Checks a record's seal and its links to the records before and after
/// it (the rows stored for those seqs when it was inserted, if any).
fn check_links(
    p: &Parsed<'_>,
    before: Option<&tokio_postgres::Row>,
    after: Option<&tokio_postgres::Row>,
    faults: &mut Vec<Fault>,
) {
    let seq = p.seq;
    let mut fault = |seq: i64, detail: String| {
        faults.push(Fault {
            host: p.r.host.clone(),
            epoch: p.r.epoch,
            seq,
            kind: "chain_break",
            detail,
        });
    };
    if !p.sealed {
        fault(
            seq,
            "the record's hash does not match its contents (edited)".into(),
        );
    }
    if seq == 1 && p.prev != chain::GENESIS {
        fault(seq, "the first record does not start a chain".into());
    }
    let mut forked = None;
    if let Some(before) = before {
        let before_hash: String = before.get(0);
        if before_hash != p.prev {
            if p.sealed {
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
    if let Some(after) = after {
        let after_prev: String = after.get(1);
        if after_prev != p.hash {
            fault(
                seq + 1,
                format!("prev_hash does not match the hash of seq {seq}"),
            );
        }
    }
    if let Some(detail) = forked {
        faults.push(Fault {
            host: p.r.host.clone(),
            epoch: p.r.epoch,
            seq,
            kind: "fork",
            detail,
        });
    }
}

/// The transaction horizon: every transaction with a smaller id has ended,
/// so the rows they wrote are all there will ever be below it.
pub async fn horizon(client: &Client) -> Result<i64, StoreError> {
    let row = client
        .query_one(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Rows one gap-scan round checks, about (whole transactions).
const GAP_SCAN_ROWS: i64 = 50_000;

/// Sequence gaps per host chain: each record, once it arrived more than
/// `settle_secs` ago (so records still in flight from another collector
/// are not called missing), is checked once for a hole before it. Where
/// the scan stands is kept in the store (`leash_collector_state`: the
/// transactions below it are checked), so each scan reads only the rows
/// written since the last — one collector at a time; the others skip
/// their turn. Newly found gaps are recorded as faults and returned.
pub async fn find_gaps(client: &mut Client, settle_secs: i64) -> Result<Vec<Fault>, StoreError> {
    let settle = f64::from(i32::try_from(settle_secs).unwrap_or(i32::MAX));
    let horizon = horizon(client).await?;
    let tx = client.transaction().await?;
    let Some(from) = tx
        .query_opt(
            "SELECT txid FROM leash_collector_state WHERE name = 'gap_scan' FOR UPDATE SKIP LOCKED",
            &[],
        )
        .await?
    else {
        return Ok(Vec::new());
    };
    let from: i64 = from.get(0);
    // Up to the first transaction with a record not settled yet, and at
    // most about `GAP_SCAN_ROWS` rows a round (a round never stalls the
    // collector that runs it; the next round goes on from there).
    let to: i64 = tx
        .query_one(
            "SELECT least(
                 coalesce((SELECT min(txid) FROM leash_audit
                           WHERE txid >= $1 AND txid < $2
                             AND received_at >= now() - make_interval(secs => $3::double precision)), $2),
                 coalesce((SELECT txid + 1 FROM leash_audit WHERE txid >= $1 AND txid < $2
                           ORDER BY txid OFFSET $4 LIMIT 1), $2))",
            &[&from, &horizon, &settle, &GAP_SCAN_ROWS],
        )
        .await?
        .get(0);
    let rows = tx
        .query(
            "INSERT INTO leash_chain_faults (host, epoch, seq, kind, detail)
             SELECT a.host, a.epoch, a.seq, 'gap',
                    'records ' || (coalesce(p.prev, 0) + 1) || '..' || (a.seq - 1) || ' are missing'
             FROM leash_audit a
             CROSS JOIN LATERAL (SELECT max(b.seq) AS prev FROM leash_audit b
                 WHERE b.host = a.host AND b.epoch = a.epoch AND b.seq < a.seq) p
             WHERE a.txid >= $1 AND a.txid < $2 AND a.seq > coalesce(p.prev, 0) + 1
             ON CONFLICT DO NOTHING
             RETURNING host, epoch, seq, detail",
            &[&from, &to],
        )
        .await?;
    if to > from {
        tx.execute(
            "UPDATE leash_collector_state SET txid = $1 WHERE name = 'gap_scan'",
            &[&to],
        )
        .await?;
    }
    tx.commit().await?;
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
