//! Reverse proxying through the real server: streaming, keep-alive,
//! hop-by-hop headers, forwarding headers, request IDs, HTTP/2.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn proxies_method_path_query_and_body() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    let resp = client()
        .post(format!("http://{}/items/7?expand=true&x=%2F", gw.public_addr()))
        .body("hello upstream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = upstream.last();
    assert_eq!(got.method, "POST");
    assert_eq!(
        got.target, "/items/7?expand=true&x=%2F",
        "the query is passed through untouched"
    );
    assert_eq!(got.body, "hello upstream");
    assert_eq!(
        got.headers["host"],
        upstream.addr.to_string(),
        "Host is the target's by default"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_stream_both_ways_in_both_framings() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    // 8 MiB as a chunked upload from a stream of pieces.
    let piece = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = (0..128).map(|_| Ok(piece.clone())).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(pieces));
    let resp = client()
        .put(format!("http://{}/upload", gw.public_addr()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let doc = json(resp).await;
    assert_eq!(doc["body_len"], 8 * 1024 * 1024);
    assert_eq!(upstream.last().body.len(), 8 * 1024 * 1024);
    // And with Content-Length.
    let resp = client()
        .post(format!("http://{}/upload", gw.public_addr()))
        .body(vec![b'y'; 3 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(json(resp).await["body_len"], 3 * 1024 * 1024);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn request_and_response_bodies_are_not_buffered() {
    // The upstream echoes each chunk as it arrives. The client sends the
    // second chunk only after reading the first one back, so any full
    // buffering in either direction would stall this test.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    let mut stream = tokio::net::TcpStream::connect(gw.public_addr()).await.unwrap();
    stream
        .write_all(b"POST /echo-stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    for word in ["first-piece", "second-piece", "third-piece"] {
        stream
            .write_all(format!("{:x}\r\n{word}\r\n", word.len()).as_bytes())
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !seen.contains(word) {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!("`{word}` did not come back while the request was still open: {seen}")
                })
                .unwrap();
            assert!(n > 0, "connection closed early: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    assert!(seen.starts_with("HTTP/1.1 200 OK"), "{seen}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    let addr = gw.public_addr();
    let mut request = Vec::new();
    for i in 0..5 {
        request.extend_from_slice(format!("GET /k/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    }
    request.extend_from_slice(b"GET /k/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = raw(addr, &request).await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 6, "{answer}");
    assert_eq!(upstream.count(), 6);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    let answer = raw(
        gw.public_addr(),
        b"GET /hop HTTP/1.1\r\nHost: x\r\nConnection: close, X-Client-Hop\r\nX-Client-Hop: 1\r\n\
          Keep-Alive: timeout=9\r\nProxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n\
          TE: trailers\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let got = upstream.last();
    for gone in [
        "x-client-hop",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(!got.headers.contains_key(gone), "{gone} reached the upstream");
    }
    assert_eq!(got.headers["x-kept"], "yes");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("x-upstream-kept: yes"), "{answer}");
    for gone in ["x-upstream-hop", "keep-alive:", "proxy-authenticate"] {
        assert!(!lower.contains(gone), "{gone} reached the client: {answer}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_are_set_and_spoofed_ones_replaced() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    client()
        .get(format!("http://{}/who", gw.public_addr()))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("x-real-ip", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-portcullis-consumer", "admin")
        .header("x-portcullis-scopes", "everything")
        .header("x_portcullis_user", "root")
        .header("x-original-url", "/admin")
        .header("x-rewrite-url", "/admin")
        .header("x-http-method-override", "DELETE")
        .header("x-forwarded-prefix", "/evil")
        .send()
        .await
        .unwrap();
    let got = upstream.last();
    assert_eq!(got.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(got.headers["x-forwarded-proto"], "http");
    assert_eq!(got.headers["x-forwarded-host"], gw.public_addr().to_string());
    assert!(!got.headers.contains_key("forwarded"));
    for name in [
        "x-portcullis-consumer",
        "x-portcullis-scopes",
        "x_portcullis_user",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-forwarded-prefix",
    ] {
        assert!(!got.headers.contains_key(name), "{name} reached the upstream");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_kept_when_well_formed_and_generated_otherwise() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    let url = format!("http://{}/id", gw.public_addr());

    let resp = client()
        .get(&url)
        .header("x-request-id", "trace-abc_123.4:5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-abc_123.4:5");
    assert_eq!(upstream.last().headers["x-request-id"], "trace-abc_123.4:5");

    let long = "a".repeat(65);
    for bad in [long.as_str(), "has space", "quote\"d", "<script>"] {
        let resp = client()
            .get(&url)
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 32, "generated IDs are 32 hex digits");
        assert_eq!(upstream.last().headers["x-request-id"], id.as_str());
    }

    let a = client().get(&url).send().await.unwrap().headers()["x-request-id"].clone();
    let b = client().get(&url).send().await.unwrap().headers()["x-request-id"].clone();
    assert_ne!(a, b);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_are_served() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let resp = h2
        .post(format!("http://{}/over/h2", gw.public_addr()))
        .body("via h2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let got = upstream.last();
    assert_eq!(got.target, "/over/h2");
    assert_eq!(got.body, "via h2");
    assert_eq!(got.headers["x-forwarded-host"], gw.public_addr().to_string());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn preserve_host_sends_the_clients_host() {
    let upstream = TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), PUBLIC_ROOT), |doc| {
        set(doc, "upstreams.0", "preserve_host", true)
    });
    let gw = start_gateway(&text).await;
    let answer = raw(
        gw.public_addr(),
        b"GET / HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200);
    assert_eq!(upstream.last().headers["host"], "app.example.com");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn underscore_spellings_of_the_gateways_headers_never_reach_the_upstream() {
    let upstream = TestUpstream::start().await;
    let text = config("development", &upstream.url(), PUBLIC_ROOT);
    let spellings = [
        "X_Forwarded_Prefix",
        "X-Forwarded_Prefix",
        "X_Forwarded-Prefix",
        "X_Forwarded_Port",
        "X_Forwarded_Server",
        "X_Forwarded_For",
        "X_Forwarded_Host",
        "X_Real_IP",
        "X_Request_Id",
        "X_Portcullis_Consumer",
        "X-Portcullis_Scopes",
        "X_Original_URL",
        "X-Original_URI",
        "X_Rewrite_URL",
        "X_HTTP_Method_Override",
        "X-HTTP_Method",
        "X_Method-Override",
    ];
    for trusted in [false, true] {
        let text = edit(&text, |doc| {
            if trusted {
                set(
                    doc,
                    "server",
                    "trusted_proxies",
                    toml::Value::Array(vec!["127.0.0.1".into()]),
                );
            }
        });
        let gw = start_gateway(&text).await;
        let mut request = b"GET /x HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n".to_vec();
        for name in spellings {
            request.extend_from_slice(format!("{name}: /evil\r\n").as_bytes());
        }
        request.extend_from_slice(b"X-Forwarded-Prefix: /app\r\nX_Custom_Thing: kept\r\n\r\n");
        let answer = raw(gw.public_addr(), &request).await;
        assert_eq!(raw_status(&answer), 200, "{answer}");
        let got = upstream.last();
        for name in spellings {
            let lower = name.to_ascii_lowercase();
            if lower.contains('_') {
                assert!(
                    got.headers.get(&lower).is_none(),
                    "{name} reached the upstream (trusted: {trusted})"
                );
            }
        }
        assert_eq!(got.headers["x_custom_thing"], "kept");
        // The dashed spelling is how a trusted proxy states its prefix.
        assert_eq!(
            got.headers.get("x-forwarded-prefix").is_some(),
            trusted,
            "trusted: {trusted}"
        );
        assert_eq!(got.headers.get_all("x-forwarded-for").iter().count(), 1);
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_cookie_fields_reach_an_http1_upstream_as_one_line() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    let url = format!("http://{}/c", gw.public_addr());
    let resp = h2_client()
        .get(&url)
        .header("cookie", "session=abc")
        .header("cookie", "theme=dark")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let cookies: Vec<_> = upstream
        .last()
        .headers
        .get_all("cookie")
        .iter()
        .cloned()
        .collect();
    assert_eq!(cookies, ["session=abc; theme=dark"]);
    // HTTP/1 cookies pass as they were.
    client()
        .get(&url)
        .header("cookie", "a=1; b=2")
        .send()
        .await
        .unwrap();
    let cookies: Vec<_> = upstream
        .last()
        .headers
        .get_all("cookie")
        .iter()
        .cloned()
        .collect();
    assert_eq!(cookies, ["a=1; b=2"]);
    gw.shutdown().await;
}
