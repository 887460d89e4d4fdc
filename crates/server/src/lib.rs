//! yubin's runtime: configuration, first run, TLS, listeners, and the drivers that connect
//! sans-IO protocol sessions to sockets and to the store.

mod analyze;
pub mod config;
mod dane;
pub mod dkim;
pub mod guard;
pub mod https;
pub mod imap;
mod limits;
pub mod login_cache;
pub mod metrics;
pub mod mta_sts;
mod outbound;
pub mod pop3;
mod smtp;
mod stream;
pub mod tls;
mod tlsrpt;
mod virus;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};
use yubin_store::{Directory, MailStore, SqliteStore, Store};

pub use config::Config;
/// The store as the server holds it (for tools built on the server crate, e.g. the fuzzers).
pub type StoreHandle = dyn Store;
use limits::{ConnLimiter, Refused};
pub use yubin_smtp::trace::rfc5322_date;

/// Shared by every connection.
pub struct Server {
    pub cfg: Config,
    pub store: Arc<dyn Store>,
    /// Replaced on SIGHUP; connections keep the configuration they started with.
    tls: std::sync::RwLock<Option<TlsAcceptor>>,
    smtp_limits: Arc<ConnLimiter>,
    imap_limits: Arc<ConnLimiter>,
    imap_accounts: Arc<limits::AccountSessions>,
    pop3_limits: Arc<ConnLimiter>,
    /// The MTA-STS policy host (HTTPS).
    https_limits: Arc<ConnLimiter>,
    /// Accounts with an open POP3 session.
    pop3_locks: pop3::Locks,
    /// Wakes the outbound queue runner when mail for other domains is accepted.
    pub queue_wake: Arc<tokio::sync::Notify>,
    /// Login throttling and sending rates, shared by every protocol.
    pub guard: Arc<guard::Guard>,
    /// Every committed mailbox change, for IMAP IDLE.
    changes: tokio::sync::broadcast::Sender<yubin_store::MailboxId>,
    /// Bytes of messages being received over SMTP, all sessions together.
    pub inflight: Arc<std::sync::atomic::AtomicUsize>,
    /// The store's `account_epoch`, read by one task every 250 ms: sessions compare it before
    /// each command (and IDLE sessions wake when it moves) to end at once if their account
    /// was removed, disabled or given a new password.
    pub account_epoch: tokio::sync::watch::Receiver<u64>,
    /// Becomes true when the server starts shutting down.
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// The decision step of inbound mail.
    analyzer: analyze::Analyzer,
}

impl Server {
    /// The TLS configuration for a new handshake.
    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loopback peers count as a protected path when the config says so.
    pub fn trusted_path(&self, peer: SocketAddr) -> bool {
        self.cfg.auth.trust_loopback && peer.ip().is_loopback()
    }

    /// Load the certificate and key again (SIGHUP). On error the old ones stay.
    pub fn reload_tls(&self) {
        let (cert, key) = tls::paths(&self.cfg);
        match tls::load(&cert, &key) {
            Ok(c) => {
                *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Some(TlsAcceptor::from(c));
                info!(cert = %cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "TLS reload failed; keeping the old certificate")
            }
        }
    }
}

/// How long a shutdown waits for sessions to finish the message they are receiving.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A short unique id for a message or session, for logs and the client's reply.
pub fn new_id() -> String {
    let mut b = [0u8; 8];
    // An id only needs to be unique enough for logs; fall back to time if the RNG fails.
    if getrandom::fill(&mut b).is_err() {
        b = (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0))
        .to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// What a first run created, to show the user once.
#[derive(Debug)]
pub struct FirstRun {
    pub config_created: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub domain: String,
    pub admin: String,
    pub password: String,
    pub generated_cert: Option<PathBuf>,
}

/// The config `serve` would use: the file's, or (before the first run) the one the first
/// run would write. `dev` applies `--dev`.
pub fn planned_config(config_path: &Path, dev: bool) -> Result<Config> {
    let mut cfg = if config_path.exists() {
        Config::load(config_path)?
    } else {
        Config::parse(&Config::first_run_text(&config::system_hostname()))?
    };
    if dev {
        cfg.dev_listen();
    }
    Ok(cfg)
}

/// Try every listening address once (and let go): run before the first run writes
/// anything, so a port that cannot be had (not root, already in use) is reported with
/// nothing left behind.
pub fn check_listen(cfg: &Config) -> Result<()> {
    // Another server on this data directory holds these ports too: say that, not "in use".
    let lock = cfg.data_dir.join("server.lock");
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&lock)
        && let Err(std::fs::TryLockError::WouldBlock) = f.try_lock()
    {
        return Err(yubin_store::Error::Locked(cfg.data_dir.clone()).into());
    }
    for (proto, addr) in cfg.listen_addrs() {
        if let Err(e) = bind(addr) {
            listen_error(proto, addr, e)?;
        }
    }
    Ok(())
}

/// What to do when `addr` cannot be bound: skip an IPv6 wildcard on a host without IPv6,
/// else an error that says what to change.
fn listen_error(proto: &str, addr: SocketAddr, e: std::io::Error) -> Result<()> {
    if addr.is_ipv6()
        && addr.ip().is_unspecified()
        && matches!(e.raw_os_error(), Some(97) | Some(99))
    {
        // EAFNOSUPPORT / EADDRNOTAVAIL: this host has no IPv6.
        warn!(%addr, proto, "IPv6 is not available on this host; skipping");
        return Ok(());
    }
    let hint = match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need root or CAP_NET_BIND_SERVICE; to try yubin as an ordinary \
             user, run `yubin serve --dev` (loopback, ports 10000 + the standard ones)"
        }
        std::io::ErrorKind::AddrInUse => "another program already uses it",
        _ => "check the address",
    };
    bail!(
        "cannot listen for {proto} on {addr}: {e} ({hint}); or change [listen] {proto} in the \
         config file, or set `{proto} = []` to disable it"
    )
}

/// Make sure a config file and an initialized data directory exist. On the first run this
/// writes the config, a self-signed certificate, the first domain and an admin account.
/// Returns the loaded config and, when anything was created, what was.
pub fn init(config_path: &Path, domain: Option<&str>) -> Result<(Config, Option<FirstRun>)> {
    let mut config_created = None;
    if !config_path.exists() {
        let text = Config::first_run_text(&config::system_hostname());
        std::fs::write(config_path, text)
            .with_context(|| format!("cannot create config file {}", config_path.display()))?;
        config_created = Some(config_path.to_owned());
    }
    let cfg = Config::load(config_path)?;
    let mut generated_cert = None;
    if cfg.tls.cert.is_none() {
        let (cert, _) = tls::paths(&cfg);
        if !cert.exists() {
            let mut names = vec![cfg.hostname.clone(), "localhost".to_string()];
            if let Some(d) = domain {
                names.insert(1, d.to_lowercase());
            }
            names.dedup();
            tls::generate_self_signed(&cfg.tls_dir(), &names)?;
            generated_cert = Some(cert);
        }
    }
    if SqliteStore::is_initialized(&cfg.data_dir) {
        let store = SqliteStore::open(&cfg.data_dir)?;
        if let Some(d) = domain
            && !store.is_local_domain(d)?
        {
            store.add_domain(d)?;
            info!(domain = d, "domain added");
        }
        return Ok((cfg, None));
    }
    let store = SqliteStore::create(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    let domain = domain.unwrap_or(&cfg.hostname).to_lowercase();
    let domain = store
        .add_domain(&domain)
        .with_context(|| format!("cannot add first domain {domain:?}; pass --domain"))?
        .name;
    let password = random_password()?;
    let admin = format!("admin@{domain}");
    store.add_account(&admin, &password, true)?;
    let data_dir = cfg.data_dir.clone();
    Ok((
        cfg,
        Some(FirstRun {
            config_created,
            data_dir,
            domain,
            admin,
            password,
            generated_cert,
        }),
    ))
}

fn random_password() -> Result<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut b = [0u8; 20];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random password: {e}"))?;
    Ok(b.iter()
        .map(|x| ALPHABET[(*x & 63) as usize] as char)
        .collect())
}

/// Bind one listening socket; IPv6 sockets are IPv6-only so `0.0.0.0` and `[::]` can
/// share a port.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

fn bind_all(proto: &str, addrs: &[SocketAddr]) -> Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for &addr in addrs {
        match bind(addr) {
            Ok(l) => out.push(TcpListener::from_std(l)?),
            Err(e) => listen_error(proto, addr, e)?,
        }
    }
    Ok(out)
}

/// Run the server until SIGINT or SIGTERM.
/// Each connection is a file descriptor; the usual soft limit (1024) would cap a server
/// holding thousands of IDLE clients, so take what the hard limit allows (as Go and
/// Dovecot's master do).
#[allow(unsafe_code)] // getrlimit/setrlimit through libc
fn raise_fd_limit() {
    #[cfg(target_os = "linux")]
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            let want = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                warn!(soft = l.rlim_cur, "could not raise the open-files limit");
            }
        }
    }
}

/// glibc raises its mmap threshold each time a large block is freed, after which large
/// short-lived buffers (message bodies, FETCH output) are carved from the arenas and their
/// memory is kept: a long-running server's RSS grew with every big message it handled.
/// A fixed threshold turns that adaptation off: blocks of 1 MiB and more are mapped and
/// returned to the system on free. Fixing it also fixes the trim threshold at 128 KiB,
/// which made every FETCH give its output buffer back to the kernel (madvise) and fault
/// it in again; 32 MiB of free arena is kept before trimming.
#[allow(unsafe_code)] // mallopt through libc
fn fix_malloc_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before the runtime is busy.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

pub async fn serve(cfg: Config) -> Result<()> {
    raise_fd_limit();
    fix_malloc_thresholds();
    let mut store = SqliteStore::open(&cfg.data_dir)?;
    store.lock_exclusive()?;
    let swept = tokio::task::block_in_place(|| yubin_store::MailStore::sweep_orphans(&store))?;
    if swept > 0 {
        info!(
            count = swept,
            "removed message files of deliveries interrupted by a crash"
        );
    }
    let (cert, key) = tls::paths(&cfg);
    let tls = Some(TlsAcceptor::from(tls::load(&cert, &key)?));

    let mut bound = Vec::new();
    for kind in LISTENERS {
        for l in bind_all(kind.name, kind.addresses(&cfg.listen))? {
            bound.push((kind, l));
        }
    }
    if bound.is_empty() {
        bail!("no listener is enabled; set [listen] in the config file");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (changes, _) = tokio::sync::broadcast::channel(1024);
    let notify = changes.clone();
    store.on_change(Box::new(move |m| {
        let _ = notify.send(m);
    }));
    let (epoch_tx, epoch_rx) = tokio::sync::watch::channel(store.account_epoch().unwrap_or(0));
    let analyzer = analyze::Analyzer::new(&cfg)?;
    let server = Arc::new(Server {
        analyzer,
        account_epoch: epoch_rx,
        shutdown: stop_rx,
        smtp_limits: ConnLimiter::new(cfg.smtp.max_connections, cfg.smtp.max_connections_per_ip),
        imap_limits: ConnLimiter::new(cfg.imap.max_connections, cfg.imap.max_connections_per_ip),
        imap_accounts: limits::AccountSessions::new(cfg.imap.max_connections_per_account),
        pop3_limits: ConnLimiter::new(cfg.pop3.max_connections, cfg.pop3.max_connections_per_ip),
        https_limits: ConnLimiter::new(200, 20),
        pop3_locks: Default::default(),
        queue_wake: Arc::new(tokio::sync::Notify::new()),
        guard: Arc::new(guard::Guard::new(guard::Limits {
            max_failures_per_ip: cfg.auth.max_failures_per_ip,
            max_failures_per_account: cfg.auth.max_failures_per_account,
            block_for: std::time::Duration::from_secs(cfg.auth.block_minutes * 60),
            messages_per_hour: cfg.submission.messages_per_hour,
            recipients_per_hour: cfg.submission.recipients_per_hour,
            default_domain: cfg.auth.default_domain.clone(),
        })),
        changes,
        inflight: Arc::default(),
        cfg,
        store: Arc::new(store),
        tls: std::sync::RwLock::new(tls),
    });
    // One reader of the account epoch for every idle session (a changed account ends its
    // sessions; busy sessions look before each command themselves).
    {
        let store = server.store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                if let Ok(e) = store.account_epoch() {
                    epoch_tx.send_if_modified(|v| std::mem::replace(v, e) != e);
                }
                if epoch_tx.is_closed() {
                    return;
                }
            }
        });
    }
    // Held messages past `[filter] quarantine_days` are dropped, a batch at a time, soon
    // after start and then every ten minutes.
    if server.cfg.filter.quarantine_days > 0 {
        let server = server.clone();
        tokio::spawn(async move {
            let mut wait = std::time::Duration::from_secs(5);
            loop {
                tokio::time::sleep(wait).await;
                wait = std::time::Duration::from_secs(600);
                let s = server.clone();
                let before = quarantine_cutoff(s.cfg.filter.quarantine_days);
                let dropped =
                    tokio::task::spawn_blocking(move || s.store.quarantine_expire(before, 1000))
                        .await;
                match dropped {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => {
                        tracing::info!(
                            n,
                            days = server.cfg.filter.quarantine_days,
                            "quarantine expired"
                        );
                        if n == 1000 {
                            wait = std::time::Duration::from_secs(1);
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "quarantine expiry failed"),
                    Err(e) => tracing::warn!(error = %e, "quarantine expiry task failed"),
                }
            }
        });
    }
    // The classifier learns the labels users give (Junk moves, flags, sent mail,
    // `yubin filter train`), a few seconds after they give them.
    if let Err(e) = server.analyzer.load_model(server.store.as_ref()) {
        tracing::warn!(error = %e, "cannot read the classifier's counts; it starts empty");
    }
    if server.cfg.filter.classifier {
        let server = server.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let s = server.clone();
                let learned =
                    tokio::task::spawn_blocking(move || s.analyzer.learn_pending(s.store.as_ref()))
                        .await;
                match learned {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => {
                        let ((spam, ham), features) = server.analyzer.model_size();
                        tracing::info!(n, spam, ham, features, "classifier learned labels");
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "classifier training failed"),
                    Err(e) => tracing::warn!(error = %e, "classifier training task failed"),
                }
                if server.shutdown.has_changed().unwrap_or(true) {
                    return;
                }
            }
        });
    }
    // The outbound queue runner.
    let roots = Arc::new(
        mta_sts::roots(server.cfg.queue.tls_ca_file.as_deref())
            .context("cannot load [queue] tls_ca_file")?,
    );
    let outbox = outbound::Outbox {
        store: server.store.clone(),
        hostname: server.cfg.hostname.clone(),
        resolver: outbound::resolver(&server.cfg.queue.dns_servers)
            .context("cannot set up DNS resolution for outbound mail")?,
        port: server.cfg.queue.remote_port,
        schedule: yubin_queue::Schedule {
            delays: server
                .cfg
                .queue
                .retry_seconds
                .iter()
                .map(|s| i64::from(*s))
                .collect(),
            max_age: i64::from(server.cfg.queue.max_days) * 86_400,
            jitter_percent: 10,
        },
        wake: server.queue_wake.clone(),
        dkim_dir: server.cfg.dkim_dir(),
        per_domain: server.cfg.queue.per_domain_concurrency,
        delay_warning: i64::from(server.cfg.queue.delay_warning_seconds),
        sources: server.cfg.queue.source_addresses.clone(),
        sts: server
            .cfg
            .queue
            .mta_sts
            .then(|| mta_sts::Sts::new(server.cfg.queue.mta_sts_port, roots.clone())),
        roots: roots.clone(),
        tls_reports: Arc::new(tlsrpt::Reports::new(unix_now())),
        dane: if server.cfg.queue.dane {
            Some(dane::Dane::new(
                dane::resolver(
                    &server.cfg.queue.dns_servers,
                    server.cfg.queue.dnssec_trust_anchor.as_deref(),
                )
                .context("cannot set up DNSSEC validation for DANE; set [queue] dane = false to go without")?,
            ))
        } else {
            None
        },
        sources_by_domain: server
            .cfg
            .queue
            .source_by_domain
            .iter()
            .map(|(d, a)| (d.trim_end_matches('.').to_ascii_lowercase(), a.clone()))
            .collect(),
        limit: Arc::new(tokio::sync::Semaphore::new(
            server.cfg.queue.concurrency.max(1),
        )),
    };
    let outbox = Arc::new(outbox);
    tokio::spawn(outbound::run(outbox.clone()));
    // RFC 8460: TLS reports, once a day (or as configured).
    if server.cfg.queue.tls_report_seconds > 0 {
        let every = std::time::Duration::from_secs(server.cfg.queue.tls_report_seconds);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                tlsrpt::send_all(&outbox, unix_now()).await;
            }
        });
    }
    // SIGHUP: new certificate for new connections; open ones keep theirs (no drops).
    {
        use tokio::signal::unix::{SignalKind, signal};
        let server = server.clone();
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        server.reload_tls();
                    }
                });
            }
            Err(e) => warn!(error = %e, "cannot watch SIGHUP; certificates reload only on restart"),
        }
    }
    let mut acceptors = Vec::new();
    for (kind, l) in bound {
        let addr = l.local_addr()?;
        info!(%addr, proto = kind.name, "listening");
        acceptors.push(tokio::spawn(accept(server.clone(), l, kind)));
    }
    shutdown_signal().await;
    // Stop accepting, tell idle sessions, let messages in flight finish (RFC 5321 §3.8).
    info!("shutting down");
    for a in &acceptors {
        a.abort();
    }
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let active = || {
        server.smtp_limits.active()
            + server.imap_limits.active()
            + server.pop3_limits.active()
            + server.https_limits.active()
    };
    while active() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if active() > 0 {
        warn!(
            sessions = active(),
            "stopping with sessions still open; their clients will retry"
        );
    }
    Ok(())
}

/// What runs a connection of one listener kind.
type Handler = fn(Arc<Server>, tokio::net::TcpStream, SocketAddr) -> futures_lite::BoxFuture;

/// One kind of listener: its `[listen]` key, its connection limits, what an
/// over-the-limit client is told (per address, in total), and its handler.
pub struct ListenerKind {
    pub name: &'static str,
    addrs: fn(&config::Listen) -> &[SocketAddr],
    limits: fn(&Server) -> &Arc<ConnLimiter>,
    refuse_per_ip: &'static [u8],
    refuse_total: &'static [u8],
    handle: Handler,
}

const SMTP_PER_IP: &[u8] = b"421 4.7.0 Too many connections from your address, try again later\r\n";
const SMTP_TOTAL: &[u8] = b"421 4.3.2 Too many connections, try again later\r\n";
const IMAP_FULL: &[u8] = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n";
const POP3_FULL: &[u8] = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n";
const HTTP_FULL: &[u8] = b"";

/// Every listener yubin has: a new protocol is one row (RFC 5321 §3.1, RFC 9051 §7.1.5,
/// RFC 2449 for the refusals).
pub static LISTENERS: &[ListenerKind] = &[
    ListenerKind {
        name: "smtp",
        addrs: |l| &l.smtp,
        limits: |s| &s.smtp_limits,
        refuse_per_ip: SMTP_PER_IP,
        refuse_total: SMTP_TOTAL,
        handle: |s, t, p| Box::pin(smtp::handle(s, t, p, SMTP)),
    },
    ListenerKind {
        name: "submission",
        addrs: |l| &l.submission,
        limits: |s| &s.smtp_limits,
        refuse_per_ip: SMTP_PER_IP,
        refuse_total: SMTP_TOTAL,
        handle: |s, t, p| Box::pin(smtp::handle(s, t, p, SUBMISSION)),
    },
    ListenerKind {
        name: "submissions",
        addrs: |l| &l.submissions,
        limits: |s| &s.smtp_limits,
        refuse_per_ip: SMTP_PER_IP,
        refuse_total: SMTP_TOTAL,
        handle: |s, t, p| Box::pin(smtp::handle(s, t, p, SUBMISSIONS)),
    },
    ListenerKind {
        name: "imap",
        addrs: |l| &l.imap,
        limits: |s| &s.imap_limits,
        refuse_per_ip: IMAP_FULL,
        refuse_total: IMAP_FULL,
        handle: |s, t, p| Box::pin(imap::handle(s, t, p, false)),
    },
    ListenerKind {
        name: "imaps",
        addrs: |l| &l.imaps,
        limits: |s| &s.imap_limits,
        refuse_per_ip: IMAP_FULL,
        refuse_total: IMAP_FULL,
        handle: |s, t, p| Box::pin(imap::handle(s, t, p, true)),
    },
    ListenerKind {
        name: "pop3",
        addrs: |l| &l.pop3,
        limits: |s| &s.pop3_limits,
        refuse_per_ip: POP3_FULL,
        refuse_total: POP3_FULL,
        handle: |s, t, p| Box::pin(pop3::handle(s, t, p, false)),
    },
    ListenerKind {
        name: "pop3s",
        addrs: |l| &l.pop3s,
        limits: |s| &s.pop3_limits,
        refuse_per_ip: POP3_FULL,
        refuse_total: POP3_FULL,
        handle: |s, t, p| Box::pin(pop3::handle(s, t, p, true)),
    },
    ListenerKind {
        name: "mta_sts",
        addrs: |l| &l.mta_sts,
        limits: |s| &s.https_limits,
        refuse_per_ip: HTTP_FULL,
        refuse_total: HTTP_FULL,
        handle: |s, t, p| Box::pin(https::handle(s, t, p)),
    },
    ListenerKind {
        name: "metrics",
        addrs: |l| &l.metrics,
        limits: |s| &s.https_limits,
        refuse_per_ip: HTTP_FULL,
        refuse_total: HTTP_FULL,
        handle: |s, t, p| Box::pin(metrics::handle(s, t, p)),
    },
];

impl ListenerKind {
    /// Its addresses in the configuration.
    pub fn addresses<'a>(&self, l: &'a config::Listen) -> &'a [SocketAddr] {
        (self.addrs)(l)
    }
}

/// The boxed future a [`Handler`] returns (no extra crate for one type).
mod futures_lite {
    pub type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

const SMTP: smtp::Mode = smtp::Mode {
    implicit_tls: false,
    submission: false,
};
const SUBMISSION: smtp::Mode = smtp::Mode {
    implicit_tls: false,
    submission: true,
};
const SUBMISSIONS: smtp::Mode = smtp::Mode {
    implicit_tls: true,
    submission: true,
};

async fn accept(server: Arc<Server>, listener: TcpListener, kind: &'static ListenerKind) {
    use tracing::Instrument;
    let limits = (kind.limits)(&server).clone();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match limits.acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                info!(%peer, ?why, proto = kind.name, "connection refused: limit reached");
                let msg = match why {
                    Refused::PerIp => kind.refuse_per_ip,
                    Refused::Total => kind.refuse_total,
                };
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut tcp = tcp;
                    let _ = tcp.write_all(msg).await;
                    let _ = tcp.shutdown().await;
                });
                continue;
            }
        };
        let span = tracing::info_span!("conn", proto = kind.name, session = %new_id(), %peer);
        let server = server.clone();
        tokio::spawn(
            async move {
                let _slot = slot;
                tracing::debug!("connected");
                (kind.handle)(server, tcp, peer).await
            }
            .instrument(span),
        );
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The time (Unix seconds) before which a held message is older than `days`.
pub fn quarantine_cutoff(days: u32) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    now - i64::from(days) * 86_400
}
