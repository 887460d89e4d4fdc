//! The IMAP server session as a state machine.
//!
//! Implementation notes (the rules this module keeps):
//! - Sans-IO: the host pushes bytes with [`Session::push`], calls [`Session::poll`] until it
//!   says [`Event::NeedInput`] (or `Idle`), and writes [`Session::take_output`] each time.
//!   Backend calls may block; the host runs `poll` where blocking is allowed. A host on an
//!   async runtime calls [`Session::poll_light`] first: it runs only commands that read a
//!   row or two and write nothing, and returns [`Event::Blocking`] before anything else
//!   (the command waits, decoded, for the next `poll`).
//! - Framing is imap-codec's `Fragmentizer`, bounded by `append_limit`; a synchronizing
//!   literal over the limit is refused before the client sends it (RFC 7889 `[TOOBIG]`),
//!   a LITERAL+ one is read and discarded (RFC 7888 §4).
//! - A selected mailbox is a snapshot: sequence numbers change only when this session
//!   tells the client. Others' changes are picked up from the backend's MODSEQ history
//!   after each command and during IDLE; EXPUNGE is never sent while answering FETCH,
//!   STORE or SEARCH (RFC 3501 §7.4.1), only their UID forms.
//! - Mailbox names are UTF-8 inside yubin and modified UTF-7 on the wire (RFC 3501 §5.1.3).
//! - Nothing a client sends can panic the session: every decode failure is a tagged BAD.

use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;

use bounded_static::IntoBoundedStatic;
use imap_codec::encode::Encoder;
use imap_codec::fragmentizer::{
    DecodeMessageError, FragmentInfo, Fragmentizer, LiteralAnnouncement,
};
use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::command::{
    Command, CommandBody, FetchModifier, SelectParameter, StoreModifier,
};
use imap_codec::imap_types::core::NString8;
use imap_codec::imap_types::core::{AString, Atom, LiteralMode, QuotedChar, Tag, Text, Vec1};
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::{Literal8, LiteralOrLiteral8};
use imap_codec::imap_types::extensions::metadata::{
    Depth, Entry, EntryValue, GetMetadataOption, MetadataCode, MetadataResponse,
};
use imap_codec::imap_types::extensions::quota::{QuotaGet, Resource};
use imap_codec::imap_types::extensions::uidplus::{UidElement, UidSet};
use imap_codec::imap_types::fetch::{
    Macro, MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName, Section,
};
use imap_codec::imap_types::flag::{
    Flag, FlagFetch, FlagNameAttribute, FlagPerm, StoreResponse, StoreType,
};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox as WireMailbox};
use imap_codec::imap_types::response::{
    Capability, Code, CommandContinuationRequest, Data, Response, Status,
};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::status::{StatusDataItem, StatusDataItemName};
use imap_codec::{AuthenticateDataCodec, CommandCodec, IdleDoneCodec, ResponseCodec};
use yubin_model::{Changes, FlagOp, Flags, MailboxId, MessageMeta, SortInfo, flags};

use crate::backend::{Backend, BackendError};
use crate::ext;
use crate::extcmd::{self, Arg, ExtCommand};
use crate::imapurl;
use crate::message::{Parsed, literal};
use crate::mutf7;
use crate::notify;
use crate::search;
use crate::seqset::Intervals;
use crate::sort;
use crate::urlauth;
use imap_codec::imap_types::core::Vec2;
use imap_codec::imap_types::extensions::sort::SortCriterion;
use imap_codec::imap_types::extensions::thread::{Thread, ThreadingAlgorithm};

/// Fixed for the session's life.
#[derive(Debug, Clone)]
pub struct Config {
    pub hostname: String,
    /// Offer STARTTLS (a certificate is loaded and the connection is not yet encrypted).
    pub starttls: bool,
    /// Allow LOGIN/AUTHENTICATE on an unencrypted connection (RFC 9051 §11.1 says no,
    /// except where the path is otherwise protected, e.g. loopback).
    pub plaintext_auth: bool,
    /// Largest message APPEND accepts (RFC 7889 APPENDLIMIT).
    pub append_limit: u32,
}

/// What the host must do next (after writing [`Session::take_output`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Read more bytes and push them.
    NeedInput,
    /// The client is in IDLE: read more bytes, and call [`Session::changed`] when the
    /// selected mailbox changes.
    Idle,
    /// Run the TLS handshake, then call [`Session::tls_started`].
    StartTls,
    /// From now on, compress both directions with raw DEFLATE (RFC 4978); then call
    /// [`Session::compression_started`].
    Compress,
    /// Write the output so far, then call [`Session::poll`] again: a long FETCH goes out
    /// in pieces, so the client reads while the server still works (and memory stays small).
    Flush,
    /// Close the connection.
    Close,
    /// Only from [`Session::poll_light`]: the next step may block (a write and its fsync,
    /// message bodies, a search, a mailbox not in memory, a password hash); call
    /// [`Session::poll`] where blocking is allowed.
    Blocking,
}

/// Output gathered before a long FETCH pauses for [`Event::Flush`].
const FLUSH_BYTES: usize = 256 * 1024;

/// A FETCH in progress: where it stopped to let its output go out.
struct FetchJob {
    tag: Tag<'static>,
    targets: std::vec::IntoIter<usize>,
    names: Vec<MessageDataItemName<'static>>,
    needs_body: bool,
    id: MailboxId,
    read_only: bool,
    uid: bool,
    /// Bodies read ahead for the next messages, by UID.
    bodies: std::collections::HashMap<u32, Result<Vec<u8>, BackendError>>,
    /// RFC 8970 PREVIEW asked for.
    preview: bool,
    /// RFC 8474 EMAILID / THREADID of each UID, when asked for.
    object_ids: Option<std::collections::HashMap<u32, (i64, String)>>,
    extras: ext::FetchExtras,
    /// RFC 5465 MessageNew fetch attributes: FETCH responses only, no tagged reply.
    silent: bool,
}

/// RFC 5465 NOTIFY in force: what to report, and each mailbox as last reported.
struct NotifyState {
    spec: notify::Spec,
    seen: std::collections::HashMap<MailboxId, yubin_model::Mailbox>,
}

enum Mode {
    Command,
    AuthData(Tag<'static>),
    Idle(Tag<'static>),
    StartTls,
    Compress,
    Closed,
}

/// Where an AUTHENTICATE exchange is (RFC 9051 §6.2.2).
enum SaslStep {
    /// The mechanism's next client message.
    Exchange(Box<yubin_sasl::Exchange>),
    /// SCRAM's server-final was sent and the backend let the user in: an empty response
    /// completes the login.
    FinalAck,
}

#[derive(PartialEq, Eq)]
enum State {
    NotAuthenticated,
    Authenticated,
}

struct Selected {
    id: MailboxId,
    read_only: bool,
    /// Shared with the store's cache and other sessions; `Arc::make_mut` before changing.
    msgs: Arc<Vec<MessageMeta>>,
    highest_modseq: u64,
    /// Messages with a UID at or above this are new to the client.
    uid_next: u32,
    /// Expunged by others while EXPUNGE responses were not allowed.
    pending_expunge: Vec<u32>,
    /// UIDs (ascending) that are `\Recent` in this session (RFC 3501 §2.3.2).
    recent: Vec<u32>,
    /// Keywords the client was told of in FLAGS (RFC 3501 §7.2.6: before any FETCH
    /// shows one).
    keywords: Vec<String>,
    /// RFC 5182: the UIDs (ascending) a SEARCH RETURN (SAVE) kept for `$`; a new SELECT
    /// starts empty, expunged messages leave it.
    saved: Vec<u32>,
    /// RFC 5267 §4: searches whose results this session keeps up to date.
    contexts: Vec<UpdateContext>,
}

/// A SEARCH or SORT with RETURN (UPDATE): its criteria and its current result.
#[derive(Debug, Clone)]
struct UpdateContext {
    tag: String,
    uid: bool,
    criteria: Vec<SearchKey<'static>>,
    /// `Some` for SORT (positions matter).
    sort: Option<Vec<SortCriterion>>,
    /// UIDs: ascending for SEARCH, in sort order for SORT.
    result: Vec<u32>,
    /// The mailbox state the result was computed at.
    modseq: u64,
    len: usize,
}

/// Updating searches one session may keep (RFC 5267 §4.2: more are `NO [NOUPDATE]`).
const MAX_UPDATE_CONTEXTS: usize = 8;

const MAX_AUTH_FAILURES: u32 = 3;

pub struct Session<B: Backend> {
    cfg: Config,
    backend: B,
    frag: Fragmentizer,
    out: Vec<u8>,
    state: State,
    mode: Mode,
    tls: bool,
    selected: Option<Selected>,
    /// A FETCH paused by [`Event::Flush`], resumed by the next [`Session::poll`].
    fetching: Option<FetchJob>,
    auth_failures: u32,
    /// The SASL exchange of an AUTHENTICATE in progress.
    sasl: Option<SaslStep>,
    /// Bytes pushed since the last complete command (bounded: see `input_budget`).
    pending: usize,
    /// RFC 7162: MODSEQ in FETCH responses, HIGHESTMODSEQ, once a client used CONDSTORE.
    condstore: bool,
    /// RFC 7162 §3.2: VANISHED instead of EXPUNGE, once enabled.
    qresync: bool,
    /// COMPRESS=DEFLATE is active (RFC 4978).
    compressed: bool,
    /// ESEARCH/LIST-EXTENDED options of the command being executed.
    ext: ext::Ext,
    /// The client enabled IMAP4rev2 (RFC 9051 §6.3.1): UTF-8 mailbox names, no RECENT,
    /// ESEARCH answers.
    rev2: bool,
    /// RFC 6855 UTF8=ACCEPT enabled: UTF-8 mailbox names and strings.
    utf8_accept: bool,
    /// RFC 5465 NOTIFY SET in force.
    notify: Option<NotifyState>,
    /// The next FETCH answers a NOTIFY MessageNew: no tagged reply.
    silent_fetch: bool,
    /// RFC 9586 UIDONLY enabled: no message numbers in commands (BAD [UIDREQUIRED]) nor
    /// in responses (UIDFETCH instead of FETCH, VANISHED instead of EXPUNGE).
    uidonly: bool,
    /// Inside [`Session::poll_light`]: run only what cannot block.
    light_only: bool,
    /// A command `poll_light` left for [`Session::poll`], with its extension options.
    deferred: Option<(Command<'static>, ext::Ext)>,
    /// What `poll_light` already asked the backend to decide that a command is cheap,
    /// used by that command (so it does not ask twice).
    prefetched_changes: Option<Changes>,
    prefetched_selection: Option<(String, yubin_model::Selection)>,
    /// The FLAGS and PERMANENTFLAGS lines of the last SELECT, for its keywords and
    /// read-only state: a re-SELECT usually sends them again unchanged.
    flag_lines: Option<(Vec<String>, bool, Vec<u8>)>,
}

/// Largest literal accepted before login (user names and passwords; RFC 7888 §4's
/// LITERAL- limit is the same size).
const PREAUTH_LITERAL: u32 = 4096;
/// Bytes one command may hold before login, literals included.
const PREAUTH_INPUT: usize = 16 * 1024;

fn tag_of(frag: &Fragmentizer) -> Option<Tag<'static>> {
    frag.decode_tag().map(IntoBoundedStatic::into_static)
}

fn text(s: &str) -> Text<'static> {
    Text::try_from(s.to_owned()).unwrap_or_else(|_| Text::try_from("error").expect("valid text"))
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Flags as IMAP flags; keywords that are not valid atoms are left out.
fn flag_list(f: &Flags) -> Vec<Flag<'static>> {
    let mut out = Vec::new();
    for (bit, flag) in [
        (flags::ANSWERED, Flag::Answered),
        (flags::FLAGGED, Flag::Flagged),
        (flags::DELETED, Flag::Deleted),
        (flags::SEEN, Flag::Seen),
        (flags::DRAFT, Flag::Draft),
    ] {
        if f.system & bit != 0 {
            out.push(flag);
        }
    }
    for k in &f.keywords {
        if let Ok(a) = Atom::try_from(k.clone()) {
            out.push(Flag::Keyword(a));
        }
    }
    out
}

/// The numbers a SELECT reports (RFC 9051 §6.3.2, RFC 7162 §3.1.2.1).
struct SelectNumbers {
    exists: u32,
    /// `* n RECENT` (IMAP4rev1 only).
    recent: Option<u32>,
    unseen: Option<NonZeroU32>,
    uidvalidity: NonZeroU32,
    uid_next: NonZeroU32,
    highest: NonZeroU64,
    /// RFC 8474 §4 MAILBOXID.
    mailbox_id: MailboxId,
}

/// SELECT's untagged numbers, written directly: a client re-SELECTs often, and six trips
/// through the general encoder were most of the command's own cost (its flag lines are
/// cached per session). `select_numbers_match_the_codec` checks the bytes are the codec's.
fn write_select_numbers(out: &mut Vec<u8>, n: SelectNumbers) {
    use std::io::Write;
    let _ = write!(out, "* {} EXISTS\r\n", n.exists);
    if let Some(r) = n.recent {
        let _ = write!(out, "* {r} RECENT\r\n");
    }
    if let Some(u) = n.unseen {
        let _ = write!(out, "* OK [UNSEEN {u}] First unseen\r\n");
    }
    let _ = write!(
        out,
        "* OK [UIDVALIDITY {}] UIDs valid\r\n* OK [UIDNEXT {}] Predicted next UID\r\n\
         * OK [HIGHESTMODSEQ {}] Highest\r\n* OK [MAILBOXID ({})] Ok\r\n",
        n.uidvalidity,
        n.uid_next,
        n.highest,
        mailbox_id(n.mailbox_id)
    );
}

/// `* n FETCH (...)` for the commonest FETCH, of UID, FLAGS, RFC822.SIZE and MODSEQ only,
/// written directly: a client syncing a large mailbox asks it for every message, and the
/// general encoder's allocations per message were most of its cost. False (nothing
/// written) for any other item; `fast_fetch_matches_the_codec` checks the bytes are the
/// codec's.
fn write_simple_fetch(out: &mut Vec<u8>, seq: u32, items: &[MessageDataItem<'_>]) -> bool {
    use std::io::Write;
    let simple = !items.is_empty()
        && items.iter().all(|i| {
            matches!(
                i,
                MessageDataItem::Uid(_)
                    | MessageDataItem::Rfc822Size(_)
                    | MessageDataItem::ModSeq(_)
                    | MessageDataItem::Flags(_)
            )
        });
    if !simple {
        return false;
    }
    let _ = write!(out, "* {seq} FETCH (");
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b' ');
        }
        let _ = match item {
            MessageDataItem::Uid(u) => write!(out, "UID {u}"),
            MessageDataItem::Rfc822Size(s) => write!(out, "RFC822.SIZE {s}"),
            MessageDataItem::ModSeq(m) => write!(out, "MODSEQ ({m})"),
            MessageDataItem::Flags(flags) => {
                out.extend_from_slice(b"FLAGS (");
                for (k, f) in flags.iter().enumerate() {
                    if k > 0 {
                        out.push(b' ');
                    }
                    let _ = match f {
                        FlagFetch::Flag(f) => write!(out, "{f}"),
                        FlagFetch::Recent => write!(out, "\\Recent"),
                    };
                }
                write!(out, ")")
            }
            _ => Ok(()),
        };
    }
    out.extend_from_slice(b")\r\n");
    true
}

/// IMAP flags to the model; `None` for flags a client may not set (`\Recent`, unknown `\X`).
fn to_flags(list: &[Flag<'_>]) -> Option<Flags> {
    let mut f = Flags::default();
    for flag in list {
        match flag {
            Flag::Answered => f.system |= flags::ANSWERED,
            Flag::Flagged => f.system |= flags::FLAGGED,
            Flag::Deleted => f.system |= flags::DELETED,
            Flag::Seen => f.system |= flags::SEEN,
            Flag::Draft => f.system |= flags::DRAFT,
            Flag::Keyword(k) => {
                if !f.has_keyword(k.as_ref()) {
                    f.keywords.push(k.as_ref().to_owned())
                }
            }
            Flag::Extension(_) => return None,
        }
    }
    Some(f)
}

/// Longest annotation value SETMETADATA takes (RFC 5464 §4.3 `[METADATA MAXSIZE]`).
const METADATA_MAX_SIZE: usize = 64 * 1024;
/// Annotations per mailbox, and for the server (`[METADATA TOOMANY]`).
const METADATA_MAX_ENTRIES: usize = 100;

/// A METADATA entry name, lower-cased (RFC 5464 §3.2: they compare without case), or
/// `None` when it is not one: it starts with /private/ or /shared/, has no empty level,
/// no trailing slash, no wildcard, only printable ASCII.
fn metadata_entry(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?.to_ascii_lowercase();
    let rest = s
        .strip_prefix("/private")
        .or_else(|| s.strip_prefix("/shared"))?;
    let ok = (rest.is_empty() || rest.starts_with('/'))
        && !s.ends_with('/')
        && !s.contains("//")
        && s.len() <= 1024
        && s.bytes()
            .all(|b| (0x21..0x7f).contains(&b) && b != b'*' && b != b'%');
    ok.then_some(s)
}

/// RFC 9586 §3: whether a command names messages by number (its sets, its SEARCH keys).
fn uses_message_numbers(body: &CommandBody<'_>, ext: &ext::Ext) -> bool {
    let criteria = match body {
        CommandBody::Fetch { uid, .. }
        | CommandBody::Store { uid, .. }
        | CommandBody::Copy { uid, .. }
        | CommandBody::Move { uid, .. } => return !uid,
        CommandBody::Append { .. } => return matches!(ext, ext::Ext::Replace { uid: false, .. }),
        CommandBody::Search { criteria, uid, .. } => {
            if !uid {
                return true;
            }
            criteria.as_ref().iter().collect::<Vec<_>>()
        }
        CommandBody::Sort {
            search_criteria,
            uid,
            ..
        }
        | CommandBody::Thread {
            search_criteria,
            uid,
            ..
        } => {
            if !uid {
                return true;
            }
            search_criteria.as_ref().iter().collect()
        }
        _ => return false,
    };
    // Iteratively: the decoder bounds the nesting, this does not rely on it.
    let mut stack = criteria;
    while let Some(k) = stack.pop() {
        match k {
            SearchKey::SequenceSet(_) => return true,
            SearchKey::And(v) => stack.extend(v.as_ref().iter()),
            SearchKey::Or(a, b) => {
                stack.push(a);
                stack.push(b);
            }
            SearchKey::Not(a) => stack.push(a),
            _ => {}
        }
    }
    false
}

/// Most URLs one URLFETCH may name.
const URLFETCH_MAX: usize = 100;

/// Metadata entries the server keeps for itself (URLAUTH keys).
const SERVER_ENTRIES: &str = "/private/vendor/yubin/";

/// RFC 4314 §2.1: every right, with the RFC 2086 `c` and `d` (§2.1.1) for old clients.
const ACL_RIGHTS: &str = "lrswipkxtecda";

fn code_other(code: &'static str) -> Code<'static> {
    Code::Other(imap_codec::imap_types::response::CodeOther::unvalidated(
        code.as_bytes(),
    ))
}

/// An astring for a response written by hand: quoted, or a literal when it cannot be.
fn astring_out(s: &[u8]) -> Vec<u8> {
    if s.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        let mut out = format!("{{{}}}\r\n", s.len()).into_bytes();
        out.extend_from_slice(s);
        return out;
    }
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'"');
    for &b in s {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

/// `* ESEARCH (TAG "t") [UID] REMOVEFROM (0 set) ADDTO (pos set)...` (RFC 5267 §4.3).
fn context_line(tag: &str, uid: bool, removed: &[u32], added: &[(usize, Vec<u32>)]) -> String {
    let mut line = format!(
        "* ESEARCH (TAG {})",
        String::from_utf8_lossy(&astring_out(tag.as_bytes()))
    );
    if uid {
        line.push_str(" UID");
    }
    if !removed.is_empty() {
        line.push_str(&format!(" REMOVEFROM (0 {})", compact(removed)));
    }
    for (pos, run) in added {
        let set = if *pos == 0 {
            let mut r = run.clone();
            r.sort_unstable();
            compact(&r)
        } else {
            in_order(run)
        };
        line.push_str(&format!(" ADDTO ({pos} {set})"));
    }
    line.push_str("\r\n");
    line
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn datetime(unix: i64) -> Option<DateTime> {
    let dt = chrono::DateTime::from_timestamp(unix, 0)?.fixed_offset();
    DateTime::try_from(dt).ok()
}

/// LIST pattern matching (RFC 9051 §6.3.9): `*` matches anything, `%` anything but `/`.
///
/// A simulation of the pattern as an automaton over the name, not backtracking: the cost is
/// at most (pattern length × name length), and the pattern is first cut to that which can
/// match at all (runs of wildcards collapse; more literal bytes than the name has cannot
/// match), so a peer's pattern of any size costs O(name²) per mailbox.
pub(crate) fn matches_pattern(pattern: &[u8], name: &[u8]) -> bool {
    // Collapse runs of wildcards: `**` = `*`, and `*` absorbs `%` next to it.
    let mut p: Vec<u8> = Vec::with_capacity(pattern.len().min(2 * name.len() + 2));
    let mut literals = 0usize;
    for &c in pattern {
        match (c, p.last().copied()) {
            (b'*', Some(b'*')) | (b'%', Some(b'*')) => {}
            (b'*', Some(b'%')) => {
                if let Some(last) = p.last_mut() {
                    *last = b'*';
                }
            }
            (b'%', Some(b'%')) => {}
            (b'*' | b'%', _) => p.push(c),
            _ => {
                literals += 1;
                if literals > name.len() {
                    return false;
                }
                p.push(c);
            }
        }
    }
    let n = p.len();
    let closure = |set: &mut Vec<bool>| {
        for j in 0..n {
            if set[j] && matches!(p[j], b'*' | b'%') {
                set[j + 1] = true;
            }
        }
    };
    let mut cur = vec![false; n + 1];
    let mut next = vec![false; n + 1];
    cur[0] = true;
    closure(&mut cur);
    for &c in name {
        next.iter_mut().for_each(|x| *x = false);
        let mut any = false;
        for j in 0..n {
            if !cur[j] {
                continue;
            }
            match p[j] {
                b'*' => next[j] = true,
                b'%' if c != b'/' => next[j] = true,
                b'%' => {}
                lit if lit == c => next[j + 1] = true,
                _ => {}
            }
            any = true;
        }
        if !any {
            return false;
        }
        closure(&mut next);
        std::mem::swap(&mut cur, &mut next);
    }
    cur[n]
}

/// STATUS items (RFC 9051 §6.3.11) by name; unknown names are skipped.
fn status_items(mb: &yubin_model::Mailbox, names: &[String]) -> Vec<StatusDataItem> {
    names
        .iter()
        .filter_map(|n| match n.to_ascii_uppercase().as_str() {
            "MESSAGES" => Some(StatusDataItem::Messages(mb.messages as u32)),
            "RECENT" => Some(StatusDataItem::Recent(mb.recent as u32)),
            "UIDNEXT" => Some(StatusDataItem::UidNext(nz(mb.uid_next))),
            "UIDVALIDITY" => Some(StatusDataItem::UidValidity(nz(mb.uidvalidity))),
            "UNSEEN" => Some(StatusDataItem::Unseen(mb.unseen as u32)),
            "HIGHESTMODSEQ" => Some(StatusDataItem::HighestModSeq(mb.highest_modseq)),
            "SIZE" => Some(StatusDataItem::Size(mb.size)),
            "DELETED" => Some(StatusDataItem::Deleted(mb.deleted as u32)),
            _ => None,
        })
        .collect()
}

/// Ascending values as (first, last) runs.
fn runs(values: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &v in values {
        match out.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(v) => last.1 = v,
            _ => out.push((v, v)),
        }
    }
    out
}

/// Ascending values as sequence-set text (`1:3,7`).
fn compact(values: &[u32]) -> String {
    runs(values)
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}:{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// RFC 8474 §4 MAILBOXID: ids are never reused (the store's counter), so the number is
/// enough; `F` makes it an objectid that starts with a letter.
fn mailbox_id(id: MailboxId) -> String {
    format!("F{id}")
}

/// RFC 8474 §5.2 THREADID: `T` and 16 hex digits of a hash of the thread's root
/// Message-ID (every message that names the same root shares it, in every mailbox);
/// `None` (THREADID NIL) for a message without any Message-ID to go by.
fn thread_id(root: &str) -> Option<String> {
    if root.is_empty() {
        return None;
    }
    // FNV-1a: stable across versions and processes (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in root.trim().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Some(format!("T{h:016x}"))
}

/// RFC 9394 §3 ` PARTIAL (first:last set)`, the set NIL when the range holds nothing.
fn partial_item(values: &[u32], (a, b): (i32, i32)) -> String {
    let part = ext::partial_of(values, (a, b));
    let set = if part.is_empty() {
        "NIL".to_owned()
    } else {
        in_order(part)
    };
    format!(" PARTIAL ({a}:{b} {set})")
}

/// Values as a sequence set in their given order: ascending runs become `a:b`.
fn in_order(values: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while let Some(&start) = values.get(i) {
        let mut end = start;
        while values
            .get(i + 1)
            .is_some_and(|&n| Some(n) == end.checked_add(1))
        {
            end += 1;
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if end == start {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

fn uid_set(uids: &[u32]) -> Option<UidSet> {
    let elems = runs(uids)
        .into_iter()
        .map(|(a, b)| {
            Some(if a == b {
                UidElement::Single(NonZeroU32::new(a)?)
            } else {
                UidElement::Range(NonZeroU32::new(a)?, NonZeroU32::new(b)?)
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Vec1::try_from(elems).ok().map(UidSet)
}

/// Ascending values as a sequence set.
fn sequence_set(values: &[u32]) -> Option<SequenceSet> {
    SequenceSet::try_from(compact(values).as_str()).ok()
}

enum SortOrThread<'a> {
    Sort(&'a [SortCriterion]),
    Thread(ThreadingAlgorithm<'a>),
}

/// STORE's arguments after the sequence set.
struct StoreArgs<'a> {
    kind: StoreType,
    response: StoreResponse,
    flags: &'a [Flag<'a>],
    uid: bool,
    unchanged_since: Option<u64>,
}

impl<B: Backend> Session<B> {
    /// A mailbox name from the wire (modified UTF-7) to UTF-8.
    fn mailbox_name(&self, m: &WireMailbox<'_>) -> Result<String, &'static str> {
        match m {
            WireMailbox::Inbox => Ok("INBOX".into()),
            WireMailbox::Other(o) => {
                let raw =
                    std::str::from_utf8(o.as_ref()).map_err(|_| "mailbox name is not UTF-8")?;
                // IMAP4rev1 clients send modified UTF-7; a name that does not decode is taken
                // as it is (some clients send UTF-8 regardless).
                Ok(if raw.is_ascii() && !self.utf8_names() {
                    mutf7::decode(raw).unwrap_or_else(|| raw.to_owned())
                } else {
                    raw.to_owned()
                })
            }
        }
    }

    /// Mailbox names travel as UTF-8, not modified UTF-7.
    fn utf8_names(&self) -> bool {
        self.rev2 || self.utf8_accept
    }

    fn wire_mailbox(&self, name: &str) -> WireMailbox<'static> {
        if name == "INBOX" {
            return WireMailbox::Inbox;
        }
        // RFC 9051 §5.1, RFC 6855 §3: IMAP4rev2 and UTF8=ACCEPT names are UTF-8.
        let wire = if self.utf8_names() {
            name.to_owned()
        } else {
            mutf7::encode(name)
        };
        WireMailbox::try_from(wire).unwrap_or(WireMailbox::Inbox)
    }

    /// A new session on a connection; `tls` when the connection is already encrypted.
    pub fn new(cfg: Config, backend: B, tls: bool) -> Self {
        let limit = cfg.append_limit.saturating_add(64 * 1024);
        let mut s = Session {
            frag: Fragmentizer::new(limit),
            cfg,
            backend,
            out: Vec::new(),
            state: State::NotAuthenticated,
            mode: Mode::Command,
            tls,
            selected: None,
            fetching: None,
            auth_failures: 0,
            sasl: None,
            pending: 0,
            condstore: false,
            qresync: false,
            compressed: false,
            ext: ext::Ext::None,
            rev2: false,
            utf8_accept: false,
            uidonly: false,
            notify: None,
            silent_fetch: false,
            light_only: false,
            deferred: None,
            prefetched_changes: None,
            prefetched_selection: None,
            flag_lines: None,
        };
        let caps = s.capabilities();
        // `text` falls back to a plain word if the configured host name is not valid text.
        let greeting = text(&format!("{} IMAP4rev1 yubin ready", s.cfg.hostname));
        let Ok(status) = Status::ok(None, Some(Code::Capability(caps)), greeting);
        s.send(Response::Status(status));
        s
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if matches!(self.mode, Mode::Closed) {
            return;
        }
        self.pending = self.pending.saturating_add(bytes.len());
        if self.pending > self.input_budget() {
            // A command that never ends (a endless line, a literal past every limit) is
            // not buffered: the connection ends.
            self.send(Response::Status(
                Status::bye(Some(Code::TooBig), "Command too long").expect("valid"),
            ));
            self.mode = Mode::Closed;
            return;
        }
        self.frag.enqueue_bytes(bytes);
    }

    /// Most bytes one command may send before login (LOGIN and AUTHENTICATE need no
    /// more; 200 strangers must not hold gigabytes). After login the fragmentizer keeps at
    /// most APPENDLIMIT + 64 KiB of a command and drops the rest, so nothing more is needed.
    fn input_budget(&self) -> usize {
        match self.state {
            State::NotAuthenticated => PREAUTH_INPUT,
            State::Authenticated => usize::MAX,
        }
    }

    /// A command has begun arriving and is not complete yet (the host's deadline for it
    /// keeps running: a slow peer cannot stretch one command by trickling bytes).
    pub fn partial_input(&self) -> bool {
        self.pending > 0
    }

    /// The backend (the host asks it which account is logged in).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Bytes of the command being received that this session holds (an APPEND literal
    /// on its way): the host's budget for bodies in flight counts them.
    pub fn held_bytes(&self) -> usize {
        self.pending
            .min((self.cfg.append_limit as usize).saturating_add(64 * 1024))
    }

    /// Logged in (the host gives unauthenticated connections less time).
    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated)
    }

    /// Bytes to send to the client now.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The selected mailbox, so the host can wake an IDLE session only for its changes.
    /// The selected mailbox's message list (shared with the store and other sessions
    /// until one of them changes it); for tests of that sharing.
    #[doc(hidden)]
    pub fn selected_messages(&self) -> Option<&Arc<Vec<MessageMeta>>> {
        self.selected.as_ref().map(|s| &s.msgs)
    }

    pub fn selected_mailbox(&self) -> Option<MailboxId> {
        self.selected.as_ref().map(|s| s.id)
    }

    /// The selected mailbox changed (host notification during IDLE).
    pub fn changed(&mut self) {
        if matches!(self.mode, Mode::Idle(_)) {
            self.refresh(true);
        }
    }

    pub fn tls_started(&mut self) {
        self.tls = true;
        self.cfg.starttls = false;
        // RFC 9051 §6.2.1: discard anything sent before the handshake.
        self.frag = Fragmentizer::new(self.cfg.append_limit.saturating_add(64 * 1024));
        self.pending = 0;
        self.mode = Mode::Command;
    }

    pub fn compression_started(&mut self) {
        self.compressed = true;
        self.mode = Mode::Command;
    }

    /// The client was idle too long (RFC 9051 §5.4: at least 30 minutes).
    pub fn timeout(&mut self) {
        self.send(Response::Status(
            Status::bye(None, "Autologout; idle for too long").expect("valid"),
        ));
        self.mode = Mode::Closed;
    }

    /// Run what the input asks for, until more input (or the host) is needed. May block
    /// in the backend.
    pub fn poll(&mut self) -> Event {
        if let Some((cmd, ext)) = self.deferred.take() {
            self.run_command(cmd, ext);
        }
        self.poll_inner()
    }

    /// Like [`Session::poll`], but only what cannot block: commands that read at most a
    /// row or two from the backend and write nothing (CAPABILITY, NOOP when nothing
    /// changed, SELECT of a mailbox the backend holds in memory, ...). Anything else
    /// returns [`Event::Blocking`] before it starts. A host on an async runtime answers
    /// the frequent cheap commands on its own thread this way, and pays the hand-off to a
    /// blocking thread (tokio's `block_in_place`: a thread wakeup and a migration, about
    /// a third of a NOOP's cost) only for work that needs it.
    pub fn poll_light(&mut self) -> Event {
        if self.deferred.is_some() || self.fetching.is_some() {
            return Event::Blocking;
        }
        self.light_only = true;
        let ev = self.poll_inner();
        self.light_only = false;
        ev
    }

    fn poll_inner(&mut self) -> Event {
        if let Some(job) = self.fetching.take() {
            self.fetch_run(job);
        }
        loop {
            // A paused FETCH finishes before the next command is read (RFC 9051 §5.5).
            if self.fetching.is_some() {
                return Event::Flush;
            }
            match self.mode {
                Mode::Closed => return Event::Close,
                Mode::StartTls => return Event::StartTls,
                Mode::Compress => return Event::Compress,
                // AUTHENTICATE's data leads to a password hash.
                Mode::AuthData(_) if self.light_only => return Event::Blocking,
                _ => {}
            }
            if self.deferred.is_some() {
                return Event::Blocking;
            }
            let Some(info) = self.frag.progress() else {
                return match self.mode {
                    Mode::Idle(_) => Event::Idle,
                    _ => Event::NeedInput,
                };
            };
            if let FragmentInfo::Line {
                announcement: Some(LiteralAnnouncement { mode, length }),
                ..
            } = info
            {
                let limit = match self.state {
                    State::NotAuthenticated => PREAUTH_LITERAL,
                    State::Authenticated => self.cfg.append_limit,
                };
                if length > limit {
                    if mode == LiteralMode::Sync {
                        // The client waits for our go-ahead: refuse, and it sends nothing.
                        let tag = tag_of(&self.frag);
                        self.frag.skip_message();
                        let why = match self.state {
                            State::NotAuthenticated => "Literal too large before login",
                            State::Authenticated => "Literal exceeds APPENDLIMIT",
                        };
                        self.tagged_no(tag, Some(Code::TooBig), why);
                    } else if matches!(self.state, State::NotAuthenticated) {
                        // RFC 7888 §4: a LITERAL+ too big for us; before login nobody is
                        // owed the bandwidth of reading it: the connection ends.
                        self.send(Response::Status(
                            Status::bye(Some(Code::TooBig), "Literal too large before login")
                                .expect("valid"),
                        ));
                        self.mode = Mode::Closed;
                        return Event::Close;
                    }
                    // After login, LITERAL+ data comes anyway; the fragmentizer reads and
                    // drops it (past its limit), and the command fails.
                } else if mode == LiteralMode::Sync {
                    self.send(Response::CommandContinuationRequest(
                        CommandContinuationRequest::basic(None, "Ready for literal data")
                            .expect("valid"),
                    ));
                }
                continue;
            }
            if !self.frag.is_message_complete() {
                continue;
            }
            self.pending = 0;
            match std::mem::replace(&mut self.mode, Mode::Command) {
                Mode::Command => self.command_message(),
                Mode::AuthData(tag) => self.auth_data(tag),
                Mode::Idle(tag) => self.idle_done(tag),
                other => self.mode = other,
            }
        }
    }

    fn command_message(&mut self) {
        use imap_codec::decode::Decoder;
        // Options imap-codec cannot parse yet are cut out first (see `ext`).
        if !self.frag.is_max_message_size_exceeded()
            && !self.frag.is_message_poisoned()
            && extcmd::is_ext_command(self.frag.message_bytes())
        {
            let Some(c) = extcmd::parse(self.frag.message_bytes()) else {
                let tag = tag_of(&self.frag);
                return self.tagged_bad(tag, None, "Syntax error in command");
            };
            let Ok(tag) = Tag::try_from(c.tag.clone()) else {
                return self.tagged_bad(None, None, "Syntax error in command");
            };
            let carrier = Command {
                tag,
                body: CommandBody::Noop,
            };
            return self.run_command(carrier, ext::Ext::Custom(c));
        }
        if !self.frag.is_max_message_size_exceeded() && !self.frag.is_message_poisoned() {
            let (bytes, ext) = ext::extract(self.frag.message_bytes());
            if let ext::Ext::Catenate(_) = &ext {
                let Some(tag) = tag_of(&self.frag) else {
                    return self.tagged_bad(None, None, "Syntax error in command");
                };
                let carrier = Command {
                    tag,
                    body: CommandBody::Noop,
                };
                return self.run_command(carrier, ext);
            }
            // RFC 5182 `$`: the saved result, as UIDs or sequence numbers (each of a
            // few `$` in one SEARCH).
            let (mut bytes, mut ext) = (bytes, ext);
            for _ in 0..8 {
                let Some(d) = ext::find_dollar(&bytes) else {
                    break;
                };
                // UIDONLY (RFC 9586 §3): a message-set `$` key is given as its UIDs.
                let as_uids = d.search && !d.uid && self.uidonly;
                let set = self
                    .saved_set(d.uid || as_uids)
                    .map(|s| if as_uids { format!("UID {s}") } else { s });
                let with = match set {
                    Some(set) => set,
                    None if d.search => "NOT ALL".to_owned(),
                    None => {
                        // §2.1: an empty `$` names no message; the command does nothing.
                        let tag = tag_of(&self.frag);
                        if self.selected.is_none() {
                            return self.tagged_bad(tag, None, "Select a mailbox first");
                        }
                        if let Some(tag) = tag {
                            self.ok(&tag, None, "Completed, no messages ($ is empty)");
                        }
                        return;
                    }
                };
                // An empty `UID $` key is replaced whole.
                let from = if with == "NOT ALL" && d.uid {
                    d.at.saturating_sub(4)
                } else {
                    d.at
                };
                let mut b = bytes.get(..from).unwrap_or_default().to_vec();
                b.extend_from_slice(with.as_bytes());
                b.extend_from_slice(bytes.get(d.at + 1..).unwrap_or_default());
                if ext == ext::Ext::None {
                    ext = ext::Ext::Rewritten;
                }
                bytes = std::borrow::Cow::Owned(b);
            }
            let (bytes, ext) = match ext::object_id_keys(&bytes) {
                Some(b) if ext == ext::Ext::None => (b.into(), ext::Ext::Rewritten),
                Some(b) => (b.into(), ext),
                None => (bytes, ext),
            };
            if ext != ext::Ext::None {
                let decoded = match CommandCodec::default().decode(&bytes) {
                    Ok((&[], cmd)) => Some(cmd.into_static()),
                    _ => None,
                };
                match decoded {
                    Some(cmd) => self.run_command(cmd, ext),
                    None => {
                        let tag = tag_of(&self.frag);
                        self.tagged_bad(tag, None, "Syntax error in command");
                    }
                }
                return;
            }
        }
        let decoded = match self.frag.decode_message(&CommandCodec::default()) {
            Ok(cmd) => Ok(cmd.into_static()),
            Err(DecodeMessageError::MessageTooLong { .. }) => {
                Err((Some(Code::TooBig), "Command too long"))
            }
            Err(_) => Err((None, "Syntax error in command")),
        };
        match decoded {
            Ok(cmd) => self.run_command(cmd, ext::Ext::None),
            Err((code, msg)) => {
                let tag = tag_of(&self.frag);
                self.tagged_bad(tag, code, msg);
            }
        }
    }

    /// Execute a command, or, in `poll_light`, leave one that may block for `poll`.
    fn run_command(&mut self, cmd: Command<'static>, ext: ext::Ext) {
        if self.light_only
            && (matches!(ext, ext::Ext::Custom(_) | ext::Ext::Catenate(_)) || !self.light(&cmd))
        {
            self.deferred = Some((cmd, ext));
            return;
        }
        if let ext::Ext::Catenate(c) = ext {
            self.catenate(cmd.tag, c);
            self.prefetched_changes = None;
            self.prefetched_selection = None;
            return;
        }
        if let ext::Ext::Custom(c) = ext {
            self.ext_command(cmd.tag, c);
            self.prefetched_changes = None;
            self.prefetched_selection = None;
            return;
        }
        self.ext = ext;
        // The session's own changes are not reported back to it (RFC 5465 §5).
        let own_change = self.notify.is_some()
            && matches!(
                cmd.body,
                CommandBody::Create { .. }
                    | CommandBody::Delete { .. }
                    | CommandBody::Rename { .. }
                    | CommandBody::Subscribe { .. }
                    | CommandBody::Unsubscribe { .. }
                    | CommandBody::Append { .. }
                    | CommandBody::Copy { .. }
                    | CommandBody::Move { .. }
            );
        self.command(cmd);
        if own_change {
            self.notify_others(false);
        }
        self.ext = ext::Ext::None;
        self.prefetched_changes = None;
        self.prefetched_selection = None;
    }

    /// Whether `cmd` reads at most a row or two and writes nothing, so `poll_light` may
    /// run it. Asking may take those rows; the command then uses them.
    fn light(&mut self, cmd: &Command<'static>) -> bool {
        match &cmd.body {
            CommandBody::Capability
            | CommandBody::Logout
            | CommandBody::Id { .. }
            | CommandBody::Enable { .. }
            | CommandBody::Namespace
            | CommandBody::StartTLS
            | CommandBody::Unselect => true,
            // They apply what changed; applying much copies the message list.
            CommandBody::Noop | CommandBody::Check | CommandBody::Idle => {
                let Some(sel) = &self.selected else {
                    return true;
                };
                match self.backend.changes(sel.id, sel.highest_modseq) {
                    Ok(ch) if ch.changed.is_empty() && ch.expunged.is_empty() => {
                        self.prefetched_changes = Some(ch);
                        true
                    }
                    _ => false,
                }
            }
            CommandBody::Select {
                mailbox,
                parameters,
            }
            | CommandBody::Examine {
                mailbox,
                parameters,
            } if parameters.is_empty() && self.state == State::Authenticated => {
                let Ok(name) = self.mailbox_name(mailbox) else {
                    return true; // BAD
                };
                match self.backend.select_cached(&name) {
                    Ok(Some(s)) => {
                        self.prefetched_selection = Some((name, s));
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }

    // ----- output helpers -----

    fn send(&mut self, r: Response<'_>) {
        // Fragment by fragment: `dump` would build one more copy of the response.
        for f in ResponseCodec::default().encode(&r) {
            match f {
                imap_codec::encode::Fragment::Line { data }
                | imap_codec::encode::Fragment::Literal { data, .. } => {
                    self.out.extend_from_slice(&data)
                }
            }
        }
    }

    fn data(&mut self, d: Data<'_>) {
        self.send(Response::Data(d));
    }

    /// An untagged FETCH of the message at `idx` in the snapshot; after ENABLE UIDONLY
    /// a UIDFETCH (RFC 9586 §3.3).
    fn fetch_data(&mut self, idx: usize, mut items: Vec<MessageDataItem<'static>>) {
        let uid = self
            .selected
            .as_ref()
            .and_then(|s| s.msgs.get(idx))
            .map_or(0, |m| m.uid);
        let num = if self.uidonly {
            if items.len() > 1 {
                items.retain(|i| !matches!(i, MessageDataItem::Uid(_)));
            }
            uid
        } else {
            idx as u32 + 1
        };
        let Ok(items) = Vec1::try_from(items) else {
            return;
        };
        let start = self.out.len();
        self.data(Data::Fetch {
            seq: nz(num),
            items,
        });
        if self.uidonly {
            self.uidfetch_at(start);
        }
    }

    /// `* n FETCH (` written at `start` becomes `* n UIDFETCH (` (RFC 9586 §3.3).
    fn uidfetch_at(&mut self, start: usize) {
        let head = self.out.get(start..).unwrap_or_default();
        let head = head.get(..head.len().min(24)).unwrap_or_default();
        if let Some(p) = find_bytes(head, b" FETCH (") {
            let at = start + p + 1;
            self.out.splice(at..at, *b"UID");
        }
    }

    fn tagged(
        &mut self,
        kind: u8,
        tag: Option<Tag<'static>>,
        code: Option<Code<'static>>,
        msg: &str,
    ) {
        let t = text(msg);
        let status = match (kind, tag) {
            (b'O', tag) => Status::ok(tag, code, t),
            (b'N', tag) => Status::no(tag, code, t),
            (_, tag) => Status::bad(tag, code, t),
        };
        let Ok(s) = status;
        self.send(Response::Status(s));
    }

    fn ok(&mut self, tag: &Tag<'static>, code: Option<Code<'static>>, msg: &str) {
        self.tagged(b'O', Some(tag.clone()), code, msg);
    }

    fn no(&mut self, tag: &Tag<'static>, code: Option<Code<'static>>, msg: &str) {
        self.tagged(b'N', Some(tag.clone()), code, msg);
    }

    fn tagged_no(&mut self, tag: Option<Tag<'static>>, code: Option<Code<'static>>, msg: &str) {
        self.tagged(b'N', tag, code, msg);
    }

    fn tagged_bad(&mut self, tag: Option<Tag<'static>>, code: Option<Code<'static>>, msg: &str) {
        self.tagged(b'B', tag, code, msg);
    }

    fn bad_code(&mut self, tag: &Tag<'static>, code: &'static str, msg: &str) {
        let code = Code::Other(imap_codec::imap_types::response::CodeOther::unvalidated(
            code.as_bytes(),
        ));
        self.tagged(b'B', Some(tag.clone()), Some(code), msg);
    }

    fn bad(&mut self, tag: &Tag<'static>, msg: &str) {
        self.tagged(b'B', Some(tag.clone()), None, msg);
    }

    fn backend_no(&mut self, tag: &Tag<'static>, e: BackendError) {
        let (code, msg) = match e {
            BackendError::NotFound(m) => (
                Code::Other(imap_codec::imap_types::response::CodeOther::unvalidated(
                    b"NONEXISTENT".as_slice(),
                )),
                m,
            ),
            BackendError::Exists(m) => (
                Code::Other(imap_codec::imap_types::response::CodeOther::unvalidated(
                    b"ALREADYEXISTS".as_slice(),
                )),
                m,
            ),
            BackendError::Refused(m) => (
                Code::Other(imap_codec::imap_types::response::CodeOther::unvalidated(
                    b"CANNOT".as_slice(),
                )),
                m,
            ),
            BackendError::OverQuota(m) => (Code::OverQuota, m),
            BackendError::Limit(m) => (code_other("LIMIT"), m),
            BackendError::Failed(m) => (
                Code::Other(imap_codec::imap_types::response::CodeOther::unvalidated(
                    b"UNAVAILABLE".as_slice(),
                )),
                m,
            ),
        };
        self.no(tag, Some(code), &msg);
    }

    fn capabilities(&self) -> Vec1<Capability<'static>> {
        let mut caps = vec![Capability::Imap4Rev1];
        if let Ok(a) = Atom::try_from("IMAP4rev2") {
            caps.push(Capability::from(a));
        }
        let mut other = |s: String| {
            if let Ok(a) = Atom::try_from(s) {
                caps.push(Capability::from(a));
            }
        };
        other("LITERAL+".into());
        other("SASL-IR".into());
        other("ID".into());
        other("ENABLE".into());
        other("IDLE".into());
        other("UNSELECT".into());
        other("UIDPLUS".into());
        other("MOVE".into());
        other("NAMESPACE".into());
        other("SPECIAL-USE".into());
        other("CREATE-SPECIAL-USE".into());
        other("CHILDREN".into());
        other("CONDSTORE".into());
        other("QRESYNC".into());
        other("BINARY".into());
        other("ESEARCH".into());
        other("PARTIAL".into());
        other("LIST-EXTENDED".into());
        other("LIST-STATUS".into());
        other("SORT".into());
        other("SORT=DISPLAY".into());
        other("ESORT".into());
        other("THREAD=ORDEREDSUBJECT".into());
        other("THREAD=REFERENCES".into());
        other("COMPRESS=DEFLATE".into());
        other("QUOTA".into());
        other("QUOTA=RES-STORAGE".into());
        other("WITHIN".into());
        other("METADATA".into());
        other("PREVIEW".into());
        other("UTF8=ACCEPT".into());
        other("OBJECTID".into());
        other("SAVEDATE".into());
        other("REPLACE".into());
        other("MULTIAPPEND".into());
        other("SEARCHRES".into());
        other("UIDONLY".into());
        other("CONTEXT=SEARCH".into());
        other("CONTEXT=SORT".into());
        other("CATENATE".into());
        other("URLAUTH".into());
        other("NOTIFY".into());
        other("ACL".into());
        other("RIGHTS=texk".into());
        other("LIST-MYRIGHTS".into());
        other(format!("APPENDLIMIT={}", self.cfg.append_limit));
        if self.state == State::NotAuthenticated {
            if self.cfg.starttls && !self.tls {
                caps.push(Capability::StartTls);
            }
            if self.tls || self.cfg.plaintext_auth {
                caps.push(Capability::Auth(AuthMechanism::ScramSha256));
                caps.push(Capability::Auth(AuthMechanism::Plain));
            } else {
                caps.push(Capability::LoginDisabled);
            }
        }
        Vec1::try_from(caps).expect("non-empty")
    }

    // ----- commands -----

    fn command(&mut self, cmd: Command<'static>) {
        let tag = cmd.tag;
        let authed = self.state == State::Authenticated;
        if !matches!(
            cmd.body,
            CommandBody::Logout
                | CommandBody::Capability
                | CommandBody::Select { .. }
                | CommandBody::Examine { .. }
                | CommandBody::Unselect
        ) && self.selected_deleted()
        {
            return;
        }
        let selected = self.selected.is_some();
        if self.uidonly && selected && uses_message_numbers(&cmd.body, &self.ext) {
            // RFC 9586 §3: message numbers are not used once UIDONLY is enabled.
            return self.bad_code(
                &tag,
                "UIDREQUIRED",
                "Message numbers are not used after ENABLE UIDONLY",
            );
        }
        match cmd.body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.data(Data::Capability(caps));
                self.ok(&tag, None, "CAPABILITY completed");
            }
            CommandBody::Noop => {
                self.refresh(true);
                self.ok(&tag, None, "NOOP completed");
            }
            CommandBody::Check if selected => {
                self.refresh(true);
                self.ok(&tag, None, "CHECK completed");
            }
            CommandBody::Logout => {
                self.send(Response::Status(
                    Status::bye(None, "Logging out").expect("valid"),
                ));
                self.ok(&tag, None, "LOGOUT completed");
                self.mode = Mode::Closed;
            }
            CommandBody::StartTLS if !authed => {
                if self.tls {
                    self.bad(&tag, "TLS is already active");
                } else if !self.cfg.starttls {
                    self.no(&tag, None, "TLS is not available");
                } else {
                    self.ok(&tag, None, "Begin TLS negotiation now");
                    self.mode = Mode::StartTls;
                }
            }
            CommandBody::Login { username, password } if !authed => {
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                self.login(&tag, &user, &pass);
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } if !authed => {
                let mech = match mechanism {
                    AuthMechanism::Plain => yubin_sasl::Mechanism::Plain,
                    AuthMechanism::Login => yubin_sasl::Mechanism::Login,
                    AuthMechanism::ScramSha256 => yubin_sasl::Mechanism::ScramSha256,
                    _ => return self.no(&tag, None, "Unsupported authentication mechanism"),
                };
                if !self.tls && !self.cfg.plaintext_auth {
                    return self.no(
                        &tag,
                        Some(code("PRIVACYREQUIRED")),
                        "Use STARTTLS or port 993 before logging in",
                    );
                }
                // RFC 4959: SASL-IR (imap-codec decodes it; `=` is empty).
                let initial = initial_response.map(|ir| ir.declassify().to_vec());
                let secret = self.backend.sasl_secret();
                let (x, next) = yubin_sasl::Exchange::start(mech, initial.as_deref(), secret);
                self.sasl_next(tag, x, next);
            }
            CommandBody::Id { .. } => {
                let params = vec![
                    (
                        crate::message::istring("name"),
                        crate::message::nstring(Some("yubin")),
                    ),
                    (
                        crate::message::istring("version"),
                        crate::message::nstring(Some(env!("CARGO_PKG_VERSION"))),
                    ),
                ];
                self.data(Data::Id {
                    parameters: Some(params),
                });
                self.ok(&tag, None, "ID completed");
            }
            _ if !authed => self.bad(&tag, "Log in first"),
            CommandBody::Enable { capabilities } => {
                let mut enabled = Vec::new();
                for c in capabilities.into_inner() {
                    let name = c.to_string().to_ascii_uppercase();
                    if name == "IMAP4REV2" && !self.rev2 {
                        self.rev2 = true;
                        enabled.push(c);
                    } else if name == "UTF8=ACCEPT" && !self.utf8_accept {
                        self.utf8_accept = true;
                        enabled.push(c);
                    } else if name == "CONDSTORE" && !self.condstore {
                        self.enable_condstore();
                        enabled.push(c);
                    } else if name == "UIDONLY" && !self.uidonly {
                        self.uidonly = true;
                        enabled.push(c);
                    } else if name == "QRESYNC" && !self.qresync {
                        // RFC 7162 §3.2.3: QRESYNC implies CONDSTORE.
                        self.qresync = true;
                        self.enable_condstore();
                        enabled.push(c);
                    }
                }
                self.data(Data::Enabled {
                    capabilities: enabled,
                });
                self.ok(&tag, None, "ENABLE completed");
            }
            CommandBody::Namespace => {
                self.out
                    .extend_from_slice(b"* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
                self.ok(&tag, None, "NAMESPACE completed");
            }
            CommandBody::GetMetadata {
                options,
                mailbox,
                entries,
            } => self.get_metadata(&tag, &options, &mailbox, entries.as_ref()),
            CommandBody::SetMetadata {
                mailbox,
                entry_values,
            } => self.set_metadata(&tag, &mailbox, entry_values.as_ref()),
            CommandBody::Select {
                mailbox,
                parameters,
            } => self.select(&tag, &mailbox, false, &parameters),
            CommandBody::Examine {
                mailbox,
                parameters,
            } => self.select(&tag, &mailbox, true, &parameters),
            CommandBody::Create { mailbox } if matches!(self.ext, ext::Ext::Create(_)) => {
                self.create_special(&tag, &mailbox)
            }
            CommandBody::Create { mailbox } => {
                // RFC 3501 §6.3.3 / RFC 9051 §6.3.4: a trailing separator only declares
                // that children will follow; a server that needs no such declaration
                // ignores it.
                let name = match self.mailbox_name(&mailbox) {
                    Ok(n) => n,
                    Err(e) => return self.bad(&tag, e),
                };
                let name = match name.strip_suffix('/').filter(|n| !n.is_empty()) {
                    Some(parent) => parent.to_owned(),
                    None => name,
                };
                match self.backend.create(&name) {
                    Ok(()) => self.created(&tag, &name),
                    Err(e) => self.backend_no(&tag, e),
                }
            }
            CommandBody::Delete { mailbox } => {
                if self.is_selected_name(&mailbox) {
                    self.selected = None;
                }
                self.simple(&tag, &mailbox, |b, n| b.delete(n), "DELETE")
            }
            CommandBody::Rename { from, to } => {
                match (self.mailbox_name(&from), self.mailbox_name(&to)) {
                    (Ok(f), Ok(t)) => match self.backend.rename(&f, &t) {
                        Ok(()) => self.ok(&tag, None, "RENAME completed"),
                        Err(e) => self.backend_no(&tag, e),
                    },
                    _ => self.bad(&tag, "Invalid mailbox name"),
                }
            }
            CommandBody::Subscribe { mailbox } => {
                self.simple(&tag, &mailbox, |b, n| b.subscribe(n, true), "SUBSCRIBE")
            }
            CommandBody::Unsubscribe { mailbox } => {
                self.simple(&tag, &mailbox, |b, n| b.subscribe(n, false), "UNSUBSCRIBE")
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(&tag, &reference, &mailbox_wildcard, false),
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(&tag, &reference, &mailbox_wildcard, true),
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(&tag, &mailbox, &item_names),
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => self.append(&tag, &mailbox, &flags, date, message),
            CommandBody::GetQuotaRoot { mailbox } => {
                if let Err(e) = self
                    .mailbox_name(&mailbox)
                    .map_err(|e| BackendError::Refused(e.into()))
                    .and_then(|n| self.backend.mailbox(&n))
                {
                    return self.backend_no(&tag, e);
                }
                // One quota root, "", for the whole account (RFC 9208 §4.3).
                self.data(Data::QuotaRoot {
                    mailbox,
                    roots: vec![AString::try_from("").expect("valid")],
                });
                self.quota_data();
                self.ok(&tag, None, "GETQUOTAROOT completed");
            }
            CommandBody::GetQuota { root } => {
                if !root.as_ref().is_empty() {
                    return self.no(&tag, None, "No such quota root");
                }
                self.quota_data();
                self.ok(&tag, None, "GETQUOTA completed");
            }
            CommandBody::SetQuota { .. } => self.no(
                &tag,
                None,
                "Quotas are set by the administrator (yubin user quota)",
            ),
            CommandBody::Compress { .. } => {
                if self.compressed {
                    self.no(
                        &tag,
                        Some(Code::CompressionActive),
                        "Compression is already active",
                    );
                } else {
                    self.ok(&tag, None, "DEFLATE active");
                    self.mode = Mode::Compress;
                }
            }
            CommandBody::Idle => {
                self.send(Response::CommandContinuationRequest(
                    CommandContinuationRequest::basic(None, "idling").expect("valid"),
                ));
                self.refresh(true);
                self.mode = Mode::Idle(tag);
            }
            _ if !selected => self.bad(&tag, "Select a mailbox first"),
            CommandBody::Close => {
                if let Some(sel) = &self.selected
                    && !sel.read_only
                {
                    let id = sel.id;
                    let _ = self.backend.expunge(id, None);
                }
                self.selected = None;
                self.ok(&tag, None, "CLOSE completed");
            }
            CommandBody::Unselect => {
                self.selected = None;
                self.ok(&tag, None, "UNSELECT completed");
            }
            CommandBody::Expunge => self.expunge(&tag, None),
            CommandBody::ExpungeUid { sequence_set } => self.expunge(&tag, Some(&sequence_set)),
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => self.fetch(&tag, &sequence_set, macro_or_item_names, uid, &modifiers),
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                let unchanged_since = modifiers
                    .iter()
                    .map(|StoreModifier::UnchangedSince(v)| *v)
                    .next();
                self.store(
                    &tag,
                    &sequence_set,
                    StoreArgs {
                        kind,
                        response,
                        flags: &flags,
                        uid,
                        unchanged_since,
                    },
                )
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(&tag, &sequence_set, &mailbox, uid, false),
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(&tag, &sequence_set, &mailbox, uid, true),
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                if let Some(cs) = &charset
                    && !["UTF-8", "US-ASCII"]
                        .iter()
                        .any(|c| cs.as_ref().eq_ignore_ascii_case(c))
                {
                    self.out.extend_from_slice(
                        &format!(
                            "{} NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n",
                            tag.as_ref()
                        )
                        .into_bytes(),
                    );
                    return;
                }
                self.search(&tag, criteria.as_ref(), uid)
            }
            CommandBody::Sort {
                sort_criteria,
                search_criteria,
                uid,
                ..
            } => self.sort_or_thread(
                &tag,
                search_criteria.as_ref(),
                uid,
                SortOrThread::Sort(sort_criteria.as_ref()),
            ),
            CommandBody::Thread {
                algorithm,
                search_criteria,
                uid,
                ..
            } => self.sort_or_thread(
                &tag,
                search_criteria.as_ref(),
                uid,
                SortOrThread::Thread(algorithm),
            ),
            _ => self.bad(&tag, "Command not supported in this state"),
        }
    }

    /// Commands parsed by `extcmd` (imap-codec has no types for them).
    fn ext_command(&mut self, tag: Tag<'static>, c: ExtCommand) {
        if self.state != State::Authenticated {
            return self.bad(&tag, "Log in first");
        }
        if self.selected_deleted() {
            return;
        }
        match c.verb.as_str() {
            "MYRIGHTS" | "GETACL" | "LISTRIGHTS" | "SETACL" | "DELETEACL" => self.acl(&tag, &c),
            "CANCELUPDATE" => self.cancel_update(&tag, &c),
            "GENURLAUTH" => self.genurlauth(&tag, &c),
            "URLFETCH" => self.urlfetch(&tag, &c),
            "RESETKEY" => self.resetkey(&tag, &c),
            "NOTIFY" => self.notify_command(&tag, &c),
            _ => self.bad(&tag, "Command not supported in this state"),
        }
    }

    /// RFC 5267 §4.4 CANCELUPDATE "tag"...: those searches are no longer kept up to date.
    fn cancel_update(&mut self, tag: &Tag<'static>, c: &ExtCommand) {
        let Some(sel) = self.selected.as_mut() else {
            return self.bad(tag, "Select a mailbox first");
        };
        let tags: Option<Vec<String>> = c.args.iter().map(Arg::text).collect();
        let Some(tags) = tags.filter(|t| !t.is_empty()) else {
            return self.bad(tag, "CANCELUPDATE takes the tags of updating searches");
        };
        if let Some(t) = tags
            .iter()
            .find(|t| !sel.contexts.iter().any(|c| &c.tag == *t))
        {
            let why = format!("No updating search has the tag {t}");
            return self.bad(tag, &why);
        }
        sel.contexts.retain(|c| !tags.contains(&c.tag));
        self.ok(tag, None, "CANCELUPDATE completed");
    }

    /// RFC 4467 §6.1 GENURLAUTH rump mechanism...: each rump URL (the user's own, naming
    /// a message that exists, ending in `;URLAUTH=access`) signed.
    fn genurlauth(&mut self, tag: &Tag<'static>, c: &ExtCommand) {
        if c.args.is_empty() || !c.args.len().is_multiple_of(2) {
            return self.bad(tag, "GENURLAUTH takes URL and mechanism pairs");
        }
        let me = self.backend.user();
        let mut line = b"* GENURLAUTH".to_vec();
        for pair in c.args.chunks(2) {
            let (Some(text), Some(mech)) = (
                pair.first().and_then(Arg::text),
                pair.get(1).and_then(Arg::text),
            ) else {
                return self.bad(tag, "GENURLAUTH takes URL and mechanism pairs");
            };
            let url = imapurl::parse(&text);
            let good = url.as_ref().is_some_and(|u| {
                u.access.is_some()
                    && u.token.is_none()
                    && u.mailbox.is_some()
                    && u.user
                        .as_deref()
                        .zip(me.as_deref())
                        .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
            });
            if !mech.eq_ignore_ascii_case("INTERNAL") {
                return self.no(tag, None, "The only URLAUTH mechanism is INTERNAL");
            }
            let signed = match url {
                // The message must be there; it is not read for that.
                Some(u) if good && urlauth::exists(&mut self.backend, &u) => {
                    let mb = u.mailbox.clone().unwrap_or_default();
                    let mb = if mb.eq_ignore_ascii_case("INBOX") {
                        "INBOX".into()
                    } else {
                        mb
                    };
                    self.backend.urlauth_sign(&mb, u.rump.as_bytes()).ok()
                }
                _ => None,
            };
            let Some(token) = signed else {
                let line = format!(
                    "{} NO [BADURL {}] Not a URL of yours to sign\r\n",
                    tag.as_ref(),
                    String::from_utf8_lossy(&astring_out(text.as_bytes()))
                );
                return self.out.extend_from_slice(line.as_bytes());
            };
            line.push(b' ');
            line.extend_from_slice(&astring_out(format!("{text}:internal:{token}").as_bytes()));
        }
        line.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&line);
        self.ok(tag, None, "GENURLAUTH completed");
    }

    /// RFC 4467 §6.3 URLFETCH url...: each URLAUTH URL's data, NIL when it does not
    /// verify or names nothing.
    fn urlfetch(&mut self, tag: &Tag<'static>, c: &ExtCommand) {
        if c.args.is_empty() {
            return self.bad(tag, "URLFETCH takes URLs");
        }
        if c.args.len() > URLFETCH_MAX {
            return self.bad(tag, "Too many URLs in one URLFETCH");
        }
        let me = self.backend.user();
        let mut out = b"* URLFETCH".to_vec();
        // All the data goes out in one response: at most twice APPENDLIMIT of it.
        let budget = (self.cfg.append_limit as usize).saturating_mul(2);
        for a in &c.args {
            let Some(text) = a.text() else {
                return self.bad(tag, "URLFETCH takes URLs");
            };
            let who = urlauth::Requester {
                user: me.as_deref(),
                submit: false,
            };
            let data = imapurl::parse(&text)
                .filter(|u| urlauth::verify(&mut self.backend, u, &who, unix_now()))
                .and_then(|u| urlauth::resolve(&mut self.backend, &u, None).ok());
            out.push(b' ');
            out.extend_from_slice(&astring_out(text.as_bytes()));
            if out.len().saturating_add(data.as_ref().map_or(0, Vec::len)) > budget {
                return self.no(
                    tag,
                    Some(Code::TooBig),
                    "Those URLs name too much for one URLFETCH; ask for fewer",
                );
            }
            match data {
                Some(d) => {
                    out.extend_from_slice(format!(" {{{}}}\r\n", d.len()).as_bytes());
                    out.extend_from_slice(&d);
                }
                None => out.extend_from_slice(b" NIL"),
            }
        }
        out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&out);
        self.ok(tag, None, "URLFETCH completed");
    }

    /// RFC 4467 §6.2 RESETKEY [mailbox [mechanism...]]: new keys, old URLs void.
    fn resetkey(&mut self, tag: &Tag<'static>, c: &ExtCommand) {
        let mailbox = match c.args.first() {
            None => None,
            Some(a) => match self.arg_mailbox(Some(a)) {
                Ok(n) => Some(n),
                Err(why) => return self.bad(tag, why),
            },
        };
        if c.args
            .iter()
            .skip(1)
            .any(|m| !m.text().is_some_and(|t| t.eq_ignore_ascii_case("INTERNAL")))
        {
            return self.no(tag, None, "The only URLAUTH mechanism is INTERNAL");
        }
        match self.backend.urlauth_reset(mailbox.as_deref()) {
            Ok(()) => self.ok(tag, None, "RESETKEY completed"),
            Err(e) => self.backend_no(tag, e),
        }
    }

    /// RFC 4469 CATENATE: the message is put together from TEXT literals and the parts
    /// URLs name (the user's own mailboxes; URLAUTH URLs must verify), then appended as
    /// an APPEND of that message would be.
    fn catenate(&mut self, tag: Tag<'static>, c: ext::Catenate) {
        if self.state != State::Authenticated {
            return self.bad(&tag, "Log in first");
        }
        let selected = self.selected.as_ref().map(|s| s.id);
        let selected_name = selected.and_then(|id| {
            self.backend
                .list()
                .ok()?
                .into_iter()
                .find(|m| m.id == id)
                .map(|m| m.name)
        });
        let me = self.backend.user();
        let limit = self.cfg.append_limit as usize;
        let mut data = Vec::new();
        for part in &c.parts {
            match part {
                ext::CatPart::Text(t) => data.extend_from_slice(t),
                ext::CatPart::Url(u) => {
                    let who = urlauth::Requester {
                        user: me.as_deref(),
                        submit: false,
                    };
                    let got = imapurl::parse(u)
                        .filter(|url| {
                            url.access.is_none()
                                || urlauth::verify(&mut self.backend, url, &who, unix_now())
                        })
                        .and_then(|url| {
                            urlauth::resolve(&mut self.backend, &url, selected_name.as_deref()).ok()
                        });
                    match got {
                        Some(bytes) => data.extend_from_slice(&bytes),
                        None => {
                            // RFC 4469 §5: [BADURL url] for a URL that names nothing.
                            let line = format!(
                                "{} NO [BADURL {}] The URL names no message part of yours\r\n",
                                tag.as_ref(),
                                String::from_utf8_lossy(&astring_out(u.as_bytes()))
                            );
                            return self.out.extend_from_slice(line.as_bytes());
                        }
                    }
                }
            }
            if data.len() > limit {
                return self.no(&tag, Some(Code::TooBig), "Message exceeds APPENDLIMIT");
            }
        }
        // The assembled message as a plain APPEND, so it is checked and stored the same way.
        let mut cmd = format!("{} APPEND ", tag.as_ref()).into_bytes();
        match &c.mailbox {
            Arg::Atom(a) => cmd.extend_from_slice(a.as_bytes()),
            other => cmd.extend_from_slice(&astring_out(other.bytes().unwrap_or_default())),
        }
        if let Some(f) = &c.flags {
            cmd.extend_from_slice(format!(" ({})", f.join(" ")).as_bytes());
        }
        if let Some(d) = &c.date {
            cmd.push(b' ');
            cmd.extend_from_slice(&astring_out(d));
        }
        // A NUL needs a literal8 (RFC 3516 §4.1); APPEND takes one.
        let eight = if data.contains(&0) { "~" } else { "" };
        cmd.extend_from_slice(format!(" {eight}{{{}}}\r\n", data.len()).as_bytes());
        cmd.extend_from_slice(&data);
        cmd.extend_from_slice(b"\r\n");
        use imap_codec::decode::Decoder;
        match CommandCodec::default().decode(&cmd) {
            Ok((&[], decoded)) => {
                let decoded = decoded.into_static();
                self.ext = ext::Ext::None;
                self.command(decoded);
            }
            _ => self.bad(&tag, "Syntax error in command"),
        }
    }

    /// RFC 5465 §3 NOTIFY SET [STATUS] groups / NOTIFY NONE.
    fn notify_command(&mut self, tag: &Tag<'static>, c: &ExtCommand) {
        let parsed = notify::parse(&c.args, |a| self.arg_mailbox(Some(a)));
        let spec = match parsed {
            Ok(None) => {
                self.notify = None;
                return self.ok(tag, None, "NOTIFY completed");
            }
            Ok(Some(s)) => s,
            Err(notify::NotifyError::Bad(why)) => return self.bad(tag, why),
            Err(notify::NotifyError::BadEvent) => {
                let line = format!(
                    "{} NO [BADEVENT ({})] Events this server reports: those\r\n",
                    tag.as_ref(),
                    notify::SUPPORTED
                );
                return self.out.extend_from_slice(line.as_bytes());
            }
        };
        // §5.2: the fetch attributes must be ones FETCH takes.
        if let Some((_, e)) = spec.selected()
            && let Some(atts) = &e.fetch
            && Self::notify_fetch_command(atts, "1").is_none()
        {
            return self.bad(tag, "MessageNew fetch attributes are not FETCH items");
        }
        let list = match self.backend.list() {
            Ok(l) => l,
            Err(e) => return self.backend_no(tag, e),
        };
        if spec.status {
            // §3.1: the state of every mailbox the groups cover, now.
            let mut items = vec![
                "MESSAGES".to_owned(),
                "UIDNEXT".into(),
                "UIDVALIDITY".into(),
            ];
            if self.condstore {
                items.push("HIGHESTMODSEQ".into());
            }
            let selected = self.selected.as_ref().map(|s| s.id);
            for mb in &list {
                let e = spec.for_mailbox(&mb.name, mb.subscribed);
                if (e.message || e.flags) && Some(mb.id) != selected {
                    self.data(Data::Status {
                        mailbox: self.wire_mailbox(&mb.name),
                        items: status_items(mb, &items).into(),
                    });
                }
            }
        }
        self.notify = Some(NotifyState {
            spec,
            seen: list.into_iter().map(|m| (m.id, m)).collect(),
        });
        self.ok(tag, None, "NOTIFY completed");
    }

    /// `UID FETCH set atts` as the decoder reads it.
    fn notify_fetch_command(atts: &str, set: &str) -> Option<Command<'static>> {
        use imap_codec::decode::Decoder;
        let cmd = format!("n UID FETCH {set} {atts}\r\n");
        match CommandCodec::default().decode(cmd.as_bytes()) {
            Ok((&[], c)) => Some(c.into_static()),
            _ => None,
        }
    }

    /// A NOTIFY SET is in force: the host passes on mailbox changes between commands.
    pub fn notify_active(&self) -> bool {
        self.notify.is_some()
    }

    /// Whether a change to this mailbox matters to the NOTIFY in force (the host then
    /// calls [`Session::notify_changed`]).
    pub fn notify_wants(&self, mailbox: MailboxId) -> bool {
        let Some(n) = &self.notify else {
            return false;
        };
        if self.selected.as_ref().is_some_and(|s| s.id == mailbox) {
            return n.spec.selected().is_some();
        }
        n.seen.contains_key(&mailbox)
    }

    /// RFC 5465 §5: report what changed since the last report: for the selected mailbox
    /// the usual EXISTS/EXPUNGE/FETCH (and MessageNew's FETCH), for others STATUS, and
    /// LIST for names and subscriptions. Call only between commands.
    pub fn notify_changed(&mut self) {
        let Some(n) = &self.notify else {
            return;
        };
        // Between commands only: a command half received, a FETCH paused, a literal
        // awaited... the next change (or command) reports what this one would have.
        if !matches!(self.mode, Mode::Command | Mode::Idle(_))
            || self.partial_input()
            || self.fetching.is_some()
            || self.deferred.is_some()
        {
            return;
        }
        if let (Some((delayed, e)), Some(sel)) = (n.spec.selected(), &self.selected) {
            let fetch = e.fetch.clone();
            let (before, message) = (sel.uid_next, e.message || e.flags);
            if message {
                self.refresh(!delayed);
            }
            if let (Some(atts), Some(sel)) = (fetch, &self.selected) {
                let new: Vec<u32> = sel
                    .msgs
                    .iter()
                    .map(|m| m.uid)
                    .filter(|&u| u >= before)
                    .collect();
                if let Some(Command {
                    tag,
                    body:
                        CommandBody::Fetch {
                            sequence_set,
                            macro_or_item_names,
                            ..
                        },
                }) = (!new.is_empty())
                    .then(|| Self::notify_fetch_command(&atts, &compact(&new)))
                    .flatten()
                {
                    self.silent_fetch = true;
                    self.fetch(&tag, &sequence_set, macro_or_item_names, true, &[]);
                    self.silent_fetch = false;
                }
            }
        }
        self.notify_others(true);
    }

    /// STATUS/LIST for the mailboxes other than the selected one whose state moved;
    /// `report: false` only takes the new state (after the session's own commands).
    fn notify_others(&mut self, report: bool) {
        let Some(n) = &self.notify else {
            return;
        };
        let Ok(now) = self.backend.list() else {
            return;
        };
        let selected = self.selected.as_ref().map(|s| s.id);
        let mut status_names = vec!["MESSAGES".to_owned(), "UIDNEXT".into(), "UNSEEN".into()];
        if self.condstore {
            status_names.push("HIGHESTMODSEQ".into());
        }
        let mut out: Vec<Response<'static>> = Vec::new();
        let mut raw: Vec<Vec<u8>> = Vec::new();
        let now_ids: std::collections::HashSet<MailboxId> = now.iter().map(|m| m.id).collect();
        for mb in &now {
            let e = n.spec.for_mailbox(&mb.name, mb.subscribed);
            let prev = n.seen.get(&mb.id);
            let Some(p) = prev else {
                if e.names {
                    raw.push(self.list_line(&mb.name, &[], None));
                }
                continue;
            };
            if p.name != mb.name && e.names {
                // §5.5: a rename is LIST with OLDNAME (RFC 5465 §5.5, RFC 5258 §3.5).
                raw.push(self.list_line(&mb.name, &[], Some(&p.name)));
            }
            if p.subscribed != mb.subscribed && e.subscriptions {
                let attrs: &[&str] = if mb.subscribed {
                    &["\\Subscribed"]
                } else {
                    &[]
                };
                raw.push(self.list_line(&mb.name, attrs, None));
            }
            if Some(mb.id) == selected {
                continue;
            }
            let moved = e.message && (p.messages != mb.messages || p.uid_next != mb.uid_next);
            let flagged =
                e.flags && (p.unseen != mb.unseen || p.highest_modseq != mb.highest_modseq);
            if moved || flagged {
                out.push(Response::Data(Data::Status {
                    mailbox: self.wire_mailbox(&mb.name),
                    items: status_items(mb, &status_names).into(),
                }));
            }
        }
        for (id, p) in &n.seen {
            if !now_ids.contains(id) && n.spec.for_mailbox(&p.name, p.subscribed).names {
                raw.push(self.list_line(&p.name, &["\\NonExistent"], None));
            }
        }
        if report {
            for l in raw {
                self.out.extend_from_slice(&l);
            }
            for r in out {
                self.send(r);
            }
        }
        if let Some(n) = self.notify.as_mut() {
            n.seen = now.into_iter().map(|m| (m.id, m)).collect();
        }
    }

    /// `* LIST (attrs) "/" name [("OLDNAME" ("old"))]`.
    fn list_line(&self, name: &str, attrs: &[&str], old: Option<&str>) -> Vec<u8> {
        let mut l = format!("* LIST ({}) \"/\" ", attrs.join(" ")).into_bytes();
        l.extend_from_slice(&self.mailbox_out(name));
        if let Some(o) = old {
            l.extend_from_slice(b" (\"OLDNAME\" (");
            l.extend_from_slice(&self.mailbox_out(o));
            l.extend_from_slice(b"))");
        }
        l.extend_from_slice(b"\r\n");
        l
    }

    /// A mailbox argument of an `extcmd` command, as a name.
    fn arg_mailbox(&self, a: Option<&Arg>) -> Result<String, &'static str> {
        let text = a.and_then(Arg::text).ok_or("mailbox name expected")?;
        if text.eq_ignore_ascii_case("INBOX") {
            return Ok("INBOX".into());
        }
        let m = WireMailbox::try_from(text).map_err(|_| "invalid mailbox name")?;
        self.mailbox_name(&m)
    }

    /// A mailbox name as it travels to this client (modified UTF-7 unless UTF-8 names),
    /// quoted.
    fn mailbox_out(&self, name: &str) -> Vec<u8> {
        let wire = if name == "INBOX" || self.utf8_names() {
            name.to_owned()
        } else {
            mutf7::encode(name)
        };
        astring_out(wire.as_bytes())
    }

    /// ACL (RFC 4314) for a server whose mailboxes are not shared: the owner holds every
    /// right and nobody else any, so MYRIGHTS, GETACL and LISTRIGHTS say so and SETACL /
    /// DELETEACL cannot change it. RFC 8440 LIST-MYRIGHTS builds on MYRIGHTS.
    fn acl(&mut self, tag: &Tag<'static>, c: &ExtCommand) {
        let want = match c.verb.as_str() {
            "MYRIGHTS" | "GETACL" => 1,
            "LISTRIGHTS" | "DELETEACL" => 2,
            _ => 3,
        };
        if c.args.len() != want || c.args.iter().any(|a| a.bytes().is_none()) {
            return self.bad(tag, "Wrong arguments");
        }
        let name = match self.arg_mailbox(c.args.first()) {
            Ok(n) => n,
            Err(why) => return self.bad(tag, why),
        };
        if let Err(e) = self.backend.mailbox(&name) {
            return self.backend_no(tag, e);
        }
        let owner = self.backend.user().unwrap_or_default();
        let mb = self.mailbox_out(&name);
        let mut line = Vec::new();
        let ident = c.args.get(1).and_then(Arg::text).unwrap_or_default();
        let is_owner = ident.eq_ignore_ascii_case(&owner);
        match c.verb.as_str() {
            "MYRIGHTS" => {
                line.extend_from_slice(b"* MYRIGHTS ");
                line.extend_from_slice(&mb);
                line.extend_from_slice(format!(" {ACL_RIGHTS}\r\n").as_bytes());
            }
            "GETACL" => {
                line.extend_from_slice(b"* ACL ");
                line.extend_from_slice(&mb);
                line.push(b' ');
                line.extend_from_slice(&astring_out(owner.as_bytes()));
                line.extend_from_slice(format!(" {ACL_RIGHTS}\r\n").as_bytes());
            }
            "LISTRIGHTS" => {
                // §3.7: the rights always granted, then those that could be (none here).
                line.extend_from_slice(b"* LISTRIGHTS ");
                line.extend_from_slice(&mb);
                line.push(b' ');
                line.extend_from_slice(&astring_out(ident.as_bytes()));
                if is_owner {
                    line.extend_from_slice(format!(" {ACL_RIGHTS}\r\n").as_bytes());
                } else {
                    line.extend_from_slice(b" \"\"\r\n");
                }
            }
            _ => {
                let why = if is_owner {
                    "The owner's rights cannot be changed"
                } else {
                    "Mailboxes are not shared on this server"
                };
                return self.no(tag, Some(code_other("CANNOT")), why);
            }
        }
        self.out.extend_from_slice(&line);
        self.ok(tag, None, &format!("{} completed", c.verb));
    }

    fn is_selected_name(&mut self, m: &WireMailbox<'_>) -> bool {
        let (Some(sel), Ok(name)) = (&self.selected, self.mailbox_name(m)) else {
            return false;
        };
        let id = sel.id;
        self.backend.mailbox(&name).is_ok_and(|mb| mb.id == id)
    }

    fn simple(
        &mut self,
        tag: &Tag<'static>,
        mailbox: &WireMailbox<'_>,
        f: impl FnOnce(&mut B, &str) -> Result<(), BackendError>,
        what: &str,
    ) {
        match self.mailbox_name(mailbox) {
            Ok(name) => match f(&mut self.backend, &name) {
                Ok(()) => self.ok(tag, None, &format!("{what} completed")),
                Err(e) => self.backend_no(tag, e),
            },
            Err(e) => self.bad(tag, e),
        }
    }

    fn login(&mut self, tag: &Tag<'static>, user: &str, pass: &str) {
        if !self.tls && !self.cfg.plaintext_auth {
            self.no(
                tag,
                Some(code("PRIVACYREQUIRED")),
                "Use STARTTLS or port 993 before logging in",
            );
            return;
        }
        match self.backend.login(user, pass) {
            Ok(true) => {
                self.state = State::Authenticated;
                let caps = self.capabilities();
                self.ok(tag, Some(Code::Capability(caps)), "Logged in");
            }
            Ok(false) => self.auth_failed(tag),
            Err(e) => self.backend_no(tag, e),
        }
    }

    /// Go on with an AUTHENTICATE after the mechanism's step (yubin_sasl).
    fn sasl_next(
        &mut self,
        tag: Tag<'static>,
        mut x: yubin_sasl::Exchange,
        next: yubin_sasl::Next,
    ) {
        use yubin_sasl::{Error, Next};
        match next {
            Next::Challenge(c) => {
                self.sasl = Some(SaslStep::Exchange(Box::new(x)));
                self.continue_with(c);
                self.mode = Mode::AuthData(tag);
            }
            Next::CheckPassword { user, password } => self.login(&tag, &user, &password),
            Next::Lookup { user } => match self.backend.scram_lookup(&user) {
                Ok(creds) => {
                    let nonce = self.backend.scram_nonce();
                    let next = x.credentials(creds, &nonce);
                    self.sasl_next(tag, x, next);
                }
                Err(e) => self.backend_no(&tag, e),
            },
            Next::Verified {
                user,
                ok,
                server_final,
            } => match self.backend.scram_verified(&user, ok) {
                Ok(true) => {
                    // RFC 9051 §6.2.2: the server-final as a last challenge.
                    self.sasl = Some(SaslStep::FinalAck);
                    self.continue_with(server_final);
                    self.mode = Mode::AuthData(tag);
                }
                Ok(false) => self.auth_failed(&tag),
                Err(e) => self.backend_no(&tag, e),
            },
            Next::Failed(Error::Authzid) => self.no(
                &tag,
                Some(code("AUTHORIZATIONFAILED")),
                "Cannot act as another user",
            ),
            Next::Failed(Error::Cancelled) => self.bad(&tag, "Authentication cancelled"),
            Next::Failed(e) => self.bad(&tag, &format!("Authentication failed: {e}")),
        }
    }

    /// A `+` continuation carrying SASL data (empty: `+ `).
    fn continue_with(&mut self, data: Vec<u8>) {
        let req = if data.is_empty() {
            CommandContinuationRequest::basic(None, " ")
                .unwrap_or_else(|_| CommandContinuationRequest::basic(None, "go").expect("valid"))
        } else {
            CommandContinuationRequest::base64(data)
        };
        self.send(Response::CommandContinuationRequest(req));
    }

    fn auth_failed(&mut self, tag: &Tag<'static>) {
        self.auth_failures += 1;
        self.no(
            tag,
            Some(code("AUTHENTICATIONFAILED")),
            "Authentication failed",
        );
        if self.auth_failures >= MAX_AUTH_FAILURES {
            self.send(Response::Status(
                Status::bye(None, "Too many failed logins").expect("valid"),
            ));
            self.mode = Mode::Closed;
        }
    }

    fn auth_data(&mut self, tag: Tag<'static>) {
        let step = self.sasl.take();
        match self.frag.decode_message(&AuthenticateDataCodec::default()) {
            Ok(AuthenticateData::Continue(data)) => {
                let data = data.declassify().to_vec();
                match step {
                    Some(SaslStep::Exchange(mut x)) => {
                        let next = x.respond(&data);
                        self.sasl_next(tag, *x, next);
                    }
                    Some(SaslStep::FinalAck) if data.is_empty() => {
                        self.state = State::Authenticated;
                        let caps = self.capabilities();
                        self.ok(&tag, Some(Code::Capability(caps)), "Logged in");
                    }
                    _ => self.bad(&tag, "Unexpected authentication data"),
                }
            }
            Ok(AuthenticateData::Cancel) => self.bad(&tag, "Authentication cancelled"),
            Err(_) => self.bad(&tag, "Invalid base64 in authentication data"),
        }
    }

    fn idle_done(&mut self, tag: Tag<'static>) {
        match self.frag.decode_message(&IdleDoneCodec::default()) {
            Ok(_) => self.ok(&tag, None, "IDLE terminated"),
            Err(_) => self.bad(&tag, "Expected DONE"),
        }
    }

    fn select(
        &mut self,
        tag: &Tag<'static>,
        mailbox: &WireMailbox<'_>,
        read_only: bool,
        params: &[SelectParameter],
    ) {
        // RFC 7162 §3.2.11: with QRESYNC, say when the previous mailbox is closed.
        if self.selected.is_some() && self.qresync {
            self.send(Response::Status(
                Status::ok(None, Some(Code::Closed), "Previous mailbox closed").expect("valid"),
            ));
        }
        // RFC 9051 §6.3.2: a failed SELECT leaves no mailbox selected.
        self.selected = None;
        let mut resync = None;
        for p in params {
            match p {
                SelectParameter::CondStore => self.condstore = true,
                SelectParameter::QResync {
                    uid_validity,
                    mod_sequence_value,
                    known_uids,
                    ..
                } => {
                    if !self.qresync {
                        return self.bad(tag, "QRESYNC is not enabled");
                    }
                    resync = Some((
                        uid_validity.get(),
                        mod_sequence_value.get(),
                        known_uids.clone(),
                    ));
                }
            }
        }
        let name = match self.mailbox_name(mailbox) {
            Ok(n) => n,
            Err(e) => return self.bad(tag, e),
        };
        let selection = match self.prefetched_selection.take() {
            Some((n, s)) if n == name => Ok(s),
            _ => self.backend.select(&name),
        };
        let (mb, msgs, keywords, first_unseen) = match selection {
            Ok(s) => (s.mailbox, s.messages, s.keywords, s.first_unseen),
            Err(e) => return self.backend_no(tag, e),
        };
        self.flag_lines(&keywords, read_only);
        let first_recent = if self.rev2 {
            mb.uid_next
        } else {
            // EXAMINE looks without taking (RFC 3501 §6.3.2).
            self.backend
                .recent(mb.id, mb.uid_next, !read_only)
                .unwrap_or(mb.uid_next)
        };
        let at = msgs.partition_point(|m| m.uid < first_recent);
        let recent: Vec<u32> = msgs
            .get(at..)
            .unwrap_or(&[])
            .iter()
            .map(|m| m.uid)
            .collect();
        write_select_numbers(
            &mut self.out,
            SelectNumbers {
                exists: msgs.len() as u32,
                // RFC 9051 removed \Recent and the RECENT response.
                recent: (!self.rev2).then_some(recent.len() as u32),
                // A message number, which UIDONLY sessions do not get (RFC 9586 §3).
                unseen: first_unseen
                    .filter(|_| !self.uidonly)
                    .map(|i| nz(i as u32 + 1)),
                uidvalidity: nz(mb.uidvalidity),
                uid_next: nz(mb.uid_next),
                // RFC 7162 §3.1.2.1: HIGHESTMODSEQ in every SELECT/EXAMINE.
                highest: NonZeroU64::new(mb.highest_modseq).unwrap_or(NonZeroU64::MIN),
                // RFC 8474 §4: and the mailbox's id.
                mailbox_id: mb.id,
            },
        );
        self.selected = Some(Selected {
            id: mb.id,
            read_only,
            msgs,
            highest_modseq: mb.highest_modseq,
            uid_next: mb.uid_next,
            pending_expunge: Vec::new(),
            recent,
            keywords,
            contexts: Vec::new(),
            saved: Vec::new(),
        });
        if let Some((uidvalidity, since, known)) = resync
            && uidvalidity == mb.uidvalidity
        {
            self.resync(since, known.as_ref());
        }
        let (code, what) = if read_only {
            (Code::ReadOnly, "EXAMINE completed")
        } else {
            (Code::ReadWrite, "SELECT completed")
        };
        self.ok(tag, Some(code), what);
    }

    /// Another session deleted the selected mailbox: RFC 3501 leaves the outcome open; as
    /// Dovecot, the session ends (a client then reconnects and sees the mailbox gone),
    /// instead of answering from a mailbox that is no more.
    fn selected_deleted(&mut self) -> bool {
        let Some(sel) = &self.selected else {
            return false;
        };
        if self.prefetched_changes.is_some() {
            // `poll_light` just read them: the mailbox is there.
            return false;
        }
        // Since u64::MAX: the mailbox's row and nothing else is read.
        match self.backend.changes(sel.id, u64::MAX) {
            Err(BackendError::NotFound(_)) => {
                self.out.extend_from_slice(
                    b"* BYE Selected mailbox was deleted, have to disconnect\r\n",
                );
                self.selected = None;
                self.mode = Mode::Closed;
                true
            }
            _ => false,
        }
    }

    /// RFC 7162 §3.1: the first CONDSTORE-enabling command other than SELECT/EXAMINE,
    /// with a mailbox selected, is answered with its HIGHESTMODSEQ too.
    fn enable_condstore(&mut self) {
        if self.condstore {
            return;
        }
        self.condstore = true;
        if let Some(sel) = &self.selected {
            let h = NonZeroU64::new(sel.highest_modseq).unwrap_or(NonZeroU64::MIN);
            self.send(Response::Status(
                Status::ok(None, Some(Code::HighestModSeq(h)), "Highest").expect("valid"),
            ));
        }
    }

    /// `* FLAGS` and `* OK [PERMANENTFLAGS]` for these keywords (RFC 3501 §7.2.6), from
    /// the copy of the last ones sent when they are the same (a client re-SELECTs often).
    fn flag_lines(&mut self, keywords: &[String], read_only: bool) {
        if let Some((k, r, bytes)) = &self.flag_lines
            && k.as_slice() == keywords
            && *r == read_only
        {
            self.out.extend_from_slice(bytes);
            return;
        }
        let start = self.out.len();
        let all = flag_list(&Flags {
            system: flags::ANSWERED | flags::FLAGGED | flags::DELETED | flags::SEEN | flags::DRAFT,
            keywords: keywords.to_vec(),
        });
        self.data(Data::Flags(all.clone()));
        let perm: Vec<FlagPerm<'static>> = if read_only {
            vec![]
        } else {
            all.into_iter()
                .map(FlagPerm::Flag)
                .chain([FlagPerm::Asterisk])
                .collect()
        };
        self.send(Response::Status(
            Status::ok(None, Some(Code::PermanentFlags(perm)), "Flags permitted").expect("valid"),
        ));
        let bytes = self.out.get(start..).unwrap_or_default().to_vec();
        self.flag_lines = Some((keywords.to_vec(), read_only, bytes));
    }

    /// Tell the client of keywords it has not seen in FLAGS yet, before a FETCH shows them
    /// (RFC 3501 §7.2.6, RFC 9051 §7.3.5: another session, or this one, used a new one).
    fn announce_keywords<'a>(&mut self, used: impl IntoIterator<Item = &'a Flags>) {
        let Some(sel) = &self.selected else { return };
        let mut new: Vec<String> = Vec::new();
        for f in used {
            for k in &f.keywords {
                let known = |list: &[String]| list.iter().any(|x| x.eq_ignore_ascii_case(k));
                if !known(&sel.keywords) && !known(&new) {
                    new.push(k.clone());
                }
            }
        }
        if new.is_empty() {
            return;
        }
        let read_only = sel.read_only;
        let mut all = sel.keywords.clone();
        all.extend(new);
        self.flag_lines(&all, read_only);
        if let Some(sel) = self.selected.as_mut() {
            sel.keywords = all;
        }
    }

    /// FLAGS of a message as FETCH shows it: `\Recent` too, where it is (IMAP4rev1).
    fn fetch_flags(&self, m: &MessageMeta) -> Vec<FlagFetch<'static>> {
        let mut out: Vec<FlagFetch<'static>> = flag_list(&m.flags)
            .into_iter()
            .map(FlagFetch::Flag)
            .collect();
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.recent.binary_search(&m.uid).is_ok())
        {
            out.push(FlagFetch::Recent);
        }
        out
    }

    fn list(
        &mut self,
        tag: &Tag<'static>,
        reference: &WireMailbox<'_>,
        pattern: &ListMailbox<'_>,
        lsub: bool,
    ) {
        let reference = match reference {
            WireMailbox::Inbox => "INBOX".to_owned(),
            WireMailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
        };
        let pattern = match pattern {
            ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
            ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
        };
        let delimiter = QuotedChar::try_from('/').ok();
        let several = matches!(&self.ext, ext::Ext::List(o) if o.patterns.len() > 1);
        if pattern.is_empty() && !several {
            // RFC 9051 §6.3.9: an empty pattern asks for the hierarchy delimiter.
            self.data(Data::List {
                items: vec![FlagNameAttribute::Noselect],
                delimiter,
                mailbox: WireMailbox::try_from("").unwrap_or(WireMailbox::Inbox),
            });
            return self.ok(tag, None, "LIST completed");
        }
        let boxes = match self.backend.list() {
            Ok(b) => b,
            Err(e) => return self.backend_no(tag, e),
        };
        let opts = match &self.ext {
            ext::Ext::List(o) => o.clone(),
            _ => ext::ListOptions::default(),
        };
        // RFC 5258 §3: several patterns, `LIST "" (p1 p2)`; a name is listed once.
        let patterns: Vec<String> = if opts.patterns.is_empty() {
            vec![pattern]
        } else {
            opts.patterns.clone()
        };
        let fulls: Vec<String> = patterns
            .iter()
            .map(|p| {
                let full = format!("{reference}{p}");
                mutf7::decode(&full).unwrap_or(full)
            })
            .collect();
        let matches = |name: &str| {
            fulls.iter().any(|full| {
                if name == "INBOX" {
                    matches_pattern(full.to_ascii_uppercase().as_bytes(), b"INBOX")
                } else {
                    matches_pattern(full.as_bytes(), name.as_bytes())
                }
            })
        };
        let subscribed_only = lsub || opts.select_subscribed;
        let subs: std::collections::BTreeSet<String> = if subscribed_only {
            match self.backend.subscriptions() {
                Ok(s) => s.into_iter().collect(),
                Err(e) => return self.backend_no(tag, e),
            }
        } else {
            Default::default()
        };
        // A name with a subscribed descendant the patterns do not reach: LSUB shows it as
        // \Noselect (RFC 3501 §6.3.9), LIST (SUBSCRIBED RECURSIVEMATCH) with CHILDINFO
        // (RFC 5258 §3.5).
        let hidden_child = |name: &str| {
            let prefix = format!("{name}/");
            subs.iter().any(|s| s.starts_with(&prefix) && !matches(s))
        };
        let by_name: std::collections::HashMap<&str, &yubin_model::Mailbox> =
            boxes.iter().map(|b| (b.name.as_str(), b)).collect();
        let has_children = |name: &str| {
            let prefix = format!("{name}/");
            boxes.iter().any(|b| b.name.starts_with(&prefix))
        };
        // (name, listed because of a hidden subscribed descendant only)
        let mut names: Vec<(String, bool)> = Vec::new();
        if subscribed_only {
            let mut seen = std::collections::BTreeSet::new();
            for s in &subs {
                if matches(s) && seen.insert(s.clone()) {
                    names.push((s.clone(), false));
                }
                if (lsub || opts.recursive) && !matches(s) {
                    let mut at = s.as_str();
                    while let Some((parent, _)) = at.rsplit_once('/') {
                        at = parent;
                        if matches(parent) && !subs.contains(parent) && seen.insert(parent.into()) {
                            names.push((parent.to_owned(), true));
                        }
                    }
                }
            }
            names.sort();
        } else {
            names = boxes
                .iter()
                .filter(|mb| matches(&mb.name))
                .map(|mb| (mb.name.clone(), false))
                .collect();
        }
        for (name, ancestor_only) in names {
            let mb = by_name.get(name.as_str()).copied();
            if opts.select_special_use && mb.is_none_or(|m| m.special_use.is_none()) {
                continue;
            }
            let atom = |a: &str| {
                FlagNameAttribute::from(Atom::try_from(a.to_owned()).expect("valid atom"))
            };
            let mut items = Vec::new();
            if lsub {
                if ancestor_only {
                    items.push(FlagNameAttribute::Noselect);
                }
            } else {
                match mb {
                    Some(_) => items.push(atom(if has_children(&name) {
                        "HasChildren"
                    } else {
                        "HasNoChildren"
                    })),
                    // RFC 5258 §3.4: a subscription naming no mailbox.
                    None => items.push(atom("NonExistent")),
                }
                if let Some(su) = mb.and_then(|m| m.special_use.as_ref())
                    && let Ok(a) = Atom::try_from(su.trim_start_matches('\\').to_owned())
                {
                    items.push(FlagNameAttribute::from(a));
                }
                // RFC 5258 §3.1/§3.2: \Subscribed when asked for, by selection or return option.
                let is_subscribed = if subscribed_only {
                    subs.contains(&name)
                } else {
                    mb.is_some_and(|m| m.subscribed)
                };
                if (opts.select_subscribed || opts.return_subscribed) && is_subscribed {
                    items.push(atom("Subscribed"));
                }
            }
            let mailbox = self.wire_mailbox(&name);
            let status = match (&opts.return_status, mb) {
                (Some(names), Some(mb)) => Some((status_items(mb, names), mailbox.clone())),
                _ => None,
            };
            let data = if lsub {
                Data::Lsub {
                    items,
                    delimiter,
                    mailbox,
                }
            } else {
                Data::List {
                    items,
                    delimiter,
                    mailbox,
                }
            };
            if !lsub && opts.recursive && hidden_child(&name) {
                // RFC 5258 §3.5: CHILDINFO as extended data (imap-types has no field for it).
                let line = ResponseCodec::default()
                    .encode(&Response::Data(data))
                    .dump();
                let line = line.strip_suffix(b"\r\n").unwrap_or(&line);
                self.out.extend_from_slice(line);
                self.out
                    .extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n");
            } else {
                self.data(data);
            }
            // RFC 5819 §2: a STATUS response right after the mailbox's LIST response.
            if let Some((items, mailbox)) = status {
                self.data(Data::Status {
                    mailbox,
                    items: items.into(),
                });
            }
            // RFC 8440 §3: MYRIGHTS after the LIST response, for mailboxes that exist.
            if opts.return_myrights && mb.is_some() {
                let mut line = b"* MYRIGHTS ".to_vec();
                line.extend_from_slice(&self.mailbox_out(&name));
                line.extend_from_slice(format!(" {ACL_RIGHTS}\r\n").as_bytes());
                self.out.extend_from_slice(&line);
            }
        }
        self.ok(
            tag,
            None,
            if lsub {
                "LSUB completed"
            } else {
                "LIST completed"
            },
        );
    }

    /// The saved result (RFC 5182) as a sequence set of UIDs or of message numbers;
    /// `None` when it is empty (or nothing is selected).
    fn saved_set(&self, uid: bool) -> Option<String> {
        let sel = self.selected.as_ref()?;
        let values: Vec<u32> = if uid {
            sel.saved.clone()
        } else {
            sel.saved
                .iter()
                .filter_map(|u| sel.msgs.binary_search_by_key(u, |m| m.uid).ok())
                .map(|i| i as u32 + 1)
                .collect()
        };
        (!values.is_empty()).then(|| compact(&values))
    }

    /// CREATE's OK, with the new mailbox's id (RFC 8474 §4 `[MAILBOXID (id)]`).
    fn created(&mut self, tag: &Tag<'static>, name: &str) {
        let code = self.backend.mailbox(name).ok().map(|mb| {
            Code::Other(imap_codec::imap_types::response::CodeOther::unvalidated(
                format!("MAILBOXID ({})", mailbox_id(mb.id)).into_bytes(),
            ))
        });
        self.ok(tag, code, "CREATE completed");
    }

    /// RFC 6154 §3 CREATE-SPECIAL-USE: one of the attributes of §2 (yubin keeps one per
    /// mailbox); anything else is `NO [USEATTR]`.
    fn create_special(&mut self, tag: &Tag<'static>, mailbox: &WireMailbox<'_>) {
        const USES: [&str; 7] = [
            "\\All",
            "\\Archive",
            "\\Drafts",
            "\\Flagged",
            "\\Junk",
            "\\Sent",
            "\\Trash",
        ];
        let ext::Ext::Create(uses) = std::mem::take(&mut self.ext) else {
            return;
        };
        let name = match self.mailbox_name(mailbox) {
            Ok(n) => n,
            Err(e) => return self.bad(tag, e),
        };
        let useattr = || {
            Code::Other(imap_codec::imap_types::response::CodeOther::unvalidated(
                b"USEATTR".as_slice(),
            ))
        };
        let known: Vec<&str> = uses
            .iter()
            .filter_map(|u| USES.iter().find(|k| k.eq_ignore_ascii_case(u)).copied())
            .collect();
        match known.as_slice() {
            [one] if uses.len() == 1 => {
                let one = one.to_string();
                let name = name.strip_suffix('/').unwrap_or(&name).to_owned();
                match self.backend.create_special(&name, &one) {
                    Ok(()) => self.created(tag, &name),
                    Err(e) => self.backend_no(tag, e),
                }
            }
            [] | [_] => self.no(tag, Some(useattr()), "Unknown special use"),
            _ => self.no(tag, Some(useattr()), "One special use per mailbox"),
        }
    }

    /// The mailbox a METADATA command names: `None` for the server (`""`).
    fn metadata_target(&self, m: &WireMailbox<'_>) -> Result<Option<String>, &'static str> {
        match m {
            WireMailbox::Other(o) if o.as_ref().is_empty() => Ok(None),
            _ => self.mailbox_name(m).map(Some),
        }
    }

    /// RFC 5464 §4.2 GETMETADATA: the entries asked for (NIL where there is none), and with
    /// DEPTH those below them; MAXSIZE leaves out larger values and says how large the
    /// largest left out was (`[METADATA LONGENTRIES n]`).
    fn get_metadata(
        &mut self,
        tag: &Tag<'static>,
        options: &[GetMetadataOption],
        mailbox: &WireMailbox<'_>,
        entries: &[Entry<'_>],
    ) {
        let target = match self.metadata_target(mailbox) {
            Ok(t) => t,
            Err(e) => return self.bad(tag, e),
        };
        let mut names = Vec::new();
        for e in entries {
            match metadata_entry(e.as_ref()) {
                Some(n) => names.push(n),
                None => return self.bad(tag, "Invalid entry name"),
            }
        }
        let (mut max, mut depth) = (None, Depth::Null);
        for o in options {
            match o {
                GetMetadataOption::MaxSize(n) => max = Some(*n as usize),
                GetMetadataOption::Depth(d) => depth = d.clone(),
            }
        }
        let mut stored = match self.backend.metadata(target.as_deref()) {
            Ok(v) => v,
            Err(e) => return self.backend_no(tag, e),
        };
        // The server's own entries (URLAUTH keys) are not the client's to see.
        stored.retain(|(k, _)| !k.starts_with(SERVER_ENTRIES));
        // RFC 6154 §4: a mailbox's special use, read-only.
        if let Some(name) = &target
            && let Ok(mb) = self.backend.mailbox(name)
            && let Some(su) = mb.special_use
        {
            stored.push(("/private/specialuse".into(), su.into_bytes()));
        }
        let mut found: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        let mut longest = 0usize;
        for n in &names {
            let prefix = format!("{n}/");
            let start = found.len();
            // An entry asked for and not there is shown as NIL (as Dovecot does).
            let mut exact = false;
            for (k, v) in &stored {
                let below = k.strip_prefix(&prefix).is_some_and(|rest| match depth {
                    Depth::Null => false,
                    Depth::One => !rest.contains('/'),
                    Depth::Infinity => true,
                });
                if k != n && !below {
                    continue;
                }
                exact |= k == n;
                if max.is_some_and(|m| v.len() > m) {
                    // Left out; the tagged OK says how long the longest was.
                    longest = longest.max(v.len());
                } else if !found.iter().any(|(f, _)| f == k) {
                    found.push((k.clone(), Some(v.clone())));
                }
            }
            if !exact && !found.iter().any(|(f, _)| f == n) {
                found.insert(start, (n.clone(), None));
            }
        }
        let items: Vec<EntryValue<'static>> = found
            .into_iter()
            .filter_map(|(k, v)| {
                Some(EntryValue {
                    entry: Entry::try_from(AString::try_from(k).ok()?).ok()?,
                    value: NString8::NString(crate::message::nstring(v)),
                })
            })
            .collect();
        if let Ok(items) = Vec1::try_from(items) {
            let mailbox = match &target {
                Some(n) => self.wire_mailbox(n),
                None => WireMailbox::try_from("").unwrap_or(WireMailbox::Inbox),
            };
            self.data(Data::Metadata {
                mailbox,
                items: MetadataResponse::WithValues(items),
            });
        }
        let code =
            (longest > 0).then_some(Code::Metadata(MetadataCode::LongEntries(longest as u32)));
        self.ok(tag, code, "GETMETADATA completed");
    }

    /// RFC 5464 §4.3 SETMETADATA: all or nothing; NIL removes. Values up to
    /// `METADATA_MAX_SIZE`, `METADATA_MAX_ENTRIES` per mailbox (and for the server).
    fn set_metadata(
        &mut self,
        tag: &Tag<'static>,
        mailbox: &WireMailbox<'_>,
        entries: &[EntryValue<'_>],
    ) {
        let target = match self.metadata_target(mailbox) {
            Ok(t) => t,
            Err(e) => return self.bad(tag, e),
        };
        let mut changes: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        for ev in entries {
            let Some(name) = metadata_entry(ev.entry.as_ref()) else {
                return self.bad(tag, "Invalid entry name");
            };
            if name == "/private/specialuse" {
                return self.no(tag, None, "/private/specialuse is set by the server");
            }
            if name.starts_with(SERVER_ENTRIES) {
                return self.no(
                    tag,
                    None,
                    "Entries under /private/vendor/yubin/ are the server's",
                );
            }
            let value = match &ev.value {
                NString8::NString(n) => n.0.as_ref().map(|v| v.as_ref().to_vec()),
                NString8::Literal8(l) => Some(l.data.to_vec()),
            };
            if value.as_ref().is_some_and(|v| v.len() > METADATA_MAX_SIZE) {
                let code = Code::Metadata(MetadataCode::MaxSize(METADATA_MAX_SIZE as u32));
                return self.no(tag, Some(code), "Value too long");
            }
            changes.retain(|(n, _)| *n != name);
            changes.push((name, value));
        }
        let stored = match self.backend.metadata(target.as_deref()) {
            Ok(v) => v,
            Err(e) => return self.backend_no(tag, e),
        };
        let mut names: std::collections::BTreeSet<&str> =
            stored.iter().map(|(k, _)| k.as_str()).collect();
        for (n, v) in &changes {
            if v.is_some() {
                names.insert(n);
            } else {
                names.remove(n.as_str());
            }
        }
        if names.len() > METADATA_MAX_ENTRIES {
            return self.no(
                tag,
                Some(Code::Metadata(MetadataCode::TooMany)),
                "Too many annotations",
            );
        }
        match self.backend.set_metadata(target.as_deref(), &changes) {
            Ok(()) => self.ok(tag, None, "SETMETADATA completed"),
            Err(e) => self.backend_no(tag, e),
        }
    }

    fn status(
        &mut self,
        tag: &Tag<'static>,
        mailbox: &WireMailbox<'static>,
        names: &[StatusDataItemName],
    ) {
        let name = match self.mailbox_name(mailbox) {
            Ok(n) => n,
            Err(e) => return self.bad(tag, e),
        };
        let mb = match self.backend.mailbox(&name) {
            Ok(mb) => mb,
            Err(e) => return self.backend_no(tag, e),
        };
        let names: Vec<String> = names
            .iter()
            .map(|n| {
                match n {
                    StatusDataItemName::Messages => "MESSAGES",
                    StatusDataItemName::Recent => "RECENT",
                    StatusDataItemName::UidNext => "UIDNEXT",
                    StatusDataItemName::UidValidity => "UIDVALIDITY",
                    StatusDataItemName::Unseen => "UNSEEN",
                    StatusDataItemName::HighestModSeq => "HIGHESTMODSEQ",
                    StatusDataItemName::Size => "SIZE",
                    StatusDataItemName::Deleted => "DELETED",
                    _ => "",
                }
                .to_owned()
            })
            .collect();
        let mut items = status_items(&mb, &names);
        let mailboxid = match &self.ext {
            ext::Ext::Status { only } => {
                if *only {
                    items.clear();
                }
                true
            }
            _ => false,
        };
        self.data(Data::Status {
            mailbox: self.wire_mailbox(&mb.name),
            items: items.into(),
        });
        // RFC 8474 §4 STATUS MAILBOXID (imap-types has no such item: added at the end).
        if mailboxid && self.out.ends_with(b")\r\n") {
            self.out.truncate(self.out.len() - 3);
            if !self.out.ends_with(b"(") {
                self.out.push(b' ');
            }
            self.out
                .extend_from_slice(format!("MAILBOXID ({}))\r\n", mailbox_id(mb.id)).as_bytes());
        }
        self.ok(tag, None, "STATUS completed");
    }

    fn append(
        &mut self,
        tag: &Tag<'static>,
        mailbox: &WireMailbox<'_>,
        flags: &[Flag<'_>],
        date: Option<DateTime>,
        message: LiteralOrLiteral8<'_>,
    ) {
        let name = match self.mailbox_name(mailbox) {
            Ok(n) => n,
            Err(e) => return self.bad(tag, e),
        };
        let Some(f) = to_flags(flags) else {
            return self.bad(tag, "Invalid flag");
        };
        let data: &[u8] = match &message {
            LiteralOrLiteral8::Literal(l) => l.as_ref(),
            LiteralOrLiteral8::Literal8(l) => &l.data,
        };
        if data.len() > self.cfg.append_limit as usize {
            return self.no(tag, Some(Code::TooBig), "Message exceeds APPENDLIMIT");
        }
        let when = date.map_or_else(unix_now, |d| d.as_ref().timestamp());
        if let ext::Ext::MultiAppend(more) = &self.ext {
            let more = more.clone();
            return self.multi_append(tag, &name, (f, when, data), &more);
        }
        // RFC 8508 REPLACE: the message it replaces, which must be there.
        let replacing = match &self.ext {
            ext::Ext::Replace { uid, number } => {
                let Some(sel) = &self.selected else {
                    return self.bad(tag, "Select a mailbox first");
                };
                if sel.read_only {
                    return self.no(tag, Some(Code::ReadOnly), "Mailbox is read-only");
                }
                let old = if *uid {
                    sel.msgs.binary_search_by_key(number, |m| m.uid).ok()
                } else {
                    (*number as usize)
                        .checked_sub(1)
                        .filter(|&i| i < sel.msgs.len())
                };
                match old.and_then(|i| sel.msgs.get(i)) {
                    Some(m) => Some((sel.id, m.uid)),
                    None => return self.bad(tag, "No such message to replace"),
                }
            }
            _ => None,
        };
        match self.backend.append(&name, &f, when, data) {
            Ok((uidvalidity, uid)) if replacing.is_some() => {
                // RFC 8508 §3: APPENDUID untagged, then the old message goes (it need not
                // be \Deleted; others that are stay). Not one transaction: a crash between
                // leaves both, never neither.
                let code = Code::AppendUid {
                    uid_validity: nz(uidvalidity),
                    uid: nz(uid),
                };
                self.send(Response::Status(
                    Status::ok(None, Some(code), "Replacement Message ready").expect("valid"),
                ));
                if let Some((id, old)) = replacing {
                    let deleted = Flags::system(flags::DELETED);
                    let gone = self
                        .backend
                        .store(id, &[old], FlagOp::Add, &deleted, None)
                        .and_then(|_| self.backend.expunge(id, Some(&[old])));
                    match gone {
                        Ok(gone) => self.remove_from_view(&gone),
                        Err(e) => return self.backend_no(tag, e),
                    }
                }
                self.refresh(true);
                self.ok(tag, None, "REPLACE completed");
            }
            Ok((uidvalidity, uid)) => {
                self.refresh(true);
                self.ok(
                    tag,
                    Some(Code::AppendUid {
                        uid_validity: nz(uidvalidity),
                        uid: nz(uid),
                    }),
                    "APPEND completed",
                );
            }
            Err(BackendError::NotFound(_)) => {
                self.no(tag, Some(Code::TryCreate), "No such mailbox")
            }
            Err(e) => self.backend_no(tag, e),
        }
    }

    /// RFC 3502 MULTIAPPEND: every message decoded and checked first, then all stored in
    /// one transaction, or none.
    fn multi_append(
        &mut self,
        tag: &Tag<'static>,
        name: &str,
        first: (Flags, i64, &[u8]),
        more: &[Vec<u8>],
    ) {
        use imap_codec::decode::Decoder;
        let mut decoded = Vec::with_capacity(more.len());
        for m in more {
            let Ok((&[], cmd)) = CommandCodec::default().decode(m) else {
                return self.bad(tag, "Syntax error in command");
            };
            let CommandBody::Append {
                flags,
                date,
                message,
                ..
            } = cmd.body
            else {
                return self.bad(tag, "Syntax error in command");
            };
            let Some(f) = to_flags(&flags) else {
                return self.bad(tag, "Invalid flag");
            };
            let data: Vec<u8> = match message {
                LiteralOrLiteral8::Literal(l) => l.as_ref().to_vec(),
                LiteralOrLiteral8::Literal8(l) => l.data.to_vec(),
            };
            let when = date.map_or_else(unix_now, |d| d.as_ref().timestamp());
            decoded.push((f, when, data));
        }
        let mut all: Vec<(Flags, i64, &[u8])> = vec![first];
        all.extend(
            decoded
                .iter()
                .map(|(f, w, d)| (f.clone(), *w, d.as_slice())),
        );
        if all
            .iter()
            .any(|m| m.2.len() > self.cfg.append_limit as usize)
        {
            return self.no(tag, Some(Code::TooBig), "Message exceeds APPENDLIMIT");
        }
        match self.backend.append_many(name, &all) {
            Ok((uidvalidity, uids)) => {
                self.refresh(true);
                let code = Code::Other(imap_codec::imap_types::response::CodeOther::unvalidated(
                    format!("APPENDUID {uidvalidity} {}", compact(&uids)).into_bytes(),
                ));
                self.ok(tag, Some(code), "APPEND completed");
            }
            Err(BackendError::NotFound(_)) => {
                self.no(tag, Some(Code::TryCreate), "No such mailbox")
            }
            Err(e) => self.backend_no(tag, e),
        }
    }

    /// Indexes (0-based, ascending) of the messages a set names; `None` when a sequence
    /// number is beyond the mailbox (a client error: RFC 9051 §6.4.8 leaves it to BAD).
    fn targets(&self, set: &SequenceSet, uid: bool) -> Option<Vec<usize>> {
        let sel = self.selected.as_ref()?;
        // Per interval, not per message: `FETCH 5:55` in a 100,000-message mailbox looks
        // at 51 messages (the mixed-load profile showed the per-message test).
        let mut out = Vec::new();
        if uid {
            let star = sel.msgs.last().map_or(0, |m| m.uid);
            for &(a, b) in Intervals::new(set, star).ranges() {
                let from = sel.msgs.partition_point(|m| m.uid < a);
                let to = sel.msgs.partition_point(|m| m.uid <= b);
                out.extend(from..to.max(from));
            }
        } else {
            let n = sel.msgs.len() as u32;
            let iv = Intervals::new(set, n);
            if iv.max() > n {
                return None;
            }
            for &(a, b) in iv.ranges() {
                // Sequence numbers start at 1; a 0 (never valid) names nothing.
                out.extend(a.max(1) as usize - 1..b as usize);
            }
        }
        Some(out)
    }

    fn fetch(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'static>,
        uid: bool,
        modifiers: &[FetchModifier],
    ) {
        // Others' changes first (no EXPUNGE during FETCH, RFC 3501 §7.4.1): FLAGS shows
        // what is stored now, and a new keyword is announced before it (RFC 3501 §7.2.6).
        self.refresh(false);
        let Some(mut targets) = self.targets(set, uid) else {
            return self.bad(tag, "Invalid sequence number");
        };
        let mut changed_since = None;
        let mut vanished = false;
        for m in modifiers {
            match m {
                FetchModifier::ChangedSince(v) => changed_since = Some(v.get()),
                FetchModifier::Vanished => vanished = true,
            }
        }
        if vanished && (!uid || !self.qresync || changed_since.is_none()) {
            // RFC 7162 §3.2.6: only UID FETCH with CHANGEDSINCE, once QRESYNC is enabled.
            return self.bad(
                tag,
                "VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC",
            );
        }
        if let Some(since) = changed_since {
            self.enable_condstore();
            if let Some(sel) = &self.selected {
                targets.retain(|&i| sel.msgs[i].modseq > since);
            }
            if vanished {
                self.vanished_since(set, since);
            }
        }
        // RFC 9394 §3.3: PARTIAL pages through what the set (and CHANGEDSINCE) named, in
        // UID order.
        if let ext::Ext::Fetch(x) = &self.ext
            && let Some(p) = x.partial
        {
            targets = ext::partial_of(&targets, p).to_vec();
        }
        let mut names: Vec<MessageDataItemName<'static>> = match items {
            MacroOrMessageDataItemNames::Macro(m) => m
                .expand()
                .into_iter()
                .map(IntoBoundedStatic::into_static)
                .collect(),
            MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
        };
        let _ = Macro::Fast;
        if uid && !names.contains(&MessageDataItemName::Uid) {
            names.insert(0, MessageDataItemName::Uid);
        }
        if names.contains(&MessageDataItemName::ModSeq) {
            self.enable_condstore();
        }
        // RFC 7162 §3.1.4.1: CHANGEDSINCE implies MODSEQ.
        if (changed_since.is_some() || self.condstore)
            && !names.contains(&MessageDataItemName::ModSeq)
            && changed_since.is_some()
        {
            names.push(MessageDataItemName::ModSeq);
        }
        let needs_body = names.iter().any(|n| {
            matches!(
                n,
                MessageDataItemName::Body
                    | MessageDataItemName::BodyExt { .. }
                    | MessageDataItemName::BodyStructure
                    | MessageDataItemName::Envelope
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::Rfc822Header
                    | MessageDataItemName::Rfc822Text
                    | MessageDataItemName::Binary { .. }
                    | MessageDataItemName::BinarySize { .. }
            )
        });
        // RFC 8970 PREVIEW (cut out of the command by ext.rs; a lone one stood in as UID).
        let extras = match &self.ext {
            ext::Ext::Fetch(x) => {
                if x.only && !uid {
                    names.retain(|n| *n != MessageDataItemName::Uid);
                }
                x.clone()
            }
            _ => ext::FetchExtras::default(),
        };
        let preview = extras.preview;
        let needs_body = needs_body || preview;
        let object_ids = if extras.emailid || extras.threadid {
            let Some(sel) = &self.selected else { return };
            match self.backend.object_ids(sel.id) {
                Ok(v) => Some(v.into_iter().map(|(u, e, t)| (u, (e, t))).collect()),
                Err(e) => return self.backend_no(tag, e),
            }
        } else {
            None
        };
        let (id, read_only) = match &self.selected {
            Some(s) => (s.id, s.read_only),
            None => return,
        };
        let silent = std::mem::take(&mut self.silent_fetch);
        self.fetch_run(FetchJob {
            tag: tag.clone(),
            targets: targets.into_iter(),
            names,
            needs_body,
            id,
            read_only,
            uid,
            bodies: Default::default(),
            preview,
            object_ids,
            extras,
            silent,
        });
    }

    /// Answer FETCH for the job's remaining messages, pausing when much output is waiting.
    fn fetch_run(&mut self, mut job: FetchJob) {
        let (id, read_only, needs_body) = (job.id, job.read_only, job.needs_body);
        let names = std::mem::take(&mut job.names);
        let tag = &job.tag.clone();
        // The output of one piece, allocated once rather than grown by doubling.
        self.out.reserve(FLUSH_BYTES + FLUSH_BYTES / 4);
        loop {
            if self.out.len() >= FLUSH_BYTES && job.targets.len() > 0 {
                job.names = names;
                self.fetching = Some(job);
                return;
            }
            let Some(idx) = job.targets.next() else { break };
            let Some(meta) = self
                .selected
                .as_ref()
                .and_then(|s| s.msgs.get(idx))
                .cloned()
            else {
                continue;
            };
            if needs_body && job.bodies.is_empty() {
                // Read ahead about one flush worth of bodies in one backend call.
                let mut uids = Vec::new();
                let mut bytes = 0;
                if let Some(sel) = &self.selected {
                    for &i in std::iter::once(&idx).chain(job.targets.as_slice()) {
                        let Some(m) = sel.msgs.get(i) else { continue };
                        uids.push(m.uid);
                        bytes += m.size as usize;
                        if bytes >= FLUSH_BYTES || uids.len() >= 1024 {
                            break;
                        }
                    }
                }
                let got = self.backend.read_many(id, &uids);
                job.bodies = uids.into_iter().zip(got).collect();
            }
            let raw = if needs_body {
                let read = job
                    .bodies
                    .remove(&meta.uid)
                    .unwrap_or_else(|| self.backend.read(id, meta.uid));
                match read {
                    Ok(r) => Some(r),
                    // Expunged by another session; we may not say so yet (RFC 3501 §7.4.1).
                    Err(BackendError::NotFound(_)) => continue,
                    Err(e) => return self.backend_no(tag, e),
                }
            } else {
                None
            };
            let parsed = raw.as_deref().map(Parsed::new);
            let mut set_seen = false;
            let mut out: Vec<MessageDataItem<'static>> = Vec::new();
            // (item index, origin) of partial BINARY items.
            let mut origins: Vec<(usize, u32)> = Vec::new();
            for n in &names {
                let item = match n {
                    MessageDataItemName::Uid => MessageDataItem::Uid(nz(meta.uid)),
                    MessageDataItemName::Flags => continue, // added below, after \Seen
                    MessageDataItemName::InternalDate => match datetime(meta.internal_date) {
                        Some(d) => MessageDataItem::InternalDate(d),
                        None => continue,
                    },
                    MessageDataItemName::Rfc822Size => {
                        MessageDataItem::Rfc822Size(meta.size as u32)
                    }
                    MessageDataItemName::ModSeq => MessageDataItem::ModSeq(
                        NonZeroU64::new(meta.modseq).unwrap_or(NonZeroU64::MIN),
                    ),
                    MessageDataItemName::Envelope => match &parsed {
                        Some(p) => MessageDataItem::Envelope(p.envelope()),
                        None => continue,
                    },
                    MessageDataItemName::Body => match &parsed {
                        Some(p) => MessageDataItem::Body(p.body_structure(false)),
                        None => continue,
                    },
                    MessageDataItemName::BodyStructure => match &parsed {
                        Some(p) => MessageDataItem::BodyStructure(p.body_structure(true)),
                        None => continue,
                    },
                    MessageDataItemName::BodyExt {
                        section,
                        partial,
                        peek,
                    } => {
                        let Some(p) = &parsed else { continue };
                        let bytes = p.section(section.as_ref());
                        let (origin, slice) = match partial {
                            Some((start, len)) => {
                                let (start, len) = (*start, len.get());
                                let s = (start as usize).min(bytes.len());
                                let e = s.saturating_add(len as usize).min(bytes.len());
                                (Some(start), &bytes[s..e])
                            }
                            None => (None, &bytes[..]),
                        };
                        set_seen |= !peek;
                        MessageDataItem::BodyExt {
                            section: section.clone(),
                            origin,
                            data: literal(slice),
                        }
                    }
                    MessageDataItemName::Rfc822 => {
                        set_seen = true;
                        MessageDataItem::Rfc822(literal(raw.as_deref().unwrap_or_default()))
                    }
                    MessageDataItemName::Rfc822Header => {
                        let Some(p) = &parsed else { continue };
                        MessageDataItem::Rfc822Header(literal(
                            &p.section(Some(&Section::Header(None))),
                        ))
                    }
                    MessageDataItemName::Rfc822Text => {
                        let Some(p) = &parsed else { continue };
                        set_seen = true;
                        MessageDataItem::Rfc822Text(literal(&p.section(Some(&Section::Text(None)))))
                    }
                    MessageDataItemName::Binary {
                        section,
                        partial,
                        peek,
                    } => {
                        let Some(p) = &parsed else { continue };
                        let Ok(mut bytes) = p.binary(section) else {
                            return self.no(
                                tag,
                                Some(Code::UnknownCte),
                                "Unknown Content-Transfer-Encoding",
                            );
                        };
                        if let Some((start, len)) = partial {
                            let s = (*start as usize).min(bytes.len());
                            let e = s.saturating_add(len.get() as usize).min(bytes.len());
                            bytes = bytes[s..e].to_vec();
                            origins.push((out.len(), *start));
                        }
                        set_seen |= !peek;
                        MessageDataItem::Binary {
                            section: section.clone(),
                            value: NString8::Literal8(Literal8 {
                                data: bytes.into(),
                                mode: LiteralMode::Sync,
                            }),
                        }
                    }
                    MessageDataItemName::BinarySize { section } => {
                        let Some(p) = &parsed else { continue };
                        let Ok(bytes) = p.binary(section) else {
                            return self.no(
                                tag,
                                Some(Code::UnknownCte),
                                "Unknown Content-Transfer-Encoding",
                            );
                        };
                        MessageDataItem::BinarySize {
                            section: section.clone(),
                            size: bytes.len() as u32,
                        }
                    }
                };
                out.push(item);
            }
            let mut flags_now = meta.flags.clone();
            let mut seen_added = false;
            if set_seen
                && !read_only
                && flags_now.system & flags::SEEN == 0
                && let Ok(up) = self.backend.store(
                    id,
                    &[meta.uid],
                    FlagOp::Add,
                    &Flags::system(flags::SEEN),
                    None,
                )
                && let Some(m) = up.messages.into_iter().next()
            {
                flags_now = m.flags.clone();
                if let Some(s) = self.selected.as_mut()
                    && let Some(slot) = Arc::make_mut(&mut s.msgs).get_mut(idx)
                {
                    *slot = m;
                }
                seen_added = true;
            }
            // RFC 9051 §6.4.5: FLAGS goes out when asked, and when \Seen was just set.
            if names.contains(&MessageDataItemName::Flags) || seen_added {
                let shown = MessageMeta {
                    flags: flags_now,
                    ..meta.clone()
                };
                out.push(MessageDataItem::Flags(self.fetch_flags(&shown)));
            }
            let only_preview = out.is_empty();
            // RFC 9586 §3.3: UIDFETCH carries the UID in front, not as an item.
            let num = if self.uidonly {
                if out.len() > 1 {
                    out.retain(|i| !matches!(i, MessageDataItem::Uid(_)));
                }
                meta.uid
            } else {
                idx as u32 + 1
            };
            let start = self.out.len();
            if only_preview {
                // Nothing but the items added below.
            } else if origins.is_empty() {
                if !write_simple_fetch(&mut self.out, num, &out)
                    && let Ok(items) = Vec1::try_from(out)
                {
                    self.data(Data::Fetch {
                        seq: nz(num),
                        items,
                    });
                }
            } else {
                self.fetch_with_origins(num, out, &origins);
            }
            // imap-types has no PREVIEW, EMAILID or THREADID item: they go at the end.
            let mut added: Vec<Vec<u8>> = Vec::new();
            if let Some(ids) = &job.object_ids {
                let (email, root) = ids.get(&meta.uid).cloned().unwrap_or_default();
                if job.extras.emailid {
                    added.push(format!("EMAILID (M{email})").into_bytes());
                }
                if job.extras.threadid {
                    added.push(match thread_id(&root) {
                        Some(t) => format!("THREADID ({t})").into_bytes(),
                        None => b"THREADID NIL".to_vec(),
                    });
                }
            }
            if job.extras.savedate {
                // RFC 8514 §4.1, a date-time as INTERNALDATE writes it.
                added.push(match chrono::DateTime::from_timestamp(meta.saved, 0) {
                    Some(t) => {
                        format!("SAVEDATE \"{}\"", t.format("%d-%b-%Y %H:%M:%S +0000")).into_bytes()
                    }
                    None => b"SAVEDATE NIL".to_vec(),
                });
            }
            if job.preview {
                let text = parsed.as_ref().map(|p| p.preview()).unwrap_or_default();
                let mut item = b"PREVIEW ".to_vec();
                if text
                    .bytes()
                    .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
                {
                    item.push(b'"');
                    item.extend_from_slice(text.as_bytes());
                    item.push(b'"');
                } else {
                    item.extend_from_slice(format!("{{{}}}\r\n", text.len()).as_bytes());
                    item.extend_from_slice(text.as_bytes());
                }
                added.push(item);
            }
            if !added.is_empty() {
                if only_preview {
                    self.out
                        .extend_from_slice(format!("* {num} FETCH (").as_bytes());
                } else if self.out.ends_with(b")\r\n") {
                    self.out.truncate(self.out.len() - 3);
                    self.out.push(b' ');
                }
                self.out.extend_from_slice(&added.join(&b' '));
                self.out.extend_from_slice(b")\r\n");
            }
            if self.uidonly {
                self.uidfetch_at(start);
            }
        }
        if job.silent {
            return;
        }
        self.refresh(job.uid);
        self.ok(&job.tag, None, "FETCH completed");
    }

    fn store(&mut self, tag: &Tag<'static>, set: &SequenceSet, args: StoreArgs<'_>) {
        let StoreArgs {
            kind,
            response,
            flags,
            uid,
            unchanged_since,
        } = args;
        let Some(targets) = self.targets(set, uid) else {
            return self.bad(tag, "Invalid sequence number");
        };
        if unchanged_since.is_some() {
            self.enable_condstore();
        }
        let Some(f) = to_flags(flags) else {
            return self.bad(tag, "Invalid flag");
        };
        let Some(sel) = &self.selected else { return };
        if sel.read_only {
            return self.no(tag, Some(Code::ReadOnly), "Mailbox is read-only");
        }
        let id = sel.id;
        let uids: Vec<u32> = targets.iter().map(|&i| sel.msgs[i].uid).collect();
        let op = match kind {
            StoreType::Replace => FlagOp::Replace,
            StoreType::Add => FlagOp::Add,
            StoreType::Remove => FlagOp::Remove,
        };
        let up = match self.backend.store(id, &uids, op, &f, unchanged_since) {
            Ok(u) => u,
            Err(e) => return self.backend_no(tag, e),
        };
        self.announce_keywords(up.messages.iter().map(|m| &m.flags));
        for m in up.messages {
            let Some(sel) = self.selected.as_mut() else {
                break;
            };
            let Ok(i) = sel.msgs.binary_search_by_key(&m.uid, |x| x.uid) else {
                continue;
            };
            Arc::make_mut(&mut sel.msgs)[i] = m.clone();
            // RFC 7162 §3.1.3: messages that failed UNCHANGEDSINCE get no FETCH here.
            if response == StoreResponse::Answer && !up.modified.contains(&m.uid) {
                let mut items = vec![MessageDataItem::Flags(self.fetch_flags(&m))];
                if uid {
                    items.push(MessageDataItem::Uid(nz(m.uid)));
                }
                if self.condstore {
                    items.push(MessageDataItem::ModSeq(
                        NonZeroU64::new(m.modseq).unwrap_or(NonZeroU64::MIN),
                    ));
                }
                self.fetch_data(i, items);
            }
        }
        let modified = if up.modified.is_empty() {
            None
        } else if uid {
            sequence_set(&up.modified)
        } else {
            let sel = self.selected.as_ref();
            let seqs: Vec<u32> = up
                .modified
                .iter()
                .filter_map(|u| {
                    sel.and_then(|s| s.msgs.binary_search_by_key(u, |x| x.uid).ok())
                        .map(|i| i as u32 + 1)
                })
                .collect();
            sequence_set(&seqs)
        };
        self.refresh(uid);
        match modified {
            Some(set) => self.ok(tag, Some(Code::Modified(set)), "Conditional STORE failed"),
            None => self.ok(tag, None, "STORE completed"),
        }
    }

    /// UID FETCH ... (CHANGEDSINCE m VANISHED): UIDs of the set expunged after m.
    fn vanished_since(&mut self, set: &SequenceSet, since: u64) {
        let Some(sel) = &self.selected else { return };
        let Ok(ch) = self.backend.changes(sel.id, since) else {
            return;
        };
        let iv = Intervals::new(set, ch.uid_next.saturating_sub(1));
        let gone: Vec<u32> = ch
            .expunged
            .into_iter()
            .filter(|u| iv.contains(*u))
            .collect();
        if let Some(set) = sequence_set(&gone) {
            self.data(Data::Vanished {
                earlier: true,
                known_uids: set,
            });
        }
    }

    fn copy(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        mailbox: &WireMailbox<'_>,
        uid: bool,
        remove: bool,
    ) {
        let Some(targets) = self.targets(set, uid) else {
            return self.bad(tag, "Invalid sequence number");
        };
        let name = match self.mailbox_name(mailbox) {
            Ok(n) => n,
            Err(e) => return self.bad(tag, e),
        };
        let dest = match self.backend.mailbox(&name) {
            Ok(mb) => mb,
            Err(BackendError::NotFound(_)) => {
                return self.no(tag, Some(Code::TryCreate), "No such mailbox");
            }
            Err(e) => return self.backend_no(tag, e),
        };
        let Some(sel) = &self.selected else { return };
        if remove && sel.read_only {
            return self.no(tag, Some(Code::ReadOnly), "Mailbox is read-only");
        }
        let id = sel.id;
        let uids: Vec<u32> = targets.iter().map(|&i| sel.msgs[i].uid).collect();
        let copied = match self.backend.copy(id, &uids, dest.id, remove) {
            Ok(c) => c,
            Err(e) => return self.backend_no(tag, e),
        };
        let src: Vec<u32> = copied.uids.iter().map(|p| p.0).collect();
        let dst: Vec<u32> = copied.uids.iter().map(|p| p.1).collect();
        let code = match (uid_set(&src), uid_set(&dst)) {
            (Some(source), Some(destination)) => Some(Code::CopyUid {
                uid_validity: nz(copied.uidvalidity),
                source,
                destination,
            }),
            _ => None,
        };
        if remove {
            // RFC 6851 §4.3: COPYUID comes in an untagged OK before the EXPUNGEs.
            if let Some(code) = code {
                self.send(Response::Status(
                    Status::ok(None, Some(code), "Moved").expect("valid"),
                ));
            }
            self.remove_from_view(&src);
            self.refresh(true);
            self.ok(tag, None, "MOVE completed");
        } else {
            self.refresh(uid);
            self.ok(tag, code, "COPY completed");
        }
    }

    /// Tell the client these UIDs are gone and drop them from the snapshot.
    fn remove_from_view(&mut self, uids: &[u32]) {
        self.contexts_expunged(uids);
        let mut seqs = Vec::new();
        if let Some(sel) = self.selected.as_mut() {
            for u in uids {
                if let Ok(i) = sel.msgs.binary_search_by_key(u, |m| m.uid) {
                    Arc::make_mut(&mut sel.msgs).remove(i);
                    seqs.push(i as u32 + 1);
                }
                if let Ok(i) = sel.recent.binary_search(u) {
                    sel.recent.remove(i);
                }
                if let Ok(i) = sel.saved.binary_search(u) {
                    sel.saved.remove(i);
                }
            }
        }
        if self.qresync || self.uidonly {
            // RFC 7162 §3.2.10: VANISHED replaces EXPUNGE once QRESYNC is enabled; RFC
            // 9586 §3.2 the same for UIDONLY.
            let mut gone: Vec<u32> = uids.to_vec();
            gone.sort_unstable();
            if !seqs.is_empty()
                && let Some(set) = sequence_set(&gone)
            {
                self.data(Data::Vanished {
                    earlier: false,
                    known_uids: set,
                });
            }
            return;
        }
        for s in seqs {
            if let Ok(d) = Data::expunge(s) {
                self.data(d);
            }
        }
    }

    /// QRESYNC (RFC 7162 §3.2.5.2): what changed since the client's MODSEQ.
    fn resync(&mut self, since: u64, known: Option<&SequenceSet>) {
        let Some(sel) = &self.selected else { return };
        let Ok(ch) = self.backend.changes(sel.id, since) else {
            return;
        };
        let star = ch.uid_next.saturating_sub(1);
        let known = known.map(|k| Intervals::new(k, star));
        let vanished: Vec<u32> = ch
            .expunged
            .iter()
            .copied()
            .filter(|u| known.as_ref().is_none_or(|k| k.contains(*u)))
            .collect();
        if let Some(set) = sequence_set(&vanished) {
            self.data(Data::Vanished {
                earlier: true,
                known_uids: set,
            });
        }
        let Some(sel) = &self.selected else { return };
        let mut fetches = Vec::new();
        for m in &ch.changed {
            if let Ok(i) = sel.msgs.binary_search_by_key(&m.uid, |x| x.uid) {
                fetches.push((i, self.flags_items(&sel.msgs[i])));
            }
        }
        for (i, items) in fetches {
            self.fetch_data(i, items);
        }
    }

    /// A FETCH response with partial BINARY items. imap-types has no origin for BINARY
    /// (RFC 3516 §4.2 `BINARY[1]<0>`), so each item is encoded alone and `<origin>` is put
    /// after the section of the items that need it.
    fn fetch_with_origins(
        &mut self,
        seq: u32,
        items: Vec<MessageDataItem<'static>>,
        origins: &[(usize, u32)],
    ) {
        let mut line = format!("* {seq} FETCH (").into_bytes();
        for (i, item) in items.into_iter().enumerate() {
            let Ok(one) = Data::fetch(1, vec![item]) else {
                continue;
            };
            let enc = ResponseCodec::default().encode(&Response::Data(one)).dump();
            // "* 1 FETCH (" + item + ")\r\n"
            let Some(body) = enc
                .strip_prefix(b"* 1 FETCH (")
                .and_then(|b| b.strip_suffix(b")\r\n"))
            else {
                continue;
            };
            if i > 0 {
                line.push(b' ');
            }
            match origins.iter().find(|(k, _)| *k == i) {
                Some((_, origin)) => {
                    let close = body.iter().position(|&b| b == b']').map_or(0, |p| p + 1);
                    line.extend_from_slice(&body[..close]);
                    line.extend_from_slice(format!("<{origin}>").as_bytes());
                    line.extend_from_slice(&body[close..]);
                }
                None => line.extend_from_slice(body),
            }
        }
        line.extend_from_slice(b")\r\n");
        self.out.extend_from_slice(&line);
    }

    /// `* QUOTA "" (STORAGE used limit)` in KiB (RFC 9208 §5.1), when there is a limit.
    fn quota_data(&mut self) {
        if let Ok((used, Some(limit))) = self.backend.quota() {
            let q = QuotaGet::new(Resource::Storage, used.div_ceil(1024), limit / 1024);
            self.data(Data::Quota {
                root: AString::try_from("").expect("valid"),
                quotas: Vec1::from(q),
            });
        }
    }

    /// `UID n FLAGS (...)` and, with CONDSTORE, `MODSEQ (m)`: an unsolicited flag update.
    fn flags_items(&self, m: &MessageMeta) -> Vec<MessageDataItem<'static>> {
        let mut items = vec![
            MessageDataItem::Uid(nz(m.uid)),
            MessageDataItem::Flags(self.fetch_flags(m)),
        ];
        if self.condstore {
            items.push(MessageDataItem::ModSeq(
                NonZeroU64::new(m.modseq).unwrap_or(NonZeroU64::MIN),
            ));
        }
        items
    }

    fn expunge(&mut self, tag: &Tag<'static>, set: Option<&SequenceSet>) {
        let Some(sel) = &self.selected else { return };
        if sel.read_only {
            return self.no(tag, Some(Code::ReadOnly), "Mailbox is read-only");
        }
        let id = sel.id;
        let uids: Option<Vec<u32>> = set.map(|s| {
            let star = sel.msgs.last().map_or(0, |m| m.uid);
            let iv = Intervals::new(s, star);
            sel.msgs
                .iter()
                .map(|m| m.uid)
                .filter(|u| iv.contains(*u))
                .collect()
        });
        match self.backend.expunge(id, uids.as_deref()) {
            Ok(gone) => {
                self.remove_from_view(&gone);
                self.refresh(true);
                self.ok(tag, None, "EXPUNGE completed");
            }
            Err(e) => self.backend_no(tag, e),
        }
    }

    /// Indexes (0-based) of the selected messages matching every criterion.
    fn search_hits(&mut self, criteria: &[SearchKey<'_>]) -> Result<Vec<usize>, BackendError> {
        let Some(sel) = &self.selected else {
            return Ok(Vec::new());
        };
        let id = sel.id;
        let msgs = sel.msgs.clone();
        let mut wanted = Vec::new();
        criteria
            .iter()
            .for_each(|k| search::text_keys(k, &mut wanted));
        let mut text_hits = Vec::new();
        for (field, needle) in wanted {
            if text_hits
                .iter()
                .any(|(f, n, _): &(yubin_model::TextField, String, Vec<u32>)| {
                    *f == field && *n == needle
                })
            {
                continue;
            }
            let mut uids = self.backend.search_text(id, field, &needle)?;
            uids.sort_unstable();
            text_hits.push((field, needle, uids));
        }
        let mut sent = std::collections::HashMap::new();
        if criteria.iter().any(search::uses_sent) {
            // RFC 3501 §6.4.4: the day written in the Date header, its zone disregarded
            // (the UTC day for messages stored before that day was kept).
            for i in self.backend.sort_info(id)? {
                if let Some(d) = i.sent_day.or(i.sent.map(|t| t.div_euclid(86_400))) {
                    sent.insert(i.uid, d);
                }
            }
        }
        // One key the index answers exactly (SUBJECT x, BODY x...): its UIDs are the answer.
        if let [key] = criteria
            && search::answered_by_index(key)
            && let [(_, _, uids)] = text_hits.as_slice()
        {
            let mut at = yubin_model::sorted::Cursor::new(&msgs);
            return Ok(uids.iter().filter_map(|u| at.seek(u, |m| m.uid)).collect());
        }
        let mut object_ids = std::collections::HashMap::new();
        if criteria.iter().any(search::uses_object_ids) {
            for (uid, email, root) in self.backend.object_ids(id)? {
                object_ids.insert(uid, (format!("M{email}"), thread_id(&root)));
            }
        }
        let ctx = search::Context {
            msgs: &msgs,
            text_hits: &text_hits,
            sent: &sent,
            object_ids: &object_ids,
            recent: &self
                .selected
                .as_ref()
                .map_or(Vec::new(), |s| s.recent.clone()),
            now: unix_now(),
        };
        let mut hits = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let mut loader = || self.backend.read(id, m.uid).ok();
            if search::matches_all(criteria, &ctx, i, &mut loader) {
                hits.push(i);
            }
        }
        Ok(hits)
    }

    /// The sort keys of the snapshot's messages, by position; a message expunged meanwhile
    /// gets empty keys.
    fn sort_keys(&mut self) -> Result<Vec<SortInfo>, BackendError> {
        let Some(sel) = &self.selected else {
            return Ok(Vec::new());
        };
        let info = self.backend.sort_info(sel.id)?;
        let Some(sel) = &self.selected else {
            return Ok(Vec::new());
        };
        Ok(sel
            .msgs
            .iter()
            .map(|m| {
                info.binary_search_by_key(&m.uid, |x| x.uid)
                    .ok()
                    .and_then(|k| info.get(k).cloned())
                    .unwrap_or_else(|| SortInfo {
                        uid: m.uid,
                        size: m.size,
                        internal_date: m.internal_date,
                        ..SortInfo::default()
                    })
            })
            .collect())
    }

    /// RFC 5267 §4.2: keep a SEARCH/SORT RETURN (UPDATE) result; `false` when the command
    /// was answered here (its tag names another updating search).
    fn keep_context(
        &mut self,
        tag: &Tag<'static>,
        uid: bool,
        criteria: &[SearchKey<'_>],
        sort: Option<&[SortCriterion]>,
        hits: &[usize],
        partial: bool,
    ) -> bool {
        let Some(sel) = self.selected.as_mut() else {
            return true;
        };
        let t = tag.as_ref().to_owned();
        if sel.contexts.iter().any(|c| c.tag == t) {
            self.bad(tag, "That tag names an updating search already");
            return false;
        }
        // With PARTIAL the whole result is kept and its changes are sent, positions in
        // the whole result (RFC 5267 §4.3): a client paging through it places them.
        let _ = partial;
        let refuse = if sel.contexts.len() >= MAX_UPDATE_CONTEXTS {
            Some("Too many updating searches; CANCELUPDATE some")
        } else {
            None
        };
        if let Some(why) = refuse {
            let line = format!(
                "* NO [NOUPDATE {}] {why}\r\n",
                String::from_utf8_lossy(&astring_out(t.as_bytes()))
            );
            self.out.extend_from_slice(line.as_bytes());
            return true;
        }
        let result = hits
            .iter()
            .filter_map(|&i| sel.msgs.get(i).map(|m| m.uid))
            .collect();
        sel.contexts.push(UpdateContext {
            tag: t,
            uid,
            criteria: criteria.iter().map(|k| k.clone().into_static()).collect(),
            sort: sort.map(<[SortCriterion]>::to_vec),
            result,
            modseq: sel.highest_modseq,
            len: sel.msgs.len(),
        });
        true
    }

    /// RFC 5267 §4.3: before these UIDs' EXPUNGE goes out, the updating searches holding
    /// them say REMOVEFROM (while their message numbers still stand).
    fn contexts_expunged(&mut self, gone: &[u32]) {
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        let mut lines = Vec::new();
        for c in &mut sel.contexts {
            let mut removed: Vec<u32> = c
                .result
                .iter()
                .copied()
                .filter(|u| gone.contains(u))
                .collect();
            if removed.is_empty() {
                continue;
            }
            c.result.retain(|u| !removed.contains(u));
            removed.sort_unstable();
            let shown: Vec<u32> = if c.uid {
                removed
            } else {
                removed
                    .iter()
                    .filter_map(|u| sel.msgs.binary_search_by_key(u, |m| m.uid).ok())
                    .map(|i| i as u32 + 1)
                    .collect()
            };
            lines.push(context_line(&c.tag, c.uid, &shown, &[]));
        }
        for l in lines {
            self.out.extend_from_slice(l.as_bytes());
        }
    }

    /// RFC 5267 §4.3: after the mailbox changed (new mail, flags), each updating search
    /// is run again and what entered or left its result is sent.
    fn update_contexts(&mut self) {
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        if sel.contexts.is_empty() {
            return;
        }
        let (modseq, len) = (sel.highest_modseq, sel.msgs.len());
        let mut contexts = std::mem::take(&mut sel.contexts);
        for c in &mut contexts {
            if c.modseq == modseq && c.len == len {
                continue;
            }
            let Ok(hits) = self.search_hits(&c.criteria) else {
                continue;
            };
            let order = match &c.sort {
                Some(criteria) => match self.sort_keys() {
                    Ok(keyed) => sort::sort(&keyed, &hits, criteria),
                    Err(_) => continue,
                },
                None => hits,
            };
            let Some(sel) = self.selected.as_ref() else {
                break;
            };
            let new: Vec<u32> = order
                .iter()
                .filter_map(|&i| sel.msgs.get(i).map(|m| m.uid))
                .collect();
            let shown = |u: u32| -> u32 {
                if c.uid {
                    u
                } else {
                    sel.msgs
                        .binary_search_by_key(&u, |m| m.uid)
                        .map_or(0, |i| i as u32 + 1)
                }
            };
            let old: std::collections::HashSet<u32> = c.result.iter().copied().collect();
            let now: std::collections::HashSet<u32> = new.iter().copied().collect();
            let mut removed: Vec<u32> = c
                .result
                .iter()
                .copied()
                .filter(|u| !now.contains(u))
                .map(shown)
                .collect();
            removed.sort_unstable();
            // ADDTO runs: (position, numbers in result order); SEARCH says position 0.
            let mut added: Vec<(usize, Vec<u32>)> = Vec::new();
            for (k, &u) in new.iter().enumerate() {
                if old.contains(&u) {
                    continue;
                }
                let pos = if c.sort.is_some() { k + 1 } else { 0 };
                match added.last_mut() {
                    Some((p, run)) if c.sort.is_some() && *p + run.len() == pos => {
                        run.push(shown(u))
                    }
                    Some((_, run)) if c.sort.is_none() => run.push(shown(u)),
                    _ => added.push((pos, vec![shown(u)])),
                }
            }
            if !removed.is_empty() || !added.is_empty() {
                let line = context_line(&c.tag, c.uid, &removed, &added);
                self.out.extend_from_slice(line.as_bytes());
            }
            c.result = new;
            c.modseq = modseq;
            c.len = len;
        }
        if let Some(sel) = self.selected.as_mut() {
            sel.contexts = contexts;
        }
    }

    /// Sequence number or UID of a message by index, for SEARCH/SORT/THREAD answers.
    fn number(&self, i: usize, uid: bool) -> NonZeroU32 {
        match (&self.selected, uid) {
            (Some(s), true) => nz(s.msgs.get(i).map_or(0, |m| m.uid)),
            _ => nz(i as u32 + 1),
        }
    }

    fn search(&mut self, tag: &Tag<'static>, criteria: &[SearchKey<'_>], uid: bool) {
        let hits = match self.search_hits(criteria) {
            Ok(h) => h,
            Err(e) => return self.backend_no(tag, e),
        };
        // RFC 7162 §3.1.5: a search with MODSEQ reports the highest MODSEQ of the matches;
        // with ESEARCH MIN and/or MAX alone, of those one or two messages (RFC 4731 §3.2).
        let uses_modseq = criteria.iter().any(search::uses_modseq);
        let top = if uses_modseq {
            self.enable_condstore();
            let sel = self.selected.as_ref();
            let reported: Vec<usize> = match &self.ext {
                ext::Ext::Search(r) if (r.min || r.max) && !r.all && !r.count => {
                    let ends = [r.min.then(|| hits.first()), r.max.then(|| hits.last())];
                    ends.into_iter().flatten().flatten().copied().collect()
                }
                _ => hits.clone(),
            };
            reported
                .iter()
                .filter_map(|&i| sel.and_then(|s| s.msgs.get(i)).map(|m| m.modseq))
                .max()
                .and_then(NonZeroU64::new)
        } else {
            None
        };
        let numbers: Vec<NonZeroU32> = hits.iter().map(|&i| self.number(i, uid)).collect();
        if let ext::Ext::Search(r) = &self.ext
            && r.update
        {
            let partial = r.partial.is_some();
            if !self.keep_context(tag, uid, criteria, None, &hits, partial) {
                return;
            }
        }
        // RFC 9051 §7.3.4: IMAP4rev2 answers SEARCH with ESEARCH (ALL by default).
        if self.rev2 && self.ext == ext::Ext::None {
            self.ext = ext::Ext::Search(ext::SearchReturn {
                all: true,
                ..Default::default()
            });
        }
        if let ext::Ext::Search(r) = &self.ext
            && r.save
        {
            // RFC 5182 §2.4: with MIN/MAX alone, only those are kept.
            let r = r.clone();
            if let Some(sel) = self.selected.as_mut() {
                let pick: Vec<usize> =
                    if (r.min || r.max) && !r.all && !r.count && r.partial.is_none() {
                        let ends = [r.min.then(|| hits.first()), r.max.then(|| hits.last())];
                        ends.into_iter().flatten().flatten().copied().collect()
                    } else {
                        hits.clone()
                    };
                let mut uids: Vec<u32> = pick
                    .iter()
                    .filter_map(|&i| sel.msgs.get(i).map(|m| m.uid))
                    .collect();
                uids.sort_unstable();
                uids.dedup();
                sel.saved = uids;
            }
            if !(r.min || r.max || r.all || r.count || r.partial.is_some()) {
                // SAVE alone: nothing is sent but the tagged OK.
                self.refresh(uid);
                return self.ok(tag, None, "SEARCH completed");
            }
        }
        if let ext::Ext::Search(r) = &self.ext {
            // RFC 4731 §3.1: * ESEARCH (TAG "t") [UID] MIN n MAX n COUNT n ALL set.
            let r = r.clone();
            let mut line = format!("* ESEARCH (TAG \"{}\")", tag.as_ref());
            if uid {
                line.push_str(" UID");
            }
            let values: Vec<u32> = numbers.iter().map(|n| n.get()).collect();
            if r.min
                && let Some(m) = values.iter().min()
            {
                line.push_str(&format!(" MIN {m}"));
            }
            if r.max
                && let Some(m) = values.iter().max()
            {
                line.push_str(&format!(" MAX {m}"));
            }
            if r.count {
                line.push_str(&format!(" COUNT {}", values.len()));
            }
            if r.all && !values.is_empty() {
                let mut sorted = values.clone();
                sorted.sort_unstable();
                line.push_str(&format!(" ALL {}", compact(&sorted)));
            }
            if let Some(p) = r.partial {
                let mut sorted = values.clone();
                sorted.sort_unstable();
                line.push_str(&partial_item(&sorted, p));
            }
            if let Some(top) = top {
                line.push_str(&format!(" MODSEQ {top}"));
            }
            line.push_str("\r\n");
            self.out.extend_from_slice(line.as_bytes());
        } else {
            self.data(Data::Search(numbers, top));
        }
        self.refresh(uid);
        self.ok(tag, None, "SEARCH completed");
    }

    /// SORT and THREAD (RFC 5256): search, then order by keys the store keeps.
    fn sort_or_thread(
        &mut self,
        tag: &Tag<'static>,
        search_criteria: &[SearchKey<'_>],
        uid: bool,
        how: SortOrThread<'_>,
    ) {
        let hits = match self.search_hits(search_criteria) {
            Ok(h) => h,
            Err(e) => return self.backend_no(tag, e),
        };
        let keyed = match self.sort_keys() {
            Ok(k) => k,
            Err(e) => return self.backend_no(tag, e),
        };
        match how {
            SortOrThread::Sort(criteria) => {
                let order = sort::sort(&keyed, &hits, criteria);
                let numbers: Vec<NonZeroU32> = order.iter().map(|&i| self.number(i, uid)).collect();
                if let ext::Ext::Search(r) = &self.ext
                    && r.update
                {
                    let partial = r.partial.is_some();
                    if !self.keep_context(
                        tag,
                        uid,
                        search_criteria,
                        Some(criteria),
                        &order,
                        partial,
                    ) {
                        return;
                    }
                }
                if let ext::Ext::Search(r) = &self.ext {
                    // RFC 5267 §3 ESORT: MIN and MAX are the first and last in sort order,
                    // ALL the numbers in that order.
                    let r = r.clone();
                    let mut line = format!("* ESEARCH (TAG \"{}\")", tag.as_ref());
                    if uid {
                        line.push_str(" UID");
                    }
                    if r.min
                        && let Some(n) = numbers.first()
                    {
                        line.push_str(&format!(" MIN {n}"));
                    }
                    if r.max
                        && let Some(n) = numbers.last()
                    {
                        line.push_str(&format!(" MAX {n}"));
                    }
                    if r.count {
                        line.push_str(&format!(" COUNT {}", numbers.len()));
                    }
                    let values: Vec<u32> = numbers.iter().map(|n| n.get()).collect();
                    if r.all && !values.is_empty() {
                        line.push_str(&format!(" ALL {}", in_order(&values)));
                    }
                    if let Some(p) = r.partial {
                        line.push_str(&partial_item(&values, p));
                    }
                    line.push_str("\r\n");
                    self.out.extend_from_slice(line.as_bytes());
                } else {
                    self.data(Data::Sort(numbers, None));
                }
                self.refresh(uid);
                self.ok(tag, None, "SORT completed");
            }
            SortOrThread::Thread(algorithm) => {
                let threads = match algorithm {
                    ThreadingAlgorithm::References => sort::references(&keyed, &hits),
                    ThreadingAlgorithm::OrderedSubject => sort::ordered_subject(&keyed, &hits),
                    ThreadingAlgorithm::Other(_) => {
                        return self.bad(tag, "Unknown threading algorithm");
                    }
                };
                let threads = if uid {
                    self.threads_by_uid(threads)
                } else {
                    threads
                };
                self.data(Data::Thread(threads));
                self.refresh(uid);
                self.ok(tag, None, "THREAD completed");
            }
        }
    }

    /// THREAD answers with sequence numbers; UID THREAD with UIDs.
    fn threads_by_uid(&self, threads: Vec<Thread>) -> Vec<Thread> {
        fn map(t: Thread, f: &dyn Fn(NonZeroU32) -> NonZeroU32) -> Thread {
            match t {
                Thread::Members { prefix, answers } => Thread::Members {
                    prefix: Vec1::try_from(
                        prefix.into_inner().into_iter().map(f).collect::<Vec<_>>(),
                    )
                    .expect("same length"),
                    answers: answers.map(|a| {
                        Vec2::try_from(
                            a.into_inner()
                                .into_iter()
                                .map(|t| map(t, f))
                                .collect::<Vec<_>>(),
                        )
                        .expect("same length")
                    }),
                },
                Thread::Nested { answers } => Thread::Nested {
                    answers: Vec2::try_from(
                        answers
                            .into_inner()
                            .into_iter()
                            .map(|t| map(t, f))
                            .collect::<Vec<_>>(),
                    )
                    .expect("same length"),
                },
            }
        }
        let f = |n: NonZeroU32| self.number(n.get() as usize - 1, true);
        threads.into_iter().map(|t| map(t, &f)).collect()
    }

    /// Bring the snapshot up to date and tell the client (RFC 9051 §7: untagged updates).
    fn refresh(&mut self, allow_expunge: bool) {
        self.refresh_view(allow_expunge);
        self.update_contexts();
    }

    fn refresh_view(&mut self, allow_expunge: bool) {
        let Some(sel) = &self.selected else { return };
        let (id, since) = (sel.id, sel.highest_modseq);
        let ch = match self.prefetched_changes.take() {
            Some(ch) => ch,
            None => match self.backend.changes(id, since) {
                Ok(ch) => ch,
                Err(BackendError::NotFound(_)) if matches!(self.mode, Mode::Idle(_)) => {
                    self.selected_deleted();
                    return;
                }
                Err(_) => return,
            },
        };
        self.announce_keywords(ch.changed.iter().map(|m| &m.flags));
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        sel.pending_expunge.extend(ch.expunged.iter().copied());
        let mut expunged = Vec::new();
        if allow_expunge {
            expunged = std::mem::take(&mut sel.pending_expunge);
            expunged.sort_unstable();
            expunged.dedup();
        }
        let mut flag_updates = Vec::new();
        let mut fresh = Vec::new();
        for m in ch.changed {
            // Gone again already: never shown, never announced.
            if ch.expunged.binary_search(&m.uid).is_ok() {
                continue;
            }
            match sel.msgs.binary_search_by_key(&m.uid, |x| x.uid) {
                Ok(i) => {
                    if sel.msgs[i].flags != m.flags {
                        flag_updates.push(m.uid);
                    }
                    Arc::make_mut(&mut sel.msgs)[i] = m;
                }
                Err(_) if m.uid >= sel.uid_next => fresh.push(m),
                Err(_) => {}
            }
        }
        let new = fresh.len();
        let first_new = sel.uid_next;
        sel.uid_next = sel.uid_next.max(ch.uid_next);
        sel.highest_modseq = ch.highest_modseq;
        // EXPUNGE numbers are those of the view the client has: before new messages join.
        self.remove_from_view(&expunged);
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        // Only when there is something to add: `make_mut` copies a shared list, and every
        // session on the mailbox shares it (10,000 IDLE sessions on 100,000 messages
        // went out of memory when IDLE's first refresh copied it each time).
        if !fresh.is_empty() {
            Arc::make_mut(&mut sel.msgs).extend(fresh);
        }
        let (id, uid_next, read_only) = (sel.id, sel.uid_next, sel.read_only);
        if new > 0 && !self.rev2 {
            // RFC 3501 §2.3.2: new mail is recent in the first session to see it.
            let first = self
                .backend
                .recent(id, uid_next, !read_only)
                .unwrap_or(uid_next)
                .max(first_new);
            if let Some(sel) = self.selected.as_mut() {
                let at = sel.msgs.partition_point(|m| m.uid < first);
                let fresh: Vec<u32> = sel
                    .msgs
                    .get(at..)
                    .unwrap_or(&[])
                    .iter()
                    .map(|m| m.uid)
                    .collect();
                sel.recent.extend(fresh);
            }
        }
        let Some(sel) = &self.selected else { return };
        let mut fetches = Vec::new();
        for u in flag_updates {
            if let Ok(i) = sel.msgs.binary_search_by_key(&u, |x| x.uid) {
                fetches.push((i, self.flags_items(&sel.msgs[i])));
            }
        }
        let exists = sel.msgs.len() as u32;
        for (i, items) in fetches {
            self.fetch_data(i, items);
        }
        if new > 0 {
            self.data(Data::Exists(exists));
            if !self.rev2 {
                let recent = self.selected.as_ref().map_or(0, |s| s.recent.len() as u32);
                self.data(Data::Recent(recent));
            }
        }
    }
}

/// A response code yubin_imap has no type for (RFC 5530 and others).
fn code(name: &'static str) -> Code<'static> {
    Code::Other(imap_codec::imap_types::response::CodeOther::unvalidated(
        name.as_bytes(),
    ))
}

#[cfg(test)]
mod fast_fetch_tests {
    use super::*;

    #[test]
    fn select_numbers_match_the_codec() {
        let big = NonZeroU64::new(u64::MAX).unwrap();
        for (exists, recent, unseen, v, next, highest) in [
            (0, Some(0), None, 1, 1, NonZeroU64::MIN),
            (
                100_000,
                None,
                Some(nz(5)),
                17,
                100_001,
                NonZeroU64::new(99).unwrap(),
            ),
            (
                u32::MAX,
                Some(7),
                Some(nz(u32::MAX)),
                u32::MAX,
                u32::MAX,
                big,
            ),
        ] {
            let mut fast = Vec::new();
            write_select_numbers(
                &mut fast,
                SelectNumbers {
                    exists,
                    recent,
                    unseen,
                    uidvalidity: nz(v),
                    uid_next: nz(next),
                    highest,
                    mailbox_id: 42,
                },
            );
            let mut codec = Vec::new();
            let ok = |code, t| Response::Status(Status::ok(None, Some(code), t).unwrap());
            let mut rs = vec![Response::Data(Data::Exists(exists))];
            if let Some(r) = recent {
                rs.push(Response::Data(Data::Recent(r)));
            }
            if let Some(u) = unseen {
                rs.push(ok(Code::Unseen(u), "First unseen"));
            }
            rs.push(ok(Code::UidValidity(nz(v)), "UIDs valid"));
            rs.push(ok(Code::UidNext(nz(next)), "Predicted next UID"));
            rs.push(ok(Code::HighestModSeq(highest), "Highest"));
            rs.push(ok(
                Code::Other(imap_codec::imap_types::response::CodeOther::unvalidated(
                    b"MAILBOXID (F42)".as_slice(),
                )),
                "Ok",
            ));
            for r in rs {
                codec.extend(ResponseCodec::default().encode(&r).dump());
            }
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&codec)
            );
        }
    }

    #[test]
    fn fast_fetch_matches_the_codec() {
        for system in 0..32u32 {
            for keywords in [
                vec![],
                vec!["$Junk".to_owned()],
                vec!["a".into(), "b_c".into()],
            ] {
                let f = Flags { system, keywords };
                let flags: Vec<FlagFetch<'static>> =
                    flag_list(&f).into_iter().map(FlagFetch::Flag).collect();
                let lists: [Vec<MessageDataItem<'static>>; 3] = [
                    vec![
                        MessageDataItem::Uid(nz(7)),
                        MessageDataItem::Flags(flags.clone()),
                        MessageDataItem::Rfc822Size(4096),
                    ],
                    vec![
                        MessageDataItem::Flags(flags.clone()),
                        MessageDataItem::ModSeq(NonZeroU64::new(99).unwrap()),
                        MessageDataItem::Uid(nz(u32::MAX)),
                    ],
                    vec![MessageDataItem::Flags(
                        flags.into_iter().chain([FlagFetch::Recent]).collect(),
                    )],
                ];
                for items in lists {
                    let mut fast = Vec::new();
                    assert!(write_simple_fetch(&mut fast, 12, &items));
                    let codec = ResponseCodec::default()
                        .encode(&Response::Data(Data::Fetch {
                            seq: nz(12),
                            items: Vec1::try_from(items).unwrap(),
                        }))
                        .dump();
                    assert_eq!(
                        String::from_utf8_lossy(&fast),
                        String::from_utf8_lossy(&codec)
                    );
                }
            }
        }
        let mut out = Vec::new();
        assert!(!write_simple_fetch(&mut out, 1, &[]));
        assert!(!write_simple_fetch(
            &mut out,
            1,
            &[
                MessageDataItem::Rfc822Size(1),
                MessageDataItem::Rfc822(imap_codec::imap_types::core::NString(None)),
            ]
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn list_patterns() {
        let m = super::matches_pattern;
        assert!(m(b"*", b"a/b"));
        assert!(m(b"%", b"ab"));
        assert!(!m(b"%", b"a/b"));
        assert!(m(b"a/%", b"a/b"));
        assert!(!m(b"a/%", b"a/b/c"));
        assert!(m(b"a*c", b"abbbc"));
        assert!(!m(b"a*c", b"abbbd"));
        assert!(m(b"%/*", b"a/b/c"));
        assert!(m(b"*%", b"a/b"));
        assert!(m(b"%*", b"a/b"));
        assert!(m(b"", b""));
        assert!(!m(b"", b"a"));
        assert!(m(b"INBOX", b"INBOX"));
        // Hostile patterns answer at once (they took minutes, or overflowed the stack).
        let stars = vec![b'*'; 100_000];
        assert!(m(&stars, b"x"));
        let mut name = vec![b'a'; 900];
        name.push(b'c');
        assert!(!m(b"*a*a*a*a*a*b", &name));
        let mut p = b"*a".repeat(50_000);
        p.push(b'b');
        assert!(!m(&p, &name));
        assert!(m(&b"*a".repeat(400), &name[..900]));
    }
}
