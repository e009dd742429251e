//! Our HTTP/1.1 client side of one upstream connection (RFC 9112): the
//! request head written from the request's parts into a buffer the
//! connection keeps, the response head parsed by `httparse` (the parser
//! hyper uses) into a `HeaderMap` whose values are views of one buffer,
//! and the response body framed here. [`super::http1`] says what the
//! request looks like; [`super::pool`] keeps the connections.
//!
//! Why not hyper's client: measured with callgrind (docs/benchmarks.md,
//! issue 13), it was the largest part of the gateway's work per proxied
//! request after hyper's server: the request handed to its dispatcher and
//! the response back through channels, its connection state machine polled
//! around them, and the parse. This module does one exchange as straight-line
//! code in the request's own task.
//!
//! The upstream is a server the operator runs, but a broken or hostile one
//! must not be able to smuggle a second response into a pooled connection
//! or grow the gateway's memory: the head is bounded ([`MAX_HEAD`] bytes,
//! [`MAX_HEADERS`] fields, no obsolete line folding, no space before a
//! colon), the framing follows RFC 9112 §6.3 (differing or invalid lengths
//! are an error; `Transfer-Encoding` with `Content-Length` drops the length
//! and closes the connection after the response), chunk lines and trailers
//! are bounded (trailers are read and dropped, as nginx does by default),
//! and a connection with bytes left after a response is closed, never
//! read as the next one.

use std::fmt::Write as _;
use std::future::{Future, poll_fn};
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::AsyncWrite;

use super::connect::UpstreamStream;
use crate::body::GatewayBody;

/// The largest response head read (nginx's `proxy_buffer_size` is 4 or 8 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a response head may have (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// Fields a response head's map has room for beyond its own: the default
/// security headers (five, six with HSTS), `X-Request-Id`, and the five
/// rate-limit headers.
const RESPONSE_HEADROOM: usize = 16;
/// How much room a read gets.
const READ_SIZE: usize = 8 * 1024;
/// A body in memory up to this size goes out in the head's write.
const INLINE_BODY: usize = 16 * 1024;
/// The longest chunk extension, and all trailers together.
const MAX_CHUNK_EXTENSION: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("upstream I/O failed")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before the response was complete")]
    Closed,
    #[error("the upstream's response is malformed: {0}")]
    Malformed(&'static str),
    /// The client's body failed while it was being sent: its source is the
    /// `BodyError` (boxed as a trait object, so that walking the chain
    /// finds it; the two error types contain each other).
    #[error("the request body failed")]
    ClientBody(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the request body does not match its Content-Length")]
    BodyLength,
}

/// A failed exchange, and whether any byte of the request was written
/// (if not, the request may go to another connection whatever its method).
#[derive(Debug)]
pub struct Failure {
    pub error: H1Error,
    pub written: bool,
}

/// A response head, and how its body is read.
#[derive(Debug)]
pub struct Head {
    pub response: Response<()>,
    pub body: BodyState,
    /// Whether the connection may carry another request once the body ended.
    pub keep_alive: bool,
    /// The request body, when the head came before all of it was sent.
    pub upload: Option<Box<Upload>>,
}

/// A request body being sent: what is framed and not yet written, and
/// what the body has not given yet.
#[derive(Debug)]
pub struct Upload {
    body: GatewayBody,
    length: RequestLength,
    sent: u64,
    pending: Bytes,
    /// The body ended (and, chunked, its last chunk is in `pending`).
    ended: bool,
}

impl Upload {
    fn new(body: GatewayBody, length: RequestLength) -> Self {
        Upload {
            body,
            length,
            sent: 0,
            pending: Bytes::new(),
            ended: false,
        }
    }

    /// Writes what the body has ready; `Ready(Ok)` once all of it is written.
    fn poll_send(
        &mut self,
        io: &mut UpstreamStream,
        cx: &mut Context<'_>,
        written: &mut bool,
    ) -> Poll<Result<(), H1Error>> {
        loop {
            while !self.pending.is_empty() {
                match ready!(Pin::new(&mut *io).poll_write(cx, &self.pending)) {
                    Ok(0) => return Poll::Ready(Err(H1Error::Io(io::ErrorKind::WriteZero.into()))),
                    Ok(n) => {
                        *written = true;
                        self.pending.advance(n);
                    }
                    Err(error) => return Poll::Ready(Err(error.into())),
                }
            }
            if self.ended {
                return Pin::new(&mut *io).poll_flush(cx).map_err(H1Error::from);
            }
            ready!(self.poll_next(cx))?;
        }
    }

    /// Frames the body's next bytes into `pending` (or marks its end).
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        while self.pending.is_empty() && !self.ended {
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    match self.length {
                        RequestLength::Fixed(n) if self.sent != n => {
                            return Poll::Ready(Err(H1Error::BodyLength));
                        }
                        RequestLength::Fixed(_) => {}
                        RequestLength::Chunked => self.pending = Bytes::from_static(b"0\r\n\r\n"),
                    }
                    self.ended = true;
                }
                Some(Err(error)) => return Poll::Ready(Err(H1Error::ClientBody(Box::new(error)))),
                Some(Ok(frame)) => {
                    // Trailers are not sent on: most servers drop them.
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    self.sent += data.len() as u64;
                    self.pending = match self.length {
                        RequestLength::Fixed(n) if self.sent > n => {
                            return Poll::Ready(Err(H1Error::BodyLength));
                        }
                        RequestLength::Fixed(_) => data,
                        RequestLength::Chunked => {
                            let mut framed = BytesMut::with_capacity(data.len() + 20);
                            let _ = write!(framed, "{:x}\r\n", data.len());
                            framed.extend_from_slice(&data);
                            framed.extend_from_slice(b"\r\n");
                            framed.freeze()
                        }
                    };
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Where a response body is.
#[derive(Debug)]
pub enum BodyState {
    /// This many bytes still to come.
    Fixed(u64),
    Chunked(Chunked),
    /// Until the upstream closes the connection.
    UntilClose,
    Done,
}

/// How a request body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestLength {
    Fixed(u64),
    Chunked,
}

/// One upstream connection.
pub struct H1Conn {
    io: UpstreamStream,
    /// Bytes read and not yet used: a response head, body bytes.
    buf: BytesMut,
    /// The request head (and a small body), reused from request to request.
    out: Vec<u8>,
    /// The worker whose runtime the socket is registered with
    /// ([`crate::worker::current`] when it was opened).
    home: u16,
}

impl H1Conn {
    pub fn new(io: UpstreamStream) -> Self {
        H1Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            home: crate::worker::current(),
        }
    }

    /// See [`H1Conn::home`].
    pub fn home(&self) -> u16 {
        self.home
    }

    /// Whether an idle connection can take another request: nothing has
    /// arrived on it, not even an EOF. Polls without a waker and outside
    /// tokio's cooperative budget (whose forced `Pending` would say yes).
    pub fn reusable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = tokio::task::unconstrained(poll_fn(|cx| Poll::Ready(self.poll_fill(cx))));
        matches!(Pin::new(&mut probe).poll(&mut cx), Poll::Ready(Poll::Pending))
    }

    /// Sends `req` and reads the response head. The request's head is left
    /// as it was, and so is a body in memory; [`Failure::written`] false
    /// means the request is whole and none of it went out.
    pub async fn send(&mut self, req: &mut Request<GatewayBody>) -> Result<Head, Failure> {
        // An EOF that came in while the connection was idle fails it here,
        // before a byte is written, so the request can go elsewhere.
        if !self.reusable() {
            return Err(Failure {
                error: H1Error::Closed,
                written: false,
            });
        }
        let mut written = false;
        match self.exchange(req, &mut written).await {
            Ok(head) => Ok(head),
            Err(error) => Err(Failure { error, written }),
        }
    }

    async fn exchange(
        &mut self,
        req: &mut Request<GatewayBody>,
        written: &mut bool,
    ) -> Result<Head, H1Error> {
        let head_request = req.method() == Method::HEAD;
        let length = encode_head(&mut self.out, req);
        // A body in memory that fits goes out with the head, and stays in
        // the request (nothing is taken from it until the head is out).
        let inline = match (req.body(), length) {
            (GatewayBody::Full(Some(bytes)), RequestLength::Fixed(n))
                if bytes.len() <= INLINE_BODY && bytes.len() as u64 == n =>
            {
                self.out.extend_from_slice(bytes);
                true
            }
            _ => false,
        };
        let body_left = !inline && length != RequestLength::Fixed(0) && !req.body().is_end_stream();
        let mut upload = None;
        if body_left {
            // The head goes out with the body's first bytes (hyper's order):
            // a body that fails at once, or never starts, sends nothing
            // upstream. A body in memory stays in the request (a cheap
            // copy), so it can be sent again; a streamed one is taken, and
            // from here on the request cannot be sent elsewhere.
            let body = match req.body() {
                GatewayBody::Full(bytes) => GatewayBody::Full(bytes.clone()),
                _ => {
                    *written = true;
                    std::mem::take(req.body_mut())
                }
            };
            let mut body = Box::new(Upload::new(body, length));
            poll_fn(|cx| body.poll_next(cx)).await?;
            if body.pending.len() <= INLINE_BODY {
                self.out.extend_from_slice(&body.pending);
                body.pending.clear();
            }
            upload = Some(body);
        }
        let out = std::mem::take(&mut self.out);
        let sent = self.write_all(&out, written).await;
        self.out = out;
        sent?;
        if upload.is_none() {
            poll_fn(|cx| Pin::new(&mut self.io).poll_flush(cx)).await?;
        }
        // The body is sent while the head is awaited: an upstream may answer
        // before reading it (a 413, a 401), or stream its answer while the
        // client still streams the request (an echo); then the rest of the
        // body goes on being sent beside the response body.
        let mut head = poll_fn(|cx| {
            if let Some(body) = &mut upload {
                match body.poll_send(&mut self.io, cx, written) {
                    Poll::Ready(Ok(())) => upload = None,
                    Poll::Ready(Err(H1Error::Io(error))) => {
                        // The upstream may have answered and closed: its answer wins.
                        let mut quiet = Context::from_waker(Waker::noop());
                        return match self.poll_head(&mut quiet, head_request) {
                            Poll::Ready(Ok(head)) => Poll::Ready(Ok(closing(head))),
                            _ => Poll::Ready(Err(H1Error::Io(error))),
                        };
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {}
                }
            }
            self.poll_head(cx, head_request)
        })
        .await?;
        head.upload = upload;
        Ok(head)
    }

    async fn write_all(&mut self, mut data: &[u8], written: &mut bool) -> Result<(), H1Error> {
        poll_fn(|cx| {
            while !data.is_empty() {
                match ready!(Pin::new(&mut self.io).poll_write(cx, data)) {
                    Ok(0) => return Poll::Ready(Err(H1Error::Io(io::ErrorKind::WriteZero.into()))),
                    Ok(n) => {
                        *written = true;
                        data = &data[n..];
                    }
                    Err(error) => return Poll::Ready(Err(error.into())),
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Sends more of a request body that outlived its response head;
    /// `Ready(Ok)` once it is all sent.
    pub fn poll_upload(&mut self, upload: &mut Upload, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        upload.poll_send(&mut self.io, cx, &mut true)
    }

    /// Reads until a final response head is complete.
    fn poll_head(&mut self, cx: &mut Context<'_>, head_request: bool) -> Poll<Result<Head, H1Error>> {
        loop {
            if !self.buf.is_empty()
                && let Some(head) = parse_response(&mut self.buf, head_request)?
            {
                return Poll::Ready(Ok(head));
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(H1Error::Closed)),
                Ok(_) => {}
                Err(error) => return Poll::Ready(Err(error.into())),
            }
        }
    }

    /// Reads what the upstream has sent into `buf`; `Ok(0)` is its EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// The next piece of a response body, `None` at its end.
    pub fn poll_body(
        &mut self,
        state: &mut BodyState,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, H1Error>>> {
        loop {
            match state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Fixed(remaining) if !self.buf.is_empty() => {
                    let n = (*remaining).min(self.buf.len() as u64);
                    *remaining -= n;
                    let data = self.buf.split_to(n as usize).freeze();
                    if *remaining == 0 {
                        *state = BodyState::Done;
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                BodyState::UntilClose if !self.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(self.buf.split().freeze())));
                }
                BodyState::Chunked(chunked) => match chunked.decode(&mut self.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(Decoded::End) => {
                        *state = BodyState::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::More) => {}
                    Err(error) => return Poll::Ready(Some(Err(error))),
                },
                BodyState::Fixed(_) | BodyState::UntilClose => {}
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if matches!(state, BodyState::UntilClose) => {
                    *state = BodyState::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(H1Error::Closed))),
                Ok(_) => {}
                Err(error) => return Poll::Ready(Some(Err(error.into()))),
            }
        }
    }

    /// Whether the exchange left nothing behind (a response followed by
    /// more bytes is a broken or hostile upstream: the connection closes).
    pub fn clean(&self) -> bool {
        self.buf.is_empty()
    }
}

/// A head that came with the request cut short (the upstream closed under
/// the write): the connection cannot be used again.
fn closing(mut head: Head) -> Head {
    head.keep_alive = false;
    head
}

/// Writes the request line and fields into `out` and says how the body is
/// framed, as hyper's client did: an empty body sends no framing field, a
/// valid `Content-Length` the client sent is kept, a body of known size
/// gets one, and one of unknown size goes chunked (or, on GET, HEAD and
/// CONNECT, is not sent). `Transfer-Encoding` is the gateway's to write.
fn encode_head(out: &mut Vec<u8>, req: &Request<GatewayBody>) -> RequestLength {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let headers = req.headers();
    let body = req.body();
    let declared = content_length(headers);
    let (length, keep_declared) = if body.is_end_stream() {
        (RequestLength::Fixed(0), true)
    } else if headers.contains_key(header::TRANSFER_ENCODING) {
        (RequestLength::Chunked, false)
    } else if let Ok(Some(n)) = declared {
        (RequestLength::Fixed(n), true)
    } else if let Some(n) = body.size_hint().exact() {
        (RequestLength::Fixed(n), false)
    } else if matches!(*req.method(), Method::GET | Method::HEAD | Method::CONNECT) {
        (RequestLength::Fixed(0), false)
    } else {
        (RequestLength::Chunked, false)
    };
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING || (name == header::CONTENT_LENGTH && !keep_declared) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match length {
        RequestLength::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        RequestLength::Fixed(n) if !keep_declared && n > 0 => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        RequestLength::Fixed(_) => {}
    }
    out.extend_from_slice(b"\r\n");
    length
}

/// The body length every `Content-Length` field agrees on (`5, 5` counts
/// as 5, RFC 9110 §8.6); `Ok(None)` without one, `Err` when they differ or
/// one is not a number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let digits = part.trim_ascii();
            if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|seen| seen != n) {
                return Err(());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether the last coding of `Transfer-Encoding` is `chunked`.
fn ends_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
        .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether `Connection` lists `token`.
fn connection_has(headers: &HeaderMap, token: &[u8]) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// Parses a final response head off the front of `buf` (skipping interim
/// 1xx heads other than 101); `None` until one is complete.
fn parse_response(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, H1Error> {
    loop {
        // Uninitialised: zeroing room for 100 fields on every parse costs
        // more than parsing a small head.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
            Ok(_) => return Err(H1Error::Malformed("the response head is too large")),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(H1Error::Malformed("the response head has too many fields"));
            }
            Err(_) => return Err(H1Error::Malformed("the response head is not HTTP/1.x")),
        };
        let code = parsed.code.unwrap_or_default();
        let status =
            StatusCode::from_u16(code).map_err(|_| H1Error::Malformed("the status code is invalid"))?;
        if status.is_informational() && code != 101 {
            // 100 Continue, 102, 103 Early Hints: the final head follows.
            buf.advance(len);
            continue;
        }
        let version = if parsed.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        // Where each field is in `buf`, so that the values can be views of
        // the head's bytes once they are split off.
        let base = buf.as_ptr() as usize;
        // (Offsets fit in u32: the head is at most MAX_HEAD bytes.)
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let count = parsed.headers.len();
        for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
            let name = field.name.as_bytes();
            *span = (
                (name.as_ptr() as usize - base) as u32,
                name.len() as u32,
                (field.value.as_ptr() as usize - base) as u32,
                field.value.len() as u32,
            );
        }
        let bytes = buf.split_to(len).freeze();
        // Room for what the response stages add (the security headers, the
        // request ID): growing the map later re-hashes every field, which
        // cost ~880 instructions a response (callgrind).
        let mut headers = HeaderMap::with_capacity(count + RESPONSE_HEADROOM);
        for &(name, name_len, value, value_len) in &spans[..count] {
            let (name, value) = (name as usize, value as usize);
            let name = HeaderName::from_bytes(&bytes[name..name + name_len as usize])
                .map_err(|_| H1Error::Malformed("a field name is invalid"))?;
            let value = HeaderValue::from_maybe_shared(bytes.slice(value..value + value_len as usize))
                .map_err(|_| H1Error::Malformed("a field value is invalid"))?;
            headers.append(name, value);
        }
        let (body, keep_alive) = framing(status, version, &mut headers, head_request)?;
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some(Head {
            response,
            body,
            keep_alive,
            upload: None,
        }));
    }
}

/// How a response's body is delimited (RFC 9112 §6.3), and whether the
/// connection may be used again after it.
fn framing(
    status: StatusCode,
    version: Version,
    headers: &mut HeaderMap,
    head_request: bool,
) -> Result<(BodyState, bool), H1Error> {
    let mut keep_alive = if version == Version::HTTP_11 {
        !connection_has(headers, b"close")
    } else {
        connection_has(headers, b"keep-alive") && !connection_has(headers, b"close")
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((BodyState::Done, false));
    }
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((BodyState::Done, keep_alive));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(H1Error::Malformed("an HTTP/1.0 response has Transfer-Encoding"));
        }
        // Both: the length is ignored and goes, and so does the connection
        // afterwards, since one of the two framings was meant for someone.
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            keep_alive = false;
        }
        if ends_chunked(headers) {
            return Ok((BodyState::Chunked(Chunked::default()), keep_alive));
        }
        return Ok((BodyState::UntilClose, false));
    }
    match content_length(headers) {
        Ok(Some(0)) => Ok((BodyState::Done, keep_alive)),
        Ok(Some(n)) => Ok((BodyState::Fixed(n), keep_alive)),
        Ok(None) => Ok((BodyState::UntilClose, false)),
        Err(()) => Err(H1Error::Malformed("the Content-Length is invalid")),
    }
}

/// What the chunked decoder found.
enum Decoded {
    Data(Bytes),
    /// Needs more bytes.
    More,
    End,
}

/// The chunked transfer coding's reader (RFC 9112 §7.1).
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// Bytes of the current chunk extension, or of all trailers.
    counted: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Start,
    Size(u64),
    /// Whitespace after the size, before `;` or the line's end.
    SizeSpace(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// The start of a trailer line, or of the empty line that ends the body.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunked {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(Decoded::End),
                ChunkState::Data(_) if buf.is_empty() => return Ok(Decoded::More),
                ChunkState::Data(remaining) => {
                    let n = remaining.min(buf.len() as u64);
                    self.state = match remaining - n {
                        0 => ChunkState::DataCr,
                        left => ChunkState::Data(left),
                    };
                    return Ok(Decoded::Data(buf.split_to(n as usize).freeze()));
                }
                _ => {}
            }
            let Some(&byte) = buf.first() else {
                return Ok(Decoded::More);
            };
            buf.advance(1);
            self.state = self.step(byte)?;
        }
    }

    /// The state after one control byte.
    fn step(&mut self, byte: u8) -> Result<ChunkState, H1Error> {
        use ChunkState::*;
        let bad = |what| Err(H1Error::Malformed(what));
        Ok(match (self.state, byte) {
            (Start, b) if b.is_ascii_hexdigit() => Size(hex(b)),
            (Start, _) => return bad("a chunk size is invalid"),
            (Size(size), b) if b.is_ascii_hexdigit() => {
                if size >> 60 != 0 {
                    return bad("a chunk size is too large");
                }
                Size(size << 4 | hex(b))
            }
            (Size(size) | SizeSpace(size), b' ' | b'\t') => SizeSpace(size),
            (Size(size) | SizeSpace(size), b';') => {
                self.counted = 0;
                Extension(size)
            }
            (Size(size) | SizeSpace(size) | Extension(size), b'\r') => SizeLf(size),
            (Size(_) | SizeSpace(_), _) => return bad("a chunk size is invalid"),
            (Extension(size), b) if b == b'\t' || (b >= 0x20 && b != 0x7f) => {
                self.counted += 1;
                if self.counted > MAX_CHUNK_EXTENSION {
                    return bad("a chunk extension is too long");
                }
                Extension(size)
            }
            (Extension(_), _) => return bad("a chunk extension is invalid"),
            (SizeLf(0), b'\n') => {
                self.counted = 0;
                TrailerStart
            }
            (SizeLf(size), b'\n') => Data(size),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Start,
            (SizeLf(_) | DataCr | DataLf, _) => return bad("a chunk line does not end in CRLF"),
            (TrailerStart, b'\r') => EndLf,
            (EndLf, b'\n') => Done,
            (TrailerLf, b'\n') => TrailerStart,
            (Trailer, b'\r') => TrailerLf,
            (TrailerStart | Trailer, b'\n') | (TrailerLf | EndLf, _) => {
                return bad("a trailer line does not end in CRLF");
            }
            (TrailerStart | Trailer, _) => {
                self.counted += 1;
                if self.counted > MAX_TRAILERS {
                    return bad("the trailers are too large");
                }
                Trailer
            }
            (Data(_) | Done, _) => return bad("the chunked body is out of step"),
        })
    }
}

fn hex(b: u8) -> u64 {
    u64::from(match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Result<Option<Head>, H1Error> {
        parse_response(&mut BytesMut::from(text), false)
    }

    fn decode_all(wire: &[u8]) -> Result<(Vec<u8>, bool), H1Error> {
        let mut chunked = Chunked::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        // A byte at a time: every state must survive a split anywhere.
        for &byte in wire {
            buf.extend_from_slice(&[byte]);
            loop {
                match chunked.decode(&mut buf)? {
                    Decoded::Data(data) => body.extend_from_slice(&data),
                    Decoded::More => break,
                    Decoded::End => return Ok((body, true)),
                }
            }
        }
        Ok((body, false))
    }

    #[test]
    fn a_response_head_is_parsed_with_its_framing() {
        let head = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(head.response.status(), 200);
        assert_eq!(head.response.headers()["x-a"], "1");
        assert!(matches!(head.body, BodyState::Fixed(5)));
        assert!(head.keep_alive);
    }

    #[test]
    fn interim_heads_are_skipped() {
        let head = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.response.status(), 204);
        assert!(matches!(head.body, BodyState::Done));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let chunked =
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(matches!(chunked.body, BodyState::Chunked(_)));
        assert!(!chunked.response.headers().contains_key(header::CONTENT_LENGTH));
        assert!(!chunked.keep_alive, "both framings: the connection closes after");

        let close = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(close.body, BodyState::UntilClose));
        assert!(!close.keep_alive);

        let no_length = parse(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(matches!(no_length.body, BodyState::UntilClose));

        let same = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\nContent-Length: 4\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(same.body, BodyState::Fixed(4)));

        let http10 = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!http10.keep_alive);
        let closing = parse(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!closing.keep_alive);

        let head = parse_response(
            &mut BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"[..]),
            true,
        )
        .unwrap()
        .unwrap();
        assert!(
            matches!(head.body, BodyState::Done),
            "a HEAD response has no body"
        );
    }

    #[test]
    fn broken_or_smuggling_heads_are_refused() {
        for wire in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 4x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"SMTP ready\r\n\r\n",
        ] {
            assert!(parse(wire).is_err(), "{}", String::from_utf8_lossy(wire));
        }
        let many: Vec<u8> = [&b"HTTP/1.1 200 OK\r\n"[..]]
            .into_iter()
            .chain(std::iter::repeat_n(&b"X-A: 1\r\n"[..], MAX_HEADERS + 1))
            .chain([&b"\r\n"[..]])
            .flatten()
            .copied()
            .collect();
        assert!(parse(&many).is_err());
        let mut huge = b"HTTP/1.1 200 OK\r\nX-A: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        assert!(parse(&huge).is_err(), "an endless head is refused before it ends");
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n").unwrap().is_none(),
            "incomplete"
        );
    }

    #[test]
    fn chunked_bodies_decode_split_anywhere() {
        let (body, ended) =
            decode_all(b"5;name=\"v\"\r\nhello\r\n6 \r\n world\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n")
                .unwrap();
        assert!(ended);
        assert_eq!(body, b"hello world0123456789");
        let (body, ended) = decode_all(b"0\r\n\r\n").unwrap();
        assert!(ended && body.is_empty());
    }

    #[test]
    fn broken_chunked_bodies_are_refused() {
        for wire in [
            &b"5\r\nhelloX\r\n0\r\n\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"x\r\n",
            b"5 5\r\nhello\r\n",
            b"-5\r\n",
            b"11111111111111111\r\n",
            b"0\r\nX-T: 1\n\r\n",
            b"5;a\x00\r\n",
        ] {
            assert!(decode_all(wire).is_err(), "{}", String::from_utf8_lossy(wire));
        }
        let mut long = b"1;".to_vec();
        long.resize(MAX_CHUNK_EXTENSION + 10, b'a');
        assert!(decode_all(&long).is_err());
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILERS / 6 + 1 {
            trailers.extend_from_slice(b"X-T: 1\r\n");
        }
        assert!(decode_all(&trailers).is_err());
    }

    fn encoded(req: Request<GatewayBody>) -> (String, RequestLength) {
        let mut out = Vec::new();
        let length = encode_head(&mut out, &req);
        (String::from_utf8(out).unwrap(), length)
    }

    #[test]
    fn request_heads_are_framed_as_hyper_did() {
        let get = Request::get("/a?b=1")
            .header("host", "x")
            .body(GatewayBody::Empty)
            .unwrap();
        assert_eq!(
            encoded(get),
            (
                "GET /a?b=1 HTTP/1.1\r\nhost: x\r\n\r\n".into(),
                RequestLength::Fixed(0)
            )
        );

        let post = Request::post("/f").body(GatewayBody::full("abc")).unwrap();
        assert_eq!(
            encoded(post),
            (
                "POST /f HTTP/1.1\r\ncontent-length: 3\r\n\r\n".into(),
                RequestLength::Fixed(3)
            )
        );

        let declared = Request::post("/f")
            .header("content-length", "3")
            .header("transfer-encoding", "chunked")
            .body(GatewayBody::full("abc"))
            .unwrap();
        assert_eq!(
            encoded(declared),
            (
                "POST /f HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".into(),
                RequestLength::Chunked
            )
        );
    }
}
