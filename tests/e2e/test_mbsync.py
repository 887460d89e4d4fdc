"""mbsync (isync) keeps a local Maildir and the server in step, both ways, without
duplicates: the test a real laptop-and-phone user runs every few minutes."""

import imaplib
import os
import smtplib
import subprocess
from pathlib import Path

from conftest import DOMAIN, PASSWORD, mbsync_config

BOB = f"bob@{DOMAIN}"


def deliver(server, subject):
    with smtplib.SMTP("127.0.0.1", server.port) as s:
        s.sendmail("alice@remote.example", [BOB],
                   f"From: alice@remote.example\r\nSubject: {subject}\r\nMessage-ID: <{subject}@x>\r\n\r\n{subject} body\r\n".encode())


def mbsync(cfg: Path):
    r = subprocess.run(["mbsync", "-c", str(cfg), "-a"], capture_output=True, timeout=120)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
    return r


def maildir_files(box: Path) -> list[Path]:
    return sorted(p for sub in ("cur", "new") for p in (box / sub).glob("*") if p.is_file())


def flags_of(p: Path) -> str:
    return p.name.split(":2,")[-1] if ":2," in p.name else ""


def subject_of(p: Path) -> str:
    for line in p.read_bytes().splitlines():  # mbsync stores LF line endings locally
        if line.startswith(b"Subject: "):
            return line[9:].decode()
    return ""


def test_mbsync_both_ways_twice(server, tmp_path):
    for s in ("one", "two", "three"):
        deliver(server, s)
    local = tmp_path / "Mail"
    cfg = mbsync_config(tmp_path / "mbsyncrc", "127.0.0.1", server.imap_port, BOB, PASSWORD, local)
    mbsync(cfg)
    inbox = local / "INBOX"
    files = maildir_files(inbox)
    assert sorted(subject_of(f) for f in files) == ["one", "three", "two"]
    for box in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert (local / box / "cur").is_dir(), f"{box} was created locally"

    # Local changes: read "one", delete "two", write a draft.
    by_subject = {subject_of(f): f for f in files}
    one, two = by_subject["one"], by_subject["two"]
    one.rename(one.parent.parent / "cur" / (one.name.split(":2,")[0] + ":2," + "".join(sorted(flags_of(one) + "S"))))
    two.rename(two.parent.parent / "cur" / (two.name.split(":2,")[0] + ":2," + "".join(sorted(flags_of(two) + "T"))))
    draft = local / "Drafts" / "cur" / "1700000000.local.draft:2,D"
    draft.write_bytes(b"From: bob@example.test\nSubject: draft from laptop\n\nsee you\n")
    # Server-side changes meanwhile: a flag from another device and new mail.
    m = imaplib.IMAP4("127.0.0.1", server.imap_port)
    m.login(BOB, PASSWORD)
    m.select("INBOX")
    typ, data = m.search(None, "SUBJECT", "three")
    m.store(data[0].decode(), "+FLAGS", "\\Flagged")
    deliver(server, "four")

    mbsync(cfg)

    m.select("INBOX")
    subjects = [x[1].decode().strip().removeprefix("Subject: ")
                for x in m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1] if isinstance(x, tuple)]
    flags = [x.decode() for x in m.fetch("1:*", "(FLAGS)")[1]]
    server_view = dict(zip(subjects, flags))
    assert set(server_view) == {"one", "three", "four"}, "two was expunged on the server"
    assert "\\Seen" in server_view["one"]
    typ, data = m.select("Drafts")
    assert data == [b"1"], "the local draft was uploaded"
    m.logout()
    files = maildir_files(inbox)
    assert sorted(subject_of(f) for f in files) == ["four", "one", "three"]
    three = [f for f in files if subject_of(f) == "three"][0]
    assert "F" in flags_of(three), "the server's flag reached the Maildir"

    # A third run changes nothing and duplicates nothing.
    before = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file() and ".mbsyncstate" not in p.name and ".uidvalidity" not in p.name}
    mbsync(cfg)
    after = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file() and ".mbsyncstate" not in p.name and ".uidvalidity" not in p.name}
    assert before == after
    assert len(server.uids(BOB)) == 3
    assert len(server.uids(BOB, "Drafts")) == 1
