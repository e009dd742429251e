//! A minimal HTTP/2 client over prior-knowledge h2c, to send what
//! reqwest/hyper would not: any header field (duplicates, upper-case names,
//! connection-specific fields), bodies that break their length, requests
//! left open, streams reset mid-request.
//!
//! Frames are written by hand. Of what the server sends it understands just
//! enough: the `:status` of a response, DATA, RST_STREAM, GOAWAY, and
//! SETTINGS and PING (both acknowledged). It asks the server for an empty
//! HPACK dynamic table (`SETTINGS_HEADER_TABLE_SIZE = 0`), so every
//! `:status` arrives as a static-table index or a literal, however many
//! responses share a connection.
//!
//! Entry points: [`h2_exchange`] (one request on a fresh connection),
//! [`h2_exchange_many`] (several requests on one connection),
//! [`H2Connection`] (frame by frame), [`reset_streams`] (HEADERS then
//! RST_STREAM, many times over, on one connection).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113, section 6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    /// On DATA and HEADERS: the sender's last frame on the stream.
    pub const END_STREAM: u8 = 0x1;
    /// On SETTINGS and PING: an acknowledgement.
    pub const ACK: u8 = 0x1;
    /// On HEADERS and CONTINUATION: the header block is complete.
    pub const END_HEADERS: u8 = 0x4;
}

/// Error codes (RFC 9113, section 7).
pub mod code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// The largest frame payload a peer must accept without saying otherwise.
const MAX_FRAME: usize = 16_384;

/// How long [`h2_exchange`] and [`H2Connection::exchange`] wait for an answer.
pub const ANSWER_LIMIT: Duration = Duration::from_secs(5);

/// One header field, name and value as raw bytes.
pub type Field<'a> = (&'a [u8], &'a [u8]);

/// One frame: the 9-byte header (length, type, flags, stream ID with the
/// reserved bit cleared) followed by `payload`.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Appends an HPACK integer (RFC 7541, section 5.1) with a `prefix_bits`
/// prefix, OR-ed into `first` (the representation's leading bits).
pub fn hpack_int(prefix_bits: u8, first: u8, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literal fields (never indexed, no Huffman coding), in
/// the order given: any name or value, including ones an HTTP/2 library
/// would refuse to send.
pub fn hpack_block(fields: &[Field<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(7, 0, name.len(), &mut out);
        out.extend_from_slice(name);
        hpack_int(7, 0, value.len(), &mut out);
        out.extend_from_slice(value);
    }
    out
}

/// Decodes an HPACK Huffman string made only of digits (a `:status`);
/// `None` for anything else.
pub fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let codes: [(u32, u8, char); 10] = [
        (0b00000, 5, '0'),
        (0b00001, 5, '1'),
        (0b00010, 5, '2'),
        (0b011001, 6, '3'),
        (0b011010, 6, '4'),
        (0b011011, 6, '5'),
        (0b011100, 6, '6'),
        (0b011101, 6, '7'),
        (0b011110, 6, '8'),
        (0b011111, 6, '9'),
    ];
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    'outer: while i < bits.len() {
        for (code, len, ch) in codes {
            let len = len as usize;
            if i + len <= bits.len() {
                let v = bits[i..i + len].iter().fold(0u32, |a, b| a << 1 | *b as u32);
                if v == code {
                    out.push(ch);
                    i += len;
                    continue 'outer;
                }
            }
        }
        // The rest must be EOS padding (all ones).
        if bits[i..].iter().all(|b| *b == 1) {
            break;
        }
        return None;
    }
    Some(out)
}

/// The `:status` at the start of a response header block, if recognisable:
/// a static-table index (200, 204, 206, 304, 400, 404, 500) or a literal
/// with `:status` as its name, plain or Huffman-coded, after any dynamic
/// table size updates. `None` for anything else (such as a reference to the
/// dynamic table, which this client asks the server not to use).
pub fn h2_status(block: &[u8]) -> Option<u16> {
    let mut block = block;
    // Dynamic table size updates (001xxxxx) may open a block.
    while let Some(first) = block.first() {
        if first & 0xe0 != 0x20 {
            break;
        }
        let mut used = 1;
        if first & 0x1f == 0x1f {
            while block.get(used)? & 0x80 != 0 {
                used += 1;
            }
            used += 1;
        }
        block = &block[used..];
    }
    let first = *block.first()?;
    if first & 0x80 != 0 {
        return match first & 0x7f {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    // Literal with a name from the static table (index 8..14 is :status).
    let name_index = if first & 0xc0 == 0x40 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    if !(8..=14).contains(&name_index) {
        return None;
    }
    let len_byte = *block.get(1)?;
    let len = (len_byte & 0x7f) as usize;
    let value = block.get(2..2 + len)?;
    let text = if len_byte & 0x80 != 0 {
        huffman_digits(value)?
    } else {
        String::from_utf8(value.to_vec()).ok()?
    };
    text.parse().ok()
}

/// What the client sends first: the preface and a SETTINGS frame asking for
/// an empty HPACK dynamic table.
pub fn client_hello() -> Vec<u8> {
    let mut out = H2_PREFACE.to_vec();
    // SETTINGS_HEADER_TABLE_SIZE (0x1) = 0.
    out.extend(h2_frame(kind::SETTINGS, 0, 0, &[0, 1, 0, 0, 0, 0]));
    out
}

/// The frames of one request on `stream`: HEADERS (split into CONTINUATION
/// frames if the block is large) with the literal `fields`, then `body` as
/// DATA. END_STREAM goes on the last DATA frame, or on HEADERS when `body`
/// is `None` and `end_stream` is true; with `end_stream` false the request
/// is left open (the server waits for more).
pub fn request_frames(stream: u32, fields: &[Field<'_>], body: Option<&[u8]>, end_stream: bool) -> Vec<u8> {
    let block = hpack_block(fields);
    let mut chunks = block.chunks(MAX_FRAME).peekable();
    let mut out = Vec::new();
    let mut first = true;
    // An empty block still needs its HEADERS frame.
    let empty: &[u8] = &[];
    if chunks.peek().is_none() {
        let flags = flag::END_HEADERS
            | if body.is_none() && end_stream {
                flag::END_STREAM
            } else {
                0
            };
        out.extend(h2_frame(kind::HEADERS, flags, stream, empty));
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let mut flags = if last { flag::END_HEADERS } else { 0 };
        let frame_kind = if first {
            if body.is_none() && end_stream {
                flags |= flag::END_STREAM;
            }
            kind::HEADERS
        } else {
            kind::CONTINUATION
        };
        out.extend(h2_frame(frame_kind, flags, stream, chunk));
        first = false;
    }
    if let Some(body) = body {
        let pieces: Vec<&[u8]> = if body.is_empty() {
            vec![body]
        } else {
            body.chunks(MAX_FRAME).collect()
        };
        let count = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            let flags = if i + 1 == count && end_stream {
                flag::END_STREAM
            } else {
                0
            };
            out.extend(h2_frame(kind::DATA, flags, stream, piece));
        }
    }
    out
}

/// How the server answered one request.
#[derive(Clone, Debug, Default)]
pub struct H2Answer {
    /// The response's `:status` (the final one, after any 1xx), if a
    /// response head came and its status was recognisable.
    pub status: Option<u16>,
    /// RST_STREAM on the request's stream.
    pub reset: bool,
    /// GOAWAY that does not cover the stream (or carries an error), or the
    /// connection closed, before the answer was complete.
    pub goaway: bool,
    /// The error code of that RST_STREAM or GOAWAY.
    pub error_code: Option<u32>,
    /// The response body (DATA payloads) received on the stream.
    pub body: Vec<u8>,
}

#[derive(Default)]
struct StreamState {
    answer: H2Answer,
    done: bool,
}

/// A prior-knowledge HTTP/2 connection driven frame by frame. Stream IDs
/// are handed out in order (1, 3, 5, …) by [`H2Connection::next_stream`],
/// [`H2Connection::send`] and [`H2Connection::send_open`].
pub struct H2Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    next_id: u32,
    streams: HashMap<u32, StreamState>,
    pings_acked: Vec<[u8; 8]>,
    /// The last GOAWAY: (last stream ID, error code).
    goaway: Option<(u32, u32)>,
    closed: bool,
    /// RST_STREAM frames the server sent, on any stream.
    resets_received: usize,
}

impl H2Connection {
    /// Connects to `addr` and sends the preface and SETTINGS
    /// ([`client_hello`]); does not wait for the server's SETTINGS.
    pub async fn open(addr: SocketAddr) -> H2Connection {
        Self::open_with(addr, &[]).await
    }

    /// Like [`H2Connection::open`], with `extra` written right after the
    /// hello, in the same write.
    pub async fn open_with(addr: SocketAddr, extra: &[u8]) -> H2Connection {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut hello = client_hello();
        hello.extend_from_slice(extra);
        stream.write_all(&hello).await.unwrap();
        H2Connection {
            stream,
            buf: Vec::new(),
            next_id: 1,
            streams: HashMap::new(),
            pings_acked: Vec::new(),
            goaway: None,
            closed: false,
            resets_received: 0,
        }
    }

    /// Takes the next client stream ID (1, 3, 5, …) without sending
    /// anything on it.
    pub fn next_stream(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        self.streams.entry(id).or_default();
        id
    }

    /// Writes raw bytes (frames built with [`h2_frame`] and friends).
    /// An error means the server closed the connection.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends one complete request on a new stream ([`request_frames`] with
    /// END_STREAM) and returns its stream ID.
    pub async fn send(&mut self, fields: &[Field<'_>], body: Option<&[u8]>) -> u32 {
        let id = self.next_stream();
        let frames = request_frames(id, fields, body, true);
        self.write(&frames).await.unwrap();
        id
    }

    /// Sends HEADERS without END_STREAM on a new stream: a request whose
    /// body is still to come. Returns its stream ID.
    pub async fn send_open(&mut self, fields: &[Field<'_>]) -> u32 {
        let id = self.next_stream();
        let frames = request_frames(id, fields, None, false);
        self.write(&frames).await.unwrap();
        id
    }

    /// Sends RST_STREAM with `error_code` (for example [`code::CANCEL`]).
    pub async fn reset(&mut self, stream: u32, error_code: u32) {
        self.write(&h2_frame(kind::RST_STREAM, 0, stream, &error_code.to_be_bytes()))
            .await
            .unwrap();
    }

    /// Sends one complete request and waits for its answer.
    pub async fn exchange(&mut self, fields: &[Field<'_>], body: Option<&[u8]>) -> H2Answer {
        let id = self.send(fields, body).await;
        self.answer(id, ANSWER_LIMIT).await
    }

    /// Reads until the answer on `stream` is complete (END_STREAM, a reset,
    /// a GOAWAY that does not let it finish, or the connection closing) and
    /// returns it. Panics if that takes longer than `limit`.
    pub async fn answer(&mut self, stream: u32, limit: Duration) -> H2Answer {
        let deadline = Instant::now() + limit;
        loop {
            let state = self.streams.entry(stream).or_default();
            if state.done {
                return state.answer.clone();
            }
            if !self.read_more(deadline).await {
                let state = &self.streams[&stream];
                panic!(
                    "no complete HTTP/2 answer on stream {stream} within {limit:?}: {:?}",
                    state.answer
                );
            }
        }
    }

    /// Sends a PING carrying `data` and reads until the server acknowledges
    /// it. The server answers a PING only after reading every frame before
    /// it, so this is a barrier: everything sent earlier has been seen.
    /// Returns false if the server sent GOAWAY or closed the connection
    /// first; panics if neither happens within `limit`.
    pub async fn ping(&mut self, data: [u8; 8], limit: Duration) -> bool {
        if self.closed || self.write(&h2_frame(kind::PING, 0, 0, &data)).await.is_err() {
            self.closed = true;
            return false;
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self.pings_acked.iter().position(|d| *d == data) {
                self.pings_acked.remove(i);
                return true;
            }
            if self.goaway.is_some() || self.closed {
                return false;
            }
            if !self.read_more(deadline).await {
                panic!("no PING acknowledgement within {limit:?} (and no GOAWAY or close)");
            }
        }
    }

    /// The last GOAWAY the server sent: (last stream ID, error code).
    pub fn goaway(&self) -> Option<(u32, u32)> {
        self.goaway
    }

    /// Whether the server closed the connection (EOF or a read error).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// How many RST_STREAM frames the server has sent.
    pub fn resets_received(&self) -> usize {
        self.resets_received
    }

    /// The socket, for observing what the server does next.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Reads once more and handles every complete frame. False if the
    /// deadline passed with nothing to read; true otherwise (including when
    /// the connection closed, which marks every unfinished stream).
    async fn read_more(&mut self, deadline: Instant) -> bool {
        if self.closed {
            self.finish_all(None);
            return true;
        }
        let mut tmp = [0u8; 16384];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.closed = true;
                self.finish_all(None);
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                self.handle_frames().await;
            }
            Err(_) => return false,
        }
        true
    }

    /// Marks every unfinished stream above `above` (all, for `None`) as cut
    /// off by the connection ending.
    fn finish_all(&mut self, above: Option<u32>) {
        let error_code = self.goaway.map(|(_, code)| code);
        for (id, state) in self.streams.iter_mut() {
            if !state.done && above.is_none_or(|last| *id > last) {
                state.answer.goaway = true;
                state.answer.error_code = state.answer.error_code.or(error_code);
                state.done = true;
            }
        }
    }

    async fn handle_frames(&mut self) {
        while self.buf.len() >= 9 {
            let buf = &self.buf;
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let frame_kind = buf[3];
            let flags = buf[4];
            let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload = buf[9..9 + len].to_vec();
            self.buf.drain(..9 + len);
            // Writes fail only once the server has closed; the next read
            // sees that.
            match frame_kind {
                kind::SETTINGS if flags & flag::ACK == 0 => {
                    let _ = self.write(&h2_frame(kind::SETTINGS, flag::ACK, 0, &[])).await;
                }
                kind::PING if flags & flag::ACK == 0 => {
                    let _ = self.write(&h2_frame(kind::PING, flag::ACK, 0, &payload)).await;
                }
                kind::PING => {
                    if let Ok(data) = <[u8; 8]>::try_from(&payload[..]) {
                        self.pings_acked.push(data);
                    }
                }
                kind::HEADERS => {
                    let state = self.streams.entry(id).or_default();
                    // The first head, or the final one after a 1xx; never
                    // trailers.
                    if state.answer.status.is_none_or(|s| s < 200) {
                        state.answer.status = h2_status(&payload);
                    }
                    if flags & flag::END_STREAM != 0 {
                        state.done = true;
                    }
                }
                kind::DATA => {
                    let state = self.streams.entry(id).or_default();
                    state.answer.body.extend_from_slice(&payload);
                    let done = flags & flag::END_STREAM != 0;
                    if done {
                        state.done = true;
                    }
                    // Give the flow-control window back, so that long
                    // answers never stall.
                    if !payload.is_empty() {
                        let increment = (payload.len() as u32).to_be_bytes();
                        let mut update = h2_frame(kind::WINDOW_UPDATE, 0, 0, &increment);
                        if !done {
                            update.extend(h2_frame(kind::WINDOW_UPDATE, 0, id, &increment));
                        }
                        let _ = self.write(&update).await;
                    }
                }
                kind::RST_STREAM => {
                    self.resets_received += 1;
                    let state = self.streams.entry(id).or_default();
                    if !state.done {
                        state.answer.reset = true;
                        state.answer.error_code = payload
                            .get(..4)
                            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                        state.done = true;
                    }
                }
                kind::GOAWAY => {
                    let last = payload
                        .get(..4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) & 0x7fff_ffff)
                        .unwrap_or(0);
                    let error_code = payload
                        .get(4..8)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .unwrap_or(0);
                    self.goaway = Some((last, error_code));
                    // Streams above `last` will never be answered; with an
                    // error, none will.
                    self.finish_all(if error_code == code::NO_ERROR {
                        Some(last)
                    } else {
                        None
                    });
                }
                _ => {}
            }
        }
    }
}

/// Sends one request on stream 1 of a fresh prior-knowledge HTTP/2
/// connection (HEADERS with the literal `fields`, then `body` as DATA if
/// given) and returns how the server answered. Panics if there is no
/// complete answer within [`ANSWER_LIMIT`].
pub async fn h2_exchange(addr: SocketAddr, fields: &[Field<'_>], body: Option<&[u8]>) -> H2Answer {
    let frames = request_frames(1, fields, body, true);
    let mut conn = H2Connection::open_with(addr, &frames).await;
    let id = conn.next_stream();
    assert_eq!(id, 1);
    conn.answer(id, ANSWER_LIMIT).await
}

/// Sends every request of `requests` (fields and optional body) on one
/// fresh connection, on streams 1, 3, 5, … in order and all at once, and
/// returns their answers in the same order. Panics if any answer is not
/// complete within [`ANSWER_LIMIT`].
pub async fn h2_exchange_many(addr: SocketAddr, requests: &[(&[Field<'_>], Option<&[u8]>)]) -> Vec<H2Answer> {
    let mut conn = H2Connection::open(addr).await;
    let mut ids = Vec::new();
    for (fields, body) in requests {
        ids.push(conn.send(fields, *body).await);
    }
    let mut answers = Vec::new();
    for id in ids {
        answers.push(conn.answer(id, ANSWER_LIMIT).await);
    }
    answers
}

/// What [`reset_streams`] did and saw.
#[derive(Debug)]
pub struct ResetStreams {
    /// The connection, still open unless `closed`: read it (for example with
    /// [`closes_within`]) to see whether the server closes it later.
    pub stream: TcpStream,
    /// How many HEADERS + RST_STREAM pairs were written.
    pub sent: usize,
    /// The server's GOAWAY, if it sent one: (last stream ID, error code).
    pub goaway: Option<(u32, u32)>,
    /// How many RST_STREAM frames the server sent.
    pub resets_received: usize,
    /// Whether the server had already closed the connection.
    pub closed: bool,
}

/// The largest batch [`reset_streams`] writes before a PING barrier:
/// with the previous batch possibly still counted, under the gateway's 256
/// concurrent streams.
pub const RESET_BATCH: usize = 100;

/// Opens one prior-knowledge h2c connection and, on streams 1, 3, 5, … up
/// to `count` of them, sends a POST to `path` whose HEADERS lack
/// END_STREAM (a request with its body still to come), immediately followed
/// by RST_STREAM(CANCEL) for the same stream. See [`reset_streams_with`].
pub async fn reset_streams(addr: SocketAddr, path: &str, count: usize) -> ResetStreams {
    reset_streams_with(addr, "POST", path, count, RESET_BATCH).await
}

/// [`reset_streams`] with the method and batch size chosen. Each batch of
/// `batch` pairs (1 to 255) goes in one write, followed by a PING; what the
/// server sends is read and discarded (SETTINGS and PINGs acknowledged)
/// until that PING is acknowledged, so no more than `batch` streams are
/// ever new to the server at once. Stops early if the server sends GOAWAY
/// or closes the connection, and returns the connection either way.
///
/// Seen with the gateway as it is: the h2 server answers more than about
/// 20 streams reset before it accepted them with GOAWAY(ENHANCE_YOUR_CALM),
/// so a batch of [`RESET_BATCH`] ends the connection in the first batch,
/// while batches of under 20 get all 1,000 through on an open connection.
pub async fn reset_streams_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    count: usize,
    batch: usize,
) -> ResetStreams {
    assert!((1..256).contains(&batch), "a batch of {batch} streams");
    let mut conn = H2Connection::open(addr).await;
    let fields: [Field<'_>; 4] = [
        (b":method", method.as_bytes()),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
        (b":authority", b"x"),
    ];
    let mut sent = 0;
    let mut round = 0u64;
    while sent < count && conn.goaway().is_none() && !conn.is_closed() {
        let n = batch.min(count - sent);
        let mut frames = Vec::new();
        for _ in 0..n {
            let id = conn.next_stream();
            frames.extend(request_frames(id, &fields, None, false));
            frames.extend(h2_frame(kind::RST_STREAM, 0, id, &code::CANCEL.to_be_bytes()));
        }
        if conn.write(&frames).await.is_err() {
            break;
        }
        sent += n;
        round += 1;
        if !conn.ping(round.to_be_bytes(), Duration::from_secs(10)).await {
            break;
        }
    }
    ResetStreams {
        sent,
        goaway: conn.goaway(),
        resets_received: conn.resets_received(),
        closed: conn.is_closed(),
        stream: conn.into_stream(),
    }
}

/// Whether the server closes `stream` within `limit`; whatever it sends
/// meanwhile is read and discarded.
pub async fn closes_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}
