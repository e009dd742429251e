//! Request framing: refuse what two HTTP parsers could read differently.
//!
//! hyper already rejects malformed request lines, obsolete line folding,
//! invalid `Content-Length` values and differing duplicate lengths before a
//! request exists. This stage refuses, with a 400 problem document (and, on
//! HTTP/1, a closed connection), the shapes hyper tolerates but a backend or
//! another proxy might not (the framing headers as they were on the wire
//! come from the connection's tap, [`crate::connection::tap`], since hyper
//! hides some of them):
//!
//! - `Content-Length` together with `Transfer-Encoding` (CL.TE / TE.CL),
//! - more than one `Content-Length` or `Transfer-Encoding` field, even with
//!   equal values, or a `Content-Length` list,
//! - any transfer coding other than exactly `chunked`, or any on HTTP/1.0,
//! - a missing or repeated `Host` on HTTP/1.1, a repeated `host` or
//!   `content-length` on HTTP/2 (the upstream gets HTTP/1.1),
//! - any HTTP/1 request the framing tap has no record for (it stops on
//!   input it cannot follow, so the request's framing is unknown).

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Request, Version};

use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::connection::tap::RawFraming;
use crate::error::GatewayError;
use crate::pipeline::{Flow, Phases, RequestCx, Stage, StageResult, Verdict};

pub struct FramingStage;

pub fn compile(_cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    Some(Arc::new(FramingStage))
}

fn check_framing(version: Version, headers: &HeaderMap) -> Result<(), &'static str> {
    let lengths = headers.get_all(CONTENT_LENGTH).iter().count();
    let codings: Vec<_> = headers.get_all(TRANSFER_ENCODING).iter().collect();
    if lengths > 0 && !codings.is_empty() {
        return Err("The request has both Content-Length and Transfer-Encoding.");
    }
    if lengths > 1 {
        return Err("The request has more than one Content-Length.");
    }
    if let Some(length) = headers.get(CONTENT_LENGTH)
        && !length.as_bytes().iter().all(u8::is_ascii_digit)
    {
        return Err("The request's Content-Length is not a single number.");
    }
    if !codings.is_empty() {
        if version < Version::HTTP_11 {
            return Err("Transfer-Encoding is not allowed on HTTP/1.0.");
        }
        if codings.len() > 1
            || !codings[0]
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        {
            return Err("The only transfer coding accepted is a single `chunked`.");
        }
    }
    if version == Version::HTTP_11 && headers.get_all(HOST).iter().count() != 1 {
        return Err("An HTTP/1.1 request needs exactly one Host header.");
    }
    Ok(())
}

/// Rules on the framing headers as they were on the wire.
fn check_raw(raw: RawFraming) -> Result<(), &'static str> {
    if raw.content_lengths > 0 && raw.transfer_encodings > 0 {
        return Err("The request has both Content-Length and Transfer-Encoding.");
    }
    if raw.content_lengths > 1 {
        return Err("The request has more than one Content-Length.");
    }
    Ok(())
}

/// Rules for HTTP/2 requests, whose fields the upstream receives as
/// HTTP/1.1 headers: HTTP/2 allows equal repeated `content-length` fields,
/// and `host` may repeat, but neither may reach an HTTP/1.1 upstream twice.
fn check_h2(headers: &HeaderMap) -> Result<(), &'static str> {
    if headers.get_all(CONTENT_LENGTH).iter().count() > 1 {
        return Err("The request has more than one Content-Length.");
    }
    if headers.get_all(HOST).iter().count() > 1 {
        return Err("The request has more than one Host.");
    }
    Ok(())
}

impl FramingStage {
    fn check(cx: &RequestCx, req: &Request<GatewayBody>) -> StageResult {
        if req.version() <= Version::HTTP_11 {
            // No record means the tap lost track of where requests start on
            // this connection (it stops on input it cannot follow); such a
            // request cannot be vouched for, so it is refused and the
            // connection closed.
            let raw = cx.connection.wire.next_request().ok_or(GatewayError::malformed(
                "The request's framing could not be followed; send it again on a new connection.",
            ))?;
            check_raw(raw).map_err(GatewayError::malformed)?;
            check_framing(req.version(), req.headers()).map_err(GatewayError::malformed)?;
        } else {
            check_h2(req.headers()).map_err(GatewayError::malformed)?;
        }
        Ok(Flow::Continue)
    }
}

impl Stage for FramingStage {
    fn name(&self) -> &'static str {
        "framing"
    }

    fn phases(&self) -> Phases {
        Phases::EARLY
    }

    fn early<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request<GatewayBody>) -> Verdict<'a> {
        Verdict::Ready(Self::check(cx, req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn framing_table() {
        let ok: &[&[(&str, &str)]] = &[
            &[("host", "a")],
            &[("host", "a"), ("content-length", "10")],
            &[("host", "a"), ("transfer-encoding", "chunked")],
            &[("host", "a"), ("transfer-encoding", " Chunked ")],
        ];
        for h in ok {
            assert_eq!(check_framing(Version::HTTP_11, &headers(h)), Ok(()), "{h:?}");
        }
        let bad: &[&[(&str, &str)]] = &[
            &[
                ("host", "a"),
                ("content-length", "10"),
                ("transfer-encoding", "chunked"),
            ],
            &[("host", "a"), ("content-length", "10"), ("content-length", "10")],
            &[("host", "a"), ("content-length", "10, 10")],
            &[
                ("host", "a"),
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("host", "a"), ("transfer-encoding", "gzip, chunked")],
            &[("host", "a"), ("transfer-encoding", "chunked, identity")],
            &[("host", "a"), ("transfer-encoding", "xchunked")],
            &[],
            &[("host", "a"), ("host", "b")],
        ];
        for h in bad {
            assert!(check_framing(Version::HTTP_11, &headers(h)).is_err(), "{h:?}");
        }
        assert!(check_framing(Version::HTTP_10, &headers(&[("transfer-encoding", "chunked")])).is_err());
        assert_eq!(check_framing(Version::HTTP_10, &headers(&[])), Ok(()));
    }

    #[test]
    fn a_request_the_tap_has_no_record_for_is_refused() {
        let mut cx = RequestCx::for_test();
        let mut req = Request::new(GatewayBody::Empty);
        req.headers_mut().insert(HOST, "x".parse().unwrap());
        match FramingStage.early(&mut cx, &mut req) {
            Verdict::Ready(Err(e)) => assert!(e.closes_connection(), "{e}"),
            _ => panic!("a request without a wire record must be refused"),
        }
        // With the tap's record of a clean head, the same request passes.
        let mut tracker = crate::connection::tap::Tracker::default();
        tracker.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &cx.connection);
        assert!(matches!(
            FramingStage.early(&mut cx, &mut req),
            Verdict::Ready(Ok(Flow::Continue))
        ));
    }
}
