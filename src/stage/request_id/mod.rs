//! Request IDs: keep a well-formed incoming `X-Request-Id` (1 to 64
//! characters from `A-Z a-z 0-9 - _ . :`), otherwise generate one. The ID
//! goes upstream (upstream headers stage), back to the client (here), into
//! every problem document, log line and audit event.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request, Response};

use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::pipeline::{Phases, RequestCx, Stage, Verdict};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub const MAX_REQUEST_ID_LEN: usize = 64;

pub struct RequestIdStage;

pub fn compile(_cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    Some(Arc::new(RequestIdStage))
}

/// Whether an incoming ID is safe to keep: short, and only characters that
/// cannot break a log line, a header or a JSON string.
pub fn is_acceptable(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LEN
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A new random ID: 128 bits as 32 lowercase hex digits (written by hand:
/// this runs for most requests, and `fmt` costs several times as much).
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits: u128 = rand::random();
    let mut text = [0u8; 32];
    for (i, byte) in bits.to_be_bytes().into_iter().enumerate() {
        text[2 * i] = HEX[usize::from(byte >> 4)];
        text[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&text).expect("hex digits are a valid header value")
}

impl Stage for RequestIdStage {
    fn name(&self) -> &'static str {
        "request_id"
    }

    fn phases(&self) -> Phases {
        Phases::EARLY.and(Phases::RESPONSE)
    }

    fn early<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request<GatewayBody>) -> Verdict<'a> {
        let mut incoming = req.headers().get_all(&X_REQUEST_ID).iter();
        cx.request_id = match (incoming.next(), incoming.next()) {
            (Some(id), None) if is_acceptable(id.as_bytes()) => id.clone(),
            _ => generate(),
        };
        Verdict::CONTINUE
    }

    fn response(&self, cx: &RequestCx, resp: &mut Response<GatewayBody>) {
        resp.headers_mut().insert(&X_REQUEST_ID, cx.request_id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptable_ids() {
        assert!(is_acceptable(b"abc-123_x.y:z"));
        assert!(is_acceptable(&[b'a'; 64]));
        assert!(!is_acceptable(&[b'a'; 65]));
        assert!(!is_acceptable(b""));
        assert!(!is_acceptable(b"a b"));
        assert!(!is_acceptable(b"a\"b"));
        assert!(!is_acceptable(b"<script>"));
        assert!(!is_acceptable("caf\u{e9}".as_bytes()));
    }

    #[test]
    fn a_good_incoming_id_is_kept_and_a_repeated_one_replaced() {
        let stage = RequestIdStage;
        for (sent, kept) in [
            (&["abc-1"][..], true),
            (&["abc-1", "abc-2"][..], false),
            (&["<x>"][..], false),
        ] {
            let mut cx = RequestCx::for_test();
            let mut req = Request::new(GatewayBody::Empty);
            for id in sent {
                req.headers_mut().append(&X_REQUEST_ID, id.parse().unwrap());
            }
            assert!(matches!(stage.early(&mut cx, &mut req), Verdict::Ready(Ok(_))));
            assert_eq!(cx.request_id == sent[0], kept, "{sent:?}");
            assert!(is_acceptable(cx.request_id.as_bytes()));
            let mut resp = Response::new(GatewayBody::Empty);
            stage.response(&cx, &mut resp);
            assert_eq!(resp.headers()[&X_REQUEST_ID], cx.request_id);
        }
    }

    #[test]
    fn generated_ids_are_unique_hex() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(is_acceptable(a.as_bytes()));
        assert!(
            a.as_bytes()
                .iter()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
}
