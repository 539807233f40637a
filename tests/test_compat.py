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
    cancel_with,
    canceller_of,
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


def test_a_cancel_with_the_canceller_from_before_a_hook_does_not_tell_the_hook() -> None:
    # The first-byte timer of an origin try cancels it; the failover chain's
    # hook on the same Deferred means "the client left" and must not hear it.
    seen: list = []
    d: Deferred = Deferred(lambda d: seen.append("canceller"))
    own = canceller_of(d)
    before_cancel(d, lambda: seen.append("hook"))
    failures: list = []
    d.addErrback(failures.append)
    assert own is not None
    cancel_with(d, own)
    assert seen == ["canceller"] and failures[0].check(CancelledError)
    cancel_with(d, own)  # once called: nothing more
    assert seen == ["canceller"]
    # Waiting on another Deferred: that one is cancelled.
    inner: Deferred = Deferred()
    outer: Deferred = Deferred()
    outer.addCallback(lambda _: inner)
    outer.callback(None)
    cancel_with(outer, lambda _: seen.append("unused"))
    assert inner.called and seen == ["canceller"]
    inner.addErrback(lambda f: None)
    outer.addErrback(lambda f: None)


def test_lean_dispatch_delivers_reads_errors_and_closes_as_twisted_does() -> None:
    import socket

    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.logger import globalLogPublisher

    from cdnpull.compat import lean_dispatch

    class Echo(Protocol):
        lost: list = []

        def dataReceived(self, data: bytes) -> None:
            if data == b"boom":
                raise RuntimeError("protocol bug")
            self.transport.write(data.upper())

        def connectionLost(self, reason: Any = None) -> None:
            Echo.lost.append(reason.type.__name__)

    assert not lean_dispatch(Clock())  # another reactor is left as it is
    r = EPollReactor()
    assert lean_dispatch(r)
    logged: list = []
    globalLogPublisher.addObserver(logged.append)
    port = r.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
    try:
        def turn(until: Any) -> None:
            for _ in range(200):
                r.doIteration(0.01)
                if until():
                    return
            raise AssertionError("not within 200 turns")

        # A read reaches the protocol; what it writes reaches the peer.
        a = socket.create_connection(("127.0.0.1", port.getHost().port))
        a.setblocking(False)
        a.sendall(b"hi")
        got: list = []

        def answered() -> bool:
            try:
                got.append(a.recv(10))
            except BlockingIOError:
                return False
            return True

        turn(answered)
        assert got == [b"HI"]
        # A peer that closes: connectionLost, as a clean close.
        a.close()
        turn(lambda: "ConnectionDone" in Echo.lost)
        # A protocol that raises: logged and disconnected, as Twisted does.
        b = socket.create_connection(("127.0.0.1", port.getHost().port))
        b.sendall(b"boom")
        turn(lambda: len(Echo.lost) == 2)
        failures = [e.get("log_failure") or e.get("failure") for e in logged]
        assert any(f is not None and f.check(RuntimeError) for f in failures), logged
        b.settimeout(2)
        assert b.recv(10) == b""  # closed by the node
        b.close()
    finally:
        _stop_test_reactor(r, port, logged)


def test_lean_dispatch_logs_a_failing_connection_lost_and_goes_on_as_twisted_does() -> None:
    # Twisted's doPoll runs each event inside log.callWithLogger, which also
    # catches and logs what escapes _doReadOrWrite: a protocol whose
    # connectionLost raises (called from _disconnectSelectable, outside
    # _doReadOrWrite's own try).  Without it the exception leaves
    # doIteration, the rest of that poll's events wait a turn, and the main
    # loop logs "Unexpected error in main loop".
    import socket

    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.logger import globalLogPublisher

    from cdnpull.compat import lean_dispatch

    class Buggy(Protocol):
        lost: list = []

        def connectionLost(self, reason: Any = None) -> None:
            Buggy.lost.append(reason.type.__name__)
            raise RuntimeError("connectionLost bug")

    r = EPollReactor()
    assert lean_dispatch(r)
    logged: list = []
    globalLogPublisher.addObserver(logged.append)
    port = r.listenTCP(0, Factory.forProtocol(Buggy), interface="127.0.0.1")
    escaped: list = []
    try:
        a = socket.create_connection(("127.0.0.1", port.getHost().port))
        for _ in range(50):  # accepted
            r.doIteration(0.01)
            if len(r._selectables) > 2:
                break
        a.close()
        for _ in range(200):
            try:
                r.doIteration(0.01)
            except RuntimeError as e:
                escaped.append(e)
            if Buggy.lost:
                break
        assert Buggy.lost == ["ConnectionDone"]
        assert not escaped, "an exception left doIteration (Twisted's doPoll logs it)"
        failures = [e.get("log_failure") or e.get("failure") for e in logged]
        assert any(f is not None and f.check(RuntimeError) for f in failures), logged
    finally:
        _stop_test_reactor(r, port, logged)


def test_lean_dispatch_leaves_a_poll_it_does_not_know(monkeypatch: Any) -> None:
    from twisted.internet.epollreactor import EPollReactor

    import cdnpull.compat as compat

    assert compat.poll_fingerprint() in compat.KNOWN_POLLS  # (this Twisted's is known)
    r = EPollReactor()
    try:
        monkeypatch.setattr(compat, "poll_fingerprint", lambda: "another release's")
        assert not compat.lean_dispatch(r)
        assert "doIteration" not in vars(r)
        monkeypatch.undo()
        assert compat.lean_dispatch(r) and "doIteration" in vars(r)
    finally:
        r._poller.close()


def _stop_test_reactor(r: Any, port: Any, logged: list) -> None:
    """Stop listening on a test's own EPollReactor and close it."""
    from twisted.logger import globalLogPublisher

    globalLogPublisher.removeObserver(logged.append)
    port.stopListening()
    for _ in range(5):
        r.doIteration(0)
    r._poller.close()
