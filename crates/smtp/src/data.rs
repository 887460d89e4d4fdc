//! DATA framing (RFC 5321 §4.1.1.4, §4.5.2), written here rather than taken from
//! smtp-proto, whose receiver kept the stuffed dot of a message's first line, ended DATA at
//! `<CRLF>.<CR><CR><LF>` and gave no reply to DATA followed at once by `.`.
//!
//! Rules: the data ends only at a line that is exactly `.` CRLF (the first line included);
//! a leading `.` of any other line is removed; a bare CR or bare LF anywhere is recorded
//! (the session refuses the message: RFC 5321 §2.3.8), and never ends the data.

/// Where the reader is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    LineStart,
    /// A line began with `.` (dropped).
    Dot,
    /// `.` CR at a line start: the end, if LF follows.
    DotCr,
    Mid,
    /// Just after a CR.
    Cr,
}

#[derive(Debug)]
pub struct DataReader {
    at: At,
    /// A bare CR or LF was seen.
    pub bare: bool,
    /// The message is too big: read to its end without keeping it.
    pub discard: bool,
}

impl Default for DataReader {
    fn default() -> Self {
        DataReader {
            at: At::LineStart,
            bare: false,
            discard: false,
        }
    }
}

impl DataReader {
    /// Read from `input`, appending the unstuffed message to `out` (unless discarding).
    /// Returns how many bytes were consumed and whether the end-of-data line was reached.
    pub fn ingest(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let keep = !self.discard;
        let mut push = |bytes: &[u8]| {
            if keep {
                out.extend_from_slice(bytes);
            }
        };
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            match self.at {
                At::LineStart if b == b'.' => {
                    self.at = At::Dot;
                    i += 1;
                }
                At::LineStart => self.at = At::Mid,
                At::Dot if b == b'\r' => {
                    self.at = At::DotCr;
                    i += 1;
                }
                At::Dot => self.at = At::Mid,
                At::DotCr if b == b'\n' => return (i + 1, true),
                At::DotCr => {
                    self.bare = true;
                    push(b"\r");
                    self.at = At::Mid;
                }
                At::Mid => {
                    let rest = input.get(i..).unwrap_or_default();
                    match memchr::memchr2(b'\r', b'\n', rest) {
                        None => {
                            push(rest);
                            i = input.len();
                        }
                        Some(k) => {
                            push(rest.get(..=k).unwrap_or_default());
                            i += k + 1;
                            if rest.get(k) == Some(&b'\n') {
                                self.bare = true;
                                self.at = At::LineStart;
                            } else {
                                self.at = At::Cr;
                            }
                        }
                    }
                }
                At::Cr if b == b'\n' => {
                    push(b"\n");
                    i += 1;
                    self.at = At::LineStart;
                }
                At::Cr => {
                    self.bare = true;
                    self.at = At::Mid;
                }
            }
        }
        (i, false)
    }
}

/// A bare CR or LF in `data` (for BDAT, whose chunks are not framed by lines).
pub fn bare_line_end(data: &[u8]) -> bool {
    memchr::memchr2_iter(b'\r', b'\n', data).any(|i| match data.get(i) {
        Some(b'\r') => data.get(i + 1) != Some(&b'\n'),
        _ => i == 0 || data.get(i - 1) != Some(&b'\r'),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in pieces of every size; all must agree.
    fn read(input: &[u8]) -> Option<(Vec<u8>, bool, usize)> {
        let mut first = None;
        for step in 1..=input.len().max(1) {
            let mut r = DataReader::default();
            let mut out = Vec::new();
            let mut pos = 0;
            let mut done = false;
            for chunk in input.chunks(step) {
                let (n, d) = r.ingest(chunk, &mut out);
                pos += n;
                if d {
                    done = true;
                    break;
                }
                assert_eq!(n, chunk.len(), "all of it is consumed until the end");
            }
            let got = done.then_some((out, r.bare, pos));
            match &first {
                None => first = Some(got),
                Some(f) => assert_eq!(f, &got, "step {step}"),
            }
        }
        first.flatten()
    }

    #[test]
    fn framing() {
        assert_eq!(read(b".\r\n"), Some((vec![], false, 3)), "empty message");
        assert_eq!(
            read(b"..X\r\n.\r\n"),
            Some((b".X\r\n".to_vec(), false, 8)),
            "first line unstuffed"
        );
        assert_eq!(
            read(b"a\r\n..b\r\n.\r\nNEXT"),
            Some((b"a\r\n.b\r\n".to_vec(), false, 11))
        );
        // `.` CR CR LF is not the end; a bare CR is flagged.
        let (out, bare, _) = read(b"a\r\n.\r\r\nb\r\n.\r\n").unwrap();
        assert!(bare);
        assert_eq!(out, b"a\r\n\r\r\nb\r\n");
        // `<CR>.<CR><LF>` (a bare CR before the dot) is not the end either.
        let (_, bare, n) = read(b"a\r.\r\nMAIL FROM:<x@y>\r\n.\r\n").unwrap();
        assert!(bare);
        assert_eq!(n, 25);
        // Bare LF, and `.` LF.
        let (_, bare, _) = read(b"a\n.\nb\r\n.\r\n").unwrap();
        assert!(bare);
        assert_eq!(read(b"a\r\n.\n"), None, "not ended by . LF");
    }

    #[test]
    fn bare_line_ends() {
        assert!(!bare_line_end(b"a\r\nb\r\n"));
        assert!(bare_line_end(b"a\nb"));
        assert!(bare_line_end(b"\n"));
        assert!(bare_line_end(b"a\rb"));
        assert!(bare_line_end(b"a\r"));
    }
}
