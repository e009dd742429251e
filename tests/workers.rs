//! `[server] workers`: the public listener served by per-core workers,
//! through the real binary: connections spread evenly over the workers
//! (even when they arrive in one burst), one connection cap for all of
//! them, and a drain on SIGTERM that waits for every worker.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn write_config(dir: &std::path::Path, upstream: &str, server: &str) -> std::path::PathBuf {
    let path = dir.join("portcullis.toml");
    let text = format!(
        r#"environment = "development"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_timeout = "5s"
header_read_timeout = "30s"
{server}

[[upstreams]]
name = "app"
targets = ["{upstream}"]
timeout = "5s"

[[routes]]
path = "/"
upstream = "app"
auth = ["none"]
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `portcullis_worker_connections_open`, by worker, from the admin listener.
async fn open_by_worker(admin: SocketAddr) -> Vec<(String, i64)> {
    let text = metrics_text(admin).await;
    let mut open: Vec<(String, i64)> = text
        .lines()
        .filter_map(|line| line.strip_prefix("portcullis_worker_connections_open{worker=\""))
        .map(|rest| {
            let (worker, value) = rest.split_once("\"} ").unwrap();
            (worker.to_string(), value.trim().parse().unwrap())
        })
        .collect();
    open.sort();
    open
}

/// The binary with `server` lines in its `[server]` table, in front of a
/// test upstream (both, and the config's folder, live as long as the tuple).
async fn serve(server: &str) -> (TestUpstream, tempfile::TempDir, Binary) {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &upstream.url(), server);
    let bin = Binary::serve(&path, &[]);
    (upstream, dir, bin)
}

/// Opens a connection and has one request answered on it; keeps it open.
async fn connection_with_one_answer(public: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(public).await.unwrap();
    let answer = get_on(&mut stream, "/").await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_connections_is_spread_evenly_over_the_workers() {
    let (_upstream, _dir, bin) = serve("workers = 3").await;
    // All at once, as a load balancer's pool or wrk opens them: each
    // worker is woken for each, and whichever takes it must pass it on
    // when it is ahead.
    let opening: Vec<_> = (0..60)
        .map(|_| tokio::spawn(connection_with_one_answer(bin.public)))
        .collect();
    let mut held = Vec::new();
    for connection in opening {
        held.push(connection.await.unwrap());
    }
    let open = open_by_worker(bin.admin).await;
    let workers: Vec<&str> = open.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(workers, ["1", "2", "3"], "{open:?}");
    let counts: Vec<i64> = open.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts.iter().sum::<i64>(), 60, "{open:?}");
    let (fewest, most) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    // A worker hands a connection on when it is more than one ahead of the
    // least busy; two accepting at the same moment can each keep one.
    assert!(most - fewest <= 3, "uneven: {open:?}");

    // Closed connections leave their worker's count.
    held.truncate(30);
    let admin = bin.admin;
    wait_until_async(
        "the closed connections to be counted",
        Duration::from_secs(5),
        async || open_by_worker(admin).await.iter().map(|(_, n)| n).sum::<i64>() == 30,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connection_cap_holds_across_the_workers() {
    let (_upstream, _dir, bin) = serve("workers = 2\nmax_connections = 4").await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connection_with_one_answer(bin.public).await);
    }
    // The fifth waits in the kernel's backlog, whichever worker it wakes.
    let mut fifth = TcpStream::connect(bin.public).await.unwrap();
    fifth
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(700), fifth.read(&mut buf)).await;
    assert!(early.is_err(), "five connections were served under a cap of four");
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(5), fifth.read(&mut buf))
        .await
        .expect("served once a slot was free")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_waits_for_the_requests_of_every_worker() {
    let (upstream, _dir, mut bin) = serve("workers = 3").await;
    // Six slow requests on six connections: every worker has some.
    let in_flight: Vec<_> = (0..6)
        .map(|_| {
            let url = format!("http://{}/delay/1500", bin.public);
            tokio::spawn(async move { reqwest::Client::new().get(url).send().await })
        })
        .collect();
    wait_until(
        "the requests to reach the upstream",
        Duration::from_secs(5),
        || upstream.count() >= 6,
    )
    .await;
    let open = open_by_worker(bin.admin).await;
    assert!(
        open.iter().all(|(_, n)| *n >= 1),
        "a worker has no request: {open:?}"
    );
    bin.signal("TERM");
    assert!(
        bin.wait_for_output("draining in-flight requests", Duration::from_secs(5)),
        "{}",
        bin.output()
    );
    assert!(
        TcpStream::connect(bin.public).await.is_err(),
        "the listener still accepts while draining"
    );
    for request in in_flight {
        let response = request.await.unwrap().expect("the in-flight request completed");
        assert_eq!(response.status(), 200);
    }
    let status = bin
        .wait(Duration::from_secs(10))
        .expect("the process exits after draining");
    assert!(status.success(), "{status:?}\n{}", bin.output());
}

#[test]
fn workers_must_be_between_one_and_the_maximum() {
    let base = config("development", "http://127.0.0.1:9", "");
    for (workers, problem) in [(0, "server.workers"), (257, "must be at most 256")] {
        let text = edit(&base, |doc| set(doc, "server", "workers", workers));
        let error = compile_offline(&text).err().expect("refused");
        assert!(error.contains(problem), "{workers}: {error}");
    }
    let text = edit(&base, |doc| set(doc, "server", "workers", 4));
    let policy = compile_offline(&text).expect("four workers are fine");
    assert_eq!(policy.server.workers.map(|w| w.get()), Some(4));
}
