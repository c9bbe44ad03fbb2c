#!/usr/bin/env bash
# The HTML reports (kbladder report, kbladder simulate) are tested in a real headless browser: Debian's
# Chromium, driven by Python playwright (tests/browser.py). Install it when missing and we are root on
# Debian; otherwise say exactly what is missing. Idempotent and instant when installed.
set -euo pipefail
browser="${KBLADDER_CHROMIUM:-/usr/bin/chromium}"
[ -x "$browser" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # Two test runs on a fresh machine must not run apt-get at once.
  exec 9>"${TMPDIR:-/tmp}/kbladder-ensure-chromium.lock"
  command -v flock >/dev/null 2>&1 && flock 9
  [ -x "$browser" ] && exit 0
  echo "installing Debian's chromium for the browser tests" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
  [ -x "$browser" ] && exit 0
fi
echo "error: no Chromium at $browser; install it (Debian: apt-get install chromium) or set KBLADDER_CHROMIUM" >&2
exit 1
