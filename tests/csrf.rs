//! CSRF through the real server: which unsafe requests with a credential
//! cookie pass (same origin by Sec-Fetch-Site or Origin, a trusted origin,
//! a valid double-submit token in a header or form field), which are
//! refused (403 problem documents and `csrf.rejected` events, never
//! reaching the upstream), how pages get the token, and report mode.

mod common;

use common::*;
use std::time::Duration;

const ROUTES: &str = r#"
[secrets]

[csrf]
cookies = ["flask_session"]
trusted_origins = ["https://partner.example.com"]

[[routes]]
id = "app"
path = "/app"
upstream = "app"
auth = ["none"]

[[routes]]
id = "open"
path = "/open"
upstream = "app"
auth = ["none"]
csrf = { enabled = false }

[[routes]]
id = "watch"
path = "/watch"
upstream = "app"
auth = ["none"]
mode = "report"
"#;

const SESSION: &str = "flask_session=sess-value-xyz";

async fn gateway() -> (TestUpstream, portcullis::Gateway) {
    let upstream = TestUpstream::start().await;
    let text = with_session_key(
        &config("development", &upstream.url(), ROUTES),
        "0123456789abcdef0123456789abcdef",
    );
    let gw = start_gateway(&text).await;
    (upstream, gw)
}

/// A token and its cookie, as a page of the site gets them.
async fn token_for(gw: &portcullis::Gateway, cookie: &str) -> (String, String) {
    let r = client()
        .get(format!("http://{}/app/page", gw.public_addr()))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.headers()["x-csrf-token"].to_str().unwrap().to_string();
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.starts_with("__Host-csrf=") && set.contains("HttpOnly") && set.contains("Secure"),
        "{set}"
    );
    assert!(set.contains("SameSite=Strict") && set.contains("Path=/"), "{set}");
    let pair = set.split(';').next().unwrap().to_string();
    assert_eq!(pair, format!("__Host-csrf={token}"));
    (token, pair)
}

#[tokio::test(flavor = "multi_thread")]
async fn unsafe_requests_with_a_credential_cookie_must_be_same_origin() {
    let (upstream, gw) = gateway().await;
    let addr = gw.public_addr();
    let url = format!("http://{addr}/app/items");
    let post = |headers: &[(&str, String)]| {
        let mut req = client().post(&url).body("x=1");
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        req.send()
    };
    let cookie = || ("cookie", SESSION.to_string());

    // Passing: no credential cookie at all; same-origin by either header;
    // a trusted origin; a credential a forged form cannot send.
    let passing: Vec<Vec<(&str, String)>> = vec![
        vec![("sec-fetch-site", "cross-site".into())],
        vec![cookie(), ("sec-fetch-site", "same-origin".into())],
        vec![cookie(), ("sec-fetch-site", "none".into())],
        vec![cookie(), ("origin", format!("http://{addr}"))],
        vec![
            cookie(),
            ("sec-fetch-site", "cross-site".into()),
            ("origin", "https://partner.example.com".into()),
        ],
        vec![cookie(), ("authorization", "Bearer whatever".into())],
        vec![cookie(), ("x-api-key", "pk_whatever".into())],
    ];
    for headers in &passing {
        let r = post(headers).await.unwrap();
        assert_eq!(r.status(), 200, "{headers:?}");
    }
    assert_eq!(upstream.count(), passing.len());

    let refused: Vec<Vec<(&str, String)>> = vec![
        vec![cookie(), ("sec-fetch-site", "cross-site".into())],
        vec![cookie(), ("sec-fetch-site", "same-site".into())],
        vec![
            cookie(),
            ("sec-fetch-site", "cross-site".into()),
            ("origin", "https://evil.example".into()),
        ],
        vec![cookie(), ("origin", "https://evil.example".into())],
        vec![cookie(), ("origin", "null".into())],
        // Neither header: fail closed (Go would let this through).
        vec![cookie()],
        // Basic credentials are ambient too: a browser resends them.
        vec![
            cookie(),
            ("sec-fetch-site", "cross-site".into()),
            ("authorization", "Basic YWRhOnB3".into()),
        ],
    ];
    for headers in &refused {
        let doc = assert_problem(post(headers).await.unwrap(), 403).await;
        assert!(doc["detail"].as_str().unwrap().contains("X-CSRF-Token"), "{doc}");
    }
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ] {
        let r = client()
            .request(method.clone(), &url)
            .header("cookie", SESSION)
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method}");
    }
    assert_eq!(
        upstream.count(),
        passing.len(),
        "no refused request reached the upstream"
    );

    let events = audit_events(&gw, Some("csrf.rejected")).await;
    assert_eq!(events.len(), refused.len() + 3);
    assert_eq!(events[0].event.route.as_deref(), Some("app"));
    let all = serde_json::to_string(&events.iter().map(|e| &e.event).collect::<Vec<_>>()).unwrap();
    assert!(!all.contains("sess-value-xyz"), "no cookie value in audit events");

    // A route with CSRF off lets the cross-site request through.
    let r = client()
        .post(format!("http://{addr}/open/x"))
        .header("cookie", SESSION)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_double_submit_token_bound_to_the_session_lets_a_cross_origin_request_through() {
    let (upstream, gw) = gateway().await;
    let addr = gw.public_addr();
    let (token, token_cookie) = token_for(&gw, SESSION).await;
    // The upstream got the token too, for server-rendered forms.
    assert_eq!(upstream.last().headers["x-csrf-token"], token.as_str());

    // A page that already holds a valid token cookie keeps it.
    let r = client()
        .get(format!("http://{addr}/app/page"))
        .header("cookie", format!("{SESSION}; {token_cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-csrf-token"], token.as_str());
    assert!(r.headers().get("set-cookie").is_none());

    let url = format!("http://{addr}/app/items");
    let send = |cookies: String, header: Option<&str>| {
        let mut req = client()
            .post(&url)
            .header("cookie", cookies)
            .header("sec-fetch-site", "same-site");
        if let Some(h) = header {
            req = req.header("x-csrf-token", h);
        }
        req.send()
    };
    let both = format!("{SESSION}; {token_cookie}");
    assert_eq!(send(both.clone(), Some(&token)).await.unwrap().status(), 200);
    // Header without the cookie, a different value, another session's token.
    assert_eq!(send(SESSION.into(), Some(&token)).await.unwrap().status(), 403);
    assert_eq!(send(both.clone(), Some("AAAA.BBBB")).await.unwrap().status(), 403);
    let (other, other_cookie) = token_for(&gw, "flask_session=someone-else").await;
    assert_eq!(
        send(format!("{SESSION}; {other_cookie}"), Some(&other))
            .await
            .unwrap()
            .status(),
        403,
        "a token is bound to the session it was made for"
    );

    // The form field, url-encoded and multipart; the body reaches the
    // upstream unchanged.
    let form = format!("title=hi&csrf_token={}", token.replace('-', "%2D"));
    let r = client()
        .post(&url)
        .header("cookie", &both)
        .header("sec-fetch-site", "cross-site")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.last().body, form.as_bytes());
    let multipart = format!(
        "--b0\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\n{token}\r\n--b0\r\n\
Content-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--b0--\r\n"
    );
    let r = client()
        .post(&url)
        .header("cookie", &both)
        .header("sec-fetch-site", "cross-site")
        .header("content-type", "multipart/form-data; boundary=b0")
        .body(multipart.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.last().body, multipart.as_bytes());
    // The same token in a text/plain body (what a cross-site form can
    // send) is not a form field.
    let r = client()
        .post(&url)
        .header("cookie", &both)
        .header("sec-fetch-site", "cross-site")
        .header("content-type", "text/plain")
        .body(format!("csrf_token={token}"))
        .send()
        .await
        .unwrap();
    assert_problem(r, 403).await;
    // A form without the field, and one too large to search, are refused.
    for body in [
        "title=hi".to_string(),
        format!("a={}&csrf_token={token}", "x".repeat(70_000)),
    ] {
        let r = client()
            .post(&url)
            .header("cookie", &both)
            .header("sec-fetch-site", "cross-site")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_problem(r, 403).await;
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn report_mode_lets_a_forged_request_through_and_counts_it() {
    let (upstream, gw) = gateway().await;
    let r = client()
        .post(format!("http://{}/watch/x", gw.public_addr()))
        .header("cookie", SESSION)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.count(), 1);
    let admin = gw.admin_addr();
    wait_until_async("the would-refuse counter", Duration::from_secs(5), async || {
        metric(
            &metrics_text(admin).await,
            "portcullis_would_refuse_total{protection=\"csrf\",route=\"watch\"}",
        ) == 1.0
    })
    .await;
    let events = audit_events(&gw, Some("would_refuse")).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.details["protection"], "csrf");
    assert_eq!(events[0].event.details["status"], 403);
    assert!(audit_events(&gw, Some("csrf.rejected")).await.is_empty());
    gw.shutdown().await;
}

#[test]
fn csrf_on_a_cookie_route_needs_the_session_key_and_production_warns_about_report_mode() {
    let text = config("production", "http://127.0.0.1:9", ROUTES).replace("[secrets]\n", "");
    let errors = compile_offline(&text).err().expect("no session key");
    assert!(
        errors.contains("CSRF tokens need `secrets.session_key`"),
        "{errors}"
    );

    let text = with_session_key(
        &config("production", "http://127.0.0.1:9", ROUTES),
        "q7Vx9Lm2Pz4Rt8Wk3Ns6Yb1Hc5Jd0FgA",
    );
    let policy = compile_offline(&text).unwrap();
    assert!(
        policy
            .warnings
            .iter()
            .any(|w| w.contains("route `watch`: csrf runs in report mode")),
        "{:?}",
        policy.warnings
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cors_wildcard_or_a_jwt_cookie_never_weakens_csrf() {
    let upstream = TestUpstream::start().await;
    let routes = r#"
[cors]
origins = ["*"]

[csrf]
cookies = ["flask_session"]

[[routes]]
id = "app"
path = "/app"
upstream = "app"
auth = ["none"]
"#;
    let gw = start_gateway(
        &config("development", &upstream.url(), routes)
            .replace("[cors]", "[secrets]\n[cors]")
            .pipe(|t| with_session_key(&t, "q7Vx9Lm2Pz4Rt8Wk3Ns6Yb1Hc5Jd0FgA")),
    )
    .await;
    let r = client()
        .post(format!("http://{}/app/x", gw.public_addr()))
        .header("cookie", SESSION)
        .header("sec-fetch-site", "cross-site")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_problem(r, 403).await;
    assert_eq!(upstream.count(), 0, "\"*\" lets anyone read, never write");
    gw.shutdown().await;
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}

impl Pipe for String {}
