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
use tokio::time::{Instant as TokioInstant, sleep_until};
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
        let metrics = policy.services.metrics.for_websocket(&route.id);
        Session {
            pipeline,
            route,
            connection: cx.connection.clone(),
            client_ip: cx.client_ip,
            request_id: cx.request_id().to_string(),
            principal,
            recheck: hs.recheck,
            token_expiry: hs.token_expiry,
            subjects,
            metrics,
            policy,
            _place: place,
        }
    }

    /// The client went away before its socket was handed over.
    pub fn never_opened(&self) {
        self.metrics.closed(Ended::ClientError.as_str());
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
        let mut event = Event::new("ws.closed", Severity::Info)
            .detail("reason", ended.as_str())
            .detail("duration_ms", started.elapsed().as_millis() as u64)
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
        let limits: Vec<&crate::ratelimit::Limit> = self.policy.messages.iter().collect();
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
    /// again: `false` once its credential no longer admits it.
    async fn still_admitted(&self) -> bool {
        let Some((uri, headers)) = &self.recheck else {
            return true;
        };
        let mut cx = RequestCx::new(self.connection.clone(), Version::HTTP_11);
        cx.client_ip = self.client_ip;
        cx.route = Some(self.route.clone());
        if let Ok(id) = http::HeaderValue::try_from(self.request_id.as_str()) {
            cx.request_id = id;
        }
        let mut req = Request::new(GatewayBody::Empty);
        *req.method_mut() = Method::GET;
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = headers.clone();
        self.pipeline
            .recheck(&mut cx, &self.route, &mut req)
            .await
            .is_ok()
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
        let policy = &self.policy;
        let (client_sink, mut from_client) = client.split();
        let (upstream_sink, mut from_upstream) = upstream.split();
        let mut to_client = Outbox::new(client_sink);
        let mut to_upstream = Outbox::new(upstream_sink);
        let mut counts = [0u64; 2];
        let now = TokioInstant::now();
        let idle = sleep_until(now + policy.idle_timeout);
        tokio::pin!(idle);
        let ends_at = now + policy.max_duration;
        let expires_at = self.token_expiry.map(|exp| {
            let left = Duration::from_secs(exp.saturating_sub(unix_now()));
            now + left + policy.expiry_grace
        });
        let far = now + Duration::from_secs(365 * 24 * 3600);
        let ping_every = policy
            .ping_interval
            .unwrap_or(Duration::from_secs(365 * 24 * 3600));
        let mut next_ping = now + ping_every;
        let mut awaiting_pong = false;
        let mut next_recheck = if self.recheck.is_some() {
            now + policy.recheck_interval
        } else {
            far
        };
        let mut revoked_at: Option<TokioInstant> = None;
        let mut shutdown = policy.services.registry.shutdown_signal();
        // Set when the first close frame passes: the reason, and when to stop waiting.
        let mut closing: Option<(Ended, TokioInstant)> = None;
        let mut client_open = true;
        let mut upstream_open = true;

        loop {
            if !client_open && !upstream_open {
                break;
            }
            let wait_until = closing.map(|(_, at)| at).unwrap_or(far);
            tokio::select! {
                biased;
                result = poll_fn(|cx| to_client.poll_send(cx)), if to_client.busy() => {
                    if result.is_err() {
                        to_client.dead = true;
                        client_open = false;
                        begin_close(Ended::ClientError, &mut to_client, &mut to_upstream, &mut closing);
                    }
                }
                result = poll_fn(|cx| to_upstream.poll_send(cx)), if to_upstream.busy() => {
                    if result.is_err() {
                        to_upstream.dead = true;
                        upstream_open = false;
                        begin_close(Ended::UpstreamError, &mut to_client, &mut to_upstream, &mut closing);
                    }
                }
                message = from_client.next(), if client_open && (to_upstream.has_room() || closing.is_some()) => match message {
                    Some(Ok(Message::Close(frame))) => {
                        // tungstenite answers the client's close; the upstream gets its code.
                        if closing.is_none() {
                            closing = Some((Ended::Client, TokioInstant::now() + CLOSE_WAIT));
                            to_upstream.control = Some(Message::Close(frame));
                        }
                    }
                    Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                    Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) if closing.is_none() => {
                        awaiting_pong = false;
                        match self.admit(&message).await {
                            Ok(()) => {
                                counts[0] += 1;
                                self.metrics.message(Direction::ToUpstream, message.len());
                                idle.as_mut().reset(TokioInstant::now() + policy.idle_timeout);
                                to_upstream.data = Some(message);
                            }
                            Err(violation) if policy.on_violation == OnViolation::Drop => {
                                if to_client.control.is_none() {
                                    to_client.control = Some(warning(violation));
                                }
                            }
                            Err(violation) => begin_close(violation, &mut to_client, &mut to_upstream, &mut closing),
                        }
                    }
                    // Pings (tungstenite answers them), and anything after the first close.
                    Some(Ok(_)) => {}
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                        begin_close(Ended::TooBig, &mut to_client, &mut to_upstream, &mut closing);
                    }
                    Some(Err(_)) | None => {
                        client_open = false;
                        to_client.dead = true;
                        begin_close(Ended::ClientError, &mut to_client, &mut to_upstream, &mut closing);
                    }
                },
                message = from_upstream.next(), if upstream_open && (to_client.has_room() || closing.is_some()) => match message {
                    Some(Ok(Message::Close(frame))) => {
                        if closing.is_none() {
                            closing = Some((Ended::Upstream, TokioInstant::now() + CLOSE_WAIT));
                            to_client.control = Some(Message::Close(frame));
                        }
                    }
                    Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) if closing.is_none() => {
                        counts[1] += 1;
                        self.metrics.message(Direction::ToClient, message.len());
                        idle.as_mut().reset(TokioInstant::now() + policy.idle_timeout);
                        to_client.data = Some(message);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(WsError::Capacity(_))) => {
                        begin_close(Ended::UpstreamError, &mut to_client, &mut to_upstream, &mut closing);
                        to_upstream.control = Some(Message::Close(Some(CloseFrame {
                            code: CloseCode::Size,
                            reason: Utf8Bytes::from_static("message too big"),
                        })));
                    }
                    Some(Err(_)) | None => {
                        upstream_open = false;
                        to_upstream.dead = true;
                        begin_close(Ended::UpstreamError, &mut to_client, &mut to_upstream, &mut closing);
                    }
                },
                () = &mut idle, if closing.is_none() => begin_close(Ended::Idle, &mut to_client, &mut to_upstream, &mut closing),
                () = sleep_until(ends_at), if closing.is_none() => {
                    begin_close(Ended::MaxDuration, &mut to_client, &mut to_upstream, &mut closing);
                }
                () = sleep_until(expires_at.unwrap_or(far)), if closing.is_none() && expires_at.is_some() => {
                    begin_close(Ended::Expired, &mut to_client, &mut to_upstream, &mut closing);
                }
                () = sleep_until(revoked_at.unwrap_or(far)), if closing.is_none() && revoked_at.is_some() => {
                    begin_close(Ended::Revoked, &mut to_client, &mut to_upstream, &mut closing);
                }
                () = sleep_until(next_ping), if closing.is_none() && policy.ping_interval.is_some() => {
                    if awaiting_pong {
                        begin_close(Ended::PingTimeout, &mut to_client, &mut to_upstream, &mut closing);
                    } else if to_client.control.is_none() {
                        to_client.control = Some(Message::Ping(bytes::Bytes::from_static(b"portcullis")));
                        awaiting_pong = true;
                    }
                    next_ping = TokioInstant::now() + ping_every;
                }
                () = sleep_until(next_recheck), if closing.is_none() && revoked_at.is_none() => {
                    if !self.still_admitted().await {
                        revoked_at = Some(TokioInstant::now() + policy.expiry_grace);
                    }
                    next_recheck = TokioInstant::now() + policy.recheck_interval;
                }
                _ = shutdown.changed(), if closing.is_none() => {
                    begin_close(Ended::Shutdown, &mut to_client, &mut to_upstream, &mut closing);
                }
                () = sleep_until(wait_until), if closing.is_some() => break,
            }
        }
        let ended = closing.map(|(ended, _)| ended).unwrap_or(Ended::Client);
        (ended, counts)
    }
}

/// Starts closing (once): the client gets the reason's close frame, the
/// upstream 1001, except the side whose close or failure this is.
fn begin_close(
    ended: Ended,
    to_client: &mut Outbox,
    to_upstream: &mut Outbox,
    closing: &mut Option<(Ended, TokioInstant)>,
) {
    if closing.is_some() {
        return;
    }
    *closing = Some((ended, TokioInstant::now() + CLOSE_WAIT));
    to_client.data = None;
    to_upstream.data = None;
    if !matches!(ended, Ended::Client | Ended::ClientError) {
        to_client.control = Some(Message::Close(Some(ended.client_frame())));
    }
    if !matches!(ended, Ended::Upstream | Ended::UpstreamError) {
        to_upstream.control = Some(Message::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: Utf8Bytes::from_static(""),
        })));
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
