//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463, RFC 2034).

use std::fmt;

/// An enhanced status code `class.subject.detail` (RFC 3463 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Esc(pub u8, pub u16, pub u16);

impl fmt::Display for Esc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub esc: Option<Esc>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, esc: Option<Esc>, text: impl Into<String>) -> Self {
        Reply {
            code,
            esc,
            lines: vec![text.into()],
        }
    }

    /// A reply with an enhanced status code.
    pub fn esc(code: u16, esc: (u8, u16, u16), text: impl Into<String>) -> Self {
        Reply::new(code, Some(Esc(esc.0, esc.1, esc.2)), text)
    }

    pub fn multi(code: u16, lines: Vec<String>) -> Self {
        Reply {
            code,
            esc: None,
            lines,
        }
    }

    /// 4xx or 5xx: counts towards the per-session error limit.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// The first line's text, for logs and tests.
    pub fn text(&self) -> &str {
        self.lines.first().map(String::as_str).unwrap_or("")
    }

    /// Wire form: `code-text` on every line but the last, `code text` on the last
    /// (RFC 5321 §4.2.1). Text never contains CR or LF: they are replaced.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let sep = if i + 1 == n { ' ' } else { '-' };
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let line = match self.esc {
                Some(esc) => format!("{}{}{} {}", self.code, sep, esc, text),
                None => format!("{}{}{}", self.code, sep, text),
            };
            out.extend(
                line.bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line() {
        assert_eq!(
            Reply::esc(250, (2, 1, 0), "Ok").to_bytes(),
            b"250 2.1.0 Ok\r\n"
        );
        let r = Reply::multi(250, vec!["mx.example".into(), "PIPELINING".into()]);
        assert_eq!(r.to_bytes(), b"250-mx.example\r\n250 PIPELINING\r\n");
    }

    #[test]
    fn crlf_in_text_cannot_inject_lines() {
        let r = Reply::new(550, None, "evil\r\n250 ok");
        assert_eq!(r.to_bytes(), b"550 evil  250 ok\r\n");
    }
}
