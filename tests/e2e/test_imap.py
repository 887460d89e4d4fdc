"""IMAP from independent clients: Python's imaplib (the whole journey), curl IMAP URLs,
two sessions on one mailbox, IDLE woken by SMTP delivery, TLS, and hostile input."""

import imaplib
import re
import smtplib
import socket
import ssl
import subprocess
import threading
import time

import pytest

import os

from conftest import DOMAIN, PASSWORD, YUBIN

BOB = f"bob@{DOMAIN}"


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def deliver(server, subject: str, body: str = "hello", to=BOB, extra: str = "") -> None:
    msg = (f"From: Alice <alice@remote.example>\r\nTo: {to}\r\nSubject: {subject}\r\n"
           f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '-')}@remote.example>\r\n"
           f"{extra}\r\n{body}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
        assert s.sendmail("alice@remote.example", [to], msg) == {}


def login(server, user=BOB) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    m.login(user, PASSWORD)
    return m


MULTIPART = (
    "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
    "--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "Grüße, the report is attached.\r\n"
    "--b1\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n"
    "Content-Disposition: attachment; filename=\"report.pdf\"\r\n\r\nJVBERi0xLjQK\r\n--b1--"
)


def test_imaplib_journey(server):
    deliver(server, "first")
    deliver(server, "second report", body="", extra=MULTIPART.split("\r\n\r\n", 1)[0] + "\r\n")
    # Replace the body of "second report" with the multipart one, delivered raw.
    with smtplib.SMTP("127.0.0.1", server.port) as s:
        s.sendmail("alice@remote.example", [BOB],
                   ("From: alice@remote.example\r\nSubject: with attachment\r\n" + MULTIPART + "\r\n").encode())
    m = login(server)
    typ, caps = m.capability()
    assert b"IDLE" in caps[0] and b"UIDPLUS" in caps[0] and b"MOVE" in caps[0]
    typ, boxes = m.list()
    names = [b.decode() for b in boxes]
    assert any(n.endswith('"/" INBOX') for n in names)
    assert any("\\Sent" in n and n.endswith("Sent") for n in names)
    assert any("\\Junk" in n for n in names) and any("\\Trash" in n for n in names)

    typ, data = m.select("INBOX")
    assert (typ, data) == ("OK", [b"3"])
    assert m.response("UIDVALIDITY")[1][0].isdigit()

    typ, data = m.fetch("1:*", "(UID FLAGS RFC822.SIZE ENVELOPE)")
    assert typ == "OK" and len(data) == 3
    assert b'"first"' in data[0] and b'(("Alice" NIL "alice" "remote.example"))' in data[0]

    typ, data = m.fetch("3", "(BODYSTRUCTURE)")
    bs = data[0].decode()
    assert '("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "8BIT"' in bs
    assert '("APPLICATION" "PDF" ("NAME" "report.pdf") NIL NIL "BASE64" 12' in bs
    assert '"MIXED"' in bs and '("ATTACHMENT" ("FILENAME" "report.pdf"))' in bs

    typ, data = m.fetch("3", "(BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    parts = {k.split(b" ")[-2] if False else k: v for k, v in (x for x in data if isinstance(x, tuple))}
    values = list(parts.values())
    assert values[0] == "Grüße, the report is attached.".encode()
    assert values[1].startswith(b"Content-Type: application/pdf") and values[1].endswith(b"\r\n\r\n")
    assert values[2] == b"Subject: with attachment\r\n\r\n"
    typ, data = m.fetch("3", "(FLAGS)")
    assert b"\\Seen" not in data[0], "PEEK does not set \\Seen"

    typ, data = m.fetch("1", "(BODY[]<0.10>)")
    assert data[0][1] == b"Return-Pat"
    typ, data = m.fetch("1", "(FLAGS)")
    assert b"\\Seen" in data[0], "BODY[] sets \\Seen"

    assert m.search(None, "UNSEEN") == ("OK", [b"2 3"])
    assert m.search(None, "SUBJECT", '"second"') == ("OK", [b"2"])
    assert m.search(None, "FROM", "alice", "NOT", "SEEN") == ("OK", [b"2 3"])
    m.literal = "grüße".encode()  # 8-bit text must travel as a literal
    assert m.search("UTF-8", "BODY") == ("OK", [b"3"])
    assert m.search(None, "OR", "SUBJECT", "first", "SUBJECT", "attachment") == ("OK", [b"1 3"])
    assert m.search(None, "SENTON", "24-Nov-2026") == ("OK", [b"1 2"])
    sizes = [int(re.search(rb"RFC822.SIZE (\d+)", x).group(1)) for x in m.fetch("1:*", "(RFC822.SIZE)")[1]]
    assert m.search(None, "LARGER", str(sizes[1])) == ("OK", [b" ".join(b"%d" % (i + 1) for i, n in enumerate(sizes) if n > sizes[1])])
    assert m.search(None, "SMALLER", str(sizes[1])) == ("OK", [b" ".join(b"%d" % (i + 1) for i, n in enumerate(sizes) if n < sizes[1])])
    assert m.uid("SEARCH", None, "ALL")[1][0].split() == [b"1", b"2", b"3"]

    typ, data = m.store("2", "+FLAGS", "(\\Flagged $Important)")
    assert b"\\Flagged" in data[0] and b"$Important" in data[0]
    assert m.search(None, "KEYWORD", "$Important") == ("OK", [b"2"])
    assert m.search(None, "FLAGGED") == ("OK", [b"2"])

    typ, data = m.create("Projects/2026")
    assert typ == "OK"
    typ, data = m.copy("1:2", "Projects/2026")
    assert typ == "OK" and b"COPYUID" in data[0]
    typ, data = m.uid("MOVE", "3", "Archive")
    assert typ == "OK"
    assert m.select("INBOX")[1] == [b"2"]

    m.store("1", "+FLAGS", "\\Deleted")
    typ, data = m.expunge()
    assert data == [b"1"]
    assert m.select("INBOX")[1] == [b"1"]

    typ, data = m.append("Drafts", "(\\Draft \\Seen)", None, b"Subject: draft\r\n\r\nunfinished\r\n")
    assert typ == "OK" and b"APPENDUID" in data[0]
    assert m.status("Drafts", "(MESSAGES UNSEEN UIDNEXT)")[1][0] == b"Drafts (MESSAGES 1 UNSEEN 0 UIDNEXT 2)"
    assert m.status("Archive", "(MESSAGES)")[1][0] == b"Archive (MESSAGES 1)"
    assert m.status("Projects/2026", "(MESSAGES)")[1][0] == b"Projects/2026 (MESSAGES 2)"

    assert m.rename("Projects", '"Old Projects"')[0] == "OK"
    assert m.status('"Old Projects/2026"', "(MESSAGES)")[0] == "OK"
    assert m.delete('"Old Projects"')[0] == "NO", "has children"
    assert m.delete('"Old Projects/2026"')[0] == "OK"
    assert m.subscribe("Archive")[0] == "OK"
    assert m.unsubscribe("Archive")[0] == "OK"
    assert not any(b"Archive" in x for x in m.lsub()[1] if x)
    m.close()
    m.logout()


def test_utf8_mailbox_names_round_trip(server):
    m = login(server)
    assert m.create("&AMQ-rger")[0] == "OK"  # "Ärger" in modified UTF-7
    names = b" ".join(m.list()[1])
    assert b"&AMQ-rger" in names
    assert m.select("&AMQ-rger")[0] == "OK"
    assert "Ärger" in server.cli("mail", "mailboxes", BOB).stdout.decode()
    m.logout()


def test_login_failures_and_states(server):
    m = imaplib.IMAP4("127.0.0.1", server.imap_port)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login(BOB, "wrong")
    with pytest.raises(imaplib.IMAP4.error):
        m.select("INBOX")  # not authenticated
    m.login(BOB, PASSWORD)
    with pytest.raises(imaplib.IMAP4.error):
        m.fetch("1", "(FLAGS)")  # no mailbox selected
    assert m.select("NoSuchBox")[0] == "NO"
    m.logout()
    server.cli("user", "disable", f"carol@{DOMAIN}")
    m = imaplib.IMAP4("127.0.0.1", server.imap_port)
    with pytest.raises(imaplib.IMAP4.error):
        m.login(f"carol@{DOMAIN}", PASSWORD)


def test_authenticate_plain_starttls_and_imaps(server):
    m = imaplib.IMAP4("127.0.0.1", server.imap_port)
    m.starttls(ssl_context=tls_context())
    assert b"STARTTLS" not in m.capability()[1][0]
    typ, _ = m.authenticate("PLAIN", lambda _: f"\0{BOB}\0{PASSWORD}".encode())
    assert typ == "OK"
    m.logout()
    m = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=tls_context())
    assert m.sock.version() in ("TLSv1.3", "TLSv1.2")
    m.login(BOB, PASSWORD)
    assert m.select("INBOX")[0] == "OK"
    m.logout()


def test_two_sessions_see_each_other(server):
    for i in range(3):
        deliver(server, f"m{i}")
    a, b = login(server), login(server)
    a.select("INBOX")
    b.select("INBOX")
    a.store("2", "+FLAGS", "\\Flagged")
    typ, data = b.noop()
    flags_update = b.untagged_responses.pop("FETCH", [])
    assert any(b"\\Flagged" in x for x in flags_update), b.untagged_responses
    a.store("1", "+FLAGS", "\\Deleted")
    a.expunge()
    deliver(server, "m3")
    # b is told about the expunge and the new message at NOOP, not before.
    b.noop()
    assert b.untagged_responses.get("EXPUNGE") == [b"1"]
    assert b.untagged_responses.get("EXISTS")[-1] == b"3"
    b.untagged_responses.clear()
    typ, data = b.fetch("1:*", "(UID)")
    assert [re.search(rb"UID (\d+)", x).group(1) for x in data] == [b"2", b"3", b"4"]
    # A FETCH (not UID FETCH) while a message vanished must not renumber the client.
    a.store("1", "+FLAGS", "\\Deleted")
    a.expunge()
    b.untagged_responses.clear()
    typ, data = b.fetch("1:3", "(FLAGS)")
    assert typ == "OK" and "EXPUNGE" not in b.untagged_responses
    b.noop()
    assert b.untagged_responses.get("EXPUNGE") == [b"1"]
    a.logout()
    b.logout()


def test_idle_is_woken_by_smtp_delivery(server):
    m = login(server)
    m.select("INBOX")
    sock = m.socket()
    tag = b"I1"
    sock.sendall(tag + b" IDLE\r\n")
    f = sock.makefile("rb")
    assert f.readline().startswith(b"+ ")
    start = time.monotonic()
    sender = threading.Thread(target=deliver, args=(server, "wake up"))
    sender.start()
    sock.settimeout(5)
    line = f.readline()
    elapsed = time.monotonic() - start
    assert line == b"* 1 EXISTS\r\n", line
    assert elapsed < 1.0, f"IDLE took {elapsed:.2f}s to report new mail"
    assert f.readline() == b"* 1 RECENT\r\n"  # RFC 3501 §7.3.2: new mail is recent here
    sock.sendall(b"DONE\r\n")
    assert f.readline().startswith(tag + b" OK")
    sender.join()  # its QUIT must not meet the server's shutdown at the end of the test


def test_curl_imap_urls(server):
    deliver(server, "for curl", body="curl body text")
    base = f"imap://127.0.0.1:{server.imap_port}"
    auth = ["--user", f"{BOB}:{PASSWORD}"]
    r = subprocess.run(["curl", "-sS", *auth, f"{base}/"], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert b"INBOX" in r.stdout and b"Sent" in r.stdout
    r = subprocess.run(["curl", "-sS", *auth, f"{base}/INBOX;UID=1"], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"Return-Path: <alice@remote.example>") and b"curl body text" in r.stdout
    r = subprocess.run(["curl", "-sS", *auth, f"{base}/INBOX?SUBJECT%20curl"], capture_output=True, timeout=30)
    assert r.returncode == 0 and b"SEARCH 1" in r.stdout, r.stdout
    r = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", *auth, f"{base}/INBOX;UID=1;SECTION=TEXT"],
                       capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == b"curl body text\r\n", (r.stdout, r.stderr)


class Raw:
    def __init__(self, server):
        self.sock = socket.create_connection(("127.0.0.1", server.imap_port), timeout=30)
        self.f = self.sock.makefile("rb")
        assert self.f.readline().startswith(b"* OK")

    def cmd(self, line: bytes, tag: bytes) -> list[bytes]:
        self.sock.sendall(line)
        out = []
        while True:
            l = self.f.readline()
            assert l, "connection closed"
            out.append(l)
            if l.startswith(tag + b" "):
                return out


def test_bad_input(server):
    deliver(server, "x")
    c = Raw(server)
    assert c.cmd(b"a1 LOGIN bob@example.test \"" + PASSWORD.encode() + b"\"\r\n", b"a1")[-1].startswith(b"a1 OK")
    assert c.cmd(b"a2 FROBNICATE\r\n", b"a2")[-1].startswith(b"a2 BAD")
    assert c.cmd(b"a3 SELECT INBOX\r\n", b"a3")[-1].startswith(b"a3 OK")
    assert c.cmd(b"a4 FETCH 1 (FLAGS\r\n", b"a4")[-1].startswith(b"a4 BAD")  # unbalanced
    assert c.cmd(b"a5 FETCH 1 (FLAGS))\r\n", b"a5")[-1].startswith(b"a5 BAD")
    assert c.cmd(b"a6 FETCH 99 (FLAGS)\r\n", b"a6")[-1].startswith(b"a6 BAD")  # beyond EXISTS
    assert c.cmd(b"a7 FETCH 0 (FLAGS)\r\n", b"a7")[-1].startswith(b"a7 BAD")
    assert c.cmd(b"a8 UID FETCH 1:4294967295 (FLAGS)\r\n", b"a8")[-1].startswith(b"a8 OK")
    big = b",".join(b"%d" % i for i in range(1, 200_001, 2))  # a 100k-element set
    assert c.cmd(b"a9 UID FETCH " + big + b" (UID)\r\n", b"a9")[-1].startswith(b"a9 OK")
    # A synchronizing literal beyond APPENDLIMIT is refused before it is sent.
    c.sock.sendall(b"b1 APPEND INBOX {999999999}\r\n")
    assert c.f.readline().startswith(b"b1 NO [TOOBIG]")
    # A LITERAL+ one is read and discarded, then refused.
    big_lit = b"x" * (60 * 1024 * 1024)
    c.sock.sendall(b"b2 APPEND INBOX {%d+}\r\n" % len(big_lit) + big_lit + b"\r\n")
    line = c.f.readline()
    assert line.startswith(b"b2 BAD") or line.startswith(b"b2 NO"), line
    assert c.cmd(b"b3 NOOP\r\n", b"b3")[-1].startswith(b"b3 OK"), "the session survives"
    assert c.cmd(b"b4 LOGIN x y\r\n", b"b4")[-1].startswith(b"b4 BAD")  # wrong state
    assert c.cmd(b"b5 SEARCH CHARSET KOI8-R ALL\r\n", b"b5")[-1].startswith(b"b5 NO [BADCHARSET")
    assert c.cmd(b"b6 STORE 1 +FLAGS (\\Bogus)\r\n", b"b6")[-1].startswith(b"b6 BAD")
    assert c.cmd(b"\x00\xff\xfe garbage\r\n", b"*")[-1].startswith(b"* BAD")
    assert c.cmd(b"b7 SELECT \"\xff\xfe\"\r\n", b"b7")[-1][:5] in (b"b7 BA", b"b7 NO")
    assert c.cmd(b"b8 LOGOUT\r\n", b"b8")[-1].startswith(b"b8 OK")
    # The server still serves others.
    m = login(server)
    assert m.select("INBOX")[1] == [b"1"]
    m.logout()


def test_plaintext_login_allowed_on_loopback(server):
    # Loopback counts as a protected path (as in Dovecot); elsewhere LOGINDISABLED applies,
    # which the session tests in crates/server/tests/imap_dialogues.rs check.
    m = imaplib.IMAP4("127.0.0.1", server.imap_port)
    assert b"AUTH=PLAIN" in m.capability()[1][0]
    m.logout()


def test_qresync_reconnect(server):
    """A client comes back after a disconnect and learns only what changed (RFC 7162)."""
    for i in range(4):
        deliver(server, f"q{i}")
    m = login(server)
    m._simple_command("ENABLE", "QRESYNC")
    typ, data = m.select("INBOX")
    typ, data = m.status("INBOX", "(UIDVALIDITY HIGHESTMODSEQ)")
    uidvalidity, modseq = map(int, re.search(rb"UIDVALIDITY (\d+) HIGHESTMODSEQ (\d+)", data[0]).groups())
    m.logout()
    # Another device changes things while we are away.
    other = login(server)
    other.select("INBOX")
    other.store("2", "+FLAGS", "\\Flagged")
    other.store("3", "+FLAGS", "\\Deleted")
    other.expunge()
    other.logout()
    m = login(server)
    m._simple_command("ENABLE", "QRESYNC")
    tag = m._command("SELECT", "INBOX", f"(QRESYNC ({uidvalidity} {modseq} 1:4))")
    typ, _ = m._command_complete("SELECT", tag)
    assert typ == "OK"
    assert m.untagged_responses.get("VANISHED") == [b"(EARLIER) 3"]
    fetches = m.untagged_responses.get("FETCH")
    assert len(fetches) == 1 and b"UID 2" in fetches[0] and b"\\Flagged" in fetches[0] and b"MODSEQ" in fetches[0]
    m.logout()


def test_quota(server):
    """A per-account storage limit: SMTP defers with 452 4.2.2 (at RCPT with the declared
    SIZE, at the end of data with the real one), IMAP reports it and refuses APPEND/COPY
    beyond it with [OVERQUOTA] (RFC 9208)."""
    r = server.cli("user", "quota", BOB, "2K")
    assert b"2048 bytes" in r.stdout
    deliver(server, "fits", body="x" * 1200)
    msg = b"From: a@remote.example\r\nSubject: too big\r\n\r\n" + b"y" * 2100 + b"\r\n"
    with smtplib.SMTP("127.0.0.1", server.port) as s:
        # No SIZE declared: the real size is checked when the data is in.
        s.ehlo()
        s.mail("alice@remote.example")
        assert s.rcpt(BOB)[0] == 250
        code, resp = s.data(msg)
        assert (code, resp[:5]) == (452, b"Mailb") or code == 452, (code, resp)
        s.rset()
        # Declared: refused at RCPT.
        s.mail("alice@remote.example", ["SIZE=%d" % len(msg)])
        code, resp = s.rcpt(BOB)
        assert (code, resp[:5]) == (452, b"4.2.2"), (code, resp)
    m = login(server)
    assert b"QUOTA" in m.capability()[1][0]
    typ, data = m.getquotaroot("INBOX")
    assert typ == "OK"
    flat = b" ".join(x for group in data for x in (group if isinstance(group, list) else [group]) if x)
    assert re.search(rb'"" \(STORAGE 2 2\)', flat), data  # KiB used (rounded up) and limit
    typ, data = m.append("INBOX", None, None, b"Subject: big\r\n\r\n" + b"y" * 4000 + b"\r\n")
    assert typ == "NO" and b"OVERQUOTA" in data[0]
    m.select("INBOX")
    typ, data = m.copy("1", "Archive")
    assert typ == "NO" and b"OVERQUOTA" in data[0]
    typ, data = m.uid("MOVE", "1", "Archive")
    assert typ == "OK", "moving does not use more space"
    m.logout()
    server.cli("user", "quota", BOB, "none")
    deliver(server, "after")


def test_compress_deflate(server):
    """COMPRESS=DEFLATE (RFC 4978) with an independent implementation (Python's zlib)."""
    import zlib

    deliver(server, "squeeze", body="compressible " * 2000)
    c = Raw(server)
    c.cmd(b"a1 LOGIN bob@example.test \"" + PASSWORD.encode() + b"\"\r\n", b"a1")
    assert c.cmd(b"a2 COMPRESS DEFLATE\r\n", b"a2")[-1].startswith(b"a2 OK")
    comp = zlib.compressobj(wbits=-15)
    decomp = zlib.decompressobj(wbits=-15)
    raw_in = 0

    def send(line: bytes):
        c.sock.sendall(comp.compress(line) + comp.flush(zlib.Z_SYNC_FLUSH))

    def read_until(tag: bytes) -> bytes:
        nonlocal raw_in
        data = b""
        while not any(l.startswith(tag + b" ") for l in data.split(b"\r\n")):
            chunk = c.sock.recv(65536)
            assert chunk, "closed"
            raw_in += len(chunk)
            data += decomp.decompress(chunk)
        return data

    send(b"a3 SELECT INBOX\r\n")
    assert b"a3 OK" in read_until(b"a3")
    send(b"a4 FETCH 1 BODY.PEEK[TEXT]\r\n")
    text = read_until(b"a4")
    assert text.count(b"compressible") == 2000 and b"a4 OK" in text
    assert raw_in < len(text) / 10, f"{raw_in} bytes on the wire for {len(text)}"
    send(b"a5 COMPRESS DEFLATE\r\n")
    assert b"a5 NO [COMPRESSIONACTIVE]" in read_until(b"a5")
    send(b"a6 LOGOUT\r\n")
    assert b"a6 OK" in read_until(b"a6")


def test_uidvalidity_uids_and_modseq_survive_restart(server):
    deliver(server, "before restart")
    m = login(server)
    m.select("INBOX")
    m.store("1", "+FLAGS", "\\Seen")
    before = m.status("INBOX", "(UIDVALIDITY UIDNEXT HIGHESTMODSEQ)")[1][0]
    m.logout()
    server.stop()
    server.start()
    m = login(server)
    assert m.status("INBOX", "(UIDVALIDITY UIDNEXT HIGHESTMODSEQ)")[1][0] == before
    uv, nxt, hm = map(int, re.search(rb"UIDVALIDITY (\d+) UIDNEXT (\d+) HIGHESTMODSEQ (\d+)", before).groups())
    deliver(server, "after restart")
    after = m.status("INBOX", "(UIDVALIDITY UIDNEXT HIGHESTMODSEQ)")[1][0]
    uv2, nxt2, hm2 = map(int, re.search(rb"UIDVALIDITY (\d+) UIDNEXT (\d+) HIGHESTMODSEQ (\d+)", after).groups())
    assert (uv2, nxt2) == (uv, nxt + 1) and hm2 > hm
    m.logout()


def test_search_sent_compares_the_date_as_written(server):
    """RFC 3501 §6.4.4: SENTON/SENTBEFORE/SENTSINCE use the date in the Date: header,
    disregarding time and timezone. 01:00 +0200 on the 25th is 23:00 UTC on the 24th."""
    deliver(server, "east")
    msg = (b"From: a@remote.example\r\nSubject: zone\r\nDate: Sun, 25 Mar 2007 01:00:00 +0200\r\n"
           b"\r\nx\r\n")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
        s.sendmail("alice@remote.example", [BOB], msg)
    m = login(server)
    m.select("INBOX")
    typ, data = m.search(None, "SENTON", "25-Mar-2007")
    assert typ == "OK" and data[0] == b"2", data
    assert m.search(None, "SENTON", "24-Mar-2007")[1][0] == b""
    assert m.search(None, "SENTBEFORE", "26-Mar-2007")[1][0] == b"2"
    assert m.search(None, "SENTSINCE", "25-Mar-2007")[1][0].split() == [b"1", b"2"]
    m.logout()


def untagged(m: imaplib.IMAP4, kind: str) -> list:
    """And forget them: imaplib keeps untagged responses until asked."""
    return m.untagged_responses.pop(kind, [])


def test_recent_and_new_keywords_across_sessions(server):
    """RFC 3501 §2.3.2: \\Recent belongs to the first session that selects the mailbox;
    §7.2.6: a keyword another session adds is announced in FLAGS before a FETCH shows it."""
    for i in range(3):
        deliver(server, f"recent {i}")
    a, b = login(server), login(server)
    assert b.status("INBOX", "(RECENT)")[1][0].endswith(b"(RECENT 3)")
    a.select("INBOX")
    assert untagged(a, "RECENT") == [b"3"]
    assert a.search(None, "RECENT")[1] == [b"1 2 3"]
    assert b"\\Recent" in a.fetch("1", "(FLAGS)")[1][0]
    b.select("INBOX")
    assert untagged(b, "RECENT") == [b"0"]
    assert b.search(None, "OLD")[1] == [b"1 2 3"]
    # A adds a new keyword; B must hear FLAGS first, then the FETCH that shows it.
    a.store("2", "+FLAGS", "($Project)")
    untagged(b, "FLAGS")
    typ, data = b.noop()
    flags = untagged(b, "FLAGS")
    assert flags and b"$Project" in flags[-1], flags
    fetches = untagged(b, "FETCH")
    assert any(b"$Project" in f for f in fetches), fetches
    # New mail while both have it selected: recent in one session only.
    deliver(server, "recent 3")
    time.sleep(0.3)
    a.noop()
    b.noop()
    hits = [m.search(None, "RECENT")[1][0].split() for m in (a, b)]
    assert sorted(len([h for h in x if h == b"4"]) for x in hits) == [0, 1], hits
    for m in (a, b):
        m.logout()


def test_stress_clients_find_no_protocol_errors(server):
    """yubin-bench stress (bench/): clients loop LOGIN, SELECT, FETCH, STORE of flags and
    keywords, APPEND, EXPUNGE, LOGOUT on one mailbox and check every reply (EXISTS and
    EXPUNGE numbers, keywords announced in FLAGS first, tagged OK)."""
    bench = os.path.join(os.path.dirname(YUBIN), "yubin-bench")
    out = subprocess.run([bench, "stress", "--addr", f"127.0.0.1:{server.imap_port}",
                          "--user", BOB, "--password", PASSWORD, "--clients", "8",
                          "--seconds", "4"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    fields = out.stdout.strip().split("\t")
    assert fields[0] == "stress" and float(fields[1].split()[0]) > 0, out.stdout
    assert fields[5] == "errors 0", out.stdout + out.stderr
    assert "cached = true" in server.log_text() or "cached=true" in server.log_text()


def test_bare_user_names_with_a_default_domain(make_server):
    y = make_server(extra=f'[auth]\ndefault_domain = "{DOMAIN}"\n').start()
    m = imaplib.IMAP4("127.0.0.1", y.imap_port, timeout=30)
    m.login("bob", PASSWORD)
    m.logout()
    # Without one, a bare name is no account.
    m = imaplib.IMAP4("127.0.0.1", make_server().start().imap_port, timeout=30)
    with pytest.raises(imaplib.IMAP4.error):
        m.login("bob", PASSWORD)


def test_metadata_and_within_from_imaplib(server):
    """METADATA (RFC 5464) and WITHIN (RFC 5032) through imaplib's generic commands."""
    imaplib.Commands.setdefault("SETMETADATA", ("AUTH", "SELECTED"))
    imaplib.Commands.setdefault("GETMETADATA", ("AUTH", "SELECTED"))
    m = login(server)
    caps = m.capabilities
    assert "METADATA" in caps and "WITHIN" in caps, caps
    typ, _ = m._simple_command("SETMETADATA", "INBOX", '(/private/comment "for later")')
    assert typ == "OK"
    typ, data = m._simple_command("GETMETADATA", "INBOX", "/private/comment")
    assert typ == "OK"
    got = m.untagged_responses.pop("METADATA", [])
    assert got == [b'INBOX (/private/comment "for later")'], got
    deliver(server, "within")
    m.select("INBOX")
    assert m.search(None, "YOUNGER", "3600")[1] == [b"1"]
    assert m.search(None, "OLDER", "3600")[1] == [b""]
    m.logout()


def test_preview_from_imaplib(server):
    """PREVIEW (RFC 8970): ASCII as a quoted string, other text as a literal."""
    deliver(server, "ascii", body="Lunch   at\r\n noon?")
    deliver(server, "utf8", body="Grüße aus Köln", extra="Content-Type: text/plain; charset=utf-8\r\n")
    m = login(server)
    m.select("INBOX", readonly=True)
    typ, data = m.fetch("1:2", "(PREVIEW)")
    assert typ == "OK", data
    assert data[0] == b'1 (PREVIEW "Lunch at noon?")', data
    assert data[1][1] == "Grüße aus Köln".encode(), data
    m.logout()


def test_subscriptions_list_sort_and_esearch_from_imaplib(server):
    """Items 6, 9, 10, 11 of issue 16 through imaplib: subscriptions are the client's
    choice, LSUB shows a hidden subscribed child's parent as \\Noselect, LIST takes several
    patterns, SORT keys on group names, ESEARCH MAX reports that message's MODSEQ."""
    deliver(server, "to a group", extra="Cc: Zeta Team: z@remote.example;\r\n")
    deliver(server, "plain", extra="Cc: alpha@remote.example\r\n")
    m = login(server)
    assert m.create("Projects/Alpha")[0] == "OK"
    typ, data = m.lsub('""', "Projects*")
    assert data == [None], data  # nothing subscribed by CREATE
    m.subscribe("Projects/Alpha")
    typ, data = m.lsub('""', "P%")
    assert data == [b'(\\Noselect) "/" Projects'], data
    typ, data = m._simple_command("LIST", '""', '(INBOX "Proj*")')
    assert typ == "OK"
    names = [l.split(b'"/" ')[1] for l in m.untagged_responses.pop("LIST", [])]
    assert names == [b"INBOX", b"Projects", b"Projects/Alpha"], names
    m.select("INBOX")
    typ, data = m.sort("(CC)", "UTF-8", "ALL")
    assert data == [b"2 1"], data  # "alpha" before "zeta team"
    m.store("1", "+FLAGS", "(\\Flagged)")
    typ, data = m._simple_command("SEARCH", "RETURN", "(MAX)", "MODSEQ", "1")
    got = m.untagged_responses.pop("ESEARCH", [])
    fetched = m.fetch("2", "(MODSEQ)")[1][0]
    assert got and b"MAX 2" in got[0], got
    modseq2 = fetched.split(b"MODSEQ (")[1].split(b")")[0]
    assert got[0].endswith(b"MODSEQ " + modseq2), (got, fetched)
    m.logout()


for _verb in ("GENURLAUTH", "URLFETCH", "RESETKEY", "MYRIGHTS", "GETACL", "CANCELUPDATE", "NOTIFY"):
    imaplib.Commands.setdefault(_verb, ("AUTH", "SELECTED"))


def test_uidonly_and_fetch_partial_from_imaplib(server):
    """UIDONLY (RFC 9586): UIDFETCH answers, BAD [UIDREQUIRED] for message numbers;
    FETCH (PARTIAL -1:-2) pages from the end (RFC 9394)."""
    for s in ("one", "two", "three"):
        deliver(server, s)
    m = login(server)
    typ, data = m._simple_command("ENABLE", "UIDONLY")
    assert typ == "OK" and m.untagged_responses.pop("ENABLED") == [b"UIDONLY"]
    m.select("INBOX")
    typ, data = m._simple_command("UID", "FETCH", "1:*", "(FLAGS)", "(PARTIAL -1:-2)")
    assert typ == "OK", data
    assert m.untagged_responses.pop("UIDFETCH") == [b"2 (FLAGS (\\Recent))", b"3 (FLAGS (\\Recent))"]
    with pytest.raises(imaplib.IMAP4.error, match="UIDREQUIRED"):
        m.fetch("1", "(FLAGS)")
    m.uid("STORE", "1", "+FLAGS", "(\\Deleted)")
    typ, data = m.expunge()
    assert m.untagged_responses.pop("VANISHED", None) == [b"1"]
    m.logout()


def test_context_update_from_imaplib(server):
    """CONTEXT=SEARCH (RFC 5267): an updating search hears of new mail and expunges made
    by another client."""
    deliver(server, "old")
    m = login(server)
    m.select("INBOX")
    typ, data = m._simple_command("UID", "SEARCH", "RETURN", "(ALL UPDATE)", "SUBJECT", "report")
    assert typ == "OK"
    # Nothing matches yet: the answer has the tag and UID, no ALL.
    assert m.untagged_responses.pop("ESEARCH")[0].endswith(b") UID")
    deliver(server, "a report")
    time.sleep(0.2)
    m.noop()
    updates = m.untagged_responses.pop("ESEARCH", [])
    assert any(b"UID ADDTO (0 2)" in u for u in updates), updates
    other = login(server)
    other.select("INBOX")
    other.uid("STORE", "2", "+FLAGS", "(\\Deleted)")
    other.expunge()
    other.logout()
    m.noop()
    updates = m.untagged_responses.pop("ESEARCH", [])
    assert any(b"UID REMOVEFROM (0 2)" in u for u in updates), updates
    m.logout()


def test_acl_and_list_myrights_from_imaplib(server):
    m = login(server)
    typ, data = m._simple_command("MYRIGHTS", "INBOX")
    assert typ == "OK" and m.untagged_responses.pop("MYRIGHTS") == [b'"INBOX" lrswipkxtecda']
    typ, data = m.getacl("INBOX")
    assert data == [f'"INBOX" "{BOB}" lrswipkxtecda'.encode()], data
    typ, data = m.setacl("INBOX", "anyone", "lr")
    assert typ == "NO", data
    typ, data = m._simple_command("LIST", '""', '"%"', "RETURN", "(MYRIGHTS)")
    assert typ == "OK"
    rights = m.untagged_responses.pop("MYRIGHTS")
    assert b'"Sent" lrswipkxtecda' in rights, rights
    m.logout()


def test_catenate_urlauth_and_burl(server):
    """Forward without download (RFC 4469, 4467, 4468): a draft put together on the server
    from a received message's text, signed with GENURLAUTH, read back with URLFETCH, and
    sent by submission with BURL; RESETKEY voids the signed URLs."""
    deliver(server, "original", body="the text to forward")
    m = login(server)
    head = f"From: Bob <{BOB}>\r\nTo: {BOB}\r\nSubject: fwd\r\n\r\n"
    args = f'CATENATE (TEXT {{{len(head)}+}}\r\n{head} URL "/INBOX/;UID=1/;SECTION=TEXT")'
    typ, data = m._simple_command("APPEND", "Drafts", args)
    assert typ == "OK", data
    m_ = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
    validity, uid = int(m_.group(1)), int(m_.group(2))
    enc = BOB.replace("@", "%40")
    base = f"imap://{enc}@mx.example.test/Drafts;UIDVALIDITY={validity}/;UID={uid}"
    typ, data = m._simple_command("GENURLAUTH", f'"{base};URLAUTH=submit+{enc}"', "INTERNAL",
                                  f'"{base};URLAUTH=user+{enc}"', "INTERNAL")
    assert typ == "OK", data
    gen = m.untagged_responses.pop("GENURLAUTH")[0]
    submit_url, user_url = re.findall(rb'"([^"]+)"', gen)
    assert re.fullmatch(rb".*;URLAUTH=submit\+bob%40example\.test:internal:[0-9a-f]{64}", submit_url)
    typ, data = m._simple_command("URLFETCH", f'"{user_url.decode()}"', f'"{submit_url.decode()}"')
    assert typ == "OK", data
    fetched = m.untagged_responses.pop("URLFETCH")
    # The user+ URL gives the draft; the submit+ one is for the submission server only.
    assert fetched[0][1].endswith(b"the text to forward\r\n"), fetched
    assert fetched[1].endswith(b" NIL"), fetched
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30) as s:
        s.starttls(context=tls_context())
        s.login(BOB, PASSWORD)
        assert "burl" in s.esmtp_features and s.esmtp_features["burl"] == "imap"
        s.mail(BOB)
        s.rcpt(BOB)
        code, msg = s.docmd("BURL", submit_url.decode() + " LAST")
        assert code == 250, msg
        # A URL that does not verify: 554 5.6.6, and the transaction is over.
        s.mail(BOB)
        s.rcpt(BOB)
        code, msg = s.docmd("BURL", submit_url.decode()[:-4] + "0000 LAST")
        assert code == 554 and b"5.6.6" in msg, msg
    m.select("INBOX")
    typ, data = m.search(None, "SUBJECT", "fwd")
    assert data[0].split() == [b"2"], data
    typ, data = m.fetch("2", "(BODY.PEEK[TEXT])")
    assert data[0][1] == b"the text to forward\r\n", data
    typ, data = m._simple_command("RESETKEY")
    assert typ == "OK", data
    typ, data = m._simple_command("URLFETCH", f'"{user_url.decode()}"')
    assert m.untagged_responses.pop("URLFETCH")[0].endswith(b" NIL")
    m.logout()


def test_notify_between_commands(server):
    """NOTIFY (RFC 5465) on the real server: with no command in progress, new mail in a
    mailbox that is not selected arrives as STATUS, a new mailbox as LIST."""
    m = login(server)
    m.select("Drafts")
    typ, data = m._simple_command("NOTIFY", "SET", "(selected (MessageNew MessageExpunge))",
                                  "(personal (MessageNew MessageExpunge MailboxName))")
    assert typ == "OK", data
    deliver(server, "while waiting")
    m.sock.settimeout(10)
    assert m.readline() == b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UNSEEN 1)\r\n"
    other = login(server)
    other.create("Later")
    other.logout()
    assert m.readline() == b'* LIST () "/" "Later"\r\n'
    typ, data = m._simple_command("NOTIFY", "NONE")
    assert typ == "OK", data
    m.logout()
