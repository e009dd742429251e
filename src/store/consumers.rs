//! Consumers: named clients (a service, an agent, a person) that own keys.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, now_ms};

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Consumer {
    pub id: String,
    pub name: String,
    /// Free-form JSON the operator attached.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// RFC 3339.
    pub created_at: String,
}

/// Names travel in headers and logs: keep them short and plain.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "consumer name `{name}` must be 1 to 64 characters from A-Z a-z 0-9 - _ . @"
        )))
    }
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<Consumer, StoreError> {
    let metadata: String = row.try_get("metadata")?;
    Ok(Consumer {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
        created_at: crate::keys::manage::rfc3339(row.try_get("created_at")?),
    })
}

impl Store {
    pub async fn create_consumer(
        &self,
        name: &str,
        metadata: &serde_json::Value,
    ) -> Result<Consumer, StoreError> {
        validate_name(name)?;
        if !metadata.is_object() {
            return Err(StoreError::Invalid("metadata must be a JSON object".into()));
        }
        if self.find_consumer(name).await?.is_some() {
            return Err(StoreError::Conflict(format!(
                "a consumer named `{name}` already exists"
            )));
        }
        let now = now_ms();
        let consumer = Consumer {
            id: format!("cns_{}", crate::keys::random_alnum(16)),
            name: name.to_string(),
            metadata: metadata.clone(),
            created_at: crate::keys::manage::rfc3339(now),
        };
        sqlx::query("INSERT INTO consumers (id, name, metadata, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&consumer.id)
            .bind(&consumer.name)
            .bind(metadata.to_string())
            .bind(now)
            .execute(self.pool())
            .await?;
        Ok(consumer)
    }

    pub async fn find_consumer(&self, name: &str) -> Result<Option<Consumer>, StoreError> {
        let row = sqlx::query("SELECT id, name, metadata, created_at FROM consumers WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    pub async fn list_consumers(&self) -> Result<Vec<Consumer>, StoreError> {
        let rows = sqlx::query("SELECT id, name, metadata, created_at FROM consumers ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Deletes a consumer and every key it owns; returns the deleted key IDs.
    pub async fn delete_consumer(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let consumer = self
            .find_consumer(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("consumer `{name}`")))?;
        let mut tx = self.pool().begin().await?;
        let keys: Vec<String> = sqlx::query("SELECT id FROM api_keys WHERE consumer_id = $1")
            .bind(&consumer.id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        sqlx::query("DELETE FROM api_keys WHERE consumer_id = $1")
            .bind(&consumer.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM consumers WHERE id = $1")
            .bind(&consumer.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(keys)
    }
}
