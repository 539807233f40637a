"""
Strict reading of origin responses.  Twisted's HTTP client is lenient (bare
LF line ends, folded headers, any header size); a CDN node must not be, or a
broken or hostile origin can make one answer look like another.

Every response head is checked before Twisted's parser sees it:

 - a status line C{HTTP/1.0|1.1 NNN reason} and CRLF line ends, no bare CR
   or LF, no obsolete line folding, header names that are tokens, no control
   characters in values;
 - C{Content-Length} digits only, at most 2^63-1, repeated only with the
   same value;
   C{Transfer-Encoding} only C{chunked}, never together with
   C{Content-Length};
 - the whole head within a size limit.

Interim (1xx) heads are checked the same way; Twisted's parser drops them,
so they are handed from here to the C{on_interim} callback that came with the
request's headers (L{InterimHeaders}), without their hop-by-hop headers.

The final head's C{Connection} list is read here too: Twisted's parser keeps
C{Connection} out of the response headers, so this is the only place that
knows which headers the origin meant for this hop only.  Those are removed
from the response before anyone sees it (never stored, never forwarded).

A head that fails is refused: the connection is aborted (never returned to
the pool) and the request fails with the reason, which the failover chain
turns into a 502 (or the next address).  Bytes after a complete response
also end the connection, so nothing an origin sends can leak into the next
response on a pooled connection.
"""

from __future__ import annotations

import re
from typing import Callable, Optional, cast

from twisted.internet.interfaces import ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from ..compat import HookedClientProtocol
from ..headers import CONTROL_CHAR, FIELD_NAME, HOP_BY_HOP, connection_names

__all__ = ["InvalidOriginResponse", "StrictClientProtocol", "check_head", "connection_named",
           "InterimHeaders", "interim_answer", "MAX_HEAD"]

MAX_HEAD = 64 * 1024
# The largest Content-Length believed (what a signed 64-bit offset holds).
MAX_LENGTH = 2 ** 63 - 1
MAX_HEADERS = 200

_STATUS = re.compile(rb"HTTP/1\.[01] [1-5][0-9]{2}(?: [\t\x20-\x7e\x80-\xff]*)?")


class InvalidOriginResponse(Exception):
    """An origin's response was refused; the message says why."""


def check_head(head: bytes, max_headers: int = MAX_HEADERS) -> Optional[str]:
    """
    Why a response head (status line to the empty line, CRLFs included) is
    invalid, or None.
    """
    lines = head[:-4].split(b"\r\n") if head.endswith(b"\r\n\r\n") else None
    if lines is None:
        return "response head does not end with CRLF CRLF"
    if not _STATUS.fullmatch(lines[0]):
        return f"invalid status line {lines[0][:80]!r}"
    if len(lines) - 1 > max_headers:
        return f"more than {max_headers} header fields"
    lengths: list[bytes] = []
    encodings: list[bytes] = []
    for line in lines[1:]:
        if b"\r" in line or b"\n" in line:
            return "bare CR or LF in the response head"
        if line[:1] in (b" ", b"\t"):
            return "obsolete line folding in the response head"
        name, sep, value = line.partition(b":")
        if not sep or not FIELD_NAME.fullmatch(name):
            return f"invalid header line {line[:80]!r}"
        if CONTROL_CHAR.search(value):
            return f"control character in the {name.decode('latin-1')} header"
        lname = name.lower()
        if lname == b"content-length":
            lengths += [v.strip(b" \t") for v in value.split(b",")]
        elif lname == b"transfer-encoding":
            encodings.append(value.strip(b" \t"))
    if lengths:
        if not all(v.isdigit() for v in lengths):
            return f"invalid Content-Length {b','.join(lengths)[:40]!r}"
        if any(len(v) > 19 or int(v) > MAX_LENGTH for v in lengths):
            return f"Content-Length too large {b','.join(lengths)[:40]!r}"
        if len({int(v) for v in lengths}) > 1:
            return f"contradictory Content-Length {b','.join(lengths)[:40]!r}"
    if encodings:
        if len(encodings) > 1 or encodings[0].lower() != b"chunked":
            return f"unsupported Transfer-Encoding {b','.join(encodings)[:40]!r}"
        if lengths:
            return "both Transfer-Encoding and Content-Length"
    return None


def connection_named(head: bytes) -> frozenset:
    """The lower-case header names listed in a (checked) head's C{Connection} fields."""
    values = []
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.lower() == b"connection":
            values.append(value)
    return connection_names(values)


class InterimHeaders(Headers):
    """Request headers that carry where the origin's interim answers go."""

    def __init__(self, raw: Optional[dict] = None,
                 on_interim: Optional[Callable[[int, bytes, list], None]] = None) -> None:
        # (Headers.copy() calls the class with the raw headers only.)
        super().__init__(raw)
        self.on_interim = on_interim


def interim_answer(head: bytes) -> tuple[int, bytes, list]:
    """(status, reason, [(name, value)]) of a checked 1xx head, hop-by-hop headers left out."""
    lines = head[:-4].split(b"\r\n")
    status, _, reason = lines[0][9:].partition(b" ")
    skip = HOP_BY_HOP | connection_named(head)
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.lower() not in skip:
            fields.append((name, value.strip(b" \t")))
    return int(status), reason, fields


def _drop_named(response, names: frozenset):
    for name in names:
        response.headers.removeHeader(name)
    return response


def _abort(transport: Optional[object]) -> None:
    if transport is not None:
        cast(ITCPTransport, transport).abortConnection()


class StrictClientProtocol(HookedClientProtocol):
    """Twisted's HTTP/1.1 client protocol, refusing invalid response heads."""

    log = Logger()
    max_head = MAX_HEAD
    _reading_head = False

    _between = False
    # Per request: the final head's Connection list, where interim heads go.
    _connection_named: frozenset = frozenset()
    _on_interim: Optional[Callable[[int, bytes, list], None]] = None

    def request(self, request):
        self._head = bytearray()
        self._reading_head = True
        self._between = False
        self._connection_named = frozenset()
        self._on_interim = getattr(request.headers, "on_interim", None)
        d = super().request(request)
        # Runs before the Agent's callbacks: nobody sees the hop-by-hop headers.
        d.addCallback(lambda response: _drop_named(response, self._connection_named))
        return d

    def dataReceived(self, data: bytes) -> None:
        if not self.awaiting_response or self._between:
            # Bytes while no request is outstanding: never reuse this connection.
            self.log.warn("origin sent {n} bytes between responses; connection dropped",
                          n=len(data))
            _abort(self.transport)
            return
        if not self._reading_head:
            super().dataReceived(data)
            return
        self._head += data
        head = self._head
        end = head.find(b"\r\n\r\n")
        scan = head if end < 0 else head[:end + 4]
        bare = scan.replace(b"\r\n", b"")
        if b"\n" in bare or b"\r" in bare[:-1]:
            self._refuse("bare CR or LF in the response head")
            return
        if end < 0:
            if len(head) > self.max_head:
                self._refuse(f"response head larger than {self.max_head} bytes")
            return
        if end + 4 > self.max_head:
            self._refuse(f"response head larger than {self.max_head} bytes")
            return
        first, rest = bytes(head[:end + 4]), bytes(head[end + 4:])
        why = check_head(first)
        if why is not None:
            self._refuse(why)
            return
        self._head = bytearray()
        if first[9:10] == b"1":
            # An interim (1xx) answer: the final head follows and is checked too.
            if self._on_interim is not None and first[9:12] != b"101":
                try:
                    self._on_interim(*interim_answer(first))
                except Exception:  # noqa: BLE001 - the final answer still counts
                    self.log.failure("passing on an interim answer")
            super().dataReceived(first)
            if rest:
                self.dataReceived(rest)
            return
        self._reading_head = False
        self._connection_named = connection_named(first)
        super().dataReceived(first + rest)

    def _refuse(self, why: str) -> None:
        self.log.warn("refused an origin response: {why}", why=why)
        self._reading_head = False
        transport = self.transport
        self.give_up(Failure(InvalidOriginResponse(why)))
        _abort(transport)

    def response_finishing(self) -> None:
        self._between = True

    def response_finished(self, rest: bytes) -> None:
        if rest and self.transport is not None:
            # More bytes than the response framing said: the connection is
            # not trusted with another request.
            self.log.warn("origin sent {n} bytes after a complete response; connection dropped",
                          n=len(rest))
            _abort(self.transport)
