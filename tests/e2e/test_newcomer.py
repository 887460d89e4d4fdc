"""A newcomer's first ten minutes: the README's two commands, literally, in a fresh clone.

- The first command (a release build, then `serve --dev`) brings SMTP, IMAP and POP3 up.
- The second is what `.ci/run` runs.
- `.ci/install-deps` makes its Python venv with Debian's own python3 (PEP 668 forbids pip
  outside one there).
- The generated certificate names 127.0.0.1 and ::1: a client that trusts it connects by
  address without a name warning.
"""

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, YUBIN


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_starts_with_the_two_commands_ci_runs():
    cmds = readme_commands()
    assert len(cmds) == 2, cmds
    assert cmds[0].startswith("cargo run --release -- serve"), cmds
    assert cmds[1] == "bash scripts/test.sh"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^bash scripts/test\.sh$", ci, re.M), "CI runs the README's test command"


def clone(tmp_path: Path) -> Path:
    dest = tmp_path / "yubin"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(dest)], check=True, timeout=120)
    return dest


def answers(port: int, greeting: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            return s.recv(100).startswith(greeting)
    except OSError:
        return False


def test_readme_first_command_in_a_fresh_clone(tmp_path):
    """The literal first command. Its release build is the slow part (about 15 minutes on
    2 cores the first time; CARGO_TARGET_DIR keeps it between runs on one machine)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    repo = clone(tmp_path)
    env = {**os.environ, "CARGO_TARGET_DIR": str(ROOT / "target" / "readme-clone")}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(readme_commands()[0], shell=True, cwd=repo, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 45 * 60
        while not (answers(10025, b"220") and answers(10143, b"* OK") and answers(10110, b"+OK")):
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(2)
        out = (tmp_path / "serve.log").read_text()
        assert "admin login:" in out and "SHA-256:" in out, out[-3000:]
        assert (repo / "yubin.toml").exists() and (repo / "data").is_dir()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_serve_dev_listens_on_loopback_unprivileged_ports(tmp_path):
    proc = subprocess.Popen([YUBIN, "--config", str(tmp_path / "yubin.toml"), "serve", "--dev"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (answers(10025, b"220") and answers(10143, b"* OK") and answers(10110, b"+OK")
                   and answers(10587, b"220")):
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert "IMAP        port 10143 (STARTTLS), 10993 (TLS)" in out, out
    # One log line per listener.
    assert out.count('proto="imap"') == 1, out


def test_nothing_is_written_when_the_ports_cannot_be_had(tmp_path):
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 10025))
        busy.listen()
        r = subprocess.run([YUBIN, "--config", str(tmp_path / "yubin.toml"), "serve", "--dev"],
                           cwd=tmp_path, capture_output=True, timeout=30)
    assert r.returncode == 1 and b"cannot listen for smtp on 127.0.0.1:10025" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == [], "no config, no data directory"


def test_certificate_names_loopback_addresses(make_server):
    y = make_server(users=False)
    cert = y.dir / "data" / "tls" / "cert.pem"
    text = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, check=True).stdout.decode()
    assert "IP Address:127.0.0.1" in text and "IP Address:0:0:0:0:0:0:0:1" in text, text
    y.start()
    ctx = ssl.create_default_context(cafile=str(cert))  # checks the name too
    with socket.create_connection(("127.0.0.1", y.imaps_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.recv(100).startswith(b"* OK")
    first = y.cli("init").stdout.decode()
    assert "already initialized" in first


def test_install_deps_works_on_debians_own_python(tmp_path):
    system = Path("/usr/bin/python3")
    if not system.exists() or os.geteuid() != 0:
        pytest.skip("needs Debian's /usr/bin/python3 and root")
    probe = subprocess.run([str(system), "-m", "pip", "install", "--dry-run", "six"], capture_output=True)
    if b"externally-managed-environment" not in probe.stderr:
        pytest.skip("this python3 is not an externally managed (Debian) one")
    repo = clone(tmp_path)
    env = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # Debian's python3 first
    subprocess.run(["bash", ".ci/install-deps"], cwd=repo, env=env, check=True, timeout=900,
                   capture_output=True)
    cfg = (repo / ".venv" / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg, cfg
    r = subprocess.run([str(repo / ".venv" / "bin" / "python"), "-c", "import pytest, dkim"],
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    shutil.rmtree(repo)
