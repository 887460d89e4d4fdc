//! MTA-STS (RFC 8461): a recipient domain's promise that its MX hosts take TLS with
//! certificates a public CA vouches for. The policy is found through the TXT record
//! `_mta-sts.<domain>` and fetched over HTTPS from `mta-sts.<domain>`; it is cached for its
//! `max_age` and fetched again when the record's `id` changes.
//!
//! Implementation notes:
//! - A remote policy host is a hostile peer like any other: one connection, a deadline
//!   for the whole fetch, no redirects (§3.3), status 200 and `text/plain` only, at most
//!   [`MAX_POLICY`] bytes, at most [`MAX_MX`] patterns, `max_age` capped at a year.
//! - The cache lives in memory: after a restart the first delivery to a domain fetches
//!   again (an attacker who can block that fetch then gets opportunistic TLS once, the
//!   exposure §10.1 describes for a first contact).
//! - `testing` is tried as `enforce`; where that fails the mail goes as opportunistic TLS
//!   would, and the failure is logged and counted for TLS reporting (RFC 8460).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

/// Largest policy body taken (RFC 8461 §3.3 lets clients pick a limit; 64 KiB as Postfix's
/// postfix-mta-sts-resolver).
pub const MAX_POLICY: usize = 64 * 1024;
/// Most `mx` patterns taken from one policy.
pub const MAX_MX: usize = 100;
/// RFC 8461 §3.2: max_age at most 31557600 seconds.
pub const MAX_AGE: u64 = 31_557_600;
/// Most domains whose policies are kept (expired ones go first, then the oldest).
pub const MAX_CACHED: usize = 10_000;
/// One deadline for the TXT lookup, connect, TLS and the body together.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// `mx` patterns, lower case, without a trailing dot.
    pub mx: Vec<String>,
    pub max_age: u64,
    /// The TXT record's id it was fetched under.
    pub id: String,
    /// The policy text, for TLS reports (RFC 8460 §4.4: policy-string).
    pub text: String,
}

impl Policy {
    /// RFC 8461 §4.1: an MX host matches a pattern exactly, or `*.` plus exactly one more
    /// label on the left.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => *p == host,
        })
    }
}

/// RFC 8461 §3.1: `v=STSv1; id=...;` (the id is 1–32 letters and digits). `None` for
/// anything else, which counts as no record.
pub fn parse_txt(txt: &str) -> Option<String> {
    let mut fields = txt.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next()? != "v=STSv1" {
        return None;
    }
    let mut id = None;
    for f in fields {
        if let Some(v) = f.strip_prefix("id=") {
            if (1..=32).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                id = Some(v.to_owned());
            } else {
                return None;
            }
        }
    }
    id
}

/// RFC 8461 §3.2: `key: value` lines (CRLF or LF).
pub fn parse_policy(text: &str, id: &str) -> Result<Policy, String> {
    let (mut version, mut mode, mut max_age) = (None, None, None);
    let mut mx = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(format!("malformed policy line {line:?}"));
        };
        let v = v.trim();
        match k.trim() {
            "version" => version = Some(v.to_owned()),
            "mode" => {
                mode = Some(match v {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    _ => return Err(format!("unknown mode {v:?}")),
                })
            }
            "max_age" => {
                max_age = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("bad max_age {v:?}"))?
                        .min(MAX_AGE),
                )
            }
            "mx" => {
                if mx.len() >= MAX_MX {
                    return Err("too many mx patterns".into());
                }
                let p = v.trim_end_matches('.').to_ascii_lowercase();
                if p.is_empty()
                    || p.contains(['/', ' ', '@'])
                    || p.get(1..).is_some_and(|r| r.contains('*'))
                {
                    return Err(format!("bad mx pattern {v:?}"));
                }
                mx.push(p);
            }
            // §3.2: unknown fields are ignored.
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("version is not STSv1".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mode != Mode::None && mx.is_empty() {
        return Err("no mx pattern".into());
    }
    Ok(Policy {
        mode,
        mx,
        max_age,
        id: id.to_owned(),
        text: text.to_owned(),
    })
}

struct Cached {
    policy: Policy,
    expires: Instant,
}

/// Policies of recipient domains, fetched and cached.
pub struct Sts {
    cache: Mutex<HashMap<String, Cached>>,
    /// 443 on the internet; tests point it elsewhere.
    pub port: u16,
    pub roots: Arc<rustls::RootCertStore>,
}

impl Sts {
    pub fn new(port: u16, roots: Arc<rustls::RootCertStore>) -> Self {
        Sts {
            cache: Mutex::default(),
            port,
            roots,
        }
    }

    /// The policy in force for `domain`, if any (RFC 8461 §5.1). `Err` describes a fetch
    /// that failed (logged; it is delivered as with no policy unless one is cached).
    pub async fn policy(
        &self,
        resolver: &hickory_resolver::TokioResolver,
        domain: &str,
    ) -> Result<Option<Policy>, String> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let now = Instant::now();
        let cached = {
            let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            c.get(&domain)
                .filter(|c| c.expires > now)
                .map(|c| c.policy.clone())
        };
        let id: Option<String> = tokio::time::timeout(FETCH_TIMEOUT, txt_id(resolver, &domain))
            .await
            .unwrap_or_default();
        let Some(id) = id else {
            // §5.1: no record, but a cached policy still applies until it expires.
            return Ok(cached);
        };
        if let Some(p) = &cached
            && p.id == id
        {
            return Ok(cached);
        }
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch(resolver, &domain)).await {
            Ok(Ok(text)) => {
                let policy = parse_policy(&text, &id)
                    .map_err(|e| format!("MTA-STS policy of {domain}: {e}"));
                match policy {
                    Ok(p) => {
                        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                        if cache.len() >= MAX_CACHED && !cache.contains_key(&domain) {
                            cache.retain(|_, c| c.expires > now);
                            if cache.len() >= MAX_CACHED {
                                let oldest = cache
                                    .iter()
                                    .min_by_key(|(_, c)| c.expires)
                                    .map(|(d, _)| d.clone());
                                if let Some(d) = oldest {
                                    cache.remove(&d);
                                }
                            }
                        }
                        cache.insert(
                            domain.clone(),
                            Cached {
                                policy: p.clone(),
                                expires: now + Duration::from_secs(p.max_age),
                            },
                        );
                        Ok(Some(p))
                    }
                    Err(e) if cached.is_some() => {
                        tracing::warn!(domain, error = e, "keeping the cached MTA-STS policy");
                        Ok(cached)
                    }
                    Err(e) => Err(e),
                }
            }
            // §5.1: a failed refresh keeps the cached policy.
            _ if cached.is_some() => Ok(cached),
            Ok(Err(e)) => Err(format!("MTA-STS policy of {domain}: {e}")),
            Err(_) => Err(format!("MTA-STS policy of {domain}: timeout")),
        }
    }

    /// GET https://mta-sts.<domain>/.well-known/mta-sts.txt (RFC 8461 §3.3).
    async fn fetch(
        &self,
        resolver: &hickory_resolver::TokioResolver,
        domain: &str,
    ) -> Result<String, String> {
        let host = format!("mta-sts.{domain}");
        let ip = resolver
            .lookup_ip(format!("{host}.").as_str())
            .await
            .map_err(|e| format!("{host}: {e}"))?
            .iter()
            .next()
            .ok_or_else(|| format!("{host}: no address"))?;
        let tcp = tokio::net::TcpStream::connect(SocketAddr::new(ip, self.port))
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(self.roots.clone())
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{host}: TLS: {e}"))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("{host}: {e}"))?;
        // The connection's own task ends with the fetch's deadline at the latest.
        tokio::spawn(tokio::time::timeout(FETCH_TIMEOUT, conn));
        let req = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, &host)
            .header(hyper::header::USER_AGENT, "yubin")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        // §3.3: no redirects; only 200.
        if resp.status() != hyper::StatusCode::OK {
            return Err(format!("{host}: HTTP status {}", resp.status()));
        }
        let ctype = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ctype
            .split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain"))
        {
            return Err(format!("{host}: Content-Type {ctype:?} is not text/plain"));
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_POLICY)
            .collect()
            .await
            .map_err(|e| format!("{host}: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| format!("{host}: policy is not UTF-8"))
    }
}

/// The id of the domain's `_mta-sts` TXT record, if it has one valid record (§3.1: more
/// than one, or none, is no policy).
async fn txt_id(resolver: &hickory_resolver::TokioResolver, domain: &str) -> Option<String> {
    let txt = resolver
        .txt_lookup(format!("_mta-sts.{domain}.").as_str())
        .await
        .ok()?;
    let records: Vec<String> = txt
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            hickory_resolver::proto::rr::RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|d| String::from_utf8_lossy(d).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .filter(|t| t.starts_with("v=STSv1"))
        .collect();
    match records.as_slice() {
        [one] => parse_txt(one),
        _ => None,
    }
}

/// The roots MX and policy certificates are checked against: Mozilla's, plus those in
/// `extra` (a PEM file: a private CA, or the tests').
pub fn roots(extra: Option<&std::path::Path>) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        for c in certs {
            let c = c.map_err(|e| anyhow::anyhow!("bad certificate in {}: {e}", path.display()))?;
            roots
                .add(c)
                .map_err(|e| anyhow::anyhow!("bad CA certificate in {}: {e}", path.display()))?;
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_records() {
        assert_eq!(
            parse_txt("v=STSv1; id=20160831085700Z;"),
            Some("20160831085700Z".into())
        );
        assert_eq!(parse_txt("v=STSv1;id=abc"), Some("abc".into()));
        assert_eq!(parse_txt("v=STSv2; id=abc"), None);
        assert_eq!(parse_txt("v=STSv1; id=a-b"), None);
        assert_eq!(parse_txt("v=STSv1;"), None);
    }

    #[test]
    fn policies() {
        // RFC 8461 §3.2's example.
        let p = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n",
            "x",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604_800);
        assert!(p.matches("mail.example.com") && p.matches("MAIL.example.com."));
        assert!(p.matches("mx1.example.net") && !p.matches("a.b.example.net"));
        assert!(!p.matches("example.net") && !p.matches("evil-mail.example.com"));
        assert!(parse_policy("version: STSv1\nmode: enforce\nmax_age: 1\n", "x").is_err());
        assert!(parse_policy("version: STSv1\nmode: sometimes\nmx: a\nmax_age: 1\n", "x").is_err());
        assert!(parse_policy("mode: enforce\nmx: a\nmax_age: 1\n", "x").is_err());
        assert!(
            parse_policy(
                "version: STSv1\nmode: enforce\nmx: a.*.b\nmax_age: 1\n",
                "x"
            )
            .is_err()
        );
        let none = parse_policy("version: STSv1\nmode: none\nmax_age: 99999999999\n", "x").unwrap();
        assert_eq!((none.mode, none.max_age), (Mode::None, MAX_AGE));
        let many = format!(
            "version: STSv1\nmode: enforce\nmax_age: 1\n{}",
            "mx: a\n".repeat(MAX_MX + 1)
        );
        assert!(parse_policy(&many, "x").is_err());
    }
}
