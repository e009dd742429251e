//! Routing: normalise the path, find the route with the longest matching
//! prefix, check the method.
//!
//! - a path that cannot be normalised safely: 400 (see [`normalise`]);
//! - no route: 404;
//! - a route for the path but not the method: 405 with `Allow`.
//!
//! Several routes may share a path with different methods; the first in
//! config order that allows the method wins. A route that lists `GET` also
//! allows `HEAD`. A route without `methods` allows the standard methods
//! (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS): not `TRACE` or `CONNECT`,
//! which a gateway has no business forwarding, nor extension methods that a
//! backend might read case-insensitively as one of those. Segments match
//! without their `;parameters` (see [`tree`]). (CORS
//! preflights are answered before routing, by the CORS stage.)

pub mod normalise;
pub mod tree;

use std::sync::Arc;

use http::{HeaderValue, Method, Request};

pub use normalise::{NormalPath, PathError, normalise};
pub use tree::{PrefixTree, RouteIndex};

use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::metrics::RouteMetrics;
use crate::pipeline::{Flow, RequestCx, Stage, StageResult, Verdict};
use crate::proxy::Upstream;
use crate::stage::authn::AuthPolicy;

/// A compiled `[[routes]]` entry.
pub struct Route {
    /// Names the route in metrics, logs and limit keys.
    pub id: Arc<str>,
    /// The normalised prefix.
    pub path: String,
    /// `None` allows the standard methods.
    pub methods: Option<Vec<Method>>,
    /// The `Allow` header for a 405 from this route alone.
    pub allow: HeaderValue,
    pub upstream: Arc<Upstream>,
    pub auth: AuthPolicy,
    pub limits: crate::ratelimit::RouteLimits,
    pub metrics: RouteMetrics,
}

/// Methods allowed when a route lists none.
const DEFAULT_METHODS: &[Method] = &[
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

impl Route {
    pub fn allows(&self, method: &Method) -> bool {
        match &self.methods {
            None => DEFAULT_METHODS.contains(method),
            Some(list) => list.contains(method) || (*method == Method::HEAD && list.contains(&Method::GET)),
        }
    }

    /// Every method this route allows, for `Allow`.
    pub fn allowed_methods(&self) -> Vec<Method> {
        let mut out: Vec<Method> = match &self.methods {
            None => DEFAULT_METHODS.to_vec(),
            Some(list) => list.clone(),
        };
        if out.contains(&Method::GET) && !out.contains(&Method::HEAD) {
            out.push(Method::HEAD);
        }
        out
    }
}

/// Formats methods as an `Allow` header value.
pub fn allow_header(methods: &[Method]) -> HeaderValue {
    let text = methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
    HeaderValue::try_from(text).expect("method names are valid header text")
}

pub struct RouteStage;

impl RouteStage {
    fn route(cx: &mut RequestCx, req: &Request<GatewayBody>) -> StageResult {
        let raw = req.uri().path();
        let path = normalise(raw).map_err(|e| GatewayError::bad_request(e.to_string()))?;
        let policy = &cx.policy;
        let candidates = policy.tree.longest_match(&path.decoded);
        if candidates.is_empty() {
            return Err(GatewayError::NotFound);
        }
        let method = req.method();
        let Some(&index) = candidates.iter().find(|i| policy.routes[**i].allows(method)) else {
            let allow = if let [only] = candidates {
                policy.routes[*only].allow.clone()
            } else {
                let mut all: Vec<Method> = Vec::new();
                for i in candidates {
                    for m in policy.routes[*i].allowed_methods() {
                        if !all.contains(&m) {
                            all.push(m);
                        }
                    }
                }
                allow_header(&all)
            };
            return Err(GatewayError::MethodNotAllowed {
                method: method.clone(),
                allow,
            });
        };
        if path.encoded != raw {
            cx.rewritten_path = Some(path.encoded.into_owned());
        }
        cx.route = Some(index);
        Ok(Flow::Continue)
    }
}

impl Stage for RouteStage {
    fn name(&self) -> &'static str {
        "route"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request<GatewayBody>) -> Verdict<'a> {
        Verdict::Ready(Self::route(cx, req))
    }
}
