//! CORS through the real server: allow-list, no reflection, preflights.

mod common;

use common::*;
use std::time::Duration;

const CORS: &str = r#"
[cors]
origins = ["https://app.example.com"]
credentials = true

[[routes]]
path = "/api"
methods = ["GET", "POST"]
upstream = "app"
auth = ["none"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn allowed_origins_get_headers_and_others_are_never_reflected() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), CORS)).await;
    let url = format!("http://{}/api/items", gw.public_addr());

    let resp = client()
        .get(&url)
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    assert!(
        resp.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-request-id")
    );
    assert_eq!(resp.headers()["vary"], "Origin");

    for evil in [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "null",
        "http://app.example.com",
    ] {
        let resp = client().get(&url).header("origin", evil).send().await.unwrap();
        assert_eq!(resp.status(), 200, "CORS does not block the request itself");
        assert!(
            resp.headers().get("access-control-allow-origin").is_none(),
            "{evil} was reflected"
        );
        assert!(resp.headers().get("access-control-allow-credentials").is_none());
        assert_eq!(resp.headers()["vary"], "Origin");
    }
    // Errors from the gateway carry CORS headers too, so the page can read them.
    let resp = client()
        .delete(&url)
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_problem(resp, 405).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn preflights_are_answered_by_the_gateway() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), CORS)).await;
    let url = format!("http://{}/api/items", gw.public_addr());
    let preflight = |origin: &str, method: &str, headers: &str| {
        client()
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
    };

    // The route does not list OPTIONS; the preflight is still answered.
    let resp = preflight("https://app.example.com", "POST", "content-type, x-api-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-api-key")
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");

    assert_problem(
        preflight("https://evil.example", "POST", "")
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    assert_problem(
        preflight("https://app.example.com", "PURGE", "")
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    assert_problem(
        preflight("https://app.example.com", "POST", "x-evil")
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    assert_eq!(upstream.count(), 0, "preflights never reach the upstream");
    gw.shared().runtime.audit.flush().await;
    let refusals = store_of(&gw)
        .audit_query(&portcullis::store::audit::AuditFilter {
            kind: Some("cors.rejected".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(refusals.len(), 3);
    assert_eq!(refusals[2].event.details["origin"], "https://evil.example");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wildcard_without_credentials_answers_star() {
    let upstream = TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), CORS), |doc| {
        *at(doc, "cors.origins") = vec!["*"].into();
        unset(doc, "cors", "credentials");
    });
    let gw = start_gateway(&text).await;
    let resp = client()
        .get(format!("http://{}/api", gw.public_addr()))
        .header("origin", "https://anyone.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert!(resp.headers().get("access-control-allow-credentials").is_none());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_that_reflects_origin_cannot_widen_the_allow_list() {
    let upstream = TestUpstream::start().await;
    let text = config("development", &upstream.url(), CORS);
    let gw = start_gateway(&text).await;
    let url = format!("http://{}/api/reflect-origin", gw.public_addr());
    let from = |origin: &str| client().get(&url).header("origin", origin).send();

    let resp = from("https://evil.example").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("access-control-allow-origin").is_none(),
        "{:?}",
        resp.headers()
    );
    assert!(resp.headers().get("access-control-allow-credentials").is_none());
    assert!(
        resp.headers()
            .get("access-control-allow-private-network")
            .is_none()
    );
    let resp = from("https://app.example.com").await.unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        !resp.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-internal"),
        "the gateway's expose list, not the backend's"
    );
    gw.shutdown().await;

    // A backend that owns its CORS keeps its headers, by a documented switch.
    let owned = edit(&text, |doc| set(doc, "cors", "keep_upstream_headers", true));
    let gw = start_gateway(&owned).await;
    let url = format!("http://{}/api/reflect-origin", gw.public_addr());
    let resp = client()
        .get(&url)
        .header("origin", "https://other.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://other.example"
    );
    // The gateway's own answers still carry its policy.
    let resp = client()
        .delete(&url)
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_problem(resp, 405).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preflight_meets_the_route_of_the_method_it_announces() {
    let upstream = TestUpstream::start().await;
    let text = config(
        "development",
        &upstream.url(),
        r#"
[cors]
origins = ["https://app.example.com"]

[[routes]]
id = "read"
path = "/api"
methods = ["GET"]
upstream = "app"
auth = ["none"]

[[routes]]
id = "write"
path = "/api"
methods = ["POST"]
upstream = "app"
auth = ["none"]
"#,
    );
    let gw = start_gateway(&text).await;
    let preflight = |path: &str, method: &str| {
        client()
            .request(
                reqwest::Method::OPTIONS,
                format!("http://{}{path}", gw.public_addr()),
            )
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", method)
            .send()
    };
    assert_eq!(preflight("/api/x", "POST").await.unwrap().status(), 204);
    assert_eq!(preflight("/api/x", "GET").await.unwrap().status(), 204);
    assert_problem(preflight("/nowhere", "GET").await.unwrap(), 404).await;
    assert_eq!(upstream.count(), 0);
    // Each preflight was counted under the route its request will meet.
    let admin = gw.admin_addr();
    wait_until_async(
        "both preflights in the metrics",
        Duration::from_secs(5),
        async || {
            let metrics = metrics_text(admin).await;
            metric(
                &metrics,
                "portcullis_requests_total{route=\"write\",status_class=\"2xx\"}",
            ) == 1.0
                && metric(
                    &metrics,
                    "portcullis_requests_total{route=\"read\",status_class=\"2xx\"}",
                ) == 1.0
        },
    )
    .await;
    gw.shutdown().await;
}

const PATTERNS: &str = r#"
[cors]
origins = ["https://*.example.com", "https://app.example.org:8443"]
development_origins = ["http://localhost:5173"]
credentials = true

[[routes]]
id = "api"
path = "/api"
upstream = "app"
auth = ["none"]

[[routes]]
id = "partner"
path = "/partner"
upstream = "app"
auth = ["none"]
cors = { origins = ["https://partner.example.net", "null"], credentials = false }

[[routes]]
id = "own"
path = "/own"
upstream = "app"
auth = ["none"]
cors = { enabled = false }

[[routes]]
id = "watch"
path = "/watch"
upstream = "app"
auth = ["none"]
mode = "report"
"#;

/// The `Access-Control-Allow-Origin` a GET from `origin` gets, if any.
async fn allowed(addr: std::net::SocketAddr, path: &str, origin: &str) -> Option<String> {
    let r = client()
        .get(format!("http://{addr}{path}"))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["vary"], "Origin", "{path} {origin}");
    r.headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn patterns_match_true_subdomains_and_routes_override_the_list() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PATTERNS)).await;
    let addr = gw.public_addr();
    for good in [
        "https://a.example.com",
        "https://deep.a.example.com",
        "https://app.example.org:8443",
        "http://localhost:5173",
    ] {
        assert_eq!(allowed(addr, "/api", good).await.as_deref(), Some(good), "{good}");
    }
    for bad in [
        "https://example.com",
        "https://evilexample.com",
        "https://example.com.evil.net",
        "https://a.example.com.evil.net",
        "http://a.example.com",
        "https://a.example.com:444",
        "https://app.example.org",
        "null",
        "https://partner.example.net",
    ] {
        assert_eq!(allowed(addr, "/api", bad).await, None, "{bad} on /api");
    }
    // The partner route has its own list, where `null` is listed.
    assert_eq!(
        allowed(addr, "/partner", "https://partner.example.net")
            .await
            .as_deref(),
        Some("https://partner.example.net")
    );
    assert_eq!(allowed(addr, "/partner", "null").await.as_deref(), Some("null"));
    assert_eq!(allowed(addr, "/partner", "https://a.example.com").await, None);
    // A route with CORS off leaves it to the backend, which here reflects.
    let r = client()
        .get(format!("http://{addr}/own/reflect-origin"))
        .header("origin", "https://anyone.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://anyone.example"
    );
    // A preflight of the partner route is answered by its own policy.
    let r = client()
        .request(reqwest::Method::OPTIONS, format!("http://{addr}/partner/x"))
        .header("origin", "https://partner.example.net")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.headers().get("access-control-allow-credentials").is_none());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn development_origins_never_count_in_production() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("production", &upstream.url(), PATTERNS)).await;
    let addr = gw.public_addr();
    assert_eq!(allowed(addr, "/api", "http://localhost:5173").await, None);
    assert_eq!(
        allowed(addr, "/api", "https://a.example.com").await.as_deref(),
        Some("https://a.example.com")
    );
    gw.shutdown().await;
    // And a local origin in the production list is a config error.
    let text = edit(&config("production", &upstream.url(), PATTERNS), |doc| {
        *at(doc, "cors.origins") = vec!["http://localhost:5173"].into();
    });
    let errors = compile_offline(&text).err().unwrap();
    assert!(errors.contains("development_origins"), "{errors}");
}

#[tokio::test(flavor = "multi_thread")]
async fn report_mode_forwards_refused_preflights_and_counts_them() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PATTERNS)).await;
    let addr = gw.public_addr();
    let r = client()
        .request(reqwest::Method::OPTIONS, format!("http://{addr}/watch/x"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the backend answered");
    assert_eq!(upstream.count(), 1);
    // A backend granting an unlisted origin keeps its headers in report mode.
    let r = client()
        .get(format!("http://{addr}/watch/reflect-origin"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://evil.example");
    let admin = gw.admin_addr();
    wait_until_async("two would-refuse counts", Duration::from_secs(5), async || {
        metric(
            &metrics_text(admin).await,
            "portcullis_would_refuse_total{protection=\"cors\",route=\"watch\"}",
        ) == 2.0
    })
    .await;
    gw.shutdown().await;
}
