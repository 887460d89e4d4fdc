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
