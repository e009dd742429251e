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

use std::sync::Arc;

use smallvec::SmallVec;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Request, Response};

use crate::audit::{Audit, Event, Severity};
use crate::body::GatewayBody;
use crate::config::{LimitKey, OnOutage};
use crate::error::GatewayError;
use crate::pipeline::{Flow, RequestCx, Stage, StageResult, Verdict};
use crate::ratelimit::local::LocalLimiter;
use crate::ratelimit::redis::RedisLimiter;
use crate::ratelimit::{Decision, Limit, Subject, counter_id, headers, redis_key};

/// A request's limits: a route rarely has more than a few, so they live on
/// the stack.
type Limits<'p> = SmallVec<[&'p Limit; 4]>;

/// The headers decided for a request, added to its response.
pub type LimitHeaders = [(HeaderName, HeaderValue); 5];

pub struct RateLimitStage {
    pub local: Arc<LocalLimiter>,
    pub redis: Option<Arc<RedisLimiter>>,
    pub ipv6_prefix: u8,
    /// The limit of keys that carry none of their own.
    pub key_default: Option<Arc<Limit>>,
    pub audit: Audit,
    pub audit_interval: Duration,
    /// When each counter last produced an audit event.
    pub last_audited: Arc<quick_cache::sync::Cache<u64, Instant>>,
}

/// The limits that apply to a request on `route` by `principal`: the
/// route's, and for a key its own limit, which takes the place of the
/// route's `per key` limits; a key without one gets `[api_keys]
/// default_rate_limit` (if set) on top of the route's limits.
fn select_limits<'p>(
    stage: &'p RateLimitStage,
    policy: &'p crate::policy::Policy,
    principal: Option<&'p crate::stage::authn::Principal>,
    route: Option<usize>,
) -> Limits<'p> {
    let Some(route) = route.map(|i| &policy.routes[i]) else {
        return Limits::new();
    };
    let own: Option<&'p Limit> = principal.and_then(|p| p.key_limit()).map(|l| &**l);
    let default = principal
        .and_then(|p| p.key_id())
        .and(stage.key_default.as_deref());
    let mut limits: Limits<'p> = route
        .limits
        .limits
        .iter()
        .filter(|l| own.is_none() || l.spec.key != LimitKey::Key)
        .collect();
    limits.extend(own.or(default));
    limits
}

impl RateLimitStage {
    fn subject(&self, limit: &Limit, cx: &RequestCx, req: &Request<GatewayBody>) -> Subject {
        let ip = || Subject::ip(cx.client_ip, self.ipv6_prefix);
        let principal = cx.principal.as_ref();
        match &limit.spec.key {
            LimitKey::Ip => ip(),
            LimitKey::Route => Subject::Everyone,
            LimitKey::Key => principal
                .and_then(|p| p.key_id())
                .map(Subject::text)
                .unwrap_or_else(ip),
            LimitKey::Consumer | LimitKey::User => principal
                .map(|p| p.consumer())
                .filter(|c| !c.is_empty())
                .map(Subject::text)
                .unwrap_or_else(ip),
            LimitKey::Header(name) => req
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(Subject::text)
                .unwrap_or_else(ip),
        }
    }

    fn decide(
        &self,
        cx: &mut RequestCx,
        limits: &[&Limit],
        subjects: &[Subject],
        checks: &[crate::ratelimit::gcra::Check],
    ) -> StageResult {
        let Some(decision) = Decision::from_checks(checks) else {
            return Ok(Flow::Continue);
        };
        // The route is read from a snapshot of its own, so `cx` stays free to
        // take the headers.
        let policy = cx.policy.clone();
        let Some(route) = cx.route.map(|i| &policy.routes[i]) else {
            return Ok(Flow::Continue);
        };
        // The route's own limits (the common case) have their policy header
        // made already; a key's own limit changes the set.
        let same_set = limits.len() == route.limits.limits.len()
            && limits
                .iter()
                .zip(&route.limits.limits)
                .all(|(a, b)| std::ptr::eq(*a, b));
        let policy_header = match &route.limits.policy {
            Some(made) if same_set => made.clone(),
            _ => crate::ratelimit::policy_header(limits),
        };
        cx.rate_limit_headers = Some(Box::new(headers(limits, policy_header, &decision)));
        if decision.allowed {
            route.metrics.record_limit(true);
            return Ok(Flow::Continue);
        }
        route.metrics.record_limit(false);
        self.audit_refusal(cx, limits, subjects, &decision);
        Err(GatewayError::RateLimited {
            retry_after_secs: crate::ratelimit::ceil_secs(decision.retry_after_us),
        })
    }

    fn audit_refusal(&self, cx: &RequestCx, limits: &[&Limit], subjects: &[Subject], decision: &Decision) {
        let limit = limits[decision.limit_index];
        let subject = &subjects[decision.limit_index];
        let id = counter_id(&self.local.hasher, limit, subject);
        let recent = self
            .last_audited
            .get(&id)
            .is_some_and(|at| at.elapsed() < self.audit_interval);
        if recent {
            return;
        }
        self.last_audited.insert(id, Instant::now());
        let mut event = Event::new("ratelimit.exceeded", Severity::Notice)
            .for_request(cx)
            .detail("limit", limit.spec.text.as_str())
            .detail("counted_by", limit.spec.key.to_string())
            .detail(
                "retry_after_s",
                crate::ratelimit::ceil_secs(decision.retry_after_us),
            );
        // A header's value is the client's; only say it was one.
        if !matches!(limit.spec.key, LimitKey::Header(_)) {
            event = event.detail("subject", subject.display());
        }
        if let Some(p) = &cx.principal {
            event = event.consumer(p.consumer());
        }
        self.audit.emit(event);
    }

    fn check_local(&self, cx: &mut RequestCx, limits: &[&Limit], subjects: &[Subject]) -> StageResult {
        let counters: SmallVec<[(u64, crate::ratelimit::gcra::Rate); 4]> = limits
            .iter()
            .zip(subjects)
            .map(|(l, s)| (counter_id(&self.local.hasher, l, s), l.rate))
            .collect();
        let checks = self.local.check(&counters);
        self.decide(cx, limits, subjects, &checks)
    }

    /// What to do while Redis is unavailable.
    fn outage(
        &self,
        redis: &RedisLimiter,
        cx: &mut RequestCx,
        limits: &[&Limit],
        subjects: &[Subject],
    ) -> StageResult {
        match redis.on_outage {
            OnOutage::Local => self.check_local(cx, limits, subjects),
            OnOutage::Open => Ok(Flow::Continue),
            OnOutage::Closed => Err(GatewayError::Unavailable(
                "Rate limiting is unavailable; try again shortly.".into(),
            )),
        }
    }
}

impl Stage for RateLimitStage {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request<GatewayBody>) -> Verdict<'a> {
        // The limits borrow from this snapshot, not from `cx`, which the
        // decision then updates.
        let policy = cx.policy.clone();
        let principal = cx.principal.clone();
        let limits = select_limits(self, &policy, principal.as_ref(), cx.route);
        if limits.is_empty() {
            return Verdict::Ready(Ok(Flow::Continue));
        }
        let subjects: SmallVec<[Subject; 4]> = limits.iter().map(|l| self.subject(l, cx, req)).collect();
        let redis = match &self.redis {
            None => return Verdict::Ready(self.check_local(cx, &limits, &subjects)),
            Some(redis) if !redis.is_healthy() => {
                return Verdict::Ready(self.outage(redis, cx, &limits, &subjects));
            }
            Some(redis) => redis,
        };
        let keys: Vec<(String, crate::ratelimit::gcra::Rate)> = limits
            .iter()
            .zip(&subjects)
            .map(|(l, s)| (redis_key(&redis.prefix, l, s), l.rate))
            .collect();
        drop(limits);
        Verdict::Pending(Box::pin(async move {
            let limits = select_limits(self, &policy, principal.as_ref(), cx.route);
            match redis.check(&keys).await {
                Some(checks) => self.decide(cx, &limits, &subjects, &checks),
                None => self.outage(redis, cx, &limits, &subjects),
            }
        }))
    }

    fn on_response(&self, cx: &RequestCx, resp: &mut Response<GatewayBody>) {
        if let Some(headers) = &cx.rate_limit_headers {
            for (name, value) in headers.iter() {
                resp.headers_mut().insert(name.clone(), value.clone());
            }
        }
    }
}
