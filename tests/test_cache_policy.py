"""RFC 9111 rules of the cache on explicit times (no wall clock)."""

from __future__ import annotations

import pytest
from email.utils import formatdate

from cdnpull.cache.policy import (
    byte_ranges,
    current_age,
    freshness_lifetime,
    match_rule,
    not_modified,
    parse_cache_control,
    parse_range,
    storable,
    vary_key,
    vary_names,
)
from cdnpull.cache.store import Entry, MemoryStore
from cdnpull.config import CacheRule

T = 1_800_000_000.0


def date(t: float) -> bytes:
    return formatdate(t, usegmt=True).encode()


def h(**headers):  # type: ignore[no-untyped-def]
    out = {}
    for k, v in headers.items():
        out[k.replace("_", "-").encode()] = [v if isinstance(v, bytes) else v.encode()]
    return out


def test_s_maxage_over_max_age_over_expires():
    assert freshness_lifetime(200, h(cache_control="max-age=60, s-maxage=600", expires=date(T + 5)), T) == 600
    assert freshness_lifetime(200, h(cache_control="max-age=60", expires=date(T + 5), date=date(T)), T) == 60
    assert freshness_lifetime(200, h(expires=date(T + 300), date=date(T)), T) == 300
    assert freshness_lifetime(200, h(expires=b"garbage"), T) == 0
    assert freshness_lifetime(200, h(cache_control="max-age=oops"), T) == 0


def test_heuristic_only_for_heuristic_statuses_with_a_validator():
    lm = h(last_modified=date(T - 1000), date=date(T))
    assert freshness_lifetime(200, lm, T) == 100  # 10% of the age
    assert freshness_lifetime(302, lm, T) is None
    assert freshness_lifetime(200, h(date=date(T)), T) is None
    assert freshness_lifetime(200, h(last_modified=date(T - 10 ** 8), date=date(T)), T) == 86400


def test_age_follows_rfc_9111_and_the_given_clock():
    headers = h(date=date(T - 10), age="5")
    # apparent age 10, corrected age value 5 + 2 (delay): initial 10, + resident 30.
    assert current_age(headers, T - 2, T, T + 30) == 40
    # No Date, upstream Age 50: a parent cache's age counts.
    assert current_age(h(age="50"), T, T, T) == 50
    assert current_age(h(), T, T, T + 7) == 7


@pytest.mark.parametrize("headers,why", [
    (h(cache_control="no-store, max-age=60"), "no-store"),
    (h(cache_control="private, max-age=60"), "private"),
    (h(cache_control="max-age=60", vary="*"), "Vary: *"),
    (h(cache_control="max-age=60", set_cookie="a=b"), "Set-Cookie"),
    (h(date=date(T)), "no freshness information"),
    (h(cache_control="no-cache"), "no-cache without a validator"),
])
def test_not_stored(headers, why):  # type: ignore[no-untyped-def]
    verdict = storable(b"GET", {}, 200, headers, None, T)
    assert not verdict.ok and verdict.why == why


def test_no_cache_is_stored_but_always_revalidated():
    verdict = storable(b"GET", {}, 200, h(cache_control="no-cache", etag='"a"'), None, T)
    assert verdict.ok and verdict.lifetime == 0


def test_authorization_needs_public_or_s_maxage():
    auth = {b"authorization": [b"Bearer x"]}
    assert not storable(b"GET", auth, 200, h(cache_control="max-age=60"), None, T).ok
    assert storable(b"GET", auth, 200, h(cache_control="public, max-age=60"), None, T).auth_ok
    assert storable(b"GET", auth, 200, h(cache_control="s-maxage=60"), None, T).ok


def test_rules_first_match_wins_and_override_origin_freshness():
    rules = [CacheRule(prefix="/api/", ttl=0), CacheRule(suffixes=[".jpg", ".png"], ttl=86400),
             CacheRule(prefix="/", ttl=60)]
    assert match_rule(rules, "/api/x.jpg").ttl == 0
    assert match_rule(rules, "/img/a.jpg").ttl == 86400
    assert match_rule(rules, "/index.html").ttl == 60
    jpg = match_rule(rules, "/img/a.jpg")
    forced = storable(b"GET", {}, 200, h(cache_control="no-store, no-cache, max-age=0", set_cookie="s=1"), jpg, T)
    assert forced.ok and forced.lifetime == 86400 and forced.strip_cookies
    assert not storable(b"GET", {}, 200, h(cache_control="max-age=600"), rules[0], T).ok
    assert not storable(b"GET", {}, 200, h(cache_control="private"), jpg, T).ok
    # A rule does not keep errors: a 404 follows the origin's headers.
    assert not storable(b"GET", {}, 404, h(), jpg, T).ok


def test_vary():
    headers = h(vary="Accept-Encoding, Accept-Language")
    names = vary_names(headers)
    assert names == (b"accept-encoding", b"accept-language")
    a = vary_key(names, {b"accept-encoding": [b"gzip, br"]})
    b = vary_key(names, {b"accept-encoding": [b"gzip,br"]})
    c = vary_key(names, {b"accept-encoding": [b"identity"]})
    assert a == b != c
    assert vary_names(h(vary="*")) is None


def test_conditionals():
    stored = h(etag='"v1"', last_modified=date(T - 100))
    assert not_modified({b"if-none-match": [b'"v0", "v1"']}, stored)
    assert not_modified({b"if-none-match": [b'W/"v1"']}, stored)
    assert not not_modified({b"if-none-match": [b'"v2"']}, stored)
    assert not_modified({b"if-modified-since": [date(T - 50)]}, stored)
    assert not not_modified({b"if-modified-since": [date(T - 500)]}, stored)


def test_ranges():
    assert parse_range(b"bytes=0-9", 100) == (0, 9)
    assert parse_range(b"bytes=90-", 100) == (90, 99)
    assert parse_range(b"bytes=-10", 100) == (90, 99)
    assert parse_range(b"bytes=50-500", 100) == (50, 99)
    assert parse_range(b"bytes=0-1,5-6", 100) is None
    assert parse_range(b"items=0-1", 100) is None
    with pytest.raises(ValueError):
        parse_range(b"bytes=100-", 100)
    # RFC 9110 5.6.1: empty list elements do not count.
    assert parse_range(b"bytes=0-0,", 100) == (0, 0)
    assert parse_range(b"bytes= , 5-6 ,", 100) == (5, 6)
    assert parse_range(b"bytes=" + b"9" * 5000 + b"-", 100) is None  # more digits than int() reads


@pytest.mark.parametrize("value, ranges", [
    (b"bytes=0-0,2-2", [(0, 0), (2, 2)]),
    (b"bytes=0-0, 1-1", [(0, 0), (1, 1)]),
    (b"bytes=0-0,-1", [(0, 0), (None, 1)]),
    (b"Bytes=5-", [(5, None)]),
    (b"bytes=,", None),
    (b"bytes=3-1", None),
    (b"bytes=1-x", None),
    (b"items=0-1", None),
    (b"", None),
])
def test_byte_ranges(value, ranges):  # type: ignore[no-untyped-def]
    assert byte_ranges(value) == ranges


def test_cache_control_parsing():
    cc = parse_cache_control([b'max-age=60, no-cache="set-cookie", PUBLIC', b"s-maxage=5"])
    assert cc.seconds("max-age") == 60 and cc.has("no-cache") and cc.has("public")
    assert cc.seconds("s-maxage") == 5


def entry(key: str, size: int) -> Entry:
    return Entry(key=key, variant=(), vary=(), status=200, phrase=b"OK", headers=[],
                 length=size, request_time=T, response_time=T, lifetime=60, body=b"x" * size)


def test_memory_lru_evicts_by_bytes():
    store = MemoryStore(limit=3 * entry("a", 1000).cost())
    for k in "abc":
        assert store.put(entry(k, 1000))
    assert store.get(("a", ())) is not None  # a is now the most recent
    store.put(entry("d", 1000))
    assert store.get(("b", ())) is None  # the least recently used went
    assert {i[0] for i in store.idents()} == {"a", "c", "d"}
    assert store.size <= store.limit
    assert not store.put(entry("huge", 10 ** 6))  # larger than the whole store
