"""
Object-storage bucket origins (C{BucketOrigin}): how a client request becomes
a request to an S3-compatible bucket, and what of the answer the client sees.

 - The client's path is the object key: percent-decoded once, then encoded
   once by S3's rules (RFC 3986 unreserved characters and C{/} stay), so keys
   with spaces, C{+}, C{~}, C{%} and non-ASCII survive intact.  A key with a
   C{.} or C{..} segment is refused (400): an S3 server that normalises the
   path could otherwise be led out of the bucket.  C{/} alone (a bucket
   listing) is a 404 from cdnpull.
 - The query string is not sent: S3 reads it as a sub-resource (C{?acl},
   C{?versions}, listings), none of which a CDN user should reach.
 - Virtual-hosted style sends C{Host: <bucket>.<endpoint host>} and the key
   as the path; path style sends the endpoint's host and C{/<bucket>/<key>}.
 - Only an allowlist of client headers reaches the bucket (C{Range} and the
   conditional headers, C{Accept-Encoding}, C{User-Agent}); cookies,
   C{Authorization} and forwarding headers do not.  These are not signed.
 - With credentials every request is signed (AWS SigV4) at the injected
   clock's time; the signed Host is the Host sent.
 - Store-specific headers are stripped from answers (C{x-amz-*},
   C{x-cos-*}, C{x-oss-*}, C{x-goog-*}, C{x-minio-*}, C{x-rgw-*},
   C{seaweed-*}).
"""

from __future__ import annotations

from typing import Iterable
from urllib.parse import quote_from_bytes, unquote_to_bytes

from twisted.web.http_headers import Headers

from ..config import BucketOrigin
from ..errors import EdgeError
from .sigv4 import sign

__all__ = ["object_path", "prepare_bucket", "strip_store_headers", "FORWARDED", "STORE_PREFIXES"]

FORWARDED = (
    b"range", b"if-range", b"if-match", b"if-none-match", b"if-modified-since",
    b"if-unmodified-since", b"accept-encoding", b"user-agent",
)
STORE_PREFIXES = (b"x-amz-", b"x-cos-", b"x-oss-", b"x-goog-", b"x-minio-", b"x-rgw-", b"seaweed-")


def object_path(target: bytes) -> bytes:
    """
    The object key of a client target, encoded once for S3 (no leading
    slash).

    @raise EdgeError: 400 for a dot segment or a NUL, 404 for no key at all.
    """
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    raw = unquote_to_bytes(path)
    key = raw[1:] if raw.startswith(b"/") else raw
    if not key.strip(b"/"):
        # "/", "//", "///": a listing (or the bucket itself) to some stores.
        raise EdgeError("no object key in the path (bucket listings are not served)", 404)
    if b"\x00" in key:
        raise EdgeError("NUL in the object key", 400)
    if any(seg in (b".", b"..") for seg in key.split(b"/")):
        raise EdgeError("'.' and '..' path segments are not allowed for a bucket", 400)
    return quote_from_bytes(key, safe="/-_.~").encode("ascii")


def prepare_bucket(origin: BucketOrigin, method: bytes, target: bytes, client_headers: Headers,
                   now: float) -> tuple[bytes, str, Headers]:
    """The (target, Host, headers) of the request to the bucket."""
    key = object_path(target)
    host = origin.host_header
    path = b"/" + key if origin.style == "virtual" else b"/" + origin.bucket.encode("ascii") + b"/" + key
    headers = Headers()
    for name in FORWARDED:
        values = client_headers.getRawHeaders(name)
        if values:
            headers.setRawHeaders(name, values)
    headers.setRawHeaders(b"host", [host.encode("idna")])
    creds = origin.credentials
    if creds is not None:
        added = sign(method=method.decode("ascii"), path=path.decode("ascii"), headers={"host": host},
                     access_key=creds.access_key, secret_key=creds.secret_key,
                     region=origin.region, now=now, session_token=creds.session_token)
        for field, text in added.items():
            headers.setRawHeaders(field.encode("ascii"), [text.encode("ascii")])
    return path, host, headers


def strip_store_headers(headers: Headers, prefixes: Iterable[bytes] = STORE_PREFIXES) -> None:
    for name, _ in list(headers.getAllRawHeaders()):
        if name.lower().startswith(tuple(prefixes)):
            headers.removeHeader(name)
