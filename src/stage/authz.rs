//! Authorisation: what the caller may do here. A route's `scopes` must all
//! be held by the authenticated key, or the answer is 403 (and an
//! `auth.failure` audit event with reason `missing_scope`).

use http::Request;

use crate::audit::{Audit, Event, Severity};
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::pipeline::{Flow, RequestCx, Stage, StageResult, Verdict};

pub struct AuthzStage {
    pub audit: Audit,
}

impl AuthzStage {
    fn check(&self, cx: &RequestCx) -> StageResult {
        let Some(route) = cx.route() else {
            return Ok(Flow::Continue);
        };
        if route.auth.scopes.is_empty() {
            return Ok(Flow::Continue);
        }
        let held = cx.principal.as_ref().map(|p| p.scopes()).unwrap_or(&[]);
        let missing: Vec<&str> = route
            .auth
            .scopes
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
            event = event.consumer(p.consumer());
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

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, _req: &'a mut Request<GatewayBody>) -> Verdict<'a> {
        Verdict::Ready(self.check(cx))
    }
}
