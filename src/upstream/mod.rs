//! The upstream side: a named group of targets, how one is chosen, and
//! forwarding a request to it with timeouts, error mapping and, in
//! production, masked 5xx bodies.
//!
//! The parts, and where later capabilities plug in:
//!
//! | file | does | later |
//! | --- | --- | --- |
//! | [`connect`] | opens a TCP connection to a target | TLS to `https://` targets wraps the stream here |
//! | [`pool`] | keep-alive HTTP/1.1 connections driven by the request's own task | an HTTP/2 transport sits beside it |
//! | [`http1`] | what an HTTP/1.1 upstream receives (origin form, `Host`, one `Cookie`) | |
//! | [`hop_by_hop`] | hop-by-hop headers, both directions | protocol upgrades (WebSocket) keep `Upgrade` on their routes |
//! | [`redact`] | credentials never logged from an upstream's answer | |
//! | this file | target choice, [`Upstream::forward`], masking, readiness probes | balancing, passive health and circuit breakers wrap `pick` and the outcome match in `forward` |
//!
//! This module knows nothing of the pipeline: the proxy step hands it the
//! request and the few facts it needs ([`Forwarding`]).

pub mod connect;
pub mod hop_by_hop;
pub mod http1;
pub mod pool;
pub mod redact;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use serde::Deserialize;

use crate::body::{BodyError, GatewayBody};
use crate::compile::CompileCx;
use crate::config::ConfigDuration;
use crate::error::GatewayError;
use crate::metrics::{Metrics, UpstreamMetrics};
use connect::Address;
pub use hop_by_hop::strip_hop_by_hop;
use pool::{Limits, SendError, TargetPool, UpstreamBody};
pub use redact::Credentials;

/// How much of a masked upstream error body is kept for the log.
const MASKED_BODY_LOG_LIMIT: usize = 8 * 1024;

/// Whether a failing upstream makes the gateway unready.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// Reported in `/readyz` and in metrics; the gateway stays ready (its
    /// other routes still work).
    #[default]
    Report,
    /// `/readyz` answers 503 while no target of this upstream is reachable.
    Require,
}

/// `[[upstreams]]`: a named group of backend targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// The backend's OpenAPI document: every route to this upstream
    /// validates requests by it (a route's `validate.openapi` wins).
    pub openapi: Option<crate::stage::validate::openapi::OpenApiConfig>,
    /// `http://host:port` base URLs, used round-robin.
    pub targets: Vec<String>,
    /// Time to establish a TCP connection to a target.
    #[serde(default = "UpstreamConfig::default_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    /// Time from sending the request until the response head arrives.
    #[serde(default = "UpstreamConfig::default_timeout")]
    pub timeout: ConfigDuration,
    /// How long an idle pooled connection is kept.
    #[serde(default = "UpstreamConfig::default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// Idle pooled connections kept per target.
    #[serde(default = "UpstreamConfig::default_max_idle")]
    pub max_idle_connections: usize,
    /// Send the client's `Host` upstream instead of the target's authority.
    #[serde(default)]
    pub preserve_host: bool,
    /// Whether this upstream being unreachable makes the gateway unready.
    #[serde(default)]
    pub readiness: Readiness,
}

impl UpstreamConfig {
    fn default_connect_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(5))
    }
    fn default_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(30))
    }
    fn default_idle_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(90))
    }
    fn default_max_idle() -> usize {
        256
    }
}

/// A compiled `[[upstreams]]` entry with its connection pools.
pub struct Upstream {
    pub name: String,
    targets: Vec<Target>,
    next: AtomicUsize,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    preserve_host: bool,
    /// Replace 5xx bodies with problem documents (production).
    mask_errors: bool,
    pub readiness: Readiness,
    metrics: UpstreamMetrics,
}

struct Target {
    /// The `Host` header sent unless `preserve_host` is set.
    host: HeaderValue,
    pool: Arc<TargetPool>,
}

/// What the proxy step hands over with a request.
pub struct Forwarding<'a> {
    pub request_id: &'a str,
    /// The normalised path, when it differs from the request's own.
    pub path: Option<&'a str>,
    /// The credentials the request carried (the gateway adds the
    /// `Authorization` and `Cookie` lines it forwards).
    pub credentials: &'a mut Credentials,
}

/// The upstream's response head, with its body still streaming.
pub struct Forwarded {
    pub response: Response<GatewayBody>,
    /// From sending the request to the response head.
    pub elapsed: Duration,
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
        if u.timeout.0.is_zero() || u.connect_timeout.0.is_zero() {
            cx.problems.at(&key, "timeouts must be more than zero");
        }
        match Upstream::new(u, config.environment.is_production(), metrics) {
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
    pub fn new(config: &UpstreamConfig, mask_errors: bool, metrics: &Metrics) -> Result<Self, Vec<String>> {
        let mut targets = Vec::new();
        let mut problems = Vec::new();
        if config.targets.is_empty() {
            problems.push("an upstream needs at least one target".to_string());
        }
        let limits = Limits {
            connect_timeout: config.connect_timeout.0,
            idle_timeout: config.idle_timeout.0,
            max_idle: config.max_idle_connections,
        };
        for text in &config.targets {
            match parse_target(text) {
                Ok((address, host)) => {
                    let reachable = metrics.upstream_reachable(&config.name, &address.to_string());
                    targets.push(Target {
                        host,
                        pool: Arc::new(TargetPool::new(address, limits, reachable)),
                    })
                }
                Err(why) => problems.push(why),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Upstream {
            name: config.name.clone(),
            targets,
            next: AtomicUsize::new(0),
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
        let config = UpstreamConfig {
            name: "app".into(),
            openapi: None,
            targets: vec![target.into()],
            connect_timeout: UpstreamConfig::default_connect_timeout(),
            timeout: UpstreamConfig::default_timeout(),
            idle_timeout: UpstreamConfig::default_idle_timeout(),
            max_idle_connections: 8,
            preserve_host: false,
            readiness: Readiness::Report,
        };
        Upstream::new(&config, false, metrics).expect("a valid test target")
    }

    fn pick(&self) -> &Target {
        if self.targets.len() == 1 {
            return &self.targets[0];
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.targets[i % self.targets.len()]
    }

    /// Idle pooled connections over all targets (for tests and diagnostics).
    pub fn idle_connections(&self) -> usize {
        self.targets.iter().map(|t| t.pool.idle_count()).sum()
    }

    /// Whether at least one target accepts a TCP connection within the
    /// connect timeout (capped at 2 s), for `/readyz`; each target's
    /// `portcullis_upstream_reachable` gauge is updated on the way.
    pub async fn probe(&self) -> Result<(), String> {
        let limit = self.connect_timeout.min(Duration::from_secs(2));
        let mut last = String::new();
        let mut any = false;
        for target in &self.targets {
            let addr = target.pool.address();
            let reachable = match tokio::time::timeout(limit, addr.connect()).await {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => {
                    last = format!("{addr}: {e}");
                    false
                }
                Err(_) => {
                    last = format!("{addr}: connect timed out");
                    false
                }
            };
            target.pool.note_reachable(reachable);
            any |= reachable;
        }
        if any { Ok(()) } else { Err(last) }
    }

    /// Opens a new connection to a target for a protocol upgrade (a
    /// WebSocket), with `req` made ready for that target (`Host`, origin
    /// form). Upgraded connections are never pooled.
    pub async fn connect_for_upgrade(
        &self,
        req: &mut Request<GatewayBody>,
        path: Option<&str>,
    ) -> Result<tokio::net::TcpStream, GatewayError> {
        let target = self.pick();
        http1::prepare(req, &target.host, self.preserve_host, path)?;
        let address = target.pool.address();
        match tokio::time::timeout(self.connect_timeout, address.connect()).await {
            Ok(Ok(stream)) => {
                target.pool.note_reachable(true);
                Ok(stream)
            }
            failed => {
                target.pool.note_reachable(false);
                self.metrics.record_unreachable();
                if let Ok(Err(error)) = failed {
                    tracing::warn!(upstream = %self.name, target = %address, %error, "cannot connect for a WebSocket");
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

    /// Sends the request to a target and returns its response head with
    /// the body still streaming.
    pub async fn forward(
        &self,
        mut req: Request<GatewayBody>,
        forwarding: Forwarding<'_>,
    ) -> Result<Forwarded, GatewayError> {
        let target = self.pick();
        http1::prepare(&mut req, &target.host, self.preserve_host, forwarding.path)?;
        if self.mask_errors {
            forwarding.credentials.add_from(req.headers());
        }
        let sent = Instant::now();
        let deadline = tokio::time::Instant::from_std(sent) + self.timeout;
        let result = tokio::time::timeout_at(deadline, target.pool.send(req)).await;
        let response = match result {
            Err(_) => {
                self.metrics.record_timeout();
                return Err(GatewayError::UpstreamTimeout {
                    upstream: self.name.clone(),
                    timeout_ms: self.timeout.as_millis(),
                });
            }
            Ok(Err(error)) => return Err(self.send_failed(&error, forwarding.request_id)),
            Ok(Ok(response)) => response,
        };
        let elapsed = sent.elapsed();
        self.metrics.record_response(elapsed);

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
            return Err(self.mask(&forwarding, head, body).await);
        }
        Ok(Forwarded {
            response: Response::from_parts(head, GatewayBody::Upstream(body)),
            elapsed,
        })
    }

    /// The error for a request that got no response head.
    fn send_failed(&self, error: &SendError, request_id: &str) -> GatewayError {
        if let Some(limit) = body_too_large(error) {
            // The client's body went past its limit while streaming; the
            // upstream saw an aborted request.
            return GatewayError::PayloadTooLarge { limit };
        }
        if caused_by_client_body(error) {
            // The client's body broke off or was malformed mid-stream; the
            // upstream saw an aborted request, never a reframed one.
            return GatewayError::malformed("the request body was malformed or incomplete");
        }
        self.metrics.record_unreachable();
        tracing::warn!(
            request_id,
            upstream = %self.name,
            error = %error_chain(error),
            "upstream request failed"
        );
        GatewayError::UpstreamUnreachable {
            upstream: self.name.clone(),
        }
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
async fn first_bytes(mut body: UpstreamBody) -> Result<Vec<u8>, hyper::Error> {
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

fn parse_target(text: &str) -> Result<(Address, HeaderValue), String> {
    let uri: Uri = text
        .parse()
        .map_err(|_| format!("target `{text}` is not a URL such as http://127.0.0.1:8000"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "target `{text}`: https upstreams are not supported yet; use http on a private network"
            ));
        }
        _ => return Err(format!("target `{text}` must start with http://")),
    }
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
    let port = authority.port_u16().unwrap_or(80);
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
    Ok((address, host))
}

/// The limit a client body went past, if that is why the exchange failed.
fn body_too_large(error: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(BodyError::TooLarge { limit }) = e.downcast_ref::<BodyError>() {
            return Some(*limit);
        }
        source = e.source();
    }
    None
}

/// Whether an upstream request failed because the client's own body did:
/// hyper reports that as a user-body error wrapping the inbound one.
fn caused_by_client_body(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut saw_user_body = false;
    let mut source = Some(error);
    while let Some(e) = source {
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
    fn targets_must_be_plain_http_base_urls() {
        assert!(matches!(
            parse_target("http://127.0.0.1:8000"),
            Ok((Address::Ip(a), _)) if a == "127.0.0.1:8000".parse().unwrap()
        ));
        assert!(matches!(
            parse_target("http://[::1]:8000"),
            Ok((Address::Ip(a), _)) if a == "[::1]:8000".parse().unwrap()
        ));
        assert!(matches!(
            parse_target("http://app.internal"),
            Ok((Address::Name(h, 80), _)) if h == "app.internal"
        ));
        for bad in [
            "127.0.0.1:8000",
            "ftp://x",
            "http://127.0.0.1:8000/api",
            "http://user:pw@host",
            "https://secure",
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
