#!/usr/bin/env bash
# Runs every test: Rust unit and dialogue tests, then the end-to-end tests that start the
# real server on loopback ports and drive it with independent clients (smtplib, swaks,
# openssl, imaplib, poplib, curl, mbsync, fetchmail, getmail, Dovecot as a reference).
# Needs what `bash .ci/install-deps` installs.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in cargo python3 swaks openssl curl mbsync fetchmail getmail dnsmasq; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
python3 -c 'import pytest, dkim' 2>/dev/null || missing+=("pytest and dkimpy (python3 -m pip install pytest dkimpy)")
if ((${#missing[@]})); then
    echo "scripts/test.sh: missing: ${missing[*]}; run 'bash .ci/install-deps' (Debian) first" >&2
    exit 2
fi

cargo build --workspace --locked
cargo test --workspace --locked
python3 -m pytest tests/e2e -q -p no:cacheprovider "$@"
