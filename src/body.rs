//! The one body type the gateway sends and receives, so that no request or
//! response body needs a heap-allocated trait object.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::upstream::pool::UpstreamBody;

/// Why a body stopped short.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The peer's body failed (cut short, malformed, reset). Its source is
    /// hyper's error, so the cause can be found by walking the chain.
    #[error("the body failed: {0}")]
    Hyper(#[from] hyper::Error),
    /// An upstream's HTTP/1.1 response body failed (cut short, malformed).
    #[error("the upstream body failed: {0}")]
    Upstream(#[from] crate::upstream::h1::H1Error),
    /// A client body went past its route's size limit; the bytes past the
    /// limit were never passed on.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// A client body arrived slower than the listener's pace allows
    /// (slow-POST).
    #[error("the request body arrived too slowly")]
    TooSlow,
}

/// How fast a client body must arrive (Apache's `mod_reqtimeout`): within
/// `timeout` of its first read, extended by a second for every
/// `min_rate` bytes received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    pub timeout: Duration,
    /// Bytes per second; 0: no extension, the whole body within `timeout`.
    pub min_rate: u64,
}

impl Pace {
    fn deadline(&self, started: tokio::time::Instant, received: u64) -> tokio::time::Instant {
        let earned = received
            .saturating_mul(1000)
            .checked_div(self.min_rate)
            .map_or(Duration::ZERO, Duration::from_millis);
        started + self.timeout + earned
    }
}

/// A body's pace check: when it began, and the timer that fires if the
/// client sends nothing more in time (made on the first wait).
#[derive(Debug)]
struct Paced {
    pace: Pace,
    started: tokio::time::Instant,
    received: u64,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Paced {
    fn new(pace: Pace) -> Paced {
        Paced {
            pace,
            started: tokio::time::Instant::now(),
            received: 0,
            timer: None,
        }
    }

    /// After `len` more bytes: whether the body is still within its pace.
    fn received(&mut self, len: u64) -> bool {
        self.received += len;
        tokio::time::Instant::now() <= self.pace.deadline(self.started, self.received)
    }

    /// While waiting for the client: `Ready` when its time is up.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.pace.deadline(self.started, self.received);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx)
    }
}

/// A body streamed from a peer, a fixed buffer, or nothing.
#[derive(Debug, Default)]
pub enum GatewayBody {
    /// Streamed as it arrives from the client.
    Streamed(Incoming),
    /// Streamed from the client, up to a size limit.
    Limited(LimitedBody),
    /// Streamed from an upstream connection, which it drives and then
    /// returns to its pool.
    Upstream(UpstreamBody),
    /// A complete body the gateway holds (problem documents, demo answers).
    Full(Option<Bytes>),
    #[default]
    Empty,
}

impl GatewayBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        GatewayBody::Full(Some(bytes.into()))
    }

    /// Lets go of an HTTP/1 client body the gateway will not use (see
    /// [`linger`]). HTTP/2 needs no such care: the stream is reset, and the
    /// connection carries on.
    ///
    /// A limited body is only made in the body phase, after which the
    /// request goes upstream; it lingers by itself when it must.
    pub fn linger(self) {
        if let GatewayBody::Streamed(body) = self {
            linger(body)
        }
    }

    /// Puts a size limit, and a pace when given, on a client body; other
    /// bodies are left as they are. `http1`: what the client sends past
    /// the limit is read and discarded for a while ([`linger`]).
    pub fn limit(self, limit: u64, http1: bool, pace: Option<Pace>) -> Self {
        match self {
            GatewayBody::Streamed(inner) => GatewayBody::Limited(LimitedBody {
                inner: Some(inner),
                remaining: limit,
                limit,
                linger_on_excess: http1,
                paced: pace.map(|pace| Box::new(Paced::new(pace))),
                too_slow: false,
            }),
            other => other,
        }
    }
}

/// Reads a client body whole, up to `limit` bytes, for a stage that must
/// see all of it (a form's CSRF token, a JSON document to validate); the
/// request keeps the bytes, so the upstream receives them unchanged.
pub async fn buffer(
    req: &mut http::Request<GatewayBody>,
    limit: u64,
) -> Result<Bytes, crate::error::GatewayError> {
    use crate::error::GatewayError;
    use http_body_util::BodyExt;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    let body = std::mem::take(req.body_mut());
    let bytes = match http_body_util::Limited::new(body, limit as usize).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        Err(e) => match e.downcast::<BodyError>() {
            Ok(inner) if matches!(*inner, BodyError::TooLarge { .. }) => {
                return Err(GatewayError::PayloadTooLarge { limit });
            }
            Ok(inner) if matches!(*inner, BodyError::TooSlow) => return Err(GatewayError::RequestTimeout),
            _ => return Err(GatewayError::bad_request("the request body could not be read")),
        },
    };
    *req.body_mut() = GatewayBody::full(bytes.clone());
    Ok(bytes)
}

impl From<Incoming> for GatewayBody {
    fn from(body: Incoming) -> Self {
        GatewayBody::Streamed(body)
    }
}

/// How long, and how much of, a client body the gateway will not use is
/// still read and discarded, so the client can finish sending and read the
/// answer (a 413, a 401) instead of meeting a reset connection: nginx's
/// lingering close.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: u64 = 16 << 20;

/// Reads and discards the rest of `body`, within [`LINGER_TIME`] and
/// [`LINGER_BYTES`], in a task of its own; then drops it, which makes hyper
/// close the connection if the body was not all read.
pub fn linger(mut body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let deadline = tokio::time::Instant::now() + LINGER_TIME;
        let mut read = 0u64;
        while read <= LINGER_BYTES {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
                _ => return,
            }
        }
    });
}

/// A client body that fails, without passing on the chunk that crossed
/// it, once more than `limit` bytes arrived: an upstream request with this
/// body is aborted rather than completed. What the client still sends is
/// read and discarded for a while ([`linger`]).
#[derive(Debug)]
pub struct LimitedBody {
    /// `None` once the limit was crossed.
    inner: Option<Incoming>,
    remaining: u64,
    limit: u64,
    linger_on_excess: bool,
    /// Boxed: most of the time nobody looks at it, and inline it would
    /// make every `GatewayBody` (and so every response) larger.
    paced: Option<Box<Paced>>,
    /// The pace was missed (and `inner` dropped, which closes an HTTP/1
    /// connection: the rest of the body is never read).
    too_slow: bool,
}

impl LimitedBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Some(Err(if self.too_slow {
                BodyError::TooSlow
            } else {
                BodyError::TooLarge { limit: self.limit }
            })));
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {
                if let Some(paced) = &mut self.paced
                    && paced.poll_expired(cx).is_ready()
                {
                    self.inner = None;
                    self.too_slow = true;
                    return Poll::Ready(Some(Err(BodyError::TooSlow)));
                }
                return Poll::Pending;
            }
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if let Some(paced) = &mut self.paced
                && !paced.received(len)
            {
                self.inner = None;
                self.too_slow = true;
                return Poll::Ready(Some(Err(BodyError::TooSlow)));
            }
            if len > self.remaining {
                self.remaining = 0;
                if let Some(inner) = self.inner.take()
                    && self.linger_on_excess
                {
                    linger(inner);
                }
                return Poll::Ready(Some(Err(BodyError::TooLarge { limit: self.limit })));
            }
            self.remaining -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            GatewayBody::Streamed(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::from),
            GatewayBody::Limited(body) => body.poll_frame(cx),
            GatewayBody::Upstream(body) => Pin::new(body).poll_frame(cx),
            GatewayBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Streamed(body) => body.is_end_stream(),
            GatewayBody::Limited(body) => body.inner.as_ref().is_none_or(Incoming::is_end_stream),
            GatewayBody::Upstream(body) => body.is_end_stream(),
            GatewayBody::Full(bytes) => bytes.is_none(),
            GatewayBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Streamed(body) => body.size_hint(),
            GatewayBody::Limited(body) => body
                .inner
                .as_ref()
                .map_or(SizeHint::with_exact(0), Incoming::size_hint),
            GatewayBody::Upstream(body) => body.size_hint(),
            GatewayBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            GatewayBody::Full(None) | GatewayBody::Empty => SizeHint::with_exact(0),
        }
    }
}
