//! What is known about one client connection, shared by its requests: the
//! peer, what the framing tap saw on the wire ([`tap`]), and the timing the
//! connection's watchdog ([`close_when_idle`]) enforces.
//!
//! The watchdog closes a connection that
//! - sends no request within the header read timeout of opening (a silent
//!   socket, or one that stops inside the HTTP/2 preface);
//! - takes longer than the header read timeout to send a request head,
//!   counted from the head's first byte (slowloris);
//! - sits with no request in flight for the idle timeout after its last
//!   request (keep-alive, HTTP/1 and HTTP/2 alike).
//!
//! hyper's own HTTP/1 header timeout is not used: it starts when hyper
//! begins waiting for the next head, so it would end an idle keep-alive
//! connection after the header timeout instead of the idle timeout.

pub mod tap;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tap::WireLog;

/// No time recorded.
const NEVER: u64 = u64::MAX;

/// The timeouts a connection's watchdog enforces.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// For a request head, from its first byte (and for the first request,
    /// from the connection's opening).
    pub header_read: Duration,
    /// Between requests.
    pub idle: Duration,
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
    last_activity_ms: AtomicU64,
    /// When the request head being read now began, in ms since `opened`.
    head_started_ms: AtomicU64,
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
            last_activity_ms: AtomicU64::new(NEVER),
            head_started_ms: AtomicU64::new(NEVER),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.last_activity_ms.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.last_activity_ms.store(self.elapsed_ms(), Ordering::Relaxed);
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

    /// The earliest deadline that applies now, or `Expired`. The answer
    /// never lies further ahead than half the header timeout, so a head that
    /// starts while the watchdog sleeps is still cut off in time.
    pub fn idleness(&self, timeouts: Timeouts) -> Idleness {
        let now = Instant::now();
        let recheck = now + (timeouts.header_read / 2).max(Duration::from_millis(50));
        let deadline = match self.head_started_ms.load(Ordering::Relaxed) {
            NEVER if self.in_flight() > 0 => return Idleness::CheckAt(recheck),
            NEVER => match self.last_activity_ms.load(Ordering::Relaxed) {
                NEVER => self.opened + timeouts.header_read,
                ms => self.at(ms) + timeouts.idle,
            },
            started => self.at(started) + timeouts.header_read,
        };
        if now >= deadline {
            Idleness::Expired
        } else {
            Idleness::CheckAt(deadline.min(recheck))
        }
    }
}

/// Drives a connection until it ends or its watchdog finds it idle or slow
/// (see the module docs); dropping the connection future closes it.
pub async fn close_when_idle(connection: impl std::future::Future, watched: &Connection, timeouts: Timeouts) {
    tokio::pin!(connection);
    let mut check_at = tokio::time::Instant::now() + timeouts.header_read.min(timeouts.idle);
    loop {
        tokio::select! {
            _ = &mut connection => return,
            _ = tokio::time::sleep_until(check_at) => match watched.idleness(timeouts) {
                Idleness::Expired => return,
                Idleness::CheckAt(at) => check_at = at.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header_read: Duration::from_millis(200),
        idle: Duration::from_secs(60),
    };

    fn conn() -> Connection {
        Connection::new("127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn a_connection_without_a_request_expires_after_the_header_timeout() {
        let c = conn();
        assert!(matches!(c.idleness(T), Idleness::CheckAt(_)));
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(c.idleness(T), Idleness::Expired);
    }

    #[test]
    fn between_requests_the_idle_timeout_applies_not_the_header_timeout() {
        let c = conn();
        c.request_started();
        c.request_finished();
        std::thread::sleep(Duration::from_millis(210));
        assert!(
            matches!(c.idleness(T), Idleness::CheckAt(_)),
            "idle keep-alive stays open"
        );
        // A head that starts and does not finish is cut off after the header timeout.
        c.head_started();
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(c.idleness(T), Idleness::Expired);
    }

    #[test]
    fn a_request_in_flight_is_never_idle() {
        let c = conn();
        c.request_started();
        std::thread::sleep(Duration::from_millis(210));
        assert!(matches!(c.idleness(T), Idleness::CheckAt(_)));
        assert_eq!(c.in_flight(), 1);
    }
}
