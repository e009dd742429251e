//! CORS: which browser origins may call the API, answered from an explicit
//! allow-list and never by reflecting whatever `Origin` arrives.
//!
//! - Origins are exact (`https://app.example.com`, scheme, host and port),
//!   subdomain patterns (`https://*.example.com`, true subdomains only) or
//!   `null` when listed by name (see [`origin`]). `development_origins`
//!   count only when `environment = "development"`, so a local dev origin
//!   can never be allowed in production.
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//!   is answered here: 204 with the allowed methods and headers when the
//!   origin, method and every requested header are allowed, otherwise a 403
//!   problem document. It never reaches the upstream or the auth stages
//!   (browsers send no credentials on a preflight).
//! - Any other request from an allowed origin gets
//!   `Access-Control-Allow-Origin` (the origin itself, or `*` for a wildcard
//!   list without credentials) and, with `credentials = true`,
//!   `Access-Control-Allow-Credentials: true`. A request from another
//!   origin passes without CORS headers, so the browser withholds the
//!   response from the calling page. Refusing cross-site requests outright
//!   is CSRF protection's job, not CORS's.
//! - `Vary: Origin` is on every answer of a route with CORS.
//! - `Access-Control-*` headers from the upstream are removed (unless
//!   `keep_upstream_headers`), so a backend that reflects `Origin` cannot
//!   widen the allow-list.
//! - A route's `cors` table overrides any `[cors]` key there (`enabled =
//!   false` leaves the route's CORS to its backend).
//! - In `mode = "report"` a refused preflight goes on to the backend, and an
//!   upstream answer granting an origin the list does not allow keeps its
//!   headers; both are counted as would-refuse.
//!
//! Phases: `early` notes the request's `Origin`; `access` answers preflights
//! on the route they were routed to (the router routes a preflight by the
//! method it announces); `response` sets the headers on every response,
//! with the route's policy (or `[cors]` for answers without a route).

pub mod origin;

use std::sync::Arc;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use serde::Deserialize;

pub use origin::{OriginList, parse_origin};

use crate::body::GatewayBody;
use crate::compile::{CompileCx, Problems, RouteEntry};
use crate::config::ConfigDuration;
use crate::enforce::{Enforcement, Mode, mode_for, protection};
use crate::error::GatewayError;
use crate::pipeline::{Flow, Phases, RequestCx, Route, Slot, Stage, StageResult, Verdict};

/// `[cors]`, and the same keys (all optional) in a route's `cors` table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// CORS on this route (a route's `enabled = false` leaves CORS to its
    /// backend).
    pub enabled: Option<bool>,
    /// Exact origins (`https://app.example.com`), subdomain patterns
    /// (`https://*.example.com`), `null`, or `["*"]` for any origin (never
    /// together with `credentials`).
    pub origins: Option<Vec<String>>,
    /// Origins allowed only when `environment = "development"`.
    pub development_origins: Option<Vec<String>>,
    /// Allow cookies and `Authorization` on cross-origin calls.
    pub credentials: Option<bool>,
    /// Methods a cross-origin call may use.
    pub methods: Option<Vec<String>>,
    /// Request headers a cross-origin call may send.
    pub headers: Option<Vec<String>>,
    /// Response headers the calling page may read.
    pub expose_headers: Option<Vec<String>>,
    /// How long a browser may cache a preflight answer.
    pub max_age: Option<ConfigDuration>,
    /// Leave the upstream's own `Access-Control-*` headers on its responses
    /// (for a backend that owns its CORS); by default they are removed, so a
    /// backend that reflects `Origin` cannot widen the allow-list.
    pub keep_upstream_headers: Option<bool>,
    /// `report`: refused preflights go on to the backend, counted.
    pub mode: Option<Mode>,
}

const DEFAULT_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
const DEFAULT_HEADERS: &[&str] = &[
    "Content-Type",
    "Authorization",
    "X-API-Key",
    "X-Request-Id",
    "X-CSRF-Token",
];
const DEFAULT_EXPOSE: &[&str] = &[
    "X-Request-Id",
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    "X-CSRF-Token",
];
const DEFAULT_MAX_AGE_SECS: u64 = 600;

impl CorsConfig {
    /// This table's keys over `base`'s.
    pub fn over(&self, base: &CorsConfig) -> CorsConfig {
        CorsConfig {
            enabled: self.enabled.or(base.enabled),
            origins: self.origins.clone().or_else(|| base.origins.clone()),
            development_origins: self
                .development_origins
                .clone()
                .or_else(|| base.development_origins.clone()),
            credentials: self.credentials.or(base.credentials),
            methods: self.methods.clone().or_else(|| base.methods.clone()),
            headers: self.headers.clone().or_else(|| base.headers.clone()),
            expose_headers: self
                .expose_headers
                .clone()
                .or_else(|| base.expose_headers.clone()),
            max_age: self.max_age.or(base.max_age),
            keep_upstream_headers: self.keep_upstream_headers.or(base.keep_upstream_headers),
            mode: self.mode.or(base.mode),
        }
    }
}

/// A compiled CORS policy: `[cors]`, or a route's merged with it.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: OriginList,
    credentials: bool,
    methods: Vec<Method>,
    /// Lowercased allowed request header names.
    headers: Vec<String>,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
    keep_upstream_headers: bool,
    mode: Mode,
}

fn join<T: AsRef<str>>(items: &[T]) -> HeaderValue {
    let text = items.iter().map(|i| i.as_ref()).collect::<Vec<_>>().join(", ");
    HeaderValue::try_from(text).expect("validated names are valid header text")
}

fn strings(list: &Option<Vec<String>>, default: &[&str]) -> Vec<String> {
    list.clone()
        .unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect())
}

fn header_names(names: &[String], key: &str, problems: &mut Vec<(String, String)>) -> Vec<String> {
    let mut out = Vec::new();
    for name in names {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => out.push(h.as_str().to_string()),
            Err(_) => problems.push((key.to_string(), format!("`{name}` is not a header name"))),
        }
    }
    out
}

/// The origins a CORS table allows in this environment; `prefix` names the
/// table in problems (`cors`, `routes[2].cors`).
pub fn allowed_origins(
    config: &CorsConfig,
    production: bool,
    prefix: &str,
    problems: &mut Vec<(String, String)>,
) -> OriginList {
    let texts = config.origins.as_deref().unwrap_or_default();
    let mut origins = OriginList::compile(texts, production, &format!("{prefix}.origins"), problems);
    if !production && let Some(dev) = &config.development_origins {
        origins.extend(OriginList::compile(
            dev,
            false,
            &format!("{prefix}.development_origins"),
            problems,
        ));
    }
    origins
}

impl CorsPolicy {
    /// Compiles a (merged) CORS table; `prefix` names it in problems.
    pub fn compile(
        config: &CorsConfig,
        production: bool,
        mode: Mode,
        prefix: &str,
    ) -> Result<CorsPolicy, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let origins = allowed_origins(config, production, prefix, &mut problems);
        let credentials = config.credentials.unwrap_or(false);
        if origins.is_empty() && problems.is_empty() {
            problems.push((format!("{prefix}.origins"), "list at least one origin".into()));
        }
        if origins.allows_any() && credentials {
            problems.push((
                format!("{prefix}.credentials"),
                "credentials cannot be combined with the origin \"*\"; list the origins that may send credentials"
                    .into(),
            ));
        }
        let mut methods = Vec::new();
        for name in strings(&config.methods, DEFAULT_METHODS) {
            match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => problems.push((
                    format!("{prefix}.methods"),
                    format!("`{name}` is not an HTTP method"),
                )),
            }
        }
        let headers = header_names(
            &strings(&config.headers, DEFAULT_HEADERS),
            &format!("{prefix}.headers"),
            &mut problems,
        );
        let expose = header_names(
            &strings(&config.expose_headers, DEFAULT_EXPOSE),
            &format!("{prefix}.expose_headers"),
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(problems);
        }
        let max_age = config.max_age.map_or(DEFAULT_MAX_AGE_SECS, |d| d.0.as_secs());
        Ok(CorsPolicy {
            allow_methods: join(&methods.iter().map(Method::as_str).collect::<Vec<_>>()),
            allow_headers: join(&headers),
            expose_headers: (!expose.is_empty()).then(|| join(&expose)),
            max_age: HeaderValue::from(max_age),
            keep_upstream_headers: config.keep_upstream_headers.unwrap_or(false),
            origins,
            credentials,
            methods,
            headers,
            mode,
        })
    }

    fn allows_origin(&self, origin: &HeaderValue) -> bool {
        self.origins.allows(origin.as_bytes())
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.origins.allows_any() && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    fn allows_headers(&self, requested: Option<&HeaderValue>) -> bool {
        let Some(requested) = requested else { return true };
        let Ok(text) = requested.to_str() else {
            return false;
        };
        text.split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .all(|h| self.headers.iter().any(|a| a.eq_ignore_ascii_case(h)))
    }

    /// Why a preflight is refused, if it is.
    fn preflight_refusal(&self, headers: &HeaderMap, origin: &HeaderValue) -> Option<&'static str> {
        let method = headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        if !self.allows_origin(origin) {
            Some("This origin may not call this API.")
        } else if !method.is_some_and(|m| self.methods.contains(&m)) {
            Some("The requested method is not allowed for cross-origin calls.")
        } else if !self.allows_headers(headers.get(ACCESS_CONTROL_REQUEST_HEADERS)) {
            Some("A requested header is not allowed for cross-origin calls.")
        } else {
            None
        }
    }
}

/// Whether a request is a CORS preflight.
pub fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(ORIGIN)
        && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// Removes every `Access-Control-*` header (an upstream's).
fn strip_access_control(headers: &mut HeaderMap) {
    let is_cors = |name: &HeaderName| name.as_str().starts_with("access-control-");
    if !headers.keys().any(is_cors) {
        return;
    }
    let doomed: Vec<HeaderName> = headers.keys().filter(|n| is_cors(n)).cloned().collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// A route's own CORS: its merged policy, or none (`enabled = false`).
pub struct RouteCors(Option<CorsPolicy>);

pub struct CorsStage {
    /// `[cors]`, for routes without their own table and unrouted answers.
    global: Option<CorsPolicy>,
    slot: Slot<RouteCors>,
    audit: crate::audit::Audit,
    enforcement: Enforcement,
}

fn report(problems: &mut Problems<'_>, errors: Vec<(String, String)>) {
    for (key, e) in errors {
        problems.at(&key, e);
    }
}

fn compile_route(
    global: Option<&CorsConfig>,
    route: &RouteEntry<'_>,
    problems: &mut Problems<'_>,
) -> Option<RouteCors> {
    let own = route.config.cors.as_ref();
    let merged = match (own, global) {
        (None, None) => return None,
        (Some(own), Some(global)) => own.over(global),
        (Some(own), None) => own.clone(),
        (None, Some(global)) => global.clone(),
    };
    if merged.enabled == Some(false) {
        return Some(RouteCors(None));
    }
    let mode = mode_for(
        problems,
        route,
        protection::CORS,
        own.and_then(|o| o.mode),
        global.and_then(|g| g.mode),
    );
    let production = problems.production();
    match CorsPolicy::compile(&merged, production, mode, &format!("{}.cors", route.key)) {
        Ok(policy) => Some(RouteCors(Some(policy))),
        // `[cors]`'s own problems are reported once, by the global compile.
        Err(errors) if own.is_some() => {
            report(problems, errors);
            None
        }
        Err(_) => None,
    }
}

/// Compiles `[cors]` and routes' `cors` tables; without any there is no
/// CORS stage.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let global_config = cx.config.cors.as_ref();
    if global_config.is_none() && cx.routes().iter().all(|r| r.config.cors.is_none()) {
        return None;
    }
    let global = global_config.and_then(|config| {
        let mode = config.mode.unwrap_or_default();
        match CorsPolicy::compile(config, cx.production(), mode, "cors") {
            Ok(policy) => (config.enabled != Some(false)).then_some(policy),
            Err(errors) => {
                report(&mut cx.problems, errors);
                None
            }
        }
    });
    let slot = cx.per_route(|route, problems| compile_route(global_config, route, problems));
    Some(Arc::new(CorsStage {
        global,
        slot,
        audit: cx.runtime.audit.clone(),
        enforcement: Enforcement::new(cx),
    }))
}

impl CorsStage {
    /// The policy for a request: its route's, or `[cors]`.
    fn policy<'a>(&'a self, route: Option<&'a Route>) -> Option<&'a CorsPolicy> {
        match route.and_then(|r| r.get(self.slot)) {
            Some(RouteCors(own)) => own.as_ref(),
            None => self.global.as_ref(),
        }
    }

    fn preflight(
        &self,
        cx: &RequestCx,
        cors: &CorsPolicy,
        req: &Request<GatewayBody>,
        origin: &HeaderValue,
    ) -> StageResult {
        if let Some(detail) = cors.preflight_refusal(req.headers(), origin) {
            if cors.mode == Mode::Enforce {
                self.audit.emit(
                    crate::audit::Event::new("cors.rejected", crate::audit::Severity::Notice)
                        .for_request(cx)
                        .detail(
                            "origin",
                            String::from_utf8_lossy(origin.as_bytes())
                                .chars()
                                .take(200)
                                .collect::<String>(),
                        )
                        .detail("reason", detail),
                );
            }
            return self.enforcement.refuse(
                cx,
                cors.mode,
                protection::CORS,
                GatewayError::CorsRefused(detail),
            );
        }
        let mut response = Response::new(GatewayBody::Empty);
        *response.status_mut() = StatusCode::NO_CONTENT;
        let h = response.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, cors.allow_origin_value(origin));
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, cors.allow_methods.clone());
        if !cors.headers.is_empty() {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, cors.allow_headers.clone());
        }
        if cors.credentials {
            h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        h.insert(ACCESS_CONTROL_MAX_AGE, cors.max_age.clone());
        h.append(VARY, HeaderValue::from_static("Origin"));
        Ok(Flow::Respond(response))
    }
}

impl Stage for CorsStage {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn phases(&self) -> Phases {
        Phases::EARLY.and(Phases::ACCESS).and(Phases::RESPONSE)
    }

    fn early<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request<GatewayBody>) -> Verdict<'a> {
        if let Some(origin) = req.headers().get(ORIGIN)
            && !is_preflight(req)
        {
            cx.cors_origin = Some(origin.clone());
        }
        Verdict::CONTINUE
    }

    fn access<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        route: &'a Route,
        req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        let Some(cors) = self.policy(Some(route)) else {
            return Verdict::CONTINUE;
        };
        match req.headers().get(ORIGIN) {
            Some(origin) if is_preflight(req) => Verdict::Ready(self.preflight(cx, cors, req, origin)),
            _ => Verdict::CONTINUE,
        }
    }

    fn response(&self, cx: &RequestCx, resp: &mut Response<GatewayBody>) {
        let Some(cors) = self.policy(cx.route.as_deref()) else {
            return;
        };
        let h = resp.headers_mut();
        let allowed = cx.cors_origin.as_ref().filter(|o| cors.allows_origin(o));
        if cx.from_upstream {
            if cors.keep_upstream_headers {
                return;
            }
            if cors.mode == Mode::Report && allowed.is_none() && h.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
                let error = GatewayError::CorsRefused("This origin may not call this API.");
                self.enforcement.record(cx, protection::CORS, &error);
                return;
            }
            strip_access_control(h);
        }
        h.append(VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = allowed else { return };
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, cors.allow_origin_value(origin));
        if cors.credentials {
            h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if let Some(expose) = &cors.expose_headers {
            h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage() -> CorsStage {
        let config: CorsConfig =
            toml::from_str("origins = [\"https://app.example.com\"]\ncredentials = true").unwrap();
        CorsStage {
            global: Some(CorsPolicy::compile(&config, true, Mode::Enforce, "cors").unwrap()),
            slot: Slot::new(99),
            audit: crate::audit::Audit::disabled(),
            enforcement: Enforcement::disabled(),
        }
    }

    #[test]
    fn the_upstreams_own_cors_headers_never_reach_the_client() {
        let stage = stage();
        let mut cx = RequestCx::for_test();
        let mut req = Request::new(GatewayBody::Empty);
        req.headers_mut()
            .insert(ORIGIN, "https://evil.example".parse().unwrap());
        let _ = stage.early(&mut cx, &mut req);
        cx.from_upstream = true;
        let mut resp = Response::new(GatewayBody::Empty);
        let h = resp.headers_mut();
        h.insert(
            ACCESS_CONTROL_ALLOW_ORIGIN,
            "https://evil.example".parse().unwrap(),
        );
        h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, "true".parse().unwrap());
        h.insert("access-control-allow-private-network", "true".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        stage.response(&cx, &mut resp);
        let names: Vec<&str> = resp.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "vary"], "{:?}", resp.headers());

        // An allowed origin gets the gateway's answer, not the upstream's.
        let mut cx = RequestCx::for_test();
        req.headers_mut()
            .insert(ORIGIN, "https://app.example.com".parse().unwrap());
        let _ = stage.early(&mut cx, &mut req);
        cx.from_upstream = true;
        let mut resp = Response::new(GatewayBody::Empty);
        resp.headers_mut()
            .insert(ACCESS_CONTROL_ALLOW_ORIGIN, "*".parse().unwrap());
        stage.response(&cx, &mut resp);
        assert_eq!(
            resp.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
    }

    #[test]
    fn origins_are_validated_per_environment() {
        assert_eq!(
            parse_origin("https://App.Example.com", true).unwrap(),
            "https://app.example.com"
        );
        assert!(parse_origin("https://app.example.com:8443", true).is_ok());
        assert!(parse_origin("http://localhost:3000", false).is_ok());
        for bad in [
            "http://localhost:3000",
            "https://localhost",
            "http://127.0.0.1:5173",
            "https://[::1]:8080",
            "http://app.example.com",
            "https://dev.localhost",
        ] {
            assert!(parse_origin(bad, true).is_err(), "{bad} in production");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://*.example.com",
            "ftp://x",
            "https://",
        ] {
            assert!(parse_origin(bad, false).is_err(), "{bad}");
        }
    }
}
