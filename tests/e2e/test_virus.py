"""Virus scanning (issue 18) with ClamAV's clamd from Debian, started by the test with its
own clamd.conf and a signature database made at test time (`sigtool --md5` of the EICAR
file, which the test assembles: it is never committed). Over the unix socket and TCP, in
nested zips, on submission, and with clamd killed in the middle of a run of deliveries."""

import io
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import zipfile
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import pytest

from conftest import DOMAIN, PASSWORD, free_port

IP = "127.0.0.1"
BOB = f"bob@{DOMAIN}"
# The EICAR test file, put together here so that no file of the project is "infected".
EICAR = ("X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-" + "ANTIVIRUS-TEST-FILE!$H+H*").encode()
SIGNATURE = "eicar.com.UNOFFICIAL"  # clamd's name for a signature of an .hdb file


class Clamd:
    def __init__(self, d: Path):
        d.mkdir()
        (d / "db").mkdir()
        (d / "eicar.com").write_bytes(EICAR)
        sig = subprocess.run(["sigtool", "--md5", "eicar.com"], cwd=d, capture_output=True, check=True)
        (d / "db" / "test.hdb").write_bytes(sig.stdout)
        self.sock = d / "clamd.sock"
        self.port = free_port()
        conf = d / "clamd.conf"
        conf.write_text(f"Foreground yes\nLocalSocket {self.sock}\nTCPSocket {self.port}\nTCPAddr {IP}\n"
                        f"DatabaseDirectory {d / 'db'}\nLogFile {d / 'clamd.log'}\n"
                        f"PidFile {d / 'clamd.pid'}\nStreamMaxLength 30M\n")
        self.proc = subprocess.Popen(["clamd", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
            try:
                socket.create_connection((IP, self.port), timeout=1).close()
                if self.sock.exists():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("clamd did not start")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def clamd(tmp_path_factory):
    c = Clamd(tmp_path_factory.mktemp("clamd") / "c")
    yield c
    c.kill()


def message(name: str | None = None, data: bytes = b"", subject: str = "files", frm: str = "alice@partner.example"):
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = frm, BOB, subject
    m["Date"], m["Message-ID"] = formatdate(), make_msgid(domain="partner.example")
    m.set_content("See attached.\n")
    if name:
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return m.as_bytes(policy=policy.SMTP)


def zip_of(name: str, data: bytes) -> bytes:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)
    return b.getvalue()


def send(y, raw: bytes, mail_from="alice@partner.example"):
    with smtplib.SMTP(IP, y.port, timeout=60) as s:
        s.ehlo("client.test")
        s.mail(mail_from)
        code, text = s.rcpt(BOB)
        assert code == 250, text
        code, text = s.data(raw)
        return code, text.decode()


def server(make_server, address: str, extra: str = ""):
    return make_server(extra=f'[filter]\ncheck_local = true\nsender_auth = false\nclamd = "{address}"\n'
                             f"clamd_timeout_seconds = 3\n{extra}").start()


@pytest.mark.parametrize("via", ["unix", "tcp"])
def test_eicar_is_refused_naming_the_signature(make_server, clamd, via):
    y = server(make_server, str(clamd.sock) if via == "unix" else f"{IP}:{clamd.port}")
    code, text = send(y, message("eicar.com", EICAR))
    assert code == 554 and "5.7.1" in text and SIGNATURE in text, (code, text)
    # Inside a zip inside a zip (under harmless names): clamd opens both.
    code, text = send(y, message("photos.zip", zip_of("inner.zip", zip_of("readme.txt", EICAR))))
    assert code == 554 and SIGNATURE in text, (code, text)
    assert y.uids(BOB) == [] and y.uids(BOB, "Junk") == []
    code, text = send(y, message("notes.txt", b"nothing to see"))
    assert code == 250, text
    raw = y.cat(BOB, y.uids(BOB)[-1])
    assert b"X-Virus-Scanned: clamd; clean" in raw


def test_submission_and_trusted_mail_are_scanned(make_server, clamd):
    y = make_server(extra=f'[filter]\nclamd = "{clamd.sock}"\n').start()  # loopback trusted
    code, text = send(y, message("eicar.com", EICAR))
    assert code == 554 and SIGNATURE in text, (code, text)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP(IP, y.submission_port, timeout=30) as s:
        s.starttls(context=ctx)
        s.login(BOB, PASSWORD)
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail(BOB, [f"carol@{DOMAIN}"], message("x.com.txt", EICAR, frm=BOB))
        assert e.value.smtp_code == 554 and SIGNATURE.encode() in e.value.smtp_error
        s.sendmail(BOB, [f"carol@{DOMAIN}"], message(frm=BOB))
    assert len(y.uids(f"carol@{DOMAIN}")) == 1


@pytest.mark.parametrize("policy_", ["tempfail", "accept"])
def test_clamd_killed_mid_run_loses_nothing(make_server, tmp_path, policy_):
    c = Clamd(tmp_path / "own-clamd")
    y = server(make_server, f"{IP}:{c.port}", f'on_scanner_failure = "{policy_}"\n')
    answers = []
    try:
        for i in range(16):
            if i == 6:
                c.kill()
            code, text = send(y, message("data.bin", b"%d" % i, subject=f"run {i}"))
            answers.append((i, code, text))
        # Text alone is not the scanner's (clamd_scan = "attachments", Rspamd's default).
        code, text = send(y, message(subject="text only"))
        assert code == 250, text
    finally:
        c.kill()
    text_only = [u for u in y.uids(BOB) if b"Subject: text only" in y.cat(BOB, u)]
    assert len(text_only) == 1
    stored = {y.cat(BOB, u).split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for u in y.uids(BOB)}
    stored.discard("text only")
    acked = {f"run {i}" for i, code, _ in answers if code == 250}
    assert acked == stored, "every 250 is stored, nothing else"
    assert all(code == 250 for i, code, _ in answers if i < 6), answers
    after = [(code, text) for i, code, text in answers if i >= 6]
    if policy_ == "tempfail":
        assert all(code == 451 and "virus scanner" in text for code, text in after), after
    else:
        assert all(code == 250 for code, _ in after), after
        last = [y.cat(BOB, u) for u in y.uids(BOB)][-2]  # the last scanned one
        assert b"X-Virus-Scanned: no (clamd at" in last, last[:600]


def fake_clamd(behaviour: str) -> tuple[int, socket.socket]:
    """A hostile scanner: one that never answers, or answers endless garbage."""
    srv = socket.socket()
    srv.bind((IP, 0))
    srv.listen()

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            def one(conn=conn):
                try:
                    if behaviour == "garbage":
                        while True:
                            conn.sendall(b"A" * 65536)
                    else:
                        while conn.recv(65536):
                            pass
                        time.sleep(30)
                except OSError:
                    pass
                finally:
                    conn.close()
            threading.Thread(target=one, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], srv


@pytest.mark.parametrize("behaviour", ["silent", "garbage"])
def test_hostile_scanner_gets_a_verdict_in_time(make_server, behaviour):
    port, srv = fake_clamd(behaviour)
    try:
        y = server(make_server, f"{IP}:{port}", 'clamd_scan = "all"\n')
        t = time.time()
        code, text = send(y, message(subject="hostile scanner"))
        assert code == 451 and "virus scanner" in text, (code, text)
        assert time.time() - t < 15
        assert y.uids(BOB) == []
    finally:
        srv.close()
