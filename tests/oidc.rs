//! Login with an identity provider through the real server, against a real
//! OpenID provider (oidc-provider from npm): discovery, PKCE, state, the ID
//! token's signature and nonce, the session cookie, allow-lists, tampered
//! logins; two instances sharing one store (and Redis); and GitHub-style
//! OAuth2 against a small GitHub stand-in.

mod common;

use std::time::Duration;

use common::browser::*;
use common::oidc::*;
use common::*;

const SESSION_KEY: &str = "k7PzQ2vL9xW4mN8bR3tY6uI1oA5sD0fGhJ2kL4zX";

/// A gateway on a known port (its public URL is in the config) with a
/// session key, and `body` (providers and routes) given the path of a file
/// holding [`CLIENT_SECRET`].
fn provider_gateway(
    port: u16,
    upstream: &TestUpstream,
    store_url: Option<&str>,
    body: impl FnOnce(&str) -> String,
) -> String {
    let secret = scratch_dir().join("client.secret");
    std::fs::write(&secret, CLIENT_SECRET).unwrap();
    let extra = format!(
        "[sessions]\npublic_url = \"http://127.0.0.1:{port}\"\n{}",
        body(&secret.display().to_string())
    );
    with_session_key(
        &config_with_store("production", &upstream.url(), store_url, &extra),
        SESSION_KEY,
    )
    .replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
        1,
    )
}

/// One OIDC provider called `corp` and session routes.
fn oidc_config(
    port: u16,
    upstream: &TestUpstream,
    op_issuer: &str,
    store_url: Option<&str>,
    extra: &str,
) -> String {
    provider_gateway(port, upstream, store_url, |secret| {
        format!(
            r#"
[[auth.oidc]]
name = "corp"
issuer = "{op_issuer}"
client_id = "gw"
client_secret = {{ file = "{secret}" }}
allowed_domains = ["example.test"]
{extra}

[[routes]]
id = "portal"
path = "/portal"
upstream = "app"
auth = ["session"]

[[routes]]
id = "calls-the-provider"
path = "/mail"
upstream = "app"
auth = ["session"]
forward_provider_token = true

[[routes]]
id = "public"
path = "/"
upstream = "app"
auth = ["none"]
"#
        )
    })
}

fn callback_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/.auth/callback/corp")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_login_against_a_real_openid_provider_with_rs256_and_es256() {
    for alg in ["RS256", "ES256"] {
        let port = free_port();
        let Some(op) = OpenIdProvider::start(
            &[callback_url(port)],
            &[("alice", "alice@example.test"), ("eve", "eve@elsewhere.test")],
            alg,
        ) else {
            return;
        };
        let upstream = TestUpstream::start().await;
        let gw = start_gateway(&oidc_config(port, &upstream, &op.issuer, None, "")).await;
        let browser = Browser::new(gw.public_addr());

        // The login page offers the provider.
        let page = browser
            .get("/.auth/login?rd=%2Fportal")
            .await
            .text()
            .await
            .unwrap();
        assert!(page.contains("href=\"/.auth/login/corp?rd=%2Fportal\""), "{page}");

        let done = provider_login(&browser, "corp", &op, "/portal/x", "alice").await;
        assert_eq!(
            done.status(),
            303,
            "{alg}: {}",
            done.text().await.unwrap_or_default()
        );
        assert_eq!(done.headers()["location"], "/portal/x");
        let cookie = browser.last_set_cookie("__Host-portcullis").unwrap();
        for flag in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(cookie.line.contains(flag), "{flag}: {}", cookie.line);
        }
        assert!(
            cookie.line.len() < 200,
            "provider tokens are not in the cookie: {}",
            cookie.line
        );
        assert!(
            browser.cookie("__Host-portcullis-oidc").is_none(),
            "the login cookie is cleared"
        );

        assert_eq!(browser.get("/portal/x").await.status(), 200);
        let seen = upstream.last();
        assert_eq!(seen.headers["x-portcullis-user"], "alice@example.test");
        assert_eq!(seen.headers["x-portcullis-issuer"], "corp");
        assert!(seen.headers.get("authorization").is_none());
        let info = json(browser.get_json("/.auth/userinfo").await).await;
        assert_eq!(info["provider"], "corp");
        assert_eq!(info["email"], "alice@example.test");

        // Tokens are kept server side, encrypted.
        let sessions = store_of(&gw)
            .list_sessions(Some("alice@example.test"))
            .await
            .unwrap();
        let stored = sessions[0].tokens.clone().expect("tokens are kept");
        assert!(
            !stored.contains("access_token") && !stored.contains("eyJ"),
            "{stored}"
        );

        // An account outside the allow-list gets a refusal page, no session.
        let other = Browser::new(gw.public_addr());
        let refused = provider_login(&other, "corp", &op, "/portal", "eve").await;
        assert_eq!(refused.status(), 401);
        assert!(refused.text().await.unwrap().contains("may not sign in here"));
        assert!(other.cookie("__Host-portcullis").is_none());
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callback_with_another_logins_state_or_nonce_is_refused() {
    let port = free_port();
    let Some(op) = OpenIdProvider::start(&[callback_url(port)], &[("alice", "alice@example.test")], "RS256")
    else {
        return;
    };
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&oidc_config(port, &upstream, &op.issuer, None, "")).await;

    // A callback that no login of this browser started (login CSRF).
    let victim = Browser::new(gw.public_addr());
    let attacker = Browser::new(gw.public_addr());
    let started = attacker.get("/.auth/login/corp").await;
    let state = started.headers()["location"]
        .to_str()
        .unwrap()
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let forged = victim
        .get(&format!("/.auth/callback/corp?code=stolen&state={state}"))
        .await;
    assert_eq!(forged.status(), 401);
    assert!(forged.text().await.unwrap().contains("started elsewhere"));

    // The right state with a pending login whose nonce is not the ID
    // token's: the ID token belongs to another login.
    let browser = Browser::new(gw.public_addr());
    let start = browser.get("/.auth/login/corp?rd=%2F").await;
    let authorize = start.headers()["location"].to_str().unwrap().to_string();
    let cookie = browser.cookie("__Host-portcullis-oidc").unwrap();
    let keys = portcullis::sessions::SessionKeys::new(SESSION_KEY.as_bytes(), &[]);
    let mut pending: serde_json::Value = serde_json::from_slice(&keys.decrypt(&cookie).unwrap()).unwrap();
    pending["nonce"] = "another-login".into();
    browser.set_cookie(
        "__Host-portcullis-oidc",
        &keys.encrypt(pending.to_string().as_bytes()),
    );
    let to_interaction = browser.get(&authorize).await;
    let interaction = format!(
        "{}{}",
        op.issuer,
        to_interaction.headers()["location"].to_str().unwrap()
    );
    let done = browser
        .post_form(&format!("{interaction}/login"), &[("login", "alice")])
        .await;
    let resume = browser.get(done.headers()["location"].to_str().unwrap()).await;
    let callback = resume.headers()["location"].to_str().unwrap().to_string();
    let refused = browser.get(&callback).await;
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("nonce"));
    let reasons: Vec<String> = audit_events(&gw, Some("login.failure"))
        .await
        .iter()
        .map(|e| e.event.details["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons.contains(&"state".to_string()) && reasons.contains(&"invalid_answer".to_string()),
        "{reasons:?}"
    );
    gw.shutdown().await;
}

async fn two_instances(store_url: &str, redis: Option<&str>) {
    let (port_a, port_b) = (free_port(), free_port());
    let Some(op) = OpenIdProvider::start(
        &[callback_url(port_a), callback_url(port_b)],
        &[("alice", "alice@example.test")],
        "RS256",
    ) else {
        return;
    };
    let upstream = TestUpstream::start().await;
    let redis_table = redis
        .map(|url| {
            format!(
                "\n[redis]\nurl = \"{url}\"\nprefix = \"oidc-{}\"\n",
                portcullis::keys::random_alnum(8)
            )
        })
        .unwrap_or_default();
    let with_redis = |text: String| text.replacen("[sessions]", &format!("{redis_table}\n[sessions]"), 1);
    let a = start_gateway(&with_redis(oidc_config(
        port_a,
        &upstream,
        &op.issuer,
        Some(store_url),
        "",
    )))
    .await;
    let b = start_gateway(&with_redis(oidc_config(
        port_b,
        &upstream,
        &op.issuer,
        Some(store_url),
        "",
    )))
    .await;
    let on_a = Browser::new(a.public_addr());
    assert_eq!(
        provider_login(&on_a, "corp", &op, "/portal", "alice")
            .await
            .status(),
        303
    );
    let on_b = on_a.at(b.public_addr());
    assert_eq!(
        on_b.get("/portal").await.status(),
        200,
        "logged in through A, used through B"
    );
    let page = on_b.get("/.auth/logout").await.text().await.unwrap();
    let token = hidden_field(&page, "csrf").unwrap();
    assert_eq!(
        on_b.post_form("/.auth/logout", &[("csrf", &token)])
            .await
            .status(),
        303
    );
    let on_a = on_b.at(a.public_addr());
    on_a.set_cookie(
        "__Host-portcullis",
        &on_b
            .set_cookies
            .lock()
            .unwrap()
            .iter()
            .find(|c| c.name == "__Host-portcullis" && !c.value.is_empty())
            .unwrap()
            .value,
    );
    wait_until_async(
        "A refuses the session B logged out",
        Duration::from_millis(1500),
        async || on_a.get_json("/portal").await.status() == 401,
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn log_in_through_one_instance_use_and_log_out_through_another_on_postgres_and_redis() {
    let Some(pg) = postgres_url("oidc_two_instances").await else {
        return;
    };
    let Some(redis) = redis_url("oidc_two_instances") else {
        return;
    };
    two_instances(&pg, Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn log_in_through_one_instance_use_and_log_out_through_another_on_sqlite() {
    let dir = scratch_dir();
    two_instances(&format!("sqlite://{}/shared.db", dir.display()), None).await;
}

/// A stand-in for github.com and api.github.com: the OAuth2 endpoints
/// (checking the client secret and the PKCE verifier) and the user, e-mail
/// and organisation APIs for one user in `orgs`.
async fn github_stand_in(orgs: &'static [&'static str]) -> std::net::SocketAddr {
    use base64::Engine;
    use sha2::Digest;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let challenges: Arc<Mutex<HashMap<String, String>>> = Default::default();
    serve_http(move |req: http::Request<hyper::body::Incoming>| {
        let challenges = challenges.clone();
        async move {
            use http_body_util::BodyExt;
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
            let params: HashMap<String, String> = serde_urlencoded::from_str(&query).unwrap_or_default();
            let json = |v: serde_json::Value| {
                http::Response::builder()
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(v.to_string())))
                    .unwrap()
            };
            let response = match path.as_str() {
                "/login/oauth/authorize" => {
                    let code = portcullis::keys::random_alnum(20);
                    challenges
                        .lock()
                        .unwrap()
                        .insert(code.clone(), params["code_challenge"].clone());
                    http::Response::builder()
                        .status(302)
                        .header(
                            "location",
                            format!("{}?code={code}&state={}", params["redirect_uri"], params["state"]),
                        )
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap()
                }
                "/login/oauth/access_token" => {
                    let want = challenges.lock().unwrap().remove(&form["code"]);
                    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                    let got = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(sha2::Sha256::digest(verifier.as_bytes()));
                    if form["client_secret"] != CLIENT_SECRET || want.as_deref() != Some(got.as_str()) {
                        json(serde_json::json!({"error": "bad_verification_code"}))
                    } else {
                        json(serde_json::json!({"access_token": "gho_test", "token_type": "bearer", "scope": "read:user"}))
                    }
                }
                _ if auth != "Bearer gho_test" => http::Response::builder()
                    .status(401)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
                "/user" => json(serde_json::json!({"login": "octocat", "name": "The Octocat"})),
                "/user/emails" => json(serde_json::json!([
                    {"email": "old@example.test", "primary": false, "verified": true},
                    {"email": "octo@example.test", "primary": true, "verified": true}
                ])),
                "/user/orgs" => json(serde_json::Value::from(
                    orgs.iter().map(|o| serde_json::json!({"login": o})).collect::<Vec<_>>(),
                )),
                _ => http::Response::builder()
                    .status(404)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    })
    .await
}

fn github_config(port: u16, upstream: &TestUpstream, github: std::net::SocketAddr) -> String {
    provider_gateway(port, upstream, None, |secret| {
        format!(
            r#"
[[auth.oidc]]
name = "github"
client_id = "gh-client"
client_secret = {{ file = "{secret}" }}
allowed_orgs = ["Portcullis-Dev"]
github_url = "http://{github}"
github_api_url = "http://{github}"

[[routes]]
id = "team"
path = "/team"
upstream = "app"
auth = ["session"]
roles = ["portcullis-dev"]

[[routes]]
id = "public"
path = "/"
upstream = "app"
auth = ["none"]
"#
        )
    })
}

async fn github_login(browser: &Browser) -> reqwest::Response {
    let start = browser.get("/.auth/login/github?rd=%2Fteam").await;
    assert_eq!(start.status(), 302);
    let authorize = start.headers()["location"].to_str().unwrap().to_string();
    assert!(
        authorize.contains("code_challenge_method=S256") && authorize.contains("read%3Aorg"),
        "{authorize}"
    );
    let back = browser.get(&authorize).await;
    assert_eq!(back.status(), 302);
    browser.get(back.headers()["location"].to_str().unwrap()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn github_login_checks_the_organisation_and_uses_the_verified_primary_address() {
    let upstream = TestUpstream::start().await;
    let member = github_stand_in(&["other", "portcullis-dev"]).await;
    let port = free_port();
    let gw = start_gateway(&github_config(port, &upstream, member)).await;
    let browser = Browser::new(gw.public_addr());
    let done = github_login(&browser).await;
    assert_eq!(done.status(), 303, "{}", done.text().await.unwrap_or_default());
    assert_eq!(browser.get("/team").await.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-portcullis-user"], "octocat");
    assert_eq!(seen.headers["x-portcullis-issuer"], "github");
    assert_eq!(seen.headers["x-portcullis-roles"], "portcullis-dev");
    assert_eq!(seen.headers["x-portcullis-claim-email"], "octo@example.test");
    gw.shutdown().await;

    // Not in the organisation: no session.
    let outsider = github_stand_in(&["other"]).await;
    let port = free_port();
    let gw = start_gateway(&github_config(port, &upstream, outsider)).await;
    let browser = Browser::new(gw.public_addr());
    let refused = github_login(&browser).await;
    assert_eq!(refused.status(), 401);
    assert!(browser.cookie("__Host-portcullis").is_none());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_tokens_go_upstream_only_where_asked_and_are_refreshed_before_they_expire() {
    let port = free_port();
    let Some(op) = OpenIdProvider::start_with(
        &[callback_url(port)],
        &[("alice", "alice@example.test")],
        "RS256",
        &[("ACCESS_TOKEN_TTL", "12")],
    ) else {
        return;
    };
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&oidc_config(port, &upstream, &op.issuer, None, "")).await;
    let browser = Browser::new(gw.public_addr());
    assert_eq!(
        provider_login(&browser, "corp", &op, "/mail", "alice")
            .await
            .status(),
        303
    );
    let userinfo = |token: String| {
        let url = format!("{}/me", op.issuer);
        async move {
            client()
                .get(url)
                .header("authorization", token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };

    assert_eq!(browser.get("/portal").await.status(), 200);
    assert!(
        upstream.last().headers.get("authorization").is_none(),
        "not asked for: not sent"
    );
    assert_eq!(browser.get("/mail").await.status(), 200);
    let first = upstream.last().headers["authorization"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(first.starts_with("Bearer "), "{first}");
    assert_eq!(userinfo(first.clone()).await, 200, "a working provider token");

    // Within 10 s of its expiry the token is renewed with the refresh token.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(browser.get("/mail").await.status(), 200);
    let second = upstream.last().headers["authorization"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(second, first, "a new access token");
    assert_eq!(userinfo(second.clone()).await, 200);
    assert_eq!(browser.get("/mail").await.status(), 200);
    assert_eq!(
        upstream.last().headers["authorization"],
        second.as_str(),
        "kept until it nears its end"
    );
    assert_eq!(audit_events(&gw, Some("session.tokens_refreshed")).await.len(), 1);
    gw.shutdown().await;
}
