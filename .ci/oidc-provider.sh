#!/usr/bin/env bash
# Install the OpenID provider harness used by the OIDC integration tests
# (tests/support/oidc-provider: oidc-provider on the machine's Node.js).
# Idempotent: runs `npm ci` only when node_modules is missing or was installed
# from a different package-lock.json. Run from anywhere; CI calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=tests/support/oidc-provider
stamp="$dir/node_modules/.portcullis-lock.sha256"

for tool in node npm; do
  command -v "$tool" >/dev/null 2>&1 || { echo "ci: $tool not found; the OIDC tests need Node.js >= 20.18 and npm" >&2; exit 1; }
done

want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1) $(node --version)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
  && [ -f "$dir/node_modules/oidc-provider/package.json" ]; then
  echo "ci: oidc-provider harness already installed"
else
  echo "ci: installing the oidc-provider harness (npm ci)"
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

# Smoke check: the module loads on this Node.js. (On Node 20 oidc-provider
# warns "Unsupported runtime" at import; it works, see tests/support/oidc-provider.)
if ! err="$(node --input-type=module -e "
  const m = await import('$PWD/$dir/node_modules/oidc-provider/lib/index.js');
  if (typeof m.Provider !== 'function') throw new Error('no Provider export');
" 2>&1)"; then
  echo "ci: oidc-provider failed to load: $err" >&2
  exit 1
fi
echo "ci: oidc-provider $(node -p "require('./$dir/node_modules/oidc-provider/package.json').version") ready (node $(node --version))"
