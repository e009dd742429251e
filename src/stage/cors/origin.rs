//! Origin allow-lists: exact origins (`https://app.example.com:8443`),
//! subdomain patterns (`https://*.example.com`) and, only when listed,
//! the opaque origin `null`.
//!
//! A pattern matches true subdomains only: `https://*.example.com` matches
//! `https://a.example.com` and `https://a.b.example.com`, never
//! `https://example.com`, `https://evilexample.com`,
//! `https://example.com.evil.net` or `https://a.example.com.evil.net`; the
//! scheme and port must match too (no port in the pattern: the scheme's
//! default port only). Matching reads the request's `Origin` bytes once,
//! without allocating.

/// One allowed origin or pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// Lowercased `scheme://host[:port]`.
    Exact(String),
    /// `scheme://*.suffix[:port]`; `suffix` keeps its leading dot.
    Subdomains {
        scheme: String,
        suffix: String,
        port: Option<String>,
    },
    /// The opaque origin sandboxed frames and `file:` pages send.
    Null,
}

/// A compiled list of origins.
#[derive(Debug, Clone, Default)]
pub struct OriginList {
    rules: Vec<Rule>,
    /// `*`: every origin.
    any: bool,
}

fn is_local_host(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]") || host.ends_with(".localhost")
}

/// Splits `host[:port]`, keeping a bracketed IPv6 host whole.
fn split_port(rest: &str) -> (&str, Option<&str>) {
    if rest.starts_with('[') {
        return match rest.find("]:") {
            Some(i) => (&rest[..=i], Some(&rest[i + 2..])),
            None => (rest, None),
        };
    }
    match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    }
}

/// Whether `host` is a DNS name made of non-empty labels of letters, digits
/// and hyphens (lowercase: origins are compared lowercased).
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn valid_port(port: &str) -> bool {
    !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok()
}

/// Checks one configured origin or pattern.
fn parse_rule(text: &str, production: bool) -> Result<Rule, String> {
    let lower = text.trim().to_ascii_lowercase();
    if lower == "null" {
        return Ok(Rule::Null);
    }
    let (scheme, rest) = lower
        .split_once("://")
        .ok_or_else(|| format!("`{text}` is not an origin such as https://app.example.com"))?;
    if scheme != "https" && scheme != "http" {
        return Err(format!("`{text}`: an origin starts with https:// or http://"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', '\\']) {
        return Err(format!(
            "`{text}`: an origin is scheme://host[:port], with no path or trailing slash"
        ));
    }
    let (host, port) = split_port(rest);
    if let Some(port) = port
        && !valid_port(port)
    {
        return Err(format!("`{text}`: `{port}` is not a port"));
    }
    if production {
        if is_local_host(host.trim_start_matches("*.")) {
            return Err(format!(
                "`{text}`: local origins are not allowed in production (list them in development_origins)"
            ));
        }
        if scheme != "https" {
            return Err(format!("`{text}`: production origins must use https"));
        }
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        if !is_dns_name(suffix) || !suffix.contains('.') {
            return Err(format!(
                "`{text}`: a pattern is scheme://*.name.tld, matching subdomains of a name with at least two labels"
            ));
        }
        return Ok(Rule::Subdomains {
            scheme: scheme.into(),
            suffix: format!(".{suffix}"),
            port: port.map(String::from),
        });
    }
    if host.contains('*') {
        return Err(format!(
            "`{text}`: a wildcard may only open the host, as in https://*.example.com"
        ));
    }
    let ipv6 = host.starts_with('[') && host.ends_with(']');
    if !ipv6 && !is_dns_name(host) {
        return Err(format!("`{text}`: `{host}` is not a host name"));
    }
    Ok(Rule::Exact(lower))
}

impl Rule {
    fn matches(&self, origin: &str) -> bool {
        match self {
            Rule::Exact(exact) => exact.eq_ignore_ascii_case(origin),
            Rule::Null => origin == "null",
            Rule::Subdomains { scheme, suffix, port } => {
                let Some((their_scheme, rest)) = origin.split_once("://") else {
                    return false;
                };
                if !their_scheme.eq_ignore_ascii_case(scheme) || rest.starts_with('[') {
                    return false;
                }
                let (host, their_port) = split_port(rest);
                if their_port != port.as_deref() || host.len() <= suffix.len() {
                    return false;
                }
                let (sub, tail) = host.split_at(host.len() - suffix.len());
                tail.eq_ignore_ascii_case(suffix)
                    && !sub.starts_with('.')
                    && !sub.ends_with('.')
                    && sub.split('.').all(|label| {
                        !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    })
            }
        }
    }
}

impl OriginList {
    /// Compiles origins; `key` names the list in problems. `*` allows any.
    pub fn compile(
        texts: &[String],
        production: bool,
        key: &str,
        problems: &mut Vec<(String, String)>,
    ) -> OriginList {
        let mut list = OriginList::default();
        for text in texts {
            if text.trim() == "*" {
                list.any = true;
                continue;
            }
            match parse_rule(text, production) {
                Ok(rule) if !list.rules.contains(&rule) => list.rules.push(rule),
                Ok(_) => {}
                Err(e) => problems.push((key.to_string(), e)),
            }
        }
        if list.any && !list.rules.is_empty() {
            problems.push((
                key.to_string(),
                "\"*\" already allows every origin; remove the others".into(),
            ));
        }
        list
    }

    /// Adds another list's rules (a development list to the production one).
    pub fn extend(&mut self, other: OriginList) {
        self.any |= other.any;
        for rule in other.rules {
            if !self.rules.contains(&rule) {
                self.rules.push(rule);
            }
        }
    }

    pub fn allows_any(&self) -> bool {
        self.any
    }

    pub fn is_empty(&self) -> bool {
        !self.any && self.rules.is_empty()
    }

    /// Whether `null` was listed.
    pub fn lists_null(&self) -> bool {
        self.rules.contains(&Rule::Null)
    }

    /// Whether a request's `Origin` value is allowed.
    pub fn allows(&self, origin: &[u8]) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        // `*` never admits the opaque origin: it must be listed by name.
        if self.any {
            return origin != "null";
        }
        self.rules.iter().any(|rule| rule.matches(origin))
    }
}

/// Checks one configured exact origin; returns it lowercased.
pub fn parse_origin(text: &str, production: bool) -> Result<String, String> {
    match parse_rule(text, production)? {
        Rule::Exact(origin) => Ok(origin),
        _ => Err(format!("`{text}`: list an exact origin here, not a pattern")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(texts: &[&str], production: bool) -> OriginList {
        let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        let mut problems = Vec::new();
        let list = OriginList::compile(&texts, production, "cors.origins", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        list
    }

    #[test]
    fn patterns_match_true_subdomains_only() {
        let l = list(&["https://*.example.com"], true);
        for good in [
            "https://a.example.com",
            "https://a.b.example.com",
            "https://A-1.Example.COM",
        ] {
            assert!(l.allows(good.as_bytes()), "{good}");
        }
        for bad in [
            "https://example.com",
            "https://evilexample.com",
            "https://example.com.evil.net",
            "https://a.example.com.evil.net",
            "https://.example.com",
            "https://a..example.com",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://a_b.example.com",
            "https://a.example.com/",
            "https://user@a.example.com",
            "null",
            "",
        ] {
            assert!(!l.allows(bad.as_bytes()), "{bad}");
        }
        let with_port = list(&["https://*.example.com:8443"], true);
        assert!(with_port.allows(b"https://a.example.com:8443"));
        assert!(!with_port.allows(b"https://a.example.com"));
    }

    #[test]
    fn exact_origins_match_scheme_host_and_port() {
        let l = list(&["https://App.Example.com", "https://api.example.com:8443"], true);
        assert!(l.allows(b"https://app.example.com"));
        assert!(l.allows(b"https://api.example.com:8443"));
        for bad in [
            "http://app.example.com",
            "https://app.example.com:443",
            "https://api.example.com",
            "https://app.example.com.evil.net",
            "https://xapp.example.com",
        ] {
            assert!(!l.allows(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn null_is_refused_unless_listed_even_by_a_wildcard() {
        assert!(!list(&["*"], false).allows(b"null"));
        assert!(list(&["*"], false).allows(b"https://x.example"));
        assert!(!list(&["https://a.example.com"], true).allows(b"null"));
        assert!(list(&["null"], false).allows(b"null"));
    }

    #[test]
    fn configured_origins_are_checked_per_environment() {
        assert!(parse_rule("http://localhost:3000", false).is_ok());
        for bad in [
            "http://localhost:3000",
            "https://localhost",
            "http://127.0.0.1:5173",
            "https://[::1]:8080",
            "http://app.example.com",
            "https://dev.localhost",
            "https://*.localhost",
        ] {
            assert!(parse_rule(bad, true).is_err(), "{bad} in production");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://*.com",
            "https://a.*.example.com",
            "https://*example.com",
            "https://app.example.com:99999",
            "https://exa mple.com",
            "ftp://x",
            "https://",
        ] {
            assert!(parse_rule(bad, false).is_err(), "{bad}");
        }
    }
}
