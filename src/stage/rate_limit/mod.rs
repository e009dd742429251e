//! Rate limiting: every limit of the route (and the key's own) must pass;
//! a refused request gets 429 with `Retry-After`, consumes none of its
//! counters, and is a `ratelimit.exceeded` audit event (at most one per
//! counter per `[rate_limits] audit_interval`, so a flood cannot flood the
//! log). Allowed and refused responses carry `RateLimit-Policy`,
//! `RateLimit` and `X-RateLimit-*` headers describing the tightest limit.
//!
//! What a limit counts by: `ip` is the client IP the client IP stage
//! settled on (IPv6 grouped by `[rate_limits] ipv6_prefix`); `route` is the
//! matched route's ID, never the raw path; `consumer`, `key` and `header:X`
//! fall back to the client IP when the request has none, so leaving one
//! out cannot escape a limit; `user` is the consumer until user logins
//! exist.
//!
//! Limits that run before authentication are a stage of their own, in
//! [`pre_auth`]; both count with the same backends ([`Limiters`]).

pub mod pre_auth;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use serde::Deserialize;
use smallvec::SmallVec;

use crate::audit::{Audit, Event, Severity};
use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::config::{ConfigDuration, LimitKey, RateSpec};
use crate::error::GatewayError;
use crate::pipeline::{Flow, Phases, RequestCx, Route, Slot, Stage, StageResult, Verdict};
use crate::principal::Principal;
use crate::ratelimit::{
    Counted, Decision, Limit, Limiters, RouteLimits, Scope, Subject, counter_id, headers, limit_name,
};

/// `[rate_limits]`: defaults, limits before authentication, and the
/// in-process limiter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Limits for every route that does not set `rate_limit` (each route
    /// counts its own).
    #[serde(default)]
    pub default: Vec<RateSpec>,
    /// Limits every request passes before routing and authentication,
    /// counted across the gateway per `ip` or `header:NAME`.
    #[serde(default)]
    pub pre_auth: Vec<RateSpec>,
    /// IPv6 clients are counted by this prefix length (a /64 is one site).
    #[serde(default = "RateLimitsConfig::default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Counters the in-process limiter keeps; when full, the counter
    /// closest to expiring is dropped to make room.
    #[serde(default = "RateLimitsConfig::default_max_entries")]
    pub max_entries: usize,
    /// At most one `ratelimit.exceeded` audit event per counter per interval.
    #[serde(default = "RateLimitsConfig::default_audit_interval")]
    pub audit_interval: ConfigDuration,
}

impl RateLimitsConfig {
    fn default_ipv6_prefix() -> u8 {
        64
    }
    fn default_max_entries() -> usize {
        1_000_000
    }
    fn default_audit_interval() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(60))
    }
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            default: Vec::new(),
            pre_auth: Vec::new(),
            ipv6_prefix: Self::default_ipv6_prefix(),
            max_entries: Self::default_max_entries(),
            audit_interval: Self::default_audit_interval(),
        }
    }
}

/// A request's limits: a route rarely has more than a few, so they live on
/// the stack.
type Limits<'p> = SmallVec<[&'p Limit; 4]>;
type Subjects = SmallVec<[Subject; 4]>;

/// At most one audit event per counter per interval.
pub struct RefusalAudit {
    audit: Audit,
    interval: Duration,
    last_audited: Arc<quick_cache::sync::Cache<u64, Instant>>,
}

impl RefusalAudit {
    pub fn new(cx: &CompileCx<'_>) -> RefusalAudit {
        RefusalAudit {
            audit: cx.runtime.audit.clone(),
            interval: cx.config.rate_limits.audit_interval.0,
            last_audited: cx.runtime.limit_audit.clone(),
        }
    }

    /// Records a refusal by `limit` of `subject` (`phase` says which
    /// limits: `pre_auth` or `route`).
    fn emit(
        &self,
        cx: &RequestCx,
        limiters: &Limiters,
        limit: &Limit,
        subject: &Subject,
        decision: &Decision,
        phase: &str,
    ) {
        let id = counter_id(&limiters.local.hasher, limit, subject);
        if self
            .last_audited
            .get(&id)
            .is_some_and(|at| at.elapsed() < self.interval)
        {
            return;
        }
        self.last_audited.insert(id, Instant::now());
        let mut event = Event::new("ratelimit.exceeded", Severity::Notice)
            .for_request(cx)
            .detail("limit", limit.spec.text.as_str())
            .detail("counted_by", limit.spec.key.to_string())
            .detail("phase", phase)
            .detail(
                "retry_after_s",
                crate::ratelimit::ceil_secs(decision.retry_after_us),
            );
        // A header's value is the client's; only say it was one.
        if !matches!(limit.spec.key, LimitKey::Header(_)) {
            event = event.detail("subject", subject.display());
        }
        if let Some(p) = &cx.principal {
            event = event.consumer(p.name());
        }
        self.audit.emit(event);
    }
}

/// What `limit` counts `req` by.
fn subject(limit: &Limit, cx: &RequestCx, req: &Request<GatewayBody>, ipv6_prefix: u8) -> Subject {
    subject_for(
        limit,
        cx.client_ip,
        cx.principal.as_ref(),
        Some(req.headers()),
        ipv6_prefix,
    )
}

/// What `limit` counts by, for a client at `ip` authenticated as
/// `principal`; a limit by header counts by IP where there are no headers.
pub fn subject_for(
    limit: &Limit,
    client_ip: std::net::IpAddr,
    principal: Option<&Principal>,
    headers: Option<&http::HeaderMap>,
    ipv6_prefix: u8,
) -> Subject {
    let ip = || Subject::ip(client_ip, ipv6_prefix);
    match &limit.spec.key {
        LimitKey::Ip => ip(),
        LimitKey::Route => Subject::Everyone,
        LimitKey::Key => principal
            .and_then(Principal::key_id)
            .map(Subject::text)
            .unwrap_or_else(ip),
        LimitKey::Consumer => principal
            .and_then(Principal::consumer)
            .map(Subject::text)
            .unwrap_or_else(ip),
        LimitKey::User => principal
            .and_then(|p| p.user_name().or(p.consumer()))
            .map(Subject::text)
            .unwrap_or_else(ip),
        LimitKey::Header(name) => headers
            .and_then(|h| h.get(name))
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(Subject::text)
            .unwrap_or_else(ip),
    }
}

pub struct RateLimitStage {
    limiters: Limiters,
    ipv6_prefix: u8,
    /// The limit of keys that carry none of their own.
    key_default: Option<Arc<Limit>>,
    refusals: RefusalAudit,
    slot: Slot<RouteLimits>,
}

/// A route's limits: its own `rate_limit`, or else the defaults, each
/// counted per route.
pub fn route_limits(specs: &[RateSpec], scope: Scope) -> RouteLimits {
    let mut names: Vec<String> = Vec::new();
    let mut limits = Vec::new();
    for spec in specs {
        let name = limit_name(spec, &names);
        names.push(name.clone());
        limits.push(Limit::new(spec.clone(), scope.clone(), name));
    }
    RouteLimits::new(limits)
}

/// Compiles `[rate_limits]`, `[api_keys] default_rate_limit` and every
/// route's `rate_limit`.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let config = cx.config;
    let r = &config.rate_limits;
    if r.ipv6_prefix == 0 || r.ipv6_prefix > 128 {
        cx.problems
            .at("rate_limits.ipv6_prefix", "must be between 1 and 128");
    }
    if r.max_entries < 1024 || r.max_entries > 100_000_000 {
        cx.problems
            .at("rate_limits.max_entries", "must be between 1024 and 100000000");
    }
    if let Some(spec) = &config.api_keys.default_rate_limit
        && !matches!(spec.key, LimitKey::Ip | LimitKey::Key)
    {
        cx.problems.at(
            "api_keys.default_rate_limit",
            "a key's limit always counts per key; leave out `per …`",
        );
    }
    let slot = cx.per_route(|route, _| {
        let specs = route.config.rate_limit.as_deref().unwrap_or(&r.default);
        (!specs.is_empty()).then(|| route_limits(specs, Scope::Route(route.id.clone())))
    });
    Some(Arc::new(RateLimitStage {
        limiters: cx.runtime.limiters(),
        ipv6_prefix: r.ipv6_prefix,
        key_default: config
            .api_keys
            .default_rate_limit
            .clone()
            .map(|spec| Arc::new(Limit::key_quota(spec))),
        refusals: RefusalAudit::new(cx),
        slot,
    }))
}

impl RateLimitStage {
    /// The limits that apply to a request on a route with `own` limits by
    /// `principal`: the route's, and for a key its own limit, which takes
    /// the place of the route's `per key` limits; a key without one gets
    /// `[api_keys] default_rate_limit` (if set) on top of the route's.
    fn select<'p>(&'p self, own: Option<&'p RouteLimits>, principal: Option<&'p Principal>) -> Limits<'p> {
        let quota: Option<&'p Limit> = principal.and_then(|p| p.quota()).map(|l| &**l);
        let default = principal
            .and_then(|p| p.key_id())
            .and(self.key_default.as_deref());
        let mut limits: Limits<'p> = own
            .map(|r| {
                r.limits
                    .iter()
                    .filter(|l| quota.is_none() || l.spec.key != LimitKey::Key)
                    .collect()
            })
            .unwrap_or_default();
        limits.extend(quota.or(default));
        limits
    }

    fn decide(
        &self,
        cx: &mut RequestCx,
        route: &Route,
        own: Option<&RouteLimits>,
        limits: &[&Limit],
        subjects: &[Subject],
        counted: Counted,
    ) -> StageResult {
        let Some(checks) = counted.checks()? else {
            return Ok(Flow::Continue);
        };
        let Some(decision) = Decision::from_checks(&checks) else {
            return Ok(Flow::Continue);
        };
        // The route's own limits (the common case) have their policy header
        // made already; a key's own limit changes the set.
        let made = own.filter(|own| {
            limits.len() == own.limits.len()
                && limits.iter().zip(&own.limits).all(|(a, b)| std::ptr::eq(*a, b))
        });
        let policy_header = match made.and_then(|own| own.policy.clone()) {
            Some(header) => header,
            None => crate::ratelimit::policy_header(limits),
        };
        cx.rate_limit_headers = Some(Box::new(headers(limits, policy_header, &decision)));
        route.metrics.record_limit(decision.allowed);
        if decision.allowed {
            return Ok(Flow::Continue);
        }
        let i = decision.limit_index;
        self.refusals
            .emit(cx, &self.limiters, limits[i], &subjects[i], &decision, "route");
        Err(GatewayError::RateLimited {
            retry_after_secs: crate::ratelimit::ceil_secs(decision.retry_after_us),
        })
    }
}

impl Stage for RateLimitStage {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS.and(Phases::RESPONSE)
    }

    fn access<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        route: &'a Route,
        req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        let own = route.get(self.slot);
        // The principal is a shared handle: a clone lets the limits borrow
        // it while `cx` takes the decision.
        let principal = cx.principal.clone();
        let limits: Limits<'_> = self.select(own, principal.as_ref());
        if limits.is_empty() {
            return Verdict::CONTINUE;
        }
        let subjects: Subjects = limits
            .iter()
            .map(|l| subject(l, cx, req, self.ipv6_prefix))
            .collect();
        if let Some(counted) = self.limiters.check_now(&limits, &subjects) {
            return Verdict::Ready(self.decide(cx, route, own, &limits, &subjects, counted));
        }
        // The limits borrow `principal`, which the future owns from here on,
        // so they are selected again inside it.
        drop(limits);
        Verdict::Pending(Box::pin(async move {
            let limits = self.select(own, principal.as_ref());
            let counted = self.limiters.check_shared(&limits, &subjects).await;
            self.decide(cx, route, own, &limits, &subjects, counted)
        }))
    }

    fn response(&self, cx: &RequestCx, resp: &mut Response<GatewayBody>) {
        if let Some(headers) = &cx.rate_limit_headers {
            for (name, value) in headers.iter() {
                resp.headers_mut().insert(name.clone(), value.clone());
            }
        }
    }
}
