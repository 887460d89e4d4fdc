//! The client side's reading of replies (RFC 5321 §4.2), sans-IO: bytes from a remote
//! server in, whole replies out. A remote server is a peer like any other: every reply it
//! can send ends as a [`Reply`] or a [`ReplyError`] for that delivery attempt, never a
//! panic, and nothing it sends is kept beyond the bounds below.
//!
//! Framing is checked here (CRLF line ends, a three-digit code on every line, the same
//! code on each line of a multi-line reply, bounded lines and replies); the assembled
//! reply is then read by smtp-proto's response parser, which takes the enhanced status
//! code apart (RFC 2034).

use std::collections::VecDeque;
use std::time::Duration;

use smtp_proto::response::parser::ResponseReceiver;

use crate::dsn::{Notify, Ret, xtext_encode};
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

// ---------------------------------------------------------------------------------------
// The client session.

/// What the client is told about the connection before it starts.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our name, for EHLO.
    pub helo: String,
    /// STARTTLS is used when the server offers it (RFC 3207; opportunistic, RFC 7435).
    pub starttls: bool,
    /// TLS is required (an MTA-STS `enforce` policy or DANE, RFC 8461 §5, RFC 7672 §2.2):
    /// a server without STARTTLS, or one whose STARTTLS fails, is not used.
    pub require_tls: bool,
}

/// One message to send: its envelope and what the body needs of the server.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// The reverse-path, empty for `<>`.
    pub mail_from: String,
    pub rcpts: Vec<Recipient>,
    /// The message's size in octets (RFC 1870).
    pub size: usize,
    /// The message has octets ≥ 0x80.
    pub eight_bit: bool,
    /// An 8-bit message that may be sent as 7-bit after conversion (RFC 6152 §3: only a
    /// message whose 8-bit parts are in bodies that can be re-encoded). The driver
    /// converts it when [`Step::Data`] says so.
    pub downgradable: bool,
    /// RFC 3461 §4.3/§4.4.
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// RFC 8689: the sender requires TLS all the way.
    pub require_tls: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Recipient {
    pub addr: String,
    pub notify: Option<Notify>,
    /// The original recipient, `(type, address)` (RFC 3461 §4.2).
    pub orcpt: Option<(String, String)>,
}

/// The result for one recipient of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    Delivered,
    /// 4xx, or a server that cannot take it now: try again later.
    Temporary(String),
    /// 5xx, or something the server will never take (too big, no SMTPUTF8): bounce.
    Permanent(String),
}

/// A finished transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// One per recipient of the envelope, in order.
    pub rcpts: Vec<RcptOutcome>,
    /// The next hop took the DSN parameters (it offers DSN, RFC 3461 §4); when it did not,
    /// the sender's NOTIFY=SUCCESS is answered by us with `relayed` (§4.1).
    pub dsn_passed: bool,
}

/// Why a connection cannot be used (the driver tries the next host, or retries later).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("greeted with {0}")]
    Greeting(String),
    #[error("refused EHLO and HELO: {0}")]
    Hello(String),
    #[error("does not offer STARTTLS, and TLS is required")]
    NoStartTls,
    #[error("refused STARTTLS ({0}), and TLS is required")]
    StartTlsRefused(String),
    #[error("{0}")]
    Reply(#[from] ReplyError),
    #[error("connection closed")]
    Closed,
    #[error("timeout")]
    Timeout,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Read the next reply and give it to [`Client::reply`], within [`Client::timeout`].
    Wait,
    /// Do the TLS handshake now, then call [`Client::tls_started`].
    StartTls,
    /// Write the message, dot-stuffed and ended by `.CRLF` (see [`dot_stuff`]); converted
    /// to 7-bit first when `seven_bit` (RFC 6152 §3).
    Data { seven_bit: bool },
    /// The session is open and idle: give a transaction ([`Client::send`]) or [`Client::quit`].
    Ready,
    /// A transaction ended; the client goes on by itself (RSET, or Ready).
    Done(Outcome),
    /// The connection is of no more use; close it. With the reason when it failed.
    Close(Option<ClientError>),
}

/// The reply the client waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Mail,
    Rcpt(usize),
    Data,
    DataEnd,
    Rset,
    Quit,
}

/// The transaction in progress.
#[derive(Debug)]
struct Tx {
    env: Envelope,
    pipelined: bool,
    seven_bit: bool,
    dsn: bool,
    mail: Option<Reply>,
    rcpts: Vec<Option<Reply>>,
    /// The body was sent (354 taken).
    data: bool,
}

/// An SMTP client session (RFC 5321 §3, §4), sans-IO: replies in, [`Step`]s out. It
/// keeps the order of commands and replies (pipelined or not, RFC 2920), the EHLO
/// keywords, and per-recipient results; the driver does sockets, TLS and the message.
#[derive(Debug)]
pub struct Client {
    cfg: ClientConfig,
    steps: VecDeque<Step>,
    expect: VecDeque<Expect>,
    /// EHLO keywords (upper-cased) with their parameters.
    caps: Vec<(String, String)>,
    tls: bool,
    verified: bool,
    tx: Option<Tx>,
    closed: bool,
}

/// RFC 5321 §4.5.3.2 timeouts, by what is awaited.
fn timeout_for(e: Expect) -> Duration {
    Duration::from_secs(match e {
        Expect::Greeting | Expect::Mail | Expect::Rcpt(_) => 300,
        Expect::Data => 120,
        Expect::DataEnd => 600,
        _ => 120,
    })
}

fn line(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 2);
    v.extend_from_slice(s.as_bytes());
    v.extend_from_slice(b"\r\n");
    v
}

impl Client {
    /// A client that has just connected: it waits for the greeting.
    pub fn new(cfg: ClientConfig) -> Self {
        Client {
            cfg,
            steps: VecDeque::new(),
            expect: VecDeque::from([Expect::Greeting]),
            caps: Vec::new(),
            tls: false,
            verified: false,
            tx: None,
            closed: false,
        }
    }

    /// The next thing to do.
    pub fn poll(&mut self) -> Step {
        if let Some(s) = self.steps.pop_front() {
            return s;
        }
        if self.closed {
            return Step::Close(None);
        }
        if self.expect.is_empty() {
            Step::Ready
        } else {
            Step::Wait
        }
    }

    /// How long to wait for the reply awaited now (one deadline for the whole reply).
    pub fn timeout(&self) -> Duration {
        self.expect
            .front()
            .copied()
            .map_or(Duration::from_secs(300), timeout_for)
    }

    /// Whether the server announced this EHLO keyword.
    pub fn has(&self, keyword: &str) -> bool {
        self.caps
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(keyword))
    }

    fn param(&self, keyword: &str) -> Option<&str> {
        self.caps
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(keyword))
            .map(|(_, v)| v.as_str())
    }

    /// TLS is on (and whether the certificate was verified against a policy).
    pub fn tls(&self) -> (bool, bool) {
        (self.tls, self.verified)
    }

    /// The handshake after [`Step::StartTls`] succeeded; `verified`: the certificate
    /// matched the policy in force (MTA-STS or DANE), not merely any certificate.
    pub fn tls_started(&mut self, verified: bool) {
        self.tls = true;
        self.verified = verified;
        // RFC 3207 §4.2: forget what was learnt before TLS and say EHLO again.
        self.caps.clear();
        self.command(&format!("EHLO {}", self.cfg.helo), Expect::Ehlo);
    }

    /// The connection ended (closed, timed out, or a read failed): the transaction in
    /// progress, if any, is lost for this attempt.
    pub fn closed(&mut self, why: ClientError) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.tx = None;
        self.expect.clear();
        // A QUIT answered by a close is a normal end.
        self.steps.push_back(Step::Close(Some(why)));
    }

    fn fail(&mut self, why: ClientError) {
        self.closed(why);
        // RFC 5321 §4.1.1.10: say QUIT where the server still listens.
        self.steps.push_front(Step::Send(line("QUIT")));
    }

    fn command(&mut self, cmd: &str, expect: Expect) {
        self.steps.push_back(Step::Send(line(cmd)));
        self.expect.push_back(expect);
    }

    /// End the session politely.
    pub fn quit(&mut self) {
        if self.closed {
            return;
        }
        self.command("QUIT", Expect::Quit);
    }

    /// Start a transaction (only when [`Step::Ready`]). Messages this server cannot take
    /// at all end at once with a [`Step::Done`] of permanent results.
    pub fn send(&mut self, env: Envelope) {
        let host_says = |s: String| Outcome {
            rcpts: vec![RcptOutcome::Permanent(s); env.rcpts.len()],
            dsn_passed: false,
        };
        let utf8 = !env.mail_from.is_ascii() || env.rcpts.iter().any(|r| !r.addr.is_ascii());
        // RFC 6531 §3.2: a UTF-8 address needs SMTPUTF8 there; no downgrade exists.
        if utf8 && !self.has("SMTPUTF8") {
            let o = host_says("553 5.6.7 the server does not support SMTPUTF8".into());
            return self.steps.push_back(Step::Done(o));
        }
        // RFC 8689 §4.2.1: only over verified TLS, to a server that offers REQUIRETLS.
        if env.require_tls && !(self.verified && self.has("REQUIRETLS")) {
            let why = if !self.verified {
                "the server's certificate is not verified by MTA-STS or DANE"
            } else {
                "the server does not offer REQUIRETLS"
            };
            let o = host_says(format!("550 5.7.30 REQUIRETLS support required: {why}"));
            return self.steps.push_back(Step::Done(o));
        }
        // RFC 6152 §3: 8-bit data only to 8BITMIME; else converted, or refused.
        let eight_ok = self.has("8BITMIME") || self.has("SMTPUTF8");
        let seven_bit = env.eight_bit && !eight_ok;
        if seven_bit && !env.downgradable {
            let o = host_says(
                "554 5.6.3 the server does not accept 8-bit data and the message cannot be converted"
                    .into(),
            );
            return self.steps.push_back(Step::Done(o));
        }
        // RFC 1870 §4: a declared limit the message exceeds is a permanent failure.
        if let Some(limit) = self
            .param("SIZE")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&l| l > 0 && env.size > l)
        {
            let o = host_says(format!(
                "552 5.3.4 message is larger than the server's limit of {limit} octets"
            ));
            return self.steps.push_back(Step::Done(o));
        }
        let dsn = self.has("DSN");
        let mut mail = format!("MAIL FROM:<{}>", env.mail_from);
        if self.has("SIZE") {
            mail.push_str(&format!(" SIZE={}", env.size));
        }
        if env.eight_bit && !seven_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8 {
            mail.push_str(" SMTPUTF8");
        }
        if dsn {
            if let Some(ret) = env.ret {
                mail.push_str(&format!(" RET={}", ret.keyword()));
            }
            if let Some(id) = &env.envid {
                mail.push_str(&format!(" ENVID={}", xtext_encode(id)));
            }
        }
        if env.require_tls {
            mail.push_str(" REQUIRETLS");
        }
        // RFC 2920 §3.1: MAIL, every RCPT and DATA in one write.
        let pipelined = self.has("PIPELINING");
        if pipelined {
            let mut batch = line(&mail);
            self.expect.push_back(Expect::Mail);
            for (i, r) in env.rcpts.iter().enumerate() {
                batch.extend(line(&rcpt_command(r, dsn)));
                self.expect.push_back(Expect::Rcpt(i));
            }
            batch.extend(line("DATA"));
            self.expect.push_back(Expect::Data);
            self.steps.push_back(Step::Send(batch));
        } else {
            self.command(&mail, Expect::Mail);
        }
        let n = env.rcpts.len();
        self.tx = Some(Tx {
            env,
            pipelined,
            seven_bit,
            dsn,
            mail: None,
            rcpts: vec![None; n],
            data: false,
        });
    }

    /// The reply the server sent (from [`ReplyReader`]).
    pub fn reply(&mut self, r: Reply) {
        let Some(e) = self.expect.pop_front() else {
            // A reply nobody asked for: the server is out of step.
            return self.fail(ClientError::Reply(ReplyError::Syntax(format!(
                "unexpected reply {}",
                summary(&r)
            ))));
        };
        match e {
            Expect::Greeting => {
                if r.code == 220 {
                    self.command(&format!("EHLO {}", self.cfg.helo), Expect::Ehlo);
                } else {
                    self.fail(ClientError::Greeting(summary(&r)));
                }
            }
            Expect::Ehlo => {
                if r.code == 250 {
                    self.caps = r
                        .lines
                        .iter()
                        .skip(1)
                        .map(|l| {
                            let (k, v) = l.trim().split_once(' ').unwrap_or((l.trim(), ""));
                            (k.to_ascii_uppercase(), v.to_owned())
                        })
                        .collect();
                    self.after_hello();
                } else if r.code >= 500 && !self.cfg.require_tls {
                    // RFC 5321 §4.1.4: a server that does not know EHLO gets HELO.
                    self.command(&format!("HELO {}", self.cfg.helo), Expect::Helo);
                } else {
                    self.fail(ClientError::Hello(summary(&r)));
                }
            }
            Expect::Helo => {
                if r.code == 250 {
                    self.caps.clear();
                    self.after_hello();
                } else {
                    self.fail(ClientError::Hello(summary(&r)));
                }
            }
            Expect::StartTls => {
                if r.code == 220 {
                    self.steps.push_back(Step::StartTls);
                } else if self.cfg.require_tls {
                    self.fail(ClientError::StartTlsRefused(summary(&r)));
                }
                // Else: on in plain text (opportunistic TLS, RFC 7435 §4.2).
            }
            Expect::Mail => self.mail_reply(r),
            Expect::Rcpt(i) => self.rcpt_reply(i, r),
            Expect::Data => self.data_reply(r),
            Expect::DataEnd => {
                if let Some(tx) = self.tx.take() {
                    let outcome = finish(&tx, Some(&r));
                    self.steps.push_back(Step::Done(outcome));
                }
            }
            Expect::Rset => {
                // Whatever RSET gets, the next transaction starts afresh; a server that
                // refuses RSET is out of step and will show it on the next MAIL.
            }
            Expect::Quit => {
                self.closed = true;
                self.expect.clear();
            }
        }
    }

    fn after_hello(&mut self) {
        if !self.tls && self.cfg.starttls && self.has("STARTTLS") {
            self.command("STARTTLS", Expect::StartTls);
        } else if !self.tls && self.cfg.require_tls {
            self.fail(ClientError::NoStartTls);
        }
    }

    fn mail_reply(&mut self, r: Reply) {
        let Some(tx) = &mut self.tx else { return };
        let ok = r.code / 100 == 2;
        tx.mail = Some(r);
        if tx.pipelined {
            return;
        }
        if ok && let Some(first) = tx.env.rcpts.first() {
            let l = rcpt_command(first, tx.dsn);
            self.command(&l, Expect::Rcpt(0));
            return;
        }
        self.abort();
    }

    fn rcpt_reply(&mut self, i: usize, r: Reply) {
        let Some(tx) = &mut self.tx else { return };
        if let Some(slot) = tx.rcpts.get_mut(i) {
            *slot = Some(r);
        }
        if tx.pipelined {
            return;
        }
        if let Some(next) = tx.env.rcpts.get(i + 1) {
            let l = rcpt_command(next, tx.dsn);
            return self.command(&l, Expect::Rcpt(i + 1));
        }
        if accepted(tx) {
            self.command("DATA", Expect::Data);
        } else {
            self.abort();
        }
    }

    fn data_reply(&mut self, r: Reply) {
        let Some(tx) = &mut self.tx else { return };
        if r.code == 354 {
            if accepted(tx) {
                tx.data = true;
                let seven_bit = tx.seven_bit;
                self.steps.push_back(Step::Data { seven_bit });
            } else {
                // RFC 2920 §3.1: DATA taken though no recipient was: send an empty
                // message (only the end) and ignore its result.
                self.steps.push_back(Step::Send(b".\r\n".to_vec()));
                tx.data = true;
                let tx = self.tx.take();
                self.expect.push_back(Expect::Rset);
                if let Some(tx) = tx {
                    self.steps.push_back(Step::Done(finish(&tx, None)));
                }
            }
            if self.tx.is_some() {
                self.expect.push_back(Expect::DataEnd);
            }
            return;
        }
        // DATA refused: the recipients taken get its reply.
        if let Some(tx) = self.tx.take() {
            let outcome = finish(&tx, Some(&r));
            self.steps.push_back(Step::Done(outcome));
        }
        self.command("RSET", Expect::Rset);
    }

    /// End the transaction before DATA (MAIL failed, or no recipient was taken).
    fn abort(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.steps.push_back(Step::Done(finish(&tx, None)));
        }
        self.command("RSET", Expect::Rset);
    }
}

fn rcpt_command(r: &Recipient, dsn: bool) -> String {
    let mut l = format!("RCPT TO:<{}>", r.addr);
    if dsn {
        if let Some(n) = r.notify {
            l.push_str(&format!(" NOTIFY={}", n.keyword()));
        }
        if let Some((ty, a)) = &r.orcpt {
            l.push_str(&format!(" ORCPT={ty};{}", xtext_encode(a)));
        }
    }
    l
}

fn accepted(tx: &Tx) -> bool {
    tx.mail.as_ref().is_some_and(|m| m.code / 100 == 2)
        && tx.rcpts.iter().flatten().any(|r| r.code / 100 == 2)
}

fn classify(r: &Reply) -> RcptOutcome {
    match r.code {
        200..=399 => RcptOutcome::Delivered,
        500..=599 => RcptOutcome::Permanent(summary(r)),
        _ => RcptOutcome::Temporary(summary(r)),
    }
}

/// Per-recipient results: MAIL's failure for all, else each RCPT's failure, else the
/// final reply (`end`: DATA's refusal or the end-of-data reply; none if never sent).
fn finish(tx: &Tx, end: Option<&Reply>) -> Outcome {
    let rcpts = tx
        .rcpts
        .iter()
        .map(|rr| {
            match &tx.mail {
                Some(m) if m.code / 100 != 2 => return classify(m),
                None => return RcptOutcome::Temporary("no reply to MAIL".into()),
                _ => {}
            }
            match rr {
                Some(r) if r.code / 100 != 2 => classify(r),
                None => RcptOutcome::Temporary("no reply to RCPT".into()),
                Some(_) => match end {
                    Some(e) if tx.data || e.code / 100 != 2 => classify(e),
                    _ => RcptOutcome::Temporary("the message was not sent".into()),
                },
            }
        })
        .collect();
    Outcome {
        rcpts,
        dsn_passed: tx.dsn,
    }
}

/// A reply on one line for logs and reports: `550 5.1.1 text text`.
pub fn summary(r: &Reply) -> String {
    let mut s = r.code.to_string();
    if let Some(e) = r.esc {
        s.push_str(&format!(" {e}"));
    }
    for l in &r.lines {
        if !l.is_empty() {
            s.push(' ');
            s.push_str(l);
        }
    }
    s
}

/// RFC 5321 §4.5.2: a line starting with `.` gets another; CRLF line ends throughout, and
/// the end `.CRLF` appended. A bare CR ends a line as well as a bare LF does (RFC 5321
/// §2.3.8 forbids both): some receivers take `<CR>.<CR>` for the end of data, so leaving
/// either would let a body smuggle a second message to the next hop.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 8);
    let mut rest = data;
    let mut start = true;
    // Line by line with memchr: the bytes between line ends are copied in one go.
    while let Some(&first) = rest.first() {
        if start && first == b'.' {
            out.push(b'.');
        }
        match memchr::memchr2(b'\r', b'\n', rest) {
            None => {
                out.extend_from_slice(rest);
                start = false;
                break;
            }
            Some(p) => {
                out.extend_from_slice(rest.get(..p).unwrap_or_default());
                out.extend_from_slice(b"\r\n");
                let crlf = rest.get(p) == Some(&b'\r') && rest.get(p + 1) == Some(&b'\n');
                rest = rest.get(p + if crlf { 2 } else { 1 }..).unwrap_or_default();
                start = true;
            }
        }
    }
    if !start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
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

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b".a\r\nb\n.\r\n"), b"..a\r\nb\r\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b"x"), b"x\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
        // A bare CR is a line end too: `<CR>.<CR><LF>` cannot end the data early.
        assert_eq!(
            dot_stuff(b"a\r.\r\nMAIL FROM:<x@y>\r\n"),
            b"a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b"a\r\r\n.\r"), b"a\r\n\r\n..\r\n.\r\n");
    }

    /// Generated servers (the fuzz target's generator) against the client state machine.
    #[test]
    fn generated_servers() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..3000 {
            let mut data = Vec::new();
            for _ in 0..(len % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.push((x >> 24) as u8);
            }
            crate::testing::exercise_client(&data);
        }
        // A well-behaved server all the way.
        crate::testing::exercise_client(&[0x11, 0x61, 0x01, 0x01, 0x02, 0x01]);
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
