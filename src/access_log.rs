//! The end of every request: one access-log line and the route's metrics,
//! written when the response body has been sent (or the client went away),
//! so durations and byte counts cover the whole exchange.
//!
//! The line never carries the query string, a header value, a cookie or a
//! key: only the normalised path and facts the gateway decided.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::body::GatewayBody;
use crate::pipeline::RequestCx;

/// What is known about a request once its response head is decided.
pub struct Completion {
    pub cx: RequestCx,
    pub method: Method,
    /// The request target as received (its path is logged when routing did
    /// not normalise it; its query never is).
    pub uri: http::Uri,
    pub status: StatusCode,
}

/// A response body that reports the request's completion when dropped.
pub struct CompletionBody {
    inner: GatewayBody,
    bytes_sent: u64,
    completion: Option<Box<Completion>>,
}

impl CompletionBody {
    pub fn new(inner: GatewayBody, completion: Completion) -> Self {
        CompletionBody {
            inner,
            bytes_sent: 0,
            completion: Some(Box::new(completion)),
        }
    }
}

impl Body for CompletionBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(data) = frame.data_ref()
        {
            this.bytes_sent += data.len() as u64;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CompletionBody {
    fn drop(&mut self) {
        if let Some(done) = self.completion.take() {
            done.cx.connection.request_finished();
            finish(&done, self.bytes_sent);
        }
    }
}

fn finish(done: &Completion, bytes_sent: u64) {
    let cx = &done.cx;
    let elapsed = cx.started.elapsed();
    let status = done.status.as_u16();
    let route = cx.route();
    match route {
        Some(route) => route.metrics.record(status, elapsed),
        None => cx.policy.metrics_unrouted.record(status, elapsed),
    }
    if !cx.policy.access_log {
        return;
    }
    let path = cx.rewritten_path.as_deref().unwrap_or(done.uri.path());
    tracing::info!(
        target: "access",
        request_id = cx.request_id(),
        client_ip = %cx.client_ip,
        method = done.method.as_str(),
        route = route.map(|r| &*r.id),
        path,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        upstream_ms = cx.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
        bytes_sent,
        consumer = cx.principal.as_ref().map(|p| p.consumer()),
    );
}
