//! Login with an outside identity provider: OpenID Connect (Google,
//! Microsoft, any OIDC issuer, by discovery) and GitHub (OAuth2 and its
//! user, e-mail and organisation APIs).
//!
//! The authorization-code flow with PKCE (S256), `state` and `nonce`:
//! `/.auth/login/{name}` sends the browser to the provider with a fresh
//! verifier, state and nonce kept in a short-lived encrypted cookie (nothing
//! is stored for a visitor who never comes back); `/.auth/callback/{name}`
//! checks the state, exchanges the code (with the verifier and the client
//! secret), verifies the ID token (signature by the provider's JWKS through
//! the JWT verifier, `iss`, `aud` = the client ID, `exp`, `iat`, and the
//! `nonce`), applies the provider's allow-lists, and creates a session.
//! Provider tokens are kept server side, encrypted, never in the cookie.
//!
//! Why not the `openidconnect` crate: it brings a second HTTP client
//! (reqwest 0.12) and a second set of signature crates, while the ID token
//! check is exactly the RFC 8725-hardened JWT verification (with JWKS
//! refresh, refresh floor and stale serving) the gateway already has; what
//! remains is three well-specified HTTP exchanges.

pub mod flow;
pub mod github;
pub mod providers;

pub use providers::Providers;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::config::{SecretRef, SecretValue};
use crate::stage::authn::jwt::{self, JwksRegistry, JwtIssuerConfig, JwtVerifier};

/// One `[[auth.oidc]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProviderConfig {
    /// In `/.auth/login/{name}`, `/.auth/callback/{name}` and
    /// `X-Portcullis-Issuer`. `google`, `microsoft` and `github` get their
    /// provider's defaults.
    pub name: String,
    /// `oidc` (default; `github` for the name `github`) or `github`.
    pub kind: Option<String>,
    /// What the login page's button says; the name, capitalised, by default.
    pub label: Option<String>,
    /// The OIDC issuer (discovery at `<issuer>/.well-known/openid-configuration`).
    /// Defaults: Google's; Microsoft's for `tenant`.
    pub issuer: Option<String>,
    /// Microsoft: a tenant ID or domain, `organizations` or `common`.
    pub tenant: Option<String>,
    pub client_id: String,
    pub client_secret: SecretRef,
    /// Scopes asked for; `openid email profile` (GitHub: `read:user
    /// user:email`, plus `read:org` with `allowed_orgs`).
    pub scopes: Option<Vec<String>>,
    /// Only these e-mail addresses may log in (verified addresses only).
    #[serde(default)]
    pub allowed_emails: Vec<String>,
    /// Only addresses in these domains may log in.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// GitHub: only members of these organisations may log in.
    #[serde(default)]
    pub allowed_orgs: Vec<String>,
    /// Let any account of the provider log in (production refuses a
    /// provider without an allow-list unless this is set).
    #[serde(default)]
    pub allow_any_account: bool,
    /// The claim holding roles (OIDC), a dotted path.
    pub roles_claim: Option<String>,
    /// GitHub Enterprise Server or a test server: the web and API bases.
    pub github_url: Option<String>,
    pub github_api_url: Option<String>,
}

/// What kind of protocol a provider speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Oidc { issuer: String },
    GitHub { web: String, api: String },
}

/// A compiled provider.
pub struct Provider {
    pub name: String,
    pub label: String,
    pub kind: Kind,
    pub client_id: String,
    pub client_secret: SecretValue,
    pub scopes: Vec<String>,
    pub allowed_emails: Vec<String>,
    pub allowed_domains: Vec<String>,
    pub allowed_orgs: Vec<String>,
    pub roles_claim: Option<String>,
    /// Discovery and the ID-token verifier, made at first use.
    discovered: OnceCell<Arc<Discovered>>,
    registry: Arc<JwksRegistry>,
}

/// What OIDC discovery told us.
pub struct Discovered {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    doc: DiscoveryDocument,
    /// ID-token verifiers by tenant: one, unless the issuer is Microsoft's
    /// multi-tenant `…/{tenantid}/v2.0`, whose tokens name their tenant.
    verifiers: std::sync::Mutex<std::collections::HashMap<String, Arc<JwtVerifier>>>,
}

/// Tenants remembered for a multi-tenant issuer.
const MAX_TENANTS: usize = 1000;

#[derive(Deserialize, Clone)]
struct DiscoveryDocument {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<String>,
}

/// Why a login could not complete (shown to the user plainly, audited with
/// its reason).
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the identity provider could not be reached: {0}")]
    Provider(String),
    #[error("the identity provider's answer was not valid: {0}")]
    Invalid(String),
    #[error("this account may not sign in here")]
    NotAllowed,
    #[error("the sign-in took too long or was started elsewhere; try again")]
    State,
}

impl LoginError {
    pub fn reason(&self) -> &'static str {
        match self {
            LoginError::Provider(_) => "provider_unreachable",
            LoginError::Invalid(_) => "invalid_answer",
            LoginError::NotAllowed => "not_allowed",
            LoginError::State => "state",
        }
    }
}

/// Who logged in, as the provider vouches.
#[derive(Debug, Clone, Default)]
pub struct LoggedIn {
    pub username: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub roles: Vec<String>,
    /// Provider tokens (JSON), to keep encrypted with the session.
    pub tokens: serde_json::Value,
}

fn capitalised(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Compiles one provider; problems go to `problem(key, message)`.
pub fn compile_provider(
    config: &OidcProviderConfig,
    secret: Option<SecretValue>,
    registry: &Arc<JwksRegistry>,
    production: bool,
    problem: &mut dyn FnMut(&str, String),
) -> Option<Provider> {
    let name = config.name.as_str();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        problem(
            "name",
            "use letters, digits, `-` and `_` (it is part of the callback URL)".into(),
        );
    }
    let kind_name = config.kind.clone().unwrap_or_else(|| {
        if name == "github" {
            "github".into()
        } else {
            "oidc".into()
        }
    });
    let kind = match kind_name.as_str() {
        "github" => Kind::GitHub {
            web: config
                .github_url
                .clone()
                .unwrap_or_else(|| "https://github.com".into()),
            api: config
                .github_api_url
                .clone()
                .unwrap_or_else(|| "https://api.github.com".into()),
        },
        "oidc" => {
            let issuer = match (&config.issuer, name, &config.tenant) {
                (Some(issuer), _, _) => issuer.trim_end_matches('/').to_string(),
                (None, "google", _) => "https://accounts.google.com".into(),
                (None, "microsoft", Some(tenant)) => {
                    format!("https://login.microsoftonline.com/{tenant}/v2.0")
                }
                (None, "microsoft", None) => {
                    problem(
                        "tenant",
                        "Microsoft needs `tenant` (a tenant ID, `organizations` or `common`)".into(),
                    );
                    return None;
                }
                (None, _, _) => {
                    problem("issuer", "an OIDC provider needs `issuer`".into());
                    return None;
                }
            };
            Kind::Oidc { issuer }
        }
        other => {
            problem("kind", format!("`{other}` is not `oidc` or `github`"));
            return None;
        }
    };
    if matches!(kind, Kind::Oidc { .. }) && !config.allowed_orgs.is_empty() {
        problem("allowed_orgs", "organisations are a GitHub allow-list".into());
    }
    let has_allow_list = !config.allowed_emails.is_empty()
        || !config.allowed_domains.is_empty()
        || !config.allowed_orgs.is_empty();
    if production && !has_allow_list && !config.allow_any_account {
        problem(
            "",
            "say who may log in: allowed_emails, allowed_domains or allowed_orgs (or allow_any_account = true)".into(),
        );
    }
    let scopes = config.scopes.clone().unwrap_or_else(|| match kind {
        Kind::GitHub { .. } if !config.allowed_orgs.is_empty() => {
            vec!["read:user".into(), "user:email".into(), "read:org".into()]
        }
        Kind::GitHub { .. } => vec!["read:user".into(), "user:email".into()],
        // Microsoft issues refresh tokens only for `offline_access`.
        Kind::Oidc { .. } if name == "microsoft" => {
            vec![
                "openid".into(),
                "email".into(),
                "profile".into(),
                "offline_access".into(),
            ]
        }
        Kind::Oidc { .. } => vec!["openid".into(), "email".into(), "profile".into()],
    });
    if matches!(kind, Kind::Oidc { .. }) && !scopes.iter().any(|s| s == "openid") {
        problem("scopes", "OIDC needs the `openid` scope".into());
    }
    Some(Provider {
        name: name.to_string(),
        label: config.label.clone().unwrap_or_else(|| match name {
            "github" => "GitHub".into(),
            other => capitalised(other),
        }),
        kind,
        client_id: config.client_id.clone(),
        client_secret: secret?,
        scopes,
        allowed_emails: config
            .allowed_emails
            .iter()
            .map(|e| e.to_ascii_lowercase())
            .collect(),
        allowed_domains: config
            .allowed_domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect(),
        allowed_orgs: config
            .allowed_orgs
            .iter()
            .map(|o| o.to_ascii_lowercase())
            .collect(),
        roles_claim: config.roles_claim.clone(),
        discovered: OnceCell::new(),
        registry: registry.clone(),
    })
}

/// Fetches a JSON document with a time and size bound.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
) -> Result<T, LoginError> {
    const MAX: usize = 1 << 20;
    let mut response = request
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| LoginError::Provider(e.without_url().to_string()))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| LoginError::Provider(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX {
            return Err(LoginError::Invalid("the answer is larger than 1 MiB".into()));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(LoginError::Invalid(format!(
            "the provider answered {}",
            status.as_u16()
        )));
    }
    serde_json::from_slice(&body).map_err(|e| LoginError::Invalid(e.to_string()))
}

impl Provider {
    /// Discovery, once per provider (retried at the next login when it
    /// fails).
    pub async fn discovered(&self, client: &reqwest::Client) -> Result<Arc<Discovered>, LoginError> {
        let Kind::Oidc { issuer } = &self.kind else {
            return Err(LoginError::Invalid("not an OIDC provider".into()));
        };
        self.discovered
            .get_or_try_init(|| async {
                let url = format!("{issuer}/.well-known/openid-configuration");
                let doc: DiscoveryDocument = get_json(client.get(&url)).await?;
                // A discovery document for another issuer is a mix-up.
                // Microsoft names its issuer by tenant ID, also when the
                // tenant was configured by domain, and with a `{tenantid}`
                // template for multi-tenant logins.
                let microsoft = self.name == "microsoft"
                    && doc.issuer.starts_with("https://login.microsoftonline.com/")
                    && doc.issuer.trim_end_matches('/').ends_with("/v2.0");
                if doc.issuer.trim_end_matches('/') != issuer && !microsoft {
                    return Err(LoginError::Invalid(format!(
                        "discovery names the issuer `{}`",
                        doc.issuer
                    )));
                }
                Ok(Arc::new(Discovered {
                    issuer: doc.issuer.clone(),
                    authorization_endpoint: doc.authorization_endpoint.clone(),
                    token_endpoint: doc.token_endpoint.clone(),
                    doc,
                    verifiers: Default::default(),
                }))
            })
            .await
            .cloned()
    }

    /// The verifier for an ID token: for a multi-tenant issuer, the one of
    /// the tenant the (not yet trusted) token names, whose `iss` then must
    /// be that tenant's.
    pub fn verifier(&self, discovered: &Discovered, id_token: &str) -> Result<Arc<JwtVerifier>, LoginError> {
        #[derive(Deserialize)]
        struct Tenant {
            tid: Option<String>,
        }
        let tenant = if discovered.issuer.contains("{tenantid}") {
            let peek: Tenant = jsonwebtoken::dangerous::insecure_decode_claims(id_token)
                .map_err(|_| LoginError::Invalid("the ID token is malformed".into()))?;
            let tid = peek
                .tid
                .ok_or_else(|| LoginError::Invalid("the ID token names no tenant".into()))?;
            if !tid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || tid.len() > 64 {
                return Err(LoginError::Invalid("the ID token's tenant is malformed".into()));
            }
            tid
        } else {
            String::new()
        };
        let mut verifiers = discovered.verifiers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = verifiers.get(&tenant) {
            return Ok(v.clone());
        }
        if verifiers.len() >= MAX_TENANTS {
            verifiers.clear();
        }
        let mut doc = discovered.doc.clone();
        doc.issuer = doc.issuer.replace("{tenantid}", &tenant);
        let verifier = Arc::new(self.id_token_verifier(&doc)?);
        verifiers.insert(tenant, verifier.clone());
        Ok(verifier)
    }

    /// The ID-token verifier: the provider's JWKS, its algorithms (never
    /// HMAC: a client secret is not a signing key here), `aud` = client ID.
    fn id_token_verifier(&self, doc: &DiscoveryDocument) -> Result<JwtVerifier, LoginError> {
        let mut algorithms: Vec<String> = doc
            .id_token_signing_alg_values_supported
            .iter()
            .filter(|a| jwt::ALGORITHMS.contains(&a.as_str()) && !a.starts_with("HS"))
            .cloned()
            .collect();
        if algorithms.is_empty() {
            algorithms.push("RS256".into());
        }
        let config = JwtIssuerConfig {
            name: self.name.clone(),
            issuer: doc.issuer.clone(),
            audiences: vec![self.client_id.clone()],
            algorithms,
            secret: None,
            public_keys: Vec::new(),
            jwks_url: Some(doc.jwks_uri.clone()),
            jwks_refresh: crate::config::ConfigDuration(Duration::from_secs(600)),
            jwks_min_refresh_interval: crate::config::ConfigDuration(Duration::from_secs(10)),
            jwks_max_stale: crate::config::ConfigDuration(Duration::from_secs(6 * 3600)),
            leeway: crate::config::ConfigDuration(Duration::from_secs(60)),
            required_claims: vec!["sub".into(), "iat".into()],
            typ: None,
            user_claim: "sub".into(),
            scopes_claim: None,
            roles_claim: self.roles_claim.clone(),
            forward_claims: Vec::new(),
            max_token_size: crate::config::ByteSize(16 * 1024),
            forward_token: false,
        };
        let mut problems = Vec::new();
        // The JWKS URL came from the provider's own (https) discovery.
        let issuer = jwt::compile_issuer(
            &config,
            None,
            std::path::Path::new("."),
            &self.registry,
            // https, or http on loopback only.
            true,
            &mut |k, m| problems.push(format!("{k}: {m}")),
        )
        .ok_or_else(|| LoginError::Invalid(problems.join("; ")))?;
        Ok(JwtVerifier::new(vec![issuer], 16))
    }

    /// Whether this provider's `email` can be believed without
    /// `email_verified`: Microsoft sends no such claim, but a single
    /// tenant's directory is the authority for its own accounts (not so for
    /// `common`, `organizations` or `consumers`, where anyone may sign up).
    /// `discovered_issuer`: the issuer the provider's discovery names.
    pub fn vouches_for_email(&self, discovered_issuer: &str) -> bool {
        /// Microsoft's tenant of personal accounts.
        const CONSUMERS: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";
        self.name == "microsoft"
            && matches!(self.kind, Kind::Oidc { .. })
            && !discovered_issuer.contains("{tenantid}")
            && !discovered_issuer.to_ascii_lowercase().contains(CONSUMERS)
    }

    /// Whether the allow-lists admit this (verified) address.
    pub fn email_allowed(&self, email: Option<&str>, verified: bool) -> bool {
        if self.allowed_emails.is_empty() && self.allowed_domains.is_empty() {
            return true;
        }
        let Some(email) = email.filter(|_| verified).map(str::to_ascii_lowercase) else {
            return false;
        };
        let domain = email
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        self.allowed_emails.contains(&email) || self.allowed_domains.contains(&domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_need_a_verified_address() {
        let registry = JwksRegistry::offline(&crate::metrics::Metrics::new());
        let config = OidcProviderConfig {
            name: "google".into(),
            kind: None,
            label: None,
            issuer: None,
            tenant: None,
            client_id: "c".into(),
            client_secret: SecretRef::Inline("s".into()),
            scopes: None,
            allowed_emails: vec!["Boss@Other.example".into()],
            allowed_domains: vec!["example.com".into()],
            allowed_orgs: vec![],
            allow_any_account: false,
            roles_claim: None,
            github_url: None,
            github_api_url: None,
        };
        let p = compile_provider(
            &config,
            Some(SecretValue::new(b"s".to_vec())),
            &registry,
            true,
            &mut |k, m| panic!("{k}: {m}"),
        )
        .unwrap();
        assert_eq!(
            p.kind,
            Kind::Oidc {
                issuer: "https://accounts.google.com".into()
            }
        );
        assert!(p.email_allowed(Some("ann@example.com"), true));
        assert!(p.email_allowed(Some("boss@other.example"), true));
        assert!(!p.email_allowed(Some("ann@example.com"), false), "unverified");
        assert!(!p.email_allowed(Some("ann@example.com.evil"), true));
        assert!(!p.email_allowed(None, true));
    }
}
