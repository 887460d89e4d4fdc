//! DANE for SMTP (RFC 7672): TLSA records, found through DNSSEC-validated answers, say
//! which certificate an MX host must present. A host with usable TLSA records gets TLS or
//! nothing, and its certificate is checked against them instead of against public CAs.
//!
//! Implementation notes:
//! - Validation is hickory's own (feature `dnssec-ring`: the same ring as rustls), with
//!   the IANA root key built in or the DNSKEY records of `[queue] dnssec_trust_anchor`.
//!   Only this resolver validates; MX and address lookups for delivery stay as they were.
//! - DANE applies when the domain's MX answer is secure and a host's TLSA answer is secure
//!   (§2.2). The address records are not checked separately (a simplification of §2.2.2:
//!   an attacker who forges them still has to present a certificate the TLSA records
//!   match).
//! - A lookup that fails outright (SERVFAIL, timeout) counts as no DANE for that host, a
//!   bogus answer as a failure of the host. §2.1.1 would defer on both; yubin defers only
//!   on what it can tell is an attack, and says so in the log.
//! - DANE-EE(3) matches the leaf with no name or date check (§3.1.1); DANE-TA(2) matches a
//!   certificate of the chain, which must then sign the leaf for the MX name (§3.1.2).
//!   PKIX-TA(0) and PKIX-EE(1) are not used for SMTP (§3.1.3): a host with only those has
//!   TLS required without authentication.

use std::sync::Arc;

use hickory_resolver::proto::dnssec::Proof;
use hickory_resolver::proto::rr::RData;
use rustls_pki_types::CertificateDer;

/// One TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// DANE-TA(2) and DANE-EE(3) with known selectors and matching types (RFC 7672 §3.1).
    fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3) && self.selector <= 1 && self.matching <= 2
    }
}

/// What DNSSEC says of one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostTlsa {
    /// No secure TLSA records: DANE does not apply (MTA-STS may).
    None,
    /// Secure TLSA records (usable ones or not).
    Records(Vec<Tlsa>),
    /// The answer failed validation: the host must not be used.
    Bogus,
}

pub struct Dane {
    resolver: hickory_resolver::TokioResolver,
}

/// The validating resolver: the configured servers (or the system's) with DNSSEC on.
pub fn resolver(
    servers: &[std::net::SocketAddr],
    anchor: Option<&std::path::Path>,
) -> anyhow::Result<hickory_resolver::TokioResolver> {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let mut builder = if servers.is_empty() {
        hickory_resolver::TokioResolver::builder_tokio()?
    } else {
        let mut cfg = ResolverConfig::default();
        for s in servers {
            let mut ns = NameServerConfig::udp_and_tcp(s.ip());
            for c in &mut ns.connections {
                c.port = s.port();
            }
            cfg.add_name_server(ns);
        }
        hickory_resolver::TokioResolver::builder_with_config(cfg, TokioRuntimeProvider::default())
    };
    builder.options_mut().validate = true;
    if let Some(path) = anchor {
        let anchors = hickory_resolver::proto::dnssec::TrustAnchors::from_file(path)
            .map_err(|e| anyhow::anyhow!("cannot read the trust anchor {}: {e}", path.display()))?;
        builder = builder.with_trust_anchor(Arc::new(anchors));
    }
    Ok(builder.build()?)
}

impl Dane {
    pub fn new(resolver: hickory_resolver::TokioResolver) -> Self {
        Dane { resolver }
    }

    /// Is the domain's MX answer secure (§2.2.1)? A domain without MX records is judged
    /// by its own name's TLSA records later (the implicit MX), so `true` when that
    /// answer of no records is secure.
    pub async fn mx_secure(&self, domain: &str) -> bool {
        let name = format!("{}.", domain.trim_end_matches('.'));
        match self.resolver.mx_lookup(name.as_str()).await {
            Ok(l) => {
                let mx: Vec<_> = l
                    .answers()
                    .iter()
                    .filter(|r| matches!(r.data, RData::MX(_)))
                    .collect();
                !mx.is_empty() && mx.iter().all(|r| r.proof == Proof::Secure)
            }
            Err(e) => {
                tracing::debug!(domain, error = %e, "no secure MX answer: no DANE");
                false
            }
        }
    }

    /// The TLSA records of `_port._tcp.host` (RFC 7672 §2.2).
    pub async fn tlsa(&self, host: &str, port: u16) -> HostTlsa {
        let name = format!("_{port}._tcp.{}.", host.trim_end_matches('.'));
        match self.resolver.tlsa_lookup(name.as_str()).await {
            Ok(l) => {
                let mut out = Vec::new();
                for r in l.answers() {
                    let RData::TLSA(t) = &r.data else { continue };
                    match r.proof {
                        Proof::Secure => out.push(Tlsa {
                            usage: u8::from(t.cert_usage),
                            selector: u8::from(t.selector),
                            matching: u8::from(t.matching),
                            data: t.cert_data.clone(),
                        }),
                        Proof::Bogus => return HostTlsa::Bogus,
                        _ => return HostTlsa::None,
                    }
                }
                if out.is_empty() {
                    HostTlsa::None
                } else {
                    HostTlsa::Records(out)
                }
            }
            Err(e) => {
                let text = e.to_string();
                if text.to_ascii_lowercase().contains("bogus") {
                    HostTlsa::Bogus
                } else {
                    tracing::debug!(host, error = text, "no TLSA records");
                    HostTlsa::None
                }
            }
        }
    }
}

fn digest(matching: u8, data: &[u8]) -> Vec<u8> {
    match matching {
        1 => ring::digest::digest(&ring::digest::SHA256, data)
            .as_ref()
            .to_vec(),
        2 => ring::digest::digest(&ring::digest::SHA512, data)
            .as_ref()
            .to_vec(),
        _ => data.to_vec(),
    }
}

/// The part of a certificate a selector names: 0 the whole DER, 1 its SPKI.
fn selected(selector: u8, cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    match selector {
        0 => Some(cert.as_ref().to_vec()),
        1 => webpki::EndEntityCert::try_from(cert)
            .ok()
            .map(|c| c.subject_public_key_info().as_ref().to_vec()),
        _ => None,
    }
}

fn matches_cert(t: &Tlsa, cert: &CertificateDer<'_>) -> bool {
    selected(t.selector, cert).is_some_and(|d| digest(t.matching, &d) == t.data)
}

/// Does the presented chain (leaf first) match the records, for MX host `host`?
/// `Ok(true)`: authenticated; `Ok(false)`: no usable record (TLS without authentication,
/// §2.2); `Err`: it does not match (the host must not be used).
pub fn verify(
    records: &[Tlsa],
    chain: &[CertificateDer<'static>],
    host: &str,
) -> Result<bool, String> {
    let usable: Vec<&Tlsa> = records.iter().filter(|t| t.usable()).collect();
    if usable.is_empty() {
        return Ok(false);
    }
    let Some(leaf) = chain.first() else {
        return Err("no certificate".into());
    };
    let mut anchor_seen = false;
    for t in &usable {
        match t.usage {
            3 if matches_cert(t, leaf) => return Ok(true),
            2 => {
                for ta in chain.iter().skip(1) {
                    if matches_cert(t, ta) {
                        if signs_for(ta, leaf, chain, host) {
                            return Ok(true);
                        }
                        anchor_seen = true;
                    }
                }
            }
            _ => {}
        }
    }
    if anchor_seen {
        return Err(format!(
            "the chain has the trust anchor a TLSA record names, but the certificate is not valid for {host} under it"
        ));
    }
    Err(format!(
        "the certificate matches none of the {} TLSA records",
        usable.len()
    ))
}

/// DANE-TA: `ta` as the only root, the leaf must chain to it and be valid for `host`.
fn signs_for(
    ta: &CertificateDer<'static>,
    leaf: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
    host: &str,
) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    if roots.add(ta.clone()).is_err() {
        return false;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(v) =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
    else {
        return false;
    };
    let Ok(name) = rustls_pki_types::ServerName::try_from(host.trim_end_matches('.').to_owned())
    else {
        return false;
    };
    let intermediates: Vec<CertificateDer<'static>> =
        chain.iter().skip(1).filter(|c| *c != ta).cloned().collect();
    use rustls::client::danger::ServerCertVerifier;
    v.verify_server_cert(
        leaf,
        &intermediates,
        &name,
        &[],
        rustls_pki_types::UnixTime::now(),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> (CertificateDer<'static>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec!["mx.example".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (
            c.der().clone(),
            rcgen::PublicKeyData::subject_public_key_info(&key),
        )
    }

    #[test]
    fn dane_ee() {
        let (leaf, spki) = cert();
        let sha = |d: &[u8]| {
            ring::digest::digest(&ring::digest::SHA256, d)
                .as_ref()
                .to_vec()
        };
        let chain = vec![leaf.clone()];
        let ok = [
            Tlsa {
                usage: 3,
                selector: 1,
                matching: 1,
                data: sha(&spki),
            },
            Tlsa {
                usage: 3,
                selector: 0,
                matching: 1,
                data: sha(leaf.as_ref()),
            },
            Tlsa {
                usage: 3,
                selector: 1,
                matching: 0,
                data: spki.clone(),
            },
        ];
        for t in ok {
            assert_eq!(
                verify(std::slice::from_ref(&t), &chain, "any.name"),
                Ok(true),
                "{t:?}"
            );
        }
        let wrong = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0; 32],
        };
        assert!(verify(std::slice::from_ref(&wrong), &chain, "mx.example").is_err());
        // One good record among bad ones is enough; only unusable ones: TLS unauthenticated.
        let good = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: sha(&spki),
        };
        assert_eq!(verify(&[wrong, good], &chain, "x"), Ok(true));
        let pkix = Tlsa {
            usage: 1,
            selector: 1,
            matching: 1,
            data: sha(&spki),
        };
        assert_eq!(verify(&[pkix], &chain, "x"), Ok(false));
        assert!(
            verify(
                &[Tlsa {
                    usage: 3,
                    selector: 1,
                    matching: 1,
                    data: sha(&spki)
                }],
                &[],
                "x"
            )
            .is_err()
        );
    }
}
