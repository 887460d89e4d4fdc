//! yubin's storage: the traits the protocols and the CLI use, and the embedded backend.
//!
//! Two traits keep the surface narrow enough for a second backend (PostgreSQL for many
//! nodes): [`Directory`] (domains, accounts, aliases, passwords) and [`MailStore`]
//! (message bodies and mailboxes). Both are blocking: the server calls them from
//! `spawn_blocking`, so a backend never needs an async runtime of its own.
//!
//! Invariants every backend keeps:
//! - `deliver` returns only after the body and its metadata are durable (fsync).
//! - A delivery is all or nothing across its recipients.
//! - UIDs in a mailbox strictly increase and are never reused; UIDVALIDITY never changes
//!   for a mailbox's life; MODSEQ strictly increases per mailbox (RFC 3501 §2.3.1.1, RFC 7162).

mod address;
mod error;
mod index;
mod password;
mod sqlite;

pub use address::{Address, normalize_address};
pub use error::{Error, Result};
pub use sqlite::SqliteStore;
pub use yubin_model::{
    AccountId, Changes, Copied, FlagOp, Flags, FlagsUpdate, Mailbox, MailboxId, MessageMeta,
    Selection, SortInfo, TextField, flags,
};

/// The folders every new account starts with, and their RFC 6154 special-use attribute.
pub const DEFAULT_MAILBOXES: [(&str, Option<&str>); 6] = [
    ("INBOX", None),
    ("Drafts", Some("\\Drafts")),
    ("Sent", Some("\\Sent")),
    ("Trash", Some("\\Trash")),
    ("Junk", Some("\\Junk")),
    ("Archive", Some("\\Archive")),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    pub accounts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub address: String,
    pub disabled: bool,
    pub admin: bool,
    pub created: i64,
    /// Storage limit in bytes (RFC 9208 STORAGE); `None` for no limit.
    pub quota: Option<u64>,
}

/// One copy of a message that a background job could not process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unprocessable {
    pub account: String,
    pub mailbox: String,
    pub mailbox_id: MailboxId,
    pub uid: u32,
    pub body: i64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// `local@domain`, or `*@domain` for the domain's catch-all.
    pub alias: String,
    pub targets: Vec<String>,
}

/// Where mail for an address goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The domain is not one of ours.
    NotLocal,
    /// Our domain, but no account, alias or catch-all matches.
    Unknown,
    /// Every account the address reaches is disabled.
    Disabled,
    /// Deliver to these accounts (no duplicates).
    Accounts(Vec<AccountId>),
}

/// A message moved into Junk (spam) or out of it (ham), for filter training.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingEvent {
    pub spam: bool,
    pub created: i64,
    /// The message, as stored.
    pub size: u64,
}

/// The classifier's counts of one feature: `(feature, spam, ham)`.
pub type BayesRow = (u32, u32, u32);

/// One label for the classifier, from [`MailStore::training_pending`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingItem {
    pub id: i64,
    /// `None`: server-wide.
    pub account: Option<AccountId>,
    pub spam: bool,
    /// The same message had the other label last: unlearn that one first.
    pub relabel: bool,
    /// The message, when the label refers to a stored body that still exists.
    pub message: Option<Vec<u8>>,
    /// Or its words' hashes.
    pub features: Option<Vec<u32>>,
}

/// Called after a committed change with the mailbox it touched.
pub type ChangeListener = Box<dyn Fn(MailboxId) + Send + Sync>;

/// A message body written to stable storage but not yet in any mailbox.
/// Hand it to [`MailStore::deliver`]; a staged blob that is never delivered is removed
/// by the next [`MailStore::sweep_orphans`].
#[derive(Debug)]
pub struct StagedBlob {
    pub(crate) name: String,
    pub(crate) size: u64,
    /// What the search index will hold for it, extracted while staging (off the writer).
    pub(crate) text: index::SearchText,
    /// A small body, kept in the database (written by the commit).
    pub(crate) data: Option<Vec<u8>>,
    /// A larger one: the pack it was appended to and where (sqlite/packs.rs).
    pub(crate) packed: Option<sqlite::packs::Packed>,
}

impl StagedBlob {
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// One stored copy of a delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub account: AccountId,
    pub mailbox: MailboxId,
    pub uidvalidity: u32,
    pub uid: u32,
}

/// Domains, accounts, aliases and credentials.
pub trait Directory: Send + Sync {
    fn add_domain(&self, name: &str) -> Result<Domain>;
    fn list_domains(&self) -> Result<Vec<Domain>>;
    /// The admin's allow and block lists of inbound mail, as `(list, value)` with list
    /// `allow` or `block`; values are checked by the caller (`yubin filter`).
    fn filter_list(&self) -> Result<Vec<(String, String)>>;
    /// False when it was there already.
    fn filter_list_add(&self, list: &str, value: &str) -> Result<bool>;
    /// False when it was not there.
    fn filter_list_remove(&self, list: &str, value: &str) -> Result<bool>;
    /// Refuses while accounts exist, unless `force` (which removes them and their mail).
    fn remove_domain(&self, name: &str, force: bool) -> Result<()>;
    fn is_local_domain(&self, name: &str) -> Result<bool>;

    fn add_account(&self, address: &str, password: &str, admin: bool) -> Result<Account>;
    fn account(&self, address: &str) -> Result<Account>;
    fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<Account>>;
    fn set_password(&self, address: &str, password: &str) -> Result<()>;
    fn set_disabled(&self, address: &str, disabled: bool) -> Result<()>;
    /// Limit the bytes an account may store; `None` removes the limit.
    fn set_quota(&self, address: &str, bytes: Option<u64>) -> Result<()>;
    /// The account's own spam thresholds (score to file into Junk, to refuse at SMTP
    /// time); `None` follows the server's `[filter]`.
    fn set_filter_scores(
        &self,
        address: &str,
        junk: Option<f32>,
        reject: Option<f32>,
    ) -> Result<()>;
    fn filter_scores(&self, account: AccountId) -> Result<(Option<f32>, Option<f32>)>;
    /// Takes the account away (its address is free again, logins and mail to it refused,
    /// open sessions end) but keeps its mail until [`Directory::purge_account`]; undone by
    /// [`Directory::restore_account`].
    fn remove_account(&self, address: &str) -> Result<()>;
    /// Removed accounts kept for restoring: their addresses, oldest first.
    fn removed_accounts(&self) -> Result<Vec<String>>;
    /// Gives a removed account back under its address (which must be free).
    fn restore_account(&self, address: &str) -> Result<Account>;
    /// Deletes removed accounts with this address for good: mailboxes, messages, alias
    /// targets. Returns how many.
    fn purge_account(&self, address: &str) -> Result<usize>;
    /// Checks a password (argon2; slow by design). `None` when the address is unknown,
    /// disabled, or the password is wrong: callers must not tell these apart to the peer.
    fn authenticate(&self, address: &str, password: &str) -> Result<Option<Account>>;
    /// [`Directory::authenticate`], with the stamp ([`Directory::account_stamp`]) of the
    /// password it was checked against: a login cache keyed on it can tell it is stale.
    fn authenticate_stamped(
        &self,
        address: &str,
        password: &str,
    ) -> Result<Option<(Account, String)>> {
        // A backend that can, reads both at once; this reads the stamp after (a password
        // changed between the two would be cached against the new stamp).
        let Some(a) = self.authenticate(address, password)? else {
            return Ok(None);
        };
        Ok(self.account_stamp(a.id)?.map(|s| (a, s)))
    }
    /// The SCRAM-SHA-256 credentials of an enabled account (stored form), `None` for an
    /// unknown or disabled account or one whose password was set before schema 7 and not
    /// proven since.
    fn scram_credentials(&self, address: &str) -> Result<Option<(Account, String)>>;
    /// A number that moves whenever an account is removed, disabled or given a new
    /// password (by any process). One database read: the server asks a few times a second
    /// and hands the value to its sessions.
    fn account_epoch(&self) -> Result<u64>;
    /// What a session must still match to go on: `None` when the account is gone or
    /// disabled; otherwise a value that changes with its password. Ids are never reused.
    fn account_stamp(&self, id: AccountId) -> Result<Option<String>>;

    fn add_alias(&self, alias: &str, targets: &[String]) -> Result<()>;
    fn list_aliases(&self) -> Result<Vec<Alias>>;
    /// Removes one target, or the whole alias when `target` is `None`; returns how many.
    fn remove_alias(&self, alias: &str, target: Option<&str>) -> Result<usize>;

    /// Where mail to `address` goes: account, alias, `user+tag` subaddress, catch-all.
    fn resolve(&self, address: &str) -> Result<Resolved>;
}

/// Where one local recipient's copy of an accepted message goes: the inbound decision
/// step's answer (INBOX, Junk with `$Junk`, later a Sieve `fileinto`). A mailbox that no
/// longer exists falls back to INBOX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub account: AccountId,
    pub mailbox: String,
    /// Added to the message's own flags.
    pub flags: Flags,
    /// Held in the quarantine for the admin with this reason instead of filed (inbound
    /// mail only; `mailbox` and `flags` are then unused).
    pub quarantine: Option<String>,
}

impl Placement {
    pub fn inbox(account: AccountId) -> Self {
        Placement {
            account,
            mailbox: "INBOX".into(),
            flags: Flags::default(),
            quarantine: None,
        }
    }

    pub fn quarantine(account: AccountId, reason: &str) -> Self {
        Placement {
            quarantine: Some(reason.to_owned()),
            ..Placement::inbox(account)
        }
    }
}

/// A message the filter holds for the admin (`yubin quarantine`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub id: i64,
    pub account: AccountId,
    /// The recipient account's address.
    pub address: String,
    pub reason: String,
    pub mail_from: String,
    pub created: i64,
    pub size: u64,
}

/// Message bodies and mailboxes. Mailbox names are full paths with `/` as the separator;
/// `INBOX` is case-insensitive.
pub trait MailStore: Send + Sync {
    /// Write a body (the concatenation of `parts`) to stable storage.
    fn stage(&self, parts: &[&[u8]]) -> Result<StagedBlob>;
    /// Deliver to local accounts and queue remote recipients, in one durable transaction.
    /// Returns the local copies and the queue id (when anything was queued).
    fn accept(
        &self,
        blob: StagedBlob,
        placements: &[Placement],
        outbound: &Outbound,
        internal_date: i64,
    ) -> Result<(Vec<Delivered>, Option<i64>)>;
    /// Put a staged body into `mailbox` of every account, atomically and durably.
    /// Duplicate accounts get one copy. Concurrent calls share one commit (group commit).
    fn deliver(
        &self,
        blob: StagedBlob,
        accounts: &[AccountId],
        mailbox: &str,
        flags: &Flags,
        internal_date: i64,
    ) -> Result<Vec<Delivered>>;

    /// Several messages into one mailbox of one account, all or none, in one durable
    /// transaction (IMAP MULTIAPPEND, RFC 3502). One result per message, in order.
    fn deliver_many(
        &self,
        messages: Vec<(StagedBlob, Flags, i64)>,
        account: AccountId,
        mailbox: &str,
    ) -> Result<Vec<Delivered>>;

    fn list_mailboxes(&self, account: AccountId) -> Result<Vec<Mailbox>>;
    fn mailbox(&self, account: AccountId, name: &str) -> Result<Mailbox>;
    /// Creates missing parents too (RFC 9051 §6.3.4).
    fn create_mailbox(&self, account: AccountId, name: &str) -> Result<Mailbox>;
    /// `create_mailbox`, the new mailbox with an RFC 6154 special use such as `\Sent`
    /// (CREATE-SPECIAL-USE, RFC 6154 §3).
    fn create_special_mailbox(
        &self,
        account: AccountId,
        name: &str,
        special_use: Option<&str>,
    ) -> Result<Mailbox>;
    /// Refuses INBOX and mailboxes with children; removes the mailbox's messages.
    fn delete_mailbox(&self, account: AccountId, name: &str) -> Result<()>;
    /// Renames children too; renaming INBOX moves its messages (RFC 9051 §6.3.6).
    fn rename_mailbox(&self, account: AccountId, from: &str, to: &str) -> Result<()>;
    /// Add or remove a subscribed name (RFC 3501 §6.3.6); it need not name a mailbox, and
    /// DELETE leaves it. New mailboxes start unsubscribed; the standard ones subscribed.
    fn subscribe(&self, account: AccountId, name: &str, subscribed: bool) -> Result<()>;
    /// RFC 5464 annotations of a mailbox, or the server's for this account (`None`):
    /// (entry, value) by entry name, names lower-cased.
    fn metadata(
        &self,
        account: AccountId,
        mailbox: Option<MailboxId>,
    ) -> Result<Vec<(String, Vec<u8>)>>;
    /// Set (or, with `None`, remove) annotations, all in one transaction.
    fn set_metadata(
        &self,
        account: AccountId,
        mailbox: Option<MailboxId>,
        entries: &[(String, Option<Vec<u8>>)],
    ) -> Result<()>;
    /// Every subscribed name of an account, sorted.
    fn subscriptions(&self, account: AccountId) -> Result<Vec<String>>;

    /// A mailbox with its messages, for SELECT/EXAMINE (no per-message work when cached).
    fn select(&self, account: AccountId, name: &str) -> Result<Selection>;
    /// `select` if it needs no more than the mailbox's row (its message list is cached
    /// and current); `Ok(None)` otherwise. Cheap enough for an async thread.
    fn select_cached(&self, account: AccountId, name: &str) -> Result<Option<Selection>> {
        let _ = (account, name);
        Ok(None)
    }
    /// RFC 3501 §2.3.2: the first UID of `mailbox` that is `\Recent` for the caller. With
    /// `claim` (a read-write SELECT, or a session seeing new mail), the UIDs below
    /// `uid_next` stop being recent for anyone else.
    fn recent(&self, mailbox: MailboxId, uid_next: u32, claim: bool) -> Result<u32> {
        let _ = (mailbox, claim);
        Ok(uid_next)
    }
    /// All messages of a mailbox by ascending UID (shared: copy before changing it).
    fn messages(&self, mailbox: MailboxId) -> Result<std::sync::Arc<Vec<MessageMeta>>>;
    /// What changed after `since` (a MODSEQ).
    fn changes(&self, mailbox: MailboxId, since: u64) -> Result<Changes>;
    /// A message's bytes exactly as stored.
    fn read(&self, mailbox: MailboxId, uid: u32) -> Result<Vec<u8>>;
    /// Several messages' bytes (one result per UID, in order), cheaper than one `read` each.
    fn read_many(&self, mailbox: MailboxId, uids: &[u32]) -> Vec<Result<Vec<u8>>> {
        uids.iter().map(|&u| self.read(mailbox, u)).collect()
    }
    fn store_flags(
        &self,
        mailbox: MailboxId,
        uids: &[u32],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: Option<u64>,
    ) -> Result<FlagsUpdate>;
    /// Remove messages flagged `\Deleted` (only those in `uids`, when given). Returns the
    /// removed UIDs, ascending.
    fn expunge(&self, mailbox: MailboxId, uids: Option<&[u32]>) -> Result<Vec<u32>>;
    /// Copy (or move, when `remove`) messages to another mailbox of the same account,
    /// keeping flags and internal dates. Moving into or out of Junk records training events.
    fn copy(&self, from: MailboxId, uids: &[u32], to: MailboxId, remove: bool) -> Result<Copied>;
    fn training_events(&self, account: AccountId) -> Result<Vec<TrainingEvent>>;
    /// Labels after training row `after`, oldest first, at most `limit`.
    fn training_pending(&self, after: i64, limit: usize) -> Result<Vec<TrainingItem>>;
    /// A label given as the hashes of a message's words (`yubin filter train`, sent
    /// mail); `account` `None` is server-wide.
    fn training_add(&self, account: Option<AccountId>, spam: bool, features: &[u32]) -> Result<()> {
        self.training_add_many(account, spam, &[features])
    }
    /// Several such labels in one transaction (`yubin filter train` of a large mbox).
    fn training_add_many(
        &self,
        account: Option<AccountId>,
        spam: bool,
        messages: &[&[u32]],
    ) -> Result<()>;
    /// The classifier's counts `(feature, spam, ham)` and the training row they include.
    fn bayes_load(&self) -> Result<(i64, Vec<BayesRow>)>;
    /// Write changed counts (0/0 removes a feature) and move the cursor from `from` to
    /// `to`, only if it is still at `from` (one writer applies each label once); `false`
    /// when someone else moved it.
    fn bayes_save(&self, from: i64, to: i64, rows: &[BayesRow]) -> Result<bool>;
    /// Messages held in the quarantine, oldest first.
    fn quarantine_list(&self) -> Result<Vec<Quarantined>>;
    /// A held message's bytes.
    fn quarantine_read(&self, id: i64) -> Result<Vec<u8>>;
    /// Deliver a held message to its account's INBOX and take it out of the quarantine.
    fn quarantine_release(&self, id: i64) -> Result<Delivered>;
    /// Drop a held message for good.
    fn quarantine_delete(&self, id: i64) -> Result<()>;
    /// Drop the held messages quarantined before `before` (Unix seconds), at most
    /// `limit` of them; returns how many.
    fn quarantine_expire(&self, before: i64, limit: usize) -> Result<usize>;
    /// Remember that an account sent mail to these addresses.
    fn correspondents_add(&self, account: AccountId, addresses: &[String]) -> Result<()>;
    fn is_correspondent(&self, account: AccountId, address: &str) -> Result<bool>;
    /// UIDs of the messages in a mailbox whose `field` contains `needle` (case-insensitive
    /// substring, RFC 9051 §6.4.4), answered from the full-text index.
    fn search_text(&self, mailbox: MailboxId, field: TextField, needle: &str) -> Result<Vec<u32>>;
    /// SORT/THREAD keys of every message in a mailbox, by UID.
    fn sort_info(&self, mailbox: MailboxId) -> Result<Vec<SortInfo>>;
    /// RFC 8474 object ids of every message of a mailbox, by UID: (UID, the body's id —
    /// the same for every copy —, the thread's root Message-ID: the first References
    /// entry, else In-Reply-To, else its own; empty when it has none).
    fn object_ids(&self, mailbox: MailboxId) -> Result<Vec<(u32, i64, String)>>;
    /// (UID, size as POP3 sends it) of every message of a mailbox, by UID.
    fn pop3_sizes(&self, mailbox: MailboxId) -> Result<Vec<(u32, u64)>>;
    /// Bytes stored by an account (every copy counts) and its limit.
    fn usage(&self, account: AccountId) -> Result<(u64, Option<u64>)>;

    /// Remove bodies left by deliveries that never committed (a crash between the two).
    /// Call only when no delivery is in flight (at start-up). Returns how many were removed.
    fn sweep_orphans(&self) -> Result<usize>;
    /// Messages a background job (the indexer) could not process, with the reason.
    fn unprocessable(&self) -> Result<Vec<Unprocessable>>;
    /// Expunge every copy of an unprocessable message and forget its failure.
    fn remove_unprocessable(&self, item: &Unprocessable) -> Result<()>;
    /// Be told about every committed change to any mailbox (IMAP IDLE, NOOP).
    fn on_change(&self, listener: ChangeListener);
}

/// Recipients on other domains, to be delivered by the outbound queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outbound {
    /// The reverse-path; empty for a bounce (which must never bounce, RFC 3464 §2).
    pub mail_from: String,
    pub rcpts: Vec<OutRcpt>,
    /// RFC 3461 §4.4 ENVID and §4.3 RET (`FULL`/`HDRS`) of the sender's MAIL.
    pub envid: Option<String>,
    pub ret: Option<String>,
    /// RFC 8689 REQUIRETLS.
    pub require_tls: bool,
}

/// One remote recipient and what its sender asked to be told (RFC 3461).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutRcpt {
    pub addr: String,
    /// NOTIFY as given (`SUCCESS,DELAY`, `NEVER`); `None`: not given.
    pub notify: Option<String>,
    /// ORCPT as `type;address` (decoded).
    pub orcpt: Option<String>,
}

impl From<&str> for OutRcpt {
    fn from(addr: &str) -> Self {
        OutRcpt {
            addr: addr.to_owned(),
            ..Default::default()
        }
    }
}

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRcpt {
    pub id: i64,
    pub queue_id: i64,
    pub mail_from: String,
    pub rcpt: String,
    pub domain: String,
    pub attempts: u32,
    /// When the message was accepted (Unix time).
    pub created: i64,
    pub next_attempt: i64,
    pub last_error: Option<String>,
    pub size: u64,
    /// A delay warning went to the sender already.
    pub warned: bool,
    /// The DSN parameters (see [`Outbound`], [`OutRcpt`]).
    pub notify: Option<String>,
    pub orcpt: Option<String>,
    pub envid: Option<String>,
    pub ret: Option<String>,
    pub require_tls: bool,
}

/// What one delivery attempt to a recipient came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// Try again at this time.
    Retry {
        at: i64,
        error: String,
    },
    /// Give up (a 5xx, or the queue lifetime is over); the caller sends the bounce.
    Failed {
        error: String,
    },
}

/// The durable outbound queue. Entries are written in the same transaction as the local
/// copies of the message, so an accepted message is never half-queued.
pub trait Queue: Send + Sync {
    /// Recipients whose next attempt is due at `now`, oldest first.
    fn due(&self, now: i64, limit: usize) -> Result<Vec<QueuedRcpt>> {
        self.due_except(now, limit, &[], &[])
    }
    /// The same, leaving out these domains (those a delivery is already working on), so
    /// that a domain that takes long does not hide the others behind the limit.
    /// `in_flight`: recipient ids being delivered right now, left out as well.
    fn due_except(
        &self,
        now: i64,
        limit: usize,
        busy: &[String],
        in_flight: &[i64],
    ) -> Result<Vec<QueuedRcpt>>;
    /// Every queued recipient, for `yubin queue list`.
    fn queued(&self) -> Result<Vec<QueuedRcpt>>;
    /// The message of a queue entry, exactly as stored.
    fn queued_message(&self, queue_id: i64) -> Result<Vec<u8>>;
    /// Record an attempt; a message whose recipients are all done leaves the queue.
    fn record(&self, rcpt_id: i64, attempt: &Attempt) -> Result<()>;
    /// Several attempts in one durable transaction (a delivery task's results).
    fn record_many(&self, attempts: &[(i64, Attempt)]) -> Result<()> {
        for (id, a) in attempts {
            self.record(*id, a)?;
        }
        Ok(())
    }
    /// Remember that the sender was warned about a delay for this recipient.
    fn mark_warned(&self, rcpt_id: i64) -> Result<()>;
    /// Make entries (all, or one message's) due now; returns how many.
    fn retry_now(&self, queue_id: Option<i64>, now: i64) -> Result<usize>;
    /// Remove a message from the queue without delivering it.
    fn delete_queued(&self, queue_id: i64) -> Result<usize>;
}

/// Everything a backend provides; what the server holds as `Arc<dyn Store>`.
pub trait Store: Directory + MailStore + Queue {}
impl<T: Directory + MailStore + Queue> Store for T {}
