//! The client IP the upstream is told about, with and without a trusted
//! proxy in front.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_peer_cannot_claim_another_address() {
    let upstream = TestUpstream::start().await;
    // Trust some other network, not the loopback peer the test connects from.
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        set(doc, "server", "trusted_proxies", vec!["10.0.0.0/8"])
    });
    let gw = start_gateway(&text).await;
    client()
        .get(format!("http://{}/", gw.public_addr()))
        .header("x-forwarded-for", "1.2.3.4, 10.0.0.1")
        .send()
        .await
        .unwrap();
    let got = upstream.last();
    assert_eq!(got.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(
        got.headers["x-forwarded-for"], "127.0.0.1",
        "the forged chain is not passed on"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() {
    let upstream = TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        set(doc, "server", "trusted_proxies", vec!["127.0.0.1", "10.0.0.0/8"])
    });
    let gw = start_gateway(&text).await;
    let url = format!("http://{}/", gw.public_addr());
    let cases: &[(&[&str], &str)] = &[
        // A client-forged entry on the left is ignored.
        (&["6.6.6.6, 203.0.113.7, 10.1.2.3"], "203.0.113.7"),
        (&["6.6.6.6", "203.0.113.7"], "203.0.113.7"),
        (&["203.0.113.7:5555"], "203.0.113.7"),
        (&["[2001:db8::7]:443"], "2001:db8::7"),
        // Garbage stops the walk: the last trusted hop is used.
        (&["6.6.6.6, not-an-ip, 10.1.2.3"], "10.1.2.3"),
        // No header: the peer.
        (&[], "127.0.0.1"),
    ];
    for (xff, want) in cases {
        let mut req = client().get(&url);
        for value in xff.iter() {
            req = req.header("x-forwarded-for", *value);
        }
        req.send().await.unwrap();
        let got = upstream.last();
        assert_eq!(got.headers["x-real-ip"], *want, "{xff:?}");
        // The chain is passed on with the peer appended.
        let chain = got.headers["x-forwarded-for"].to_str().unwrap().to_string();
        assert!(chain.ends_with("127.0.0.1"), "{chain}");
    }
    // A trusted proxy's protocol and host are believed.
    client()
        .get(&url)
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "app.example.com")
        .send()
        .await
        .unwrap();
    let got = upstream.last();
    assert_eq!(got.headers["x-forwarded-proto"], "https");
    assert_eq!(got.headers["x-forwarded-host"], "app.example.com");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_allow_and_deny_client_networks_by_the_trusted_client_ip() {
    let upstream = TestUpstream::start().await;
    let routes = r#"
[[routes]]
id = "ops"
path = "/ops"
upstream = "app"
auth = ["none"]
ip_filter = { allow = ["10.0.0.0/8", "192.0.2.7"], deny = ["10.6.6.0/24"] }

[[routes]]
id = "watch"
path = "/watch"
upstream = "app"
auth = ["none"]
ip_filter = { deny = ["203.0.113.0/24"], mode = "report" }
"#;
    let text = config("production", &upstream.url(), routes).replacen(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        1,
    );
    let gw = start_gateway(&text).await;
    let from = |path: &str, ip: &str| {
        client()
            .get(format!("http://{}{path}", gw.public_addr()))
            .header("x-forwarded-for", ip)
            .send()
    };
    for ip in ["10.1.2.3", "192.0.2.7"] {
        assert_eq!(from("/ops", ip).await.unwrap().status(), 200, "{ip}");
    }
    for ip in ["10.6.6.9", "192.0.2.8", "8.8.8.8"] {
        assert_problem(from("/ops", ip).await.unwrap(), 403).await;
    }
    // A spoofed hop before the real one changes nothing: the proxy's
    // view (the last untrusted hop) counts.
    assert_problem(from("/ops", "10.1.2.3, 8.8.8.8").await.unwrap(), 403).await;
    assert_eq!(upstream.count(), 2);
    assert_eq!(audit_events(&gw, Some("ip.rejected")).await.len(), 4);
    assert_eq!(from("/watch", "203.0.113.5").await.unwrap().status(), 200);
    let admin = gw.admin_addr();
    wait_until_async(
        "the would-refuse count",
        std::time::Duration::from_secs(5),
        async || {
            metric(
                &metrics_text(admin).await,
                "portcullis_would_refuse_total{protection=\"ip_filter\",route=\"watch\"}",
            ) == 1.0
        },
    )
    .await;
    gw.shutdown().await;
}
