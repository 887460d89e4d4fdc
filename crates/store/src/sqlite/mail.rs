//! Mailboxes and messages of the embedded backend, and the single writer that
//! group-commits deliveries.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::blobs::BlobDirs;
use super::indexer::Indexer;
use super::snapshot::{BlobRef, Body, Snapshot, blob_key};
use super::{DeadBody, Listeners, SqliteStore, canonical_mailbox, now};
use crate::index;
use crate::{
    AccountId, BayesRow, ChangeListener, Changes, Copied, Delivered, Error, FlagOp, Flags,
    FlagsUpdate, MailStore, Mailbox, MailboxId, MessageMeta, Outbound, Placement, Quarantined,
    Result, Selection, SortInfo, StagedBlob, TextField, TrainingEvent, TrainingItem,
};

/// Largest number of deliveries committed in one transaction.
const MAX_BATCH: usize = 512;
/// Bodies up to this size are kept in the database, larger ones in packs. Most mail is
/// small: for it, one WAL commit per batch replaces an append and fdatasync per message.
/// Past this, writing the body twice (WAL, then checkpoint) costs more than a pack append.
const INLINE_MAX: usize = 64 * 1024;

pub(super) struct Job {
    blob: StagedBlob,
    /// Each recipient's mailbox, and flags added to the message's own.
    placements: Vec<Placement>,
    /// A placement's missing mailbox means INBOX (inbound filing) rather than an error
    /// (APPEND, COPY: the client is told to create it).
    inbox_fallback: bool,
    flags: Flags,
    internal_date: i64,
    outbound: Option<Outbound>,
    /// The reverse-path, kept with quarantined copies.
    mail_from: String,
    /// More messages for the same recipients and mailbox, all or none with this one
    /// (IMAP MULTIAPPEND, RFC 3502).
    more: Vec<(StagedBlob, Flags, i64)>,
    reply: mpsc::SyncSender<Result<(Vec<Delivered>, Option<i64>)>>,
}

/// A mailbox's row; its counts come from its snapshot ([`SqliteStore::with_counts`]).
const MAILBOX_COLUMNS: &str = "b.id, b.name, b.uidvalidity, b.uid_next, b.highest_modseq,
    b.special_use, EXISTS (SELECT 1 FROM subscriptions s
                           WHERE s.account_id = b.account_id AND s.name = b.name)";

fn mailbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Mailbox> {
    Ok(Mailbox {
        id: r.get(0)?,
        name: r.get(1)?,
        uidvalidity: r.get(2)?,
        uid_next: r.get(3)?,
        highest_modseq: r.get::<_, i64>(4)? as u64,
        special_use: r.get(5)?,
        subscribed: r.get(6)?,
        messages: 0,
        unseen: 0,
        recent: 0,
        size: 0,
        deleted: 0,
    })
}

const MESSAGE_COLUMNS: &str =
    "uid, size, internal_date, flags, keywords, modseq, coalesce(saved, internal_date)";
/// The same with `messages m` joined to `blobs bl`.
const MESSAGE_BLOB_COLUMNS: &str = "m.uid, m.size, m.internal_date, m.flags, m.keywords, m.modseq,
     coalesce(m.saved, m.internal_date), bl.id, bl.name, bl.data IS NULL AND bl.pack IS NULL";

fn message_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageMeta> {
    let keywords: String = r.get(4)?;
    Ok(MessageMeta {
        uid: r.get(0)?,
        size: r.get::<_, i64>(1)? as u64,
        internal_date: r.get(2)?,
        flags: Flags {
            system: r.get(3)?,
            keywords: keywords.split_whitespace().map(str::to_owned).collect(),
        },
        modseq: r.get::<_, i64>(5)? as u64,
        saved: r.get(6)?,
    })
}

/// A message row followed by its body's name (snapshot.rs).
fn message_and_blob(r: &rusqlite::Row<'_>) -> rusqlite::Result<(MessageMeta, BlobRef)> {
    let file: bool = r.get(9)?;
    let key = if file {
        blob_key(&r.get::<_, String>(8)?)
    } else {
        [0; 16]
    };
    Ok((message_row(r)?, BlobRef { id: r.get(7)?, key }))
}

fn keywords_text(f: &Flags) -> String {
    f.keywords.join(" ")
}

/// Mailbox names: `/`-separated, no empty levels, no wildcards or control characters.
fn validate_name(name: &str) -> Result<&str> {
    let bad = |why| Err(Error::InvalidMailboxName(name.to_owned(), why));
    let name = canonical_mailbox(name);
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 1000 {
        return bad("longer than 1000 bytes");
    }
    if name.split('/').any(str::is_empty) {
        return bad("empty hierarchy level");
    }
    if name.chars().any(|c| c.is_control() || c == '*' || c == '%') {
        return bad("control characters and the wildcards * and % are not allowed");
    }
    Ok(name)
}

impl SqliteStore {
    fn mailbox_in(c: &Connection, account: AccountId, name: &str) -> Result<Mailbox> {
        let name = canonical_mailbox(name);
        c.prepare_cached(&format!(
            "SELECT {MAILBOX_COLUMNS} FROM mailboxes b WHERE b.account_id = ?1 AND b.name = ?2"
        ))?
        .query_row(params![account, name], mailbox_row)
        .optional()?
        .ok_or_else(|| Error::NoSuchMailbox(name.to_owned()))
    }

    /// SEARCH by reading every body of the list (each once, however many copies): for
    /// needles the trigram index cannot answer. Case-insensitive like the index.
    fn search_bodies(&self, snap: &Snapshot, field: TextField, needle: &str) -> Result<Vec<u32>> {
        let needle = needle.to_lowercase();
        let c = self.reader();
        let mut known: HashMap<i64, bool> = HashMap::new();
        let mut out = Vec::new();
        for (m, b) in snap.msgs.iter().zip(snap.blobs.iter()) {
            let hit = match known.get(&b.id) {
                Some(&hit) => hit,
                None => {
                    let hit = self.blob_dirs.load(&c, b.id)?.is_some_and(|raw| {
                        let t = index::extract(&raw);
                        let has = |s: &str| s.to_lowercase().contains(&needle);
                        match field {
                            TextField::From => has(&t.from),
                            TextField::To => has(&t.to),
                            TextField::Cc => has(&t.cc),
                            TextField::Bcc => has(&t.bcc),
                            TextField::Subject => has(&t.subject),
                            TextField::Body => has(&t.body),
                            TextField::Text => has(&t.headers) || has(&t.body),
                        }
                    });
                    known.insert(b.id, hit);
                    hit
                }
            };
            if hit {
                out.push(m.uid);
            }
        }
        Ok(out)
    }

    /// A mailbox's messages, from the shared cache brought up to date (snapshot.rs).
    pub(super) fn snapshot(&self, mailbox: MailboxId) -> Result<Snapshot> {
        let head = |c: &Connection| -> Result<(u32, u32, u64)> {
            let (uidvalidity, uid_next, highest): (u32, u32, i64) = c
                .prepare_cached(
                    "SELECT uidvalidity, uid_next, highest_modseq FROM mailboxes WHERE id = ?1",
                )?
                .query_row([mailbox], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?
                .ok_or_else(|| Error::NoSuchMailbox(format!("#{mailbox}")))?;
            Ok((uidvalidity, uid_next, highest as u64))
        };
        let mut c = self.reader();
        // The usual case, unchanged since cached: one indexed lookup, no transaction.
        let (uidvalidity, _, highest) = head(&c)?;
        if let Some(s) = self.snapshots.get(mailbox)
            && s.uidvalidity == uidvalidity
            && s.highest_modseq == highest
        {
            return Ok(s);
        }
        // One read transaction: the row and the changes are of the same moment.
        let tx = c.transaction()?;
        let (uidvalidity, uid_next, highest) = head(&tx)?;
        let cached = self
            .snapshots
            .get(mailbox)
            .filter(|s| s.uidvalidity == uidvalidity && s.highest_modseq <= highest);
        let msgs = match cached {
            Some(s) if s.highest_modseq == highest => return Ok(s),
            Some(s) => {
                let since = s.highest_modseq as i64;
                let changed = tx
                    .prepare_cached(&format!(
                        "SELECT {MESSAGE_BLOB_COLUMNS} FROM messages m
                         JOIN blobs bl ON bl.id = m.blob_id
                         WHERE m.mailbox_id = ?1 AND m.modseq > ?2 ORDER BY m.uid"
                    ))?
                    .query_map(params![mailbox, since], message_and_blob)?
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let expunged: Vec<u32> = tx
                    .prepare_cached(
                        "SELECT uid FROM expunged WHERE mailbox_id = ?1 AND modseq > ?2
                         ORDER BY uid",
                    )?
                    .query_map(params![mailbox, since], |r| r.get(0))?
                    .collect::<std::result::Result<_, _>>()?;
                s.merged(changed, &expunged)
            }
            None => tx
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_BLOB_COLUMNS} FROM messages m
                     JOIN blobs bl ON bl.id = m.blob_id WHERE m.mailbox_id = ?1 ORDER BY m.uid"
                ))?
                .query_map([mailbox], message_and_blob)?
                .collect::<std::result::Result<Vec<_>, _>>()?
                .into_iter()
                .unzip(),
        };
        drop(tx);
        let snap = Snapshot::new(uidvalidity, uid_next, highest, msgs);
        self.snapshots.put(mailbox, snap.clone());
        Ok(snap)
    }

    /// One message's bytes: where the cached list says the body is (no SQL per FETCH for
    /// files), else looked up. Blob ids and names are never reused, so an entry older
    /// than an expunge finds nothing rather than another message.
    fn read_in(
        &self,
        c: &Connection,
        snap: Option<&Snapshot>,
        mailbox: MailboxId,
        uid: u32,
    ) -> Result<Vec<u8>> {
        let blob = match snap.and_then(|s| s.blob(uid)) {
            // The fast path: no SQL at all.
            Some(Body::File(name, size)) => {
                return self
                    .read_file(&name, size)?
                    .ok_or(Error::NoSuchMessage(uid));
            }
            Some(Body::ById(id)) => id,
            None => c
                .prepare_cached("SELECT blob_id FROM messages WHERE mailbox_id = ?1 AND uid = ?2")?
                .query_row(params![mailbox, uid], |r| r.get(0))
                .optional()?
                .ok_or(Error::NoSuchMessage(uid))?,
        };
        self.load_body(c, blob)?.ok_or(Error::NoSuchMessage(uid))
    }

    /// The cached list, if it is what the mailbox row just read says is current (the
    /// check `snapshot` would repeat with a second query).
    fn current_snapshot(&self, mb: &Mailbox) -> Option<Snapshot> {
        self.snapshots
            .get(mb.id)
            .filter(|s| s.uidvalidity == mb.uidvalidity && s.highest_modseq == mb.highest_modseq)
    }

    fn selection(&self, mb: Mailbox, s: Snapshot) -> Selection {
        Selection {
            mailbox: self.counted(mb, &s),
            messages: s.msgs,
            keywords: s.keywords.to_vec(),
            first_unseen: s.first_unseen,
        }
    }

    /// Fill a mailbox's counts (and its UIDNEXT/HIGHESTMODSEQ, of the same moment).
    fn with_counts(&self, mb: Mailbox) -> Result<Mailbox> {
        let s = self.snapshot(mb.id)?;
        Ok(self.counted(mb, &s))
    }

    fn counted(&self, mut mb: Mailbox, s: &Snapshot) -> Mailbox {
        if let Ok(first) = self.first_recent(mb.id) {
            let seen = s.msgs.partition_point(|m| m.uid < first);
            mb.recent = (s.msgs.len() - seen) as u64;
        }
        mb.uid_next = s.uid_next;
        mb.highest_modseq = s.highest_modseq;
        mb.messages = s.msgs.len() as u64;
        mb.unseen = s.unseen;
        mb.deleted = s.deleted;
        mb.size = s.size;
        mb
    }

    fn mailbox_meta(
        c: &Connection,
        mailbox: MailboxId,
    ) -> Result<(AccountId, u32, Option<String>)> {
        c.prepare_cached(
            "SELECT account_id, uidvalidity, special_use FROM mailboxes WHERE id = ?1",
        )?
        .query_row([mailbox], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?
        .ok_or_else(|| Error::NoSuchMailbox(format!("#{mailbox}")))
    }

    /// Take the next MODSEQ of a mailbox.
    fn bump_modseq(tx: &Transaction<'_>, mailbox: MailboxId) -> Result<u64> {
        let m: i64 = tx
            .prepare_cached(
                "UPDATE mailboxes SET highest_modseq = highest_modseq + 1 WHERE id = ?1
                 RETURNING highest_modseq",
            )?
            .query_row([mailbox], |r| r.get(0))?;
        Ok(m as u64)
    }

    fn insert_mailbox(tx: &Transaction<'_>, account: AccountId, name: &str) -> Result<()> {
        let uv = Self::next_uidvalidity(tx)?;
        tx.execute(
            "INSERT INTO mailboxes(id, account_id, name, uidvalidity) VALUES (?1, ?2, ?3, ?4)",
            params![Self::next_mailbox_id(tx)?, account, name, uv],
        )?;
        Ok(())
    }

    /// The first UID not yet given as `\Recent` (memory first, then the mailbox's row).
    fn first_recent(&self, mailbox: MailboxId) -> Result<u32> {
        if let Some(&f) = self.recent_claims().first.get(&mailbox) {
            return Ok(f);
        }
        let stored: u32 = self
            .reader()
            .prepare_cached("SELECT recent_uid FROM mailboxes WHERE id = ?1")?
            .query_row([mailbox], |r| r.get(0))
            .optional()?
            .unwrap_or(1);
        Ok(*self.recent_claims().first.entry(mailbox).or_insert(stored))
    }

    fn recent_claims(&self) -> std::sync::MutexGuard<'_, super::RecentClaims> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write the claims made since the last transaction into this one.
    fn write_recent(&self, tx: &Transaction<'_>) -> Result<Vec<(MailboxId, u32)>> {
        let claims: Vec<(MailboxId, u32)> = self
            .recent_claims()
            .unwritten
            .iter()
            .map(|(&m, &u)| (m, u))
            .collect();
        for (m, u) in &claims {
            tx.prepare_cached(
                "UPDATE mailboxes SET recent_uid = max(recent_uid, ?2) WHERE id = ?1",
            )?
            .execute(params![m, u])?;
        }
        Ok(claims)
    }

    fn recent_written(&self, claims: &[(MailboxId, u32)]) {
        let mut r = self.recent_claims();
        for (m, u) in claims {
            if r.unwritten.get(m) == Some(u) {
                r.unwritten.remove(m);
            }
        }
    }

    fn write_then_notify<T>(
        &self,
        f: impl Fn(&Transaction<'_>) -> Result<(T, Vec<MailboxId>, Vec<DeadBody>)>,
    ) -> Result<T> {
        let attempt = || -> Result<(T, Vec<MailboxId>, Vec<DeadBody>)> {
            let mut c = self.conn();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            let claims = self.write_recent(&tx)?;
            tx.commit()?;
            self.recent_written(&claims);
            Ok(out)
        };
        // A full disk must not stop a user from flagging and expunging mail: the reserve
        // makes room for this write (reserve.rs).
        let (value, touched, dead_blobs) = match attempt() {
            Err(e) if super::reserve::is_disk_full(&e) && self.reserve.release() => attempt()?,
            r => r?,
        };
        if !dead_blobs.is_empty() {
            self.indexer.kick();
        }
        self.free_bodies(&dead_blobs);
        self.listeners.notify(&touched);
        Ok(value)
    }
}

impl SqliteStore {
    fn write_job(
        &self,
        blob: StagedBlob,
        placements: Vec<Placement>,
        inbox_fallback: bool,
        flags: &Flags,
        internal_date: i64,
        outbound: &Outbound,
    ) -> Result<(Vec<Delivered>, Option<i64>)> {
        let mail_from = outbound.mail_from.clone();
        let outbound = (!outbound.rcpts.is_empty()).then(|| outbound.clone());
        if placements.is_empty() && outbound.is_none() {
            if let Some(at) = blob.packed {
                self.blob_dirs.packs.release([(at, blob.size)]);
            }
            return Err(Error::NoRecipients);
        }
        let (reply, rx) = mpsc::sync_channel(1);
        let job = Job {
            blob,
            inbox_fallback,
            placements,
            flags: flags.clone(),
            internal_date,
            outbound,
            mail_from,
            more: Vec::new(),
            reply,
        };
        self.writer.send(job).map_err(|_| Error::WriterGone)?;
        rx.recv().map_err(|_| Error::WriterGone)?
    }
}

impl MailStore for SqliteStore {
    fn stage(&self, parts: &[&[u8]]) -> Result<StagedBlob> {
        // No new mail while the space kept for deleting mail is used up.
        self.reserve.check_delivery()?;
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| {
            Error::io(
                "random name for",
                &self.root,
                std::io::Error::other(e.to_string()),
            )
        })?;
        let name: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let size: usize = parts.iter().map(|p| p.len()).sum();
        if size <= INLINE_MAX {
            // Kept in the database: durable with the commit that delivers it.
            let data = parts.concat();
            return Ok(StagedBlob {
                name,
                size: size as u64,
                text: index::extract_envelope(&data),
                data: Some(data),
                packed: None,
            });
        }
        let at = self
            .blob_dirs
            .packs
            .append(&id, parts, size as u64)
            .map_err(|e| Error::io("append to", self.blob_dirs.packs.dir(), e))?;
        let text = match parts {
            [one] => index::extract_envelope(one),
            _ => index::extract_envelope(&parts.concat()),
        };
        Ok(StagedBlob {
            name,
            size: size as u64,
            text,
            data: None,
            packed: Some(at),
        })
    }

    fn deliver(
        &self,
        blob: StagedBlob,
        accounts: &[AccountId],
        mailbox: &str,
        flags: &Flags,
        internal_date: i64,
    ) -> Result<Vec<Delivered>> {
        let placements = accounts
            .iter()
            .map(|&account| Placement {
                mailbox: canonical_mailbox(mailbox).to_owned(),
                ..Placement::inbox(account)
            })
            .collect();
        self.write_job(
            blob,
            placements,
            false,
            flags,
            internal_date,
            &Outbound::default(),
        )
        .map(|(d, _)| d)
    }

    fn deliver_many(
        &self,
        messages: Vec<(StagedBlob, Flags, i64)>,
        account: AccountId,
        mailbox: &str,
    ) -> Result<Vec<Delivered>> {
        let mut it = messages.into_iter();
        let Some((blob, flags, internal_date)) = it.next() else {
            return Ok(Vec::new());
        };
        let (reply, rx) = mpsc::sync_channel(1);
        let job = Job {
            blob,
            inbox_fallback: false,
            placements: vec![Placement {
                mailbox: canonical_mailbox(mailbox).to_owned(),
                ..Placement::inbox(account)
            }],
            flags,
            internal_date,
            outbound: None,
            mail_from: String::new(),
            more: it.collect(),
            reply,
        };
        self.writer.send(job).map_err(|_| Error::WriterGone)?;
        rx.recv().map_err(|_| Error::WriterGone)?.map(|(d, _)| d)
    }

    fn accept(
        &self,
        blob: StagedBlob,
        placements: &[Placement],
        outbound: &Outbound,
        internal_date: i64,
    ) -> Result<(Vec<Delivered>, Option<i64>)> {
        let placements = placements
            .iter()
            .map(|p| Placement {
                mailbox: canonical_mailbox(&p.mailbox).to_owned(),
                ..p.clone()
            })
            .collect();
        self.write_job(
            blob,
            placements,
            true,
            &Flags::default(),
            internal_date,
            outbound,
        )
    }

    fn list_mailboxes(&self, account: AccountId) -> Result<Vec<Mailbox>> {
        let c = self.reader();
        let mut st = c.prepare(&format!(
            "SELECT {MAILBOX_COLUMNS} FROM mailboxes b WHERE b.account_id = ?1
             ORDER BY b.name = 'INBOX' DESC, b.name"
        ))?;
        let rows: Vec<Mailbox> = st
            .query_map([account], mailbox_row)?
            .collect::<std::result::Result<_, _>>()?;
        drop(st);
        drop(c);
        rows.into_iter().map(|mb| self.with_counts(mb)).collect()
    }

    fn mailbox(&self, account: AccountId, name: &str) -> Result<Mailbox> {
        let mb = Self::mailbox_in(&self.reader(), account, name)?;
        self.with_counts(mb)
    }

    fn create_mailbox(&self, account: AccountId, name: &str) -> Result<Mailbox> {
        self.create_special_mailbox(account, name, None)
    }

    fn create_special_mailbox(
        &self,
        account: AccountId,
        name: &str,
        special_use: Option<&str>,
    ) -> Result<Mailbox> {
        let name = validate_name(name)?;
        self.write_then_notify(|tx| {
            if Self::mailbox_in(tx, account, name).is_ok() {
                return Err(Error::MailboxExists(name.to_owned()));
            }
            let count: i64 = tx.query_row(
                "SELECT COUNT(*) FROM mailboxes WHERE account_id = ?1",
                [account],
                |r| r.get(0),
            )?;
            if count as usize + name.split('/').count() > super::MAX_MAILBOXES {
                return Err(Error::Limit(
                    "too many mailboxes (10,000 per account); delete some",
                ));
            }
            // RFC 9051 §6.3.4: create any missing superior names.
            let mut prefix = String::new();
            for level in name.split('/') {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(level);
                if Self::mailbox_in(tx, account, &prefix).is_err() {
                    Self::insert_mailbox(tx, account, &prefix)?;
                }
            }
            if let Some(u) = special_use {
                tx.execute(
                    "UPDATE mailboxes SET special_use = ?3 WHERE account_id = ?1 AND name = ?2",
                    params![account, name, u],
                )?;
            }
            // Listeners hear of it under the new id and INBOX's (sessions that follow the
            // account's mailboxes, RFC 5465 NOTIFY, know the latter).
            let mb = Self::mailbox_in(tx, account, name)?;
            let mut touched = vec![mb.id];
            touched.extend(Self::mailbox_in(tx, account, "INBOX").ok().map(|m| m.id));
            Ok((mb, touched, vec![]))
        })
    }

    fn delete_mailbox(&self, account: AccountId, name: &str) -> Result<()> {
        let name = canonical_mailbox(name);
        if name == "INBOX" {
            return Err(Error::InboxNotDeletable);
        }
        self.write_then_notify(|tx| {
            let mb = Self::mailbox_in(tx, account, name)?;
            let children: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM mailboxes WHERE account_id = ?1
                 AND substr(name, 1, length(?2) + 1) = ?2 || '/')",
                params![account, name],
                |r| r.get(0),
            )?;
            if children {
                return Err(Error::MailboxHasChildren(name.to_owned()));
            }
            let dead = Self::release_messages(tx, "m.mailbox_id = ?1", mb.id)?;
            tx.execute("DELETE FROM mailboxes WHERE id = ?1", [mb.id])?;
            tx.execute("DELETE FROM metadata WHERE mailbox_id = ?1", [mb.id])?;
            Ok((mb.id, vec![mb.id], dead))
        })
        .map(|id| {
            self.snapshots.forget(id);
            // The id is never reused; its \Recent claims go with it.
            let mut r = self.recent_claims();
            r.first.remove(&id);
            r.unwritten.remove(&id);
        })
    }

    fn rename_mailbox(&self, account: AccountId, from: &str, to: &str) -> Result<()> {
        let from = canonical_mailbox(from);
        let to = validate_name(to)?;
        if to == "INBOX" {
            return Err(Error::MailboxExists("INBOX".into()));
        }
        self.write_then_notify(|tx| {
            let src = Self::mailbox_in(tx, account, from)?;
            if Self::mailbox_in(tx, account, to).is_ok() {
                return Err(Error::MailboxExists(to.to_owned()));
            }
            if to.starts_with(&format!("{from}/")) {
                return Err(Error::InvalidMailboxName(
                    to.to_owned(),
                    "cannot move a mailbox into itself",
                ));
            }
            // Parents of the new name.
            if let Some((parent, _)) = to.rsplit_once('/') {
                let mut prefix = String::new();
                for level in parent.split('/') {
                    if !prefix.is_empty() {
                        prefix.push('/');
                    }
                    prefix.push_str(level);
                    if Self::mailbox_in(tx, account, &prefix).is_err() {
                        Self::insert_mailbox(tx, account, &prefix)?;
                    }
                }
            }
            if from == "INBOX" {
                // RFC 9051 §6.3.6: messages move to the new mailbox; INBOX stays, empty.
                Self::insert_mailbox(tx, account, to)?;
                let dst = Self::mailbox_in(tx, account, to)?;
                let uids: Vec<u32> = {
                    let mut st =
                        tx.prepare("SELECT uid FROM messages WHERE mailbox_id = ?1 ORDER BY uid")?;
                    st.query_map([src.id], |r| r.get(0))?
                        .collect::<std::result::Result<_, _>>()?
                };
                copy_in(tx, src.id, &uids, dst.id, true)?;
                return Ok(((), vec![src.id, dst.id], vec![]));
            }
            tx.execute(
                "UPDATE mailboxes SET name = ?3 || substr(name, length(?2) + 1)
                 WHERE account_id = ?1 AND (name = ?2 OR substr(name, 1, length(?2) + 1) = ?2 || '/')",
                params![account, from, to],
            )?;
            // Subscriptions follow (as Dovecot's do); one already under the new name stays.
            tx.execute(
                "UPDATE OR REPLACE subscriptions SET name = ?3 || substr(name, length(?2) + 1)
                 WHERE account_id = ?1 AND (name = ?2 OR substr(name, 1, length(?2) + 1) = ?2 || '/')",
                params![account, from, to],
            )?;
            Ok(((), vec![src.id], vec![]))
        })
    }

    fn subscribe(&self, account: AccountId, name: &str, subscribed: bool) -> Result<()> {
        // RFC 3501 §6.3.6: a name may be subscribed whether or not a mailbox has it.
        let name = if subscribed {
            validate_name(name)?
        } else {
            canonical_mailbox(name)
        };
        let sql = if subscribed {
            "INSERT OR IGNORE INTO subscriptions(account_id, name) VALUES (?1, ?2)"
        } else {
            "DELETE FROM subscriptions WHERE account_id = ?1 AND name = ?2"
        };
        if subscribed {
            let count: i64 = self.reader().query_row(
                "SELECT COUNT(*) FROM subscriptions WHERE account_id = ?1",
                [account],
                |r| r.get(0),
            )?;
            if count as usize >= super::MAX_SUBSCRIPTIONS {
                return Err(Error::Limit(
                    "too many subscriptions (10,000 per account); unsubscribe some",
                ));
            }
        }
        self.conn().execute(sql, params![account, name])?;
        // RFC 5465 SubscriptionChange: told under INBOX's id (the name may have no mailbox).
        if let Ok(inbox) = Self::mailbox_in(&self.conn(), account, "INBOX") {
            self.listeners.notify(&[inbox.id]);
        }
        Ok(())
    }

    fn metadata(
        &self,
        account: AccountId,
        mailbox: Option<MailboxId>,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT entry, value FROM metadata WHERE account_id = ?1 AND mailbox_id = ?2
             ORDER BY entry",
        )?;
        let rows = st
            .query_map(params![account, mailbox.unwrap_or(0)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }

    fn set_metadata(
        &self,
        account: AccountId,
        mailbox: Option<MailboxId>,
        entries: &[(String, Option<Vec<u8>>)],
    ) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (entry, value) in entries {
            let entry = entry.to_ascii_lowercase();
            match value {
                Some(v) => tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO metadata(account_id, mailbox_id, entry, value)
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![account, mailbox.unwrap_or(0), entry, v])?,
                None => tx
                    .prepare_cached(
                        "DELETE FROM metadata WHERE account_id = ?1 AND mailbox_id = ?2
                         AND entry = ?3",
                    )?
                    .execute(params![account, mailbox.unwrap_or(0), entry])?,
            };
        }
        // Annotations are outside the storage quota: bounded per account on their own.
        let total: i64 = tx.query_row(
            "SELECT COALESCE(SUM(length(entry) + length(value)), 0) FROM metadata
             WHERE account_id = ?1",
            [account],
            |r| r.get(0),
        )?;
        if total as u64 > super::MAX_METADATA_BYTES {
            return Err(Error::Limit(
                "annotations would exceed 16 MiB for this account; remove some",
            ));
        }
        tx.commit()?;
        Ok(())
    }

    fn subscriptions(&self, account: AccountId) -> Result<Vec<String>> {
        let c = self.reader();
        let mut st =
            c.prepare_cached("SELECT name FROM subscriptions WHERE account_id = ?1 ORDER BY name")?;
        let names = st
            .query_map([account], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        Ok(names)
    }

    fn select(&self, account: AccountId, name: &str) -> Result<Selection> {
        let mb = Self::mailbox_in(&self.reader(), account, name)?;
        let s = match self.current_snapshot(&mb) {
            Some(s) => s,
            None => self.snapshot(mb.id)?,
        };
        Ok(self.selection(mb, s))
    }

    fn select_cached(&self, account: AccountId, name: &str) -> Result<Option<Selection>> {
        let mb = Self::mailbox_in(&self.reader(), account, name)?;
        Ok(self.current_snapshot(&mb).map(|s| self.selection(mb, s)))
    }

    fn recent(&self, mailbox: MailboxId, uid_next: u32, claim: bool) -> Result<u32> {
        let first = self.first_recent(mailbox)?;
        if claim && uid_next > first {
            let mut r = self.recent_claims();
            // Another session may have claimed in between: the higher claim stands.
            let now = r.first.entry(mailbox).or_insert(first);
            let mine = *now;
            if uid_next > *now {
                *now = uid_next;
                r.unwritten.insert(mailbox, uid_next);
            }
            return Ok(mine);
        }
        Ok(first)
    }

    fn messages(&self, mailbox: MailboxId) -> Result<Arc<Vec<MessageMeta>>> {
        Ok(self.snapshot(mailbox)?.msgs)
    }

    fn changes(&self, mailbox: MailboxId, since: u64) -> Result<Changes> {
        let mut guard = self.reader();
        // One read transaction: the three reads see the same commit. Apart, a message
        // expunged between them was both "changed" (new) and "expunged", and a session
        // sent an EXPUNGE for a message it had never announced.
        let c = guard.transaction()?;
        let (highest_modseq, uid_next): (i64, u32) = c
            .prepare_cached("SELECT highest_modseq, uid_next FROM mailboxes WHERE id = ?1")?
            .query_row([mailbox], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .ok_or_else(|| Error::NoSuchMailbox(format!("#{mailbox}")))?;
        if highest_modseq as u64 <= since {
            return Ok(Changes {
                highest_modseq: highest_modseq as u64,
                uid_next,
                ..Changes::default()
            });
        }
        let changed = c
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = ?1 AND modseq > ?2
                 ORDER BY uid"
            ))?
            .query_map(params![mailbox, since as i64], message_row)?
            .collect::<std::result::Result<_, _>>()?;
        let expunged = c
            .prepare_cached(
                "SELECT uid FROM expunged WHERE mailbox_id = ?1 AND modseq > ?2 ORDER BY uid",
            )?
            .query_map(params![mailbox, since as i64], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        Ok(Changes {
            highest_modseq: highest_modseq as u64,
            uid_next,
            changed,
            expunged,
        })
    }

    fn read(&self, mailbox: MailboxId, uid: u32) -> Result<Vec<u8>> {
        let snap = self.snapshots.get(mailbox);
        self.read_in(&self.reader(), snap.as_ref(), mailbox, uid)
    }

    fn read_many(&self, mailbox: MailboxId, uids: &[u32]) -> Vec<Result<Vec<u8>>> {
        let snap = self.snapshots.get(mailbox);
        let mut c = self.reader();
        // One read transaction for all: SQLite locks and unlocks once, not per body.
        match c.transaction() {
            Ok(tx) => uids
                .iter()
                .map(|&u| self.read_in(&tx, snap.as_ref(), mailbox, u))
                .collect(),
            Err(e) => {
                let e = Error::from(e);
                uids.iter()
                    .map(|_| {
                        Err(Error::io(
                            "read",
                            &self.root,
                            std::io::Error::other(e.to_string()),
                        ))
                    })
                    .collect()
            }
        }
    }

    fn store_flags(
        &self,
        mailbox: MailboxId,
        uids: &[u32],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: Option<u64>,
    ) -> Result<FlagsUpdate> {
        if flags.keywords.is_empty() && unchanged_since.is_none() {
            return self.write_then_notify(|tx| {
                let (out, changed) = store_system_flags(tx, mailbox, uids, op, flags.system)?;
                let touched = if changed { vec![mailbox] } else { vec![] };
                Ok((out, touched, vec![]))
            });
        }
        self.write_then_notify(|tx| {
            let mut out = FlagsUpdate::default();
            // One MODSEQ for every message this command changes (RFC 7162 §3.1.3 asks
            // only that it be new and higher): one counter update, not one per message.
            let mut modseq = None;
            for &uid in uids {
                let Some(mut meta) = tx
                    .prepare_cached(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = ?1 AND uid = ?2"
                    ))?
                    .query_row(params![mailbox, uid], message_row)
                    .optional()?
                else {
                    continue;
                };
                if unchanged_since.is_some_and(|u| meta.modseq > u) {
                    out.modified.push(uid);
                    out.messages.push(meta);
                    continue;
                }
                let before = meta.flags.clone();
                if meta.flags.apply(op, flags) {
                    label_by_keyword(tx, mailbox, uid, &before, &meta.flags)?;
                    meta.modseq = match modseq {
                        Some(m) => m,
                        None => *modseq.insert(Self::bump_modseq(tx, mailbox)?),
                    };
                    tx.prepare_cached(
                        "UPDATE messages SET flags = ?3, keywords = ?4, modseq = ?5
                         WHERE mailbox_id = ?1 AND uid = ?2",
                    )?
                    .execute(params![
                        mailbox,
                        uid,
                        meta.flags.system,
                        keywords_text(&meta.flags),
                        meta.modseq as i64
                    ])?;
                }
                out.messages.push(meta);
            }
            let touched = if modseq.is_some() {
                vec![mailbox]
            } else {
                vec![]
            };
            Ok((out, touched, vec![]))
        })
    }

    fn expunge(&self, mailbox: MailboxId, uids: Option<&[u32]>) -> Result<Vec<u32>> {
        self.write_then_notify(|tx| {
            let deleted: Vec<u32> = tx
                .prepare_cached(
                    "SELECT uid FROM messages WHERE mailbox_id = ?1 AND flags & 8 != 0 ORDER BY uid",
                )?
                .query_map([mailbox], |r| r.get(0))?
                .collect::<std::result::Result<_, _>>()?;
            let chosen: Vec<u32> = match uids {
                None => deleted,
                Some(set) => {
                    let set: HashSet<u32> = set.iter().copied().collect();
                    deleted.into_iter().filter(|u| set.contains(u)).collect()
                }
            };
            if chosen.is_empty() {
                return Ok((chosen, vec![], vec![]));
            }
            let dead = remove_messages(tx, mailbox, &chosen)?;
            Ok((chosen, vec![mailbox], dead))
        })
    }

    fn copy(&self, from: MailboxId, uids: &[u32], to: MailboxId, remove: bool) -> Result<Copied> {
        self.write_then_notify(|tx| {
            let copied = copy_in(tx, from, uids, to, remove)?;
            let touched = if remove { vec![from, to] } else { vec![to] };
            Ok((copied, touched, vec![]))
        })
    }

    fn training_events(&self, account: AccountId) -> Result<Vec<TrainingEvent>> {
        let c = self.reader();
        let mut st = c.prepare(
            "SELECT t.spam, t.created, coalesce(b.size, 0) FROM training t
             LEFT JOIN blobs b ON b.id = t.blob_id WHERE t.account_id = ?1 ORDER BY t.id",
        )?;
        let rows = st
            .query_map([account], |r| {
                Ok(TrainingEvent {
                    spam: r.get(0)?,
                    created: r.get(1)?,
                    size: r.get::<_, i64>(2)? as u64,
                })
            })?
            .collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }

    fn training_pending(&self, after: i64, limit: usize) -> Result<Vec<TrainingItem>> {
        let c = self.reader();
        let rows: Vec<PendingRow> = c
            .prepare(
                "SELECT t.id, t.account_id, t.blob_id, t.spam, t.features,
                        (SELECT p.spam FROM training p WHERE p.blob_id = t.blob_id
                           AND p.account_id IS t.account_id AND p.id < t.id
                         ORDER BY p.id DESC LIMIT 1)
                 FROM training t WHERE t.id > ?1 ORDER BY t.id LIMIT ?2",
            )?
            .query_map(params![after, limit as i64], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<std::result::Result<_, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, account, blob, spam, features, previous) in rows {
            let message = match (&features, blob) {
                (None, Some(b)) => self.load_body(&c, b)?,
                _ => None,
            };
            out.push(TrainingItem {
                id,
                account,
                spam,
                relabel: previous == Some(!spam),
                message,
                features: features.map(|f| {
                    f.chunks_exact(4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect()
                }),
            });
        }
        Ok(out)
    }

    fn training_add_many(
        &self,
        account: Option<AccountId>,
        spam: bool,
        messages: &[&[u32]],
    ) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let created = now();
        for features in messages {
            let bytes: Vec<u8> = features.iter().flat_map(|f| f.to_le_bytes()).collect();
            tx.prepare_cached(
                "INSERT INTO training(account_id, spam, created, features) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![account, spam, created, bytes])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn bayes_load(&self) -> Result<(i64, Vec<BayesRow>)> {
        let c = self.reader();
        let tx = c.unchecked_transaction()?;
        let cursor: i64 = tx.query_row(
            "SELECT value FROM meta WHERE key = 'bayes_cursor'",
            [],
            |r| r.get(0),
        )?;
        let rows = tx
            .prepare("SELECT feature, spam, ham FROM bayes")?
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u32,
                    r.get::<_, i64>(1)? as u32,
                    r.get::<_, i64>(2)? as u32,
                ))
            })?
            .collect::<std::result::Result<_, _>>()?;
        Ok((cursor, rows))
    }

    fn bayes_save(&self, from: i64, to: i64, rows: &[BayesRow]) -> Result<bool> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let cursor: i64 = tx.query_row(
            "SELECT value FROM meta WHERE key = 'bayes_cursor'",
            [],
            |r| r.get(0),
        )?;
        if cursor != from {
            return Ok(false);
        }
        for &(f, spam, ham) in rows {
            if spam == 0 && ham == 0 {
                tx.prepare_cached("DELETE FROM bayes WHERE feature = ?1")?
                    .execute([i64::from(f)])?;
            } else {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO bayes(feature, spam, ham) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![
                    i64::from(f),
                    i64::from(spam),
                    i64::from(ham)
                ])?;
            }
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'bayes_cursor'",
            [to],
        )?;
        // Labels given as word hashes (sent mail, `yubin filter train`) are a few KiB
        // each and needed only until learned; labels of stored bodies stay (a later move
        // of the same message is a relabel).
        tx.execute(
            "DELETE FROM training WHERE id <= ?1 AND features IS NOT NULL",
            [to],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn quarantine_list(&self) -> Result<Vec<Quarantined>> {
        let c = self.reader();
        let rows = c
            .prepare(
                "SELECT q.id, q.account_id, a.local || '@' || d.name, q.reason, q.mail_from,
                        q.created, b.size
                 FROM quarantine q JOIN accounts a ON a.id = q.account_id
                 JOIN domains d ON d.id = a.domain_id JOIN blobs b ON b.id = q.blob_id
                 ORDER BY q.id",
            )?
            .query_map([], |r| {
                Ok(Quarantined {
                    id: r.get(0)?,
                    account: r.get(1)?,
                    address: r.get(2)?,
                    reason: r.get(3)?,
                    mail_from: r.get(4)?,
                    created: r.get(5)?,
                    size: r.get::<_, i64>(6)? as u64,
                })
            })?
            .collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }

    fn quarantine_read(&self, id: i64) -> Result<Vec<u8>> {
        let c = self.reader();
        let blob: i64 = c
            .query_row("SELECT blob_id FROM quarantine WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or(Error::NoSuchQuarantined(id))?;
        self.load_body(&c, blob)?
            .ok_or(Error::NoSuchQuarantined(id))
    }

    fn quarantine_release(&self, id: i64) -> Result<Delivered> {
        self.write_then_notify(|tx| {
            let (account, blob, created): (AccountId, i64, i64) = tx
                .query_row(
                    "SELECT account_id, blob_id, created FROM quarantine WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?
                .ok_or(Error::NoSuchQuarantined(id))?;
            let size: i64 =
                tx.query_row("SELECT size FROM blobs WHERE id = ?1", [blob], |r| r.get(0))?;
            let (mailbox, uidvalidity, uid, modseq) =
                take_uid(tx, Target::Named(account, "INBOX"))?
                    .ok_or_else(|| Error::NoSuchMailbox("INBOX".into()))?;
            insert_message(
                tx,
                (mailbox, uid, modseq),
                &Row {
                    blob,
                    size,
                    internal_date: created,
                    flags: 0,
                    keywords: "",
                },
            )?;
            tx.execute("DELETE FROM quarantine WHERE id = ?1", [id])?;
            Ok((
                Delivered {
                    account,
                    mailbox,
                    uidvalidity,
                    uid,
                },
                vec![mailbox],
                vec![],
            ))
        })
    }

    fn quarantine_delete(&self, id: i64) -> Result<()> {
        self.write_then_notify(|tx| {
            let blob: i64 = tx
                .query_row(
                    "DELETE FROM quarantine WHERE id = ?1 RETURNING blob_id",
                    [id],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or(Error::NoSuchQuarantined(id))?;
            let dead = SqliteStore::drop_unreferenced_blobs(tx, [blob])?;
            Ok(((), vec![], dead))
        })
    }

    fn quarantine_expire(&self, before: i64, limit: usize) -> Result<usize> {
        self.write_then_notify(|tx| {
            let blobs: Vec<i64> = tx
                .prepare_cached(
                    "DELETE FROM quarantine WHERE id IN
                         (SELECT id FROM quarantine WHERE created < ?1 ORDER BY id LIMIT ?2)
                     RETURNING blob_id",
                )?
                .query_map(params![before, limit as i64], |r| r.get(0))?
                .collect::<std::result::Result<_, _>>()?;
            let n = blobs.len();
            let dead = SqliteStore::drop_unreferenced_blobs(tx, blobs)?;
            Ok((n, vec![], dead))
        })
    }

    fn correspondents_add(&self, account: AccountId, addresses: &[String]) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        for a in addresses {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO correspondents(account_id, address, last) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![account, a.to_lowercase(), now()])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn is_correspondent(&self, account: AccountId, address: &str) -> Result<bool> {
        let c = self.reader();
        Ok(
            c.prepare_cached(
                "SELECT 1 FROM correspondents WHERE account_id = ?1 AND address = ?2",
            )?
            .query_row(params![account, address.to_lowercase()], |_| Ok(()))
            .optional()?
            .is_some(),
        )
    }

    fn search_text(&self, mailbox: MailboxId, field: TextField, needle: &str) -> Result<Vec<u32>> {
        let column = match field {
            TextField::From => "hfrom",
            TextField::To => "hto",
            TextField::Cc => "hcc",
            TextField::Bcc => "hbcc",
            TextField::Subject => "subject",
            TextField::Body => "body",
            TextField::Text => "search",
        };
        if needle.is_empty() {
            return Ok(self.messages(mailbox)?.iter().map(|m| m.uid).collect());
        }
        // The mailbox as it is now, then the index caught up past it: every message of the
        // list is indexed.
        let snap = self.snapshot(mailbox)?;
        let _pass = self.heavy.enter();
        // Trigrams need three characters, and the index keeps no text to match shorter
        // needles against (contentless: the text would double search.db), so those read
        // the bodies. Clients rarely search for one or two characters.
        if needle.chars().count() < 3 {
            return self.search_bodies(&snap, field, needle);
        }
        self.indexer.catch_up_if_behind(&self.reader())?;
        // The index gives bodies (ascending ids); the cached list maps them to UIDs, which
        // is cheaper than joining every message row in SQL (a profile of SEARCH showed it).
        let bodies: Vec<i64> = self
            .reader()
            .prepare_cached(&format!(
                "SELECT rowid FROM fts.search WHERE {column} MATCH ?1 ORDER BY rowid"
            ))?
            .query_map([format!("\"{}\"", needle.replace('"', "\"\""))], |r| {
                r.get(0)
            })?
            .collect::<std::result::Result<_, _>>()?;
        // Blob ids mostly ascend with UIDs, so the cursor mostly moves forward.
        let mut at = yubin_model::sorted::Cursor::new(&bodies);
        Ok(snap
            .msgs
            .iter()
            .zip(snap.blobs.iter())
            .filter(|(_, b)| at.seek(&b.id, |x| *x).is_some())
            .map(|(m, _)| m.uid)
            .collect())
    }

    fn sort_info(&self, mailbox: MailboxId) -> Result<Vec<SortInfo>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT m.uid, m.size, m.internal_date, e.sent, e.subject, e.from_addr,
                    e.from_display, e.to_addr, e.to_display, e.cc_addr, e.message_id, e.refs,
                    e.sent_day
             FROM messages m LEFT JOIN envelopes e ON e.blob_id = m.blob_id
             WHERE m.mailbox_id = ?1 ORDER BY m.uid",
        )?;
        let rows = st
            .query_map([mailbox], |r| {
                let text = |i| r.get::<_, Option<String>>(i).map(Option::unwrap_or_default);
                Ok(SortInfo {
                    uid: r.get(0)?,
                    size: r.get::<_, i64>(1)? as u64,
                    internal_date: r.get(2)?,
                    sent: r.get(3)?,
                    subject: text(4)?,
                    from: text(5)?,
                    from_display: text(6)?,
                    to: text(7)?,
                    to_display: text(8)?,
                    cc: text(9)?,
                    message_id: text(10)?,
                    references: text(11)?.split_whitespace().map(str::to_owned).collect(),
                    sent_day: r.get(12)?,
                })
            })?
            .collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }

    fn object_ids(&self, mailbox: MailboxId) -> Result<Vec<(u32, i64, String)>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT m.uid, m.blob_id, coalesce(e.refs, ''), coalesce(e.message_id, '')
             FROM messages m LEFT JOIN envelopes e ON e.blob_id = m.blob_id
             WHERE m.mailbox_id = ?1 ORDER BY m.uid",
        )?;
        let rows = st
            .query_map([mailbox], |r| {
                let refs: String = r.get(2)?;
                let id: String = r.get(3)?;
                // `refs` holds References (or In-Reply-To when there is none), oldest first.
                let root = refs
                    .split_whitespace()
                    .next()
                    .map(str::to_owned)
                    .unwrap_or(id);
                Ok((r.get(0)?, r.get(1)?, root))
            })?
            .collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }

    fn pop3_sizes(&self, mailbox: MailboxId) -> Result<Vec<(u32, u64)>> {
        let mut rows: Vec<(u32, i64, i64)> = {
            let c = self.reader();
            let mut st = c.prepare_cached(
                "SELECT m.uid, coalesce(e.pop3_size, m.size), m.blob_id FROM messages m
                 LEFT JOIN envelopes e ON e.blob_id = m.blob_id
                 WHERE m.mailbox_id = ?1 ORDER BY m.uid",
            )?;
            st.query_map([mailbox], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<std::result::Result<_, _>>()?
        };
        // Rows from before schema 6 counted the dot-stuffing: count them again, once.
        let mut fixed = Vec::new();
        for (uid, size, blob) in rows.iter_mut().filter(|r| r.1 < 0) {
            *size = yubin_model::pop3_size(&self.read(mailbox, *uid)?) as i64;
            fixed.push((*blob, *size));
        }
        if !fixed.is_empty() {
            let mut c = self.conn();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (blob, size) in &fixed {
                tx.prepare_cached("UPDATE envelopes SET pop3_size = ?2 WHERE blob_id = ?1")?
                    .execute(params![blob, size])?;
            }
            tx.commit()?;
        }
        Ok(rows
            .into_iter()
            .map(|(uid, size, _)| (uid, size.max(0) as u64))
            .collect())
    }

    fn usage(&self, account: AccountId) -> Result<(u64, Option<u64>)> {
        let c = self.reader();
        let (used, quota): (i64, Option<i64>) = c
            .prepare_cached(
                "SELECT (SELECT coalesce(sum(octets), 0) FROM mailboxes WHERE account_id = a.id),
                        a.quota
                 FROM accounts a WHERE a.id = ?1",
            )?
            .query_row([account], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((used as u64, quota.map(|q| q as u64)))
    }

    fn unprocessable(&self) -> Result<Vec<crate::Unprocessable>> {
        let failed = self.indexer.failed()?;
        let c = self.reader();
        let mut out = Vec::new();
        for (body, reason) in failed {
            let mut st = c.prepare_cached(
                "SELECT a.local || '@' || d.name, mb.name, mb.id, m.uid
                 FROM messages m JOIN mailboxes mb ON mb.id = m.mailbox_id
                 JOIN accounts a ON a.id = mb.account_id JOIN domains d ON d.id = a.domain_id
                 WHERE m.blob_id = ?1 ORDER BY mb.id, m.uid",
            )?;
            let rows = st.query_map([body], |r| {
                Ok(crate::Unprocessable {
                    account: r.get(0)?,
                    mailbox: r.get(1)?,
                    mailbox_id: r.get(2)?,
                    uid: r.get(3)?,
                    body,
                    reason: reason.clone(),
                })
            })?;
            for r in rows {
                out.push(r?);
            }
        }
        Ok(out)
    }

    fn remove_unprocessable(&self, item: &crate::Unprocessable) -> Result<()> {
        self.expunge(item.mailbox_id, Some(&[item.uid]))?;
        if self.unprocessable()?.iter().all(|u| u.body != item.body) {
            self.indexer.forget_failed(item.body)?;
        }
        Ok(())
    }

    fn sweep_orphans(&self) -> Result<usize> {
        let (known, live) = {
            let c = self.conn();
            let known: HashSet<String> = c
                .prepare("SELECT name FROM blobs WHERE data IS NULL AND pack IS NULL")?
                .query_map([], |r| r.get(0))?
                .collect::<std::result::Result<_, _>>()?;
            let live: Vec<(u64, u64, u64)> = c
                .prepare(
                    "SELECT pack, off, size FROM blobs WHERE pack IS NOT NULL ORDER BY pack, off",
                )?
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, i64>(2)? as u64,
                    ))
                })?
                .collect::<std::result::Result<_, _>>()?;
            (known, live)
        };
        let packs = &self.blob_dirs.packs;
        let mut removed = packs
            .sweep(&live)
            .map_err(|e| Error::io("clean up", packs.dir(), e))?;
        // Files of data directories from before packs.
        let blobs = self.root.join("blobs");
        let dirs = fs::read_dir(&blobs).map_err(|e| Error::io("list", &blobs, e))?;
        for dir in dirs.flatten() {
            let Ok(files) = fs::read_dir(dir.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.len() == 32 && !known.contains(&name) {
                    fs::remove_file(f.path()).map_err(|e| Error::io("remove", f.path(), e))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn on_change(&self, listener: ChangeListener) {
        self.listeners
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }
}

/// STORE of system flags only (the usual case: \\Seen, \\Deleted...), without
/// UNCHANGEDSINCE: one UPDATE and one SELECT per run of consecutive UIDs instead of a read
/// and a write per message (STORE on 10,000 messages spent its time there). Returns the
/// messages with their flags now, and whether any changed. Same result as `Flags::apply`
/// per message: `store_paths_agree` checks it.
fn store_system_flags(
    tx: &Transaction<'_>,
    mailbox: MailboxId,
    uids: &[u32],
    op: FlagOp,
    system: u32,
) -> Result<(FlagsUpdate, bool)> {
    let (set, differs) = match op {
        FlagOp::Add => ("flags = flags | ?4", "flags & ?4 != ?4"),
        FlagOp::Remove => ("flags = flags & ~?4", "flags & ?4 != 0"),
        FlagOp::Replace => (
            "flags = ?4, keywords = ''",
            "(flags != ?4 OR keywords != '')",
        ),
    };
    let mut out = FlagsUpdate::default();
    let mut modseq: Option<u64> = None;
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut i = 0;
    while i < sorted.len() {
        let lo = sorted[i];
        let mut hi = lo;
        while i + 1 < sorted.len() && hi.checked_add(1) == Some(sorted[i + 1]) {
            i += 1;
            hi += 1;
        }
        i += 1;
        let any: bool = tx
            .prepare_cached(&format!(
                "SELECT EXISTS(SELECT 1 FROM messages
                 WHERE mailbox_id = ?1 AND uid BETWEEN ?2 AND ?3 AND {differs})"
            ))?
            .query_row(params![mailbox, lo, hi, system], |r| r.get(0))?;
        if any {
            let m = match modseq {
                Some(m) => m,
                None => *modseq.insert(SqliteStore::bump_modseq(tx, mailbox)?),
            };
            tx.prepare_cached(&format!(
                "UPDATE messages SET {set}, modseq = ?5
                 WHERE mailbox_id = ?1 AND uid BETWEEN ?2 AND ?3 AND {differs}"
            ))?
            .execute(params![mailbox, lo, hi, system, m as i64])?;
        }
        let rows = tx
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages
                 WHERE mailbox_id = ?1 AND uid BETWEEN ?2 AND ?3 ORDER BY uid"
            ))?
            .query_map(params![mailbox, lo, hi], message_row)?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        out.messages.extend(rows);
    }
    // In the order asked, as the per-message path answers.
    if uids.windows(2).any(|w| w[0] >= w[1]) {
        let pos: std::collections::HashMap<u32, usize> =
            uids.iter().enumerate().map(|(i, &u)| (u, i)).collect();
        out.messages
            .sort_by_key(|m| pos.get(&m.uid).copied().unwrap_or(usize::MAX));
    }
    Ok((out, modseq.is_some()))
}

/// Delete messages and remember their UIDs as expunged at one new MODSEQ. Returns the names
/// of bodies no longer referenced.
fn remove_messages(
    tx: &Transaction<'_>,
    mailbox: MailboxId,
    uids: &[u32],
) -> Result<Vec<DeadBody>> {
    let modseq = SqliteStore::bump_modseq(tx, mailbox)?;
    let mut blob_ids = BTreeSet::new();
    for &uid in uids {
        let blob: Option<i64> = tx
            .prepare_cached(
                "DELETE FROM messages WHERE mailbox_id = ?1 AND uid = ?2 RETURNING blob_id",
            )?
            .query_row(params![mailbox, uid], |r| r.get(0))
            .optional()?;
        if let Some(b) = blob {
            blob_ids.insert(b);
            tx.prepare_cached(
                "INSERT OR REPLACE INTO expunged(mailbox_id, uid, modseq) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![mailbox, uid, modseq as i64])?;
        }
    }
    SqliteStore::drop_unreferenced_blobs(tx, blob_ids)
}

/// A training row: id, account, body, spam, features, the body's previous label.
type PendingRow = (
    i64,
    Option<i64>,
    Option<i64>,
    bool,
    Option<Vec<u8>>,
    Option<bool>,
);

/// `$Junk` or `$NotJunk` newly set on a message (Thunderbird, K-9, Apple Mail do it when
/// the user marks mail) is a label for the classifier.
fn label_by_keyword(
    tx: &Transaction<'_>,
    mailbox: MailboxId,
    uid: u32,
    before: &Flags,
    after: &Flags,
) -> Result<()> {
    let has = |f: &Flags, k: &str| f.keywords.iter().any(|x| x.eq_ignore_ascii_case(k));
    let spam = match (
        !has(before, "$Junk") && has(after, "$Junk"),
        !has(before, "$NotJunk") && has(after, "$NotJunk"),
    ) {
        (true, false) => true,
        (false, true) => false,
        _ => return Ok(()),
    };
    let (account, _, _) = SqliteStore::mailbox_meta(tx, mailbox)?;
    let blob: Option<i64> = tx
        .prepare_cached("SELECT blob_id FROM messages WHERE mailbox_id = ?1 AND uid = ?2")?
        .query_row(params![mailbox, uid], |r| r.get(0))
        .optional()?;
    match blob {
        Some(blob) => record_label(tx, account, blob, spam),
        None => Ok(()),
    }
}

/// A label for the classifier on a stored body, unless that body's last label from this
/// account is already the same: flagging `$Junk` off and on again, or copying a message
/// into Junk twice, must not count it twice (one user could otherwise weigh one message
/// as much as they like).
fn record_label(c: &Connection, account: AccountId, blob: i64, spam: bool) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO training(account_id, blob_id, spam, created)
         SELECT ?1, ?2, ?3, ?4
         WHERE (SELECT spam FROM training WHERE account_id = ?1 AND blob_id = ?2
                ORDER BY id DESC LIMIT 1) IS NOT ?3",
    )?
    .execute(params![account, blob, spam, now()])?;
    Ok(())
}

/// The mailbox a message goes into: by id, or by account and name.
enum Target<'a> {
    Id(MailboxId),
    Named(AccountId, &'a str),
}

/// Take the mailbox's next UID and MODSEQ for a new message: `(mailbox, uidvalidity,
/// uid, modseq)`, or `None` when there is no such mailbox. In the caller's transaction,
/// with [`insert_message`] (delivery, COPY/MOVE, release from quarantine).
fn take_uid(c: &Connection, to: Target<'_>) -> Result<Option<(i64, u32, u32, i64)>> {
    let row = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?));
    Ok(match to {
        Target::Id(id) => c
            .prepare_cached(
                "UPDATE mailboxes SET uid_next = uid_next + 1, highest_modseq = highest_modseq + 1
                 WHERE id = ?1 RETURNING id, uidvalidity, uid_next - 1, highest_modseq",
            )?
            .query_row([id], row)
            .optional()?,
        Target::Named(account, name) => c
            .prepare_cached(
                "UPDATE mailboxes SET uid_next = uid_next + 1, highest_modseq = highest_modseq + 1
                 WHERE account_id = ?1 AND name = ?2
                 RETURNING id, uidvalidity, uid_next - 1, highest_modseq",
            )?
            .query_row(params![account, name], row)
            .optional()?,
    })
}

/// A message row: its body and what it carries into the mailbox.
struct Row<'a> {
    blob: i64,
    size: i64,
    internal_date: i64,
    flags: u32,
    keywords: &'a str,
}

/// Insert the message at `(mailbox, uid, modseq)` from [`take_uid`]; SAVEDATE is now.
fn insert_message(
    c: &Connection,
    (mailbox, uid, modseq): (i64, u32, i64),
    m: &Row<'_>,
) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO messages(mailbox_id, uid, blob_id, size, internal_date, flags, keywords,
                              modseq, saved)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        mailbox,
        uid,
        m.blob,
        m.size,
        m.internal_date,
        m.flags,
        m.keywords,
        modseq,
        super::now()
    ])?;
    Ok(())
}

/// A spam label for a body appended into Junk, unless this account's last label for an
/// identical body (a new copy: APPEND always makes a new one) is spam already — appending
/// one message again and again must not weigh it again and again. Compared in the
/// database, byte for byte, for bodies kept there (up to 64 KiB: nearly all spam), among
/// the last 10,000 labels (a range of the primary key: no scan of every label); a larger
/// body is labelled each time.
fn record_appended_spam(c: &Connection, account: AccountId, blob: i64) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO training(account_id, blob_id, spam, created)
         SELECT ?1, ?2, 1, ?3
         WHERE NOT EXISTS (
             SELECT 1 FROM blobs n, training t JOIN blobs b ON b.id = t.blob_id
             WHERE n.id = ?2 AND n.data IS NOT NULL
               AND t.id > (SELECT coalesce(max(id), 0) - 10000 FROM training)
               AND t.account_id = ?1 AND t.blob_id != ?2 AND t.spam = 1
               AND b.size = n.size AND b.data = n.data
               AND t.id = (SELECT max(p.id) FROM training p
                           WHERE p.account_id = ?1 AND p.blob_id = t.blob_id))",
    )?
    .execute(params![account, blob, now()])?;
    Ok(())
}

fn copy_in(
    tx: &Transaction<'_>,
    from: MailboxId,
    uids: &[u32],
    to: MailboxId,
    remove: bool,
) -> Result<Copied> {
    let (account, _, from_use) = SqliteStore::mailbox_meta(tx, from)?;
    let (to_account, uidvalidity, to_use) = SqliteStore::mailbox_meta(tx, to)?;
    if account != to_account {
        return Err(Error::NoSuchMailbox(format!("#{to}")));
    }
    let is_junk = |u: &Option<String>| u.as_deref() == Some("\\Junk");
    let is_trash = |u: &Option<String>| u.as_deref() == Some("\\Trash");
    // Training: into Junk is spam; out of Junk (but not to Trash) is ham.
    let training = match (is_junk(&from_use), is_junk(&to_use)) {
        (false, true) => Some(true),
        (true, false) if !is_trash(&to_use) => Some(false),
        _ => None,
    };
    let mut out = Copied {
        uidvalidity,
        uids: Vec::new(),
    };
    let mut moved = Vec::new();
    for &uid in uids {
        let row: Option<(i64, i64, i64, u32, String)> = tx
            .prepare_cached(
                "SELECT blob_id, size, internal_date, flags, keywords FROM messages
                 WHERE mailbox_id = ?1 AND uid = ?2",
            )?
            .query_row(params![from, uid], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let Some((blob, size, date, flags, keywords)) = row else {
            continue;
        };
        let (_, _, new_uid, modseq) =
            take_uid(tx, Target::Id(to))?.ok_or_else(|| Error::NoSuchMailbox(format!("#{to}")))?;
        insert_message(
            tx,
            (to, new_uid, modseq),
            &Row {
                blob,
                size,
                internal_date: date,
                flags,
                keywords: &keywords,
            },
        )?;
        if let Some(spam) = training {
            record_label(tx, account, blob, spam)?;
        }
        out.uids.push((uid, new_uid));
        moved.push(uid);
    }
    if remove && !moved.is_empty() {
        // Bodies stay referenced by the copies: nothing to remove from disk.
        remove_messages(tx, from, &moved)?;
    }
    Ok(out)
}

/// The single writer: group-commits whatever deliveries are waiting.
pub(super) fn writer_loop(
    root: PathBuf,
    mut conn: Connection,
    rx: mpsc::Receiver<Job>,
    listeners: Arc<Listeners>,
    indexer: Arc<Indexer>,
    bodies: Arc<BlobDirs>,
) {
    let mut cleared = 0;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = commit_batch(&root, &mut conn, &batch, &indexer, &mut cleared);
        indexer.kick();
        let mut touched = BTreeSet::new();
        let mut dead = Vec::new();
        for (job, result) in batch.into_iter().zip(results) {
            match &result {
                Ok((d, _)) => touched.extend(d.iter().map(|d| d.mailbox)),
                Err(_) => {
                    dead.extend(job.blob.packed.map(|at| (at, job.blob.size)));
                    for (b, _, _) in &job.more {
                        dead.extend(b.packed.map(|at| (at, b.size)));
                    }
                }
            }
            let _ = job.reply.send(result);
        }
        bodies.packs.release(dead);
        listeners.notify(&touched.into_iter().collect::<Vec<_>>());
    }
}

type JobResult = Result<(Vec<Delivered>, Option<i64>)>;
/// A job's result and the id of the body it added.
type Applied = Result<(i64, (Vec<Delivered>, Option<i64>))>;

fn commit_batch(
    root: &Path,
    conn: &mut Connection,
    batch: &[Job],
    indexer: &Indexer,
    cleared: &mut i64,
) -> Vec<JobResult> {
    let n = batch.len();
    let shared_failure = |e: &Error| -> Vec<JobResult> {
        (0..n)
            .map(|_| {
                Err(Error::io(
                    "commit",
                    root,
                    std::io::Error::other(e.to_string()),
                ))
            })
            .collect()
    };
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return shared_failure(&e.into()),
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in batch.iter() {
        // A savepoint per job: one bad job (say, a removed account) fails alone.
        let r = (|| -> Applied {
            let sp = tx.savepoint()?;
            let mut out = apply(&sp, job)?;
            for (blob, flags, date) in &job.more {
                let (_, (d, _)) = apply_part(&sp, job, blob, flags, *date)?;
                out.1.0.extend(d);
            }
            sp.commit()?;
            Ok(out)
        })();
        results.push(r.map(|(_blob_id, out)| out));
    }
    // Pending index rows already applied are garbage now.
    let done = indexer.done_seq();
    if done > *cleared {
        match tx.execute("DELETE FROM index_pending WHERE seq <= ?1", [done]) {
            Ok(_) => *cleared = done,
            Err(e) => tracing::warn!(error = %e, "could not clear applied index rows"),
        }
    }
    if let Err(e) = tx.commit() {
        return shared_failure(&e.into());
    }
    results
}

/// One delivery inside the writer's transaction; returns the new body's id too.
fn apply(c: &Connection, job: &Job) -> Applied {
    apply_part(c, job, &job.blob, &job.flags, job.internal_date)
}

/// One message of a job (the job's own, or one of `more`) to the job's recipients.
fn apply_part(
    c: &Connection,
    job: &Job,
    blob: &StagedBlob,
    flags: &Flags,
    internal_date: i64,
) -> Applied {
    // Never reused (snapshot.rs and the indexer key on it).
    let blob_id: i64 = c
        .prepare_cached(
            "UPDATE meta SET value = max(value, (SELECT coalesce(max(id), 0) FROM blobs)) + 1
             WHERE key = 'blob_seq' RETURNING value",
        )?
        .query_row([], |r| r.get(0))?;
    c.prepare_cached(
        "INSERT INTO blobs(id, name, size, data, pack, off) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        blob_id,
        blob.name,
        blob.size as i64,
        blob.data,
        blob.packed.map(|at| at.pack as i64),
        blob.packed.map(|at| at.off as i64),
    ])?;
    let t = &blob.text;
    // The full-text entry is built after the commit (indexer.rs); a body that only
    // leaves through the queue is in no mailbox, so nothing will search it.
    if !job.placements.is_empty() {
        c.prepare_cached("INSERT INTO index_pending(blob_id) VALUES (?1)")?
            .execute([blob_id])?;
    }
    let e = &t.sort;
    c.prepare_cached(
        "INSERT INTO envelopes(blob_id, sent, subject, from_addr, from_display, to_addr,
                               to_display, cc_addr, message_id, refs, pop3_size, sent_day)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        blob_id,
        e.sent,
        e.subject,
        e.from,
        e.from_display,
        e.to,
        e.to_display,
        e.cc,
        e.message_id,
        e.references.join(" "),
        t.pop3_size as i64,
        e.sent_day
    ])?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(job.placements.len());
    for p in &job.placements {
        let account = p.account;
        if !seen.insert(account) {
            continue;
        }
        if let Some(reason) = &p.quarantine {
            c.prepare_cached(
                "INSERT INTO quarantine(account_id, blob_id, reason, mail_from, created)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                account,
                blob_id,
                reason,
                job.mail_from,
                internal_date
            ])?;
            continue;
        }
        let mut flags = flags.clone();
        flags.apply(FlagOp::Add, &p.flags);
        let keywords = keywords_text(&flags);
        // A filing target the user has deleted (Junk, a rule's folder) falls back to INBOX
        // rather than losing or refusing the message; INBOX always exists.
        let found = match take_uid(c, Target::Named(account, &p.mailbox))? {
            None if job.inbox_fallback && p.mailbox != "INBOX" => {
                take_uid(c, Target::Named(account, "INBOX"))?
            }
            found => found,
        };
        let (mailbox, uidvalidity, uid, modseq): (i64, u32, u32, i64) =
            found.ok_or_else(|| Error::NoSuchMailbox(p.mailbox.clone()))?;
        // A client that appends into Junk (mbsync, clients that move by APPEND and
        // EXPUNGE) labels the message spam, as a MOVE would; inbound filing does not.
        if !job.inbox_fallback {
            let (_, _, special) = SqliteStore::mailbox_meta(c, mailbox)?;
            if special.as_deref() == Some("\\Junk") {
                record_appended_spam(c, account, blob_id)?;
            }
        }
        insert_message(
            c,
            (mailbox, uid, modseq),
            &Row {
                blob: blob_id,
                size: blob.size as i64,
                internal_date,
                flags: flags.system,
                keywords: &keywords,
            },
        )?;
        out.push(Delivered {
            account,
            mailbox,
            uidvalidity,
            uid,
        });
    }
    // Remote recipients enter the queue in the same transaction (RFC 5321 §4.5.4.1: the
    // message is now ours to deliver or bounce).
    let mut queue_id = None;
    if let Some(o) = &job.outbound {
        c.prepare_cached(
            "INSERT INTO queue(blob_id, mail_from, created, envid, ret, require_tls)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            blob_id,
            o.mail_from,
            internal_date,
            o.envid,
            o.ret,
            o.require_tls
        ])?;
        let id = c.last_insert_rowid();
        for r in &o.rcpts {
            let domain = r.addr.rsplit_once('@').map_or("", |d| d.1).to_lowercase();
            c.prepare_cached(
                "INSERT INTO queue_rcpts(queue_id, rcpt, domain, next_attempt, notify, orcpt)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                id,
                r.addr,
                domain,
                internal_date,
                r.notify,
                r.orcpt
            ])?;
        }
        queue_id = Some(id);
    }
    Ok((blob_id, (out, queue_id)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn mailbox_names() {
        use super::validate_name;
        assert_eq!(validate_name("inbox").unwrap(), "INBOX");
        assert_eq!(validate_name("Archive/2026").unwrap(), "Archive/2026");
        assert!(validate_name("").is_err());
        assert!(validate_name("a//b").is_err());
        assert!(validate_name("/a").is_err());
        assert!(validate_name("a*").is_err());
        assert!(validate_name("a\nb").is_err());
    }
}
