"""Delivery status notifications asked for by the sender (RFC 3461) between two yubin
instances found through MX records (dnsmasq), sent with Python's smtplib and read back
with Python's email package: NOTIFY=SUCCESS,DELAY,FAILURE with RET and ENVID round trip
(B reports the delivery, A the refusal), NOTIFY=NEVER silences a bounce, RET=FULL returns
the message, and a next hop without DSN or 8BITMIME gets a quoted-printable copy while the
sender is told "relayed"."""

import email
import email.policy
import smtplib
import socket
import threading

from conftest import PASSWORD, free_port
from test_outbound import A_IP, B_IP, DNS_IP, SLOW_IP, ctx, dns, wait_for  # noqa: F401

SOURCE_IP = "127.0.0.9"


def status_blocks(raw: bytes):
    """The report and its message/delivery-status blocks, as the email package reads them:
    the per-message fields first, then one per recipient (RFC 3464 §2.1)."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report", raw[:500]
    assert msg.get_param("report-type") == "delivery-status"
    part = next(p for p in msg.walk() if p.get_content_type() == "message/delivery-status")
    blocks = part.get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2, part.as_string()
    return msg, blocks


def reports(server, user):
    """The user's messages that are delivery reports."""
    out = []
    for raw in server.messages(user):
        if b"multipart/report" in raw:
            out.append(raw)
    return out


def submit(server, to, body, mail_options=(), rcpt_options=()):
    with smtplib.SMTP(server.ip, server.submission_port, timeout=30) as s:
        s.starttls(context=ctx())
        s.ehlo()
        assert s.has_extn("dsn"), s.esmtp_features
        s.login("bob@a.test", PASSWORD)
        return s.sendmail("bob@a.test", to, body, mail_options=list(mail_options),
                          rcpt_options=list(rcpt_options))


def test_dsn_round_trip(make_server, dns):
    port = free_port()
    queue = f"[queue]\ndns_servers = [\"{DNS_IP}:{dns}\"]\nremote_port = {port}\nretry_seconds = [1]\n"
    # A sends from a source address of its own (SPF and reverse DNS on multi-address hosts).
    a = make_server(domain="a.test", ip=A_IP, port=port, hostname="mx.a.test",
                    extra=queue + f"source_addresses = [\"{SOURCE_IP}\"]\n")
    b = make_server(domain="b.test", ip=B_IP, port=port, hostname="mx.b.test", extra=queue)
    a.start()
    b.start()
    body = b"From: bob@a.test\r\nTo: carol@b.test\r\nSubject: tell me\r\n\r\nthe secret body\r\n"
    # 1. Carol exists, nobody does; both asked for every report, headers only.
    refused = submit(a, ["carol@b.test", "nobody@b.test"], body,
                     mail_options=["RET=HDRS", "ENVID=QQ+2B314"],
                     rcpt_options=["NOTIFY=SUCCESS,DELAY,FAILURE", "ORCPT=rfc822;Carol+2Btag@b.test"])
    assert refused == {}
    assert wait_for(lambda: len(b.uids("carol@b.test")) == 1, timeout=30), a.log_text()[-2000:]
    assert f"([{SOURCE_IP}])".encode() in b.cat("carol@b.test", 1), "not sent from the source address"
    # Two reports come back to Bob: "failed" from A (B refused nobody at RCPT), and
    # "delivered" from B (the DSN parameters went along, B did the final delivery).
    assert wait_for(lambda: len(reports(a, "bob@a.test")) == 2, timeout=30), (
        a.log_text()[-3000:], b.log_text()[-2000:])
    by_action = {}
    for raw in reports(a, "bob@a.test"):
        msg, blocks = status_blocks(raw)
        per_message, rcpts = blocks[0], blocks[1:]
        assert per_message["Original-Envelope-Id"] == "QQ+314", per_message
        assert len(rcpts) == 1
        r = rcpts[0]
        by_action[r["Action"]] = (msg, per_message, r, raw)
        assert r["Original-Recipient"] == "rfc822; Carol+tag@b.test", r
        # RET=HDRS: the header comes back, never the body.
        assert b"Subject: tell me" in raw and b"the secret body" not in raw
    assert set(by_action) == {"failed", "delivered"}, by_action.keys()
    _, pm, r, _ = by_action["failed"]
    assert pm["Reporting-MTA"] == "dns; mx.a.test"
    assert r["Final-Recipient"] == "rfc822; nobody@b.test" and r["Status"].startswith("5.1.1")
    assert r["Remote-MTA"] == "dns; mx.b.test"
    msg, pm, r, raw = by_action["delivered"]
    assert pm["Reporting-MTA"] == "dns; mx.b.test"
    assert r["Final-Recipient"] == "rfc822; carol@b.test" and r["Status"] == "2.0.0"
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.b.test"
    assert wait_for(lambda: "queue is empty" in a.cli("queue", "list").stdout.decode())
    assert wait_for(lambda: "queue is empty" in b.cli("queue", "list").stdout.decode())

    # 2. NOTIFY=NEVER: the refusal is not reported.
    before = len(a.uids("bob@a.test"))
    assert submit(a, ["nobody@b.test"], body, rcpt_options=["NOTIFY=NEVER"]) == {}
    assert wait_for(lambda: "queue is empty" in a.cli("queue", "list").stdout.decode())
    assert "bounced" in a.log_text()
    assert len(a.uids("bob@a.test")) == before

    # 3. RET=FULL: the failure report returns the whole message.
    assert submit(a, ["nobody@b.test"], body, mail_options=["RET=FULL"]) == {}
    assert wait_for(lambda: len(a.uids("bob@a.test")) == before + 1, timeout=30)
    raw = a.cat("bob@a.test", a.uids("bob@a.test")[-1])
    msg, blocks = status_blocks(raw)
    returned = next(p for p in msg.walk() if p.get_content_type() == "message/rfc822")
    inner = returned.get_payload()[0]
    assert inner["Subject"] == "tell me" and "the secret body" in inner.get_content()
    # Bad DSN parameters get a protocol error, and the server serves on.
    with smtplib.SMTP(A_IP, a.submission_port, timeout=30) as s:
        s.starttls(context=ctx())
        s.login("bob@a.test", PASSWORD)
        assert s.mail("bob@a.test", ["RET=FULL", "RET=HDRS"])[0] == 501
        assert s.mail("bob@a.test", ["ENVID=" + "x" * 101])[0] == 501
        s.rset()
        assert s.mail("bob@a.test")[0] == 250
        assert s.rcpt("carol@b.test", ["NOTIFY=NEVER,SUCCESS"])[0] == 501
        assert s.rcpt("carol@b.test", ["ORCPT=x400;abc"])[0] == 501
        assert s.rcpt("carol@b.test", ["NOTIFY=FAILURE"])[0] == 250
        s.rset()


def test_relayed_and_downgraded_for_a_plain_next_hop(make_server, dns):
    """A next hop that offers neither DSN nor 8BITMIME: the 8-bit message arrives as
    quoted-printable that decodes to the same text, and a NOTIFY=SUCCESS sender is told
    "relayed" (no later report will come)."""
    port = free_port()
    queue = f"[queue]\ndns_servers = [\"{DNS_IP}:{dns}\"]\nremote_port = {port}\nretry_seconds = [1]\n"
    a = make_server(domain="a.test", ip=A_IP, port=port, hostname="mx.a.test", extra=queue)
    a.start()
    received, commands = [], []
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((SLOW_IP, port))
    srv.listen(4)

    def serve():
        conn, _ = srv.accept()
        f = conn.makefile("rwb")
        f.write(b"220 mx.slow.test plain SMTP\r\n"); f.flush()
        for line in f:
            commands.append(line)
            cmd = line[:4].upper()
            if cmd == b"EHLO":
                f.write(b"250 mx.slow.test\r\n")  # no extensions at all
            elif cmd == b"DATA":
                f.write(b"354 go\r\n"); f.flush()
                data = b""
                for l in f:
                    if l == b".\r\n":
                        break
                    data += l
                received.append(data)
                f.write(b"250 2.0.0 ok\r\n")
            elif cmd == b"QUIT":
                f.write(b"221 bye\r\n"); f.flush()
                break
            else:
                f.write(b"250 ok\r\n")
            f.flush()
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    text = "Grüße aus Köln — ünïcödé, = and a long line " + "é" * 80 + "\r\n"
    body = ("From: bob@a.test\r\nTo: x@slow.test\r\nSubject: eight bit\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + text).encode()
    assert submit(a, ["x@slow.test"], body, rcpt_options=["NOTIFY=SUCCESS"]) == {}
    assert wait_for(lambda: received, timeout=30), a.log_text()[-2000:]
    srv.close()
    data = received[0]
    assert all(b < 0x80 for b in data), "8-bit octets reached a 7-bit server"
    assert all(len(l) <= 78 for l in data.split(b"\r\n")), "QP lines too long"
    assert not any(b"BODY=8BITMIME" in c or b"NOTIFY" in c or b"RET=" in c for c in commands), commands
    got = email.message_from_bytes(data, policy=email.policy.default)
    assert got["Content-Transfer-Encoding"] == "quoted-printable"
    assert got.get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n")
    assert wait_for(lambda: len(reports(a, "bob@a.test")) == 1, timeout=30), a.log_text()[-2000:]
    _, blocks = status_blocks(reports(a, "bob@a.test")[0])
    r = blocks[1]
    assert r["Action"] == "relayed" and r["Final-Recipient"] == "rfc822; x@slow.test"
    assert r["Remote-MTA"] == "dns; mx.slow.test"
