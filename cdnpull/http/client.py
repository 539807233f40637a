"""
The origin side of the HTTP/1.1 engine, on llhttp (C{httptools}) like the
client side: plain-HTTP requests to one origin address over pooled
persistent connections, response heads read strictly, bodies delivered with
back-pressure (the L{IResponse} shape twisted.web's Agent gives, so the
failover chain, the cache and the relay read it the same way).

Refused (the request fails with L{NoResponse}, the connection is aborted,
never pooled): what llhttp refuses (a bad status line, bare CR or LF,
folded or NUL-carrying headers, an invalid or repeated C{Content-Length},
C{Content-Length} with C{Transfer-Encoding}, a bad chunk), a
C{Transfer-Encoding} other than exactly C{chunked}, a C{Content-Length}
over 2^63-1, a head over 64 KiB or with more than 200 fields (a chunked
body's trailer section counts with its head), an HTTP
version other than 1.0 and 1.1.  Interim (1xx) answers go to the request's
C{on_interim} callback (not 101), without their hop-by-hop headers;
headers the final answer names in C{Connection} are removed from it.  Bytes
after a complete response, or while no request is outstanding, drop the
connection.  A response to HEAD ends at its head and its connection is not
reused (llhttp cannot be told the request was HEAD).  A GET or HEAD on a
reused connection that is lost before any byte of an answer (the origin
closed it while idle) is sent once more on a new connection.

The caller (L{cdnpull.fetch.OriginClient}) keeps the first-byte timeout
(it cancels the Deferred) and turns connect failures into
L{cdnpull.errors.ConnectFailed}.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import httptools
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from ..errors import ClientBodyInterrupted, NoResponse
from ..headers import HOP_BY_HOP, connection_names
from ..upload import BodyInterrupted
from ..compat import eager_write, fill_headers

__all__ = ["OriginPool", "OriginResponse", "header_lines", "MAX_HEAD", "MAX_HEADERS"]

MAX_HEAD = 64 * 1024
MAX_LENGTH = 2 ** 63 - 1  # the largest Content-Length believed
MAX_HEADERS = 200
BODY_METHODS_WITH_LENGTH = (b"POST", b"PUT")
# Sent once more on a new connection when a reused one is lost before any answer.
RETRY_METHODS = (b"GET", b"HEAD")
CONNECTION_CONTROL = frozenset((b"content-length", b"connection", b"keep-alive", b"te", b"trailers",
                                b"transfer-encoding", b"upgrade", b"proxy-connection"))


# How every complete body ends (one Failure: making one per response costs
# more than the rest of its ending).
RESPONSE_DONE = Failure(ResponseDone())
_NO_NAMES: frozenset = frozenset()


class _Stop(Exception):
    """Stops llhttp: the response was refused, or a HEAD answer is complete."""


class OriginResponse:
    """
    An origin's answer whose body is read as it is delivered.  Its headers
    are kept as parsed (L{field_map}); the Twisted C{Headers} that
    C{IResponse} promises is made when first asked for.
    """

    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(self, conn: "OriginConnection", code: int, phrase: bytes, fields: dict,
                 length: Any) -> None:
        self._conn = conn
        self.code = code
        self.phrase = phrase
        self._fields: Optional[dict] = fields
        self._headers: Optional[Headers] = None
        self.length = length

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            headers = self._headers = Headers()
            fill_headers(headers, self._fields or {})
            self._fields = None  # from now on the Headers are the answer's
        return headers

    @headers.setter
    def headers(self, value: Headers) -> None:
        self._headers = value
        self._fields = None

    def field_map(self) -> dict:
        """The headers, lower-case name -> [values] (do not change them)."""
        fields = self._fields
        if fields is None:
            fields = {name.lower(): values for name, values in self.headers.getAllRawHeaders()}
        return fields

    def deliverBody(self, protocol: Any) -> None:
        self._conn._deliver(protocol)

    def setPreviousResponse(self, response: Any) -> None:
        self.previousResponse = response


class _BodyTransport:
    """
    What a body protocol controls: the origin connection's reading, while
    its body lasts (once it ended, the connection may serve another request:
    pausing it then would leave that one unread).
    """

    def __init__(self, conn: "OriginConnection") -> None:
        self._conn = conn
        self.ended = False

    def pauseProducing(self) -> None:
        conn = self._conn
        if not self.ended and conn.transport is not None:
            conn._paused = True
            conn.transport.pauseProducing()

    def resumeProducing(self) -> None:
        conn = self._conn
        if not self.ended and conn.transport is not None:
            conn._paused = False
            conn.transport.resumeProducing()

    def stopProducing(self) -> None:
        self._conn._stop_body()

    loseConnection = stopProducing


class OriginConnection(Protocol):
    """One connection to an origin address; one request at a time."""

    # A TCP transport (or a test's fake): typed loosely, as Twisted's own
    # Protocol.transport is only ITransport.
    transport: Any

    log = Logger()

    def __init__(self, pool: "OriginPool", key: Any, address: Any) -> None:
        self.pool = pool
        self.key = key
        self.address = address
        self.state = "idle"  # idle | head | body | done | dead
        self._parser: Any = None
        self._d: Optional[Deferred] = None
        self._method = b""
        self._headers: list = []
        self._head_seen = 0
        self._phrase = b""
        self._response: Optional[OriginResponse] = None
        self._protocol: Any = None
        self._buffer: list = []
        self._ended: Optional[Failure] = None
        self._framed = True
        self._reusable = True
        self._body_producer: Any = None
        self._body_transport: Optional[_BodyTransport] = None
        self._idle_since = 0.0  # when it went back to the pool
        self._on_interim: Any = None
        self._heard = False  # a byte of an answer to the current request came
        self._paused = False  # its body's reader paused its reading
        self._fed = 0  # the length of the bytes being parsed
        # A GET or HEAD sent on a reused connection: (endpoint, attempt,
        # target, headers), to send it once more if the connection is lost
        # before any answer (L{OriginPool.request}).
        self._retry: Any = None
        # Its Deferred went to a new connection: how to cancel that one.
        self._moved: Any = None

    # -- sending -------------------------------------------------------------

    def send(self, method: bytes, target: bytes, lines: bytes, body: Any,
             on_interim: Optional[Callable[[int, bytes, list], None]] = None,
             retry: Any = None) -> Deferred:
        self.state = "head"
        self._retry = retry
        self._moved = None
        self._on_interim = on_interim
        self._method = method
        self._headers = []
        self._head_seen = 0
        self._phrase = b""
        self._response = None
        self._protocol = None
        self._buffer = []
        self._ended = None
        self._framed = True
        self._reusable = True
        self._heard = False
        if self._parser is None:
            # (Kept from the last response on this connection otherwise: llhttp
            # is ready for the next message after a complete one.)
            self._parser = httptools.HttpResponseParser(self)
        d: Deferred[Any] = Deferred(self._cancel)
        self._d = d
        length = None if body is None else body.length
        if body is None:
            framing = b"Content-Length: 0\r\n\r\n" if method in BODY_METHODS_WITH_LENGTH else b"\r\n"
        elif length is UNKNOWN_LENGTH:
            framing = b"Transfer-Encoding: chunked\r\n\r\n"
        else:
            framing = b"Content-Length: %d\r\n\r\n" % length  # type: ignore[str-format]
        eager_write(self.transport, b"%s %s HTTP/1.1\r\n%s%s" % (method, target, lines, framing))
        if body is not None:
            self._produce(body, length is UNKNOWN_LENGTH)
        return d

    def _produce(self, body: Any, chunked: bool) -> None:
        self._body_producer = body
        consumer = _ChunkedConsumer(self.transport) if chunked else self.transport
        self.transport.registerProducer(body, True)

        def done(_: Any) -> None:
            if self._body_producer is body:
                self._body_producer = None
                self.transport.unregisterProducer()
                if chunked:
                    self.transport.write(b"0\r\n\r\n")

        def failed(f: Failure) -> None:
            if self._body_producer is body:
                self._body_producer = None
                self.transport.unregisterProducer()
            self._reusable = False
            if self.state == "head":
                self._fail(Failure(ClientBodyInterrupted()) if f.check(BodyInterrupted)
                           else Failure(NoResponse(self.address, f"request body failed: {f.getErrorMessage()}")))
            self._abort()

        try:
            d = body.startProducing(consumer)
        except Exception:
            failed(Failure())
            return
        d.addCallbacks(done, failed)

    def _stop_sending(self) -> None:
        body, self._body_producer = self._body_producer, None
        if body is not None:
            self._reusable = False
            self.transport.unregisterProducer()
            body.stopProducing()

    # -- reading ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state in ("idle", "done"):
            self.log.warn("origin sent {n} bytes between responses; connection dropped", n=len(data))
            self._abort()
            return
        if self.state == "dead":
            return
        self._heard = True
        self._fed = len(data)
        try:
            self._parser.feed_data(data)
        except _Stop:
            pass
        except httptools.HttpParserUpgrade:
            self._refuse("an upgrade the node did not ask for")
        except httptools.HttpParserError as e:
            self._reusable = False  # (llhttp stays in its error state: never pooled)
            if self.state == "head":
                self._refuse(str(e))
            else:
                self._end(Failure(ResponseFailed([Failure(ValueError(f"bad body: {e}"))])))
                self._abort()
        if self.state == "head":
            # A head not complete yet is bounded by its bytes (its fields are
            # measured once it is complete); the slack is for the status line.
            self._head_seen += len(data)
            if self._head_seen > MAX_HEAD + 4096:
                self._refuse(f"response head larger than {MAX_HEAD} bytes")
        elif self.state == "done":
            self._release()

    def on_message_begin(self) -> None:
        if self.state == "done":
            self.log.warn("origin sent bytes after a complete response; connection dropped")
            self._reusable = False
            self.state = "dead"
            self._abort()
            raise _Stop()

    def on_status(self, status: bytes) -> None:
        self._phrase += status

    def on_header(self, name: bytes, value: bytes) -> None:
        # (Counted and measured once the head is complete; a head that never
        # completes is bounded by what dataReceived has seen.)
        self._headers.append((name, value))
        if self.state != "head":
            self._trailer(len(name) + len(value) + 4)

    def _trailer(self, size: int) -> None:
        """
        A field of a chunked body's trailer section (llhttp reports those
        here too, after the head): bounded as a head is, with it.
        """
        self._head_seen += size
        if len(self._headers) > MAX_HEADERS or self._head_seen > MAX_HEAD:
            self.log.warn("refused an origin response: trailer section over {n} fields "
                          "or {size} bytes", n=MAX_HEADERS, size=MAX_HEAD)
            self._reusable = False
            self.state = "dead"
            self._end(Failure(ResponseFailed([Failure(ValueError("trailer section too large"))])))
            self._abort()
            raise _Stop()

    def on_headers_complete(self) -> None:
        parser = self._parser
        code = parser.get_status_code()
        if parser.get_http_version() not in ("1.0", "1.1"):
            self._refuse(f"HTTP version {parser.get_http_version()}")
            raise _Stop()
        headers = self._headers
        if len(headers) > MAX_HEADERS:
            self._refuse(f"more than {MAX_HEADERS} header fields")
            raise _Stop()
        # Its fields are measured only when the bytes it came in could hold
        # more than MAX_HEAD (a head is never larger than those).
        if self._head_seen + self._fed > MAX_HEAD and \
                sum([len(n) + len(v) + 4 for n, v in headers]) > MAX_HEAD:
            self._refuse(f"response head larger than {MAX_HEAD} bytes")
            raise _Stop()
        fields: dict = {}
        for name, value in headers:
            lower = name.lower()
            values = fields.get(lower)
            if values is None:
                fields[lower] = [value]
            else:
                values.append(value)
        # Headers the origin names in Connection are for this hop only.
        connection = fields.get(b"connection")
        named = connection_names(connection) if connection else _NO_NAMES
        if 100 <= code < 200:
            # An interim answer: passed on (not 101), the final head follows.
            if self._on_interim is not None and code != 101:
                skip = HOP_BY_HOP | named
                try:
                    self._on_interim(code, self._phrase.strip(b" "),
                                     [(n, v) for n, v in self._headers if n.lower() not in skip])
                except Exception:  # noqa: BLE001 - the final answer still counts
                    self.log.failure("passing on an interim answer")
            self._headers = []
            self._phrase = b""
            return
        te = fields.get(b"transfer-encoding")
        if te is not None and (len(te) > 1 or te[0].strip(b" \t").lower() != b"chunked"):
            self._refuse(f"unsupported Transfer-Encoding {b','.join(te)[:40]!r}")
            raise _Stop()
        cl = fields.get(b"content-length")
        if cl and (len(cl[0]) > 19 or int(cl[0]) > MAX_LENGTH):
            self._refuse(f"Content-Length too large {cl[0][:40]!r}")
            raise _Stop()
        # As Agent: the connection's own headers are not the answer's (nor
        # those the origin named in Connection).
        own = fields
        for name in CONNECTION_CONTROL.intersection(fields):
            del own[name]
        for name in named:
            own.pop(name, None)
        if self._method == b"HEAD" and cl and b"content-length" not in named:
            # As Agent: a HEAD answer's Content-Length describes the GET's
            # body and is passed on to the client.
            own[b"content-length"] = [cl[0]]
        if self._method == b"HEAD" or code in (204, 304):
            length: Any = 0
        elif cl:
            length = int(cl[0])
        elif te is not None:
            length = UNKNOWN_LENGTH
        else:
            length = UNKNOWN_LENGTH
            self._framed = False  # read until the origin closes
            self._reusable = False
        if not parser.should_keep_alive():
            self._reusable = False
        self.state = "body"
        self._response = OriginResponse(self, code, self._phrase.strip(b" "), own, length)
        d, self._d = self._d, None
        if self._method == b"HEAD":
            # llhttp would wait for the body the head announces.
            self._reusable = False
            self.state = "done"
            self._end(RESPONSE_DONE)
            if d is not None:
                d.callback(self._response)
            raise _Stop()
        if d is not None:
            d.callback(self._response)

    def on_body(self, data: bytes) -> None:
        if self._protocol is not None:
            self._protocol.dataReceived(data)
        else:
            self._buffer.append(data)

    def on_message_complete(self) -> None:
        if self.state != "body":
            return  # an interim answer's end
        if self._body_producer is not None:
            self._stop_sending()  # answered before the request body ended
        self.state = "done"
        self._end(RESPONSE_DONE)

    # -- the body's consumer -----------------------------------------------------

    def _deliver(self, protocol: Any) -> None:
        self._protocol = protocol
        self._body_transport = _BodyTransport(self)
        if self._ended is not None:
            self._body_transport.ended = True  # read to its end already (buffered)
        protocol.makeConnection(self._body_transport)
        buffered, self._buffer = self._buffer, []
        for data in buffered:
            if self._protocol is None:
                return
            protocol.dataReceived(data)
        if self._ended is not None and self._protocol is protocol:
            self._protocol = None
            protocol.connectionLost(self._ended)

    def _end(self, reason: Failure) -> None:
        if self._ended is not None:
            return
        self._ended = reason
        if self._body_transport is not None:
            self._body_transport.ended = True
        protocol = self._protocol
        if protocol is not None:
            self._protocol = None
            protocol.connectionLost(reason)

    def _stop_body(self) -> None:
        """The body's reader wants no more: this connection is not reused."""
        if self.state == "body":
            self._reusable = False
            self._end(Failure(ResponseFailed([Failure(CancelledError())])))
            self._abort()

    # -- endings ------------------------------------------------------------------

    def _refuse(self, why: str) -> None:
        self.log.warn("refused an origin response: {why}", why=why)
        self._fail(Failure(NoResponse(self.address, f"invalid response: {why}")))
        self._abort()

    def _fail(self, failure: Failure) -> None:
        self._reusable = False
        self.state = "dead"
        d, self._d = self._d, None
        if d is not None:
            d.errback(failure)

    def _cancel(self, d: Deferred) -> None:
        moved, self._moved = self._moved, None
        if moved is not None:
            moved(d)  # sent once more: that try is the one cancelled
            return
        self._d = None
        self._reusable = False
        self.state = "dead"
        self._stop_sending()
        self._abort()
        d.errback(Failure(CancelledError()))

    def _release(self) -> None:
        if self._reusable and self._body_producer is None and self.transport is not None:
            self.state = "idle"
            self._body_transport = None
            if self._paused:
                # Its body's reader paused it (a slow client) in the read
                # that ended the body: the next request must be read.
                self._paused = False
                self.transport.resumeProducing()
            self.pool._put(self)
        else:
            self.state = "dead"
            self._abort()

    def _abort(self) -> None:
        if self.transport is not None and self.transport.connected:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        state, self.state = self.state, "dead"
        self.pool._lost(self)
        if state == "head" and self._d is not None:
            retry = self._retry
            if retry is not None and not self._heard and not self.pool._closed:
                # Closed by the origin as it was reused: the same request
                # (and the same Deferred) goes once more on a new connection.
                self._reusable = False
                d, self._d = self._d, None
                self._moved = self.pool._resend(d, self, retry)
            else:
                self._fail(Failure(NoResponse(self.address, "connection lost before a response")))
        elif state == "body" and self._ended is None:
            if not self._framed and reason is not None and reason.check(ierror.ConnectionDone):
                self._end(Failure(PotentialDataLoss()))
            else:
                self._end(Failure(ResponseFailed([reason])))
        body, self._body_producer = self._body_producer, None
        if body is not None:
            body.stopProducing()


def header_lines(headers: Headers) -> bytes:
    """C{headers} as they go on the wire, one line each."""
    return b"".join([b"%s: %s\r\n" % (name, value)
                     for name, values in headers.getAllRawHeaders() for value in values])


class _ChunkedConsumer:
    """Frames a body of unknown length in chunks on its way out."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        if data:
            self.transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()


class _ConnectFactory(Factory):
    noisy = False

    def __init__(self, pool: "OriginPool", key: Any, address: Any) -> None:
        self.pool, self.key, self.address = pool, key, address

    def buildProtocol(self, addr: Any) -> OriginConnection:
        return OriginConnection(self.pool, self.key, self.address)


class OriginPool:
    """
    Idle connections per origin address (at most C{max_per_origin} kept,
    each closed after C{idle_timeout} unused).
    """

    def __init__(self, reactor: Any, max_per_origin: int = 64, idle_timeout: float = 60.0) -> None:
        self.reactor = reactor
        self.max = max_per_origin
        self.idle_timeout = idle_timeout
        self._idle: dict = {}  # (host, port) -> idle connections, oldest first
        self._all: set = set()
        self._sweep_call: Any = None
        self._closed = False  # shut down: no new connection for a second try

    def request(self, endpoint: Any, address: Any, method: bytes, target: bytes,
                headers: Union[Headers, bytes], body: Any, attempt: Any,
                on_interim: Optional[Callable[[int, bytes, list], None]] = None) -> Deferred:
        """
        Send a request (C{headers}: with Host; a C{Headers}, or its header
        lines) on an idle connection to C{address}, else on a new one.
        """
        if not isinstance(headers, bytes):
            headers = header_lines(headers)
        key = (address.host, address.port)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not idle:
                del self._idle[key]
                if not self._idle:
                    self._stop_sweeping()
            if conn.transport is not None and conn.transport.connected and conn.state == "idle":
                attempt.connecting = attempt.connected = True
                retry = ((endpoint, attempt, target, headers)
                         if body is None and method in RETRY_METHODS else None)
                return conn.send(method, target, headers, body, on_interim, retry)
        return self._connect(endpoint, key, address, method, target, headers, body, attempt,
                             on_interim)[0]

    def _resend(self, d: Deferred, conn: OriginConnection, retry: Any) -> Callable[[Deferred], None]:
        """
        A GET or HEAD sent on a reused connection C{conn} was lost before any
        byte of an answer.  An origin closes its idle keep-alive connections
        (a reload, its keep-alive timeout) whenever it likes, and one it
        closes just as it is reused takes the request with it: that request
        goes once more, on a new connection, as nginx and Twisted's own pool
        do, rather than failing the address (a 502 with a single origin).
        C{d} (the request's Deferred) fires with that try's outcome; the
        returned canceller cancels that try.
        """
        endpoint, attempt, target, headers = retry
        attempt.connected = False
        return self._connect(endpoint, conn.key, conn.address, conn._method, target, headers, None,
                             attempt, conn._on_interim, d)[1]

    def _connect(self, endpoint: Any, key: Any, address: Any, method: bytes, target: bytes,
                 headers: bytes, body: Any, attempt: Any, on_interim: Any,
                 result: Optional[Deferred] = None) -> tuple:
        """
        Send on a new connection: (the request's Deferred, its canceller).
        C{result} is that Deferred when it exists already (a second try).
        """
        attempt.connecting = True
        sent: list = []
        connecting: Any = None

        def cancel(_: Deferred) -> None:
            if sent:
                sent[0].cancel()
            else:
                connecting.cancel()

        if result is None:
            result = Deferred(cancel)

        def connected(conn: OriginConnection) -> None:
            attempt.connected = True
            self._all.add(conn)
            if result.called:  # cancelled meanwhile
                conn.transport.loseConnection()
                return
            sent.append(conn.send(method, target, headers, body, on_interim))
            sent[0].chainDeferred(result)

        def failed(f: Failure) -> None:
            if not result.called:
                result.errback(f)

        connecting = endpoint.connect(_ConnectFactory(self, key, address))
        connecting.addCallbacks(connected, failed)
        return result, cancel

    # Idle connections are closed after idle_timeout by one timer per pool
    # (set for the oldest), not one per connection: a connection is taken
    # from the pool and put back once per request.

    def _put(self, conn: OriginConnection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max:
            conn.state = "dead"
            conn.transport.loseConnection()
            return
        conn._idle_since = self.reactor.seconds()
        idle.append(conn)
        if self._sweep_call is None:
            self._sweep_call = self.reactor.callLater(self.idle_timeout, self._sweep)

    def _sweep(self) -> None:
        self._sweep_call = None
        now = self.reactor.seconds()
        oldest = None
        for key, idle in list(self._idle.items()):
            # Oldest first: each list grows at its end.
            while idle and now - idle[0]._idle_since >= self.idle_timeout:
                conn = idle.pop(0)
                conn.state = "dead"
                if conn.transport is not None:
                    conn.transport.loseConnection()
            if not idle:
                del self._idle[key]
            elif oldest is None or idle[0]._idle_since < oldest:
                oldest = idle[0]._idle_since
        if oldest is not None:
            self._sweep_call = self.reactor.callLater(oldest + self.idle_timeout - now, self._sweep)

    def _stop_sweeping(self) -> None:
        call, self._sweep_call = self._sweep_call, None
        if call is not None and call.active():
            call.cancel()

    def _lost(self, conn: OriginConnection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.key]
                if not self._idle:
                    self._stop_sweeping()

    def close(self) -> Deferred:
        self._closed = True
        self._stop_sweeping()
        self._idle.clear()
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.abortConnection()
        self._all.clear()
        return succeed(None)
