use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no yubin data in {0}: run `yubin init` or `yubin serve` first")]
    NotInitialized(PathBuf),
    #[error("{0} is in use by another running yubin server")]
    Locked(PathBuf),
    #[error(
        "the data in {path} has schema version {found}; this yubin understands up to {supported}"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("invalid domain {0:?}: {1}")]
    InvalidDomain(String, &'static str),
    #[error("invalid address {0:?}: {1}")]
    InvalidAddress(String, &'static str),
    #[error("domain {0} is not hosted here; add it with `yubin domain add {0}`")]
    NoSuchDomain(String),
    #[error("domain {0} already exists")]
    DomainExists(String),
    #[error(
        "domain {0} still has {1} account(s); remove them first, or pass --force to remove them and their mail"
    )]
    DomainNotEmpty(String, u64),
    #[error("no account {0}; see `yubin user list`")]
    NoSuchAccount(String),
    #[error("account {0} already exists")]
    AccountExists(String),
    #[error("{0} is already an account; an alias cannot have the same address")]
    AliasIsAccount(String),
    #[error("no alias {0}; see `yubin alias list`")]
    NoSuchAlias(String),
    #[error("no mailbox {0}")]
    NoSuchMailbox(String),
    #[error("mailbox {0} already exists")]
    MailboxExists(String),
    #[error("invalid mailbox name {0:?}: {1}")]
    InvalidMailboxName(String, &'static str),
    #[error("mailbox {0} has child mailboxes; delete them first")]
    MailboxHasChildren(String),
    #[error("INBOX cannot be deleted")]
    InboxNotDeletable,
    #[error("no message with UID {0}")]
    NoSuchMessage(u32),
    #[error("no message #{0} in the quarantine (see `yubin quarantine list`)")]
    NoSuchQuarantined(i64),
    #[error("password: {0}")]
    Password(String),
    #[error("a delivery needs at least one account")]
    NoRecipients,
    #[error("the store's writer has stopped")]
    WriterGone,
    /// A per-account bound (mailboxes, subscriptions, annotations), RFC 5530 `[LIMIT]`.
    #[error("{0}")]
    Limit(&'static str),
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
