//! What is known about each target's health: its circuit breaker (passive
//! health) and the result of its active health checks. Kept in a registry
//! across config reloads, so a reload neither forgets an ejected target nor
//! sends traffic back to one the checks took out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{HeaderValue, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use super::breaker::Breaker;
use super::config::HealthCheckConfig;
use super::connect::Endpoint;
use crate::metrics::Metrics;

/// One target's health, shared by every policy that has the target.
pub struct TargetHealth {
    pub breaker: Breaker,
    /// False while the active checks say the target is down.
    healthy: AtomicBool,
    /// Consecutive check results against the current state.
    streak: AtomicU32,
    /// Whether any check ran (for `/readyz`).
    checked: AtomicBool,
    healthy_gauge: prometheus::IntGauge,
    name: String,
}

impl TargetHealth {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// `"healthy"`, `"unhealthy"`, or `"unchecked"` without active checks.
    pub fn check_state(&self) -> &'static str {
        match (self.checked.load(Ordering::Relaxed), self.is_healthy()) {
            (false, _) => "unchecked",
            (true, true) => "healthy",
            (true, false) => "unhealthy",
        }
    }

    /// Counts one active check's result; a streak of `healthy_threshold`
    /// passes (or `unhealthy_threshold` failures) against the current
    /// state flips it.
    pub fn observe(&self, passed: bool, config: &HealthCheckConfig, detail: &str) {
        self.checked.store(true, Ordering::Relaxed);
        if passed == self.is_healthy() {
            self.streak.store(0, Ordering::Relaxed);
            return;
        }
        let needed = if passed {
            config.healthy_threshold
        } else {
            config.unhealthy_threshold
        };
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        if streak >= needed {
            self.streak.store(0, Ordering::Relaxed);
            self.healthy.store(passed, Ordering::Release);
            self.healthy_gauge.set(i64::from(passed));
            if passed {
                tracing::info!(backend = %self.name, "health check passing: target back in service");
            } else {
                tracing::warn!(backend = %self.name, detail, "health check failing: target taken out of service");
            }
        }
    }
}

/// The targets known to this process, by upstream name and target URL.
#[derive(Default)]
pub struct TargetRegistry {
    targets: Mutex<HashMap<(String, String), Weak<TargetHealth>>>,
}

impl TargetRegistry {
    /// The health of `url` in `upstream`: the one a running policy shares,
    /// or a new one (closed and healthy).
    pub fn get(&self, metrics: &Metrics, upstream: &str, url: &str, label: &str) -> Arc<TargetHealth> {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        targets.retain(|_, weak| weak.strong_count() > 0);
        let key = (upstream.to_string(), url.to_string());
        if let Some(health) = targets.get(&key).and_then(Weak::upgrade) {
            return health;
        }
        let handles = metrics.for_target(upstream, label);
        handles.healthy.set(1);
        let name = format!("{upstream} {label}");
        let health = Arc::new(TargetHealth {
            breaker: Breaker::new(name.clone(), handles.breaker_state, handles.ejections),
            healthy: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            checked: AtomicBool::new(false),
            healthy_gauge: handles.healthy,
            name,
        });
        targets.insert(key, Arc::downgrade(&health));
        health
    }
}

/// One `GET` of the check path on a connection of its own; `Ok` with the
/// status, or why there is none.
pub async fn check_once(
    endpoint: &Endpoint,
    host: &HeaderValue,
    config: &HealthCheckConfig,
) -> Result<u16, String> {
    let exchange = async {
        let stream = endpoint
            .open()
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let h2 = endpoint
            .speaks_h2(&stream)
            .map_err(|e| format!("cannot connect: {e}"))?;
        let host = match &config.host {
            Some(h) => HeaderValue::try_from(h.as_str()).unwrap_or_else(|_| host.clone()),
            None => host.clone(),
        };
        let mut request = Request::get(config.path.as_str())
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "portcullis-health-check")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = if h2 {
            // The connection task ends when `sender` is dropped.
            let mut sender = super::h2::handshake(stream)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            super::h2::prepare(&mut request, endpoint.tls.is_some());
            sender.send_request(request).await
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            request
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            // The connection is driven by a task of its own, which ends when
            // the target closes it or `sender` is dropped.
            tokio::spawn(tokio::time::timeout(config.timeout.0, connection));
            sender.send_request(request).await
        };
        response
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("request: {e}"))
    };
    match tokio::time::timeout(config.timeout.0, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no response within {} ms", config.timeout.0.as_millis())),
    }
}

/// Runs `check` every `interval` while `upstream` lives.
pub fn spawn_checks<U, F, Fut>(upstream: Weak<U>, interval: Duration, check: F)
where
    U: Send + Sync + 'static,
    F: Fn(Arc<U>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(upstream) = upstream.upgrade() else {
                return;
            };
            check(upstream).await;
        }
    });
}
