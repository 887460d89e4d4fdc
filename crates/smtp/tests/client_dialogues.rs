//! Scripted dialogues of the SMTP client (`yubin_smtp::client::Client`), in the same
//! style as the server's: each file under `tests/client/` is a conversation with a remote
//! server played by the script.
//!
//! - `S:` lines are what the server sends (CRLF appended; escapes as in the server's
//!   dialogues). Consecutive `S:` lines arrive in one read, so pipelined replies are read
//!   as the driver reads them.
//! - `C:` lines are the lines the client must write, in order.
//! - `JOB ...` gives the client a message when it is ready: `from=ADDR`, `rcpt=ADDR`
//!   (repeatable; `rcpt=ADDR;notify=SUCCESS,DELAY;orcpt=rfc822;ADDR`), `size=N`, `8bit`,
//!   `downgradable`, `ret=HDRS|FULL`, `envid=ID`, `requiretls`.
//! - `QUIT`, `EOF` (the server closes), `TIMEOUT` (the driver's deadline passed).
//! - Expected steps: `[TLS]` (handshake; the client is told it succeeded), `[DATA]` or
//!   `[DATA 7BIT]` (the body is to be written), `R: ADDR OUTCOME` per recipient when a
//!   transaction ends, then `R: dsn passed` when the DSN parameters went along,
//!   `[CLOSE]` or `[CLOSE reason]`.
//!
//! Header lines: `#! require-tls`, `#! no-starttls`, `#! verified` (the handshake matched
//! an MTA-STS or DANE policy).

use std::collections::VecDeque;

use yubin_smtp::client::{
    Client, ClientConfig, ClientError, Envelope, RcptOutcome, Recipient, ReplyReader, Step,
};
use yubin_smtp::dsn::{Notify, Ret, parse_orcpt};

fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b'0' => out.push(0),
                b'\\' => out.push(b'\\'),
                b'x' => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                c => panic!("bad escape \\{}", c as char),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn job(spec: &str) -> Envelope {
    let mut env = Envelope::default();
    for w in spec.split_whitespace() {
        let (k, v) = w.split_once('=').unwrap_or((w, ""));
        match k {
            "from" => env.mail_from = v.into(),
            "rcpt" => {
                let (v, orcpt) = v.split_once(";orcpt=").unwrap_or((v, ""));
                let (addr, notify) = v.split_once(";notify=").unwrap_or((v, ""));
                env.rcpts.push(Recipient {
                    addr: addr.into(),
                    notify: (!notify.is_empty()).then(|| Notify::parse(notify).unwrap()),
                    orcpt: (!orcpt.is_empty()).then(|| parse_orcpt(orcpt).unwrap()),
                });
            }
            "size" => env.size = v.parse().unwrap(),
            "8bit" => env.eight_bit = true,
            "downgradable" => env.downgradable = true,
            "ret" => env.ret = Ret::parse(v),
            "envid" => env.envid = Some(v.into()),
            "requiretls" => env.require_tls = true,
            _ => panic!("bad JOB word {w}"),
        }
    }
    env
}

struct Run {
    client: Client,
    reader: ReplyReader,
    seen: VecDeque<String>,
    rcpts: Vec<String>,
    verified: bool,
    ended: bool,
}

impl Run {
    /// Step the client until it waits for a reply or for a job.
    fn drain(&mut self) {
        loop {
            match self.client.poll() {
                Step::Send(b) => {
                    let text = String::from_utf8(b).unwrap();
                    assert!(
                        text.ends_with("\r\n"),
                        "client wrote an unended line: {text:?}"
                    );
                    for l in text.split_terminator("\r\n") {
                        self.seen.push_back(format!("C: {l}"));
                    }
                }
                Step::Wait | Step::Ready => return,
                Step::StartTls => {
                    self.seen.push_back("[TLS]".into());
                    self.reader = ReplyReader::new();
                    self.client.tls_started(self.verified);
                }
                Step::Data { seven_bit } => self
                    .seen
                    .push_back(if seven_bit { "[DATA 7BIT]" } else { "[DATA]" }.into()),
                Step::Done(o) => {
                    assert_eq!(o.rcpts.len(), self.rcpts.len(), "one result per recipient");
                    for (a, r) in self.rcpts.iter().zip(&o.rcpts) {
                        let r = match r {
                            RcptOutcome::Delivered => "delivered".to_string(),
                            RcptOutcome::Temporary(t) => format!("temporary {t}"),
                            RcptOutcome::Permanent(t) => format!("permanent {t}"),
                        };
                        self.seen.push_back(format!("R: {a} {r}"));
                    }
                    if o.dsn_passed {
                        self.seen.push_back("R: dsn passed".into());
                    }
                }
                Step::Close(why) => {
                    self.seen.push_back(match why {
                        None => "[CLOSE]".into(),
                        Some(e) => format!("[CLOSE {e}]"),
                    });
                    self.ended = true;
                    return;
                }
            }
        }
    }

    fn server_sends(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() && !self.ended {
            let (n, got) = self.reader.push(rest);
            rest = &rest[n..];
            match got {
                Some(Ok(r)) => self.client.reply(r),
                Some(Err(e)) => self.client.closed(ClientError::Reply(e)),
                None => {}
            }
            self.drain();
        }
    }
}

fn run_script(name: &str, script: &str) {
    let cfg = ClientConfig {
        helo: "out.test".into(),
        starttls: !script.contains("#! no-starttls"),
        require_tls: script.contains("#! require-tls"),
    };
    let mut run = Run {
        client: Client::new(cfg),
        reader: ReplyReader::new(),
        seen: VecDeque::new(),
        rcpts: Vec::new(),
        verified: script.contains("#! verified"),
        ended: false,
    };
    run.drain();
    let lines: Vec<&str> = script.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let at = format!("{name}:{}", i + 1);
        i += 1;
        if l.starts_with('#') || l.trim().is_empty() {
            continue;
        }
        if let Some(s) = l.strip_prefix("S: ") {
            let mut bytes = unescape(s);
            bytes.extend_from_slice(b"\r\n");
            while let Some(next) = lines.get(i).and_then(|n| n.strip_prefix("S: ")) {
                bytes.extend(unescape(next));
                bytes.extend_from_slice(b"\r\n");
                i += 1;
            }
            run.server_sends(&bytes);
        } else if let Some(s) = l.strip_prefix("W: ") {
            // Raw bytes from the server, no CRLF added.
            run.server_sends(&unescape(s));
        } else if let Some(spec) = l.strip_prefix("JOB ") {
            assert!(
                run.seen.is_empty(),
                "{at}: unchecked client output {:?}",
                run.seen
            );
            let env = job(spec);
            run.rcpts = env.rcpts.iter().map(|r| r.addr.clone()).collect();
            run.client.send(env);
            run.drain();
        } else if l == "QUIT" {
            run.client.quit();
            run.drain();
        } else if l == "EOF" {
            run.client.closed(ClientError::Closed);
            run.drain();
        } else if l == "TIMEOUT" {
            run.client.closed(ClientError::Timeout);
            run.drain();
        } else {
            let got = run.seen.pop_front();
            assert_eq!(
                got.as_deref(),
                Some(l),
                "{at}: expected {l:?}, client did {got:?}"
            );
        }
    }
    assert!(
        run.seen.is_empty(),
        "{name}: unchecked client output {:?}",
        run.seen
    );
}

#[test]
fn client_dialogues() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "dialogue files missing in {}",
        dir.display()
    );
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        run_script(&name, &std::fs::read_to_string(&f).unwrap());
    }
}
