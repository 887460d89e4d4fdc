//! The SMTP server session as a state machine.
//!
//! Implementation notes (the rules this module keeps):
//! - Sans-IO: the host pushes bytes with [`Session::push`] and drains [`Session::poll`]
//!   until it says [`Event::NeedInput`]. Decisions that need the outside world (is this a
//!   local recipient? is the message stored?) are returned as events and answered with
//!   [`Session::rcpt_verdict`] and [`Session::delivery_result`].
//! - Commands are parsed by smtp-proto; line framing, limits and the state rules live here.
//! - A command line longer than `max_line_length` is refused and skipped up to its LF; memory
//!   per session is bounded by that plus `max_message_size`.
//! - Pipelined commands are handled one at a time, replies come out in order (RFC 2920 §3).
//! - Input pipelined after STARTTLS is discarded, never executed (RFC 3207 §4.2).
//! - DATA ends only at CRLF.CRLF (RFC 5321 §4.1.1.4, framing in `data.rs`); a message with
//!   a bare CR or a bare LF is refused
//!   (RFC 5321 §2.3.8), which also closes the "SMTP smuggling" hole for later relaying.
//! - Nothing is handed over for delivery until the whole message is in; an over-size message
//!   is read to its end and refused with 552 (RFC 5321 §4.5.3.1.10, RFC 1870 §6.3).
//! - The host answers 250 to DATA only after it stored the message durably.

use std::collections::VecDeque;

use smtp_proto::request::receiver::{BdatReceiver, DummyDataReceiver};
use smtp_proto::{Error as ProtoError, MailFrom, RcptTo, Request};

use crate::data::{DataReader, bare_line_end};
use crate::dsn::{Notify, Ret};
use crate::reply::Reply;

/// Limits and identity of one listener; fixed for the session's life.
#[derive(Debug, Clone)]
pub struct Config {
    /// The name we announce in the greeting, EHLO and Received headers.
    pub hostname: String,
    /// Largest message accepted, in octets (advertised as SIZE, RFC 1870).
    pub max_message_size: usize,
    /// Recipients per transaction. RFC 5321 §4.5.3.1.8 asks for at least 100.
    pub max_recipients: usize,
    /// Error replies before the session is closed with 421.
    pub max_errors: u32,
    /// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4 says 512; extensions need more).
    pub max_line_length: usize,
    /// Offer STARTTLS (a certificate is loaded and the connection is not yet encrypted).
    pub starttls: bool,
    /// Offer AUTH PLAIN and LOGIN (RFC 4954).
    pub auth: bool,
    /// AUTH only once the connection is encrypted (RFC 4954 §4, RFC 8314 §3); the host may
    /// relax this for loopback.
    pub auth_requires_tls: bool,
    /// Message submission (RFC 6409 §4.1): MAIL needs a successful AUTH first.
    pub submission: bool,
    /// Offer BURL (RFC 4468) once authenticated: the host resolves IMAP URLs.
    pub burl: bool,
    /// The host's secret for SCRAM's answers to unknown users (random per server start).
    pub sasl_secret: [u8; 32],
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: "localhost".into(),
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 20,
            max_line_length: 4096,
            starttls: false,
            auth: false,
            auth_requires_tls: true,
            submission: false,
            burl: false,
            sasl_secret: [0; 32],
        }
    }
}

/// What the host must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Send this reply to the client (the host may batch replies until `NeedInput`).
    Reply(Reply),
    /// Look up this forward-path and answer with [`Session::rcpt_verdict`].
    CheckRecipient(String),
    /// Store this message durably, then answer with [`Session::delivery_result`].
    Deliver(Message),
    /// Flush pending replies, then run the TLS handshake and call [`Session::tls_started`].
    StartTls,
    /// Check these credentials and answer with [`Session::auth_result`].
    Authenticate { user: String, password: String },
    /// SCRAM-SHA-256 (RFC 7677): the stored credentials of this user, answered with
    /// [`Session::scram_credentials`] (`None` for an unknown or disabled account).
    ScramLookup { user: String },
    /// SCRAM: the client's proof was checked (`ok`); answer with [`Session::auth_result`]
    /// as after a password check (a failure counts as one).
    ScramVerified { user: String, ok: bool },
    /// The authenticated user wants this reverse-path: is it one of theirs? Answer with
    /// [`Session::sender_verdict`].
    CheckSender(String),
    /// RFC 4468 BURL: fetch what this IMAP URL names for the authenticated `user` and
    /// answer with [`Session::burl_result`].
    ResolveUrl { url: String, user: String },
    /// Flush pending replies and close the connection.
    Close,
    /// Read more bytes from the client and [`Session::push`] them.
    NeedInput,
}

/// See [`Session::receiving`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiving {
    Nothing,
    Line,
    Message,
}

/// The host's answer to [`Event::CheckRecipient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptVerdict {
    Accept,
    /// A local domain, but no such user or alias.
    UnknownUser,
    /// The account exists but is disabled.
    Disabled,
    /// Not a local domain and the client may not relay.
    RelayDenied,
    /// Not a local domain, the client may relay, but there is no route (no outbound queue).
    NoRoute,
    /// The account is at its storage limit.
    MailboxFull,
    /// Lookup failed for a reason that may pass (storage busy...).
    TempFail,
}

/// The host's answer to [`Event::Authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Logged in as this (normalized) account address.
    Success(String),
    Failure,
    /// Too many failures from this address or for this account: try later (454 4.7.0).
    Throttled,
    TempFail,
}

/// The host's answer to [`Event::ResolveUrl`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlOutcome {
    Data(Vec<u8>),
    /// The URL names nothing this user may read (554 5.6.6, RFC 4468 §6).
    Invalid(String),
    /// Could not be read now (454 4.6.6).
    TempFail(String),
}

/// The host's answer to [`Event::Deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Durably stored; the id is shown to the client and logged.
    Stored { id: String },
    /// Not stored; the client should retry later.
    TempFail(String),
    /// Refused for good.
    Rejected(String),
    /// Refused by policy (RFC 6409 §6.1: the From: header is not the user's): 553 5.7.1.
    Forbidden(String),
    /// A recipient has no room for it now: 452 4.2.2 (RFC 3463 §3.3), the client retries.
    MailboxFull,
    /// Refused by the inbound checks (forged sender, virus, spam): `550 5.7.1`, `554 5.7.1`.
    PolicyReject { code: u16, text: String },
    /// The checks could not finish (DNS, virus scanner): `451 4.7.1`, the client retries.
    PolicyTempFail(String),
}

/// One received message and its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub helo: String,
    pub esmtp: bool,
    pub tls: bool,
    /// The reverse-path; empty for the null sender `<>`.
    pub mail_from: String,
    /// Accepted forward-paths, in order, without duplicates.
    pub rcpt_to: Vec<String>,
    pub smtputf8: bool,
    /// The account that authenticated (RFC 4954), if any.
    pub auth: Option<String>,
    /// What the sender asked to be told of each recipient, parallel to `rcpt_to` (RFC 3461).
    pub rcpt_dsn: Vec<RcptDsn>,
    /// RFC 3461 §4.3, §4.4: RET and ENVID of MAIL.
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// RFC 8689: MAIL FROM had REQUIRETLS.
    pub require_tls: bool,
    /// The message exactly as received, dot-unstuffed, without the final `.` line.
    pub data: Vec<u8>,
}

impl Message {
    /// The `with` keyword of the Received header (RFC 3848, RFC 6531 §3.7.3).
    pub fn protocol(&self) -> &'static str {
        if self.auth.is_some() {
            return match (self.tls, self.smtputf8) {
                (false, false) => "ESMTPA",
                (true, false) => "ESMTPSA",
                (false, true) => "UTF8SMTPA",
                (true, true) => "UTF8SMTPSA",
            };
        }
        match (self.esmtp, self.tls, self.smtputf8) {
            (false, false, _) => "SMTP",
            (false, true, _) => "SMTPS",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "UTF8SMTP",
            (true, true, true) => "UTF8SMTPS",
        }
    }
}

/// The DSN parameters of one RCPT (RFC 3461 §4.1, §4.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptDsn {
    pub notify: Option<Notify>,
    /// `(address type, original recipient)`.
    pub orcpt: Option<(String, String)>,
}

#[derive(Debug)]
struct Envelope {
    mail_from: String,
    rcpt_to: Vec<String>,
    rcpt_dsn: Vec<RcptDsn>,
    ret: Option<Ret>,
    envid: Option<String>,
    require_tls: bool,
    smtputf8: bool,
    /// BDAT chunks have been received: DATA is no longer allowed (RFC 3030 §3).
    bdat: bool,
    /// The SIZE the client declared at MAIL (RFC 1870), 0 when none.
    size: usize,
}

enum Phase {
    Command,
    /// A too-long command line is being skipped up to its LF.
    SkipLine,
    AwaitRcpt(String, RcptDsn),
    Data(DataReader),
    Bdat(BdatReceiver),
    /// Message bytes are read and thrown away; `reply` is sent at the end.
    Discard(DummyDataReceiver, Reply),
    AwaitDelivery,
    /// BURL sent: the URL is being resolved; `bool`: it was the LAST part.
    AwaitUrl(String, bool),
    AwaitTls,
    AwaitAuth {
        user: String,
        password: String,
    },
    /// SCRAM: the host looks up the user's credentials.
    AwaitScram(yubin_sasl::Exchange, String),
    /// SCRAM: the proof was checked; the host decides as after a password check.
    AwaitScramVerdict {
        user: String,
        ok: bool,
        server_final: Vec<u8>,
    },
    AwaitSender(Envelope),
    Closed,
}

/// Where a multi-line AUTH exchange is (RFC 4954 §4).
#[derive(Debug)]
enum AuthStep {
    /// The mechanism's next client message.
    Sasl(Box<yubin_sasl::Exchange>),
    /// SCRAM's server-final was sent: an empty line completes the login as this user.
    FinalAck(String),
}

pub struct Session {
    cfg: Config,
    phase: Phase,
    out: VecDeque<Reply>,
    pending: Option<Message>,
    buf: Vec<u8>,
    pos: usize,
    helo: Option<String>,
    esmtp: bool,
    tls: bool,
    envelope: Option<Envelope>,
    body: Vec<u8>,
    errors: u32,
    auth_step: Option<AuthStep>,
    authenticated: Option<String>,
}

/// RFC 5321 §4.2.2 code and RFC 3463 enhanced code in one call.
fn r(code: u16, esc: (u8, u16, u16), text: impl Into<String>) -> Reply {
    Reply::esc(code, esc, text)
}

impl Session {
    /// A new session; its first event is the 220 greeting (RFC 5321 §4.3.1).
    pub fn new(cfg: Config) -> Self {
        let greeting = Reply::new(220, None, format!("{} ESMTP yubin", cfg.hostname));
        Session {
            cfg,
            phase: Phase::Command,
            out: VecDeque::from([greeting]),
            pending: None,
            buf: Vec::new(),
            pos: 0,
            helo: None,
            esmtp: false,
            tls: false,
            envelope: None,
            body: Vec::new(),
            errors: 0,
            auth_step: None,
            authenticated: None,
        }
    }

    /// For a connection that is already encrypted (implicit TLS, RFC 8314).
    pub fn new_tls(cfg: Config) -> Self {
        let mut s = Session::new(Config {
            starttls: false,
            ..cfg
        });
        s.tls = true;
        s
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Bytes held for this client: unprocessed input plus the message being received.
    /// Bounded by `max_line_length + max_message_size` plus one read.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos + self.body.len()
    }

    /// Bytes read from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next thing the host must do.
    pub fn poll(&mut self) -> Event {
        loop {
            if let Some(reply) = self.out.pop_front() {
                return Event::Reply(reply);
            }
            if let Some(msg) = self.pending.take() {
                return Event::Deliver(msg);
            }
            match &mut self.phase {
                Phase::Closed => return Event::Close,
                Phase::AwaitTls => return Event::StartTls,
                Phase::AwaitRcpt(addr, _) => return Event::CheckRecipient(addr.clone()),
                Phase::AwaitAuth { user, password } => {
                    return Event::Authenticate {
                        user: user.clone(),
                        password: password.clone(),
                    };
                }
                Phase::AwaitScram(_, user) => {
                    return Event::ScramLookup { user: user.clone() };
                }
                Phase::AwaitScramVerdict { user, ok, .. } => {
                    return Event::ScramVerified {
                        user: user.clone(),
                        ok: *ok,
                    };
                }
                Phase::AwaitSender(env) => return Event::CheckSender(env.mail_from.clone()),
                Phase::AwaitUrl(url, _) => {
                    return Event::ResolveUrl {
                        url: url.clone(),
                        user: self.authenticated.clone().unwrap_or_default(),
                    };
                }
                // The host must answer before reading more; nothing else to do meanwhile.
                Phase::AwaitDelivery => return Event::NeedInput,
                Phase::Command => {
                    if !self.next_command() {
                        return Event::NeedInput;
                    }
                }
                Phase::SkipLine => {
                    let avail = &self.buf[self.pos..];
                    match avail.iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            self.pos += i + 1;
                            self.phase = Phase::Command;
                        }
                        None => {
                            self.pos = self.buf.len();
                            return Event::NeedInput;
                        }
                    }
                }
                Phase::Data(rx) => {
                    let avail = self.buf.get(self.pos..).unwrap_or_default();
                    let (n, done) = rx.ingest(avail, &mut self.body);
                    self.pos += n;
                    if !rx.discard && self.body.len() > self.cfg.max_message_size {
                        rx.discard = true;
                        self.body = Vec::new();
                    }
                    if !done {
                        return Event::NeedInput;
                    }
                    let (bare, discard) = (rx.bare, rx.discard);
                    if discard {
                        self.phase = Phase::Command;
                        self.envelope = None;
                        let reply = self.too_big();
                        self.reply(reply);
                    } else {
                        self.end_of_message(bare);
                    }
                }
                Phase::Bdat(rx) => {
                    let avail = &self.buf[self.pos..];
                    let mut it = avail.iter();
                    let done = rx.ingest(&mut it, &mut self.body);
                    self.pos += avail.len() - it.as_slice().len();
                    if !done {
                        return Event::NeedInput;
                    }
                    if rx.is_last {
                        let bare = bare_line_end(&self.body);
                        self.end_of_message(bare);
                    } else {
                        let n = self.body.len();
                        self.phase = Phase::Command;
                        self.reply(r(250, (2, 0, 0), format!("{n} octets received")));
                    }
                }
                Phase::Discard(rx, _) => {
                    let avail = &self.buf[self.pos..];
                    let mut it = avail.iter();
                    let done = rx.ingest(&mut it);
                    self.pos += avail.len() - it.as_slice().len();
                    if !done {
                        return Event::NeedInput;
                    }
                    if let Phase::Discard(_, reply) =
                        std::mem::replace(&mut self.phase, Phase::Command)
                    {
                        self.reply(reply);
                    }
                }
            }
        }
    }

    /// The host's answer to [`Event::CheckRecipient`].
    pub fn rcpt_verdict(&mut self, verdict: RcptVerdict) {
        let Phase::AwaitRcpt(addr, dsn) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        let reply = match verdict {
            RcptVerdict::Accept => {
                if let Some(env) = &mut self.envelope
                    && !env.rcpt_to.iter().any(|a| a.eq_ignore_ascii_case(&addr))
                {
                    env.rcpt_to.push(addr);
                    env.rcpt_dsn.push(dsn);
                }
                r(250, (2, 1, 5), "Ok")
            }
            // RFC 3463 §3.2: X.1.1 bad destination mailbox address.
            RcptVerdict::UnknownUser => r(
                550,
                (5, 1, 1),
                format!("<{addr}>: user unknown in local recipient table"),
            ),
            // RFC 3463 §3.3: X.2.1 mailbox disabled, not accepting messages.
            RcptVerdict::Disabled => r(550, (5, 2, 1), format!("<{addr}>: mailbox disabled")),
            // RFC 3463 §3.8: X.7.1 delivery not authorized.
            RcptVerdict::RelayDenied => r(550, (5, 7, 1), format!("<{addr}>: relay access denied")),
            // RFC 3463 §3.5: X.4.4 unable to route.
            RcptVerdict::NoRoute => r(
                550,
                (5, 4, 4),
                format!("<{addr}>: delivery to other domains is not enabled on this server"),
            ),
            // RFC 3463 §3.3: X.2.2 mailbox full; 452 so the sender retries (RFC 5321 §4.2.2).
            RcptVerdict::MailboxFull => r(452, (4, 2, 2), format!("<{addr}>: mailbox full")),
            RcptVerdict::TempFail => r(
                451,
                (4, 3, 0),
                format!("<{addr}>: temporary lookup failure, try again later"),
            ),
        };
        self.reply(reply);
    }

    /// The host's answer to [`Event::Deliver`]. The transaction ends either way.
    pub fn delivery_result(&mut self, outcome: DeliveryOutcome) {
        if !matches!(self.phase, Phase::AwaitDelivery) {
            return;
        }
        self.phase = Phase::Command;
        self.envelope = None;
        let reply = match outcome {
            DeliveryOutcome::Stored { id } => r(250, (2, 0, 0), format!("Ok: stored as {id}")),
            DeliveryOutcome::TempFail(why) => r(451, (4, 3, 0), why),
            DeliveryOutcome::Rejected(why) => r(554, (5, 6, 0), why),
            DeliveryOutcome::Forbidden(why) => r(553, (5, 7, 1), why),
            DeliveryOutcome::MailboxFull => r(452, (4, 2, 2), "Mailbox full, try again later"),
            // RFC 3463 §3.8: 5.7.1 "delivery not authorized, message refused".
            DeliveryOutcome::PolicyReject { code, text } => {
                let code = if (550..=554).contains(&code) {
                    code
                } else {
                    550
                };
                r(code, (5, 7, 1), text)
            }
            DeliveryOutcome::PolicyTempFail(why) => r(451, (4, 7, 1), why),
        };
        self.out.push_back(reply);
    }

    /// The host's answer to [`Event::Authenticate`].
    pub fn auth_result(&mut self, outcome: AuthOutcome) {
        let server_final = match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::AwaitAuth { .. } => None,
            Phase::AwaitScramVerdict { server_final, .. } => Some(server_final),
            other => {
                self.phase = other;
                return;
            }
        };
        // RFC 4954 §6 and RFC 3463: X.7.8 invalid credentials, X.7.0 temporary failure.
        let reply = match outcome {
            AuthOutcome::Success(user) if server_final.is_some() => {
                // RFC 4954 §4: SCRAM's server-final goes as one more challenge; the empty
                // response to it completes the login.
                let data = server_final.unwrap_or_default();
                self.auth_step = Some(AuthStep::FinalAck(user));
                self.out
                    .push_back(Reply::new(334, None, yubin_sasl::encode(&data)));
                return;
            }
            AuthOutcome::Success(user) => {
                self.authenticated = Some(user);
                r(235, (2, 7, 0), "Authentication successful")
            }
            AuthOutcome::Failure => r(535, (5, 7, 8), "Authentication credentials invalid"),
            AuthOutcome::Throttled => r(
                454,
                (4, 7, 0),
                "Too many failed authentications; try again later",
            ),
            AuthOutcome::TempFail => r(454, (4, 7, 0), "Temporary authentication failure"),
        };
        self.reply(reply);
    }

    /// The host's answer to [`Event::ScramLookup`]; `nonce` from [`yubin_sasl::nonce`].
    pub fn scram_credentials(&mut self, creds: Option<yubin_sasl::ScramCredentials>, nonce: &str) {
        let Phase::AwaitScram(mut x, _) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        let next = x.credentials(creds, nonce);
        self.sasl_next(x, next);
    }

    /// The host's answer to [`Event::CheckSender`].
    pub fn sender_verdict(&mut self, allowed: bool) {
        let Phase::AwaitSender(env) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        if allowed {
            self.envelope = Some(env);
            self.reply(r(250, (2, 1, 0), "Ok"));
        } else {
            // RFC 6409 §6.1: a submission server may refuse senders the user does not own.
            self.reply(r(
                553,
                (5, 7, 1),
                format!(
                    "<{}>: sender address not owned by the authenticated user",
                    env.mail_from
                ),
            ));
        }
    }

    /// The message size the client declared with MAIL FROM SIZE= (RFC 1870 §6.2), or 0:
    /// the host checks a recipient's quota with it at RCPT.
    pub fn declared_size(&self) -> usize {
        self.envelope.as_ref().map_or(0, |e| e.size)
    }

    /// The account this session authenticated as.
    pub fn auth_user(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// The TLS handshake after STARTTLS succeeded: start over (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.cfg.starttls = false;
        // RFC 4954 §4: no authentication carries over a TLS negotiation.
        self.authenticated = None;
        self.helo = None;
        self.esmtp = false;
        self.envelope = None;
        self.buf.clear();
        self.pos = 0;
        self.phase = Phase::Command;
    }

    /// The server is shutting down. A session between transactions is closed with 421
    /// (RFC 5321 §3.8) and `true` is returned; one receiving a message is left to finish.
    pub fn shutdown(&mut self) -> bool {
        match self.phase {
            Phase::Command
            | Phase::SkipLine
            | Phase::AwaitTls
            | Phase::AwaitRcpt(..)
            | Phase::AwaitAuth { .. }
            | Phase::AwaitScram(..)
            | Phase::AwaitScramVerdict { .. }
                if self.envelope.is_none() =>
            {
                self.out.push_back(r(
                    421,
                    (4, 3, 2),
                    format!("{} shutting down, try again later", self.cfg.hostname),
                ));
                self.phase = Phase::Closed;
                true
            }
            Phase::Closed => true,
            _ => false,
        }
    }

    /// What the client is in the middle of, for the host's deadlines: a whole command
    /// line, and a whole message, must arrive in bounded time however slowly it trickles.
    pub fn receiving(&self) -> Receiving {
        match self.phase {
            Phase::Data(_) | Phase::Bdat(_) | Phase::Discard(..) => Receiving::Message,
            // Between the chunks of one BDAT message: still the same message's deadline.
            _ if self.envelope.as_ref().is_some_and(|e| e.bdat) => Receiving::Message,
            Phase::SkipLine => Receiving::Line,
            _ if self.pos < self.buf.len() => Receiving::Line,
            _ => Receiving::Nothing,
        }
    }

    /// The server has no room for more messages in flight: end the session with 421
    /// (RFC 5321 §4.5.3.1.9 / RFC 3463 X.3.1 insufficient system storage); the client
    /// retries later.
    pub fn overloaded(&mut self) {
        self.body = Vec::new();
        self.out.push_back(r(
            421,
            (4, 3, 1),
            format!("{} too busy, try again later", self.cfg.hostname),
        ));
        self.phase = Phase::Closed;
    }

    /// The client was idle for too long (RFC 5321 §4.5.3.2.7).
    pub fn timeout(&mut self) {
        self.out.push_back(r(
            421,
            (4, 4, 2),
            format!("{} idle timeout, closing", self.cfg.hostname),
        ));
        self.phase = Phase::Closed;
    }

    /// Queue a reply to a client command; error replies count towards `max_errors`.
    fn reply(&mut self, reply: Reply) {
        let error = reply.is_error();
        self.out.push_back(reply);
        if error {
            self.errors += 1;
            if self.errors >= self.cfg.max_errors {
                self.out
                    .push_back(r(421, (4, 7, 0), "Too many errors, closing connection"));
                self.phase = Phase::Closed;
            }
        }
    }

    fn too_big(&self) -> Reply {
        // RFC 1870 §6.3 / RFC 3463 §3.4: X.3.4 message too big for system.
        r(
            552,
            (5, 3, 4),
            format!(
                "Message size exceeds fixed limit of {} octets",
                self.cfg.max_message_size
            ),
        )
    }

    /// Take one command line from the buffer and act on it. False when no full line is there.
    fn next_command(&mut self) -> bool {
        let avail = &self.buf[self.pos..];
        let Some(i) = avail.iter().position(|&b| b == b'\n') else {
            if avail.len() >= self.cfg.max_line_length {
                self.pos = self.buf.len();
                self.phase = Phase::SkipLine;
                self.reply(r(500, (5, 5, 2), "Line too long"));
                return true;
            }
            return false;
        };
        let start = self.pos;
        self.pos += i + 1;
        if i + 1 > self.cfg.max_line_length {
            self.reply(r(500, (5, 5, 2), "Line too long"));
            return true;
        }
        let line = self.buf[start..start + i + 1].to_vec();
        self.command(&line);
        true
    }

    fn command(&mut self, line: &[u8]) {
        if let Some(step) = self.auth_step.take() {
            return self.auth_continue(step, line);
        }
        if line.contains(&0) {
            return self.reply(r(500, (5, 5, 2), "NUL characters are not allowed"));
        }
        if std::str::from_utf8(line).is_err() {
            return self.reply(r(500, (5, 5, 2), "Command is not valid UTF-8"));
        }
        match Request::parse(&mut line.iter()) {
            Ok(Request::Rcpt { mut to }) if to.address.is_empty() => {
                // smtp-proto reads `<postmaster>` as an empty path; RFC 5321 §4.1.1.3 requires
                // accepting "Postmaster" without a domain, and `RCPT TO:<>` is invalid.
                let lower = line.to_ascii_lowercase();
                if lower.windows(12).any(|w| w == b"<postmaster>") {
                    to.address = "postmaster".into();
                    self.rcpt(to.into_owned())
                } else {
                    self.reply(r(501, (5, 1, 3), "Bad recipient address syntax"))
                }
            }
            Ok(req) => self.request(req.into_owned()),
            Err(e) => {
                let reply = match e {
                    ProtoError::UnknownCommand => r(500, (5, 5, 2), "Command unrecognized"),
                    ProtoError::InvalidSenderAddress => {
                        r(501, (5, 1, 7), "Bad sender address syntax")
                    }
                    ProtoError::InvalidRecipientAddress => {
                        r(501, (5, 1, 3), "Bad recipient address syntax")
                    }
                    ProtoError::SyntaxError { syntax } => {
                        r(501, (5, 5, 4), format!("Syntax: {syntax}"))
                    }
                    ProtoError::InvalidParameter { param } => {
                        r(501, (5, 5, 4), format!("Invalid parameter {param}"))
                    }
                    // RFC 5321 §4.1.1.11: 555 for MAIL/RCPT parameters not recognized.
                    ProtoError::UnsupportedParameter { param } => {
                        r(555, (5, 5, 4), format!("Unsupported parameter {param}"))
                    }
                    ProtoError::ResponseTooLong => r(500, (5, 5, 2), "Line too long"),
                    _ => r(500, (5, 5, 2), "Syntax error"),
                };
                self.reply(reply)
            }
        }
    }

    fn request(&mut self, req: Request<String>) {
        match req {
            Request::Ehlo { host } => self.hello(host, true),
            Request::Helo { host } => self.hello(host, false),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => self.data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last),
            Request::Rset => {
                self.envelope = None;
                self.body.clear();
                self.reply(r(250, (2, 0, 0), "Ok"))
            }
            Request::Noop { .. } => self.reply(r(250, (2, 0, 0), "Ok")),
            // RFC 5321 §3.5.3: 252 when we will not verify but would accept.
            Request::Vrfy { .. } => self.reply(r(
                252,
                (2, 5, 2),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Request::Expn { .. } => self.reply(r(502, (5, 5, 1), "EXPN not available")),
            Request::Help { .. } => self.reply(r(
                214,
                (2, 0, 0),
                "Commands: EHLO HELO MAIL RCPT DATA BDAT BURL RSET NOOP VRFY HELP STARTTLS QUIT",
            )),
            Request::Quit => {
                self.out.push_back(r(221, (2, 0, 0), "Bye"));
                self.phase = Phase::Closed;
            }
            Request::StartTls => {
                if self.tls {
                    self.reply(r(503, (5, 5, 1), "TLS already active"))
                } else if !self.cfg.starttls {
                    self.reply(r(454, (4, 7, 0), "TLS not available"))
                } else {
                    // RFC 3207 §4.2: anything the client pipelined after STARTTLS is dropped.
                    self.pos = self.buf.len();
                    self.out.push_back(r(220, (2, 0, 0), "Ready to start TLS"));
                    self.phase = Phase::AwaitTls;
                }
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response),
            Request::Lhlo { .. } => self.reply(r(500, (5, 5, 2), "Command unrecognized")),
            Request::Burl { uri, is_last } if self.cfg.burl => self.burl(uri, is_last),
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.reply(r(502, (5, 5, 1), "Command not implemented"))
            }
        }
    }

    fn auth(&mut self, mechanism: u64, initial: String) {
        if !self.cfg.auth {
            return self.reply(r(502, (5, 5, 1), "AUTH not available on this port"));
        }
        if self.cfg.auth_requires_tls && !self.tls {
            // RFC 4954 §6: 538 when the mechanism needs an encrypted connection.
            return self.reply(r(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        if self.authenticated.is_some() {
            return self.reply(r(503, (5, 5, 1), "Already authenticated"));
        }
        if self.envelope.is_some() {
            return self.reply(r(
                503,
                (5, 5, 1),
                "AUTH not allowed during a mail transaction",
            ));
        }
        if self.helo.is_none() {
            return self.reply(r(503, (5, 5, 1), "Send EHLO first"));
        }
        let mech = match mechanism {
            smtp_proto::AUTH_PLAIN => yubin_sasl::Mechanism::Plain,
            smtp_proto::AUTH_LOGIN => yubin_sasl::Mechanism::Login,
            smtp_proto::AUTH_SCRAM_SHA_256 => yubin_sasl::Mechanism::ScramSha256,
            _ => return self.reply(r(504, (5, 5, 4), "Unrecognized authentication type")),
        };
        // RFC 4954 §4: an initial response (`=` for an empty one).
        let initial = if initial.is_empty() {
            None
        } else {
            match yubin_sasl::decode_response(initial.as_bytes()) {
                Ok(d) => Some(d),
                Err(e) => return self.sasl_failed(e),
            }
        };
        let (x, next) = yubin_sasl::Exchange::start(mech, initial.as_deref(), self.cfg.sasl_secret);
        self.sasl_next(x, next);
    }

    /// Go on with an exchange after the mechanism's step.
    fn sasl_next(&mut self, x: yubin_sasl::Exchange, next: yubin_sasl::Next) {
        use yubin_sasl::Next;
        match next {
            Next::Challenge(c) => {
                self.auth_step = Some(AuthStep::Sasl(Box::new(x)));
                self.out
                    .push_back(Reply::new(334, None, yubin_sasl::encode(&c)));
            }
            Next::CheckPassword { user, password } => {
                self.phase = Phase::AwaitAuth { user, password };
            }
            Next::Lookup { user } => self.phase = Phase::AwaitScram(x, user),
            Next::Verified {
                user,
                ok,
                server_final,
            } => {
                self.phase = Phase::AwaitScramVerdict {
                    user,
                    ok,
                    server_final,
                }
            }
            Next::Failed(e) => self.sasl_failed(e),
        }
    }

    fn sasl_failed(&mut self, e: yubin_sasl::Error) {
        use yubin_sasl::Error;
        let reply = match e {
            Error::Cancelled => r(501, (5, 0, 0), "Authentication cancelled"),
            Error::Base64 => r(501, (5, 5, 2), "Invalid base64 data"),
            Error::Authzid => r(535, (5, 7, 8), "Cannot act as another user"),
            Error::TooLong => r(500, (5, 5, 6), "Authentication exchange line is too long"),
            e => r(501, (5, 5, 2), format!("Authentication failed: {e}")),
        };
        self.reply(reply)
    }

    /// One line of an AUTH exchange: base64, or `*` to cancel (RFC 4954 §4).
    fn auth_continue(&mut self, step: AuthStep, line: &[u8]) {
        let data = match yubin_sasl::decode_response(line.trim_ascii()) {
            Ok(d) => d,
            Err(e) => return self.sasl_failed(e),
        };
        match step {
            AuthStep::Sasl(mut x) => {
                let next = x.respond(&data);
                self.sasl_next(*x, next);
            }
            AuthStep::FinalAck(user) => {
                if !data.is_empty() {
                    return self.reply(r(501, (5, 5, 2), "Expected an empty response"));
                }
                self.authenticated = Some(user);
                self.reply(r(235, (2, 7, 0), "Authentication successful"));
            }
        }
    }

    fn hello(&mut self, host: String, esmtp: bool) {
        if host.trim().is_empty() {
            let cmd = if esmtp { "EHLO" } else { "HELO" };
            return self.reply(r(501, (5, 5, 4), format!("Syntax: {cmd} hostname")));
        }
        // RFC 5321 §4.1.4: EHLO/HELO resets any transaction in progress.
        self.envelope = None;
        self.body.clear();
        self.helo = Some(host.clone());
        self.esmtp = esmtp;
        if !esmtp {
            return self.reply(Reply::new(250, None, self.cfg.hostname.clone()));
        }
        let mut lines = vec![
            format!("{} Hello {}", self.cfg.hostname, host),
            "PIPELINING".into(),
            format!("SIZE {}", self.cfg.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            // RFC 3461: NOTIFY, RET, ENVID, ORCPT.
            "DSN".into(),
        ];
        // RFC 8689 §4.1: only where the session is protected.
        if self.tls {
            lines.push("REQUIRETLS".into());
        }
        if self.cfg.starttls && !self.tls {
            lines.push("STARTTLS".into());
        }
        if self.cfg.auth && (self.tls || !self.cfg.auth_requires_tls) {
            lines.push("AUTH SCRAM-SHA-256 PLAIN LOGIN".into());
        }
        // RFC 4468 §3: BURL, with the URL scheme it resolves.
        if self.cfg.burl && self.cfg.auth {
            lines.push("BURL imap".into());
        }
        lines.push("HELP".into());
        self.reply(Reply::multi(250, lines));
    }

    fn mail(&mut self, from: MailFrom<String>) {
        if self.helo.is_none() {
            return self.reply(r(503, (5, 5, 1), "Send HELO/EHLO first"));
        }
        if self.envelope.is_some() {
            return self.reply(r(503, (5, 5, 1), "Nested MAIL command"));
        }
        if self.cfg.submission && self.authenticated.is_none() {
            // RFC 6409 §4.1 / RFC 4954 §6: 530 5.7.0 authentication required.
            return self.reply(r(530, (5, 7, 0), "Authentication required"));
        }
        // Only the extensions we advertise may be used (RFC 5321 §4.1.1.11).
        let known = smtp_proto::MAIL_BODY_7BIT
            | smtp_proto::MAIL_BODY_8BITMIME
            | smtp_proto::MAIL_SMTPUTF8
            | smtp_proto::MAIL_RET_FULL
            | smtp_proto::MAIL_RET_HDRS
            | smtp_proto::MAIL_REQUIRETLS;
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if from.flags & !known != 0
            || (from.auth.is_some() && !self.cfg.auth)
            || from.trans_id.is_some()
            || from.by != 0
            || from.hold_for != 0
            || from.hold_until != 0
            || from.mtrk.is_some()
            || from.solicit.is_some()
            || from.mt_priority != 0
        {
            return self.reply(r(555, (5, 5, 4), "Unsupported MAIL parameter"));
        }
        if !self.esmtp && (from.flags != 0 || from.size != 0) {
            return self.reply(r(555, (5, 5, 4), "MAIL parameters require EHLO"));
        }
        if from.size > self.cfg.max_message_size {
            return self.reply(self.too_big());
        }
        let ret = match (
            from.flags & smtp_proto::MAIL_RET_FULL != 0,
            from.flags & smtp_proto::MAIL_RET_HDRS != 0,
        ) {
            (true, true) => return self.reply(r(501, (5, 5, 4), "RET given twice")),
            (true, false) => Some(Ret::Full),
            (false, true) => Some(Ret::Hdrs),
            (false, false) => None,
        };
        // ENVID is xtext-decoded by the parser; what goes back in reports must be one line.
        if let Some(id) = &from.env_id
            && (id.len() > crate::dsn::MAX_ENVID || id.chars().any(char::is_control))
        {
            return self.reply(r(501, (5, 5, 4), "Invalid ENVID"));
        }
        let require_tls = from.flags & smtp_proto::MAIL_REQUIRETLS != 0;
        if require_tls && !self.tls {
            // RFC 8689 §4.1: REQUIRETLS over an unprotected session.
            return self.reply(r(530, (5, 7, 10), "REQUIRETLS needs a TLS session"));
        }
        if !from.address.is_ascii() && !smtputf8 {
            // RFC 6531 §3.4: a UTF-8 address needs the SMTPUTF8 parameter.
            return self.reply(r(553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8"));
        }
        if !from.address.is_empty() && !valid_mailbox(&from.address) {
            return self.reply(r(501, (5, 1, 7), "Sender address must be user@domain"));
        }
        let env = Envelope {
            mail_from: from.address,
            rcpt_to: Vec::new(),
            rcpt_dsn: Vec::new(),
            ret,
            envid: from.env_id,
            require_tls,
            smtputf8,
            bdat: false,
            size: from.size,
        };
        self.body.clear();
        if self.authenticated.is_some() {
            // The host decides whether this user may use this sender address.
            self.phase = Phase::AwaitSender(env);
            return;
        }
        self.envelope = Some(env);
        self.reply(r(250, (2, 1, 0), "Ok"))
    }

    fn rcpt(&mut self, to: RcptTo<String>) {
        let Some(env) = &self.envelope else {
            return self.reply(r(503, (5, 5, 1), "Need MAIL before RCPT"));
        };
        let notify_bits = smtp_proto::RCPT_NOTIFY_SUCCESS
            | smtp_proto::RCPT_NOTIFY_FAILURE
            | smtp_proto::RCPT_NOTIFY_DELAY
            | smtp_proto::RCPT_NOTIFY_NEVER;
        if to.flags & !notify_bits != 0 || to.rrvs != 0 {
            return self.reply(r(555, (5, 5, 4), "Unsupported RCPT parameter"));
        }
        // RFC 3461 §4.1: NEVER stands alone.
        if to.flags & smtp_proto::RCPT_NOTIFY_NEVER != 0
            && to.flags != smtp_proto::RCPT_NOTIFY_NEVER
        {
            return self.reply(r(501, (5, 5, 4), "NOTIFY=NEVER cannot be combined"));
        }
        let notify = (to.flags != 0).then_some(Notify {
            success: to.flags & smtp_proto::RCPT_NOTIFY_SUCCESS != 0,
            failure: to.flags & smtp_proto::RCPT_NOTIFY_FAILURE != 0,
            delay: to.flags & smtp_proto::RCPT_NOTIFY_DELAY != 0,
        });
        // The parser decoded the xtext; only type rfc822 gets this far (RFC 3461 §4.2).
        let orcpt = match to.orcpt {
            Some(o) if o.len() > crate::dsn::MAX_ORCPT || o.chars().any(char::is_control) => {
                return self.reply(r(501, (5, 5, 4), "Invalid ORCPT"));
            }
            Some(o) => Some(("rfc822".to_owned(), o)),
            None => None,
        };
        if env.rcpt_to.len() >= self.cfg.max_recipients {
            // RFC 5321 §4.5.3.1.10: 452 for too many recipients; the client sends the rest later.
            // Our own limit, not a client error: not counted towards `max_errors`.
            self.out.push_back(r(452, (4, 5, 3), "Too many recipients"));
            return;
        }
        if !to.address.is_ascii() && !env.smtputf8 {
            return self.reply(r(553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8"));
        }
        // RFC 5321 §4.1.1.3: "Postmaster" without a domain must be accepted.
        if !to.address.eq_ignore_ascii_case("postmaster") && !valid_mailbox(&to.address) {
            return self.reply(r(501, (5, 1, 3), "Recipient address must be user@domain"));
        }
        self.phase = Phase::AwaitRcpt(to.address, RcptDsn { notify, orcpt });
    }

    fn data(&mut self) {
        let reply = match &self.envelope {
            None => r(503, (5, 5, 1), "Need MAIL command"),
            Some(env) if env.bdat => r(503, (5, 5, 1), "DATA not allowed after BDAT"),
            // RFC 5321 §3.3: 503 or 554 when there are no valid recipients.
            Some(env) if env.rcpt_to.is_empty() => r(554, (5, 5, 1), "No valid recipients"),
            Some(_) => {
                self.body.clear();
                self.phase = Phase::Data(DataReader::default());
                self.out
                    .push_back(Reply::new(354, None, "End data with <CR><LF>.<CR><LF>"));
                return;
            }
        };
        self.reply(reply)
    }

    /// A BDAT or BURL part may start: a transaction with recipients, which from now on
    /// takes no DATA (RFC 3030 §3, RFC 4468 §3). The refusal otherwise.
    fn start_chunk(&mut self) -> Option<Reply> {
        match &mut self.envelope {
            None => Some(r(503, (5, 5, 1), "Need MAIL command")),
            Some(env) if env.rcpt_to.is_empty() => Some(r(554, (5, 5, 1), "No valid recipients")),
            Some(env) => {
                env.bdat = true;
                None
            }
        }
    }

    fn bdat(&mut self, size: usize, last: bool) {
        // RFC 3030 §2: the chunk is always consumed, even when the command fails.
        let refuse = self.start_chunk();
        let refuse = refuse.or_else(|| {
            (self.body.len().saturating_add(size) > self.cfg.max_message_size)
                .then(|| self.too_big())
        });
        match refuse {
            Some(reply) => {
                // A failed BDAT ends the transaction; later chunks get 503 (RFC 3030 §2).
                self.envelope = None;
                self.body = Vec::new();
                self.phase = Phase::Discard(DummyDataReceiver::new_bdat(size), reply);
            }
            None => {
                self.body.reserve(size.min(1 << 20));
                self.phase = Phase::Bdat(BdatReceiver::new(size, last));
            }
        }
    }

    /// RFC 4468 §3: BURL url [LAST] adds what the URL names to the message, like a BDAT
    /// chunk (DATA is not allowed after it).
    fn burl(&mut self, url: String, last: bool) {
        if self.authenticated.is_none() {
            return self.reply(r(530, (5, 7, 0), "Authentication required"));
        }
        let refuse = self.start_chunk();
        match refuse {
            Some(reply) => self.reply(reply),
            None => self.phase = Phase::AwaitUrl(url, last),
        }
    }

    /// The host's answer to [`Event::ResolveUrl`].
    pub fn burl_result(&mut self, outcome: UrlOutcome) {
        let Phase::AwaitUrl(_, last) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        let data = match outcome {
            UrlOutcome::Data(d) => d,
            failed => {
                // RFC 4468 §6: 554 5.6.6 / 454 4.6.6; the transaction ends as after a failed
                // BDAT.
                self.envelope = None;
                self.body = Vec::new();
                let reply = match failed {
                    UrlOutcome::TempFail(why) => r(454, (4, 6, 6), why),
                    UrlOutcome::Invalid(why) => r(554, (5, 6, 6), why),
                    UrlOutcome::Data(_) => return,
                };
                return self.reply(reply);
            }
        };
        if self.body.len().saturating_add(data.len()) > self.cfg.max_message_size {
            self.envelope = None;
            self.body = Vec::new();
            let reply = self.too_big();
            return self.reply(reply);
        }
        self.body.extend_from_slice(&data);
        if last {
            let bare = bare_line_end(&self.body);
            self.end_of_message(bare);
        } else {
            let n = self.body.len();
            self.reply(r(250, (2, 0, 0), format!("{n} octets received")));
        }
    }

    fn end_of_message(&mut self, bare_line_end: bool) {
        let data = std::mem::take(&mut self.body);
        let Some(env) = self.envelope.take() else {
            self.phase = Phase::Command;
            return;
        };
        if data.len() > self.cfg.max_message_size {
            self.phase = Phase::Command;
            let reply = self.too_big();
            return self.reply(reply);
        }
        if bare_line_end {
            self.phase = Phase::Command;
            return self.reply(r(
                554,
                (5, 6, 0),
                "Message contains a bare CR or LF; lines must end with CRLF (RFC 5321 §2.3.8)",
            ));
        }
        self.pending = Some(Message {
            helo: self.helo.clone().unwrap_or_default(),
            esmtp: self.esmtp,
            tls: self.tls,
            mail_from: env.mail_from,
            rcpt_to: env.rcpt_to,
            smtputf8: env.smtputf8,
            auth: self.authenticated.clone(),
            rcpt_dsn: env.rcpt_dsn,
            ret: env.ret,
            envid: env.envid,
            require_tls: env.require_tls,
            data,
        });
        self.phase = Phase::AwaitDelivery;
    }
}

/// `local@domain` with both parts non-empty (the parser already checked the characters).
fn valid_mailbox(addr: &str) -> bool {
    match addr.rsplit_once('@') {
        Some((local, domain)) => !local.is_empty() && !domain.is_empty(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replies(s: &mut Session) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match s.poll() {
                Event::Reply(r) => out.push(r.to_string()),
                Event::Close => {
                    out.push("[CLOSE]".into());
                    return out;
                }
                Event::NeedInput => return out,
                e => panic!("unexpected {e:?}"),
            }
        }
    }

    #[test]
    fn idle_timeout_closes_with_421() {
        let mut s = Session::new(Config::default());
        replies(&mut s);
        s.timeout();
        assert_eq!(
            replies(&mut s),
            ["421 4.4.2 localhost idle timeout, closing\r\n", "[CLOSE]"]
        );
    }

    #[test]
    fn shutdown_spares_a_transaction_in_progress() {
        let mut s = Session::new(Config::default());
        replies(&mut s);
        s.push(b"HELO x\r\nMAIL FROM:<a@b.c>\r\n");
        replies(&mut s);
        assert!(!s.shutdown(), "a transaction is in progress");
        s.push(b"RSET\r\n");
        replies(&mut s);
        assert!(s.shutdown());
        assert_eq!(
            replies(&mut s),
            [
                "421 4.3.2 localhost shutting down, try again later\r\n",
                "[CLOSE]"
            ]
        );
    }

    #[test]
    fn implicit_tls_session_does_not_offer_starttls() {
        let mut s = Session::new_tls(Config {
            starttls: true,
            ..Config::default()
        });
        assert!(s.is_tls());
        replies(&mut s);
        s.push(b"EHLO x\r\n");
        let ehlo = replies(&mut s).concat();
        assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    }
}
