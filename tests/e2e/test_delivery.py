"""Delivery over SMTP from independent clients (smtplib, swaks), checked byte for byte."""

import os
import smtplib
import ssl
import subprocess

import pytest

from conftest import DOMAIN, split_trace

BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the first-run certificate is self-signed
    return ctx


def smtp(server, tls: bool = False) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.example.org", timeout=60)
    if tls:
        s.starttls(context=tls_context())
    return s


# The four kinds of message the foundation promises, each over plain SMTP and STARTTLS.
over_tls = pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])


def check_proto(m, tls: bool, base: bytes = b"ESMTP"):
    assert m["proto"] == base + (b"S" if tls else b"")
    assert (m["tls"] is not None) == tls
    if tls:
        assert m["tls"].startswith(b"TLSv1.3 with cipher")


def only_message(server, address):
    uids = server.uids(address)
    assert len(uids) == 1, uids
    return server.cat(address, uids[0])


@over_tls
def test_plain_message_stored_byte_for_byte(server, tls):
    data = (
        b"From: Alice <alice@remote.example>\r\n"
        b"To: Bob <bob@example.test>\r\n"
        b"Subject: plain\r\n"
        b"Message-ID: <plain-1@remote.example>\r\n"
        b"\r\n"
        b"Hello Bob.\r\n"
        b".A line that starts with a dot.\r\n"
        b"\r\n"
        b"..two dots\r\n"
    )
    with smtp(server, tls) as s:
        code, _ = s.ehlo()
        assert code == 250
        assert s.has_extn("pipelining") and s.has_extn("8bitmime") and s.has_extn("smtputf8")
        assert s.has_extn("chunking") and s.has_extn("enhancedstatuscodes")
        assert s.has_extn("starttls") != tls
        assert s.esmtp_features["size"] == str(25 * 1024 * 1024)
        assert s.sendmail("alice@remote.example", [BOB], data) == {}
    m, body = split_trace(only_message(server, BOB))
    assert body == data
    assert m["from"] == b"alice@remote.example"
    assert m["helo"] == b"client.example.org"
    assert m["ip"] == b"127.0.0.1"
    check_proto(m, tls)
    assert m["for"] == BOB.encode()


@over_tls
def test_8bit_message(server, tls):
    data = "Subject: 8-bit\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\n".encode() + (
        "Grüße aus Köln, çà et là\r\n".encode("latin-1")
    )
    with smtp(server, tls) as s:
        s.sendmail("alice@remote.example", [BOB], data, mail_options=["BODY=8BITMIME"])
    m, body = split_trace(only_message(server, BOB))
    assert body == data
    check_proto(m, tls)


@over_tls
def test_utf8_addresses_and_headers_with_smtputf8(server, tls):
    server.add_user(f"用户@{DOMAIN}")
    data = "From: 发件人 <发件人@remote.example>\r\nTo: 用户@example.test\r\nSubject: 你好, Grüße\r\n\r\nこんにちは\r\n".encode()
    with smtp(server, tls) as s:
        s.ehlo()
        refused = s.sendmail(
            "发件人@remote.example", [f"用户@{DOMAIN}"], data, mail_options=["SMTPUTF8", "BODY=8BITMIME"]
        )
        assert refused == {}
        # Without SMTPUTF8 a UTF-8 address is refused (RFC 6531 §3.4).
        code, msg = s.mail("发件人@remote.example".encode().decode("latin-1"))
        assert code == 553 and b"5.6.7" in msg
    m, body = split_trace(only_message(server, f"用户@{DOMAIN}"))
    assert body == data
    check_proto(m, tls, b"UTF8SMTP")
    assert m["from"] == "发件人@remote.example".encode()


@over_tls
def test_20_mib_message(server, tls):
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.\r\n"
    body = b"Subject: big\r\n\r\n" + line * (20 * 1024 * 1024 // len(line))
    assert len(body) >= 20 * 1024 * 1024 - len(line)
    with smtp(server, tls) as s:
        assert s.sendmail("alice@remote.example", [BOB], body) == {}
    m, stored = split_trace(only_message(server, BOB))
    assert stored == body
    check_proto(m, tls)


def test_oversize_refused_and_nothing_stored(server):
    with smtp(server) as s:
        s.ehlo()
        code, msg = s.mail("alice@remote.example", ["SIZE=%d" % (26 * 1024 * 1024)])
        assert code == 552 and b"5.3.4" in msg
        s.rset()
        # A client that lies about SIZE (or sends none) is stopped at the end of DATA.
        s.mail("alice@remote.example")
        s.rcpt(BOB)
        code, msg = s.data(b"Subject: huge\r\n\r\n" + (b"x" * 998 + b"\r\n") * (26 * 1024))
        assert code == 552 and b"5.3.4" in msg
        assert s.noop()[0] == 250
    assert server.uids(BOB) == []


def swaks(server, *args, data: bytes | None = None, tmp_path=None):
    cmd = ["swaks", "--server", "127.0.0.1", "--port", str(server.port), "--helo", "swaks.example.org",
           "--from", "alice@remote.example", *args]
    return subprocess.run(cmd, capture_output=True, timeout=120)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
def test_swaks(server, tmp_path, tls):
    data = b"From: alice@remote.example\r\nTo: bob@example.test\r\nSubject: via swaks\r\n\r\nbody line\r\n"
    f = tmp_path / "msg.eml"
    f.write_bytes(data[:-2])  # swaks ends the data with CRLF . CRLF itself
    args = ["--to", BOB, "--data", str(f)]
    if tls:
        args.append("--tls")
    r = swaks(server, *args)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    out = r.stdout.decode()
    assert "250 2.0.0 Ok: stored as" in out
    m, body = split_trace(only_message(server, BOB))
    assert body == data
    assert m["proto"] == (b"ESMTPS" if tls else b"ESMTP")


def test_swaks_pipelining_and_chunking(server, tmp_path):
    data = b"Subject: chunks\r\n\r\n" + b"payload line\r\n" * 1000
    f = tmp_path / "msg.eml"
    f.write_bytes(data[:-2])
    r = swaks(server, "--to", f"{BOB},{CAROL}", "--pipeline", "--data", str(f))
    assert r.returncode == 0, r.stdout.decode()
    for who in (BOB, CAROL):
        m, body = split_trace(only_message(server, who))
        assert body == data
        assert m["for"] is None  # several recipients: none named in Received


def test_bdat_chunks(server):
    import socket

    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220 ")
        sock.sendall(b"EHLO raw.example.org\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        part1 = b"Subject: bdat\r\n\r\n.not stuffed\r\n"
        part2 = b"last part\r\n"
        sock.sendall(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<%s>\r\nBDAT %d\r\n%sBDAT %d LAST\r\n%s"
                     % (BOB.encode(), len(part1), part1, len(part2), part2))
        replies = [f.readline() for _ in range(4)]
        assert [r[:3] for r in replies] == [b"250"] * 4, replies
        assert replies[2].startswith(b"250 2.0.0 %d octets" % len(part1))
        sock.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"221")
    _, body = split_trace(only_message(server, BOB))
    assert body == part1 + part2


def test_recipient_verdicts(server):
    server.cli("user", "disable", f"dave@{DOMAIN}")
    with smtp(server) as s:
        s.ehlo()
        s.mail("alice@remote.example")
        code, msg = s.rcpt(f"nobody@{DOMAIN}")
        assert (code, msg[:5]) == (550, b"5.1.1")
        code, msg = s.rcpt("someone@elsewhere.example")
        assert (code, msg[:5]) == (550, b"5.7.1"), "never an open relay"
        code, msg = s.rcpt(f"dave@{DOMAIN}")
        assert (code, msg[:5]) == (550, b"5.2.1")
        code, msg = s.rcpt("postmaster")
        assert code == 250, "RFC 5321 §4.1.1.3: bare postmaster is accepted"
        code, _ = s.rcpt(f"Bob+news@{DOMAIN.upper()}")
        assert code == 250
        code, _ = s.data(b"Subject: verdicts\r\n\r\nx\r\n")
        assert code == 250
    assert len(server.uids(BOB)) == 1
    assert len(server.uids(f"admin@{DOMAIN}")) == 1
    # Disabled: nothing stored was deleted, and enabling restores delivery.
    server.cli("user", "enable", f"dave@{DOMAIN}")
    with smtp(server) as s:
        assert s.sendmail("alice@remote.example", [f"dave@{DOMAIN}"], b"Subject: back\r\n\r\nx\r\n") == {}
    assert len(server.uids(f"dave@{DOMAIN}")) == 1


def test_aliases_catch_all_and_duplicates(server):
    server.cli("alias", "add", f"team@{DOMAIN}", BOB, CAROL)
    data = b"Subject: team\r\n\r\nhello team\r\n"
    with smtp(server) as s:
        # bob directly, via the alias, and via a subaddress: one copy.
        assert s.sendmail("alice@remote.example", [BOB, f"team@{DOMAIN}", f"bob+x@{DOMAIN}"], data) == {}
    assert len(server.uids(BOB)) == 1
    assert len(server.uids(CAROL)) == 1
    with smtp(server) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("alice@remote.example", [f"random@{DOMAIN}"], data)
    server.cli("alias", "add", f"*@{DOMAIN}", CAROL)
    with smtp(server) as s:
        assert s.sendmail("alice@remote.example", [f"random@{DOMAIN}"], data) == {}
    assert len(server.uids(CAROL)) == 2
    out = server.cli("alias", "list").stdout.decode()
    assert f"team@{DOMAIN}\t{BOB}, {CAROL}" in out and f"*@{DOMAIN}\t{CAROL}" in out


def test_management_while_running(server):
    """Domains and users added, changed and removed by the CLI take effect at once."""
    with smtp(server) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("a@remote.example", ["x@new.example"], b"Subject: a\r\n\r\nx\r\n")
    server.cli("domain", "add", "New.Example")
    server.add_user("x@new.example")
    with smtp(server) as s:
        assert s.sendmail("a@remote.example", ["x@new.example"], b"Subject: a\r\n\r\nx\r\n") == {}
    assert "new.example\t1 account(s)" in server.cli("domain", "list").stdout.decode()
    r = server.cli("domain", "remove", "new.example", check=False)
    assert r.returncode == 1 and b"--force" in r.stderr
    r = server.cli("user", "passwd", "x@new.example", "--password-stdin", input="other\n", check=False)
    assert r.returncode == 1 and b"too short" in r.stderr, "weak passwords are refused"
    for weak in ("password123", "1234567890", "x" * 12):
        r = server.cli("user", "passwd", "x@new.example", "--password-stdin", input=weak + "\n", check=False)
        assert r.returncode == 1, weak
    server.cli("user", "passwd", "x@new.example", "--password-stdin", input="other long passphrase\n")
    r = server.cli("user", "remove", "x@new.example", check=False)
    assert r.returncode == 1 and b"--yes" in r.stderr, "removal asks first"
    assert "x@new.example" in server.cli("user", "list").stdout.decode()
    server.cli("user", "remove", "x@new.example", "--yes")
    server.cli("domain", "remove", "new.example")
    with smtp(server) as s:
        code, msg = s.ehlo()
        s.mail("a@remote.example")
        assert s.rcpt("x@new.example")[0] == 550
    users = server.cli("user", "list").stdout.decode()
    assert f"admin@{DOMAIN}\tadmin" in users and "x@new.example" not in users
    r = server.cli("user", "add", "y@nowhere.example", "--password-stdin", input="a long passphrase\n", check=False)
    assert r.returncode == 1 and b"yubin domain add nowhere.example" in r.stderr
    r = server.cli("user", "add", "z@example.test", check=False)
    assert r.returncode == 1 and b"--password-stdin" in r.stderr


def test_concurrent_clients(server):
    from concurrent.futures import ThreadPoolExecutor

    def send(i):
        with smtp(server) as s:
            return s.sendmail("a@remote.example", [BOB, CAROL], b"Subject: n%d\r\n\r\nbody %d\r\n" % (i, i))

    with ThreadPoolExecutor(16) as ex:
        assert all(r == {} for r in ex.map(send, range(200)))
    uids = server.uids(BOB)
    assert uids == list(range(1, 201))
    subjects = sorted(split_trace(server.cat(CAROL, u))[1].split(b"\r\n")[0] for u in server.uids(CAROL))
    assert subjects == sorted(b"Subject: n%d" % i for i in range(200))
