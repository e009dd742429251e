//! Limits that run before authentication, so a flood is refused before it
//! costs a key lookup, a store query or a Redis call for the route's own
//! limits:
//!
//! - `[rate_limits] pre_auth` runs in `early`, before routing, counted
//!   across the gateway;
//! - a route's `pre_auth_rate_limit` runs first in `access`, right after
//!   routing (a CORS preflight is answered before it), counted per route.
//!
//! They count by `ip` or `header:NAME` (a route's also by `route`): who the
//! client is is not known yet. A refusal is 429 with `Retry-After` and a
//! `ratelimit.exceeded` event with `phase = "pre_auth"`; these limits add
//! no `RateLimit` headers, which describe the route's own limits.

use std::sync::Arc;

use http::Request;
use smallvec::SmallVec;

use super::{RefusalAudit, subject};
use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::config::{LimitKey, RateSpec};
use crate::error::GatewayError;
use crate::pipeline::{Flow, Phases, RequestCx, Route, Slot, Stage, StageResult, Verdict};
use crate::ratelimit::{Counted, Decision, Limit, Limiters, Scope, Subject, ceil_secs, limit_name};

/// A set of limits before authentication.
#[derive(Debug)]
pub struct PreAuthLimits(Vec<Limit>);

pub struct PreAuthLimitStage {
    limiters: Limiters,
    ipv6_prefix: u8,
    /// `[rate_limits] pre_auth`.
    global: PreAuthLimits,
    refusals: RefusalAudit,
    slot: Slot<PreAuthLimits>,
}

fn compile_limits(
    specs: &[RateSpec],
    scope: Scope,
    allow_route: bool,
    mut problem: impl FnMut(String),
) -> PreAuthLimits {
    let mut names: Vec<String> = Vec::new();
    let mut limits = Vec::new();
    for spec in specs {
        let counted_by = match &spec.key {
            LimitKey::Ip | LimitKey::Header(_) => true,
            LimitKey::Route => allow_route,
            LimitKey::Consumer | LimitKey::Key | LimitKey::User => false,
        };
        if !counted_by {
            let by = if allow_route {
                "ip, route or header:NAME"
            } else {
                "ip or header:NAME"
            };
            problem(format!(
                "`{}`: before authentication a limit can count only by {by}",
                spec.text
            ));
            continue;
        }
        let name = limit_name(spec, &names);
        names.push(name.clone());
        limits.push(Limit::new(
            spec.clone(),
            scope.clone(),
            format!("pre-auth-{name}"),
        ));
    }
    PreAuthLimits(limits)
}

/// Compiles `[rate_limits] pre_auth` and every route's
/// `pre_auth_rate_limit`; without any, there is no stage.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let config = cx.config;
    let global = compile_limits(
        &config.rate_limits.pre_auth,
        Scope::Gateway("pre-auth"),
        false,
        |p| cx.problems.at("rate_limits.pre_auth", p),
    );
    let slot = cx.per_route(|route, problems| {
        let specs = route.config.pre_auth_rate_limit.as_deref()?;
        let limits = compile_limits(specs, Scope::PreAuth(route.id.clone()), true, |p| {
            problems.in_route(route, "pre_auth_rate_limit", p)
        });
        (!limits.0.is_empty()).then_some(limits)
    });
    let any_route = config
        .routes
        .iter()
        .any(|r| r.pre_auth_rate_limit.as_ref().is_some_and(|l| !l.is_empty()));
    if global.0.is_empty() && !any_route {
        return None;
    }
    Some(Arc::new(PreAuthLimitStage {
        limiters: cx.runtime.limiters(),
        ipv6_prefix: config.rate_limits.ipv6_prefix,
        global,
        refusals: RefusalAudit::new(cx),
        slot,
    }))
}

impl PreAuthLimitStage {
    fn check<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        limits: &'a PreAuthLimits,
        req: &Request<GatewayBody>,
    ) -> Verdict<'a> {
        if limits.0.is_empty() {
            return Verdict::CONTINUE;
        }
        let refs: SmallVec<[&Limit; 4]> = limits.0.iter().collect();
        let subjects: SmallVec<[Subject; 4]> = refs
            .iter()
            .map(|l| subject(l, cx, req, self.ipv6_prefix))
            .collect();
        if let Some(counted) = self.limiters.check_now(&refs, &subjects) {
            return Verdict::Ready(self.decide(cx, &refs, &subjects, counted));
        }
        Verdict::Pending(Box::pin(async move {
            let counted = self.limiters.check_shared(&refs, &subjects).await;
            self.decide(cx, &refs, &subjects, counted)
        }))
    }

    fn decide(
        &self,
        cx: &RequestCx,
        limits: &[&Limit],
        subjects: &[Subject],
        counted: Counted,
    ) -> StageResult {
        let Some(checks) = counted.checks()? else {
            return Ok(Flow::Continue);
        };
        match Decision::from_checks(&checks) {
            Some(decision) if !decision.allowed => {
                let i = decision.limit_index;
                self.refusals
                    .emit(cx, &self.limiters, limits[i], &subjects[i], &decision, "pre_auth");
                Err(GatewayError::RateLimited {
                    retry_after_secs: ceil_secs(decision.retry_after_us),
                })
            }
            _ => Ok(Flow::Continue),
        }
    }
}

impl Stage for PreAuthLimitStage {
    fn name(&self) -> &'static str {
        "pre_auth_limit"
    }

    fn phases(&self) -> Phases {
        Phases::EARLY.and(Phases::ACCESS)
    }

    fn early<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request<GatewayBody>) -> Verdict<'a> {
        self.check(cx, &self.global, req)
    }

    fn access<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        route: &'a Route,
        req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        match route.get(self.slot) {
            Some(limits) => self.check(cx, limits, req),
            None => Verdict::CONTINUE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_before_authentication_cannot_count_by_who_the_client_is() {
        let specs: Vec<RateSpec> = [
            "5 per second per ip",
            "5 per second per key",
            "5 per second per route",
        ]
        .iter()
        .map(|t| crate::config::rate::parse_rate(t).unwrap())
        .collect();
        let mut problems = Vec::new();
        let global = compile_limits(&specs, Scope::Gateway("pre-auth"), false, |p| problems.push(p));
        assert_eq!(global.0.len(), 1);
        assert_eq!(problems.len(), 2, "{problems:?}");
        let mut problems = Vec::new();
        let route = compile_limits(&specs, Scope::PreAuth("r".into()), true, |p| problems.push(p));
        assert_eq!(route.0.len(), 2);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn a_flood_from_one_ip_is_refused_without_any_lookup() {
        let runtime = crate::runtime::Runtime::offline();
        let spec = crate::config::rate::parse_rate("2 per minute").unwrap();
        let stage = PreAuthLimitStage {
            limiters: runtime.limiters(),
            ipv6_prefix: 64,
            global: compile_limits(&[spec], Scope::Gateway("pre-auth"), false, |p| panic!("{p}")),
            refusals: RefusalAudit {
                audit: crate::audit::Audit::disabled(),
                interval: std::time::Duration::from_secs(60),
                last_audited: runtime.limit_audit.clone(),
            },
            slot: Slot::new(0),
        };
        let mut req = Request::new(GatewayBody::Empty);
        let statuses: Vec<u16> = (0..3)
            .map(|_| {
                let mut cx = RequestCx::for_test();
                match stage.early(&mut cx, &mut req) {
                    Verdict::Ready(Ok(_)) => 200,
                    Verdict::Ready(Err(e)) => e.status().as_u16(),
                    Verdict::Pending(_) => panic!("in-process limits never wait"),
                }
            })
            .collect();
        assert_eq!(statuses, [200, 200, 429]);
    }
}
