"""
The node's recent history (cdnpull.admin.stats) on a fake clock: sampling every
interval, ring buffers bounded to their window, per-domain and per-address
series, block timelines, the cache's size; and GET /api/stats's shape.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from cdnpull.config import Domain, IPOrigin
from cdnpull.live import build_table
from cdnpull.admin.stats import Stats

pytestmark = pytest.mark.timeout(10)


class _Store:
    def __init__(self) -> None:
        self.size = 0
        self.n = 0

    def __len__(self) -> int:
        return self.n


class _Cache:
    def __init__(self) -> None:
        self.store = type("S", (), {})()
        self.store.memory = _Store()
        self.store.disk = None


def node(interval=5.0, size=4):  # type: ignore[no-untyped-def]
    clock = Clock()
    clock.advance(1000)
    table = build_table([
        Domain("www.test.com", origin=IPOrigin(["127.0.0.2", "127.0.0.3"], port=8001),
               standby=IPOrigin(["127.0.0.4"], port=8001), probe=None),
        Domain("img.test.com", origin=IPOrigin(["127.0.0.5"]), probe=None),
    ], clock)
    holder = {"table": table}
    cache = _Cache()
    stats = Stats(clock, lambda: holder["table"], lambda: cache, interval=interval, size=size)
    return clock, holder, cache, stats


def domain(data, name):  # type: ignore[no-untyped-def]
    return next(d for d in data["domains"] if d["name"] == name)


def address(d, addr):  # type: ignore[no-untyped-def]
    return next(a for a in d["addresses"] if a["address"] == addr)


def test_samples_every_interval_and_keeps_only_the_window():
    clock, _, _, stats = node(interval=5.0, size=4)
    stats.start()
    try:
        assert len(stats.json()["times"]) == 1  # one sample at start
        clock.advance(4.9)
        assert len(stats.json()["times"]) == 1
        clock.advance(0.1)
        assert stats.json()["times"] == [1000.0, 1005.0]
        for _ in range(10):
            clock.advance(5)
        data = stats.json()
        assert data["times"] == [1040.0, 1045.0, 1050.0, 1055.0]
        assert (data["interval"], data["samples"]) == (5.0, 4)
        d = domain(data, "www.test.com")
        for series in ("requests", "hit_ratio", "origin_errors", "failovers", "origin_latency_ms"):
            assert len(d[series]) == 4
        for a in d["addresses"]:
            assert len(a["requests"]) == len(a["blocked"]) == 4
        assert len(data["cache"]["bytes"]) == 4
    finally:
        stats.stop()
    assert not clock.getDelayedCalls()


def test_domain_series_are_the_increase_in_each_interval():
    clock, _, _, stats = node(interval=5.0, size=10)
    stats.sample()  # baseline
    for cache in ["MISS", "HIT", "HIT", "STALE", "BYPASS"]:
        stats.request("www.test.com", cache)
    stats.request(None, "MISS")  # an unknown Host is not a series
    stats.origin_try("www.test.com", "127.0.0.2:8001", "4xx", 0.010)
    stats.origin_try("www.test.com", "127.0.0.4:8001", "2xx", 0.030)
    stats.origin_try("www.test.com", "127.0.0.3:8001", "connect_error", None)
    stats.origin_try("www.test.com", "127.0.0.2:8001", "5xx", 0.020)
    stats.failover("www.test.com")
    clock.advance(5)
    stats.sample()
    clock.advance(5)
    stats.sample()  # nothing happened in this interval
    d = domain(stats.json(), "www.test.com")
    assert d["requests"] == [None, 1.0, 0.0]  # 5 answers in 5 s
    assert d["hit_ratio"] == [None, 0.75, None]  # 3 of HIT/STALE/MISS were hits
    assert d["origin_errors"] == [None, 2, 0]  # the connect error and the 5xx
    assert d["failovers"] == [None, 1, 0]
    assert d["origin_latency_ms"] == [None, 20.0, None]
    other = domain(stats.json(), "img.test.com")
    assert other["requests"] == [None, 0.0, 0.0]
    assert [x["name"] for x in stats.json()["domains"]] == ["img.test.com", "www.test.com"]


def test_address_series_and_block_timeline():
    clock, holder, _, stats = node(interval=5.0, size=10)
    stats.sample()
    stats.origin_try("www.test.com", "127.0.0.2:8001", "2xx", 0.004)
    stats.origin_try("www.test.com", "127.0.0.2:8001", "2xx", 0.006)
    stats.origin_try("www.test.com", "127.0.0.3:8001", "timeout", None)
    primary = holder["table"].domains["www.test.com"].primary
    b = primary.state_of(primary.states[1].address)
    primary.block(b, "connect refused", duration=12)  # blocked 1000..1012, after the sample
    clock.advance(5)
    stats.sample()  # 1005: blocked
    clock.advance(5)
    stats.sample()  # 1010: blocked
    clock.advance(5)
    stats.sample()  # 1015: up again
    data = stats.json()
    d = domain(data, "www.test.com")
    assert {(a["address"], a["group"]) for a in d["addresses"]} == {
        ("127.0.0.2:8001", "primary"), ("127.0.0.3:8001", "primary"), ("127.0.0.4:8001", "standby")}
    a = address(d, "127.0.0.2:8001")
    assert a["requests"] == [None, 0.4, 0.0, 0.0]
    assert a["errors"] == [None, 0, 0, 0]
    assert a["latency_ms"] == [None, 5.0, None, None]
    assert a["blocked"] == [0, 0, 0, 0] and a["blocks"] == []
    c = address(d, "127.0.0.3:8001")
    assert c["errors"] == [None, 1, 0, 0]
    assert c["blocked"] == [0, 1, 1, 0]
    assert c["blocks"] == [{"from": 1005.0, "until": 1015.0, "reason": "connect refused"}]


def test_a_block_shorter_than_the_interval_still_shows():
    clock, holder, _, stats = node(interval=5.0, size=10)
    stats.sample()
    primary = holder["table"].domains["www.test.com"].primary
    primary.block(primary.states[0], "HTTP 503", duration=1)
    clock.advance(5)
    stats.sample()  # the block ended 4 s ago, but it happened in this interval
    clock.advance(5)
    stats.sample()
    a = address(domain(stats.json(), "www.test.com"), str(primary.states[0].address))
    assert a["blocked"] == [0, 1, 0]


def test_per_domain_query_and_domains_that_come_and_go():
    clock, holder, _, stats = node(interval=5.0, size=3)
    stats.sample()
    clock.advance(5)
    stats.sample()
    only = stats.json("img.test.com")
    assert [d["name"] for d in only["domains"]] == ["img.test.com"]
    assert stats.json("nope.test.com")["domains"] == []
    # A new domain starts with nulls for the samples before it existed.
    holder["table"] = build_table([
        Domain("img.test.com", origin=IPOrigin(["127.0.0.5"]), probe=None),
        Domain("new.test.com", origin=IPOrigin(["127.0.0.6"]), probe=None),
    ], clock)
    clock.advance(5)
    stats.sample()
    new = domain(stats.json(), "new.test.com")
    assert new["requests"] == [None, None, None]
    assert address(new, "127.0.0.6:80")["blocked"] == [None, None, 0]
    # The removed domain keeps its window until it is all null, then goes.
    gone = domain(stats.json(), "www.test.com")
    assert gone["requests"] == [None, 0.0, None] and address(gone, "127.0.0.2:8001")["group"] is None
    for _ in range(3):
        clock.advance(5)
        stats.sample()
    assert [d["name"] for d in stats.json()["domains"]] == ["img.test.com", "new.test.com"]


def test_cache_size_and_objects():
    clock, _, cache, stats = node(interval=5.0, size=10)
    stats.sample()
    cache.store.memory.size, cache.store.memory.n = 2048, 2
    clock.advance(5)
    stats.sample()
    disk = _Store()
    disk.size, disk.n = 10000, 3
    cache.store.disk = disk
    clock.advance(5)
    stats.sample()
    assert stats.json()["cache"] == {"bytes": [0, 2048, 12048], "objects": [0, 2, 5]}


def test_a_failing_sample_is_logged_and_the_loop_goes_on():
    clock, holder, _, stats = node(interval=5.0, size=10)
    holder["table"] = None  # sample() raises
    stats.start()
    try:
        clock.advance(5)
        holder["table"] = build_table([], clock)
        clock.advance(5)
        assert len(stats.times) == 3
    finally:
        stats.stop()
