//! The one audit log: every authentication decision, limit hit, admin
//! change and config reload, written to the store and optionally a
//! JSON-lines file, each hash-chained so an edit, deletion or reordering is
//! detectable (`portcullis audit verify`).
//!
//! Stages call [`Audit::emit`], which never blocks: the event goes into a
//! bounded queue drained by one writer task ([`writer`]). When the store is
//! unavailable events are appended to a local spill file and replayed, in
//! order, when it returns. An event that cannot even be queued is counted
//! (`portcullis_audit_dropped_total`) and reported by an `audit.dropped`
//! event once the writer catches up.
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
    /// Answer once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// Counters shared by every handle and the writer.
#[derive(Default)]
pub struct AuditCounters {
    pub dropped: AtomicU64,
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
    dropped_metric: prometheus::IntCounter,
}

impl Audit {
    /// A handle that records nothing (for `check` and unit tests).
    pub fn disabled() -> Audit {
        Audit { inner: None }
    }

    /// Queues an event without waiting. If the queue is full the event is
    /// counted as dropped and reported later.
    pub fn emit(&self, event: Event) {
        let Some(inner) = &self.inner else { return };
        if inner.queue.try_send(Command::Event(Box::new(event))).is_err() {
            inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
            inner.dropped_metric.inc();
        }
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
