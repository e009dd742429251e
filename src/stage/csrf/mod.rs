//! CSRF: a request that carries ambient credentials (the session cookie, a
//! cookie a route names, or the cookie a route's JWTs may arrive in) and
//! uses an unsafe method must come from the
//! gateway's own origin, or carry a token only a page of that origin can
//! have. The header logic follows Go 1.25's `CrossOriginProtection`:
//!
//! 1. `GET`, `HEAD` and `OPTIONS` pass (they must not change anything).
//! 2. No credential cookie, or an `Authorization: Bearer` or API-key header
//!    (which no cross-site form or simple request can send; cached Basic
//!    credentials can be, so they do not count): passes.
//! 3. `Sec-Fetch-Site: same-origin` or `none` (typed, bookmarked): passes.
//! 4. No `Sec-Fetch-Site` (an older browser) but an `Origin` naming the
//!    request's own `Host`: passes.
//! 5. An `Origin` in the trusted list (`trusted_origins`, by default the
//!    route's CORS origins): passes.
//! 6. Otherwise a double-submit token is required: the `__Host-csrf` cookie
//!    and the same value in an `X-CSRF-Token` header or a `csrf_token` form
//!    field (url-encoded or multipart, first 64 KiB), bound to the
//!    credential cookie by an HMAC and compared in constant time. Unlike
//!    Go, a request with neither `Sec-Fetch-Site` nor `Origin` needs the
//!    token too: it fails closed.
//!
//! A refusal is a 403 problem document and a `csrf.rejected` audit event.
//!
//! Pages get the token from any `GET`/`HEAD` of a protected route that
//! carries the credential cookie: the upstream request carries it in
//! `X-CSRF-Token` (for server-rendered forms: a hidden `csrf_token` field),
//! and the response in `X-CSRF-Token` (for scripts: send it back in the
//! header), with the `__Host-csrf` cookie set when the request had no valid
//! one.

mod token;

use std::sync::Arc;

use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN, SET_COOKIE};
use http::{HeaderName, HeaderValue, Method, Request, Response};
use serde::Deserialize;

use crate::body::GatewayBody;
use crate::compile::{CompileCx, Problems, RouteEntry};
use crate::enforce::{Enforcement, Mode, mode_for, protection};
use crate::error::GatewayError;
use crate::pipeline::{Flow, Phases, RequestCx, Route, Slot, Stage, StageResult, Verdict};
use crate::sessions::SessionKeys;
use crate::stage::cors::{CorsConfig, OriginList, allowed_origins};

pub use token::CsrfIssue;

static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
pub static CSRF_HEADER: HeaderName = HeaderName::from_static("x-csrf-token");
/// The form field a server-rendered form carries the token in.
pub const FORM_FIELD: &str = "csrf_token";
/// The most of a form body read to find the token field.
const MAX_FORM_SCAN: usize = 64 * 1024;

/// `[csrf]`, and the same keys (all optional) in a route's `csrf` table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CsrfConfig {
    /// CSRF protection (default on wherever a credential cookie can arrive).
    pub enabled: Option<bool>,
    /// Cookies that count as ambient credentials besides the gateway's
    /// session cookie (a backend's own session cookie, say).
    pub cookies: Option<Vec<String>>,
    /// Origins whose requests pass without a token; by default the route's
    /// CORS origins.
    pub trusted_origins: Option<Vec<String>>,
    /// `report`: let refused requests through, counted and audited.
    pub mode: Option<Mode>,
}

/// A route's compiled CSRF policy.
pub struct RouteCsrf {
    /// Credential cookies, the gateway's session cookie first.
    cookies: Vec<String>,
    trusted: OriginList,
    mode: Mode,
}

/// Sessions whose token is remembered (each a few hundred bytes).
const TOKEN_CACHE: usize = 10_000;

pub struct CsrfStage {
    slot: Slot<RouteCsrf>,
    /// `None`: no session key, so no tokens (JWT-cookie routes only, which
    /// are then checked by their headers alone).
    keys: Option<Arc<SessionKeys>>,
    /// Tokens by binding: a page load of a known session costs a lookup,
    /// not an HMAC (about 20k instructions under callgrind).
    tokens: quick_cache::sync::Cache<String, HeaderValue>,
    /// Headers an API key may arrive in (lowercased).
    key_headers: Vec<HeaderName>,
    token_cookie: &'static str,
    secure: bool,
    audit: crate::audit::Audit,
    enforcement: Enforcement,
}

/// The credential cookies of a route: the session cookie when it takes
/// sessions, then the named ones, then (`with_jwt`) the cookie its JWTs
/// may arrive in.
fn route_cookies(
    cx_sessions: Option<&str>,
    route: &RouteEntry<'_>,
    global: &CsrfConfig,
    with_jwt: bool,
) -> Vec<String> {
    let mut cookies = Vec::new();
    let takes_sessions = route
        .config
        .auth
        .as_ref()
        .is_some_and(|a| a.iter().any(|m| m == "session"));
    if let (Some(name), true) = (cx_sessions, takes_sessions) {
        cookies.push(name.to_string());
    }
    let own = route.config.csrf.as_ref().and_then(|c| c.cookies.clone());
    for name in own.or_else(|| global.cookies.clone()).unwrap_or_default() {
        if !cookies.contains(&name) {
            cookies.push(name);
        }
    }
    let takes_jwt = route
        .config
        .auth
        .as_ref()
        .is_some_and(|a| a.iter().any(|m| m == "jwt"));
    if with_jwt
        && takes_jwt
        && let Some(name) = &route.config.jwt_cookie
        && !cookies.contains(name)
    {
        cookies.push(name.clone());
    }
    cookies
}

fn compile_route(
    global: &CsrfConfig,
    cors: Option<&CorsConfig>,
    session_cookie: Option<&str>,
    route: &RouteEntry<'_>,
    problems: &mut Problems<'_>,
) -> Option<RouteCsrf> {
    let own = route.config.csrf.clone().unwrap_or_default();
    if own.enabled.or(global.enabled) == Some(false) {
        return None;
    }
    let cookies = route_cookies(session_cookie, route, global, true);
    if cookies.is_empty() {
        return None;
    }
    for name in &cookies {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        {
            problems.in_route(route, "csrf.cookies", format!("`{name}` is not a cookie name"));
        }
    }
    let mut errors = Vec::new();
    let production = problems.production();
    let trusted = match own.trusted_origins.as_ref().or(global.trusted_origins.as_ref()) {
        Some(list) => OriginList::compile(
            list,
            production,
            &format!("{}.csrf.trusted_origins", route.key),
            &mut errors,
        ),
        None => {
            let merged = match (route.config.cors.as_ref(), cors) {
                (Some(own), Some(base)) => Some(own.over(base)),
                (Some(own), None) => Some(own.clone()),
                (None, base) => base.cloned(),
            };
            // CORS reports its own problems. A route with CORS off, or
            // open to every origin, trusts no origin for CSRF: `*` says
            // anyone may read, never that anyone may write.
            merged
                .filter(|c| c.enabled != Some(false))
                .map(|c| allowed_origins(&c, production, "cors", &mut Vec::new()))
                .filter(|list| !list.allows_any())
                .unwrap_or_default()
        }
    };
    for (key, e) in errors {
        problems.at(&key, e);
    }
    let mode = mode_for(problems, route, protection::CSRF, own.mode, global.mode);
    Some(RouteCsrf {
        cookies,
        trusted,
        mode,
    })
}

/// Compiles `[csrf]` and routes' `csrf` tables. There is a stage when some
/// route can receive a credential cookie.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let global = cx.config.csrf.clone().unwrap_or_default();
    let sessions = cx.config.sessions.as_ref();
    let session_cookie = sessions.map(|s| s.cookie_name.clone());
    let cors = cx.config.cors.clone();
    let slot = cx.per_route(|route, problems| {
        compile_route(&global, cors.as_ref(), session_cookie.as_deref(), route, problems)
    });
    let protected: Vec<usize> = (0..cx.routes().len())
        .filter(|&i| cx.routes()[i].config.csrf.as_ref().and_then(|c| c.enabled) != Some(false))
        .filter(|&i| !route_cookies(session_cookie.as_deref(), &cx.routes()[i], &global, true).is_empty())
        .collect();
    // Routes whose only credential cookie carries a JWT are checked by the
    // headers alone when there is no session key (no token can be made).
    let need_tokens: Vec<usize> = protected
        .iter()
        .copied()
        .filter(|&i| !route_cookies(session_cookie.as_deref(), &cx.routes()[i], &global, false).is_empty())
        .collect();
    if protected.is_empty()
        || global.enabled == Some(false) && cx.routes().iter().all(|r| r.config.csrf.is_none())
    {
        return None;
    }
    let keys = cx.session_keys.clone();
    if keys.is_none() && !need_tokens.is_empty() {
        // A key that is set but invalid, or `[sessions]` without one, has
        // its own problem already.
        if cx.config.secrets.session_key.is_none() && sessions.is_none() {
            for i in need_tokens {
                cx.route_problem(i, "csrf", "CSRF tokens need `secrets.session_key`");
            }
        }
        return None;
    }
    let secure = sessions.is_none_or(|s| s.cookie_secure);
    let key_headers = cx
        .config
        .api_keys
        .headers
        .iter()
        .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
        .collect();
    Some(Arc::new(CsrfStage {
        slot,
        keys,
        tokens: quick_cache::sync::Cache::new(TOKEN_CACHE),
        key_headers,
        token_cookie: if secure { "__Host-csrf" } else { "portcullis-csrf" },
        secure,
        audit: cx.runtime.audit.clone(),
        enforcement: Enforcement::new(cx),
    }))
}

/// What the header checks decided.
enum Check {
    Pass,
    /// A token is required; the reason, for the audit event.
    NeedToken(&'static str),
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether `Origin` names the request's own host (scheme aside, as Go does).
fn origin_is_host(origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
    let Some(host) = host else { return false };
    let Some((_, rest)) = origin.to_str().ok().and_then(|o| o.split_once("://")) else {
        return false;
    };
    rest.as_bytes().eq_ignore_ascii_case(host.as_bytes())
}

/// Whether the request is a form whose body may hold the token field.
fn is_form(req: &Request<GatewayBody>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            let t = t.trim_start().to_ascii_lowercase();
            t.starts_with("application/x-www-form-urlencoded") || t.starts_with("multipart/form-data")
        })
}

impl CsrfStage {
    /// The first credential cookie the request carries, as `name=value`
    /// (what its token is bound to).
    fn binding(&self, policy: &RouteCsrf, req: &Request<GatewayBody>) -> Option<String> {
        policy.cookies.iter().find_map(|name| {
            crate::cookies::values(req.headers(), name)
                .next()
                .map(|value| format!("{name}={value}"))
        })
    }

    /// Steps 2 to 5 of the module's list.
    fn check_headers(&self, policy: &RouteCsrf, req: &Request<GatewayBody>) -> Check {
        let h = req.headers();
        // A bearer token or an API key is never ambient: no cross-site form
        // or simple request can carry one. `Authorization: Basic` can be
        // (browsers resend cached Basic credentials), so it does not count.
        let bearer = h
            .get(AUTHORIZATION)
            .is_some_and(|v| v.as_bytes().len() > 7 && v.as_bytes()[..7].eq_ignore_ascii_case(b"bearer "));
        if bearer || self.key_headers.iter().any(|k| h.contains_key(k)) {
            return Check::Pass;
        }
        let origin = h.get(ORIGIN);
        let trusted = || origin.is_some_and(|o| policy.trusted.allows(o.as_bytes()));
        match h.get(&SEC_FETCH_SITE).map(HeaderValue::as_bytes) {
            Some(b"same-origin" | b"none") => Check::Pass,
            Some(_) if trusted() => Check::Pass,
            Some(_) => Check::NeedToken("cross-origin request"),
            None => match origin {
                Some(o) if origin_is_host(o, h.get(HOST)) => Check::Pass,
                Some(_) if trusted() => Check::Pass,
                Some(_) => Check::NeedToken("cross-origin request"),
                None => Check::NeedToken("no Sec-Fetch-Site or Origin"),
            },
        }
    }

    fn cookie_token<'r>(&self, req: &'r Request<GatewayBody>) -> Option<&'r str> {
        crate::cookies::values(req.headers(), self.token_cookie).next()
    }

    /// Whether `submitted` matches the token cookie and is bound to `binding`.
    fn token_ok(&self, req: &Request<GatewayBody>, binding: &str, submitted: &[u8]) -> bool {
        let Some(cookie) = self.cookie_token(req) else {
            return false;
        };
        let same = submitted.len() == cookie.len()
            && bool::from(subtle::ConstantTimeEq::ct_eq(submitted, cookie.as_bytes()));
        same && self
            .keys
            .as_ref()
            .is_some_and(|keys| token::verify(keys, binding, cookie))
    }

    fn refuse(&self, cx: &RequestCx, mode: Mode, reason: &'static str) -> StageResult {
        if mode == Mode::Enforce {
            self.audit.emit(
                crate::audit::Event::new("csrf.rejected", crate::audit::Severity::Warning)
                    .for_request(cx)
                    .detail("reason", reason),
            );
        }
        let error = GatewayError::Forbidden(
            "Cross-site request refused: send the X-CSRF-Token header (or csrf_token form field) this site gave you."
                .into(),
        );
        self.enforcement.refuse(cx, mode, protection::CSRF, error)
    }

    /// A safe request with a credential cookie: hand the page a token.
    fn issue(&self, cx: &mut RequestCx, req: &mut Request<GatewayBody>, binding: &str) {
        let Some(keys) = &self.keys else { return };
        let value = match self.tokens.get(binding) {
            Some(value) => value,
            None => {
                let Ok(value) = HeaderValue::from_str(&token::mint(keys, binding)) else {
                    return;
                };
                self.tokens.insert(binding.to_string(), value.clone());
                value
            }
        };
        let token = value.to_str().unwrap_or_default();
        let fresh = self
            .cookie_token(req)
            .is_none_or(|c| !bool::from(subtle::ConstantTimeEq::ct_eq(c.as_bytes(), token.as_bytes())));
        let set_cookie = fresh
            .then(|| token::set_cookie(self.token_cookie, token, self.secure))
            .flatten();
        req.headers_mut().insert(CSRF_HEADER.clone(), value.clone());
        cx.csrf = Some(Box::new(CsrfIssue {
            token: value,
            set_cookie,
        }));
    }

    async fn check_form(&self, cx: &mut RequestCx, req: &mut Request<GatewayBody>) -> StageResult {
        let Some(pending) = cx.csrf_pending.take() else {
            return Ok(Flow::Continue);
        };
        let (binding, mode) = (pending.binding, pending.mode);
        let body = match crate::body::buffer(req, MAX_FORM_SCAN as u64).await {
            Ok(body) => body,
            Err(GatewayError::PayloadTooLarge { .. }) => {
                return self.refuse(cx, mode, "form too large to look for the token");
            }
            Err(e) => return Err(e),
        };
        match token::form_field(req, &body) {
            Some(field) if self.token_ok(req, &binding, field.as_bytes()) => Ok(Flow::Continue),
            Some(_) => self.refuse(cx, mode, "token does not match"),
            None => self.refuse(cx, mode, "no token"),
        }
    }
}

/// A form whose token is still to be read from its body.
pub struct PendingForm {
    binding: String,
    mode: Mode,
}

impl Stage for CsrfStage {
    fn name(&self) -> &'static str {
        "csrf"
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS.and(Phases::BODY).and(Phases::RESPONSE)
    }

    fn access<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        route: &'a Route,
        req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        let Some(policy) = route.get(self.slot) else {
            return Verdict::CONTINUE;
        };
        let Some(binding) = self.binding(policy, req) else {
            return Verdict::CONTINUE;
        };
        if is_safe(req.method()) {
            if *req.method() != Method::OPTIONS {
                self.issue(cx, req, &binding);
            }
            return Verdict::CONTINUE;
        }
        let reason = match self.check_headers(policy, req) {
            Check::Pass => return Verdict::CONTINUE,
            Check::NeedToken(reason) => reason,
        };
        if let Some(submitted) = req.headers().get(&CSRF_HEADER) {
            return Verdict::Ready(if self.token_ok(req, &binding, submitted.as_bytes()) {
                Ok(Flow::Continue)
            } else {
                self.refuse(cx, policy.mode, "token does not match")
            });
        }
        // A forward-auth decision (`/.auth/verify`) has no body to search:
        // the asking proxy holds it, so the token must come in the header.
        if is_form(req) && cx.decision_only.is_none() {
            cx.csrf_pending = Some(Box::new(PendingForm {
                binding,
                mode: policy.mode,
            }));
            return Verdict::CONTINUE;
        }
        Verdict::Ready(self.refuse(cx, policy.mode, reason))
    }

    fn body<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        _route: &'a Route,
        req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        if cx.csrf_pending.is_none() {
            return Verdict::CONTINUE;
        }
        Verdict::Pending(Box::pin(self.check_form(cx, req)))
    }

    fn response(&self, cx: &RequestCx, resp: &mut Response<GatewayBody>) {
        let Some(issue) = &cx.csrf else { return };
        let h = resp.headers_mut();
        h.insert(CSRF_HEADER.clone(), issue.token.clone());
        if let Some(cookie) = &issue.set_cookie {
            h.append(SET_COOKIE, cookie.clone());
        }
    }
}
