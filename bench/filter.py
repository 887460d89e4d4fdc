#!/usr/bin/env python3
"""Throughput of the judgement of inbound mail (issue 18): the same SMTP load (Postfix's
smtp-source, 4 KiB messages, 10 sessions) against yubin with its checks off (loopback is
trusted), yubin with every check on (SPF, DKIM, DMARC against a local dnsmasq, a DNS
blocklist, content rules, the classifier and ClamAV's clamd), and Postfix with Rspamd
(Debian's, as a milter, with its antivirus module asking the same clamd) — side by side in
one run, several rounds each, medians. Both scan attachments, not text (Rspamd's default,
yubin's `clamd_scan = "attachments"`). Run as root (Postfix and Rspamd need it):

    python3 bench/filter.py [--count 2000] [--rounds 3]
"""

import argparse
import grp
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the main benchmark's servers and load tools)

ROOT = Path(__file__).resolve().parents[1]
SENDER_DOMAIN = "example.net"  # smtp-source's sender@example.net


def wait_tcp(port: int, what: str, proc=None, timeout: float = 60):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what} exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not listen on {port}")


class Dns:
    """SPF and DMARC for smtp-source's sender domain, a blocklist zone, NXDOMAIN for the rest."""

    def __init__(self):
        self.port = bench.free_port()
        self.proc = subprocess.Popen(
            ["dnsmasq", "--keep-in-foreground", "--pid-file=", "--no-resolv", "--no-hosts",
             "--conf-file=/dev/null", "--listen-address=127.0.0.1", "--bind-interfaces",
             f"--port={self.port}", "--local=/#/",
             # Authoritative for the zones asked about, as the internet's servers are:
             # answers carry a TTL and "no such name" carries the zone's SOA (RFC 2308),
             # so resolvers cache both (dnsmasq's local answers have TTL 0 and no SOA).
             "--auth-server=ns.bench.test,127.0.0.1", f"--auth-zone={SENDER_DOMAIN.rsplit('.', 1)[-1]}", "--auth-zone=bl.bench.test",
             "--auth-ttl=300", "--auth-soa=1,hostmaster.bench.test",
             f"--txt-record={SENDER_DOMAIN},v=spf1 ip4:127.0.0.1 -all",
             f"--txt-record=_dmarc.{SENDER_DOMAIN},v=DMARC1; p=none",
             "--txt-record=client.example.net,v=spf1 ip4:127.0.0.1 -all"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise SystemExit(f"dnsmasq: {self.proc.stderr.read().decode()}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Clamd:
    """clamd with a signature database made here (one MD5 signature; no download)."""

    def __init__(self, d: Path):
        d.mkdir(parents=True)
        os.chmod(d, 0o777)
        (d / "db").mkdir()
        (d / "sample").write_bytes(b"a file only this benchmark has\n")
        sig = subprocess.run(["sigtool", "--md5", "sample"], cwd=d, capture_output=True, check=True)
        (d / "db" / "bench.hdb").write_bytes(sig.stdout)
        self.sock = d / "clamd.sock"
        conf = d / "clamd.conf"
        conf.write_text(f"Foreground yes\nLocalSocket {self.sock}\nLocalSocketMode 666\n"
                        f"DatabaseDirectory {d / 'db'}\nLogFile {d / 'clamd.log'}\n"
                        f"PidFile {d / 'clamd.pid'}\nMaxThreads 20\n")
        self.proc = subprocess.Popen(["clamd", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        end = time.time() + 60
        while not self.sock.exists():
            if time.time() > end or self.proc.poll() is not None:
                raise SystemExit("clamd did not start")
            time.sleep(0.2)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Rspamd:
    """Debian's rspamd with its shipped configuration, run privately: the milter proxy
    scanning itself, DNS through the benchmark's dnsmasq, the antivirus module on clamd."""

    def __init__(self, d: Path, dns_port: int, clamd_sock: Path):
        self.d = d
        local = d / "local.d"
        local.mkdir(parents=True)
        for sub in ("db", "run", "log"):
            (d / sub).mkdir()
        self.port = bench.free_port()
        normal, controller = bench.free_port(), bench.free_port()
        (local / "worker-proxy.inc").write_text(
            f'bind_socket = "127.0.0.1:{self.port}";\nmilter = yes;\ntimeout = 120s;\n'
            'upstream "local" { default = yes; self_scan = yes; }\ncount = 2;\n')
        (local / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{normal}";\n')
        (local / "worker-controller.inc").write_text(f'bind_socket = "127.0.0.1:{controller}";\n')
        (local / "options.inc").write_text(f'dns {{ nameserver = ["127.0.0.1:{dns_port}"]; }}\n')
        (local / "logging.inc").write_text(f'type = "file";\nfilename = "{d}/log/rspamd.log";\nlevel = "error";\n')
        (local / "antivirus.conf").write_text(
            # Rspamd's defaults otherwise: attachments are scanned, text parts are not —
            # as yubin's clamd_scan = "attachments".
            f'clamav {{ type = "clamav"; symbol = "CLAM_VIRUS"; action = "reject"; '
            f'servers = "{clamd_sock}"; }}\n')
        uid, gid = pwd.getpwnam("_rspamd").pw_uid, grp.getgrnam("_rspamd").gr_gid
        for p in [d, *d.rglob("*")]:
            os.chown(p, uid, gid)
        self.proc = subprocess.Popen(
            ["rspamd", "-f", "-u", "_rspamd", "-g", "_rspamd", "-c", "/etc/rspamd/rspamd.conf",
             f"--var=LOCAL_CONFDIR={d}", f"--var=DBDIR={d}/db", f"--var=RUNDIR={d}/run",
             f"--var=LOGDIR={d}/log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_tcp(self.port, "rspamd", self.proc)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def quiet(limit: float = 120) -> None:
    """Wait until the machine is idle (under 15 % of a core for a second): the server
    timed before may still be working off its last round (yubin indexes new mail for
    search in the background, Postfix delivers its queue), and that work must not be
    charged to the next one."""
    os.sync()
    end = time.time() + limit
    while time.time() < end:
        busy = bench.machine_busy_seconds()
        time.sleep(1)
        if bench.machine_busy_seconds() - busy < 0.15:
            return
    print(f"  machine still busy after {limit:.0f} s; timing anyway", file=sys.stderr)


def yubin_server(base: Path, name: str, extra: str) -> bench.Yubin:
    d = base / name
    d.mkdir()
    y = bench.Yubin(d, ROOT / "target" / "release")
    y.config.write_text(y.config.read_text() + extra)
    y.start([f"smtp@{bench.DOMAIN}"])
    return y


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=10)
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="yubin-filter-bench-"))
    os.chmod(base, 0o755)
    dns = Dns()
    clamd = Clamd(base / "clamd")
    stop = [dns.stop, clamd.stop]
    try:
        off = yubin_server(base, "yubin-off", "")
        stop.append(off.stop)
        on = yubin_server(base, "yubin-on", (
            "[filter]\ncheck_local = true\n"
            f'dns_servers = ["127.0.0.1:{dns.port}"]\n'
            f'clamd = "{clamd.sock}"\n'
            '[[filter.dnsbl]]\nzone = "bl.bench.test"\n'))
        stop.append(on.stop)
        servers = [
            ("yubin, checks off", off.smtp_port, lambda y=off: bench.imap_count(y.imap_port, f"smtp@{bench.DOMAIN}")),
            ("yubin, every check on", on.smtp_port, lambda y=on: bench.imap_count(y.imap_port, f"smtp@{bench.DOMAIN}")),
        ]
        if os.geteuid() == 0 and shutil.which("rspamd") and os.path.exists("/usr/sbin/smtp-source"):
            rs = Rspamd(base / "rspamd", dns.port, clamd.sock)
            stop.append(rs.stop)
            pf = bench.Postfix(base)
            main_cf = pf.etc / "main.cf"
            main_cf.write_text(main_cf.read_text() + (
                f"smtpd_milters = inet:127.0.0.1:{rs.port}\n"
                "milter_default_action = tempfail\nmilter_protocol = 6\n"))
            pf.start()
            stop.append(pf.stop)
            servers.append(("postfix + rspamd + clamav", pf.port, pf.stored))
        else:
            print("postfix + rspamd: skipped (needs root, rspamd and smtp-source)")
        rates = {name: [] for name, *_ in servers}
        for _ in range(a.rounds):
            for name, port, stored in servers:
                quiet()
                before = stored()
                rates[name].append(bench.smtp_source(port, a.sessions, a.count, 4096, stored, before))
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"SMTP, {a.count} × 4 KiB over {a.sessions} sessions, median of {a.rounds} rounds (msg/s):")
        for k, v in med.items():
            print(f"  {k:<28} {v:8.0f}   ({', '.join(f'{x:.0f}' for x in rates[k])})")
        on_ = med["yubin, every check on"]
        print(f"checks on / off: {on_ / med['yubin, checks off']:.2f}×")
        if "postfix + rspamd + clamav" in med:
            print(f"yubin with checks / postfix + rspamd + clamav: {on_ / med['postfix + rspamd + clamav']:.2f}×")
    finally:
        for f in reversed(stop):
            try:
                f()
            except Exception as e:  # keep stopping the others
                print(f"stop: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
