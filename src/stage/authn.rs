//! Authentication: who is calling.
//!
//! A route lists the methods that admit a request (`auth = ["api_key"]`);
//! `["none"]` marks it public. For API keys the key is read from the
//! configured headers (`X-API-Key` by default), from
//! `Authorization: Bearer`, or, only where a route names one, from a query
//! parameter. Then:
//!
//! - no key, or a key without the `pc_<id>_<secret>` shape: 401;
//! - an unknown ID or a wrong secret: 401, after the same work (a SHA-256
//!   and a constant-time comparison) either way;
//! - only once the secret matched: 401 for an expired or revoked key;
//! - a good key: the request carries its [`Principal`].
//!
//! Every 401 has `WWW-Authenticate` and a problem document, and is an
//! `auth.failure` audit event (never with the key). Successes are sampled
//! into `auth.success` events.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Request};
use subtle::ConstantTimeEq;

use crate::audit::{Audit, Event, Severity};
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::keys::{self, CachedKey, KeyCache};
use crate::pipeline::{Flow, RequestCx, Stage, StageResult, Verdict};
use crate::store::now_ms;

/// One way a request may authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// A public route.
    None,
    /// A key from the store.
    ApiKey,
}

impl AuthMethod {
    /// Methods a route may name, for messages.
    pub const NAMES: &'static [&'static str] = &["none", "api_key"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "none" => Some(AuthMethod::None),
            "api_key" => Some(AuthMethod::ApiKey),
            _ => None,
        }
    }
}

/// What a route requires.
#[derive(Clone, Debug, Default)]
pub struct AuthPolicy {
    pub methods: Vec<AuthMethod>,
    /// Scopes a principal must hold, all of them.
    pub scopes: Vec<String>,
    /// Query parameter that may carry a key on this route.
    pub key_query: Option<String>,
}

impl AuthPolicy {
    pub fn is_public(&self) -> bool {
        self.methods.contains(&AuthMethod::None)
    }
}

/// Who the request authenticated as.
#[derive(Clone, Debug)]
pub enum Principal {
    ApiKey(Arc<CachedKey>),
}

impl Principal {
    pub fn consumer(&self) -> &str {
        match self {
            Principal::ApiKey(key) => match &**key {
                CachedKey::Known { record, .. } => &record.consumer,
                CachedKey::Unknown { .. } => "",
            },
        }
    }

    pub fn scopes(&self) -> &[String] {
        match self {
            Principal::ApiKey(key) => match &**key {
                CachedKey::Known { record, .. } => &record.scopes,
                CachedKey::Unknown { .. } => &[],
            },
        }
    }

    pub fn key_id(&self) -> Option<&str> {
        match self {
            Principal::ApiKey(key) => match &**key {
                CachedKey::Known { record, .. } => Some(&record.id),
                CachedKey::Unknown { .. } => None,
            },
        }
    }

    /// The key's own rate limit, if its record has one.
    pub fn key_limit(&self) -> Option<&Arc<crate::ratelimit::Limit>> {
        match self {
            Principal::ApiKey(key) => match &**key {
                CachedKey::Known { limit, .. } => limit.as_ref(),
                CachedKey::Unknown { .. } => None,
            },
        }
    }

    /// The key record, for limits stored on it.
    pub fn key_record(&self) -> Option<&crate::store::keys::KeyRecord> {
        match self {
            Principal::ApiKey(key) => match &**key {
                CachedKey::Known { record, .. } => Some(record),
                CachedKey::Unknown { .. } => None,
            },
        }
    }
}

/// Why authentication failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Ambiguous,
    Invalid,
    Expired,
    Revoked,
}

impl AuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Ambiguous => "ambiguous",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Expired => "expired",
            AuthFailure::Revoked => "revoked",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            AuthFailure::Missing => "This route needs an API key.",
            AuthFailure::Malformed => "The API key is malformed.",
            AuthFailure::Ambiguous => "More than one API key was sent.",
            AuthFailure::Invalid => "The API key is not valid.",
            AuthFailure::Expired => "The API key has expired.",
            AuthFailure::Revoked => "The API key has been revoked.",
        }
    }
}

pub struct AuthnStage {
    pub keys: Option<Arc<KeyCache>>,
    pub audit: Audit,
    /// Headers a key may arrive in.
    pub key_headers: Vec<HeaderName>,
    /// Whether `Authorization: Bearer` may carry a key.
    pub bearer: bool,
    /// The `WWW-Authenticate` challenge sent with a 401.
    pub challenge: HeaderValue,
    /// Leave the key in the request for the upstream.
    pub forward_key: bool,
}

/// Work done for an unknown ID, so it costs what a wrong secret costs.
const NO_HASH: [u8; 32] = [0u8; 32];

impl AuthnStage {
    /// The key text the request presents, if exactly one distinct one.
    fn presented(
        &self,
        req: &Request<GatewayBody>,
        query_param: Option<&str>,
    ) -> Result<Option<String>, AuthFailure> {
        let mut found: Option<String> = None;
        let mut add = |value: &str| -> Result<(), AuthFailure> {
            match &found {
                Some(existing) if existing != value => Err(AuthFailure::Ambiguous),
                _ => {
                    found = Some(value.to_string());
                    Ok(())
                }
            }
        };
        for name in &self.key_headers {
            for value in req.headers().get_all(name) {
                add(value.to_str().map_err(|_| AuthFailure::Malformed)?.trim())?;
            }
        }
        if self.bearer {
            for value in req.headers().get_all(AUTHORIZATION) {
                let text = value.to_str().map_err(|_| AuthFailure::Malformed)?;
                if let Some((scheme, token)) = text.split_once(' ')
                    && scheme.eq_ignore_ascii_case("bearer")
                    && token.trim().starts_with(keys::PREFIX)
                {
                    add(token.trim())?;
                }
            }
        }
        if let (Some(param), Some(query)) = (query_param, req.uri().query()) {
            for (k, v) in form_urlencoded_pairs(query) {
                if k == param {
                    add(&v)?;
                }
            }
        }
        Ok(found)
    }

    fn fail(&self, cx: &RequestCx, failure: AuthFailure, key_id: Option<&str>) -> GatewayError {
        let mut event = Event::new("auth.failure", Severity::Warning)
            .for_request(cx)
            .detail("method", "api_key")
            .detail("reason", failure.reason());
        if let Some(id) = key_id {
            event = event.detail("key_id", id);
        }
        self.audit.emit(event);
        GatewayError::Unauthorized {
            detail: failure.detail(),
            challenge: self.challenge.clone(),
        }
    }

    /// Judges a presented secret (as its hash) against the cached entry.
    fn decide(&self, cx: &mut RequestCx, entry: Arc<CachedKey>, hash: [u8; 32], id: &str) -> StageResult {
        let (record, usage) = match &*entry {
            CachedKey::Unknown { .. } => {
                let _ = bool::from(hash.ct_eq(&NO_HASH));
                return Err(self.fail(cx, AuthFailure::Invalid, Some(id)));
            }
            CachedKey::Known { record, usage, .. } => (record, usage),
        };
        if !bool::from(hash.ct_eq(&record.secret_hash)) {
            return Err(self.fail(cx, AuthFailure::Invalid, Some(id)));
        }
        let now = now_ms();
        if record.revoked_at.is_some() {
            return Err(self.fail(cx, AuthFailure::Revoked, Some(id)));
        }
        if record.expires_at.is_some_and(|t| t <= now) {
            return Err(self.fail(cx, AuthFailure::Expired, Some(id)));
        }
        usage.record(now);
        if self.audit.sample_success() {
            self.audit.emit(
                Event::new("auth.success", Severity::Info)
                    .for_request(cx)
                    .consumer(record.consumer.as_str())
                    .detail("method", "api_key")
                    .detail("key_id", id),
            );
        }
        cx.principal = Some(Principal::ApiKey(entry.clone()));
        Ok(Flow::Continue)
    }

    /// Removes the key from the headers it may have come in, so the
    /// upstream (and its logs) never see it. A key in the query string is
    /// left where it is: routes opt into that knowingly.
    fn hide_key(&self, req: &mut Request<GatewayBody>) {
        for name in &self.key_headers {
            req.headers_mut().remove(name);
        }
        if self.bearer {
            let carries_key = |v: &HeaderValue| {
                v.to_str()
                    .ok()
                    .and_then(|v| v.split_once(' '))
                    .is_some_and(|(scheme, token)| {
                        scheme.eq_ignore_ascii_case("bearer") && token.trim().starts_with(keys::PREFIX)
                    })
            };
            // Every Authorization line that carried the key goes; others
            // (say, Basic for the backend's own use) stay, in order.
            if req.headers().get_all(AUTHORIZATION).iter().any(carries_key) {
                let kept: Vec<HeaderValue> = req
                    .headers()
                    .get_all(AUTHORIZATION)
                    .iter()
                    .filter(|v| !carries_key(v))
                    .cloned()
                    .collect();
                req.headers_mut().remove(AUTHORIZATION);
                for value in kept {
                    req.headers_mut().append(AUTHORIZATION, value);
                }
            }
        }
    }
}

/// `a=1&b=%20x` as decoded pairs.
fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (decode(k), decode(v))
    })
}

impl Stage for AuthnStage {
    fn name(&self) -> &'static str {
        "authn"
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request<GatewayBody>) -> Verdict<'a> {
        let policy = cx.policy.clone();
        let Some(route) = cx.route.map(|i| &policy.routes[i]) else {
            return Verdict::Ready(Ok(Flow::Continue));
        };
        if route.auth.is_public() || !route.auth.methods.contains(&AuthMethod::ApiKey) {
            return Verdict::Ready(Ok(Flow::Continue));
        }
        let text = match self.presented(req, route.auth.key_query.as_deref()) {
            Ok(Some(text)) => text,
            Ok(None) => return Verdict::Ready(Err(self.fail(cx, AuthFailure::Missing, None))),
            Err(failure) => return Verdict::Ready(Err(self.fail(cx, failure, None))),
        };
        let Some(presented) = keys::parse(&text) else {
            return Verdict::Ready(Err(self.fail(cx, AuthFailure::Malformed, None)));
        };
        let hash = keys::hash_secret(presented.secret);
        let id = presented.id.to_string();
        if !self.forward_key {
            self.hide_key(req);
        }
        let Some(cache) = self.keys.clone() else {
            return Verdict::Ready(Err(GatewayError::Unavailable(
                "the key store is not available".into(),
            )));
        };
        if let Some(entry) = cache.get_fresh(&id) {
            return Verdict::Ready(self.decide(cx, entry, hash, &id));
        }
        Verdict::Pending(Box::pin(async move {
            match cache.lookup(&id).await {
                Ok(entry) => self.decide(cx, entry, hash, &id),
                Err(error) => {
                    tracing::error!(request_id = cx.request_id(), %error, "key lookup failed");
                    Err(GatewayError::Unavailable("the key store is not available".into()))
                }
            }
        }))
    }
}
