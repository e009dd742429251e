//! Keys derived from `secrets.session_key` (HKDF-SHA256, one per purpose):
//! the cookie tag, form tokens (CSRF) and the encryption of provider tokens
//! at rest (AES-256-GCM). Previous session keys verify and decrypt; only the
//! current one signs and encrypts.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Bytes of the cookie's tag (128 bits, as in RFC 2104's truncation advice).
const TAG_BYTES: usize = 16;

/// The keys derived from one session key.
struct Derived {
    /// HMAC keyed once; each tag clones it (no key schedule per request).
    mac: Hmac<Sha256>,
    cipher: Aes256Gcm,
    /// Names the key in encrypted values, so rotation finds the right one.
    id: String,
}

impl Derived {
    fn new(session_key: &[u8]) -> Derived {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"portcullis sessions"), session_key);
        let mut mac = [0u8; 32];
        let mut enc = [0u8; 32];
        hk.expand(b"cookie and form tags v1", &mut mac)
            .expect("32 bytes is a valid HKDF output");
        hk.expand(b"provider tokens at rest v1", &mut enc)
            .expect("32 bytes is a valid HKDF output");
        let id = hex::encode(&Sha256::digest(enc)[..4]);
        Derived {
            mac: <Hmac<Sha256> as Mac>::new_from_slice(&mac).expect("HMAC takes any key"),
            cipher: Aes256Gcm::new_from_slice(&enc).expect("a 32-byte key"),
            id,
        }
    }

    fn tag(&self, purpose: &[u8], data: &[u8]) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(purpose);
        m.update(&[0]);
        m.update(data);
        m.finalize().into_bytes().into()
    }
}

/// The current session key's derived keys, and the previous ones'.
pub struct SessionKeys {
    current: Derived,
    previous: Vec<Derived>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKeys(<{} keys redacted>)", 1 + self.previous.len())
    }
}

/// A session's secret ID: the cookie carries it, the store only its hash.
#[derive(Clone, Copy)]
pub struct SessionId([u8; 32]);

impl SessionId {
    pub fn generate() -> SessionId {
        let mut id = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        SessionId(id)
    }

    /// The store's key for this session.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0))
    }

    /// The cache's key for this session.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }
}

impl SessionKeys {
    pub fn new(current: &[u8], previous: &[&[u8]]) -> SessionKeys {
        SessionKeys {
            current: Derived::new(current),
            previous: previous.iter().map(|k| Derived::new(k)).collect(),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Derived> {
        std::iter::once(&self.current).chain(&self.previous)
    }

    /// The cookie value for a session: `v1.<id>.<tag>`, 69 characters.
    pub fn cookie_value(&self, id: &SessionId) -> String {
        let tag = self.current.tag(b"session cookie", &id.0);
        format!(
            "v1.{}.{}",
            URL_SAFE_NO_PAD.encode(id.0),
            URL_SAFE_NO_PAD.encode(&tag[..TAG_BYTES])
        )
    }

    /// The session a cookie names, if its tag was made with a current or
    /// previous key. Nothing is looked up for a forged or altered cookie.
    pub fn open_cookie(&self, value: &str) -> Option<SessionId> {
        let rest = value.strip_prefix("v1.")?;
        let (id, tag) = rest.split_once('.')?;
        let id: [u8; 32] = URL_SAFE_NO_PAD.decode(id).ok()?.try_into().ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if tag.len() != TAG_BYTES {
            return None;
        }
        let mut good = false;
        for key in self.all() {
            let want = key.tag(b"session cookie", &id);
            good |= bool::from(want[..TAG_BYTES].ct_eq(&tag));
        }
        good.then_some(SessionId(id))
    }

    /// A form token for `purpose` bound to `binding` (a pre-login cookie, a
    /// session ID), so a form cannot be posted from another site.
    pub fn form_token(&self, purpose: &str, binding: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(&self.current.tag(purpose.as_bytes(), binding)[..TAG_BYTES])
    }

    pub fn check_form_token(&self, purpose: &str, binding: &[u8], token: &str) -> bool {
        let Ok(token) = URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        let mut good = false;
        for key in self.all() {
            let want = key.tag(purpose.as_bytes(), binding);
            good |= token.len() == TAG_BYTES && bool::from(want[..TAG_BYTES].ct_eq(&token));
        }
        good
    }

    /// Encrypts provider tokens for the store: `<key id>.<nonce+ciphertext>`.
    pub fn encrypt(&self, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .current
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .expect("AES-GCM encrypts any length we store");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{}.{}", self.current.id, URL_SAFE_NO_PAD.encode(out))
    }

    /// Decrypts what [`Self::encrypt`] made, with whichever key made it.
    pub fn decrypt(&self, stored: &str) -> Option<Vec<u8>> {
        let (id, data) = stored.split_once('.')?;
        let key = self.all().find(|k| k.id == id)?;
        let data = URL_SAFE_NO_PAD.decode(data).ok()?;
        if data.len() < 12 {
            return None;
        }
        let (nonce, sealed) = data.split_at(12);
        key.cipher.decrypt(Nonce::from_slice(nonce), sealed).ok()
    }
}

/// A random value for pre-login cookies (the CSRF binding of login forms).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_open_with_current_and_previous_keys_only() {
        let old = SessionKeys::new(b"old-key-old-key-old-key-old-key!", &[]);
        let id = SessionId::generate();
        let cookie = old.cookie_value(&id);
        assert!(cookie.len() < 80, "{cookie}");
        let rotated = SessionKeys::new(
            b"new-key-new-key-new-key-new-key!",
            &[b"old-key-old-key-old-key-old-key!"],
        );
        assert_eq!(rotated.open_cookie(&cookie).unwrap().hash(), id.hash());
        let forgotten = SessionKeys::new(b"new-key-new-key-new-key-new-key!", &[]);
        assert!(forgotten.open_cookie(&cookie).is_none());
        // One flipped character in the ID or the tag: refused.
        let mut chars: Vec<char> = cookie.chars().collect();
        chars[5] = if chars[5] == 'A' { 'B' } else { 'A' };
        assert!(old.open_cookie(&chars.into_iter().collect::<String>()).is_none());
        assert!(old.open_cookie("v1.x.y").is_none());
        assert!(old.open_cookie("").is_none());
    }

    #[test]
    fn tokens_at_rest_decrypt_after_rotation_and_not_when_altered() {
        let old = SessionKeys::new(b"old-key-old-key-old-key-old-key!", &[]);
        let sealed = old.encrypt(b"{\"refresh_token\":\"r\"}");
        assert!(!sealed.contains("refresh"));
        let rotated = SessionKeys::new(
            b"new-key-new-key-new-key-new-key!",
            &[b"old-key-old-key-old-key-old-key!"],
        );
        assert_eq!(rotated.decrypt(&sealed).unwrap(), b"{\"refresh_token\":\"r\"}");
        let mut altered = sealed.clone();
        altered.pop();
        altered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(rotated.decrypt(&altered).is_none());
    }

    #[test]
    fn form_tokens_are_bound_to_their_purpose_and_binding() {
        let keys = SessionKeys::new(b"key-key-key-key-key-key-key-key!", &[]);
        let t = keys.form_token("login", b"cookie-a");
        assert!(keys.check_form_token("login", b"cookie-a", &t));
        assert!(!keys.check_form_token("login", b"cookie-b", &t));
        assert!(!keys.check_form_token("logout", b"cookie-a", &t));
        assert!(!keys.check_form_token("login", b"cookie-a", "nope"));
    }
}
