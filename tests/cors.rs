//! CORS through the real server: allow-list, no reflection, preflights.

mod common;

use common::*;

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
    let text = config(
        "development",
        &upstream.url(),
        &CORS
            .replace("[\"https://app.example.com\"]", "[\"*\"]")
            .replace("credentials = true", ""),
    );
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
