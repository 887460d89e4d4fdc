//! Per-mailbox message lists kept in memory and shared by every session.
//!
//! Implementation notes:
//! - SELECT needs every message's UID, flags and size; reading them from SQLite on each
//!   SELECT made it an order of magnitude slower than Dovecot, which maps its index file.
//!   Here a mailbox's list is read once and then brought up to date with only what changed
//!   (`modseq` above the cached one, and the `expunged` table): RFC 7162 MODSEQs already
//!   order every change of a mailbox, so "same UIDVALIDITY and HIGHESTMODSEQ" means
//!   "same contents".
//! - Lists are `Arc`s: a session that selects a mailbox shares the cached list and copies it
//!   only when it changes its own view.
//! - Beside each message the list keeps its body's id and, for a body in its own file (data
//!   directories from before packs), the file's name, so FETCH reads such a body without
//!   asking SQLite (a (mailbox, UID) pair never changes body; mailbox ids are never reused).
//! - The cache is bounded by the number of messages it holds; the least recently used
//!   mailboxes leave first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::{MailboxId, MessageMeta, flags};

/// Messages held across all cached mailboxes (~60 bytes each without keywords).
const MAX_CACHED_MESSAGES: usize = 4_000_000;

/// A body file's name (32 hex digits) as bytes; all zero when unknown.
pub(crate) type BlobKey = [u8; 16];

pub(crate) fn blob_key(name: &str) -> BlobKey {
    let mut k = [0u8; 16];
    if name.len() == 32 {
        for (i, b) in k.iter_mut().enumerate() {
            match u8::from_str_radix(name.get(2 * i..2 * i + 2).unwrap_or("zz"), 16) {
                Ok(v) => *b = v,
                Err(_) => return [0; 16],
            }
        }
    }
    k
}

pub(crate) fn blob_name(k: &BlobKey) -> Option<String> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    (*k != [0; 16]).then(|| {
        k.iter()
            .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
            .map(char::from)
            .collect()
    })
}

/// Where a message's body is: its blob id and, for a body in a file, the file's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlobRef {
    pub id: i64,
    /// All zero for a body kept in the database.
    pub key: BlobKey,
}

/// What [`Snapshot::blob`] tells a reader.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Body {
    /// Found by its `blobs.id`: in the database or in a pack (a pack read needs the row's
    /// offset anyway, and checks it against the header).
    ById(i64),
    /// In this file, of this size.
    File(String, u64),
}

/// A mailbox's messages at one MODSEQ, with the counts STATUS and SELECT need.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    pub uidvalidity: u32,
    pub uid_next: u32,
    pub highest_modseq: u64,
    pub msgs: Arc<Vec<MessageMeta>>,
    /// The body of `msgs[i]` is `blobs[i]`.
    pub blobs: Arc<Vec<BlobRef>>,
    pub unseen: u64,
    pub deleted: u64,
    pub size: u64,
    /// Keywords in use (once each, without case) and the first unseen message's index.
    pub keywords: Arc<Vec<String>>,
    pub first_unseen: Option<usize>,
}

impl Snapshot {
    pub fn new(
        uidvalidity: u32,
        uid_next: u32,
        highest_modseq: u64,
        (msgs, blobs): (Vec<MessageMeta>, Vec<BlobRef>),
    ) -> Self {
        let (mut unseen, mut deleted, mut size) = (0, 0, 0);
        let mut keywords: Vec<String> = Vec::new();
        let mut first_unseen = None;
        for (i, m) in msgs.iter().enumerate() {
            if m.flags.system & flags::SEEN == 0 {
                unseen += 1;
                first_unseen.get_or_insert(i);
            }
            deleted += u64::from(m.flags.system & flags::DELETED != 0);
            size += m.size;
            for k in &m.flags.keywords {
                if !keywords.iter().any(|x| x.eq_ignore_ascii_case(k)) {
                    keywords.push(k.clone());
                }
            }
        }
        Snapshot {
            uidvalidity,
            uid_next,
            highest_modseq,
            msgs: Arc::new(msgs),
            blobs: Arc::new(blobs),
            unseen,
            deleted,
            size,
            keywords: Arc::new(keywords),
            first_unseen,
        }
    }

    /// This list with `changed` (new or updated, by UID) merged in and `expunged` left out.
    pub fn merged(
        &self,
        changed: Vec<(MessageMeta, BlobRef)>,
        expunged: &[u32],
    ) -> (Vec<MessageMeta>, Vec<BlobRef>) {
        let n = self.msgs.len() + changed.len();
        let (mut msgs, mut blobs) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut changed = changed.into_iter().peekable();
        for (m, b) in self.msgs.iter().zip(self.blobs.iter()) {
            while let Some((c, cb)) = changed.next_if(|c| c.0.uid < m.uid) {
                msgs.push(c);
                blobs.push(cb);
            }
            if let Some((c, cb)) = changed.next_if(|c| c.0.uid == m.uid) {
                msgs.push(c);
                blobs.push(cb);
            } else if expunged.binary_search(&m.uid).is_err() {
                msgs.push(m.clone());
                blobs.push(*b);
            }
        }
        for (c, cb) in changed {
            msgs.push(c);
            blobs.push(cb);
        }
        (msgs, blobs)
    }

    /// Where a message's body is, if this list has the message.
    pub fn blob(&self, uid: u32) -> Option<Body> {
        let i = self.msgs.binary_search_by_key(&uid, |m| m.uid).ok()?;
        let b = self.blobs.get(i)?;
        Some(match blob_name(&b.key) {
            Some(name) => Body::File(name, self.msgs[i].size),
            None => Body::ById(b.id),
        })
    }
}

struct Entry {
    snap: Snapshot,
    used: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<MailboxId, Entry>,
    clock: u64,
    held: usize,
}

#[derive(Default)]
pub(crate) struct Snapshots(Mutex<Inner>);

impl Snapshots {
    pub fn get(&self, mailbox: MailboxId) -> Option<Snapshot> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.clock += 1;
        let now = g.clock;
        let e = g.map.get_mut(&mailbox)?;
        e.used = now;
        Some(e.snap.clone())
    }

    pub fn forget(&self, mailbox: MailboxId) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = g.map.remove(&mailbox) {
            g.held -= e.snap.msgs.len();
        }
    }

    pub fn put(&self, mailbox: MailboxId, snap: Snapshot) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Two readers may refresh at once: keep the newer.
        if let Some(old) = g.map.get(&mailbox)
            && old.snap.uidvalidity == snap.uidvalidity
            && old.snap.highest_modseq >= snap.highest_modseq
        {
            return;
        }
        g.clock += 1;
        let used = g.clock;
        let n = snap.msgs.len();
        if let Some(old) = g.map.insert(mailbox, Entry { snap, used }) {
            g.held -= old.snap.msgs.len();
        }
        g.held += n;
        while g.held > MAX_CACHED_MESSAGES && g.map.len() > 1 {
            let Some((&victim, _)) = g
                .map
                .iter()
                .filter(|(id, _)| **id != mailbox)
                .min_by_key(|(_, e)| e.used)
            else {
                break;
            };
            if let Some(e) = g.map.remove(&victim) {
                g.held -= e.snap.msgs.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Flags;

    fn m(uid: u32, system: u32) -> MessageMeta {
        MessageMeta {
            uid,
            size: 10,
            internal_date: 0,
            flags: Flags {
                system,
                keywords: vec![],
            },
            modseq: 1,
            saved: 0,
        }
    }

    #[test]
    fn blob_keys_round_trip() {
        let name = "00ff10a9".repeat(4);
        assert_eq!(blob_name(&blob_key(&name)), Some(name));
        assert_eq!(blob_key("not hex at all, but 32 chars !!!"), [0; 16]);
        assert_eq!(blob_name(&[0; 16]), None);
    }

    #[test]
    fn merge_updates_appends_and_drops() {
        let k = |n: u8| BlobRef {
            id: i64::from(n),
            key: if n == 7 { [0; 16] } else { [n; 16] },
        };
        let s = Snapshot::new(
            1,
            6,
            5,
            (
                vec![m(1, 0), m(2, 0), m(3, 0), m(5, 0)],
                vec![k(1), k(2), k(3), k(5)],
            ),
        );
        assert_eq!((s.unseen, s.deleted, s.size), (4, 0, 40));
        let out = s.merged(
            vec![(m(2, flags::SEEN), k(2)), (m(6, 0), k(6)), (m(7, 0), k(7))],
            &[3],
        );
        let uids: Vec<u32> = out.0.iter().map(|x| x.uid).collect();
        assert_eq!(uids, [1, 2, 5, 6, 7]);
        assert_eq!(out.1, [k(1), k(2), k(5), k(6), k(7)]);
        assert_eq!(out.0[1].flags.system, flags::SEEN);
        let s2 = Snapshot::new(1, 8, 9, out);
        assert_eq!((s2.unseen, s2.deleted, s2.size), (4, 0, 50));
        assert_eq!(s2.blob(6), Some(Body::File("06".repeat(16), 10)));
        assert_eq!(s2.blob(7), Some(Body::ById(7)));
        assert_eq!(s2.blob(3), None);
    }

    #[test]
    fn cache_keeps_newest_and_evicts_least_recently_used() {
        let c = Snapshots::default();
        let b = BlobRef {
            id: 1,
            key: [1; 16],
        };
        c.put(1, Snapshot::new(7, 2, 3, (vec![m(1, 0)], vec![b])));
        c.put(1, Snapshot::new(7, 2, 2, Default::default()));
        assert_eq!(c.get(1).map(|s| s.highest_modseq), Some(3));
        c.put(1, Snapshot::new(8, 1, 1, Default::default()));
        assert_eq!(
            c.get(1).map(|s| s.uidvalidity),
            Some(8),
            "a new mailbox replaces"
        );
    }
}
