//! WebSocket routes (`websocket = { … }`): the handshake checks that run in
//! the access phase, before authentication.
//!
//! - The request must be an HTTP/1.1 version-13 handshake (else 426).
//! - Its `Origin` must be listed in `origins` (by default: the request's own
//!   host), which stops cross-site WebSocket hijacking: a browser sends the
//!   session cookie with any page's handshake, and only `Origin` tells them
//!   apart. A handshake without `Origin` (not a browser) is refused unless
//!   `allow_missing_origin`. Refusals are 403 with a `ws.rejected` event.
//! - A browser's token arrives as `Sec-WebSocket-Protocol: bearer, <token>`
//!   (or, where a route allows it, `?<query_token>=`): it is moved into
//!   `Authorization: Bearer` for the authn stage, so the upstream and the
//!   logs never see it where it came from.
//!
//! What the handshake found goes into `cx.websocket` for the proxy step
//! ([`crate::websocket`]), which applies the connection caps, opens the
//! upstream's WebSocket and relays messages with their limits.

pub mod handshake;

use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, HOST, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use http::{HeaderMap, HeaderValue, Request, Uri};
use serde::Deserialize;

use crate::audit::{Audit, Event, Severity};
use crate::body::GatewayBody;
use crate::compile::{CompileCx, Problems, RouteEntry};
use crate::config::{ByteSize, ConfigDuration, RateSpec};
use crate::error::GatewayError;
use crate::pipeline::{Flow, Phases, RequestCx, Route, Slot, Stage, StageResult, Verdict};
use crate::ratelimit::{Limit, Scope};
use crate::stage::cors::origin::OriginList;
use crate::stage::validate::{ContentRuleConfig, JsonChecks, JsonChecksConfig};

/// What a message over a limit, or failing validation, costs its sender.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnViolation {
    /// Close the connection with 1008 (policy violation).
    #[default]
    Close,
    /// Drop the message and tell the client in a text frame.
    Drop,
}

/// One rate string or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Rates {
    One(RateSpec),
    Many(Vec<RateSpec>),
}

impl Rates {
    fn specs(&self) -> Vec<RateSpec> {
        match self {
            Rates::One(spec) => vec![spec.clone()],
            Rates::Many(specs) => specs.clone(),
        }
    }
}

/// `websocket.validate`: checks on every text message, as JSON.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MessageValidationConfig {
    pub schema: Option<serde_json::Value>,
    pub schema_file: Option<std::path::PathBuf>,
    pub max_depth: Option<usize>,
    pub max_string_length: Option<usize>,
    pub max_array_length: Option<usize>,
    #[serde(default)]
    pub rules: Vec<ContentRuleConfig>,
    /// Binary messages are refused (default: passed unchecked).
    #[serde(default)]
    pub text_only: bool,
}

/// A route's `websocket` table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Origins a handshake may come from (exact, or `https://*.example.com`);
    /// by default only the request's own host.
    pub origins: Option<Vec<String>>,
    /// Accept handshakes without `Origin` (clients that are not browsers).
    #[serde(default)]
    pub allow_missing_origin: bool,
    /// Take a token from `Sec-WebSocket-Protocol: bearer, <token>` (on by
    /// default on routes that accept JWTs).
    pub bearer_subprotocol: Option<bool>,
    /// A query parameter that may carry the token (off by default: URLs
    /// end up in proxies' logs and browser history).
    pub query_token: Option<String>,
    /// Open connections per client IP on this route.
    pub max_connections_per_ip: Option<u32>,
    /// Open connections per user (or API-key consumer) on this route.
    pub max_connections_per_user: Option<u32>,
    /// Message rate limits (`"20/minute per user"`), counted by the
    /// rate-limit backends.
    pub messages: Option<Rates>,
    /// What a message over a limit or failing validation does.
    #[serde(default)]
    pub on_violation: OnViolation,
    /// Largest message, either way (default 1 MiB): closed with 1009.
    pub max_message: Option<ByteSize>,
    /// No message either way for this long closes the connection (default 5 min).
    pub idle_timeout: Option<ConfigDuration>,
    /// The longest a connection may stay open (default 24 h).
    pub max_duration: Option<ConfigDuration>,
    /// Ping the client this often; no answer by the next ping closes the
    /// connection (default 30 s; `"0s"` turns pings off).
    pub ping_interval: Option<ConfigDuration>,
    /// How often the handshake's credential is checked again (expired,
    /// revoked), default 30 s.
    pub recheck_interval: Option<ConfigDuration>,
    /// How long a connection may outlive its credential (default 0 s).
    pub expiry_grace: Option<ConfigDuration>,
    /// Validate text messages as JSON.
    pub validate: Option<MessageValidationConfig>,
}

/// A route's compiled WebSocket settings, shared with its open connections.
pub struct WebSocketPolicy {
    pub route: Arc<str>,
    /// `None`: only the request's own host.
    origins: Option<OriginList>,
    allow_missing_origin: bool,
    bearer_subprotocol: bool,
    query_token: Option<String>,
    pub max_connections_per_ip: Option<u32>,
    pub max_connections_per_user: Option<u32>,
    pub messages: Vec<Limit>,
    pub ipv6_prefix: u8,
    pub on_violation: OnViolation,
    pub max_message: usize,
    pub idle_timeout: Duration,
    pub max_duration: Duration,
    pub ping_interval: Option<Duration>,
    pub recheck_interval: Duration,
    pub expiry_grace: Duration,
    pub checks: Option<JsonChecks>,
    pub text_only: bool,
    /// The route authenticates: keep the handshake's credential to check again.
    pub authenticated: bool,
    pub services: crate::websocket::Services,
    /// This route's WebSocket metric handles, made once per compile (no
    /// label lookups per connection or message).
    pub metrics: crate::metrics::WebSocketMetrics,
}

/// What the handshake checks found, for the proxy step.
pub struct Handshake {
    pub policy: Arc<WebSocketPolicy>,
    /// The client's `Sec-WebSocket-Key`.
    pub key: HeaderValue,
    /// Subprotocols offered to the upstream (the bearer entries removed).
    pub protocols: Vec<String>,
    /// The client offered `bearer` (as it spelled it): answered with it
    /// when the upstream picks no subprotocol (a browser fails a handshake
    /// answered with none).
    pub bearer: Option<String>,
    /// The token came in the subprotocol or the query and was put in
    /// `Authorization`: it never goes upstream, whichever method admitted
    /// the request.
    pub moved_token: bool,
    /// The handshake as authentication saw it, to check it again later
    /// (only on routes that authenticate).
    pub recheck: Option<(Uri, HeaderMap)>,
    pub origin: Option<HeaderValue>,
}

const DEFAULT_MAX_MESSAGE: u64 = 1 << 20;
const MAX_MAX_MESSAGE: u64 = 64 << 20;

fn duration_or(value: Option<ConfigDuration>, default: Duration) -> Duration {
    value.map(|d| d.0).unwrap_or(default)
}

/// `websocket.origins`, and what the config must not allow: `"*"`,
/// `"null"`, and a warning for session routes without the origin check.
fn compile_origins(
    config: &WebSocketConfig,
    route: &RouteEntry<'_>,
    problems: &mut Problems<'_>,
) -> Option<OriginList> {
    let mut errors = Vec::new();
    let origins = config.origins.as_ref().map(|list| {
        OriginList::compile(
            list,
            problems.production(),
            &format!("{}.websocket.origins", route.key),
            &mut errors,
        )
    });
    for (key, e) in errors {
        problems.at(&key, e);
    }
    if origins.as_ref().is_some_and(OriginList::lists_null) {
        problems.in_route(
            route,
            "websocket.origins",
            "`null` is any sandboxed page's origin, on any site; list real origins",
        );
    }
    if origins.as_ref().is_some_and(OriginList::allows_any) {
        problems.in_route(
            route,
            "websocket.origins",
            "\"*\" would let any site's page use a visitor's credentials; list the origins",
        );
    }
    if config.allow_missing_origin && route.config.auth.iter().flatten().any(|a| a == "session") {
        // A browser always sends Origin; a cookie without one is a script
        // replaying it, and the origin check is what keeps sessions safe.
        problems.warn(format!(
            "{}: allow_missing_origin on a session route admits handshakes that no origin check covers",
            route.label()
        ));
    }
    origins
}

fn compile_route(
    cx_base: &std::path::Path,
    ipv6_prefix: u8,
    services: &crate::websocket::Services,
    route: &RouteEntry<'_>,
    problems: &mut Problems<'_>,
) -> Option<WebSocketPolicy> {
    let config = route.config.websocket.as_ref()?;
    let auth = route.config.auth.clone().unwrap_or_default();
    let accepts = |kind: &str| auth.iter().any(|a| a == kind);
    let origins = compile_origins(config, route, problems);
    let reports = route.config.mode == Some(crate::enforce::Mode::Report)
        || route
            .config
            .report_only
            .iter()
            .any(|p| p == "authn" || p == "authz");
    if reports {
        problems.in_route(
            route,
            "websocket",
            "WebSocket routes have no report mode: authentication and authorisation are enforced on them",
        );
    }
    if let Some(name) = &config.query_token
        && (name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        problems.in_route(route, "websocket.query_token", "must be a plain parameter name");
    }
    let max_message = config.max_message.map(|s| s.0).unwrap_or(DEFAULT_MAX_MESSAGE);
    if !(1..=MAX_MAX_MESSAGE).contains(&max_message) {
        problems.in_route(
            route,
            "websocket.max_message",
            "must be between 1 byte and 64 MiB",
        );
    }
    for (key, value) in [
        ("max_connections_per_ip", config.max_connections_per_ip),
        ("max_connections_per_user", config.max_connections_per_user),
    ] {
        if value == Some(0) {
            problems.in_route(route, &format!("websocket.{key}"), "must be at least 1");
        }
    }
    let idle_timeout = duration_or(config.idle_timeout, Duration::from_secs(300));
    let max_duration = duration_or(config.max_duration, Duration::from_secs(24 * 3600));
    let recheck_interval = duration_or(config.recheck_interval, Duration::from_secs(30));
    for (key, value) in [
        ("idle_timeout", idle_timeout),
        ("max_duration", max_duration),
        ("recheck_interval", recheck_interval),
    ] {
        if value.is_zero() {
            problems.in_route(route, &format!("websocket.{key}"), "must be more than zero");
        }
    }
    let messages = crate::stage::rate_limit::route_limits(
        &config.messages.as_ref().map(Rates::specs).unwrap_or_default(),
        Scope::Route(format!("{}#messages", route.id).into()),
    )
    .limits;
    let checks = config.validate.as_ref().map(|v| {
        JsonChecks::compile(
            cx_base,
            &JsonChecksConfig {
                schema: v.schema.as_ref(),
                schema_file: v.schema_file.as_deref(),
                max_depth: v.max_depth,
                max_string_length: v.max_string_length,
                max_array_length: v.max_array_length,
                rules: &v.rules,
            },
            route,
            problems,
            "websocket.validate",
        )
    });
    Some(WebSocketPolicy {
        route: route.id.clone(),
        origins,
        allow_missing_origin: config.allow_missing_origin,
        bearer_subprotocol: config.bearer_subprotocol.unwrap_or(accepts("jwt")),
        query_token: config.query_token.clone(),
        max_connections_per_ip: config.max_connections_per_ip,
        max_connections_per_user: config.max_connections_per_user,
        messages,
        ipv6_prefix,
        on_violation: config.on_violation,
        max_message: max_message.min(MAX_MAX_MESSAGE) as usize,
        idle_timeout,
        max_duration,
        ping_interval: Some(duration_or(config.ping_interval, Duration::from_secs(30)))
            .filter(|d| !d.is_zero()),
        recheck_interval,
        expiry_grace: duration_or(config.expiry_grace, Duration::ZERO),
        text_only: config.validate.as_ref().is_some_and(|v| v.text_only),
        checks,
        authenticated: !auth.is_empty() && !auth.iter().all(|a| a == "none"),
        metrics: services.metrics.for_websocket(&route.id),
        services: services.clone(),
    })
}

/// Compiles every route's `websocket`; none: no stage.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    if cx.routes().iter().all(|r| r.config.websocket.is_none()) {
        return None;
    }
    let base = cx.loaded.base_dir.clone();
    let ipv6_prefix = cx.config.rate_limits.ipv6_prefix;
    let services = crate::websocket::Services {
        registry: cx.runtime.websockets.clone(),
        audit: cx.runtime.audit.clone(),
        limiters: cx.runtime.limiters(),
        metrics: cx.runtime.metrics.clone(),
    };
    let slot = cx.per_route(|route, problems| {
        compile_route(&base, ipv6_prefix, &services, route, problems).map(Arc::new)
    });
    Some(Arc::new(WebSocketStage {
        slot,
        audit: cx.runtime.audit.clone(),
    }))
}

pub struct WebSocketStage {
    slot: Slot<Arc<WebSocketPolicy>>,
    audit: Audit,
}

/// A `ws.rejected` event: who tried, from where, and why.
pub fn rejected(audit: &Audit, cx: &RequestCx, reason: &str, origin: Option<&HeaderValue>) {
    let mut event = Event::new("ws.rejected", Severity::Warning)
        .for_request(cx)
        .detail("reason", reason);
    if let Some(origin) = origin.and_then(|o| o.to_str().ok()) {
        event = event.detail("origin", origin);
    }
    if let Some(p) = &cx.principal {
        event = event.consumer(p.name());
    }
    audit.emit(event);
}

impl WebSocketStage {
    fn check_origin(&self, policy: &WebSocketPolicy, req: &Request<GatewayBody>) -> Result<(), &'static str> {
        let Some(origin) = req.headers().get(ORIGIN) else {
            return if policy.allow_missing_origin {
                Ok(())
            } else {
                Err("origin missing")
            };
        };
        let allowed = match &policy.origins {
            Some(list) => list.allows(origin.as_bytes()),
            None => handshake::same_origin(origin.as_bytes(), req.headers().get(HOST)),
        };
        if allowed {
            Ok(())
        } else {
            Err("origin not allowed")
        }
    }

    fn check(
        &self,
        cx: &mut RequestCx,
        policy: &Arc<WebSocketPolicy>,
        req: &mut Request<GatewayBody>,
    ) -> StageResult {
        let key = handshake::check(req.method(), req.version(), req.headers())?;
        let (offer, moved_token) = self.check_origin_and_token(cx, policy, req)?;
        let recheck = policy
            .authenticated
            .then(|| (req.uri().clone(), req.headers().clone()));
        cx.websocket = Some(Box::new(Handshake {
            policy: policy.clone(),
            key,
            protocols: offer.protocols,
            bearer: offer.bearer,
            moved_token,
            recheck,
            origin: req.headers().get(ORIGIN).cloned(),
        }));
        Ok(Flow::Continue)
    }

    /// The origin check, and the browser's token moved to `Authorization`
    /// (also for a forward-auth question, whose proxy does the upgrade).
    fn check_origin_and_token(
        &self,
        cx: &mut RequestCx,
        policy: &WebSocketPolicy,
        req: &mut Request<GatewayBody>,
    ) -> Result<(handshake::Offer, bool), GatewayError> {
        let origin = req.headers().get(ORIGIN).cloned();
        let result = if req.headers().get_all(ORIGIN).iter().nth(1).is_some() {
            Err("several origins")
        } else {
            self.check_origin(policy, req)
        };
        if let Err(reason) = result {
            rejected(&self.audit, cx, reason, origin.as_ref());
            return Err(GatewayError::Forbidden(
                "This page's origin may not open a WebSocket on this route.".into(),
            ));
        }
        let offer = handshake::offer(req.headers(), policy.bearer_subprotocol)?;
        let mut token = offer.token.clone();
        if let Some(name) = &policy.query_token
            && let Some((rest, from_query)) = handshake::take_query_token(req.uri(), name)?
        {
            if token.is_some() {
                return Err(GatewayError::bad_request(
                    "Send the token once, not in two places.",
                ));
            }
            *req.uri_mut() = rest;
            token = Some(from_query);
        }
        // The upstream is offered what is left; the token is never in it.
        req.headers_mut().remove(SEC_WEBSOCKET_PROTOCOL);
        let Some(token) = token else {
            return Ok((offer, false));
        };
        if req.headers().contains_key(AUTHORIZATION) {
            return Err(GatewayError::bad_request(
                "Send the token in Authorization or in the handshake, not both.",
            ));
        }
        let value = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| GatewayError::bad_request("The token is not valid header text."))?;
        if let Ok(raw) = HeaderValue::try_from(token.as_str()) {
            cx.credentials.add_token(raw);
        }
        req.headers_mut().insert(AUTHORIZATION, value);
        Ok((offer, true))
    }
}

impl Stage for WebSocketStage {
    fn name(&self) -> &'static str {
        "websocket"
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS
    }

    fn access<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        route: &'a Route,
        req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        match route.get(self.slot) {
            None => Verdict::CONTINUE,
            // A forward-auth question about a WebSocket route: the proxy
            // asking does the upgrade, but the origin is checked here all
            // the same (it is what keeps a session cookie from being used
            // cross-site), and a browser's token is read.
            Some(policy) if cx.decision_only.is_some() => Verdict::Ready(
                self.check_origin_and_token(cx, policy, req)
                    .map(|_| Flow::Continue),
            ),
            Some(policy) => Verdict::Ready(self.check(cx, policy, req)),
        }
    }
}
