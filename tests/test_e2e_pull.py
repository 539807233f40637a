"""
Origin pull and failover across the wire: one real C{twistd cdnpull} process
and real origin servers on 127.0.0.2 and up (docs/origins.md).
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList

from .support import TWISTD, Client, Origin, Silent, closed_port, cdn_started, write_config

pytestmark = pytest.mark.timeout(90)


@pytest_twisted.async_yield_fixture(scope="module")
async def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = str(tmp_path_factory.mktemp("pull"))
    p1 = Origin("127.0.0.2", "p1").start()
    p2 = Origin("127.0.0.3", "p2").start()
    sb = Origin("127.0.0.4", "sb").start()
    s1 = Origin("127.0.0.9", "s1").start()   # for the "one primary stops" test
    s2 = Origin("127.0.0.10", "s2").start()
    silent = Silent("127.0.0.8")
    for o in (p1, p2):
        o.text("/ok", b"primary ok")
        o.text("/error", b"primary broke", status=503)
        o.routes["/host"] = lambda r: r.getHeader(b"host") or b"-"
        o.routes["/echo-headers"] = lambda r: repr(sorted(
            (k.lower(), v) for k, v in r.requestHeaders.getAllRawHeaders())).encode()
    sb.text("/1.jpg", b"JPEG from standby")
    sb.text("/error", b"standby fine")
    sb.text("/ok", b"standby ok")
    for o in (s1, s2):
        o.text("/n", o.name.encode())
    dead1, dead2 = closed_port("127.0.0.5"), closed_port("127.0.0.6")
    config = write_config(d, f"""
        from cdnpull.config import Domain, IPOrigin, Probe, Settings
        fast = dict(probe=None, connect_timeout=2.0)
        domains = [
            Domain("www.test.com", origin=IPOrigin(["{p1.addr}", "{p2.addr}"]),
                   standby=IPOrigin(["{sb.addr}"]), **fast),
            Domain("rr.test.com", origin=IPOrigin(["{p1.addr}", "{p2.addr}"]), **fast),
            Domain("dead.test.com", origin=IPOrigin(["127.0.0.5:{dead1}", "127.0.0.6:{dead2}"]),
                   standby=IPOrigin(["{sb.addr}"]), **fast),
            Domain("nothing.test.com", origin=IPOrigin(["127.0.0.5:{dead1}", "127.0.0.6:{dead2}"]),
                   **fast),
            Domain("badstandby.test.com", origin=IPOrigin(["{p1.addr}"]),
                   standby=IPOrigin(["127.0.0.6:{dead2}"]), **fast),
            Domain("hang.test.com", origin=IPOrigin(["127.0.0.8:{silent.port}"]),
                   first_byte_timeout=1.0, **fast),
            Domain("host.test.com", origin=IPOrigin(["{p1.addr}"]), **fast),
            Domain("override.test.com", origin=IPOrigin(["{p1.addr}"]),
                   origin_host="origin.internal.example", **fast),
            Domain("*.wild.test.com", origin=IPOrigin(["{p1.addr}"]), **fast),
            Domain("stop.test.com", origin=IPOrigin(["{s1.addr}", "{s2.addr}"]), **fast),
        ]
        """)
    cdn = await cdn_started(config, d)
    client = Client(cdn.url)
    yield dict(p1=p1, p2=p2, sb=sb, s1=s1, s2=s2, silent=silent, cdn=cdn, client=client)
    cdn.stop()
    await DeferredList([o.stop() for o in (p1, p2, sb, s1, s2, silent) if o.listener.connected])


def seen_total(*origins) -> int:  # type: ignore[no-untyped-def]
    return sum(len(o.seen) for o in origins)


@pytest_twisted.ensureDeferred
async def test_primary_404_is_served_by_standby(world):  # type: ignore[no-untyped-def]
    response, body = await world["client"].get("/1.jpg", host="www.test.com")
    assert response.code == 200
    assert body == b"JPEG from standby"
    assert response.headers.getRawHeaders(b"x-served-by") == [b"sb"]
    assert response.headers.getRawHeaders(b"x-cache") == [b"MISS"]
    # The primary was asked first.
    assert world["p1"].count("/1.jpg") + world["p2"].count("/1.jpg") == 1


@pytest_twisted.ensureDeferred
async def test_primary_5xx_is_served_by_standby(world):  # type: ignore[no-untyped-def]
    response, body = await world["client"].get("/error", host="www.test.com")
    assert (response.code, body) == (200, b"standby fine")


@pytest_twisted.ensureDeferred
async def test_every_primary_refused_goes_to_standby(world):  # type: ignore[no-untyped-def]
    response, body = await world["client"].get("/ok", host="dead.test.com")
    assert (response.code, body) == (200, b"standby ok")
    # Both primaries are now blocked: the next request goes straight to the
    # standby and the log says why they were blocked.
    response, body = await world["client"].get("/ok", host="dead.test.com")
    assert (response.code, body) == (200, b"standby ok")
    log = world["cdn"].log()
    assert "blocked primary origin 127.0.0.5" in log and "connect refused" in log


@pytest_twisted.ensureDeferred
async def test_standby_unreachable_client_gets_primary_answer(world):  # type: ignore[no-untyped-def]
    response, body = await world["client"].get("/missing", host="badstandby.test.com")
    assert response.code == 404
    assert body == b"not found on p1"


@pytest_twisted.ensureDeferred
async def test_nothing_reachable_is_502(world):  # type: ignore[no-untyped-def]
    response, body = await world["client"].get("/ok", host="nothing.test.com")
    assert response.code == 502
    assert body.startswith(b"502 ")
    assert "no origin answered GET /ok" in world["cdn"].log()


@pytest_twisted.ensureDeferred
async def test_origin_that_never_answers_is_504_within_timeout(world):  # type: ignore[no-untyped-def]
    start = time.monotonic()
    response, body = await world["client"].get("/slow", host="hang.test.com")
    elapsed = time.monotonic() - start
    # The node's own time-to-first-byte limit (504), not before its 1 s.
    assert response.code == 504
    assert elapsed >= 0.9, elapsed


@pytest_twisted.ensureDeferred
async def test_two_primaries_share_requests_evenly(world):  # type: ignore[no-untyped-def]
    p1, p2 = world["p1"], world["p2"]
    before = (p1.count("/ok"), p2.count("/ok"))
    for _ in range(20):
        response, body = await world["client"].get("/ok", host="rr.test.com")
        assert response.code == 200
    got = (p1.count("/ok") - before[0], p2.count("/ok") - before[1])
    # Rotation moves one address per request: exactly half each.
    assert got == (10, 10), got


@pytest_twisted.ensureDeferred
async def test_one_primary_stopped_loses_no_request(world):  # type: ignore[no-untyped-def]
    client = world["client"]
    for _ in range(4):  # both primaries in use, with pooled connections
        response, _ = await client.get("/n", host="stop.test.com")
        assert response.code == 200
    await world["s2"].stop()
    served = Counter()
    for _ in range(20):
        response, body = await client.get("/n", host="stop.test.com")
        assert response.code == 200, body
        served[body] += 1
    assert served == Counter({b"s1": 20})


@pytest_twisted.ensureDeferred
async def test_host_header_default_and_override(world):  # type: ignore[no-untyped-def]
    _, body = await world["client"].get("/host", host="HOST.test.com:8080")
    assert body == b"host.test.com"
    _, body = await world["client"].get("/host", host="override.test.com")
    assert body == b"origin.internal.example"
    _, body = await world["client"].get("/host", host="a.b.wild.test.com")
    assert body == b"a.b.wild.test.com"


@pytest_twisted.ensureDeferred
async def test_hop_by_hop_stripped_and_forwarding_added(world):  # type: ignore[no-untyped-def]
    response, body = await world["client"].get(
        "/echo-headers", host="host.test.com",
        headers={"Connection": "x-secret", "X-Secret": "1", "Keep-Alive": "300",
                 "X-Forwarded-For": "10.9.9.9", "X-Kept": "yes"})
    seen = eval(body)  # a repr of header pairs from our own test origin
    names = {k for k, _ in seen}
    assert b"x-secret" not in names and b"keep-alive" not in names
    assert (b"x-kept", [b"yes"]) in seen
    assert (b"x-forwarded-for", [b"10.9.9.9, 127.0.0.1"]) in seen
    assert (b"via", [b"1.1 cdnpull"]) in seen
    assert response.headers.getRawHeaders(b"via") == [b"1.1 cdnpull"]


@pytest_twisted.ensureDeferred
async def test_unknown_host_is_404_and_no_origin_contacted(world):  # type: ignore[no-untyped-def]
    origins = [world[k] for k in ("p1", "p2", "sb", "s1", "s2")]
    before = seen_total(*origins)
    response, body = await world["client"].get("/ok", host="evil.example")
    assert response.code == 404
    # An absolute-form request line is routed by its authority, never proxied.
    response, body = await world["client"].get(
        "/ok", headers={"Host": "www.test.com"}, method="GET")
    assert response.code == 200
    assert seen_total(*origins) == before + 1


def test_absolute_form_for_unconfigured_host_is_not_proxied(world):  # type: ignore[no-untyped-def]
    import socket

    origins = [world[k] for k in ("p1", "p2", "sb")]
    before = seen_total(*origins)
    s = socket.create_connection(("127.0.0.1", world["cdn"].port), timeout=5)
    s.sendall(b"GET http://evil.example/ok HTTP/1.1\r\nHost: www.test.com\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 404"), data
    assert seen_total(*origins) == before


@pytest_twisted.ensureDeferred
async def test_post_goes_to_primary_only_with_body(world):  # type: ignore[no-untyped-def]
    sb = world["sb"]
    before = len(sb.seen)
    response, body = await world["client"].get("/error", host="www.test.com",
                                               method="POST", data=b"x" * 300_000)
    # The primary's 503 passes through: no failover for POST.
    assert response.code == 503
    assert len(sb.seen) == before


def test_config_error_exits_nonzero_naming_domain_and_field(tmp_path):  # type: ignore[no-untyped-def]
    config = write_config(str(tmp_path), """
        from cdnpull.config import Domain, IPOrigin
        domains = [Domain("bad.test.com", origin=IPOrigin(["127.0.0.1:99999"]))]
        """)
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "cdnpull", "--config", config,
         "--listen", "tcp:0", "--admin", "none"],
        capture_output=True, text=True, timeout=30, cwd=str(tmp_path),
    )
    assert result.returncode != 0
    out = (result.stdout + result.stderr).strip()
    assert "Traceback" not in out
    assert out.splitlines()[-1].startswith("cdnpull: config error: bad.test.com: origin.addresses[0]")
    assert "99999" in out


def test_port_in_use_exits_with_one_line(tmp_path):  # type: ignore[no-untyped-def]
    import socket
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    config = write_config(str(tmp_path), """
        from cdnpull.config import Domain, IPOrigin
        domains = [Domain("ok.test.com", origin=IPOrigin(["127.0.0.2"]))]
        """)
    try:
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "cdnpull", "--config", config,
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--admin", "none"],
            capture_output=True, text=True, timeout=30, cwd=str(tmp_path),
        )
    finally:
        busy.close()
    assert result.returncode == 1
    out = (result.stdout + result.stderr).strip()
    assert "Traceback" not in out
    assert f"cdnpull: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use" in out
