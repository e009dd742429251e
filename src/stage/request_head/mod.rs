//! Limits on the request head, checked before anything else reads it:
//!
//! - a request target longer than `[server] max_uri_length` (8 KiB, nginx's
//!   `large_client_header_buffers` line limit): 414;
//! - more header fields than `max_header_count` (100; HTTP/2 `cookie`
//!   fields count as the one line they become), a header section larger than
//!   `max_header_size` (32 KiB, nginx's four 8 KiB buffers), or one field
//!   larger than `max_header_field_size` (8 KiB, nginx's buffer for one
//!   line): 431;
//! - a `Host` (or HTTP/2 `:authority`, or the authority of an absolute-form
//!   target) that is not a valid authority (RFC 9112 §3.2, RFC 3986
//!   §3.2.2: a host name, an IPv4 address or a bracketed IPv6 address, and
//!   an optional numeric port): 400, as nginx and Envoy answer. It would
//!   otherwise reach the upstream as `X-Forwarded-Host`;
//! - with `[server] hosts` set, a host that is not listed: 421.
//!
//! hyper refuses heads beyond its own buffer with a bare 431 before a
//! request exists; its buffer is sized above these limits (see
//! [`crate::listener::http_builder`]), so a head that breaks them gets a
//! problem document from here.

use std::net::Ipv6Addr;
use std::sync::Arc;

use http::header::{COOKIE, HOST};
use http::{Request, Uri, Version};

use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::error::GatewayError;
use crate::pipeline::{Flow, Phases, RequestCx, Stage, StageResult, Verdict};

/// Bytes a header line adds beyond its name and value (`: ` and CRLF).
const LINE_OVERHEAD: usize = 4;

pub struct RequestHeadStage {
    max_uri_length: usize,
    max_header_size: usize,
    max_header_field_size: usize,
    max_header_count: usize,
    hosts: Option<HostList>,
}

/// `[server] hosts`: exact names and `*.suffix` patterns, lowercase.
#[derive(Debug, Default)]
struct HostList {
    exact: Vec<String>,
    /// `.example.com` for `*.example.com`.
    suffixes: Vec<String>,
}

impl HostList {
    fn allows(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        self.exact.iter().any(|h| h.eq_ignore_ascii_case(host))
            || self.suffixes.iter().any(|suffix| {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            })
    }
}

/// Compiles the request-head limits of `[server]`.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let server = &cx.config.server;
    let uri = server.max_uri_length.0;
    if !(256..=1024 * 1024).contains(&uri) {
        cx.problems
            .at("server.max_uri_length", "must be between 256B and 1MiB");
    }
    let size = server.max_header_size.0;
    if !(8 * 1024..=1024 * 1024).contains(&size) {
        cx.problems
            .at("server.max_header_size", "must be between 8KiB and 1MiB");
    }
    let field = server.max_header_field_size.0;
    if !(1024..=size.max(1024)).contains(&field) {
        cx.problems.at(
            "server.max_header_field_size",
            "must be between 1KiB and server.max_header_size",
        );
    }
    if !(16..=1000).contains(&server.max_header_count) {
        cx.problems
            .at("server.max_header_count", "must be between 16 and 1000");
    }
    let mut hosts = HostList::default();
    for entry in &server.hosts {
        let lower = entry.trim().to_ascii_lowercase();
        let name = lower.strip_prefix("*.").unwrap_or(&lower);
        if lower.contains(':') || !valid_reg_name(name) || name.is_empty() || name.contains('*') {
            cx.problems.at(
                "server.hosts",
                format!("`{entry}` is not a host name such as api.example.com or *.example.com (no port)"),
            );
        } else if lower.starts_with("*.") {
            hosts.suffixes.push(format!(".{name}"));
        } else {
            hosts.exact.push(lower);
        }
    }
    Some(Arc::new(RequestHeadStage {
        max_uri_length: uri as usize,
        max_header_size: size as usize,
        max_header_field_size: field as usize,
        max_header_count: server.max_header_count,
        hosts: (!server.hosts.is_empty()).then_some(hosts),
    }))
}

/// The request target's length as sent (for HTTP/2, `:scheme`,
/// `:authority` and `:path` together).
fn target_len(uri: &Uri) -> usize {
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    path + authority + scheme
}

/// `reg-name` (RFC 3986): unreserved, percent-encoded and sub-delims.
fn valid_reg_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                if !(i + 2 < bytes.len()
                    && bytes[i + 1].is_ascii_hexdigit()
                    && bytes[i + 2].is_ascii_hexdigit())
                {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// Splits a `Host` value into its host part, or `None` when it is not a
/// valid authority: `name`, `name:port`, `1.2.3.4:port`, `[v6]:port`.
pub fn parse_host(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?;
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (literal, after) = rest.split_once(']')?;
        literal.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => "",
            p => p.strip_prefix(':')?,
        };
        (&text[..literal.len() + 2], port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (text, ""),
        }
    };
    let port_ok = port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    let host_ok = host.starts_with('[') || (!host.is_empty() && valid_reg_name(host));
    (port_ok && host_ok).then_some(host)
}

impl RequestHeadStage {
    fn check(&self, req: &Request<GatewayBody>) -> StageResult {
        if target_len(req.uri()) > self.max_uri_length {
            return Err(GatewayError::UriTooLong {
                limit: self.max_uri_length,
            });
        }
        let headers = req.headers();
        let mut fields = headers.len();
        if req.version() == Version::HTTP_2 {
            // Cookie crumbs reach the upstream as one line.
            fields -= headers.get_all(COOKIE).iter().count().saturating_sub(1);
        }
        if fields > self.max_header_count {
            return Err(GatewayError::HeadersTooLarge(format!(
                "The request has more than {} header fields.",
                self.max_header_count
            )));
        }
        let (mut size, mut largest) = (0, 0);
        for (name, value) in headers {
            let line = name.as_str().len() + value.len() + LINE_OVERHEAD;
            size += line;
            largest = largest.max(line);
        }
        if largest > self.max_header_field_size {
            return Err(GatewayError::HeadersTooLarge(format!(
                "A request header is larger than {} bytes.",
                self.max_header_field_size
            )));
        }
        if size > self.max_header_size {
            return Err(GatewayError::HeadersTooLarge(format!(
                "The request's headers are larger than {} bytes.",
                self.max_header_size
            )));
        }
        let mut named = false;
        for value in headers.get_all(HOST) {
            self.check_host(value.as_bytes())?;
            named = true;
        }
        if let Some(authority) = req.uri().authority() {
            self.check_host(authority.as_str().as_bytes())?;
            named = true;
        }
        if !named && self.hosts.is_some() {
            return Err(GatewayError::MisdirectedRequest);
        }
        Ok(Flow::Continue)
    }

    fn check_host(&self, value: &[u8]) -> Result<(), GatewayError> {
        let host = parse_host(value)
            .ok_or_else(|| GatewayError::bad_request("The Host header is not a valid host."))?;
        match &self.hosts {
            Some(list) if !list.allows(host) => Err(GatewayError::MisdirectedRequest),
            _ => Ok(()),
        }
    }
}

impl Stage for RequestHeadStage {
    fn name(&self) -> &'static str {
        "request_head"
    }

    fn phases(&self) -> Phases {
        Phases::EARLY
    }

    fn early<'a>(&'a self, _cx: &'a mut RequestCx, req: &'a mut Request<GatewayBody>) -> Verdict<'a> {
        Verdict::Ready(self.check(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(hosts: &[&str]) -> RequestHeadStage {
        let mut list = HostList::default();
        for h in hosts {
            match h.strip_prefix("*.") {
                Some(name) => list.suffixes.push(format!(".{name}")),
                None => list.exact.push(h.to_string()),
            }
        }
        RequestHeadStage {
            max_uri_length: 64,
            max_header_size: 256,
            max_header_field_size: 200,
            max_header_count: 8,
            hosts: (!hosts.is_empty()).then_some(list),
        }
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<GatewayBody> {
        let mut req = Request::new(GatewayBody::Empty);
        *req.uri_mut() = uri.parse().unwrap();
        for (k, v) in headers {
            req.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        req
    }

    fn status(stage: &RequestHeadStage, req: Request<GatewayBody>) -> u16 {
        let mut cx = RequestCx::for_test();
        let mut req = req;
        match stage.early(&mut cx, &mut req) {
            Verdict::Ready(Ok(_)) => 200,
            Verdict::Ready(Err(e)) => e.status().as_u16(),
            Verdict::Pending(_) => unreachable!("never waits"),
        }
    }

    #[test]
    fn hosts_must_be_valid_authorities() {
        for good in [
            "example.com",
            "example.com:8080",
            "EXAMPLE.com.",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "xn--bcher-kva.example",
            "a_b.internal",
            "host:",
        ] {
            assert!(parse_host(good.as_bytes()).is_some(), "{good}");
        }
        for bad in [
            "",
            "evil.example/reset",
            "good example",
            "a@b",
            "example.com:80:80",
            "example.com:http",
            "example.com:123456",
            "[::1",
            "[not-v6]",
            "[::1]x",
            "exa%zzmple",
            "a\\b",
            ":80",
        ] {
            assert!(parse_host(bad.as_bytes()).is_none(), "{bad:?} was accepted");
        }
        assert_eq!(parse_host(b"[::1]:80"), Some("[::1]"));
        assert_eq!(parse_host(b"api.example.com:443"), Some("api.example.com"));
    }

    #[test]
    fn head_limits_answer_414_431_400_and_421() {
        let open = stage(&[]);
        assert_eq!(status(&open, request("/ok", &[("host", "a.example")])), 200);
        assert_eq!(status(&open, request(&format!("/{}", "a".repeat(64)), &[])), 414);
        let many: Vec<(String, String)> = (0..9).map(|i| (format!("x-h{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(status(&open, request("/", &many)), 431);
        assert_eq!(status(&open, request("/", &[("x-big", &"v".repeat(300))])), 431);
        assert_eq!(
            status(&open, request("/", &[("x-line", &"v".repeat(199))])),
            431,
            "one field too large"
        );
        assert_eq!(
            status(
                &open,
                request("/", &[("x-a", &"v".repeat(120)), ("x-b", &"v".repeat(120))])
            ),
            200
        );
        let crumbs: Vec<(&str, &str)> = (0..12).map(|_| ("cookie", "c=1")).collect();
        let mut h2 = request("/", &crumbs);
        *h2.version_mut() = Version::HTTP_2;
        assert_eq!(status(&open, h2), 200, "HTTP/2 cookie crumbs count as one field");
        assert_eq!(status(&open, request("/", &crumbs)), 431);
        assert_eq!(
            status(&open, request("/", &[("host", "evil.example/reset")])),
            400
        );
        assert_eq!(
            status(&open, request("http://a.example/x", &[("host", "a.example")])),
            200
        );

        let listed = stage(&["api.example.com", "*.apps.example.com"]);
        assert_eq!(
            status(&listed, request("/", &[("host", "API.example.com:8443")])),
            200
        );
        assert_eq!(
            status(&listed, request("/", &[("host", "x.apps.example.com")])),
            200
        );
        for refused in [
            "apps.example.com",
            "evilapps.example.com",
            "api.example.com.evil.net",
            "other.example",
        ] {
            assert_eq!(
                status(&listed, request("/", &[("host", refused)])),
                421,
                "{refused}"
            );
        }
        assert_eq!(status(&listed, request("/", &[])), 421, "no host at all");
    }
}
