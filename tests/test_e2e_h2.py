"""
HTTP/2 to clients end to end: a real twistd with a tls: listener, driven by
the h2 package over a TLS socket (and by curl): hits, misses, failover,
Range, 304, large streamed bodies, many streams on one connection, a reset
stream cancelling its origin request, and the protocol's errors for a flood
of streams, a huge header block, a stalled flow window and limits.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections import deque
from typing import Optional

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
import pytest_twisted
import trustme
from h2.settings import SettingCodes
from twisted.internet.threads import deferToThread

from .support import Origin, free_port, shared_port, start_cdn, write_config
from .test_certs import issue

pytestmark = pytest.mark.timeout(120)

BIG = bytes(range(256)) * (5 * 4096)  # 5 MiB


class H2Client:
    """
    A blocking HTTP/2 client over TLS (run it in a thread).  Each stream's
    answer is collected in C{self.streams[id]}.
    """

    def __init__(self, port: int, host: str, ca_file: str, window: Optional[int] = None,
                 ack: bool = True, validate: bool = True) -> None:
        context = ssl.create_default_context(cafile=ca_file)
        context.set_alpn_protocols(["h2", "http/1.1"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.host = host
        self.ack = ack
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None,
                                      validate_outbound_headers=validate))
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.streams: dict = {}
        self.closed_by_server: Optional[int] = None  # GOAWAY error code
        self.eof = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send(self, path: str, method: str = "GET", headers: Optional[list] = None,
             body: Optional[bytes] = None) -> int:
        sid = self.conn.get_next_available_stream_id()
        head = [(b":method", method.encode()), (b":scheme", b"https"),
                (b":authority", self.host.encode()), (b":path", path.encode())]
        head += [(k.encode(), v.encode()) for k, v in (headers or [])]
        self.conn.send_headers(sid, head, end_stream=body is None)
        if body is not None:  # within the first window (64 KiB)
            size = self.conn.max_outbound_frame_size
            for i in range(0, len(body), size):
                self.conn.send_data(sid, body[i:i + size], end_stream=i + size >= len(body))
        self.streams[sid] = {"headers": {}, "body": bytearray(), "ended": False, "reset": None}
        self.flush()
        return sid

    def pump(self, done, timeout: float = 15.0, must: bool = True) -> None:  # type: ignore[no-untyped-def]
        """Read until C{done()}, the end of the connection or C{timeout} (a
        failure when C{must})."""
        deadline = time.monotonic() + timeout
        while not done():
            if self.eof or self.closed_by_server is not None:
                return
            if time.monotonic() >= deadline:
                assert not must, f"no answer in time: {self.streams}"
                return
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionError, ssl.SSLError):
                data = b""
            if not data:
                self.eof = True
                return
            for event in self.conn.receive_data(data):
                self.handle(event)
            self.flush()

    def handle(self, event) -> None:  # type: ignore[no-untyped-def]
        if isinstance(event, h2.events.ResponseReceived):
            self.streams[event.stream_id]["headers"] = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self.streams[event.stream_id]["body"] += event.data
            if self.ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.streams[event.stream_id]["ended"] = True
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id in self.streams:
                self.streams[event.stream_id]["reset"] = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed_by_server = event.error_code

    def finished(self, sid: int) -> bool:
        s = self.streams[sid]
        return s["ended"] or s["reset"] is not None

    def get(self, path: str, **kw) -> tuple[int, dict, bytes]:  # type: ignore[no-untyped-def]
        sid = self.send(path, **kw)
        self.pump(lambda: self.finished(sid))
        s = self.streams[sid]
        assert s["ended"], f"stream {sid} not answered: {s}, goaway={self.closed_by_server}"
        return int(s["headers"][b":status"]), s["headers"], bytes(s["body"])

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self.flush()
        except Exception:
            pass
        self.sock.close()


def h2_get(port: int, ca_file: str, host: str, path: str, **kw):  # type: ignore[no-untyped-def]
    client = H2Client(port, host, ca_file)
    try:
        return client.get(path, **kw)
    finally:
        client.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = str(tmp_path_factory.mktemp("h2"))
    ca = trustme.CA()
    ca_file = os.path.join(d, "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    www = issue(ca, d, "www", "www.test.com")
    port = shared_port("127.0.0.2", "127.0.0.3")
    primary = Origin("127.0.0.2", "primary").start(port)
    standby = Origin("127.0.0.3", "standby").start(port)
    primary.text("/hit.txt", b"cached over h2", headers={"Cache-Control": "max-age=600",
                                                         "ETag": '"v1"'})
    primary.text("/big", BIG, headers={"Cache-Control": "no-store"})
    primary.text("/only-on-standby", b"primary says no", status=404)
    standby.text("/only-on-standby", b"from the standby")
    primary.hang("/slow")
    primary.routes["/echo"] = lambda r: b"got %d bytes" % len(r.content.read())

    def cut(request):  # type: ignore[no-untyped-def]
        from twisted.internet import reactor
        from twisted.web.server import NOT_DONE_YET

        request.setHeader(b"content-length", b"1000")
        request.setHeader(b"cache-control", b"no-store")
        request.write(b"x" * 10)
        # On the wire now: with the reset on a timer, a busy reactor could
        # run it first and drop the head with the body (no cut, a failover).
        request.transport.doWrite()
        reactor.callLater(0.05, request.transport.abortConnection)
        return NOT_DONE_YET

    primary.routes["/cut"] = cut
    config = write_config(d, f"""
        from cdnpull.config import Certificate, Domain, IPOrigin, Settings
        settings = Settings(client_max_body="16KiB", client_idle_timeout=30, client_send_timeout=3)
        domains = [Domain("www.test.com", origin=IPOrigin(["127.0.0.2"], port={port}),
                          standby=IPOrigin(["127.0.0.3"], port={port}), probe=None,
                          hsts="max-age=600",
                          certificate=Certificate({www.cert_file!r}, {www.key_file!r}))]
        """)
    tls_port = free_port()
    cdn = start_cdn(config, d, "--listen", f"tls:{tls_port}:interface=127.0.0.1")
    yield {"cdn": cdn, "port": tls_port, "ca_file": ca_file, "primary": primary,
           "standby": standby}
    cdn.stop()
    pytest_twisted.blockon(primary.stop())
    pytest_twisted.blockon(standby.stop())


def call(node, path: str, **kw):  # type: ignore[no-untyped-def]
    return deferToThread(h2_get, node["port"], node["ca_file"], "www.test.com", path, **kw)


@pytest_twisted.ensureDeferred
async def test_miss_then_hit_over_h2_and_the_access_log_says_http2(node) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = await call(node, "/hit.txt")
    assert (status, headers[b"x-cache"], body) == (200, b"MISS", b"cached over h2")
    assert headers[b"strict-transport-security"] == b"max-age=600"
    assert headers[b"server"] == b"cdnpull"
    status, headers, body = await call(node, "/hit.txt")
    assert (status, headers[b"x-cache"], body) == (200, b"HIT", b"cached over h2")
    assert node["primary"].count("/hit.txt") == 1
    seen = node["primary"].seen[-1]
    assert seen.headers[b"x-forwarded-proto"] == [b"https"]
    # (Access lines reach the twistd log once a second.)
    await _until(lambda: '"GET /hit.txt HTTP/2" 200' in node["cdn"].log())


@pytest_twisted.ensureDeferred
async def test_failover_range_and_304_over_h2(node) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = await call(node, "/only-on-standby")
    assert (status, body, headers[b"x-served-by"]) == (200, b"from the standby", b"standby")
    await call(node, "/hit.txt")
    status, headers, body = await call(node, "/hit.txt", headers=[("range", "bytes=0-5")])
    assert (status, body, headers[b"content-range"]) == (206, b"cached", b"bytes 0-5/14")
    status, headers, body = await call(node, "/hit.txt", headers=[("if-none-match", '"v1"')])
    assert (status, body) == (304, b"")


@pytest_twisted.ensureDeferred
async def test_a_large_body_streams_with_flow_control(node) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = await call(node, "/big")
    assert status == 200
    assert headers[b"content-length"] == b"%d" % len(BIG)
    assert body == BIG


@pytest_twisted.ensureDeferred
async def test_a_body_cut_short_by_the_origin_resets_the_stream(node) -> None:  # type: ignore[no-untyped-def]
    def cut() -> tuple:
        client = H2Client(node["port"], "www.test.com", node["ca_file"])
        try:
            sid = client.send("/cut")
            client.pump(lambda: client.finished(sid))
            s = client.streams[sid]
            # The connection goes on.
            return s["headers"].get(b":status"), bytes(s["body"]), s["ended"], s["reset"], \
                client.get("/hit.txt")[0]
        finally:
            client.close()

    status, body, ended, reset, after = await deferToThread(cut)
    assert (status, body, ended, after) == (b"200", b"x" * 10, False, 200)
    assert reset is not None
    assert "Traceback" not in node["cdn"].log()


@pytest_twisted.ensureDeferred
async def test_many_concurrent_streams_on_one_connection(node) -> None:  # type: ignore[no-untyped-def]
    def many() -> list:
        client = H2Client(node["port"], "www.test.com", node["ca_file"])
        try:
            ids = [client.send(f"/hit.txt?n={i % 5}") for i in range(60)]
            ids.append(client.send("/big"))
            client.pump(lambda: all(client.finished(i) for i in ids), timeout=30)
            return [(int(client.streams[i]["headers"][b":status"]), bytes(client.streams[i]["body"]))
                    for i in ids]
        finally:
            client.close()

    answers = await deferToThread(many)
    assert answers[:60] == [(200, b"cached over h2")] * 60
    assert answers[60] == (200, BIG)


@pytest_twisted.ensureDeferred
async def test_a_reset_stream_cancels_its_origin_request(node) -> None:  # type: ignore[no-untyped-def]
    primary = node["primary"]
    before = len(primary.pending)
    client = await deferToThread(H2Client, node["port"], "www.test.com", node["ca_file"])
    try:
        sid = await deferToThread(client.send, "/slow")
        await _until(lambda: len(primary.pending) > before)
        request = primary.pending[-1]
        gone = []
        request.notifyFinish().addErrback(lambda f: gone.append(f))

        def reset() -> None:
            client.conn.reset_stream(sid)
            client.flush()

        await deferToThread(reset)
        await _until(lambda: gone)
        # The connection goes on.
        status, _, body = await deferToThread(client.get, "/hit.txt")
        assert (status, body) == (200, b"cached over h2")
    finally:
        client.close()
    await _until(lambda: '"GET /slow HTTP/2" 499' in node["cdn"].log())


async def _until(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await deferLater(reactor, 0.02, lambda: None)


@pytest_twisted.ensureDeferred
async def test_request_limits_over_h2(node) -> None:  # type: ignore[no-untyped-def]
    status, _, body = await call(node, "/echo", method="POST", body=b"x" * 1000,
                                 headers=[("content-length", "1000")])
    assert (status, body) == (200, b"got 1000 bytes")
    # Over client_max_body: by its Content-Length, and counted as it arrives.
    status, _, body = await call(node, "/echo", method="POST", body=b"x" * 20000,
                                 headers=[("content-length", "20000")])
    assert status == 413
    status, _, body = await call(node, "/echo", method="POST", body=b"x" * 20000)
    assert status == 413
    assert "refused an HTTP/2 request from 127.0.0.1: 413 request body larger than 16384" \
        in node["cdn"].log()

    def two_hosts() -> Optional[int]:
        client = H2Client(node["port"], "www.test.com", node["ca_file"], validate=False)
        try:
            client.send("/hit.txt", headers=[("host", "other.test")])
            client.pump(lambda: False, timeout=10, must=False)
            return client.closed_by_server
        finally:
            client.close()

    assert await deferToThread(two_hosts) == 1  # GOAWAY, PROTOCOL_ERROR
    assert "Traceback" not in node["cdn"].log()


@pytest_twisted.ensureDeferred
async def test_hostile_h2_clients_get_protocol_errors_never_a_traceback(node) -> None:  # type: ignore[no-untyped-def]
    port, ca_file = node["port"], node["ca_file"]

    def too_many_streams() -> tuple:
        client = H2Client(port, "www.test.com", ca_file)
        try:
            # Ignore the server's SETTINGS limit on our side and open 150.
            client.conn.remote_settings._settings[SettingCodes.MAX_CONCURRENT_STREAMS] = deque([1000])
            for _ in range(150):
                client.send("/slow")
            client.pump(lambda: False, timeout=10, must=False)
            refused = [s["reset"] for s in client.streams.values() if s["reset"] is not None]
            return client.closed_by_server, refused, client.eof
        finally:
            client.close()

    goaway, refused, eof = await deferToThread(too_many_streams)
    assert goaway == 1  # GOAWAY, PROTOCOL_ERROR: over SETTINGS_MAX_CONCURRENT_STREAMS

    def huge_headers() -> tuple:
        client = H2Client(port, "www.test.com", ca_file)
        try:
            client.send("/hit.txt", headers=[("x-big", "a" * 40_000)])
            client.pump(lambda: False, timeout=10, must=False)
            return client.closed_by_server, client.eof
        finally:
            client.close()

    goaway, eof = await deferToThread(huge_headers)
    assert goaway == 11  # ENHANCE_YOUR_CALM: over SETTINGS_MAX_HEADER_LIST_SIZE

    def rapid_reset() -> tuple:
        client = H2Client(port, "www.test.com", ca_file)
        try:
            for _ in range(1500):
                sid = client.send("/hit.txt")
                client.conn.reset_stream(sid)
                client.flush()
                if client.closed_by_server is not None:
                    break
            client.pump(lambda: False, timeout=10, must=False)
            return client.closed_by_server, client.eof
        except (ConnectionError, ssl.SSLError, h2.exceptions.ProtocolError):
            return "closed", True
        finally:
            client.close()

    goaway, eof = await deferToThread(rapid_reset)
    assert goaway == 11  # ENHANCE_YOUR_CALM: a rapid-reset flood

    def stalled_window() -> tuple:
        # A one-byte window never opened again: the node waits (the origin
        # paused) until client_send_timeout (3 s here), then resets the
        # stream; the connection stays usable.
        client = H2Client(port, "www.test.com", ca_file, window=1, ack=False)
        try:
            sid = client.send("/big")
            client.pump(lambda: len(client.streams[sid]["body"]) >= 1, timeout=10)
            started = time.monotonic()
            client.pump(lambda: client.finished(sid), timeout=15)
            waited = time.monotonic() - started
            s = client.streams[sid]
            client.ack = True
            client.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 65535})
            client.flush()
            after = client.get("/hit.txt")[0]
            return len(s["body"]), s["ended"], s["reset"], waited, after
        finally:
            client.close()

    got, ended, reset, waited, after = await deferToThread(stalled_window)
    assert (got, ended, after) == (1, False, 200)
    assert reset is not None and waited > 2
    # Meanwhile the node wrote a bounded part of the 5 MiB for that stream
    # (its producers paused), as its access line says.
    await _until(lambda: "its window stayed closed" in node["cdn"].log())
    await _until(lambda: re.search(r'"GET /big HTTP/2" 200 (\d+) .*total_ms=[3-9]\d{3}',
                                   node["cdn"].log()))
    sent = int(re.search(r'"GET /big HTTP/2" 200 (\d+) .*total_ms=[3-9]\d{3}',
                         node["cdn"].log()).group(1))
    assert sent < len(BIG) // 2
    assert "its window stayed closed for 3 s" in node["cdn"].log()
    # The node is fine afterwards.
    status, _, body = await call(node, "/hit.txt")
    assert (status, body) == (200, b"cached over h2")
    assert "Traceback" not in node["cdn"].log()
    assert "Unhandled" not in node["cdn"].log()


@pytest_twisted.ensureDeferred
async def test_curl_http2(node) -> None:  # type: ignore[no-untyped-def]
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    out = await deferToThread(subprocess.run, [
        curl, "-s", "--http2", "--cacert", node["ca_file"],
        "--resolve", f"www.test.com:{node['port']}:127.0.0.1",
        "-w", "\n%{http_version} %{http_code}", f"https://www.test.com:{node['port']}/hit.txt"],
        capture_output=True, timeout=30)
    assert out.stdout.decode() == "cached over h2\n2 200"


@pytest_twisted.ensureDeferred
async def test_a_host_equal_to_authority_is_one_host(node) -> None:  # type: ignore[no-untyped-def]
    # Twisted turns :authority into a Host field; a client that also sends
    # the same Host has asked for one host, not two.
    def ask() -> tuple:
        client = H2Client(node["port"], "www.test.com", node["ca_file"])
        try:
            return client.get("/hit.txt", headers=[("host", "www.test.com")])[0]
        finally:
            client.close()

    assert await deferToThread(ask) == 200
