//! GitHub: OAuth2 (no ID token), then who the token belongs to from its
//! REST API: the user, their verified primary e-mail, and (for
//! `allowed_orgs`) their organisations.

use serde::Deserialize;

use super::flow::{Pending, exchange};
use super::{LoggedIn, LoginError, Provider, get_json};

#[derive(Deserialize)]
struct User {
    login: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct Email {
    email: String,
    primary: bool,
    verified: bool,
}

#[derive(Deserialize)]
struct Org {
    login: String,
}

fn api_get(client: &reqwest::Client, url: String, token: &str) -> reqwest::RequestBuilder {
    client
        .get(url)
        .bearer_auth(token)
        .header(http::header::ACCEPT, "application/vnd.github+json")
        .header("X-GitHub-Api-Version", "2022-11-28")
}

pub(super) async fn finish(
    provider: &Provider,
    client: &reqwest::Client,
    web: &str,
    api: &str,
    redirect_uri: &str,
    code: &str,
    pending: &Pending,
) -> Result<LoggedIn, LoginError> {
    let token_url = format!("{web}/login/oauth/access_token");
    let tokens = exchange(provider, client, &token_url, redirect_uri, code, pending).await?;
    let token = tokens
        .access_token
        .clone()
        .ok_or_else(|| LoginError::Invalid("no access token".into()))?;
    let user: User = get_json(api_get(client, format!("{api}/user"), &token)).await?;
    let emails: Vec<Email> = get_json(api_get(client, format!("{api}/user/emails"), &token)).await?;
    let email = emails
        .into_iter()
        .find(|e| e.primary && e.verified)
        .map(|e| e.email);
    if !provider.email_allowed(email.as_deref(), email.is_some()) {
        return Err(LoginError::NotAllowed);
    }
    let mut roles = Vec::new();
    if !provider.allowed_orgs.is_empty() {
        let orgs: Vec<Org> =
            get_json(api_get(client, format!("{api}/user/orgs?per_page=100"), &token)).await?;
        roles = orgs
            .into_iter()
            .map(|o| o.login.to_ascii_lowercase())
            .filter(|o| provider.allowed_orgs.contains(o))
            .collect();
        if roles.is_empty() {
            return Err(LoginError::NotAllowed);
        }
    }
    Ok(LoggedIn {
        username: user.login,
        email,
        name: user.name,
        // The allowed organisations the user belongs to, for routes' `roles`.
        roles,
        // GitHub App user tokens expire and come with a refresh token;
        // OAuth App tokens do neither.
        tokens: serde_json::json!({
            "access_token": token,
            "refresh_token": tokens.refresh_token,
            "expires_at": tokens.expires_in.map(|s| crate::stage::authn::jwt::now_secs() + s),
        }),
    })
}
