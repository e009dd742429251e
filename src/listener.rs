//! Listeners and the connections they accept, for both the public and the
//! admin listener: a cap on open connections, the connection watchdog
//! (header read and idle timeouts, see [`crate::connection`]), the framing
//! tap, HTTP/1.1 and HTTP/2 (prior knowledge) on one port, and a drain on
//! shutdown.
//!
//! [`Listener`] is the seam TLS implements ([`crate::tls::TlsListener`]):
//! `accept` hands over a raw stream at once, and `establish` (run in the
//! connection's own task, under the header read timeout and, for TLS, the
//! handshake timeout) turns it into what HTTP runs over. For plain TCP that
//! is the stream itself.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::connection::drive::{self, ConnectionService, Drain, Ended, HttpBuilder, ResponseBody};
use crate::connection::tap::WireLog;
use crate::connection::{Connection, Timeouts};
use crate::worker::{OpenCount, Placed, Seat};

/// Where connections come from.
pub trait Listener: Send + 'static {
    /// What `accept` returns.
    type Stream: Send + 'static;
    /// What HTTP runs over.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// The next connection and its peer.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;

    /// Makes an accepted stream ready for HTTP (a TLS handshake, say).
    fn establish(&self, stream: Self::Stream) -> impl Future<Output = io::Result<Self::Io>> + Send + 'static;

    /// What `establish` learnt that requests should know (TLS: the name
    /// asked for, the client's certificate); `None` for plain TCP.
    fn describe(_io: &Self::Io) -> Option<crate::tls::TlsInfo> {
        None
    }
}

/// Plain TCP.
pub struct Plain(pub TcpListener);

impl Listener for Plain {
    type Stream = TcpStream;
    type Io = TcpStream;

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }

    fn establish(&self, stream: TcpStream) -> impl Future<Output = io::Result<TcpStream>> + Send + 'static {
        std::future::ready(Ok(stream))
    }
}

/// One open connection's place under `max_connections` and in the open
/// connections gauge; dropping it gives both back.
struct ListenerSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    open: IntGauge,
    /// Its place in its worker's count, when workers share the listener.
    _worker: Option<OpenCount>,
}

impl ListenerSlot {
    fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        open: IntGauge,
        worker: Option<OpenCount>,
    ) -> ListenerSlot {
        open.inc();
        ListenerSlot {
            _permit: permit,
            open,
            _worker: worker,
        }
    }
}

impl Drop for ListenerSlot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// A listener's cap on open connections and its open-connections gauge,
/// shared by every worker that accepts from it.
#[derive(Clone)]
pub struct ConnectionSlots {
    permits: Arc<Semaphore>,
    open: IntGauge,
}

impl ConnectionSlots {
    pub fn new(max_connections: usize, open: IntGauge) -> ConnectionSlots {
        ConnectionSlots {
            permits: Arc::new(Semaphore::new(max_connections)),
            open,
        }
    }
}

/// How one accept loop admits and counts its connections.
pub struct Admission {
    /// The listener's cap and open-connections gauge.
    pub slots: ConnectionSlots,
    /// Counts idle connections parked (the public listener).
    pub parked: Option<IntGauge>,
    /// This loop's worker, when several share the listener.
    pub seat: Option<Seat>,
}

/// A listener's connection settings.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Open connections; more wait in the kernel's backlog.
    pub max_connections: usize,
    pub timeouts: Timeouts,
    /// On shutdown, how long open connections may take to finish.
    pub drain: Duration,
    /// Keep each HTTP/1 request's framing record for the framing stage.
    pub framing_records: bool,
}

/// HTTP/1.1 and HTTP/2 builders with the gateway's settings. hyper's own
/// HTTP/1 header timeout is off: the connection watchdog times heads from
/// their first byte instead.
pub fn http_builder(max_head: usize, max_headers: usize) -> HttpBuilder {
    let mut http1 = http1::Builder::new();
    // One buffer per write: hyper's default hands a response's head and its
    // body to the kernel as separate iovecs, which costs more in the kernel
    // than copying a typical API response into the head's buffer (about
    // 3% of throughput on the benchmark; docs/benchmarks.md).
    http1
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(max_head.max(8192))
        .max_headers(max_headers);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(max_head as u32)
        .max_concurrent_streams(256);
    HttpBuilder { http1, http2 }
}

/// A request head the HTTP layer itself refused (a bare 400 or 431 before
/// a request existed), so that it can still be logged and counted.
pub fn refused_head_status(error: &hyper::Error) -> Option<u16> {
    if error.is_parse_too_large() {
        Some(431)
    } else if error.is_parse() {
        Some(400)
    } else {
        None
    }
}

/// The next connection another worker handed over; never, without a seat.
async fn handed_to(seat: Option<&mut Seat>) -> Option<Placed> {
    match seat {
        Some(seat) => seat.handed().await,
        None => std::future::pending().await,
    }
}

/// Accepts connections until `shutdown`, serving each with the service
/// `make_service` makes for it, each in a slot of `admission.slots` (whose
/// cap `limits.max_connections` gave); then drains. With a seat, a
/// connection goes to the least busy worker (see [`crate::worker`]).
/// `refused` hears of every head the HTTP layer refused (see
/// [`refused_head_status`]).
pub async fn serve<L, F, S, B>(
    mut listener: L,
    limits: ConnectionLimits,
    builder: HttpBuilder,
    make_service: F,
    refused: impl Fn(&Connection, u16) + Clone + Send + 'static,
    mut shutdown: watch::Receiver<bool>,
    admission: Admission,
) where
    L: Listener<Stream = TcpStream>,
    F: Fn(Arc<Connection>) -> S,
    S: ConnectionService<B>,
    B: ResponseBody,
{
    let listener_addr = listener.local_addr().ok();
    // Every connection holds a sender; the drain waits for the last to go.
    let (open_conns, mut all_closed) = mpsc::channel::<()>(1);
    let builder = Arc::new(builder);
    let Admission {
        slots,
        parked,
        mut seat,
    } = admission;
    loop {
        let permit = tokio::select! {
            permit = slots.permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = shutdown.changed() => break,
        };
        let (stream, peer, count) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match &seat {
                    Some(seat) => match seat.place(stream, peer) {
                        Some(placed) => (placed.stream, placed.peer, Some(placed.count)),
                        None => continue, // handed to another worker
                    },
                    None => (stream, peer, None),
                },
                Err(error) => {
                    // Usually out of file descriptors: pause instead of spinning.
                    tracing::warn!(%error, listener = ?listener_addr, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(handed) = handed_to(seat.as_mut()) => (handed.stream, handed.peer, Some(handed.count)),
            _ = shutdown.changed() => break,
        };
        // Boxed: a TLS handshake's state is large, and an idle
        // connection's task should not keep room for it.
        let establish = Box::pin(listener.establish(stream));
        let conn = Arc::new(if limits.framing_records {
            Connection::new(peer)
        } else {
            Connection::with_wire(peer, WireLog::timing_only())
        });
        let service = make_service(conn.clone());
        let builder = builder.clone();
        let mut drain = Drain::new(shutdown.clone(), open_conns.clone());
        let refused = refused.clone();
        let slot = ListenerSlot::new(permit, slots.open.clone(), count);
        let parked = parked.clone();
        tokio::spawn(async move {
            let Ok(Ok(io)) = tokio::time::timeout(limits.timeouts.header_read, establish).await else {
                return;
            };
            if let Some(info) = L::describe(&io) {
                conn.set_tls(info);
            }
            let ended = drive::serve(
                io,
                service,
                &builder,
                &conn,
                limits.timeouts,
                &mut drain,
                parked.as_ref(),
            )
            .await;
            if let Ended::Served(Err(error)) = ended
                && let Some(status) = refused_head_status(&error)
            {
                refused(&conn, status);
            }
            // A WebSocket carries on over the socket after HTTP is done
            // with it; the connection keeps the slot until it closes.
            if conn.is_upgraded() {
                conn.hold(Box::new(slot));
            }
        });
    }
    // Stop accepting at once: new connections are refused while the open
    // ones drain.
    drop(listener);
    let open_now = open_conns.strong_count() - 1;
    drop(open_conns);
    if open_now > 0 {
        tracing::info!(connections = open_now, listener = ?listener_addr, "draining in-flight requests");
    }
    tokio::select! {
        _ = all_closed.recv() => tracing::info!(listener = ?listener_addr, "all connections closed"),
        _ = tokio::time::sleep(limits.drain) => tracing::warn!(listener = ?listener_addr, "drain timeout reached; closing remaining connections"),
    }
}
