//! The upstream connection pool (src/proxy/pool.rs) through the real
//! server: reuse, connections the upstream closed while idle, the idle
//! timeout, the idle cap, and responses the client abandoned mid-body.
//!
//! The upstream here is a small raw HTTP/1.1 server that numbers its
//! connections, answers each request with the number of the connection it
//! came on, and records when each connection is closed by the gateway.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Log {
    /// Connection numbers that saw the gateway close them.
    closed: BTreeSet<usize>,
    /// Connection numbers the upstream closed itself after `/id-then-close`.
    dropped: BTreeSet<usize>,
    accepted: usize,
}

/// Paths: `/id` answers with the connection's number; `/slow` does too,
/// after 500 ms; `/id-then-close` answers, then closes the connection 50 ms
/// later (as an upstream with a short keep-alive timeout would); `/close`
/// answers with `Connection: close` and closes; `/stall` sends the head and
/// one chunk of a chunked body and then nothing more.
struct RawUpstream {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let id = {
                    let mut log = shared.lock().unwrap();
                    log.accepted += 1;
                    log.accepted
                };
                tokio::spawn(serve(stream, id, shared.clone()));
            }
        });
        RawUpstream { addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.log.lock().unwrap().accepted
    }

    fn closed(&self) -> BTreeSet<usize> {
        self.log.lock().unwrap().closed.clone()
    }

    fn dropped(&self) -> BTreeSet<usize> {
        self.log.lock().unwrap().dropped.clone()
    }
}

async fn serve(mut stream: TcpStream, id: usize, log: Arc<Mutex<Log>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_head(&mut stream, &mut buf).await else {
            log.lock().unwrap().closed.insert(id);
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let body = id.to_string();
        match path.as_str() {
            "/stall" => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                    .await;
                // Nothing more, until the gateway gives up on this connection.
                let mut rest = [0u8; 1024];
                while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
                log.lock().unwrap().closed.insert(id);
                return;
            }
            _ => {
                if path == "/slow" {
                    // A real sleep: a slow upstream keeps requests in flight
                    // together.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let close = if path == "/close" {
                    "Connection: close\r\n"
                } else {
                    ""
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\n{close}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                if path == "/close" {
                    log.lock().unwrap().closed.insert(id);
                    return;
                }
                if path == "/id-then-close" {
                    // A real sleep: the connection is idle in the gateway's
                    // pool when the upstream closes it.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    drop(stream);
                    log.lock().unwrap().dropped.insert(id);
                    return;
                }
            }
        }
    }
}

/// Reads until a complete request head is buffered; `None` on EOF.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The config with `pool` (keys and values) set on the upstream.
/// One worker, so that every client connection shares one pool (each
/// worker keeps its own, see `each_worker_reuses_its_own_connections`).
fn pool_config(upstream: &RawUpstream, pool: &[(&str, toml::Value)]) -> String {
    edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        set(doc, "server", "workers", 1);
        for (key, value) in pool {
            set(doc, "upstreams.0", key, value.clone());
        }
    })
}

async fn get(gw: &portcullis::Gateway, path: &str) -> (u16, String) {
    let resp = client()
        .get(format!("http://{}{path}", gw.public_addr()))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn idle(gw: &portcullis::Gateway) -> usize {
    gw.shared().policy.load().upstreams[0].idle_connections()
}

/// How long the pool's background work gets to show.
const SOON: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread")]
async fn sequential_requests_reuse_one_connection() {
    let upstream = RawUpstream::start().await;
    let gw = start_gateway(&pool_config(&upstream, &[])).await;
    for _ in 0..5 {
        assert_eq!(get(&gw, "/id").await, (200, "1".to_string()));
    }
    assert_eq!(upstream.accepted(), 1);
    assert_eq!(idle(&gw), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_worker_reuses_its_own_connections() {
    let upstream = RawUpstream::start().await;
    let text = edit(&pool_config(&upstream, &[]), |doc| {
        set(doc, "server", "workers", 2)
    });
    let gw = start_gateway(&text).await;
    // Six client connections opened one after another: the spread gives
    // each worker some (one is never two ahead of the other).
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(TcpStream::connect(gw.public_addr()).await.unwrap());
    }
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        for stream in &mut clients {
            let answer = get_on(stream, "/id").await.expect("an answer");
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            seen.insert(answer.rsplit("\r\n\r\n").next().unwrap().to_string());
        }
    }
    // One request at a time: each worker opened one upstream connection
    // and reused it, and never took the other worker's.
    assert_eq!(upstream.accepted(), 2, "connections seen: {seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(idle(&gw), 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    let upstream = RawUpstream::start().await;
    let gw = start_gateway(&pool_config(&upstream, &[])).await;
    for round in 1..=3 {
        // The upstream closes each connection 50 ms after answering on it;
        // the next request comes after that and must not fail.
        let (status, body) = get(&gw, "/id-then-close").await;
        assert_eq!((status, body), (200, round.to_string()));
        wait_until(
            &format!("the upstream to close connection {round}"),
            Duration::from_secs(5),
            || upstream.dropped().contains(&round),
        )
        .await;
    }
    assert_eq!(upstream.accepted(), 3, "each request needed a new connection");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_the_upstream_asked_to_close_is_not_pooled() {
    let upstream = RawUpstream::start().await;
    let gw = start_gateway(&pool_config(&upstream, &[])).await;
    assert_eq!(get(&gw, "/close").await, (200, "1".to_string()));
    assert_eq!(idle(&gw), 0);
    assert_eq!(get(&gw, "/id").await, (200, "2".to_string()));
    assert_eq!(get(&gw, "/id").await, (200, "2".to_string()));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let upstream = RawUpstream::start().await;
    let gw = start_gateway(&pool_config(&upstream, &[("idle_timeout", "200ms".into())])).await;
    assert_eq!(get(&gw, "/id").await, (200, "1".to_string()));
    assert_eq!(idle(&gw), 1);
    assert!(
        eventually(SOON, || upstream.closed().contains(&1)).await,
        "the idle connection was not closed"
    );
    assert_eq!(idle(&gw), 0);
    assert_eq!(get(&gw, "/id").await, (200, "2".to_string()));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_more_than_max_idle_connections_are_kept() {
    let upstream = RawUpstream::start().await;
    let gw = start_gateway(&pool_config(&upstream, &[("max_idle_connections", 2.into())])).await;
    // Four requests in flight at once need four connections; two stay.
    let requests = (0..4).map(|_| get(&gw, "/slow"));
    let answers = futures_util::future::join_all(requests).await;
    let ids: BTreeSet<String> = answers.into_iter().map(|(_, body)| body).collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(
        eventually(SOON, || upstream.closed().len() == 2).await,
        "{:?}",
        upstream.closed()
    );
    assert_eq!(idle(&gw), 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_abandoned_mid_body_does_not_poison_the_pool() {
    let upstream = RawUpstream::start().await;
    let gw = start_gateway(&pool_config(&upstream, &[])).await;
    assert_eq!(get(&gw, "/id").await, (200, "1".to_string()));

    // Read the head and the first chunk of a body that never ends, then go.
    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    stream
        .write_all(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("first") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .expect("the first chunk arrives")
            .unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stream);

    // The half-read connection (number 1, taken from the pool) is closed,
    // not pooled: the next requests are answered properly on a new one.
    assert!(
        eventually(SOON, || upstream.closed().contains(&1)).await,
        "{:?}",
        upstream.closed()
    );
    for _ in 0..3 {
        assert_eq!(get(&gw, "/id").await, (200, "2".to_string()));
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_without_a_body_return_their_connection() {
    let upstream = common::TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        set(doc, "server", "workers", 1);
    });
    let gw = start_gateway(&text).await;
    for _ in 0..3 {
        let resp = client()
            .head(format!("http://{}/x", gw.public_addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert!(eventually(SOON, || idle(&gw) == 1).await, "{} idle", idle(&gw));
    gw.shutdown().await;
}
