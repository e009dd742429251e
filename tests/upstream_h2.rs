//! HTTP/2 to upstream targets: `h2` picked by ALPN on an `https://`
//! target (one connection shared by every request), prior-knowledge h2c
//! where `protocol = "h2"` says so, HTTP/1.1 where `protocol = "http1"`
//! pins it, and refusal of a TLS target that will not speak `h2` when it
//! must.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::tls::*;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

/// A test upstream that answers every request with what it saw:
/// `<version> <authority or Host> <method> <body length>`, and counts the
/// connections it accepted.
struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

async fn answer(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    let version = format!("{:?}", req.version());
    let authority = match req.uri().authority() {
        Some(a) => a.to_string(),
        None => req
            .headers()
            .get(http::header::HOST)
            .map(|h| format!("host {}", h.to_str().unwrap_or("?")))
            .unwrap_or_default(),
    };
    let method = req.method().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    Ok(http::Response::new(Full::new(Bytes::from(format!(
        "{version} {authority} {method} {body}"
    )))))
}

/// A loopback listener that counts the connections it accepts and hands
/// each to `serve` in a task of its own.
async fn upstream<F, Fut>(serve: F) -> Upstream
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(tcp));
        }
    });
    Upstream { addr, connections }
}

/// HTTPS with `leaf`'s certificate, offering `alpn` and serving HTTP/1.1
/// or HTTP/2 as the client picked.
async fn https_upstream(leaf: &Leaf, alpn: &[&[u8]]) -> Upstream {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    upstream(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service_fn(answer))
                .await;
        }
    })
    .await
}

/// Plain TCP speaking only HTTP/2 (prior knowledge): an HTTP/1.1 request
/// gets a protocol error.
async fn h2c_upstream() -> Upstream {
    upstream(|tcp| async move {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), service_fn(answer))
            .await;
    })
    .await
}

/// Plain TCP, HTTP/2 only, that sends GOAWAY after the first request on
/// every connection: each later request must find a new connection.
async fn h2c_upstream_one_request_per_connection() -> Upstream {
    upstream(|tcp| async move {
        let served = Arc::new(tokio::sync::Notify::new());
        let notify = served.clone();
        let service = service_fn(move |req| {
            let notify = notify.clone();
            async move {
                let answered = answer(req).await;
                notify.notify_one();
                answered
            }
        });
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), service);
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = served.notified() => conn.as_mut().graceful_shutdown(),
        }
        let _ = conn.await;
    })
    .await
}

/// A gateway in front of `target` with `keys` (inline TOML) added to its
/// upstream.
async fn gateway(target: &str, keys: &str) -> portcullis::Gateway {
    let text = edit(&config("development", target, PUBLIC_ROOT), |doc| {
        let table: toml::Table = keys.parse().unwrap();
        for (key, value) in table {
            set(doc, "upstreams.0", &key, value);
        }
    });
    start_gateway(&text).await
}

/// `tls = { ca = ..., server_name = "app.internal" }` for `ca`.
fn private_ca(ca: &std::path::Path) -> String {
    format!(
        "tls = {{ ca = {:?}, server_name = \"app.internal\" }}\n",
        ca.display().to_string()
    )
}

async fn text(resp: reqwest::Response) -> (u16, String) {
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_target_that_picks_h2_gets_one_shared_http2_connection() {
    let dir = scratch_dir();
    let ca = TestCa::new("Upstream CA");
    let ca_path = ca.write(&dir, "ca.pem");
    let upstream = https_upstream(&ca.server(&["app.internal"]), &[b"h2", b"http/1.1"]).await;
    let gw = gateway(&format!("https://{}", upstream.addr), &private_ca(&ca_path)).await;
    let base = format!("http://{}", gw.public_addr());
    let authority = upstream.addr.to_string();

    let (status, body) = text(client().get(format!("{base}/x")).send().await.unwrap()).await;
    assert_eq!((status, body), (200, format!("HTTP/2.0 {authority} GET 0")));
    // A request body streams over HTTP/2 too.
    let resp = client()
        .post(format!("{base}/x"))
        .body(vec![b'a'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(
        text(resp).await,
        (200, format!("HTTP/2.0 {authority} POST 100000"))
    );

    // Concurrent requests are streams on the one connection.
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let url = format!("{base}/x");
        load.spawn(async move { text(client().get(url).send().await.unwrap()).await });
    }
    while let Some(answer) = load.join_next().await {
        assert_eq!(answer.unwrap(), (200, format!("HTTP/2.0 {authority} GET 0")));
    }
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_http1_pins_http_1_1_even_where_h2_is_offered() {
    let dir = scratch_dir();
    let ca = TestCa::new("Upstream CA");
    let ca_path = ca.write(&dir, "ca.pem");
    let upstream = https_upstream(&ca.server(&["app.internal"]), &[b"h2", b"http/1.1"]).await;
    let keys = format!("protocol = \"http1\"\n{}", private_ca(&ca_path));
    let gw = gateway(&format!("https://{}", upstream.addr), &keys).await;
    let resp = client()
        .get(format!("http://{}/x", gw.public_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        text(resp).await,
        (200, format!("HTTP/1.1 host {} GET 0", upstream.addr))
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_target_that_offers_only_http1_is_refused_when_h2_is_required() {
    let dir = scratch_dir();
    let ca = TestCa::new("Upstream CA");
    let ca_path = ca.write(&dir, "ca.pem");
    let upstream = https_upstream(&ca.server(&["app.internal"]), &[b"http/1.1"]).await;
    let target = format!("https://{}", upstream.addr);
    // `auto` falls back to what the target picked.
    let gw = gateway(&target, &private_ca(&ca_path)).await;
    let resp = client()
        .get(format!("http://{}/x", gw.public_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        text(resp).await,
        (200, format!("HTTP/1.1 host {} GET 0", upstream.addr))
    );
    gw.shutdown().await;
    // `h2` does not.
    let keys = format!("protocol = \"h2\"\n{}", private_ca(&ca_path));
    let gw = gateway(&target, &keys).await;
    let resp = client()
        .get(format!("http://{}/x", gw.public_addr()))
        .send()
        .await
        .unwrap();
    let (status, body) = text(resp).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("502"), "a problem document: {body}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prior_knowledge_h2c_is_spoken_where_configured_and_health_checked_in_it() {
    let upstream = h2c_upstream().await;
    let target = format!("http://{}", upstream.addr);
    // Plain targets speak HTTP/1.1 unless told: an h2c-only server refuses it.
    let gw = gateway(&target, "").await;
    let resp = client()
        .get(format!("http://{}/x", gw.public_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    gw.shutdown().await;

    // One failed check would take the target out.
    let keys = "protocol = \"h2\"\nhealth_check = { path = \"/healthz\", interval = \"100ms\", unhealthy_threshold = 1 }";
    let gw = gateway(&target, keys).await;
    let base = format!("http://{}", gw.public_addr());
    for _ in 0..5 {
        let resp = client().get(format!("{base}/x?q=1")).send().await.unwrap();
        assert_eq!(
            text(resp).await,
            (200, format!("HTTP/2.0 {} GET 0", upstream.addr))
        );
    }
    let admin = format!("http://{}", gw.admin_addr());
    let check_state = async || -> String {
        let ready: serde_json::Value = client()
            .get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ready["checks"]["upstream:app"]["targets"][0]["health_check"]
            .as_str()
            .unwrap()
            .to_string()
    };
    wait_until_async("the first h2c health check", Duration::from_secs(3), async || {
        check_state().await != "unchecked"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(check_state().await, "healthy", "every check passed");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_connection_the_target_closes_is_replaced() {
    let upstream = h2c_upstream_one_request_per_connection().await;
    // No retries: a request lost to a closing connection would be a 502.
    let keys = "protocol = \"h2\"\nretries = { attempts = 0 }";
    let gw = gateway(&format!("http://{}", upstream.addr), keys).await;
    let base = format!("http://{}", gw.public_addr());
    let expected = (200, format!("HTTP/2.0 {} GET 0", upstream.addr));
    for i in 0..10 {
        let resp = client().get(format!("{base}/x")).send().await.unwrap();
        assert_eq!(text(resp).await, expected, "request {i}");
    }
    // hyper's graceful shutdown is two-phase (a GOAWAY for any stream, a
    // ping, then the final GOAWAY), so a connection may serve a second
    // request that raced the first GOAWAY; never a third.
    let connections = upstream.connections.load(Ordering::SeqCst);
    assert!(connections >= 5, "{connections} connections for 10 requests");
    // Requests in parallel race the target's GOAWAY: some open streams on
    // a connection that is going away (refused by h2 before they are sent,
    // or above the target's last stream ID), which are sent again.
    for wave in 0..5 {
        let requests =
            (0..4).map(|_| async { text(client().get(format!("{base}/x")).send().await.unwrap()).await });
        for answer in futures_util::future::join_all(requests).await {
            assert_eq!(answer, expected, "wave {wave}");
        }
    }
    // No request failed on a closed connection, nor needed a retry.
    let text = metrics_text(gw.admin_addr()).await;
    let count = |name: &str| {
        let series = format!("portcullis_upstream_{name},upstream=\"app\"}}");
        assert!(text.contains(&series), "{series} is exported");
        metric(&text, &series)
    };
    assert_eq!(count("errors_total{kind=\"unreachable\""), 0.0);
    assert_eq!(count("retries_total{outcome=\"sent\""), 0.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_speaks_h2c_to_a_target_configured_for_it() {
    let upstream = h2c_upstream().await;
    let toml = edit(
        &config("development", &format!("http://{}", upstream.addr), PUBLIC_ROOT),
        |doc| set(doc, "upstreams.0", "protocol", "h2"),
    );
    let path = scratch_dir().join("portcullis.toml");
    std::fs::write(&path, toml).unwrap();
    let bin = Binary::serve(&path, &[]);
    let resp = client()
        .post(format!("http://{}/x", bin.public))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(
        text(resp).await,
        (200, format!("HTTP/2.0 {} POST 5", upstream.addr))
    );
}
