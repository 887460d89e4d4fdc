//! The robustness property shared by the fuzz target and the seeded random-input test.

use crate::{Config, DeliveryOutcome, Event, RcptVerdict, Session};

/// Feed `input` to a fresh session in chunks of `chunk()` bytes, answering every event,
/// and panic if the session breaks a rule: a reply code outside 2xx–5xx, a message above
/// the size limit or without recipients, unbounded buffering, or no progress.
pub fn exercise(cfg: Config, input: &[u8], mut chunk: impl FnMut() -> usize) {
    let max_buffered = cfg.max_line_length + cfg.max_message_size;
    let max_size = cfg.max_message_size;
    let mut s = Session::new(cfg);
    let mut rest = input;
    loop {
        let n = chunk().clamp(1, rest.len().max(1));
        let (head, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        s.push(head);
        assert!(
            s.buffered() <= max_buffered + 2 * n,
            "{} bytes buffered",
            s.buffered()
        );
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 100_000, "the session makes no progress");
            match s.poll() {
                Event::Reply(r) => assert!((200..600).contains(&r.code), "reply {r}"),
                Event::CheckRecipient(a) => s.rcpt_verdict(if a.len() % 2 == 0 {
                    RcptVerdict::Accept
                } else {
                    RcptVerdict::UnknownUser
                }),
                Event::Deliver(m) => {
                    assert!(m.data.len() <= max_size);
                    assert!(!m.rcpt_to.is_empty());
                    s.delivery_result(DeliveryOutcome::Stored { id: "T".into() })
                }
                Event::StartTls => s.tls_started(),
                Event::Authenticate { user, .. } => s.auth_result(if user.len() % 2 == 0 {
                    crate::AuthOutcome::Success(user)
                } else {
                    crate::AuthOutcome::Failure
                }),
                Event::ScramLookup { user } => s.scram_credentials(
                    (user.len() % 2 == 0)
                        .then(|| yubin_sasl::ScramCredentials::derive("secret", b"salt", 1)),
                    "N",
                ),
                Event::ScramVerified { user, ok } => s.auth_result(if ok {
                    crate::AuthOutcome::Success(user)
                } else {
                    crate::AuthOutcome::Failure
                }),
                Event::CheckSender(a) => s.sender_verdict(a.len() % 3 != 0),
                // A hostile URL may name a huge part: the size limit must still hold.
                Event::ResolveUrl { url, .. } => s.burl_result(match url.len() % 3 {
                    0 => crate::UrlOutcome::Data(vec![b'x'; url.len() * 1000]),
                    1 => crate::UrlOutcome::Invalid("no".into()),
                    _ => crate::UrlOutcome::TempFail("later".into()),
                }),
                Event::Close => return,
                Event::NeedInput => break,
            }
        }
        if rest.is_empty() {
            return;
        }
    }
}

/// xorshift64*: enough randomness for seeded test inputs, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A remote server generated from `data` for the outbound client: each byte picks a reply
/// (codes of every class, single or multi-line, EHLO keywords, bare LF, non-ASCII, a
/// repeat of the previous reply up to 64 times) or, at 0xff, sends the rest raw. The
/// client is driven as the driver does (jobs when ready, TLS "done", data "written") and
/// must never panic, give one result per recipient, and end.
pub fn exercise_client(data: &[u8]) {
    use crate::client::{
        Client, ClientConfig, ClientError, Envelope, Recipient, ReplyReader, Step,
    };
    const CODES: [&str; 16] = [
        "220", "250", "354", "221", "421", "450", "451", "452", "500", "502", "503", "530", "550",
        "552", "554", "555",
    ];
    const WORDS: [&str; 10] = [
        "PIPELINING",
        "STARTTLS",
        "DSN",
        "8BITMIME",
        "SIZE 10",
        "SIZE x",
        "SMTPUTF8",
        "REQUIRETLS",
        "é",
        "AUTH PLAIN",
    ];
    let mut wire = Vec::new();
    let mut last: Vec<u8> = Vec::new();
    let mut i = 0;
    while let Some(&b) = data.get(i) {
        i += 1;
        if b == 0xff {
            wire.extend_from_slice(data.get(i..).unwrap_or_default());
            break;
        }
        let code = CODES[usize::from(b & 0x0f)];
        let one = match b >> 4 {
            0..=5 => format!("{code} ok\r\n").into_bytes(),
            6..=9 => {
                let w = WORDS[usize::from(b) % WORDS.len()];
                format!("{code}-mx\r\n{code}-{w}\r\n{code} PIPELINING\r\n").into_bytes()
            }
            10 => format!("{code} bare\n").into_bytes(),
            11 => format!("{code}-a\r\n599 b\r\n").into_bytes(),
            12 => format!("{code}é\r\n").into_bytes(),
            13 => format!("{code} 5.1.1 x\r\n").into_bytes(),
            _ => {
                // A repeat of the last reply (not of a repeat: the input stays linear).
                let n = data.get(i).copied().unwrap_or(1) % 64;
                i += 1;
                wire.extend(last.repeat(usize::from(n)));
                continue;
            }
        };
        last.clone_from(&one);
        wire.extend(one);
        if wire.len() > 1 << 20 {
            break;
        }
    }
    let cfg = ClientConfig {
        helo: "fuzz.test".into(),
        starttls: data.first().is_some_and(|b| b & 1 == 1),
        require_tls: data.first().is_some_and(|b| b & 2 == 2),
    };
    let mut c = Client::new(cfg);
    let mut r = ReplyReader::new();
    let mut rest = &wire[..];
    let mut jobs = 0;
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 1_000_000, "the client makes no progress");
        match c.poll() {
            Step::Send(b) => assert!(b.ends_with(b"\r\n")),
            Step::Wait => {
                if rest.is_empty() {
                    c.closed(ClientError::Closed);
                    continue;
                }
                let (n, got) = r.push(rest);
                assert!(n > 0);
                rest = rest.get(n..).unwrap_or_default();
                match got {
                    Some(Ok(reply)) => c.reply(reply),
                    Some(Err(e)) => c.closed(ClientError::Reply(e)),
                    None => {}
                }
            }
            Step::StartTls => {
                r = ReplyReader::new();
                c.tls_started(jobs % 2 == 0);
            }
            Step::Data { .. } => {}
            Step::Ready => {
                jobs += 1;
                if jobs > 20 {
                    c.quit();
                    continue;
                }
                c.send(Envelope {
                    mail_from: "a@fuzz.test".into(),
                    rcpts: (0..jobs % 4)
                        .map(|k| Recipient {
                            addr: format!("r{k}@remote.test"),
                            ..Default::default()
                        })
                        .collect(),
                    size: 20,
                    eight_bit: jobs % 3 == 0,
                    downgradable: jobs % 5 == 0,
                    require_tls: jobs % 7 == 0,
                    ..Default::default()
                });
            }
            Step::Done(o) => {
                assert_eq!(
                    o.rcpts.len(),
                    (jobs % 4) as usize,
                    "one result per recipient"
                );
            }
            Step::Close(_) => return,
        }
    }
}
