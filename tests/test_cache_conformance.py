"""
The cache's RFC 9111 / RFC 9110 / RFC 9213 decisions as one table: response
headers in, "not stored" / "fresh" / "stale" out, on a fake clock.

Each row is one rule; the invalid Expires forms and the Age lists are the
ones the public cache-tests suite sends.
"""

from __future__ import annotations

import re

import pytest
from twisted.internet.task import Clock

from cdnpull.cache.policy import (
    DELTA_MAX,
    current_age,
    freshness_lifetime,
    http_date,
    not_modified,
    storable,
)

T = 1_800_000_000.0            # Fri, 15 Jan 2027 08:00:00 GMT
IN_AN_HOUR = "Fri, 15 Jan 2027 09:00:00 GMT"
AN_HOUR_AGO = "Fri, 15 Jan 2027 07:00:00 GMT"
NOW = "Fri, 15 Jan 2027 08:00:00 GMT"
CDN = (b"cdn-cache-control",)


def headers_of(pairs) -> dict:  # type: ignore[no-untyped-def]
    """[(name, value), ...] (names may repeat) -> the cache's header map."""
    out: dict = {}
    for name, value in pairs:
        out.setdefault(name.lower().encode(), []).append(value.encode("latin-1"))
    return out


def decide(pairs, after: float = 0.0, status: int = 200, targeted=CDN) -> str:  # type: ignore[no-untyped-def]
    """Store an answer received at T, then ask about it C{after} seconds later."""
    clock = Clock()
    clock.advance(T)
    headers = headers_of(pairs)
    verdict = storable(b"GET", {}, status, headers, None, clock.seconds(), targeted)
    if not verdict.ok:
        return "not stored"
    clock.advance(after)
    age = current_age(headers, T, T, clock.seconds())
    return "fresh" if age < verdict.lifetime else "stale"


ETAG = ("ETag", '"v1"')  # a validator: a stale answer is still stored
DATE = ("Date", NOW)

EXPIRES = [
    # valid HTTP-dates: IMF-fixdate and the two obsolete forms (RFC 9110 5.6.7)
    ("imf-fixdate", [DATE, ("Expires", IN_AN_HOUR)], "fresh"),
    ("rfc850-date", [DATE, ("Expires", "Friday, 15-Jan-27 09:00:00 GMT")], "fresh"),
    ("asctime-date", [DATE, ("Expires", "Fri Jan 15 09:00:00 2027")], "fresh"),
    ("names in other case", [DATE, ("Expires", "FRI, 15 JAN 2027 09:00:00 gmt")], "fresh"),
    ("the same value twice", [DATE, ("Expires", IN_AN_HOUR), ("Expires", IN_AN_HOUR)], "fresh"),
    ("in the past", [DATE, ETAG, ("Expires", AN_HOUR_AGO)], "stale"),
    # anything else means "already expired"
    ("UTC", [DATE, ETAG, ("Expires", "Fri, 15 Jan 2027 09:00:00 UTC")], "stale"),
    ("a zone name", [DATE, ETAG, ("Expires", "Fri, 15 Jan 2027 09:00:00 AEST")], "stale"),
    ("a numeric zone", [DATE, ETAG, ("Expires", "Fri, 15 Jan 2027 09:00:00 +0000")], "stale"),
    ("2-digit year", [DATE, ETAG, ("Expires", "Fri, 15 Jan 27 09:00:00 GMT")], "stale"),
    ("missing comma", [DATE, ETAG, ("Expires", "Fri 15 Jan 2027 09:00:00 GMT")], "stale"),
    ("double spaces", [DATE, ETAG, ("Expires", "Fri, 15  Jan  2027 09:00:00 GMT")], "stale"),
    ("date dashes", [DATE, ETAG, ("Expires", "Fri, 15-Jan-2027 09:00:00 GMT")], "stale"),
    ("time periods", [DATE, ETAG, ("Expires", "Fri, 15 Jan 2027 09.00.00 GMT")], "stale"),
    ("1-digit hour", [DATE, ETAG, ("Expires", "Fri, 15 Jan 2027 9:00:00 GMT")], "stale"),
    ("no such day", [DATE, ETAG, ("Expires", "Fri, 31 Feb 2027 09:00:00 GMT")], "stale"),
    ("year 0000", [DATE, ETAG, ("Expires", "Mon, 01 Jan 0000 00:00:00 GMT")], "stale"),
    ("an invalid Date of year 0000", [("Date", "Mon, 01 Jan 0000 00:00:00 GMT"),
                                      ("Cache-Control", "max-age=60")], "fresh"),
    ("a number", [DATE, ETAG, ("Expires", "0")], "stale"),
    ("two lines that differ", [DATE, ETAG, ("Expires", IN_AN_HOUR),
                               ("Expires", "Fri, 15 Jan 2027 09:00:01 GMT")], "stale"),
    ("invalid Date: Expires counts from arrival",
     [("Date", "yesterday"), ("Expires", IN_AN_HOUR)], "fresh"),
]

AGE = [
    # max-age=3600; Age is a singleton: the first member of a list counts
    ("Age: 7200, 0", [("Age", "7200, 0")], "stale"),
    ("Age: 0, 7200", [("Age", "0, 7200")], "fresh"),
    ("Age lines 7200 then 0", [("Age", "7200"), ("Age", "0")], "stale"),
    ("Age lines 0 then 7200", [("Age", "0"), ("Age", "7200")], "fresh"),
    ("Age: 3600, 3600 (one less than max-age is not)", [("Age", "3599, 3599")], "fresh"),
    # an invalid Age is ignored
    ("negative Age", [("Age", "-7200")], "fresh"),
    ("non-numeric Age", [("Age", "abc")], "fresh"),
    ("fractional Age", [("Age", "7200.0")], "fresh"),
    ("Age with a parameter", [("Age", "7200;foo=bar")], "fresh"),
    # huge values are 2^31, not an overflow
    ("Age 2^31", [("Age", "2147483648")], "stale"),
    ("Age past 2^31", [("Age", "99999999999")], "stale"),
]

MAX_AGE = [
    ("max-age", [("Cache-Control", "max-age=60")], 30, "fresh"),
    ("max-age elapsed", [("Cache-Control", "max-age=60")], 61, "stale"),
    ("negative max-age is stale", [ETAG, ("Cache-Control", "max-age=-1")], 0, "stale"),
    ("fractional max-age is stale", [ETAG, ("Cache-Control", "max-age=1.5")], 0, "stale"),
    ("non-digit max-age is stale", [ETAG, ("Cache-Control", "max-age=abc")], 0, "stale"),
    ("two max-age: the first", [("Cache-Control", "max-age=60, max-age=3600")], 100, "stale"),
    ("huge max-age is 2^31", [("Cache-Control", "max-age=99999999999")], 10 ** 9, "fresh"),
    ("s-maxage over max-age", [("Cache-Control", "s-maxage=10, max-age=3600")], 60, "stale"),
    ("invalid s-maxage is stale", [ETAG, ("Cache-Control", "s-maxage=-5, max-age=3600")], 0, "stale"),
    ("max-age over Expires", [DATE, ("Cache-Control", "max-age=3600"), ("Expires", AN_HOUR_AGO)],
     60, "fresh"),
]

TARGETED = [
    # CDN-Cache-Control (RFC 9213) wins over Cache-Control and Expires
    ("CDN no-store", [("Cache-Control", "max-age=3600"), ("CDN-Cache-Control", "no-store")],
     0, CDN, "not stored"),
    ("CDN max-age over CC no-store", [("Cache-Control", "no-store"),
                                      ("CDN-Cache-Control", "max-age=3600")], 60, CDN, "fresh"),
    ("CDN private", [("Cache-Control", "max-age=3600"), ("CDN-Cache-Control", "private")],
     0, CDN, "not stored"),
    ("CDN no-cache", [ETAG, ("Cache-Control", "max-age=3600"), ("CDN-Cache-Control", "no-cache")],
     0, CDN, "stale"),
    ("short CDN max-age", [("Cache-Control", "max-age=3600"), ("CDN-Cache-Control", "max-age=1")],
     10, CDN, "stale"),
    ("CDN s-maxage", [("Cache-Control", "max-age=10"), ("CDN-Cache-Control", "s-maxage=600")],
     60, CDN, "fresh"),
    ("CDN max-age, past Expires", [DATE, ("Expires", AN_HOUR_AGO),
                                   ("CDN-Cache-Control", "max-age=3600")], 60, CDN, "fresh"),
    ("CDN max-age=0, future Expires", [DATE, ETAG, ("Expires", IN_AN_HOUR),
                                       ("CDN-Cache-Control", "max-age=0")], 0, CDN, "stale"),
    ("CDN with an extension", [("CDN-Cache-Control", "foobar, max-age=3600")], 60, CDN, "fresh"),
    # an invalid Structured Field is ignored: Cache-Control applies
    ("invalid CDN field", [("Cache-Control", "no-store"),
                           ("CDN-Cache-Control", "max-age=10000, &&&&&")], 0, CDN, "not stored"),
    ("CDN max-age of the wrong type", [("Cache-Control", "no-store"),
                                       ("CDN-Cache-Control", 'max-age="10000"')], 0, CDN, "not stored"),
    # only the configured fields count, first valid one first
    ("no targeted fields configured", [("Cache-Control", "max-age=3600"),
                                       ("CDN-Cache-Control", "no-store")], 60, (), "fresh"),
    ("first configured field wins", [("CDNPull-Cache-Control", "max-age=60"),
                                     ("CDN-Cache-Control", "max-age=3600")],
     100, (b"cdnpull-cache-control", b"cdn-cache-control"), "stale"),
    ("an invalid first field falls to the next", [("CDNPull-Cache-Control", "max-age=6 0"),
                                                  ("CDN-Cache-Control", "max-age=3600")],
     100, (b"cdnpull-cache-control", b"cdn-cache-control"), "fresh"),
]

STATUS = [
    ("301 with max-age", 301, [("Cache-Control", "max-age=3600")], "fresh"),
    ("404 with max-age", 404, [("Cache-Control", "max-age=3600")], "fresh"),
    ("410 with max-age", 410, [("Cache-Control", "max-age=3600")], "fresh"),
    ("500 with max-age", 500, [("Cache-Control", "max-age=3600")], "fresh"),
    ("503 with Expires", 503, [DATE, ("Expires", IN_AN_HOUR)], "fresh"),
    ("599 with max-age", 599, [("Cache-Control", "max-age=3600")], "fresh"),
    ("500 without freshness", 500, [("Last-Modified", AN_HOUR_AGO)], "not stored"),
    ("599 public: heuristic", 599, [DATE, ("Cache-Control", "public"),
                                    ("Last-Modified", AN_HOUR_AGO)], "fresh"),
    ("206 never", 206, [("Cache-Control", "max-age=3600")], "not stored"),
    ("304 never", 304, [("Cache-Control", "max-age=3600")], "not stored"),
    ("must-understand, understood", 200,
     [("Cache-Control", "no-store, must-understand, max-age=3600")], "fresh"),
    ("must-understand, unknown status", 599,
     [("Cache-Control", "no-store, must-understand, max-age=3600")], "not stored"),
]


@pytest.mark.parametrize("why,pairs,expected", EXPIRES, ids=[r[0] for r in EXPIRES])
def test_expires(why, pairs, expected):  # type: ignore[no-untyped-def]
    assert decide(pairs, after=10) == expected


@pytest.mark.parametrize("why,pairs,expected", AGE, ids=[r[0] for r in AGE])
def test_age(why, pairs, expected):  # type: ignore[no-untyped-def]
    assert decide([("Cache-Control", "max-age=3600")] + pairs) == expected


@pytest.mark.parametrize("why,pairs,after,expected", MAX_AGE, ids=[r[0] for r in MAX_AGE])
def test_max_age(why, pairs, after, expected):  # type: ignore[no-untyped-def]
    assert decide(pairs, after=after) == expected


@pytest.mark.parametrize("why,pairs,after,targeted,expected", TARGETED, ids=[r[0] for r in TARGETED])
def test_targeted_cache_control(why, pairs, after, targeted, expected):  # type: ignore[no-untyped-def]
    assert decide(pairs, after=after, targeted=targeted) == expected


@pytest.mark.parametrize("why,status,pairs,expected", STATUS, ids=[r[0] for r in STATUS])
def test_status(why, status, pairs, expected):  # type: ignore[no-untyped-def]
    assert decide(pairs, after=60, status=status) == expected


def test_delta_seconds_cap_and_the_expires_arithmetic():
    assert freshness_lifetime(200, headers_of([("Cache-Control", "max-age=99999999999")]), T) == DELTA_MAX
    assert freshness_lifetime(200, headers_of([DATE, ("Expires", IN_AN_HOUR)]), T) == 3600
    # A targeted field present: Expires is not looked at.
    assert freshness_lifetime(200, headers_of([("Expires", "0"), ("CDN-Cache-Control", "public")]),
                              T, CDN) is None


def test_http_date_two_digit_years_follow_the_50_year_rule():
    # "more than 50 years in the future" is the most recent past such year
    assert http_date(b"Thursday, 18-Aug-50 02:01:18 GMT", T) == http_date(b"Thu, 18 Aug 2050 02:01:18 GMT")
    assert http_date(b"Saturday, 18-Aug-90 02:01:18 GMT", T) == http_date(b"Sat, 18 Aug 1990 02:01:18 GMT")
    assert http_date(b"Sun, 06 Nov 1994 08:49:37 GMT") == 784111777
    assert http_date(b"Sunday, 06-Nov-94 08:49:37 GMT") == 784111777
    assert http_date(b"Sun Nov  6 08:49:37 1994") == 784111777
    assert http_date(b"Sun Nov 6 08:49:37 1994") is None
    assert http_date(b"Sun, 06 Nov 1994 08:49:37 GMT junk") is None


def test_if_modified_since_without_last_modified_uses_date():
    stored = headers_of([("Date", NOW)])
    assert not_modified({b"if-modified-since": [NOW.encode()]}, stored)
    assert not not_modified({b"if-modified-since": [AN_HOUR_AGO.encode()]}, stored)
    # An invalid If-Modified-Since is ignored.
    assert not not_modified({b"if-modified-since": [b"Fri, 15 Jan 2027 09:00:00 UTC"]}, stored)


def test_targeted_cache_control_setting_is_validated():
    from cdnpull.config import ConfigError, Domain, IPOrigin, Settings, validate

    domains = [Domain("www.test.com", origin=IPOrigin(["127.0.0.2"]))]
    assert Settings().targeted_cache_control == ("CDN-Cache-Control",)
    ok = validate(domains, Settings(targeted_cache_control=["CDNPull-Cache-Control", "CDN-Cache-Control"]))
    assert ok.settings.targeted_cache_control == ("CDNPull-Cache-Control", "CDN-Cache-Control")
    validate(domains, Settings(targeted_cache_control=[]))
    for bad, why in ((["Cache-Control"], "targeted_cache_control[0]: Cache-Control is not a targeted"),
                     (["a field"], "targeted_cache_control[0]: 'a field' is not a header field name"),
                     (["X-CC", "x-cc"], "targeted_cache_control[1]: x-cc is listed twice")):
        with pytest.raises(ConfigError, match=re.escape(why)):
            validate(domains, Settings(targeted_cache_control=bad))


@pytest.mark.parametrize("reference,expected", [
    (b"/made?x=1", b"/made?x=1"),
    (b"sibling", b"/forms/sibling"),                    # relative to /forms/new
    (b"http://www.test.com:8080/there", b"/there"),     # the port is not part of the key
    (b"http://WWW.TEST.COM/there", b"/there"),
    (b"https://www.test.com/there", None),              # another scheme
    (b"http://other.test.com/there", None),             # another host
    (b"//other.test.com/there", None),
])
def test_which_location_an_unsafe_request_may_invalidate(reference, expected):  # type: ignore[no-untyped-def]
    from cdnpull.cache.policy import same_origin_target

    assert same_origin_target(reference, "http", "www.test.com", b"/forms/new") == expected


def test_connection_list_and_interim_heads_read_from_the_raw_origin_head():
    from cdnpull.origins.framing import connection_named, interim_answer

    head = (b"HTTP/1.1 200 OK\r\nConnection: X-A, keep-alive\r\nconnection: x-b\r\n"
            b"X-A: 1\r\nContent-Length: 0\r\n\r\n")
    assert connection_named(head) == {b"x-a", b"keep-alive", b"x-b"}
    hints = (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: x-h\r\n"
             b"X-H: 1\r\nKeep-Alive: timeout=5\r\n\r\n")
    assert interim_answer(hints) == (103, b"Early Hints", [(b"Link", b"</a.css>; rel=preload")])
