"""
Probes, hostname origins and HTTPS to origins across the wire: a real
C{twistd cdnpull}, real origins on 127.0.0.2 and up, a real DNS server and a
TLS origin with a certificate from a test CA (docs/configuration.md and docs/origins.md).
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
import pytest_twisted
import trustme
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater

from .support import (Client, DNSServer, Origin, shared_port, cdn_started, tls_server_options,
                      write_config)

pytestmark = pytest.mark.timeout(90)


def sleep(seconds: float):  # type: ignore[no-untyped-def]
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.async_yield_fixture(scope="module")
async def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("origins")
    ca = trustme.CA()
    ca_file = str(d / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)

    # Probed origins.
    p1 = Origin("127.0.0.2", "p1").start()
    p2 = Origin("127.0.0.3", "p2").start()
    for o in (p1, p2):
        o.text("/health", b"ok")
        o.text("/n", o.name.encode())
    # Two origins behind one name.
    port = shared_port("127.0.0.2", "127.0.0.3")
    n1 = Origin("127.0.0.2", "n1").start(port)
    n2 = Origin("127.0.0.3", "n2").start(port)
    for o in (n1, n2):
        o.routes["/n"] = lambda r, o=o: o.name.encode() + b" " + (r.getHeader(b"host") or b"-")
    dns = DNSServer({"origin.test": ["127.0.0.2", "127.0.0.3"]})
    # A TLS origin whose certificate says origin.test, and a failing HTTP one.
    secure = Origin("127.0.0.4", "tls").start(tls=tls_server_options(ca, "origin.test"))
    secure.routes["*"] = lambda r: b"secret via TLS, Host " + (r.getHeader(b"host") or b"-")
    broken = Origin("127.0.0.5", "broken").start()
    broken.text("/x", b"primary is broken", status=503)

    config = write_config(str(d), f"""
        from cdnpull.config import Domain, DomainOrigin, IPOrigin, Probe, Settings
        settings = Settings(origin_ca_file={ca_file!r}, nameservers=["{dns.addr}"])
        domains = [
            Domain("probe.test.com", origin=IPOrigin(["{p1.addr}", "{p2.addr}"]),
                   probe=Probe(path="/health", interval=0.5, timeout=0.5, block_for=3)),
            Domain("dns.test.com", origin=DomainOrigin("origin.test", port={port}), probe=None),
            Domain("secure.test.com", origin=IPOrigin(["{secure.addr}"], scheme="https"),
                   origin_host="origin.test", probe=None),
            Domain("wrong.test.com", origin=IPOrigin(["{secure.addr}"], scheme="https"), probe=None),
            Domain("failover.test.com", origin=IPOrigin(["{broken.addr}"]),
                   standby=IPOrigin(["{secure.addr}"], scheme="https"),
                   origin_host="origin.test", probe=None),
        ]
        """)
    cdn = await cdn_started(config, str(d))
    client = Client(cdn.url)
    yield dict(cdn=cdn, client=client, p1=p1, p2=p2, n1=n1, n2=n2, dns=dns, secure=secure,
               broken=broken)
    cdn.stop()
    await DeferredList([o.stop() for o in (p1, p2, n1, n2, secure, broken, dns)
                        if o.listener.connected])


@pytest_twisted.ensureDeferred
async def test_probe_blocks_a_stopped_origin_without_traffic_and_it_rejoins_after_the_block(world):  # type: ignore[no-untyped-def]
    cdn, client, p2 = world["cdn"], world["client"], world["p2"]
    await sleep(1.0)
    assert p2.count("/health") >= 1  # probes run with no client traffic
    port = p2.port
    blocked_line = f"blocked primary origin {p2.addr} of probe.test.com"
    stopped = time.monotonic()
    await p2.stop()
    while blocked_line not in cdn.log():
        assert time.monotonic() - stopped < 2.0, cdn.log()
        await sleep(0.05)
    detected = time.monotonic() - stopped
    # While blocked every request goes to p1, and none fails.
    for _ in range(10):
        response, body = await client.get("/n", host="probe.test.com")
        assert (response.code, body) == (200, b"p1")
    # Back up: it gets traffic again, but only after the block (3 s).
    p2.start(port)
    seen_p2 = None
    while seen_p2 is None:
        assert time.monotonic() - stopped < 3.0 + 3.0, "p2 never rejoined"
        response, body = await client.get("/n", host="probe.test.com")
        assert response.code == 200
        if body == b"p2":
            seen_p2 = time.monotonic() - stopped
        await sleep(0.1)
    assert seen_p2 >= 3.0 - 0.05, f"p2 got a request {seen_p2:.2f} s after it stopped"
    assert f"primary origin {p2.addr} of probe.test.com is up again" in cdn.log()
    print(f"blocked after {detected:.2f} s, rejoined after {seen_p2:.2f} s")


@pytest_twisted.ensureDeferred
async def test_hostname_origin_resolved_by_dns_spreads_over_every_address(world):  # type: ignore[no-untyped-def]
    client, dns = world["client"], world["dns"]
    served = Counter()
    for _ in range(20):
        response, body = await client.get("/n", host="dns.test.com")
        assert response.code == 200
        name, host = body.split(b" ")
        assert host == b"dns.test.com"  # the configured Host, not the origin name
        served[name] += 1
    # Rotation moves one address per request: exactly half each.
    assert served == {b"n1": 10, b"n2": 10}, served
    assert ("origin.test", 1) in dns.queries  # an A query reached our DNS server


@pytest_twisted.ensureDeferred
async def test_https_origin_verified_with_origin_ca_file(world):  # type: ignore[no-untyped-def]
    response, body = await world["client"].get("/page", host="secure.test.com")
    assert response.code == 200
    assert body == b"secret via TLS, Host origin.test"


@pytest_twisted.ensureDeferred
async def test_https_origin_under_a_name_its_certificate_lacks_is_refused(world):  # type: ignore[no-untyped-def]
    secure, cdn = world["secure"], world["cdn"]
    before = len(secure.seen)
    response, body = await world["client"].get("/wrong", host="wrong.test.com")
    assert response.code == 502
    assert b"secret" not in body
    assert len(secure.seen) == before  # nothing was asked, nothing served
    assert "TLS certificate refused" in cdn.log()


@pytest_twisted.ensureDeferred
async def test_https_standby_takes_over_from_a_failing_http_primary(world):  # type: ignore[no-untyped-def]
    response, body = await world["client"].get("/x", host="failover.test.com")
    assert response.code == 200
    assert body == b"secret via TLS, Host origin.test"
    assert world["broken"].count("/x") == 1


@pytest_twisted.ensureDeferred
async def test_https_client_listener_and_scheme_follow(tmp_path):  # type: ignore[no-untyped-def]
    import socket
    import ssl

    from twisted.internet.threads import deferToThread

    from .support import free_port

    ca = trustme.CA()
    ca_file = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    edge_cert = ca.issue_cert("www.test.com")
    key_file, cert_file = str(tmp_path / "edge.key"), str(tmp_path / "edge.pem")
    edge_cert.private_key_pem.write_to_path(key_file)
    edge_cert.cert_chain_pems[0].write_to_path(cert_file)
    origin = Origin("127.0.0.9", "tls-origin").start(tls=tls_server_options(ca, "origin.test"))
    origin.routes["*"] = lambda r: b"over TLS both ways, Host " + (r.getHeader(b"host") or b"-")
    config = write_config(str(tmp_path), f"""
        from cdnpull.config import Domain, IPOrigin, Settings
        settings = Settings(origin_ca_file={ca_file!r})
        domains = [Domain("www.test.com", origin=IPOrigin(["{origin.addr}"], scheme="follow"),
                          origin_host="origin.test", probe=None)]
        """)
    tls_port = free_port()
    cdn = await cdn_started(config, str(tmp_path), "--listen",
                    f"ssl:{tls_port}:privateKey={key_file}:certKey={cert_file}:interface=127.0.0.1")

    def fetch() -> bytes:
        context = ssl.create_default_context(cafile=ca_file)
        with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="www.test.com") as s:
                s.sendall(b"GET /x HTTP/1.1\r\nHost: www.test.com\r\nConnection: close\r\n\r\n")
                out = b""
                while chunk := s.recv(65536):
                    out += chunk
                return out

    try:
        answer = await deferToThread(fetch)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b"over TLS both ways, Host origin.test")
        assert b"X-Forwarded-Proto: https" not in answer  # a request header, not echoed
        seen = origin.seen[-1]
        assert seen.headers.get(b"x-forwarded-proto") == [b"https"]
    finally:
        cdn.stop()
        await origin.stop()
