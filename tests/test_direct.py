"""
Uncacheable misses answered by the connection (cdnpull/direct.py), in
memory: the client connection on a StringTransport, a fake clock, the real
Edge and cache, a scripted failover chain.  Each answer is compared with
what the ordinary way (a twisted.web Request through Edge.render) answers
for the same origin answer: the fast way must not be a second dialect.
"""

from __future__ import annotations

from typing import Any, Optional

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from cdnpull.accesslog import AccessLog
from cdnpull.cache import Cache, MemoryStore, Store
from cdnpull.config import CacheRule, Domain, IPOrigin
from cdnpull.edge import ClientLimits, Edge, EdgeSite
from cdnpull.errors import OriginTimeout, OriginUnavailable
from cdnpull.failover import OriginRequest, PullResult
from cdnpull.live import Routes, build_table
from cdnpull.metrics import Metrics

from .test_edge import head_of

HOST = "www.test.com"


class Transport:
    """An origin body's transport: records what the relay asks of it."""

    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        self.stopped = True


class Response:
    """An origin answer whose body the test delivers when it likes."""

    def __init__(self, code: int, chunks: tuple = (), headers: Optional[dict] = None,
                 length: Any = None, phrase: bytes = b"OK") -> None:
        self.code, self.phrase = code, phrase
        self.headers = Headers({k: v if isinstance(v, list) else [v]
                                for k, v in (headers or {}).items()})
        self.chunks = list(chunks)
        self.length = sum(map(len, chunks)) if length is None else length
        self.transport = Transport()
        self.protocol: Any = None
        self.hold = False  # deliver nothing until told

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        if not self.hold:
            self.finish()

    def finish(self, reason: Any = None) -> None:
        for chunk in self.chunks:
            self.protocol.dataReceived(chunk)
        self.protocol.connectionLost(reason or Failure(ResponseDone()))


class Failover:
    """
    Answers each pull with a fresh answer from C{make} (or an error), in the
    next turn of C{clock}, as an origin would.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pulls: list[OriginRequest] = []
        self.make: Any = None
        self.pending: Optional[Deferred] = None
        self.cancelled = 0
        self.last: Any = None

    def pull(self, live: Any, req: OriginRequest) -> Deferred:
        self.pulls.append(req)
        if self.make is None:  # held: the test fires it (or the client leaves)
            def cancel(d: Deferred) -> None:
                self.cancelled += 1
            self.pending = Deferred(cancel)
            return self.pending
        made = self.make()
        d: Deferred = Deferred()
        if isinstance(made, Exception):
            self.clock.callLater(0, d.errback, made)
        else:
            self.last = made
            self.clock.callLater(0, d.callback, PullResult(made, "primary", "127.0.0.2:80", 0.01))  # type: ignore[arg-type]
        return d


class Node:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        table = build_table([
            Domain(HOST, IPOrigin(("127.0.0.2",)), probe=None,
                   cache=(CacheRule(prefix="/bypass/", ttl=0),)),
            Domain("tls.test", IPOrigin(("127.0.0.3",), scheme="https"), probe=None,
                   cache=(CacheRule(prefix="/bypass/", ttl=0),)),
        ], self.clock)
        self.metrics = Metrics(lambda: table, self.clock)
        self.failover = Failover(self.clock)
        self.cache = Cache(Store(MemoryStore(1024 * 1024)), self.failover, self.clock,
                           1024 * 1024, 0.0)
        self.log = AccessLog(None)
        self.lines: list = []
        self.log.write_line = self.lines.append  # type: ignore[method-assign]
        self.log._file = object()  # type: ignore[assignment]  # lines, not events
        edge = Edge(Routes(table), self.cache, self.failover, self.clock, self.log, self.metrics)
        self.site = EdgeSite(edge, limits=ClientLimits(), reactor=self.clock)
        self.requests = 0
        make = self.site.requestFactory

        def counted(*a: Any, **kw: Any) -> Any:
            self.requests += 1
            return make(*a, **kw)

        self.site.requestFactory = counted

    def connect(self) -> tuple[Any, StringTransport]:
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 40000))
        proto.makeConnection(transport)
        return proto, transport

    def send(self, data: bytes, ordinary: bool = False) -> bytes:
        fast = self.site.fast
        if ordinary:
            self.site.fast = None
        try:
            proto, transport = self.connect()
            proto.dataReceived(data)
            self.clock.advance(0)
            out = transport.value()
            proto.connectionLost(Failure(Exception("done")))
        finally:
            self.site.fast = fast
        return out


def fields_without_date(raw: bytes) -> tuple[int, dict, bytes]:
    code, fields, body = head_of(raw)
    fields.pop(b"date", None)
    return code, fields, body


GET = b"GET /bypass/a?q=1 HTTP/1.1\r\nHost: www.test.com\r\n\r\n"

ANSWERS = [
    pytest.param(lambda: Response(200, (b"hello",), {
        b"server": b"apache", b"x-kept": b"1", b"keep-alive": b"timeout=5", b"via": b"1.0 up",
        b"connection": b"x-secret", b"x-secret": b"s", b"cdn-cache-control": b"max-age=9",
        b"x-cache": b"HIT from upstream", b"date": b"Mon, 30 Nov 2026 00:00:00 GMT",
        b"content-type": b"text/plain", b"etag": b'"e"', b"set-cookie": [b"a=1", b"b=2"]}),
        id="headers"),
    pytest.param(lambda: Response(404, (b"nope",), {b"age": b"30"}, phrase=b"Not Found"),
                 id="404-with-age"),
    pytest.param(lambda: Response(200, (b"ab", b"cd"), length=UNKNOWN_LENGTH), id="chunked"),
    pytest.param(lambda: Response(204, ()), id="204"),
    pytest.param(lambda: Response(200, ()), id="empty"),
]


@pytest.mark.parametrize("make", ANSWERS)
def test_a_bypass_answer_is_the_ordinary_answer_without_a_request(make: Any) -> None:
    node = Node()
    node.failover.make = make
    ordinary = node.send(GET, ordinary=True)
    assert node.requests == 1
    direct = node.send(GET)
    assert node.requests == 1, "the direct way made a twisted.web Request"
    assert fields_without_date(direct) == fields_without_date(ordinary)
    code, fields, body = head_of(direct)
    assert fields[b"server"] == [b"cdnpull"] and fields[b"x-cache"] == [b"BYPASS"]
    assert len(fields[b"date"]) == 1
    # Both ways sent the origin the same request.
    first, second = node.failover.pulls
    assert (second.method, second.target, second.host) == (first.method, first.target, first.host)
    assert list(second.request_headers().getAllRawHeaders()) == list(first.request_headers().getAllRawHeaders())


def test_relayed_headers() -> None:
    node = Node()
    node.failover.make = ANSWERS[0].values[0]
    code, fields, body = head_of(node.send(GET))
    assert (code, body) == (200, b"hello")
    assert fields[b"via"] == [b"1.0 up, 1.1 cdnpull"]
    assert fields[b"x-kept"] == [b"1"] and fields[b"set-cookie"] == [b"a=1", b"b=2"]
    for gone in (b"keep-alive", b"x-secret", b"cdn-cache-control", b"connection"):
        assert gone not in fields
    assert fields[b"date"] == [b"Mon, 30 Nov 2026 00:00:00 GMT"]  # the origin's stays
    assert fields[b"age"] == [b"0"] and fields[b"content-length"] == [b"5"]
    [pulled] = node.failover.pulls
    assert pulled.request_headers().getRawHeaders(b"x-forwarded-for") == [b"127.0.0.9"]
    assert pulled.request_headers().getRawHeaders(b"host") is None  # the origin's kind sets it
    assert node.lines and "cache=BYPASS group=primary origin=127.0.0.2:80" in node.lines[0]
    assert node.metrics._requests == {(HOST, 2, "BYPASS"): 1}


@pytest.mark.parametrize("error, status", [
    (OriginUnavailable("no origin could be reached: 127.0.0.2:80: connect refused"), 502),
    (OriginTimeout("origin timed out"), 504),
])
def test_failures_are_answered_as_the_ordinary_way_does(error: Exception, status: int) -> None:
    node = Node()
    node.failover.make = lambda: error
    ordinary = node.send(GET, ordinary=True)
    direct = node.send(GET)
    assert node.requests == 1
    assert fields_without_date(direct) == fields_without_date(ordinary)
    code, fields, body = head_of(direct)
    assert code == status and b"127.0.0.2" not in body


def test_an_http_10_client_gets_a_body_of_unknown_length_until_the_close() -> None:
    node = Node()
    node.failover.make = lambda: Response(200, (b"ab", b"cd"), length=UNKNOWN_LENGTH)
    proto, transport = node.connect()
    proto.dataReceived(b"GET /bypass/a HTTP/1.0\r\nHost: www.test.com\r\n\r\n")
    node.clock.advance(0)
    code, fields, body = head_of(transport.value())
    assert (code, body) == (200, b"abcd")
    assert b"transfer-encoding" not in fields and fields[b"connection"] == [b"close"]
    assert transport.disconnecting


def test_a_hit_for_miss_key_is_relayed_and_its_mark_renewed_or_lifted() -> None:
    node = Node()
    private = {b"cache-control": b"private, max-age=60"}
    node.failover.make = lambda: Response(200, (b"mine",), private)
    req = b"GET /p HTTP/1.1\r\nHost: www.test.com\r\n\r\n"
    key = "http://www.test.com/p"
    node.send(req)  # a miss the cache handles: the answer is private, the key marked
    assert node.requests == 1 and node.cache.unshared.why(key) == "private"
    ordinary = node.send(req, ordinary=True)
    node.clock.advance(100)  # (the mark is renewed by each answer: 120 s from now)
    direct = node.send(req)
    assert node.requests == 2
    assert fields_without_date(direct) == fields_without_date(ordinary)
    code, fields, body = head_of(direct)
    assert (code, body, fields[b"x-cache"], fields[b"accept-ranges"]) == (200, b"mine", [b"MISS"], [b"bytes"])
    node.clock.advance(100)
    assert node.cache.unshared.why(key) == "private"  # renewed by the direct answer
    # The object turns storable: the mark goes, the next request stores it.
    node.failover.make = lambda: Response(200, (b"ours",), {b"cache-control": b"max-age=60"})
    node.send(req)
    assert node.requests == 2 and node.cache.unshared.why(key) is None
    node.send(req)
    assert node.requests == 3
    code, fields, body = head_of(node.send(req))
    assert (body, fields[b"x-cache"]) == (b"ours", [b"HIT"])
    assert len(node.failover.pulls) == 5  # (the hit asked nothing)


def test_a_head_of_nothing_stored_is_relayed() -> None:
    node = Node()
    node.failover.make = lambda: Response(200, (), {b"content-length": b"1234"}, length=0)
    req = b"HEAD /h HTTP/1.1\r\nHost: www.test.com\r\n\r\n"
    ordinary = node.send(req, ordinary=True)
    direct = node.send(req)
    assert node.requests == 1
    assert fields_without_date(direct) == fields_without_date(ordinary)
    code, fields, body = head_of(direct)
    assert (code, body, fields[b"content-length"], fields[b"x-cache"]) == (200, b"", [b"1234"], [b"MISS"])


@pytest.mark.parametrize("request_bytes", [
    # Something is to be answered by the cache, or may be stored: the ordinary way.
    b"GET /bypass/a HTTP/1.1\r\nHost: www.test.com\r\nRange: bytes=0-1\r\n\r\n",
    b"GET /bypass/a HTTP/1.1\r\nHost: www.test.com\r\nIf-None-Match: \"e\"\r\n\r\n",
    b"GET /bypass/a HTTP/1.1\r\nHost: www.test.com\r\nCache-Control: only-if-cached\r\n\r\n",
    b"GET /cacheable HTTP/1.1\r\nHost: www.test.com\r\n\r\n",
    b"GET /bypass/a HTTP/1.1\r\nHost: tls.test\r\n\r\n",  # an https origin: through Agent
    b"POST /bypass/a HTTP/1.1\r\nHost: www.test.com\r\nContent-Length: 0\r\n\r\n",
])
def test_what_goes_the_ordinary_way(request_bytes: bytes) -> None:
    node = Node()
    node.failover.make = lambda: Response(200, (b"x",))
    node.send(request_bytes)
    assert node.requests == 1


def test_a_client_that_leaves_before_the_answer_cancels_the_pull_and_is_a_499() -> None:
    node = Node()
    proto, transport = node.connect()
    proto.dataReceived(GET)
    assert node.failover.pending is not None and node.requests == 0
    proto.connectionLost(Failure(Exception("gone")))
    assert node.failover.cancelled == 1
    assert transport.value() == b""
    assert '" 499 0 ' in node.lines[0]


def held(node: Node, length: int, sent: bytes = GET) -> tuple[Response, Any, StringTransport]:
    """A request answered with a head whose body the test delivers."""
    response = Response(200, (), length=length)
    response.hold = True
    node.failover.make = lambda: response
    proto, transport = node.connect()
    proto.dataReceived(sent)
    node.clock.advance(0)
    return response, proto, transport


def test_a_client_that_leaves_mid_body_stops_the_origin() -> None:
    node = Node()
    response, proto, transport = held(node, 100)
    response.protocol.dataReceived(b"x" * 10)
    assert transport.value().endswith(b"\r\n\r\n" + b"x" * 10)
    proto.connectionLost(Failure(Exception("gone")))
    assert response.transport.stopped
    response.protocol.connectionLost(Failure(ResponseFailed([Failure(Exception("stopped"))])))
    assert len(node.lines) == 1 and '" 200 10 ' in node.lines[0]


def test_a_slow_client_pauses_the_origin() -> None:
    node = Node()
    response, proto, transport = held(node, 4)
    proto.pauseProducing()  # the client's socket buffer is full
    assert response.transport.paused == 1
    proto.resumeProducing()
    assert response.transport.resumed == 1
    response.protocol.dataReceived(b"abcd")
    response.protocol.connectionLost(Failure(ResponseDone()))
    code, fields, body = head_of(transport.value())
    assert (code, body) == (200, b"abcd") and not transport.disconnecting


def test_a_body_the_origin_cuts_short_closes_the_client_connection() -> None:
    node = Node()
    response, proto, transport = held(node, 100, GET + GET)  # (the second is never answered)
    response.protocol.dataReceived(b"x" * 10)
    response.protocol.connectionLost(Failure(ResponseFailed([Failure(Exception("lost"))])))
    assert transport.disconnecting
    assert transport.value().count(b"HTTP/1.1 200") == 1


def test_pipelined_requests_are_answered_in_order() -> None:
    node = Node()
    bodies = iter([b"one", b"two", b"three"])
    node.failover.make = lambda: Response(200, (next(bodies),))
    proto, transport = node.connect()
    proto.dataReceived(GET + b"GET /bypass/b HTTP/1.1\r\nHost: www.test.com\r\n\r\n"
                       + b"HEAD /nothing HTTP/1.1\r\nHost: www.test.com\r\n\r\n")
    node.clock.advance(0)
    out = transport.value()
    assert out.count(b"HTTP/1.1 200 OK") == 3
    assert out.index(b"one") < out.index(b"two")
    assert [p.target for p in node.failover.pulls] == [b"/bypass/a?q=1", b"/bypass/b", b"/nothing"]
    assert node.requests == 0 and not transport.disconnecting


def test_an_interim_answer_goes_before_the_final_one() -> None:
    node = Node()
    proto, transport = node.connect()
    proto.dataReceived(GET)
    [pulled] = node.failover.pulls
    assert pulled.on_interim is not None
    pulled.on_interim(103, b"Early Hints", [(b"link", b"</a.css>; rel=preload")])
    response = Response(200, (b"done",))
    node.failover.pending.callback(PullResult(response, "primary", "127.0.0.2:80", 0.01))  # type: ignore[arg-type, union-attr]
    out = transport.value()
    assert out.startswith(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK")
    assert out.endswith(b"done")


def test_a_reader_that_comes_after_an_unstored_body_went_by_ends_instead_of_spinning() -> None:
    # A pull that fires before its leader waits (no origin does: a scripted
    # one can) used to leave the leader's reader reading dropped bytes forever.
    node = Node()
    failover = node.failover
    failover.clock = Clock()  # its answers fire at once, inside the pull
    failover.clock.callLater = lambda _, f, *a: f(*a)  # type: ignore[method-assign, assignment]
    failover.make = lambda: Response(200, (b"mine",), {b"cache-control": b"private"})
    failures: list = []

    def observe(event: dict) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        proto, transport = node.connect()
        proto.dataReceived(b"GET /p HTTP/1.1\r\nHost: www.test.com\r\n\r\n")
    finally:
        globalLogPublisher.removeObserver(observe)
    # (Without the guard, only pytest-timeout's alarm ends the loop, as an
    # unexpected error.)
    assert failures == []
    assert transport.disconnecting


def test_a_draining_site_closes_idle_connections_now_and_busy_ones_after_their_answer() -> None:
    node = Node()
    idle_proto, idle = node.connect()
    response, proto, transport = held(node, 4)
    assert node.site.drain() == 1  # the idle one is closed, the busy one answers first
    assert idle.disconnecting and not transport.disconnecting
    idle_proto.connectionLost(Failure(Exception("closed")))
    response.protocol.dataReceived(b"abcd")
    response.protocol.connectionLost(Failure(ResponseDone()))
    assert transport.disconnecting and transport.value().endswith(b"\r\n\r\nabcd")
    proto.connectionLost(Failure(Exception("closed")))
    assert node.site.drain() == 0


@pytest.mark.parametrize("code", [204, 304])
def test_a_relayed_204_or_304_has_no_content_length(code: int) -> None:
    # RFC 9110 8.6: no Content-Length in a 204; in a 304 only the length the
    # 200 would have had (a "0" makes a client's cache think its stored body
    # is empty).  The origin client gives these answers length 0 (no body).
    node = Node()
    node.failover.make = lambda: Response(code, (), {b"etag": b'"e"'}, phrase=b"X")
    request = GET.replace(b"\r\n\r\n", b"\r\nIf-None-Match: \"e\"\r\n\r\n")
    for ordinary in (True, False):
        got, fields, body = head_of(node.send(request, ordinary=ordinary))
        assert got == code and body == b""
        assert b"content-length" not in fields, ("ordinary" if ordinary else "direct", fields)
