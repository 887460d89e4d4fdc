//! Session tests in every state, against an in-memory maildrop.

use std::sync::{Arc, Mutex};

use super::*;

/// (UID, message) pairs of the maildrop.
type Messages = Arc<Mutex<Vec<(u32, Vec<u8>)>>>;

#[derive(Clone, Default)]
struct Mem {
    msgs: Messages,
    locked: Arc<Mutex<bool>>,
    holds_lock: bool,
}

impl Backend for Mem {
    fn login(&mut self, user: &str, password: &str) -> BResult<bool> {
        Ok(user == "bob" && password == "secret pw")
    }
    fn lock(&mut self) -> BResult<bool> {
        let mut l = self.locked.lock().unwrap();
        if *l {
            return Ok(false);
        }
        *l = true;
        self.holds_lock = true;
        Ok(true)
    }
    fn maildrop(&mut self) -> BResult<(u32, Vec<Entry>)> {
        let msgs = self.msgs.lock().unwrap();
        Ok((
            7,
            msgs.iter()
                .map(|(uid, m)| Entry {
                    uid: *uid,
                    size: yubin_model::pop3_size(m),
                })
                .collect(),
        ))
    }
    fn read(&mut self, uid: u32) -> BResult<Vec<u8>> {
        let msgs = self.msgs.lock().unwrap();
        msgs.iter()
            .find(|m| m.0 == uid)
            .map(|m| m.1.clone())
            .ok_or_else(|| BackendError::Permanent("gone".into()))
    }
    fn delete(&mut self, uids: &[u32]) -> BResult<()> {
        self.msgs.lock().unwrap().retain(|m| !uids.contains(&m.0));
        Ok(())
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        if self.holds_lock {
            *self.locked.lock().unwrap() = false;
        }
    }
}

fn mem() -> Mem {
    let m = Mem::default();
    m.msgs.lock().unwrap().extend([
        (
            3,
            b"Subject: one\r\n\r\nline 1\r\n.starts with dot\r\nline 3\r\n".to_vec(),
        ),
        (5, b"Subject: two\n\nbare LF body\n".to_vec()),
        (9, b"Subject: three\r\n\r\nx".to_vec()),
    ]);
    m
}

fn cfg() -> Config {
    Config {
        hostname: "mx.test".into(),
        stls: true,
        plaintext_auth: true,
        max_errors: 5,
    }
}

/// Send `input`, return everything the server says and the final event.
fn talk<B: Backend>(s: &mut Session<B>, input: &str) -> (String, Event) {
    s.push(input.as_bytes());
    let ev = s.poll();
    (String::from_utf8(s.take_output()).unwrap(), ev)
}

fn logged_in(m: Mem) -> Session<Mem> {
    let mut s = Session::new(cfg(), m, false);
    let (out, _) = talk(&mut s, "USER bob\r\nPASS secret pw\r\n");
    assert!(
        out.ends_with("+OK maildrop has 3 messages (101 octets)\r\n"),
        "{out}"
    );
    s
}

#[test]
fn greeting_capa_and_authorization_state() {
    let mut s = Session::new(cfg(), mem(), false);
    let (out, ev) = talk(&mut s, "CAPA\r\n");
    assert_eq!(ev, Event::NeedInput);
    assert_eq!(
        out,
        "+OK mx.test POP3 yubin ready\r\n+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nUSER\r\nSASL SCRAM-SHA-256 PLAIN LOGIN\r\nSTLS\r\nIMPLEMENTATION yubin\r\n.\r\n"
    );
    let (out, _) = talk(
        &mut s,
        "STAT\r\nPASS x\r\nUSER bob\r\nPASS wrong\r\nAPOP bob 0123\r\nXYZZY\r\n",
    );
    assert_eq!(
        out,
        "-ERR command not valid in this state\r\n-ERR USER first\r\n+OK send PASS\r\n-ERR [AUTH] authentication failed\r\n-ERR APOP is not supported\r\n-ERR too many errors, closing connection\r\n"
            .replace("-ERR too many errors", "-ERR unknown command\r\n-ERR too many errors")
    );
    assert_eq!(s.poll(), Event::Close);
}

#[test]
fn transaction_commands() {
    let mut s = logged_in(mem());
    // Octet counts are what RETR delivers once the client undid the dot-stuffing (CRLF
    // line ends, no stuffing), as Dovecot counts; RETR itself stuffs the `.` line.
    let (out, _) = talk(&mut s, "STAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nUIDL 3\r\n");
    assert_eq!(
        out,
        "+OK 3 101\r\n+OK 3 messages\r\n1 50\r\n2 30\r\n3 21\r\n.\r\n+OK 2 30\r\n+OK 3 messages\r\n1 7.3\r\n2 7.5\r\n3 7.9\r\n.\r\n+OK 3 7.9\r\n"
    );
    let (out, _) = talk(&mut s, "RETR 1\r\n");
    let body = "Subject: one\r\n\r\nline 1\r\n..starts with dot\r\nline 3\r\n";
    assert_eq!(out, format!("+OK 50 octets\r\n{body}.\r\n"));
    assert_eq!(
        body.len(),
        51,
        "the wire has one byte of stuffing beyond LIST's 50"
    );
    let (out, _) = talk(&mut s, "RETR 2\r\nRETR 3\r\n");
    assert!(
        out.contains("Subject: two\r\n\r\nbare LF body\r\n.\r\n"),
        "{out}"
    );
    assert!(out.ends_with("Subject: three\r\n\r\nx\r\n.\r\n"), "{out}");
    let (out, _) = talk(&mut s, "TOP 1 1\r\nTOP 1 0\r\n");
    assert_eq!(
        out,
        "+OK top of message follows\r\nSubject: one\r\n\r\nline 1\r\n.\r\n+OK top of message follows\r\nSubject: one\r\n\r\n.\r\n"
    );
    let (out, ev) = talk(&mut s, "RETR 4\r\nRETR 0\r\nRETR x\r\nDELE\r\nTOP 1\r\n");
    assert_eq!(
        out,
        "-ERR no such message\r\n-ERR no such message\r\n-ERR no such message\r\n-ERR usage: DELE msg\r\n-ERR usage: TOP msg lines\r\n-ERR too many errors, closing connection\r\n"
    );
    assert_eq!(
        ev,
        Event::Close,
        "the fifth error (max_errors) ends the session"
    );
}

#[test]
fn deletions_happen_only_at_quit() {
    let m = mem();
    let mut s = logged_in(m.clone());
    let (out, _) = talk(&mut s, "DELE 1\r\nDELE 1\r\nRETR 1\r\nSTAT\r\nLIST\r\n");
    assert_eq!(
        out,
        "+OK message 1 deleted\r\n-ERR no such message\r\n-ERR no such message\r\n+OK 2 51\r\n+OK 2 messages\r\n2 30\r\n3 21\r\n.\r\n"
    );
    let (out, _) = talk(&mut s, "RSET\r\nSTAT\r\nDELE 2\r\n");
    assert_eq!(
        out,
        "+OK maildrop has 3 messages\r\n+OK 3 101\r\n+OK message 2 deleted\r\n"
    );
    // A dropped connection (no QUIT) deletes nothing.
    drop(s);
    assert_eq!(m.msgs.lock().unwrap().len(), 3);
    let mut s = logged_in(m.clone());
    let (out, ev) = talk(&mut s, "DELE 2\r\nQUIT\r\n");
    assert_eq!(
        out,
        "+OK message 2 deleted\r\n+OK mx.test POP3 server signing off (2 messages left)\r\n"
    );
    assert_eq!(ev, Event::Close);
    drop(s);
    let uids: Vec<u32> = m.msgs.lock().unwrap().iter().map(|x| x.0).collect();
    assert_eq!(uids, [3, 9]);
}

#[test]
fn one_session_per_maildrop() {
    let m = mem();
    let _first = logged_in(m.clone());
    let mut second = Session::new(cfg(), m.clone(), false);
    let (out, _) = talk(&mut second, "USER bob\r\nPASS secret pw\r\n");
    assert!(
        out.ends_with("-ERR [IN-USE] maildrop is locked by another POP3 session\r\n"),
        "{out}"
    );
    drop(_first);
    let (out, _) = talk(&mut second, "USER bob\r\nPASS secret pw\r\n");
    assert!(
        out.ends_with("+OK maildrop has 3 messages (101 octets)\r\n"),
        "{out}"
    );
}

#[test]
fn sasl_plain_and_stls() {
    let mut s = Session::new(cfg(), mem(), false);
    let (out, _) = talk(&mut s, "AUTH\r\nAUTH PLAIN\r\n");
    assert!(
        out.ends_with(
            "+OK SASL mechanisms follow\r\nSCRAM-SHA-256\r\nPLAIN\r\nLOGIN\r\n.\r\n+ \r\n"
        ),
        "{out}"
    );
    // base64("\0bob\0secret pw")
    let (out, _) = talk(&mut s, "AGJvYgBzZWNyZXQgcHc=\r\n");
    assert_eq!(out, "+OK maildrop has 3 messages (101 octets)\r\n");

    let mut s = Session::new(cfg(), mem(), false);
    let (out, _) = talk(&mut s, "AUTH PLAIN AGJvYgB3cm9uZw==\r\nAUTH PLAIN\r\n*\r\n");
    assert!(
        out.ends_with(
            "-ERR [AUTH] authentication failed\r\n+ \r\n-ERR authentication cancelled\r\n"
        ),
        "{out}"
    );

    let strict = Config {
        plaintext_auth: false,
        ..cfg()
    };
    let mut s = Session::new(strict, mem(), false);
    let (out, ev) = talk(&mut s, "USER bob\r\nCAPA\r\nSTLS\r\nUSER injected\r\n");
    assert!(out.contains("-ERR [AUTH] use STLS"), "{out}");
    assert!(
        !out.contains("\r\nUSER\r\n"),
        "USER is not offered before TLS: {out}"
    );
    assert!(out.ends_with("+OK Begin TLS negotiation\r\n"), "{out}");
    assert_eq!(ev, Event::StartTls);
    s.tls_started();
    let (out, _) = talk(&mut s, "CAPA\r\n");
    assert!(
        out.contains("\r\nUSER\r\n") && !out.contains("STLS"),
        "{out}"
    );
}

#[test]
fn long_lines_and_garbage() {
    let mut s = Session::new(cfg(), mem(), false);
    let long = "X".repeat(1000);
    let (out, _) = talk(&mut s, &format!("{long}\r\nNOOP\r\nCAPA\r\n"));
    assert!(out.contains("-ERR line too long\r\n"), "{out}");
    assert!(out.contains("+OK Capability list follows"), "{out}");
    let (out, _) = talk(&mut s, "\u{0}\u{ff}\r\n");
    assert!(out.starts_with("-ERR"), "{out}");
}

#[test]
fn wire_form_rules() {
    // What LIST says (the store's size) is what the client holds after undoing the
    // dot-stuffing of RETR (RFC 1939 §3), as Dovecot counts.
    let unstuffed = |w: &[u8]| -> u64 {
        let mut n = 0u64;
        let mut start = true;
        for &b in w {
            if !(start && b == b'.') {
                n += 1;
            }
            start = b == b'\n';
        }
        n
    };
    for m in mem().msgs.lock().unwrap().iter() {
        assert_eq!(unstuffed(&wire_form(&m.1)), yubin_model::pop3_size(&m.1));
    }
    for m in [&b""[..], b".", b"\r", b"a\rb", b"..\n.\r\n", b"x\r\n."] {
        assert_eq!(unstuffed(&wire_form(m)), yubin_model::pop3_size(m), "{m:?}");
    }
    assert_eq!(yubin_model::pop3_size(b"a\r\n.b\r\n"), 7);
    assert_eq!(wire_form(b"a\r\n.b\r\n"), b"a\r\n..b\r\n");
    assert_eq!(wire_form(b".\n"), b"..\r\n");
    assert_eq!(wire_form(b"x"), b"x\r\n");
    assert_eq!(wire_form(b""), b"");
}
