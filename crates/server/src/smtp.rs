//! Drives a `yubin_smtp::Session` over a TCP connection: reads, writes, TLS upgrade,
//! recipient lookups and durable delivery through the store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};
use yubin_smtp::{AuthOutcome, DeliveryOutcome, Event, Message, RcptVerdict, Session, trace};
use yubin_store::{AccountId, Flags, Placement, Resolved};

use crate::stream::Stream;
use crate::{Server, new_id, unix_now};

/// Which SMTP service a listener offers.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// Port 465: TLS from the first byte (RFC 8314).
    pub implicit_tls: bool,
    /// Ports 587/465: message submission, AUTH required (RFC 6409).
    pub submission: bool,
}

pub async fn handle(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, mode: Mode) {
    let _ = tcp.set_nodelay(true);
    let mut stream = Stream::Plain(tcp);
    if mode.implicit_tls {
        match crate::stream::upgrade(&server, stream).await {
            Ok(s) => stream = s,
            Err(e) => return debug!(error = %e, "TLS handshake failed"),
        }
    }
    let cfg = yubin_smtp::Config {
        hostname: server.cfg.hostname.clone(),
        max_message_size: server.cfg.smtp.max_message_size,
        max_recipients: server.cfg.smtp.max_recipients,
        max_errors: server.cfg.smtp.max_errors,
        max_line_length: server.cfg.smtp.max_line_length,
        starttls: server.tls().is_some() && !mode.implicit_tls,
        auth: mode.submission || server.cfg.smtp.auth,
        // RFC 8314: credentials only over TLS; loopback is a protected path.
        auth_requires_tls: !(server.cfg.submission.plaintext_auth || server.trusted_path(peer)),
        submission: mode.submission,
        // RFC 4468: submission resolves IMAP URLs of the user's own mailboxes.
        burl: mode.submission,
        sasl_secret: server.guard.sasl_secret(),
    };
    let session = if mode.implicit_tls {
        Session::new_tls(cfg)
    } else {
        Session::new(cfg)
    };
    let mut conn = Conn {
        server,
        stream,
        peer,
        out: Vec::with_capacity(1024),
        accepted: HashMap::new(),
        account: None,
        remote: Vec::new(),
    };
    match conn.run(session).await {
        Ok(()) => debug!("session closed"),
        Err(e) => debug!(error = %e, "session ended"),
    }
}

struct Conn {
    server: Arc<Server>,
    stream: Stream,
    peer: SocketAddr,
    out: Vec<u8>,
    /// Accounts each accepted recipient resolved to at RCPT time.
    accepted: HashMap<String, Vec<AccountId>>,
    /// The account that authenticated (id, address).
    account: Option<(AccountId, String)>,
    /// Accepted recipients on other domains (authenticated sessions only), for the queue.
    remote: Vec<String>,
}

impl Conn {
    /// RFC 4468 BURL: the URL must name a message part in the authenticated account's
    /// own mailboxes; a URLAUTH URL must verify for `submit+` that account (RFC 4467
    /// §3), a plain one is read with the same rights an IMAP login of that account has.
    async fn resolve_url(&self, url: String) -> yubin_smtp::UrlOutcome {
        use yubin_smtp::UrlOutcome;
        let Some((id, address)) = self.account.clone() else {
            return UrlOutcome::Invalid("Authentication required".into());
        };
        let store = self.server.store.clone();
        let guard = self.server.guard.clone();
        let peer = self.peer;
        let joined = tokio::task::spawn_blocking(move || {
            let mut backend =
                crate::imap::StoreBackend::new(store, guard, peer).for_account(id, &address);
            let parsed = yubin_imap::imapurl::parse(&url);
            let Some(u) = parsed.filter(|u| u.mailbox.is_some()) else {
                return UrlOutcome::Invalid(format!("{url}: not an IMAP URL naming a message"));
            };
            let who = yubin_imap::urlauth::Requester {
                user: Some(&address),
                submit: true,
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            if u.access.is_some() && !yubin_imap::urlauth::verify(&mut backend, &u, &who, now) {
                return UrlOutcome::Invalid(format!("{url}: URLAUTH does not verify"));
            }
            match yubin_imap::urlauth::resolve(&mut backend, &u, None) {
                Ok(data) => UrlOutcome::Data(data),
                Err(yubin_imap::urlauth::UrlError::Invalid) => {
                    UrlOutcome::Invalid(format!("{url}: names no message part of yours"))
                }
                Err(yubin_imap::urlauth::UrlError::Backend(e)) => {
                    UrlOutcome::TempFail(format!("IMAP store unavailable: {e}"))
                }
            }
        })
        .await;
        joined.unwrap_or_else(|e| UrlOutcome::TempFail(format!("URL resolution failed: {e}")))
    }

    async fn run(&mut self, mut session: Session) -> std::io::Result<()> {
        let idle = Duration::from_secs(self.server.cfg.smtp.idle_timeout);
        let mut buf = vec![0u8; 64 * 1024];
        let mut shutdown = self.server.shutdown.clone();
        let mut draining = false;
        let mut inflight = crate::limits::InFlight::new(self.server.inflight.clone());
        let budget = crate::limits::inflight_budget(self.server.cfg.smtp.max_message_size);
        let mut deadline = tokio::time::Instant::now() + idle;
        let mut in_message = false;
        let mut account = crate::limits::SessionAccount::default();
        // SCRAM: the account found at the lookup, let in if the proof checks out.
        let mut scram_account: Option<yubin_store::Account> = None;
        loop {
            // A submission session of an account removed, disabled or given a new password
            // since its AUTH ends before it can send anything more.
            if !account.still_valid(
                &*self.server.store,
                *self.server.account_epoch.borrow(),
                self.account.as_ref().map(|a| a.0),
            ) {
                info!("session ended: account no longer available");
                self.out.clear();
                self.out
                    .extend_from_slice(b"421 4.7.0 Account no longer available\r\n");
                self.flush().await?;
                let _ = self.stream.shutdown().await;
                return Ok(());
            }
            match session.poll() {
                Event::Reply(r) => {
                    if r.is_error() {
                        debug!(reply = %r.text(), code = r.code, "error reply");
                    }
                    r.write_to(&mut self.out)
                }
                Event::CheckRecipient(addr) => {
                    let v = self.check_recipient(&addr, session.declared_size()).await;
                    session.rcpt_verdict(v);
                }
                Event::Deliver(msg) => {
                    inflight.set(msg.data.len());
                    // Tell the client nothing until the message is durable.
                    self.flush().await?;
                    let outcome = self.deliver(msg).await;
                    session.delivery_result(outcome);
                    inflight.set(session.buffered());
                }
                Event::StartTls => {
                    self.flush().await?;
                    self.start_tls().await?;
                    session.tls_started();
                    self.accepted.clear();
                    self.account = None;
                }
                Event::Authenticate { user, password } => {
                    let outcome = self.authenticate(user, password).await;
                    session.auth_result(outcome);
                }
                Event::ScramLookup { user } => {
                    let (store, guard) = (self.server.store.clone(), self.server.guard.clone());
                    let found = tokio::task::spawn_blocking(move || {
                        crate::guard::scram_lookup(&*store, &guard, &user)
                    })
                    .await;
                    let creds = match found {
                        Ok(Ok(Some((a, c)))) => {
                            scram_account = Some(a);
                            Some(c)
                        }
                        _ => None,
                    };
                    session.scram_credentials(creds, &crate::guard::scram_nonce());
                }
                Event::ScramVerified { user, ok } => {
                    let (guard, ip) = (self.server.guard.clone(), self.peer.ip());
                    let account = scram_account.take();
                    let verdict = tokio::task::spawn_blocking(move || {
                        crate::guard::scram_verified(&guard, ip, &user, account, ok, "smtp")
                    })
                    .await;
                    session.auth_result(match verdict {
                        Ok(Ok(Some(a))) => {
                            self.account = Some((a.id, a.address.clone()));
                            AuthOutcome::Success(a.address)
                        }
                        Ok(Ok(None)) => AuthOutcome::Failure,
                        Ok(Err(crate::guard::LoginError::Throttled)) => AuthOutcome::Throttled,
                        _ => AuthOutcome::TempFail,
                    });
                }
                Event::CheckSender(addr) => {
                    let ok = self.owns(&addr).await;
                    if !ok {
                        info!(sender = addr, user = ?self.account.as_ref().map(|a| &a.1), "sender refused: not owned");
                    }
                    session.sender_verdict(ok);
                }
                Event::ResolveUrl { url, .. } => {
                    let outcome = self.resolve_url(url).await;
                    session.burl_result(outcome);
                    // What BURL added counts in the budget of messages in flight, as
                    // bytes read from the socket do.
                    if inflight.set(session.buffered()) > budget {
                        warn!("messages in flight over budget; session told to retry");
                        session.overloaded();
                        inflight.set(0);
                    }
                }
                Event::Close => {
                    self.flush().await?;
                    let _ = self.stream.shutdown().await;
                    return Ok(());
                }
                Event::NeedInput => {
                    self.flush().await?;
                    // While draining, close as soon as the transaction in progress ends.
                    if draining && session.shutdown() {
                        continue;
                    }
                    // Deadlines per command line and per message, not per read: a client
                    // trickling a byte at a time is cut off all the same.
                    match session.receiving() {
                        yubin_smtp::Receiving::Nothing => {
                            in_message = false;
                            // Under stress (most connection slots taken), 10 s per command.
                            let idle = if self.server.smtp_limits.stressed() {
                                idle.min(crate::limits::STRESSED_DEADLINE)
                            } else {
                                idle
                            };
                            deadline = tokio::time::Instant::now() + idle;
                        }
                        yubin_smtp::Receiving::Line => {}
                        yubin_smtp::Receiving::Message if !in_message => {
                            in_message = true;
                            deadline = tokio::time::Instant::now() + crate::limits::DATA_DEADLINE;
                        }
                        yubin_smtp::Receiving::Message => {}
                    }
                    let read = tokio::time::timeout_at(deadline, self.stream.read(&mut buf));
                    let stop = async {
                        if draining {
                            std::future::pending::<()>().await
                        }
                        let _ = shutdown.wait_for(|stop| *stop).await;
                    };
                    tokio::select! {
                        r = read => match r {
                            Err(_) => {
                                info!("idle timeout");
                                session.timeout();
                            }
                            // The client went away; a half-received message is dropped.
                            Ok(Ok(0)) => return Ok(()),
                            Ok(Ok(n)) => {
                                // A client with Nagle's algorithm on holds the last small
                                // segment of a message (the end-of-data dot) until what it
                                // sent before is acknowledged, and Linux delays that ACK
                                // (up to 40 ms) on a request/response connection: one
                                // message in eight of a 256 KiB load waited so. Re-armed
                                // after every read, as the kernel clears it.
                                self.stream.quickack();
                                session.push(&buf[..n]);
                                if inflight.set(session.buffered()) > budget {
                                    warn!("messages in flight over budget; session told to retry");
                                    session.overloaded();
                                    inflight.set(0);
                                }
                            }
                            Ok(Err(e)) => return Err(e),
                        },
                        () = stop => {
                            draining = true;
                            session.shutdown();
                        }
                    }
                }
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        crate::stream::write_within(&mut self.stream, &out).await?;
        self.out = out;
        self.out.clear();
        Ok(())
    }

    async fn start_tls(&mut self) -> std::io::Result<()> {
        let plain = std::mem::replace(&mut self.stream, Stream::Upgrading);
        self.stream = crate::stream::upgrade(&self.server, plain)
            .await
            .inspect_err(|e| info!(error = %e, "TLS handshake failed"))?;
        debug!(tls = ?self.stream.tls_description(), "TLS started");
        Ok(())
    }

    /// SMTP AUTH through the shared guard: blocked sources get 454, failures wait longer
    /// each time, and argon2 runs on a blocking thread.
    async fn authenticate(&mut self, user: String, password: String) -> AuthOutcome {
        let (store, guard, ip) = (
            self.server.store.clone(),
            self.server.guard.clone(),
            self.peer.ip(),
        );
        let result = tokio::task::spawn_blocking(move || {
            crate::guard::login(&*store, &guard, ip, &user, &password, "smtp")
        })
        .await;
        match result {
            Ok(Ok(Some(account))) => {
                self.account = Some((account.id, account.address.clone()));
                AuthOutcome::Success(account.address)
            }
            Ok(Ok(None)) => AuthOutcome::Failure,
            Ok(Err(crate::guard::LoginError::Throttled)) => AuthOutcome::Throttled,
            Ok(Err(crate::guard::LoginError::Store(e))) => {
                warn!(error = %e, "auth lookup failed");
                AuthOutcome::TempFail
            }
            Err(e) => {
                warn!(error = %e, "auth task failed");
                AuthOutcome::TempFail
            }
        }
    }

    /// Is `addr` the authenticated user's own address, a subaddress of it, or an alias
    /// (not a catch-all) that delivers to the user?
    async fn owns(&self, addr: &str) -> bool {
        let Some((_, me)) = self.account.clone() else {
            return false;
        };
        let store = self.server.store.clone();
        let addr = addr.to_owned();
        tokio::task::spawn_blocking(move || owns(&*store, &me, &addr))
            .await
            .unwrap_or(false)
    }

    async fn check_recipient(&mut self, addr: &str, size: usize) -> RcptVerdict {
        let store = self.server.store.clone();
        let lookup = addr.to_owned();
        let resolved = tokio::task::spawn_blocking(move || {
            let resolved = if lookup.eq_ignore_ascii_case("postmaster") {
                // RFC 5321 §4.1.1.3: bare "Postmaster" is the postmaster of our first domain.
                match store.list_domains()?.into_iter().next() {
                    Some(d) => store.resolve(&format!("postmaster@{}", d.name))?,
                    None => Resolved::Unknown,
                }
            } else {
                store.resolve(&lookup)?
            };
            // An account at its storage limit, or that the declared message (RFC 1870
            // SIZE) would take past it, takes no more mail for now.
            let mut full = false;
            if let Resolved::Accounts(ids) = &resolved {
                for &id in ids {
                    if let (used, Some(limit)) = store.usage(id)? {
                        full |= used >= limit || used.saturating_add(size as u64) > limit;
                    }
                }
            }
            Ok::<_, yubin_store::Error>((resolved, full))
        })
        .await;
        match resolved {
            Ok(Ok((Resolved::Accounts(_), true))) => {
                info!(rcpt = addr, "deferred: mailbox full");
                RcptVerdict::MailboxFull
            }
            Ok(Ok((Resolved::Accounts(ids), false))) => {
                self.accepted.insert(addr.to_lowercase(), ids);
                RcptVerdict::Accept
            }
            Ok(Ok((Resolved::Unknown, _))) => {
                info!(rcpt = addr, "rejected: unknown user");
                RcptVerdict::UnknownUser
            }
            Ok(Ok((Resolved::Disabled, _))) => {
                info!(rcpt = addr, "rejected: account disabled");
                RcptVerdict::Disabled
            }
            Ok(Ok((Resolved::NotLocal, _))) if self.account.is_some() => {
                // Authenticated users may send anywhere: the outbound queue takes it.
                if !self.remote.iter().any(|r| r.eq_ignore_ascii_case(addr)) {
                    self.remote.push(addr.to_owned());
                }
                RcptVerdict::Accept
            }
            Ok(Ok((Resolved::NotLocal, _))) => {
                info!(rcpt = addr, "rejected: relay denied");
                RcptVerdict::RelayDenied
            }
            Ok(Err(e)) => {
                warn!(rcpt = addr, error = %e, "recipient lookup failed");
                RcptVerdict::TempFail
            }
            Err(e) => {
                warn!(rcpt = addr, error = %e, "recipient lookup task failed");
                RcptVerdict::TempFail
            }
        }
    }

    async fn deliver(&mut self, msg: Message) -> DeliveryOutcome {
        let mut submitted = None;
        if let Some((account_id, me)) = self.account.clone() {
            match self.check_submission(&msg, &me).await {
                Ok(added) => submitted = Some((account_id, added)),
                Err(outcome) => return outcome,
            }
        }
        let mut accounts: Vec<AccountId> = Vec::new();
        for r in &msg.rcpt_to {
            if let Some(ids) = self.accepted.get(&r.to_lowercase()) {
                accounts.extend(ids);
            }
        }
        // The quota again with the real size (a client need not declare SIZE): the message
        // is deferred whole rather than stored past a recipient's limit.
        let over = {
            let (store, ids, size) = (self.server.store.clone(), accounts.clone(), msg.data.len());
            tokio::task::spawn_blocking(move || {
                ids.iter().any(|&id| {
                    matches!(store.usage(id), Ok((used, Some(limit))) if used.saturating_add(size as u64) > limit)
                })
            })
            .await
            .unwrap_or(false)
        };
        if over {
            info!(
                size = msg.data.len(),
                "deferred: a recipient's mailbox is full"
            );
            return DeliveryOutcome::MailboxFull;
        }
        let id = new_id();
        // The decision step (server::analyze): mail from other servers is judged, mail
        // of authenticated users is not spam-scored (RFC 6409 submission).
        let (placements, judged, data) = if let Some((sender, _)) = &submitted {
            // Submission is policy-checked (attachments), not spam-scored; what users send
            // teaches the classifier and their correspondents.
            if let Err(refused) = self.check_sent(&msg, *sender).await {
                return refused;
            }
            let p: Vec<_> = accounts.iter().copied().map(Placement::inbox).collect();
            (p, String::new(), None)
        } else {
            match self.judge(&msg, &accounts, &id).await {
                Ok(j) => j,
                Err(refused) => return refused,
            }
        };
        let now = unix_now();
        let tls = self.stream.tls_description();
        let return_path = trace::return_path(&msg.mail_from);
        let received = trace::received(&trace::TraceInfo {
            helo: &msg.helo,
            peer_ip: self.peer.ip(),
            hostname: &self.server.cfg.hostname,
            protocol: msg.protocol(),
            tls: tls.as_deref(),
            id: &id,
            single_recipient: (msg.rcpt_to.len() == 1).then(|| msg.rcpt_to[0].as_str()),
            unix_time: now,
        });
        let store = self.server.store.clone();
        let size = msg.data.len();
        let from = msg.mail_from.clone();
        let rcpts = msg.rcpt_to.join(",");
        let save_sent = self.server.cfg.submission.save_sent;
        // Only recipients of this transaction that are on other domains.
        let remote: Vec<String> = std::mem::take(&mut self.remote)
            .into_iter()
            .filter(|r| msg.rcpt_to.iter().any(|x| x.eq_ignore_ascii_case(r)))
            .collect();
        // With what the sender asked of delivery reports (RFC 3461), kept in the queue.
        let dsn_of = |addr: &str| {
            msg.rcpt_to
                .iter()
                .position(|x| x.eq_ignore_ascii_case(addr))
                .and_then(|i| msg.rcpt_dsn.get(i))
                .cloned()
                .unwrap_or_default()
        };
        let outbound = yubin_store::Outbound {
            mail_from: msg.mail_from.clone(),
            rcpts: remote
                .iter()
                .map(|addr| {
                    let d = dsn_of(addr);
                    yubin_store::OutRcpt {
                        addr: addr.clone(),
                        notify: d.notify.map(|n| n.keyword()),
                        orcpt: d.orcpt.map(|(t, a)| format!("{t};{a}")),
                    }
                })
                .collect(),
            envid: msg.envid.clone(),
            ret: msg.ret.map(|r| r.keyword().to_owned()),
            require_tls: msg.require_tls,
        };
        // RFC 3461 §4.1: local recipients that asked for NOTIFY=SUCCESS are told of the
        // delivery once it is durable.
        let delivered_reports: Vec<yubin_queue::Failure> = msg
            .rcpt_to
            .iter()
            .zip(&msg.rcpt_dsn)
            .filter(|(a, d)| {
                d.notify.is_some_and(|n| n.success)
                    && !remote.iter().any(|r| r.eq_ignore_ascii_case(a))
            })
            .map(|(a, d)| yubin_queue::Failure {
                rcpt: a.clone(),
                action: yubin_queue::Action::Delivered,
                status: "2.0.0".into(),
                diagnostic: String::new(),
                remote_mta: None,
                orcpt: d.orcpt.as_ref().map(|(t, a)| format!("{t};{a}")),
            })
            .collect();
        let report_of = (!delivered_reports.is_empty() && !msg.mail_from.is_empty()).then(|| {
            // The header section is what such a report returns (RFC 3461 §4.3).
            let end = msg
                .data
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(msg.data.len(), |p| p + 4);
            let mut head = received.clone().into_bytes();
            head.extend_from_slice(msg.data.get(..end).unwrap_or_default());
            (
                msg.mail_from.clone(),
                msg.envid.clone(),
                head,
                delivered_reports,
            )
        });
        let queued = !outbound.rcpts.is_empty();
        let result = tokio::task::spawn_blocking(move || {
            let added = submitted.as_ref().map_or("", |s| s.1.as_str());
            let parts = [
                return_path.as_bytes(),
                received.as_bytes(),
                judged.as_bytes(),
                added.as_bytes(),
                data.as_deref().unwrap_or(&msg.data),
            ];
            // Return-Path belongs to final delivery (RFC 5321 §4.4): a message that only
            // leaves through the queue is stored without it.
            let blob = if placements.is_empty() {
                store.stage(&parts[1..])?
            } else {
                store.stage(&parts)?
            };
            let (copies, _) = store.accept(blob, &placements, &outbound, now)?;
            // RFC 6409 leaves it to the server; users expect their Sent folder to hold it.
            if save_sent && let Some((sender, _)) = &submitted {
                let blob = store.stage(&parts[3..])?;
                let seen = Flags::system(yubin_store::flags::SEEN);
                if let Err(e) = store.deliver(blob, &[*sender], "Sent", &seen, now) {
                    warn!(error = %e, "could not save a copy to Sent");
                }
            }
            Ok::<_, yubin_store::Error>(copies)
        })
        .await;
        match result {
            Ok(Ok(copies)) => {
                if queued {
                    self.server.queue_wake.notify_one();
                }
                if let Some((to, envid, head, reports)) = report_of {
                    // After the reply, not before it: the report is one more commit.
                    let (store, wake) = (self.server.store.clone(), self.server.queue_wake.clone());
                    let hostname = self.server.cfg.hostname.clone();
                    tokio::spawn(async move {
                        let date = crate::rfc5322_date(now);
                        let mid = format!("{}@{hostname}", new_id());
                        let dsn = yubin_queue::report(
                            &yubin_queue::Report {
                                hostname: &hostname,
                                to: &to,
                                original: &head,
                                arrival_date: &date,
                                message_id: &mid,
                                envid: envid.as_deref(),
                                full: false,
                            },
                            &reports,
                        );
                        crate::outbound::submit_report(store, to, dsn).await;
                        wake.notify_one();
                    });
                }
                info!(
                    id,
                    from,
                    rcpts,
                    size,
                    copies = copies.len(),
                    queued,
                    "accepted"
                );
                DeliveryOutcome::Stored { id }
            }
            Ok(Err(e)) => {
                warn!(id, from, rcpts, error = %e, "delivery failed; client told to retry");
                DeliveryOutcome::TempFail("Local storage error, try again later".into())
            }
            Err(e) => {
                warn!(id, error = %e, "delivery task failed; client told to retry");
                DeliveryOutcome::TempFail("Local storage error, try again later".into())
            }
        }
    }
}

impl Conn {
    /// The decision step for mail from another server: each local copy's placement, the
    /// header fields to prepend, and the message with forged `Authentication-Results`
    /// of ours removed (RFC 8601 §5) if there were any; or the SMTP refusal when no recipient takes it.
    async fn judge(
        &self,
        msg: &Message,
        accounts: &[AccountId],
        id: &str,
    ) -> Result<(Vec<Placement>, String, Option<Vec<u8>>), DeliveryOutcome> {
        let server = &self.server;
        let trusted = self.peer.ip().is_loopback() && !server.cfg.filter.check_local;
        let decision = server
            .analyzer
            .analyze(
                &server.store,
                &crate::analyze::Inbound {
                    peer: self.peer.ip(),
                    helo: &msg.helo,
                    mail_from: &msg.mail_from,
                    data: &msg.data,
                    accounts,
                },
                trusted,
            )
            .await;
        let outcomes: Vec<&str> = decision.rcpts.iter().map(outcome_word).collect();
        info!(
            id,
            from = msg.mail_from,
            score = decision.score,
            reasons = decision.summary(),
            outcomes = outcomes.join(","),
            "judged"
        );
        if let Some(refusal) = decision.refusal() {
            return Err(match refusal {
                yubin_filter::Outcome::TempFail(why) => {
                    DeliveryOutcome::PolicyTempFail(why.clone())
                }
                yubin_filter::Outcome::Reject { code, text } => DeliveryOutcome::PolicyReject {
                    code: *code,
                    text: text.clone(),
                },
                _ => DeliveryOutcome::TempFail("Local error, try again later".into()),
            });
        }
        let junk = Flags {
            system: 0,
            keywords: vec!["$Junk".into()],
        };
        // Junk is the account's `\Junk` mailbox (RFC 6154), whatever the user named it.
        let junk_boxes: HashMap<AccountId, String> = {
            let store = server.store.clone();
            let ids: Vec<AccountId> = accounts
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    !matches!(
                        decision.rcpts.get(*i),
                        Some(yubin_filter::Outcome::Inbox) | None
                    )
                })
                .map(|(_, &a)| a)
                .collect();
            tokio::task::spawn_blocking(move || {
                ids.into_iter()
                    .filter_map(|id| {
                        let boxes = store.list_mailboxes(id).ok()?;
                        let b = boxes
                            .into_iter()
                            .find(|b| b.special_use.as_deref() == Some("\\Junk"))?;
                        Some((id, b.name))
                    })
                    .collect()
            })
            .await
            .unwrap_or_default()
        };
        let placements = accounts
            .iter()
            .enumerate()
            .map(|(i, &account)| match decision.rcpts.get(i) {
                Some(yubin_filter::Outcome::Inbox) | None => Placement::inbox(account),
                Some(yubin_filter::Outcome::Quarantine(why)) => Placement::quarantine(account, why),
                // A copy refused by its own account's threshold while others take the
                // message cannot be refused in SMTP (one reply to DATA); it goes to Junk
                // rather than being dropped unseen.
                Some(_) => Placement {
                    mailbox: junk_boxes
                        .get(&account)
                        .cloned()
                        .unwrap_or_else(|| "Junk".into()),
                    flags: junk.clone(),
                    ..Placement::inbox(account)
                },
            })
            .collect();
        let stripped = yubin_filter::headers::strip_results(&msg.data, &server.cfg.hostname);
        Ok((placements, decision.headers, stripped))
    }

    /// The virus scan and the attachment policy on a message an authenticated user
    /// sends (`554 5.7.1` when they refuse, 451 when the scanner is down and
    /// `[filter] on_scanner_failure` says so); otherwise, with `[filter] learn_from_sent`, the message is a
    /// legitimate example for the classifier and its recipients the user's
    /// correspondents (learned in the background, after the reply).
    async fn check_sent(&self, msg: &Message, sender: AccountId) -> Result<(), DeliveryOutcome> {
        let cfg = &self.server.cfg.filter;
        let data = msg.data.clone();
        let inspected = tokio::task::spawn_blocking(move || {
            yubin_filter::content::inspect(
                &data,
                &yubin_filter::content::Envelope {
                    mail_from: "",
                    local_domains: &[],
                    now: 0,
                },
            )
        })
        .await
        .unwrap_or_default();
        match self.server.analyzer.scan_if(&msg.data, &inspected).await {
            Some(yubin_filter::clamd::Scan::Infected(name)) => {
                info!(
                    from = msg.mail_from,
                    virus = name,
                    "submission refused: virus"
                );
                return Err(DeliveryOutcome::PolicyReject {
                    code: 554,
                    text: format!("Virus found: {name}"),
                });
            }
            Some(yubin_filter::clamd::Scan::Unavailable(why))
                if cfg.on_scanner_failure != "accept" =>
            {
                info!(
                    from = msg.mail_from,
                    why, "submission deferred: virus scanner unavailable"
                );
                return Err(DeliveryOutcome::PolicyTempFail(
                    "The virus scanner is unavailable, try again later".into(),
                ));
            }
            _ => {}
        }
        if let Some(what) = inspected.blocked {
            info!(from = msg.mail_from, what, "submission refused: attachment");
            return Err(DeliveryOutcome::PolicyReject {
                code: 554,
                text: format!("Attachment refused: {what}"),
            });
        }
        if cfg.learn_from_sent {
            let store = self.server.store.clone();
            let rcpts: Vec<String> = msg.rcpt_to.iter().map(|r| r.to_lowercase()).collect();
            let features = inspected.features;
            let classifier = cfg.classifier;
            tokio::task::spawn_blocking(move || {
                if let Err(e) = store.correspondents_add(sender, &rcpts) {
                    warn!(error = %e, "could not remember correspondents");
                }
                if classifier && let Err(e) = store.training_add(Some(sender), false, &features) {
                    warn!(error = %e, "could not record sent mail for the classifier");
                }
            });
        }
        Ok(())
    }

    /// Submission rules (RFC 6409): the sending rate, every From: address owned by the user
    /// (§6.1), and the Date and Message-ID headers a client left out (§8.2, §8.3), returned
    /// as header lines to put before the message.
    async fn check_submission(&self, msg: &Message, me: &str) -> Result<String, DeliveryOutcome> {
        let now = std::time::Instant::now();
        if !self
            .server
            .guard
            .allow_send(me, msg.rcpt_to.len() as u32, now)
        {
            info!(user = me, "submission refused: hourly limit");
            return Err(DeliveryOutcome::TempFail(
                "4.7.1 Sending rate limit reached, try again later".into(),
            ));
        }
        // Bounded (a header of a million fields would be a gigabyte parsed); a header past
        // the bound cannot be checked whole, so it is refused.
        let parsed = match yubin_model::mime::parse_header(&msg.data) {
            Some((_, false)) => {
                info!(user = me, "submission refused: header too large");
                return Err(DeliveryOutcome::Rejected(format!(
                    "Message header too large (at most {} lines, {} bytes)",
                    yubin_model::mime::MAX_HEADER_LINES,
                    yubin_model::mime::MAX_HEADER_BYTES
                )));
            }
            Some((m, true)) => Some(m),
            None => None,
        };
        // RFC 5322 §3.6: exactly one From: field, and Sender: at most once. Every address
        // in them must be the user's (RFC 6409 §6.1); a message without a From: address,
        // or with a second From: that a reader might show instead, is refused. (Bare CR
        // and LF, which could hide a field from this parse, were refused with the DATA.)
        let mut senders: Vec<String> = Vec::new();
        let mut from_fields = 0;
        let mut sender_fields = 0;
        let mut has_date = false;
        let mut has_id = false;
        if let Some(p) = &parsed {
            for h in p
                .parts
                .first()
                .map(|p| p.headers.as_slice())
                .unwrap_or_default()
            {
                let is_from = h.name == mail_parser::HeaderName::From;
                let is_sender = h.name == mail_parser::HeaderName::Sender;
                from_fields += usize::from(is_from);
                sender_fields += usize::from(is_sender);
                if (is_from || is_sender)
                    && let mail_parser::HeaderValue::Address(list) = &h.value
                {
                    senders.extend(
                        list.iter()
                            .map(|a| a.address.as_deref().unwrap_or("").to_owned()),
                    );
                } else if is_from || is_sender {
                    // Not an address list at all: cannot be checked.
                    senders.push(String::new());
                }
            }
            has_date = p.date().is_some();
            has_id = p.message_id().is_some();
        }
        if from_fields != 1 || sender_fields > 1 || senders.is_empty() {
            info!(
                user = me,
                from_fields, sender_fields, "submission refused: not exactly one From:"
            );
            return Err(DeliveryOutcome::Forbidden(
                "Message must have exactly one From: header with your address (RFC 5322 §3.6)"
                    .into(),
            ));
        }
        let store = self.server.store.clone();
        let me_owned = me.to_owned();
        let all_owned = tokio::task::spawn_blocking(move || {
            senders.iter().all(|a| owns(&*store, &me_owned, a))
        })
        .await
        .unwrap_or(false);
        if !all_owned {
            info!(user = me, "submission refused: From: not owned");
            return Err(DeliveryOutcome::Forbidden(
                "From: header is not an address of the authenticated user".into(),
            ));
        }
        let mut added = String::new();
        if !has_date {
            added.push_str(&format!("Date: {}\r\n", trace::rfc5322_date(unix_now())));
        }
        if !has_id {
            added.push_str(&format!(
                "Message-ID: <{}@{}>\r\n",
                new_id(),
                self.server.cfg.hostname
            ));
        }
        Ok(added)
    }
}

/// Sender ownership for submission (RFC 6409 §6.1): the account's own address (subaddresses
/// included) or an alias that delivers to it. A catch-all does not make every address
/// of the domain the user's.
fn owns(store: &dyn yubin_store::Store, me: &str, addr: &str) -> bool {
    let Ok(a) = yubin_store::normalize_address(addr) else {
        return false;
    };
    if a.to_string() == me {
        return true;
    }
    // `alice+boss@` is alice's subaddress only if no account of that name exists.
    if store.account(&a.to_string()).is_ok() {
        return false;
    }
    let base = a.local.split_once('+').map_or(a.local.as_str(), |(b, _)| b);
    let plain = format!("{base}@{}", a.domain);
    if plain == me {
        return true;
    }
    store.list_aliases().is_ok_and(|aliases| {
        aliases.iter().any(|al| {
            (al.alias == plain || al.alias == a.to_string()) && al.targets.iter().any(|t| t == me)
        })
    })
}

fn outcome_word(o: &yubin_filter::Outcome) -> &'static str {
    match o {
        yubin_filter::Outcome::Inbox => "inbox",
        yubin_filter::Outcome::Junk => "junk",
        yubin_filter::Outcome::Quarantine(_) => "quarantine",
        yubin_filter::Outcome::Reject { .. } => "reject",
        yubin_filter::Outcome::TempFail(_) => "tempfail",
    }
}
