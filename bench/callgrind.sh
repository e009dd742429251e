#!/usr/bin/env bash
# User-space instructions per request of one portcullis binary, counted by
# callgrind (repeatable, unlike wall-clock numbers on a shared VM).
#
#   bench/callgrind.sh BIN public|key|limited|dead|jwt-rs256|jwt-es256|session|post|validated [SECONDS]
#   bench/callgrind.sh nginx nginx-proxy [SECONDS]   # the reference: nginx as the proxy
#   (logged: the public route with [log] access_log = true, lines to a file)
#   (dead: the public route to an upstream whose second target is dead)
#   (post, validated: the 2 KiB JSON body bench/body-2k.json POSTed to a
#   route without and with validation against bench/body-2k.schema.json)
#   KEEP=1 bench/callgrind.sh ...   # keep the callgrind.out for callgrind_annotate
#
# Starts an nginx upstream (`return 200 "ok\n"`) and BIN under valgrind
# with bench/portcullis.toml, both on loopback ports 18181-18183, warms the
# route up with instrumentation off, then counts instructions while wrk
# (-t1 -c16) loads the route for SECONDS (default 20), and prints the total
# divided by the requests wrk made. Needs nginx, wrk, valgrind, curl.
# `nginx-proxy` counts nginx itself instead (one process, master_process
# off, proxying to the same upstream with a keep-alive pool, no access log:
# the bench/nginx-proxy.conf settings), so both figures come from one tool.
set -euo pipefail
BIN=$1; ROUTE=$2; SECONDS_OF_LOAD=${3:-20}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
D=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-callgrind.XXXX")
cat > "$D/nginx.conf" <<NG
worker_processes 1; daemon off; pid $D/nginx.pid; error_log $D/error.log;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $D; proxy_temp_path $D; fastcgi_temp_path $D;
  uwsgi_temp_path $D; scgi_temp_path $D;
  server { listen 127.0.0.1:18181; keepalive_requests 1000000; location / { return 200 "ok\n"; } } }
NG
nginx -c "$D/nginx.conf" -p "$D" & NGINX=$!
VALGRIND=
cleanup() { kill "$NGINX" ${VALGRIND:+"$VALGRIND"} 2>/dev/null || true; }
trap cleanup EXIT
sed -e "s#{portcullis_port}#18182#; s#{portcullis_admin_port}#18183#; s#{prefix}#$D#; s#{upstream_port}#18181#" \
    -e "s#{jwt_keys}#$here/../tests/fixtures/jwt#g" -e "s#{bench_dir}#$here#g" -e "s/{{/{/g; s/}}/}/g" \
    "$here/portcullis.toml" > "$D/portcullis.toml"
if [ "$ROUTE" = logged ]; then sed -i 's/^access_log = false/access_log = true/' "$D/portcullis.toml"; fi
if [ "$ROUTE" = nginx-proxy ]; then
  cat > "$D/proxy.conf" <<NG
worker_processes 1; daemon off; master_process off; pid $D/proxy.pid; error_log $D/proxy-error.log;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $D; proxy_temp_path $D; fastcgi_temp_path $D;
  uwsgi_temp_path $D; scgi_temp_path $D; keepalive_requests 10000000;
  upstream backend { server 127.0.0.1:18181; keepalive 128; keepalive_requests 10000000; }
  server { listen 127.0.0.1:18182; location / { proxy_pass http://backend; proxy_http_version 1.1;
    proxy_set_header Connection ""; } } }
NG
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$D/callgrind.out" \
      nginx -c "$D/proxy.conf" -p "$D" > "$D/portcullis.log" 2>&1 & VALGRIND=$!
else
  export BENCH_SESSION_KEY=bench-session-key-Zq7Wm2Xp9Lk4Rt8Vb3Nc6Yh1
  "$BIN" consumers create bench --config "$D/portcullis.toml" >/dev/null
  echo bench-password-not-secret | "$BIN" users create bench --password-stdin --config "$D/portcullis.toml" >/dev/null
  KEY=$("$BIN" keys create --consumer bench --json --config "$D/portcullis.toml" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$D/callgrind.out" \
      "$BIN" serve --config "$D/portcullis.toml" > "$D/portcullis.log" 2>&1 & VALGRIND=$!
fi
for _ in $(seq 1 100); do curl -sf -o /dev/null http://127.0.0.1:18182/ && break; sleep 0.5; done
URL=http://127.0.0.1:18182/; HEADER=(); CURL=(); WRK=()
case "$ROUTE" in
  post|validated)
    URL=http://127.0.0.1:18182/$ROUTE
    CURL=(-H "Content-Type: application/json" --data-binary "@$here/body-2k.json")
    python3 -c 'import json,sys; b=open(sys.argv[1]).read(); print("wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = " + json.dumps(b))' \
      "$here/body-2k.json" > "$D/post.lua"
    WRK=(-s "$D/post.lua") ;;
  key) URL=http://127.0.0.1:18182/key; HEADER=(-H "X-API-Key: $KEY") ;;
  dead) URL=http://127.0.0.1:18182/dead/ ;;
  limited) URL=http://127.0.0.1:18182/limited ;;
  session)
    COOKIE=$(python3 - <<'PY'
import http.client, re, urllib.parse
c = http.client.HTTPConnection("127.0.0.1", 18182, timeout=30)
c.request("GET", "/.auth/login"); r = c.getresponse(); html = r.read().decode()
login = r.getheader("set-cookie").split(";")[0]
csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
form = urllib.parse.urlencode({"csrf": csrf, "rd": "/", "username": "bench", "password": "bench-password-not-secret"})
c.request("POST", "/.auth/login", body=form, headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": login})
r = c.getresponse(); r.read()
print([h.split(";")[0] for h in r.headers.get_all("set-cookie") if h.startswith("__Host-portcullis=")][0])
PY
)
    URL=http://127.0.0.1:18182/session; HEADER=(-H "Cookie: $COOKIE") ;;
  jwt-rs256|jwt-es256)
    ALG=$(echo "${ROUTE#jwt-}" | tr a-z A-Z)
    TOKEN=$(cd "$here" && python3 -c "import tokens; print(tokens.bench_tokens()['BENCH_JWT_$ALG'])")
    URL=http://127.0.0.1:18182/jwt; HEADER=(-H "Authorization: Bearer $TOKEN") ;;
esac
for _ in $(seq 1 50); do curl -sf -o /dev/null "${HEADER[@]}" "${CURL[@]}" "$URL"; done
callgrind_control -i on "$VALGRIND" >/dev/null 2>&1
wrk -t1 -c16 -d"${SECONDS_OF_LOAD}s" "${HEADER[@]}" "${WRK[@]}" "$URL" > "$D/wrk.txt"
callgrind_control -i off "$VALGRIND" >/dev/null 2>&1
kill "$VALGRIND"; wait "$VALGRIND" 2>/dev/null || true; VALGRIND=
REQUESTS=$(awk '/requests in/ {print $1}' "$D/wrk.txt")
INSTRUCTIONS=$(awk '/Collected :/ {print $NF}' "$D/portcullis.log")
echo "$ROUTE: $REQUESTS requests, $INSTRUCTIONS instructions, $((INSTRUCTIONS / REQUESTS)) per request"
grep -q "Non-2xx" "$D/wrk.txt" && { echo "wrk saw non-2xx answers:"; cat "$D/wrk.txt"; exit 1; }
if [ -n "${KEEP:-}" ]; then echo "kept: $D/callgrind.out"; else rm -rf "$D"; fi
