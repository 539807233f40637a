"""
The edge in memory: the client connection on a StringTransport, a fake clock,
the real Edge resource and cache, and a scripted failover chain.  Routing,
the errors a request can end in (each one status, in one place), what of an
origin's answer the client sees, and a hit that asks the origin nothing.
"""

from __future__ import annotations

from typing import Any, Optional

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from cdnpull.accesslog import AccessLog
from cdnpull.cache import Cache, MemoryStore, Store
from cdnpull.config import BucketOrigin, Domain, IPOrigin
from cdnpull.edge import ClientLimits, Edge, EdgeSite
from cdnpull.errors import OriginTimeout, OriginUnavailable
from cdnpull.live import Routes, build_table
from cdnpull.failover import OriginRequest, PullResult

from .test_cache_handler import FakeResponse


class Failover:
    """Answers every pull with C{self.next} (a PullResult or an exception)."""

    def __init__(self) -> None:
        self.pulls: list[OriginRequest] = []
        self.next: Any = None

    def pull(self, live: Any, req: OriginRequest) -> Deferred:
        self.pulls.append(req)
        if isinstance(self.next, Exception):
            return fail(self.next)
        return succeed(self.next)


def answer(code: int, body: bytes = b"", headers: Optional[dict] = None) -> PullResult:
    return PullResult(FakeResponse(code, body, headers), "primary", "127.0.0.2:80", 0.01)


class Node:
    def __init__(self, cache: bool = False) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        table = build_table([
            Domain("www.test.com", IPOrigin(("127.0.0.2",)), probe=None),
            Domain("*.wild.test", IPOrigin(("127.0.0.3",)), probe=None),
            Domain("bucket.test", BucketOrigin("http://127.0.0.4:8333", "media", style="path"),
                   probe=None),
        ], self.clock)
        self.failover = Failover()
        store = Store(MemoryStore(1024 * 1024))
        self.cache = (Cache(store, self.failover, self.clock, 1024 * 1024, 0.0)
                      if cache else None)
        edge = Edge(Routes(table), self.cache, self.failover, self.clock, AccessLog(None))
        self.site = EdgeSite(edge, limits=ClientLimits(), reactor=self.clock)

    def send(self, data: bytes) -> bytes:
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 40000))
        proto.makeConnection(transport)
        proto.dataReceived(data)
        out = transport.value()
        proto.connectionLost(Exception("done"))
        return out


def head_of(raw: bytes) -> tuple[int, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields: dict = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return int(lines[0].split(b" ")[1]), fields, body


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n", 404),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: www.test.com\r\nHost: www.test.com\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: bad_name.wild.test\r\n\r\n", 400),
    (b"POST /x HTTP/1.1\r\nHost: bucket.test\r\nContent-Length: 0\r\n\r\n", 405),
])
def test_what_never_reaches_an_origin(request_bytes: bytes, status: int) -> None:
    node = Node()
    node.failover.next = answer(200, b"no")
    code, fields, body = head_of(node.send(request_bytes))
    assert code == status
    assert node.failover.pulls == []
    if status == 405:
        assert fields[b"allow"] == [b"GET, HEAD"]


@pytest.mark.parametrize("error, status", [
    (OriginUnavailable("no origin could be reached: 127.0.0.2:80: connect refused"), 502),
    (OriginTimeout("origin timed out"), 504),
])
def test_origin_failures_become_one_status_and_hide_the_origin(error: Exception, status: int) -> None:
    node = Node()
    node.failover.next = error
    code, fields, body = head_of(node.send(b"GET /a HTTP/1.1\r\nHost: www.test.com\r\n\r\n"))
    assert code == status
    assert b"127.0.0.2" not in body  # which addresses failed is for the log only
    assert fields[b"age"] == [b"0"]


def test_an_origin_answer_is_relayed_with_our_server_via_and_no_hop_by_hop_headers() -> None:
    node = Node()
    node.failover.next = answer(200, b"hello", {b"server": b"apache", b"x-kept": b"1",
                                                b"keep-alive": b"timeout=5",
                                                b"cache-control": b"no-store"})
    code, fields, body = head_of(node.send(b"GET /a?q=1 HTTP/1.1\r\nHost: www.test.com\r\n"
                                           b"Connection: keep-alive\r\n\r\n"))
    assert (code, body) == (200, b"hello")
    assert fields[b"server"] == [b"cdnpull"]
    assert fields[b"x-kept"] == [b"1"] and b"keep-alive" not in fields
    assert fields[b"via"][0].endswith(b"cdnpull")
    [pulled] = node.failover.pulls
    assert (pulled.method, pulled.target, pulled.host) == (b"GET", b"/a?q=1", "www.test.com")
    assert pulled.headers.getRawHeaders(b"x-forwarded-for") == [b"127.0.0.9"]


def test_a_stored_answer_is_a_hit_that_asks_the_origin_nothing() -> None:
    node = Node(cache=True)
    node.failover.next = answer(200, b"stored", {b"cache-control": b"max-age=60"})
    code, fields, body = head_of(node.send(b"GET /s HTTP/1.1\r\nHost: www.test.com\r\n\r\n"))
    assert (code, body, fields[b"x-cache"]) == (200, b"stored", [b"MISS"])
    node.clock.advance(7)
    code, fields, body = head_of(node.send(b"GET /s HTTP/1.1\r\nHost: www.test.com\r\n\r\n"))
    assert (code, body, fields[b"x-cache"], fields[b"age"]) == (200, b"stored", [b"HIT"], [b"7"])
    assert len(node.failover.pulls) == 1
