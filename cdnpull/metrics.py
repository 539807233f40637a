"""
Prometheus metrics (docs/admin-api.md, C{GET /metrics} on the admin
listener), with C{prometheus_client} and a registry of the node's own (not the
process-global one, so that several nodes in one process never mix).

Counters that the request path moves are prometheus_client objects; what the
live table already counts (per-address state, blocks) is read at scrape time
by a collector, so there is one source of truth.

Label values are bounded: a request for a Host that no domain matches is
counted under C{domain="-"}, never under the Host the client sent.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Callable, Optional

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from twisted.internet.interfaces import IReactorTime

from .cache.store import Store
from .live import LiveTable
from .origins.group import AddressState, OriginGroup
from .admin.stats import Stats

__all__ = ["Metrics"]


class _TableCollector:
    def __init__(self, table: Callable[[], LiveTable], clock: IReactorTime,
                 store: Optional[Store] = None) -> None:
        self._table = table
        self._clock = clock
        self._store = store

    def collect(self):
        now = self._clock.seconds()
        blocked = GaugeMetricFamily(
            "cdnpull_origin_blocked", "1 when the origin address is blocked, else 0",
            labels=["domain", "group", "address"])
        blocks = CounterMetricFamily(
            "cdnpull_origin_blocks", "Times the origin address was blocked",
            labels=["domain", "group", "address"])
        usable = GaugeMetricFamily(
            "cdnpull_origin_addresses_up", "Usable addresses per origin group",
            labels=["domain", "group"])
        table = self._table()
        for live in table.domains.values():
            for group in live.groups():
                up = 0
                for s in group.states:
                    labels = [live.name, group.role, str(s.address)]
                    is_up = s.usable(now)
                    up += is_up
                    blocked.add_metric(labels, 0.0 if is_up else 1.0)
                    blocks.add_metric(labels, float(s.blocks))
                usable.add_metric([live.name, group.role], float(up))
        yield blocked
        yield blocks
        yield usable
        store = self._store
        if store is not None:
            size = GaugeMetricFamily("cdnpull_cache_bytes", "Bytes stored in the cache", labels=["store"])
            count = GaugeMetricFamily("cdnpull_cache_objects", "Objects stored in the cache",
                                      labels=["store"])
            stores: list[tuple[str, Any]] = [("memory", store.memory)]
            if store.disk is not None:
                stores.append(("disk", store.disk))
            for name, part in stores:
                size.add_metric([name], float(part.size))
                count.add_metric([name], float(len(part)))
            yield size
            yield count


# Upper bounds of the cdnpull_origin_seconds buckets.
ORIGIN_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _RequestCollector:
    """What the request path counts in plain dicts, exposed at scrape time."""

    def __init__(self, metrics: "Metrics") -> None:
        self._metrics = metrics

    def collect(self):
        m = self._metrics
        family = CounterMetricFamily("cdnpull_requests", "Client requests answered",
                                     labels=["domain", "status_class", "cache"])
        for (domain, klass, cache), n in list(m._requests.items()):
            family.add_metric([domain, f"{klass}xx", cache], float(n))
        yield family
        tries = CounterMetricFamily("cdnpull_origin_requests",
                                    "Requests sent to origin addresses, by outcome",
                                    labels=["domain", "group", "address", "outcome"])
        for labels, n in list(m._origin_tries.items()):
            tries.add_metric(list(labels), float(n))
        yield tries
        times = HistogramMetricFamily("cdnpull_origin_seconds",
                                      "Time to an origin's response headers",
                                      labels=["domain", "group"])
        for labels, (counts, total) in list(m._origin_times.items()):
            cumulative, buckets = 0, []
            for bound, n in zip(ORIGIN_SECONDS + (float("inf"),), counts):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
            times.add_metric(list(labels), buckets, total)
        yield times


class Metrics:
    """
    @param table: returns the current live table (read at scrape time).
    @param store: the cache's stores, whose sizes are read at scrape time.
    @param stats: the recent history (L{cdnpull.admin.stats.Stats}), told of the
        same events.
    """

    def __init__(self, table: Callable[[], LiveTable], clock: IReactorTime,
                 registry: Optional[CollectorRegistry] = None,
                 store: Optional[Store] = None, stats: Optional[Stats] = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.failovers = Counter(
            "cdnpull_failovers", "Requests that went to the standby", ["domain"], registry=r)
        self.probes = Counter(
            "cdnpull_probes", "Health probe results",
            ["domain", "group", "address", "result"], registry=r)
        r.register(_TableCollector(table, clock, store))
        # Client requests and origin tries are counted in plain dicts (no
        # lock, no label lookup per request) and exposed at scrape time.
        # Label sets are bounded: domains x 5 classes x cache statuses, and
        # one per configured or resolved origin address and outcome (never
        # forgotten, as prometheus_client would not forget them either).
        self._requests: dict = {}
        # (domain, group, address, outcome) -> tries
        self._origin_tries: dict = {}
        # (domain, group) -> ([count per bucket of ORIGIN_SECONDS, then +Inf], sum)
        self._origin_times: dict = {}
        r.register(_RequestCollector(self))
        # The recent history, told of the same events.
        self.stats = stats

    # -- hooks the other parts call --------------------------------------

    def request(self, domain: Optional[str], status: int, cache: str) -> None:
        key = (domain or "-", status // 100, cache)
        counts = self._requests
        counts[key] = counts.get(key, 0) + 1
        if self.stats is not None:
            self.stats.request(domain, cache)

    def origin_try(self, domain: str, group: str, address: str, outcome: str,
                   seconds: Optional[float]) -> None:
        key = (domain, group, address, outcome)
        tries = self._origin_tries
        tries[key] = tries.get(key, 0) + 1
        if seconds is not None:
            times = self._origin_times.get((domain, group))
            if times is None:
                times = self._origin_times[(domain, group)] = [[0] * (len(ORIGIN_SECONDS) + 1), 0.0]
            times[0][bisect_left(ORIGIN_SECONDS, seconds)] += 1  # (bounds are "le")
            times[1] += seconds
        if self.stats is not None:
            self.stats.origin_try(domain, address, outcome, seconds)

    def failover(self, domain: str) -> None:
        self.failovers.labels(domain).inc()
        if self.stats is not None:
            self.stats.failover(domain)

    def probe(self, group: OriginGroup, state: AddressState, ok: bool) -> None:
        self.probes.labels(group.domain, group.role, str(state.address),
                           "ok" if ok else "fail").inc()
