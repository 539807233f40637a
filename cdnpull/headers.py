"""
Header rules at the proxy boundary: hop-by-hop headers (RFC 9110 section
7.6.1, and every header named in C{Connection}) never cross it, in either
direction; C{X-Forwarded-For} and C{Via} are added on the way to the origin.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

from twisted.web.http_headers import Headers

__all__ = ["HOP_BY_HOP", "connection_tokens", "end_to_end", "VIA", "FIELD_NAME", "CONTROL_CHAR"]

# A header field name: an RFC 9110 token.
FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# What may not appear in a field value (or a request/status line): control
# characters other than HTAB, and DEL.
CONTROL_CHAR = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

HOP_BY_HOP = frozenset(
    b.lower()
    for b in (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)

VIA = b"1.1 cdnpull"


def connection_tokens(headers: Headers) -> frozenset:
    """The lower-cased header names listed in C{Connection}."""
    tokens = set()
    for value in headers.getRawHeaders(b"connection", []):
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def end_to_end(headers: Headers, drop: Iterable[bytes] = ()) -> Headers:
    """
    A copy of C{headers} without hop-by-hop headers, those named in
    C{Connection}, and the (lower-case) names in C{drop}.
    """
    skip = HOP_BY_HOP | connection_tokens(headers) | frozenset(drop)
    out = Headers()
    for name, values in headers.getAllRawHeaders():
        if name.lower() not in skip:
            out.setRawHeaders(name, list(values))
    return out


def add_forwarding(headers: Headers, client_ip: Optional[str], proto: str) -> None:
    """Append the client to C{X-Forwarded-For}, add ourselves to C{Via}."""
    if client_ip:
        previous = b", ".join(headers.getRawHeaders(b"x-forwarded-for", []))
        ip = client_ip.encode("ascii", "replace")
        headers.setRawHeaders(b"x-forwarded-for", [previous + b", " + ip if previous else ip])
    via = headers.getRawHeaders(b"via", [])
    headers.setRawHeaders(b"via", [b", ".join(via + [VIA])])
    headers.setRawHeaders(b"x-forwarded-proto", [proto.encode("ascii")])
