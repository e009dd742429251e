#!/usr/bin/env python3
"""Run real nginx, Traefik and Envoy in front of the portcullis stand-in.

For each proxy: start the stand-in (stand_in.py) and the echoing upstream,
render the proxy's template (ports on 127.0.0.1, files in a private temp
dir), start the proxy, send the cases below, and check what the client gets
and what the auth service and the upstream receive. Then a second instance
whose auth service is down, to see it fail closed. Every proxy is stopped at
the end, whatever happens.

    python3 tests/support/forward-auth/check.py            # all three
    python3 tests/support/forward-auth/check.py nginx envoy
    python3 tests/support/forward-auth/check.py --report /tmp/fa.json -v

Executables: $NGINX, $TRAEFIK, $ENVOY if set, else what
.ci/forward-auth-tools.sh installs (it is run when one is missing and
--no-install is not given). Exit status 0 only if every check passed; the
last line is "N passed, N failed".
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.dont_write_bytecode = True  # leave no __pycache__ in the tree
sys.path.insert(0, str(HERE))

import stand_in  # noqa: E402

PROXIES = ("nginx", "traefik", "envoy")
START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 10.0
HOST = "app.example.test"  # the Host the client sends


# --------------------------------------------------------------------------
# tools


def tool_paths(install: bool) -> dict[str, str]:
    tools_dir = Path(os.environ.get("PORTCULLIS_TOOLS", Path.home() / ".cache/portcullis-tools"))
    venv = tools_dir / "venv"
    found: dict[str, str] = {}
    for name, env, default in (
        ("nginx", "NGINX", "/usr/sbin/nginx"),
        ("traefik", "TRAEFIK", str(venv / "bin/traefik")),
        ("envoy", "ENVOY", next((str(p) for p in venv.glob("lib/python*/site-packages/envoy/_bin/envoy")),
                                str(venv / "bin/envoy"))),
    ):
        path = os.environ.get(env) or default
        if os.access(path, os.X_OK):
            found[name] = path
    if len(found) < 3 and install:
        script = REPO / ".ci/forward-auth-tools.sh"
        out = subprocess.run(["bash", str(script)], check=True, stdout=subprocess.PIPE, text=True,
                             timeout=900).stdout
        for line in out.splitlines():
            k, _, v = line.partition("=")
            if k in PROXIES and v:
                found.setdefault(k, v)
    return found


def versions(paths: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, path in paths.items():
        args = {"nginx": ["-v"], "traefik": ["version"], "envoy": ["--version"]}[name]
        try:
            r = subprocess.run([path, *args], capture_output=True, text=True, timeout=20)
            text = (r.stdout + r.stderr).strip()
        except Exception as e:  # pragma: no cover
            text = f"error: {e}"
        if name == "traefik":
            text = next((l.split()[-1] for l in text.splitlines() if l.startswith("Version")), text)
        elif name == "envoy":
            text = text.split("version:")[-1].strip().split("/")[1] if "version:" in text else text
        elif name == "nginx":
            text = text.split("/")[-1]
        out[name] = text
    return out


# --------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(template: str, dest: Path, values: dict[str, str]) -> Path:
    text = (HERE / template).read_text()
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", v)
    assert "{{" not in text, f"unfilled placeholder in {template}"
    dest.write_text(text)
    return dest


class Proxy:
    def __init__(self, kind: str, exe: str, auth_port: int, upstream_port: int, tmp: Path):
        self.kind = kind
        self.exe = exe
        self.tmp = tmp
        self.port = free_port()
        self.values = {
            "LISTEN_PORT": str(self.port),
            "AUTH_PORT": str(auth_port),
            "UPSTREAM_PORT": str(upstream_port),
            "TMP": str(tmp),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        t = self.tmp
        if self.kind == "nginx":
            conf = render("nginx.conf", t / "nginx.conf", self.values)
            return [self.exe, "-p", str(t), "-c", str(conf), "-e", str(t / "nginx-error.log")]
        if self.kind == "traefik":
            render("traefik-dynamic.yml", t / "traefik-dynamic.yml", self.values)
            conf = render("traefik.yml", t / "traefik.yml", self.values)
            return [self.exe, f"--configFile={conf}"]
        conf = render("envoy.yaml", t / "envoy.yaml", self.values)
        return [self.exe, "-c", str(conf), "--disable-hot-restart", "--log-level", "info",
                "--log-path", str(t / "envoy.log")]

    def start(self) -> None:
        cmd = self.command()
        out = open(self.tmp / f"{self.kind}.stdout", "wb")
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.tmp, start_new_session=True,
                                     env={**os.environ, "HOME": str(self.tmp)})
        out.close()
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                r = request(self.port, "GET", "/.auth/login?ready=1", {}, timeout=2)
                if r["status"] == 200 and r["headers"].get("x-stand-in") == "login":
                    return
                last = f"status {r['status']}"
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} not ready after {START_TIMEOUT}s ({last}):\n{self.logs()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # The proxy leads its own process group (nginx's workers are in it).
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def logs(self, limit: int = 4000) -> str:
        parts = []
        for p in sorted(self.tmp.glob("*.log")) + sorted(self.tmp.glob("*.stdout")):
            text = p.read_text(errors="replace")
            if text.strip():
                parts.append(f"--- {p.name}\n{text[-limit:]}")
        return "\n".join(parts)


def request(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None,
            timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        hdrs = {"Host": HOST, **headers}
        for k, v in hdrs.items():
            conn.putheader(k, v)
        if body is not None and hdrs.get("Transfer-Encoding") == "chunked":
            conn.endheaders()
            half = len(body) // 2
            for part in (body[:half], body[half:]):
                conn.send(b"%x\r\n%s\r\n" % (len(part), part))
            conn.send(b"0\r\n\r\n")
        else:
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return {
            "status": resp.status,
            "headers": {k.lower(): v for k, v in resp.getheaders()},
            "header_list": resp.getheaders(),
            "body": data.decode("utf-8", "replace"),
        }
    finally:
        conn.close()


# --------------------------------------------------------------------------
# checks


class Failed(AssertionError):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failed(what)


def hget(item: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in item["headers"] if k.lower() == name.lower()]


def portcullis_headers(item: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in item["headers"] if k.lower().startswith("x-portcullis-")}


def original_of(item: dict[str, Any]) -> tuple[str, str]:
    """The (method, uri) the auth service would take from one verify call."""
    path = item["path"]
    if path.startswith("/.auth/verify/"):
        return item["method"], path[len("/.auth/verify"):]
    for uri_h, m_h in (("X-Original-URI", "X-Original-Method"), ("X-Forwarded-Uri", "X-Forwarded-Method")):
        if hget(item, uri_h):
            return (hget(item, m_h) or ["?"])[0], hget(item, uri_h)[0]
    return "?", "?"


FORGED = {
    "X-Portcullis-User": "mallory",
    "X-Portcullis-Scopes": "admin",
    "X-Portcullis-Admin": "yes",
    "X-Original-URI": "/forged",
    "X-Original-Method": "GET",
    "X-Forwarded-Uri": "/forged",
    "X-Forwarded-Method": "GET",
}


class Ctx:
    def __init__(self, kind: str, port: int, auth: stand_in.Recorder, up: stand_in.Recorder):
        self.kind, self.port, self.auth, self.up = kind, port, auth, up


def one_verify(ctx: Ctx, r: dict[str, Any]) -> dict[str, Any]:
    calls = [a for a in ctx.auth.all() if a["path"].startswith("/.auth/verify")]
    check(len(calls) == 1, f"one verify call expected, got {len(calls)}: {[c['path'] for c in calls]}")
    a = calls[0]
    check(not portcullis_headers(a), f"client X-Portcullis-* reached the auth service: {portcullis_headers(a)}")
    check(a["body_len"] == 0, f"auth call carried a body of {a['body_len']} bytes")
    return a


def expect_original(a: dict[str, Any], method: str, uri: str) -> None:
    got = original_of(a)
    check(got == (method, uri), f"auth saw original {got}, want {(method, uri)}")


def expect_allowed(ctx: Ctx, r: dict[str, Any], identity: dict[str, str], method: str, uri: str,
                   body_len: int = 0) -> dict[str, Any]:
    check(r["status"] == 200, f"status {r['status']}, want 200: {r['body'][:300]}")
    check(r["headers"].get("x-upstream") == "echo", "response did not come from the upstream")
    ups = ctx.up.all()
    check(len(ups) == 1, f"one upstream request expected, got {len(ups)}")
    u = ups[0]
    got = {k.lower(): v for k, v in portcullis_headers(u).items()}
    want = {k.lower(): v for k, v in identity.items()}
    # nginx can strip only the headers it names; any other client-sent
    # X-Portcullis-* passes (documented limitation).
    if ctx.kind == "nginx":
        got.pop("x-portcullis-admin", None)
    check(got == want, f"upstream identity headers {got}, want {want}")
    dup = [k for k in want if len(hget(u, k)) != 1]
    check(not dup, f"identity headers not exactly once upstream: {dup}")
    check(u["method"] == method, f"upstream method {u['method']}, want {method}")
    check(u["path"] == uri, f"upstream path {u['path']!r}, want {uri!r}")
    check(u["body_len"] == body_len, f"upstream body {u['body_len']} bytes, want {body_len}")
    a = one_verify(ctx, r)
    expect_original(a, method, uri)
    return a


def expect_refused(ctx: Ctx, r: dict[str, Any], status: int, www_auth: bool = False,
                   retry_after: str | None = None) -> dict[str, Any]:
    check(r["status"] == status, f"status {r['status']}, want {status}: {r['body'][:300]}")
    check(not ctx.up.all(), "a refused request reached the upstream")
    h = r["headers"]
    check(h.get("content-type", "").startswith("application/problem+json"),
          f"content-type {h.get('content-type')!r}")
    doc = json.loads(r["body"])
    check(doc.get("status") == status, f"problem status {doc.get('status')}")
    rid = h.get("x-request-id")
    check(bool(rid) and doc.get("request_id") == rid,
          f"request id: header {rid!r}, body {doc.get('request_id')!r}")
    if www_auth:
        check(h.get("www-authenticate") == 'Bearer realm="portcullis"',
              f"WWW-Authenticate {h.get('www-authenticate')!r}")
        n = sum(1 for k, _ in r["header_list"] if k.lower() == "www-authenticate")
        check(n == 1, f"WWW-Authenticate {n} times")
    if retry_after is not None:
        check(h.get("retry-after") == retry_after, f"Retry-After {h.get('retry-after')!r}")
    a = one_verify(ctx, r)
    check(a.get("status") == status, f"portcullis answered {a.get('status')}")
    answered = dict((k.lower(), v) for k, v in a["response_headers"])
    check(rid == answered.get("x-request-id"), f"request id {rid!r}, portcullis used {answered.get('x-request-id')!r}")
    if ctx.kind in ("traefik", "envoy"):
        # portcullis's own document reaches the client unchanged.
        check(r["body"] == a["response_body"], "problem document changed on the way")
    return a


Case = tuple[str, str, str, dict[str, str], bytes | None, Callable[[Ctx, dict[str, Any]], Any]]

ITEMS_URI = "/api/items?x=1&y=%2F&z=a%20b"
ENCODED_URI = "/api/caf%C3%A9/a%20b?q=%26&r=%3D&s=%2F"
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def case_bearer(ctx: Ctx, r: dict[str, Any]) -> Any:
    a = expect_allowed(ctx, r, {"X-Portcullis-User": "alice", "X-Portcullis-Scopes": "read write"},
                       "GET", ITEMS_URI)
    u = ctx.up.all()[0]
    check(hget(u, "Authorization") == ["Bearer good"], "Authorization not passed upstream")
    if ctx.kind != "nginx":
        check(not hget(u, "X-Portcullis-Admin"), "forged X-Portcullis-Admin reached the upstream")
    hosts = hget(a, "Host") + hget(a, "X-Forwarded-Host")
    check(HOST in hosts, f"auth did not learn the original host: {hosts}")


def case_apikey_post(ctx: Ctx, r: dict[str, Any]) -> Any:
    expect_allowed(ctx, r, {"X-Portcullis-Consumer": "mobile-app", "X-Portcullis-Key-Id": "k1",
                            "X-Portcullis-Scopes": "read"}, "POST", "/api/items", body_len=8)
    check(ctx.up.all()[0]["body"] == '{"a": 1}', "upstream body changed")


def case_cookie(ctx: Ctx, r: dict[str, Any]) -> Any:
    a = expect_allowed(ctx, r, {"X-Portcullis-User": "bob", "X-Portcullis-Scopes": "read"},
                       "GET", "/app/home")
    check(hget(a, "Cookie") == ["session=good; theme=dark"], f"cookie to auth: {hget(a, 'Cookie')}")


def case_encoded(ctx: Ctx, r: dict[str, Any]) -> Any:
    expect_allowed(ctx, r, {"X-Portcullis-User": "alice", "X-Portcullis-Scopes": "read write"},
                   "PUT", ENCODED_URI, body_len=2)


def case_chunked(ctx: Ctx, r: dict[str, Any]) -> Any:
    expect_allowed(ctx, r, {"X-Portcullis-User": "alice", "X-Portcullis-Scopes": "read write"},
                   "POST", "/api/upload", body_len=20)
    check(ctx.up.all()[0]["body"] == "0123456789abcdefghij", "upstream body changed")


def case_large(ctx: Ctx, r: dict[str, Any]) -> Any:
    expect_allowed(ctx, r, {"X-Portcullis-User": "alice", "X-Portcullis-Scopes": "read write"},
                   "POST", "/api/big?pad=1000000", body_len=300_000)
    check(len(r["body"]) > 1_000_000, f"response cut short: {len(r['body'])} bytes")


def case_dot_segments(ctx: Ctx, r: dict[str, Any]) -> Any:
    # What portcullis judges must be what the upstream gets. Traefik and
    # Envoy (normalize_path) resolve "..": portcullis sees /admin/x and
    # refuses (alice lacks admin). nginx would route on the normalised path
    # but pass the raw one on, so its config refuses such paths outright.
    if ctx.kind == "nginx":
        check(r["status"] == 400, f"status {r['status']}, want 400")
        check(not ctx.auth.all() and not ctx.up.all(), "an ambiguous path was passed on")
        return
    a = one_verify(ctx, r)
    _, seen = original_of(a)
    check(seen == "/admin/x", f"auth saw {seen!r}, want the normalised /admin/x")
    check(r["status"] == 403 and not ctx.up.all(), f"status {r['status']}")


def case_alias_headers(ctx: Ctx, r: dict[str, Any]) -> Any:
    # CGI/WSGI/PHP-style backends read X_Portcullis_User and
    # X.Portcullis.User as X-Portcullis-User: no alias may pass either.
    want = {"X_PORTCULLIS_USER": "alice", "X_PORTCULLIS_SCOPES": "read write"}
    check(r["status"] == 200, f"status {r['status']}: {r['body'][:200]}")
    ups = ctx.up.all()
    check(len(ups) == 1, f"{len(ups)} upstream requests")
    got: dict[str, list[str]] = {}
    for k, v in ups[0]["headers"]:
        norm = re.sub(r"[^A-Za-z0-9]", "_", k).upper()
        if norm.startswith("X_PORTCULLIS_"):
            got.setdefault(norm, []).append(f"{k}: {v}")
    bad = {k: v for k, v in got.items() if len(v) != 1 or v[0].split(": ", 1)[1] != want.get(k)}
    check(not bad and set(got) == set(want), f"upstream identity (CGI view) {got}")
    a = one_verify(ctx, r)
    aliases = [k for k, _ in a["headers"] if re.sub(r"[^A-Za-z0-9]", "_", k).upper().startswith("X_PORTCULLIS_")]
    check(not aliases, f"aliases reached the auth service: {aliases}")


OVERRIDES = {
    "X-HTTP-Method-Override": "DELETE",
    "X_HTTP_Method_Override": "DELETE",
    "X-HTTP-Method": "DELETE",
    "X-Method-Override": "DELETE",
    "X-Original-URL": "/admin",
    "X.Original.URL": "/admin",
    "X-Rewrite-URL": "/admin",
    "X-Forwarded-Prefix": "/evil",
    "Forwarded": "for=1.2.3.4;host=evil.example",
}


def case_overrides(ctx: Ctx, r: dict[str, Any]) -> Any:
    expect_allowed(ctx, r, {"X-Portcullis-User": "alice", "X-Portcullis-Scopes": "read write"},
                   "GET", "/api/items")
    norm = {re.sub(r"[^A-Za-z0-9]", "_", k).upper() for k in OVERRIDES}
    left = [f"{k}: {v}" for k, v in ctx.up.all()[0]["headers"]
            if re.sub(r"[^A-Za-z0-9]", "_", k).upper() in norm]
    check(not left, f"override headers reached the upstream: {left}")


def case_no_credentials(ctx: Ctx, r: dict[str, Any]) -> Any:
    a = expect_refused(ctx, r, 401, www_auth=True)
    expect_original(a, "GET", ITEMS_URI)


def case_forbidden(ctx: Ctx, r: dict[str, Any]) -> Any:
    expect_refused(ctx, r, 403)


def case_bad_path(ctx: Ctx, r: dict[str, Any]) -> Any:
    a = expect_refused(ctx, r, 400)
    expect_original(a, "GET", "/files%2Fsecret")


def case_no_route(ctx: Ctx, r: dict[str, Any]) -> Any:
    expect_refused(ctx, r, 404)


def case_rate_limited(ctx: Ctx, r: dict[str, Any]) -> Any:
    expect_refused(ctx, r, 429, retry_after="7")
    h = r["headers"]
    check(h.get("ratelimit") == '"default";r=0;t=7', f"RateLimit {h.get('ratelimit')!r}")
    check(h.get("ratelimit-policy") == '"default";q=100;w=60', f"RateLimit-Policy {h.get('ratelimit-policy')!r}")


def case_method(ctx: Ctx, r: dict[str, Any]) -> Any:
    a = expect_refused(ctx, r, 403)
    expect_original(a, "DELETE", "/api/items/1")


def case_browser(ctx: Ctx, r: dict[str, Any]) -> Any:
    check(r["status"] == 302, f"status {r['status']}, want 302: {r['body'][:200]}")
    check(not ctx.up.all(), "redirected request reached the upstream")
    loc = r["headers"].get("location", "")
    want = "/.auth/login?rd=" + urllib.parse.quote("/app/page?a=1&b=2", safe="")
    check(loc == want, f"Location {loc!r}, want {want!r}")
    a = one_verify(ctx, r)
    expect_original(a, "GET", "/app/page?a=1&b=2")


def case_login(ctx: Ctx, r: dict[str, Any]) -> Any:
    check(r["status"] == 200 and r["headers"].get("x-stand-in") == "login",
          f"login page: status {r['status']}")
    calls = ctx.auth.all()
    check([c["path"] for c in calls] == ["/.auth/login?rd=%2Fapp"],
          f"auth calls {[c['path'] for c in calls]}")
    # The four identity headers are stripped everywhere; other X-Portcullis-*
    # names only by Envoy on routes without forward auth (portcullis ignores
    # them anyway: it sets, never reads, X-Portcullis-*).
    left = set(portcullis_headers(calls[0]))
    allowed = set() if ctx.kind == "envoy" else {"X-Portcullis-Admin"}
    check(left <= allowed, f"client X-Portcullis-* reached the login page: {left}")
    check(not ctx.up.all(), "login request reached the upstream")


def case_verify_blocked(ctx: Ctx, r: dict[str, Any]) -> Any:
    check(r["status"] in (403, 404), f"/.auth/verify from a client: status {r['status']}")
    check(not ctx.auth.all(), "client's /.auth/verify reached portcullis")
    check(not ctx.up.all(), "client's /.auth/verify reached the upstream")


def case_auth_error(ctx: Ctx, r: dict[str, Any]) -> Any:
    check(500 <= r["status"] <= 599, f"auth service 500: client got {r['status']}")
    check(not ctx.up.all(), "request reached the upstream although auth failed")


CASES: list[Case] = [
    ("bearer-get", "GET", ITEMS_URI, {"Authorization": "Bearer good", "X-Request-Id": "client-rid-1", **FORGED},
     None, case_bearer),
    ("apikey-post", "POST", "/api/items", {"X-API-Key": "k-good", "Content-Type": "application/json", **FORGED},
     b'{"a": 1}', case_apikey_post),
    ("cookie-session", "GET", "/app/home", {"Cookie": "session=good; theme=dark", "Accept": BROWSER, **FORGED},
     None, case_cookie),
    ("encoded-uri", "PUT", ENCODED_URI, {"Authorization": "Bearer good"}, b"{}", case_encoded),
    ("chunked-post", "POST", "/api/upload", {"Authorization": "Bearer good", "Transfer-Encoding": "chunked"},
     b"0123456789abcdefghij", case_chunked),
    # Large enough for nginx to spool both bodies to files under TMP.
    ("large-bodies", "POST", "/api/big?pad=1000000", {"Authorization": "Bearer good"}, b"b" * 300_000,
     case_large),
    ("dot-segments", "GET", "/public/../admin/x", {"Authorization": "Bearer good"}, None, case_dot_segments),
    ("dot-segments-encoded", "GET", "/public/%2E%2e/admin/x", {"Authorization": "Bearer good"}, None,
     case_dot_segments),
    ("dot-segments-auth", "GET", "/.auth/../admin/x", {"Authorization": "Bearer good"}, None, case_dot_segments),
    ("alias-headers", "GET", "/api/items", {"Authorization": "Bearer good", "X_Portcullis_User": "mallory",
                                            "X.Portcullis.User": "mallory", "X-Portcullis_Scopes": "admin",
                                            "x~portcullis~key~id": "k9"}, None, case_alias_headers),
    ("override-headers", "GET", "/api/items", {"Authorization": "Bearer good", **OVERRIDES}, None,
     case_overrides),
    ("no-credentials-401", "GET", ITEMS_URI, {"Accept": "application/json", **FORGED}, None, case_no_credentials),
    ("forbidden-403", "GET", "/api/items", {"Authorization": "Bearer nope"}, None, case_forbidden),
    ("encoded-slash-400", "GET", "/files%2Fsecret", {"Authorization": "Bearer good"}, None, case_bad_path),
    ("no-route-404", "GET", "/nowhere/x", {"Authorization": "Bearer good"}, None, case_no_route),
    ("rate-limited-429", "GET", "/api/items", {"Authorization": "Bearer slow"}, None, case_rate_limited),
    ("method-scope-403", "DELETE", "/api/items/1", {"Authorization": "Bearer good", **FORGED}, None, case_method),
    ("browser-redirect", "GET", "/app/page?a=1&b=2", {"Accept": BROWSER}, None, case_browser),
    ("login-page", "GET", "/.auth/login?rd=%2Fapp", {"Accept": BROWSER, **FORGED}, None, case_login),
    ("verify-blocked", "GET", "/.auth/verify", {"Authorization": "Bearer good", "X-Original-URI": "/api",
                                                "X-Forwarded-Uri": "/api"}, None, case_verify_blocked),
    ("auth-error-500", "GET", "/api/items", {"Authorization": "Bearer boom"}, None, case_auth_error),
]


def run_proxy(kind: str, exe: str, results: list[dict[str, Any]], verbose: bool, keep: bool) -> None:
    auth_srv, auth = stand_in.start_auth()
    up_srv, up = stand_in.start_upstream()
    tmp = Path(tempfile.mkdtemp(prefix=f"fa-{kind}-"))
    dead_tmp = Path(tempfile.mkdtemp(prefix=f"fa-{kind}-down-"))
    # Run as root, nginx's workers are `nobody`: they must reach TMP to spool
    # request and response bodies into TMP/client_body and TMP/proxy.
    for d in (tmp, dead_tmp):
        d.chmod(0o755)
    proxies: list[Proxy] = []
    t0 = time.monotonic()
    try:
        p = Proxy(kind, exe, auth_srv.server_address[1], up_srv.server_address[1], tmp)
        proxies.append(p)
        try:
            p.start()
        except Exception as e:
            results.append({"proxy": kind, "case": "start", "ok": False, "error": str(e)})
            print(f"FAIL {kind:8} start: {e}")
            return
        started = time.monotonic() - t0
        print(f"     {kind:8} started in {started:.2f}s on 127.0.0.1:{p.port}")
        ctx = Ctx(kind, p.port, auth, up)
        for name, method, path, headers, body, fn in CASES:
            auth.clear()
            up.clear()
            entry: dict[str, Any] = {"proxy": kind, "case": name, "request": {
                "method": method, "path": path, "headers": headers, "body": body.decode() if body else None}}
            try:
                r = request(p.port, method, path, headers, body)
                time.sleep(0.02)  # let the stand-in threads finish recording
                entry["response"] = {k: r[k] for k in ("status", "header_list", "body")}
                fn(ctx, r)
                entry["ok"] = True
                print(f"ok   {kind:8} {name}")
            except Exception as e:
                entry["ok"] = False
                entry["error"] = f"{type(e).__name__}: {e}"
                print(f"FAIL {kind:8} {name}: {entry['error']}")
                if not isinstance(e, Failed):
                    traceback.print_exc()
            entry["auth_saw"] = auth.all()
            entry["upstream_saw"] = up.all()
            if verbose:
                print(json.dumps({k: entry[k] for k in ("auth_saw", "upstream_saw") if k in entry}, indent=1))
            results.append(entry)

        # Auth service down: a closed port. The request must not pass.
        d = Proxy(kind, exe, free_port(), up_srv.server_address[1], dead_tmp)
        proxies.append(d)
        entry = {"proxy": kind, "case": "auth-down"}
        try:
            # /.auth/login cannot answer either, so wait for the port only.
            d.proc = subprocess.Popen(d.command(), stdout=open(dead_tmp / f"{kind}.stdout", "wb"),
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=dead_tmp,
                                      start_new_session=True, env={**os.environ, "HOME": str(dead_tmp)})
            deadline = time.monotonic() + START_TIMEOUT
            r = None
            up.clear()
            while time.monotonic() < deadline:
                check(d.proc.poll() is None, f"exited: {d.logs()}")
                try:
                    r = request(d.port, "GET", "/api/items", {"Authorization": "Bearer good"}, timeout=8)
                    if r["status"] != 404:  # Traefik: 404 until its routers load
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            check(r is not None, "no answer")
            entry["response"] = {k: r[k] for k in ("status", "header_list", "body")}
            check(500 <= r["status"] <= 599, f"status {r['status']}, want 5xx")
            check(not up.all(), "request reached the upstream with the auth service down")
            entry["ok"] = True
            print(f"ok   {kind:8} auth-down (client got {r['status']})")
        except Exception as e:
            entry["ok"] = False
            entry["error"] = f"{type(e).__name__}: {e}"
            print(f"FAIL {kind:8} auth-down: {entry['error']}")
        results.append(entry)
    finally:
        for p in proxies:
            p.stop()
        auth_srv.shutdown()
        up_srv.shutdown()
        for p in proxies:
            if p.proc is not None:
                results_failed = any(not e.get("ok") for e in results if e["proxy"] == kind)
                if results_failed or keep:
                    print(f"     {kind:8} files kept in {p.tmp}")
                    if results_failed and verbose:
                        print(p.logs())
                else:
                    shutil.rmtree(p.tmp, ignore_errors=True)
        print(f"     {kind:8} done in {time.monotonic() - t0:.2f}s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("proxies", nargs="*", metavar="PROXY", help="nginx, traefik, envoy (default: all)")
    ap.add_argument("--report", help="write every request/response seen to this JSON file")
    ap.add_argument("--no-install", action="store_true", help="do not run .ci/forward-auth-tools.sh")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    wanted = args.proxies or list(PROXIES)
    bad = [k for k in wanted if k not in PROXIES]
    if bad:
        ap.error(f"unknown proxy {bad}; choose from {PROXIES}")

    t0 = time.monotonic()
    paths = tool_paths(install=not args.no_install)
    missing = [k for k in wanted if k not in paths]
    if missing:
        print(f"missing executables: {missing} (set $NGINX/$TRAEFIK/$ENVOY or run .ci/forward-auth-tools.sh)")
        print(f"0 passed, {len(missing)} failed")
        return 1
    vers = versions({k: paths[k] for k in wanted})
    for k in wanted:
        print(f"     {k:8} {vers[k]}  {paths[k]}")

    results: list[dict[str, Any]] = []
    for kind in wanted:
        run_proxy(kind, paths[kind], results, args.verbose, args.keep)

    passed = sum(1 for e in results if e.get("ok"))
    failed = len(results) - passed
    if args.report:
        Path(args.report).write_text(json.dumps({"versions": vers, "results": results}, indent=1))
        print(f"     report written to {args.report}")
    print(f"     total {time.monotonic() - t0:.2f}s")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
