//! From a verified token's claims to a [`Principal`]: which claim names the
//! user, which hold scopes and roles, and which go upstream as headers.

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::principal::{Method, Principal, UserIdentity};

/// Longest user name, scope list or claim header value taken from a token.
const MAX_CLAIM_TEXT: usize = 1024;

/// How an issuer's claims map onto an identity.
#[derive(Debug, Clone)]
pub struct ClaimMap {
    /// The claim naming the user (`sub` by default).
    pub user: String,
    /// The claim holding scopes; `scope`, then `scp`, when not configured.
    pub scopes: Option<String>,
    /// The claim holding roles, as a dotted path (`realm_access.roles`).
    pub roles: Option<String>,
    /// Claims passed upstream, each as `X-Portcullis-Claim-<name>`.
    pub forward: Vec<(String, HeaderName)>,
}

/// Why claims do not make an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimProblem {
    /// The user claim is missing or not a string or number.
    NoUser,
    /// A claim is too long or holds characters a header cannot carry.
    Unusable,
}

/// The header a forwarded claim travels in: `X-Portcullis-Claim-Email`.
pub fn claim_header(claim: &str) -> Option<HeaderName> {
    let name: String = claim
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    HeaderName::from_bytes(format!("x-portcullis-claim-{}", name.to_ascii_lowercase()).as_bytes()).ok()
}

/// A claim by dotted path.
fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// A list claim: a JSON array of strings, or one space-separated string.
fn words(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .flat_map(str::split_whitespace)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// A list claim by dotted path (roles, groups), empty when absent.
pub fn list_claim(claims: &Map<String, Value>, path: &str) -> Vec<String> {
    lookup(claims, path).map(words).unwrap_or_default()
}

/// Text that may go into a header.
fn header_safe(text: &str) -> bool {
    text.len() <= MAX_CLAIM_TEXT && HeaderValue::from_str(text).is_ok()
}

impl ClaimMap {
    pub fn principal(
        &self,
        method: Method,
        issuer: &str,
        claims: &Map<String, Value>,
    ) -> Result<Principal, ClaimProblem> {
        let user = match lookup(claims, &self.user) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(ClaimProblem::NoUser),
        };
        let scopes = match &self.scopes {
            Some(claim) => lookup(claims, claim).map(words),
            None => claims.get("scope").or_else(|| claims.get("scp")).map(words),
        }
        .unwrap_or_default();
        let roles = self
            .roles
            .as_ref()
            .and_then(|claim| lookup(claims, claim))
            .map(words)
            .unwrap_or_default();
        if !header_safe(&user) || !header_safe(&scopes.join(" ")) || !header_safe(&roles.join(" ")) {
            return Err(ClaimProblem::Unusable);
        }
        let extra_headers = self
            .forward
            .iter()
            .filter_map(|(claim, header)| {
                let text = match lookup(claims, claim)? {
                    Value::String(s) => s.clone(),
                    Value::Array(_) => words(lookup(claims, claim)?).join(" "),
                    Value::Null => return None,
                    other => other.to_string(),
                };
                // A claim a header cannot carry is left out, not refused:
                // the identity itself is sound.
                header_safe(&text).then(|| Some((header.clone(), HeaderValue::from_str(&text).ok()?)))?
            })
            .collect();
        Ok(Principal::user(
            method,
            UserIdentity {
                user,
                issuer: issuer.to_string(),
                scopes,
                roles,
                extra_headers,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn scopes_come_from_scope_or_scp_and_roles_from_a_dotted_path() {
        let m = ClaimMap {
            user: "sub".into(),
            scopes: None,
            roles: Some("realm_access.roles".into()),
            forward: vec![("email".into(), claim_header("email").unwrap())],
        };
        let p = m
            .principal(
                Method::Jwt,
                "kc",
                &map(json!({"sub": "u1", "scp": ["a", "b"], "realm_access": {"roles": ["admin"]}, "email": "u@x"})),
            )
            .unwrap();
        assert_eq!(p.scopes(), ["a", "b"]);
        assert_eq!(p.roles(), ["admin"]);
        let mut h = http::HeaderMap::new();
        p.write_headers(&mut h);
        assert_eq!(h["x-portcullis-claim-email"], "u@x");
        let p = m
            .principal(Method::Jwt, "kc", &map(json!({"sub": 42, "scope": "read write"})))
            .unwrap();
        assert_eq!(p.user_name(), Some("42"));
        assert_eq!(p.scopes(), ["read", "write"]);
        assert!(p.roles().is_empty());
    }

    #[test]
    fn no_user_or_a_user_a_header_cannot_carry_is_refused() {
        let m = ClaimMap {
            user: "sub".into(),
            scopes: None,
            roles: None,
            forward: vec![],
        };
        assert_eq!(
            m.principal(Method::Jwt, "i", &map(json!({"name": "x"}))).err(),
            Some(ClaimProblem::NoUser)
        );
        assert_eq!(
            m.principal(Method::Jwt, "i", &map(json!({"sub": "a\r\nX-Evil: 1"})))
                .err(),
            Some(ClaimProblem::Unusable)
        );
    }
}
