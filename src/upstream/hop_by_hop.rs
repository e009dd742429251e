//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, not
//! the message, so a proxy removes them in both directions, together with
//! every header the `Connection` header names.

use http::header::{self, HeaderMap, HeaderName};

/// The standard hop-by-hop headers.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The position of `name` in [`HOP_BY_HOP`], without hashing it.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// Removes hop-by-hop headers, including every header named in
/// `Connection` (but never `Host`, which no connection can own).
///
/// Runs on every request and response, most of which carry none, or only
/// `Connection: keep-alive`: one pass over the names finds which are
/// present, and only those are looked up and removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Names listed in `Connection` beyond the standard ones (rare), which
    // are the only reason to allocate here.
    let mut named: Vec<HeaderName> = Vec::new();
    let tokens = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for token in tokens {
        let standard = token.eq_ignore_ascii_case("close")
            || HOP_BY_HOP.iter().any(|h| token.eq_ignore_ascii_case(h.as_str()));
        if !standard
            && let Ok(name) = HeaderName::from_bytes(token.as_bytes())
            && name != header::HOST
        {
            named.push(name);
        }
    }
    for name in named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_named_in_connection() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret-Hop, close, host"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("host", "kept"),
            ("x-kept", "yes"),
        ] {
            h.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        strip_hop_by_hop(&mut h);
        let mut kept: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        kept.sort();
        assert_eq!(kept, ["host", "x-kept"]);
    }

    #[test]
    fn headers_named_in_connection_go_even_when_no_other_hop_header_is_there() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "Upgrade, x-a".parse().unwrap());
        h.append(header::CONNECTION, "X-B".parse().unwrap());
        h.append(HeaderName::from_static("x-a"), "1".parse().unwrap());
        h.append(HeaderName::from_static("x-b"), "1".parse().unwrap());
        h.append(HeaderName::from_static("x-kept"), "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);

        let mut plain = HeaderMap::new();
        plain.append(header::CONTENT_LENGTH, "3".parse().unwrap());
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }
}
