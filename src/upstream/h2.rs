//! HTTP/2 to a target: what the request looks like, and the connection.
//!
//! A target that speaks HTTP/2 gets one connection per gateway process,
//! shared by every request to it (streams are multiplexed; the target's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` and the upstream's `max_connections`
//! bound them). Unlike the HTTP/1.1 pool, the connection is driven by a
//! task of its own: many requests' tasks use it at once, and none of them
//! can be the one that keeps it going.

use std::time::Duration;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri, Version};
use http_body::Body;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::connect::UpstreamStream;

/// How often an HTTP/2 connection with requests in flight is pinged, and
/// how long an answer may take before the connection counts as dead.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Rewrites a request made ready for HTTP/1.1 ([`super::http1::prepare`])
/// for HTTP/2: the `Host` it carries becomes `:authority` (RFC 9113
/// §8.3.1 wants no `Host` beside it) and `:scheme` is `https` over TLS.
/// Calling it again is harmless, as is going back through `http1::prepare`
/// for a retry on an HTTP/1.1 target.
pub fn prepare<B>(req: &mut Request<B>, tls: bool) {
    if req.uri().scheme().is_some() {
        return; // prepared already
    }
    let Some(authority) = req
        .headers()
        .get(HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
    else {
        // Not an authority (a preserved client `Host` can be anything): the
        // request goes as it is, with `:scheme` http and its `Host` field.
        return;
    };
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let scheme = if tls { Scheme::HTTPS } else { Scheme::HTTP };
    if let Ok(uri) = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
    {
        *req.uri_mut() = uri;
        req.headers_mut().remove(HOST);
        *req.version_mut() = Version::HTTP_2;
    }
}

/// An HTTP/2 connection over `stream` (TLS with `h2` picked by ALPN, or
/// plain TCP with prior knowledge), driven by a spawned task that ends
/// when the target closes it or the last sender is dropped and its
/// streams are done.
pub async fn handshake<B>(stream: UpstreamStream) -> hyper::Result<http2::SendRequest<B>>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}

/// Whether a request failed because the target refused its stream before
/// processing it, so that it may be sent again on a new connection (RFC
/// 9113 §6.8, §8.7): REFUSED_STREAM, or the target's graceful GOAWAY
/// (NO_ERROR), which h2 reports only to streams above its last stream ID
/// and to streams opened after it arrived. A GOAWAY with an error code is
/// not taken as proof: h2 reports it to every open stream, processed or not.
pub fn unprocessed(error: &hyper::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            let graceful_go_away = h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR);
            let refused = h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            return h2.is_remote() && (graceful_go_away || refused);
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(uri: &str, host: Option<&str>, tls: bool) -> Request<()> {
        let mut req = Request::get(uri);
        if let Some(host) = host {
            req = req.header(HOST, host);
        }
        let mut req = req.body(()).unwrap();
        prepare(&mut req, tls);
        req
    }

    #[test]
    fn host_becomes_the_authority_and_the_scheme_follows_tls() {
        let req = prepared("/a?b=1", Some("app.internal:8443"), true);
        assert_eq!(req.uri(), "https://app.internal:8443/a?b=1");
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(req.headers().get(HOST).is_none());
        let req = prepared("/", Some("127.0.0.1:8000"), false);
        assert_eq!(req.uri(), "http://127.0.0.1:8000/");
    }

    #[test]
    fn preparing_twice_changes_nothing_more() {
        let mut req = prepared("/x", Some("a.test"), false);
        prepare(&mut req, true);
        assert_eq!(req.uri(), "http://a.test/x");
    }

    #[test]
    fn a_host_that_is_no_authority_is_left_as_it_is() {
        let req = prepared("/x", Some("bad host"), false);
        assert_eq!(req.uri(), "/x");
        assert_eq!(req.headers()[HOST], "bad host");
        assert_eq!(req.version(), Version::HTTP_11);
    }
}
