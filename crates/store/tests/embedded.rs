//! The embedded backend through its traits: directory rules, delivery, durability rules.

use std::collections::BTreeSet;
use std::sync::Arc;

use yubin_store::{Directory, Error, MailStore, Resolved, SqliteStore};

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::create(dir.path()).unwrap();
    (dir, s)
}

fn blob_files(root: &std::path::Path) -> usize {
    std::fs::read_dir(root.join("blobs"))
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
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
                        let d = s.deliver(blob, &[a, b, a], "inbox", 0, 1).unwrap();
                        assert_eq!(d.len(), 2, "duplicate accounts get one copy");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let msgs = s.list_messages(a, "INBOX").unwrap();
        let uids: Vec<u32> = msgs.iter().map(|m| m.uid).collect();
        assert_eq!(uids, (1..=320).collect::<Vec<u32>>());
        let modseqs: BTreeSet<u64> = msgs.iter().map(|m| m.modseq).collect();
        assert_eq!(modseqs.len(), 320);
        let raw = s.read_message(a, "INBOX", 7).unwrap();
        assert!(raw.starts_with(b"X-Trace: 1\r\nSubject: "));
        assert_eq!(raw.len() as u64, msgs[6].size);
        // One body shared by both recipients.
        assert_eq!(blob_files(dir.path()), 320);
    }
    let s = SqliteStore::open(dir.path()).unwrap();
    let before = s.list_mailboxes(a).unwrap();
    let blob = s.stage(&[b"after restart\r\n"]).unwrap();
    let d = s.deliver(blob, &[a], "INBOX", 0, 2).unwrap();
    assert_eq!(d[0].uid, 321);
    let after = s.list_mailboxes(a).unwrap();
    assert_eq!(before[0].uidvalidity, after[0].uidvalidity);
    assert_eq!(after[0].uid_next, 322);
    // Removing one account keeps the bodies the other still references.
    s.remove_account("a@example.com").unwrap();
    assert_eq!(blob_files(dir.path()), 320);
    assert_eq!(
        s.read_message(b, "INBOX", 1).unwrap().len() as u64,
        s.list_messages(b, "INBOX").unwrap()[0].size
    );
    s.remove_account("b@example.com").unwrap();
    assert_eq!(blob_files(dir.path()), 0);
}

#[test]
fn failed_delivery_leaves_nothing_and_orphans_are_swept() {
    let (d, s) = store();
    s.add_domain("example.com").unwrap();
    let a = s.add_account("a@example.com", "pw", false).unwrap().id;
    let blob = s.stage(&[b"x"]).unwrap();
    assert!(matches!(
        s.deliver(blob, &[a], "NoSuchBox", 0, 0),
        Err(Error::NoSuchMailbox(_))
    ));
    assert_eq!(
        blob_files(d.path()),
        0,
        "a failed delivery removes its body"
    );
    assert!(s.list_messages(a, "INBOX").unwrap().is_empty());
    // A body staged by a process that crashed before delivering.
    let _orphan = s.stage(&[b"y"]).unwrap();
    let kept = s.stage(&[b"z"]).unwrap();
    s.deliver(kept, &[a], "INBOX", 0, 0).unwrap();
    assert_eq!(blob_files(d.path()), 2);
    assert_eq!(s.sweep_orphans().unwrap(), 1);
    assert_eq!(blob_files(d.path()), 1);
    assert_eq!(s.read_message(a, "INBOX", 1).unwrap(), b"z");
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
