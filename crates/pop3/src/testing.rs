//! For the fuzz target `pop3_session` and the seeded random test: an in-memory maildrop
//! and a driver that checks the session never panics or stalls.

use crate::{BResult, Backend, BackendError, Config, Entry, Event, Session};

/// Three messages (one empty, one with dot lines, one with bare LF); user `bob`,
/// password `secret pw`.
#[derive(Default)]
pub struct Mem {
    msgs: Vec<(u32, Vec<u8>)>,
}

impl Mem {
    pub fn sample() -> Self {
        Mem {
            msgs: vec![
                (1, Vec::new()),
                (2, b"Subject: a\r\n\r\n.\r\n..x\r\nend\r\n".to_vec()),
                (5, b"Subject: b\n\nbare\nlf\n.".to_vec()),
            ],
        }
    }
}

impl Backend for Mem {
    fn login(&mut self, user: &str, password: &str) -> BResult<bool> {
        Ok(user == "bob" && password == "secret pw")
    }
    fn lock(&mut self) -> BResult<bool> {
        Ok(true)
    }
    fn maildrop(&mut self) -> BResult<(u32, Vec<Entry>)> {
        Ok((
            7,
            self.msgs
                .iter()
                .map(|(uid, m)| Entry {
                    uid: *uid,
                    size: yubin_model::pop3_size(m),
                })
                .collect(),
        ))
    }
    fn read(&mut self, uid: u32) -> BResult<Vec<u8>> {
        self.msgs
            .iter()
            .find(|m| m.0 == uid)
            .map(|m| m.1.clone())
            .ok_or_else(|| BackendError::Permanent("gone".into()))
    }
    fn delete(&mut self, uids: &[u32]) -> BResult<()> {
        self.msgs.retain(|m| !uids.contains(&m.0));
        Ok(())
    }
}

/// Feed `input` in pieces of `split()` bytes; the session must answer each piece without
/// panicking, looping, or holding more than a line and an answer. Returns the output size.
pub fn exercise(input: &[u8], tls: bool, mut split: impl FnMut() -> usize) -> usize {
    let cfg = Config {
        hostname: "pop.test".into(),
        stls: !tls,
        plaintext_auth: true,
        max_errors: 20,
    };
    let mut s = Session::new(cfg, Mem::sample(), tls);
    let mut out = 0;
    let mut pos = 0;
    loop {
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 100_000, "the session does not ask for input");
            let ev = s.poll();
            out += s.take_output().len();
            match ev {
                Event::NeedInput => break,
                Event::StartTls => s.tls_started(),
                Event::Close => return out,
            }
        }
        if pos >= input.len() {
            return out;
        }
        let n = split().clamp(1, input.len() - pos);
        s.push(&input[pos..pos + n]);
        pos += n;
    }
}
