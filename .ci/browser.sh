#!/usr/bin/env bash
# Install the headless-browser harness used by browser integration tests
# (tests/support/browser: playwright-core driving Debian's /usr/bin/chromium).
# Idempotent: apt-get only when /usr/bin/chromium is missing; `npm ci` only when
# node_modules is missing or came from a different package-lock.json.
# playwright-core never downloads a browser (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1).
# Run from anywhere; prints chromium=<path> and the playwright-core version.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

dir=tests/support/browser
stamp="$dir/node_modules/.portcullis-lock.sha256"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

for tool in node npm; do
  command -v "$tool" >/dev/null 2>&1 || { echo "ci: $tool not found; the browser tests need Node.js >= 20 and npm" >&2; exit 1; }
done

if [ ! -x /usr/bin/chromium ]; then
  echo "ci: installing Debian chromium (apt-get)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
fi
[ -x /usr/bin/chromium ] || { echo "ci: /usr/bin/chromium still missing" >&2; exit 1; }

want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1) $(node --version)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
  && [ -f "$dir/node_modules/playwright-core/package.json" ]; then
  echo "ci: playwright-core already installed"
else
  echo "ci: installing playwright-core (npm ci)"
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

echo "chromium=/usr/bin/chromium ($(/usr/bin/chromium --version 2>/dev/null || echo 'version unknown'))"
echo "playwright-core=$(node -p "require('./$dir/node_modules/playwright-core/package.json').version")"
echo "ci: browser harness ready in $(( $(date +%s) - start ))s"
