"""
The failover decisions (docs/origins.md), one case each, on a fake clock.
The origin client is scripted per address; the chain under test is real.
"""

from __future__ import annotations

import random
from typing import Optional

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from zope.interface import implementer
from twisted.web.iweb import IResponse

from cdnpull.config import Domain, IPOrigin
from cdnpull.errors import (
    ConnectFailed,
    FirstByteTimeout,
    NoResponse,
    OriginTimeout,
    OriginUnavailable,
    TLSFailed,
)
from cdnpull.live import build_table
from cdnpull.failover import OriginRequest, FailoverChain

P1, P2, SB = "127.0.0.2:80", "127.0.0.3:80", "127.0.0.4:80"


@implementer(IResponse)
class FakeResponse:
    def __init__(self, code: int, body: bytes = b"") -> None:
        self.code, self.phrase, self.body = code, b"X", body
        self.headers = Headers()
        self.length = len(body)
        self.version = (b"HTTP", 1, 1)
        self.request = None

    def deliverBody(self, protocol):  # type: ignore[no-untyped-def]
        protocol.makeConnection(None)
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class OpenTransport:
    """The origin connection under a body: stopping it loses the connection."""

    def __init__(self, protocol) -> None:  # type: ignore[no-untyped-def]
        self.protocol = protocol
        self.stopped = False

    def stopProducing(self) -> None:
        self.stopped = True
        self.protocol.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))


@implementer(IResponse)
class OpenResponse(FakeResponse):
    """An answer whose body starts and never ends (until stopped)."""

    def __init__(self, code: int) -> None:
        super().__init__(code, b"part of it")
        self.length = 1000
        self.transport: Optional[OpenTransport] = None

    def deliverBody(self, protocol):  # type: ignore[no-untyped-def]
        self.transport = OpenTransport(protocol)
        protocol.makeConnection(self.transport)
        protocol.dataReceived(self.body)


class ScriptedClient:
    """
    Answers per address: an int status, 'refuse', 'lost', 'hang', ('open',
    status) (an answer whose body never ends) or ('hang', error) (no answer,
    and a cancel becomes C{error}, as the Agent makes a cancel "connection
    lost before a response").
    """

    def __init__(self, clock: Clock, script: dict) -> None:
        self.clock = clock
        self.script = script
        self.calls: list[tuple[str, bytes]] = []
        self.open: list[OpenResponse] = []

    def request(self, *, address, method, first_byte_timeout, connect_timeout, **kw):  # type: ignore[no-untyped-def]
        key = str(address)
        self.calls.append((key, method))
        what = self.script.get(key, "refuse")
        if what == "refuse":
            return fail(ConnectFailed(address, "connect refused"))
        if what == "lost":
            return fail(NoResponse(address, "connection lost before a response"))
        if what == "hang":
            d: Deferred = Deferred()
            self.clock.callLater(first_byte_timeout, d.errback,
                                 FirstByteTimeout(address, f"no response within {first_byte_timeout:g} s"))
            return d
        if isinstance(what, tuple) and what[0] == "open":
            self.open.append(OpenResponse(what[1]))
            return succeed(self.open[-1])
        if isinstance(what, tuple) and what[0] == "hang":
            def cancel(d: Deferred) -> None:
                timer.cancel()
                d.errback(what[1](address))

            d = Deferred(cancel)
            timer = self.clock.callLater(first_byte_timeout, d.errback,
                                         FirstByteTimeout(address, "no response"))
            return d
        return succeed(FakeResponse(what, f"{what} from {key}".encode()))


def setup(script: dict, standby: bool = True, **domain_kw):  # type: ignore[no-untyped-def]
    clock = Clock()
    domain = Domain("t.test", origin=IPOrigin([P1, P2]),
                    standby=IPOrigin([SB]) if standby else None, probe=None, **domain_kw)
    table = build_table([domain], clock, rng=random.Random(0))
    client = ScriptedClient(clock, script)
    return clock, table.route("t.test"), client, FailoverChain(client, clock)


def request(method: bytes = b"GET") -> OriginRequest:
    return OriginRequest(method=method, target=b"/x", headers=Headers(), host="t.test")


def run(d: Deferred, clock: Optional[Clock] = None):  # type: ignore[no-untyped-def]
    results: list = []
    d.addBoth(results.append)
    if clock is not None:
        for _ in range(1000):
            if results:
                break
            clock.advance(0.1)
    assert results, "no result"
    r = results[0]
    if isinstance(r, Failure):
        r.raiseException()
    return r


def test_primary_2xx_is_served_by_primary():
    clock, live, client, puller = setup({P1: 200, P2: 200, SB: 200})
    result = run(puller.pull(live, request()))
    assert (result.group, result.response.code) == ("primary", 200)
    assert [c for c, _ in client.calls] in ([P1], [P2])


@pytest.mark.parametrize("status", [404, 403, 500, 503])
def test_primary_error_status_goes_to_standby(status):  # type: ignore[no-untyped-def]
    clock, live, client, puller = setup({P1: status, P2: status, SB: 200})
    result = run(puller.pull(live, request()))
    assert (result.group, str(result.address), result.response.code) == ("standby", SB, 200)
    # One primary was asked, not both: an answer is an answer.
    assert len(client.calls) == 2


def test_standby_answer_is_final_whatever_its_status():
    clock, live, client, puller = setup({P1: 404, P2: 404, SB: 500})
    result = run(puller.pull(live, request()))
    assert (result.group, result.response.code) == ("standby", 500)


def test_failover_on_is_configurable():
    clock, live, client, puller = setup({P1: 404, P2: 404, SB: 200}, failover_on=[500, 502])
    result = run(puller.pull(live, request()))
    assert (result.group, result.response.code) == ("primary", 404)


def test_standby_unreachable_client_gets_primary_answer():
    clock, live, client, puller = setup({P1: 404, P2: 404, SB: "refuse"})
    result = run(puller.pull(live, request()))
    assert (result.group, result.response.code) == ("primary", 404)
    assert result.response.body.startswith(b"404 from")


def test_connect_error_blocks_and_moves_to_next_primary():
    clock, live, client, puller = setup({P1: "refuse", P2: 200, SB: 200})
    for _ in range(2):
        result = run(puller.pull(live, request()))
        assert (result.group, str(result.address)) == ("primary", P2)
    state = [s for s in live.primary.states if str(s.address) == P1][0]
    assert state.block_reason == "connect refused"
    assert state.blocked_until == clock.seconds() + 60.0
    # P1 was tried once, then skipped while blocked.
    assert [c for c, _ in client.calls].count(P1) == 1


def test_every_primary_unreachable_goes_to_standby():
    clock, live, client, puller = setup({SB: 200})
    result = run(puller.pull(live, request()))
    assert (result.group, result.response.code) == ("standby", 200)
    assert sorted(c for c, _ in client.calls) == sorted([P1, P2, SB])


def test_all_primaries_blocked_goes_straight_to_standby():
    clock, live, client, puller = setup({P1: 200, P2: 200, SB: 200})
    for s in live.primary.states:
        live.primary.block(s, "probe failed")
    result = run(puller.pull(live, request()))
    assert result.group == "standby"
    assert [c for c, _ in client.calls] == [SB]


def test_all_primaries_blocked_without_standby_still_tries_them():
    clock, live, client, puller = setup({P1: 200, P2: 200}, standby=False)
    for s in live.primary.states:
        live.primary.block(s, "probe failed")
    result = run(puller.pull(live, request()))
    assert (result.group, result.response.code) == ("primary", 200)


def test_nothing_reachable_is_502():
    clock, live, client, puller = setup({}, standby=True)
    with pytest.raises(OriginUnavailable, match="no origin could be reached"):
        run(puller.pull(live, request()))


def test_nothing_reachable_without_standby_is_502():
    clock, live, client, puller = setup({}, standby=False)
    with pytest.raises(OriginUnavailable):
        run(puller.pull(live, request()))


def test_connection_lost_moves_to_next_address_for_get():
    clock, live, client, puller = setup({P1: "lost", P2: "lost", SB: 200})
    result = run(puller.pull(live, request()))
    assert result.group == "standby"
    # Not a connect error: nothing is blocked.
    assert not live.primary.is_down()


def test_origin_timeout_without_standby_is_504():
    clock, live, client, puller = setup({P1: "hang", P2: "hang"}, standby=False,
                                        first_byte_timeout=2.0)
    d = puller.pull(live, request())
    clock.advance(1.9)
    assert not ended(d)
    with pytest.raises(OriginTimeout):
        run(d, clock)
    assert clock.seconds() == pytest.approx(2.0)
    # A hanging primary is not retried on the other primary.
    assert len(client.calls) == 1


def test_timeout_on_primary_fails_over_to_standby():
    clock, live, client, puller = setup({P1: "hang", P2: "hang", SB: 200},
                                        first_byte_timeout=2.0)
    result = run(puller.pull(live, request()), clock)
    assert (result.group, result.response.code) == ("standby", 200)


def test_tries_share_one_time_budget():
    clock, live, client, puller = setup({P1: "hang", P2: "hang", SB: "hang"},
                                        first_byte_timeout=30.0, total_timeout=45.0)
    d = puller.pull(live, request())
    with pytest.raises(OriginTimeout):
        run(d, clock)
    # 30 s on the primary, then only the 15 s left for the standby.
    assert clock.seconds() == pytest.approx(45.0)


def test_other_methods_go_to_primary_only():
    clock, live, client, puller = setup({P1: 503, P2: 503, SB: 200})
    result = run(puller.pull(live, request(b"POST")))
    assert (result.group, result.response.code) == ("primary", 503)
    assert SB not in [c for c, _ in client.calls]


def test_other_methods_retry_only_on_connect_error():
    clock, live, client, puller = setup({P1: "refuse", P2: 200})
    result = run(puller.pull(live, request(b"POST")))
    assert str(result.address) == P2
    clock, live, client, puller = setup({P1: "lost", P2: "lost", SB: 200})
    with pytest.raises(OriginUnavailable):
        run(puller.pull(live, request(b"PUT")))
    assert len(client.calls) == 1


def test_no_timers_left_after_a_pull():
    clock, live, client, puller = setup({P1: "hang", P2: 200, SB: 200}, first_byte_timeout=1.0)
    run(puller.pull(live, request()), clock)
    assert clock.getDelayedCalls() == []



# -- the client left: cancelling the pull ----------------------------------------

# What a cancelled try can come back as, depending on who made it: our HTTP
# client says CancelledError; the Agent (HTTPS) "connection lost before a
# response"; a connect or a TLS handshake cut short may look like theirs.
CANCELLED_AS = {
    "cancelled": lambda a: CancelledError(),
    "lost": lambda a: NoResponse(a, "connection lost before a response (CancelledError)"),
    "connect": lambda a: ConnectFailed(a, "connection was cancelled"),
    "tls": lambda a: TLSFailed(a, "handshake cut short"),
}


def ended(d: Deferred) -> bool:
    """Whether a pull has its outcome (a Deferred waiting on another has not)."""
    return d.called and not isinstance(d.result, Deferred)


def cancelled(d: Deferred) -> bool:
    failures: list = []
    d.addErrback(failures.append)
    assert d.called, "the pull did not end when it was cancelled"
    assert failures, "a cancelled pull gave an answer"
    return bool(failures[0].check(CancelledError))


@pytest.mark.parametrize("how", sorted(CANCELLED_AS))
def test_a_cancelled_pull_asks_no_other_address(how):  # type: ignore[no-untyped-def]
    hang = ("hang", CANCELLED_AS[how])
    clock, live, client, puller = setup({P1: hang, P2: hang, SB: 200}, first_byte_timeout=2.0)
    d = puller.pull(live, request())
    clock.advance(1.0)
    d.cancel()
    assert cancelled(d)
    clock.advance(60)
    # Neither the other primary nor the standby, now or later; the try that
    # was cut short counts against no address.
    assert len(client.calls) == 1
    assert all(s.failures == 0 and s.blocked_until is None for s in live.primary.states)
    assert clock.getDelayedCalls() == []


def test_a_pull_cancelled_while_the_standby_is_asked_drops_the_kept_primary_answer():
    hang = ("hang", CANCELLED_AS["lost"])
    clock, live, client, puller = setup({P1: ("open", 503), P2: ("open", 503), SB: hang},
                                        first_byte_timeout=2.0)
    d = puller.pull(live, request())
    assert [c for c, _ in client.calls][-1] == SB
    d.cancel()
    assert cancelled(d)
    # The primary's 503 was being kept in case the standby failed: its
    # connection is closed, not left to run.
    (kept,) = client.open
    assert kept.transport is not None and kept.transport.stopped
    assert len(client.calls) == 2 and clock.getDelayedCalls() == []


def test_a_pull_cancelled_while_reading_the_kept_primary_answer_is_cancelled():
    # The standby could not be reached: the chain waits for the primary's
    # 503 to be read whole.  Cancelled then, it is not "no origin answered".
    clock, live, client, puller = setup({P1: ("open", 503), P2: ("open", 503), SB: "refuse"})
    d = puller.pull(live, request())
    assert not ended(d)
    d.cancel()
    assert cancelled(d)
    assert client.open[0].transport.stopped
    assert len(client.calls) == 2


def test_an_answer_before_the_cancel_is_the_callers():
    clock, live, client, puller = setup({P1: 200, P2: 200, SB: 200})
    d = puller.pull(live, request())
    d.cancel()  # too late: nothing to stop
    assert run(d).response.code == 200


# -- what every pull tells, however it ran ------------------------------------------


class Observed:
    def __init__(self) -> None:
        self.tries: list = []
        self.failovers = 0

    def origin_try(self, domain, group, address, outcome, seconds):  # type: ignore[no-untyped-def]
        self.tries.append((group, outcome))

    def failover(self, domain: str) -> None:
        self.failovers += 1


@pytest.mark.parametrize("script, tries, failovers", [
    ({P1: 200, P2: 200, SB: 200}, [("primary", "2xx")], 0),
    ({P1: 503, P2: 503, SB: 200}, [("primary", "5xx"), ("standby", "2xx")], 1),
    ({P1: "lost", P2: "lost", SB: 404},
     [("primary", "no_response"), ("primary", "no_response"), ("standby", "4xx")], 1),
])
def test_each_try_is_observed_once(script, tries, failovers):  # type: ignore[no-untyped-def]
    clock, live, client, puller = setup(script)
    puller.observer = observer = Observed()
    run(puller.pull(live, request()))
    assert (observer.tries, observer.failovers) == (tries, failovers)


def test_a_first_try_that_raises_fails_the_pull():
    # Whatever goes wrong while the first try is sent is the pull's failure,
    # not an exception in the caller's face.
    clock, live, client, puller = setup({P1: 200, P2: 200, SB: 200})

    def broken(**kw):  # type: ignore[no-untyped-def]
        raise RuntimeError("broken")

    client.request = broken
    d = puller.pull(live, request())
    with pytest.raises(RuntimeError):
        run(d)
