//! 8BITMIME downgrade (RFC 6152 §3): an 8-bit message for a next hop that takes only
//! 7-bit data is re-encoded instead of bounced, when that can be done without changing
//! what the recipient reads. Each leaf part whose body has 8-bit octets gets
//! `Content-Transfer-Encoding: quoted-printable` (RFC 2045 §6.7) in place of its old one.
//! Not convertible (`None`): 8-bit octets in a header (that needs SMTPUTF8, RFC 6532),
//! inside a nested `message/*` part (RFC 2046 §5.2.1 forbids encoding those), a part
//! declared `binary`, or anywhere else the conversion did not reach. DKIM signatures made
//! before the conversion break (RFC 6376 §5.3 tells signers to convert first); yubin signs
//! what it sends, and the driver signs after converting.

use mail_parser::PartType;

/// The message with every 8-bit body re-encoded as quoted-printable, or `None` when it
/// cannot be converted (see the module notes).
pub fn downgrade_8bit(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_ascii() {
        return Some(raw.to_vec());
    }
    let msg = crate::mime::parse(raw)?;
    if msg.truncated {
        return None;
    }
    // (start, end, replacement) in order of position.
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    let mut has_mime_version = false;
    for (i, part) in msg.parts.iter().enumerate() {
        let (h, b, e) = (
            part.offset_header as usize,
            part.offset_body as usize,
            part.offset_end as usize,
        );
        let header = raw.get(h..b)?;
        if !header.is_ascii() {
            return None;
        }
        if i == 0 {
            has_mime_version = header_names(header).any(|n| n.eq_ignore_ascii_case("MIME-Version"));
        }
        let body = raw.get(b..e)?;
        match &part.body {
            PartType::Multipart(_) => continue,
            PartType::Message(_) if !body.is_ascii() => return None,
            _ if body.is_ascii() => continue,
            _ => {}
        }
        let cte = header_value(header, "Content-Transfer-Encoding")
            .map(|v| v.trim().to_ascii_lowercase());
        if cte.as_deref() == Some("binary") {
            return None;
        }
        let mut new_header = strip_field(header, "Content-Transfer-Encoding")?;
        if i == 0 && !has_mime_version {
            insert_field(&mut new_header, b"MIME-Version: 1.0\r\n")?;
        }
        insert_field(
            &mut new_header,
            b"Content-Transfer-Encoding: quoted-printable\r\n",
        )?;
        let mut replacement = new_header;
        replacement.extend(quoted_printable(body));
        edits.push((h, e, replacement));
    }
    edits.sort_by_key(|e| e.0);
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 4);
    let mut at = 0;
    for (start, end, rep) in edits {
        if start < at {
            // Overlapping parts: the structure is not what it seemed.
            return None;
        }
        out.extend_from_slice(raw.get(at..start)?);
        out.extend(rep);
        at = end;
    }
    out.extend_from_slice(raw.get(at..)?);
    // Whatever the conversion did not reach (a preamble, an epilogue) keeps it 8-bit.
    out.is_ascii().then_some(out)
}

/// The header's lines grouped into fields (a field's continuation lines with it).
fn fields(header: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < header.len() {
        let end = memchr::memchr(b'\n', header.get(i..).unwrap_or_default())
            .map_or(header.len(), |p| i + p + 1);
        let line = header.get(i..end).unwrap_or_default();
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation && i > start {
            out.push(header.get(start..i).unwrap_or_default());
            start = i;
        }
        i = end;
    }
    if start < header.len() {
        out.push(header.get(start..).unwrap_or_default());
    }
    out
}

fn field_name(f: &[u8]) -> &[u8] {
    let end = memchr::memchr(b':', f).unwrap_or(0);
    f.get(..end).unwrap_or_default().trim_ascii()
}

fn header_names(header: &[u8]) -> impl Iterator<Item = String> + '_ {
    fields(header)
        .into_iter()
        .map(|f| String::from_utf8_lossy(field_name(f)).into_owned())
}

fn header_value(header: &[u8], name: &str) -> Option<String> {
    fields(header).into_iter().find_map(|f| {
        let colon = memchr::memchr(b':', f)?;
        field_name(f)
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| String::from_utf8_lossy(f.get(colon + 1..).unwrap_or_default()).into_owned())
    })
}

/// The header without the fields of this name.
fn strip_field(header: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(header.len());
    for f in fields(header) {
        if !field_name(f).eq_ignore_ascii_case(name.as_bytes()) {
            out.extend_from_slice(f);
        }
    }
    Some(out)
}

/// Put a field before the blank line that ends the header (which must be there).
fn insert_field(header: &mut Vec<u8>, field: &[u8]) -> Option<()> {
    let blank = if header.ends_with(b"\r\n\r\n") || header == b"\r\n" {
        2
    } else if header.ends_with(b"\n\n") || header == b"\n" {
        1
    } else {
        return None;
    };
    let at = header.len() - blank;
    header.splice(at..at, field.iter().copied());
    Some(())
}

/// RFC 2045 §6.7: quoted-printable, CRLF line ends, lines of at most 76 characters.
pub fn quoted_printable(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 3);
    let mut lines = body.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        if last && line.is_empty() {
            break;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut len = 0;
        for (i, &b) in line.iter().enumerate() {
            let at_end = i + 1 == line.len();
            let literal = match b {
                b' ' | b'\t' => !at_end,
                b'=' => false,
                33..=126 => true,
                _ => false,
            };
            let width = if literal { 1 } else { 3 };
            if len + width > 75 {
                out.extend_from_slice(b"=\r\n");
                len = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(format!("={b:02X}").as_bytes());
            }
            len += width;
        }
        if !last {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_message() {
        let m = "From: a@b\r\nSubject: x\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße = ok \r\n"
            .as_bytes();
        let d = String::from_utf8(downgrade_8bit(m).unwrap()).unwrap();
        assert!(d.contains("MIME-Version: 1.0\r\n"), "{d}");
        assert!(
            d.contains("Content-Transfer-Encoding: quoted-printable\r\n\r\n"),
            "{d}"
        );
        assert!(!d.contains("8bit"));
        assert!(d.ends_with("\r\n\r\nGr=C3=BC=C3=9Fe =3D ok=20\r\n"), "{d}");
        // What a reader decodes is what was sent.
        let parsed = crate::mime::parse(d.as_bytes()).unwrap();
        assert_eq!(parsed.body_text(0).unwrap(), "Grüße = ok \r\n");
    }

    #[test]
    fn multipart_and_refusals() {
        let m = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nété\r\n--b\r\nContent-Type: text/plain\r\n\r\nascii\r\n--b--\r\n".as_bytes();
        let d = String::from_utf8(downgrade_8bit(m).unwrap()).unwrap();
        assert!(d.contains("charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A9t=C3=A9\r\n--b"), "{d}");
        assert!(d.contains("Content-Type: text/plain\r\n\r\nascii"));
        let parsed = crate::mime::parse(d.as_bytes()).unwrap();
        assert_eq!(parsed.body_text(0).unwrap().trim_end(), "été");
        // An 8-bit header, a nested message, a binary part: not convertible.
        assert!(downgrade_8bit("Subject: é\r\n\r\nx\r\n".as_bytes()).is_none());
        assert!(
            downgrade_8bit(
                "Content-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\né\r\n".as_bytes()
            )
            .is_none()
        );
        assert!(
            downgrade_8bit("Content-Transfer-Encoding: binary\r\n\r\né\r\n".as_bytes()).is_none()
        );
        assert_eq!(downgrade_8bit(b"a: b\r\n\r\nc").unwrap(), b"a: b\r\n\r\nc");
    }

    #[test]
    fn long_lines_are_soft_broken() {
        let body = "é".repeat(100);
        let q = quoted_printable(body.as_bytes());
        assert!(q.split(|&b| b == b'\n').all(|l| l.len() <= 77));
        assert!(q.is_ascii());
    }
}
