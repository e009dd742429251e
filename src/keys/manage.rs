//! Operations on consumers and keys, shared by the CLI and the admin API.
//! Each one writes the store and records an audit event.

use std::time::Duration;

use serde::Serialize;

use super::generate;
use crate::audit::{Audit, Event, Severity};
use crate::config::rate::{LimitKey, parse_rate};
use crate::store::consumers::Consumer;
use crate::store::keys::{KeyInfo, NewKey};
use crate::store::{Store, StoreError, now_ms};

/// Who asked for an operation, for the audit log.
#[derive(Clone, Copy, Debug)]
pub struct Actor {
    /// `cli` or `admin_api`.
    pub via: &'static str,
    pub client_ip: Option<std::net::IpAddr>,
}

impl Actor {
    pub const CLI: Actor = Actor {
        via: "cli",
        client_ip: None,
    };

    fn event(&self, kind: &str) -> Event {
        let event = Event::new(kind, Severity::Notice).detail("via", self.via);
        match self.client_ip {
            Some(ip) => event.client_ip(ip),
            None => event,
        }
    }
}

/// Formats Unix milliseconds as RFC 3339 (UTC).
pub fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// A request for a new key.
#[derive(Debug, Clone, Default)]
pub struct KeyRequest {
    pub consumer: String,
    pub scopes: Vec<String>,
    pub expires_in: Option<Duration>,
    pub rate_limit: Option<String>,
}

/// A key just made: the only time its full text is shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    pub id: String,
    /// The key itself. It is not stored and cannot be shown again.
    pub key: String,
    pub consumer: String,
    pub scopes: Vec<String>,
    /// RFC 3339, or null for a key that does not expire.
    pub expires_at: Option<String>,
    pub rate_limit: Option<String>,
}

pub fn validate_scope(scope: &str) -> Result<(), StoreError> {
    let ok = !scope.is_empty()
        && scope.len() <= 64
        && scope
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "scope `{scope}` must be 1 to 64 characters from A-Z a-z 0-9 : . _ - /"
        )))
    }
}

/// A key's own limit counts per key; `per key` may be written, nothing else.
pub fn validate_key_rate_limit(text: &str) -> Result<(), StoreError> {
    let spec = parse_rate(text).map_err(StoreError::Invalid)?;
    if !matches!(spec.key, LimitKey::Ip | LimitKey::Key) || text.contains(" per ip") {
        return Err(StoreError::Invalid(format!(
            "a key's own rate limit always counts per key; write it as \"{}/{}s\"",
            spec.count,
            spec.period.as_secs()
        )));
    }
    Ok(())
}

/// Generates and stores a key for `consumer` as `request` describes.
async fn insert_new_key(
    store: &Store,
    consumer_id: &str,
    consumer: String,
    request: &KeyRequest,
) -> Result<(CreatedKey, Option<i64>), StoreError> {
    let expires_at = request.expires_in.map(|d| now_ms() + d.as_millis() as i64);
    let generated = generate();
    store
        .insert_key(&NewKey {
            id: &generated.id,
            consumer_id,
            secret_hash: &generated.secret_hash,
            scopes: &request.scopes,
            rate_limit: request.rate_limit.as_deref(),
            expires_at,
        })
        .await?;
    let created = CreatedKey {
        id: generated.id,
        key: generated.key,
        consumer,
        scopes: request.scopes.clone(),
        expires_at: expires_at.map(rfc3339),
        rate_limit: request.rate_limit.clone(),
    };
    Ok((created, expires_at))
}

pub async fn create_key(
    store: &Store,
    audit: &Audit,
    req: &KeyRequest,
    actor: Actor,
) -> Result<CreatedKey, StoreError> {
    let consumer = store
        .find_consumer(&req.consumer)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("consumer `{}`", req.consumer)))?;
    for scope in &req.scopes {
        validate_scope(scope)?;
    }
    if let Some(limit) = &req.rate_limit {
        validate_key_rate_limit(limit)?;
    }
    let (created, expires_at) = insert_new_key(store, &consumer.id, consumer.name, req).await?;
    audit
        .record(
            actor
                .event("key.created")
                .consumer(created.consumer.as_str())
                .detail("key_id", created.id.as_str())
                .detail("scopes", req.scopes.clone())
                .detail("expires_at", expires_at),
        )
        .await;
    Ok(created)
}

pub async fn revoke_key(store: &Store, audit: &Audit, id: &str, actor: Actor) -> Result<KeyInfo, StoreError> {
    let record = store.revoke_key(id).await?;
    audit
        .record(
            actor
                .event("key.revoked")
                .consumer(&record.consumer)
                .detail("key_id", id),
        )
        .await;
    Ok(record.info(now_ms()))
}

/// Issues a replacement for `id` with the same consumer, scopes, limit and
/// remaining lifetime; the old key keeps working for `grace`.
pub async fn rotate_key(
    store: &Store,
    audit: &Audit,
    id: &str,
    grace: Duration,
    actor: Actor,
) -> Result<CreatedKey, StoreError> {
    let old = store
        .find_key(id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("key `{id}`")))?;
    let now = now_ms();
    if old.revoked_at.is_some() {
        return Err(StoreError::Conflict(format!(
            "key `{id}` is revoked; create a new key instead"
        )));
    }
    if old.expires_at.is_some_and(|t| t <= now) {
        return Err(StoreError::Conflict(format!(
            "key `{id}` has expired; create a new key instead"
        )));
    }
    let request = KeyRequest {
        consumer: old.consumer.clone(),
        scopes: old.scopes.clone(),
        expires_in: old
            .expires_at
            .map(|t| Duration::from_millis((t - now).max(0) as u64)),
        rate_limit: old.rate_limit.clone(),
    };
    let (created, _) = insert_new_key(store, &old.consumer_id, old.consumer.clone(), &request).await?;
    let grace_ends = now + grace.as_millis() as i64;
    store.retire_key(id, &created.id, grace_ends).await?;
    audit
        .record(
            actor
                .event("key.rotated")
                .consumer(&old.consumer)
                .detail("key_id", id)
                .detail("new_key_id", created.id.as_str())
                .detail("old_key_valid_until", grace_ends),
        )
        .await;
    Ok(created)
}

pub async fn create_consumer(
    store: &Store,
    audit: &Audit,
    name: &str,
    metadata: &serde_json::Value,
    actor: Actor,
) -> Result<Consumer, StoreError> {
    let consumer = store.create_consumer(name, metadata).await?;
    audit.record(actor.event("consumer.created").consumer(name)).await;
    Ok(consumer)
}

pub async fn delete_consumer(
    store: &Store,
    audit: &Audit,
    name: &str,
    actor: Actor,
) -> Result<Vec<String>, StoreError> {
    let keys = store.delete_consumer(name).await?;
    audit
        .record(
            actor
                .event("consumer.deleted")
                .consumer(name)
                .detail("deleted_keys", keys.clone()),
        )
        .await;
    Ok(keys)
}
