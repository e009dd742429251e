//! Who a request authenticated as: one type that every kind of
//! authentication fills (API keys now; JWTs and login sessions next), read by
//! authorisation, rate limiting, audit and the access log, and rendered as
//! the identity headers the upstream receives.
//!
//! A [`Principal`] is a shared handle: an API key's is built once per key
//! cache fill, header values included, so an authenticated request copies a
//! pointer rather than strings.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::ratelimit::Limit;

/// Every identity header starts with this; clients never get to send one.
pub const IDENTITY_PREFIX: &str = "x-portcullis-";
pub static X_PORTCULLIS_CONSUMER: HeaderName = HeaderName::from_static("x-portcullis-consumer");
pub static X_PORTCULLIS_KEY_ID: HeaderName = HeaderName::from_static("x-portcullis-key-id");
pub static X_PORTCULLIS_SCOPES: HeaderName = HeaderName::from_static("x-portcullis-scopes");
pub static X_PORTCULLIS_USER: HeaderName = HeaderName::from_static("x-portcullis-user");

/// How a principal authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    ApiKey,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::ApiKey => "api_key",
        }
    }
}

/// An authenticated identity.
#[derive(Clone, Debug)]
pub struct Principal(Arc<Identity>);

#[derive(Debug)]
struct Identity {
    method: Method,
    consumer: Option<String>,
    user: Option<String>,
    key_id: Option<String>,
    scopes: Vec<String>,
    quota: Option<Arc<Limit>>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// Header text, or a marker when the value cannot be a header (names and
/// scopes are validated when stored, so this does not happen in practice).
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

impl Principal {
    /// The principal of an API key owned by `consumer`. `quota` is the key's
    /// own rate limit, which replaces a route's `per key` limits.
    pub fn api_key(
        consumer: &str,
        key_id: &str,
        scopes: Vec<String>,
        quota: Option<Arc<Limit>>,
    ) -> Principal {
        let headers = vec![
            (X_PORTCULLIS_CONSUMER.clone(), header_value(consumer)),
            (X_PORTCULLIS_KEY_ID.clone(), header_value(key_id)),
            (X_PORTCULLIS_SCOPES.clone(), header_value(&scopes.join(" "))),
        ];
        Principal(Arc::new(Identity {
            method: Method::ApiKey,
            consumer: Some(consumer.to_string()),
            user: None,
            key_id: Some(key_id.to_string()),
            scopes,
            quota,
            headers,
        }))
    }

    pub fn method(&self) -> Method {
        self.0.method
    }

    /// The consumer (the client that owns an API key).
    pub fn consumer(&self) -> Option<&str> {
        self.0.consumer.as_deref()
    }

    /// The person, for logins.
    pub fn user(&self) -> Option<&str> {
        self.0.user.as_deref()
    }

    /// The API key's public ID.
    pub fn key_id(&self) -> Option<&str> {
        self.0.key_id.as_deref()
    }

    pub fn scopes(&self) -> &[String] {
        &self.0.scopes
    }

    /// The principal's own rate limit, if it has one.
    pub fn quota(&self) -> Option<&Arc<Limit>> {
        self.0.quota.as_ref()
    }

    /// Who to name in logs and audit events: the user, else the consumer.
    pub fn name(&self) -> &str {
        self.user().or(self.consumer()).unwrap_or("")
    }

    /// Sets the identity headers on a request for the upstream.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.0.headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_key_principal_renders_its_identity_headers() {
        let p = Principal::api_key(
            "agent-7",
            "abc123",
            vec!["tasks:read".into(), "tasks:write".into()],
            None,
        );
        let mut h = HeaderMap::new();
        p.write_headers(&mut h);
        assert_eq!(h[&X_PORTCULLIS_CONSUMER], "agent-7");
        assert_eq!(h[&X_PORTCULLIS_KEY_ID], "abc123");
        assert_eq!(h[&X_PORTCULLIS_SCOPES], "tasks:read tasks:write");
        assert_eq!(p.name(), "agent-7");
        assert_eq!(p.method().as_str(), "api_key");
    }
}
