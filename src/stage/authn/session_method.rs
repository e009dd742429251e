//! The `session` method in the authn stage: the session cookie is opened
//! with the session keys (a forged or altered cookie is refused without a
//! lookup), its session found in the cache or the store, and checked for
//! revocation, absolute expiry and idleness. A browser refused on a session
//! route is sent to the login page; an API client gets 401.

use std::sync::Arc;

use http::{HeaderValue, Request};

use super::{AuthnStage, Refusal, RouteAuth};
use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::error::GatewayError;
use crate::pipeline::{Flow, RequestCx, StageResult, Verdict};
use crate::principal::Method;
use crate::sessions::{SessionCache, SessionEntry, SessionKeys};
use crate::store::now_ms;

/// What the session method needs.
pub struct SessionAuth {
    keys: Arc<SessionKeys>,
    cache: Option<Arc<SessionCache>>,
    pub cookie_name: String,
    idle_ms: i64,
}

impl SessionAuth {
    /// `None` without `[sessions]` (problems are reported where routes name
    /// the method).
    pub fn compile(cx: &mut CompileCx<'_>) -> Option<SessionAuth> {
        let config = cx.config.sessions.as_ref()?;
        let Some(keys) = cx.session_keys.clone() else {
            cx.problems
                .at("secrets.session_key", "[sessions] needs secrets.session_key");
            return None;
        };
        Some(SessionAuth {
            keys,
            cache: cx.runtime.sessions.clone(),
            cookie_name: config.cookie_name.clone(),
            idle_ms: config.idle_timeout.0.as_millis() as i64,
        })
    }
}

fn refusal(reason: &'static str, detail: &'static str) -> Refusal {
    Refusal {
        method: Some(Method::Session),
        reason,
        detail,
        presented: true,
    }
}

/// A top-level page load by a browser: it can follow a redirect to a login
/// page. Anything else (`fetch`, API clients) gets 401.
pub(super) fn wants_login_page(req: &Request<GatewayBody>) -> bool {
    let navigating = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
    let html = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    navigating && html
}

/// `/.auth/login?rd=<the request's path and query>`.
pub(super) fn login_location(req: &Request<GatewayBody>) -> HeaderValue {
    let target = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let encoded = percent_encoding::utf8_percent_encode(target, percent_encoding::NON_ALPHANUMERIC);
    HeaderValue::try_from(format!("/.auth/login?rd={encoded}"))
        .unwrap_or(HeaderValue::from_static("/.auth/login"))
}

impl AuthnStage {
    /// The session cookie's value, if the request carries one; and the
    /// gateway's cookies are removed from the request either way, so no
    /// upstream ever sees them (whichever method, if any, admits it).
    pub(super) fn take_session_cookie(&self, req: &mut Request<GatewayBody>) -> Option<String> {
        let sessions = self.sessions.as_ref()?;
        let value = crate::cookies::values(req.headers(), &sessions.cookie_name)
            .next()
            .map(str::to_string);
        let headers = req.headers_mut();
        if headers.contains_key(http::header::COOKIE) {
            crate::cookies::remove(headers, &sessions.cookie_name);
            for name in crate::sessions::LOGIN_COOKIES {
                crate::cookies::remove(headers, name);
            }
        }
        value
    }

    pub(super) fn session_access<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        auth: &'a RouteAuth,
        cookie: String,
    ) -> Verdict<'a> {
        let Some(sessions) = self.sessions.as_ref() else {
            return Verdict::Ready(Err(GatewayError::Unavailable(
                "sessions are not configured".into(),
            )));
        };
        if let Ok(raw) = HeaderValue::from_str(&cookie) {
            cx.credentials.add_token(raw);
        }
        let Some(id) = sessions.keys.open_cookie(&cookie) else {
            let r = refusal("tampered", "The session cookie is not valid.");
            return Verdict::Ready(Err(self.fail(cx, auth, r, None, false)));
        };
        let Some(cache) = sessions.cache.clone() else {
            return Verdict::Ready(Err(GatewayError::Unavailable(
                "the session store is not available".into(),
            )));
        };
        if let Some(found) = cache.cached(&id) {
            // Idle by this instance's count: another may have seen it used
            // since, so the store's last use is read before refusing.
            let idle_here = found
                .as_ref()
                .is_some_and(|e| e.ended(now_ms(), sessions.idle_ms) == Some("idle"));
            if !idle_here {
                return Verdict::Ready(self.session_decide(cx, auth, found, false));
            }
        }
        if let Some(failures) = &self.failures
            && let Err(retry_after_secs) = failures.charge(cx)
        {
            return Verdict::Ready(Err(GatewayError::AuthFailuresLimited { retry_after_secs }));
        }
        let charged = self.failures.is_some();
        Verdict::Pending(Box::pin(async move {
            match cache.load(&id).await {
                Ok(found) => self.session_decide(cx, auth, found, charged),
                Err(error) => {
                    tracing::error!(request_id = cx.request_id(), %error, "session lookup failed");
                    Err(GatewayError::Unavailable(
                        "the session store is not available".into(),
                    ))
                }
            }
        }))
    }

    fn session_decide(
        &self,
        cx: &mut RequestCx,
        auth: &RouteAuth,
        found: Option<Arc<SessionEntry>>,
        charged: bool,
    ) -> StageResult {
        let sessions = self.sessions.as_ref().expect("checked by the caller");
        let Some(entry) = found else {
            let r = refusal("unknown", "The session has ended; log in again.");
            return Err(self.fail(cx, auth, r, None, charged));
        };
        let now = now_ms();
        if let Some(reason) = entry.ended(now, sessions.idle_ms) {
            let r = refusal(reason, "The session has ended; log in again.");
            return Err(self.fail(cx, auth, r, None, charged));
        }
        entry.touch(now);
        self.succeeded(cx, Method::Session, &entry.record.username, None);
        cx.principal = Some(entry.principal.clone());
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_browser_page_loads_are_sent_to_log_in() {
        let req = |method: &str, accept: &str| {
            let mut r = Request::new(GatewayBody::Empty);
            *r.method_mut() = method.parse().unwrap();
            *r.uri_mut() = "/portal/x?a=1&b=/".parse().unwrap();
            r.headers_mut()
                .insert(http::header::ACCEPT, accept.parse().unwrap());
            r
        };
        assert!(wants_login_page(&req(
            "GET",
            "text/html,application/xhtml+xml,*/*;q=0.8"
        )));
        assert!(!wants_login_page(&req("GET", "application/json")));
        assert!(!wants_login_page(&req("POST", "text/html")));
        assert_eq!(
            login_location(&req("GET", "text/html")),
            "/.auth/login?rd=%2Fportal%2Fx%3Fa%3D1%26b%3D%2F"
        );
    }
}
