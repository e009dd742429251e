//! Local users' passwords: argon2id at OWASP's parameters (19 MiB, two
//! passes, one lane), legacy bcrypt hashes (`$2a$`, `$2b$`, `$2y$`)
//! verified and upgraded at the next successful login, and the same cost
//! for an unknown user as for a wrong password.

use std::sync::OnceLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Shortest and longest password accepted when one is set. The upper bound
/// keeps a hash from being a denial of service (and bcrypt reads only 72
/// bytes anyway).
pub const MIN_PASSWORD: usize = 12;
pub const MAX_PASSWORD: usize = 256;

/// OWASP Password Storage Cheat Sheet: argon2id, m = 19 MiB, t = 2, p = 1.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("the password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")]
    Length,
    #[error("`{0}` is not an argon2id or bcrypt ($2a$, $2b$, $2y$) hash")]
    UnknownHash(String),
}

/// Hashes a new password with argon2id.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let chars = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&chars) {
        return Err(PasswordError::Length);
    }
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashes any input")
        .to_string())
}

/// The largest argon2 cost accepted from an imported hash (256 MiB, 10
/// passes, 8 lanes): a login with a bigger one would be a denial of
/// service.
const MAX_IMPORTED_COST: (u32, u32, u32) = (256 * 1024, 10, 8);

/// An argon2id hash's (memory KiB, passes, lanes).
fn argon2_cost(hash: &PasswordHash<'_>) -> Option<(u32, u32, u32)> {
    let params = Params::try_from(hash).ok()?;
    Some((params.m_cost(), params.t_cost(), params.p_cost()))
}

/// Whether a stored hash is one this version verifies (for `users import`).
pub fn check_hash(hash: &str) -> Result<(), PasswordError> {
    let is_bcrypt = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) && hash.len() == 60;
    let (max_m, max_t, max_p) = MAX_IMPORTED_COST;
    let is_argon2id = hash.starts_with("$argon2id$")
        && PasswordHash::new(hash)
            .ok()
            .and_then(|h| argon2_cost(&h))
            .is_some_and(|(m, t, p)| m <= max_m && t <= max_t && p <= max_p);
    if is_bcrypt || is_argon2id {
        Ok(())
    } else {
        let shown: String = hash.chars().take(7).collect();
        Err(PasswordError::UnknownHash(format!("{shown}…")))
    }
}

/// What checking a password found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Wrong,
    /// Right, and the stored hash is current.
    Right,
    /// Right, with a legacy (bcrypt) hash: store this argon2id one instead.
    RightUpgrade(String),
}

/// Checks a password against a stored hash, in time that does not depend
/// on where they differ.
pub fn verify_password(password: &str, stored: &str) -> Verdict {
    if password.len() > MAX_PASSWORD * 4 {
        return Verdict::Wrong;
    }
    if stored.starts_with("$2") {
        return match bcrypt::verify(password, stored) {
            Ok(true) => match hash_password(password) {
                Ok(upgraded) => Verdict::RightUpgrade(upgraded),
                // A legacy password outside today's length rules still logs
                // in; it keeps its bcrypt hash until it is changed.
                Err(_) => Verdict::Right,
            },
            _ => Verdict::Wrong,
        };
    }
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Verdict::Wrong;
    };
    if argon2().verify_password(password.as_bytes(), &parsed).is_err() {
        return Verdict::Wrong;
    }
    // A hash made with other parameters (imported, or from an older
    // version) is re-made at today's.
    let current = argon2_cost(&parsed) == Some((19 * 1024, 2, 1));
    match (current, hash_password(password)) {
        (false, Ok(upgraded)) => Verdict::RightUpgrade(upgraded),
        _ => Verdict::Right,
    }
}

/// Whether text could be a user name (so nothing else is looked up).
pub fn validate_username_text(name: &str) -> bool {
    crate::store::users::validate_username(name).is_ok()
}

/// The work an unknown user name costs: one argon2id verification against a
/// hash made at start, so a login attempt takes as long whether or not the
/// user exists.
pub fn verify_unknown_user(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("portcullis-no-such-user").expect("valid length"));
    let _ = verify_password(password, dummy);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_at_owasp_parameters_round_trips() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert_eq!(verify_password("correct horse battery", &hash), Verdict::Right);
        assert_eq!(verify_password("correct horse batterz", &hash), Verdict::Wrong);
        assert_eq!(hash_password("short"), Err(PasswordError::Length));
    }

    #[test]
    fn bcrypt_hashes_verify_and_ask_for_an_upgrade() {
        for prefix in ["$2a$", "$2b$", "$2y$"] {
            let hash = bcrypt::hash("legacy password!", 4)
                .unwrap()
                .replacen("$2b$", prefix, 1);
            assert!(check_hash(&hash).is_ok());
            match verify_password("legacy password!", &hash) {
                Verdict::RightUpgrade(new) => assert!(new.starts_with("$argon2id$")),
                other => panic!("{prefix}: {other:?}"),
            }
            assert_eq!(verify_password("wrong password!!", &hash), Verdict::Wrong);
        }
        assert!(check_hash("$1$md5crypt").is_err());
        // argon2id at other parameters verifies and is re-made; a cost too
        // large to verify safely is not imported.
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).unwrap(),
        )
        .hash_password(b"imported password", &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string();
        assert!(check_hash(&weak).is_ok());
        assert!(matches!(
            verify_password("imported password", &weak),
            Verdict::RightUpgrade(_)
        ));
        assert!(check_hash("$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA").is_err());
        assert!(check_hash("plaintext").is_err());
    }
}
