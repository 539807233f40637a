"""Routing by Host and the header rules at the proxy boundary."""

from __future__ import annotations

import pytest
from twisted.web.http_headers import Headers

from cdnpull.headers import connection_names, end_to_end, origin_fields
from cdnpull.routing import RoutingTable, normalise_host, split_target


def table() -> RoutingTable:
    return RoutingTable([("www.test.com", "exact"), ("*.test.com", "wild"),
                         ("*.img.test.com", "img"), ("test.com", "bare")])


@pytest.mark.parametrize("host, expected", [
    (b"www.test.com", "exact"),
    (b"WWW.TEST.COM", "exact"),
    (b"www.test.com:8080", "exact"),
    (b"www.test.com.", "exact"),
    (b"a.test.com", "wild"),
    (b"a.b.test.com", "wild"),
    (b"x.img.test.com", "img"),
    (b"test.com", "bare"),
    (b"other.com", None),
    (b"xtest.com", None),
    (b"", None),
    (None, None),
    (b"[::1]:80", None),
    (b"a b.test.com", None),
])
def test_lookup(host, expected):  # type: ignore[no-untyped-def]
    assert table().lookup(normalise_host(host)) == expected


@pytest.mark.parametrize("uri, expected", [
    (b"/a?b=1", (None, b"/a?b=1")),
    (b"http://other.example/x?y", (b"other.example", b"/x?y")),
    (b"HTTP://other.example:81", (b"other.example:81", b"/")),
    (b"https://user@other.example/", (b"other.example", b"/")),
])
def test_split_target(uri, expected):  # type: ignore[no-untyped-def]
    assert split_target(uri) == expected


@pytest.mark.parametrize("name, kept", [
    (b"Connection", False), (b"Keep-Alive", False), (b"Proxy-Connection", False),
    (b"TE", False), (b"Trailer", False), (b"Transfer-Encoding", False), (b"Upgrade", False),
    (b"Proxy-Authorization", False), (b"Proxy-Authenticate", False),
    (b"X-Named-In-Connection", False),
    (b"Accept", True), (b"Cache-Control", True), (b"Authorization", True),
])
def test_hop_by_hop_headers_are_dropped(name, kept):  # type: ignore[no-untyped-def]
    h = Headers()
    h.setRawHeaders(b"connection", [b"close, X-Named-In-Connection"])
    h.setRawHeaders(name, [b"v"])
    assert end_to_end(h).hasHeader(name) is kept


def test_connection_names_reads_every_value_once():
    assert connection_names([b"Close, X-A ,,\tKeep-Alive", b"x-b", b""]) == {
        b"close", b"x-a", b"keep-alive", b"x-b"}
    assert connection_names(()) == frozenset()


def test_forwarding_headers():
    h = origin_fields({b"x-forwarded-for": [b"10.0.0.1"], b"via": [b"1.0 upstream"],
                       b"host": [b"a.test"], b"x_forwarded_host": [b"evil"]}, "127.0.0.1", "http")
    assert h == {b"x-forwarded-for": [b"10.0.0.1, 127.0.0.1"], b"via": [b"1.0 upstream, 1.1 cdnpull"],
                 b"x-real-ip": [b"127.0.0.1"], b"x-forwarded-proto": [b"http"]}
