//! Opening a connection to one upstream target: TCP, and for an
//! `https://` target a TLS handshake (rustls: the system's roots or the
//! upstream's `tls.ca`, SNI, an optional client certificate, ALPN `h2`
//! and/or `http/1.1` as `protocol` says) before the HTTP layer
//! ([`super::pool`]) sees it; and which HTTP version the connection speaks.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::config::Protocol;

/// Where a target's connections go.
#[derive(Clone, Debug)]
pub enum Address {
    /// An IP literal: no lookup needed.
    Ip(SocketAddr),
    /// A host name, resolved on every new connection.
    Name(String, u16),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Ip(addr) => addr.fmt(f),
            Address::Name(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

impl Address {
    /// A new TCP connection, with Nagle off (requests are written whole).
    pub async fn connect(&self) -> io::Result<TcpStream> {
        let stream = match self {
            Address::Ip(addr) => TcpStream::connect(addr).await?,
            Address::Name(host, port) => TcpStream::connect((host.as_str(), *port)).await?,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// `[upstreams.tls]`, for `https://` targets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM CA certificates the targets' certificates must chain to (a
    /// private CA); the system's roots when unset.
    pub ca: Option<PathBuf>,
    /// The name sent (SNI) and verified; the target's host by default.
    pub server_name: Option<String>,
    /// A client certificate chain and key (PEM), for upstreams that
    /// require mTLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// An `https://` target's TLS settings, built once per compiled upstream.
#[derive(Clone)]
pub struct TlsTarget {
    /// ALPN as the upstream's `protocol` says.
    connector: tokio_rustls::TlsConnector,
    /// ALPN `http/1.1` only, for WebSocket upgrades.
    http1: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("server_name", &self.server_name)
            .finish()
    }
}

fn read_pem(base: &Path, path: &Path) -> Result<Vec<u8>, String> {
    let full = base.join(path);
    std::fs::read(&full).map_err(|e| format!("cannot read {}: {e}", full.display()))
}

/// The client configurations for an upstream's `https://` targets: one
/// with ALPN as `protocol` says, one offering only `http/1.1` (for
/// WebSocket upgrades, which are HTTP/1.1).
pub fn client_configs(
    config: &UpstreamTlsConfig,
    protocol: Protocol,
    base: &Path,
) -> Result<(Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>), String> {
    let mut client = client_config(config, base)?;
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let http1 = Arc::new(client.clone());
    client.alpn_protocols = match protocol {
        Protocol::Http1 => return Ok((http1.clone(), http1)),
        Protocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Protocol::H2 => vec![b"h2".to_vec()],
    };
    Ok((Arc::new(client), http1))
}

fn client_config(config: &UpstreamTlsConfig, base: &Path) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca {
        Some(ca) => {
            let pem = read_pem(base, ca)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{}: not a PEM certificate: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no certificate in the file", ca.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("no system CA certificates were found; set tls.ca".into());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let client = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            let chain: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&read_pem(base, cert)?).collect();
            let chain = chain.map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
            let key_der = PrivateKeyDer::from_pem_slice(&read_pem(base, key)?)
                .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("{}: {e}", key.display()))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("client_cert and client_key go together".into()),
    };
    Ok(client)
}

impl TlsTarget {
    /// `clients` as [`client_configs`] returns them.
    pub fn new(
        clients: &(Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>),
        name: &str,
    ) -> Result<TlsTarget, String> {
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|_| format!("`{name}` is not a name TLS can verify"))?;
        Ok(TlsTarget {
            connector: tokio_rustls::TlsConnector::from(clients.0.clone()),
            http1: tokio_rustls::TlsConnector::from(clients.1.clone()),
            server_name,
        })
    }
}

/// Where one target's connections go, how they are secured, and which
/// HTTP version they may speak.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub address: Address,
    pub tls: Option<TlsTarget>,
    pub protocol: Protocol,
}

impl Endpoint {
    /// A connection ready for HTTP: TCP, then TLS for an `https://` target.
    pub async fn open(&self) -> io::Result<UpstreamStream> {
        self.open_with(|tls| &tls.connector).await
    }

    /// A connection for HTTP/1.1 whatever `protocol` says (ALPN offers only
    /// `http/1.1`), for a WebSocket upgrade.
    pub async fn open_http1(&self) -> io::Result<UpstreamStream> {
        self.open_with(|tls| &tls.http1).await
    }

    async fn open_with(
        &self,
        connector: impl Fn(&TlsTarget) -> &tokio_rustls::TlsConnector,
    ) -> io::Result<UpstreamStream> {
        let tcp = self.address.connect().await?;
        match &self.tls {
            None => Ok(UpstreamStream::Plain(tcp)),
            Some(tls) => {
                let stream = connector(tls).connect(tls.server_name.clone(), tcp).await?;
                Ok(UpstreamStream::Tls(Box::new(stream)))
            }
        }
    }

    /// Whether a connection opened by [`Endpoint::open`] speaks HTTP/2:
    /// prior knowledge (`protocol = "h2"`), or `h2` picked by ALPN. A TLS
    /// target that `protocol = "h2"` requires to pick `h2` and did not is
    /// an error, as a failed handshake would be.
    pub fn speaks_h2(&self, stream: &UpstreamStream) -> io::Result<bool> {
        let alpn_h2 = match stream {
            UpstreamStream::Plain(_) => None,
            UpstreamStream::Tls(tls) => Some(tls.get_ref().1.alpn_protocol() == Some(b"h2")),
        };
        match (self.protocol, alpn_h2) {
            (Protocol::Http1, _) | (Protocol::Auto, None) => Ok(false),
            (Protocol::Auto, Some(h2)) => Ok(h2),
            (Protocol::H2, None | Some(true)) => Ok(true),
            (Protocol::H2, Some(false)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the target did not pick h2 by ALPN (protocol = \"h2\")",
            )),
        }
    }

    /// Whether this target may speak HTTP/2 at all (so a shared HTTP/2
    /// connection is worth looking for before the HTTP/1.1 pool).
    pub fn may_speak_h2(&self) -> bool {
        match self.protocol {
            Protocol::Http1 => false,
            Protocol::Auto => self.tls.is_some(),
            Protocol::H2 => true,
        }
    }
}

/// A connection to a target, plain or TLS.
#[derive(Debug)]
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
