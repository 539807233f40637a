"""
Header rules at the proxy boundary: hop-by-hop headers (RFC 9110 section
7.6.1, and every header named in C{Connection}) never cross it, in either
direction; C{X-Forwarded-For} and C{Via} are added on the way to the origin.

A client may not steer the origin through headers the cache does not key
on: the forwarding headers an origin trusts (C{Forwarded},
C{X-Forwarded-Host}, ...) and the URL and method overrides some frameworks
obey (C{X-Original-URL}, C{X-HTTP-Method-Override}, ...) are dropped
(L{STEERING}); the node sets C{X-Forwarded-Proto} and C{X-Real-IP} itself.
A domain's C{forward_headers} lets named ones through, and the edge then
puts their values in the cache key.

A client header whose name holds anything but letters, digits and C{-}
never reaches the origin either (nginx's defaults: C{ignore_invalid_headers
on}, C{underscores_in_headers off}).  CGI, WSGI, PHP and most frameworks read
C{X_Forwarded_Host} and C{X-Forwarded-Host} as the same variable
(C{HTTP_X_FORWARDED_HOST}), so a name the node compared as written would
steer the origin under another spelling.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

from twisted.web.http_headers import Headers

from .compat import fill_headers
from .config import STEERING_HEADERS

__all__ = ["HOP_BY_HOP", "STEERING", "connection_names", "connection_tokens", "end_to_end",
           "origin_fields", "origin_headers", "forwarded_key", "wire_name", "field_lines", "VIA", "FIELD_NAME", "CONTROL_CHAR"]

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

# The header names a client may send on to an origin (see the module docstring).
_CLEAN_NAME = re.compile(rb"[A-Za-z0-9-]+")

# Client-sent headers that would let one client change what the origin
# answers (for everyone, once cached) without being part of the cache key.
STEERING = frozenset(n.encode("ascii") for n in STEERING_HEADERS)

VIA = b"1.1 cdnpull"
# What never goes from the client to the origin as it came: framing is the
# node's to set (bodies are re-framed), Host is the origin's.
_REQUEST_DROP = frozenset((b"host", b"content-length", b"expect")) | STEERING


_CAPS = {b"etag": b"ETag", b"te": b"TE", b"www-authenticate": b"WWW-Authenticate",
         b"content-md5": b"Content-MD5", b"dnt": b"DNT", b"p3p": b"P3P",
         b"x-xss-protection": b"X-XSS-Protection"}


def wire_name(name: bytes) -> bytes:
    """
    A lower-case header name as twisted.web writes it (C{content-type} ->
    C{Content-Type}); L{field_lines} keeps the names it has seen.
    """
    return _CAPS.get(name) or b"-".join(part[:1].upper() + part[1:] for part in name.split(b"-"))


_LINE_STARTS: dict = {}  # lower-case name -> b"Name: " (the names seen, a few thousand at most)


def field_lines(fields: dict) -> list:
    """
    C{fields} (lower-case name -> [values]) as they go on the wire, in
    pieces to join: C{b"Name: "}, the value and CRLF for each value, names
    written as twisted.web writes them (L{wire_name}).
    """
    out: list = []
    add = out.append
    starts = _LINE_STARTS
    for name, values in fields.items():
        start = starts.get(name)
        if start is None:
            start = wire_name(name) + b": "
            if len(starts) < 4096:
                starts[name] = start
        for value in values:
            add(start)
            add(value)
            add(b"\r\n")
    return out


def connection_names(values: Iterable[bytes]) -> frozenset:
    """
    The lower-cased header names listed in raw C{Connection} field values
    (the one parse of the list for client requests, origin heads and
    interim answers alike; OWS is SP and HTAB, RFC 9110 section 5.6.1).
    """
    if not values:
        return _NO_NAMES
    names = frozenset(t.strip(b" \t").lower() for v in values for t in v.split(b","))
    return names - {b""}


_NO_NAMES: frozenset = frozenset()


def connection_tokens(headers: Headers) -> frozenset:
    """The lower-cased header names listed in C{headers}' C{Connection}."""
    return connection_names(headers.getRawHeaders(b"connection", ()))


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


def origin_fields(fields: dict, client_ip: Optional[str], proto: str,
                  kept: frozenset = frozenset()) -> dict:
    """
    The headers of the origin request (lower-case name -> [values]) for a
    client's C{fields} (the same shape): no hop-by-hop header, none named in
    C{Connection}, no framing, Host or steering header (unless in C{kept}, a
    domain's C{forward_headers}), no name but letters, digits and C{-}; then
    the forwarding headers (L{add_forwarding}).
    """
    drop = _REQUEST_DROP - kept if kept else _REQUEST_DROP
    skip = HOP_BY_HOP | connection_names(fields.get(b"connection", ()))
    clean = _CLEAN_NAME.fullmatch
    out = {name: list(values) for name, values in fields.items()
           if name not in skip and name not in drop and clean(name)}
    # X_Forwarded_Host is X-Forwarded-Host to a WSGI origin: dropped above.
    if client_ip:
        previous = b", ".join(out.get(b"x-forwarded-for", ()))
        ip = client_ip.encode("ascii", "replace")
        out[b"x-forwarded-for"] = [previous + b", " + ip if previous else ip]
        if not (b"x-real-ip" in kept and b"x-real-ip" in out):
            out[b"x-real-ip"] = [ip]
    out[b"via"] = [b", ".join(out.get(b"via", []) + [VIA])]
    if not (b"x-forwarded-proto" in kept and b"x-forwarded-proto" in out):
        out[b"x-forwarded-proto"] = [proto.encode("ascii")]
    return out


def origin_headers(client: Headers, client_ip: Optional[str], proto: str,
                   forward: Iterable[str] = ()) -> tuple[Headers, str]:
    """
    The headers of the origin request for a client's headers (see
    L{origin_fields}), and the suffix its cache key gets for the
    C{forward}ed (a domain's C{forward_headers}) steering headers it carries.
    """
    kept = frozenset(h.encode("ascii") for h in forward)
    fields = origin_fields({name.lower(): values for name, values in client.getAllRawHeaders()},
                           client_ip, proto, kept)
    headers = Headers()
    fill_headers(headers, fields)
    return headers, forwarded_key(fields, kept) if kept else ""


def forwarded_key(fields: dict, kept: Iterable[bytes]) -> str:
    """
    The values of the C{kept} steering headers a request carries, as a
    suffix of its cache key ("" when it carries none): two requests that
    may get different answers never share a cache entry.
    """
    parts = []
    for name in sorted(kept):
        values = fields.get(name)
        if values:
            parts.append(name.decode("ascii") + "=" + b", ".join(values).decode("latin-1"))
    return "".join("\n" + p for p in parts)
