//! Process-wide services that outlive any one policy: metrics, the store,
//! the key cache and the audit log. A policy's stages hold handles to them;
//! a reload builds new stages over the same services.

use std::sync::Arc;

use crate::audit::Audit;
use crate::keys::KeyCache;
use crate::metrics::Metrics;
use crate::ratelimit::local::LocalLimiter;
use crate::ratelimit::redis::RedisLimiter;
use crate::sessions::SessionCache;
use crate::stage::authn::jwt::JwksRegistry;
use crate::store::Store;

#[derive(Clone)]
pub struct Runtime {
    pub metrics: Arc<Metrics>,
    pub store: Option<Store>,
    pub keys: Option<Arc<KeyCache>>,
    pub audit: Audit,
    /// Counters of the in-process limiter (also the `local` fallback while
    /// Redis is down).
    pub limiter: Arc<LocalLimiter>,
    pub redis: Option<Arc<RedisLimiter>>,
    /// When each rate-limit counter last made an audit event.
    pub limit_audit: Arc<quick_cache::sync::Cache<u64, std::time::Instant>>,
    /// JWT issuers' key sets, kept warm across reloads.
    pub jwks: Arc<JwksRegistry>,
    /// Login sessions (with a store).
    pub sessions: Option<Arc<SessionCache>>,
    /// Open WebSocket connections (caps, shutdown).
    pub websockets: Arc<crate::websocket::WebSockets>,
    /// Each upstream target's breaker and health-check state, kept across
    /// reloads.
    pub targets: Arc<crate::upstream::health::TargetRegistry>,
}

impl Runtime {
    /// The rate-limit backends, for a limiting stage.
    pub fn limiters(&self) -> crate::ratelimit::Limiters {
        crate::ratelimit::Limiters {
            local: self.limiter.clone(),
            redis: self.redis.clone(),
        }
    }

    /// No store, no Redis, no audit and no key fetching, with a metrics registry of its own:
    /// enough to compile and check a config.
    pub fn offline() -> Runtime {
        let metrics = Arc::new(Metrics::new());
        Runtime {
            jwks: JwksRegistry::offline(&metrics),
            sessions: None,
            limiter: Arc::new(LocalLimiter::new(1024, &metrics)),
            metrics,
            store: None,
            keys: None,
            audit: Audit::disabled(),
            redis: None,
            limit_audit: Arc::new(quick_cache::sync::Cache::new(16)),
            websockets: crate::websocket::WebSockets::new(),
            targets: Default::default(),
        }
    }
}
