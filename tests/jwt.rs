//! JWT authentication through the real server: tokens from PEM keys, an
//! HMAC secret and a live JWKS server; every RFC 8725 attack refused;
//! scopes, roles and identity headers; JWKS rotation, the refresh floor
//! and an outage served from the last good keys.

mod common;

use std::time::Duration;

use common::jwt::*;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

const PEM_ISS: &str = "https://pem.test/";
const HMAC_ISS: &str = "https://hmac.test/";
const HMAC_SECRET: &[u8] = b"0f6c1a2b9d8e7f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e";

/// A gateway with three issuers (PEM keys, an HMAC secret, a JWKS server)
/// and routes for each check.
async fn gateway(upstream: &TestUpstream, jwks: &JwksServer, extra: &str) -> portcullis::Gateway {
    let dir = scratch_dir();
    let secret = dir.join("hmac.secret");
    std::fs::write(&secret, HMAC_SECRET).unwrap();
    let text = config(
        "production",
        &upstream.url(),
        &format!(
            r#"
[[auth.jwt]]
name = "pem"
issuer = "{PEM_ISS}"
audiences = ["api"]
algorithms = ["RS256", "ES256", "EdDSA"]
public_keys = ["{rsa}", "{ec}", "{ed}"]
leeway = "1s"
max_token_size = "2KiB"
roles_claim = "roles"
forward_claims = ["email"]

[[auth.jwt]]
name = "hmac"
issuer = "{HMAC_ISS}"
audiences = ["api"]
algorithms = ["HS256"]
secret = {{ file = "{secret}" }}

[[auth.jwt]]
name = "typed"
issuer = "https://typed.test/"
audiences = ["api"]
algorithms = ["HS256"]
secret = {{ file = "{secret}" }}
typ = "at+jwt"

[[auth.jwt]]
name = "remote"
issuer = "{remote}"
audiences = ["api"]
algorithms = ["RS256", "ES256"]
jwks_url = "{jwks_url}"
jwks_refresh = "1h"
jwks_min_refresh_interval = "1s"
jwks_max_stale = "3s"
{extra}

[[routes]]
id = "jwt"
path = "/jwt"
upstream = "app"
auth = ["jwt"]

[[routes]]
id = "mixed"
path = "/mixed"
upstream = "app"
auth = ["api_key", "jwt"]

[[routes]]
id = "admin"
path = "/admin"
upstream = "app"
auth = ["jwt"]
roles = ["admin", "ops"]

[[routes]]
id = "scoped"
path = "/scoped"
upstream = "app"
auth = ["jwt"]
scopes = ["chat:write"]

[[routes]]
id = "cookie"
path = "/cookie"
upstream = "app"
auth = ["jwt"]
jwt_cookie = "access_token"
jwt_issuers = ["pem"]

[[routes]]
id = "public"
path = "/"
upstream = "app"
auth = ["none"]
"#,
            rsa = fixture("rsa-a.pub.pem"),
            ec = fixture("ec-a.pub.pem"),
            ed = fixture("ed-a.pub.pem"),
            secret = secret.display(),
            remote = jwks.issuer(),
            jwks_url = jwks.url(),
        ),
    );
    start_gateway(&text).await
}

async fn get(gw: &portcullis::Gateway, path: &str, token: &str) -> reqwest::Response {
    client()
        .get(format!("http://{}{path}", gw.public_addr()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Asserts a 401 problem with this detail and an RFC 6750 challenge.
async fn refused(response: reqwest::Response, detail: &str, case: &str) {
    assert_eq!(response.status(), 401, "{case}");
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains("error=\"invalid_token\""),
        "{case}: {challenge}"
    );
    let doc = assert_problem(response, 401).await;
    assert_eq!(doc["detail"], detail, "{case}");
}

#[tokio::test(flavor = "multi_thread")]
async fn good_tokens_of_every_key_kind_pass_with_identity_headers_and_without_the_token() {
    let upstream = TestUpstream::start().await;
    let jwks = JwksServer::start(&["rsa-b", "ec-a"]).await;
    let gw = gateway(&upstream, &jwks, "").await;

    let mut pem_claims = claims(PEM_ISS, "api", "alice");
    pem_claims["scope"] = json!("chat:read chat:write");
    pem_claims["roles"] = json!(["ops"]);
    pem_claims["email"] = json!("alice@example.test");
    let cases = [
        (
            "RS256 from a PEM key",
            sign(Algorithm::RS256, "rsa-a", None, &pem_claims),
            "pem",
        ),
        (
            "ES256 from a PEM key",
            sign(Algorithm::ES256, "ec-a", None, &pem_claims),
            "pem",
        ),
        (
            "EdDSA from a PEM key",
            sign(Algorithm::EdDSA, "ed-a", None, &pem_claims),
            "pem",
        ),
        (
            "HS256 from a secret",
            sign_hmac(HMAC_SECRET, &claims(HMAC_ISS, "api", "alice")),
            "hmac",
        ),
        (
            "RS256 from the JWKS",
            sign(
                Algorithm::RS256,
                "rsa-b",
                Some("rsa-b"),
                &claims(&jwks.issuer(), "api", "alice"),
            ),
            "remote",
        ),
        (
            "ES256 from the JWKS",
            sign(
                Algorithm::ES256,
                "ec-a",
                Some("ec-a"),
                &claims(&jwks.issuer(), "api", "alice"),
            ),
            "remote",
        ),
    ];
    for (case, token, issuer) in &cases {
        let response = client()
            .get(format!("http://{}/jwt/x", gw.public_addr()))
            .bearer_auth(token)
            .header("x-portcullis-user", "mallory")
            .header("x-portcullis-roles", "admin")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{case}");
        let seen = upstream.last();
        assert_eq!(
            seen.headers["x-portcullis-user"], "alice",
            "{case}: the client's copy is replaced"
        );
        assert_eq!(seen.headers["x-portcullis-issuer"], *issuer, "{case}");
        assert!(
            seen.headers.get("authorization").is_none(),
            "{case}: the token is not forwarded"
        );
        if *issuer == "pem" {
            assert_eq!(seen.headers["x-portcullis-scopes"], "chat:read chat:write");
            assert_eq!(seen.headers["x-portcullis-roles"], "ops");
            assert_eq!(seen.headers["x-portcullis-claim-email"], "alice@example.test");
        } else {
            assert!(
                seen.headers.get("x-portcullis-roles").is_none(),
                "{case}: forged roles stripped"
            );
        }
    }

    // Scopes are all required; roles any of.
    let token = sign(Algorithm::RS256, "rsa-a", None, &pem_claims);
    assert_eq!(get(&gw, "/scoped", &token).await.status(), 200);
    assert_eq!(get(&gw, "/admin", &token).await.status(), 200);
    let plain = sign(Algorithm::RS256, "rsa-a", None, &claims(PEM_ISS, "api", "bob"));
    let doc = assert_problem(get(&gw, "/scoped", &plain).await, 403).await;
    assert_eq!(
        doc["detail"],
        "The token lacks the scope this route requires: chat:write."
    );
    let doc = assert_problem(get(&gw, "/admin", &plain).await, 403).await;
    assert_eq!(
        doc["detail"],
        "The token holds none of the roles this route requires: admin, ops."
    );

    // A cookie carries a token only where the route names it, and only for
    // the issuers it accepts.
    let cookie = |token: &str| {
        client()
            .get(format!("http://{}/cookie", gw.public_addr()))
            .header("cookie", format!("theme=dark; access_token={token}"))
    };
    assert_eq!(cookie(&token).send().await.unwrap().status(), 200);
    let seen = upstream.last();
    assert_eq!(
        seen.headers["cookie"], "theme=dark",
        "the token cookie is removed, others stay"
    );
    let hmac = sign_hmac(HMAC_SECRET, &claims(HMAC_ISS, "api", "alice"));
    refused(
        cookie(&hmac).send().await.unwrap(),
        "The token's issuer is not accepted here.",
        "an issuer the route does not accept",
    )
    .await;
    let response = client()
        .get(format!("http://{}/jwt", gw.public_addr()))
        .header("cookie", format!("access_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        401,
        "no cookie is read on a route that does not name one"
    );
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"portcullis\""
    );

    // On a route with API keys too, a key-shaped bearer is a key, anything
    // else a token; the first method presented decides.
    assert_eq!(get(&gw, "/mixed", &token).await.status(), 200);
    let key = make_key(&gw, "svc", &[], None).await;
    assert_eq!(get(&gw, "/mixed", &key.key).await.status(), 200);
    assert_eq!(upstream.last().headers["x-portcullis-consumer"], "svc");
    let both = client()
        .get(format!("http://{}/mixed", gw.public_addr()))
        .header("x-api-key", "pc_notakey")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let doc = assert_problem(both, 401).await;
    assert_eq!(
        doc["detail"], "The API key is malformed.",
        "a bad key is not retried as a token"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rfc_8725_attack_is_refused() {
    let upstream = TestUpstream::start().await;
    let jwks = JwksServer::start(&["rsa-b"]).await;
    let gw = gateway(&upstream, &jwks, "").await;
    let good = claims(PEM_ISS, "api", "alice");
    let valid = sign(Algorithm::RS256, "rsa-a", None, &good);
    let (head, rest) = valid.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let public_pem = fixture_bytes("rsa-a.pub.pem");
    let mut tampered = good.clone();
    tampered["sub"] = json!("admin");
    let mut foreign_jwk = jwk("rsa-b");
    foreign_jwk.as_object_mut().unwrap().remove("kid");

    // The good claims with one edit, signed by the right key.
    let edited = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = good.clone();
        edit(&mut c);
        sign(Algorithm::RS256, "rsa-a", None, &c)
    };
    let without = |claim: &str| {
        edited(&|c| {
            c.as_object_mut().unwrap().remove(claim);
        })
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            craft(&json!({"alg": "none", "typ": "JWT"}), &good, b""),
            "The token is not a well-formed signed JWT.",
        ),
        (
            "alg none with a signature",
            craft(&json!({"alg": "none"}), &good, b"x"),
            "The token is not a well-formed signed JWT.",
        ),
        (
            "alg NONE",
            craft(&json!({"alg": "NONE"}), &good, b"x"),
            "The token is not a well-formed signed JWT.",
        ),
        (
            "HS256 signed with the RSA public key (key confusion)",
            hmac_sign(&json!({"alg": "HS256", "typ": "JWT"}), &good, &public_pem),
            "The token's algorithm is not allowed.",
        ),
        (
            "an algorithm the issuer does not allow",
            sign(Algorithm::PS256, "rsa-a", None, &good),
            "The token's algorithm is not allowed.",
        ),
        (
            "signed by another key",
            sign(Algorithm::RS256, "rsa-b", None, &good),
            "The token's signature is not valid.",
        ),
        (
            "a jwk header carrying the attacker's key",
            sign_with_header(
                |h| h.jwk = Some(serde_json::from_value(foreign_jwk.clone()).unwrap()),
                &good,
            ),
            "The token's signature is not valid.",
        ),
        (
            "a jku header pointing at the attacker's JWKS",
            sign_with_header(
                |h| {
                    h.jku = Some(jwks.url());
                    h.kid = Some("rsa-b".into());
                },
                &good,
            ),
            "The token's signature is not valid.",
        ),
        (
            "an x5u header",
            sign_with_header(
                |h| h.x5u = Some("https://attacker.example/cert.pem".into()),
                &good,
            ),
            "The token's signature is not valid.",
        ),
        (
            "an x5c header",
            sign_with_header(
                |h| h.x5c = Some(vec!["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA".into()]),
                &good,
            ),
            "The token's signature is not valid.",
        ),
        (
            "tampered payload",
            format!("{head}.{}.{signature}", b64(tampered.to_string().as_bytes())),
            "The token's signature is not valid.",
        ),
        (
            "stripped signature",
            format!("{head}.{}.", b64(good.to_string().as_bytes())),
            "The token is not a well-formed signed JWT.",
        ),
        (
            "two parts only",
            format!("{head}.{}", b64(good.to_string().as_bytes())),
            "The token is not a well-formed signed JWT.",
        ),
        (
            "expired",
            edited(&|c| c["exp"] = json!(now() - 30)),
            "The token has expired.",
        ),
        (
            "not yet valid",
            edited(&|c| c["nbf"] = json!(now() + 120)),
            "The token is not valid yet.",
        ),
        (
            "issued in the future",
            edited(&|c| c["iat"] = json!(now() + 120)),
            "The token was issued in the future.",
        ),
        ("no exp", without("exp"), "The token lacks a required claim."),
        (
            "wrong iss",
            sign(
                Algorithm::RS256,
                "rsa-a",
                None,
                &claims("https://evil.test/", "api", "alice"),
            ),
            "The token's issuer is not accepted here.",
        ),
        (
            "no iss",
            without("iss"),
            "The token's issuer is not accepted here.",
        ),
        (
            "wrong aud",
            sign(
                Algorithm::RS256,
                "rsa-a",
                None,
                &claims(PEM_ISS, "other-service", "alice"),
            ),
            "The token is not meant for this service.",
        ),
        ("no aud", without("aud"), "The token lacks a required claim."),
        ("no sub", without("sub"), "The token lacks a required claim."),
        (
            "a user claim with a header break",
            sign(
                Algorithm::RS256,
                "rsa-a",
                None,
                &claims(PEM_ISS, "api", "a\r\nx-portcullis-roles: admin"),
            ),
            "The token's claims cannot be used.",
        ),
        (
            "oversize",
            edited(&|c| c["padding"] = json!("x".repeat(3000))),
            "The token is too large.",
        ),
        (
            "an unknown kid",
            sign(
                Algorithm::RS256,
                "rsa-b",
                Some("no-such-key"),
                &claims(&jwks.issuer(), "api", "a"),
            ),
            "The token's signing key is not known.",
        ),
        (
            "an injected kid",
            sign(
                Algorithm::RS256,
                "rsa-b",
                Some("../../../../dev/null' OR '1'='1"),
                &claims(&jwks.issuer(), "api", "a"),
            ),
            "The token's signing key is not known.",
        ),
        (
            "a kid of one issuer on another issuer's token",
            sign(
                Algorithm::RS256,
                "rsa-a",
                Some("rsa-b"),
                &claims(&jwks.issuer(), "api", "a"),
            ),
            "The token's signature is not valid.",
        ),
        (
            "not a JWT at all",
            "hello".into(),
            "The token is not a well-formed signed JWT.",
        ),
        (
            "garbage parts",
            "e30.e30.!!!".into(),
            "The token is not a well-formed signed JWT.",
        ),
    ];
    for (case, token, detail) in &cases {
        refused(get(&gw, "/jwt", token).await, detail, case).await;
    }
    assert_eq!(upstream.count(), 0, "no refused token reached the upstream");
    // The token never reaches the audit log; the reason does.
    let events = audit_events(&gw, Some("auth.failure")).await;
    assert_eq!(events.len(), cases.len());
    assert!(events.iter().all(|e| e.event.details["method"] == "jwt"));
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains(signature), "a token reached the audit log");
    let metrics = metrics_text(gw.admin_addr()).await;
    assert!(
        metric(
            &metrics,
            "portcullis_auth_total{method=\"jwt\",outcome=\"bad_signature\"}"
        ) >= 6.0
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issuer_with_a_typ_takes_only_tokens_of_that_type() {
    let upstream = TestUpstream::start().await;
    let jwks = JwksServer::start(&["rsa-b"]).await;
    let gw = gateway(&upstream, &jwks, "").await;
    let typed = |typ: Option<&str>| {
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.typ = typ.map(str::to_string);
        jsonwebtoken::encode(
            &header,
            &claims("https://typed.test/", "api", "alice"),
            &jsonwebtoken::EncodingKey::from_secret(HMAC_SECRET).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(get(&gw, "/jwt", &typed(Some("at+jwt"))).await.status(), 200);
    assert_eq!(
        get(&gw, "/jwt", &typed(Some("application/at+JWT")))
            .await
            .status(),
        200
    );
    for wrong in [Some("JWT"), None] {
        refused(
            get(&gw, "/jwt", &typed(wrong)).await,
            "The token's type is not accepted.",
            "typ",
        )
        .await;
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_token_is_still_refused_once_it_expires() {
    let upstream = TestUpstream::start().await;
    let jwks = JwksServer::start(&["rsa-b"]).await;
    let gw = gateway(&upstream, &jwks, "").await;
    let mut c = claims(PEM_ISS, "api", "alice");
    c["exp"] = json!(now() + 1);
    let token = sign(Algorithm::RS256, "rsa-a", None, &c);
    assert_eq!(get(&gw, "/jwt", &token).await.status(), 200);
    assert_eq!(get(&gw, "/jwt", &token).await.status(), 200, "the cached verdict");
    // exp + leeway (1s) has passed.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    refused(
        get(&gw, "/jwt", &token).await,
        "The token has expired.",
        "cached, expired",
    )
    .await;
    gw.shutdown().await;
}

fn remote_token(jwks: &JwksServer, key: &str) -> String {
    let alg = if key.starts_with("ec") {
        Algorithm::ES256
    } else {
        Algorithm::RS256
    };
    sign(alg, key, Some(key), &claims(&jwks.issuer(), "api", "alice"))
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_rotation_is_picked_up_on_an_unknown_kid_and_retired_keys_stop_working() {
    let upstream = TestUpstream::start().await;
    let jwks = JwksServer::start(&["rsa-a"]).await;
    let gw = gateway(&upstream, &jwks, "").await;
    let old = remote_token(&jwks, "rsa-a");
    assert_eq!(get(&gw, "/jwt", &old).await.status(), 200);

    // The issuer rotates to a new key and retires the old one; a token
    // with the new kid makes the gateway fetch again, at once.
    jwks.publish(&["ec-a"]);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the refresh floor
    let new = remote_token(&jwks, "ec-a");
    assert_eq!(
        get(&gw, "/jwt", &new).await.status(),
        200,
        "the new key is fetched on demand"
    );
    // The old token's cached verdict was made with keys that are gone.
    refused(
        get(&gw, "/jwt", &old).await,
        "The token's signing key is not known.",
        "a retired key",
    )
    .await;
    let doc = json(
        client()
            .get(format!("http://{}/readyz", gw.admin_addr()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(doc["checks"]["jwks:remote"]["status"], "ok", "{doc}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_random_kids_fetches_the_jwks_at_most_once_per_floor() {
    let upstream = TestUpstream::start().await;
    let jwks = JwksServer::start(&["rsa-a"]).await;
    let gw = gateway(&upstream, &jwks, "").await;
    let good = remote_token(&jwks, "rsa-a");
    assert_eq!(get(&gw, "/jwt", &good).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the floor of the first fetch
    let before = jwks.fetches();
    let started = std::time::Instant::now();
    let flood = (0..60).map(|i| {
        let token = sign(
            Algorithm::RS256,
            "rsa-a",
            Some(&format!("random-{i}")),
            &claims(&jwks.issuer(), "api", "a"),
        );
        let addr = gw.public_addr();
        async move {
            client()
                .get(format!("http://{addr}/jwt"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures_util::future::join_all(flood).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let elapsed = started.elapsed().as_secs_f64();
    let fetched = jwks.fetches() - before;
    // One fetch per started second of the floor at most.
    assert!(
        fetched as f64 <= elapsed.ceil() + 1.0,
        "{fetched} fetches in {elapsed:.1}s with a 1s floor"
    );
    assert!(fetched >= 1, "an unknown kid does ask for a refresh");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn during_a_jwks_outage_the_last_good_keys_serve_for_max_stale_then_tokens_get_503() {
    let upstream = TestUpstream::start().await;
    let jwks = JwksServer::start(&["rsa-a"]).await;
    let gw = gateway(&upstream, &jwks, "").await;
    let token = remote_token(&jwks, "rsa-a");
    assert_eq!(get(&gw, "/jwt", &token).await.status(), 200);

    jwks.break_down();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // An unknown kid makes a refresh run, which fails: the known key keeps
    // working.
    let unknown = sign(
        Algorithm::RS256,
        "rsa-a",
        Some("k2"),
        &claims(&jwks.issuer(), "api", "a"),
    );
    assert_eq!(get(&gw, "/jwt", &unknown).await.status(), 401);
    let fresh = sign(
        Algorithm::RS256,
        "rsa-a",
        Some("rsa-a"),
        &claims(&jwks.issuer(), "api", "bob"),
    );
    assert_eq!(
        get(&gw, "/jwt", &fresh).await.status(),
        200,
        "stale keys still verify"
    );
    let admin = gw.admin_addr();
    let ready = client()
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "a stale JWKS is a warning, not unreadiness");
    let doc = json(ready).await;
    assert_eq!(doc["checks"]["jwks:remote"]["status"], "stale", "{doc}");
    let metrics = metrics_text(admin).await;
    assert_eq!(metric(&metrics, "portcullis_jwks_stale{issuer=\"remote\"}"), 1.0);
    assert!(
        metric(
            &metrics,
            "portcullis_jwks_refreshes_total{issuer=\"remote\",result=\"error\"}"
        ) >= 1.0
    );

    // Past jwks_max_stale (3s) the keys are dropped: 503, not 401 (the
    // client is not at fault) and not a pass.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let later = sign(
        Algorithm::RS256,
        "rsa-a",
        Some("rsa-a"),
        &claims(&jwks.issuer(), "api", "carol"),
    );
    let doc = assert_problem(get(&gw, "/jwt", &later).await, 503).await;
    assert!(doc["detail"].as_str().unwrap().contains("keys"), "{doc}");
    let doc = json(
        client()
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(doc["checks"]["jwks:remote"]["status"], "unavailable", "{doc}");

    // The issuer comes back: the next token fetches and passes.
    jwks.publish(&["rsa-a"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let back = sign(
        Algorithm::RS256,
        "rsa-a",
        Some("rsa-a"),
        &claims(&jwks.issuer(), "api", "dave"),
    );
    assert_eq!(get(&gw, "/jwt", &back).await.status(), 200);
    gw.shutdown().await;
}

#[test]
fn configs_that_would_allow_key_confusion_or_weak_checks_are_refused() {
    let check = |issuer: &str| -> String {
        let text = format!(
            "environment = \"development\"\n[[upstreams]]\nname = \"app\"\ntargets = [\"http://127.0.0.1:9\"]\n\
             [[auth.jwt]]\nname = \"x\"\n{issuer}\n[[routes]]\npath = \"/\"\nupstream = \"app\"\nauth = [\"jwt\"]\n"
        );
        compile_offline(&text).err().unwrap_or_default()
    };
    let pem = fixture("rsa-a.pub.pem");
    let ok = check(&format!(
        "issuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\npublic_keys = [\"{pem}\"]"
    ));
    assert_eq!(ok, "");
    let mixed = check(&format!(
        "issuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\", \"HS256\"]\npublic_keys = [\"{pem}\"]"
    ));
    assert!(mixed.contains("HS256/384/512 need `secret`"), "{mixed}");
    let none = check(&format!(
        "issuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"none\"]\npublic_keys = [\"{pem}\"]"
    ));
    assert!(none.contains("`none` is not an algorithm"), "{none}");
    let no_aud = check(&format!(
        "issuer = \"i\"\nalgorithms = [\"RS256\"]\npublic_keys = [\"{pem}\"]"
    ));
    assert!(no_aud.contains("list the audiences"), "{no_aud}");
    let plain_http = check(
        "issuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\njwks_url = \"http://idp.example.com/jwks\"",
    );
    assert_eq!(plain_http, "", "development allows http");
    let short = check("issuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\nsecret = \"short\"");
    assert!(short.contains("at least 32 bytes"), "{short}");
}
