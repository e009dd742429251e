//! Serving one client connection once it is established: HTTP/2 or
//! HTTP/1.1 (told apart by the first bytes), under the watchdog
//! (see [`super`]), with idle HTTP/1 connections parked.
//!
//! **Parking.** Between two keep-alive requests hyper keeps all of its
//! per-connection state: a read buffer and a write buffer of 8 KiB each, a
//! cached header map and the connection future itself, about 20 KiB that
//! nothing uses until the next request arrives, which may be minutes away.
//! nginx frees its request buffers between keep-alive requests; portcullis
//! does the same by ending hyper's connection *without closing the socket*
//! once the watchdog finds the connection idle ([`Connection::may_park`]:
//! nothing in flight, hyper waiting for the next head, the last request
//! ended [`PARK_AFTER`] ago or more). A parked connection keeps only
//! its socket, the framing tap and the service; when bytes arrive a new
//! hyper connection is started on it and reads them first. Back-to-back requests
//! (a benchmark, a busy pooled client) never park, so the request path pays
//! nothing for this; a client that pauses longer pays one set of buffer
//! allocations per pause. HTTP/2 connections are not parked: their HPACK
//! tables and flow-control state must live as long as the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::tap::Tapped;
use super::{Connection, Idleness, PARK_AFTER, Progress, Timeouts};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The first bytes of every HTTP/2 connection (prior knowledge, or after
/// TLS with ALPN `h2`).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/1.1 and HTTP/2 settings for the connections of one listener.
#[derive(Clone, Debug)]
pub struct HttpBuilder {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

/// A service hyper can run a client connection's requests through.
pub trait ConnectionService<B>:
    Service<Request<Incoming>, Response = Response<B>, Future: Send + 'static, Error: Into<BoxError>>
    + Unpin
    + Send
    + 'static
{
}

impl<S, B> ConnectionService<B> for S where
    S: Service<Request<Incoming>, Response = Response<B>, Future: Send + 'static, Error: Into<BoxError>>
        + Unpin
        + Send
        + 'static
{
}

/// A response body hyper can send on either protocol.
pub trait ResponseBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> ResponseBody for B where B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

/// How a connection ended.
pub enum Ended {
    /// hyper ended it: the client closed, asked to close, was upgraded (a
    /// WebSocket), or sent something hyper refused (the error).
    Served(Result<(), hyper::Error>),
    /// The watchdog closed it (a timeout), or it closed while parked.
    Closed,
}

/// What watching a running hyper connection came to.
enum Watched {
    Served(Result<(), hyper::Error>),
    Expired,
    Park,
}

/// A hyper connection that can be asked to finish what it is doing and end.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B> Graceful for http2::Connection<I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

/// Serves `io` until it ends.
pub async fn serve<I, S, B>(
    io: I,
    service: S,
    builder: &HttpBuilder,
    conn: &Arc<Connection>,
    timeouts: Timeouts,
    drain: &mut Drain,
    parked: Option<&IntGauge>,
) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ConnectionService<B>,
    B: ResponseBody,
{
    let mut io = Tapped::new(io, conn.clone());
    let first = tokio::time::timeout_at(conn.first_head_deadline(timeouts).into(), first_bytes(&mut io));
    let speaks_h2 = tokio::select! {
        first = first => match first {
            Ok(Ok(Some(speaks_h2))) => speaks_h2,
            // Closed, broken or silent before its first bytes.
            _ => return Ended::Closed,
        },
        // Nothing asked yet: nothing to finish.
        _ = drain.waiter() => return Ended::Closed,
    };
    if speaks_h2 {
        let mut http = Box::pin(builder.http2.serve_connection(TokioIo::new(io), service));
        return match watch(http.as_mut(), conn, timeouts, false, drain).await {
            Watched::Served(result) => Ended::Served(result),
            Watched::Expired | Watched::Park => Ended::Closed,
        };
    }
    serve_http1(io, service, &builder.http1, conn, timeouts, drain, parked).await
}

/// Reads the connection's first bytes (at most the length of the HTTP/2
/// preface) and puts them back for hyper to read; `Some(true)` when they
/// are the preface, `None` when the connection closed first.
async fn first_bytes<I: AsyncRead + Unpin>(io: &mut Tapped<I>) -> io::Result<Option<bool>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    while filled < buf.len() {
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
        if buf[..filled] != H2_PREFACE[..filled] {
            break;
        }
    }
    if filled == 0 {
        return Ok(None);
    }
    io.unread(Bytes::copy_from_slice(&buf[..filled]));
    Ok(Some(buf[..filled] == H2_PREFACE[..]))
}

/// HTTP/1: one hyper connection per run of requests, parked in between.
async fn serve_http1<I, S, B>(
    mut io: Tapped<I>,
    mut service: S,
    builder: &http1::Builder,
    conn: &Arc<Connection>,
    timeouts: Timeouts,
    drain: &mut Drain,
    parked: Option<&IntGauge>,
) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ConnectionService<B>,
    B: ResponseBody,
{
    loop {
        // Boxed, so that a parked connection's task holds none of it.
        let mut http = Box::pin(
            builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );
        match watch(http.as_mut(), conn, timeouts, !drain.started(), drain).await {
            Watched::Served(result) => return Ended::Served(result),
            Watched::Expired => return Ended::Closed,
            Watched::Park => {}
        }
        // hyper closes an idle connection at once when asked to; the tap
        // keeps the socket open (see `Tapped::poll_shutdown`).
        conn.set_parking(true);
        http.as_mut().graceful_shutdown();
        let ended = watch(http.as_mut(), conn, timeouts, false, drain).await;
        conn.set_parking(false);
        match ended {
            Watched::Served(Ok(())) => {}
            Watched::Served(error) => return Ended::Served(error),
            Watched::Expired | Watched::Park => return Ended::Closed,
        }
        // `None`: upgraded after all (never, with nothing in flight).
        let Some(parts) = Pin::into_inner(http).into_parts() else {
            return Ended::Served(Ok(()));
        };
        io = parts.io.into_inner();
        service = parts.service;
        if !parts.read_buf.is_empty() {
            // hyper had read ahead: give it back to the next connection.
            io.unread(parts.read_buf);
            continue;
        }
        // Even empty, it is a view of hyper's read buffer, and holds it.
        drop(parts.read_buf);
        match park(&mut io, conn, timeouts, drain, parked).await {
            Some(arrived) => io.unread(arrived),
            None => {
                // A TLS close_notify or a TCP FIN, bounded like the drain.
                let _ = tokio::time::timeout(timeouts.header_read, io.shutdown()).await;
                return Ended::Closed;
            }
        }
    }
}

/// How many bytes a parked connection reads when it wakes, on the stack of
/// one poll (never in the task's state): what arrived first, handed to the
/// next hyper connection.
const WAKE_READ: usize = 2048;

/// Waits, holding no buffer, until a parked connection has received bytes
/// (returned, to be read again by the next hyper connection), or should
/// close: its idle timeout passed, the client closed, or the gateway is
/// draining (`None`).
///
/// It waits for bytes, not for readability: over TLS the socket can be
/// readable with no request byte in it (part of a record, a key update),
/// and a hyper connection started then would be idle before it had served
/// anything, when hyper cannot end it quietly.
async fn park<I: AsyncRead + Unpin>(
    io: &mut Tapped<I>,
    conn: &Connection,
    timeouts: Timeouts,
    drain: &Drain,
    parked: Option<&IntGauge>,
) -> Option<Bytes> {
    let _counted = parked.map(Parked::new);
    let mut progress = Progress::new();
    let arrived = std::future::poll_fn(move |cx| {
        let mut buf = [0u8; WAKE_READ];
        let mut read = ReadBuf::new(&mut buf);
        Pin::new(&mut *io)
            .poll_read(cx, &mut read)
            .map_ok(|()| Bytes::copy_from_slice(read.filled()))
    });
    tokio::pin!(arrived);
    loop {
        let check_at = match conn.idleness(timeouts, &mut progress) {
            Idleness::Expired => return None,
            Idleness::CheckAt(at) => at,
        };
        tokio::select! {
            bytes = &mut arrived => return bytes.ok().filter(|b| !b.is_empty()),
            _ = tokio::time::sleep_until(check_at.into()) => {}
            _ = drain.waiter(), if !drain.started() => return None,
        }
    }
}

/// Drives a hyper connection until it ends, the watchdog finds it idle or
/// slow (see [`super`]), or, when `may_park`, idle for [`PARK_AFTER`]. A
/// drain asks it to finish gracefully.
///
/// The watchdog's one timer serves both: after a poll that leaves the
/// connection idle it is brought forward to when the connection may be
/// parked, once per idle spell, so back-to-back requests cost no timer
/// operation at all.
async fn watch<C: Graceful>(
    mut http: Pin<&mut C>,
    conn: &Connection,
    timeouts: Timeouts,
    may_park: bool,
    drain: &mut Drain,
) -> Watched {
    let mut progress = Progress::new();
    let Some(first) = conn.next_check(timeouts, &mut progress, false) else {
        return Watched::Expired;
    };
    let timer = tokio::time::sleep_until(first.into());
    tokio::pin!(timer);
    let draining = drain.waiter();
    tokio::pin!(draining);
    // The timer is already set for the current idle spell.
    let mut armed = false;
    std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = http.as_mut().poll(cx) {
                return Poll::Ready(Watched::Served(result));
            }
            if !drain.started() && draining.as_mut().poll(cx).is_ready() {
                drain.mark_started();
                http.as_mut().graceful_shutdown();
                continue;
            }
            let parking = may_park && !drain.started();
            if parking
                && !armed
                && let Some(since) = conn.idle_since()
            {
                let at = since + PARK_AFTER;
                if at < timer.deadline().into_std() {
                    timer.as_mut().reset(at.into());
                }
                armed = true;
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if parking && conn.may_park() {
                return Poll::Ready(Watched::Park);
            }
            armed = false;
            match conn.next_check(timeouts, &mut progress, parking) {
                Some(at) => timer.as_mut().reset(at.into()),
                None => return Poll::Ready(Watched::Expired),
            }
        }
    })
    .await
}

/// A connection counted in the parked gauge while this lives.
struct Parked<'a>(&'a IntGauge);

impl<'a> Parked<'a> {
    fn new(gauge: &'a IntGauge) -> Parked<'a> {
        gauge.inc();
        Parked(gauge)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One connection's part in its listener's drain: it hears when the drain
/// starts, and the listener waits until every connection has dropped its
/// `Drain`.
pub struct Drain {
    signal: tokio::sync::watch::Receiver<bool>,
    started: bool,
    _open: tokio::sync::mpsc::Sender<()>,
}

impl Drain {
    pub fn new(signal: tokio::sync::watch::Receiver<bool>, open: tokio::sync::mpsc::Sender<()>) -> Drain {
        Drain {
            signal,
            started: false,
            _open: open,
        }
    }

    /// Whether this connection has seen the drain start.
    pub fn started(&self) -> bool {
        self.started
    }

    fn mark_started(&mut self) {
        self.started = true;
    }

    /// A future that resolves when the drain starts (or the listener is
    /// gone).
    fn waiter(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut signal = self.signal.clone();
        async move {
            let _ = signal.wait_for(|draining| *draining).await;
        }
    }
}
