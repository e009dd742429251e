//! The admin listener: health, readiness, metrics.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn healthz_readyz_and_metrics() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    let admin = format!("http://{}", gw.admin_addr());

    let resp = client().get(format!("{admin}/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client().get(format!("{admin}/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["checks"]["upstream:app"]["status"], "ok");

    let base = format!("http://{}", gw.public_addr());
    for _ in 0..3 {
        client().get(format!("{base}/x")).send().await.unwrap();
    }
    // 500: not a status the upstream retries, so one upstream request.
    client().get(format!("{base}/status/500")).send().await.unwrap();
    client().get(format!("{base}/%2f")).send().await.unwrap();

    // Counts are recorded when each response ends, which can be just after
    // the client has read it: wait until all five requests are counted.
    let counted = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("portcullis_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mut text = String::new();
    wait_until_async(
        "all 5 requests to be counted",
        std::time::Duration::from_secs(5),
        async || {
            text = metrics_text(gw.admin_addr()).await;
            counted(&text) >= 5.0
        },
    )
    .await;
    let value = |needle: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `{needle}` in:\n{text}"))
    };
    assert_eq!(
        value("portcullis_requests_total{route=\"/\",status_class=\"2xx\"}"),
        3.0
    );
    assert_eq!(
        value("portcullis_requests_total{route=\"/\",status_class=\"5xx\"}"),
        1.0
    );
    assert_eq!(
        value("portcullis_requests_total{route=\"(none)\",status_class=\"4xx\"}"),
        1.0
    );
    assert_eq!(
        value("portcullis_request_duration_seconds_count{route=\"/\"}"),
        4.0
    );
    assert!(text.contains("portcullis_request_duration_seconds_bucket{route=\"/\",le=\"0.005\"}"));
    assert!(text.contains("portcullis_upstream_duration_seconds_count{upstream=\"app\"} 4"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_is_reported_and_makes_readyz_fail_only_when_required() {
    let (_refusing, port) = refusing_port();
    let text = config("development", &format!("http://127.0.0.1:{port}"), PUBLIC_ROOT);
    for required in [false, true] {
        let text = edit(&text, |doc| {
            if required {
                set(doc, "upstreams.0", "readiness", "require");
            }
        });
        let gw = start_gateway(&text).await;
        let resp = client()
            .get(format!("http://{}/readyz", gw.admin_addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), if required { 503 } else { 200 });
        let doc = json(resp).await;
        assert_eq!(doc["status"], if required { "not_ready" } else { "ready" });
        assert_eq!(doc["checks"]["store"]["status"], "ok");
        assert_eq!(doc["checks"]["upstream:app"]["status"], "unreachable");
        assert_eq!(doc["checks"]["upstream:app"]["required"], required);
        let metrics = metrics_text(gw.admin_addr()).await;
        let series = format!("portcullis_upstream_reachable{{target=\"127.0.0.1:{port}\",upstream=\"app\"}}");
        assert!(metrics.contains(&format!("{series} 0")), "{metrics}");
        // Liveness does not depend on upstreams.
        let resp = client()
            .get(format!("http://{}/healthz", gw.admin_addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_closes_silent_and_slow_connections() {
    use tokio::io::AsyncWriteExt;
    let upstream = TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        set(doc, "server", "header_read_timeout", "1s");
    });
    let gw = start_gateway(&text).await;
    let mut silent = tokio::net::TcpStream::connect(gw.admin_addr()).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(gw.admin_addr()).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        common::h2::closes_within(&mut silent, Duration::from_secs(3)).await,
        "a silent admin socket stays open"
    );
    assert!(
        common::h2::closes_within(&mut slow, Duration::from_secs(3)).await,
        "a half-sent head stays open"
    );
    // A complete request is still answered. (That keep-alive lasts the idle
    // timeout, not the header timeout, is tests/review_attacks.rs's
    // `admin_keep_alive_lasts_the_idle_timeout_not_the_header_timeout`.)
    let c = client();
    let url = format!("http://{}/healthz", gw.admin_addr());
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_has_a_connection_cap_of_its_own() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        set(doc, "server", "admin_max_connections", 3);
        set(doc, "server", "header_read_timeout", "30s");
    });
    let gw = start_gateway(&text).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(gw.admin_addr()).await.unwrap());
    }
    // The fourth waits in the kernel's backlog: no answer while the cap is full.
    let mut fourth = tokio::net::TcpStream::connect(gw.admin_addr()).await.unwrap();
    fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), fourth.read(&mut buf)).await;
    assert!(early.is_err(), "the cap did not hold");
    // The public listener is not affected.
    let public = client()
        .get(format!("http://{}/x", gw.public_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 200);
    // A slot frees: the waiting connection is served.
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut buf))
        .await
        .expect("served once a slot was free")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_error_is_a_problem_document() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config_with_store(
        "development",
        &upstream.url(),
        None,
        PUBLIC_ROOT,
    ))
    .await;
    let base = format!("http://{}", gw.admin_addr());
    let c = client();
    let resp = c.post(format!("{base}/healthz")).send().await.unwrap();
    assert!(resp.headers()["allow"].to_str().unwrap().contains("GET"));
    assert_problem(resp, 405).await;
    let resp = c
        .put(format!("{base}/admin/api/v1/consumers"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_problem(resp, 405).await;
    let resp = c
        .post(format!("{base}/admin/api/v1/consumers"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(vec![b' '; 70 * 1024])
        .send()
        .await
        .unwrap();
    assert_problem(resp, 413).await;
    let resp = c.get(format!("{base}/nothing-here")).send().await.unwrap();
    assert_problem(resp, 404).await;
    let resp = c.get(format!("{base}/admin/api/v1/keys")).send().await.unwrap();
    assert_problem(resp, 401).await;
    // The readiness report stays the endpoint's own JSON.
    let resp = c.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(json(resp).await["status"], "ready");
    gw.shutdown().await;
}
