#!/usr/bin/env python3
"""Resident memory per client connection: portcullis, nginx and HAProxy side
by side in one run (docs/benchmarks.md, "Memory per connection").

For each proxy and protocol (HTTP/1.1 keep-alive, and HTTP/2 with prior
knowledge), this opens N connections, sends one request on each, and with all
of them open and idle reads the proxy's resident memory (VmRSS of the process
that holds the connections: portcullis, nginx's one worker, HAProxy). Then
every connection sends one request a second for a while (the "active"
figure), then all close and the memory is read again.

    python3 bench/idle-memory.py --bin target/release/portcullis
    python3 bench/idle-memory.py --bin BIN --connections 2000 --only portcullis

All proxies have one worker (portcullis: one tokio worker thread; nginx:
worker_processes 1; HAProxy: nbthread 1), access logs off, and a 10-minute
idle timeout, in front of one nginx `return 200` upstream. The open-file limit
is raised to the hard limit; N is capped so that every proxy can hold N client
and some upstream sockets. A peer that is not installed is listed as skipped.
"""

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

UPSTREAM_CONF = """
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {prefix}/upstream.pid;
error_log {prefix}/upstream-error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp-u;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    server {{
        listen 127.0.0.1:{upstream_port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""

NGINX_CONF = """
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp-n;
    proxy_temp_path {prefix}/tmp-np;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{h1_port} backlog=4096;
        listen 127.0.0.1:{h2_port} http2 backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

HAPROXY_CONF = """
global
    nbthread 1
    maxconn {maxconn}
defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
    http-reuse always
frontend h1
    bind 127.0.0.1:{h1_port}
    default_backend upstream
frontend h2
    bind 127.0.0.1:{h2_port} proto h2
    default_backend upstream
backend upstream
    server u1 127.0.0.1:{upstream_port}
"""

PORTCULLIS_CONF = """
environment = "development"
[server]
listen = "127.0.0.1:{h1_port}"
admin_listen = "127.0.0.1:{admin_port}"
max_connections = {maxconn}
idle_timeout = "600s"
[log]
access_log = false
[store]
url = "sqlite://{prefix}/idle.db"
[[upstreams]]
name = "bench"
targets = ["http://127.0.0.1:{upstream_port}"]
idle_timeout = "{pool_idle}"
[[routes]]
id = "public"
path = "/"
upstream = "bench"
auth = ["none"]
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_port(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


# --- the clients -------------------------------------------------------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def h2_request(stream):
    # :method GET, :scheme http, :path / (static table), :authority as a
    # literal with an indexed name; END_STREAM | END_HEADERS.
    block = b"\x82\x86\x84" + b"\x01\x09localhost"
    return h2_frame(1, 0x5, stream, block)


class Client(asyncio.Protocol):
    """One connection that sends a request when told and counts answers."""

    def __init__(self, http2, done):
        self.http2 = http2
        self.buf = bytearray()
        self.transport = None
        self.answered = 0
        self.sent = 0
        self.stream = 1
        self.waiter = None
        self.closed = done

    def connection_made(self, transport):
        self.transport = transport
        if self.http2:
            transport.write(H2_PREFACE + h2_frame(4, 0, 0))

    def send(self):
        self.sent += 1
        if self.http2:
            self.transport.write(h2_request(self.stream))
            self.stream += 2
        else:
            self.transport.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")

    def data_received(self, data):
        self.buf += data
        if self.http2:
            self._h2_frames()
        else:
            self._h1_responses()

    def _h1_responses(self):
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buf[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            self._answered()

    def _h2_frames(self):
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                return
            kind, flags = self.buf[3], self.buf[4]
            del self.buf[: 9 + length]
            if kind == 4 and not flags & 1:
                self.transport.write(h2_frame(4, 1, 0))
            elif kind == 6 and not flags & 1:
                self.transport.write(h2_frame(6, 1, 0, b"\0" * 8))
            elif kind in (0, 1) and flags & 1:
                self._answered()

    def _answered(self):
        self.answered += 1
        if self.waiter and not self.waiter.done() and self.answered >= self.sent:
            self.waiter.set_result(None)

    async def request(self):
        self.waiter = asyncio.get_running_loop().create_future()
        self.send()
        await asyncio.wait_for(self.waiter, 10)

    def connection_lost(self, exc):
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed by the proxy"))
        self.closed.append(self)


async def open_clients(port, n, http2, parallel=64):
    loop = asyncio.get_running_loop()
    closed = []
    clients = []
    gate = asyncio.Semaphore(parallel)

    async def one():
        async with gate:
            _, client = await loop.create_connection(lambda: Client(http2, closed), "127.0.0.1", port)
            await client.request()
            clients.append(client)

    await asyncio.gather(*(one() for _ in range(n)))
    return clients, closed


async def active_phase(clients, seconds):
    """Every client sends one request a second, spread evenly over the second."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    slots = 100
    sent = 0
    answered_before = sum(c.answered for c in clients)
    for tick in range(int(seconds * slots)):
        due = start + tick / slots
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for client in clients[tick % slots :: slots]:
            client.send()
            sent += 1
    took = loop.time() - start
    await asyncio.sleep(0.5)
    answered = sum(c.answered for c in clients) - answered_before
    return sent, answered, took


# --- the proxies ----------------------------------------------------------------


class Proxy:
    def __init__(self, name, h1_port, h2_port, argv, env=None, find_pid=None):
        self.name, self.h1_port, self.h2_port = name, h1_port, h2_port
        self.argv, self.env, self.find_pid = argv, env, find_pid
        self.process = None
        self.wrapped = False
        # Proxies on CPU 1; the upstream and this client share CPU 0.
        self.cpu = "1" if os.cpu_count() > 1 else "0"

    def start(self, log):
        argv = ["taskset", "-c", self.cpu, *self.argv] if shutil.which("taskset") else self.argv
        self.process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        wait_port(self.h1_port)
        self.pid = self.find_pid(self.process.pid) if self.find_pid else self.process.pid

    def stop(self):
        if self.process and self.process.poll() is None:
            if self.wrapped:
                # Let the wrapper (a profiler) see its child exit and finish.
                os.kill(self.pid, signal.SIGTERM)
            else:
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(120 if self.wrapped else 10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def descendant(pid, name):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        todo = [pid]
        while todo:
            p = todo.pop()
            try:
                if Path(f"/proc/{p}/comm").read_text().strip().startswith(name):
                    return p
            except OSError:
                pass
            todo.extend(children(p))
        time.sleep(0.05)
    raise RuntimeError(f"no {name} under {pid}")


def nginx_worker(master_pid):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        workers = children(master_pid)
        if workers:
            return workers[0]
        time.sleep(0.05)
    raise RuntimeError("nginx started no worker")


def make_proxies(args, prefix, upstream_port, nofile, only):
    proxies, skipped = [], []
    worker_connections = nofile - 64
    if "portcullis" in only:
        h1, admin = free_port(), free_port()
        conf = prefix / "portcullis.toml"
        conf.write_text(
            PORTCULLIS_CONF.format(
                h1_port=h1, admin_port=admin, maxconn=args.connections + 100, prefix=prefix,
                upstream_port=upstream_port, pool_idle=args.pool_idle,
            )
        )
        env = dict(os.environ, TOKIO_WORKER_THREADS="1", RUST_LOG="warn")
        argv = [args.bin, "serve", "--config", str(conf)]
        # Under a profiler (bench/heap-profile.sh) the measured process is
        # portcullis, a child of the profiler's wrapper.
        find = None
        if args.under:
            argv = args.under.split() + argv
            find = lambda pid: descendant(pid, "portcullis")
        # HTTP/1 and HTTP/2 (prior knowledge) share the one port.
        proxies.append(Proxy("portcullis", h1, h1, argv, env, find_pid=find))
        proxies[-1].wrapped = bool(args.under)
    if "nginx" in only:
        if shutil.which("nginx"):
            h1, h2 = free_port(), free_port()
            conf = prefix / "nginx.conf"
            conf.write_text(
                NGINX_CONF.format(
                    nofile=nofile, worker_connections=worker_connections, prefix=prefix,
                    upstream_port=upstream_port, h1_port=h1, h2_port=h2,
                )
            )
            argv = ["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"]
            proxies.append(Proxy("nginx", h1, h2, argv, find_pid=nginx_worker))
        else:
            skipped.append("nginx")
    if "haproxy" in only:
        if shutil.which("haproxy"):
            h1, h2 = free_port(), free_port()
            conf = prefix / "haproxy.cfg"
            conf.write_text(
                HAPROXY_CONF.format(maxconn=args.connections + 100, upstream_port=upstream_port, h1_port=h1, h2_port=h2)
            )
            proxies.append(Proxy("haproxy", h1, h2, ["haproxy", "-db", "-f", str(conf)]))
        else:
            skipped.append("haproxy")
    return proxies, skipped


async def measure(proxy, http2, args):
    port = proxy.h2_port if http2 else proxy.h1_port
    # Warm up: lazy setup (the first request's allocations, the upstream pool).
    warm, _ = await open_clients(port, 16, http2)
    for client in warm:
        await client.request()
        client.transport.close()
    await asyncio.sleep(args.settle)
    base = rss_kib(proxy.pid)
    clients, closed = await open_clients(port, args.connections, http2)
    await asyncio.sleep(args.settle)
    idle = rss_kib(proxy.pid)
    row = {
        "proxy": proxy.name,
        "protocol": "h2" if http2 else "http/1.1",
        "connections": len(clients),
        "base_kib": base,
        "idle_kib": idle,
        "idle_per_conn_kib": round((idle - base) / len(clients), 2),
    }
    if args.active > 0:
        sent, answered, took = await active_phase(clients, args.active)
        active = rss_kib(proxy.pid)
        row.update(
            active_kib=active,
            active_per_conn_kib=round((active - base) / len(clients), 2),
            active_rate=round(answered / took),
            active_answered=f"{answered}/{sent}",
        )
    if closed:
        row["closed_by_proxy"] = len(closed)
    for client in clients:
        client.transport.close()
    await asyncio.sleep(args.close_settle)
    after = rss_kib(proxy.pid)
    row.update(after_close_kib=after, after_close_vs_base=round(after / base, 3))
    return row


def table(rows):
    head = "| proxy | protocol | connections | base RSS | idle KiB/conn | active KiB/conn | active req/s | after close vs base |"
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        lines.append(
            f"| {r['proxy']} | {r['protocol']} | {r['connections']} | {r['base_kib'] / 1024:.1f} MiB "
            f"| {r['idle_per_conn_kib']} | {r.get('active_per_conn_kib', '-')} | {r.get('active_rate', '-')} "
            f"| {r['after_close_vs_base']}x |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True, help="the portcullis binary")
    parser.add_argument("--connections", type=int, default=10_000, help="client connections per proxy (default 10000)")
    parser.add_argument("--active", type=float, default=10, help="seconds of one request a second per connection (0: skip)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait before each reading")
    parser.add_argument(
        "--close-settle", type=float, default=5.0, help="seconds after the connections close before the last reading"
    )
    parser.add_argument(
        "--pool-idle", default="90s",
        help="portcullis's upstream idle_timeout: below --close-settle, the last reading leaves out the upstream pool",
    )
    parser.add_argument("--only", default="portcullis,nginx,haproxy", help="comma-separated proxies")
    parser.add_argument("--protocols", default="http1,h2", help="http1, h2 or both")
    parser.add_argument("--results", help="write results.json and results.md here")
    parser.add_argument("--under", help="a command to run portcullis under, e.g. a heap profiler")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Past the hard limit where allowed (root), up to what the kernel allows.
    nofile = hard
    for want in (4 * args.connections + 1000, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            nofile = want
            break
        except (ValueError, OSError):
            continue
    # The client and the proxy each hold one socket per connection, on top of
    # the proxy's upstream sockets; all in this one limit.
    # HAProxy sizes its own limit as twice maxconn plus some.
    cap = max(100, (nofile - 1000) // 2)
    if args.connections > cap:
        print(f"[idle] open-file limit {nofile}: {args.connections} connections capped to {cap}", file=sys.stderr)
        args.connections = cap
    only = set(args.only.split(","))
    protocols = args.protocols.split(",")

    prefix = Path(tempfile.mkdtemp(prefix="portcullis-idle-"))
    for d in ("tmp-u", "tmp-n", "tmp-np"):
        (prefix / d).mkdir()
    log = open(prefix / "proxies.log", "wb")
    upstream_port = free_port()
    (prefix / "upstream.conf").write_text(
        UPSTREAM_CONF.format(nofile=nofile, worker_connections=nofile - 64, prefix=prefix, upstream_port=upstream_port)
    )
    upstream = Proxy("upstream", upstream_port, None, ["nginx", "-p", str(prefix), "-c", str(prefix / "upstream.conf"), "-g", "daemon off;"])
    upstream.cpu = "0"
    upstream.start(log)
    if shutil.which("taskset") and os.cpu_count() > 1:
        os.sched_setaffinity(0, {0})
    proxies, skipped = make_proxies(args, prefix, upstream_port, nofile, only)
    rows = []
    try:
        for proxy in proxies:
            for protocol in protocols:
                proxy.start(log)
                try:
                    row = asyncio.run(measure(proxy, protocol == "h2", args))
                finally:
                    proxy.stop()
                print(json.dumps(row), file=sys.stderr)
                rows.append(row)
    finally:
        upstream.stop()
        log.close()
    machine = f"{os.cpu_count()} cores, {subprocess.run(['uname', '-sr'], capture_output=True, text=True).stdout.strip()}"
    report = table(rows)
    if skipped:
        report += "\n\nSkipped (not installed): " + ", ".join(skipped)
    print(report)
    if args.results:
        out = Path(args.results)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2))
        (out / "results.md").write_text(report + "\n")
    shutil.rmtree(prefix, ignore_errors=True)


if __name__ == "__main__":
    main()
