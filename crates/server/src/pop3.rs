//! POP3: an account's INBOX as a `yubin_pop3::Backend`, and the connection driver.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};
use yubin_pop3::{BResult, Backend, BackendError, Entry, Event, Session};
use yubin_store::{AccountId, FlagOp, Flags, Store, flags};

use crate::Server;
use crate::stream::Stream;

/// Accounts with an open POP3 session (RFC 1939 §8: one maildrop lock each).
pub type Locks = Arc<Mutex<HashSet<AccountId>>>;

pub struct StoreMaildrop {
    store: Arc<dyn Store>,
    guard: Arc<crate::guard::Guard>,
    locks: Locks,
    peer: SocketAddr,
    account: Option<AccountId>,
    locked: bool,
    inbox: Option<i64>,
    /// SCRAM: the account found at the lookup, let in if the proof checks out.
    scram_account: Option<yubin_store::Account>,
}

impl StoreMaildrop {
    /// The account logged in, if any.
    pub fn account_id(&self) -> Option<AccountId> {
        self.account
    }

    pub fn new(
        store: Arc<dyn Store>,
        guard: Arc<crate::guard::Guard>,
        locks: Locks,
        peer: SocketAddr,
    ) -> Self {
        StoreMaildrop {
            store,
            guard,
            locks,
            peer,
            account: None,
            locked: false,
            inbox: None,
            scram_account: None,
        }
    }

    fn inbox(&self) -> BResult<i64> {
        self.inbox
            .ok_or_else(|| BackendError::Permanent("no maildrop".into()))
    }
}

fn temp(e: yubin_store::Error) -> BackendError {
    warn!(error = %e, "store error");
    BackendError::Temporary("internal error, try again later".into())
}

impl Drop for StoreMaildrop {
    fn drop(&mut self) {
        if self.locked
            && let Some(a) = self.account
        {
            self.locks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&a);
        }
    }
}

impl Backend for StoreMaildrop {
    fn login(&mut self, user: &str, password: &str) -> BResult<bool> {
        use crate::guard::{LoginError, login};
        match login(
            &*self.store,
            &self.guard,
            self.peer.ip(),
            user,
            password,
            "pop3",
        ) {
            Ok(Some(a)) => {
                self.account = Some(a.id);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(LoginError::Throttled) => Err(BackendError::Temporary(
                "too many failed logins, try again later".into(),
            )),
            Err(LoginError::Store(e)) => Err(temp(e)),
        }
    }

    fn scram_lookup(&mut self, user: &str) -> BResult<Option<yubin_sasl::ScramCredentials>> {
        use crate::guard::LoginError;
        match crate::guard::scram_lookup(&*self.store, &self.guard, user) {
            Ok(Some((a, c))) => {
                self.scram_account = Some(a);
                Ok(Some(c))
            }
            Ok(None) | Err(LoginError::Throttled) => Ok(None),
            Err(LoginError::Store(e)) => Err(temp(e)),
        }
    }

    fn scram_verified(&mut self, user: &str, ok: bool) -> BResult<bool> {
        use crate::guard::{LoginError, scram_verified};
        let account = self.scram_account.take();
        match scram_verified(&self.guard, self.peer.ip(), user, account, ok, "pop3") {
            Ok(Some(a)) => {
                self.account = Some(a.id);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(LoginError::Throttled) => Err(BackendError::Temporary(
                "too many failed logins, try again later".into(),
            )),
            Err(LoginError::Store(e)) => Err(temp(e)),
        }
    }

    fn sasl_secret(&self) -> [u8; 32] {
        self.guard.sasl_secret()
    }

    fn scram_nonce(&self) -> String {
        crate::guard::scram_nonce()
    }

    fn lock(&mut self) -> BResult<bool> {
        let Some(a) = self.account else {
            return Ok(false);
        };
        self.locked = self
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(a);
        Ok(self.locked)
    }

    fn maildrop(&mut self) -> BResult<(u32, Vec<Entry>)> {
        let account = self
            .account
            .ok_or_else(|| BackendError::Permanent("not logged in".into()))?;
        let inbox = self.store.mailbox(account, "INBOX").map_err(temp)?;
        self.inbox = Some(inbox.id);
        let entries = self
            .store
            .pop3_sizes(inbox.id)
            .map_err(temp)?
            .into_iter()
            .map(|(uid, size)| Entry { uid, size })
            .collect();
        Ok((inbox.uidvalidity, entries))
    }

    fn read(&mut self, uid: u32) -> BResult<Vec<u8>> {
        match self.store.read(self.inbox()?, uid) {
            Ok(r) => Ok(r),
            // Expunged over IMAP while this session held the maildrop.
            Err(yubin_store::Error::NoSuchMessage(_)) => Err(BackendError::Permanent(
                "message was deleted by another session".into(),
            )),
            Err(e) => Err(temp(e)),
        }
    }

    fn delete(&mut self, uids: &[u32]) -> BResult<()> {
        let inbox = self.inbox()?;
        // Mark and expunge exactly these: IMAP sessions see an ordinary EXPUNGE.
        self.store
            .store_flags(
                inbox,
                uids,
                FlagOp::Add,
                &Flags::system(flags::DELETED),
                None,
            )
            .map_err(temp)?;
        self.store.expunge(inbox, Some(uids)).map_err(temp)?;
        Ok(())
    }
}

pub async fn handle(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, implicit_tls: bool) {
    let _ = tcp.set_nodelay(true);
    let mut stream = Stream::Plain(tcp);
    if implicit_tls {
        match crate::stream::upgrade(&server, stream).await {
            Ok(s) => stream = s,
            Err(e) => return debug!(error = %e, "TLS handshake failed"),
        }
    }
    let cfg = yubin_pop3::Config {
        hostname: server.cfg.hostname.clone(),
        stls: server.tls().is_some() && !implicit_tls,
        plaintext_auth: server.cfg.pop3.plaintext_auth || server.trusted_path(peer),
        max_errors: 20,
    };
    let backend = StoreMaildrop::new(
        server.store.clone(),
        server.guard.clone(),
        server.pop3_locks.clone(),
        peer,
    );
    let session = Session::new(cfg, backend, implicit_tls);
    match run(&server, stream, session).await {
        Ok(()) => debug!("session closed"),
        Err(e) => debug!(error = %e, "session ended"),
    }
}

async fn run(
    server: &Arc<Server>,
    mut stream: Stream,
    mut session: Session<StoreMaildrop>,
) -> std::io::Result<()> {
    let idle = Duration::from_secs(server.cfg.pop3.idle_timeout);
    let mut shutdown = server.shutdown.clone();
    let mut buf = vec![0u8; 16 * 1024];
    let login_by = tokio::time::Instant::now() + crate::limits::LOGIN_DEADLINE;
    let mut deadline = tokio::time::Instant::now() + idle;
    let mut account = crate::limits::SessionAccount::default();
    loop {
        if !account.still_valid(
            &*server.store,
            *server.account_epoch.borrow(),
            session.backend().account_id(),
        ) {
            let _ = stream
                .write_all(b"-ERR [AUTH] account no longer available\r\n")
                .await;
            return Ok(());
        }
        let event = tokio::task::block_in_place(|| session.poll());
        // Right after a login too: the session's account is recorded as it is now.
        if !account.still_valid(
            &*server.store,
            *server.account_epoch.borrow(),
            session.backend().account_id(),
        ) {
            continue; // the check at the top ends the session
        }
        let out = session.take_output();
        crate::stream::write_within(&mut stream, &out).await?;
        match event {
            Event::Close => {
                let _ = stream.shutdown().await;
                return Ok(());
            }
            Event::StartTls => {
                stream = crate::stream::upgrade(server, stream).await?;
                session.tls_started();
            }
            Event::NeedInput => {
                // A deadline per command, not per read: a peer trickling a byte at a time
                // is cut off all the same; and a login within LOGIN_DEADLINE.
                if !session.partial_input() {
                    deadline = tokio::time::Instant::now() + idle;
                }
                let until = if session.is_authenticated() {
                    deadline
                } else if server.pop3_limits.stressed() {
                    // Under stress, strangers get 10 s per command.
                    deadline
                        .min(login_by)
                        .min(tokio::time::Instant::now() + crate::limits::STRESSED_DEADLINE)
                } else {
                    deadline.min(login_by)
                };
                tokio::select! {
                    r = tokio::time::timeout_at(until, stream.read(&mut buf)) => match r {
                        Err(_) => session.timeout(),
                        // Gone without QUIT: nothing is deleted (RFC 1939 §6).
                        Ok(Ok(0)) => return Ok(()),
                        Ok(Ok(n)) => session.push(&buf[..n]),
                        Ok(Err(e)) => return Err(e),
                    },
                    () = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                        let _ = stream.write_all(b"-ERR [SYS/TEMP] server shutting down\r\n").await;
                        return Ok(());
                    }
                }
            }
        }
    }
}
