//! `/.auth/…` on the public listener: the gateway's own login pages.
//!
//! - `GET /.auth/login?rd=/path`: the sign-in page (local users' form when
//!   `[sessions] local_users = true`). It sets a short-lived pre-login
//!   cookie; the form carries a token bound to it (CSRF).
//! - `POST /.auth/login`: checks the token, the per-user and per-IP login
//!   limits, then the password (an unknown user costs the same as a wrong
//!   password); on success a session is created, its cookie set, and the
//!   browser sent back to `rd` (same-origin paths only).
//! - `GET /.auth/logout` shows a sign-out button; `POST /.auth/logout`
//!   (with its token) revokes the session everywhere and clears the cookie.
//! - `GET /.auth/userinfo`: the session's identity as JSON, or 401.
//! - `GET /.auth/login/{provider}` and `/.auth/callback/{provider}`: login
//!   with an `[[auth.oidc]]` provider (see `oidc.rs` and [`crate::oidc`]).
//!
//! Runs in the early phase, before routing: these paths are never routed to
//! an upstream. Every page is `no-store`, framed by nobody, and allowed no
//! script or outside resource.

mod html;
mod login;
mod oidc;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use crate::audit::Audit;
use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::error::GatewayError;
use crate::pipeline::{Flow, Phases, RequestCx, Stage, StageResult, Verdict};
use crate::ratelimit::Limit;
use crate::ratelimit::local::LocalLimiter;
use crate::sessions::{SessionCache, SessionKeys, SessionsConfig};

/// Largest login or logout form read.
const MAX_FORM: usize = 16 * 1024;
/// The pre-login cookie (CSRF binding of the login form), for 10 minutes.
const LOGIN_COOKIE: &str = "__Host-portcullis-login";
const LOGIN_COOKIE_DEV: &str = "portcullis-login";

pub struct AuthPagesStage {
    keys: Arc<SessionKeys>,
    cache: Option<Arc<SessionCache>>,
    config: SessionsConfig,
    audit: Audit,
    limiter: Arc<LocalLimiter>,
    /// `[sessions] login_limit`, per user name and per client IP.
    user_limit: Limit,
    ip_limit: Limit,
    ipv6_prefix: u8,
    providers: Option<Arc<crate::oidc::Providers>>,
}

/// Compiles `[sessions]`; no stage without it (then `/.auth/…` is routed
/// like any other path, which in practice means 404).
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    // (`[[auth.oidc]]` without `[sessions]` is reported with the providers.)
    let config = cx.config.sessions.clone()?;
    let keys = cx.session_keys.clone()?;
    let providers = cx.providers.clone();
    check_config(cx, &config);
    let limit = |scope| {
        let mut spec = config.login_limit.clone();
        spec.key = crate::config::LimitKey::Ip;
        Limit::new(spec, crate::ratelimit::Scope::Gateway(scope), scope.into())
    };
    Some(Arc::new(AuthPagesStage {
        keys,
        cache: cx.runtime.sessions.clone(),
        user_limit: limit("login-user"),
        ip_limit: limit("login-ip"),
        config,
        audit: cx.runtime.audit.clone(),
        limiter: cx.runtime.limiter.clone(),
        ipv6_prefix: cx.config.rate_limits.ipv6_prefix,
        providers,
    }))
}

fn check_config(cx: &mut CompileCx<'_>, config: &SessionsConfig) {
    if config.idle_timeout.0.is_zero() || config.max_age.0.is_zero() {
        cx.problems
            .at("sessions", "idle_timeout and max_age must be more than zero");
    }
    if config.idle_timeout.0 > config.max_age.0 {
        cx.problems
            .at("sessions.idle_timeout", "cannot be longer than max_age");
    }
    let name = &config.cookie_name;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        cx.problems
            .at("sessions.cookie_name", format!("`{name}` is not a cookie name"));
    }
    if !config.cookie_secure {
        if cx.production() {
            cx.problems.at(
                "sessions.cookie_secure",
                "production cookies are Secure (browsers send them over https and to localhost)",
            );
        }
        if name.starts_with("__Host-") || name.starts_with("__Secure-") {
            cx.problems.at(
                "sessions.cookie_name",
                "a __Host- or __Secure- cookie must be Secure; rename it or keep cookie_secure",
            );
        }
    }
}

/// Headers every page of ours carries.
fn page_response(status: StatusCode, html: String) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(html));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(http::header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// 303 to a same-origin path, with cookies to set.
fn see_other(location: &str, cookies: Vec<String>) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::Empty);
    *response.status_mut() = StatusCode::SEE_OTHER;
    let h = response.headers_mut();
    h.insert(
        LOCATION,
        HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/")),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in cookies {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            h.append(SET_COOKIE, v);
        }
    }
    response
}

/// The query parameter `name`, decoded.
fn query_param(req: &Request<GatewayBody>, name: &str) -> Option<String> {
    form_value(req.uri().query()?, name)
}

/// A field of an `application/x-www-form-urlencoded` text.
fn form_value(form: &str, name: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(form)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

impl AuthPagesStage {
    fn secure(&self) -> &'static str {
        if self.config.cookie_secure { "; Secure" } else { "" }
    }

    fn login_cookie_name(&self) -> &'static str {
        if self.config.cookie_secure {
            LOGIN_COOKIE
        } else {
            LOGIN_COOKIE_DEV
        }
    }

    /// `Set-Cookie` for the session: opaque, HttpOnly, SameSite=Lax, path
    /// `/`, for this host only, lasting as long as the session may.
    fn session_cookie(&self, value: &str) -> String {
        format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
            self.config.cookie_name,
            self.config.max_age.0.as_secs(),
            self.secure()
        )
    }

    fn clear_cookie(&self, name: &str) -> String {
        format!(
            "{name}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{}",
            self.secure()
        )
    }

    /// The session cookie's session, if it opens.
    fn session_id(&self, req: &Request<GatewayBody>) -> Option<crate::sessions::crypto::SessionId> {
        let value = crate::cookies::values(req.headers(), &self.config.cookie_name).next()?;
        self.keys.open_cookie(value)
    }

    /// Stores a new session from what a login found out (`record`'s ID and
    /// times are filled in here), ending the one the browser had, so a
    /// session planted before login is not carried past it (fixation).
    async fn start_session(
        &self,
        req: &Request<GatewayBody>,
        cache: &SessionCache,
        mut record: crate::store::sessions::SessionRecord,
    ) -> Result<crate::sessions::crypto::SessionId, crate::store::StoreError> {
        if let Some(old) = self.session_id(req) {
            let _ = cache.revoke(&old).await;
        }
        let id = crate::sessions::crypto::SessionId::generate();
        let now = crate::store::now_ms();
        record.id_hash = id.hash();
        record.created_at = now;
        record.last_seen_at = now;
        record.expires_at = now + self.config.max_age.0.as_millis() as i64;
        record.revoked_at = None;
        cache.create(&id, record).await?;
        Ok(id)
    }

    async fn read_form(req: &mut Request<GatewayBody>) -> Result<String, GatewayError> {
        let is_form = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
        if !is_form {
            return Err(GatewayError::bad_request(
                "expected a form (application/x-www-form-urlencoded)",
            ));
        }
        let body = std::mem::take(req.body_mut());
        let bytes: Bytes = http_body_util::Limited::new(body, MAX_FORM)
            .collect()
            .await
            .map_err(|_| GatewayError::PayloadTooLarge {
                limit: MAX_FORM as u64,
            })?
            .to_bytes();
        String::from_utf8(bytes.to_vec()).map_err(|_| GatewayError::bad_request("the form is not UTF-8"))
    }

    async fn handle(&self, cx: &mut RequestCx, req: &mut Request<GatewayBody>) -> StageResult {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let response = match (path.as_str(), method) {
            ("/.auth/login", Method::GET | Method::HEAD) => self.login_page(req, None, StatusCode::OK),
            ("/.auth/login", Method::POST) => self.login_submit(cx, req).await?,
            ("/.auth/logout", Method::GET | Method::HEAD) => self.logout_page(req),
            ("/.auth/logout", Method::POST) => self.logout_submit(cx, req).await?,
            ("/.auth/userinfo", Method::GET | Method::HEAD) => self.userinfo(req).await?,
            (p, Method::GET) if p.starts_with("/.auth/login/") => {
                self.provider_login(cx, req, &p["/.auth/login/".len()..]).await?
            }
            (p, Method::GET) if p.starts_with("/.auth/callback/") => {
                self.provider_callback(cx, req, &p["/.auth/callback/".len()..])
                    .await?
            }
            ("/.auth/login" | "/.auth/logout" | "/.auth/userinfo", _) => {
                let allow = if path == "/.auth/userinfo" {
                    "GET, HEAD"
                } else {
                    "GET, HEAD, POST"
                };
                return Err(GatewayError::MethodNotAllowed {
                    allow: HeaderValue::from_static(allow),
                    method: req.method().clone(),
                });
            }
            _ => return Err(GatewayError::NotFound),
        };
        Ok(Flow::Respond(response))
    }

    fn logout_page(&self, req: &Request<GatewayBody>) -> Response<GatewayBody> {
        match self.session_id(req) {
            Some(id) => page_response(
                StatusCode::OK,
                html::logout_page(&self.keys.form_token("logout", &id.digest())),
            ),
            None => see_other("/", vec![]),
        }
    }

    async fn logout_submit(
        &self,
        cx: &mut RequestCx,
        req: &mut Request<GatewayBody>,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        let form = Self::read_form(req).await?;
        let Some(id) = self.session_id(req) else {
            return Ok(see_other("/", vec![self.clear_cookie(&self.config.cookie_name)]));
        };
        let token = form_value(&form, "csrf").unwrap_or_default();
        if !self.keys.check_form_token("logout", &id.digest(), &token) {
            return Err(GatewayError::Forbidden(
                "The sign-out form is not valid; reload it and try again.".into(),
            ));
        }
        let cache = self
            .cache
            .as_ref()
            .ok_or_else(|| GatewayError::Unavailable("the session store is not available".into()))?;
        let user = match cache.cached(&id).flatten() {
            Some(entry) => Some(entry.record.username.clone()),
            None => cache
                .load(&id)
                .await
                .ok()
                .flatten()
                .map(|e| e.record.username.clone()),
        };
        cache.revoke(&id).await.map_err(|error| {
            tracing::error!(request_id = cx.request_id(), %error, "session revocation failed");
            GatewayError::Unavailable("the session store is not available".into())
        })?;
        self.audit_event(
            cx,
            "session.logout",
            crate::audit::Severity::Info,
            user.as_deref(),
            None,
        )
        .await;
        Ok(see_other("/", vec![self.clear_cookie(&self.config.cookie_name)]))
    }

    async fn userinfo(&self, req: &Request<GatewayBody>) -> Result<Response<GatewayBody>, GatewayError> {
        let unauthorized = GatewayError::Unauthorized {
            detail: "There is no session; log in first.",
            challenge: HeaderValue::from_static("Session realm=\"portcullis\", login=\"/.auth/login\""),
        };
        let (Some(id), Some(cache)) = (self.session_id(req), self.cache.as_ref()) else {
            return Err(unauthorized);
        };
        let entry = match cache.cached(&id) {
            Some(found) => found,
            None => cache
                .load(&id)
                .await
                .map_err(|_| GatewayError::Unavailable("the session store is not available".into()))?,
        };
        let now = crate::store::now_ms();
        let idle_ms = self.config.idle_timeout.0.as_millis() as i64;
        let Some(entry) = entry.filter(|e| e.ended(now, idle_ms).is_none()) else {
            return Err(unauthorized);
        };
        let r = &entry.record;
        let body = serde_json::json!({
            "user": r.username,
            "provider": r.provider,
            "email": r.email,
            "name": r.name,
            "roles": r.roles,
            "expires_at": crate::keys::manage::rfc3339(r.expires_at),
        });
        let mut response = Response::new(GatewayBody::full(body.to_string()));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }

    /// Records a login-page event; a `sync` kind (`login.failure` by
    /// default) is written before the page is answered.
    async fn audit_event(
        &self,
        cx: &RequestCx,
        kind: &str,
        severity: crate::audit::Severity,
        user: Option<&str>,
        reason: Option<&str>,
    ) {
        let mut event = crate::audit::Event::new(kind, severity).for_request(cx);
        if let Some(user) = user {
            event = event.consumer(user);
        }
        if let Some(reason) = reason {
            event = event.detail("reason", reason);
        }
        self.audit.record(event).await;
    }
}

impl Stage for AuthPagesStage {
    fn name(&self) -> &'static str {
        "auth_pages"
    }

    fn phases(&self) -> Phases {
        Phases::EARLY
    }

    fn early<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request<GatewayBody>) -> Verdict<'a> {
        let raw = req.uri().path();
        // Matched on the normalised path too, so `/x/../.auth/login` or
        // `/%2eauth/login` cannot slip past to an upstream as `/.auth/…`.
        let normal = crate::stage::route::normalise::normalise(raw)
            .map(|p| p.decoded.into_owned())
            .unwrap_or_else(|_| raw.to_string());
        let ours = |p: &str| p == "/.auth" || p.starts_with("/.auth/");
        if !ours(raw) && !ours(&normal) {
            return Verdict::CONTINUE;
        }
        if raw != normal {
            return Verdict::Ready(Err(GatewayError::NotFound));
        }
        Verdict::Pending(Box::pin(self.handle(cx, req)))
    }
}
