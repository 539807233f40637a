"""
Hits answered by the connection itself (no twisted.web request), across the
wire against a real C{twistd cdnpull}: large bodies that do not fit the
socket at once, pipelined hits among misses, HEAD, 304 and Connection: close.
"""

from __future__ import annotations

import hashlib
import socket
import time

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from .support import Client, Origin, raw_exchange, cdn_started, write_config

pytestmark = pytest.mark.timeout(120)

BIG = hashlib.sha256(b"fast").digest() * (8 * 1024 * 1024 // 32)  # 8 MiB: more than a socket takes
H = b"Host: www.test.com\r\n"


@pytest_twisted.async_yield_fixture(scope="module")
async def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("fast")
    o = Origin("127.0.0.2", "origin").start()
    cacheable = {b"cache-control": b"max-age=600", b"etag": b'"e1"'}
    o.text("/big", BIG, headers=cacheable)
    o.text("/small", b"small body", headers=cacheable)
    o.routes["/private"] = lambda r: b"private " + r.path
    config = write_config(str(d), f"""
        from cdnpull.config import Domain, IPOrigin, Settings
        settings = Settings(client_idle_timeout=5.0)
        domains = [Domain("www.test.com", origin=IPOrigin(["{o.addr}"]), probe=None)]
        """)
    cdn = await cdn_started(config, str(d))
    client = Client(cdn.url)
    for path in ("/big", "/small"):
        response, body = await client.get(path, host="www.test.com")
        assert response.code == 200
    yield dict(cdn=cdn, o=o)
    cdn.stop()
    log = cdn.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-5000:]
    await o.stop()


def read_slowly(port: int, request: bytes, want: int) -> bytes:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(request)
    time.sleep(0.3)  # the node's send buffer fills: the rest waits in the node
    chunks, got = [], 0
    s.settimeout(10)
    while got < want:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    s.close()
    return b"".join(chunks)


@pytest_twisted.ensureDeferred
async def test_a_large_hit_arrives_whole_at_a_slow_reader(world):  # type: ignore[no-untyped-def]
    port = world["cdn"].port
    request = b"GET /big HTTP/1.1\r\n" + H + b"\r\n"
    last = b"GET /big HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
    answer = await deferToThread(read_slowly, port, request + last, 2 * (len(BIG) + 1000))
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert b"X-Cache: HIT" in first and b"Content-Length: %d" % len(BIG) in first
    assert rest[:len(BIG)] == BIG
    second, _, body = rest[len(BIG):].partition(b"\r\n\r\n")
    assert second.startswith(b"HTTP/1.1 200 ") and body == BIG
    assert world["o"].count("/big") == 1


@pytest_twisted.ensureDeferred
async def test_pipelined_hits_and_misses_are_answered_in_order(world):  # type: ignore[no-untyped-def]
    port = world["cdn"].port
    data = (b"GET /small HTTP/1.1\r\n" + H + b"\r\n"
            b"GET /private HTTP/1.1\r\n" + H + b"\r\n"
            b"HEAD /small HTTP/1.1\r\n" + H + b"\r\n"
            b"GET /small HTTP/1.1\r\n" + H + b'If-None-Match: "e1"\r\n\r\n'
            b"GET /small HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    answer, _, closed = await deferToThread(raw_exchange, port, data)
    assert closed
    parts = answer.split(b"HTTP/1.1 ")[1:]
    assert [p[:3] for p in parts] == [b"200", b"200", b"200", b"304", b"200"]
    assert parts[0].endswith(b"small body") and b"X-Cache: HIT" in parts[0]
    assert parts[1].endswith(b"private /private") and b"X-Cache: MISS" in parts[1]
    assert parts[2].endswith(b"\r\n\r\n") and b"Content-Length: 10" in parts[2]
    assert b"Connection: close" in parts[4] and parts[4].endswith(b"small body")
    for part in parts:
        assert b"Server: cdnpull" in part and b"Age: " in part
