//! Slow clients: a slowloris head, a slow-POST body (with a length and
//! chunked) and a stalled TLS handshake are closed while a normal client
//! keeps being served.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `head`, then `chunk` every 200 ms until the gateway answers or
/// closes; returns what it answered (empty if it only closed).
async fn trickle(addr: std::net::SocketAddr, head: &str, chunk: &'static [u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {
                if stream.write_all(chunk).await.is_err() {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_and_slow_post_are_closed_while_a_normal_client_is_served() {
    let upstream = TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        set(doc, "server", "body_read_timeout", "1s");
        set(doc, "server", "min_upload_rate", "100B");
        set(doc, "server", "header_read_timeout", "1s");
    });
    let gw = start_gateway(&text).await;
    let addr = gw.public_addr();

    let slow_post = tokio::spawn(trickle(
        addr,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
        b"0123456789",
    ));
    let slow_chunked = tokio::spawn(trickle(
        addr,
        "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\n01234\r\n",
    ));
    let slowloris = tokio::spawn(trickle(addr, "GET / HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n"));

    // A normal client, served all the while.
    let c = client();
    let base = format!("http://{addr}");
    let mut served = 0;
    while !(slow_post.is_finished() && slow_chunked.is_finished() && slowloris.is_finished()) {
        let resp = c
            .post(format!("{base}/fast"))
            .body(vec![b'x'; 64 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served > 5, "{served}");
    for (name, task) in [("slow POST", slow_post), ("slow chunked POST", slow_chunked)] {
        let answer = task.await.unwrap();
        assert_eq!(raw_status(&answer), 408, "{name}: {answer}");
        assert!(answer.contains("application/problem+json"), "{name}: {answer}");
    }
    let answer = slowloris.await.unwrap();
    assert!(
        answer.is_empty() || raw_status(&answer) == 408,
        "slowloris: {answer}"
    );
    // The slow bodies never reached the upstream whole.
    assert!(
        upstream
            .received()
            .iter()
            .filter(|r| r.target == "/upload")
            .all(|r| !r.body_complete)
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_but_steady_upload_within_the_rate_completes() {
    let upstream = TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        set(doc, "server", "body_read_timeout", "1s");
        set(doc, "server", "min_upload_rate", "100B");
        // The upstream's timeout runs while the body streams to it.
        *at(doc, "upstreams.0.timeout") = "10s".into();
    });
    let gw = start_gateway(&text).await;
    // 40 bytes every 200 ms is 200 B/s, above the 100 B/s floor: 2 s of it.
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 400\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.write_all(&[b'a'; 40]).await.unwrap();
    }
    let answer = read_response(&mut stream).await.unwrap();
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(upstream.last().body.len(), 400);
    gw.shutdown().await;
}
