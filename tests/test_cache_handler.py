"""
The cache's decisions in memory, on a fake clock, with a scripted failover
chain: who may share an origin answer (docs/security.md), one revalidation per
stale object, a body that vanished before it was read, waiters of a failed
pull, Vary variants per URL and what an entry costs (8.7); and the rules
that take time: Age on a hit, stale-while-revalidate, stale-if-error (and
their windows), 304s, Ranges and HEAD from a stored GET.  The end-to-end
tests keep one case of each, without waiting for anything to go stale.
"""

from __future__ import annotations

import os
import tracemalloc
from types import SimpleNamespace
from typing import Optional

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from cdnpull.cache import Cache, DiskStore, MemoryStore, Store
from cdnpull.cache.collapse import header_map
from cdnpull.cache.store import Entry
from cdnpull.config import ConfigError, Settings, validate, Domain, IPOrigin
from cdnpull.edge import deliver
from cdnpull.errors import OriginUnavailable
from cdnpull.failover import OriginRequest, PullResult

HOST = "www.test.com"


@implementer(IResponse)
class FakeResponse:
    def __init__(self, code: int, body: bytes = b"", headers: Optional[dict] = None) -> None:
        self.code, self.phrase, self.body = code, b"X", body
        self.headers = Headers({k: [v] for k, v in (headers or {}).items()})
        self.length = len(body)
        self.version = (b"HTTP", 1, 1)
        self.request = None

    def deliverBody(self, protocol):  # type: ignore[no-untyped-def]
        protocol.makeConnection(FakeTransport())
        if self.body:
            protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class FakeTransport:
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class FakeRequest:
    """What the cache uses of a twisted.web request."""

    def __init__(self, path: str, headers: Optional[dict] = None, method: bytes = b"GET") -> None:
        self.method = method
        self.uri = path.encode()
        self.requestHeaders = Headers({k: [v] for k, v in (headers or {}).items()})
        self.responseHeaders = Headers()
        self.code = 200
        self.body = b""
        self.finished = False
        self._disconnected = False
        self.transport = None

    def setResponseCode(self, code: int, phrase: Optional[bytes] = None) -> None:
        self.code = code

    def registerProducer(self, producer, streaming) -> None:  # type: ignore[no-untyped-def]
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.body += data

    def finish(self) -> None:
        self.finished = True

    def header(self, name: str) -> Optional[str]:
        values = self.responseHeaders.getRawHeaders(name.encode())
        return values[0].decode() if values else None


class Origin:
    """The failover chain, scripted: each pull waits until the test answers it."""

    def __init__(self) -> None:
        self.pulls: list[tuple[OriginRequest, Deferred]] = []

    def pull(self, live, oreq: OriginRequest) -> Deferred:  # type: ignore[no-untyped-def]
        d: Deferred = Deferred()
        self.pulls.append((oreq, d))
        return d

    def answer(self, i: int, code: int, body: bytes = b"", headers: Optional[dict] = None) -> None:
        self.pulls[i][1].callback(PullResult(FakeResponse(code, body, headers), "primary", "a:80", 0.0))

    def fail(self, i: int, error: Exception) -> None:
        self.pulls[i][1].errback(Failure(error))

    def header(self, i: int, name: bytes) -> Optional[bytes]:
        values = self.pulls[i][0].headers.getRawHeaders(name)
        return values[0] if values else None


class World:
    def __init__(self, store: Optional[Store] = None, max_object: int = 1024 * 1024) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.origin = Origin()
        self.store = store or Store(MemoryStore(16 * 1024 * 1024))
        self.cache = Cache(self.store, self.origin, self.clock, max_object, 0.0)
        self.live = SimpleNamespace(config=SimpleNamespace(cache=()), name=HOST, groups=lambda: [])

    def get(self, path: str, headers: Optional[dict] = None, method: bytes = b"GET",
            scheme: str = "http") -> tuple[FakeRequest, SimpleNamespace, Deferred]:
        request = FakeRequest(path, headers, method)
        ctx = SimpleNamespace(start=self.clock.seconds(), cache="BYPASS", group="", origin="",
                              origin_ms=None, pending=None, relay=None, gone=False)
        oreq = OriginRequest(method=method, target=path.encode(), headers=request.requestHeaders.copy(),
                             host=HOST, client_scheme=scheme)

        async def serve() -> None:
            # What the edge does (Edge._serve): the cache's answer, written.
            ctx.pending = Deferred.fromCoroutine(self.cache.handle(
                self.live, oreq, header_map(request.requestHeaders), ctx.start))
            try:
                answer = await ctx.pending
            finally:
                ctx.pending = None
            assert not isinstance(answer, str), "not expected to pass through"
            await deliver(request, ctx, answer)

        d = Deferred.fromCoroutine(serve())
        return request, ctx, d


# -- 8.1: who may share an origin answer ---------------------------------------------------

BEARER = {b"Authorization": b"Bearer x"}
SHARED = [
    # (first request, second request, answer headers, shared?)
    ({}, {}, {b"cache-control": b"max-age=60"}, True),
    ({}, {}, {}, False),  # no freshness
    ({}, {}, {b"cache-control": b"private, max-age=60"}, False),
    ({}, {}, {b"cache-control": b"no-store"}, False),
    ({}, {}, {b"cache-control": b"max-age=60", b"set-cookie": b"s=1"}, False),
    ({}, {}, {b"cache-control": b"max-age=60", b"vary": b"*"}, False),
    (BEARER, {}, {}, False),
    (BEARER, {}, {b"cache-control": b"max-age=60"}, False),
    (BEARER, {}, {b"cache-control": b"public, max-age=60"}, True),
    (BEARER, {}, {b"cache-control": b"s-maxage=60"}, True),
    (BEARER, {}, {b"cache-control": b"max-age=60, must-revalidate"}, True),
    ({}, BEARER, {b"cache-control": b"max-age=60"}, False),  # joiner with Authorization
    ({}, BEARER, {b"cache-control": b"public, max-age=60"}, True),
    (BEARER, BEARER, {b"cache-control": b"max-age=60"}, False),
]


@pytest.mark.parametrize("first,second,answer,shared", SHARED)
def test_who_may_share_an_origin_answer(first, second, answer, shared) -> None:  # type: ignore[no-untyped-def]
    w = World()
    r1, _, d1 = w.get("/x", first)
    r2, _, d2 = w.get("/x", second)
    assert len(w.origin.pulls) == 1  # the second waits on the first's pull
    w.origin.answer(0, 200, b"answer one", answer)
    assert r1.body == b"answer one" and r1.finished
    if shared:
        assert len(w.origin.pulls) == 1
        assert r2.body == b"answer one" and r2.finished
    else:
        # Sent on its own: its own origin request, its own answer.
        assert len(w.origin.pulls) == 2 and not r2.finished
        assert w.origin.header(1, b"authorization") == (second.get(b"Authorization"))
        w.origin.answer(1, 200, b"answer two", answer)
        assert r2.body == b"answer two" and r2.finished
    assert d1.called and d2.called


def test_a_set_cookie_forced_into_the_cache_by_a_rule_is_not_given_to_joiners() -> None:
    from cdnpull.config import CacheRule

    w = World()
    w.live.config.cache = (CacheRule(prefix="/", ttl=60),)
    r1, _, _ = w.get("/x")
    r2, _, _ = w.get("/x")
    w.origin.answer(0, 200, b"page", {b"set-cookie": b"session=alice"})
    assert r1.responseHeaders.getRawHeaders(b"set-cookie") == [b"session=alice"]
    assert r2.body == b"page" and not r2.responseHeaders.hasHeader(b"set-cookie")
    assert len(w.origin.pulls) == 1


def test_after_a_private_answer_requests_do_not_queue_behind_one_another() -> None:
    w = World()
    w.get("/p")
    w.origin.answer(0, 200, b"mine", {b"cache-control": b"private"})
    # Hit-for-miss: the next requests each go to the origin at once.
    w.get("/p")
    w.get("/p")
    assert len(w.origin.pulls) == 3
    # An answer that is stored ends it.
    w.origin.answer(1, 200, b"public now", {b"cache-control": b"max-age=60"})
    w.origin.answer(2, 200, b"public now", {b"cache-control": b"max-age=60"})
    r, _, _ = w.get("/p")
    assert (r.body, r.header("x-cache")) == (b"public now", "HIT")
    assert len(w.origin.pulls) == 3


def test_a_hit_for_miss_answer_is_relayed_with_the_same_head_as_the_first() -> None:
    # The first private answer goes through a Flight and a Fill; the next
    # ones (hit-for-miss) are relayed directly: same status, same headers.
    w = World()
    answer = {b"cache-control": b"no-store", b"server": b"origin/1", b"connection": b"x-hop",
              b"x-hop": b"1", b"keep-alive": b"timeout=5", b"etag": b'"v1"', b"x-kept": b"yes"}
    heads = []
    for i in range(2):
        r, ctx, _ = w.get("/n")
        w.origin.answer(i, 200, b"mine", answer)
        assert (r.body, r.finished, ctx.cache, r.code) == (b"mine", True, "MISS", 200)
        heads.append(sorted(r.responseHeaders.getAllRawHeaders()))
    assert heads[0] == heads[1]
    names = {name.lower() for name, _ in heads[1]}
    assert {b"x-kept", b"etag", b"via", b"x-cache", b"age", b"content-length"} <= names
    assert not names & {b"connection", b"x-hop", b"keep-alive"}
    assert dict(heads[1])[b"Server"] == [b"cdnpull"]  # ours, not the origin's
    # A conditional request is answered 304 by the node, from the relayed answer.
    r, _, _ = w.get("/n", {b"If-None-Match": b'"v1"'})
    assert w.origin.header(2, b"if-none-match") is None
    w.origin.answer(2, 200, b"mine", answer)
    assert (r.code, r.body, r.finished) == (304, b"", True)
    assert w.cache.unshared.why("http://www.test.com/n") == "private"


def test_a_hit_for_miss_answer_that_is_storable_but_too_large_reaches_its_client_whole() -> None:
    w = World(max_object=8)
    w.get("/big")
    w.origin.answer(0, 200, b"mine", {b"cache-control": b"private"})
    r, _, _ = w.get("/big")
    w.origin.answer(1, 200, b"0123456789abcdef", {b"cache-control": b"max-age=60"})
    assert (r.body, r.finished) == (b"0123456789abcdef", True)
    assert w.cache.unshared.why("http://www.test.com/big") == "large"


def test_an_answer_kept_from_an_authorized_request_does_not_stop_collapsing_for_others() -> None:
    w = World()
    w.get("/api", BEARER)
    w.origin.answer(0, 200, b"for x", {b"cache-control": b"max-age=60"})  # not stored: Authorization
    w.get("/api")
    w.get("/api")
    assert len(w.origin.pulls) == 2  # the two anonymous requests share one pull


def test_twenty_concurrent_misses_for_a_cacheable_object_are_one_origin_request() -> None:
    w = World()
    requests = [w.get("/c.jpg")[0] for _ in range(20)]
    w.origin.answer(0, 200, b"img", {b"cache-control": b"max-age=60"})
    assert len(w.origin.pulls) == 1
    assert all(r.body == b"img" and r.finished for r in requests)


# -- 8.2: the scheme is part of the key ------------------------------------------------------


def test_http_and_https_are_separate_objects_and_a_purge_drops_both() -> None:
    w = World()
    w.get("/s")
    w.origin.answer(0, 200, b"http copy", {b"cache-control": b"max-age=60"})
    r, _, _ = w.get("/s", scheme="https")
    assert len(w.origin.pulls) == 2
    w.origin.answer(1, 200, b"https copy", {b"cache-control": b"max-age=60"})
    assert r.body == b"https copy"
    assert w.get("/s")[0].body == b"http copy"
    assert w.get("/s", scheme="https")[0].body == b"https copy"
    assert w.cache.purge(["http://WWW.test.com:80/s"], []) == {"purged": 2}
    assert w.cache.purge([], ["https://www.test.com/"]) == {"purged": 0}


# -- issue 17, defect 2: one revalidation per stale object -------------------------------------


def test_concurrent_requests_for_a_stale_object_make_one_conditional_request() -> None:
    w = World()
    w.get("/r")
    w.origin.answer(0, 200, b"body", {b"cache-control": b"max-age=10", b"etag": b'"e1"'})
    w.clock.advance(11)
    waiting = [w.get("/r")[0] for _ in range(5)]
    assert len(w.origin.pulls) == 2
    assert w.origin.header(1, b"if-none-match") == b'"e1"'
    w.origin.answer(1, 304, b"", {b"cache-control": b"max-age=10", b"etag": b'"e1"'})
    assert {(r.body, r.header("x-cache")) for r in waiting} == {(b"body", "HIT")}
    assert w.get("/r")[0].header("x-cache") == "HIT"  # refreshed
    assert len(w.origin.pulls) == 2


def test_a_new_answer_to_a_revalidation_is_shared_and_stored() -> None:
    w = World()
    w.get("/r")
    w.origin.answer(0, 200, b"v1", {b"cache-control": b"max-age=10", b"etag": b'"e1"'})
    w.clock.advance(11)
    waiting = [w.get("/r")[0] for _ in range(3)]
    w.origin.answer(1, 200, b"v2", {b"cache-control": b"max-age=10", b"etag": b'"e2"'})
    assert {r.body for r in waiting} == {b"v2"}
    assert w.get("/r")[0].body == b"v2"
    assert len(w.origin.pulls) == 2


# -- issue 17, defect 3: a body that vanished is fetched again ---------------------------------


class HeldRun:
    """Runs disk work inline, except reads, which wait until released."""

    def __init__(self) -> None:
        self.held: list = []

    def __call__(self, f, *args):  # type: ignore[no-untyped-def]
        if f.__name__ == "read_object":
            d: Deferred = Deferred()
            self.held.append((d, f, args))
            return d
        try:
            return succeed(f(*args))
        except Exception:  # noqa: BLE001
            from twisted.internet.defer import fail
            return fail()

    def release(self) -> None:
        from twisted.internet.defer import maybeDeferred

        for d, f, args in self.held:
            maybeDeferred(f, *args).chainDeferred(d)
        self.held.clear()


@pytest.mark.parametrize("how", ["purged", "damaged"])
def test_a_body_that_vanishes_between_lookup_and_read_is_fetched_again(tmp_path, how) -> None:  # type: ignore[no-untyped-def]
    run = HeldRun()
    disk = DiskStore(str(tmp_path), 1 << 30, run)
    disk.load()
    w = World(Store(MemoryStore(1 << 20), disk))
    w.get("/v")
    w.origin.answer(0, 200, b"the body", {b"cache-control": b"max-age=60"})
    (ident,) = disk.idents()
    w.store.memory.remove(ident)  # only on disk now
    r, ctx, d = w.get("/v")
    assert len(run.held) == 1  # looked up; the body read is under way
    if how == "purged":
        assert w.cache.purge(["http://www.test.com/v"], []) == {"purged": 1}
    else:
        path = disk._index[ident].path
        data = bytearray(open(path, "rb").read())
        data[-40] ^= 0xFF  # a flipped body byte: the checksum fails
        open(path, "wb").write(bytes(data))
    run.release()
    assert len(w.origin.pulls) == 2  # asked again, not a 503
    w.origin.answer(1, 200, b"the body", {b"cache-control": b"max-age=60"})
    assert (r.code, r.body, r.header("x-cache")) == (200, b"the body", "MISS")
    assert d.called and d.result is None


# -- issue 17, defect 4: waiters of a failed pull get their own chance --------------------------


def test_a_latecomer_joining_a_pull_that_fails_gets_its_own_try() -> None:
    w = World()
    _, _, d1 = w.get("/f")
    w.clock.advance(2)
    late, ctx, d2 = w.get("/f")
    assert len(w.origin.pulls) == 1
    w.origin.fail(0, OriginUnavailable("no origin could be reached"))
    failures: list = []
    d1.addErrback(failures.append)
    assert failures and failures[0].check(OriginUnavailable)  # the leader had its chance
    # The latecomer's own failover chain, within its own time budget.
    assert len(w.origin.pulls) == 2 and not late.finished
    assert w.origin.pulls[1][0].started == ctx.start
    w.origin.answer(1, 200, b"from the standby", {b"cache-control": b"max-age=60"})
    assert (late.code, late.body) == (200, b"from the standby")
    assert d2.called


def test_a_background_refresh_that_fails_lets_waiters_try_on_their_own() -> None:
    w = World()
    w.get("/b")
    w.origin.answer(0, 200, b"v1", {b"cache-control": b"max-age=10, stale-while-revalidate=5",
                                     b"etag": b'"1"'})
    w.clock.advance(12)
    r, _, _ = w.get("/b")  # served stale, refreshed in the background
    assert r.header("x-cache") == "STALE" and len(w.origin.pulls) == 2
    w.clock.advance(10)  # past stale-while-revalidate: waits on the refresh
    late, _, _ = w.get("/b")
    assert len(w.origin.pulls) == 2
    w.origin.fail(1, OriginUnavailable("down"))
    assert len(w.origin.pulls) == 3
    w.origin.answer(2, 200, b"v2", {b"cache-control": b"max-age=10"})
    assert late.body == b"v2"


# -- a client that leaves stops a pull nobody else waits for --------------------------------


def leave(ctx, d: Deferred) -> None:  # type: ignore[no-untyped-def]
    """What the edge does when the client disconnects (Edge._finished)."""
    assert ctx.pending is not None, "the request is not waiting on anything to cancel"
    ctx.pending.cancel()
    assert d.called
    d.addErrback(lambda f: f.trap(CancelledError))


def pull_cancelled(w: World, i: int) -> bool:
    d = w.origin.pulls[i][1]
    if not d.called:
        return False
    d.addErrback(lambda f: f.trap(CancelledError))
    return True


def test_the_only_waiter_leaving_a_miss_cancels_its_pull() -> None:
    w = World()
    _, ctx, d = w.get("/gone")
    leave(ctx, d)
    assert pull_cancelled(w, 0)
    assert "http://www.test.com/gone" not in w.cache.inflight


def test_a_collapsed_pull_goes_on_while_one_of_its_waiters_is_left() -> None:
    w = World()
    _, ctx1, d1 = w.get("/shared")
    r2, ctx2, d2 = w.get("/shared")
    leave(ctx1, d1)  # the one who started it leaves: the other still waits
    assert not pull_cancelled(w, 0)
    w.origin.answer(0, 200, b"shared", {b"cache-control": b"max-age=60"})
    assert (r2.body, r2.finished) == (b"shared", True)
    r3, _, _ = w.get("/shared")
    assert (r3.body, r3.header("x-cache")) == (b"shared", "HIT")
    # Both leave: nobody waits, the pull stops.
    w2 = World()
    _, ctx1, d1 = w2.get("/shared")
    _, ctx2, d2 = w2.get("/shared")
    leave(ctx2, d2)
    assert not pull_cancelled(w2, 0)
    leave(ctx1, d1)
    assert pull_cancelled(w2, 0)


def test_a_background_refresh_goes_on_when_its_waiters_leave() -> None:
    w = World()
    stored(w, "/bg", b"v1", {b"cache-control": b"max-age=10, stale-while-revalidate=5",
                             b"etag": b'"1"'})
    w.clock.advance(12)
    w.get("/bg")  # served stale; the refresh runs behind
    w.clock.advance(5)  # past the window: this one waits on the refresh
    _, ctx, d = w.get("/bg")
    assert len(w.origin.pulls) == 2
    leave(ctx, d)
    assert not pull_cancelled(w, 1)
    w.origin.answer(1, 200, b"v2", {b"cache-control": b"max-age=60"})
    r, _, _ = w.get("/bg")
    assert (r.body, r.header("x-cache")) == (b"v2", "HIT")


def test_leaving_a_hit_for_miss_pull_cancels_it() -> None:
    w = World()
    w.get("/own")
    w.origin.answer(0, 200, b"mine", {b"cache-control": b"private"})
    _, ctx, d = w.get("/own")  # relayed to this request alone (no Flight)
    leave(ctx, d)
    assert pull_cancelled(w, 1)


# -- 8.5: a Range miss is passed on when fetching the whole would amplify it ----------------------


def test_a_range_far_into_an_unknown_object_is_passed_on() -> None:
    w = World()
    r, _, _ = w.get("/big", {b"Range": b"bytes=5000000-5000009"})
    assert w.origin.header(0, b"range") == b"bytes=5000000-5000009"
    w.origin.answer(0, 206, b"0123456789", {b"content-range": b"bytes 5000000-5000009/9000000",
                                            b"cache-control": b"max-age=60"})
    assert (r.code, r.body) == (206, b"0123456789")
    assert len(w.origin.pulls) == 1  # 9 MB > cache_max_object: nothing fetched behind
    r, _, _ = w.get("/big", {b"Range": b"bytes=0-9"})  # known too large now
    assert w.origin.header(1, b"range") == b"bytes=0-9"


def test_an_open_range_near_the_start_of_an_unknown_object_joins_the_fill() -> None:
    w = World()
    r1, _, _ = w.get("/m", {b"Range": b"bytes=0-"})
    r2, _, _ = w.get("/m", {b"Range": b"bytes=2-"})
    r3, _, _ = w.get("/m")
    assert len(w.origin.pulls) == 1 and w.origin.header(0, b"range") is None
    w.origin.answer(0, 200, b"abcdef", {b"cache-control": b"max-age=60"})
    assert (r1.code, r1.body, r2.code, r2.body, r3.body) == (206, b"abcdef", 206, b"cdef", b"abcdef")


@pytest.mark.parametrize("value", [b"bytes=0-0", b"bytes=10-20", b"bytes=-5", b"bytes=2000000-"])
def test_a_range_that_could_cost_more_than_itself_plus_a_mib_is_passed_on(value) -> None:  # type: ignore[no-untyped-def]
    w = World()
    w.get("/n", {b"Range": value})
    assert w.origin.header(0, b"range") == value


@pytest.mark.parametrize("value, sent", [(b"bytes=0-1,5-6", b"bytes=0-1,5-6"),
                                         (b"bytes=0-0,", b"bytes=0-0"),
                                         (b"bytes=0-0,-1", b"bytes=0-0,-1"),
                                         (b"bytes=x-", b"bytes=x-"), (b"bytes=-", b"bytes=-")])
def test_several_ranges_or_an_unreadable_byte_range_set_are_passed_on(value, sent) -> None:  # type: ignore[no-untyped-def]
    # A whole fetch would cost the origin the object for a few bytes (the
    # origin decides what it makes of a set the node cannot read); a single
    # range goes on as a clean one.
    w = World()
    w.get("/q", {b"Range": value})
    assert w.origin.header(0, b"range") == sent


@pytest.mark.parametrize("value", [b"items=0-1", b"bytes=0-,5-9", b"bytes=5-9, 100-"])
def test_another_unit_or_an_open_range_near_the_start_is_a_plain_miss(value) -> None:  # type: ignore[no-untyped-def]
    w = World()
    w.get("/q", {b"Range": value})
    assert w.origin.header(0, b"range") is None


def test_a_passed_on_range_of_a_storable_object_fills_it_behind() -> None:
    w = World()
    r, _, _ = w.get("/s", {b"Range": b"bytes=-4"})
    w.origin.answer(0, 206, b"wxyz", {b"content-range": b"bytes 22-25/26",
                                      b"cache-control": b"max-age=60"})
    assert r.body == b"wxyz"
    assert len(w.origin.pulls) == 2 and w.origin.header(1, b"range") is None
    w.origin.answer(1, 200, b"abcdefghijklmnopqrstuvwxyz", {b"cache-control": b"max-age=60"})
    r, _, _ = w.get("/s", {b"Range": b"bytes=-4"})
    assert (r.body, r.header("x-cache")) == (b"wxyz", "HIT")


# -- 8.7: Vary variants per URL and what an entry costs ------------------------------------------


def _entry(i: int, body: bytes, key: str = "http://www.test.com/v", headers: int = 6) -> Entry:
    fresh = lambda b: bytes(bytearray(b))  # noqa: E731 - a new object, as read off the wire
    return Entry(key=key, variant=((fresh(b"user-agent"), b"agent %d" % i),),
                 vary=(fresh(b"user-agent"),), status=200, phrase=fresh(b"OK"),
                 headers=[(fresh(b"x-header-%d" % j), b"value %d of %d" % (j, i)) for j in range(headers)],
                 length=len(body), request_time=1.0, response_time=1.0, lifetime=60.0, body=body)


def test_at_most_max_variants_per_url_and_the_least_recently_used_goes() -> None:
    store = Store(MemoryStore(1 << 30), max_variants=3)
    for i in range(3):
        store.put(_entry(i, b"x"))
    first = next(e for e in store.variants("http://www.test.com/v") if e.variant[0][1] == b"agent 0")
    store.body(first)  # variant 0 was just used: variant 1 is the oldest
    store.put(_entry(3, b"x"))
    kept = sorted(e.variant[0][1] for e in store.variants("http://www.test.com/v"))
    assert kept == [b"agent 0", b"agent 2", b"agent 3"]
    for i in range(4, 40):
        store.put(_entry(i, b"x"))
    kept = sorted(e.variant[0][1] for e in store.variants("http://www.test.com/v"))
    assert kept == [b"agent 37", b"agent 38", b"agent 39"]
    assert len(store.memory) == 3


def test_the_cache_keeps_at_most_max_variants_of_a_url() -> None:
    w = World(Store(MemoryStore(1 << 30), max_variants=32))
    for i in range(100):
        w.get("/ua", {b"User-Agent": b"agent %d" % i})
        w.origin.answer(i, 200, b"page", {b"cache-control": b"max-age=60", b"vary": b"User-Agent"})
    assert len(w.store.variants("http://www.test.com/ua")) == 32


@pytest.mark.parametrize("size,headers", [(0, 0), (100, 6), (3000, 12)])
def test_memory_accounting_counts_what_entries_really_cost(size, headers) -> None:  # type: ignore[no-untyped-def]
    bodies = [os.urandom(size) for _ in range(2000)]
    tracemalloc.start()
    try:
        store = Store(MemoryStore(1 << 40))
        before = tracemalloc.get_traced_memory()[0]
        for i, body in enumerate(bodies):
            store.put(_entry(i, body, key=f"http://www.test.com/{i}", headers=headers))
        used = tracemalloc.get_traced_memory()[0] - before + size * len(bodies)
    finally:
        tracemalloc.stop()
    assert 0.85 <= store.memory.size / used <= 1.3, (store.memory.size, used)


def test_max_variants_is_validated() -> None:
    domains = [Domain("www.test.com", origin=IPOrigin(["127.0.0.2"]), probe=None)]
    assert validate(domains, Settings(max_variants=8)).settings.max_variants == 8
    for bad in (0, -1, True, "32", 100_000):
        with pytest.raises(ConfigError, match="settings.max_variants"):
            validate(domains, Settings(max_variants=bad))


def test_no_second_fill_behind_when_the_object_was_stored_while_a_range_was_passed_on() -> None:
    w = World()
    r1, _, _ = w.get("/s", {b"Range": b"bytes=-4"})
    w.origin.answer(0, 206, b"wxyz", {b"content-range": b"bytes 22-25/26",
                                      b"cache-control": b"max-age=60"})
    r2, _, _ = w.get("/s", {b"Range": b"bytes=0-1"})  # passed on while the fill runs
    w.origin.answer(1, 200, b"abcdefghijklmnopqrstuvwxyz", {b"cache-control": b"max-age=60"})
    w.origin.answer(2, 206, b"ab", {b"content-range": b"bytes 0-1/26",
                                    b"cache-control": b"max-age=60"})
    assert r2.body == b"ab"
    assert len(w.origin.pulls) == 3  # no second whole fill


def test_a_disk_cache_is_trimmed_to_max_variants_at_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = HeldRun()
    disk = DiskStore(str(tmp_path), 1 << 30, run)
    disk.load()
    for i in range(5):
        disk.put(_entry(i, b"x"))
    disk = DiskStore(str(tmp_path), 1 << 30, run)
    disk.load()
    assert len(disk) == 5
    store = Store(MemoryStore(1 << 20), disk, max_variants=2)
    assert len(disk) == 2 and len(store.variants("http://www.test.com/v")) == 2


# -- freshness, staleness and what a stored GET answers (moved from the e2e tests) -------------


def stored(w: World, path: str, body: bytes, headers: dict) -> None:
    """Store C{path}: one miss answered by the origin."""
    request, _, _ = w.get(path)
    w.origin.answer(len(w.origin.pulls) - 1, 200, body, headers)
    assert (request.body, request.header("x-cache")) == (body, "MISS")


def test_a_hit_says_its_age_on_the_clock_and_asks_the_origin_nothing() -> None:
    w = World()
    stored(w, "/c.jpg", b"image", {b"cache-control": b"max-age=600", b"etag": b'"v1"'})
    w.clock.advance(42)
    request, _, _ = w.get("/c.jpg")
    assert (request.code, request.body, request.header("x-cache")) == (200, b"image", "HIT")
    assert request.header("age") == "42"
    assert request.header("etag") == '"v1"'
    assert len(w.origin.pulls) == 1


def test_no_store_is_never_a_hit() -> None:
    w = World()
    for i in range(3):
        request, _, _ = w.get("/n")
        w.origin.answer(i, 200, b"never", {b"cache-control": b"no-store"})
        assert request.header("x-cache") == "MISS"
    assert len(w.origin.pulls) == 3


def test_a_stale_object_with_stale_while_revalidate_is_served_at_once_and_refreshed_behind() -> None:
    w = World()
    stored(w, "/swr", b"v1", {b"cache-control": b"max-age=10, stale-while-revalidate=60"})
    w.clock.advance(11)
    request, _, _ = w.get("/swr")
    assert (request.body, request.header("x-cache")) == (b"v1", "STALE")
    assert len(w.origin.pulls) == 2  # one refresh, behind the client's back
    w.get("/swr")  # while it runs: no second refresh
    assert len(w.origin.pulls) == 2
    w.origin.answer(1, 200, b"v2", {b"cache-control": b"max-age=600"})
    request, _, _ = w.get("/swr")
    assert (request.body, request.header("x-cache")) == (b"v2", "HIT")
    # Past the window the client waits for the origin.
    w2 = World()
    stored(w2, "/swr", b"v1", {b"cache-control": b"max-age=10, stale-while-revalidate=60"})
    w2.clock.advance(71)
    request, _, _ = w2.get("/swr")
    assert not request.finished and len(w2.origin.pulls) == 2


def test_stale_if_error_serves_the_stale_copy_when_every_origin_fails() -> None:
    w = World()
    w.cache.stale_if_error = 300.0
    stored(w, "/s", b"old but gold", {b"cache-control": b"max-age=1", b"etag": b'"s1"'})
    w.clock.advance(2)
    request, _, _ = w.get("/s")
    assert w.origin.header(1, b"if-none-match") == b'"s1"'
    w.origin.fail(1, OriginUnavailable("no origin could be reached"))
    assert (request.code, request.body, request.header("x-cache")) == (200, b"old but gold", "STALE")
    # Beyond the window the error is the client's.
    w.clock.advance(400)
    request, _, d = w.get("/s")
    w.origin.fail(2, OriginUnavailable("no origin could be reached"))
    errors: list = []
    d.addErrback(errors.append)
    assert request.header("x-cache") != "STALE" and errors and errors[0].check(OriginUnavailable)


def test_a_client_if_none_match_is_a_304_from_the_cache() -> None:
    w = World()
    stored(w, "/c", b"body", {b"cache-control": b"max-age=600", b"etag": b'"v1"'})
    request, _, _ = w.get("/c", {b"If-None-Match": b'"v1"'})
    assert (request.code, request.body, request.header("x-cache")) == (304, b"", "HIT")
    assert len(w.origin.pulls) == 1


def test_ranges_of_a_stored_object() -> None:
    w = World()
    full = bytes(range(256)) * 40
    stored(w, "/range.bin", full, {b"cache-control": b"max-age=600"})
    request, _, _ = w.get("/range.bin", {b"Range": b"bytes=1000-1099"})
    assert (request.code, request.body, request.header("x-cache")) == (206, full[1000:1100], "HIT")
    assert request.header("content-range") == f"bytes 1000-1099/{len(full)}"
    request, _, _ = w.get("/range.bin", {b"Range": b"bytes=-5"})
    assert (request.code, request.body) == (206, full[-5:])
    request, _, _ = w.get("/range.bin", {b"Range": b"bytes=999999-"})
    assert request.code == 416 and request.header("content-range") == f"bytes */{len(full)}"
    assert len(w.origin.pulls) == 1


def test_head_is_answered_from_a_stored_get() -> None:
    w = World()
    stored(w, "/h", b"for HEAD", {b"cache-control": b"max-age=600"})
    request, _, _ = w.get("/h", method=b"HEAD")
    assert (request.code, request.body, request.header("x-cache")) == (200, b"", "HIT")
    assert request.header("content-length") == "8"
    assert len(w.origin.pulls) == 1
