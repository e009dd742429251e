//! The headers the upstream receives, and can believe.
//!
//! In this order, so that nothing a client sends can undo what the gateway
//! sets:
//!
//! 1. hop-by-hop headers go, with every header the client's `Connection`
//!    names ([`crate::upstream::strip_hop_by_hop`]);
//! 2. the headers the gateway owns ([`OWNED`]) are removed as the client
//!    sent them: names are compared with `_` and `-` treated alike (names are
//!    already lowercase), because CGI and WSGI backends read `X_Forwarded_For`
//!    and `X-Forwarded-For` as one header; an underscore spelling of an owned
//!    header is always removed, even from a trusted proxy;
//! 3. the gateway sets its own: `X-Forwarded-For` (the incoming chain plus
//!    the peer when the peer is a trusted proxy, else just the peer),
//!    `X-Forwarded-Proto` and `X-Forwarded-Host` (kept from a trusted proxy,
//!    set from this connection otherwise), `X-Real-IP` (the client IP),
//!    `X-Request-Id`, and the principal's identity headers
//!    (`X-Portcullis-Consumer`, `-Key-Id`, `-Scopes`).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http::header::{FORWARDED, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Request};

use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::pipeline::{Phases, RequestCx, Route, Stage};
use crate::principal::IDENTITY_PREFIX;
use crate::stage::client_ip::X_FORWARDED_FOR;
use crate::stage::request_id::X_REQUEST_ID;
use crate::upstream::strip_hop_by_hop;

pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Who may send an owned header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Only the gateway sets it; a client's is always removed.
    Gateway,
    /// A trusted proxy may state it (how the request reached that proxy);
    /// from anyone else it is removed.
    TrustedProxy,
}

/// The headers the gateway owns. `X-Portcullis-*` (the identity headers)
/// are owned by the gateway as a family.
pub const OWNED: &[(&str, Owner)] = &[
    ("x-forwarded-for", Owner::TrustedProxy),
    ("x-forwarded-proto", Owner::TrustedProxy),
    ("x-forwarded-host", Owner::TrustedProxy),
    ("x-forwarded-prefix", Owner::TrustedProxy),
    ("x-forwarded-port", Owner::TrustedProxy),
    ("x-forwarded-server", Owner::TrustedProxy),
    ("forwarded", Owner::TrustedProxy),
    ("x-real-ip", Owner::Gateway),
    ("x-request-id", Owner::Gateway),
    // Path and method overrides some frameworks obey after routing
    // (Symfony, IIS, Spring, Rails): they could reach a path or method the
    // gateway never checked.
    ("x-original-url", Owner::Gateway),
    ("x-original-uri", Owner::Gateway),
    ("x-rewrite-url", Owner::Gateway),
    ("x-http-method-override", Owner::Gateway),
    ("x-http-method", Owner::Gateway),
    ("x-method-override", Owner::Gateway),
];

/// `a == b` with `_` in `a` read as `-`.
fn same_dashed(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y || (*x == b'_' && *y == b'-'))
}

/// Whether the client's header `name` (lowercase) must be removed.
fn removed(name: &str, peer_trusted: bool) -> bool {
    let bytes = name.as_bytes();
    // Every owned name starts with `x` or `f`: most headers stop here.
    if !matches!(bytes.first(), Some(b'x' | b'f')) {
        return false;
    }
    let spelled_with_underscore = bytes.contains(&b'_');
    let prefix = IDENTITY_PREFIX.as_bytes();
    if bytes.len() >= prefix.len() && same_dashed(&bytes[..prefix.len()], prefix) {
        return true;
    }
    OWNED.iter().any(|(owned, owner)| {
        same_dashed(bytes, owned.as_bytes())
            && (spelled_with_underscore || *owner == Owner::Gateway || !peer_trusted)
    })
}

/// Removes the client's copies of the headers the gateway owns.
pub fn strip_owned(headers: &mut HeaderMap, peer_trusted: bool) {
    if !headers.keys().any(|k| removed(k.as_str(), peer_trusted)) {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| removed(k.as_str(), peer_trusted))
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

/// What a trusted proxy said about how the request reached it, read before
/// hop-by-hop headers go (a `Connection` header may name them).
struct FromProxy {
    chain: Option<HeaderValue>,
    proto: Option<HeaderValue>,
    host: Option<HeaderValue>,
}

impl FromProxy {
    fn read(cx: &RequestCx, headers: &HeaderMap, peer: &HeaderValue) -> FromProxy {
        if !cx.peer_trusted {
            return FromProxy {
                chain: None,
                proto: None,
                host: None,
            };
        }
        let existing: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let chain = (!existing.is_empty()).then(|| {
            let joined = format!("{}, {}", existing.join(", "), peer.to_str().unwrap_or_default());
            HeaderValue::try_from(joined).unwrap_or_else(|_| peer.clone())
        });
        FromProxy {
            chain,
            proto: headers.get(&X_FORWARDED_PROTO).cloned(),
            host: headers.get(&X_FORWARDED_HOST).cloned(),
        }
    }
}

pub struct UpstreamHeadersStage;

pub fn compile(_cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    Some(Arc::new(UpstreamHeadersStage))
}

impl Stage for UpstreamHeadersStage {
    fn name(&self) -> &'static str {
        "upstream_headers"
    }

    fn phases(&self) -> Phases {
        Phases::UPSTREAM_REQUEST
    }

    fn upstream_request(&self, cx: &RequestCx, _route: &Route, req: &mut Request<GatewayBody>) {
        let peer_ip = crate::stage::client_ip::canonical(cx.peer.ip());
        let peer = ip_header(peer_ip);
        let from_proxy = FromProxy::read(cx, req.headers(), &peer);
        // An HTTP/2 client names the host in `:authority`.
        let host = req.headers().get(HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
        });
        let real_ip = if cx.client_ip == peer_ip {
            peer.clone()
        } else {
            ip_header(cx.client_ip)
        };

        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        strip_owned(headers, cx.peer_trusted);
        // Up to five headers are added below, and three identity headers:
        // grow the map once.
        headers.reserve(9);
        headers.insert(&X_FORWARDED_FOR, from_proxy.chain.unwrap_or(peer));
        // A trusted proxy's word, else how the client reached this listener.
        let proto = from_proxy.proto.unwrap_or(if cx.connection.is_tls() {
            HeaderValue::from_static("https")
        } else {
            HeaderValue::from_static("http")
        });
        headers.insert(&X_FORWARDED_PROTO, proto);
        if let Some(host) = from_proxy.host.or(host) {
            headers.insert(&X_FORWARDED_HOST, host);
        }
        if !cx.peer_trusted {
            headers.remove(FORWARDED);
        }
        headers.insert(&X_REAL_IP, real_ip);
        headers.insert(&X_REQUEST_ID, cx.request_id.clone());
        if let Some(principal) = &cx.principal {
            principal.write_headers(headers);
        }
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

    #[test]
    fn owned_headers_are_matched_whatever_mix_of_dashes_and_underscores() {
        for name in [
            "x_forwarded_prefix",
            "x-forwarded_prefix",
            "x_forwarded-prefix",
            "x_forwarded_port",
            "x_forwarded_server",
            "x_forwarded_for",
            "x_real_ip",
            "x_request_id",
            "x_portcullis_consumer",
            "x-portcullis_key_id",
            "x_original_url",
            "x_http_method_override",
            "x-method_override",
        ] {
            assert!(removed(name, true), "{name} from a trusted proxy");
            assert!(removed(name, false), "{name}");
        }
        // Dashed spellings: a trusted proxy may state how the request arrived.
        assert!(!removed("x-forwarded-prefix", true));
        assert!(removed("x-forwarded-prefix", false));
        assert!(!removed("forwarded", true));
        assert!(removed("x-portcullis-consumer", true));
        for kept in [
            "x_custom_thing",
            "x-forwarded",
            "content-type",
            "x_forwarded_for_x",
            "forwarded_by",
        ] {
            assert!(!removed(kept, false), "{kept}");
        }
    }

    #[test]
    fn a_client_cannot_name_away_or_forge_what_the_gateway_sets() {
        let mut cx = RequestCx::for_test();
        cx.principal = Some(crate::principal::Principal::api_key(
            "real",
            "id1",
            vec!["s".into()],
            None,
        ));
        let mut req = Request::new(GatewayBody::Empty);
        let h = req.headers_mut();
        h.insert(HOST, "app.example".parse().unwrap());
        h.insert(
            http::header::CONNECTION,
            "X-Forwarded-For, X-Real-IP, X-Portcullis-Consumer, X-Request-Id"
                .parse()
                .unwrap(),
        );
        h.insert("x_portcullis_consumer", "forged".parse().unwrap());
        h.insert("x-portcullis-consumer", "forged".parse().unwrap());
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        let route = crate::pipeline::Route::for_test();
        UpstreamHeadersStage.upstream_request(&cx, &route, &mut req);
        let h = req.headers();
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-portcullis-consumer"], "real");
        assert!(h.get("x_portcullis_consumer").is_none());
        assert!(h.get(http::header::CONNECTION).is_none());
        assert_eq!(h["x-request-id"], cx.request_id);
    }
}
