"""
The live objects built from a configuration: a L{LiveDomain} is an immutable
L{Domain} together with the L{OriginGroup}s that carry its live state, and a
L{LiveTable} is the routing table the edge reads.  A reload or admin change
builds a new table and swaps it in one assignment; requests in flight keep the
objects they started with.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Optional

from twisted.internet.interfaces import IReactorTime

from .config import Domain
from .origins.group import OriginGroup
from .origins.kinds import kind_of
from .routing import RoutingTable

__all__ = ["LiveDomain", "LiveTable", "Routes", "build_group", "build_table"]


def build_group(role: str, origin: object, domain: Domain, clock: IReactorTime,
                rng: Optional[random.Random] = None) -> OriginGroup:
    return OriginGroup(
        role,
        kind_of(origin).static_addresses() or [],
        clock,
        block_for=domain.block_for,
        rng=rng,
        probing=domain.probe is not None,
        domain=domain.name,
        origin=origin,
    )


class LiveDomain:
    """
    A domain as it serves now.

    @ivar config: the effective L{Domain} (config module plus runtime changes).
    @ivar base: the L{Domain} the config module declares.
    """

    def __init__(self, config: Domain, primary: OriginGroup,
                 standby: Optional[OriginGroup], base: Optional[Domain] = None) -> None:
        self.config = config
        self.base = base if base is not None else config
        self.primary = primary
        self.standby = standby
        # (certificate, source) serving its name over tls: listeners, as
        # cdnpull.certs.CertificateSet.for_domain says; set by the Runtime.
        self.certificate: Optional[tuple] = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def overridden(self) -> bool:
        return self.config != self.base

    def groups(self) -> list[OriginGroup]:
        return [g for g in (self.primary, self.standby) if g is not None]


class LiveTable:
    """Every live domain, and the routing table over them."""

    def __init__(self, domains: Iterable[LiveDomain]) -> None:
        self.domains = {d.name: d for d in domains}
        self.routes: RoutingTable[LiveDomain] = RoutingTable(
            (d.name, d) for d in self.domains.values()
        )

    def route(self, host: Optional[str]) -> Optional[LiveDomain]:
        return self.routes.lookup(host)

    def groups(self) -> list[OriginGroup]:
        return [g for d in self.domains.values() for g in d.groups()]


class Routes:
    """
    The routing table now: C{current} is read by every request (in one
    attribute read) and replaced whole by L{swap}; whoever follows the table
    (DNS watchers, probes) subscribes and is told of (old, new) after each
    swap, in the order it subscribed.
    """

    def __init__(self, current: LiveTable) -> None:
        self.current = current
        self._subscribers: list[Callable[[LiveTable, LiveTable], None]] = []

    def subscribe(self, callback: Callable[[LiveTable, LiveTable], None]) -> None:
        self._subscribers.append(callback)

    def swap(self, new: LiveTable) -> None:
        old, self.current = self.current, new
        for callback in list(self._subscribers):
            callback(old, new)


def build_table(domains: Iterable[Domain], clock: IReactorTime,
                previous: Optional[LiveTable] = None,
                bases: Optional[dict] = None,
                rng: Optional[random.Random] = None) -> LiveTable:
    """
    Build live domains for C{domains}.  A group whose origin and blocking
    settings are unchanged since C{previous} is kept as it is, with its live
    state (blocks, counters, probe results).

    @param bases: domain name -> the config module's L{Domain}, when
        C{domains} includes runtime overrides.
    """
    old_groups: dict[tuple, OriginGroup] = {}
    if previous is not None:
        for old in previous.domains.values():
            for g in old.groups():
                key = (old.name, g.origin, old.config.block_for, old.config.probe is not None)
                old_groups[key] = g
    live = []
    for d in domains:
        groups: list[Optional[OriginGroup]] = []
        for role, origin in (("primary", d.origin), ("standby", d.standby)):
            if origin is None:
                groups.append(None)
                continue
            # Keyed without the role: a switch swaps roles, and each group
            # keeps its live state.
            key = (d.name, origin, d.block_for, d.probe is not None)
            group = old_groups.pop(key, None)
            if group is None:
                group = build_group(role, origin, d, clock, rng)
            group.role = role
            groups.append(group)
        primary = groups[0]
        assert primary is not None  # a validated domain has an origin
        live.append(LiveDomain(d, primary, groups[1], (bases or {}).get(d.name)))
    return LiveTable(live)
