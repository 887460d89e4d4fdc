//! Entry points for the fuzz targets and the seeded tests of what a peer controls beyond the
//! command line: the MIME structure of stored messages (FETCH BODYSTRUCTURE, sections),
//! THREAD/SORT over arbitrary headers, LIST patterns. Also a structure-aware generator, so
//! that random bytes become deep nesting and long repetitions rather than noise.

use std::num::NonZeroU32;

use imap_codec::ResponseCodec;
use imap_codec::encode::Encoder;
use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::fetch::{MessageDataItem, Part, Section};
use imap_codec::imap_types::response::{Data, Response};
use yubin_model::SortInfo;

use crate::message::Parsed;

/// Everything FETCH can ask of one stored message; must not panic or overflow the stack.
pub fn fetch_everything(raw: &[u8]) -> usize {
    let p = Parsed::new(raw);
    let mut out = 0;
    for item in [
        MessageDataItem::BodyStructure(p.body_structure(true)),
        MessageDataItem::Body(p.body_structure(false)),
        MessageDataItem::Envelope(p.envelope()),
    ] {
        let Ok(data) = Data::fetch(1, vec![item]) else {
            continue;
        };
        out += ResponseCodec::default()
            .encode(&Response::Data(data))
            .dump()
            .len();
    }
    for path in [&[1u32][..], &[1, 1], &[2, 1, 3], &[1; 64], &[1; 300]] {
        let Ok(nz) = path
            .iter()
            .map(|&n| NonZeroU32::new(n).ok_or(()))
            .collect::<Result<Vec<_>, _>>()
        else {
            continue;
        };
        let Ok(v) = Vec1::try_from(nz.clone()) else {
            continue;
        };
        for s in [
            Section::Part(Part(v.clone())),
            Section::Mime(Part(v.clone())),
            Section::Header(Some(Part(v.clone()))),
            Section::Text(Some(Part(v))),
        ] {
            out += p.section(Some(&s)).len();
        }
        out += p.binary(&nz).map_or(0, |b| b.len());
    }
    out + p.section(None).len()
}

/// Every parser of peer input written here rather than taken from imap-codec, on `data`
/// as it is and wrapped into each command form they read. Must not panic; what they give
/// back is bounded by the input.
pub fn parse_everything(data: &[u8]) {
    let mut forms: Vec<Vec<u8>> = vec![data.to_vec()];
    for prefix in [
        &b"t NOTIFY SET "[..],
        b"t APPEND Drafts CATENATE (",
        b"t UID FETCH 1:* (FLAGS) (",
        b"t UID SEARCH RETURN (",
        b"t LIST \"\" (",
        b"t GENURLAUTH ",
        b"t APPEND INBOX (",
    ] {
        let mut f = prefix.to_vec();
        f.extend_from_slice(data);
        f.extend_from_slice(b"\r\n");
        forms.push(f);
    }
    for f in &forms {
        let (out, _) = crate::ext::extract(f);
        assert!(out.len() <= 2 * f.len() + 64, "extract grew the command");
        let _ = crate::ext::find_dollar(f);
        let _ = crate::ext::object_id_keys(f);
        if let Some(c) = crate::extcmd::parse(f) {
            let _ = crate::notify::parse(&c.args, |a| a.text().ok_or("not a name"));
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(u) = crate::imapurl::parse(s) {
            assert!(u.rump.len() <= s.len());
        }
        let _ = crate::imapurl::parse(&format!("imap://u@h/INBOX;UID=1{s}"));
    }
}

/// THREAD (both algorithms) and SORT over the messages; every message appears exactly
/// once in each THREAD answer.
pub fn thread_everything(msgs: &[SortInfo]) {
    use imap_codec::imap_types::extensions::thread::Thread;
    let hits: Vec<usize> = (0..msgs.len()).collect();
    fn count(t: &Thread, n: &mut usize, stack: usize) {
        // Depth is bounded by MAX_THREAD_DEPTH, so this recursion is too.
        assert!(
            stack <= crate::sort::MAX_THREAD_DEPTH + 2,
            "thread too deep"
        );
        match t {
            Thread::Members { prefix, answers } => {
                *n += prefix.as_ref().len();
                if let Some(a) = answers {
                    for t in a.as_ref() {
                        count(t, n, stack + 1);
                    }
                }
            }
            Thread::Nested { answers } => {
                for t in answers.as_ref() {
                    count(t, n, stack + 1);
                }
            }
        }
    }
    for threads in [
        crate::sort::references(msgs, &hits),
        crate::sort::ordered_subject(msgs, &hits),
    ] {
        let mut n = 0;
        for t in &threads {
            count(t, &mut n, 0);
        }
        assert_eq!(n, msgs.len(), "every message in exactly one thread");
    }
    let _ = crate::sort::sort(msgs, &hits, &[]);
}

/// The LIST matcher (RFC 9051 §6.3.9).
pub fn list_matches(pattern: &[u8], name: &[u8]) -> bool {
    crate::session::matches_pattern(pattern, name)
}

/// A simple, obviously right (and exponential) LIST matcher, for differential tests on
/// small inputs.
pub fn list_matches_reference(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| list_matches_reference(rest, &name[i..])),
        Some((b'%', rest)) => (0..=name.len())
            .take_while(|&i| i == 0 || name[i - 1] != b'/')
            .any(|i| list_matches_reference(rest, &name[i..])),
        Some((c, rest)) => name.first() == Some(c) && list_matches_reference(rest, &name[1..]),
    }
}

/// Turns bytes into a MIME message: each byte picks the next step (open a multipart, open a
/// message/rfc822, a text part, close a level, repeat the last step many times, a bad
/// boundary, an encoded part...), so short inputs reach deep nesting and long runs.
pub fn generate_message(data: &[u8]) -> Vec<u8> {
    let mut out = b"From: a@b.c\r\nSubject: gen\r\n".to_vec();
    let mut open: Vec<String> = Vec::new(); // boundaries of open multiparts
    let mut need_part_header = false;
    let mut last = 0u8;
    let mut i = 0;
    let budget = 2_000_000usize; // output size cap
    while let Some(&b) = data.get(i) {
        i += 1;
        let (op, times) = if b >> 4 == 0xF {
            (last, 1usize << (b & 0x0F).min(14)) // repeat the last op up to 16,384 times
        } else {
            (b, 1)
        };
        last = op;
        for _ in 0..times {
            if out.len() > budget {
                break;
            }
            if need_part_header {
                if let Some(bd) = open.last() {
                    out.extend_from_slice(format!("--{bd}\r\n").as_bytes());
                }
                need_part_header = false;
            }
            match op % 8 {
                0 | 1 => {
                    let bd = format!("b{}", open.len());
                    out.extend_from_slice(
                        format!("Content-Type: multipart/mixed; boundary={bd}\r\n\r\n--{bd}\r\n")
                            .as_bytes(),
                    );
                    open.push(bd);
                }
                2 => out.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n"),
                3 => {
                    out.extend_from_slice(b"Content-Type: text/plain\r\n\r\ntext\r\n");
                    need_part_header = true;
                }
                4 => {
                    if let Some(bd) = open.pop() {
                        out.extend_from_slice(format!("\r\n--{bd}--\r\n").as_bytes());
                    }
                    need_part_header = !open.is_empty();
                }
                5 => out.extend_from_slice(
                    b"Content-Type: multipart/alternative; boundary=\"\"\r\n\r\n--\r\n",
                ),
                6 => out.extend_from_slice(
                    b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\nU3ViamVjdDogeA0KDQp5DQo=\r\n",
                ),
                _ => out.extend_from_slice(b"References: <x@y> <z@w>\r\nX: \xff\0\r\n"),
            }
        }
    }
    out.extend_from_slice(b"\r\nend\r\n");
    out
}

/// Turns bytes into a mailbox's thread keys: ids, references (chains, loops, repeats,
/// self references) and subjects.
pub fn generate_threads(data: &[u8]) -> Vec<SortInfo> {
    let mut msgs = Vec::new();
    for (i, chunk) in data.chunks(3).enumerate().take(2_000) {
        let a = *chunk.first().unwrap_or(&0) as usize;
        let b = *chunk.get(1).unwrap_or(&0) as usize;
        let c = *chunk.get(2).unwrap_or(&0) as usize;
        let refs_len = if a & 0x80 != 0 {
            (b * 97) % 5_000
        } else {
            b % 8
        };
        let references = (0..refs_len)
            .map(|k| format!("<m{}@x>", (i + k * (c % 7 + 1)) % (a % 50 + 2)))
            .collect();
        msgs.push(SortInfo {
            uid: i as u32 + 1,
            message_id: if c.is_multiple_of(5) {
                String::new()
            } else {
                format!("<m{}@x>", (i * (a % 3 + 1)) % (a % 50 + 2))
            },
            references,
            subject: ["a", "Re: a", "Fwd: b", "", "c"][c % 5].into(),
            sent: Some((a * 31 + c) as i64),
            ..SortInfo::default()
        });
    }
    msgs
}

#[cfg(test)]
mod tests {
    /// The seeded version of the `imap_parsers` fuzz target: pieces of every hand-parsed
    /// form glued at random, deep lists and long repeats among them.
    #[test]
    fn hand_parsers_take_random_input() {
        let pieces: [&[u8]; 22] = [
            b"(", b")", b" ", b"\"", b"\\", b"{3}\r\nabc", b"{9999999}\r\n", b"~{1+}\r\nx",
            b"selected", b"(MessageNew (UID BODY.PEEK[HEADER.FIELDS (A)]) MessageExpunge)",
            b"personal", b"subtree (a b)", b"NONE", b"STATUS", b"TEXT", b"URL \"/INBOX/;UID=1\"",
            b"imap://u@h/INBOX;UIDVALIDITY=1/;UID=2/;SECTION=1.2/;PARTIAL=0.5;URLAUTH=submit+u:internal:ab",
            b";EXPIRE=2026-01-01T00:00:00Z", b"%", b"%zz", b"[", b"PARTIAL -1:-5",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut data = Vec::new();
            for _ in 0..(next() % 40) {
                let p = pieces[(next() % pieces.len() as u64) as usize];
                let times = if next() % 10 == 0 {
                    1 + next() % 300
                } else {
                    1
                };
                for _ in 0..times {
                    data.extend_from_slice(p);
                }
            }
            super::parse_everything(&data);
        }
    }
}
