//! The logging phase runs exactly once per request, however it ends.
//!
//! An [`Exchange`] is made when a request arrives and owns its context. If
//! the request is abandoned before its response is ready (the client
//! disconnects, or resets its HTTP/2 stream, and hyper drops the handler),
//! dropping the exchange logs it with status 499, as nginx does. Otherwise
//! [`Exchange::respond`] moves the context into the response body, which
//! logs when it is dropped: after the last byte was sent, or when the client
//! went away mid-body (then with `completed = false`). Either way the
//! connection's in-flight count goes back down exactly once.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};

use super::{Pipeline, RequestCx};
use crate::body::{BodyError, GatewayBody};
use crate::connection::Connection;

/// The status logged for a request whose client went away before the
/// response was ready (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// What the logging phase knows of a finished request.
pub struct Finished<'a> {
    pub method: &'a Method,
    /// The request target as received (its path is logged when routing did
    /// not normalise it; its query never is).
    pub uri: &'a Uri,
    pub status: u16,
    pub bytes_sent: u64,
    /// Whether the response body was sent to its end.
    pub completed: bool,
}

struct Record {
    pipeline: Arc<Pipeline>,
    cx: RequestCx,
    method: Method,
    uri: Uri,
}

impl Record {
    fn finish(&self, status: u16, bytes_sent: u64, completed: bool) {
        self.cx.connection.request_finished();
        self.pipeline.log(
            &self.cx,
            &Finished {
                method: &self.method,
                uri: &self.uri,
                status,
                bytes_sent,
                completed,
            },
        );
    }
}

/// A request from its arrival to its log line.
pub struct Exchange {
    /// Boxed so that handing it to the response body moves a pointer.
    record: Option<Box<Record>>,
}

impl Exchange {
    pub fn begin<B>(pipeline: Arc<Pipeline>, connection: Arc<Connection>, req: &Request<B>) -> Exchange {
        connection.request_started();
        Exchange {
            record: Some(Box::new(Record {
                pipeline,
                cx: RequestCx::new(connection, req.version()),
                method: req.method().clone(),
                uri: req.uri().clone(),
            })),
        }
    }

    /// The pipeline and the request's context, to run the request.
    pub fn parts(&mut self) -> (&Arc<Pipeline>, &mut RequestCx) {
        let record = self.record.as_mut().expect("present until respond or drop");
        (&record.pipeline, &mut record.cx)
    }

    /// Hands the record to the response body, which logs when it is done.
    pub fn respond(mut self, response: Response<GatewayBody>) -> Response<LoggedBody> {
        let record = self.record.take();
        let status = response.status();
        response.map(|inner| LoggedBody {
            inner,
            status,
            bytes_sent: 0,
            ended: false,
            record,
        })
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.finish(CLIENT_CLOSED, 0, false);
        }
    }
}

/// A response body that runs the logging phase when it is dropped.
pub struct LoggedBody {
    inner: GatewayBody,
    status: StatusCode,
    bytes_sent: u64,
    ended: bool,
    record: Option<Box<Record>>,
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_sent += data.len() as u64;
                }
                this.ended = this.inner.is_end_stream();
            }
            Poll::Ready(None) => this.ended = true,
            _ => {}
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

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            // hyper never polls a body that is empty from the start.
            let completed = self.ended || self.inner.is_end_stream();
            record.finish(self.status.as_u16(), self.bytes_sent, completed);
        }
    }
}
