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
use tokio::sync::{Notify, Semaphore};
use tracing::{info, warn};
use yubin_queue::{Class, Failure, Schedule, classify};
use yubin_store::{Attempt, Outbound, QueuedRcpt, Resolved, Store};

use crate::{new_id, unix_now};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// RFC 5321 §4.5.3.2: generous per-command timeouts (shortened; the queue retries anyway).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const DATA_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Outbox {
    pub store: Arc<dyn Store>,
    pub hostname: String,
    pub resolver: hickory_resolver::TokioResolver,
    pub port: u16,
    pub schedule: Schedule,
    pub wake: Arc<Notify>,
    pub limit: Arc<Semaphore>,
    pub dkim_dir: std::path::PathBuf,
    pub per_domain: usize,
    pub domain_limits: std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
    /// Seconds after acceptance when a still-queued sender gets a delay warning (0: never).
    pub delay_warning: i64,
}

/// Build the resolver: the configured servers (`ip:port`), or the system's.
pub fn resolver(servers: &[SocketAddr]) -> anyhow::Result<hickory_resolver::TokioResolver> {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    if servers.is_empty() {
        match hickory_resolver::TokioResolver::builder_tokio().and_then(|b| b.build()) {
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

/// Accept any certificate: opportunistic TLS protects against passive listeners only
/// (RFC 7435); MTA-STS/DANE would pin certificates and are not implemented yet.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_client() -> Option<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

struct Client {
    io: BufReader<Box<dyn Io>>,
    reader: yubin_smtp::client::ReplyReader,
    host: String,
    /// The EHLO keywords, upper-cased.
    caps: String,
}

/// One SMTP reply: code and text (lines joined).
#[derive(Debug, Clone)]
struct Reply {
    code: u16,
    text: String,
}

impl From<yubin_smtp::Reply> for Reply {
    /// The text as the server wrote it after the code: enhanced code first, lines joined.
    fn from(r: yubin_smtp::Reply) -> Self {
        let mut text = r.lines.join(" ");
        if let Some(esc) = r.esc {
            text = format!("{esc} {text}");
        }
        Reply { code: r.code, text }
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

impl Client {
    /// The next reply, through the bounded reader of `yubin_smtp::client` (a remote
    /// server's bad reply is an error for this attempt, never a panic). One deadline for
    /// the whole reply, not per read: a server trickling lines cannot hold us.
    async fn read(&mut self, limit: Duration) -> Result<Reply, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let buf = tokio::time::timeout_at(deadline, self.io.fill_buf())
                .await
                .map_err(|_| format!("{}: timeout", self.host))?
                .map_err(|e| format!("{}: {e}", self.host))?;
            if buf.is_empty() {
                return Err(format!("{}: connection closed", self.host));
            }
            let (used, got) = self.reader.push(buf);
            self.io.consume(used);
            match got {
                Some(Ok(r)) => return Ok(Reply::from(r)),
                Some(Err(e)) => return Err(format!("{}: {e}", self.host)),
                None => {}
            }
        }
    }

    /// Whether EHLO announced this extension keyword.
    fn has(&self, ext: &str) -> bool {
        self.caps.split_whitespace().any(|w| w == ext)
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let w = self.io.get_mut();
        w.write_all(bytes)
            .await
            .map_err(|e| format!("{}: {e}", self.host))?;
        w.flush().await.map_err(|e| format!("{}: {e}", self.host))
    }

    async fn cmd(&mut self, line: &str) -> Result<Reply, String> {
        let w = self.io.get_mut();
        w.write_all(line.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        w.write_all(b"\r\n").await.map_err(|e| e.to_string())?;
        w.flush().await.map_err(|e| e.to_string())?;
        self.read(COMMAND_TIMEOUT).await
    }
}

/// The result for one recipient of one attempt.
enum Outcome {
    Delivered,
    Temporary(String),
    Permanent { reply: String, host: Option<String> },
}

/// One message for one domain: its prepared bytes, reverse-path and recipients there.
struct Job<'a> {
    data: Vec<u8>,
    mail_from: String,
    rcpts: Vec<&'a QueuedRcpt>,
}

/// Deliver several messages to one domain, over as few connections as possible (one, when
/// the first server takes them all). Returns each job's per-recipient outcomes.
async fn attempt(ob: &Outbox, jobs: &[Job<'_>], domain: &str) -> Vec<Vec<Outcome>> {
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
    let mut results: Vec<Option<Vec<Outcome>>> = jobs.iter().map(|_| None).collect();
    let mut last = String::from("no mail server reachable");
    'hosts: for (host, ips) in hosts {
        for ip in ips {
            if results.iter().all(Option::is_some) {
                break 'hosts;
            }
            let mut client = match connect(ob, &host, SocketAddr::new(ip, ob.port)).await {
                Ok(c) => c,
                Err(e) => {
                    info!(host, %ip, error = e, "outbound connection failed; trying the next");
                    last = e;
                    continue;
                }
            };
            for (job, slot) in jobs.iter().zip(results.iter_mut()) {
                if slot.is_some() {
                    continue;
                }
                match transaction(&mut client, &host, job).await {
                    Ok(r) => *slot = Some(r),
                    Err(e) => {
                        info!(host, %ip, error = e, "outbound connection lost; trying the next");
                        last = e;
                        continue 'hosts;
                    }
                }
            }
            let _ = client.cmd("QUIT").await;
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

/// Connect, EHLO, and STARTTLS when offered. `Err` means "try another host".
async fn connect(ob: &Outbox, host: &str, addr: SocketAddr) -> Result<Client, String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("{host}: connect timeout"))?
        .map_err(|e| format!("{host}: {e}"))?;
    let mut c = Client {
        io: BufReader::new(Box::new(tcp)),
        reader: Default::default(),
        host: host.to_owned(),
        caps: String::new(),
    };
    let greeting = c.read(COMMAND_TIMEOUT).await?;
    if greeting.code != 220 {
        return Err(format!("{host} greeted with {greeting}"));
    }
    let ehlo = c.cmd(&format!("EHLO {}", ob.hostname)).await?;
    if ehlo.code != 250 {
        return Err(format!("{host} refused EHLO: {ehlo}"));
    }
    c.caps = ehlo.text.to_ascii_uppercase();
    if c.has("STARTTLS")
        && let Some(tls) = tls_client()
    {
        let r = c.cmd("STARTTLS").await?;
        if r.code == 220 {
            let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                .unwrap_or_else(|_| rustls_pki_types::ServerName::IpAddress(addr.ip().into()));
            let plain = c.io.into_inner();
            let stream = tls
                .connect(name, plain)
                .await
                .map_err(|e| format!("{host}: TLS handshake failed: {e}"))?;
            c = Client {
                io: BufReader::new(Box::new(stream)),
                reader: Default::default(),
                host: host.to_owned(),
                caps: String::new(),
            };
            let ehlo = c.cmd(&format!("EHLO {}", ob.hostname)).await?;
            if ehlo.code != 250 {
                return Err(format!("{host} refused EHLO after STARTTLS: {ehlo}"));
            }
            c.caps = ehlo.text.to_ascii_uppercase();
        }
    }
    Ok(c)
}

/// One message on an open connection. `Err` means the connection is unusable.
async fn transaction(c: &mut Client, host: &str, job: &Job<'_>) -> Result<Vec<Outcome>, String> {
    let (data, mail_from, rcpts) = (&job.data[..], job.mail_from.as_str(), &job.rcpts);
    let permanent = |reply: String| -> Vec<Outcome> {
        rcpts
            .iter()
            .map(|_| Outcome::Permanent {
                reply: reply.clone(),
                host: Some(host.to_owned()),
            })
            .collect()
    };
    let eight_bit = data.iter().any(|&b| b >= 0x80);
    let utf8_addresses = !mail_from.is_ascii() || rcpts.iter().any(|r| !r.rcpt.is_ascii());
    // RFC 6531 §3.2: UTF-8 addresses need SMTPUTF8 at the other end; no downgrade exists.
    if utf8_addresses && !c.has("SMTPUTF8") {
        return Ok(permanent(format!(
            "553 5.6.7 {host} does not support SMTPUTF8"
        )));
    }
    // RFC 6152 §3: no 8-bit data to a server without 8BITMIME (yubin does not downgrade).
    if eight_bit && !c.has("8BITMIME") && !c.has("SMTPUTF8") {
        return Ok(permanent(format!(
            "554 5.6.3 {host} does not accept 8-bit messages"
        )));
    }
    // RFC 1870 §4: a declared limit the message exceeds is a permanent failure.
    if let Some(limit) = c
        .caps
        .split("SIZE ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&l| l > 0 && data.len() > l)
    {
        return Ok(permanent(format!(
            "552 5.3.4 message is larger than {host}'s limit of {limit} octets"
        )));
    }
    let mut mail = format!("MAIL FROM:<{mail_from}>");
    if c.has("SIZE") {
        mail.push_str(&format!(" SIZE={}", data.len()));
    }
    if eight_bit && c.has("8BITMIME") {
        mail.push_str(" BODY=8BITMIME");
    }
    if utf8_addresses {
        mail.push_str(" SMTPUTF8");
    }
    let rcpt_lines: Vec<String> = rcpts
        .iter()
        .map(|r| format!("RCPT TO:<{}>", r.rcpt))
        .collect();
    // RFC 2920: with PIPELINING, MAIL and every RCPT go in one write.
    let (mail_reply, rcpt_replies) = if c.has("PIPELINING") {
        let mut batch = String::new();
        batch.push_str(&mail);
        batch.push_str("\r\n");
        for l in &rcpt_lines {
            batch.push_str(l);
            batch.push_str("\r\n");
        }
        c.send(batch.as_bytes()).await?;
        let m = c.read(COMMAND_TIMEOUT).await?;
        let mut rs = Vec::new();
        for _ in &rcpt_lines {
            rs.push(c.read(COMMAND_TIMEOUT).await?);
        }
        (m, rs)
    } else {
        let m = c.cmd(&mail).await?;
        let mut rs = Vec::new();
        if classify(m.code) == Class::Success {
            for l in &rcpt_lines {
                rs.push(c.cmd(l).await?);
            }
        }
        (m, rs)
    };
    match classify(mail_reply.code) {
        Class::Success => {}
        Class::Temporary => {
            c.cmd("RSET").await?;
            return Ok(rcpts
                .iter()
                .map(|_| Outcome::Temporary(mail_reply.to_string()))
                .collect());
        }
        Class::Permanent => {
            c.cmd("RSET").await?;
            return Ok(permanent(mail_reply.to_string()));
        }
    }
    let mut results: Vec<Option<Outcome>> = Vec::new();
    for r in &rcpt_replies {
        results.push(match classify(r.code) {
            Class::Success => None,
            Class::Temporary => Some(Outcome::Temporary(r.to_string())),
            Class::Permanent => Some(Outcome::Permanent {
                reply: r.to_string(),
                host: Some(host.to_owned()),
            }),
        });
    }
    if results.iter().all(Option::is_some) {
        c.cmd("RSET").await?;
        return Ok(results.into_iter().flatten().collect());
    }
    let r = c.cmd("DATA").await?;
    let final_reply = if r.code == 354 {
        let body = dot_stuff(data);
        c.send(&body).await?;
        c.send(b".\r\n").await?;
        c.read(DATA_TIMEOUT).await?
    } else {
        r
    };
    let class = classify(final_reply.code);
    Ok(results
        .into_iter()
        .map(|o| match o {
            Some(o) => o,
            None => match class {
                Class::Success => Outcome::Delivered,
                Class::Temporary => Outcome::Temporary(final_reply.to_string()),
                Class::Permanent => Outcome::Permanent {
                    reply: final_reply.to_string(),
                    host: Some(host.to_owned()),
                },
            },
        })
        .collect())
}

/// RFC 5321 §4.5.2: a line starting with `.` gets another; CRLF line ends throughout. A
/// bare CR ends a line as well as a bare LF does (RFC 5321 §2.3.8 forbids both): some
/// receivers take `<CR>.<CR>` for the end of data, so leaving either would let a body
/// smuggle a second message to the next hop.
fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut start = true;
    let mut i = 0;
    while let Some(&b) = data.get(i) {
        i += 1;
        match b {
            b'\r' => {
                if data.get(i) == Some(&b'\n') {
                    i += 1;
                }
                out.extend_from_slice(b"\r\n");
                start = true;
                continue;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                start = true;
                continue;
            }
            b'.' if start => out.push(b'.'),
            _ => {}
        }
        out.push(b);
        start = false;
    }
    if !start {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The queue runner: wakes on new mail and every few seconds, delivers what is due.
pub async fn run(ob: Arc<Outbox>) {
    // Domains a delivery task is working on: each domain runs on its own, so a slow or
    // unreachable one never holds up the rest (they are left out of the next `due`).
    let busy: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>> = Default::default();
    loop {
        let now = unix_now();
        let skip: Vec<String> = busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let store = ob.store.clone();
        // The store read on a blocking thread, not on an async worker.
        let due = match tokio::task::spawn_blocking(move || store.due_except(now, 200, &skip)).await
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
                // Per domain: one connection carries all its due messages.
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
                    // At most `per_domain` connections to one domain's servers at a time.
                    let domain_limit = ob
                        .domain_limits
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(domain.clone())
                        .or_insert_with(|| Arc::new(Semaphore::new(ob.per_domain.max(1))))
                        .clone();
                    let busy = Busy::take(&busy, &domain, ob.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        let _busy = busy;
                        if let Ok(_domain_permit) = domain_limit.acquire_owned().await {
                            deliver_domain(&ob, &domain, messages).await;
                        }
                    });
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read the queue"),
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), ob.wake.notified()).await;
    }
}

/// A domain marked busy while its delivery task runs; unmarked when the task ends, however
/// it ends (a panic included), and the runner woken to look at it again.
struct Busy {
    set: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    domain: String,
    ob: Arc<Outbox>,
}

impl Busy {
    fn take(
        set: &Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
        domain: &str,
        ob: Arc<Outbox>,
    ) -> Self {
        set.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.to_owned());
        Busy {
            set: set.clone(),
            domain: domain.to_owned(),
            ob,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.domain);
        self.ob.wake.notify_one();
    }
}

async fn deliver_domain(ob: &Outbox, domain: &str, messages: BTreeMap<i64, Vec<QueuedRcpt>>) {
    let mut loaded = Vec::new();
    for (queue_id, rcpts) in messages {
        let store = ob.store.clone();
        let dkim_dir = ob.dkim_dir.clone();
        let mail_from = rcpts
            .first()
            .map(|r| r.mail_from.clone())
            .unwrap_or_default();
        let from = mail_from.clone();
        // The read and the DKIM signature (RSA) on a blocking thread, not an async worker.
        let read = tokio::task::spawn_blocking(move || {
            store
                .queued_message(queue_id)
                .map(|d| (prepare(&dkim_dir, d.clone(), &from), d))
        });
        match read.await {
            Ok(Ok((data, d))) => {
                loaded.push((queue_id, d, data, mail_from, rcpts));
            }
            other => warn!(queue_id, ?other, "queued message unreadable"),
        }
    }
    let jobs: Vec<Job<'_>> = loaded
        .iter()
        .map(|(_, _, data, from, rcpts)| Job {
            data: data.clone(),
            mail_from: from.clone(),
            rcpts: rcpts.iter().collect(),
        })
        .collect();
    let outcomes = attempt(ob, &jobs, domain).await;
    for ((queue_id, original, _, mail_from, rcpts), outcomes) in loaded.into_iter().zip(outcomes) {
        finish(ob, queue_id, &original, &mail_from, &rcpts, outcomes).await;
    }
}

/// Record one message's outcomes, and tell its sender about failures and delays.
async fn finish(
    ob: &Outbox,
    queue_id: i64,
    data: &[u8],
    mail_from: &str,
    rcpts: &[QueuedRcpt],
    outcomes: Vec<Outcome>,
) {
    let now = unix_now();
    let mut failures = Vec::new();
    let mut warnings: Vec<(i64, Failure)> = Vec::new();
    for (r, o) in rcpts.iter().zip(outcomes) {
        let rec = match o {
            Outcome::Delivered => {
                info!(queue_id, rcpt = r.rcpt, "delivered to remote server");
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
                        if ob.delay_warning > 0 && !r.warned && now - r.created >= ob.delay_warning
                        {
                            warnings.push((
                                r.id,
                                Failure {
                                    rcpt: r.rcpt.clone(),
                                    delayed: true,
                                    status: "4.4.1".into(),
                                    diagnostic: e.clone(),
                                    remote_mta: None,
                                },
                            ));
                        }
                        Attempt::Retry { at, error: e }
                    }
                    None => {
                        failures.push(Failure {
                            rcpt: r.rcpt.clone(),
                            delayed: false,
                            status: "4.4.7".into(),
                            diagnostic: format!("gave up after {} attempts: {e}", r.attempts + 1),
                            remote_mta: None,
                        });
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
                failures.push(Failure {
                    rcpt: r.rcpt.clone(),
                    delayed: false,
                    status,
                    diagnostic: reply.clone(),
                    remote_mta: host,
                });
                Attempt::Failed { error: reply }
            }
        };
        let store = ob.store.clone();
        let id = r.id;
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.record(id, &rec)).await {
            warn!(error = %e, "cannot record a delivery attempt");
        }
    }
    if !failures.is_empty() && !mail_from.is_empty() {
        bounce(ob, mail_from, data, &failures, rcpts[0].created).await;
    }
    // RFC 3464 "delayed": once per recipient, never for bounces (null sender).
    if !warnings.is_empty() && !mail_from.is_empty() {
        let (ids, reports): (Vec<i64>, Vec<Failure>) = warnings.into_iter().unzip();
        bounce(ob, mail_from, data, &reports, rcpts[0].created).await;
        let store = ob.store.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for id in ids {
                let _ = store.mark_warned(id);
            }
        })
        .await;
    }
}

/// What goes on the wire: without our Return-Path (RFC 5321 §4.4: final delivery adds
/// it) and, when the author's domain has a key, with a DKIM signature (RFC 6376).
fn prepare(dkim_dir: &std::path::Path, data: Vec<u8>, mail_from: &str) -> Vec<u8> {
    let body = match data.strip_prefix(b"Return-Path:") {
        Some(rest) => match rest.iter().position(|&b| b == b'\n') {
            Some(p) => rest[p + 1..].to_vec(),
            None => data.clone(),
        },
        None => data.clone(),
    };
    // The signing domain is the From: domain (DMARC alignment), else the envelope's.
    let from_domain = yubin_model::mime::parse_header(&body)
        .map(|(m, _)| m)
        .and_then(|m| {
            m.from()
                .and_then(|a| a.first())
                .and_then(|a| a.address.as_deref())
                .and_then(|a| a.rsplit_once('@').map(|(_, d)| d.to_lowercase()))
        })
        .or_else(|| mail_from.rsplit_once('@').map(|(_, d)| d.to_lowercase()));
    match from_domain.and_then(|d| crate::dkim::sign(dkim_dir, &d, &body)) {
        Some(sig) => {
            let mut out = sig.into_bytes();
            out.extend_from_slice(&body);
            out
        }
        None => body,
    }
}

/// Send an RFC 3464 report to the envelope sender: to the local mailbox, or through the
/// queue with the null sender (so a bounce never bounces).
async fn bounce(ob: &Outbox, to: &str, original: &[u8], failures: &[Failure], created: i64) {
    let id = format!("{}@{}", new_id(), ob.hostname);
    let dsn = yubin_queue::bounce(
        &ob.hostname,
        to,
        original,
        failures,
        &crate::rfc5322_date(created),
        &id,
    );
    let store = ob.store.clone();
    let to = to.to_owned();
    let now = unix_now();
    let r = tokio::task::spawn_blocking(move || {
        let local = match store.resolve(&to)? {
            Resolved::Accounts(ids) => ids,
            _ => Vec::new(),
        };
        let outbound = Outbound {
            mail_from: String::new(),
            rcpts: if local.is_empty() {
                vec![to.clone()]
            } else {
                vec![]
            },
        };
        // Final delivery of a bounce records its null reverse-path (RFC 5321 §4.4).
        let blob = if local.is_empty() {
            store.stage(&[&dsn])?
        } else {
            store.stage(&[b"Return-Path: <>\r\n", &dsn])?
        };
        store.accept(blob, &local, &outbound, now)
    })
    .await;
    match r {
        Ok(Ok(_)) => ob.wake.notify_one(),
        other => warn!(?other, "could not send a bounce"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dot_stuffing() {
        assert_eq!(super::dot_stuff(b".a\r\nb\n.\r\n"), b"..a\r\nb\r\n..\r\n");
        assert_eq!(super::dot_stuff(b"x"), b"x\r\n");
        // A bare CR is a line end too: `<CR>.<CR><LF>` cannot end the data early.
        assert_eq!(
            super::dot_stuff(b"a\r.\r\nMAIL FROM:<x@y>\r\n"),
            b"a\r\n..\r\nMAIL FROM:<x@y>\r\n"
        );
        assert_eq!(super::dot_stuff(b"a\r\r\n.\r"), b"a\r\n\r\n..\r\n");
    }
}
