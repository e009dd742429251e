#!/usr/bin/env bash
# Start a private clamd for the malware-scanning integration tests.
#
#   tests/support/clamav/start.sh DIR PORT
#
# Writes DIR/clamd.conf and DIR/db/portcullis-test.{ndb,hdb} (a test-only
# signature database; the official main/daily.cvd are not used or needed),
# then execs clamd in the foreground, so the caller's child PID *is* clamd:
# stop it with SIGTERM to that PID. clamd listens on 127.0.0.1:PORT (TCP) and
# on DIR/clamd.sock (Unix). Logs go to DIR/clamd.log (and stderr).
# Ready when "PING" -> "PONG" succeeds (about 0.1 s with this tiny database).
#
# Signatures:
#   Portcullis.Test.Pattern  (.ndb) the bytes PORTCULLIS-TEST-MALWARE-7f3a anywhere
#   Portcullis.Test.EICAR    (.ndb) the EICAR test string anywhere in a stream
#   Portcullis.Test.EICAR.MD5(.hdb) the exact 68-byte EICAR file (the .ndb
#                            one wins when both match, so clamd reports
#                            Portcullis.Test.EICAR for the EICAR file too)
# Reply for a hit: "stream: Portcullis.Test.Pattern.UNOFFICIAL FOUND"
# (clamd appends ".UNOFFICIAL" to signatures not in signed official DBs).
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 DIR PORT" >&2; exit 2; }
dir="$(cd "$1" && pwd)"
port="$2"
case "$port" in ''|*[!0-9]*) echo "start.sh: bad port: $port" >&2; exit 2 ;; esac

clamd="${CLAMD:-$(command -v clamd 2>/dev/null || echo /usr/sbin/clamd)}"
[ -x "$clamd" ] || { echo "start.sh: clamd not found; run .ci/clamav.sh" >&2; exit 1; }

mkdir -p "$dir/db" "$dir/tmp"

hex() { printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n'; }

pattern='PORTCULLIS-TEST-MALWARE-7f3a'
# EICAR, assembled so this file doesn't itself trip scanners.
eicar='X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*'
eicar_md5="$(printf '%s' "$eicar" | md5sum | cut -d' ' -f1)"
eicar_len="$(printf '%s' "$eicar" | wc -c)"

# .ndb body signature: Name:TargetType:Offset:HexSignature  (0 = any file, * = any offset)
{
  echo "Portcullis.Test.Pattern:0:*:$(hex "$pattern")"
  echo "Portcullis.Test.EICAR:0:*:$(hex "$eicar")"
} > "$dir/db/portcullis-test.ndb"
# .hdb hash signature: MD5:Size:Name
echo "$eicar_md5:$eicar_len:Portcullis.Test.EICAR.MD5" > "$dir/db/portcullis-test.hdb"

# No "User" line: clamd then keeps the invoking uid (root included) and never
# tries to switch to the clamav user.
cat > "$dir/clamd.conf" <<CONF
Foreground yes
LogSyslog no
LogFile $dir/clamd.log
LogTime yes
LogVerbose no
PidFile $dir/clamd.pid
DatabaseDirectory $dir/db
TemporaryDirectory $dir/tmp
TCPAddr 127.0.0.1
TCPSocket $port
LocalSocket $dir/clamd.sock
LocalSocketMode 600
StreamMaxLength 25M
MaxThreads 2
MaxQueue 20
IdleTimeout 30
ReadTimeout 30
CommandReadTimeout 10
SelfCheck 0
ConcurrentDatabaseReload no
Bytecode no
CONF

exec "$clamd" --config-file="$dir/clamd.conf"
