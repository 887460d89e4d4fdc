"""BODYSTRUCTURE and ENVELOPE of tricky real-world shapes (nested multipart, broken MIME,
encoded words, non-UTF-8 charsets, missing headers, groups, RFC 2231 parameters) compared
with an independent implementation: Dovecot's imap, run on the same messages."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import DOMAIN, PASSWORD

CORPUS = Path(__file__).parent / "corpus"
DOVECOT = "/usr/lib/dovecot/imap"
DOVECOT_USER = "yubintest"  # Dovecot refuses to run as root; .ci/install-deps creates it


def fetch_raw(send, count: int) -> list[bytes]:
    """Send SELECT + one FETCH per message, return each FETCH response line."""
    cmds = b"s SELECT INBOX\r\n" + b"".join(
        b"f%d FETCH %d (BODYSTRUCTURE ENVELOPE)\r\n" % (i, i) for i in range(1, count + 1)
    ) + b"z LOGOUT\r\n"
    out = send(cmds)
    return [l for l in out.split(b"\r\n") if re.match(rb"\* \d+ FETCH ", l)]


def normalize(line: bytes) -> bytes:
    # Servers may differ in letter case of MIME tokens (RFC 2045 makes them
    # case-insensitive) and in the order of BODYSTRUCTURE vs ENVELOPE.
    line = re.sub(rb"^\* \d+ FETCH \(", b"", line).rstrip(b")")
    parts = {}
    for key in (b"BODYSTRUCTURE ", b"ENVELOPE "):
        i = line.find(key)
        parts[key] = i
    items = sorted((i, k) for k, i in parts.items())
    out = {}
    for n, (i, k) in enumerate(items):
        end = items[n + 1][0] if n + 1 < len(items) else len(line)
        out[k] = line[i + len(k):end].strip().lower()
    return out[b"BODYSTRUCTURE "] + b" || " + out[b"ENVELOPE "]


def test_bodystructure_and_envelope_match_dovecot(server, tmp_path):
    assert os.path.exists(DOVECOT), "Dovecot's imap is needed: bash .ci/install-deps"
    subprocess.run(["id", DOVECOT_USER], check=True, capture_output=True)
    files = sorted(CORPUS.glob("*.eml"))
    assert len(files) >= 12
    # Dovecot: a Maildir with the same messages, imap run directly on stdin/stdout.
    # Outside pytest's private (0700) tree, so Dovecot's unprivileged user can reach it.
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="yubin-dovecot-"))
    os.chmod(base, 0o755)
    md = base / "dovecot" / "md"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    for i, f in enumerate(files, 1):
        shutil.copy(f, md / "cur" / f"{i:04d}.x:2,S")
    conf = base / "dovecot" / "dovecot.conf"
    conf.write_text(f"log_path = /dev/null\nmail_location = maildir:{md}\nssl = no\n")
    subprocess.run(["chown", "-R", DOVECOT_USER, str(base / "dovecot")], check=True)

    def dovecot(cmds: bytes) -> bytes:
        r = subprocess.run(["runuser", "-u", DOVECOT_USER, "--", "env", f"USER={DOVECOT_USER}",
                            f"HOME={base / 'dovecot'}", DOVECOT, "-c", str(conf)],
                           input=cmds, capture_output=True, timeout=60)
        return r.stdout

    # yubin: the same bytes through APPEND.
    import imaplib
    m = imaplib.IMAP4("127.0.0.1", server.imap_port)
    m.login(f"bob@{DOMAIN}", PASSWORD)
    for f in files:
        assert m.append("INBOX", None, None, f.read_bytes())[0] == "OK", f
    m.logout()

    def yubin(cmds: bytes) -> bytes:
        import socket
        s = socket.create_connection(("127.0.0.1", server.imap_port))
        s.sendall(b"l LOGIN bob@example.test \"" + PASSWORD.encode() + b"\"\r\n" + cmds)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        return data

    theirs = [normalize(l) for l in fetch_raw(dovecot, len(files))]
    ours = [normalize(l) for l in fetch_raw(yubin, len(files))]
    assert len(theirs) == len(files), theirs
    mismatches = [(f.name, t, o) for f, t, o in zip(files, theirs, ours) if t != o]
    report = "\n\n".join(f"{n}\n dovecot: {t.decode(errors='replace')}\n yubin:   {o.decode(errors='replace')}"
                         for n, t, o in mismatches)
    shutil.rmtree(base, ignore_errors=True)
    assert not mismatches, report
