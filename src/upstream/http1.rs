//! What an HTTP/1.1 upstream receives, whatever the client spoke: the
//! request target in origin form, one `Host`, one `Cookie` line.

use http::header::{COOKIE, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Uri, Version};

use crate::body::GatewayBody;
use crate::error::GatewayError;

/// Rewrites `req` for an HTTP/1.1 target whose authority is `host`.
/// `preserve_host` keeps the client's `Host` (or HTTP/2 `:authority`);
/// `path` is the normalised path when it differs from the request's.
pub fn prepare(
    req: &mut Request<GatewayBody>,
    host: &HeaderValue,
    preserve_host: bool,
    path: Option<&str>,
) -> Result<(), GatewayError> {
    if !preserve_host {
        req.headers_mut().insert(HOST, host.clone());
    } else if !req.headers().contains_key(HOST)
        && let Some(authority) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
    {
        // An HTTP/2 client names the host in `:authority`, not `Host`.
        req.headers_mut().insert(HOST, authority);
    }
    if let Some(uri) = origin_form(req.uri(), path)? {
        *req.uri_mut() = uri;
    }
    if req.version() == Version::HTTP_2 {
        join_cookies(req.headers_mut());
    }
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

/// The request target in origin form (`/path?query`), which is what an
/// HTTP/1.1 server expects from a client that is not talking to a proxy.
/// `None` when the request's own target is that already.
fn origin_form(uri: &Uri, path: Option<&str>) -> Result<Option<Uri>, GatewayError> {
    let path_and_query = match path {
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
                None => path.to_string(),
            };
            PathAndQuery::try_from(text)
                .map_err(|_| GatewayError::bad_request("the request target is invalid"))?
        }
    };
    Ok(Some(Uri::from(path_and_query)))
}

/// HTTP/2 lets a client split cookies over several `cookie` fields; an
/// HTTP/1.1 server expects one line, and many keep only the last, so they
/// are joined with `"; "` (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for value in headers.get_all(COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_cookie_fields_become_one_line() {
        let mut req = Request::new(GatewayBody::Empty);
        *req.version_mut() = Version::HTTP_2;
        *req.uri_mut() = "https://app.example/a?b=1".parse().unwrap();
        req.headers_mut().append(COOKIE, "a=1".parse().unwrap());
        req.headers_mut().append(COOKIE, "b=2".parse().unwrap());
        prepare(&mut req, &HeaderValue::from_static("10.0.0.1:80"), false, None).unwrap();
        let cookies: Vec<_> = req.headers().get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()[HOST], "10.0.0.1:80");
        assert_eq!(req.version(), Version::HTTP_11);
    }

    #[test]
    fn the_normalised_path_keeps_the_query() {
        let uri: Uri = "/a/../b?x=1".parse().unwrap();
        assert_eq!(origin_form(&uri, Some("/b")).unwrap().unwrap(), "/b?x=1");
        assert!(origin_form(&"/b".parse().unwrap(), None).unwrap().is_none());
    }
}
