//! What is known about one client connection, shared by its requests: the
//! peer, what the framing tap saw on the wire ([`tap`]), and the timing the
//! connection's watchdog enforces; [`drive`] serves the connection under it
//! and parks it while it is idle.
//!
//! The watchdog closes a connection that
//! - sends no request within the header read timeout of opening (a silent
//!   socket, or one that stops inside the HTTP/2 preface);
//! - takes longer than the header read timeout to send a request head,
//!   counted from the head's first byte (slowloris); a head pipelined behind
//!   a request in flight is timed from when that request finishes, since
//!   nothing reads it before;
//! - sits with no request in flight for the idle timeout after its last
//!   request (keep-alive, HTTP/1 and HTTP/2 alike);
//! - has requests in flight but moves no byte either way for the stall
//!   timeout: a client that stops reading its response (or never opens its
//!   HTTP/2 window) cannot hold the connection, as nginx's `send_timeout`
//!   ensures. The stall timeout is at least the longest upstream timeout, so
//!   a request waiting for a slow upstream is answered (a 504 at worst)
//!   before it applies.
//!
//! hyper's own HTTP/1 header timeout is not used: it starts when hyper
//! begins waiting for the next head, so it would end an idle keep-alive
//! connection after the header timeout instead of the idle timeout.

pub mod drive;
pub mod tap;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body, Frame, SizeHint};
use tap::WireLog;

/// No time recorded.
const NEVER: u64 = u64::MAX;

/// How long an HTTP/1 connection with nothing in flight waits for its next
/// request before it is parked, its buffers freed (see [`drive`]): far longer
/// than the gap between back-to-back requests, shorter than a person's or a
/// poller's pause.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// The timeouts a connection's watchdog enforces.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// For a request head, from its first byte (and for the first request,
    /// from the connection's opening).
    pub header_read: Duration,
    /// Between requests.
    pub idle: Duration,
    /// With requests in flight, between two reads or writes on the socket.
    pub stall: Duration,
}

/// One client connection.
#[derive(Debug)]
pub struct Connection {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// How each HTTP/1 request head was framed on the wire.
    pub wire: WireLog,
    opened: Instant,
    /// Requests started and not yet finished (logged).
    in_flight: AtomicUsize,
    /// When a request last started or finished, in ms since `opened`.
    last_request_ms: AtomicU64,
    /// Reads and writes that moved bytes on the socket (a count, not a
    /// time: the watchdog notes when it last saw the count change, so the
    /// hot path reads no clock).
    io_events: AtomicU64,
    /// When the request head being read now began, in ms since `opened`.
    head_started_ms: AtomicU64,
    /// The connection switched protocols (a WebSocket): the socket lives
    /// on after HTTP is done with it.
    upgraded: AtomicBool,
    /// hyper waits for the next request head: the tap saw its last read
    /// find nothing, at a message boundary, with nothing left to write.
    awaiting_head: AtomicBool,
    /// hyper's side is being shut down to park the connection: the tap
    /// keeps the socket open.
    parking: AtomicBool,
    /// What must live as long as the connection once HTTP is done with it
    /// (the listener's slot under `max_connections`).
    held: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// What the TLS handshake established, on a TLS listener.
    tls: std::sync::OnceLock<crate::tls::TlsInfo>,
}

/// What the watchdog should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Idleness {
    /// Check again at this instant.
    CheckAt(Instant),
    /// A deadline passed: close the connection.
    Expired,
}

impl Connection {
    pub fn new(peer: SocketAddr) -> Self {
        Connection::with_wire(peer, WireLog::default())
    }

    /// A connection whose framing tap keeps `wire` (see [`WireLog::timing_only`]).
    pub fn with_wire(peer: SocketAddr, wire: WireLog) -> Self {
        Connection {
            peer,
            wire,
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_request_ms: AtomicU64::new(NEVER),
            io_events: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(NEVER),
            upgraded: AtomicBool::new(false),
            awaiting_head: AtomicBool::new(false),
            parking: AtomicBool::new(false),
            held: std::sync::Mutex::new(None),
            tls: std::sync::OnceLock::new(),
        }
    }

    /// Records the handshake's facts (once, before any request is served).
    pub fn set_tls(&self, info: crate::tls::TlsInfo) {
        let _ = self.tls.set(info);
    }

    /// The handshake's facts, on a TLS listener.
    pub fn tls(&self) -> Option<&crate::tls::TlsInfo> {
        self.tls.get()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.get().is_some()
    }

    /// Marks the connection as switching protocols: whatever takes the
    /// socket over keeps this `Connection` (the tap holds it), and the
    /// listener leaves its slot with it.
    pub fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    pub fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    /// Keeps `slot` until this connection is dropped: for an upgraded
    /// connection, when its socket closes. The listener's task (and the
    /// HTTP state it holds) ends at once instead of waiting.
    pub fn hold(&self, slot: Box<dyn std::any::Any + Send>) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(slot);
    }

    fn elapsed_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.last_request_ms.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = self.elapsed_ms();
        self.last_request_ms.store(now, Ordering::Relaxed);
        // A head pipelined behind this request is read from now on.
        if self.head_started_ms.load(Ordering::Relaxed) != NEVER {
            self.head_started_ms.store(now, Ordering::Relaxed);
        }
    }

    /// Marks a request in flight until the returned guard is dropped (for
    /// services that do not log through the pipeline: the admin listener).
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.request_started();
        InFlight(self.clone())
    }

    /// Requests started and not yet logged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The framing tap saw the first byte of a request head.
    pub fn head_started(&self) {
        self.head_started_ms.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// The head is complete, or the tap stopped following the connection.
    pub fn head_finished(&self) {
        self.head_started_ms.store(NEVER, Ordering::Relaxed);
    }

    /// The tap saw hyper wait for a request head (true), or read or fail
    /// to write (false).
    pub(crate) fn set_awaiting_head(&self, awaiting: bool) {
        self.awaiting_head.store(awaiting, Ordering::Relaxed);
    }

    pub(crate) fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Relaxed);
    }

    pub(crate) fn is_parking(&self) -> bool {
        self.parking.load(Ordering::Relaxed)
    }

    /// When the first request head must have been read by.
    pub fn first_head_deadline(&self, timeouts: Timeouts) -> Instant {
        self.opened + timeouts.header_read
    }

    /// Since when the connection has waited for its next request, with
    /// nothing in flight and nothing left to write; `None` if it is busy.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight() > 0 || !self.awaiting_head.load(Ordering::Relaxed) || self.is_upgraded() {
            return None;
        }
        match self.last_request_ms.load(Ordering::Relaxed) {
            NEVER => None,
            ms => Some(self.at(ms)),
        }
    }

    /// Whether an HTTP/1 connection has been idle for [`PARK_AFTER`].
    pub fn may_park(&self) -> bool {
        self.idle_since()
            .is_some_and(|since| since + PARK_AFTER <= Instant::now())
    }

    /// When the watchdog should look next, or `None` when a deadline passed;
    /// with `parking`, no later than when an idle connection may be parked.
    pub fn next_check(&self, timeouts: Timeouts, progress: &mut Progress, parking: bool) -> Option<Instant> {
        match self.idleness(timeouts, progress) {
            Idleness::Expired => None,
            Idleness::CheckAt(at) => match self.idle_since() {
                Some(since) if parking => Some(at.min(since + PARK_AFTER)),
                _ => Some(at),
            },
        }
    }

    /// Bytes moved on the socket (the tap calls this on every read and
    /// write that moved some).
    pub fn io_happened(&self) {
        self.io_events.fetch_add(1, Ordering::Relaxed);
    }

    /// The earliest deadline that applies now, or `Expired`. The answer
    /// never lies further ahead than half the header timeout, so a head that
    /// starts while the watchdog sleeps is still cut off in time (and bytes
    /// that moved are noticed within that too).
    pub fn idleness(&self, timeouts: Timeouts, progress: &mut Progress) -> Idleness {
        let now = Instant::now();
        let recheck = now + (timeouts.header_read / 2).max(Duration::from_millis(50));
        let io = self.io_events.load(Ordering::Relaxed);
        if io != progress.io_seen {
            progress.io_seen = io;
            progress.at = now;
        }
        let deadline = if self.in_flight() > 0 {
            let started = self.at(self.last_request_ms.load(Ordering::Relaxed));
            progress.at.max(started) + timeouts.stall
        } else {
            match self.head_started_ms.load(Ordering::Relaxed) {
                NEVER => match self.last_request_ms.load(Ordering::Relaxed) {
                    NEVER => self.opened + timeouts.header_read,
                    ms => self.at(ms) + timeouts.idle,
                },
                started => self.at(started) + timeouts.header_read,
            }
        };
        if now >= deadline {
            Idleness::Expired
        } else {
            Idleness::CheckAt(deadline.min(recheck))
        }
    }
}

/// What the watchdog last saw of a connection's traffic.
#[derive(Debug)]
pub struct Progress {
    io_seen: u64,
    /// When the watchdog saw the traffic count change.
    at: Instant,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            io_seen: 0,
            at: Instant::now(),
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

/// A request in flight on its connection; dropping it finishes the request.
#[derive(Debug)]
pub struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that keeps its request in flight until it is dropped.
pub struct InFlightBody<B> {
    inner: B,
    _request: InFlight,
}

impl<B> InFlightBody<B> {
    pub fn new(inner: B, request: InFlight) -> Self {
        InFlightBody {
            inner,
            _request: request,
        }
    }
}

impl<B: Body + Unpin> Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header_read: Duration::from_millis(200),
        idle: Duration::from_secs(60),
        stall: Duration::from_millis(1000),
    };

    fn conn() -> Connection {
        Connection::new("127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn a_connection_without_a_request_expires_after_the_header_timeout() {
        let c = conn();
        let mut p = Progress::new();
        assert!(matches!(c.idleness(T, &mut p), Idleness::CheckAt(_)));
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(c.idleness(T, &mut p), Idleness::Expired);
    }

    #[test]
    fn between_requests_the_idle_timeout_applies_not_the_header_timeout() {
        let c = conn();
        let mut p = Progress::new();
        c.request_started();
        c.request_finished();
        std::thread::sleep(Duration::from_millis(210));
        assert!(
            matches!(c.idleness(T, &mut p), Idleness::CheckAt(_)),
            "idle keep-alive stays open"
        );
        // A head that starts and does not finish is cut off after the header timeout.
        c.head_started();
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(c.idleness(T, &mut p), Idleness::Expired);
    }

    #[test]
    fn a_request_in_flight_holds_the_connection_only_while_bytes_move() {
        let c = conn();
        let mut p = Progress::new();
        c.request_started();
        // A head pipelined behind it is not timed while it waits.
        c.head_started();
        std::thread::sleep(Duration::from_millis(250));
        c.io_happened();
        assert!(
            matches!(c.idleness(T, &mut p), Idleness::CheckAt(_)),
            "bytes moved"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            matches!(c.idleness(T, &mut p), Idleness::CheckAt(_)),
            "within the stall timeout"
        );
        // (Oversleeping only makes this later, never earlier.)
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(
            c.idleness(T, &mut p),
            Idleness::Expired,
            "stalled for longer than the stall timeout"
        );
        // Once the request finishes, the pipelined head's clock starts.
        c.request_finished();
        assert!(matches!(c.idleness(T, &mut p), Idleness::CheckAt(_)));
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(c.idleness(T, &mut p), Idleness::Expired);
    }
}
