//! The client side's reading of replies (RFC 5321 §4.2), sans-IO: bytes from a remote
//! server in, whole replies out. A remote server is a peer like any other: every reply it
//! can send ends as a [`Reply`] or a [`ReplyError`] for that delivery attempt, never a
//! panic, and nothing it sends is kept beyond the bounds below.
//!
//! Framing is checked here (CRLF line ends, a three-digit code on every line, the same
//! code on each line of a multi-line reply, bounded lines and replies); the assembled
//! reply is then read by smtp-proto's response parser, which takes the enhanced status
//! code apart (RFC 2034).

use smtp_proto::response::parser::ResponseReceiver;

use crate::reply::{Esc, Reply};

/// Longest reply line taken, CRLF included. RFC 5321 §4.5.3.1.5 says 512; some servers
/// send longer EHLO lines, none sends kilobytes.
pub const MAX_REPLY_LINE: usize = 2048;
/// Most lines in one reply (an EHLO answer has about twenty).
pub const MAX_REPLY_LINES: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line longer than {MAX_REPLY_LINE} bytes")]
    LineTooLong,
    #[error("reply of more than {MAX_REPLY_LINES} lines")]
    TooManyLines,
    #[error("reply line not ended by CRLF")]
    BareLineEnd,
    #[error("reply line without a three-digit code: {0:?}")]
    BadCode(String),
    #[error("multi-line reply with different codes ({0} then {1})")]
    MixedCodes(u16, u16),
    #[error("reply not understood: {0}")]
    Syntax(String),
}

/// Reads replies from what the server sends; one reader per connection.
#[derive(Debug, Default)]
pub struct ReplyReader {
    line: Vec<u8>,
    /// The lines of the reply so far, CRLF included.
    reply: Vec<u8>,
    lines: usize,
    code: Option<u16>,
}

impl ReplyReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Take bytes: returns how many were used, and the reply (or error) they completed.
    /// Bytes after a complete reply are left for the next call (pipelined replies).
    pub fn push(&mut self, input: &[u8]) -> (usize, Option<Result<Reply, ReplyError>>) {
        let mut used = 0;
        for &b in input {
            used += 1;
            if self.line.len() >= MAX_REPLY_LINE {
                return (used, Some(Err(self.fail(ReplyError::LineTooLong))));
            }
            self.line.push(b);
            if b != b'\n' {
                continue;
            }
            if self.line.len() < 2 || self.line.get(self.line.len() - 2) != Some(&b'\r') {
                return (used, Some(Err(self.fail(ReplyError::BareLineEnd))));
            }
            match self.end_line() {
                Ok(None) => {}
                Ok(Some(reply)) => return (used, Some(Ok(reply))),
                Err(e) => return (used, Some(Err(self.fail(e)))),
            }
        }
        (used, None)
    }

    /// Bytes of a reply begun and not finished (an early close leaves some).
    pub fn partial(&self) -> bool {
        !self.line.is_empty() || !self.reply.is_empty()
    }

    fn fail(&mut self, e: ReplyError) -> ReplyError {
        *self = Self::default();
        e
    }

    fn end_line(&mut self) -> Result<Option<Reply>, ReplyError> {
        let line = std::mem::take(&mut self.line);
        let body = line.get(..line.len() - 2).unwrap_or_default();
        let (code, last) = match body {
            [a, b, c, rest @ ..]
                if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() =>
            {
                let code =
                    u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
                match rest.first() {
                    None | Some(b' ') => (code, true),
                    Some(b'-') => (code, false),
                    Some(_) => return Err(ReplyError::BadCode(lossy(body))),
                }
            }
            _ => return Err(ReplyError::BadCode(lossy(body))),
        };
        // RFC 5321 §4.2: 2yz to 5yz only (and 1yz, never used, would be a protocol error).
        if !(200..600).contains(&code) {
            return Err(ReplyError::BadCode(lossy(body)));
        }
        match self.code {
            Some(first) if first != code => return Err(ReplyError::MixedCodes(first, code)),
            _ => self.code = Some(code),
        }
        self.lines += 1;
        if self.lines > MAX_REPLY_LINES {
            return Err(ReplyError::TooManyLines);
        }
        self.reply.extend_from_slice(&line);
        if !last {
            return Ok(None);
        }
        let whole = std::mem::take(&mut self.reply);
        *self = Self::default();
        Ok(Some(parse(&whole)?))
    }
}

fn lossy(b: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(b.get(..b.len().min(80)).unwrap_or_default()).into_owned();
    if b.len() > 80 {
        s.push('…');
    }
    s
}

/// A framed reply through smtp-proto's parser: the code, the enhanced code of the first
/// line (RFC 2034), the text of each line. Text that is not UTF-8 is kept lossily.
fn parse(whole: &[u8]) -> Result<Reply, ReplyError> {
    let mut rx = ResponseReceiver::default();
    let r = rx
        .parse(&mut whole.iter())
        .map_err(|e| ReplyError::Syntax(format!("{e:?}")))?;
    let esc = (r.esc[0] != 0).then(|| Esc(r.esc[0], u16::from(r.esc[1]), u16::from(r.esc[2])));
    // smtp-proto joins the lines with LF and keeps each line's text after the code.
    let lines: Vec<String> = r
        .message
        .split('\n')
        .map(|l| l.trim_end_matches('\r').to_owned())
        .collect();
    Ok(Reply {
        code: r.code,
        esc,
        lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8]) -> Vec<Result<Reply, ReplyError>> {
        let mut r = ReplyReader::new();
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let (n, got) = r.push(rest);
            rest = rest.get(n..).unwrap_or_default();
            if let Some(g) = got {
                out.push(g);
            }
        }
        out
    }

    #[test]
    fn replies() {
        let got = read_all(b"250-mx.example Hello\r\n250-PIPELINING\r\n250 SIZE 1000\r\n");
        assert_eq!(
            got,
            vec![Ok(Reply {
                code: 250,
                esc: None,
                lines: vec![
                    "mx.example Hello".into(),
                    "PIPELINING".into(),
                    "SIZE 1000".into()
                ],
            })]
        );
        let got = read_all(b"550 5.1.1 <x@y>: no such user\r\n354 go\r\n");
        assert_eq!(got.len(), 2);
        let first = got[0].as_ref().unwrap();
        assert_eq!((first.code, first.esc), (550, Some(Esc(5, 1, 1))));
        assert_eq!(first.lines, vec!["<x@y>: no such user".to_string()]);
        assert_eq!(got[1].as_ref().unwrap().code, 354);
        // A bare code is a reply (RFC 5321 §4.2: the text is optional).
        assert_eq!(read_all(b"250\r\n")[0].as_ref().unwrap().code, 250);
        // Non-ASCII text is kept (lossily), never a panic; in the code it is an error.
        let got = read_all("250é\r\n250 ok é\r\n".as_bytes());
        assert!(matches!(got[0], Err(ReplyError::BadCode(_))), "{got:?}");
        assert_eq!(got[1].as_ref().unwrap().lines, vec!["ok é".to_string()]);
        assert!(matches!(
            read_all(b"25\xff ok\r\n")[0],
            Err(ReplyError::BadCode(_))
        ));
        assert!(read_all(b"250 \xff\xfe\r\n")[0].is_ok());
    }

    #[test]
    fn hostile_replies() {
        assert_eq!(read_all(b"250 ok\n"), vec![Err(ReplyError::BareLineEnd)]);
        assert_eq!(
            read_all(b"250-a\r\n550 b\r\n"),
            vec![Err(ReplyError::MixedCodes(250, 550))]
        );
        assert!(matches!(
            read_all(b"099 x\r\n")[0],
            Err(ReplyError::BadCode(_))
        ));
        assert!(matches!(
            read_all(b"2500 x\r\n")[0],
            Err(ReplyError::BadCode(_))
        ));
        assert!(matches!(read_all(b"\r\n")[0], Err(ReplyError::BadCode(_))));
        // A 10 MB line: refused at the bound, the reader keeps nothing of it.
        let mut r = ReplyReader::new();
        let big = vec![b'x'; 10 << 20];
        let (n, got) = r.push(&big);
        assert_eq!(got, Some(Err(ReplyError::LineTooLong)));
        assert!(n <= MAX_REPLY_LINE + 1 && !r.partial());
        let many: Vec<u8> = b"250-x\r\n".repeat(MAX_REPLY_LINES + 5);
        assert!(read_all(&many).contains(&Err(ReplyError::TooManyLines)));
        // Byte by byte is the same as at once; an early close leaves a partial reply.
        let mut r = ReplyReader::new();
        let mut last = None;
        for b in b"250-a\r\n250 b\r\n" {
            let (n, got) = r.push(std::slice::from_ref(b));
            assert_eq!(n, 1);
            last = got.or(last);
        }
        assert_eq!(
            last.unwrap().unwrap().lines,
            vec!["a".to_string(), "b".into()]
        );
        let mut r = ReplyReader::new();
        assert_eq!(r.push(b"250-a\r\n25").1, None);
        assert!(r.partial());
    }

    /// Random bytes and glued pieces of replies: never a panic, always progress.
    #[test]
    fn random_input() {
        let pieces: [&[u8]; 12] = [
            b"250",
            b"-",
            b" ",
            b"\r\n",
            b"\n",
            b"\r",
            b"5.1.1 ",
            b"\xc3\xa9",
            b"550",
            b"x",
            b"\0",
            b"2.0.0",
        ];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..5000 {
            let mut input = Vec::new();
            for _ in 0..(x % 30) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                input.extend_from_slice(pieces[(x % pieces.len() as u64) as usize]);
            }
            let mut r = ReplyReader::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (n, _) = r.push(rest);
                assert!(n > 0);
                rest = &rest[n..];
            }
        }
    }
}
