"""
The edge cache across the wire: a real C{twistd cdnpull}, a real origin
(docs/cache.md).
"""

from __future__ import annotations

import glob
import hashlib
import signal

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.task import deferLater
from twisted.web.server import NOT_DONE_YET

from .support import Client, Origin, cdn_started, write_config

pytestmark = pytest.mark.timeout(120)


def sleep(seconds: float):  # type: ignore[no-untyped-def]
    return deferLater(reactor, seconds, lambda: None)


BIG = hashlib.sha256(b"seed").digest() * (20 * 1024 * 1024 // 32)  # 20 MiB


def slow(origin: Origin, path: str, body: bytes, delay: float, headers: dict) -> None:
    """Half the body at once, the rest after C{delay}."""
    def handler(request):  # type: ignore[no-untyped-def]
        for k, v in headers.items():
            request.setHeader(k, v)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body[:len(body) // 2])
        origin.pending.append(request)

        def rest():  # type: ignore[no-untyped-def]
            if not request._disconnected:
                request.write(body[len(body) // 2:])
                request.finish()
        reactor.callLater(delay, rest)
        return NOT_DONE_YET
    origin.routes[path] = handler


def cut(origin: Origin, path: str) -> None:
    """Promise 1000 bytes, send 500, reset."""
    def handler(request):  # type: ignore[no-untyped-def]
        request.setHeader(b"cache-control", b"max-age=600")
        request.setHeader(b"content-length", b"1000")
        request.write(b"x" * 500)
        reactor.callLater(0.05, request.transport.abortConnection)
        return NOT_DONE_YET
    origin.routes[path] = handler


def trickle(origin: Origin, path: str, body: bytes) -> None:
    """1 MiB every 0.1 s."""
    def handler(request):  # type: ignore[no-untyped-def]
        request.setHeader(b"cache-control", b"max-age=600")
        request.setHeader(b"content-length", b"%d" % len(body))
        state = {"at": 0}

        def more():  # type: ignore[no-untyped-def]
            if request._disconnected:
                return
            n = state["at"]
            request.write(body[n:n + 1024 * 1024])
            state["at"] = n + 1024 * 1024
            if state["at"] >= len(body):
                request.finish()
            else:
                origin.pending_calls.append(reactor.callLater(0.1, more))
        more()
        return NOT_DONE_YET
    origin.routes[path] = handler


@pytest_twisted.async_yield_fixture(scope="module")
async def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("cache")
    o = Origin("127.0.0.2", "origin").start()
    o.pending_calls = []
    dying = Origin("127.0.0.3", "dying").start()
    cc = {b"cache-control": b"max-age=600"}
    o.text("/c.jpg", b"cached image", headers={b"cache-control": b"max-age=600", b"etag": b'"v1"'})
    o.text("/nostore", b"never", headers={b"cache-control": b"no-store"})
    o.text("/range.bin", bytes(range(256)) * 40, headers=cc)
    o.text("/head.txt", b"for HEAD", headers=cc)
    o.text("/purge.txt", b"purge me", headers=cc)
    o.routes["/vary"] = lambda r: (r.setHeader(b"cache-control", b"max-age=600"),
                                   r.setHeader(b"vary", b"Accept-Language"),
                                   (r.getHeader(b"accept-language") or b"none"))[2]
    o.text("/rule.html", b"origin says no-store", headers={b"cache-control": b"no-store"})
    slow(o, "/slow.bin", BIG[:2 * 1024 * 1024], 0.5, cc)
    cut(o, "/cut.bin")
    # Already 5 s old when stored: stale at once, no sleeping for it.
    dying.text("/stale.txt", b"old but gold",
               headers={b"cache-control": b"max-age=1", b"etag": b'"s1"', b"age": b"5"})
    config = write_config(str(d), f"""
        from cdnpull.config import CacheRule, Domain, IPOrigin, Settings
        domains = [
            Domain("www.test.com", origin=IPOrigin(["{o.addr}"]), probe=None,
                   cache=[CacheRule(suffixes=[".html"], ttl=300)]),
            Domain("stale.test.com", origin=IPOrigin(["{dying.addr}"]), probe=None,
                   connect_timeout=1.0),
        ]
        """)
    cdn = await cdn_started(config, str(d), admin=True)
    yield dict(cdn=cdn, client=Client(cdn.url), admin=Client(cdn.admin_url), o=o, dying=dying)
    cdn.stop()
    for c in o.pending_calls:
        if c.active():
            c.cancel()
    await DeferredList([x.stop() for x in (o, dying) if x.listener.connected])


async def get(world, path, host="www.test.com", **kw):  # type: ignore[no-untyped-def]
    return await world["client"].get(path, host=host, **kw)


def xcache(response):  # type: ignore[no-untyped-def]
    return response.headers.getRawHeaders("x-cache")[0]


@pytest_twisted.ensureDeferred
async def test_second_get_is_a_hit_with_age_and_no_origin_request(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    r1, b1 = await get(world, "/c.jpg")
    assert (r1.code, b1, xcache(r1)) == (200, b"cached image", "MISS")
    assert r1.headers.getRawHeaders("age") == ["0"]  # every answer says its Age
    r2, b2 = await get(world, "/c.jpg")
    assert (r2.code, b2, xcache(r2)) == (200, b"cached image", "HIT")
    # (How Age grows with time: tests/test_cache_handler.py, on a fake clock.)
    assert int(r2.headers.getRawHeaders("age")[0]) >= 0
    assert r2.headers.getRawHeaders("etag") == ['"v1"']
    assert o.count("/c.jpg") == 1


@pytest_twisted.ensureDeferred
async def test_no_store_is_never_cached(world):  # type: ignore[no-untyped-def]
    for _ in range(3):
        r, b = await get(world, "/nostore")
        assert (r.code, b, xcache(r)) == (200, b"never", "MISS")
    assert world["o"].count("/nostore") == 3


@pytest_twisted.ensureDeferred
async def test_a_rule_overrides_the_origin(world):  # type: ignore[no-untyped-def]
    for status in ("MISS", "HIT", "HIT"):
        r, b = await get(world, "/rule.html")
        assert (b, xcache(r)) == (b"origin says no-store", status)
    assert world["o"].count("/rule.html") == 1


@pytest_twisted.ensureDeferred
async def test_twenty_concurrent_misses_make_one_origin_request(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    clients = [Client(world["cdn"].url) for _ in range(20)]
    results = await gatherResults([Deferred.fromCoroutine(c.get("/slow.bin", host="www.test.com"))
                                    for c in clients])
    bodies = {b for _, b in results}
    assert bodies == {BIG[:2 * 1024 * 1024]}
    assert o.count("/slow.bin") == 1
    assert sorted(xcache(r) for r, _ in results) == ["MISS"] * 20
    r, b = await get(world, "/slow.bin")
    assert xcache(r) == "HIT" and b == BIG[:2 * 1024 * 1024]


@pytest_twisted.ensureDeferred
async def test_a_body_cut_short_is_never_a_hit(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    for attempt in range(2):
        with pytest.raises(Exception):
            await get(world, "/cut.bin")  # the client sees the truncation
        await sleep(0.1)
    assert o.count("/cut.bin") == 2


@pytest_twisted.ensureDeferred
async def test_client_if_none_match_gets_304_from_the_cache(world):  # type: ignore[no-untyped-def]
    await get(world, "/c.jpg")
    r, b = await get(world, "/c.jpg", headers={"If-None-Match": '"v1"'})
    assert (r.code, b) == (304, b"")
    assert xcache(r) == "HIT"
    assert world["o"].count("/c.jpg") == 1


@pytest_twisted.ensureDeferred
async def test_range_on_a_cached_object(world):  # type: ignore[no-untyped-def]
    full = bytes(range(256)) * 40
    r, b = await get(world, "/range.bin", headers={"Range": "bytes=100-199"})
    assert (r.code, b) == (206, full[100:200])  # a range miss, answered from the stream
    r, b = await get(world, "/range.bin", headers={"Range": "bytes=1000-1099"})
    assert (r.code, b, xcache(r)) == (206, full[1000:1100], "HIT")
    assert r.headers.getRawHeaders("content-range") == [f"bytes 1000-1099/{len(full)}"]
    r, b = await get(world, "/range.bin", headers={"Range": "bytes=-5"})
    assert (r.code, b) == (206, full[-5:])
    r, b = await get(world, "/range.bin", headers={"Range": "bytes=999999-"})
    assert r.code == 416
    assert r.headers.getRawHeaders("content-range") == [f"bytes */{len(full)}"]
    assert world["o"].count("/range.bin") == 1


@pytest_twisted.ensureDeferred
async def test_head_is_answered_from_a_cached_get(world):  # type: ignore[no-untyped-def]
    await get(world, "/head.txt")
    r, b = await get(world, "/head.txt", method="HEAD")
    assert (r.code, b, xcache(r)) == (200, b"", "HIT")
    assert r.headers.getRawHeaders("content-length") == ["8"]
    assert world["o"].count("/head.txt") == 1


@pytest_twisted.ensureDeferred
async def test_a_head_miss_passes_on_the_origins_content_length(world):  # type: ignore[no-untyped-def]
    r, b = await get(world, "/nostore", method="HEAD")
    assert (r.code, b) == (200, b"")
    assert r.headers.getRawHeaders("content-length") == ["5"]


@pytest_twisted.ensureDeferred
async def test_vary_keeps_a_variant_per_value(world):  # type: ignore[no-untyped-def]
    for lang, status in (("en", "MISS"), ("fr", "MISS"), ("en", "HIT"), ("fr", "HIT")):
        r, b = await get(world, "/vary", headers={"Accept-Language": lang})
        assert (b, xcache(r)) == (lang.encode(), status)


@pytest_twisted.ensureDeferred
async def test_purge_drops_the_object(world):  # type: ignore[no-untyped-def]
    await get(world, "/purge.txt")
    r, _ = await get(world, "/purge.txt")
    assert xcache(r) == "HIT"
    status, answer = await world["admin"].api("POST", "/api/purge",
                                              {"urls": ["http://www.test.com/purge.txt"]})
    assert (status, answer) == (200, {"purged": 1})
    r, _ = await get(world, "/purge.txt")
    assert xcache(r) == "MISS"
    await get(world, "/purge.txt")
    status, answer = await world["admin"].api("POST", "/api/purge", {"prefixes": ["http://www.test.com/pur"]})
    assert answer == {"purged": 1}
    assert world["o"].count("/purge.txt") == 2


@pytest_twisted.ensureDeferred
async def test_stale_if_error_when_every_origin_is_down(world):  # type: ignore[no-untyped-def]
    r, b = await get(world, "/stale.txt", host="stale.test.com")
    assert (b, xcache(r)) == (b"old but gold", "MISS")
    await world["dying"].stop()
    r, b = await get(world, "/stale.txt", host="stale.test.com")
    assert (r.code, b, xcache(r)) == (200, b"old but gold", "STALE")
    assert "serving a stale copy of http://stale.test.com/stale.txt" in world["cdn"].log()


# -- the disk cache across restarts ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_disk_cache_survives_a_restart_and_kill_9_never_leaves_a_corrupt_hit(tmp_path):  # type: ignore[no-untyped-def]
    o = Origin("127.0.0.5", "disk").start()
    o.pending_calls = []
    o.text("/kept.txt", b"kept across restarts", headers={b"cache-control": b"max-age=600"})
    trickle(o, "/big.bin", BIG)
    cache_dir = tmp_path / "cache"
    config = write_config(str(tmp_path), f"""
        from cdnpull.config import Domain, IPOrigin, Settings
        settings = Settings(cache_dir={str(cache_dir)!r}, cache_disk="1GiB")
        domains = [Domain("disk.test.com", origin=IPOrigin(["{o.addr}"]), probe=None)]
        """)
    try:
        cdn = await cdn_started(config, str(tmp_path))
        client = Client(cdn.url)
        r, b = await client.get("/kept.txt", host="disk.test.com")
        assert xcache(r) == "MISS"
        for _ in range(100):  # written in a thread: wait until it is on disk
            if glob.glob(str(cache_dir / "*" / "*" / "*.obj")):
                break
            await sleep(0.05)
        # A large object in flight when the node is killed.
        pending = Deferred.fromCoroutine(client.get("/big.bin", host="disk.test.com"))
        pending.addErrback(lambda f: None)
        await sleep(0.5)
        assert o.count("/big.bin") == 1
        cdn.stop(signal.SIGKILL)
        await pending

        cdn = await cdn_started(config, str(tmp_path))
        client = Client(cdn.url)
        r, b = await client.get("/kept.txt", host="disk.test.com")
        assert (b, xcache(r)) == (b"kept across restarts", "HIT")
        assert o.count("/kept.txt") == 1
        r, b = await client.get("/big.bin", host="disk.test.com")
        assert xcache(r) == "MISS"  # never a corrupt HIT
        assert b == BIG
        assert o.count("/big.bin") == 2
        r, b = await client.get("/big.bin", host="disk.test.com")
        assert (xcache(r), len(b), b == BIG) == ("HIT", len(BIG), True)
        for _ in range(200):  # the disk write runs in a thread
            if len(glob.glob(str(cache_dir / "*" / "*" / "*.obj"))) == 2:
                break
            await sleep(0.05)
        cdn.stop()
        # Once more from a cold start: the HIT is read from disk, its
        # checksum verified on the way.
        cdn = await cdn_started(config, str(tmp_path))
        client = Client(cdn.url)
        r, b = await client.get("/big.bin", host="disk.test.com")
        assert (xcache(r), b == BIG) == ("HIT", True)
        assert o.count("/big.bin") == 2
        cdn.stop()
    finally:
        for c in o.pending_calls:
            if c.active():
                c.cancel()
        await o.stop()


@pytest_twisted.ensureDeferred
async def test_stale_while_revalidate_and_ignore_query(tmp_path):  # type: ignore[no-untyped-def]
    o = Origin("127.0.0.6", "swr").start()
    version = {"n": 1}

    def swr(request):  # type: ignore[no-untyped-def]
        # v1 is stale once stored (5 s old, max-age=1); the refreshed v2 stays
        # fresh (so the last request below is a HIT however slow the machine is).
        max_age = 1 if version["n"] == 1 else 600
        if version["n"] == 1:
            request.setHeader(b"age", b"5")
        request.setHeader(b"cache-control", b"max-age=%d, stale-while-revalidate=60" % max_age)
        return b"v%d" % version["n"]

    o.routes["/swr.txt"] = swr
    o.routes["/static/app.js"] = lambda r: (r.setHeader(b"cache-control", b"max-age=600"), r.uri)[1]
    config = write_config(str(tmp_path), f"""
        from cdnpull.config import CacheRule, Domain, IPOrigin
        domains = [Domain("swr.test.com", origin=IPOrigin(["{o.addr}"]), probe=None,
                          cache=[CacheRule(prefix="/static/", ttl=600, ignore_query=True)])]
        """)
    cdn = await cdn_started(config, str(tmp_path))
    client = Client(cdn.url)
    try:
        r, b = await client.get("/swr.txt", host="swr.test.com")
        assert (b, xcache(r)) == (b"v1", "MISS")
        version["n"] = 2
        r, b = await client.get("/swr.txt", host="swr.test.com")
        assert (b, xcache(r)) == (b"v1", "STALE")  # served at once, refreshed behind
        for _ in range(50):
            if o.count("/swr.txt") == 2:
                break
            await sleep(0.05)
        r, b = await client.get("/swr.txt", host="swr.test.com")
        assert (b, xcache(r)) == (b"v2", "HIT")
        # ignore_query: one object whatever the query string.
        r1, b1 = await client.get("/static/app.js?v=1", host="swr.test.com")
        r2, b2 = await client.get("/static/app.js?v=2&utm=x", host="swr.test.com")
        assert (xcache(r1), xcache(r2)) == ("MISS", "HIT")
        assert b1 == b2 == b"/static/app.js?v=1"
        assert o.count("/static/app.js") == 1
    finally:
        cdn.stop()
        await o.stop()
