"""
Hostile clients and broken origins, over raw sockets, against a real
C{twistd cdnpull} with short limits and timeouts.  A recording origin proves
that nothing smuggled ever reaches it.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from .support import Client, Origin, RawOrigin, raw_exchange, cdn_started, write_config

pytestmark = pytest.mark.timeout(120)

H = b"Host: www.test.com\r\n"


def sleep(seconds: float):  # type: ignore[no-untyped-def]
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.async_yield_fixture(scope="module")
async def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("hostile")
    o = Origin("127.0.0.2", "origin").start()
    o.routes["*"] = lambda r: b"ok " + r.path
    o.text("/big", b"B" * (64 * 1024 * 1024))
    raw = RawOrigin("127.0.0.3")
    config = write_config(str(d), f"""
        from cdnpull.config import Domain, IPOrigin, Settings
        settings = Settings(client_header_timeout=1.0, client_idle_timeout=2.0,
                            client_send_timeout=2.0, client_max_body="1MiB",
                            client_max_request_line=2048, client_max_header_line=1024,
                            client_max_header_bytes=4096, client_max_headers=20)
        domains = [
            Domain("www.test.com", origin=IPOrigin(["{o.addr}"]), probe=None),
            Domain("raw.test.com", origin=IPOrigin(["{raw.addr}"]), probe=None,
                   first_byte_timeout=3.0),
        ]
        """)
    cdn = await cdn_started(config, str(d))
    yield dict(cdn=cdn, o=o, raw=raw)
    cdn.stop()
    log = cdn.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-5000:]
    await DeferredList([o.stop(), raw.stop()])


async def send(world, data: bytes, timeout: float = 5.0, **kw):  # type: ignore[no-untyped-def]
    return await deferToThread(raw_exchange, world["cdn"].port, data, timeout, **kw)


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


# -- framing: refused, nothing forwarded ----------------------------------------------

SMUGGLE = b"GET /smuggled HTTP/1.1\r\n" + H + b"\r\n"

BAD_REQUESTS = {
    "cl+te": b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "te+cl": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "two-cl": b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nContent-Length: 40\r\n\r\nabcd" + SMUGGLE,
    "cl-list": b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 4, 40\r\n\r\nabcd" + SMUGGLE,
    "cl-sign": b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: +4\r\n\r\nabcd" + SMUGGLE,
    "te-case": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: Chunked\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "te-list": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "te-gzip": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "te-chunked-last-not": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "te-twice": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "te-space-name": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "te-xchunked": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "chunk-hex-prefix": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x4\r\nabcd\r\n0\r\n\r\n" + SMUGGLE,
    "chunk-negative": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-4\r\nabcd\r\n0\r\n\r\n" + SMUGGLE,
    "chunk-no-crlf": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcdXX0\r\n\r\n" + SMUGGLE,
    "chunk-space": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n 4\r\nabcd\r\n0\r\n\r\n" + SMUGGLE,
    "nul-header": b"GET /a HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n",
    "ctl-header": b"GET /a HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n",
    "obs-fold": b"GET /a HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n",
    "obs-fold-te": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "bare-lf-request-line": b"GET /a HTTP/1.1\n" + H + b"\r\n",
    "bare-lf-header": b"GET /a HTTP/1.1\r\nHost: www.test.com\nX-A: b\r\n\r\n",
    "bare-cr": b"GET /a HTTP/1.1\r\nX-A: a\rb\r\n" + H + b"\r\n",
    "no-colon": b"GET /a HTTP/1.1\r\n" + H + b"Garbage\r\n\r\n",
    "bad-request-line": b"GET /a HTTP/1.1 extra\r\n" + H + b"\r\n",
    "tab-request-line": b"GET\t/a HTTP/1.1\r\n" + H + b"\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
@pytest_twisted.ensureDeferred
async def test_ambiguous_or_malformed_framing_is_refused_and_never_forwarded(world, name):  # type: ignore[no-untyped-def]
    o = world["o"]
    before = len(o.seen)
    answer, _, closed = await send(world, BAD_REQUESTS[name])
    assert status(answer) == 400, answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1  # one answer, nothing for a smuggled request
    assert closed
    await sleep(0.1)
    assert len(o.seen) == before, [s.path for s in o.seen[before:]]
    assert o.count("/smuggled") == 0


@pytest_twisted.ensureDeferred
async def test_a_good_chunked_body_is_reframed_and_pipelined_requests_answered_in_order(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    o.routes["/echo"] = lambda r: b"got " + r.content.read()
    data = (b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
            b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\n\r\n"
            b"GET /second HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    answer, _, _ = await send(world, data)
    assert answer.count(b"HTTP/1.1 200 ") == 2
    assert answer.index(b"got abcdefg") < answer.index(b"ok /second")
    seen = [s for s in o.seen if s.path == b"/echo"][-1]
    # Re-framed by the node: its own chunks, never the client's bytes.
    assert seen.headers.get(b"transfer-encoding") == [b"chunked"]
    assert b"content-length" not in seen.headers


# -- limits --------------------------------------------------------------------------


LIMITS = [
    ("request-line", b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("request-line-unterminated", b"GET /" + b"a" * 9000, 414),
    ("header-line", b"GET /a HTTP/1.1\r\n" + H + b"X-Big: " + b"b" * 2000 + b"\r\n\r\n", 431),
    ("all-headers", b"GET /a HTTP/1.1\r\n" + H + b"".join(b"X-%d: %s\r\n" % (i, b"c" * 900) for i in range(6)) + b"\r\n", 431),
    ("header-count", b"GET /a HTTP/1.1\r\n" + H + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) + b"\r\n", 431),
    ("body-by-length", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 2147483648\r\n\r\n", 413),
    ("body-chunked", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     + b"".join(b"10000\r\n" + b"d" * 0x10000 + b"\r\n" for _ in range(20)) + b"0\r\n\r\n", 413),
]


@pytest.mark.parametrize("name,data,code", LIMITS, ids=[case[0] for case in LIMITS])
@pytest_twisted.ensureDeferred
async def test_limits_answer_with_the_right_status_quickly(world, name, data, code):  # type: ignore[no-untyped-def]
    o = world["o"]
    before = len(o.seen)
    answer, took, closed = await send(world, data)
    assert status(answer) == code, answer[:200]
    assert closed  # answered and closed by the node, not ended by the client's 5 s timeout
    assert len(o.seen) == before
    # The node keeps serving others.
    response, body = await Client(world["cdn"].url).get("/fine", host="www.test.com")
    assert (response.code, body) == (200, b"ok /fine")


# -- timeouts -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_slow_headers_are_cut_off(world):  # type: ignore[no-untyped-def]
    answer, took, closed = await send(world, b"GET /a HTTP/1.1\r\n" + H, timeout=10)
    # Cut off by the header timeout (408), not by the client's 10 s; not before
    # the 1 s it allows (a lower bound only: a busy machine is never early).
    assert closed and status(answer) == 408
    assert took >= 0.9, took


@pytest_twisted.ensureDeferred
async def test_a_byte_at_a_time_does_not_keep_headers_open(world):  # type: ignore[no-untyped-def]
    import socket

    def drip() -> tuple[bool, float]:
        s = socket.create_connection(("127.0.0.1", world["cdn"].port))
        start = time.monotonic()
        try:
            for b in b"GET /a HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                try:
                    s.send(bytes([b]))
                except OSError:
                    return True, time.monotonic() - start
                time.sleep(0.2)
                s.setblocking(False)
                try:
                    if s.recv(1024) == b"":
                        return True, time.monotonic() - start
                except BlockingIOError:
                    pass
                except OSError:
                    return True, time.monotonic() - start
                s.setblocking(True)
            return False, time.monotonic() - start
        finally:
            s.close()

    # Closed while bytes still trickle in (all of them would take 20 s).
    closed, took = await deferToThread(drip)
    assert closed, took


@pytest_twisted.ensureDeferred
async def test_idle_keep_alive_connection_is_closed(world):  # type: ignore[no-untyped-def]
    answer, took, closed = await send(world, b"GET /a HTTP/1.1\r\n" + H + b"\r\n", timeout=10)
    # Closed by the node (the client would wait 10 s), not before its 2 s.
    assert status(answer) == 200 and closed
    assert took >= 1.8, took


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_cut_off(world):  # type: ignore[no-untyped-def]
    import socket

    def stall() -> tuple[float, int]:
        s = socket.create_connection(("127.0.0.1", world["cdn"].port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /big HTTP/1.1\r\n" + H + b"\r\n")
        start = time.monotonic()
        time.sleep(6)  # read nothing
        got = 0
        s.settimeout(5)
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
        except OSError:
            pass
        s.close()
        return time.monotonic() - start, got

    took, got = await deferToThread(stall)
    assert got < 64 * 1024 * 1024  # it never got the whole body
    assert "it read nothing for 2 s" in world["cdn"].log()


# -- broken origins -----------------------------------------------------------------


def ok(body: bytes = b"fine") -> list:
    return [(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body), None)]


ORIGIN_FAULTS = {
    "/garbage": [(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "close")],
    "/http09": [(b"<html>hello</html>", "close")],
    "/cut-head": [(b"HTTP/1.1 200 OK\r\nContent-Len", "close")],
    "/bad-cl": [(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nabc", None)],
    "/two-cl": [(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", None)],
    "/cl-list": [(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!", None)],
    "/cl-te": [(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", None)],
    "/te-gzip": [(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", None)],
    "/bare-lf": [(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi", None)],
    "/obs-fold": [(b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nhi", None)],
    "/nul": [(b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nhi", None)],
    "/huge-head": [(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"h" * 1000) for i in range(80))
                    + b"Content-Length: 2\r\n\r\nhi", None)],
}


@pytest.mark.parametrize("path", sorted(ORIGIN_FAULTS))
@pytest_twisted.ensureDeferred
async def test_an_invalid_origin_answer_is_a_502(world, path):  # type: ignore[no-untyped-def]
    raw, cdn = world["raw"], world["cdn"]
    raw.script[path] = ORIGIN_FAULTS[path]
    raw.script["/after"] = ok(b"clean")
    response, body = await Client(cdn.url).get(path, host="raw.test.com")
    assert response.code == 502, body
    assert body.startswith(b"502 ")
    response, body = await Client(cdn.url).get("/after", host="raw.test.com")
    assert (response.code, body) == (200, b"clean")


BROKEN_BODIES = [
    ("/bad-chunk", [(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\nZZ\r\nworld\r\n0\r\n\r\n", None)]),
    ("/reset", [(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 100000\r\n\r\n"
                 + b"r" * 50000, 0.05), (b"", "abort")]),
    ("/short", [(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 100\r\n\r\nshort", "close")]),
]


@pytest.mark.parametrize("path,steps", BROKEN_BODIES, ids=[case[0] for case in BROKEN_BODIES])
@pytest_twisted.ensureDeferred
async def test_a_body_broken_after_the_headers_aborts_the_client_and_is_never_cached(world, path, steps):  # type: ignore[no-untyped-def]
    raw, cdn = world["raw"], world["cdn"]
    raw.script[path] = steps
    raw.script["/after"] = ok(b"clean")
    for attempt in (1, 2):
        request = b"GET %s HTTP/1.1\r\nHost: raw.test.com\r\n\r\n" % path.encode()
        answer, took, closed = await send(world, request)
        assert status(answer) == 200 and closed
        head, _, body = answer.partition(b"\r\n\r\n")
        declared = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
        # The client can tell: either the length is short of what was declared,
        # or (chunked) the terminating chunk never came.
        if declared:
            assert len(body) < declared[0]
        else:
            assert not body.endswith(b"0\r\n\r\n")
        assert raw.count(path) == attempt  # never a HIT
    response, body = await Client(cdn.url).get("/after", host="raw.test.com")
    assert (response.code, body) == (200, b"clean")


@pytest.mark.parametrize("delay", [None, 0.05])
@pytest_twisted.ensureDeferred
async def test_bytes_after_a_response_never_reach_the_next_one(world, delay):  # type: ignore[no-untyped-def]
    raw, cdn = world["raw"], world["cdn"]
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"
    path = f"/extra-{delay}"
    if delay is None:
        raw.script[path] = [(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + smuggled, None)]
    else:
        raw.script[path] = [(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", delay), (smuggled, None)]
    raw.script["/next"] = ok(b"genuine")
    client = Client(cdn.url)
    response, body = await client.get(path, host="raw.test.com")
    assert body == b"hello"
    await sleep(0.2)
    for _ in range(3):
        response, body = await client.get("/next", host="raw.test.com")
        assert (response.code, body) == (200, b"genuine")
    at = max(i for i, (_, p) in enumerate(raw.requests) if p == path)
    conn_of_bad = raw.requests[at][0]
    later = [c for c, p in raw.requests[at + 1:] if p == "/next"]
    assert len(later) == 3 and conn_of_bad not in later  # the connection was dropped
    assert "connection dropped" in cdn.log()


@pytest_twisted.ensureDeferred
async def test_the_admin_api_is_not_on_the_client_port(world):  # type: ignore[no-untyped-def]
    for path in ("/api/domains", "/metrics", "/"):
        response, body = await Client(world["cdn"].url).get(path, host="www.test.com")
        assert body == b"ok " + path.encode()  # an ordinary path of the site


@pytest_twisted.ensureDeferred
async def test_an_upload_streams_to_the_origin_while_it_arrives(world):  # type: ignore[no-untyped-def]
    import socket

    raw = world["raw"]
    # The origin answers 1.5 s after the request's head; meanwhile it counts
    # the body bytes that reach it.
    raw.script["/upload"] = [(b"", 1.5), (b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone", None)]
    half = 100000
    seen = []

    def client() -> bytes:
        s = socket.create_connection(("127.0.0.1", world["cdn"].port))
        start = raw.bytes_received
        s.sendall(b"PUT /upload HTTP/1.1\r\nHost: raw.test.com\r\nContent-Length: %d\r\n\r\n" % (2 * half)
                  + b"x" * half)
        time.sleep(0.7)
        seen.append(raw.bytes_received - start)  # before the second half is sent
        s.sendall(b"y" * half)
        s.settimeout(5)
        out = b""
        while b"done" not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        s.close()
        return out

    answer = await deferToThread(client)
    assert answer.startswith(b"HTTP/1.1 201 ") and answer.endswith(b"done")
    assert seen[0] >= half  # the first half was at the origin before the rest was sent
    assert raw.bytes_received >= 2 * half


@pytest_twisted.ensureDeferred
async def test_an_answer_before_the_upload_ends_closes_the_connection(world):  # type: ignore[no-untyped-def]
    raw = world["raw"]
    raw.script["/early"] = [(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno", None)]
    head = b"PUT /early HTTP/1.1\r\nHost: raw.test.com\r\nContent-Length: 1000000\r\n\r\n"
    answer, took, closed = await send(world, head + b"z" * 1000, timeout=5, pause=0.3)
    assert answer.startswith(b"HTTP/1.1 403 ") and answer.endswith(b"no")
    assert closed  # the rest of the body can never be taken for a next request


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_mid_upload_ends_the_origin_request(world):  # type: ignore[no-untyped-def]
    raw = world["raw"]
    raw.script["/left"] = [(b"", 5.0), (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", None)]
    before = raw.connections
    head = b"PUT /left HTTP/1.1\r\nHost: raw.test.com\r\nContent-Length: 1000000\r\n\r\n"
    await send(world, head + b"z" * 5000, timeout=0.5, read=False)
    # The client is gone: the origin connection made for its upload ends too
    # (an origin would otherwise wait for the other 995000 bytes).
    opened: list = []
    # Sooner than the domain's 3 s first-byte timeout, which would end it anyway.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        opened = list(range(before + 1, raw.connections + 1))
        if opened and set(opened) <= raw.closed:
            break
        await sleep(0.03)
    assert opened, "the upload never reached the origin"
    assert set(opened) <= raw.closed, "the abandoned upload's origin connection is still open"
    # The node is fine and serves the next request.
    raw.script["/after"] = ok(b"clean")
    response, body = await Client(world["cdn"].url).get("/after", host="raw.test.com")
    assert (response.code, body) == (200, b"clean")
