//! Prometheus metrics, all named `portcullis_…`.
//!
//! The registry lives for the whole process; a compiled policy takes handles
//! for its routes and upstreams once, so recording a request is a few atomic
//! additions, with no label lookup or lock on the hot path.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets in seconds, from 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    upstream_errors: IntCounterVec,
    upstream_reachable: IntGaugeVec,
    upstream_retries: IntCounterVec,
    breaker_state: IntGaugeVec,
    ejections: IntCounterVec,
    target_healthy: IntGaugeVec,
    /// Targets whose reachability gauge exists (kept across reloads).
    known_targets: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    pub connections_open: IntGauge,
    /// Public listener connections parked between requests.
    pub connections_parked: IntGauge,
    pub admin_connections_open: IntGauge,
    worker_connections_open: IntGaugeVec,
    /// 1 while the store answers (its last ping or audit write worked).
    store_available: IntGauge,
    pub config_reloads: IntCounterVec,
    rate_limited: IntCounterVec,
    /// Refusals a protection in report mode let through.
    would_refuse: IntCounterVec,
    /// Upload scans by result.
    upload_scans: IntCounterVec,
    /// For requests that matched no route.
    pub unrouted: RouteMetrics,
    websocket: WebSocketVecs,
    pub auth: AuthMetrics,
}

/// Authentication outcomes, by method: successes through handles made once
/// (no label lookup on the request path), failures by reason.
#[derive(Clone)]
pub struct AuthMetrics {
    /// api_key, jwt, session, mtls.
    successes: [IntCounter; 4],
    outcomes: IntCounterVec,
}

impl AuthMetrics {
    fn new(outcomes: IntCounterVec) -> AuthMetrics {
        let success = |method| outcomes.with_label_values(&[method, "success"]);
        AuthMetrics {
            successes: [
                success("api_key"),
                success("jwt"),
                success("session"),
                success("mtls"),
            ],
            outcomes,
        }
    }

    pub fn success(&self, method: crate::principal::Method) {
        use crate::principal::Method;
        let i = match method {
            Method::ApiKey => 0,
            Method::Jwt => 1,
            Method::Session => 2,
            Method::Mtls => 3,
        };
        self.successes[i].inc();
    }

    /// A refusal; `method` is "none" when no credential was presented.
    pub fn failure(&self, method: &str, reason: &str) {
        self.outcomes.with_label_values(&[method, reason]).inc();
    }
}

/// Handles for one route.
#[derive(Clone)]
pub struct RouteMetrics {
    /// Requests by status class: 1xx..5xx.
    by_class: [IntCounter; 5],
    duration: Histogram,
    /// Rate-limit decisions: allowed, limited.
    limits: [IntCounter; 2],
}

impl RouteMetrics {
    pub fn record_limit(&self, allowed: bool) {
        self.limits[if allowed { 0 } else { 1 }].inc();
    }

    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

struct WebSocketVecs {
    active: IntGaugeVec,
    messages: IntCounterVec,
    bytes: IntCounterVec,
    closes: IntCounterVec,
}

impl WebSocketVecs {
    fn new() -> WebSocketVecs {
        WebSocketVecs {
            active: IntGaugeVec::new(
                Opts::new(
                    "portcullis_websocket_connections",
                    "Open WebSocket connections, by route.",
                ),
                &["route"],
            )
            .expect("metric definitions are valid"),
            messages: counter(
                "portcullis_websocket_messages_total",
                "WebSocket messages relayed, by route and direction (upstream: from the client; client: to it).",
                &["route", "direction"],
            ),
            bytes: counter(
                "portcullis_websocket_bytes_total",
                "WebSocket message payload bytes relayed, by route and direction.",
                &["route", "direction"],
            ),
            closes: counter(
                "portcullis_websocket_closes_total",
                "WebSocket connections closed, by route and reason.",
                &["route", "reason"],
            ),
        }
    }
}

/// Which way a WebSocket message went.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    /// From the client to the upstream.
    ToUpstream = 0,
    /// From the upstream to the client.
    ToClient = 1,
}

/// One route's WebSocket handles, made when a connection opens (no label
/// lookup per message).
#[derive(Clone)]
pub struct WebSocketMetrics {
    pub active: IntGauge,
    messages: [IntCounter; 2],
    bytes: [IntCounter; 2],
    closes: IntCounterVec,
    route: Box<str>,
}

impl WebSocketMetrics {
    pub fn message(&self, direction: Direction, len: usize) {
        self.messages[direction as usize].inc();
        self.bytes[direction as usize].inc_by(len as u64);
    }

    pub fn closed(&self, reason: &str) {
        self.closes.with_label_values(&[&*self.route, reason]).inc();
    }
}

/// Handles for one upstream.
#[derive(Clone)]
pub struct UpstreamMetrics {
    duration: Histogram,
    unreachable: IntCounter,
    timeout: IntCounter,
    protocol: IntCounter,
    unavailable: IntCounter,
    busy: IntCounter,
    retried: IntCounter,
    retry_refused: IntCounter,
}

/// Handles for one target's health.
pub struct TargetMetrics {
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGauge,
    pub ejections: IntCounter,
    /// 1 unless the active health checks took the target out.
    pub healthy: IntGauge,
}

impl UpstreamMetrics {
    pub fn record_response(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }
    pub fn record_unreachable(&self) {
        self.unreachable.inc();
    }
    pub fn record_timeout(&self) {
        self.timeout.inc();
    }
    pub fn record_protocol_error(&self) {
        self.protocol.inc();
    }
    /// Every target ejected or failing its checks: 503 at once.
    pub fn record_unavailable(&self) {
        self.unavailable.inc();
    }
    /// Every target at `max_connections` past the queue timeout.
    pub fn record_busy(&self) {
        self.busy.inc();
    }
    /// A retry sent, or refused by the retry budget.
    pub fn record_retry(&self, sent: bool) {
        if sent { &self.retried } else { &self.retry_refused }.inc();
    }
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("metric definitions are valid")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("metric definitions are valid")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = counter(
            "portcullis_requests_total",
            "Requests answered, by route and status class.",
            &["route", "status_class"],
        );
        let request_duration = histogram(
            "portcullis_request_duration_seconds",
            "Time from receiving a request to the end of its response, by route.",
            &["route"],
        );
        let upstream_duration = histogram(
            "portcullis_upstream_duration_seconds",
            "Time from sending a request upstream to its response head, by upstream.",
            &["upstream"],
        );
        let upstream_errors = counter(
            "portcullis_upstream_errors_total",
            "Upstream requests that failed, by upstream and kind (unreachable, timeout, protocol, unavailable: every target ejected, busy: every target at max_connections).",
            &["upstream", "kind"],
        );
        let upstream_reachable = IntGaugeVec::new(
            Opts::new(
                "portcullis_upstream_reachable",
                "1 if the target accepted the last connection attempt (a request's or a /readyz probe's), else 0.",
            ),
            &["upstream", "target"],
        )
        .expect("metric definitions are valid");
        let upstream_retries = counter(
            "portcullis_upstream_retries_total",
            "Upstream retries, by upstream and outcome (sent, budget_exhausted).",
            &["upstream", "outcome"],
        );
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["upstream", "target"])
                .expect("metric definitions are valid")
        };
        let breaker_state = gauge(
            "portcullis_upstream_breaker_state",
            "A target's circuit breaker: 0 closed, 1 open (ejected), 2 half-open (one trial request).",
        );
        let target_healthy = gauge(
            "portcullis_upstream_healthy",
            "1 unless the target's active health checks took it out of service.",
        );
        let ejections = counter(
            "portcullis_upstream_ejections_total",
            "Times a target's circuit breaker opened, by upstream and target.",
            &["upstream", "target"],
        );
        let connections_open = IntGauge::new(
            "portcullis_connections_open",
            "Open client connections on the public listener.",
        )
        .expect("metric definitions are valid");
        let connections_parked = IntGauge::new(
            "portcullis_connections_parked",
            "Open HTTP/1 connections on the public listener parked between requests: idle, with their HTTP buffers freed.",
        )
        .expect("metric definitions are valid");
        let worker_connections_open = IntGaugeVec::new(
            Opts::new(
                "portcullis_worker_connections_open",
                "Open client connections on the public listener, by the worker serving them.",
            ),
            &["worker"],
        )
        .expect("metric definitions are valid");
        let admin_connections_open = IntGauge::new(
            "portcullis_admin_connections_open",
            "Open connections on the admin listener.",
        )
        .expect("metric definitions are valid");
        let store_available = IntGauge::new(
            "portcullis_store_available",
            "1 while the store answers, 0 while it is down and audit events go to the spill file (set by /readyz and by audit writes).",
        )
        .expect("metric definitions are valid");
        let config_reloads = counter(
            "portcullis_config_reloads_total",
            "Config reloads, by result (applied, rejected).",
            &["result"],
        );
        let rate_limited = counter(
            "portcullis_ratelimit_decisions_total",
            "Rate-limit decisions, by route and result (allowed, limited).",
            &["route", "result"],
        );
        let auth_outcomes = counter(
            "portcullis_auth_total",
            "Authentication outcomes, by method (api_key, jwt, session, none) and outcome (success, or the refusal's reason).",
            &["method", "outcome"],
        );
        let would_refuse = counter(
            "portcullis_would_refuse_total",
            "Requests a protection in report mode would have refused but let through, by protection and route.",
            &["protection", "route"],
        );
        let upload_scans = counter(
            "portcullis_upload_scans_total",
            "Uploaded files scanned for malware, by result (clean, infected, error).",
            &["result"],
        );
        let websocket = WebSocketVecs::new();
        store_available.set(1);
        for collector in [
            Box::new(store_available.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(websocket.active.clone()),
            Box::new(websocket.messages.clone()),
            Box::new(websocket.bytes.clone()),
            Box::new(websocket.closes.clone()),
            Box::new(upload_scans.clone()),
            Box::new(rate_limited.clone()),
            Box::new(would_refuse.clone()),
            Box::new(auth_outcomes.clone()),
            Box::new(requests.clone()),
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(upstream_reachable.clone()),
            Box::new(upstream_retries.clone()),
            Box::new(breaker_state.clone()),
            Box::new(ejections.clone()),
            Box::new(target_healthy.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_parked.clone()),
            Box::new(admin_connections_open.clone()),
            Box::new(worker_connections_open.clone()),
            Box::new(config_reloads.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        let unrouted = Self::route_handles(&requests, &request_duration, &rate_limited, "(none)");
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            upstream_reachable,
            upstream_retries,
            breaker_state,
            ejections,
            target_healthy,
            known_targets: Default::default(),
            connections_open,
            connections_parked,
            admin_connections_open,
            worker_connections_open,
            store_available,
            config_reloads,
            rate_limited,
            would_refuse,
            upload_scans,
            unrouted,
            websocket,
            auth: AuthMetrics::new(auth_outcomes),
        }
    }

    /// The handles one route's WebSocket connections count with.
    pub fn for_websocket(&self, route: &str) -> WebSocketMetrics {
        let v = &self.websocket;
        WebSocketMetrics {
            active: v.active.with_label_values(&[route]),
            messages: [
                v.messages.with_label_values(&[route, "upstream"]),
                v.messages.with_label_values(&[route, "client"]),
            ],
            bytes: [
                v.bytes.with_label_values(&[route, "upstream"]),
                v.bytes.with_label_values(&[route, "client"]),
            ],
            closes: v.closes.clone(),
            route: route.into(),
        }
    }

    fn route_handles(
        requests: &IntCounterVec,
        duration: &HistogramVec,
        limits: &IntCounterVec,
        route: &str,
    ) -> RouteMetrics {
        let class = |c: &str| requests.with_label_values(&[route, c]);
        RouteMetrics {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: duration.with_label_values(&[route]),
            limits: [
                limits.with_label_values(&[route, "allowed"]),
                limits.with_label_values(&[route, "limited"]),
            ],
        }
    }

    /// A refusal that report mode let through (off the usual path: only
    /// reported requests pay for the label lookup).
    pub fn would_refuse(&self, protection: &str, route: &str) {
        self.would_refuse.with_label_values(&[protection, route]).inc();
    }

    /// One malware scan's result.
    pub fn upload_scan(&self, result: &str) {
        self.upload_scans.with_label_values(&[result]).inc();
    }

    pub fn for_route(&self, route: &str) -> RouteMetrics {
        Self::route_handles(&self.requests, &self.request_duration, &self.rate_limited, route)
    }

    pub fn for_upstream(&self, upstream: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            duration: self.upstream_duration.with_label_values(&[upstream]),
            unreachable: self.upstream_errors.with_label_values(&[upstream, "unreachable"]),
            timeout: self.upstream_errors.with_label_values(&[upstream, "timeout"]),
            protocol: self.upstream_errors.with_label_values(&[upstream, "protocol"]),
            unavailable: self.upstream_errors.with_label_values(&[upstream, "unavailable"]),
            busy: self.upstream_errors.with_label_values(&[upstream, "busy"]),
            retried: self.upstream_retries.with_label_values(&[upstream, "sent"]),
            retry_refused: self
                .upstream_retries
                .with_label_values(&[upstream, "budget_exhausted"]),
        }
    }

    pub fn for_target(&self, upstream: &str, target: &str) -> TargetMetrics {
        TargetMetrics {
            breaker_state: self.breaker_state.with_label_values(&[upstream, target]),
            ejections: self.ejections.with_label_values(&[upstream, target]),
            healthy: self.target_healthy.with_label_values(&[upstream, target]),
        }
    }

    /// The open-connections gauge of public-listener worker `worker` (1, 2, …).
    pub fn worker_connections_open(&self, worker: u16) -> IntGauge {
        self.worker_connections_open
            .with_label_values(&[&worker.to_string()])
    }

    /// The reachability gauge of one target: 1 until a connection to it
    /// fails; a reload keeps what is known.
    pub fn upstream_reachable(&self, upstream: &str, target: &str) -> IntGauge {
        let gauge = self.upstream_reachable.with_label_values(&[upstream, target]);
        let mut known = self.known_targets.lock().unwrap_or_else(|e| e.into_inner());
        if known.insert((upstream.to_string(), target.to_string())) {
            gauge.set(1);
        }
        gauge
    }

    /// Registers another collector (used by later subsystems: audit, limits).
    /// Records whether the store answered just now.
    pub fn set_store_available(&self, available: bool) {
        self.store_available.set(i64::from(available));
    }

    /// The store-availability gauge, for the audit writer.
    pub fn store_available_gauge(&self) -> IntGauge {
        self.store_available.clone()
    }

    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        self.registry
            .register(collector)
            .expect("metric names are unique");
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding metrics to memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
