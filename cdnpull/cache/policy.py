"""
The rules of RFC 9111 for a shared cache, as pure functions of headers and
times (no I/O, no clock of their own: every function takes C{now}).

What is stored, for how long, how old a stored answer is, whether it may be
served stale, and how a client's conditional or range request is answered
from it.  C{CacheRule}s of the domain come first (SPEC.md section 5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Iterable, Optional, Sequence

from ..config import CacheRule

__all__ = [
    "CacheControl", "parse_cache_control", "http_date", "Storable", "storable",
    "freshness_lifetime", "current_age", "vary_names", "vary_key", "match_rule",
    "parse_range", "not_modified", "HEURISTIC_STATUSES", "RULE_STATUSES",
]

# RFC 9110 section 15.1: statuses that are heuristically cacheable.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# Statuses a cache understands and may store with explicit freshness.
EXPLICIT_STATUSES = HEURISTIC_STATUSES | {302, 307, 451}
# Statuses a CacheRule's ttl applies to (an error is not kept for a day
# because a rule for ".jpg" matched it).
RULE_STATUSES = frozenset({200, 203, 204, 300, 301, 308})
# Heuristic freshness: 10% of the time since Last-Modified, at most a day.
HEURISTIC_FRACTION = 0.1
HEURISTIC_MAX = 86400.0

_TOKEN = re.compile(r'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?\s*(?:,|$)')


@dataclass(frozen=True)
class CacheControl:
    directives: dict = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.directives

    def seconds(self, name: str) -> Optional[int]:
        """A delta-seconds directive; a malformed value counts as absent
        (except max-age/s-maxage, where RFC 9111 says treat it as stale: 0)."""
        if name not in self.directives:
            return None
        value = self.directives[name]
        try:
            n = int(value.strip('"'))
        except (TypeError, ValueError, AttributeError):
            return 0 if name in ("max-age", "s-maxage") else None
        return max(0, n)


def parse_cache_control(values: Optional[Iterable[bytes]]) -> CacheControl:
    out: dict = {}
    for raw in values or ():
        text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                # Skip to the next comma on garbage.
                nxt = text.find(",", pos)
                if nxt < 0:
                    break
                pos = nxt + 1
                continue
            name, value = m.group(1).lower(), m.group(2)
            out.setdefault(name, value)
            pos = m.end()
    return CacheControl(out)


def http_date(value: Optional[bytes]) -> Optional[float]:
    if not value:
        return None
    try:
        dt = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    return dt.timestamp()


def _first(headers: dict, name: bytes) -> Optional[bytes]:
    v = headers.get(name)
    return v[0] if v else None


# -- rules ----------------------------------------------------------------------


def match_rule(rules: Sequence[CacheRule], path: str) -> Optional[CacheRule]:
    """The first matching rule, or None."""
    for rule in rules:
        if rule.matches(path):
            return rule
    return None


# -- storing ---------------------------------------------------------------------


@dataclass(frozen=True)
class Storable:
    ok: bool
    why: str = ""
    # Seconds the stored answer is fresh for (from the rule or the origin).
    lifetime: float = 0.0
    # Strip Set-Cookie from the stored copy (a rule forced caching).
    strip_cookies: bool = False
    # The answer may be served to requests that carry Authorization.
    auth_ok: bool = False


def freshness_lifetime(status: int, headers: dict, response_time: float) -> Optional[float]:
    """
    RFC 9111 section 4.2.1 for a shared cache: s-maxage, then max-age, then
    Expires - Date, then a heuristic (Last-Modified), else None.
    """
    cc = parse_cache_control(headers.get(b"cache-control"))
    for name in ("s-maxage", "max-age"):
        n = cc.seconds(name)
        if n is not None:
            return float(n)
    expires = headers.get(b"expires")
    if expires:
        when = http_date(expires[0])
        if when is None:
            return 0.0  # an invalid Expires means "already expired"
        date = http_date(_first(headers, b"date")) or response_time
        return max(0.0, when - date)
    if status in HEURISTIC_STATUSES and not cc.has("no-cache"):
        modified = http_date(_first(headers, b"last-modified"))
        if modified is not None:
            date = http_date(_first(headers, b"date")) or response_time
            return min(HEURISTIC_MAX, max(0.0, (date - modified) * HEURISTIC_FRACTION))
    return None


def storable(method: bytes, request_headers: dict, status: int, headers: dict,
             rule: Optional[CacheRule], response_time: float) -> Storable:
    """
    Whether an answer may be stored, and its freshness lifetime.

    @param headers: response headers, lower-case names -> list of values.
    """
    if method != b"GET":
        return Storable(False, "not a GET")
    if rule is not None and rule.ttl == 0:
        return Storable(False, "a cache rule says never")
    cc = parse_cache_control(headers.get(b"cache-control"))
    vary = vary_names(headers)
    if vary is None:
        return Storable(False, "Vary: *")
    if cc.has("private"):
        return Storable(False, "private")
    authorized = bool(request_headers.get(b"authorization"))
    auth_ok = cc.has("public") or cc.has("s-maxage") or cc.has("must-revalidate")
    if authorized and not auth_ok:
        return Storable(False, "request had Authorization")
    if rule is not None and status in RULE_STATUSES:
        # The operator's rule overrides the origin's freshness, no-store and
        # no-cache included (but not private, nor Authorization).
        return Storable(True, "rule", float(rule.ttl),
                        strip_cookies=bool(headers.get(b"set-cookie")), auth_ok=auth_ok)
    if status not in EXPLICIT_STATUSES:
        return Storable(False, f"status {status}")
    if cc.has("no-store"):
        return Storable(False, "no-store")
    if headers.get(b"set-cookie"):
        return Storable(False, "Set-Cookie")
    lifetime = freshness_lifetime(status, headers, response_time)
    if cc.has("no-cache"):
        # Stored, but revalidated before every use.
        if not (headers.get(b"etag") or headers.get(b"last-modified")):
            return Storable(False, "no-cache without a validator")
        return Storable(True, "no-cache", 0.0, auth_ok=auth_ok)
    if lifetime is None:
        return Storable(False, "no freshness information")
    if status not in HEURISTIC_STATUSES and lifetime <= 0:
        return Storable(False, "already stale")
    if lifetime <= 0 and not (headers.get(b"etag") or headers.get(b"last-modified")):
        return Storable(False, "stale and no validator")
    return Storable(True, "origin", lifetime, auth_ok=auth_ok)


# -- age ------------------------------------------------------------------------------


def current_age(headers: dict, request_time: float, response_time: float, now: float) -> float:
    """RFC 9111 section 4.2.3."""
    age_value = 0.0
    raw = _first(headers, b"age")
    if raw is not None:
        try:
            age_value = max(0.0, float(int(raw)))
        except ValueError:
            age_value = 0.0
    date = http_date(_first(headers, b"date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = age_value + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    return corrected_initial_age + max(0.0, now - response_time)


# -- Vary --------------------------------------------------------------------------------


def vary_names(headers: dict) -> Optional[tuple[bytes, ...]]:
    """The request header names a response varies on; None for C{Vary: *}."""
    names: list[bytes] = []
    for value in headers.get(b"vary", ()):
        for part in value.split(b","):
            name = part.strip().lower()
            if name == b"*":
                return None
            if name and name not in names:
                names.append(name)
    return tuple(sorted(names))


def vary_key(names: Sequence[bytes], request_headers: dict) -> tuple:
    """The values a request has for C{names}, normalised (whitespace)."""
    out = []
    for name in names:
        values = request_headers.get(name) or []
        joined = b",".join(b"".join(v.split()) for v in values)
        out.append((name, joined))
    return tuple(out)


# -- conditional and range requests --------------------------------------------------------


def _etags(value: bytes) -> list[bytes]:
    return [t.strip() for t in value.split(b",") if t.strip()]


def _weak(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def not_modified(request_headers: dict, headers: dict) -> bool:
    """Whether a client's conditional GET/HEAD is answered 304 (RFC 9110 13.2.2)."""
    inm = request_headers.get(b"if-none-match")
    if inm:
        etag = _first(headers, b"etag")
        if etag is None:
            return False
        tags = [t for v in inm for t in _etags(v)]
        return b"*" in tags or any(_weak(t) == _weak(etag) for t in tags)
    ims = _first(request_headers, b"if-modified-since")
    if ims:
        since = http_date(ims)
        modified = http_date(_first(headers, b"last-modified"))
        return since is not None and modified is not None and modified <= since
    return False


def parse_range(value: Optional[bytes], size: int) -> Optional[tuple[int, int]]:
    """
    A single byte range of C{Range} as (first, last) inclusive, or None when
    the header is absent, not bytes, several ranges or malformed (the full
    answer is then sent, which RFC 9110 allows).

    @raise ValueError: the range cannot be satisfied (416).
    """
    if not value:
        return None
    text = value.strip()
    if not text.lower().startswith(b"bytes="):
        return None
    spec = text[6:].strip()
    if b"," in spec:
        return None
    first_s, dash, last_s = spec.partition(b"-")
    if not dash:
        return None
    try:
        if first_s.strip() == b"":
            n = int(last_s)
            if n <= 0:
                raise ValueError("unsatisfiable")
            if size == 0:
                raise ValueError("unsatisfiable")
            return max(0, size - n), size - 1
        first = int(first_s)
        last = int(last_s) if last_s.strip() else size - 1
    except ValueError as e:
        if str(e) == "unsatisfiable":
            raise
        return None
    if first < 0:
        return None
    if first >= size:
        raise ValueError("unsatisfiable")
    if last < first:
        return None
    return first, min(last, size - 1)
