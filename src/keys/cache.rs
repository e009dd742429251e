//! The key cache: found and not-found entries, bounded in size, so an
//! authenticated request needs no database round trip.
//!
//! Freshness: every entry expires after `api_keys.cache_ttl`; in addition a
//! background task asks the store once a second which keys changed
//! (`updated_at`) and drops them, so a revocation made anywhere (this
//! instance, another one, the CLI) takes effect within about a second. With
//! Redis configured, changes are also published and dropped at once.
//!
//! Usage counts and last-used times are kept in memory per key and written
//! in batches every `api_keys.usage_flush`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;

use crate::principal::Principal;

use crate::store::keys::KeyRecord;
use crate::store::{Store, StoreError, now_ms};

/// Requests counted against a key since the last flush.
#[derive(Default, Debug)]
pub struct Usage {
    uses: AtomicU64,
    last_used: AtomicI64,
}

impl Usage {
    pub fn record(&self, now: i64) {
        self.uses.fetch_add(1, Ordering::Relaxed);
        self.last_used.fetch_max(now, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub enum CachedKey {
    Known {
        record: Box<KeyRecord>,
        /// Who the key authenticates as, with its identity headers and its
        /// own rate limit, built once per cache fill.
        principal: Principal,
        usage: Arc<Usage>,
        fetched: Instant,
    },
    Unknown {
        fetched: Instant,
    },
}

impl CachedKey {
    fn fetched(&self) -> Instant {
        match self {
            CachedKey::Known { fetched, .. } | CachedKey::Unknown { fetched } => *fetched,
        }
    }
}

pub struct KeyCache {
    store: Store,
    entries: quick_cache::sync::Cache<String, Arc<CachedKey>>,
    ttl: Duration,
    usage: Mutex<HashMap<String, Arc<Usage>>>,
    /// `portcullis_key_cache_lookups_total` by result, resolved once.
    hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
}

impl KeyCache {
    pub fn new(
        store: Store,
        capacity: usize,
        ttl: Duration,
        metrics: &crate::metrics::Metrics,
    ) -> Arc<KeyCache> {
        let lookups = IntCounterVec::new(
            prometheus::Opts::new(
                "portcullis_key_cache_lookups_total",
                "API key lookups, by result (hit, miss: read from the store).",
            ),
            &["result"],
        )
        .expect("metric definitions are valid");
        metrics.register(Box::new(lookups.clone()));
        Arc::new(KeyCache {
            store,
            entries: quick_cache::sync::Cache::new(capacity.max(16)),
            ttl,
            usage: Mutex::new(HashMap::new()),
            hits: lookups.with_label_values(&["hit"]),
            misses: lookups.with_label_values(&["miss"]),
        })
    }

    /// The cached entry for `id`, if present and fresh.
    pub fn get_fresh(&self, id: &str) -> Option<Arc<CachedKey>> {
        let entry = self.entries.get(id)?;
        if entry.fetched().elapsed() < self.ttl {
            self.hits.inc();
            Some(entry)
        } else {
            None
        }
    }

    /// The entry for `id`, from the cache or else the store.
    pub async fn lookup(&self, id: &str) -> Result<Arc<CachedKey>, StoreError> {
        if let Some(entry) = self.get_fresh(id) {
            return Ok(entry);
        }
        self.misses.inc();
        let entry = match self.store.find_key(id).await? {
            Some(record) => {
                let usage = self
                    .usage
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(record.id.clone())
                    .or_default()
                    .clone();
                let quota = record.rate_limit.as_deref().and_then(|text| {
                    let spec = crate::config::rate::parse_rate(text).ok()?;
                    Some(Arc::new(crate::ratelimit::Limit::key_quota(spec)))
                });
                CachedKey::Known {
                    principal: Principal::api_key(&record.consumer, &record.id, record.scopes.clone(), quota),
                    record: Box::new(record),
                    usage,
                    fetched: Instant::now(),
                }
            }
            None => CachedKey::Unknown {
                fetched: Instant::now(),
            },
        };
        let entry = Arc::new(entry);
        self.entries.insert(id.to_string(), entry.clone());
        Ok(entry)
    }

    pub fn invalidate(&self, id: &str) {
        self.entries.remove(id);
    }

    /// Writes accumulated usage to the store.
    pub async fn flush_usage(&self) {
        let pending: Vec<(String, u64, i64)> = {
            let usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
            usage
                .iter()
                .filter_map(|(id, u)| {
                    let uses = u.uses.swap(0, Ordering::Relaxed);
                    (uses > 0).then(|| (id.clone(), uses, u.last_used.load(Ordering::Relaxed)))
                })
                .collect()
        };
        for (id, uses, last_used) in pending {
            if let Err(error) = self.store.add_key_usage(&id, uses as i64, last_used).await {
                tracing::warn!(%error, key_id = %id, "could not record key usage; will retry");
                if let Some(u) = self.usage.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
                    u.uses.fetch_add(uses, Ordering::Relaxed);
                }
            }
        }
    }

    /// Runs the change poll (every second) and the usage flush until the
    /// returned handle is aborted.
    pub fn spawn_maintenance(self: &Arc<Self>, usage_every: Duration) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            // Look back a few seconds on each poll, so a change stamped by an
            // instance whose clock runs a little behind is not missed.
            const OVERLAP_MS: i64 = 5_000;
            let mut seen = now_ms();
            let mut last_flush = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                match cache.store.keys_changed_since(seen - OVERLAP_MS).await {
                    Ok((ids, latest)) => {
                        for id in &ids {
                            cache.invalidate(id);
                        }
                        seen = seen.max(latest);
                    }
                    Err(error) => tracing::debug!(%error, "key change poll failed"),
                }
                if last_flush.elapsed() >= usage_every {
                    cache.flush_usage().await;
                    last_flush = Instant::now();
                }
            }
        })
    }
}
