//! The fleet store read: what `leash audit query --postgres`, `leash audit
//! show --postgres`, `leash audit verify --against` and the collector's
//! console ask of PostgreSQL, and content retention there.

use std::fmt::Write as _;

use time::OffsetDateTime;
use tokio_postgres::{Client, types::ToSql};

use super::store::StoreError;
use crate::audit::read::Filter;

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

/// Records removed per statement (each its own transaction: no long lock).
const EXPIRE_BATCH: i64 = 5_000;

/// Removes the records from before `cutoff` (a UTC midnight), a batch at
/// a time, except records on `leash_legal_hold`, with their captured
/// content; then the rollups of those days (the sums cover the days kept).
/// How many records went.
pub async fn expire_records(client: &Client, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let n: i64 = client
            .query_one(
                "WITH gone AS (
                    DELETE FROM leash_audit WHERE ctid = ANY(ARRAY(
                        SELECT ctid FROM leash_audit a WHERE ts < $1
                          AND NOT EXISTS (SELECT 1 FROM leash_legal_hold h WHERE h.record = a.id)
                        LIMIT $2))
                    RETURNING host, epoch, seq),
                 chunks AS (
                    DELETE FROM leash_content_chunks c USING gone g
                    WHERE c.host = g.host AND c.epoch = g.epoch AND c.seq = g.seq RETURNING 1)
                 SELECT count(*) FROM gone",
                &[&cutoff, &EXPIRE_BATCH],
            )
            .await?
            .get(0);
        total += u64::try_from(n).unwrap_or(0);
        if n < EXPIRE_BATCH {
            break;
        }
    }
    client
        .execute("DELETE FROM leash_rollup WHERE bucket < $1", &[&cutoff])
        .await?;
    Ok(total)
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

/// The WHERE clause and parameters selecting what `filter` selects in a
/// local spool (`leash audit query`), across the fleet.
fn clause(filter: &Filter) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut sql = String::from("event IS NULL");
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    if let Some(since) = filter.since {
        params.push(Box::new(since));
        let _ = write!(sql, " AND ts >= ${}", params.len());
    }
    sql.push_str(&super::rollup::filters(filter, &mut params));
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

/// Where a newest-first walk over the fleet's records stands: the last
/// record seen, by `(ts, host, seq)`.
pub type Position = (OffsetDateTime, String, i64);

/// The rows that may be violations (`index::is_violation` decides): a
/// condition the store checks before the rows are read out.
pub const MAYBE_VIOLATION: &str =
    "(action NOT IN ('allow', 'annotate', 'transform') OR line LIKE '%\"alerts\":%')";

/// One page of the fleet's records that `filter` (and the condition
/// `also`) selects, newest first by
/// `(ts, host, seq)`, strictly older than `before` (a keyset page on the
/// `ts` index, or a filtered column's `(column, ts)` index: no offset, no
/// full read). Each with its position.
pub async fn newest_page(
    client: &Client,
    (filter, also): (&Filter, Option<&str>),
    before: Option<&Position>,
    limit: i64,
) -> Result<Vec<(Position, String)>, StoreError> {
    let (mut sql, mut params) = clause(filter);
    sql.push_str(" AND ts IS NOT NULL");
    if let Some(also) = also {
        let _ = write!(sql, " AND {also}");
    }
    if let Some((ts, host, seq)) = before {
        params.push(Box::new(*ts));
        params.push(Box::new(host.clone()));
        params.push(Box::new(*seq));
        let n = params.len();
        let _ = write!(sql, " AND (ts, host, seq) < (${}, ${}, ${n})", n - 2, n - 1);
    }
    params.push(Box::new(limit));
    let refs: Vec<&(dyn ToSql + Sync)> =
        params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
    let rows = client
        .query(
            &format!(
                "SELECT ts, host, seq, line FROM leash_audit WHERE {sql}
                 ORDER BY ts DESC, host DESC, seq DESC LIMIT ${}",
                params.len()
            ),
            &refs,
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3)))
        .collect())
}

/// Where a walk in transaction order stands: `(txid, host, epoch, seq)`.
pub type TxPosition = (i64, String, i64, i64);

/// One page of records written by transactions from `from` on (below `to`
/// if given), in `(txid, host, epoch, seq)` order after `after` (a keyset
/// page on the `txid` index).
pub async fn lines_by_transaction(
    client: &Client,
    (from, to): (i64, Option<i64>),
    after: Option<&TxPosition>,
    limit: i64,
) -> Result<Vec<(TxPosition, String)>, StoreError> {
    let to = to.unwrap_or(i64::MAX);
    let rows = match after {
        Some((txid, host, epoch, seq)) => {
            client
                .query(
                    "SELECT txid, host, epoch, seq, line FROM leash_audit
                     WHERE event IS NULL AND txid >= $1 AND txid < $2
                       AND (txid, host, epoch, seq) > ($3, $4, $5, $6)
                     ORDER BY txid, host, epoch, seq LIMIT $7",
                    &[&from, &to, txid, host, epoch, seq, &limit],
                )
                .await?
        }
        None => {
            client
                .query(
                    "SELECT txid, host, epoch, seq, line FROM leash_audit
                     WHERE event IS NULL AND txid >= $1 AND txid < $2
                     ORDER BY txid, host, epoch, seq LIMIT $3",
                    &[&from, &to, &limit],
                )
                .await?
        }
    };
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2), r.get(3)), r.get(4)))
        .collect())
}

/// The oldest and newest record times in the store (the `ts` index).
pub async fn time_span(client: &Client) -> Result<(Option<String>, Option<String>), StoreError> {
    let row = client
        .query_one(
            "SELECT to_char(min(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                    to_char(max(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
             FROM leash_audit WHERE event IS NULL",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
