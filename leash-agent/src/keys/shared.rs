//! The key store in PostgreSQL (`auth.postgres`): every gateway replica
//! reads the same keys. One row per key (`leash_keys`: id, the stored record
//! as JSON — the digest, never the key); each replica re-reads the table
//! every 250 ms, so a revocation made anywhere holds everywhere within a
//! second. Each key's use (`leash_key_usage`: spend in its budget period,
//! last use) is added to by every replica and read back with the keys, so
//! a key's budget is shared.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::store::{KeyRecord, Store, StoreError, Use};

const TABLE: &str = "CREATE TABLE IF NOT EXISTS leash_keys (
    id text PRIMARY KEY,
    record jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS leash_key_usage (
    id text PRIMARY KEY,
    since bigint NOT NULL,
    usd double precision NOT NULL,
    last_used bigint NOT NULL)";

fn pg(e: impl std::fmt::Display) -> StoreError {
    StoreError::Postgres(e.to_string())
}

/// Connects and makes sure the table exists.
pub async fn connect(url: &str) -> Result<Client, StoreError> {
    let client = crate::collector::store::connect(url).await.map_err(pg)?;
    client.batch_execute(TABLE).await.map_err(pg)?;
    Ok(client)
}

/// Every key.
pub async fn load(client: &Client) -> Result<Store, StoreError> {
    let rows = client
        .query("SELECT record::text FROM leash_keys ORDER BY id", &[])
        .await
        .map_err(pg)?;
    let keys = rows
        .iter()
        .map(|r| {
            let text: String = r.get(0);
            serde_json::from_str::<KeyRecord>(&text).map_err(pg)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Store { version: 1, keys })
}

/// Writes `record` (new, or changed: revoked).
pub async fn put(client: &Client, record: &KeyRecord) -> Result<(), StoreError> {
    let json = serde_json::to_string(record).map_err(pg)?;
    client
        .execute(
            "INSERT INTO leash_keys (id, record) VALUES ($1, $2::text::jsonb)
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record, updated_at = now()",
            &[&record.id, &json],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

/// Adds this replica's counts (a later period replaces an earlier one).
pub async fn add_usage(
    client: &Client,
    uses: impl Iterator<Item = (&String, &Use)>,
) -> Result<(), StoreError> {
    let statement = client
        .prepare(
            "INSERT INTO leash_key_usage AS u (id, since, usd, last_used) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET
               usd = CASE WHEN u.since = EXCLUDED.since THEN u.usd + EXCLUDED.usd
                          WHEN u.since > EXCLUDED.since THEN u.usd
                          ELSE EXCLUDED.usd END,
               since = GREATEST(u.since, EXCLUDED.since),
               last_used = GREATEST(u.last_used, EXCLUDED.last_used)",
        )
        .await
        .map_err(pg)?;
    for (id, u) in uses {
        let since = i64::try_from(u.since).unwrap_or(i64::MAX);
        let last = i64::try_from(u.last_used).unwrap_or(i64::MAX);
        client
            .execute(&statement, &[id, &since, &u.usd, &last])
            .await
            .map_err(pg)?;
    }
    Ok(())
}

/// Every key's use, as all replicas counted it.
pub async fn usage(client: &Client) -> Result<HashMap<String, Use>, StoreError> {
    let rows = client
        .query("SELECT id, since, usd, last_used FROM leash_key_usage", &[])
        .await
        .map_err(pg)?;
    Ok(rows
        .iter()
        .map(|r| {
            let since: i64 = r.get(1);
            let last: i64 = r.get(3);
            (
                r.get::<_, String>(0),
                Use {
                    since: u64::try_from(since).unwrap_or(0),
                    usd: r.get(2),
                    last_used: u64::try_from(last).unwrap_or(0),
                },
            )
        })
        .collect())
}
