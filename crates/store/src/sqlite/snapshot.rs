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
//! - The cache is bounded by the number of messages it holds; the least recently used
//!   mailboxes leave first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::{MailboxId, MessageMeta, flags};

/// Messages held across all cached mailboxes (~60 bytes each without keywords).
const MAX_CACHED_MESSAGES: usize = 4_000_000;

/// A mailbox's messages at one MODSEQ, with the counts STATUS and SELECT need.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    pub uidvalidity: u32,
    pub uid_next: u32,
    pub highest_modseq: u64,
    pub msgs: Arc<Vec<MessageMeta>>,
    pub unseen: u64,
    pub deleted: u64,
    pub size: u64,
}

impl Snapshot {
    pub fn new(
        uidvalidity: u32,
        uid_next: u32,
        highest_modseq: u64,
        msgs: Vec<MessageMeta>,
    ) -> Self {
        let (mut unseen, mut deleted, mut size) = (0, 0, 0);
        for m in &msgs {
            unseen += u64::from(m.flags.system & flags::SEEN == 0);
            deleted += u64::from(m.flags.system & flags::DELETED != 0);
            size += m.size;
        }
        Snapshot {
            uidvalidity,
            uid_next,
            highest_modseq,
            msgs: Arc::new(msgs),
            unseen,
            deleted,
            size,
        }
    }

    /// This list with `changed` (new or updated, by UID) merged in and `expunged` left out.
    pub fn merged(&self, changed: Vec<MessageMeta>, expunged: &[u32]) -> Vec<MessageMeta> {
        let mut out = Vec::with_capacity(self.msgs.len() + changed.len());
        let mut changed = changed.into_iter().peekable();
        for m in self.msgs.iter() {
            while let Some(c) = changed.next_if(|c| c.uid < m.uid) {
                out.push(c);
            }
            if let Some(c) = changed.next_if(|c| c.uid == m.uid) {
                out.push(c);
            } else if expunged.binary_search(&m.uid).is_err() {
                out.push(m.clone());
            }
        }
        out.extend(changed);
        out
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
        }
    }

    #[test]
    fn merge_updates_appends_and_drops() {
        let s = Snapshot::new(1, 6, 5, vec![m(1, 0), m(2, 0), m(3, 0), m(5, 0)]);
        assert_eq!((s.unseen, s.deleted, s.size), (4, 0, 40));
        let out = s.merged(vec![m(2, flags::SEEN), m(6, 0), m(7, 0)], &[3]);
        let uids: Vec<u32> = out.iter().map(|x| x.uid).collect();
        assert_eq!(uids, [1, 2, 5, 6, 7]);
        assert_eq!(out[1].flags.system, flags::SEEN);
        let s2 = Snapshot::new(1, 8, 9, out);
        assert_eq!((s2.unseen, s2.deleted, s2.size), (4, 0, 50));
    }

    #[test]
    fn cache_keeps_newest_and_evicts_least_recently_used() {
        let c = Snapshots::default();
        c.put(1, Snapshot::new(7, 2, 3, vec![m(1, 0)]));
        c.put(1, Snapshot::new(7, 2, 2, vec![]));
        assert_eq!(c.get(1).map(|s| s.highest_modseq), Some(3));
        c.put(1, Snapshot::new(8, 1, 1, vec![]));
        assert_eq!(
            c.get(1).map(|s| s.uidvalidity),
            Some(8),
            "a new mailbox replaces"
        );
    }
}
