//! What the IMAP session needs from the rest of the server. The server implements it over
//! the store; tests implement it in memory. Calls may block (the driver runs the session on
//! a thread where blocking is allowed), except the two `Session::poll_light` makes:
//! `changes` when nothing changed and `select_cached` must cost a row read or two.

use yubin_model::{
    Changes, Copied, FlagOp, Flags, FlagsUpdate, Mailbox, MailboxId, MessageMeta, SortInfo,
    TextField,
};

/// A failure the client is told about in a tagged NO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// RFC 5530 `[NONEXISTENT]`.
    NotFound(String),
    /// RFC 5530 `[ALREADYEXISTS]`.
    Exists(String),
    /// The request cannot be carried out as asked (`[CANNOT]`).
    Refused(String),
    /// The account's storage limit would be exceeded (RFC 9208 `[OVERQUOTA]`).
    OverQuota(String),
    /// A per-account bound was reached (RFC 5530 `[LIMIT]`).
    Limit(String),
    /// Something broke on our side (`[SERVERBUG]`/`[UNAVAILABLE]`); the client may retry.
    Failed(String),
}

pub type BResult<T> = Result<T, BackendError>;

/// One logged-in user's mailboxes. `login` binds the backend to an account; every other
/// call acts on that account.
pub trait Backend: Send {
    /// Check a password; `Ok(false)` for unknown users, disabled accounts and wrong passwords.
    fn login(&mut self, user: &str, password: &str) -> BResult<bool>;
    /// SCRAM-SHA-256 (RFC 7677): the user's stored credentials; `None` for an unknown or
    /// disabled account or one without them (the exchange then fails at the proof).
    fn scram_lookup(&mut self, _user: &str) -> BResult<Option<yubin_sasl::ScramCredentials>> {
        Ok(None)
    }
    /// SCRAM: the proof was checked (`ok`); `Ok(true)` logs the user in, as [`Backend::login`].
    fn scram_verified(&mut self, _user: &str, _ok: bool) -> BResult<bool> {
        Ok(false)
    }
    /// The secret for unknown users' SCRAM salts (random per server start).
    fn sasl_secret(&self) -> [u8; 32] {
        [0; 32]
    }
    /// A fresh SCRAM server nonce.
    fn scram_nonce(&self) -> String {
        "nonce".into()
    }
    /// The account logged in (its address), for ACL identifiers and URLAUTH.
    fn user(&self) -> Option<String> {
        None
    }
    fn list(&mut self) -> BResult<Vec<Mailbox>>;
    fn mailbox(&mut self, name: &str) -> BResult<Mailbox>;
    /// The mailbox with its messages, for SELECT/EXAMINE.
    fn select(&mut self, name: &str) -> BResult<yubin_model::Selection>;
    /// `select` answered from what is in memory, without loading the message list;
    /// `Ok(None)` when it cannot be (then `select` is called where it may block).
    fn select_cached(&mut self, name: &str) -> BResult<Option<yubin_model::Selection>> {
        let _ = name;
        Ok(None)
    }
    /// RFC 3501 §2.3.2: the first UID that is `\Recent` for this session; with `claim`,
    /// the UIDs below `uid_next` stop being recent for every other session.
    fn recent(&mut self, mailbox: MailboxId, uid_next: u32, claim: bool) -> BResult<u32> {
        let _ = (mailbox, claim);
        Ok(uid_next)
    }
    fn create(&mut self, name: &str) -> BResult<()>;
    /// CREATE with an RFC 6154 special use (`\Sent`...), CREATE-SPECIAL-USE.
    fn create_special(&mut self, name: &str, special_use: &str) -> BResult<()>;
    fn delete(&mut self, name: &str) -> BResult<()>;
    fn rename(&mut self, from: &str, to: &str) -> BResult<()>;
    fn subscribe(&mut self, name: &str, subscribed: bool) -> BResult<()>;
    /// RFC 5464 annotations of the mailbox called `mailbox`, or the server's (`None`).
    fn metadata(&mut self, mailbox: Option<&str>) -> BResult<Vec<(String, Vec<u8>)>>;
    /// Set (`Some`) or remove (`None`) annotations of a mailbox or the server, at once.
    fn set_metadata(
        &mut self,
        mailbox: Option<&str>,
        entries: &[(String, Option<Vec<u8>>)],
    ) -> BResult<()>;
    /// RFC 4467 §7 INTERNAL: `rump` signed with the mailbox's URLAUTH key (made on first
    /// use), as hex.
    fn urlauth_sign(&mut self, mailbox: &str, rump: &[u8]) -> BResult<String> {
        let _ = (mailbox, rump);
        Err(BackendError::Failed("URLAUTH is not available".into()))
    }
    /// RFC 4467 §6.2 RESETKEY: new keys for one mailbox, or for all (`None`), so the
    /// URLs signed before stop working.
    fn urlauth_reset(&mut self, mailbox: Option<&str>) -> BResult<()> {
        let _ = mailbox;
        Err(BackendError::Failed("URLAUTH is not available".into()))
    }
    /// Every subscribed name, whether or not a mailbox has it (RFC 3501 §6.3.6).
    fn subscriptions(&mut self) -> BResult<Vec<String>>;
    /// Shared with other sessions: copy before changing.
    fn messages(&mut self, mailbox: MailboxId) -> BResult<std::sync::Arc<Vec<MessageMeta>>>;
    fn changes(&mut self, mailbox: MailboxId, since: u64) -> BResult<Changes>;
    fn read(&mut self, mailbox: MailboxId, uid: u32) -> BResult<Vec<u8>>;
    /// Several messages at once (a FETCH of many bodies); one result per UID, in order.
    fn read_many(&mut self, mailbox: MailboxId, uids: &[u32]) -> Vec<BResult<Vec<u8>>> {
        uids.iter().map(|&u| self.read(mailbox, u)).collect()
    }
    fn store(
        &mut self,
        mailbox: MailboxId,
        uids: &[u32],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: Option<u64>,
    ) -> BResult<FlagsUpdate>;
    fn expunge(&mut self, mailbox: MailboxId, uids: Option<&[u32]>) -> BResult<Vec<u32>>;
    fn copy(
        &mut self,
        from: MailboxId,
        uids: &[u32],
        to: MailboxId,
        remove: bool,
    ) -> BResult<Copied>;
    /// UIDs whose `field` contains `needle` (case-insensitive), from an index: SEARCH must
    /// not read every message to answer FROM/TO/CC/BCC/SUBJECT/BODY/TEXT.
    fn search_text(
        &mut self,
        mailbox: MailboxId,
        field: TextField,
        needle: &str,
    ) -> BResult<Vec<u32>>;
    /// SORT/THREAD keys of every message of a mailbox, by UID (from the store, not files).
    fn sort_info(&mut self, mailbox: MailboxId) -> BResult<Vec<SortInfo>>;
    /// RFC 8474: (UID, body id, thread root Message-ID or "") of every message, by UID.
    fn object_ids(&mut self, mailbox: MailboxId) -> BResult<Vec<(u32, i64, String)>>;
    /// Bytes stored and the limit, if any (RFC 9208 STORAGE).
    fn quota(&mut self) -> BResult<(u64, Option<u64>)>;
    /// Store several messages at once, all or none (RFC 3502 MULTIAPPEND); returns
    /// UIDVALIDITY and their UIDs.
    fn append_many(
        &mut self,
        mailbox: &str,
        messages: &[(Flags, i64, &[u8])],
    ) -> BResult<(u32, Vec<u32>)>;
    /// Store a new message; returns (UIDVALIDITY, UID).
    fn append(
        &mut self,
        mailbox: &str,
        flags: &Flags,
        internal_date: i64,
        message: &[u8],
    ) -> BResult<(u32, u32)>;
}
