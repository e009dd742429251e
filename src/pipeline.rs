//! The request pipeline: one [`Stage`] trait and an ordered list of stages.
//!
//! Each stage reads the immutable [`Policy`] snapshot held in the
//! [`RequestCx`], fills in its own part of the context, and either lets the
//! request go on ([`Flow::Continue`]) or answers it ([`Flow::Respond`] or an
//! error). On the way back every stage that ran sees the response, in
//! reverse order, whether it came from the upstream or from a stage.
//!
//! Most stages decide without waiting, so [`Stage::on_request`] returns a
//! [`Verdict`] that is either ready or a future; only a stage that really
//! waits (a store lookup, a Redis call) pays for boxing one.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response};

use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::policy::Policy;
use crate::stage::route::RouteIndex;

/// What a stage decided.
pub enum Flow {
    /// Pass the request to the next stage.
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

impl From<StageResult> for Verdict<'_> {
    fn from(result: StageResult) -> Self {
        Verdict::Ready(result)
    }
}

/// One step of the pipeline.
pub trait Stage: Send + Sync {
    /// Short name, used in logs and docs.
    fn name(&self) -> &'static str;

    /// Looks at (and may change) the request on its way to the upstream.
    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request<GatewayBody>) -> Verdict<'a>;

    /// Looks at (and may change) the response on its way to the client.
    fn on_response(&self, _cx: &RequestCx, _resp: &mut Response<GatewayBody>) {}
}

/// What is known about a client connection, shared by its requests.
#[derive(Debug)]
pub struct Connection {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// How each HTTP/1 request head was framed on the wire.
    pub heads: Arc<crate::stage::framing::inspect::HeadLog>,
    opened: Instant,
    /// Requests started and not yet finished.
    in_flight: AtomicUsize,
    /// When a request last started or finished, in ms since `opened`;
    /// `u64::MAX` until the first request.
    last_activity_ms: AtomicU64,
}

/// What the connection's idle watchdog should do.
pub enum Idleness {
    /// Check again at this instant.
    CheckAt(Instant),
    /// Nothing has happened for too long: close the connection.
    Expired,
}

impl Connection {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        Connection {
            peer,
            tls,
            heads: Default::default(),
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_activity_ms: AtomicU64::new(u64::MAX),
        }
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    /// A connection must start its first request within `first` of opening,
    /// and may sit without a request for `idle` after that; one with a
    /// request in flight is never idle.
    pub fn idleness(&self, first: Duration, idle: Duration) -> Idleness {
        let now = Instant::now();
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Idleness::CheckAt(now + idle);
        }
        let deadline = match self.last_activity_ms.load(Ordering::Relaxed) {
            u64::MAX => self.opened + first,
            ms => self.opened + Duration::from_millis(ms) + idle,
        };
        if now >= deadline {
            Idleness::Expired
        } else {
            Idleness::CheckAt(deadline)
        }
    }
}

/// Everything known about one request as it passes the stages. Each field
/// is filled by the stage named beside it.
pub struct RequestCx {
    /// The policy this request runs under, fixed at its start.
    pub policy: Arc<Policy>,
    pub started: Instant,
    /// The client connection.
    pub connection: Arc<Connection>,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// request_id stage.
    pub request_id: HeaderValue,
    /// client_ip stage: the peer, or the first untrusted `X-Forwarded-For` hop.
    pub client_ip: IpAddr,
    /// client_ip stage: whether the peer is a trusted proxy.
    pub peer_trusted: bool,
    /// route stage.
    pub route: Option<RouteIndex>,
    /// route stage: the normalised, encoded path when it differs from the
    /// request's own (the upstream is sent this one).
    pub rewritten_path: Option<String>,
    /// authn stage: who the request authenticated as.
    pub principal: Option<crate::stage::authn::Principal>,
    /// rate_limit stage: the headers describing the tightest limit.
    pub rate_limit_headers: Option<Box<crate::stage::rate_limit::LimitHeaders>>,
    /// cors stage: the allowed origin of a cross-origin request.
    pub cors_origin: Option<HeaderValue>,
    /// proxy: time from sending upstream to the response head.
    pub upstream_time: Option<std::time::Duration>,
}

impl RequestCx {
    pub fn new(policy: Arc<Policy>, connection: Arc<Connection>) -> Self {
        let (peer, tls) = (connection.peer, connection.tls);
        RequestCx {
            policy,
            started: Instant::now(),
            connection,
            peer,
            tls,
            request_id: HeaderValue::from_static("-"),
            client_ip: peer.ip(),
            peer_trusted: false,
            route: None,
            rewritten_path: None,
            cors_origin: None,
            principal: None,
            rate_limit_headers: None,
            upstream_time: None,
        }
    }

    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// The matched route, once the route stage has run.
    pub fn route(&self) -> Option<&crate::stage::route::Route> {
        self.route.map(|i| &self.policy.routes[i])
    }
}

/// The ordered stages of a policy.
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
}

/// How the request phase ended.
pub enum Outcome {
    /// Every stage passed: forward to the upstream.
    Forward,
    /// A stage answered, or failed with an error to render.
    Answered(Response<GatewayBody>),
    Failed(GatewayError),
}

impl Pipeline {
    pub fn new(stages: Vec<Box<dyn Stage>>) -> Self {
        Pipeline { stages }
    }

    pub fn stage_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    /// Runs the request phase; returns how it ended and how many stages ran
    /// (those see the response in [`Pipeline::respond`]).
    pub async fn request(&self, cx: &mut RequestCx, req: &mut Request<GatewayBody>) -> (Outcome, usize) {
        for (i, stage) in self.stages.iter().enumerate() {
            let result = match stage.on_request(cx, req) {
                Verdict::Ready(result) => result,
                Verdict::Pending(future) => future.await,
            };
            match result {
                Ok(Flow::Continue) => {}
                Ok(Flow::Respond(response)) => return (Outcome::Answered(response), i + 1),
                Err(error) => return (Outcome::Failed(error), i + 1),
            }
        }
        (Outcome::Forward, self.stages.len())
    }

    /// Runs the response phase of the first `ran` stages, last first.
    pub fn respond(&self, ran: usize, cx: &RequestCx, resp: &mut Response<GatewayBody>) {
        for stage in self.stages[..ran].iter().rev() {
            stage.on_response(cx, resp);
        }
    }
}
