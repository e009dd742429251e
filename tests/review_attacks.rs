//! Attacks on the pipeline's new code paths, through real sockets, from a
//! review of the change that introduced them. Each test failed against the
//! code as reviewed and passes since its fix; each has a positive control,
//! so that a failure is the gateway's, not the harness's.

mod common;

use std::time::{Duration, Instant};

use common::h2::{ANSWER_LIMIT, Field, H2Connection, closes_within, h2_frame, kind, request_frames};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn get_fields(path: &[u8]) -> [Field<'_>; 4] {
    [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"app.example"),
    ]
}

// ---------------------------------------------------------------------------
// Connection watchdog
// ---------------------------------------------------------------------------

/// An HTTP/2 client that announces a zero flow-control window
/// (SETTINGS_INITIAL_WINDOW_SIZE = 0) and sends one tiny GET: the gateway
/// can send the response HEADERS but never its DATA, so the response body
/// (and with it the request's in-flight count) is never finished. The
/// watchdog treats "a request in flight" as never idle, so the connection,
/// and its `max_connections` slot, are held for as long as the client
/// likes: one small request per connection locks every other client out.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_client_that_never_opens_its_window_cannot_hold_a_connection_slot_forever() {
    let upstream = TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        set(doc, "server", "header_read_timeout", "1s");
        set(doc, "server", "idle_timeout", "2s");
        set(doc, "server", "max_connections", 1);
    });
    let gw = start_gateway(&text).await;
    let addr = gw.public_addr();

    // Positive control: the same request with the default window is
    // answered, and the idle connection is then closed after the idle
    // timeout, freeing the one slot.
    let mut control = H2Connection::open(addr).await;
    let answer = control.exchange(&get_fields(b"/control"), None).await;
    assert_eq!(answer.status, Some(200), "{answer:?}");
    let mut control = control.into_stream();
    assert!(
        closes_within(&mut control, Duration::from_secs(6)).await,
        "control: an idle HTTP/2 connection was not closed"
    );

    // The attack: a zero window, then one GET.
    let mut hello = h2_frame(kind::SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]);
    hello.extend(request_frames(1, &get_fields(b"/stalled"), None, true));
    let mut conn = H2Connection::open_with(addr, &hello).await;
    let _ = conn.next_stream();
    assert!(conn.ping(*b"barrier1", ANSWER_LIMIT).await, "{:?}", conn.goaway());
    wait_until(
        "the request to reach the upstream",
        Duration::from_secs(5),
        || upstream.last().target == "/stalled",
    )
    .await;
    let mut stalled = conn.into_stream();
    // Header timeout 1 s, idle timeout 2 s: well past both.
    let started = Instant::now();
    let closed = closes_within(&mut stalled, Duration::from_secs(8)).await;
    assert!(
        closed,
        "a response the client never lets through held the connection (and the only \
         max_connections slot) for {:?}",
        started.elapsed()
    );
    gw.shutdown().await;
}

/// The admin listener's requests never go through `Exchange`, so its
/// connections never record a request: the watchdog sees a connection that
/// has "never started a request" and closes it `header_read_timeout` after
/// it opened, whatever it is doing. Keep-alive on the admin listener ends at
/// the header timeout, not the idle timeout (item 15's bug, again, on the
/// listener item 8 was about), and a slow admin request is cut mid-flight.
#[tokio::test(flavor = "multi_thread")]
async fn admin_keep_alive_lasts_the_idle_timeout_not_the_header_timeout() {
    let upstream = TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        set(doc, "server", "header_read_timeout", "1s");
        set(doc, "server", "idle_timeout", "10s");
    });
    let gw = start_gateway(&text).await;

    // Positive control: the public listener keeps the connection.
    let mut public = TcpStream::connect(gw.public_addr()).await.unwrap();
    assert!(get_on(&mut public, "/a").await.is_some());
    // A real wait: longer than the header timeout, shorter than the idle one.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let again = get_on(&mut public, "/b").await;
    assert_eq!(
        again.as_deref().map(raw_status),
        Some(200),
        "control: public keep-alive"
    );

    let mut admin = TcpStream::connect(gw.admin_addr()).await.unwrap();
    let first = get_on(&mut admin, "/healthz").await;
    assert_eq!(first.as_deref().map(raw_status), Some(200));
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let second = get_on(&mut admin, "/healthz").await;
    assert_eq!(
        second.as_deref().map(raw_status),
        Some(200),
        "the admin listener closed a keep-alive connection at the header timeout \
         (1 s) instead of the idle timeout (10 s)"
    );
    gw.shutdown().await;
}

/// HTTP/1.1 pipelining (RFC 9112 §9.3.2): while request 1 waits for the
/// upstream, hyper reads ahead to watch for EOF, so the tap sees the first
/// segment of the pipelined request 2 and starts its header timer. The
/// watchdog lets a started head win over a request in flight, so request 1
/// is cut off (logged 499, the client gets nothing) after the header timeout
/// although the client did nothing wrong: hyper would not even read head 2
/// until response 1 was written.
#[tokio::test(flavor = "multi_thread")]
async fn a_pipelined_partial_head_does_not_cut_off_the_request_in_flight() {
    let upstream = TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        set(doc, "server", "header_read_timeout", "1s");
        set(doc, "server", "idle_timeout", "10s");
        *at(doc, "upstreams.0.timeout") = "10s".into();
    });
    let gw = start_gateway(&text).await;

    // Positive control: the same slow request alone is answered.
    let mut alone = TcpStream::connect(gw.public_addr()).await.unwrap();
    let answer = get_on(&mut alone, "/delay/2500").await;
    assert_eq!(answer.as_deref().map(raw_status), Some(200), "control");

    let mut stream = TcpStream::connect(gw.public_addr()).await.unwrap();
    stream
        .write_all(b"GET /delay/2500 HTTP/1.1\r\nHost: app.example\r\n\r\nGET /next HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let first = read_response(&mut stream).await;
    assert_eq!(
        first.as_deref().map(raw_status),
        Some(200),
        "the in-flight request was cut off because a pipelined head had begun"
    );
    stream.write_all(b"st: app.example\r\n\r\n").await.unwrap();
    let second = read_response(&mut stream).await;
    assert_eq!(second.as_deref().map(raw_status), Some(200));
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// [auth] failure_limit
// ---------------------------------------------------------------------------

/// The failure limit is checked (`peek`) before the lookup and counted only
/// after it. Requests that arrive while the first lookups are still running
/// all pass the check, so a client that sends its guesses concurrently (one
/// HTTP/2 connection, many streams) gets a store query per guess, however
/// low the limit: the limit holds only for a sequential client.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_guesses_cannot_overshoot_the_failure_limit() {
    let upstream = TestUpstream::start().await;
    let text = config_with_store(
        "development",
        &upstream.url(),
        None,
        r#"
[auth]
failure_limit = "5 per minute"

[[routes]]
path = "/api"
upstream = "app"
auth = ["api_key"]
"#,
    );
    let gw = start_gateway(&text).await;
    let url = format!("http://{}/api/x", gw.public_addr());

    // Positive control: sequentially, exactly 5 guesses are looked up.
    let seq = client();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let resp = seq
            .get(&url)
            .header("x-api-key", portcullis::keys::generate().key)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429], "control");
    gw.shutdown().await;

    let gw = start_gateway(&text).await;
    let url = format!("http://{}/api/x", gw.public_addr());
    let h2 = h2_client();
    let guesses = (0..100).map(|_| {
        h2.get(&url)
            .header("x-api-key", portcullis::keys::generate().key)
            .send()
    });
    let answers = futures_util::future::join_all(guesses).await;
    let looked_up = answers
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 401))
        .count();
    let misses = metric(
        &metrics_text(gw.admin_addr()).await,
        "portcullis_key_cache_lookups_total{result=\"miss\"}",
    );
    assert!(
        looked_up <= 10 && misses <= 10.0,
        "with failure_limit = 5 per minute, {looked_up} of 100 concurrent guesses were \
         answered 401 after {misses} store lookups"
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Credentials in logged upstream bodies
// ---------------------------------------------------------------------------

/// Credentials that reach the log through a masked 5xx body:
/// - a key given in the route's query parameter percent-encoded (the
///   gateway decodes it to authenticate, the upstream echoes the raw
///   target, and only the decoded text is searched for);
/// - a key sent in `X-API-Key` to a public route (forwarded as is, never
///   recorded as a credential, though docs/configuration.md says every
///   credential the request carried is redacted).
/// And a masked body longer than 8 KiB is not logged at all, though the
/// docs say its first 8 KiB is.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_any_spelling_never_reach_the_log() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    let text = format!(
        r#"environment = "production"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_timeout = "5s"

[store]
url = "sqlite://portcullis.db"

[[upstreams]]
name = "app"
targets = ["{}"]
timeout = "5s"

[[routes]]
path = "/api"
upstream = "app"
auth = ["api_key"]
api_key_query = "api_key"

[[routes]]
path = "/public"
upstream = "app"
auth = ["none"]
"#,
        upstream.url()
    );
    std::fs::write(&path, text).unwrap();
    let key = cli_key(&path, "echo");
    let secret = key.rsplit('_').next().unwrap().to_string();
    let bin = Binary::serve(&path, &[]);
    let logged = |request_id: &str| {
        let needle = format!("\"request_id\":\"{request_id}\"");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = bin
                .output()
                .lines()
                .find(|l| l.contains("masked upstream error response") && l.contains(&needle))
                .map(String::from);
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // Positive control: the key as the docs show it is redacted.
    let resp = client()
        .get(format!("http://{}/api/echo-error?api_key={key}", bin.public))
        .header("x-request-id", "plain-key")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 500).await;
    let line = logged("plain-key").expect("a masked-body line");
    assert!(
        line.contains("[REDACTED]") && !line.contains(&secret),
        "control: {line}"
    );

    // 1. The same key, its underscores percent-encoded: it authenticates...
    let encoded = key.replace('_', "%5F");
    let resp = client()
        .get(format!("http://{}/api/echo-error?api_key={encoded}", bin.public))
        .header("x-request-id", "encoded-key")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 500).await;
    assert!(upstream.last().target.contains(&encoded));
    let encoded_line = logged("encoded-key").expect("a masked-body line");

    // 2. A key sent to a public route.
    let resp = client()
        .get(format!("http://{}/public/echo-error", bin.public))
        .header("x-api-key", &key)
        .header("x-request-id", "public-key")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 500).await;
    let public_line = logged("public-key").expect("a masked-body line");

    // 3. A body just over 8 KiB (the echo of two 4.5 KB headers: one field
    // of 9 KB is over `max_header_field_size`).
    let resp = client()
        .get(format!("http://{}/public/echo-error", bin.public))
        .header("x-pad-a", "p".repeat(4500))
        .header("x-pad-b", "p".repeat(4500))
        .header("x-request-id", "long-body")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 500).await;
    let long_line = logged("long-body").expect("a masked-body line");

    let mut leaks = Vec::new();
    if encoded_line.contains(&secret) {
        leaks.push(format!("percent-encoded query key: {encoded_line}"));
    }
    if public_line.contains(&secret) {
        leaks.push(format!("key sent to a public route: {public_line}"));
    }
    if !long_line.contains("GET /public/echo-error") {
        leaks.push(format!(
            "not logged, although the docs promise the first 8 KiB: {}",
            &long_line[..long_line.len().min(300)]
        ));
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n\n"));
}

// ---------------------------------------------------------------------------
// Request-head limits
// ---------------------------------------------------------------------------

/// HTTP/2 clients may split `Cookie` into one field per cookie (RFC 9113
/// §8.2.3; Firefox and nghttp2 do, for HPACK), and the gateway joins them
/// into one line for the upstream. `max_header_count` counts each crumb, so
/// a browser with many cookies gets 431 over HTTP/2 for the request it may
/// send over HTTP/1.1.
#[tokio::test(flavor = "multi_thread")]
async fn http2_cookie_crumbs_count_as_one_header_like_the_line_they_become() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    let cookies: Vec<String> = (0..120).map(|i| format!("c{i}=v{i}")).collect();

    // Positive control: the same cookies in one HTTP/1.1 line pass.
    let answer = raw(
        gw.public_addr(),
        format!(
            "GET /one-line HTTP/1.1\r\nHost: x\r\nCookie: {}\r\nConnection: close\r\n\r\n",
            cookies.join("; ")
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "control: {answer}");

    let mut fields: Vec<Field<'_>> = get_fields(b"/crumbs").to_vec();
    for c in &cookies {
        fields.push((b"cookie", c.as_bytes()));
    }
    let mut conn = H2Connection::open(gw.public_addr()).await;
    let answer = conn.exchange(&fields, None).await;
    assert_eq!(
        answer.status,
        Some(200),
        "120 cookie crumbs over HTTP/2 were refused: {answer:?}"
    );
    gw.shutdown().await;
}

/// An upstream that answers every request head with `200 ok`, whatever its
/// size (the test upstream's hyper refuses more than 100 headers).
async fn plain_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    head.drain(..end);
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `max_header_count` may be set up to 1000, and hyper is built to accept
/// twice it, but the framing tap parses heads with room for 128 headers
/// (`MAX_HEADERS` in src/connection/tap.rs): past that it switches off, the
/// request has no framing record, and the framing stage refuses it with 400
/// and closes the connection. A request within the configured limit is
/// refused, with the wrong status.
#[tokio::test(flavor = "multi_thread")]
async fn a_head_within_a_raised_header_count_limit_is_served() {
    let upstream = plain_upstream().await;
    let text = edit(
        &config("development", &format!("http://{upstream}"), PUBLIC_ROOT),
        |doc| {
            set(doc, "server", "max_header_count", 300);
        },
    );
    let gw = start_gateway(&text).await;
    let request = |n: usize| {
        let mut head = "GET /many HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_string();
        for i in 0..n {
            head.push_str(&format!("x-h{i}: v\r\n"));
        }
        head.push_str("\r\n");
        head
    };
    // Positive control: 120 headers pass.
    let answer = raw(gw.public_addr(), request(120).as_bytes()).await;
    assert_eq!(raw_status(&answer), 200, "control: {answer}");
    let answer = raw(gw.public_addr(), request(150).as_bytes()).await;
    assert_eq!(
        raw_status(&answer),
        200,
        "150 headers with max_header_count = 300: {}",
        answer.lines().last().unwrap_or_default()
    );
    gw.shutdown().await;
}
