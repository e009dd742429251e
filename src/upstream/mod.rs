//! The upstream side: a named group of targets, how one is chosen, and
//! forwarding a request to it with timeouts, retries, error mapping and,
//! in production, masked 5xx bodies.
//!
//! | file | does |
//! | --- | --- |
//! | [`config`] | `[[upstreams]]`: targets and weights, balancing, passive and active health, retries |
//! | [`balance`] | round robin (nginx's smooth weighted schedule) and least-outstanding |
//! | [`breaker`] | a target's circuit breaker: consecutive failures eject it for a growing cool-down, then one trial |
//! | [`health`] | each target's breaker and active-check state, kept across reloads; the active check itself |
//! | [`retry`] | which failures are tried again, and the retry budget |
//! | [`connect`] | opens a TCP (and for `https://`, TLS) connection to a target; which HTTP version it speaks |
//! | [`pool`] | keep-alive HTTP/1.1 connections driven by the request's own task, one shared HTTP/2 connection, and the per-target cap (leases) |
//! | [`http1`] | what an HTTP/1.1 upstream receives (origin form, `Host`, one `Cookie`) |
//! | [`h2`] | what an HTTP/2 upstream receives (`:scheme`, `:authority`), and its connection |
//! | [`hop_by_hop`] | hop-by-hop headers, both directions |
//! | [`redact`] | credentials never logged from an upstream's answer |
//! | this file | [`Upstream::forward`]: choose, send, judge the outcome, retry or pass on; masking; readiness |
//!
//! This module knows nothing of the pipeline: the proxy step hands it the
//! request and the few facts it needs ([`Forwarding`]).

pub mod balance;
pub mod breaker;
pub mod config;
pub mod connect;
pub mod h1;
pub mod h2;
pub mod health;
pub mod hop_by_hop;
pub mod http1;
pub mod pool;
pub mod redact;
pub mod retry;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;

use crate::body::{BodyError, GatewayBody};
use crate::compile::CompileCx;
use crate::error::GatewayError;
use crate::metrics::{Metrics, UpstreamMetrics};
use balance::{Balancer, Cursor};
use breaker::{Admission, BreakerSettings};
pub use config::{Balance, Protocol, Readiness, TargetConfig, UpstreamConfig};
use connect::{Address, Endpoint, TlsTarget};
use health::{TargetHealth, TargetRegistry};
pub use hop_by_hop::strip_hop_by_hop;
use pool::{Failed, Lease, Limits, SendError, TargetPool, UpstreamBody};
pub use redact::Credentials;
use retry::RetryPolicy;

/// How much of a masked upstream error body is kept for the log.
const MASKED_BODY_LOG_LIMIT: usize = 8 * 1024;

/// A compiled `[[upstreams]]` entry with its connection pools.
pub struct Upstream {
    pub name: String,
    targets: Vec<Target>,
    balancer: Balancer,
    breaker: BreakerSettings,
    /// Statuses that count as a target's failure (`passive_health`).
    failure_statuses: Box<[u16]>,
    retry: RetryPolicy,
    queue_timeout: Duration,
    health_check: Option<config::HealthCheckConfig>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    preserve_host: bool,
    /// Replace 5xx bodies with problem documents (production).
    mask_errors: bool,
    pub readiness: Readiness,
    metrics: UpstreamMetrics,
}

struct Target {
    /// `host:port`, as metrics and logs name the target.
    label: String,
    /// The `Host` header sent unless `preserve_host` is set.
    host: HeaderValue,
    pool: Arc<TargetPool>,
    health: Arc<TargetHealth>,
}

/// What the proxy step hands over with a request.
pub struct Forwarding<'a> {
    pub request_id: &'a str,
    /// The normalised path, when it differs from the request's own.
    pub path: Option<&'a str>,
    /// The credentials the request carried (the gateway adds the
    /// `Authorization` and `Cookie` lines it forwards).
    pub credentials: &'a mut Credentials,
    /// The route lets non-idempotent requests be retried.
    pub retry_non_idempotent: bool,
}

/// The upstream's response head, with its body still streaming.
pub struct Forwarded {
    pub response: Response<GatewayBody>,
    /// From sending the request to the response head.
    pub elapsed: Duration,
}

/// A target chosen for one try, with its lease.
struct Choice {
    index: usize,
    admission: Admission,
    lease: Lease,
}

/// Why no target could take a request now.
enum NoTarget {
    /// Every target is ejected or failing its checks; one may be back in
    /// about this long.
    Down { retry_in_ms: u64 },
    /// Every usable target is at `max_connections`; this one is the first
    /// choice to wait for.
    Full { index: usize, admission: Admission },
}

/// How one try ended.
enum Attempt {
    /// A response head to pass on.
    Answered(Response<UpstreamBody>, Duration),
    /// A response with a status the retries name.
    RetryStatus(Response<UpstreamBody>, Duration),
    /// No response head: the error, and whether the request was never
    /// written (so any method may go to another target).
    Failed(GatewayError, bool),
    TimedOut(GatewayError),
    /// Not the target's fault (the client's body broke): never retried.
    Fatal(GatewayError),
}

/// Compiles every `[[upstreams]]` entry.
pub fn compile_all(cx: &mut CompileCx<'_>) -> Vec<Arc<Upstream>> {
    let config = cx.config;
    let metrics = &cx.runtime.metrics;
    let mut out: Vec<Arc<Upstream>> = Vec::new();
    for (i, u) in config.upstreams.iter().enumerate() {
        let key = format!("upstreams[{i}]");
        if u.name.is_empty() {
            cx.problems.at(&format!("{key}.name"), "an upstream needs a name");
        }
        if config.upstreams[..i].iter().any(|o| o.name == u.name) {
            cx.problems.at(
                &format!("{key}.name"),
                format!("another upstream is already named `{}`", u.name),
            );
        }
        let problems = u.problems();
        for (at, problem) in &problems {
            cx.problems.at(&format!("{key}.{at}"), problem);
        }
        if !problems.is_empty() {
            continue;
        }
        let production = config.environment.is_production();
        match Upstream::new(u, production, metrics, &cx.runtime.targets, &cx.loaded.base_dir) {
            Ok(upstream) => out.push(Arc::new(upstream)),
            Err(why) => {
                for w in why {
                    cx.problems.at(&format!("{key}.targets"), w);
                }
            }
        }
    }
    out
}

impl Upstream {
    /// Builds an upstream; returns the problems with its targets on failure.
    pub fn new(
        config: &UpstreamConfig,
        mask_errors: bool,
        metrics: &Metrics,
        registry: &TargetRegistry,
        base_dir: &std::path::Path,
    ) -> Result<Self, Vec<String>> {
        let mut targets = Vec::new();
        let mut problems = Vec::new();
        if config.targets.is_empty() {
            problems.push("an upstream needs at least one target".to_string());
        }
        let limits = Limits {
            connect_timeout: config.connect_timeout.0,
            idle_timeout: config.idle_timeout.0,
            max_idle: config.max_idle_connections,
            max_connections: config.max_connections,
        };
        let mut client_tls = None;
        for target in &config.targets {
            let parsed = parse_target(target.url()).and_then(|parsed| {
                let tls = match &parsed.tls_name {
                    None => None,
                    Some(name) => {
                        let clients = match &client_tls {
                            Some(clients) => clients,
                            None => {
                                let made = connect::client_configs(&config.tls, config.protocol, base_dir)?;
                                &*client_tls.insert(made)
                            }
                        };
                        let name = config.tls.server_name.as_deref().unwrap_or(name);
                        Some(TlsTarget::new(clients, name)?)
                    }
                };
                Ok((parsed, tls))
            });
            match parsed {
                Ok((parsed, tls)) => {
                    let label = parsed.address.to_string();
                    let reachable = metrics.upstream_reachable(&config.name, &label);
                    let endpoint = Endpoint {
                        address: parsed.address,
                        tls,
                        protocol: config.protocol,
                    };
                    targets.push(Target {
                        health: registry.get(metrics, &config.name, target.url(), &label),
                        label,
                        host: parsed.host,
                        pool: Arc::new(TargetPool::new(endpoint, limits, reachable)),
                    })
                }
                Err(why) => problems.push(why),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let weights: Vec<u32> = config.targets.iter().map(TargetConfig::weight).collect();
        let passive = &config.passive_health;
        Ok(Upstream {
            name: config.name.clone(),
            targets,
            balancer: Balancer::new(config.balance, &weights),
            breaker: BreakerSettings {
                max_failures: passive.max_failures,
                ejection: passive.ejection.0,
                max_ejection: passive.max_ejection.0,
                trial_window: config.connect_timeout.0 + config.timeout.0,
            },
            failure_statuses: passive.failure_statuses.clone().into(),
            retry: RetryPolicy::new(&config.retries),
            queue_timeout: config.queue_timeout.0,
            health_check: config.health_check.clone(),
            timeout: config.timeout.0,
            connect_timeout: config.connect_timeout.0,
            preserve_host: config.preserve_host,
            mask_errors,
            readiness: config.readiness,
            metrics: metrics.for_upstream(&config.name),
        })
    }

    /// An upstream named `app` with one target, for unit tests.
    #[cfg(test)]
    pub fn for_test(target: &str, metrics: &Metrics) -> Upstream {
        let mut config = UpstreamConfig::with_targets("app", &[target]);
        config.max_idle_connections = 8;
        Upstream::new(
            &config,
            false,
            metrics,
            &TargetRegistry::default(),
            std::path::Path::new("."),
        )
        .expect("a valid test target")
    }

    /// Starts this upstream's active health checks, if it has any; they
    /// stop when the upstream is dropped (its policy replaced).
    pub fn start_health_checks(self: &Arc<Self>) {
        let Some(check) = &self.health_check else { return };
        health::spawn_checks(
            Arc::downgrade(self),
            check.interval.0,
            |upstream: Arc<Upstream>| async move { upstream.check_targets().await },
        );
    }

    async fn check_targets(&self) {
        let Some(check) = &self.health_check else { return };
        let checks = self.targets.iter().map(|target| async move {
            let result = health::check_once(target.pool.endpoint(), &target.host, check).await;
            let (passed, detail) = match &result {
                Ok(status) => (check.passes(*status), format!("status {status}")),
                Err(why) => (false, why.clone()),
            };
            target.pool.note_reachable(result.is_ok());
            target.health.observe(passed, check, &detail);
        });
        futures_util::future::join_all(checks).await;
    }

    pub fn target_count(&self) -> usize {
        self.targets.len()
    }

    /// Idle pooled connections over all targets (for tests and diagnostics).
    pub fn idle_connections(&self) -> usize {
        self.targets.iter().map(|t| t.pool.idle_count()).sum()
    }

    /// A target for one try: the balancer's choice among those not in
    /// `tried` that are healthy, not ejected and not full; when every such
    /// target was tried, any that qualifies.
    fn choose(&self, tried: u64) -> Result<Choice, NoTarget> {
        match self.walk(tried) {
            Err(NoTarget::Down { .. }) if tried != 0 => self.walk(0),
            other => other,
        }
    }

    fn walk(&self, skip: u64) -> Result<Choice, NoTarget> {
        let mut cursor = Cursor::default();
        let mut full = None;
        let mut retry_in_ms = u64::MAX;
        let in_flight = |i: usize| self.targets[i].pool.in_flight();
        while let Some(index) = self.balancer.next(&mut cursor, skip, in_flight) {
            let target = &self.targets[index];
            if !target.health.is_healthy() {
                let interval = self
                    .health_check
                    .as_ref()
                    .map_or(1000, |c| c.interval.0.as_millis() as u64);
                retry_in_ms = retry_in_ms.min(interval);
                continue;
            }
            match target.health.breaker.admit(&self.breaker) {
                Admission::Refused { retry_in_ms: r } => retry_in_ms = retry_in_ms.min(r),
                admission => match target.pool.try_lease() {
                    Some(lease) => {
                        return Ok(Choice {
                            index,
                            admission,
                            lease,
                        });
                    }
                    None => {
                        full.get_or_insert((index, admission));
                    }
                },
            }
        }
        Err(match full {
            Some((index, admission)) => NoTarget::Full { index, admission },
            None => NoTarget::Down { retry_in_ms },
        })
    }

    /// A choice, waiting up to `queue_timeout` when every target is full.
    async fn choice(&self, tried: u64) -> Result<Choice, GatewayError> {
        match self.choose(tried) {
            Ok(choice) => Ok(choice),
            Err(NoTarget::Down { retry_in_ms }) => {
                self.metrics.record_unavailable();
                Err(GatewayError::UpstreamUnavailable {
                    upstream: self.name.clone(),
                    retry_after_secs: retry_in_ms.div_ceil(1000).clamp(1, 3600),
                })
            }
            Err(NoTarget::Full { index, admission }) => {
                let pool = &self.targets[index].pool;
                match Box::pin(pool.lease_within(self.queue_timeout)).await {
                    Some(lease) => Ok(Choice {
                        index,
                        admission,
                        lease,
                    }),
                    None => {
                        self.metrics.record_busy();
                        Err(GatewayError::UpstreamBusy {
                            upstream: self.name.clone(),
                        })
                    }
                }
            }
        }
    }

    /// Each target's state for `/readyz`, and whether at least one accepts
    /// a TCP connection within the connect timeout (capped at 2 s) and is
    /// neither ejected nor failing its checks. Each target's
    /// `portcullis_upstream_reachable` gauge is updated on the way.
    pub async fn probe(&self) -> (Result<(), String>, Vec<serde_json::Value>) {
        let limit = self.connect_timeout.min(Duration::from_secs(2));
        let probes = self.targets.iter().map(|target| async move {
            let addr = target.pool.address();
            let connected = match tokio::time::timeout(limit, addr.connect()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("{addr}: {e}")),
                Err(_) => Err(format!("{addr}: connect timed out")),
            };
            target.pool.note_reachable(connected.is_ok());
            connected
        });
        let results = futures_util::future::join_all(probes).await;
        let mut last = String::new();
        let mut any = false;
        let mut states = Vec::with_capacity(self.targets.len());
        for (target, connected) in self.targets.iter().zip(results) {
            let breaker = target.health.breaker.state();
            let usable = connected.is_ok() && target.health.is_healthy() && breaker != breaker::State::Open;
            match &connected {
                Err(why) => last.clone_from(why),
                Ok(()) if !usable => last = format!("{}: ejected or failing its health check", target.label),
                Ok(()) => {}
            }
            any |= usable;
            states.push(serde_json::json!({
                "target": target.label,
                "reachable": connected.is_ok(),
                "breaker": breaker.as_str(),
                "health_check": target.health.check_state(),
                "in_flight": target.pool.in_flight(),
            }));
        }
        (if any { Ok(()) } else { Err(last) }, states)
    }

    /// Opens a new connection to a target for a protocol upgrade (a
    /// WebSocket), with `req` made ready for that target (`Host`, origin
    /// form). Upgraded connections are never pooled, and not counted in
    /// `max_connections` (WebSocket routes have caps of their own).
    pub async fn connect_for_upgrade(
        &self,
        req: &mut Request<GatewayBody>,
        path: Option<&str>,
    ) -> Result<connect::UpstreamStream, GatewayError> {
        // The lease only serves the choice; the connection is not counted.
        let choice = self.choice(0).await?;
        drop(choice.lease);
        let target = &self.targets[choice.index];
        http1::prepare(req, &target.host, self.preserve_host, path)?;
        let address = target.pool.address();
        let open = target.pool.endpoint().open_http1();
        match tokio::time::timeout(self.connect_timeout, open).await {
            Ok(Ok(stream)) => {
                target.pool.note_reachable(true);
                target.health.breaker.succeeded(choice.admission);
                Ok(stream)
            }
            failed => {
                target.pool.note_reachable(false);
                target.health.breaker.failed(choice.admission, &self.breaker);
                self.metrics.record_unreachable();
                if let Ok(Err(error)) = failed {
                    tracing::warn!(upstream = %self.name, backend = %address, %error, "cannot connect for a WebSocket");
                }
                Err(GatewayError::UpstreamUnreachable {
                    upstream: self.name.clone(),
                })
            }
        }
    }

    /// The upstream answered a handshake with something else than a switch.
    pub fn record_protocol_error(&self) {
        self.metrics.record_protocol_error();
    }

    /// Sends the request to a target, trying again where [`retry`] allows,
    /// and returns the final response head with the body still streaming.
    pub async fn forward(
        &self,
        mut req: Request<GatewayBody>,
        forwarding: Forwarding<'_>,
    ) -> Result<Forwarded, GatewayError> {
        self.retry.deposit();
        let mut tried = 0u64;
        let mut retries = 0;
        loop {
            let choice = self.choice(tried).await?;
            tried |= 1 << choice.index;
            let target = &self.targets[choice.index];
            http1::prepare(&mut req, &target.host, self.preserve_host, forwarding.path)?;
            if retries == 0 && self.mask_errors {
                forwarding.credentials.add_from(req.headers());
            }
            // Whether the request may go again if this try may have reached
            // the target: the request stays here (the pool sends it by
            // reference and leaves a body in memory in it), so no copy is
            // made for a retry that seldom comes.
            let resendable =
                retries < self.retry.attempts && self.retry.may_resend(&req, forwarding.retry_non_idempotent);
            let attempt = self
                .attempt(target, choice, &mut req, forwarding.request_id)
                .await;
            let again = match &attempt {
                Attempt::Answered(..) | Attempt::Fatal(_) => false,
                Attempt::RetryStatus(..) => resendable,
                Attempt::TimedOut(_) => resendable && self.retry.on_timeout,
                // Never written: the request itself can go again, whatever its method.
                Attempt::Failed(_, unsent) => *unsent || resendable,
            };
            if again && retries < self.retry.attempts {
                if self.retry.withdraw() {
                    retries += 1;
                    self.metrics.record_retry(true);
                    tracing::debug!(request_id = forwarding.request_id, upstream = %self.name, backend = %target.label, "retrying on another target");
                    continue;
                }
                self.metrics.record_retry(false);
            }
            return match attempt {
                Attempt::Answered(response, elapsed) | Attempt::RetryStatus(response, elapsed) => {
                    self.pass_on(response, elapsed, &forwarding).await
                }
                Attempt::Failed(error, _) | Attempt::TimedOut(error) | Attempt::Fatal(error) => Err(error),
            };
        }
    }

    /// One try on one target, with the breaker told how it went.
    async fn attempt(
        &self,
        target: &Target,
        choice: Choice,
        req: &mut Request<GatewayBody>,
        request_id: &str,
    ) -> Attempt {
        let sent = Instant::now();
        let deadline = tokio::time::Instant::from_std(sent) + self.timeout;
        let breaker = &target.health.breaker;
        match tokio::time::timeout_at(deadline, choice.lease.send(req)).await {
            Err(_) => {
                breaker.failed(choice.admission, &self.breaker);
                self.metrics.record_timeout();
                Attempt::TimedOut(GatewayError::UpstreamTimeout {
                    upstream: self.name.clone(),
                    timeout_ms: self.timeout.as_millis(),
                })
            }
            Ok(Err(failed)) => match self.send_failed(&failed, target, request_id) {
                Some(error) => Attempt::Fatal(error),
                None => {
                    breaker.failed(choice.admission, &self.breaker);
                    let error = GatewayError::UpstreamUnreachable {
                        upstream: self.name.clone(),
                    };
                    Attempt::Failed(error, failed.unsent)
                }
            },
            Ok(Ok(response)) => {
                let elapsed = sent.elapsed();
                self.metrics.record_response(elapsed);
                let status = response.status().as_u16();
                if self.failure_statuses.contains(&status) {
                    breaker.failed(choice.admission, &self.breaker);
                } else {
                    breaker.succeeded(choice.admission);
                }
                if self.retry.retries_status(status) {
                    Attempt::RetryStatus(response, elapsed)
                } else {
                    Attempt::Answered(response, elapsed)
                }
            }
        }
    }

    /// The final response head, checked, stripped and (5xx in production)
    /// masked.
    async fn pass_on(
        &self,
        response: Response<UpstreamBody>,
        elapsed: Duration,
        forwarding: &Forwarding<'_>,
    ) -> Result<Forwarded, GatewayError> {
        let (mut head, body) = response.into_parts();
        if head.status.is_informational() {
            // A protocol switch nobody asked for (the gateway strips
            // `Upgrade`): relaying it would leave the client with a bare 101
            // on a dead connection, or an HTTP/2 protocol error.
            self.metrics.record_protocol_error();
            tracing::warn!(
                request_id = forwarding.request_id,
                upstream = %self.name,
                status = head.status.as_u16(),
                "upstream answered with an unsolicited protocol switch"
            );
            return Err(GatewayError::UpstreamProtocol {
                upstream: self.name.clone(),
            });
        }
        strip_hop_by_hop(&mut head.headers);
        // 5xx, and the nonstandard 6xx-9xx some servers invent for errors too.
        if head.status.as_u16() >= 500 && self.mask_errors {
            return Err(self.mask(forwarding, head, body).await);
        }
        Ok(Forwarded {
            response: Response::from_parts(head, GatewayBody::Upstream(body)),
            elapsed,
        })
    }

    /// The error for a request that got no response head when the client's
    /// own body is why; `None` when it is the target's failure (logged).
    fn send_failed(&self, failed: &Failed, target: &Target, request_id: &str) -> Option<GatewayError> {
        let error: &SendError = &failed.error;
        if let Some(limit) = body_too_large(error) {
            // The client's body went past its limit while streaming; the
            // upstream saw an aborted request.
            return Some(GatewayError::PayloadTooLarge { limit });
        }
        if body_too_slow(error) {
            return Some(GatewayError::RequestTimeout);
        }
        if caused_by_client_body(error) {
            // The client's body broke off or was malformed mid-stream; the
            // upstream saw an aborted request, never a reframed one.
            return Some(GatewayError::malformed(
                "the request body was malformed or incomplete",
            ));
        }
        self.metrics.record_unreachable();
        tracing::warn!(
            request_id,
            upstream = %self.name,
            backend = %target.label,
            error = %error_chain(error),
            "upstream request failed"
        );
        None
    }

    /// Replaces an upstream 5xx with a problem document (status kept), after
    /// logging the start of what the upstream said, with the request's
    /// credentials removed, so stack traces reach the operator and never the
    /// client.
    async fn mask(
        &self,
        forwarding: &Forwarding<'_>,
        head: http::response::Parts,
        body: UpstreamBody,
    ) -> GatewayError {
        let original = match tokio::time::timeout(Duration::from_secs(2), first_bytes(body)).await {
            Ok(Ok(start)) => String::from_utf8_lossy(&start).into_owned(),
            Ok(Err(_)) => "(body unreadable)".to_string(),
            Err(_) => "(body not received within 2 s)".to_string(),
        };
        let mut logged = forwarding.credentials.redact(&original);
        truncate_at_char(&mut logged, MASKED_BODY_LOG_LIMIT);
        tracing::warn!(
            request_id = forwarding.request_id,
            upstream = %self.name,
            status = head.status.as_u16(),
            upstream_body = %logged,
            "masked upstream error response"
        );
        GatewayError::UpstreamFailed {
            upstream: self.name.clone(),
            status: head.status,
            retry_after: head.headers.get(header::RETRY_AFTER).cloned(),
        }
    }
}

/// The first [`MASKED_BODY_LOG_LIMIT`] bytes of a body (the rest is never
/// read; the connection is closed rather than pooled).
async fn first_bytes(mut body: UpstreamBody) -> Result<Vec<u8>, BodyError> {
    let mut start = Vec::new();
    while start.len() < MASKED_BODY_LOG_LIMIT {
        let Some(frame) = body.frame().await else { break };
        if let Some(data) = frame?.data_ref() {
            let room = MASKED_BODY_LOG_LIMIT - start.len();
            start.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(start)
}

fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// A target URL taken apart.
struct ParsedTarget {
    address: Address,
    /// Its authority, the `Host` an upstream gets.
    host: HeaderValue,
    /// `https://`: the host name (or IP) TLS sends and verifies.
    tls_name: Option<String>,
}

fn parse_target(text: &str) -> Result<ParsedTarget, String> {
    let uri: Uri = text
        .parse()
        .map_err(|_| format!("target `{text}` is not a URL such as http://127.0.0.1:8000"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("target `{text}` must start with http:// or https://")),
    };
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return Err(format!(
            "target `{text}` must not have a path; routes keep the request's path"
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("target `{text}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("target `{text}` must not contain credentials"));
    }
    let host = HeaderValue::try_from(authority.as_str())
        .map_err(|_| format!("target `{text}` has an invalid host"))?;
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let name = authority.host();
    // `[::1]` in a URL is the IP literal `::1`.
    let literal = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    let address = match literal.parse::<IpAddr>() {
        Ok(ip) => Address::Ip(SocketAddr::new(ip, port)),
        Err(_) => Address::Name(name.to_string(), port),
    };
    Ok(ParsedTarget {
        address,
        host,
        tls_name: https.then(|| literal.to_string()),
    })
}

/// The client body's own error in `error`'s chain, if there is one (our
/// HTTP/1.1 client and hyper both hold it as a source).
fn client_body_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(body) = e.downcast_ref::<BodyError>() {
            return Some(body);
        }
        source = e.source();
    }
    None
}

/// The limit a client body went past, if that is why the exchange failed.
fn body_too_large(error: &(dyn std::error::Error + 'static)) -> Option<u64> {
    match client_body_error(error) {
        Some(BodyError::TooLarge { limit }) => Some(*limit),
        _ => None,
    }
}

/// Whether the client's body missed its pace.
fn body_too_slow(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(client_body_error(error), Some(BodyError::TooSlow))
}

/// Whether an upstream request failed because the client's own body did:
/// our HTTP/1.1 client says so, hyper's (HTTP/2) reports a user-body error
/// wrapping the inbound one.
fn caused_by_client_body(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut saw_user_body = false;
    let mut source = Some(error);
    while let Some(e) = source {
        if matches!(e.downcast_ref::<h1::H1Error>(), Some(h1::H1Error::ClientBody(_))) {
            return true;
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_user() {
                saw_user_body = true;
            } else if saw_user_body {
                return true;
            }
        }
        source = e.source();
    }
    false
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_http_or_https_base_urls() {
        let address = |t: &str| parse_target(t).map(|p| (p.address.to_string(), p.tls_name));
        assert_eq!(
            address("http://127.0.0.1:8000"),
            Ok(("127.0.0.1:8000".into(), None))
        );
        assert_eq!(address("http://[::1]:8000"), Ok(("[::1]:8000".into(), None)));
        assert_eq!(
            address("http://app.internal"),
            Ok(("app.internal:80".into(), None))
        );
        assert_eq!(
            address("https://app.internal"),
            Ok(("app.internal:443".into(), Some("app.internal".into())))
        );
        assert_eq!(
            address("https://[::1]:8443"),
            Ok(("[::1]:8443".into(), Some("::1".into())))
        );
        for bad in [
            "127.0.0.1:8000",
            "ftp://x",
            "http://127.0.0.1:8000/api",
            "http://user:pw@host",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_logged_bodies_are_cut_on_a_character_boundary() {
        let mut text = "é".repeat(10);
        truncate_at_char(&mut text, 5);
        assert_eq!(text, "éé");
    }
}
