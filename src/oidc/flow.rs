//! The authorization-code flow with PKCE: the redirect to the provider and
//! the callback's code exchange and checks.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Kind, LoggedIn, LoginError, Provider, get_json};
use crate::sessions::crypto::random_token;
use crate::stage::authn::jwt::claims::list_claim;
use crate::stage::authn::jwt::{VerifyStep, now_secs};

/// How long a login may take between the redirect and the callback.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);

/// What the login cookie holds (encrypted) between redirect and callback.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Pending {
    /// The provider's name.
    pub p: String,
    pub state: String,
    pub nonce: String,
    /// The PKCE code verifier.
    pub verifier: String,
    /// Where to go afterwards (already a safe same-origin path).
    pub rd: String,
    /// Unix seconds after which the callback is refused.
    pub exp: u64,
}

impl Pending {
    pub fn new(provider: &str, rd: String) -> Pending {
        Pending {
            p: provider.to_string(),
            state: random_token(),
            nonce: random_token(),
            verifier: random_token(),
            rd,
            exp: now_secs() + LOGIN_TTL.as_secs(),
        }
    }

    /// Whether the callback's `state` is this login's, in time.
    pub fn matches(&self, provider: &str, state: &str) -> bool {
        self.p == provider
            && self.exp >= now_secs()
            && bool::from(self.state.as_bytes().ct_eq(state.as_bytes()))
    }

    fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.verifier.as_bytes()))
    }
}

/// The provider's authorization URL for this login.
pub async fn authorize_url(
    provider: &Provider,
    client: &reqwest::Client,
    redirect_uri: &str,
    pending: &Pending,
) -> Result<String, LoginError> {
    let endpoint = match &provider.kind {
        Kind::Oidc { .. } => provider.discovered(client).await?.authorization_endpoint.clone(),
        Kind::GitHub { web, .. } => format!("{web}/login/oauth/authorize"),
    };
    let scope = provider.scopes.join(" ");
    let challenge = pending.challenge();
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", provider.client_id.as_str()),
        ("redirect_uri", redirect_uri),
        ("scope", scope.as_str()),
        ("state", pending.state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    if matches!(provider.kind, Kind::Oidc { .. }) {
        params.push(("nonce", pending.nonce.as_str()));
    }
    // Google issues a refresh token only for offline access.
    if provider.name == "google" {
        params.push(("access_type", "offline"));
    }
    let query = serde_urlencoded::to_string(&params).map_err(|e| LoginError::Invalid(e.to_string()))?;
    let joiner = if endpoint.contains('?') { '&' } else { '?' };
    Ok(format!("{endpoint}{joiner}{query}"))
}

#[derive(Deserialize)]
pub(super) struct TokenResponse {
    pub access_token: Option<String>,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
    pub error: Option<String>,
}

/// Exchanges the code at the token endpoint (client secret in the form,
/// with the PKCE verifier).
pub(super) async fn exchange(
    provider: &Provider,
    client: &reqwest::Client,
    token_endpoint: &str,
    redirect_uri: &str,
    code: &str,
    pending: &Pending,
) -> Result<TokenResponse, LoginError> {
    let secret = String::from_utf8_lossy(provider.client_secret.expose()).into_owned();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("client_id", provider.client_id.as_str()),
        ("client_secret", secret.as_str()),
        ("code_verifier", pending.verifier.as_str()),
    ];
    let body = serde_urlencoded::to_string(form).map_err(|e| LoginError::Invalid(e.to_string()))?;
    let tokens: TokenResponse = get_json(
        client
            .post(token_endpoint)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json")
            .body(body),
    )
    .await?;
    if let Some(error) = &tokens.error {
        return Err(LoginError::Invalid(format!(
            "the provider refused the code: {error}"
        )));
    }
    Ok(tokens)
}

/// A provider's tokens as kept with a session.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct TokenSet {
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    /// Unix seconds.
    pub expires_at: Option<u64>,
}

impl TokenSet {
    /// Whether the access token ends within `margin` seconds.
    pub fn ends_soon(&self, margin: u64) -> bool {
        self.expires_at.is_some_and(|e| e <= now_secs() + margin)
    }

    /// Whether the access token has ended.
    pub fn expired(&self) -> bool {
        self.expires_at.is_some_and(|e| e <= now_secs())
    }
}

/// Renews the access token with the refresh token (OIDC providers; a
/// provider that rotates refresh tokens sends a new one).
pub async fn refresh(
    provider: &Provider,
    client: &reqwest::Client,
    old: &TokenSet,
) -> Result<TokenSet, LoginError> {
    let refresh_token = old
        .refresh_token
        .as_deref()
        .ok_or_else(|| LoginError::Invalid("no refresh token".into()))?;
    let token_endpoint = match &provider.kind {
        Kind::Oidc { .. } => provider.discovered(client).await?.token_endpoint.clone(),
        Kind::GitHub { web, .. } => format!("{web}/login/oauth/access_token"),
    };
    let secret = String::from_utf8_lossy(provider.client_secret.expose()).into_owned();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", provider.client_id.as_str()),
        ("client_secret", secret.as_str()),
    ];
    let body = serde_urlencoded::to_string(form).map_err(|e| LoginError::Invalid(e.to_string()))?;
    let tokens: TokenResponse = get_json(
        client
            .post(&token_endpoint)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json")
            .body(body),
    )
    .await?;
    if let Some(error) = &tokens.error {
        return Err(LoginError::Invalid(format!(
            "the provider refused the refresh: {error}"
        )));
    }
    Ok(TokenSet {
        access_token: tokens.access_token.or_else(|| old.access_token.clone()),
        refresh_token: tokens.refresh_token.or_else(|| old.refresh_token.clone()),
        id_token: tokens.id_token.or_else(|| old.id_token.clone()),
        expires_at: tokens.expires_in.map(|s| now_secs() + s),
    })
}

/// The callback: exchanges the code and finds out who logged in.
pub async fn finish(
    provider: &Provider,
    client: &reqwest::Client,
    redirect_uri: &str,
    code: &str,
    pending: &Pending,
) -> Result<LoggedIn, LoginError> {
    match &provider.kind {
        Kind::Oidc { .. } => finish_oidc(provider, client, redirect_uri, code, pending).await,
        Kind::GitHub { web, api } => {
            super::github::finish(provider, client, web, api, redirect_uri, code, pending).await
        }
    }
}

async fn finish_oidc(
    provider: &Provider,
    client: &reqwest::Client,
    redirect_uri: &str,
    code: &str,
    pending: &Pending,
) -> Result<LoggedIn, LoginError> {
    let discovered = provider.discovered(client).await?;
    let tokens = exchange(
        provider,
        client,
        &discovered.token_endpoint,
        redirect_uri,
        code,
        pending,
    )
    .await?;
    let id_token = tokens
        .id_token
        .as_deref()
        .ok_or_else(|| LoginError::Invalid("no ID token".into()))?;
    let verifier = provider.verifier(&discovered, id_token)?;
    let claims = match verifier.verify_claims(id_token, verifier.all(), now_secs()) {
        Ok((_, claims, _)) => claims,
        Err(VerifyStep::NeedKeys(source, attempts)) => {
            source.refresh_on_demand(attempts).await;
            match verifier.verify_claims(id_token, verifier.all(), now_secs()) {
                Ok((_, claims, _)) => claims,
                Err(VerifyStep::NeedKeys(..)) => {
                    return Err(LoginError::Invalid("the ID token's key is not known".into()));
                }
                Err(VerifyStep::Failed(f)) => return Err(LoginError::Invalid(f.detail().into())),
            }
        }
        Err(VerifyStep::Failed(f)) => return Err(LoginError::Invalid(f.detail().into())),
    };
    let nonce = claims.get("nonce").and_then(|v| v.as_str()).unwrap_or("");
    if !bool::from(nonce.as_bytes().ct_eq(pending.nonce.as_bytes())) {
        return Err(LoginError::Invalid(
            "the ID token's nonce is not this login's".into(),
        ));
    }
    if let Some(azp) = claims.get("azp").and_then(|v| v.as_str())
        && azp != provider.client_id
    {
        return Err(LoginError::Invalid(
            "the ID token was issued to another client".into(),
        ));
    }
    let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_string);
    let email = text("email");
    let verified = match claims.get("email_verified") {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "true",
        None => provider.vouches_for_email(&discovered.issuer),
        _ => false,
    };
    if !provider.email_allowed(email.as_deref(), verified) {
        return Err(LoginError::NotAllowed);
    }
    let sub = text("sub").ok_or_else(|| LoginError::Invalid("the ID token has no sub".into()))?;
    let username = email.clone().filter(|_| verified).unwrap_or(sub);
    let roles = provider
        .roles_claim
        .as_deref()
        .map(|path| list_claim(&claims, path))
        .unwrap_or_default();
    Ok(LoggedIn {
        username,
        email: email.filter(|_| verified),
        name: text("name"),
        roles,
        tokens: serde_json::json!({
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "id_token": tokens.id_token,
            "expires_at": tokens.expires_in.map(|s| now_secs() + s),
        }),
    })
}
