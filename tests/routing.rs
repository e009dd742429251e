//! Routing on normalised paths: bypass attempts, 400/404/405, the path the
//! upstream receives, longest-prefix choice.

mod common;

use common::*;

/// `/api` is public and routed; `/admin` has its own route to a different
/// upstream, `/internal` is not routed at all.
async fn setup() -> (TestUpstream, TestUpstream, portcullis::Gateway) {
    let app = TestUpstream::start().await;
    let admin = TestUpstream::start().await;
    let extra = format!(
        r#"
[[upstreams]]
name = "admin"
targets = ["{}"]

[[routes]]
id = "api"
path = "/api"
upstream = "app"
auth = ["none"]

[[routes]]
id = "api-tasks"
path = "/api/v1/tasks"
methods = ["GET", "POST"]
upstream = "app"
auth = ["none"]

[[routes]]
id = "admin"
path = "/admin"
methods = ["GET"]
upstream = "admin"
auth = ["none"]
"#,
        admin.url()
    );
    let gw = start_gateway(&config("development", &app.url(), &extra)).await;
    (app, admin, gw)
}

#[tokio::test(flavor = "multi_thread")]
async fn dot_segments_and_encodings_cannot_escape_a_route() {
    let (app, admin, gw) = setup().await;
    // (raw path, expected status, which upstream, path it must receive)
    let cases: &[(&str, u16, &str, &str)] = &[
        ("/api/users", 200, "app", "/api/users"),
        ("/api/../internal/secret", 404, "-", ""),
        ("/api/%2e%2e/internal", 404, "-", ""),
        ("/api/%2E%2e/internal", 404, "-", ""),
        ("/api/.%2e/internal", 404, "-", ""),
        ("/api/./../internal", 404, "-", ""),
        ("/api/..%2finternal", 400, "-", ""),
        ("/api%2f..%2finternal", 400, "-", ""),
        ("/api/..%5cinternal", 400, "-", ""),
        ("/api/..\\internal", 400, "-", ""),
        ("/api/..;/internal", 400, "-", ""),
        ("/api/%00", 400, "-", ""),
        ("/api/%ff", 400, "-", ""),
        ("/api/%zz", 400, "-", ""),
        // Reaching /admin through /api still goes to the admin route and
        // its upstream, with its method rules, and the path it receives is
        // the normalised one.
        ("/api/../admin/users", 200, "admin", "/admin/users"),
        ("//api//users//", 200, "app", "/api/users/"),
        ("/%61pi/users", 200, "app", "/api/users"),
        ("/api/a%20b", 200, "app", "/api/a%20b"),
        ("/api/v1/tasks/../../users", 200, "app", "/api/users"),
        ("/API/users", 404, "-", ""),
    ];
    for (path, status, which, received) in cases {
        let before = (app.count(), admin.count());
        let answer = raw(
            gw.public_addr(),
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&answer), *status, "{path}: {answer}");
        let after = (app.count(), admin.count());
        match *which {
            "app" => {
                assert_eq!(after, (before.0 + 1, before.1), "{path}");
                assert_eq!(app.last().target, *received, "{path}");
            }
            "admin" => {
                assert_eq!(after, (before.0, before.1 + 1), "{path}");
                assert_eq!(admin.last().target, *received, "{path}");
            }
            _ => assert_eq!(after, before, "{path} reached an upstream"),
        }
        if *status >= 400 {
            assert!(answer.contains("application/problem+json"), "{path}: {answer}");
        }
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn not_found_and_method_not_allowed_are_problem_documents() {
    let (_app, admin, gw) = setup().await;
    let base = format!("http://{}", gw.public_addr());

    let doc = assert_problem(client().get(format!("{base}/nowhere")).send().await.unwrap(), 404).await;
    assert_eq!(doc["title"], "Not Found");

    let resp = client()
        .delete(format!("{base}/admin/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    assert_problem(resp, 405).await;
    assert_eq!(admin.count(), 0);

    // HEAD is allowed where GET is.
    let resp = client().head(format!("{base}/admin/users")).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    // The more specific route's method list applies, not the shorter prefix's.
    let resp = client()
        .delete(format!("{base}/api/v1/tasks/3"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "GET, POST, HEAD");
    assert_problem(resp, 405).await;

    // Routes without `methods` refuse TRACE.
    let resp = client()
        .request(reqwest::Method::TRACE, format!("{base}/api/x"))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 405).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn longest_prefix_wins_on_segment_boundaries() {
    let (app, _admin, gw) = setup().await;
    let base = format!("http://{}", gw.public_addr());
    assert_eq!(
        client()
            .post(format!("{base}/api/v1/tasks"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // `/apix` is not under `/api`.
    assert_problem(client().get(format!("{base}/apix")).send().await.unwrap(), 404).await;
    assert_eq!(app.count(), 1);
    gw.shutdown().await;
}
