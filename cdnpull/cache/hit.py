"""
Fresh memory hits answered from the connection, before any twisted.web
request exists: the key, the lookup, the freshness check, C{Age}, then one
write of a header block kept ready-serialised with the entry (made at its
first hit) and the body, or a 304.

Anything else (a stale, disk-only or ranged answer, a rule with C{ttl=0}, a
miss) returns None and goes the ordinary way through the edge resource,
which answers the same bytes for the same stored answer.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.web.http import datetimeToString

from ..answer import NO_BODY_CODES, NOT_MODIFIED_HEADERS, not_modified_fields, relay_fields, render
from .policy import current_age, match_rule, not_modified, vary_key
from .store import Entry

__all__ = ["fresh_hit", "lookup", "stored_fields", "Wire", "NOT_MODIFIED_HEADERS"]

JOIN_BELOW = 16 * 1024  # bodies up to this size are sent in one buffer with their head


def stored_fields(entry: Entry) -> dict:
    """
    A stored answer's fields (lower-case name -> [values]), dated when it
    was received if its origin gave no C{Date} (RFC 9110 6.6.1): every hit
    of it says the same date, whichever way it is answered.
    """
    fields = entry.header_map()
    if b"date" not in fields:
        fields[b"date"] = [datetimeToString(int(entry.response_time))]
    return fields


class Wire:
    """
    What every hit of one stored entry shares, computed once: its head as
    L{cdnpull.answer} renders it, but for the C{Age} (and
    C{Connection: close}) each hit adds.
    """

    __slots__ = ("headers", "base_age", "full", "not_modified", "validators")

    def __init__(self, entry: Entry, skip: frozenset) -> None:
        headers = stored_fields(entry)
        self.headers = headers
        # Age at the response time; every hit adds the time since (RFC 9111 4.2.3).
        self.base_age = current_age(headers, entry.request_time, entry.response_time,
                                    entry.response_time)
        full = relay_fields(headers, skip, "HIT",
                            None if entry.status in NO_BODY_CODES else entry.length, 0,
                            entry.status == 200)
        del full[b"age"]
        self.full = render(b"HTTP/1.1", entry.status, entry.phrase, full, end=False)
        short = not_modified_fields(headers, skip, "HIT", 0)
        del short[b"age"]
        self.not_modified = render(b"HTTP/1.1", 304, b"Not Modified", short, end=False)
        self.validators = bool(headers.get(b"etag") or headers.get(b"last-modified"))


def lookup(cache: Any, live: Any, scheme: str, host: str, target: bytes) -> tuple:
    """
    What the cache holds for a request's URL: (its C{CacheRule} or None, its
    key, the stored variants); the key is None and nothing is looked up
    under a rule with C{ttl=0}.  Made once per request for the hit and the
    direct miss (L{cdnpull.direct}) alike.
    """
    config = live.config
    rule = match_rule(config.cache, target.partition(b"?")[0].decode("latin-1")) \
        if config.cache else None
    if rule is not None and rule.ttl == 0:
        return rule, None, ()
    key = cache.key_of(scheme, host, target, bool(rule and rule.ignore_query))
    return rule, key, cache.store.variants(key)


def fresh_hit(cache: Any, found: tuple, method: bytes, fields: dict, now: float,
              close: bool) -> Optional[tuple[bytes, bytes, int, int]]:
    """
    The whole answer to a GET or HEAD that a fresh memory entry answers:
    (head, body, status, body bytes sent), or None.  A small body comes joined to its head
    (one buffer), a large one apart (not copied).

    @param found: the request's L{lookup}.
    @param fields: the request headers, lower-case name -> [values].
    @param close: the connection ends after this answer (C{Connection: close}).
    """
    stored = found[2]
    if not stored or b"range" in fields or cache.store.loading:
        return None
    authorized = bool(fields.get(b"authorization"))
    entry = None
    for candidate in stored:
        if (not candidate.vary or vary_key(candidate.vary, fields) == candidate.variant) \
                and (candidate.auth_ok or not authorized):
            entry = candidate
            break
    if entry is None or entry.body is None:
        return None
    wire = entry.wire
    if wire is None:
        wire = entry.wire = Wire(entry, cache.relay_skip)
    age = wire.base_age + max(0.0, now - entry.response_time)
    if age >= entry.lifetime:
        return None
    cache.store.touch(entry)
    tail = b"Age: %d\r\nConnection: close\r\n\r\n" % age if close else b"Age: %d\r\n\r\n" % age
    if wire.validators and (b"if-none-match" in fields or b"if-modified-since" in fields) \
            and entry.status == 200 and not_modified(fields, wire.headers):
        return wire.not_modified + tail, b"", 304, 0
    if method == b"HEAD" or not entry.length:
        return wire.full + tail, b"", entry.status, 0
    if entry.length <= JOIN_BELOW:
        return wire.full + tail + entry.body, b"", entry.status, entry.length
    return wire.full + tail, entry.body, entry.status, entry.length
