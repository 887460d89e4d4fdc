//! IMAP: the store as an IMAP backend, and the driver that runs a `yubin_imap::Session`
//! over a TCP or TLS connection, with IDLE woken by store change notifications.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};
use yubin_imap::{BResult, Backend, BackendError, Event, Session};
use yubin_store::{
    AccountId, Changes, Copied, Error as StoreError, FlagOp, Flags, FlagsUpdate, Mailbox,
    MailboxId, MessageMeta, SortInfo, Store, TextField,
};

use crate::Server;
use crate::stream::Stream;

/// The store seen by one IMAP session: every call acts on the logged-in account.
pub struct StoreBackend {
    store: Arc<dyn Store>,
    guard: Arc<crate::guard::Guard>,
    account: Option<AccountId>,
    /// The logged-in account's address.
    address: Option<String>,
    peer: SocketAddr,
    /// Mailbox ids known to belong to the account (reloaded on a miss).
    owned: std::collections::HashSet<MailboxId>,
    /// Sessions per account, when limited; the slot is held while logged in.
    per_account: Option<Arc<crate::limits::AccountSessions>>,
    slot: Option<crate::limits::AccountSlot>,
    /// SCRAM: the account found at the lookup, let in if the proof checks out.
    scram_account: Option<yubin_store::Account>,
}

impl StoreBackend {
    /// The account logged in, if any.
    pub fn account_id(&self) -> Option<AccountId> {
        self.account
    }

    pub fn new(store: Arc<dyn Store>, guard: Arc<crate::guard::Guard>, peer: SocketAddr) -> Self {
        StoreBackend {
            store,
            guard,
            account: None,
            address: None,
            peer,
            owned: Default::default(),
            per_account: None,
            slot: None,
            scram_account: None,
        }
    }

    /// Acting for an account that authenticated elsewhere (SMTP submission's BURL).
    pub fn for_account(mut self, id: AccountId, address: &str) -> Self {
        self.account = Some(id);
        self.address = Some(address.to_owned());
        self
    }

    /// Refuse a login beyond this many sessions of one account.
    pub fn limit_sessions(mut self, per_account: Arc<crate::limits::AccountSessions>) -> Self {
        self.per_account = Some(per_account);
        self
    }

    /// Logged in as `a` (after a password or a SCRAM proof), within the session limit.
    fn enter(&mut self, a: yubin_store::Account) -> BResult<bool> {
        if let Some(limit) = &self.per_account {
            match limit.acquire(a.id) {
                Some(slot) => self.slot = Some(slot),
                None => {
                    return Err(BackendError::Failed(
                        "too many connections for this account, close some".into(),
                    ));
                }
            }
        }
        self.account = Some(a.id);
        self.address = Some(a.address.clone());
        Ok(true)
    }

    fn account(&self) -> BResult<AccountId> {
        self.account
            .ok_or_else(|| BackendError::Refused("not logged in".into()))
    }

    /// Refuse to add `bytes` beyond the account's limit (RFC 9208 §4.2.1).
    fn check_quota(&self, bytes: u64) -> BResult<()> {
        let (used, limit) = self.store.usage(self.account()?).map_err(err)?;
        match limit {
            Some(l) if used.saturating_add(bytes) > l => Err(BackendError::OverQuota(format!(
                "Quota exceeded: {used} of {l} bytes used"
            ))),
            _ => Ok(()),
        }
    }

    /// Every mailbox id a session uses came from this account's own listing, but check
    /// anyway: a forged id must never reach another account's mail.
    fn own(&mut self, mailbox: MailboxId) -> BResult<()> {
        let account = self.account()?;
        if !self.owned.contains(&mailbox) {
            self.owned = self
                .store
                .list_mailboxes(account)
                .map_err(err)?
                .iter()
                .map(|m| m.id)
                .collect();
        }
        if self.owned.contains(&mailbox) {
            Ok(())
        } else {
            Err(BackendError::NotFound("no such mailbox".into()))
        }
    }
}

fn err(e: StoreError) -> BackendError {
    match e {
        StoreError::NoSuchMailbox(m) => BackendError::NotFound(format!("no mailbox {m}")),
        StoreError::NoSuchMessage(u) => BackendError::NotFound(format!("no message {u}")),
        StoreError::MailboxExists(m) => BackendError::Exists(format!("mailbox {m} exists")),
        e @ StoreError::Limit(_) => BackendError::Limit(e.to_string()),
        e @ (StoreError::InvalidMailboxName(..)
        | StoreError::MailboxHasChildren(_)
        | StoreError::InboxNotDeletable) => BackendError::Refused(e.to_string()),
        e => {
            warn!(error = %e, "store error");
            BackendError::Failed("internal error, try again later".into())
        }
    }
}

impl Backend for StoreBackend {
    fn login(&mut self, user: &str, password: &str) -> BResult<bool> {
        use crate::guard::{LoginError, login};
        match login(
            &*self.store,
            &self.guard,
            self.peer.ip(),
            user,
            password,
            "imap",
        ) {
            Ok(Some(a)) => self.enter(a),
            Ok(None) => Ok(false),
            // RFC 5530 [UNAVAILABLE]: a temporary failure, try later.
            Err(LoginError::Throttled) => Err(BackendError::Failed(
                "too many failed logins, try again later".into(),
            )),
            Err(LoginError::Store(e)) => Err(err(e)),
        }
    }

    fn scram_lookup(&mut self, user: &str) -> BResult<Option<yubin_sasl::ScramCredentials>> {
        match crate::guard::scram_lookup(&*self.store, &self.guard, user) {
            Ok(Some((a, c))) => {
                self.scram_account = Some(a);
                Ok(Some(c))
            }
            Ok(None) => Ok(None),
            Err(crate::guard::LoginError::Store(e)) => Err(err(e)),
            Err(crate::guard::LoginError::Throttled) => Ok(None),
        }
    }

    fn scram_verified(&mut self, user: &str, ok: bool) -> BResult<bool> {
        use crate::guard::{LoginError, scram_verified};
        let account = self.scram_account.take();
        match scram_verified(&self.guard, self.peer.ip(), user, account, ok, "imap") {
            Ok(Some(a)) => self.enter(a),
            Ok(None) => Ok(false),
            Err(LoginError::Throttled) => Err(BackendError::Failed(
                "too many failed logins, try again later".into(),
            )),
            Err(LoginError::Store(e)) => Err(err(e)),
        }
    }

    fn sasl_secret(&self) -> [u8; 32] {
        self.guard.sasl_secret()
    }

    fn scram_nonce(&self) -> String {
        crate::guard::scram_nonce()
    }

    fn user(&self) -> Option<String> {
        self.address.clone()
    }

    fn list(&mut self) -> BResult<Vec<Mailbox>> {
        self.store.list_mailboxes(self.account()?).map_err(err)
    }

    fn mailbox(&mut self, name: &str) -> BResult<Mailbox> {
        self.store.mailbox(self.account()?, name).map_err(err)
    }

    fn select(&mut self, name: &str) -> BResult<yubin_store::Selection> {
        let s = self.store.select(self.account()?, name).map_err(err)?;
        // Its mailbox is ours (the store looked it up by our account).
        self.owned.insert(s.mailbox.id);
        Ok(s)
    }

    fn select_cached(&mut self, name: &str) -> BResult<Option<yubin_store::Selection>> {
        let s = self
            .store
            .select_cached(self.account()?, name)
            .map_err(err)?;
        if let Some(s) = &s {
            self.owned.insert(s.mailbox.id);
        }
        Ok(s)
    }

    fn recent(&mut self, mailbox: MailboxId, uid_next: u32, claim: bool) -> BResult<u32> {
        self.own(mailbox)?;
        self.store.recent(mailbox, uid_next, claim).map_err(err)
    }

    fn create(&mut self, name: &str) -> BResult<()> {
        self.store
            .create_mailbox(self.account()?, name)
            .map(|_| ())
            .map_err(err)
    }

    fn create_special(&mut self, name: &str, special_use: &str) -> BResult<()> {
        self.store
            .create_special_mailbox(self.account()?, name, Some(special_use))
            .map(|_| ())
            .map_err(err)
    }

    fn delete(&mut self, name: &str) -> BResult<()> {
        self.store
            .delete_mailbox(self.account()?, name)
            .map_err(err)
    }

    fn rename(&mut self, from: &str, to: &str) -> BResult<()> {
        self.store
            .rename_mailbox(self.account()?, from, to)
            .map_err(err)
    }

    fn subscribe(&mut self, name: &str, subscribed: bool) -> BResult<()> {
        self.store
            .subscribe(self.account()?, name, subscribed)
            .map_err(err)
    }

    fn metadata(&mut self, mailbox: Option<&str>) -> BResult<Vec<(String, Vec<u8>)>> {
        let account = self.account()?;
        let id = match mailbox {
            Some(name) => Some(self.store.mailbox(account, name).map_err(err)?.id),
            None => None,
        };
        self.store.metadata(account, id).map_err(err)
    }

    fn urlauth_sign(&mut self, mailbox: &str, rump: &[u8]) -> BResult<String> {
        let account = self.account()?;
        let id = self.store.mailbox(account, mailbox).map_err(err)?.id;
        let stored = self
            .store
            .metadata(account, Some(id))
            .map_err(err)?
            .into_iter()
            .find(|(k, _)| k == yubin_imap::URLAUTH_KEY_ENTRY)
            .map(|(_, v)| v);
        let key = match stored {
            Some(k) if k.len() >= 32 => k,
            _ => {
                let mut k = vec![0u8; 32];
                getrandom::fill(&mut k)
                    .map_err(|e| BackendError::Failed(format!("no randomness: {e}")))?;
                let entry = [(yubin_imap::URLAUTH_KEY_ENTRY.to_owned(), Some(k.clone()))];
                self.store
                    .set_metadata(account, Some(id), &entry)
                    .map_err(err)?;
                k
            }
        };
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key), rump);
        Ok(tag.as_ref().iter().map(|b| format!("{b:02x}")).collect())
    }

    fn urlauth_reset(&mut self, mailbox: Option<&str>) -> BResult<()> {
        let account = self.account()?;
        let ids: Vec<MailboxId> = match mailbox {
            Some(name) => vec![self.store.mailbox(account, name).map_err(err)?.id],
            None => self
                .store
                .list_mailboxes(account)
                .map_err(err)?
                .into_iter()
                .map(|m| m.id)
                .collect(),
        };
        // Removing the key is enough: the next signature makes a new one.
        let entry = [(yubin_imap::URLAUTH_KEY_ENTRY.to_owned(), None)];
        for id in ids {
            self.store
                .set_metadata(account, Some(id), &entry)
                .map_err(err)?;
        }
        Ok(())
    }

    fn set_metadata(
        &mut self,
        mailbox: Option<&str>,
        entries: &[(String, Option<Vec<u8>>)],
    ) -> BResult<()> {
        let account = self.account()?;
        let id = match mailbox {
            Some(name) => Some(self.store.mailbox(account, name).map_err(err)?.id),
            None => None,
        };
        self.store.set_metadata(account, id, entries).map_err(err)
    }

    fn object_ids(&mut self, mailbox: MailboxId) -> BResult<Vec<(u32, i64, String)>> {
        self.own(mailbox)?;
        self.store.object_ids(mailbox).map_err(err)
    }

    fn subscriptions(&mut self) -> BResult<Vec<String>> {
        self.store.subscriptions(self.account()?).map_err(err)
    }

    fn messages(&mut self, mailbox: MailboxId) -> BResult<std::sync::Arc<Vec<MessageMeta>>> {
        self.own(mailbox)?;
        self.store.messages(mailbox).map_err(err)
    }

    fn changes(&mut self, mailbox: MailboxId, since: u64) -> BResult<Changes> {
        self.own(mailbox)?;
        self.store.changes(mailbox, since).map_err(err)
    }

    fn read(&mut self, mailbox: MailboxId, uid: u32) -> BResult<Vec<u8>> {
        self.own(mailbox)?;
        self.store.read(mailbox, uid).map_err(err)
    }

    fn read_many(&mut self, mailbox: MailboxId, uids: &[u32]) -> Vec<BResult<Vec<u8>>> {
        if let Err(e) = self.own(mailbox) {
            return uids.iter().map(|_| Err(e.clone())).collect();
        }
        self.store
            .read_many(mailbox, uids)
            .into_iter()
            .map(|r| r.map_err(err))
            .collect()
    }

    fn store(
        &mut self,
        mailbox: MailboxId,
        uids: &[u32],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: Option<u64>,
    ) -> BResult<FlagsUpdate> {
        self.own(mailbox)?;
        self.store
            .store_flags(mailbox, uids, op, flags, unchanged_since)
            .map_err(err)
    }

    fn expunge(&mut self, mailbox: MailboxId, uids: Option<&[u32]>) -> BResult<Vec<u32>> {
        self.own(mailbox)?;
        self.store.expunge(mailbox, uids).map_err(err)
    }

    fn copy(
        &mut self,
        from: MailboxId,
        uids: &[u32],
        to: MailboxId,
        remove: bool,
    ) -> BResult<Copied> {
        self.own(from)?;
        self.own(to)?;
        if !remove {
            let sizes: u64 = self
                .store
                .messages(from)
                .map_err(err)?
                .iter()
                .filter(|m| uids.contains(&m.uid))
                .map(|m| m.size)
                .sum();
            self.check_quota(sizes)?;
        }
        self.store.copy(from, uids, to, remove).map_err(err)
    }

    fn search_text(
        &mut self,
        mailbox: MailboxId,
        field: TextField,
        needle: &str,
    ) -> BResult<Vec<u32>> {
        self.own(mailbox)?;
        self.store.search_text(mailbox, field, needle).map_err(err)
    }

    fn sort_info(&mut self, mailbox: MailboxId) -> BResult<Vec<SortInfo>> {
        self.own(mailbox)?;
        self.store.sort_info(mailbox).map_err(err)
    }

    fn quota(&mut self) -> BResult<(u64, Option<u64>)> {
        self.store.usage(self.account()?).map_err(err)
    }

    fn append_many(
        &mut self,
        mailbox: &str,
        messages: &[(Flags, i64, &[u8])],
    ) -> BResult<(u32, Vec<u32>)> {
        let account = self.account()?;
        let total: u64 = messages.iter().map(|m| m.2.len() as u64).sum();
        self.check_quota(total)?;
        self.store.mailbox(account, mailbox).map_err(err)?;
        let mut staged = Vec::with_capacity(messages.len());
        for (flags, date, body) in messages {
            staged.push((
                self.store.stage(&[body]).map_err(err)?,
                flags.clone(),
                *date,
            ));
        }
        let d = self
            .store
            .deliver_many(staged, account, mailbox)
            .map_err(err)?;
        let uidvalidity = d
            .first()
            .map(|d| d.uidvalidity)
            .ok_or_else(|| BackendError::Failed("append stored nothing".into()))?;
        Ok((uidvalidity, d.iter().map(|d| d.uid).collect()))
    }

    fn append(
        &mut self,
        mailbox: &str,
        flags: &Flags,
        internal_date: i64,
        message: &[u8],
    ) -> BResult<(u32, u32)> {
        let account = self.account()?;
        self.check_quota(message.len() as u64)?;
        // Check first, so a missing mailbox does not cost a body write.
        self.store.mailbox(account, mailbox).map_err(err)?;
        let blob = self.store.stage(&[message]).map_err(err)?;
        let d = self
            .store
            .deliver(blob, &[account], mailbox, flags, internal_date)
            .map_err(err)?;
        let d = d
            .first()
            .ok_or_else(|| BackendError::Failed("append stored nothing".into()))?;
        Ok((d.uidvalidity, d.uid))
    }
}

/// Serve one IMAP connection; `implicit_tls` for port 993.
pub async fn handle(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, implicit_tls: bool) {
    let _ = tcp.set_nodelay(true);
    let mut stream = Stream::Plain(tcp);
    if implicit_tls {
        match crate::stream::upgrade(&server, stream).await {
            Ok(s) => stream = s,
            Err(e) => return debug!(error = %e, "TLS handshake failed"),
        }
    }
    let cfg = yubin_imap::Config {
        hostname: server.cfg.hostname.clone(),
        starttls: server.tls().is_some() && !implicit_tls,
        plaintext_auth: server.cfg.imap.plaintext_auth || server.trusted_path(peer),
        append_limit: server.cfg.imap.append_limit,
    };
    let session = Session::new(
        cfg,
        StoreBackend::new(server.store.clone(), server.guard.clone(), peer)
            .limit_sessions(server.imap_accounts.clone()),
        implicit_tls,
    );
    match run(&server, stream, session).await {
        Ok(()) => debug!("session closed"),
        Err(e) => debug!(error = %e, "session ended"),
    }
}

/// COMPRESS=DEFLATE state (RFC 4978): raw DEFLATE, each write flushed with a sync flush.
struct Deflate {
    inflate: flate2::Decompress,
    deflate: flate2::Compress,
}

/// Inflated bytes per read are capped: a few bytes must not expand into gigabytes.
const MAX_INFLATE: usize = 64 << 20;

impl Deflate {
    fn new() -> Self {
        Deflate {
            inflate: flate2::Decompress::new(false),
            deflate: flate2::Compress::new(flate2::Compression::fast(), false),
        }
    }

    fn inflate(&mut self, input: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        let mut pos = 0;
        loop {
            if out.len() > MAX_INFLATE {
                return Err(std::io::Error::other("compressed input expands too much"));
            }
            out.reserve(16 * 1024);
            let before = self.inflate.total_in();
            let status = self
                .inflate
                .decompress_vec(&input[pos..], &mut out, flate2::FlushDecompress::Sync)
                .map_err(std::io::Error::other)?;
            pos += (self.inflate.total_in() - before) as usize;
            if status == flate2::Status::StreamEnd
                || (pos >= input.len() && out.len() < out.capacity())
            {
                return Ok(out);
            }
        }
    }

    fn deflate(&mut self, input: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let mut pos = 0;
        loop {
            out.reserve(input.len() / 2 + 1024);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&input[pos..], &mut out, flate2::FlushCompress::Sync)
                .map_err(std::io::Error::other)?;
            pos += (self.deflate.total_in() - before) as usize;
            if pos >= input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

async fn write_out(stream: &mut Stream, out: &[u8]) -> std::io::Result<()> {
    crate::stream::write_within(stream, out).await
}

async fn run(
    server: &Arc<Server>,
    mut stream: Stream,
    mut session: Session<StoreBackend>,
) -> std::io::Result<()> {
    let idle = Duration::from_secs(server.cfg.imap.idle_timeout);
    let mut changes = server.changes.subscribe();
    let mut epoch = server.account_epoch.clone();
    let mut shutdown = server.shutdown.clone();
    // Made once per connection, not per command: each would register with the shared
    // shutdown watch (a lock all connections take) and the timer wheel, then leave again.
    let shutting_down = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::pin!(shutting_down);
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    // Small: thousands of IDLE connections each hold one (large literals take several reads).
    let mut buf = vec![0u8; 16 * 1024];
    let mut deflate: Option<Deflate> = None;
    let login_by = tokio::time::Instant::now() + crate::limits::LOGIN_DEADLINE;
    let mut account = crate::limits::SessionAccount::default();
    // APPEND literals on their way count against the bodies-in-flight budget SMTP uses.
    let mut inflight = crate::limits::InFlight::new(server.inflight.clone());
    let budget = crate::limits::inflight_budget(
        server
            .cfg
            .smtp
            .max_message_size
            .max(server.cfg.imap.append_limit as usize),
    );
    loop {
        // RFC 9051 §7.1.5: BYE when the server ends the session; here because the account
        // was removed, disabled or given a new password since this session logged in.
        if !account.still_valid(
            &*server.store,
            *epoch.borrow(),
            session.backend().account_id(),
        ) {
            let bye = b"* BYE [UNAVAILABLE] Account no longer available\r\n";
            match deflate.as_mut() {
                Some(d) => write_out(&mut stream, &d.deflate(bye)?).await?,
                None => write_out(&mut stream, bye).await?,
            }
            let _ = stream.shutdown().await;
            return Ok(());
        }
        // Cheap commands (NOOP, a re-SELECT, ...) run here; anything that may block on the
        // store (writes and their fsync, bodies, searches, password hashes) is handed off
        // the async worker. The hand-off costs a thread wakeup and a migration, which was
        // a third of a NOOP's CPU and 5-12 us of its round trip (bench/README.md).
        let mut event = session.poll_light();
        if event == Event::Blocking {
            event = tokio::task::block_in_place(|| session.poll());
        }
        // Right after a LOGIN too: the session's account is recorded as it is now.
        let valid = account.still_valid(
            &*server.store,
            *epoch.borrow(),
            session.backend().account_id(),
        );
        inflight.set(session.held_bytes());
        let out = session.take_output();
        match deflate.as_mut() {
            Some(d) if !out.is_empty() => write_out(&mut stream, &d.deflate(&out)?).await?,
            _ => write_out(&mut stream, &out).await?,
        }
        if !valid {
            continue; // the check at the top ends the session
        }
        match event {
            Event::Close => {
                let _ = stream.shutdown().await;
                return Ok(());
            }
            // The output is out (above); let the session go on.
            Event::Flush | Event::Blocking => {}
            Event::Compress => {
                deflate = Some(Deflate::new());
                session.compression_started();
            }
            Event::StartTls => {
                stream = crate::stream::upgrade(server, stream).await?;
                session.tls_started();
            }
            Event::NeedInput | Event::Idle => {
                let idling = event == Event::Idle;
                let selected = session.selected_mailbox();
                // A deadline per command, not per read: a client trickling bytes cannot
                // stretch one command. Later than before: tokio moves the deadline without
                // touching the wheel. Before login, LOGIN_DEADLINE from the connect.
                if !session.partial_input() {
                    let now = tokio::time::Instant::now();
                    let mut until = now + idle;
                    if !session.is_authenticated() {
                        until = until.min(login_by);
                        // Under stress, strangers get 10 s per command.
                        if server.imap_limits.stressed() {
                            until = until.min(now + crate::limits::STRESSED_DEADLINE);
                        }
                    }
                    deadline.as_mut().reset(until);
                }
                tokio::select! {
                    r = stream.read(&mut buf) => match r {
                        Ok(0) => return Ok(()),
                        Ok(n) => {
                            // A full buffer means bulk data (an APPEND literal): acknowledge
                            // at once, or a Nagle-ing client holds the literal's last
                            // segment for our delayed ACK (see smtp.rs). Commands do not
                            // pay the extra system call.
                            if n == buf.len() {
                                stream.quickack();
                            }
                            match deflate.as_mut() {
                                Some(d) => session.push(&d.inflate(&buf[..n])?),
                                None => session.push(&buf[..n]),
                            }
                            if inflight.set(session.held_bytes()) > budget {
                                warn!("bodies in flight over budget; session ended");
                                let bye = b"* BYE [UNAVAILABLE] Server too busy, try again later\r\n";
                                match deflate.as_mut() {
                                    Some(d) => write_out(&mut stream, &d.deflate(bye)?).await?,
                                    None => write_out(&mut stream, bye).await?,
                                }
                                return Ok(());
                            }
                        }
                        Err(e) => return Err(e),
                    },
                    () = &mut deadline => session.timeout(),
                    // Some account changed: the check at the top ends this session if
                    // it was this one's.
                    Ok(()) = epoch.changed(), if idling => {}
                    // IDLE, and RFC 5465 NOTIFY between commands, hear of changes.
                    m = changes.recv(), if idling || session.notify_active() => {
                        // Lagged: some notifications were lost, so look anyway.
                        let relevant = match m {
                            Ok(m) => (idling && Some(m) == selected) || session.notify_wants(m),
                            Err(_) => true,
                        };
                        if relevant {
                            tokio::task::block_in_place(|| {
                                session.changed();
                                session.notify_changed();
                            });
                        }
                    }
                    () = &mut shutting_down => {
                        let _ = stream.write_all(b"* BYE Server shutting down\r\n").await;
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The robustness property shared by the IMAP fuzz target and the seeded random test.
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// A store with `bob@example.test` (password `secret`) and a few messages.
    pub fn sample_store(dir: &std::path::Path) -> Arc<dyn Store> {
        use yubin_store::{Directory, MailStore, SqliteStore};
        let s = SqliteStore::create(dir).expect("create store");
        s.add_domain("example.test").expect("domain");
        let bob = s
            .add_account("bob@example.test", "secret", false)
            .expect("account");
        let msgs: [&[u8]; 3] = [
            b"From: a@b.c\r\nSubject: one\r\n\r\nbody one\r\n",
            b"Content-Type: multipart/mixed; boundary=X\r\nSubject: two\r\n\r\n--X\r\nContent-Type: text/plain\r\n\r\npart\r\n--X\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--X--\r\n",
            b"\r\n",
        ];
        for m in msgs {
            let blob = s.stage(&[m]).expect("stage");
            s.deliver(blob, &[bob.id], "INBOX", &Flags::default(), 1_800_000_000)
                .expect("deliver");
        }
        Arc::new(s)
    }

    /// Feed `input` (after an optional login and SELECT) in chunks of `chunk()` bytes and
    /// answer every event; panics if the session panics, stalls, or grows its output
    /// without bound.
    pub fn exercise(
        store: Arc<dyn Store>,
        login: bool,
        input: &[u8],
        mut chunk: impl FnMut() -> usize,
    ) {
        let cfg = yubin_imap::Config {
            hostname: "fuzz".into(),
            starttls: true,
            plaintext_auth: true,
            append_limit: 4096,
        };
        let peer = "127.0.0.1:1".parse().expect("addr");
        let guard = Arc::new(crate::guard::Guard::new(crate::guard::Limits {
            max_failures_per_ip: u32::MAX,
            max_failures_per_account: u32::MAX,
            block_for: Duration::ZERO,
            messages_per_hour: u32::MAX,
            recipients_per_hour: u32::MAX,
            default_domain: None,
        }));
        let mut s = Session::new(cfg, StoreBackend::new(store, guard, peer), false);
        if login {
            s.push(b"l1 LOGIN bob@example.test secret\r\nl2 SELECT INBOX\r\n");
        }
        let mut rest = input;
        loop {
            let mut steps = 0;
            loop {
                steps += 1;
                assert!(steps < 10_000, "the session makes no progress");
                // As the server drives it: cheap steps first, the rest in `poll`.
                let ev = match s.poll_light() {
                    Event::Blocking => s.poll(),
                    ev => ev,
                };
                let out = s.take_output();
                assert!(out.len() < 64 << 20, "unbounded output");
                match ev {
                    Event::Close => return,
                    Event::StartTls => s.tls_started(),
                    Event::Compress => s.compression_started(),
                    Event::Flush | Event::Blocking => {}
                    Event::NeedInput | Event::Idle => break,
                }
            }
            if rest.is_empty() {
                return;
            }
            let n = chunk().clamp(1, rest.len());
            let (head, tail) = rest.split_at(n);
            rest = tail;
            s.push(head);
            if rest.is_empty() {
                s.changed();
            }
        }
    }
}
