//! Who a request authenticated as: one type that every kind of
//! authentication fills (API keys, JWTs and login sessions), read by
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
pub static X_PORTCULLIS_ROLES: HeaderName = HeaderName::from_static("x-portcullis-roles");
pub static X_PORTCULLIS_ISSUER: HeaderName = HeaderName::from_static("x-portcullis-issuer");

/// How a principal authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    ApiKey,
    Jwt,
    Session,
    /// A client certificate (mTLS).
    Mtls,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::ApiKey => "api_key",
            Method::Jwt => "jwt",
            Method::Session => "session",
            Method::Mtls => "mtls",
        }
    }
}

/// A person's identity, as a token or a login session asserts it.
#[derive(Debug, Default)]
pub struct UserIdentity {
    /// The user, `sub` by default.
    pub user: String,
    /// Which configured issuer or provider vouched for them.
    pub issuer: String,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    /// Further headers for the upstream (selected claims), already named
    /// `X-Portcullis-Claim-*`.
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
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
    issuer: Option<String>,
    scopes: Vec<String>,
    roles: Vec<String>,
    quota: Option<Arc<Limit>>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// Header text, or a marker when the value cannot be a header (key names
/// and scopes are validated when stored; a token's claims are checked for
/// header-safe text when verified).
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
            issuer: None,
            scopes,
            roles: Vec::new(),
            quota,
            headers,
        }))
    }

    /// The principal of a client certificate that names `consumer`.
    pub fn certificate(consumer: &str, scopes: Vec<String>) -> Principal {
        let headers = vec![
            (X_PORTCULLIS_CONSUMER.clone(), header_value(consumer)),
            (X_PORTCULLIS_SCOPES.clone(), header_value(&scopes.join(" "))),
        ];
        Principal(Arc::new(Identity {
            method: Method::Mtls,
            consumer: Some(consumer.to_string()),
            user: None,
            key_id: None,
            issuer: None,
            scopes,
            roles: Vec::new(),
            quota: None,
            headers,
        }))
    }

    /// The principal of a person, from a JWT or a login session. Built once
    /// per verified token (the token cache keeps it) or per session load.
    pub fn user(method: Method, identity: UserIdentity) -> Principal {
        let UserIdentity {
            user,
            issuer,
            scopes,
            roles,
            extra_headers,
        } = identity;
        let mut headers = vec![
            (X_PORTCULLIS_USER.clone(), header_value(&user)),
            (X_PORTCULLIS_ISSUER.clone(), header_value(&issuer)),
            (X_PORTCULLIS_SCOPES.clone(), header_value(&scopes.join(" "))),
        ];
        if !roles.is_empty() {
            headers.push((X_PORTCULLIS_ROLES.clone(), header_value(&roles.join(" "))));
        }
        headers.extend(extra_headers);
        Principal(Arc::new(Identity {
            method,
            consumer: None,
            user: Some(user),
            key_id: None,
            issuer: Some(issuer),
            scopes,
            roles,
            quota: None,
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

    /// The person, for tokens and logins.
    pub fn user_name(&self) -> Option<&str> {
        self.0.user.as_deref()
    }

    /// The API key's public ID.
    pub fn key_id(&self) -> Option<&str> {
        self.0.key_id.as_deref()
    }

    pub fn scopes(&self) -> &[String] {
        &self.0.scopes
    }

    /// Roles, for people (API keys hold scopes only).
    pub fn roles(&self) -> &[String] {
        &self.0.roles
    }

    /// The issuer or login provider that vouched for a person.
    pub fn issuer(&self) -> Option<&str> {
        self.0.issuer.as_deref()
    }

    /// The principal's own rate limit, if it has one.
    pub fn quota(&self) -> Option<&Arc<Limit>> {
        self.0.quota.as_ref()
    }

    /// Who to name in logs and audit events: the user, else the consumer.
    pub fn name(&self) -> &str {
        self.user_name().or(self.consumer()).unwrap_or("")
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

    #[test]
    fn a_user_principal_names_the_user_and_lists_roles_only_when_held() {
        let p = Principal::user(
            Method::Jwt,
            UserIdentity {
                user: "alice".into(),
                issuer: "app".into(),
                scopes: vec!["chat".into()],
                roles: vec![],
                extra_headers: vec![],
            },
        );
        let mut h = HeaderMap::new();
        p.write_headers(&mut h);
        assert_eq!(h[&X_PORTCULLIS_USER], "alice");
        assert_eq!(h[&X_PORTCULLIS_ISSUER], "app");
        assert_eq!(h[&X_PORTCULLIS_SCOPES], "chat");
        assert!(h.get(&X_PORTCULLIS_ROLES).is_none());
        assert!(h.get(&X_PORTCULLIS_CONSUMER).is_none());
        assert_eq!(p.name(), "alice");
    }
}
