//! Delivery of queued mail to other domains: MX lookup (RFC 5321 §5.1, RFC 7505), an SMTP
//! client with opportunistic STARTTLS (RFC 7435), per-recipient results, retries on the
//! `yubin_queue::Schedule`, and bounces (RFC 3464) for what cannot be delivered.
//!
//! Written here rather than with mail-send because the queue needs the reply of every
//! RCPT and the host that gave it, and its own TLS policy.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tracing::{info, warn};
use yubin_queue::{Action, Failure, Schedule};
use yubin_smtp::client::{
    Client, ClientConfig, ClientError, Envelope, RcptOutcome, Recipient, ReplyReader, Step,
    dot_stuff,
};
use yubin_smtp::dsn::{Notify, Ret};

use crate::mta_sts::Mode;
use yubin_store::{Attempt, Outbound, QueuedRcpt, Resolved, Store};

use crate::{new_id, unix_now};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// RFC 5321 §4.5.3.2: generous per-command timeouts (shortened; the queue retries anyway).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const DATA_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the runner lets new mail gather after starting delivery tasks.
const GATHER: Duration = Duration::from_millis(20);

pub struct Outbox {
    pub store: Arc<dyn Store>,
    pub hostname: String,
    pub resolver: hickory_resolver::TokioResolver,
    pub port: u16,
    pub schedule: Schedule,
    pub wake: Arc<tokio::sync::Notify>,
    pub limit: Arc<Semaphore>,
    pub dkim_dir: std::path::PathBuf,
    pub per_domain: usize,
    /// Seconds after acceptance when a still-queued sender gets a delay warning (0: never).
    pub delay_warning: i64,
    /// Source addresses of outbound connections: global, and by sender domain (lower case).
    pub sources: Vec<IpAddr>,
    pub sources_by_domain: std::collections::HashMap<String, Vec<IpAddr>>,
    /// MTA-STS policies of recipient domains (RFC 8461); `None` when turned off.
    pub sts: Option<crate::mta_sts::Sts>,
    /// What MX certificates are verified against.
    pub roots: Arc<rustls::RootCertStore>,
    /// What TLS sessions came to, for RFC 8460 reports.
    pub tls_reports: Arc<crate::tlsrpt::Reports>,
    /// DNSSEC-validated TLSA lookups (RFC 7672); `None` when turned off.
    pub dane: Option<crate::dane::Dane>,
}

impl Outbox {
    /// The source addresses for mail from this sender.
    fn sources_for(&self, mail_from: &str) -> &[IpAddr] {
        let domain = mail_from
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase());
        domain
            .and_then(|d| self.sources_by_domain.get(&d))
            .unwrap_or(&self.sources)
    }
}

/// The one of `sources` of the same family as `to`.
fn source_for(sources: &[IpAddr], to: IpAddr) -> Option<IpAddr> {
    sources
        .iter()
        .copied()
        .find(|s| s.is_ipv4() == to.is_ipv4())
}

/// Build the resolver: the configured servers (`ip:port`), or the system's.
pub fn resolver(servers: &[SocketAddr]) -> anyhow::Result<hickory_resolver::TokioResolver> {
    resolver_with(servers, None)
}

/// [`resolver`] with a per-query timeout other than hickory's default.
pub fn resolver_with(
    servers: &[SocketAddr],
    timeout: Option<std::time::Duration>,
) -> anyhow::Result<hickory_resolver::TokioResolver> {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let opts = |mut o: hickory_resolver::config::ResolverOpts| {
        if let Some(t) = timeout {
            o.timeout = t;
            o.attempts = 1;
        }
        o
    };
    if servers.is_empty() {
        match hickory_resolver::TokioResolver::builder_tokio().and_then(|mut b| {
            let o = opts(b.options_mut().clone());
            *b.options_mut() = o;
            b.build()
        }) {
            Ok(r) => return Ok(r),
            // No usable /etc/resolv.conf: start anyway; outbound mail waits in the queue
            // (with the reason in `yubin queue list`) until DNS is configured.
            Err(e) => warn!(error = %e, "no system DNS configuration; set [queue] dns_servers"),
        }
    }
    let mut cfg = ResolverConfig::default();
    for s in servers {
        let mut ns = NameServerConfig::udp_and_tcp(s.ip());
        for c in &mut ns.connections {
            c.port = s.port();
        }
        cfg.add_name_server(ns);
    }
    let r =
        hickory_resolver::TokioResolver::builder_with_config(cfg, TokioRuntimeProvider::default())
            .with_options(opts(Default::default()))
            .build()?;
    let _ = ConnectionConfig::udp; // (the type is named for the reader)
    Ok(r)
}

/// Where to deliver for a domain, best first (RFC 5321 §5.1).
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Hosts(Vec<(String, Vec<IpAddr>)>),
    /// RFC 7505: the domain accepts no mail.
    NullMx,
}

async fn resolve(
    resolver: &hickory_resolver::TokioResolver,
    domain: &str,
) -> Result<Route, String> {
    use hickory_resolver::proto::rr::RData;
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    let mut mxs: Vec<(u16, String)> = match resolver.mx_lookup(fqdn.as_str()).await {
        Ok(l) => l
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((mx.preference, mx.exchange.to_utf8())),
                _ => None,
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    if mxs.len() == 1 && (mxs[0].1 == "." || mxs[0].1.is_empty()) {
        return Ok(Route::NullMx);
    }
    // Equal preferences in random order (RFC 5321 §5.1), lowest first.
    let mut salt = [0u8; 8];
    let _ = getrandom::fill(&mut salt);
    let salt = u64::from_le_bytes(salt);
    mxs.sort_by_key(|(p, name)| {
        let h = name
            .bytes()
            .fold(salt, |a, b| a.rotate_left(5) ^ u64::from(b));
        (*p, h)
    });
    if mxs.is_empty() {
        // No MX: the domain itself is the implicit MX (RFC 5321 §5.1).
        mxs.push((0, fqdn.clone()));
    }
    let mut hosts = Vec::new();
    for (_, name) in mxs {
        if let Ok(ips) = resolver.lookup_ip(name.as_str()).await {
            let ips: Vec<IpAddr> = ips.iter().collect();
            if !ips.is_empty() {
                hosts.push((name.trim_end_matches('.').to_owned(), ips));
            }
        }
    }
    if hosts.is_empty() {
        return Err(format!("no address found for the mail servers of {domain}"));
    }
    Ok(Route::Hosts(hosts))
}

/// Checks the certificate against the roots and the MX name, and records what it found
/// instead of failing the handshake: opportunistic TLS takes any certificate (RFC 7435),
/// an MTA-STS `enforce` policy then refuses to send over one that did not verify, and a
/// `testing` one only reports it (RFC 8461 §5).
#[derive(Debug)]
struct Checking {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    result: std::sync::Mutex<Option<Result<(), String>>>,
    /// The chain presented, leaf first (for DANE).
    chain: std::sync::Mutex<Vec<rustls_pki_types::CertificateDer<'static>>>,
}

impl Checking {
    fn result(&self) -> Result<(), String> {
        self.result
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| Err("no certificate".into()))
    }
}

impl rustls::client::danger::ServerCertVerifier for Checking {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let r = self
            .webpki
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
            .map(|_| ())
            .map_err(|e| e.to_string());
        *self.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.chain.lock().unwrap_or_else(|e| e.into_inner()) = chain;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn tls_client(
    roots: &Arc<rustls::RootCertStore>,
) -> Option<(tokio_rustls::TlsConnector, Arc<Checking>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .ok()?;
    let checking = Arc::new(Checking {
        webpki,
        provider: provider.clone(),
        result: Default::default(),
        chain: Default::default(),
    });
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(checking.clone())
        .with_no_client_auth();
    Some((tokio_rustls::TlsConnector::from(Arc::new(cfg)), checking))
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The result for one recipient of one attempt.
enum Outcome {
    /// `relayed`: the next hop took it without DSN, so a NOTIFY=SUCCESS is ours to answer
    /// (RFC 3461 §4.1).
    Delivered {
        relayed: bool,
        host: String,
    },
    Temporary(String),
    Permanent {
        reply: String,
        host: Option<String>,
    },
}

/// One message for one domain: what goes on the wire, its envelope, its recipients there.
struct Job<'a> {
    /// Signed, Return-Path removed.
    data: &'a [u8],
    /// The same converted to 7-bit (RFC 6152 §3) and signed again, when it has 8-bit
    /// octets and can be converted.
    seven_bit: Option<&'a [u8]>,
    envelope: Envelope,
    rcpts: Vec<&'a QueuedRcpt>,
}

/// Deliver several messages to one domain, over as few connections as possible (one, when
/// the first server takes them all). Returns each job's per-recipient outcomes.
async fn attempt(
    ob: &Outbox,
    jobs: &[&Job<'_>],
    domain: &str,
    sources: &[IpAddr],
) -> Vec<Vec<Outcome>> {
    let all = |f: &dyn Fn() -> Outcome| -> Vec<Vec<Outcome>> {
        jobs.iter()
            .map(|j| j.rcpts.iter().map(|_| f()).collect())
            .collect()
    };
    let route = match resolve(&ob.resolver, domain).await {
        Ok(r) => r,
        Err(e) => return all(&|| Outcome::Temporary(e.clone())),
    };
    let hosts = match route {
        Route::NullMx => {
            return all(&|| Outcome::Permanent {
                reply: format!("556 5.1.10 {domain} does not accept mail (null MX)"),
                host: None,
            });
        }
        Route::Hosts(h) => h,
    };
    // RFC 7672 §2.2: DANE, where the MX answer and a host's TLSA answer are secure. It
    // takes the place of MTA-STS for the domain (RFC 8461 §2).
    let mut dane: std::collections::HashMap<String, Vec<crate::dane::Tlsa>> = Default::default();
    let mut hosts = hosts;
    if let Some(d) = &ob.dane
        && d.mx_secure(domain).await
    {
        let mut usable = Vec::new();
        for (h, ips) in hosts {
            match d.tlsa(&h, ob.port).await {
                crate::dane::HostTlsa::Records(r) => {
                    dane.insert(h.clone(), r);
                    usable.push((h, ips));
                }
                crate::dane::HostTlsa::None => usable.push((h, ips)),
                crate::dane::HostTlsa::Bogus => {
                    warn!(
                        domain,
                        host = h,
                        "TLSA answer failed DNSSEC validation: host skipped (DANE)"
                    );
                }
            }
        }
        if usable.is_empty() {
            let why =
                format!("the TLSA records of {domain}'s MX hosts failed DNSSEC validation (DANE)");
            return all(&|| Outcome::Temporary(why.clone()));
        }
        hosts = usable;
    }
    // RFC 8461 §5: the recipient domain's MTA-STS policy, if it has one.
    let policy = match &ob.sts {
        _ if !dane.is_empty() => None,
        Some(sts) => match sts.policy(&ob.resolver, domain).await {
            Ok(p) => p.filter(|p| p.mode != Mode::None),
            Err(e) => {
                warn!(
                    domain,
                    error = e,
                    "MTA-STS policy not available; delivering without"
                );
                // RFC 8460 §4.3.2: a policy that could not be had, or not be read.
                let kind = if e.contains(": HTTP")
                    || e.contains("TLS")
                    || e.contains("timeout")
                    || e.contains("address")
                {
                    "sts-policy-fetch-error"
                } else {
                    "sts-policy-invalid"
                };
                let held = crate::tlsrpt::Held {
                    policy: None,
                    tlsa: None,
                };
                ob.tls_reports.failure(domain, &held, kind, "", "", "");
                None
            }
        },
        None => None,
    };
    let hosts: Vec<_> = match &policy {
        Some(p) if p.mode == Mode::Enforce => {
            let (ok, refused): (Vec<_>, Vec<_>) =
                hosts.into_iter().partition(|(h, _)| p.matches(h));
            for (h, _) in &refused {
                info!(
                    domain,
                    host = h,
                    "MX host not in the MTA-STS policy (enforce): skipped"
                );
            }
            if ok.is_empty() {
                let why = format!(
                    "no MX host of {domain} matches its MTA-STS policy (enforce: {})",
                    p.mx.join(", ")
                );
                return all(&|| Outcome::Temporary(why.clone()));
            }
            ok
        }
        _ => hosts,
    };
    let mut results: Vec<Option<Vec<Outcome>>> = jobs.iter().map(|_| None).collect();
    let mut last = String::from("no mail server reachable");
    'hosts: for (host, ips) in hosts {
        for ip in ips {
            if results.iter().all(Option::is_some) {
                break 'hosts;
            }
            let addr = SocketAddr::new(ip, ob.port);
            let source = source_for(sources, ip);
            let at = Target {
                domain,
                dane: dane.get(&host).map(Vec::as_slice),
                host: &host,
                addr,
                source,
                policy: policy.as_ref(),
            };
            if let Err(e) = session(ob, &at, jobs, &mut results).await {
                info!(host, %ip, error = e, "outbound connection ended; trying the next");
                last = e;
            }
        }
    }
    results
        .into_iter()
        .zip(jobs)
        .map(|(r, j)| {
            r.unwrap_or_else(|| {
                j.rcpts
                    .iter()
                    .map(|_| Outcome::Temporary(last.clone()))
                    .collect()
            })
        })
        .collect()
}

/// One connection driven by the sans-IO client of `yubin_smtp::client`: the jobs not yet
/// done are sent over it in turn. `Err` (with the reason) when it ended before all were.
/// Where one connection goes, and the policy it is held to.
struct Target<'a> {
    domain: &'a str,
    /// Secure TLSA records of the host (RFC 7672): they, not the policy, decide.
    dane: Option<&'a [crate::dane::Tlsa]>,
    host: &'a str,
    addr: SocketAddr,
    source: Option<IpAddr>,
    policy: Option<&'a crate::mta_sts::Policy>,
}

async fn session(
    ob: &Outbox,
    at: &Target<'_>,
    jobs: &[&Job<'_>],
    results: &mut [Option<Vec<Outcome>>],
) -> Result<(), String> {
    let (host, addr, source) = (at.host, at.addr, at.source);
    let enforce = at.dane.is_some() || at.policy.is_some_and(|p| p.mode == Mode::Enforce);
    // What the log and a report say of the policy in force.
    let policy_name = match (at.dane, at.policy) {
        (Some(_), _) => "DANE".to_owned(),
        (None, Some(p)) => format!("MTA-STS {}", p.mode.name()),
        (None, None) => "opportunistic TLS".to_owned(),
    };
    let err = |e: &dyn std::fmt::Display| format!("{host}: {e}");
    let tls_err = |e: &dyn std::fmt::Display| format!("{host}: {e} ({policy_name})");
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect_from(source, addr))
        .await
        .map_err(|_| err(&"connect timeout"))?
        .map_err(|e| err(&e))?;
    // Commands and bodies are written whole; Nagle's algorithm would hold the last
    // segment of a large body until the receiver's delayed ACK (40 ms a message).
    let _ = tcp.set_nodelay(true);
    let local_ip = tcp
        .local_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let held = crate::tlsrpt::Held {
        policy: at.policy,
        tlsa: at.dane,
    };
    let report_failure = |kind: &str| {
        let ip = addr.ip().to_string();
        ob.tls_reports
            .failure(at.domain, &held, kind, &local_ip, host, &ip)
    };
    let mut io: BufReader<Box<dyn Io>> = BufReader::new(Box::new(tcp));
    let mut reader = ReplyReader::new();
    let mut c = Client::new(ClientConfig {
        helo: ob.hostname.clone(),
        starttls: true,
        require_tls: enforce,
    });
    let mut current: Option<usize> = None;
    let todo: Vec<usize> = (0..jobs.len())
        .filter(|&i| results.get(i).is_some_and(Option::is_none))
        .collect();
    let mut pending = todo.into_iter();
    loop {
        match c.poll() {
            Step::Send(bytes) => {
                if let Err(e) = write(&mut io, &bytes, COMMAND_TIMEOUT).await {
                    c.closed(e);
                }
            }
            Step::Wait => match read(&mut io, &mut reader, c.timeout()).await {
                Ok(r) => c.reply(r),
                Err(e) => c.closed(e),
            },
            Step::StartTls => {
                let Some((tls, checking)) = tls_client(&ob.roots) else {
                    return Err(err(&"no TLS client configuration"));
                };
                let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                    .unwrap_or_else(|_| rustls_pki_types::ServerName::IpAddress(addr.ip().into()));
                // Nothing may be left unread before the handshake (RFC 3207 §4.2 / the
                // STARTTLS injection class of bugs): a server that pipelined bytes after
                // its 220 is not trusted with TLS.
                if !io.buffer().is_empty() || reader.partial() {
                    return Err(err(&"data after the STARTTLS reply"));
                }
                let plain = io.into_inner();
                let stream =
                    match tokio::time::timeout(COMMAND_TIMEOUT, tls.connect(name, plain)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            report_failure("validation-failure");
                            return Err(tls_err(&format!("TLS handshake failed: {e}")));
                        }
                        Err(_) => {
                            report_failure("validation-failure");
                            return Err(tls_err(&"TLS handshake timeout"));
                        }
                    };
                io = BufReader::new(Box::new(stream));
                reader = ReplyReader::new();
                // RFC 7672 §3: the certificate must match the TLSA records.
                let dane_result = at.dane.map(|records| {
                    let chain = checking
                        .chain
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    crate::dane::verify(records, &chain, host)
                });
                // RFC 8461 §4.2: under a policy the certificate must verify for the MX name.
                let verified = match (at.policy, checking.result()) {
                    _ if dane_result.is_some() => match dane_result.clone() {
                        Some(Ok(authenticated)) => authenticated,
                        Some(Err(e)) => {
                            report_failure("validation-failure");
                            let _ = io.get_mut().shutdown().await;
                            return Err(tls_err(&format!(
                                "certificate does not match its TLSA records: {e}"
                            )));
                        }
                        None => false,
                    },
                    (Some(_), Ok(())) => true,
                    (Some(p), Err(e)) if p.mode == Mode::Enforce => {
                        report_failure(crate::tlsrpt::result_type(&e));
                        let _ = io.get_mut().shutdown().await;
                        return Err(tls_err(&format!("certificate not valid: {e}")));
                    }
                    (Some(_), Err(e)) => {
                        report_failure(crate::tlsrpt::result_type(&e));
                        warn!(
                            host,
                            error = e,
                            policy = policy_name,
                            "certificate not valid; sending anyway"
                        );
                        false
                    }
                    (None, _) => false,
                };
                if verified || (at.policy.is_none() && at.dane.is_none()) {
                    ob.tls_reports.success(at.domain, &held);
                }
                info!(host, policy = policy_name, verified, "TLS started");
                c.tls_started(verified);
            }
            Step::Data { seven_bit } => {
                let Some(job) = current.and_then(|i| jobs.get(i)) else {
                    return Err(err(&"data asked for with no message"));
                };
                let data = match (job.seven_bit, seven_bit) {
                    (Some(d), true) => d,
                    _ => job.data,
                };
                let body = dot_stuff(data);
                if let Err(e) = write(&mut io, &body, DATA_TIMEOUT).await {
                    c.closed(e);
                }
            }
            Step::Ready => match pending.next() {
                Some(i) => {
                    current = Some(i);
                    if let Some(job) = jobs.get(i) {
                        c.send(job.envelope.clone());
                    }
                }
                None => c.quit(),
            },
            Step::Done(o) => {
                if let Some(i) = current.take()
                    && let Some(slot) = results.get_mut(i)
                {
                    let relayed = !o.dsn_passed;
                    *slot = Some(
                        o.rcpts
                            .into_iter()
                            .map(|r| match r {
                                RcptOutcome::Delivered => Outcome::Delivered {
                                    relayed,
                                    host: host.to_owned(),
                                },
                                RcptOutcome::Temporary(t) => Outcome::Temporary(err(&t)),
                                RcptOutcome::Permanent(reply) => Outcome::Permanent {
                                    reply,
                                    host: Some(host.to_owned()),
                                },
                            })
                            .collect(),
                    );
                }
            }
            Step::Close(why) => {
                return match why {
                    Some(e @ (ClientError::NoStartTls | ClientError::StartTlsRefused(_))) => {
                        report_failure("starttls-not-supported");
                        Err(tls_err(&e))
                    }
                    Some(e) if results.iter().any(Option::is_none) => Err(err(&e)),
                    _ => Ok(()),
                };
            }
        }
    }
}

async fn connect_from(source: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(src) = source else {
        return TcpStream::connect(addr).await;
    };
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(src, 0))?;
    sock.connect(addr).await
}

/// Write all of it within `limit` (one deadline for the whole write).
async fn write(
    io: &mut BufReader<Box<dyn Io>>,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), ClientError> {
    let w = io.get_mut();
    let go = async {
        w.write_all(bytes).await?;
        w.flush().await
    };
    match tokio::time::timeout(limit, go).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(ClientError::Closed),
        Err(_) => Err(ClientError::Timeout),
    }
}

/// The next reply, through the bounded reader (a remote server's bad reply is an error for
/// this attempt, never a panic). One deadline for the whole reply, not per read: a server
/// trickling bytes cannot hold us.
async fn read(
    io: &mut BufReader<Box<dyn Io>>,
    reader: &mut ReplyReader,
    limit: Duration,
) -> Result<yubin_smtp::Reply, ClientError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let buf = match tokio::time::timeout_at(deadline, io.fill_buf()).await {
            Err(_) => return Err(ClientError::Timeout),
            Ok(Err(_)) => return Err(ClientError::Closed),
            Ok(Ok(b)) => b,
        };
        if buf.is_empty() {
            return Err(ClientError::Closed);
        }
        let (used, got) = reader.push(buf);
        io.consume(used);
        match got {
            Some(Ok(r)) => return Ok(r),
            Some(Err(e)) => return Err(ClientError::Reply(e)),
            None => {}
        }
    }
}

/// What the runner has handed to delivery tasks: the recipients in flight (never taken
/// twice), and the domains whose connection slots are all in use (left out of the next
/// read, so their due mail cannot hide other domains' behind the limit).
#[derive(Default)]
struct InFlight {
    rcpts: std::collections::BTreeSet<i64>,
    tasks: std::collections::BTreeMap<String, usize>,
}

type Shared = Arc<std::sync::Mutex<InFlight>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, InFlight> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The queue runner: wakes on new mail and every few seconds, delivers what is due. Each
/// domain gets up to `per_domain` delivery tasks at once, each with its own messages and
/// connection; a slow or unreachable domain fills only its own slots.
pub async fn run(ob: Arc<Outbox>) {
    let state: Shared = Default::default();
    loop {
        let now = unix_now();
        let (full, in_flight): (Vec<String>, Vec<i64>) = {
            let st = lock(&state);
            (
                st.tasks
                    .iter()
                    .filter(|(_, n)| **n >= ob.per_domain.max(1))
                    .map(|(d, _)| d.clone())
                    .collect(),
                st.rcpts.iter().copied().collect(),
            )
        };
        let store = ob.store.clone();
        // The store read on a blocking thread, not on an async worker.
        let due = match tokio::task::spawn_blocking(move || {
            store.due_except(now, 200, &full, &in_flight)
        })
        .await
        {
            Ok(due) => due,
            Err(e) => {
                warn!(error = %e, "queue read failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match due {
            Ok(due) if !due.is_empty() => {
                // Per domain: one connection carries all of a task's messages.
                let mut groups: BTreeMap<String, BTreeMap<i64, Vec<QueuedRcpt>>> = BTreeMap::new();
                for r in due {
                    groups
                        .entry(r.domain.clone())
                        .or_default()
                        .entry(r.queue_id)
                        .or_default()
                        .push(r);
                }
                for (domain, messages) in groups {
                    let ob = ob.clone();
                    let Ok(permit) = ob.limit.clone().acquire_owned().await else {
                        return;
                    };
                    let task = Task::take(&state, &domain, &messages, ob.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        let _task = task;
                        deliver_domain(&ob, &domain, messages).await;
                    });
                }
                // Let mail arriving meanwhile gather for a moment: one task (and one
                // connection, TLS handshake and EHLO) then carries it, not one each.
                tokio::time::sleep(GATHER).await;
                continue;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read the queue"),
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), ob.wake.notified()).await;
    }
}

/// A delivery task's claim on its recipients and one of its domain's slots; given back
/// when the task ends, however it ends (a panic included), and the runner woken.
struct Task {
    state: Shared,
    domain: String,
    rcpts: Vec<i64>,
    ob: Arc<Outbox>,
}

impl Task {
    fn take(
        state: &Shared,
        domain: &str,
        messages: &BTreeMap<i64, Vec<QueuedRcpt>>,
        ob: Arc<Outbox>,
    ) -> Self {
        let rcpts: Vec<i64> = messages.values().flatten().map(|r| r.id).collect();
        let mut st = lock(state);
        st.rcpts.extend(&rcpts);
        *st.tasks.entry(domain.to_owned()).or_insert(0) += 1;
        Task {
            state: state.clone(),
            domain: domain.to_owned(),
            rcpts,
            ob,
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        let mut st = lock(&self.state);
        for id in &self.rcpts {
            st.rcpts.remove(id);
        }
        if let Some(n) = st.tasks.get_mut(&self.domain) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.tasks.remove(&self.domain);
            }
        }
        drop(st);
        self.ob.wake.notify_one();
    }
}

async fn deliver_domain(ob: &Outbox, domain: &str, messages: BTreeMap<i64, Vec<QueuedRcpt>>) {
    let mut loaded = Vec::new();
    for (queue_id, rcpts) in messages {
        let store = ob.store.clone();
        let dkim_dir = ob.dkim_dir.clone();
        let Some(first) = rcpts.first().cloned() else {
            continue;
        };
        let from = first.mail_from.clone();
        // The read and the DKIM signature (RSA) on a blocking thread, not an async worker.
        let read = tokio::task::spawn_blocking(move || {
            store
                .queued_message(queue_id)
                .map(|d| (prepare(&dkim_dir, &d, &from), d))
        });
        match read.await {
            Ok(Ok(((data, seven_bit), original))) => {
                loaded.push((queue_id, original, data, seven_bit, first, rcpts));
            }
            other => warn!(queue_id, ?other, "queued message unreadable"),
        }
    }
    let jobs: Vec<Job<'_>> = loaded
        .iter()
        .map(|(_, _, data, seven_bit, first, rcpts)| Job {
            envelope: Envelope {
                mail_from: first.mail_from.clone(),
                rcpts: rcpts
                    .iter()
                    .map(|r| Recipient {
                        addr: r.rcpt.clone(),
                        notify: r.notify.as_deref().and_then(Notify::parse),
                        orcpt: r.orcpt.as_deref().and_then(|o| {
                            o.split_once(';').map(|(t, a)| (t.to_owned(), a.to_owned()))
                        }),
                    })
                    .collect(),
                size: data.len(),
                eight_bit: !data.is_ascii(),
                downgradable: seven_bit.is_some(),
                ret: first.ret.as_deref().and_then(Ret::parse),
                envid: first.envid.clone(),
                require_tls: first.require_tls,
            },
            data,
            seven_bit: seven_bit.as_deref(),
            rcpts: rcpts.iter().collect(),
        })
        .collect();
    // Messages whose senders' source addresses differ go over different connections.
    let mut groups: BTreeMap<Vec<IpAddr>, Vec<usize>> = BTreeMap::new();
    for (i, j) in jobs.iter().enumerate() {
        groups
            .entry(ob.sources_for(&j.envelope.mail_from).to_vec())
            .or_default()
            .push(i);
    }
    let mut outcomes: Vec<Option<Vec<Outcome>>> = jobs.iter().map(|_| None).collect();
    for (sources, members) in groups {
        let group: Vec<&Job<'_>> = members.iter().filter_map(|&i| jobs.get(i)).collect();
        let got = attempt(ob, &group, domain, &sources).await;
        for (i, o) in members.into_iter().zip(got) {
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = Some(o);
            }
        }
    }
    // Every outcome of the task in one transaction (one fsync, not one per recipient),
    // then the reports they call for.
    let mut records = Vec::new();
    let mut pending = Vec::new();
    for ((queue_id, original, _, _, _, rcpts), outcomes) in loaded.into_iter().zip(outcomes) {
        pending.extend(finish(
            ob,
            queue_id,
            &original,
            &rcpts,
            outcomes.unwrap_or_default(),
            &mut records,
        ));
    }
    let store = ob.store.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.record_many(&records)).await {
        warn!(error = %e, "cannot record delivery attempts");
    }
    for p in pending {
        p.send(ob).await;
    }
}

/// What the sender asked to be told of this recipient (RFC 3461 §4.1; none given means
/// failures and delays, as Postfix and Sendmail do).
fn notify_of(r: &QueuedRcpt) -> Notify {
    r.notify
        .as_deref()
        .and_then(Notify::parse)
        .unwrap_or(Notify::DEFAULT)
}

/// Record one message's outcomes, and tell its sender what it asked to be told: failures,
/// delays, and successes where no later hop will (RFC 3461 §4.1).
fn finish(
    ob: &Outbox,
    queue_id: i64,
    data: &[u8],
    rcpts: &[QueuedRcpt],
    outcomes: Vec<Outcome>,
    records: &mut Vec<(i64, Attempt)>,
) -> Option<Pending> {
    let now = unix_now();
    let mut failures = Vec::new();
    let mut successes = Vec::new();
    let mut warnings: Vec<(i64, Failure)> = Vec::new();
    for (r, o) in rcpts.iter().zip(outcomes) {
        let notify = notify_of(r);
        let report =
            |action: Action, status: &str, diagnostic: String, host: Option<String>| Failure {
                rcpt: r.rcpt.clone(),
                action,
                status: status.to_owned(),
                diagnostic,
                remote_mta: host,
                orcpt: r.orcpt.clone(),
            };
        let rec = match o {
            Outcome::Delivered { relayed, host } => {
                info!(
                    queue_id,
                    rcpt = r.rcpt,
                    host,
                    relayed,
                    "delivered to remote server"
                );
                if notify.success && relayed {
                    successes.push(report(Action::Relayed, "2.0.0", String::new(), Some(host)));
                }
                Attempt::Delivered
            }
            Outcome::Temporary(e) => {
                let mut rnd = [0u8; 4];
                let _ = getrandom::fill(&mut rnd);
                match ob
                    .schedule
                    .next(r.attempts + 1, r.created, now, u32::from_le_bytes(rnd))
                {
                    Some(at) => {
                        info!(
                            queue_id,
                            rcpt = r.rcpt,
                            error = e,
                            retry_in = at - now,
                            "deferred"
                        );
                        if notify.delay
                            && ob.delay_warning > 0
                            && !r.warned
                            && now - r.created >= ob.delay_warning
                        {
                            warnings
                                .push((r.id, report(Action::Delayed, "4.4.1", e.clone(), None)));
                        }
                        Attempt::Retry { at, error: e }
                    }
                    None => {
                        if notify.failure {
                            let why = format!("gave up after {} attempts: {e}", r.attempts + 1);
                            failures.push(report(Action::Failed, "4.4.7", why, None));
                        }
                        Attempt::Failed { error: e }
                    }
                }
            }
            Outcome::Permanent { reply, host } => {
                info!(queue_id, rcpt = r.rcpt, error = reply, "bounced");
                let status = reply
                    .split_whitespace()
                    .nth(1)
                    .filter(|s| s.starts_with('5') && s.contains('.'))
                    .unwrap_or("5.0.0")
                    .to_owned();
                if notify.failure {
                    failures.push(report(Action::Failed, &status, reply.clone(), host));
                }
                Attempt::Failed { error: reply }
            }
        };
        records.push((r.id, rec));
    }
    let first = rcpts.first()?;
    // Never to the null sender: a report never causes another (RFC 3464 §2).
    if first.mail_from.is_empty()
        || (failures.is_empty() && successes.is_empty() && warnings.is_empty())
    {
        return None;
    }
    Some(Pending {
        to: first.mail_from.clone(),
        original: data.to_vec(),
        created: first.created,
        envid: first.envid.clone(),
        full: first.ret.as_deref() == Some("FULL"),
        failures,
        successes,
        warnings,
    })
}

/// The reports one message's outcomes call for, sent once the outcomes are recorded.
struct Pending {
    to: String,
    original: Vec<u8>,
    created: i64,
    envid: Option<String>,
    full: bool,
    failures: Vec<Failure>,
    successes: Vec<Failure>,
    /// RFC 3464 "delayed", once per recipient: (recipient id, report).
    warnings: Vec<(i64, Failure)>,
}

impl Pending {
    async fn send(self, ob: &Outbox) {
        let about = Reported {
            to: &self.to,
            original: &self.original,
            created: self.created,
            envid: self.envid.as_deref(),
            full: self.full,
        };
        if !self.failures.is_empty() {
            send_report(ob, &about, &self.failures).await;
        }
        if !self.successes.is_empty() {
            send_report(ob, &about, &self.successes).await;
        }
        if !self.warnings.is_empty() {
            let (ids, reports): (Vec<i64>, Vec<Failure>) = self.warnings.into_iter().unzip();
            send_report(ob, &about, &reports).await;
            let store = ob.store.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for id in ids {
                    let _ = store.mark_warned(id);
                }
            })
            .await;
        }
    }
}

/// What goes on the wire: without our Return-Path (RFC 5321 §4.4: final delivery adds
/// it) and, when the author's domain has a key, with a DKIM signature (RFC 6376). Second,
/// for an 8-bit message that can be converted, the 7-bit form, signed after the
/// conversion (RFC 6376 §5.3).
fn prepare(dkim_dir: &std::path::Path, data: &[u8], mail_from: &str) -> (Vec<u8>, Option<Vec<u8>>) {
    let body = match data.strip_prefix(b"Return-Path:") {
        Some(rest) => match rest.iter().position(|&b| b == b'\n') {
            Some(p) => rest.get(p + 1..).unwrap_or_default(),
            None => data,
        },
        None => data,
    };
    // The signing domain is the From: domain (DMARC alignment), else the envelope's.
    let from_domain = yubin_model::mime::parse_header(body)
        .map(|(m, _)| m)
        .and_then(|m| {
            m.from()
                .and_then(|a| a.first())
                .and_then(|a| a.address.as_deref())
                .and_then(|a| a.rsplit_once('@').map(|(_, d)| d.to_lowercase()))
        })
        .or_else(|| mail_from.rsplit_once('@').map(|(_, d)| d.to_lowercase()));
    let sign = |body: &[u8]| match from_domain
        .as_deref()
        .and_then(|d| crate::dkim::sign(dkim_dir, d, body))
    {
        Some(sig) => {
            let mut out = sig.into_bytes();
            out.extend_from_slice(body);
            out
        }
        None => body.to_vec(),
    };
    let seven_bit = if body.is_ascii() {
        None
    } else {
        yubin_model::downgrade::downgrade_8bit(body).map(|d| sign(&d))
    };
    (sign(body), seven_bit)
}

/// The message a report is about.
struct Reported<'a> {
    to: &'a str,
    original: &'a [u8],
    created: i64,
    envid: Option<&'a str>,
    full: bool,
}

/// Send an RFC 3464 report to the envelope sender: to the local mailbox, or through the
/// queue with the null sender (so a report never bounces).
async fn send_report(ob: &Outbox, about: &Reported<'_>, rcpts: &[Failure]) {
    let id = format!("{}@{}", new_id(), ob.hostname);
    let date = crate::rfc5322_date(about.created);
    let dsn = yubin_queue::report(
        &yubin_queue::Report {
            hostname: &ob.hostname,
            to: about.to,
            original: about.original,
            arrival_date: &date,
            message_id: &id,
            envid: about.envid,
            full: about.full,
        },
        rcpts,
    );
    submit_report(ob.store.clone(), about.to.to_owned(), dsn).await;
    ob.wake.notify_one();
}

/// Put a report into the sender's mailbox when local, else into the queue (null sender).
pub(crate) async fn submit_report(store: Arc<dyn Store>, to: String, dsn: Vec<u8>) {
    let now = unix_now();
    let r = tokio::task::spawn_blocking(move || {
        let local = match store.resolve(&to)? {
            Resolved::Accounts(ids) => ids,
            _ => Vec::new(),
        };
        let outbound = Outbound {
            rcpts: if local.is_empty() {
                vec![to.as_str().into()]
            } else {
                vec![]
            },
            ..Default::default()
        };
        // Final delivery of a report records its null reverse-path (RFC 5321 §4.4).
        let blob = if local.is_empty() {
            store.stage(&[&dsn])?
        } else {
            store.stage(&[b"Return-Path: <>\r\n", &dsn])?
        };
        let local: Vec<_> = local
            .into_iter()
            .map(yubin_store::Placement::inbox)
            .collect();
        store.accept(blob, &local, &outbound, now)
    })
    .await;
    if !matches!(r, Ok(Ok(_))) {
        warn!(?r, "could not send a delivery report");
    }
}
