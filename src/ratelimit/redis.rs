//! The Redis backend: one round trip per request (a Lua script, loaded once
//! and run by its hash) checks and updates all of a request's counters with
//! Redis's own clock, and each counter expires by itself when it no longer
//! matters. Two gateways sharing one Redis enforce one limit together.
//!
//! When Redis cannot be reached (an error or no answer within
//! `[redis] timeout`), the backend is marked degraded and `on_outage`
//! decides: `local` uses this instance's in-process limiter (each instance
//! then enforces the full limit), `open` lets requests through, `closed`
//! answers 503. A background task reconnects every 200 ms and switches back
//! as soon as Redis answers. Each switch is logged, audited
//! (`ratelimit.degraded`, `ratelimit.restored`) and counted.
//!
//! The same connection carries key-change notices (pub/sub), so a revoked
//! key is dropped from every instance's cache at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use prometheus::{IntCounterVec, IntGauge, Opts};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use super::gcra::{Check, Rate};
use crate::audit::{Audit, Event, Severity};
use crate::config::{OnOutage, RedisConfig};
use crate::keys::KeyCache;

/// GCRA over all of a request's counters, all or nothing. Mirrors
/// [`super::gcra::check`]; times in microseconds from Redis's `TIME`.
/// Returns `{allowed, then per counter: allowed, remaining, reset, retry_after}`.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {1}
local tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local stored = redis.call('GET', KEYS[i])
  local tat = now
  if stored then
    tat = math.max(tonumber(stored), now)
  end
  local ahead = tat - now
  if ahead > tolerance then
    out[1] = 0
    table.insert(out, 0)
    table.insert(out, 0)
    table.insert(out, ahead)
    table.insert(out, ahead - tolerance)
  else
    tats[i] = tat + interval
    table.insert(out, 1)
    table.insert(out, math.floor((tolerance - ahead) / interval))
    table.insert(out, ahead + interval)
    table.insert(out, 0)
  end
end
if out[1] == 1 then
  for i = 1, #KEYS do
    local ttl = math.ceil((tats[i] - now) / 1000)
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', string.format('%.0f', ttl))
  end
end
return out
"#;

/// How often a degraded backend tries Redis again.
const RECONNECT_EVERY: Duration = Duration::from_millis(200);

pub struct RedisLimiter {
    client: redis::Client,
    conn: ArcSwapOption<MultiplexedConnection>,
    script: redis::Script,
    timeout: Duration,
    pub on_outage: OnOutage,
    pub prefix: String,
    healthy: AtomicBool,
    audit: Audit,
    switches: IntCounterVec,
    state: IntGauge,
}

fn connection_config(timeout: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
        .set_response_timeout(Some(timeout))
}

impl RedisLimiter {
    /// Builds the backend and tries to connect once; an unreachable Redis
    /// starts it degraded rather than stopping the gateway. Only an invalid
    /// URL is an error.
    pub async fn start(
        config: &RedisConfig,
        audit: Audit,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Arc<RedisLimiter>, redis::RedisError> {
        let client = redis::Client::open(config.url.as_str())?;
        let switches = IntCounterVec::new(
            Opts::new(
                "portcullis_ratelimit_backend_switches_total",
                "Switches of the rate-limit backend, by direction (degraded, restored).",
            ),
            &["direction"],
        )
        .expect("metric definitions are valid");
        let state = IntGauge::new(
            "portcullis_ratelimit_redis_up",
            "1 while the Redis rate-limit backend is in use, 0 while degraded.",
        )
        .expect("metric definitions are valid");
        metrics.register(Box::new(switches.clone()));
        metrics.register(Box::new(state.clone()));
        let limiter = Arc::new(RedisLimiter {
            client,
            conn: ArcSwapOption::empty(),
            script: redis::Script::new(SCRIPT),
            timeout: config.timeout.0,
            on_outage: config.on_outage,
            prefix: config.prefix.clone(),
            healthy: AtomicBool::new(false),
            audit,
            switches,
            state,
        });
        if limiter.reconnect().await.is_err() {
            tracing::warn!(
                on_outage = ?limiter.on_outage,
                "Redis is not reachable at start; rate limits run degraded until it is"
            );
            limiter.audit.emit(
                Event::new("ratelimit.degraded", Severity::Warning)
                    .detail("reason", "unreachable at start")
                    .detail("on_outage", format!("{:?}", limiter.on_outage).to_lowercase()),
            );
            limiter.switches.with_label_values(&["degraded"]).inc();
        }
        Ok(limiter)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    async fn reconnect(&self) -> Result<(), redis::RedisError> {
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&connection_config(self.timeout))
            .await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        self.script.load_async(&mut conn).await?;
        self.conn.store(Some(Arc::new(conn)));
        self.healthy.store(true, Ordering::Relaxed);
        self.state.set(1);
        Ok(())
    }

    fn mark_down(&self, why: &str) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            self.state.set(0);
            self.switches.with_label_values(&["degraded"]).inc();
            tracing::warn!(reason = why, on_outage = ?self.on_outage, "Redis rate-limit backend degraded");
            self.audit.emit(
                Event::new("ratelimit.degraded", Severity::Warning)
                    .detail("reason", why)
                    .detail("on_outage", format!("{:?}", self.on_outage).to_lowercase()),
            );
        }
    }

    /// Runs the script over `counters`; `None` means Redis is unavailable
    /// and the caller applies `on_outage`.
    pub async fn check(&self, counters: &[(String, Rate)]) -> Option<Vec<Check>> {
        if !self.is_healthy() {
            return None;
        }
        let mut conn = MultiplexedConnection::clone(&*self.conn.load_full()?);
        let mut invocation = self.script.prepare_invoke();
        for (key, rate) in counters {
            invocation.key(key.as_str());
            invocation.arg(rate.emission_us).arg(rate.tolerance_us);
        }
        let call = invocation.invoke_async::<Vec<i64>>(&mut conn);
        let reply = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => {
                self.mark_down(&error.to_string());
                return None;
            }
            Err(_) => {
                self.mark_down("no answer within the timeout");
                return None;
            }
        };
        if reply.len() != 1 + 4 * counters.len() {
            self.mark_down("unexpected script reply");
            return None;
        }
        Some(
            reply[1..]
                .chunks(4)
                .map(|c| Check {
                    allowed: c[0] == 1,
                    new_tat: 0,
                    remaining: c[1].clamp(0, u32::MAX as i64) as u32,
                    reset_us: c[2],
                    retry_after_us: c[3],
                })
                .collect(),
        )
    }

    /// Tries to reconnect while degraded, until the handle is aborted.
    pub fn spawn_reconnector(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let limiter = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RECONNECT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if limiter.is_healthy() {
                    continue;
                }
                if limiter.reconnect().await.is_ok() {
                    limiter.switches.with_label_values(&["restored"]).inc();
                    tracing::info!("Redis rate-limit backend restored");
                    limiter
                        .audit
                        .emit(Event::new("ratelimit.restored", Severity::Notice));
                }
            }
        })
    }

    /// Tells every instance that a key changed (best effort).
    pub async fn publish_key_change(&self, key_id: &str) {
        self.publish(key_channel(&self.prefix), key_id).await;
    }

    /// Tells every instance that a session was revoked (best effort; they
    /// also notice within a second by polling the store).
    pub async fn publish_session_revoked(&self, id_hash: &str) {
        self.publish(session_channel(&self.prefix), id_hash).await;
    }

    async fn publish(&self, channel: String, payload: &str) {
        let Some(conn) = self.conn.load_full() else { return };
        let mut conn = MultiplexedConnection::clone(&conn);
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&channel).arg(payload);
        match tokio::time::timeout(self.timeout, publish.query_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::debug!(%error, %channel, "could not publish"),
            Err(_) => tracing::debug!(%channel, "could not publish in time"),
        }
    }

    /// Drops keys from `cache` as other instances announce changes.
    pub fn spawn_key_listener(self: &Arc<Self>, cache: Arc<KeyCache>) -> tokio::task::JoinHandle<()> {
        self.spawn_listener(key_channel(&self.prefix), move |id| cache.invalidate(&id))
    }

    /// Drops sessions from `cache` as other instances revoke them.
    pub fn spawn_session_listener(
        self: &Arc<Self>,
        cache: Arc<crate::sessions::SessionCache>,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_listener(session_channel(&self.prefix), move |hash| {
            cache.invalidate_hash(&hash)
        })
    }

    /// Calls `on_message` with each message on `channel`; keeps
    /// resubscribing after errors.
    fn spawn_listener(
        self: &Arc<Self>,
        channel: String,
        on_message: impl Fn(String) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let limiter = self.clone();
        tokio::spawn(async move {
            loop {
                match limiter.client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if pubsub.subscribe(&channel).await.is_ok() {
                            let mut messages = pubsub.on_message();
                            while let Some(msg) = messages.next().await {
                                if let Ok(payload) = msg.get_payload::<String>() {
                                    on_message(payload);
                                }
                            }
                        }
                    }
                    Err(error) => tracing::debug!(%error, %channel, "subscription failed; retrying"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }
}

/// What is wrong with `[redis]`, as `(key, problem)` pairs.
pub fn config_problems(redis: &RedisConfig) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if redis::Client::open(redis.url.as_str()).is_err() {
        problems.push((
            "redis.url",
            "not a Redis URL such as redis://127.0.0.1:6379".to_string(),
        ));
    }
    if redis.timeout.0.is_zero() || redis.timeout.0 > Duration::from_secs(10) {
        problems.push(("redis.timeout", "must be between 1ms and 10s".to_string()));
    }
    if redis.prefix.is_empty() || redis.prefix.contains(['{', '}', ' ']) {
        problems.push((
            "redis.prefix",
            "must be non-empty, without braces or spaces".to_string(),
        ));
    }
    problems
}

pub fn key_channel(prefix: &str) -> String {
    format!("{prefix}:keys:changed")
}

pub fn session_channel(prefix: &str) -> String {
    format!("{prefix}:sessions:revoked")
}

/// Publishes a key change from a short-lived process (the CLI).
pub async fn publish_key_change_once(config: &RedisConfig, key_id: &str) -> Result<(), redis::RedisError> {
    publish_once(config, key_channel(&config.prefix), &[key_id]).await
}

/// Publishes revoked sessions from a short-lived process (the CLI).
pub async fn publish_sessions_revoked_once(
    config: &RedisConfig,
    hashes: &[String],
) -> Result<(), redis::RedisError> {
    let hashes: Vec<&str> = hashes.iter().map(String::as_str).collect();
    publish_once(config, session_channel(&config.prefix), &hashes).await
}

async fn publish_once(
    config: &RedisConfig,
    channel: String,
    payloads: &[&str],
) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(config.url.as_str())?;
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&connection_config(Duration::from_secs(1)))
        .await?;
    for payload in payloads {
        redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(payload)
            .query_async::<i64>(&mut conn)
            .await?;
    }
    Ok(())
}
