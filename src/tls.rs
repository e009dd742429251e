//! TLS on the public listener, with rustls: certificates chosen by SNI,
//! reloaded on SIGHUP and when their files change (open connections keep
//! the certificate they started with), ALPN `h2` and `http/1.1`, TLS 1.2
//! and 1.3 only with rustls' default suites, and optional client
//! certificates (mTLS) verified against `client_ca`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};

use crate::config::ConfigDuration;

/// `[server.tls]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// A certificate chain (PEM) and its key, for a listener with one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Several certificates, chosen by the name the client asks for (SNI)
    /// against each certificate's names; the first is the default.
    #[serde(default)]
    pub certificates: Vec<CertificateFiles>,
    /// CA certificates (PEM) that client certificates must chain to; with
    /// it, clients are asked for a certificate (the `mtls` auth kind).
    pub client_ca: Option<PathBuf>,
    /// Refuse the handshake of a client without a valid certificate.
    #[serde(default)]
    pub require_client_cert: bool,
    /// Time from accepting a connection to the end of its handshake.
    #[serde(default = "TlsConfig::default_handshake_timeout")]
    pub handshake_timeout: ConfigDuration,
    /// How often the files are checked for changes; `0s` only on SIGHUP.
    #[serde(default = "TlsConfig::default_watch_interval")]
    pub watch_interval: ConfigDuration,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsConfig {
    fn default_handshake_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(10))
    }
    fn default_watch_interval() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(5))
    }

    /// The same settings with relative paths taken from `base`.
    pub fn resolved(&self, base: &Path) -> TlsConfig {
        let at = |p: &PathBuf| base.join(p);
        TlsConfig {
            cert: self.cert.as_ref().map(at),
            key: self.key.as_ref().map(at),
            certificates: self
                .certificates
                .iter()
                .map(|c| CertificateFiles {
                    cert: at(&c.cert),
                    key: at(&c.key),
                })
                .collect(),
            client_ca: self.client_ca.as_ref().map(at),
            ..self.clone()
        }
    }

    /// Every certificate and key pair, the single one first.
    pub fn pairs(&self) -> Vec<CertificateFiles> {
        let mut pairs = Vec::new();
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            pairs.push(CertificateFiles {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        pairs.extend(self.certificates.iter().cloned());
        pairs
    }

    /// Problems with the table's shape (the files are read by [`Tls::load`]).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.cert.is_some() != self.key.is_some() {
            out.push("`cert` and `key` go together".to_string());
        }
        if self.pairs().is_empty() {
            out.push("needs `cert` and `key`, or `certificates`".to_string());
        }
        if self.require_client_cert && self.client_ca.is_none() {
            out.push("`require_client_cert` needs `client_ca`".to_string());
        }
        if self.handshake_timeout.0.is_zero() {
            out.push("`handshake_timeout` must be more than zero".to_string());
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// One certificate and the names it serves (lowercase; `*.` wildcards).
struct Served {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Chooses a certificate by SNI: an exact name first, then a wildcard
/// covering one label, else the first certificate.
#[derive(Debug)]
struct BySni {
    certificates: Vec<Served>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl BySni {
    fn choose(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let chosen = name.and_then(|name| {
            let name = name.to_ascii_lowercase();
            let exact = self.certificates.iter().find(|c| c.names.contains(&name));
            exact.or_else(|| {
                let parent = name.split_once('.').map(|(_, rest)| rest)?;
                self.certificates
                    .iter()
                    .find(|c| c.names.iter().any(|n| n.strip_prefix("*.") == Some(parent)))
            })
        });
        chosen.or(self.certificates.first()).map(|c| c.key.clone())
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name())
    }
}

/// The listener's TLS settings, swapped whole on reload.
pub struct Tls {
    config: TlsConfig,
    current: ArcSwap<rustls::ServerConfig>,
    /// The files' modification times at the last load.
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

impl Tls {
    /// Reads every file; fails on the first problem.
    pub fn load(config: &TlsConfig) -> Result<Arc<Tls>, TlsError> {
        let server = build(config)?;
        Ok(Arc::new(Tls {
            stamps: Mutex::new(stamps(config)),
            current: ArcSwap::from_pointee(server),
            config: config.clone(),
        }))
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.config.handshake_timeout.0
    }

    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }

    /// Reads the files again and serves new handshakes with them; on a
    /// problem the old certificates keep serving.
    pub fn reload(&self) -> Result<(), TlsError> {
        let server = build(&self.config)?;
        self.current.store(Arc::new(server));
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps(&self.config);
        Ok(())
    }

    /// Reloads if a file changed since the last load.
    fn reload_if_changed(&self) {
        let now = stamps(&self.config);
        if *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) == now {
            return;
        }
        match self.reload() {
            Ok(()) => tracing::info!("TLS certificates reloaded: their files changed"),
            Err(error) => {
                // Keep serving the old ones, and do not retry until the
                // files change again (a half-written file will).
                *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = now;
                tracing::error!(%error, "TLS certificates not reloaded; the previous ones keep serving");
            }
        }
    }

    /// Watches the files while `self` lives.
    pub fn watch(self: &Arc<Self>) {
        let interval = self.config.watch_interval.0;
        if interval.is_zero() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(tls) = weak.upgrade() else { return };
                tls.reload_if_changed();
            }
        });
    }
}

fn files(config: &TlsConfig) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = config.pairs().into_iter().flat_map(|p| [p.cert, p.key]).collect();
    files.extend(config.client_ca.clone());
    files
}

fn stamps(config: &TlsConfig) -> Vec<Option<SystemTime>> {
    files(config)
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, detail: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    let certs = certs.map_err(|e| invalid(path, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn served(pair: &CertificateFiles) -> Result<Served, TlsError> {
    let chain = certificates(&pair.cert)?;
    let key_pem = read(&pair.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| invalid(&pair.key, format!("not a PEM private key: {e}")))?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| invalid(&pair.key, format!("does not match the certificate: {e}")))?;
    let names = crate::x509::Names::of(&certified.cert[0])
        .map_err(|e| invalid(&pair.cert, e))?
        .server_names();
    Ok(Served {
        names,
        key: Arc::new(certified),
    })
}

fn build(config: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    let certificates = config.pairs().iter().map(served).collect::<Result<Vec<_>, _>>()?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates_of_ca(path)? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(path, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if config.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| invalid(path, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(Arc::new(BySni { certificates }));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(server)
}

fn certificates_of_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certificates(path)
}

/// What the handshake established, kept on the connection.
#[derive(Debug, Default)]
pub struct TlsInfo {
    /// The name the client asked for.
    pub server_name: Option<String>,
    /// The client's verified certificate, when it sent one.
    pub client: Option<crate::x509::Names>,
}

/// A TLS listener: `accept` takes the TCP connection, `establish` runs the
/// handshake in the connection's own task.
pub struct TlsListener {
    pub tcp: TcpListener,
    pub tls: Arc<Tls>,
}

impl crate::listener::Listener for TlsListener {
    type Stream = TcpStream;
    type Io = tokio_rustls::server::TlsStream<TcpStream>;

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp.local_addr()
    }

    async fn accept(&mut self) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
        let (stream, peer) = self.tcp.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }

    fn establish(
        &self,
        stream: TcpStream,
    ) -> impl Future<Output = std::io::Result<Self::Io>> + Send + 'static {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.current());
        let limit = self.tls.handshake_timeout();
        async move {
            match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                Ok(result) => result,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                )),
            }
        }
    }

    fn describe(io: &Self::Io) -> Option<TlsInfo> {
        let (_, session) = io.get_ref();
        let client = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| crate::x509::Names::of(cert).ok());
        Some(TlsInfo {
            server_name: session.server_name().map(str::to_string),
            client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(names: &[&str]) -> Served {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let certified = CertifiedKey::from_der(vec![cert.der().clone()], der, &provider).unwrap();
        Served {
            names: names.iter().map(|n| n.to_string()).collect(),
            key: Arc::new(certified),
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let sni = BySni {
            certificates: vec![
                served(&["default.test"]),
                served(&["*.apps.test"]),
                served(&["api.apps.test"]),
            ],
        };
        let pick = |name| {
            let key = sni.choose(name).unwrap();
            sni.certificates
                .iter()
                .position(|c| Arc::ptr_eq(&c.key, &key))
                .unwrap()
        };
        assert_eq!(pick(Some("API.apps.test")), 2, "exact wins over the wildcard");
        assert_eq!(pick(Some("web.apps.test")), 1);
        assert_eq!(pick(Some("a.b.apps.test")), 0, "a wildcard covers one label");
        assert_eq!(pick(Some("other.test")), 0);
        assert_eq!(pick(None), 0);
    }
}
