//! What an IMAP URL names, read through a [`Backend`]: CATENATE's parts (RFC 4469),
//! URLFETCH (RFC 4467 §6.3) and BURL (RFC 4468). URLAUTH tokens are checked here too:
//! the INTERNAL mechanism is the backend's keyed MAC of the URL's rump (RFC 4467 §7),
//! compared in constant time.

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName, Section};

use crate::backend::{Backend, BackendError};
use crate::imapurl::{self, ImapUrl};
use crate::message::Parsed;

/// The metadata entry that holds a mailbox's URLAUTH key; never shown to clients.
pub const URLAUTH_KEY_ENTRY: &str = "/private/vendor/yubin/urlauth-key";

/// Why a URL names nothing (answered `[BADURL]` or NIL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    Invalid,
    Backend(String),
}

impl From<BackendError> for UrlError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::NotFound(_) => UrlError::Invalid,
            other => UrlError::Backend(format!("{other:?}")),
        }
    }
}

/// `BODY[section]` as imap-codec reads it; `None` when it is no section.
fn parse_section(s: &str) -> Option<Section<'static>> {
    let cmd = format!("x FETCH 1 BODY.PEEK[{s}]\r\n");
    let (rest, c) = CommandCodec::default().decode(cmd.as_bytes()).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let CommandBody::Fetch {
        macro_or_item_names: MacroOrMessageDataItemNames::MessageDataItemNames(names),
        ..
    } = c.body
    else {
        return None;
    };
    match names.into_iter().next()? {
        MessageDataItemName::BodyExt { section, .. } => {
            section.map(bounded_static::IntoBoundedStatic::into_static)
        }
        _ => None,
    }
}

/// The bytes `url` names in the backend's mailboxes (`selected`: the mailbox a relative
/// `;UID=` URL is read in). The caller checks URLAUTH first where it applies.
pub fn resolve<B: Backend>(
    backend: &mut B,
    url: &ImapUrl,
    selected: Option<&str>,
) -> Result<Vec<u8>, UrlError> {
    let name = match (&url.mailbox, selected) {
        (Some(m), _) if m.eq_ignore_ascii_case("INBOX") => "INBOX".to_owned(),
        (Some(m), _) => m.clone(),
        (None, Some(s)) => s.to_owned(),
        (None, None) => return Err(UrlError::Invalid),
    };
    if let Some(owner) = &url.user
        && backend
            .user()
            .is_none_or(|me| !me.eq_ignore_ascii_case(owner))
    {
        // Another account's mailboxes are not readable here.
        return Err(UrlError::Invalid);
    }
    let mb = backend.mailbox(&name)?;
    if url.uidvalidity.is_some_and(|v| v != mb.uidvalidity) {
        return Err(UrlError::Invalid);
    }
    let raw = backend.read(mb.id, url.uid)?;
    let bytes = match &url.section {
        None => raw,
        Some(s) if s.is_empty() => raw,
        Some(s) => {
            let section = parse_section(s).ok_or(UrlError::Invalid)?;
            Parsed::new(&raw).section(Some(&section))
        }
    };
    Ok(match url.partial {
        None => bytes,
        Some((offset, len)) => {
            let from = (offset as usize).min(bytes.len());
            let to = len.map_or(bytes.len(), |l| {
                from.saturating_add(l as usize).min(bytes.len())
            });
            bytes.get(from..to).unwrap_or_default().to_vec()
        }
    })
}

/// Whether `url` names a message that is there, without reading it (GENURLAUTH).
pub fn exists<B: Backend>(backend: &mut B, url: &ImapUrl) -> bool {
    let Some(name) = &url.mailbox else {
        return false;
    };
    let name = if name.eq_ignore_ascii_case("INBOX") {
        "INBOX"
    } else {
        name.as_str()
    };
    if url.user.as_ref().is_some_and(|owner| {
        backend
            .user()
            .is_none_or(|me| !me.eq_ignore_ascii_case(owner))
    }) {
        return false;
    }
    let Ok(mb) = backend.mailbox(name) else {
        return false;
    };
    if url.uidvalidity.is_some_and(|v| v != mb.uidvalidity) {
        return false;
    }
    backend
        .messages(mb.id)
        .is_ok_and(|m| m.binary_search_by_key(&url.uid, |x| x.uid).is_ok())
}

/// Who asks for a URLAUTH URL: the logged-in user (if any), and whether it is the
/// submission server acting for them (RFC 4467 §3 `submit+`).
pub struct Requester<'a> {
    pub user: Option<&'a str>,
    pub submit: bool,
}

fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// RFC 4467 §6.3: a URLAUTH URL is good when it is signed with the owner's key, has not
/// expired, and its access identifier admits the requester.
pub fn verify<B: Backend>(backend: &mut B, url: &ImapUrl, who: &Requester<'_>, now: i64) -> bool {
    let (Some(access), Some(mech), Some(token), Some(owner)) =
        (&url.access, &url.mechanism, &url.token, &url.user)
    else {
        return false;
    };
    if mech != "INTERNAL" {
        return false;
    }
    if let Some(exp) = &url.expire {
        match chrono::DateTime::parse_from_rfc3339(exp) {
            Ok(t) if t.timestamp() > now => {}
            _ => return false,
        }
    }
    let admitted = match access.as_str() {
        "anonymous" => true,
        "authuser" => who.user.is_some(),
        a => match (a.starts_with("submit+"), imapurl::access_user(a), who.user) {
            (true, Some(x), Some(u)) => who.submit && same(&x, u),
            (false, Some(x), Some(u)) => same(&x, u),
            _ => false,
        },
    };
    if !admitted {
        return false;
    }
    // Only the owner's own keys are at hand (the backend is the owner's).
    if backend.user().is_none_or(|me| !same(&me, owner)) {
        return false;
    }
    let name = match &url.mailbox {
        Some(m) if m.eq_ignore_ascii_case("INBOX") => "INBOX".to_owned(),
        Some(m) => m.clone(),
        None => return false,
    };
    let Ok(want) = backend.urlauth_sign(&name, url.rump.as_bytes()) else {
        return false;
    };
    let got = token.to_ascii_lowercase();
    want.len() == got.len()
        && want
            .bytes()
            .zip(got.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections() {
        assert_eq!(parse_section("HEADER"), Some(Section::Header(None)));
        assert!(matches!(parse_section("1.2"), Some(Section::Part(_))));
        assert!(matches!(parse_section("1.MIME"), Some(Section::Mime(_))));
        assert!(parse_section("HEADER.FIELDS (SUBJECT)").is_some());
        assert_eq!(parse_section("NONSENSE"), None);
        assert_eq!(parse_section("1]<0.5> BODY[2"), None);
    }
}
