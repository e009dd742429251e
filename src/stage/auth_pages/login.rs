//! The local users' login: the form and its submission.

use http::{Request, Response, StatusCode};

use super::{AuthPagesStage, form_value, html, page_response, query_param, see_other};
use crate::audit::Severity;
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::pipeline::RequestCx;
use crate::ratelimit::{Subject, ceil_secs, counter_id};
use crate::sessions::crypto::random_token;
use crate::sessions::safe_return_to;
use crate::store::sessions::SessionRecord;
use crate::users::{self, Verdict};

/// What a failed login is told: the same whether the user exists or not.
const WRONG: &str = "Wrong user name or password.";

impl AuthPagesStage {
    /// The sign-in page, with a fresh pre-login cookie and the form's token.
    pub(super) fn login_page(
        &self,
        req: &Request<GatewayBody>,
        error: Option<&str>,
        status: StatusCode,
    ) -> Response<GatewayBody> {
        let return_to = safe_return_to(query_param(req, "rd").as_deref());
        self.login_form(&return_to, error, status)
    }

    fn login_form(&self, return_to: &str, error: Option<&str>, status: StatusCode) -> Response<GatewayBody> {
        let binding = random_token();
        let csrf = self.keys.form_token("login", binding.as_bytes());
        let form = self.config.local_users.then_some((csrf.as_str(), return_to));
        let links = self.provider_links(return_to);
        let nothing = !self.config.local_users && links.is_empty();
        let error = error.or(nothing.then_some("No way to sign in is configured."));
        let mut response = page_response(status, html::login_page(&links, form, error));
        let cookie = format!(
            "{}={binding}; Path=/; HttpOnly; SameSite=Lax; Max-Age=600{}",
            self.login_cookie_name(),
            self.secure()
        );
        if let Ok(v) = http::HeaderValue::from_str(&cookie) {
            response.headers_mut().append(http::header::SET_COOKIE, v);
        }
        response
    }

    /// Counts a login attempt against the user's and the client's budget;
    /// the seconds to wait once either is spent.
    fn login_limited(&self, cx: &RequestCx, username: &str) -> Option<u64> {
        let hasher = &self.limiter.hasher;
        let by_user = counter_id(hasher, &self.user_limit, &Subject::text(username));
        let by_ip = counter_id(
            hasher,
            &self.ip_limit,
            &Subject::ip(cx.client_ip, self.ipv6_prefix),
        );
        let checks = self
            .limiter
            .check(&[(by_user, self.user_limit.rate), (by_ip, self.ip_limit.rate)]);
        checks
            .iter()
            .filter(|c| !c.allowed)
            .map(|c| ceil_secs(c.retry_after_us).max(1))
            .max()
    }

    pub(super) async fn login_submit(
        &self,
        cx: &mut RequestCx,
        req: &mut Request<GatewayBody>,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        if !self.config.local_users {
            return Err(GatewayError::NotFound);
        }
        let form = Self::read_form(req).await?;
        let return_to = safe_return_to(form_value(&form, "rd").as_deref());
        let binding = crate::cookies::values(req.headers(), self.login_cookie_name())
            .next()
            .unwrap_or("")
            .to_string();
        let csrf = form_value(&form, "csrf").unwrap_or_default();
        if binding.is_empty() || !self.keys.check_form_token("login", binding.as_bytes(), &csrf) {
            self.audit_event(cx, "login.failure", Severity::Warning, None, Some("csrf"))
                .await;
            return Ok(self.login_form(
                &return_to,
                Some("The sign-in form expired; try again."),
                StatusCode::FORBIDDEN,
            ));
        }
        let username = form_value(&form, "username").unwrap_or_default();
        let password = form_value(&form, "password").unwrap_or_default();
        if let Some(retry_after) = self.login_limited(cx, &username) {
            self.audit_event(cx, "login.failure", Severity::Warning, None, Some("limited"))
                .await;
            let mut response = self.login_form(
                &return_to,
                Some("Too many sign-in attempts; wait a minute and try again."),
                StatusCode::TOO_MANY_REQUESTS,
            );
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, retry_after.into());
            return Ok(response);
        }
        let cache = self
            .cache
            .as_ref()
            .ok_or_else(|| GatewayError::Unavailable("the session store is not available".into()))?;
        let store = cache.store().clone();
        let unavailable = |error: crate::store::StoreError| {
            tracing::error!(%error, "login failed on the store");
            GatewayError::Unavailable("the user store is not available".into())
        };
        let record = if users::validate_username_text(&username) {
            store.find_user(&username).await.map_err(unavailable)?
        } else {
            None
        };
        // Hashing runs on the blocking pool: argon2id takes ~20 ms of CPU.
        let verdict = tokio::task::spawn_blocking({
            let stored = record.as_ref().map(|r| r.password_hash.clone());
            move || match stored {
                Some(hash) => users::verify_password(&password, &hash),
                None => {
                    users::verify_unknown_user(&password);
                    Verdict::Wrong
                }
            }
        })
        .await
        .map_err(|_| GatewayError::Internal)?;
        let record = match (record, verdict) {
            (Some(r), Verdict::Right) | (Some(r), Verdict::RightUpgrade(_)) if r.disabled => {
                self.audit_event(
                    cx,
                    "login.failure",
                    Severity::Warning,
                    Some(&username),
                    Some("disabled"),
                )
                .await;
                return Ok(self.login_form(&return_to, Some(WRONG), StatusCode::UNAUTHORIZED));
            }
            (Some(r), Verdict::RightUpgrade(new_hash)) => {
                store
                    .upgrade_password_hash(&username, &r.password_hash, &new_hash)
                    .await
                    .map_err(unavailable)?;
                self.audit_event(cx, "password.upgraded", Severity::Notice, Some(&username), None)
                    .await;
                r
            }
            (Some(r), Verdict::Right) => r,
            (known, _) => {
                let reason = if known.is_some() {
                    "wrong_password"
                } else {
                    "unknown_user"
                };
                // The user name is named only if it exists: a mistyped
                // password in the user-name field must not reach the log.
                let user = known.as_ref().map(|_| username.as_str());
                self.audit_event(cx, "login.failure", Severity::Warning, user, Some(reason))
                    .await;
                return Ok(self.login_form(&return_to, Some(WRONG), StatusCode::UNAUTHORIZED));
            }
        };
        let session = SessionRecord {
            username: record.user.username.clone(),
            provider: "local".into(),
            roles: record.user.roles.clone(),
            ..SessionRecord::default()
        };
        let id = self
            .start_session(req, cache, session)
            .await
            .map_err(unavailable)?;
        // A disable that raced this login ends the session it just made.
        if store
            .find_user(&username)
            .await
            .ok()
            .flatten()
            .is_none_or(|u| u.disabled)
        {
            let _ = cache.revoke(&id).await;
            return Ok(self.login_form(&return_to, Some(WRONG), StatusCode::UNAUTHORIZED));
        }
        let _ = store.record_login(&username).await;
        self.audit_event(cx, "login.success", Severity::Info, Some(&username), None)
            .await;
        Ok(see_other(
            &return_to,
            vec![
                self.session_cookie(&self.keys.cookie_value(&id)),
                self.clear_cookie(self.login_cookie_name()),
            ],
        ))
    }
}
