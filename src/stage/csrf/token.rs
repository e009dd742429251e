//! CSRF tokens: an HMAC (the session key's form key) over the credential
//! cookie the token is bound to, so one token serves a whole session. A
//! token from one session is worthless in another, and making or checking
//! one needs no store and no randomness: one HMAC per request that carries
//! a credential cookie (measured: the nonce-and-cookie variant cost a
//! random draw, a second HMAC and a `Set-Cookie` on every page load).

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request};

use super::FORM_FIELD;
use crate::body::GatewayBody;
use crate::sessions::SessionKeys;

const PURPOSE: &str = "csrf token";

/// What a safe request hands its page (see the response hook).
pub struct CsrfIssue {
    pub token: HeaderValue,
    /// `Set-Cookie` when the request had no valid token cookie.
    pub set_cookie: Option<HeaderValue>,
}

/// The token for `binding`, with the current key.
pub fn mint(keys: &SessionKeys, binding: &str) -> String {
    keys.form_token(PURPOSE, binding.as_bytes())
}

/// Whether `token` was made (with a current or previous key) for `binding`.
pub fn verify(keys: &SessionKeys, binding: &str, token: &str) -> bool {
    keys.check_form_token(PURPOSE, binding.as_bytes(), token)
}

/// The token cookie: HttpOnly (pages read the token from the
/// `X-CSRF-Token` response header, not the cookie), SameSite=Strict, and
/// Secure with the `__Host-` prefix unless development turned that off.
pub fn set_cookie(name: &str, token: &str, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::try_from(format!(
        "{name}={token}; Path=/; HttpOnly; SameSite=Strict{secure}"
    ))
    .ok()
}

/// The `csrf_token` field of a url-encoded or multipart form body.
pub fn form_field(req: &Request<GatewayBody>, body: &Bytes) -> Option<String> {
    let content_type = req.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    let lower = content_type.trim_start().to_ascii_lowercase();
    if lower.starts_with("multipart/form-data") {
        let boundary = multer::parse_boundary(content_type).ok()?;
        return multipart_field(body, &boundary);
    }
    if !lower.starts_with("application/x-www-form-urlencoded") {
        return None;
    }
    form_urlencoded::parse(body)
        .find(|(name, _)| name == FORM_FIELD)
        .map(|(_, value)| value.into_owned())
}

/// Finds the field in a complete multipart body.
fn multipart_field(body: &Bytes, boundary: &str) -> Option<String> {
    let delimiter = format!("--{boundary}");
    let text = body.as_ref();
    let mut parts = split(text, delimiter.as_bytes()).into_iter().skip(1);
    parts.find_map(|part| {
        let part = part.strip_prefix(b"\r\n")?;
        let end = find(part, b"\r\n\r\n")?;
        let (head, value) = (&part[..end], &part[end + 4..]);
        let head = std::str::from_utf8(head).ok()?.to_ascii_lowercase();
        let named = head.lines().any(|line| {
            line.starts_with("content-disposition:")
                && line.contains(&format!("name=\"{FORM_FIELD}\""))
                && !line.contains("filename")
        });
        let value = value.strip_suffix(b"\r\n").unwrap_or(value);
        named.then(|| String::from_utf8(value.to_vec()).ok()).flatten()
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn split<'a>(mut text: &'a [u8], delimiter: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    while let Some(i) = find(text, delimiter) {
        out.push(&text[..i]);
        text = &text[i + delimiter.len()..];
    }
    out.push(text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_their_credential() {
        let keys = SessionKeys::new(&[7u8; 32], &[]);
        let token = mint(&keys, "sid=a");
        assert!(verify(&keys, "sid=a", &token));
        assert!(!verify(&keys, "sid=b", &token));
        assert!(!verify(&SessionKeys::new(&[8u8; 32], &[]), "sid=a", &token));
        let rotated = SessionKeys::new(&[8u8; 32], &[&[7u8; 32]]);
        assert!(verify(&rotated, "sid=a", &token), "a previous key still verifies");
        assert_eq!(mint(&keys, "sid=a"), token, "one token per session");
        for bad in ["", ".", "x.y", &token[1..], &format!("{token}x")] {
            assert!(!verify(&keys, "sid=a", bad), "{bad}");
        }
    }

    #[test]
    fn the_field_is_found_in_both_form_encodings() {
        let req = |ct: &str| {
            Request::builder()
                .header(CONTENT_TYPE, ct)
                .body(GatewayBody::Empty)
                .unwrap()
        };
        let form = Bytes::from_static(b"a=1&csrf_token=t%2Bok&b=2");
        assert_eq!(
            form_field(&req("application/x-www-form-urlencoded"), &form).as_deref(),
            Some("t+ok")
        );
        let multipart = Bytes::from_static(
            b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"csrf_token\"\r\n\r\nnot it\r\n\
--XX\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\ntok\r\n--XX--\r\n",
        );
        assert_eq!(
            form_field(&req("multipart/form-data; boundary=XX"), &multipart).as_deref(),
            Some("tok")
        );
        assert_eq!(form_field(&req("text/plain"), &form), None);
    }
}
