"""
Every answer the node gives a client has its head made here, by one set
of rules, whichever way it goes out: the fast hit (L{cdnpull.cache.hit},
bytes kept ready with the stored entry), the direct miss
(L{cdnpull.direct}, bytes written on the connection), and the resource
(fields set on a twisted.web C{Request} by L{cdnpull.edge.deliver}, for
the L{Answer} the cache returns or the edge relays): status, reason
phrase, the fields of its head, its X-Cache status, which origin served it
and where its body comes from.

The head of an answer relayed from an origin, or served from a stored one
(L{relay_fields}):

 - B{dropped} from what the origin sent: hop-by-hop fields (RFC 9110 7.6.1:
   C{Connection}, C{Keep-Alive}, C{Proxy-*}, C{TE}, C{Trailer},
   C{Transfer-Encoding}, C{Upgrade}) and every field the origin's
   C{Connection} names; the fields the node writes itself (C{Server},
   C{X-Cache}, C{Via} -- the origin's Via is kept in ours); the targeted
   cache-control fields this node obeys (RFC 9213, C{CDN-Cache-Control} by
   default: they are for this node only);
 - B{replaced}: C{Content-Length} by the length the node sends (a HEAD
   keeps the origin's, which tells the GET's length; a 204 or 304 has
   none: RFC 9110 8.6); C{Age} by the stored
   answer's current age (a relayed answer keeps the origin's);
   C{Accept-Ranges} by C{bytes} where the node answers ranges itself;
 - B{added}: C{Server: cdnpull} and C{Date} first, C{Via} (the origin's with
   C{1.1 cdnpull} appended), C{X-Cache}, C{Age} (C{0} when the origin sent
   none: every answer says its age), C{Accept-Ranges: bytes} on a 200 of
   known length the cache answers ranges of; the C{Date} is the origin's, or
   when the origin sent none: now for a relayed answer, when it was
   received for a stored one (RFC 9110 6.6.1).

A 304 carries only the stored answer's fields RFC 9110 15.4.5 lists
(L{not_modified_fields}); a 206 or 416 the node cuts from a 200 gets its
C{Content-Range} (L{ranged}); an answer the node makes itself (an error, a
504 for C{only-if-cached}) is plain text (L{own_fields}).

Framing is added where the head is written (L{render} for the bytes, the
engine's C{writeHeaders} and twisted.web's C{Request.write} on the
resource side, which follow the same rules): C{Content-Length} when the
length is known, else C{Transfer-Encoding: chunked} to an HTTP/1.1 client,
else the body ends with the connection; a HEAD, 204 or 304 has no body;
C{Connection: close} when the connection ends after the answer.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Optional

from twisted.web.http import RESPONSES, datetimeToString

from .compat import fill_headers
from .headers import HOP_BY_HOP, VIA, connection_names, field_lines

__all__ = ["Answer", "relay_fields", "not_modified_fields", "own_fields", "ranged",
           "unsatisfiable", "render", "apply", "relay_skip", "date_now",
           "NO_BODY_CODES", "NOT_MODIFIED_HEADERS", "RELAY_SKIP", "SERVER"]

SERVER = b"cdnpull"
NO_BODY_CODES = (204, 304)
# The fields a 304 carries from the stored answer (RFC 9110 section 15.4.5).
NOT_MODIFIED_HEADERS = (b"cache-control", b"content-location", b"date", b"etag", b"expires",
                        b"vary", b"last-modified")
# What a relayed answer never carries from the origin (with the targeted
# fields: L{relay_skip}).
RELAY_SKIP = HOP_BY_HOP | frozenset((b"server", b"date", b"x-cache", b"via"))
# The validators and description a 416 does not carry from the 200 it refuses.
_NOT_SATISFIABLE_DROP = (b"content-type", b"etag", b"last-modified", b"cache-control",
                         b"expires")


def relay_skip(targeted: Iterable[bytes]) -> frozenset:
    """The names a relayed head drops (L{RELAY_SKIP}) for a cache obeying C{targeted}."""
    return RELAY_SKIP | frozenset(targeted)


_date: list = [0, b""]


def date_now() -> bytes:
    """Now, as a C{Date} value (made once a second)."""
    now = int(time.time())
    if _date[0] != now:
        _date[0] = now
        _date[1] = datetimeToString(now)
    return _date[1]


class Answer:
    """
    One answer to a client, as the cache (or the edge, for what it relays
    itself) decides it; the edge writes it (L{cdnpull.edge.deliver}).

    @ivar code: the status code.
    @ivar phrase: the reason phrase (None: the standard one).
    @ivar fields: the head's fields, lower-case name -> [values], as
        L{relay_fields} and its siblings make them (framing and C{Date}
        aside: see the module).
    @ivar cache: the X-Cache status (C{HIT}, C{MISS}, C{STALE}, C{BYPASS}).
    @ivar group: which origin group served it (C{"cache"}: the store).
    @ivar origin: the origin address that served it (C{"-"}: none).
    @ivar origin_ms: how long the origin took to answer (None: not asked).
    @ivar body: where the body comes from: None (none: a HEAD, 304, 416,
        an empty body), C{bytes} (the node's own text, not sent to a HEAD),
        an origin C{IResponse} (relayed as it comes), or a
        L{cdnpull.cache.fill.Fill} or C{StaticSource} read from byte
        C{first} to C{last} (inclusive; None: to the end).
    """

    __slots__ = ("code", "phrase", "fields", "cache", "group", "origin", "origin_ms", "body",
                 "first", "last")

    def __init__(self, code: int, phrase: Optional[bytes], fields: dict, cache: str,
                 group: str = "", origin: str = "", origin_ms: Optional[float] = None,
                 body: Any = None, first: int = 0, last: Optional[int] = None) -> None:
        self.code = code
        self.phrase = phrase
        self.fields = fields
        self.cache = cache
        self.group = group
        self.origin = origin
        self.origin_ms = origin_ms
        self.body = body
        self.first = first
        self.last = last

    @classmethod
    def pulled(cls, result: Any, code: int, phrase: Optional[bytes], fields: dict, cache: str,
               body: Any = None, first: int = 0, last: Optional[int] = None) -> "Answer":
        """An answer from the origin's C{result} (a L{cdnpull.failover.PullResult})."""
        return cls(code, phrase, fields, cache, result.group, str(result.address),
                   result.elapsed * 1000, body, first, last)

    @classmethod
    def stored(cls, code: int, phrase: Optional[bytes], fields: dict, cache: str,
               body: Any = None, first: int = 0, last: Optional[int] = None) -> "Answer":
        """An answer from the store (or the cache's own): no origin was asked."""
        return cls(code, phrase, fields, cache, "cache", "-", None, body, first, last)

    def __repr__(self) -> str:
        return f"<Answer {self.code} {self.cache} {sorted(self.fields)}>"


_X_CACHE = {s: s.encode("ascii") for s in ("HIT", "MISS", "STALE", "BYPASS")}
_NAMED: dict = {}


def _and_named(skip: frozenset, connection: list) -> frozenset:
    """C{skip} and the names a C{Connection} field lists (made once per value seen)."""
    if len(connection) != 1:
        return skip | connection_names(connection)
    key = (skip, connection[0])
    out = _NAMED.get(key)
    if out is None:
        out = skip | connection_names(connection)
        if len(_NAMED) >= 256:
            _NAMED.clear()
        _NAMED[key] = out
    return out


def relay_fields(fields: dict, skip: frozenset, cache: str, length: Optional[int] = None,
                 age: Optional[int] = None, ranges: bool = False) -> dict:
    """
    The head of an answer relayed from the origin or served from the store
    (the rules: see the module), lower-case name -> [values].

    @param fields: the origin's (or the stored) fields, the same shape; not
        changed (the result may share their value lists).
    @param skip: L{relay_skip} of the cache's targeted fields.
    @param cache: the X-Cache status.
    @param length: the C{Content-Length} the node sends (None: the
        origin's, if any, stays: a HEAD, or a body of unknown length).
    @param age: the C{Age} (None: the origin's, else 0).
    @param ranges: the node answers ranges of it (C{Accept-Ranges: bytes}).
    """
    connection = fields.get(b"connection")
    if connection:
        skip = _and_named(skip, connection)
    # Server and Date first, where twisted.web's Request puts them.
    out = {b"server": [SERVER], b"date": fields.get(b"date") or [date_now()]}
    for name, values in fields.items():
        if name not in skip:
            out[name] = values
    if length is not None:
        out[b"content-length"] = [b"%d" % length]
    via = fields.get(b"via")
    out[b"via"] = [b", ".join([*via, VIA]) if via else VIA]
    out[b"x-cache"] = [_X_CACHE.get(cache) or cache.encode("ascii")]
    if age is not None:
        out[b"age"] = [b"%d" % age]
    elif b"age" not in out:
        out[b"age"] = [b"0"]
    if ranges:
        out[b"accept-ranges"] = [b"bytes"]
    return out


def not_modified_fields(fields: dict, skip: frozenset, cache: str, age: Optional[int]) -> dict:
    """
    The head of a 304 for a stored (or just relayed) 200 with these
    C{fields}: only what RFC 9110 15.4.5 lists, plus the node's own.
    """
    connection = fields.get(b"connection")
    if connection:
        skip = _and_named(skip, connection)
    kept = {name: fields[name] for name in NOT_MODIFIED_HEADERS
            if name in fields and name not in skip}
    for name in (b"date", b"via"):  # (the node's to place; Via: ours appended)
        if name in fields:
            kept[name] = fields[name]
    return relay_fields(kept, skip, cache, None, age)


def ranged(fields: dict, first: int, last: int, size: int) -> dict:
    """The head of a 200 of C{size} bytes cut to bytes C{first}..C{last} (a 206)."""
    fields[b"content-range"] = [b"bytes %d-%d/%d" % (first, last, size)]
    fields[b"content-length"] = [b"%d" % (last - first + 1)]
    return fields


def unsatisfiable(fields: dict, size: int) -> dict:
    """The head of a 416 refusing a range of a 200 of C{size} bytes (RFC 9110 15.5.17)."""
    for name in _NOT_SATISFIABLE_DROP:
        fields.pop(name, None)
    fields[b"content-range"] = [b"bytes */%d" % size]
    fields[b"content-length"] = [b"0"]
    return fields


def own_fields(length: int, cache: str) -> dict:
    """The head of an answer the node makes itself: C{length} bytes of plain text."""
    return {b"server": [SERVER], b"date": [date_now()],
            b"content-type": [b"text/plain; charset=utf-8"],
            b"content-length": [b"%d" % length], b"x-cache": [cache.encode("ascii")],
            b"age": [b"0"]}


def render(version: bytes, code: int, phrase: Optional[bytes], fields: dict,
           chunked: bool = False, close: bool = False, end: bool = True) -> bytes:
    """
    An answer's head as written on an HTTP/1.x connection: the status line,
    C{fields}, C{Date} (now) when they carry none, the framing the caller
    chose (C{Content-Length} is among the fields when the length is known;
    C{chunked}: C{Transfer-Encoding: chunked}; C{close}: C{Connection:
    close}) and, unless not C{end}, the empty line.
    """
    out = [b"%s %d %s\r\n" % (version, code, phrase or RESPONSES.get(code, b"Unknown Status"))]
    out += field_lines(fields)
    if b"date" not in fields:
        out.append(b"Date: %s\r\n" % date_now())
    if chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    if close:
        out.append(b"Connection: close\r\n")
    if end:
        out.append(b"\r\n")
    return b"".join(out)


def apply(request: Any, code: int, phrase: Optional[bytes], fields: dict) -> None:
    """
    An answer's head set on a twisted.web C{Request} (which adds C{Date}
    and the framing when it writes it): its code and C{fields}, which
    replace what the request holds under the same names.
    """
    request.setResponseCode(code, phrase or None)
    fill_headers(request.responseHeaders, fields)
