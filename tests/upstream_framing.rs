//! What the gateway's HTTP/1.1 upstream client (src/upstream/h1.rs) does
//! with responses a broken or hostile upstream sends, through the server:
//! a second response smuggled after the first never reaches a client,
//! conflicting or invalid lengths are a 502, `Transfer-Encoding` beside
//! `Content-Length` is read as chunked and the connection closed, interim
//! 1xx heads are skipped, close-delimited bodies and trailers are read, an
//! early answer to an upload is passed on, and an endless head is cut off.
//!
//! The upstream is a raw TCP server that answers each request with the
//! bytes its path names, numbers its connections, and says which number
//! served a request in `X-Conn` where the script allows.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct ScriptedUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl ScriptedUpstream {
    async fn start() -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let id = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(serve(stream, id));
            }
        });
        ScriptedUpstream { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The bytes sent for `path` on connection `id`, and whether the
/// connection closes after them.
fn script(path: &str, id: usize) -> (Vec<u8>, bool) {
    let ok = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nX-Conn: {id}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let bytes = match path {
        "/id" => ok(&id.to_string()),
        // A second response hidden after the first one's end.
        "/smuggle" => format!("{}HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged", ok("ok")),
        "/conflict" => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nxyz".into(),
        "/plus" => "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nxy".into(),
        "/te-and-cl" => format!(
            "HTTP/1.1 200 OK\r\nX-Conn: {id}\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
        "/trailers" => format!(
            "HTTP/1.1 200 OK\r\nX-Conn: {id}\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Digest: z\r\n\r\n"
        ),
        "/bad-chunk" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX\r\n0\r\n\r\n".into(),
        "/interim" => format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n{}",
            ok("final")
        ),
        "/until-close" => "HTTP/1.1 200 OK\r\n\r\nall of this".into(),
        "/folded" => "HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n".into(),
        "/huge-head" => format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
            "a".repeat(70 * 1024)
        ),
        "/early" => {
            "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!".into()
        }
        _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
    };
    let closes = matches!(path, "/until-close" | "/early" | "/bad-chunk");
    (bytes.into_bytes(), closes)
}

async fn serve(mut stream: TcpStream, id: usize) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        // A request body (only GETs and the early answer here): the early
        // answer goes before reading any of it.
        let (answer, closes) = script(&path, id);
        if stream.write_all(&answer).await.is_err() {
            return;
        }
        if closes {
            if path == "/early" {
                // Keep reading (and dropping) what the gateway still sends,
                // then close, as a server that answered early does.
                let _ = stream.shutdown().await;
                let mut sink = [0u8; 65536];
                while matches!(
                    tokio::time::timeout(Duration::from_secs(2), stream.read(&mut sink)).await,
                    Ok(Ok(n)) if n > 0
                ) {}
            }
            return;
        }
    }
}

/// No retries and a breaker that never opens: each broken answer is seen
/// once, as the client's own 502. One worker, so that every client
/// connection shares one pool (each worker keeps its own).
fn gateway_config(upstream: &ScriptedUpstream) -> String {
    let table = |text: &str| toml::Value::Table(text.parse().unwrap());
    edit(
        &config("development", &format!("http://{}", upstream.addr), PUBLIC_ROOT),
        |doc| {
            set(doc, "server", "workers", 1);
            set(doc, "upstreams.0", "retries", table("attempts = 0"));
            set(doc, "upstreams.0", "passive_health", table("max_failures = 100"));
        },
    )
}

async fn get(gw: &portcullis::Gateway, path: &str) -> reqwest::Response {
    client()
        .get(format!("http://{}{path}", gw.public_addr()))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_smuggled_after_another_never_reaches_a_client() {
    let upstream = ScriptedUpstream::start().await;
    let gw = start_gateway(&gateway_config(&upstream)).await;
    let first = get(&gw, "/smuggle").await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap(), "ok");
    // The connection with bytes left over is closed, never pooled: the
    // next request goes on a new connection and gets its own answer.
    for _ in 0..3 {
        let next = get(&gw, "/id").await;
        assert_eq!(next.status(), 200);
        let body = next.text().await.unwrap();
        assert_ne!(body, "forged");
        assert_eq!(body, "2", "a fresh connection, then reused");
    }
    assert_eq!(upstream.accepted(), 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicting_invalid_and_folded_heads_are_a_502() {
    let upstream = ScriptedUpstream::start().await;
    let gw = start_gateway(&gateway_config(&upstream)).await;
    for path in ["/conflict", "/plus", "/folded", "/huge-head"] {
        let resp = get(&gw, path).await;
        let doc = assert_problem(resp, 502).await;
        // None of the upstream's bytes leak into the problem document.
        for leaked in ["xy", "folded"] {
            assert!(!problem_text_without_id(&doc).contains(leaked), "{path}: {doc}");
        }
    }
    // Each broken connection was closed; a good request still works.
    assert_eq!(get(&gw, "/id").await.status(), 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transfer_encoding_beside_a_length_is_read_chunked_and_the_connection_closed() {
    let upstream = ScriptedUpstream::start().await;
    let gw = start_gateway(&gateway_config(&upstream)).await;
    let resp = get(&gw, "/te-and-cl").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-conn"], "1");
    assert!(resp.headers().get("content-length").is_none_or(|v| v != "100"));
    assert_eq!(resp.text().await.unwrap(), "hello");
    let next = get(&gw, "/id").await;
    assert_eq!(
        next.text().await.unwrap(),
        "2",
        "not the connection that had both framings"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chunk_extensions_trailers_interim_heads_and_close_delimited_bodies_are_read() {
    let upstream = ScriptedUpstream::start().await;
    let gw = start_gateway(&gateway_config(&upstream)).await;
    let resp = get(&gw, "/trailers").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "abcde");
    // The chunked response ended cleanly: its connection is used again.
    let resp = get(&gw, "/interim").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-conn"], "1");
    assert_eq!(resp.text().await.unwrap(), "final");
    let resp = get(&gw, "/until-close").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "all of this");
    assert_eq!(get(&gw, "/id").await.text().await.unwrap(), "2");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_chunk_aborts_the_response_and_its_connection() {
    let upstream = ScriptedUpstream::start().await;
    let gw = start_gateway(&gateway_config(&upstream)).await;
    let answer = client()
        .get(format!("http://{}/bad-chunk", gw.public_addr()))
        .send()
        .await;
    // The head was fine, so the gateway started the response; the bad chunk
    // then ends the client's connection, before or after the head got out.
    match answer {
        Ok(resp) => {
            assert_eq!(resp.status(), 200);
            assert!(
                resp.bytes().await.is_err(),
                "the client sees the body cut off, not a reframed one"
            );
        }
        Err(error) => assert!(!error.is_timeout(), "{error}"),
    }
    assert_eq!(get(&gw, "/id").await.text().await.unwrap(), "2");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_answers_an_upload_early_is_passed_on() {
    let upstream = ScriptedUpstream::start().await;
    let gw = start_gateway(&gateway_config(&upstream)).await;
    // 8 MiB: more than the sockets buffer, so the gateway is still sending
    // when the answer comes.
    let body = vec![b'x'; 8 << 20];
    let resp = client()
        .post(format!("http://{}/early", gw.public_addr()))
        .body(body)
        .send()
        .await;
    match resp {
        Ok(resp) => {
            assert_eq!(resp.status(), 413);
            assert_eq!(resp.text().await.unwrap(), "big!");
        }
        // The gateway may close the client connection before the client
        // finished sending, which some clients report as an error; what
        // must never happen is a 502 or a hang.
        Err(error) => assert!(!error.is_timeout(), "{error}"),
    }
    assert_eq!(get(&gw, "/id").await.status(), 200);
    gw.shutdown().await;
}
