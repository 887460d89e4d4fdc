//! What the full-text index keeps of a message: its headers, addresses, subject and the
//! decoded text of its body parts. Extracted with mail-parser when the body is staged, so
//! the single writer only inserts rows.

use mail_parser::{HeaderValue, PartType};
use yubin_model::mime;

/// Longest body text indexed per message; past it, SEARCH BODY finds nothing more.
const MAX_BODY_TEXT: usize = 4 << 20;
/// References kept per message for THREAD (the last ones; yubin-imap uses as many).
const MAX_REFERENCES: usize = 100;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchText {
    /// Sort and thread keys (the `uid`, `size` and `internal_date` are filled on read).
    pub sort: yubin_model::SortInfo,
    pub pop3_size: u64,
    pub headers: String,
    pub from: String,
    pub to: String,
    pub cc: String,
    pub bcc: String,
    pub subject: String,
    pub body: String,
}

fn addresses(v: &HeaderValue<'_>) -> String {
    let one = |x: &mail_parser::Addr<'_>| {
        format!(
            "{} <{}>",
            x.name.as_deref().unwrap_or(""),
            x.address.as_deref().unwrap_or("")
        )
    };
    match v {
        // Group names are searched too (SEARCH TO "team" finds `To: team: a@b;`).
        HeaderValue::Address(mail_parser::Address::Group(groups)) => groups
            .iter()
            .map(|g| {
                let members: Vec<String> = g.addresses.iter().map(one).collect();
                match &g.name {
                    Some(n) => format!("{n}: {};", members.join(", ")),
                    None => members.join(", "),
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
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
        HeaderValue::Text(t) => t.to_string(),
        _ => String::new(),
    }
}

/// Everything the index keeps of a message (parses the whole message: the indexer's work).
pub fn extract(raw: &[u8]) -> SearchText {
    extract_parts(raw, true)
}

/// What the delivery itself stores (SORT/THREAD keys, POP3 size): the header only, so a
/// large body costs the SMTP session no MIME parse.
pub fn extract_envelope(raw: &[u8]) -> SearchText {
    extract_parts(raw, false)
}

fn extract_parts(raw: &[u8], body: bool) -> SearchText {
    let mut t = SearchText {
        pop3_size: yubin_model::pop3_size(raw),
        ..SearchText::default()
    };
    // The whole message through the bounded parser (deep nesting is cut, and dropped
    // without recursion); the header alone cannot nest.
    let parsed = if body {
        mime::parse(raw)
    } else {
        mime::parse_header(raw).map(|(m, _)| mime::Mime::headers(m))
    };
    let Some(msg) = parsed else {
        return t;
    };
    if let Some(root) = msg.parts.first() {
        if body {
            let end = (root.offset_body as usize).min(raw.len());
            // Header lines as sent, unfolded, plus decoded values, so both match.
            t.headers = String::from_utf8_lossy(&raw[..end])
                .replace("\r\n\t", " ")
                .replace("\r\n ", " ");
        }
        let first = |v: &HeaderValue<'_>| -> (String, String) {
            match v {
                // RFC 5256 §3 / RFC 5957 §3 take the first address of the ENVELOPE, and
                // for a group that is its start marker: the group name (as Dovecot sorts).
                HeaderValue::Address(mail_parser::Address::Group(groups))
                    if groups.first().is_some_and(|g| g.name.is_some()) =>
                {
                    let name = groups
                        .first()
                        .and_then(|g| g.name.as_deref())
                        .unwrap_or_default();
                    (name.to_lowercase(), name.to_owned())
                }
                HeaderValue::Address(a) => a
                    .first()
                    .map(|x| {
                        let addr = x.address.as_deref().unwrap_or("");
                        let local = addr.split('@').next().unwrap_or("").to_lowercase();
                        let display = x.name.as_deref().filter(|n| !n.is_empty()).unwrap_or(addr);
                        (local, display.to_owned())
                    })
                    .unwrap_or_default(),
                _ => Default::default(),
            }
        };
        let ids = |v: &HeaderValue<'_>| -> Vec<String> {
            match v {
                HeaderValue::Text(t) => vec![t.to_string()],
                HeaderValue::TextList(l) => l.iter().map(|x| x.to_string()).collect(),
                _ => vec![],
            }
        };
        let mut in_reply_to = Vec::new();
        for h in &root.headers {
            let name = h.name.as_str().to_ascii_lowercase();
            match name.as_str() {
                "from" if t.sort.from.is_empty() => {
                    (t.sort.from, t.sort.from_display) = first(&h.value)
                }
                "to" if t.sort.to.is_empty() => (t.sort.to, t.sort.to_display) = first(&h.value),
                "cc" if t.sort.cc.is_empty() => t.sort.cc = first(&h.value).0,
                "message-id" => t.sort.message_id = ids(&h.value).join(" "),
                "references" => t.sort.references = ids(&h.value),
                "in-reply-to" => in_reply_to = ids(&h.value),
                "date" => {
                    let d = h.value.as_datetime();
                    t.sort.sent = d.map(|d| d.to_timestamp());
                    // RFC 3501 §6.4.4: SENT* compare the date as written, zone disregarded.
                    t.sort.sent_day = d
                        .filter(|d| (1..=12).contains(&d.month) && (1..=31).contains(&d.day))
                        .map(|d| {
                            yubin_model::days_from_civil(
                                i64::from(d.year),
                                u32::from(d.month),
                                u32::from(d.day),
                            )
                        });
                }
                _ => {}
            }
            if !body {
                // The delivery needs only the SORT/THREAD keys above.
                if name == "subject"
                    && let Some(s) = h.value.as_text()
                {
                    t.sort.subject = s.to_owned();
                }
                continue;
            }
            match name.as_str() {
                "from" => t.from.push_str(&addresses(&h.value)),
                "to" => t.to.push_str(&addresses(&h.value)),
                "cc" => t.cc.push_str(&addresses(&h.value)),
                "bcc" => t.bcc.push_str(&addresses(&h.value)),
                "subject" => {
                    if let Some(s) = h.value.as_text() {
                        t.subject.push_str(s);
                        t.sort.subject = s.to_owned();
                    }
                }
                _ => {}
            }
            if let Some(s) = h.value.as_text() {
                t.headers.push('\n');
                t.headers.push_str(s);
            }
        }
        if t.sort.references.is_empty() {
            t.sort.references = in_reply_to;
        }
        // THREAD uses the nearest ancestors only; a peer's list may be of any length.
        let refs = &mut t.sort.references;
        refs.drain(..refs.len().saturating_sub(MAX_REFERENCES));
    }
    for p in msg.parts.iter().filter(|_| body) {
        if t.body.len() >= MAX_BODY_TEXT {
            break;
        }
        if let PartType::Text(s) | PartType::Html(s) = &p.body {
            t.body.push_str(s);
            t.body.push('\n');
        }
    }
    if t.body.len() > MAX_BODY_TEXT {
        let mut cut = MAX_BODY_TEXT;
        while !t.body.is_char_boundary(cut) {
            cut -= 1;
        }
        t.body.truncate(cut);
    }
    t
}

#[cfg(test)]
mod tests {
    #[test]
    fn group_names_are_keys_and_text() {
        let t = super::extract(
            b"From: a@b.c\r\nTo: Team Blue: x@y.z, w@y.z;\r\nCc: undisclosed-recipients:;\r\n\r\nhi\r\n",
        );
        assert!(
            t.to.contains("Team Blue:") && t.to.contains("x@y.z"),
            "{}",
            t.to
        );
        assert_eq!(
            (t.sort.to.as_str(), t.sort.to_display.as_str()),
            ("team blue", "Team Blue")
        );
        assert_eq!(t.sort.cc, "undisclosed-recipients");
        assert!(t.cc.contains("undisclosed-recipients"));
    }

    #[test]
    fn extracts_decoded_text() {
        let t = super::extract(
            b"From: =?utf-8?q?J=C3=BCrgen?= <j@x.de>\r\nTo: a@b.c, B <b@b.c>\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nX-Tag: blue\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nSch=C3=B6ne Gr=C3=BC=C3=9Fe\r\n",
        );
        assert!(t.from.contains("Jürgen <j@x.de>"));
        assert!(t.to.contains("B <b@b.c>"));
        assert_eq!(t.subject, "Grüße");
        assert!(t.body.contains("Schöne Grüße"));
        assert!(t.headers.contains("X-Tag: blue"));
        assert_eq!(super::extract(b""), super::SearchText::default());
        assert_eq!(super::extract(b".x\n").pop3_size, 4);
        let raw = b"Subject: hi\r\nMessage-ID: <a@b>\r\n\r\nbody text\r\n";
        let e = super::extract_envelope(raw);
        let full = super::extract(raw);
        assert_eq!((&e.sort, e.pop3_size), (&full.sort, full.pop3_size));
        assert!(e.body.is_empty() && full.body.contains("body text"));
    }
}
