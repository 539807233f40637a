"""
Each hook of cdnpull/compat.py (Twisted's private names) against the
installed Twisted, in memory: a release that renames one fails here.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import client
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from cdnpull.compat import (
    HookedClientProtocol,
    before_cancel,
    HookedConnectionPool,
    raise_listen_errors,
    request_gone,
    stop_rereading_resolv_conf,
)


class Recording(HookedClientProtocol):
    made: list = []

    def __init__(self, quiescent: Any) -> None:
        super().__init__(quiescent)
        Recording.made.append(self)


class Pool(HookedConnectionPool):
    protocol = Recording

    def keep(self, connection: Any) -> bool:
        return connection.keep  # type: ignore[no-any-return]


def test_the_pool_builds_our_protocol_quietly_and_asks_before_keeping() -> None:
    pool = Pool(Clock(), persistent=True)
    factory = pool._factory(lambda p: None, "endpoint")
    assert factory.noisy is False
    proto = factory.buildProtocol(None)
    assert isinstance(proto, Recording)
    proto.makeConnection(StringTransport())
    proto.keep = False
    pool._putConnection(("k",), proto)
    assert pool.idle_connections() == []
    proto.keep = True
    pool._putConnection(("k",), proto)
    assert pool.idle_connections() == [proto]
    pool.closeCachedConnections()


def test_a_request_knows_when_its_client_is_gone() -> None:
    request = Request(DummyChannel())
    assert not request_gone(request)
    request.connectionLost(Exception("gone"))
    assert request_gone(request)


def test_a_listener_raises_when_it_cannot_listen() -> None:
    service = StreamServerEndpointService(object(), object())  # type: ignore[arg-type]
    raise_listen_errors(service)
    assert service._raiseSynchronously is True


def test_the_resolver_stops_rereading_resolv_conf(tmp_path: Any) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\n")
    clock = Clock()
    resolver = client.Resolver(resolv=str(conf), reactor=clock)
    assert clock.getDelayedCalls()  # the re-read timer
    stop_rereading_resolv_conf(resolver)
    assert not [c for c in clock.getDelayedCalls() if c.active()]


def test_a_hook_runs_before_a_deferreds_own_canceller() -> None:
    seen: list = []
    d: Deferred = Deferred(lambda d: seen.append("canceller"))
    assert before_cancel(d, lambda: seen.append("hook")) is d
    failures: list = []
    d.addErrback(failures.append)
    d.cancel()
    assert seen == ["hook", "canceller"] and failures[0].check(CancelledError)
    # Without a canceller of its own, and once fired: no hook after the result.
    bare: Deferred = before_cancel(Deferred(), lambda: seen.append("bare"))
    bare.addErrback(failures.append)
    bare.cancel()
    assert seen[-1] == "bare" and failures[1].check(CancelledError)
    done: Deferred = Deferred()
    done.callback(1)
    before_cancel(done, lambda: seen.append("late")).cancel()
    assert seen[-1] == "bare"
