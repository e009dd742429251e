//! A read-side tap on each client connection that notes how every HTTP/1
//! request head was framed on the wire, before hyper parses it, and when
//! each head began (for the header read timeout, see [`super`]).
//!
//! hyper resolves some ambiguous framings on its own, and in doing so hides
//! them: with both `Content-Length` and `Transfer-Encoding` it drops the
//! length (and closes the connection afterwards), and it folds repeated equal
//! `Content-Length` lines into one. That is safe, but the gateway's policy is
//! to refuse such requests outright, so this tap counts the framing headers
//! in the raw bytes and queues one [`RawFraming`] per request head; the
//! framing stage takes them in order, one per request.
//!
//! To find where each head starts, the tap follows message framing itself:
//! fixed-length and chunked bodies are skipped using `httparse`, the parser
//! hyper uses. Anything it cannot follow (HTTP/2, a malformed head, which
//! hyper then refuses) switches it off for the rest of the connection, and
//! requests it has no record for are refused by the framing stage.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Connection;

/// How many framing headers one request head carried on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawFraming {
    pub content_lengths: u8,
    pub transfer_encodings: u8,
}

/// Records waiting for their requests. hyper reads at most
/// `server.max_header_size` ahead, so with the default that is a few
/// thousand of the smallest requests; past this the tap stops, and requests
/// it has no record for are refused.
const MAX_PENDING: usize = 4096;
/// Largest head, chunk-size line or trailer section the tap will buffer.
const MAX_BUFFERED: usize = 1024 * 1024;
const MAX_HEADERS: usize = 128;
/// The most header fields hyper can be configured to accept (twice the
/// largest `max_header_count`).
pub const MAX_HEADERS_EVER: usize = 2000;

/// The per-connection queue of framing records.
#[derive(Debug, Default)]
pub struct WireLog {
    pending: Mutex<VecDeque<RawFraming>>,
    /// Only time heads, keep no records (a listener with no framing stage).
    timing_only: bool,
}

impl WireLog {
    /// A log that keeps no framing records, for a listener whose requests
    /// never pass the framing stage (the admin listener).
    pub fn timing_only() -> WireLog {
        WireLog {
            timing_only: true,
            ..WireLog::default()
        }
    }

    /// The record for the next request, if the tap has one.
    pub fn next_request(&self) -> Option<RawFraming> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }

    fn push(&self, record: RawFraming) -> bool {
        if self.timing_only {
            return true;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= MAX_PENDING {
            return false;
        }
        pending.push_back(record);
        true
    }
}

#[derive(Debug)]
enum State {
    /// Reading a request head (bytes buffered so far).
    Head(Vec<u8>),
    /// Skipping a body of known length.
    Fixed(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data.
    ChunkData(u64),
    /// Skipping the CRLF after chunk data.
    ChunkEnd(u8),
    /// Reading the trailer section after the last chunk.
    Trailers(Vec<u8>),
    /// Not following this connection any more.
    Off,
}

/// Follows HTTP/1 message boundaries over a byte stream.
#[derive(Debug)]
pub struct Tracker {
    state: State,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            state: State::Head(Vec::new()),
        }
    }
}

/// What a complete head says about the message that follows.
fn inspect_head(buf: &[u8]) -> Result<Option<(usize, RawFraming, State)>, ()> {
    // Left uninitialised: httparse fills only what it parses, and zeroing
    // 128 entries (4 KiB) for every request head costs more than parsing it.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    match inspect_head_with(buf, &mut headers) {
        // A head with more fields than the common case: as many as hyper is
        // allowed to accept, so the request-head stage can judge it.
        Err(httparse::Error::TooManyHeaders) => {
            let mut many = vec![MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS_EVER];
            inspect_head_with(buf, &mut many).map_err(|_| ())
        }
        other => other.map_err(|_| ()),
    }
}

fn inspect_head_with<'b>(
    buf: &'b [u8],
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<(usize, RawFraming, State)>, httparse::Error> {
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, headers)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let mut record = RawFraming::default();
    let mut length = None;
    let mut last_coding: &[u8] = b"";
    // `Upgrade` and CONNECT are not special here: the gateway switches
    // protocols only on WebSocket routes, and what follows a switch (masked
    // WebSocket frames) is no HTTP head, so the tap switches itself off at
    // its first byte. Everywhere else `Upgrade` is stripped and CONNECT
    // refused, so what follows is always the next HTTP/1 message.
    for h in request.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            record.content_lengths = record.content_lengths.saturating_add(1);
            length = length.or_else(|| std::str::from_utf8(h.value).ok()?.trim().parse::<u64>().ok());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            record.transfer_encodings = record.transfer_encodings.saturating_add(1);
            last_coding = h.value.rsplit(|b| *b == b',').next().unwrap_or(b"").trim_ascii();
        }
    }
    let next = if record.transfer_encodings > 0 {
        if last_coding.eq_ignore_ascii_case(b"chunked") {
            State::ChunkSize(Vec::new())
        } else {
            State::Off
        }
    } else if record.content_lengths > 0 {
        match length {
            Some(0) => State::Head(Vec::new()),
            Some(n) => State::Fixed(n),
            None => State::Off,
        }
    } else {
        State::Head(Vec::new())
    };
    Ok(Some((len, record, next)))
}

/// The longest chunk-size line (size plus extensions) followed; hyper's own
/// limit on chunk extensions is 16 KiB.
const MAX_CHUNK_LINE: usize = 32 * 1024;

enum ChunkLine {
    Complete { used: usize, size: u64 },
    Partial,
    Invalid,
}

/// A chunk-size line: hex digits (any number of leading zeros, as hyper
/// accepts), then optional extensions, then the line end.
fn parse_chunk_line(buf: &[u8]) -> ChunkLine {
    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
        return ChunkLine::Partial;
    };
    let line = &buf[..end];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let significant = line[..digits].iter().skip_while(|b| **b == b'0').count();
    if digits == 0 || significant > 15 {
        return ChunkLine::Invalid;
    }
    let text = std::str::from_utf8(&line[..digits]).unwrap_or("0");
    match u64::from_str_radix(text, 16) {
        Ok(size) => ChunkLine::Complete { used: end + 1, size },
        Err(_) => ChunkLine::Invalid,
    }
}

/// Where the trailer section (after the `0` chunk line) ends, if it has.
fn trailers_end(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        return Some(2);
    }
    if buf.starts_with(b"\n") {
        return Some(1);
    }
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

impl Tracker {
    /// Between messages: what comes next is a new request head.
    fn at_boundary(&self) -> bool {
        matches!(&self.state, State::Head(buf) if buf.is_empty())
    }

    /// Stops following the connection.
    fn switch_off(&mut self, conn: &Connection) {
        self.state = State::Off;
        conn.head_finished();
    }

    /// Feeds bytes read from the client; queues a record per request head
    /// and tells `conn` when each head begins and ends.
    pub fn feed(&mut self, mut data: &[u8], conn: &Connection) {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head(buf) => {
                    if buf.is_empty() && data.starts_with(b"PRI ") {
                        // The HTTP/2 connection preface.
                        self.switch_off(conn);
                        return;
                    }
                    // Empty lines before a request line are allowed (and
                    // some clients send one after a body): a head begins
                    // with its first other byte.
                    let blank = |b: &u8| matches!(b, b'\r' | b'\n');
                    if buf.iter().all(blank) && !data.iter().all(blank) {
                        conn.head_started();
                    }
                    let (parsed, from_buffer) = if buf.is_empty() {
                        (inspect_head(data), false)
                    } else {
                        buf.extend_from_slice(data);
                        (inspect_head(buf), true)
                    };
                    match parsed {
                        Ok(Some((len, record, next))) => {
                            conn.head_finished();
                            if !conn.wire.push(record) {
                                self.switch_off(conn);
                                return;
                            }
                            if from_buffer {
                                // All of `data` went into the buffer; what
                                // follows the head is the start of the body.
                                let rest = std::mem::take(buf).split_off(len);
                                self.state = next;
                                self.feed(&rest, conn);
                                return;
                            } else {
                                self.state = next;
                                data = &data[len..];
                            }
                        }
                        Ok(None) => {
                            if !from_buffer {
                                buf.extend_from_slice(data);
                            }
                            if buf.len() > MAX_BUFFERED {
                                self.switch_off(conn);
                            }
                            return;
                        }
                        Err(()) => {
                            self.switch_off(conn);
                            return;
                        }
                    }
                }
                State::Fixed(left) => {
                    let take = (*left).min(data.len() as u64);
                    *left -= take;
                    data = &data[take as usize..];
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(buf) => {
                    let before = buf.len();
                    buf.extend_from_slice(data);
                    match parse_chunk_line(buf) {
                        ChunkLine::Complete { used, size } => {
                            let rest = used - before;
                            data = &data[rest..];
                            self.state = if size == 0 {
                                State::Trailers(Vec::new())
                            } else {
                                State::ChunkData(size)
                            };
                        }
                        ChunkLine::Partial if buf.len() <= MAX_CHUNK_LINE => return,
                        _ => {
                            self.switch_off(conn);
                            return;
                        }
                    }
                }
                State::ChunkData(left) => {
                    let take = (*left).min(data.len() as u64);
                    *left -= take;
                    data = &data[take as usize..];
                    if *left == 0 {
                        self.state = State::ChunkEnd(2);
                    }
                }
                State::ChunkEnd(left) => {
                    let take = (*left as usize).min(data.len());
                    *left -= take as u8;
                    data = &data[take..];
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailers(buf) => {
                    let before = buf.len();
                    buf.extend_from_slice(data);
                    match trailers_end(buf) {
                        Some(end) => {
                            data = &data[end - before..];
                            self.state = State::Head(Vec::new());
                        }
                        None if buf.len() <= MAX_BUFFERED => return,
                        None => {
                            self.switch_off(conn);
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// A client connection with the tap on its read side. It also tells the
/// connection when hyper waits for a request head (for parking, see
/// [`super::drive`]).
pub struct Tapped<T> {
    inner: T,
    tracker: Tracker,
    conn: Arc<Connection>,
    /// Bytes read (and tracked) already, to be read again first: the first
    /// bytes of a connection, or what hyper had read ahead when parked.
    unread: Bytes,
}

impl<T> Tapped<T> {
    pub fn new(inner: T, conn: Arc<Connection>) -> Self {
        Tapped {
            inner,
            tracker: Tracker::default(),
            conn,
            unread: Bytes::new(),
        }
    }

    /// Puts `bytes` (read through this tap) back, to be read next.
    pub fn unread(&mut self, bytes: Bytes) {
        debug_assert!(self.unread.is_empty());
        self.unread = bytes;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tapped<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            // Emptied, it lets go of the buffer it was a view of.
            this.unread = if n == this.unread.len() {
                Bytes::new()
            } else {
                this.unread.slice(n..)
            };
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &poll {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    this.note_io();
                }
                this.tracker.feed(read, &this.conn);
                this.conn.set_awaiting_head(false);
            }
            Poll::Pending => this.conn.set_awaiting_head(this.tracker.at_boundary()),
            Poll::Ready(Err(_)) => this.conn.set_awaiting_head(false),
        }
        poll
    }
}

impl<T> Tapped<T> {
    /// Bytes moved: the stall timeout starts again.
    fn note_io(&self) {
        self.conn.io_happened();
    }

    fn wrote(&self, poll: &Poll<io::Result<usize>>) {
        match poll {
            Poll::Ready(Ok(n)) if *n > 0 => self.note_io(),
            // Output is backed up: not idle.
            Poll::Pending => self.conn.set_awaiting_head(false),
            _ => {}
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tapped<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&poll);
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        if poll.is_pending() {
            this.conn.set_awaiting_head(false);
        }
        poll
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.conn.is_parking() {
            // hyper is done with the connection, the socket is not.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn test_connection() -> Connection {
        Connection::new("127.0.0.1:1".parse().unwrap())
    }

    fn records(stream: &[u8], split_every: usize) -> Vec<RawFraming> {
        let conn = test_connection();
        let mut tracker = Tracker::default();
        for piece in stream.chunks(split_every) {
            tracker.feed(piece, &conn);
        }
        std::iter::from_fn(|| conn.wire.next_request()).collect()
    }

    const CLEAN: RawFraming = RawFraming {
        content_lengths: 0,
        transfer_encodings: 0,
    };

    #[test]
    fn follows_pipelined_requests_of_every_framing_however_split() {
        let stream = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nworld\r\n3\r\nGET\r\n0\r\nX-Trailer: 1\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /e HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n\
GET /f HTTP/1.1\r\nHost: x\r\n\r\n";
        let want = vec![
            CLEAN,
            RawFraming {
                content_lengths: 1,
                transfer_encodings: 0,
            },
            RawFraming {
                content_lengths: 0,
                transfer_encodings: 1,
            },
            RawFraming {
                content_lengths: 1,
                transfer_encodings: 1,
            },
            RawFraming {
                content_lengths: 2,
                transfer_encodings: 0,
            },
            CLEAN,
        ];
        for split in [1, 2, 3, 7, 16, 64, 4096] {
            assert_eq!(records(stream, split), want, "split every {split}");
        }
    }

    #[test]
    fn bodies_that_look_like_requests_are_skipped() {
        let inner =
            b"GET /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut stream = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            inner.len()
        )
        .into_bytes();
        stream.extend_from_slice(inner);
        stream.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
        let got = records(&stream, 5);
        assert_eq!(
            got,
            vec![
                RawFraming {
                    content_lengths: 1,
                    transfer_encodings: 0
                },
                CLEAN
            ]
        );
    }

    #[test]
    fn a_head_is_timed_from_its_first_byte_and_blank_lines_do_not_count() {
        let conn = test_connection();
        let mut tracker = Tracker::default();
        let timing = |conn: &Connection| {
            conn.head_started_ms.load(std::sync::atomic::Ordering::Relaxed) != crate::connection::NEVER
        };
        tracker.feed(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok",
            &conn,
        );
        assert!(!timing(&conn), "a complete head is no longer timed");
        tracker.feed(b"\r\n", &conn);
        assert!(!timing(&conn), "an empty line after a body starts no head");
        tracker.feed(b"GET / HT", &conn);
        assert!(timing(&conn), "a partial head is timed");
        tracker.feed(b"TP/1.1\r\nHost: x\r\n\r\n", &conn);
        assert!(!timing(&conn));
        tracker.feed(b"PRI * HTTP/2.0\r\n", &conn);
        assert!(
            !timing(&conn),
            "a connection the tap stops following is not timed"
        );
    }

    #[test]
    fn switches_off_for_http2_upgrades_and_garbage() {
        assert!(records(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 4).is_empty());
        // An Upgrade is not followed: the gateway never switches protocols.
        let upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(records(upgrade, 9), vec![CLEAN, CLEAN]);
        assert!(records(b"\x16\x03\x01 not http\r\n\r\n", 3).is_empty());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use rand::Rng;

    #[test]
    fn random_bytes_never_panic_and_records_stay_bounded() {
        let mut rng = rand::rng();
        const PIECES: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"POST /x HTTP/1.1\r\n",
            b"Host: a\r\n",
            b"Content-Length: 5\r\n",
            b"Content-Length: 99999999999999999999\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"\r\n",
            b"5\r\n",
            b"hello",
            b"0\r\n",
            b"zz\r\n",
            b"\n",
            b"PRI * HTTP/2.0\r\n",
            b"Upgrade: x\r\n",
        ];
        for _ in 0..20_000 {
            let conn = super::tests::test_connection();
            let mut tracker = Tracker::default();
            for _ in 0..rng.random_range(0..40) {
                let piece = PIECES[rng.random_range(0..PIECES.len())];
                let cut = rng.random_range(0..=piece.len());
                tracker.feed(&piece[..cut], &conn);
                tracker.feed(&piece[cut..], &conn);
            }
            assert!(conn.wire.pending.lock().unwrap().len() <= MAX_PENDING);
        }
    }
}
