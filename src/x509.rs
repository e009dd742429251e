//! The names in an X.509 certificate: what a server certificate serves
//! (for SNI) and who a client certificate names (for mTLS).

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A certificate's subject common name and subject alternative names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub common_name: Option<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
}

impl Names {
    pub fn of(der: &CertificateDer<'_>) -> Result<Names, String> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let mut names = Names {
            common_name,
            ..Names::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => names.dns.push(n.to_string()),
                    GeneralName::URI(u) => names.uris.push(u.to_string()),
                    GeneralName::RFC822Name(e) => names.emails.push(e.to_string()),
                    _ => {}
                }
            }
        }
        Ok(names)
    }

    /// The host names a server certificate serves, lowercase: its DNS
    /// names, or its common name when it has none.
    pub fn server_names(&self) -> Vec<String> {
        let names = if self.dns.is_empty() {
            self.common_name.iter().cloned().collect()
        } else {
            self.dns.clone()
        };
        names.into_iter().map(|n| n.to_ascii_lowercase()).collect()
    }
}
