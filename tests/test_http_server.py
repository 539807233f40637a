"""
The client-side HTTP/1.1 engine (cdnpull/http/server.py) in memory: a
StringTransport for the socket, a Clock for time, a twisted.web Site with a
recording resource for what goes the ordinary way, and a fast hook.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from cdnpull.edge import EdgeRequest
from cdnpull.http import ClientConnection, ClientLimits
from cdnpull.upload import BUFFER_LIMIT

H = b"Host: www.test.com\r\n"

LIMITS = ClientLimits(max_request_line=2048, max_header_line=1024, max_header_bytes=4096,
                      max_headers=20, max_body=1024 * 1024, header_timeout=1.0,
                      idle_timeout=2.0, send_timeout=2.0)


class Recorder(Resource):
    """Answers C{ok PATH} at once, or keeps the request open when C{hold}."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list = []
        self.hold = False

    def render(self, request: Any) -> Any:
        self.seen.append(request)
        if self.hold:
            return NOT_DONE_YET
        body = b"ok " + request.uri
        request.setHeader(b"content-length", b"%d" % len(body))
        return body


def connect(fast: Optional[Any] = None, limits: ClientLimits = LIMITS):  # type: ignore[no-untyped-def]
    clock = Clock()
    resource = Recorder()
    site = Site(resource)
    site.requestFactory = EdgeRequest
    site.fast = fast  # type: ignore[attr-defined]
    conn = ClientConnection(limits, clock)
    conn.factory = site
    transport = StringTransport()
    conn.makeConnection(transport)
    return conn, transport, clock, resource


def advance(clock: Clock, seconds: float) -> None:
    """Move time in small steps (the sweeper re-arms itself as time passes)."""
    clock.pump([0.05] * round(seconds / 0.05))


def answers(transport: StringTransport) -> list[bytes]:
    return re.findall(rb"HTTP/1\.[01] (\d{3}) ", transport.value())


# -- good heads ----------------------------------------------------------------------

GOOD = [
    ("get", b"GET /a HTTP/1.1\r\n" + H + b"\r\n", b"/a"),
    ("query", b"GET /a?b=c HTTP/1.1\r\n" + H + b"\r\n", b"/a?b=c"),
    ("absolute-form", b"GET http://www.test.com/a HTTP/1.1\r\n\r\n", b"http://www.test.com/a"),
    ("tab-in-value", b"GET /a HTTP/1.1\r\n" + H + b"X-A: a\tb\r\n\r\n", b"/a"),
    ("obs-text-value", b"GET /a HTTP/1.1\r\n" + H + b"X-A: caf\xe9\r\n\r\n", b"/a"),
    ("get-with-body", b"GET /a HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc", b"/a"),
    ("http10", b"GET /a HTTP/1.0\r\n" + H + b"\r\n", b"/a"),
]


@pytest.mark.parametrize("name,data,uri", GOOD, ids=[g[0] for g in GOOD])
def test_good_heads_reach_the_resource(name, data, uri):  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    conn.dataReceived(data)
    assert [r.uri for r in resource.seen] == [uri]
    assert answers(transport) == [b"200"]
    assert transport.value().endswith(b"ok " + uri)
    # HTTP/1.0 ends the connection; 1.1 keeps it.
    assert transport.disconnecting == (name == "http10")


def test_headers_reach_the_request_as_sent():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    conn.dataReceived(b"GET /a HTTP/1.1\r\n" + H + b"X-A: 1\r\nX-A: 2\r\nUser-Agent: t\r\n\r\n")
    request = resource.seen[0]
    assert request.requestHeaders.getRawHeaders(b"x-a") == [b"1", b"2"]
    assert request.getHeader(b"host") == b"www.test.com"
    assert request.method == b"GET" and request.clientproto == b"HTTP/1.1"


# -- bad heads: refused, closed, never reach the resource ----------------------------

SMUGGLE = b"GET /smuggled HTTP/1.1\r\n" + H + b"\r\n"
BAD = [
    ("cl+te", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLE, b"400"),
    ("two-cl", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nContent-Length: 40\r\n\r\nabcd" + SMUGGLE, b"400"),
    ("cl-sign", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: +4\r\n\r\nabcd" + SMUGGLE, b"400"),
    ("te-case", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: Chunked\r\n\r\n0\r\n\r\n" + SMUGGLE, b"400"),
    ("te-gzip", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + SMUGGLE, b"400"),
    ("te-twice", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLE, b"400"),
    ("chunk-hex", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x4\r\nabcd\r\n0\r\n\r\n" + SMUGGLE, b"400"),
    ("two-host", b"GET /a HTTP/1.1\r\n" + H + H + b"\r\n", b"400"),
    ("nul", b"GET /a HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", b"400"),
    ("obs-fold", b"GET /a HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", b"400"),
    ("bare-lf", b"GET /a HTTP/1.1\n" + H + b"\r\n", b"400"),
    ("bare-cr", b"GET /a HTTP/1.1\r\nX-A: a\rb\r\n" + H + b"\r\n", b"400"),
    ("no-colon", b"GET /a HTTP/1.1\r\n" + H + b"Garbage\r\n\r\n", b"400"),
    ("space-before-colon", b"GET /a HTTP/1.1\r\n" + H + b"X-A : b\r\n\r\n", b"400"),
    ("ctl-in-target", b"GET /a\x01 HTTP/1.1\r\n" + H + b"\r\n", b"400"),
    ("version", b"GET /a HTTP/1.2\r\n" + H + b"\r\n", b"400"),
    ("version-2", b"GET /a HTTP/2.0\r\n" + H + b"\r\n", b"400"),
    ("request-line", b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n" + H + b"\r\n", b"414"),
    ("request-line-unterminated", b"GET /" + b"a" * 9000, b"414"),
    ("header-line", b"GET /a HTTP/1.1\r\n" + H + b"X-Big: " + b"b" * 2000 + b"\r\n\r\n", b"431"),
    ("header-line-unterminated", b"GET /a HTTP/1.1\r\n" + H + b"X-Big: " + b"b" * 9000, b"431"),
    ("all-headers", b"GET /a HTTP/1.1\r\n" + H + b"".join(b"X-%d: %s\r\n" % (i, b"c" * 900) for i in range(6)) + b"\r\n", b"431"),
    ("header-count", b"GET /a HTTP/1.1\r\n" + H + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) + b"\r\n", b"431"),
    ("body-by-length", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 2147483648\r\n\r\n", b"413"),
]


@pytest.mark.parametrize("name,data,status", BAD, ids=[b[0] for b in BAD])
def test_bad_heads_are_refused_and_the_connection_closed(name, data, status):  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    resource.hold = True  # a body streamed to it would not be answered yet
    conn.dataReceived(data)
    got = answers(transport)
    assert got == [status]
    assert b"Server: cdnpull" in transport.value()
    assert transport.disconnecting
    # A request whose body is streamed starts at its head; its body then fails.
    assert all(r.body_pipe is not None and r.body_pipe.failure is not None for r in resource.seen)
    conn.dataReceived(SMUGGLE)  # nothing more is read
    assert len(answers(transport)) == 1


def test_a_byte_at_a_time_is_refused_the_same():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    for b in b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n":
        conn.dataReceived(bytes([b]))
    assert answers(transport) == [b"400"] and transport.disconnecting


def test_a_chunked_body_over_the_limit_is_413_mid_body():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    resource.hold = True
    conn.dataReceived(b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n")
    assert len(resource.seen) == 1  # streamed: dispatched at its head
    for _ in range(20):
        conn.dataReceived(b"10000\r\n" + b"d" * 0x10000 + b"\r\n")
    assert answers(transport) == [b"413"] and transport.disconnecting


# -- bodies ------------------------------------------------------------------------------


def test_a_body_streams_through_the_pipe_with_back_pressure():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    resource.hold = True
    conn.dataReceived(b"PUT /up HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % (BUFFER_LIMIT * 2))
    request = resource.seen[0]
    pipe = request.body_pipe
    assert pipe is not None and transport.producerState == "producing"
    conn.dataReceived(b"x" * (BUFFER_LIMIT + 1))
    assert transport.producerState == "paused"  # nobody takes the body yet

    class Sink:
        data = b""

        def write(self, data: bytes) -> None:
            self.data += data

    sink = Sink()
    done = pipe.startProducing(sink)
    assert transport.producerState == "producing"
    conn.dataReceived(b"y" * (BUFFER_LIMIT - 1))
    assert len(sink.data) == BUFFER_LIMIT * 2 and done.called
    request.setHeader(b"content-length", b"2")
    request.write(b"ok")
    request.finish()
    assert answers(transport) == [b"200"] and not transport.disconnecting


def test_an_answer_before_the_body_ends_closes_the_connection():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    resource.hold = True
    conn.dataReceived(b"PUT /up HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\nabc")
    request = resource.seen[0]
    request.setResponseCode(403)
    request.setHeader(b"content-length", b"0")
    request.finish()
    assert answers(transport) == [b"403"] and transport.disconnecting
    assert b"Connection: close" in transport.value()


def test_expect_100_continue():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    resource.hold = True
    conn.dataReceived(b"PUT /up HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_a_client_that_leaves_mid_body_fails_the_pipe():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    resource.hold = True
    conn.dataReceived(b"PUT /up HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\nabc")
    pipe = resource.seen[0].body_pipe
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure
    conn.connectionLost(Failure(ConnectionLost()))
    assert pipe.failure is not None


# -- keep-alive and pipelining ----------------------------------------------------------


def test_keep_alive_then_connection_close():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    conn.dataReceived(b"GET /1 HTTP/1.1\r\n" + H + b"\r\n")
    conn.dataReceived(b"GET /2 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert answers(transport) == [b"200", b"200"] and transport.disconnecting
    assert transport.value().count(b"Connection: close") == 1


def test_pipelined_requests_are_answered_in_order_one_at_a_time():  # type: ignore[no-untyped-def]
    fast_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfast"

    def fast(head, conn):  # type: ignore[no-untyped-def]
        return (fast_answer, b"") if head.target == b"/fast" else None

    conn, transport, clock, resource = connect(fast)
    resource.hold = True
    conn.dataReceived(b"GET /slow HTTP/1.1\r\n" + H + b"\r\n"
                      b"GET /fast HTTP/1.1\r\n" + H + b"\r\n"
                      b"POST /post HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc"
                      b"GET /last HTTP/1.1\r\n" + H + b"\r\n")
    assert [r.uri for r in resource.seen] == [b"/slow"]
    assert transport.value() == b""
    first = resource.seen[0]
    first.setHeader(b"content-length", b"1")
    first.write(b"1")
    first.finish()
    # The fast one is answered at once, the POST (with its whole body) next.
    assert transport.value().count(b"fast") == 1
    assert [r.uri for r in resource.seen] == [b"/slow", b"/post"]
    post = resource.seen[1]
    assert post.body_pipe is not None and post.body_pipe.done
    post.setHeader(b"content-length", b"0")
    post.finish()
    assert [r.uri for r in resource.seen] == [b"/slow", b"/post", b"/last"]
    value = transport.value()
    assert value.index(b"\r\n\r\n1") < value.index(b"fast")
    assert not transport.disconnecting


def test_bytes_arriving_while_a_request_is_answered_wait_and_then_flow():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    resource.hold = True
    conn.dataReceived(b"GET /1 HTTP/1.1\r\n" + H + b"\r\n")
    conn.dataReceived(b"GET /2 HTTP/1.1\r\n" + H + b"X-Pad: " + b"p" * 900 + b"\r\n\r\n")
    assert len(resource.seen) == 1
    for _ in range(80):  # a client that keeps sending is stopped being read
        conn.dataReceived(b"x" * 1000)
    assert transport.producerState == "paused"
    resource.hold = False
    first = resource.seen[0]
    first.setHeader(b"content-length", b"0")
    first.finish()
    assert [r.uri for r in resource.seen] == [b"/1", b"/2"]
    assert answers(transport) == [b"200", b"200", b"400"]  # then the garbage after it
    assert transport.disconnecting


def test_the_fast_hook_answers_without_a_request():  # type: ignore[no-untyped-def]
    seen = []

    def fast(head, conn):  # type: ignore[no-untyped-def]
        seen.append((head.method, head.target, head.fields.get(b"host"), head.keep_alive))
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b""

    conn, transport, clock, resource = connect(fast)
    conn.dataReceived(b"GET /a HTTP/1.1\r\n" + H + b"\r\nHEAD /b HTTP/1.1\r\n" + H + b"\r\n")
    assert seen == [(b"GET", b"/a", [b"www.test.com"], True), (b"HEAD", b"/b", [b"www.test.com"], True)]
    assert resource.seen == [] and answers(transport) == [b"200", b"200"]
    # Idle again, it keeps no queue of requests (a deque is 600 bytes: most
    # of what an idle connection would cost).
    assert conn._queue is None


def test_an_upgrade_request_is_answered_then_the_connection_closes():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    conn.dataReceived(b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                      b"\x81\x05hello")
    assert [r.uri for r in resource.seen] == [b"/ws"]
    assert answers(transport) == [b"200"] and transport.disconnecting


# -- timeouts ---------------------------------------------------------------------------------


def test_slow_headers_get_408_then_the_connection_is_aborted():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    advance(clock, 1.5)  # idle, within the idle timeout
    conn.dataReceived(b"GET /a HTTP/1.1\r\n" + H)
    advance(clock, 0.9)
    assert transport.value() == b""
    advance(clock, 0.4)  # checked every quarter of the timeout
    assert answers(transport) == [b"408"] and transport.disconnecting
    advance(clock, 1.0)
    assert transport.disconnected  # aborted: the client may not read either
    assert not clock.getDelayedCalls()


def test_a_head_sent_a_byte_at_a_time_gets_408():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    for b in b"GET /a HTTP/1.1\r\nX-Slow: aaaa":
        conn.dataReceived(bytes([b]))
        advance(clock, 0.1)
    assert answers(transport) == [b"408"]


def test_an_idle_connection_is_closed_after_the_idle_timeout():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    advance(clock, 1.5)
    conn.dataReceived(b"GET /a HTTP/1.1\r\n" + H + b"\r\n")
    advance(clock, 1.9)
    assert not transport.disconnecting  # idle since the answer, not since the connection
    advance(clock, 0.6)
    assert transport.disconnecting
    assert not clock.getDelayedCalls()


def test_a_long_answer_is_not_cut_by_the_idle_timeout():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    resource.hold = True
    conn.dataReceived(b"GET /a HTTP/1.1\r\n" + H + b"\r\n")
    advance(clock, 10)
    assert not transport.disconnecting
    request = resource.seen[0]
    request.setHeader(b"content-length", b"0")
    request.finish()
    advance(clock, 2.1)
    assert transport.disconnecting


def test_a_client_that_stops_reading_is_cut_off():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    resource.hold = True
    conn.dataReceived(b"GET /a HTTP/1.1\r\n" + H + b"\r\n")
    request = resource.seen[0]

    class Producer:
        state = "producing"

        def pauseProducing(self) -> None:
            self.state = "paused"

        def resumeProducing(self) -> None:
            self.state = "producing"

        def stopProducing(self) -> None:
            self.state = "stopped"

    producer = Producer()
    request.registerProducer(producer, True)
    conn.pauseProducing()  # the transport's buffer is full
    assert producer.state == "paused"
    advance(clock, 1.9)
    conn.resumeProducing()
    assert producer.state == "producing"
    conn.pauseProducing()
    advance(clock, 1.9)
    assert not transport.disconnected
    advance(clock, 0.2)
    assert transport.disconnected


@pytest.mark.parametrize("split", [None, 10, 1])
def test_a_chunk_too_large_for_the_limit_is_413_at_its_size(split):  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    resource.hold = True
    data = (b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
            b"10\r\n" + b"x" * 16 + b"\r\n100001\r\nabcd")
    step = split or len(data)
    for i in range(0, len(data), step):
        conn.dataReceived(data[i:i + step])
    assert answers(transport) == [b"413"] and transport.disconnecting


def test_an_absurd_chunk_size_is_413_and_sizes_within_the_limit_pass():  # type: ignore[no-untyped-def]
    conn, transport, clock, resource = connect()
    resource.hold = True
    conn.dataReceived(b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nab")
    assert answers(transport) == [b"413"]
    conn, transport, clock, resource = connect()
    conn.dataReceived(b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding:\tchunked\r\n\r\n"
                      b"4;ext=1\r\nabcd\r\n" + b"80000\r\n" + b"y" * 0x80000 + b"\r\n0\r\nX-T: 1\r\n\r\n"
                      b"GET /next HTTP/1.1\r\n" + H + b"\r\n")
    # (answered at its head, before its body ended: then the connection closes)
    assert answers(transport) == [b"200"] and transport.disconnecting
    conn, transport, clock, resource = connect()
    resource.hold = True
    conn.dataReceived(b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding:\tchunked\t \r\n\r\n"
                      b"4;ext=1\r\nabcd\r\n" + b"80000\r\n" + b"y" * 0x80000 + b"\r\n0\r\nX-T: 1\r\n\r\n"
                      b"GET /next HTTP/1.1\r\n" + H + b"\r\n")
    resource.hold = False
    first = resource.seen[0]
    first.setHeader(b"content-length", b"0")
    first.finish()
    assert answers(transport) == [b"200", b"200"] and not transport.disconnecting
    assert resource.seen[0].body_pipe.received == 4 + 0x80000
