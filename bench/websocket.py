#!/usr/bin/env python3
"""WebSocket benchmark: portcullis and nginx proxying the same echo upstream,
side by side in one run (docs/benchmarks.md, "WebSocket").

    PORTCULLIS_BIN=target/release/portcullis python3 bench/websocket.py
    python3 bench/websocket.py --idle 10000 --connections 50 --duration 10 --rounds 3

Three figures per proxy, every one against the same run's direct figure
(and, for portcullis, with a message limit on every message, counted in
process and in Redis):
- echo throughput and latency: --connections clients each send a message
  and wait for its echo, for --duration seconds (wsbench load);
- resident memory per idle connection: --idle connections opened through
  the proxy, one message each, then held (wsbench idle); the proxy's RSS
  growth divided by the connections;
- memory after those connections close, against the figure before them.

The proxies run on --proxy-cpu, the upstream and the clients on --load-cpu
(taskset), portcullis with one tokio worker and nginx with one worker.
The hour-long soak is `--soak 3600`: the chat story's 100 connections, each
sending a message every 100 ms (1000 a second), kept open for the hour,
with the gateway's RSS sampled each minute (not run in CI).
"""

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

PORTCULLIS_CONF = """
environment = "development"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
max_connections = {max_connections}
[log]
access_log = false
[store]
url = "sqlite://{tmp}/{name}.db"
[[upstreams]]
name = "echo"
targets = ["http://127.0.0.1:{upstream_port}"]
{redis}
# Every message passes a limit it never reaches: the cost of the check.
[[routes]]
id = "limited"
path = "/limited"
upstream = "echo"
auth = ["none"]
websocket = {{ origins = ["http://bench.local"], max_message = "64KiB", messages = "1000000000 per second per ip" }}

[[routes]]
id = "chat"
path = "/"
upstream = "echo"
auth = ["none"]
websocket = {{ origins = ["http://bench.local"], max_message = "64KiB", idle_timeout = "1h", max_duration = "2h" }}
"""

NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {max_connections}; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-tmp;
    proxy_temp_path {tmp}/nginx-tmp;
    fastcgi_temp_path {tmp}/nginx-tmp;
    uwsgi_temp_path {tmp}/nginx-tmp;
    scgi_temp_path {tmp}/nginx-tmp;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


def log(msg: str) -> None:
    print(f"[ws-bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_port(port: int, limit: float = 20.0) -> None:
    import socket
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def build_wsbench() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "wsbench"
    log("cargo build --release (bench/wsbench)")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                    str(HERE / "wsbench" / "Cargo.toml"), "--target-dir", str(target)], check=True)
    return target / "release" / "wsbench"


def redis_up(url: str) -> bool:
    import socket
    from urllib.parse import urlparse
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def nginx_worker(master: int) -> int:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else master


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.environ.get("PORTCULLIS_BIN", str(ROOT / "target/release/portcullis")))
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", type=int, default=128, help="message size in bytes")
    p.add_argument("--idle", type=int, default=10000, help="idle connections (0: skip)")
    p.add_argument("--proxy-cpu", default="0")
    p.add_argument("--load-cpu", default="1")
    p.add_argument("--soak", type=int, default=0, help="seconds of the soak (not in CI)")
    p.add_argument("--no-limits", dest="limits", action="store_false",
                   help="skip the message-limit scenarios (in-process and Redis)")
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"))
    a = p.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, 3 * a.idle + 4096)
    try:  # root may raise the hard limit too (up to fs.nr_open)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        want = min(hard, want)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    # A proxy holds two sockets per connection (client and upstream).
    most = (want - 1024) // 2
    if a.idle > most:
        log(f"the open-file limit ({want}, the hard limit here) allows {most} idle connections through a proxy, "
            f"not {a.idle}")
        a.idle = most

    wsbench = build_wsbench()
    tmp = Path(tempfile.mkdtemp(prefix="ws-bench-"))
    (tmp / "nginx-tmp").mkdir()
    procs = []

    def spawn(argv, cpu, **kw):
        proc = subprocess.Popen(["taskset", "-c", cpu, *argv], **kw)
        procs.append(proc)
        return proc

    try:
        echo = spawn([str(wsbench), "echo", "127.0.0.1:0"], a.load_cpu, stdout=subprocess.PIPE, text=True)
        upstream_port = int(echo.stdout.readline())
        max_connections = a.idle + 1024
        worker_connections = 2 * a.idle + 1024
        targets = {"direct": upstream_port}
        pids = {}

        def start_gateway(name: str, redis: str) -> tuple[int, int]:
            port, admin = free_port(), free_port()
            conf = tmp / f"{name}.toml"
            conf.write_text(PORTCULLIS_CONF.format(port=port, admin_port=admin, tmp=tmp, upstream_port=upstream_port,
                                                   max_connections=max_connections, redis=redis, name=name))
            env = dict(os.environ, TOKIO_WORKER_THREADS="1", RUST_LOG="warn")
            gw = spawn([a.bin, "serve", "--config", str(conf)], a.proxy_cpu, env=env,
                       stdout=open(tmp / f"{name}.log", "w"), stderr=subprocess.STDOUT)
            wait_port(port)
            return port, gw.pid

        port, pids["portcullis"] = start_gateway("portcullis", "")
        targets["portcullis"] = port
        paths = {name: "/" for name in ("direct", "portcullis", "nginx")}
        if a.limits:
            targets["portcullis-limit"], paths["portcullis-limit"] = port, "/limited"
            if redis_up(a.redis_url):
                prefix = f"wsbench{os.getpid()}"
                rport, _ = start_gateway("portcullis-redis",
                                         f'[redis]\nurl = "{a.redis_url}"\nprefix = "{prefix}"\n')
                targets["portcullis-redis-limit"], paths["portcullis-redis-limit"] = rport, "/limited"
            else:
                log(f"no Redis at {a.redis_url}: the Redis message-limit scenario is skipped")

        nginx_port = free_port()
        nconf = tmp / "nginx.conf"
        nconf.write_text(NGINX_CONF.format(tmp=tmp, port=nginx_port, upstream_port=upstream_port,
                                           max_connections=worker_connections, nofile=want))
        nginx = spawn([a.nginx, "-p", str(tmp), "-c", str(nconf), "-g", "daemon off;"], a.proxy_cpu)
        wait_port(nginx_port)
        time.sleep(0.3)
        targets["nginx"], pids["nginx"] = nginx_port, nginx_worker(nginx.pid)

        # Echo throughput and latency, interleaved by round.
        results = {name: [] for name in targets}
        for r in range(a.rounds):
            for name, port in targets.items():
                out = subprocess.run(["taskset", "-c", a.load_cpu, str(wsbench), "load",
                                      f"ws://127.0.0.1:{port}{paths.get(name, '/')}",
                                      str(a.connections), str(a.duration), str(a.size)],
                                     capture_output=True, text=True, check=True).stdout.split()
                rate, p50, p99, errors = float(out[0]), int(out[1]), int(out[2]), int(out[3])
                results[name].append((rate, p50, p99, errors))
                log(f"round {r + 1} {name}: {rate:.0f} msg/s p50 {p50} us p99 {p99} us errors {errors}")
        print(f"\n## Echo: {a.connections} connections, {a.size}-byte messages, {a.duration} s x {a.rounds} rounds (medians)\n")
        print("| target | messages/s | vs direct | p50 µs | p99 µs | p99 vs direct | errors |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        med = {n: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v),
                   statistics.median(x[2] for x in v), sum(x[3] for x in v)) for n, v in results.items()}
        d = med["direct"]
        for name, (rate, p50, p99, errors) in med.items():
            print(f"| {name} | {rate:,.0f} | {rate / d[0]:.2f}x | {p50:.0f} | {p99:.0f} | {p99 / max(d[2], 1):.2f}x | {errors} |")

        if a.idle:
            print(f"\n## Idle: {a.idle} connections, one message each, then held\n")
            print("| proxy | RSS before (KiB) | RSS with them (KiB) | per connection | after they close (KiB) |")
            print("| --- | --- | --- | --- | --- |")
            for name in ("portcullis", "nginx"):
                pid, port = pids[name], targets[name]
                before = rss_kib(pid)
                idle = subprocess.Popen(["taskset", "-c", a.load_cpu, str(wsbench), "idle", f"ws://127.0.0.1:{port}/",
                                         str(a.idle), "600"], stdout=subprocess.PIPE, text=True)
                line = idle.stdout.readline().split()
                opened = int(line[1])
                time.sleep(2)
                during = rss_kib(pid)
                idle.send_signal(signal.SIGKILL)
                idle.wait()
                # jemalloc returns freed pages after its 10 s decay.
                time.sleep(15)
                after = rss_kib(pid)
                per = (during - before) / max(opened, 1)
                print(f"| {name} | {before:,} | {during:,} ({opened} open) | {per:.1f} KiB | {after:,} |")

        if a.soak:
            # The chat story's targets: 100 connections, 1000 messages a
            # second between them, kept open for the whole run.
            print(f"\n## Soak: 100 connections, a message every 100 ms each, {a.soak} s\n")
            soak = subprocess.Popen(["taskset", "-c", a.load_cpu, str(wsbench), "soak",
                                     f"ws://127.0.0.1:{targets['portcullis']}/", "100", str(a.soak), "100"],
                                    stdout=subprocess.PIPE, text=True)
            samples = []
            started = time.time()
            while soak.poll() is None:
                samples.append((int(time.time() - started), rss_kib(pids["portcullis"])))
                for _ in range(60):
                    if soak.poll() is not None:
                        break
                    time.sleep(1)
            messages, errors = soak.stdout.read().split()
            print(f"{messages} messages echoed, {errors} errors")
            print("\n| after (s) | portcullis RSS (KiB) |\n| --- | --- |")
            for at, rss in samples:
                print(f"| {at} | {rss:,} |")
        print(f"\nmachine: {os.cpu_count()} CPUs, {subprocess.run(['uname', '-srm'], capture_output=True, text=True).stdout.strip()}; "
              f"proxies on CPU {a.proxy_cpu}, upstream and clients on CPU {a.load_cpu}; "
              f"nginx {subprocess.run([a.nginx, '-v'], capture_output=True, text=True).stderr.strip()}")
    finally:
        # SIGTERM, not SIGKILL: nginx's master stops its workers only when
        # it is asked (a killed master leaves them running).
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
