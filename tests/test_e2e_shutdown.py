"""
A stop (SIGTERM, `systemctl stop`) loses no request that had started: the
listeners close, idle keep-alive connections close at once, and answers in
progress finish (within Settings.shutdown_grace) before the origin
connections close -- so none of them is failed, or sent to the standby,
because its origin connection was closed under it.
"""

from __future__ import annotations

import signal
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater
from twisted.web.server import NOT_DONE_YET

from .support import Origin, cdn_started, write_config

pytestmark = pytest.mark.timeout(60)


def get_slowly_answered(port: int, path: str) -> bytes:
    """One GET on its own connection; the whole answer (blocking)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: stop.test\r\nConnection: close\r\n\r\n" % path.encode())
        out = b""
        while True:
            data = s.recv(65536)
            if not data:
                return out
            out += data
    finally:
        s.close()


def idle_keepalive(port: int) -> float:
    """A keep-alive connection after one answer: seconds until the node closes it."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(b"GET /fast HTTP/1.1\r\nHost: stop.test\r\n\r\n")
        head = s.recv(65536)
        assert head.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        while s.recv(65536):
            pass
        return time.monotonic() - started
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_answers_in_progress_finish_when_the_node_stops(tmp_path):  # type: ignore[no-untyped-def]
    primary = Origin("127.0.0.2", "primary").start()
    standby = Origin("127.0.0.3", "standby").start()
    calls: list = []

    def slow(request):  # type: ignore[no-untyped-def]
        request.setHeader(b"cache-control", request.path.endswith(b"nostore") and b"no-store"
                          or b"max-age=60")
        request.setHeader(b"content-length", b"6")

        def answer() -> None:
            if not request._disconnected:
                request.write(b"whole!")
                request.finish()

        calls.append(reactor.callLater(1.5, answer))
        return NOT_DONE_YET

    for name in ("/slow-nostore", "/slow-cached"):
        primary.routes[name] = slow
    primary.text("/fast", b"fast")
    config = write_config(str(tmp_path), f"""
        from cdnpull.config import Domain, IPOrigin, Settings
        settings = Settings(shutdown_grace=5)
        domains = [Domain("stop.test", origin=IPOrigin(["{primary.addr}"]),
                          standby=IPOrigin(["{standby.addr}"]), probe=None)]
        """)
    cdn = await cdn_started(config, str(tmp_path))
    try:
        idle = threads.deferToThread(idle_keepalive, cdn.port)
        answers = [threads.deferToThread(get_slowly_answered, cdn.port, path)
                   for path in ("/slow-nostore", "/slow-cached")]
        while len(primary.seen) < 3:
            await deferLater(reactor, 0.02, lambda: None)
        cdn.proc.send_signal(signal.SIGTERM)
        # The idle connection goes at once, not after the slow answers.
        assert await idle < 1.0
        for d in answers:
            got = await d
            assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"\r\n\r\nwhole!"), got[:200]
        code = await threads.deferToThread(cdn.proc.wait, 10)
        assert code in (0, -15)
        log = cdn.log()
        assert "failing over" not in log and "Traceback" not in log
        assert standby.seen == []
    finally:
        cdn.stop()
        for c in calls:
            if c.active():
                c.cancel()
        await primary.stop()
        await standby.stop()
