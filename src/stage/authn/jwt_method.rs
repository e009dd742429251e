//! The `jwt` method in the authn stage: where a route reads tokens from,
//! verifying them with the [`JwtVerifier`], and removing them from what the
//! upstream receives.
//!
//! Tokens come from `Authorization: Bearer` and, where a route names them,
//! a cookie (`jwt_cookie`) or a header (`jwt_header`). On a route that also
//! reads API keys, a bearer value shaped like a key (`pc_…`) is a key.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Request};

use super::jwt::{self, IssuerSet, JwtFailure, JwtVerifier, Outcome};
use super::{AuthMethod, AuthnStage, Refusal, RouteAuth};
use crate::body::GatewayBody;
use crate::compile::{CompileCx, Problems, RouteEntry};
use crate::error::GatewayError;
use crate::pipeline::{Flow, RequestCx, StageResult, Verdict};
use crate::principal::{Method, Principal};

/// Compiles `[[auth.jwt]]`; `None` when no issuer is configured.
pub(super) fn compile_issuers(cx: &mut CompileCx<'_>) -> Option<JwtVerifier> {
    let config = &cx.config.auth;
    if config.jwt.is_empty() {
        return None;
    }
    if config.jwt.len() > jwt::MAX_ISSUERS {
        cx.problems
            .at("auth.jwt", format!("at most {} issuers", jwt::MAX_ISSUERS));
        return None;
    }
    if config.jwt_cache_size == 0 || config.jwt_cache_size > 10_000_000 {
        cx.problems
            .at("auth.jwt_cache_size", "must be between 1 and 10000000");
    }
    let production = cx.production();
    let mut issuers = Vec::new();
    for (i, issuer) in config.jwt.iter().enumerate() {
        let at = format!("auth.jwt[{i}]");
        if config.jwt[..i].iter().any(|o| o.name == issuer.name) {
            cx.problems.at(
                &format!("{at}.name"),
                format!("`{}` names two issuers", issuer.name),
            );
        }
        if config.jwt[..i].iter().any(|o| o.issuer == issuer.issuer) {
            cx.problems.at(
                &format!("{at}.issuer"),
                format!("`{}` is configured twice", issuer.issuer),
            );
        }
        let secret = issuer.secret.as_ref().and_then(|reference| {
            crate::policy::resolve_secret(cx, &format!("{at}.secret"), Some(reference))
        });
        let mut problems = Vec::new();
        let compiled = jwt::compile_issuer(
            issuer,
            secret,
            &cx.loaded.base_dir,
            &cx.runtime.jwks,
            production,
            &mut |key, message| problems.push((key.to_string(), message)),
        );
        for (key, message) in problems {
            let key = if key.is_empty() {
                at.clone()
            } else {
                format!("{at}.{key}")
            };
            cx.problems.at(&key, message);
        }
        issuers.extend(compiled);
    }
    Some(JwtVerifier::new(issuers, config.jwt_cache_size))
}

/// A route's `jwt_issuers`, `jwt_cookie` and `jwt_header`.
pub(super) fn compile_route(
    route: &RouteEntry<'_>,
    problems: &mut Problems<'_>,
    methods: &[AuthMethod],
    verifier: Option<&JwtVerifier>,
) -> (IssuerSet, Option<String>, Option<HeaderName>) {
    let config = route.config;
    let reads_tokens = methods.contains(&AuthMethod::Jwt);
    if reads_tokens && verifier.is_none() {
        problems.in_route(route, "auth", "\"jwt\" needs at least one [[auth.jwt]] issuer");
    }
    for (field, set) in [
        ("jwt_issuers", config.jwt_issuers.is_some()),
        ("jwt_cookie", config.jwt_cookie.is_some()),
        ("jwt_header", config.jwt_header.is_some()),
    ] {
        if set && !reads_tokens {
            problems.in_route(route, field, "only routes with auth = [\"jwt\"] read tokens");
        }
    }
    let mut issuers = verifier.map(JwtVerifier::all).unwrap_or_default();
    if let (Some(names), Some(verifier)) = (&config.jwt_issuers, verifier) {
        issuers = IssuerSet(0);
        for name in names {
            match verifier.index_of(name) {
                Some(i) => issuers.0 |= 1 << i,
                None => problems.in_route(
                    route,
                    "jwt_issuers",
                    format!("`{name}` is not the name of an [[auth.jwt]] issuer"),
                ),
            }
        }
    }
    let header = config
        .jwt_header
        .as_ref()
        .and_then(|name| match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) if h == AUTHORIZATION || h == http::header::COOKIE => {
                problems.in_route(
                    route,
                    "jwt_header",
                    "Authorization is always read; cookies are named with `jwt_cookie`",
                );
                None
            }
            Ok(h) => Some(h),
            Err(_) => {
                problems.in_route(route, "jwt_header", format!("`{name}` is not a header name"));
                None
            }
        });
    if let Some(cookie) = &config.jwt_cookie
        && (cookie.is_empty()
            || !cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    {
        problems.in_route(route, "jwt_cookie", format!("`{cookie}` is not a cookie name"));
    }
    (issuers, config.jwt_cookie.clone(), header)
}

/// Where a token came from, so it can be removed before the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carrier {
    Bearer,
    Header,
    Cookie,
}

/// The token a request presents.
pub(super) struct Token {
    text: String,
    carriers: Vec<Carrier>,
    /// The raw header value, for redaction of logged upstream answers.
    raw: HeaderValue,
}

fn ambiguous() -> Refusal {
    Refusal {
        method: Some(Method::Jwt),
        reason: "ambiguous",
        detail: "More than one bearer token was sent.",
        presented: true,
    }
}

fn refusal(failure: JwtFailure) -> Refusal {
    Refusal {
        method: Some(Method::Jwt),
        reason: failure.reason(),
        detail: failure.detail(),
        presented: true,
    }
}

impl AuthnStage {
    /// The one distinct token the request presents, if any.
    pub(super) fn jwt_presented(
        &self,
        req: &Request<GatewayBody>,
        auth: &RouteAuth,
    ) -> Result<Option<Token>, Refusal> {
        let mut found: Option<Token> = None;
        let mut add = |text: &str, raw: &HeaderValue, carrier: Carrier| -> Result<(), Refusal> {
            match &mut found {
                Some(t) if t.text != text => Err(ambiguous()),
                Some(t) => {
                    t.carriers.push(carrier);
                    Ok(())
                }
                None => {
                    found = Some(Token {
                        text: text.to_string(),
                        carriers: vec![carrier],
                        raw: raw.clone(),
                    });
                    Ok(())
                }
            }
        };
        let keys_too = auth.methods.contains(&AuthMethod::ApiKey) && self.api_keys.reads_bearer();
        for value in req.headers().get_all(AUTHORIZATION) {
            let Some(token) = bearer_token(value) else {
                continue;
            };
            if keys_too && super::api_key::bearer_key(value).is_some() {
                continue;
            }
            add(token, value, Carrier::Bearer)?;
        }
        if let Some(name) = &auth.jwt_header {
            for value in req.headers().get_all(name) {
                let text = value.to_str().map_err(|_| refusal(JwtFailure::Malformed))?.trim();
                add(text, value, Carrier::Header)?;
            }
        }
        if let Some(name) = &auth.jwt_cookie {
            for value in crate::cookies::values(req.headers(), name) {
                let raw = HeaderValue::from_str(value).map_err(|_| refusal(JwtFailure::Malformed))?;
                add(value, &raw, Carrier::Cookie)?;
            }
        }
        Ok(found)
    }

    /// Verifies a presented token: from the cache when it was seen before,
    /// else (charged to the failure budget) by signature, waiting for a
    /// JWKS refresh when its key is not known yet.
    pub(super) fn jwt_access<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        auth: &'a RouteAuth,
        req: &'a mut Request<GatewayBody>,
        token: Token,
    ) -> Verdict<'a> {
        cx.credentials.add_token(token.raw.clone());
        let Some(verifier) = self.jwt.clone() else {
            return Verdict::Ready(Err(GatewayError::Unavailable(
                "no token issuer is configured".into(),
            )));
        };
        let digest = JwtVerifier::digest(&token.text);
        if let Some(verdict) = verifier.cached(&digest, auth.jwt_issuers) {
            return Verdict::Ready(self.jwt_decide(cx, auth, req, &verifier, &token, verdict, true));
        }
        if let Some(failures) = &self.failures
            && let Err(retry_after_secs) = failures.charge(cx)
        {
            return Verdict::Ready(Err(GatewayError::AuthFailuresLimited { retry_after_secs }));
        }
        let charged = self.failures.is_some();
        match verifier.verify(&token.text, digest, auth.jwt_issuers) {
            Outcome::Done(verdict) => {
                Verdict::Ready(self.jwt_decide(cx, auth, req, &verifier, &token, verdict, charged))
            }
            Outcome::NeedKeys { source, attempts } => Verdict::Pending(Box::pin(async move {
                source.refresh_on_demand(attempts).await;
                let verdict = match verifier.verify(&token.text, digest, auth.jwt_issuers) {
                    Outcome::Done(verdict) => verdict,
                    Outcome::NeedKeys { source, .. } => {
                        Err(if source.current(jwt::jwks::now_ms()).is_some() {
                            JwtFailure::UnknownKey
                        } else {
                            JwtFailure::KeysUnavailable
                        })
                    }
                };
                self.jwt_decide(cx, auth, req, &verifier, &token, verdict, charged)
            })),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn jwt_decide(
        &self,
        cx: &mut RequestCx,
        auth: &RouteAuth,
        req: &mut Request<GatewayBody>,
        verifier: &Arc<JwtVerifier>,
        token: &Token,
        verdict: Result<(Principal, usize), JwtFailure>,
        charged: bool,
    ) -> StageResult {
        match verdict {
            Ok((principal, issuer)) => {
                self.succeeded(cx, Method::Jwt, principal.name(), None);
                if !verifier.issuers[issuer].forward_token {
                    hide_token(req, auth, token);
                }
                cx.principal = Some(principal);
                Ok(Flow::Continue)
            }
            Err(JwtFailure::KeysUnavailable) => {
                self.metrics
                    .failure(Method::Jwt.as_str(), JwtFailure::KeysUnavailable.reason());
                Err(GatewayError::Unavailable(
                    "the token issuer's keys are not available".into(),
                ))
            }
            Err(failure) => Err(self.fail(cx, auth, refusal(failure), None, charged)),
        }
    }
}

/// `Authorization: Bearer <token>`'s token. (UTF-8 is checked rather than
/// `to_str`'s byte-by-byte visible-ASCII test: a token is ~500 bytes, and
/// anything that is not base64url fails verification anyway.)
fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    if bytes.len() < 7 || !bytes[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = std::str::from_utf8(&bytes[7..]).ok()?.trim();
    (!token.is_empty()).then_some(token)
}

/// Removes the token from wherever it came, so the upstream (and its logs)
/// never see it; other `Authorization` lines and cookies stay.
fn hide_token(req: &mut Request<GatewayBody>, auth: &RouteAuth, token: &Token) {
    let headers = req.headers_mut();
    for carrier in &token.carriers {
        match carrier {
            Carrier::Bearer => {
                // Usually the token is the one Authorization line.
                let mut lines = headers.get_all(AUTHORIZATION).iter();
                if lines.next().is_some() && lines.next().is_none() {
                    headers.remove(AUTHORIZATION);
                    continue;
                }
                let kept: Vec<HeaderValue> = headers
                    .get_all(AUTHORIZATION)
                    .iter()
                    .filter(|v| bearer_token(v) != Some(token.text.as_str()))
                    .cloned()
                    .collect();
                headers.remove(AUTHORIZATION);
                for value in kept {
                    headers.append(AUTHORIZATION, value);
                }
            }
            Carrier::Header => {
                if let Some(name) = &auth.jwt_header {
                    headers.remove(name);
                }
            }
            Carrier::Cookie => {
                if let Some(name) = &auth.jwt_cookie {
                    crate::cookies::remove(headers, name);
                }
            }
        }
    }
}
