//! Header-section work on raw message bytes: finding fields, removing forged
//! `Authentication-Results`, and writing the fields the decision adds.

/// Header fields of the header section of `data`, as `(start, end, name)` byte ranges
/// (`end` past the field's last line break). Stops at the empty line or at the end.
/// Iterative; a field's continuation lines start with SP or HTAB (RFC 5322 §2.2.3).
pub fn fields(data: &[u8]) -> Vec<(usize, usize, &[u8])> {
    let mut out: Vec<(usize, usize, &[u8])> = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let line_end = memchr::memchr(b'\n', data.get(pos..).unwrap_or_default())
            .map_or(data.len(), |i| pos + i + 1);
        let line = data.get(pos..line_end).unwrap_or_default();
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        match line.first() {
            Some(b' ' | b'\t') => {
                if let Some(last) = out.last_mut() {
                    last.1 = line_end;
                }
            }
            _ => {
                let name_end = memchr::memchr(b':', line).unwrap_or(line.len());
                let name = line.get(..name_end).unwrap_or_default();
                out.push((pos, line_end, trim(name)));
            }
        }
        pos = line_end;
    }
    out
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    b.get(start..end).unwrap_or_default()
}

/// The authserv-id of an `Authentication-Results` value (RFC 8601 §2.2): the first
/// token, after any comments (nested comments skipped with a depth counter, not
/// recursion).
pub fn authserv_id(value: &[u8]) -> Vec<u8> {
    let mut depth = 0usize;
    let mut escaped = false;
    let mut id = Vec::new();
    for &c in value {
        if depth > 0 {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'(' => depth += 1,
                b')' => depth -= 1,
                _ => {}
            }
            continue;
        }
        match c {
            b'(' if id.is_empty() => depth = 1,
            b' ' | b'\t' | b'\r' | b'\n' if id.is_empty() => {}
            b';' | b' ' | b'\t' | b'\r' | b'\n' | b'(' => break,
            _ => id.push(c),
        }
    }
    id
}

/// RFC 8601 §5: an `Authentication-Results` field from outside that claims our
/// authserv-id is removed before our own is added, so that no reader trusts a forged
/// verdict. Returns the message without those fields, or `None` when there were none.
/// Matching ignores case and a trailing dot. The spam verdict fields yubin writes
/// (`X-Spam-Status`, `X-Spam-Flag`) go too: clients and Sieve scripts read them as ours.
pub fn strip_results(data: &[u8], authserv_id_ours: &str) -> Option<Vec<u8>> {
    let ours = authserv_id_ours.trim_end_matches('.').as_bytes();
    let forged: Vec<(usize, usize)> = fields(data)
        .into_iter()
        .filter(|(s, e, name)| {
            name.eq_ignore_ascii_case(b"X-Spam-Status")
                || name.eq_ignore_ascii_case(b"X-Spam-Flag")
                || name.eq_ignore_ascii_case(b"Authentication-Results") && {
                    let field = data.get(*s..*e).unwrap_or_default();
                    let colon = memchr::memchr(b':', field).map_or(field.len(), |i| i + 1);
                    let id = authserv_id(field.get(colon..).unwrap_or_default());
                    let id = id.strip_suffix(b".").unwrap_or(&id);
                    id.eq_ignore_ascii_case(ours)
                }
        })
        .map(|(s, e, _)| (s, e))
        .collect();
    if forged.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(data.len());
    let mut at = 0;
    for (s, e) in forged {
        out.extend_from_slice(data.get(at..s).unwrap_or_default());
        at = e;
    }
    out.extend_from_slice(data.get(at..).unwrap_or_default());
    Some(out)
}

/// Text safe inside a header field value: no control characters (a CR or LF from a
/// peer-supplied domain would start a field of its own), at most `max` characters.
pub fn clean(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect()
}

/// `name: head` followed by `items` joined with `sep`, folded (CRLF TAB) before an item
/// that would take the line past 78 characters (RFC 5322 §2.1.1); ends in CRLF.
pub fn folded(name: &str, head: &str, items: &[String], sep: &str) -> String {
    let mut out = format!("{name}: {head}");
    let mut line = out.len();
    for (i, item) in items.iter().enumerate() {
        let piece = if i + 1 < items.len() {
            format!("{item}{sep}")
        } else {
            item.clone()
        };
        if i > 0 && line + piece.len() > 78 {
            out.push_str("\r\n\t");
            line = 1;
        }
        line += piece.len();
        out.push_str(&piece);
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authserv_ids() {
        assert_eq!(authserv_id(b" mx.example.org; spf=pass"), b"mx.example.org");
        assert_eq!(
            authserv_id(b" (c (nested) x) mx.example.org 1; none"),
            b"mx.example.org"
        );
        assert_eq!(authserv_id(b"mx.example.org;"), b"mx.example.org");
        assert_eq!(authserv_id(b"\r\n\tmx (comment); none"), b"mx");
        // Unclosed comments cannot run away: nothing is taken.
        assert_eq!(authserv_id(&[b'('; 100_000]), b"");
    }

    #[test]
    fn strips_only_ours() {
        let msg = b"Authentication-Results: MX.Example.ORG.; dkim=pass\r\n\
            Received: x\r\n\
            Authentication-Results: other.example; spf=fail\r\n\
            authentication-results: (forged)\r\n mx.example.org;\r\n spf=pass\r\n\
            Subject: hi\r\n\r\nAuthentication-Results: mx.example.org; body\r\n";
        let out = strip_results(msg, "mx.example.org").unwrap();
        assert_eq!(
            out,
            b"Received: x\r\nAuthentication-Results: other.example; spf=fail\r\n\
            Subject: hi\r\n\r\nAuthentication-Results: mx.example.org; body\r\n"
        );
        assert!(strip_results(b"Subject: x\r\n\r\nbody", "mx.example.org").is_none());
        // A prefix of our name is somebody else's.
        assert!(
            strip_results(
                b"Authentication-Results: mx.example; none\r\n\r\n",
                "mx.example.org"
            )
            .is_none()
        );
    }

    #[test]
    fn fields_without_body_or_crlf() {
        let f = fields(b"A: 1\nB: 2\n\tmore");
        assert_eq!(f.len(), 2);
        assert_eq!(f[1], (5, 15, &b"B"[..]));
        assert!(fields(b"").is_empty());
    }

    #[test]
    fn folding_and_cleaning() {
        let items: Vec<String> = (0..20).map(|i| format!("RULE_{i}(1.0)")).collect();
        let h = folded("X-Spam-Status", "No, score=1.0", &items, ",");
        assert!(h.lines().all(|l| l.len() <= 78), "{h}");
        assert!(h.ends_with("RULE_19(1.0)\r\n"));
        assert_eq!(clean("a\r\nb\u{7}", 10), "a  b ");
        assert_eq!(clean("abcdef", 3), "abc");
    }
}
