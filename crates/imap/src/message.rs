//! One stored message seen through IMAP: ENVELOPE, BODYSTRUCTURE, body sections and the
//! text SEARCH looks at. MIME parsing is mail-parser's; this module only maps its parts
//! (whose byte offsets are absolute in the raw message) onto IMAP's part numbering.

use std::num::NonZeroU32;

use imap_codec::imap_types::body::{
    BasicFields, Body, BodyStructure, Disposition, Language, Location, MultiPartExtensionData,
    SinglePartExtensionData, SpecificFields,
};
use imap_codec::imap_types::core::{AString, IString, Literal, NString, Vec1};
use imap_codec::imap_types::envelope::{Address, Envelope};
use imap_codec::imap_types::fetch::Section;
use mail_parser::{HeaderName, HeaderValue, Message, MimeHeaders, PartType};
use yubin_model::mime::{self, Mime};

/// An IMAP string for any text: quoted when possible, else a literal. NUL bytes, which IMAP
/// strings cannot carry (RFC 9051 §4.3), become `0x80` as Dovecot does.
pub fn istring(bytes: impl Into<Vec<u8>>) -> IString<'static> {
    let mut v: Vec<u8> = bytes.into();
    for b in v.iter_mut() {
        if *b == 0 {
            *b = 0x80;
        }
    }
    IString::try_from(v.clone())
        .or_else(|_| Literal::try_from(v).map(IString::Literal))
        .unwrap_or_else(|_| IString::try_from("").expect("empty string is valid"))
}

pub fn nstring(bytes: Option<impl Into<Vec<u8>>>) -> NString<'static> {
    NString(bytes.map(istring))
}

/// The bytes of a message as a literal, for BODY[...] and RFC822 responses.
pub fn literal(bytes: &[u8]) -> NString<'static> {
    // RFC 9051 §4.3: a literal may hold any byte but NUL. Replacing NUL here is the whole
    // validation, so the per-byte re-check of `Literal::try_from` is skipped (it showed in
    // profiles of large FETCHes).
    let v: Vec<u8> = if bytes.contains(&0) {
        bytes
            .iter()
            .map(|&b| if b == 0 { 0x80 } else { b })
            .collect()
    } else {
        bytes.to_vec() // the usual case: one memcpy
    };
    NString(Some(IString::Literal(Literal::unvalidated(v))))
}

/// A Content-Transfer-Encoding this server cannot decode (RFC 3516 `[UNKNOWN-CTE]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownCte;

/// A message as FETCH sees it. The MIME parse happens on first need only: the commonest
/// fetch, the whole message (BODY.PEEK[], RFC822), is answered from the raw bytes. The
/// parse is bounded (`yubin_model::mime`): the recursive walks below (BODYSTRUCTURE) go at
/// most `MAX_DEPTH` deep.
pub struct Parsed<'a> {
    pub raw: &'a [u8],
    parsed: std::cell::OnceCell<Mime<'a>>,
}

impl<'a> Parsed<'a> {
    pub fn new(raw: &'a [u8]) -> Self {
        Parsed {
            raw,
            parsed: std::cell::OnceCell::new(),
        }
    }

    fn msg(&self) -> &Message<'a> {
        self.parsed.get_or_init(|| mime::parse_or_empty(self.raw))
    }

    fn slice(&self, from: u32, to: u32) -> &'a [u8] {
        let len = self.raw.len();
        let (a, b) = ((from as usize).min(len), (to as usize).min(len));
        &self.raw[a..b.max(a)]
    }

    pub fn envelope(&self) -> Envelope<'static> {
        envelope(self.raw, self.msg())
    }

    /// RFC 8970 §4 PREVIEW: the start of the first text part (HTML made text), white space
    /// collapsed, at most 256 characters; empty when there is no text.
    pub fn preview(&self) -> String {
        const MAX: usize = 256;
        let m = self.msg();
        let Some(text) = m.body_text(0) else {
            return String::new();
        };
        let mut out = String::with_capacity(MAX);
        let mut count = 0;
        // Only as much of the text as can show (a body may be megabytes).
        for word in text.split_whitespace() {
            let n = word.chars().count();
            let room = MAX - count - usize::from(count > 0);
            if count > 0 {
                if room == 0 {
                    break;
                }
                out.push(' ');
                count += 1;
            }
            if n > room {
                out.extend(word.chars().take(room));
                break;
            }
            out.push_str(word);
            count += n;
            if count >= MAX {
                break;
            }
        }
        out
    }

    pub fn body_structure(&self, extensions: bool) -> BodyStructure<'static> {
        structure(self.raw, self.msg(), 0, extensions)
    }

    /// BODY[section] bytes; `None` when the section does not exist (answered as empty).
    pub fn section(&self, section: Option<&Section<'_>>) -> Vec<u8> {
        match section {
            None => self.raw.to_vec(),
            Some(Section::Header(None)) => {
                let p = &self.msg().parts[0];
                self.slice(p.offset_header, p.offset_body).to_vec()
            }
            Some(Section::Text(None)) => {
                let p = &self.msg().parts[0];
                self.slice(p.offset_body, p.offset_end).to_vec()
            }
            Some(Section::HeaderFields(None, names)) => {
                header_fields(self.raw, self.msg(), 0, names.as_ref(), false)
            }
            Some(Section::HeaderFieldsNot(None, names)) => {
                header_fields(self.raw, self.msg(), 0, names.as_ref(), true)
            }
            Some(Section::Part(part)) => match find_part(self.msg(), &part.0) {
                Some((m, i)) => {
                    let p = &m.parts[i];
                    self.slice(p.offset_body, p.offset_end).to_vec()
                }
                None => Vec::new(),
            },
            Some(Section::Mime(part)) => match find_part(self.msg(), &part.0) {
                Some((m, i)) => {
                    let p = &m.parts[i];
                    self.slice(p.offset_header, p.offset_body).to_vec()
                }
                None => Vec::new(),
            },
            Some(
                Section::Header(Some(part))
                | Section::Text(Some(part))
                | Section::HeaderFields(Some(part), _)
                | Section::HeaderFieldsNot(Some(part), _),
            ) => {
                // Only a message/rfc822 part has a header and text of its own.
                let Some((m, i)) = find_part(self.msg(), &part.0) else {
                    return Vec::new();
                };
                let Some(outer) = m.parts.get(i) else {
                    return Vec::new();
                };
                let PartType::Message(inner) = &outer.body else {
                    return Vec::new();
                };
                let Some(p) = inner.parts.first() else {
                    return Vec::new();
                };
                match section {
                    Some(Section::Header(_)) => self.slice(p.offset_header, p.offset_body).to_vec(),
                    // RFC 3501 §6.4.5: the text of an embedded message is everything after its
                    // header, to the end of the part: a multipart's epilogue included.
                    Some(Section::Text(_)) => self.slice(p.offset_body, outer.offset_end).to_vec(),
                    Some(Section::HeaderFields(_, names)) => {
                        header_fields(self.raw, inner, 0, names.as_ref(), false)
                    }
                    Some(Section::HeaderFieldsNot(_, names)) => {
                        header_fields(self.raw, inner, 0, names.as_ref(), true)
                    }
                    _ => Vec::new(),
                }
            }
        }
    }

    /// BINARY[part] (RFC 3516): the part's content with its transfer encoding undone.
    /// `Err` for an encoding we cannot decode (`[UNKNOWN-CTE]`).
    pub fn binary(&self, path: &[NonZeroU32]) -> Result<Vec<u8>, UnknownCte> {
        let Ok(path) = Vec1::try_from(path.to_vec()) else {
            return Ok(self.raw.to_vec());
        };
        let Some((m, i)) = find_part(self.msg(), &path) else {
            return Ok(Vec::new());
        };
        let p = &m.parts[i];
        let body = self.slice(p.offset_body, p.offset_end);
        let cte = header(m, i, HeaderName::ContentTransferEncoding)
            .map(|h| raw_value(self.raw, h).to_ascii_lowercase())
            .unwrap_or_default();
        match cte.as_str() {
            "" | "7bit" | "8bit" | "binary" => Ok(body.to_vec()),
            "base64" => Ok(mail_parser::decoders::base64::base64_decode(body).unwrap_or_default()),
            "quoted-printable" => Ok(
                mail_parser::decoders::quoted_printable::quoted_printable_decode(body)
                    .unwrap_or_default(),
            ),
            _ => Err(UnknownCte),
        }
    }

    /// The value of a header of the top-level message, decoded, for SEARCH HEADER/SUBJECT.
    pub fn header_text(&self, name: &str) -> Vec<String> {
        self.msg().parts[0]
            .headers
            .iter()
            .filter(|h| h.name.as_str().eq_ignore_ascii_case(name))
            .map(|h| header_value_text(self.raw, h))
            .collect()
    }
}

/// A header value: decoded when mail-parser understood it, else the raw bytes unfolded.
fn header_value_text(raw: &[u8], h: &mail_parser::Header<'_>) -> String {
    match &h.value {
        HeaderValue::Text(t) => t.to_string(),
        HeaderValue::TextList(l) => l.join(" "),
        HeaderValue::Address(a) => a
            .iter()
            .map(|x| {
                format!(
                    "{} <{}>",
                    x.name.as_deref().unwrap_or(""),
                    x.address.as_deref().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => raw_value(raw, h),
    }
}

/// The raw value of a header as bytes: unfolded and trimmed.
fn raw_bytes(raw: &[u8], h: &mail_parser::Header<'_>) -> Vec<u8> {
    let (a, b) = (
        h.offset_start as usize,
        (h.offset_end as usize).min(raw.len()),
    );
    let v: Vec<u8> = raw[a.min(b)..b]
        .iter()
        .copied()
        .filter(|&c| c != b'\r' && c != b'\n')
        .collect();
    v.trim_ascii().to_vec()
}

/// The raw value of a header: unfolded, trimmed, lossy UTF-8.
fn raw_value(raw: &[u8], h: &mail_parser::Header<'_>) -> String {
    let (a, b) = (
        h.offset_start as usize,
        (h.offset_end as usize).min(raw.len()),
    );
    let v = String::from_utf8_lossy(&raw[a.min(b)..b]);
    v.replace("\r\n", "").replace('\n', "").trim().to_owned()
}

/// Find the part `path` names (RFC 9051 §6.4.5 part numbering). Returns the message the part
/// belongs to and its index there.
fn find_part<'m, 'x>(
    msg: &'m Message<'x>,
    path: &Vec1<NonZeroU32>,
) -> Option<(&'m Message<'x>, usize)> {
    let path = path.as_ref();
    let mut m = msg;
    let mut idx = 0usize;
    for (i, n) in path.iter().enumerate() {
        let n = n.get() as usize;
        match &m.parts.get(idx)?.body {
            PartType::Multipart(children) => idx = *children.get(n - 1)? as usize,
            // A single-part message's body is its part 1.
            _ if idx == 0 && n == 1 => {}
            _ => return None,
        }
        if i + 1 < path.len()
            && let PartType::Message(inner) = &m.parts.get(idx)?.body
        {
            m = inner;
            idx = 0;
        }
    }
    Some((m, idx))
}

/// HEADER.FIELDS / HEADER.FIELDS.NOT: the matching header lines as sent, then CRLF.
fn header_fields(
    raw: &[u8],
    m: &Message<'_>,
    idx: usize,
    names: &[AString<'_>],
    not: bool,
) -> Vec<u8> {
    // A set: the client may name thousands of fields, the message hold thousands of lines.
    let wanted: std::collections::HashSet<String> = names
        .iter()
        .map(|n| String::from_utf8_lossy(n.as_ref()).to_ascii_lowercase())
        .collect();
    let mut out = Vec::new();
    if let Some(p) = m.parts.get(idx) {
        for h in &p.headers {
            let name = h.name.as_str().to_ascii_lowercase();
            if wanted.contains(&name) != not {
                let (a, b) = (
                    h.offset_field as usize,
                    (h.offset_end as usize).min(raw.len()),
                );
                out.extend_from_slice(&raw[a.min(b)..b]);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn header<'m>(
    m: &'m Message<'_>,
    idx: usize,
    name: HeaderName<'_>,
) -> Option<&'m mail_parser::Header<'m>> {
    m.parts
        .get(idx)?
        .headers
        .iter()
        .rev()
        .find(|h| h.name == name)
}

fn envelope(raw: &[u8], m: &Message<'_>) -> Envelope<'static> {
    // Envelope strings are the header values as sent (RFC 9051 §7.5.2), bytes and all.
    let text = |name: HeaderName<'_>| header(m, 0, name).map(|h| raw_bytes(raw, h));
    let addrs = |name: HeaderName<'_>| -> Vec<Address<'static>> {
        let h = header(m, 0, name);
        match h.map(|h| &h.value) {
            Some(HeaderValue::Address(mail_parser::Address::List(list))) => {
                let names = h
                    .map(|h| raw_display_names(&raw_bytes(raw, h)))
                    .unwrap_or_default();
                let names = (names.len() == list.len()).then_some(names);
                list.iter()
                    .enumerate()
                    .map(|(i, a)| address(a, names.as_ref().and_then(|n| n[i].clone())))
                    .collect()
            }
            Some(HeaderValue::Address(mail_parser::Address::Group(groups))) => {
                let mut out = Vec::new();
                for g in groups {
                    match &g.name {
                        // RFC 9051 §7.5.2: a group is a start marker (host NIL), its
                        // members, and an end marker (all NIL).
                        Some(name) => {
                            out.push(Address {
                                name: NString(None),
                                adl: NString(None),
                                mailbox: nstring(Some(name.as_bytes().to_vec())),
                                host: NString(None),
                            });
                            // A comment alone (`group: (foo) ;`) is no member.
                            out.extend(
                                g.addresses
                                    .iter()
                                    .filter(|a| a.address.is_some())
                                    .map(|a| address(a, None)),
                            );
                            out.push(Address {
                                name: NString(None),
                                adl: NString(None),
                                mailbox: NString(None),
                                host: NString(None),
                            });
                        }
                        None => out.extend(g.addresses.iter().map(|a| address(a, None))),
                    }
                }
                out
            }
            _ => Vec::new(),
        }
    };
    let from = addrs(HeaderName::From);
    let sender = addrs(HeaderName::Sender);
    let reply_to = addrs(HeaderName::ReplyTo);
    Envelope {
        date: nstring(text(HeaderName::Date)),
        subject: nstring(text(HeaderName::Subject)),
        // RFC 9051 §7.5.2: Sender and Reply-To default to From.
        sender: if sender.is_empty() {
            from.clone()
        } else {
            sender
        },
        reply_to: if reply_to.is_empty() {
            from.clone()
        } else {
            reply_to
        },
        from,
        to: addrs(HeaderName::To),
        cc: addrs(HeaderName::Cc),
        bcc: addrs(HeaderName::Bcc),
        in_reply_to: nstring(text(HeaderName::InReplyTo)),
        message_id: nstring(text(HeaderName::MessageId)),
    }
}

/// The display name of each address of a raw address header, as sent (encoded words and
/// 8-bit bytes untouched), or `None` where there is none.
fn raw_display_names(v: &[u8]) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut comment) = (false, false, 0u32);
    let mut start = 0;
    let mut name_end = None;
    let mut push = |seg: &[u8], name_end: Option<usize>| {
        let name = name_end.map(|e| &seg[..e]).map(|n| {
            let n = n.trim_ascii();
            let n = n
                .strip_prefix(b"\"")
                .and_then(|x| x.strip_suffix(b"\""))
                .unwrap_or(n);
            n.to_vec()
        });
        out.push(name.filter(|n| !n.is_empty()));
    };
    for (i, &b) in v.iter().enumerate() {
        match b {
            b'\\' => {}
            b'"' if comment == 0 => quoted = !quoted,
            b'(' if !quoted => comment += 1,
            b')' if !quoted => comment = comment.saturating_sub(1),
            b'<' if !quoted && comment == 0 => {
                angle = true;
                name_end = Some(i - start);
            }
            b'>' if !quoted && comment == 0 => angle = false,
            b',' if !quoted && !angle && comment == 0 => {
                push(&v[start..i], name_end.take());
                start = i + 1;
            }
            _ => {}
        }
    }
    if !v[start..].trim_ascii().is_empty() {
        push(&v[start..], name_end);
    }
    out
}

fn address(a: &mail_parser::Addr<'_>, raw_name: Option<Vec<u8>>) -> Address<'static> {
    let (mailbox, host) = match a.address.as_deref() {
        Some(addr) => match addr.rsplit_once('@') {
            Some((l, d)) => (Some(l.to_owned()), Some(d.to_owned())),
            None => (Some(addr.to_owned()), None),
        },
        None => (None, None),
    };
    // RFC 5322 §4.4 obs-route `@a,@b:user@host`: the route is the adl (RFC 3501 §7.4.2).
    let (adl, mailbox) = match mailbox {
        Some(m) if m.starts_with('@') => match m.split_once(':') {
            Some((route, local)) => (Some(route.to_owned()), Some(local.to_owned())),
            None => (None, Some(m)),
        },
        m => (None, m),
    };
    let name = match (raw_name, a.name.as_deref()) {
        (Some(raw), _) => Some(raw),
        (None, Some(n)) => Some(encode_word(n).into_bytes()),
        (None, None) => None,
    };
    Address {
        name: nstring(name),
        adl: nstring(adl),
        mailbox: nstring(mailbox),
        host: nstring(host),
    }
}

/// Display names are decoded by mail-parser; IMAP4rev1 clients expect RFC 2047 form for
/// anything that is not ASCII, so non-ASCII names are encoded again.
fn encode_word(s: &str) -> String {
    if s.is_ascii() {
        return s.to_owned();
    }
    format!("=?utf-8?b?{}?=", yubin_sasl::encode(s.as_bytes()))
}

/// The `; name=value` parameters of a raw Content-Type/-Disposition value, as sent
/// (RFC 2231 forms such as `name*=utf-8''...` pass through undecoded, as Dovecot does;
/// the client decodes them).
fn params(raw_value: Option<Vec<u8>>) -> Vec<(IString<'static>, IString<'static>)> {
    let Some(v) = raw_value else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut fields = Vec::new();
    let (mut quoted, mut start) = (false, 0);
    for (i, &b) in v.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b';' if !quoted => {
                fields.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    fields.push(&v[start..]);
    // The first field is the type itself.
    for f in fields.into_iter().skip(1) {
        let Some(eq) = f.iter().position(|&b| b == b'=') else {
            continue;
        };
        let name = f[..eq].trim_ascii();
        let mut value = f[eq + 1..].trim_ascii();
        if value.len() >= 2 && value.starts_with(b"\"") && value.ends_with(b"\"") {
            value = &value[1..value.len() - 1];
        }
        let value: Vec<u8> = {
            // Undo quoted-pair escapes inside quoted strings.
            let mut out = Vec::with_capacity(value.len());
            let mut esc = false;
            for &c in value {
                if c == b'\\' && !esc {
                    esc = true;
                    continue;
                }
                esc = false;
                out.push(c);
            }
            out
        };
        if !name.is_empty() {
            out.push((istring(name.to_ascii_uppercase()), istring(value)));
        }
    }
    out
}

/// Body size in lines: the number of line ends, as Dovecot and Cyrus count them.
fn lines(b: &[u8]) -> u32 {
    b.iter().filter(|&&c| c == b'\n').count() as u32
}

fn structure(raw: &[u8], m: &Message<'_>, idx: usize, ext: bool) -> BodyStructure<'static> {
    let p = &m.parts[idx];
    let ct = p.content_type();
    let disposition = || -> Option<Disposition<'static>> {
        let d = p.content_disposition();
        let language = header(m, idx, HeaderName::ContentLanguage).map(|h| match &h.value {
            HeaderValue::Text(t) => vec![istring(t.as_bytes().to_vec())],
            HeaderValue::TextList(l) => l.iter().map(|t| istring(t.as_bytes().to_vec())).collect(),
            _ => vec![],
        });
        let location = header(m, idx, HeaderName::ContentLocation).map(|h| raw_value(raw, h));
        Some(Disposition {
            disposition: d.map(|d| {
                (
                    istring(d.c_type.to_uppercase()),
                    params(
                        header(m, idx, HeaderName::ContentDisposition).map(|h| raw_bytes(raw, h)),
                    ),
                )
            }),
            tail: Some(Language {
                language: language.unwrap_or_default(),
                tail: Some(Location {
                    location: nstring(location),
                    extensions: vec![],
                }),
            }),
        })
    };
    if let PartType::Multipart(children) = &p.body {
        let bodies: Vec<BodyStructure<'static>> = children
            .iter()
            .map(|&c| structure(raw, m, c as usize, ext))
            .collect();
        let subtype = ct
            .and_then(|c| c.c_subtype.as_deref())
            .unwrap_or("mixed")
            .to_uppercase();
        return match Vec1::try_from(bodies) {
            Ok(bodies) => BodyStructure::Multi {
                bodies,
                subtype: istring(subtype),
                extension_data: ext.then(|| MultiPartExtensionData {
                    parameter_list: params(
                        header(m, idx, HeaderName::ContentType).map(|h| raw_bytes(raw, h)),
                    ),
                    tail: disposition(),
                }),
            },
            // A multipart without parts: describe it as an empty text part.
            Err(_) => empty_text(),
        };
    }
    // Offsets come from the parse of a peer's bytes: clamp, and never a reversed range.
    let start = (p.offset_body as usize).min(raw.len());
    let body_bytes = raw
        .get(start..(p.offset_end as usize).clamp(start, raw.len()))
        .unwrap_or_default();
    let (ctype, subtype) = match ct {
        Some(c) => (
            c.c_type.to_uppercase(),
            c.c_subtype.as_deref().unwrap_or("").to_uppercase(),
        ),
        // No Content-Type: message/rfc822 inside multipart/digest (RFC 2046 §5.1.5),
        // text/plain elsewhere (RFC 2045 §5.2).
        None if matches!(p.body, PartType::Message(_)) => ("MESSAGE".into(), "RFC822".into()),
        None => ("TEXT".into(), "PLAIN".into()),
    };
    // A multipart or message/rfc822 part left opaque (past the parse bounds, or a nested
    // message too deeply encoded) has no structure to show, and RFC 9051 §9's
    // body-type-mpart and body-type-msg need one: describe its bytes as an attachment.
    let (ctype, subtype) = if matches!(p.body, PartType::Binary(_))
        && (ctype == "MULTIPART"
            || (ctype == "MESSAGE" && matches!(subtype.as_str(), "RFC822" | "GLOBAL")))
    {
        ("APPLICATION".into(), "OCTET-STREAM".into())
    } else {
        (ctype, subtype)
    };
    let mut parameter_list =
        params(header(m, idx, HeaderName::ContentType).map(|h| raw_bytes(raw, h)));
    let has_charset = parameter_list
        .iter()
        .any(|(n, _)| n.as_ref().eq_ignore_ascii_case(b"charset"));
    if ctype == "TEXT" && !has_charset {
        // RFC 2045 §5.2: text without a charset is us-ascii.
        parameter_list.push((istring("CHARSET"), istring("us-ascii")));
    }
    let encoding = header(m, idx, HeaderName::ContentTransferEncoding)
        .map(|h| raw_value(raw, h).to_uppercase())
        .unwrap_or_else(|| "7BIT".into());
    let basic = BasicFields {
        parameter_list,
        id: nstring(header(m, idx, HeaderName::ContentId).map(|h| raw_value(raw, h))),
        description: nstring(
            header(m, idx, HeaderName::ContentDescription).map(|h| raw_value(raw, h)),
        ),
        content_transfer_encoding: istring(encoding),
        size: body_bytes.len() as u32,
    };
    let specific = match &p.body {
        PartType::Message(inner) => SpecificFields::Message {
            envelope: Box::new(envelope(raw, inner)),
            body_structure: Box::new(structure(raw, inner, 0, ext)),
            number_of_lines: lines(body_bytes),
        },
        _ if ctype == "TEXT" => SpecificFields::Text {
            subtype: istring(subtype),
            number_of_lines: lines(body_bytes),
        },
        _ => SpecificFields::Basic {
            r#type: istring(ctype),
            subtype: istring(subtype),
        },
    };
    BodyStructure::Single {
        body: Body { basic, specific },
        extension_data: ext.then(|| SinglePartExtensionData {
            md5: nstring(header(m, idx, HeaderName::ContentMd5).map(|h| raw_value(raw, h))),
            tail: disposition(),
        }),
    }
}

fn empty_text() -> BodyStructure<'static> {
    BodyStructure::Single {
        body: Body {
            basic: BasicFields {
                parameter_list: vec![],
                id: NString(None),
                description: NString(None),
                content_transfer_encoding: istring("7BIT"),
                size: 0,
            },
            specific: SpecificFields::Text {
                subtype: istring("PLAIN"),
                number_of_lines: 0,
            },
        },
        extension_data: None,
    }
}

/// Parse `1.2.MIME`-style part paths from a Part, for tests.
#[cfg(test)]
fn part(p: &[u32]) -> imap_codec::imap_types::fetch::Part {
    use imap_codec::imap_types::fetch::Part;
    Part(
        Vec1::try_from(
            p.iter()
                .map(|&n| NonZeroU32::new(n).unwrap())
                .collect::<Vec<_>>(),
        )
        .unwrap(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::ResponseCodec;
    use imap_codec::encode::Encoder;
    use imap_codec::imap_types::fetch::MessageDataItem;
    use imap_codec::imap_types::response::{Data, Response};

    const NESTED: &[u8] = b"From: Alice <a@b.c>\r\nSubject: =?utf-8?q?h=C3=A9llo?=\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nFrom: x@y.z\r\nSubject: inner\r\nContent-Type: multipart/alternative; boundary=YY\r\n\r\n--YY\r\nContent-Type: text/plain\r\n\r\ninner text\r\n--YY\r\nContent-Type: text/html\r\n\r\n<b>x</b>\r\n--YY--\r\n\r\n--XX\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=a.pdf\r\n\r\nAAAA\r\n--XX--\r\n";

    fn encode_item(item: MessageDataItem<'static>) -> String {
        let r = Response::Data(Data::fetch(1, vec![item]).unwrap());
        String::from_utf8_lossy(&ResponseCodec::default().encode(&r).dump()).into_owned()
    }

    #[test]
    fn sections_of_a_nested_message() {
        let p = Parsed::new(NESTED);
        assert_eq!(p.section(Some(&Section::Part(part(&[1])))), b"hello");
        assert_eq!(
            p.section(Some(&Section::Mime(part(&[1])))),
            b"Content-Type: text/plain\r\n\r\n"
        );
        assert_eq!(
            p.section(Some(&Section::Part(part(&[2, 1])))),
            b"inner text"
        );
        assert_eq!(p.section(Some(&Section::Part(part(&[2, 2])))), b"<b>x</b>");
        assert!(
            p.section(Some(&Section::Header(Some(part(&[2])))))
                .starts_with(b"From: x@y.z\r\n")
        );
        assert!(
            p.section(Some(&Section::Header(Some(part(&[2])))))
                .ends_with(b"\r\n\r\n")
        );
        assert_eq!(p.section(Some(&Section::Part(part(&[3])))), b"AAAA");
        assert_eq!(p.section(Some(&Section::Part(part(&[9])))), b"");
        assert!(
            p.section(Some(&Section::Header(None)))
                .ends_with(b"boundary=XX\r\n\r\n")
        );
        let names = Vec1::try_from(vec![AString::try_from("subject").unwrap()]).unwrap();
        assert_eq!(
            p.section(Some(&Section::HeaderFields(None, names))),
            b"Subject: =?utf-8?q?h=C3=A9llo?=\r\n\r\n"
        );
    }

    #[test]
    fn text_of_an_embedded_multipart_keeps_its_epilogue() {
        let raw = b"Content-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\nContent-Type: multipart/alternative; boundary=Y\r\n\r\n--Y\r\n\r\na\r\n--Y--\r\nepilogue\r\n--X--\r\n";
        let p = Parsed::new(raw);
        let text = p.section(Some(&Section::Text(Some(part(&[1])))));
        assert!(
            text.ends_with(b"--Y--\r\nepilogue"),
            "{}",
            String::from_utf8_lossy(&text)
        );
        assert!(text.starts_with(b"--Y\r\n"));
    }

    #[test]
    fn single_part_body_is_part_one() {
        let p = Parsed::new(b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(p.section(Some(&Section::Part(part(&[1])))), b"body\r\n");
        assert_eq!(p.section(Some(&Section::Text(None))), b"body\r\n");
        let bs = encode_item(MessageDataItem::BodyStructure(p.body_structure(true)));
        assert_eq!(
            bs,
            "* 1 FETCH (BODYSTRUCTURE (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 6 1 NIL NIL NIL NIL))\r\n"
        );
    }

    #[test]
    fn bodystructure_of_nested_multipart() {
        let bs = encode_item(MessageDataItem::BodyStructure(
            Parsed::new(NESTED).body_structure(false),
        ));
        assert!(bs.starts_with("* 1 FETCH (BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 5 0)(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 178 (NIL \"inner\" ((NIL NIL \"x\" \"y.z\")) ((NIL NIL \"x\" \"y.z\")) ((NIL NIL \"x\" \"y.z\")) NIL NIL NIL NIL NIL) ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 10 0)(\"TEXT\" \"HTML\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 8 0) \"ALTERNATIVE\") 13)(\"APPLICATION\" \"PDF\" (\"NAME\" \"a.pdf\") NIL NIL \"BASE64\" 4) \"MIXED\"))"), "{bs}");
    }

    #[test]
    fn envelope_fields() {
        let env = encode_item(MessageDataItem::Envelope(Parsed::new(NESTED).envelope()));
        assert_eq!(
            env,
            "* 1 FETCH (ENVELOPE (NIL \"=?utf-8?q?h=C3=A9llo?=\" ((\"Alice\" NIL \"a\" \"b.c\")) ((\"Alice\" NIL \"a\" \"b.c\")) ((\"Alice\" NIL \"a\" \"b.c\")) NIL NIL NIL NIL NIL))\r\n"
        );
        let p = Parsed::new(
            b"From: =?utf-8?q?J=C3=BCrgen?= <j@x.de>\r\nTo: team: a@x.de, b@x.de;\r\n\r\n",
        );
        let env = encode_item(MessageDataItem::Envelope(p.envelope()));
        // Display names travel as sent (here an encoded word), as Dovecot does.
        assert!(
            env.contains("((\"=?utf-8?q?J=C3=BCrgen?=\" NIL \"j\" \"x.de\"))"),
            "{env}"
        );
        assert!(env.contains("((NIL NIL \"team\" NIL)(NIL NIL \"a\" \"x.de\")(NIL NIL \"b\" \"x.de\")(NIL NIL NIL NIL))"), "{env}");
    }

    #[test]
    fn preview_is_the_text_start() {
        let p = Parsed::new(NESTED);
        assert_eq!(p.preview(), "hello");
        let long = format!("Subject: x\r\n\r\n  {}\r\n", "wörd ".repeat(100));
        let p = Parsed::new(long.as_bytes());
        let v = p.preview();
        assert_eq!(v.chars().count(), 256, "{v}");
        assert!(v.starts_with("wörd wörd") && !v.contains("  "));
        let html = b"Content-Type: text/html\r\n\r\n<p>Hi <b>there</b></p>\r\n";
        assert_eq!(Parsed::new(html).preview(), "Hi there");
        assert_eq!(Parsed::new(b"Subject: empty\r\n\r\n").preview(), "");
    }

    #[test]
    fn envelope_groups_comments_and_routes() {
        // RFC 3501 §7.4.2 (RFC 9051 §7.5.2): a comment in an empty group is no address;
        // a source route goes to the adl.
        let p = Parsed::new(
            b"From: a@b.c\r\nTo: group1: ;, group2: (foo) ;\r\nCc: <@route1,@route2:user@host>\r\n\r\n",
        );
        let env = encode_item(MessageDataItem::Envelope(p.envelope()));
        assert!(
            env.contains("((NIL NIL \"group1\" NIL)(NIL NIL NIL NIL)(NIL NIL \"group2\" NIL)(NIL NIL NIL NIL))"),
            "{env}"
        );
        assert!(
            env.contains("((NIL \"@route1,@route2\" \"user\" \"host\"))"),
            "{env}"
        );
    }

    #[test]
    fn deep_nesting_is_bounded() {
        // A small stack: BODYSTRUCTURE, its encoding and sections must not recurse per level.
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| {
                let mut deep = Vec::new();
                for _ in 0..10_000 {
                    deep.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
                }
                deep.extend_from_slice(b"Subject: x\r\n\r\nx\r\n");
                let mut multi = Vec::new();
                for i in 0..3_000 {
                    multi.extend_from_slice(
                        format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n")
                            .as_bytes(),
                    );
                }
                multi.extend_from_slice(b"\r\nleaf\r\n");
                for raw in [deep, multi] {
                    let p = Parsed::new(&raw);
                    let bs = encode_item(MessageDataItem::BodyStructure(p.body_structure(true)));
                    assert!(
                        bs.contains("\"APPLICATION\" \"OCTET-STREAM\""),
                        "{}",
                        bs.get(..200).unwrap_or(&bs)
                    );
                    encode_item(MessageDataItem::Body(p.body_structure(false)));
                    let path: Vec<u32> = vec![1; 5_000];
                    p.section(Some(&Section::Part(part(&path))));
                    p.section(Some(&Section::Header(Some(part(&path)))));
                    let _ = p.binary(
                        &path
                            .iter()
                            .map(|&n| NonZeroU32::new(n).unwrap())
                            .collect::<Vec<_>>(),
                    );
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn broken_input_does_not_panic() {
        for raw in [
            &b""[..],
            b"\r\n",
            b"Content-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\nContent-Type: text/plain\r\n",
            b"Content-Type: message/rfc822\r\n\r\n",
            b"\0\0\0\xff\xfe",
            b"Subject: \xff\r\n\r\n\0body",
        ] {
            let p = Parsed::new(raw);
            encode_item(MessageDataItem::BodyStructure(p.body_structure(true)));
            encode_item(MessageDataItem::Envelope(p.envelope()));
            for path in [&[1u32][..], &[1, 1], &[2, 3, 4]] {
                p.section(Some(&Section::Part(part(path))));
                p.section(Some(&Section::Mime(part(path))));
                p.section(Some(&Section::Header(Some(part(path)))));
            }
        }
    }
}
