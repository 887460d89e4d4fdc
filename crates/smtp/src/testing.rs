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
