//! JWT test helpers: the fixture keys (tests/fixtures/jwt), signing with
//! any header, hand-made tokens for attacks, and a real JWKS server whose
//! document can be changed or broken while a test runs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// The public JWK of a fixture key (`rsa-a`, `rsa-b`, `ec-a`, `ed-a`).
pub fn jwk(name: &str) -> Value {
    let all: Value = serde_json::from_slice(&fixture_bytes("jwks-keys.json")).unwrap();
    all[name].clone()
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed by `rsa-b` with a header the test shapes (key-carrying
/// parameters an attacker would add).
pub fn sign_with_header(edit: impl FnOnce(&mut Header), claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    edit(&mut header);
    jsonwebtoken::encode(&header, claims, &encoding_key(Algorithm::RS256, "rsa-b")).unwrap()
}

/// Claims that pass every check of an issuer with this `iss` and `aud`.
pub fn claims(iss: &str, aud: &str, sub: &str) -> Value {
    json!({ "iss": iss, "aud": aud, "sub": sub, "iat": now(), "exp": now() + 300 })
}

/// The signing key of a fixture.
pub fn encoding_key(alg: Algorithm, name: &str) -> EncodingKey {
    let pem = fixture_bytes(&format!("{name}.pem"));
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    }
}

/// A token signed with a fixture key, `kid` set when given.
pub fn sign(alg: Algorithm, key: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &encoding_key(alg, key)).unwrap()
}

/// A token signed with an HMAC secret.
pub fn sign_hmac(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token from parts: header and claims as JSON, any signature bytes.
pub fn craft(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// HMAC-SHA256 over `header.payload`, as an attacker who treats a public
/// key as an HMAC secret would sign.
pub fn hmac_sign(header: &Value, claims: &Value, secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

/// A real HTTP server publishing a JWKS document at `/jwks`, which a test
/// can replace or make fail (500) while the gateway runs.
#[derive(Clone)]
pub struct JwksServer {
    pub addr: SocketAddr,
    document: Arc<Mutex<Option<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start(keys: &[&str]) -> JwksServer {
        let document: Arc<Mutex<Option<Value>>> = Arc::new(Mutex::new(None));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (doc, count) = (document.clone(), fetches.clone());
        let addr = super::serve_http(move |req: http::Request<hyper::body::Incoming>| {
            let published = if req.uri().path() == "/jwks" {
                count.fetch_add(1, Ordering::SeqCst);
                doc.lock().unwrap().clone()
            } else {
                None
            };
            async move {
                let response = match published {
                    Some(doc) => Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(doc.to_string()))),
                    None => Response::builder()
                        .status(StatusCode::INTERNAL_SERVER_ERROR)
                        .body(Full::new(Bytes::from_static(b"down"))),
                };
                Ok::<_, std::convert::Infallible>(response.unwrap())
            }
        })
        .await;
        let server = JwksServer {
            addr,
            document,
            fetches,
        };
        server.publish(keys);
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Publishes these fixture keys from now on.
    pub fn publish(&self, keys: &[&str]) {
        let keys: Vec<Value> = keys.iter().map(|k| jwk(k)).collect();
        *self.document.lock().unwrap() = Some(json!({ "keys": keys }));
    }

    /// Answers 500 from now on.
    pub fn break_down(&self) {
        *self.document.lock().unwrap() = None;
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}
