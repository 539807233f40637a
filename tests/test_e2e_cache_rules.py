"""
What the cache never does, across the wire (docs/security.md: never shares a
private answer, never mixes schemes or hosts, never amplifies a range, never
lets one URL eat the cache, on its revalidation side): a real
C{twistd cdnpull}, real clients, real origins on 127.0.0.x.
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl

import pytest
import pytest_twisted
import trustme
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.server import NOT_DONE_YET

from .support import Client, Origin, free_port, cdn_started, write_config

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
HUGE = hashlib.sha256(b"huge").digest() * (24 * MiB // 32)  # 24 MiB, above cache_max_object
MEDIUM = hashlib.sha256(b"medium").digest() * (3 * MiB // 32)  # 3 MiB, stored


def sleep(seconds: float):  # type: ignore[no-untyped-def]
    return deferLater(reactor, seconds, lambda: None)


def later(origin: Origin, delay: float, answer) -> None:  # type: ignore[no-untyped-def]
    """Call answer(request) after C{delay} seconds (a slow origin)."""
    def handler(request):  # type: ignore[no-untyped-def]
        origin.pending.append(request)

        def go():  # type: ignore[no-untyped-def]
            if not request._disconnected:
                request.write(answer(request))
                request.finish()
        origin.calls.append(reactor.callLater(delay, go))
        return NOT_DONE_YET
    return handler


def ranged(origin: Origin, body: bytes, headers: dict):  # type: ignore[no-untyped-def]
    """An origin that honours a single Range and counts the body bytes it sends."""
    def handler(request):  # type: ignore[no-untyped-def]
        for k, v in headers.items():
            request.setHeader(k, v)
        m = re.fullmatch(rb"bytes=(\d+)-(\d*)", request.getHeader(b"range") or b"")
        if m:
            first = int(m.group(1))
            last = min(int(m.group(2)) if m.group(2) else len(body) - 1, len(body) - 1)
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (first, last, len(body)))
            part = body[first:last + 1]
        else:
            part = body
        origin.sent += len(part)
        return part
    return handler


@pytest_twisted.async_yield_fixture(scope="module")
async def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("rules")
    o = Origin("127.0.0.12", "origin").start()
    o.calls, o.sent = [], 0
    hung = Origin("127.0.0.13", "hung").start()  # a primary that never answers /late
    hung.hang("/late")
    standby_port = free_port("127.0.0.14")  # a standby that is not up yet
    ca = trustme.CA()
    ca_file = str(d / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    edge_cert = ca.issue_cert("www.test.com")
    key_file, cert_file = str(d / "edge.key"), str(d / "edge.pem")
    edge_cert.private_key_pem.write_to_path(key_file)
    edge_cert.cert_chain_pems[0].write_to_path(cert_file)
    config = write_config(str(d), f"""
        from cdnpull.config import Domain, IPOrigin, Settings
        settings = Settings(cache_max_object="4MiB")
        domains = [
            Domain("www.test.com", origin=IPOrigin(["{o.addr}"]), probe=None),
            Domain("late.test.com", origin=IPOrigin(["{hung.addr}"]), probe=None,
                   standby=IPOrigin(["127.0.0.14:{standby_port}"]),
                   first_byte_timeout=2.0, total_timeout=10.0),
        ]
        """)
    tls_port = free_port()
    cdn = await cdn_started(config, str(d), "--listen",
                    f"ssl:{tls_port}:privateKey={key_file}:certKey={cert_file}:interface=127.0.0.1",
                    admin=True)
    yield dict(cdn=cdn, client=Client(cdn.url), admin=Client(cdn.admin_url), o=o,
               tls_port=tls_port, ca_file=ca_file, standby_port=standby_port)
    cdn.stop()
    for c in o.calls:
        if c.active():
            c.cancel()
    await DeferredList([o.stop(), hung.stop()])


def xcache(response):  # type: ignore[no-untyped-def]
    return response.headers.getRawHeaders("x-cache")[0]


async def get(world, path, **kw):  # type: ignore[no-untyped-def]
    return await Client(world["cdn"].url).get(path, host="www.test.com", **kw)


# -- 8.1: a private answer goes only to the request that asked for it -------------------


@pytest_twisted.ensureDeferred
async def test_an_answer_to_an_authorized_request_is_not_given_to_a_request_collapsed_behind_it(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    # No Cache-Control at all: not stored (the request had Authorization).
    o.routes["/me"] = later(o, 0.6, lambda r: b"account of " + (r.getHeader(b"authorization") or b"nobody"))
    first = Deferred.fromCoroutine(get(world, "/me", headers={"Authorization": "Bearer x"}))
    await sleep(0.2)  # request 1 is at the origin: request 2 would collapse behind it
    second = Deferred.fromCoroutine(get(world, "/me"))
    (r1, b1), (r2, b2) = await gatherResults([first, second])
    assert b1 == b"account of Bearer x"
    assert b2 == b"account of nobody"
    assert o.count("/me") == 2


@pytest_twisted.ensureDeferred
async def test_an_answer_without_freshness_is_not_shared_with_concurrent_requests(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    o.routes["/nofresh"] = later(o, 0.5, lambda r: b"for " + (r.getHeader(b"cookie") or b"-"))
    first = Deferred.fromCoroutine(get(world, "/nofresh", headers={"Cookie": "session=alice"}))
    await sleep(0.2)
    second = Deferred.fromCoroutine(get(world, "/nofresh", headers={"Cookie": "session=bob"}))
    (_, b1), (_, b2) = await gatherResults([first, second])
    assert (b1, b2) == (b"for session=alice", b"for session=bob")
    assert o.count("/nofresh") == 2


@pytest_twisted.ensureDeferred
async def test_an_explicitly_shareable_answer_is_still_collapsed_for_authorized_requests(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    o.routes["/pub"] = later(o, 0.5, lambda r: (r.setHeader(b"cache-control", b"public, max-age=600"),
                                                b"public page")[1])
    first = Deferred.fromCoroutine(get(world, "/pub", headers={"Authorization": "Bearer x"}))
    await sleep(0.2)
    rest = [Deferred.fromCoroutine(get(world, "/pub")) for _ in range(5)]
    results = await gatherResults([first] + rest)
    assert {b for _, b in results} == {b"public page"}
    assert o.count("/pub") == 1


# -- 8.2: http and https are separate objects; a purge drops both ---------------------------


def _https_get(world, path: str) -> bytes:  # type: ignore[no-untyped-def]
    context = ssl.create_default_context(cafile=world["ca_file"])
    with socket.create_connection(("127.0.0.1", world["tls_port"]), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="www.test.com") as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: www.test.com\r\nConnection: close\r\n\r\n".encode())
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out


@pytest_twisted.ensureDeferred
async def test_http_and_https_answers_are_separate_objects_and_a_purge_drops_both(world):  # type: ignore[no-untyped-def]
    o = world["o"]

    def proto(request):  # type: ignore[no-untyped-def]
        request.setHeader(b"cache-control", b"max-age=600")
        return b"seen as " + (request.getHeader(b"x-forwarded-proto") or b"?")

    o.routes["/proto"] = proto
    r, b = await get(world, "/proto")
    assert (b, xcache(r)) == (b"seen as http", "MISS")
    answer = await deferToThread(_https_get, world, "/proto")
    assert answer.endswith(b"seen as https")  # not the http copy
    assert b"X-Cache: MISS" in answer
    r, b = await get(world, "/proto")
    assert (b, xcache(r)) == (b"seen as http", "HIT")
    answer = await deferToThread(_https_get, world, "/proto")
    assert answer.endswith(b"seen as https") and b"X-Cache: HIT" in answer
    assert o.count("/proto") == 2
    # A purge naming one scheme drops both copies.
    status, body = await world["admin"].api("POST", "/api/purge", {"urls": ["https://www.test.com/proto"]})
    assert (status, body) == (200, {"purged": 2})
    r, b = await get(world, "/proto")
    assert xcache(r) == "MISS"
    answer = await deferToThread(_https_get, world, "/proto")
    assert b"X-Cache: MISS" in answer
    status, body = await world["admin"].api("POST", "/api/purge", {"prefixes": ["http://www.test.com/pro"]})
    assert body == {"purged": 2}
    assert o.count("/proto") == 4


# -- 8.5: a range of an object that is not stored costs the origin about the range ------------


@pytest_twisted.ensureDeferred
async def test_a_range_of_an_object_too_large_to_store_costs_the_origin_only_the_range(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    o.routes["/huge.bin"] = ranged(o, HUGE, {b"cache-control": b"max-age=600"})
    o.sent = 0
    r, b = await get(world, "/huge.bin", headers={"Range": "bytes=0-0"})
    assert (r.code, b) == (206, HUGE[:1])
    r, b = await get(world, "/huge.bin", headers={"Range": "bytes=10000000-10000000"})
    assert (r.code, b) == (206, HUGE[10000000:10000001])
    assert r.headers.getRawHeaders("content-range") == [f"bytes 10000000-10000000/{len(HUGE)}"]
    r, b = await get(world, "/huge.bin", headers={"Range": "bytes=20000000-20000099"})
    assert (r.code, b) == (206, HUGE[20000000:20000100])
    await sleep(0.3)  # nothing is fetched behind the client's back
    assert o.sent == 1 + 1 + 100
    # A whole GET streams it (and learns that it is too large to store) ...
    r, b = await get(world, "/huge.bin")
    assert b == HUGE and xcache(r) == "MISS"
    # ... after which even a range near the start is passed on as it is.
    o.sent = 0
    r, b = await get(world, "/huge.bin", headers={"Range": "bytes=0-99"})
    assert (r.code, b) == (206, HUGE[:100])
    assert o.seen[-1].headers.get(b"range") == [b"bytes=0-99"]
    assert o.sent == 100


@pytest_twisted.ensureDeferred
async def test_a_range_of_a_storable_object_is_passed_on_and_the_object_filled_behind(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    o.routes["/medium.bin"] = ranged(o, MEDIUM, {b"cache-control": b"max-age=600"})
    r, b = await get(world, "/medium.bin", headers={"Range": "bytes=2000000-2000099"})
    assert (r.code, b) == (206, MEDIUM[2000000:2000100])
    for _ in range(100):
        r, b = await get(world, "/medium.bin", headers={"Range": "bytes=3000000-3000009"})
        if xcache(r) == "HIT":
            break
        await sleep(0.05)
    assert (r.code, b, xcache(r)) == (206, MEDIUM[3000000:3000010], "HIT")
    # One ranged request and one whole fill (each further MISS above was its own range).
    assert [s.headers.get(b"range") for s in o.seen if s.path == b"/medium.bin"].count(None) == 1


# -- issue 17 defect 2: one revalidation per stale object ---------------------------------------


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_for_a_stale_object_make_one_conditional_request(world):  # type: ignore[no-untyped-def]
    o = world["o"]

    def fresh(request):  # type: ignore[no-untyped-def]
        request.setHeader(b"cache-control", b"max-age=1")
        request.setHeader(b"etag", b'"r1"')
        if request.getHeader(b"if-none-match") == b'"r1"':
            request.setResponseCode(304)
            return b""
        request.setHeader(b"age", b"5")  # stale once stored: no waiting for it
        return b"revalidated body"

    o.routes["/rev"] = later(o, 0.5, fresh)
    r, b = await get(world, "/rev")
    assert (b, xcache(r)) == (b"revalidated body", "MISS")
    results = await gatherResults([Deferred.fromCoroutine(get(world, "/rev")) for _ in range(10)])
    assert {(r.code, b) for r, b in results} == {(200, b"revalidated body")}
    conditional = [s for s in o.seen if s.path == b"/rev" and b"if-none-match" in s.headers]
    assert len(conditional) == 1
    assert {xcache(r) for r, _ in results} == {"HIT"}


# -- issue 17, defect 4: a latecomer does not inherit a failed pull ---------------------------


@pytest_twisted.ensureDeferred
async def test_a_latecomer_whose_shared_pull_fails_gets_its_own_try_and_the_standbys_answer(world):  # type: ignore[no-untyped-def]
    client = lambda: Client(world["cdn"].url)  # noqa: E731
    # The first request: the primary hangs (2 s to first byte), the standby
    # is down: it gets a 504 at about 2 s.
    first = Deferred.fromCoroutine(client().get("/late", host="late.test.com"))
    await sleep(0.7)
    late = Deferred.fromCoroutine(client().get("/late", host="late.test.com"))  # joins it
    r1, _ = await first
    assert r1.code == 504
    # The standby comes up while the latecomer still has most of its budget.
    standby = Origin("127.0.0.14", "standby").start(world["standby_port"])
    standby.text("/late", b"from the standby", headers={b"cache-control": b"max-age=60"})
    try:
        r2, b2 = await late
        # Its own failover chain: the primary again (2 s), then the standby.
        assert (r2.code, b2) == (200, b"from the standby")
        assert standby.count("/late") == 1
        assert "a waiting request tries on its own" in world["cdn"].log()
    finally:
        await standby.stop()
