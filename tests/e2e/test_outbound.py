"""The outbound queue between two yubin instances on their own loopback addresses, found
through MX records served by a DNS server the test starts (dnsmasq): delivery, a refusal
that bounces back as an RFC 3464 report, and a server that is down and comes back."""

import email
import re
import smtplib
import ssl
import subprocess
import time

import pytest

from conftest import PASSWORD, free_port, wait_port

A_IP, B_IP, DNS_IP = "127.0.0.2", "127.0.0.3", "127.0.0.1"
SLOW_IP = "127.0.0.4"


@pytest.fixture
def dns(tmp_path):
    port = free_port()
    proc = subprocess.Popen([
        "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
        f"--listen-address={DNS_IP}", "--bind-interfaces", f"--port={port}",
        "--mx-host=a.test,mx.a.test,10", f"--host-record=mx.a.test,{A_IP}",
        "--mx-host=b.test,mx.b.test,10", f"--host-record=mx.b.test,{B_IP}",
        "--mx-host=nomail.test,.,0",
        "--mx-host=slow.test,mx.slow.test,10", f"--host-record=mx.slow.test,{SLOW_IP}",
        "--mx-host=v6.test,mx.v6.test,10", "--host-record=mx.v6.test,::1",
    ], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)
    assert proc.poll() is None, proc.stderr.read().decode()
    yield port
    proc.terminate()
    proc.wait()


def ctx():
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


def wait_for(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_two_instances(make_server, dns):
    port = free_port()  # the same SMTP port on both addresses, as on the internet
    queue = f"[queue]\ndns_servers = [\"{DNS_IP}:{dns}\"]\nremote_port = {port}\nretry_seconds = [1]\n"
    a = make_server(domain="a.test", ip=A_IP, port=port, hostname="mx.a.test", extra=queue)
    b = make_server(domain="b.test", ip=B_IP, port=port, hostname="mx.b.test", extra=queue)
    a.start()
    b.start()

    def send(to, subject):
        with smtplib.SMTP(A_IP, a.submission_port, timeout=30) as s:
            s.starttls(context=ctx())
            s.login("bob@a.test", PASSWORD)
            return s.sendmail("bob@a.test", to, f"From: bob@a.test\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\n\r\nhello from a\r\n".encode())

    # 1. Delivered through the MX record, read on B.
    assert send(["carol@b.test"], "across") == {}
    assert wait_for(lambda: len(b.uids("carol@b.test")) == 1), a.log_text()[-2000:]
    got = b.cat("carol@b.test", 1)
    assert b"Subject: across" in got and b"by mx.a.test (yubin) with ESMTPSA" in got
    # Carol reads it over IMAP on B.
    import imaplib
    m = imaplib.IMAP4(B_IP, b.imap_port)
    m.login("carol@b.test", PASSWORD)
    m.select("INBOX")
    typ, data = m.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT FROM)])")
    assert b"Subject: across" in data[0][1] and b"From: bob@a.test" in data[0][1]
    m.logout()
    assert got.count(b"Return-Path:") == 1, "the relay's Return-Path was not passed on"
    assert wait_for(lambda: "queue is empty" in a.cli("queue", "list").stdout.decode())

    # 2. B refuses an unknown user: A's user gets a delivery status notification.
    assert send(["nobody@b.test"], "to nobody") == {}
    assert wait_for(lambda: len(a.uids("bob@a.test")) == 1), a.log_text()[-2000:]
    dsn = email.message_from_bytes(a.cat("bob@a.test", 1))
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    status = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"][0]
    text = status.as_string()
    assert "Final-Recipient: rfc822; nobody@b.test" in text and "Status: 5.1.1" in text
    assert "Remote-MTA: dns; mx.b.test" in text
    assert "Mail Delivery System" in dsn["From"] and "Return-Path: <>" in a.cat("bob@a.test", 1).decode()

    # 3. Null MX: bounced at once without a connection.
    assert send(["x@nomail.test"], "nowhere") == {}
    assert wait_for(lambda: len(a.uids("bob@a.test")) == 2)
    assert b"5.1.10" in a.cat("bob@a.test", 2)

    # 4. B is down: A keeps it queued and delivers once B is back.
    b.stop()
    assert send(["dave@b.test"], "while down") == {}
    assert wait_for(lambda: "connection refused" in a.cli("queue", "list").stdout.decode().lower() or
                    "refused" in a.cli("queue", "list").stdout.decode().lower(), timeout=15), a.cli("queue", "list").stdout
    b.start()
    assert wait_for(lambda: len(b.uids("dave@b.test")) == 1, timeout=30), a.cli("queue", "list").stdout
    assert wait_for(lambda: "queue is empty" in a.cli("queue", "list").stdout.decode())


def test_temporary_refusal_retry_and_kill_9_with_a_full_queue(make_server, dns):
    port = free_port()
    queue = f"[queue]\ndns_servers = [\"{DNS_IP}:{dns}\"]\nremote_port = {port}\nretry_seconds = [1]\n"
    a = make_server(domain="a.test", ip=A_IP, port=port, hostname="mx.a.test", extra=queue)
    b = make_server(domain="b.test", ip=B_IP, port=port, hostname="mx.b.test", extra=queue)
    a.start()
    b.start()
    # B answers 452 4.2.2 (mailbox full) for a while: A must retry, then deliver.
    with smtplib.SMTP(B_IP, b.port) as s:
        s.sendmail("x@elsewhere.test", ["carol@b.test"], b"Subject: fill\r\n\r\nfill the quota\r\n")
    b.cli("user", "quota", "carol@b.test", "1")

    def send(to, subject):
        with smtplib.SMTP(A_IP, a.submission_port, timeout=30) as s:
            s.starttls(context=ctx())
            s.login("bob@a.test", PASSWORD)
            return s.sendmail("bob@a.test", to, f"From: bob@a.test\r\nSubject: {subject}\r\n\r\nx\r\n".encode())

    assert send(["carol@b.test"], "retry me") == {}
    assert wait_for(lambda: "452" in a.cli("queue", "list").stdout.decode()), a.cli("queue", "list").stdout
    assert len(b.uids("carol@b.test")) == 1
    b.cli("user", "quota", "carol@b.test", "none")
    assert wait_for(lambda: len(b.uids("carol@b.test")) == 2, timeout=30), a.cli("queue", "list").stdout
    assert b"Subject: retry me" in b.cat("carol@b.test", 2)

    # A full queue survives kill -9: B down, ten messages queued, A killed and restarted.
    b.stop()
    for i in range(10):
        assert send(["dave@b.test"], f"queued {i}") == {}
    assert wait_for(lambda: a.cli("queue", "list").stdout.decode().count("dave@b.test") == 10)
    a.kill9()
    a.start()
    b.start()
    assert wait_for(lambda: len(b.uids("dave@b.test")) == 10, timeout=40), a.cli("queue", "list").stdout
    subjects = sorted(b.cat("dave@b.test", u).split(b"Subject: ")[1].split(b"\r\n")[0] for u in b.uids("dave@b.test"))
    assert subjects == sorted(b"queued %d" % i for i in range(10)), "each exactly once"
    # One connection carried them (a retry may add one more if B was slow to listen).
    sessions = set(re.findall(r'proto="smtp" session=([0-9A-F]+) peer=[0-9.]+:\d+\}.*accepted.*rcpts="dave@b\.test"',
                              b.log_text()))
    assert 1 <= len(sessions) <= 2, sessions
    assert wait_for(lambda: "queue is empty" in a.cli("queue", "list").stdout.decode())


def test_dkim_signature_verified_independently(make_server, dns):
    import dkim  # dkimpy, an independent DKIM implementation

    port = free_port()
    queue = f"[queue]\ndns_servers = [\"{DNS_IP}:{dns}\"]\nremote_port = {port}\nretry_seconds = [1]\n"
    a = make_server(domain="a.test", ip=A_IP, port=port, hostname="mx.a.test", extra=queue)
    b = make_server(domain="b.test", ip=B_IP, port=port, hostname="mx.b.test", extra=queue)
    records = a.cli("domain", "dkim", "a.test").stdout.decode()
    txt = re.search(r'^yubin\._domainkey\.a\.test\. IN TXT "(v=DKIM1; k=rsa; p=[A-Za-z0-9+/=]+)"$', records, re.M)
    assert txt, records
    assert 'a.test. IN TXT "v=spf1 mx' in records and "_dmarc.a.test. IN TXT" in records
    assert a.cli("domain", "dkim", "a.test").stdout.decode() == records, "the key is kept"
    a.start()
    b.start()
    with smtplib.SMTP(A_IP, a.submission_port, timeout=30) as s:
        s.starttls(context=ctx())
        s.login("bob@a.test", PASSWORD)
        s.sendmail("bob@a.test", ["carol@b.test"],
                   b"From: Bob <bob@a.test>\r\nTo: carol@b.test\r\nSubject: signed\r\n\r\nsigned body\r\n")
    assert wait_for(lambda: len(b.uids("carol@b.test")) == 1), a.log_text()[-2000:]
    got = b.cat("carol@b.test", 1)
    assert b"DKIM-Signature: " in got

    def dnsfunc(name, timeout=5):
        assert name in (b"yubin._domainkey.a.test.", "yubin._domainkey.a.test."), name
        return txt.group(1).encode()

    assert dkim.verify(got, dnsfunc=dnsfunc), "dkimpy verifies the signature"
    assert not dkim.verify(got.replace(b"signed body", b"forged body"), dnsfunc=dnsfunc)


def test_delay_warning_once_then_delivery(make_server, dns):
    port = free_port()
    queue = (f"[queue]\ndns_servers = [\"{DNS_IP}:{dns}\"]\nremote_port = {port}\nretry_seconds = [1]\n"
             "delay_warning_seconds = 1\n")
    a = make_server(domain="a.test", ip=A_IP, port=port, hostname="mx.a.test", extra=queue)
    b = make_server(domain="b.test", ip=B_IP, port=port, hostname="mx.b.test", extra=queue)
    a.start()  # B is not running
    with smtplib.SMTP(A_IP, a.submission_port, timeout=30) as s:
        s.starttls(context=ctx())
        s.login("bob@a.test", PASSWORD)
        s.sendmail("bob@a.test", ["carol@b.test"], b"From: bob@a.test\r\nSubject: slow\r\n\r\nx\r\n")
    assert wait_for(lambda: len(a.uids("bob@a.test")) == 1, timeout=20), a.cli("queue", "list").stdout
    warning = a.cat("bob@a.test", 1)
    assert b"Subject: Delayed Mail" in warning and b"Action: delayed" in warning
    time.sleep(3)  # several more failed attempts...
    assert len(a.uids("bob@a.test")) == 1, "...but only one warning"
    b.start()
    assert wait_for(lambda: len(b.uids("carol@b.test")) == 1, timeout=30)
    assert len(a.uids("bob@a.test")) == 1, "no bounce after all"


def ipv6_loopback() -> bool:
    import socket
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_ipv6_delivery(make_server, dns):
    """An MX with only an IPv6 address (::1): A's queue reaches B over IPv6."""
    port = free_port()
    queue = f"[queue]\ndns_servers = [\"{DNS_IP}:{dns}\"]\nremote_port = {port}\nretry_seconds = [1]\n"
    a = make_server(domain="a.test", ip=A_IP, port=port, hostname="mx.a.test", extra=queue)
    b = make_server(domain="v6.test", ip="::1", port=port, hostname="mx.v6.test", extra=queue)
    a.start()
    b.start()
    with smtplib.SMTP(A_IP, a.submission_port, timeout=30) as s:
        s.starttls(context=ctx())
        s.login("bob@a.test", PASSWORD)
        assert s.sendmail("bob@a.test", ["carol@v6.test"], b"From: bob@a.test\r\nSubject: six\r\n\r\nx\r\n") == {}
    assert wait_for(lambda: len(b.uids("carol@v6.test")) == 1), a.cli("queue", "list").stdout
    assert b"([::1])" in b.cat("carol@v6.test", 1), "received over IPv6"


def test_hostile_remote_server(make_server, dns):
    """A remote MX that answers with malformed replies (non-ASCII in the code, a 10 MB
    line, bare LF, mixed multi-line codes, an early close): each is an error for that
    attempt, the queue keeps running and retries, and the message is delivered once the
    server behaves."""
    import socket
    import threading

    port = free_port()
    queue = f"[queue]\ndns_servers = [\"{DNS_IP}:{dns}\"]\nremote_port = {port}\nretry_seconds = [1]\n"
    a = make_server(domain="a.test", ip=A_IP, port=port, hostname="mx.a.test", extra=queue)
    a.start()
    scenarios = [
        b"250\xc3\xa9 hello\r\n",                      # non-ASCII where the code ends
        b"220 " + b"x" * (10 << 20) + b"\r\n",         # a 10 MB line
        b"220 mx.b.test ready\n",                      # bare LF
        b"220-mx.b.test\r\n554 no\r\n",                # mixed multi-line codes
        b"220-mx.b.test",                              # closed mid-reply
    ]
    received, attempts = [], []
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((B_IP, port))
    srv.listen(16)

    def good(conn):
        f = conn.makefile("rwb")
        f.write(b"220 mx.b.test ESMTP\r\n"); f.flush()
        data = None
        for line in f:
            cmd = line[:4].upper()
            if cmd == b"EHLO":
                f.write(b"250-mx.b.test\r\n250 8BITMIME\r\n")
            elif cmd == b"DATA":
                f.write(b"354 go\r\n"); f.flush()
                data = b""
                for l in f:
                    if l == b".\r\n":
                        break
                    data += l
                received.append(data)
                f.write(b"250 2.0.0 ok\r\n")
            elif cmd == b"QUIT":
                f.write(b"221 bye\r\n"); f.flush()
                break
            else:
                f.write(b"250 ok\r\n")
            f.flush()

    def serve():
        while len(received) == 0:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            n = len(attempts)
            attempts.append(n)
            try:
                if n < len(scenarios):
                    conn.sendall(scenarios[n])
                    time.sleep(0.2)
                else:
                    good(conn)
            except OSError:
                pass
            finally:
                conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with smtplib.SMTP(A_IP, a.submission_port, timeout=30) as s:
        s.starttls(context=ctx())
        s.login("bob@a.test", PASSWORD)
        s.sendmail("bob@a.test", ["carol@b.test"], b"From: bob@a.test\r\nSubject: through\r\n\r\nx\r\n")
    assert wait_for(lambda: received, timeout=90), (attempts, a.cli("queue", "list").stdout)
    srv.close()
    assert len(attempts) > len(scenarios), attempts
    assert b"Subject: through" in received[0]
    # The server survived each of them and still serves.
    assert wait_for(lambda: "queue is empty" in a.cli("queue", "list").stdout.decode())
    log = a.log_text()
    assert "panicked" not in log, log[-2000:]
    for why in ("three-digit code", "longer than", "not ended by CRLF", "different codes", "connection closed"):
        assert why in log, why
    with smtplib.SMTP(A_IP, a.port, timeout=10) as s:
        assert s.noop()[0] == 250


def test_a_slow_domain_does_not_hold_up_the_others(make_server, dns):
    """One destination that accepts the connection and then says nothing: mail for another
    domain, queued after it, is delivered meanwhile (domains are scheduled on their own)."""
    import socket

    port = free_port()
    queue = f"[queue]\ndns_servers = [\"{DNS_IP}:{dns}\"]\nremote_port = {port}\nretry_seconds = [1]\n"
    a = make_server(domain="a.test", ip=A_IP, port=port, hostname="mx.a.test", extra=queue)
    b = make_server(domain="b.test", ip=B_IP, port=port, hostname="mx.b.test", extra=queue)
    a.start()
    b.start()
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind((SLOW_IP, port))
    silent.listen(16)  # accepts (the kernel does), never greets

    def send(to, subject):
        with smtplib.SMTP(A_IP, a.submission_port, timeout=30) as s:
            s.starttls(context=ctx())
            s.login("bob@a.test", PASSWORD)
            s.sendmail("bob@a.test", [to], f"From: bob@a.test\r\nSubject: {subject}\r\n\r\nx\r\n".encode())

    send("x@slow.test", "to the slow one")
    time.sleep(1)  # the slow domain's attempt is under way
    send("carol@b.test", "not held up")
    assert wait_for(lambda: len(b.uids("carol@b.test")) == 1, timeout=15), a.cli("queue", "list").stdout
    assert "x@slow.test" in a.cli("queue", "list").stdout.decode()
    silent.close()
