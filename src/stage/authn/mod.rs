//! Authentication: who is calling.
//!
//! A route lists the methods that admit a request (`auth = ["api_key",
//! "jwt"]`); `["none"]` marks it public. The first method, in the route's
//! order, whose credential the request presents decides: a bad API key is
//! refused, not tried as something else. With none presented the answer is
//! 401 with a `WWW-Authenticate` challenge for every method.
//!
//! - [`api_key`]: keys from the store;
//! - [`jwt`]: signed tokens of the `[[auth.jwt]]` issuers;
//! - `session`: the login session cookie ([`crate::sessions`]).
//!
//! Every 401 has `WWW-Authenticate` and a problem document, and is an
//! `auth.failure` audit event (never with the credential). Every presented
//! credential that fails is charged to `[auth] failure_limit` (see
//! [`failure_limit`]). Successes are sampled into `auth.success` events.

pub mod api_key;
pub mod failure_limit;
pub mod jwt;
mod jwt_method;
pub mod mtls_method;
mod session_method;

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request};
use serde::Deserialize;

use crate::audit::{Audit, Event, Severity};
use crate::body::GatewayBody;
use crate::compile::{CompileCx, Problems, RouteEntry};
use crate::config::{ConfigDuration, RateSpec};
use crate::error::GatewayError;
use crate::metrics::AuthMetrics;
use crate::pipeline::{Phases, RequestCx, Route, Slot, Stage, Verdict};
use crate::principal::Method;
pub use api_key::ApiKeyAuth;
pub use failure_limit::{FailureLimit, FailureLimiter};
use jwt::{IssuerSet, JwtIssuerConfig, JwtVerifier};
use session_method::SessionAuth;

fn default_true() -> bool {
    true
}

/// `[api_keys]`: how keys are presented and cached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// Headers a key may arrive in.
    #[serde(default = "ApiKeysConfig::default_headers")]
    pub headers: Vec<String>,
    /// Also accept `Authorization: Bearer <key>`.
    #[serde(default = "default_true")]
    pub bearer: bool,
    /// Pass the key itself on to the upstream (off: the upstream gets the
    /// `X-Portcullis-*` identity headers instead, and cannot leak the key).
    #[serde(default)]
    pub forward_key: bool,
    /// Keys (found or not) kept in memory.
    #[serde(default = "ApiKeysConfig::default_cache_size")]
    pub cache_size: usize,
    /// How long a cached key is trusted before it is read again. Changes made
    /// anywhere reach every instance within about a second regardless.
    #[serde(default = "ApiKeysConfig::default_cache_ttl")]
    pub cache_ttl: ConfigDuration,
    /// How often batched usage counts are written.
    #[serde(default = "ApiKeysConfig::default_usage_flush")]
    pub usage_flush: ConfigDuration,
    /// The limit of a key that has none of its own, e.g. "100 per hour".
    pub default_rate_limit: Option<RateSpec>,
}

impl ApiKeysConfig {
    fn default_headers() -> Vec<String> {
        vec!["X-API-Key".into()]
    }
    fn default_cache_size() -> usize {
        100_000
    }
    fn default_cache_ttl() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(300))
    }
    fn default_usage_flush() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(5))
    }
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        ApiKeysConfig {
            headers: Self::default_headers(),
            bearer: true,
            forward_key: false,
            cache_size: Self::default_cache_size(),
            cache_ttl: Self::default_cache_ttl(),
            usage_flush: Self::default_usage_flush(),
            default_rate_limit: None,
        }
    }
}

/// `[auth]`: rules for every kind of authentication, and the JWT issuers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Failed authentications a client IP may make before it is refused
    /// with 429 without a lookup: `"100 per minute"` in production,
    /// `"off"` in development, unless set.
    pub failure_limit: Option<FailureLimit>,
    /// `[[auth.jwt]]`: issuers whose tokens `auth = ["jwt"]` accepts.
    #[serde(default)]
    pub jwt: Vec<JwtIssuerConfig>,
    /// Verified tokens kept in memory, so a token sent again costs no
    /// signature check.
    #[serde(default = "AuthConfig::default_jwt_cache_size")]
    pub jwt_cache_size: usize,
    /// `[[auth.oidc]]`: identity providers people log in with (sessions).
    #[serde(default)]
    pub oidc: Vec<crate::oidc::OidcProviderConfig>,
    /// `[auth.mtls]`: which name of a client certificate is the consumer.
    #[serde(default)]
    pub mtls: mtls_method::MtlsConfig,
}

impl AuthConfig {
    fn default_jwt_cache_size() -> usize {
        10_000
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            failure_limit: None,
            jwt: Vec::new(),
            jwt_cache_size: Self::default_jwt_cache_size(),
            oidc: Vec::new(),
            mtls: Default::default(),
        }
    }
}

/// One way a request may authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// A public route.
    None,
    /// A key from the store.
    ApiKey,
    /// A token of a configured issuer.
    Jwt,
    /// A login session's cookie.
    Session,
    /// A client certificate verified by the TLS handshake.
    Mtls,
}

impl AuthMethod {
    /// Methods a route may name, for messages.
    pub const NAMES: &'static [&'static str] = &["none", "api_key", "jwt", "session", "mtls"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "none" => Some(AuthMethod::None),
            "api_key" => Some(AuthMethod::ApiKey),
            "jwt" => Some(AuthMethod::Jwt),
            "session" => Some(AuthMethod::Session),
            "mtls" => Some(AuthMethod::Mtls),
            _ => None,
        }
    }
}

/// What a route requires: its slot in this stage.
#[derive(Clone, Debug)]
pub struct RouteAuth {
    pub methods: Vec<AuthMethod>,
    /// Query parameter that may carry a key on this route.
    pub key_query: Option<String>,
    /// The issuers whose tokens this route accepts.
    pub jwt_issuers: IssuerSet,
    /// A cookie that may carry the token on this route.
    pub jwt_cookie: Option<String>,
    /// A header that may carry the token on this route.
    pub jwt_header: Option<HeaderName>,
    /// Send a session's provider access token upstream.
    pub forward_provider_token: bool,
    /// `WWW-Authenticate` for a request without credentials.
    challenge: HeaderValue,
    /// `WWW-Authenticate` for a refused bearer token (RFC 6750's
    /// `error="invalid_token"`).
    token_challenge: HeaderValue,
}

impl RouteAuth {
    pub fn is_public(&self) -> bool {
        self.methods.contains(&AuthMethod::None)
    }
}

/// Why an API key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Ambiguous,
    Invalid,
    Expired,
    Revoked,
}

impl AuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Ambiguous => "ambiguous",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Expired => "expired",
            AuthFailure::Revoked => "revoked",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            AuthFailure::Missing => "This route needs an API key.",
            AuthFailure::Malformed => "The API key is malformed.",
            AuthFailure::Ambiguous => "More than one API key was sent.",
            AuthFailure::Invalid => "The API key is not valid.",
            AuthFailure::Expired => "The API key has expired.",
            AuthFailure::Revoked => "The API key has been revoked.",
        }
    }

    fn refusal(self) -> Refusal {
        Refusal {
            method: Some(Method::ApiKey),
            reason: self.reason(),
            detail: self.detail(),
            presented: self != AuthFailure::Missing,
        }
    }
}

/// A refusal of any method, as audited and answered.
#[derive(Clone, Copy, Debug)]
struct Refusal {
    /// `None` when no credential of any method was presented.
    method: Option<Method>,
    reason: &'static str,
    detail: &'static str,
    /// A credential was presented (and the failure counts against the
    /// client's failure budget).
    presented: bool,
}

pub struct AuthnStage {
    audit: Audit,
    metrics: AuthMetrics,
    api_keys: ApiKeyAuth,
    jwt: Option<Arc<JwtVerifier>>,
    sessions: Option<SessionAuth>,
    mtls: mtls_method::MtlsAuth,
    failures: Option<FailureLimiter>,
    /// Keep the credentials a request carries for redaction (production,
    /// where upstream error bodies are logged).
    redact: bool,
    slot: Slot<RouteAuth>,
}

/// Compiles `[api_keys]`, `[auth]` (with its JWT issuers) and every
/// route's `auth`, `api_key_query`, `jwt_issuers`, `jwt_cookie` and
/// `jwt_header`.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let config = cx.config;
    let production = cx.production();
    let api_keys = ApiKeyAuth::compile(cx);
    let failures = FailureLimiter::compile(
        config.auth.failure_limit.as_ref(),
        production,
        cx.runtime,
        config.rate_limits.ipv6_prefix,
    )
    .unwrap_or_else(|problem| {
        cx.problems.at("auth.failure_limit", problem);
        None
    });
    let jwt = jwt_method::compile_issuers(cx).map(Arc::new);
    let sessions = SessionAuth::compile(cx);
    let has_sessions = cx.config.sessions.is_some();
    let has_client_ca = cx
        .config
        .server
        .tls
        .as_ref()
        .is_some_and(|t| t.client_ca.is_some());
    let slot = cx.per_route(|route, problems| {
        let auth = compile_route(route, problems, production, &api_keys, jwt.as_deref());
        if auth.methods.contains(&AuthMethod::Session) && !has_sessions {
            problems.in_route(route, "auth", "\"session\" needs a [sessions] table");
        }
        if auth.methods.contains(&AuthMethod::Mtls) && !has_client_ca {
            problems.in_route(route, "auth", "\"mtls\" needs [server.tls] with a client_ca");
        }
        Some(auth)
    });
    Some(Arc::new(AuthnStage {
        audit: cx.runtime.audit.clone(),
        metrics: cx.runtime.metrics.auth.clone(),
        api_keys,
        jwt,
        sessions,
        mtls: mtls_method::MtlsAuth::new(&config.auth.mtls),
        failures,
        redact: production,
        slot,
    }))
}

fn compile_route(
    route: &RouteEntry<'_>,
    problems: &mut Problems<'_>,
    production: bool,
    api_keys: &ApiKeyAuth,
    jwt: Option<&JwtVerifier>,
) -> RouteAuth {
    let config = route.config;
    let mut methods = Vec::new();
    match &config.auth {
        None => {
            if production {
                problems.in_route(
                    route,
                    "",
                    "the route has no `auth`; production requires one (write auth = [\"none\"] for a public route)",
                );
            }
            methods.push(AuthMethod::None);
        }
        Some(names) => {
            if names.is_empty() {
                problems.in_route(
                    route,
                    "auth",
                    "list at least one method, e.g. [\"api_key\"] or [\"none\"]",
                );
            }
            for name in names {
                match AuthMethod::parse(name) {
                    Some(m) if !methods.contains(&m) => methods.push(m),
                    Some(_) => problems.in_route(route, "auth", format!("`{name}` is listed twice")),
                    None => {
                        let hint = crate::config::load::nearest(name, AuthMethod::NAMES)
                            .map(|n| format!("; did you mean `{n}`?"))
                            .unwrap_or_default();
                        problems.in_route(
                            route,
                            "auth",
                            format!(
                                "`{name}` is not an authentication method this version offers ({}){hint}",
                                AuthMethod::NAMES.join(", ")
                            ),
                        );
                    }
                }
            }
        }
    }
    if methods.contains(&AuthMethod::None) && methods.len() > 1 {
        problems.in_route(
            route,
            "auth",
            "\"none\" makes a route public; it cannot be combined with other methods",
        );
    }
    if config.api_key_query.is_some() && !methods.contains(&AuthMethod::ApiKey) {
        problems.in_route(
            route,
            "api_key_query",
            "only routes with auth = [\"api_key\"] read keys",
        );
    }
    let (jwt_issuers, jwt_cookie, jwt_header) = jwt_method::compile_route(route, problems, &methods, jwt);
    let (challenge, token_challenge) = challenges(&methods, api_keys);
    if config.forward_provider_token && !methods.contains(&AuthMethod::Session) {
        problems.in_route(
            route,
            "forward_provider_token",
            "only routes with auth = [\"session\"] have provider tokens",
        );
    }
    RouteAuth {
        forward_provider_token: config.forward_provider_token,
        methods,
        key_query: config.api_key_query.clone(),
        jwt_issuers,
        jwt_cookie,
        jwt_header,
        challenge,
        token_challenge,
    }
}

/// The `WWW-Authenticate` challenges of a route's methods: without and
/// with RFC 6750's `error="invalid_token"` on the Bearer one.
fn challenges(methods: &[AuthMethod], api_keys: &ApiKeyAuth) -> (HeaderValue, HeaderValue) {
    let mut parts: Vec<String> = Vec::new();
    let mut bearer = false;
    for method in methods {
        match method {
            AuthMethod::ApiKey => {
                parts.push(api_keys.challenge());
                bearer |= api_keys.reads_bearer();
            }
            AuthMethod::Jwt => bearer = true,
            AuthMethod::Session => parts.push("Session realm=\"portcullis\", login=\"/.auth/login\"".into()),
            AuthMethod::Mtls => {}
            AuthMethod::None => {}
        }
    }
    let render = |extra: &str| {
        let mut all = parts.clone();
        if bearer {
            all.push(format!("Bearer realm=\"portcullis\"{extra}"));
        }
        HeaderValue::try_from(all.join(", "))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"portcullis\""))
    };
    (render(""), render(", error=\"invalid_token\""))
}

impl AuthnStage {
    /// A refusal, audited and counted: 401, or 429 once the client's failure
    /// budget is spent. A presented credential is charged to the budget
    /// unless its lookup was charged already (`charged`); a client past
    /// its budget gets no `auth.failure` event (its refusals are audited
    /// once per window).
    fn fail(
        &self,
        cx: &mut RequestCx,
        auth: &RouteAuth,
        refusal: Refusal,
        key_id: Option<&str>,
        charged: bool,
    ) -> GatewayError {
        if refusal.presented
            && !charged
            && let Some(failures) = &self.failures
            && let Err(retry_after_secs) = failures.charge(cx)
        {
            return GatewayError::AuthFailuresLimited { retry_after_secs };
        }
        let login = cx.login_redirect.take();
        let method = refusal.method.map(Method::as_str).unwrap_or("none");
        let mut event = Event::new("auth.failure", Severity::Warning)
            .for_request(cx)
            .detail("method", method)
            .detail("reason", refusal.reason);
        if let Some(id) = key_id {
            event = event.detail("key_id", id);
        }
        // A `sync` kind (the default): the refusal is answered once the
        // event is written (see `Pipeline::run`).
        if let Some(wait) = self.audit.emit_waitable(event) {
            cx.audit_waits.push(wait);
        }
        self.metrics.failure(method, refusal.reason);
        if let Some(location) = login {
            return GatewayError::LoginRequired { location };
        }
        let token_refused = refusal.presented && refusal.method == Some(Method::Jwt);
        GatewayError::Unauthorized {
            detail: refusal.detail,
            challenge: if token_refused {
                auth.token_challenge.clone()
            } else {
                auth.challenge.clone()
            },
        }
    }

    /// A request over a connection whose client sent a verified
    /// certificate; `None` when it sent none.
    fn mtls_access(&self, cx: &mut RequestCx, auth: &RouteAuth) -> Option<Result<(), GatewayError>> {
        let connection = cx.connection.clone();
        let names = connection.tls()?.client.as_ref()?;
        Some(match self.mtls.identify(names) {
            Ok(principal) => {
                self.succeeded(cx, Method::Mtls, principal.consumer().unwrap_or("-"), None);
                cx.principal = Some(principal);
                Ok(())
            }
            Err(failure) => {
                let refusal = Refusal {
                    method: Some(Method::Mtls),
                    reason: failure.reason(),
                    detail: failure.detail(),
                    presented: true,
                };
                Err(self.fail(cx, auth, refusal, None, false))
            }
        })
    }

    /// A success, sampled into the audit log and counted.
    fn succeeded(&self, cx: &RequestCx, method: Method, name: &str, key_id: Option<&str>) {
        self.metrics.success(method);
        if self.audit.sample_success() {
            let mut event = Event::new("auth.success", Severity::Info)
                .for_request(cx)
                .consumer(name)
                .detail("method", method.as_str());
            if let Some(id) = key_id {
                event = event.detail("key_id", id);
            }
            self.audit.emit(event);
        }
    }

    /// No credential of any of the route's methods.
    fn missing(&self, cx: &mut RequestCx, auth: &RouteAuth) -> GatewayError {
        let detail = match auth.methods.as_slice() {
            [AuthMethod::ApiKey] => AuthFailure::Missing.detail(),
            [AuthMethod::Jwt] => "This route needs a bearer token.",
            [AuthMethod::Session] => "This route needs you to log in.",
            _ => "This route needs credentials.",
        };
        let refusal = Refusal {
            method: None,
            reason: "missing",
            detail,
            presented: false,
        };
        self.fail(cx, auth, refusal, None, false)
    }
}

impl Stage for AuthnStage {
    fn name(&self) -> &'static str {
        "authn"
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
        req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        let Some(auth) = route.get(self.slot) else {
            return Verdict::CONTINUE;
        };
        if self.redact && !auth.methods.contains(&AuthMethod::ApiKey) {
            self.api_keys.note_unread(cx, req);
        }
        if auth.methods.contains(&AuthMethod::Session) && session_method::wants_login_page(req) {
            cx.login_redirect = Some(session_method::login_location(req));
        }
        let mut session_cookie = self.take_session_cookie(req);
        for method in &auth.methods {
            match method {
                AuthMethod::None => return Verdict::CONTINUE,
                AuthMethod::ApiKey => match self.api_keys.presented(req, auth.key_query.as_deref()) {
                    Ok(Some(presented)) => return self.api_key_access(cx, auth, req, presented),
                    Ok(None) => {}
                    Err(failure) => {
                        return Verdict::Ready(Err(self.fail(cx, auth, failure.refusal(), None, false)));
                    }
                },
                AuthMethod::Jwt => match self.jwt_presented(req, auth) {
                    Ok(Some(token)) => return self.jwt_access(cx, auth, req, token),
                    Ok(None) => {}
                    Err(refusal) => return Verdict::Ready(Err(self.fail(cx, auth, refusal, None, false))),
                },
                AuthMethod::Session => {
                    if let Some(cookie) = session_cookie.take() {
                        return self.session_access(cx, auth, req, cookie);
                    }
                }
                AuthMethod::Mtls => match self.mtls_access(cx, auth) {
                    Some(Ok(())) => return Verdict::CONTINUE,
                    Some(Err(error)) => return Verdict::Ready(Err(error)),
                    None => {}
                },
            }
        }
        Verdict::Ready(Err(self.missing(cx, auth)))
    }
}

#[cfg(test)]
mod tests;
