//! `/.auth/verify`: portcullis as the auth decision point behind another
//! proxy (nginx `auth_request`, Traefik ForwardAuth, Envoy `ext_authz`).
//!
//! The request is turned into the one the proxy is asking about: its
//! method and target from `X-Forwarded-Method`/`X-Forwarded-Uri`
//! (Traefik), `X-Original-Method`/`X-Original-URI` (nginx), or, for Envoy's
//! `path_prefix`, the request's own method and the path after
//! `/.auth/verify`. Routing and the access phase then run as for a proxied
//! request, with the same route policies; instead of proxying, the
//! pipeline answers 200 with the identity headers (see
//! [`crate::pipeline::RequestCx::decision_only`]), or the usual refusal.
//!
//! A browser without a session on a session route gets a 302 to the login
//! page, which Traefik and Envoy pass on; nginx's `auth_request` cannot
//! pass a 3xx, so a request that came the nginx way gets 401 with the same
//! `Location`, for its `error_page 401` to redirect.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};

use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::error::GatewayError;
use crate::pipeline::{DecisionFor, Flow, Phases, RequestCx, Stage, Verdict};

static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");

const PREFIX: &str = "/.auth/verify";

pub struct ForwardAuthStage;

/// Always on: the endpoint changes nothing unless a proxy calls it.
pub fn compile(_cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    Some(Arc::new(ForwardAuthStage))
}

fn header<'a>(req: &'a Request<GatewayBody>, name: &HeaderName) -> Result<Option<&'a str>, GatewayError> {
    let mut values = req.headers().get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::bad_request(format!("more than one {name}")));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| GatewayError::bad_request(format!("{name} is not text")))
}

/// The method and target the proxy asks about, and how to answer it.
fn asked_about(req: &Request<GatewayBody>) -> Result<(Method, String, DecisionFor), GatewayError> {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix(PREFIX).filter(|r| r.starts_with('/')) {
        // Envoy: /.auth/verify/<original path>, the original method.
        let target = match req.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        return Ok((req.method().clone(), target, DecisionFor::Redirecting));
    }
    let forwarded = header(req, &X_FORWARDED_URI)?;
    let original = header(req, &X_ORIGINAL_URI)?;
    let (target, method, flavour) = match (forwarded, original) {
        (Some(_), Some(_)) => {
            return Err(GatewayError::bad_request(
                "both X-Forwarded-Uri and X-Original-URI were sent; the proxy must send one",
            ));
        }
        (Some(t), None) => (t, header(req, &X_FORWARDED_METHOD)?, DecisionFor::Redirecting),
        (None, Some(t)) => (t, header(req, &X_ORIGINAL_METHOD)?, DecisionFor::Nginx),
        (None, None) => {
            return Err(GatewayError::bad_request(
                "a forward-auth request names the request it asks about in X-Forwarded-Uri or X-Original-URI",
            ));
        }
    };
    let method = match method {
        Some(m) => Method::from_bytes(m.trim().as_bytes())
            .map_err(|_| GatewayError::bad_request("the forwarded method is not a method"))?,
        None => Method::GET,
    };
    Ok((method, target.trim().to_string(), flavour))
}

impl ForwardAuthStage {
    fn rewrite(&self, cx: &mut RequestCx, req: &mut Request<GatewayBody>) -> Result<Flow, GatewayError> {
        let (method, target, flavour) = asked_about(req)?;
        if !target.starts_with('/') {
            return Err(GatewayError::bad_request("the forwarded URI must be a path"));
        }
        let uri: Uri = target
            .parse()
            .map_err(|_| GatewayError::bad_request("the forwarded URI is not a valid request target"))?;
        // The gateway's own pages are public: the proxy sends them on. Judged
        // on the normalised path, and only when the proxy's path is already
        // normal: `/.auth/../admin` is /admin, and a path that only
        // normalises to /.auth/… is refused rather than waved through.
        let raw = uri.path();
        let normal = crate::stage::route::normalise::normalise(raw)
            .map_err(|e| GatewayError::bad_request(format!("the forwarded path is refused: {e}")))?;
        let ours = |p: &str| p == "/.auth" || p.starts_with("/.auth/");
        if ours(&normal.decoded) {
            if normal.encoded != raw {
                return Err(GatewayError::bad_request(
                    "the forwarded path is not in normal form",
                ));
            }
            return Ok(Flow::Respond(Response::new(GatewayBody::Empty)));
        }
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        for name in [
            &X_FORWARDED_URI,
            &X_FORWARDED_METHOD,
            &X_ORIGINAL_URI,
            &X_ORIGINAL_METHOD,
        ] {
            req.headers_mut().remove(name);
        }
        cx.decision_only = Some(flavour);
        Ok(Flow::Continue)
    }
}

impl Stage for ForwardAuthStage {
    fn name(&self) -> &'static str {
        "forward_auth"
    }

    fn phases(&self) -> Phases {
        Phases::EARLY.and(Phases::RESPONSE)
    }

    fn early<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request<GatewayBody>) -> Verdict<'a> {
        let path = req.uri().path();
        if path != PREFIX && !path.starts_with("/.auth/verify/") {
            return Verdict::CONTINUE;
        }
        Verdict::Ready(self.rewrite(cx, req))
    }

    fn response(&self, cx: &RequestCx, response: &mut Response<GatewayBody>) {
        if cx.decision_only == Some(DecisionFor::Nginx) && response.status() == StatusCode::FOUND {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Session realm=\"portcullis\", login=\"/.auth/login\""),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, headers: &[(&str, &str)]) -> Request<GatewayBody> {
        let mut r = Request::new(GatewayBody::Empty);
        *r.uri_mut() = path.parse().unwrap();
        for (k, v) in headers {
            r.headers_mut()
                .append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        r
    }

    #[test]
    fn each_proxy_names_the_request_its_own_way() {
        let (m, t, f) = asked_about(&req(
            "/.auth/verify",
            &[("x-forwarded-uri", "/a?b=1"), ("x-forwarded-method", "POST")],
        ))
        .unwrap();
        assert_eq!(
            (m, t.as_str(), f),
            (Method::POST, "/a?b=1", DecisionFor::Redirecting)
        );
        let (m, t, f) = asked_about(&req(
            "/.auth/verify",
            &[("x-original-uri", "/n"), ("x-original-method", "DELETE")],
        ))
        .unwrap();
        assert_eq!((m, t.as_str(), f), (Method::DELETE, "/n", DecisionFor::Nginx));
        let (m, t, _) = asked_about(&req("/.auth/verify/api/x?y=2", &[])).unwrap();
        assert_eq!((m, t.as_str()), (Method::GET, "/api/x?y=2"));
        assert!(asked_about(&req("/.auth/verify", &[])).is_err());
        assert!(
            asked_about(&req(
                "/.auth/verify",
                &[("x-original-uri", "/a"), ("x-forwarded-uri", "/b")]
            ))
            .is_err()
        );
    }
}
