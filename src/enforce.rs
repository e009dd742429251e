//! Report-only rollout: every protection can run in `mode = "report"`, on
//! a route (the route's `mode`) or on its own (the protection's `mode`,
//! which wins). A reported refusal lets the request through as if the
//! protection were not configured, and is audited (`would_refuse`) and
//! counted (`portcullis_would_refuse_total{protection,route}`): deploy
//! watching, read the failure rates, then enforce.
//!
//! Stages decide as usual and hand their refusal to [`Enforcement::refuse`],
//! so the enforcing path is the one that is tested either way.

use serde::Deserialize;
use std::sync::Arc;

use crate::audit::{Audit, Event, Severity};
use crate::body::GatewayBody;
use crate::compile::{CompileCx, Problems, RouteEntry};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::pipeline::{Finished, Flow, Phases, RequestCx, Route, Slot, Stage, StageResult, Verdict};
use http::{Request, Response};

/// How a protection treats what it would refuse.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse it (the default).
    #[default]
    Enforce,
    /// Let it through; audit and count it.
    Report,
}

/// The names protections report under (the `protection` label), and
/// that a route's `report_only` lists.
pub mod protection {
    pub const ALL: &[&str] = &[
        AUTHN,
        AUTHZ,
        CORS,
        CSRF,
        HTTPS_REDIRECT,
        IP_FILTER,
        RATE_LIMIT,
        VALIDATION,
        CONTENT_RULES,
        UPLOADS,
    ];

    pub const AUTHN: &str = "authn";
    pub const AUTHZ: &str = "authz";
    pub const CORS: &str = "cors";
    pub const CSRF: &str = "csrf";
    pub const HTTPS_REDIRECT: &str = "https_redirect";
    pub const IP_FILTER: &str = "ip_filter";
    pub const RATE_LIMIT: &str = "rate_limit";
    pub const VALIDATION: &str = "validation";
    pub const CONTENT_RULES: &str = "content_rules";
    pub const UPLOADS: &str = "uploads";
}

/// What a stage needs to report instead of refusing.
#[derive(Clone)]
pub struct Enforcement {
    audit: Audit,
    metrics: Arc<Metrics>,
}

impl Enforcement {
    pub fn new(cx: &CompileCx<'_>) -> Enforcement {
        Enforcement {
            audit: cx.runtime.audit.clone(),
            metrics: cx.runtime.metrics.clone(),
        }
    }

    /// For unit tests: reports go nowhere.
    #[cfg(test)]
    pub fn disabled() -> Enforcement {
        Enforcement {
            audit: Audit::disabled(),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Refuses with `error`, or in report mode records the refusal and lets
    /// the request go on.
    pub fn refuse(
        &self,
        cx: &RequestCx,
        mode: Mode,
        protection: &'static str,
        error: GatewayError,
    ) -> StageResult {
        match mode {
            Mode::Enforce => Err(error),
            Mode::Report => {
                self.record(cx, protection, &error);
                Ok(Flow::Continue)
            }
        }
    }

    /// Records a refusal that report mode let through.
    pub fn record(&self, cx: &RequestCx, protection: &'static str, error: &GatewayError) {
        let route = cx.route.as_ref().map_or("(none)", |r| &r.id);
        self.metrics.would_refuse(protection, route);
        self.audit.emit(
            Event::new("would_refuse", Severity::Notice)
                .for_request(cx)
                .detail("protection", protection)
                .detail("status", error.status().as_u16())
                .detail("reason", error.to_string()),
        );
    }
}

/// The mode of `protection` on a route: its own setting on the route, else
/// report if the route's `report_only` lists it, else the route's `mode`,
/// else the protection's global setting. Production configs get a warning
/// for each protection left reporting.
pub fn mode_for(
    problems: &mut Problems<'_>,
    route: &RouteEntry<'_>,
    protection: &'static str,
    own: Option<Mode>,
    global: Option<Mode>,
) -> Mode {
    let listed = route.config.report_only.iter().any(|p| p == protection);
    let mode = own
        .or(listed.then_some(Mode::Report))
        .or(route.config.mode)
        .or(global)
        .unwrap_or_default();
    if mode == Mode::Report && problems.production() {
        problems.warn(format!(
            "{}: {protection} runs in report mode (requests it would refuse go through)",
            route.label()
        ));
    }
    mode
}

/// Checks every route's `report_only` names.
pub fn check_report_only(cx: &mut CompileCx<'_>) {
    for i in 0..cx.routes().len() {
        let unknown: Vec<String> = cx.routes()[i]
            .config
            .report_only
            .iter()
            .filter(|p| !protection::ALL.contains(&p.as_str()))
            .cloned()
            .collect();
        for name in unknown {
            let names = protection::ALL.join(", ");
            cx.route_problem(
                i,
                "report_only",
                format!("`{name}` is not a protection ({names})"),
            );
        }
    }
}

/// A stage whose refusals, on routes where its protection reports, are
/// recorded and let through: for the stages that have no report mode of
/// their own (authentication, authorisation, rate limits). Routes that
/// enforce call the stage directly; only reporting routes pay for the
/// wrapping future.
pub struct Reported {
    inner: Arc<dyn Stage>,
    protection: &'static str,
    /// Filled on the routes where the protection reports.
    slot: Slot<()>,
    enforcement: Enforcement,
}

/// `stage`, wrapped so that routes reporting `protection` let its refusals
/// through; the stage itself when no route does.
pub fn reported(
    cx: &mut CompileCx<'_>,
    protection: &'static str,
    stage: Option<Arc<dyn Stage>>,
) -> Option<Arc<dyn Stage>> {
    let inner = stage?;
    let mut any = false;
    let slot = cx.per_route(|route, problems| {
        let report = mode_for(problems, route, protection, None, None) == Mode::Report;
        any |= report;
        report.then_some(())
    });
    if !any {
        return Some(inner);
    }
    Some(Arc::new(Reported {
        inner,
        protection,
        slot,
        enforcement: Enforcement::new(cx),
    }))
}

impl Reported {
    /// A refusal becomes a report.
    fn report(&self, cx: &RequestCx, result: StageResult) -> StageResult {
        match result {
            Err(error) => {
                self.enforcement.record(cx, self.protection, &error);
                Ok(Flow::Continue)
            }
            other => other,
        }
    }
}

async fn resolve(verdict: Verdict<'_>) -> StageResult {
    match verdict {
        Verdict::Ready(result) => result,
        Verdict::Pending(future) => future.await,
    }
}

impl Stage for Reported {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn rechecks(&self) -> bool {
        self.inner.rechecks()
    }

    fn phases(&self) -> Phases {
        self.inner.phases()
    }

    fn early<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request<GatewayBody>) -> Verdict<'a> {
        self.inner.early(cx, req)
    }

    fn access<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        route: &'a Route,
        req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        if route.get(self.slot).is_none() {
            return self.inner.access(cx, route, req);
        }
        Verdict::Pending(Box::pin(async move {
            let result = resolve(self.inner.access(&mut *cx, route, &mut *req)).await;
            self.report(cx, result)
        }))
    }

    fn body<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        route: &'a Route,
        req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        if route.get(self.slot).is_none() {
            return self.inner.body(cx, route, req);
        }
        Verdict::Pending(Box::pin(async move {
            let result = resolve(self.inner.body(&mut *cx, route, &mut *req)).await;
            self.report(cx, result)
        }))
    }

    fn upstream_request(&self, cx: &RequestCx, route: &Route, req: &mut Request<GatewayBody>) {
        self.inner.upstream_request(cx, route, req)
    }

    fn response(&self, cx: &RequestCx, resp: &mut Response<GatewayBody>) {
        self.inner.response(cx, resp)
    }

    fn logging(&self, cx: &RequestCx, done: &Finished<'_>) {
        self.inner.logging(cx, done)
    }
}
