#!/usr/bin/env python3
"""Start a private clamd (start.sh) and exercise INSTREAM over TCP and Unix.

    python3 tests/support/clamav/check.py [-v]

Starts clamd on a free 127.0.0.1 port with the test-only signature database
that start.sh writes, waits for PING -> PONG, scans clean / infected /
oversized streams, checks the exact replies, then SIGTERMs clamd's own PID
and removes the temp dir. Exit 0 only if every check passed; the last line is
"N passed, N failed".
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PATTERN = b"PORTCULLIS-TEST-MALWARE-7f3a"
# assembled from parts so this file itself is not an EICAR file
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
STREAM_MAX = 25 * 1024 * 1024  # StreamMaxLength 25M in start.sh

VERBOSE = "-v" in sys.argv
passed = failed = 0


def check(name: str, got, want) -> None:
    global passed, failed
    ok = got == want
    passed += ok
    failed += not ok
    if ok:
        print(f"ok   {name}: {got!r}" if VERBOSE else f"ok   {name}")
    else:
        print(f"FAIL {name}: got {got!r}, want {want!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(addr):
    if isinstance(addr, str):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        s.connect(addr)
        return s
    return socket.create_connection(addr, timeout=30)


def read_reply(s: socket.socket, term: bytes = b"\0") -> bytes:
    buf = b""
    while not buf.endswith(term):
        try:
            b = s.recv(4096)
        except ConnectionResetError:
            break
        if not b:
            break
        buf += b
    return buf


def command(addr, cmd: bytes) -> bytes:
    with connect(addr) as s:
        s.sendall(b"z" + cmd + b"\0")
        return read_reply(s)


def instream(addr, chunks, term=True) -> bytes:
    """zINSTREAM, each chunk as <u32 BE length><data>, then a 0 length.
    If clamd rejects mid-stream (size limit) it replies and closes; we stop
    sending on EPIPE/ECONNRESET and still read what it said."""
    with connect(addr) as s:
        try:
            s.sendall(b"zINSTREAM\0")
            for c in chunks:
                s.sendall(struct.pack(">I", len(c)) + c)
            if term:
                s.sendall(struct.pack(">I", 0))
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_reply(s)


def split(data: bytes, size: int):
    return [data[i:i + size] for i in range(0, len(data), size)]


def main() -> int:
    tmp = tempfile.mkdtemp(prefix="portcullis-clamd-")
    port = free_port()
    sock = os.path.join(tmp, "clamd.sock")
    tcp = ("127.0.0.1", port)
    t0 = time.monotonic()
    proc = subprocess.Popen([str(HERE / "start.sh"), tmp, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # start.sh execs clamd, so proc.pid is clamd's pid.
        deadline = t0 + 60
        pong = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                pong = command(tcp, b"PING")
                break
            except OSError:
                time.sleep(0.01)
        ready = time.monotonic() - t0
        if pong is None:
            print(f"FAIL clamd did not come up (exit {proc.poll()}); log:")
            print(Path(tmp, "clamd.log").read_text(errors="replace") if Path(tmp, "clamd.log").exists() else "(no log)")
            return 1
        print(f"clamd pid {proc.pid} on 127.0.0.1:{port} + {sock}, PONG after {ready*1000:.0f} ms")
        check("PING tcp", pong, b"PONG\0")
        check("PING unix", command(sock, b"PING"), b"PONG\0")
        print("VERSION:", command(tcp, b"VERSION"))

        clean = os.urandom(1 << 20).replace(PATTERN[:4], b"xxxx")
        found = b"stream: Portcullis.Test.Pattern.UNOFFICIAL FOUND\0"
        check("clean 1 MiB", instream(tcp, split(clean, 65536)), b"stream: OK\0")
        check("empty stream", instream(tcp, []), b"stream: OK\0")
        check("pattern alone", instream(tcp, [PATTERN]), found)
        mid = clean[:len(clean) // 2] + PATTERN + clean[len(clean) // 2:]
        check("pattern mid 1 MiB", instream(tcp, split(mid, 65536)), found)
        at = (1 << 19) - 10  # put a chunk boundary inside the pattern
        mid2 = clean[:at] + PATTERN + clean[at:]
        check("pattern across 512K chunk boundary", instream(tcp, split(mid2, 1 << 19)), found)
        check("pattern in 1-byte chunks", instream(tcp, split(b"abc" + PATTERN + b"xyz", 1)), found)
        check("pattern via unix", instream(sock, [b"hello " + PATTERN]), found)
        # the exact file matches both the .ndb and the .hdb signature; clamd
        # reports the body (.ndb) match. (.hdb alone: ...EICAR.MD5.UNOFFICIAL)
        check("EICAR file exact", instream(tcp, [EICAR]),
              b"stream: Portcullis.Test.EICAR.UNOFFICIAL FOUND\0")
        check("EICAR embedded", instream(tcp, [b"prefix\n" + EICAR + b"\nsuffix"]),
              b"stream: Portcullis.Test.EICAR.UNOFFICIAL FOUND\0")

        big = b"\0" * (1 << 20)
        check("exactly StreamMaxLength", instream(tcp, [big] * 25), b"stream: OK\0")
        check("StreamMaxLength + 1", instream(tcp, [big] * 25 + [b"x"]),
              b"INSTREAM size limit exceeded. ERROR\0")
        check("30 MiB via unix", instream(sock, [big] * 30),
              b"INSTREAM size limit exceeded. ERROR\0")
        # one chunk header claiming more than StreamMaxLength
        with connect(tcp) as s:
            s.sendall(b"zINSTREAM\0" + struct.pack(">I", STREAM_MAX + 1))
            check("oversized chunk header", read_reply(s), b"INSTREAM size limit exceeded. ERROR\0")
        check("unknown command", command(tcp, b"BOGUS"), b"UNKNOWN COMMAND\0")
        # newline-delimited variant
        with connect(tcp) as s:
            s.sendall(b"nINSTREAM\n" + struct.pack(">I", len(PATTERN)) + PATTERN + struct.pack(">I", 0))
            check("nINSTREAM reply", read_reply(s, b"\n"), b"stream: Portcullis.Test.Pattern.UNOFFICIAL FOUND\n")
        # clamd still alive and answering after the errors
        check("PING after errors", command(tcp, b"PING"), b"PONG\0")

        st = Path(f"/proc/{proc.pid}/status").read_text()
        mem = {l.split(":")[0]: l.split(":")[1].strip() for l in st.splitlines() if l.startswith(("VmRSS", "VmHWM"))}
        print(f"clamd memory: VmRSS {mem.get('VmRSS')}, peak VmHWM {mem.get('VmHWM')}")
    finally:
        if proc.poll() is None and proc.pid > 1:
            os.kill(proc.pid, signal.SIGTERM)  # clamd's own pid only
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        print(f"clamd exit status {proc.returncode}")
        if VERBOSE and Path(tmp, "clamd.log").exists():
            print("".join(l for l in Path(tmp, "clamd.log").read_text().splitlines(True)
                          if "Limits:" not in l and "support enabled" not in l))
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
