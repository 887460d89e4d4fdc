"""Sending as a user: submission on 587 (STARTTLS) and 465 (implicit TLS) with SMTP AUTH,
sender identity, abuse control, TLS versions on every port, and certificate reload."""

import imaplib
import poplib
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from conftest import DOMAIN, PASSWORD

BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"


def ctx():
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


def submit(server) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30)
    s.starttls(context=ctx())
    s.login(BOB, PASSWORD)
    return s


def test_submission_starttls_and_465(server):
    msg = b"From: Bob <bob@example.test>\r\nTo: carol@example.test\r\nSubject: from bob\r\n\r\nhi carol\r\n"
    with submit(server) as s:
        assert s.sendmail(BOB, [CAROL], msg) == {}
    stored = server.cat(CAROL, server.uids(CAROL)[0])
    assert b"with ESMTPSA" in stored
    # RFC 6409 §8: Date and Message-ID were missing, so the server added them.
    assert re.search(rb"\r\nDate: \w{3}, ", stored) and re.search(rb"\r\nMessage-ID: <[0-9A-F]+@mx\.example\.test>", stored)
    # A copy is in the sender's Sent folder, \Seen, without the trace headers.
    sent = server.cat(BOB, server.uids(BOB, "Sent")[0], "Sent")
    assert sent.endswith(msg) and not sent.startswith(b"Return-Path")
    assert "\\Seen" in server.cli("mail", "list", BOB, "--mailbox", "Sent").stdout.decode()
    with smtplib.SMTP_SSL("127.0.0.1", server.submissions_port, context=ctx(), timeout=30) as s:
        assert s.sock.version() in ("TLSv1.3", "TLSv1.2")
        s.login(BOB, PASSWORD)
        assert s.sendmail(f"bob+news@{DOMAIN}", [CAROL], b"From: bob+news@example.test\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\nSubject: 2\r\n\r\nx\r\n") == {}
    assert len(server.uids(CAROL)) == 2


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_auth(server, tmp_path, mech):
    base = ["swaks", "--server", "127.0.0.1", "--from", BOB, "--to", CAROL, "--auth", mech,
            "--auth-user", BOB, "--auth-password", PASSWORD, "--header", "From: bob@example.test"]
    r = subprocess.run(base + ["--port", str(server.submission_port), "--tls"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout.decode()
    assert b"235 2.7.0 Authentication successful" in r.stdout
    r = subprocess.run(base + ["--port", str(server.submissions_port), "--tlsc"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout.decode()
    assert len(server.uids(CAROL)) == 2


def test_submission_refusals(make_server):
    # No loopback exemption here: this is how any remote client is treated.
    server = make_server(extra="[auth]\ntrust_loopback = false\nmax_failures_per_ip = 5\n").start()
    with smtplib.SMTP("127.0.0.1", server.submission_port) as s:
        s.ehlo()
        assert not s.has_extn("auth"), "AUTH is not offered before TLS"
        code, msg = s.docmd("AUTH", "PLAIN AGJvYkBleGFtcGxlLnRlc3QAeA==")
        assert (code, msg[:6]) == (538, b"5.7.11")
        code, msg = s.mail(BOB)
        assert (code, msg[:5]) == (530, b"5.7.0"), "no relaying or sending without AUTH on 587"
    with smtplib.SMTP("127.0.0.1", server.port) as s:
        s.ehlo()
        s.mail("x@remote.example")
        assert s.rcpt("someone@elsewhere.example")[0] == 550, "never a relay on 25"
    with smtplib.SMTP("127.0.0.1", server.submission_port) as s:
        s.starttls(context=ctx())
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login(BOB, "wrong")
        assert e.value.smtp_code == 535
    server.cli("user", "disable", f"dave@{DOMAIN}")
    with smtplib.SMTP("127.0.0.1", server.submission_port) as s:
        s.starttls(context=ctx())
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(f"dave@{DOMAIN}", PASSWORD)
    with submit(server) as s:
        # Envelope sender and From: must be bob's.
        code, msg = s.mail("boss@example.test")
        assert (code, msg[:5]) == (553, b"5.7.1")
        s.rset()
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail(BOB, [CAROL], b"From: The Boss <boss@example.test>\r\nSubject: pay\r\n\r\nx\r\n")
        assert e.value.smtp_code == 553
        # An authenticated user may address other domains (the outbound queue takes them).
        s.rset()
        s.mail(BOB)
        code, msg = s.rcpt("friend@elsewhere.example")
        assert (code, msg[:5]) == (250, b"2.1.5")
    assert server.uids(CAROL) == []


def test_brute_force_is_throttled_but_others_get_in(make_server):
    server = make_server(extra="[auth]\nmax_failures_per_ip = 5\nmax_failures_per_account = 8\n").start()
    codes = []
    start = time.monotonic()
    for _ in range(50):
        with smtplib.SMTP("127.0.0.1", server.submission_port, source_address=("127.0.0.1", 0)) as s:
            s.starttls(context=ctx())
            s.ehlo()
            s.user, s.password = CAROL, "guess"
            try:
                s.auth("PLAIN", s.auth_plain)  # one mechanism per try (login() tries several)
                codes.append(235)
            except smtplib.SMTPAuthenticationError as e:
                codes.append(e.smtp_code)
    assert 235 not in codes
    assert codes[:5] == [535] * 5 and set(codes[5:]) == {454}, codes
    assert time.monotonic() - start > 1.0, "failures are answered more and more slowly"
    # The right password from another address still works, over every protocol.
    with smtplib.SMTP("127.0.0.1", server.submission_port, source_address=("127.0.0.2", 0)) as s:
        s.starttls(context=ctx())
        s.login(BOB, PASSWORD)
    m = imaplib.IMAP4("127.0.0.1", server.imap_port)
    # IMAP and POP3 from the blocked address get their temporary-failure codes.
    with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
        m.login(BOB, PASSWORD)
    p = poplib.POP3("127.0.0.1", server.pop3_port)
    p.user(BOB)
    with pytest.raises(poplib.error_proto, match=r"SYS/TEMP"):
        p.pass_(PASSWORD)
    assert "login refused: throttled" in server.log_text()


def tls_probe(port: int, flag: str, starttls: str | None) -> str:
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", flag, "-brief"]
    if starttls:
        args += ["-starttls", starttls]
    if flag in ("-tls1", "-tls1_1"):
        args += ["-cipher", "DEFAULT@SECLEVEL=0"]
    r = subprocess.run(args, input=b"", capture_output=True, timeout=30)
    return (r.stdout + r.stderr).decode(errors="replace")


def test_tls_versions_on_every_port(server):
    ports = [
        (server.port, "smtp"), (server.submission_port, "smtp"), (server.submissions_port, None),
        (server.imap_port, "imap"), (server.imaps_port, None), (server.pop3_port, "pop3"),
        (server.pop3s_port, None),
    ]
    for port, starttls in ports:
        out = tls_probe(port, "-tls1_3", starttls)
        assert "Protocol version: TLSv1.3" in out, (port, out)
        for old in ("-tls1", "-tls1_1"):
            out = tls_probe(port, old, starttls)
            assert "CONNECTION ESTABLISHED" not in out, (port, old, out)


def test_certificate_reload_keeps_open_connections(server, tmp_path):
    def served_cert(port):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with ctx().wrap_socket(raw) as t:
                return t.getpeercert(binary_form=True)

    before = served_cert(server.imaps_port)
    # A connection opened before the swap.
    old = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=ctx())
    old.login(BOB, PASSWORD)
    tls_dir = server.dir / "data" / "tls"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=renewed.example.test", "-days", "2", "-keyout", str(tls_dir / "key.pem"),
                    "-out", str(tls_dir / "cert.pem")], check=True, capture_output=True)
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while served_cert(server.imaps_port) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    after = served_cert(server.imaps_port)
    assert after != before and after == ssl.PEM_cert_to_DER_cert((tls_dir / "cert.pem").read_text())
    # The old connection goes on.
    assert old.select("INBOX")[0] == "OK"
    old.logout()
