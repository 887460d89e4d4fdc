//! IMAP dialogues replayed against a session on a real (temporary) store, without sockets.
//! Each file in `tests/imap/` is a conversation: `C:` lines are sent (CRLF added), `S:`
//! lines must match the server's lines exactly, `S~` lines are regular expressions (for
//! values like UIDVALIDITY). The store holds `bob@example.test` (password `secret`) with
//! three messages in INBOX. Header lines `#! tls` / `#! no-plaintext` set the connection.
//! `C2:`/`S2:`/`S2~` lines (and 3, ...) are further sessions on the same store, logged out
//! until they log in; a session's replies are checked when it next sends. After each
//! command, sessions with NOTIFY in force are told of changes, as the server does. With
//! `DIALOGUE_DUMP=1` nothing fails: every difference is printed (for writing new files).

use std::cell::Cell;
use std::sync::Arc;

use yubin_imap::{BResult, Backend, Config, Event, Session};
use yubin_server::guard::{Guard, Limits};
use yubin_server::imap::StoreBackend;
use yubin_store::{
    Changes, Copied, Directory, FlagOp, Flags, FlagsUpdate, MailStore, Mailbox, MailboxId,
    MessageMeta, Selection, SortInfo, SqliteStore, Store, TextField,
};

thread_local! {
    /// Set while the session runs in `poll_light`, where nothing may block.
    static LIGHT: Cell<bool> = const { Cell::new(false) };
}

/// The server's backend, checking that `poll_light` only makes the calls it may: a
/// store write, a body read or a search there would block an async worker thread.
struct Watched(StoreBackend);

impl Watched {
    fn heavy(&self, call: &str) {
        assert!(
            !LIGHT.with(Cell::get),
            "{call} called from poll_light: it may block"
        );
    }
}

impl Backend for Watched {
    fn login(&mut self, user: &str, password: &str) -> BResult<bool> {
        self.heavy("login");
        self.0.login(user, password)
    }
    fn user(&self) -> Option<String> {
        self.0.user()
    }
    fn urlauth_sign(&mut self, mailbox: &str, rump: &[u8]) -> BResult<String> {
        self.heavy("urlauth_sign");
        self.0.urlauth_sign(mailbox, rump)
    }
    fn urlauth_reset(&mut self, mailbox: Option<&str>) -> BResult<()> {
        self.heavy("urlauth_reset");
        self.0.urlauth_reset(mailbox)
    }
    fn list(&mut self) -> BResult<Vec<Mailbox>> {
        self.heavy("list");
        self.0.list()
    }
    fn mailbox(&mut self, name: &str) -> BResult<Mailbox> {
        self.heavy("mailbox");
        self.0.mailbox(name)
    }
    fn select(&mut self, name: &str) -> BResult<Selection> {
        self.heavy("select");
        self.0.select(name)
    }
    fn select_cached(&mut self, name: &str) -> BResult<Option<Selection>> {
        self.0.select_cached(name)
    }
    fn recent(&mut self, mailbox: MailboxId, uid_next: u32, claim: bool) -> BResult<u32> {
        // A lock and a map in memory (one row read the first time).
        self.0.recent(mailbox, uid_next, claim)
    }
    fn create(&mut self, name: &str) -> BResult<()> {
        self.heavy("create");
        self.0.create(name)
    }
    fn create_special(&mut self, name: &str, special_use: &str) -> BResult<()> {
        self.heavy("create_special");
        self.0.create_special(name, special_use)
    }
    fn delete(&mut self, name: &str) -> BResult<()> {
        self.heavy("delete");
        self.0.delete(name)
    }
    fn rename(&mut self, from: &str, to: &str) -> BResult<()> {
        self.heavy("rename");
        self.0.rename(from, to)
    }
    fn subscribe(&mut self, name: &str, subscribed: bool) -> BResult<()> {
        self.heavy("subscribe");
        self.0.subscribe(name, subscribed)
    }
    fn metadata(&mut self, mailbox: Option<&str>) -> BResult<Vec<(String, Vec<u8>)>> {
        self.heavy("metadata");
        self.0.metadata(mailbox)
    }
    fn set_metadata(
        &mut self,
        mailbox: Option<&str>,
        entries: &[(String, Option<Vec<u8>>)],
    ) -> BResult<()> {
        self.heavy("set_metadata");
        self.0.set_metadata(mailbox, entries)
    }
    fn object_ids(&mut self, mailbox: MailboxId) -> BResult<Vec<(u32, i64, String)>> {
        self.heavy("object_ids");
        self.0.object_ids(mailbox)
    }
    fn append_many(
        &mut self,
        mailbox: &str,
        messages: &[(Flags, i64, &[u8])],
    ) -> BResult<(u32, Vec<u32>)> {
        self.heavy("append_many");
        self.0.append_many(mailbox, messages)
    }
    fn subscriptions(&mut self) -> BResult<Vec<String>> {
        self.heavy("subscriptions");
        self.0.subscriptions()
    }
    fn messages(&mut self, mailbox: MailboxId) -> BResult<Arc<Vec<MessageMeta>>> {
        self.heavy("messages");
        self.0.messages(mailbox)
    }
    fn changes(&mut self, mailbox: MailboxId, since: u64) -> BResult<Changes> {
        self.0.changes(mailbox, since)
    }
    fn read(&mut self, mailbox: MailboxId, uid: u32) -> BResult<Vec<u8>> {
        self.heavy("read");
        self.0.read(mailbox, uid)
    }
    fn read_many(&mut self, mailbox: MailboxId, uids: &[u32]) -> Vec<BResult<Vec<u8>>> {
        self.heavy("read_many");
        self.0.read_many(mailbox, uids)
    }
    fn store(
        &mut self,
        mailbox: MailboxId,
        uids: &[u32],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: Option<u64>,
    ) -> BResult<FlagsUpdate> {
        self.heavy("store");
        self.0.store(mailbox, uids, op, flags, unchanged_since)
    }
    fn expunge(&mut self, mailbox: MailboxId, uids: Option<&[u32]>) -> BResult<Vec<u32>> {
        self.heavy("expunge");
        self.0.expunge(mailbox, uids)
    }
    fn copy(
        &mut self,
        from: MailboxId,
        uids: &[u32],
        to: MailboxId,
        remove: bool,
    ) -> BResult<Copied> {
        self.heavy("copy");
        self.0.copy(from, uids, to, remove)
    }
    fn search_text(
        &mut self,
        mailbox: MailboxId,
        field: TextField,
        needle: &str,
    ) -> BResult<Vec<u32>> {
        self.heavy("search_text");
        self.0.search_text(mailbox, field, needle)
    }
    fn sort_info(&mut self, mailbox: MailboxId) -> BResult<Vec<SortInfo>> {
        self.heavy("sort_info");
        self.0.sort_info(mailbox)
    }
    fn quota(&mut self) -> BResult<(u64, Option<u64>)> {
        self.heavy("quota");
        self.0.quota()
    }
    fn append(
        &mut self,
        mailbox: &str,
        flags: &Flags,
        internal_date: i64,
        message: &[u8],
    ) -> BResult<(u32, u32)> {
        self.heavy("append");
        self.0.append(mailbox, flags, internal_date, message)
    }
}

/// One step as the server takes it: `poll_light` on the async thread, then `poll` where
/// blocking is allowed if it asks for that. Also returns whether `poll` was needed.
fn step(s: &mut Session<Watched>) -> (Event, bool) {
    LIGHT.with(|l| l.set(true));
    let ev = s.poll_light();
    LIGHT.with(|l| l.set(false));
    match ev {
        Event::Blocking => (s.poll(), true),
        ev => (ev, false),
    }
}

fn guard() -> Arc<Guard> {
    Arc::new(Guard::new(Limits {
        max_failures_per_ip: 100,
        max_failures_per_account: 100,
        block_for: std::time::Duration::from_secs(60),
        messages_per_hour: 100,
        recipients_per_hour: 100,
        default_domain: None,
    }))
}

fn session(store: Arc<dyn Store>, tls: bool, plaintext_auth: bool) -> Session<Watched> {
    let cfg = Config {
        hostname: "mx.example.test".into(),
        starttls: !tls,
        plaintext_auth,
        append_limit: 10_000,
    };
    let peer = "127.0.0.1:1".parse().unwrap();
    Session::new(cfg, Watched(StoreBackend::new(store, guard(), peer)), tls)
}

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

fn drain(s: &mut Session<Watched>) -> (Vec<String>, Event) {
    let mut bytes = Vec::new();
    let ev = loop {
        let (ev, _) = step(s);
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

/// A line's session: `C:`/`S:`/`S~` are session 1, `C2:`/`S2:`/`S2~` session 2, and so on
/// (all on one store; sessions after the first start with their greeting read).
fn parse_line(line: &str) -> Option<(char, usize, &str)> {
    let kind = line.chars().next().filter(|c| *c == 'C' || *c == 'S')?;
    let rest = line.get(1..)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let n = rest.get(..digits)?.parse().unwrap_or(1);
    let rest = rest.get(digits..)?;
    if rest == ":" {
        // An empty line (the end of a literal's last line, say).
        return Some((kind, n, ""));
    }
    let (kind, text) = match (kind, rest.get(..2)?) {
        ('C', ": ") => ('C', rest.get(2..)?),
        ('S', ": ") => ('S', rest.get(2..)?),
        ('S', "~ ") => ('~', rest.get(2..)?),
        _ => return None,
    };
    Some((kind, n, text))
}

struct Peer {
    s: Session<Watched>,
    got: Vec<String>,
    want: Vec<(bool, String)>,
}

fn check(name: &str, line: usize, n: usize, p: &mut Peer) {
    let (got, want) = (&mut p.got, &mut p.want);
    if std::env::var_os("DIALOGUE_DUMP").is_some() {
        for (g, (re, w)) in got.iter().zip(want.iter()) {
            let tag = if *re { "S~" } else { "S:" };
            let mark = if *re || g == w { " " } else { "!" };
            eprintln!("{mark} {n} {tag} want {w}\n{mark} {n}    got  {g}\n@ {name}:{line}");
        }
        for g in got.iter().skip(want.len()) {
            eprintln!("+ {n}    got  {g}\n@ {name}:{line}");
        }
        for (_, w) in want.iter().skip(got.len()) {
            eprintln!("- {n}    want {w}");
        }
        got.clear();
        want.clear();
        return;
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{name}:{line} (session {n}): got {got:#?}\nwant {want:#?}"
    );
    for (g, (re, w)) in got.iter().zip(want.iter()) {
        if *re {
            let r = regex_lite::Regex::new(&format!("^{w}$")).unwrap();
            assert!(r.is_match(g), "{name}:{line}: {g:?} does not match {w:?}");
        } else {
            assert_eq!(g, w, "{name}:{line} (session {n})");
        }
    }
    got.clear();
    want.clear();
}

fn run(name: &str, script: &str) {
    let (_dir, store) = store();
    let tls = script.contains("#! tls");
    let plain = !script.contains("#! no-plaintext");
    let mut peers: std::collections::BTreeMap<usize, Peer> = Default::default();
    for (line_no, line) in script.lines().enumerate() {
        let Some((kind, n, text)) = parse_line(line) else {
            continue;
        };
        let p = peers.entry(n).or_insert_with(|| {
            let mut s = session(store.clone(), tls, plain);
            let (got, _) = drain(&mut s);
            Peer {
                s,
                got: if n == 1 { got } else { Vec::new() },
                want: Vec::new(),
            }
        });
        match kind {
            'C' => {
                check(name, line_no, n, p);
                p.s.push(format!("{text}\r\n").as_bytes());
                let (lines, _) = drain(&mut p.s);
                p.got.extend(lines);
                // As the host does: sessions with NOTIFY in force hear of the change.
                for (k, other) in peers.iter_mut() {
                    if *k != n && other.s.notify_active() {
                        other.s.notify_changed();
                        let (lines, _) = drain(&mut other.s);
                        other.got.extend(lines);
                    }
                }
            }
            'S' => p.want.push((false, text.to_owned())),
            _ => p.want.push((true, text.to_owned())),
        }
    }
    for (n, p) in peers.iter_mut() {
        check(name, script.lines().count(), *n, p);
    }
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
    let mut s = session(store, true, true);
    drain(&mut s);
    s.push(b"a LOGIN bob@example.test secret\r\nb SELECT INBOX\r\n");
    drain(&mut s);
    s.push(b"c FETCH 1:* (BODY.PEEK[])\r\nd NOOP\r\n");
    let (mut flushes, mut out) = (0, Vec::new());
    loop {
        let (ev, _) = step(&mut s);
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

/// What `poll_light` answers itself and what it leaves for `poll`.
#[test]
fn cheap_commands_run_without_blocking() {
    let (_dir, store) = store();
    let mut s = session(store.clone(), true, true);
    let say = |s: &mut Session<Watched>, cmd: &str| -> (String, bool) {
        s.push(format!("{cmd}\r\n").as_bytes());
        let mut blocked = false;
        let mut out = Vec::new();
        loop {
            let (ev, b) = step(s);
            blocked |= b;
            out.extend(s.take_output());
            if ev != Event::Flush {
                return (String::from_utf8_lossy(&out).into_owned(), blocked);
            }
        }
    };
    drain(&mut s);
    // A password hash may take long.
    assert!(say(&mut s, "a LOGIN bob@example.test secret").1);
    // The first SELECT loads the message list (unless another session did).
    let (first, _) = say(&mut s, "b SELECT INBOX");
    assert!(first.contains("* 3 EXISTS"), "{first}");
    // The first SELECT took the three as \Recent; later ones see none (RFC 3501 §2.3.2).
    let first = first.replace("* 3 RECENT", "* 0 RECENT");
    for cmd in [
        "c NOOP",
        "d SELECT INBOX",
        "e EXAMINE INBOX",
        "f CAPABILITY",
        "g CHECK",
    ] {
        let (out, blocked) = say(&mut s, cmd);
        assert!(!blocked, "{cmd} blocked: {out}");
        assert!(out.contains(&format!("{} OK", &cmd[..1])), "{cmd}: {out}");
    }
    // From the cached list and the session's cached flag lines: the same lines as the
    // SELECT that loaded the list; EXAMINE differs only in PERMANENTFLAGS and its end.
    let (out, blocked) = say(&mut s, "h SELECT INBOX");
    assert!(!blocked, "{out}");
    assert_eq!(out.replace("h OK", "b OK"), first);
    let (out, _) = say(&mut s, "i EXAMINE INBOX");
    let perm = "PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)";
    assert_eq!(
        out,
        first
            .replace(perm, "PERMANENTFLAGS ()")
            .replace("b OK [READ-WRITE] SELECT", "i OK [READ-ONLY] EXAMINE")
    );
    let (out, blocked) = say(&mut s, "r SELECT INBOX");
    assert!(!blocked && out.replace("r OK", "b OK") == first, "{out}");
    // Bodies, searches and writes go to `poll`.
    for cmd in [
        "j FETCH 1 (BODY.PEEK[])",
        "k UID SEARCH BODY body",
        "l STORE 1 +FLAGS (\\Seen)",
        "q STATUS INBOX (MESSAGES)",
    ] {
        let (out, blocked) = say(&mut s, cmd);
        assert!(blocked, "{cmd} ran in poll_light");
        assert!(out.contains(&format!("{} OK", &cmd[..1])), "{cmd}: {out}");
    }
    // A change by someone else: NOOP applies it in `poll`, and reports it.
    let bob = store.account("bob@example.test").unwrap();
    let inbox = store.mailbox(bob.id, "INBOX").unwrap();
    let flagged = Flags {
        system: yubin_store::flags::FLAGGED,
        keywords: vec![],
    };
    store
        .store_flags(inbox.id, &[2], FlagOp::Add, &flagged, None)
        .unwrap();
    let (out, blocked) = say(&mut s, "m NOOP");
    assert!(
        blocked && out.contains("* 2 FETCH (UID 2 FLAGS (\\Flagged))"),
        "{out}"
    );
    // Pipelined: the cheap commands before a heavy one are answered, the rest after it,
    // in order.
    let (out, blocked) = say(&mut s, "n NOOP\r\no FETCH 1 (UID BODY.PEEK[])\r\np NOOP");
    let (n, o, p) = (
        out.find("n OK").unwrap(),
        out.find("o OK").unwrap(),
        out.find("p OK").unwrap(),
    );
    assert!(blocked && n < o && o < p, "{out}");
}

/// Sessions on one mailbox share its message list: SELECT, IDLE, NOOP and DONE with
/// nothing new must not copy it (each copy is the whole mailbox, per session).
#[test]
fn idle_sessions_share_the_message_list() {
    let (_dir, store) = store();
    let mut sessions: Vec<Session<Watched>> = (0..3)
        .map(|_| {
            let mut s = session(store.clone(), true, true);
            drain(&mut s);
            for cmd in [
                "a LOGIN bob@example.test secret",
                "b SELECT INBOX",
                "c IDLE",
            ] {
                s.push(format!("{cmd}\r\n").as_bytes());
                drain(&mut s);
            }
            s
        })
        .collect();
    for s in &mut sessions {
        s.changed();
        for cmd in ["DONE", "d NOOP", "e IDLE"] {
            s.push(format!("{cmd}\r\n").as_bytes());
            drain(s);
        }
    }
    let first = sessions[0].selected_messages().expect("selected").clone();
    for s in &sessions[1..] {
        let m = s.selected_messages().expect("selected");
        assert!(Arc::ptr_eq(&first, m), "a session copied the message list");
    }
}
