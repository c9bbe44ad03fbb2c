#!/usr/bin/env bash
# The store tests need a real PostgreSQL on 127.0.0.1:5432 (trust auth, database `test`).
# Start the machine's cluster if it is installed but stopped; say clearly what is missing otherwise.
set -euo pipefail
host=127.0.0.1 port=5432
ready() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$host" -p "$port"; }
ready && exit 0
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  for version in /etc/postgresql/*; do
    pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
  done
  for _ in $(seq 1 30); do ready && exit 0; sleep 0.5; done
fi
echo "error: PostgreSQL is not reachable on $host:$port; install it (Debian: apt-get install postgresql)" \
     "or set KBLADDER_TEST_POSTGRES_URL" >&2
exit 1
