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
mod password;
mod sqlite;

pub use address::{Address, normalize_address};
pub use error::{Error, Result};
pub use sqlite::SqliteStore;

pub type AccountId = i64;
pub type MailboxId = i64;

/// The folders every new account starts with, and their RFC 6154 special-use attribute.
pub const DEFAULT_MAILBOXES: [(&str, Option<&str>); 6] = [
    ("INBOX", None),
    ("Drafts", Some("\\Drafts")),
    ("Sent", Some("\\Sent")),
    ("Trash", Some("\\Trash")),
    ("Junk", Some("\\Junk")),
    ("Archive", Some("\\Archive")),
];

/// System flags as bits (RFC 9051 §2.3.2); keywords come with IMAP.
pub mod flags {
    pub const SEEN: u32 = 1;
    pub const ANSWERED: u32 = 2;
    pub const FLAGGED: u32 = 4;
    pub const DELETED: u32 = 8;
    pub const DRAFT: u32 = 16;
}

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub id: MailboxId,
    /// Full name; `/` separates levels (`Archive/2026`).
    pub name: String,
    pub uidvalidity: u32,
    pub uid_next: u32,
    pub highest_modseq: u64,
    /// RFC 6154 attribute such as `\Sent`.
    pub special_use: Option<String>,
    pub subscribed: bool,
    pub messages: u64,
    /// Messages without `\Seen`.
    pub unseen: u64,
    /// Total octets of its messages (RFC 8438 STATUS SIZE, quotas).
    pub size: u64,
}

/// A message's system flags (bits of [`flags`]) and keywords (`$Junk`, `$Forwarded`...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub system: u32,
    /// Each keyword once (compared without case, RFC 9051 §2.3.2), in the order first seen.
    pub keywords: Vec<String>,
}

impl Flags {
    pub fn system(bits: u32) -> Self {
        Flags {
            system: bits,
            keywords: Vec::new(),
        }
    }

    pub fn has_keyword(&self, k: &str) -> bool {
        self.keywords.iter().any(|x| x.eq_ignore_ascii_case(k))
    }

    /// Apply a STORE operation; returns whether anything changed.
    pub fn apply(&mut self, op: FlagOp, other: &Flags) -> bool {
        let before = self.clone();
        match op {
            FlagOp::Replace => {
                self.system = other.system;
                self.keywords.clear();
                self.add_keywords(&other.keywords);
            }
            FlagOp::Add => {
                self.system |= other.system;
                self.add_keywords(&other.keywords);
            }
            FlagOp::Remove => {
                self.system &= !other.system;
                self.keywords
                    .retain(|k| !other.keywords.iter().any(|o| o.eq_ignore_ascii_case(k)));
            }
        }
        *self != before
    }

    fn add_keywords(&mut self, ks: &[String]) {
        for k in ks {
            if !self.has_keyword(k) {
                self.keywords.push(k.clone());
            }
        }
    }
}

/// How STORE changes flags (RFC 9051 §6.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    Replace,
    Add,
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: u32,
    pub size: u64,
    pub internal_date: i64,
    pub flags: Flags,
    pub modseq: u64,
}

/// What happened in a mailbox after some MODSEQ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub highest_modseq: u64,
    pub uid_next: u32,
    /// Messages added or whose flags changed, by UID.
    pub changed: Vec<MessageMeta>,
    /// UIDs removed, ascending.
    pub expunged: Vec<u32>,
}

/// Result of a flag update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagsUpdate {
    /// Every message of the request that still exists, with its flags now.
    pub messages: Vec<MessageMeta>,
    /// UIDs left alone because their MODSEQ was above UNCHANGEDSINCE (RFC 7162 §3.1.3).
    pub modified: Vec<u32>,
}

/// Result of a copy or move: the target's UIDVALIDITY and (source UID, new UID) pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub uidvalidity: u32,
    pub uids: Vec<(u32, u32)>,
}

/// A message moved into Junk (spam) or out of it (ham), for filter training.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingEvent {
    pub spam: bool,
    pub created: i64,
    /// The message, as stored.
    pub size: u64,
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
    /// Refuses while accounts exist, unless `force` (which removes them and their mail).
    fn remove_domain(&self, name: &str, force: bool) -> Result<()>;
    fn is_local_domain(&self, name: &str) -> Result<bool>;

    fn add_account(&self, address: &str, password: &str, admin: bool) -> Result<Account>;
    fn account(&self, address: &str) -> Result<Account>;
    fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<Account>>;
    fn set_password(&self, address: &str, password: &str) -> Result<()>;
    fn set_disabled(&self, address: &str, disabled: bool) -> Result<()>;
    /// Removes the account, its mailboxes, messages and alias targets.
    fn remove_account(&self, address: &str) -> Result<()>;
    /// Checks a password (argon2; slow by design). `None` when the address is unknown,
    /// disabled, or the password is wrong: callers must not tell these apart to the peer.
    fn authenticate(&self, address: &str, password: &str) -> Result<Option<Account>>;

    fn add_alias(&self, alias: &str, targets: &[String]) -> Result<()>;
    fn list_aliases(&self) -> Result<Vec<Alias>>;
    /// Removes one target, or the whole alias when `target` is `None`; returns how many.
    fn remove_alias(&self, alias: &str, target: Option<&str>) -> Result<usize>;

    /// Where mail to `address` goes: account, alias, `user+tag` subaddress, catch-all.
    fn resolve(&self, address: &str) -> Result<Resolved>;
}

/// Message bodies and mailboxes. Mailbox names are full paths with `/` as the separator;
/// `INBOX` is case-insensitive.
pub trait MailStore: Send + Sync {
    /// Write a body (the concatenation of `parts`) to stable storage.
    fn stage(&self, parts: &[&[u8]]) -> Result<StagedBlob>;
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

    fn list_mailboxes(&self, account: AccountId) -> Result<Vec<Mailbox>>;
    fn mailbox(&self, account: AccountId, name: &str) -> Result<Mailbox>;
    /// Creates missing parents too (RFC 9051 §6.3.4).
    fn create_mailbox(&self, account: AccountId, name: &str) -> Result<Mailbox>;
    /// Refuses INBOX and mailboxes with children; removes the mailbox's messages.
    fn delete_mailbox(&self, account: AccountId, name: &str) -> Result<()>;
    /// Renames children too; renaming INBOX moves its messages (RFC 9051 §6.3.6).
    fn rename_mailbox(&self, account: AccountId, from: &str, to: &str) -> Result<()>;
    fn subscribe(&self, account: AccountId, name: &str, subscribed: bool) -> Result<()>;

    /// All messages of a mailbox by ascending UID.
    fn messages(&self, mailbox: MailboxId) -> Result<Vec<MessageMeta>>;
    /// What changed after `since` (a MODSEQ).
    fn changes(&self, mailbox: MailboxId, since: u64) -> Result<Changes>;
    /// A message's bytes exactly as stored.
    fn read(&self, mailbox: MailboxId, uid: u32) -> Result<Vec<u8>>;
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

    /// Remove bodies left by deliveries that never committed (a crash between the two).
    /// Call only when no delivery is in flight (at start-up). Returns how many were removed.
    fn sweep_orphans(&self) -> Result<usize>;
    /// Be told about every committed change to any mailbox (IMAP IDLE, NOOP).
    fn on_change(&self, listener: ChangeListener);
}

/// Everything a backend provides; what the server holds as `Arc<dyn Store>`.
pub trait Store: Directory + MailStore {}
impl<T: Directory + MailStore> Store for T {}
