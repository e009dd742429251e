//! The configured providers (`[[auth.oidc]]`), compiled once per policy
//! and shared by the login pages and the session method (which refreshes
//! and forwards provider tokens).

use std::sync::Arc;

use super::Provider;
use crate::compile::CompileCx;

/// The providers, the public origin they return to, and an HTTP client.
pub struct Providers {
    pub list: Vec<Arc<Provider>>,
    public_url: String,
    pub client: Option<reqwest::Client>,
}

/// Compiles `[[auth.oidc]]` (needs `[sessions] public_url`).
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Providers> {
    let configs = &cx.config.auth.oidc;
    if configs.is_empty() {
        return None;
    }
    if cx.config.sessions.is_none() {
        cx.problems.at(
            "auth.oidc",
            "providers log people in to sessions: add a [sessions] table",
        );
        return None;
    }
    let public_url = cx
        .config
        .sessions
        .as_ref()
        .and_then(|s| s.public_url.clone())
        .map(|u| u.trim_end_matches('/').to_string());
    let Some(public_url) = public_url else {
        cx.problems.at(
            "sessions.public_url",
            "[[auth.oidc]] needs [sessions] public_url (the origin providers send browsers back to)",
        );
        return None;
    };
    let loopback = public_url
        .strip_prefix("http://")
        .and_then(|rest| rest.split(['/', ':']).next())
        .is_some_and(|host| host == "127.0.0.1" || host == "localhost");
    if !(public_url.starts_with("https://") || !cx.production() || loopback) {
        cx.problems
            .at("sessions.public_url", "must be an https origin in production");
    }
    let production = cx.production();
    let registry = cx.runtime.jwks.clone();
    let mut list = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        let at = format!("auth.oidc[{i}]");
        if configs[..i].iter().any(|o| o.name == config.name) {
            cx.problems.at(
                &format!("{at}.name"),
                format!("`{}` names two providers", config.name),
            );
        }
        let secret =
            crate::policy::resolve_secret(cx, &format!("{at}.client_secret"), Some(&config.client_secret));
        let mut problems = Vec::new();
        let provider = super::compile_provider(config, secret, &registry, production, &mut |k, m| {
            problems.push((k.to_string(), m))
        });
        for (key, message) in problems {
            let key = if key.is_empty() {
                at.clone()
            } else {
                format!("{at}.{key}")
            };
            cx.problems.at(&key, message);
        }
        list.extend(provider.map(Arc::new));
    }
    Some(Providers {
        list,
        public_url,
        client: registry.http(),
    })
}

impl Providers {
    pub fn find(&self, name: &str) -> Option<&Arc<Provider>> {
        self.list.iter().find(|p| p.name == name)
    }

    pub fn redirect_uri(&self, provider: &Provider) -> String {
        format!("{}/.auth/callback/{}", self.public_url, provider.name)
    }

    /// The login page's buttons.
    pub fn links(&self, return_to: &str) -> Vec<(String, String)> {
        let rd = percent_encoding::utf8_percent_encode(return_to, percent_encoding::NON_ALPHANUMERIC);
        self.list
            .iter()
            .map(|p| (p.label.clone(), format!("/.auth/login/{}?rd={rd}", p.name)))
            .collect()
    }
}
