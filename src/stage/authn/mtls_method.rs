//! `auth = ["mtls"]`: the client certificate the TLS handshake verified
//! against `[server.tls] client_ca` is the credential. One of its names
//! (`[auth.mtls] identity`: the subject's CN, or the first DNS, URI or
//! email SAN) is the consumer, or, with `[[auth.mtls.clients]]`, is looked
//! up there and only listed clients pass.

use std::collections::HashMap;

use serde::Deserialize;

use crate::principal::Principal;
use crate::x509::Names;

/// `[auth.mtls]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsConfig {
    #[serde(default)]
    pub identity: CertIdentity,
    /// When listed, only these clients pass, as these consumers.
    #[serde(default)]
    pub clients: Vec<MtlsClient>,
}

/// Which name of a client certificate identifies the client.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CertIdentity {
    #[default]
    SubjectCn,
    SanDns,
    SanUri,
    SanEmail,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsClient {
    /// The certificate's name (of the `identity` kind).
    pub identity: String,
    pub consumer: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Why a certificate was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsFailure {
    /// The certificate has no name of the configured kind.
    NoIdentity,
    /// Its name is not among `clients`.
    NotListed,
}

impl MtlsFailure {
    pub fn reason(self) -> &'static str {
        match self {
            MtlsFailure::NoIdentity => "no_identity",
            MtlsFailure::NotListed => "not_listed",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            MtlsFailure::NoIdentity => {
                "The client certificate does not name the identity this gateway expects."
            }
            MtlsFailure::NotListed => "The client certificate is not one this gateway accepts.",
        }
    }
}

pub struct MtlsAuth {
    identity: CertIdentity,
    /// Listed clients' principals, built once; `None`: every verified
    /// certificate passes as the consumer it names.
    clients: Option<HashMap<String, Principal>>,
}

impl MtlsAuth {
    pub fn new(config: &MtlsConfig) -> MtlsAuth {
        let clients = (!config.clients.is_empty()).then(|| {
            config
                .clients
                .iter()
                .map(|c| {
                    (
                        c.identity.clone(),
                        Principal::certificate(&c.consumer, c.scopes.clone()),
                    )
                })
                .collect()
        });
        MtlsAuth {
            identity: config.identity,
            clients,
        }
    }

    /// The principal of a verified client certificate.
    pub fn identify(&self, names: &Names) -> Result<Principal, MtlsFailure> {
        let candidates: &[String] = match self.identity {
            CertIdentity::SubjectCn => names.common_name.as_slice(),
            CertIdentity::SanDns => &names.dns,
            CertIdentity::SanUri => &names.uris,
            CertIdentity::SanEmail => &names.emails,
        };
        match &self.clients {
            None => candidates
                .first()
                .map(|name| Principal::certificate(name, Vec::new()))
                .ok_or(MtlsFailure::NoIdentity),
            Some(clients) => {
                if candidates.is_empty() {
                    return Err(MtlsFailure::NoIdentity);
                }
                candidates
                    .iter()
                    .find_map(|name| clients.get(name).cloned())
                    .ok_or(MtlsFailure::NotListed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            common_name: Some("billing".into()),
            dns: vec!["billing.internal".into()],
            uris: vec!["spiffe://corp/billing".into()],
            emails: vec![],
        }
    }

    #[test]
    fn the_configured_name_is_the_consumer() {
        let auth = MtlsAuth::new(&MtlsConfig::default());
        assert_eq!(auth.identify(&names()).unwrap().consumer(), Some("billing"));
        let by_uri = MtlsAuth::new(&MtlsConfig {
            identity: CertIdentity::SanUri,
            clients: vec![],
        });
        assert_eq!(
            by_uri.identify(&names()).unwrap().consumer(),
            Some("spiffe://corp/billing")
        );
        let by_email = MtlsAuth::new(&MtlsConfig {
            identity: CertIdentity::SanEmail,
            clients: vec![],
        });
        assert_eq!(by_email.identify(&names()).unwrap_err(), MtlsFailure::NoIdentity);
    }

    #[test]
    fn listed_clients_map_to_their_consumer_and_others_are_refused() {
        let auth = MtlsAuth::new(&MtlsConfig {
            identity: CertIdentity::SanDns,
            clients: vec![MtlsClient {
                identity: "billing.internal".into(),
                consumer: "billing-service".into(),
                scopes: vec!["invoices:read".into()],
            }],
        });
        let principal = auth.identify(&names()).unwrap();
        assert_eq!(principal.consumer(), Some("billing-service"));
        assert_eq!(principal.scopes(), ["invoices:read"]);
        let mut stranger = names();
        stranger.dns = vec!["other.internal".into()];
        assert_eq!(auth.identify(&stranger).unwrap_err(), MtlsFailure::NotListed);
    }
}
