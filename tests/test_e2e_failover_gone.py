"""
A client that leaves before the origin answers (docs/origins.md): the node
stops its pull there.  It does not go on to the standby, nor to another
primary address, for a request nobody waits for, and it does not leave the
primary's connection open.  A real C{twistd cdnpull}, real origins on
127.0.0.2 and up that record what they receive.

(Over HTTPS the Agent turns the cancel into "connection lost before a
response", which the chain used to take for the primary's failure: it asked
the other primary, then the standby.)
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

import pytest
import pytest_twisted
import trustme
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import deferLater
from twisted.web.server import NOT_DONE_YET

from .support import Client, Origin, cdn_started, tls_server_options, write_config

pytestmark = pytest.mark.timeout(60)

FIRST_BYTE = 1.0  # the domains' time-to-first-byte timeout
SLOW = 0.8  # a slow primary's 503 comes this long after the request


class Primary(Origin):
    """
    An origin whose answers can be held back: every request it holds is in
    C{held} until the node drops its connection (then in C{dropped}).
    """

    def __init__(self, ip: str, name: str) -> None:
        super().__init__(ip, name)
        self.held: list = []
        self.dropped: list = []
        self.timers: list = []

    def hold(self, path: str, then: Optional[Callable] = None, partial: bool = False) -> None:
        """
        Answer C{path} never (C{then} None), or with C{then(request)} after
        L{SLOW} s; with C{partial}, at once but with a body that never ends.
        """
        def handler(request):  # type: ignore[no-untyped-def]
            self.held.append(request)
            timer = None
            if partial:
                request.setResponseCode(503)
                request.setHeader(b"content-length", b"1000")
                request.write(b"primary broke, and its answer")
            elif then is not None:
                def answer() -> None:
                    if not request._disconnected:
                        request.write(then(request))
                        request.finish()
                timer = reactor.callLater(SLOW, answer)
                self.timers.append(timer)

            def lost(_):  # type: ignore[no-untyped-def]
                if timer is not None and timer.active():
                    timer.cancel()
                if request._disconnected:
                    self.dropped.append(request.uri)
            request.notifyFinish().addBoth(lost)
            return NOT_DONE_YET
        self.routes[path] = handler

    def stop(self) -> Deferred:
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        return super().stop()


def error_503(request) -> bytes:  # type: ignore[no-untyped-def]
    request.setResponseCode(503)
    return b"primary broke"


def sleep(seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


async def until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll C{condition} until it holds (True) or C{timeout} s pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await sleep(0.02)
    return True


class _Leaver(Protocol):
    def connectionMade(self) -> None:
        self.factory.connected.callback(self.transport)  # type: ignore[attr-defined]

    def connectionLost(self, reason) -> None:  # type: ignore[no-untyped-def]
        self.factory.lost.callback(None)  # type: ignore[attr-defined]


async def get_and_leave(cdn, host: str, path: str, origins: list) -> None:  # type: ignore[no-untyped-def]
    """
    Send a GET, wait until one of C{origins} holds it, then close the
    connection (before any answer).
    """
    factory = ClientFactory.forProtocol(_Leaver)
    factory.connected, factory.lost = Deferred(), Deferred()  # type: ignore[attr-defined]
    reactor.connectTCP("127.0.0.1", cdn.port, factory)
    transport = await factory.connected  # type: ignore[attr-defined]
    held = sum(len(o.held) for o in origins)
    transport.write(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), host.encode()))
    assert await until(lambda: sum(len(o.held) for o in origins) > held, 5.0), \
        "the request did not reach the origin"
    transport.abortConnection()
    await factory.lost  # type: ignore[attr-defined]


@pytest_twisted.async_yield_fixture(scope="module")
async def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = str(tmp_path_factory.mktemp("gone"))
    ca = trustme.CA()
    ca_file = os.path.join(d, "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    tls = tls_server_options(ca, "origin.test")
    # Two primary addresses over plain HTTP, two over HTTPS, one standby.
    p1 = Primary("127.0.0.2", "p1").start()
    p2 = Primary("127.0.0.3", "p2").start()
    t1 = Primary("127.0.0.5", "t1").start(tls=tls)
    t2 = Primary("127.0.0.6", "t2").start(tls=tls)
    sb = Primary("127.0.0.4", "sb").start()
    sb.routes["*"] = lambda r: b"standby " + r.uri
    config = write_config(d, f"""
        from cdnpull.config import CacheRule, Domain, IPOrigin, Settings
        settings = Settings(origin_ca_file={ca_file!r})
        fast = dict(standby=IPOrigin(["{sb.addr}"]), probe=None, connect_timeout=2.0,
                    first_byte_timeout={FIRST_BYTE})
        plain = dict(origin=IPOrigin(["{p1.addr}", "{p2.addr}"]), **fast)
        tls = dict(origin=IPOrigin(["{t1.addr}", "{t2.addr}"], scheme="https"),
                   origin_host="origin.test", **fast)
        domains = [
            Domain("cached.test.com", **plain),
            Domain("nocache.test.com", cache=[CacheRule(prefix="/", ttl=0)], **plain),
            Domain("tls-cached.test.com", **tls),
            Domain("tls-nocache.test.com", cache=[CacheRule(prefix="/", ttl=0)], **tls),
        ]
        """)
    cdn = await cdn_started(config, d)
    yield dict(p1=p1, p2=p2, t1=t1, t2=t2, sb=sb, cdn=cdn, client=Client(cdn.url))
    cdn.stop()
    await DeferredList([o.stop() for o in (p1, p2, t1, t2, sb)])


def primaries(world, host: str = "cached.test.com") -> list:  # type: ignore[no-untyped-def]
    """The primary addresses of C{host}'s domain."""
    return [world["t1"], world["t2"]] if host.startswith("tls-") else [world["p1"], world["p2"]]


async def check_left_alone(world, host: str, path: str, wait: float) -> None:  # type: ignore[no-untyped-def]
    """
    The primary's connection is dropped by the node, and within C{wait} s
    (past the moment the node would have failed over) neither the standby
    nor the other primary is asked.
    """
    p = primaries(world, host)
    assert await until(lambda: any(path.encode() in x.dropped for x in p), 5.0), \
        "the node left the primary's connection open"
    await until(lambda: world["sb"].count(path) > 0, wait)
    counts = (world["sb"].count(path), [x.count(path) for x in p])
    assert counts[0] == 0 and sum(counts[1]) == 1, \
        f"asked again for a request nobody waits for: standby {counts[0]}, primaries {counts[1]}"


@pytest.mark.parametrize("host", ["cached.test.com", "nocache.test.com", "tls-cached.test.com",
                                  "tls-nocache.test.com"])
@pytest.mark.parametrize("primary", ["hang", "slow503"])
@pytest_twisted.ensureDeferred
async def test_client_gone_before_the_primary_answers_stops_the_pull(world, host, primary):  # type: ignore[no-untyped-def]
    path = f"/{primary}-{host.split('.')[0]}"
    for p in primaries(world, host):
        p.hold(path, None if primary == "hang" else error_503)
    await get_and_leave(world["cdn"], host, path, primaries(world, host))
    await check_left_alone(world, host, path, FIRST_BYTE + 1.0)


@pytest_twisted.ensureDeferred
async def test_client_gone_on_a_hit_for_miss_key_stops_the_pull(world):  # type: ignore[no-untyped-def]
    # The key's last answer was private: the next miss goes to the origin
    # for this request alone (the cache's direct way, no shared pull).
    path = "/private"
    for p in primaries(world):
        p.text(path, b"mine", headers={"cache-control": "private"})
    response, body = await world["client"].get(path, host="cached.test.com")
    assert (response.code, body) == (200, b"mine")
    before = sum(p.count(path) for p in primaries(world))
    for p in primaries(world):
        p.hold(path, error_503)
        p.seen = [s for s in p.seen if s.path != path.encode()]
    await get_and_leave(world["cdn"], "cached.test.com", path, primaries(world))
    assert before == 1
    await check_left_alone(world, "cached.test.com", path, FIRST_BYTE + 1.0)


@pytest.mark.parametrize("host", ["cached.test.com", "nocache.test.com"])
@pytest_twisted.ensureDeferred
async def test_client_gone_while_the_standby_is_asked_drops_the_primary_answer(world, host):  # type: ignore[no-untyped-def]
    # The primary's 503 is being kept (read whole) while the standby is
    # asked; the client leaves: both origin connections are dropped.
    path = f"/kept-{host.split('.')[0]}"
    p, sb = primaries(world, host), world["sb"]
    for x in p:
        x.hold(path, partial=True)
    sb.hold(path)
    await get_and_leave(world["cdn"], host, path, [sb])
    assert await until(lambda: path.encode() in sb.dropped, 5.0), \
        "the node left the standby's connection open"
    assert await until(lambda: any(path.encode() in x.dropped for x in p), 5.0), \
        "the node left the primary's connection open"
    assert sum(x.count(path) for x in p) == 1
