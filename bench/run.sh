#!/usr/bin/env bash
# Benchmark portcullis against nginx and other reverse proxies on this machine;
# see docs/benchmarks.md.
#
#   bench/run.sh                      # build (release) and run the default comparison
#   bench/run.sh --rounds 3 --duration 5
#   PORTCULLIS_BIN=/path/to/portcullis bench/run.sh   # skip the build
#   bench/run.sh --chart docs/benchmarks.png          # also copy the chart there
#   bench/run.sh --syscalls nginx-proxy,portcullis    # + system calls and wake-ups per request
#   bench/run.sh --help               # every option (also settable as BENCH_* env vars)
#
# Two-core mode: every proxy runs one worker (thread) per CPU in --proxy-cpu:
# nginx's worker_processes, HAProxy's nbthread, Envoy's --concurrency and the
# Go proxies' GOMAXPROCS follow it; portcullis's workers are --tokio-workers.
# So, on a 2-core machine, both cores for every process and two workers each:
#
#   bench/run.sh --proxy-cpu 0,1 --load-cpu 0,1 --tokio-workers 2 --only nginx-proxy,portcullis
#
# (wrk and the upstream then share the cores with the proxy: compare proxies
# within one such run, not with the default one-core numbers.)
#
# Needs: cargo (unless PORTCULLIS_BIN is set), python3 >= 3.11, nginx, wrk, taskset.
# Optional: a running Redis (BENCH_REDIS_URL, default redis://127.0.0.1:6379) for the
# Redis rate-limit scenario; without one that scenario is listed as skipped.
# Optional peers ([peer.*] in bench/scenarios.toml), each skipped when not installed:
# haproxy and caddy (Debian packages), envoy and traefik (.ci/forward-auth-tools.sh
# installs them under ~/.cache/portcullis-tools); BENCH_HAPROXY, BENCH_ENVOY,
# BENCH_TRAEFIK, BENCH_CADDY point at other executables. Optional: matplotlib for
# the chart (<results>/<stamp>.png), strace for --syscalls.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
command_line="bench/run.sh${*:+ $*}"

for arg in "$@"; do
    if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
        exec python3 "$here/bench.py" --help
    fi
done

if [[ -n "${PORTCULLIS_BIN:-}" ]]; then
    bin="$PORTCULLIS_BIN"
    [[ -x "$bin" ]] || { echo "PORTCULLIS_BIN=$bin is not an executable" >&2; exit 1; }
    bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
    command_line="PORTCULLIS_BIN=$PORTCULLIS_BIN $command_line"
else
    echo "[bench] cargo build --release (this can take several minutes)" >&2
    (cd "$root" && cargo build --release --bin portcullis)
    # Where cargo put it: honours CARGO_TARGET_DIR and .cargo/config.
    target_dir="$(cd "$root" && cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
    bin="$target_dir/release/portcullis"
fi

# Which portcullis is measured: commit, and whether the tree had local changes.
desc="$bin"
if rev="$(git -C "$root" rev-parse --short HEAD 2>/dev/null)"; then
    if [[ -n "$(git -C "$root" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
        rev="$rev + uncommitted changes"
    fi
    desc="$("$bin" --version 2>/dev/null || echo portcullis) ($rev)"
fi

export PORTCULLIS_BIN="$bin" BENCH_COMMAND="$command_line" BENCH_PORTCULLIS_DESC="$desc"
exec python3 "$here/bench.py" "$@"
