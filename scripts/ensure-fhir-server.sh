#!/usr/bin/env bash
# Install the test FHIR server (sekmet-fhir, pinned) into its own venv .venv-fhir: its dependencies
# clash with ours. Idempotent and instant when already installed (no Python start-up).
# Usage: scripts/ensure-fhir-server.sh [python3]   (from anywhere; works on the repo root)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-python3}"
venv=".venv-fhir"
version="0.1.1"

installed() {
  [ -x "$venv/bin/sekmet" ] && compgen -G "$venv/lib/python3*/site-packages/sekmet_fhir-$version.dist-info" >/dev/null
}

installed && exit 0
# Two test runs on a fresh checkout must not install into the same venv at once.
if command -v flock >/dev/null 2>&1; then
  exec 9>"${TMPDIR:-/tmp}/kbladder-ensure-fhir-server-$(id -u).lock"
  flock 9
  installed && exit 0
fi
./scripts/ensure-venv.sh "$python" "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "sekmet-fhir==$version"
installed || { echo "error: sekmet-fhir $version did not install into $venv" >&2; exit 1; }
