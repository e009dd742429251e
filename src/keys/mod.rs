//! API keys: the format, generation, hashing, the in-memory cache that keeps
//! the database off the request path, and the operations (create, revoke,
//! rotate) shared by the CLI and the admin API.
//!
//! A key reads `pc_<id>_<secret>`: `id` is 12 lowercase letters and digits,
//! public, used to find the record; `secret` is 44 letters and digits
//! (about 262 bits from the OS random source). Only SHA-256 of the secret is
//! stored, and it is compared in constant time.

pub mod cache;
pub mod manage;

use rand::Rng;
use sha2::{Digest, Sha256};

pub use cache::{CachedKey, KeyCache};

pub const PREFIX: &str = "pc_";
pub const ID_LEN: usize = 12;
pub const SECRET_LEN: usize = 44;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_from(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// Random letters and digits (for IDs).
pub fn random_alnum(len: usize) -> String {
    random_from(LOWER_ALNUM, len)
}

/// A key as presented, split into its parts.
#[derive(Debug, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

/// Splits a presented key; `None` when it does not have the key format.
pub fn parse(text: &str) -> Option<PresentedKey<'_>> {
    let rest = text.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let secret_ok = secret.len() == SECRET_LEN && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    (id_ok && secret_ok).then_some(PresentedKey { id, secret })
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A freshly generated key: its ID, the full key text and its secret's hash.
pub struct GeneratedKey {
    pub id: String,
    pub key: String,
    pub secret_hash: [u8; 32],
}

pub fn generate() -> GeneratedKey {
    let id = random_from(LOWER_ALNUM, ID_LEN);
    let secret = random_from(ALNUM, SECRET_LEN);
    GeneratedKey {
        key: format!("{PREFIX}{id}_{secret}"),
        secret_hash: hash_secret(&secret),
        id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash_to_their_record() {
        let g = generate();
        let p = parse(&g.key).expect("a generated key parses");
        assert_eq!(p.id, g.id);
        assert_eq!(hash_secret(p.secret), g.secret_hash);
        assert_ne!(generate().key, g.key);
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let good = generate().key;
        let cases = [
            String::new(),
            "pc_".into(),
            good.replacen("pc_", "pk_", 1),
            good[..good.len() - 1].to_string(),
            format!("{good}x"),
            good.replacen('_', "-", 2),
            format!("pc_ABCDEFGHIJKL_{}", "a".repeat(SECRET_LEN)),
            format!("pc_abcdefghijkl_{}!", "a".repeat(SECRET_LEN - 1)),
            format!("pc_abcdefghijkl_{}", "é".repeat(SECRET_LEN / 2)),
        ];
        for bad in cases {
            assert_eq!(parse(&bad), None, "{bad}");
        }
    }
}
