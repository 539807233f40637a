"""
The client-facing HTTP/1.1 connection, parsed by llhttp (C{httptools}) with
its lenient flags off, for a node that faces the whole internet.

Refused with a status and the connection closed, never forwarded:

 - 400: anything llhttp refuses (a bare CR or LF, NUL or another control
   character, obsolete line folding, a header name that is not a token,
   C{Content-Length} with C{Transfer-Encoding}, a repeated or non-digit
   C{Content-Length}, a bad chunk, a bad request line), C{Transfer-Encoding}
   other than exactly C{chunked}, two C{Host} headers, an HTTP version other
   than 1.0 and 1.1 (a 400, not a 505: odd input never gets a 5xx);
 - 414: a request line over C{max_request_line};
 - 431: a header line over C{max_header_line}, all headers over
   C{max_header_bytes}, or more than C{max_headers} of them;
 - 413: a body over C{max_body} (by its C{Content-Length} at once, or as
   chunks arrive);
 - 408: request headers not complete within C{header_timeout} of the
   request's first byte (slowloris).

An idle keep-alive connection is closed after C{idle_timeout}; a client that
stops reading is cut off when nothing could be written to it for
C{send_timeout}.  Pipelined requests are answered in order, one at a time:
while one is being answered, later bytes wait unparsed (reading stops once
64 KiB wait).  A request body (methods other than GET and HEAD) is streamed
through a L{BodyPipe} while it arrives; GET and HEAD bodies are read and
dropped.

Each complete request head goes first to the factory's C{fast} hook, which
may answer it at once (a fresh stored answer: no twisted.web request is
made); otherwise a C{twisted.web.server.Request} runs on this connection,
which is its channel (one request at a time, as in HTTPChannel).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Optional

import httptools
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http import RESPONSES
from twisted.web.http_headers import Headers
from zope.interface import implementer

from ..errors import error_body
from ..upload import BodyPipe
from ..compat import eager_write, fill_headers

__all__ = ["ClientLimits", "ClientConnection", "Head", "Sweeper"]

BACKLOG_LIMIT = 64 * 1024
SHRINK_AFTER = 1.0  # seconds idle before a connection lets go of its parser


@dataclass(frozen=True)
class ClientLimits:
    max_request_line: int = 8192
    max_header_line: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    max_body: int = 1024 * 1024 * 1024
    header_timeout: float = 30.0
    idle_timeout: float = 75.0
    send_timeout: float = 60.0


class _Refused(Exception):
    """Stops the parser: the request was answered with an error."""


class Head:
    """One parsed request head (and, for GET/HEAD, its dropped body)."""

    __slots__ = ("method", "target", "version", "fields", "keep_alive", "request", "pipe",
                 "expect", "started", "count")
    method: bytes
    version: bytes
    keep_alive: bool

    def __init__(self) -> None:
        self.target = b""
        self.fields: dict = {}  # lower-case name -> [values]
        self.count = 0
        self.request: Any = None  # the twisted.web request, when made at head time
        self.pipe: Optional[BodyPipe] = None
        self.expect = False
        self.started = False


_TE_TRAILING_OWS = re.compile(rb"(?i)(\r\ntransfer-encoding:[ \t]*chunked)[ \t]+(?=\r\n)")


def _te_trailing_ows(data: bytes) -> bytes:
    """
    C{Transfer-Encoding: chunked} followed by tabs is C{chunked} (RFC 9110
    5.5: whitespace around a field value is not part of it), but llhttp
    refuses it; in the head at the start of C{data}, drop that whitespace.
    """
    end = data.find(b"\r\n\r\n")
    end = len(data) if end < 0 else end + 2  # (with the last field's CRLF)
    return _TE_TRAILING_OWS.sub(rb"\1", data[:end]) + data[end:]


class _ChunkSizes:
    """
    Follows a chunked body's framing just far enough to read each chunk's
    size (llhttp checks the framing itself and refuses what is wrong).
    """

    __slots__ = ("state", "left", "line", "seen")

    def __init__(self) -> None:
        self.state = "size"
        self.left = 0
        self.line = b""
        self.seen = 0  # sizes announced so far

    def too_large(self, data: bytes, allowed: int) -> bool:
        """Whether a size in C{data} takes the body past C{allowed} bytes."""
        i, n = 0, len(data)
        while i < n and self.state != "done":
            if self.state == "size":
                lf = data.find(b"\n", i)
                if lf < 0:
                    self.line += data[i:]
                    return len(self.line) > 1024  # (llhttp refuses such a line)
                line = (self.line + data[i:lf]).split(b";", 1)[0].strip(b"\r \t")
                self.line = b""
                i = lf + 1
                try:
                    size = int(line, 16)
                except ValueError:
                    self.state = "done"  # llhttp answers the 400
                    return False
                self.seen += size
                if self.seen > allowed:
                    return True
                if size == 0:
                    self.state = "done"  # trailers: nothing more to size
                else:
                    self.state, self.left = "data", size + 2  # the data and its CRLF
            else:
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if not self.left:
                    self.state = "size"
        return False


class _ReadGate:
    """What a L{BodyPipe} pauses: the connection's reading, for one reason."""

    __slots__ = ("conn",)

    def __init__(self, conn: "ClientConnection") -> None:
        self.conn = conn

    def pauseProducing(self) -> None:
        self.conn._pause_reading("body")

    def resumeProducing(self) -> None:
        self.conn._resume_reading("body")


class Sweeper:
    """
    Checks the header and idle deadlines of all connections of a listener
    every C{interval} seconds, instead of a timer per connection (a
    deadline fires up to one interval late).
    """

    def __init__(self, clock: Any, limits: ClientLimits, interval: Optional[float] = None) -> None:
        self.clock = clock
        self.interval = interval or min(1.0, limits.header_timeout / 4, limits.idle_timeout / 4)
        self.connections: set = set()
        self._call: Any = None

    def add(self, conn: "ClientConnection") -> None:
        self.connections.add(conn)
        if self._call is None:
            self._call = self.clock.callLater(self.interval, self._sweep)

    def discard(self, conn: "ClientConnection") -> None:
        self.connections.discard(conn)
        if not self.connections and self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _sweep(self) -> None:
        self._call = None
        now = self.clock.seconds()
        for conn in list(self.connections):
            conn._tick(now)
        if self.connections and self._call is None:
            self._call = self.clock.callLater(self.interval, self._sweep)


@implementer(IPushProducer)
class ClientConnection(Protocol):
    """
    One client connection.  C{factory} is a C{twisted.web.server.Site}
    (C{getResourceFor}, sessions) with C{limits}, C{clock}, C{requestFactory}
    and an optional C{fast(head, connection)} hook returning a complete
    answer (its head and body bytes), an answer that makes itself (an
    object with C{start}, C{connectionLost} and C{startedWriting}, which
    calls C{requestDone} when it ends: L{cdnpull.direct.DirectAnswer}), or
    None.
    """

    log = Logger()

    # Per-connection state in slots, containers made only when needed, and
    # the parser (about 1 KiB) dropped after SHRINK_AFTER idle seconds: an
    # idle keep-alive connection costs little.
    __slots__ = ("factory", "transport", "connected", "site", "limits", "clock", "persistent",
                 "_refused", "_closing", "_refusal", "_stopped", "_parser", "_head", "_queue",
                 "_active", "_backlog", "_backlog_size", "_feeding", "_pausers", "_producer",
                 "_write_paused", "_sweeper", "_send_timer", "_idle_since", "_head_since",
                 "_head_seen", "_body_seen", "_in_body", "_header_bytes", "_peer_host", "_secure",
                 "_chunks", "_data", "_fresh", "_tail", "_pending", "_host")

    def __init__(self, limits: Optional[ClientLimits] = None, clock: Any = None,
                 sweeper: Optional["Sweeper"] = None) -> None:
        self.factory: Any = None
        self.transport: Any = None
        self.connected = 0
        self.site: Any = None  # the channel interface twisted.web's Request uses
        self.limits = limits or ClientLimits()
        self.clock = clock
        self.persistent = True
        self._refused = False
        self._closing = False
        self._refusal: Optional[tuple] = None
        self._stopped = False  # nothing more is read (after an Upgrade, or a refusal)
        self._parser: Any = None
        # The head being read (None between requests).  Typed loosely: the
        # parser's callbacks only run while there is one.
        self._head: Any = None
        self._queue: Optional[deque] = None
        self._active: Any = None  # the request being answered through twisted.web
        self._backlog: Optional[list] = None
        self._backlog_size = 0
        self._feeding = False
        self._pausers: Optional[set] = None
        self._producer: Any = None
        self._write_paused = False
        self._sweeper = sweeper or Sweeper(clock, limits or ClientLimits())  # header and idle timeouts
        self._send_timer: Any = None
        self._idle_since = 0.0
        self._head_since: Optional[float] = None
        self._head_seen = 0
        self._body_seen = 0
        self._in_body = False
        self._header_bytes = 0
        self._peer_host: Optional[str] = None
        self._secure: Optional[bool] = None
        # Chunk sizes of a chunked body, read ahead of llhttp (which does not
        # tell them) so that a chunk too large for the limit is a 413 at once.
        self._chunks: Optional[_ChunkSizes] = None
        self._data = b""  # what llhttp is being fed
        self._fresh = "idle"  # where the message being read began in it
        self._tail = b""  # the end of the previous feed (a head end split across feeds)
        # A response head not sent yet: it goes out with the first body bytes
        # (one send), or when the answer ends or the connection closes.
        self._pending: Optional[bytes] = None
        self._host: Any = None  # our address (getsockname), asked once

    @property
    def peer_host(self) -> str:
        host = self._peer_host
        if host is None:
            peer = self.getPeer() if self.transport is not None else None
            host = self._peer_host = getattr(peer, "host", "-")
        return host

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        self.site = self.factory
        if self.clock is None:
            self.clock = self.factory.clock
        self.transport.registerProducer(self, True)
        self._idle_since = self.clock.seconds()
        self._sweeper.add(self)

    def connectionLost(self, reason: Any = None) -> None:
        self._closing = True
        self._cancel_timers()
        active, self._active = self._active, None
        if active is not None:
            active.connectionLost(reason)
        for head in self._queue or ():
            if head.pipe is not None:
                head.pipe.fail()
        self._queue = None
        head = self._head
        if head is not None and head.pipe is not None and not head.request.finished:
            head.pipe.fail()  # (an answered request's origin side is over already)
        self._producer = None
        self._parser = None

    # -- reading -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._refused or self._closing:
            return
        if self._active is not None and (self._head is None or self._head.request is not self._active) \
                or self._queue:
            # Answering a request: later bytes wait their turn.
            if self._backlog is None:
                self._backlog = []
            self._backlog.append(data)
            self._backlog_size += len(data)
            if self._backlog_size > BACKLOG_LIMIT:
                self._pause_reading("backlog")
            return
        self._feed(data)
        self._run()

    def _feed(self, data: bytes) -> None:
        if self._stopped:
            return
        parser = self._parser
        if parser is None:
            parser = self._parser = httptools.HttpRequestParser(self)
        if not self._in_body and b"chunked\t" in data:
            data = _te_trailing_ows(data)
        chunks = self._chunks
        if chunks is not None:
            self._check_chunks(chunks, data)
            if self._refused:
                return
        self._data = data
        self._fresh = "idle" if self._head is None else "cont"
        self._feeding = True
        try:
            parser.feed_data(data)
        except _Refused:
            pass
        except httptools.HttpParserUpgrade:
            # Nothing is upgraded here: answer what came, then close.
            self._stopped = True
        except httptools.HttpParserError as e:
            self._fail(400, f"malformed request ({e})")
        except Exception:
            self.log.failure("error parsing a request from {peer}", peer=self.peer_host)
            self._fail(500, "internal error")
        finally:
            self._feeding = False
            self._tail = (self._tail + data)[-3:] if len(data) < 3 else data[-3:]
            self._data = b""
        if self._refused or self._stopped:
            return
        if self._head is not None and not self._in_body:
            # A head is incomplete: its time and size are bounded.
            limits = self.limits
            self._head_seen += len(data)
            if self._head_seen > limits.max_request_line + limits.max_header_bytes + limits.max_header_line:
                return self._fail(431, f"headers larger than {limits.max_header_bytes} bytes")
            if self._head_since is None:
                self._head_since = self.clock.seconds()

    def _run(self) -> None:
        """Answer queued requests in order; then parse what waited."""
        while not self._refused and not self._closing:
            if self._active is not None:
                return
            if not self.persistent:
                self._close()
                return
            head = self._head
            if head is not None and head.request is not None and not head.started:
                self._start(head)  # a streamed body made to wait: its turn now
                continue
            queue = self._queue
            if queue:
                head = queue.popleft()
                if not queue:
                    # (An idle connection keeps no deque: its block of 64
                    # slots was most of an idle connection's memory.)
                    self._queue = None
                self._start(head)
                continue
            if self._stopped:
                # After an Upgrade request or a bad one behind good ones.
                if self._refusal is not None:
                    self.refuse(*self._refusal)
                else:
                    self._close()
                return
            if self._backlog:
                data = b"".join(self._backlog)
                self._backlog = None
                self._backlog_size = 0
                self._resume_reading("backlog")
                self._feed(data)
                continue
            return

    # -- llhttp callbacks --------------------------------------------------

    def on_message_begin(self) -> None:
        # Where this message began: at the start of the bytes being fed, or
        # behind another message in them.
        self._fresh = "first" if self._fresh == "idle" else "later"
        self._head = Head()
        self._header_bytes = 0
        self._body_seen = 0

    def on_url(self, url: bytes) -> None:
        head = self._head
        head.target += url
        if len(head.target) > self.limits.max_request_line:
            self._stop(414, f"request line longer than {self.limits.max_request_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self._head
        limits = self.limits
        size = len(name) + len(value) + 2
        if size > limits.max_header_line:
            self._stop(431, f"header line longer than {limits.max_header_line} bytes")
        self._header_bytes += size
        if self._header_bytes > limits.max_header_bytes:
            self._stop(431, f"headers larger than {limits.max_header_bytes} bytes")
        head.count += 1
        if head.count > limits.max_headers:
            self._stop(431, f"more than {limits.max_headers} header fields")
        # Control characters in names, values and the target: llhttp refuses them.
        lower = name.lower()
        values = head.fields.get(lower)
        if values is None:
            head.fields[lower] = [value]
        else:
            values.append(value)

    def on_headers_complete(self) -> None:
        head = self._head
        parser = self._parser
        limits = self.limits
        self._head_since = None
        self._head_seen = 0
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._stop(400, f"HTTP version {version} not supported")
        head.version = b"HTTP/" + version.encode("ascii")
        head.method = parser.get_method()
        fields = head.fields
        if len(fields.get(b"host", ())) > 1:
            self._stop(400, "more than one Host header")
        te = fields.get(b"transfer-encoding")
        if te is not None and (len(te) > 1 or te[0].strip(b" \t") != b"chunked"):
            self._stop(400, "Transfer-Encoding other than exactly 'chunked'")
        cl = fields.get(b"content-length")
        length = int(cl[0]) if cl else (None if te else 0)  # llhttp checked the digits
        if length is not None and length > limits.max_body:
            self._stop(413, f"request body larger than {limits.max_body} bytes")
        head.keep_alive = version == "1.1" and parser.should_keep_alive()
        expect = fields.get(b"expect")
        head.expect = bool(expect) and expect[0].lower() == b"100-continue" and version == "1.1"
        self._in_body = length != 0
        if length is None:
            self._watch_chunks()
        if length != 0 and head.method not in (b"GET", b"HEAD"):
            # A body to stream: the request is made now, its body follows
            # through a pipe (started at once when nothing is ahead of it).
            head.pipe = BodyPipe(_ReadGate(self), length)
            head.request = self._make_request(head)
            if self._active is None and not self._queue:
                self._start(head)

    def on_body(self, data: bytes) -> None:
        if self._closing:
            return  # answered and closing: the rest of the body is dropped
        self._body_seen += len(data)
        if self._body_seen > self.limits.max_body:
            pipe = self._head.pipe
            self._stop(413, f"request body larger than {self.limits.max_body} bytes")
            if pipe is not None:
                pipe.fail()  # after the 413: the edge then writes nothing
        pipe = self._head.pipe
        if pipe is not None:
            pipe.write(data)
        # GET and HEAD bodies are read and dropped (never forwarded).

    def on_message_complete(self) -> None:
        head, self._head = self._head, None
        self._in_body = False
        self._chunks = None
        if head.pipe is not None:
            head.pipe.finish()
            if head.started:
                return  # already dispatched
        if self._queue is None:
            self._queue = deque()
        self._queue.append(head)

    def _watch_chunks(self) -> None:
        """
        Read the chunk sizes of the body that begins after this head.  Where
        it begins in the bytes being fed: after the first CRLF CRLF when the
        message began with them (or before them); a message that began
        behind another in the same bytes is not watched (llhttp still counts
        its body as it comes).
        """
        data = self._data
        if self._fresh == "first":
            end = data.find(b"\r\n\r\n")
            start = end + 4 if end >= 0 else -1
        elif self._fresh == "cont":  # the head began in an earlier feed
            joined = self._tail + data
            end = joined.find(b"\r\n\r\n")
            start = end + 4 - len(self._tail) if end >= 0 else -1
        else:
            return
        if start < 0:
            return
        chunks = self._chunks = _ChunkSizes()
        self._check_chunks(chunks, data[start:])
        if self._refused:
            raise _Refused()

    def _check_chunks(self, chunks: "_ChunkSizes", data: bytes) -> None:
        if chunks.too_large(data, self.limits.max_body):
            self.refuse(413, f"request body larger than {self.limits.max_body} bytes")

    # -- answering -------------------------------------------------------------

    def _start(self, head: Head) -> None:
        head.started = True
        if not head.keep_alive:
            self.persistent = False
        if head.request is None:
            fast = getattr(self.site, "fast", None)
            if fast is not None:
                answer = fast(head, self)
                if answer is not None:
                    if type(answer) is tuple:
                        eager_write(self.transport, *answer)
                        self._idle_since = self.clock.seconds()
                        return
                    # An answer the hook makes on its own (cdnpull.direct): this
                    # connection's active request until it calls requestDone.
                    self._active = answer
                    answer.start()
                    return
            head.request = self._make_request(head)
        request = self._active = head.request
        if head.expect and head.pipe is not None and not head.pipe.done:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.requestReceived(head.method, head.target, head.version)

    def _make_request(self, head: Head) -> Any:
        request = self.site.requestFactory(self, queued=False)
        request.body_pipe = head.pipe
        fill_headers(request.requestHeaders, head.fields)
        request.content = BytesIO()
        if not head.keep_alive:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        return request

    # -- the channel a twisted.web Request runs on ----------------------------

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        # Every twisted.web Request asks (a getsockname call each time).
        host = self._host
        if host is None:
            host = self._host = self.transport.getHost()
        return host

    def isSecure(self) -> bool:
        if self._secure is None:
            self._secure = ISSLTransport(self.transport, None) is not None
        return self._secure

    def write(self, data: bytes) -> None:
        head = self._pending
        if head is not None:
            self._pending = None
            eager_write(self.transport, head, data)
        else:
            eager_write(self.transport, data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def send_interim(self, status: int, reason: bytes, fields: list) -> None:
        """An interim (1xx) answer, before the final one (RFC 9110 15.2)."""
        lines = [b"HTTP/1.1 %d %s" % (status, reason)] + [name + b": " + value for name, value in fields]
        eager_write(self.transport, b"\r\n".join(lines) + b"\r\n\r\n")

    def send_head(self, data: bytes) -> None:
        """A response head, sent with the first body bytes (or at the end)."""
        self._flush()
        self._pending = data

    def _flush(self) -> None:
        head = self._pending
        if head is not None:
            self._pending = None
            eager_write(self.transport, head)

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        head = self._head
        if head is not None and head.request is not None and head.request is self._active:
            # Answered before its body was complete: this connection ends.
            self.persistent = False
        if not self.persistent and not headers.hasHeader(b"connection"):
            headers.setRawHeaders(b"connection", [b"close"])
        out = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                out.extend((name, b": ", value, b"\r\n"))
        out.append(b"\r\n")
        self._flush()
        self._pending = b"".join(out)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        if self._write_paused:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None

    def requestDone(self, request: Any) -> None:
        self._flush()
        if request is not self._active:
            return
        self._active = None
        self._idle_since = self.clock.seconds()
        pipe = getattr(request, "body_pipe", None)
        if pipe is not None and not pipe.done:
            # Answered before the body was complete: the rest of it cannot
            # be told from a next request, so this connection ends here.
            self.persistent = False
        if not self._feeding:
            self._run()
        elif not self.persistent:
            self._close()

    def loseConnection(self) -> None:
        self._close()

    def finish_and_close(self) -> None:
        """Close now when idle, else after the answer in progress (shutdown)."""
        self.persistent = False
        if self._active is None and not self._queue and self._head is None:
            self._close()

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.refuse(400, "malformed request")

    # -- refusing and closing ----------------------------------------------------

    def _stop(self, status: int, why: str) -> None:
        self._fail(status, why)
        raise _Refused()

    def _fail(self, status: int, why: str) -> None:
        """
        The request being read is refused: at once, or, when good requests
        are ahead of it, after they are answered (nothing more is read).
        """
        head = self._head
        current = head.request if head is not None else None
        if self._queue or (self._active is not None and self._active is not current):
            self._refusal = (status, why)
            self._stopped = True
            self._pause_reading("refused")
            return
        self.refuse(status, why)

    def refuse(self, status: int, why: str) -> None:
        """Answer C{status} with a short text, log it, and close the connection."""
        if self._refused:
            return
        self._refused = True
        head = self._head
        if head is not None and head.pipe is not None:
            head.pipe.fail()  # a body that will never be complete
        self.log.info("refused a request from {peer}: {status} {why}", peer=self.peer_host,
                      status=status, why=why)
        if self._active is None or not self._active.startedWriting:
            body = error_body(status, why)
            phrase = RESPONSES.get(status, b"Error")
            self.transport.write(
                b"HTTP/1.1 %d %s\r\nServer: cdnpull\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, phrase, len(body), body))
        self._close()

    def _close(self) -> None:
        if self._closing:
            return
        self._flush()
        self._closing = True
        self._cancel_timers()
        self._backlog = None
        # TLS waits for the producer to go before it shuts down.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _abort(self) -> None:
        if self.transport is not None and self.transport.connected:
            self.transport.abortConnection()

    # -- timeouts: the head and idle deadlines, checked by the sweeper ------------

    def _tick(self, now: float) -> None:
        if self._closing:
            return
        limits = self.limits
        if self._head_since is not None:
            if now - self._head_since >= limits.header_timeout:
                self.refuse(408, f"request headers not received within {limits.header_timeout:g} s")
                # A client this slow may not read either: do not wait for it.
                self.clock.callLater(1.0, self._abort)
            return
        if self._active is not None or self._queue or self._head is not None:
            return  # busy answering, or reading a body
        idle = now - self._idle_since
        if idle >= limits.idle_timeout:
            self._close()
        elif idle >= SHRINK_AFTER and self._parser is not None and not self._backlog:
            self._parser = None  # made again by the next request

    def _cancel_timers(self) -> None:
        self._sweeper.discard(self)
        if self._send_timer is not None:
            if self._send_timer.active():
                self._send_timer.cancel()
            self._send_timer = None

    # -- flow control -----------------------------------------------------------------

    def _pause_reading(self, why: str) -> None:
        if self._closing:
            return
        if not self._pausers and self.transport is not None:
            self.transport.pauseProducing()
        if self._pausers is None:
            self._pausers = set()
        self._pausers.add(why)

    def _resume_reading(self, why: str) -> None:
        if self._pausers and why in self._pausers:
            self._pausers.discard(why)
            if not self._pausers and not self._closing:
                self.transport.resumeProducing()

    # IPushProducer, registered on the transport: the client stopped (or
    # resumed) reading what we write.
    def pauseProducing(self) -> None:
        self._write_paused = True
        if self._producer is not None:
            self._producer.pauseProducing()
        if self._send_timer is None and not self._closing:
            self._send_timer = self.clock.callLater(self.limits.send_timeout, self._send_timeout)

    def resumeProducing(self) -> None:
        self._write_paused = False
        if self._send_timer is not None:
            if self._send_timer.active():
                self._send_timer.cancel()
            self._send_timer = None
        if self._producer is not None:
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        if self._producer is not None:
            self._producer.stopProducing()

    def _send_timeout(self) -> None:
        self._send_timer = None
        self.log.info("cut off {peer}: it read nothing for {t:g} s", peer=self.peer_host,
                      t=self.limits.send_timeout)
        self._abort()
