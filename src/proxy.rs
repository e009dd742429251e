//! Forwarding to the upstream: pooled HTTP/1.1 connections, bodies streamed
//! both ways, connect and response timeouts, hop-by-hop headers removed in
//! both directions, and upstream 5xx bodies masked in production.
//!
//! The connections themselves are in [`pool`].

pub mod pool;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HOST, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;

use crate::body::GatewayBody;
use crate::config::UpstreamConfig;
use crate::error::GatewayError;
use crate::metrics::UpstreamMetrics;
use crate::pipeline::RequestCx;
use pool::{Address, Limits, TargetPool, UpstreamBody};

/// How much of a masked upstream error body is kept for the log.
const MASKED_BODY_LOG_LIMIT: usize = 8 * 1024;

/// A compiled `[[upstreams]]` entry with its connection pools.
pub struct Upstream {
    pub name: String,
    targets: Vec<Target>,
    next: AtomicUsize,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    preserve_host: bool,
    metrics: UpstreamMetrics,
}

struct Target {
    /// The `Host` header sent unless `preserve_host` is set.
    host: HeaderValue,
    pool: Arc<TargetPool>,
}

impl Upstream {
    /// Builds an upstream; returns the problems with its targets on failure.
    pub fn new(config: &UpstreamConfig, metrics: UpstreamMetrics) -> Result<Self, Vec<String>> {
        let mut targets = Vec::new();
        let mut problems = Vec::new();
        if config.targets.is_empty() {
            problems.push("an upstream needs at least one target".to_string());
        }
        let limits = Limits {
            connect_timeout: config.connect_timeout.0,
            idle_timeout: config.idle_timeout.0,
            max_idle: config.max_idle_connections,
        };
        for text in &config.targets {
            match parse_target(text) {
                Ok((address, host)) => targets.push(Target {
                    host,
                    pool: Arc::new(TargetPool::new(address, limits)),
                }),
                Err(why) => problems.push(why),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Upstream {
            name: config.name.clone(),
            targets,
            next: AtomicUsize::new(0),
            timeout: config.timeout.0,
            connect_timeout: config.connect_timeout.0,
            preserve_host: config.preserve_host,
            metrics,
        })
    }

    fn pick(&self) -> &Target {
        if self.targets.len() == 1 {
            return &self.targets[0];
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.targets[i % self.targets.len()]
    }

    /// Idle pooled connections over all targets (for tests and diagnostics).
    pub fn idle_connections(&self) -> usize {
        self.targets.iter().map(|t| t.pool.idle_count()).sum()
    }

    /// Whether at least one target accepts a TCP connection within the
    /// connect timeout (capped at 2 s), for `/readyz`.
    pub async fn probe(&self) -> Result<(), String> {
        let limit = self.connect_timeout.min(Duration::from_secs(2));
        let mut last = String::new();
        for target in &self.targets {
            let addr = target.pool.address();
            match tokio::time::timeout(limit, addr.connect()).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: connect timed out"),
            }
        }
        Err(last)
    }
}

fn parse_target(text: &str) -> Result<(Address, HeaderValue), String> {
    let uri: Uri = text
        .parse()
        .map_err(|_| format!("target `{text}` is not a URL such as http://127.0.0.1:8000"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "target `{text}`: https upstreams are not supported yet; use http on a private network"
            ));
        }
        _ => return Err(format!("target `{text}` must start with http://")),
    }
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return Err(format!(
            "target `{text}` must not have a path; routes keep the request's path"
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("target `{text}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("target `{text}` must not contain credentials"));
    }
    let host = HeaderValue::try_from(authority.as_str())
        .map_err(|_| format!("target `{text}` has an invalid host"))?;
    let port = authority.port_u16().unwrap_or(80);
    let name = authority.host();
    // `[::1]` in a URL is the IP literal `::1`.
    let literal = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    let address = match literal.parse::<IpAddr>() {
        Ok(ip) => Address::Ip(SocketAddr::new(ip, port)),
        Err(_) => Address::Name(name.to_string(), port),
    };
    Ok((address, host))
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The position of `name` in [`HOP_BY_HOP`], without hashing it.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// Removes hop-by-hop headers, including every header named in `Connection`.
///
/// Runs on every request and response, most of which carry none, or only
/// `Connection: keep-alive`: one pass over the names finds which are
/// present, and only those are looked up and removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_hop_by_hop_keeping(headers, |_| false);
}

/// Headers the gateway itself sets on a request before it is forwarded. A
/// client naming them in `Connection` must not get the gateway's values
/// removed (its own were already replaced by the upstream headers stage).
fn set_by_gateway(name: &str) -> bool {
    matches!(
        name,
        "host" | "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "x-real-ip" | "x-request-id"
    ) || name.starts_with(crate::stage::upstream_headers::IDENTITY_PREFIX)
}

/// [`strip_hop_by_hop`], except for headers named in `Connection` for
/// which `keep` (given the lowercase name) is true.
fn strip_hop_by_hop_keeping(headers: &mut HeaderMap, keep: impl Fn(&str) -> bool) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Names listed in `Connection` beyond the standard ones (rare), which
    // are the only reason to allocate here.
    let mut named: Vec<HeaderName> = Vec::new();
    let tokens = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for token in tokens {
        let standard = token.eq_ignore_ascii_case("close")
            || HOP_BY_HOP.iter().any(|h| token.eq_ignore_ascii_case(h.as_str()));
        if !standard
            && let Ok(name) = HeaderName::from_bytes(token.as_bytes())
            && !keep(name.as_str())
        {
            named.push(name);
        }
    }
    for name in named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The request target sent upstream, in origin form (`/path?query`), which
/// is what an HTTP/1.1 server expects from a client that is not talking to
/// a proxy. `None` when the request's own target is that already.
fn upstream_target(cx: &RequestCx, uri: &Uri) -> Result<Option<Uri>, GatewayError> {
    let path_and_query = match &cx.rewritten_path {
        None if uri.scheme().is_none() && uri.authority().is_none() && uri.path_and_query().is_some() => {
            return Ok(None);
        }
        None => uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        Some(path) => {
            let text = match uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            };
            PathAndQuery::try_from(text)
                .map_err(|_| GatewayError::bad_request("the request target is invalid"))?
        }
    };
    Ok(Some(Uri::from(path_and_query)))
}

/// Sends the request to the upstream and returns its response head with the
/// body still streaming.
pub async fn forward(
    cx: &mut RequestCx,
    mut req: Request<GatewayBody>,
    upstream: &Upstream,
) -> Result<Response<GatewayBody>, GatewayError> {
    let target = upstream.pick();
    if !upstream.preserve_host {
        req.headers_mut().insert(HOST, target.host.clone());
    } else if !req.headers().contains_key(HOST)
        && let Some(authority) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
    {
        // An HTTP/2 client names the host in `:authority`, not `Host`.
        req.headers_mut().insert(HOST, authority);
    }
    if let Some(uri) = upstream_target(cx, req.uri())? {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_11;
    strip_hop_by_hop_keeping(req.headers_mut(), set_by_gateway);

    let sent = Instant::now();
    let deadline = tokio::time::Instant::from_std(sent) + upstream.timeout;
    let result = tokio::time::timeout_at(deadline, target.pool.send(req)).await;
    let response = match result {
        Err(_) => {
            upstream.metrics.record_timeout();
            return Err(GatewayError::UpstreamTimeout {
                upstream: upstream.name.clone(),
                timeout_ms: upstream.timeout.as_millis(),
            });
        }
        Ok(Err(error)) if caused_by_client_body(&error) => {
            // The client's body broke off or was malformed mid-stream; the
            // upstream saw an aborted request, never a reframed one.
            return Err(GatewayError::malformed(
                "the request body was malformed or incomplete",
            ));
        }
        Ok(Err(error)) => {
            upstream.metrics.record_unreachable();
            tracing::warn!(
                request_id = cx.request_id(),
                upstream = %upstream.name,
                error = %error_chain(&error),
                "upstream request failed"
            );
            return Err(GatewayError::UpstreamUnreachable {
                upstream: upstream.name.clone(),
            });
        }
        Ok(Ok(response)) => response,
    };
    let elapsed = sent.elapsed();
    cx.upstream_time = Some(elapsed);
    upstream.metrics.record_response(elapsed);

    let (mut head, body) = response.into_parts();
    strip_hop_by_hop(&mut head.headers);
    // 5xx, and the nonstandard 6xx-9xx some servers invent for errors too.
    if head.status.as_u16() >= 500 && cx.policy.environment.is_production() {
        return Err(mask(cx, upstream, head, body).await);
    }
    Ok(Response::from_parts(head, GatewayBody::Upstream(body)))
}

/// Replaces an upstream 5xx with a problem document (status kept), after
/// logging the start of what the upstream said, so stack traces reach the
/// operator and never the client.
async fn mask(
    cx: &RequestCx,
    upstream: &Upstream,
    head: http::response::Parts,
    body: UpstreamBody,
) -> GatewayError {
    let limited = http_body_util::Limited::new(body, MASKED_BODY_LOG_LIMIT);
    let original = match tokio::time::timeout(Duration::from_secs(2), limited.collect()).await {
        Ok(Ok(collected)) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Ok(Err(_)) => format!("(body longer than {MASKED_BODY_LOG_LIMIT} bytes or unreadable)"),
        Err(_) => "(body not received within 2 s)".to_string(),
    };
    tracing::warn!(
        request_id = cx.request_id(),
        upstream = %upstream.name,
        status = head.status.as_u16(),
        upstream_body = %original,
        "masked upstream error response"
    );
    GatewayError::UpstreamFailed {
        upstream: upstream.name.clone(),
        status: head.status,
        retry_after: head.headers.get(header::RETRY_AFTER).cloned(),
    }
}

/// Whether an upstream request failed because the client's own body did:
/// hyper reports that as a user-body error wrapping the inbound one.
fn caused_by_client_body(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut saw_user_body = false;
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_user() {
                saw_user_body = true;
            } else if saw_user_body {
                return true;
            }
        }
        source = e.source();
    }
    false
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_named_in_connection() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret-Hop, close"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ] {
            h.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn headers_named_in_connection_go_even_when_no_other_hop_header_is_there() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "Upgrade, x-a".parse().unwrap());
        h.append(header::CONNECTION, "X-B".parse().unwrap());
        h.append(HeaderName::from_static("x-a"), "1".parse().unwrap());
        h.append(HeaderName::from_static("x-b"), "1".parse().unwrap());
        h.append(HeaderName::from_static("x-kept"), "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);

        let mut set = HeaderMap::new();
        set.append(
            header::CONNECTION,
            "X-Forwarded-For, host, X-Portcullis-Consumer, x-a"
                .parse()
                .unwrap(),
        );
        for name in ["x-forwarded-for", "host", "x-portcullis-consumer", "x-a"] {
            set.append(HeaderName::from_static(name), "1".parse().unwrap());
        }
        strip_hop_by_hop_keeping(&mut set, set_by_gateway);
        let mut kept: Vec<&str> = set.keys().map(|k| k.as_str()).collect();
        kept.sort();
        assert_eq!(kept, ["host", "x-forwarded-for", "x-portcullis-consumer"]);

        let mut plain = HeaderMap::new();
        plain.append(header::CONTENT_LENGTH, "3".parse().unwrap());
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn targets_must_be_plain_http_base_urls() {
        assert!(matches!(
            parse_target("http://127.0.0.1:8000"),
            Ok((Address::Ip(a), _)) if a == "127.0.0.1:8000".parse().unwrap()
        ));
        assert!(matches!(
            parse_target("http://[::1]:8000"),
            Ok((Address::Ip(a), _)) if a == "[::1]:8000".parse().unwrap()
        ));
        assert!(matches!(
            parse_target("http://app.internal"),
            Ok((Address::Name(h, 80), _)) if h == "app.internal"
        ));
        for bad in [
            "127.0.0.1:8000",
            "ftp://x",
            "http://127.0.0.1:8000/api",
            "http://user:pw@host",
            "https://secure",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}
