//! Security headers on every answer: `X-Content-Type-Options: nosniff`,
//! `X-Frame-Options: DENY`, `Referrer-Policy`, `Permissions-Policy`, an
//! optional `Content-Security-Policy` (`frame-ancestors 'none'` when none is
//! configured), and `Strict-Transport-Security` when the request came over
//! HTTPS (a trusted proxy's `X-Forwarded-Proto: https`; the gateway has no
//! TLS listener of its own yet). The upstream's own value of a header wins
//! unless `force` is set; `Server` and `X-Powered-By` from the upstream are
//! removed (they only tell an attacker what to aim at).
//!
//! `[security_headers]` sets the defaults; a route's `security_headers`
//! table overrides any of its keys (`enabled = false` turns them off there).
//! Every header is built when the config is compiled: an answer costs a
//! few inserts of ready values.

use std::sync::Arc;

use http::Response;
use http::header::{self, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::body::GatewayBody;
use crate::compile::{CompileCx, Problems};
use crate::pipeline::{Phases, RequestCx, Slot, Stage};

static PERMISSIONS_POLICY: HeaderName = HeaderName::from_static("permissions-policy");
static X_POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");

/// `[security_headers]`, and the same keys (all optional) in a route's
/// `security_headers` table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecurityHeadersConfig {
    /// Add the headers at all (default true).
    pub enabled: Option<bool>,
    /// `Strict-Transport-Security` for HTTPS requests; `""` for none.
    pub hsts: Option<String>,
    /// `X-Content-Type-Options: nosniff`.
    pub nosniff: Option<bool>,
    /// `X-Frame-Options`; `""` for none.
    pub frame_options: Option<String>,
    /// `Referrer-Policy`; `""` for none.
    pub referrer_policy: Option<String>,
    /// `Permissions-Policy`; `""` for none.
    pub permissions_policy: Option<String>,
    /// `Content-Security-Policy`; unset: `frame-ancestors 'none'` (framing
    /// refused, nothing else restricted).
    pub content_security_policy: Option<String>,
    /// Replace the upstream's own values (default: the upstream's win).
    pub force: Option<bool>,
    /// Remove the upstream's `Server` and `X-Powered-By` (default true).
    pub strip_server: Option<bool>,
    /// Answer plain-HTTP requests with 308 to the same URL on https (unless
    /// a trusted proxy says the original was HTTPS). Default false.
    pub https_redirect: Option<bool>,
    /// The port of the https URL redirected to (default 443).
    pub https_port: Option<u16>,
    /// Add `Secure`, `HttpOnly` and `SameSite` to the upstream's own
    /// `Set-Cookie` headers where they are missing. Default false.
    pub harden_cookies: Option<bool>,
    /// The `SameSite` value hardening adds: `Lax` (default), `Strict`.
    pub cookie_same_site: Option<String>,
    /// Upstream cookies hardening leaves alone (one a page's script reads).
    pub harden_cookies_except: Option<Vec<String>>,
    /// `report`: count plain-HTTP requests that would be redirected, and
    /// serve them.
    pub mode: Option<crate::enforce::Mode>,
}

const DEFAULT_HSTS: &str = "max-age=31536000; includeSubDomains";
const DEFAULT_FRAME_OPTIONS: &str = "DENY";
const DEFAULT_REFERRER: &str = "strict-origin-when-cross-origin";
const DEFAULT_PERMISSIONS: &str = "camera=(), microphone=(), geolocation=(), payment=()";
const DEFAULT_CSP: &str = "frame-ancestors 'none'";

/// The headers of one route (or of answers without a route).
#[derive(Debug, Default)]
pub struct HeaderSet {
    headers: Vec<(HeaderName, HeaderValue)>,
    hsts: Option<HeaderValue>,
    force: bool,
    strip_server: bool,
    cookies: Option<CookieHardening>,
}

/// What `harden_cookies` adds to the upstream's cookies.
#[derive(Debug)]
struct CookieHardening {
    /// `; SameSite=Lax`.
    same_site: &'static str,
    except: Vec<String>,
}

pub struct SecurityHeadersStage {
    unrouted: HeaderSet,
    slot: Slot<HeaderSet>,
}

/// One header from a configured text: none for `""`, a problem if it
/// cannot be a header value.
fn value(problems: &mut dyn FnMut(&str, String), key: &str, text: &str) -> Option<HeaderValue> {
    if text.is_empty() {
        return None;
    }
    match HeaderValue::from_str(text) {
        Ok(v) => Some(v),
        Err(_) => {
            problems(key, format!("`{text}` cannot be a header value"));
            None
        }
    }
}

/// The defaults overlaid with `over`.
fn build(
    base: &SecurityHeadersConfig,
    over: Option<&SecurityHeadersConfig>,
    problems: &mut dyn FnMut(&str, String),
) -> HeaderSet {
    let pick = |f: fn(&SecurityHeadersConfig) -> Option<String>, default: &str| {
        over.and_then(f)
            .or_else(|| f(base))
            .unwrap_or_else(|| default.to_string())
    };
    let flag = |f: fn(&SecurityHeadersConfig) -> Option<bool>, default: bool| {
        over.and_then(f).or_else(|| f(base)).unwrap_or(default)
    };
    let cookies = flag(|c| c.harden_cookies, false).then(|| {
        let same_site = match pick(|c| c.cookie_same_site.clone(), "Lax")
            .to_ascii_lowercase()
            .as_str()
        {
            "lax" => "; SameSite=Lax",
            "strict" => "; SameSite=Strict",
            other => {
                problems("cookie_same_site", format!("`{other}`: use Lax or Strict"));
                "; SameSite=Lax"
            }
        };
        let except = over
            .and_then(|c| c.harden_cookies_except.clone())
            .or_else(|| base.harden_cookies_except.clone())
            .unwrap_or_default();
        CookieHardening { same_site, except }
    });
    if !flag(|c| c.enabled, true) {
        return HeaderSet {
            cookies,
            ..HeaderSet::default()
        };
    }
    let mut headers = Vec::new();
    if flag(|c| c.nosniff, true) {
        headers.push((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ));
    }
    let texts: [(HeaderName, &str, String); 4] = [
        (
            header::X_FRAME_OPTIONS,
            "frame_options",
            pick(|c| c.frame_options.clone(), DEFAULT_FRAME_OPTIONS),
        ),
        (
            header::REFERRER_POLICY,
            "referrer_policy",
            pick(|c| c.referrer_policy.clone(), DEFAULT_REFERRER),
        ),
        (
            PERMISSIONS_POLICY.clone(),
            "permissions_policy",
            pick(|c| c.permissions_policy.clone(), DEFAULT_PERMISSIONS),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            "content_security_policy",
            pick(|c| c.content_security_policy.clone(), DEFAULT_CSP),
        ),
    ];
    for (name, key, text) in texts {
        if let Some(v) = value(problems, key, &text) {
            headers.push((name, v));
        }
    }
    HeaderSet {
        headers,
        hsts: value(problems, "hsts", &pick(|c| c.hsts.clone(), DEFAULT_HSTS)),
        force: flag(|c| c.force, false),
        strip_server: flag(|c| c.strip_server, true),
        cookies,
    }
}

impl CookieHardening {
    /// The cookie with the attributes it lacks, or `None` if it has them.
    fn harden(&self, cookie: &HeaderValue) -> Option<HeaderValue> {
        let text = cookie.to_str().ok()?;
        let name = text.split('=').next().unwrap_or_default().trim();
        if self.except.iter().any(|e| e == name) {
            return None;
        }
        let has = |attribute: &str| {
            text.split(';').skip(1).any(|a| {
                a.trim()
                    .split('=')
                    .next()
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case(attribute))
            })
        };
        let mut out = String::new();
        if !has("secure") {
            out.push_str("; Secure");
        }
        if !has("httponly") {
            out.push_str("; HttpOnly");
        }
        if !has("samesite") {
            out.push_str(self.same_site);
        }
        if out.is_empty() {
            return None;
        }
        HeaderValue::try_from(format!("{text}{out}")).ok()
    }

    fn apply(&self, headers: &mut http::HeaderMap) {
        let http::header::Entry::Occupied(mut entry) = headers.entry(header::SET_COOKIE) else {
            return;
        };
        let mut changed = false;
        let cookies: Vec<HeaderValue> = entry
            .iter()
            .map(|c| match self.harden(c) {
                Some(hardened) => {
                    changed = true;
                    hardened
                }
                None => c.clone(),
            })
            .collect();
        if changed {
            let mut cookies = cookies.into_iter();
            if let Some(first) = cookies.next() {
                entry.insert(first);
            }
            for cookie in cookies {
                entry.append(cookie);
            }
        }
    }
}

/// Compiles `[security_headers]` and every route's `security_headers`.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let base = cx.config.security_headers.clone().unwrap_or_default();
    let mut found = Vec::new();
    let unrouted = build(&base, None, &mut |k, m| {
        found.push((format!("security_headers.{k}"), m))
    });
    for (key, message) in found {
        cx.problems.at(&key, message);
    }
    let slot = cx.per_route(|route, problems: &mut Problems<'_>| {
        let mut found = Vec::new();
        let set = build(&base, route.config.security_headers.as_ref(), &mut |k, m| {
            found.push((k.to_string(), m))
        });
        for (key, message) in found {
            problems.in_route(route, &format!("security_headers.{key}"), message);
        }
        Some(set)
    });
    Some(Arc::new(SecurityHeadersStage { unrouted, slot }))
}

impl HeaderSet {
    fn apply(&self, https: bool, from_upstream: bool, response: &mut Response<GatewayBody>) {
        let h = response.headers_mut();
        if from_upstream && self.strip_server {
            h.remove(header::SERVER);
            h.remove(&X_POWERED_BY);
        }
        if from_upstream && let Some(cookies) = &self.cookies {
            cookies.apply(h);
        }
        // Grown once, and each header hashed once (an entry, not a lookup
        // then an insert): this runs on every response.
        h.reserve(self.headers.len() + 1);
        for (name, value) in &self.headers {
            self.set(h, name, value);
        }
        if https && let Some(hsts) = &self.hsts {
            self.set(h, &header::STRICT_TRANSPORT_SECURITY, hsts);
        }
    }

    /// Sets `name` unless the upstream did, or always when forced.
    fn set(&self, h: &mut http::HeaderMap, name: &HeaderName, value: &HeaderValue) {
        match h.entry(name) {
            http::header::Entry::Vacant(slot) => {
                slot.insert(value.clone());
            }
            http::header::Entry::Occupied(mut slot) if self.force => {
                slot.insert(value.clone());
            }
            http::header::Entry::Occupied(_) => {}
        }
    }
}

impl Stage for SecurityHeadersStage {
    fn name(&self) -> &'static str {
        "security_headers"
    }

    fn phases(&self) -> Phases {
        Phases::RESPONSE
    }

    fn response(&self, cx: &RequestCx, response: &mut Response<GatewayBody>) {
        let set = match &cx.route {
            Some(route) => route.get(self.slot).unwrap_or(&self.unrouted),
            None => &self.unrouted,
        };
        set.apply(cx.https, cx.from_upstream, response);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_route_overrides_and_the_upstreams_values_win_unless_forced() {
        let base = SecurityHeadersConfig::default();
        let set = build(&base, None, &mut |k, m| panic!("{k}: {m}"));
        let mut r = Response::new(GatewayBody::Empty);
        r.headers_mut()
            .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("SAMEORIGIN"));
        r.headers_mut()
            .insert(header::SERVER, HeaderValue::from_static("uvicorn"));
        set.apply(false, true, &mut r);
        let h = r.headers();
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(
            h[header::X_FRAME_OPTIONS],
            "SAMEORIGIN",
            "the upstream's own value wins"
        );
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], "frame-ancestors 'none'");
        assert!(h.get(header::SERVER).is_none());
        assert!(
            h.get(header::STRICT_TRANSPORT_SECURITY).is_none(),
            "plain HTTP: no HSTS"
        );
        let over = SecurityHeadersConfig {
            force: Some(true),
            content_security_policy: Some("default-src 'self'".into()),
            referrer_policy: Some(String::new()),
            ..Default::default()
        };
        let set = build(&base, Some(&over), &mut |k, m| panic!("{k}: {m}"));
        let mut r = Response::new(GatewayBody::Empty);
        r.headers_mut()
            .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("SAMEORIGIN"));
        set.apply(true, true, &mut r);
        let h = r.headers();
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY", "forced");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], "default-src 'self'");
        assert!(h.get(header::REFERRER_POLICY).is_none(), "\"\" turns one off");
        assert_eq!(h[header::STRICT_TRANSPORT_SECURITY], DEFAULT_HSTS);
        let off = SecurityHeadersConfig {
            enabled: Some(false),
            ..Default::default()
        };
        let set = build(&base, Some(&off), &mut |k, m| panic!("{k}: {m}"));
        let mut r = Response::new(GatewayBody::Empty);
        set.apply(true, true, &mut r);
        assert!(r.headers().is_empty());
    }
}
