"""
What a red-team review of the node found, over the wire against a real
C{twistd cdnpull} (raw sockets where the framing matters): several ranges
in one Range header, underscore spellings of dropped headers, a made-up
Content-Type, fragments in the target, and odd framing on both sides.
"""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.server import Site
from twisted.web.wsgi import WSGIResource

from .support import Client, Origin, RawOrigin, raw_exchange, cdn_started, write_config

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
BIG = hashlib.sha256(b"big").digest() * (4 * MiB // 32)  # 4 MiB


def sleep(seconds: float):  # type: ignore[no-untyped-def]
    return deferLater(reactor, seconds, lambda: None)


def _ranges(value: bytes, size: int) -> list:
    """The (first, last) pairs of a bytes Range value, as a plain origin reads them."""
    out = []
    for element in value.partition(b"=")[2].split(b","):
        first, _, last = element.strip().partition(b"-")
        if not first and not last:
            continue
        if not first:
            out.append((size - int(last), size - 1))
        else:
            out.append((int(first), min(int(last), size - 1) if last else size - 1))
    return out


def ranged(origin: Origin, body: bytes, cache_control: bytes):  # type: ignore[no-untyped-def]
    """
    An origin that honours one or several ranges (multipart/byteranges) and
    counts the bytes it sends.
    """
    def handler(request):  # type: ignore[no-untyped-def]
        request.setHeader(b"cache-control", cache_control)
        value = b", ".join(request.requestHeaders.getRawHeaders(b"range", []))
        ranges = _ranges(value, len(body)) if value else []
        if len(ranges) == 1:
            first, last = ranges[0]
            request.setResponseCode(206)
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (first, last, len(body)))
            payload = body[first:last + 1]
        elif ranges:
            request.setResponseCode(206)
            request.setHeader(b"content-type", b"multipart/byteranges; boundary=XYZ")
            payload = b"".join(
                b"--XYZ\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Range: bytes %d-%d/%d\r\n\r\n%s\r\n" % (f, la, len(body), body[f:la + 1])
                for f, la in ranges) + b"--XYZ--\r\n"
        else:
            request.setHeader(b"content-type", b"application/octet-stream")
            payload = body
        origin.sent += len(payload)
        return payload
    return handler


def wsgi_app(environ, start_response):  # type: ignore[no-untyped-def]
    """Like most WSGI/CGI/PHP stacks, trusts the forwarded host it is given."""
    host = environ.get("HTTP_X_FORWARDED_HOST", "-")
    start_response("200 OK", [("Content-Type", "text/html"), ("Cache-Control", "max-age=60")])
    return [f"<a href='//{host}/'>".encode()]


@pytest_twisted.async_yield_fixture(scope="module")
async def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("redteam")
    o = Origin("127.0.0.21", "origin").start()
    o.sent = 0
    o.routes["*"] = lambda r: b"ok " + r.path + b" " + r.content.read()
    o.text("/k13", b"thirteen", headers={"cache-control": "max-age=60"})
    o.text("/oic", b"cached later", headers={"cache-control": "max-age=60"})
    wsgi = Origin("127.0.0.22", "wsgi")
    wsgi.site = Site(WSGIResource(reactor, reactor.getThreadPool(), wsgi_app))
    wsgi.site.log = lambda request: None
    wsgi.site.timeOut = None
    wsgi.start()
    raw = RawOrigin("127.0.0.23")
    raw.script["/noct"] = [(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                            b"Cache-Control: max-age=60\r\n\r\nhello", None)]
    raw.script["/hugecl"] = [(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000000000000000000\r\n"
                              b"\r\nhello", "close")]
    config = write_config(str(d), f"""
        from cdnpull.config import Domain, IPOrigin, Settings
        settings = Settings(client_max_body="1MiB")
        domains = [
            Domain("www.red.test", origin=IPOrigin(["{o.addr}"]), probe=None),
            Domain("fwd.red.test", origin=IPOrigin(["{o.addr}"]), probe=None,
                   forward_headers=["X-Forwarded-Host"]),
            Domain("wsgi.red.test", origin=IPOrigin(["{wsgi.addr}"]), probe=None),
            Domain("raw.red.test", origin=IPOrigin(["{raw.addr}"]), probe=None,
                   first_byte_timeout=3.0),
        ]
        """)
    cdn = await cdn_started(config, str(d))
    yield dict(cdn=cdn, o=o, raw=raw, client=Client(cdn.url))
    cdn.stop()
    log = cdn.log()
    await DeferredList([o.stop(), wsgi.stop(), raw.stop()])
    assert "Traceback" not in log and "Unhandled" not in log, log[-5000:]


async def send(world, data: bytes, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    return await deferToThread(raw_exchange, world["cdn"].port, data, timeout)


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 ") else 0


def head_of(answer: bytes) -> dict:
    lines = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}


# -- F1 (8.5): several ranges never cost the origin the whole object ------------------------

MULTI = {
    "two": (b"bytes=0-0,2-2", [(0, 0), (2, 2)]),
    "empty-element": (b"bytes=0-0,", [(0, 0)]),
    "space": (b"bytes=0-0, 1-1", [(0, 0), (1, 1)]),
    "suffix": (b"bytes=0-0,-1", [(0, 0), (len(BIG) - 1, len(BIG) - 1)]),
    "two-hundred": (b"bytes=" + b",".join(b"%d-%d" % (2 * i, 2 * i) for i in range(200)),
                    [(2 * i, 2 * i) for i in range(200)]),
    "far-and-open": (b"bytes=3000000-3000009, 4000000-", [(3000000, 3000009), (4000000, len(BIG) - 1)]),
}


@pytest.mark.parametrize("cache_control", [b"no-store", b"max-age=600"])
@pytest.mark.parametrize("name", sorted(MULTI))
@pytest_twisted.ensureDeferred
async def test_several_ranges_cost_the_origin_only_the_ranges(world, name, cache_control):  # type: ignore[no-untyped-def]
    o = world["o"]
    path = f"/multi-{name}-{cache_control.decode()}"
    o.routes[path] = ranged(o, BIG, cache_control)
    value, wanted = MULTI[name]
    o.sent = 0
    r, b = await world["client"].get(path, host="www.red.test", headers={"Range": value})
    assert r.code == 206
    requested = sum(last - first + 1 for first, last in wanted)
    await sleep(0.3)  # (nothing else is fetched behind the client's back for no-store)
    if cache_control == b"no-store":
        assert o.sent <= requested + MiB, (o.sent, requested)
    sent = b"bytes=0-0" if name == "empty-element" else value  # one range, sent clean
    assert [s.headers.get(b"range") for s in o.seen if s.path == path.encode()][0] == [sent]
    if len(wanted) == 1:
        first, last = wanted[0]
        assert b == BIG[first:last + 1]
        assert r.headers.getRawHeaders("content-range") == [f"bytes {first}-{last}/{len(BIG)}"]
    else:
        assert r.headers.getRawHeaders("content-type")[0].startswith("multipart/byteranges")
        for first, last in wanted:
            assert b"bytes %d-%d/%d\r\n\r\n%s\r\n" % (first, last, len(BIG), BIG[first:last + 1]) in b


@pytest_twisted.ensureDeferred
async def test_two_range_lines_are_passed_on_as_one_list(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    o.routes["/two-lines"] = ranged(o, BIG, b"no-store")
    o.sent = 0
    answer, _, _ = await send(world, b"GET /two-lines HTTP/1.1\r\nHost: www.red.test\r\n"
                              b"Range: bytes=0-0\r\nRange: bytes=2-2\r\nConnection: close\r\n\r\n")
    assert status(answer) == 206, answer[:300]
    assert b"multipart/byteranges" in answer and o.sent < MiB
    assert o.seen[-1].headers.get(b"range") == [b"bytes=0-0, 2-2"]


@pytest_twisted.ensureDeferred
async def test_several_ranges_of_a_stored_object_are_answered_from_the_cache(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    o.routes["/stored"] = ranged(o, BIG, b"max-age=600")
    client = world["client"]
    # An open range at the start asks for nearly all of it: it joins a whole fill.
    r, b = await client.get("/stored", host="www.red.test", headers={"Range": "bytes=0-,5-9"})
    assert (r.code, b) == (200, BIG)
    assert o.seen[-1].headers.get(b"range") is None
    r, b = await client.get("/stored", host="www.red.test", headers={"Range": "bytes=0-0,2-2"})
    assert (r.code, b, r.headers.getRawHeaders("x-cache")) == (200, BIG, ["HIT"])
    r, b = await client.get("/stored", host="www.red.test", headers={"Range": "bytes=5-9,"})
    assert (r.code, b, r.headers.getRawHeaders("x-cache")) == (206, BIG[5:10], ["HIT"])
    assert o.count("/stored") == 1


# -- F2 (8.3): another spelling of a dropped header is dropped too ------------------------------


@pytest_twisted.ensureDeferred
async def test_an_underscore_spelling_never_poisons_the_cache(world):  # type: ignore[no-untyped-def]
    for spelling in (b"X_Forwarded_Host", b"x_forwarded-host", b"X-Forwarded_Host"):
        path = b"/wsgi-" + spelling
        answer, _, _ = await send(world, b"GET " + path + b" HTTP/1.1\r\nHost: wsgi.red.test\r\n"
                                  + spelling + b": attacker.example\r\nConnection: close\r\n\r\n")
        assert status(answer) == 200, answer[:300]
        assert b"attacker" not in answer
        answer, _, _ = await send(world, b"GET " + path + b" HTTP/1.1\r\nHost: wsgi.red.test\r\n"
                                  b"Connection: close\r\n\r\n")
        assert b"X-Cache: HIT" in answer and answer.endswith(b"<a href='//-/'>")


@pytest_twisted.ensureDeferred
async def test_more_steering_headers_and_odd_names_never_reach_the_origin(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    steering = [b"X-Host", b"X-Forwarded-Prefix", b"True-Client-IP", b"Front-End-Https",
                b"X-Url-Scheme", b"X-Forwarded-Server", b"X_Original_URL", b"X.Forwarded.Host",
                b"X_HTTP_Method_Override", b"X_Custom"]
    answer, _, _ = await send(world, b"GET /steer2 HTTP/1.1\r\nHost: www.red.test\r\n" + b"".join(
        name + b": evil\r\n" for name in steering) + b"X-Kept-1: yes\r\nConnection: close\r\n\r\n")
    assert status(answer) == 200, answer[:300]
    seen = [s for s in o.seen if s.path == b"/steer2"][-1].headers
    assert not {n.lower() for n in steering} & set(seen), seen
    assert seen[b"x-kept-1"] == [b"yes"]
    # forward_headers still lets its header through, and not its other spellings.
    answer, _, _ = await send(world, b"GET /steer3 HTTP/1.1\r\nHost: fwd.red.test\r\n"
                              b"X-Forwarded-Host: a.example\r\nX_Forwarded_Host: b.example\r\n"
                              b"Connection: close\r\n\r\n")
    seen = [s for s in o.seen if s.path == b"/steer3"][-1].headers
    assert seen[b"x-forwarded-host"] == [b"a.example"] and b"x_forwarded_host" not in seen


# -- F5: no made-up Content-Type ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_answer_without_content_type_gets_none(world):  # type: ignore[no-untyped-def]
    for expected in (b"MISS", b"HIT"):
        answer, _, _ = await send(world, b"GET /noct HTTP/1.1\r\nHost: raw.red.test\r\n"
                                  b"Connection: close\r\n\r\n")
        head = head_of(answer)
        assert (status(answer), head[b"x-cache"]) == (200, expected), answer[:300]
        assert b"content-type" not in head, answer[:300]
    # The node's own answers still say theirs.
    answer, _, _ = await send(world, b"GET / HTTP/1.1\r\nHost: nowhere.test\r\nConnection: close\r\n\r\n")
    assert status(answer) == 404 and head_of(answer)[b"content-type"].startswith(b"text/plain")


# -- F6: a fragment in the target ----------------------------------------------------------------


@pytest.mark.parametrize("target", [b"/k13#a?b", b"/k13#", b"http://www.red.test/k13#x"])
@pytest_twisted.ensureDeferred
async def test_a_fragment_in_the_target_is_refused(world, target):  # type: ignore[no-untyped-def]
    o = world["o"]
    before = o.count("/k13")
    answer, _, _ = await send(world, b"GET " + target + b" HTTP/1.1\r\nHost: www.red.test\r\n"
                              b"Connection: close\r\n\r\n")
    assert status(answer) == 400, answer[:300]
    assert o.count("/k13") == before


# -- F7: framing and only-if-cached ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_absurd_origin_content_length_is_a_502(world):  # type: ignore[no-untyped-def]
    answer, _, _ = await send(world, b"GET /hugecl HTTP/1.1\r\nHost: raw.red.test\r\n"
                              b"Connection: close\r\n\r\n")
    assert status(answer) == 502, answer[:300]


@pytest_twisted.ensureDeferred
async def test_an_absurd_chunk_size_is_refused_at_once(world):  # type: ignore[no-untyped-def]
    answer, _, closed = await send(world, b"POST /up HTTP/1.1\r\nHost: www.red.test\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabcd")
    assert status(answer) == 413 and closed, answer[:300]
    # Within the limit, one chunk at a time: the size alone says it is too much.
    answer, _, closed = await send(world, b"POST /up HTTP/1.1\r\nHost: www.red.test\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n100001\r\nabcd")
    assert status(answer) == 413 and closed, answer[:300]


@pytest_twisted.ensureDeferred
async def test_transfer_encoding_with_a_tab_before_chunked_is_accepted(world):  # type: ignore[no-untyped-def]
    answer, _, _ = await send(world, b"POST /tab HTTP/1.1\r\nHost: www.red.test\r\n"
                              b"Transfer-Encoding:\tchunked\t\r\nConnection: close\r\n\r\n"
                              b"4\r\nabcd\r\n0\r\n\r\n")
    assert status(answer) == 200 and answer.endswith(b"ok /tab abcd"), answer[:300]


@pytest_twisted.ensureDeferred
async def test_bare_lf_in_a_chunked_body_is_a_400_at_once(world):  # type: ignore[no-untyped-def]
    for body in (b"4\nabcd\n0\n\n", b"4\r\nabcd\n0\r\n\r\n", b"4\r\nabcd\r\n0\n\n",
                 b"4\r\nabcd\r\n0\r\nX-T: 1\n\r\n"):
        answer, _, closed = await send(world, b"POST /lf HTTP/1.1\r\nHost: www.red.test\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n" + body, timeout=10.0)
        assert status(answer) == 400 and closed, (body, answer[:300])


@pytest_twisted.ensureDeferred
async def test_only_if_cached_never_asks_the_origin(world):  # type: ignore[no-untyped-def]
    o, client = world["o"], world["client"]
    for method in ("GET", "HEAD"):
        r, b = await client.get("/oic", host="www.red.test", method=method,
                                headers={"Cache-Control": "only-if-cached"})
        assert r.code == 504
    assert o.count("/oic") == 0
    r, b = await client.get("/oic", host="www.red.test")
    assert (r.code, b) == (200, b"cached later")
    r, b = await client.get("/oic", host="www.red.test",
                            headers={"Cache-Control": "max-age=5, only-if-cached"})
    assert (r.code, b, r.headers.getRawHeaders("x-cache")) == (200, b"cached later", ["HIT"])
    assert o.count("/oic") == 1
