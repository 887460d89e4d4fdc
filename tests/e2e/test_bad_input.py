"""Hostile and broken clients: each gets a clear reply or a clean close, others keep being
served, and nothing partial is ever delivered."""

import smtplib
import socket
import ssl
import time

from conftest import DOMAIN

BOB = f"bob@{DOMAIN}"


class Raw:
    """A line-level SMTP client that sends exactly the bytes it is given."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.f = self.sock.makefile("rb")
        assert self.line().startswith(b"220 ")

    def line(self) -> bytes:
        return self.f.readline()

    def reply(self) -> bytes:
        """One whole (possibly multi-line) reply."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"".join(lines)

    def cmd(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        return self.reply()

    def close(self):
        self.sock.close()


def still_serving(server):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
        assert s.noop()[0] == 250


def test_malformed_commands(server):
    c = Raw(server.port)
    assert c.cmd(b"HELLO\r\n").startswith(b"500 5.5.2")
    assert c.cmd(b"MAIL FROM:<a@b.example>\r\n").startswith(b"503 5.5.1")
    assert c.cmd(b"EHLO\r\n").startswith(b"501 5.5.4")
    assert c.cmd(b"EHLO ok.example\r\n").startswith(b"250-")
    assert c.cmd(b"MAIL FROM:a@b.example\r\n").startswith(b"501")
    assert c.cmd(b"MAIL FROM:<a@b.example> FOO=BAR\r\n")[:1] == b"5"
    assert c.cmd(b"MAIL FROM:<a@b.example> SIZE=abc\r\n")[:1] == b"5"
    assert c.cmd(b"RCPT TO:<bob@example.test>\r\n").startswith(b"503")
    assert c.cmd(b"MAIL FROM:<a@b.example>\r\n").startswith(b"250")
    assert c.cmd(b"RCPT TO:<<<>>>\r\n")[:1] == b"5"
    assert c.cmd(b"RCPT TO:<bob@example.test\r\n")[:1] == b"5"
    assert c.cmd(b"DATA\r\n").startswith(b"554 5.5.1")
    assert c.cmd(b"\r\n")[:1] == b"5"
    assert c.cmd(b"NOOP\r\n").startswith(b"250")
    c.close()
    still_serving(server)


def test_nul_bytes_and_invalid_utf8(server):
    c = Raw(server.port)
    assert c.cmd(b"EHLO a\x00b\r\n").startswith(b"500 5.5.2 NUL")
    assert c.cmd(b"EHLO \xff\xfe\xfd\r\n").startswith(b"500 5.5.2 Command is not valid UTF-8")
    assert c.cmd(b"MAIL FROM:<\xc3\x28@remote.example>\r\n").startswith(b"500 5.5.2")
    assert c.cmd(b"NOOP\r\n").startswith(b"250")
    c.close()


def test_one_mib_line(server):
    c = Raw(server.port)
    c.sock.sendall(b"NOOP " + b"A" * (1024 * 1024) + b"\r\n")
    assert c.reply().startswith(b"500 5.5.2 Line too long")
    assert c.cmd(b"NOOP\r\n").startswith(b"250"), "the session survives"
    c.close()
    still_serving(server)


def test_long_lines_inside_data_are_content(server):
    body = b"Subject: long\r\n\r\n" + b"x" * (1024 * 1024) + b"\r\n"
    with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as s:
        assert s.sendmail("a@remote.example", [BOB], body) == {}
    uid = server.uids(BOB)[0]
    assert server.cat(BOB, uid).endswith(body)


def test_client_vanishes_mid_data(server):
    c = Raw(server.port)
    c.cmd(b"EHLO x.example\r\n")
    assert c.cmd(b"MAIL FROM:<a@remote.example>\r\n").startswith(b"250")
    assert c.cmd(b"RCPT TO:<bob@example.test>\r\n").startswith(b"250")
    assert c.cmd(b"DATA\r\n").startswith(b"354")
    c.sock.sendall(b"Subject: half\r\n\r\n" + b"partial line\r\n" * 1000 + b"no end")
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    # BDAT: vanish inside a chunk.
    c = Raw(server.port)
    c.cmd(b"EHLO x.example\r\n")
    c.sock.sendall(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@example.test>\r\nBDAT 100000 LAST\r\n" + b"y" * 500)
    c.close()
    time.sleep(0.3)
    still_serving(server)
    assert server.uids(BOB) == [], "nothing partial is delivered"


def test_bare_lf_refused(server):
    c = Raw(server.port)
    c.cmd(b"EHLO x.example\r\n")
    c.sock.sendall(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    assert c.reply().startswith(b"250") and c.reply().startswith(b"250") and c.reply().startswith(b"354")
    # "\n.\n" must not end the data (SMTP smuggling); the message is refused at the real end.
    assert c.cmd(b"Subject: x\r\n\r\nsmuggle\n.\nMAIL FROM:<evil@x>\r\n.\r\n").startswith(b"554 5.6.0")
    assert c.cmd(b"NOOP\r\n").startswith(b"250")
    c.close()
    assert server.uids(BOB) == []


def test_too_many_errors_closes(server):
    c = Raw(server.port)
    replies = [c.cmd(b"BOGUS\r\n") for _ in range(19)]
    assert all(r.startswith(b"500") for r in replies)
    c.sock.sendall(b"BOGUS\r\n")
    assert c.line().startswith(b"500")
    assert c.line().startswith(b"421 4.7.0")
    assert c.line() == b"", "connection closed after 421"
    c.close()
    still_serving(server)


def test_starttls_injection_ignored(server):
    c = Raw(server.port)
    c.cmd(b"EHLO x.example\r\n")
    # A man in the middle appends a command after STARTTLS (CVE-2011-0411 class).
    assert c.cmd(b"STARTTLS\r\nMAIL FROM:<injected@remote.example>\r\n").startswith(b"220")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(c.sock, server_hostname="mx.example.test")
    f = tls.makefile("rb")
    tls.sendall(b"RCPT TO:<bob@example.test>\r\n")
    assert f.readline().startswith(b"503"), "the injected MAIL was not executed"
    tls.sendall(b"EHLO x.example\r\n")
    lines = []
    while True:
        line = f.readline()
        lines.append(line)
        if line[3:4] == b" ":
            break
    assert not any(b"STARTTLS" in l for l in lines)
    tls.close()


def test_garbage_instead_of_tls_handshake(server):
    c = Raw(server.port)
    c.cmd(b"EHLO x.example\r\n")
    assert c.cmd(b"STARTTLS\r\n").startswith(b"220")
    c.sock.sendall(b"this is not a TLS client hello\r\n" * 10)
    c.sock.settimeout(10)
    try:
        rest = c.sock.recv(1000)
    except (ConnectionResetError, socket.timeout):
        rest = b""
    assert not rest.startswith(b"250")
    c.close()
    still_serving(server)


def test_connection_limit_per_ip(make_server):
    server = make_server(smtp={"max_connections_per_ip": 3}).start()
    held = [Raw(server.port) for _ in range(3)]
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    assert s.makefile("rb").readline().startswith(b"421 4.7.0")
    s.close()
    held.pop().close()
    time.sleep(0.2)
    still_serving(server)
    for h in held:
        h.close()


def test_idle_timeout(make_server):
    server = make_server(smtp={"idle_timeout": 1}).start()
    c = Raw(server.port)
    c.sock.settimeout(10)
    assert c.line().startswith(b"421 4.4.2")
    assert c.line() == b""
    c.close()


def test_too_many_recipients(make_server):
    server = make_server(smtp={"max_recipients": 2}).start()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
        s.ehlo()
        s.mail("a@remote.example")
        assert s.rcpt(BOB)[0] == 250
        assert s.rcpt(f"carol@{DOMAIN}")[0] == 250
        code, msg = s.rcpt(f"dave@{DOMAIN}")
        assert code == 452 and msg.startswith(b"4.5.3")
        assert s.data(b"Subject: two\r\n\r\nx\r\n")[0] == 250
    assert len(server.uids(BOB)) == 1 and server.uids(f"dave@{DOMAIN}") == []
