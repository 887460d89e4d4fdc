"""kill -9 in the middle of concurrent deliveries: every message that got 250 is there and
intact after a restart, the store opens cleanly, and UIDs stay unique."""

import hashlib
import random
import smtplib
import threading
import time

from conftest import DOMAIN, split_trace

RCPTS = [f"bob@{DOMAIN}", f"carol@{DOMAIN}"]


def body_for(token: str, size: int) -> bytes:
    rnd = random.Random(token)
    lines = [b"Subject: crash %s\r\n" % token.encode(), b"\r\n"]
    while sum(map(len, lines)) < size:
        lines.append(bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(70)) + b"\r\n")
    digest = hashlib.sha256(b"".join(lines)).hexdigest().encode()
    return b"".join(lines) + b"sha256 " + digest + b"\r\n"


def intact(body: bytes) -> bool:
    head, _, tail = body.rpartition(b"sha256 ")
    return tail.rstrip(b"\r\n") == hashlib.sha256(head).hexdigest().encode()


def run_load_and_kill(server, acked: dict, round_no: int, want: int) -> None:
    """Deliver from 8 concurrent clients, then kill -9 the server while they are busy."""
    lock = threading.Lock()
    stop = threading.Event()
    start = len(acked)

    def client(n: int):
        i = 0
        while not stop.is_set():
            token = f"{round_no}-{n}-{i}"
            i += 1
            data = body_for(token, random.Random(token).choice([500, 4000, 60000, 300000]))
            try:
                with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
                    if s.sendmail("load@remote.example", RCPTS, data) == {}:
                        with lock:
                            acked[token] = data
            except (OSError, smtplib.SMTPException):
                return  # the server died under us: expected

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    # Kill only once deliveries are flowing, so the kill lands mid-stream.
    deadline = time.monotonic() + 60
    while len(acked) - start < want and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.random() * 0.2)
    server.kill9()
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) - start >= want, "the load never got going"


def check_store(server, acked: dict) -> None:
    for rcpt in RCPTS:
        uids = server.uids(rcpt)
        assert len(uids) == len(set(uids)), "UIDs are unique"
        assert uids == sorted(uids)
        stored = {}
        for uid in uids:
            _, body = split_trace(server.cat(rcpt, uid))
            assert intact(body), f"UID {uid} of {rcpt} is damaged"
            token = body.split(b"\r\n", 1)[0].split(b" ")[-1].decode()
            assert token not in stored, f"{token} stored twice for {rcpt}"
            stored[token] = body
        missing = [t for t in acked if t not in stored]
        assert not missing, f"{len(missing)} acknowledged messages lost for {rcpt}: {missing[:5]}"
        for t, data in acked.items():
            assert stored[t] == data
        # Messages stored but never acknowledged (the kill hit between commit and reply)
        # are allowed: the client retries, and RFC 5321 §6.1 accepts such duplicates.


def test_kill_9_loses_no_acknowledged_message(make_server):
    server = make_server().start()
    acked: dict[str, bytes] = {}
    for round_no in range(3):
        run_load_and_kill(server, acked, round_no, want=60)
        server.start()  # the store must open cleanly after the crash
        check_store(server, acked)

    # New deliveries continue with fresh, higher UIDs.
    before = max(server.uids(RCPTS[0]))
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
        s.sendmail("load@remote.example", RCPTS[:1], body_for("after", 100))
    assert max(server.uids(RCPTS[0])) > before
