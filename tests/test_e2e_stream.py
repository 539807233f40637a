"""
Streaming with flow control and cancellation, across the wire: a client that
stops reading pauses the origin (cdnpull does not buffer the body), and a
client that leaves cancels its origin request.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import deferLater
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer
from twisted.internet.interfaces import IPullProducer

from .support import Origin, cdn_started, write_config

pytestmark = pytest.mark.timeout(90)

BIG = 256 * 1024 * 1024  # bytes the origin would send if nobody pushed back
CHUNK = 256 * 1024


@implementer(IPullProducer)
class Endless:
    """Writes a big body a chunk at a time, as fast as the connection takes it."""

    def __init__(self, request, stats: dict) -> None:  # type: ignore[no-untyped-def]
        self.request, self.stats = request, stats

    def resumeProducing(self) -> None:
        if self.stats["sent"] >= BIG:
            self.request.unregisterProducer()
            self.request.finish()
            return
        self.stats["sent"] += CHUNK
        self.request.write(b"x" * CHUNK)

    def stopProducing(self) -> None:
        self.stats["stopped"] = True


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class SlowReader(Protocol):
    """Sends one request, reads C{first} bytes, then stops reading."""

    def __init__(self, request: bytes, first: int) -> None:
        self.request, self.first, self.got = request, first, 0
        self.closed: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= self.first:
            self.transport.pauseProducing()

    def connectionLost(self, reason) -> None:  # type: ignore[no-untyped-def]
        self.closed.callback(None)


async def connect(port: int, proto: Protocol) -> Protocol:
    d: Deferred = Deferred()

    class F(ClientFactory):
        noisy = False

        def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
            d.callback(proto)
            return proto

    reactor.connectTCP("127.0.0.1", port, F())
    return await d


async def settle(read, quiet: float = 0.5, deadline: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until C{read()} stops changing for C{quiet} seconds."""
    last, still, waited = read(), 0.0, 0.0
    while still < quiet and waited < deadline:
        await deferLater(reactor, 0.1, lambda: None)
        waited += 0.1
        now = read()
        still = still + 0.1 if now == last else 0.0
        last = now


@pytest_twisted.async_yield_fixture(scope="module")
async def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = str(tmp_path_factory.mktemp("stream"))
    origin = Origin("127.0.0.2", "big").start()
    stats: dict = {"sent": 0, "stopped": False, "lost": []}

    def big(request):  # type: ignore[no-untyped-def]
        stats["sent"], stats["stopped"] = 0, False
        request.setHeader(b"content-length", b"%d" % BIG)
        request.registerProducer(Endless(request, stats), False)
        return NOT_DONE_YET

    def hang(request):  # type: ignore[no-untyped-def]
        request.notifyFinish().addErrback(lambda f: stats["lost"].append(request.uri))
        origin.pending.append(request)
        return NOT_DONE_YET

    origin.routes["/big"] = big
    origin.routes["/hang"] = hang
    config = write_config(d, f"""
        from cdnpull.config import Domain, IPOrigin
        domains = [Domain("s.test", origin=IPOrigin(["{origin.addr}"]), probe=None)]
        """)
    cdn = await cdn_started(config, d)
    yield dict(origin=origin, stats=stats, cdn=cdn)
    cdn.stop()
    await origin.stop()


@pytest_twisted.ensureDeferred
async def test_slow_client_pauses_the_origin_instead_of_buffering(world):  # type: ignore[no-untyped-def]
    cdn, stats = world["cdn"], world["stats"]
    idle = rss_kib(cdn.proc.pid)
    client = SlowReader(b"GET /big HTTP/1.1\r\nHost: s.test\r\n\r\n", first=1024 * 1024)
    await connect(cdn.port, client)
    await settle(lambda: stats["sent"])
    grown_mib = (rss_kib(cdn.proc.pid) - idle) / 1024
    sent_mib = stats["sent"] / 2**20
    # The origin stalls after kernel socket buffers and a little of ours
    # fill up, far below the 256 MiB it would otherwise send.
    assert sent_mib < 64, f"origin sent {sent_mib:.0f} MiB to a client that stopped reading"
    assert grown_mib < 32, f"cdnpull grew by {grown_mib:.0f} MiB"
    assert client.got < BIG
    # The client leaves: the origin's connection is closed too.
    client.transport.abortConnection()
    await client.closed
    await settle(lambda: stats["stopped"], quiet=0.3, deadline=5)
    assert stats["stopped"], "origin transfer not cancelled after the client left"


@pytest_twisted.ensureDeferred
async def test_client_leaving_cancels_pending_origin_request(world):  # type: ignore[no-untyped-def]
    cdn, stats, origin = world["cdn"], world["stats"], world["origin"]
    client = SlowReader(b"GET /hang HTTP/1.1\r\nHost: s.test\r\n\r\n", first=1)
    await connect(cdn.port, client)
    await settle(lambda: len(origin.pending), quiet=0.2, deadline=5)
    assert origin.pending, "the request never reached the origin"
    client.transport.loseConnection()
    await client.closed
    await settle(lambda: len(stats["lost"]), quiet=0.3, deadline=5)
    assert stats["lost"] == [b"/hang"]


@pytest_twisted.ensureDeferred
async def test_an_origin_that_stops_reading_pauses_the_uploading_client(tmp_path):  # type: ignore[no-untyped-def]
    import socket
    import time

    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.threads import deferToThread

    from .support import cdn_started, write_config

    class Deaf(Protocol):
        """Reads the request head, then stops reading (an origin that stalls)."""

        def dataReceived(self, data):  # type: ignore[no-untyped-def]
            self.transport.pauseProducing()

    factory = Factory.forProtocol(Deaf)
    factory.noisy = False
    listener = reactor.listenTCP(0, factory, interface="127.0.0.7")
    port = listener.getHost().port
    config = write_config(str(tmp_path), f"""
        from cdnpull.config import Domain, IPOrigin, Settings
        settings = Settings(client_max_body="1GiB")
        domains = [Domain("up.test.com", origin=IPOrigin(["127.0.0.7:{port}"]), probe=None,
                          first_byte_timeout=30.0)]
        """)
    cdn = await cdn_started(config, str(tmp_path))
    try:
        idle = rss_kib(cdn.proc.pid)

        def upload() -> int:
            s = socket.create_connection(("127.0.0.1", cdn.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            s.sendall(b"PUT /big HTTP/1.1\r\nHost: up.test.com\r\nContent-Length: %d\r\n\r\n" % (256 << 20))
            s.settimeout(0.5)
            sent, block = 0, b"u" * 65536
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                try:
                    sent += s.send(block)
                except socket.timeout:
                    continue
            s.close()
            return sent

        sent = await deferToThread(upload)
        grown = rss_kib(cdn.proc.pid) - idle
        # Without back-pressure the node would take the whole 256 MiB as fast
        # as the client sends; with it, only socket buffers' worth.
        assert sent < 64 << 20, sent
        assert grown < 32 * 1024, f"twistd grew by {grown} KiB"
    finally:
        cdn.stop()
        await listener.stopListening()
