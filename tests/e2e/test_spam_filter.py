"""The spam filter of inbound mail (issue 18): the content rules, the attachment policy, the
classifier learning from real clients' labels (imaplib MOVE and flags, mbsync appending into
Junk) and from `yubin filter train`, and correspondents' mail kept out of Junk."""

import imaplib
import io
import mailbox
import re
import smtplib
import ssl
import subprocess
import time
import zipfile
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import pytest

from conftest import DOMAIN, PASSWORD, mbsync_config

IP = "127.0.0.1"
BOB = f"bob@{DOMAIN}"

SPAM_WORDS = ("claim your exclusive casino bonus today, jackpot winner prize waiting, "
              "free spins unlimited cashback guaranteed payout, act fast offer expires")
HAM_TOPICS = [
    "the quarterly budget review moved to thursday, please bring the revised spreadsheet",
    "notes from the architecture meeting: storage migration plan and rollback steps",
    "could you review my pull request for the parser before the release branch is cut",
    "the team lunch is at noon near the station, reply if you have dietary needs",
    "minutes of the board meeting and the draft agenda for next month attached below",
    "reminder: the office is closed on monday for maintenance of the heating system",
]
# Words neither the spam nor the memos use: what the classifier thinks of it is learned
# from this user's labels alone.
NEWSLETTER = ("summer collection lookbook: linen shirts, espadrilles, woven hats, "
              "styling guide, boutique designers, arrivals catalogue")


@pytest.fixture
def yubin(make_server):
    # Sender authentication off (no DNS here): what is judged is the content.
    return make_server(extra="[filter]\ncheck_local = true\nsender_auth = false\n").start()


def message(frm: str, subject: str, body: str, html: str | None = None) -> EmailMessage:
    m = EmailMessage()
    m["From"] = frm
    m["To"] = BOB
    m["Subject"] = subject
    m["Date"] = formatdate()
    m["Message-ID"] = make_msgid(domain=frm.rsplit("@", 1)[-1].strip(">"))
    if html is None:
        m.set_content(body)
    else:
        m.set_content(html, subtype="html")
    return m


def send(y, mail_from: str, msg, rcpt: str = BOB, port: int | None = None):
    """(code, text) at the end of DATA."""
    raw = msg if isinstance(msg, bytes) else msg.as_bytes(policy=policy.SMTP)
    with smtplib.SMTP(IP, port or y.port, local_hostname="client.test", timeout=60) as s:
        s.ehlo("client.test")
        s.mail(mail_from)
        code, text = s.rcpt(rcpt)
        assert code == 250, text
        code, text = s.data(raw)
        return code, text.decode()


def latest(y, mailbox="INBOX") -> bytes:
    uids = y.uids(BOB, mailbox)
    assert uids, f"nothing in {mailbox}"
    return y.cat(BOB, uids[-1], mailbox)


def status(raw: bytes) -> str:
    m = re.search(rb"^X-Spam-Status: ([^\r\n]*(?:\r\n\t[^\r\n]*)*)", raw, re.M)
    assert m, raw[:500]
    return m.group(1).decode().replace("\r\n\t", " ")


def learned(y) -> tuple[int, int]:
    out = y.cli("filter", "status").stdout.decode()
    m = re.search(r"learned: (\d+) spam, (\d+) legitimate", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def wait_learned(y, spam: int, ham: int):
    deadline = time.time() + 30
    while time.time() < deadline:
        if learned(y) == (spam, ham):
            return
        time.sleep(0.5)
    raise AssertionError(f"classifier learned {learned(y)}, expected {(spam, ham)}")


def imap(y) -> imaplib.IMAP4:
    m = imaplib.IMAP4(IP, y.imap_port)
    m.login(BOB, PASSWORD)
    return m


def uids_matching(m: imaplib.IMAP4, subject: str) -> list[bytes]:
    typ, data = m.uid("SEARCH", "SUBJECT", f'"{subject}"')
    assert typ == "OK"
    return data[0].split()


# ---- content rules ---------------------------------------------------------------------

def test_phishing_signs_file_into_junk_and_explain_says_why(yubin):
    html = ('<p>Your mailbox is full. <a href="http://192.0.2.7/login">'
            f'https://www.{DOMAIN}/login</a></p>')
    code, text = send(yubin, "help@evil.example",
                      message(f'"Support {DOMAIN}" <help@evil.example>', "mailbox full", "", html))
    assert code == 250, text
    assert yubin.uids(BOB) == []
    raw = latest(yubin, "Junk")
    st = status(raw)
    assert st.startswith("Yes"), st
    for rule in ("DISPLAY_NAME_IMPERSONATES_LOCAL", "LINK_TEXT_MISMATCH", "LINK_IP_LITERAL", "HTML_ONLY"):
        assert rule in st, st
    assert b"X-Spam-Flag: YES" in raw
    out = yubin.cli("filter", "explain", BOB, str(yubin.uids(BOB, "Junk")[-1]),
                    "--mailbox", "Junk").stdout.decode()
    assert "link's text shows one host and points to another" in out, out
    assert "display name shows one of our domains" in out, out


def test_ordinary_mail_breaks_no_rule_and_forged_verdicts_are_removed(yubin):
    msg = message("Alice <alice@partner.example>", "lunch", "Shall we meet at noon?\n")
    msg["X-Spam-Status"] = "No, score=-100 tests=FORGED"
    msg["X-Spam-Flag"] = "NO"
    code, text = send(yubin, "alice@partner.example", msg)
    assert code == 250, text
    raw = latest(yubin)
    assert raw.count(b"X-Spam-Status:") == 1 and b"FORGED" not in raw and b"X-Spam-Flag" not in raw
    assert status(raw).startswith("No, score=0.0"), status(raw)


def test_gtube_is_refused_at_smtp_time(yubin):
    body = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\n"
    code, text = send(yubin, "a@spam.example", message("a@spam.example", "test", body))
    assert code == 550 and "refused as spam" in text, (code, text)
    assert yubin.uids(BOB) == [] and yubin.uids(BOB, "Junk") == []


# ---- attachment policy -------------------------------------------------------------------

def with_attachment(name: str, data: bytes) -> EmailMessage:
    m = message("alice@partner.example", "the file", "See attached.\n")
    m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return m


def zip_of(entries: dict[str, bytes], compress=zipfile.ZIP_DEFLATED) -> bytes:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", compress) as z:
        for n, d in entries.items():
            z.writestr(n, d)
    return b.getvalue()


def encrypted(zipped: bytes) -> bytes:
    """The same archive with every entry marked encrypted (general purpose bit 0), as
    `zip -e` leaves it: what matters to a scanner is that it cannot look inside."""
    out = bytearray(zipped)
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = out.find(sig)
        while i >= 0:
            out[i + off] |= 1
            i = out.find(sig, i + 4)
    return bytes(out)


PE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 48 + b"This program cannot be run in DOS mode"


@pytest.mark.parametrize("name,data,says", [
    ("invoice.pdf.exe", PE, "invoice.pdf.exe"),
    ("report.pdf", PE, "Windows executable"),
    ("script.js", b"WScript.Shell", "script.js"),
    ("docs.zip", zip_of({"docs/readme.txt": b"hi", "inner.zip": zip_of({"setup.scr": PE})}), "setup.scr"),
    ("secret.zip", encrypted(zip_of({"salary.xlsx": b"x" * 100}, zipfile.ZIP_STORED)), "password-protected"),
])
def test_dangerous_attachments_are_refused(yubin, name, data, says):
    code, text = send(yubin, "alice@partner.example", with_attachment(name, data))
    assert code == 554 and "5.7.1" in text and says in text, (code, text)
    assert yubin.uids(BOB) == [] and yubin.uids(BOB, "Junk") == []


def test_harmless_attachments_pass(yubin):
    for name, data in (("report.pdf", b"%PDF-1.7\n%fine\n"),
                       ("photos.zip", zip_of({"a.jpg": b"\xff\xd8\xff\xe0", "b/c.txt": b"text"}))):
        code, text = send(yubin, "alice@partner.example", with_attachment(name, data))
        assert code == 250, text
    assert len(yubin.uids(BOB)) == 2


def test_attachment_policy_applies_to_trusted_and_submitted_mail(make_server):
    y = make_server().start()  # loopback trusted (check_local = false)
    code, text = send(y, "alice@partner.example", with_attachment("setup.exe", PE))
    assert code == 554 and "setup.exe" in text, (code, text)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    m = with_attachment("tool.scr", PE)
    m.replace_header("From", BOB)
    with smtplib.SMTP(IP, y.submission_port, timeout=30) as s:
        s.starttls(context=ctx)
        s.login(BOB, PASSWORD)
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail(BOB, [f"carol@{DOMAIN}"], m.as_bytes(policy=policy.SMTP))
        assert e.value.smtp_code == 554 and b"tool.scr" in e.value.smtp_error
        # The session goes on: a clean message is sent.
        s.sendmail(BOB, [f"carol@{DOMAIN}"], message(BOB, "fine", "ok\n").as_bytes(policy=policy.SMTP))
    assert len(y.uids(f"carol@{DOMAIN}")) == 1


# ---- the classifier ---------------------------------------------------------------------

def seed_labels(y):
    """Five spam and five legitimate messages, labelled the way clients do it: MOVE into
    Junk, and $NotJunk (Thunderbird's "not junk")."""
    for i in range(5):
        send(y, "deals@casino.example",
             message("Lucky <deals@casino.example>", f"bonus {i}", f"{SPAM_WORDS} ref{i}\n"))
        send(y, f"colleague{i}@partner.example",
             message(f"colleague{i}@partner.example", f"notes {i}", HAM_TOPICS[i] + "\n"))
    assert len(y.uids(BOB)) == 10
    assert "BAYES" not in status(latest(y)), "silent before it has learned"
    m = imap(y)
    m.select("INBOX")
    spam = uids_matching(m, "bonus")
    ham = uids_matching(m, "notes")
    assert len(spam) == 5 and len(ham) == 5
    typ, data = m.uid("MOVE", b",".join(spam).decode(), "Junk")
    assert typ == "OK", data
    typ, data = m.uid("STORE", b",".join(ham).decode(), "+FLAGS", "($NotJunk)")
    assert typ == "OK", data
    m.logout()
    wait_learned(y, 5, 5)


def test_imap_labels_teach_the_classifier_and_moving_back_flips_it(yubin):
    seed_labels(yubin)
    # What it learned: the next casino mail goes to Junk, the next memo to INBOX.
    send(yubin, "deals@casino.example",
         message("Lucky <deals@casino.example>", "bonus again", SPAM_WORDS + "\n"))
    st = status(latest(yubin, "Junk"))
    assert st.startswith("Yes") and "BAYES_99" in st, st
    send(yubin, "colleague5@partner.example",
         message("colleague5@partner.example", "memo", HAM_TOPICS[5] + " and the budget review\n"))
    st = status(latest(yubin))
    assert st.startswith("No") and ("BAYES_00" in st or "BAYES_05" in st), st

    # A newsletter nobody labelled yet: INBOX. The user moves it to Junk; the next one is Junk.
    shop = "news@boutique.example"
    send(yubin, shop, message(shop, "summer lookbook", NEWSLETTER + "\n"))
    raw = latest(yubin)
    assert b"summer lookbook" in raw and "BAYES_50" in status(raw), status(raw)
    m = imap(yubin)
    m.select("INBOX")
    typ, _ = m.uid("MOVE", uids_matching(m, "summer lookbook")[0].decode(), "Junk")
    assert typ == "OK"
    wait_learned(yubin, 6, 5)
    send(yubin, shop, message(shop, "summer lookbook 2", NEWSLETTER + "\n"))
    st = status(latest(yubin, "Junk"))
    assert "summer lookbook 2" in latest(yubin, "Junk").decode() and st.startswith("Yes"), st
    # The user wants it after all: moving it back to INBOX is a legitimate label, and the
    # next one stays in INBOX.
    m.select("Junk")
    typ, _ = m.uid("MOVE", uids_matching(m, "summer lookbook 2")[0].decode(), "INBOX")
    assert typ == "OK"
    m.logout()
    wait_learned(yubin, 6, 6)
    send(yubin, shop, message(shop, "summer lookbook 3", NEWSLETTER + "\n"))
    raw = latest(yubin)
    assert b"summer lookbook 3" in raw and status(raw).startswith("No"), status(raw)


def test_mbsync_moving_into_junk_is_a_spam_label(yubin, tmp_path):
    seed_labels(yubin)
    shop = "news@boutique.example"
    send(yubin, shop, message(shop, "lookbook via mbsync", NEWSLETTER + "\n"))
    local = tmp_path / "Mail"
    cfg = mbsync_config(tmp_path / "mbsyncrc", IP, yubin.imap_port, BOB, PASSWORD, local)

    def sync():
        r = subprocess.run(["mbsync", "-c", str(cfg), "-a"], capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()

    sync()
    files = [p for d in ("cur", "new") for p in (local / "INBOX" / d).iterdir()
             if b"lookbook via mbsync" in p.read_bytes()]
    assert len(files) == 1
    # Moved locally the way a Maildir client does; mbsync's UID is dropped from the name.
    f = files[0]
    f.rename(local / "Junk" / "cur" / re.sub(r",U=\d+", "", f.name))
    sync()
    junk = [yubin.cat(BOB, u, "Junk") for u in yubin.uids(BOB, "Junk")]
    assert sum(b"lookbook via mbsync" in m for m in junk) == 1
    assert not any(b"lookbook via mbsync" in yubin.cat(BOB, u) for u in yubin.uids(BOB))
    wait_learned(yubin, 6, 5)
    # The next one from that shop goes to Junk by itself.
    send(yubin, shop, message(shop, "lookbook again", NEWSLETTER + "\n"))
    raw = latest(yubin, "Junk")
    assert b"lookbook again" in raw and status(raw).startswith("Yes"), status(raw)


def test_filter_train_from_mbox_and_maildir(yubin, tmp_path):
    box = mailbox.mbox(tmp_path / "spam.mbox")
    for i in range(5):
        box.add(message("deals@casino.example", f"bonus {i}", f"{SPAM_WORDS}\nFrom the desk of {i}\n"))
    box.flush()
    box.close()
    md = mailbox.Maildir(tmp_path / "ham", create=True)
    for i in range(5):
        md.add(message(f"colleague{i}@partner.example", f"notes {i}", HAM_TOPICS[i] + "\n"))
    out = yubin.cli("filter", "train", "--spam", str(tmp_path / "spam.mbox")).stdout.decode()
    assert "5 messages recorded as spam" in out, out
    out = yubin.cli("filter", "train", "--ham", "--user", BOB, str(tmp_path / "ham")).stdout.decode()
    assert "5 messages recorded as legitimate" in out, out
    wait_learned(yubin, 5, 5)
    send(yubin, "deals@casino.example", message("deals@casino.example", "jackpot", SPAM_WORDS + "\n"))
    assert "BAYES_99" in status(latest(yubin, "Junk"))
    r = yubin.cli("filter", "train", "--spam", str(tmp_path / "missing"), check=False)
    assert r.returncode != 0 and b"cannot read" in r.stderr
    r = yubin.cli("filter", "train", str(tmp_path / "ham"), check=False)
    assert r.returncode != 0 and b"--spam" in r.stderr, "a kind is required"


# ---- correspondents ---------------------------------------------------------------------

def test_mail_from_someone_the_user_wrote_to_stays_in_inbox(yubin):
    html = '<p>Slides: <a href="http://192.0.2.9/deck">https://www.slides.example/deck</a></p>'
    lookalike = lambda frm: message(f'"Support {DOMAIN}" <{frm}>', "slides", "", html)
    # From a stranger this is Junk (see the phishing test)...
    send(yubin, "stranger@far.example", lookalike("stranger@far.example"))
    assert len(yubin.uids(BOB, "Junk")) == 1
    # ...but Bob wrote to friend@far.example, so the same from them stays in INBOX.
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP(IP, yubin.submission_port, timeout=30) as s:
        s.starttls(context=ctx)
        s.login(BOB, PASSWORD)
        s.sendmail(BOB, ["Friend@Far.example"], message(BOB, "hi", "see you\n").as_bytes(policy=policy.SMTP))
    time.sleep(1)  # correspondents are remembered after the reply
    send(yubin, "friend@far.example", lookalike("friend@far.example"))
    raw = latest(yubin)
    assert b"friend@far.example" in raw and "KNOWN_CORRESPONDENT" in status(raw), status(raw)


# ---- bad input ----------------------------------------------------------------------------

def test_hostile_messages_get_a_verdict_and_the_server_goes_on(yubin):
    deep = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n' for i in range(3000))
    links = '<a href="http://a.example/">b.example</a>' * 20000
    bomb = zip_of({"zeros.bin": b"\0" * (60 << 20)})  # inflates far past the budget
    hostile = [
        (f"From: a@x.example\r\nTo: {BOB}\r\nSubject: deep\r\n" + deep).encode(),
        (f"From: a@x.example\r\nTo: {BOB}\r\nSubject: links\r\nContent-Type: text/html\r\n\r\n"
         + links).encode(),
        with_attachment("zeros.zip", bomb).as_bytes(policy=policy.SMTP),
        b"\r\n\r\n" + b"PK\x05\x06" * 1000,
    ]
    for raw in hostile:
        t = time.time()
        code, text = send(yubin, "a@x.example", raw)
        assert code == 250, text
        assert time.time() - t < 30
    code, text = send(yubin, "alice@partner.example", message("alice@partner.example", "ok", "fine\n"))
    assert code == 250


def test_quarantine_holds_and_releases(make_server):
    y = make_server(extra='[filter]\nattachments = "quarantine"\n').start()
    for name in ("first.exe", "second.exe"):
        code, text = send(y, "alice@partner.example", with_attachment(name, PE))
        assert code == 250, text
    assert y.uids(BOB) == [] and y.uids(BOB, "Junk") == []
    out = y.cli("quarantine", "list").stdout.decode().splitlines()
    assert len(out) == 2 and all(BOB in line and "from <alice@partner.example>" in line for line in out), out
    assert "first.exe" in out[0] and "a program or script" in out[0], out
    first, second = (line.split("\t")[0] for line in out)
    assert b"first.exe" in y.cli("quarantine", "show", first).stdout
    assert "delivered to INBOX" in y.cli("quarantine", "release", first).stdout.decode()
    m = imap(y)
    m.select("INBOX")
    assert uids_matching(m, "the file"), "released mail is seen over IMAP"
    m.logout()
    # Younger than a day: kept; `--days 0`: dropped.
    assert "0 held messages" in y.cli("quarantine", "expire", "--days", "1").stdout.decode()
    assert "1 held messages" in y.cli("quarantine", "expire", "--days", "0").stdout.decode()
    assert "quarantine is empty" in y.cli("quarantine", "list").stdout.decode()
    r = y.cli("quarantine", "release", second, check=False)
    assert r.returncode != 0 and b"quarantine list" in r.stderr
    r = y.cli("quarantine", "delete", second, check=False)
    assert r.returncode != 0


def test_metrics_count_each_outcome(make_server):
    from conftest import free_port
    y = make_server(extra="[filter]\ncheck_local = true\nsender_auth = false\n")
    port = free_port()
    y.config.write_text(y.config.read_text().replace("[listen]\n", f'[listen]\nmetrics = ["{IP}:{port}"]\n'))
    y.start()
    send(y, "alice@partner.example", message("alice@partner.example", "lunch", "noon?\n"))
    html = f'<a href="http://192.0.2.7/">https://www.{DOMAIN}/</a>'
    send(y, "help@evil.example", message(f'"Support {DOMAIN}" <help@evil.example>', "full", "", html))
    gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\n"
    send(y, "a@spam.example", message("a@spam.example", "test", gtube))
    out = subprocess.run(["curl", "-sf", f"http://{IP}:{port}/metrics"], capture_output=True,
                         timeout=30, check=True).stdout.decode()
    for outcome, n in (("inbox", 1), ("junk", 1), ("reject", 1), ("quarantine", 0), ("tempfail", 0)):
        assert f'yubin_filter_verdicts_total{{outcome="{outcome}"}} {n}\n' in out, out
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{IP}:{port}/"],
                       capture_output=True, timeout=30)
    assert r.stdout == b"404"
