//! Scripted SMTP dialogues (chasquid style): each file under `tests/dialogues/` is a
//! conversation. `C:` lines are sent (CRLF appended unless the line ends in `\`; escapes
//! `\r \n \0 \xNN \\`), `S:` lines are the exact lines the server must answer, `[TLS]` and
//! `[CLOSE]` mark a TLS upgrade and a close. All `C:` lines before a block of `S:` lines are
//! sent in one write, so pipelining is exercised. `W:` bytes are sent at once, alone, as
//! written (no CRLF added), to split input across reads.
//!
//! Header lines `#! auth`, `#! auth-plaintext` (AUTH without TLS), `#! submission`,
//! `#! burl` set the listener. Credentials `bob@example.com`/`secret` are valid; `throttled@example.com` is
//! throttled; senders starting with `bob` belong to bob.
//!
//! The host policy used here: domain `example.com` is local; `unknown@`, `disabled@`,
//! `tempfail@`, `full@` get those verdicts; any other domain is a relay attempt. Deliveries succeed
//! with id `ID1` unless the envelope sender is `fail@example.org` (temporary failure).

use yubin_smtp::{
    AuthOutcome, Config, DeliveryOutcome, Event, Message, RcptVerdict, Session, UrlOutcome,
};

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

fn verdict(addr: &str) -> RcptVerdict {
    let (local, domain) = addr.rsplit_once('@').unwrap_or((addr, "example.com"));
    if !domain.eq_ignore_ascii_case("example.com") {
        return RcptVerdict::RelayDenied;
    }
    match local {
        "unknown" => RcptVerdict::UnknownUser,
        "disabled" => RcptVerdict::Disabled,
        "tempfail" => RcptVerdict::TempFail,
        "full" => RcptVerdict::MailboxFull,
        _ => RcptVerdict::Accept,
    }
}

/// Drive the session until it needs input; returns the reply lines and markers.
fn drain(s: &mut Session, delivered: &mut Vec<Message>) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        match s.poll() {
            Event::Reply(r) => {
                let text = String::from_utf8(r.to_bytes()).unwrap();
                out.extend(text.split_terminator("\r\n").map(str::to_owned));
            }
            Event::CheckRecipient(a) => s.rcpt_verdict(verdict(&a)),
            Event::Deliver(m) => {
                let outcome = if m.mail_from == "fail@example.org" {
                    DeliveryOutcome::TempFail("Storage unavailable, try again later".into())
                } else {
                    DeliveryOutcome::Stored { id: "ID1".into() }
                };
                delivered.push(m);
                s.delivery_result(outcome);
            }
            Event::StartTls => {
                out.push("[TLS]".into());
                s.tls_started();
            }
            Event::Authenticate { user, password } => {
                s.auth_result(match (user.as_str(), password.as_str()) {
                    ("bob@example.com", "secret") => AuthOutcome::Success(user),
                    ("throttled@example.com", _) => AuthOutcome::Throttled,
                    _ => AuthOutcome::Failure,
                })
            }
            // SCRAM: bob@example.com's password is `secret` (salt `salt`, 4096 rounds);
            // the server nonce is always `SNONCE`.
            Event::ScramLookup { user } => s.scram_credentials(
                (user == "bob@example.com")
                    .then(|| yubin_sasl::ScramCredentials::derive("secret", b"salt", 4096)),
                "SNONCE",
            ),
            Event::ScramVerified { user, ok } => s.auth_result(if ok {
                AuthOutcome::Success(user)
            } else {
                AuthOutcome::Failure
            }),
            Event::CheckSender(a) => s.sender_verdict(a.starts_with("bob")),
            // BURL: `imap://.../;UID=n` names n bytes of `x`; `busy` is a temporary failure.
            Event::ResolveUrl { url, user } => s.burl_result(
                match url
                    .rsplit_once(";UID=")
                    .and_then(|(_, n)| n.parse::<usize>().ok())
                {
                    _ if url.contains("busy") => UrlOutcome::TempFail("IMAP store busy".into()),
                    Some(n) if user == "bob@example.com" => UrlOutcome::Data(vec![b'x'; n]),
                    _ => UrlOutcome::Invalid("URL names nothing of yours".into()),
                },
            ),
            Event::Close => {
                out.push("[CLOSE]".into());
                return out;
            }
            Event::NeedInput => return out,
        }
    }
}

fn run_script(name: &str, script: &str) {
    let cfg = Config {
        hostname: "mx.test".into(),
        max_message_size: 1000,
        max_recipients: 3,
        max_errors: 10,
        max_line_length: 512,
        starttls: true,
        auth: script.contains("#! auth"),
        auth_requires_tls: !script.contains("#! auth-plaintext"),
        submission: script.contains("#! submission"),
        burl: script.contains("#! burl"),
        sasl_secret: [1; 32],
    };
    let mut s = Session::new(cfg);
    let mut delivered = Vec::new();
    let mut pending_c: Vec<u8> = Vec::new();
    let mut got: Vec<String> = drain(&mut s, &mut delivered);
    let mut want: Vec<String> = Vec::new();
    let mut lineno = 0;
    let check = |got: &mut Vec<String>, want: &mut Vec<String>, lineno: usize| {
        assert_eq!(got, want, "{name}: mismatch before line {lineno}");
        got.clear();
        want.clear();
    };
    for line in script.lines() {
        lineno += 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(c) = line.strip_prefix("C: ").or(line.strip_prefix("C:")) {
            if !want.is_empty() || !got.is_empty() {
                check(&mut got, &mut want, lineno);
            }
            if let Some(raw) = c.strip_suffix('\\').filter(|r| !r.ends_with('\\')) {
                pending_c.extend(unescape(raw));
            } else {
                pending_c.extend(unescape(c));
                pending_c.extend_from_slice(b"\r\n");
            }
        } else if let Some(w) = line.strip_prefix("W: ") {
            // One separate write, exactly these bytes.
            if !pending_c.is_empty() {
                s.push(&pending_c);
                pending_c.clear();
                got.extend(drain(&mut s, &mut delivered));
            }
            s.push(&unescape(w));
            got.extend(drain(&mut s, &mut delivered));
        } else if let Some(sline) = line.strip_prefix("S: ").or(line.strip_prefix("S:")) {
            if !pending_c.is_empty() {
                s.push(&pending_c);
                pending_c.clear();
                got.extend(drain(&mut s, &mut delivered));
            }
            want.push(sline.to_owned());
        } else if line == "[TLS]" || line == "[CLOSE]" {
            want.push(line.to_owned());
        } else if let Some(n) = line.strip_prefix("DELIVERED: ") {
            check(&mut got, &mut want, lineno);
            let n: usize = n.parse().unwrap();
            assert_eq!(delivered.len(), n, "{name}: deliveries at line {lineno}");
        } else if let Some(d) = line.strip_prefix("LAST-DATA: ") {
            check(&mut got, &mut want, lineno);
            let last = delivered.last().expect("a delivery");
            assert_eq!(last.data, unescape(d), "{name}: data at line {lineno}");
        } else if let Some(d) = line.strip_prefix("LAST-DSN: ") {
            // `ret envid requiretls | notify orcpt` per recipient, `-` for none.
            check(&mut got, &mut want, lineno);
            let last = delivered.last().expect("a delivery");
            let mut s = format!(
                "{} {} {}",
                last.ret.map_or("-", |r| r.keyword()),
                last.envid.as_deref().unwrap_or("-"),
                last.require_tls
            );
            for d in &last.rcpt_dsn {
                s.push_str(&format!(
                    " | {} {}",
                    d.notify.map_or("-".into(), |n| n.keyword()),
                    d.orcpt
                        .as_ref()
                        .map_or("-".into(), |(t, a)| format!("{t};{a}"))
                ));
            }
            assert_eq!(s, d, "{name}: DSN parameters at line {lineno}");
        } else if let Some(d) = line.strip_prefix("LAST-RCPTS: ") {
            check(&mut got, &mut want, lineno);
            let last = delivered.last().expect("a delivery");
            assert_eq!(
                last.rcpt_to.join(" "),
                d,
                "{name}: recipients at line {lineno}"
            );
        } else {
            panic!("{name}:{lineno}: cannot parse script line {line:?}");
        }
    }
    if !pending_c.is_empty() {
        s.push(&pending_c);
        got.extend(drain(&mut s, &mut delivered));
    }
    check(&mut got, &mut want, lineno);
}

#[test]
fn dialogues() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dialogues");
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let script = std::fs::read_to_string(&path).unwrap();
        run_script(&path.display().to_string(), &script);
        n += 1;
    }
    assert!(n >= 10, "expected the dialogue files, found {n}");
}
