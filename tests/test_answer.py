"""
The one set of rules for an answer's head (cdnpull/answer.py): a table of
origin heads and the heads the node renders for them, then the three ways
an answer goes out (fast hit, direct miss, the resource) giving the same
head for the same stored or relayed answer.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH

from cdnpull.answer import (RELAY_SKIP, not_modified_fields, own_fields, ranged, relay_fields,
                            relay_skip, render, unsatisfiable)
from cdnpull.errors import OriginUnavailable

from .test_direct import Node, Response
from .test_edge import head_of

SKIP = relay_skip((b"cdn-cache-control",))


def fields(**kw: Any) -> dict:
    """Origin fields from keywords (x_a -> x-a), each one value or a list."""
    return {k.replace("_", "-").encode(): v if isinstance(v, list) else [v]
            for k, v in kw.items()}


def rendered(answer_fields: dict, **kw: Any) -> tuple[bytes, list]:
    """An answer's head as written, (status line, [(name, value)] in order)."""
    head = render(b"HTTP/1.1", 200, b"OK", answer_fields, **kw)
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    return lines[0], [tuple(line.split(b": ", 1)) for line in lines[1:]]


# (origin fields, relay_fields keywords, what the rendered head holds
# (name -> values, lower case; None: absent)).
TABLE = [
    pytest.param(
        fields(connection=b"x-secret, Keep-Alive", keep_alive=b"timeout=5", x_secret=b"s",
               te=b"trailers", trailer=b"x-t", transfer_encoding=b"chunked", upgrade=b"h2c",
               proxy_authenticate=b"Basic", proxy_connection=b"close", x_kept=b"1"),
        {}, {b"x-kept": [b"1"], b"connection": None, b"keep-alive": None, b"x-secret": None,
             b"te": None, b"trailer": None, b"transfer-encoding": None, b"upgrade": None,
             b"proxy-authenticate": None, b"proxy-connection": None},
        id="hop-by-hop-and-connection-named-dropped"),
    pytest.param(
        fields(connection=[b"x-a", b" X-B\t,"], x_a=b"1", x_b=b"2", x_c=b"3"),
        {}, {b"x-a": None, b"x-b": None, b"x-c": [b"3"]},
        id="connection-names-in-several-lines-any-case"),
    pytest.param(
        fields(server=b"apache", x_cache=b"HIT from up", via=[b"1.0 a", b"1.1 b"]),
        {}, {b"server": [b"cdnpull"], b"x-cache": [b"MISS"],
             b"via": [b"1.0 a, 1.1 b, 1.1 cdnpull"]},
        id="ours-replace-the-origins-via-appended"),
    pytest.param(fields(), {}, {b"via": [b"1.1 cdnpull"], b"age": [b"0"]},
                 id="via-and-age-added"),
    pytest.param(fields(age=b"30"), {}, {b"age": [b"30"]}, id="origin-age-kept"),
    pytest.param(fields(age=b"30"), {"age": 7}, {b"age": [b"7"]}, id="stored-age-replaces"),
    pytest.param(
        fields(cdn_cache_control=b"max-age=60", cache_control=b"max-age=5"),
        {}, {b"cdn-cache-control": None, b"cache-control": [b"max-age=5"]},
        id="targeted-field-dropped"),
    pytest.param(fields(content_length=b"99"), {"length": 5}, {b"content-length": [b"5"]},
                 id="length-is-the-nodes"),
    pytest.param(fields(content_length=b"1234"), {"length": None},
                 {b"content-length": [b"1234"]}, id="head-keeps-the-origins-length"),
    pytest.param(fields(accept_ranges=b"none"), {"length": 5, "ranges": True},
                 {b"accept-ranges": [b"bytes"]}, id="ranges-answered-by-the-node"),
    pytest.param(fields(accept_ranges=b"bytes"), {}, {b"accept-ranges": [b"bytes"]},
                 id="origins-accept-ranges-relayed-once"),
    pytest.param(fields(set_cookie=[b"a=1", b"b=2"]), {}, {b"set-cookie": [b"a=1", b"b=2"]},
                 id="repeated-field-kept-in-order"),
]


@pytest.mark.parametrize("origin, kw, expected", TABLE)
def test_a_relayed_head(origin: dict, kw: dict, expected: dict) -> None:
    before = {name: list(values) for name, values in origin.items()}
    out = relay_fields(origin, SKIP, "MISS", **kw)
    assert origin == before, "the origin's fields were changed"
    status, lines = rendered(out)
    assert status == b"HTTP/1.1 200 OK"
    got: dict = {}
    for name, value in lines:
        got.setdefault(name.lower(), []).append(value)
    # Every name once (one field line per value, never two fields of one name
    # from two places), Server first, and the node's own always there.
    assert lines[0] == (b"Server", b"cdnpull")
    assert [n for n, _ in lines].count(b"X-Cache") == 1 and len(got[b"date"]) == 1
    assert [n.lower() for n, _ in lines].count(b"accept-ranges") <= 1
    for name, values in expected.items():
        assert got.get(name) == values, name


def test_the_skip_set_is_made_once_per_cache() -> None:
    assert RELAY_SKIP <= SKIP and b"cdn-cache-control" in SKIP
    assert relay_skip(()) == RELAY_SKIP


@pytest.mark.parametrize("kw, framing", [
    ({}, []),
    ({"chunked": True}, [(b"Transfer-Encoding", b"chunked")]),
    ({"close": True}, [(b"Connection", b"close")]),
    ({"chunked": True, "close": True},
     [(b"Transfer-Encoding", b"chunked"), (b"Connection", b"close")]),
])
def test_framing_comes_last(kw: dict, framing: list) -> None:
    origin = fields(date=b"Mon, 30 Nov 2026 00:00:00 GMT")
    _, lines = rendered(relay_fields(origin, SKIP, "HIT"), **kw)
    assert lines[len(lines) - len(framing):] == framing
    assert (b"Date", b"Mon, 30 Nov 2026 00:00:00 GMT") in lines  # the origin's stays


def test_the_status_line() -> None:
    assert render(b"HTTP/1.0", 404, b"", {}).startswith(b"HTTP/1.0 404 Not Found\r\n")
    assert render(b"HTTP/1.1", 599, None, {}).startswith(b"HTTP/1.1 599 Unknown Status\r\n")
    assert render(b"HTTP/1.1", 200, b"Fine", {}).startswith(b"HTTP/1.1 200 Fine\r\n")
    # A head kept for hits ends before the empty line (each hit adds its Age).
    assert not render(b"HTTP/1.1", 200, None, {b"date": [b"d"]}, end=False).endswith(b"\r\n\r\n")


def test_a_304_carries_only_what_rfc_9110_lists() -> None:
    stored = fields(etag=b'"e"', cache_control=b"max-age=9", content_type=b"text/plain",
                    content_length=b"5", last_modified=b"x", vary=b"accept", via=b"1.0 up",
                    x_other=b"1", date=b"d", expires=b"e", content_location=b"/c",
                    cdn_cache_control=b"max-age=60", connection=b"etag")
    out = not_modified_fields(stored, SKIP, "HIT", 3)
    assert set(out) == {b"server", b"cache-control", b"last-modified", b"vary", b"via",
                        b"x-cache", b"age", b"date", b"expires", b"content-location"}
    assert out[b"via"] == [b"1.0 up, 1.1 cdnpull"] and out[b"age"] == [b"3"]


def test_ranges_and_refusals() -> None:
    out = ranged(relay_fields(fields(etag=b'"e"'), SKIP, "HIT", 10, 0, True), 2, 4, 10)
    assert out[b"content-range"] == [b"bytes 2-4/10"] and out[b"content-length"] == [b"3"]
    out = unsatisfiable(relay_fields(fields(etag=b'"e"', content_type=b"t"), SKIP, "HIT", 10,
                                     0, True), 10)
    assert out[b"content-range"] == [b"bytes */10"] and out[b"content-length"] == [b"0"]
    assert b"etag" not in out and b"content-type" not in out and out[b"accept-ranges"] == [b"bytes"]


def test_the_nodes_own_answer() -> None:
    out = own_fields(20, "BYPASS")
    assert out[b"content-length"] == [b"20"] and out[b"x-cache"] == [b"BYPASS"]
    assert out[b"content-type"] == [b"text/plain; charset=utf-8"] and out[b"age"] == [b"0"]


# -- the same answer whichever way it goes out ------------------------------------


def _fields(raw: bytes, drop_date: bool = False) -> tuple[int, dict, bytes]:
    code, got, body = head_of(raw)
    if drop_date:
        got.pop(b"date", None)
    return code, got, body


STORED = {b"cache-control": b"max-age=60", b"x-cache": b"MISS from upstream",
          b"accept-ranges": b"bytes", b"cdn-cache-control": b"max-age=30",
          b"via": b"1.1 upstream", b"server": b"nginx", b"etag": b'"v"',
          b"content-type": b"text/plain"}


@pytest.mark.parametrize("request_bytes", [
    b"GET /s HTTP/1.1\r\nHost: www.test.com\r\n\r\n",
    b"HEAD /s HTTP/1.1\r\nHost: www.test.com\r\n\r\n",
    b"GET /s HTTP/1.1\r\nHost: www.test.com\r\nIf-None-Match: \"v\"\r\n\r\n",
    b"GET /s HTTP/1.1\r\nHost: www.test.com\r\nConnection: close\r\n\r\n",
])
def test_a_fast_hit_is_the_ordinary_hit(request_bytes: bytes) -> None:
    # An origin that sends X-Cache, Accept-Ranges and a targeted field, and
    # no Date: the fast hit used to carry X-Cache and Accept-Ranges twice, the
    # targeted field's twin rules, and no Date at all.
    node = Node()
    node.failover.make = lambda: Response(200, (b"hello",), STORED)
    node.send(b"GET /s HTTP/1.1\r\nHost: www.test.com\r\n\r\n")  # stored
    assert node.requests == 1
    node.clock.advance(3)
    ordinary = node.send(request_bytes, ordinary=True)
    fast = node.send(request_bytes)
    assert node.requests == 2, "the fast way made a twisted.web Request"
    assert _fields(fast) == _fields(ordinary)
    code, got, _ = _fields(fast)
    assert len(node.failover.pulls) == 1
    assert got[b"x-cache"] == [b"HIT"] and got[b"via"] == [b"1.1 upstream, 1.1 cdnpull"]
    assert len(got[b"date"]) == 1 and got[b"age"] == [b"3"]
    assert b"cdn-cache-control" not in got
    if code == 200:
        assert got[b"accept-ranges"] == [b"bytes"] and got[b"content-length"] == [b"5"]


@pytest.mark.parametrize("request_bytes, code, length", [
    (b"HEAD /bypass/h HTTP/1.1\r\nHost: www.test.com\r\n\r\n", 200, UNKNOWN_LENGTH),
    (b"GET /bypass/n HTTP/1.1\r\nHost: www.test.com\r\n\r\n", 204, UNKNOWN_LENGTH),
    (b"GET /bypass/n HTTP/1.1\r\nHost: www.test.com\r\n\r\n", 304, UNKNOWN_LENGTH),
])
def test_an_answer_without_a_body_never_ends_the_connection(request_bytes: bytes, code: int,
                                                            length: Any) -> None:
    # A HEAD, 204 or 304 has no body to delimit: neither chunked nor until the close.
    node = Node()
    node.failover.make = lambda: Response(code, (), length=length)
    proto, transport = node.connect()
    proto.dataReceived(request_bytes)
    node.clock.advance(0)
    got_code, got, body = head_of(transport.value())
    assert (got_code, body) == (code, b"")
    assert b"transfer-encoding" not in got and b"connection" not in got
    assert not transport.disconnecting
    proto.connectionLost(Failure(Exception("done")))


def test_a_direct_miss_and_an_error_are_rendered_by_the_same_rules() -> None:
    node = Node()
    node.failover.make = lambda: Response(200, (b"ab",), {b"x-cache": b"HIT up", b"server": b"s",
                                                          b"age": b"4"})
    code, got, body = head_of(node.send(b"GET /bypass/x HTTP/1.0\r\nHost: www.test.com\r\n\r\n"))
    assert (code, body) == (200, b"ab")
    assert got[b"x-cache"] == [b"BYPASS"] and got[b"server"] == [b"cdnpull"]
    assert got[b"age"] == [b"4"] and got[b"connection"] == [b"close"]
    assert b"accept-ranges" not in got  # (a bypass: the node answers no ranges of it)


def _same_date(raw: bytes) -> bytes:
    """C{raw} with its Date value blanked (now may be a second later on the second way)."""
    return re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\nDate: -\r\n", raw, count=1)


@pytest.mark.parametrize("make, request_bytes", [
    pytest.param(lambda: Response(200, (b"hello",), {
        b"server": b"apache", b"x-kept": b"1", b"via": b"1.0 up", b"content-type": b"text/plain",
        b"etag": b'"e"', b"connection": b"x-s", b"x-s": b"1"}), b"/bypass/a", id="bypass"),
    pytest.param(lambda: Response(200, (b"ab", b"cd"), {b"date": b"Mon, 30 Nov 2026 00:00:00 GMT"},
                                  length=UNKNOWN_LENGTH), b"/bypass/a", id="chunked"),
    pytest.param(lambda: Response(200, (b"mine",), {b"cache-control": b"private"}), b"/p",
                 id="hit-for-miss"),
    pytest.param(lambda: OriginUnavailable("127.0.0.2:80: refused"), b"/bypass/a", id="502"),
    pytest.param(lambda: Response(200, (b"hello",), STORED), b"/s", id="hit"),
    pytest.param(lambda: Response(206, (b"hello",), {b"cache-control": b"max-age=60",
                                                     b"content-range": b"bytes 0-4/9"},
                                  phrase=b"Partial Content"), b"/s", id="hit-206"),
])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_every_way_writes_the_same_bytes(make: Any, request_bytes: bytes, method: bytes) -> None:
    # The fast hit, the direct miss and the resource write one head, field
    # for field in the same order (a client that keeps the connection open).
    node = Node()
    node.failover.make = make
    request = b"%s %s HTTP/1.1\r\nHost: www.test.com\r\n\r\n" % (method, request_bytes)
    # (Stored, or marked hit-for-miss.)
    node.send(b"GET %s HTTP/1.1\r\nHost: www.test.com\r\n\r\n" % request_bytes)
    before = node.requests
    ordinary = node.send(request, ordinary=True)
    fast = node.send(request)
    assert node.requests == before + 1, "the fast way made a twisted.web Request"
    assert _same_date(fast) == _same_date(ordinary)
