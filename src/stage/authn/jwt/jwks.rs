//! Remote key sets (JWKS): fetched, cached, refreshed in the background and
//! on demand, and kept through an issuer's outage for a bounded time.
//!
//! - A background task refreshes every `jwks_refresh` (after a failure,
//!   every `jwks_min_refresh_interval`).
//! - A token with a `kid` the cache lacks asks for a refresh, which runs at
//!   most once per `jwks_min_refresh_interval` however many such tokens
//!   arrive, so a flood of random `kid`s cannot hammer the issuer; tokens
//!   that arrive while one runs wait for it rather than start another.
//! - When refreshes fail, the last good keys keep serving for
//!   `jwks_max_stale` after the first failure (one failed fetch must not
//!   reject every request), then are dropped: tokens are refused with 503
//!   until a fetch succeeds. `/readyz` and `portcullis_jwks_stale` say so.
//!
//! Sources live in a process-wide [`JwksRegistry`], so a config reload
//! keeps the warm keys of an unchanged issuer; a source's task ends once no
//! policy uses it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use sha2::{Digest, Sha256};

use super::keys::KeySet;
use crate::audit::{Audit, Event, Severity};
use crate::metrics::Metrics;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    crate::store::now_ms().max(0) as u64
}

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// When a source refreshes and how long it keeps stale keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JwksTiming {
    pub refresh: Duration,
    pub min_interval: Duration,
    pub max_stale: Duration,
}

/// What a source holds now.
#[derive(Default)]
struct KeyState {
    keys: Option<Arc<KeySet>>,
    /// Bumped whenever the keys change, so cached verdicts made with keys
    /// that are gone are not trusted.
    generation: u64,
    /// Digest of the document the keys came from, to tell a change.
    digest: [u8; 32],
    /// Since when refreshes have failed.
    failing_since_ms: Option<u64>,
    last_error: Option<String>,
}

/// How a source is doing, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Refreshes fail; the last good keys serve until they are too old.
    Stale {
        since_ms: u64,
        error: String,
    },
    /// No usable keys: tokens of this issuer are refused.
    Unavailable {
        error: String,
    },
}

/// One issuer's JWKS.
pub struct JwksSource {
    issuer: String,
    url: String,
    timing: JwksTiming,
    client: Option<reqwest::Client>,
    state: ArcSwap<KeyState>,
    /// Fetches started, so a waiter can tell one ran while it waited.
    attempts: AtomicU64,
    last_attempt_ms: AtomicU64,
    refreshing: tokio::sync::Mutex<()>,
    telemetry: Telemetry,
}

/// The keys to verify with, and which generation they are.
pub struct CurrentKeys {
    pub keys: Arc<KeySet>,
    pub generation: u64,
}

impl JwksSource {
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The keys to use now: none before the first good fetch, and none once
    /// refreshes have failed for longer than `max_stale`.
    pub fn current(&self, now: u64) -> Option<CurrentKeys> {
        let state = self.state.load();
        let keys = state.keys.clone()?;
        if let Some(since) = state.failing_since_ms
            && now.saturating_sub(since) > self.timing.max_stale.as_millis() as u64
        {
            return None;
        }
        Some(CurrentKeys {
            keys,
            generation: state.generation,
        })
    }

    pub fn generation(&self) -> u64 {
        self.state.load().generation
    }

    /// Fetches started so far; pass it to [`Self::refresh_on_demand`].
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Acquire)
    }

    pub fn health(&self) -> Health {
        let now = now_ms();
        let state = self.state.load();
        let error = || {
            state
                .last_error
                .clone()
                .unwrap_or_else(|| "not fetched yet".into())
        };
        match (self.current(now), state.failing_since_ms) {
            (None, _) => Health::Unavailable { error: error() },
            (Some(_), Some(since_ms)) => Health::Stale {
                since_ms,
                error: error(),
            },
            (Some(_), None) => Health::Ok,
        }
    }

    /// A refresh for a token whose key is not known (or before any keys
    /// were fetched): runs unless one ran since the caller looked (`seen`
    /// attempts) or the last began less than `min_interval` ago.
    pub async fn refresh_on_demand(&self, seen: u64) {
        let _one_at_a_time = self.refreshing.lock().await;
        if self.attempts() != seen {
            return;
        }
        let since = now_ms().saturating_sub(self.last_attempt_ms.load(Ordering::Acquire));
        if self.attempts() > 0 && since < self.timing.min_interval.as_millis() as u64 {
            return;
        }
        self.fetch_and_store("unknown_kid").await;
    }

    /// A scheduled refresh. Returns whether it succeeded.
    async fn refresh_scheduled(&self) -> bool {
        let _one_at_a_time = self.refreshing.lock().await;
        self.fetch_and_store("scheduled").await
    }

    async fn fetch_and_store(&self, reason: &'static str) -> bool {
        self.attempts.fetch_add(1, Ordering::AcqRel);
        self.last_attempt_ms.store(now_ms(), Ordering::Release);
        let result = match &self.client {
            Some(client) => fetch(client, &self.url).await,
            None => Err("this process does not fetch keys".into()),
        };
        let old = self.state.load_full();
        match result {
            Ok((digest, keys)) => {
                let changed = old.keys.is_none() || old.digest != digest;
                let count = keys.keys.len();
                self.state.store(Arc::new(KeyState {
                    keys: Some(if changed {
                        Arc::new(keys)
                    } else {
                        old.keys.clone().expect("unchanged keys exist")
                    }),
                    generation: old.generation + u64::from(changed),
                    digest,
                    failing_since_ms: None,
                    last_error: None,
                }));
                self.telemetry.refreshed(&self.issuer, count, true);
                if changed || old.failing_since_ms.is_some() {
                    self.telemetry.audit.emit(
                        Event::new("jwks.refresh", Severity::Info)
                            .detail("issuer", self.issuer.as_str())
                            .detail("reason", reason)
                            .detail("outcome", "ok")
                            .detail("keys", count)
                            .detail("changed", changed),
                    );
                }
                true
            }
            Err(error) => {
                tracing::warn!(issuer = %self.issuer, url = %self.url, %error, "JWKS refresh failed");
                let failing_since_ms = old.failing_since_ms.or(Some(now_ms()));
                self.state.store(Arc::new(KeyState {
                    keys: old.keys.clone(),
                    generation: old.generation,
                    digest: old.digest,
                    failing_since_ms,
                    last_error: Some(error.clone()),
                }));
                let serving = self.current(now_ms()).map(|k| k.keys.keys.len()).unwrap_or(0);
                self.telemetry.refreshed(&self.issuer, serving, false);
                self.telemetry.audit.emit(
                    Event::new("jwks.refresh", Severity::Warning)
                        .detail("issuer", self.issuer.as_str())
                        .detail("reason", reason)
                        .detail("outcome", "error")
                        .detail("error", error)
                        .detail("serving_stale", serving > 0),
                );
                false
            }
        }
    }
}

/// Fetches and parses a JWKS document, with a time and size bound.
async fn fetch(client: &reqwest::Client, url: &str) -> Result<([u8; 32], KeySet), String> {
    let mut response = client
        .get(url)
        .header(http::header::ACCEPT, "application/json, application/jwk-set+json")
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("fetch failed: {}", without_url(&e)))?;
    if !response.status().is_success() {
        return Err(format!("the issuer answered {}", response.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading failed: {}", without_url(&e)))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("the document is larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let keys = KeySet::from_jwks(&set);
    if keys.is_empty() {
        return Err("the document holds no usable signing key".into());
    }
    Ok((Sha256::digest(&body).into(), keys))
}

/// A reqwest error's text without the URL (logged separately, once).
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text
            .replace(&format!(" ({url})"), "")
            .replace(url.as_str(), "the URL");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Metrics and audit shared by every source.
#[derive(Clone)]
struct Telemetry {
    refreshes: IntCounterVec,
    keys: IntGaugeVec,
    stale: IntGaugeVec,
    audit: Audit,
}

impl Telemetry {
    fn refreshed(&self, issuer: &str, keys: usize, ok: bool) {
        self.refreshes
            .with_label_values(&[issuer, if ok { "ok" } else { "error" }])
            .inc();
        self.keys.with_label_values(&[issuer]).set(keys as i64);
        self.stale
            .with_label_values(&[issuer])
            .set(i64::from(!ok && keys > 0));
    }
}

/// Every JWKS source of the process, by issuer, URL and timing.
pub struct JwksRegistry {
    client: Option<reqwest::Client>,
    telemetry: Telemetry,
    sources: Mutex<HashMap<(String, String, JwksTiming), Weak<JwksSource>>>,
}

impl JwksRegistry {
    /// A registry that fetches.
    pub fn new(metrics: &Metrics, audit: Audit) -> Arc<JwksRegistry> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .ok();
        Self::build(client, metrics, audit)
    }

    /// A registry that never fetches (for `check` and unit tests).
    pub fn offline(metrics: &Metrics) -> Arc<JwksRegistry> {
        Self::build(None, metrics, Audit::disabled())
    }

    fn build(client: Option<reqwest::Client>, metrics: &Metrics, audit: Audit) -> Arc<JwksRegistry> {
        let refreshes = IntCounterVec::new(
            Opts::new(
                "portcullis_jwks_refreshes_total",
                "JWKS fetches, by issuer and result (ok, error).",
            ),
            &["issuer", "result"],
        )
        .expect("metric definitions are valid");
        let keys = IntGaugeVec::new(
            Opts::new("portcullis_jwks_keys", "Signing keys in use, by issuer."),
            &["issuer"],
        )
        .expect("metric definitions are valid");
        let stale = IntGaugeVec::new(
            Opts::new(
                "portcullis_jwks_stale",
                "1 while an issuer's JWKS cannot be refreshed and its last good keys serve, else 0.",
            ),
            &["issuer"],
        )
        .expect("metric definitions are valid");
        metrics.register(Box::new(refreshes.clone()));
        metrics.register(Box::new(keys.clone()));
        metrics.register(Box::new(stale.clone()));
        Arc::new(JwksRegistry {
            client,
            telemetry: Telemetry {
                refreshes,
                keys,
                stale,
                audit,
            },
            sources: Mutex::new(HashMap::new()),
        })
    }

    /// The HTTP client (for identity providers too), if this process fetches.
    pub fn http(&self) -> Option<reqwest::Client> {
        self.client.clone()
    }

    /// How each live source is doing, by issuer name.
    pub fn health(&self) -> Vec<(String, Health)> {
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, Health)> = sources
            .values()
            .filter_map(Weak::upgrade)
            .map(|s| (s.issuer.clone(), s.health()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The source for an issuer's JWKS: the one already running, or a new
    /// one whose background refresh starts now (when this process fetches
    /// and runs inside Tokio).
    pub fn source(&self, issuer: &str, url: &str, timing: JwksTiming) -> Arc<JwksSource> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.retain(|_, weak| weak.strong_count() > 0);
        let id = (issuer.to_string(), url.to_string(), timing);
        if let Some(existing) = sources.get(&id).and_then(Weak::upgrade) {
            return existing;
        }
        let source = Arc::new(JwksSource {
            issuer: issuer.to_string(),
            url: url.to_string(),
            timing,
            client: self.client.clone(),
            state: ArcSwap::from_pointee(KeyState::default()),
            attempts: AtomicU64::new(0),
            last_attempt_ms: AtomicU64::new(0),
            refreshing: tokio::sync::Mutex::new(()),
            telemetry: self.telemetry.clone(),
        });
        sources.insert(id, Arc::downgrade(&source));
        if source.client.is_some()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(refresh_in_background(Arc::downgrade(&source)));
        }
        source
    }
}

/// Refreshes a source on its schedule until no policy holds it.
async fn refresh_in_background(source: Weak<JwksSource>) {
    loop {
        let Some(strong) = source.upgrade() else {
            return;
        };
        let ok = strong.refresh_scheduled().await;
        let wait = if ok {
            strong.timing.refresh
        } else {
            strong.timing.min_interval
        };
        drop(strong);
        tokio::time::sleep(wait).await;
    }
}
