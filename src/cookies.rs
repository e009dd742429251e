//! Reading and rewriting the `Cookie` request header (RFC 6265 section
//! 5.4): `name=value` pairs separated by `; `, possibly over several header
//! lines (HTTP/2 sends one per cookie).

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

/// The `name=value` pairs of every Cookie line, as bytes: a line with bytes
/// that are not visible ASCII (a UTF-8 cookie value some apps set) is still
/// read, so no cookie of ours hides in it.
fn pairs(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|line| line.as_bytes().split(|b| *b == b';'))
        .map(|pair| pair.trim_ascii())
}

fn name_of(pair: &[u8]) -> Option<&[u8]> {
    let eq = pair.iter().position(|b| *b == b'=')?;
    Some(pair[..eq].trim_ascii())
}

/// The values of every cookie called `name`, in order (values that are
/// not UTF-8 are skipped: none of the gateway's are).
pub fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    pairs(headers).filter_map(move |pair| {
        if name_of(pair)? != name.as_bytes() {
            return None;
        }
        let eq = pair.iter().position(|b| *b == b'=')?;
        let value = std::str::from_utf8(pair[eq + 1..].trim_ascii()).ok()?;
        Some(value.trim_matches('"'))
    })
}

/// Removes every cookie called `name`, keeping the others in order (and
/// the header itself only if any remain).
pub fn remove(headers: &mut HeaderMap, name: &str) {
    remove_all(headers, &[name]);
}

/// Removes every cookie with one of these names, in one pass over the
/// header when none is there (the common case), one rewrite when some are.
pub fn remove_all(headers: &mut HeaderMap, names: &[&str]) {
    let named = |pair: &[u8]| name_of(pair).is_some_and(|n| names.iter().any(|x| x.as_bytes() == n));
    if !pairs(headers).any(named) {
        return;
    }
    let mut kept: Vec<u8> = Vec::new();
    for pair in pairs(headers).filter(|p| !p.is_empty() && !named(p)) {
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    headers.remove(COOKIE);
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::from_bytes(&kept)
    {
        headers.insert(COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(COOKIE, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    #[test]
    fn values_are_found_across_lines_and_removed_without_touching_others() {
        let mut h = headers(&["a=1; tok=xyz", "b=2", "tok=\"q\""]);
        assert_eq!(values(&h, "tok").collect::<Vec<_>>(), ["xyz", "q"]);
        assert_eq!(values(&h, "to").count(), 0);
        remove(&mut h, "tok");
        assert_eq!(h.get_all(COOKIE).iter().collect::<Vec<_>>(), ["a=1; b=2"]);
        // A line with UTF-8 in another cookie is read and rewritten too.
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_bytes("tok=1; name=Jos\u{e9}".as_bytes()).unwrap(),
        );
        assert_eq!(values(&h, "tok").collect::<Vec<_>>(), ["1"]);
        remove(&mut h, "tok");
        assert_eq!(h[COOKIE].as_bytes(), "name=Jos\u{e9}".as_bytes());
        let mut only = headers(&["tok=1"]);
        remove(&mut only, "tok");
        assert!(only.get(COOKIE).is_none());
    }
}
