//! The keys an issuer's tokens are verified with: a shared secret (HS*),
//! PEM public keys, or the keys of a JWKS document.
//!
//! A key knows its family (HMAC, RSA, EC, EdDSA), so that a token is only
//! ever checked with a key of the family its `alg` names: an RS256 public
//! key is never used as an HMAC secret (the classic key-confusion attack).
//! A JWKS never supplies HMAC keys: it is a public document.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

pub use jsonwebtoken::AlgorithmFamily as Family;

/// Keys a JWKS may list; more are ignored, so a huge document costs no
/// more than this many keys to hold and search.
pub const MAX_JWKS_KEYS: usize = 64;

/// One verification key.
pub struct VerifyKey {
    pub kid: Option<String>,
    /// The one algorithm a JWK is restricted to, when it names one.
    pub alg: Option<Algorithm>,
    pub family: Family,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

/// The keys of one issuer at one moment.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
}

/// Which algorithm family an algorithm belongs to.
pub fn family_of(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
        _ => Family::Rsa,
    }
}

impl KeySet {
    pub fn from_secret(secret: &[u8]) -> KeySet {
        KeySet {
            keys: vec![VerifyKey {
                kid: None,
                alg: None,
                family: Family::Hmac,
                key: DecodingKey::from_secret(secret).expect("HMAC accepts any key length"),
            }],
        }
    }

    /// PEM public keys (RSA, EC or Ed25519), read from files.
    pub fn from_pem_files(base_dir: &Path, files: &[std::path::PathBuf]) -> Result<KeySet, String> {
        let mut keys = Vec::new();
        for file in files {
            let path = base_dir.join(file);
            let pem =
                std::fs::read(&path).map_err(|e| format!("`{}` cannot be read: {e}", path.display()))?;
            keys.push(pem_key(&pem).ok_or_else(|| {
                format!(
                    "`{}` is not a PEM public key (RSA, EC P-256/P-384 or Ed25519)",
                    path.display()
                )
            })?);
        }
        Ok(KeySet { keys })
    }

    /// The usable signing keys of a JWKS document: public keys for
    /// signatures, at most [`MAX_JWKS_KEYS`]. Symmetric keys, encryption
    /// keys and keys of unknown types are skipped.
    pub fn from_jwks(set: &JwkSet) -> KeySet {
        let keys = set
            .keys
            .iter()
            .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
            .filter_map(|jwk| {
                let alg = match jwk.common.key_algorithm {
                    Some(a) => Some(Algorithm::try_from(a).ok()?),
                    None => None,
                };
                let (family, alg) = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => (Family::Rsa, alg),
                    // An EC key's curve fixes its algorithm.
                    AlgorithmParameters::EllipticCurve(p) => {
                        let curve_alg = match &p.curve {
                            EllipticCurve::P256 => Algorithm::ES256,
                            EllipticCurve::P384 => Algorithm::ES384,
                            _ => return None,
                        };
                        if alg.is_some_and(|a| a != curve_alg) {
                            return None;
                        }
                        (Family::Ec, Some(curve_alg))
                    }
                    AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                        (Family::Ed, alg)
                    }
                    _ => return None,
                };
                if alg.is_some_and(|a| family_of(a) != family) {
                    return None;
                }
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some(VerifyKey {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    family,
                    key,
                })
            })
            .take(MAX_JWKS_KEYS)
            .collect();
        KeySet { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys a token signed with `alg` may be checked against: of the
    /// algorithm's family, allowed that algorithm, and with the token's
    /// `kid` when it names one and the keys have IDs.
    pub fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> impl Iterator<Item = &VerifyKey> {
        let family = family_of(alg);
        let by_kid = kid.filter(|_| self.keys.iter().any(|k| k.kid.is_some()));
        self.keys.iter().filter(move |k| {
            k.family == family
                && k.alg.is_none_or(|a| a == alg)
                && by_kid.is_none_or(|kid| k.kid.as_deref() == Some(kid))
        })
    }

    /// Families present, for checking a config's algorithms.
    pub fn families(&self) -> Vec<Family> {
        let mut out: Vec<Family> = Vec::new();
        for k in &self.keys {
            if !out.contains(&k.family) {
                out.push(k.family);
            }
        }
        out
    }
}

type ReadPem = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;

/// Reads one PEM public key of any supported type.
fn pem_key(pem: &[u8]) -> Option<VerifyKey> {
    let attempts: [(Family, ReadPem); 3] = [
        (Family::Rsa, DecodingKey::from_rsa_pem),
        (Family::Ec, DecodingKey::from_ec_pem),
        (Family::Ed, DecodingKey::from_ed_pem),
    ];
    attempts.into_iter().find_map(|(family, read)| {
        read(pem).ok().map(|key| VerifyKey {
            kid: None,
            alg: None,
            family,
            key,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwks(text: &str) -> KeySet {
        KeySet::from_jwks(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn a_jwks_gives_no_hmac_or_encryption_keys_and_keeps_kids() {
        let set = jwks(
            r#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0c2VjcmV0c2VjcmV0"},
            {"kty":"EC","kid":"e","use":"enc","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","kid":"s","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#,
        );
        assert_eq!(set.keys.len(), 1);
        assert!(set.has_kid("s"));
        assert!(!set.has_kid("h"));
        assert_eq!(set.candidates(Algorithm::ES256, Some("s")).count(), 1);
        assert_eq!(set.candidates(Algorithm::ES256, Some("x")).count(), 0);
        assert_eq!(set.candidates(Algorithm::HS256, Some("s")).count(), 0);
        assert_eq!(
            set.candidates(Algorithm::ES384, None).count(),
            0,
            "a P-256 key is not an ES384 key"
        );
    }

    #[test]
    fn a_jwk_restricted_to_one_algorithm_serves_only_that_one() {
        let set = jwks(
            r#"{"keys":[{"kty":"RSA","kid":"r","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}"#,
        );
        assert_eq!(set.candidates(Algorithm::RS256, None).count(), 1);
        assert_eq!(set.candidates(Algorithm::PS256, None).count(), 0);
    }
}
