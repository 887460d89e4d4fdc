//! Commands imap-codec 2.0-alpha has no types for, parsed here by hand: ACL (RFC 4314:
//! MYRIGHTS, GETACL, LISTRIGHTS, SETACL, DELETEACL), CANCELUPDATE (RFC 5267 §4.3),
//! NOTIFY (RFC 5465 §3), URLAUTH (RFC 4467: GENURLAUTH, RESETKEY, URLFETCH). Their
//! arguments are atoms, strings (quoted or literal) and parenthesized lists, nothing
//! more, so a small tokenizer does; everything else still goes to imap-codec.

/// One argument: an atom (as sent), a string (quoted or literal), or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Atom(String),
    Str(Vec<u8>),
    List(Vec<Arg>),
}

impl Arg {
    /// An astring's bytes (atom or string).
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Arg::Atom(a) => Some(a.as_bytes()),
            Arg::Str(s) => Some(s),
            Arg::List(_) => None,
        }
    }

    pub fn text(&self) -> Option<String> {
        self.bytes()
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_owned)
    }
}

/// Deepest list accepted (NOTIFY's is three deep).
const MAX_DEPTH: usize = 8;
/// Most arguments in one command (lists included).
const MAX_ARGS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtCommand {
    pub tag: String,
    /// Upper-cased.
    pub verb: String,
    pub args: Vec<Arg>,
}

const VERBS: [&str; 10] = [
    "MYRIGHTS",
    "GETACL",
    "LISTRIGHTS",
    "SETACL",
    "DELETEACL",
    "CANCELUPDATE",
    "NOTIFY",
    "GENURLAUTH",
    "RESETKEY",
    "URLFETCH",
];

/// Whether the command's verb is one parsed here (from its first bytes).
pub fn is_ext_command(msg: &[u8]) -> bool {
    let head = msg.get(..msg.len().min(40)).unwrap_or_default();
    let Some(sp) = head.iter().position(|&b| b == b' ') else {
        return false;
    };
    let rest = head.get(sp + 1..).unwrap_or_default();
    let end = rest
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
        .unwrap_or(rest.len());
    let verb = rest.get(..end).unwrap_or_default();
    VERBS
        .iter()
        .any(|v| verb.eq_ignore_ascii_case(v.as_bytes()))
}

/// `tag VERB args CRLF`; `None` for a syntax error.
pub fn parse(msg: &[u8]) -> Option<ExtCommand> {
    let msg = msg
        .strip_suffix(b"\r\n")
        .or_else(|| msg.strip_suffix(b"\n"))?;
    let sp = msg.iter().position(|&b| b == b' ')?;
    let tag = std::str::from_utf8(msg.get(..sp)?).ok()?.to_owned();
    let rest = msg.get(sp + 1..)?;
    let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    let verb = std::str::from_utf8(rest.get(..end)?)
        .ok()?
        .to_ascii_uppercase();
    let mut p = Parser {
        s: rest.get(end..)?,
        i: 0,
        count: 0,
    };
    let mut args = Vec::new();
    while p.i < p.s.len() {
        if p.s.get(p.i) != Some(&b' ') {
            return None;
        }
        p.i += 1;
        args.push(p.arg(0)?);
    }
    Some(ExtCommand { tag, verb, args })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    count: usize,
}

impl Parser<'_> {
    fn arg(&mut self, depth: usize) -> Option<Arg> {
        self.count += 1;
        if self.count > MAX_ARGS || depth > MAX_DEPTH {
            return None;
        }
        match *self.s.get(self.i)? {
            b'(' => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    if *self.s.get(self.i)? == b')' {
                        self.i += 1;
                        return Some(Arg::List(items));
                    }
                    if !items.is_empty() {
                        if self.s.get(self.i) != Some(&b' ') {
                            return None;
                        }
                        self.i += 1;
                    }
                    items.push(self.arg(depth + 1)?);
                }
            }
            b'"' => {
                self.i += 1;
                let mut out = Vec::new();
                loop {
                    match *self.s.get(self.i)? {
                        b'"' => {
                            self.i += 1;
                            return Some(Arg::Str(out));
                        }
                        b'\\' => {
                            out.push(*self.s.get(self.i + 1)?);
                            self.i += 2;
                        }
                        b'\r' | b'\n' => return None,
                        b => {
                            out.push(b);
                            self.i += 1;
                        }
                    }
                }
            }
            b'~' if self.s.get(self.i + 1) == Some(&b'{') => {
                // RFC 3516 literal8: the same framing.
                self.i += 1;
                self.arg(depth)
            }
            b'{' => {
                let close = self.s.get(self.i..)?.iter().position(|&b| b == b'}')? + self.i;
                let n = std::str::from_utf8(self.s.get(self.i + 1..close)?).ok()?;
                let n: usize = n.strip_suffix('+').unwrap_or(n).parse().ok()?;
                let start = close + 1;
                let start = if self.s.get(start..start + 2) == Some(b"\r\n") {
                    start + 2
                } else if self.s.get(start) == Some(&b'\n') {
                    start + 1
                } else {
                    return None;
                };
                let data = self.s.get(start..start.checked_add(n)?)?.to_vec();
                self.i = start + n;
                Some(Arg::Str(data))
            }
            _ => {
                // A fetch-att such as `BODY.PEEK[HEADER.FIELDS (SUBJECT)]` is one atom:
                // inside `[...]` spaces and parentheses do not end it.
                let start = self.i;
                let mut bracket = 0usize;
                while let Some(&b) = self.s.get(self.i) {
                    if b < 0x20 || b == 0x7f {
                        break;
                    }
                    match b {
                        b'[' => bracket += 1,
                        b']' if bracket > 0 => bracket -= 1,
                        b' ' | b')' | b'(' | b'"' if bracket == 0 => break,
                        _ => {}
                    }
                    self.i += 1;
                }
                if bracket > 0 {
                    return None;
                }
                if self.i == start {
                    return None;
                }
                Some(Arg::Atom(
                    std::str::from_utf8(self.s.get(start..self.i)?)
                        .ok()?
                        .to_owned(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert!(is_ext_command(b"a myrights INBOX\r\n"));
        assert!(is_ext_command(b"a NOTIFY NONE\r\n"));
        assert!(!is_ext_command(b"a SELECT INBOX\r\n"));
        assert!(!is_ext_command(b"a MYRIGHTSX INBOX\r\n"));
        let c = parse(b"a1 SETACL \"Drafts\" {3}\r\nbob lrs\r\n").unwrap();
        assert_eq!(c.verb, "SETACL");
        assert_eq!(
            c.args,
            vec![
                Arg::Str(b"Drafts".to_vec()),
                Arg::Str(b"bob".to_vec()),
                Arg::Atom("lrs".into())
            ]
        );
        let c = parse(b"n NOTIFY SET STATUS (selected (MessageNew (uid body.peek[header]) MessageExpunge)) (personal (MailboxName))\r\n").unwrap();
        assert_eq!(c.args.len(), 4);
        assert!(matches!(&c.args[2], Arg::List(v) if v.len() == 2));
        assert!(parse(b"a GETACL \"unterminated\r\n").is_none());
        assert!(parse(b"a GETACL (a\r\n").is_none());
        assert!(parse(b"a GETACL  x\r\n").is_none());
        assert!(parse(b"a GETACL {5}\r\nab\r\n").is_none());
        let deep = format!("a NOTIFY {}x{}\r\n", "(".repeat(50), ")".repeat(50));
        assert!(parse(deep.as_bytes()).is_none());
        let many = format!("a NOTIFY ({})\r\n", "x ".repeat(5000).trim_end());
        assert!(parse(many.as_bytes()).is_none());
        assert_eq!(
            parse(b"a CANCELUPDATE \"t1\" \"t2\"\r\n")
                .unwrap()
                .args
                .len(),
            2
        );
        assert_eq!(parse(b"a RESETKEY\r\n").unwrap().args.len(), 0);
        let c = parse(
            b"n NOTIFY SET (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])))\r\n",
        )
        .unwrap();
        assert_eq!(
            c.args[1],
            Arg::List(vec![
                Arg::Atom("selected".into()),
                Arg::List(vec![
                    Arg::Atom("MessageNew".into()),
                    Arg::List(vec![
                        Arg::Atom("UID".into()),
                        Arg::Atom("BODY.PEEK[HEADER.FIELDS (SUBJECT)]".into())
                    ])
                ])
            ])
        );
        assert!(parse(b"n X BODY[HEADER\r\n").is_none());
        assert_eq!(
            parse(b"a X ()\r\n").unwrap().args,
            vec![Arg::List(Vec::new())]
        );
    }
}
