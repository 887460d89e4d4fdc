//! Drives a `yubin_smtp::Session` over a TCP connection: reads, writes, TLS upgrade,
//! recipient lookups and durable delivery through the store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};
use yubin_smtp::{DeliveryOutcome, Event, Message, RcptVerdict, Session, trace};
use yubin_store::{AccountId, Flags, Resolved};

use crate::stream::Stream;
use crate::{Server, new_id, unix_now};

/// How long a write to a client that does not read may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn handle(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let cfg = yubin_smtp::Config {
        hostname: server.cfg.hostname.clone(),
        max_message_size: server.cfg.smtp.max_message_size,
        max_recipients: server.cfg.smtp.max_recipients,
        max_errors: server.cfg.smtp.max_errors,
        max_line_length: server.cfg.smtp.max_line_length,
        starttls: server.tls.is_some(),
    };
    let mut conn = Conn {
        server,
        stream: Stream::Plain(tcp),
        peer,
        out: Vec::with_capacity(1024),
        accepted: HashMap::new(),
    };
    match conn.run(Session::new(cfg)).await {
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
}

impl Conn {
    async fn run(&mut self, mut session: Session) -> std::io::Result<()> {
        let idle = Duration::from_secs(self.server.cfg.smtp.idle_timeout);
        let mut buf = vec![0u8; 64 * 1024];
        let mut shutdown = self.server.shutdown.clone();
        let mut draining = false;
        loop {
            match session.poll() {
                Event::Reply(r) => {
                    if r.is_error() {
                        debug!(reply = %r.text(), code = r.code, "error reply");
                    }
                    r.write_to(&mut self.out)
                }
                Event::CheckRecipient(addr) => {
                    let v = self.check_recipient(&addr).await;
                    session.rcpt_verdict(v);
                }
                Event::Deliver(msg) => {
                    // Tell the client nothing until the message is durable.
                    self.flush().await?;
                    let outcome = self.deliver(msg).await;
                    session.delivery_result(outcome);
                }
                Event::StartTls => {
                    self.flush().await?;
                    self.start_tls().await?;
                    session.tls_started();
                    self.accepted.clear();
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
                    let read = tokio::time::timeout(idle, self.stream.read(&mut buf));
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
                            Ok(Ok(n)) => session.push(&buf[..n]),
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
        let write = async {
            self.stream.write_all(&out).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "write timeout",
                ));
            }
        }
        self.out = out;
        self.out.clear();
        Ok(())
    }

    async fn start_tls(&mut self) -> std::io::Result<()> {
        let Some(acceptor) = self.server.tls.clone() else {
            return Err(std::io::Error::other("STARTTLS without TLS configuration"));
        };
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Upgrading) else {
            return Err(std::io::Error::other("STARTTLS on a TLS stream"));
        };
        let tls = tokio::time::timeout(WRITE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timeout")
            })?
            .inspect_err(|e| info!(error = %e, "TLS handshake failed"))?;
        self.stream = Stream::Tls(Box::new(tls));
        debug!(tls = ?self.stream.tls_description(), "TLS started");
        Ok(())
    }

    async fn check_recipient(&mut self, addr: &str) -> RcptVerdict {
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
            // An account at its storage limit takes no more mail for now.
            let mut full = false;
            if let Resolved::Accounts(ids) = &resolved {
                for &id in ids {
                    if let (used, Some(limit)) = store.usage(id)? {
                        full |= used >= limit;
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
        let mut accounts: Vec<AccountId> = Vec::new();
        for r in &msg.rcpt_to {
            if let Some(ids) = self.accepted.get(&r.to_lowercase()) {
                accounts.extend(ids);
            }
        }
        let id = new_id();
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
        let result = tokio::task::spawn_blocking(move || {
            let blob = store.stage(&[return_path.as_bytes(), received.as_bytes(), &msg.data])?;
            store.deliver(blob, &accounts, "INBOX", &Flags::default(), now)
        })
        .await;
        match result {
            Ok(Ok(copies)) => {
                info!(id, from, rcpts, size, copies = copies.len(), "delivered");
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
