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
