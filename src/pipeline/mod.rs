//! The request pipeline: fixed phases, in this order, each running the
//! stages that take part in it (as Pingora's `ProxyHttp` does):
//!
//! | phase | sees | for |
//! | --- | --- | --- |
//! | `early` | the request | request ID, framing, client IP, request-head limits, limits before authentication |
//! | route | the request | matched once by the pipeline's [`Router`]; every later phase gets the [`Route`] |
//! | `access` | request and route | CORS preflights, authentication, authorisation, rate limits |
//! | `body` | request and route | body size limits |
//! | `upstream_request` | request and route | the headers the upstream receives |
//! | (proxy) | | [`crate::upstream::Upstream::forward`] |
//! | `response` | every response, whoever made it | headers the gateway adds or removes |
//! | `logging` | the finished exchange | metrics and the access log, exactly once per request |
//!
//! A stage implements [`Stage`] and says which phases it takes part in;
//! the policy lists stages in one order and each phase runs, in that order,
//! the stages that take part in it. A stage that answers ([`Flow::Respond`]
//! or an error) ends the request phases; the response phase and logging
//! still run. This module knows no stage: stages know the pipeline.
//!
//! Most stages decide without waiting, so the request hooks return a
//! [`Verdict`] that is either ready or a future; only a stage that really
//! waits (a store lookup, a Redis call) pays for boxing one.

mod context;
mod finish;
mod route;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, Version};

pub use context::{DecisionFor, RequestCx};
pub use finish::{Exchange, Finished, LoggedBody};
pub use route::{Route, RouteSlots, Slot};

use crate::body::GatewayBody;
use crate::error::{ErrorSide, GatewayError, problem_response};
use crate::upstream::Forwarding;

/// What a stage decided.
pub enum Flow {
    /// Pass the request on.
    Continue,
    /// Answer now; later stages and the upstream are skipped.
    Respond(Response<GatewayBody>),
}

pub type StageResult = Result<Flow, GatewayError>;

/// A stage's decision, either made already or still to come.
pub enum Verdict<'a> {
    Ready(StageResult),
    Pending(Pin<Box<dyn Future<Output = StageResult> + Send + 'a>>),
}

impl Verdict<'_> {
    /// Let the request go on.
    pub const CONTINUE: Verdict<'static> = Verdict::Ready(Ok(Flow::Continue));
}

impl From<StageResult> for Verdict<'_> {
    fn from(result: StageResult) -> Self {
        Verdict::Ready(result)
    }
}

/// The phases a stage takes part in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phases(u8);

impl Phases {
    pub const EARLY: Phases = Phases(1);
    pub const ACCESS: Phases = Phases(1 << 1);
    pub const BODY: Phases = Phases(1 << 2);
    pub const UPSTREAM_REQUEST: Phases = Phases(1 << 3);
    pub const RESPONSE: Phases = Phases(1 << 4);
    pub const LOGGING: Phases = Phases(1 << 5);

    /// Both sets.
    pub const fn and(self, other: Phases) -> Phases {
        Phases(self.0 | other.0)
    }

    pub const fn contains(self, other: Phases) -> bool {
        self.0 & other.0 == other.0
    }
}

/// One step of the pipeline. Each hook has a default that does nothing;
/// [`Stage::phases`] says which of them the stage implements.
pub trait Stage: Send + Sync {
    /// Short name, for logs, docs and `Pipeline::describe`.
    fn name(&self) -> &'static str;

    /// The phases this stage takes part in.
    fn phases(&self) -> Phases;

    /// Whether its access hook runs again, on the handshake, while a
    /// long-lived connection (a WebSocket) stays open: authentication and
    /// authorisation, so an expired or revoked credential ends it.
    fn rechecks(&self) -> bool {
        false
    }

    /// Before routing.
    fn early<'a>(&'a self, _cx: &'a mut RequestCx, _req: &'a mut Request<GatewayBody>) -> Verdict<'a> {
        Verdict::CONTINUE
    }

    /// After routing: who may do what.
    fn access<'a>(
        &'a self,
        _cx: &'a mut RequestCx,
        _route: &'a Route,
        _req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        Verdict::CONTINUE
    }

    /// The request body, before it streams to the upstream.
    fn body<'a>(
        &'a self,
        _cx: &'a mut RequestCx,
        _route: &'a Route,
        _req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        Verdict::CONTINUE
    }

    /// The request as the upstream will receive it.
    fn upstream_request(&self, _cx: &RequestCx, _route: &Route, _req: &mut Request<GatewayBody>) {}

    /// Every response on its way to the client: the upstream's, or one the
    /// gateway made (`cx.from_upstream` tells which).
    fn response(&self, _cx: &RequestCx, _resp: &mut Response<GatewayBody>) {}

    /// Once per request, when its response has been sent or abandoned.
    fn logging(&self, _cx: &RequestCx, _done: &Finished<'_>) {}
}

/// The route phase: finds the request's route, or answers (404, 405, 400).
pub trait Router: Send + Sync {
    fn route(&self, cx: &mut RequestCx, req: &Request<GatewayBody>) -> Result<Arc<Route>, GatewayError>;
}

/// Why the request phases stopped before the upstream.
enum Stop {
    Answer(Response<GatewayBody>),
    Fail(GatewayError),
}

impl From<StageResult> for Stop {
    /// The stop for a result that is not `Continue`.
    fn from(result: StageResult) -> Stop {
        match result {
            Ok(Flow::Respond(response)) => Stop::Answer(response),
            Err(error) => Stop::Fail(error),
            Ok(Flow::Continue) => Stop::Fail(GatewayError::Internal),
        }
    }
}

/// Goes on after a stage that let the request pass, waiting for its
/// verdict if it must; returns the stop otherwise. A macro rather than an
/// `async fn`: a ready verdict (nearly all of them) is matched where it was
/// returned, instead of being moved into a future of its own, which cost
/// about 400 instructions per request in copies.
macro_rules! settle {
    ($verdict:expr) => {
        match $verdict {
            Verdict::Ready(Ok(Flow::Continue)) => {}
            Verdict::Ready(result) => return Err(Stop::from(result)),
            Verdict::Pending(future) => match future.await {
                Ok(Flow::Continue) => {}
                result => return Err(Stop::from(result)),
            },
        }
    };
}

/// The stages of a policy, sorted into their phases.
pub struct Pipeline {
    early: Vec<Arc<dyn Stage>>,
    router: Box<dyn Router>,
    access: Vec<Arc<dyn Stage>>,
    /// The access stages that [`Stage::rechecks`].
    recheck: Vec<Arc<dyn Stage>>,
    body: Vec<Arc<dyn Stage>>,
    upstream_request: Vec<Arc<dyn Stage>>,
    response: Vec<Arc<dyn Stage>>,
    logging: Vec<Arc<dyn Stage>>,
}

impl Pipeline {
    /// Sorts `order` into phases, keeping the order within each.
    pub fn new(order: Vec<Arc<dyn Stage>>, router: Box<dyn Router>) -> Pipeline {
        let phase = |p: Phases| -> Vec<Arc<dyn Stage>> {
            order.iter().filter(|s| s.phases().contains(p)).cloned().collect()
        };
        Pipeline {
            early: phase(Phases::EARLY),
            router,
            access: phase(Phases::ACCESS),
            recheck: phase(Phases::ACCESS)
                .into_iter()
                .filter(|s| s.rechecks())
                .collect(),
            body: phase(Phases::BODY),
            upstream_request: phase(Phases::UPSTREAM_REQUEST),
            response: phase(Phases::RESPONSE),
            logging: phase(Phases::LOGGING),
        }
    }

    /// Each phase with the names of its stages, in order.
    pub fn describe(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let names = |stages: &[Arc<dyn Stage>]| stages.iter().map(|s| s.name()).collect();
        vec![
            ("early", names(&self.early)),
            ("route", vec!["route"]),
            ("access", names(&self.access)),
            ("body", names(&self.body)),
            ("upstream_request", names(&self.upstream_request)),
            ("response", names(&self.response)),
            ("logging", names(&self.logging)),
        ]
    }

    /// Runs a request through every phase up to its response; logging runs
    /// later, from [`Exchange`], when the response is done.
    pub async fn run(
        self: &Arc<Self>,
        cx: &mut RequestCx,
        mut req: Request<GatewayBody>,
    ) -> Response<GatewayBody> {
        let mut response = match self.request_phases(cx, &mut req).await {
            // A WebSocket route's proxy step: the upstream's handshake, then
            // a task of its own relays the messages.
            Ok(route) if cx.websocket.is_some() => {
                let handshake = cx.websocket.take().expect("checked just above");
                match crate::websocket::open(self, cx, &route, req, handshake).await {
                    Ok(response) => {
                        cx.from_upstream = true;
                        response
                    }
                    Err(error) => render(cx, &error),
                }
            }
            // The proxy step, written here rather than in a function of its
            // own so the request is moved one time fewer.
            Ok(route) => {
                let forwarding = Forwarding {
                    request_id: cx.request_id.to_str().unwrap_or("-"),
                    path: cx.rewritten_path.as_deref(),
                    credentials: &mut cx.credentials,
                    retry_non_idempotent: route.retry_non_idempotent,
                };
                match route.upstream.forward(req, forwarding).await {
                    Ok(forwarded) => {
                        cx.upstream_time = Some(forwarded.elapsed);
                        cx.from_upstream = true;
                        forwarded.response
                    }
                    Err(error) => render(cx, &error),
                }
            }
            Err(Stop::Answer(response)) => {
                linger(cx, req, None);
                response
            }
            Err(Stop::Fail(error)) => {
                linger(cx, req, Some(&error));
                render(cx, &error)
            }
        };
        for stage in &self.response {
            stage.response(cx, &mut response);
        }
        if !cx.audit_waits.is_empty() {
            // Boxed: rare (refusals), and inline it would enlarge every
            // request's future.
            Box::pin(crate::audit::wait_durable(std::mem::take(&mut cx.audit_waits))).await;
        }
        response
    }

    async fn request_phases(
        &self,
        cx: &mut RequestCx,
        req: &mut Request<GatewayBody>,
    ) -> Result<Arc<Route>, Stop> {
        for stage in &self.early {
            settle!(stage.early(cx, req));
        }
        let route = self.router.route(cx, req).map_err(Stop::Fail)?;
        cx.route = Some(route.clone());
        for stage in &self.access {
            settle!(stage.access(cx, &route, req));
        }
        if cx.decision_only.is_some() {
            return Err(Stop::Answer(decision(cx)));
        }
        for stage in &self.body {
            settle!(stage.body(cx, &route, req));
        }
        for stage in &self.upstream_request {
            stage.upstream_request(cx, &route, req);
        }
        Ok(route)
    }

    /// Runs the rechecking access stages (authentication, authorisation)
    /// on a request again: `Ok` while its credential still admits it.
    pub async fn recheck(
        &self,
        cx: &mut RequestCx,
        route: &Route,
        req: &mut Request<GatewayBody>,
    ) -> Result<(), GatewayError> {
        for stage in &self.recheck {
            let result = match stage.access(cx, route, req) {
                Verdict::Ready(result) => result,
                Verdict::Pending(future) => future.await,
            };
            match result {
                Ok(Flow::Continue) => {}
                Ok(Flow::Respond(_)) => return Err(GatewayError::Forbidden("refused".into())),
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// The logging phase.
    pub fn log(&self, cx: &RequestCx, done: &Finished<'_>) {
        for stage in &self.logging {
            stage.logging(cx, done);
        }
    }
}

/// A forward-auth answer: allowed, with who the request is (the asking
/// proxy copies these headers onto the request it forwards).
fn decision(cx: &RequestCx) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::Empty);
    if let Some(principal) = &cx.principal {
        principal.write_headers(response.headers_mut());
    }
    response
}

/// An HTTP/1 request answered before its body was read may finish sending
/// it (see [`GatewayBody::linger`]), unless its framing cannot be trusted or
/// it waits for a `100 Continue` it will now never get.
fn linger(cx: &RequestCx, req: Request<GatewayBody>, error: Option<&GatewayError>) {
    let waits_for_continue = req
        .headers()
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if cx.version < Version::HTTP_2
        && !waits_for_continue
        && !error.is_some_and(GatewayError::closes_connection)
    {
        req.into_body().linger();
    }
}

/// The one place a request's error becomes its response.
fn render(cx: &RequestCx, error: &GatewayError) -> Response<GatewayBody> {
    if error.side() == ErrorSide::Internal {
        tracing::error!(request_id = cx.request_id(), %error, "request failed inside the gateway");
    }
    let mut response = problem_response(error, cx.request_id());
    // Only HTTP/1 has a connection to give up on; HTTP/2 refuses
    // connection-specific headers, and its framing is per stream.
    if error.closes_connection() && cx.version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str, Phases);

    impl Stage for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn phases(&self) -> Phases {
            self.1
        }
    }

    struct NoRoute;

    impl Router for NoRoute {
        fn route(&self, _: &mut RequestCx, _: &Request<GatewayBody>) -> Result<Arc<Route>, GatewayError> {
            Err(GatewayError::NotFound)
        }
    }

    #[test]
    fn each_phase_keeps_the_one_order() {
        let order: Vec<Arc<dyn Stage>> = vec![
            Arc::new(Named("a", Phases::EARLY.and(Phases::RESPONSE))),
            Arc::new(Named("b", Phases::ACCESS)),
            Arc::new(Named("c", Phases::EARLY.and(Phases::ACCESS))),
            Arc::new(Named("d", Phases::RESPONSE.and(Phases::LOGGING))),
        ];
        let pipeline = Pipeline::new(order, Box::new(NoRoute));
        let phases = pipeline.describe();
        assert_eq!(phases[0], ("early", vec!["a", "c"]));
        assert_eq!(phases[2], ("access", vec!["b", "c"]));
        assert_eq!(phases[5], ("response", vec!["a", "d"]));
        assert_eq!(phases[6], ("logging", vec!["d"]));
    }

    #[tokio::test]
    async fn a_refusal_still_passes_the_response_phase_and_closes_only_http1() {
        struct Stamp;
        impl Stage for Stamp {
            fn name(&self) -> &'static str {
                "stamp"
            }
            fn phases(&self) -> Phases {
                Phases::RESPONSE
            }
            fn response(&self, _: &RequestCx, resp: &mut Response<GatewayBody>) {
                resp.headers_mut()
                    .insert("x-stamp", HeaderValue::from_static("1"));
            }
        }
        struct Refuse;
        impl Stage for Refuse {
            fn name(&self) -> &'static str {
                "refuse"
            }
            fn phases(&self) -> Phases {
                Phases::EARLY
            }
            fn early<'a>(&'a self, _: &'a mut RequestCx, _: &'a mut Request<GatewayBody>) -> Verdict<'a> {
                Verdict::Ready(Err(GatewayError::malformed("no")))
            }
        }
        let pipeline = Arc::new(Pipeline::new(
            vec![Arc::new(Refuse), Arc::new(Stamp)],
            Box::new(NoRoute),
        ));
        for (version, closes) in [(Version::HTTP_11, true), (Version::HTTP_2, false)] {
            let mut cx = RequestCx::for_test();
            cx.version = version;
            let req = Request::new(GatewayBody::Empty);
            let resp = pipeline.run(&mut cx, req).await;
            assert_eq!(resp.status(), 400);
            assert_eq!(resp.headers()["x-stamp"], "1");
            assert_eq!(
                resp.headers().contains_key(http::header::CONNECTION),
                closes,
                "{version:?}"
            );
        }
    }
}
