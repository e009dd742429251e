//! `[auth] failure_limit`: failed authentications are limited per client
//! IP, so a flood of guessed keys costs no store query past the limit.
//!
//! Each client has a budget (GCRA, like the rate limits). A key that is not
//! in the cache is charged to the budget *before* it is looked up, in one
//! step (so concurrent guesses cannot all pass a check before any is
//! counted), and is answered 429 with `Retry-After`, without the lookup,
//! when the budget is spent; any other failed authentication (a malformed
//! key, a wrong secret or an unknown ID found in the cache) is charged when
//! it fails, and answered 429 instead of 401 once the budget is spent. A
//! working key that is in the cache costs no lookup and is never refused by
//! this limit, so an attacker behind a shared address cannot lock out its
//! neighbours' working keys. The refusals are one `auth.failure_limited`
//! audit event per client per window.
//!
//! Counted in process (GCRA, like the rate limits), not in Redis: checking
//! it is then free of round trips on every authenticated request. With
//! several instances a client gets the limit at each; keys carry 262
//! random bits, so the limit protects the store, not the keys.
//! A request that presents no credential at all is not a failed attempt
//! and is not counted.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Deserializer};

use crate::audit::{Audit, Event, Severity};
use crate::config::{LimitKey, RateSpec};
use crate::pipeline::RequestCx;
use crate::ratelimit::local::LocalLimiter;
use crate::ratelimit::{Limit, Scope, Subject, ceil_secs, counter_id};

/// `failure_limit = "100 per minute"`, or `"off"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureLimit {
    Off,
    Limit(RateSpec),
}

impl<'de> Deserialize<'de> for FailureLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(FailureLimit::Off);
        }
        crate::config::rate::parse_rate(&text)
            .map(FailureLimit::Limit)
            .map_err(serde::de::Error::custom)
    }
}

/// The production default: far above what a real client fails in a
/// minute, far below a useful guessing rate.
pub const PRODUCTION_DEFAULT: &str = "100 per minute";

pub struct FailureLimiter {
    limit: Limit,
    local: Arc<LocalLimiter>,
    ipv6_prefix: u8,
    audit: Audit,
    /// When each client's refusals were last audited.
    last_audited: Arc<quick_cache::sync::Cache<u64, Instant>>,
}

impl FailureLimiter {
    /// The limiter for a configured value, or `Err` with the problem.
    pub fn compile(
        setting: Option<&FailureLimit>,
        production: bool,
        runtime: &crate::runtime::Runtime,
        ipv6_prefix: u8,
    ) -> Result<Option<FailureLimiter>, String> {
        let spec = match setting {
            Some(FailureLimit::Off) => return Ok(None),
            Some(FailureLimit::Limit(spec)) => spec.clone(),
            None if production => {
                crate::config::rate::parse_rate(PRODUCTION_DEFAULT).expect("a valid default")
            }
            None => return Ok(None),
        };
        if spec.key != LimitKey::Ip {
            return Err("failed authentications are always counted per client IP; leave out `per …`".into());
        }
        Ok(Some(FailureLimiter {
            limit: Limit::new(spec, Scope::Gateway("auth-failures"), "auth-failures".into()),
            local: runtime.limiter.clone(),
            ipv6_prefix,
            audit: runtime.audit.clone(),
            last_audited: runtime.limit_audit.clone(),
        }))
    }

    fn counter(&self, cx: &RequestCx) -> u64 {
        counter_id(
            &self.local.hasher,
            &self.limit,
            &Subject::ip(cx.client_ip, self.ipv6_prefix),
        )
    }

    /// Charges a store lookup or a failed authentication to this client's
    /// budget, or returns the seconds to wait when the budget is spent.
    pub fn charge(&self, cx: &RequestCx) -> Result<(), u64> {
        let id = self.counter(cx);
        let check = self.local.count(id, self.limit.rate);
        if check.allowed {
            return Ok(());
        }
        let retry_after = ceil_secs(check.retry_after_us).max(1);
        self.audit_once(cx, id, retry_after);
        Err(retry_after)
    }

    fn audit_once(&self, cx: &RequestCx, id: u64, retry_after: u64) {
        let recent = self
            .last_audited
            .get(&id)
            .is_some_and(|at| at.elapsed() < self.limit.spec.period);
        if recent {
            return;
        }
        self.last_audited.insert(id, Instant::now());
        self.audit.emit(
            Event::new("auth.failure_limited", Severity::Warning)
                .for_request(cx)
                .detail("limit", self.limit.spec.text.as_str())
                .detail("retry_after_s", retry_after),
        );
    }
}
