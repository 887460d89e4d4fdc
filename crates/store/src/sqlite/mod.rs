//! The embedded backend: metadata and small bodies in SQLite (WAL, `synchronous=FULL`),
//! larger bodies in pack files.
//!
//! Layout of a data directory:
//! - `yubin.db` (+ `-wal`, `-shm`): domains, accounts, aliases, mailboxes, message metadata.
//! - `packs/<16 hex>`: message bodies over 64 KiB, appended and fsynced (packs.rs); smaller
//!   ones are rows of yubin.db.
//! - `blobs/xx/<32 hex>`: bodies of data directories from before packs, one file each.
//! - `server.lock`: held (flock) by the one server process using this directory.
//!
//! Why SQLite: transactional, embedded, crash-safe with WAL, readable by the CLI while the
//! server runs. Why large bodies outside it: they are large and immutable; the single
//! writer copying them into the WAL was slower than appending them to packs in parallel.
//!
//! Durability of one delivery: (1) a large body is appended to a pack and fdatasynced by
//! the caller's thread (a small one travels with the job); (2) a single writer thread takes
//! every delivery that is waiting, inserts all their rows in one transaction and commits
//! (one WAL fsync for the whole batch: group commit); (3) only then does `deliver` return.
//! A crash before (3) leaves at most unreferenced bytes at the end of a pack, cut by
//! `sweep_orphans`.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use crate::address::normalize_domain;
use crate::{
    Account, AccountId, Alias, ChangeListener, DEFAULT_MAILBOXES, Directory, Domain, Error,
    MailboxId, Resolved, Result, normalize_address, password,
};

mod blobs;
mod indexer;
mod mail;
pub(crate) mod packs;
mod queue;
mod reserve;
mod snapshot;

const DB_FILE: &str = "yubin.db";
const SCHEMA_VERSION: i64 = 9;

/// Upgrades from each older schema version, applied in order in one transaction.
const MIGRATIONS: &[(i64, &str)] = &[
    // 1 -> 2: the full-text index moves to search.db, built after the commit (indexer.rs);
    // a missing search.db is rebuilt from every body. Mailbox and blob ids are never reused
    // (the server caches by them, and the CLI may remove an account beside it). Each
    // mailbox keeps the sum of its message sizes (quota checks without a scan). Small
    // bodies are kept in the database.
    (
        1,
        "DROP TABLE search;
         CREATE TABLE index_pending(
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             blob_id INTEGER NOT NULL);
         INSERT INTO meta(key, value)
             SELECT 'mailbox_seq', coalesce(max(id), 0) FROM mailboxes;
         INSERT INTO meta(key, value) SELECT 'blob_seq', coalesce(max(id), 0) FROM blobs;
         ALTER TABLE blobs ADD COLUMN data BLOB;
         ALTER TABLE mailboxes ADD COLUMN octets INTEGER NOT NULL DEFAULT 0;
         UPDATE mailboxes SET octets =
             (SELECT coalesce(sum(size), 0) FROM messages WHERE mailbox_id = mailboxes.id);
         CREATE TRIGGER messages_added AFTER INSERT ON messages BEGIN
             UPDATE mailboxes SET octets = octets + NEW.size WHERE id = NEW.mailbox_id;
         END;
         CREATE TRIGGER messages_removed AFTER DELETE ON messages BEGIN
             UPDATE mailboxes SET octets = octets - OLD.size WHERE id = OLD.mailbox_id;
         END;",
    ),
    // 2 -> 3: new large bodies go to pack files (packs.rs); older ones stay in their files.
    (
        2,
        "ALTER TABLE blobs ADD COLUMN pack INTEGER;
         ALTER TABLE blobs ADD COLUMN off INTEGER;
         CREATE INDEX blobs_pack ON blobs(pack, off) WHERE pack IS NOT NULL;",
    ),
    // 3 -> 4: account ids are never reused (an open session of a removed account must not
    // reach the next account's mail), and every change that must end sessions (removal,
    // disabling, a new password) moves `account_epoch`, which sessions watch.
    (
        3,
        "INSERT INTO meta(key, value) SELECT 'account_seq', coalesce(max(id), 0) FROM accounts;
         INSERT INTO meta(key, value) VALUES ('account_epoch', 0);",
    ),
    // 4 -> 5: the Date header's day as written, for SEARCH SENT* (RFC 3501 §6.4.4). Older
    // rows keep NULL and are searched by their UTC day.
    (4, "ALTER TABLE envelopes ADD COLUMN sent_day INTEGER;"),
    // 5 -> 6: the first UID no session has seen as \Recent yet (RFC 3501 §2.3.2); what is
    // there at the upgrade counts as seen.
    (
        5,
        "ALTER TABLE mailboxes ADD COLUMN recent_uid INTEGER NOT NULL DEFAULT 1;
         UPDATE mailboxes SET recent_uid = uid_next;
         UPDATE envelopes SET pop3_size = -1;
         CREATE TABLE subscriptions(
             account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
             name TEXT NOT NULL,
             PRIMARY KEY(account_id, name)) WITHOUT ROWID;
         INSERT INTO subscriptions SELECT account_id, name FROM mailboxes WHERE subscribed = 1;
         ALTER TABLE mailboxes DROP COLUMN subscribed;
         ALTER TABLE messages ADD COLUMN saved INTEGER;
         CREATE TABLE metadata(
             account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
             mailbox_id INTEGER NOT NULL,
             entry TEXT NOT NULL,
             value BLOB NOT NULL,
             PRIMARY KEY(account_id, mailbox_id, entry)) WITHOUT ROWID;",
    ),
    // 6 -> 7: what the sender of queued mail asked of delivery reports (RFC 3461) and
    // REQUIRETLS (RFC 8689); older entries have none (the defaults). SCRAM-SHA-256
    // credentials beside the password hash (made at the next password login).
    (
        6,
        "ALTER TABLE queue ADD COLUMN envid TEXT;
         ALTER TABLE queue ADD COLUMN ret TEXT;
         ALTER TABLE queue ADD COLUMN require_tls INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE queue_rcpts ADD COLUMN notify TEXT;
         ALTER TABLE queue_rcpts ADD COLUMN orcpt TEXT;
         ALTER TABLE accounts ADD COLUMN scram TEXT;",
    ),
    // 7 -> 8: the admin's allow and block lists of inbound mail (IPs, CIDRs, domains,
    // addresses), read by the server per message.
    (
        7,
        "CREATE TABLE filter_lists(
             list TEXT NOT NULL CHECK (list IN ('allow', 'block')),
             value TEXT NOT NULL,
             created INTEGER NOT NULL,
             PRIMARY KEY(list, value)) WITHOUT ROWID;
         ALTER TABLE accounts ADD COLUMN junk_score REAL;
         ALTER TABLE accounts ADD COLUMN reject_score REAL;",
    ),
    // 8 -> 9: the classifier. Training rows may carry their words' hashes instead of a
    // body (`yubin filter train`, submission) and may be server-wide (no account); the
    // model's counts and the last training row applied to them; correspondents; the
    // quarantine.
    (
        8,
        "CREATE TABLE training_new(
             id INTEGER PRIMARY KEY,
             account_id INTEGER REFERENCES accounts(id) ON DELETE CASCADE,
             blob_id INTEGER,
             spam INTEGER NOT NULL,
             created INTEGER NOT NULL,
             features BLOB);
         INSERT INTO training_new(id, account_id, blob_id, spam, created)
             SELECT id, account_id, blob_id, spam, created FROM training;
         DROP TABLE training;
         ALTER TABLE training_new RENAME TO training;
         CREATE INDEX training_blob ON training(blob_id);
         CREATE TABLE bayes(
             feature INTEGER PRIMARY KEY,
             spam INTEGER NOT NULL,
             ham INTEGER NOT NULL);
         INSERT INTO meta(key, value) VALUES ('bayes_cursor', 0);
         CREATE TABLE correspondents(
             account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
             address TEXT NOT NULL,
             last INTEGER NOT NULL,
             PRIMARY KEY(account_id, address)) WITHOUT ROWID;
         CREATE TABLE quarantine(
             id INTEGER PRIMARY KEY,
             account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
             blob_id INTEGER NOT NULL,
             reason TEXT NOT NULL,
             mail_from TEXT NOT NULL,
             created INTEGER NOT NULL);
         CREATE INDEX quarantine_blob ON quarantine(blob_id);",
    ),
];

const SCHEMA: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE domains(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL);
CREATE TABLE accounts(
    id INTEGER PRIMARY KEY,
    domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    local TEXT NOT NULL,
    password TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    admin INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    quota INTEGER,
    -- SCRAM-SHA-256 StoredKey/ServerKey (yubin_sasl::ScramCredentials::to_stored); NULL
    -- until the password is set or first proven after the upgrade to schema 7.
    scram TEXT,
    -- The account's own spam thresholds ([filter] junk_score / reject_score when NULL).
    junk_score REAL,
    reject_score REAL,
    UNIQUE(domain_id, local));
CREATE TABLE aliases(
    domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    local TEXT NOT NULL,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    PRIMARY KEY(domain_id, local, account_id)) WITHOUT ROWID;
CREATE INDEX aliases_account ON aliases(account_id);
CREATE TABLE mailboxes(
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid_next INTEGER NOT NULL DEFAULT 1,
    highest_modseq INTEGER NOT NULL DEFAULT 1,
    special_use TEXT,
    -- Sum of its messages' sizes, kept by the triggers below (quota checks on every RCPT).
    octets INTEGER NOT NULL DEFAULT 0,
    -- The first UID no session has been given as recent (RFC 3501 §2.3.2); kept in memory
    -- (SqliteStore::recent) and written with the next transaction.
    recent_uid INTEGER NOT NULL DEFAULT 1,
    UNIQUE(account_id, name));
-- Subscribed names (RFC 3501 §6.3.6): kept through DELETE, may name no mailbox.
CREATE TABLE subscriptions(
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    PRIMARY KEY(account_id, name)) WITHOUT ROWID;
-- RFC 5464 annotations: mailbox_id 0 holds the server's (per account); entry lower-cased.
CREATE TABLE metadata(
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    mailbox_id INTEGER NOT NULL,
    entry TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY(account_id, mailbox_id, entry)) WITHOUT ROWID;
CREATE TABLE blobs(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    -- Small bodies live here (no file: no file creation and fsync per message, and the
    -- WAL commit that records the delivery makes the body durable too).
    data BLOB,
    -- Larger ones: their pack file's number and where their header starts (packs.rs).
    -- Neither: the body is the file blobs/<first 2 of name>/<name> (before schema 3).
    pack INTEGER,
    off INTEGER);
CREATE INDEX blobs_pack ON blobs(pack, off) WHERE pack IS NOT NULL;
CREATE TABLE messages(
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    blob_id INTEGER NOT NULL REFERENCES blobs(id),
    size INTEGER NOT NULL,
    internal_date INTEGER NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0,
    keywords TEXT NOT NULL DEFAULT '',
    modseq INTEGER NOT NULL,
    -- When it was put into this mailbox (RFC 8514 SAVEDATE); NULL before schema 6.
    saved INTEGER,
    PRIMARY KEY(mailbox_id, uid)) WITHOUT ROWID;
CREATE INDEX messages_blob ON messages(blob_id);
CREATE TRIGGER messages_added AFTER INSERT ON messages BEGIN
    UPDATE mailboxes SET octets = octets + NEW.size WHERE id = NEW.mailbox_id;
END;
CREATE TRIGGER messages_removed AFTER DELETE ON messages BEGIN
    UPDATE mailboxes SET octets = octets - OLD.size WHERE id = OLD.mailbox_id;
END;
CREATE INDEX messages_modseq ON messages(mailbox_id, modseq);
-- UIDs removed from a mailbox and the MODSEQ of their removal (RFC 7162 VANISHED).
CREATE TABLE expunged(
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    PRIMARY KEY(mailbox_id, uid)) WITHOUT ROWID;
-- Bodies whose full-text index entry must be (re)built or dropped, in commit order. The
-- index itself lives in search.db (see indexer.rs); AUTOINCREMENT so a sequence number is
-- never reused after the rows are cleared.
CREATE TABLE index_pending(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    blob_id INTEGER NOT NULL);
-- SORT and THREAD keys of each body (RFC 5256), rowid = blobs.id.
CREATE TABLE envelopes(
    blob_id INTEGER PRIMARY KEY,
    sent INTEGER,
    subject TEXT NOT NULL,
    from_addr TEXT NOT NULL,
    from_display TEXT NOT NULL,
    to_addr TEXT NOT NULL,
    to_display TEXT NOT NULL,
    cc_addr TEXT NOT NULL,
    message_id TEXT NOT NULL,
    refs TEXT NOT NULL,
    -- Size as POP3 LIST gives it (CRLF, not dot-stuffed: yubin_model::pop3_size); -1 for
    -- rows from before schema 6, counted again when first listed.
    pop3_size INTEGER NOT NULL,
    -- The Date header's day as written (days since 1970-01-01), for SEARCH SENT*.
    sent_day INTEGER);
-- The outbound queue: one row per accepted message, one per remote recipient.
CREATE TABLE queue(
    id INTEGER PRIMARY KEY,
    blob_id INTEGER NOT NULL REFERENCES blobs(id),
    mail_from TEXT NOT NULL,
    created INTEGER NOT NULL,
    -- RFC 3461 ENVID and RET, RFC 8689 REQUIRETLS of the sender's MAIL.
    envid TEXT,
    ret TEXT,
    require_tls INTEGER NOT NULL DEFAULT 0);
CREATE TABLE queue_rcpts(
    id INTEGER PRIMARY KEY,
    queue_id INTEGER NOT NULL REFERENCES queue(id) ON DELETE CASCADE,
    rcpt TEXT NOT NULL,
    domain TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    last_error TEXT,
    warned INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    -- RFC 3461 NOTIFY as given (NULL: not given) and ORCPT as type;address.
    notify TEXT,
    orcpt TEXT);
CREATE INDEX queue_due ON queue_rcpts(done, next_attempt);
-- Labels for the classifier, applied in id order: a message the user moved into
-- (spam = 1) or out of (spam = 0) Junk, flagged $Junk/$NotJunk, appended to Junk, sent,
-- or given to `yubin filter train` (then `features` holds its words' hashes, u32 LE,
-- and account_id may be NULL: server-wide).
CREATE TABLE training(
    id INTEGER PRIMARY KEY,
    account_id INTEGER REFERENCES accounts(id) ON DELETE CASCADE,
    blob_id INTEGER,
    spam INTEGER NOT NULL,
    created INTEGER NOT NULL,
    features BLOB);
CREATE INDEX training_blob ON training(blob_id);
-- The classifier's counts per feature (yubin_filter::bayes), up to meta.bayes_cursor.
CREATE TABLE bayes(
    feature INTEGER PRIMARY KEY,
    spam INTEGER NOT NULL,
    ham INTEGER NOT NULL);
-- Addresses each account sent mail to (sender reputation).
CREATE TABLE correspondents(
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    last INTEGER NOT NULL,
    PRIMARY KEY(account_id, address)) WITHOUT ROWID;
-- Inbound messages the filter holds for the admin (`yubin quarantine`), one per account.
CREATE TABLE quarantine(
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    blob_id INTEGER NOT NULL,
    reason TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    created INTEGER NOT NULL);
CREATE INDEX quarantine_blob ON quarantine(blob_id);
-- The admin's allow and block lists of inbound mail: IPs, CIDRs, domains, addresses.
CREATE TABLE filter_lists(
    list TEXT NOT NULL CHECK (list IN ('allow', 'block')),
    value TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY(list, value)) WITHOUT ROWID;
INSERT INTO meta(key, value) VALUES ('uidvalidity', 0);
INSERT INTO meta(key, value) VALUES ('mailbox_seq', 0);
INSERT INTO meta(key, value) VALUES ('account_seq', 0);
INSERT INTO meta(key, value) VALUES ('account_epoch', 0);
INSERT INTO meta(key, value) VALUES ('blob_seq', 0);
INSERT INTO meta(key, value) VALUES ('bayes_cursor', 0);
";

/// Called after every committed change, with the mailboxes it touched.
#[derive(Default)]
struct Listeners(Mutex<Vec<ChangeListener>>);

impl Listeners {
    fn notify(&self, mailboxes: &[MailboxId]) {
        if mailboxes.is_empty() {
            return;
        }
        for l in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for &m in mailboxes {
                l(m);
            }
        }
    }
}

/// Read-only connections: WAL lets them run beside the writers, so IMAP/POP3 reads from
/// many sessions do not queue behind one connection.
const READERS: usize = 8;

/// Per-account bounds on what the storage quota does not count (rows, not message bytes):
/// a client cannot fill the database with mailboxes, subscriptions or annotations.
pub(crate) const MAX_MAILBOXES: usize = 10_000;
pub(crate) const MAX_SUBSCRIPTIONS: usize = 10_000;
pub(crate) const MAX_METADATA_BYTES: u64 = 16 * 1024 * 1024;

/// Bounds CPU-heavy reads (full-text queries over a whole mailbox) to the number of cores.
///
/// Why: with 50 clients searching and fetching at once, every search ran at the same
/// time, held a reader connection for its whole run and shared two cores with the rest:
/// a NOOP or a one-message FETCH then waited ~100 ms behind them (bench/README.md, mixed
/// load). Queued here, searches take no reader and no core until they run, so short
/// commands keep both; searches finish no later, since the cores were the limit anyway.
pub(crate) struct Gate {
    running: Mutex<usize>,
    freed: std::sync::Condvar,
    max: usize,
}

impl Gate {
    fn new(max: usize) -> Self {
        Gate {
            running: Mutex::new(0),
            freed: std::sync::Condvar::new(),
            max: max.max(1),
        }
    }

    pub(crate) fn enter(&self) -> GatePass<'_> {
        let mut n = self.running.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= self.max {
            n = self.freed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        GatePass(self)
    }
}

pub(crate) struct GatePass<'a>(&'a Gate);

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        *self.0.running.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.0.freed.notify_one();
    }
}

pub struct SqliteStore {
    root: PathBuf,
    conn: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    writer: mpsc::Sender<mail::Job>,
    listeners: Arc<Listeners>,
    indexer: Arc<indexer::Indexer>,
    /// Disk space kept back so that mail can be deleted on a full disk.
    reserve: reserve::Reserve,
    snapshots: snapshot::Snapshots,
    blob_dirs: Arc<blobs::BlobDirs>,
    heavy: Gate,
    lock: Option<File>,
    /// \Recent claims (first unclaimed UID by mailbox) and those not yet written: a SELECT
    /// must not wait for an fsync to claim. Losing the newest claims in a crash only makes
    /// those messages recent once more.
    pub(crate) recent: Mutex<RecentClaims>,
}

#[derive(Default)]
pub(crate) struct RecentClaims {
    pub first: std::collections::HashMap<MailboxId, u32>,
    pub unwritten: std::collections::HashMap<MailboxId, u32>,
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn connect(path: &Path) -> Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(30))?;
    c.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
    // FULL: every commit fsyncs the WAL, so a committed delivery survives power loss.
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    Ok(c)
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// A body whose row was deleted, to remove from disk once that is committed.
#[derive(Debug)]
pub(crate) enum DeadBody {
    /// `blobs/xx/<name>` (data directories from before packs).
    File(String),
    /// A body of `size` bytes in a pack, freed after a grace period (packs.rs).
    Packed { at: packs::Packed, size: u64 },
}

pub(crate) fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

pub(crate) fn canonical_mailbox(name: &str) -> &str {
    // RFC 3501 §5.1: INBOX is case-insensitive.
    if name.eq_ignore_ascii_case("INBOX") {
        "INBOX"
    } else {
        name
    }
}

/// A removed account's stored local part, `NUL <unix time>:<id>:<local>` (the id keeps two
/// removals of one address apart): (time, local).
fn removed_local(stored: &str) -> Option<(i64, &str)> {
    let rest = stored.strip_prefix('\0')?;
    let (when, rest) = rest.split_once(':')?;
    let (_id, local) = rest.split_once(':')?;
    Some((when.parse().ok()?, local))
}

/// The data directory is its owner's only (password hashes, everyone's mail): whatever
/// the umask made of its files, nobody else can reach them through it. Data directories
/// made before this rule are closed the same way when opened.
fn make_private(root: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("restrict permissions of", root, e))?;
    }
    Ok(())
}

impl SqliteStore {
    pub fn is_initialized(root: &Path) -> bool {
        root.join(DB_FILE).exists()
    }

    /// Create the data directory (if needed) and open it.
    pub fn create(root: &Path) -> Result<Self> {
        fs::create_dir_all(root.join("blobs")).map_err(|e| Error::io("create", root, e))?;
        make_private(root)?;
        for i in 0..=255u8 {
            let d = root.join("blobs").join(format!("{i:02x}"));
            fs::create_dir_all(&d).map_err(|e| Error::io("create", d, e))?;
        }
        fsync_dir(&root.join("blobs"))?;
        fsync_dir(root)?;
        Self::open_inner(root, true)
    }

    /// Open an existing data directory.
    pub fn open(root: &Path) -> Result<Self> {
        if !Self::is_initialized(root) {
            return Err(Error::NotInitialized(root.to_owned()));
        }
        make_private(root)?;
        Self::open_inner(root, false)
    }

    fn open_inner(root: &Path, create: bool) -> Result<Self> {
        let path = root.join(DB_FILE);
        let mut conn = connect(&path)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == 0 && create {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
        } else if version > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                path,
                found: version,
                supported: SCHEMA_VERSION,
            });
        } else if version == 0 {
            return Err(Error::NotInitialized(root.to_owned()));
        } else if version < SCHEMA_VERSION {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
            for (from, sql) in MIGRATIONS.iter().filter(|(from, _)| *from >= version) {
                tracing::info!(from, to = from + 1, "upgrading the database schema");
                tx.execute_batch(sql)?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
        }
        indexer::prepare(root, &mut conn)?;
        let blob_dirs = Arc::new(
            blobs::BlobDirs::open(root).map_err(|e| Error::io("open", root.join("blobs"), e))?,
        );
        let indexer = indexer::Indexer::start(root, blob_dirs.clone())?;
        let writer_conn = connect(&path)?;
        let (tx, rx) = mpsc::channel();
        let wroot = root.to_owned();
        let listeners = Arc::new(Listeners::default());
        let wlisteners = listeners.clone();
        let windexer = indexer.clone();
        let wbodies = blob_dirs.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || mail::writer_loop(wroot, writer_conn, rx, wlisteners, windexer, wbodies))
            .map_err(|e| Error::io("start writer thread for", root, e))?;
        let search = root.join(indexer::SEARCH_FILE);
        let readers = (0..READERS)
            .map(|_| {
                let c = connect(&path)?;
                // Bodies kept in the database are read through the page cache mapping,
                // without a system call per page.
                c.pragma_update(None, "mmap_size", 1i64 << 30)?;
                // SEARCH joins messages with the index in search.db.
                c.execute(
                    "ATTACH DATABASE ?1 AS fts",
                    [search.to_string_lossy().as_ref()],
                )?;
                Ok(Mutex::new(c))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SqliteStore {
            root: root.to_owned(),
            conn: Mutex::new(conn),
            readers,
            next_reader: Default::default(),
            writer: tx,
            listeners,
            indexer,
            reserve: reserve::Reserve::open(root),
            snapshots: Default::default(),
            blob_dirs,
            heavy: Gate::new(std::thread::available_parallelism().map_or(2, |n| n.get())),
            lock: None,
            recent: Default::default(),
        })
    }

    /// Take the data directory for this process alone (the server does; the CLI does not).
    pub fn lock_exclusive(&mut self) -> Result<()> {
        let path = self.root.join("server.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        match f.try_lock() {
            Ok(()) => {
                self.lock = Some(f);
                Ok(())
            }
            Err(fs::TryLockError::WouldBlock) => Err(Error::Locked(self.root.clone())),
            Err(fs::TryLockError::Error(e)) => Err(Error::io("lock", path, e)),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A connection for reads only: a free one if any, else the next in turn.
    pub(crate) fn reader(&self) -> MutexGuard<'_, Connection> {
        for r in &self.readers {
            if let Ok(g) = r.try_lock() {
                return g;
            }
        }
        let i = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % self.readers.len();
        self.readers[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back on drop), so a poisoned mutex is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A body by its id: from the database when it is small, else from its pack or file;
    /// `None` when it is gone (removed since the caller looked it up).
    pub(crate) fn load_body(&self, c: &Connection, blob_id: i64) -> Result<Option<Vec<u8>>> {
        self.blob_dirs.load(c, blob_id)
    }

    /// A body file; `None` when it was removed (expunged meanwhile).
    pub(crate) fn read_file(&self, name: &str, size: u64) -> Result<Option<Vec<u8>>> {
        self.blob_dirs.read_file(name, size)
    }

    pub(crate) fn blob_path(root: &Path, name: &str) -> PathBuf {
        root.join("blobs").join(&name[..2]).join(name)
    }

    /// Give back the space of bodies whose rows were just deleted.
    pub(crate) fn free_bodies(&self, dead: &[DeadBody]) {
        let mut packed = Vec::new();
        for d in dead {
            match d {
                DeadBody::File(n) => {
                    let p = Self::blob_path(&self.root, n);
                    if let Err(e) = fs::remove_file(&p) {
                        tracing::warn!(path = %p.display(), error = %e, "could not remove message file");
                    }
                }
                DeadBody::Packed { at, size } => packed.push((*at, *size)),
            }
        }
        self.blob_dirs.packs.release(packed);
    }

    fn domain_id(c: &Connection, domain: &str) -> Result<Option<i64>> {
        Ok(
            c.query_row("SELECT id FROM domains WHERE name = ?1", [domain], |r| {
                r.get(0)
            })
            .optional()?,
        )
    }

    fn account_row(c: &Connection, address: &str) -> Result<(Account, String)> {
        let a = normalize_address(address)?;
        c.query_row(
            "SELECT a.id, a.disabled, a.admin, a.created, a.password, a.quota FROM accounts a
             JOIN domains d ON d.id = a.domain_id WHERE d.name = ?1 AND a.local = ?2",
            params![a.domain, a.local],
            |r| {
                Ok((
                    Account {
                        id: r.get(0)?,
                        address: a.to_string(),
                        disabled: r.get(1)?,
                        admin: r.get(2)?,
                        created: r.get(3)?,
                        quota: r.get::<_, Option<i64>>(5)?.map(|q| q as u64),
                    },
                    r.get::<_, String>(4)?,
                ))
            },
        )
        .optional()?
        .ok_or_else(|| Error::NoSuchAccount(a.to_string()))
    }

    /// Delete the messages matched by `where_sql` (over `messages m`) and return the names
    /// of bodies no longer referenced, to remove from disk after commit.
    pub(crate) fn release_messages(
        tx: &rusqlite::Transaction<'_>,
        where_sql: &str,
        arg: i64,
    ) -> Result<Vec<DeadBody>> {
        let blob_ids: Vec<i64> = {
            let mut st = tx.prepare(&format!(
                "SELECT DISTINCT m.blob_id FROM messages m WHERE {where_sql}"
            ))?;
            st.query_map([arg], |r| r.get(0))?
                .collect::<std::result::Result<_, _>>()?
        };
        tx.execute(
            &format!("DELETE FROM messages AS m WHERE {where_sql}"),
            [arg],
        )?;
        Self::drop_unreferenced_blobs(tx, blob_ids)
    }

    /// Delete the blob rows (and their index entries) no message refers to any more;
    /// returns those kept outside the database, to remove from disk after commit.
    pub(crate) fn drop_unreferenced_blobs(
        tx: &rusqlite::Transaction<'_>,
        blob_ids: impl IntoIterator<Item = i64>,
    ) -> Result<Vec<DeadBody>> {
        let mut dead = Vec::new();
        let mut st = tx.prepare_cached(
            "DELETE FROM blobs WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM messages WHERE blob_id = ?1)
             AND NOT EXISTS (SELECT 1 FROM queue WHERE blob_id = ?1)
             AND NOT EXISTS (SELECT 1 FROM quarantine WHERE blob_id = ?1)
             RETURNING name, data IS NULL, pack, off, size",
        )?;
        // The indexer drops the body's search.db entry after commit.
        let mut unindex = tx.prepare_cached("INSERT INTO index_pending(blob_id) VALUES (?1)")?;
        let mut unenvelope = tx.prepare_cached("DELETE FROM envelopes WHERE blob_id = ?1")?;
        type Gone = (String, bool, Option<i64>, Option<i64>, i64);
        for id in blob_ids {
            let gone: Option<Gone> = st
                .query_row([id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .optional()?;
            let Some((name, outside, pack, off, size)) = gone else {
                continue;
            };
            unindex.execute([id])?;
            unenvelope.execute([id])?;
            match (outside, pack, off) {
                (false, ..) => {}
                (true, Some(pack), Some(off)) => dead.push(DeadBody::Packed {
                    at: packs::Packed {
                        pack: pack as u64,
                        off: off as u64,
                    },
                    size: size as u64,
                }),
                (true, ..) => dead.push(DeadBody::File(name)),
            }
        }
        Ok(dead)
    }

    pub(crate) fn next_uidvalidity(tx: &rusqlite::Transaction<'_>) -> Result<u32> {
        // Time-based like most servers, but strictly increasing even if the clock goes back,
        // so a re-created mailbox never reuses an old UIDVALIDITY (RFC 3501 §2.3.1.1).
        let v: i64 = tx.query_row(
            "UPDATE meta SET value = max(value + 1, ?1) WHERE key = 'uidvalidity' RETURNING value",
            [now() & 0xFFFF_FFFF],
            |r| r.get(0),
        )?;
        Ok(v as u32)
    }

    /// A mailbox id never used before, even by a mailbox since removed: caches keyed by
    /// mailbox id (snapshot.rs) can never confuse an old mailbox with a new one.
    pub(crate) fn next_mailbox_id(tx: &rusqlite::Transaction<'_>) -> Result<i64> {
        Self::next_id(tx, "mailbox_seq", "mailboxes")
    }

    pub(crate) fn next_account_id(tx: &rusqlite::Transaction<'_>) -> Result<i64> {
        Self::next_id(tx, "account_seq", "accounts")
    }

    /// The next id from counter `key` of `meta`: never one `table` has used (ids are never
    /// reused), and above any row made before the counter existed.
    fn next_id(tx: &rusqlite::Transaction<'_>, key: &str, table: &str) -> Result<i64> {
        Ok(tx.query_row(
            &format!(
                "UPDATE meta SET value = max(value, (SELECT coalesce(max(id), 0) FROM {table})) + 1
                 WHERE key = ?1 RETURNING value"
            ),
            [key],
            |r| r.get(0),
        )?)
    }

    /// Sessions of existing accounts must look again: one was removed, disabled or given
    /// a new password (in this transaction).
    fn bump_account_epoch(c: &Connection) -> Result<()> {
        c.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'account_epoch'",
            [],
        )?;
        Ok(())
    }

    /// Removed accounts that had address `a`: (id, stored local part), oldest first.
    fn removed_ids(c: &Connection, a: &crate::Address) -> Result<Vec<(i64, String)>> {
        let mut st = c.prepare(
            "SELECT a.id, a.local FROM accounts a JOIN domains d ON d.id = a.domain_id
             WHERE d.name = ?1 AND a.local LIKE char(0) || '%' ORDER BY a.id",
        )?;
        let rows = st
            .query_map([&a.domain], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter(|(_, local)| removed_local(local).is_some_and(|(_, l)| l == a.local))
            .collect())
    }

    /// Find what one local part of a domain reaches: (account id, disabled) pairs.
    fn lookup_local(c: &Connection, domain_id: i64, local: &str) -> Result<Vec<(i64, bool)>> {
        let acct: Option<(i64, bool)> = c
            .query_row(
                "SELECT id, disabled FROM accounts WHERE domain_id = ?1 AND local = ?2",
                params![domain_id, local],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some(a) = acct {
            return Ok(vec![a]);
        }
        let mut st = c.prepare_cached(
            "SELECT a.id, a.disabled FROM aliases al JOIN accounts a ON a.id = al.account_id
             WHERE al.domain_id = ?1 AND al.local = ?2 ORDER BY a.id",
        )?;
        let rows = st
            .query_map(params![domain_id, local], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }
}

impl Directory for SqliteStore {
    fn add_domain(&self, name: &str) -> Result<Domain> {
        let name = normalize_domain(name)?;
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match tx.execute(
            "INSERT INTO domains(name, created) VALUES (?1, ?2)",
            params![name, now()],
        ) {
            Err(e) if is_constraint(&e) => return Err(Error::DomainExists(name)),
            r => r?,
        };
        let id = tx.last_insert_rowid();
        // RFC 5321 §4.5.1: every domain needs a postmaster; route it to the first admin.
        tx.execute(
            "INSERT INTO aliases(domain_id, local, account_id)
             SELECT ?1, 'postmaster', id FROM accounts WHERE admin = 1 ORDER BY id LIMIT 1",
            [id],
        )?;
        tx.commit()?;
        Ok(Domain { name, accounts: 0 })
    }

    fn filter_list(&self) -> Result<Vec<(String, String)>> {
        let c = self.conn();
        let mut st = c.prepare("SELECT list, value FROM filter_lists ORDER BY list, value")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }

    fn filter_list_add(&self, list: &str, value: &str) -> Result<bool> {
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO filter_lists(list, value, created) VALUES (?1, ?2, ?3)",
            params![list, value, now()],
        )?;
        Ok(n == 1)
    }

    fn filter_list_remove(&self, list: &str, value: &str) -> Result<bool> {
        let n = self.conn().execute(
            "DELETE FROM filter_lists WHERE list = ?1 AND value = ?2",
            params![list, value],
        )?;
        Ok(n == 1)
    }

    fn list_domains(&self) -> Result<Vec<Domain>> {
        let c = self.conn();
        let mut st = c.prepare(
            "SELECT d.name, count(a.id) FROM domains d LEFT JOIN accounts a ON a.domain_id = d.id
                 AND a.local NOT LIKE char(0) || '%'
             GROUP BY d.id ORDER BY d.name",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(Domain {
                    name: r.get(0)?,
                    accounts: r.get::<_, i64>(1)? as u64,
                })
            })?
            .collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }

    fn remove_domain(&self, name: &str, force: bool) -> Result<()> {
        let name = normalize_domain(name)?;
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = Self::domain_id(&tx, &name)?.ok_or_else(|| Error::NoSuchDomain(name.clone()))?;
        let n: i64 = tx.query_row(
            "SELECT count(*) FROM accounts WHERE domain_id = ?1 AND local NOT LIKE char(0) || '%'",
            [id],
            |r| r.get(0),
        )?;
        if n > 0 && !force {
            return Err(Error::DomainNotEmpty(name, n as u64));
        }
        let names = Self::release_messages(
            &tx,
            "m.mailbox_id IN (SELECT b.id FROM mailboxes b JOIN accounts a ON a.id = b.account_id
               WHERE a.domain_id = ?1)",
            id,
        )?;
        tx.execute("DELETE FROM domains WHERE id = ?1", [id])?;
        tx.commit()?;
        drop(c);
        self.free_bodies(&names);
        Ok(())
    }

    fn is_local_domain(&self, name: &str) -> Result<bool> {
        let Ok(name) = normalize_domain(name) else {
            return Ok(false);
        };
        Ok(Self::domain_id(&self.conn(), &name)?.is_some())
    }

    fn add_account(&self, address: &str, password: &str, admin: bool) -> Result<Account> {
        let a = normalize_address(address)?;
        if a.local == "*" {
            return Err(Error::InvalidAddress(
                address.into(),
                "'*' is only for catch-all aliases",
            ));
        }
        let hash = password::hash(password)?;
        let scram = password::scram(password)?;
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let domain_id = Self::domain_id(&tx, &a.domain)?
            .ok_or_else(|| Error::NoSuchDomain(a.domain.clone()))?;
        let is_alias: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM aliases WHERE domain_id = ?1 AND local = ?2)",
            params![domain_id, a.local],
            |r| r.get(0),
        )?;
        if is_alias {
            return Err(Error::InvalidAddress(
                a.to_string(),
                "an alias with this address exists; remove it first",
            ));
        }
        let created = now();
        let id = Self::next_account_id(&tx)?;
        match tx.execute(
            "INSERT INTO accounts(id, domain_id, local, password, admin, created, scram)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, domain_id, a.local, hash, admin, created, scram],
        ) {
            Err(e) if is_constraint(&e) => return Err(Error::AccountExists(a.to_string())),
            r => r?,
        };
        for (name, special) in DEFAULT_MAILBOXES {
            let uv = Self::next_uidvalidity(&tx)?;
            tx.execute(
                "INSERT INTO mailboxes(id, account_id, name, uidvalidity, special_use)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![Self::next_mailbox_id(&tx)?, id, name, uv, special],
            )?;
            // The standard mailboxes start subscribed (as Dovecot's `auto = subscribe`).
            tx.execute(
                "INSERT INTO subscriptions(account_id, name) VALUES (?1, ?2)",
                params![id, name],
            )?;
        }
        if admin {
            // Domains created before the first admin get their postmaster now.
            tx.execute(
                "INSERT OR IGNORE INTO aliases(domain_id, local, account_id)
                 SELECT d.id, 'postmaster', ?1 FROM domains d
                 WHERE NOT EXISTS (SELECT 1 FROM aliases x
                                   WHERE x.domain_id = d.id AND x.local = 'postmaster')
                   AND NOT EXISTS (SELECT 1 FROM accounts y
                                   WHERE y.domain_id = d.id AND y.local = 'postmaster')",
                [id],
            )?;
        }
        tx.commit()?;
        Ok(Account {
            id,
            address: a.to_string(),
            disabled: false,
            admin,
            created,
            quota: None,
        })
    }

    fn account(&self, address: &str) -> Result<Account> {
        Ok(Self::account_row(&self.conn(), address)?.0)
    }

    fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<Account>> {
        let domain = domain.map(normalize_domain).transpose()?;
        let c = self.conn();
        if let Some(d) = &domain
            && Self::domain_id(&c, d)?.is_none()
        {
            return Err(Error::NoSuchDomain(d.clone()));
        }
        let mut st = c.prepare(
            "SELECT a.id, a.local || '@' || d.name, a.disabled, a.admin, a.created, a.quota
             FROM accounts a JOIN domains d ON d.id = a.domain_id
             WHERE (?1 IS NULL OR d.name = ?1) AND a.local NOT LIKE char(0) || '%'
             ORDER BY d.name, a.local",
        )?;
        let rows = st
            .query_map([domain], |r| {
                Ok(Account {
                    id: r.get(0)?,
                    address: r.get(1)?,
                    disabled: r.get(2)?,
                    admin: r.get(3)?,
                    created: r.get(4)?,
                    quota: r.get::<_, Option<i64>>(5)?.map(|q| q as u64),
                })
            })?
            .collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }

    fn set_password(&self, address: &str, password: &str) -> Result<()> {
        let hash = password::hash(password)?;
        let scram = password::scram(password)?;
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (acct, _) = Self::account_row(&tx, address)?;
        tx.execute(
            "UPDATE accounts SET password = ?1, scram = ?2 WHERE id = ?3",
            params![hash, scram, acct.id],
        )?;
        Self::bump_account_epoch(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn set_disabled(&self, address: &str, disabled: bool) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (acct, _) = Self::account_row(&tx, address)?;
        tx.execute(
            "UPDATE accounts SET disabled = ?1 WHERE id = ?2",
            params![disabled, acct.id],
        )?;
        Self::bump_account_epoch(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn set_filter_scores(
        &self,
        address: &str,
        junk: Option<f32>,
        reject: Option<f32>,
    ) -> Result<()> {
        let c = self.conn();
        let (acct, _) = Self::account_row(&c, address)?;
        c.execute(
            "UPDATE accounts SET junk_score = ?1, reject_score = ?2 WHERE id = ?3",
            params![junk.map(f64::from), reject.map(f64::from), acct.id],
        )?;
        Ok(())
    }

    fn filter_scores(&self, account: AccountId) -> Result<(Option<f32>, Option<f32>)> {
        let c = self.conn();
        let r = c
            .query_row(
                "SELECT junk_score, reject_score FROM accounts WHERE id = ?1",
                [account],
                |r| Ok((r.get::<_, Option<f64>>(0)?, r.get::<_, Option<f64>>(1)?)),
            )
            .optional()?
            .unwrap_or((None, None));
        Ok((r.0.map(|v| v as f32), r.1.map(|v| v as f32)))
    }

    fn set_quota(&self, address: &str, bytes: Option<u64>) -> Result<()> {
        let c = self.conn();
        let (acct, _) = Self::account_row(&c, address)?;
        c.execute(
            "UPDATE accounts SET quota = ?1 WHERE id = ?2",
            params![bytes.map(|b| b as i64), acct.id],
        )?;
        Ok(())
    }

    fn remove_account(&self, address: &str) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (acct, _) = Self::account_row(&tx, address)?;
        // Kept under a local part no address can spell (a NUL, which normalize_address
        // refuses): the address is free, nothing reaches the account (aliases to it answer
        // "disabled"), its mail stays until purged.
        tx.execute(
            "UPDATE accounts SET local = char(0) || ?2 || ':' || id || ':' || local, disabled = 1
             WHERE id = ?1",
            params![acct.id, now()],
        )?;
        Self::bump_account_epoch(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn removed_accounts(&self) -> Result<Vec<String>> {
        let c = self.conn();
        let mut st = c.prepare(
            "SELECT a.local, d.name FROM accounts a JOIN domains d ON d.id = a.domain_id
             WHERE a.local LIKE char(0) || '%' ORDER BY a.id",
        )?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(local, domain)| {
                removed_local(&local).map(|(when, l)| format!("{l}@{domain}\tremoved {when}"))
            })
            .collect())
    }

    fn restore_account(&self, address: &str) -> Result<Account> {
        let a = normalize_address(address)?;
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ids = Self::removed_ids(&tx, &a)?;
        let Some(&(id, _)) = ids.last() else {
            return Err(Error::NoSuchAccount(a.to_string()));
        };
        let alias: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM aliases al JOIN domains d ON d.id = al.domain_id
             WHERE d.name = ?1 AND al.local = ?2)",
            params![a.domain, a.local],
            |r| r.get(0),
        )?;
        if Self::account_row(&tx, address).is_ok() || alias {
            return Err(Error::AccountExists(a.to_string()));
        }
        match tx.execute(
            "UPDATE accounts SET local = ?2, disabled = 0 WHERE id = ?1",
            params![id, a.local],
        ) {
            Err(e) if is_constraint(&e) => return Err(Error::AccountExists(a.to_string())),
            r => r?,
        };
        Self::bump_account_epoch(&tx)?;
        let (acct, _) = Self::account_row(&tx, address)?;
        tx.commit()?;
        Ok(acct)
    }

    fn purge_account(&self, address: &str) -> Result<usize> {
        let a = normalize_address(address)?;
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ids = Self::removed_ids(&tx, &a)?;
        let mut names = Vec::new();
        for &(id, _) in &ids {
            names.extend(Self::release_messages(
                &tx,
                "m.mailbox_id IN (SELECT id FROM mailboxes WHERE account_id = ?1)",
                id,
            )?);
            // Its quarantined copies too, before the cascade would drop their rows and
            // leave their bodies referenced by nothing.
            let held: Vec<i64> = tx
                .prepare("DELETE FROM quarantine WHERE account_id = ?1 RETURNING blob_id")?
                .query_map([id], |r| r.get(0))?
                .collect::<std::result::Result<_, _>>()?;
            names.extend(Self::drop_unreferenced_blobs(&tx, held)?);
            tx.execute("DELETE FROM accounts WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        drop(c);
        self.free_bodies(&names);
        Ok(ids.len())
    }

    fn account_epoch(&self) -> Result<u64> {
        let v: i64 = self.reader().query_row(
            "SELECT value FROM meta WHERE key = 'account_epoch'",
            [],
            |r| r.get(0),
        )?;
        Ok(v as u64)
    }

    fn account_stamp(&self, id: AccountId) -> Result<Option<String>> {
        Ok(self
            .reader()
            .prepare_cached("SELECT password FROM accounts WHERE id = ?1 AND disabled = 0")?
            .query_row([id], |r| r.get(0))
            .optional()?)
    }

    fn authenticate(&self, address: &str, password: &str) -> Result<Option<Account>> {
        Ok(self
            .authenticate_stamped(address, password)?
            .map(|(a, _)| a))
    }

    fn authenticate_stamped(
        &self,
        address: &str,
        password: &str,
    ) -> Result<Option<(Account, String)>> {
        let found = match Self::account_row(&self.reader(), address) {
            Ok(row) => Some(row),
            Err(Error::NoSuchAccount(_) | Error::InvalidAddress(..) | Error::InvalidDomain(..)) => {
                None
            }
            Err(e) => return Err(e),
        };
        match found {
            Some((acct, hash)) => {
                // The stamp is the hash itself (what `account_stamp` reads).
                let ok = password::verify(password, &hash);
                if ok && !acct.disabled {
                    // Accounts from before SCRAM get their credentials at the first login
                    // that proves the password (the hash alone cannot make them).
                    let missing: bool = self
                        .reader()
                        .query_row(
                            "SELECT scram IS NULL FROM accounts WHERE id = ?1",
                            [acct.id],
                            |r| r.get(0),
                        )
                        .unwrap_or(false);
                    if missing && let Ok(scram) = password::scram(password) {
                        let _ = self.conn().execute(
                            "UPDATE accounts SET scram = ?1 WHERE id = ?2 AND password = ?3",
                            params![scram, acct.id, hash],
                        );
                    }
                }
                Ok((ok && !acct.disabled).then_some((acct, hash)))
            }
            None => {
                // Spend the same time as a real check, so timing does not reveal accounts.
                static DUMMY: OnceLock<String> = OnceLock::new();
                let dummy = DUMMY.get_or_init(|| password::hash("dummy").unwrap_or_default());
                let _ = password::verify(password, dummy);
                Ok(None)
            }
        }
    }

    fn scram_credentials(&self, address: &str) -> Result<Option<(Account, String)>> {
        let a = match normalize_address(address) {
            Ok(a) => a,
            Err(_) => return Ok(None),
        };
        let row = self
            .reader()
            .query_row(
                "SELECT a.id, a.disabled, a.admin, a.created, a.quota, a.scram FROM accounts a
                 JOIN domains d ON d.id = a.domain_id WHERE d.name = ?1 AND a.local = ?2",
                params![a.domain, a.local],
                |r| {
                    Ok((
                        Account {
                            id: r.get(0)?,
                            address: a.to_string(),
                            disabled: r.get(1)?,
                            admin: r.get(2)?,
                            created: r.get(3)?,
                            quota: r.get::<_, Option<i64>>(4)?.map(|q| q as u64),
                        },
                        r.get::<_, Option<String>>(5)?,
                    ))
                },
            )
            .optional()?;
        Ok(match row {
            Some((acct, Some(scram))) if !acct.disabled => Some((acct, scram)),
            _ => None,
        })
    }

    fn add_alias(&self, alias: &str, targets: &[String]) -> Result<()> {
        let a = normalize_address(alias)?;
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let domain_id = Self::domain_id(&tx, &a.domain)?
            .ok_or_else(|| Error::NoSuchDomain(a.domain.clone()))?;
        if !Self::lookup_local(&tx, domain_id, &a.local)?.is_empty()
            && Self::account_row(&tx, &a.to_string()).is_ok()
        {
            return Err(Error::AliasIsAccount(a.to_string()));
        }
        if targets.is_empty() {
            return Err(Error::InvalidAddress(
                a.to_string(),
                "an alias needs a target",
            ));
        }
        for t in targets {
            let (acct, _) = Self::account_row(&tx, t)?;
            tx.execute(
                "INSERT OR IGNORE INTO aliases(domain_id, local, account_id) VALUES (?1, ?2, ?3)",
                params![domain_id, a.local, acct.id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn list_aliases(&self) -> Result<Vec<Alias>> {
        let c = self.conn();
        let mut st = c.prepare(
            "SELECT al.local || '@' || d.name, a.local || '@' || ad.name
             FROM aliases al JOIN domains d ON d.id = al.domain_id
             JOIN accounts a ON a.id = al.account_id JOIN domains ad ON ad.id = a.domain_id
             ORDER BY d.name, al.local, a.local",
        )?;
        let mut out: Vec<Alias> = Vec::new();
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (alias, target) = row?;
            match out.last_mut() {
                Some(last) if last.alias == alias => last.targets.push(target),
                _ => out.push(Alias {
                    alias,
                    targets: vec![target],
                }),
            }
        }
        Ok(out)
    }

    fn remove_alias(&self, alias: &str, target: Option<&str>) -> Result<usize> {
        let a = normalize_address(alias)?;
        let c = self.conn();
        let domain_id =
            Self::domain_id(&c, &a.domain)?.ok_or_else(|| Error::NoSuchDomain(a.domain.clone()))?;
        let n = match target {
            None => c.execute(
                "DELETE FROM aliases WHERE domain_id = ?1 AND local = ?2",
                params![domain_id, a.local],
            )?,
            Some(t) => {
                let (acct, _) = Self::account_row(&c, t)?;
                c.execute(
                    "DELETE FROM aliases WHERE domain_id = ?1 AND local = ?2 AND account_id = ?3",
                    params![domain_id, a.local, acct.id],
                )?
            }
        };
        if n == 0 {
            return Err(Error::NoSuchAlias(a.to_string()));
        }
        Ok(n)
    }

    fn resolve(&self, address: &str) -> Result<Resolved> {
        let Some((local, domain)) = address.rsplit_once('@') else {
            return Ok(Resolved::Unknown);
        };
        let Ok(domain) = normalize_domain(domain) else {
            return Ok(Resolved::NotLocal);
        };
        let c = self.reader();
        let Some(domain_id) = Self::domain_id(&c, &domain)? else {
            return Ok(Resolved::NotLocal);
        };
        let local = local.to_lowercase();
        let mut found = Self::lookup_local(&c, domain_id, &local)?;
        // Subaddressing (RFC 5233): user+tag@ reaches user@.
        if found.is_empty()
            && let Some((base, _tag)) = local.split_once('+')
            && !base.is_empty()
        {
            found = Self::lookup_local(&c, domain_id, base)?;
        }
        if found.is_empty() {
            found = Self::lookup_local(&c, domain_id, "*")?;
        }
        if found.is_empty() {
            return Ok(Resolved::Unknown);
        }
        let mut active: Vec<AccountId> = found
            .iter()
            .filter(|(_, disabled)| !disabled)
            .map(|(id, _)| *id)
            .collect();
        active.dedup();
        if active.is_empty() {
            return Ok(Resolved::Disabled);
        }
        Ok(Resolved::Accounts(active))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn gate_bounds_how_many_run_at_once() {
        let gate = super::Gate::new(2);
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..20 {
                        let _pass = gate.enter();
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
