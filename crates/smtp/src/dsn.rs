//! Delivery status notification parameters (RFC 3461): what the sender asked to be told
//! (NOTIFY), how much of the message to return (RET), its envelope id (ENVID) and each
//! recipient's original address (ORCPT). Shared by the server session, which takes them,
//! and the client, which passes them on to a next hop that offers DSN.

/// RFC 3461 §4.1: when to report on a recipient. `None` in a [`crate::Message`] means the
/// sender said nothing, which is treated as FAILURE,DELAY (§4.1: "the default is ...
/// FAILURE,DELAY" is the usual practice of Postfix and Sendmail).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    /// NOTIFY=NEVER.
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };
    /// What applies when the sender gave no NOTIFY.
    pub const DEFAULT: Notify = Notify {
        success: false,
        failure: true,
        delay: true,
    };

    /// The parameter's value (`NEVER` or a comma list, RFC 3461 §4.1).
    pub fn keyword(&self) -> String {
        let mut v = Vec::new();
        if self.success {
            v.push("SUCCESS");
        }
        if self.failure {
            v.push("FAILURE");
        }
        if self.delay {
            v.push("DELAY");
        }
        if v.is_empty() {
            "NEVER".into()
        } else {
            v.join(",")
        }
    }

    /// Parse the stored or wire form; `None` for anything else (NEVER with others
    /// included: RFC 3461 §4.1 forbids it).
    pub fn parse(s: &str) -> Option<Notify> {
        let mut n = Notify::NEVER;
        let mut never = false;
        for w in s.split(',') {
            match w.trim().to_ascii_uppercase().as_str() {
                "NEVER" => never = true,
                "SUCCESS" => n.success = true,
                "FAILURE" => n.failure = true,
                "DELAY" => n.delay = true,
                _ => return None,
            }
        }
        if never && n != Notify::NEVER {
            return None;
        }
        Some(n)
    }
}

/// RFC 3461 §4.3: return the whole message or only its header in a failure report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

impl Ret {
    pub fn keyword(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
    pub fn parse(s: &str) -> Option<Ret> {
        match s.to_ascii_uppercase().as_str() {
            "FULL" => Some(Ret::Full),
            "HDRS" => Some(Ret::Hdrs),
            _ => None,
        }
    }
}

/// The longest ENVID taken (RFC 3461 §4.4: 100 characters) and ORCPT (§4.2: 500).
pub const MAX_ENVID: usize = 100;
pub const MAX_ORCPT: usize = 500;

/// RFC 3461 §4: xtext, `+XX` for `+`, `=`, and anything outside `!`..`~`.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// The inverse of [`xtext_encode`]; `None` for a malformed `+XX` or a result that is not
/// UTF-8 (RFC 6533 allows UTF-8 original recipients).
pub fn xtext_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'+' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if (b'!'..=b'~').contains(&c) && c != b'=' {
            out.push(c);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// An ORCPT value `addr-type;xtext` as the server keeps it: `rfc822;addr` decoded. The
/// type must be `rfc822` or `utf-8` (RFC 3461 §4.2, RFC 6533 §3).
pub fn parse_orcpt(v: &str) -> Option<(String, String)> {
    let (ty, addr) = v.split_once(';')?;
    let ty = ty.trim().to_ascii_lowercase();
    if ty != "rfc822" && ty != "utf-8" {
        return None;
    }
    let addr = xtext_decode(addr.trim())?;
    (!addr.is_empty() && addr.len() <= MAX_ORCPT).then_some((ty, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify() {
        assert_eq!(
            Notify::parse("SUCCESS,delay").unwrap().keyword(),
            "SUCCESS,DELAY"
        );
        assert_eq!(Notify::parse("NEVER"), Some(Notify::NEVER));
        assert_eq!(Notify::parse("NEVER,SUCCESS"), None);
        assert_eq!(Notify::parse("SOMETIMES"), None);
        assert_eq!(Notify::DEFAULT.keyword(), "FAILURE,DELAY");
    }

    #[test]
    fn xtext() {
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext_decode("a+2Bb+3Dc+20d").unwrap(), "a+b=c d");
        assert_eq!(xtext_decode("a+2"), None);
        assert_eq!(xtext_decode("a+zz"), None);
        assert_eq!(xtext_decode("a=b"), None);
        // Non-ASCII encoded to +XX and back.
        assert_eq!(xtext_decode(&xtext_encode("jörg@x")).unwrap(), "jörg@x");
        assert_eq!(
            parse_orcpt("rfc822;bob+2Bx@example.com"),
            Some(("rfc822".into(), "bob+x@example.com".into()))
        );
        assert_eq!(parse_orcpt("x400;foo"), None);
    }
}
