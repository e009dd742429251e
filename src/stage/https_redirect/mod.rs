//! HTTPS redirect: with `https_redirect = true` (in `[security_headers]` or
//! a route's `security_headers`), a request that did not come over HTTPS
//! gets `308 Permanent Redirect` to the same host, path and query on
//! `https://` (308 keeps the method and body, unlike 301). "Came over
//! HTTPS" is the client_ip stage's answer: a trusted proxy's
//! `X-Forwarded-Proto: https`. The health endpoints live on the admin
//! listener and are never redirected; a public route a load balancer
//! probes over plain HTTP sets `https_redirect = false`.
//!
//! It runs first in the access phase, before any credential is looked at:
//! a request that should not have been sent in the clear is not served.

use std::sync::Arc;

use http::header::{HOST, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode};

use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::enforce::{Enforcement, Mode, mode_for, protection};
use crate::error::GatewayError;
use crate::pipeline::{Flow, Phases, RequestCx, Route, Slot, Stage, Verdict};

/// A route's redirect.
pub struct Redirect {
    /// `:8443`, or empty for 443.
    port: String,
    mode: Mode,
}

pub struct HttpsRedirectStage {
    slot: Slot<Redirect>,
    enforcement: Enforcement,
}

/// Compiles the redirect of every route that has one; none: no stage.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let base = cx.config.security_headers.clone().unwrap_or_default();
    let mut any = false;
    let slot = cx.per_route(|route, problems| {
        let own = route.config.security_headers.as_ref();
        let on = own
            .and_then(|c| c.https_redirect)
            .or(base.https_redirect)
            .unwrap_or(false);
        if !on {
            return None;
        }
        any = true;
        let port = match own.and_then(|c| c.https_port).or(base.https_port) {
            None | Some(443) => String::new(),
            Some(0) => {
                problems.in_route(route, "security_headers.https_port", "0 is not a port");
                String::new()
            }
            Some(port) => format!(":{port}"),
        };
        let mode = mode_for(
            problems,
            route,
            protection::HTTPS_REDIRECT,
            own.and_then(|c| c.mode),
            base.mode,
        );
        Some(Redirect { port, mode })
    });
    any.then(|| {
        Arc::new(HttpsRedirectStage {
            slot,
            enforcement: Enforcement::new(cx),
        }) as Arc<dyn Stage>
    })
}

/// `host` of `host[:port]`, keeping a bracketed IPv6 address whole.
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// The https URL for a request, or `None` if it names no usable host.
fn location(req: &Request<GatewayBody>, port: &str) -> Option<HeaderValue> {
    let authority = match req.headers().get(HOST) {
        Some(host) => host.to_str().ok()?,
        None => req.uri().authority()?.as_str(),
    };
    let host = strip_port(authority);
    if host.is_empty() {
        return None;
    }
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    HeaderValue::try_from(format!("https://{host}{port}{target}")).ok()
}

impl Stage for HttpsRedirectStage {
    fn name(&self) -> &'static str {
        "https_redirect"
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
        let Some(redirect) = route.get(self.slot) else {
            return Verdict::CONTINUE;
        };
        if cx.https {
            return Verdict::CONTINUE;
        }
        let Some(location) = location(req, &redirect.port) else {
            return Verdict::Ready(Err(GatewayError::bad_request("this request must use https")));
        };
        if redirect.mode == Mode::Report {
            let error = GatewayError::bad_request("this request must use https");
            self.enforcement.record(cx, protection::HTTPS_REDIRECT, &error);
            return Verdict::CONTINUE;
        }
        let mut response = Response::new(GatewayBody::Empty);
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        response.headers_mut().insert(LOCATION, location);
        Verdict::Ready(Ok(Flow::Respond(response)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_location_keeps_host_path_and_query_and_sets_the_port() {
        let req = |host: &str, target: &str| {
            Request::builder()
                .uri(target)
                .header(HOST, host)
                .body(GatewayBody::Empty)
                .unwrap()
        };
        let at = |host: &str, target: &str, port: &str| location(&req(host, target), port).unwrap();
        assert_eq!(
            at("app.example.com", "/a/b?c=1", ""),
            "https://app.example.com/a/b?c=1"
        );
        assert_eq!(at("app.example.com:8080", "/", ""), "https://app.example.com/");
        assert_eq!(
            at("app.example.com:8080", "/x", ":8443"),
            "https://app.example.com:8443/x"
        );
        assert_eq!(at("[::1]:8080", "/x", ""), "https://[::1]/x");
        assert_eq!(at("[::1]", "/x", ""), "https://[::1]/x");
    }
}
