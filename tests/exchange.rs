//! Every request is logged and counted exactly once, however it ends, and
//! a connection's requests always let go of it: HTTP/2 streams the client
//! resets mid-request, HTTP/1 clients that disconnect, and keep-alive
//! connections timed by the idle timeout, not the header timeout.

mod common;

use std::time::{Duration, Instant};

use common::h2::{H2Connection, closes_within, code};
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The real binary in front of `upstream`, with the access log on, a
/// 1-second idle timeout and room for one client connection.
fn serve(upstream: &TestUpstream, dir: &std::path::Path) -> Binary {
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        set(doc, "log", "access_log", true);
        set(doc, "server", "idle_timeout", "1s");
        set(doc, "server", "max_connections", 1);
    });
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    Binary::serve(&path, &[])
}

/// Access-log lines with this status.
fn logged_with_status(bin: &Binary, status: u16) -> usize {
    let needle = format!("\"status\":{status},");
    bin.output()
        .lines()
        .filter(|l| l.contains("\"target\":\"access\"") && l.contains(&needle))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_http2_streams_reset_mid_request_are_each_logged_once_and_let_go_of_the_connection() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bin = serve(&upstream, dir.path());
    let mut conn = H2Connection::open(bin.public).await;
    let request: [(&[u8], &[u8]); 4] = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"app.example"),
        (b":path", b"/delay/60000"),
    ];
    for batch in 0..10 {
        let before = upstream.count();
        let mut streams = Vec::new();
        for _ in 0..100 {
            streams.push(conn.send(&request, None).await);
        }
        // Every request of the batch is in flight: forwarded, and waiting
        // for a response head that the upstream will not send for a minute.
        let deadline = Instant::now() + Duration::from_secs(10);
        while upstream.count() < before + 100 {
            assert!(
                Instant::now() < deadline,
                "batch {batch} did not reach the upstream"
            );
            assert!(
                conn.ping(*b"waiting!", Duration::from_secs(5)).await,
                "{:?}",
                conn.goaway()
            );
        }
        for stream in streams {
            conn.reset(stream, code::CANCEL).await;
        }
        assert!(
            conn.ping(*b"resetdon", Duration::from_secs(5)).await,
            "{:?}",
            conn.goaway()
        );
    }
    wait_until(
        "an access-log line for every reset stream",
        Duration::from_secs(10),
        || logged_with_status(&bin, 499) >= 1000,
    )
    .await;
    assert_eq!(logged_with_status(&bin, 499), 1000, "each logged once");
    let metrics = metrics_text(bin.admin).await;
    assert_eq!(
        metric(
            &metrics,
            "portcullis_requests_total{route=\"/\",status_class=\"4xx\"}"
        ),
        1000.0
    );
    // Nothing is in flight any more, so the idle connection is closed...
    let mut stream = conn.into_stream();
    assert!(
        closes_within(&mut stream, Duration::from_secs(5)).await,
        "the connection stayed open"
    );
    // ...and its one `max_connections` slot is free again.
    let resp = client()
        .get(format!("http://{}/after", bin.public))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http1_client_that_disconnects_before_its_response_is_logged_as_499() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bin = serve(&upstream, dir.path());
    let mut stream = TcpStream::connect(bin.public).await.unwrap();
    stream
        .write_all(b"GET /delay/60000 HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await
        .unwrap();
    wait_until(
        "the request to reach the upstream",
        Duration::from_secs(5),
        || upstream.count() == 1,
    )
    .await;
    drop(stream);
    wait_until(
        "the abandoned request in the access log",
        Duration::from_secs(5),
        || logged_with_status(&bin, 499) == 1,
    )
    .await;
    let line = bin
        .output()
        .lines()
        .find(|l| l.contains("\"status\":499,"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("\"path\":\"/delay/60000\"") && line.contains("\"completed\":false"),
        "{line}"
    );
    // The slot is free for the next client.
    let resp = client()
        .get(format!("http://{}/next", bin.public))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    wait_until(
        "the next request in the access log",
        Duration::from_secs(5),
        || logged_with_status(&bin, 200) == 1,
    )
    .await;
    assert_eq!(logged_with_status(&bin, 499), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn http1_keep_alive_lasts_the_idle_timeout_not_the_header_timeout() {
    let upstream = TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        set(doc, "server", "header_read_timeout", "1s");
        set(doc, "server", "idle_timeout", "3s");
    });
    let gw = start_gateway(&text).await;
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    assert_eq!(
        raw_status(&get_on(&mut stream, "/a").await.expect("an answer")),
        200
    );
    // A real wait: longer than the header timeout, shorter than the idle one.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(
        raw_status(&get_on(&mut stream, "/b").await.expect("keep-alive ended early")),
        200,
        "keep-alive ended early"
    );

    // A head that stalls is cut off by the header timeout, counted from its
    // first byte, even between requests.
    stream.write_all(b"GET /c HTTP/1.1\r\nHost").await.unwrap();
    let started = Instant::now();
    assert!(
        closes_within(&mut stream, Duration::from_secs(3)).await,
        "a stalled head was kept"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the header timeout"
    );

    // An idle connection is closed after the idle timeout, not before.
    let mut idle = TcpStream::connect(gw.public_addr()).await.unwrap();
    assert_eq!(
        raw_status(&get_on(&mut idle, "/d").await.expect("an answer")),
        200
    );
    let started = Instant::now();
    assert!(
        closes_within(&mut idle, Duration::from_secs(6)).await,
        "an idle connection was kept"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2900),
        "closed after {took:?}, before the idle timeout"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn heads_the_http_layer_refuses_are_still_logged_and_counted() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bin = serve(&upstream, dir.path());
    // Far past the head limits: hyper's own buffer refuses it, before a
    // request exists.
    let answer = raw(
        bin.public,
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "v".repeat(100_000)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 431, "{answer}");
    let answer = raw(bin.public, b"GET / HTTP/1.1\r\nHost : x\r\n\r\n").await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    wait_until("both refusals in the access log", Duration::from_secs(5), || {
        bin.output()
            .lines()
            .filter(|l| l.contains("\"refused_by\":\"http parser\""))
            .count()
            == 2
    })
    .await;
    assert_eq!(logged_with_status(&bin, 431), 1);
    assert_eq!(logged_with_status(&bin, 400), 1);
    let metrics = metrics_text(bin.admin).await;
    assert_eq!(
        metric(
            &metrics,
            "portcullis_requests_total{route=\"(none)\",status_class=\"4xx\"}"
        ),
        2.0
    );
    assert_eq!(upstream.count(), 0);
}
