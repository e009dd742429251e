//! Login sessions, kept server side.
//!
//! The browser holds one small opaque cookie, `v1.<id>.<mac>`: a random
//! 256-bit ID and an HMAC-SHA256 tag (128 bits) made with a key derived from
//! `secrets.session_key`. A forged or altered cookie is refused on the tag
//! alone, without a store lookup; a rotated key keeps sessions valid through
//! `secrets.previous_session_keys`. The store holds the session under the
//! SHA-256 of its ID (a store dump yields no cookie), with what it vouches
//! for (user, provider, roles) and, for provider logins, the provider's
//! tokens encrypted with AES-256-GCM under another derived key.
//!
//! A session ends at `max_age` after login (absolute), after `idle_timeout`
//! without use, at logout, or when revoked (`users disable`, `users passwd`).
//! Each instance caches sessions in memory; revocations reach every instance
//! within about a second through a poll of the store's `updated_at`, and at
//! once through Redis pub/sub when `[redis]` is configured.

pub mod cache;
pub mod crypto;

use std::time::Duration;

use serde::Deserialize;

pub use cache::{SessionCache, SessionEntry};
pub use crypto::SessionKeys;

use crate::config::{ConfigDuration, RateSpec};

/// `[sessions]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// A session unused this long ends.
    #[serde(default = "SessionsConfig::default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// A session ends this long after login, however much it is used.
    #[serde(default = "SessionsConfig::default_max_age")]
    pub max_age: ConfigDuration,
    /// The cookie's name. The default's `__Host-` prefix makes browsers
    /// keep it only if it is Secure, for this host, on path `/`.
    #[serde(default = "SessionsConfig::default_cookie_name")]
    pub cookie_name: String,
    /// Mark cookies Secure (browsers then send them over https only, and
    /// localhost). Only development may turn this off, with a cookie name
    /// without the `__Host-` prefix.
    #[serde(default = "default_true")]
    pub cookie_secure: bool,
    /// Sessions kept in memory per instance.
    #[serde(default = "SessionsConfig::default_cache_size")]
    pub cache_size: usize,
    /// Let local users (`portcullis users …`) log in with the form at
    /// `/.auth/login`.
    #[serde(default)]
    pub local_users: bool,
    /// Login attempts allowed per user name and, separately, per client IP.
    #[serde(default = "SessionsConfig::default_login_limit")]
    pub login_limit: RateSpec,
    /// The gateway's public origin, e.g. `https://portal.example.com`:
    /// identity providers send browsers back to
    /// `<public_url>/.auth/callback/<name>`. Required with `[[auth.oidc]]`.
    pub public_url: Option<String>,
}

fn default_true() -> bool {
    true
}

impl SessionsConfig {
    fn default_idle_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(8 * 3600))
    }
    fn default_max_age() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(7 * 24 * 3600))
    }
    fn default_cookie_name() -> String {
        "__Host-portcullis".into()
    }
    fn default_cache_size() -> usize {
        100_000
    }
    fn default_login_limit() -> RateSpec {
        crate::config::rate::parse_rate("10 per minute").expect("a valid default")
    }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            idle_timeout: Self::default_idle_timeout(),
            max_age: Self::default_max_age(),
            cookie_name: Self::default_cookie_name(),
            cookie_secure: true,
            cache_size: Self::default_cache_size(),
            local_users: false,
            login_limit: Self::default_login_limit(),
            public_url: None,
        }
    }
}

/// The gateway's own cookies besides the session's (pre-login CSRF binding,
/// pending provider login): never passed to an upstream.
pub const LOGIN_COOKIES: [&str; 4] = [
    "__Host-portcullis-login",
    "portcullis-login",
    "__Host-portcullis-oidc",
    "portcullis-oidc",
];

/// Where a redirect after login or logout may go: a path on this origin.
/// Anything else (`//evil.example`, `/\evil`, `https://…`, encoded forms of
/// those, control characters) becomes `/`.
pub fn safe_return_to(requested: Option<&str>) -> String {
    let Some(path) = requested else {
        return "/".into();
    };
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let bad = |p: &str| {
        !p.starts_with('/')
            || p.starts_with("//")
            || p.starts_with("/\\")
            || p.contains('\\')
            || p.chars().any(|c| c.is_control())
    };
    if path.len() > 2048 || bad(path) || bad(&decoded) {
        return "/".into();
    }
    path.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_same_origin_paths_are_redirect_targets() {
        assert_eq!(safe_return_to(Some("/portal/x?y=1")), "/portal/x?y=1");
        for evil in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "evil.example",
            "/%2fevil.example",
            "/%5cevil.example",
            "/ok\r\nSet-Cookie: x=1",
            "%2F%2Fevil.example",
            "javascript:alert(1)",
        ] {
            assert_eq!(safe_return_to(Some(evil)), "/", "{evil}");
        }
        assert_eq!(safe_return_to(None), "/");
    }
}
