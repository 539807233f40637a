"""
The log says what the origin did, not what cdnpull did: a body that
cdnpull itself stopped reading (the client left, a range was complete, the
client got a 304) is not an "origin body cut short"; a body the origin
really cut short still is.
"""

from __future__ import annotations

import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater
from twisted.web.server import NOT_DONE_YET

from .support import Client, Origin, cdn_started, write_config

pytestmark = pytest.mark.timeout(120)

BIG = bytes(range(256)) * (16 * 1024 * 1024 // 256)  # 16 MiB


def sleep(seconds: float):  # type: ignore[no-untyped-def]
    return deferLater(reactor, seconds, lambda: None)


def reset_after(port: int, request: bytes, read: int) -> int:
    """Send C{request}, read C{read} bytes, then close with a RST (blocking)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    got = 0
    try:
        s.sendall(request)
        while got < read:
            data = s.recv(65536)
            if not data:
                break
            got += len(data)
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    return got


@pytest_twisted.ensureDeferred
async def test_only_what_the_origin_cut_short_is_logged_as_cut_short(tmp_path):  # type: ignore[no-untyped-def]
    o = Origin("127.0.0.7", "logs").start()
    later = []
    o.text("/nostore.bin", BIG, headers={b"cache-control": b"no-store"})
    o.text("/bypass/big.bin", BIG, headers={b"cache-control": b"max-age=600"})
    o.text("/tagged.txt", b"tagged body " * 1000,
           headers={b"cache-control": b"no-store", b"etag": b'"v1"'})

    def short(request):  # type: ignore[no-untyped-def]
        request.setHeader(b"content-length", b"1000000")
        request.setHeader(b"cache-control", b"no-store")
        request.write(b"s" * 100000)
        later.append(reactor.callLater(0.1, request.transport.loseConnection))
        return NOT_DONE_YET

    o.routes["/short.bin"] = short
    config = write_config(str(tmp_path), f"""
        from cdnpull.config import CacheRule, Domain, IPOrigin
        domains = [Domain("logs.test.com", origin=IPOrigin(["{o.addr}"]), probe=None,
                          cache=[CacheRule(prefix="/bypass/", ttl=0)])]
        """)
    cdn = await cdn_started(config, str(tmp_path))
    try:
        client = Client(cdn.url)
        # The client leaves mid-body: through a shared fill, and through the pass-through relay.
        for path in ("/nostore.bin", "/bypass/big.bin"):
            got = await threads.deferToThread(
                reset_after, cdn.port,
                b"GET %s HTTP/1.1\r\nHost: logs.test.com\r\n\r\n" % path.encode(), 256 * 1024)
            assert got >= 256 * 1024
        # A range of an answer that is not stored: cdnpull stops once it has the range.
        r, b = await client.get("/nostore.bin", host="logs.test.com", headers={"Range": "bytes=0-99"})
        assert (r.code, b) == (206, BIG[:100])
        # The client's own validator matches: a 304, the origin's body is not wanted.
        r, b = await client.get("/tagged.txt", host="logs.test.com", headers={"If-None-Match": '"v1"'})
        assert r.code == 304
        # A body the origin really cuts short.
        r = await client.http.request("GET", cdn.url + "/short.bin",
                                      headers={"Host": "logs.test.com"})
        try:
            await r.content()
        except Exception:  # noqa: BLE001 - the client sees it is short
            pass
        await sleep(1.0)
        log = cdn.log()
        cut = [line for line in log.splitlines() if "cut short" in line]
        assert len(cut) == 1 and "short.bin" in cut[0], "\n".join(cut)
        assert "after 100000 bytes: the origin closed the connection" in cut[0]
        assert "Traceback" not in log
    finally:
        cdn.stop()
        for c in later:
            if c.active():
                c.cancel()
        await o.stop()
