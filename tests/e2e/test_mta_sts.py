"""MTA-STS (RFC 8461) and REQUIRETLS (RFC 8689) between two yubin instances, with MX and
TXT records from dnsmasq, certificates from a CA the test makes with openssl, and the
recipient's policy served over HTTPS by the test (Python's http.server and ssl):

- b.test, policy enforce, MX certificate valid: delivered, and the log says under what;
- c.test, policy enforce, MX certificate for another name: refused before any mail goes,
  kept in the queue with the policy named in the reason;
- d.test, policy enforce, the MX not in the policy: not even tried;
- REQUIRETLS to b.test goes (verified by MTA-STS, B offers REQUIRETLS), to plain.test
  (no policy) it bounces with 5.7.30;
- B serves its own policy on [listen] mta_sts, read back with http.client, and
  `yubin domain dkim` prints the records that announce it."""

import email
import email.policy
import gzip
import json
import http.client
import http.server
import smtplib
import ssl
import subprocess
import threading
import time

import pytest

from conftest import PASSWORD, free_port
from test_outbound import A_IP, B_IP, DNS_IP, ctx, wait_for

POLICY_IP = "127.0.0.5"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


GOOD_NAMES = "DNS:mx.b.test,DNS:mx.d.test,DNS:mta-sts.b.test,DNS:mta-sts.c.test,DNS:mta-sts.d.test"


def make_certs(d, good_names=GOOD_NAMES):
    """A CA, a certificate it signs for the MX and policy hosts, and one for a wrong name."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=yubin test CA", cwd=d)
    for name, sans in (("good", good_names),
                       ("wrong", "DNS:somewhere.else.test")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(f"subjectAltName={sans}\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture
def sts_dns(tmp_path):
    port = free_port()
    proc = subprocess.Popen([
        "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
        f"--listen-address={DNS_IP}", "--bind-interfaces", f"--port={port}",
        "--mx-host=a.test,mx.a.test,10", f"--host-record=mx.a.test,{A_IP}",
        "--mx-host=b.test,mx.b.test,10", f"--host-record=mx.b.test,{B_IP}",
        "--mx-host=c.test,mx.c.test,10", f"--host-record=mx.c.test,{B_IP}",
        "--mx-host=d.test,mx.d.test,10", f"--host-record=mx.d.test,{B_IP}",
        "--mx-host=plain.test,mx.b.test,10",
        "--txt-record=_mta-sts.b.test,v=STSv1; id=1",
        "--txt-record=_mta-sts.c.test,v=STSv1; id=1",
        "--txt-record=_mta-sts.d.test,v=STSv1; id=1",
        f"--host-record=mta-sts.b.test,{POLICY_IP}",
        f"--host-record=mta-sts.c.test,{POLICY_IP}",
        f"--host-record=mta-sts.d.test,{POLICY_IP}",
        "--txt-record=_smtp._tls.b.test,v=TLSRPTv1; rua=mailto:tlsrpt@b.test",
        "--txt-record=_smtp._tls.c.test,v=TLSRPTv1; rua=mailto:tlsrpt@b.test",
    ], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)
    assert proc.poll() is None, proc.stderr.read().decode()
    yield port
    proc.terminate()
    proc.wait()


POLICIES = {
    "mta-sts.b.test": "version: STSv1\r\nmode: enforce\r\nmx: mx.b.test\r\nmax_age: 86400\r\n",
    "mta-sts.c.test": "version: STSv1\r\nmode: enforce\r\nmx: mx.c.test\r\nmax_age: 86400\r\n",
    "mta-sts.d.test": "version: STSv1\r\nmode: enforce\r\nmx: mx.elsewhere.test\r\nmax_age: 86400\r\n",
}


def policy_server(d, port):
    fetched = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            host = self.headers.get("Host", "").split(":")[0]
            body = POLICIES.get(host)
            fetched.append((host, self.path))
            if self.path != "/.well-known/mta-sts.txt" or body is None:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer((POLICY_IP, port), H)
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    c.load_cert_chain(d / "good.pem", d / "good.key")
    srv.socket = c.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, fetched


def test_mta_sts_enforce_and_requiretls(make_server, sts_dns, tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(certs)
    https_port, smtp_port, own_port = free_port(), free_port(), free_port()
    srv, fetched = policy_server(certs, https_port)
    queue = (f"[queue]\ndns_servers = [\"{DNS_IP}:{sts_dns}\"]\nremote_port = {smtp_port}\n"
             f"retry_seconds = [1]\nmta_sts_port = {https_port}\ntls_ca_file = \"{certs / 'ca.pem'}\"\n"
             "tls_report_seconds = 4\n")
    a = make_server(domain="a.test", ip=A_IP, port=smtp_port, hostname="mx.a.test", extra=queue)
    b_tls = f"[tls]\ncert = \"{certs / 'good.pem'}\"\nkey = \"{certs / 'good.key'}\"\n"
    b = make_server(domain="b.test", ip=B_IP, port=smtp_port, hostname="mx.b.test",
                    extra=b_tls + f"[mta_sts]\nmode = \"enforce\"\n")
    # B's own policy host, beside its mail ports.
    b.config.write_text(b.config.read_text().replace("[listen]\n", f"[listen]\nmta_sts = [\"{B_IP}:{own_port}\"]\n"))
    b.cli("domain", "add", "plain.test")
    b.add_user("carol@plain.test")
    b.add_user("tlsrpt@b.test")
    a.start()
    b.start()

    def send(to, subject, options=()):
        with smtplib.SMTP(A_IP, a.submission_port, timeout=30) as s:
            s.starttls(context=ctx())
            s.login("bob@a.test", PASSWORD)
            return s.sendmail("bob@a.test", [to], f"From: bob@a.test\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nsecure\r\n".encode(),
                              mail_options=list(options))

    # 1. Enforce, valid certificate: delivered.
    assert send("carol@b.test", "sts ok") == {}
    assert wait_for(lambda: len(b.uids("carol@b.test")) == 1, timeout=30), a.log_text()[-3000:]
    assert ("mta-sts.b.test", "/.well-known/mta-sts.txt") in fetched
    log = a.log_text()
    assert "MTA-STS enforce" in log and "verified=true" in log, log[-3000:]

    # 2. Enforce, certificate for another name: the message waits, the reason names the policy.
    c_srv = None
    b.stop()
    b.config.write_text(b.config.read_text().replace("good.pem", "wrong.pem").replace("good.key", "wrong.key"))
    b.start()
    assert send("carol@c.test", "sts wrong cert") == {}
    assert wait_for(lambda: "certificate not valid" in a.cli("queue", "list").stdout.decode(), timeout=30), \
        (a.cli("queue", "list").stdout, a.log_text()[-3000:])
    listing = a.cli("queue", "list").stdout.decode()
    assert "MTA-STS enforce" in listing, listing
    # And b.test too, now that B's certificate is wrong: nothing goes out in the clear.
    assert send("carol@b.test", "sts now wrong") == {}
    time.sleep(3)
    assert len(b.uids("carol@b.test")) == 1, "delivered over a certificate the policy refuses"
    b.stop()
    b.config.write_text(b.config.read_text().replace("wrong.pem", "good.pem").replace("wrong.key", "good.key"))
    b.start()

    # 3. The MX is not in the policy: not tried.
    assert send("carol@d.test", "sts wrong mx") == {}
    assert wait_for(lambda: "matches its MTA-STS policy" in a.cli("queue", "list").stdout.decode(), timeout=30), \
        a.cli("queue", "list").stdout

    # 4. REQUIRETLS: to b.test (verified by MTA-STS) it goes, to plain.test it bounces.
    assert wait_for(lambda: len(b.uids("carol@b.test")) == 2, timeout=30), a.cli("queue", "list").stdout
    assert send("carol@b.test", "requiretls ok", ["REQUIRETLS"]) == {}
    assert wait_for(lambda: len(b.uids("carol@b.test")) == 3, timeout=30), (a.cli("queue", "list").stdout, a.log_text()[-2000:])
    before = len(a.uids("bob@a.test"))
    assert send("carol@plain.test", "requiretls refused", ["REQUIRETLS"]) == {}
    assert wait_for(lambda: len(a.uids("bob@a.test")) == before + 1, timeout=30), a.log_text()[-2000:]
    report = a.cat("bob@a.test", a.uids("bob@a.test")[-1])
    assert b"5.7.30" in report and b"REQUIRETLS" in report, report[-1500:]
    assert len(b.uids("carol@plain.test")) == 0
    # REQUIRETLS without TLS is refused at MAIL (B, on its plain port).
    with smtplib.SMTP(B_IP, b.port, timeout=30) as s:
        s.ehlo()
        assert not s.has_extn("requiretls")
        assert s.mail("x@a.test", ["REQUIRETLS"])[0] == 530

    # 5. B's own policy, and the records that announce it.
    tls = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    tls.check_hostname = False
    conn = http.client.HTTPSConnection(B_IP, own_port, context=tls, timeout=10)
    conn.request("GET", "/.well-known/mta-sts.txt", headers={"Host": "mta-sts.b.test"})
    r = conn.getresponse()
    body = r.read().decode()
    assert r.status == 200 and r.getheader("Content-Type") == "text/plain"
    assert body == "version: STSv1\r\nmode: enforce\r\nmx: mx.b.test\r\nmax_age: 604800\r\n", body
    conn.request("GET", "/.well-known/mta-sts.txt", headers={"Host": "mta-sts.unknown.test"})
    r = conn.getresponse()
    r.read()
    assert r.status == 404
    records = b.cli("domain", "dkim", "b.test").stdout.decode()
    assert '_mta-sts.b.test. IN TXT "v=STSv1; id=' in records
    assert '_smtp._tls.b.test. IN TXT "v=TLSRPTv1; rua=mailto:' in records

    # 6. TLS reports (RFC 8460) from A: JSON, gzipped, in multipart/report mail, for b.test
    # (successes under its policy) and c.test (the certificate that did not match).
    def reports():
        out = {}
        for raw in b.messages("tlsrpt@b.test"):
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "tlsrpt"
            part = next(p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip")
            assert part.get_filename().endswith(".json.gz")
            r = json.loads(gzip.decompress(part.get_content()))
            out.setdefault(msg["TLS-Report-Domain"], []).append((msg, r))
        return out

    assert wait_for(lambda: {"b.test", "c.test"} <= set(reports()), timeout=60), (
        reports().keys(), a.log_text()[-2000:])
    got = reports()
    msg, r = got["b.test"][0]
    assert msg["TLS-Report-Submitter"] == "mx.a.test"
    assert r["organization-name"] == "mx.a.test" and r["date-range"]["start-datetime"].endswith("Z")
    p = r["policies"][0]
    assert p["policy"]["policy-type"] == "sts" and p["policy"]["policy-domain"] == "b.test"
    assert p["policy"]["mx-host"] == ["mx.b.test"] and "mode: enforce" in p["policy"]["policy-string"]
    assert sum(x["policies"][0]["summary"]["total-successful-session-count"] for _, x in got["b.test"]) >= 1
    c_fail = [d for _, x in got["c.test"] for d in x["policies"][0].get("failure-details", [])]
    assert any(d["result-type"] == "certificate-host-mismatch" and d["receiving-mx-hostname"] == "mx.c.test"
               and d["receiving-ip"] == B_IP for d in c_fail), c_fail
    srv.shutdown()
