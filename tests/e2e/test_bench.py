"""The benchmark harness in smoke mode (tiny sizes), so it cannot rot: it must start yubin and
Dovecot, import, run every IMAP and POP3 row against both and write its table."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("YUBIN_BIN", ROOT / "target" / "debug" / "yubin")).parent


def test_bench_smoke(tmp_path):
    out = tmp_path / "result.md"
    r = subprocess.run(["python3", str(ROOT / "bench" / "bench.py"), "--smoke",
                        "--bin-dir", str(BIN_DIR), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    table = out.read_text()
    rows = [l for l in table.splitlines() if l.startswith("| ") and not l.startswith("| row")]
    names = [l.split("|")[1].strip() for l in rows]
    assert names == ["noop", "select", "fetch_flags_all", "fetch_1000_bodies", "search_header",
                     "search_body", "store_10000", "mixed", "mixed_p50", "mixed_p99", "idle_rss", "pop3",
                     "smtp_4k_10", "smtp_4k_50", "smtp_256k_10", "smtp_256k_50",
                     "outbound_4k", "outbound_256k",
                     "stress_10", "stress_10_login_p50", "stress_10_errors",
                     "stress_50", "stress_50_login_p50", "stress_50_errors"]
    # The stress rows check every reply: yubin (and Dovecot, when measured) found no errors.
    for l in rows:
        if l.split("|")[1].strip().endswith("_errors"):
            assert all(c.strip() in ("0 errors", "") for c in l.split("|")[2:5]), l
    if os.geteuid() == 0:
        # Dovecot was measured too: every row has a ratio.
        assert all(l.split("|")[3].strip() for l in rows), table
