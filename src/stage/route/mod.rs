//! Routing: normalise the path, find the route with the longest matching
//! prefix, check the method. This is the pipeline's route phase
//! ([`crate::pipeline::Router`]): it runs once, and every later phase gets
//! the matched [`Route`].
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
//! without their `;parameters` (see [`tree`]).
//!
//! With `[cors]` (or any route's `cors`) set, a CORS preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is routed as the request it announces:
//! to the first route at its path that allows the announced method, else
//! the first route at its path. The CORS stage answers it there, so routes
//! need not list `OPTIONS`.

pub mod normalise;
pub mod tree;

use std::sync::Arc;

use http::header::{ACCESS_CONTROL_REQUEST_METHOD, ORIGIN};
use http::{HeaderValue, Method, Request};

pub use normalise::{NormalPath, PathError, normalise};
pub use tree::{PrefixTree, RouteIndex};

use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::config::RouteConfig;
use crate::error::GatewayError;
use crate::pipeline::{RequestCx, Route, Router};
use crate::upstream::Upstream;

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

/// What the router keeps of each route.
struct Entry {
    route: Arc<Route>,
    /// `None` allows the standard methods.
    methods: Option<Vec<Method>>,
    /// The `Allow` header for a 405 from this route alone.
    allow: HeaderValue,
}

impl Entry {
    fn allows(&self, method: &Method) -> bool {
        match &self.methods {
            None => DEFAULT_METHODS.contains(method),
            Some(list) => list.contains(method) || (*method == Method::HEAD && list.contains(&Method::GET)),
        }
    }

    /// Every method this route allows, for `Allow`.
    fn allowed_methods(&self) -> Vec<Method> {
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

/// The route table of a policy.
pub struct RouteTable {
    entries: Vec<Entry>,
    tree: PrefixTree,
    /// Route CORS preflights by the method they announce.
    preflights: bool,
}

/// A route's path as matched: normalised, without a trailing slash.
fn matched_path(path: &str) -> Result<String, PathError> {
    let p = normalise(path)?;
    let trimmed = p.decoded.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    })
}

/// Each `[[routes]]` entry's ID: its `id`, or else its path as matched (or
/// as written, when it does not normalise: [`compile`] reports that).
pub fn route_ids(routes: &[RouteConfig]) -> Vec<Arc<str>> {
    routes
        .iter()
        .map(|r| match &r.id {
            Some(id) => id.as_str().into(),
            None => matched_path(&r.path).unwrap_or_else(|_| r.path.clone()).into(),
        })
        .collect()
}

fn compile_methods(names: &Option<Vec<String>>) -> Result<Option<Vec<Method>>, Vec<String>> {
    let Some(names) = names else { return Ok(None) };
    let mut problems = Vec::new();
    if names.is_empty() {
        problems.push("list at least one method, or leave `methods` out to allow all".to_string());
    }
    let mut methods = Vec::new();
    for name in names {
        let upper = name.to_ascii_uppercase();
        match Method::from_bytes(upper.as_bytes()) {
            Ok(m) if m == Method::CONNECT || m == Method::TRACE => {
                problems.push(format!("{upper} cannot be proxied"))
            }
            Ok(m) => methods.push(m),
            Err(_) => problems.push(format!("`{name}` is not an HTTP method")),
        }
    }
    if problems.is_empty() {
        Ok(Some(methods))
    } else {
        Err(problems)
    }
}

/// Builds every route, with the slots the stages filled, and the table
/// that matches them. Runs after every stage has compiled its part.
pub fn compile(cx: &mut CompileCx<'_>, upstreams: &[Arc<Upstream>]) -> (RouteTable, Vec<Arc<Route>>) {
    let config = cx.config;
    let mut table = RouteTable {
        entries: Vec::new(),
        tree: PrefixTree::default(),
        preflights: config.cors.is_some() || config.routes.iter().any(|r| r.cors.is_some()),
    };
    let mut seen_ids: Vec<Arc<str>> = Vec::new();
    for index in 0..cx.routes().len() {
        let (route_config, id) = (cx.routes()[index].config, cx.routes()[index].id.clone());
        let mut ok = true;
        let path = match matched_path(&route_config.path) {
            Ok(path) if path.contains(';') => {
                report(
                    cx,
                    index,
                    "path",
                    "a route path cannot contain `;` (requests match without their `;parameters`)".into(),
                );
                ok = false;
                path
            }
            Ok(path) => path,
            Err(e) => {
                report(cx, index, "path", format!("`{}`: {e}", route_config.path));
                ok = false;
                String::new()
            }
        };
        if seen_ids.contains(&id) {
            report(
                cx,
                index,
                "path",
                format!("another route has the id `{id}`; give one of them an `id`"),
            );
        }
        seen_ids.push(id.clone());
        let methods = match compile_methods(&route_config.methods) {
            Ok(methods) => methods,
            Err(problems) => {
                for p in problems {
                    report(cx, index, "methods", p);
                }
                None
            }
        };
        let Some(upstream) = upstreams
            .iter()
            .find(|u| u.name == route_config.upstream)
            .cloned()
        else {
            if config.upstreams.iter().all(|u| u.name != route_config.upstream) {
                let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
                let hint = crate::config::load::nearest(&route_config.upstream, &names)
                    .map(|n| format!("; did you mean `{n}`?"))
                    .unwrap_or_default();
                report(
                    cx,
                    index,
                    "upstream",
                    format!("no upstream is named `{}`{hint}", route_config.upstream),
                );
            }
            continue;
        };
        if !ok {
            continue;
        }
        let slots = cx.take_slots(index);
        let mut route = Route::new(id.clone(), upstream, cx.runtime.metrics.for_route(&id), slots);
        route.retry_non_idempotent = route_config.retry_non_idempotent;
        let route = Arc::new(route);
        let mut entry = Entry {
            route,
            methods,
            allow: HeaderValue::from_static(""),
        };
        entry.allow = allow_header(&entry.allowed_methods());
        table.tree.insert(&path, table.entries.len());
        table.entries.push(entry);
    }
    let routes = table.entries.iter().map(|e| e.route.clone()).collect();
    (table, routes)
}

fn report(cx: &mut CompileCx<'_>, index: usize, field: &str, message: String) {
    cx.route_problem(index, field, message);
}

impl RouteTable {
    /// The method a request is routed by: a preflight's announced method.
    fn routing_method(&self, req: &Request<GatewayBody>) -> Option<Method> {
        if !self.preflights || req.method() != Method::OPTIONS || !req.headers().contains_key(ORIGIN) {
            return None;
        }
        let announced = req.headers().get(ACCESS_CONTROL_REQUEST_METHOD)?;
        Some(Method::from_bytes(announced.as_bytes()).unwrap_or(Method::OPTIONS))
    }

    fn method_not_allowed(&self, candidates: &[RouteIndex], method: &Method) -> GatewayError {
        let allow = if let [only] = candidates {
            self.entries[*only].allow.clone()
        } else {
            let mut all: Vec<Method> = Vec::new();
            for i in candidates {
                for m in self.entries[*i].allowed_methods() {
                    if !all.contains(&m) {
                        all.push(m);
                    }
                }
            }
            allow_header(&all)
        };
        GatewayError::MethodNotAllowed {
            method: method.clone(),
            allow,
        }
    }
}

impl Router for RouteTable {
    fn route(&self, cx: &mut RequestCx, req: &Request<GatewayBody>) -> Result<Arc<Route>, GatewayError> {
        let raw = req.uri().path();
        let path = normalise(raw).map_err(|e| GatewayError::bad_request(e.to_string()))?;
        let candidates = self.tree.longest_match(&path.decoded);
        if candidates.is_empty() {
            return Err(GatewayError::NotFound);
        }
        let chosen = match self.routing_method(req) {
            Some(announced) => candidates
                .iter()
                .find(|i| self.entries[**i].allows(&announced))
                .or(candidates.first()),
            None => candidates.iter().find(|i| self.entries[**i].allows(req.method())),
        };
        let Some(&index) = chosen else {
            return Err(self.method_not_allowed(candidates, req.method()));
        };
        if path.encoded != raw {
            cx.rewritten_path = Some(path.encoded.into_owned());
        }
        Ok(self.entries[index].route.clone())
    }
}
