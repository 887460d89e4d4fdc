"""SCRAM-SHA-256 (RFC 7677) logins on SMTP submission, IMAP and POP3 from an independent
client implementation (Python's `scramp`, from PyPI) driven through smtplib, imaplib and
poplib: the right password logs in and the server's signature verifies; a wrong one fails
like a wrong password; an unknown user cannot be told apart; the server serves on."""

import base64
import imaplib
import poplib
import smtplib
import ssl

import pytest
from scramp import ScramClient

from conftest import DOMAIN, PASSWORD

BOB = f"bob@{DOMAIN}"


def ctx():
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


class Scram:
    """scramp as a challenge/response callable; checks the server-final itself."""

    def __init__(self, user, password):
        self.c = ScramClient(["SCRAM-SHA-256"], user, password)
        self.step = 0
        self.verified = False

    def respond(self, challenge: bytes) -> bytes:
        if self.step == 0:
            self.step = 1
            return self.c.get_client_first().encode()
        if self.step == 1:
            self.step = 2
            self.c.set_server_first(challenge.decode())
            return self.c.get_client_final().encode()
        # Raises when the server's signature does not verify (RFC 5802 §3).
        self.c.set_server_final(challenge.decode())
        self.verified = True
        return b""


def smtp_scram(server, user, password):
    s = smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30)
    s.starttls(context=ctx())
    s.ehlo()
    assert "SCRAM-SHA-256" in s.esmtp_features["auth"].split()
    x = Scram(user, password)

    def obj(challenge=None):
        return x.respond(challenge or b"").decode()

    try:
        code, _ = s.auth("SCRAM-SHA-256", obj, initial_response_ok=True)
        return s, x, code
    except smtplib.SMTPAuthenticationError as e:
        return s, x, e.smtp_code


def test_scram_on_smtp(server):
    s, x, code = smtp_scram(server, BOB, PASSWORD)
    assert code == 235 and x.verified
    # Logged in for real: submission takes mail from bob.
    assert s.sendmail(BOB, [f"carol@{DOMAIN}"], f"From: {BOB}\r\nSubject: scram\r\n\r\nx\r\n".encode()) == {}
    s.quit()
    for user, pw in ((BOB, "wrong password"), (f"nobody@{DOMAIN}", PASSWORD)):
        s, x, code = smtp_scram(server, user, pw)
        assert code == 535 and not x.verified, (user, code)
        s.close()
    # Channel binding asked for where none is offered: a clean protocol error.
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30) as s:
        s.starttls(context=ctx())
        s.ehlo()
        code, msg = s.docmd("AUTH", "SCRAM-SHA-256 " + base64.b64encode(b"p=tls-unique,,n=bob,r=x").decode())
        assert code == 501 and b"channel binding" in msg
        assert s.noop()[0] == 250


def test_scram_on_imap(server):
    m = imaplib.IMAP4("127.0.0.1", server.imap_port)
    m.starttls(ssl_context=ctx())
    assert "AUTH=SCRAM-SHA-256" in m.capabilities
    x = Scram(BOB, PASSWORD)
    typ, _ = m.authenticate("SCRAM-SHA-256", x.respond)
    assert typ == "OK" and x.verified and m.state == "AUTH"
    assert m.select("INBOX")[0] == "OK"
    m.logout()
    m = imaplib.IMAP4("127.0.0.1", server.imap_port)
    m.starttls(ssl_context=ctx())
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.authenticate("SCRAM-SHA-256", Scram(BOB, "wrong password").respond)
    # Still serving, and a plain LOGIN still works on the same connection.
    assert m.login(BOB, PASSWORD)[0] == "OK"
    m.logout()


def pop3_scram(server, user, password):
    p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    p.stls(context=ctx())
    x = Scram(user, password)
    first = base64.b64encode(x.respond(b"")).decode()
    p._putcmd(f"AUTH SCRAM-SHA-256 {first}")
    while True:
        line = p._getline()[0]
        if not line.startswith(b"+ "):
            return p, x, line
        answer = x.respond(base64.b64decode(line[2:]))
        p._putcmd(base64.b64encode(answer).decode())


def test_scram_on_pop3(server):
    assert "SCRAM-SHA-256" in " ".join(poplib.POP3("127.0.0.1", server.pop3_port).capa().get("SASL", []))
    p, x, last = pop3_scram(server, BOB, PASSWORD)
    assert last.startswith(b"+OK") and x.verified, last
    assert p.stat()[0] >= 0
    p.quit()
    p, x, last = pop3_scram(server, BOB, "wrong password")
    assert last.startswith(b"-ERR [AUTH]") and not x.verified, last
    # The session goes on: a password login works after the failure.
    p.user(BOB)
    assert p.pass_(PASSWORD).startswith(b"+OK")
    p.quit()
