//! The access line's JSON, written into a reused per-thread buffer.
//!
//! **Why not `tracing::info!`.** `tracing-subscriber`'s JSON formatter
//! visits each field through `fmt::Debug`, formats the timestamp field by
//! field and escapes every string twice over: 24,000 instructions per line
//! by callgrind (`bench/callgrind.sh BIN logged`), more than nginx spends on
//! a whole proxied request. The line here has the same fields, in the same
//! order and format, as the `tracing` event it replaces (`timestamp`,
//! `level`, the fields, `target`; absent optional fields left out), and
//! still obeys the `[log] level` filter for the `access` target.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one access line says.
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub client_ip: IpAddr,
    pub method: &'a str,
    pub route: Option<&'a str>,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    pub bytes_sent: u64,
    pub completed: bool,
    pub consumer: Option<&'a str>,
}

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    /// The second the cached `YYYY-MM-DDTHH:MM:SS` prefix is for.
    static SECOND: Cell<u64> = const { Cell::new(u64::MAX) };
    static PREFIX: Cell<[u8; 19]> = const { Cell::new([0; 19]) };
}

/// Formats the line and hands it to `write` (with its newline).
pub fn emit(line: &AccessLine<'_>, write: impl FnOnce(&[u8])) {
    BUFFER.with_borrow_mut(|buf| {
        buf.clear();
        format(line, SystemTime::now(), buf);
        write(buf);
        // A line with a huge path must not keep its buffer.
        if buf.capacity() > 16 * 1024 {
            *buf = Vec::with_capacity(512);
        }
    });
}

fn format(line: &AccessLine<'_>, now: SystemTime, buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(now, buf);
    buf.extend_from_slice(b"\",\"level\":\"INFO\",\"request_id\":");
    string(buf, line.request_id);
    buf.extend_from_slice(b",\"client_ip\":\"");
    // An IP address's text needs no escaping.
    let _ = write!(buf, "{}", line.client_ip);
    buf.extend_from_slice(b"\",\"method\":");
    string(buf, line.method);
    if let Some(route) = line.route {
        buf.extend_from_slice(b",\"route\":");
        string(buf, route);
    }
    buf.extend_from_slice(b",\"path\":");
    string(buf, line.path);
    buf.extend_from_slice(b",\"status\":");
    buf.extend_from_slice(itoa::Buffer::new().format(line.status).as_bytes());
    buf.extend_from_slice(b",\"duration_ms\":");
    millis(buf, line.duration);
    if let Some(upstream) = line.upstream {
        buf.extend_from_slice(b",\"upstream_ms\":");
        millis(buf, upstream);
    }
    buf.extend_from_slice(b",\"bytes_sent\":");
    buf.extend_from_slice(itoa::Buffer::new().format(line.bytes_sent).as_bytes());
    buf.extend_from_slice(if line.completed {
        b",\"completed\":true"
    } else {
        b",\"completed\":false"
    });
    if let Some(consumer) = line.consumer {
        buf.extend_from_slice(b",\"consumer\":");
        string(buf, consumer);
    }
    buf.extend_from_slice(b",\"target\":\"access\"}\n");
}

/// A JSON string, quoted and escaped.
fn string(buf: &mut Vec<u8>, text: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, text);
}

/// Milliseconds as a JSON number, as the `tracing` field wrote them.
fn millis(buf: &mut Vec<u8>, d: Duration) {
    let _ = serde_json::to_writer(&mut *buf, &(d.as_secs_f64() * 1000.0));
}

/// `2026-12-02T17:44:43.123456Z`, the format of `tracing-subscriber`'s
/// default timer; the part up to the second is computed once a second.
fn timestamp(now: SystemTime, buf: &mut Vec<u8>) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    if SECOND.get() != secs {
        PREFIX.set(seconds_prefix(secs));
        SECOND.set(secs);
    }
    buf.extend_from_slice(&PREFIX.get());
    let micros = since.subsec_micros();
    let mut digits = *b".000000Z";
    let mut rest = micros;
    for slot in digits[1..7].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    buf.extend_from_slice(&digits);
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time, in UTC.
fn seconds_prefix(secs: u64) -> [u8; 19] {
    let (year, month, day) = civil_date(secs.div_euclid(86_400) as i64);
    let of_day = secs % 86_400;
    let mut out = [0u8; 19];
    let mut cursor = std::io::Cursor::new(&mut out[..]);
    let _ = write!(
        cursor,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
    out
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, micros: u32) -> String {
        let mut buf = Vec::new();
        timestamp(UNIX_EPOCH + Duration::new(secs, micros * 1000), &mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn timestamps_are_utc_to_the_microsecond() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_709_208_000, 123_456), "2024-02-29T12:00:00.123456Z");
        assert_eq!(at(1_796_233_483, 999_999), "2026-12-02T17:44:43.999999Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000000Z");
        // The cached prefix follows the second.
        assert_eq!(at(4_107_542_400, 1), "2100-03-01T00:00:00.000001Z");
    }

    #[test]
    fn the_line_is_json_with_the_fields_of_the_tracing_event() {
        let line = AccessLine {
            request_id: "id-\"1\"\n",
            client_ip: "2001:db8::1".parse().unwrap(),
            method: "GET",
            route: Some("/a"),
            path: "/a/\u{e9}\\x",
            status: 200,
            duration: Duration::from_micros(1_250),
            upstream: None,
            bytes_sent: 3,
            completed: true,
            consumer: None,
        };
        let mut buf = Vec::new();
        format(&line, UNIX_EPOCH + Duration::from_secs(1_796_233_483), &mut buf);
        let text = String::from_utf8(buf).unwrap();
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1, "{text}");
        let entry: serde_json::Value = serde_json::from_str(&text).unwrap();
        let expected = serde_json::json!({
            "timestamp": "2026-12-02T17:44:43.000000Z",
            "level": "INFO",
            "request_id": "id-\"1\"\n",
            "client_ip": "2001:db8::1",
            "method": "GET",
            "route": "/a",
            "path": "/a/\u{e9}\\x",
            "status": 200,
            "duration_ms": 1.25,
            "bytes_sent": 3,
            "completed": true,
            "target": "access",
        });
        assert_eq!(entry, expected);
    }
}
