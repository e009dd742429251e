//! Headers the upstream can believe.
//!
//! Everything a client could forge about who it is or how it arrived is
//! removed and set again by the gateway:
//!
//! - `X-Portcullis-*` identity headers are always stripped (the auth stages
//!   add the real ones later), and so are path and method overrides some
//!   frameworks obey (`X-Original-URL`, `X-Rewrite-URL`,
//!   `X-HTTP-Method-Override`, …); `X-Forwarded-Prefix`, `-Port` and
//!   `-Server` are kept only from a trusted proxy;
//! - `X-Forwarded-For` becomes the incoming chain plus the peer when the peer
//!   is a trusted proxy, and just the peer otherwise;
//! - `X-Forwarded-Proto` and `X-Forwarded-Host` are kept from a trusted proxy
//!   and set from this connection otherwise; `Forwarded` from an untrusted
//!   peer is dropped;
//! - `X-Real-IP` is the client IP the client IP stage settled on;
//! - `X-Request-Id` is the request's ID;
//! - `X-Portcullis-Consumer`, `-Key-Id` and `-Scopes` (space-separated)
//!   describe the authenticated key, when there is one.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

use http::header::{FORWARDED, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Request};

use crate::body::GatewayBody;
use crate::pipeline::{Flow, RequestCx, Stage, Verdict};
use crate::stage::client_ip::X_FORWARDED_FOR;
use crate::stage::request_id::X_REQUEST_ID;

pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub const IDENTITY_PREFIX: &str = "x-portcullis-";
pub static X_PORTCULLIS_CONSUMER: HeaderName = HeaderName::from_static("x-portcullis-consumer");
pub static X_PORTCULLIS_KEY_ID: HeaderName = HeaderName::from_static("x-portcullis-key-id");
pub static X_PORTCULLIS_SCOPES: HeaderName = HeaderName::from_static("x-portcullis-scopes");

pub struct UpstreamHeadersStage;

/// Headers some frameworks obey to rewrite the path or method after
/// routing (Symfony, IIS, Spring, Rails): a client could use them to reach a
/// path or method the gateway never checked, so they never pass.
const OVERRIDES: &[&str] = &[
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Forwarding details only a trusted proxy may state.
const PROXY_ONLY: &[&str] = &["x-forwarded-prefix", "x-forwarded-port", "x-forwarded-server"];

fn forgeable(name: &str, peer_trusted: bool) -> bool {
    name.starts_with(IDENTITY_PREFIX)
        || OVERRIDES.contains(&name)
        || (!peer_trusted && PROXY_ONLY.contains(&name))
}

/// Removes every `X-Portcullis-*` header, every path or method override,
/// and proxy-only forwarding headers from an untrusted peer.
pub fn strip_identity(headers: &mut HeaderMap, peer_trusted: bool) {
    if !headers.keys().any(|k| forgeable(k.as_str(), peer_trusted)) {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| forgeable(k.as_str(), peer_trusted))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// An IP address as header text. Two are made per request, so IPv4 (the
/// common case) is written by hand rather than through `fmt`, which costs
/// several times as much.
fn ip_header(ip: IpAddr) -> HeaderValue {
    let mut text = [0u8; 45]; // the longest IPv6 text
    let len = match ip {
        IpAddr::V4(v4) => write_ipv4(v4, &mut text),
        IpAddr::V6(v6) => {
            let mut cursor = std::io::Cursor::new(&mut text[..]);
            write!(cursor, "{v6}").expect("an IPv6 address fits in 45 bytes");
            cursor.position() as usize
        }
    };
    HeaderValue::from_bytes(&text[..len]).expect("an IP address is valid header text")
}

/// Writes dotted-quad text into `out`; returns its length.
fn write_ipv4(ip: Ipv4Addr, out: &mut [u8; 45]) -> usize {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            out[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            out[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        out[len] = b'0' + octet % 10;
        len += 1;
    }
    len
}

fn set_forwarding(cx: &RequestCx, req: &mut Request<GatewayBody>) {
    let peer_ip = crate::stage::client_ip::canonical(cx.peer.ip());
    let peer = ip_header(peer_ip);
    // Up to five headers are added below, and three identity headers after:
    // grow the map once.
    req.headers_mut().reserve(9);
    let authority_host = match req.headers().contains_key(HOST) {
        true => None,
        false => req.uri().authority().map(|a| a.as_str().to_owned()),
    };
    let real_ip = if cx.client_ip == peer_ip {
        peer.clone()
    } else {
        ip_header(cx.client_ip)
    };
    let headers = req.headers_mut();

    let chain = if cx.peer_trusted {
        let existing: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if existing.is_empty() {
            peer
        } else {
            let joined = format!("{}, {}", existing.join(", "), peer.to_str().unwrap_or_default());
            HeaderValue::try_from(joined).unwrap_or(peer)
        }
    } else {
        peer
    };
    headers.insert(&X_FORWARDED_FOR, chain);

    if !(cx.peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if cx.tls { "https" } else { "http" };
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(cx.peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        let host = headers
            .get(HOST)
            .cloned()
            .or_else(|| authority_host.and_then(|a| HeaderValue::try_from(a).ok()));
        match host {
            Some(host) => {
                headers.insert(&X_FORWARDED_HOST, host);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    if !cx.peer_trusted {
        headers.remove(FORWARDED);
    }
    headers.insert(&X_REAL_IP, real_ip);
}

impl Stage for UpstreamHeadersStage {
    fn name(&self) -> &'static str {
        "upstream_headers"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request<GatewayBody>) -> Verdict<'a> {
        strip_identity(req.headers_mut(), cx.peer_trusted);
        set_forwarding(cx, req);
        req.headers_mut().insert(&X_REQUEST_ID, cx.request_id.clone());
        if let Some(crate::stage::authn::Principal::ApiKey(key)) = &cx.principal
            && let crate::keys::CachedKey::Known { headers, .. } = &**key
        {
            let h = req.headers_mut();
            h.insert(&X_PORTCULLIS_CONSUMER, headers.consumer.clone());
            h.insert(&X_PORTCULLIS_KEY_ID, headers.key_id.clone());
            h.insert(&X_PORTCULLIS_SCOPES, headers.scopes.clone());
        }
        Verdict::Ready(Ok(Flow::Continue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_headers_match_the_standard_text() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "9.10.99.100",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_header(ip), ip.to_string().as_str(), "{text}");
        }
    }
}
