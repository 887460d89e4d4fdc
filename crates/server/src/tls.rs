//! TLS for every listener: rustls with the ring provider, TLS 1.2 and 1.3 only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// The certificate and key files in use: the configured pair or the generated one.
pub fn paths(cfg: &Config) -> (PathBuf, PathBuf) {
    match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => (
            cfg.tls_dir().join("cert.pem"),
            cfg.tls_dir().join("key.pem"),
        ),
    }
}

/// Write a self-signed certificate for `names` (first run, or when the generated pair is
/// missing). The key file is created readable by its owner only.
pub fn generate_self_signed(dir: &Path, names: &[String]) -> Result<()> {
    let key_pair = rcgen::KeyPair::generate().context("cannot generate a TLS key")?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .context("invalid name for the self-signed certificate")?;
    // Clients that connect by address (127.0.0.1, the LAN address) check it against the
    // certificate's IP SANs (RFC 6125 §1.7.2): name them all.
    for ip in local_addresses() {
        let san = rcgen::SanType::IpAddress(ip);
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, first.clone());
    }
    let cert = params
        .self_signed(&key_pair)
        .context("cannot generate a self-signed certificate")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key_path = dir.join("key.pem");
    write_private(&key_path, key_pair.serialize_pem().as_bytes())?;
    let cert_path = dir.join("cert.pem");
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    Ok(())
}

/// Loopback and this machine's interface addresses (IPv6 link-local ones excluded: they
/// need a scope a certificate cannot name).
#[allow(unsafe_code)] // getifaddrs through libc
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut out = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    #[cfg(target_os = "linux")]
    // SAFETY: getifaddrs fills a list we only read and then free with freeifaddrs; each
    // sockaddr is read as the type its family says.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) == 0 {
            let mut cur = list;
            while !cur.is_null() {
                let a = (*cur).ifa_addr;
                if !a.is_null() {
                    let ip = match i32::from((*a).sa_family) {
                        libc::AF_INET => {
                            let sin = &*(a as *const libc::sockaddr_in);
                            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                                sin.sin_addr.s_addr,
                            ))))
                        }
                        libc::AF_INET6 => {
                            let sin6 = &*(a as *const libc::sockaddr_in6);
                            let v6 = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                            (!v6.is_unicast_link_local()).then_some(IpAddr::V6(v6))
                        }
                        _ => None,
                    };
                    if let Some(ip) = ip
                        && !out.contains(&ip)
                    {
                        out.push(ip);
                    }
                }
                cur = (*cur).ifa_next;
            }
            libc::freeifaddrs(list);
        }
    }
    out
}

/// SHA-256 fingerprint of the first certificate in a PEM file, as `AB:CD:...`, for the
/// user to compare with what a client shows.
pub fn fingerprint(cert: &Path) -> Option<String> {
    let der = CertificateDer::pem_file_iter(cert).ok()?.next()?.ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    Some(
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Load the PEM pair into a rustls server configuration.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid PEM in TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate found in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read TLS private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "TLS certificate {} does not match key or is unusable",
                cert.display()
            )
        })?;
    sc.ignore_client_order = true;
    Ok(Arc::new(sc))
}

/// `TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384`, for Received headers and logs.
pub fn describe(conn: &rustls::ServerConnection) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "TLS".to_string(),
    };
    match conn.negotiated_cipher_suite() {
        Some(cs) => format!("{version} with cipher {:?}", cs.suite()),
        None => version,
    }
}
