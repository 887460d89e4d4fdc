#!/usr/bin/env bash
# Runs every test: Rust unit and dialogue tests, then the end-to-end tests that start the
# real server on loopback ports and drive it with independent clients (smtplib, swaks,
# openssl, imaplib, poplib, curl, mbsync, fetchmail, getmail, Dovecot as a reference).
# Installs what it needs first (`.ci/install-deps`: Debian packages, a Python venv in .venv)
# when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
have_all() {
    for tool in cargo swaks openssl curl mbsync fetchmail getmail dnsmasq unbound ldns-signzone clamd sigtool; do
        command -v "$tool" >/dev/null || return 1
    done
    [ -x "$PY" ] && "$PY" -c 'import pytest, dkim, scramp, spf, authres, nacl' 2>/dev/null
}
if ! have_all; then
    # First run on this machine: install what the tests need (Debian/Ubuntu; needs root).
    if [ "$(id -u)" = 0 ]; then
        bash .ci/install-deps
    elif command -v sudo >/dev/null; then
        echo "scripts/test.sh: installing the test dependencies (sudo bash .ci/install-deps)" >&2
        sudo bash .ci/install-deps
        sudo chown -R "$(id -u):$(id -g)" .venv
    fi
fi
if ! have_all; then
    echo "scripts/test.sh: test dependencies are missing; run 'sudo bash .ci/install-deps' (Debian/Ubuntu)" >&2
    exit 2
fi

cargo build --workspace --locked
cargo test --workspace --locked
"$PY" -m pytest tests/e2e -q -p no:cacheprovider "$@"
