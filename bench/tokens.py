"""Bench JWTs: signed with openssl (no Python crypto library needed) by the
test fixture keys in tests/fixtures/jwt, for the JWT scenarios.

RS256 is PKCS#1 v1.5 over SHA-256, which `openssl dgst -sign` produces as
is; ES256 is ECDSA P-256, whose DER signature is turned into the raw r||s
that JWS wants (RFC 7518 section 3.4).
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "jwt"
ISSUER = "https://bench.portcullis.test/"
AUDIENCE = "bench"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der_to_raw(der: bytes, size: int = 32) -> bytes:
    """An ASN.1 SEQUENCE of two INTEGERs (r, s) as fixed-width big-endian."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        value = der[i + 2 : i + 2 + n].lstrip(b"\x00")
        out += value.rjust(size, b"\x00")
        i += 2 + n
    return out


def sign(alg: str, key: str, claims: dict) -> str:
    header = {"alg": alg, "typ": "JWT"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", str(FIXTURES / f"{key}.pem")],
        input=signing_input.encode(), capture_output=True, check=True,
    ).stdout
    if alg == "ES256":
        sig = der_to_raw(sig)
    return f"{signing_input}.{b64(sig)}"


def bench_tokens(hours: int = 24) -> dict[str, str]:
    """One RS256 and one ES256 token for the bench issuer, valid for `hours`."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench-user", "scope": "bench",
              "iat": now, "exp": now + hours * 3600}
    return {
        "BENCH_JWT_RS256": sign("RS256", "rsa-a", claims),
        "BENCH_JWT_ES256": sign("ES256", "ec-a", claims),
    }
