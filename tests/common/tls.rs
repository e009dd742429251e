//! A certificate authority made in the test (rcgen), its server and client
//! certificates as PEM files, and HTTPS clients that trust only it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Leaf {
    /// Writes `<stem>.pem` and `<stem>.key` in `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        // Written beside and renamed, as a certificate manager does, so a
        // reload never reads half a file.
        for (path, text) in [(&key, &self.key), (&cert, &self.cert)] {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, text).unwrap();
            std::fs::rename(&partial, path).unwrap();
        }
        (cert, key)
    }

    /// The identity a client presents (certificate and key in one PEM).
    pub fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.cert, self.key).as_bytes()).unwrap()
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.pem()).unwrap();
        path
    }

    fn leaf(&self, common_name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `names` (the first is also its CN).
    pub fn server(&self, names: &[&str]) -> Leaf {
        self.leaf(names[0], names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with this CN and SANs (DNS names, or URIs
    /// such as `spiffe://…`).
    pub fn client(&self, common_name: &str, sans: &[&str]) -> Leaf {
        self.leaf(common_name, sans, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// An HTTPS client that trusts only this CA and sends `host`'s requests
    /// to `addr`.
    pub fn client_for(&self, host: &str, addr: SocketAddr) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.pem().as_bytes()).unwrap()])
            .resolve(host, addr)
            .no_proxy()
            .tls_info(true)
            .timeout(Duration::from_secs(10))
    }
}

/// The certificate a response came over, as the names it holds.
pub fn served_names(response: &reqwest::Response) -> portcullis::x509::Names {
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls_info is on");
    let der = info.peer_certificate().expect("the server sent a certificate");
    portcullis::x509::Names::of(&rustls_pki_types::CertificateDer::from(der.to_vec())).unwrap()
}
