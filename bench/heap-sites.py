#!/usr/bin/env python3
"""Sums heaptrack's peak consumers by allocation site. Reads the output of
`heaptrack_print --print-peaks 1 --peak-limit 100 --sub-peak-limit 100`
(backtraces printed from the allocation outwards) and names each backtrace by
its first frame outside the allocator and the standard collections. Prints
the sites, biggest first, per connection when --connections is given."""

import argparse
import re
from collections import Counter

PLUMBING = re.compile(
    r"^(_RN|__rust|_?<?(alloc|core|std|bytes|hashbrown|smallvec|slab)::|malloc|realloc|calloc|posix_memalign)"
)
SIZE = re.compile(r"^\s*([0-9.]+)([KMGT]?)B? (?:peak memory )?consumed over \d+ calls from:?$")
UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def clean(frame):
    frame = re.sub(r"::h[0-9a-f]{16}$", "", frame.strip())
    for a, b in (("$LT$", "<"), ("$GT$", ">"), ("$C$", ","), ("$u20$", " "), ("$RF$", "&"),
                 ("$u7b$", "{"), ("$u7d$", "}"), ("$BP$", "*"), ("..", "::")):
        frame = frame.replace(a, b)
    return frame[:150]


def blocks(lines):
    """(bytes, frames) per sub-block of callers."""
    size, frames = None, []
    for line in lines:
        m = SIZE.match(line)
        if m:
            if size is not None and frames:
                yield size, frames
            # A top-level line sums its sub-blocks: count only those.
            top = "peak memory" in line
            size, frames = (None if top else float(m.group(1)) * UNITS[m.group(2)]), []
            continue
        text = line.strip()
        if size is None or not text or text.startswith(("at ", "in ")):
            continue
        frames.append(text)
    if size is not None and frames:
        yield size, frames


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("peaks", help="heaptrack_print's output")
    parser.add_argument("--connections", type=int)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    sites = Counter()
    for size, frames in blocks(open(args.peaks, errors="replace")):
        site = next((clean(f) for f in frames if not PLUMBING.match(f)), "(allocator)")
        sites[site] += size
    total = sum(sites.values())
    per = args.connections or 1
    unit = "bytes per connection" if args.connections else "bytes"
    print(f"| allocation site (first frame outside the allocator) | {unit} | share |")
    print("| --- | --- | --- |")
    for name, cost in sites.most_common(args.top):
        print(f"| `{name}` | {cost / per:,.0f} | {100 * cost / total:.1f}% |")
    print(f"| all sites at the peak | {total / per:,.0f} | |")


if __name__ == "__main__":
    main()
