#!/usr/bin/env python3
"""Throughput and latency of portcullis against nginx and other reverse
proxies, on one machine.

Started by bench/run.sh, which builds the binary; see docs/benchmarks.md.
Python 3.11 standard library only (matplotlib, when installed, draws the chart).

One run starts these servers in a private temp directory, all on loopback:

  upstream    nginx answering every request with a fixed 200 "ok\\n"
  nginx       nginx as a reverse proxy to the upstream (the reference), with
              a second server terminating TLS 1.3 (target nginx_tls) and a
              third writing an access log (target nginx_logged)
  peers       other reverse proxies to the same upstream, the [peer.*]
              tables of the scenario file (HAProxy, Envoy, Traefik, Caddy);
              one that is not installed is not started, and its scenarios
              are listed as skipped
  portcullis  the gateway: public, API-key and rate-limited routes to the
              upstream (bench/portcullis.toml, SQLite store in the temp dir)
  portcullis_redis
              a second gateway whose rate limit lives in Redis
              (bench/portcullis-redis.toml; skipped if Redis is unreachable)
  portcullis_tls
              the public route behind [server.tls], with the same certificate
              as nginx_tls (an ECDSA P-256 one made with openssl per run)

(the portcullis instances are the [instance.*] tables of the scenario file),
then, for each round, runs wrk once per scenario in bench/scenarios.toml
(order rotated every round), reads the CPU time the proxy under test used
from /proc, prints the medians as a markdown table and draws them as a chart
(<results>/<stamp>.png). With --syscalls, extra runs count the system calls
(strace -c) and context switches per request of some scenarios' proxies.

CPU placement (2-core default): the upstream and wrk share --load-cpu (0);
each proxy under test gets --proxy-cpu (1) to itself, so all proxies are
compared on exactly one core. nginx and the peers run one worker (or thread)
per CPU in --proxy-cpu ({proxy_workers} in the templates), portcullis
--tokio-workers: --proxy-cpu 0,1 --tokio-workers 2 compares two workers each.
A benchmark, not a test: nothing here passes or fails on the numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# The bench user's password (a throwaway store in the run's temp folder).
BENCH_PASSWORD = "bench-password-not-secret"
sys.path.insert(0, str(BENCH_DIR))
import tokens  # noqa: E402  (bench/tokens.py: the JWT scenarios' tokens)
CLK_TCK = os.sysconf("SC_CLK_TCK")
NGINX_TARGETS = ("upstream", "nginx", "nginx_tls", "nginx_logged")
# Which server process answers on a target's port (nginx_tls and
# nginx_logged are the nginx proxy's second, TLS, and third, logged, servers).
SERVER_OF_TARGET = {"nginx_tls": "nginx", "nginx_logged": "nginx"}
# Servers whose first process only supervises the workers that do the work
# (nginx's master): --syscalls traces the workers.
MASTER_WORKER = ("upstream", "nginx")
SERVICES = ("redis",)
# Chart colours by scenario group (scenario key `group`).
GROUP_COLOURS = {"proxies": "tab:blue", "features": "tab:orange", "direct": "tab:gray"}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def env_default(name: str, default, kind=int):
    value = os.environ.get(name)
    return kind(value) if value not in (None, "") else default


# --------------------------------------------------------------------------
# Scenarios


@dataclass
class Scenario:
    name: str
    target: str
    path: str = "/"
    headers: list[str] = field(default_factory=list)
    cpu: str = "none"
    expect_status: int = 200
    # A file in bench/ sent as a POST body (application/json); GET without.
    body_file: str | None = None
    # Chart colour: "proxies", or by default "direct" (upstream) / "features".
    group: str | None = None

    def chart_group(self) -> str:
        return self.group or ("direct" if self.target == "upstream" else "features")


@dataclass
class Comparison:
    subject: str
    baseline: str
    goal: str | None = None


@dataclass
class Instance:
    """One portcullis process: a scenario target with its own config."""

    name: str
    config: str
    api_key: dict[str, str] | None = None
    session: dict[str, str] | None = None
    needs: list[str] = field(default_factory=list)
    # The public listener speaks TLS (the template sets [server.tls]).
    tls: bool = False


@dataclass
class Peer:
    """Another reverse proxy (HAProxy, Envoy, ...): a scenario target."""

    name: str
    executable: list[str]
    config: list[str]
    argv: list[str]
    version: list[str]
    env: dict[str, str] = field(default_factory=dict)
    version_match: str | None = None


def find_executable(peer: Peer) -> tuple[str | None, list[str]]:
    """The first candidate that is an executable file (bare names on PATH),
    and the candidates tried. BENCH_<NAME> in the environment replaces the
    list, to point at another build or to test the skipped path."""
    override = os.environ.get(f"BENCH_{peer.name.upper()}")
    candidates = [override] if override else peer.executable
    for c in candidates:
        if "/" not in c:
            found = shutil.which(c)
            if found:
                return found, candidates
            continue
        for path in sorted(glob.glob(os.path.expanduser(c))):
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path, candidates
    return None, candidates


def load_peers(path: Path, data: dict, taken: set[str]) -> dict[str, Peer]:
    peers = {}
    for name, raw in data.get("peer", {}).items():
        where = f"{path}: peer {name!r}"
        unknown = set(raw) - {"executable", "config", "argv", "env", "version", "version_match"}
        missing = {"executable", "config", "argv", "version"} - set(raw)
        if unknown or missing:
            sys.exit(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        if name in taken or name == "none" or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            sys.exit(f"{where}: the name must be an identifier other than none, nginx's "
                     f"targets and the instances")
        # A single executable or template may be written as a string.
        raw = {**raw, **{k: [raw[k]] for k in ("executable", "config") if isinstance(raw[k], str)}}
        peer = Peer(name=name, **raw)
        peer.env = {k: str(v) for k, v in peer.env.items()}
        for template in peer.config:
            if not (BENCH_DIR / template).is_file():
                sys.exit(f"{where}: no template bench/{template}")
        if peer.version_match:
            try:
                re.compile(peer.version_match)
            except re.error as e:
                sys.exit(f"{where}: bad version_match: {e}")
        peers[name] = peer
    return peers


def load_instances(path: Path, data: dict) -> dict[str, Instance]:
    raw_all = data.get("instance") or {"portcullis": {"config": "portcullis.toml"}}
    instances = {}
    for name, raw in raw_all.items():
        where = f"{path}: instance {name!r}"
        unknown = set(raw) - {"config", "api_key", "session", "needs", "tls"}
        if unknown:
            sys.exit(f"{where}: unknown keys {sorted(unknown)}")
        if name in NGINX_TARGETS or name == "none" or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            sys.exit(f"{where}: the name must be an identifier other than {NGINX_TARGETS} and none")
        inst = Instance(name=name, **raw)
        if not (BENCH_DIR / inst.config).is_file():
            sys.exit(f"{where}: no template bench/{inst.config}")
        if inst.api_key is not None and set(inst.api_key) != {"consumer", "env"}:
            sys.exit(f"{where}: api_key must be {{ consumer = \"NAME\", env = \"VAR\" }}")
        if inst.session is not None and set(inst.session) != {"user", "env"}:
            sys.exit(f"{where}: session must be {{ user = \"NAME\", env = \"VAR\" }}")
        bad = set(inst.needs) - set(SERVICES)
        if bad:
            sys.exit(f"{where}: unknown services {sorted(bad)}; known: {SERVICES}")
        instances[name] = inst
    return instances


def load_scenarios(path: Path, only: list[str] | None):
    data = tomllib.loads(path.read_text())
    instances = load_instances(path, data)
    peers = load_peers(path, data, {*NGINX_TARGETS, *instances})
    targets = (*NGINX_TARGETS, *instances, *peers)
    cpu_owners = ("none", "nginx", *instances, *peers)
    scenarios = []
    for raw in data.get("scenario", []):
        unknown = set(raw) - {"name", "target", "path", "headers", "cpu", "expect_status", "body_file",
                              "group"}
        if unknown:
            sys.exit(f"{path}: scenario {raw.get('name')!r}: unknown keys {sorted(unknown)}")
        s = Scenario(**raw)
        if s.target not in targets:
            sys.exit(f"{path}: scenario {s.name!r}: target must be one of {targets}")
        if s.cpu not in cpu_owners:
            sys.exit(f"{path}: scenario {s.name!r}: cpu must be one of {cpu_owners}")
        owner = SERVER_OF_TARGET.get(s.target, s.target)
        if s.target != "upstream" and s.cpu not in ("none", owner):
            sys.exit(f"{path}: scenario {s.name!r}: cpu must be the loaded proxy, {owner!r} (or none)")
        if not s.path.startswith("/"):
            sys.exit(f"{path}: scenario {s.name!r}: path must start with /")
        scenarios.append(s)
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        sys.exit(f"{path}: scenario names must be unique")
    if only:
        missing = set(only) - set(names)
        if missing:
            sys.exit(f"--only: no such scenario {sorted(missing)}; have {names}")
        scenarios = [s for s in scenarios if s.name in only]
    comparisons = [Comparison(**c) for c in data.get("comparison", [])]
    for c in comparisons:
        if c.subject not in names or c.baseline not in names:
            sys.exit(f"{path}: comparison {c.subject} / {c.baseline}: no such scenario")
    selected = {s.name for s in scenarios}
    comparisons = [c for c in comparisons if c.subject in selected and c.baseline in selected]
    portcullis_env = {k: str(v) for k, v in data.get("portcullis", {}).get("env", {}).items()}
    used = {s.target for s in scenarios} | {s.cpu for s in scenarios}
    instances = {k: v for k, v in instances.items() if k in used}
    peers = {k: v for k, v in peers.items() if k in used}
    return scenarios, comparisons, portcullis_env, instances, peers


def expand(text: str, env: dict[str, str]) -> str:
    """Replaces ${VAR} with env[VAR]; an unknown variable is an error."""

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in env:
            sys.exit(f"scenario header refers to ${{{name}}}, which is not set")
        return env[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, text)


def cpu_list(spec: str) -> set[int]:
    """The CPUs a taskset -c list names ("1", "0,1", "0-3", "0-7:2")."""
    cpus = set()
    for part in spec.split(","):
        span, _, stride = part.strip().partition(":")
        lo, _, hi = span.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1, int(stride or 1)))
    if not cpus:
        raise ValueError(spec)
    return cpus


# --------------------------------------------------------------------------
# Processes


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Server:
    def __init__(self, name: str, argv: list[str], logfile: Path, env=None):
        self.name = name
        self.logfile = logfile
        self.out = open(logfile, "ab")
        # Own session: a Ctrl-C on the terminal reaches only the harness,
        # which then stops the servers itself.
        self.proc = subprocess.Popen(
            argv, stdout=self.out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.pid = self.proc.pid  # taskset execs the program: same pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.alive():
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()

    def tail(self, n: int = 30) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def wait_http(port: int, server: Server, path="/", headers=None, timeout=20.0, body=None,
              tls=False) -> int:
    """Waits until the listener answers; returns the status of a GET (a
    POST of `body`, if given). With `tls`, over HTTPS (the run's own
    certificate is not verified)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited early:\n{server.tail()}")
        try:
            if tls:
                conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2,
                                                   context=ssl._create_unverified_context())
            else:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            if body is None:
                conn.request("GET", path, headers=headers or {})
            else:
                conn.request("POST", path, body=body,
                             headers={**(headers or {}), "Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            return resp.status
        except (OSError, ssl.SSLError) as e:
            last = e
            time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer on port {port} within {timeout}s: {last}")


def parse_header(h: str) -> tuple[str, str]:
    name, _, value = h.partition(":")
    return name.strip(), value.strip()


# --------------------------------------------------------------------------
# Redis (an outside service: never started, pinned or restarted here)


def resp_command(args: list[str]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def resp_reply(f) -> str | int | list | Exception | None:
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise OSError("connection closed")
    kind, body = line[:1], line[1:-2].decode(errors="replace")
    if kind == b"+":
        return body
    if kind == b"-":
        return RuntimeError(body)
    if kind == b":":
        return int(body)
    if kind == b"$":
        n = int(body)
        return None if n < 0 else f.read(n + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(body)
        return None if n < 0 else [resp_reply(f) for _ in range(n)]
    raise OSError(f"not a Redis reply: {line!r}")


def redis_probe(url: str, timeout: float = 2.0) -> tuple[str | None, int | None, str]:
    """PINGs the Redis at `url`. Returns (problem or None, the server's pid
    when it runs on this machine and /proc shows it, its version)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "redis":
        return f"{url}: only redis:// URLs are probed", None, "unknown"
    host, port = u.hostname or "127.0.0.1", u.port or 6379
    commands = []
    if u.password:
        user = [urllib.parse.unquote(u.username)] if u.username else []
        commands.append(["AUTH", *user, urllib.parse.unquote(u.password)])
    db = u.path.strip("/")
    if db:
        commands.append(["SELECT", db])
    commands += [["PING"], ["INFO", "server"]]
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            f = sock.makefile("rwb")
            f.write(b"".join(resp_command(c) for c in commands))
            f.flush()
            replies = [resp_reply(f) for _ in commands]
    except (OSError, ValueError) as e:
        return f"Redis at {host}:{port} is not reachable ({e})", None, "unknown"
    for c, r in zip(commands, replies):
        if isinstance(r, Exception):
            return f"Redis at {host}:{port} refused {c[0]}: {r}", None, "unknown"
    if replies[-2] != "PONG":
        return f"Redis at {host}:{port} answered PING with {replies[-2]!r}", None, "unknown"
    info = dict(
        ln.split(":", 1) for ln in str(replies[-1]).splitlines() if ":" in ln and not ln.startswith("#")
    )
    version = f"Redis {info.get('redis_version', '?')}"
    pid = None
    if host in ("127.0.0.1", "localhost", "::1") and info.get("process_id", "").isdigit():
        pid = int(info["process_id"])
        if not Path(f"/proc/{pid}/stat").exists():
            pid = None
    return None, pid, version


def cpu_affinity(pid: int) -> str | None:
    try:
        return ",".join(str(c) for c in sorted(os.sched_getaffinity(pid)))
    except OSError:
        return None


# --------------------------------------------------------------------------
# CPU accounting from /proc


def proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, utime, stime) in clock ticks; utime/stime cover all threads."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return int(rest[1]), int(rest[11]), int(rest[12])


def process_tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st:
                parents.setdefault(st[0], []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def tree_cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        st = proc_stat(pid)
        if st:
            total += st[1] + st[2]
    return total


def system_cpu() -> dict[str, tuple[int, int, int]]:
    """Per CPU: (total ticks, busy ticks, busy ticks in process context)."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if re.match(r"cpu\d+ ", line):
            name, *vals = line.split()
            v = [int(x) for x in vals[:8]]
            user, nice, system, idle, iowait, irq, softirq, steal = v
            out[name] = (sum(v), sum(v) - idle - iowait, user + nice + system)
    return out


def thread_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def task_statuses(pids: list[int]) -> list[str]:
    """/proc/<pid>/task/<tid>/status of every thread of these processes (a
    thread that exits meanwhile is left out)."""
    out = []
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                out.append(Path(f"/proc/{pid}/task/{tid}/status").read_text())
            except OSError:
                pass
    return out


def status_field(status: str, name: str) -> int:
    m = re.search(rf"^{name}:\s+(\d+)", status, re.M)
    return int(m.group(1)) if m else 0


def ctx_switches(pids: list[int]) -> tuple[int, int]:
    """(voluntary, involuntary) context switches, summed over all threads:
    a voluntary one is a thread going to sleep, waiting for work (a wake-up
    follows), an involuntary one a thread preempted."""
    statuses = task_statuses(pids)
    return (sum(status_field(s, "voluntary_ctxt_switches") for s in statuses),
            sum(status_field(s, "nonvoluntary_ctxt_switches") for s in statuses))


def all_traced(pids: list[int]) -> bool:
    statuses = task_statuses(pids)
    return bool(statuses) and all(status_field(s, "TracerPid") for s in statuses)


def parse_strace_summary(text: str) -> dict[str, int]:
    """Calls per system call from `strace -c -U name,calls,errors`."""
    calls = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit() and parts[0] not in ("total", "syscall"):
            calls[parts[0]] = int(parts[1])
    return calls


# --------------------------------------------------------------------------
# wrk

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"cannot parse wrk time {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(out: str) -> dict:
    res: dict = {}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if not m:
        raise ValueError(f"no Requests/sec in wrk output:\n{out}")
    res["rps"] = float(m.group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if not m:
            raise ValueError(f"no {pct}% latency in wrk output (was --latency given?):\n{out}")
        res[f"p{pct}_ms"] = to_ms(m.group(1))
    m = re.search(r"^\s+(\d+) requests in ([\d.]+\w+)", out, re.M)
    res["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return res


# --------------------------------------------------------------------------
# The run


class Bench:
    def __init__(self, args, scenarios, comparisons, portcullis_env, instances, peers):
        self.args = args
        self.all_scenarios = scenarios
        self.scenarios = list(scenarios)  # the ones measured (minus skipped)
        self.skipped: dict[str, str] = {}  # scenario name -> why it was not measured
        self.comparisons = comparisons
        self.portcullis_env = portcullis_env
        self.instances: dict[str, Instance] = instances
        self.peers: dict[str, Peer] = peers
        self.peer_versions: dict[str, str] = {}  # started peers only
        # One worker (thread, process) per CPU the proxies may use.
        self.proxy_workers = len(cpu_list(args.proxy_cpu))
        # e.g. BENCH_API_KEY, made at start; the JWTs of the JWT scenarios.
        self.generated_env: dict[str, str] = tokens.bench_tokens()
        self.services: dict[str, dict] = {}  # "redis" -> {"problem", "pid", "version", ...}
        self.tmp = Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
        os.chmod(self.tmp, 0o755)  # nginx workers run as nobody when we are root
        self.servers: dict[str, Server] = {}
        self.ports: dict[str, int] = {}

    # -- servers ----------------------------------------------------------

    def template_values(self) -> dict[str, str | int]:
        return {
            "prefix": str(self.tmp),
            # Unique per run, e.g. for the Redis key prefix of the shared Redis.
            "run_id": self.tmp.name,
            "redis_url": self.args.redis_url,
            # The JWT fixture keys, for [[auth.jwt]] public_keys.
            "jwt_keys": str(tokens.FIXTURES),
            # This folder, for files a config names (JSON Schemas).
            "bench_dir": str(BENCH_DIR),
            # The TLS scenarios' certificate and key (make_certificate).
            "tls_cert": str(self.tmp / "tls" / "cert.pem"),
            "tls_key": str(self.tmp / "tls" / "key.pem"),
            # Workers, threads or GOMAXPROCS of each proxy: one per proxy CPU.
            "proxy_workers": self.proxy_workers,
            **{f"{k}_port": v for k, v in self.ports.items()},
        }

    def fill(self, text: str, where: str, **extra) -> str:
        try:
            return text.format(**self.template_values(), **extra)
        except (KeyError, IndexError, ValueError) as e:
            sys.exit(f"{where}: bad placeholder {e} (literal braces must be doubled)")

    def render(self, template: str, out_name: str) -> Path:
        text = self.fill((BENCH_DIR / template).read_text(), f"bench/{template}")
        path = self.tmp / out_name
        path.write_text(text)
        return path

    def start_nginx(self, name: str, template: str, cpu: str) -> Server:
        conf = self.render(template, f"{name}.conf")
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.tmp / f"{name}-tmp" / sub).mkdir(parents=True, exist_ok=True)
        argv = ["taskset", "-c", cpu, self.args.nginx, "-p", str(self.tmp), "-c", str(conf),
                "-e", str(self.tmp / f"{name}-error.log"), "-g", "daemon off;"]
        return Server(name, argv, self.tmp / f"{name}.log")

    def portcullis_env_for_child(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
        env.pop("RUST_LOG", None)
        env.update(self.portcullis_env)
        return env

    def create_api_key(self, inst: Instance, conf: Path) -> None:
        """Creates the instance's bench consumer and key with the CLI, in its
        (fresh) store, and exposes the key to scenario headers."""
        consumer, var = inst.api_key["consumer"], inst.api_key["env"]
        env = self.portcullis_env_for_child()
        for argv in (
            [self.args.bin, "consumers", "create", consumer, "--config", str(conf)],
            [self.args.bin, "keys", "create", "--consumer", consumer, "--json", "--config", str(conf)],
        ):
            p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
            if p.returncode != 0:
                raise RuntimeError(
                    f"{inst.name}: `{' '.join(argv[1:4])} ...` failed ({p.returncode}):\n{p.stderr}{p.stdout}"
                )
        try:
            key = json.loads(p.stdout)["key"]
        except (ValueError, KeyError, TypeError) as e:
            raise RuntimeError(f"{inst.name}: no key in `keys create --json` output ({e}):\n{p.stdout}")
        self.generated_env[var] = key
        log(f"{inst.name}: created consumer {consumer!r} and a key (${{{var}}})")

    def create_user(self, inst: Instance, conf: Path) -> None:
        """Creates the instance's bench user with the CLI (password on stdin)."""
        argv = [self.args.bin, "users", "create", inst.session["user"], "--password-stdin", "--config", str(conf)]
        p = subprocess.run(argv, input=BENCH_PASSWORD + "\n", capture_output=True, text=True,
                           env=self.portcullis_env_for_child(), timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"{inst.name}: `users create` failed ({p.returncode}):\n{p.stderr}{p.stdout}")

    def log_in(self, inst: Instance) -> None:
        """Logs the bench user in through the login form, as a browser does,
        and exposes the session cookie (name=value) to scenario headers."""
        port = self.ports[inst.name]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/.auth/login?rd=%2F")
        page = conn.getresponse()
        html = page.read().decode()
        login_cookie = page.getheader("set-cookie", "").split(";")[0]
        csrf = re.search(r'name="csrf" value="([^"]+)"', html)
        if page.status != 200 or not csrf or not login_cookie:
            raise RuntimeError(f"{inst.name}: no login form (status {page.status})")
        form = urllib.parse.urlencode({"csrf": csrf.group(1), "rd": "/", "username": inst.session["user"],
                                       "password": BENCH_PASSWORD})
        conn.request("POST", "/.auth/login", body=form,
                     headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": login_cookie})
        done = conn.getresponse()
        done.read()
        conn.close()
        cookies = [c.split(";")[0] for c in done.headers.get_all("set-cookie") or []]
        session = [c for c in cookies if c.split("=")[0] == "__Host-portcullis"]
        if done.status != 303 or not session:
            raise RuntimeError(f"{inst.name}: login failed (status {done.status}, cookies {cookies})")
        self.generated_env[inst.session["env"]] = session[0]
        log(f"{inst.name}: logged in {inst.session['user']!r} (${{{inst.session['env']}}})")

    def start_portcullis(self, inst: Instance) -> Server:
        conf = self.render(inst.config, f"{inst.name}.toml")
        if inst.api_key:
            self.create_api_key(inst, conf)
        if inst.session:
            self.create_user(inst, conf)
        env = self.portcullis_env_for_child()
        if self.args.tokio_workers > 0:
            env["TOKIO_WORKER_THREADS"] = str(self.args.tokio_workers)
        else:
            env.pop("TOKIO_WORKER_THREADS", None)
        argv = ["taskset", "-c", self.args.proxy_cpu, self.args.bin, "serve", "--config", str(conf)]
        return Server(inst.name, argv, self.tmp / f"{inst.name}.log", env=env)

    def peer_version(self, peer: Peer, exe: str) -> str:
        text = tool_version([exe, *peer.version], first_line=False)
        m = re.search(peer.version_match, text) if peer.version_match else None
        if m:
            return f"{peer.name} {m.group(1) if m.groups() else m.group(0)}"
        return f"{peer.name}: {text.splitlines()[0] if text else 'unknown version'}"

    def start_peer(self, peer: Peer, exe: str) -> Server:
        """Renders the peer's templates to the temp dir (same file names) and
        starts it on the proxy CPUs, like the nginx proxy."""
        confs = [self.render(template, Path(template).name) for template in peer.config]
        where = f"{self.args.scenarios}: peer {peer.name!r}"
        argv = [self.fill(x, where, config=confs[0]) for x in peer.argv]
        env = {**os.environ, **{k: self.fill(v, where, config=confs[0]) for k, v in peer.env.items()}}
        argv = ["taskset", "-c", self.args.proxy_cpu, exe, *argv]
        return Server(peer.name, argv, self.tmp / f"{peer.name}.log", env=env)

    def probe_services(self) -> None:
        needed = {svc for inst in self.instances.values() for svc in inst.needs}
        if "redis" in needed:
            problem, pid, version = redis_probe(self.args.redis_url)
            self.services["redis"] = {
                "url": self.args.redis_url, "problem": problem, "pid": pid, "version": version,
                "affinity": cpu_affinity(pid) if pid else None,
            }
            if problem:
                log(f"warning: {problem}; scenarios that need Redis are skipped")
            elif pid is None:
                log("note: the Redis server's process is not visible here; its CPU time is not counted")

    def skip_instance(self, name: str, why: str) -> None:
        for s in self.scenarios:
            if name in (s.target, s.cpu):
                self.skipped[s.name] = why
        self.scenarios = [s for s in self.scenarios if s.name not in self.skipped]

    def make_certificate(self) -> None:
        """One self-signed ECDSA P-256 certificate for 127.0.0.1 and
        localhost, shared by nginx's TLS server and the TLS portcullis, so
        both do the same handshake work."""
        folder = self.tmp / "tls"
        folder.mkdir(exist_ok=True)
        argv = [self.args.openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-days", "2", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"openssl could not make the bench certificate:\n{p.stderr}")
        # nginx's workers run as nobody when we are root.
        os.chmod(folder / "key.pem", 0o644)

    def is_tls(self, target: str) -> bool:
        inst = self.instances.get(target)
        return target == "nginx_tls" or (inst is not None and inst.tls)

    def server_for(self, target: str) -> Server:
        return self.servers[SERVER_OF_TARGET.get(target, target)]

    def start(self) -> None:
        a = self.args
        names = (list(NGINX_TARGETS) + [x for n in self.instances for x in (n, f"{n}_admin")]
                 + list(self.peers))
        self.ports = dict(zip(names, free_ports(len(names))))
        self.probe_services()
        for name, inst in self.instances.items():
            for svc in inst.needs:
                problem = self.services[svc]["problem"]
                if problem:
                    self.skip_instance(name, problem)
        executables = {}
        for name, peer in self.peers.items():
            exe, tried = find_executable(peer)
            if exe:
                executables[name] = exe
            else:
                log(f"{name}: not found (tried {', '.join(tried)}); its scenarios are skipped")
                self.skip_instance(name, f"{name} not installed")
        needed = {s.target for s in self.scenarios} | {s.cpu for s in self.scenarios} | {"upstream"}
        # Always: the nginx proxy's config names it even when only its plain server is loaded.
        self.make_certificate()

        self.servers["upstream"] = self.start_nginx("upstream", "nginx-upstream.conf", a.load_cpu)
        status = wait_http(self.ports["upstream"], self.servers["upstream"])
        if status != 200:
            raise RuntimeError(f"the upstream answered {status}")
        if any(SERVER_OF_TARGET.get(t, t) == "nginx" for t in needed):
            self.servers["nginx"] = self.start_nginx("nginx", "nginx-proxy.conf", a.proxy_cpu)
            wait_http(self.ports["nginx"], self.servers["nginx"])
        for name, peer in self.peers.items():
            if name in needed:
                self.peer_versions[name] = self.peer_version(peer, executables[name])
                self.servers[name] = self.start_peer(peer, executables[name])
                self.wait_routes(name)
                log(f"{name}: {executables[name]} ({self.peer_versions[name]}) up")
        for name, inst in self.instances.items():
            if name in needed:
                self.servers[name] = self.start_portcullis(inst)
                wait_http(self.ports[name], self.servers[name], tls=inst.tls)
                if inst.session:
                    self.log_in(inst)

        # Every scenario must get the status it expects before anything is measured.
        for s in list(self.scenarios):
            headers = dict(parse_header(expand(h, self.header_env())) for h in s.headers)
            status = wait_http(self.ports[s.target], self.server_for(s.target), s.path, headers,
                               body=self.body(s), tls=self.is_tls(s.target))
            if status == s.expect_status:
                continue
            inst = self.instances.get(s.target)
            if status == 503 and inst is not None and inst.needs:
                # Started, but its outside service failed (on_outage = "closed").
                why = (f"{s.target} answered 503 on {s.path} ({'/'.join(inst.needs)} "
                       f"backend unavailable?)")
                log(f"scenario {s.name}: {why}\n{self.server_for(s.target).tail()}")
                self.skip_instance(s.target, why)
                continue
            raise RuntimeError(
                f"scenario {s.name}: GET {s.path} answered {status}, expected {s.expect_status}\n"
                f"{self.server_for(s.target).tail()}"
            )
        if not self.scenarios:
            raise RuntimeError("every selected scenario was skipped: " + "; ".join(self.skipped.values()))

    def wait_routes(self, name: str, timeout: float = 20.0) -> None:
        """Until the proxy answers 200 on /, or the timeout (the scenario
        check then reports the status): Traefik listens before its file
        provider has loaded the routes, and answers 404 until then."""
        deadline = time.monotonic() + timeout
        while wait_http(self.ports[name], self.servers[name]) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)

    def header_env(self) -> dict[str, str]:
        return {**os.environ, **self.portcullis_env, **self.generated_env}

    def service_pids(self, s: Scenario) -> list[int]:
        """Outside services this scenario loads whose CPU time we can see
        (the shared Redis for a Redis-backed instance)."""
        inst = self.instances.get(s.target)
        pids = []
        for svc in inst.needs if inst else []:
            pid = self.services.get(svc, {}).get("pid")
            if pid:
                pids += process_tree(pid)
        return pids

    def stop(self) -> None:
        for name in reversed(list(self.servers)):
            # nginx: SIGTERM is a fast shutdown; portcullis: SIGTERM drains.
            self.servers[name].stop()
        self.servers.clear()

    # -- one wrk run ------------------------------------------------------

    def url(self, s: Scenario) -> str:
        scheme = "https" if self.is_tls(s.target) else "http"
        return f"{scheme}://127.0.0.1:{self.ports[s.target]}{s.path}"

    def body(self, s: Scenario) -> bytes | None:
        return (BENCH_DIR / s.body_file).read_bytes() if s.body_file else None

    def wrk_script(self, s: Scenario) -> Path:
        """A wrk Lua script that POSTs the scenario's body."""
        script = self.tmp / f"{s.name}.lua"
        text = self.body(s).decode()
        script.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(text)}\n"
        )
        return script

    def wrk_argv(self, s: Scenario, duration: int) -> list[str]:
        a = self.args
        argv = ["taskset", "-c", a.load_cpu, a.wrk, f"-t{a.threads}", f"-c{a.connections}",
                f"-d{duration}s", "--timeout", "5s", "--latency"]
        if s.body_file:
            argv += ["-s", str(self.wrk_script(s))]
        for h in s.headers:
            argv += ["-H", expand(h, self.header_env())]
        return argv + [self.url(s)]

    def run_once(self, s: Scenario, duration: int) -> dict:
        for name, server in self.servers.items():
            if not server.alive():
                raise RuntimeError(f"{name} died:\n{server.tail()}")
        proxy_tree = process_tree(self.servers[s.cpu].pid) if s.cpu != "none" else []
        upstream_tree = process_tree(self.servers["upstream"].pid)
        # Outside services this scenario loads (the shared Redis): their CPU
        # is reported apart, and is not counted as other processes' noise.
        service_tree = self.service_pids(s)
        known_trees = [process_tree(srv.pid) for srv in self.servers.values()]
        all_known = sorted({p for t in known_trees for p in t} | set(service_tree))

        proxy0 = tree_cpu_ticks(proxy_tree)
        up0 = tree_cpu_ticks(upstream_tree)
        svc0 = tree_cpu_ticks(service_tree)
        known0 = tree_cpu_ticks(all_known)
        sys0 = system_cpu()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        proc = subprocess.run(self.wrk_argv(s, duration), capture_output=True, text=True)
        wall = time.monotonic() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        sys1 = system_cpu()
        proxy1 = tree_cpu_ticks(proxy_tree)
        up1 = tree_cpu_ticks(upstream_tree)
        svc1 = tree_cpu_ticks(service_tree)
        known1 = tree_cpu_ticks(all_known)
        if proc.returncode != 0:
            raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        res = parse_wrk(proc.stdout)
        res.update(scenario=s.name, wall_s=wall)
        res["proxy_cpu_s"] = (proxy1 - proxy0) / CLK_TCK if s.cpu != "none" else None
        res["upstream_cpu_s"] = (up1 - up0) / CLK_TCK
        res["service_cpu_s"] = (svc1 - svc0) / CLK_TCK if service_tree else None
        res["wrk_cpu_s"] = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        res["req_per_proxy_cpu_s"] = (
            res["rps"] * duration / res["proxy_cpu_s"] if res["proxy_cpu_s"] else None
        )
        # Whole-CPU utilisation and an estimate of CPU used by processes that
        # are not part of the benchmark (other jobs on the machine = noise).
        util = {}
        in_process_ctx = 0
        for cpu, (tot1, busy1, ctx1) in sys1.items():
            tot0, busy0, ctx0 = sys0[cpu]
            util[cpu] = round((busy1 - busy0) / max(1, tot1 - tot0), 3)
            in_process_ctx += ctx1 - ctx0
        res["cpu_util"] = util
        bench_ticks = (known1 - known0) + res["wrk_cpu_s"] * CLK_TCK
        res["foreign_cpu_s"] = round(max(0.0, (in_process_ctx - bench_ticks) / CLK_TCK), 2)
        return res

    # -- the rounds -------------------------------------------------------

    def known_pids(self) -> list[int]:
        return sorted({p for srv in self.servers.values() for p in process_tree(srv.pid)})

    def foreign_load(self, seconds: float = 1.0) -> float:
        """CPUs' worth of process time used outside the benchmark, sampled now."""
        pids = self.known_pids()
        k0, s0, t0 = tree_cpu_ticks(pids), system_cpu(), time.monotonic()
        time.sleep(seconds)
        k1, s1, t1 = tree_cpu_ticks(pids), system_cpu(), time.monotonic()
        ctx = sum(s1[c][2] - s0[c][2] for c in s1)
        return max(0.0, (ctx - (k1 - k0)) / CLK_TCK / (t1 - t0))

    def wait_for_quiet(self) -> None:
        """Other jobs on the machine skew the numbers: wait (within the
        budget) until they use less than --noise-threshold CPUs."""
        a = self.args
        waited = 0.0
        while self.noise_budget > 0:
            load = self.foreign_load()
            if load <= a.noise_threshold:
                break
            if waited == 0:
                log(f"other processes are using {load:.2f} CPUs; waiting for a quieter machine")
            time.sleep(1.0)
            waited += 2.0
            self.noise_budget -= 2.0
        if waited:
            log(f"waited {waited:.0f}s (noise budget left: {max(0, self.noise_budget):.0f}s)")

    def measured_run(self, s: Scenario) -> dict:
        """One run; repeated (within the budget) if other processes were busy."""
        a = self.args
        attempt = 0
        while True:
            self.wait_for_quiet()
            res = self.run_once(s, a.duration)
            res["noisy"] = res["foreign_cpu_s"] / a.duration > a.noise_threshold
            res["attempt"] = attempt + 1
            if not res["noisy"] or self.noise_budget < a.duration:
                return res
            log(f"{s.name}: other processes used {res['foreign_cpu_s']}s of CPU during the run; repeating it")
            self.noise_budget -= a.duration
            attempt += 1

    def run(self) -> list[dict]:
        a = self.args
        self.noise_budget = float(a.noise_budget)
        if a.warmup > 0:
            for s in self.scenarios:
                log(f"warm-up {s.name} ({a.warmup}s)")
                self.run_once(s, a.warmup)
        runs = []
        n = len(self.scenarios)
        for r in range(a.rounds):
            order = self.scenarios[r % n :] + self.scenarios[: r % n]
            for s in order:
                res = self.measured_run(s)
                res["round"] = r + 1
                runs.append(res)
                cpu = f"{res['proxy_cpu_s']:.2f}s" if res["proxy_cpu_s"] is not None else "n/a"
                log(
                    f"round {r + 1}/{a.rounds} {s.name:<22} {res['rps']:>10.0f} req/s  "
                    f"p50 {res['p50_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms  proxy CPU {cpu}  "
                    f"errors {res['non_2xx'] + res['socket_errors']}  "
                    f"other CPU {res['foreign_cpu_s']}s"
                )
        return runs

    def profile(self, name: str, out_dir: Path, stamp: str) -> Path | None:
        """One extra, unmeasured run of a scenario under perf record."""
        s = next((x for x in self.scenarios if x.name == name), None)
        if s is None or s.cpu == "none":
            log(f"--perf {name}: no such scenario with a proxy process; skipped")
            return None
        perf = shutil.which("perf")
        if not perf:
            log("--perf: perf not found; skipped")
            return None
        data = self.tmp / "perf.data"
        pid = self.servers[s.cpu].pid
        rec = subprocess.Popen(
            [perf, "record", "-F", "499", "-g", "--call-graph", "dwarf,16384", "-o", str(data),
             "-p", str(pid), "--", "sleep", str(self.args.duration)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(0.5)
        log(f"profiling {name} (pid {pid}) with perf for {self.args.duration}s")
        self.run_once(s, self.args.duration)
        _, err = rec.communicate()
        if rec.returncode != 0:
            log(f"perf record failed: {err.strip()}")
            return None
        sections = []
        for title, extra in (
            ("Self time by binary", ["--no-children", "--sort", "dso", "--percent-limit", "0.1"]),
            ("Self time by function", ["--no-children", "--sort", "dso,symbol", "--percent-limit", "0.4"]),
            ("Inclusive time (self + callees) by function",
             ["--children", "--sort", "symbol", "--percent-limit", "1"]),
        ):
            out = subprocess.run(
                [perf, "report", "-i", str(data), "--stdio", "-g", "none", *extra],
                capture_output=True, text=True,
            ).stdout
            rows = [re.sub(r"\s+-\s+-\s*$", "", ln).rstrip() for ln in out.splitlines()]
            rows = [ln for ln in rows if ln and not ln.startswith("#")]
            sections.append(f"== {title} ==\n" + "\n".join(rows))
        path = out_dir / f"{stamp}-perf-{name}.txt"
        path.write_text(
            f"perf record -F 499 --call-graph dwarf -p <{name} pid>, {self.args.duration} s of wrk load; "
            f"full data: perf report -i {data} (kept with --keep-tmp)\n\n" + "\n\n".join(sections) + "\n"
        )
        return path

    # -- system calls and wake-ups -----------------------------------------

    def worker_pids(self, server: str) -> list[int]:
        """The processes that serve requests: nginx's workers, not their
        master (which only supervises them); otherwise the whole tree."""
        tree = process_tree(self.servers[server].pid)
        if server in MASTER_WORKER and len(tree) > 1:
            return tree[1:]
        return tree

    def wakeups(self, s: Scenario, pids: list[int]) -> dict:
        """One run without strace (ptrace stops would add switches of their
        own): the proxy's context switches per request."""
        vol0, invol0 = ctx_switches(pids)
        res = self.run_once(s, self.args.duration)
        vol1, invol1 = ctx_switches(pids)
        n = res["requests"] or 0
        return {"requests": n, "rps": res["rps"],
                "voluntary_per_req": (vol1 - vol0) / n if n else None,
                "involuntary_per_req": (invol1 - invol0) / n if n else None}

    def strace_run(self, s: Scenario, pids: list[int], strace: str) -> tuple[dict, str]:
        """One run with strace -c attached to every thread of the proxy's
        processes (-f follows the threads of each -p process; naming the
        threads too makes strace fail on the ones it already has). strace
        slows the proxy several times over: only counts per request mean
        anything here, not throughput."""
        out = self.tmp / f"strace-{s.name}.txt"
        argv = [strace, "-c", "-f", "-q", "-S", "calls", "-U", "name,calls,errors", "-o", str(out)]
        for pid in pids:
            argv += ["-p", str(pid)]
        rec = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        res = None
        try:
            # Load only once every thread is traced, so no request goes uncounted.
            deadline = time.monotonic() + 10
            while not all_traced(pids) and rec.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if all_traced(pids):
                res = self.run_once(s, self.args.duration)
        finally:
            # SIGINT: strace detaches from the proxy and writes the summary.
            if rec.poll() is None:
                rec.send_signal(signal.SIGINT)
            try:
                _, err = rec.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                rec.kill()
                _, err = rec.communicate()
        if res is None:
            raise RuntimeError(f"strace did not attach to every thread of {s.cpu} {pids}: {err.strip()}")
        text = out.read_text() if out.exists() else ""
        calls = parse_strace_summary(text)
        if not calls:
            raise RuntimeError(f"strace counted nothing for {s.name}:\n{text}")
        return {"requests": res["requests"] or 0, "rps": res["rps"], "calls": calls}, text

    def syscalls(self, names: list[str], out_dir: Path, stamp: str) -> tuple[str, list[dict]]:
        """Per scenario, two extra unmeasured runs of --duration s: context
        switches from /proc, then system calls under strace. Returns the
        markdown table and its rows."""
        strace = shutil.which(self.args.strace)
        if not strace:
            log(f"--syscalls: {self.args.strace} not found; skipped")
            return "", []
        rows = []
        for name in names:
            s = next((x for x in self.scenarios if x.name == name), None)
            if s is None:
                log(f"--syscalls {name}: not measured ({self.skipped.get(name, 'not selected')}); skipped")
                continue
            pids = self.worker_pids(s.cpu)
            log(f"--syscalls {name}: context switches of {s.cpu} {pids}, {self.args.duration}s run")
            wake = self.wakeups(s, pids)
            log(f"--syscalls {name}: strace -c -f on {s.cpu} {pids}, {self.args.duration}s run")
            traced, text = self.strace_run(s, pids, strace)
            raw = out_dir / f"{stamp}-strace-{name}.txt"
            raw.write_text(
                f"strace -c -f -p <{s.cpu} worker pids {pids}>, {self.args.duration} s of wrk load: "
                f"{traced['requests']} requests ({traced['rps']:.0f} req/s under strace)\n\n{text}"
            )
            n = traced["requests"]
            total = sum(traced["calls"].values())
            top = sorted(traced["calls"].items(), key=lambda kv: -kv[1])[:6]
            rows.append({
                "scenario": name, "pids": pids, "raw": str(raw),
                "strace_requests": n, "syscalls_per_req": total / n if n else None,
                "top": [(call, count / n if n else None) for call, count in top],
                "calls": traced["calls"],
                "wakeup_requests": wake["requests"],
                "voluntary_per_req": wake["voluntary_per_req"],
                "involuntary_per_req": wake["involuntary_per_req"],
            })
        if not rows:
            return "", rows
        lines = [
            "### System calls and wake-ups per request",
            "",
            "| scenario | requests (strace / ctx run) | syscalls per request | top system calls per request "
            "| voluntary ctx switches per request | involuntary per request |",
            "|---|---:|---:|---|---:|---:|",
        ]
        for r in rows:
            top = ", ".join(f"{call} {fmt(per, '{:.2f}')}" for call, per in r["top"])
            lines.append(
                f"| {r['scenario']} | {r['strace_requests']} / {r['wakeup_requests']} "
                f"| {fmt(r['syscalls_per_req'], '{:.2f}')} | {top} "
                f"| {fmt(r['voluntary_per_req'], '{:.3f}')} | {fmt(r['involuntary_per_req'], '{:.3f}')} |"
            )
        lines += [
            "",
            f"System calls: `strace -c -f` attached to the proxy's worker processes (all threads; for nginx "
            f"the workers, not the master) for one extra {self.args.duration} s wrk run; strace slows the "
            "proxy several times over, so only the counts per request mean anything, and calls made while "
            "idle (before wrk starts, after it stops) are counted too. Context switches: "
            "voluntary_ctxt_switches and nonvoluntary_ctxt_switches summed over /proc/<pid>/task/*/status, "
            f"before and after another {self.args.duration} s run without strace; a voluntary switch is a "
            "thread going to sleep for want of work, so each is one wake-up. Raw strace summaries: "
            + ", ".join(Path(r["raw"]).name for r in rows) + ".",
        ]
        return "\n".join(lines) + "\n", rows


# --------------------------------------------------------------------------
# Report


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec="{:.0f}", na="n/a"):
    return na if x is None else spec.format(x)


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    return {
        "cpu_model": m.group(1).strip() if m else platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
    }


def tool_version(argv: list[str], first_line: bool = True) -> str:
    """What `argv` prints (stdout, then stderr): its first line, or all of it."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (p.stdout + p.stderr).strip()
    if not first_line:
        return text
    return text.splitlines()[0] if text else "unknown"


def summarise(bench: Bench, runs: list[dict]) -> dict:
    out = {}
    for s in bench.scenarios:
        rs = [r for r in runs if r["scenario"] == s.name]
        dur = bench.args.duration
        out[s.name] = {
            "rps": median([r["rps"] for r in rs]),
            "rps_min": min(r["rps"] for r in rs),
            "rps_max": max(r["rps"] for r in rs),
            "p50_ms": median([r["p50_ms"] for r in rs]),
            "p99_ms": median([r["p99_ms"] for r in rs]),
            "p99_min": min(r["p99_ms"] for r in rs),
            "p99_max": max(r["p99_ms"] for r in rs),
            "req_per_cpu_s": median([r["req_per_proxy_cpu_s"] for r in rs]),
            "proxy_util": median(
                [r["proxy_cpu_s"] / dur if r["proxy_cpu_s"] is not None else None for r in rs]
            ),
            "load_util": median([(r["upstream_cpu_s"] + r["wrk_cpu_s"]) / dur for r in rs]),
            "service_util": median(
                [r["service_cpu_s"] / dur if r.get("service_cpu_s") is not None else None for r in rs]
            ),
            # wrk counts non-2xx/3xx responses; they are errors only when the
            # scenario expects a success (a rate-limit scenario may expect 429).
            "errors": sum(
                r["socket_errors"] + (r["non_2xx"] if s.expect_status < 400 else 0) for r in rs
            ),
            "foreign_max": max(r["foreign_cpu_s"] for r in rs),
            "noisy": sum(1 for r in rs if r.get("noisy")),
        }
    return out


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def threads_text(threads: dict[str, int]) -> str:
    if not threads:
        return "? threads"
    if len(set(threads.values())) == 1:
        return f"{next(iter(threads.values()))} threads"
    return ", ".join(f"{name} {n} threads" for name, n in threads.items())


def report(bench: Bench, runs: list[dict], meta: dict) -> str:
    a = bench.args
    summary = summarise(bench, runs)
    m = meta["machine"]
    measured = {s.name for s in bench.scenarios}
    shared = cpu_list(a.load_cpu) & cpu_list(a.proxy_cpu)
    alone = "" if shared else "alone "
    n = bench.proxy_workers
    workers = f"{n} worker" + ("s" if n > 1 else "")
    peers = ""
    if bench.peer_versions:
        # The peers' templates follow the same count.
        peers = (f"; {', '.join(bench.peer_versions)}: {n} worker thread" + ("s" if n > 1 else "")
                 + " (nbthread, --concurrency, GOMAXPROCS)")
    lines = [
        f"## portcullis benchmark, {meta['started']}",
        "",
        f"- Machine: {m['cpu_model']}, {m['cores']} cores, {m['kernel']}",
        f"- portcullis: {meta['portcullis']}; {meta['nginx']}; {meta['wrk']}",
        *([f"- Peers: {', '.join(meta['peers'].values())}"] if meta.get("peers") else []),
        f"- Load: wrk -t{a.threads} -c{a.connections} (keep-alive), {a.duration} s per run, "
        f"{a.rounds} interleaved rounds after a {a.warmup} s warm-up per scenario; medians shown",
        f"- CPUs: upstream nginx + wrk on CPU {a.load_cpu}; each proxy {alone}on CPU {a.proxy_cpu} "
        f"(nginx: {workers}{peers}; portcullis: TOKIO_WORKER_THREADS={a.tokio_workers or 'unset'}, "
        f"{threads_text(meta.get('portcullis_threads', {}))}; only the scenario's proxy is loaded)",
        f"- Command: `{meta['command']}`",
        "",
        "| scenario | req/s | p50 | p99 | req per proxy CPU-s | proxy CPU | load-side CPU | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in bench.all_scenarios:
        if s.name not in measured:
            lines.append(f"| {s.name} | skipped: {bench.skipped[s.name]} | | | | | | |")
            continue
        r = summary[s.name]
        lines.append(
            f"| {s.name} | {fmt(r['rps'])} | {r['p50_ms']:.3f} ms | {r['p99_ms']:.3f} ms "
            f"| {fmt(r['req_per_cpu_s'])} | {fmt(r['proxy_util'], '{:.0%}')} "
            f"| {r['load_util']:.0%} | {r['errors']} |"
        )
    if bench.comparisons:
        goals = any(c.goal for c in bench.comparisons)
        lines += [
            "",
            "| comparison | throughput ratio | p99 ratio | req per CPU-s ratio |" + (" goal |" if goals else ""),
            "|---|---:|---:|---:|" + ("---|" if goals else ""),
        ]
        for c in bench.comparisons:
            goal = f" {c.goal or ''} |" if goals else ""
            if c.subject not in measured or c.baseline not in measured:
                lines.append(f"| {c.subject} / {c.baseline} | n/a (skipped) | n/a | n/a |{goal}")
                continue
            s, b = summary[c.subject], summary[c.baseline]
            lines.append(
                f"| {c.subject} / {c.baseline} | {fmt(ratio(s['rps'], b['rps']), '{:.2f}x')} "
                f"| {fmt(ratio(s['p99_ms'], b['p99_ms']), '{:.2f}x')} "
                f"| {fmt(ratio(s['req_per_cpu_s'], b['req_per_cpu_s']), '{:.2f}x')} |{goal}"
            )
    lines += [
        "",
        "Spread over the rounds (min - max):",
        "",
        "| scenario | req/s | p99 |",
        "|---|---:|---:|",
    ]
    for s in bench.scenarios:
        r = summary[s.name]
        lines.append(
            f"| {s.name} | {r['rps_min']:.0f} - {r['rps_max']:.0f} "
            f"| {r['p99_min']:.3f} - {r['p99_max']:.3f} ms |"
        )
    foreign = max(r["foreign_max"] for r in summary.values())
    noisy = sum(r["noisy"] for r in summary.values())
    lines += [
        "",
        "proxy CPU = CPU-seconds used by the scenario's proxy process (all threads) per wall second; "
        "load-side CPU = upstream nginx + wrk, which share one CPU. "
        "req per proxy CPU-s = requests / (utime + stime) of the proxy, from /proc/<pid>/stat. "
        "errors = socket errors + non-2xx/3xx responses (when the scenario expects a success) "
        "over all rounds.",
    ]
    redis = bench.services.get("redis")
    users = [s.name for s in bench.scenarios if "redis" in getattr(bench.instances.get(s.target), "needs", [])]
    if redis and users:
        if redis["pid"]:
            use = ", ".join(f"{n} {fmt(summary[n]['service_util'], '{:.0%}')}" for n in users)
            cpu = (f"redis-server CPU per wall second (not in load-side CPU): {use}; "
                   f"it is not pinned by the harness (CPU affinity {redis['affinity']})")
        else:
            cpu = "its process is not visible here, so its CPU time is not counted"
        lines.append(f"Redis: {redis['version']} at {redis['url']}, shared, left as it is; {cpu}.")
    lines.append(
        f"Other processes on the machine: at most {foreign:.1f} CPU-s during one {a.duration} s run; "
        f"{noisy} of {len(runs)} kept runs were disturbed (over {a.noise_threshold} CPUs) "
        f"after waiting/repeating within the {a.noise_budget} s noise budget."
    )
    return "\n".join(lines) + "\n"


def write_chart(bench: Bench, runs: list[dict], meta: dict, path: Path) -> bool:
    """Two bar panels, one bar per measured scenario: throughput and p99
    (medians, min-max over the rounds as error bars). False without
    matplotlib, which is optional."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed: straight to a PNG
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        log("matplotlib not installed; no chart")
        return False
    summary = summarise(bench, runs)
    scenarios = bench.scenarios
    ys = list(range(len(scenarios)))
    colours = [GROUP_COLOURS.get(s.chart_group(), "tab:purple") for s in scenarios]
    fig, panels = plt.subplots(1, 2, sharey=True, figsize=(13, 1.6 + 0.36 * len(scenarios)))
    for ax, (key, lo, hi, label, spec) in zip(panels, (
        ("rps", "rps_min", "rps_max", "requests per second (median; min - max)", "{:,.0f}"),
        ("p99_ms", "p99_min", "p99_max", "p99 latency, ms (median; min - max)", "{:.2f}"),
    )):
        rows = [summary[s.name] for s in scenarios]
        med = [r[key] for r in rows]
        err = [[m - r[lo] for m, r in zip(med, rows)], [r[hi] - m for m, r in zip(med, rows)]]
        ax.barh(ys, med, xerr=err, color=colours, capsize=3, error_kw={"elinewidth": 1})
        # The median written past the end of its error bar.
        for y, m, r in zip(ys, med, rows):
            ax.text(r[hi], y, "  " + spec.format(m), va="center", fontsize=8)
        ax.set_xlim(0, max(r[hi] for r in rows) * 1.2 or 1)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    panels[0].set_yticks(ys, [s.name for s in scenarios])
    panels[0].invert_yaxis()  # the scenario file's order, top to bottom
    labels = {"proxies": "the same route through each proxy", "features": "feature scenarios",
              "direct": "upstream, no proxy"}
    groups = dict.fromkeys(s.chart_group() for s in scenarios)
    # Below the panels, where it cannot hide a bar.
    fig.legend(handles=[Patch(color=GROUP_COLOURS.get(g, "tab:purple"), label=labels.get(g, g))
                        for g in groups], loc="lower center", ncol=len(groups), fontsize=8, frameon=False)
    m, a = meta["machine"], bench.args
    fig.suptitle(f"portcullis benchmark, {meta['started']}: {m['cpu_model']}, {m['cores']} cores\n"
                 f"wrk -c{a.connections} on CPU {a.load_cpu}, each proxy on CPU {a.proxy_cpu}, "
                 f"{a.rounds} round{'s' if a.rounds > 1 else ''} of {a.duration} s", fontsize=10)
    fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.environ.get("PORTCULLIS_BIN"), help="portcullis binary")
    p.add_argument("--duration", type=int, default=env_default("BENCH_DURATION", 8),
                   help="seconds per measured run (env BENCH_DURATION, default 8)")
    p.add_argument("--warmup", type=int, default=env_default("BENCH_WARMUP", 3),
                   help="seconds of warm-up per scenario, 0 for none (env BENCH_WARMUP, default 3)")
    p.add_argument("--rounds", type=int, default=env_default("BENCH_ROUNDS", 5),
                   help="interleaved rounds (env BENCH_ROUNDS, default 5)")
    p.add_argument("--connections", type=int, default=env_default("BENCH_CONNECTIONS", 64),
                   help="wrk keep-alive connections (env BENCH_CONNECTIONS, default 64)")
    p.add_argument("--threads", type=int, default=env_default("BENCH_WRK_THREADS", 1),
                   help="wrk threads (env BENCH_WRK_THREADS, default 1)")
    p.add_argument("--load-cpu", default=os.environ.get("BENCH_LOAD_CPU", "0"),
                   help="CPU list for wrk and the upstream (taskset -c syntax, default 0)")
    p.add_argument("--proxy-cpu", default=os.environ.get("BENCH_PROXY_CPU", "1"),
                   help="CPU list for the proxy under test (default 1)")
    p.add_argument("--tokio-workers", type=int, default=env_default("BENCH_TOKIO_WORKERS", 1),
                   help="TOKIO_WORKER_THREADS for portcullis, 0 to leave unset (default 1)")
    p.add_argument("--noise-threshold", type=float, default=env_default("BENCH_NOISE_THRESHOLD", 0.2, float),
                   help="CPUs' worth of other processes' time above which the machine counts as busy "
                        "(default 0.2)")
    p.add_argument("--noise-budget", type=int, default=env_default("BENCH_NOISE_BUDGET", 90),
                   help="seconds the whole run may spend waiting for a quiet machine and repeating "
                        "runs disturbed by other processes, 0 to never wait or repeat (default 90)")
    p.add_argument("--scenarios", type=Path, default=BENCH_DIR / "scenarios.toml",
                   help="scenario file (default bench/scenarios.toml)")
    p.add_argument("--only", help="comma-separated scenario names to run")
    p.add_argument("--perf", metavar="SCENARIO",
                   help="after the rounds, profile one more run of SCENARIO with perf record")
    p.add_argument("--syscalls", metavar="SCENARIO[,SCENARIO...]",
                   help="after the rounds, count each scenario's proxy's system calls (strace -c) and "
                        "context switches per request, in two extra runs of --duration s each")
    p.add_argument("--strace", default=shutil.which("strace") or "/usr/bin/strace",
                   help="strace binary (for --syscalls)")
    p.add_argument("--chart", type=Path, metavar="PATH",
                   help="also write the chart to PATH (e.g. docs/benchmarks.png); it always goes to "
                        "<results>/<stamp>.png when matplotlib is installed")
    p.add_argument("--results", type=Path, default=BENCH_DIR / "results",
                   help="where the markdown table and raw JSON go (default bench/results)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"),
                   help="the running Redis for instances that need it, {redis_url} in templates; "
                        "never started or pinned here, and its scenarios are skipped when it does "
                        "not answer PING (env BENCH_REDIS_URL, default redis://127.0.0.1:6379)")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx", help="nginx binary")
    p.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk", help="wrk binary")
    p.add_argument("--openssl", default=shutil.which("openssl") or "/usr/bin/openssl",
                   help="openssl binary (makes the TLS scenarios' certificate)")
    a = p.parse_args()

    only = [x.strip() for x in a.only.split(",")] if a.only else None
    scenarios, comparisons, portcullis_env, instances, peers = load_scenarios(a.scenarios, only)
    if not scenarios:
        sys.exit("no scenarios selected")
    syscall_names = [x.strip() for x in a.syscalls.split(",")] if a.syscalls else []
    bad = [x for x in syscall_names if not any(s.name == x and s.cpu != "none" for s in scenarios)]
    if bad:
        sys.exit(f"--syscalls: {bad} are not selected scenarios with a proxy (cpu) to trace")
    for flag, spec in (("--load-cpu", a.load_cpu), ("--proxy-cpu", a.proxy_cpu)):
        try:
            cpu_list(spec)
        except ValueError:
            sys.exit(f"{flag} {spec!r}: not a CPU list such as 1, 0,1 or 0-3")
    if instances and not a.bin:
        sys.exit("no portcullis binary: pass --bin or set PORTCULLIS_BIN (bench/run.sh builds one)")
    for tool in ("taskset", a.nginx, a.wrk):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found")
    if a.duration < 1 or a.rounds < 1 or a.connections < 1:
        sys.exit("--duration, --rounds and --connections must be at least 1")

    started = dt.datetime.now(dt.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    meta = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "portcullis": os.environ.get("BENCH_PORTCULLIS_DESC") or (a.bin or "not used"),
        "nginx": tool_version([a.nginx, "-v"]),
        "wrk": tool_version([a.wrk, "-v"]).split(" Copyright")[0],
        "command": os.environ.get("BENCH_COMMAND") or " ".join([sys.argv[0], *sys.argv[1:]]),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
    }
    workers = len(cpu_list(a.proxy_cpu))
    if instances and a.tokio_workers not in (0, workers):
        # The other proxies get one worker per proxy CPU; portcullis only what it is told.
        log(f"note: {workers} proxy CPUs but --tokio-workers {a.tokio_workers}; "
            f"pass --tokio-workers {workers} to give portcullis as many workers as the other proxies")
    if (os.cpu_count() or 1) < 2 and a.load_cpu != a.proxy_cpu:
        log("warning: fewer than 2 CPUs; pass --load-cpu/--proxy-cpu to match this machine")
    # Each measured run also samples the machine for a second beforehand.
    total = len(scenarios) * (a.rounds * (a.duration + 1) + a.warmup)
    log(f"{len(scenarios)} scenarios x {a.rounds} rounds x {a.duration}s (+ warm-up): about {total}s"
        f" (plus up to {a.noise_budget}s waiting for a quiet machine)")

    bench = Bench(a, scenarios, comparisons, portcullis_env, instances, peers)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    ok = False
    try:
        bench.start()
        meta["portcullis_threads"] = {
            name: thread_count(bench.servers[name].pid) for name in bench.instances if name in bench.servers
        }
        meta["skipped"] = bench.skipped
        meta["services"] = bench.services
        meta["peers"] = bench.peer_versions
        meta["proxy_workers"] = bench.proxy_workers
        log(f"servers up in {bench.tmp}: ports {bench.ports}")
        runs = bench.run()
        meta["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
        a.results.mkdir(parents=True, exist_ok=True)
        text = report(bench, runs, meta)
        png = a.results / f"{stamp}.png"
        if write_chart(bench, runs, meta, png):
            text += f"\n![throughput and p99 per scenario]({png.name})\n"
            log(f"chart: {png}")
            if a.chart:
                a.chart.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(png, a.chart)
                log(f"chart copied to {a.chart}")
        perf_path = bench.profile(a.perf, a.results, stamp) if a.perf else None
        if perf_path:
            text += f"\nperf profile of one extra {a.perf} run: {perf_path}\n"
        if syscall_names:
            table, meta["syscalls"] = bench.syscalls(syscall_names, a.results, stamp)
            if table:
                text += "\n" + table
        md = a.results / f"{stamp}.md"
        md.write_text(text)
        (a.results / f"{stamp}.json").write_text(
            json.dumps({"meta": meta, "args": {k: str(v) for k, v in vars(a).items()}, "runs": runs},
                       indent=2)
        )
        print(text)
        log(f"results: {md} (raw runs: {md.with_suffix('.json')})")
        ok = True
    except KeyboardInterrupt:
        log("interrupted")
    except RuntimeError as e:
        log(f"error: {e}")
    finally:
        bench.stop()
        if a.keep_tmp or not ok:
            log(f"temp dir kept: {bench.tmp}")
        else:
            shutil.rmtree(bench.tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
