//! SASL (RFC 4422) as the three protocols use it, sans-IO: the mechanisms PLAIN (RFC
//! 4616), LOGIN (draft-murchison-sasl-login) and SCRAM-SHA-256 (RFC 7677, RFC 5802), and
//! the one base64 of every exchange. SMTP AUTH, IMAP AUTHENTICATE and POP3 AUTH each
//! frame the exchange their own way (`334 `, `+ `, `+ `) and hand the decoded client data
//! here; what comes back says what to send or what the host must check.
//!
//! Implementation notes:
//! - Written here, not taken from a crate: the SASL crates on crates.io are client-side or
//!   tied to one protocol, and SCRAM's server side is a page of HMACs over ring.
//! - SCRAM keeps `StoredKey` and `ServerKey` (RFC 5802 §3), never the password; they are
//!   made when the password is set, beside the argon2 hash. Whoever reads them can pose as
//!   the server but not log in as the user; an offline guess costs PBKDF2 with
//!   [`SCRAM_ITERATIONS`] rounds (argon2 costs more), which is why they are kept in the
//!   same private database as the hash.
//! - Channel binding (`-PLUS`) is not offered: a client that asks for it (`p=`) is refused,
//!   one that says it could (`y`) is taken, as RFC 5802 §6 allows when the server offers none.
//! - An unknown user gets a salt derived from the host's secret and the name, the same on
//!   every try, and fails at the proof: SCRAM does not tell who has an account.

use base64::Engine as _;
use ring::{digest, hmac, pbkdf2};

/// PBKDF2 rounds for new SCRAM credentials (RFC 7677 §4 asks for at least 4096).
pub const SCRAM_ITERATIONS: u32 = 10_000;
/// Most rounds taken from stored credentials (a bound on what a login can be made to cost).
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Longest client message of an exchange.
pub const MAX_MESSAGE: usize = 4096;

/// The mechanisms, in the order they are offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    ScramSha256,
    Plain,
    Login,
}

impl Mechanism {
    pub const ALL: [Mechanism; 3] = [Mechanism::ScramSha256, Mechanism::Plain, Mechanism::Login];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }

    /// Case-insensitive (RFC 4422 §3.1).
    pub fn parse(name: &str) -> Option<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// Space-separated, as SMTP's and POP3's capability lines list them.
    pub fn list(mechs: &[Mechanism]) -> String {
        mechs.iter().map(|m| m.name()).collect::<Vec<_>>().join(" ")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid base64")]
    Base64,
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("authentication cancelled")]
    Cancelled,
    #[error("client message too long")]
    TooLong,
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("cannot act as another user")]
    Authzid,
}

/// Base64 of SASL (RFC 4648 §4, with padding), strict: whitespace, a missing pad or bits
/// left over are errors in every protocol alike.
pub fn decode(text: &[u8]) -> Result<Vec<u8>, Error> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| Error::Base64)
}

pub fn encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A client response line: `*` cancels (RFC 4954 §4, RFC 9051 §6.2.2, RFC 5034 §4); else
/// base64. An initial response of `=` is empty (RFC 4954 §4).
pub fn decode_response(line: &[u8]) -> Result<Vec<u8>, Error> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    match line {
        b"*" => Err(Error::Cancelled),
        b"=" => Ok(Vec::new()),
        _ if line.len() > MAX_MESSAGE * 4 / 3 + 4 => Err(Error::TooLong),
        _ => decode(line),
    }
}

/// `authzid NUL authcid NUL passwd` (RFC 4616 §2). An authzid other than the user is refused.
pub fn parse_plain(data: &[u8]) -> Result<(String, String), Error> {
    let mut parts = data.split(|&b| b == 0);
    let (Some(authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Malformed("PLAIN"));
    };
    let (Ok(authz), Ok(user), Ok(pass)) = (
        std::str::from_utf8(authz),
        std::str::from_utf8(user),
        std::str::from_utf8(pass),
    ) else {
        return Err(Error::Malformed("PLAIN"));
    };
    if user.is_empty() || pass.is_empty() {
        return Err(Error::Malformed("PLAIN"));
    }
    if !authz.is_empty() && !authz.eq_ignore_ascii_case(user) {
        return Err(Error::Authzid);
    }
    Ok((user.to_owned(), pass.to_owned()))
}

/// What SCRAM keeps of a password (RFC 5802 §3).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramCredentials(..)")
    }
}

fn hmac256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl ScramCredentials {
    /// From the password (SASLprep is left out: passwords are taken as their UTF-8 bytes,
    /// as most clients send them).
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Self {
        let mut salted = [0u8; 32];
        let rounds =
            std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac256(&salted, b"Client Key");
        ScramCredentials {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac256(&salted, b"Server Key"),
        }
    }

    /// The stored form: `SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey` (base64),
    /// as Dovecot writes it.
    pub fn to_stored(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            encode(&self.salt),
            encode(&self.stored_key),
            encode(&self.server_key)
        )
    }

    pub fn from_stored(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iter, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iter.parse().ok()?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return None;
        }
        Some(ScramCredentials {
            iterations,
            salt: decode(salt.as_bytes()).ok()?,
            stored_key: decode(stored.as_bytes()).ok()?.try_into().ok()?,
            server_key: decode(server.as_bytes()).ok()?.try_into().ok()?,
        })
    }
}

/// What the protocol must do next in an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Send this challenge (the protocol base64-encodes it) and pass the response to
    /// [`Exchange::respond`].
    Challenge(Vec<u8>),
    /// PLAIN and LOGIN: check this password (the host's usual login).
    CheckPassword { user: String, password: String },
    /// SCRAM: find this user's credentials and give them to [`Exchange::credentials`]
    /// (`None` for no such user, a disabled one, or one without SCRAM credentials).
    Lookup { user: String },
    /// SCRAM: the proof was checked; on `ok`, the host decides (as after a password check)
    /// and, when it lets the user in, sends `server_final` as a last challenge and takes an
    /// empty response before its success reply (RFC 4954 §4, RFC 9051 §6.2.2, RFC 5034 §4).
    Verified {
        user: String,
        ok: bool,
        server_final: Vec<u8>,
    },
    /// The exchange failed: answer with the protocol's error.
    Failed(Error),
}

#[derive(Debug)]
enum State {
    /// Waiting for the first client message (none was sent with the command).
    Initial,
    LoginUser,
    LoginPassword(String),
    /// SCRAM: the host looks the user up.
    Lookup(ScramFirst),
    /// SCRAM: server-first sent.
    ClientFinal(ScramFirst, ScramCredentials, String),
    Done,
}

#[derive(Debug)]
struct ScramFirst {
    gs2_header: String,
    user: String,
    client_first_bare: String,
    client_nonce: String,
}

/// One authentication exchange.
#[derive(Debug)]
pub struct Exchange {
    mech: Mechanism,
    state: State,
    /// The host's secret for the salts of unknown users.
    secret: [u8; 32],
}

impl Exchange {
    /// Start `mech`, with the client's initial response when it sent one (decoded).
    /// `secret` is the host's (random per server start) for unknown users' salts.
    pub fn start(mech: Mechanism, initial: Option<&[u8]>, secret: [u8; 32]) -> (Self, Next) {
        let mut x = Exchange {
            mech,
            state: State::Initial,
            secret,
        };
        let next = match (mech, initial) {
            (Mechanism::Login, None) => {
                x.state = State::LoginUser;
                Next::Challenge(b"Username:".to_vec())
            }
            (Mechanism::Login, Some(user)) => {
                x.state = State::LoginUser;
                x.respond(user)
            }
            (_, None) => Next::Challenge(Vec::new()),
            (_, Some(data)) => x.respond(data),
        };
        (x, next)
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mech
    }

    /// The client's response to the last challenge, decoded.
    pub fn respond(&mut self, data: &[u8]) -> Next {
        if data.len() > MAX_MESSAGE {
            self.state = State::Done;
            return Next::Failed(Error::TooLong);
        }
        match (self.mech, std::mem::replace(&mut self.state, State::Done)) {
            (Mechanism::Plain, State::Initial) => match parse_plain(data) {
                Ok((user, password)) => Next::CheckPassword { user, password },
                Err(e) => Next::Failed(e),
            },
            (Mechanism::Login, State::LoginUser) => match std::str::from_utf8(data) {
                Ok(u) if !u.is_empty() => {
                    self.state = State::LoginPassword(u.to_owned());
                    Next::Challenge(b"Password:".to_vec())
                }
                _ => Next::Failed(Error::Malformed("LOGIN")),
            },
            (Mechanism::Login, State::LoginPassword(user)) => match std::str::from_utf8(data) {
                Ok(p) if !p.is_empty() => Next::CheckPassword {
                    user,
                    password: p.to_owned(),
                },
                _ => Next::Failed(Error::Malformed("LOGIN")),
            },
            (Mechanism::ScramSha256, State::Initial) => match scram_client_first(data) {
                Ok(first) => {
                    let user = first.user.clone();
                    self.state = State::Lookup(first);
                    Next::Lookup { user }
                }
                Err(e) => Next::Failed(e),
            },
            (Mechanism::ScramSha256, State::ClientFinal(first, creds, server_first)) => {
                scram_client_final(&first, &creds, &server_first, data)
            }
            _ => Next::Failed(Error::Malformed("SASL")),
        }
    }

    /// SCRAM: the host's answer to [`Next::Lookup`]; `nonce` is fresh ([`nonce`]).
    pub fn credentials(&mut self, creds: Option<ScramCredentials>, nonce: &str) -> Next {
        let State::Lookup(first) = std::mem::replace(&mut self.state, State::Done) else {
            return Next::Failed(Error::Malformed("SCRAM"));
        };
        let creds = creds.unwrap_or_else(|| {
            // Unknown: a stable, secret-derived salt and keys no proof can match.
            let salt = hmac256(&self.secret, first.user.as_bytes());
            ScramCredentials {
                iterations: SCRAM_ITERATIONS,
                salt: salt.get(..16).unwrap_or_default().to_vec(),
                stored_key: hmac256(&self.secret, &salt),
                server_key: hmac256(&salt, &self.secret),
            }
        });
        let server_first = format!(
            "r={}{},s={},i={}",
            first.client_nonce,
            nonce,
            encode(&creds.salt),
            creds.iterations
        );
        self.state = State::ClientFinal(first, creds, server_first.clone());
        Next::Challenge(server_first.into_bytes())
    }
}

/// A server nonce from random bytes (printable, no comma: RFC 5802 §7).
pub fn nonce(random: [u8; 18]) -> String {
    encode(&random)
}

/// RFC 5802 §7: `gs2-header client-first-message-bare`.
fn scram_client_first(data: &[u8]) -> Result<ScramFirst, Error> {
    let text = std::str::from_utf8(data).map_err(|_| Error::Malformed("SCRAM"))?;
    let mut parts = text.splitn(3, ',');
    let (Some(cb), Some(authz), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Error::Malformed("SCRAM"));
    };
    match cb {
        "n" | "y" => {}
        c if c.starts_with("p=") => return Err(Error::ChannelBinding),
        _ => return Err(Error::Malformed("SCRAM")),
    }
    let authz_raw = authz;
    let authz = match authz {
        "" => None,
        a => Some(saslname(
            a.strip_prefix("a=").ok_or(Error::Malformed("SCRAM"))?,
        )?),
    };
    let mut user = None;
    let mut nonce = None;
    for (i, attr) in bare.split(',').enumerate() {
        match (i, attr.split_once('=')) {
            (0, Some(("m", _))) => return Err(Error::Malformed("SCRAM")),
            (0, Some(("n", v))) => user = Some(saslname(v)?),
            (1, Some(("r", v)))
                if !v.is_empty() && v.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') =>
            {
                nonce = Some(v.to_owned())
            }
            (i, _) if i >= 2 => {} // extensions: ignored
            _ => return Err(Error::Malformed("SCRAM")),
        }
    }
    let (Some(user), Some(client_nonce)) = (user, nonce) else {
        return Err(Error::Malformed("SCRAM"));
    };
    if user.is_empty() {
        return Err(Error::Malformed("SCRAM"));
    }
    if authz
        .as_deref()
        .is_some_and(|a| !a.eq_ignore_ascii_case(&user))
    {
        return Err(Error::Authzid);
    }
    Ok(ScramFirst {
        gs2_header: format!("{cb},{authz_raw},"),
        user,
        client_first_bare: bare.to_owned(),
        client_nonce,
    })
}

/// RFC 5802 §5.1: `=2C` is `,` and `=3D` is `=`; any other `=` is an error.
fn saslname(s: &str) -> Result<String, Error> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('=') {
        out.push_str(rest.get(..p).unwrap_or_default());
        let code = rest.get(p + 1..p + 3);
        match code {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return Err(Error::Malformed("SCRAM")),
        }
        rest = rest.get(p + 3..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(out)
}

/// RFC 5802 §3: check the proof, and make the server signature.
fn scram_client_final(
    first: &ScramFirst,
    creds: &ScramCredentials,
    server_first: &str,
    data: &[u8],
) -> Next {
    let Ok(text) = std::str::from_utf8(data) else {
        return Next::Failed(Error::Malformed("SCRAM"));
    };
    let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
        return Next::Failed(Error::Malformed("SCRAM"));
    };
    let mut cbind = None;
    let mut nonce = None;
    for attr in without_proof.split(',') {
        match attr.split_once('=') {
            Some(("c", v)) if cbind.is_none() => cbind = Some(v),
            Some(("r", v)) if nonce.is_none() => nonce = Some(v),
            Some(_) if cbind.is_some() && nonce.is_some() => {} // extensions
            _ => return Next::Failed(Error::Malformed("SCRAM")),
        }
    }
    let expected_nonce = server_first
        .strip_prefix("r=")
        .and_then(|r| r.split(',').next())
        .unwrap_or_default();
    let (Some(cbind), Some(nonce)) = (cbind, nonce) else {
        return Next::Failed(Error::Malformed("SCRAM"));
    };
    // No channel binding: `c=` is the gs2 header itself (RFC 5802 §7, "biws" for `n,,`).
    if cbind != encode(first.gs2_header.as_bytes()) || nonce != expected_nonce {
        return Next::Failed(Error::Malformed("SCRAM"));
    }
    let Ok(proof) = decode(proof.as_bytes()) else {
        return Next::Failed(Error::Malformed("SCRAM"));
    };
    let auth_message = format!("{},{server_first},{without_proof}", first.client_first_bare);
    let client_signature = hmac256(&creds.stored_key, auth_message.as_bytes());
    let ok = proof.len() == 32 && {
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        // Every byte compared, whatever differs first (no early exit to time).
        let diff = sha256(&client_key)
            .iter()
            .zip(creds.stored_key)
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        std::hint::black_box(diff) == 0
    };
    let server_signature = hmac256(&creds.server_key, auth_message.as_bytes());
    Next::Verified {
        user: first.user.clone(),
        ok,
        server_final: format!("v={}", encode(&server_signature)).into_bytes(),
    }
}

#[cfg(test)]
mod tests;
