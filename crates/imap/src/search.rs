//! SEARCH criteria (RFC 9051 §6.4.4) evaluated on one message. Metadata keys need no I/O;
//! header and text keys load and parse the message once, on first need.
//!
//! Strings match as case-insensitive substrings of the decoded text (RFC 9051 §6.4.4).
//! Dates compare calendar days in UTC, ignoring the time (RFC 9051 §6.4.4 "disregarding
//! time and timezone").

use imap_codec::imap_types::core::AString;
use imap_codec::imap_types::datetime::NaiveDate;
use imap_codec::imap_types::search::SearchKey;
use std::collections::HashMap;

use yubin_model::{MessageMeta, TextField, flags};

use crate::message::Parsed;
use crate::seqset::Intervals;

pub struct Context<'a> {
    pub msgs: &'a [MessageMeta],
    /// UIDs (ascending) matching each text key, answered by the backend's index beforehand.
    pub text_hits: &'a [(TextField, String, Vec<u32>)],
    /// Date header of each UID (from the store's sort keys), when a SENT* key needs it.
    /// The day each message's Date header names (days since 1970-01-01), by UID.
    pub sent: &'a HashMap<u32, i64>,
    /// UIDs (ascending) that are `\Recent` in this session.
    pub recent: &'a [u32],
    /// The time now (Unix seconds), for YOUNGER/OLDER (RFC 5032).
    pub now: i64,
    /// RFC 8474 EMAILID and THREADID by UID, when a key needs them.
    pub object_ids: &'a HashMap<u32, (String, Option<String>)>,
}

/// Whether any key needs the Date header (SENTBEFORE/SENTON/SENTSINCE).
pub fn uses_sent(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::SentBefore(_) | SearchKey::SentOn(_) | SearchKey::SentSince(_) => true,
        SearchKey::And(keys) => keys.as_ref().iter().any(uses_sent),
        SearchKey::Or(a, b) => uses_sent(a) || uses_sent(b),
        SearchKey::Not(k) => uses_sent(k),
        _ => false,
    }
}

fn is_subject(name: &AString<'_>) -> bool {
    name.as_ref().eq_ignore_ascii_case(b"subject")
}

/// RFC 8474 §5.3 SEARCH EMAILID / THREADID reach here as HEADER keys with these names
/// (imap-codec has no such keys; `ext::object_id_keys` rewrites them).
pub const EMAILID_KEY: &str = "X-Yubin-Emailid";
pub const THREADID_KEY: &str = "X-Yubin-Threadid";
/// RFC 8514 §4.2 SAVEDBEFORE / SAVEDON / SAVEDSINCE, the same way.
pub const SAVEDBEFORE_KEY: &str = "X-Yubin-Savedbefore";
pub const SAVEDON_KEY: &str = "X-Yubin-Savedon";
pub const SAVEDSINCE_KEY: &str = "X-Yubin-Savedsince";

/// A date as SEARCH writes it (`d-Mon-yyyy`, RFC 3501 §9 date), as days since 1970.
fn parse_day(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.trim_matches('"');
    let mut it = s.split('-');
    let (d, m, y) = (it.next()?, it.next()?, it.next()?);
    let month = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    .iter()
    .position(|x| x.eq_ignore_ascii_case(m))? as u32
        + 1;
    let (d, y): (u32, i64) = (d.trim().parse().ok()?, y.parse().ok()?);
    (1..=31)
        .contains(&d)
        .then(|| yubin_model::days_from_civil(y, month, d))
}

/// The saved-date comparison a HEADER key stands for, if it is one.
fn saved_key(name: &AString<'_>) -> Option<std::cmp::Ordering> {
    let n = name.as_ref();
    [
        (SAVEDBEFORE_KEY, std::cmp::Ordering::Less),
        (SAVEDON_KEY, std::cmp::Ordering::Equal),
        (SAVEDSINCE_KEY, std::cmp::Ordering::Greater),
    ]
    .into_iter()
    .find(|(k, _)| n.eq_ignore_ascii_case(k.as_bytes()))
    .map(|(_, o)| o)
}

fn object_key(name: &AString<'_>) -> Option<bool> {
    let n = name.as_ref();
    if n.eq_ignore_ascii_case(EMAILID_KEY.as_bytes()) {
        Some(true)
    } else if n.eq_ignore_ascii_case(THREADID_KEY.as_bytes()) {
        Some(false)
    } else {
        None
    }
}

/// Whether any key is EMAILID or THREADID (the search then needs the object ids).
pub fn uses_object_ids(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::Header(n, _) => object_key(n).is_some(),
        SearchKey::And(keys) => keys.as_ref().iter().any(uses_object_ids),
        SearchKey::Or(a, b) => uses_object_ids(a) || uses_object_ids(b),
        SearchKey::Not(k) => uses_object_ids(k),
        _ => false,
    }
}

/// A key whose matches are exactly what the index returns for it (no check per message).
pub fn answered_by_index(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::From(_)
        | SearchKey::To(_)
        | SearchKey::Cc(_)
        | SearchKey::Bcc(_)
        | SearchKey::Subject(_)
        | SearchKey::Body(_)
        | SearchKey::Text(_) => true,
        SearchKey::Header(n, v) => is_subject(n) && !v.as_ref().is_empty(),
        _ => false,
    }
}

/// The index lookups a search needs: every FROM/TO/CC/BCC/SUBJECT/BODY/TEXT key.
pub fn text_keys(key: &SearchKey<'_>, out: &mut Vec<(TextField, String)>) {
    let mut push =
        |f, s: &AString<'_>| out.push((f, String::from_utf8_lossy(s.as_ref()).into_owned()));
    match key {
        SearchKey::From(s) => push(TextField::From, s),
        SearchKey::To(s) => push(TextField::To, s),
        SearchKey::Cc(s) => push(TextField::Cc, s),
        SearchKey::Bcc(s) => push(TextField::Bcc, s),
        SearchKey::Subject(s) => push(TextField::Subject, s),
        SearchKey::Body(s) => push(TextField::Body, s),
        SearchKey::Text(s) => push(TextField::Text, s),
        // HEADER SUBJECT is SUBJECT (both match the decoded field, RFC 9051 §6.4.4).
        SearchKey::Header(n, v) if is_subject(n) && !v.as_ref().is_empty() => {
            push(TextField::Subject, v)
        }
        SearchKey::Header(n, _) if object_key(n).is_some() || saved_key(n).is_some() => {}
        // Other HEADER keys are narrowed down by the index, then checked exactly.
        SearchKey::Header(_, v) if !v.as_ref().is_empty() => push(TextField::Text, v),
        SearchKey::And(keys) => keys.as_ref().iter().for_each(|k| text_keys(k, out)),
        SearchKey::Or(a, b) => {
            text_keys(a, out);
            text_keys(b, out);
        }
        SearchKey::Not(k) => text_keys(k, out),
        _ => {}
    }
}

fn hit(ctx: &Context<'_>, f: TextField, s: &AString<'_>, uid: u32) -> bool {
    // Runs once per message and key: no allocation, no hashing (a profile showed both).
    let needle = String::from_utf8_lossy(s.as_ref());
    ctx.text_hits
        .iter()
        .find(|(field, n, _)| *field == f && *n == needle)
        .is_some_and(|(_, _, uids)| uids.binary_search(&uid).is_ok())
}

/// Lazily loaded message for header/body keys.
struct Lazy<'f> {
    load: &'f mut dyn FnMut() -> Option<Vec<u8>>,
    raw: Option<Option<Vec<u8>>>,
}

impl Lazy<'_> {
    fn raw(&mut self) -> Option<&[u8]> {
        if self.raw.is_none() {
            self.raw = Some((self.load)());
        }
        self.raw.as_ref().and_then(|r| r.as_deref())
    }
}

pub fn matches_all(
    keys: &[SearchKey<'_>],
    ctx: &Context<'_>,
    idx: usize,
    load: &mut dyn FnMut() -> Option<Vec<u8>>,
) -> bool {
    let mut lazy = Lazy { load, raw: None };
    keys.iter().all(|k| eval(k, ctx, idx, &mut lazy))
}

fn lower(s: &AString<'_>) -> String {
    String::from_utf8_lossy(s.as_ref()).to_lowercase()
}

fn contains(hay: &str, needle: &str) -> bool {
    hay.to_lowercase().contains(needle)
}

fn day(unix: i64) -> i64 {
    unix.div_euclid(86_400)
}

fn date_day(d: &NaiveDate) -> i64 {
    use chrono::Datelike;
    let nd: &chrono::NaiveDate = d.as_ref();
    i64::from(nd.num_days_from_ce()) - 719_163
}

fn eval(key: &SearchKey<'_>, ctx: &Context<'_>, idx: usize, lazy: &mut Lazy<'_>) -> bool {
    let m = &ctx.msgs[idx];
    let sys = |bit: u32| m.flags.system & bit != 0;
    let with_parsed = |lazy: &mut Lazy<'_>, f: &dyn Fn(&Parsed<'_>) -> bool| -> bool {
        match lazy.raw() {
            Some(raw) => f(&Parsed::new(raw)),
            None => false,
        }
    };
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().all(|k| eval(k, ctx, idx, lazy)),
        SearchKey::Or(a, b) => eval(a, ctx, idx, lazy) || eval(b, ctx, idx, lazy),
        SearchKey::Not(k) => !eval(k, ctx, idx, lazy),
        SearchKey::All => true,
        SearchKey::SequenceSet(set) => {
            Intervals::new(set, ctx.msgs.len() as u32).contains(idx as u32 + 1)
        }
        SearchKey::Uid(set) => {
            let star = ctx.msgs.last().map_or(0, |x| x.uid);
            Intervals::new(set, star).contains(m.uid)
        }
        SearchKey::Answered => sys(flags::ANSWERED),
        SearchKey::Unanswered => !sys(flags::ANSWERED),
        SearchKey::Deleted => sys(flags::DELETED),
        SearchKey::Undeleted => !sys(flags::DELETED),
        SearchKey::Draft => sys(flags::DRAFT),
        SearchKey::Undraft => !sys(flags::DRAFT),
        SearchKey::Flagged => sys(flags::FLAGGED),
        SearchKey::Unflagged => !sys(flags::FLAGGED),
        SearchKey::Seen => sys(flags::SEEN),
        SearchKey::Unseen => !sys(flags::SEEN),
        // RFC 3501 §6.4.4: NEW is RECENT UNSEEN, OLD is NOT RECENT.
        SearchKey::Recent => ctx.recent.binary_search(&m.uid).is_ok(),
        SearchKey::New => ctx.recent.binary_search(&m.uid).is_ok() && !sys(flags::SEEN),
        SearchKey::Old => ctx.recent.binary_search(&m.uid).is_err(),
        SearchKey::Keyword(k) => m.flags.has_keyword(k.as_ref()),
        SearchKey::Unkeyword(k) => !m.flags.has_keyword(k.as_ref()),
        SearchKey::Larger(n) => m.size > u64::from(*n),
        SearchKey::Smaller(n) => m.size < u64::from(*n),
        SearchKey::Before(d) => day(m.internal_date) < date_day(d),
        SearchKey::On(d) => day(m.internal_date) == date_day(d),
        SearchKey::Since(d) => day(m.internal_date) >= date_day(d),
        SearchKey::SentBefore(d) => ctx.sent.get(&m.uid).is_some_and(|&s| s < date_day(d)),
        SearchKey::SentOn(d) => ctx.sent.get(&m.uid).is_some_and(|&s| s == date_day(d)),
        SearchKey::SentSince(d) => ctx.sent.get(&m.uid).is_some_and(|&s| s >= date_day(d)),
        SearchKey::From(s) => hit(ctx, TextField::From, s, m.uid),
        SearchKey::To(s) => hit(ctx, TextField::To, s, m.uid),
        SearchKey::Cc(s) => hit(ctx, TextField::Cc, s, m.uid),
        SearchKey::Bcc(s) => hit(ctx, TextField::Bcc, s, m.uid),
        SearchKey::Subject(s) => hit(ctx, TextField::Subject, s, m.uid),
        SearchKey::Body(s) => hit(ctx, TextField::Body, s, m.uid),
        SearchKey::Text(s) => hit(ctx, TextField::Text, s, m.uid),
        SearchKey::Header(name, value) if saved_key(name).is_some() => {
            let Some(want) = parse_day(value.as_ref()) else {
                return false;
            };
            let got = day(m.saved);
            match saved_key(name) {
                Some(std::cmp::Ordering::Less) => got < want,
                Some(std::cmp::Ordering::Equal) => got == want,
                _ => got >= want,
            }
        }
        SearchKey::Header(name, value) if object_key(name).is_some() => {
            let want = String::from_utf8_lossy(value.as_ref());
            ctx.object_ids.get(&m.uid).is_some_and(|(email, thread)| {
                if object_key(name) == Some(true) {
                    *email == want
                } else {
                    thread.as_deref() == Some(&*want)
                }
            })
        }
        SearchKey::Header(name, value) if is_subject(name) && !value.as_ref().is_empty() => {
            hit(ctx, TextField::Subject, value, m.uid)
        }
        SearchKey::Header(name, value) => {
            let (name, n) = (
                String::from_utf8_lossy(name.as_ref()).into_owned(),
                lower(value),
            );
            // Only messages the index says contain the value are read.
            if !n.is_empty() && !hit(ctx, TextField::Text, value, m.uid) {
                return false;
            }
            // RFC 9051 §6.4.4: an empty value matches every message that has the field.
            with_parsed(lazy, &|p| {
                let vals = p.header_text(&name);
                if n.is_empty() {
                    !vals.is_empty()
                } else {
                    vals.iter().any(|v| contains(v, &n))
                }
            })
        }
        SearchKey::ModSequence { modseq, .. } => m.modseq >= *modseq,
        // RFC 5032 §3: the internal date within (YOUNGER) or before (OLDER) the last n s.
        SearchKey::Younger(n) => m.internal_date >= ctx.now - i64::from(n.get()),
        SearchKey::Older(n) => m.internal_date < ctx.now - i64::from(n.get()),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Whether a criterion mentions MODSEQ (RFC 7162 §3.1.5).
pub fn uses_modseq(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::ModSequence { .. } => true,
        SearchKey::And(keys) => keys.as_ref().iter().any(uses_modseq),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        SearchKey::Not(k) => uses_modseq(k),
        _ => false,
    }
}

#[cfg(test)]
mod saved_tests {
    #[test]
    fn search_dates_parse() {
        assert_eq!(super::parse_day(b"1-Jan-1970"), Some(0));
        assert_eq!(super::parse_day(b"\"02-Dec-2026\""), Some(20_789));
        assert_eq!(super::parse_day(b"2-Foo-2026"), None);
        assert_eq!(super::parse_day(b"32-Jan-2026"), None);
        assert_eq!(super::parse_day(b"x"), None);
    }
}
