#!/usr/bin/env python3
"""A stand-in for portcullis's forward-auth endpoint, and an echoing upstream.

Only the Python standard library. Both servers bind 127.0.0.1 on an
ephemeral port and record every request they get, so a test can report
exactly what a proxy sends.

The stand-in implements the forward-auth contract simplistically:

* ``/.auth/verify`` (any method): the protected request's path+query comes
  from ``X-Forwarded-Uri`` (Traefik) or ``X-Original-URI`` (nginx), its
  method from ``X-Forwarded-Method`` / ``X-Original-Method``.
* ``/.auth/verify/<path>`` (Envoy ext_authz ``path_prefix``): the original
  path+query is the rest of the path, the method is the request's own.
* Credentials, in this order:
    ``Authorization: Bearer good``  -> 200, user alice, scopes "read write"
    ``Authorization: Bearer slow``  -> 429, Retry-After: 7
    ``Authorization: Bearer nope``  -> 403
    ``Authorization: Bearer boom``  -> 500 (the auth service failing)
    ``X-API-Key: k-good``           -> 200, consumer mobile-app, key id k1
    ``Cookie: session=good``        -> 200, user bob (session)
    anything else / nothing         -> 401 with WWW-Authenticate
  A DELETE, or a path under /admin, needs the scope "admin": alice gets 403.
  A path with an encoded slash (%2F) is 400; a path under /nowhere is 404.
* A browser (Accept has text/html) with no credentials on a session route
  (paths under /app) is sent to ``/.auth/login?rd=<original uri>``: 302 with
  Location when the caller can pass a redirect through (Traefik, Envoy);
  401 plus the same Location header when the caller is nginx
  (``X-Original-URI``), whose config turns it into the redirect.
* ``/.auth/login`` answers a small HTML page (the login page); every other
  path answers 404 problem+json.

Refusals carry an RFC 9457 problem document (application/problem+json,
Cache-Control: no-store) with a request ID, and X-Request-Id, like the
gateway's own errors (src/error.rs).

Run it by hand: ``python3 stand_in.py`` prints both ports and logs each
request as one JSON line on stderr.
"""

from __future__ import annotations

import http.server
import json
import re
import sys
import threading
import time
import urllib.parse
import uuid
from typing import Any

REASONS = {
    200: "OK",
    302: "Found",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
}

REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class Recorder:
    """Thread-safe list of received requests."""

    def __init__(self, name: str, echo: bool = False):
        self.name = name
        self.echo = echo
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []

    def add(self, item: dict[str, Any]) -> None:
        with self._lock:
            self._items.append(item)
        if self.echo:
            print(json.dumps({"server": self.name, **item}), file=sys.stderr, flush=True)

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class _Base(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as proxies use it
    server_version = "stand-in"
    sys_version = ""
    recorder: Recorder

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            return self.rfile.read(n)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def _record(self, body: bytes) -> dict[str, Any]:
        item = {
            "time": time.time(),
            "method": self.command,
            "path": self.path,
            "http_version": self.request_version,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_len": len(body),
            "body": body.decode("utf-8", "replace")[:2000],
        }
        self.recorder.add(item)
        self._item = item
        return item

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        item = getattr(self, "_item", None)
        if item is not None:  # what we answered, for the report
            item["status"] = status
            item["response_headers"] = [list(h) for h in headers]
            item["response_body"] = body.decode("utf-8", "replace")[:2000]
            self._item = None
        self.send_response(status, REASONS.get(status))
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self.handle_any()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def handle_any(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class AuthHandler(_Base):
    """The portcullis stand-in."""

    def handle_any(self) -> None:
        body = self._read_body()
        self._record(body)
        incoming = self.headers.get_all("X-Request-Id") or []
        if len(incoming) == 1 and REQUEST_ID_OK.match(incoming[0]):
            rid = incoming[0]
        else:
            rid = uuid.uuid4().hex
        path = self.path
        if path == "/.auth/verify" or path.startswith("/.auth/verify?"):
            if self.headers.get("X-Original-URI") is not None:
                caller = "nginx"
                uri = self.headers.get("X-Original-URI")
                method = self.headers.get("X-Original-Method") or "GET"
            elif self.headers.get("X-Forwarded-Uri") is not None:
                caller = "traefik"
                uri = self.headers.get("X-Forwarded-Uri")
                method = self.headers.get("X-Forwarded-Method") or "GET"
            else:
                return self.problem(400, "No X-Forwarded-Uri or X-Original-URI.", rid)
            self.verify(caller, method, uri, rid)
        elif path.startswith("/.auth/verify/"):
            self.verify("envoy", self.command, path[len("/.auth/verify"):], rid)
        elif path == "/.auth/login" or path.startswith("/.auth/login?"):
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
            rd = query.get("rd", [""])[0]
            page = (
                "<!doctype html><title>Sign in</title><h1>portcullis login</h1>"
                f"<p>rd={urllib.parse.quote(rd)}</p>"
            ).encode()
            self._send(
                200,
                [("Content-Type", "text/html; charset=utf-8"), ("X-Request-Id", rid),
                 ("X-Stand-In", "login")],
                page,
            )
        else:
            self.problem(404, "No route matches this path.", rid)

    def problem(self, status: int, detail: str, rid: str,
                extra: list[tuple[str, str]] | None = None) -> None:
        doc = {
            "type": "about:blank",
            "title": REASONS.get(status, "Error"),
            "status": status,
            "detail": detail,
            "request_id": rid,
        }
        headers = [
            ("Content-Type", "application/problem+json"),
            ("Cache-Control", "no-store"),
            ("X-Request-Id", rid),
        ] + (extra or [])
        self._send(status, headers, json.dumps(doc).encode())

    def verify(self, caller: str, method: str, uri: str, rid: str) -> None:
        auth = self.headers.get("Authorization") or ""
        key = self.headers.get("X-API-Key") or ""
        cookies = self.headers.get("Cookie") or ""
        accept = self.headers.get("Accept") or ""
        original_path = urllib.parse.urlsplit(uri).path
        # Like the gateway: an encoded slash is refused, and some paths have
        # no route at all.
        if "%2f" in original_path.lower():
            return self.problem(400, "The request path contains an encoded slash.", rid)
        if original_path.startswith("/nowhere"):
            return self.problem(404, "No route matches this path.", rid)
        needs_admin = method.upper() == "DELETE" or original_path.startswith("/admin")

        identity: list[tuple[str, str]] | None = None
        scopes: set[str] = set()
        if auth == "Bearer good":
            identity = [("X-Portcullis-User", "alice"), ("X-Portcullis-Scopes", "read write")]
            scopes = {"read", "write"}
        elif auth == "Bearer slow":
            return self.problem(429, "Too many requests; retry after 7 s.", rid, [
                ("Retry-After", "7"),
                ("RateLimit", '"default";r=0;t=7'),
                ("RateLimit-Policy", '"default";q=100;w=60'),
            ])
        elif auth == "Bearer nope":
            return self.problem(403, "This key may not use this route.", rid)
        elif auth == "Bearer boom":
            return self.problem(500, "The gateway failed to handle the request.", rid)
        elif key == "k-good":
            identity = [("X-Portcullis-Consumer", "mobile-app"), ("X-Portcullis-Key-Id", "k1"),
                        ("X-Portcullis-Scopes", "read")]
            scopes = {"read"}
        elif re.search(r"(^|;\s*)session=good(;|$)", cookies):
            identity = [("X-Portcullis-User", "bob"), ("X-Portcullis-Scopes", "read")]
            scopes = {"read"}

        if identity is None:
            no_credentials = not auth and not key and "session=" not in cookies
            if no_credentials and "text/html" in accept and original_path.startswith("/app"):
                location = "/.auth/login?rd=" + urllib.parse.quote(uri, safe="")
                if caller == "nginx":
                    # nginx auth_request cannot pass a 3xx: say 401 and put the
                    # target in Location; the nginx config redirects.
                    return self.problem(401, "Sign in to continue.", rid, [
                        ("WWW-Authenticate", 'Cookie realm="portcullis"'),
                        ("Location", location),
                    ])
                return self._send(302, [("Location", location), ("X-Request-Id", rid),
                                        ("Cache-Control", "no-store")])
            return self.problem(401, "Missing or invalid credentials.", rid,
                                [("WWW-Authenticate", 'Bearer realm="portcullis"')])
        if needs_admin and "admin" not in scopes:
            return self.problem(403, "This route needs the scope admin.", rid)
        self._send(200, identity + [("X-Request-Id", rid), ("Cache-Control", "no-store")])


class UpstreamHandler(_Base):
    """The protected backend: echoes what it received as JSON."""

    def handle_any(self) -> None:
        body = self._read_body()
        item = self._record(body)
        doc = {k: item[k] for k in ("method", "path", "headers", "body_len", "body")}
        # ?pad=N makes the answer N bytes longer (to push a proxy to buffer
        # the response on disk).
        pad = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("pad", ["0"])[0]
        if pad.isdigit():
            doc["pad"] = "x" * min(int(pad), 8 << 20)
        out = json.dumps(doc)
        self._send(200, [("Content-Type", "application/json"), ("X-Upstream", "echo")],
                   out.encode())


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A proxy dropping an idle keep-alive connection is not an error.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


def start(handler: type[_Base], name: str, echo: bool = False) -> tuple[_Server, Recorder]:
    """Start a server on 127.0.0.1:<ephemeral> in a daemon thread."""
    recorder = Recorder(name, echo)
    cls = type(handler.__name__, (handler,), {"recorder": recorder})
    server = _Server(("127.0.0.1", 0), cls)
    threading.Thread(target=server.serve_forever, args=(0.05,), name=name, daemon=True).start()
    return server, recorder


def start_auth(echo: bool = False) -> tuple[_Server, Recorder]:
    return start(AuthHandler, "auth", echo)


def start_upstream(echo: bool = False) -> tuple[_Server, Recorder]:
    return start(UpstreamHandler, "upstream", echo)


def main() -> None:
    auth, _ = start_auth(echo=True)
    upstream, _ = start_upstream(echo=True)
    print(f"AUTH_PORT={auth.server_address[1]}", flush=True)
    print(f"UPSTREAM_PORT={upstream.server_address[1]}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
