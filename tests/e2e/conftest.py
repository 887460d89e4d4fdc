"""End-to-end fixtures: a real `yubin serve` on loopback ports, driven by real clients.

The binary is target/debug/yubin unless YUBIN_BIN names another (the test command builds it
first). Every server gets its own temporary directory, config and ports.
"""

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
YUBIN = os.environ.get("YUBIN_BIN", str(ROOT / "target" / "debug" / "yubin"))
DOMAIN = "example.test"
HOSTNAME = "mx.example.test"
PASSWORD = "correct horse battery staple"


_used_ports: set[int] = set()


def free_port() -> int:
    """A free loopback port below Linux's ephemeral range (32768-60999), so that client
    connections of earlier tests can never be holding it when yubin binds it."""
    import random

    while True:
        port = random.randrange(20000, 32000)
        if port in _used_ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _used_ports.add(port)
        return port


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0, ip: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"yubin exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((ip, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"yubin did not listen on {port} within {timeout}s")


class Yubin:
    """One server instance: its directory, config, process and CLI."""

    def __init__(self, tmp: Path, smtp: dict | None = None, extra: str = "", ip: str = "127.0.0.1",
                 port: int | None = None, hostname: str = HOSTNAME):
        self.dir = tmp
        self.ip = ip
        host = f"[{ip}]" if ":" in ip else ip  # IPv6 in socket-address syntax
        self.port = port or free_port()
        self.imap_port = free_port()
        self.imaps_port = free_port()
        self.pop3_port = free_port()
        self.pop3s_port = free_port()
        self.submission_port = free_port()
        self.submissions_port = free_port()
        self.config = tmp / "yubin.toml"
        smtp_keys = "\n".join(f"{k} = {v}" for k, v in (smtp or {}).items())
        self.config.write_text(
            f'hostname = "{hostname}"\n'
            f"{extra}\n"
            "[listen]\n"
            f'smtp = ["{host}:{self.port}"]\n'
            f"imap = [\"{host}:{self.imap_port}\"]\nimaps = [\"{host}:{self.imaps_port}\"]\n"
            f"pop3 = [\"{host}:{self.pop3_port}\"]\npop3s = [\"{host}:{self.pop3s_port}\"]\n"
            f"submission = [\"{host}:{self.submission_port}\"]\n"
            f"submissions = [\"{host}:{self.submissions_port}\"]\n"
            "[smtp]\n"
            f"{smtp_keys}\n"
        )
        self.proc: subprocess.Popen | None = None
        self.log = tmp / "serve.log"

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [YUBIN, "--config", str(self.config), *args],
            input=input.encode() if input is not None else None,
            capture_output=True,
            timeout=60,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"yubin {' '.join(args)} failed: {r.stderr.decode()}")
        return r

    def start(self) -> "Yubin":
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [YUBIN, "--config", str(self.config), "serve"],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, "YUBIN_LOG": "debug"},
        )
        wait_port(self.port, self.proc, ip=self.ip)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def add_user(self, address: str, password: str = PASSWORD) -> None:
        self.cli("user", "add", address, "--password-stdin", input=password + "\n")

    def uids(self, address: str, mailbox: str = "INBOX") -> list[int]:
        out = self.cli("mail", "list", address, "--mailbox", mailbox).stdout.decode()
        return [int(line.split("\t")[0]) for line in out.splitlines() if line]

    def cat(self, address: str, uid: int, mailbox: str = "INBOX") -> bytes:
        return self.cli("mail", "cat", address, str(uid), "--mailbox", mailbox).stdout

    def messages(self, address: str) -> list[bytes]:
        return [self.cat(address, u) for u in self.uids(address)]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


TRACE = re.compile(
    rb"^Return-Path: <(?P<from>[^>]*)>\r\n"
    rb"Received: from (?P<helo>[^ ]+) \(\[(?P<ip>[0-9.:a-f]+)\]\)\r\n"
    rb"\tby mx\.example\.test \(yubin\) with (?P<proto>[A-Z0-9]+)(?:\r\n\t\(using (?P<tls>[^)]*)\))? id (?P<id>[0-9A-F]+)"
    rb"(?:\r\n\tfor <(?P<for>[^>]*)>)?;\r\n\t(?P<date>[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000)\r\n"
)


def mbsync_config(path: Path, host: str, port: int, user: str, password: str, local: Path) -> Path:
    """An mbsync (isync) configuration at `path`: every folder of `user` on the server,
    both ways, with a Maildir at `local` (what a laptop user runs)."""
    local.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""
IMAPAccount yubin
Host {host}
Port {port}
User {user}
Pass "{password}"
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account yubin

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel all
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""")
    return path


def split_trace(stored: bytes):
    """The trace headers yubin added, and the message exactly as the client sent it."""
    m = TRACE.match(stored)
    assert m, f"no trace headers at the start of: {stored[:300]!r}"
    return m, stored[m.end():]


@pytest.fixture
def make_server(tmp_path):
    servers: list[Yubin] = []

    def make(smtp: dict | None = None, extra: str = "", users: bool = True, domain: str = DOMAIN,
             **kw) -> Yubin:
        d = tmp_path / f"srv{len(servers)}"
        d.mkdir()
        y = Yubin(d, smtp, extra, **kw)
        servers.append(y)
        y.cli("init", "--domain", domain)
        if users:
            for u in ("bob", "carol", "dave"):
                y.add_user(f"{u}@{domain}")
        return y

    yield make
    for y in servers:
        crashed = y.proc is not None and y.proc.poll() is not None
        y.stop()
        assert not crashed, f"yubin died during the test:\n{y.log_text()[-3000:]}"


@pytest.fixture
def server(make_server) -> Yubin:
    return make_server(smtp={"max_message_size": 25 * 1024 * 1024}).start()
