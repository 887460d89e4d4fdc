//! Command options imap-codec 2.0-alpha does not parse yet: ESEARCH's `RETURN (...)`
//! (RFC 4731 §3.1) and LIST-EXTENDED's selection and return options (RFC 5258 §3,
//! RFC 5819). They sit at fixed places in the command, so they are cut out here and the
//! rest is decoded by imap-codec as usual. When imap-codec gains them, this module goes.

use std::borrow::Cow;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchReturn {
    pub min: bool,
    pub max: bool,
    pub count: bool,
    pub all: bool,
    /// RFC 9394 PARTIAL first:last (1-based; negative counts from the end), as sent.
    pub partial: Option<(i32, i32)>,
    /// RFC 5182 SAVE: keep the result for `$`.
    pub save: bool,
    /// RFC 5267 §4.2 UPDATE: keep the result up to date with ADDTO/REMOVEFROM.
    pub update: bool,
}

/// RFC 9394 §3 partial-range: `m:n` with both ends positive or both negative, not 0.
fn partial_range(s: &str) -> Option<(i32, i32)> {
    let (a, b) = s.split_once(':')?;
    let (a, b): (i32, i32) = (a.parse().ok()?, b.parse().ok()?);
    (a != 0 && b != 0 && (a > 0) == (b > 0)).then_some((a, b))
}

/// The part of `values` (in their order) a PARTIAL range names.
pub fn partial_of<T>(values: &[T], (a, b): (i32, i32)) -> &[T] {
    let (lo, hi) = (a.min(b), a.max(b));
    let n = values.len() as i64;
    // To 0-based [from, to), counting from the end for negative ends.
    let (from, to) = if lo > 0 {
        (i64::from(lo) - 1, i64::from(hi))
    } else {
        (n + i64::from(lo), n + i64::from(hi) + 1)
    };
    let clamp = |x: i64| x.clamp(0, n) as usize;
    values.get(clamp(from)..clamp(to)).unwrap_or(&[])
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    pub select_subscribed: bool,
    pub select_special_use: bool,
    pub return_subscribed: bool,
    pub return_special_use: bool,
    pub return_children: bool,
    /// RFC 5819 LIST-STATUS items, upper-cased.
    pub return_status: Option<Vec<String>>,
    /// RFC 8440 LIST-MYRIGHTS: `RETURN (MYRIGHTS)`.
    pub return_myrights: bool,
    /// RFC 5258 §3: RECURSIVEMATCH (with SUBSCRIBED: CHILDINFO for hidden subscriptions).
    pub recursive: bool,
    /// RFC 5258 §3: `LIST "" (p1 p2 ...)`; empty for one pattern.
    pub patterns: Vec<String>,
}

/// FETCH items cut out by [`extract`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchExtras {
    /// RFC 8970 PREVIEW.
    pub preview: bool,
    /// RFC 8474 EMAILID, THREADID.
    pub emailid: bool,
    pub threadid: bool,
    /// RFC 8514 SAVEDATE.
    pub savedate: bool,
    /// RFC 9394 §3.3 the PARTIAL fetch modifier: which of the messages the set names.
    pub partial: Option<(i32, i32)>,
    /// They were all that was asked (the decoder was given `UID` in their place).
    pub only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Ext {
    #[default]
    None,
    Search(SearchReturn),
    List(ListOptions),
    /// RFC 6154 §3 `CREATE name (USE (\Sent ...))`: the attributes, as sent.
    Create(Vec<String>),
    /// FETCH items cut out for the decoder (PREVIEW, EMAILID, THREADID).
    Fetch(FetchExtras),
    /// Only the command's form changed (RFC 6855 APPEND UTF8 (...)): decode the new one.
    Rewritten,
    /// RFC 8474 §4 STATUS ... MAILBOXID; `only`: it was the one item (the decoder was
    /// given MESSAGES in its place).
    Status {
        only: bool,
    },
    /// RFC 8508 `[UID] REPLACE n mailbox ...`, given to the decoder as APPEND: the message
    /// number (or UID) it replaces.
    Replace {
        uid: bool,
        number: u32,
    },
    /// RFC 3502 MULTIAPPEND: the decoder gets the first message as an APPEND; each
    /// further one is here as an APPEND command of its own, to be decoded the same way.
    MultiAppend(Vec<Vec<u8>>),
    /// A command imap-codec has no type for, parsed by `extcmd` (it travels with a NOOP
    /// standing in for the decoded command).
    Custom(crate::extcmd::ExtCommand),
    /// RFC 4469 `APPEND mailbox [flags] [date] CATENATE (parts)`, for the session to
    /// assemble (its URLs need the mailboxes).
    Catenate(Catenate),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatPart {
    Text(Vec<u8>),
    Url(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catenate {
    pub mailbox: crate::extcmd::Arg,
    pub flags: Option<Vec<String>>,
    pub date: Option<Vec<u8>>,
    pub parts: Vec<CatPart>,
}

/// Most parts one CATENATE may join.
pub const CATENATE_MAX_PARTS: usize = 256;

/// RFC 4469 §5 `append-data = "CATENATE" SP "(" cat-part *(SP cat-part) ")"`, with
/// `cat-part = "TEXT" SP literal / "URL" SP astring`. Only one message per command here
/// (MULTIAPPEND with CATENATE is BAD).
fn catenate(msg: &[u8]) -> Option<(Cow<'_, [u8]>, Ext)> {
    use crate::extcmd::Arg;
    let first_line = msg.split(|&b| b == b'\n').next().unwrap_or_default();
    find(&first_line.to_ascii_uppercase(), b" CATENATE (")?;
    let bad = Some((Cow::Borrowed(msg), Ext::Rewritten));
    let Some(c) = crate::extcmd::parse(msg) else {
        return bad;
    };
    let mut args = c.args.into_iter();
    let Some(mailbox) = args.next().filter(|a| a.bytes().is_some()) else {
        return bad;
    };
    let mut flags = None;
    let mut date = None;
    let mut next = args.next();
    if let Some(Arg::List(l)) = &next {
        let Some(f) = l.iter().map(Arg::text).collect::<Option<Vec<_>>>() else {
            return bad;
        };
        flags = Some(f);
        next = args.next();
    }
    if let Some(Arg::Str(d)) = &next {
        date = Some(d.clone());
        next = args.next();
    }
    let (Some(Arg::Atom(kw)), Some(Arg::List(list)), None) = (next, args.next(), args.next())
    else {
        return bad;
    };
    if !kw.eq_ignore_ascii_case("CATENATE")
        || list.is_empty()
        || list.len() > 2 * CATENATE_MAX_PARTS
    {
        return bad;
    }
    let mut parts = Vec::new();
    let mut it = list.into_iter();
    while let Some(kind) = it.next() {
        let part = match (kind, it.next()) {
            (Arg::Atom(k), Some(Arg::Str(t))) if k.eq_ignore_ascii_case("TEXT") => CatPart::Text(t),
            (Arg::Atom(k), Some(a)) if k.eq_ignore_ascii_case("URL") => match a.text() {
                Some(u) => CatPart::Url(u),
                None => return bad,
            },
            _ => return bad,
        };
        parts.push(part);
    }
    Some((
        Cow::Borrowed(msg),
        Ext::Catenate(Catenate {
            mailbox,
            flags,
            date,
            parts,
        }),
    ))
}

/// `(A B (C D))` at the start of `s`: the words inside (nested lists flattened into one
/// string each) and the rest after the closing parenthesis.
fn paren_words(s: &[u8]) -> Option<(Vec<String>, &[u8])> {
    if s.first() != Some(&b'(') {
        return None;
    }
    let mut depth = 0usize;
    let mut end = None;
    for (i, &b) in s.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    end = Some(i);
                    break;
                }
            }
            b'"' | b'{' | b'\r' | b'\n' => return None,
            _ => {}
        }
    }
    let end = end?;
    let inner = std::str::from_utf8(&s[1..end]).ok()?;
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    for c in inner.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth -= 1;
                cur.push(c);
            }
            ' ' if depth == 0 => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    Some((words, &s[end + 1..]))
}

fn starts_with_ci(s: &[u8], p: &[u8]) -> bool {
    s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p)
}

/// Cut the extension options out of one complete command.
pub fn extract(msg: &[u8]) -> (Cow<'_, [u8]>, Ext) {
    let none = (Cow::Borrowed(msg), Ext::None);
    let Some(sp) = msg.iter().position(|&b| b == b' ') else {
        return none;
    };
    let (tag, rest) = (&msg[..sp + 1], &msg[sp + 1..]);
    let (uid, rest) = if starts_with_ci(rest, b"UID ") {
        (&rest[..4], &rest[4..])
    } else {
        (&rest[..0], rest)
    };
    // RFC 5267 §3 ESORT: SORT RETURN (...) takes the same options, answered in sort order.
    let (verb, options_at): (&[u8], usize) = if starts_with_ci(rest, b"SEARCH RETURN ") {
        (b"SEARCH", 14)
    } else if starts_with_ci(rest, b"SORT RETURN ") {
        (b"SORT", 12)
    } else {
        (b"", 0)
    };
    if !verb.is_empty() {
        let Some((words, after)) = paren_words(&rest[options_at..]) else {
            return none;
        };
        let mut r = SearchReturn::default();
        let mut words_iter = words.iter();
        while let Some(w) = words_iter.next() {
            match w.to_ascii_uppercase().as_str() {
                "MIN" => r.min = true,
                "MAX" => r.max = true,
                "COUNT" => r.count = true,
                "ALL" => r.all = true,
                "SAVE" if verb == b"SEARCH" => r.save = true,
                // RFC 5267 §4.1: CONTEXT is a hint that more will be asked; UPDATE once.
                "CONTEXT" => {}
                "UPDATE" if !r.update => r.update = true,
                "PARTIAL" => match words_iter.next().and_then(|x| partial_range(x)) {
                    Some(p) => r.partial = Some(p),
                    None => return none,
                },
                _ => return none,
            }
        }
        // RFC 9394 §3: ALL and PARTIAL exclude each other.
        if r.all && r.partial.is_some() {
            return none;
        }
        // RFC 4731 §3.1: RETURN () means RETURN (ALL); RFC 5182 §2.4: so does (SAVE)
        // for what is saved, but nothing is sent then.
        if words.is_empty() {
            r.all = true;
        }
        let mut out = Vec::with_capacity(msg.len());
        out.extend_from_slice(tag);
        out.extend_from_slice(uid);
        out.extend_from_slice(verb);
        out.extend_from_slice(after);
        return (Cow::Owned(out), Ext::Search(r));
    }
    if starts_with_ci(rest, b"REPLACE ") {
        // RFC 8508 §3: REPLACE n mailbox [flags] [date] literal: the same as APPEND
        // mailbox [flags] [date] literal, plus the number.
        let args = rest.get(8..).unwrap_or_default();
        let sp = args.iter().position(|&b| b == b' ');
        let number = sp
            .and_then(|sp| {
                std::str::from_utf8(args.get(..sp)?)
                    .ok()?
                    .parse::<u32>()
                    .ok()
            })
            .filter(|n| *n > 0);
        let (Some(sp), Some(number)) = (sp, number) else {
            return none;
        };
        let mut out = tag.to_vec();
        out.extend_from_slice(b"APPEND ");
        out.extend_from_slice(args.get(sp + 1..).unwrap_or_default());
        let uid = !uid.is_empty();
        return (Cow::Owned(out), Ext::Replace { uid, number });
    }
    if uid.is_empty() && starts_with_ci(rest, b"STATUS ") {
        return status_mailboxid(msg).unwrap_or(none);
    }
    if uid.is_empty() && starts_with_ci(rest, b"APPEND ") {
        if let Some(cat) = catenate(msg) {
            return cat;
        }
        if let Some(multi) = multi_append(msg, tag) {
            return multi;
        }
        return append_utf8(msg).unwrap_or(none);
    }
    if starts_with_ci(rest, b"FETCH ") {
        return fetch_extras(msg, tag.len() + uid.len() + 6).unwrap_or(none);
    }
    if uid.is_empty() && starts_with_ci(rest, b"CREATE ") {
        // The options end the command's last line: `... (USE (\Drafts))`.
        let line_start = msg[..msg.len().saturating_sub(2)]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let upper = msg[line_start..].to_ascii_uppercase();
        let Some(at) = find(&upper, b" (USE (").map(|i| line_start + i) else {
            return none;
        };
        let Some((words, after)) = paren_words(&msg[at + 1..]) else {
            return none;
        };
        let uses = match words.as_slice() {
            [kw, list] if kw.eq_ignore_ascii_case("USE") => list
                .strip_prefix('(')
                .and_then(|l| l.strip_suffix(')'))
                .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>()),
            _ => None,
        };
        let Some(uses) = uses else { return none };
        if !after.iter().all(|b| b.is_ascii_whitespace()) {
            return none;
        }
        let mut out = msg[..at].to_vec();
        out.extend_from_slice(after);
        return (Cow::Owned(out), Ext::Create(uses));
    }
    if !uid.is_empty() || !starts_with_ci(rest, b"LIST ") {
        return none;
    }
    let mut body = &rest[5..];
    let mut opts = ListOptions::default();
    let mut extended = false;
    if body.first() == Some(&b'(') {
        let Some((words, after)) = paren_words(body) else {
            return none;
        };
        for w in words {
            match w.to_ascii_uppercase().as_str() {
                "SUBSCRIBED" => opts.select_subscribed = true,
                "SPECIAL-USE" => opts.select_special_use = true,
                "RECURSIVEMATCH" => opts.recursive = true,
                // No remote mailboxes here (RFC 2193).
                "REMOTE" => {}
                _ => return none,
            }
        }
        // RFC 5258 §3: RECURSIVEMATCH alone is a BAD command (the decoder says so).
        if opts.recursive && !opts.select_subscribed {
            return none;
        }
        body = after.strip_prefix(b" ").unwrap_or(after);
        extended = true;
    }
    // RETURN (...) ends the command: find it from the end of the last line.
    let line_start = body[..body.len().saturating_sub(2)]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let last = &body[line_start..];
    let upper = last.to_ascii_uppercase();
    let mut tail: &[u8] = &[];
    if let Some(i) = find(&upper, b" RETURN (") {
        let Some((words, after)) = paren_words(&last[i + 8..]) else {
            return none;
        };
        let mut k = 0;
        while k < words.len() {
            match words[k].to_ascii_uppercase().as_str() {
                "SUBSCRIBED" => opts.return_subscribed = true,
                "SPECIAL-USE" => opts.return_special_use = true,
                "CHILDREN" => opts.return_children = true,
                "MYRIGHTS" => opts.return_myrights = true,
                "STATUS" => {
                    let items = words.get(k + 1).map(|s| s.to_ascii_uppercase());
                    let items = items
                        .as_deref()
                        .and_then(|s| s.strip_prefix('('))
                        .and_then(|s| s.strip_suffix(')'))
                        .map(|s| s.split_whitespace().map(str::to_owned).collect());
                    match items {
                        Some(items) => opts.return_status = Some(items),
                        None => return none,
                    }
                    k += 1;
                }
                _ => return none,
            }
            k += 1;
        }
        tail = after;
        body = &body[..line_start + i];
        extended = true;
    }
    // A list of patterns after the reference: the first goes to the decoder, all here.
    let mut owned_body;
    if let Some((reference, after)) = token(body)
        && let Some(list) = after.strip_prefix(b" (")
    {
        let mut rest = list;
        let mut patterns = Vec::new();
        loop {
            rest = rest.strip_prefix(b" ").unwrap_or(rest);
            if let Some(r) = rest.strip_prefix(b")") {
                rest = r;
                break;
            }
            let Some((p, r)) = token(rest) else {
                return none;
            };
            patterns.push(p);
            rest = r;
        }
        if patterns.is_empty() || !rest.iter().all(|b| b.is_ascii_whitespace()) {
            return none;
        }
        let _ = reference;
        owned_body = body
            .get(..body.len() - after.len())
            .unwrap_or(body)
            .to_vec();
        owned_body.extend_from_slice(b" ");
        owned_body.extend_from_slice(&quote(&patterns[0]));
        owned_body.extend_from_slice(rest);
        opts.patterns = patterns;
        body = &owned_body;
        extended = true;
    }
    if !extended {
        return none;
    }
    let mut out = Vec::with_capacity(msg.len());
    out.extend_from_slice(tag);
    out.extend_from_slice(b"LIST ");
    out.extend_from_slice(body);
    out.extend_from_slice(tail);
    (Cow::Owned(out), Ext::List(opts))
}

/// Most messages one MULTIAPPEND may carry.
pub const MULTIAPPEND_MAX: usize = 1000;

/// RFC 3502 `APPEND mailbox ([flags] [date] literal)...` with more than one message: the
/// first goes to the decoder, the others come back as APPEND commands of their own.
/// Literal mailbox names and UTF8 (...) items are left to the decoder (one message).
fn multi_append<'a>(msg: &'a [u8], tag: &[u8]) -> Option<(Cow<'a, [u8]>, Ext)> {
    let args_at = tag.len() + b"APPEND ".len();
    let args = msg.get(args_at..)?;
    let (_, after_name) = token(args)?;
    let name = args.get(..args.len() - after_name.len())?;
    let mut rest = after_name;
    // (flags and date as sent, the literal's length, its bytes)
    let mut parts: Vec<(&[u8], bool, &[u8])> = Vec::new();
    loop {
        rest = rest.strip_prefix(b" ")?;
        let spec_start = rest;
        if rest.first() == Some(&b'(') {
            let close = rest.iter().position(|&b| b == b')')?;
            rest = rest.get(close + 1..)?.strip_prefix(b" ")?;
        }
        if rest.first() == Some(&b'"') {
            let close = rest.get(1..)?.iter().position(|&b| b == b'"')? + 1;
            rest = rest.get(close + 1..)?.strip_prefix(b" ")?;
        }
        let spec = spec_start.get(..spec_start.len() - rest.len())?;
        let binary = rest.starts_with(b"~{");
        let open = if binary { 2 } else { 1 };
        if !binary && !rest.starts_with(b"{") {
            return None;
        }
        let close = rest.iter().position(|&b| b == b'}')?;
        let size: usize = std::str::from_utf8(rest.get(open..close)?)
            .ok()?
            .trim_end_matches('+')
            .parse()
            .ok()?;
        if rest.get(close + 1..close + 3)? != b"\r\n" {
            return None;
        }
        let data = rest.get(close + 3..close + 3 + size)?;
        parts.push((spec, binary, data));
        // A command of a million one-byte messages would be a million rows in one
        // transaction and a million decodes: beyond this, the decoder answers BAD.
        if parts.len() > MULTIAPPEND_MAX {
            return None;
        }
        rest = rest.get(close + 3 + size..)?;
        if rest == b"\r\n" {
            break;
        }
    }
    if parts.len() < 2 {
        return None;
    }
    let command = |(spec, binary, data): (&[u8], bool, &[u8])| {
        let mut c = tag.to_vec();
        c.extend_from_slice(b"APPEND ");
        c.extend_from_slice(name);
        c.push(b' ');
        c.extend_from_slice(spec);
        // The synchronizing form: the data is here already.
        let lit = if binary { "~" } else { "" };
        c.extend_from_slice(format!("{lit}{{{}}}\r\n", data.len()).as_bytes());
        c.extend_from_slice(data);
        c.extend_from_slice(b"\r\n");
        c
    };
    let mut it = parts.into_iter();
    let first = command(it.next()?);
    let more = it.map(command).collect();
    Some((Cow::Owned(first), Ext::MultiAppend(more)))
}

/// RFC 6855 §4 `APPEND mailbox [flags] [date] UTF8 (~{n}CRLF data)`: the same as the
/// literal8 alone, which the decoder takes (RFC 3516).
fn append_utf8(msg: &[u8]) -> Option<(Cow<'_, [u8]>, Ext)> {
    let upper = msg.get(..msg.len().min(2048))?.to_ascii_uppercase();
    let at = find(&upper, b" UTF8 (~{")?;
    let open = at + b" UTF8 (".len();
    let size_at = open + 2;
    let close = size_at + msg.get(size_at..)?.iter().position(|&b| b == b'}')?;
    let size: usize = std::str::from_utf8(msg.get(size_at..close)?)
        .ok()?
        .trim_end_matches('+')
        .parse()
        .ok()?;
    // `}` CRLF, the data, then the `)` that closes UTF8 (.
    let data_end = close + 3 + size;
    if msg.get(close + 1..close + 3)? != b"\r\n" || msg.get(data_end)? != &b')' {
        return None;
    }
    let mut out = msg.get(..at + 1)?.to_vec();
    // `~{n}`: the decoder does not take the LITERAL+ form of a literal8, and the data is
    // here already.
    out.extend_from_slice(format!("~{{{size}}}").as_bytes());
    out.extend_from_slice(msg.get(close + 1..data_end)?);
    out.extend_from_slice(msg.get(data_end + 1..)?);
    Some((Cow::Owned(out), Ext::Rewritten))
}

/// `STATUS mailbox (... MAILBOXID ...)` (RFC 8474 §4), the item list being the last
/// parenthesized part of the last line.
fn status_mailboxid(msg: &[u8]) -> Option<(Cow<'_, [u8]>, Ext)> {
    let open = msg.iter().rposition(|&b| b == b'(')?;
    let list = msg.get(open..)?;
    let s = item_at(list, b"MAILBOXID")?;
    let mut list = cut(list, s, s + b"MAILBOXID".len())?;
    let only = list.starts_with(b"()");
    if only {
        list.splice(1..1, b"MESSAGES".iter().copied());
    }
    let mut out = msg.get(..open)?.to_vec();
    out.extend_from_slice(&list);
    Some((Cow::Owned(out), Ext::Status { only }))
}

/// RFC 5182 §2.1: where the `$` of a command's first line stands as a sequence set (not
/// in a quoted string), for commands that take one; the verb's index words decide how it
/// is read (`uid`), and whether it is a SEARCH key (`search`).
pub struct Dollar {
    pub at: usize,
    pub uid: bool,
    pub search: bool,
}

pub fn find_dollar(cmd: &[u8]) -> Option<Dollar> {
    let line_end = cmd.iter().position(|&b| b == b'\r').unwrap_or(cmd.len());
    let line = cmd.get(..line_end)?;
    if !line.contains(&b'$') {
        return None;
    }
    let upper = line.to_ascii_uppercase();
    let after_tag = upper.iter().position(|&b| b == b' ')? + 1;
    let rest = upper.get(after_tag..)?;
    let (uid, rest) = match rest.strip_prefix(b"UID ") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let search = [&b"SEARCH "[..], b"SORT ", b"THREAD "]
        .iter()
        .any(|v| rest.starts_with(v));
    let takes_set = [&b"FETCH "[..], b"STORE ", b"COPY ", b"MOVE ", b"EXPUNGE "]
        .iter()
        .any(|v| rest.starts_with(v));
    if !search && !takes_set {
        return None;
    }
    let mut quoted = false;
    for (i, &b) in line.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'$' if !quoted => {
                let before = i.checked_sub(1).and_then(|k| line.get(k)).copied();
                let after = line.get(i + 1).copied();
                if matches!(before, Some(b' ' | b'('))
                    && after.is_none_or(|c| matches!(c, b' ' | b')'))
                {
                    // In SEARCH `$` is a message-set key, `UID $` a UID one, whatever
                    // the command's own UID prefix (RFC 5182 §2.1).
                    let uid = if search {
                        let head = upper.get(..i).unwrap_or_default();
                        head.strip_suffix(b"UID ")
                            .is_some_and(|h| h.last().is_none_or(|c| matches!(c, b' ' | b'(')))
                    } else {
                        uid
                    };
                    return Some(Dollar { at: i, uid, search });
                }
            }
            _ => {}
        }
    }
    None
}

/// RFC 8474 §5.3 SEARCH/SORT keys `EMAILID id` and `THREADID id`, and RFC 8514 §4.2
/// `SAVEDBEFORE/SAVEDON/SAVEDSINCE date`, as HEADER keys the evaluator knows
/// (`search::EMAILID_KEY`...); SAVEDATESUPPORTED as ALL. `None` when there are none.
pub fn object_id_keys(cmd: &[u8]) -> Option<Vec<u8>> {
    // The verb first, from the start alone: an APPEND may be megabytes.
    let head = cmd.get(..cmd.len().min(64))?.to_ascii_uppercase();
    let after_tag = head.iter().position(|&b| b == b' ')? + 1;
    let rest = head.get(after_tag..)?;
    let rest = rest.strip_prefix(b"UID ").unwrap_or(rest);
    if !rest.starts_with(b"SEARCH ") && !rest.starts_with(b"SORT ") {
        return None;
    }
    let upper = cmd.to_ascii_uppercase();
    let mut out = Vec::with_capacity(cmd.len() + 32);
    let mut i = 0;
    let mut changed = false;
    while let Some(&b) = cmd.get(i) {
        let key = [
            (&b" EMAILID "[..], crate::search::EMAILID_KEY),
            (b" THREADID ", crate::search::THREADID_KEY),
            (b" SAVEDBEFORE ", crate::search::SAVEDBEFORE_KEY),
            (b" SAVEDON ", crate::search::SAVEDON_KEY),
            (b" SAVEDSINCE ", crate::search::SAVEDSINCE_KEY),
        ]
        .into_iter()
        .find(|(k, _)| upper.get(i..i + k.len()) == Some(*k));
        match key {
            Some((k, name)) => {
                out.extend_from_slice(format!(" HEADER {name} ").as_bytes());
                i += k.len();
                changed = true;
            }
            // RFC 8514 §4.2: every mailbox here keeps save dates.
            None if upper.get(i..).is_some_and(|r| {
                r.starts_with(b" SAVEDATESUPPORTED")
                    && r.get(18).is_none_or(|c| matches!(c, b' ' | b')' | b'\r'))
            }) =>
            {
                out.extend_from_slice(b" ALL");
                i += 18;
                changed = true;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

/// Where `word` stands in `items` as a FETCH item of its own (not inside `[...]`).
fn item_at(items: &[u8], word: &[u8]) -> Option<usize> {
    let upper = items.to_ascii_uppercase();
    let mut i = 0;
    while let Some(k) = find(upper.get(i..)?, word) {
        let s = i + k;
        let before = s.checked_sub(1).and_then(|b| upper.get(b)).copied();
        let after = upper.get(s + word.len()).copied();
        let edge = |c: Option<u8>| c.is_none_or(|c| matches!(c, b' ' | b'(' | b')' | b'\r'));
        // Not a header name inside BODY[HEADER.FIELDS (...)].
        let head = upper.get(..s)?;
        let in_section = head.iter().filter(|&&b| b == b'[').count()
            > head.iter().filter(|&&b| b == b']').count();
        if edge(before) && edge(after) && !in_section {
            return Some(s);
        }
        i = s + word.len();
    }
    None
}

/// `items` without the item at `s..end` and one space beside it.
fn cut(items: &[u8], s: usize, end: usize) -> Option<Vec<u8>> {
    let (mut s, mut end) = (s, end);
    if s > 0 && items.get(s - 1) == Some(&b' ') {
        s -= 1;
    } else if items.get(end) == Some(&b' ') {
        end += 1;
    }
    let mut out = items.get(..s)?.to_vec();
    out.extend_from_slice(items.get(end..)?);
    Some(out)
}

/// FETCH items imap-codec does not know, cut out of `FETCH set items` (`at`: where the
/// set starts): PREVIEW [(LAZY)] (RFC 8970 §3), EMAILID and THREADID (RFC 8474 §5). When
/// nothing else was asked, the decoder is given UID in their place.
fn fetch_extras(msg: &[u8], at: usize) -> Option<(Cow<'_, [u8]>, Ext)> {
    let rest = msg.get(at..)?;
    let sp = rest.iter().position(|&b| b == b' ')?;
    let items_at = at + sp + 1;
    // Most FETCH commands have none of these: say so without copying the items.
    let line = msg.get(items_at..)?;
    let line = line.get(..line.len().min(4096))?;
    let has = |w: &[u8]| line.windows(w.len()).any(|x| x.eq_ignore_ascii_case(w));
    if ![
        &b"PREVIEW"[..],
        b"EMAILID",
        b"THREADID",
        b"SAVEDATE",
        b"PARTIAL",
    ]
    .iter()
    .any(|w| has(w))
    {
        return None;
    }
    let mut items = msg.get(items_at..)?.to_vec();
    let mut x = FetchExtras::default();
    for (word, flag) in [
        (&b"PREVIEW"[..], &mut x.preview),
        (b"EMAILID", &mut x.emailid),
        (b"THREADID", &mut x.threadid),
        (b"SAVEDATE", &mut x.savedate),
    ] {
        while let Some(s) = item_at(&items, word) {
            let mut end = s + word.len();
            // RFC 8970 §3.1: PREVIEW (LAZY): this server always has the preview ready.
            if word == b"PREVIEW"
                && items
                    .get(end..)
                    .is_some_and(|r| r.to_ascii_uppercase().starts_with(b" (LAZY)"))
            {
                end += 7;
            }
            items = cut(&items, s, end)?;
            *flag = true;
        }
    }
    x.partial = cut_partial_modifier(&mut items)?;
    if !(x.preview || x.emailid || x.threadid || x.savedate || x.partial.is_some()) {
        return None;
    }
    // Nothing left: `FETCH 1 PREVIEW` or `FETCH 1 (PREVIEW)`.
    let body_end = items
        .iter()
        .position(|&b| b == b'\r')
        .unwrap_or(items.len());
    let (head, tail) = items.split_at(body_end);
    let head = match head {
        b"" => {
            x.only = true;
            b"UID".to_vec()
        }
        b"()" => {
            x.only = true;
            b"(UID)".to_vec()
        }
        h => h.to_vec(),
    };
    let mut out = msg.get(..items_at)?.to_vec();
    out.extend_from_slice(&head);
    out.extend_from_slice(tail);
    Some((Cow::Owned(out), Ext::Fetch(x)))
}

/// RFC 9394 §3.3 `PARTIAL range` in the modifier list that ends `FETCH set items (...)`
/// (`items`: from the items on), cut out; the list goes when nothing else is in it.
/// `Some(None)`: no PARTIAL there; `None`: one that is not a partial-range.
fn cut_partial_modifier(items: &mut Vec<u8>) -> Option<Option<(i32, i32)>> {
    let end = items
        .iter()
        .position(|&b| b == b'\r')
        .unwrap_or(items.len());
    let line = items.get(..end)?;
    if line.last() != Some(&b')') {
        return Some(None);
    }
    // The group that closes the line; at 0 it is the item list, not modifiers.
    let mut depth = 0usize;
    let mut open = None;
    for (i, &b) in line.iter().enumerate().rev() {
        match b {
            b')' => depth += 1,
            b'(' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    open = Some(i);
                    break;
                }
            }
            b']' | b'[' => return Some(None),
            _ => {}
        }
    }
    let open = match open {
        Some(o) if o > 0 && line.get(o - 1) == Some(&b' ') => o,
        _ => return Some(None),
    };
    let inner = std::str::from_utf8(line.get(open + 1..end - 1)?).ok()?;
    let words: Vec<&str> = inner.split(' ').collect();
    let Some(k) = words.iter().position(|w| w.eq_ignore_ascii_case("PARTIAL")) else {
        return Some(None);
    };
    let range = partial_range(words.get(k + 1)?)?;
    let rest: Vec<&str> = words
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != k && *i != k + 1)
        .map(|(_, w)| *w)
        .collect();
    let mut out = if rest.is_empty() {
        line.get(..open - 1)?.to_vec()
    } else {
        let mut o = line.get(..=open)?.to_vec();
        o.extend_from_slice(rest.join(" ").as_bytes());
        o.push(b')');
        o
    };
    out.extend_from_slice(items.get(end..)?);
    *items = out;
    Some(Some(range))
}

/// One atom or quoted string at the start of `s` (its text, and the rest after it).
/// Literals are not taken here: the command then goes to the decoder as it is.
fn token(s: &[u8]) -> Option<(String, &[u8])> {
    if let Some(q) = s.strip_prefix(b"\"") {
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(&b) = q.get(i) {
            match b {
                b'\\' => {
                    out.push(*q.get(i + 1)?);
                    i += 2;
                }
                b'"' => return Some((String::from_utf8(out).ok()?, q.get(i + 1..)?)),
                b'\r' | b'\n' => return None,
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        return None;
    }
    let end = s
        .iter()
        .position(|&b| matches!(b, b' ' | b'(' | b')' | b'"' | b'{' | b'\r' | b'\n'))
        .unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    Some((
        String::from_utf8(s.get(..end)?.to_vec()).ok()?,
        s.get(end..)?,
    ))
}

/// `s` as a quoted string.
fn quote(s: &str) -> Vec<u8> {
    let mut out = vec![b'"'];
    for b in s.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_return() {
        let (c, e) = extract(b"a1 UID SEARCH RETURN (MIN COUNT) FROM x\r\n");
        assert_eq!(&*c, b"a1 UID SEARCH FROM x\r\n");
        assert_eq!(
            e,
            Ext::Search(SearchReturn {
                min: true,
                count: true,
                ..Default::default()
            })
        );
        let (c, e) = extract(b"a SEARCH RETURN () ALL\r\n");
        assert_eq!(&*c, b"a SEARCH ALL\r\n");
        assert!(matches!(e, Ext::Search(r) if r.all));
        let (c, e) = extract(b"a SEARCH ALL\r\n");
        assert_eq!((&*c, e), (&b"a SEARCH ALL\r\n"[..], Ext::None));
        // RFC 5182 SAVE is taken; an unknown option is left to the decoder (BAD).
        assert!(matches!(extract(b"a SEARCH RETURN (SAVE) ALL\r\n").1, Ext::Search(r) if r.save));
        assert_eq!(extract(b"a SEARCH RETURN (FUZZY) ALL\r\n").1, Ext::None);
    }

    /// Pieces of every form cut here, glued at random: `extract` never panics, and
    /// whatever it gives back is no longer than the input plus a little.
    #[test]
    fn random_commands_do_not_break_extract() {
        let pieces: [&[u8]; 24] = [
            b"t ",
            b"UID ",
            b"LIST ",
            b"SEARCH RETURN ",
            b"SORT RETURN ",
            b"FETCH ",
            b"CREATE ",
            b"APPEND ",
            b"(",
            b")",
            b"\"",
            b"\\",
            b" (USE (",
            b"UTF8 (",
            b"~{",
            b"3",
            b"+}",
            b"\r\n",
            b"PREVIEW",
            b" (LAZY)",
            b"RECURSIVEMATCH",
            b"[",
            b"]",
            b" ",
        ];
        let mut rng = yubin_model::testing::Rng(0xE17A_C7ED);
        for _ in 0..20_000 {
            let mut m = Vec::new();
            for _ in 0..rng.below(16) {
                m.extend_from_slice(pieces[rng.below(pieces.len())]);
            }
            let (out, _) = extract(&m);
            assert!(
                out.len() <= m.len() + 16,
                "{:?}",
                String::from_utf8_lossy(&m)
            );
        }
    }

    #[test]
    fn dollar() {
        let d = find_dollar(b"t UID FETCH $ (FLAGS)\r\n").unwrap();
        assert_eq!((d.at, d.uid, d.search), (12, true, false));
        let d = find_dollar(b"t SEARCH SEEN ($ OR $ 1)\r\n").unwrap();
        assert_eq!((d.at, d.uid, d.search), (15, false, true));
        // In SEARCH only `UID $` is read as UIDs.
        let d = find_dollar(b"t UID SEARCH $\r\n").unwrap();
        assert_eq!((d.at, d.uid, d.search), (13, false, true));
        let d = find_dollar(b"t SEARCH (uid $)\r\n").unwrap();
        assert_eq!((d.at, d.uid, d.search), (14, true, true));
        assert!(!find_dollar(b"t SEARCH XUID $\r\n").unwrap().uid);
        assert!(find_dollar(b"t SEARCH SUBJECT \"a $ b\"\r\n").is_none());
        assert!(find_dollar(b"t SELECT $\r\n").is_none());
        assert!(find_dollar(b"t FETCH 1 BODY[]<$>\r\n").is_none());
        let (_, e) = extract(b"t SEARCH RETURN (SAVE) SEEN\r\n");
        assert!(matches!(e, Ext::Search(r) if r.save && !r.all));
        assert_eq!(
            extract(b"t SORT RETURN (SAVE) (DATE) UTF-8 ALL\r\n").1,
            Ext::None
        );
    }

    #[test]
    fn partial_ranges() {
        let v = [10, 11, 12, 13, 14];
        assert_eq!(partial_of(&v, (1, 2)), [10, 11]);
        assert_eq!(partial_of(&v, (4, 100)), [13, 14]);
        assert_eq!(partial_of(&v, (-1, -2)), [13, 14]);
        assert_eq!(partial_of(&v, (-100, -5)), [10]);
        assert_eq!(partial_of(&v, (6, 9)), [] as [u32; 0]);
        assert_eq!(partial_range("1:100"), Some((1, 100)));
        assert_eq!(partial_range("-1:-100"), Some((-1, -100)));
        assert_eq!(partial_range("0:5"), None);
        assert_eq!(partial_range("-1:5"), None);
        let (_, e) = extract(b"t UID SEARCH RETURN (COUNT PARTIAL -1:-10) ALL\r\n");
        assert!(matches!(e, Ext::Search(r) if r.count && r.partial == Some((-1, -10))));
        assert_eq!(
            extract(b"t SEARCH RETURN (ALL PARTIAL 1:5) ALL\r\n").1,
            Ext::None
        );
    }

    #[test]
    fn multi_append() {
        let (cmd, e) = extract(
            b"t APPEND Sent (\\Seen) {3+}\r\nabc \"01-Dec-2026 10:00:00 +0000\" {2}\r\nxy ~{1+}\r\nz\r\n",
        );
        assert_eq!(&*cmd, b"t APPEND Sent (\\Seen) {3}\r\nabc\r\n");
        let Ext::MultiAppend(more) = e else {
            panic!("{e:?}")
        };
        assert_eq!(
            more,
            [
                b"t APPEND Sent \"01-Dec-2026 10:00:00 +0000\" {2}\r\nxy\r\n".to_vec(),
                b"t APPEND Sent ~{1}\r\nz\r\n".to_vec()
            ]
        );
        // One message: the decoder's as it was.
        assert_eq!(extract(b"t APPEND Sent {3}\r\nabc\r\n").1, Ext::None);
        // Cut short: left to the decoder.
        assert_eq!(
            extract(b"t APPEND Sent {3}\r\nabc {9}\r\nab\r\n").1,
            Ext::None
        );
        // At most MULTIAPPEND_MAX messages; one more is left to the decoder (BAD).
        let many = |n: usize| {
            let mut m = b"t APPEND Sent".to_vec();
            for _ in 0..n {
                m.extend_from_slice(b" {1}\r\nx");
            }
            m.extend_from_slice(b"\r\n");
            m
        };
        let e = extract(&many(MULTIAPPEND_MAX)).1;
        assert!(matches!(e, Ext::MultiAppend(v) if v.len() == MULTIAPPEND_MAX - 1));
        assert_eq!(extract(&many(MULTIAPPEND_MAX + 1)).1, Ext::None);
    }

    #[test]
    fn replace() {
        let (cmd, e) = extract(b"t UID REPLACE 42 Drafts (\\Draft) {3+}\r\nabc\r\n");
        assert_eq!(&*cmd, b"t APPEND Drafts (\\Draft) {3+}\r\nabc\r\n");
        assert_eq!(
            e,
            Ext::Replace {
                uid: true,
                number: 42
            }
        );
        assert_eq!(extract(b"t REPLACE x Drafts {1}\r\na\r\n").1, Ext::None);
        assert_eq!(extract(b"t REPLACE 0 Drafts {1}\r\na\r\n").1, Ext::None);
    }

    #[test]
    fn status_mailboxid() {
        let (cmd, e) = extract(b"t STATUS INBOX (MESSAGES MAILBOXID UIDNEXT)\r\n");
        assert_eq!(&*cmd, b"t STATUS INBOX (MESSAGES UIDNEXT)\r\n");
        assert_eq!(e, Ext::Status { only: false });
        let (cmd, e) = extract(b"t STATUS \"a (b)\" (MAILBOXID)\r\n");
        assert_eq!(&*cmd, b"t STATUS \"a (b)\" (MESSAGES)\r\n");
        assert_eq!(e, Ext::Status { only: true });
        assert_eq!(extract(b"t STATUS INBOX (MESSAGES)\r\n").1, Ext::None);
    }

    #[test]
    fn append_utf8() {
        let (cmd, _) = extract(b"t APPEND INBOX (\\Seen) UTF8 (~{5+}\r\nh\xc3\xa9!!)\r\n");
        assert_eq!(&*cmd, b"t APPEND INBOX (\\Seen) ~{5}\r\nh\xc3\xa9!!\r\n");
        // A wrong length, or no closing parenthesis: left to the decoder.
        let (cmd, _) = extract(b"t APPEND INBOX UTF8 (~{9}\r\nabc)\r\n");
        assert_eq!(&*cmd, b"t APPEND INBOX UTF8 (~{9}\r\nabc)\r\n");
    }

    #[test]
    fn sort_return() {
        let (cmd, e) = extract(b"t UID SORT RETURN (MIN COUNT) (DATE) UTF-8 ALL\r\n");
        assert_eq!(&*cmd, b"t UID SORT (DATE) UTF-8 ALL\r\n");
        assert_eq!(
            e,
            Ext::Search(SearchReturn {
                min: true,
                count: true,
                ..Default::default()
            })
        );
        let (_, e) = extract(b"t SORT RETURN () (SUBJECT) UTF-8 ALL\r\n");
        assert!(matches!(e, Ext::Search(r) if r.all));
    }

    #[test]
    fn fetch_preview() {
        let cases: [(&[u8], &[u8], bool); 6] = [
            (b"t FETCH 1 PREVIEW\r\n", b"t FETCH 1 UID\r\n", true),
            (b"t FETCH 1:* (PREVIEW)\r\n", b"t FETCH 1:* (UID)\r\n", true),
            (
                b"t UID FETCH 1 (FLAGS PREVIEW)\r\n",
                b"t UID FETCH 1 (FLAGS)\r\n",
                false,
            ),
            (
                b"t FETCH 1 (preview (lazy) FLAGS)\r\n",
                b"t FETCH 1 (FLAGS)\r\n",
                false,
            ),
            (
                b"t FETCH 1 (UID PREVIEW (LAZY))\r\n",
                b"t FETCH 1 (UID)\r\n",
                false,
            ),
            (
                b"t FETCH 2 (PREVIEW (LAZY))\r\n",
                b"t FETCH 2 (UID)\r\n",
                true,
            ),
        ];
        for (cmd, want, only) in cases {
            let (got, e) = extract(cmd);
            assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
            assert_eq!(
                e,
                Ext::Fetch(FetchExtras {
                    preview: true,
                    only,
                    ..Default::default()
                })
            );
        }
        assert_eq!(
            extract(b"t FETCH 1 (BODY[HEADER.FIELDS (X-PREVIEWS)])\r\n").1,
            Ext::None
        );
        assert_eq!(
            extract(b"t FETCH 1 (BODY[HEADER.FIELDS (PREVIEW)])\r\n").1,
            Ext::None
        );
        assert_eq!(extract(b"t FETCH 1 FLAGS\r\n").1, Ext::None);
        let (cmd, e) = extract(b"t UID FETCH 1:* (EMAILID FLAGS THREADID)\r\n");
        assert_eq!(&*cmd, b"t UID FETCH 1:* (FLAGS)\r\n");
        assert_eq!(
            e,
            Ext::Fetch(FetchExtras {
                emailid: true,
                threadid: true,
                ..Default::default()
            })
        );
        let (cmd, e) = extract(b"t UID FETCH 1:* (FLAGS) (PARTIAL -1:-10)\r\n");
        assert_eq!(&*cmd, b"t UID FETCH 1:* (FLAGS)\r\n");
        assert!(matches!(e, Ext::Fetch(x) if x.partial == Some((-1, -10)) && !x.only));
        let (cmd, e) = extract(b"t UID FETCH 1:* FLAGS (CHANGEDSINCE 4 partial 1:5)\r\n");
        assert_eq!(&*cmd, b"t UID FETCH 1:* FLAGS (CHANGEDSINCE 4)\r\n");
        assert!(matches!(e, Ext::Fetch(x) if x.partial == Some((1, 5))));
        // Not a modifier list, or not a range: left to the decoder (which says BAD).
        assert_eq!(extract(b"t UID FETCH 1:* (FLAGS)\r\n").1, Ext::None);
        assert_eq!(
            extract(b"t UID FETCH 1 (BODY[HEADER.FIELDS (PARTIAL)])\r\n").1,
            Ext::None
        );
        assert_eq!(
            extract(b"t UID FETCH 1:* (FLAGS) (PARTIAL 0:5)\r\n").1,
            Ext::None
        );
        let (cmd, e) = extract(b"t FETCH 1 (THREADID EMAILID)\r\n");
        assert_eq!(&*cmd, b"t FETCH 1 (UID)\r\n");
        assert!(matches!(e, Ext::Fetch(x) if x.only && x.emailid && x.threadid));
    }

    #[test]
    fn create_special_use() {
        let (cmd, e) = extract(b"t CREATE \"My Sent\" (USE (\\Sent))\r\n");
        assert_eq!(&*cmd, b"t CREATE \"My Sent\"\r\n");
        assert_eq!(e, Ext::Create(vec!["\\Sent".into()]));
        assert_eq!(extract(b"t CREATE x (USE (\\Sent)) y\r\n").1, Ext::None);
        assert_eq!(extract(b"t CREATE x\r\n").1, Ext::None);
    }

    #[test]
    fn several_list_patterns() {
        let (cmd, e) = extract(b"t LIST \"\" (INBOX \"a b\" %/x)\r\n");
        assert_eq!(&*cmd, b"t LIST \"\" \"INBOX\"\r\n");
        let Ext::List(o) = e else { panic!() };
        assert_eq!(o.patterns, ["INBOX", "a b", "%/x"]);
        let (_, e) = extract(b"t LIST (SUBSCRIBED RECURSIVEMATCH) ref (a) RETURN (CHILDREN)\r\n");
        assert!(
            matches!(e, Ext::List(o) if o.recursive && o.patterns == ["a"] && o.return_children)
        );
        // RECURSIVEMATCH alone, or an unclosed list: left to the decoder (BAD).
        assert_eq!(extract(b"t LIST (RECURSIVEMATCH) \"\" %\r\n").1, Ext::None);
        assert_eq!(extract(b"t LIST \"\" (a b\r\n").1, Ext::None);
    }

    #[test]
    fn list_extended() {
        let (c, e) = extract(
            b"a LIST (SUBSCRIBED) \"\" \"*\" RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n",
        );
        assert_eq!(&*c, b"a LIST \"\" \"*\"\r\n");
        let Ext::List(o) = e else { panic!() };
        assert!(o.select_subscribed && o.return_children);
        assert_eq!(o.return_status.unwrap(), ["MESSAGES", "UNSEEN"]);
        let (c, e) = extract(b"a LIST \"\" % RETURN (SPECIAL-USE)\r\n");
        assert_eq!(&*c, b"a LIST \"\" %\r\n");
        assert!(matches!(e, Ext::List(o) if o.return_special_use));
        assert_eq!(extract(b"a LIST \"\" *\r\n").1, Ext::None);
        assert_eq!(extract(b"a LIST (BOGUS) \"\" *\r\n").1, Ext::None);
        assert_eq!(extract(b"(((").1, Ext::None);
        assert_eq!(extract(b"a LIST ((((\r\n").1, Ext::None);
    }
}
