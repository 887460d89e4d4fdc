"""DANE for SMTP (RFC 7672) with a DNSSEC-signed test zone (ldns-keygen, ldns-signzone)
served by unbound on loopback, and yubin validating it from the zone's key as the trust
anchor. B's certificate comes from a CA the test makes with openssl:

- dane.test: TLSA 3 1 1 (DANE-EE, the SPKI's SHA-256) matches: delivered;
- ta.dane.test: TLSA 2 0 1 (DANE-TA, the CA's certificate) signs B's for its MX name: delivered;
- bad.dane.test: TLSA 3 1 1 that matches nothing: deferred, never sent, the reason names DANE;
- a TLS report for dane.test says policy-type tlsa (checked in the unit tests: the JSON)."""

import subprocess
import time

import pytest

from conftest import PASSWORD, free_port
from test_outbound import A_IP, B_IP, ctx, wait_for
from test_mta_sts import make_certs, openssl

import smtplib


def sh(cmd, cwd):
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, shell=True).stdout.decode().strip()


@pytest.fixture
def signed_zone(tmp_path):
    """Certificates, a signed zone for dane.test and an unbound serving it; yields
    (dns port, trust anchor file, certificate dir, SMTP port)."""
    d = tmp_path / "dane"
    d.mkdir()
    make_certs(d, "DNS:mx.dane.test,DNS:mx.ta.dane.test,DNS:mx.bad.dane.test")
    # B presents its certificate with the CA's after it (DANE-TA needs the TA in the chain).
    (d / "chain.pem").write_text((d / "good.pem").read_text() + (d / "ca.pem").read_text())
    spki = sh("openssl x509 -in good.pem -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1", d)
    ca = sh("openssl x509 -in ca.pem -outform DER | sha256sum | cut -d' ' -f1", d)
    port = free_port()
    (d / "dane.test.zone").write_text(f"""$ORIGIN dane.test.
$TTL 300
@ IN SOA ns.dane.test. admin.dane.test. 1 3600 600 86400 300
@ IN NS ns.dane.test.
ns IN A 127.0.0.1
@ IN MX 10 mx.dane.test.
mx IN A {B_IP}
_{port}._tcp.mx IN TLSA 3 1 1 {spki}
ta IN MX 10 mx.ta.dane.test.
mx.ta IN A {B_IP}
_{port}._tcp.mx.ta IN TLSA 2 0 1 {ca}
bad IN MX 10 mx.bad.dane.test.
mx.bad IN A {B_IP}
_{port}._tcp.mx.bad IN TLSA 3 1 1 {"00" * 32}
""")
    ksk = sh("ldns-keygen -a ECDSAP256SHA256 -k dane.test", d)
    zsk = sh("ldns-keygen -a ECDSAP256SHA256 dane.test", d)
    sh(f"ldns-signzone -n dane.test.zone {ksk} {zsk}", d)
    anchor = d / "anchor.key"
    # Both keys: hickory asks the parent for DS records unless every key of the DNSKEY
    # set is an anchor, and this zone has no parent to ask.
    anchor.write_text((d / f"{ksk}.key").read_text() + (d / f"{zsk}.key").read_text())
    dns = free_port()
    (d / "unbound.conf").write_text(f"""server:
    interface: 127.0.0.1@{dns}
    port: {dns}
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{d}"
    pidfile: ""
    use-syslog: no
    logfile: "{d}/unbound.log"
    verbosity: 1
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    do-not-query-localhost: no
    # unbound answers NXDOMAIN for the special-use name test. (RFC 6761) unless told not to.
    local-zone: "test." nodefault
auth-zone:
    name: "dane.test."
    zonefile: "{d}/dane.test.zone.signed"
    for-downstream: yes
    for-upstream: yes
    fallback-enabled: no
""")
    proc = subprocess.Popen(["unbound", "-c", str(d / "unbound.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read().decode()
    yield dns, anchor, d, port
    proc.terminate()
    proc.wait()


def test_dane_ee_ta_and_mismatch(make_server, signed_zone):
    dns, anchor, certs, port = signed_zone
    queue = (f"[queue]\ndns_servers = [\"127.0.0.1:{dns}\"]\nremote_port = {port}\nretry_seconds = [1]\n"
             f"dnssec_trust_anchor = \"{anchor}\"\nmta_sts = false\n")
    a = make_server(domain="a.test", ip=A_IP, port=port, hostname="mx.a.test", extra=queue)
    b = make_server(domain="dane.test", ip=B_IP, port=port, hostname="mx.dane.test",
                    extra=f"[tls]\ncert = \"{certs / 'chain.pem'}\"\nkey = \"{certs / 'good.key'}\"\n")
    for dom in ("ta.dane.test", "bad.dane.test"):
        b.cli("domain", "add", dom)
        b.add_user(f"carol@{dom}")
    a.start()
    b.start()

    def send(to, options=()):
        with smtplib.SMTP(A_IP, a.submission_port, timeout=30) as s:
            s.starttls(context=ctx())
            s.login("bob@a.test", PASSWORD)
            return s.sendmail("bob@a.test", [to], f"From: bob@a.test\r\nTo: {to}\r\nSubject: dane\r\n\r\nx\r\n".encode(),
                              mail_options=list(options))

    assert send("carol@dane.test") == {}
    assert wait_for(lambda: len(b.uids("carol@dane.test")) == 1, timeout=30), (
        a.cli("queue", "list").stdout, a.log_text()[-3000:])
    assert 'policy="DANE"' in a.log_text() or "policy=DANE" in a.log_text(), a.log_text()[-2000:]
    assert send("carol@ta.dane.test") == {}
    assert wait_for(lambda: len(b.uids("carol@ta.dane.test")) == 1, timeout=30), (
        a.cli("queue", "list").stdout, a.log_text()[-3000:])
    # REQUIRETLS is satisfied by DANE as by MTA-STS (RFC 8689 §4.2.1).
    assert send("carol@dane.test", ["REQUIRETLS"]) == {}
    assert wait_for(lambda: len(b.uids("carol@dane.test")) == 2, timeout=30), a.cli("queue", "list").stdout
    assert send("carol@bad.dane.test") == {}
    assert wait_for(lambda: "TLSA" in a.cli("queue", "list").stdout.decode(), timeout=30), (
        a.cli("queue", "list").stdout, a.log_text()[-3000:])
    listing = a.cli("queue", "list").stdout.decode()
    assert "DANE" in listing, listing
    time.sleep(2)
    assert len(b.uids("carol@bad.dane.test")) == 0, "sent over a certificate its TLSA records refuse"
