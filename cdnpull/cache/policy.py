"""
The rules of RFC 9111 for a shared cache, as pure functions of headers and
times (no I/O, no clock of their own: every function takes C{now}).

What is stored, for how long, how old a stored answer is, whether it may be
served stale, and how a client's conditional or range request is answered
from it.  C{CacheRule}s of the domain come first (docs/cache.md).
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence
from urllib.parse import urljoin, urlsplit

import http_sf

from ..config import CacheRule
from ..routing import normalise_host

__all__ = [
    "CacheControl", "parse_cache_control", "targeted_cache_control", "directives", "http_date",
    "Storable", "storable",
    "freshness_lifetime", "current_age", "vary_names", "vary_key", "match_rule",
    "byte_ranges", "parse_range", "not_modified", "same_origin_target", "age_header", "HEURISTIC_STATUSES",
    "RULE_STATUSES",
]

# RFC 9110 section 15.1: statuses that are heuristically cacheable.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# Final statuses this cache understands (RFC 9111 section 5.2.2.3,
# must-understand): those RFC 9110 defines, less 206 (partial content is not
# stored) and 304 (it refreshes a stored answer, never replaces one).
UNDERSTOOD_STATUSES = frozenset({
    200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 307, 308,
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416,
    417, 421, 422, 426, 451, 500, 501, 502, 503, 504, 505})
# RFC 9111 section 1.2.2: a larger delta-seconds is taken as 2^31.
DELTA_MAX = 2 ** 31
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
        text = value.strip('"') if isinstance(value, str) else ""
        if not text.isdigit() or not text.isascii():
            # Negative, fractional, empty or not a number.
            return 0 if name in ("max-age", "s-maxage") else None
        return min(int(text), DELTA_MAX)


_PARSED: dict = {}  # the values of a Cache-Control field -> their CacheControl
_PARSED_MAX = 1024
_NONE = CacheControl({})


def parse_cache_control(values: Optional[Iterable[bytes]]) -> CacheControl:
    """
    The directives of a C{Cache-Control} field's values.  An origin sends
    the same few values again and again: the last L{_PARSED_MAX} are kept
    parsed (a L{CacheControl} is never changed).
    """
    if not values:
        return _NONE
    key = tuple(values)
    found = _PARSED.get(key)
    if found is None:
        found = _parse_cache_control(key)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[key] = found
    return found


def _parse_cache_control(values: Iterable[Any]) -> CacheControl:
    out: dict = {}
    for raw in values:
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


# Targeted cache-control directives whose value must be an Integer.
_TARGETED_SECONDS = ("max-age", "s-maxage", "stale-while-revalidate", "stale-if-error")


def targeted_cache_control(headers: dict, names: Sequence[bytes]) -> Optional[CacheControl]:
    """
    RFC 9213 section 2.1: the directives of the first of C{names} (lower
    case, in precedence order) present in C{headers} with a valid, non-empty
    Structured Field Dictionary value, or None when there is none (then
    Cache-Control and Expires apply).  A parse error, or a seconds directive
    that is not an Integer, makes a field count as absent.
    """
    for name in names:
        values = headers.get(name)
        if not values:
            continue
        try:
            parsed: Any = http_sf.parse(b", ".join(values), tltype="dictionary")
        except (http_sf.StructuredFieldError, ValueError, TypeError):
            continue
        if not parsed:
            continue
        out: dict = {}
        valid = True
        for key, (value, _params) in parsed.items():
            if key in _TARGETED_SECONDS:
                if type(value) is not int:
                    valid = False
                    break
                out[key] = str(max(0, value))
            else:
                out[key] = None if value is True else str(value)
        if valid:
            return CacheControl(out)
    return None


def directives(headers: dict, targeted: Sequence[bytes] = ()) -> tuple[CacheControl, bool]:
    """
    The cache directives this node obeys for a response: a targeted field's
    (then the second item is True, and Cache-Control and Expires are
    ignored), else Cache-Control's.
    """
    own = targeted_cache_control(headers, targeted) if targeted else None
    if own is not None:
        return own, True
    return parse_cache_control(headers.get(b"cache-control")), False


# RFC 9110 section 5.6.7.  Names are compared without case (a robust
# recipient), everything else is exact: one space where the grammar has one,
# two digits where it has two, GMT and nothing else.
_DAY = r"(?:mon|tue|wed|thu|fri|sat|sun)"
_LONG_DAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTH = "(" + "|".join(_MONTHS) + ")"
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF_FIXDATE = re.compile(_DAY + r", ([0-9]{2}) " + _MONTH + r" ([0-9]{4}) " + _TIME + r" GMT",
                          re.IGNORECASE)
_RFC850 = re.compile(_LONG_DAY + r", ([0-9]{2})-" + _MONTH + r"-([0-9]{2}) " + _TIME + r" GMT",
                     re.IGNORECASE)
_ASCTIME = re.compile(_DAY + r" " + _MONTH + r" ([0-9]{2}| [0-9]) " + _TIME + r" ([0-9]{4})",
                      re.IGNORECASE)


def http_date(value: Optional[bytes], now: Optional[float] = None) -> Optional[float]:
    """
    An HTTP-date (IMF-fixdate, rfc850-date or asctime-date) as a POSIX time,
    or None for anything else.  An rfc850-date's two-digit year is placed in
    the century that puts it at most 50 years after C{now} (RFC 9110 5.6.7;
    without C{now}: 1970-2069).
    """
    if not value:
        return None
    text = value.decode("latin-1").strip(" \t")
    m = _IMF_FIXDATE.fullmatch(text)
    if m:
        day, month, year, hh, mm, ss = m.groups()
    else:
        m = _RFC850.fullmatch(text)
        if m:
            day, month, yy, hh, mm, ss = m.groups()
            year = str(_two_digit_year(int(yy), now))
        else:
            m = _ASCTIME.fullmatch(text)
            if not m:
                return None
            month, day, hh, mm, ss, year = m.groups()
    fields = (int(year), _MONTHS.index(month.lower()) + 1, int(day), int(hh), int(mm), int(ss))
    if fields[0] < 1:
        return None  # year 0000 is no date (and not one the calendar module takes)
    if not (1 <= fields[2] <= calendar.monthrange(fields[0], fields[1])[1]
            and fields[3] <= 23 and fields[4] <= 59 and fields[5] <= 60):
        return None
    return float(calendar.timegm(fields + (0, 0, 0)))


def _two_digit_year(yy: int, now: Optional[float]) -> int:
    if now is None:
        return 2000 + yy if yy < 70 else 1900 + yy
    this_year = time.gmtime(now).tm_year
    year = this_year - this_year % 100 + yy
    return year - 100 if year > this_year + 50 else year


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


def freshness_lifetime(status: int, headers: dict, response_time: float,
                       targeted: Sequence[bytes] = (),
                       parsed: Optional[tuple] = None) -> Optional[float]:
    """
    RFC 9111 section 4.2.1 for a shared cache: s-maxage, then max-age (of
    the first valid targeted field when there is one, RFC 9213, else of
    Cache-Control), then Expires - Date, then a heuristic (Last-Modified),
    else None.  C{parsed}: what L{directives} already returned for these
    headers (the targeted field is not parsed twice).
    """
    cc, own = parsed if parsed is not None else directives(headers, targeted)
    for name in ("s-maxage", "max-age"):
        n = cc.seconds(name)
        if n is not None:
            return float(n)
    expires = headers.get(b"expires")
    if expires and not own:
        when = http_date(expires[0], response_time)
        if when is None or any(v != expires[0] for v in expires[1:]):
            # An invalid Expires (or two that disagree) means "already expired".
            return 0.0
        date = _date(headers, response_time)
        return max(0.0, when - date)
    if (status in HEURISTIC_STATUSES or cc.has("public")) and not cc.has("no-cache"):
        modified = http_date(_first(headers, b"last-modified"), response_time)
        if modified is not None:
            date = _date(headers, response_time)
            return min(HEURISTIC_MAX, max(0.0, (date - modified) * HEURISTIC_FRACTION))
    return None


def _date(headers: dict, response_time: float) -> float:
    """The response's Date, or the time it was received when it has none (or an invalid one)."""
    date = http_date(_first(headers, b"date"), response_time)
    return response_time if date is None else date


def storable(method: bytes, request_headers: dict, status: int, headers: dict,
             rule: Optional[CacheRule], response_time: float,
             targeted: Sequence[bytes] = ()) -> Storable:
    """
    Whether an answer may be stored, and its freshness lifetime.

    @param headers: response headers, lower-case names -> list of values.
    @param targeted: the targeted cache-control fields this node obeys
        (RFC 9213), lower case, in precedence order.
    """
    if method != b"GET":
        return Storable(False, "not a GET")
    if rule is not None and rule.ttl == 0:
        return Storable(False, "a cache rule says never")
    if status < 200 or status > 599 or status in (206, 304):
        return Storable(False, f"status {status}")
    parsed = directives(headers, targeted)
    cc = parsed[0]
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
    if cc.has("must-understand"):
        # RFC 9111 5.2.2.3: store only statuses we understand, no-store or not.
        if status not in UNDERSTOOD_STATUSES:
            return Storable(False, f"must-understand and status {status}")
    elif cc.has("no-store"):
        return Storable(False, "no-store")
    if headers.get(b"set-cookie"):
        return Storable(False, "Set-Cookie")
    lifetime = freshness_lifetime(status, headers, response_time, targeted, parsed)
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
    age_value = float(age_header(headers))
    date = http_date(_first(headers, b"date"), response_time)
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = age_value + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    return corrected_initial_age + max(0.0, now - response_time)


def age_header(headers: dict) -> int:
    """
    The C{Age} of a response (RFC 9111 section 5.1): the first member of a
    list (the first line, then the first comma-separated value) is used; an
    invalid value (negative, fractional, not digits) is ignored (0); a huge
    one counts as 2^31.
    """
    raw = _first(headers, b"age")
    if raw is None:
        return 0
    first = raw.split(b",", 1)[0].strip(b" \t")
    if not first.isdigit():
        return 0
    return min(int(first), DELTA_MAX)


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


def same_origin_target(reference: bytes, scheme: str, host: str, target: bytes) -> Optional[bytes]:
    """
    The origin-form target of C{reference} (a URI reference in a response,
    resolved against the request's URI) when it has the same scheme and host
    as the request, else None.
    """
    authority = f"[{host}]" if ":" in host else host
    try:
        base = f"{scheme}://{authority}" + target.decode("ascii")
        resolved = urlsplit(urljoin(base, reference.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        return None
    if resolved.scheme != scheme or normalise_host(resolved.netloc.encode("ascii")) != host:
        return None
    out = (resolved.path or "/") + (f"?{resolved.query}" if resolved.query else "")
    return out.encode("ascii")


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
        # RFC 9111 4.3.2: the stored Last-Modified, else its Date.  An
        # invalid If-Modified-Since is ignored (RFC 9110 13.1.3).
        since = http_date(ims)
        modified = http_date(_first(headers, b"last-modified"))
        if modified is None:
            modified = http_date(_first(headers, b"date"))
        return since is not None and modified is not None and modified <= since
    return False


def byte_ranges(value: Optional[bytes]) -> Optional[list[tuple[Optional[int], Optional[int]]]]:
    """
    The ranges of a C{Range: bytes=...} value (RFC 9110 section 14.1.1) as
    (first, last) pairs: (first, None) to the end, (None, n) the last n
    bytes.  Empty list elements are allowed (C{bytes=0-0,} is one range).
    None when the value is absent, another unit, or not a valid range set.
    """
    if not value:
        return None
    unit, eq, spec = value.strip().partition(b"=")
    if not eq or unit.strip().lower() != b"bytes":
        return None
    out: list[tuple[Optional[int], Optional[int]]] = []
    for element in spec.split(b","):
        element = element.strip(b" \t")
        if not element:
            continue
        first_s, dash, last_s = element.partition(b"-")
        first_s, last_s = first_s.strip(b" \t"), last_s.strip(b" \t")
        if (not dash or not (first_s or last_s) or (first_s and not first_s.isdigit())
                or (last_s and not last_s.isdigit()) or not first_s.isascii() or not last_s.isascii()):
            return None
        try:
            first = int(first_s) if first_s else None
            last = int(last_s) if last_s else None
        except ValueError:  # more digits than int() reads
            return None
        if first is not None and last is not None and last < first:
            return None
        out.append((first, last))
    return out or None


def parse_range(value: Optional[bytes], size: int) -> Optional[tuple[int, int]]:
    """
    A single byte range of C{Range} as (first, last) inclusive, or None when
    the header is absent, not bytes, several ranges or malformed (the full
    answer is then sent, which RFC 9110 allows).

    @raise ValueError: the range cannot be satisfied (416).
    """
    ranges = byte_ranges(value)
    if ranges is None or len(ranges) != 1:
        return None
    first, last = ranges[0]
    if first is None:
        if not last or size == 0:  # bytes=-0, or nothing to take the last bytes of
            raise ValueError("unsatisfiable")
        return max(0, size - last), size - 1
    if first >= size:
        raise ValueError("unsatisfiable")
    return first, min(size - 1 if last is None else last, size - 1)
