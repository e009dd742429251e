//! The one body type the gateway sends and receives, so that no request or
//! response body needs a heap-allocated trait object.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::pool::UpstreamBody;

/// Why a body stopped short.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The peer's body failed (cut short, malformed, reset). Its source is
    /// hyper's error, so the cause can be found by walking the chain.
    #[error("the body failed: {0}")]
    Hyper(#[from] hyper::Error),
    /// A client body went past its route's size limit; the bytes past the
    /// limit were never passed on.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
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

    /// Puts a size limit on a client body; other bodies are left as they are.
    pub fn limit(self, limit: u64) -> Self {
        match self {
            GatewayBody::Streamed(inner) => GatewayBody::Limited(LimitedBody {
                inner,
                remaining: limit,
                limit,
            }),
            other => other,
        }
    }
}

impl From<Incoming> for GatewayBody {
    fn from(body: Incoming) -> Self {
        GatewayBody::Streamed(body)
    }
}

/// A client body that fails, without passing on the chunk that crossed
/// it, once more than `limit` bytes arrived: an upstream request with this
/// body is aborted rather than completed.
#[derive(Debug)]
pub struct LimitedBody {
    inner: Incoming,
    remaining: u64,
    limit: u64,
}

impl LimitedBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.remaining {
                self.remaining = 0;
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
            GatewayBody::Upstream(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::from),
            GatewayBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Streamed(body) => body.is_end_stream(),
            GatewayBody::Limited(body) => body.inner.is_end_stream(),
            GatewayBody::Upstream(body) => body.is_end_stream(),
            GatewayBody::Full(bytes) => bytes.is_none(),
            GatewayBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Streamed(body) => body.size_hint(),
            GatewayBody::Limited(body) => body.inner.size_hint(),
            GatewayBody::Upstream(body) => body.size_hint(),
            GatewayBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            GatewayBody::Full(None) | GatewayBody::Empty => SizeHint::with_exact(0),
        }
    }
}
