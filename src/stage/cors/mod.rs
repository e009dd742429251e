//! CORS: which browser origins may call the API, answered from an explicit
//! allow-list and never by reflecting whatever `Origin` arrives.
//!
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
//! - `Vary: Origin` is added whenever the answer depends on the origin.
//! - `Access-Control-*` headers from the upstream are removed (unless
//!   `keep_upstream_headers`), so a backend that reflects `Origin` cannot
//!   widen the allow-list.
//!
//! Phases: `early` notes whether the request's origin is allowed, so that
//! the gateway's own answers before and at routing (400, 404, 405) are
//! readable by an allowed page; `access` answers preflights on the route
//! they were routed to (the router routes a preflight by the method it
//! announces); `response` sets the headers on every response.

use std::sync::Arc;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use serde::Deserialize;

use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::config::ConfigDuration;
use crate::error::GatewayError;
use crate::pipeline::{Flow, Phases, RequestCx, Route, Stage, StageResult, Verdict};

/// `[cors]`: the browser origins allowed to call routed APIs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`), or `["*"]` for any origin
    /// (never together with `credentials`).
    pub origins: Vec<String>,
    /// Allow cookies and `Authorization` on cross-origin calls.
    #[serde(default)]
    pub credentials: bool,
    /// Methods a cross-origin call may use.
    #[serde(default = "CorsConfig::default_methods")]
    pub methods: Vec<String>,
    /// Request headers a cross-origin call may send.
    #[serde(default = "CorsConfig::default_headers")]
    pub headers: Vec<String>,
    /// Response headers the calling page may read.
    #[serde(default = "CorsConfig::default_expose")]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer.
    #[serde(default = "CorsConfig::default_max_age")]
    pub max_age: ConfigDuration,
    /// Leave the upstream's own `Access-Control-*` headers on its responses
    /// (for a backend that owns its CORS); by default they are removed, so a
    /// backend that reflects `Origin` cannot widen the allow-list.
    #[serde(default)]
    pub keep_upstream_headers: bool,
}

impl CorsConfig {
    fn default_methods() -> Vec<String> {
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
            .map(String::from)
            .to_vec()
    }
    fn default_headers() -> Vec<String> {
        [
            "Content-Type",
            "Authorization",
            "X-API-Key",
            "X-Request-Id",
            "X-CSRF-Token",
        ]
        .map(String::from)
        .to_vec()
    }
    fn default_expose() -> Vec<String> {
        ["X-Request-Id", "Retry-After", "RateLimit", "RateLimit-Policy"]
            .map(String::from)
            .to_vec()
    }
    fn default_max_age() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(600))
    }
}

/// The compiled `[cors]` table.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    /// Lowercased `scheme://host[:port]` origins.
    origins: Vec<String>,
    any_origin: bool,
    credentials: bool,
    methods: Vec<Method>,
    /// Lowercased allowed request header names.
    headers: Vec<String>,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
    keep_upstream_headers: bool,
}

/// Checks one configured origin; returns it lowercased.
pub fn parse_origin(text: &str, production: bool) -> Result<String, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (scheme, rest) = lower
        .split_once("://")
        .ok_or_else(|| format!("`{text}` is not an origin such as https://app.example.com"))?;
    if scheme != "https" && scheme != "http" {
        return Err(format!("`{text}`: an origin starts with https:// or http://"));
    }
    if rest.is_empty() || rest.contains('/') || rest.contains('?') || rest.contains('#') || rest.contains('@')
    {
        return Err(format!(
            "`{text}`: an origin is scheme://host[:port], with no path or trailing slash"
        ));
    }
    if rest.contains('*') {
        return Err(format!(
            "`{text}`: wildcards inside an origin are not supported; list each origin"
        ));
    }
    if production {
        let host = rest.rsplit_once(':').map(|(h, _)| h).unwrap_or(rest);
        if matches!(host, "localhost" | "127.0.0.1" | "[::1]") || host.ends_with(".localhost") {
            return Err(format!("`{text}`: local origins are not allowed in production"));
        }
        if scheme != "https" {
            return Err(format!("`{text}`: production origins must use https"));
        }
    }
    Ok(lower)
}

fn join<T: AsRef<str>>(items: &[T]) -> HeaderValue {
    let text = items.iter().map(|i| i.as_ref()).collect::<Vec<_>>().join(", ");
    HeaderValue::try_from(text).expect("validated names are valid header text")
}

impl CorsPolicy {
    /// Compiles `[cors]`; returns `(key, message)` pairs for each problem.
    pub fn compile(config: &CorsConfig, production: bool) -> Result<CorsPolicy, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut origins = Vec::new();
        let mut any_origin = false;
        for origin in &config.origins {
            if origin.trim() == "*" {
                any_origin = true;
                continue;
            }
            match parse_origin(origin, production) {
                Ok(o) => origins.push(o),
                Err(e) => problems.push(("cors.origins".to_string(), e)),
            }
        }
        if config.origins.is_empty() {
            problems.push(("cors.origins".into(), "list at least one origin".into()));
        }
        if any_origin && config.credentials {
            problems.push((
                "cors.credentials".into(),
                "credentials cannot be combined with the origin \"*\"; list the origins that may send credentials"
                    .into(),
            ));
        }
        if any_origin && !origins.is_empty() {
            problems.push((
                "cors.origins".into(),
                "\"*\" already allows every origin; remove the others".into(),
            ));
        }
        let mut methods = Vec::new();
        for name in &config.methods {
            match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => problems.push(("cors.methods".into(), format!("`{name}` is not an HTTP method"))),
            }
        }
        let mut headers = Vec::new();
        for name in &config.headers {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => headers.push(h.as_str().to_string()),
                Err(_) => problems.push(("cors.headers".into(), format!("`{name}` is not a header name"))),
            }
        }
        let mut expose = Vec::new();
        for name in &config.expose_headers {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => expose.push(h.as_str().to_string()),
                Err(_) => problems.push((
                    "cors.expose_headers".into(),
                    format!("`{name}` is not a header name"),
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(CorsPolicy {
            allow_methods: join(&methods.iter().map(Method::as_str).collect::<Vec<_>>()),
            allow_headers: join(&headers),
            expose_headers: (!expose.is_empty()).then(|| join(&expose)),
            max_age: HeaderValue::from(config.max_age.0.as_secs()),
            keep_upstream_headers: config.keep_upstream_headers,
            origins,
            any_origin,
            credentials: config.credentials,
            methods,
            headers,
        })
    }

    fn allows_origin(&self, origin: &HeaderValue) -> bool {
        if self.any_origin {
            return true;
        }
        let Ok(text) = origin.to_str() else { return false };
        self.origins.iter().any(|o| o.eq_ignore_ascii_case(text))
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
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

pub struct CorsStage {
    policy: CorsPolicy,
    audit: crate::audit::Audit,
}

/// Compiles `[cors]`; without it there is no CORS stage.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let config = cx.config.cors.as_ref()?;
    match CorsPolicy::compile(config, cx.production()) {
        Ok(policy) => Some(Arc::new(CorsStage {
            policy,
            audit: cx.runtime.audit.clone(),
        })),
        Err(errors) => {
            for (key, e) in errors {
                cx.problems.at(&key, e);
            }
            None
        }
    }
}

impl CorsStage {
    fn preflight(&self, cx: &RequestCx, req: &Request<GatewayBody>, origin: &HeaderValue) -> StageResult {
        let cors = &self.policy;
        let headers = req.headers();
        let method = headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        let refused = if !cors.allows_origin(origin) {
            Some("This origin may not call this API.")
        } else if !method.is_some_and(|m| cors.methods.contains(&m)) {
            Some("The requested method is not allowed for cross-origin calls.")
        } else if !cors.allows_headers(headers.get(ACCESS_CONTROL_REQUEST_HEADERS)) {
            Some("A requested header is not allowed for cross-origin calls.")
        } else {
            None
        };
        if let Some(detail) = refused {
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
            return Err(GatewayError::CorsRefused(detail));
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
            && self.policy.allows_origin(origin)
        {
            cx.cors_origin = Some(origin.clone());
        }
        Verdict::CONTINUE
    }

    fn access<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        _route: &'a Route,
        req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        match req.headers().get(ORIGIN) {
            Some(origin) if is_preflight(req) => Verdict::Ready(self.preflight(cx, req, origin)),
            _ => Verdict::CONTINUE,
        }
    }

    fn response(&self, cx: &RequestCx, resp: &mut Response<GatewayBody>) {
        let cors = &self.policy;
        let h = resp.headers_mut();
        if cx.from_upstream {
            if cors.keep_upstream_headers {
                return;
            }
            strip_access_control(h);
        }
        // With a bare `*` the answer is the same for every origin.
        if !cors.any_origin || cors.credentials {
            h.append(VARY, HeaderValue::from_static("Origin"));
        }
        let Some(origin) = &cx.cors_origin else { return };
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
            policy: CorsPolicy::compile(&config, true).unwrap(),
            audit: crate::audit::Audit::disabled(),
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
        assert!(cx.cors_origin.is_none(), "an unlisted origin is not allowed");
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
