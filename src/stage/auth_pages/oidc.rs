//! `/.auth/login/{provider}` and `/.auth/callback/{provider}`: the browser
//! side of the provider login (see [`crate::oidc`]).

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};

use super::{AuthPagesStage, html, page_response, query_param, see_other};
use crate::audit::Severity;
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::oidc::flow::{self, Pending};
use crate::oidc::{LoginError, Provider, Providers};
use crate::pipeline::RequestCx;
use crate::sessions::safe_return_to;
use crate::store::sessions::SessionRecord;

impl AuthPagesStage {
    /// The login page's buttons.
    pub(super) fn provider_links(&self, return_to: &str) -> Vec<html::ProviderLink> {
        let links = self
            .providers
            .as_ref()
            .map(|p| p.links(return_to))
            .unwrap_or_default();
        links
            .into_iter()
            .map(|(label, href)| html::ProviderLink { label, href })
            .collect()
    }

    fn oidc_cookie_name(&self) -> &'static str {
        if self.config.cookie_secure {
            "__Host-portcullis-oidc"
        } else {
            "portcullis-oidc"
        }
    }

    /// The providers, the one named in the path, and the HTTP client.
    fn provider(&self, name: &str) -> Result<(&Providers, &Arc<Provider>, &reqwest::Client), GatewayError> {
        let providers = self.providers.as_deref().ok_or(GatewayError::NotFound)?;
        let provider = providers.find(name).ok_or(GatewayError::NotFound)?;
        let client = providers.client.as_ref().ok_or_else(|| {
            GatewayError::Unavailable("this process does not call identity providers".into())
        })?;
        Ok((providers, provider, client))
    }

    /// Sends the browser to the provider, remembering the login (state,
    /// nonce, PKCE verifier, where to return) in an encrypted cookie.
    pub(super) async fn provider_login(
        &self,
        cx: &mut RequestCx,
        req: &Request<GatewayBody>,
        name: &str,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        let (providers, provider, client) = self.provider(name)?;
        let pending = Pending::new(&provider.name, safe_return_to(query_param(req, "rd").as_deref()));
        let url =
            match flow::authorize_url(provider, client, &providers.redirect_uri(provider), &pending).await {
                Ok(url) => url,
                Err(error) => return Ok(self.login_failed(cx, Some(name), &error)),
            };
        let sealed = self
            .keys
            .encrypt(&serde_json::to_vec(&pending).expect("a pending login serialises"));
        let cookie = format!(
            "{}={sealed}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
            self.oidc_cookie_name(),
            flow::LOGIN_TTL.as_secs(),
            self.secure()
        );
        let mut response = see_other(&url, vec![cookie]);
        *response.status_mut() = StatusCode::FOUND;
        Ok(response)
    }

    /// The provider sent the browser back: check the state, finish the
    /// login, and create the session.
    pub(super) async fn provider_callback(
        &self,
        cx: &mut RequestCx,
        req: &Request<GatewayBody>,
        name: &str,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        let (providers, provider, client) = self.provider(name)?;
        let pending: Option<Pending> = crate::cookies::values(req.headers(), self.oidc_cookie_name())
            .next()
            .and_then(|sealed| self.keys.decrypt(sealed))
            .and_then(|plain| serde_json::from_slice(&plain).ok());
        let state = query_param(req, "state").unwrap_or_default();
        let Some(pending) = pending.filter(|p| p.matches(&provider.name, &state)) else {
            return Ok(self.login_failed(cx, Some(name), &LoginError::State));
        };
        if let Some(error) = query_param(req, "error") {
            let shown: String = error.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
            return Ok(self.login_failed(
                cx,
                Some(name),
                &LoginError::Invalid(format!("the provider said {shown}")),
            ));
        }
        let code = query_param(req, "code").unwrap_or_default();
        let logged_in = match flow::finish(
            provider,
            client,
            &providers.redirect_uri(provider),
            &code,
            &pending,
        )
        .await
        {
            Ok(who) => who,
            Err(error) => return Ok(self.login_failed(cx, Some(name), &error)),
        };
        // The user travels in X-Portcullis-User: a name a header cannot
        // carry is refused, never rewritten into a shared placeholder.
        if logged_in.username.len() > 256 || HeaderValue::from_str(&logged_in.username).is_err() {
            let error = LoginError::Invalid("the account's name cannot be used here".into());
            return Ok(self.login_failed(cx, Some(name), &error));
        }
        let cache = self
            .cache
            .as_ref()
            .ok_or_else(|| GatewayError::Unavailable("the session store is not available".into()))?;
        let record = SessionRecord {
            username: logged_in.username.clone(),
            provider: provider.name.clone(),
            email: logged_in.email.clone(),
            name: logged_in.name.clone(),
            roles: logged_in.roles.clone(),
            tokens: Some(self.keys.encrypt(logged_in.tokens.to_string().as_bytes())),
            ..SessionRecord::default()
        };
        let id = self.start_session(req, cache, record).await.map_err(|error| {
            tracing::error!(%error, "could not store a session");
            GatewayError::Unavailable("the session store is not available".into())
        })?;
        let event = crate::audit::Event::new("login.success", Severity::Info)
            .for_request(cx)
            .consumer(logged_in.username.as_str())
            .detail("provider", provider.name.as_str());
        self.audit.emit(event);
        Ok(see_other(
            &pending.rd,
            vec![
                self.session_cookie(&self.keys.cookie_value(&id)),
                self.clear_cookie(self.oidc_cookie_name()),
            ],
        ))
    }

    /// A failed provider login: a page saying so (401), and an audit event.
    fn login_failed(
        &self,
        cx: &RequestCx,
        provider: Option<&str>,
        error: &LoginError,
    ) -> Response<GatewayBody> {
        tracing::warn!(request_id = cx.request_id(), provider, %error, "provider login failed");
        let mut event = crate::audit::Event::new("login.failure", Severity::Warning)
            .for_request(cx)
            .detail("reason", error.reason());
        if let Some(p) = provider {
            event = event.detail("provider", p);
        }
        self.audit.emit(event);
        let links = self.provider_links("/");
        let message = format!("Sign-in failed: {error}.");
        let mut response = page_response(
            StatusCode::UNAUTHORIZED,
            html::login_page(&links, None, Some(&message)),
        );
        if let Ok(v) = HeaderValue::from_str(&self.clear_cookie(self.oidc_cookie_name())) {
            response.headers_mut().append(http::header::SET_COOKIE, v);
        }
        response
    }
}
