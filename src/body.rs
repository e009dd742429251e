//! The one body type the gateway sends and receives, so that no request or
//! response body needs a heap-allocated trait object.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::proxy::pool::UpstreamBody;

/// A body streamed from a peer, a fixed buffer, or nothing.
#[derive(Debug, Default)]
pub enum GatewayBody {
    /// Streamed as it arrives from the client.
    Streamed(Incoming),
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
}

impl From<Incoming> for GatewayBody {
    fn from(body: Incoming) -> Self {
        GatewayBody::Streamed(body)
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            GatewayBody::Streamed(body) => Pin::new(body).poll_frame(cx),
            GatewayBody::Upstream(body) => Pin::new(body).poll_frame(cx),
            GatewayBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Streamed(body) => body.is_end_stream(),
            GatewayBody::Upstream(body) => body.is_end_stream(),
            GatewayBody::Full(bytes) => bytes.is_none(),
            GatewayBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Streamed(body) => body.size_hint(),
            GatewayBody::Upstream(body) => body.size_hint(),
            GatewayBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            GatewayBody::Full(None) | GatewayBody::Empty => SizeHint::with_exact(0),
        }
    }
}
