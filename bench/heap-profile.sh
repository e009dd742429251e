#!/usr/bin/env bash
# Where an idle connection's memory goes: a heap profile (heaptrack) of
# portcullis holding N idle HTTP/1.1 keep-alive connections, each after one
# request, listed by allocation site at the peak (docs/benchmarks.md,
# "Memory per connection").
#
#   bench/heap-profile.sh              # N = 10000
#   bench/heap-profile.sh 2000 h2      # 2000 HTTP/2 connections
#   PORTCULLIS_SYSALLOC_BIN=... bench/heap-profile.sh   # skip the build
#
# heaptrack follows malloc, so portcullis is built without jemalloc
# (`--no-default-features`); its binary is copied aside, so the normal
# release build is left as it was. Needs heaptrack (Debian package).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
n="${1:-10000}"
protocol="${2:-http1}"
out="$(mktemp -d "${TMPDIR:-/tmp}/portcullis-heap.XXXXXX")"

command -v heaptrack >/dev/null || { echo "heaptrack is not installed (apt-get install heaptrack)" >&2; exit 1; }
bin="${PORTCULLIS_SYSALLOC_BIN:-}"
if [[ -z "$bin" ]]; then
    (cd "$root" && cargo build --release --no-default-features --bin portcullis)
    target_dir="$(cd "$root" && cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
    bin="$out/portcullis-sysalloc"
    cp "$target_dir/release/portcullis" "$bin"
fi

python3 "$here/idle-memory.py" --bin "$bin" --only portcullis --protocols "$protocol" \
    --connections "$n" --active 0 --under "heaptrack -o $out/heap" >&2
data="$(ls "$out"/heap*.zst | head -n1)"
echo "# heaptrack data: $data"
heaptrack_print --print-peaks 1 --print-allocators 0 --print-temporary 0 --print-leaks 0 \
    --peak-limit 25 --sub-peak-limit 4 "$data" \
    | sed -n '/^PEAK MEMORY CONSUMERS/,/^total runtime/p'
