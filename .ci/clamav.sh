#!/usr/bin/env bash
# Install ClamAV (Debian clamav-daemon + clamav) for the malware-scanning
# integration tests. The tests run their own private clamd (see
# tests/support/clamav/start.sh) with a test-written signature database, so
# the package's system services (clamav-daemon, clamav-freshclam) are stopped
# and disabled: they'd only try to download signatures (no internet) and hold
# resources. Idempotent; run from anywhere; CI calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

find_clamd() {
  command -v clamd 2>/dev/null || { [ -x /usr/sbin/clamd ] && echo /usr/sbin/clamd; } || true
}

clamd="$(find_clamd)"
if [ -n "$clamd" ]; then
  echo "ci: clamav-daemon already installed"
else
  echo "ci: installing clamav-daemon clamav (apt-get)"
  start=$(date +%s)
  # policy-rc.d exit 101 keeps dpkg from starting the services at all
  # (only when we can write it and no policy is in place already).
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  trap 'if [ -n "$made_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi' EXIT
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq --no-install-recommends clamav-daemon clamav >/dev/null
  echo "ci: installed in $(( $(date +%s) - start ))s"
  clamd="$(find_clamd)"
  [ -n "$clamd" ] || { echo "ci: clamd not found after install" >&2; exit 1; }
fi

# Make sure the package's own daemons are not running (they may have been
# started by dpkg on a machine with systemd or a permissive policy-rc.d).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  for unit in clamav-daemon.service clamav-daemon.socket clamav-freshclam.service; do
    $SUDO systemctl disable --now "$unit" >/dev/null 2>&1 || true
  done
else
  for svc in clamav-daemon clamav-freshclam; do
    if [ -x "/etc/init.d/$svc" ]; then $SUDO "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; fi
  done
fi
# Last resort: the system daemons write pidfiles under /run/clamav; stop
# exactly those PIDs (never by name), if still alive.
for pidfile in /run/clamav/clamd.pid /run/clamav/freshclam.pid; do
  if [ -r "$pidfile" ]; then
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    case "$pid" in ''|*[!0-9]*) continue ;; esac
    [ "$pid" -gt 1 ] && $SUDO kill -TERM "$pid" 2>/dev/null || true
  fi
done

echo "clamd=$clamd"
"$clamd" --version
