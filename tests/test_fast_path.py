"""
The pieces of a hit answered by the connection: cache/hit.py's answer for a
stored entry, and the buffered access log.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.internet.task import Clock

from cdnpull.accesslog import AccessLog, AccessRecord, format_record
from cdnpull.cache import Cache, MemoryStore, Store
from cdnpull.cache.hit import fresh_hit, lookup
from cdnpull.cache.store import Entry
from cdnpull.config import CacheRule

NOW = 1_000_000.0
HOST = "www.test.com"


def cache_with(*entries: Entry) -> Cache:
    store = Store(MemoryStore(10 * 2**20))
    for e in entries:
        store.put(e)
    return Cache(store, puller=None, clock=Clock(), max_object=2**20, stale_if_error=0)


def entry(**kw) -> Entry:  # type: ignore[no-untyped-def]
    values = dict(key="http://" + HOST + "/a", variant=(), vary=(), status=200, phrase=b"OK",
                  headers=[(b"content-type", b"text/plain"), (b"etag", b'"v1"'),
                           (b"cache-control", b"max-age=100"), (b"age", b"10")],
                  length=5, request_time=NOW - 1, response_time=NOW, lifetime=100.0,
                  body=b"hello")
    values.update(kw)
    return Entry(**values)  # type: ignore[arg-type]


LIVE = SimpleNamespace(config=SimpleNamespace(cache=()))


def hit(cache, target=b"/a", method=b"GET", fields=None, now=NOW + 5, close=False, live=LIVE):  # type: ignore[no-untyped-def]
    return fresh_hit(cache, lookup(cache, live, "http", HOST, target), method,
                     fields or {b"host": [HOST.encode()]}, now, close)


def head_of(data: bytes) -> tuple[bytes, dict, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b": ")
        fields[name.lower()] = value
    return lines[0], fields, body


def test_a_fresh_entry_is_answered_whole_with_its_age():  # type: ignore[no-untyped-def]
    cache = cache_with(entry())
    data, _, status, sent = hit(cache)
    line, fields, body = head_of(data)
    assert (line, status, sent, body) == (b"HTTP/1.1 200 OK", 200, 5, b"hello")
    # Age: 10 s old when stored (plus the second it took) and 5 s since.
    assert fields[b"age"] == b"16"
    assert fields[b"content-length"] == b"5"
    assert fields[b"x-cache"] == b"HIT" and fields[b"server"] == b"cdnpull"
    assert fields[b"via"] == b"1.1 cdnpull" and fields[b"accept-ranges"] == b"bytes"
    assert fields[b"etag"] == b'"v1"' and b"connection" not in fields
    # The header block is made once and kept with the entry.
    wire = cache.store.memory.get(("http://" + HOST + "/a", ())).wire
    assert wire is not None
    hit(cache)
    assert cache.store.memory.get(("http://" + HOST + "/a", ())).wire is wire


def test_head_close_and_304():  # type: ignore[no-untyped-def]
    cache = cache_with(entry())
    data, _, status, sent = hit(cache, method=b"HEAD", close=True)
    line, fields, body = head_of(data)
    assert body == b"" and sent == 0 and fields[b"content-length"] == b"5"
    assert fields[b"connection"] == b"close"
    data, _, status, sent = hit(cache, fields={b"if-none-match": [b'W/"v1"']})
    line, fields, body = head_of(data)
    assert line == b"HTTP/1.1 304 Not Modified" and status == 304 and body == b""
    assert b"content-type" not in fields and fields[b"etag"] == b'"v1"'


def test_what_the_fast_path_leaves_to_the_edge():  # type: ignore[no-untyped-def]
    cache = cache_with(entry(), entry(key="http://" + HOST + "/v", vary=(b"accept-language",),
                                      variant=((b"accept-language", b"fr"),)))
    assert hit(cache, now=NOW + 95) is None  # stale (10 s old when stored, +1 s, +85 s)
    assert hit(cache, target=b"/b") is None  # a miss
    assert hit(cache, fields={b"range": [b"bytes=0-1"]}) is None
    assert hit(cache, fields={b"authorization": [b"x"]}) is None  # not auth_ok
    assert hit(cache, target=b"/v", fields={b"accept-language": [b"de"]}) is None
    assert hit(cache, target=b"/v", fields={b"accept-language": [b"fr"]}) is not None
    no_cache = SimpleNamespace(config=SimpleNamespace(cache=(CacheRule(prefix="/", ttl=0),)))
    assert hit(cache, live=no_cache) is None


def test_a_refreshed_entry_gets_a_new_header_block():  # type: ignore[no-untyped-def]
    from dataclasses import replace
    e = entry()
    cache = cache_with(e)
    hit(cache)
    fresh = replace(cache.store.memory.get(e.ident), headers=[(b"etag", b'"v2"')])
    assert fresh.wire is None


def record(**kw) -> AccessRecord:  # type: ignore[no-untyped-def]
    values = dict(client="127.0.0.1", method="GET", uri="/a", version="HTTP/1.1", status=200,
                  sent=5, referer="", user_agent="ua", domain=HOST, cache="MISS", group="primary",
                  origin="127.0.0.2:80", origin_ms=1.0, total_ms=2.0, when=NOW)
    values.update(kw)
    return AccessRecord(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("referer,agent,origin_ms", [
    (None, None, None), (b"http://a/", b'x "y" \\z', 12.4), (b"", b"ua", 0.0)])
def test_a_line_answered_by_the_connection_is_the_line_of_its_record(referer, agent, origin_ms):  # type: ignore[no-untyped-def]
    lines: list = []
    log = AccessLog()
    log.write_line = lines.append  # type: ignore[method-assign]
    fields = {k: [v] for k, v in ((b"referer", referer), (b"user-agent", agent)) if v is not None}
    log.answered("127.0.0.2", b"GET", b'/a?"q"', b"HTTP/1.0", 404, 7, fields, HOST, NOW,
                 cache="MISS", group="primary", origin="127.0.0.3:80", origin_ms=origin_ms,
                 total_ms=3.6)
    expected = format_record(AccessRecord(
        client="127.0.0.2", method="GET", uri='/a?"q"', version="HTTP/1.0", status=404, sent=7,
        referer=(referer or b"").decode(), user_agent=(agent or b"").decode(), domain=HOST,
        cache="MISS", group="primary", origin="127.0.0.3:80", origin_ms=origin_ms, total_ms=3.6,
        when=NOW))
    assert lines == [expected]


def test_the_access_log_file_is_written_within_a_second_and_on_close(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "access.log"
    clock = Clock()
    log = AccessLog(str(path), clock)
    log.record(record())
    log.answered("127.0.0.2", b"GET", b"/b", b"HTTP/1.1", 200, 5, {b"user-agent": [b'a "q"']}, HOST, NOW)
    assert path.read_text() == ""  # buffered
    clock.advance(1.0)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert '"GET /a HTTP/1.1" 200 5 "-" "ua" domain=www.test.com cache=MISS group=primary' in lines[0]
    assert lines[1].startswith('127.0.0.2 - - [') and '"GET /b HTTP/1.1" 200 5 "-" "a \\"q\\""' in lines[1]
    assert "cache=HIT group=cache origin=-" in lines[1]
    log.record(record(uri="/c"))
    assert clock.getDelayedCalls()  # the next flush
    log.close()
    assert path.read_text().count("\n") == 3 and not clock.getDelayedCalls()


def test_the_access_log_is_reopened_after_a_move(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "access.log"
    clock = Clock()
    log = AccessLog(str(path), clock)
    log.record(record(uri="/1"))
    path.rename(tmp_path / "access.log.1")
    log.reopen()  # flushes into the old file, then starts a new one
    log.record(record(uri="/2"))
    log.close()
    assert '"GET /1 ' in (tmp_path / "access.log.1").read_text()
    assert '"GET /2 ' in path.read_text() and '"GET /1 ' not in path.read_text()


def test_off_writes_nothing_and_the_default_is_one_event_a_second():  # type: ignore[no-untyped-def]
    from twisted.logger import globalLogPublisher
    events: list = []
    globalLogPublisher.addObserver(events.append)
    clock = Clock()
    log = AccessLog(None, clock)
    try:
        AccessLog("off").record(record(uri="/off"))
        log.answered("127.0.0.1", b"GET", b"/ev", b"HTTP/1.1", 200, 5, {}, HOST, NOW)
        log.record(record(uri="/ev2"))
        assert [e for e in events if "access_lines" in e] == []
        clock.advance(1)
        AccessLog().answered("127.0.0.1", b"GET", b"/now", b"HTTP/1.1", 200, 5, {}, HOST, NOW)
    finally:
        globalLogPublisher.removeObserver(events.append)
    batches = [e for e in events if "access_lines" in e]
    assert [e["access_lines"] for e in batches] == [2, 1]  # (no clock: an event a line)
    assert {e["log_namespace"] for e in batches} == {"cdnpull.access"}
    first = batches[0]["line"].split("\n")
    assert '"GET /ev HTTP/1.1"' in first[0] and "cache=HIT" in first[0]
    assert '"GET /ev2 ' in first[1] and "/off" not in batches[0]["line"]
    assert not clock.getDelayedCalls()


def test_a_large_body_comes_apart_from_its_head():  # type: ignore[no-untyped-def]
    body = b"b" * (100 * 1024)
    cache = cache_with(entry(length=len(body), body=body))
    data, apart, status, sent = hit(cache)
    assert apart is body and sent == len(body)
    assert data.endswith(b"\r\n\r\n") and b"Content-Length: %d\r\n" % len(body) in data
