//! Keep-alive HTTP/1.1 connections to one upstream target, each driven by
//! the request that is using it.
//!
//! A connection ([`super::h1::H1Conn`]) has no task of its own: the
//! request's task writes the request and reads the response head, then the
//! response body (polled by the same client-connection task) reads on until
//! the body ends. A connection goes back to the pool only when its response
//! body ended cleanly and the upstream did not ask to close; in every other
//! case (the client went away mid-body, an error, bytes past the response)
//! it is dropped, which closes it.
//!
//! Nobody polls an idle connection, so an upstream closing one is noticed
//! when it is next checked out (its EOF is already waiting) or by the reaper
//! task, which also enforces the idle timeout.
//!
//! A target that speaks HTTP/2 (see [`Endpoint::speaks_h2`]) gets one
//! shared connection instead ([`super::h2`]), kept here until the target
//! closes it; the leases cap requests in flight just the same.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use super::connect::{Address, Endpoint};
use super::h1::{BodyState, Failure, H1Conn, H1Error, Head, Upload};
use crate::body::{BodyError, GatewayBody};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;

/// Pool settings, from `[[upstreams]]`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    /// Requests in flight at most (each holds one connection).
    pub max_connections: usize,
}

/// A request that got no response head: why, and whether none of it was
/// written (so it may go to another target, whatever its method).
#[derive(Debug)]
pub struct Failed {
    pub error: SendError,
    pub unsent: bool,
}

/// Why no response head came back.
#[derive(Debug)]
pub enum SendError {
    Connect(std::io::Error),
    ConnectTimeout,
    /// The HTTP/1.1 exchange failed (its source chain says more).
    Http1(H1Error),
    /// hyper's error for an HTTP/2 exchange (its source chain says more).
    Http(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(_) => f.write_str("cannot connect"),
            SendError::ConnectTimeout => f.write_str("connect timed out"),
            SendError::Http1(_) | SendError::Http(_) => f.write_str("HTTP exchange failed"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::ConnectTimeout => None,
            SendError::Http1(e) => Some(e),
            SendError::Http(e) => Some(e),
        }
    }
}

/// A new connection to a target, in the version it speaks.
enum Connected {
    Http1(Box<H1Conn>),
    H2(http2::SendRequest<GatewayBody>),
}

struct Idle {
    conn: Box<H1Conn>,
    since: Instant,
}

/// A target's idle connections, by the worker that opened them
/// ([`H1Conn::home`]). A worker takes only its own: a connection's socket is
/// registered with the runtime of the worker that opened it, and used from
/// another worker every event on it would wake two threads (nginx's workers
/// keep their keep-alive connections apart in the same way).
#[derive(Default)]
struct IdleList {
    /// Most recently returned last: taken from the back, expired from the front.
    by_worker: Vec<VecDeque<Idle>>,
    len: usize,
    reaper_running: bool,
}

impl IdleList {
    fn push(&mut self, idle: Idle) {
        let home = usize::from(idle.conn.home());
        if self.by_worker.len() <= home {
            self.by_worker.resize_with(home + 1, VecDeque::new);
        }
        self.by_worker[home].push_back(idle);
        self.len += 1;
    }

    /// The most recently returned connection `worker` opened.
    fn take(&mut self, worker: u16) -> Option<Idle> {
        let idle = self.by_worker.get_mut(usize::from(worker))?.pop_back()?;
        self.len -= 1;
        Some(idle)
    }

    /// Keeps the connections `keep` says yes to; returns the others.
    fn retain(&mut self, mut keep: impl FnMut(&mut Idle) -> bool) -> Vec<Idle> {
        let mut doomed = Vec::new();
        for conns in &mut self.by_worker {
            let mut kept = VecDeque::with_capacity(conns.len());
            for mut entry in conns.drain(..) {
                if keep(&mut entry) {
                    kept.push_back(entry);
                } else {
                    doomed.push(entry);
                }
            }
            *conns = kept;
        }
        self.len -= doomed.len();
        doomed
    }
}

/// The idle connections to one target.
pub struct TargetPool {
    endpoint: Endpoint,
    limits: Limits,
    idle: Mutex<IdleList>,
    /// The shared HTTP/2 connection, once the target was found to speak it.
    h2: Mutex<Option<http2::SendRequest<GatewayBody>>>,
    /// One permit per request that may be in flight.
    permits: tokio::sync::Semaphore,
    /// 1 when the last connection attempt succeeded, 0 when it failed.
    reachable: prometheus::IntGauge,
}

/// The right to one request in flight to a target; given back when the
/// response body ends or is dropped (or when the request fails).
pub struct Lease {
    pool: Arc<TargetPool>,
    held: bool,
}

impl Lease {
    fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            self.pool.permits.add_permits(1);
        }
    }

    /// Sends `req` on a pooled or new connection and returns the response
    /// head; the body streams from the connection as it is polled, and
    /// keeps the lease until it ends.
    ///
    /// The request stays with the caller, so that it can be sent again: its
    /// head is only read, and a body in memory stays in it (a streamed body
    /// is taken). [`Failed::unsent`] says none of it was written.
    pub async fn send(self, req: &mut Request<GatewayBody>) -> Result<Response<UpstreamBody>, Failed> {
        if self.pool.endpoint.may_speak_h2()
            && let Some(sender) = self.pool.shared_h2()
        {
            return Box::pin(self.send_h2(sender, req, H2Sender::Shared, UNSENT_RESENDS)).await;
        }
        let (mut conn, reused) = match self.pool.checkout() {
            Some(conn) => (conn, true),
            // Boxed, as is the retry below: both are rare, and inline they
            // would make every request's future larger and costlier to move.
            None => match Box::pin(self.pool.connect()).await {
                Ok(Connected::Http1(conn)) => (conn, false),
                Ok(Connected::H2(sender)) => {
                    return Box::pin(self.send_h2(sender, req, H2Sender::New, UNSENT_RESENDS)).await;
                }
                Err(error) => return Err(Failed { error, unsent: true }),
            },
        };
        match conn.send(req).await {
            Ok(head) => Ok(self.respond(head, conn)),
            // The upstream closed the pooled connection just before it was
            // used (checkout saw no EOF yet). The request was never written,
            // so sending it again on a new connection is safe.
            Err(failure) if reused && !failure.written => {
                drop(conn);
                Box::pin(self.send_on_new_connection(req, UNSENT_RESENDS)).await
            }
            Err(failure) => Err(failed(failure)),
        }
    }

    /// Sends a request that was never processed again, on a connection of
    /// its own; `resends` more such attempts may follow if that one refuses
    /// it too.
    async fn send_on_new_connection(
        self,
        req: &mut Request<GatewayBody>,
        resends: u8,
    ) -> Result<Response<UpstreamBody>, Failed> {
        tracing::debug!("the upstream did not take the request; sending it on a new connection");
        let mut conn = match self.pool.connect().await {
            Ok(Connected::Http1(conn)) => conn,
            Ok(Connected::H2(sender)) => return self.send_h2(sender, req, H2Sender::New, resends).await,
            Err(error) => return Err(Failed { error, unsent: true }),
        };
        match conn.send(req).await {
            Ok(head) => Ok(self.respond(head, conn)),
            Err(failure) => Err(failed(failure)),
        }
    }

    /// The response whose body reads on from `conn` and holds the lease.
    fn respond(self, head: Head, conn: Box<H1Conn>) -> Response<UpstreamBody> {
        let Head {
            response,
            body,
            keep_alive,
            upload,
        } = head;
        response.map(|()| UpstreamBody {
            inner: Inner::Http1 {
                conn: Some(conn),
                state: body,
                keep_alive,
                upload,
            },
            lease: self,
        })
    }

    /// Sends `req` as a stream on `sender`. A stream the target refused
    /// unprocessed (REFUSED_STREAM, or above a graceful GOAWAY's last stream
    /// ID) is sent again on a new connection, up to `resends` times: a new
    /// connection is shared at once, so requests that start together can all
    /// land on one the target is already closing.
    ///
    /// hyper's client takes the request, so one whose body is empty or in
    /// memory is copied (one header-map clone, on HTTP/2 targets only) and
    /// stays with the caller; any other is moved out, and put back if hyper
    /// gives it back unsent. A target closing gracefully sends GOAWAY; a
    /// request that races it fails inside hyper with the request consumed,
    /// though the target never processed it (RFC 9113 §6.8, and
    /// REFUSED_STREAM in §8.7): a copied request then counts as unsent.
    async fn send_h2(
        self,
        mut sender: http2::SendRequest<GatewayBody>,
        req: &mut Request<GatewayBody>,
        from: H2Sender,
        resends: u8,
    ) -> Result<Response<UpstreamBody>, Failed> {
        let copy = super::retry::copy_of(req);
        let kept = copy.is_some();
        let mut outgoing = copy.unwrap_or_else(|| std::mem::replace(req, Request::new(GatewayBody::Empty)));
        super::h2::prepare(&mut outgoing, self.pool.endpoint.tls.is_some());
        match sender.try_send_request(outgoing).await {
            Ok(response) => Ok(response.map(|body| UpstreamBody {
                inner: Inner::H2(body),
                lease: self,
            })),
            Err(mut error) => {
                let returned = error.take_message();
                let unsent = returned.is_some() || (kept && super::h2::unprocessed(error.error()));
                if let Some(back) = returned
                    && !kept
                {
                    *req = back;
                }
                if unsent && resends > 0 {
                    if from == H2Sender::Shared {
                        self.pool.forget_shared_h2();
                    }
                    return Box::pin(self.send_on_new_connection(req, resends - 1)).await;
                }
                Err(Failed {
                    error: SendError::Http(error.into_error()),
                    unsent,
                })
            }
        }
    }
}

/// How often a request the target never processed is sent again on a new
/// connection (it is safe whatever the method: RFC 9113 §8.7). Bounded, so
/// a target that refuses every stream costs a few connections, not a loop.
const UNSENT_RESENDS: u8 = 2;

/// Where an HTTP/2 sender came from: the pool's shared connection (to be
/// forgotten if it refuses new streams), or one just opened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum H2Sender {
    Shared,
    New,
}

/// A failed HTTP/1.1 exchange as the caller sees it.
fn failed(failure: Failure) -> Failed {
    Failed {
        unsent: !failure.written,
        error: SendError::Http1(failure.error),
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

impl TargetPool {
    pub fn new(endpoint: Endpoint, limits: Limits, reachable: prometheus::IntGauge) -> Self {
        TargetPool {
            endpoint,
            limits,
            idle: Mutex::new(IdleList::default()),
            h2: Mutex::new(None),
            permits: tokio::sync::Semaphore::new(limits.max_connections),
            reachable,
        }
    }

    /// A lease if a request may start now.
    pub fn try_lease(self: &Arc<Self>) -> Option<Lease> {
        let permit = self.permits.try_acquire().ok()?;
        permit.forget();
        Some(Lease {
            pool: self.clone(),
            held: true,
        })
    }

    /// A lease within `wait`, or `None`: waiting requests are served in
    /// the order they came.
    pub async fn lease_within(self: &Arc<Self>, wait: Duration) -> Option<Lease> {
        let permit = tokio::time::timeout(wait, self.permits.acquire())
            .await
            .ok()?
            .ok()?;
        permit.forget();
        Some(Lease {
            pool: self.clone(),
            held: true,
        })
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.limits
            .max_connections
            .saturating_sub(self.permits.available_permits())
    }

    /// Records whether the target accepted a connection just now.
    pub fn note_reachable(&self, reachable: bool) {
        self.reachable.set(i64::from(reachable));
    }

    pub fn address(&self) -> &Address {
        &self.endpoint.address
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn idle_list(&self) -> std::sync::MutexGuard<'_, IdleList> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many connections are idle now (for tests and diagnostics).
    pub fn idle_count(&self) -> usize {
        self.idle_list().len
    }

    /// The most recently used idle connection this worker opened that is
    /// still open and within the idle timeout (see [`IdleList`]). Others
    /// found on the way are closed.
    fn checkout(&self) -> Option<Box<H1Conn>> {
        let now = Instant::now();
        let worker = crate::worker::current();
        loop {
            // The guard is dropped at the end of this statement, so a stale
            // connection is closed without holding the lock.
            let mut idle = self.idle_list().take(worker)?;
            if now.duration_since(idle.since) < self.limits.idle_timeout && idle.conn.reusable() {
                return Some(idle.conn);
            }
        }
    }

    async fn connect(&self) -> Result<Connected, SendError> {
        // The connect timeout covers the TLS handshake too.
        let connected = tokio::time::timeout(self.limits.connect_timeout, self.endpoint.open()).await;
        let connected = connected.map(|opened| {
            let stream = opened?;
            let h2 = self.endpoint.speaks_h2(&stream)?;
            Ok((stream, h2))
        });
        self.note_reachable(matches!(connected, Ok(Ok(_))));
        let (stream, h2) = match connected {
            Ok(Ok(opened)) => opened,
            Ok(Err(error)) => return Err(SendError::Connect(error)),
            Err(_) => return Err(SendError::ConnectTimeout),
        };
        if h2 {
            let sender = super::h2::handshake(stream).await.map_err(SendError::Http)?;
            self.share_h2(&sender);
            return Ok(Connected::H2(sender));
        }
        Ok(Connected::Http1(Box::new(H1Conn::new(stream))))
    }

    fn h2_slot(&self) -> std::sync::MutexGuard<'_, Option<http2::SendRequest<GatewayBody>>> {
        self.h2.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shared HTTP/2 connection, if there is one still open.
    fn shared_h2(&self) -> Option<http2::SendRequest<GatewayBody>> {
        let mut slot = self.h2_slot();
        match &*slot {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    /// Keeps a new HTTP/2 connection for every request after this one,
    /// unless another request's is kept already (requests that found none
    /// at the same moment each opened one; the others close when done).
    fn share_h2(&self, sender: &http2::SendRequest<GatewayBody>) {
        let mut slot = self.h2_slot();
        if slot.as_ref().is_none_or(http2::SendRequest::is_closed) {
            *slot = Some(sender.clone());
        }
    }

    /// Drops the shared HTTP/2 connection after it refused a new stream
    /// (closed, or going away). If a racing request has put a new one in
    /// its place, that one is dropped from the slot too: it keeps serving
    /// its own streams, and the next request opens and shares another.
    fn forget_shared_h2(&self) {
        *self.h2_slot() = None;
    }

    /// Takes back a connection whose exchange is complete and clean (an EOF
    /// that comes later is seen at checkout); otherwise drops (closes) it.
    fn release(self: &Arc<Self>, conn: Box<H1Conn>) {
        if self.limits.max_idle == 0 || self.limits.idle_timeout.is_zero() {
            return;
        }
        // Without a runtime (shutting down) nobody could reap it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let start_reaper = {
            let mut idle = self.idle_list();
            if idle.len >= self.limits.max_idle {
                false // `conn` is closed below, once the lock is released
            } else {
                idle.push(Idle {
                    conn,
                    since: Instant::now(),
                });
                !std::mem::replace(&mut idle.reaper_running, true)
            }
        };
        if start_reaper {
            runtime.spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Closes expired idle connections and those the upstream closed;
    /// returns whether any are left to watch.
    fn reap_once(&self) -> bool {
        let now = Instant::now();
        let mut idle = self.idle_list();
        let doomed = idle.retain(|entry| {
            now.duration_since(entry.since) < self.limits.idle_timeout && entry.conn.reusable()
        });
        let any_left = idle.len > 0;
        if !any_left {
            idle.reaper_running = false;
        }
        drop(idle);
        drop(doomed);
        any_left
    }
}

/// Runs while a pool has idle connections, and stops with the pool.
async fn reap(pool: Weak<TargetPool>) {
    let Some(period) = pool
        .upgrade()
        .map(|p| (p.limits.idle_timeout / 2).max(Duration::from_millis(10)))
    else {
        return;
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        if !pool.reap_once() {
            return;
        }
    }
}

/// A response body streamed from an upstream connection: read on from
/// the HTTP/1.1 connection, which goes back to the pool when the body ends,
/// or a stream of the shared HTTP/2 connection.
pub struct UpstreamBody {
    inner: Inner,
    lease: Lease,
}

enum Inner {
    Http1 {
        /// Present until the body ends (then pooled) or fails.
        conn: Option<Box<H1Conn>>,
        state: BodyState,
        keep_alive: bool,
        /// The rest of the request body, when the response head came first.
        upload: Option<Box<Upload>>,
    },
    H2(Incoming),
}

impl UpstreamBody {
    /// The exchange is over: the connection goes back to the pool if it
    /// may, and the lease is given back.
    fn finish(&mut self) {
        if let Inner::Http1 {
            conn,
            keep_alive,
            upload,
            ..
        } = &mut self.inner
            && let Some(conn) = conn.take()
            && *keep_alive
            && upload.is_none()
            && conn.clean()
        {
            self.lease.pool.release(conn);
        }
        self.lease.release();
    }

    fn poll_http1(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Inner::Http1 {
            conn, state, upload, ..
        } = &mut self.inner
        else {
            unreachable!("poll_http1 on an HTTP/2 body");
        };
        let Some(connection) = conn else {
            return Poll::Ready(None);
        };
        if let Some(body) = upload {
            match connection.poll_upload(body, cx) {
                Poll::Ready(Ok(())) => *upload = None,
                // The upstream stopped reading, or closed its side: its
                // answer is still read; the connection is not used again.
                Poll::Ready(Err(H1Error::Io(_))) => {
                    *upload = None;
                    if let Inner::Http1 { keep_alive, .. } = &mut self.inner {
                        *keep_alive = false;
                    }
                    return self.poll_http1(cx);
                }
                // The client's body broke: so does the exchange, as it would
                // have without an early answer.
                Poll::Ready(Err(error)) => {
                    *conn = None;
                    self.lease.release();
                    return Poll::Ready(Some(Err(BodyError::Upstream(error))));
                }
                Poll::Pending => {}
            }
        }
        match ready!(connection.poll_body(state, cx)) {
            Some(Ok(data)) => {
                if matches!(state, BodyState::Done) {
                    self.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            None => {
                self.finish();
                Poll::Ready(None)
            }
            Some(Err(error)) => {
                *conn = None;
                self.lease.release();
                Poll::Ready(Some(Err(BodyError::Upstream(error))))
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Inner::H2(body) = &mut this.inner else {
            return this.poll_http1(cx);
        };
        let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
        if frame.is_none() || body.is_end_stream() {
            this.finish();
        }
        Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Http1 { state, .. } => matches!(state, BodyState::Done),
            Inner::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Http1 {
                state: BodyState::Fixed(n),
                ..
            } => SizeHint::with_exact(*n),
            Inner::Http1 {
                state: BodyState::Done,
                ..
            } => SizeHint::with_exact(0),
            Inner::Http1 { .. } => SizeHint::default(),
            Inner::H2(body) => body.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper never polls a body that is empty from the start (HEAD, 204,
        // `Content-Length: 0`), so that exchange completes here. A body
        // dropped before its end leaves the connection mid-response: it is
        // dropped with `self`, which closes it.
        if self.is_end_stream() {
            self.finish();
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let connection = matches!(&self.inner, Inner::Http1 { conn: Some(_), .. });
        f.debug_struct("UpstreamBody")
            .field("end_stream", &self.is_end_stream())
            .field("connection", &connection)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn pool(addr: SocketAddr) -> Arc<TargetPool> {
        Arc::new(TargetPool::new(
            Endpoint {
                address: Address::Ip(addr),
                tls: None,
                protocol: super::super::Protocol::Http1,
            },
            Limits {
                connect_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(10),
                max_idle: 8,
                max_connections: 8,
            },
            prometheus::IntGauge::new("reachable", "test").unwrap(),
        ))
    }

    async fn http1_connection(pool: &TargetPool) -> Box<H1Conn> {
        match pool.connect().await.unwrap() {
            Connected::Http1(conn) => conn,
            Connected::H2(_) => panic!("an HTTP/1.1 endpoint"),
        }
    }

    #[tokio::test]
    async fn a_worker_takes_back_only_the_connections_it_opened() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = pool(upstream.local_addr().unwrap());
        let mut opened = Vec::new();
        for worker in [1, 2, 1] {
            crate::worker::pretend_to_be(worker);
            opened.push(http1_connection(&pool).await);
        }
        let mut idle = IdleList::default();
        let mut at = Vec::new();
        for conn in opened {
            let since = Instant::now();
            at.push(since);
            idle.push(Idle { conn, since });
        }
        assert_eq!(idle.len, 3);
        assert!(idle.take(3).is_none(), "none of its own: it opens one");
        let own = idle.take(2).unwrap();
        assert_eq!(
            (own.conn.home(), own.since),
            (2, at[1]),
            "its own, not the newest"
        );
        assert!(idle.take(2).is_none());
        assert_eq!(
            idle.take(1).unwrap().since,
            at[2],
            "the most recently returned first"
        );
        assert_eq!(idle.take(1).unwrap().since, at[0]);
        assert_eq!(idle.len, 0);
        crate::worker::pretend_to_be(0);
    }

    fn get() -> Request<GatewayBody> {
        Request::get("/")
            .header(http::header::HOST, "x")
            .body(GatewayBody::Empty)
            .unwrap()
    }

    /// Closes the first connection it accepts at once; answers every
    /// request on later ones with `ok`.
    async fn closes_the_first_connection() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            drop(listener.accept().await.unwrap());
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_closed_connection_gives_back_the_request_it_never_wrote() {
        let addr = closes_the_first_connection().await;
        let pool = pool(addr);
        let mut conn = http1_connection(&pool).await;
        tokio::time::sleep(Duration::from_millis(50)).await; // the FIN arrives
        let mut req = get();
        let failure = conn.send(&mut req).await.unwrap_err();
        assert!(!failure.written, "{:?}", failure.error);
        assert!(matches!(failure.error, H1Error::Closed), "{:?}", failure.error);
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_by_the_upstream_is_skipped() {
        let addr = closes_the_first_connection().await;
        let pool = pool(addr);
        let stale = http1_connection(&pool).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.idle_list().push(Idle {
            conn: stale,
            since: Instant::now(),
        });

        let response = pool.try_lease().unwrap().send(&mut get()).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        // The body's end returned the new connection; the stale one is gone.
        assert_eq!(pool.idle_count(), 1);
        let again = pool.try_lease().unwrap().send(&mut get()).await.unwrap();
        assert_eq!(again.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(pool.in_flight(), 0, "the ended bodies gave their leases back");
    }

    #[tokio::test]
    async fn leases_are_capped_and_come_back_when_the_body_ends() {
        let addr = closes_the_first_connection().await;
        let pool = pool(addr);
        let leases: Vec<Lease> = (0..8).map(|_| pool.try_lease().unwrap()).collect();
        assert!(pool.try_lease().is_none(), "max_connections reached");
        assert!(pool.lease_within(Duration::from_millis(20)).await.is_none());
        drop(leases);
        assert_eq!(pool.in_flight(), 0);
        assert!(pool.try_lease().is_some());
    }
}
