"""
Recent history kept in the node, for the console's charts and
C{GET /api/stats}: a ring buffer per series, one sample every C{interval}
seconds of the injected clock (by default 5 s x 180 samples = 15 minutes).

The request path only moves plain counters here (one dict increment per
event, called from L{cdnpull.metrics.Metrics}' hooks); everything else (the
per-address block state, the cache's size) is read from the live state when a
sample is taken.  A sample turns the counters' increase since the previous
sample into the series' values:

  - per domain: C{requests} (per second), C{hit_ratio} (HIT and STALE over
    HIT, STALE and MISS answers; null without any), C{origin_errors} and
    C{failovers} (counts in the interval), C{origin_latency_ms} (mean time to
    the origin's response headers; null without any answer);
  - per origin address: C{requests} (per second), C{errors} (count),
    C{latency_ms} (mean), C{blocked} (1 when the address was blocked at the
    sample or became blocked during the interval, else 0);
  - the cache: C{bytes} and C{objects} (memory plus disk).

A series that appears later (a new domain, a new DNS answer) is null before
it existed; one whose address or domain is gone is dropped once its whole
window is null.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Optional

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..config import DEFAULT_PORTS

__all__ = ["Stats", "INTERVAL", "SAMPLES", "ORIGIN_ERRORS"]

INTERVAL = 5.0
SAMPLES = 180
HITS = frozenset({"HIT", "STALE"})
# Origin outcomes (cdnpull.failover) that count as an origin error.
ORIGIN_ERRORS = frozenset({"connect_error", "tls_error", "no_response", "timeout", "5xx"})

DOMAIN_SERIES = ("requests", "hit_ratio", "origin_errors", "failovers", "origin_latency_ms")
ADDRESS_SERIES = ("requests", "errors", "latency_ms", "blocked")


class _Counts:
    """What one domain or address counted since the node started."""

    __slots__ = ("requests", "hits", "misses", "errors", "failovers", "latency_sum",
                 "latency_count")

    def __init__(self) -> None:
        self.requests = 0
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.failovers = 0
        self.latency_sum = 0.0
        self.latency_count = 0

    def copy(self) -> "_Counts":
        c = _Counts()
        for name in self.__slots__:
            setattr(c, name, getattr(self, name))
        return c


class _Window:
    """Named ring buffers of equal length, aligned with the sample times."""

    def __init__(self, names: Iterable[str], size: int, filled: int) -> None:
        self.rings = {n: deque([None] * filled, maxlen=size) for n in names}
        self.last: Optional[_Counts] = None
        self.extra: dict = {}

    def push(self, values: dict) -> None:
        for name, ring in self.rings.items():
            ring.append(values.get(name))

    def empty(self) -> bool:
        return all(v is None for ring in self.rings.values() for v in ring)

    def json(self) -> dict:
        return {name: list(ring) for name, ring in self.rings.items()}


def _mean_ms(now: _Counts, before: _Counts) -> Optional[float]:
    n = now.latency_count - before.latency_count
    if n <= 0:
        return None
    return round((now.latency_sum - before.latency_sum) / n * 1000.0, 2)


class Stats:
    """
    @param table: returns the current L{cdnpull.live.LiveTable}.
    @param cache: returns the node's L{cdnpull.cache.Cache} (or None).
    """

    log = Logger()

    def __init__(self, clock: Any, table: Callable[[], Any],
                 cache: Optional[Callable[[], Any]] = None,
                 interval: float = INTERVAL, size: int = SAMPLES) -> None:
        self.clock = clock
        self.table = table
        self.cache = cache
        self.interval = interval
        self.size = size
        self.times: deque = deque(maxlen=size)
        self.domains: dict[str, _Counts] = {}
        self.addresses: dict[tuple[str, str], _Counts] = {}
        self._domain_windows: dict[str, _Window] = {}
        self._address_windows: dict[tuple[str, str], _Window] = {}
        self._cache_window = _Window(("bytes", "objects"), size, 0)
        self._blocks_seen: dict[tuple[str, str], int] = {}
        self._loop: Optional[LoopingCall] = None

    # -- counting (the request path) -----------------------------------------

    def _domain(self, name: str) -> _Counts:
        c = self.domains.get(name)
        if c is None:
            c = self.domains[name] = _Counts()
        return c

    def request(self, domain: Optional[str], cache: str) -> None:
        if domain is None:
            return
        c = self._domain(domain)
        c.requests += 1
        if cache in HITS:
            c.hits += 1
        elif cache == "MISS":
            c.misses += 1

    def origin_try(self, domain: str, address: str, outcome: str,
                   seconds: Optional[float]) -> None:
        key = (domain, address)
        a = self.addresses.get(key)
        if a is None:
            a = self.addresses[key] = _Counts()
        d = self._domain(domain)
        a.requests += 1
        if outcome in ORIGIN_ERRORS:
            a.errors += 1
            d.errors += 1
        if seconds is not None:
            a.latency_sum += seconds
            a.latency_count += 1
            d.latency_sum += seconds
            d.latency_count += 1

    def failover(self, domain: str) -> None:
        self._domain(domain).failovers += 1

    # -- sampling -------------------------------------------------------------

    def start(self) -> None:
        """Sample now and then every C{interval} seconds of the clock."""
        if self._loop is None:
            self._loop = LoopingCall(self._sample_safely)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _sample_safely(self) -> None:
        try:
            self.sample()
        except Exception:
            self.log.failure("stats sample failed")

    def sample(self) -> None:
        now = self.clock.seconds()
        elapsed = (now - self.times[-1]) if self.times else 0.0
        filled = len(self.times)
        self.times.append(now)
        table = self.table()
        live_domains = set(table.domains)
        # Per domain.
        for name in live_domains | set(self._domain_windows):
            counts = self.domains.get(name) or _Counts()
            window = self._domain_windows.get(name)
            if window is None:
                window = self._domain_windows[name] = _Window(DOMAIN_SERIES, self.size, filled)
            before, window.last = window.last, counts.copy()
            if before is None or name not in live_domains:
                window.push({})
                continue
            looked = (counts.hits - before.hits) + (counts.misses - before.misses)
            window.push({
                "requests": _rate(counts.requests - before.requests, elapsed),
                "hit_ratio": round((counts.hits - before.hits) / looked, 4) if looked else None,
                "origin_errors": counts.errors - before.errors,
                "failovers": counts.failovers - before.failovers,
                "origin_latency_ms": _mean_ms(counts, before),
            })
        # Per address, in every group of every domain.
        present: dict[tuple[str, str], tuple[str, Any]] = {}
        for live in table.domains.values():
            for group in live.groups():
                scheme = getattr(group.origin, "scheme", "http")
                default_port = DEFAULT_PORTS.get(scheme, 80)
                for state in group.states:
                    key = (live.name, str(state.address.with_port(default_port)))
                    present[key] = (group.role, state)
        for key in set(present) | set(self._address_windows):
            window = self._address_windows.get(key)
            if window is None:
                window = self._address_windows[key] = _Window(ADDRESS_SERIES, self.size, filled)
            counts = self.addresses.get(key) or _Counts()
            before, window.last = window.last, counts.copy()
            if key not in present:
                window.push({})
                window.extra["group"] = None
                continue
            role, state = present[key]
            window.extra["group"] = role
            blocks_before = self._blocks_seen.get(key, state.blocks)
            self._blocks_seen[key] = state.blocks
            blocked = not state.usable(now) or state.blocks > blocks_before
            if blocked:
                window.extra["reason"] = state.block_reason
            values: dict = {"blocked": 1 if blocked else 0}
            if before is not None:
                values.update({
                    "requests": _rate(counts.requests - before.requests, elapsed),
                    "errors": counts.errors - before.errors,
                    "latency_ms": _mean_ms(counts, before),
                })
            window.push(values)
        # The cache.
        cache = self.cache() if self.cache is not None else None
        if cache is not None:
            stores = [cache.store.memory] + ([cache.store.disk] if cache.store.disk else [])
            self._cache_window.push({"bytes": sum(s.size for s in stores),
                                     "objects": sum(len(s) for s in stores)})
        else:
            self._cache_window.push({})
        self._forget()

    def _forget(self) -> None:
        """Drop the windows of domains and addresses gone for a whole window."""
        table = self.table()
        for name in [n for n, w in self._domain_windows.items()
                     if n not in table.domains and w.empty()]:
            del self._domain_windows[name]
            self.domains.pop(name, None)
        for key in [k for k, w in self._address_windows.items()
                    if w.extra.get("group") is None and w.empty()]:
            del self._address_windows[key]
            self.addresses.pop(key, None)
            self._blocks_seen.pop(key, None)

    # -- reading -----------------------------------------------------------

    def json(self, domain: Optional[str] = None) -> dict:
        """
        The shape of C{GET /api/stats}: sample times, the cache's series and,
        per domain (only C{domain} when given), its series and its
        addresses' series with their blocked intervals.
        """
        times = list(self.times)
        out: dict = {
            "interval": self.interval,
            "samples": self.size,
            "times": times,
            "cache": self._cache_window.json(),
            "domains": [],
        }
        names = sorted(self._domain_windows) if domain is None else [domain]
        for name in names:
            window = self._domain_windows.get(name)
            if window is None:
                continue
            entry = {"name": name, **window.json(), "addresses": []}
            for (d, address), aw in sorted(self._address_windows.items()):
                if d != name:
                    continue
                series = aw.json()
                entry["addresses"].append({
                    "address": address,
                    "group": aw.extra.get("group"),
                    **series,
                    "blocks": _intervals(times, series["blocked"], aw.extra.get("reason")),
                })
            out["domains"].append(entry)
        return out


def _rate(count: int, elapsed: float) -> Optional[float]:
    if elapsed <= 0:
        return None
    return round(count / elapsed, 3)


def _intervals(times: list, blocked: list, reason: Optional[str]) -> list:
    """
    Runs of blocked samples as C{{"from", "until"}} (sample times; C{until}
    is null while the block lasts at the last sample).
    """
    out: list = []
    start = None
    for t, b in zip(times, blocked):
        if b == 1 and start is None:
            start = t
        elif b != 1 and start is not None:
            out.append({"from": start, "until": t})
            start = None
    if start is not None:
        out.append({"from": start, "until": None})
    if out and reason:
        out[-1]["reason"] = reason
    return out
