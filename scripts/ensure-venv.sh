#!/usr/bin/env bash
# Create the project's virtual environment; on a fresh Debian the venv module
# lives in a separate package (python3-venv), which we install when we can.
set -euo pipefail
python="${1:-python3}"
venv="${2:-.venv}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  exit 0
fi
if ! command -v "$python" >/dev/null 2>&1; then
  echo "error: $python not found; install Python 3.11 (Debian: apt-get install python3)" >&2
  exit 1
fi
"$python" - <<'PY' || { echo "error: Python >= 3.11 is required" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing python3-venv (Debian keeps venv/ensurepip in a separate package)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  else
    echo "error: the Python venv module is missing; run: sudo apt-get install python3-venv" >&2
    exit 1
  fi
fi
rm -rf "$venv"
"$python" -m venv "$venv"
