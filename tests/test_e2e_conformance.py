"""
Cache conformance across the wire (a real C{twistd cdnpull}, a real origin):
invalidation by unsafe methods, CDN-Cache-Control, headers named in
Connection.
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList
from twisted.internet.threads import deferToThread

from .support import Client, Origin, cdn_started, write_config

pytestmark = pytest.mark.timeout(120)

HOST = "www.test.com"


def versioned(origin: Origin, path: str, headers: dict) -> None:
    """GET answers v1, v2, ... (one more per origin request); other methods 200 "done"."""
    state = {"n": 0}

    def handler(request):  # type: ignore[no-untyped-def]
        for k, v in headers.items():
            request.setHeader(k, v)
        if request.method != b"GET":
            return b"done"
        state["n"] += 1
        return b"v%d" % state["n"]
    origin.routes[path] = handler


@pytest_twisted.async_yield_fixture(scope="module")
async def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("conform")
    o = Origin("127.0.0.2", "origin").start()
    config = write_config(str(d), f"""
        from cdnpull.config import Domain, IPOrigin, Settings
        settings = Settings(targeted_cache_control=["CDNPull-Cache-Control", "CDN-Cache-Control"])
        domains = [Domain("{HOST}", origin=IPOrigin(["{o.addr}"]), probe=None),
                   Domain("fwd.test.com", origin=IPOrigin(["{o.addr}"]), probe=None,
                          forward_headers=["X-Forwarded-Host"])]
        """)
    cdn = await cdn_started(config, str(d))
    yield dict(cdn=cdn, client=Client(cdn.url), o=o)
    cdn.stop()
    await DeferredList([o.stop()])


async def get(world, path, **kw):  # type: ignore[no-untyped-def]
    response, body = await world["client"].get(path, host=HOST, **kw)
    return response, body


def xcache(response) -> bytes:  # type: ignore[no-untyped-def]
    return response.headers.getRawHeaders(b"x-cache", [b""])[0]


# -- invalidation (RFC 9111 section 4.4) ---------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "M-SEARCH"])
@pytest_twisted.ensureDeferred
async def test_a_successful_unsafe_request_invalidates_its_target(world, method):  # type: ignore[no-untyped-def]
    path = f"/inv-{method}"
    versioned(world["o"], path, {b"cache-control": b"max-age=600"})
    assert (await get(world, path))[1] == b"v1"
    r, body = await get(world, path)
    assert body == b"v1" and xcache(r) == b"HIT"
    r, body = await get(world, path, method=method, data=b"x" if method != "DELETE" else None)
    assert r.code == 200 and body == b"done"
    r, body = await get(world, path)
    assert body == b"v2" and xcache(r) == b"MISS"


@pytest_twisted.ensureDeferred
async def test_invalidation_reaches_answers_keyed_by_forwarded_headers(world):  # type: ignore[no-untyped-def]
    versioned(world["o"], "/fwd", {b"cache-control": b"max-age=600"})
    client = world["client"]
    for value in ("a.example", "b.example"):
        await client.get("/fwd", host="fwd.test.com", headers={"X-Forwarded-Host": value})
    r, body = await client.get("/fwd", host="fwd.test.com", headers={"X-Forwarded-Host": "b.example"})
    assert body == b"v2" and xcache(r) == b"HIT"
    await client.get("/fwd", host="fwd.test.com", method="POST", data=b"x")
    r, body = await client.get("/fwd", host="fwd.test.com", headers={"X-Forwarded-Host": "a.example"})
    assert body == b"v3" and xcache(r) == b"MISS"


@pytest_twisted.ensureDeferred
async def test_location_and_content_location_of_the_same_host_are_invalidated(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    for p in ("/made", "/where", "/elsewhere"):
        versioned(o, p, {b"cache-control": b"max-age=600"})
        await get(world, p)
        assert xcache((await get(world, p))[0]) == b"HIT"

    def form(request):  # type: ignore[no-untyped-def]
        request.setResponseCode(201)
        request.setHeader(b"location", b"/made")
        request.setHeader(b"content-location", f"http://{HOST}:8080/where".encode())
        return b"created"
    o.routes["/forms/new"] = form
    r, _ = await get(world, "/forms/new", method="POST", data=b"a=1")
    assert r.code == 201
    assert (await get(world, "/made"))[1] == b"v2"
    assert (await get(world, "/where"))[1] == b"v2"
    # Another host's URI is never invalidated by this one's answer.
    o.routes["/forms/other"] = lambda request: (
        request.setHeader(b"location", b"http://other.test.com/elsewhere"), b"ok")[1]
    await get(world, "/forms/other", method="POST", data=b"a=1")
    r, body = await get(world, "/elsewhere")
    assert body == b"v1" and xcache(r) == b"HIT"


@pytest_twisted.ensureDeferred
async def test_a_failed_unsafe_request_invalidates_nothing(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    versioned(o, "/keep", {b"cache-control": b"max-age=600"})
    await get(world, "/keep")

    def refuse(request):  # type: ignore[no-untyped-def]
        if request.method == b"POST":
            request.setResponseCode(500)
            return b"no"
        return b"never asked"
    cached = o.routes["/keep"]
    o.routes["/keep"] = lambda request: refuse(request) if request.method == b"POST" else cached(request)
    r, _ = await get(world, "/keep", method="POST", data=b"x")
    assert r.code == 500
    r, body = await get(world, "/keep")
    assert body == b"v1" and xcache(r) == b"HIT"


# -- CDN-Cache-Control (RFC 9213) ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cdn_cache_control_wins_over_cache_control_and_never_reaches_clients(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    versioned(o, "/cdn-store", {b"cache-control": b"no-store", b"cdn-cache-control": b"max-age=600"})
    versioned(o, "/cdn-nostore", {b"cache-control": b"max-age=600", b"cdn-cache-control": b"no-store"})
    versioned(o, "/cdn-private", {b"cache-control": b"max-age=600", b"cdn-cache-control": b"private"})
    for _ in range(2):
        r, body = await get(world, "/cdn-store")
    assert body == b"v1" and xcache(r) == b"HIT"
    # The client gets the origin's Cache-Control, not the node's own field.
    assert r.headers.getRawHeaders(b"cache-control") == [b"no-store"]
    assert not r.headers.hasHeader(b"cdn-cache-control")
    for path in ("/cdn-nostore", "/cdn-private"):
        for _ in range(2):
            r, body = await get(world, path)
        assert body == b"v2" and xcache(r) == b"MISS", path
        assert not r.headers.hasHeader(b"cdn-cache-control")


@pytest_twisted.ensureDeferred
async def test_targeted_fields_are_obeyed_in_the_configured_order(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    # Settings(targeted_cache_control=["CDNPull-Cache-Control", "CDN-Cache-Control"])
    versioned(o, "/ours-first", {b"cdnpull-cache-control": b"max-age=600",
                                 b"cdn-cache-control": b"no-store", b"cache-control": b"no-store"})
    versioned(o, "/ours-invalid", {b"cdnpull-cache-control": b"max-age=&",
                                   b"cdn-cache-control": b"no-store", b"cache-control": b"max-age=600"})
    for _ in range(2):
        r, body = await get(world, "/ours-first")
    assert body == b"v1" and xcache(r) == b"HIT"
    for name in (b"cdnpull-cache-control", b"cdn-cache-control"):
        assert not r.headers.hasHeader(name)
    for _ in range(2):
        r, body = await get(world, "/ours-invalid")
    assert body == b"v2" and xcache(r) == b"MISS"  # an invalid field falls to the next one


@pytest_twisted.ensureDeferred
async def test_targeted_fields_do_not_pass_through_uncached_answers(world):  # type: ignore[no-untyped-def]
    world["o"].text("/post-cdn", b"ok", headers={b"cdn-cache-control": b"max-age=600"})
    r, _ = await get(world, "/post-cdn", method="POST", data=b"x")
    assert r.code == 200 and not r.headers.hasHeader(b"cdn-cache-control")


# -- Connection (RFC 9110 section 7.6.1) -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_headers_named_in_the_origins_connection_are_neither_stored_nor_forwarded(world):  # type: ignore[no-untyped-def]
    world["o"].text("/hop", b"hop", headers={
        b"cache-control": b"max-age=600", b"connection": b"x-hop, X-Other",
        b"x-hop": b"for the node only", b"x-other": b"also", b"x-kept": b"yes"})
    for expected in (b"MISS", b"HIT"):
        r, body = await get(world, "/hop")
        assert body == b"hop" and xcache(r) == expected
        assert not r.headers.hasHeader(b"x-hop") and not r.headers.hasHeader(b"x-other")
        assert r.headers.getRawHeaders(b"x-kept") == [b"yes"]


def _raw(port: int, request: bytes) -> bytes:
    """Send C{request} as is; read the answer (interim heads, the final head and its Content-Length of body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while True:
            rest = out
            while rest.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in rest:
                rest = rest.split(b"\r\n\r\n", 1)[1]
            head, sep, body = rest.partition(b"\r\n\r\n")
            if sep:
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(body) >= length[0]:
                    return out
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


@pytest_twisted.ensureDeferred
async def test_headers_named_in_the_clients_connection_do_not_reach_the_origin(world):  # type: ignore[no-untyped-def]
    o = world["o"]
    o.text("/client-hop", b"seen")
    answer = await deferToThread(_raw, world["cdn"].port, (
        f"GET /client-hop HTTP/1.1\r\nHost: {HOST}\r\nConnection: X-Client-Hop\r\n"
        "X-Client-Hop: secret\r\nX-Client-Kept: yes\r\n\r\n").encode())
    assert answer.startswith(b"HTTP/1.1 200")
    seen = [s for s in o.seen if s.path == b"/client-hop"][-1]
    assert b"x-client-hop" not in seen.headers
    assert seen.headers[b"x-client-kept"] == [b"yes"]


# -- interim answers (RFC 9110 section 15.2) ------------------------------------------------


def _answers(raw: bytes) -> list:
    """The status lines and header blocks of every head in C{raw}."""
    out = []
    for block in raw.split(b"\r\n\r\n"):
        if block.startswith(b"HTTP/1.1 "):
            lines = block.split(b"\r\n")
            out.append((lines[0], {l.split(b":")[0].lower(): l.split(b":", 1)[1].strip() for l in lines[1:]}))
    return out


@pytest_twisted.ensureDeferred
async def test_an_early_hints_answer_reaches_the_client_first_and_is_never_stored(world):  # type: ignore[no-untyped-def]
    o = world["o"]

    def hints(request):  # type: ignore[no-untyped-def]
        request.transport.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n"
                                b"X-Hint: 1\r\n\r\n")
        request.setHeader(b"cache-control", b"max-age=600")
        return b"final"
    o.routes["/hints"] = hints
    ask = (f"GET /hints HTTP/1.1\r\nHost: {HOST}\r\n\r\n").encode()
    first = _answers(await deferToThread(_raw, world["cdn"].port, ask))
    assert [status for status, _ in first] == [b"HTTP/1.1 103 Early Hints", b"HTTP/1.1 200 OK"]
    assert first[0][1][b"link"] == b"</style.css>; rel=preload"
    assert b"x-hint" not in first[1][1] and first[1][1][b"x-cache"] == b"MISS"
    # From the cache: the final answer only, without the hint's headers.
    second = _answers(await deferToThread(_raw, world["cdn"].port, ask))
    assert [status for status, _ in second] == [b"HTTP/1.1 200 OK"]
    assert second[0][1][b"x-cache"] == b"HIT" and b"x-hint" not in second[0][1]
