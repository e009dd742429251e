//! Every error the gateway answers with itself, and the one place that turns
//! them into RFC 9457 `application/problem+json` responses.
//!
//! Stages return a [`GatewayError`]; [`problem_response`] renders it with the
//! request ID. The detail text is written for the client: it never includes
//! a secret, a header value or an upstream's own error body.

use std::borrow::Cow;

use http::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};
use serde::Serialize;

use crate::body::GatewayBody;

/// Which side of the proxy an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSide {
    /// The client sent something we refuse.
    Downstream,
    /// The upstream failed, was unreachable or too slow.
    Upstream,
    /// The gateway itself could not do its job.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(Cow<'static, str>),
    /// A request whose framing cannot be trusted; the connection is closed
    /// after the answer, since where the next request starts is unknown.
    #[error("{0}")]
    Malformed(Cow<'static, str>),
    #[error("no route matches this path")]
    NotFound,
    /// Authentication failed; `challenge` goes in `WWW-Authenticate`.
    #[error("{detail}")]
    Unauthorized {
        detail: &'static str,
        challenge: HeaderValue,
    },
    /// A browser on a session route without a session: 302 to the login
    /// page (`location`), which returns it to where it was going.
    #[error("log in to continue")]
    LoginRequired { location: HeaderValue },
    #[error("{0}")]
    Forbidden(String),
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// Too many failed authentications from this client.
    #[error("too many failed authentications; retry after {retry_after_secs} s")]
    AuthFailuresLimited { retry_after_secs: u64 },
    #[error("the request body is larger than this route accepts ({limit} bytes)")]
    PayloadTooLarge { limit: u64 },
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    /// The request's header section is too large or has too many fields.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// A `Host` this gateway does not serve.
    #[error("this gateway does not serve that host")]
    MisdirectedRequest,
    /// A CORS preflight that the policy does not allow.
    #[error("{0}")]
    CorsRefused(&'static str),
    #[error("method {method} is not allowed on this route")]
    MethodNotAllowed {
        method: http::Method,
        allow: HeaderValue,
    },
    /// A request body arrived too slowly (slow-POST).
    #[error("the request body arrived too slowly")]
    RequestTimeout,
    #[error("the upstream `{upstream}` could not be reached")]
    UpstreamUnreachable { upstream: String },
    #[error("the upstream `{upstream}` did not answer within {timeout_ms} ms")]
    UpstreamTimeout { upstream: String, timeout_ms: u128 },
    #[error("the upstream `{upstream}` answered with a protocol switch nobody asked for")]
    UpstreamProtocol { upstream: String },
    /// Every target is ejected (its circuit breaker open) or failing its
    /// health checks.
    #[error("no target of the upstream `{upstream}` is available")]
    UpstreamUnavailable { upstream: String, retry_after_secs: u64 },
    /// Every target is at `max_connections` and none freed up within the
    /// queue timeout.
    #[error("every connection to the upstream `{upstream}` is in use")]
    UpstreamBusy { upstream: String },
    #[error("the upstream `{upstream}` failed to handle the request")]
    UpstreamFailed {
        upstream: String,
        status: StatusCode,
        retry_after: Option<HeaderValue>,
    },
    /// A body whose content type the route does not accept.
    #[error("this route does not accept that content type; send one of: {allowed}")]
    UnsupportedMediaType { allowed: String },
    /// A well-formed request whose content breaks the route's rules: 422,
    /// each problem with its JSON pointer.
    #[error("{detail}")]
    Unprocessable {
        detail: Cow<'static, str>,
        errors: Vec<FieldError>,
    },
    #[error("{0}")]
    Unavailable(Cow<'static, str>),
    /// A WebSocket route's connection cap is reached for this client.
    #[error("{0}")]
    TooManyConnections(&'static str),
    /// A WebSocket route got a request that is not a valid handshake.
    #[error("{0}")]
    UpgradeRequired(&'static str),
    /// The upstream answered a WebSocket handshake with a refusal.
    #[error("the service behind this route refused the WebSocket connection")]
    UpstreamRefused { upstream: String, status: StatusCode },
    #[error("internal error")]
    Internal,
}

/// One problem with one part of a request (`errors` in a 422 document).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// A JSON pointer into the body (`/days`), or `#/query/page`-style
    /// names for parameters outside it.
    pub pointer: String,
    /// What is wrong, never the offending value.
    pub detail: String,
}

impl GatewayError {
    pub fn bad_request(detail: impl Into<Cow<'static, str>>) -> Self {
        GatewayError::BadRequest(detail.into())
    }

    pub fn malformed(detail: impl Into<Cow<'static, str>>) -> Self {
        GatewayError::Malformed(detail.into())
    }

    /// Whether the client's connection must not carry another request:
    /// after a request whose framing cannot be trusted, where the next one
    /// starts is unknown.
    pub fn closes_connection(&self) -> bool {
        matches!(self, GatewayError::Malformed(_) | GatewayError::RequestTimeout)
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) | GatewayError::Malformed(_) => StatusCode::BAD_REQUEST,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::CorsRefused(_) | GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::LoginRequired { .. } => StatusCode::FOUND,
            GatewayError::RateLimited { .. } | GatewayError::AuthFailuresLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            GatewayError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::UpstreamUnreachable { .. } | GatewayError::UpstreamProtocol { .. } => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::UpstreamUnavailable { .. } | GatewayError::UpstreamBusy { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::UpstreamFailed { status, .. } => *status,
            GatewayError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            GatewayError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
            GatewayError::TooManyConnections(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::UpstreamRefused { status, .. } => *status,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn side(&self) -> ErrorSide {
        match self {
            GatewayError::BadRequest(_)
            | GatewayError::Malformed(_)
            | GatewayError::NotFound
            | GatewayError::CorsRefused(_)
            | GatewayError::Unauthorized { .. }
            | GatewayError::LoginRequired { .. }
            | GatewayError::Forbidden(_)
            | GatewayError::RateLimited { .. }
            | GatewayError::AuthFailuresLimited { .. }
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::RequestTimeout
            | GatewayError::UriTooLong { .. }
            | GatewayError::HeadersTooLarge(_)
            | GatewayError::MisdirectedRequest
            | GatewayError::UnsupportedMediaType { .. }
            | GatewayError::Unprocessable { .. }
            | GatewayError::UpgradeRequired(_)
            | GatewayError::TooManyConnections(_)
            | GatewayError::MethodNotAllowed { .. } => ErrorSide::Downstream,
            GatewayError::UpstreamUnreachable { .. }
            | GatewayError::UpstreamProtocol { .. }
            | GatewayError::UpstreamTimeout { .. }
            | GatewayError::UpstreamUnavailable { .. }
            | GatewayError::UpstreamBusy { .. }
            | GatewayError::UpstreamFailed { .. }
            | GatewayError::UpstreamRefused { .. } => ErrorSide::Upstream,
            GatewayError::Unavailable(_) | GatewayError::Internal => ErrorSide::Internal,
        }
    }

    fn detail(&self) -> String {
        match self {
            // The upstream's name is configuration, not a secret, but clients
            // need not learn the topology behind the gateway.
            GatewayError::UpstreamUnreachable { .. } => {
                "The service behind this route could not be reached.".into()
            }
            GatewayError::UpstreamProtocol { .. } => {
                "The service behind this route gave an invalid answer.".into()
            }
            GatewayError::UpstreamTimeout { .. } => {
                "The service behind this route did not answer in time.".into()
            }
            GatewayError::UpstreamFailed { .. } => {
                "The service behind this route failed to handle the request.".into()
            }
            GatewayError::UpstreamUnavailable { .. } => {
                "The service behind this route is unavailable; retry later.".into()
            }
            GatewayError::UpstreamBusy { .. } => "The service behind this route is busy; retry later.".into(),
            GatewayError::Internal => "The gateway failed to handle the request.".into(),
            GatewayError::CorsRefused(detail) | GatewayError::Unauthorized { detail, .. } => (*detail).into(),
            GatewayError::Forbidden(detail) => detail.clone(),
            other => {
                let mut text = other.to_string();
                if let Some(first) = text.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                if !text.ends_with('.') {
                    text.push('.');
                }
                text
            }
        }
    }

    fn extra_headers(&self, headers: &mut HeaderMap) {
        match self {
            GatewayError::MethodNotAllowed { allow, .. } => {
                headers.insert(ALLOW, allow.clone());
            }
            GatewayError::UpstreamFailed {
                retry_after: Some(v), ..
            } => {
                headers.insert(RETRY_AFTER, v.clone());
            }
            GatewayError::RateLimited { retry_after_secs }
            | GatewayError::AuthFailuresLimited { retry_after_secs }
            | GatewayError::UpstreamUnavailable { retry_after_secs, .. } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            GatewayError::Unauthorized { challenge, .. } => {
                headers.insert(http::header::WWW_AUTHENTICATE, challenge.clone());
            }
            GatewayError::LoginRequired { location } => {
                headers.insert(http::header::LOCATION, location.clone());
            }
            GatewayError::UpstreamBusy { .. } => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::UpgradeRequired(_) => {
                headers.insert(
                    http::header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            _ => {}
        }
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
}

pub const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// Renders a problem document for `status` with the given detail.
pub fn problem(status: StatusCode, detail: &str, request_id: &str) -> Response<GatewayBody> {
    problem_with(status, detail, request_id, &[])
}

/// [`problem`] with a list of field errors.
fn problem_with(
    status: StatusCode,
    detail: &str,
    request_id: &str,
    errors: &[FieldError],
) -> Response<GatewayBody> {
    let body = serde_json::to_vec(&Problem {
        kind: "about:blank",
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail,
        request_id,
        errors,
    })
    .expect("a problem document always serialises");
    let mut response = Response::new(GatewayBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON);
    response
        .headers_mut()
        .insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The one place a [`GatewayError`] becomes a response.
pub fn problem_response(error: &GatewayError, request_id: &str) -> Response<GatewayBody> {
    let errors = match error {
        GatewayError::Unprocessable { errors, .. } => errors.as_slice(),
        _ => &[],
    };
    let mut response = problem_with(error.status(), &error.detail(), request_id, errors);
    error.extra_headers(response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn problem_documents_carry_status_title_detail_and_request_id() {
        let err = GatewayError::MethodNotAllowed {
            method: http::Method::DELETE,
            allow: HeaderValue::from_static("GET, HEAD"),
        };
        let resp = problem_response(&err, "req-1");
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()[ALLOW], "GET, HEAD");
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/problem+json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["status"], 405);
        assert_eq!(doc["title"], "Method Not Allowed");
        assert_eq!(doc["detail"], "Method DELETE is not allowed on this route.");
        assert_eq!(doc["request_id"], "req-1");
    }
}
