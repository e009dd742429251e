//! Upstream failures: 502 when unreachable, 504 on timeout, 5xx bodies
//! masked in production (status kept) and passed through in development.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_is_a_502_problem() {
    let (_refusing, port) = refusing_port();
    let gw = start_gateway(&config(
        "development",
        &format!("http://127.0.0.1:{port}"),
        PUBLIC_ROOT,
    ))
    .await;
    let resp = client()
        .get(format!("http://{}/x", gw.public_addr()))
        .send()
        .await
        .unwrap();
    let doc = assert_problem(resp, 502).await;
    assert!(
        !problem_text_without_id(&doc).contains(&port.to_string()),
        "the problem leaks the upstream address: {doc}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_a_504_problem() {
    let upstream = TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        *at(doc, "upstreams.0.timeout") = "300ms".into();
    });
    let gw = start_gateway(&text).await;
    let started = std::time::Instant::now();
    let resp = client()
        .get(format!("http://{}/delay/3000", gw.public_addr()))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 504).await;
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2500),
        "the timeout was not applied"
    );
    // A fast request on the same upstream still works.
    let resp = client()
        .get(format!("http://{}/delay/10", gw.public_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn production_masks_upstream_5xx_bodies_and_keeps_the_status() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("production", &upstream.url(), PUBLIC_ROOT)).await;
    for code in [500u16, 502, 503, 599, 600, 999] {
        let resp = client()
            .get(format!("http://{}/status/{code}", gw.public_addr()))
            .send()
            .await
            .unwrap();
        let retry_after = resp.headers().get("retry-after").cloned();
        let doc = assert_problem(resp, code).await;
        let text = doc.to_string();
        assert!(!text.contains("Traceback"), "{text}");
        assert!(!text.contains("SECRET_STACK_DETAIL"), "{text}");
        assert_eq!(retry_after.unwrap(), "7", "Retry-After survives masking");
    }
    // 4xx bodies are the application's own and pass through.
    let resp = client()
        .get(format!("http://{}/status/404", gw.public_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.unwrap().contains("Traceback"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn development_passes_upstream_5xx_bodies_through() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    let resp = client()
        .get(format!("http://{}/status/500", gw.public_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert!(resp.text().await.unwrap().contains("SECRET_STACK_DETAIL"));
    gw.shutdown().await;
}

/// An upstream that answers every request with `101 Switching Protocols`.
async fn switching_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nrawbytes")
                    .await;
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsolicited_protocol_switch_is_a_502_over_both_protocols() {
    let addr = switching_upstream().await;
    let gw = start_gateway(&config("development", &format!("http://{addr}"), PUBLIC_ROOT)).await;
    let url = format!("http://{}/ws", gw.public_addr());
    let resp = client().get(&url).send().await.unwrap();
    assert!(resp.headers().get("upgrade").is_none());
    assert_problem(resp, 502).await;
    let resp = h2_client().get(&url).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_problem(resp, 502).await;
    // Asking for an upgrade changes nothing: the gateway never switches.
    let answer = raw(
        gw.public_addr(),
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 502, "{answer}");
    assert!(!answer.contains("rawbytes"), "{answer}");
    gw.shutdown().await;
}
