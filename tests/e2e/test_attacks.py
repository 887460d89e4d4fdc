"""A peer attacking the real server over its sockets (issue: "no peer can take yubin down").

Each test attacks one way, then checks that the server still answers other clients (and,
where the attack left data behind, after a restart too). Only loopback is used; source
addresses 127.0.0.x stand for different hosts.
"""

import imaplib
import os
import re
import smtplib
import socket
import stat
import time

import pytest

from conftest import DOMAIN, PASSWORD

BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"


def smtp_send(server, raw: bytes, to=BOB, frm="alice@remote.example"):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as s:
        return s.sendmail(frm, [to], raw)


def imap(server, user=BOB, timeout=60) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=timeout)
    m.login(user, PASSWORD)
    return m


def still_serving(server):
    """Another client is served: SMTP, IMAP and POP3 answer."""
    smtp_send(server, b"From: a@remote.example\r\nSubject: still here\r\n\r\nok\r\n", to=CAROL)
    m = imap(server, CAROL)
    assert m.select("INBOX")[0] == "OK"
    m.logout()
    with socket.create_connection(("127.0.0.1", server.pop3_port), timeout=10) as s:
        assert s.recv(100).startswith(b"+OK")


def survives(server):
    """Still serving others now, and after a restart (nothing the attack left behind
    stops the server from starting)."""
    still_serving(server)
    server.stop()
    server.start()
    still_serving(server)


class Raw:
    """A line-oriented client on a raw socket, optionally from another loopback address."""

    def __init__(self, port, src="127.0.0.1", timeout=30):
        self.sock = socket.socket()
        self.sock.settimeout(timeout)
        self.sock.bind((src, 0))
        self.sock.connect(("127.0.0.1", port))
        self.f = self.sock.makefile("rb")

    def line(self) -> bytes:
        return self.f.readline()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def until(self, tag: bytes) -> list[bytes]:
        out = []
        while True:
            line = self.f.readline()
            if not line:
                return out
            out.append(line)
            if line.startswith(tag + b" "):
                return out

    def close(self):
        self.sock.close()


def rss_peak_kib(server) -> int:
    status = open(f"/proc/{server.proc.pid}/status").read()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def nested_rfc822(n: int) -> bytes:
    return (b"From: a@remote.example\r\nSubject: deep\r\n" + b"Content-Type: message/rfc822\r\n\r\n" * n
            + b"Subject: core\r\n\r\nneedle\r\n")


def nested_multipart(n: int) -> bytes:
    head = b"From: a@remote.example\r\nSubject: multi\r\n"
    parts = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(n))
    tail = b"".join(b"--b%d--\r\n" % i for i in reversed(range(n)))
    return head + parts + b"Content-Type: text/plain\r\n\r\nleaf\r\n" + tail


def test_deeply_nested_mime_does_not_crash_indexer_or_fetch(server):
    assert smtp_send(server, nested_rfc822(50_000)) == {}
    assert smtp_send(server, nested_multipart(3_000)) == {}
    assert smtp_send(server, nested_rfc822(10_000)) == {}
    m = imap(server)
    m.select("INBOX")
    # SEARCH catches the indexer up: it must get through all three.
    typ, data = m.search(None, "SUBJECT", "deep")
    assert typ == "OK" and data[0].split() == [b"1", b"3"], data
    for item in ("BODYSTRUCTURE", "BODY", "ENVELOPE", "BODY.PEEK[1.1.1.1]", "BODY.PEEK[1.1.1.1.HEADER]"):
        typ, data = m.fetch("1:3", f"({item})")
        assert typ == "OK", (item, data)
    typ, data = m.fetch("1", "(BODYSTRUCTURE)")
    assert b'"APPLICATION" "OCTET-STREAM"' in data[0], "past the depth bound, parts are opaque"
    m.logout()
    survives(server)
    assert b"no unprocessable messages" in server.cli("mail", "unprocessable").stdout


def test_a_million_header_fields_cost_no_gigabytes(server):
    base = rss_peak_kib(server)
    raw = b"From: a@remote.example\r\nSubject: fields\r\n" + b"a:\r\n" * 5_000_000 + b"\r\nbody\r\n"
    assert smtp_send(server, raw) == {}
    m = imap(server)
    m.select("INBOX")
    typ, data = m.search(None, "SUBJECT", "fields")
    assert typ == "OK" and data[0] == b"1", data
    for item in ("BODYSTRUCTURE", "ENVELOPE", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"):
        assert m.fetch("1", f"({item})")[0] == "OK"
    m.logout()
    assert rss_peak_kib(server) - base < 300 * 1024, "20 MB of fields, parsed, would be gigabytes"
    # Submission cannot check a header that long: refused.
    with pytest.raises(smtplib.SMTPDataError) as e:
        submit(server, b"From: bob@example.test\r\n" + b"a:\r\n" * 20_000 + b"\r\nx\r\n")
    assert e.value.smtp_code == 554
    survives(server)


def test_thread_with_huge_references_and_hostile_list_patterns(server):
    refs = " ".join(f"<r{i}@x>" for i in range(20_000))
    raw = f"From: a@remote.example\r\nSubject: t\r\nMessage-ID: <me@x>\r\nReferences: {refs}\r\n\r\nx\r\n"
    assert smtp_send(server, raw.encode()) == {}
    m = imap(server, timeout=30)
    m.select("INBOX")
    typ, data = m.uid("THREAD", "REFERENCES", "UTF-8", "ALL")
    assert typ == "OK", data
    name = "a" * 899 + "c"
    assert m.create(name)[0] == "OK"
    t = time.monotonic()
    typ, data = m.list('""', '"*a*a*a*a*a*b"')
    assert typ == "OK" and data == [None], data
    typ, data = m.list('""', '"%s"' % ("*" * 100_000))
    assert typ == "OK" and len(data) > 3, data[:3]
    typ, data = m.list('""', '"%s"' % ("*a" * 20_000 + "*b"))
    assert typ == "OK"
    assert time.monotonic() - t < 20, "pattern matching is not exponential"
    m.logout()
    survives(server)


def test_sessions_of_removed_or_disabled_accounts_end(server):
    server.add_user(f"eve@{DOMAIN}")
    eve = imap(server, f"eve@{DOMAIN}")
    eve.select("INBOX")
    server.cli("user", "remove", f"eve@{DOMAIN}", "--yes")
    server.add_user(f"frank@{DOMAIN}")
    smtp_send(server, b"From: a@remote.example\r\nSubject: for frank only\r\n\r\nsecret\r\n", to=f"frank@{DOMAIN}")
    time.sleep(0.5)
    with pytest.raises((imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError)):
        # The session ends (BYE) instead of reading the next account's mail.
        eve.select("INBOX")
        typ, data = eve.fetch("1", "(BODY.PEEK[])")
        assert b"secret" not in repr(data).encode()
        eve.list()
    # A session waiting in IDLE ends as well, without sending anything.
    server.add_user(f"idler@{DOMAIN}")
    r = Raw(server.imap_port, timeout=10)
    r.line()
    r.send(b'a LOGIN idler@example.test "%s"\r\n' % PASSWORD.encode())
    assert r.until(b"a")[-1].startswith(b"a OK")
    r.send(b"b SELECT INBOX\r\n")
    assert r.until(b"b")[-1].startswith(b"b OK")
    r.send(b"c IDLE\r\n")
    assert r.line().startswith(b"+")
    server.cli("user", "remove", f"idler@{DOMAIN}", "--yes")
    assert r.line().startswith(b"* BYE"), "IDLE session of a removed account ended"
    r.close()
    # Disabled: IMAP, POP3 and submission sessions end too.
    import poplib
    p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    p.user(CAROL)
    p.pass_(PASSWORD)
    c = imap(server, CAROL)
    c.select("INBOX")
    sub = smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30)
    sub.login(CAROL, PASSWORD)
    server.cli("user", "disable", CAROL)
    time.sleep(0.5)
    with pytest.raises((imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError)):
        c.noop()
        c.noop()
    code, _ = sub.docmd("MAIL FROM:<%s>" % CAROL)
    assert code == 421, code
    with pytest.raises((poplib.error_proto, OSError)):
        p.stat()
        p.stat()
    server.cli("user", "enable", CAROL)
    # A new password ends the old sessions as well.
    b = imap(server, BOB)
    server.cli("user", "passwd", BOB, "--password-stdin", input="another long password\n")
    time.sleep(0.5)
    with pytest.raises((imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError)):
        b.noop()
        b.noop()
    server.cli("user", "passwd", BOB, "--password-stdin", input=PASSWORD + "\n")
    survives(server)


def submit(server, raw: bytes, user=BOB, frm=BOB):
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30) as s:
        s.login(user, PASSWORD)
        return s.sendmail(frm, [CAROL], raw)


def test_from_spoofing_and_smuggling_are_refused(server):
    cases = [
        # Two From: fields, someone else's first.
        b"From: carol@example.test\r\nFrom: bob@example.test\r\nSubject: x\r\n\r\nx\r\n",
        # No From: at all.
        b"Subject: anonymous\r\n\r\nx\r\n",
        # A bare CR hiding a From: inside another field.
        b"X-A: a\rFrom: carol@example.test\r\nFrom: bob@example.test\r\n\r\nx\r\n",
        # A second transaction smuggled behind <CR>.<CR><LF>.
        b"From: bob@example.test\r\n\r\nx\r.\r\nMAIL FROM:<carol@example.test>\r\nRCPT TO:<dave@example.test>\r\nDATA\r\nFrom: carol@example.test\r\n\r\nforged\r\n",
    ]
    for raw in cases:
        with pytest.raises(smtplib.SMTPDataError) as e:
            submit(server, raw)
        assert e.value.smtp_code in (553, 554), (raw, e.value)
    assert server.uids(CAROL) == []
    assert server.uids(f"dave@{DOMAIN}") == []
    # An account named bob+boss is not bob's subaddress.
    server.add_user(f"bob+boss@{DOMAIN}")
    with pytest.raises(smtplib.SMTPSenderRefused):
        submit(server, b"From: bob+boss@example.test\r\n\r\nx\r\n", frm=f"bob+boss@{DOMAIN}")
    with pytest.raises(smtplib.SMTPDataError):
        submit(server, b"From: bob+boss@example.test\r\n\r\nx\r\n")
    assert submit(server, b"From: bob+news@example.test\r\n\r\nx\r\n") == {}
    assert submit(server, b"From: Bob <bob@example.test>\r\n\r\nfine\r\n") == {}
    survives(server)


def test_data_framing(server):
    c = Raw(server.port)
    assert c.line().startswith(b"220")
    c.send(b"HELO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n.\r\n")
    lines = [c.line() for _ in range(5)]
    assert lines[-1].startswith(b"250 2.0.0"), lines
    c.send(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n..X\r\n.\r\n")
    lines = [c.line() for _ in range(4)]
    assert lines[-1].startswith(b"250 2.0.0"), lines
    c.send(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nA\r\n.\r\r\nB\r\n.\r\n")
    lines = [c.line() for _ in range(4)]
    assert lines[-1].startswith(b"554 5.6.0"), lines
    c.close()
    assert server.cat(BOB, 2).endswith(b"\r\n.X\r\n"), "the first line is unstuffed too"
    survives(server)


def test_memory_of_strangers_is_bounded(server):
    """200 unauthenticated connections each try to make the server hold the most they can
    (a huge literal, LITERAL+ data, an endless line): peak RSS stays under 300 MiB."""
    base = rss_peak_kib(server)
    conns = []
    for i in range(200):
        # Different source addresses: the per-IP connection limit is not what is tested.
        c = Raw(server.imap_port, src=f"127.0.{4 + i // 100}.{i % 100 + 1}", timeout=30)
        assert c.line().startswith(b"* OK")
        kind = i % 3
        if kind == 0:
            c.send(b"x LOGIN {47185920}\r\n")
            line = c.line()
            assert line.startswith(b"x NO") or line.startswith(b"x BAD"), line
        elif kind == 1:
            c.send(b"x LOGIN {47185920+}\r\n")
        conns.append((kind, c))
    chunk = b"a" * 65536
    for _ in range(64):  # 4 MiB from each connection (530 MiB in all, if it were kept)
        for kind, c in conns:
            if kind:
                try:
                    c.send(chunk)
                except OSError:
                    pass  # closed by the server: the point
    for _, c in conns:
        c.close()
    peak = rss_peak_kib(server)
    assert peak - base < 300 * 1024, (base, peak)
    # SMTP: 20 large unfinished messages are per-session bounded, all sessions together.
    smtps = []
    for i in range(20):
        c = Raw(server.port, src=f"127.0.6.{i + 1}")
        c.line()
        c.send(b"HELO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        for _ in range(4):
            c.line()
        smtps.append(c)
    for _ in range(8):
        for c in smtps:
            try:
                c.send(b"x" * 1_000_000 + b"\r\n")
            except OSError:
                pass
    for c in smtps:
        c.close()
    survives(server)


def test_login_throttle_canonical_and_not_locking_out_the_owner(server):
    # The owner logs in from 127.0.0.1 first: that IP is known for carol.
    imap(server, CAROL).logout()
    spellings = [CAROL + ".", " " + CAROL, CAROL.upper(), CAROL + " "]
    for i in range(24):
        c = Raw(server.imap_port, src=f"127.0.1.{i + 1}")
        c.line()
        name = spellings[i % len(spellings)]
        c.send(b'a LOGIN "%s" "wrong%d"\r\n' % (name.encode(), i))
        assert c.until(b"a")[-1].startswith(b"a NO"), i
        c.close()
    # A stranger with the right password is refused: the account is blocked for strangers.
    c = Raw(server.imap_port, src="127.0.2.1")
    c.line()
    c.send(b'a LOGIN "%s" "%s"\r\n' % (CAROL.encode(), PASSWORD.encode()))
    assert b"UNAVAILABLE" in c.until(b"a")[-1]
    c.close()
    # The owner's IP still gets in.
    imap(server, CAROL).logout()
    survives(server)


def test_parallel_guesses_are_counted_before_they_are_checked(server):
    import threading

    results = []

    def guess(i):
        try:
            c = Raw(server.imap_port, src="127.0.3.1", timeout=60)
            c.line()
            c.send(b'a LOGIN "%s" "guess%d"\r\n' % (f"dave@{DOMAIN}".encode(), i))
            results.append(c.until(b"a")[-1])
            c.close()
        except OSError as e:
            results.append(repr(e).encode())

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    checked = [r for r in results if b"AUTHENTICATIONFAILED" in r or b"a NO [AUTH" in r]
    refused = [r for r in results if b"UNAVAILABLE" in r]
    assert len(checked) <= 20, (len(checked), results[:5])  # max_failures_per_ip
    assert len(refused) >= 20, results[:5]
    survives(server)


def test_slow_peers_hit_whole_command_deadlines(make_server):
    server = make_server(smtp={"idle_timeout": 2}, extra="[imap]\nidle_timeout = 2\n[pop3]\nidle_timeout = 2\n").start()
    for port in (server.port, server.imap_port, server.pop3_port):
        c = Raw(port, timeout=30)
        c.line()
        t = time.monotonic()
        closed = False
        for _ in range(20):  # a byte a second: each read comes well within the timeout
            try:
                c.send(b"N")
                time.sleep(0.5)
                c.sock.settimeout(0.5)
                data = c.sock.recv(1000)
                if data == b"" or b"timeout" in data.lower() or b"BYE" in data or b"421" in data:
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
        assert closed, port
        assert time.monotonic() - t < 8, port
        c.close()
    survives(server)


def test_data_directory_is_private(server):
    data = server.dir / "data"
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    for p in data.iterdir():
        assert stat.S_IMODE(os.stat(p).st_mode) & 0o077 == 0, p


def test_stressed_listener_shortens_deadlines(make_server):
    """With most connection slots taken, a silent client gets 10 s, not idle_timeout
    (Postfix's stress mode), so idle peers cannot hold the last slots."""
    server = make_server(smtp={"max_connections": 5, "idle_timeout": 300}).start()
    held = []
    for i in range(4):
        c = Raw(server.port, src=f"127.0.7.{i + 1}")
        assert c.line().startswith(b"220")
        held.append(c)
    c = Raw(server.port, src="127.0.7.9", timeout=40)
    assert c.line().startswith(b"220")
    t = time.monotonic()
    line = c.line()  # the server closes it
    assert b"421" in line or line == b"", line
    assert time.monotonic() - t < 30
    for h in held:
        h.close()
    c.close()
    survives(server)


def test_full_disk_lets_users_expunge_and_defers_new_mail(tmp_path):
    """On a full disk SMTP answers 4xx (the sender keeps the mail), IMAP STORE and EXPUNGE
    still work (the reserve makes room), and mail flows again once space is back."""
    import subprocess

    from conftest import Yubin

    d = tmp_path / "srv"
    d.mkdir()
    (d / "data").mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(d / "data")]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    y = Yubin(d, smtp={"max_message_size": 25 * 1024 * 1024})
    try:
        y.cli("init", "--domain", DOMAIN)
        y.add_user(BOB)
        y.add_user(CAROL)
        y.start()
        big = b"From: a@remote.example\r\nSubject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 2048
        refused = None
        for _ in range(60):
            try:
                smtp_send(y, big)
            except smtplib.SMTPException as e:
                refused = e
                break
        assert isinstance(refused, smtplib.SMTPDataError) and 400 <= refused.smtp_code < 500, refused
        with open(d / "data" / "filler", "wb") as f:  # every byte left
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        m = imap(y)
        m.select("INBOX")
        assert m.store("1:*", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert m.expunge()[0] == "OK"
        m.logout()
        assert "released the reserve" in y.log_text(), "the expunge needed the reserve"
        os.remove(d / "data" / "filler")
        deadline = time.monotonic() + 40
        while True:  # bodies are given back after their grace period
            try:
                smtp_send(y, b"From: a@remote.example\r\nSubject: again\r\n\r\nsmall\r\n")
                break
            except smtplib.SMTPException:
                assert time.monotonic() < deadline, "mail flows again once space is back"
                time.sleep(1)
        still_serving(y)
    finally:
        y.stop()
        subprocess.run(["umount", "-l", str(d / "data")])
