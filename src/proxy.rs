//! Forwarding to the upstream: pooled HTTP/1.1 connections, bodies streamed
//! both ways, connect and response timeouts, hop-by-hop headers removed in
//! both directions, and upstream 5xx bodies masked in production.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HOST, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::GatewayBody;
use crate::config::UpstreamConfig;
use crate::error::GatewayError;
use crate::metrics::UpstreamMetrics;
use crate::pipeline::RequestCx;

/// How much of a masked upstream error body is kept for the log.
const MASKED_BODY_LOG_LIMIT: usize = 8 * 1024;

/// A compiled `[[upstreams]]` entry with its connection pool.
pub struct Upstream {
    pub name: String,
    targets: Vec<Target>,
    next: AtomicUsize,
    client: Client<HttpConnector, GatewayBody>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    preserve_host: bool,
    metrics: UpstreamMetrics,
}

struct Target {
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
}

impl Upstream {
    /// Builds an upstream; returns the problems with its targets on failure.
    pub fn new(config: &UpstreamConfig, metrics: UpstreamMetrics) -> Result<Self, Vec<String>> {
        let mut targets = Vec::new();
        let mut problems = Vec::new();
        if config.targets.is_empty() {
            problems.push("an upstream needs at least one target".to_string());
        }
        for text in &config.targets {
            match parse_target(text) {
                Ok(target) => targets.push(target),
                Err(why) => problems.push(why),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout.0));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.idle_timeout.0)
            .pool_max_idle_per_host(config.max_idle_connections)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Upstream {
            name: config.name.clone(),
            targets,
            next: AtomicUsize::new(0),
            client,
            timeout: config.timeout.0,
            connect_timeout: config.connect_timeout.0,
            preserve_host: config.preserve_host,
            metrics,
        })
    }

    fn pick(&self) -> &Target {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.targets[i % self.targets.len()]
    }

    /// Whether at least one target accepts a TCP connection within the
    /// connect timeout (capped at 2 s), for `/readyz`.
    pub async fn probe(&self) -> Result<(), String> {
        let limit = self.connect_timeout.min(Duration::from_secs(2));
        let mut last = String::new();
        for target in &self.targets {
            let addr = format!(
                "{}:{}",
                target.authority.host(),
                target.authority.port_u16().unwrap_or(80)
            );
            match tokio::time::timeout(limit, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: connect timed out"),
            }
        }
        Err(last)
    }
}

fn parse_target(text: &str) -> Result<Target, String> {
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
        .cloned()
        .ok_or_else(|| format!("target `{text}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("target `{text}` must not contain credentials"));
    }
    let host = HeaderValue::try_from(authority.as_str())
        .map_err(|_| format!("target `{text}` has an invalid host"))?;
    Ok(Target {
        scheme: Scheme::HTTP,
        authority,
        host,
    })
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

/// Removes hop-by-hop headers, including every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

fn upstream_uri(cx: &RequestCx, uri: &Uri, target: &Target) -> Result<Uri, GatewayError> {
    let path_and_query = match &cx.rewritten_path {
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
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(target.scheme.clone());
    parts.authority = Some(target.authority.clone());
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).map_err(|_| GatewayError::bad_request("the request target is invalid"))
}

/// Sends the request to the upstream and returns its response head with the
/// body still streaming.
pub async fn forward(
    cx: &mut RequestCx,
    mut req: Request<GatewayBody>,
    upstream: &Upstream,
) -> Result<Response<GatewayBody>, GatewayError> {
    let target = upstream.pick();
    let client_authority = req.uri().authority().cloned();
    *req.uri_mut() = upstream_uri(cx, req.uri(), target)?;
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if !upstream.preserve_host {
        headers.insert(HOST, target.host.clone());
    } else if !headers.contains_key(HOST)
        && let Some(authority) = client_authority.and_then(|a| HeaderValue::try_from(a.as_str()).ok())
    {
        // An HTTP/2 client names the host in `:authority`, not `Host`.
        headers.insert(HOST, authority);
    }

    let sent = Instant::now();
    let result = tokio::time::timeout(upstream.timeout, upstream.client.request(req)).await;
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
    if head.status.is_server_error() && cx.policy.environment.is_production() {
        return Err(mask(cx, upstream, head, body).await);
    }
    Ok(Response::from_parts(head, GatewayBody::Streamed(body)))
}

/// Replaces an upstream 5xx with a problem document (status kept), after
/// logging the start of what the upstream said, so stack traces reach the
/// operator and never the client.
async fn mask(
    cx: &RequestCx,
    upstream: &Upstream,
    head: http::response::Parts,
    body: hyper::body::Incoming,
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
    fn targets_must_be_plain_http_base_urls() {
        assert!(parse_target("http://127.0.0.1:8000").is_ok());
        assert!(parse_target("http://app.internal").is_ok());
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
