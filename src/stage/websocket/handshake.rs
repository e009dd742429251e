//! Reading a WebSocket opening handshake (RFC 6455 §4.2.1): is it one,
//! which subprotocols it offers, and the browser's way of sending a token
//! (`Sec-WebSocket-Protocol: bearer, <token>`, since a browser's WebSocket
//! API cannot set `Authorization`).

use base64::Engine;
use http::header::{CONNECTION, HeaderMap, HeaderValue, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{Method, Uri, Version};

use crate::error::GatewayError;

/// The subprotocol that marks the next entry as a bearer token.
pub const BEARER_PROTOCOL: &str = "bearer";

/// Whether a comma-separated header has `token` among its entries.
fn lists_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks that a request is a version-13 WebSocket handshake and returns
/// its `Sec-WebSocket-Key`.
pub fn check(method: &Method, version: Version, headers: &HeaderMap) -> Result<HeaderValue, GatewayError> {
    if version != Version::HTTP_11 {
        // RFC 8441 (WebSocket over HTTP/2) is not offered: the listener
        // does not announce SETTINGS_ENABLE_CONNECT_PROTOCOL, so browsers
        // open WebSockets over HTTP/1.1.
        return Err(GatewayError::UpgradeRequired(
            "This route takes WebSocket connections over HTTP/1.1.",
        ));
    }
    if method != Method::GET
        || !lists_token(headers, UPGRADE, "websocket")
        || !lists_token(headers, CONNECTION, "upgrade")
    {
        return Err(GatewayError::UpgradeRequired(
            "This route takes WebSocket connections only.",
        ));
    }
    if headers.get(SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(GatewayError::UpgradeRequired(
            "This route speaks WebSocket version 13 only.",
        ));
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .filter(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k.as_bytes())
                .is_ok_and(|raw| raw.len() == 16)
        })
        .ok_or_else(|| {
            GatewayError::bad_request("The WebSocket handshake needs a valid Sec-WebSocket-Key.")
        })?;
    Ok(key.clone())
}

/// The subprotocols a handshake offers, in order, and the bearer token
/// among them (`bearer, <token>`), which is taken out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Offer {
    pub protocols: Vec<String>,
    pub token: Option<String>,
    /// The client offered `bearer`, as it spelled it (it then expects it
    /// back, byte for byte, if the upstream picks nothing else).
    pub bearer: Option<String>,
}

/// Splits `Sec-WebSocket-Protocol` into what the upstream is offered and
/// the token, when `take_token` is set.
pub fn offer(headers: &HeaderMap, take_token: bool) -> Result<Offer, GatewayError> {
    let mut offer = Offer::default();
    let mut entries = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .map(|v| {
            v.to_str()
                .map_err(|_| GatewayError::bad_request("Sec-WebSocket-Protocol is not text."))
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty());
    while let Some(entry) = entries.next() {
        if take_token && entry.eq_ignore_ascii_case(BEARER_PROTOCOL) {
            let token = entries
                .next()
                .ok_or_else(|| GatewayError::bad_request("The bearer subprotocol needs a token after it."))?;
            if offer.token.is_some() {
                return Err(GatewayError::bad_request("Offer one bearer token, not several."));
            }
            offer.token = Some(token.to_string());
            offer.bearer = Some(entry.to_string());
        } else if offer.protocols.len() < 32 {
            offer.protocols.push(entry.to_string());
        } else {
            return Err(GatewayError::bad_request("Too many subprotocols are offered."));
        }
    }
    Ok(offer)
}

/// Takes query parameter `name` out of `uri`, returning its value. Every
/// occurrence goes (the upstream and the log never see it); more than one
/// is refused.
pub fn take_query_token(uri: &Uri, name: &str) -> Result<Option<(Uri, String)>, GatewayError> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    let mut token = None;
    let mut kept: Vec<&str> = Vec::new();
    for segment in query.split('&') {
        let mut pair = form_urlencoded::parse(segment.as_bytes());
        match pair.next() {
            Some((key, value)) if key == name => {
                if token.replace(value.into_owned()).is_some() {
                    return Err(GatewayError::bad_request("Send the token parameter once."));
                }
            }
            // The other parameters go on exactly as they came.
            _ => kept.push(segment),
        }
    }
    let Some(token) = token else { return Ok(None) };
    let target = if kept.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let uri = target
        .parse::<Uri>()
        .map_err(|_| GatewayError::bad_request("The request target is not valid."))?;
    Ok(Some((uri, token)))
}

/// Whether `origin` is the request's own (scheme aside: the gateway may be
/// behind a TLS terminator): its authority equals `Host`.
pub fn same_origin(origin: &[u8], host: Option<&HeaderValue>) -> bool {
    let Some(host) = host.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    let (authority, default_port) = match origin.strip_prefix("https://") {
        Some(rest) => (rest, ":443"),
        None => match origin.strip_prefix("http://") {
            Some(rest) => (rest, ":80"),
            None => return false,
        },
    };
    // `Host: chat.example.com:443` is the origin `https://chat.example.com`.
    let host = host.strip_suffix(default_port).unwrap_or(host);
    authority.eq_ignore_ascii_case(host)
}

/// The expiry (`exp`, seconds since the epoch) of a JWT, read without
/// verifying it: the token was verified at the handshake, and this only
/// schedules when the connection must close.
pub fn jwt_expiry(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    claims.get("exp")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        h
    }

    #[test]
    fn a_valid_handshake_passes_and_others_get_426_or_400() {
        let h = handshake();
        assert!(check(&Method::GET, Version::HTTP_11, &h).is_ok());
        assert_eq!(
            check(&Method::POST, Version::HTTP_11, &h).unwrap_err().status(),
            426
        );
        assert_eq!(
            check(&Method::GET, Version::HTTP_2, &h).unwrap_err().status(),
            426
        );
        let mut old = h.clone();
        old.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(
            check(&Method::GET, Version::HTTP_11, &old).unwrap_err().status(),
            426
        );
        let mut no_upgrade = h.clone();
        no_upgrade.remove(CONNECTION);
        assert_eq!(
            check(&Method::GET, Version::HTTP_11, &no_upgrade)
                .unwrap_err()
                .status(),
            426
        );
        let mut short_key = h.clone();
        short_key.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("c2hvcnQ="));
        assert_eq!(
            check(&Method::GET, Version::HTTP_11, &short_key)
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn the_bearer_token_is_taken_out_of_the_offer() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat.v1, bearer"),
        );
        h.append(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("eyJ.a.b, chat.v2"),
        );
        let offer = offer(&h, true).unwrap();
        assert_eq!(offer.protocols, vec!["chat.v1", "chat.v2"]);
        assert_eq!(offer.token.as_deref(), Some("eyJ.a.b"));
        assert_eq!(offer.bearer.as_deref(), Some("bearer"));
        // Where tokens are not taken, `bearer` is an ordinary subprotocol.
        let plain = super::offer(&h, false).unwrap();
        assert_eq!(plain.protocols.len(), 4);
        assert_eq!(plain.token, None);
        let mut dangling = HeaderMap::new();
        dangling.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("bearer"),
        );
        assert_eq!(super::offer(&dangling, true).unwrap_err().status(), 400);
    }

    #[test]
    fn the_query_token_is_removed_from_the_target() {
        let uri: Uri = "/ws?room=a%20b&token=abc.def&flag".parse().unwrap();
        let (rest, token) = take_query_token(&uri, "token").unwrap().unwrap();
        assert_eq!(token, "abc.def");
        assert_eq!(rest.to_string(), "/ws?room=a%20b&flag", "the rest as it came");
        let only: Uri = "/ws?token=t".parse().unwrap();
        assert_eq!(
            take_query_token(&only, "token").unwrap().unwrap().0.to_string(),
            "/ws"
        );
        let twice: Uri = "/ws?token=a&token=b".parse().unwrap();
        assert!(take_query_token(&twice, "token").is_err());
        let none: Uri = "/ws?room=1".parse().unwrap();
        assert!(take_query_token(&none, "token").unwrap().is_none());
    }

    #[test]
    fn same_origin_compares_the_authority_with_host() {
        let host = HeaderValue::from_static("chat.example.com");
        assert!(same_origin(b"https://chat.example.com", Some(&host)));
        assert!(same_origin(b"http://CHAT.example.com", Some(&host)));
        assert!(!same_origin(b"https://evil.example.com", Some(&host)));
        assert!(!same_origin(b"https://chat.example.com.evil.net", Some(&host)));
        assert!(!same_origin(b"null", Some(&host)));
        assert!(!same_origin(b"https://chat.example.com", None));
        let with_port = HeaderValue::from_static("chat.example.com:443");
        assert!(same_origin(b"https://chat.example.com", Some(&with_port)));
        assert!(!same_origin(b"http://chat.example.com", Some(&with_port)));
    }

    #[test]
    fn a_tokens_expiry_is_read_from_its_payload() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"a","exp":1700000000}"#);
        assert_eq!(jwt_expiry(&format!("h.{payload}.s")), Some(1_700_000_000));
        assert_eq!(jwt_expiry("not-a-token"), None);
    }
}
