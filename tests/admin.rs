//! The admin listener: health, readiness, metrics.

mod common;

use common::*;

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
    client().get(format!("{base}/status/503")).send().await.unwrap();
    client().get(format!("{base}/%2f")).send().await.unwrap();

    // Counts are recorded when each response ends; give the last one a moment.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let text = metrics_text(gw.admin_addr()).await;
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
