//! yubin's POP3 server protocol (RFC 1939, RFC 2449, RFC 5034, RFC 2595), sans-IO.
//!
//! Implementation notes (the rules this crate keeps):
//! - The host pushes bytes with [`Session::push`], calls [`Session::poll`] until it says
//!   [`Event::NeedInput`], and writes [`Session::take_output`]. Backend calls may block.
//! - Commands are short lines (RFC 2449 §4: at most 255 octets with CRLF); longer ones are
//!   refused and skipped. The grammar is a keyword and a few arguments, so it is parsed here
//!   rather than with a crate.
//! - The maildrop is fixed at login (RFC 1939 §8); DELE only marks; deletions happen at QUIT
//!   in the UPDATE state; a dropped connection deletes nothing.
//! - One session per maildrop: a second gets `-ERR [IN-USE]` (RFC 2449 §8.1.1).
//! - Octet counts of STAT and LIST are exactly what RETR sends before the final `.`: lines
//!   end in CRLF and lines starting with `.` are dot-stuffed (RFC 1939 §3, §11).
//! - APOP is not offered: it needs the plain password on the server, and yubin keeps only
//!   argon2 hashes. The greeting carries no timestamp, so clients do not try it.

// Peer data is sliced by bytes and checked, never by `str` index (a byte in the middle of
// a character panics).
#![deny(clippy::string_slice)]

use std::collections::BTreeSet;

/// A failure the client hears about as `-ERR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// Temporary (RFC 3206 `[SYS/TEMP]`); the client may retry later.
    Temporary(String),
    /// Permanent (RFC 3206 `[SYS/PERM]`).
    Permanent(String),
}

pub type BResult<T> = Result<T, BackendError>;

/// One message of the maildrop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub uid: u32,
    /// What RETR sends, in octets (CRLF line ends, dot-stuffed).
    pub size: u64,
}

/// What the session needs from the server: the INBOX of one account.
pub trait Backend: Send {
    /// Check a password; `Ok(false)` for unknown users, disabled accounts, wrong passwords.
    fn login(&mut self, user: &str, password: &str) -> BResult<bool>;
    /// SCRAM-SHA-256 (RFC 7677): the user's stored credentials; `None` for an unknown or
    /// disabled account or one without them (the exchange then fails at the proof).
    fn scram_lookup(&mut self, _user: &str) -> BResult<Option<yubin_sasl::ScramCredentials>> {
        Ok(None)
    }
    /// SCRAM: the proof was checked (`ok`); `Ok(true)` logs the user in, as [`Backend::login`].
    fn scram_verified(&mut self, _user: &str, _ok: bool) -> BResult<bool> {
        Ok(false)
    }
    /// The secret for unknown users' SCRAM salts (random per server start).
    fn sasl_secret(&self) -> [u8; 32] {
        [0; 32]
    }
    /// A fresh SCRAM server nonce.
    fn scram_nonce(&self) -> String {
        "nonce".into()
    }
    /// Take the maildrop lock; `Ok(false)` when another POP3 session holds it.
    fn lock(&mut self) -> BResult<bool>;
    /// The maildrop (INBOX) by ascending UID, and the mailbox's UIDVALIDITY.
    fn maildrop(&mut self) -> BResult<(u32, Vec<Entry>)>;
    fn read(&mut self, uid: u32) -> BResult<Vec<u8>>;
    /// Remove these messages for good (the UPDATE state).
    fn delete(&mut self, uids: &[u32]) -> BResult<()>;
}

#[derive(Debug, Clone)]
pub struct Config {
    pub hostname: String,
    /// Offer STLS (a certificate is loaded and the connection is not encrypted yet).
    pub stls: bool,
    /// Allow USER/PASS and AUTH on an unencrypted connection (RFC 2595 §2: not by default).
    pub plaintext_auth: bool,
    /// Error replies before the session is closed.
    pub max_errors: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    NeedInput,
    /// Run the TLS handshake, then call [`Session::tls_started`].
    StartTls,
    Close,
}

/// Where an AUTH exchange is.
enum SaslStep {
    Exchange(Box<yubin_sasl::Exchange>),
    /// SCRAM's server-final was sent and the backend let the user in: an empty line
    /// completes the login.
    FinalAck,
}

enum State {
    Authorization {
        user: Option<String>,
    },
    /// An AUTH exchange (RFC 5034 §4): the next client line is SASL data.
    Sasl(SaslStep),
    Transaction,
    Closed,
}

const MAX_LINE: usize = 255;

pub struct Session<B: Backend> {
    cfg: Config,
    backend: B,
    state: State,
    tls: bool,
    buf: Vec<u8>,
    out: Vec<u8>,
    start_tls: bool,
    skipping: bool,
    errors: u32,
    uidvalidity: u32,
    drop: Vec<Entry>,
    deleted: BTreeSet<usize>,
}

/// The bytes RETR sends for a message, without the final `.` line: CRLF line ends and
/// dot-stuffing (RFC 1939 §3).
pub fn wire_form(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 50 + 2);
    let mut at_line_start = true;
    let mut i = 0;
    while i < msg.len() {
        let c = msg[i];
        if at_line_start && c == b'.' {
            out.push(b'.');
        }
        match c {
            b'\r' if msg.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
                at_line_start = true;
            }
            b'\n' | b'\r' => {
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            _ => {
                out.push(c);
                at_line_start = false;
            }
        }
        i += 1;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl<B: Backend> Session<B> {
    pub fn new(cfg: Config, backend: B, tls: bool) -> Self {
        let mut s = Session {
            out: format!("+OK {} POP3 yubin ready\r\n", cfg.hostname).into_bytes(),
            cfg,
            backend,
            state: State::Authorization { user: None },
            tls,
            buf: Vec::new(),
            start_tls: false,
            skipping: false,
            errors: 0,
            uidvalidity: 0,
            drop: Vec::new(),
            deleted: BTreeSet::new(),
        };
        if tls {
            s.cfg.stls = false;
        }
        s
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Part of a command line is buffered (its deadline keeps running).
    pub fn partial_input(&self) -> bool {
        // A too-long line being skipped is still one command: its deadline runs on.
        !self.buf.is_empty() || self.skipping
    }

    /// The backend (the host asks it which account is logged in).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Logged in (past the AUTHORIZATION state).
    pub fn is_authenticated(&self) -> bool {
        !matches!(self.state, State::Authorization { .. })
    }

    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn tls_started(&mut self) {
        self.tls = true;
        self.cfg.stls = false;
        self.start_tls = false;
        // RFC 2595 §4: nothing sent before the handshake is used afterwards.
        self.buf.clear();
    }

    /// The client was silent too long (RFC 1939 §3: at least 10 minutes).
    pub fn timeout(&mut self) {
        // RFC 1939 §3: an autologout timeout does not enter UPDATE: nothing is deleted.
        self.line("-ERR autologout; idle for too long");
        self.state = State::Closed;
    }

    pub fn poll(&mut self) -> Event {
        loop {
            if matches!(self.state, State::Closed) {
                return Event::Close;
            }
            if self.start_tls {
                return Event::StartTls;
            }
            let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_LINE {
                    self.buf.clear();
                    if !self.skipping {
                        self.skipping = true;
                        self.err("line too long");
                    }
                }
                return Event::NeedInput;
            };
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            if line.len() > MAX_LINE {
                self.err("line too long");
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            self.command(text);
        }
    }

    fn line(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn ok(&mut self, s: &str) {
        self.line(&format!("+OK {s}"));
    }

    fn err(&mut self, s: &str) {
        self.line(&format!("-ERR {s}"));
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            self.line("-ERR too many errors, closing connection");
            self.state = State::Closed;
        }
    }

    fn backend_err(&mut self, e: BackendError) {
        match e {
            BackendError::Temporary(m) => self.err(&format!("[SYS/TEMP] {m}")),
            BackendError::Permanent(m) => self.err(&format!("[SYS/PERM] {m}")),
        }
    }

    fn capa(&mut self) {
        self.ok("Capability list follows");
        let mut caps = vec!["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"];
        let auth_ok = self.tls || self.cfg.plaintext_auth;
        if matches!(self.state, State::Authorization { .. }) {
            if auth_ok {
                caps.push("USER");
                caps.push("SASL SCRAM-SHA-256 PLAIN LOGIN");
            }
            if self.cfg.stls {
                caps.push("STLS");
            }
        }
        caps.push("IMPLEMENTATION yubin");
        for c in caps {
            self.line(c);
        }
        self.line(".");
    }

    fn command(&mut self, text: &str) {
        if matches!(self.state, State::Sasl(_)) {
            let State::Sasl(step) =
                std::mem::replace(&mut self.state, State::Authorization { user: None })
            else {
                return;
            };
            return self.auth_continue(step, text);
        }
        let (cmd, args) = text.split_once(' ').unwrap_or((text, ""));
        let cmd = cmd.to_ascii_uppercase();
        let args: Vec<&str> = args.split(' ').filter(|a| !a.is_empty()).collect();
        match (&self.state, cmd.as_str()) {
            (_, "CAPA") => self.capa(),
            (_, "QUIT") => self.quit(),
            (_, "NOOP") if matches!(self.state, State::Transaction) => self.ok(""),
            (State::Authorization { .. }, "STLS") => {
                if self.tls {
                    self.err("TLS is already active");
                } else if !self.cfg.stls {
                    self.err("TLS is not available");
                } else {
                    self.ok("Begin TLS negotiation");
                    self.start_tls = true;
                }
            }
            (State::Authorization { .. }, "USER") => {
                if !self.tls && !self.cfg.plaintext_auth {
                    // RFC 2595 §2 / RFC 3206: [AUTH] names an authentication problem.
                    return self.err("[AUTH] use STLS or port 995 before logging in");
                }
                match args.as_slice() {
                    [u] => {
                        let u = u.to_string();
                        self.state = State::Authorization { user: Some(u) };
                        self.ok("send PASS");
                    }
                    _ => self.err("usage: USER name"),
                }
            }
            (State::Authorization { user }, "PASS") => {
                let Some(user) = user.clone() else {
                    return self.err("USER first");
                };
                // RFC 1939 §7: the password may contain spaces; take the rest of the line.
                let pass = text.split_once(' ').map(|x| x.1).unwrap_or("").to_owned();
                self.state = State::Authorization { user: None };
                self.login(&user, &pass);
            }
            (State::Authorization { .. }, "AUTH") => match args.as_slice() {
                [] => {
                    self.ok("SASL mechanisms follow");
                    for m in yubin_sasl::Mechanism::ALL {
                        self.line(m.name());
                    }
                    self.line(".");
                }
                [m, rest @ ..] => {
                    let Some(mech) = yubin_sasl::Mechanism::parse(m) else {
                        return self.err("unsupported SASL mechanism");
                    };
                    if !self.tls && !self.cfg.plaintext_auth {
                        return self.err("[AUTH] use STLS or port 995 before logging in");
                    }
                    // RFC 5034 §4: an initial response, `=` for an empty one.
                    let initial = match rest {
                        [] => None,
                        [ir] => match yubin_sasl::decode_response(ir.as_bytes()) {
                            Ok(d) => Some(d),
                            Err(e) => return self.sasl_failed(e),
                        },
                        _ => return self.err("usage: AUTH mechanism [initial-response]"),
                    };
                    let secret = self.backend.sasl_secret();
                    let (x, next) = yubin_sasl::Exchange::start(mech, initial.as_deref(), secret);
                    self.sasl_next(x, next);
                }
            },
            (State::Authorization { .. }, "APOP") => self.err("APOP is not supported"),
            (State::Transaction, "STAT") => {
                let (n, size) = self
                    .live()
                    .fold((0, 0), |(n, s), (_, e)| (n + 1, s + e.size));
                self.ok(&format!("{n} {size}"));
            }
            (State::Transaction, "LIST") => self.list(&args, false),
            (State::Transaction, "UIDL") => self.list(&args, true),
            (State::Transaction, "RETR") => match args.as_slice() {
                [n] => self.retr(n, None),
                _ => self.err("usage: RETR msg"),
            },
            (State::Transaction, "TOP") => match args.as_slice() {
                [n, lines] => match lines.parse::<usize>() {
                    Ok(l) => self.retr(n, Some(l)),
                    Err(_) => self.err("invalid line count"),
                },
                _ => self.err("usage: TOP msg lines"),
            },
            (State::Transaction, "DELE") => match args.as_slice() {
                [n] => match self.msg(n) {
                    Some(i) => {
                        self.deleted.insert(i);
                        self.ok(&format!("message {} deleted", i + 1));
                    }
                    None => self.err("no such message"),
                },
                _ => self.err("usage: DELE msg"),
            },
            (State::Transaction, "RSET") => {
                self.deleted.clear();
                let n = self.drop.len();
                self.ok(&format!("maildrop has {n} messages"));
            }
            (State::Authorization { .. }, _) | (State::Transaction, _) => {
                if [
                    "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP", "USER", "PASS",
                    "AUTH", "APOP", "STLS",
                ]
                .contains(&cmd.as_str())
                {
                    self.err("command not valid in this state");
                } else {
                    self.err("unknown command");
                }
            }
            (State::Sasl(_) | State::Closed, _) => {}
        }
    }

    /// Go on with an AUTH exchange after the mechanism's step (yubin_sasl).
    fn sasl_next(&mut self, mut x: yubin_sasl::Exchange, next: yubin_sasl::Next) {
        use yubin_sasl::Next;
        match next {
            Next::Challenge(c) => {
                self.line(&format!("+ {}", yubin_sasl::encode(&c)));
                self.state = State::Sasl(SaslStep::Exchange(Box::new(x)));
            }
            Next::CheckPassword { user, password } => self.login(&user, &password),
            Next::Lookup { user } => match self.backend.scram_lookup(&user) {
                Ok(creds) => {
                    let nonce = self.backend.scram_nonce();
                    let next = x.credentials(creds, &nonce);
                    self.sasl_next(x, next);
                }
                Err(e) => self.backend_err(e),
            },
            Next::Verified {
                user,
                ok,
                server_final,
            } => match self.backend.scram_verified(&user, ok) {
                Ok(true) => {
                    // RFC 5034 §4: the server-final as a last challenge.
                    self.line(&format!("+ {}", yubin_sasl::encode(&server_final)));
                    self.state = State::Sasl(SaslStep::FinalAck);
                }
                Ok(false) => self.err("[AUTH] authentication failed"),
                Err(e) => self.backend_err(e),
            },
            Next::Failed(e) => self.sasl_failed(e),
        }
    }

    fn sasl_failed(&mut self, e: yubin_sasl::Error) {
        match e {
            yubin_sasl::Error::Authzid => self.err("[AUTH] cannot act as another user"),
            e => self.err(&e.to_string()),
        }
    }

    fn auth_continue(&mut self, step: SaslStep, line: &str) {
        let data = match yubin_sasl::decode_response(line.trim().as_bytes()) {
            Ok(d) => d,
            Err(e) => return self.sasl_failed(e),
        };
        match step {
            SaslStep::Exchange(mut x) => {
                let next = x.respond(&data);
                self.sasl_next(*x, next);
            }
            SaslStep::FinalAck if data.is_empty() => self.open_maildrop(),
            SaslStep::FinalAck => self.err("expected an empty response"),
        }
    }

    fn login(&mut self, user: &str, pass: &str) {
        match self.backend.login(user, pass) {
            Ok(true) => self.open_maildrop(),
            Ok(false) => self.err("[AUTH] authentication failed"),
            Err(e) => self.backend_err(e),
        }
    }

    /// After a successful login: lock and read the maildrop (RFC 1939 §4).
    fn open_maildrop(&mut self) {
        match self.backend.lock() {
            Ok(true) => {}
            Ok(false) => {
                return self.err("[IN-USE] maildrop is locked by another POP3 session");
            }
            Err(e) => return self.backend_err(e),
        }
        match self.backend.maildrop() {
            Ok((uidvalidity, drop)) => {
                self.uidvalidity = uidvalidity;
                self.drop = drop;
                self.state = State::Transaction;
                let size: u64 = self.drop.iter().map(|e| e.size).sum();
                let n = self.drop.len();
                self.ok(&format!("maildrop has {n} messages ({size} octets)"));
            }
            Err(e) => self.backend_err(e),
        }
    }

    /// Messages not marked deleted, with their 0-based index.
    fn live(&self) -> impl Iterator<Item = (usize, &Entry)> {
        self.drop
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.deleted.contains(i))
    }

    /// A message number argument (1-based) to an index, if it names a live message.
    fn msg(&self, n: &str) -> Option<usize> {
        let n: usize = n.parse().ok()?;
        let i = n.checked_sub(1)?;
        (i < self.drop.len() && !self.deleted.contains(&i)).then_some(i)
    }

    /// UIDL values never change for a message (RFC 1939 §7): UIDVALIDITY and UID.
    fn uidl(&self, e: &Entry) -> String {
        format!("{}.{}", self.uidvalidity, e.uid)
    }

    fn list(&mut self, args: &[&str], uidl: bool) {
        let value = |s: &Self, e: &Entry| {
            if uidl { s.uidl(e) } else { e.size.to_string() }
        };
        match args {
            [] => {
                let lines: Vec<String> = self
                    .live()
                    .map(|(i, e)| format!("{} {}", i + 1, value(self, e)))
                    .collect();
                self.ok(&format!("{} messages", lines.len()));
                for l in lines {
                    self.line(&l);
                }
                self.line(".");
            }
            [n] => match self.msg(n) {
                Some(i) => {
                    let v = value(self, &self.drop[i]);
                    self.ok(&format!("{} {v}", i + 1));
                }
                None => self.err("no such message"),
            },
            _ => self.err("too many arguments"),
        }
    }

    fn retr(&mut self, n: &str, top: Option<usize>) {
        let Some(i) = self.msg(n) else {
            return self.err("no such message");
        };
        let (uid, size) = (self.drop[i].uid, self.drop[i].size);
        let raw = match self.backend.read(uid) {
            Ok(r) => r,
            Err(e) => return self.backend_err(e),
        };
        // The known size is the stored bytes' when every line ends in CRLF (and the last
        // too); then, without a line starting with `.`, the stored bytes are the wire form.
        let wire = if size == raw.len() as u64
            && raw.first() != Some(&b'.')
            && find(&raw, b"\r\n.").is_none()
        {
            raw
        } else {
            wire_form(&raw)
        };
        let body: &[u8] = match top {
            None => &wire,
            Some(lines) => {
                // TOP: the header, the blank line, and the first `lines` lines of the body.
                let head_end = find(&wire, b"\r\n\r\n").map_or(wire.len(), |p| p + 4);
                let mut end = head_end;
                for _ in 0..lines {
                    match find(&wire[end..], b"\r\n") {
                        Some(p) => end += p + 2,
                        None => {
                            end = wire.len();
                            break;
                        }
                    }
                }
                &wire[..end]
            }
        };
        match top {
            None => self.ok(&format!("{size} octets")),
            Some(_) => self.ok("top of message follows"),
        }
        self.out.extend_from_slice(body);
        self.line(".");
    }

    fn quit(&mut self) {
        if matches!(self.state, State::Transaction) {
            // UPDATE state (RFC 1939 §6): only now are marked messages removed.
            let uids: Vec<u32> = self.deleted.iter().map(|&i| self.drop[i].uid).collect();
            if !uids.is_empty()
                && let Err(e) = self.backend.delete(&uids)
            {
                self.backend_err(e);
                self.state = State::Closed;
                return;
            }
            let left = self.drop.len() - self.deleted.len();
            self.ok(&format!(
                "{} POP3 server signing off ({left} messages left)",
                self.cfg.hostname
            ));
        } else {
            self.ok(&format!("{} POP3 server signing off", self.cfg.hostname));
        }
        self.state = State::Closed;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;
