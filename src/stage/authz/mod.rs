//! Authorisation: what the caller may do here, for every kind of
//! authentication. A route's `scopes` must all be held by the request's
//! principal, and of its `roles` at least one; otherwise the answer is 403
//! (and an `auth.failure` audit event with reason `missing_scope` or
//! `missing_role`). API keys hold scopes but no roles, so a route with
//! `roles` admits only people (JWTs and login sessions).

use std::sync::Arc;

use http::Request;

use crate::audit::{Audit, Event, Severity};
use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::error::GatewayError;
use crate::pipeline::{Flow, Phases, RequestCx, Route, Slot, Stage, StageResult, Verdict};
use crate::principal::Method;

/// A route's requirements: its slot in this stage (routes without `scopes`
/// or `roles` have none).
#[derive(Debug)]
pub struct RouteRequires {
    /// All of these.
    scopes: Vec<String>,
    /// Any of these.
    roles: Vec<String>,
}

pub struct AuthzStage {
    audit: Audit,
    slot: Slot<RouteRequires>,
}

/// Compiles every route's `scopes`.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let slot = cx.per_route(|route, problems| {
        let (scopes, roles) = (&route.config.scopes, &route.config.roles);
        if scopes.is_empty() && roles.is_empty() {
            return None;
        }
        let methods = route.config.auth.as_deref().unwrap_or_default();
        let authenticated = methods.iter().any(|m| m != "none");
        for (field, set) in [("scopes", !scopes.is_empty()), ("roles", !roles.is_empty())] {
            if set && !authenticated {
                problems.in_route(
                    route,
                    field,
                    format!("{field} need an authenticated route (auth = [\"api_key\"], [\"jwt\"] or [\"session\"])"),
                );
            }
        }
        if !scopes.is_empty() && methods.iter().all(|m| m == "session") && authenticated {
            problems.in_route(
                route,
                "scopes",
                "login sessions hold no scopes; use roles, or add \"api_key\" or \"jwt\"",
            );
        }
        if !roles.is_empty() && methods.iter().all(|m| m == "api_key") && authenticated {
            problems.in_route(
                route,
                "roles",
                "API keys hold no roles; roles need auth = [\"jwt\"] (or a login session)",
            );
        }
        for (field, names) in [("scopes", scopes), ("roles", roles)] {
            for name in names {
                if crate::keys::manage::validate_scope(name).is_err() {
                    problems.in_route(route, field, format!("`{name}` is not a valid name"));
                }
            }
        }
        Some(RouteRequires {
            scopes: scopes.clone(),
            roles: roles.clone(),
        })
    });
    Some(Arc::new(AuthzStage {
        audit: cx.runtime.audit.clone(),
        slot,
    }))
}

impl AuthzStage {
    fn check(&self, cx: &RequestCx, route: &Route) -> StageResult {
        let Some(requires) = route.get(self.slot) else {
            return Ok(Flow::Continue);
        };
        let principal = cx.principal.as_ref();
        let held = principal.map(|p| p.scopes()).unwrap_or(&[]);
        let missing: Vec<&str> = requires
            .scopes
            .iter()
            .filter(|s| !held.contains(s))
            .map(String::as_str)
            .collect();
        let who = match principal.map(|p| p.method()) {
            Some(Method::ApiKey) | None => "The API key",
            Some(Method::Jwt) => "The token",
            Some(Method::Session) => "Your session",
            Some(Method::Mtls) => "The client certificate",
        };
        if !missing.is_empty() {
            self.refused(cx, "missing_scope", &missing);
            return Err(GatewayError::Forbidden(format!(
                "{who} lacks the scope{} this route requires: {}.",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", ")
            )));
        }
        let roles = principal.map(|p| p.roles()).unwrap_or(&[]);
        if !requires.roles.is_empty() && !requires.roles.iter().any(|r| roles.contains(r)) {
            let wanted: Vec<&str> = requires.roles.iter().map(String::as_str).collect();
            self.refused(cx, "missing_role", &wanted);
            return Err(GatewayError::Forbidden(format!(
                "{who} holds none of the roles this route requires: {}.",
                wanted.join(", ")
            )));
        }
        Ok(Flow::Continue)
    }

    fn refused(&self, cx: &RequestCx, reason: &str, missing: &[&str]) {
        let mut event = Event::new("auth.failure", Severity::Warning)
            .for_request(cx)
            .detail("reason", reason)
            .detail("missing", missing);
        if let Some(p) = &cx.principal {
            event = event.consumer(p.name()).detail("method", p.method().as_str());
            if let Some(id) = p.key_id() {
                event = event.detail("key_id", id);
            }
        }
        self.audit.emit(event);
    }
}

impl Stage for AuthzStage {
    fn name(&self) -> &'static str {
        "authz"
    }

    fn rechecks(&self) -> bool {
        true
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
