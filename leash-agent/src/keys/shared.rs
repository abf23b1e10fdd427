//! The key store in PostgreSQL (`auth.postgres`): every gateway replica
//! reads the same keys. One row per key (`leash_keys`: id, the stored record
//! as JSON — the digest, never the key); each replica re-reads the table
//! every 250 ms, so a revocation made anywhere holds everywhere within a
//! second.

use tokio_postgres::Client;

use super::store::{KeyRecord, Store, StoreError};

const TABLE: &str = "CREATE TABLE IF NOT EXISTS leash_keys (
    id text PRIMARY KEY,
    record jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now())";

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
