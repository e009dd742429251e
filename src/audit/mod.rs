//! The one audit log: every authentication decision, limit hit, admin
//! change and config reload, written to the store and optionally a
//! JSON-lines file, each hash-chained so an edit, deletion or reordering is
//! detectable (`portcullis audit verify`).
//!
//! Stages call [`Audit::emit`], which never blocks: the event goes into a
//! bounded queue drained by one writer task ([`writer`]). When the store is
//! unavailable events are appended to a local spill file and replayed, in
//! order, when it returns; a store that does not commit within a deadline
//! counts as unavailable, so events reach the store or the fsynced spill
//! within a bounded time whatever the store does. An event that finds the
//! queue full goes to the spill file through a bounded overflow; one that
//! cannot even be held there is counted (`portcullis_audit_dropped_total`)
//! and reported by an `audit.dropped` event once the writer catches up.
//!
//! Events never carry secrets: no key, token, cookie or `Authorization`
//! value, only IDs the gateway assigned (a key's public ID, a consumer's name).

pub mod chain;
pub mod writer;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use chain::{ChainedEvent, Verifier};
pub use writer::start;

/// `2026-11-01T00:00:00Z` or an age (`24h`, `30d`) as Unix milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(age) = crate::config::units::parse_duration(text) {
        return Ok(crate::store::now_ms() - age.as_millis() as i64);
    }
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|_| format!("`{text}` is neither an RFC 3339 time nor an age such as 24h"))?;
    Ok(time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Notice,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Notice => "notice",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Severity {
        match text {
            "notice" => Severity::Notice,
            "warning" => Severity::Warning,
            "critical" => Severity::Critical,
            _ => Severity::Info,
        }
    }
}

/// One audit event before it is chained.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Event {
    /// A random ID, the same in every sink.
    pub id: String,
    /// Unix milliseconds.
    pub time: i64,
    /// `auth.failure`, `key.created`, `config.reloaded`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub severity: Severity,
    pub request_id: Option<String>,
    pub client_ip: Option<String>,
    pub consumer: Option<String>,
    pub route: Option<String>,
    /// Facts specific to the type; never secrets.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl Event {
    pub fn new(kind: &str, severity: Severity) -> Event {
        Event {
            id: crate::keys::random_alnum(20),
            time: crate::store::now_ms(),
            kind: kind.to_string(),
            severity,
            request_id: None,
            client_ip: None,
            consumer: None,
            route: None,
            details: serde_json::Value::Object(Default::default()),
        }
    }

    /// Fills request_id, client_ip and route from a request's context.
    pub fn for_request(mut self, cx: &crate::pipeline::RequestCx) -> Event {
        self.request_id = Some(cx.request_id().to_string());
        self.client_ip = Some(cx.client_ip.to_string());
        self.route = cx.route.as_ref().map(|r| r.id.to_string());
        self
    }

    pub fn client_ip(mut self, ip: IpAddr) -> Event {
        self.client_ip = Some(ip.to_string());
        self
    }

    pub fn consumer(mut self, name: impl Into<String>) -> Event {
        self.consumer = Some(name.into());
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Event {
        if let serde_json::Value::Object(map) = &mut self.details {
            map.insert(key.to_string(), value.into());
        }
        self
    }
}

/// What is wrong with `[audit]`, as `(key, problem)` pairs.
pub fn config_problems(config: &crate::config::AuditConfig) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if !(0.0..=1.0).contains(&config.auth_success_sample) {
        problems.push((
            "audit.auth_success_sample",
            "must be between 0.0 and 1.0".to_string(),
        ));
    }
    if config.queue == 0 || config.queue > 10_000_000 {
        problems.push(("audit.queue", "must be between 1 and 10000000".to_string()));
    }
    if config.retention.is_some_and(|r| r.0.is_zero()) {
        problems.push((
            "audit.retention",
            "must be more than zero, or left out to keep events".to_string(),
        ));
    }
    for kind in &config.sync {
        let name = kind.strip_suffix('*').unwrap_or(kind);
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
            || kind.contains("**")
        {
            problems.push((
                "audit.sync",
                format!("`{kind}` is not an event kind such as `auth.failure`, or a prefix such as `key.*`"),
            ));
        }
    }
    if config.spill_file.as_os_str().is_empty() {
        problems.push(("audit.spill_file", "needs a file name".to_string()));
    }
    if config.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
        problems.push(("audit.file", "needs a file name, or leave it out".to_string()));
    }
    problems
}

pub(crate) enum Command {
    Event(Box<Event>),
    /// An event of a `sync` kind: answer once it is in the store or the
    /// spill file (or counted as lost when neither takes it).
    Durable(Box<Event>, oneshot::Sender<()>),
    /// Answer once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// The most a request or command waits for a `sync` event: far beyond the
/// writer's bound (a batch window, the store deadline, one fsync), so it
/// only ends a wait on a writer that is not running.
pub const SYNC_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `[audit] sync`: exact kinds and `prefix.*` patterns.
#[derive(Debug, Default)]
struct SyncKinds {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl SyncKinds {
    fn new(patterns: &[String]) -> SyncKinds {
        let mut kinds = SyncKinds::default();
        for pattern in patterns {
            match pattern.strip_suffix('*') {
                Some(prefix) => kinds.prefixes.push(prefix.to_string()),
                None => kinds.exact.push(pattern.clone()),
            }
        }
        kinds
    }

    fn contains(&self, kind: &str) -> bool {
        self.exact.iter().any(|k| k == kind) || self.prefixes.iter().any(|p| kind.starts_with(p.as_str()))
    }
}

/// Waits (at most [`SYNC_WAIT_LIMIT`] in all) until the `sync` events
/// behind `waits` are written.
pub async fn wait_durable(waits: Vec<oneshot::Receiver<()>>) {
    let all = futures_util::future::join_all(waits);
    let _ = tokio::time::timeout(SYNC_WAIT_LIMIT, all).await;
}

/// State shared by every handle and the writer.
pub struct AuditCounters {
    /// Events lost: neither queued nor held in the overflow, or neither
    /// stored nor spilled.
    pub dropped: AtomicU64,
    /// Events that found the queue full, for the writer to put in the
    /// spill file; at most `overflow_cap`.
    overflow: std::sync::Mutex<Vec<Event>>,
    overflow_cap: usize,
    /// Events in the spill file now.
    spill_pending: AtomicU64,
    /// Whether the last batch reached the store or the spill file
    /// (`/readyz` goes unready when it reached neither: events are lost).
    spill_writable: std::sync::atomic::AtomicBool,
    /// `portcullis_audit_dropped_total`, beside `dropped`.
    dropped_metric: prometheus::IntCounter,
}

impl AuditCounters {
    pub(crate) fn new(overflow_cap: usize, dropped_metric: prometheus::IntCounter) -> AuditCounters {
        AuditCounters {
            dropped_metric,
            dropped: AtomicU64::new(0),
            overflow: std::sync::Mutex::new(Vec::new()),
            overflow_cap,
            spill_pending: AtomicU64::new(0),
            spill_writable: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Counts `n` events lost.
    pub(crate) fn lose(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.dropped_metric.inc_by(n);
    }

    fn overflow(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        self.overflow.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds an event that found the queue full; `false` when the overflow
    /// is full too.
    fn hold(&self, event: Event) -> bool {
        let mut overflow = self.overflow();
        if overflow.len() >= self.overflow_cap {
            return false;
        }
        overflow.push(event);
        true
    }

    pub(crate) fn take_overflow(&self) -> Vec<Event> {
        std::mem::take(&mut *self.overflow())
    }

    pub(crate) fn set_spill_pending(&self, pending: u64) {
        self.spill_pending.store(pending, Ordering::Relaxed);
    }

    pub(crate) fn set_spill_state(&self, pending: u64, writable: bool) {
        self.spill_pending.store(pending, Ordering::Relaxed);
        self.spill_writable.store(writable, Ordering::Relaxed);
    }
}

impl Inner {
    /// An event that found the queue full: held for the spill file, or lost.
    fn overflowed(&self, command: Command) {
        let held = match command {
            Command::Event(event) | Command::Durable(event, _) => self.counters.hold(*event),
            Command::Flush(_) => true,
        };
        if !held {
            self.counters.lose(1);
        }
    }
}

/// The audit writer's state, for `/readyz` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHealth {
    /// Events waiting in the spill file for the store.
    pub spill_pending: u64,
    /// Whether the last batch reached the store or the spill file.
    pub spill_writable: bool,
}

/// A cheap, cloneable handle for emitting events.
#[derive(Clone)]
pub struct Audit {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    queue: mpsc::Sender<Command>,
    counters: Arc<AuditCounters>,
    success_sample: f64,
    sync: SyncKinds,
}

impl Audit {
    /// A handle that records nothing (for `check` and unit tests).
    pub fn disabled() -> Audit {
        Audit { inner: None }
    }

    /// Queues an event without waiting. If the queue is full the event is
    /// held for the writer to put in the spill file; if that overflow (as
    /// large as the queue) is full too, it is counted as dropped and
    /// reported later by an `audit.dropped` event.
    pub fn emit(&self, event: Event) {
        let Some(inner) = &self.inner else { return };
        let Err(failed) = inner.queue.try_send(Command::Event(Box::new(event))) else {
            return;
        };
        inner.overflowed(failed.into_inner());
    }

    /// Queues an event like [`Audit::emit`]; for a kind `[audit] sync`
    /// names, also returns what to wait on (see [`wait_durable`]) before
    /// answering the request or command it records.
    #[must_use = "a sync event's request waits for it"]
    pub fn emit_waitable(&self, event: Event) -> Option<oneshot::Receiver<()>> {
        let inner = self.inner.as_ref()?;
        if !inner.sync.contains(&event.kind) {
            self.emit(event);
            return None;
        }
        let (done, wait) = oneshot::channel();
        match inner.queue.try_send(Command::Durable(Box::new(event), done)) {
            Ok(()) => Some(wait),
            // The overflow goes to the spill file with nobody to tell.
            Err(failed) => {
                inner.overflowed(failed.into_inner());
                None
            }
        }
    }

    /// Emits an event and, for a `sync` kind, waits until it is written.
    pub async fn record(&self, event: Event) {
        if let Some(wait) = self.emit_waitable(event) {
            wait_durable(vec![wait]).await;
        }
    }

    /// The writer's state (`None` for a handle that records nothing).
    pub fn health(&self) -> Option<AuditHealth> {
        let counters = &self.inner.as_ref()?.counters;
        Some(AuditHealth {
            spill_pending: counters.spill_pending.load(Ordering::Relaxed),
            spill_writable: counters.spill_writable.load(Ordering::Relaxed),
        })
    }

    /// Whether this successful authentication should be recorded.
    pub fn sample_success(&self) -> bool {
        match &self.inner {
            None => false,
            Some(inner) => inner.success_sample >= 1.0 || rand::random::<f64>() < inner.success_sample,
        }
    }

    /// Waits until every event queued so far is written (to the store or
    /// the spill file).
    pub async fn flush(&self) {
        let Some(inner) = &self.inner else { return };
        let (done, wait) = oneshot::channel();
        if inner.queue.send(Command::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}
