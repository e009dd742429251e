//! API key records. The secret itself is never stored: only its SHA-256.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, now_ms};

/// One key as stored, with its consumer's name.
#[derive(Clone, Debug)]
pub struct KeyRecord {
    pub id: String,
    pub consumer_id: String,
    pub consumer: String,
    pub secret_hash: [u8; 32],
    pub scopes: Vec<String>,
    pub rate_limit: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub rotated_to: Option<String>,
    pub last_used_at: Option<i64>,
    pub usage_count: i64,
}

/// What listing shows: everything but the hash. Times are RFC 3339.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub id: String,
    pub consumer: String,
    pub scopes: Vec<String>,
    pub rate_limit: Option<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// The key that replaced this one, after a rotation.
    pub rotated_to: Option<String>,
    pub last_used_at: Option<String>,
    /// Requests made with the key (written in batches, a few seconds behind).
    pub usage_count: i64,
    /// `active`, `expired` or `revoked`, as of the listing.
    pub state: String,
}

impl KeyRecord {
    pub fn info(&self, now: i64) -> KeyInfo {
        let state = if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|t| t <= now) {
            "expired"
        } else {
            "active"
        };
        use crate::keys::manage::rfc3339;
        KeyInfo {
            id: self.id.clone(),
            consumer: self.consumer.clone(),
            scopes: self.scopes.clone(),
            rate_limit: self.rate_limit.clone(),
            created_at: rfc3339(self.created_at),
            expires_at: self.expires_at.map(rfc3339),
            revoked_at: self.revoked_at.map(rfc3339),
            rotated_to: self.rotated_to.clone(),
            last_used_at: self.last_used_at.map(rfc3339),
            usage_count: self.usage_count,
            state: state.into(),
        }
    }
}

const SELECT_KEY: &str = "SELECT k.id, k.consumer_id, c.name AS consumer, k.secret_hash, k.scopes, k.rate_limit, \
     k.created_at, k.expires_at, k.revoked_at, k.rotated_to, k.last_used_at, k.usage_count \
     FROM api_keys k JOIN consumers c ON c.id = k.consumer_id";

fn from_row(row: &sqlx::any::AnyRow) -> Result<KeyRecord, StoreError> {
    let hash_hex: String = row.try_get("secret_hash")?;
    let mut secret_hash = [0u8; 32];
    hex::decode_to_slice(&hash_hex, &mut secret_hash)
        .map_err(|_| StoreError::Invalid("a stored key hash is corrupt".into()))?;
    let scopes: String = row.try_get("scopes")?;
    Ok(KeyRecord {
        id: row.try_get("id")?,
        consumer_id: row.try_get("consumer_id")?,
        consumer: row.try_get("consumer")?,
        secret_hash,
        scopes: scopes.split_whitespace().map(String::from).collect(),
        rate_limit: row.try_get("rate_limit")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        rotated_to: row.try_get("rotated_to")?,
        last_used_at: row.try_get("last_used_at")?,
        usage_count: row.try_get("usage_count")?,
    })
}

/// A new key to store.
pub struct NewKey<'a> {
    pub id: &'a str,
    pub consumer_id: &'a str,
    pub secret_hash: &'a [u8; 32],
    pub scopes: &'a [String],
    pub rate_limit: Option<&'a str>,
    pub expires_at: Option<i64>,
}

impl Store {
    pub async fn insert_key(&self, key: &NewKey<'_>) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO api_keys (id, consumer_id, secret_hash, scopes, rate_limit, created_at, expires_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(key.id)
        .bind(key.consumer_id)
        .bind(hex::encode(key.secret_hash))
        .bind(key.scopes.join(" "))
        .bind(key.rate_limit)
        .bind(now)
        .bind(key.expires_at)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn find_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(&format!("{SELECT_KEY} WHERE k.id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    pub async fn list_keys(&self, consumer: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = match consumer {
            Some(name) => {
                sqlx::query(&format!(
                    "{SELECT_KEY} WHERE c.name = $1 ORDER BY k.created_at, k.id"
                ))
                .bind(name)
                .fetch_all(self.pool())
                .await?
            }
            None => {
                sqlx::query(&format!("{SELECT_KEY} ORDER BY k.created_at, k.id"))
                    .fetch_all(self.pool())
                    .await?
            }
        };
        rows.iter().map(from_row).collect()
    }

    /// Marks a key revoked (idempotent); `NotFound` if there is no such key.
    pub async fn revoke_key(&self, id: &str) -> Result<KeyRecord, StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1), updated_at = $2 WHERE id = $3",
        )
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("key `{id}`")));
        }
        self.find_key(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("key `{id}`")))
    }

    /// Links an old key to its replacement and moves its expiry to the end
    /// of the grace period (never later than it already was).
    pub async fn retire_key(&self, id: &str, replacement: &str, grace_ends: i64) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "UPDATE api_keys SET rotated_to = $1, updated_at = $2, \
             expires_at = CASE WHEN expires_at IS NULL OR expires_at > $3 THEN $4 ELSE expires_at END \
             WHERE id = $5",
        )
        .bind(replacement)
        .bind(now)
        .bind(grace_ends)
        .bind(grace_ends)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// IDs of keys changed after `since` (Unix ms), and the latest change time.
    pub async fn keys_changed_since(&self, since: i64) -> Result<(Vec<String>, i64), StoreError> {
        let rows =
            sqlx::query("SELECT id, updated_at FROM api_keys WHERE updated_at > $1 ORDER BY updated_at")
                .bind(since)
                .fetch_all(self.pool())
                .await?;
        let mut latest = since;
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            ids.push(row.try_get::<String, _>("id")?);
            latest = latest.max(row.try_get::<i64, _>("updated_at")?);
        }
        Ok((ids, latest))
    }

    /// Adds batched usage: `uses` more requests, the latest at `last_used`.
    pub async fn add_key_usage(&self, id: &str, uses: i64, last_used: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_keys SET usage_count = usage_count + $1, \
             last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $2 THEN $3 ELSE last_used_at END \
             WHERE id = $4",
        )
        .bind(uses)
        .bind(last_used)
        .bind(last_used)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
