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
use crate::oidc::flow::TokenSet;
use crate::pipeline::{Flow, RequestCx, StageResult, Verdict};
use crate::principal::Method;
use crate::sessions::{SessionCache, SessionEntry, SessionKeys};
use crate::store::now_ms;

/// What the session method needs.
pub struct SessionAuth {
    keys: Arc<SessionKeys>,
    cache: Option<Arc<SessionCache>>,
    /// For refreshing provider tokens.
    providers: Option<Arc<crate::oidc::Providers>>,
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
            providers: cx.providers.clone(),
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
        let [a, b, c, d] = crate::sessions::LOGIN_COOKIES;
        crate::cookies::remove_all(req.headers_mut(), &[sessions.cookie_name.as_str(), a, b, c, d]);
        value
    }

    pub(super) fn session_access<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        auth: &'a RouteAuth,
        req: &'a mut Request<GatewayBody>,
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
                return match self.session_decide(cx, auth, found, false) {
                    Ok(entry) if auth.forward_provider_token => Verdict::Pending(Box::pin(async move {
                        self.attach_provider_token(cx, auth, &entry, req).await
                    })),
                    Ok(_) => Verdict::CONTINUE,
                    Err(error) => Verdict::Ready(Err(error)),
                };
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
                Ok(found) => {
                    let entry = self.session_decide(cx, auth, found, charged)?;
                    if auth.forward_provider_token {
                        return self.attach_provider_token(cx, auth, &entry, req).await;
                    }
                    Ok(Flow::Continue)
                }
                Err(error) => {
                    tracing::error!(request_id = cx.request_id(), %error, "session lookup failed");
                    Err(GatewayError::Unavailable(
                        "the session store is not available".into(),
                    ))
                }
            }
        }))
    }

    /// Admits a live session (its principal goes on the request) or
    /// refuses.
    fn session_decide(
        &self,
        cx: &mut RequestCx,
        auth: &RouteAuth,
        found: Option<Arc<SessionEntry>>,
        charged: bool,
    ) -> Result<Arc<SessionEntry>, GatewayError> {
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
        Ok(entry)
    }

    /// `Authorization: Bearer <the provider's access token>` for the
    /// upstream, renewed first when it ends within [`REFRESH_MARGIN_SECS`]. A session
    /// whose provider no longer renews its token is refused.
    async fn attach_provider_token(
        &self,
        cx: &mut RequestCx,
        auth: &RouteAuth,
        entry: &SessionEntry,
        req: &mut Request<GatewayBody>,
    ) -> StageResult {
        let sessions = self.sessions.as_ref().expect("checked by the caller");
        let ended = |this: &Self, cx: &mut RequestCx, reason| {
            let r = refusal(
                reason,
                "The identity provider no longer vouches for this session; log in again.",
            );
            Err(this.fail(cx, auth, r, None, true))
        };
        let mut sealed = entry.tokens.lock().await;
        let Some(mut tokens) = sealed
            .as_deref()
            .and_then(|s| sessions.keys.decrypt(s))
            .and_then(|plain| serde_json::from_slice::<TokenSet>(&plain).ok())
        else {
            return ended(self, cx, "no_provider_token");
        };
        if tokens.ends_soon(REFRESH_MARGIN_SECS) {
            // Another instance may have renewed them already (and, with a
            // provider that rotates refresh tokens, spent the one we hold).
            if let Some(cache) = &sessions.cache
                && let Ok(Some(stored)) = cache.store().find_session(&entry.record.id_hash).await
                && let Some(newer) = stored
                    .tokens
                    .as_deref()
                    .and_then(|s| sessions.keys.decrypt(s))
                    .and_then(|plain| serde_json::from_slice::<TokenSet>(&plain).ok())
                    .filter(|t| !t.ends_soon(REFRESH_MARGIN_SECS))
            {
                tokens = newer;
                *sealed = stored.tokens;
            }
        }
        if tokens.ends_soon(REFRESH_MARGIN_SECS) && tokens.refresh_token.is_some() {
            let provider = sessions
                .providers
                .as_ref()
                .and_then(|p| p.find(&entry.record.provider).cloned().zip(p.client.clone()));
            let Some((provider, client)) = provider else {
                return ended(self, cx, "provider_gone");
            };
            match crate::oidc::flow::refresh(&provider, &client, &tokens).await {
                Ok(renewed) => {
                    tokens = renewed;
                    let resealed = sessions
                        .keys
                        .encrypt(&serde_json::to_vec(&tokens).expect("tokens serialise"));
                    if let Some(cache) = &sessions.cache
                        && let Err(error) = cache
                            .store()
                            .set_session_tokens(&entry.record.id_hash, &resealed)
                            .await
                    {
                        tracing::warn!(request_id = cx.request_id(), %error, "could not store refreshed tokens");
                    }
                    *sealed = Some(resealed);
                    self.audit.emit(
                        crate::audit::Event::new("session.tokens_refreshed", crate::audit::Severity::Info)
                            .for_request(cx)
                            .consumer(entry.record.username.as_str())
                            .detail("provider", entry.record.provider.as_str()),
                    );
                }
                Err(error) => {
                    tracing::warn!(request_id = cx.request_id(), %error, "provider token refresh failed");
                    return ended(self, cx, "provider_refresh_failed");
                }
            }
        }
        if tokens.expired() {
            return ended(self, cx, "provider_token_expired");
        }
        let Some(access) = tokens
            .access_token
            .as_deref()
            .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
        else {
            return ended(self, cx, "no_provider_token");
        };
        cx.credentials.add_token(access.clone());
        req.headers_mut().insert(http::header::AUTHORIZATION, access);
        Ok(Flow::Continue)
    }
}

/// Provider access tokens are renewed when they end within this many
/// seconds, so one never expires on its way upstream.
const REFRESH_MARGIN_SECS: u64 = 10;

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
