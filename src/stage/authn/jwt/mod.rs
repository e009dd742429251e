//! JSON Web Tokens (`auth = ["jwt"]`), checked as RFC 8725 advises.
//!
//! Each `[[auth.jwt]]` issuer names its `iss`, its audiences, an allow-list
//! of algorithms and where its keys come from (a secret for HS*, PEM files,
//! or a JWKS URL). A token is:
//!
//! 1. refused unread past `max_token_size`;
//! 2. matched to an issuer by its (not yet trusted) `iss`, among those the
//!    route accepts;
//! 3. refused unless its `alg` is on that issuer's list (`none` never is:
//!    it cannot be written in the config) and a key of that algorithm's
//!    family exists, chosen by `kid`. Key-carrying header parameters
//!    (`jku`, `x5u`, `jwk`, `x5c`) are never used;
//! 4. verified by `jsonwebtoken` (signature, `exp`, `nbf`, `iss`, `aud`),
//!    then checked for `iat` in the future, required claims and `typ`;
//! 5. turned into a [`Principal`] by the issuer's [`ClaimMap`].
//!
//! Verified tokens are cached by their SHA-256, so a client that sends the
//! same token again costs a hash and a map lookup, not a signature check;
//! the expiry is checked on every use, and a cached verdict made with keys
//! that have since changed is not trusted.

pub mod claims;
pub mod jwks;
pub mod keys;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use claims::{ClaimMap, ClaimProblem};
pub use jwks::{Health, JwksRegistry, JwksSource, JwksTiming};
use keys::{Family, KeySet, family_of};

use crate::config::{ByteSize, ConfigDuration, SecretRef};
use crate::principal::{Method, Principal};

/// Algorithms an issuer may allow (`none` is not one).
pub const ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
    "EdDSA",
];

/// At most this many issuers (a route's set of them is a bit mask).
pub const MAX_ISSUERS: usize = 64;

/// One `[[auth.jwt]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// Names the issuer in routes, logs, metrics and `X-Portcullis-Issuer`.
    pub name: String,
    /// The `iss` its tokens carry, exactly.
    pub issuer: String,
    /// Accepted `aud` values; a token must name one of them.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The algorithms its tokens may use, e.g. `["RS256"]`.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// The shared secret for HS256/384/512.
    pub secret: Option<SecretRef>,
    /// PEM public keys (RSA, EC or Ed25519).
    #[serde(default)]
    pub public_keys: Vec<PathBuf>,
    /// Where its JWKS is published (https, or http on loopback).
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again.
    #[serde(default = "JwtIssuerConfig::default_jwks_refresh")]
    pub jwks_refresh: ConfigDuration,
    /// The least time between two fetches, however many unknown `kid`s
    /// arrive; also the retry interval while fetches fail.
    #[serde(default = "JwtIssuerConfig::default_jwks_min_refresh_interval")]
    pub jwks_min_refresh_interval: ConfigDuration,
    /// How long the last good keys keep serving once fetches fail.
    #[serde(default = "JwtIssuerConfig::default_jwks_max_stale")]
    pub jwks_max_stale: ConfigDuration,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "JwtIssuerConfig::default_leeway")]
    pub leeway: ConfigDuration,
    /// Claims a token must carry (besides `exp`, `iss` and `aud`, which are
    /// always required).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// The `typ` header a token must carry (e.g. `at+jwt`), when set.
    pub typ: Option<String>,
    /// The claim naming the user.
    #[serde(default = "JwtIssuerConfig::default_user_claim")]
    pub user_claim: String,
    /// The claim holding scopes; `scope`, then `scp`, when unset.
    pub scopes_claim: Option<String>,
    /// The claim holding roles (a dotted path such as `realm_access.roles`).
    pub roles_claim: Option<String>,
    /// Claims passed upstream as `X-Portcullis-Claim-<name>` headers.
    #[serde(default)]
    pub forward_claims: Vec<String>,
    /// Larger tokens are refused before they are parsed.
    #[serde(default = "JwtIssuerConfig::default_max_token_size")]
    pub max_token_size: ByteSize,
    /// Pass the token on to the upstream (off: it is removed, and the
    /// upstream gets the `X-Portcullis-*` identity headers instead).
    #[serde(default)]
    pub forward_token: bool,
}

impl JwtIssuerConfig {
    fn default_jwks_refresh() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(600))
    }
    fn default_jwks_min_refresh_interval() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(30))
    }
    fn default_jwks_max_stale() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(6 * 3600))
    }
    fn default_leeway() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(60))
    }
    fn default_user_claim() -> String {
        "sub".into()
    }
    fn default_max_token_size() -> ByteSize {
        ByteSize(8 * 1024)
    }
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtFailure {
    Oversize,
    Malformed,
    UnknownIssuer,
    AlgorithmNotAllowed,
    WrongType,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongAudience,
    MissingClaim,
    UnusableClaims,
    /// The issuer's keys cannot be had (its JWKS was never fetched, or has
    /// failed for longer than `jwks_max_stale`).
    KeysUnavailable,
}

impl JwtFailure {
    pub fn reason(self) -> &'static str {
        match self {
            JwtFailure::Oversize => "oversize",
            JwtFailure::Malformed => "malformed",
            JwtFailure::UnknownIssuer => "unknown_issuer",
            JwtFailure::AlgorithmNotAllowed => "algorithm_not_allowed",
            JwtFailure::WrongType => "wrong_type",
            JwtFailure::UnknownKey => "unknown_key",
            JwtFailure::BadSignature => "bad_signature",
            JwtFailure::Expired => "expired",
            JwtFailure::NotYetValid => "not_yet_valid",
            JwtFailure::IssuedInFuture => "issued_in_future",
            JwtFailure::WrongAudience => "wrong_audience",
            JwtFailure::MissingClaim => "missing_claim",
            JwtFailure::UnusableClaims => "unusable_claims",
            JwtFailure::KeysUnavailable => "keys_unavailable",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            JwtFailure::Oversize => "The token is too large.",
            JwtFailure::Malformed => "The token is not a well-formed signed JWT.",
            JwtFailure::UnknownIssuer => "The token's issuer is not accepted here.",
            JwtFailure::AlgorithmNotAllowed => "The token's algorithm is not allowed.",
            JwtFailure::WrongType => "The token's type is not accepted.",
            JwtFailure::UnknownKey => "The token's signing key is not known.",
            JwtFailure::BadSignature => "The token's signature is not valid.",
            JwtFailure::Expired => "The token has expired.",
            JwtFailure::NotYetValid => "The token is not valid yet.",
            JwtFailure::IssuedInFuture => "The token was issued in the future.",
            JwtFailure::WrongAudience => "The token is not meant for this service.",
            JwtFailure::MissingClaim => "The token lacks a required claim.",
            JwtFailure::UnusableClaims => "The token's claims cannot be used.",
            JwtFailure::KeysUnavailable => "The token issuer's keys are not available.",
        }
    }
}

/// Where an issuer's keys come from.
pub enum KeySource {
    Fixed(Arc<KeySet>),
    Jwks(Arc<JwksSource>),
}

/// One compiled issuer.
pub struct Issuer {
    pub name: Arc<str>,
    iss: String,
    algorithms: Vec<Algorithm>,
    /// One `jsonwebtoken` validation per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
    pub keys: KeySource,
    leeway_secs: u64,
    required_claims: Vec<String>,
    typ: Option<String>,
    claims: ClaimMap,
    pub max_token_size: usize,
    pub forward_token: bool,
}

/// A set of issuers, as a bit mask over [`JwtVerifier::issuers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IssuerSet(pub u64);

impl IssuerSet {
    pub fn contains(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }
}

/// A token that verified: its principal and what a later use rechecks.
struct Verified {
    principal: Principal,
    issuer: usize,
    exp: u64,
    nbf: Option<u64>,
    generation: u64,
}

/// What a verification came to.
pub enum Outcome {
    Done(Result<(Principal, usize), JwtFailure>),
    /// The token names a key the issuer's JWKS lacks (or the JWKS was never
    /// fetched): refresh (`attempts` is what was seen) and verify again.
    NeedKeys {
        source: Arc<JwksSource>,
        attempts: u64,
    },
}

/// Every issuer, and the cache of verified tokens.
pub struct JwtVerifier {
    pub issuers: Vec<Issuer>,
    cache: quick_cache::sync::Cache<[u8; 32], Arc<Verified>>,
}

/// The unverified parts of a token needed to pick an issuer and a key.
#[derive(Deserialize)]
struct Peek {
    iss: Option<String>,
}

pub fn now_secs() -> u64 {
    jwks::now_ms() / 1000
}

impl JwtVerifier {
    pub fn new(issuers: Vec<Issuer>, cache_size: usize) -> JwtVerifier {
        JwtVerifier {
            issuers,
            cache: quick_cache::sync::Cache::new(cache_size.max(16)),
        }
    }

    /// Every issuer's index.
    pub fn all(&self) -> IssuerSet {
        IssuerSet(if self.issuers.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << self.issuers.len()) - 1
        })
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.issuers.iter().position(|i| &*i.name == name)
    }

    /// The largest token any issuer accepts.
    pub fn max_token_size(&self) -> usize {
        self.issuers.iter().map(|i| i.max_token_size).max().unwrap_or(0)
    }

    /// The cache key of a token.
    pub fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The verdict on a token seen before, if it is cached and still
    /// trustworthy: verified for an issuer the route accepts, with keys
    /// that have not changed since. Its time claims are checked again.
    pub fn cached(
        &self,
        digest: &[u8; 32],
        allowed: IssuerSet,
    ) -> Option<Result<(Principal, usize), JwtFailure>> {
        let hit = self.cache.get(digest)?;
        let issuer = &self.issuers[hit.issuer];
        let keys_unchanged = match &issuer.keys {
            KeySource::Fixed(_) => true,
            KeySource::Jwks(source) => source.generation() == hit.generation,
        };
        (keys_unchanged && allowed.contains(hit.issuer)).then(|| {
            self.still_valid(&hit, now_secs())
                .map(|()| (hit.principal.clone(), hit.issuer))
        })
    }

    /// Verifies a token that is not cached (`digest` from [`Self::digest`])
    /// for a route that accepts `allowed` issuers, and caches it if good.
    pub fn verify(&self, token: &str, digest: [u8; 32], allowed: IssuerSet) -> Outcome {
        match self.verify_uncached(token, allowed, now_secs()) {
            Ok(verified) => {
                let done = Ok((verified.principal.clone(), verified.issuer));
                self.cache.insert(digest, Arc::new(verified));
                Outcome::Done(done)
            }
            Err(VerifyStep::Failed(f)) => Outcome::Done(Err(f)),
            Err(VerifyStep::NeedKeys(source, attempts)) => Outcome::NeedKeys { source, attempts },
        }
    }

    /// The time checks a cached verdict must pass again on each use.
    fn still_valid(&self, hit: &Verified, now: u64) -> Result<(), JwtFailure> {
        let leeway = self.issuers[hit.issuer].leeway_secs;
        if hit.exp.saturating_add(leeway) < now {
            return Err(JwtFailure::Expired);
        }
        if hit.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(JwtFailure::NotYetValid);
        }
        Ok(())
    }

    fn verify_uncached(&self, token: &str, allowed: IssuerSet, now: u64) -> Result<Verified, VerifyStep> {
        let (index, claims, generation) = self.verify_claims(token, allowed, now)?;
        let issuer = &self.issuers[index];
        let principal = issuer
            .claims
            .principal(Method::Jwt, &issuer.name, &claims)
            .map_err(|p| {
                VerifyStep::Failed(match p {
                    ClaimProblem::NoUser => JwtFailure::MissingClaim,
                    ClaimProblem::Unusable => JwtFailure::UnusableClaims,
                })
            })?;
        Ok(Verified {
            principal,
            issuer: index,
            exp: claims.get("exp").and_then(serde_json::Value::as_u64).unwrap_or(0),
            nbf: claims.get("nbf").and_then(serde_json::Value::as_u64),
            generation,
        })
    }

    /// Every check of a token (not cached): the issuer's index, the
    /// verified claims and the key generation they were verified with. Also
    /// what login verifies ID tokens with.
    pub fn verify_claims(
        &self,
        token: &str,
        allowed: IssuerSet,
        now: u64,
    ) -> Result<(usize, serde_json::Map<String, serde_json::Value>, u64), VerifyStep> {
        let fail = |f| Err(VerifyStep::Failed(f));
        if token.len() > self.max_token_size() {
            return fail(JwtFailure::Oversize);
        }
        // Three non-empty parts: a token with its signature stripped is
        // malformed, not unsigned.
        let mut parts = token.split('.');
        let shape_ok = parts.clone().count() == 3 && parts.all(|p| !p.is_empty());
        if !shape_ok {
            return fail(JwtFailure::Malformed);
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return fail(JwtFailure::Malformed);
        };
        let Ok(peek) = jsonwebtoken::dangerous::insecure_decode_claims::<Peek>(token) else {
            return fail(JwtFailure::Malformed);
        };
        let Some(index) = peek
            .iss
            .as_deref()
            .and_then(|iss| self.issuers.iter().position(|i| i.iss == iss))
            .filter(|&i| allowed.contains(i))
        else {
            return fail(JwtFailure::UnknownIssuer);
        };
        let issuer = &self.issuers[index];
        if token.len() > issuer.max_token_size {
            return fail(JwtFailure::Oversize);
        }
        let alg = header.alg;
        let Some((_, validation)) = issuer.validations.iter().find(|(a, _)| *a == alg) else {
            return fail(JwtFailure::AlgorithmNotAllowed);
        };
        if let Some(want) = &issuer.typ
            && !header.typ.as_deref().is_some_and(|t| typ_matches(t, want))
        {
            return fail(JwtFailure::WrongType);
        }
        let (keys, generation) = match &issuer.keys {
            KeySource::Fixed(keys) => (keys.clone(), 0),
            KeySource::Jwks(source) => {
                let current = source.current(jwks::now_ms());
                match current {
                    Some(c) if header.kid.as_deref().is_none_or(|kid| c.keys.has_kid(kid)) => {
                        (c.keys, c.generation)
                    }
                    _ => return Err(VerifyStep::NeedKeys(source.clone(), source.attempts())),
                }
            }
        };
        let mut last = JwtFailure::UnknownKey;
        for key in keys.candidates(alg, header.kid.as_deref()) {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token, &key.key, validation,
            ) {
                Ok(data) => {
                    let claims = data.claims;
                    self.check_claims(issuer, &claims, now)
                        .map_err(VerifyStep::Failed)?;
                    return Ok((index, claims, generation));
                }
                Err(e) => {
                    last = failure_of(e.kind());
                    // Only a bad signature is worth trying the next key for.
                    if last != JwtFailure::BadSignature {
                        break;
                    }
                }
            }
        }
        fail(last)
    }

    /// The checks `jsonwebtoken` leaves to us.
    fn check_claims(
        &self,
        issuer: &Issuer,
        claims: &serde_json::Map<String, serde_json::Value>,
        now: u64,
    ) -> Result<(), JwtFailure> {
        if let Some(iat) = claims.get("iat") {
            let Some(iat) = iat.as_u64() else {
                return Err(JwtFailure::Malformed);
            };
            if iat > now.saturating_add(issuer.leeway_secs) {
                return Err(JwtFailure::IssuedInFuture);
            }
        }
        if issuer.required_claims.iter().any(|c| !claims.contains_key(c)) {
            return Err(JwtFailure::MissingClaim);
        }
        Ok(())
    }
}

/// An unfinished verification.
pub enum VerifyStep {
    Failed(JwtFailure),
    NeedKeys(Arc<JwksSource>, u64),
}

/// `typ` compares case-insensitively, with or without `application/`
/// (RFC 7515 section 4.1.9).
fn typ_matches(got: &str, want: &str) -> bool {
    let strip = |s: &str| {
        let lower = s.to_ascii_lowercase();
        lower
            .strip_prefix("application/")
            .map(str::to_string)
            .unwrap_or(lower)
    };
    strip(got) == strip(want)
}

fn failure_of(kind: &jsonwebtoken::errors::ErrorKind) -> JwtFailure {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => JwtFailure::BadSignature,
        K::ExpiredSignature => JwtFailure::Expired,
        K::ImmatureSignature => JwtFailure::NotYetValid,
        K::InvalidAudience => JwtFailure::WrongAudience,
        K::InvalidIssuer => JwtFailure::UnknownIssuer,
        K::MissingRequiredClaim(_) => JwtFailure::MissingClaim,
        K::InvalidAlgorithm => JwtFailure::AlgorithmNotAllowed,
        _ => JwtFailure::Malformed,
    }
}

/// Compiles one issuer; problems go to `problem(key, message)`.
pub fn compile_issuer(
    config: &JwtIssuerConfig,
    secret: Option<crate::config::SecretValue>,
    base_dir: &std::path::Path,
    registry: &JwksRegistry,
    production: bool,
    problem: &mut dyn FnMut(&str, String),
) -> Option<Issuer> {
    if config.name.is_empty()
        || !config
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        problem("name", "use letters, digits, `-`, `_` and `.`".into());
    }
    if config.issuer.is_empty() {
        problem("issuer", "the `iss` value tokens carry is required".into());
    }
    if config.audiences.is_empty() {
        problem(
            "audiences",
            "list the audiences this gateway accepts (a token meant for another service must not pass)"
                .into(),
        );
    }
    let mut algorithms = Vec::new();
    if config.algorithms.is_empty() {
        problem(
            "algorithms",
            "list the algorithms tokens may use, e.g. [\"RS256\"]".into(),
        );
    }
    for name in &config.algorithms {
        match name.parse::<Algorithm>() {
            Ok(a) if ALGORITHMS.contains(&name.as_str()) => algorithms.push(a),
            _ => problem(
                "algorithms",
                format!(
                    "`{name}` is not an algorithm this version verifies ({})",
                    ALGORITHMS.join(", ")
                ),
            ),
        }
    }
    let hmac = algorithms.iter().any(|a| family_of(*a) == Family::Hmac);
    let asymmetric = algorithms.iter().any(|a| family_of(*a) != Family::Hmac);
    let sources = usize::from(config.secret.is_some())
        + usize::from(!config.public_keys.is_empty())
        + usize::from(config.jwks_url.is_some());
    if sources != 1 {
        problem(
            "",
            "give the issuer's keys in exactly one of `secret`, `public_keys` or `jwks_url`".into(),
        );
        return None;
    }
    // A secret serves HMAC only, public keys never HMAC: an issuer cannot
    // mix them, so no token can pick the family its key is read as.
    if hmac && config.secret.is_none() {
        problem(
            "algorithms",
            "HS256/384/512 need `secret`; public keys serve RS, PS, ES and EdDSA only".into(),
        );
    }
    if asymmetric && config.secret.is_some() {
        problem("algorithms", "a `secret` serves HS256/384/512 only".into());
    }
    let keys = if config.secret.is_some() {
        let secret = secret?;
        if secret.expose().len() < 32 {
            problem(
                "secret",
                "an HMAC secret must be at least 32 bytes (RFC 7518 section 3.2)".into(),
            );
        }
        KeySource::Fixed(Arc::new(KeySet::from_secret(secret.expose())))
    } else if let Some(url) = &config.jwks_url {
        if let Err(why) = check_jwks_url(url, production) {
            problem("jwks_url", why);
        }
        for (key, value) in [
            ("jwks_refresh", config.jwks_refresh.0),
            ("jwks_min_refresh_interval", config.jwks_min_refresh_interval.0),
        ] {
            if value < Duration::from_secs(1) {
                problem(key, "must be at least 1s".into());
            }
        }
        KeySource::Jwks(registry.source(
            &config.name,
            url,
            JwksTiming {
                refresh: config.jwks_refresh.0,
                min_interval: config.jwks_min_refresh_interval.0,
                max_stale: config.jwks_max_stale.0,
            },
        ))
    } else {
        match KeySet::from_pem_files(base_dir, &config.public_keys) {
            Ok(set) => {
                for family in set.families() {
                    if !algorithms.iter().any(|a| family_of(*a) == family) {
                        problem(
                            "public_keys",
                            format!("a {family:?} key is listed but no {family:?} algorithm is allowed"),
                        );
                    }
                }
                KeySource::Fixed(Arc::new(set))
            }
            Err(why) => {
                problem("public_keys", why);
                return None;
            }
        }
    };
    let mut forward = Vec::new();
    for claim in &config.forward_claims {
        match claims::claim_header(claim) {
            Some(h) => forward.push((claim.clone(), h)),
            None => problem("forward_claims", format!("`{claim}` cannot name a header")),
        }
    }
    if config.max_token_size.0 < 256 || config.max_token_size.0 > 64 * 1024 {
        problem("max_token_size", "must be between 256B and 64KiB".into());
    }
    let leeway_secs = config.leeway.0.as_secs();
    if leeway_secs > 600 {
        problem(
            "leeway",
            "at most 10m; clocks that far apart need fixing, not leeway".into(),
        );
    }
    let validations = algorithms
        .iter()
        .map(|&alg| {
            let mut v = Validation::new(alg);
            v.leeway = leeway_secs;
            v.validate_nbf = true;
            v.set_issuer(&[&config.issuer]);
            v.set_audience(&config.audiences);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            (alg, v)
        })
        .collect();
    Some(Issuer {
        name: config.name.as_str().into(),
        iss: config.issuer.clone(),
        algorithms,
        validations,
        keys,
        leeway_secs,
        required_claims: config.required_claims.clone(),
        typ: config.typ.clone(),
        claims: ClaimMap {
            user: config.user_claim.clone(),
            scopes: config.scopes_claim.clone(),
            roles: config.roles_claim.clone(),
            forward,
        },
        max_token_size: config.max_token_size.0 as usize,
        forward_token: config.forward_token,
    })
}

impl Issuer {
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }
}

/// A JWKS URL must be https, except on loopback (tests, sidecars) or in
/// development: keys fetched in the clear can be swapped in transit.
fn check_jwks_url(url: &str, production: bool) -> Result<(), String> {
    let parsed: http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    let host = parsed.host().unwrap_or("");
    match parsed.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let loopback = host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback || !production {
                Ok(())
            } else {
                Err("must be https (http only on loopback or in development)".into())
            }
        }
        _ => Err(format!("`{url}` must be an https URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typ_compares_like_a_media_type() {
        assert!(typ_matches("at+JWT", "at+jwt"));
        assert!(typ_matches("application/at+jwt", "at+jwt"));
        assert!(!typ_matches("JWT", "at+jwt"));
    }

    #[test]
    fn jwks_urls_are_https_except_on_loopback() {
        assert!(check_jwks_url("https://idp.example.com/jwks", true).is_ok());
        assert!(check_jwks_url("http://127.0.0.1:9/jwks", true).is_ok());
        assert!(check_jwks_url("http://[::1]:9/jwks", true).is_ok());
        assert!(check_jwks_url("http://idp.example.com/jwks", true).is_err());
        assert!(check_jwks_url("http://idp.example.com/jwks", false).is_ok());
        assert!(check_jwks_url("file:///etc/passwd", false).is_err());
    }
}
