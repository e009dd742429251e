//! The typed per-request context: each field is filled by the stage (or
//! pipeline step) named beside it, and read by the ones after.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Version};

use super::Route;
use crate::connection::Connection;
use crate::principal::Principal;
use crate::ratelimit::LimitHeaders;
use crate::upstream::Credentials;

/// How a forward-auth decision is answered (see `stage::forward_auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionFor {
    /// Traefik, Envoy: a 302 passes through to the browser.
    Redirecting,
    /// nginx: only 2xx, 401 and 403 mean something to `auth_request`.
    Nginx,
}

/// Everything known about one request as it passes the phases.
pub struct RequestCx {
    pub started: Instant,
    /// The client connection.
    pub connection: Arc<Connection>,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The request's HTTP version.
    pub version: Version,
    /// request_id stage.
    pub request_id: HeaderValue,
    /// client_ip stage: the peer, or the first untrusted `X-Forwarded-For` hop.
    pub client_ip: IpAddr,
    /// client_ip stage: whether the peer is a trusted proxy.
    pub peer_trusted: bool,
    /// client_ip stage: the client's request came over HTTPS (a trusted
    /// proxy says so in `X-Forwarded-Proto`).
    pub https: bool,
    /// cors stage: the request's `Origin` (not a preflight's).
    pub cors_origin: Option<HeaderValue>,
    /// The route phase.
    pub route: Option<Arc<Route>>,
    /// The route phase: the normalised, encoded path when it differs from
    /// the request's own (the upstream is sent this one).
    pub rewritten_path: Option<String>,
    /// csrf stage: the token a safe request hands its page.
    pub csrf: Option<Box<crate::stage::csrf::CsrfIssue>>,
    /// csrf stage: a form whose token the body phase must find.
    pub csrf_pending: Option<Box<crate::stage::csrf::PendingForm>>,
    /// websocket stage: the handshake of a WebSocket route, for the proxy.
    pub websocket: Option<Box<crate::stage::websocket::Handshake>>,
    /// authn stage: who the request authenticated as.
    pub principal: Option<Principal>,
    /// forward_auth stage: answer with the access decision (200 and the
    /// identity headers) instead of proxying.
    pub decision_only: Option<DecisionFor>,
    /// authn stage: where a browser refused on a session route is sent to
    /// log in (it is a page load, so it can follow a redirect).
    pub login_redirect: Option<HeaderValue>,
    /// authn stage and the proxy: credentials this request carried, which
    /// never appear in what the gateway logs of the upstream's answer.
    pub credentials: Credentials,
    /// rate_limit stage: the headers describing the tightest limit.
    pub rate_limit_headers: Option<Box<LimitHeaders>>,
    /// The proxy: time from sending upstream to the response head.
    pub upstream_time: Option<Duration>,
    /// The proxy: the response came from the upstream (not the gateway).
    pub from_upstream: bool,
    /// `[audit] sync` events this request emitted: it is answered once
    /// they are written.
    pub audit_waits: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl RequestCx {
    pub fn new(connection: Arc<Connection>, version: Version) -> Self {
        let peer = connection.peer;
        RequestCx {
            started: Instant::now(),
            connection,
            peer,
            version,
            request_id: HeaderValue::from_static("-"),
            client_ip: peer.ip(),
            peer_trusted: false,
            https: false,
            cors_origin: None,
            route: None,
            rewritten_path: None,
            csrf: None,
            csrf_pending: None,
            websocket: None,
            principal: None,
            login_redirect: None,
            decision_only: None,
            credentials: Credentials::default(),
            rate_limit_headers: None,
            upstream_time: None,
            from_upstream: false,
            audit_waits: Vec::new(),
        }
    }

    /// A context for unit tests of stage decisions: an HTTP/1.1 request
    /// from 127.0.0.1.
    #[cfg(test)]
    pub fn for_test() -> Self {
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("a valid address");
        RequestCx::new(Arc::new(Connection::new(peer)), Version::HTTP_11)
    }

    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }
}
