//! Credentials a request carried, kept so that nothing the gateway logs of
//! the upstream's answer (the start of a masked 5xx body) can repeat them:
//! an upstream that echoes the request would otherwise put an API key, a
//! bearer token or a session cookie into the log.
//!
//! They are kept as clones of the header values (a reference count, no
//! copy) and only searched for when a body is about to be logged.

use base64::Engine;
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue};
use smallvec::SmallVec;

/// What replaces a credential in logged text.
pub const REDACTED: &str = "[REDACTED]";

/// Pieces shorter than this are not searched for: a one-letter cookie
/// value would blank out every such letter and protects nothing.
const SHORTEST_SECRET: usize = 4;

/// One credential as the request carried it.
#[derive(Clone, Debug)]
enum Seen {
    /// An API key or token, as presented.
    Token(HeaderValue),
    /// An `Authorization` line: the whole value, its token, and for Basic
    /// the decoded `user:password` and password.
    Authorization(HeaderValue),
    /// A `Cookie` line: every cookie's value.
    Cookie(HeaderValue),
}

/// The credentials of one request.
#[derive(Clone, Debug, Default)]
pub struct Credentials(SmallVec<[Seen; 3]>);

impl Credentials {
    /// A key or token the gateway read (from a header or the query string).
    pub fn add_token(&mut self, value: HeaderValue) {
        self.0.push(Seen::Token(value));
    }

    /// The `Authorization` and `Cookie` lines of a request.
    pub fn add_from(&mut self, headers: &HeaderMap) {
        for value in headers.get_all(AUTHORIZATION) {
            self.0.push(Seen::Authorization(value.clone()));
        }
        for value in headers.get_all(COOKIE) {
            self.0.push(Seen::Cookie(value.clone()));
        }
    }

    /// Every secret text to hide, longest first (so a secret that contains
    /// another is replaced whole).
    fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |text: &str| {
            let text = text.trim().trim_matches('"');
            if text.len() >= SHORTEST_SECRET {
                out.push(text.to_string());
            }
        };
        for seen in &self.0 {
            match seen {
                Seen::Token(v) => add(&String::from_utf8_lossy(v.as_bytes())),
                Seen::Authorization(v) => {
                    let text = String::from_utf8_lossy(v.as_bytes());
                    add(&text);
                    if let Some((scheme, token)) = text.trim().split_once(' ') {
                        add(token);
                        if scheme.eq_ignore_ascii_case("basic")
                            && let Ok(decoded) =
                                base64::engine::general_purpose::STANDARD.decode(token.trim())
                        {
                            let decoded = String::from_utf8_lossy(&decoded).into_owned();
                            if let Some((_, password)) = decoded.split_once(':') {
                                add(password);
                            }
                            add(&decoded);
                        }
                    }
                }
                Seen::Cookie(v) => {
                    for pair in String::from_utf8_lossy(v.as_bytes()).split(';') {
                        if let Some((_, value)) = pair.split_once('=') {
                            add(value);
                        }
                    }
                }
            }
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out.dedup();
        out
    }

    /// `text` with every credential of this request replaced by
    /// [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self.secrets() {
            if out.contains(&secret) {
                out = out.replace(&secret, REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_credential_is_hidden() {
        let mut c = Credentials::default();
        let key = "pc_abcdefghijkl_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH";
        c.add_token(HeaderValue::from_static(key));
        let mut h = HeaderMap::new();
        h.append(AUTHORIZATION, "Bearer eyJhbGciOi.payload.sig".parse().unwrap());
        // admin:s3cret-pass
        h.append(AUTHORIZATION, "Basic YWRtaW46czNjcmV0LXBhc3M=".parse().unwrap());
        h.append(
            COOKIE,
            "session=SESSIONVALUE123; theme=dark; a=1".parse().unwrap(),
        );
        c.add_from(&h);
        let body = format!(
            "GET /x?api_key={key} failed; token eyJhbGciOi.payload.sig; auth admin:s3cret-pass; \
             password s3cret-pass; cookie session=SESSIONVALUE123; theme=dark; a=1"
        );
        let out = c.redact(&body);
        for secret in [
            key,
            "eyJhbGciOi.payload.sig",
            "s3cret-pass",
            "SESSIONVALUE123",
            "dark",
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains("a=1"), "one-letter values are not secrets: {out}");
        assert!(out.contains("GET /x?api_key=[REDACTED] failed"), "{out}");
    }

    #[test]
    fn nothing_seen_changes_nothing() {
        let c = Credentials::default();
        assert_eq!(c.redact("Traceback: x"), "Traceback: x");
    }
}
