//! When a failed upstream request is tried again, and the budget that
//! keeps retries from multiplying an outage.
//!
//! A request that never reached a target (the connection was refused or
//! timed out) is tried again whatever its method: the target saw nothing.
//! One that may have reached it (the connection broke before the response
//! head, or the answer was a retried status) is tried again only when its
//! method is idempotent (RFC 9110 §9.2.2) or its route opts in, and only
//! when its body is empty or already in memory, so that the same bytes can
//! be sent again. Retries happen before any response byte reaches the
//! client: the proxy returns the response head only once it is final.
//!
//! The budget is a token bucket in thousandths (Finagle's and linkerd's
//! retry budget): every first try deposits `budget` tokens, every retry
//! takes one whole token, and the bucket holds at most `min_retries`. So
//! however long an outage lasts, retries add at most `budget` of the
//! traffic plus `min_retries`.

use std::sync::atomic::{AtomicI64, Ordering};

use http::{Method, Request};

use super::config::RetryConfig;
use crate::body::GatewayBody;

pub struct RetryPolicy {
    pub attempts: u32,
    statuses: Box<[u16]>,
    pub on_timeout: bool,
    budget: RetryBudget,
}

impl RetryPolicy {
    pub fn new(config: &RetryConfig) -> Self {
        RetryPolicy {
            attempts: config.attempts,
            statuses: config.statuses.clone().into(),
            on_timeout: config.on_timeout,
            budget: RetryBudget::new(config.budget, config.min_retries),
        }
    }

    /// Counts a first try toward the budget.
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Takes a retry from the budget, if one is left.
    pub fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }

    pub fn retries_status(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }

    /// Whether `req` may be sent again if the first try may have reached
    /// the target: its method allows it and its body is empty or in memory.
    pub fn may_resend(&self, req: &Request<GatewayBody>, non_idempotent_ok: bool) -> bool {
        self.attempts > 0 && (non_idempotent_ok || is_idempotent(req.method())) && is_replayable(req.body())
    }
}

/// A copy of `req` to send again, when its body is empty or whole in memory.
pub fn copy_of(req: &Request<GatewayBody>) -> Option<Request<GatewayBody>> {
    let body = replayable(req.body())?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Whether `body` is empty or whole in memory (what [`replayable`] copies).
fn is_replayable(body: &GatewayBody) -> bool {
    use http_body::Body;
    match body {
        GatewayBody::Empty | GatewayBody::Full(_) => true,
        GatewayBody::Streamed(incoming) => incoming.is_end_stream(),
        _ => false,
    }
}

/// GET, HEAD, OPTIONS, TRACE, PUT and DELETE.
pub fn is_idempotent(method: &Method) -> bool {
    method.is_idempotent()
}

/// The same body again, when it is empty or whole in memory.
fn replayable(body: &GatewayBody) -> Option<GatewayBody> {
    is_replayable(body).then(|| match body {
        GatewayBody::Full(bytes) => GatewayBody::Full(bytes.clone()),
        _ => GatewayBody::Empty,
    })
}

struct RetryBudget {
    /// Thousandths of a retry.
    tokens: AtomicI64,
    per_request: i64,
    cap: i64,
}

const TOKEN: i64 = 1000;

impl RetryBudget {
    fn new(share: f64, min_retries: u32) -> Self {
        let cap = i64::from(min_retries) * TOKEN;
        RetryBudget {
            tokens: AtomicI64::new(cap),
            per_request: (share * TOKEN as f64).round() as i64,
            cap,
        }
    }

    fn deposit(&self) {
        // A load first: once the bucket is full (the steady state) no
        // request writes the shared counter.
        if self.per_request > 0 && self.tokens.load(Ordering::Relaxed) < self.cap {
            self.tokens.fetch_add(self.per_request, Ordering::Relaxed);
        }
    }

    fn withdraw(&self) -> bool {
        self.tokens
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| {
                (t >= TOKEN).then_some(t - TOKEN)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_its_share_plus_the_reserve() {
        let budget = RetryBudget::new(0.2, 10);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw() {
                retries += 1;
            }
        }
        // 10 from the reserve, then one per five requests.
        assert!((200..=211).contains(&retries), "{retries}");
    }

    #[test]
    fn a_zero_budget_allows_only_the_reserve() {
        let budget = RetryBudget::new(0.0, 3);
        let allowed = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn only_idempotent_requests_with_replayable_bodies_may_be_resent() {
        let policy = RetryPolicy::new(&RetryConfig::default());
        let get = Request::get("/").body(GatewayBody::Empty).unwrap();
        assert!(policy.may_resend(&get, false), "GET is idempotent");
        let post = Request::post("/").body(GatewayBody::full("x")).unwrap();
        assert!(!policy.may_resend(&post, false));
        assert!(policy.may_resend(&post, true), "the route opted in");
        let copy = copy_of(&post).expect("a body in memory is copied");
        assert_eq!(copy.method(), Method::POST);
        let off = RetryPolicy::new(&RetryConfig {
            attempts: 0,
            ..RetryConfig::default()
        });
        assert!(!off.may_resend(&get, false));
    }
}
