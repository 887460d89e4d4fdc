//! The mail data model shared by the store and the protocol crates: mailboxes, messages,
//! flags and what changed. Plain data, no I/O, so a protocol crate can use it without
//! depending on storage.

pub type AccountId = i64;
pub type MailboxId = i64;

pub mod downgrade;
pub mod mime;
pub mod sorted;
#[doc(hidden)]
pub mod testing;

/// System flags as bits (RFC 9051 §2.3.2); keywords are strings.
pub mod flags {
    pub const SEEN: u32 = 1;
    pub const ANSWERED: u32 = 2;
    pub const FLAGGED: u32 = 4;
    pub const DELETED: u32 = 8;
    pub const DRAFT: u32 = 16;
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
    /// Messages no session has been given as `\Recent` yet (RFC 3501 STATUS RECENT).
    pub recent: u64,
    /// Messages with `\Deleted` (RFC 9051 STATUS DELETED).
    pub deleted: u64,
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
    /// When it was put into this mailbox (RFC 8514 SAVEDATE), Unix seconds; messages
    /// stored before yubin kept it have their internal date here.
    pub saved: i64,
}

/// A mailbox as SELECT sees it: its row, its messages and what SELECT reports about them,
/// all of one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub mailbox: Mailbox,
    /// By ascending UID; shared with other sessions (copy before changing).
    pub messages: std::sync::Arc<Vec<MessageMeta>>,
    /// Every keyword in use, once (compared without case), in the order first seen.
    pub keywords: Vec<String>,
    /// Index (0-based) of the first message without `\Seen`.
    pub first_unseen: Option<usize>,
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

/// Which text a SEARCH key looks in (RFC 9051 §6.4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextField {
    From,
    To,
    Cc,
    Bcc,
    Subject,
    /// The decoded text of the body parts.
    Body,
    /// Every header and the body.
    Text,
}

/// What SORT and THREAD need of a message (RFC 5256), kept by the store so that neither
/// reads message files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SortInfo {
    pub uid: u32,
    pub size: u64,
    pub internal_date: i64,
    /// The Date header, when it parses.
    pub sent: Option<i64>,
    /// The day the Date header names, as written (its own time zone), in days since
    /// 1970-01-01: what SEARCH SENTON/SENTBEFORE/SENTSINCE compare (RFC 3501 §6.4.4).
    /// `None` for messages stored before it was kept (SEARCH then uses the UTC day).
    pub sent_day: Option<i64>,
    /// Decoded Subject.
    pub subject: String,
    /// Local part of the first From/To/Cc address, lower-cased (RFC 5256 §3).
    pub from: String,
    pub to: String,
    pub cc: String,
    /// Display names of the first From/To address, or the address (RFC 5957).
    pub from_display: String,
    pub to_display: String,
    pub message_id: String,
    /// References, else In-Reply-To: message ids, oldest first.
    pub references: Vec<String>,
}

/// Days since 1970-01-01 of a civil (proleptic Gregorian) date; H. Hinnant's algorithm.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The size POP3 LIST and STAT report (RFC 1939 §5): the message as RETR delivers it once
/// the client has undone the dot-stuffing — every line ending in CRLF, a final CRLF added
/// when missing — as Dovecot and the other common servers count it (clients compare it
/// with what they receive). Kept by the store so that STAT and LIST never read messages.
pub fn pop3_size(msg: &[u8]) -> u64 {
    // Mail that came over SMTP has only CRLF line ends: then the size is its length (and,
    // maybe, a final CRLF), found by memchr at memory speed (this runs for every
    // delivered message, 256 KiB ones too).
    let crlf = memchr::memmem::find_iter(msg, b"\r\n").count();
    if memchr::memchr_iter(b'\r', msg).count() == crlf
        && memchr::memchr_iter(b'\n', msg).count() == crlf
    {
        let tail = if msg.is_empty() || msg.ends_with(b"\r\n") {
            0
        } else {
            2
        };
        return (msg.len() + tail) as u64;
    }
    pop3_size_bytewise(msg)
}

/// The same, byte by byte: for bare CR or LF line ends (each becomes CRLF).
fn pop3_size_bytewise(msg: &[u8]) -> u64 {
    let mut size = 0u64;
    let mut at_line_start = true;
    let mut i = 0;
    while let Some(&c) = msg.get(i) {
        match c {
            b'\r' if msg.get(i + 1) == Some(&b'\n') => {
                size += 2;
                i += 1;
                at_line_start = true;
            }
            b'\n' | b'\r' => {
                size += 2;
                at_line_start = true;
            }
            _ => {
                size += 1;
                at_line_start = false;
            }
        }
        i += 1;
    }
    if !at_line_start {
        size += 2;
    }
    size
}

#[cfg(test)]
mod pop3_size_tests {
    #[test]
    fn fast_path_agrees_with_the_bytewise_count() {
        let cases: [&[u8]; 12] = [
            b"",
            b".",
            b"a",
            b"a\r\n",
            b".a\r\n.b\r\n..c\r\nd",
            b"x\r\n.\r\n",
            b"\r\n\r\n.",
            b"bare\nlf\r\n.dot",
            b"bare\rcr\n.",
            b"\r",
            b"\n.",
            b"Subject: s\r\n\r\nbody\r\n.hidden\r\n",
        ];
        for c in cases {
            assert_eq!(super::pop3_size(c), super::pop3_size_bytewise(c), "{c:?}");
        }
    }
}

#[cfg(test)]
mod civil_tests {
    #[test]
    fn days_from_civil() {
        assert_eq!(super::days_from_civil(1970, 1, 1), 0);
        assert_eq!(super::days_from_civil(2007, 3, 25), 13_597);
        assert_eq!(super::days_from_civil(2000, 2, 29), 11_016);
        assert_eq!(super::days_from_civil(1969, 12, 31), -1);
    }
}
