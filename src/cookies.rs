//! Reading and rewriting the `Cookie` request header (RFC 6265 section
//! 5.4): `name=value` pairs separated by `; `, possibly over several header
//! lines (HTTP/2 sends one per cookie).

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

/// The values of every cookie called `name`, in order.
pub fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
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
    let named = |pair: &str| {
        pair.split_once('=')
            .is_some_and(|(k, _)| names.contains(&k.trim()))
    };
    let lines = || headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok());
    if !lines().flat_map(|line| line.split(';')).any(named) {
        return;
    }
    let kept: Vec<String> = lines()
        .flat_map(|line| line.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !named(pair))
        .map(str::to_string)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::from_str(&kept.join("; "))
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
        let mut only = headers(&["tok=1"]);
        remove(&mut only, "tok");
        assert!(only.get(COOKIE).is_none());
    }
}
