//! IMAP URLs (RFC 5092) naming one message or part, as CATENATE (RFC 4469), URLAUTH
//! (RFC 4467) and BURL (RFC 4468) use them:
//! `imap://user@host/mailbox;UIDVALIDITY=n/;UID=n/;SECTION=s/;PARTIAL=o.l;EXPIRE=t;URLAUTH=access:mech:token`,
//! or relative to the server (`/mailbox;...`) or to the selected mailbox (`;UID=n...`).
//! No crate parses these (the `url` crate knows no IMAP parameters), so it is done here;
//! the grammar is small and has no nesting.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImapUrl {
    /// `imap://user@host`: the owner's name and the server (absolute URLs only).
    pub user: Option<String>,
    pub host: Option<String>,
    /// Decoded (UTF-8, RFC 5092 §3.2); `None`: the selected mailbox (relative URL).
    pub mailbox: Option<String>,
    pub uidvalidity: Option<u32>,
    pub uid: u32,
    /// Decoded, as BODY[...] takes it.
    pub section: Option<String>,
    /// `;PARTIAL=offset[.length]`.
    pub partial: Option<(u32, Option<u32>)>,
    /// `;EXPIRE=` date-time, as sent.
    pub expire: Option<String>,
    /// RFC 4467 §3 `;URLAUTH=access`, lower-cased.
    pub access: Option<String>,
    /// `:mechanism:token` after the access identifier.
    pub mechanism: Option<String>,
    pub token: Option<String>,
    /// The URL up to and including the access identifier (what the token signs).
    pub rump: String,
}

/// Longest URL taken (RFC 4467 URLs are short; a megabyte of `%41` is not).
const MAX_URL: usize = 8 * 1024;

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes what RFC 5092's `achar` does not allow, `/` kept (a mailbox path).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        let ok = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'='
                    | b':'
                    | b'@'
                    | b'&'
                    | b'/'
            );
        if ok {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn strip_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

pub fn parse(url: &str) -> Option<ImapUrl> {
    if url.len() > MAX_URL || url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return None;
    }
    let mut u = ImapUrl::default();
    let mut rest = url;
    if let Some(r) = strip_ci(rest, "imap://") {
        let end = r.find('/')?;
        let server = r.get(..end)?;
        let (userinfo, host) = match server.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, server),
        };
        if let Some(a) = userinfo {
            // `;AUTH=...` names a login mechanism, which does not matter here.
            let name = a.split(';').next()?;
            if !name.is_empty() {
                u.user = Some(decode(name)?);
            }
        }
        let host = host.split(':').next()?;
        if host.is_empty() {
            return None;
        }
        u.host = Some(host.to_ascii_lowercase());
        rest = r.get(end..)?;
    }
    // The mailbox: `/name` up to the first `;` (its parameters) or `/;UID=`.
    if let Some(r) = rest.strip_prefix('/') {
        let end = r.find(';').unwrap_or(r.len());
        let name = r.get(..end)?.trim_end_matches('/');
        if name.is_empty() {
            return None;
        }
        u.mailbox = Some(decode(name)?);
        rest = r.get(end..)?;
    }
    // `;KEY=value` parameters, each optionally after a `/`.
    let mut seen_uid = false;
    let mut params = rest;
    loop {
        params = params.strip_prefix('/').unwrap_or(params);
        if params.is_empty() {
            break;
        }
        let p = params.strip_prefix(';')?;
        let (kv, next) = match p.find([';', '/']) {
            Some(i) => (p.get(..i)?, p.get(i..)?),
            None => (p, ""),
        };
        let (k, v) = kv.split_once('=')?;
        match k.to_ascii_uppercase().as_str() {
            "UIDVALIDITY" if !seen_uid && u.uidvalidity.is_none() => {
                u.uidvalidity = Some(number(v)?)
            }
            "UID" if !seen_uid => {
                u.uid = number(v).filter(|n| *n > 0)?;
                seen_uid = true;
            }
            "SECTION" if seen_uid && u.section.is_none() => u.section = Some(decode(v)?),
            "PARTIAL" if seen_uid && u.partial.is_none() => {
                let (o, l) = match v.split_once('.') {
                    Some((o, l)) => (number(o)?, Some(number(l).filter(|n| *n > 0)?)),
                    None => (number(v)?, None),
                };
                u.partial = Some((o, l));
            }
            "EXPIRE" if seen_uid && u.expire.is_none() => u.expire = Some(decode(v)?),
            "URLAUTH" if seen_uid => {
                // `access[:mech:token]`, the end of the URL (RFC 4467 §3).
                let whole = p.get(8..)?;
                let mut it = whole.splitn(3, ':');
                let access = it.next()?.to_ascii_lowercase();
                let valid = access == "anonymous"
                    || access == "authuser"
                    || access.strip_prefix("user+").is_some_and(|x| !x.is_empty())
                    || access
                        .strip_prefix("submit+")
                        .is_some_and(|x| !x.is_empty());
                if !valid {
                    return None;
                }
                let rump_len = url.len() - whole.len() + access.len();
                u.rump = url.get(..rump_len)?.to_owned();
                u.access = Some(access);
                match (it.next(), it.next()) {
                    (Some(m), Some(t)) if !m.is_empty() && !t.is_empty() => {
                        u.mechanism = Some(m.to_ascii_uppercase());
                        u.token = Some(t.to_owned());
                    }
                    (None, None) => {}
                    _ => return None,
                }
                break;
            }
            _ => return None,
        }
        params = next;
    }
    if !seen_uid {
        return None;
    }
    Some(u)
}

/// The access identifier's user (`user+bob` / `submit+bob`), decoded.
pub fn access_user(access: &str) -> Option<String> {
    access
        .strip_prefix("user+")
        .or_else(|| access.strip_prefix("submit+"))
        .and_then(decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        // RFC 4469 §5's example.
        let u = parse("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME").unwrap();
        assert_eq!(u.mailbox.as_deref(), Some("Drafts"));
        assert_eq!((u.uidvalidity, u.uid), (Some(385759045), 20));
        assert_eq!(u.section.as_deref(), Some("1.MIME"));
        // RFC 4467 §9's example.
        let s = "imap://joe@example.com/INBOX/;uid=20/;section=1.2;urlauth=submit+fred:internal:91354a473744909de610943775f92038";
        let u = parse(s).unwrap();
        assert_eq!(u.user.as_deref(), Some("joe"));
        assert_eq!(u.host.as_deref(), Some("example.com"));
        assert_eq!(u.mailbox.as_deref(), Some("INBOX"));
        assert_eq!(u.section.as_deref(), Some("1.2"));
        assert_eq!(u.access.as_deref(), Some("submit+fred"));
        assert_eq!(u.mechanism.as_deref(), Some("INTERNAL"));
        assert_eq!(
            u.rump,
            "imap://joe@example.com/INBOX/;uid=20/;section=1.2;urlauth=submit+fred"
        );
        assert_eq!(access_user("submit+fred").as_deref(), Some("fred"));
        let u = parse(";UID=5/;PARTIAL=10.20").unwrap();
        assert_eq!(
            (u.mailbox, u.uid, u.partial),
            (None, 5, Some((10, Some(20))))
        );
        let u = parse("/Caf%C3%A9/a%20b;UID=1").unwrap();
        assert_eq!(u.mailbox.as_deref(), Some("Café/a b"));
        for bad in [
            "",
            "/INBOX",
            "/INBOX;UID=0",
            "/INBOX;UID=x",
            "/INBOX;UID=1;UID=2",
            "imap:///INBOX;UID=1",
            "/INBOX;UID=1;URLAUTH=nobody",
            "/INBOX;UID=1;URLAUTH=authuser:internal",
            "/IN BOX;UID=1",
            "/INBOX;UID=1/;SECTION=%zz",
            "/INBOX;FOO=1;UID=1",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert!(parse(&format!("/{};UID=1", "a".repeat(9000))).is_none());
        assert_eq!(encode("Café/a b;"), "Caf%C3%A9/a%20b%3B");
    }
}
