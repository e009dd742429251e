//! `https://` upstream targets: a private CA, the SNI name, a client
//! certificate for an upstream that requires one, and refusal of a target
//! whose certificate does not verify.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::tls::*;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// An HTTPS server with `leaf`'s certificate answering `tls ok` to every
/// request; with `client_ca`, it requires a client certificate from it.
async fn https_upstream(leaf: &Leaf, client_ca: Option<&TestCa>) -> SocketAddr {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
                .unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_string();
                let service = service_fn(move |_req| {
                    let body = format!("tls ok, sni {sni}");
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// A gateway in front of `https://127.0.0.1:PORT` with `[upstreams.tls]` set
/// to `tls` (inline TOML).
async fn gateway(addr: SocketAddr, tls: &str) -> portcullis::Gateway {
    let text = edit(
        &config("development", &format!("https://{addr}"), PUBLIC_ROOT),
        |doc| {
            let table: toml::Table = format!("tls = {tls}").parse().unwrap();
            set(doc, "upstreams.0", "tls", table["tls"].clone());
        },
    );
    start_gateway(&text).await
}

/// The status and body of one request through a gateway with `tls`.
async fn through(addr: SocketAddr, tls: &str) -> (u16, String) {
    let gw = gateway(addr, tls).await;
    let resp = client()
        .get(format!("http://{}/x", gw.public_addr()))
        .send()
        .await
        .unwrap();
    let answer = (resp.status().as_u16(), resp.text().await.unwrap());
    gw.shutdown().await;
    answer
}

/// `[upstreams.tls]` with this CA file and SNI name, and `extra` keys.
fn tls_table(ca: &std::path::Path, name: &str, extra: &str) -> String {
    format!(
        "{{ ca = {:?}, server_name = {name:?}{extra} }}",
        ca.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn https_targets_are_verified_against_a_private_ca_with_the_sni_name() {
    let dir = scratch_dir();
    let ca = TestCa::new("Upstream CA");
    let ca_path = ca.write(&dir, "upstream-ca.pem");
    let upstream = https_upstream(&ca.server(&["app.internal"]), None).await;
    let (status, body) = through(upstream, &tls_table(&ca_path, "app.internal", "")).await;
    assert_eq!((status, body.as_str()), (200, "tls ok, sni app.internal"));
    // The certificate names app.internal, not another.test: refused.
    let (status, _) = through(upstream, &tls_table(&ca_path, "another.test", "")).await;
    assert_eq!(status, 502);
    // A CA that did not sign it: refused.
    let other = TestCa::new("Upstream CA").write(&dir, "other-ca.pem");
    let (status, _) = through(upstream, &tls_table(&other, "app.internal", "")).await;
    assert_eq!(status, 502);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let dir = scratch_dir();
    let ca = TestCa::new("Upstream CA");
    let ca_path = ca.write(&dir, "upstream-ca.pem");
    let clients = TestCa::new("Gateway clients");
    let upstream = https_upstream(&ca.server(&["app.internal"]), Some(&clients)).await;
    let (cert, key) = clients.client("portcullis", &[]).write(&dir, "gateway-client");
    let (status, _) = through(upstream, &tls_table(&ca_path, "app.internal", "")).await;
    assert_eq!(status, 502, "the upstream requires a client certificate");
    let pair = format!(
        ", client_cert = {:?}, client_key = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let (status, body) = through(upstream, &tls_table(&ca_path, "app.internal", &pair)).await;
    assert_eq!((status, body.as_str()), (200, "tls ok, sni app.internal"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_upstream_tls_settings_are_config_problems() {
    let dir = scratch_dir();
    let missing = dir.join("missing.pem");
    let text = edit(
        &config("development", "https://127.0.0.1:9", PUBLIC_ROOT),
        |doc| {
            let table: toml::Table = format!("tls = {{ ca = {:?} }}", missing.display().to_string())
                .parse()
                .unwrap();
            set(doc, "upstreams.0", "tls", table["tls"].clone());
        },
    );
    let problems = compile_offline(&text)
        .err()
        .expect("a missing CA file is refused");
    assert!(problems.contains("missing.pem"), "{problems}");
}
