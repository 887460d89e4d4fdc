"""POP3 from independent clients: poplib, fetchmail (keep and delete), getmail6, curl;
shared with IMAP (a POP3 deletion reaches a live IMAP session); hostile input."""

import imaplib
import poplib
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from conftest import DOMAIN, PASSWORD

BOB = f"bob@{DOMAIN}"


def deliver(server, subject, body="hello", to=BOB):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
        s.sendmail("alice@remote.example", [to],
                   f"From: alice@remote.example\r\nSubject: {subject}\r\nMessage-ID: <{subject}@x>\r\n\r\n{body}\r\n".encode())


def pop(server) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    p.user(BOB)
    p.pass_(PASSWORD)
    return p


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_poplib_journey_and_exact_octet_counts(server):
    deliver(server, "one", body=".leading dot line\r\n..two dots\r\nplain")
    deliver(server, "two")
    pre = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    caps = pre.capa()
    for c in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "USER", "SASL", "STLS"):
        assert c in caps, caps
    assert caps["SASL"] == ["SCRAM-SHA-256", "PLAIN", "LOGIN"]
    pre.quit()
    p = pop(server)
    count, total = p.stat()
    assert count == 2
    resp, listing, _ = p.list()
    sizes = {int(n): int(sz) for n, sz in (l.split() for l in listing)}
    assert sum(sizes.values()) == total
    for n in (1, 2):
        # LIST gives the size without the dot-stuffing (what the client holds once it has
        # undone it), as Dovecot and the other common servers do; count the wire ourselves.
        p._putcmd(f"RETR {n}")
        resp = p._getresp()
        assert resp.startswith(b"+OK")
        wire = b""
        while True:
            line = p.file.readline()
            if line == b".\r\n":
                break
            wire += line[1:] if line.startswith(b".") else line
        assert len(wire) == sizes[n], f"LIST says {sizes[n]}, RETR gave {len(wire)}"
    assert sizes[1] < sizes[2] + 60, "the dot-stuffing is not counted"
    first = p.retr(1)  # poplib un-stuffs; the wire had the dots doubled
    resp, lines, _ = first
    assert b".leading dot line" in lines and b"..two dots" in lines
    resp, lines, _ = p.top(1, 0)
    assert lines[-1] == b"" and not any(b"leading" in l for l in lines)
    uidls = p.uidl()[1]
    assert len(uidls) == 2
    p.dele(1)
    with pytest.raises(poplib.error_proto):
        p.retr(1)
    p.rset()
    assert p.stat()[0] == 2
    p.quit()
    # UIDLs are the same in every session.
    p = pop(server)
    assert p.uidl()[1] == uidls
    p.quit()


def test_pop3_deletion_reaches_live_imap_session(server):
    for s in ("a", "b", "c"):
        deliver(server, s)
    m = imaplib.IMAP4("127.0.0.1", server.imap_port)
    m.login(BOB, PASSWORD)
    m.select("INBOX")
    p = pop(server)
    p.dele(2)
    # Before QUIT nothing happens (RFC 1939 §6).
    m.noop()
    assert "EXPUNGE" not in m.untagged_responses
    p.quit()
    m.noop()
    assert m.untagged_responses.get("EXPUNGE") == [b"2"], m.untagged_responses
    m.untagged_responses.clear()
    typ, data = m.search(None, "ALL")
    assert data == [b"1 2"]
    m.logout()


def test_dropped_connection_deletes_nothing_and_maildrop_lock(server):
    deliver(server, "keep me")
    p = pop(server)
    p.dele(1)
    # A second session is refused while the first holds the maildrop.
    q = poplib.POP3("127.0.0.1", server.pop3_port)
    q.user(BOB)
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        q.pass_(PASSWORD)
    q.close()
    p.sock.shutdown(socket.SHUT_RDWR)  # vanish without QUIT
    p.sock.close()
    time.sleep(0.3)
    p = pop(server)
    assert p.stat()[0] == 1, "nothing was deleted"
    p.quit()


def test_stls_and_pop3s(server):
    p = poplib.POP3("127.0.0.1", server.pop3_port)
    p.stls(context=tls_context())
    p.user(BOB)
    p.pass_(PASSWORD)
    p.quit()
    p = poplib.POP3_SSL("127.0.0.1", server.pop3s_port, context=tls_context())
    assert p.sock.version() in ("TLSv1.3", "TLSv1.2")
    p.user(BOB)
    p.pass_(PASSWORD)
    assert "STLS" not in p.capa()
    p.quit()


def test_wrong_password_and_disabled(server):
    p = poplib.POP3("127.0.0.1", server.pop3_port)
    p.user(BOB)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_("wrong")
    p.quit()
    server.cli("user", "disable", f"carol@{DOMAIN}")
    p = poplib.POP3("127.0.0.1", server.pop3_port)
    p.user(f"carol@{DOMAIN}")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_(PASSWORD)
    p.quit()


def test_fetchmail_keep_then_delete(server, tmp_path):
    for s in ("f1", "f2"):
        deliver(server, s)
    out = tmp_path / "delivered"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"

    def run(keep: bool, flush: bool = False):
        rc.write_text(
            f'poll 127.0.0.1 service {server.pop3_port} protocol pop3 uidl\n'
            f'  user "{BOB}" password "{PASSWORD}" is localuser here\n'
            f'  {"keep" if keep else "nokeep"} {"flush" if flush else ""} sslproto ""'
            f' mda "/bin/sh -c \'cat > {out}/$$.eml\'"\n')
        rc.chmod(0o600)
        r = subprocess.run(["fetchmail", "-f", str(rc), "--idfile", str(tmp_path / "ids"), "-v",
                            "--nodetach", "--nosyslog"],
                           capture_output=True, timeout=120, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
        # fetchmail exits 1 when there was no new mail.
        assert r.returncode in (0, 1), (r.stdout + r.stderr).decode()
        return r

    run(keep=True)
    assert len(list(out.iterdir())) == 2
    r = run(keep=True)
    assert len(list(out.iterdir())) == 2, "second run fetches nothing new"
    assert r.returncode == 1
    deliver(server, "f3")
    run(keep=False)
    assert len(list(out.iterdir())) == 3
    assert server.uids(BOB) == [1, 2], "nokeep deleted the message it fetched"
    run(keep=False, flush=True)
    assert server.uids(BOB) == [], "flush deleted the ones seen before"
    assert len(list(out.iterdir())) == 3, "and fetched nothing twice"


def test_getmail6_only_new_mail(server, tmp_path):
    deliver(server, "g1")
    got = tmp_path / "got"
    got.mkdir()
    cfg = tmp_path / "getmailrc"
    cfg.write_text(f"""[retriever]
type = SimplePOP3Retriever
server = 127.0.0.1
port = {server.pop3_port}
username = {BOB}
password = {PASSWORD}

[destination]
# getmail will not write a Maildir as root (which CI is); an external MDA may.
type = MDA_external
path = /bin/sh
arguments = ("-c", "cat > {got}/$$.eml")
allow_root_commands = true

[options]
read_all = false
delete = false
verbose = 0
""")
    for expect in (1, 1):
        r = subprocess.run(["getmail", "--getmaildir", str(tmp_path), "--rcfile", str(cfg)],
                           capture_output=True, timeout=120)
        assert r.returncode == 0, (r.stdout + r.stderr).decode()
        assert len(list(got.iterdir())) == expect
    deliver(server, "g2")
    subprocess.run(["getmail", "--getmaildir", str(tmp_path), "--rcfile", str(cfg)], check=True,
                   capture_output=True, timeout=120)
    assert len(list(got.iterdir())) == 2


def test_curl_pop3(server):
    deliver(server, "curly", body="curl pop3 body")
    base = f"pop3://127.0.0.1:{server.pop3_port}"
    auth = ["--user", f"{BOB}:{PASSWORD}"]
    r = subprocess.run(["curl", "-sS", *auth, f"{base}/"], capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith(b"1 "), (r.stdout, r.stderr)
    r = subprocess.run(["curl", "-sS", *auth, f"{base}/1"], capture_output=True, timeout=30)
    assert r.returncode == 0 and b"curl pop3 body" in r.stdout
    r = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", *auth, f"{base}/1"], capture_output=True, timeout=30)
    assert r.returncode == 0 and b"curl pop3 body" in r.stdout, r.stderr


def test_bad_input(server):
    deliver(server, "x")
    s = socket.create_connection(("127.0.0.1", server.pop3_port), timeout=10)
    f = s.makefile("rb")
    assert f.readline().startswith(b"+OK")

    def cmd(line: bytes) -> bytes:
        s.sendall(line)
        return f.readline()

    assert cmd(b"RETR 1\r\n").startswith(b"-ERR")  # wrong state
    assert cmd(b"X" * 5000 + b"\r\n").startswith(b"-ERR line too long")
    assert cmd(b"\x00\xff\r\n").startswith(b"-ERR")
    assert cmd(b"USER bob@example.test\r\n").startswith(b"+OK")
    assert cmd(b"PASS " + PASSWORD.encode() + b"\r\n").startswith(b"+OK")
    assert cmd(b"RETR 99\r\n").startswith(b"-ERR")
    assert cmd(b"DELE -1\r\n").startswith(b"-ERR")
    assert cmd(b"TOP 1 x\r\n").startswith(b"-ERR")
    assert cmd(b"STLS\r\n").startswith(b"-ERR")  # not in TRANSACTION
    assert cmd(b"NOOP\r\n").startswith(b"+OK")
    s.close()
