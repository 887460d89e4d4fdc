//! Content rules: what a message's own header and body give away, without DNS.
//!
//! Implementation notes. One bounded parse (`yubin_model::mime`, depth and part limits)
//! feeds every rule here, the attachment policy and the classifier's words. Each rule
//! adds a [`Reason`]; weights follow SpamAssassin's and Rspamd's defaults in spirit: no
//! header anomaly alone files a message into Junk (5.0), several together do. Walks are
//! iterative, texts scanned are cut at [`MAX_TEXT`], anchors at [`MAX_ANCHORS`], archives
//! at [`MAX_ARCHIVE_DEPTH`] levels and [`MAX_INFLATE`] bytes, so a hostile message costs
//! time linear in its size.

use std::borrow::Cow;

use mail_parser::{Message, MimeHeaders, PartType};

use crate::Reason;

/// Bytes of decoded text examined per message (words, links).
pub const MAX_TEXT: usize = 512 * 1024;
/// `<a href>` elements compared with their text per message.
pub const MAX_ANCHORS: usize = 1000;
/// Attachments examined per message (names, magic bytes, archives).
pub const MAX_ATTACHMENTS: usize = 100;
/// Zip inside zip inside...: levels opened.
pub const MAX_ARCHIVE_DEPTH: usize = 3;
/// Entries listed per archive.
pub const MAX_ENTRIES: usize = 1000;
/// Bytes inflated per message to look inside compressed nested archives.
pub const MAX_INFLATE: usize = 8 << 20;
/// Distinct words handed to the classifier.
pub const MAX_WORDS: usize = 2000;

/// The SpamAssassin test string every filter honours (GTUBE).
pub const GTUBE: &[u8] = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// What the rules know about the transaction.
pub struct Envelope<'a> {
    pub mail_from: &'a str,
    /// Our domains, lower case.
    pub local_domains: &'a [String],
    /// Seconds since the epoch.
    pub now: i64,
}

/// What the content rules found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Content {
    pub reasons: Vec<Reason>,
    /// The attachment policy refuses the message: what was found.
    pub blocked: Option<String>,
    /// The From: address, lower case.
    pub from: Option<String>,
    /// The classifier's features: the hashes ([`crate::bayes::hash`]) of the message's
    /// words and tags, distinct and sorted, at most [`MAX_WORDS`].
    pub features: Vec<u32>,
    /// A part that is an attachment or not text (what a virus scanner is asked about
    /// under `[filter] clamd_scan = "attachments"`, Rspamd's default too).
    pub has_attachments: bool,
}

impl Content {
    fn add(&mut self, rule: &'static str, score: f32, detail: impl Into<String>) {
        if !self.reasons.iter().any(|r| r.rule == rule) {
            self.reasons.push(Reason {
                rule,
                score,
                detail: crate::headers::clean(&detail.into(), 120),
            });
        }
    }
}

/// File name endings mail providers refuse outright (Gmail's list): programs, scripts,
/// shortcuts, installers and disk images that run on a click.
const DANGEROUS: &[&str] = &[
    "ade",
    "adp",
    "apk",
    "appx",
    "appxbundle",
    "bat",
    "cab",
    "chm",
    "cmd",
    "com",
    "cpl",
    "diagcab",
    "diagcfg",
    "diagpack",
    "dll",
    "dmg",
    "ex",
    "ex_",
    "exe",
    "hta",
    "img",
    "ins",
    "iso",
    "isp",
    "jar",
    "jnlp",
    "js",
    "jse",
    "lib",
    "lnk",
    "mde",
    "mjs",
    "msc",
    "msi",
    "msix",
    "msixbundle",
    "msp",
    "mst",
    "nsh",
    "pif",
    "ps1",
    "scr",
    "sct",
    "shb",
    "sys",
    "vb",
    "vbe",
    "vbs",
    "vhd",
    "vxd",
    "wsc",
    "wsf",
    "wsh",
    "xll",
];

/// Link shorteners: the target is hidden from the reader and from domain blocklists.
const SHORTENERS: &[&str] = &[
    "bit.ly",
    "tinyurl.com",
    "t.co",
    "goo.gl",
    "ow.ly",
    "is.gd",
    "buff.ly",
    "rebrand.ly",
    "cutt.ly",
    "shorturl.at",
    "rb.gy",
    "tiny.cc",
    "t.ly",
    "s.id",
    "bitly.com",
    "v.gd",
];

fn extension(name: &str) -> Option<String> {
    let (_, ext) = name.trim_end_matches(['.', ' ']).rsplit_once('.')?;
    Some(ext.trim().to_ascii_lowercase())
}

fn is_dangerous_name(name: &str) -> bool {
    extension(name).is_some_and(|e| DANGEROUS.contains(&e.as_str()))
}

/// What the first bytes say the content really is, for the kinds that matter.
pub fn magic(data: &[u8]) -> Option<&'static str> {
    let starts = |m: &[u8]| data.starts_with(m);
    if starts(b"MZ") {
        Some("Windows executable")
    } else if starts(b"\x7fELF") {
        Some("ELF executable")
    } else if starts(b"\xfe\xed\xfa\xce")
        || starts(b"\xfe\xed\xfa\xcf")
        || starts(b"\xce\xfa\xed\xfe")
        || starts(b"\xcf\xfa\xed\xfe")
        || starts(b"\xca\xfe\xba\xbe")
    {
        Some("Mach-O executable")
    } else if starts(b"PK\x03\x04") || starts(b"PK\x05\x06") {
        Some("zip")
    } else if starts(b"Rar!\x1a\x07") {
        Some("rar")
    } else if starts(b"7z\xbc\xaf\x27\x1c") {
        Some("7z")
    } else if starts(b"MSCF") {
        Some("cab")
    } else if starts(b"%PDF-") {
        Some("pdf")
    } else {
        None
    }
}

fn is_executable_magic(kind: Option<&str>) -> bool {
    kind.is_some_and(|k| k.ends_with("executable"))
}

/// Check one named file (an attachment or an archive entry): dangerous by name, a
/// double extension hiding one, or a program under a harmless name.
fn check_file(name: &str, data: Option<&[u8]>, c: &mut Content) {
    let name = name.trim();
    let kind = data.and_then(magic);
    if is_dangerous_name(name) {
        let stem = name.rsplit_once('.').map_or("", |(s, _)| s);
        if extension(stem).is_some_and(|e| e.len() <= 4 && !e.is_empty()) {
            c.add("DOUBLE_EXTENSION", 3.0, name);
        }
        c.add("DANGEROUS_ATTACHMENT", 5.0, name);
        c.blocked
            .get_or_insert_with(|| format!("{} (a program or script)", clean_name(name)));
    } else if is_executable_magic(kind) {
        c.add("EXECUTABLE_DISGUISED", 5.0, name);
        c.blocked.get_or_insert_with(|| {
            format!(
                "{} (a {} under another name)",
                clean_name(name),
                kind.unwrap_or_default()
            )
        });
    }
}

fn clean_name(name: &str) -> String {
    crate::headers::clean(name, 80)
}

/// Look inside a zip archive (stored or deflated entries), down to nested archives.
/// Iterative over a work list; inflating is bounded by `budget`.
fn check_zip(name: &str, data: &[u8], c: &mut Content, budget: &mut usize) {
    let mut work: Vec<(String, Cow<'_, [u8]>, usize)> = vec![(name.to_owned(), data.into(), 1)];
    while let Some((outer, bytes, depth)) = work.pop() {
        let Some(entries) = zip_entries(&bytes) else {
            c.add("ARCHIVE_MALFORMED", 1.0, outer.as_str());
            continue;
        };
        for e in entries {
            let inner = format!("{outer}/{}", e.name);
            if e.encrypted {
                c.add("ENCRYPTED_ARCHIVE", 4.0, outer.as_str());
                c.blocked.get_or_insert_with(|| {
                    format!(
                        "{} (a password-protected archive, its contents cannot be checked)",
                        clean_name(&outer)
                    )
                });
                continue;
            }
            let content = e.data(&bytes, budget);
            check_file(&e.name, content.as_deref(), c);
            if let Some(content) = content
                && magic(&content) == Some("zip")
            {
                if depth < MAX_ARCHIVE_DEPTH {
                    work.push((inner, content.into_owned().into(), depth + 1));
                } else {
                    c.add("ARCHIVE_TOO_DEEP", 2.0, inner);
                }
            }
        }
    }
}

struct ZipEntry {
    name: String,
    encrypted: bool,
    method: u16,
    compressed: usize,
    size: usize,
    local: usize,
}

fn le16(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at + 2)?;
    Some(usize::from(u16::from_le_bytes([*s.first()?, *s.get(1)?])))
}

fn le32(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([*s.first()?, *s.get(1)?, *s.get(2)?, *s.get(3)?]) as usize)
}

/// The central directory of a zip (APPNOTE.TXT §4.3.12, §4.3.16): the end record is
/// searched in the last 64 KiB + 22 bytes, entries are read up to [`MAX_ENTRIES`].
fn zip_entries(b: &[u8]) -> Option<Vec<ZipEntry>> {
    let from = b.len().saturating_sub(65_536 + 22);
    let tail = b.get(from..)?;
    let eocd = from + memchr::memmem::rfind(tail, b"PK\x05\x06")?;
    let count = le16(b, eocd + 10)?;
    let mut pos = le32(b, eocd + 16)?;
    let mut out = Vec::new();
    for _ in 0..count.min(MAX_ENTRIES) {
        if b.get(pos..pos + 4)? != b"PK\x01\x02" {
            return None;
        }
        let flags = le16(b, pos + 8)?;
        let nlen = le16(b, pos + 28)?;
        let elen = le16(b, pos + 30)?;
        let clen = le16(b, pos + 32)?;
        let name = b.get(pos + 46..pos + 46 + nlen)?;
        out.push(ZipEntry {
            name: String::from_utf8_lossy(name).into_owned(),
            encrypted: flags & 1 == 1,
            method: le16(b, pos + 10)? as u16,
            compressed: le32(b, pos + 20)?,
            size: le32(b, pos + 24)?,
            local: le32(b, pos + 42)?,
        });
        pos += 46 + nlen + elen + clen;
    }
    Some(out)
}

impl ZipEntry {
    /// The entry's bytes: stored ones as they are, deflated ones inflated within the
    /// budget; `None` for other methods, broken offsets or an exhausted budget.
    fn data<'b>(&self, b: &'b [u8], budget: &mut usize) -> Option<Cow<'b, [u8]>> {
        if b.get(self.local..self.local + 4)? != b"PK\x03\x04" {
            return None;
        }
        let start = self.local + 30 + le16(b, self.local + 26)? + le16(b, self.local + 28)?;
        let raw = b.get(start..start.checked_add(self.compressed)?)?;
        match self.method {
            0 => Some(raw.into()),
            8 if self.size <= *budget => {
                let out = miniz_oxide::inflate::decompress_to_vec_with_limit(raw, *budget).ok()?;
                *budget = budget.saturating_sub(out.len());
                Some(out.into())
            }
            _ => None,
        }
    }
}

/// All content rules, the attachment policy and the classifier's words for one message.
pub fn inspect(raw: &[u8], env: &Envelope<'_>) -> Content {
    let mut c = Content::default();
    if memchr::memmem::find(raw.get(..MAX_TEXT.min(raw.len())).unwrap_or(raw), GTUBE).is_some() {
        c.add("GTUBE", 1000.0, "the anti-spam test string");
    }
    let Some(mime) = yubin_model::mime::parse(raw) else {
        c.add("MISSING_HEADERS", 2.0, "");
        c.has_attachments = true;
        return c;
    };
    let msg: &Message<'_> = &mime;
    if mime.truncated {
        c.add("MIME_MALFORMED", 1.0, "nested too deep or too many parts");
        // Parts not shown as structure may hold anything: the scanner looks.
        c.has_attachments = true;
    }
    header_rules(msg, env, &mut c);
    let mut words = Words::default();
    if let Some(s) = msg.subject() {
        words.text(s, "s:");
    }
    if let Some(f) = &c.from {
        words.tag(format_args!("f:{f}"));
        if let Some((_, d)) = f.rsplit_once('@') {
            words.tag(format_args!("fd:{d}"));
        }
    }
    for h in ["X-Mailer", "User-Agent"] {
        if let Some(v) = msg.header_raw(h) {
            words.tag(format_args!(
                "m:{}",
                v.trim().chars().take(40).collect::<String>()
            ));
        }
    }
    header_words(raw, &mut words);
    body_rules(msg, env, &mut c, &mut words);
    c.features = words.done();
    c
}

/// Header fields that hold addresses, whose parts tell the classifier most.
const ADDRESS_FIELDS: &[&str] = &[
    "from",
    "to",
    "cc",
    "reply-to",
    "sender",
    "return-path",
    "errors-to",
    "delivered-to",
];
/// Fields of the top-level header looked at by [`header_words`].
const MAX_FIELDS: usize = 100;

/// The classifier's words of the top-level header (SpamBayes mines it the same way):
/// which fields are present, the addresses, domains and names in address fields, the
/// hosts and networks of the first Received fields, the Message-ID's domain, the
/// content type and charset, list fields.
fn header_words(raw: &[u8], words: &mut Words) {
    let mut received = 0;
    for (start, end, name) in crate::headers::fields(raw).into_iter().take(MAX_FIELDS) {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        if name.is_empty() || name.len() > 40 {
            continue;
        }
        words.tag(format_args!("h:{name}"));
        let field = raw.get(start..end).unwrap_or_default();
        let colon = memchr::memchr(b':', field).map_or(field.len(), |i| i + 1);
        let value = String::from_utf8_lossy(field.get(colon..).unwrap_or_default());
        let value = cut(&value, 2000).to_lowercase();
        let pieces = || {
            value
                .split(|c: char| c.is_whitespace() || "<>,;\"'()[]".contains(c))
                .filter(|w| !w.is_empty())
        };
        if ADDRESS_FIELDS.contains(&name.as_str()) {
            for w in pieces().take(20) {
                if let Some((_, d)) = w.rsplit_once('@') {
                    words.tag(format_args!("{name}:addr:{w}"));
                    words.tag(format_args!("{name}:dom:{d}"));
                } else if (3..=24).contains(&w.chars().count()) {
                    words.tag(format_args!("{name}:w:{w}"));
                }
            }
        } else if name == "received" && received < 3 {
            received += 1;
            for w in pieces().take(30) {
                if let Ok(ip) = w.parse::<std::net::Ipv4Addr>() {
                    let [a, b, c, _] = ip.octets();
                    words.tag(format_args!("rcvd:ip:{a}.{b}.{c}"));
                } else if w.contains('.') && !w.contains(':') && w.len() <= 60 {
                    words.tag(format_args!("rcvd:{}", w.trim_matches('.')));
                } else if ["with", "esmtp", "smtp", "esmtps", "local", "http", "qmqp"].contains(&w)
                {
                    words.tag(format_args!("rcvd:{w}"));
                }
            }
        } else if name == "message-id" {
            if let Some((_, d)) = value.trim().trim_matches(['<', '>']).rsplit_once('@') {
                words.tag(format_args!("mid:{}", d.trim_end_matches('>')));
            } else {
                words.tag(format_args!("mid:none"));
            }
        } else if name == "content-type" {
            if let Some(t) = pieces().next() {
                words.tag(format_args!("ct:{t}"));
            }
            if let Some(cs) = value.split("charset=").nth(1) {
                let cs: String = cs
                    .trim_matches(['"', ' '])
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || "-_".contains(*c))
                    .collect();
                words.tag(format_args!("charset:{cs}"));
            }
        } else if [
            "list-id",
            "precedence",
            "mailing-list",
            "x-mailing-list",
            "list-unsubscribe",
        ]
        .contains(&name.as_str())
        {
            words.tag(format_args!(
                "{name}:{}",
                value.trim().chars().take(40).collect::<String>()
            ));
        }
    }
}

fn addr_domain(a: &str) -> Option<String> {
    a.rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
}

fn header_rules(msg: &Message<'_>, env: &Envelope<'_>, c: &mut Content) {
    let count = |name: &str| {
        msg.headers()
            .iter()
            .filter(|h| h.name().eq_ignore_ascii_case(name))
            .count()
    };
    // RFC 5322 §3.6: Date and From are required, once; Message-ID should be there.
    match (count("Date"), msg.date()) {
        (0, _) => c.add("MISSING_DATE", 1.0, ""),
        (_, Some(d)) if d.is_valid() => {
            let t = d.to_timestamp();
            if t > env.now + 86_400 {
                c.add("DATE_IN_FUTURE", 1.5, d.to_rfc3339());
            } else if t < env.now - 7 * 86_400 {
                c.add("DATE_IN_PAST", 0.5, d.to_rfc3339());
            }
        }
        _ => c.add(
            "INVALID_DATE",
            1.0,
            msg.header_raw("Date").unwrap_or_default(),
        ),
    }
    match msg.message_id() {
        None if count("Message-ID") == 0 => c.add("MISSING_MESSAGE_ID", 1.0, ""),
        Some(id) if id.contains('@') => {}
        _ => c.add(
            "INVALID_MESSAGE_ID",
            0.5,
            msg.header_raw("Message-ID").unwrap_or_default(),
        ),
    }
    if count("From") > 1 {
        c.add("MULTIPLE_FROM", 1.5, "");
    }
    let from = msg.from().and_then(|a| a.first());
    let from_addr = from
        .and_then(|a| a.address())
        .map(|a| a.trim().to_ascii_lowercase())
        .filter(|a| a.contains('@'));
    let Some(addr) = from_addr else {
        c.add(
            "MISSING_FROM",
            2.0,
            msg.header_raw("From").unwrap_or_default(),
        );
        return;
    };
    let from_domain = addr_domain(&addr).unwrap_or_default();
    let local = |d: &str| env.local_domains.iter().any(|l| l == d);
    if count("Subject") == 0 {
        c.add("MISSING_SUBJECT", 0.5, "");
    } else if let Some(s) = msg.subject() {
        let letters: Vec<char> = s.chars().filter(|ch| ch.is_alphabetic()).collect();
        if letters.len() >= 10 && letters.iter().all(|ch| ch.is_uppercase()) {
            c.add("SUBJECT_ALL_CAPS", 0.5, s);
        }
    }
    if msg.to().is_none() && msg.cc().is_none() {
        c.add("MISSING_TO", 0.5, "");
    }
    if let Some(rt) = msg
        .reply_to()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        && let Some(d) = addr_domain(rt)
        && !crate::aligned(&d, &from_domain)
    {
        c.add("REPLY_TO_DIFFERS", 0.5, format!("{rt} vs {addr}"));
    }
    if let Some(d) = addr_domain(env.mail_from)
        && !crate::aligned(&d, &from_domain)
    {
        c.add(
            "ENVELOPE_FROM_DIFFERS",
            0.3,
            format!("{} vs {addr}", env.mail_from),
        );
    }
    // A display name that shows an address or one of our domains while the mail comes
    // from elsewhere: "IT Support example.org" <x@evil.example>.
    if let Some(name) = from.and_then(|a| a.name()) {
        let lower = name.to_lowercase();
        let shown: Vec<String> = lower
            .split(|ch: char| ch.is_whitespace() || "<>()\"'[],;".contains(ch))
            .filter(|w| w.contains('.'))
            .map(|w| {
                w.rsplit_once('@')
                    .map_or(w, |(_, d)| d)
                    .trim_matches('.')
                    .to_owned()
            })
            .collect();
        if !local(&from_domain)
            && let Some(d) = shown
                .iter()
                .find(|w| env.local_domains.iter().any(|l| crate::aligned(w, l)))
        {
            c.add(
                "DISPLAY_NAME_IMPERSONATES_LOCAL",
                3.0,
                format!("{name} ({d})"),
            );
        } else if lower.contains('@')
            && let Some(d) = shown.iter().find(|w| !crate::aligned(w, &from_domain))
        {
            c.add("DISPLAY_NAME_OTHER_ADDRESS", 1.5, format!("{name} ({d})"));
        }
    }
    c.from = Some(addr);
}

fn body_rules(msg: &Message<'_>, env: &Envelope<'_>, c: &mut Content, words: &mut Words) {
    let _ = env;
    let (mut plain, mut html, mut seen_text, mut attachments) = (false, false, 0usize, 0usize);
    let mut budget = MAX_INFLATE;
    let mut stack: Vec<&Message<'_>> = vec![msg];
    while let Some(m) = stack.pop() {
        for part in &m.parts {
            let ctype = part.content_type();
            let name = part.attachment_name();
            let is_attachment = name.is_some()
                || part
                    .content_disposition()
                    .is_some_and(|d| d.ctype().eq_ignore_ascii_case("attachment"));
            if let Some(ct) = ctype
                && ct.ctype().eq_ignore_ascii_case("multipart")
                && ct.attribute("boundary").is_none_or(str::is_empty)
            {
                c.add("MIME_MALFORMED", 1.0, "multipart without a boundary");
            }
            if part.is_encoding_problem {
                c.add("MIME_MALFORMED", 1.0, "undecodable transfer encoding");
            }
            match &part.body {
                PartType::Message(inner) => stack.push(inner),
                PartType::Text(t) if !is_attachment => {
                    plain = true;
                    if seen_text < MAX_TEXT {
                        let t = cut(t, MAX_TEXT - seen_text);
                        seen_text += t.len();
                        words.text(t, "");
                        links_in_text(t, c, words);
                    }
                }
                PartType::Html(h) if !is_attachment => {
                    html = true;
                    if seen_text < MAX_TEXT {
                        let h = cut(h, MAX_TEXT - seen_text);
                        seen_text += h.len();
                        anchors(h, c, words);
                        words.text(&mail_parser::decoders::html::html_to_text(h), "");
                    }
                }
                PartType::Multipart(_) => {}
                PartType::Text(_) | PartType::Html(_) => c.has_attachments = true,
                body => {
                    c.has_attachments = true;
                    if attachments >= MAX_ATTACHMENTS {
                        continue;
                    }
                    attachments += 1;
                    let data = part.contents();
                    let label = name.unwrap_or("(unnamed)");
                    if let Some(ct) = ctype {
                        words.tag(format_args!(
                            "a:{}/{}",
                            ct.ctype().to_ascii_lowercase(),
                            ct.subtype().unwrap_or_default().to_ascii_lowercase()
                        ));
                    }
                    if is_attachment || matches!(body, PartType::Binary(_)) {
                        check_file(label, Some(data), c);
                        if magic(data) == Some("zip") {
                            check_zip(label, data, c, &mut budget);
                        }
                    }
                }
            }
        }
    }
    if html && !plain {
        c.add("HTML_ONLY", 0.7, "");
    }
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// The host of an `http(s)://` link, lower case, without port or user part.
fn link_host(url: &str) -> Option<String> {
    let u = url.trim().trim_matches(['"', '\'']);
    let rest = u
        .get(..8)
        .filter(|p| p.eq_ignore_ascii_case("https://"))
        .map(|_| u.get(8..).unwrap_or_default())
        .or_else(|| {
            u.get(..7)
                .filter(|p| p.eq_ignore_ascii_case("http://"))
                .map(|_| u.get(7..).unwrap_or_default())
        })?;
    let host = rest
        .split(['/', '?', '#', '\\'])
        .next()
        .unwrap_or_default()
        .rsplit('@')
        .next()
        .unwrap_or_default();
    let host = if host.starts_with('[') {
        host.split(']').next().map(|h| format!("{h}]"))?
    } else {
        host.split(':').next().unwrap_or_default().to_owned()
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

fn is_ip_literal(host: &str) -> bool {
    host.starts_with('[')
        || host.parse::<std::net::Ipv4Addr>().is_ok()
        // Decimal and hexadecimal forms browsers accept: http://3232235777/, http://0xc0a80101/
        || host.chars().all(|ch| ch.is_ascii_digit())
        || host.strip_prefix("0x").is_some_and(|h| h.chars().all(|ch| ch.is_ascii_hexdigit()))
}

/// The pieces of a link's path and query, for the classifier.
fn url_words(url: &str, words: &mut Words) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    for piece in path
        .split(|c: char| !c.is_alphanumeric())
        .filter(|p| (3..=24).contains(&p.len()))
        .take(10)
    {
        words.tag(format_args!("up:{}", piece.to_lowercase()));
    }
}

fn link_rules(host: &str, c: &mut Content, words: &mut Words) {
    if is_ip_literal(host) {
        c.add("LINK_IP_LITERAL", 1.5, host);
    } else if SHORTENERS.contains(&host) {
        c.add("LINK_SHORTENER", 0.5, host);
    }
    words.tag(format_args!("u:{host}"));
}

fn links_in_text(t: &str, c: &mut Content, words: &mut Words) {
    let mut n = 0;
    for (at, _) in t.match_indices("http") {
        n += 1;
        if n > MAX_ANCHORS {
            break;
        }
        let rest = t.get(at..).unwrap_or_default();
        let end = rest
            .find(|ch: char| ch.is_whitespace() || "<>\"'".contains(ch))
            .unwrap_or(rest.len());
        let url = rest.get(..end).unwrap_or_default();
        if let Some(h) = link_host(url) {
            link_rules(&h, c, words);
            url_words(url, words);
        }
    }
}

/// `<a href="URL">TEXT</a>`: the link rules on every URL, and a mismatch when the text
/// shows a host name that is not the one linked to (RFC-less, the phishing classic).
fn anchors(h: &str, c: &mut Content, words: &mut Words) {
    let lower = h.to_ascii_lowercase();
    let mut pos = 0;
    for _ in 0..MAX_ANCHORS {
        let Some(open) = lower.get(pos..).and_then(|s| s.find("<a")).map(|i| pos + i) else {
            break;
        };
        let Some(tag_end) = lower
            .get(open..)
            .and_then(|s| s.find('>'))
            .map(|i| open + i)
        else {
            break;
        };
        let tag = lower.get(open..tag_end).unwrap_or_default();
        let href = tag.find("href").and_then(|i| {
            let v = tag
                .get(i + 4..)?
                .trim_start()
                .strip_prefix('=')?
                .trim_start();
            let (q, v) = match v.chars().next()? {
                q @ ('"' | '\'') => (Some(q), v.get(1..)?),
                _ => (None, v),
            };
            let end = v
                .find(|ch: char| q.map_or(ch.is_whitespace(), |q| ch == q))
                .unwrap_or(v.len());
            v.get(..end)
        });
        let close = lower
            .get(tag_end..)
            .and_then(|s| s.find("</a"))
            .map_or(lower.len(), |i| tag_end + i);
        pos = close.max(tag_end + 1);
        let Some(target) = href.and_then(link_host) else {
            continue;
        };
        link_rules(&target, c, words);
        url_words(href.unwrap_or_default(), words);
        let text = mail_parser::decoders::html::html_to_text(
            h.get(tag_end + 1..close).unwrap_or_default(),
        );
        let shown = text
            .split_whitespace()
            .map(|w| w.trim_matches(|ch: char| !ch.is_alphanumeric()))
            .find_map(|w| {
                let host = link_host(w).or_else(|| {
                    let w = w.strip_prefix("www.").map_or(w, |_| w);
                    let labels: Vec<&str> = w.split('.').collect();
                    (labels.len() >= 2
                        && labels.iter().all(|l| {
                            !l.is_empty() && l.chars().all(|ch| ch.is_alphanumeric() || ch == '-')
                        })
                        && labels
                            .last()
                            .is_some_and(|t| t.len() >= 2 && t.chars().all(char::is_alphabetic)))
                    .then(|| w.to_ascii_lowercase())
                })?;
                Some(host)
            });
        if let Some(shown) = shown
            && !crate::aligned(&shown, &target)
            && !crate::aligned(
                shown.strip_prefix("www.").unwrap_or(&shown),
                target.strip_prefix("www.").unwrap_or(&target),
            )
        {
            c.add(
                "LINK_TEXT_MISMATCH",
                2.5,
                format!("shows {shown}, goes to {target}"),
            );
        }
    }
}

/// The classifier's view of a message: lower-case words (CJK as character pairs, since
/// Japanese and Chinese do not separate words) and tags, distinct, bounded.
#[derive(Default)]
struct Words {
    /// Hashes taken so far; the words themselves are never kept (hashed as they are
    /// read, with no string per word: this runs on every inbound message).
    seen: std::collections::HashSet<u32>,
    /// A tag being written, or the word being read, reused.
    buf: String,
}

impl Words {
    fn full(&self) -> bool {
        self.seen.len() >= MAX_WORDS
    }

    fn take(&mut self, h: u32) {
        if !self.full() {
            self.seen.insert(h);
        }
    }

    fn tag(&mut self, t: std::fmt::Arguments<'_>) {
        use std::fmt::Write;
        self.buf.clear();
        let _ = self.buf.write_fmt(t);
        let h = crate::bayes::hash(&self.buf);
        self.take(h);
    }

    fn text(&mut self, t: &str, prefix: &str) {
        let mut word = std::mem::take(&mut self.buf);
        word.clear();
        let mut prev_cjk: Option<char> = None;
        for ch in t.chars().chain(std::iter::once(' ')) {
            if self.full() {
                break;
            }
            if ch.is_ascii() {
                prev_cjk = None;
                if ch.is_ascii_alphanumeric() {
                    word.push(ch.to_ascii_lowercase());
                } else if !word.is_empty() && matches!(ch, '\'' | '$' | '-' | '!') {
                    word.push(ch);
                } else {
                    self.flush(&mut word, prefix);
                }
                continue;
            }
            if is_cjk(ch) {
                if let Some(p) = prev_cjk {
                    let mut h = crate::bayes::Fnv::new();
                    h.feed(prefix.as_bytes());
                    h.feed(p.encode_utf8(&mut [0; 4]).as_bytes());
                    h.feed(ch.encode_utf8(&mut [0; 4]).as_bytes());
                    self.take(h.finish());
                }
                prev_cjk = Some(ch);
                self.flush(&mut word, prefix);
                continue;
            }
            prev_cjk = None;
            if ch.is_alphanumeric() {
                word.extend(ch.to_lowercase());
            } else {
                self.flush(&mut word, prefix);
            }
        }
        self.buf = word;
    }

    fn flush(&mut self, word: &mut String, prefix: &str) {
        let w = word.trim_end_matches(['\'', '-']);
        let n = if w.is_ascii() {
            w.len()
        } else {
            w.chars().count()
        };
        if (3..=24).contains(&n) {
            let mut h = crate::bayes::Fnv::new();
            h.feed(prefix.as_bytes());
            h.feed(w.as_bytes());
            self.take(h.finish());
        } else if n > 24 {
            // SpamBayes' "skip" tokens: a long word by its first character and length.
            let first = w.chars().next().unwrap_or('?');
            let mut h = crate::bayes::Fnv::new();
            h.feed(prefix.as_bytes());
            h.feed(format!("skip:{first}{}", n / 10 * 10).as_bytes());
            self.take(h.finish());
        }
        word.clear();
    }

    fn done(self) -> Vec<u32> {
        let mut f: Vec<u32> = self.seen.into_iter().collect();
        f.sort_unstable();
        f
    }
}

fn is_cjk(ch: char) -> bool {
    matches!(u32::from(ch),
        0x3040..=0x30ff | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xac00..=0xd7af | 0xf900..=0xfaff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bayes::hash;

    const NOW: i64 = 1_790_000_000;

    fn env() -> Envelope<'static> {
        static LOCAL: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["example.org".to_owned()]);
        Envelope {
            mail_from: "alice@example.com",
            local_domains: &LOCAL,
            now: NOW,
        }
    }

    fn rules(c: &Content) -> Vec<&'static str> {
        c.reasons.iter().map(|r| r.rule).collect()
    }

    fn message(extra_headers: &str, body: &str) -> Vec<u8> {
        format!(
            "From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: lunch\r\n\
             Date: Mon, 22 Sep 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\
             {extra_headers}\r\n{body}"
        )
        .into_bytes()
    }

    /// A zip with stored entries (APPNOTE §4.3), flags per entry.
    pub(crate) fn zip(entries: &[(&str, &[u8], u16)]) -> Vec<u8> {
        let (mut out, mut central) = (Vec::new(), Vec::new());
        for (name, data, flags) in entries {
            let off = out.len() as u32;
            let n = name.len() as u16;
            let len = data.len() as u32;
            out.extend_from_slice(b"PK\x03\x04\x14\x00");
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&[0; 10]); // method 0, time, date, crc
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            central.extend_from_slice(b"PK\x01\x02\x14\x00\x14\x00");
            central.extend_from_slice(&flags.to_le_bytes());
            central.extend_from_slice(&[0; 10]);
            central.extend_from_slice(&len.to_le_bytes());
            central.extend_from_slice(&len.to_le_bytes());
            central.extend_from_slice(&n.to_le_bytes());
            central.extend_from_slice(&[0; 12]);
            central.extend_from_slice(&off.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let cd = out.len() as u32;
        let count = entries.len() as u16;
        let size = central.len() as u32;
        out.extend_from_slice(&central);
        out.extend_from_slice(b"PK\x05\x06\x00\x00\x00\x00");
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&cd.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out
    }

    fn with_attachment(name: &str, data: &[u8]) -> Vec<u8> {
        let b64 = base64(data);
        message(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n",
            &format!(
                "--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n\
                 Content-Type: application/octet-stream\r\n\
                 Content-Disposition: attachment; filename=\"{name}\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--b--\r\n"
            ),
        )
    }

    fn base64(data: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in data.chunks(3) {
            let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= c.len() {
                    s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }

    #[test]
    fn an_ordinary_message_breaks_no_rule() {
        let c = inspect(&message("", "Shall we meet at noon?\r\n"), &env());
        assert!(c.reasons.is_empty(), "{:?}", c.reasons);
        assert_eq!(c.blocked, None);
        assert!(!c.has_attachments, "nothing for a virus scanner");
        assert_eq!(c.from.as_deref(), Some("alice@example.com"));
        assert!(c.features.contains(&hash("s:lunch")));
        assert!(c.features.contains(&hash("noon")));
        assert!(c.features.contains(&hash("fd:example.com")));
    }

    #[test]
    fn header_anomalies() {
        let raw = b"From: x@example.com\r\nFrom: y@example.com\r\nDate: yesterday\r\n\
                    Message-ID: nonsense\r\nSubject: BUY NOW CHEAP WATCHES\r\n\r\nhi\r\n";
        let r = rules(&inspect(raw, &env()));
        for want in [
            "MULTIPLE_FROM",
            "INVALID_DATE",
            "INVALID_MESSAGE_ID",
            "SUBJECT_ALL_CAPS",
            "MISSING_TO",
        ] {
            assert!(r.contains(&want), "{want} in {r:?}");
        }
        let r = rules(&inspect(b"Subject: x\r\n\r\nbody\r\n", &env()));
        assert!(
            r.contains(&"MISSING_FROM") && r.contains(&"MISSING_DATE"),
            "{r:?}"
        );
        let future = message("", "x").replace_date("Mon, 22 Sep 2031 10:00:00 +0000");
        assert!(rules(&inspect(&future, &env())).contains(&"DATE_IN_FUTURE"));
    }

    trait ReplaceDate {
        fn replace_date(self, d: &str) -> Vec<u8>;
    }
    impl ReplaceDate for Vec<u8> {
        fn replace_date(self, d: &str) -> Vec<u8> {
            String::from_utf8(self)
                .unwrap()
                .replace("Mon, 22 Sep 2026 10:00:00 +0000", d)
                .into_bytes()
        }
    }

    #[test]
    fn sender_mismatches_and_impersonation() {
        let raw = b"From: \"IT desk example.org\" <it@evil.example>\r\nTo: bob@example.org\r\n\
            Reply-To: collect@other.example\r\nSubject: password\r\n\
            Date: Mon, 22 Sep 2026 10:00:00 +0000\r\nMessage-ID: <2@evil.example>\r\n\r\nreset\r\n";
        let r = rules(&inspect(raw, &env()));
        for want in [
            "DISPLAY_NAME_IMPERSONATES_LOCAL",
            "REPLY_TO_DIFFERS",
            "ENVELOPE_FROM_DIFFERS",
        ] {
            assert!(r.contains(&want), "{want} in {r:?}");
        }
        let raw = b"From: \"paypal@paypal.com\" <x@evil.example>\r\n\r\n";
        assert!(rules(&inspect(raw, &env())).contains(&"DISPLAY_NAME_OTHER_ADDRESS"));
    }

    #[test]
    fn links_that_lie() {
        let html = "<html><body><p>Your account: \
            <a href=\"http://login.evil.example/x\">https://www.mybank.com/login</a> \
            <a href='http://192.0.2.7/p'>here</a> <A HREF=https://bit.ly/abc>more</A> \
            <a href=\"https://www.example.com/\">example.com</a></p></body></html>";
        let raw = message("Content-Type: text/html\r\n", html);
        let c = inspect(&raw, &env());
        let r = rules(&c);
        for want in [
            "LINK_TEXT_MISMATCH",
            "LINK_IP_LITERAL",
            "LINK_SHORTENER",
            "HTML_ONLY",
        ] {
            assert!(r.contains(&want), "{want} in {r:?}");
        }
        let m = c
            .reasons
            .iter()
            .find(|r| r.rule == "LINK_TEXT_MISMATCH")
            .unwrap();
        assert!(m.detail.contains("mybank.com") && m.detail.contains("login.evil.example"));
        assert!(c.features.contains(&hash("u:login.evil.example")));
        // Matching text and target, www or not, is fine.
        let ok = message(
            "Content-Type: text/html\r\n",
            "<a href=\"https://example.com/a\">www.example.com</a>",
        );
        assert!(!rules(&inspect(&ok, &env())).contains(&"LINK_TEXT_MISMATCH"));
    }

    #[test]
    fn dangerous_attachments() {
        let c = inspect(&with_attachment("invoice.pdf.exe", b"MZ\x90\x00"), &env());
        assert!(rules(&c).contains(&"DOUBLE_EXTENSION"), "{:?}", c.reasons);
        assert!(c.blocked.as_deref().unwrap().contains("invoice.pdf.exe"));
        let c = inspect(&with_attachment("report.pdf", b"MZ\x90\x00rest"), &env());
        assert!(
            rules(&c).contains(&"EXECUTABLE_DISGUISED"),
            "{:?}",
            c.reasons
        );
        assert!(c.blocked.unwrap().contains("Windows executable"));
        let c = inspect(&with_attachment("report.pdf", b"%PDF-1.7 fine"), &env());
        assert_eq!(c.blocked, None, "{:?}", c.reasons);
        assert!(c.has_attachments);
    }

    #[test]
    fn programs_inside_nested_archives() {
        let inner = zip(&[("readme.txt", b"hello", 0), ("setup.scr", b"MZ", 0)]);
        let outer = zip(&[("docs.zip", &inner, 0)]);
        let c = inspect(&with_attachment("docs.zip", &outer), &env());
        assert!(c.blocked.as_deref().unwrap().contains("setup.scr"), "{c:?}");
        let clean = zip(&[("a.txt", b"x", 0)]);
        let c = inspect(
            &with_attachment("a.zip", &zip(&[("b.zip", &clean, 0)])),
            &env(),
        );
        assert_eq!(c.blocked, None, "{:?}", c.reasons);
        let locked = zip(&[("secret.doc", b"\x00\x01", 1)]);
        let c = inspect(&with_attachment("secret.zip", &locked), &env());
        assert!(rules(&c).contains(&"ENCRYPTED_ARCHIVE"));
        assert!(c.blocked.unwrap().contains("password-protected"));
        // Deeper than the bound: reported, not followed.
        let mut z = zip(&[("x.txt", b"x", 0)]);
        for _ in 0..MAX_ARCHIVE_DEPTH + 2 {
            z = zip(&[("z.zip", &z, 0)]);
        }
        let c = inspect(&with_attachment("z.zip", &z), &env());
        assert!(rules(&c).contains(&"ARCHIVE_TOO_DEEP"));
        // Garbage that starts like a zip.
        let c = inspect(&with_attachment("bad.zip", b"PK\x03\x04garbage"), &env());
        assert!(rules(&c).contains(&"ARCHIVE_MALFORMED"));
    }

    #[test]
    fn gtube_and_malformed_mime() {
        let raw = message("", std::str::from_utf8(GTUBE).unwrap());
        assert!(rules(&inspect(&raw, &env())).contains(&"GTUBE"));
        let raw = message("Content-Type: multipart/mixed\r\n", "no boundary\r\n");
        assert!(rules(&inspect(&raw, &env())).contains(&"MIME_MALFORMED"));
    }

    #[test]
    fn japanese_text_becomes_character_pairs() {
        let raw = message(
            "Content-Type: text/plain; charset=utf-8\r\n",
            "会議の資料を送ります\r\n",
        );
        let w = inspect(&raw, &env()).features;
        assert!(
            w.contains(&hash("会議")) && w.contains(&hash("資料")),
            "{w:?}"
        );
    }

    #[test]
    fn words_are_hashed_as_their_lower_case_text() {
        // Hashed while read (no string per word): the same hashes as the words written
        // out, which is what the stored counts are keyed by.
        let long = "x".repeat(31);
        let raw = message(
            "Content-Type: text/plain; charset=utf-8\r\n",
            &format!("Grüße aus KÖLN, it's-- $100! {long} no 会議\r\n"),
        );
        let w = inspect(&raw, &env()).features;
        for word in [
            "grüße", "aus", "köln", "it's", "100!", "skip:x30", "s:lunch",
        ] {
            assert!(w.contains(&hash(word)), "{word}");
        }
        assert!(!w.contains(&hash("no")), "short words are left out");
        assert!(w.windows(2).all(|p| p[0] < p[1]), "distinct and sorted");
    }

    #[test]
    fn hostile_messages_stay_bounded() {
        // Ten thousand anchors, a deep nesting and a long line: answers, quickly.
        let many = "<a href=\"http://a.example/\">b.example</a>".repeat(10_000);
        let c = inspect(&message("Content-Type: text/html\r\n", &many), &env());
        assert!(c.features.len() <= MAX_WORDS);
        let mut deep = String::new();
        for i in 0..5000 {
            deep.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=\"{i}\"\r\n\r\n--{i}\r\n"
            ));
        }
        let _ = inspect(&message("", &deep), &env());
        let _ = inspect(&vec![b'a'; 4 << 20], &env());
    }
}
