//! Authorisation: what the caller may do here. A route's `scopes` must all
//! be held by the request's principal, or the answer is 403 (and an
//! `auth.failure` audit event with reason `missing_scope`).

use std::sync::Arc;

use http::Request;

use crate::audit::{Audit, Event, Severity};
use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::error::GatewayError;
use crate::pipeline::{Flow, Phases, RequestCx, Route, Slot, Stage, StageResult, Verdict};

/// A route's requirements: its slot in this stage (routes without `scopes`
/// have none).
#[derive(Debug)]
pub struct RouteScopes(Vec<String>);

pub struct AuthzStage {
    audit: Audit,
    slot: Slot<RouteScopes>,
}

/// Compiles every route's `scopes`.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let slot = cx.per_route(|route, problems| {
        let scopes = &route.config.scopes;
        if scopes.is_empty() {
            return None;
        }
        let authenticated = route
            .config
            .auth
            .as_ref()
            .is_some_and(|methods| methods.iter().any(|m| m != "none"));
        if !authenticated {
            problems.in_route(
                route,
                "scopes",
                "scopes need an authenticated route (auth = [\"api_key\"])",
            );
        }
        for scope in scopes {
            if crate::keys::manage::validate_scope(scope).is_err() {
                problems.in_route(route, "scopes", format!("`{scope}` is not a valid scope"));
            }
        }
        Some(RouteScopes(scopes.clone()))
    });
    Some(Arc::new(AuthzStage {
        audit: cx.runtime.audit.clone(),
        slot,
    }))
}

impl AuthzStage {
    fn check(&self, cx: &RequestCx, route: &Route) -> StageResult {
        let Some(RouteScopes(required)) = route.get(self.slot) else {
            return Ok(Flow::Continue);
        };
        let held = cx.principal.as_ref().map(|p| p.scopes()).unwrap_or(&[]);
        let missing: Vec<&str> = required
            .iter()
            .filter(|s| !held.contains(s))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            return Ok(Flow::Continue);
        }
        let mut event = Event::new("auth.failure", Severity::Warning)
            .for_request(cx)
            .detail("reason", "missing_scope")
            .detail("missing", missing.clone());
        if let Some(p) = &cx.principal {
            event = event.consumer(p.name()).detail("method", p.method().as_str());
            if let Some(id) = p.key_id() {
                event = event.detail("key_id", id);
            }
        }
        self.audit.emit(event);
        Err(GatewayError::Forbidden(format!(
            "The API key lacks the scope{} this route requires: {}.",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", ")
        )))
    }
}

impl Stage for AuthzStage {
    fn name(&self) -> &'static str {
        "authz"
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS
    }

    fn access<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        route: &'a Route,
        _req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        Verdict::Ready(self.check(cx, route))
    }
}
