//! IMAP dialogues replayed against a session on a real (temporary) store, without sockets.
//! Each file in `tests/imap/` is a conversation: `C:` lines are sent (CRLF added), `S:`
//! lines must match the server's lines exactly, `S~` lines are regular expressions (for
//! values like UIDVALIDITY). The store holds `bob@example.test` (password `secret`) with
//! three messages in INBOX. Header lines `#! tls` / `#! no-plaintext` set the connection.

use std::sync::Arc;

use yubin_imap::{Config, Event, Session};
use yubin_server::guard::{Guard, Limits};
use yubin_server::imap::StoreBackend;
use yubin_store::{Directory, Flags, MailStore, SqliteStore, Store};

fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::create(dir.path()).unwrap();
    s.add_domain("example.test").unwrap();
    let bob = s.add_account("bob@example.test", "secret", false).unwrap();
    for (i, subject) in ["first", "second", "third"].iter().enumerate() {
        let msg = format!(
            "From: Alice <alice@example.org>\r\nTo: bob@example.test\r\nSubject: {subject}\r\nDate: Mon, 23 Nov 2026 10:00:0{i} +0000\r\n\r\nbody {i}\r\n"
        );
        let blob = s.stage(&[msg.as_bytes()]).unwrap();
        s.deliver(
            blob,
            &[bob.id],
            "INBOX",
            &Flags::default(),
            1_795_000_000 + i as i64,
        )
        .unwrap();
    }
    (dir, Arc::new(s))
}

fn drain(s: &mut Session<StoreBackend>) -> (Vec<String>, Event) {
    let mut bytes = Vec::new();
    let ev = loop {
        let ev = s.poll();
        bytes.extend(s.take_output());
        if ev != Event::Flush {
            break ev;
        }
    };
    let out = String::from_utf8_lossy(&bytes).into_owned();
    (
        out.split_terminator("\r\n").map(str::to_owned).collect(),
        ev,
    )
}

fn run(name: &str, script: &str) {
    let (_dir, store) = store();
    let tls = script.contains("#! tls");
    let cfg = Config {
        hostname: "mx.example.test".into(),
        starttls: !tls,
        plaintext_auth: !script.contains("#! no-plaintext"),
        append_limit: 10_000,
    };
    let peer = "127.0.0.1:1".parse().unwrap();
    let guard = std::sync::Arc::new(Guard::new(Limits {
        max_failures_per_ip: 100,
        max_failures_per_account: 100,
        block_for: std::time::Duration::from_secs(60),
        messages_per_hour: 100,
        recipients_per_hour: 100,
    }));
    let mut s = Session::new(cfg, StoreBackend::new(store, guard, peer), tls);
    let (mut got, _) = drain(&mut s);
    let mut want: Vec<(bool, String)> = Vec::new();
    let check = |got: &mut Vec<String>, want: &mut Vec<(bool, String)>, line: usize| {
        assert_eq!(
            got.len(),
            want.len(),
            "{name}:{line}: got {got:#?}\nwant {want:#?}"
        );
        for (g, (re, w)) in got.iter().zip(want.iter()) {
            if *re {
                let r = regex_lite::Regex::new(&format!("^{w}$")).unwrap();
                assert!(r.is_match(g), "{name}:{line}: {g:?} does not match {w:?}");
            } else {
                assert_eq!(g, w, "{name}:{line}");
            }
        }
        got.clear();
        want.clear();
    };
    for (n, line) in script.lines().enumerate() {
        if let Some(c) = line.strip_prefix("C: ") {
            check(&mut got, &mut want, n);
            s.push(format!("{c}\r\n").as_bytes());
            let (lines, _) = drain(&mut s);
            got.extend(lines);
        } else if let Some(l) = line.strip_prefix("S: ") {
            want.push((false, l.to_owned()));
        } else if let Some(l) = line.strip_prefix("S~ ") {
            want.push((true, l.to_owned()));
        }
    }
    check(&mut got, &mut want, script.lines().count());
}

#[test]
fn imap_dialogues() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/imap");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 4);
    for f in files {
        run(
            &f.display().to_string(),
            &std::fs::read_to_string(&f).unwrap(),
        );
    }
}

/// A FETCH larger than the flush threshold goes out in pieces ([`Event::Flush`]), in order,
/// and a command pipelined behind it is answered only after it.
#[test]
fn long_fetch_is_flushed_in_pieces() {
    let (_dir, store) = store();
    let bob = store.account("bob@example.test").unwrap();
    let body = "x".repeat(8000);
    for i in 0..100 {
        let msg = format!("Subject: big {i}\r\n\r\n{body}\r\n");
        let blob = store.stage(&[msg.as_bytes()]).unwrap();
        store
            .deliver(blob, &[bob.id], "INBOX", &Flags::default(), 0)
            .unwrap();
    }
    let guard = Arc::new(Guard::new(Limits {
        max_failures_per_ip: 100,
        max_failures_per_account: 100,
        block_for: std::time::Duration::from_secs(60),
        messages_per_hour: 100,
        recipients_per_hour: 100,
    }));
    let cfg = Config {
        hostname: "mx.example.test".into(),
        starttls: false,
        plaintext_auth: true,
        append_limit: 10_000,
    };
    let backend = StoreBackend::new(store, guard, "127.0.0.1:1".parse().unwrap());
    let mut s = Session::new(cfg, backend, true);
    drain(&mut s);
    s.push(b"a LOGIN bob@example.test secret\r\nb SELECT INBOX\r\n");
    drain(&mut s);
    s.push(b"c FETCH 1:* (BODY.PEEK[])\r\nd NOOP\r\n");
    let (mut flushes, mut out) = (0, Vec::new());
    loop {
        let ev = s.poll();
        let piece = s.take_output();
        assert!(piece.len() < 512 * 1024, "a piece stays near the threshold");
        out.extend(piece);
        match ev {
            Event::Flush => flushes += 1,
            _ => break,
        }
    }
    assert!(flushes >= 2, "803 KB of FETCH went out in {flushes} pieces");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches(" FETCH (BODY[] {").count(), 103);
    let (c, d) = (
        text.find("\r\nc OK").unwrap(),
        text.find("\r\nd OK").unwrap(),
    );
    assert!(
        c < d && text.ends_with("d OK NOOP completed\r\n"),
        "{}",
        &text[c..]
    );
}
