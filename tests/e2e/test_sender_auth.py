"""Sender authentication of inbound mail (issue 18): SPF, DKIM, DMARC and ARC against a DNS
server the test starts (dnsmasq), messages signed by an independent signer (dkimpy), and the
Authentication-Results header yubin writes parsed by an independent parser (authres) and
compared with the verdicts of pyspf and dkimpy on the same messages."""

import base64
import smtplib
import socket
import subprocess
import time
from email.utils import formatdate

import authres
import dkim
import dns.resolver
import pytest
import spf
import nacl.signing

from conftest import DOMAIN, HOSTNAME, free_port

IP = "127.0.0.1"


def rsa_key():
    priv = subprocess.run(["openssl", "genrsa", "-traditional", "2048"], capture_output=True,
                          check=True).stdout
    pub = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=priv,
                         capture_output=True, check=True).stdout
    return priv, f"v=DKIM1; k=rsa; p={base64.b64encode(pub).decode()}"


def ed_key():
    k = nacl.signing.SigningKey.generate()
    pub = bytes(k.verify_key)
    return base64.b64encode(bytes(k)), f"v=DKIM1; k=ed25519; p={base64.b64encode(pub).decode()}"


def txt(name: str, value: str) -> str:
    """A dnsmasq --txt-record: strings of at most 255 octets, comma-separated."""
    parts = [value[i:i + 250] for i in range(0, len(value), 250)]
    return f"--txt-record={name}," + ",".join(parts)


class Zone:
    """The test's DNS: SPF, DKIM and DMARC records, and a zone whose server never answers."""

    def __init__(self):
        self.rsa, rsa_txt = rsa_key()
        self.ed, ed_txt = ed_key()
        self.other, other_txt = rsa_key()
        self.blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.blackhole.bind((IP, 0))  # takes queries, answers none
        self.port = free_port()
        records = {
            "pass.test": "v=spf1 ip4:127.0.0.1 -all",
            "sel._domainkey.pass.test": rsa_txt,
            "ed._domainkey.pass.test": ed_txt,
            "_dmarc.pass.test": "v=DMARC1; p=reject",
            "strict.test": "v=spf1 -all",
            "sel._domainkey.sub.strict.test": rsa_txt,
            "_dmarc.strict.test": "v=DMARC1; p=reject; adkim=s; aspf=s",
            "relaxed.test": "v=spf1 -all",
            "sel._domainkey.sub.relaxed.test": rsa_txt,
            "_dmarc.relaxed.test": "v=DMARC1; p=reject",
            "fail.test": "v=spf1 -all",
            "_dmarc.fail.test": "v=DMARC1; p=reject",
            "quarantine.test": "v=spf1 -all",
            "_dmarc.quarantine.test": "v=DMARC1; p=quarantine",
            "pct0.test": "v=spf1 -all",
            "_dmarc.pct0.test": "v=DMARC1; p=reject; pct=0",
            "soft.test": "v=spf1 ~all",
            "neutral.test": "v=spf1 ?all",
            "loop.test": "v=spf1 include:loop.test -all",
            "many.test": "v=spf1 " + " ".join(f"include:i{i}.many.test" for i in range(12)) + " -all",
            "huge.test": "v=spf1 " + " ".join(f"ip4:10.{i // 250}.{i % 250}.1" for i in range(100)) + " -all",
            "arc.test": "v=spf1 -all",
            "sel._domainkey.arc.test": rsa_txt,
            "helo.pass.test": "v=spf1 ip4:127.0.0.1 -all",
        }
        for i in range(12):
            records[f"i{i}.many.test"] = "v=spf1 ?all"
        # Foreground but forking for TCP (--no-daemon would serve one TCP connection at a
        # time, and a resolver keeps its TCP connection open after a truncated answer).
        args = ["dnsmasq", "--keep-in-foreground", "--pid-file=", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                f"--listen-address={IP}", "--bind-interfaces", f"--port={self.port}",
                "--local=/test/",  # authoritative: unknown names are NXDOMAIN, not refused
                f"--server=/slow.test/{IP}#{self.blackhole.getsockname()[1]}",
                "--host-record=nomx.test,192.0.2.1",
                # Blocklists (RFC 5782): 127.0.0.1 and ::1 listed, one list refusing us.
                "--host-record=1.0.0.127.bl.test,127.0.0.2",
                "--host-record=1.0.0.127.refuse.test,127.255.255.254",
                "--host-record=1.0.0.127.hard.test,127.0.0.4",
                "--host-record=" + ".".join("1" + "0" * 31) + ".bl6.test,127.0.0.2",
                "--host-record=spam-link.test.dbl.test,127.0.1.2"]
        args += [txt(k, v) for k, v in records.items()]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)
        assert self.proc.poll() is None, self.proc.stderr.read().decode()
        r = dns.resolver.Resolver(configure=False)
        r.nameservers, r.port, r.lifetime = [IP], self.port, 3
        self.resolver = r

    def dnsfunc(self, name, timeout=5):
        """dkimpy's DNS lookup, against this zone."""
        try:
            a = self.resolver.resolve(name.decode() if isinstance(name, bytes) else name, "TXT")
        except Exception:
            return None
        return b"".join(b"".join(r.strings) for r in a)

    def close(self):
        self.proc.terminate()
        self.proc.wait()
        self.blackhole.close()


@pytest.fixture(scope="module")
def zone():
    z = Zone()
    # pyspf resolves through dnspython's default resolver: point it at the zone too.
    saved = dns.resolver.default_resolver
    dns.resolver.default_resolver = z.resolver
    yield z
    dns.resolver.default_resolver = saved
    z.close()


@pytest.fixture
def yubin(make_server, zone):
    y = make_server(extra=(
        "[filter]\ncheck_local = true\n"
        f'dns_servers = ["{IP}:{zone.port}"]\n'
        "dns_timeout_seconds = 2\ndeadline_seconds = 8\n"
    ))
    return y.start()


def message(frm: str, subject: str = "hello", body: str = "Hello there.\r\n", extra: str = "") -> bytes:
    return (f"From: Sender <{frm}>\r\nTo: bob@{DOMAIN}\r\nSubject: {subject}\r\n"
            f"Date: {formatdate()}\r\nMessage-ID: <{time.time_ns()}@x>\r\n"
            f"{extra}\r\n{body}").encode()


def sign(msg: bytes, domain: str, key: bytes, selector: str = "sel", algo: bytes = b"rsa-sha256") -> bytes:
    sig = dkim.sign(msg, selector.encode(), domain.encode(), key,
                    include_headers=[b"from", b"to", b"subject", b"date"], signature_algorithm=algo)
    return sig + msg


def send(y, mail_from: str, msg: bytes, helo: str = "helo.pass.test"):
    """Send; returns (code, text) of the end of DATA."""
    with smtplib.SMTP(IP, y.port, local_hostname=helo, timeout=30) as s:
        s.ehlo(helo)
        s.mail(mail_from)
        code, text = s.rcpt(f"bob@{DOMAIN}")
        assert code == 250, text
        code, text = s.data(msg)
        return code, text.decode()


def stored(y, mailbox="INBOX") -> bytes:
    uids = y.uids(f"bob@{DOMAIN}", mailbox)
    assert uids, f"nothing in {mailbox}"
    return y.cat(f"bob@{DOMAIN}", uids[-1], mailbox)


def header_fields(raw: bytes, name: str) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    out, cur = [], None
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and cur is not None:
            cur += "\r\n" + line
            continue
        if cur is not None:
            out.append(cur)
        cur = line
    if cur is not None:
        out.append(cur)
    return [f for f in out if f.lower().startswith(name.lower() + ":")]


def results(raw: bytes) -> dict:
    """Our Authentication-Results, parsed by authres: method -> list of results."""
    parsed = [authres.AuthenticationResultsHeader.parse(f)
              for f in header_fields(raw, "Authentication-Results")]
    ours = [h for h in parsed if h.authserv_id == HOSTNAME]
    assert len(ours) == 1, [str(h) for h in parsed]
    h = ours[0]
    out: dict = {}
    for r in h.results:
        out.setdefault(r.method, []).append(r)
    return out


def pyspf(mail_from: str, helo: str = "helo.pass.test") -> str:
    return spf.check2(i=IP, s=mail_from, h=helo)[0]


@pytest.mark.parametrize("sender,expected", [
    ("a@pass.test", "pass"),
    ("a@soft.test", "softfail"),
    ("a@neutral.test", "neutral"),
    ("a@nospf.test", "none"),
    ("a@loop.test", "permerror"),
    ("a@many.test", "permerror"),
    ("a@huge.test", "fail"),
    ("a@slow.test", "temperror"),
])
def test_spf_matches_pyspf(yubin, zone, sender, expected):
    code, text = send(yubin, sender, message(sender))
    assert code == 250, text
    ar = results(stored(yubin))
    ours = [r for r in ar["spf"] if "smtp.mailfrom" in str(r)]
    assert ours and ours[0].result == expected, str(ar["spf"])
    assert pyspf(sender) == expected


def test_spf_fail_with_dmarc_reject_is_refused(yubin, zone):
    code, text = send(yubin, "a@fail.test", message("a@fail.test"))
    assert code == 550 and "5.7.1" in text and "DMARC" in text, (code, text)
    assert pyspf("a@fail.test") == "fail"
    assert yubin.uids(f"bob@{DOMAIN}") == []


def test_dkim_pass_rsa_and_ed25519(yubin, zone):
    msg = sign(message("a@pass.test"), "pass.test", zone.rsa)
    msg = sign(msg, "pass.test", zone.ed, "ed", b"ed25519-sha256")
    assert dkim.verify(msg, dnsfunc=zone.dnsfunc)
    code, text = send(yubin, "a@pass.test", msg)
    assert code == 250, text
    raw = stored(yubin)
    ar = results(raw)
    assert sorted(r.result for r in ar["dkim"]) == ["pass", "pass"], str(ar["dkim"])
    assert ar["dmarc"][0].result == "pass"
    assert "X-Spam-Status: No" in raw.decode()


@pytest.mark.parametrize("tamper", ["body", "header", "wrong-key"])
def test_dkim_fail(yubin, zone, tamper):
    key = zone.other if tamper == "wrong-key" else zone.rsa
    # From pass.test but SPF only passes for 127.0.0.1... use a neutral envelope, so DMARC
    # rests on DKIM alone and fails with it.
    msg = sign(message("a@pass.test"), "pass.test", key)
    if tamper == "body":
        msg = msg.replace(b"Hello there.", b"Hello there!")
    elif tamper == "header":
        msg = msg.replace(b"Subject: hello", b"Subject: HELLO")
    assert not dkim.verify(msg, dnsfunc=zone.dnsfunc)
    code, text = send(yubin, "a@neutral.test", msg)
    # DMARC of pass.test is p=reject: with neither SPF (other domain) nor DKIM aligned.
    assert code == 550 and "DMARC policy of pass.test" in text, (code, text)


def test_dkim_fail_recorded(yubin, zone):
    """A failing signature of a domain without DMARC is delivered with dkim=fail."""
    msg = sign(message("a@arc.test"), "arc.test", zone.rsa).replace(b"Hello there.", b"Changed.")
    code, text = send(yubin, "a@neutral.test", msg)
    assert code == 250, text
    ar = results(stored(yubin))
    assert [r.result for r in ar["dkim"]] == ["fail"]
    assert not dkim.verify(msg, dnsfunc=zone.dnsfunc)


@pytest.mark.parametrize("domain,code", [("strict.test", 550), ("relaxed.test", 250)])
def test_dmarc_alignment(yubin, zone, domain, code):
    """Signed by sub.<domain>: aligned under relaxed, not under strict (adkim=s)."""
    msg = sign(message(f"a@{domain}"), f"sub.{domain}", zone.rsa)
    assert dkim.verify(msg, dnsfunc=zone.dnsfunc)
    got, text = send(yubin, f"a@{domain}", msg)
    assert got == code, text
    if code == 250:
        ar = results(stored(yubin))
        assert ar["dmarc"][0].result == "pass"
        assert ar["dkim"][0].result == "pass"


def test_dmarc_quarantine_goes_to_junk(yubin, zone):
    code, text = send(yubin, "a@quarantine.test", message("a@quarantine.test"))
    assert code == 250, text
    assert yubin.uids(f"bob@{DOMAIN}") == []
    raw = stored(yubin, "Junk")
    assert results(raw)["dmarc"][0].result == "fail"
    assert "X-Spam-Flag: YES" in raw.decode()
    out = yubin.cli("mail", "list", f"bob@{DOMAIN}", "--mailbox", "Junk").stdout.decode()
    assert "$Junk" in out or out  # listed in Junk


def test_dmarc_pct(yubin, zone):
    """RFC 7489 §6.6.4: outside the sampled pct (here 0 %), p=reject becomes quarantine."""
    code, text = send(yubin, "a@pct0.test", message("a@pct0.test"))
    assert code == 250, text
    raw = stored(yubin, "Junk").decode()
    assert "DMARC_QUARANTINE" in raw, raw[:900]
    uid = yubin.uids(f"bob@{DOMAIN}", "Junk")[-1]
    out = yubin.cli("filter", "explain", f"bob@{DOMAIN}", str(uid), "--mailbox", "Junk").stdout.decode()
    assert out.startswith("Verdict: Yes, score=") and "asks for quarantine" in out, out
    assert "dmarc=fail" in out, out


def test_dmarc_reject_as_quarantine(make_server, zone):
    y = make_server(extra=(
        "[filter]\ncheck_local = true\n"
        f'dns_servers = ["{IP}:{zone.port}"]\ndmarc_reject = "quarantine"\n'
    )).start()
    code, text = send(y, "a@fail.test", message("a@fail.test"))
    assert code == 250, text
    assert results(stored(y, "Junk"))["dmarc"][0].result == "fail"


def test_forged_authentication_results_removed(yubin, zone):
    forged = (f"Authentication-Results: {HOSTNAME}; dkim=pass header.d=pass.test\r\n"
              f"Authentication-Results: {HOSTNAME.upper()}.;\r\n spf=pass\r\n"
              "Authentication-Results: other.example; spf=pass\r\n")
    msg = message("a@neutral.test", extra=forged)
    code, text = send(yubin, "a@neutral.test", msg)
    assert code == 250, text
    raw = stored(yubin)
    fields = header_fields(raw, "Authentication-Results")
    assert len(fields) == 2, fields  # ours, and the other host's
    assert any("other.example" in f for f in fields)
    assert "dkim=pass header.d=pass.test" not in raw.decode()


def test_forged_local_domain(make_server, zone):
    """Our own domain in From:, from outside, unauthenticated: Junk (or refused)."""
    y = make_server(extra=(
        "[filter]\ncheck_local = true\n"
        f'dns_servers = ["{IP}:{zone.port}"]\n'
    )).start()
    code, text = send(y, "a@neutral.test", message(f"ceo@{DOMAIN}"))
    assert code == 250, text
    assert "FORGED_LOCAL_FROM" in stored(y, "Junk").decode()
    y.stop()
    y.config.write_text(y.config.read_text().replace("[filter]\n", '[filter]\nforgery = "reject"\n'))
    y.start()
    code, text = send(y, "a@neutral.test", message(f"ceo@{DOMAIN}"))
    assert code == 550 and "Forged" in text, (code, text)


def arc_seal(msg: bytes, zone, cv_ok=True) -> bytes:
    """What a forwarder does: record its verdict, then seal (dkimpy's ARC signer)."""
    msg = b"Authentication-Results: fwd.arc.test; spf=pass smtp.mailfrom=a@pass.test\r\n" + msg
    sig = dkim.arc_sign(msg, b"sel", b"arc.test", zone.rsa, b"fwd.arc.test",
                        include_headers=[b"from", b"to", b"subject"])
    return b"".join(sig) + msg


def test_arc_chain_intact_and_broken(yubin, zone):
    msg = arc_seal(message("a@neutral.test"), zone)
    cv, _, why = dkim.arc_verify(msg, dnsfunc=zone.dnsfunc)
    assert cv == b"pass", why
    code, text = send(yubin, "a@neutral.test", msg)
    assert code == 250, text
    assert results(stored(yubin))["arc"][0].result == "pass"
    broken = msg.replace(b"Subject: hello", b"Subject: changed")
    cv, _, _ = dkim.arc_verify(broken, dnsfunc=zone.dnsfunc)
    assert cv == b"fail"
    code, text = send(yubin, "a@neutral.test", broken)
    assert code == 250, text
    assert results(stored(yubin))["arc"][0].result == "fail"


def test_hostile_signatures_and_dns(yubin, zone):
    """Broken DKIM-Signature fields, fifty signatures, a sender whose DNS never answers:
    each gets a verdict within the deadline, and the server keeps serving."""
    junk_sigs = "".join(f"DKIM-Signature: v=1; a=rsa-sha256; d=slow.test; s=s{i}; h=from; bh=x; b=y\r\n"
                        for i in range(50))
    broken = "DKIM-Signature: v=1; a=\r\nDKIM-Signature: ;;;===\r\nDKIM-Signature: " + "x" * 5000 + "\r\n"
    for extra in (junk_sigs, broken):
        started = time.monotonic()
        code, text = send(yubin, "a@slow.test", message("a@slow.test", extra=extra))
        assert code == 250, text
        assert time.monotonic() - started < 20
        results(stored(yubin))
    code, text = send(yubin, "a@pass.test", message("a@pass.test"))
    assert code == 250, text


DNSBL = """
[[filter.dnsbl]]
zone = "bl.test"
weight = 6.0
[[filter.dnsbl]]
zone = "refuse.test"
weight = 50.0
[[filter.dnsbl]]
zone = "bl6.test"
weight = 6.0
[[filter.dnsbl]]
zone = "dbl.test"
kind = "domain"
weight = 5.5
"""


def filter_cfg(zone, more=""):
    return ("[filter]\ncheck_local = true\n"
            f'dns_servers = ["{IP}:{zone.port}"]\ndns_timeout_seconds = 2\n{more}')


def test_dnsbl_ip_and_refusal(make_server, zone):
    """A listed client IP scores its weight (Junk); a list answering 127.255.255.254
    ("query refused") counts as an error, not a listing."""
    y = make_server(extra=filter_cfg(zone) + DNSBL).start()
    code, text = send(y, "a@nospf.test", message("a@nospf.test"))
    assert code == 250, text
    raw = stored(y, "Junk").decode()
    assert "BLOCKLISTED(6.0)" in raw and "BLOCKLISTED(50.0)" not in raw, raw[:800]
    assert "refused the query" in y.log_text()


def test_dnsbl_ipv6(make_server, zone):
    y = make_server(ip="::1", extra=filter_cfg(zone) + DNSBL).start()
    with smtplib.SMTP("::1", y.port, local_hostname="helo.pass.test", timeout=30) as s:
        s.sendmail("a@nospf.test", [f"bob@{DOMAIN}"], message("a@nospf.test"))
    raw = stored(y, "Junk").decode()
    assert "BLOCKLISTED(6.0)" in raw, raw[:800]


def test_dnsbl_link_domain(make_server, zone):
    y = make_server(extra=filter_cfg(zone, '[[filter.dnsbl]]\nzone = "dbl.test"\nkind = "domain"\nweight = 5.5\n')).start()
    code, text = send(y, "a@nospf.test", message("a@nospf.test", body="Buy at https://Spam-Link.test/now\r\n"))
    assert code == 250, text
    assert "BLOCKLISTED(5.5)" in stored(y, "Junk").decode()
    code, text = send(y, "a@nospf.test", message("a@nospf.test", body="Clean https://pass.test/\r\n"))
    assert code == 250, text
    assert y.uids(f"bob@{DOMAIN}") != []


def test_dnsbl_reject(make_server, zone):
    y = make_server(extra=filter_cfg(zone, '[[filter.dnsbl]]\nzone = "hard.test"\nreject = true\n')).start()
    code, text = send(y, "a@pass.test", message("a@pass.test"))
    assert code == 554 and "5.7.1" in text and "hard.test" in text, (code, text)
    assert y.uids(f"bob@{DOMAIN}") == [] and y.uids(f"bob@{DOMAIN}", "Junk") == []


def test_local_lists_while_running(make_server, zone):
    """`yubin filter block|allow` take effect on the running server's next message."""
    y = make_server(extra=filter_cfg(zone) + DNSBL).start()
    y.cli("filter", "block", "add", "spammer@nospf.test")
    code, text = send(y, "spammer@nospf.test", message("a@nospf.test"))
    assert code == 554 and "local block list" in text, (code, text)
    # Another sender from the same (listed) client: scored by the DNSBL, into Junk.
    code, text = send(y, "other@nospf.test", message("other@nospf.test"))
    assert code == 250, text
    assert y.uids(f"bob@{DOMAIN}", "Junk")
    # The client network on the allow list: no score, no block, INBOX.
    y.cli("filter", "allow", "add", "127.0.0.0/8")
    assert "allow\t127.0.0.0/8" in y.cli("filter", "list").stdout.decode()
    code, text = send(y, "spammer@nospf.test", message("a@nospf.test"))
    assert code == 250, text
    assert "ALLOWLISTED" in stored(y).decode()
    y.cli("filter", "allow", "remove", "127.0.0.1/8")  # the same network, respelled
    y.cli("filter", "block", "add", "NOSPF.test.")
    code, text = send(y, "x@nospf.test", message("x@nospf.test"))
    assert code == 554, (code, text)
    bad = y.cli("filter", "block", "add", "not a thing", check=False)
    assert bad.returncode != 0 and b"not an IP address" in bad.stderr


def test_deadline_tempfail(make_server, zone):
    """Checks that cannot finish (DNS never answers) past the deadline: 451 4.7.1 when so
    configured; the sender retries and nothing is stored."""
    y = make_server(extra=filter_cfg(zone, 'deadline_seconds = 1\non_timeout = "tempfail"\n')).start()
    started = time.monotonic()
    code, text = send(y, "a@slow.test", message("a@slow.test"))
    assert code == 451 and "4.7.1" in text, (code, text)
    assert time.monotonic() - started < 10
    assert y.uids(f"bob@{DOMAIN}") == [] and y.uids(f"bob@{DOMAIN}", "Junk") == []
    code, text = send(y, "a@pass.test", message("a@pass.test"))
    assert code == 250, text


def test_per_account_thresholds(make_server, zone):
    """`yubin user spam --junk`: one recipient's copy in Junk, another's in INBOX; and one
    refusing account alone does not refuse the message for the others (its copy goes to
    Junk: one reply to DATA cannot refuse one recipient)."""
    y = make_server(extra=filter_cfg(zone)).start()
    assert "junk at 1" in y.cli("user", "spam", f"carol@{DOMAIN}", "--junk", "1").stdout.decode()
    y.cli("user", "spam", f"dave@{DOMAIN}", "--junk", "0.5", "--reject", "1")
    assert "server default" in y.cli("user", "spam", f"bob@{DOMAIN}").stdout.decode()
    bad = y.cli("user", "spam", f"bob@{DOMAIN}", "--junk", "9", "--reject", "2", check=False)
    assert bad.returncode != 0
    with smtplib.SMTP(IP, y.port, local_hostname="helo.pass.test", timeout=30) as s:
        # softfail (1.0): below the server's 5, at carol's 1, past dave's reject 1.
        refused = s.sendmail("a@soft.test", [f"{u}@{DOMAIN}" for u in ("bob", "carol", "dave")],
                             message("a@soft.test"))
        assert refused == {}
    assert y.uids(f"bob@{DOMAIN}") and not y.uids(f"bob@{DOMAIN}", "Junk")
    assert y.uids(f"carol@{DOMAIN}", "Junk") and not y.uids(f"carol@{DOMAIN}")
    assert not y.uids(f"dave@{DOMAIN}") and y.uids(f"dave@{DOMAIN}", "Junk")
    # dave alone: refused at SMTP time.
    with smtplib.SMTP(IP, y.port, local_hostname="helo.pass.test", timeout=30) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@soft.test", [f"dave@{DOMAIN}"], message("a@soft.test"))
        assert e.value.smtp_code == 550


def test_junk_is_the_special_use_mailbox(yubin, zone):
    """Junk copies go to the mailbox marked \\Junk (RFC 6154), whatever it is called now."""
    import imaplib
    from conftest import PASSWORD
    with imaplib.IMAP4(IP, yubin.imap_port) as c:
        c.login(f"bob@{DOMAIN}", PASSWORD)
        typ, _ = c.rename("Junk", "Spam")
        assert typ == "OK"
        typ, data = c.list('""', "Spam")
        assert b"\\Junk" in data[0], data
    code, text = send(yubin, "a@quarantine.test", message("a@quarantine.test"))
    assert code == 250, text
    assert yubin.uids(f"bob@{DOMAIN}", "Spam") and not yubin.uids(f"bob@{DOMAIN}")
