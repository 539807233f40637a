"""
What the node never does, on the request and origin side, across the wire:
a real C{twistd cdnpull}, real origins on 127.0.0.x (one of them TLS with a
C{*.wild.test} certificate), raw sockets where the exact bytes matter.

 - client headers that steer an origin are dropped (or forwarded and keyed);
 - 502/504 bodies do not name origins;
 - a wildcard domain's client-chosen name cannot break or grow anything;
 - nothing is answered by Twisted, two Hosts are refused, slash-only bucket
   keys are refused;
 - a few dozen odd requests never get a 5xx nor a traceback.
"""

from __future__ import annotations

import json
import os
import random
import time

import pytest
import pytest_twisted
import trustme
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.web.http_headers import Headers

from cdnpull.config import BucketOrigin, ConfigError, Domain, IPOrigin, Probe, validate
from cdnpull.live import build_table
from cdnpull.failover import OriginRequest, FailoverChain
from cdnpull.admin.status import table_json

from .support import (Client, Origin, RawOrigin, Silent, closed_port, raw_exchange, cdn_started,
                      tls_server_options, write_config)
from .test_failover import P1, P2, ScriptedClient

pytestmark = pytest.mark.timeout(120)

STEERING = ["Forwarded", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port",
            "X-Real-IP", "X-Original-URL", "X-Rewrite-URL", "X-HTTP-Method-Override",
            "X-HTTP-Method", "X-Method-Override"]


def sleep(seconds: float):  # type: ignore[no-untyped-def]
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.async_yield_fixture(scope="module")
async def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("edge-security")
    ca = trustme.CA()
    ca_file = str(d / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)

    echo = Origin("127.0.0.2", "echo").start()
    bodies: list = []

    def record(r):  # type: ignore[no-untyped-def]
        bodies.append((r.path, r.content.read()))
        return b"ok " + r.path

    echo.routes["*"] = record

    def page(r):  # type: ignore[no-untyped-def]
        r.setHeader(b"cache-control", b"max-age=60")
        return b"<a href='//" + (r.getHeader(b"x-forwarded-host") or b"-") + b"/'>"

    echo.routes["/page"] = page
    bucket = Origin("127.0.0.5", "bucket").start()
    bucket.routes["*"] = lambda r: b"listing or object " + r.path
    silent = Silent("127.0.0.4")
    dead = f"127.0.0.3:{closed_port('127.0.0.3')}"
    raw = RawOrigin("127.0.0.7")
    wild = Origin("127.0.0.6", "wild-tls").start(tls=tls_server_options(ca, "*.wild.test"))
    wild.routes["*"] = lambda r: b"tls " + (r.getHeader(b"host") or b"-")

    config = write_config(str(d), f"""
        from cdnpull.config import BucketOrigin, Domain, IPOrigin, Probe, Settings
        settings = Settings(origin_ca_file={ca_file!r})
        domains = [
            Domain("www.test.com", origin=IPOrigin(["{echo.addr}"]), probe=None),
            Domain("fwd.test.com", origin=IPOrigin(["{echo.addr}"]), probe=None,
                   forward_headers=["X-Forwarded-Host"]),
            Domain("*.plain.test", origin=IPOrigin(["{echo.addr}"]), probe=None),
            Domain("dead.test.com", origin=IPOrigin(["{dead}"]), probe=None),
            Domain("slow.test.com", origin=IPOrigin(["127.0.0.4:{silent.port}"]), probe=None,
                   first_byte_timeout=1.0),
            Domain("raw.test.com", origin=IPOrigin(["{raw.addr}"]), probe=None,
                   first_byte_timeout=2.0),
            Domain("bucket.test.com", probe=None,
                   origin=BucketOrigin("http://{bucket.addr}", "bkt", style="path")),
            Domain("*.wild.test", origin=IPOrigin(["{wild.addr}"], scheme="https"),
                   probe=Probe(host="www.wild.test", interval=0.3, timeout=2.0, block_for=30)),
        ]
        """)
    cdn = await cdn_started(config, str(d), admin=True)
    yield dict(cdn=cdn, raw=raw, echo=echo, bodies=bodies, bucket=bucket, silent=silent, dead=dead,
               wild=wild, ca_file=ca_file, client=Client(cdn.url))
    cdn.stop()
    log = cdn.log()
    await DeferredList([o.stop() for o in (echo, bucket, silent, wild, raw)])
    assert "Traceback" not in log and "Unhandled" not in log, log[-5000:]


async def send(world, data: bytes, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    answer, _, _ = await deferToThread(raw_exchange, world["cdn"].port, data, timeout)
    return answer


def final(answer: bytes) -> bytes:
    """The answer without interim (1xx) responses."""
    while answer.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in answer:
        answer = answer.split(b"\r\n\r\n", 1)[1]
    return answer


def status(answer: bytes) -> int:
    answer = final(answer)
    return int(answer.split(b" ", 2)[1]) if answer[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 ") else 0


def head_of(answer: bytes) -> dict:
    answer = final(answer)
    lines = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}


def body_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


# -- §8.3: headers that steer the origin --------------------------------------------


@pytest_twisted.ensureDeferred
async def test_steering_headers_and_get_bodies_never_reach_the_origin(world):  # type: ignore[no-untyped-def]
    echo = world["echo"]
    body = b"a GET body the cache does not key on"
    head = b"".join(f"{name}: evil.example\r\n".encode() for name in STEERING)
    answer = await send(world, b"GET /steer HTTP/1.1\r\nHost: www.test.com\r\n" + head +
                        b"X-Forwarded-For: 10.0.0.9\r\nX-Kept: yes\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert status(answer) == 200, answer
    seen = [s for s in echo.seen if s.path == b"/steer"][-1]
    names = set(seen.headers)
    assert not names & {n.lower().encode() for n in STEERING if n not in (
        "X-Forwarded-Proto", "X-Real-IP")}, seen.headers
    # The node's own values, not the client's.
    assert seen.headers[b"x-forwarded-proto"] == [b"http"]
    assert seen.headers[b"x-real-ip"] == [b"127.0.0.1"]
    assert seen.headers[b"x-forwarded-for"] == [b"10.0.0.9, 127.0.0.1"]
    assert seen.headers[b"x-kept"] == [b"yes"]
    # The GET body was not forwarded (and nothing frames one).
    assert b"content-length" not in names and b"transfer-encoding" not in names
    assert (b"/steer", b"") in world["bodies"]


@pytest_twisted.ensureDeferred
async def test_a_forwarded_header_reaches_the_origin_and_is_part_of_the_cache_key(world):  # type: ignore[no-untyped-def]
    echo, client = world["echo"], world["client"]
    # Without forward_headers the header is dropped: the page is the same for all.
    r, b = await client.get("/page", host="www.test.com", headers={"X-Forwarded-Host": "evil.example"})
    assert (r.code, b) == (200, b"<a href='//-/'>")
    # With it, the origin sees it and each value is its own cache entry.
    r, b = await client.get("/page", host="fwd.test.com", headers={"X-Forwarded-Host": "evil.example"})
    assert (r.code, b) == (200, b"<a href='//evil.example/'>")
    r, b = await client.get("/page", host="fwd.test.com")
    assert (r.code, b) == (200, b"<a href='//-/'>")
    assert r.headers.getRawHeaders("x-cache") == ["MISS"]
    r, b = await client.get("/page", host="fwd.test.com", headers={"X-Forwarded-Host": "evil.example"})
    assert (r.code, b) == (200, b"<a href='//evil.example/'>")
    assert r.headers.getRawHeaders("x-cache") == ["HIT"]
    r, b = await client.get("/page", host="fwd.test.com", headers={"X-Forwarded-Host": "other.example"})
    assert b == b"<a href='//other.example/'>"
    fwd = [s for s in echo.seen if s.path == b"/page" and s.headers.get(b"host") == [b"fwd.test.com"]]
    assert [s.headers.get(b"x-forwarded-host") for s in fwd] == [
        [b"evil.example"], None, [b"other.example"]]


@pytest_twisted.ensureDeferred
async def test_a_purge_by_url_drops_the_entries_keyed_on_forwarded_headers(world):  # type: ignore[no-untyped-def]
    client = world["client"]
    for xfh in ("a.example", "b.example", None):
        await client.get("/page?purge", host="fwd.test.com",
                         headers={"X-Forwarded-Host": xfh} if xfh else {})
    admin = Client(world["cdn"].admin_url)
    r, b = await admin.get("/api/purge", method="POST", headers={
        "Content-Type": "application/json"},
        data=json.dumps({"urls": ["https://fwd.test.com/page?purge"]}).encode())
    assert (r.code, json.loads(b)) == (200, {"purged": 3})


def test_forward_headers_is_validated():
    origin = IPOrigin(["127.0.0.2"])
    validate([Domain("a.test", origin=origin, forward_headers=["Forwarded", "x-real-ip"])])
    with pytest.raises(ConfigError, match=r"a.test: forward_headers\[0\]: 'cookie' is not one"):
        validate([Domain("a.test", origin=origin, forward_headers=["cookie"])])
    with pytest.raises(ConfigError, match=r"b.test: forward_headers: a bucket origin only"):
        validate([Domain("b.test", origin=BucketOrigin("https://s3.test", "bkt"),
                         forward_headers=["forwarded"])])


def test_the_admin_status_says_why_each_address_last_failed():
    clock = Clock()
    table = build_table([Domain("t.test", origin=IPOrigin([P1, P2]), probe=None)], clock,
                        rng=random.Random(0))
    client = ScriptedClient(clock, {P1: "refuse", P2: "lost"})
    d = FailoverChain(client, clock).pull(table.route("t.test"), OriginRequest(
        b"GET", b"/", Headers(), "t.test"))
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].value.status == 502
    [domain] = table_json(table, clock.seconds())["domains"]
    errors = {a["address"]: a["last_error"]["detail"] for a in domain["origin"]["addresses"]}
    assert errors == {"127.0.0.2": "connect refused",
                      "127.0.0.3": "connection lost before a response"}


# -- §8.4: error bodies do not reveal origins ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_502_and_504_bodies_say_only_the_status_and_the_log_says_why(world):  # type: ignore[no-untyped-def]
    cdn, client = world["cdn"], world["client"]
    r, b = await client.get("/x", host="dead.test.com")
    assert (r.code, b) == (502, b"502 Bad Gateway\n")
    r, b = await client.get("/x", host="slow.test.com")
    assert (r.code, b) == (504, b"504 Gateway Timeout\n")
    for answer in (r,):
        assert answer.headers.getRawHeaders("server") == ["cdnpull"]
    log = cdn.log()
    assert world["dead"] in log and "connect refused" in log
    assert f"127.0.0.4:{world['silent'].port}" in log and "no response within 1 s" in log


# -- §8.6: wildcard domains ------------------------------------------------------------


BAD_NAMES = [b"a..plain.test", b"x" * 70 + b".plain.test", b"x_y.plain.test", b"..plain.test",
             b"-a.plain.test", b"a-.plain.test", (b"abc." * 62) + b"plain.test", b"a*b.plain.test"]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest_twisted.ensureDeferred
async def test_a_wildcard_domain_refuses_a_host_that_is_not_a_dns_name(world, name):  # type: ignore[no-untyped-def]
    before = len(world["echo"].seen)
    answer = await send(world, b"GET /w HTTP/1.1\r\nHost: " + name + b"\r\nConnection: close\r\n\r\n")
    assert status(answer) == 400, answer
    assert len(world["echo"].seen) == before


@pytest_twisted.ensureDeferred
async def test_a_wildcard_domain_serves_a_valid_name(world):  # type: ignore[no-untyped-def]
    r, b = await world["client"].get("/w", host="Ok-1.Deep.plain.test")
    assert (r.code, b) == (200, b"ok /w")
    assert world["echo"].seen[-1].headers[b"host"] == [b"ok-1.deep.plain.test"]


@pytest_twisted.ensureDeferred
async def test_a_client_name_the_certificate_does_not_cover_is_a_502_not_a_block(world):  # type: ignore[no-untyped-def]
    cdn, client = world["cdn"], world["client"]
    # The probe uses Probe(host=...): the primary is not blocked at start.
    await sleep(0.8)
    assert "of *.wild.test" not in cdn.log()
    r, b = await client.get("/t", host="www.wild.test")
    assert (r.code, b) == (200, b"tls www.wild.test")
    # *.wild.test does not cover a.b.wild.test: that request fails alone.
    r, b = await client.get("/t", host="a.b.wild.test")
    assert (r.code, b) == (502, b"502 Bad Gateway\n")
    assert "TLS certificate refused" in cdn.log()
    r, b = await client.get("/t", host="www.wild.test")
    assert (r.code, b) == (200, b"tls www.wild.test")
    assert "of *.wild.test" not in cdn.log()  # never blocked
    probes = [s for s in world["wild"].seen if s.method == b"HEAD"]
    assert probes and all(s.headers[b"host"] == [b"www.wild.test"] for s in probes)


@pytest_twisted.ensureDeferred
async def test_per_name_tls_state_is_bounded_and_expires(world):  # type: ignore[no-untyped-def]
    from cdnpull.config import parse_address
    from cdnpull.origins.client import OriginClient
    from cdnpull.origins.tls import TLSPolicy
    from cdnpull.stream import Discard

    wild = world["wild"]
    client = OriginClient(reactor, TLSPolicy(world["ca_file"]),
                          max_client_names=4, client_name_idle=1.0)
    address = parse_address(wild.addr)
    try:
        for i in range(12):
            name = f"n{i}.wild.test"
            response = await client.request(
                address=address, scheme="https", server_name=name, method=b"GET",
                target=b"/b", headers=Headers({b"host": [name.encode()]}),
                connect_timeout=5, first_byte_timeout=5, client_name=True)
            done = Discard()
            response.deliverBody(done)
            assert response.code == 200
            await sleep(0.02)
        assert client.client_names == [f"n{i}.wild.test" for i in range(8, 12)]
        assert len(client._client_pools) == 4  # (each name's pool and TLS creator)
        await sleep(0.3)
        assert connections_to("127.0.0.6", wild.port) <= 4
        # Idle names go: their connections are closed after client_name_idle.
        deadline = time.monotonic() + 5
        while connections_to("127.0.0.6", wild.port):
            assert time.monotonic() < deadline, connections_to("127.0.0.6", wild.port)
            await sleep(0.1)
    finally:
        await client.close()


def connections_to(ip: str, port: int) -> int:
    """Established TCP connections this process holds to ip:port (from /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    remote = "%s:%04X" % ("".join(f"{int(b):02X}" for b in reversed(ip.split("."))), port)
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for r in rows if r[2] == remote and r[3] == "01" and r[9] in inodes)


def test_a_wildcard_https_domain_needs_a_probe_host():
    https = IPOrigin(["127.0.0.2"], scheme="https")
    with pytest.raises(ConfigError, match=r"\*.w.test: probe.host: a wildcard domain"):
        validate([Domain("*.w.test", origin=https)])
    validate([Domain("*.w.test", origin=https, probe=Probe(host="www.w.test"))])
    validate([Domain("*.w.test", origin=https, origin_host="origin.test")])
    validate([Domain("*.w.test", origin=IPOrigin(["127.0.0.2"], scheme="https", verify=False))])
    validate([Domain("*.w.test", origin=https, probe=Probe(kind="tcp"))])
    validate([Domain("*.w.test", origin=https, probe=None)])
    with pytest.raises(ConfigError, match=r"probe.host: 'a_b.test' is not a valid hostname"):
        validate([Domain("w.test", origin=https, probe=Probe(host="a_b.test"))])


def test_a_non_ascii_bucket_region_is_a_config_error():
    origin = BucketOrigin("https://s3.test", "bkt", region="eu-wëst-1")
    with pytest.raises(ConfigError, match=r"b.test: origin.region: 'eu-wëst-1' is not a region"):
        validate([Domain("b.test", origin=origin)])


# -- §8.11: never answers for Twisted ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_options_star_and_every_answer_carry_our_server_header(world):  # type: ignore[no-untyped-def]
    for request, code in [
        (b"OPTIONS * HTTP/1.1\r\nHost: www.test.com\r\nConnection: close\r\n\r\n", 200),
        (b"GET * HTTP/1.1\r\nHost: www.test.com\r\nConnection: close\r\n\r\n", 405),
        (b"GET /x HTTP/1.1\r\nHost: nowhere.test\r\nConnection: close\r\n\r\n", 404),
        (b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: www.test.com\r\nConnection: close\r\n\r\n", 200),
    ]:
        answer = await send(world, request)
        assert status(answer) == code, (request, answer)
        assert head_of(answer).get(b"server") == b"cdnpull", answer


@pytest_twisted.ensureDeferred
async def test_two_host_headers_are_refused(world):  # type: ignore[no-untyped-def]
    echo = world["echo"]
    before = len(echo.seen)
    for hosts in ([b"www.test.com", b"fwd.test.com"], [b"www.test.com", b"www.test.com"]):
        head = b"".join(b"Host: " + h + b"\r\n" for h in hosts)
        answer = await send(world, b"GET /two HTTP/1.1\r\n" + head + b"Connection: close\r\n\r\n")
        assert status(answer) == 400, answer
    assert len(echo.seen) == before


@pytest_twisted.ensureDeferred
async def test_an_absolute_target_is_routed_by_its_authority(world):  # type: ignore[no-untyped-def]
    answer = await send(world, b"GET http://www.test.com/abs HTTP/1.1\r\nHost: nowhere.test\r\n"
                               b"Connection: close\r\n\r\n")
    assert status(answer) == 200, answer
    assert world["echo"].seen[-1].headers[b"host"] == [b"www.test.com"]


@pytest.mark.parametrize("path", [b"/", b"//", b"///", b"/%2F", b"/%2f%2F/"])
@pytest_twisted.ensureDeferred
async def test_a_bucket_key_of_only_slashes_is_refused_like_a_listing(world, path):  # type: ignore[no-untyped-def]
    bucket = world["bucket"]
    before = len(bucket.seen)
    answer = await send(world, b"GET " + path + b" HTTP/1.1\r\nHost: bucket.test.com\r\n"
                                                b"Connection: close\r\n\r\n")
    assert status(answer) == 404, answer
    assert len(bucket.seen) == before
    answer = await send(world, b"GET /a//b HTTP/1.1\r\nHost: bucket.test.com\r\nConnection: close\r\n\r\n")
    assert status(answer) == 200 and body_of(answer) == b"listing or object /bkt/a//b"


@pytest.mark.parametrize("connection", [[b"close, x-a"], [b"keep-alive,close"],
                                        [b"Upgrade, HTTP2-Settings", b"close"]])
@pytest_twisted.ensureDeferred
async def test_close_is_honoured_wherever_it_is_in_connection(world, connection):  # type: ignore[no-untyped-def]
    head = b"".join(b"Connection: " + c + b"\r\n" for c in connection)
    answer, _, closed = await deferToThread(
        raw_exchange, world["cdn"].port,
        b"GET /conn HTTP/1.1\r\nHost: www.test.com\r\n" + head + b"\r\n", 3.0)
    assert status(answer) == 200 and closed, answer


# -- §8.12: odd inputs --------------------------------------------------------------------

C = b"Connection: close\r\n"


def get(path: bytes = b"/c", host: bytes = b"www.test.com", *headers: bytes,
        method: bytes = b"GET", version: bytes = b"HTTP/1.1") -> bytes:
    head = b"".join(h + b"\r\n" for h in headers)
    return method + b" " + path + b" " + version + b"\r\nHost: " + host + b"\r\n" + head + C + b"\r\n"


BIG = b"99999999999999999999999999999999"
ODD = {
    # methods
    "unknown-method": get(method=b"FOO"),
    "lowercase-method": get(method=b"get"),
    "connect": b"CONNECT www.test.com:443 HTTP/1.1\r\nHost: www.test.com:443\r\n" + C + b"\r\n",
    "trace": get(method=b"TRACE"),
    "propfind": get(method=b"PROPFIND"),
    "m-search": get(b"*", method=b"M-SEARCH"),
    "long-method": get(method=b"A" * 1000),
    "method-punct": get(method=b"G!T"),
    "bucket-post": get(b"/k", b"bucket.test.com", method=b"POST"),
    "bucket-options-star": get(b"*", b"bucket.test.com", method=b"OPTIONS"),
    # versions
    "http10-no-host": b"GET /c HTTP/1.0\r\n\r\n",
    "http10": get(version=b"HTTP/1.0"),
    "http09": b"GET /c\r\n\r\n",
    "http12": get(version=b"HTTP/1.2"),
    "http2": get(version=b"HTTP/2.0"),
    "http-garbage": get(version=b"HTTP/x.y"),
    # hosts
    "host-empty": get(host=b""),
    "host-colon": get(host=b":80"),
    "host-big-port": get(host=b"www.test.com:99999"),
    "host-bad-port": get(host=b"www.test.com:abc"),
    "host-ipv6": get(host=b"[::1]:8080"),
    "host-ipv6-open": get(host=b"[::1"),
    "host-ip": get(host=b"127.0.0.1"),
    "host-dot": get(host=b"www.test.com."),
    "host-upper": get(host=b"WWW.TEST.COM"),
    "host-userinfo": get(host=b"user@www.test.com"),
    "host-latin1": get(host=b"\xfc.plain.test"),
    "host-utf8": get(host="ü.plain.test".encode()),
    "host-punycode-bad": get(host=b"xn--.plain.test"),
    "host-list": get(host=b"www.test.com, fwd.test.com"),
    "host-space": get(host=b"a b.plain.test"),
    "host-long": get(host=b"a." * 200 + b"plain.test"),
    "host-wild-bare-dots": get(host=b"....plain.test"),
    "host-wild-tls-odd": get(host=b"x--y.wild.test"),
    # targets
    "abs-empty": get(b"http://"),
    "abs-ipv6-open": get(b"http://[::1/x"),
    "abs-bad-port": get(b"https://www.test.com:bad/x"),
    "abs-userinfo": get(b"http://u:p@www.test.com/x"),
    "abs-other-scheme": get(b"ftp://www.test.com/x"),
    "double-slash": get(b"//x"),
    "pct-nul": get(b"/%00"),
    "pct-bad": get(b"/%ZZ"),
    "query-pct": get(b"/x?%"),
    "dotdot": get(b"/../../etc/passwd"),
    "relative": get(b"x"),
    "fragment": get(b"/x#frag"),
    "high-bytes": get(b"/\xff\xfe"),
    "bucket-dotdot": get(b"/%2e%2e/x", b"bucket.test.com"),
    "bucket-nul": get(b"/a%00b", b"bucket.test.com"),
    "bucket-high": get(b"/\xff", b"bucket.test.com"),
    "bucket-query": get(b"/k?acl&versions", b"bucket.test.com"),
    # ranges
    "range-huge-start": get(b"/c", b"www.test.com", b"Range: bytes=" + BIG + b"-"),
    "range-huge-suffix": get(b"/c", b"www.test.com", b"Range: bytes=-" + BIG),
    "range-zero-suffix": get(b"/c", b"www.test.com", b"Range: bytes=-0"),
    "range-backwards": get(b"/c", b"www.test.com", b"Range: bytes=5-1"),
    "range-many": get(b"/c", b"www.test.com", b"Range: bytes=" + b",".join([b"0-0"] * 500)),
    "range-garbage": get(b"/c", b"www.test.com", b"Range: bytes=abc"),
    "range-unit": get(b"/c", b"www.test.com", b"Range: items=0-1"),
    "range-empty": get(b"/c", b"www.test.com", b"Range: "),
    "range-two": get(b"/c", b"www.test.com", b"Range: bytes=0-1", b"Range: bytes=2-3"),
    "range-negative": get(b"/c", b"www.test.com", b"Range: bytes=-5--1"),
    "range-bucket": get(b"/k", b"bucket.test.com", b"Range: bytes=" + BIG + b"-" + BIG),
    "range-head": get(b"/c", b"www.test.com", b"Range: bytes=0-1", method=b"HEAD"),
    # conditionals
    "ims-garbage": get(b"/c", b"www.test.com", b"If-Modified-Since: yesterday"),
    "ims-far-year": get(b"/c", b"www.test.com", b"If-Modified-Since: Fri, 31 Dec 99999 23:59:59 GMT"),
    "ims-epoch": get(b"/c", b"www.test.com", b"If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT"),
    "ims-year0": get(b"/c", b"www.test.com", b"If-Modified-Since: Mon, 01 Jan 0000 00:00:00 GMT"),
    "inm-star": get(b"/c", b"www.test.com", b"If-None-Match: *"),
    "inm-unquoted": get(b"/c", b"www.test.com", b"If-None-Match: abc, W/"),
    "if-range-garbage": get(b"/c", b"www.test.com", b"Range: bytes=0-1", b"If-Range: ???"),
    "if-range-date": get(b"/c", b"www.test.com", b"Range: bytes=0-1", b"If-Range: Thu, 01 Jan 1970 00:00:00 GMT"),
    "ius-garbage": get(b"/c", b"www.test.com", b"If-Unmodified-Since: " + BIG),
    "if-match-garbage": get(b"/c", b"www.test.com", b"If-Match: \"unterminated"),
    # Cache-Control in requests
    "cc-huge-max-age": get(b"/c", b"www.test.com", b"Cache-Control: max-age=" + BIG),
    "cc-huge-max-stale": get(b"/c", b"www.test.com", b"Cache-Control: max-stale=" + BIG),
    "cc-float": get(b"/c", b"www.test.com", b"Cache-Control: max-age=1e309, min-fresh=1.5"),
    "cc-negative": get(b"/c", b"www.test.com", b"Cache-Control: min-fresh=-5, max-age=-1"),
    "cc-quoted": get(b"/c", b"www.test.com", b"Cache-Control: max-age=\"60\", no-cache=\"a"),
    "cc-only-if-cached": get(b"/c", b"www.test.com", b"Cache-Control: only-if-cached"),
    "cc-garbage": get(b"/c", b"www.test.com", b"Cache-Control: ,,,=,=x,;"),
    "cc-huge-sie": get(b"/c", b"www.test.com", b"Cache-Control: stale-if-error=" + BIG),
    "pragma": get(b"/c", b"www.test.com", b"Pragma: no-cache", b"Cache-Control: no-cache"),
    # other headers
    "expect-continue-get": get(b"/c", b"www.test.com", b"Expect: 100-continue"),
    "expect-garbage": get(b"/c", b"www.test.com", b"Expect: 42-nonsense"),
    "upgrade-h2c": get(b"/c", b"www.test.com", b"Upgrade: h2c", b"Connection: Upgrade, HTTP2-Settings"),
    "upgrade-websocket": get(b"/c", b"www.test.com", b"Upgrade: websocket", b"Connection: upgrade"),
    "connection-lists-host": get(b"/c", b"www.test.com", b"Connection: host, x-a"),
    "get-chunked-body": (b"GET /c HTTP/1.1\r\nHost: www.test.com\r\nTransfer-Encoding: chunked\r\n" + C +
                         b"\r\n3\r\nabc\r\n0\r\n\r\n"),
    "get-cl0": get(b"/c", b"www.test.com", b"Content-Length: 0"),
    "auth-garbage": get(b"/c", b"www.test.com", b"Authorization: \xff\xfe"),
    "accept-encoding-odd": get(b"/c", b"www.test.com", b"Accept-Encoding: gzip;q=" + BIG + b", *;q=-1"),
    "vary-header-latin1": get(b"/c", b"www.test.com", b"Accept-Language: \xe9\xe8"),
    "via-loop": get(b"/c", b"www.test.com", b"Via: 1.1 cdnpull, 1.1 cdnpull"),
    "max-forwards": get(b"/c", b"www.test.com", b"Max-Forwards: " + BIG, method=b"OPTIONS"),
    "forwarded-garbage": get(b"/page", b"fwd.test.com", b"X-Forwarded-Host: \xff\x80"),
    "many-cookies": get(b"/c", b"www.test.com", *[b"Cookie: a=%d" % i for i in range(15)]),
}


@pytest_twisted.ensureDeferred
async def test_odd_inputs_never_get_a_5xx_nor_a_traceback(world):  # type: ignore[no-untyped-def]
    cdn, echo = world["cdn"], world["echo"]

    def cacheable(r):  # type: ignore[no-untyped-def]
        r.setHeader(b"cache-control", b"max-age=60")
        r.setHeader(b"etag", b'"v1"')
        r.setHeader(b"last-modified", b"Mon, 30 Nov 2026 00:00:00 GMT")
        r.setHeader(b"vary", b"Accept-Language")
        return b"0123456789" * 100

    echo.routes["/c"] = cacheable
    r, _ = await world["client"].get("/c", host="www.test.com")
    assert r.code == 200
    bad = {}
    for name, data in ODD.items():
        answer = await send(world, data)
        code = status(answer)
        if not 100 <= code < 500 or head_of(answer).get(b"server") != b"cdnpull":
            bad[name] = answer[:300]
    assert not bad, "\n".join(f"{k}: {v!r}" for k, v in bad.items())
    await sleep(0.2)
    log = cdn.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-5000:]


def answer(status: bytes, *headers: bytes, body: bytes = b"hello") -> list:
    head = b"".join(h + b"\r\n" for h in headers)
    return [(b"HTTP/1.1 " + status + b"\r\n" + head + b"Content-Length: %d\r\n\r\n" % len(body)
             + body, None)]


ODD_ANSWERS = {
    "/cc-huge": answer(b"200 OK", b"Cache-Control: max-age=" + BIG + b", s-maxage=" + BIG),
    "/cc-float": answer(b"200 OK", b"Cache-Control: max-age=1e309, stale-while-revalidate=-1"),
    "/cc-garbage": answer(b"200 OK", b"Cache-Control: ,,=,\"x, max-age"),
    "/expires-garbage": answer(b"200 OK", b"Expires: tomorrow", b"Date: yesterday"),
    "/expires-far": answer(b"200 OK", b"Expires: Fri, 31 Dec 99999 23:59:59 GMT"),
    "/date-year0": answer(b"200 OK", b"Date: Mon, 01 Jan 0000 00:00:00 GMT", b"Cache-Control: max-age=60"),
    "/age-huge": answer(b"200 OK", b"Age: " + BIG, b"Cache-Control: max-age=60"),
    "/age-negative": answer(b"200 OK", b"Age: -5", b"Cache-Control: max-age=60"),
    "/age-two": answer(b"200 OK", b"Age: 1", b"Age: 2", b"Cache-Control: max-age=60"),
    "/vary-star": answer(b"200 OK", b"Vary: *", b"Cache-Control: max-age=60"),
    "/vary-garbage": answer(b"200 OK", b"Vary: ,, ,\xff", b"Cache-Control: max-age=60"),
    "/vary-many": answer(b"200 OK", b"Vary: " + b", ".join(b"X-H%d" % i for i in range(200)),
                         b"Cache-Control: max-age=60"),
    "/lm-future": answer(b"200 OK", b"Last-Modified: Fri, 31 Dec 9999 23:59:59 GMT"),
    "/lm-garbage": answer(b"200 OK", b"Last-Modified: \xff\xfe", b"ETag: unquoted"),
    "/unrequested-206": answer(b"206 Partial Content", b"Content-Range: bytes 0-4/999",
                               b"Cache-Control: max-age=60"),
    "/bad-content-range": answer(b"206 Partial Content", b"Content-Range: garbage"),
    "/unrequested-304": [(b"HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=60\r\n\r\n", None)],
    "/status-999": answer(b"999 Whatever", b"Cache-Control: max-age=60"),
    "/status-no-phrase": answer(b"200", b"Cache-Control: max-age=60"),
    "/status-204-body": [(b"HTTP/1.1 204 No Content\r\nCache-Control: max-age=60\r\n\r\n", None)],
    "/set-cookie": answer(b"200 OK", b"Set-Cookie: a=b", b"Cache-Control: public, max-age=60"),
    "/connection-names": answer(b"200 OK", b"Connection: content-length, cache-control",
                                b"Cache-Control: max-age=60"),
    "/ctype-garbage": answer(b"200 OK", b"Content-Type: \xff/\xfe; charset=\x80"),
    "/encoding-odd": answer(b"200 OK", b"Content-Encoding: gzip", b"Cache-Control: max-age=60"),
    "/huge-length": [(b"HTTP/1.1 200 OK\r\nContent-Length: " + BIG + b"\r\n\r\nsome", "close")],
    "/http10": [(b"HTTP/1.0 200 OK\r\nCache-Control: max-age=60\r\n\r\nuntil close", "close")],
}


@pytest_twisted.ensureDeferred
async def test_odd_origin_answers_never_make_a_500_nor_a_traceback(world):  # type: ignore[no-untyped-def]
    cdn, raw = world["cdn"], world["raw"]
    raw.script.update(ODD_ANSWERS)
    bad = {}
    for path in ODD_ANSWERS:
        for extra in (b"", b"Range: bytes=0-1\r\n", b"If-None-Match: \"x\"\r\n"):
            for _ in range(2):  # a miss, then maybe a hit
                got = await send(world, b"GET " + path.encode() + b" HTTP/1.1\r\n"
                                 b"Host: raw.test.com\r\n" + extra + C + b"\r\n")
                code = status(got)
                if path == "/huge-length" and not got:
                    continue  # cut short before a byte: the client's connection is dropped
                if code == 0 or code == 500:
                    bad[(path, extra)] = got[:300]
    assert not bad, "\n".join(f"{k}: {v!r}" for k, v in bad.items())
    await sleep(0.2)
    log = cdn.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-5000:]
