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
use crate::compile::{CompileCx, Problems, RouteEntry};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::pipeline::{Flow, RequestCx, StageResult};

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

/// The names protections report under (the `protection` label).
pub mod protection {
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
/// the route's `mode`, else the protection's global setting. Production
/// configs get a warning for each protection left reporting.
pub fn mode_for(
    problems: &mut Problems<'_>,
    route: &RouteEntry<'_>,
    protection: &'static str,
    own: Option<Mode>,
    global: Option<Mode>,
) -> Mode {
    let mode = own.or(route.config.mode).or(global).unwrap_or_default();
    if mode == Mode::Report && problems.production() {
        problems.warn(format!(
            "{}: {protection} runs in report mode (requests it would refuse go through)",
            route.label()
        ));
    }
    mode
}
