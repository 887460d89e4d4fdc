//! Bounded MIME parsing: mail-parser's tree, cut to a depth and a number of parts that every
//! consumer may walk recursively, and dropped without recursion.
//!
//! Implementation notes:
//! - mail-parser parses iteratively, but the tree it returns is as deep as the message
//!   says: 50,000 nested `message/rfc822` parts fit in 3 MiB, and walking or merely
//!   dropping that tree recursively overflows the stack (which aborts the process: a
//!   panic handler cannot catch it). Every parse of a whole message in yubin goes through
//!   [`parse`]; nothing else may call `MessageParser::parse` on a peer's bytes.
//! - Parts nested deeper than [`MAX_DEPTH`] (multipart and message/rfc822 levels
//!   together), and parts past the first [`MAX_PARTS`], become opaque leaves: their bytes
//!   stay where they are (offsets unchanged), only their inner structure is not shown.
//!   Dovecot's message parser does the same past its limits (100 levels, 10,000 parts).
//! - A message with more than [`MAX_BOUNDARY_LINES`] lines starting with `--` is not split
//!   into parts at all (one opaque body after its header): each part costs mail-parser
//!   about 150 bytes whatever its size, so 7-byte parts would turn a 50 MiB message into
//!   gigabytes of tree.
//! - [`Mime`] drops nested messages from an explicit stack, so even a tree built by hand
//!   of any depth is freed without recursion.

use std::borrow::Cow;
use std::ops::Deref;

use mail_parser::{Message, MessageParser, MessagePart, PartType};

/// Deepest nesting of parts shown as structure (the top-level message is depth 0).
pub const MAX_DEPTH: usize = 100;
/// Parts shown as structure per message; the rest are opaque.
pub const MAX_PARTS: usize = 10_000;
/// Lines starting with `--` (boundary candidates) above which a message is not split.
pub const MAX_BOUNDARY_LINES: usize = 4 * MAX_PARTS;
/// Short lines that look like header fields (a `:` near the start) above which a message
/// is not split: mail-parser keeps ~100 bytes per field, so 4-byte fields would make a
/// 50 MiB message a gigabyte of tree.
pub const MAX_FIELD_LINES: usize = 100_000;
/// The top-level header read by [`parse_header`]: at most this many lines...
pub const MAX_HEADER_LINES: usize = 10_000;
/// ...and bytes.
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// A parsed message whose structure is at most [`MAX_DEPTH`] deep and holds at most
/// [`MAX_PARTS`] reachable parts.
pub struct Mime<'a> {
    msg: Message<'a>,
    /// Parts were made opaque to keep the bounds.
    pub truncated: bool,
}

impl<'a> Mime<'a> {
    /// What `MessageParser::parse_headers` returned: one part, nothing nested.
    pub fn headers(msg: Message<'a>) -> Self {
        let mut m = Mime {
            msg,
            truncated: false,
        };
        m.truncated = bound(&mut m.msg);
        m
    }
}

impl<'a> Deref for Mime<'a> {
    type Target = Message<'a>;
    fn deref(&self) -> &Message<'a> {
        &self.msg
    }
}

impl Drop for Mime<'_> {
    fn drop(&mut self) {
        let mut stack = Vec::new();
        detach_nested(&mut self.msg, &mut stack);
        dispose(stack);
    }
}

/// Move every nested message out of `m` onto `stack` (their parts become empty multiparts).
fn detach_nested<'a>(m: &mut Message<'a>, stack: &mut Vec<Message<'a>>) {
    for p in &mut m.parts {
        if matches!(p.body, PartType::Message(_))
            && let PartType::Message(inner) = std::mem::take(&mut p.body)
        {
            stack.push(inner);
        }
    }
}

/// Drop messages without recursing into their nested messages.
fn dispose(mut stack: Vec<Message<'_>>) {
    while let Some(mut m) = stack.pop() {
        detach_nested(&mut m, &mut stack);
    }
}

/// Parse a whole message within the bounds. `None` only for input without any header or
/// body (mail-parser's rule), which callers treat as an empty message.
pub fn parse(raw: &[u8]) -> Option<Mime<'_>> {
    if boundary_lines(raw) > MAX_BOUNDARY_LINES || field_lines(raw) > MAX_FIELD_LINES {
        return opaque(raw);
    }
    // mail-parser has debug assertions on malformed nesting (seen on generated input):
    // whatever it does on a peer's bytes, a panic here becomes an opaque message.
    let parsed = std::panic::catch_unwind(|| MessageParser::default().parse(raw));
    let mut msg = match parsed {
        Ok(m) => m?,
        Err(_) => return opaque(raw),
    };
    let truncated = bound(&mut msg);
    Some(Mime { msg, truncated })
}

/// [`parse`], with input mail-parser finds nothing in (empty) read as one empty text part.
pub fn parse_or_empty(raw: &[u8]) -> Mime<'_> {
    parse(raw).unwrap_or_else(|| Mime {
        msg: Message {
            parts: vec![MessagePart {
                headers: vec![],
                is_encoding_problem: false,
                body: PartType::Text(Cow::Borrowed("")),
                encoding: mail_parser::Encoding::None,
                offset_header: 0,
                offset_body: 0,
                offset_end: 0,
            }],
            html_body: vec![],
            text_body: vec![],
            attachments: vec![],
            raw_message: Cow::Borrowed(raw),
        },
        truncated: false,
    })
}

/// The top-level header of a message, at most [`MAX_HEADER_LINES`] lines and
/// [`MAX_HEADER_BYTES`] bytes of it (`complete` says whether that was all of it).
pub fn parse_header(raw: &[u8]) -> Option<(Message<'_>, bool)> {
    let end = header_end(raw);
    let (cut, complete) = header_cut(raw, end);
    let head = raw.get(..cut).unwrap_or(raw);
    let msg = std::panic::catch_unwind(|| MessageParser::default().parse_headers(head))
        .ok()
        .flatten()?;
    Some((msg, complete))
}

/// Where a bounded read of the header (ending at `end`) stops, and whether it is whole.
fn header_cut(raw: &[u8], end: usize) -> (usize, bool) {
    let head = raw.get(..end).unwrap_or(raw);
    let limit = head.len().min(MAX_HEADER_BYTES);
    match memchr::memchr_iter(b'\n', head).nth(MAX_HEADER_LINES - 1) {
        Some(i) if i + 1 < end => ((i + 1).min(limit), false),
        _ => (limit, limit == end),
    }
}

/// Lines in header sections, as a parser will see them (over-counting rather than under):
/// the message's own header, every header after a `--` line (a part's, if that line is a
/// boundary), and the header of a message/rfc822 body. Body lines are not counted, so a
/// long log file attached as text costs nothing here.
fn field_lines(raw: &[u8]) -> usize {
    let mut n = 0;
    let mut start = 0;
    let mut in_header = true;
    let mut nested = false; // this header announced a message/rfc822 (or global) body
    for i in memchr::memchr_iter(b'\n', raw) {
        let line = raw.get(start..i).unwrap_or_default();
        start = i + 1;
        if in_header {
            if line.is_empty() || line == b"\r" {
                // The body starts, unless it is itself a message with a header.
                in_header = std::mem::take(&mut nested);
                continue;
            }
            n += 1;
            if n > MAX_FIELD_LINES {
                break;
            }
            if !nested && line.len() < 1024 {
                let lower = line.to_ascii_lowercase();
                nested = memchr::memmem::find(&lower, b"message/rfc822").is_some()
                    || memchr::memmem::find(&lower, b"message/global").is_some();
            }
        } else if line.starts_with(b"--") {
            in_header = true;
            nested = false;
        }
    }
    n
}

/// The header of a message (bounded as [`parse_header`]) and its body as one opaque part.
fn opaque(raw: &[u8]) -> Option<Mime<'_>> {
    let (mut msg, _) = parse_header(raw)?;
    let body = header_end(raw);
    if let Some(p) = msg.parts.first_mut() {
        p.offset_body = body as u32;
        p.offset_end = raw.len() as u32;
        p.body = PartType::Binary(Cow::Borrowed(raw.get(body..).unwrap_or_default()));
        p.is_encoding_problem = true;
    }
    msg.parts.truncate(1);
    msg.text_body.clear();
    msg.html_body.clear();
    msg.attachments.clear();
    Some(Mime {
        msg,
        truncated: true,
    })
}

/// Where the body starts: after the first empty line (CRLF or LF), or at the end.
fn header_end(raw: &[u8]) -> usize {
    if raw.starts_with(b"\r\n") {
        return 2;
    }
    if raw.starts_with(b"\n") {
        return 1;
    }
    for i in memchr::memchr_iter(b'\n', raw) {
        let rest = raw.get(i + 1..).unwrap_or_default();
        if rest.starts_with(b"\r\n") {
            return i + 3;
        }
        if rest.starts_with(b"\n") {
            return i + 2;
        }
    }
    raw.len()
}

fn boundary_lines(raw: &[u8]) -> usize {
    let first = usize::from(raw.starts_with(b"--"));
    first
        + memchr::memmem::find_iter(raw, b"\n--")
            .take(MAX_BOUNDARY_LINES + 1)
            .count()
}

/// Make parts past the bounds opaque; true when any was. Iterative: the tree may be deep.
fn bound(root: &mut Message<'_>) -> bool {
    // First find the parts to cut (as the path of message-part indices to their message,
    // and their index there), reading only; then cut them.
    let mut cuts: Vec<(Vec<usize>, usize)> = Vec::new();
    // (path to the message, the message, part index, depth)
    let mut stack: Vec<(Vec<usize>, &Message<'_>, usize, usize)> = vec![(Vec::new(), root, 0, 0)];
    let mut seen = 0usize;
    while let Some((path, m, idx, depth)) = stack.pop() {
        let Some(p) = m.parts.get(idx) else { continue };
        seen += 1;
        let nested = matches!(p.body, PartType::Multipart(_) | PartType::Message(_));
        if nested && (depth >= MAX_DEPTH || seen >= MAX_PARTS) {
            cuts.push((path, idx));
            continue;
        }
        match &p.body {
            PartType::Multipart(children) => {
                // Reversed so that parts are visited (and counted) in order.
                for &c in children.iter().rev() {
                    // Children always follow their parent; anything else is not a tree.
                    if (c as usize) > idx {
                        stack.push((path.clone(), m, c as usize, depth + 1));
                    }
                }
            }
            PartType::Message(inner) => {
                let mut inner_path = path.clone();
                inner_path.push(idx);
                stack.push((inner_path, inner, 0, depth + 1));
            }
            _ => {}
        }
    }
    if cuts.is_empty() {
        return false;
    }
    let mut removed = Vec::new();
    for (path, idx) in cuts {
        let Some(m) = message_at(root, &path) else {
            continue;
        };
        if let Some(p) = m.parts.get_mut(idx) {
            make_opaque(p, &mut removed);
        }
    }
    dispose(removed);
    true
}

fn make_opaque<'a>(p: &mut MessagePart<'a>, removed: &mut Vec<Message<'a>>) {
    if let PartType::Message(inner) =
        std::mem::replace(&mut p.body, PartType::Binary(Cow::Borrowed(&[])))
    {
        removed.push(inner);
    }
    p.is_encoding_problem = true;
}

fn message_at<'m, 'a>(root: &'m mut Message<'a>, path: &[usize]) -> Option<&'m mut Message<'a>> {
    let mut m = root;
    for &i in path {
        match &mut m.parts.get_mut(i)?.body {
            PartType::Message(inner) => m = inner,
            _ => return None,
        }
    }
    Some(m)
}

/// Depth of the structure below `m` (0 for a single part), computed without recursion.
#[cfg(test)]
fn depth(m: &Message<'_>) -> usize {
    let mut max = 0;
    let mut stack = vec![(m, 0usize, 0usize)];
    let mut visits = 0usize;
    while let Some((m, idx, d)) = stack.pop() {
        visits += 1;
        if visits > 4 * MAX_BOUNDARY_LINES {
            break;
        }
        max = max.max(d);
        match m.parts.get(idx).map(|p| &p.body) {
            Some(PartType::Multipart(children)) => {
                for &c in children {
                    if (c as usize) > idx {
                        stack.push((m, c as usize, d + 1));
                    }
                }
            }
            Some(PartType::Message(inner)) => stack.push((inner, 0, d + 1)),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_messages(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        v.extend_from_slice(b"Subject: core\r\n\r\nhello\r\n");
        v
    }

    fn nested_multiparts(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..n {
            v.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n")
                    .as_bytes(),
            );
        }
        v.extend_from_slice(b"Content-Type: text/plain\r\n\r\nleaf\r\n");
        for i in (0..n).rev() {
            v.extend_from_slice(format!("--b{i}--\r\n").as_bytes());
        }
        v
    }

    #[test]
    fn deep_message_nesting_is_cut_and_dropped_without_recursion() {
        // Run on a small stack: a recursive walk or drop of 50,000 levels would overflow it.
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let raw = nested_messages(50_000);
                let m = parse(&raw).unwrap();
                assert!(m.truncated);
                assert_eq!(depth(&m), MAX_DEPTH);
                drop(m);
                let raw = nested_multiparts(3_000);
                let m = parse(&raw).unwrap();
                assert!(m.truncated);
                assert_eq!(depth(&m), MAX_DEPTH);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn ordinary_messages_are_untouched() {
        let raw = nested_multiparts(5);
        let m = parse(&raw).unwrap();
        assert!(!m.truncated);
        assert_eq!(depth(&m), 5);
        let raw = nested_messages(3);
        let m = parse(&raw).unwrap();
        assert!(!m.truncated);
        assert_eq!(depth(&m), 3);
    }

    #[test]
    fn many_parts_are_bounded() {
        let mut raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        for _ in 0..(MAX_PARTS + 50) {
            raw.extend_from_slice(b"--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\n\r\nx\r\n--c--\r\n");
        }
        raw.extend_from_slice(b"--b--\r\n");
        let m = parse(&raw).unwrap();
        assert!(m.truncated);
        // Far too many boundary lines: one opaque body after the header.
        let mut raw = b"Subject: s\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        for _ in 0..(MAX_BOUNDARY_LINES + 1) {
            raw.extend_from_slice(b"--b\r\n\r\n");
        }
        let m = parse(&raw).unwrap();
        assert!(m.truncated);
        assert_eq!(m.parts.len(), 1);
        assert_eq!(m.parts[0].offset_body as usize, header_end(&raw));
        assert_eq!(m.subject(), Some("s"));
    }

    #[test]
    fn many_header_fields_are_bounded() {
        let mut raw = b"From: a@b.c\r\nSubject: s\r\n".to_vec();
        for _ in 0..(MAX_FIELD_LINES + 1) {
            raw.extend_from_slice(b"a:\r\n");
        }
        raw.extend_from_slice(b"\r\nbody\r\n");
        let m = parse(&raw).unwrap();
        assert!(m.truncated);
        assert_eq!(m.parts.len(), 1);
        assert!(m.parts[0].headers.len() <= MAX_HEADER_LINES);
        assert_eq!(m.subject(), Some("s"));
        let (h, complete) = parse_header(&raw).unwrap();
        assert!(!complete);
        assert!(h.parts[0].headers.len() <= MAX_HEADER_LINES);
        let (h, complete) = parse_header(b"Subject: x\r\n\r\nbody").unwrap();
        assert!(complete);
        assert_eq!(h.subject(), Some("x"));
        let (_, complete) = parse_header(b"Subject: x").unwrap();
        assert!(complete, "a message that is all header");
    }

    #[test]
    fn body_lines_are_not_header_fields() {
        // A log of 200,000 short lines with colons, attached as text: still split.
        let mut raw = b"Subject: log\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n".to_vec();
        for i in 0..200_000 {
            raw.extend_from_slice(format!("12:00:{i:02} ok\r\n").as_bytes());
        }
        raw.extend_from_slice(b"--b--\r\n");
        assert!(field_lines(&raw) < 10);
        let m = parse(&raw).unwrap();
        assert!(!m.truncated);
        // Fields in the header of a nested message count.
        let mut nested = b"Content-Type: message/rfc822\r\n\r\n".to_vec();
        for _ in 0..(MAX_FIELD_LINES + 1) {
            nested.extend_from_slice(b"a:\r\n");
        }
        assert!(field_lines(&nested) > MAX_FIELD_LINES);
    }

    #[test]
    fn header_end_finds_the_empty_line() {
        assert_eq!(header_end(b"A: b\r\n\r\nbody"), 8);
        assert_eq!(header_end(b"A: b\n\nbody"), 6);
        assert_eq!(header_end(b"\r\nbody"), 2);
        assert_eq!(header_end(b"A: b"), 4);
    }
}
