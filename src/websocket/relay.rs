//! Relaying one WebSocket connection's messages, both ways, in one task.
//!
//! - **Backpressure.** Each direction holds at most one message: the next
//!   one is read from a side only after the last one it sent was written
//!   out (flushed) to the other. A slow reader slows its writer down to its
//!   own pace, through TCP, and nothing queues in between.
//! - **Limits on what the client sends.** Each message passes the route's
//!   message rate limits (the shared rate-limit backends, so several
//!   instances count together) and, for text, its JSON validation. A
//!   violation closes with 1008, or with `on_violation = "drop"` the
//!   message is dropped and the client told in a text frame. A message
//!   larger than `max_message` (either way) closes with 1009.
//! - **Time.** `idle_timeout` (no message either way), `max_duration`, a
//!   ping every `ping_interval` that the client must answer before the
//!   next, the JWT's `exp`, and every `recheck_interval` the route's
//!   authentication and authorisation run again on the handshake (a
//!   revoked session, a removed key), each `expiry_grace` late at most.
//! - **Closing.** A close frame from either side is passed on with its
//!   code and reason; a close the gateway decides sends the client the
//!   reason's code and the upstream 1001 (going away). After the first
//!   close, both sides get five seconds to finish the handshake.
//!
//! Control frames are per hop: tungstenite answers pings on each side, and
//! the gateway pings the client itself.

use std::future::poll_fn;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::SplitSink;
use futures_util::{Sink, StreamExt};
use http::{HeaderMap, Method, Request, Uri, Version};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::time::Instant as TokioInstant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::registry::Place;
use crate::audit::{Event, Severity};
use crate::body::GatewayBody;
use crate::connection::Connection;
use crate::metrics::{Direction, WebSocketMetrics};
use crate::pipeline::{Pipeline, RequestCx, Route};
use crate::principal::Principal;
use crate::ratelimit::{Counted, Subject};
use crate::stage::websocket::{Handshake, OnViolation, WebSocketPolicy};

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// How long both sides get to finish closing after the first close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Why a connection ended (the `reason` label of the closes metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Client,
    Upstream,
    Idle,
    MaxDuration,
    PingTimeout,
    RateLimit,
    Invalid,
    TooBig,
    Expired,
    Revoked,
    Shutdown,
    /// A reload removed the route.
    RouteRemoved,
    ClientError,
    UpstreamError,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Client => "client",
            Ended::Upstream => "upstream",
            Ended::Idle => "idle",
            Ended::MaxDuration => "max_duration",
            Ended::PingTimeout => "ping_timeout",
            Ended::RateLimit => "rate_limit",
            Ended::Invalid => "invalid_message",
            Ended::TooBig => "message_too_big",
            Ended::Expired => "credential_expired",
            Ended::Revoked => "credential_revoked",
            Ended::Shutdown => "shutdown",
            Ended::RouteRemoved => "route_removed",
            Ended::ClientError => "client_error",
            Ended::UpstreamError => "upstream_error",
        }
    }

    /// The close frame the client gets when the gateway ends the connection.
    fn client_frame(self) -> CloseFrame {
        let (code, reason) = match self {
            Ended::Idle => (CloseCode::Away, "idle timeout"),
            Ended::MaxDuration => (CloseCode::Policy, "the connection reached its maximum duration"),
            Ended::PingTimeout => (CloseCode::Away, "no answer to ping"),
            Ended::RateLimit => (CloseCode::Policy, "message rate limit exceeded"),
            Ended::Invalid => (CloseCode::Policy, "message refused by validation"),
            Ended::TooBig => (CloseCode::Size, "message too big"),
            Ended::Expired => (CloseCode::Policy, "credential expired"),
            Ended::Revoked => (CloseCode::Policy, "credential no longer valid"),
            Ended::Shutdown => (CloseCode::Away, "gateway shutting down"),
            Ended::RouteRemoved => (CloseCode::Away, "the route was removed"),
            Ended::Client | Ended::ClientError => (CloseCode::Away, ""),
            Ended::Upstream | Ended::UpstreamError => (CloseCode::Error, "upstream connection failed"),
        };
        CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }
    }
}

/// The write side of one peer, holding at most one message of each kind.
struct Outbox {
    sink: SplitSink<Ws, Message>,
    /// A frame the gateway makes (ping, warning, close): goes first.
    control: Option<Message>,
    /// A message relayed from the other side.
    data: Option<Message>,
    /// Written into tungstenite, not yet flushed to the socket.
    unflushed: bool,
    /// The sink failed or was closed.
    dead: bool,
}

impl Outbox {
    fn new(sink: SplitSink<Ws, Message>) -> Outbox {
        Outbox {
            sink,
            control: None,
            data: None,
            unflushed: false,
            dead: false,
        }
    }

    /// Whether a message from the other side can be taken now.
    fn has_room(&self) -> bool {
        self.data.is_none() && !self.unflushed && !self.dead
    }

    fn busy(&self) -> bool {
        !self.dead && (self.control.is_some() || self.data.is_some() || self.unflushed)
    }

    /// Writes what is queued and flushes it. Cancel-safe: a message is
    /// taken out of its slot only once tungstenite has it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        loop {
            let next = if self.control.is_some() {
                &mut self.control
            } else {
                &mut self.data
            };
            let Some(message) = next.take() else { break };
            match Pin::new(&mut self.sink).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    *next = Some(message);
                    return Poll::Pending;
                }
            }
            Pin::new(&mut self.sink).start_send(message)?;
            self.unflushed = true;
        }
        if self.unflushed {
            ready!(Pin::new(&mut self.sink).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// One connection, from the handshake's facts.
pub struct Session {
    pipeline: Arc<Pipeline>,
    route: Arc<Route>,
    policy: Arc<WebSocketPolicy>,
    connection: Arc<Connection>,
    client_ip: IpAddr,
    request_id: String,
    principal: Option<Principal>,
    recheck: Option<(Uri, HeaderMap)>,
    token_expiry: Option<u64>,
    /// What each message limit counts by.
    subjects: Vec<Subject>,
    metrics: WebSocketMetrics,
    _place: Place,
}

/// Seconds since the epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Session {
    pub fn new(
        pipeline: Arc<Pipeline>,
        route: Arc<Route>,
        cx: &RequestCx,
        hs: Box<Handshake>,
        place: Place,
        token_expiry: Option<u64>,
    ) -> Session {
        let policy = hs.policy.clone();
        let principal = cx.principal.clone();
        let subjects = policy
            .messages
            .iter()
            .map(|limit| {
                crate::stage::rate_limit::subject_for(
                    limit,
                    cx.client_ip,
                    principal.as_ref(),
                    None,
                    policy.ipv6_prefix,
                )
            })
            .collect();
        let metrics = policy.metrics.clone();
        Session {
            pipeline,
            route,
            connection: cx.connection.clone(),
            client_ip: cx.client_ip,
            request_id: cx.request_id().to_string(),
            principal,
            recheck: hs.recheck,
            token_expiry,
            subjects,
            metrics,
            policy,
            _place: place,
        }
    }

    /// The client went away before its socket was handed over.
    pub fn never_opened(&self) {
        self.metrics.closed(Ended::ClientError.as_str());
        self.audit_closed(Ended::ClientError, Duration::ZERO, [0, 0]);
    }

    /// Relays until the connection ends, then records how it ended.
    pub async fn run(self, client_io: Upgraded, upstream_io: Upgraded, config: WebSocketConfig) {
        let client =
            WebSocketStream::from_raw_socket(TokioIo::new(client_io), Role::Server, Some(config)).await;
        let upstream =
            WebSocketStream::from_raw_socket(TokioIo::new(upstream_io), Role::Client, Some(config)).await;
        self.metrics.active.inc();
        let started = Instant::now();
        let (ended, counts) = self.relay(client, upstream).await;
        self.metrics.active.dec();
        self.metrics.closed(ended.as_str());
        self.audit_closed(ended, started.elapsed(), counts);
    }

    fn audit_closed(&self, ended: Ended, lasted: Duration, counts: [u64; 2]) {
        let mut event = Event::new("ws.closed", Severity::Info)
            .detail("reason", ended.as_str())
            .detail("duration_ms", lasted.as_millis() as u64)
            .detail("messages_from_client", counts[0])
            .detail("messages_to_client", counts[1])
            .client_ip(self.client_ip);
        event.request_id = Some(self.request_id.clone());
        event.route = Some(self.route.id.to_string());
        if let Some(p) = &self.principal {
            event = event.consumer(p.name());
        }
        self.policy.services.audit.emit(event);
    }

    /// Whether a message from the client passes the route's message limits.
    async fn within_limits(&self) -> bool {
        // On the stack: this runs for every message.
        let limits: smallvec::SmallVec<[&crate::ratelimit::Limit; 4]> = self.policy.messages.iter().collect();
        if limits.is_empty() {
            return true;
        }
        let limiters = &self.policy.services.limiters;
        let counted = match limiters.check_now(&limits, &self.subjects) {
            Some(counted) => counted,
            None => limiters.check_shared(&limits, &self.subjects).await,
        };
        match counted {
            Counted::Checks(checks) => checks.iter().all(|c| c.allowed),
            Counted::Unlimited => true,
            Counted::Unavailable => false,
        }
    }

    /// Whether a text message passes the route's validation.
    fn valid(&self, text: &str) -> bool {
        let Some(checks) = &self.policy.checks else {
            return true;
        };
        let Ok(doc) = serde_json::from_str::<serde_json::Value>(text) else {
            return false;
        };
        let mut errors = Vec::new();
        checks.check_shape(&doc, None, &mut errors);
        if errors.is_empty() {
            checks.check_rules(&doc, &mut errors);
        }
        errors.is_empty()
    }

    /// Runs the route's authentication and authorisation on the handshake
    /// again, with the policy serving now (a reload may have rotated a key
    /// or changed the route's roles).
    async fn recheck(&self) -> Recheck {
        let Some((uri, headers)) = &self.recheck else {
            return Recheck::Admitted;
        };
        let (pipeline, route) = match self.policy.services.registry.current_policy() {
            Some(policy) => match policy.routes.iter().find(|r| r.id == self.route.id) {
                Some(route) => (policy.pipeline.clone(), route.clone()),
                None => return Recheck::RouteGone,
            },
            None => (self.pipeline.clone(), self.route.clone()),
        };
        let mut cx = RequestCx::new(self.connection.clone(), Version::HTTP_11);
        cx.client_ip = self.client_ip;
        cx.route = Some(route.clone());
        if let Ok(id) = http::HeaderValue::try_from(self.request_id.as_str()) {
            cx.request_id = id;
        }
        let mut req = Request::new(GatewayBody::Empty);
        *req.method_mut() = Method::GET;
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = headers.clone();
        match pipeline.recheck(&mut cx, &route, &mut req).await {
            Ok(()) => Recheck::Admitted,
            // Refused: the credential no longer admits the connection.
            Err(e) if e.status().is_client_error() => Recheck::Refused,
            // The store or Redis is down: try again at the next recheck
            // rather than closing every connection at once.
            Err(e) => {
                tracing::warn!(request_id = self.request_id, error = %e, "WebSocket recheck could not decide");
                Recheck::Undecided
            }
        }
    }

    /// What to do with a message from the client: pass it, or the
    /// violation it is.
    async fn admit(&self, message: &Message) -> Result<(), Ended> {
        if !self.within_limits().await {
            return Err(Ended::RateLimit);
        }
        match message {
            Message::Binary(_) if self.policy.text_only => Err(Ended::Invalid),
            Message::Text(text) if !self.valid(text) => Err(Ended::Invalid),
            _ => Ok(()),
        }
    }

    async fn relay(&self, client: Ws, upstream: Ws) -> (Ended, [u64; 2]) {
        let (client_sink, mut from_client) = client.split();
        let (upstream_sink, mut from_upstream) = upstream.split();
        let mut state = Relay {
            to_client: Outbox::new(client_sink),
            to_upstream: Outbox::new(upstream_sink),
            closing: None,
            client_open: true,
            upstream_open: true,
            counts: [0; 2],
            clock: Deadlines::new(&self.policy, self.token_expiry, self.recheck.is_some()),
        };
        let timer = tokio::time::sleep_until(state.clock.next());
        tokio::pin!(timer);
        let mut shutdown = self.policy.services.registry.shutdown_signal();
        if *shutdown.borrow_and_update() {
            state.begin_close(Ended::Shutdown);
        }
        while state.client_open || state.upstream_open {
            let closing = state.closing.is_some();
            // Deadlines first: a client that always has something to read
            // (pongs, say) must not starve them.
            tokio::select! {
                biased;
                () = &mut timer => {
                    if state.closing.is_some_and(|(_, by)| TokioInstant::now() >= by) {
                        break;
                    }
                    match state.clock.due(TokioInstant::now()) {
                        Some(Due::Close(ended)) => state.begin_close(ended),
                        Some(Due::Ping) => state.ping(),
                        Some(Due::Recheck) => match self.recheck().await {
                            Recheck::Refused => state.clock.revoked(&self.policy),
                            Recheck::RouteGone => state.begin_close(Ended::RouteRemoved),
                            Recheck::Admitted | Recheck::Undecided => {}
                        },
                        _ => {}
                    }
                }
                _ = shutdown.changed(), if !closing => state.begin_close(Ended::Shutdown),
                result = poll_fn(|cx| state.to_client.poll_send(cx)), if state.to_client.busy() => {
                    if result.is_err() {
                        state.client_gone();
                    }
                }
                result = poll_fn(|cx| state.to_upstream.poll_send(cx)), if state.to_upstream.busy() => {
                    if result.is_err() {
                        state.upstream_gone();
                    }
                }
                message = from_client.next(), if state.client_open && (state.to_upstream.has_room() || closing) => {
                    self.on_client_message(&mut state, message).await;
                }
                message = from_upstream.next(), if state.upstream_open && (state.to_client.has_room() || closing) => {
                    self.on_upstream_message(&mut state, message);
                }
            }
            // One timer for every deadline; it moves only when one is due
            // or closing starts, never per message.
            let next = state.next_deadline();
            if next != timer.deadline() {
                timer.as_mut().reset(next);
            }
        }
        (
            state.closing.map(|(ended, _)| ended).unwrap_or(Ended::Client),
            state.counts,
        )
    }

    async fn on_client_message(&self, state: &mut Relay, message: Option<Result<Message, WsError>>) {
        match message {
            Some(Ok(Message::Close(frame))) => {
                // tungstenite answers the client's close; the upstream gets its code.
                if state.closing.is_none() {
                    state.closing = Some((Ended::Client, TokioInstant::now() + CLOSE_WAIT));
                    state.to_upstream.control = Some(Message::Close(frame));
                }
            }
            Some(Ok(Message::Pong(_))) => state.clock.awaiting_pong = false,
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) if state.closing.is_none() => {
                state.clock.heard_from_client();
                match self.admit(&message).await {
                    Ok(()) => {
                        state.counts[0] += 1;
                        self.metrics.message(Direction::ToUpstream, message.len());
                        state.to_upstream.data = Some(message);
                    }
                    Err(violation) if self.policy.on_violation == OnViolation::Drop => {
                        if state.to_client.control.is_none() {
                            state.to_client.control = Some(warning(violation));
                        }
                    }
                    Err(violation) => state.begin_close(violation),
                }
            }
            // Pings (tungstenite answers them), and anything after the first close.
            Some(Ok(_)) => {}
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                state.begin_close(Ended::TooBig);
            }
            Some(Err(_)) | None => state.client_gone(),
        }
    }

    fn on_upstream_message(&self, state: &mut Relay, message: Option<Result<Message, WsError>>) {
        match message {
            Some(Ok(Message::Close(frame))) => {
                if state.closing.is_none() {
                    state.closing = Some((Ended::Upstream, TokioInstant::now() + CLOSE_WAIT));
                    state.to_client.control = Some(Message::Close(frame));
                }
            }
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) if state.closing.is_none() => {
                state.clock.heard_from_upstream();
                state.counts[1] += 1;
                self.metrics.message(Direction::ToClient, message.len());
                state.to_client.data = Some(message);
            }
            Some(Ok(_)) => {}
            Some(Err(WsError::Capacity(_))) => {
                state.begin_close(Ended::UpstreamError);
                state.to_upstream.control = Some(Message::Close(Some(CloseFrame {
                    code: CloseCode::Size,
                    reason: Utf8Bytes::from_static("message too big"),
                })));
            }
            Some(Err(_)) | None => state.upstream_gone(),
        }
    }
}

/// One connection's relaying state, both directions.
struct Relay {
    to_client: Outbox,
    to_upstream: Outbox,
    /// Set when the first close frame passes: the reason, and when to stop
    /// waiting for the other side's.
    closing: Option<(Ended, TokioInstant)>,
    client_open: bool,
    upstream_open: bool,
    /// Messages relayed from the client and to it.
    counts: [u64; 2],
    clock: Deadlines,
}

impl Relay {
    /// Starts closing (once): the client gets the reason's close frame, the
    /// upstream 1001, except the side whose close or failure this is.
    fn begin_close(&mut self, ended: Ended) {
        if self.closing.is_some() {
            return;
        }
        self.closing = Some((ended, TokioInstant::now() + CLOSE_WAIT));
        self.to_client.data = None;
        self.to_upstream.data = None;
        if !matches!(ended, Ended::Client | Ended::ClientError) {
            self.to_client.control = Some(Message::Close(Some(ended.client_frame())));
        }
        if !matches!(ended, Ended::Upstream | Ended::UpstreamError) {
            self.to_upstream.control = Some(Message::Close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: Utf8Bytes::from_static(""),
            })));
        }
    }

    fn client_gone(&mut self) {
        self.client_open = false;
        self.to_client.dead = true;
        self.begin_close(Ended::ClientError);
    }

    fn upstream_gone(&mut self) {
        self.upstream_open = false;
        self.to_upstream.dead = true;
        self.begin_close(Ended::UpstreamError);
    }

    /// Pings the client, unless no answer came to the last ping.
    fn ping(&mut self) {
        if self.clock.awaiting_pong {
            self.begin_close(Ended::PingTimeout);
        } else if self.to_client.control.is_none() {
            self.to_client.control = Some(Message::Ping(bytes::Bytes::from_static(b"portcullis")));
            self.clock.awaiting_pong = true;
        }
    }

    fn next_deadline(&self) -> TokioInstant {
        match self.closing {
            Some((_, by)) => by,
            None => self.clock.next(),
        }
    }
}

/// What a recheck of the handshake's credential found.
enum Recheck {
    Admitted,
    /// 401 or 403 now.
    Refused,
    /// The store or Redis could not answer.
    Undecided,
    /// A reload removed the route.
    RouteGone,
}

/// What a connection's one timer found due.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    Close(Ended),
    Ping,
    Recheck,
}

/// Every deadline of a connection, behind one timer. Messages only note
/// when they passed; the idle deadline is worked out when the timer fires.
struct Deadlines {
    idle_timeout: Duration,
    last_message: TokioInstant,
    /// When idleness is checked next (at most `idle_timeout` after the last
    /// message, often sooner).
    idle_check: TokioInstant,
    ends_at: TokioInstant,
    /// The credential's expiry, grace added.
    expires_at: Option<TokioInstant>,
    ping_every: Option<Duration>,
    next_ping: Option<TokioInstant>,
    awaiting_pong: bool,
    recheck_every: Duration,
    next_recheck: Option<TokioInstant>,
    /// A recheck failed: the connection ends here (grace added).
    revoked_at: Option<TokioInstant>,
}

impl Deadlines {
    fn new(policy: &WebSocketPolicy, token_expiry: Option<u64>, rechecks: bool) -> Deadlines {
        let now = TokioInstant::now();
        Deadlines {
            idle_timeout: policy.idle_timeout,
            last_message: now,
            idle_check: now + policy.idle_timeout,
            ends_at: now + policy.max_duration,
            expires_at: token_expiry
                .map(|exp| now + Duration::from_secs(exp.saturating_sub(unix_now())) + policy.expiry_grace),
            ping_every: policy.ping_interval,
            next_ping: policy.ping_interval.map(|every| now + every),
            awaiting_pong: false,
            recheck_every: policy.recheck_interval,
            next_recheck: rechecks.then(|| now + policy.recheck_interval),
            revoked_at: None,
        }
    }

    fn heard_from_client(&mut self) {
        self.last_message = TokioInstant::now();
        // Any message shows the client is alive, as a pong would.
        self.awaiting_pong = false;
    }

    fn heard_from_upstream(&mut self) {
        self.last_message = TokioInstant::now();
    }

    fn revoked(&mut self, policy: &WebSocketPolicy) {
        self.revoked_at = Some(TokioInstant::now() + policy.expiry_grace);
        self.next_recheck = None;
    }

    fn next(&self) -> TokioInstant {
        [
            Some(self.idle_check),
            Some(self.ends_at),
            self.expires_at,
            self.next_ping,
            self.next_recheck,
            self.revoked_at,
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("the idle check is always there")
    }

    /// What is due at `now`, the most final first; moves the deadlines
    /// that repeat.
    fn due(&mut self, now: TokioInstant) -> Option<Due> {
        if now >= self.ends_at {
            return Some(Due::Close(Ended::MaxDuration));
        }
        if self.expires_at.is_some_and(|at| now >= at) {
            return Some(Due::Close(Ended::Expired));
        }
        if self.revoked_at.is_some_and(|at| now >= at) {
            return Some(Due::Close(Ended::Revoked));
        }
        if now >= self.idle_check {
            let idle_until = self.last_message + self.idle_timeout;
            if now >= idle_until {
                return Some(Due::Close(Ended::Idle));
            }
            self.idle_check = idle_until;
        }
        if let (Some(at), Some(every)) = (self.next_ping, self.ping_every)
            && now >= at
        {
            self.next_ping = Some(now + every);
            return Some(Due::Ping);
        }
        if let Some(at) = self.next_recheck
            && now >= at
        {
            self.next_recheck = Some(now + self.recheck_every);
            return Some(Due::Recheck);
        }
        None
    }
}

/// The text frame that tells a client its message was dropped.
fn warning(violation: Ended) -> Message {
    let reason = match violation {
        Ended::RateLimit => "rate_limited",
        _ => "invalid_message",
    };
    Message::Text(format!(r#"{{"portcullis":"message_dropped","reason":"{reason}"}}"#).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadlines(idle: u64, ping: Option<u64>, recheck: bool) -> Deadlines {
        let now = TokioInstant::now();
        Deadlines {
            idle_timeout: Duration::from_secs(idle),
            last_message: now,
            idle_check: now + Duration::from_secs(idle),
            ends_at: now + Duration::from_secs(3600),
            expires_at: None,
            ping_every: ping.map(Duration::from_secs),
            next_ping: ping.map(|p| now + Duration::from_secs(p)),
            awaiting_pong: false,
            recheck_every: Duration::from_secs(30),
            next_recheck: recheck.then(|| now + Duration::from_secs(30)),
            revoked_at: None,
        }
    }

    #[test]
    fn a_message_moves_the_idle_deadline_only_when_the_timer_fires() {
        let mut d = deadlines(10, None, false);
        let start = d.last_message;
        assert_eq!(d.next(), start + Duration::from_secs(10));
        // A message at +4 s: the timer still fires at +10 s, finds the
        // connection busy, and moves on to +14 s.
        d.last_message = start + Duration::from_secs(4);
        assert_eq!(d.next(), start + Duration::from_secs(10));
        assert_eq!(d.due(start + Duration::from_secs(10)), None);
        assert_eq!(d.next(), start + Duration::from_secs(14));
        assert_eq!(
            d.due(start + Duration::from_secs(14)),
            Some(Due::Close(Ended::Idle))
        );
    }

    #[test]
    fn the_final_deadlines_come_before_pings_and_rechecks() {
        let mut d = deadlines(3600, Some(30), true);
        let start = d.last_message;
        d.expires_at = Some(start + Duration::from_secs(30));
        assert_eq!(d.next(), start + Duration::from_secs(30));
        assert_eq!(
            d.due(start + Duration::from_secs(30)),
            Some(Due::Close(Ended::Expired))
        );
        let mut d = deadlines(3600, Some(30), true);
        let start = d.last_message;
        assert_eq!(d.due(start + Duration::from_secs(30)), Some(Due::Ping));
        // Both were due: the recheck's turn comes on the next firing.
        assert_eq!(d.due(start + Duration::from_secs(30)), Some(Due::Recheck));
        assert_eq!(d.due(start + Duration::from_secs(31)), None);
        d.revoked_at = Some(start + Duration::from_secs(40));
        assert_eq!(
            d.due(start + Duration::from_secs(41)),
            Some(Due::Close(Ended::Revoked))
        );
        assert_eq!(
            d.due(start + Duration::from_secs(3601)),
            Some(Due::Close(Ended::MaxDuration))
        );
    }
}
