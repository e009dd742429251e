//! Authentication: who is calling.
//!
//! A route lists the methods that admit a request (`auth = ["api_key"]`);
//! `["none"]` marks it public. For API keys the key is read from the
//! configured headers (`X-API-Key` by default), from
//! `Authorization: Bearer`, or, only where a route names one, from a query
//! parameter. Then:
//!
//! - a client past `[auth] failure_limit`: 429, before anything is read
//!   or looked up (see [`failure_limit`]);
//! - no key, or a key without the `pc_<id>_<secret>` shape: 401;
//! - an unknown ID or a wrong secret: 401, after the same work (a SHA-256
//!   and a constant-time comparison) either way;
//! - only once the secret matched: 401 for an expired or revoked key;
//! - a good key: the request carries its [`Principal`].
//!
//! Every 401 has `WWW-Authenticate` and a problem document, and is an
//! `auth.failure` audit event (never with the key). Successes are sampled
//! into `auth.success` events.

pub mod failure_limit;

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Request};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::audit::{Audit, Event, Severity};
use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::config::{ConfigDuration, RateSpec};
use crate::error::GatewayError;
use crate::keys::{self, CachedKey, KeyCache};
use crate::pipeline::{Flow, Phases, RequestCx, Route, Slot, Stage, StageResult, Verdict};
use crate::store::now_ms;
pub use failure_limit::{FailureLimit, FailureLimiter};

fn default_true() -> bool {
    true
}

/// `[api_keys]`: how keys are presented and cached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// Headers a key may arrive in.
    #[serde(default = "ApiKeysConfig::default_headers")]
    pub headers: Vec<String>,
    /// Also accept `Authorization: Bearer <key>`.
    #[serde(default = "default_true")]
    pub bearer: bool,
    /// Pass the key itself on to the upstream (off: the upstream gets the
    /// `X-Portcullis-*` identity headers instead, and cannot leak the key).
    #[serde(default)]
    pub forward_key: bool,
    /// Keys (found or not) kept in memory.
    #[serde(default = "ApiKeysConfig::default_cache_size")]
    pub cache_size: usize,
    /// How long a cached key is trusted before it is read again. Changes made
    /// anywhere reach every instance within about a second regardless.
    #[serde(default = "ApiKeysConfig::default_cache_ttl")]
    pub cache_ttl: ConfigDuration,
    /// How often batched usage counts are written.
    #[serde(default = "ApiKeysConfig::default_usage_flush")]
    pub usage_flush: ConfigDuration,
    /// The limit of a key that has none of its own, e.g. "100 per hour".
    pub default_rate_limit: Option<RateSpec>,
}

impl ApiKeysConfig {
    fn default_headers() -> Vec<String> {
        vec!["X-API-Key".into()]
    }
    fn default_cache_size() -> usize {
        100_000
    }
    fn default_cache_ttl() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(300))
    }
    fn default_usage_flush() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(5))
    }
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        ApiKeysConfig {
            headers: Self::default_headers(),
            bearer: true,
            forward_key: false,
            cache_size: Self::default_cache_size(),
            cache_ttl: Self::default_cache_ttl(),
            usage_flush: Self::default_usage_flush(),
            default_rate_limit: None,
        }
    }
}

/// `[auth]`: rules for every kind of authentication.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Failed authentications a client IP may make before it is refused
    /// with 429 without a lookup: `"100 per minute"` in production,
    /// `"off"` in development, unless set.
    pub failure_limit: Option<FailureLimit>,
}

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

/// What a route requires: its slot in this stage.
#[derive(Clone, Debug, Default)]
pub struct RouteAuth {
    pub methods: Vec<AuthMethod>,
    /// Query parameter that may carry a key on this route.
    pub key_query: Option<String>,
}

impl RouteAuth {
    pub fn is_public(&self) -> bool {
        self.methods.contains(&AuthMethod::None)
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
    keys: Option<Arc<KeyCache>>,
    audit: Audit,
    /// Headers a key may arrive in.
    key_headers: Vec<HeaderName>,
    /// Whether `Authorization: Bearer` may carry a key.
    bearer: bool,
    /// The `WWW-Authenticate` challenge sent with a 401.
    challenge: HeaderValue,
    /// Leave the key in the request for the upstream.
    forward_key: bool,
    failures: Option<FailureLimiter>,
    /// Keep the credentials a request carries for redaction (production,
    /// where upstream error bodies are logged).
    redact: bool,
    slot: Slot<RouteAuth>,
}

/// Compiles `[api_keys]`, `[auth]` and every route's `auth` and
/// `api_key_query`.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let config = cx.config;
    let production = cx.production();
    let key_headers = compile_key_headers(cx);
    let failures = FailureLimiter::compile(
        config.auth.failure_limit.as_ref(),
        production,
        cx.runtime,
        config.rate_limits.ipv6_prefix,
    )
    .unwrap_or_else(|problem| {
        cx.problems.at("auth.failure_limit", problem);
        None
    });
    let slot = cx.per_route(|route, problems| Some(compile_route(route, problems, production)));
    Some(Arc::new(AuthnStage {
        keys: cx.runtime.keys.clone(),
        audit: cx.runtime.audit.clone(),
        key_headers,
        bearer: config.api_keys.bearer,
        challenge: key_challenge(config),
        forward_key: config.api_keys.forward_key,
        failures,
        redact: production,
        slot,
    }))
}

fn compile_key_headers(cx: &mut CompileCx<'_>) -> Vec<HeaderName> {
    let keys = &cx.config.api_keys;
    let mut names = Vec::new();
    for name in &keys.headers {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) if h == AUTHORIZATION || h == http::header::COOKIE => cx.problems.at(
                "api_keys.headers",
                format!("`{name}` cannot carry keys; use `bearer = true` for Authorization"),
            ),
            Ok(h) => names.push(h),
            Err(_) => cx
                .problems
                .at("api_keys.headers", format!("`{name}` is not a header name")),
        }
    }
    if names.is_empty() && !keys.bearer {
        cx.problems
            .at("api_keys", "keys need a header or `bearer = true`");
    }
    names
}

fn compile_route(
    route: &crate::compile::RouteEntry<'_>,
    problems: &mut crate::compile::Problems<'_>,
    production: bool,
) -> RouteAuth {
    let config = route.config;
    let mut policy = RouteAuth {
        methods: Vec::new(),
        key_query: config.api_key_query.clone(),
    };
    match &config.auth {
        None => {
            if production {
                problems.in_route(
                    route,
                    "",
                    "the route has no `auth`; production requires one (write auth = [\"none\"] for a public route)",
                );
            }
            policy.methods.push(AuthMethod::None);
        }
        Some(names) => {
            if names.is_empty() {
                problems.in_route(
                    route,
                    "auth",
                    "list at least one method, e.g. [\"api_key\"] or [\"none\"]",
                );
            }
            for name in names {
                match AuthMethod::parse(name) {
                    Some(m) => policy.methods.push(m),
                    None => {
                        let hint = crate::config::load::nearest(name, AuthMethod::NAMES)
                            .map(|n| format!("; did you mean `{n}`?"))
                            .unwrap_or_default();
                        problems.in_route(
                            route,
                            "auth",
                            format!(
                                "`{name}` is not an authentication method this version offers ({}){hint}",
                                AuthMethod::NAMES.join(", ")
                            ),
                        );
                    }
                }
            }
        }
    }
    if policy.methods.contains(&AuthMethod::None) && policy.methods.len() > 1 {
        problems.in_route(
            route,
            "auth",
            "\"none\" makes a route public; it cannot be combined with other methods",
        );
    }
    if policy.key_query.is_some() && !policy.methods.contains(&AuthMethod::ApiKey) {
        problems.in_route(
            route,
            "api_key_query",
            "only routes with auth = [\"api_key\"] read keys",
        );
    }
    policy
}

/// The `WWW-Authenticate` challenge for API-key routes.
fn key_challenge(config: &crate::config::Config) -> HeaderValue {
    let header = config
        .api_keys
        .headers
        .first()
        .map(String::as_str)
        .unwrap_or("Authorization");
    let mut text = format!("ApiKey realm=\"portcullis\", header=\"{header}\"");
    if config.api_keys.bearer {
        text.push_str(", Bearer realm=\"portcullis\"");
    }
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("ApiKey realm=\"portcullis\""))
}

/// Work done for an unknown ID, so it costs what a wrong secret costs.
const NO_HASH: [u8; 32] = [0u8; 32];

/// Whether an `Authorization` value is `Bearer <an API key>`.
fn bearer_key(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && token.starts_with(keys::PREFIX)).then_some(token)
}

/// The key a request presents: its text, and the header value it came in
/// (kept so that logs of the upstream's answer can be scrubbed of it; for a
/// query parameter, its value as written in the URL).
struct Presented {
    text: String,
    carrier: HeaderValue,
}

impl Presented {
    /// The key as decoded, when it came percent-encoded in the query.
    fn decoded_from_query(&self) -> Option<HeaderValue> {
        (self.carrier.as_bytes() != self.text.as_bytes())
            .then(|| HeaderValue::from_str(&self.text).ok())
            .flatten()
    }
}

impl AuthnStage {
    /// The key text the request presents, if exactly one distinct one.
    fn presented(
        &self,
        req: &Request<GatewayBody>,
        query_param: Option<&str>,
    ) -> Result<Option<Presented>, AuthFailure> {
        let mut found: Option<Presented> = None;
        let mut add = |text: &str, carrier: &dyn Fn() -> HeaderValue| -> Result<(), AuthFailure> {
            match &found {
                Some(existing) if existing.text != text => Err(AuthFailure::Ambiguous),
                Some(_) => Ok(()),
                None => {
                    found = Some(Presented {
                        text: text.to_string(),
                        carrier: carrier(),
                    });
                    Ok(())
                }
            }
        };
        for name in &self.key_headers {
            for value in req.headers().get_all(name) {
                let text = value.to_str().map_err(|_| AuthFailure::Malformed)?.trim();
                add(text, &|| value.clone())?;
            }
        }
        if self.bearer {
            for value in req.headers().get_all(AUTHORIZATION) {
                value.to_str().map_err(|_| AuthFailure::Malformed)?;
                if let Some(token) = bearer_key(value) {
                    add(token, &|| value.clone())?;
                }
            }
        }
        if let (Some(param), Some(query)) = (query_param, req.uri().query()) {
            for (k, v, raw) in form_urlencoded_pairs(query) {
                if k == param {
                    add(&v, &|| {
                        HeaderValue::from_str(raw).unwrap_or(HeaderValue::from_static(""))
                    })?;
                }
            }
        }
        Ok(found)
    }

    /// A 401, audited. The failure is charged to the client's failure
    /// budget, unless no credential was presented or its lookup was charged
    /// already (`charged`); a client past its budget gets 429 instead, and
    /// no `auth.failure` event (its refusals are audited once per window).
    fn fail(
        &self,
        cx: &RequestCx,
        failure: AuthFailure,
        key_id: Option<&str>,
        charged: bool,
    ) -> GatewayError {
        if failure != AuthFailure::Missing
            && !charged
            && let Some(failures) = &self.failures
            && let Err(retry_after_secs) = failures.charge(cx)
        {
            return GatewayError::AuthFailuresLimited { retry_after_secs };
        }
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

    /// Judges a presented secret (as its hash) against the cached entry;
    /// `charged`: the lookup that found it was charged to the failure budget.
    fn decide(
        &self,
        cx: &mut RequestCx,
        entry: Arc<CachedKey>,
        hash: [u8; 32],
        id: &str,
        charged: bool,
    ) -> StageResult {
        let (record, usage, principal) = match &*entry {
            CachedKey::Unknown { .. } => {
                let _ = bool::from(hash.ct_eq(&NO_HASH));
                return Err(self.fail(cx, AuthFailure::Invalid, Some(id), charged));
            }
            CachedKey::Known {
                record,
                usage,
                principal,
                ..
            } => (record, usage, principal),
        };
        if !bool::from(hash.ct_eq(&record.secret_hash)) {
            return Err(self.fail(cx, AuthFailure::Invalid, Some(id), charged));
        }
        let now = now_ms();
        if record.revoked_at.is_some() {
            return Err(self.fail(cx, AuthFailure::Revoked, Some(id), charged));
        }
        if record.expires_at.is_some_and(|t| t <= now) {
            return Err(self.fail(cx, AuthFailure::Expired, Some(id), charged));
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
        cx.principal = Some(principal.clone());
        Ok(Flow::Continue)
    }

    /// Removes the key from the headers it may have come in, so the
    /// upstream (and its logs) never see it. A key in the query string is
    /// left where it is: routes opt into that knowingly.
    fn hide_key(&self, req: &mut Request<GatewayBody>) {
        for name in &self.key_headers {
            req.headers_mut().remove(name);
        }
        // Every Authorization line that carried the key goes; others (say,
        // Basic for the backend's own use) stay, in order.
        if self.bearer
            && req
                .headers()
                .get_all(AUTHORIZATION)
                .iter()
                .any(|v| bearer_key(v).is_some())
        {
            let kept: Vec<HeaderValue> = req
                .headers()
                .get_all(AUTHORIZATION)
                .iter()
                .filter(|v| bearer_key(v).is_none())
                .cloned()
                .collect();
            req.headers_mut().remove(AUTHORIZATION);
            for value in kept {
                req.headers_mut().append(AUTHORIZATION, value);
            }
        }
    }
}

/// `a=1&b=%20x` as decoded pairs, each with its value as written.
fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String, &str)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (decode(k), decode(v), v)
    })
}

impl Stage for AuthnStage {
    fn name(&self) -> &'static str {
        "authn"
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS
    }

    fn access<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        route: &'a Route,
        req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        let Some(auth) = route.get(self.slot) else {
            return Verdict::CONTINUE;
        };
        if auth.is_public() || !auth.methods.contains(&AuthMethod::ApiKey) {
            // A key sent where none is read is still a secret the upstream
            // might echo into a logged error body.
            if self.redact {
                for name in &self.key_headers {
                    for value in req.headers().get_all(name) {
                        cx.credentials.add_token(value.clone());
                    }
                }
            }
            return Verdict::CONTINUE;
        }
        let presented = match self.presented(req, auth.key_query.as_deref()) {
            Ok(Some(presented)) => presented,
            Ok(None) => return Verdict::Ready(Err(self.fail(cx, AuthFailure::Missing, None, false))),
            Err(failure) => return Verdict::Ready(Err(self.fail(cx, failure, None, false))),
        };
        if let Some(decoded) = presented.decoded_from_query() {
            cx.credentials.add_token(decoded);
        }
        cx.credentials.add_token(presented.carrier);
        let Some(key) = keys::parse(&presented.text) else {
            return Verdict::Ready(Err(self.fail(cx, AuthFailure::Malformed, None, false)));
        };
        let hash = keys::hash_secret(key.secret);
        let id = key.id.to_string();
        if !self.forward_key {
            self.hide_key(req);
        }
        let Some(cache) = self.keys.clone() else {
            return Verdict::Ready(Err(GatewayError::Unavailable(
                "the key store is not available".into(),
            )));
        };
        if let Some(entry) = cache.get_fresh(&id) {
            return Verdict::Ready(self.decide(cx, entry, hash, &id, false));
        }
        // Not in the cache: the lookup is charged to the client's failure
        // budget first, in one step, and refused without running once the
        // budget is spent.
        if let Some(failures) = &self.failures
            && let Err(retry_after_secs) = failures.charge(cx)
        {
            return Verdict::Ready(Err(GatewayError::AuthFailuresLimited { retry_after_secs }));
        }
        let charged = self.failures.is_some();
        Verdict::Pending(Box::pin(async move {
            match cache.lookup(&id).await {
                Ok(entry) => self.decide(cx, entry, hash, &id, charged),
                Err(error) => {
                    tracing::error!(request_id = cx.request_id(), %error, "key lookup failed");
                    Err(GatewayError::Unavailable("the key store is not available".into()))
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(failures: Option<FailureLimiter>) -> AuthnStage {
        AuthnStage {
            keys: None,
            audit: Audit::disabled(),
            key_headers: vec![HeaderName::from_static("x-api-key")],
            bearer: true,
            challenge: HeaderValue::from_static("ApiKey"),
            forward_key: false,
            failures,
            redact: true,
            slot: Slot::new(0),
        }
    }

    fn request(headers: &[(&str, &str)], uri: &str) -> Request<GatewayBody> {
        let mut req = Request::new(GatewayBody::Empty);
        *req.uri_mut() = uri.parse().unwrap();
        for (k, v) in headers {
            req.headers_mut()
                .append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        req
    }

    #[test]
    fn one_key_from_any_carrier_and_two_different_ones_are_ambiguous() {
        let s = stage(None);
        let key = keys::generate().key;
        let other = keys::generate().key;
        let same = request(
            &[("x-api-key", &key), ("authorization", &format!("Bearer {key}"))],
            "/",
        );
        assert_eq!(s.presented(&same, None).unwrap().unwrap().text, key);
        let two = request(
            &[("x-api-key", &key), ("authorization", &format!("Bearer {other}"))],
            "/",
        );
        assert_eq!(s.presented(&two, None).err(), Some(AuthFailure::Ambiguous));
        let query = request(&[], &format!("/x?token={key}"));
        assert!(
            s.presented(&query, None).unwrap().is_none(),
            "the query is read only where a route says"
        );
        assert_eq!(s.presented(&query, Some("token")).unwrap().unwrap().text, key);
        let basic = request(&[("authorization", "Basic dTpw")], "/");
        assert!(s.presented(&basic, None).unwrap().is_none());
    }

    #[test]
    fn the_key_is_removed_but_other_authorization_lines_stay() {
        let s = stage(None);
        let key = keys::generate().key;
        let mut req = request(
            &[
                ("x-api-key", &key),
                ("authorization", "Basic dTpw"),
                ("authorization", &format!("Bearer {key}")),
            ],
            "/",
        );
        s.hide_key(&mut req);
        assert!(req.headers().get("x-api-key").is_none());
        let left: Vec<_> = req.headers().get_all(AUTHORIZATION).iter().collect();
        assert_eq!(left, ["Basic dTpw"]);
    }

    #[test]
    fn lookups_and_failures_share_one_budget_charged_before_the_lookup() {
        let runtime = crate::runtime::Runtime::offline();
        let limit = FailureLimit::Limit(crate::config::rate::parse_rate("3 per minute").unwrap());
        let failures = FailureLimiter::compile(Some(&limit), true, &runtime, 64).unwrap();
        let s = stage(failures);
        let cx = RequestCx::for_test();
        let budget = s.failures.as_ref().unwrap();
        // A failure that cost no lookup, then two lookups: the budget of three is spent.
        let _ = s.fail(&cx, AuthFailure::Malformed, None, false);
        assert!(budget.charge(&cx).is_ok());
        // A failure found by a charged lookup is not charged twice.
        let _ = s.fail(&cx, AuthFailure::Invalid, None, true);
        assert!(budget.charge(&cx).is_ok());
        let wait = budget.charge(&cx).expect_err("the fourth is refused");
        assert!((1..=20).contains(&wait), "{wait}");
        // Past the budget, a failure is answered 429, not 401.
        assert!(matches!(
            s.fail(&cx, AuthFailure::Invalid, None, false),
            GatewayError::AuthFailuresLimited { .. }
        ));
        // A missing key is not a failed attempt.
        let fresh = stage(
            FailureLimiter::compile(Some(&limit), true, &crate::runtime::Runtime::offline(), 64).unwrap(),
        );
        for _ in 0..10 {
            let _ = fresh.fail(&cx, AuthFailure::Missing, None, false);
        }
        assert!(fresh.failures.as_ref().unwrap().charge(&cx).is_ok());
    }

    #[test]
    fn the_failure_limit_is_on_in_production_and_off_in_development_by_default() {
        let runtime = crate::runtime::Runtime::offline();
        assert!(
            FailureLimiter::compile(None, true, &runtime, 64)
                .unwrap()
                .is_some()
        );
        assert!(
            FailureLimiter::compile(None, false, &runtime, 64)
                .unwrap()
                .is_none()
        );
        assert!(
            FailureLimiter::compile(Some(&FailureLimit::Off), true, &runtime, 64)
                .unwrap()
                .is_none()
        );
        let per_key = FailureLimit::Limit(crate::config::rate::parse_rate("3 per minute per key").unwrap());
        assert!(FailureLimiter::compile(Some(&per_key), true, &runtime, 64).is_err());
    }
}
