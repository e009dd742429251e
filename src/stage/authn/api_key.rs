//! API keys (`auth = ["api_key"]`): read from the configured headers
//! (`X-API-Key` by default), from `Authorization: Bearer`, or, only where a
//! route names one, from a query parameter. Then:
//!
//! - a client past `[auth] failure_limit`: 429, before anything is read
//!   or looked up (see [`super::failure_limit`]);
//! - no key, or a key without the `pc_<id>_<secret>` shape: 401;
//! - an unknown ID or a wrong secret: 401, after the same work (a SHA-256
//!   and a constant-time comparison) either way;
//! - only once the secret matched: 401 for an expired or revoked key;
//! - a good key: the request carries its [`crate::principal::Principal`].

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Request};
use subtle::ConstantTimeEq;

use super::{AuthFailure, AuthnStage, RouteAuth};
use crate::audit::{Event, Severity};
use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::error::GatewayError;
use crate::keys::{self, CachedKey, KeyCache};
use crate::pipeline::{Flow, RequestCx, StageResult, Verdict};
use crate::principal::Method;
use crate::store::now_ms;

/// How keys are presented, and where they are looked up.
pub struct ApiKeyAuth {
    keys: Option<Arc<KeyCache>>,
    /// Headers a key may arrive in.
    headers: Vec<HeaderName>,
    /// Whether `Authorization: Bearer` may carry a key.
    bearer: bool,
    /// Leave the key in the request for the upstream.
    forward_key: bool,
}

impl ApiKeyAuth {
    pub fn compile(cx: &mut CompileCx<'_>) -> ApiKeyAuth {
        ApiKeyAuth {
            keys: cx.runtime.keys.clone(),
            headers: compile_key_headers(cx),
            bearer: cx.config.api_keys.bearer,
            forward_key: cx.config.api_keys.forward_key,
        }
    }

    #[cfg(test)]
    pub fn for_test() -> ApiKeyAuth {
        ApiKeyAuth {
            keys: None,
            headers: vec![HeaderName::from_static("x-api-key")],
            bearer: true,
            forward_key: false,
        }
    }

    /// The `WWW-Authenticate` challenge part for API keys.
    pub fn challenge(&self) -> String {
        let header = self
            .headers
            .first()
            .map(HeaderName::as_str)
            .unwrap_or("authorization");
        format!("ApiKey realm=\"portcullis\", header=\"{header}\"")
    }

    pub fn reads_bearer(&self) -> bool {
        self.bearer
    }

    /// On a route that reads no keys, a key sent anyway is still a secret
    /// the upstream might echo into a logged error body.
    pub fn note_unread(&self, cx: &mut RequestCx, req: &Request<GatewayBody>) {
        for name in &self.headers {
            for value in req.headers().get_all(name) {
                cx.credentials.add_token(value.clone());
            }
        }
    }
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

/// Work done for an unknown ID, so it costs what a wrong secret costs.
const NO_HASH: [u8; 32] = [0u8; 32];

/// Whether an `Authorization` value is `Bearer <an API key>`.
pub fn bearer_key(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && token.starts_with(keys::PREFIX)).then_some(token)
}

/// The key a request presents: its text, and the header value it came in
/// (kept so that logs of the upstream's answer can be scrubbed of it; for a
/// query parameter, its value as written in the URL).
pub struct Presented {
    pub(super) text: String,
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

impl ApiKeyAuth {
    /// The key text the request presents, if exactly one distinct one.
    pub fn presented(
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
        for name in &self.headers {
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

    /// Removes the key from the headers it may have come in, so the
    /// upstream (and its logs) never see it. A key in the query string is
    /// left where it is: routes opt into that knowingly.
    pub fn hide_key(&self, req: &mut Request<GatewayBody>) {
        for name in &self.headers {
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

impl AuthnStage {
    /// Authenticates a request that presents an API key.
    pub(super) fn api_key_access<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        auth: &'a RouteAuth,
        req: &mut Request<GatewayBody>,
        presented: Presented,
    ) -> Verdict<'a> {
        let api_keys = &self.api_keys;
        if let Some(decoded) = presented.decoded_from_query() {
            cx.credentials.add_token(decoded);
        }
        cx.credentials.add_token(presented.carrier);
        let Some(key) = keys::parse(&presented.text) else {
            return Verdict::Ready(Err(self.fail(
                cx,
                auth,
                AuthFailure::Malformed.refusal(),
                None,
                false,
            )));
        };
        let hash = keys::hash_secret(key.secret);
        let id = key.id;
        if !api_keys.forward_key {
            api_keys.hide_key(req);
        }
        let Some(cache) = api_keys.keys.clone() else {
            return Verdict::Ready(Err(GatewayError::Unavailable(
                "the key store is not available".into(),
            )));
        };
        if let Some(entry) = cache.get_fresh(id) {
            return Verdict::Ready(self.decide(cx, auth, entry, hash, id, false));
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
        // Owned only here: the cache hit above needs no copy of the ID.
        let id = id.to_string();
        Verdict::Pending(Box::pin(async move {
            match cache.lookup(&id).await {
                Ok(entry) => self.decide(cx, auth, entry, hash, &id, charged),
                Err(error) => {
                    tracing::error!(request_id = cx.request_id(), %error, "key lookup failed");
                    Err(GatewayError::Unavailable("the key store is not available".into()))
                }
            }
        }))
    }

    /// Judges a presented secret (as its hash) against the cached entry;
    /// `charged`: the lookup that found it was charged to the failure budget.
    fn decide(
        &self,
        cx: &mut RequestCx,
        auth: &RouteAuth,
        entry: Arc<CachedKey>,
        hash: [u8; 32],
        id: &str,
        charged: bool,
    ) -> StageResult {
        let fail = |cx: &mut RequestCx, failure: AuthFailure| {
            self.fail(cx, auth, failure.refusal(), Some(id), charged)
        };
        let (record, usage, principal) = match &*entry {
            CachedKey::Unknown { .. } => {
                let _ = bool::from(hash.ct_eq(&NO_HASH));
                return Err(fail(cx, AuthFailure::Invalid));
            }
            CachedKey::Known {
                record,
                usage,
                principal,
                ..
            } => (record, usage, principal),
        };
        if !bool::from(hash.ct_eq(&record.secret_hash)) {
            return Err(fail(cx, AuthFailure::Invalid));
        }
        let now = now_ms();
        if record.revoked_at.is_some() {
            return Err(fail(cx, AuthFailure::Revoked));
        }
        if record.expires_at.is_some_and(|t| t <= now) {
            return Err(fail(cx, AuthFailure::Expired));
        }
        usage.record(now);
        if self.audit.sample_success() {
            self.audit.emit(
                Event::new("auth.success", Severity::Info)
                    .for_request(cx)
                    .consumer(record.consumer.as_str())
                    .detail("method", Method::ApiKey.as_str())
                    .detail("key_id", id),
            );
        }
        cx.principal = Some(principal.clone());
        Ok(Flow::Continue)
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
