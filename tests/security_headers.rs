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
