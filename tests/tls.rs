//! TLS on the public listener: a CA made in the test (rcgen), HTTP/1.1 and
//! HTTP/2 by ALPN, SNI with two certificates, reloads under load (file
//! change and SIGHUP), the handshake timeout, TLS 1.2, HSTS and
//! `X-Forwarded-Proto: https`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::tls::*;
use common::*;
use tokio::io::AsyncReadExt;

/// Config with `[server.tls]` set to `tls` (TOML inline table text).
fn tls_config(upstream: &str, tls: &str) -> String {
    let text = config("development", upstream, PUBLIC_ROOT);
    edit(&text, |doc| {
        let table: toml::Table = format!("tls = {tls}").parse().unwrap();
        set(doc, "server", "tls", table["tls"].clone());
    })
}

fn paths(cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "cert = {:?}, key = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    )
}

/// A gateway serving `api.test` over TLS with a certificate from a fresh
/// test CA (returned, for clients that trust it).
async fn api_test_gateway(upstream: &TestUpstream) -> (TestCa, portcullis::Gateway) {
    let dir = scratch_dir();
    let ca = TestCa::new("Test CA");
    let (cert, key) = ca.server(&["api.test"]).write(&dir, "api");
    let gw = start_gateway(&tls_config(
        &upstream.url(),
        &format!("{{ {} }}", paths(&cert, &key)),
    ))
    .await;
    (ca, gw)
}

#[tokio::test(flavor = "multi_thread")]
async fn https_serves_http1_and_h2_with_hsts_and_forwarded_proto() {
    let upstream = TestUpstream::start().await;
    let (ca, gw) = api_test_gateway(&upstream).await;
    let addr = gw.public_addr();

    let h2 = ca.client_for("api.test", addr).build().unwrap();
    let resp = h2
        .get(format!("https://api.test:{}/x", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN chose h2");
    assert!(
        resp.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .contains("max-age="),
        "HSTS on a TLS listener"
    );
    assert_eq!(upstream.last().headers["x-forwarded-proto"], "https");

    let h1 = ca.client_for("api.test", addr).http1_only().build().unwrap();
    let resp = h1
        .get(format!("https://api.test:{}/y", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = client().get(format!("http://{addr}/z")).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    // A client that does not trust the CA is refused.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only(std::iter::empty())
        .resolve("api.test", addr)
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("https://api.test:{}/x", addr.port()))
            .send()
            .await
            .is_err()
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_chooses_between_two_certificates() {
    let upstream = TestUpstream::start().await;
    let dir = scratch_dir();
    let ca = TestCa::new("Test CA");
    let (a_cert, a_key) = ca.server(&["a.test"]).write(&dir, "a");
    let (b_cert, b_key) = ca.server(&["b.test", "*.b.test"]).write(&dir, "b");
    let tls = format!(
        "{{ certificates = [{{ {} }}, {{ {} }}] }}",
        paths(&a_cert, &a_key),
        paths(&b_cert, &b_key)
    );
    let gw = start_gateway(&tls_config(&upstream.url(), &tls)).await;
    let addr = gw.public_addr();
    for (host, expected) in [
        ("a.test", "a.test"),
        ("b.test", "b.test"),
        ("www.b.test", "b.test"),
    ] {
        let c = ca.client_for(host, addr).build().unwrap();
        let resp = c
            .get(format!("https://{host}:{}/x", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}");
        assert_eq!(
            served_names(&resp).common_name.as_deref(),
            Some(expected),
            "{host}"
        );
    }
    gw.shutdown().await;
}

/// A load of requests over one kept-alive connection and over new ones,
/// until `stop` (and 20 requests at least); returns (requests, failures).
fn load(
    ca: &TestCa,
    host: &'static str,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    let kept = ca.client_for(host, addr).build().unwrap();
    let ca_pem = ca.pem();
    tokio::spawn(async move {
        let (done, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
        // At least 20 requests, however quickly the reload is seen.
        while !stop.load(Ordering::SeqCst) || done.load(Ordering::SeqCst) < 20 {
            let fresh = reqwest::Client::builder()
                .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
                .resolve(host, addr)
                .build()
                .unwrap();
            for c in [&kept, &fresh] {
                done.fetch_add(1, Ordering::SeqCst);
                let ok = c
                    .get(format!("https://{host}:{}/x", addr.port()))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if !ok {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        (done.into_inner(), failed.into_inner())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_certificate_file_is_served_without_dropping_connections() {
    let upstream = TestUpstream::start().await;
    let dir = scratch_dir();
    let ca = TestCa::new("Test CA");
    let (cert, key) = ca.server(&["api.test", "first.test"]).write(&dir, "api");
    let tls = format!("{{ {}, watch_interval = \"100ms\" }}", paths(&cert, &key));
    let gw = start_gateway(&tls_config(&upstream.url(), &tls)).await;
    let addr = gw.public_addr();
    let probe = ca.client_for("api.test", addr).build().unwrap();
    let url = format!("https://api.test:{}/x", addr.port());
    let names = served_names(&probe.get(&url).send().await.unwrap());
    assert!(names.dns.contains(&"first.test".to_string()));

    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&ca, "api.test", addr, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    ca.server(&["api.test", "second.test"]).write(&dir, "api");
    wait_until_async(
        "the new certificate to be served",
        Duration::from_secs(5),
        async || {
            let fresh = ca.client_for("api.test", addr).build().unwrap();
            let resp = fresh.get(&url).send().await.unwrap();
            served_names(&resp).dns.contains(&"second.test".to_string())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (done, failed) = running.await.unwrap();
    assert!(done >= 20, "the load ran: {done}");
    assert_eq!(failed, 0, "{failed} of {done} requests failed across the reload");
    // The connection made before the change still works, on the old certificate.
    let resp = probe.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(served_names(&resp).dns.contains(&"first.test".to_string()));

    // A broken file is not served: the last good certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fresh = ca.client_for("api.test", addr).build().unwrap();
    let resp = fresh.get(&url).send().await.unwrap();
    assert!(served_names(&resp).dns.contains(&"second.test".to_string()));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_binarys_certificates_under_load() {
    let upstream = TestUpstream::start().await;
    let dir = scratch_dir();
    let ca = TestCa::new("Test CA");
    let (cert, key) = ca.server(&["api.test", "first.test"]).write(&dir, "api");
    let tls = format!("{{ {}, watch_interval = \"0s\" }}", paths(&cert, &key));
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, tls_config(&upstream.url(), &tls)).unwrap();
    let bin = Binary::serve(&path, &[]);
    // The startup line says what runs.
    let started = bin.output();
    let line = started
        .lines()
        .find(|l| l.contains("portcullis is listening"))
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(summary["tls"], true, "{line}");
    assert_eq!(summary["upstreams"], "app(1 targets)", "{line}");
    assert_eq!(summary["routes"], "/", "{line}");
    assert_eq!(summary["auth"], "none", "{line}");
    assert_eq!(summary["store"], "sqlite", "{line}");
    let protections = summary["protections"].as_str().unwrap();
    for stage in [
        "request_id",
        "framing",
        "authn",
        "security_headers",
        "access_log",
        "tls",
    ] {
        assert!(protections.split(", ").any(|p| p == stage), "{stage} in {line}");
    }
    let addr = bin.public;
    let url = format!("https://api.test:{}/x", addr.port());

    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&ca, "api.test", addr, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    ca.server(&["api.test", "second.test"]).write(&dir, "api");
    bin.signal("HUP");
    wait_until_async(
        "the new certificate to be served",
        Duration::from_secs(5),
        async || {
            let fresh = ca.client_for("api.test", addr).build().unwrap();
            let resp = fresh.get(&url).send().await.unwrap();
            served_names(&resp).dns.contains(&"second.test".to_string())
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let (done, failed) = running.await.unwrap();
    assert!(done >= 20, "the load ran: {done}");
    assert_eq!(failed, 0, "{failed} of {done} requests failed across the reload");
    // Log lines reach stdout in batches (up to 10 ms late), so wait for it.
    assert!(
        bin.wait_for_output("TLS certificates reloaded", Duration::from_secs(5)),
        "{}",
        bin.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_handshake_is_closed_while_others_are_served() {
    let upstream = TestUpstream::start().await;
    let dir = scratch_dir();
    let ca = TestCa::new("Test CA");
    let (cert, key) = ca.server(&["api.test"]).write(&dir, "api");
    let tls = format!("{{ {}, handshake_timeout = \"300ms\" }}", paths(&cert, &key));
    let gw = start_gateway(&tls_config(&upstream.url(), &tls)).await;
    let addr = gw.public_addr();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Half a ClientHello: a record header promising more than is sent.
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut half, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();

    let c = ca.client_for("api.test", addr).build().unwrap();
    let resp = c
        .get(format!("https://api.test:{}/x", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "a normal client is served meanwhile");
    for stream in [&mut silent, &mut half] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the stalled handshake was closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    gw.shutdown().await;
}

/// `openssl s_client` with one protocol version: whether the handshake
/// worked, and what it printed.
fn s_client(port: u16, ca: &std::path::Path, version: &str) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "api.test",
        ])
        .args([version, "-CAfile", ca.to_str().unwrap(), "-brief"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_2_is_accepted_and_older_versions_are_not() {
    let upstream = TestUpstream::start().await;
    let dir = scratch_dir();
    let ca = TestCa::new("Test CA");
    let ca_path = ca.write(&dir, "ca.pem");
    let (cert, key) = ca.server(&["api.test"]).write(&dir, "api");
    let gw = start_gateway(&tls_config(
        &upstream.url(),
        &format!("{{ {} }}", paths(&cert, &key)),
    ))
    .await;
    let port = gw.public_addr().port();
    let ca = ca_path.clone();
    let tls12 = tokio::task::spawn_blocking(move || s_client(port, &ca, "-tls1_2"))
        .await
        .unwrap();
    assert!(tls12.0 && tls12.1.contains("TLSv1.2"), "{}", tls12.1);
    let tls11 = tokio::task::spawn_blocking(move || s_client(port, &ca_path, "-tls1_1"))
        .await
        .unwrap();
    assert!(!tls11.0, "TLS 1.1 was accepted: {}", tls11.1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tls_settings_are_config_problems() {
    let dir = scratch_dir();
    let ca = TestCa::new("Test CA");
    let (cert, key) = ca.server(&["api.test"]).write(&dir, "api");
    let (_, other_key) = ca.server(&["other.test"]).write(&dir, "other");
    let missing = dir.join("missing.pem");
    for (tls, needle) in [
        (format!("{{ {} }}", paths(&missing, &key)), "missing.pem"),
        (format!("{{ {} }}", paths(&cert, &other_key)), "does not match"),
        (format!("{{ {} }}", paths(&key, &key)), "no certificate"),
        (
            format!("{{ cert = {:?} }}", cert.display().to_string()),
            "go together",
        ),
        (
            format!("{{ {}, require_client_cert = true }}", paths(&cert, &key)),
            "client_ca",
        ),
    ] {
        let text = tls_config("http://127.0.0.1:9", &tls);
        let problems = compile_offline(&text)
            .err()
            .unwrap_or_else(|| panic!("{tls} was accepted"));
        assert!(
            problems.contains("server.tls") && problems.contains(needle),
            "{tls}: {problems}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_maps_a_client_certificate_to_a_consumer_and_refuses_the_rest() {
    let upstream = TestUpstream::start().await;
    let dir = scratch_dir();
    let ca = TestCa::new("Test CA");
    let clients_ca = TestCa::new("Clients CA");
    let ca_path = clients_ca.write(&dir, "clients-ca.pem");
    let (cert, key) = ca.server(&["api.test"]).write(&dir, "api");
    let routes = r#"
[auth.mtls]
identity = "subject_cn"
[[auth.mtls.clients]]
identity = "billing"
consumer = "billing-service"
scopes = ["invoices:read"]

[[routes]]
path = "/svc"
upstream = "app"
auth = ["mtls"]
scopes = ["invoices:read"]

[[routes]]
path = "/"
upstream = "app"
auth = ["none"]
"#;
    let text = edit(&config("development", &upstream.url(), routes), |doc| {
        let tls = format!(
            "tls = {{ {}, client_ca = {:?} }}",
            paths(&cert, &key),
            ca_path.display().to_string()
        );
        let table: toml::Table = tls.parse().unwrap();
        set(doc, "server", "tls", table["tls"].clone());
    });
    let gw = start_gateway(&text).await;
    let addr = gw.public_addr();
    let url = |path: &str| format!("https://api.test:{}{path}", addr.port());

    let billing = clients_ca.client("billing", &[]);
    let with_cert = ca
        .client_for("api.test", addr)
        .identity(billing.identity())
        .build()
        .unwrap();
    let resp = with_cert.get(url("/svc/invoices")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-portcullis-consumer"], "billing-service");
    assert_eq!(seen.headers["x-portcullis-scopes"], "invoices:read");

    // No certificate: the public route works, the mTLS one is 401.
    let without = ca.client_for("api.test", addr).build().unwrap();
    assert_eq!(without.get(url("/public")).send().await.unwrap().status(), 200);
    assert_problem(without.get(url("/svc/invoices")).send().await.unwrap(), 401).await;

    // A certificate of the right CA naming an unlisted client: 401.
    let stranger = clients_ca.client("stranger", &[]);
    let c = ca
        .client_for("api.test", addr)
        .identity(stranger.identity())
        .build()
        .unwrap();
    let doc = assert_problem(c.get(url("/svc/invoices")).send().await.unwrap(), 401).await;
    assert!(
        doc["detail"]
            .as_str()
            .unwrap()
            .contains("not one this gateway accepts"),
        "{doc}"
    );

    // A certificate from another CA fails the handshake itself.
    let forged = TestCa::new("Clients CA").client("billing", &[]);
    let c = ca
        .client_for("api.test", addr)
        .identity(forged.identity())
        .build()
        .unwrap();
    assert!(c.get(url("/svc/invoices")).send().await.is_err());
    let events = audit_events(&gw, Some("auth.failure")).await;
    let texts: Vec<String> = events.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
    assert!(
        texts
            .iter()
            .any(|e| e.contains("not_listed") && e.contains("mtls")),
        "{texts:?}"
    );
    gw.shutdown().await;

    // With require_client_cert, a client without one cannot connect at all.
    let text = edit(&text, |doc| set(doc, "server.tls", "require_client_cert", true));
    let gw = start_gateway(&text).await;
    let addr = gw.public_addr();
    let without = ca.client_for("api.test", addr).build().unwrap();
    assert!(
        without
            .get(format!("https://api.test:{}/public", addr.port()))
            .send()
            .await
            .is_err()
    );
    let with_cert = ca
        .client_for("api.test", addr)
        .identity(billing.identity())
        .build()
        .unwrap();
    let resp = with_cert
        .get(format!("https://api.test:{}/public", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    gw.shutdown().await;
}

/// An idle HTTP/1.1 connection over TLS is parked like a plain one (its
/// TLS session stays, hyper's buffers go) and its next request is served on
/// the same connection.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_tls_connection_is_parked_and_serves_its_next_request() {
    let upstream = TestUpstream::start().await;
    let (ca, gw) = api_test_gateway(&upstream).await;
    let addr = gw.public_addr();
    let h1 = ca.client_for("api.test", addr).http1_only().build().unwrap();
    let gauges = async || {
        let text = metrics_text(gw.admin_addr()).await;
        (
            metric(&text, "portcullis_connections_open"),
            metric(&text, "portcullis_connections_parked"),
        )
    };
    for round in 0..3 {
        let resp = h1
            .get(format!("https://api.test:{}/r{round}", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(upstream.last().target, format!("/r{round}"));
        wait_until_async("the connection parked", Duration::from_secs(10), async || {
            gauges().await == (1.0, 1.0)
        })
        .await;
    }
    assert_eq!(upstream.count(), 3);
    gw.shutdown().await;
}
