#!/usr/bin/env python3
"""How long the gateway takes to replay a spilled audit backlog into a
store that already holds many events (issue 14: replay must cost
O(spilled events), not O(spilled x stored)).

    python3 bench/audit-replay.py --bin target/release/portcullis
    python3 bench/audit-replay.py --bin BIN --cases 0:100000,1000000:10000,1000000:100000

Each case STORED:SPILLED makes a fresh SQLite store (migrated by the
binary) holding STORED audit events (inserted directly with Python's
sqlite3: the replay only reads the chain's last row, so their hashes are
placeholders), writes SPILLED events to the spill file, starts
`portcullis serve` on it and reports the time until the spill file is
empty, and that every spilled event is in the store. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """environment = "development"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[log]
access_log = false
[store]
url = "sqlite://{dir}/store.db"
[audit]
spill_file = "{dir}/spill.jsonl"
[[upstreams]]
name = "app"
targets = ["http://127.0.0.1:9"]
[[routes]]
path = "/"
upstream = "app"
auth = ["none"]
"""


def event_id() -> str:
    return secrets.token_urlsafe(15)[:20]


def fill_store(db: Path, stored: int) -> None:
    now = int(time.time() * 1000)
    conn = sqlite3.connect(db)
    rows = (
        (seq, event_id(), now, "bench.stored", "info", None, None, None, None, "{}", "0" * 64, "0" * 64)
        for seq in range(1, stored + 1)
    )
    conn.executemany(
        "INSERT INTO audit_events (seq, id, time, type, severity, request_id, client_ip, consumer, route,"
        " details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.commit()
    conn.close()


def write_spill(path: Path, spilled: int) -> list[str]:
    now = int(time.time() * 1000)
    ids = []
    with path.open("w") as f:
        for n in range(spilled):
            eid = event_id()
            ids.append(eid)
            f.write(json.dumps({
                "id": eid, "time": now, "type": "bench.spilled", "severity": "info",
                "request_id": f"spilled-{n}", "client_ip": None, "consumer": None, "route": None,
                "details": {},
            }) + "\n")
    return ids


def lines(path: Path) -> int:
    try:
        with path.open() as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


def run_case(binary: str, stored: int, spilled: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="portcullis-replay-"))
    config = folder / "portcullis.toml"
    config.write_text(CONFIG.format(dir=folder))
    subprocess.run([binary, "migrate", "--config", str(config)], check=True, capture_output=True)
    t0 = time.monotonic()
    fill_store(folder / "store.db", stored)
    fill_s = time.monotonic() - t0
    spill = folder / "spill.jsonl"
    write_spill(spill, spilled)
    log = (folder / "gateway.log").open("w")
    t0 = time.monotonic()
    proc = subprocess.Popen([binary, "serve", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        while lines(spill) > 0:
            if proc.poll() is not None:
                sys.exit(f"the gateway exited ({proc.returncode}); see {folder / 'gateway.log'}")
            if time.monotonic() - t0 > 600:
                sys.exit("the replay did not finish within 10 minutes")
            time.sleep(0.02)
        replay_s = time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    conn = sqlite3.connect(folder / "store.db")
    (replayed,) = conn.execute("SELECT count(*) FROM audit_events WHERE type = 'bench.spilled'").fetchone()
    conn.close()
    if replayed != spilled:
        sys.exit(f"{replayed} of {spilled} spilled events are in the store")
    return {"stored": stored, "spilled": spilled, "fill_s": fill_s, "replay_s": replay_s,
            "per_s": spilled / replay_s if replay_s else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", required=True, help="the portcullis binary (a release build)")
    p.add_argument("--cases", default="0:100000,1000000:10000,1000000:100000",
                   help="STORED:SPILLED pairs, comma-separated")
    a = p.parse_args()
    print("| events in the store | spilled events | replay (from start) | spilled events per s |")
    print("|---:|---:|---:|---:|")
    for case in a.cases.split(","):
        stored, spilled = (int(x) for x in case.split(":"))
        r = run_case(os.path.abspath(a.bin), stored, spilled)
        print(f"| {r['stored']:,} | {r['spilled']:,} | {r['replay_s']:.2f} s | {r['per_s']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
