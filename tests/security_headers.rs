//! Security headers through the real server: the defaults on every answer
//! (the gateway's own refusals too), the upstream's values winning unless
//! a route forces the gateway's, `Server`/`X-Powered-By` removed, HSTS
//! only when a trusted proxy says the request came over HTTPS, and a route
//! turning them off.

mod common;

use common::*;

const ROUTES: &str = r#"
[security_headers]
permissions_policy = "camera=()"

[[routes]]
id = "app"
path = "/app"
upstream = "app"
auth = ["none"]
security_headers = { content_security_policy = "default-src 'self'", force = true }

[[routes]]
id = "raw"
path = "/raw"
upstream = "app"
auth = ["none"]
security_headers = { enabled = false }

[[routes]]
id = "public"
path = "/"
upstream = "app"
auth = ["none"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn security_headers_by_default_per_route_and_only_https_gets_hsts() {
    let upstream = TestUpstream::start().await;
    // Requests come from 127.0.0.1: trusted, so X-Forwarded-Proto counts.
    let text = config("production", &upstream.url(), ROUTES).replacen(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        1,
    );
    let gw = start_gateway(&text).await;
    let get = |path: &str| client().get(format!("http://{}{path}", gw.public_addr()));

    let r = get("/x/powered").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(
        h["x-frame-options"], "SAMEORIGIN",
        "the upstream's own value wins"
    );
    assert_eq!(h["content-security-policy"], "frame-ancestors 'none'");
    assert_eq!(h["referrer-policy"], "strict-origin-when-cross-origin");
    assert_eq!(
        h["permissions-policy"], "camera=()",
        "[security_headers] sets the default"
    );
    assert!(
        h.get("server").is_none() && h.get("x-powered-by").is_none(),
        "{h:?}"
    );
    assert!(
        h.get("strict-transport-security").is_none(),
        "plain HTTP gets no HSTS"
    );

    // Behind a trusted proxy that says the original was HTTPS: HSTS.
    let r = get("/")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );

    // A route that forces its own CSP (and the defaults) over the upstream's.
    let r = get("/app/powered").send().await.unwrap();
    assert_eq!(r.headers()["content-security-policy"], "default-src 'self'");
    assert_eq!(r.headers()["x-frame-options"], "DENY", "forced");

    // A route with them off passes the upstream's headers untouched.
    let r = get("/raw/powered").send().await.unwrap();
    assert!(r.headers().get("x-content-type-options").is_none());
    assert_eq!(r.headers()["server"], "uvicorn");

    // The gateway's own answers carry them too.
    let r = raw(
        gw.public_addr(),
        b"GET /%2f HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        r.to_ascii_lowercase().contains("x-content-type-options: nosniff"),
        "{r}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_is_redirected_with_308_unless_a_trusted_proxy_says_https() {
    let upstream = TestUpstream::start().await;
    let routes = r#"
[security_headers]
https_redirect = true

[[routes]]
id = "health"
path = "/health"
upstream = "app"
auth = ["none"]
security_headers = { https_redirect = false }

[[routes]]
id = "watch"
path = "/watch"
upstream = "app"
auth = ["none"]
mode = "report"

[[routes]]
id = "app"
path = "/"
upstream = "app"
auth = ["none"]
"#;
    let text = config("production", &upstream.url(), routes).replacen(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        1,
    );
    let gw = start_gateway(&text).await;
    let addr = gw.public_addr();
    let no_redirects = reqwest::Client::builder()
        .tls_certs_only(std::iter::empty())
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .post(format!("http://{addr}/orders?id=7"))
        .header("host", "shop.example.com:8080")
        .body("kept")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "https://shop.example.com/orders?id=7");
    assert_eq!(upstream.count(), 0, "nothing is served in the clear");
    let r = no_redirects
        .get(format!("http://{addr}/orders"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the proxy says the original was https");
    let r = no_redirects
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a probed route opts out");
    let r = no_redirects
        .get(format!("http://{addr}/watch"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "report mode serves it");
    let admin = gw.admin_addr();
    wait_until_async(
        "the would-refuse count",
        std::time::Duration::from_secs(5),
        async || {
            metric(
                &metrics_text(admin).await,
                "portcullis_would_refuse_total{protection=\"https_redirect\",route=\"watch\"}",
            ) == 1.0
        },
    )
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstreams_cookies_are_hardened_when_asked() {
    let upstream = TestUpstream::start().await;
    let routes = r#"
[[routes]]
id = "hard"
path = "/hard"
upstream = "app"
auth = ["none"]
security_headers = { harden_cookies = true, harden_cookies_except = ["XSRF-TOKEN"] }

[[routes]]
id = "app"
path = "/"
upstream = "app"
auth = ["none"]
"#;
    let gw = start_gateway(&config("production", &upstream.url(), routes)).await;
    let cookies = |path: &'static str| {
        let url = format!("http://{}{path}", gw.public_addr());
        async move {
            let r = client().get(url).send().await.unwrap();
            r.headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        cookies("/hard/set-cookies").await,
        [
            "plain=1; Path=/; Secure; HttpOnly; SameSite=Lax",
            "done=2; Secure; HttpOnly; SameSite=Strict",
            "XSRF-TOKEN=t; Path=/",
        ]
    );
    assert_eq!(
        cookies("/set-cookies").await,
        [
            "plain=1; Path=/",
            "done=2; Secure; HttpOnly; SameSite=Strict",
            "XSRF-TOKEN=t; Path=/",
        ],
        "off by default"
    );
    gw.shutdown().await;
}
