//! Sessions in memory, so a request on a session route needs no store round
//! trip once its session is cached. Revocations anywhere are noticed within
//! about a second (a poll of `updated_at`, as for keys), and at once with
//! Redis; last-use times are written in batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use http::HeaderValue;

use super::crypto::SessionId;
use crate::principal::{Method, Principal, UserIdentity};
use crate::store::sessions::SessionRecord;
use crate::store::{Store, StoreError, now_ms};

/// How often last-use times are written (idle expiry is hours, so a minute
/// of imprecision across instances does not matter).
const TOUCH_EVERY_MS: i64 = 30_000;

/// How often ended sessions are deleted, and how long they are kept.
const PRUNE_EVERY_MS: i64 = 3_600_000;
const KEEP_ENDED_MS: i64 = 86_400_000;

/// A session as cached: its record, its principal and its (encrypted)
/// provider tokens.
#[derive(Debug)]
pub struct SessionEntry {
    pub record: SessionRecord,
    pub principal: Principal,
    /// The provider's tokens, still encrypted; locked while they are
    /// refreshed, so concurrent requests share one refresh.
    pub tokens: tokio::sync::Mutex<Option<String>>,
    last_seen: AtomicI64,
    written_seen: AtomicI64,
}

impl SessionEntry {
    fn new(mut record: SessionRecord) -> SessionEntry {
        let mut extra_headers = Vec::new();
        if let Some(email) = record
            .email
            .as_deref()
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            extra_headers.push((http::HeaderName::from_static("x-portcullis-claim-email"), email));
        }
        let principal = Principal::user(
            Method::Session,
            UserIdentity {
                user: record.username.clone(),
                issuer: record.provider.clone(),
                scopes: Vec::new(),
                roles: record.roles.clone(),
                extra_headers,
            },
        );
        let seen = record.last_seen_at;
        let tokens = record.tokens.take();
        SessionEntry {
            record,
            principal,
            tokens: tokio::sync::Mutex::new(tokens),
            last_seen: AtomicI64::new(seen),
            written_seen: AtomicI64::new(seen),
        }
    }

    /// Why the session cannot be used at `now`, if it cannot.
    pub fn ended(&self, now: i64, idle_ms: i64) -> Option<&'static str> {
        if self.record.revoked_at.is_some() {
            Some("revoked")
        } else if self.record.expires_at <= now {
            Some("expired")
        } else if self.last_seen.load(Ordering::Relaxed) + idle_ms <= now {
            Some("idle")
        } else {
            None
        }
    }

    pub fn touch(&self, now: i64) {
        self.last_seen.fetch_max(now, Ordering::Relaxed);
    }
}

pub struct SessionCache {
    store: Store,
    /// With `[redis]`: revocations are announced to every instance at once.
    redis: std::sync::OnceLock<Arc<crate::ratelimit::redis::RedisLimiter>>,
    /// By the SHA-256 of the session ID; `None`: no such session.
    entries: quick_cache::sync::Cache<[u8; 32], Option<Arc<SessionEntry>>>,
}

impl SessionCache {
    pub fn new(store: Store, capacity: usize) -> Arc<SessionCache> {
        Arc::new(SessionCache {
            store,
            redis: std::sync::OnceLock::new(),
            entries: quick_cache::sync::Cache::new(capacity.max(16)),
        })
    }

    /// Announces revocations through Redis from now on.
    pub fn use_redis(&self, redis: Arc<crate::ratelimit::redis::RedisLimiter>) {
        let _ = self.redis.set(redis);
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The cached entry, if any: `Some(None)` is a session known not to
    /// exist.
    pub fn cached(&self, id: &SessionId) -> Option<Option<Arc<SessionEntry>>> {
        self.entries.get(&id.digest())
    }

    /// Reads a session from the store and caches what was found.
    pub async fn load(&self, id: &SessionId) -> Result<Option<Arc<SessionEntry>>, StoreError> {
        let found = self
            .store
            .find_session(&id.hash())
            .await?
            .map(|r| Arc::new(SessionEntry::new(r)));
        self.entries.insert(id.digest(), found.clone());
        Ok(found)
    }

    /// Stores a new session and caches it.
    pub async fn create(
        &self,
        id: &SessionId,
        record: SessionRecord,
    ) -> Result<Arc<SessionEntry>, StoreError> {
        self.store.create_session(&record).await?;
        let entry = Arc::new(SessionEntry::new(record));
        self.entries.insert(id.digest(), Some(entry.clone()));
        Ok(entry)
    }

    /// Revokes a session here at once (other instances follow within a
    /// second, or at once through Redis).
    pub async fn revoke(&self, id: &SessionId) -> Result<bool, StoreError> {
        let hash = id.hash();
        let revoked = self.store.revoke_session(&hash).await?;
        self.entries.remove(&id.digest());
        if let Some(redis) = self.redis.get() {
            redis.publish_session_revoked(&hash).await;
        }
        Ok(revoked)
    }

    /// Drops a session (by its store hash) from this instance's cache.
    pub fn invalidate_hash(&self, hash: &str) {
        if let Ok(bytes) = hex::decode(hash)
            && let Ok(digest) = <[u8; 32]>::try_from(bytes)
        {
            self.entries.remove(&digest);
        }
    }

    /// Writes last-use times that changed since the last write (every
    /// [`TOUCH_EVERY_MS`]).
    async fn write_last_seen(&self) {
        let due: Vec<(String, i64)> = self
            .entries
            .iter()
            .filter_map(|(_, entry)| {
                let entry = entry?;
                let seen = entry.last_seen.load(Ordering::Relaxed);
                (seen - entry.written_seen.swap(seen, Ordering::Relaxed) > 0)
                    .then(|| (entry.record.id_hash.clone(), seen))
            })
            .collect();
        for (hash, seen) in due {
            if let Err(error) = self.store.touch_session(&hash, seen).await {
                tracing::debug!(%error, "could not record session use");
            }
        }
    }

    /// Polls for revocations every second and writes last-use times every
    /// [`TOUCH_EVERY_MS`], until the handle is aborted.
    pub fn spawn_maintenance(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            const OVERLAP_MS: i64 = 5_000;
            let mut seen = now_ms();
            let mut last_touch = now_ms();
            let mut last_prune = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                match cache.store.sessions_changed_since(seen - OVERLAP_MS).await {
                    Ok((hashes, latest)) => {
                        for hash in &hashes {
                            cache.invalidate_hash(hash);
                        }
                        seen = seen.max(latest);
                    }
                    Err(error) => tracing::debug!(%error, "session change poll failed"),
                }
                if now_ms() - last_touch >= TOUCH_EVERY_MS {
                    cache.write_last_seen().await;
                    last_touch = now_ms();
                }
                // Ended sessions are kept a day (for `userinfo`-style
                // questions and revocation polls), then deleted.
                if now_ms() - last_prune >= PRUNE_EVERY_MS {
                    last_prune = now_ms();
                    match cache.store.prune_sessions(now_ms() - KEEP_ENDED_MS).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(sessions = n, "deleted ended sessions"),
                        Err(error) => tracing::debug!(%error, "session pruning failed"),
                    }
                }
            }
        })
    }
}
