//! The full-text index, built after the commit instead of inside it.
//!
//! Implementation notes:
//! - The FTS5 trigram index lives in its own database, `search.db`, so building it never
//!   holds the write lock of `yubin.db`: a delivery's 250 waits only for the body fsync and
//!   its metadata rows. (Indexing a 256 KiB body inside the delivery transaction made the
//!   single writer the bottleneck; see bench/README.md.)
//! - Every change to the set of bodies (a delivery, a body dropped) appends a row to
//!   `index_pending` in the same `yubin.db` transaction. The indexer replays those rows in
//!   `seq` order and records the last one it applied in `search.db`, in the same
//!   transaction as the index rows, so a crash at any point only means replaying a few rows
//!   (each replay is idempotent: delete the entry, insert the body's current text).
//! - SEARCH first catches the index up ([`Indexer::catch_up`]), so results never miss a
//!   delivered message. Between a commit and the next catch-up the index may lag; nothing
//!   but SEARCH reads it.
//! - The indexer parses each body itself (from the database or its pack): the SMTP session
//!   only parses the header (SORT/THREAD keys), so a large body costs delivery no MIME
//!   parse, and the indexer runs at a lower CPU priority, after a burst of deliveries
//!   rather than during it (at most `MAX_LAG` late).
//! - A missing or stale `search.db` is rebuilt from every body (it holds nothing else).
// Needs `unsafe`: setpriority(2) for the indexer thread.
#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::blobs::BlobDirs;
use crate::index;
use crate::{Error, Result};

pub(super) const SEARCH_FILE: &str = "search.db";
/// 2: contentless (version 1 kept a copy of every text beside the index: 40% of the file).
const SEARCH_VERSION: i64 = 2;
const SEARCH_SCHEMA: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta(key, value) VALUES ('indexed_seq', 0);
-- rowid = blobs.id of yubin.db. Trigram tokens give the case-insensitive substring
-- matching IMAP SEARCH asks for (RFC 9051 §6.4.4). Contentless: the text is in the
-- messages already; contentless_delete lets an expunged body's entry be deleted.
CREATE VIRTUAL TABLE search USING fts5(
    headers, hfrom, hto, hcc, hbcc, subject, body, tokenize = 'trigram',
    content = '', contentless_delete = 1);
";

/// Pending rows applied per `search.db` transaction.
const BATCH: usize = 256;

/// Background indexing starts once deliveries pause this long, or once the oldest
/// unindexed delivery waited `MAX_LAG`. Indexing is most of a large body's CPU (FTS5
/// tokenizing; a third of the server's CPU while 256 KiB messages streamed in) and writes
/// the index beside the deliveries' fsyncs. Waiting only moves that work: SEARCH catches
/// the index up itself, so it never misses a message.
const QUIET: Duration = Duration::from_millis(300);
const MAX_LAG: Duration = Duration::from_secs(10);

/// Open (creating or rebuilding when needed) `search.db`. Run before the store's threads
/// start; queues every body for indexing when the index was (re)created.
pub(super) fn prepare(root: &Path, main: &mut Connection) -> Result<()> {
    let path = root.join(SEARCH_FILE);
    let last_seq: i64 = main
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'index_pending'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let usable = path.exists() && {
        let c = super::connect(&path)?;
        let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let indexed: Option<i64> = if version == SEARCH_VERSION {
            c.query_row(
                "SELECT value FROM meta WHERE key = 'indexed_seq'",
                [],
                |r| r.get(0),
            )
            .optional()?
        } else {
            None
        };
        // An index ahead of yubin.db (restored from an older backup) cannot be trusted.
        indexed.is_some_and(|i| i <= last_seq)
    };
    if usable {
        return Ok(());
    }
    for suffix in ["", "-wal", "-shm"] {
        let p = root.join(format!("{SEARCH_FILE}{suffix}"));
        if let Err(e) = fs::remove_file(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Error::io("remove", p, e));
        }
    }
    let mut c = super::connect(&path)?;
    let tx = c.transaction()?;
    tx.execute_batch(SEARCH_SCHEMA)?;
    tx.pragma_update(None, "user_version", SEARCH_VERSION)?;
    tx.commit()?;
    let queued = main.execute(
        "INSERT INTO index_pending(blob_id) SELECT id FROM blobs ORDER BY id",
        [],
    )?;
    if queued > 0 {
        tracing::info!(bodies = queued, "rebuilding the search index");
    }
    Ok(())
}

struct State {
    /// Reads `index_pending` and `blobs` of yubin.db.
    main: Connection,
    search: Connection,
}

pub(super) struct Indexer {
    blobs: Arc<BlobDirs>,
    state: Mutex<State>,
    /// The last `index_pending.seq` durably applied; older rows may be deleted.
    done: AtomicI64,
    wake: Mutex<mpsc::Sender<()>>,
}

impl Indexer {
    /// Start the indexer and its background thread (which ends when the store is dropped).
    pub(super) fn start(root: &Path, blobs: Arc<BlobDirs>) -> Result<Arc<Self>> {
        let main = super::connect(&root.join(super::DB_FILE))?;
        let search = super::connect(&root.join(SEARCH_FILE))?;
        // Bodies the indexer could not process, and why (`MailStore::unprocessable`).
        search.execute_batch(
            "CREATE TABLE IF NOT EXISTS failed(blob_id INTEGER PRIMARY KEY, reason TEXT NOT NULL)",
        )?;
        let indexed_seq: i64 = search.query_row(
            "SELECT value FROM meta WHERE key = 'indexed_seq'",
            [],
            |r| r.get(0),
        )?;
        let (wake, rx) = mpsc::channel();
        let ix = Arc::new(Indexer {
            blobs,
            state: Mutex::new(State { main, search }),
            done: AtomicI64::new(indexed_seq),
            wake: Mutex::new(wake),
        });
        // The thread holds a weak reference: dropping the store stops it.
        let weak = Arc::downgrade(&ix);
        std::thread::Builder::new()
            .name("store-indexer".into())
            .spawn(move || {
                lower_priority();
                loop {
                    match rx.recv_timeout(Duration::from_secs(30)) {
                        Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    // Wait for a pause in the deliveries (no kick for QUIET), at most
                    // MAX_LAG: a burst then has the cores and the disk to itself.
                    let first = std::time::Instant::now();
                    loop {
                        match rx.recv_timeout(QUIET) {
                            Ok(()) if first.elapsed() < MAX_LAG => {}
                            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => break,
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    while rx.try_recv().is_ok() {}
                    let Some(ix) = weak.upgrade() else { return };
                    if let Err(e) = ix.catch_up() {
                        tracing::error!(error = %e, "search indexer failed; SEARCH will retry");
                    }
                }
            })
            .map_err(|e| Error::io("start indexer thread for", root, e))?;
        ix.kick();
        Ok(ix)
    }

    /// Tell the background thread there is work.
    pub(super) fn kick(&self) {
        let _ = lock(&self.wake).send(());
    }

    /// The `index_pending` rows up to this seq are applied and may be deleted.
    pub(super) fn done_seq(&self) -> i64 {
        self.done.load(Ordering::Acquire)
    }

    /// `catch_up`, unless `c` (a reader of yubin.db) sees nothing pending past what is
    /// applied: SEARCH's usual case, answered without the indexer's lock and search.db's
    /// write lock.
    pub(super) fn catch_up_if_behind(&self, c: &Connection) -> Result<()> {
        let newest: Option<i64> =
            c.query_row("SELECT max(seq) FROM index_pending", [], |r| r.get(0))?;
        if newest.is_none_or(|n| n <= self.done_seq()) {
            return Ok(());
        }
        self.catch_up()
    }

    /// Apply every pending change committed so far. SEARCH calls this first.
    pub(super) fn catch_up(&self) -> Result<()> {
        let mut st = lock(&self.state);
        let st = &mut *st;
        loop {
            // IMMEDIATE, and the position read inside: a CLI process indexing beside the
            // server never moves it backwards.
            let tx = st
                .search
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let from: i64 = tx.query_row(
                "SELECT value FROM meta WHERE key = 'indexed_seq'",
                [],
                |r| r.get(0),
            )?;
            let rows: Vec<(i64, i64)> = st
                .main
                .prepare_cached(
                    "SELECT seq, blob_id FROM index_pending
                     WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?
                .query_map(params![from, BATCH as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<std::result::Result<_, _>>()?;
            let Some(&(last, ..)) = rows.last() else {
                self.done.fetch_max(from, Ordering::AcqRel);
                return Ok(());
            };
            // The current state of each body is what counts, whatever happened before.
            let bodies: BTreeSet<i64> = rows.into_iter().map(|(_, id)| id).collect();
            for id in bodies {
                tx.prepare_cached("DELETE FROM search WHERE rowid = ?1")?
                    .execute([id])?;
                // Gone (its last message expunged since): a later row says so.
                let Some(raw) = self.blobs.load(&st.main, id)? else {
                    continue;
                };
                // A message the indexer cannot handle must not stop it (it would be retried
                // after every restart): its failure is recorded and indexing moves on.
                // (Parsing is bounded, so this is a defence against bugs, not the design.)
                let text = match std::panic::catch_unwind(|| index::extract(&raw)) {
                    Ok(text) => text,
                    Err(panic) => {
                        let why = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "panic".into());
                        tracing::error!(
                            blob = id,
                            reason = why,
                            "message could not be indexed; skipped"
                        );
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO failed(blob_id, reason) VALUES (?1, ?2)",
                        )?
                        .execute(params![id, why])?;
                        continue;
                    }
                };
                tx.prepare_cached(
                    "INSERT INTO search(rowid, headers, hfrom, hto, hcc, hbcc, subject, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    id,
                    text.headers,
                    text.from,
                    text.to,
                    text.cc,
                    text.bcc,
                    text.subject,
                    text.body
                ])?;
            }
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'indexed_seq'",
                [last],
            )?;
            tx.commit()?;
            self.done.fetch_max(last, Ordering::AcqRel);
        }
    }
}

impl Indexer {
    /// Bodies recorded as unprocessable: (blob id, reason).
    pub(super) fn failed(&self) -> Result<Vec<(i64, String)>> {
        let st = lock(&self.state);
        let rows = st
            .search
            .prepare("SELECT blob_id, reason FROM failed ORDER BY blob_id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }

    /// Forget a recorded failure (its messages were removed).
    pub(super) fn forget_failed(&self, blob_id: i64) -> Result<()> {
        let st = lock(&self.state);
        st.search
            .execute("DELETE FROM failed WHERE blob_id = ?1", [blob_id])?;
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Connections roll back on drop and the maps stay consistent: a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Indexing is background work: let sessions and the writer have the CPU first.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on our own thread id has no memory effects.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}
