//! The embedded backend through its traits: directory rules, delivery, durability rules.

use std::collections::BTreeSet;
use std::sync::Arc;

use yubin_store::{Directory, Error, Flags, MailStore, Resolved, SqliteStore};

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::create(dir.path()).unwrap();
    (dir, s)
}

/// Bodies stored, in files or (small ones) in the database.
fn bodies(root: &std::path::Path) -> usize {
    let db = rusqlite::Connection::open(root.join("yubin.db")).unwrap();
    db.query_row("SELECT count(*) FROM blobs", [], |r| r.get::<_, i64>(0))
        .unwrap() as usize
}

fn blob_files(root: &std::path::Path) -> usize {
    std::fs::read_dir(root.join("blobs"))
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum()
}

/// Bytes the pack files really occupy (holes excluded).
fn pack_space(root: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(root.join("packs"))
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

#[test]
fn domains() {
    let (_d, s) = store();
    s.add_domain("Example.COM").unwrap();
    assert!(matches!(
        s.add_domain("example.com"),
        Err(Error::DomainExists(_))
    ));
    assert!(s.add_domain("bad..domain").is_err());
    s.add_account("a@example.com", "pw", false).unwrap();
    let list = s.list_domains().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].name.as_str(), list[0].accounts),
        ("example.com", 1)
    );
    assert!(matches!(
        s.remove_domain("example.com", false),
        Err(Error::DomainNotEmpty(_, 1))
    ));
    s.remove_domain("example.com", true).unwrap();
    assert!(s.list_domains().unwrap().is_empty());
    assert_eq!(s.resolve("a@example.com").unwrap(), Resolved::NotLocal);
    assert!(matches!(
        s.remove_domain("nope.org", false),
        Err(Error::NoSuchDomain(_))
    ));
}

#[test]
fn accounts_and_passwords() {
    let (_d, s) = store();
    assert!(matches!(
        s.add_account("a@example.com", "pw", false),
        Err(Error::NoSuchDomain(_))
    ));
    s.add_domain("example.com").unwrap();
    let a = s.add_account("Alice@Example.com", "secret", false).unwrap();
    assert_eq!(a.address, "alice@example.com");
    assert!(matches!(
        s.add_account("alice@example.com", "x", false),
        Err(Error::AccountExists(_))
    ));
    let boxes: Vec<_> = s
        .list_mailboxes(a.id)
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(
        boxes,
        ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
    );

    assert_eq!(
        s.authenticate("alice@example.com", "secret")
            .unwrap()
            .unwrap()
            .id,
        a.id
    );
    assert!(
        s.authenticate("ALICE@example.com", "secret")
            .unwrap()
            .is_some()
    );
    assert!(
        s.authenticate("alice@example.com", "wrong")
            .unwrap()
            .is_none()
    );
    assert!(
        s.authenticate("nobody@example.com", "secret")
            .unwrap()
            .is_none()
    );
    s.set_password("alice@example.com", "new").unwrap();
    assert!(
        s.authenticate("alice@example.com", "secret")
            .unwrap()
            .is_none()
    );
    assert!(
        s.authenticate("alice@example.com", "new")
            .unwrap()
            .is_some()
    );

    s.set_disabled("alice@example.com", true).unwrap();
    assert!(
        s.authenticate("alice@example.com", "new")
            .unwrap()
            .is_none()
    );
    assert_eq!(s.resolve("alice@example.com").unwrap(), Resolved::Disabled);
    s.set_disabled("alice@example.com", false).unwrap();
    assert_eq!(
        s.resolve("alice@example.com").unwrap(),
        Resolved::Accounts(vec![a.id])
    );
    assert!(matches!(
        s.set_disabled("x@example.com", true),
        Err(Error::NoSuchAccount(_))
    ));
}

#[test]
fn aliases_subaddress_catchall_postmaster() {
    let (_d, s) = store();
    s.add_domain("example.com").unwrap();
    let admin = s.add_account("admin@example.com", "pw", true).unwrap();
    let b = s.add_account("bob@example.com", "pw", false).unwrap();
    let c = s.add_account("carol@example.com", "pw", false).unwrap();
    // The first admin receives postmaster@, also for domains added later.
    assert_eq!(
        s.resolve("postmaster@example.com").unwrap(),
        Resolved::Accounts(vec![admin.id])
    );
    s.add_domain("other.org").unwrap();
    assert_eq!(
        s.resolve("Postmaster@other.org").unwrap(),
        Resolved::Accounts(vec![admin.id])
    );

    s.add_alias(
        "team@example.com",
        &["bob@example.com".into(), "carol@example.com".into()],
    )
    .unwrap();
    assert_eq!(
        s.resolve("team@example.com").unwrap(),
        Resolved::Accounts(vec![b.id, c.id])
    );
    assert!(matches!(
        s.add_alias("bob@example.com", &["carol@example.com".into()]),
        Err(Error::AliasIsAccount(_))
    ));
    assert!(matches!(
        s.add_alias("x@example.com", &["ghost@example.com".into()]),
        Err(Error::NoSuchAccount(_))
    ));
    assert_eq!(
        s.resolve("bob+lists@example.com").unwrap(),
        Resolved::Accounts(vec![b.id])
    );
    assert_eq!(s.resolve("nobody@example.com").unwrap(), Resolved::Unknown);
    s.add_alias("*@example.com", &["carol@example.com".into()])
        .unwrap();
    assert_eq!(
        s.resolve("nobody@example.com").unwrap(),
        Resolved::Accounts(vec![c.id])
    );
    assert_eq!(s.resolve("x@elsewhere.net").unwrap(), Resolved::NotLocal);

    s.set_disabled("bob@example.com", true).unwrap();
    assert_eq!(
        s.resolve("team@example.com").unwrap(),
        Resolved::Accounts(vec![c.id])
    );
    let list = s.list_aliases().unwrap();
    assert!(
        list.iter()
            .any(|a| a.alias == "team@example.com" && a.targets.len() == 2)
    );
    assert_eq!(
        s.remove_alias("team@example.com", Some("carol@example.com"))
            .unwrap(),
        1
    );
    assert_eq!(s.resolve("team@example.com").unwrap(), Resolved::Disabled);
    assert_eq!(s.remove_alias("team@example.com", None).unwrap(), 1);
    assert!(matches!(
        s.remove_alias("team@example.com", None),
        Err(Error::NoSuchAlias(_))
    ));
}

#[test]
fn concurrent_deliveries_get_unique_uids_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b);
    {
        let s = Arc::new(SqliteStore::create(dir.path()).unwrap());
        s.add_domain("example.com").unwrap();
        a = s.add_account("a@example.com", "pw", false).unwrap().id;
        b = s.add_account("b@example.com", "pw", false).unwrap().id;
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..40 {
                        let body = format!("Subject: {t}-{i}\r\n\r\nbody\r\n");
                        let blob = s.stage(&[b"X-Trace: 1\r\n", body.as_bytes()]).unwrap();
                        let d = s
                            .deliver(blob, &[a, b, a], "inbox", &Flags::default(), 1)
                            .unwrap();
                        assert_eq!(d.len(), 2, "duplicate accounts get one copy");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let inbox_a = s.mailbox(a, "INBOX").unwrap().id;
        let msgs = s.messages(inbox_a).unwrap();
        let uids: Vec<u32> = msgs.iter().map(|m| m.uid).collect();
        assert_eq!(uids, (1..=320).collect::<Vec<u32>>());
        let modseqs: BTreeSet<u64> = msgs.iter().map(|m| m.modseq).collect();
        assert_eq!(modseqs.len(), 320);
        let raw = s.read(inbox_a, 7).unwrap();
        assert!(raw.starts_with(b"X-Trace: 1\r\nSubject: "));
        assert_eq!(raw.len() as u64, msgs[6].size);
        // One body shared by both recipients, small enough for the database.
        assert_eq!(bodies(dir.path()), 320);
        assert_eq!(blob_files(dir.path()), 0);
    }
    let s = SqliteStore::open(dir.path()).unwrap();
    let before = s.list_mailboxes(a).unwrap();
    let blob = s.stage(&[b"after restart\r\n"]).unwrap();
    let d = s
        .deliver(blob, &[a], "INBOX", &Flags::default(), 2)
        .unwrap();
    assert_eq!(d[0].uid, 321);
    let after = s.list_mailboxes(a).unwrap();
    assert_eq!(before[0].uidvalidity, after[0].uidvalidity);
    assert_eq!(after[0].uid_next, 322);
    // Removing one account (and purging it) keeps the bodies the other still references.
    s.remove_account("a@example.com").unwrap();
    assert_eq!(
        bodies(dir.path()),
        321,
        "a removed account's mail is kept until purged"
    );
    assert_eq!(s.purge_account("a@example.com").unwrap(), 1);
    assert_eq!(bodies(dir.path()), 320);
    let inbox_b = s.mailbox(b, "INBOX").unwrap().id;
    assert_eq!(
        s.read(inbox_b, 1).unwrap().len() as u64,
        s.messages(inbox_b).unwrap()[0].size
    );
    s.remove_account("b@example.com").unwrap();
    s.purge_account("b@example.com").unwrap();
    assert_eq!(bodies(dir.path()), 0);
}

/// Large bodies share pack files; removing one leaves its neighbours whole, and a reader
/// that still has the removed message's UID is told it is gone.
#[test]
fn packed_bodies_expunge_and_copy() {
    let (d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    let inbox = s.mailbox(a, "INBOX").unwrap().id;
    let body =
        |i: usize| format!("Subject: {i}\r\n\r\n{}\r\n", "b".repeat(70_000 + i)).into_bytes();
    for i in 1..=5 {
        let blob = s.stage(&[&body(i)]).unwrap();
        s.deliver(blob, &[a], "INBOX", &Flags::default(), 0)
            .unwrap();
    }
    assert_eq!(blob_files(d.path()), 0);
    assert!(
        pack_space(d.path()) >= 5 * 70_000,
        "too large for the database"
    );
    let archive = s.mailbox(a, "Archive").unwrap().id;
    s.copy(inbox, &[2], archive, false).unwrap();
    let deleted = Flags::system(yubin_store::flags::DELETED);
    s.store_flags(inbox, &[2, 3], yubin_store::FlagOp::Add, &deleted, None)
        .unwrap();
    assert_eq!(s.expunge(inbox, None).unwrap(), [2, 3]);
    assert!(matches!(s.read(inbox, 3), Err(Error::NoSuchMessage(3))));
    let many = s.read_many(inbox, &[1, 3, 4, 5]);
    assert!(matches!(many[1], Err(Error::NoSuchMessage(3))));
    for (r, i) in [(&many[0], 1), (&many[2], 4), (&many[3], 5)] {
        assert_eq!(r.as_ref().unwrap(), &body(i));
    }
    // Body 2 still has its copy in Archive.
    assert_eq!(s.read(archive, 1).unwrap(), body(2));
    drop(s);
    let s = SqliteStore::open(d.path()).unwrap();
    assert_eq!(
        s.sweep_orphans().unwrap(),
        1,
        "body 3's space freed at the next start"
    );
    assert_eq!(s.read(archive, 1).unwrap(), body(2));
    assert_eq!(s.read(inbox, 4).unwrap(), body(4));
    assert_eq!(s.sweep_orphans().unwrap(), 0);
}

#[test]
fn failed_delivery_leaves_nothing_and_orphans_are_swept() {
    let (d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    // Larger than what the database keeps: these bodies go to a pack.
    let big = |c: u8| vec![c; 100_000];
    let blob = s.stage(&[&big(b'x')]).unwrap();
    assert!(pack_space(d.path()) >= 100_000);
    assert!(matches!(
        s.deliver(blob, &[a], "NoSuchBox", &Flags::default(), 0),
        Err(Error::NoSuchMailbox(_))
    ));
    let inbox = s.mailbox(a, "INBOX").unwrap().id;
    assert!(s.messages(inbox).unwrap().is_empty());
    // A body staged by a process that crashed before delivering.
    let _orphan = s.stage(&[&big(b'y')]).unwrap();
    let kept = s.stage(&[&big(b'z')]).unwrap();
    s.deliver(kept, &[a], "INBOX", &Flags::default(), 0)
        .unwrap();
    let before = pack_space(d.path());
    assert!(before >= 300_000, "{before}");
    // The server's next start frees the failed delivery's body (its space was due to be
    // given back after a grace period) and the orphan.
    drop(s);
    let s = SqliteStore::open(d.path()).unwrap();
    assert_eq!(s.sweep_orphans().unwrap(), 1, "one gap freed");
    let after = pack_space(d.path());
    assert!(after + 190_000 < before, "{before} -> {after}");
    assert_eq!(s.read(inbox, 1).unwrap(), big(b'z'));
    assert_eq!(blob_files(d.path()), 0);
    // A small one is kept in the database and read back the same.
    let small = s.stage(&[b"Subject: s\r\n", b"\r\nsmall\r\n"]).unwrap();
    s.deliver(small, &[a], "INBOX", &Flags::default(), 0)
        .unwrap();
    assert_eq!(bodies(d.path()), 2);
    assert_eq!(s.read(inbox, 2).unwrap(), b"Subject: s\r\n\r\nsmall\r\n");
    assert_eq!(s.sweep_orphans().unwrap(), 0);
}

#[test]
fn one_server_per_data_directory() {
    let (d, mut s) = store();
    s.lock_exclusive().unwrap();
    let mut other = SqliteStore::open(d.path()).unwrap();
    assert!(matches!(other.lock_exclusive(), Err(Error::Locked(_))));
    assert!(matches!(
        SqliteStore::open(&d.path().join("missing")),
        Err(Error::NotInitialized(_))
    ));
}

fn deliver_n(s: &SqliteStore, account: i64, mailbox: &str, n: usize) {
    for i in 0..n {
        let blob = s
            .stage(&[format!("Subject: {i}\r\n\r\nbody\r\n").as_bytes()])
            .unwrap();
        s.deliver(
            blob,
            &[account],
            mailbox,
            &Flags::default(),
            1_700_000_000 + i as i64,
        )
        .unwrap();
    }
}

#[test]
fn mailbox_management() {
    use yubin_store::Error as E;
    let (_d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    s.create_mailbox(a, "Projects/2026/Q4").unwrap();
    let names: Vec<String> = s
        .list_mailboxes(a)
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert!(
        names.contains(&"Projects".to_string()) && names.contains(&"Projects/2026".to_string())
    );
    assert!(
        s.create_mailbox(a, "projects/2026/Q4").is_ok(),
        "names are case-sensitive"
    );
    assert!(matches!(
        s.create_mailbox(a, "Projects"),
        Err(E::MailboxExists(_))
    ));
    assert!(matches!(
        s.create_mailbox(a, "a//b"),
        Err(E::InvalidMailboxName(..))
    ));
    assert!(matches!(
        s.delete_mailbox(a, "Projects"),
        Err(E::MailboxHasChildren(_))
    ));
    assert!(matches!(
        s.delete_mailbox(a, "inbox"),
        Err(E::InboxNotDeletable)
    ));
    deliver_n(&s, a, "Projects/2026/Q4", 2);
    let before = s.mailbox(a, "Projects/2026/Q4").unwrap();
    s.rename_mailbox(a, "Projects", "Old/Projects").unwrap();
    let after = s.mailbox(a, "Old/Projects/2026/Q4").unwrap();
    assert_eq!(
        (after.id, after.uidvalidity, after.messages),
        (before.id, before.uidvalidity, 2)
    );
    assert!(s.mailbox(a, "Old").is_ok(), "missing parents are created");
    assert!(matches!(s.mailbox(a, "Projects"), Err(E::NoSuchMailbox(_))));
    assert!(matches!(
        s.rename_mailbox(a, "Old", "Old/Inner"),
        Err(E::InvalidMailboxName(..))
    ));
    // Renaming INBOX moves its messages and leaves it empty (RFC 9051 §6.3.6).
    deliver_n(&s, a, "INBOX", 3);
    s.rename_mailbox(a, "INBOX", "Saved").unwrap();
    assert_eq!(s.mailbox(a, "INBOX").unwrap().messages, 0);
    assert_eq!(s.mailbox(a, "Saved").unwrap().messages, 3);
    s.subscribe(a, "Saved", false).unwrap();
    assert!(!s.mailbox(a, "Saved").unwrap().subscribed);
    s.delete_mailbox(a, "Saved").unwrap();
    assert!(matches!(s.mailbox(a, "Saved"), Err(E::NoSuchMailbox(_))));
}

#[test]
fn flags_expunge_copy_move_and_changes() {
    use yubin_store::{FlagOp, flags};
    let (_d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    deliver_n(&s, a, "INBOX", 5);
    let inbox = s.mailbox(a, "INBOX").unwrap();
    let m0 = inbox.highest_modseq;
    let seen = Flags {
        system: flags::SEEN,
        keywords: vec!["$Forwarded".into()],
    };
    let up = s
        .store_flags(inbox.id, &[1, 2, 99], FlagOp::Add, &seen, None)
        .unwrap();
    assert_eq!(up.messages.len(), 2, "UID 99 does not exist");
    assert!(
        up.messages
            .iter()
            .all(|m| m.flags.system == flags::SEEN && m.flags.has_keyword("$forwarded"))
    );
    let ch = s.changes(inbox.id, m0).unwrap();
    assert_eq!(ch.changed.iter().map(|m| m.uid).collect::<Vec<_>>(), [1, 2]);
    assert!(ch.highest_modseq > m0);
    // UNCHANGEDSINCE: message 1 changed after m0, so it is reported, not touched.
    let up = s
        .store_flags(
            inbox.id,
            &[1, 3],
            FlagOp::Add,
            &Flags::system(flags::FLAGGED),
            Some(m0),
        )
        .unwrap();
    assert_eq!(up.modified, [1]);
    // No-op stores do not bump MODSEQ.
    let hm = s.mailbox(a, "INBOX").unwrap().highest_modseq;
    s.store_flags(
        inbox.id,
        &[2],
        FlagOp::Add,
        &Flags::system(flags::SEEN),
        None,
    )
    .unwrap();
    assert_eq!(s.mailbox(a, "INBOX").unwrap().highest_modseq, hm);
    assert_eq!(s.mailbox(a, "INBOX").unwrap().unseen, 3);

    s.store_flags(
        inbox.id,
        &[2, 4],
        FlagOp::Add,
        &Flags::system(flags::DELETED),
        None,
    )
    .unwrap();
    let before = s.mailbox(a, "INBOX").unwrap().highest_modseq;
    assert_eq!(s.expunge(inbox.id, Some(&[4, 5])).unwrap(), [4]);
    assert_eq!(s.expunge(inbox.id, None).unwrap(), [2]);
    let ch = s.changes(inbox.id, before).unwrap();
    assert_eq!(ch.expunged, [2, 4]);
    assert_eq!(
        s.messages(inbox.id)
            .unwrap()
            .iter()
            .map(|m| m.uid)
            .collect::<Vec<_>>(),
        [1, 3, 5]
    );

    // Move to Junk: new UIDs there, gone here, recorded as spam; out again is ham.
    let junk = s.mailbox(a, "Junk").unwrap();
    let c = s.copy(inbox.id, &[1, 3, 42], junk.id, true).unwrap();
    assert_eq!(c.uids, [(1, 1), (3, 2)]);
    assert_eq!(c.uidvalidity, junk.uidvalidity);
    let moved = s.messages(junk.id).unwrap();
    assert_eq!(moved[0].flags.system, flags::SEEN, "flags are kept");
    assert_eq!(s.messages(inbox.id).unwrap().len(), 1);
    assert_eq!(s.read(junk.id, 1).unwrap(), b"Subject: 0\r\n\r\nbody\r\n");
    s.copy(junk.id, &[2], inbox.id, false).unwrap();
    let ev = s.training_events(a).unwrap();
    assert_eq!(
        ev.iter().map(|e| e.spam).collect::<Vec<_>>(),
        [true, true, false]
    );
    let trash = s.mailbox(a, "Trash").unwrap();
    s.copy(junk.id, &[1], trash.id, true).unwrap();
    assert_eq!(
        s.training_events(a).unwrap().len(),
        3,
        "Junk to Trash is no training"
    );
}

#[test]
fn change_listeners_hear_deliveries_and_stores() {
    use std::sync::Mutex;
    let (_d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    let heard = Arc::new(Mutex::new(Vec::new()));
    let h = heard.clone();
    s.on_change(Box::new(move |m| h.lock().unwrap().push(m)));
    deliver_n(&s, a, "INBOX", 1);
    let inbox = s.mailbox(a, "INBOX").unwrap().id;
    s.store_flags(
        inbox,
        &[1],
        yubin_store::FlagOp::Add,
        &Flags::system(1),
        None,
    )
    .unwrap();
    assert_eq!(*heard.lock().unwrap(), [inbox, inbox]);
}

#[test]
fn full_text_search_uses_the_index() {
    use yubin_store::{FlagOp, TextField};
    let (d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    let msgs: [&[u8]; 3] = [
        b"From: Alice <alice@x.org>\r\nSubject: Quarterly report\r\nX-Project: Apollo\r\n\r\nNumbers are UP.\r\n",
        b"From: =?utf-8?q?J=C3=BCrgen?= <j@x.de>\r\nTo: team@example.com\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nSch=C3=B6ne Gr=C3=BC=C3=9Fe\r\n",
        b"Subject: ab\r\n\r\n50% off_sale\r\n",
    ];
    for m in msgs {
        let blob = s.stage(&[m]).unwrap();
        s.deliver(blob, &[a], "INBOX", &Flags::default(), 0)
            .unwrap();
    }
    let inbox = s.mailbox(a, "INBOX").unwrap().id;
    let q = |f, n: &str| s.search_text(inbox, f, n).unwrap();
    assert_eq!(q(TextField::Subject, "QUARTERLY"), [1]);
    assert_eq!(q(TextField::From, "alice@x"), [1]);
    assert_eq!(q(TextField::From, "jürgen"), [2]);
    assert_eq!(q(TextField::Body, "schöne"), [2]);
    assert_eq!(
        q(TextField::Body, "up"),
        [1],
        "two letters: bodies are read"
    );
    assert_eq!(q(TextField::Subject, "AB"), [3]);
    assert_eq!(q(TextField::From, "x."), [1, 2]);
    assert_eq!(q(TextField::Text, "üß"), [2]);
    assert_eq!(q(TextField::Body, "%"), [3], "LIKE wildcards are literal");
    assert_eq!(q(TextField::Body, "f_s"), [3]);
    assert_eq!(q(TextField::Body, "x_y"), Vec::<u32>::new());
    assert_eq!(
        q(TextField::Text, "apollo"),
        [1],
        "TEXT covers every header"
    );
    assert_eq!(q(TextField::To, "team@"), [2]);
    assert_eq!(q(TextField::Subject, "\"quoted\""), Vec::<u32>::new());
    // Copies share one index row; removing the last reference removes it.
    let archive = s.mailbox(a, "Archive").unwrap().id;
    s.copy(inbox, &[1], archive, false).unwrap();
    assert_eq!(
        s.search_text(archive, TextField::Subject, "report")
            .unwrap(),
        [1]
    );
    s.store_flags(
        inbox,
        &[1, 2, 3],
        FlagOp::Add,
        &Flags::system(yubin_store::flags::DELETED),
        None,
    )
    .unwrap();
    s.expunge(inbox, None).unwrap();
    assert_eq!(q(TextField::Subject, "report"), Vec::<u32>::new());
    assert_eq!(
        s.search_text(archive, TextField::Subject, "report")
            .unwrap(),
        [1]
    );
    let db = rusqlite::Connection::open(d.path().join("search.db")).unwrap();
    let rows: i64 = db
        .query_row("SELECT count(*) FROM search", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1, "index rows of removed bodies are gone");
}

/// The index is derived data: a lost search.db is rebuilt from the bodies.
#[test]
fn search_index_is_rebuilt() {
    use yubin_store::TextField;
    let (d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    for i in 0..300 {
        let m = format!("Subject: note {i}\r\n\r\nbody word{i:03}x\r\n");
        let blob = s.stage(&[m.as_bytes()]).unwrap();
        s.deliver(blob, &[a], "INBOX", &Flags::default(), 0)
            .unwrap();
    }
    let inbox = s.mailbox(a, "INBOX").unwrap().id;
    assert_eq!(
        s.search_text(inbox, TextField::Body, "word123x").unwrap(),
        [124]
    );
    drop(s);
    std::fs::remove_file(d.path().join("search.db")).unwrap();
    let s = SqliteStore::open(d.path()).unwrap();
    assert_eq!(
        s.search_text(inbox, TextField::Body, "word299x").unwrap(),
        [300]
    );
    assert_eq!(
        s.search_text(inbox, TextField::Subject, "note 7")
            .unwrap()
            .len(),
        11
    );
    // An index of an older layout (version 1 kept a copy of the text) is rebuilt too.
    drop(s);
    let db = rusqlite::Connection::open(d.path().join("search.db")).unwrap();
    db.pragma_update(None, "user_version", 1).unwrap();
    drop(db);
    let s = SqliteStore::open(d.path()).unwrap();
    assert_eq!(
        s.search_text(inbox, TextField::Body, "word042x").unwrap(),
        [43]
    );
    let db = rusqlite::Connection::open(d.path().join("search.db")).unwrap();
    let v: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 2);
}

/// A data directory of schema 1 (index inside yubin.db, every body in a file) is upgraded
/// in place when opened.
#[test]
fn schema_1_is_upgraded() {
    use yubin_store::TextField;
    let (d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    for i in 0..3 {
        let m = format!(
            "Subject: old {i}\r\n\r\nword{i}x {}\r\n",
            "y".repeat(70_000)
        );
        let blob = s.stage(&[m.as_bytes()]).unwrap();
        s.deliver(blob, &[a], "INBOX", &Flags::default(), 0)
            .unwrap();
    }
    let inbox = s.mailbox(a, "INBOX").unwrap().id;
    drop(s);
    // Back to what schema 1 looked like: bodies in files, no packs.
    std::fs::remove_file(d.path().join("search.db")).unwrap();
    let db = rusqlite::Connection::open(d.path().join("yubin.db")).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let mut st = db
            .prepare("SELECT name, size, pack, off FROM blobs WHERE pack IS NOT NULL")
            .unwrap();
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)? as u64,
                ))
            })
            .unwrap();
        for row in rows {
            let (name, size, pack, off) = row.unwrap();
            let f =
                std::fs::File::open(d.path().join("packs").join(format!("{pack:016x}"))).unwrap();
            let mut body = vec![0; size as usize];
            f.read_exact_at(&mut body, off + 32).unwrap();
            let file = d.path().join("blobs").join(&name[..2]).join(&name);
            std::fs::write(file, body).unwrap();
        }
    }
    std::fs::remove_dir_all(d.path().join("packs")).unwrap();
    db.execute_batch(
        "DROP INDEX blobs_pack;
         ALTER TABLE blobs DROP COLUMN pack;
         ALTER TABLE blobs DROP COLUMN off;
         DROP TABLE index_pending;
         DELETE FROM meta WHERE key IN ('mailbox_seq', 'blob_seq', 'account_seq', 'account_epoch',
                                        'bayes_cursor');
         DROP TABLE bayes;
         DROP TABLE correspondents;
         DROP TABLE quarantine;
         ALTER TABLE envelopes DROP COLUMN sent_day;
         ALTER TABLE mailboxes DROP COLUMN recent_uid;
         ALTER TABLE mailboxes ADD COLUMN subscribed INTEGER NOT NULL DEFAULT 1;
         DROP TABLE subscriptions;
         DROP TABLE metadata;
         ALTER TABLE messages DROP COLUMN saved;
         DROP TRIGGER messages_added;
         DROP TRIGGER messages_removed;
         ALTER TABLE mailboxes DROP COLUMN octets;
         ALTER TABLE blobs DROP COLUMN data;
         ALTER TABLE queue DROP COLUMN envid;
         ALTER TABLE queue DROP COLUMN ret;
         ALTER TABLE queue DROP COLUMN require_tls;
         ALTER TABLE queue_rcpts DROP COLUMN notify;
         ALTER TABLE queue_rcpts DROP COLUMN orcpt;
         ALTER TABLE accounts DROP COLUMN scram;
         DROP TABLE filter_lists;
         ALTER TABLE accounts DROP COLUMN junk_score;
         ALTER TABLE accounts DROP COLUMN reject_score;
         CREATE VIRTUAL TABLE search USING fts5(
             headers, hfrom, hto, hcc, hbcc, subject, body, tokenize = 'trigram');
         PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(db);
    let s = SqliteStore::open(d.path()).unwrap();
    assert_eq!(
        s.search_text(inbox, TextField::Body, "word1x").unwrap(),
        [2]
    );
    // Mail from before the upgrade is not \Recent (schema 6); its POP3 sizes are counted
    // again (without the dot-stuffing), once.
    assert_eq!(s.recent(inbox, 4, false).unwrap(), 4);
    // Subscriptions became names of their own; what was subscribed still is.
    assert!(s.subscriptions(a).unwrap().contains(&"INBOX".to_owned()));
    assert!(s.mailbox(a, "INBOX").unwrap().subscribed);
    let sizes = s.pop3_sizes(inbox).unwrap();
    for (uid, size) in &sizes {
        assert_eq!(*size, yubin_model::pop3_size(&s.read(inbox, *uid).unwrap()));
    }
    assert_eq!(s.pop3_sizes(inbox).unwrap(), sizes);
    let blob = s
        .stage(&[b"Subject: after upgrade\r\n\r\nfresh\r\n"])
        .unwrap();
    s.deliver(blob, &[a], "INBOX", &Flags::default(), 0)
        .unwrap();
    assert_eq!(s.search_text(inbox, TextField::Body, "fresh").unwrap(), [4]);
    assert_eq!(
        s.read(inbox, 4).unwrap(),
        b"Subject: after upgrade\r\n\r\nfresh\r\n"
    );
    assert!(s.read(inbox, 1).unwrap().starts_with(b"Subject: old 0"));
    // Old bodies stay in their files; new large ones go to packs; expunging an old one
    // removes its file.
    assert_eq!(blob_files(d.path()), 3);
    let large = format!("Subject: big\r\n\r\n{}\r\n", "z".repeat(90_000));
    let blob = s.stage(&[large.as_bytes()]).unwrap();
    s.deliver(blob, &[a], "INBOX", &Flags::default(), 0)
        .unwrap();
    assert_eq!(s.read(inbox, 5).unwrap(), large.as_bytes());
    assert!(pack_space(d.path()) >= 90_000);
    let deleted = Flags::system(yubin_store::flags::DELETED);
    s.store_flags(inbox, &[1], yubin_store::FlagOp::Add, &deleted, None)
        .unwrap();
    assert_eq!(s.expunge(inbox, None).unwrap(), [1]);
    assert_eq!(blob_files(d.path()), 2);
    assert!(s.read(inbox, 2).unwrap().starts_with(b"Subject: old 1"));
    let db = rusqlite::Connection::open(d.path().join("yubin.db")).unwrap();
    let v: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 9);
    // SCRAM credentials (schema 7) come with the first login that proves the password.
    assert!(s.scram_credentials("a@example.com").unwrap().is_none());
    // Schema 8: empty allow/block lists, the server's spam thresholds.
    assert!(s.filter_list().unwrap().is_empty());
    assert_eq!(s.filter_scores(a).unwrap(), (None, None));
    assert!(s.filter_list_add("block", "192.0.2.0/24").unwrap());
    assert!(!s.filter_list_add("block", "192.0.2.0/24").unwrap());
    s.set_filter_scores("a@example.com", Some(3.0), None)
        .unwrap();
    assert_eq!(s.filter_scores(a).unwrap(), (Some(3.0), None));
    assert!(s.authenticate("a@example.com", "wrong").unwrap().is_none());
    assert!(s.scram_credentials("a@example.com").unwrap().is_none());
    assert!(s.authenticate("a@example.com", "pw").unwrap().is_some());
    let (_, stored) = s.scram_credentials("a@example.com").unwrap().unwrap();
    let creds = yubin_sasl::ScramCredentials::from_stored(&stored).unwrap();
    assert_eq!(
        creds,
        yubin_sasl::ScramCredentials::derive("pw", &creds.salt, creds.iterations)
    );
    let total: u64 = s.messages(inbox).unwrap().iter().map(|m| m.size).sum();
    assert_eq!(
        s.usage(a).unwrap().0,
        total,
        "sizes counted during the upgrade"
    );
    // Mailbox ids continue above every id ever used.
    let before = s.mailbox(a, "Archive").unwrap().id;
    s.delete_mailbox(a, "Archive").unwrap();
    assert!(s.create_mailbox(a, "Archive").unwrap().id > before);
}

#[test]
fn sort_keys_are_kept_per_message() {
    let (_d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    let blob = s
        .stage(&[b"From: Alice Smith <Alice@example.org>\r\nTo: bob@example.test\r\nSubject: Re: first\r\nMessage-ID: <m2@x>\r\nReferences: <m0@x> <m1@x>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nbody\r\n"])
        .unwrap();
    s.deliver(blob, &[a], "INBOX", &Flags::default(), 7)
        .unwrap();
    let inbox = s.mailbox(a, "INBOX").unwrap().id;
    let info = s.sort_info(inbox).unwrap();
    let m = &info[0];
    assert_eq!(
        (m.uid, m.internal_date, m.sent),
        (1, 7, Some(1_795_428_000))
    );
    assert_eq!(
        (m.from.as_str(), m.from_display.as_str()),
        ("alice", "Alice Smith")
    );
    assert_eq!(
        (m.to.as_str(), m.to_display.as_str()),
        ("bob", "bob@example.test")
    );
    assert_eq!(m.subject, "Re: first");
    assert_eq!(m.message_id, "m2@x");
    assert_eq!(m.references, ["m0@x", "m1@x"]);
}

#[test]
fn outbound_queue_lifecycle() {
    use yubin_store::{Attempt, Outbound, Queue};
    let (d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    let out = Outbound {
        mail_from: "a@example.com".into(),
        rcpts: vec!["x@Remote.ORG".into(), "y@other.net".into()],
        ..Default::default()
    };
    // A message to one local and two remote recipients: one transaction.
    let blob = s.stage(&[b"Subject: q\r\n\r\nbody\r\n"]).unwrap();
    let (local, qid) = s
        .accept(blob, &[yubin_store::Placement::inbox(a)], &out, 100)
        .unwrap();
    assert_eq!(local.len(), 1);
    let qid = qid.unwrap();
    assert_eq!(
        s.due(99, 10).unwrap().len(),
        0,
        "not due before it was accepted"
    );
    let due = s.due(100, 10).unwrap();
    assert_eq!(
        due.iter().map(|r| r.domain.as_str()).collect::<Vec<_>>(),
        ["remote.org", "other.net"]
    );
    // A domain being delivered to is left out, so the limit reaches the others.
    let others = s.due_except(100, 10, &["remote.org".into()], &[]).unwrap();
    assert_eq!(
        others.iter().map(|r| r.domain.as_str()).collect::<Vec<_>>(),
        ["other.net"]
    );
    assert_eq!(
        s.due_except(100, 1, &["remote.org".into()], &[])
            .unwrap()
            .len(),
        1
    );
    // Recipients in flight are left out one by one.
    let first = due[0].id;
    let rest = s.due_except(100, 10, &[], &[first]).unwrap();
    assert_eq!(rest.len(), 1);
    assert_ne!(rest[0].id, first);
    // A quote or backslash in a name cannot break the query.
    assert_eq!(
        s.due_except(100, 10, &["\"]\\".into()], &[]).unwrap().len(),
        2
    );
    assert_eq!(
        s.queued_message(qid).unwrap(),
        b"Subject: q\r\n\r\nbody\r\n"
    );
    s.record(
        due[0].id,
        &Attempt::Retry {
            at: 400,
            error: "451 later".into(),
        },
    )
    .unwrap();
    s.record(due[1].id, &Attempt::Delivered).unwrap();
    let q = s.queued().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(
        (q[0].attempts, q[0].next_attempt, q[0].last_error.as_deref()),
        (1, 400, Some("451 later"))
    );
    assert!(s.due(399, 10).unwrap().is_empty());
    assert_eq!(s.retry_now(None, 200).unwrap(), 1);
    assert_eq!(s.due(200, 10).unwrap().len(), 1);
    s.record(
        due[0].id,
        &Attempt::Failed {
            error: "550 no".into(),
        },
    )
    .unwrap();
    assert!(
        s.queued().unwrap().is_empty(),
        "all recipients done: the message left the queue"
    );
    assert_eq!(bodies(d.path()), 1, "the body stays for the local copy");
    // Queue-only message (no local recipients); deleting it removes its body.
    let blob = s.stage(&[b"x"]).unwrap();
    let (_, qid) = s.accept(blob, &[], &out, 100).unwrap();
    assert_eq!(bodies(d.path()), 2);
    assert_eq!(s.queued_message(qid.unwrap()).unwrap(), b"x");
    assert_eq!(s.delete_queued(qid.unwrap()).unwrap(), 2);
    assert_eq!(bodies(d.path()), 1);
    assert_eq!(
        s.sweep_orphans().unwrap(),
        0,
        "queued bodies are not orphans"
    );
}

/// The cached message lists (shared by SELECTs) always equal what a fresh read gives.
#[test]
fn cached_message_lists_follow_every_change() {
    use yubin_store::{FlagOp, flags};
    let (d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    let deliver = |n: u32| {
        for i in 0..n {
            let blob = s
                .stage(&[format!("Subject: {i}\r\n\r\nx\r\n").as_bytes()])
                .unwrap();
            s.deliver(blob, &[a], "INBOX", &Flags::default(), 0)
                .unwrap();
        }
    };
    let inbox = s.mailbox(a, "INBOX").unwrap().id;
    let archive = s.mailbox(a, "Archive").unwrap().id;
    deliver(10);
    let before = s.messages(inbox).unwrap();
    assert_eq!(before.len(), 10);
    s.store_flags(
        inbox,
        &[2, 4, 6],
        FlagOp::Add,
        &Flags::system(flags::DELETED),
        None,
    )
    .unwrap();
    s.store_flags(inbox, &[1], FlagOp::Add, &Flags::system(flags::SEEN), None)
        .unwrap();
    let mid = s.messages(inbox).unwrap();
    assert_eq!(before.len(), 10, "a list handed out never changes");
    assert_eq!(mid[1].flags.system, flags::DELETED);
    let mb = s.mailbox(a, "INBOX").unwrap();
    assert_eq!((mb.messages, mb.unseen, mb.deleted), (10, 9, 3));
    s.expunge(inbox, Some(&[2, 4])).unwrap();
    deliver(3);
    s.copy(inbox, &[1, 3], archive, true).unwrap();
    let cached = s.messages(inbox).unwrap();
    let mb = s.mailbox(a, "INBOX").unwrap();
    drop(s);
    let fresh = SqliteStore::open(d.path()).unwrap();
    assert_eq!(*cached, *fresh.messages(inbox).unwrap());
    assert_eq!(mb, fresh.mailbox(a, "INBOX").unwrap());
    let uids: Vec<u32> = cached.iter().map(|m| m.uid).collect();
    assert_eq!(uids, [5, 6, 7, 8, 9, 10, 11, 12, 13]);
    assert_eq!(
        (mb.messages, mb.unseen, mb.deleted, mb.uid_next),
        (9, 9, 1, 14)
    );
}

/// STORE of system flags takes a range-at-a-time path; with UNCHANGEDSINCE (never
/// exceeded here) it takes the per-message one. Both must leave and report the same flags
/// and MODSEQs, for every kind of change, gaps and repeats in the UID list included.
#[test]
fn store_paths_agree() {
    use yubin_store::{FlagOp, flags};
    let (_d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    let fast = s.mailbox(a, "INBOX").unwrap().id;
    let slow = s.mailbox(a, "Archive").unwrap().id;
    for i in 0..40 {
        for mb in ["INBOX", "Archive"] {
            let blob = s
                .stage(&[format!("Subject: {i}\r\n\r\nx\r\n").as_bytes()])
                .unwrap();
            let kw = if i % 3 == 0 {
                vec!["$Work".to_owned()]
            } else {
                vec![]
            };
            let f = Flags {
                system: (i % 4) as u32,
                keywords: kw,
            };
            s.deliver(blob, &[a], mb, &f, 0).unwrap();
        }
    }
    let ops: [(FlagOp, u32, Vec<u32>); 6] = [
        (FlagOp::Add, flags::SEEN, (1..=40).collect()),
        (
            FlagOp::Remove,
            flags::SEEN | flags::ANSWERED,
            vec![3, 4, 5, 9, 10, 40],
        ),
        (FlagOp::Add, flags::DELETED, vec![7, 7, 2, 30, 31, 32, 99]),
        (FlagOp::Replace, flags::FLAGGED, vec![1, 2, 3, 20, 21]),
        (FlagOp::Add, flags::SEEN, (1..=40).collect()),
        (FlagOp::Remove, flags::DRAFT, vec![]),
    ];
    for (op, bits, uids) in ops {
        let f = Flags::system(bits);
        let x = s.store_flags(fast, &uids, op, &f, None).unwrap();
        let y = s.store_flags(slow, &uids, op, &f, Some(u64::MAX)).unwrap();
        let strip = |v: &[yubin_store::MessageMeta]| {
            let mut v: Vec<_> = v
                .iter()
                .map(|m| (m.uid, m.flags.clone(), m.modseq))
                .collect();
            v.sort_by_key(|m| m.0);
            v.dedup();
            v
        };
        assert_eq!(
            strip(&x.messages),
            strip(&y.messages),
            "{op:?} {bits} {uids:?}"
        );
        assert!(x.modified.is_empty() && y.modified.is_empty());
        let (mf, ms) = (s.messages(fast).unwrap(), s.messages(slow).unwrap());
        assert_eq!(strip(&mf), strip(&ms));
        assert_eq!(
            s.mailbox(a, "INBOX").unwrap().highest_modseq,
            s.mailbox(a, "Archive").unwrap().highest_modseq
        );
    }
}

#[test]
fn account_ids_are_never_reused_and_changes_move_the_epoch() {
    let (_d, s) = store();
    s.add_domain("example.com").unwrap();
    let eve = s.add_account("eve@example.com", "pw-eve-1", false).unwrap();
    let stamp = s.account_stamp(eve.id).unwrap();
    assert!(stamp.is_some());
    let e0 = s.account_epoch().unwrap();
    s.remove_account("eve@example.com").unwrap();
    let frank = s
        .add_account("frank@example.com", "pw-frank", false)
        .unwrap();
    assert!(
        frank.id > eve.id,
        "a removed account's id is not given to the next"
    );
    assert_eq!(s.account_stamp(eve.id).unwrap(), None);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let e1 = s.account_epoch().unwrap();
    assert!(e1 > e0);
    let before = s.account_stamp(frank.id).unwrap();
    s.set_password("frank@example.com", "another-pw").unwrap();
    assert_ne!(s.account_stamp(frank.id).unwrap(), before);
    s.set_disabled("frank@example.com", true).unwrap();
    assert_eq!(s.account_stamp(frank.id).unwrap(), None);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(s.account_epoch().unwrap() >= e1 + 2);
}

#[test]
fn deeply_nested_message_is_stored_indexed_and_searchable() {
    let (_d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw-a-123", false).unwrap();
    let mut raw = b"Subject: deep\r\n".to_vec();
    for _ in 0..50_000 {
        raw.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
    }
    raw.extend_from_slice(b"Subject: core\r\n\r\nneedle\r\n");
    let blob = s.stage(&[&raw]).unwrap();
    s.deliver(blob, &[a.id], "INBOX", &Flags::default(), 0)
        .unwrap();
    let inbox = s.mailbox(a.id, "INBOX").unwrap().id;
    // The indexer runs in its own (small-stacked) thread: SEARCH catches it up.
    assert_eq!(
        s.search_text(inbox, yubin_store::TextField::Subject, "deep")
            .unwrap(),
        [1]
    );
    assert!(s.unprocessable().unwrap().is_empty());
}

/// A full disk: deliveries fail (temporarily), but flagging and expunging still work, and
/// once space is back deliveries resume. Needs a small file system of its own: a tmpfs
/// mounted for the test (skipped where mounting is not allowed).
#[test]
fn full_disk_still_lets_users_delete_mail() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    let root = mnt.join("data");
    let s = SqliteStore::create(&root).unwrap();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw-a-123", false).unwrap();
    let inbox = s.mailbox(a.id, "INBOX").unwrap().id;
    let body = vec![b'x'; 1 << 20];
    let mut stored = 0;
    let full = loop {
        let r = s
            .stage(&[b"Subject: big\r\n\r\n", &body])
            .and_then(|blob| s.deliver(blob, &[a.id], "INBOX", &Flags::default(), 0));
        match r {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 100, "the disk never filled");
    };
    assert!(stored > 5, "{full}");
    // Take every byte left, so that SQLite itself has no room for its next write.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(mnt.join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let uids: Vec<u32> = s.messages(inbox).unwrap().iter().map(|m| m.uid).collect();
    let deleted = Flags::system(yubin_store::flags::DELETED);
    s.store_flags(inbox, &uids, yubin_store::FlagOp::Add, &deleted, None)
        .expect("flagging works on a full disk");
    assert_eq!(
        s.expunge(inbox, None).expect("expunge works").len(),
        uids.len()
    );
    assert!(
        !root.join("reserve").exists(),
        "the reserve was given up for it"
    );
    assert!(s.stage(&[b"Subject: no room\r\n\r\nx\r\n"]).is_err());
    // Space comes back (bodies released after their grace period), and with it delivery.
    let mut ok = false;
    for _ in 0..60 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        if let Ok(blob) = s.stage(&[b"Subject: again\r\n\r\nsmall\r\n"]) {
            s.deliver(blob, &[a.id], "INBOX", &Flags::default(), 0)
                .unwrap();
            ok = true;
            break;
        }
    }
    assert!(ok, "deliveries resume once there is space");
}

#[test]
fn removed_accounts_keep_their_mail_until_purged() {
    let (_d, s) = store();
    s.add_domain("example.com").unwrap();
    let eve = s
        .add_account("eve@example.com", "pw-eve-12345", false)
        .unwrap();
    let blob = s.stage(&[b"Subject: kept\r\n\r\nx\r\n"]).unwrap();
    s.deliver(blob, &[eve.id], "INBOX", &Flags::default(), 0)
        .unwrap();
    s.remove_account("eve@example.com").unwrap();
    assert!(matches!(
        s.account("eve@example.com"),
        Err(Error::NoSuchAccount(_))
    ));
    assert_eq!(s.resolve("eve@example.com").unwrap(), Resolved::Unknown);
    assert!(
        s.authenticate("eve@example.com", "pw-eve-12345")
            .unwrap()
            .is_none()
    );
    assert!(s.list_accounts(None).unwrap().is_empty());
    assert_eq!(s.list_domains().unwrap()[0].accounts, 0);
    let removed = s.removed_accounts().unwrap();
    assert_eq!(removed.len(), 1);
    assert!(
        removed[0].starts_with("eve@example.com\tremoved "),
        "{removed:?}"
    );
    // The address is free meanwhile; restoring needs it back.
    let other = s
        .add_account("eve@example.com", "pw-other-123", false)
        .unwrap();
    assert!(matches!(
        s.restore_account("eve@example.com"),
        Err(Error::AccountExists(_))
    ));
    s.remove_account("eve@example.com").unwrap();
    assert_eq!(s.removed_accounts().unwrap().len(), 2);
    // The newest removed one comes back (here the second eve); purge takes the rest.
    let back = s.restore_account("eve@example.com").unwrap();
    assert_eq!(back.id, other.id);
    s.remove_account("eve@example.com").unwrap();
    assert_eq!(s.purge_account("eve@example.com").unwrap(), 2);
    assert!(s.removed_accounts().unwrap().is_empty());
    assert_eq!(s.purge_account("eve@example.com").unwrap(), 0);
    // A restored account has its mail.
    let frank = s
        .add_account("frank@example.com", "pw-frank-123", false)
        .unwrap();
    let blob = s.stage(&[b"Subject: franks\r\n\r\nx\r\n"]).unwrap();
    s.deliver(blob, &[frank.id], "INBOX", &Flags::default(), 0)
        .unwrap();
    s.remove_account("frank@example.com").unwrap();
    let f = s.restore_account("frank@example.com").unwrap();
    assert_eq!(f.id, frank.id);
    assert!(!f.disabled);
    let inbox = s.mailbox(f.id, "INBOX").unwrap();
    assert_eq!(inbox.messages, 1);
    assert!(
        s.authenticate("frank@example.com", "pw-frank-123")
            .unwrap()
            .is_some()
    );
}

/// RFC 3501 §2.3.2: each message is \Recent for one claimer; claims outlive a restart once
/// any later write has carried them to disk.
#[test]
fn recent_is_claimed_once_and_kept() {
    let (d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    for _ in 0..3 {
        let blob = s.stage(&[b"Subject: r\r\n\r\nx\r\n"]).unwrap();
        s.deliver(blob, &[a], "INBOX", &Flags::default(), 0)
            .unwrap();
    }
    let inbox = s.mailbox(a, "INBOX").unwrap();
    assert_eq!(inbox.recent, 3);
    // Looking takes nothing; the first claim gets all three, the next none.
    assert_eq!(s.recent(inbox.id, 4, false).unwrap(), 1);
    assert_eq!(s.recent(inbox.id, 4, true).unwrap(), 1);
    assert_eq!(s.recent(inbox.id, 4, true).unwrap(), 4);
    assert_eq!(s.mailbox(a, "INBOX").unwrap().recent, 0);
    // A claim made with an older UIDNEXT does not undo a newer one.
    assert_eq!(s.recent(inbox.id, 2, true).unwrap(), 4);
    let blob = s.stage(&[b"Subject: r\r\n\r\nx\r\n"]).unwrap();
    s.deliver(blob, &[a], "INBOX", &Flags::default(), 0)
        .unwrap();
    assert_eq!(s.mailbox(a, "INBOX").unwrap().recent, 1);
    // Written with the next transaction (a flag change), so a restart keeps it.
    s.store_flags(
        inbox.id,
        &[1],
        yubin_store::FlagOp::Add,
        &Flags::system(1),
        None,
    )
    .unwrap();
    drop(s);
    let s = SqliteStore::open(d.path()).unwrap();
    assert_eq!(s.recent(inbox.id, 5, false).unwrap(), 4);
    assert_eq!(s.mailbox(a, "INBOX").unwrap().recent, 1);
}

/// MULTIAPPEND (RFC 3502): several messages in one transaction, consecutive UIDs; a
/// failure stores none of them.
#[test]
fn deliver_many_is_all_or_nothing() {
    let (_d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    let staged = |n: u32| {
        let m = format!("Subject: m{n}\r\n\r\nbody {n}\r\n");
        (
            s.stage(&[m.as_bytes()]).unwrap(),
            Flags::default(),
            1_000 + i64::from(n),
        )
    };
    assert!(
        s.deliver_many(vec![staged(1), staged(2)], a, "Nowhere")
            .is_err()
    );
    let inbox = s.mailbox(a, "INBOX").unwrap();
    assert_eq!(inbox.messages, 0);
    let d = s
        .deliver_many(vec![staged(1), staged(2), staged(3)], a, "inbox")
        .unwrap();
    assert_eq!(d.iter().map(|d| d.uid).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        s.read(inbox.id, 3).unwrap(),
        b"Subject: m3\r\n\r\nbody 3\r\n"
    );
    assert_eq!(s.messages(inbox.id).unwrap()[1].internal_date, 1_002);
}

/// What the storage quota does not count is bounded per account: mailboxes (parents made
/// by CREATE included) and annotation bytes; the refusal changes nothing.
#[test]
fn per_account_row_limits() {
    let (_d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    let deep = |i: usize| format!("m{i}/{}", vec!["x"; 249].join("/"));
    let mut made = s.list_mailboxes(a).unwrap().len();
    let mut i = 0;
    while made + 250 <= 10_000 {
        s.create_mailbox(a, &deep(i)).unwrap();
        made += 250;
        i += 1;
    }
    assert!(matches!(
        s.create_mailbox(a, &deep(i)),
        Err(Error::Limit(_))
    ));
    assert_eq!(s.list_mailboxes(a).unwrap().len(), made);
    let inbox = s.mailbox(a, "INBOX").unwrap().id;
    let big = vec![b'v'; 4 << 20];
    for k in 0..3 {
        let e = [(format!("/private/e{k}"), Some(big.clone()))];
        s.set_metadata(a, Some(inbox), &e).unwrap();
    }
    let e = [("/private/e3".to_string(), Some(big.clone()))];
    assert!(matches!(
        s.set_metadata(a, Some(inbox), &e),
        Err(Error::Limit(_))
    ));
    assert_eq!(s.metadata(a, Some(inbox)).unwrap().len(), 3);
    // Replacing a value within the bound is fine.
    let e = [("/private/e0".to_string(), Some(vec![b'w'; 10]))];
    s.set_metadata(a, Some(inbox), &e).unwrap();
}

/// The decision step files each recipient's copy: Junk with `$Junk` for one, INBOX for
/// another, and a deleted target falls back to INBOX with the flags kept.
#[test]
fn accept_files_per_recipient() {
    use yubin_store::{Outbound, Placement};
    let (_d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    let b = s.add_account("b@example.com", "pw", false).unwrap().id;
    let c = s.add_account("c@example.com", "pw", false).unwrap().id;
    s.delete_mailbox(c, "Junk").unwrap();
    let junk = Flags {
        system: 0,
        keywords: vec!["$Junk".into()],
    };
    let to = |account, mailbox: &str, flags: &Flags| Placement {
        mailbox: mailbox.into(),
        flags: flags.clone(),
        ..Placement::inbox(account)
    };
    let blob = s.stage(&[b"Subject: spam\r\n\r\nbuy\r\n"]).unwrap();
    let placements = [
        to(a, "Junk", &junk),
        Placement::inbox(b),
        to(c, "Junk", &junk),
    ];
    let (copies, q) = s
        .accept(blob, &placements, &Outbound::default(), 100)
        .unwrap();
    assert_eq!((copies.len(), q), (3, None));
    let sel = s.select(a, "Junk").unwrap();
    assert_eq!(sel.messages.len(), 1);
    assert!(sel.messages[0].flags.has_keyword("$Junk"));
    assert_eq!(s.select(a, "INBOX").unwrap().messages.len(), 0);
    let sel = s.select(b, "INBOX").unwrap();
    assert!(!sel.messages[0].flags.has_keyword("$Junk"));
    let sel = s.select(c, "INBOX").unwrap();
    assert_eq!(sel.messages.len(), 1, "deleted Junk falls back to INBOX");
    assert!(sel.messages[0].flags.has_keyword("$Junk"));
}

#[test]
fn classifier_labels_counts_and_correspondents() {
    use yubin_store::{FlagOp, flags};
    let (_d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    deliver_n(&s, a, "INBOX", 3);
    let inbox = s.mailbox(a, "INBOX").unwrap();
    let junk = s.mailbox(a, "Junk").unwrap();
    let kw = |k: &str| Flags {
        system: 0,
        keywords: vec![k.into()],
    };
    // $Junk once is one label; setting it again is none; $NotJunk is ham.
    s.store_flags(inbox.id, &[1], FlagOp::Add, &kw("$Junk"), None)
        .unwrap();
    s.store_flags(inbox.id, &[1], FlagOp::Add, &kw("$junk"), None)
        .unwrap();
    // Off and on again: the same label once more is no new label.
    s.store_flags(inbox.id, &[1], FlagOp::Remove, &kw("$Junk"), None)
        .unwrap();
    s.store_flags(inbox.id, &[1], FlagOp::Add, &kw("$Junk"), None)
        .unwrap();
    s.store_flags(inbox.id, &[2], FlagOp::Add, &kw("$NotJunk"), None)
        .unwrap();
    let seen = Flags::system(flags::SEEN);
    s.store_flags(inbox.id, &[3], FlagOp::Add, &seen, None)
        .unwrap();
    // Appending into Junk is spam; moving the message back is ham, a relabel.
    let blob = s.stage(&[b"Subject: buy\r\n\r\npills\r\n"]).unwrap();
    s.deliver_many(vec![(blob, Flags::default(), 0)], a, "Junk")
        .unwrap();
    s.copy(junk.id, &[1], inbox.id, true).unwrap();
    // The same body appended into Junk again and again (a new copy each time) is one
    // more spam label after the ham one, not one per copy.
    for _ in 0..3 {
        let blob = s.stage(&[b"Subject: buy\r\n\r\npills\r\n"]).unwrap();
        s.deliver_many(vec![(blob, Flags::default(), 0)], a, "Junk")
            .unwrap();
    }
    s.training_add(None, true, &[7, 8]).unwrap();
    let p = s.training_pending(0, 100).unwrap();
    let labels: Vec<(bool, bool, bool)> = p
        .iter()
        .map(|i| (i.spam, i.relabel, i.message.is_some()))
        .collect();
    assert_eq!(
        labels,
        [
            (true, false, true),
            (false, false, true),
            (true, false, true),
            (false, true, true),
            (true, false, true),
            (true, false, false)
        ]
    );
    assert_eq!(p[5].features.as_deref(), Some(&[7u32, 8][..]));
    assert_eq!(p[5].account, None);
    assert_eq!(s.training_pending(p[4].id, 100).unwrap().len(), 1);
    // The counts move with the cursor, once.
    assert!(s.bayes_save(0, p[5].id, &[(7, 1, 0), (9, 0, 0)]).unwrap());
    assert!(
        !s.bayes_save(0, p[5].id, &[(7, 2, 0)]).unwrap(),
        "cursor moved"
    );
    assert!(
        s.bayes_save(p[5].id, p[5].id, &[(7, 0, 0), (8, 3, 4)])
            .unwrap()
    );
    assert_eq!(s.bayes_load().unwrap(), (p[5].id, vec![(8, 3, 4)]));
    // Learned word-hash labels are gone; labels of bodies stay for relabelling.
    assert_eq!(s.training_pending(0, 100).unwrap().len(), 5);
    s.correspondents_add(a, &["Bob@Example.NET".into()])
        .unwrap();
    assert!(s.is_correspondent(a, "bob@example.net").unwrap());
    assert!(!s.is_correspondent(a, "eve@example.net").unwrap());
}

#[test]
fn quarantine_holds_releases_and_deletes() {
    use yubin_store::{Error as E, Placement};
    let (_d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    let b = s.add_account("b@example.com", "pw", false).unwrap().id;
    let out = yubin_store::Outbound {
        mail_from: "x@far.example".into(),
        ..Default::default()
    };
    let blob = s.stage(&[b"Subject: held\r\n\r\nMZ\r\n"]).unwrap();
    let (d, _) = s
        .accept(
            blob,
            &[
                Placement::quarantine(a, "attachment: x.exe"),
                Placement::quarantine(b, "attachment: x.exe"),
            ],
            &out,
            1_000,
        )
        .unwrap();
    assert!(d.is_empty(), "nothing filed");
    let q = s.quarantine_list().unwrap();
    assert_eq!(q.len(), 2);
    assert_eq!(
        (
            q[0].address.as_str(),
            q[0].reason.as_str(),
            q[0].mail_from.as_str()
        ),
        ("a@example.com", "attachment: x.exe", "x@far.example")
    );
    assert_eq!(
        s.quarantine_read(q[0].id).unwrap(),
        b"Subject: held\r\n\r\nMZ\r\n"
    );
    let r = s.quarantine_release(q[0].id).unwrap();
    let inbox = s.mailbox(a, "INBOX").unwrap();
    assert_eq!((r.mailbox, r.uid), (inbox.id, 1));
    assert_eq!(s.read(inbox.id, 1).unwrap(), b"Subject: held\r\n\r\nMZ\r\n");
    assert!(matches!(
        s.quarantine_release(q[0].id),
        Err(E::NoSuchQuarantined(_))
    ));
    // Deleting the other copy keeps the body the released one uses.
    s.quarantine_delete(q[1].id).unwrap();
    assert!(s.quarantine_list().unwrap().is_empty());
    assert_eq!(s.read(inbox.id, 1).unwrap(), b"Subject: held\r\n\r\nMZ\r\n");
    assert!(matches!(
        s.quarantine_delete(q[1].id),
        Err(E::NoSuchQuarantined(_))
    ));
}

/// Held messages past their time are dropped in batches; younger ones stay.
#[test]
fn quarantine_expires_old_messages() {
    use yubin_store::Placement;
    let (_d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    for created in [100, 200, 300] {
        let blob = s.stage(&[b"Subject: held\r\n\r\nMZ\r\n"]).unwrap();
        let held = [Placement::quarantine(a, "attachment: x.exe")];
        s.accept(blob, &held, &Default::default(), created).unwrap();
    }
    assert_eq!(
        s.quarantine_expire(100, 10).unwrap(),
        0,
        "none older than 100"
    );
    assert_eq!(s.quarantine_expire(1_000, 1).unwrap(), 1, "a batch of one");
    let left: Vec<i64> = s
        .quarantine_list()
        .unwrap()
        .iter()
        .map(|q| q.created)
        .collect();
    assert_eq!(left, [200, 300]);
    assert_eq!(s.quarantine_expire(1_000, 10).unwrap(), 2);
    assert!(s.quarantine_list().unwrap().is_empty());
}

#[test]
fn purging_an_account_frees_its_quarantined_bodies() {
    use yubin_store::Placement;
    let (d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    let big = vec![b'x'; 200_000]; // kept outside the database
    let blob = s.stage(&[b"Subject: held\r\n\r\n", &big]).unwrap();
    s.accept(
        blob,
        &[Placement::quarantine(a, "test")],
        &Default::default(),
        1,
    )
    .unwrap();
    s.remove_account("a@example.com").unwrap();
    assert_eq!(s.purge_account("a@example.com").unwrap(), 1);
    assert!(s.quarantine_list().unwrap().is_empty());
    let db = rusqlite::Connection::open(d.path().join("yubin.db")).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "no body left behind");
}
