#!/usr/bin/env python3
"""yubin's benchmark: the same loads against yubin and a reference server, side by side.

Run it with `bash bench/run` (see bench/README.md). It starts everything it measures on
loopback ports in a temporary directory and stops it again. `--smoke` runs tiny sizes so the
test suite can prove the harness still works; its numbers mean nothing.
"""

import argparse
import datetime
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = "bench.test"
USER = f"bench@{DOMAIN}"
PASSWORD = "load-test-passphrase"
DOVECOT_USER = "yubintest"  # an unprivileged account for the mail files (.ci/install-deps)
NEEDLE = "benchmark"
STRESS_USER = f"stress@{DOMAIN}"  # yubin's stress account (argon2id, as every yubin account)
STRESS_HASHED = f"stress-hashed@{DOMAIN}"  # Dovecot: SHA512-CRYPT from a passwd-file
STRESS_PLAIN = f"stress-plain@{DOMAIN}"  # Dovecot: the static passdb's plain password


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def raise_nofile() -> None:
    """Thousands of idle connections need thousands of descriptors (both ends)."""
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def memory_kib(pids) -> int:
    """Proportional set size (PSS) of these processes: shared pages are split among the
    processes sharing them, so a forking server is neither over- nor under-counted."""
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass  # exited meanwhile
    return total


def idle_memory(bench: str, server, user: str, connections: int) -> float:
    """KiB of server memory per connection that logged in, selected INBOX and IDLEs."""
    time.sleep(1)
    before = memory_kib(server.pids())
    p = subprocess.Popen([bench, "idle", "--addr", f"127.0.0.1:{server.imap_port}", "--user", user,
                          "--password", PASSWORD, "--connections", str(connections)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=raise_nofile)
    line = p.stdout.readline().decode()
    if not line.startswith("ready"):
        p.kill()
        raise RuntimeError(f"idle connections failed: {line!r}")
    log(f"  {connections} connections idle after {line.split()[2]} ms")
    time.sleep(2)
    after = memory_kib(server.pids())
    p.stdin.close()
    p.wait(timeout=120)
    return (after - before) / connections


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited during start-up (code {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on port {port} within {timeout}s")


def message(i: int, size: int) -> bytes:
    """A deterministic plain-text message of about `size` bytes; every tenth one mentions the
    search needle in its subject and body."""
    hit = i % 10 == 0
    subject = f"Quarterly {NEEDLE} report {i}" if hit else f"Status update {i}"
    head = (
        f"From: Sender {i % 97} <sender{i % 97}@example.net>\r\n"
        f"To: {USER}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Mon, 2 Nov 2026 10:{i % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{i}.bench@example.net>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    words = ["alpha", "delivery", "queue", "mailbox", "storage", "network", "latency", "index"]
    lines = []
    n = len(head)
    k = i
    while n < size:
        k = (k * 1103515245 + 12345) & 0x7FFFFFFF
        line = " ".join(words[(k >> s) % len(words)] for s in range(0, 30, 3))
        if hit and not lines:
            line += f" {NEEDLE}"
        lines.append(line)
        n += len(line) + 2
    return head + "\r\n".join(lines).encode() + b"\r\n"


class Yubin:
    def __init__(self, base: Path, bin_dir: Path):
        self.dir = base / "yubin"
        self.dir.mkdir()
        self.bin = str(bin_dir / "yubin")
        self.smtp_port, self.imap_port, self.pop3_port = free_port(), free_port(), free_port()
        self.config = self.dir / "yubin.toml"
        self.config.write_text(
            'hostname = "mx.bench.test"\n'
            "[listen]\n"
            f'smtp = ["127.0.0.1:{self.smtp_port}"]\n'
            f'imap = ["127.0.0.1:{self.imap_port}"]\n'
            f'pop3 = ["127.0.0.1:{self.pop3_port}"]\n'
            "imaps = []\npop3s = []\nsubmission = []\nsubmissions = []\n"
            # Every client comes from 127.0.0.1: lift the per-address limits meant for the
            # internet, as the Dovecot side has none.
            "[smtp]\nmax_connections_per_ip = 1000\n"
            "[imap]\nmax_connections = 20000\nmax_connections_per_ip = 20000\n"
            "max_connections_per_account = 20000\n"
            "[pop3]\nmax_connections_per_ip = 1000\n"
        )
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, input: str | None = None) -> None:
        subprocess.run([self.bin, "--config", str(self.config), *args], check=True,
                       capture_output=True, input=input.encode() if input else None)

    def start(self, users) -> None:
        self.cli("init", "--domain", DOMAIN)
        for u in users:
            self.cli("user", "add", u, "--password-stdin", input=PASSWORD + "\n")
        self.serve()

    def serve(self) -> None:
        self.proc = subprocess.Popen([self.bin, "--config", str(self.config), "serve"],
                                     stdout=open(self.dir / "serve.log", "ab"),
                                     stderr=subprocess.STDOUT, env={**os.environ, "YUBIN_LOG": "warn"},
                                     preexec_fn=raise_nofile)
        wait_port(self.imap_port, self.proc, "yubin")

    def pids(self) -> list:
        return [self.proc.pid] if self.proc else []

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


class Dovecot:
    """Dovecot from Debian as the reference IMAP/POP3 server: Maildir, fsync always."""

    def __init__(self, base: Path):
        # Outside any private (0700) directory, so the unprivileged mail user can reach it.
        self.dir = base / "dovecot"
        self.dir.mkdir()
        os.chmod(base, 0o755)
        self.homes = self.dir / "home"
        self.imap_port, self.pop3_port = free_port(), free_port()
        self.conf = self.dir / "dovecot.conf"
        self.conf.write_text(f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
listen = 127.0.0.1
protocols = imap pop3
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
# Durability equal to yubin's: every change reaches the disk before the reply.
mail_fsync = always
# The stress rows' "hashed" user has a SHA512-CRYPT hash (how most Dovecot installs store
# passwords) and no auth cache (Dovecot's default); everyone else is the static passdb's
# plain password, the most favourable case.
passdb {{
  driver = passwd-file
  args = {self.dir}/users
}}
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={DOVECOT_USER} gid={DOVECOT_USER} home={self.homes}/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap {{
  process_limit = 20000
}}
# 10,000 idle clients are 10,000 imap processes, each a client of log, anvil, stats...
default_client_limit = 25000
# Every benchmark client is the same user from 127.0.0.1 (as on the yubin side).
protocol imap {{
  mail_max_userip_connections = 20000
}}
""")
        hashed = subprocess.run(["/usr/bin/doveadm", "pw", "-s", "SHA512-CRYPT", "-p", PASSWORD],
                                capture_output=True, text=True, check=True).stdout.strip()
        (self.dir / "users").write_text(f"{STRESS_HASHED}:{hashed}\n")
        self.proc: subprocess.Popen | None = None

    def import_files(self, user: str, msgs) -> None:
        maildir = self.homes / user / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        for i, m in enumerate(msgs, 1):
            # ,S= carries the size as Dovecot's own deliveries do, so it need not stat.
            (maildir / "cur" / f"{i:08d}.bench,S={len(m)}:2,").write_bytes(m)
        subprocess.run(["chown", "-R", DOVECOT_USER, str(self.homes)], check=True)

    def start(self) -> None:
        self.proc = subprocess.Popen(["/usr/sbin/dovecot", "-F", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     preexec_fn=raise_nofile)
        wait_port(self.imap_port, self.proc, "dovecot")

    def pids(self) -> list:
        """The master and everything it started (login, imap, auth, log... processes)."""
        return process_tree(self.proc.pid) if self.proc else []

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def process_tree(root: int) -> list:
    """`root` and every process under it."""
    children: dict = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class Postfix:
    """Postfix from Debian as the reference MTA, delivering with virtual(8) into a Maildir that
    Dovecot serves (the usual Postfix + Dovecot setup). Postfix fsyncs its queue file before
    250 and the Maildir file before it counts a delivery: the same promise as yubin's."""

    def __init__(self, base: Path):
        import grp
        import pwd
        self.dir = base / "postfix"
        self.etc = self.dir / "etc"
        self.etc.mkdir(parents=True)
        self.maildir = self.dir / "mail" / "smtp" / "new"
        self.port = free_port()
        uid, gid = pwd.getpwnam(DOVECOT_USER).pw_uid, grp.getgrnam(DOVECOT_USER).gr_gid
        (self.dir / "mail").mkdir()
        os.chown(self.dir / "mail", uid, gid)
        (self.etc / "main.cf").write_text(f"""compatibility_level = 3.6
queue_directory = {self.dir}/queue
data_directory = {self.dir}/data
maillog_file = {self.dir}/maillog
maillog_file_prefixes = {self.dir}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.postfix.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
smtpd_recipient_restrictions = permit_mynetworks, reject
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {self.dir}/mail
virtual_mailbox_maps = static:smtp/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 100
virtual_mailbox_limit = 0
virtual_destination_concurrency_limit = 50
message_size_limit = 52428800
""")
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            f = line.split()
            if line and not line[0].isspace() and not line.startswith("#") and len(f) >= 8:
                f[4] = "n"  # no chroot: the private instance has no copy of /etc inside
                if f[0] == "smtp" and f[1] == "inet":
                    f[0] = f"127.0.0.1:{self.port}"
                line = " ".join(f)
            lines.append(line)
        (self.etc / "master.cf").write_text("\n".join(lines) + "\n")

    def postfix(self, *args: str) -> None:
        r = subprocess.run(["/usr/sbin/postfix", "-c", str(self.etc), *args],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"postfix {' '.join(args)} failed: {r.stderr}")

    def start(self) -> None:
        (self.dir / "queue").mkdir(exist_ok=True)
        self.postfix("post-install", "create-missing")  # queue subdirectories, owners
        self.postfix("start")
        end = time.time() + 30
        while time.time() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("postfix did not listen")

    def stop(self) -> None:
        subprocess.run(["/usr/sbin/postfix", "-c", str(self.etc), "stop"], capture_output=True)

    def pids(self) -> list:
        """The master (its pid file) and its daemons."""
        try:
            master = int((self.dir / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return process_tree(master)

    def stored(self) -> int:
        try:
            return len(os.listdir(self.maildir))
        except FileNotFoundError:
            return 0


def imap_count(port: int, user: str) -> int:
    import imaplib
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(user, PASSWORD)
    typ, data = m.status("INBOX", "(MESSAGES)")
    m.logout()
    return int(data[0].split(b"MESSAGES ")[1].rstrip(b")"))


def smtp_source(port: int, sessions: int, count: int, size: int, stored, before: int) -> float:
    """Postfix's smtp-source: `count` messages of `size` bytes over `sessions` parallel
    connections (kept open between messages); messages/second until `stored()` reaches
    `before + count`, i.e. the last one is in the mailbox."""
    t = time.time()
    subprocess.run(["/usr/sbin/smtp-source", "-d", "-s", str(sessions), "-m", str(count),
                    "-l", str(size), "-f", "sender@example.net", "-t", f"smtp@{DOMAIN}",
                    "-M", "client.example.net", f"127.0.0.1:{port}"],
                   check=True, capture_output=True, timeout=3600)
    end = time.time() + 600
    while stored() < before + count:
        if time.time() > end:
            raise SystemExit(f"only {stored() - before} of {count} messages were delivered")
        time.sleep(0.05)
    return count / (time.time() - t)


def smtp_import(port: int, msgs, sessions: int, rcpts=(USER,)) -> float:
    """Deliver every message over SMTP from `sessions` parallel clients to `rcpts`;
    messages/second."""
    chunks = [msgs[k::sessions] for k in range(sessions)]
    errors = []

    def worker(chunk):
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
                for m in chunk:
                    s.sendmail("sender@example.net", list(rcpts), m)
        except Exception as e:  # reported below; a thread must not die silently
            errors.append(e)

    t = time.time()
    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise SystemExit(f"SMTP import failed: {errors[0]}")
    return len(msgs) / (time.time() - t)


def warm_up(port: int, user: str) -> None:
    """One SELECT first, so a server that indexes lazily (Dovecot) is not timed doing it."""
    import imaplib
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(user, PASSWORD)
    m.select("INBOX")
    m.logout()


def cpu_seconds(pids) -> float:
    total = 0.0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass  # exited meanwhile
    return total


def machine_busy_seconds() -> float:
    """CPU time spent by the whole machine (every core, not idle or waiting for I/O)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def settle(server, limit: float = 600) -> None:
    """Before timing a server: write every dirty page out (the other server's import left
    hundreds of MiB for the kernel to flush), then wait until the server uses under 5% of
    a core and the machine under 15% (yubin builds its full-text index in a low-priority
    thread after an import, which would otherwise compete with the first timed rows). The
    same for both servers."""
    os.sync()
    end = time.time() + limit
    while time.time() < end:
        mine, machine = cpu_seconds(server.pids()), machine_busy_seconds()
        time.sleep(1)
        if cpu_seconds(server.pids()) - mine < 0.05 and machine_busy_seconds() - machine < 0.15:
            return
    log(f"  still busy after {limit:.0f} s; timing anyway")


SINGLE_ROWS = "noop,select,fetch_flags_all,fetch_1000_bodies,search_header,search_body,store_10000"


def set_affinity(pids, cpus) -> None:
    """Every thread of every process in `pids` (processes they start later inherit it)."""
    for p in pids:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue  # exited meanwhile
        for t in tids:
            try:
                os.sched_setaffinity(int(t), cpus)
            except OSError:
                pass


def run_imap(bench: str, server, user: str, clients: int, seconds: int) -> dict:
    """The single-client rows with the client and every server process on one CPU, then
    the mixed load on all of them. On one CPU a round trip costs what the two programs do;
    across CPUs it also pays a cross-CPU wakeup (~25 us each way on these VMs, more than
    either server's SELECT), and whether a connection pays it is the scheduler's choice
    per connection: it made the fast rows bimodal (0.02 or 0.05 ms NOOPs for both servers
    in the same run). The same for both servers."""
    everything = os.sched_getaffinity(0)
    one = {max(everything)}
    set_affinity(server.pids(), one)
    try:
        rows = yubin_bench_imap(bench, server.imap_port, user, ["--rows", SINGLE_ROWS],
                                lambda: os.sched_setaffinity(0, one))
    finally:
        set_affinity(server.pids(), everything)
    rows.update(yubin_bench_imap(bench, server.imap_port, user,
                                 ["--rows", "mixed", "--clients", str(clients),
                                  "--seconds", str(seconds)], None))
    return rows


def yubin_bench_imap(bench: str, port: int, user: str, args, preexec) -> dict:
    out = subprocess.run([bench, "imap", "--addr", f"127.0.0.1:{port}", "--user", user,
                          "--password", PASSWORD, "--needle", NEEDLE, *args],
                         capture_output=True, text=True, timeout=3600, preexec_fn=preexec)
    if out.returncode != 0:
        raise SystemExit(f"yubin-bench imap against port {port} failed:\n{out.stderr}")
    rows = {}
    for line in out.stdout.splitlines():
        name, value, *rest = line.split("\t")
        rows[name] = float(value.split()[0])
        if name == "mixed":
            rows["mixed_p50"] = float(rest[0].split()[1])
            rows["mixed_p99"] = float(rest[1].split()[1])
    return rows


STRESS_CLIENTS = (10, 50)


def run_stress(bench: str, port: int, user: str, clients: int, seconds: int) -> dict:
    """imaptest-style stress (`yubin-bench stress`): each client loops LOGIN, SELECT,
    FETCH, STORE of flags and keywords, APPEND, EXPUNGE, LOGOUT on one shared mailbox and
    checks every reply; commands/s, LOGIN p50 and the protocol errors it found."""
    out = subprocess.run([bench, "stress", "--addr", f"127.0.0.1:{port}", "--user", user,
                          "--password", PASSWORD, "--clients", str(clients),
                          "--seconds", str(seconds)],
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"yubin-bench stress against port {port} failed:\n{out.stderr}")
    if out.stderr.strip():
        log(out.stderr.strip())
    f = out.stdout.strip().split("\t")
    return {"": float(f[1].split()[0]), "_login_p50": float(f[3].split()[1]),
            "_errors": float(f[5].split()[1])}


def stress_table(ours: dict, plain: dict, hashed: dict) -> str:
    lines = ["### Login-heavy stress (every client logs in for each round)", "",
             "| row | yubin | Dovecot, plain passwords | Dovecot, SHA512-CRYPT | "
             "yubin / Dovecot plain | better is |", "|---|---:|---:|---:|---:|---|"]
    for clients in STRESS_CLIENTS:
        for suffix, unit, bigger in (("", "cmd/s", True), ("_login_p50", "ms", False),
                                     ("_errors", "errors", False)):
            name = f"stress_{clients}{suffix}"
            if name not in ours:
                continue
            a, b, c = ours[name], plain.get(name), hashed.get(name)
            fmt = (lambda v: "" if v is None else f"{v:.0f} {unit}") if bigger or unit == "errors" \
                else (lambda v: "" if v is None else f"{v:.3g} {unit}")
            ratio = "n/a" if b is None else f"{a / b:.2f}" if b else "-"
            lines.append(f"| {name} | {fmt(a)} | {fmt(b)} | {fmt(c)} | {ratio} | "
                         f"{'higher' if bigger else 'lower'} |")
    return "\n".join(lines)


def pop3_fetch_all(bench: str, port: int, users) -> float:
    """One POP3 session per user, in parallel, each RETR every message of its own maildrop
    (RFC 1939 §8 locks a maildrop to one session); messages/second. The client is
    `yubin-bench pop3` (Rust): Python's poplib was the bottleneck, not the servers."""
    out = subprocess.run([bench, "pop3", "--addr", f"127.0.0.1:{port}", "--users", ",".join(users),
                          "--password", PASSWORD], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"yubin-bench pop3 against port {port} failed:\n{out.stderr}")
    return float(out.stdout.split("\t")[1].split()[0])


# (row, unit, True when bigger is better)
ROWS = [
    ("noop", "ms", False),
    ("select", "ms", False),
    ("fetch_flags_all", "ms", False),
    ("fetch_1000_bodies", "ms", False),
    ("search_header", "ms", False),
    ("search_body", "ms", False),
    ("store_10000", "ms", False),
    ("mixed", "ops/s", True),
    ("mixed_p50", "ms", False),
    ("mixed_p99", "ms", False),
    ("idle_rss", "KiB/conn", False),
    ("pop3", "msg/s", True),
    ("smtp_4k_10", "msg/s", True),
    ("smtp_4k_50", "msg/s", True),
    ("smtp_256k_10", "msg/s", True),
    ("smtp_256k_50", "msg/s", True),
    ("outbound_4k", "msg/s", True),
    ("outbound_256k", "msg/s", True),
]
SMTP_ROWS = [("smtp_4k_10", 10, 4096), ("smtp_4k_50", 50, 4096),
             ("smtp_256k_10", 10, 262144), ("smtp_256k_50", 50, 262144)]


OUT_DOMAIN = "out.bench.test"
OUT_USER = f"far@{OUT_DOMAIN}"
SENDER_IP, RECEIVER_IP = "127.0.0.2", "127.0.0.3"
OUT_SESSIONS = 20


class Outbound:
    """Outbound throughput: messages submitted to a sender (yubin, or Postfix relaying to
    its relayhost, as it is deployed) over 20 sessions, until a receiving yubin on another
    loopback address has the last one. The same receiver for both; yubin finds it through
    an MX record (dnsmasq), Postfix through relayhost. Both fsync their queue before 250,
    both deliver with up to 20 connections to the destination."""

    def __init__(self, base: Path, bin_dir: Path):
        self.base = base / "outbound"
        self.base.mkdir()
        self.bin = str(bin_dir / "yubin")
        self.port = free_port()  # the SMTP port of both yubins (as port 25 on the internet)
        self.dns_port = free_port()
        self.procs: list = []

    def yubin(self, name: str, ip: str, hostname: str, domain: str, extra: str, users):
        d = self.base / name
        d.mkdir()
        cfg = d / "yubin.toml"
        imap, sub = free_port(), free_port()
        cfg.write_text(
            f'hostname = "{hostname}"\n{extra}\n[listen]\n'
            f'smtp = ["{ip}:{self.port}"]\nimap = ["{ip}:{imap}"]\n'
            f'submission = ["{ip}:{sub}"]\n'
            "imaps = []\npop3 = []\npop3s = []\nsubmissions = []\n"
            "[smtp]\nmax_connections_per_ip = 1000\n"
            "[submission]\nmessages_per_hour = 10000000\nrecipients_per_hour = 10000000\n"
            "save_sent = false\n")
        run = lambda *a, inp=None: subprocess.run([self.bin, "--config", str(cfg), *a], check=True,
                                                  capture_output=True, input=inp)
        run("init", "--domain", domain)
        for u in users:
            run("user", "add", u, "--password-stdin", inp=(PASSWORD + "\n").encode())
        p = subprocess.Popen([self.bin, "--config", str(cfg), "serve"],
                             stdout=open(d / "serve.log", "ab"), stderr=subprocess.STDOUT,
                             env={**os.environ, "YUBIN_LOG": "warn"}, preexec_fn=raise_nofile)
        self.procs.append(p)
        wait_port_at(ip, imap, p, name)
        return p, imap, sub

    def start(self, with_postfix: bool) -> None:
        self.dns = subprocess.Popen([
            "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
            "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={self.dns_port}",
            f"--mx-host={OUT_DOMAIN},mx.{OUT_DOMAIN},10", f"--host-record=mx.{OUT_DOMAIN},{RECEIVER_IP}",
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(self.dns)
        self.receiver, self.recv_imap, _ = self.yubin(
            "receiver", RECEIVER_IP, f"mx.{OUT_DOMAIN}", OUT_DOMAIN, "", [OUT_USER])
        queue = (f"[queue]\ndns_servers = [\"127.0.0.1:{self.dns_port}\"]\n"
                 f"remote_port = {self.port}\nper_domain_concurrency = {OUT_SESSIONS}\n")
        self.sender, _, self.sub_port = self.yubin(
            "sender", SENDER_IP, "mx.bench.test", DOMAIN, queue, [USER])
        self.pf = None
        if with_postfix:
            self.pf = PostfixRelay(self.base, RECEIVER_IP, self.port)
            self.pf.start()

    def stored(self) -> int:
        return imap_count_at(RECEIVER_IP, self.recv_imap, OUT_USER)

    def run(self, who: str, count: int, size: int) -> float:
        """`yubin-bench smtp` submits the messages (20 sessions, pipelined transactions);
        the time runs until the receiver has the last one."""
        before = self.stored()
        if who == "yubin":
            target = ["--addr", f"{SENDER_IP}:{self.sub_port}", "--user", USER,
                      "--password", PASSWORD, "--from", USER]
        else:
            target = ["--addr", f"127.0.0.1:{self.pf.port}", "--from", "sender@example.net"]
        t = time.time()
        r = subprocess.run([str(Path(self.bin).parent / "yubin-bench"), "smtp", *target,
                            "--to", OUT_USER, "--sessions", str(OUT_SESSIONS),
                            "--count", str(count), "--size", str(size)],
                           capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            raise SystemExit(f"submission to {who} failed: {r.stderr}")
        end = time.time() + 900
        while self.stored() < before + count:
            if time.time() > end:
                raise SystemExit(f"{who}: only {self.stored() - before} of {count} relayed")
            time.sleep(0.05)
        return count / (time.time() - t)

    def stop(self) -> None:
        if self.pf:
            self.pf.stop()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


class PostfixRelay:
    """Postfix from Debian relaying everything to one relayhost (opportunistic TLS), as a
    smarthost or outbound MTA is set up."""

    def __init__(self, base: Path, ip: str, port: int):
        self.dir = base / "postfix-relay"
        self.etc = self.dir / "etc"
        self.etc.mkdir(parents=True)
        self.port = free_port()
        (self.etc / "main.cf").write_text(f"""compatibility_level = 3.6
queue_directory = {self.dir}/queue
data_directory = {self.dir}/data
maillog_file = {self.dir}/maillog
maillog_file_prefixes = {self.dir}
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.postfix.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relayhost = [{ip}]:{port}
smtp_tls_security_level = may
smtpd_relay_restrictions = permit_mynetworks, reject
message_size_limit = 52428800
""")
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            f = line.split()
            if line and not line[0].isspace() and not line.startswith("#") and len(f) >= 8:
                f[4] = "n"
                if f[0] == "smtp" and f[1] == "inet":
                    f[0] = f"127.0.0.1:{self.port}"
                line = " ".join(f)
            lines.append(line)
        (self.etc / "master.cf").write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        (self.dir / "queue").mkdir(exist_ok=True)
        for args in (("post-install", "create-missing"), ("start",)):
            r = subprocess.run(["/usr/sbin/postfix", "-c", str(self.etc), *args],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"postfix {' '.join(args)} failed: {r.stderr}")
        wait_port_at("127.0.0.1", self.port, None, "postfix relay")

    def stop(self) -> None:
        subprocess.run(["/usr/sbin/postfix", "-c", str(self.etc), "stop"], capture_output=True)


def wait_port_at(ip: str, port: int, proc, what: str, timeout: float = 30) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what} exited")
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {ip}:{port}")


def imap_count_at(ip: str, port: int, user: str) -> int:
    import imaplib
    m = imaplib.IMAP4(ip, port)
    m.login(user, PASSWORD)
    typ, data = m.status("INBOX", "(MESSAGES)")
    m.logout()
    return int(data[0].split(b"MESSAGES ")[1].rstrip(b")"))


def table(ours: dict, theirs: dict, title: str) -> str:
    lines = [f"### {title}", "",
             "| row | yubin | reference | yubin / reference | better is |",
             "|---|---:|---:|---:|---|"]
    for name, unit, bigger in ROWS:
        if name not in ours:
            continue
        a, b = ours[name], theirs.get(name)
        ratio = "n/a" if b is None else f"{a / b:.2f}" if b else "-"
        fmt = (lambda v: f"{v:.0f} {unit}") if bigger else (lambda v: f"{v:.3g} {unit}")
        lines.append(f"| {name} | {fmt(a)} | {'' if b is None else fmt(b)} | {ratio} | "
                     f"{'higher' if bigger else 'lower'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: proves the harness works")
    ap.add_argument("--messages", type=int, default=100_000, help="messages in the IMAP mailbox")
    ap.add_argument("--size", type=int, default=4096, help="bytes per message")
    ap.add_argument("--clients", type=int, default=50, help="clients of the mixed IMAP load")
    ap.add_argument("--seconds", type=int, default=30, help="seconds of mixed IMAP load")
    ap.add_argument("--idle", type=int, default=10_000,
                    help="idle IMAP connections for the memory row (0: skip it)")
    ap.add_argument("--pop3-clients", type=int, default=20, help="POP3 clients, one maildrop each")
    ap.add_argument("--pop3-messages", type=int, default=1000, help="messages per POP3 maildrop")
    ap.add_argument("--smtp-small", type=int, default=20_000, help="4 KiB messages per SMTP row")
    ap.add_argument("--smtp-large", type=int, default=2_000, help="256 KiB messages per SMTP row")
    ap.add_argument("--smtp-rounds", type=int, default=3,
                    help="times each SMTP row runs per server, alternating; the median counts")
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"),
                    help="where yubin and yubin-bench are (built by bench/run)")
    ap.add_argument("--outbound-small", type=int, default=5_000,
                    help="4 KiB messages of the outbound row")
    ap.add_argument("--outbound-large", type=int, default=500,
                    help="256 KiB messages of the outbound row")
    ap.add_argument("--only", default="imap,stress,pop3,smtp,outbound",
                    help="comma-separated areas to run (imap, stress, pop3, smtp); the table "
                         "says which")
    ap.add_argument("--stress-seconds", type=int, default=20,
                    help="seconds of each login-heavy stress row (10 and 50 clients)")
    ap.add_argument("--out", help="Markdown result file (default bench/results/<date>.md)")
    args = ap.parse_args()
    if args.smoke:
        args.messages, args.clients, args.seconds, args.pop3_clients, args.pop3_messages = 60, 3, 1, 2, 10
        args.idle = 20
        args.smtp_small, args.smtp_large, args.smtp_rounds = 20, 4, 1
        args.stress_seconds = 1
        args.outbound_small, args.outbound_large = 10, 2

    areas = set(args.only.split(","))
    if areas - {"imap", "stress", "pop3", "smtp", "outbound"}:
        ap.error("--only takes imap, stress, pop3, smtp and outbound")
    if "imap" not in areas:
        args.messages = 0
    if "pop3" not in areas:
        args.pop3_clients = 0
    bin_dir = Path(args.bin_dir)
    have_dovecot = os.path.exists("/usr/sbin/dovecot") and os.geteuid() == 0
    if not have_dovecot:
        log("Dovecot is not installed or this is not root: measuring yubin alone "
            "(bench/run installs Dovecot when run as root)")
    base = Path(tempfile.mkdtemp(prefix="yubin-bench-"))
    y = Yubin(base, bin_dir)
    d = Dovecot(base) if have_dovecot else None
    have_source = os.path.exists("/usr/sbin/smtp-source")
    pf = Postfix(base) if have_source and os.geteuid() == 0 else None
    if not have_source:
        log("smtp-source (Debian postfix) is missing: no SMTP rows")
    ours, theirs, hashed = {}, {}, {}
    try:
        log(f"generating {args.messages} messages of {args.size} bytes")
        msgs = [message(i, args.size) for i in range(1, args.messages + 1)]
        pop_users = [f"pop{k}@{DOMAIN}" for k in range(args.pop3_clients)]
        pop_msgs = [message(i, args.size) for i in range(1, args.pop3_messages + 1)]
        y.start([USER, f"smtp@{DOMAIN}", STRESS_USER, *pop_users])
        if msgs:
            log("importing into yubin over SMTP (10 sessions)")
            ours["smtp_import"] = smtp_import(y.smtp_port, msgs, 10)
            log(f"  {ours['smtp_import']:.0f} msg/s")
        if pop_users:
            smtp_import(y.smtp_port, pop_msgs, 10, pop_users)
        if d:
            log("importing into Dovecot (Maildir files)")
            d.import_files(STRESS_PLAIN, [])
            d.import_files(STRESS_HASHED, [])
            d.import_files(USER, msgs)
            for u in pop_users:
                d.import_files(u, pop_msgs)
            d.start()
        del msgs, pop_msgs
        for name, server, user, store in (("yubin", y, USER, ours), ("dovecot", d, USER, theirs)):
            if server is None:
                continue
            if "imap" in areas:
                log(f"IMAP against {name}")
                warm_up(server.imap_port, user)
                settle(server)
                store.update(run_imap(str(bin_dir / "yubin-bench"), server, user,
                                      args.clients, args.seconds))
            if "imap" in areas and args.idle:
                # A fresh process, so memory freed by the loads above is not reused here.
                server.stop()
                server.serve() if server is y else server.start()
                log(f"IMAP {args.idle} idle connections against {name}")
                store["idle_rss"] = idle_memory(str(bin_dir / "yubin-bench"), server, user,
                                                args.idle)
            if "stress" in areas:
                accounts = [(STRESS_USER, store)] if server is y else [
                    (STRESS_PLAIN, store), (STRESS_HASHED, hashed)]
                for clients in STRESS_CLIENTS:
                    for account, into in accounts:
                        settle(server)
                        log(f"stress, {clients} clients logging in all the time, against "
                            f"{name} as {account}")
                        r = run_stress(str(bin_dir / "yubin-bench"), server.imap_port, account,
                                       clients, args.stress_seconds)
                        for k, v in r.items():
                            into[f"stress_{clients}{k}"] = v
                        log(f"  {r['']:.0f} cmd/s, LOGIN p50 {r['_login_p50']} ms, "
                            f"{r['_errors']:.0f} protocol errors")
            if "pop3" in areas:
                log(f"POP3 against {name}")
                store["pop3"] = pop3_fetch_all(str(bin_dir / "yubin-bench"), server.pop3_port,
                                               pop_users)
        if have_source and "smtp" in areas:
            if pf:
                pf.start()
            servers = [("yubin", y, y.smtp_port, lambda: imap_count(y.imap_port, f"smtp@{DOMAIN}"),
                        ours)]
            if pf:
                servers.append(("postfix", pf, pf.port, pf.stored, theirs))
            # Each row runs in turn against each server, several times, and the median
            # counts: the disk of these VMs drifts (the same binary measured 900 and 1,500
            # 256 KiB msg/s minutes apart), and one run per server, minutes apart, compared
            # the drift more than the servers. Before each run the machine settles, so
            # neither server pays for the other's leftover work.
            for row, sessions, size in SMTP_ROWS:
                count = args.smtp_small if size <= 4096 else args.smtp_large
                runs: dict = {name: [] for name, *_ in servers}
                for k in range(args.smtp_rounds):
                    for name, server, port, stored, _ in servers:
                        settle(server)
                        log(f"SMTP {row} against {name} ({k + 1}/{args.smtp_rounds}): "
                            f"{count} messages")
                        runs[name].append(smtp_source(port, sessions, count, size, stored,
                                                      stored()))
                for name, *_, store in servers:
                    store[row] = sorted(runs[name])[len(runs[name]) // 2]
                log(f"  {row}: " + ", ".join(f"{n} {' '.join(f'{r:.0f}' for r in v)} msg/s"
                                             for n, v in runs.items()))
        if "outbound" in areas and shutil.which("dnsmasq"):
            y.stop()
            if pf:
                pf.stop()
            if d:
                d.stop()
            ob = Outbound(base, bin_dir)
            try:
                ob.start(with_postfix=pf is not None)
                for row, count, size in (("outbound_4k", args.outbound_small, 4096),
                                         ("outbound_256k", args.outbound_large, 262144)):
                    senders = [("yubin", ours)] + ([("postfix", theirs)] if ob.pf else [])
                    for who, store in senders:
                        log(f"outbound {row} from {who}: {count} messages to another yubin")
                        store[row] = ob.run(who, count, size)
                        log(f"  {store[row]:.0f} msg/s")
            finally:
                ob.stop()
    finally:
        y.stop()
        if pf:
            pf.stop()
        if d:
            d.stop()
        shutil.rmtree(base, ignore_errors=True)

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = "\n".join([
        f"## {when}{' (smoke: sizes too small to mean anything)' if args.smoke else ''}", "",
        f"{args.messages} messages of {args.size} bytes; mixed load {args.clients} clients for "
        f"{args.seconds}s; POP3 {args.pop3_clients} clients x {args.pop3_messages} messages; yubin SMTP import "
        f"{ours.get('smtp_import', 0):.0f} msg/s; areas: {args.only}. SMTP rows: smtp-source, {args.smtp_small} × 4 KiB and "
        f"{args.smtp_large} × 256 KiB per row, 10 or 50 sessions, timed until the last message "
        "is in the mailbox. Outbound rows: 20 submission sessions into the sender, timed until a "
        "second yubin has the last message; the reference is Postfix relaying to it.", "",
        "Reference: Dovecot (Maildir, mail_fsync=always) for IMAP and POP3; Postfix delivering "
        "into Dovecot's Maildir with virtual(8) for SMTP.", "",
        table(ours, theirs, "yubin vs reference"), "",
        stress_table(ours, theirs, hashed) if "stress" in areas else "", ""])
    print(report)
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / (
        datetime.date.today().isoformat() + ".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(report + "\n")
    log(f"table written to {out}")


if __name__ == "__main__":
    main()
