#!/usr/bin/env python3
"""Self-test of the browser harness (drive.mjs + /usr/bin/chromium).

Starts small HTTP servers on ephemeral ports and proves, with a real headless
Chromium, what the browser enforces:
  * CORS: credentialed fetch A -> B succeeds (B allows exactly A, with credentials);
    the same fetch from a cross-site origin C is blocked (JS sees a TypeError),
    although B still receives the request.
  * CSRF: cross-site form POSTs C -> B are sent; for each enctype the headers B
    saw (Origin, Sec-Fetch-*, Content-Type) and whether B's SameSite=Lax cookie
    came along are printed.
  * CSP: `script-src 'self'` blocks an inline script (violation recorded, marker
    unset) while a same-origin external script runs.
  * Site matrix: which of 127.0.0.1:<other port>, 127.0.0.2, localhost Chromium
    treats as same-site with 127.0.0.1 (read from Sec-Fetch-Site and the Lax cookie).

Run: python3 tests/support/browser/check.py   (after bash .ci/browser.sh)
Prints a report; exits 0 when every check holds. Closing line: 'N passed, N failed'.
"""
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVE = os.path.join(HERE, "drive.mjs")
LOG = []  # every request any server saw: dict(server, method, path, headers)
LOG_LOCK = threading.Lock()
ALLOWED_ORIGIN = None  # origin A, set in main()
B = None  # origin of B, set in main()

FORM_KINDS = ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data"]


def forms_page():
    forms = []
    for i, kind in enumerate(FORM_KINDS):
        forms.append(
            f'<form id="f{i}" method="POST" action="{B}/submit?kind={i}" enctype="{kind}">'
            f'<input name="amount" value="100"><button id="submit{i}" type="submit">go</button></form>'
        )
    return "<!doctype html><title>forms</title>" + "".join(forms)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _record(self, body=b""):
        with LOG_LOCK:
            LOG.append({
                "server": f"{self.server.server_address[0]}:{self.server.server_address[1]}",
                "host": self.headers.get("Host"),
                "method": self.command,
                "path": self.path,
                "headers": {k: v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace")[:200],
            })

    def _send(self, code, body, ctype="text/html; charset=utf-8", extra=()):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _cors(self):
        origin = self.headers.get("Origin")
        if origin and origin == ALLOWED_ORIGIN:
            return [("Access-Control-Allow-Origin", origin),
                    ("Access-Control-Allow-Credentials", "true"), ("Vary", "Origin")]
        return [("Vary", "Origin")]

    def do_OPTIONS(self):
        self._record()
        self._send(204, "", extra=self._cors() + [("Access-Control-Allow-Methods", "GET, POST"),
                                                  ("Access-Control-Allow-Headers", "Content-Type")])

    def do_GET(self):
        self._record()
        path = self.path.split("?")[0]
        if path == "/page":  # origin A's page: a form and a script
            self._send(200, '<!doctype html><title>A</title><form id="f" action="/echo">'
                            '<input id="x" name="x"><button id="submit">go</button></form>'
                            '<script>window.aReady = true;</script>')
        elif path == "/forms":  # origin C's page: cross-site forms to B
            self._send(200, forms_page())
        elif path == "/login":  # B sets its SameSite=Lax session cookie
            self._send(200, "<!doctype html>logged in",
                       extra=[("Set-Cookie", "sid=s3cret; Path=/; HttpOnly; SameSite=Lax")])
        elif path == "/api":
            self._send(200, json.dumps({"cookie": "sid=" in (self.headers.get("Cookie") or "")}),
                       ctype="application/json", extra=self._cors())
        elif path == "/csp":
            self._send(200, '<!doctype html><title>csp</title>'
                            '<script>window.inlineMarker = "ran";</script>'
                            '<script src="/ok.js"></script>',
                       extra=[("Content-Security-Policy", "script-src 'self'")])
        elif path == "/ok.js":
            self._send(200, 'window.externalMarker = "ran";', ctype="text/javascript")
        elif path == "/echo":
            self._send(200, f"<!doctype html><p id=echo>{self.path}</p>")
        else:
            self._send(404, "not found")

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self._record(body)
        self._send(200, "<!doctype html><p id=done>received</p>", extra=self._cors())


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the browser closing a connection early (favicon, navigation) is not an error here


def serve(host):
    srv = Server((host, 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def drive(steps):
    p = subprocess.run(["node", DRIVE], input=json.dumps({"steps": steps}), capture_output=True,
                       text=True, timeout=40, cwd=HERE)
    line = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "{}"
    res = json.loads(line)
    if p.returncode != 0:
        raise RuntimeError(f"drive.mjs rc={p.returncode}: {res.get('error')} stderr={p.stderr[-500:]}")
    return res


def posts(path_prefix):
    with LOG_LOCK:
        return [r for r in LOG if r["method"] == "POST" and r["path"].startswith(path_prefix)]


def main():
    global ALLOWED_ORIGIN, B
    a_srv, b_srv, c2_srv, cl_srv = serve("127.0.0.1"), serve("127.0.0.1"), serve("127.0.0.2"), serve("127.0.0.1")
    port = lambda s: s.server_address[1]
    A = f"http://127.0.0.1:{port(a_srv)}"
    B = f"http://127.0.0.1:{port(b_srv)}"
    C_IP2 = f"http://127.0.0.2:{port(c2_srv)}"     # different IP: cross-site
    C_LOCAL = f"http://localhost:{port(cl_srv)}"   # 'localhost' host name: cross-site to 127.0.0.1
    ALLOWED_ORIGIN = A
    passed = failed = 0

    def check(name, cond, detail=""):
        nonlocal passed, failed
        if cond:
            passed += 1
        else:
            failed += 1
        print(f"{'ok  ' if cond else 'FAIL'} {name}" + (f"  [{detail}]" if detail else ""))

    print(f"A={A} B={B} C={C_IP2} C'={C_LOCAL}")
    fetch_js = f"fetch('{B}/api',{{credentials:'include'}}).then(r=>r.json()).then(j=>'ok cookie='+j.cookie).catch(e=>'blocked: '+e.name+': '+e.message)"

    # 1. CORS: A -> B allowed with credentials; C -> B blocked.
    r = drive([{"goto": f"{B}/login"}, {"goto": f"{A}/page"}, {"eval": "window.aReady === true"},
               {"fill": "#x", "value": "hello"}, {"eval": fetch_js}, {"goto": f"{C_IP2}/forms"}, {"eval": fetch_js}])
    check("A page loads and its script runs", r["results"][2]["value"] is True)
    check("credentialed fetch A->B succeeds (cookie sent: same-site)", r["results"][4]["value"] == "ok cookie=true",
          r["results"][4]["value"])
    check("same fetch from C (127.0.0.2) is blocked by CORS with a TypeError",
          r["results"][6]["value"].startswith("blocked: TypeError"), r["results"][6]["value"])
    with LOG_LOCK:
        api_hits = [x for x in LOG if x["path"] == "/api"]
    check("B still received the blocked request (CORS hides the response, not the request)",
          len(api_hits) == 2 and api_hits[1]["headers"].get("Origin") == C_IP2,
          f"Origin={api_hits[-1]['headers'].get('Origin')} Cookie={'Cookie' in api_hits[-1]['headers']}")
    console_cors = [c["text"] for c in r["console"] if "CORS" in c["text"]]
    print("     console:", console_cors[:1])

    # 2. CSRF: cross-site form POSTs (every enctype) from C to B, for two kinds of C,
    #    and from a same-site origin (127.0.0.1, other port) for contrast.
    report = {}
    for label, origin in [("127.0.0.2 (cross-site)", C_IP2), ("localhost (cross-site)", C_LOCAL),
                          ("127.0.0.1 other port (same-site)", A)]:
        steps = [{"goto": f"{B}/login"}]
        for i in range(len(FORM_KINDS)):
            steps += [{"goto": f"{origin}/forms"}, {"click": f"#submit{i}"},
                      {"waitForURL": f"{B}/submit?kind={i}"}, {"eval": "document.getElementById('done').textContent"}]
        before = len(posts("/submit"))
        r = drive(steps)
        got = posts("/submit")[before:]
        check(f"{label}: all {len(FORM_KINDS)} form POSTs reached B", len(got) == len(FORM_KINDS))
        for i, kind in enumerate(FORM_KINDS):
            h = next((x["headers"] for x in got if x["path"] == f"/submit?kind={i}"), {})
            row = {k: h.get(k) for k in ("Origin", "Sec-Fetch-Site", "Sec-Fetch-Mode", "Sec-Fetch-Dest")}
            row["Content-Type"] = (h.get("Content-Type") or "").split(";")[0]
            row["Lax cookie sent"] = "sid=" in (h.get("Cookie") or "")
            report[(label, kind)] = row
    print("\nform POST headers seen by B (B sets sid=...; SameSite=Lax):")
    for (label, kind), row in report.items():
        print(f"  from {label:34} {kind:35} {json.dumps(row)}")
    for label in ("127.0.0.2 (cross-site)", "localhost (cross-site)"):
        for kind in FORM_KINDS:
            row = report[(label, kind)]
            check(f"{label} {kind}: Sec-Fetch-Site=cross-site, Lax cookie withheld",
                  row["Sec-Fetch-Site"] == "cross-site" and not row["Lax cookie sent"], json.dumps(row))
    for kind in FORM_KINDS:
        row = report[("127.0.0.1 other port (same-site)", kind)]
        check(f"127.0.0.1 other port {kind}: Sec-Fetch-Site=same-site, Lax cookie sent",
              row["Sec-Fetch-Site"] == "same-site" and row["Lax cookie sent"], json.dumps(row))

    # 3. CSP: inline script blocked, violation recorded, external 'self' script runs.
    r = drive([{"goto": f"{B}/csp"}, {"eval": "[String(window.inlineMarker), String(window.externalMarker)]"}])
    check("CSP blocks the inline script (marker unset)", r["results"][1]["value"][0] == "undefined",
          r["results"][1]["value"][0])
    check("CSP allows the same-origin external script", r["results"][1]["value"][1] == "ran")
    v = [x for x in r["cspViolations"] if x.get("effectiveDirective") == "script-src-elem"]
    check("securitypolicyviolation recorded (script-src-elem, blockedURI=inline)",
          len(v) == 1 and v[0].get("blockedURI") == "inline", json.dumps(r["cspViolations"])[:300])
    check("CSP violation also appears on the console",
          any("Content Security Policy" in c["text"] for c in r["console"]))

    # 4. Site matrix via Sec-Fetch-Site of a same-mode fetch to B from each origin.
    print("\nsite matrix (fetch to B=127.0.0.1 from each origin; Sec-Fetch-Site as sent):")
    matrix_js = f"fetch('{B}/api',{{method:'POST',body:'x',mode:'no-cors',credentials:'include'}}).then(()=>'sent').catch(e=>'err '+e.message)"
    expect = {B: ("same-origin", True), A: ("same-site", True), C_IP2: ("cross-site", False),
              C_LOCAL: ("cross-site", False)}
    for origin in (B, A, C_IP2, C_LOCAL):
        before = len(posts("/submit")), len(LOG)
        drive([{"goto": f"{B}/login"}, {"goto": f"{origin}/forms"}, {"eval": matrix_js}])
        with LOG_LOCK:
            hit = [x for x in LOG[before[1]:] if x["method"] == "POST" and x["path"] == "/api"]
        h = hit[-1]["headers"] if hit else {}
        got = (h.get("Sec-Fetch-Site"), "sid=" in (h.get("Cookie") or ""))
        print(f"  {origin:28} Sec-Fetch-Site={got[0]!s:12} Lax cookie={got[1]}")
        check(f"site of {origin} relative to B: {expect[origin][0]}", got == expect[origin], str(got))

    print(f"\n{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
