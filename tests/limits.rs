//! Limits on requests, through the real server: the request head (414,
//! 431, `Host`), bodies (413 before reading, streamed bodies cut off at the
//! limit), limits before authentication, and failed authentications.

mod common;

use common::*;
use tokio::io::AsyncWriteExt;

const ROUTES: &str = r#"
[[routes]]
id = "small"
path = "/small"
upstream = "app"
auth = ["none"]
max_body = "1KiB"

[[routes]]
id = "root"
path = "/"
upstream = "app"
auth = ["none"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_read() {
    let upstream = TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), ROUTES), |doc| {
        set(doc, "server", "max_body", "64KiB")
    });
    let gw = start_gateway(&text).await;
    let url = |path: &str| format!("http://{}{path}", gw.public_addr());

    let resp = client()
        .post(url("/small/a"))
        .body(vec![b'a'; 1025])
        .send()
        .await
        .unwrap();
    let doc = assert_problem(resp, 413).await;
    assert!(doc["detail"].as_str().unwrap().contains("1024 bytes"), "{doc}");
    let resp = client()
        .post(url("/small/a"))
        .body(vec![b'a'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "exactly the limit passes");
    assert_eq!(upstream.last().body.len(), 1024);

    // Routes without their own limit have the [server] default.
    let resp = client()
        .post(url("/other"))
        .body(vec![b'b'; 64 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_problem(resp, 413).await;
    let resp = client()
        .post(url("/other"))
        .body(vec![b'b'; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.count(), 2, "refused bodies never reached the upstream");

    // A client that sends a large body anyway gets to send it (it is read
    // and discarded) and reads its 413, rather than meeting a reset.
    for _ in 0..5 {
        let resp = client()
            .post(url("/small/a"))
            .body(vec![b'z'; 3 << 20])
            .send()
            .await
            .unwrap();
        assert_problem(resp, 413).await;
    }
    assert_eq!(upstream.count(), 2);
    // A client that waits for 100-continue is refused without being asked
    // for its body.
    let mut stream = tokio::net::TcpStream::connect(gw.public_addr()).await.unwrap();
    stream
        .write_all(
            b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = read_until_quiet(&mut stream).await;
    assert_eq!(raw_status(&answer), 413, "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert_eq!(upstream.count(), 2);
    gw.shutdown().await;
}

/// A chunked upload of `total` bytes in 256-byte chunks to `path`.
fn chunked_upload(path: &str, total: usize) -> Vec<u8> {
    let mut req =
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    let mut sent = 0;
    while sent < total {
        let n = 256.min(total - sent);
        req.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        req.extend(std::iter::repeat_n(b'c', n));
        req.extend_from_slice(b"\r\n");
        sent += n;
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_body_past_the_limit_never_reaches_the_upstream_whole() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), ROUTES)).await;

    // HTTP/1, chunked: under the limit it arrives whole...
    let answer = raw(gw.public_addr(), &chunked_upload("/small/ok", 1024)).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(upstream.last().body.len(), 1024);
    // ...past it the client gets 413 and the upstream no complete body.
    let before = upstream.count();
    let answer = raw(gw.public_addr(), &chunked_upload("/small/big", 4096)).await;
    assert_eq!(raw_status(&answer), 413, "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    for got in &upstream.received()[before..] {
        assert!(
            got.body.len() <= 1024,
            "{} bytes reached the upstream",
            got.body.len()
        );
        assert!(!got.body_complete, "the upstream saw a complete request");
    }

    // A large chunked upload is cut off at the limit, and the client still
    // reads its 413.
    for _ in 0..3 {
        let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = (0..64)
            .map(|_| Ok(bytes::Bytes::from(vec![b'e'; 32 * 1024])))
            .collect();
        let resp = client()
            .post(format!("http://{}/small/big", gw.public_addr()))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)))
            .send()
            .await
            .unwrap();
        assert_problem(resp, 413).await;
    }
    for got in &upstream.received()[before..] {
        assert!(
            got.body.len() <= 1024,
            "{} bytes reached the upstream",
            got.body.len()
        );
        assert!(!got.body_complete, "the upstream saw a complete request");
    }

    // HTTP/2, a streamed body without content-length.
    let h2 = h2_client();
    let stream_of = |total: usize| {
        let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = (0..total / 256)
            .map(|_| Ok(bytes::Bytes::from(vec![b'd'; 256])))
            .collect();
        reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
    };
    let url = format!("http://{}/small/h2", gw.public_addr());
    let resp = h2.post(&url).body(stream_of(1024)).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().body.len(), 1024);
    let before = upstream.count();
    let resp = h2.post(&url).body(stream_of(8192)).send().await.unwrap();
    assert_problem(resp, 413).await;
    for got in &upstream.received()[before..] {
        assert!(
            got.body.len() <= 1024,
            "{} bytes reached the upstream",
            got.body.len()
        );
        assert!(!got.body_complete, "the upstream saw a complete request");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn request_heads_past_the_limits_get_problem_documents() {
    let upstream = TestUpstream::start().await;
    let text = edit(&config("development", &upstream.url(), ROUTES), |doc| {
        set(doc, "server", "max_uri_length", "1KiB");
        set(doc, "server", "max_header_count", 20);
        set(doc, "server", "max_header_size", "8KiB");
    });
    let gw = start_gateway(&text).await;
    let url = |path: &str| format!("http://{}{path}", gw.public_addr());

    let resp = client()
        .get(url(&format!("/{}", "a".repeat(1000))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "under the URI limit");
    let resp = client()
        .get(url(&format!("/{}", "a".repeat(1100))))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 414).await;

    let with_headers = |n: usize, size: usize| {
        let mut req = client().get(url("/h"));
        for i in 0..n {
            req = req.header(format!("x-h{i}"), "v".repeat(size));
        }
        req
    };
    // reqwest adds a few headers of its own (host, accept, …).
    assert_eq!(with_headers(10, 10).send().await.unwrap().status(), 200);
    assert_problem(with_headers(25, 10).send().await.unwrap(), 431).await;
    assert_eq!(with_headers(1, 7000).send().await.unwrap().status(), 200);
    assert_problem(with_headers(1, 9000).send().await.unwrap(), 431).await;
    // Far past the limits, hyper's own buffer refuses the head: still no 5xx.
    let answer = raw(
        gw.public_addr(),
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "v".repeat(100_000)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 431, "{answer}");
    assert_eq!(upstream.count(), 3, "only the requests within the limits arrived");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_must_be_a_valid_authority_and_listed_when_there_is_a_list() {
    let upstream = TestUpstream::start().await;
    let text = config("development", &upstream.url(), ROUTES);
    let gw = start_gateway(&text).await;
    let get = |host: &str| format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    for bad in [
        "evil.example/reset",
        "good example",
        "a@b.example",
        "x.example:port",
        "[::1",
        "x\\y",
    ] {
        let answer = raw(gw.public_addr(), get(bad).as_bytes()).await;
        assert_eq!(raw_status(&answer), 400, "{bad}: {answer}");
        assert!(answer.contains("application/problem+json"), "{bad}: {answer}");
    }
    assert_eq!(upstream.count(), 0);
    for good in ["app.example", "app.example:8080", "127.0.0.1:80", "[::1]:8080"] {
        let answer = raw(gw.public_addr(), get(good).as_bytes()).await;
        assert_eq!(raw_status(&answer), 200, "{good}: {answer}");
        assert_eq!(upstream.last().headers["x-forwarded-host"], good);
    }
    gw.shutdown().await;

    let listed = edit(&text, |doc| {
        set(
            doc,
            "server",
            "hosts",
            toml::Value::Array(vec!["api.example.com".into(), "*.apps.example.com".into()]),
        )
    });
    let gw = start_gateway(&listed).await;
    for (host, status) in [
        ("api.example.com", 200),
        ("API.example.com:8443", 200),
        ("x.apps.example.com", 200),
        ("apps.example.com", 421),
        ("evilapps.example.com", 421),
        ("api.example.com.evil.net", 421),
        ("127.0.0.1", 421),
    ] {
        let answer = raw(gw.public_addr(), get(host).as_bytes()).await;
        assert_eq!(raw_status(&answer), status, "{host}: {answer}");
    }
    let answer = raw(gw.public_addr(), b"GET /x HTTP/1.0\r\n\r\n").await;
    assert_eq!(raw_status(&answer), 421, "a request naming no host: {answer}");
    gw.shutdown().await;
}

const KEYED: &str = r#"
[auth]
failure_limit = "20 per minute"

[[routes]]
id = "api"
path = "/api"
upstream = "app"
auth = ["api_key"]

[[routes]]
id = "root"
path = "/"
upstream = "app"
auth = ["none"]
"#;

/// A gateway config with `KEYED` routes, trusting 127.0.0.1 as a proxy so
/// tests can speak for several client IPs.
fn keyed(upstream: &str) -> String {
    edit(&config_with_store("development", upstream, None, KEYED), |doc| {
        set(
            doc,
            "server",
            "trusted_proxies",
            toml::Value::Array(vec!["127.0.0.1".into()]),
        )
    })
}

/// A well-formed key that no store holds.
fn random_key() -> String {
    portcullis::keys::generate().key
}

async fn cache_misses(gw: &portcullis::Gateway) -> f64 {
    metric(
        &metrics_text(gw.admin_addr()).await,
        "portcullis_key_cache_lookups_total{result=\"miss\"}",
    )
}

async fn audit_count(gw: &portcullis::Gateway, kind: &str) -> usize {
    audit_events(gw, Some(kind)).await.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_guessed_keys_costs_no_store_query_past_the_failure_limit() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&keyed(&upstream.url())).await;
    let good = make_key(&gw, "agent", &[], None).await.key;
    let url = format!("http://{}/api/x", gw.public_addr());
    let from = |ip: &str, key: &str| {
        client()
            .get(&url)
            .header("x-forwarded-for", ip)
            .header("x-api-key", key.to_string())
            .send()
    };

    for _ in 0..20 {
        assert_eq!(from("203.0.113.7", &random_key()).await.unwrap().status(), 401);
    }
    let misses = cache_misses(&gw).await;
    assert!(misses >= 20.0, "each guess was looked up: {misses}");
    for _ in 0..50 {
        let resp = from("203.0.113.7", &random_key()).await.unwrap();
        let wait: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        assert_problem(resp, 429).await;
    }
    assert_eq!(
        cache_misses(&gw).await,
        misses,
        "no lookup once the client is over its limit"
    );
    // Any key that would need a lookup is refused for that client, a good
    // one included...
    assert_problem(from("203.0.113.7", &good).await.unwrap(), 429).await;
    // ...and only for that client.
    assert_eq!(from("198.51.100.9", &good).await.unwrap().status(), 200);
    // A key in the cache costs no lookup: the client over its budget is not
    // locked out of it (an attacker behind a shared address cannot lock out
    // its neighbours' working keys).
    assert_eq!(from("203.0.113.7", &good).await.unwrap().status(), 200);
    assert_eq!(
        cache_misses(&gw).await,
        misses + 1.0,
        "only the good key's own first lookup"
    );
    // The same wrong key over and over: looked up once, then answered from
    // the cache, and past the budget with 429 as well.
    let misses = cache_misses(&gw).await;
    let wrong = random_key();
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(from("192.0.2.44", &wrong).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses[..20], [401; 20], "{statuses:?}");
    assert_eq!(statuses[20..], [429; 5], "{statuses:?}");
    assert_eq!(
        cache_misses(&gw).await,
        misses + 1.0,
        "one lookup, then the cache"
    );
    // Requests without any key are not failed attempts.
    for _ in 0..30 {
        let resp = client()
            .get(&url)
            .header("x-forwarded-for", "198.51.100.10")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    assert_eq!(from("198.51.100.10", &good).await.unwrap().status(), 200);
    assert_eq!(
        audit_count(&gw, "auth.failure_limited").await,
        2,
        "audited once per client per window (two clients went over)"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_before_authentication_refuse_before_any_lookup() {
    let upstream = TestUpstream::start().await;
    let text = edit(&keyed(&upstream.url()), |doc| {
        set(doc, "auth", "failure_limit", "off");
        set(doc, "", "rate_limits", toml::Table::new());
        set(
            doc,
            "rate_limits",
            "pre_auth",
            toml::Value::Array(vec!["12 per minute per ip".into()]),
        );
        set(
            doc,
            "routes.0",
            "pre_auth_rate_limit",
            toml::Value::Array(vec!["3 per minute per ip".into()]),
        );
    });
    let gw = start_gateway(&text).await;
    let base = format!("http://{}", gw.public_addr());
    let statuses = |path: &'static str, n: usize| {
        let base = base.clone();
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                let resp = client()
                    .get(format!("{base}{path}"))
                    .header("x-api-key", random_key())
                    .send()
                    .await
                    .unwrap();
                out.push(resp.status().as_u16());
            }
            out
        }
    };
    // The route's own limit before authentication: 3 lookups, then 429.
    assert_eq!(statuses("/api/x", 5).await, [401, 401, 401, 429, 429]);
    assert_eq!(cache_misses(&gw).await, 3.0);
    // The global one counts every request, whatever its route (and before
    // routing): 5 so far, so 7 more pass and the 13th is refused.
    let public = statuses("/public", 8).await;
    assert_eq!(public[..7], [200; 7]);
    assert_eq!(public[7], 429);
    let resp = client().get(format!("{base}/public")).send().await.unwrap();
    assert!(resp.headers().contains_key("retry-after"));
    assert!(
        !resp.headers().contains_key("ratelimit-policy"),
        "pre-auth limits add no RateLimit headers"
    );
    assert_problem(resp, 429).await;
    gw.shared().runtime.audit.flush().await;
    let events = store_of(&gw)
        .audit_query(&portcullis::store::audit::AuditFilter {
            kind: Some("ratelimit.exceeded".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "one per counter");
    assert!(events.iter().all(|e| e.event.details["phase"] == "pre_auth"));
    gw.shutdown().await;
}
