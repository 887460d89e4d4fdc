//! DKIM (RFC 6376) for mail leaving from local domains: one RSA key per domain in
//! `<data>/dkim/<domain>.der` (PKCS#1, owner-only), selector `yubin`, signatures made with
//! mail-auth when the outbound queue sends a message.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};

pub const SELECTOR: &str = "yubin";

/// The headers signed (RFC 6376 §5.4.1: From is required; these are the ones a forger
/// would want to change).
const SIGNED_HEADERS: [&str; 11] = [
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
];

pub fn key_path(dkim_dir: &Path, domain: &str) -> PathBuf {
    dkim_dir.join(format!("{}.der", domain.to_lowercase()))
}

/// Create the domain's key if it has none. Returns the base64 public key and whether a
/// new key was made.
pub fn ensure_key(dkim_dir: &Path, domain: &str) -> Result<(String, bool)> {
    use mail_auth::dkim::generate::DkimKeyPair;
    let path = key_path(dkim_dir, domain);
    if path.exists() {
        let der =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let key =
            RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)))
                .map_err(|e| anyhow::anyhow!("invalid DKIM key {}: {e}", path.display()))?;
        return Ok((b64(&key.public_key()), false));
    }
    let pair = DkimKeyPair::generate_rsa(2048).map_err(|e| anyhow::anyhow!("DKIM key: {e}"))?;
    std::fs::create_dir_all(dkim_dir)
        .with_context(|| format!("cannot create {}", dkim_dir.display()))?;
    write_private(&path, pair.private_key())?;
    Ok((pair.encoded_public_key(), true))
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The DNS records to publish for a domain: DKIM key, and SPF/DMARC suggestions.
pub fn records(domain: &str, public_key: &str, hostname: &str, sts_id: &str) -> String {
    format!(
        "{SELECTOR}._domainkey.{domain}. IN TXT \"v=DKIM1; k=rsa; p={public_key}\"\n\
         {domain}. IN TXT \"v=spf1 mx a:{hostname} -all\"\n\
         _dmarc.{domain}. IN TXT \"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}\"\n\
         _mta-sts.{domain}. IN TXT \"v=STSv1; id={sts_id}\"\n\
         mta-sts.{domain}. IN CNAME {hostname}.\n\
         _smtp._tls.{domain}. IN TXT \"v=TLSRPTv1; rua=mailto:postmaster@{domain}\"\n"
    )
}

/// Key files read once and kept while their size and modification time stay the same (a
/// `yubin domain dkim` rotation is seen at the next message): a stat per message instead
/// of a read.
type KeyCache =
    std::collections::HashMap<PathBuf, (std::time::SystemTime, u64, std::sync::Arc<Vec<u8>>)>;
static KEYS: std::sync::Mutex<Option<KeyCache>> = std::sync::Mutex::new(None);

fn key_der(path: &Path) -> Option<std::sync::Arc<Vec<u8>>> {
    let meta = std::fs::metadata(path).ok()?;
    let stamp = (meta.modified().ok()?, meta.len());
    let mut keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    let keys = keys.get_or_insert_with(Default::default);
    if let Some((m, l, der)) = keys.get(path)
        && (*m, *l) == stamp
    {
        return Some(der.clone());
    }
    let der = std::sync::Arc::new(std::fs::read(path).ok()?);
    // A handful of domains; bounded all the same.
    if keys.len() >= 10_000 {
        keys.clear();
    }
    keys.insert(path.to_owned(), (stamp.0, stamp.1, der.clone()));
    Some(der)
}

/// A `DKIM-Signature` header (with CRLF) for `message`, if `domain` has a key.
pub fn sign(dkim_dir: &Path, domain: &str, message: &[u8]) -> Option<String> {
    let der = key_der(&key_path(dkim_dir, domain))?.as_ref().clone();
    let key =
        RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der))).ok()?;
    let sig = DkimSigner::from_key(key)
        .domain(domain.to_lowercase())
        .selector(SELECTOR)
        .headers(SIGNED_HEADERS)
        .sign(message)
        .ok()?;
    Some(sig.to_header())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file is read once, and again as soon as it changes (a rotation).
    #[test]
    fn key_cache_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.der");
        std::fs::write(&path, b"first").unwrap();
        let a = key_der(&path).unwrap();
        assert_eq!(a.as_slice(), b"first");
        assert!(
            std::sync::Arc::ptr_eq(&a, &key_der(&path).unwrap()),
            "cached"
        );
        std::fs::write(&path, b"second key").unwrap();
        assert_eq!(key_der(&path).unwrap().as_slice(), b"second key");
        std::fs::remove_file(&path).unwrap();
        assert!(key_der(&path).is_none());
        // And a real key signs.
        ensure_key(dir.path(), "example.com").unwrap();
        let sig = sign(
            dir.path(),
            "example.com",
            b"From: a@example.com\r\n\r\nhi\r\n",
        )
        .unwrap();
        assert!(
            sig.starts_with("DKIM-Signature:") && sig.contains("d=example.com"),
            "{sig}"
        );
    }
}
