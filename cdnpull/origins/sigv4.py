"""
AWS Signature Version 4 for S3 GET and HEAD requests (header-based
authentication), written here rather than taken from botocore: it is about
forty lines of hashing with no I/O, botocore is a heavy dependency for that,
and the tests check this signer against botocore's C{S3SigV4Auth} and
against the example signatures AWS publishes.

The request time comes from the caller (the injected clock), never from
C{time.time()}.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Mapping, Optional

__all__ = ["EMPTY_SHA256", "sign", "amz_date"]

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
ALGORITHM = "AWS4-HMAC-SHA256"


def amz_date(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    k = _hmac(("AWS4" + secret).encode("utf-8"), day)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def sign(
    *,
    method: str,
    path: str,
    query: str = "",
    headers: Mapping[str, str],
    access_key: str,
    secret_key: str,
    region: str,
    now: float,
    session_token: Optional[str] = None,
    service: str = "s3",
    payload_hash: str = EMPTY_SHA256,
) -> dict[str, str]:
    """
    The headers to add to a request so that it is signed.

    @param path: the request path exactly as it is sent (already
        percent-encoded once: S3 does not encode it again).
    @param query: the canonical query string (sorted, encoded), or "".
    @param headers: the headers to sign, at least C{host}; names in any case.
    @return: C{x-amz-date}, C{x-amz-content-sha256}, C{authorization} and,
        with a session token, C{x-amz-security-token}.
    """
    stamp = amz_date(now)
    day = stamp[:8]
    signed = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    signed["x-amz-date"] = stamp
    signed["x-amz-content-sha256"] = payload_hash
    if session_token:
        signed["x-amz-security-token"] = session_token
    names = sorted(signed)
    canonical_headers = "".join(f"{n}:{signed[n]}\n" for n in names)
    signed_headers = ";".join(names)
    canonical_request = "\n".join(
        [method, path, query, canonical_headers, signed_headers, payload_hash])
    scope = f"{day}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()])
    signature = hmac.new(signing_key(secret_key, day, region, service),
                         string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    out = {
        "x-amz-date": stamp,
        "x-amz-content-sha256": payload_hash,
        "authorization": (f"{ALGORITHM} Credential={access_key}/{scope}, "
                          f"SignedHeaders={signed_headers}, Signature={signature}"),
    }
    if session_token:
        out["x-amz-security-token"] = session_token
    return out
