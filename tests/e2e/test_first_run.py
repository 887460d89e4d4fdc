"""What a new user meets: first run, config, certificates, clear start-up errors."""

import os
import re
import smtplib
import socket
import ssl
import subprocess
import tomllib

from conftest import DOMAIN, YUBIN, Yubin, free_port, wait_port


def run(*args, cwd, input=None, timeout=60):
    return subprocess.run([YUBIN, *args], cwd=cwd, capture_output=True, timeout=timeout,
                          input=input.encode() if input else None)


def test_init_in_empty_directory(tmp_path):
    r = run("init", "--domain", "First.Example", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "config:       yubin.toml" in out
    assert "domain:       first.example" in out
    m = re.search(r"admin login:  (\S+)\n  password:     (\S+)\n", out)
    assert m and m.group(1) == "admin@first.example" and len(m.group(2)) >= 16
    # The config written is the documented example, with this host's name filled in.
    cfg = tomllib.loads((tmp_path / "yubin.toml").read_text())
    assert cfg["hostname"]
    assert "#max_message_size = 52428800" in (tmp_path / "yubin.toml").read_text()
    assert (tmp_path / "data" / "yubin.db").exists()
    key = tmp_path / "data" / "tls" / "key.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    x509 = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "data/tls/cert.pem"), "-noout", "-ext",
                           "subjectAltName"], capture_output=True, text=True)
    assert "first.example" in x509.stdout and "localhost" in x509.stdout
    # The admin exists and receives postmaster mail; a second init changes nothing.
    assert "admin@first.example\tadmin" in run("user", "list", cwd=tmp_path).stdout.decode()
    assert "postmaster@first.example\tadmin@first.example" in run("alias", "list", cwd=tmp_path).stdout.decode()
    r = run("init", cwd=tmp_path)
    assert r.returncode == 0 and "already initialized" in r.stdout.decode()


def test_serve_first_run_prints_login(tmp_path):
    y = Yubin(tmp_path)  # writes a config with loopback ports; no data yet
    proc = subprocess.Popen([YUBIN, "--config", str(y.config), "serve", "--domain", DOMAIN],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port(y.port, proc)
        with smtplib.SMTP("127.0.0.1", y.port, timeout=10) as s:
            assert s.sendmail("a@remote.example", [f"admin@{DOMAIN}"], b"Subject: hi\r\n\r\nx\r\n") == {}
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0].decode()
    assert proc.returncode == 0, out
    assert f"admin login:  admin@{DOMAIN}" in out and "password:" in out
    assert y.uids(f"admin@{DOMAIN}") == [1]


def test_port_in_use_is_a_clear_error(make_server):
    y = make_server(users=False)
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", y.port))
        busy.listen()
        r = subprocess.run([YUBIN, "--config", str(y.config), "serve"], capture_output=True, timeout=30)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert f"cannot listen for smtp on 127.0.0.1:{y.port}" in err, err
    assert "smtp = []" in err


def test_second_server_on_same_data_refused(server):
    r = subprocess.run([YUBIN, "--config", str(server.config), "serve"], capture_output=True, timeout=30)
    assert r.returncode == 1
    assert b"in use by another running yubin server" in r.stderr


def test_config_errors_are_clear(tmp_path):
    (tmp_path / "yubin.toml").write_text("[smtp]\nmax_mesage_size = 10\n")
    r = run("serve", cwd=tmp_path)
    assert r.returncode == 1
    assert b"invalid config file" in r.stderr and b"max_mesage_size" in r.stderr
    r = run("user", "list", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert r.returncode == 1 and b"yubin init" in r.stderr


def test_help_everywhere():
    for args in (["--help"], ["serve", "--help"], ["user", "--help"], ["user", "add", "--help"],
                 ["domain", "--help"], ["alias", "--help"], ["mail", "--help"], ["init", "--help"]):
        r = subprocess.run([YUBIN, *args], capture_output=True, timeout=30)
        assert r.returncode == 0 and b"Usage:" in r.stdout, args


def test_user_supplied_certificate(make_server, tmp_path):
    cert, key = tmp_path / "own-cert.pem", tmp_path / "own-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-subj", "/CN=own.example.test", "-addext", "subjectAltName=DNS:own.example.test",
                    "-days", "2", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = make_server(extra=f'[tls]\ncert = "{cert}"\nkey = "{key}"\n').start()
    ctx = ssl.create_default_context(cafile=str(cert))  # the chain must verify against it
    ctx.check_hostname = False  # we connect by IP address
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
        s.ehlo()
        s.starttls(context=ctx)
        assert s.sock.version() in ("TLSv1.3", "TLSv1.2")
        served = s.sock.getpeercert(binary_form=True)
    assert served == ssl.PEM_cert_to_DER_cert(cert.read_text())


def test_tls_versions(server):
    for flag, ok in (("-tls1_3", True), ("-tls1_2", True), ("-tls1_1", False), ("-tls1", False)):
        # SECLEVEL=0 makes the client willing to offer old versions: the refusal is the server's.
        extra = [] if ok else ["-cipher", "DEFAULT@SECLEVEL=0"]
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-starttls", "smtp",
                            flag, "-brief", *extra], input=b"QUIT\r\n", capture_output=True, timeout=30)
        out = (r.stdout + r.stderr).decode(errors="replace")
        if ok:
            assert "CONNECTION ESTABLISHED" in out, (flag, out)
            assert f"Protocol version: {flag[1:].replace('tls', 'TLSv').replace('_', '.')}" in out, (flag, out)
        else:
            assert "CONNECTION ESTABLISHED" not in out, (flag, out)
            assert "alert protocol version" in out or "alert handshake failure" in out, (flag, out)


def test_graceful_shutdown(server):
    """SIGTERM: idle sessions get 421, a message being received is finished and stored."""
    import signal
    import time

    from test_bad_input import Raw

    idle = Raw(server.port)
    busy = Raw(server.port)
    busy.cmd(b"EHLO x.example\r\n")
    busy.sock.sendall(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    assert [busy.reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    busy.sock.sendall(b"Subject: in flight\r\n\r\nfirst half\r\n")
    server.proc.send_signal(signal.SIGTERM)
    idle.sock.settimeout(10)
    assert idle.line().startswith(b"421 4.3.2")
    time.sleep(0.2)
    assert server.proc.poll() is None, "waits for the message in flight"
    assert busy.cmd(b"second half\r\n.\r\n").startswith(b"250 2.0.0")
    assert busy.line().startswith(b"421 4.3.2")
    assert server.proc.wait(timeout=10) == 0
    server.proc = None
    assert server.cat("bob@example.test", 1).endswith(b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n")
