//! Idle keep-alive connections are parked: between requests an HTTP/1
//! connection gives up hyper's buffers and keeps only its socket. A parked
//! connection serves its next request (whole, pipelined, or with a head that
//! arrives in pieces), still closes at the idle timeout, closes at once on a
//! drain, and, through the real binary, the memory of many idle connections
//! leaves the process once they close.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GET: &[u8] = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";

async fn gauges(admin: SocketAddr) -> (f64, f64) {
    let text = metrics_text(admin).await;
    (
        metric(&text, "portcullis_connections_open"),
        metric(&text, "portcullis_connections_parked"),
    )
}

async fn parked_count_is(admin: SocketAddr, want: f64) {
    wait_until_async(
        &format!("{want} parked connections"),
        Duration::from_secs(10),
        async || gauges(admin).await.1 == want,
    )
    .await;
}

/// Reads until `count` whole responses (each with a `Content-Length`)
/// arrived; returns their heads' first lines.
async fn answers(stream: &mut TcpStream, count: usize) -> Vec<String> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut statuses = Vec::new();
        let mut rest = &bytes[..];
        while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&rest[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if rest.len() < end + 4 + length {
                break;
            }
            statuses.push(head.lines().next().unwrap_or_default().to_string());
            rest = &rest[end + 4 + length..];
        }
        if statuses.len() >= count {
            return statuses;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&bytes));
        bytes.extend_from_slice(&buf[..n]);
    }
}

async fn gateway(extra_server: &[(&str, &str)]) -> (TestUpstream, portcullis::Gateway) {
    let upstream = TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        for (key, value) in extra_server {
            set(doc, "server", key, *value);
        }
    });
    let gw = start_gateway(&text).await;
    (upstream, gw)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_connection_serves_whole_pipelined_and_split_requests() {
    let (upstream, gw) = gateway(&[]).await;
    let admin = gw.admin_addr();
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();

    stream.write_all(GET).await.unwrap();
    assert_eq!(answers(&mut stream, 1).await, ["HTTP/1.1 200 OK"]);
    parked_count_is(admin, 1.0).await;

    // The next request wakes it.
    stream.write_all(GET).await.unwrap();
    assert_eq!(answers(&mut stream, 1).await, ["HTTP/1.1 200 OK"]);
    parked_count_is(admin, 1.0).await;

    // Two pipelined requests in one write, both answered in order.
    stream.write_all(&[GET, GET].concat()).await.unwrap();
    assert_eq!(
        answers(&mut stream, 2).await,
        ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"]
    );
    parked_count_is(admin, 1.0).await;

    // A head whose first half wakes the connection and whose second half
    // comes later.
    stream.write_all(b"GET /hello HT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(b"TP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(answers(&mut stream, 1).await, ["HTTP/1.1 200 OK"]);

    // One connection all along, and the upstream saw every request.
    assert_eq!(gauges(admin).await.0, 1.0);
    assert_eq!(upstream.count(), 5);
    drop(stream);
    wait_until_async("no open connection", Duration::from_secs(5), async || {
        gauges(admin).await == (0.0, 0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_connection_still_closes_at_the_idle_timeout_and_a_slow_head_at_the_header_timeout() {
    let (_upstream, gw) = gateway(&[("idle_timeout", "1s"), ("header_read_timeout", "1s")]).await;
    let admin = gw.admin_addr();
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    stream.write_all(GET).await.unwrap();
    answers(&mut stream, 1).await;
    parked_count_is(admin, 1.0).await;
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed at the idle timeout"
    );
    parked_count_is(admin, 0.0).await;

    // A head started on a parked connection is timed like any other.
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    stream.write_all(GET).await.unwrap();
    answers(&mut stream, 1).await;
    parked_count_is(admin, 1.0).await;
    stream.write_all(b"GET /hello HTTP/1.1\r\n").await.unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "a stalled head is cut off");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_closes_parked_connections_at_once_and_finishes_busy_ones() {
    let (_upstream, gw) = gateway(&[("drain_timeout", "30s")]).await;
    let admin = gw.admin_addr();
    let mut parked = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
        stream.write_all(GET).await.unwrap();
        answers(&mut stream, 1).await;
        parked.push(stream);
    }
    parked_count_is(admin, 3.0).await;
    // Bounded: a parked connection left open would hold the drain for 30 s.
    tokio::time::timeout(Duration::from_secs(10), gw.shutdown())
        .await
        .expect("the drain does not wait for parked connections");
    for mut stream in parked {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed by the drain");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_connections_are_served_and_never_parked() {
    let (_upstream, gw) = gateway(&[]).await;
    let admin = gw.admin_addr();
    let c = h2_client();
    let url = format!("http://{}/hello", gw.public_addr());
    for _ in 0..2 {
        let response = c.get(&url).send().await.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        gauges(admin).await,
        (1.0, 0.0),
        "one HTTP/2 connection, not parked"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Through the real binary: 1,500 idle connections, each after one request,
/// are all parked; once they close, the process's resident memory comes back
/// to within 10% of what it was before they opened (the allocator hands freed
/// pages back within seconds, so this waits for a bounded time, not a fixed
/// one). Nothing here is a per-connection memory threshold: bench/idle-memory.py
/// measures that against nginx and HAProxy.
#[tokio::test(flavor = "multi_thread")]
async fn memory_of_idle_connections_leaves_the_binary_once_they_close() {
    const CONNECTIONS: usize = 1500;
    let upstream = TestUpstream::start().await;
    let dir = scratch_dir();
    let config_path = dir.join("portcullis.toml");
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        set(doc, "server", "max_connections", CONNECTIONS as i64 + 100);
    });
    std::fs::write(&config_path, text).unwrap();
    let bin = Binary::serve(&config_path, &[("TOKIO_WORKER_THREADS", "1")]);
    let pid = bin.child.id();

    // Warm: the first requests' one-time allocations are not per connection.
    for _ in 0..20 {
        let mut stream = TcpStream::connect(bin.public).await.unwrap();
        stream.write_all(GET).await.unwrap();
        answers(&mut stream, 1).await;
    }
    wait_until_async("warm connections closed", Duration::from_secs(10), async || {
        gauges(bin.admin).await.0 == 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(pid);

    let mut streams = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(bin.public).await.unwrap();
        stream.write_all(GET).await.unwrap();
        answers(&mut stream, 1).await;
        streams.push(stream);
    }
    parked_count_is(bin.admin, CONNECTIONS as f64).await;
    let open = rss_kib(pid);
    eprintln!(
        "{CONNECTIONS} parked connections: {before} KiB -> {open} KiB ({:.2} KiB each)",
        (open.saturating_sub(before)) as f64 / CONNECTIONS as f64
    );
    drop(streams);
    wait_until_async("every connection closed", Duration::from_secs(10), async || {
        gauges(bin.admin).await == (0.0, 0.0)
    })
    .await;
    let returned = eventually(Duration::from_secs(20), || rss_kib(pid) * 10 <= before * 11).await;
    let after = rss_kib(pid);
    assert!(
        returned,
        "resident memory stayed at {after} KiB after the connections closed (before them: {before} KiB, \
         with them: {open} KiB)"
    );
}
